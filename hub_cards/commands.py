"""The command lines of hub_cards' ``timm-sknet`` commands, ``validate``, ``publish`` and ``release`` (registered as
entry points of ``timm_sknet.commands``): help and arguments only, no torch, so that every ``--help`` answers at once;
the work is in ``validate.py``, ``publish.py`` and ``release/``, imported after parsing."""
import argparse
from pathlib import Path

from timm_sknet.cli.dispatch import Command, comma_separated

__all__ = ['PUBLISH', 'RELEASE', 'VALIDATE']


def _validate_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('data_dir', metavar='DATA_DIR', type=Path,
                        help='ImageNet val as an ImageFolder: DATA_DIR/<synset>/*.JPEG (or DATA_DIR/val/<synset>/...)')
    parser.add_argument('--model', required=True, help='registered model name, e.g. sknet50')
    parser.add_argument('--weights', required=True, type=Path, metavar='W.safetensors',
                        help='safetensors written by convert-caffe or convert-pytorchinsight')
    parser.add_argument('--input-size', type=comma_separated(int), metavar='PX[,PX...]',
                        help="square input sizes to evaluate, each with the pretrained crop and interpolation, and "
                             "for the authors' weights 320 also with crop_pct 1.0 (default: the model's input size "
                             "and test size, 224,320 for the authors' weights)")
    parser.add_argument('--class-map', type=Path, metavar='FILE.txt',
                        help='text file naming every class the model predicts, one per line in class-index order, '
                             'each class folder among them; needed when DATA_DIR holds a subset of the classes')
    _evaluation_arguments(parser)
    parser.add_argument('--skip-unreadable', action='store_true',
                        help='leave out images that do not decode, and list them in the results (which publish '
                             'refuses); without it an unreadable image stops the run')
    parser.add_argument('--output', '-o', type=Path, metavar='RESULTS.json',
                        help='results JSON (default: ./<model>-results.json)')
    parser.add_argument('--force', action='store_true', help='overwrite an existing results JSON')


def _evaluation_arguments(parser: argparse.ArgumentParser) -> None:
    """How validation runs: its speed and memory."""
    parser.add_argument('--batch-size', type=int, default=64,
                        help='images per forward pass (default: 64); it changes speed and memory, not the numbers')
    parser.add_argument('--workers', type=int, default=4,
                        help='processes that decode images, for the up-front check and the run (default: 4)')
    parser.add_argument('--device',
                        help='torch device to evaluate on, e.g. cpu, cuda, cuda:1 (default: cuda if present, else cpu)')


def _repo_arguments(parser: argparse.ArgumentParser) -> None:
    """What goes to the Hub repo, and where in it."""
    parser.add_argument('--accept-shortfall', metavar='REASON',
                        help="publish results whose top-1 at 224 is more than 0.5 points below the authors'; the card "
                             'states the shortfall and REASON word for word')
    parser.add_argument('--private', action='store_true', help='create the repo private (if it does not exist yet)')
    parser.add_argument('--revision', help='branch to commit to (created if missing; default main)')


def _publish_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--model', required=True,
                        help="the model and tag of the authors' weights: sknet50, sknet101 (their caffe_in1k tag), "
                             'sk_resnet50 or sk_resnet101 (pytorchinsight_in1k)')
    parser.add_argument('--weights', required=True, type=Path, metavar='W.safetensors',
                        help='safetensors written by convert-caffe or convert-pytorchinsight')
    parser.add_argument('--repo-id', required=True, metavar='NAMESPACE/NAME',
                        help='Hub repo, e.g. timm-sknet/sknet50.caffe_in1k (the name timm-sknet registers)')
    parser.add_argument('--results', type=Path, metavar='RESULTS.json',
                        help='timm-sknet validate results for exactly these weights on ImageNet-1k val; without '
                             'them the card says the weights are not yet validated')
    parser.add_argument('--allow-unvalidated', action='store_true',
                        help='upload without --results: the card then says the weights are unvalidated')
    parser.add_argument('--dry-run', action='store_true', help='write the files to --output-dir, upload nothing')
    parser.add_argument('--output-dir', type=Path, metavar='DIR',
                        help='where to write the repo files (required with --dry-run)')
    parser.add_argument('--force', action='store_true',
                        help="replace the files of an earlier publish in --output-dir (it never touches other files)")
    _repo_arguments(parser)


def _release_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--model', required=True, metavar='MODEL.TAG',
                        help="the authors' weights to release: sknet50.caffe_in1k, sknet101.caffe_in1k, "
                             'sk_resnet50.pytorchinsight_in1k or sk_resnet101.pytorchinsight_in1k')
    parser.add_argument('--source', required=True, type=Path, metavar='FILE',
                        help="the authors' file: the release's caffemodel, or PytorchInsight's .pth.tar")
    parser.add_argument('--data', required=True, type=Path, metavar='IMAGENET_VAL',
                        help='the whole ImageNet-1k validation set as an ImageFolder: IMAGENET_VAL/<synset>/*.JPEG')
    parser.add_argument('--repo-id', required=True, metavar='NAMESPACE/NAME',
                        help='the Hub repo to publish to, e.g. timm-sknet/sknet50.caffe_in1k')
    parser.add_argument('--prototxt', type=Path, metavar='P',
                        help="Caffe: the network definition to convert with (e.g. the release's sknet50.prototxt) "
                             'instead of the one the caffemodel embeds')
    parser.add_argument('--workdir', type=Path, metavar='DIR',
                        help='where the release keeps its files and the record of each finished step; run the same '
                             'command with the same DIR to resume (default: ./MODEL.TAG-release)')
    _evaluation_arguments(parser)
    parser.add_argument('--dry-run', action='store_true',
                        help='everything but the upload: the repo files go to --output-dir and are read back there')
    parser.add_argument('--output-dir', type=Path, metavar='DIR', help='where --dry-run writes the repo files')
    _repo_arguments(parser)
    parser.add_argument('--replace-weights', action='store_true',
                        help='publish into a repo that already holds other weights (the Hub keeps the earlier commit)')
    parser.add_argument('--force', action='store_true',
                        help="replace other weights installed in the store under MODEL.TAG with the release's")


VALIDATE = Command('measure top-1/top-5 of weights on an ImageFolder / ImageNet val', _validate_parser,
                   'hub_cards.validate')
PUBLISH = Command('write or upload model.safetensors, config.json and a model card', _publish_parser,
                  'hub_cards.publish')
RELEASE = Command("the authors' file to a Hub repo in one resumable command: convert, validate, gate, publish, "
                  'read back', _release_parser, 'hub_cards.release.pipeline')

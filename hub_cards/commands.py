"""The command lines of hub_cards' ``timm-sknet`` commands, ``validate`` and ``publish`` (registered as entry points
of ``timm_sknet.commands``): help and arguments only, no torch, so that every ``--help`` answers at once; the work is
in ``validate.py`` and ``publish.py``, imported after parsing."""
import argparse
from pathlib import Path

from timm_sknet.cli.dispatch import Command, comma_separated

__all__ = ['PUBLISH', 'VALIDATE']


def _validate_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('data_dir', metavar='DATA_DIR', type=Path,
                        help='ImageNet val as an ImageFolder: DATA_DIR/<synset>/*.JPEG (or DATA_DIR/val/<synset>/...)')
    parser.add_argument('--model', required=True, help='registered model name, e.g. sknet50')
    parser.add_argument('--weights', required=True, type=Path, metavar='W.safetensors',
                        help='safetensors written by convert-caffe')
    parser.add_argument('--input-size', type=comma_separated(int), metavar='PX[,PX...]',
                        help="square input sizes to evaluate, each with the pretrained crop and interpolation "
                             "(default: the model's input size and test size, 224,320 for the released SKNets)")
    parser.add_argument('--class-map', type=Path, metavar='FILE.txt',
                        help='text file of class folder names, one per line in class-index order; needed when '
                             'DATA_DIR holds a subset of the classes')
    parser.add_argument('--batch-size', type=int, default=64,
                        help='images per forward pass (default: 64); it changes speed and memory, not the numbers')
    parser.add_argument('--workers', type=int, default=4,
                        help='processes that decode images, for the up-front check and the run (default: 4)')
    parser.add_argument('--device',
                        help='torch device to evaluate on, e.g. cpu, cuda, cuda:1 (default: cuda if present, else cpu)')
    parser.add_argument('--skip-unreadable', action='store_true',
                        help='leave out images that do not decode, and list them in the results (which publish '
                             'refuses); without it an unreadable image stops the run')
    parser.add_argument('--output', '-o', type=Path, metavar='RESULTS.json',
                        help='results JSON (default: ./<model>-results.json)')
    parser.add_argument('--force', action='store_true', help='overwrite an existing results JSON')


def _publish_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--model', required=True, help='the model the weights are for: sknet50 or sknet101')
    parser.add_argument('--weights', required=True, type=Path, metavar='W.safetensors',
                        help='safetensors written by convert-caffe')
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
    parser.add_argument('--private', action='store_true', help='create the repo private (if it does not exist yet)')
    parser.add_argument('--revision', help='branch to commit to (created if missing; default main)')


VALIDATE = Command('measure top-1/top-5 of weights on an ImageFolder / ImageNet val', _validate_parser,
                   'hub_cards.validate')
PUBLISH = Command('write or upload model.safetensors, config.json and a model card', _publish_parser,
                  'hub_cards.publish')

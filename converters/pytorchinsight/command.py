"""convert-pytorchinsight: a checkpoint of the SKNet authors' PyTorch SK-ResNet-50* / 101* -> timm safetensors.

    convert-pytorchinsight sk_resnet50.pth.tar --model sk_resnet50 --install
    convert-pytorchinsight sk_resnet101.pth.tar --model sk_resnet101 --output sk_resnet101.safetensors

The checkpoints are PytorchInsight's (github.com/implus/PytorchInsight), downloaded by the user. The file is read
without running its pickle (``reader.py``); ``--install`` writes to the local weights store
(``timm_sknet.weights.store``) as ``<model>.pytorchinsight_in1k``, which ``pretrained=True`` reads first.
The converted weights expect the authors' preprocessing, the tag's data config: resize 256, centre crop 224, RGB,
ImageNet mean and std.
"""
import argparse
from pathlib import Path
from typing import Dict, Tuple

import numpy as np

from timm_sknet.weights.release import PYTORCHINSIGHT_TAG

from ..output import add_destination_arguments, destination, provenance, report_written, write_weights
from .mapping import CONVERTIBLE_MODELS


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('checkpoint', help="the authors' checkpoint (sk_resnet50.pth.tar or sk_resnet101.pth.tar)")
    parser.add_argument('--model', required=True, choices=CONVERTIBLE_MODELS, help='the timm model it holds')
    add_destination_arguments(parser)


def run(args: argparse.Namespace) -> int:
    name_tag = f'{args.model}.{PYTORCHINSIGHT_TAG}'
    output = destination(args, name_tag, args.checkpoint, 'checkpoint')
    tensors, metadata = convert_checkpoint(args.checkpoint, args.model)
    write_weights(tensors, output, metadata, args, name_tag, 'convert-pytorchinsight')
    report_written(output, args.model, name_tag, args.install)
    return 0


def convert_checkpoint(checkpoint_path: str, model: str) -> Tuple[Dict[str, np.ndarray], Dict[str, str]]:
    """The tensors of ``model`` from the authors' checkpoint, and the header metadata recording where they come from
    (with the epoch and accuracies the checkpoint records). Nothing is written."""
    from .convert import convert_state_dict, target_tensors  # torch and timm: only once the arguments are good
    from .reader import read_checkpoint

    checkpoint = read_checkpoint(checkpoint_path)
    tensors = convert_state_dict(checkpoint, target_tensors(model), model)
    recorded = ', '.join(f'{key} {value}' for key, value in checkpoint.records.items()) or 'no epoch or accuracy'
    print(f'{Path(checkpoint_path).name}: {len(checkpoint.state_dict)} tensors -> {len(tensors)} tensors of '
          f'{model} (optimizer state dropped; the file records {recorded})')
    metadata = provenance(checkpoint_path, model)
    metadata.update({f'source_{key}': value for key, value in checkpoint.records.items()})
    return tensors, metadata


def main() -> int:
    """convert-pytorchinsight's work, once ``converters.pytorchinsight.cli.main`` has taken over errors and Ctrl-C."""
    parser = argparse.ArgumentParser(prog='convert-pytorchinsight', description=__doc__.split('\n')[0])
    configure_parser(parser)
    return run(parser.parse_args())

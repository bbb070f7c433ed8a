"""Where every converter writes, and what it records: ``--output FILE.safetensors`` or ``--install`` into the local
weights store, ``--force`` to replace, and the source's provenance in the safetensors header.

Nothing here imports torch or timm: convert-caffe without ``--verify`` runs without them.
"""
import argparse
import os
from importlib.metadata import version
from pathlib import Path
from typing import Dict

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import save_file

import timm_sknet
from timm_sknet.io.errors import UserError
from timm_sknet.io.files import atomic_output, check_output_file, printable_name, sha256_file, write_error
from timm_sknet.weights.store import STORE_ENV, install_target, install_weights

WEIGHTS_SUFFIX = '.safetensors'


def add_destination_arguments(parser: argparse.ArgumentParser) -> None:
    """``--output FILE`` or ``--install`` (one of them), and ``--force``."""
    destination = parser.add_mutually_exclusive_group(required=True)
    destination.add_argument('--output', help='the .safetensors file to write')
    destination.add_argument(
        '--install', action='store_true',
        help=f'write to the local weights store instead, where timm.create_model(MODEL, pretrained=True) finds it: '
             f'${STORE_ENV}, else timm-sknet in $XDG_CACHE_HOME or ~/.cache')
    parser.add_argument('--force', action='store_true', help='overwrite an existing output or installed copy')


def output_file(path: os.PathLike, force: bool, *, parent_created_later: bool = False) -> Path:
    """Where converted weights may be written: a ``.safetensors`` file, not a directory (even with ``force``),
    replacing an existing file only when forced (``timm_sknet.io.files.check_output_file``)."""
    path = Path(path)
    if not path.name.endswith(WEIGHTS_SUFFIX) and not path.is_dir():
        suggestion = path.with_suffix(WEIGHTS_SUFFIX) if path.suffix else path.with_name(path.name + WEIGHTS_SUFFIX)
        raise UserError(f'{path} does not end in {WEIGHTS_SUFFIX}: timm would open it with torch.load, which '
                        f'unpickles it and fails on safetensors data; name it {suggestion}')
    return check_output_file(path, force, parent_created_later=parent_created_later)


def destination(args: argparse.Namespace, model_name_tag: str, source: os.PathLike, source_kind: str) -> Path:
    """The file the converted weights go to, checked before any work: the store's slot of ``model_name_tag``
    (``--install``) or ``--output``; never the source itself."""
    output = install_target(model_name_tag, args.force) if args.install else output_file(args.output, args.force)
    if Path(source).resolve() == output.resolve():
        raise UserError(f'--output is the {source_kind} itself; choose another file')
    return output


def provenance(source: os.PathLike, model_name: str) -> Dict[str, str]:
    """The header metadata of converted weights (``timm_sknet.weights.store.PROVENANCE_KEYS``)."""
    return {
        'source_file': printable_name(Path(source).name),
        'source_size': str(os.path.getsize(source)),
        'source_sha256': sha256_file(source),
        'model_name': model_name,
        'timm_sknet_version': timm_sknet.__version__,
        'timm_version': version('timm'),  # installed versions, read without importing either
        'torch_version': version('torch'),
    }


def write_weights(tensors: Dict[str, np.ndarray], output: Path, metadata: Dict[str, str], args: argparse.Namespace,
                  model_name_tag: str, installed_by: str) -> None:
    """Write the safetensors file whole or not at all, never over anything without ``--force``: ``--output``, or
    (``--install``) the store slot of ``model_name_tag``, which appears with its ``install.json`` in one step."""
    target = install_weights(model_name_tag, args.force, installed_by) if args.install else \
        atomic_output(output, args.force)
    with target as tmp:
        try:
            save_file(tensors, tmp, metadata)
        except SafetensorError as e:  # its I/O errors (a full disk, a file-size limit) come wrapped
            raise write_error(output, e) from None


def report_written(output: Path, model_name: str, model_name_tag: str, install: bool) -> None:
    """The last line of a successful conversion: where the weights are and how timm loads them."""
    if install:
        print(f'installed {model_name_tag} as {output}; timm.create_model({model_name!r}, pretrained=True) loads it')
    else:
        print(f'wrote {output}; load it with timm.create_model({model_name!r}, pretrained=True, '
              f'pretrained_cfg_overlay=dict(file={str(output)!r})), or convert with --install instead of --output')

"""Where every converter writes, and what it records: ``--output FILE.safetensors`` or ``--install`` into the local
weights store, ``--force`` to replace, and the source's provenance in the safetensors header.

Nothing here imports torch or timm: convert-caffe without ``--verify`` runs without them.
"""
import argparse
import json
import os
import struct
from importlib.metadata import version
from pathlib import Path
from typing import Dict

import numpy as np
from safetensors.numpy import save

import timm_sknet
from timm_sknet.io.errors import UserError
from timm_sknet.io.files import atomic_output, check_output_file, printable_name, sha256_file
from timm_sknet.weights.store import STORE_ENV, check_safetensors_path, install_target, install_weights

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


def output_file(path: os.PathLike, force: bool) -> Path:
    """Where converted weights may be written: a ``.safetensors`` file, not a directory (even with ``force``),
    replacing an existing file only when forced (``timm_sknet.io.files.check_output_file``)."""
    path = Path(path)
    if not path.name.endswith(WEIGHTS_SUFFIX) and not path.is_dir():
        suggestion = path.with_suffix(WEIGHTS_SUFFIX) if path.suffix else path.with_name(path.name + WEIGHTS_SUFFIX)
        raise UserError(f'{path} does not end in {WEIGHTS_SUFFIX}: timm would open it with torch.load, which '
                        f'unpickles it and fails on safetensors data; name it {suggestion}')
    return check_safetensors_path(check_output_file(path, force))


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
    content = safetensors_bytes(tensors, metadata)
    with target as tmp:
        tmp.write_bytes(content)


def safetensors_bytes(tensors: Dict[str, np.ndarray], metadata: Dict[str, str]) -> bytes:
    """The safetensors file of ``tensors`` and ``metadata``, the same bytes for the same input.

    safetensors writes the metadata in its hash map's order, which changes from one process to the next, so two
    conversions of one file would differ in their sha256 (and a resumed release would take unchanged weights for
    new ones). The header is written again with the metadata keys sorted, where that gives safetensors' own
    serialisation of it; the tensors' bytes and offsets are untouched.
    """
    content = save(tensors, metadata)
    (header_size,) = struct.unpack('<Q', content[:8])
    text = content[8:8 + header_size].decode('utf-8')
    header = json.loads(text)
    if '__metadata__' not in header or _compact_json(header) != text.rstrip(' '):
        return content  # another serialisation than serde_json's compact one: keep safetensors' bytes as they are
    header['__metadata__'] = dict(sorted(header['__metadata__'].items()))
    ordered = _compact_json(header).encode('utf-8')  # as long as the original: the same text in another order
    return content[:8] + ordered + content[8 + len(ordered):]


def _compact_json(value: Dict) -> str:
    """JSON as serde_json writes it compactly (safetensors' header)."""
    return json.dumps(value, separators=(',', ':'), ensure_ascii=False)


def report_written(output: Path, model_name: str, model_name_tag: str, install: bool) -> None:
    """The last line of a successful conversion: where the weights are and how timm loads them."""
    if install:
        print(f'installed {model_name_tag} as {output}; timm.create_model({model_name!r}, pretrained=True) loads it')
    else:
        print(f'wrote {output}; load it with timm.create_model({model_name!r}, pretrained=True, '
              f'pretrained_cfg_overlay=dict(file={str(output)!r})), or convert with --install instead of --output')

"""convert-caffe: a caffemodel of the SKNet Caffe release -> timm safetensors, optionally verified.

    convert-caffe SKNet-50.caffemodel --model sknet50 --install [--verify]
    convert-caffe SKNet-50.caffemodel --model sknet50 --output sknet50.safetensors [--verify]

``--install`` writes to the local weights store (``timm_sknet.weights.store``), which ``pretrained=True`` reads first.

The converted weights expect timm's data config of the model (RGB, ``(x / 255 - mean) / std`` with the
release's mean and a std of 1/255); ``--verify`` runs the caffemodel through OpenCV's Caffe importer under
the release's own convention (BGR, 0..255 minus (104, 117, 123)) and compares the logits.

Without ``--verify`` nothing here imports torch or timm: their import alone takes several times the memory
of converting a 200 MB caffemodel (see ``convert.py``).
"""
import argparse
import os
from importlib.metadata import version
from pathlib import Path
from typing import Any, Dict

from google.protobuf.message import Message
from safetensors import SafetensorError
from safetensors.numpy import save_file

import timm_sknet
from timm_sknet.io.errors import UserError, run_cli
from timm_sknet.io.files import atomic_output, check_output_file, sha256_file, write_error
from timm_sknet.weights.store import STORE_ENV, install_target

from .proto import read_caffemodel, read_prototxt
from .convert import CAFFE_TAG, InferenceGraph, caffe_state_dict, convertible_models, target_spec
from .release_match import check_not_cut_short, check_prototxt_fits

VERIFY_IMAGES = 2  # generated images when no --image is given: enough for logits, quick on 2 CPU cores
WEIGHTS_SUFFIX = '.safetensors'


def output_file(path: os.PathLike, force: bool, *, parent_created_later: bool = False) -> Path:
    """Where converted weights may be written: a ``.safetensors`` file, not a directory (even with ``force``),
    replacing an existing file only when forced (``timm_sknet.io.files.check_output_file``)."""
    path = Path(path)
    if not path.name.endswith(WEIGHTS_SUFFIX) and not path.is_dir():
        suggestion = path.with_suffix(WEIGHTS_SUFFIX) if path.suffix else path.with_name(path.name + WEIGHTS_SUFFIX)
        raise UserError(f'{path} does not end in {WEIGHTS_SUFFIX}: timm would open it with torch.load, which '
                        f'unpickles it and fails on safetensors data; name it {suggestion}')
    return check_output_file(path, force, parent_created_later=parent_created_later)


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('caffemodel', help='the .caffemodel of the release (SKNet-50 or SKNet-101)')
    parser.add_argument('--model', required=True, choices=convertible_models(), help='the timm model it holds')
    destination = parser.add_mutually_exclusive_group(required=True)
    destination.add_argument('--output', help='the .safetensors file to write')
    destination.add_argument(
        '--install', action='store_true',
        help=f'write to the local weights store instead, where timm.create_model(MODEL, pretrained=True) finds it: '
             f'${STORE_ENV}, else timm-sknet in $XDG_CACHE_HOME or ~/.cache')
    parser.add_argument(
        '--prototxt', help="network definition to use instead of the one the caffemodel embeds (e.g. the "
                           "release's sknet50.prototxt)")
    parser.add_argument('--force', action='store_true', help='overwrite an existing output or installed copy')
    parser.add_argument(
        '--verify', action='store_true',
        help="compare the converted model's logits with OpenCV's run of the caffemodel; fail above "
             "1e-4 relative error (needs pip install 'timm-sknet[verify]')")
    parser.add_argument(
        '--image', action='append', metavar='FILE',
        help=f'with --verify: an image to compare on (repeatable; default {VERIFY_IMAGES} generated images)')


def run(args: argparse.Namespace) -> int:
    name_tag = f'{args.model}.{CAFFE_TAG}'
    output = install_target(name_tag, args.force) if args.install else output_file(args.output, args.force)
    if Path(args.caffemodel).resolve() == output.resolve():
        raise UserError('--output is the caffemodel itself; choose another file')
    if args.image and not args.verify:
        raise UserError('--image only has an effect with --verify')
    spec = target_spec(args.model)
    weights = read_caffemodel(args.caffemodel)
    check_not_cut_short(weights, spec, args.caffemodel)
    if args.prototxt:
        graph_net = read_prototxt(args.prototxt)
        check_prototxt_fits(graph_net, weights, args.prototxt, args.caffemodel)
    elif not any(layer.type for layer in weights.layer):
        raise UserError(f'{args.caffemodel} holds weights but no layer definitions; pass its --prototxt')
    else:
        graph_net = weights
    try:
        graph = InferenceGraph(graph_net)
        tensors = caffe_state_dict(graph, weights, spec)
    except UserError as e:
        if graph_net is not weights and _converts_alone(weights, spec):
            raise UserError(
                f'--prototxt {args.prototxt} disagrees with the caffemodel, which converts with the layers it embeds: '
                f'leave out --prototxt, or pass the prototxt released with it ({e})') from None
        raise
    print(f'{Path(args.caffemodel).name}: {len(graph.matches)} weighted layers -> {len(tensors)} tensors of '
          f'{args.model} (BN num_batches_tracked left at 0)')

    metadata = {
        'source_file': Path(args.caffemodel).name,
        'source_size': str(os.path.getsize(args.caffemodel)),
        'source_sha256': sha256_file(args.caffemodel),
        'model_name': args.model,
        'timm_sknet_version': timm_sknet.__version__,
        'timm_version': version('timm'),  # installed versions, read without importing either
        'torch_version': version('torch'),
    }
    if args.verify:
        from .verify import verify_conversion  # imports torch and timm: only here
        metadata.update(verify_conversion(graph, weights, tensors, args.model, args.image, VERIFY_IMAGES))
    if args.install:
        try:
            output.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise write_error(output, e) from None
    with atomic_output(output) as tmp:
        try:
            save_file(tensors, tmp, metadata)
        except SafetensorError as e:  # its I/O errors (a full disk, a file-size limit) come wrapped
            raise write_error(output, e) from None
    if args.install:
        print(f'installed {name_tag} as {output}; timm.create_model({args.model!r}, pretrained=True) loads it')
    else:
        print(f'wrote {output}; load it with timm.create_model({args.model!r}, pretrained=True, '
              f'pretrained_cfg_overlay=dict(file={str(output)!r})), or convert with --install instead of --output')
    return 0


def _converts_alone(weights: Message, spec: Dict[str, Any]) -> bool:
    """Whether the caffemodel converts with its own embedded layer definitions (when a --prototxt did not)."""
    if not any(layer.type for layer in weights.layer):
        return False
    try:
        caffe_state_dict(InferenceGraph(weights), weights, spec)
    except UserError:
        return False
    return True


def main() -> None:
    def _main() -> int:
        parser = argparse.ArgumentParser(prog='convert-caffe', description=__doc__.split('\n')[0])
        configure_parser(parser)
        try:
            return run(parser.parse_args())
        except UserError as e:  # names read from a damaged file may hold control characters: one line all the same
            raise UserError(''.join(c if c.isprintable() else repr(c)[1:-1] for c in str(e))) from None

    run_cli('convert-caffe', _main)


if __name__ == '__main__':
    main()

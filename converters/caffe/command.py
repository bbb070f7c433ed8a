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
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
from google.protobuf.message import Message

from timm_sknet.io.errors import UserError

from ..output import add_destination_arguments, destination, provenance, report_written, write_weights
from .proto import read_caffemodel, read_prototxt
from .convert import CAFFE_TAG, InferenceGraph, caffe_state_dict, convertible_models, target_spec
from .release_match import check_not_cut_short, check_prototxt_fits

VERIFY_IMAGES = 2  # generated images when no --image is given: enough for logits, quick on 2 CPU cores


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('caffemodel', help='the .caffemodel of the release (SKNet-50 or SKNet-101)')
    parser.add_argument('--model', required=True, choices=convertible_models(), help='the timm model it holds')
    add_destination_arguments(parser)
    parser.add_argument(
        '--prototxt', help="network definition to use instead of the one the caffemodel embeds (e.g. the "
                           "release's sknet50.prototxt)")
    parser.add_argument(
        '--verify', action='store_true',
        help="compare the converted model's logits with OpenCV's run of the caffemodel; fail above "
             "1e-4 relative error (needs pip install 'timm-sknet[verify]')")
    parser.add_argument(
        '--image', action='append', metavar='FILE',
        help=f'with --verify: an image to compare on (repeatable; default {VERIFY_IMAGES} generated images)')


def run(args: argparse.Namespace) -> int:
    name_tag = f'{args.model}.{CAFFE_TAG}'
    output = destination(args, name_tag, args.caffemodel, 'caffemodel')
    if args.image and not args.verify:
        raise UserError('--image only has an effect with --verify')
    tensors, metadata = convert_caffemodel(args.caffemodel, args.model, args.prototxt, args.verify, args.image)
    write_weights(tensors, output, metadata, args, name_tag, 'convert-caffe')
    report_written(output, args.model, name_tag, args.install)
    return 0


def convert_caffemodel(caffemodel: str, model: str, prototxt: Optional[str] = None, verify: bool = False,
                       images: Optional[List[str]] = None) -> Tuple[Dict[str, np.ndarray], Dict[str, str]]:
    """The tensors of ``model`` from a caffemodel of the release (with ``prototxt``'s graph if given) and the
    header metadata recording where they come from; with ``verify`` checked against OpenCV's run of the caffemodel
    on ``images`` (default: generated ones), the figures added to the metadata. Nothing is written; each image
    decodes whole, or that is said before any work."""
    if images:
        from timm_sknet.io.images import read_image
        for image in images:
            read_image(image, '--image')
    spec = target_spec(model)
    weights = read_caffemodel(caffemodel)
    check_not_cut_short(weights, spec, caffemodel)
    if prototxt:
        graph_net = read_prototxt(prototxt)
        check_prototxt_fits(graph_net, weights, prototxt, caffemodel)
    elif not any(layer.type for layer in weights.layer):
        raise UserError(f'{caffemodel} holds weights but no layer definitions; pass its --prototxt')
    else:
        graph_net = weights
    try:
        graph = InferenceGraph(graph_net)
        tensors = caffe_state_dict(graph, weights, spec)
    except UserError as e:
        if graph_net is not weights and _converts_alone(weights, spec):
            raise UserError(
                f'--prototxt {prototxt} disagrees with the caffemodel, which converts with the layers it embeds: '
                f'leave out --prototxt, or pass the prototxt released with it ({e})') from None
        raise
    print(f'{Path(caffemodel).name}: {len(graph.matches)} weighted layers -> {len(tensors)} tensors of '
          f'{model} (BN num_batches_tracked left at 0)')
    metadata = provenance(caffemodel, model)
    if verify:
        from .verify import verify_conversion  # imports torch and timm: only here
        metadata.update(verify_conversion(graph, weights, tensors, model, images, VERIFY_IMAGES))
    return tensors, metadata


def _converts_alone(weights: Message, spec: Dict[str, Any]) -> bool:
    """Whether the caffemodel converts with its own embedded layer definitions (when a --prototxt did not)."""
    if not any(layer.type for layer in weights.layer):
        return False
    try:
        caffe_state_dict(InferenceGraph(weights), weights, spec)
    except UserError:
        return False
    return True


def main() -> int:
    """convert-caffe's work, once ``converters.caffe.cli.main`` has taken over errors and Ctrl-C."""
    parser = argparse.ArgumentParser(prog='convert-caffe', description=__doc__.split('\n')[0])
    configure_parser(parser)
    return run(parser.parse_args())

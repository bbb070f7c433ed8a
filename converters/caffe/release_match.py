"""The file's own graph is the truth: each of its layers is placed, in the file's order, in the release's graph.

``place_layers`` walks the layers of the file's ``InferenceGraph`` (``net_rules``), and for each one:
1. sets it up as Caffe does: bottom and top counts, parameters, shapes at the release's 224 x 224 input;
2. checks its blobs as Caffe loads weights (``net_rules.check_blob_shapes``);
3. places it in the release's graph (``converters.caffe.release_graph``, from the model's spec): it takes the
   place of the release layer that reads the same places' outputs; its type and parameters must be that layer's,
   and a weighted layer's name must be its place's name, since its blobs are found by name.
Every release layer must be placed once. Each refusal is one line naming the layers concerned; the first
difference in the file's order is the one reported.

Blob and weightless layer names are otherwise free (Caffe wires by blob name), BN layers may be the fork's
``CuDNNBatchNorm`` or BVLC ``BatchNorm`` + ``Scale``, and a ``Softmax`` of the logits (a deploy prototxt's
``prob``) is accepted and left out: timm's model returns the logits.
"""
from typing import Any, Dict, List, NamedTuple, Optional, Sequence, Tuple

from google.protobuf.message import Message

from timm_sknet.io.errors import UserError

from .mapping import match_layer
from .net_rules import (
    BN_TYPES, CORRUPT, WEIGHTED_TYPES, InferenceGraph, Node, Shape, axis_index, blob_count_error, check_blob_shapes, conv_pair, describe_node, layer_shapes, pool_window, scale_factor, slice_sizes, caffe_shapes)
from .release_graph import release_graph

__all__ = ['check_not_cut_short', 'check_prototxt_fits', 'place_layers', 'release_input_shape']


def _semantics(layer: Message, bottoms: List[Shape]) -> Dict[str, Any]:
    """What a layer computes, in one form per meaning (encodings Caffe treats alike compare equal)."""
    kind = layer.type
    if kind == 'Convolution':
        p = layer.convolution_param
        return dict(kernel=conv_pair(p, 'kernel', None), stride=conv_pair(p, 'stride', 1),
                    pad=conv_pair(p, 'pad', 0), dilation=conv_pair(p, 'dilation', 1), group=p.group,
                    num_output=p.num_output, bias_term=p.bias_term)
    if kind == 'InnerProduct':
        p = layer.inner_product_param
        return dict(num_output=p.num_output, bias_term=p.bias_term, transpose=p.transpose,
                    axis=axis_index(p.axis, bottoms[0]))
    if kind == 'Pooling':
        p, x = layer.pooling_param, bottoms[0]
        kernel, stride, pad = pool_window(layer, x)
        method = p.DESCRIPTOR.fields_by_name['pool'].enum_type.values_by_number[p.pool].name
        if kernel == tuple(x[2:]) and pad == (0, 0):  # one window over the whole map, however written
            return dict(pool=method, window='global')
        return dict(pool=method, kernel=kernel, stride=stride, pad=pad, ceil_mode=p.ceil_mode)
    if kind == 'Eltwise':
        p = layer.eltwise_param
        operation = p.DESCRIPTOR.fields_by_name['operation'].enum_type.values_by_number[p.operation].name
        return dict(operation=operation, coeff=tuple(p.coeff) or (1.,) * len(bottoms))
    if kind == 'ReLU':
        return dict(negative_slope=layer.relu_param.negative_slope)
    if kind == 'Reshape':
        p = layer.reshape_param
        return dict(shape=tuple(p.shape.dim), axis=p.axis, num_axes=p.num_axes)
    if kind == 'Softmax':
        return dict(axis=axis_index(layer.softmax_param.axis, bottoms[0]))
    if kind == 'Slice':
        axis, sizes = slice_sizes(layer, bottoms[0])
        return dict(axis=axis, sizes=tuple(sizes))
    if kind == 'Scale':
        p = layer.scale_param
        return dict(axis=axis_index(p.axis, bottoms[0]), bias_term=p.bias_term, factor=scale_factor(layer, bottoms))
    return {}  # BN (its eps is folded into the variance), Axpy, Split: nothing beyond the type


def _commutes(layer: Message) -> bool:
    p = layer.eltwise_param
    return layer.type == 'Eltwise' and p.operation == p.SUM and len(set(p.coeff)) <= 1


_Place = Tuple[str, int]  # (release layer name, top index); ('', 0) is the image
_IMAGE: _Place = ('', 0)


class _Graph(NamedTuple):
    graph: InferenceGraph
    shapes: Dict[Tuple[str, int], Shape]
    image: Shape

    def bottoms(self, layer: Message) -> List[Shape]:
        return [self.image if node is None else self.shapes[node.layer.name, node.top]
                for node in self.graph.inputs[layer.name]]

    def semantics(self, layer: Message) -> Dict[str, Any]:
        return _semantics(layer, self.bottoms(layer))


class _Placement:
    """Walks the file's layers in order, giving each the place of the release layer it stands for."""

    def __init__(self, found: _Graph, release: _Graph, model_name: str):
        self.found, self.release = found, release
        self.readers: Dict[_Place, List[str]] = {}  # release place -> the release layers that read it
        for layer in release.graph.layers:
            for place in dict.fromkeys(self.release_places(layer)):
                self.readers.setdefault(place, []).append(layer.name)
        self.by_name = {layer.name: layer for layer in release.graph.layers}
        self.placed: Dict[str, str] = {}  # file layer name -> release layer name
        self.other = (f"not the graph of the release's {model_name}: check --model, or use the released file "
                      '(is it corrupt or edited?)')
        self.model_name = model_name

    def release_places(self, layer: Message) -> List[_Place]:
        inputs = self.release.graph.inputs[layer.name]
        return [_IMAGE if node is None else (node.layer.name, node.top) for node in inputs]

    def reads(self, layer: Message, places: List[_Place]) -> bool:
        expected = self.release_places(layer)
        return sorted(expected) == sorted(places) if _commutes(layer) else expected == places

    def run(self, blobs: Dict[str, Sequence[Message]]) -> Dict[str, str]:
        """Each layer in the file's order: set up as Caffe does, its blobs checked against its parameters, then
        placed and compared; the first difference is the one reported."""
        taken = set()
        for layer in self.found.graph.layers:
            nodes = self.found.graph.inputs[layer.name]
            tops, params = layer_shapes(layer, self.found.bottoms(layer))
            for index, shape in enumerate(tops):
                self.found.shapes[layer.name, index] = shape
            if len(blobs.get(layer.name, ())):
                check_blob_shapes(layer, blobs[layer.name], params)
            if layer.type == 'Split':
                continue
            unplaced = [node for node in nodes if node is not None and node.layer.name not in self.placed]
            if unplaced:
                raise UserError(f"{layer.type} layer '{layer.name}' reads {describe_node(unplaced[0])}, which has no "
                                f'place in the release graph: {self.other}')
            places = [_IMAGE if node is None else (self.placed[node.layer.name], node.top) for node in nodes]
            if layer.type == 'Softmax' and places == [(self.found.graph.classifier.name, 0)]:
                continue  # probabilities of the logits (a deploy prototxt's 'prob'): timm returns the logits
            names = dict.fromkeys(name for place in places for name in self.readers.get(place, ()))
            candidates = [self.by_name[name] for name in names
                          if name not in taken and self.reads(self.by_name[name], places)]
            expected = self.choose(layer, [e for e in candidates if e.type == layer.type])
            if expected is None:
                raise self.misplaced(layer, nodes, candidates, taken)
            self.compare(layer, expected)
            if len(blobs.get(layer.name, ())) != len(params):  # none at all: Caffe would keep its random init
                raise blob_count_error(layer, len(blobs.get(layer.name, ())), len(params))
            self.placed[layer.name] = expected.name
            taken.add(expected.name)
        missing = [layer for layer in self.release.graph.layers if layer.name not in taken]
        if missing:
            wanted = ', '.join(map(describe_node, self.release.graph.inputs[missing[0].name]))
            raise UserError(f"the release's {missing[0].type} layer '{missing[0].name}' (reading {wanted}) has no "
                            f"counterpart in the file's graph: {self.other}")
        return self.placed

    def choose(self, layer: Message, same_type: List[Message]) -> Optional[Message]:
        """Of the release layers this one could stand for, the one it computes the same as, else its namesake."""
        if len(same_type) < 2:
            return same_type[0] if same_type else None
        found = self.found.semantics(layer)
        alike = [e for e in same_type if self.release.semantics(e) == found] or same_type
        return next((e for e in alike if e.name == layer.name), alike[0])

    def compare(self, layer: Message, expected: Message) -> None:
        found, wanted = self.found.semantics(layer), self.release.semantics(expected)
        if found != wanted:
            keys = [k for k in {**wanted, **found} if found.get(k) != wanted.get(k)]
            match = match_layer(expected.name)
            module = f" ({self.model_name}'s {match.module})" if match and layer.type in WEIGHTED_TYPES else ''
            raise UserError(
                f"{layer.type} layer '{layer.name}' has {_fields(found, keys)} where the release's "
                f"'{expected.name}'{module} has {_fields(wanted, keys)}: {self.other}")
        if layer.type in WEIGHTED_TYPES and layer.name != expected.name:
            sources = ', '.join(map(self.describe, self.found.graph.inputs[layer.name]))
            raise UserError(
                f"{layer.type} layer '{layer.name}' stands where the release has '{expected.name}' (it reads "
                f"{sources}): the file's layer names and graph disagree, so its weights would land in the wrong "
                f'place; {CORRUPT}')

    def describe(self, node: Optional[Node]) -> str:
        """A file layer's output, with the release layer whose place it took when that one has another name."""
        place = node and self.placed.get(node.layer.name)
        return describe_node(node) + (f" (in the place of the release's '{place}')" if place and place != node.layer.name
                                  else '')

    def misplaced(self, layer: Message, nodes: List[Optional[Node]], candidates: List[Message],
                  taken) -> UserError:
        sources = ', '.join(map(self.describe, nodes))
        namesake = self.by_name.get(layer.name)
        if namesake is not None and namesake.name not in taken and namesake.type == layer.type:
            wanted = ', '.join(map(describe_node, self.release.graph.inputs[namesake.name]))
            return UserError(f"{layer.type} layer '{layer.name}' reads {sources} where the release's reads {wanted}: "
                             f'the graph is wired differently; {self.other}')
        if candidates:
            return UserError(f"{layer.type} layer '{layer.name}' (reading {sources}) stands where the release has "
                             f"{candidates[0].type} layer '{candidates[0].name}': {self.other}")
        return UserError(f"{layer.type} layer '{layer.name}' (reading {sources}) has no counterpart in the release "
                         f'graph: {self.other}')


def _value(value: Any) -> str:
    return f'{value:g}' if isinstance(value, float) else str(value)


def _fields(values: Dict[str, Any], keys: List[str]) -> str:
    return ', '.join(f'{key} {_value(values[key])}' if key in values else f'no {key}' for key in keys)


def release_input_shape(spec: Dict[str, Any]) -> Shape:
    """(1, C, 224, 224) for the release's models: the size at which its head pool is global."""
    return 1, spec['tensors']['conv1.weight'][1], spec['head_pool'][0] * 32, spec['head_pool'][1] * 32


def place_layers(graph: InferenceGraph, blobs: Dict[str, Sequence[Message]], spec: Dict[str, Any]) -> Dict[str, str]:
    """File layer name -> name of the release layer whose place it takes, after checking every layer and its
    blobs (``blobs``: layer name -> its blobs in the weights file) as Caffe does; one line for any difference.

    The release's graph is built in the BN style of the file's first BN (``CuDNNBatchNorm``, or ``BatchNorm`` +
    ``Scale``) and set up at the release's input size.
    """
    image = release_input_shape(spec)
    first_bn = next((layer.type for layer in graph.layers if layer.type in BN_TYPES), None)
    bn_style = 'bvlc' if first_bn == 'BatchNorm' else 'cudnn'
    release = InferenceGraph(release_graph(spec, bn_style))
    placement = _Placement(_Graph(graph, {}, image), _Graph(release, caffe_shapes(release, image), image),
                           spec['architecture'])
    return placement.run(blobs)


def _holds_blobs(layer: Message) -> bool:
    return layer.type in WEIGHTED_TYPES or layer.type in BN_TYPES or (layer.type == 'Scale' and len(layer.bottom) == 1)


def _weighted_names(layers: Sequence[Message]) -> List[str]:
    return [layer.name for layer in layers if _holds_blobs(layer)]


def check_not_cut_short(weights: Message, spec: Dict[str, Any], path: str) -> None:
    """Refuse, as incomplete, a caffemodel that looks like the release's file cut short on a layer boundary (the
    protobuf then parses): every layer holding blobs is one of the release's, and the classifier, whose blobs
    come last, is among those it lacks."""
    first_bn = next((layer.type for layer in weights.layer if layer.type in BN_TYPES), None)
    release = _weighted_names(release_graph(spec, 'bvlc' if first_bn == 'BatchNorm' else 'cudnn').layer)
    held = {layer.name for layer in weights.layer if len(layer.blobs)}
    missing = [name for name in release if name not in held]
    classifier = next(name for name in release if (m := match_layer(name)) and m.row.role == 'classifier')
    if held and held <= set(release) and classifier in missing:
        raise UserError(
            f"{path} looks incomplete: it ends after layer '{weights.layer[-1].name}', without {len(missing)} of the "
            f"release's {len(release)} layers with weights (the first: '{missing[0]}'), as a download cut short "
            'does; download it again')


def check_prototxt_fits(prototxt: Message, weights: Message, prototxt_path: str, caffemodel_path: str) -> None:
    """A ``--prototxt`` must define a layer for each of the caffemodel's layers with blobs, and no layer with
    weights that the caffemodel does not hold: otherwise it is the prototxt of another network."""
    defined = _weighted_names(prototxt.layer)
    held = [layer.name for layer in weights.layer if len(layer.blobs)]
    undefined = [name for name in held if name not in set(defined)]
    unfilled = [name for name in defined if name not in set(held)]
    if undefined or unfilled:
        found = [f"{len(unfilled)} of its layers with weights have none in the caffemodel (first: '{unfilled[0]}')"
                 if unfilled else '',
                 f"{len(undefined)} of the caffemodel's layers are not in it (first: '{undefined[0]}')"
                 if undefined else '']
        raise UserError(
            f"--prototxt {prototxt_path} does not describe {caffemodel_path}: {' and '.join(f for f in found if f)}; "
            'pass the prototxt released with this caffemodel, or leave out --prototxt if the caffemodel embeds '
            'its layers')

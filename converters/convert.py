"""Caffe SKNet release -> timm state dict, by graph and names, every blob and every tensor accounted for.

The graph (the prototxt, or the layer definitions every caffemodel embeds) is walked in order; each weighted
layer is looked up in ``mapping.LAYER_TABLE``, its geometry compared with the target timm module, and the
normalisation layers that consume its output fill its BN. Nothing is written here: the caller gets arrays
whose names and shapes already match the target model exactly.

The target is the model's architecture spec (``specs/<model>.json``, generated from the timm model by
``converters.spec`` and tested equal to it), not the model itself: the conversion never imports torch or timm,
whose import alone takes several times the memory the conversion does.
"""
import json
from collections import Counter
from pathlib import Path
from typing import Any, Dict, List, NamedTuple, Optional, Set, Tuple

import numpy as np
from google.protobuf import text_format
from google.protobuf.message import Message

from timm_sknet.errors import UserError

from .caffe_proto import blob_array
from .mapping import BVLC_BN_BLOBS, CAFFE_BN_EPS, CUDNN_BN_BLOBS, SCALE_BLOBS, LayerMatch, match_layer

__all__ = [
    'CAFFE_TAG', 'SPEC_DIR', 'convertible_models', 'target_spec', 'InferenceGraph', 'bn_eps', 'caffe_state_dict']

CAFFE_TAG = 'caffe_in1k'  # the pretrained tag whose data config is the release's input convention
SPEC_DIR = Path(__file__).parent / 'specs'  # one architecture spec per model in the release's format
_BN_TYPES = ('CuDNNBatchNorm', 'BatchNorm')
_PATH_ROLES = ('path0', 'path1')
# Release layer types with nothing to check on their own (Reshape and Softmax are checked as part of the
# attention). The train/val data, loss and accuracy layers hang off the label: not part of the walked graph.
_PLAIN_TYPES = ('ReLU', 'Reshape', 'Softmax')


def convertible_models() -> List[str]:
    """Models whose data config is the release's input convention (their ``caffe_in1k`` tag): those with a spec."""
    return sorted(path.stem for path in SPEC_DIR.glob('*.json'))


def target_spec(model_name: str) -> Dict[str, Any]:
    """The target architecture as data: names, shapes and module geometry of ``{model_name}.caffe_in1k``."""
    if model_name not in convertible_models():
        raise UserError(
            f"{model_name} is not a model in the Caffe release's format; choose one of {convertible_models()}")
    return json.loads((SPEC_DIR / f'{model_name}.json').read_text())


class Node(NamedTuple):
    """One output (top) of a layer, as seen by the layer that consumes it."""
    layer: Message
    top: int


class InferenceGraph:
    """The layers between the image and the logits, with each bottom resolved to the output that feeds it.

    Walks the layers in order from the stem convolution's input: a layer belongs when all its bottoms derive
    from the image, so data layers, the label and loss / accuracy layers drop out, and in-place layers
    (ReLU, BVLC BatchNorm/Scale) resolve to the right producer.
    """

    def __init__(self, net: Message):
        self.layers: List[Message] = []
        self.inputs: Dict[str, List[Node]] = {}
        self.matches: Dict[str, LayerMatch] = {}
        stem = [layer for layer in net.layer if (m := match_layer(layer.name)) and m.row.role == 'stem']
        if len(stem) != 1 or len(stem[0].bottom) != 1:
            names = ', '.join(layer.name for layer in net.layer[:4])
            raise UserError(
                f'the network has no single stem convolution conv1/7x7_s2 (its first layers are {names}): '
                'it is not an SKNet of the Caffe release')
        self.image_blob = stem[0].bottom[0]
        producers: Dict[str, Optional[Node]] = {self.image_blob: None}
        for layer in net.layer:
            if not layer.bottom or any(b not in producers for b in layer.bottom):
                continue
            self.layers.append(layer)
            self.inputs[layer.name] = [producers[b] for b in layer.bottom]
            match = match_layer(layer.name)
            if match:
                self.matches[layer.name] = match
            for i, top in enumerate(layer.top):
                producers[top] = Node(layer, i)
        classifier = [name for name, match in self.matches.items() if match.row.role == 'classifier']
        if len(classifier) != 1:
            raise UserError("the network has no single 'classifier' layer after the image: not an SKNet release")
        self.logits_blob = next(layer.top[0] for layer in self.layers if layer.name == classifier[0])

    def source(self, layer: Message, index: int = 0) -> Optional[Node]:
        return self.inputs[layer.name][index]


def _pair(values, default: Optional[int], hw: Optional[Tuple[int, int]] = None) -> Tuple[int, int]:
    if hw is not None:
        return hw
    values = list(values) or [default]
    return values[0], values[-1]  # one value for both axes, or (h, w)


def _conv_geometry(layer: Message) -> Dict[str, tuple]:
    p = layer.convolution_param
    return dict(
        kernel=_pair(p.kernel_size, None, (p.kernel_h, p.kernel_w) if p.HasField('kernel_h') else None),
        stride=_pair(p.stride, 1, (p.stride_h, p.stride_w) if p.HasField('stride_h') else None),
        padding=_pair(p.pad, 0, (p.pad_h, p.pad_w) if p.HasField('pad_h') else None),
        dilation=_pair(p.dilation, 1),
        groups=p.group)


def _module_geometry(conv: Dict[str, Any]) -> Dict[str, tuple]:
    return dict(
        kernel=tuple(conv['kernel']), stride=tuple(conv['stride']), padding=tuple(conv['padding']),
        dilation=tuple(conv['dilation']), groups=conv['groups'])


def bn_eps(layer: Message) -> float:
    """The eps of a CuDNNBatchNorm or BatchNorm layer."""
    # BVLC's BatchNorm keeps it in field 139; the fork's CuDNNBatchNorm (and any text prototxt) under the name
    # batch_norm_param, which this schema reads as field 200
    for field in ('bvlc_batch_norm_param', 'batch_norm_param'):
        if layer.HasField(field):
            return getattr(layer, field).eps
    return CAFFE_BN_EPS


def _squeezed(shape) -> tuple:
    return tuple(d for d in shape if d != 1)


class _Converter:
    def __init__(self, graph: InferenceGraph, weights: Message, spec: Dict[str, Any]):
        self.graph = graph
        self.model_name = spec['architecture']
        self.modules = spec['modules']  # module name -> {'type': 'Conv2d', 'kernel': [3, 3], ...}
        self.expected = {key: tuple(shape) for key, shape in spec['tensors'].items()}
        self.stage_units = spec['stage_units']
        self.head_map = tuple(spec['head_pool'])
        self.blobs = {layer.name: layer.blobs for layer in weights.layer if len(layer.blobs)}
        self.tensors: Dict[str, np.ndarray] = {}
        self.consumed: Set[str] = set()
        self.bvlc_pending: Dict[str, str] = {}  # BatchNorm layer -> its timm BN module, waiting for the Scale

    # -- blobs -------------------------------------------------------------------------------------------
    def layer_blobs(self, layer: Message, count: int, what: str) -> List[np.ndarray]:
        blobs = self.blobs.get(layer.name, ())
        if len(blobs) != count:
            raise UserError(f"{layer.type} layer '{layer.name}' has {len(blobs)} blobs; expected {count} ({what})")
        self.consumed.add(layer.name)
        arrays = []
        for i, blob in enumerate(blobs):
            where = f"blob {i} of layer '{layer.name}'"
            array = blob_array(blob, where)
            bad = array.size - np.count_nonzero(np.isfinite(array))
            if bad:
                raise UserError(f'{where} holds {bad} NaN/Inf values: the caffemodel is corrupt')
            arrays.append(array)
        return arrays

    def put(self, key: str, array: np.ndarray, layer: Message) -> None:
        """Store ``array`` as timm's ``key`` once its shape is checked (singleton axes aside: (1, C, 1, 1) blobs)."""
        if key not in self.expected:
            raise UserError(
                f"layer '{layer.name}' fills {key}, which {self.model_name} does not have: wrong --model?")
        expected = self.expected[key]
        if array.shape != expected:
            if _squeezed(array.shape) != _squeezed(expected):
                raise UserError(
                    f"layer '{layer.name}' has shape {list(array.shape)} where {self.model_name}'s {key} is "
                    f'{list(expected)}: the caffemodel does not match --model {self.model_name}')
            array = array.reshape(expected)
        self.tensors[key] = np.ascontiguousarray(array, dtype=np.float32)

    # -- layers ------------------------------------------------------------------------------------------
    def weighted(self, layer: Message, match: LayerMatch) -> None:
        module = self.modules.get(match.module)
        kind = 'Conv2d' if layer.type == 'Convolution' else 'Linear'
        if module is None or module['type'] != kind:
            raise UserError(
                f"{layer.type} layer '{layer.name}' maps to {match.module}, which {self.model_name} does not "
                f'have as a {kind}: the caffemodel does not match --model {self.model_name}')
        if kind == 'Conv2d':
            found, expected = _conv_geometry(layer), _module_geometry(module)
            if found != expected:
                raise UserError(
                    f"convolution '{layer.name}' has {found}, {self.model_name}'s {match.module} has {expected}")
            bias_term = layer.convolution_param.bias_term
        else:
            bias_term = layer.inner_product_param.bias_term
        arrays = self.layer_blobs(layer, 2 if bias_term else 1, 'weights, bias' if bias_term else 'weights')
        weight = arrays[0]
        if match.row.role == 'stem':
            weight = weight[:, ::-1]  # bgr_to_rgb
        self.put(f'{match.module}.weight', weight, layer)
        if bias_term:
            self.put(f'{match.module}.bias', arrays[1], layer)

    def batch_norm(self, layer: Message) -> None:
        producer = self.graph.source(layer)
        match = producer and self.graph.matches.get(producer.layer.name)
        if not (match and match.bn_module and producer.layer.type == 'Convolution'):
            raise UserError(f"{layer.type} layer '{layer.name}' does not follow a convolution that has a BN")
        bn = self.modules[match.bn_module]
        eps_caffe = bn_eps(layer)
        # bn_eps: timm's eps is fixed, so a different Caffe eps moves into the variance
        eps_delta = 0. if np.float32(eps_caffe) == np.float32(bn['eps']) else eps_caffe - bn['eps']
        if layer.type == 'CuDNNBatchNorm':
            arrays = self.layer_blobs(layer, 4, 'scale, bias, mean, variance')
            arrays[3] = arrays[3] + eps_delta
            for name, array in zip(CUDNN_BN_BLOBS, arrays):
                self.put(f'{match.bn_module}.{name}', array, layer)
        else:
            mean_s, var_s, s = self.layer_blobs(layer, 3, 'mean * s, variance * s, s')
            if s.size != 1:
                raise UserError(f"BatchNorm layer '{layer.name}' has a scale-factor blob of {s.size} values, not 1")
            factor = 0. if s.item() == 0 else 1. / s.item()  # as Caffe: s = 0 means statistics of 0
            for name, array in zip(BVLC_BN_BLOBS, (mean_s * factor, var_s * factor + eps_delta)):
                self.put(f'{match.bn_module}.{name}', array, layer)
            self.bvlc_pending[layer.name] = match.bn_module

    def affine_scale(self, layer: Message) -> None:
        producer = self.graph.source(layer)
        bn_module = producer and self.bvlc_pending.pop(producer.layer.name, None)
        if bn_module is None:
            raise UserError(f"Scale layer '{layer.name}' with blobs does not follow a BatchNorm layer")
        for name, array in zip(SCALE_BLOBS, self.layer_blobs(layer, 2, 'gamma, beta (bias_term: true)')):
            self.put(f'{bn_module}.{name}', array, layer)

    def pooling(self, layer: Message) -> None:
        p = layer.pooling_param
        kernel = (p.kernel_h, p.kernel_w) if p.HasField('kernel_h') else (p.kernel_size,) * 2
        stride = (p.stride_h, p.stride_w) if p.HasField('stride_h') else (p.stride,) * 2
        pad = (p.pad_h, p.pad_w) if p.HasField('pad_h') else (p.pad,) * 2
        if p.pool == p.MAX:
            pool = self.modules['maxpool']  # the models in the release format have the Caffe ceil-mode MaxPool2d
            found = (kernel, stride, pad, p.ceil_mode, p.global_pooling)
            expected = (tuple(pool['kernel']), tuple(pool['stride']), tuple(pool['padding']), pool['ceil_mode'], False)
            ok = found == expected
        else:
            ok = p.pool == p.AVE and (p.global_pooling or (kernel == self.head_map and pad == (0, 0)))
        if not ok:
            raise UserError(
                f"pooling layer '{layer.name}' ({text_format.MessageToString(p, as_one_line=True)}) is not one the "
                f'release uses with {self.model_name}')

    def attention_slice(self, layer: Message) -> None:
        """B_fc2 -> Reshape (0, M, -1, 0) -> Softmax axis 1 -> Slice axis 1: weights of path m are slice m."""
        softmax = self.graph.source(layer)
        reshape = softmax and softmax.layer.type == 'Softmax' and self.graph.source(softmax.layer)
        logits = reshape and reshape.layer.type == 'Reshape' and self.graph.source(reshape.layer)
        match = logits and self.graph.matches.get(logits.layer.name)
        num_paths = len(layer.top)
        ok = (
            match is not None and match.row.role == 'fc2' and softmax.layer.softmax_param.axis == 1
            and list(reshape.layer.reshape_param.shape.dim) == [0, num_paths, -1, 0]
            and layer.slice_param.axis == 1 and list(layer.slice_param.slice_point) in ([], list(range(1, num_paths))))
        if not ok:
            raise UserError(
                f"slice '{layer.name}' does not split B_fc2's softmax path by path as the release does "
                '(Reshape (0, M, -1, 0), Softmax axis 1, Slice axis 1)')

    def selection(self, layer: Message, weights_index: int, feature_index: int) -> None:
        """A path's output multiplied by its selection weights: the slice index must be the path's."""
        node = self.graph.source(layer, weights_index)
        while node and node.layer.type == 'Reshape':
            node = self.graph.source(node.layer)
        slice_index = node.top if node and node.layer.type == 'Slice' else None
        node = self.graph.source(layer, feature_index)
        while node and (node.layer.type in ('ReLU', *_BN_TYPES) or (
                node.layer.type == 'Scale' and len(node.layer.bottom) == 1)):
            node = self.graph.source(node.layer)
        match = node and self.graph.matches.get(node.layer.name)
        path_index = _PATH_ROLES.index(match.row.role) if match and match.row.role in _PATH_ROLES else None
        if slice_index is None or path_index is None or slice_index != path_index:
            raise UserError(
                f"{layer.type} layer '{layer.name}' does not weight SK path {path_index} by its own slice "
                f'({slice_index}) of the attention: the graph differs from the release')

    def layer(self, layer: Message) -> None:
        match = self.graph.matches.get(layer.name)
        kind = layer.type
        if kind in ('Convolution', 'InnerProduct') and match:
            self.weighted(layer, match)
        elif kind in _BN_TYPES:
            self.batch_norm(layer)
        elif kind == 'Scale' and len(layer.bottom) == 1:
            self.affine_scale(layer)
        elif kind == 'Scale':
            self.selection(layer, weights_index=1, feature_index=0)
        elif kind == 'Axpy':
            self.selection(layer, weights_index=0, feature_index=1)
        elif kind == 'Slice':
            self.attention_slice(layer)
        elif kind == 'Pooling':
            self.pooling(layer)
        elif kind == 'Eltwise':
            p = layer.eltwise_param
            if p.operation != p.SUM or any(c != 1 for c in p.coeff):
                raise UserError(f"Eltwise layer '{layer.name}' is not a plain SUM as in the release")
        elif kind == 'ReLU' and layer.relu_param.negative_slope:
            raise UserError(f"ReLU layer '{layer.name}' is leaky (negative_slope); the release's is not")
        elif kind not in _PLAIN_TYPES:
            raise UserError(
                f"{kind} layer '{layer.name}' is not part of the SKNet release graph: this is another architecture")

    def run(self) -> Dict[str, np.ndarray]:
        self.check_depth()
        for layer in self.graph.layers:
            self.layer(layer)
        if self.bvlc_pending:
            raise UserError(
                f'BatchNorm layer {next(iter(self.bvlc_pending))!r} has no Scale layer (gamma, beta) after it')
        unused = sorted(set(self.blobs) - self.consumed)
        if unused:
            raise UserError(
                f'{len(unused)} layers with weights are not part of the SKNet graph, e.g. {unused[0]!r}: '
                'the caffemodel holds another architecture or does not match the prototxt')
        missing = [k for k in self.expected if k not in self.tensors and not k.endswith('.num_batches_tracked')]
        if missing:
            raise UserError(
                f'the caffemodel leaves {len(missing)} tensors of {self.model_name} empty, e.g. {missing[0]}: '
                'it does not match --model')
        # num_batches_tracked has no Caffe counterpart: left at its default, 0
        for key in self.expected:
            if key.endswith('.num_batches_tracked'):
                self.tensors[key] = np.zeros((), dtype=np.int64)
        return {key: self.tensors[key] for key in self.expected}

    def check_depth(self) -> None:
        """Units per stage of the caffemodel against the model's, for a clear message on a depth mismatch."""
        units = Counter(m.stage for m in self.graph.matches.values() if m.row.role == 'reduce')
        found = [units[s] for s in sorted(units)]
        expected = self.stage_units
        if found and found != expected:  # no SK units at all: the layer walk names the first foreign layer
            raise UserError(
                f"the caffemodel's stages have {'/'.join(map(str, found))} units, {self.model_name}'s "
                f"{'/'.join(map(str, expected))}: it is another model (--model {self.model_name} is wrong?)")


def caffe_state_dict(graph: InferenceGraph, weights: Message, spec: Dict[str, Any]) -> Dict[str, np.ndarray]:
    """Arrays named and shaped exactly as the state dict of ``spec``'s model, from the Caffe graph and its blobs.

    Raises ``UserError`` on any mismatch, before the caller writes anything.
    """
    return _Converter(graph, weights, spec).run()

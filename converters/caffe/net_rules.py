"""Caffe's own rules for a net: which layers run at test time and how they are wired, and each layer's setup.

``InferenceGraph``: the layers Caffe runs at test time, wired as Caffe wires them (a bottom must be produced
before it is read; a top has one producer unless a layer works in place), reduced to those that derive from the
image. Data, label, loss and accuracy layers drop out; Caffe's own ``Split`` layers are seen through.

``layer_shapes`` sets a layer up as Caffe does (bottom and top counts, parameters, output and parameter shapes);
``check_blob_shapes`` checks its blobs as Caffe loads weights (a parameter the blobs also encode, such as
num_output, group, kernel, bias_term or channels, must agree with them). ``release_match`` uses both to place a
file's layers in the release's graph.
"""
import math
from typing import Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple

from google.protobuf.message import Message

from timm_sknet.io.errors import UserError

from .proto import LayerParameter, blob_shape
from .mapping import LayerMatch, match_layer

__all__ = ['BN_TYPES', 'CORRUPT', 'WEIGHTED_TYPES', 'InferenceGraph', 'Node', 'Shape', 'blob_count_error', 'caffe_shapes',
           'check_blob_shapes', 'describe_node', 'layer_shapes']

Shape = Tuple[int, ...]
WEIGHTED_TYPES = ('Convolution', 'InnerProduct')
BN_TYPES = ('CuDNNBatchNorm', 'BatchNorm')
CORRUPT = 'the file is corrupt or was edited; use the released file'
_TEST = LayerParameter.DESCRIPTOR.fields_by_name['phase'].enum_type.values_by_name['TEST'].number


class Node(NamedTuple):
    """One output (top) of a layer, as seen by the layer that consumes it."""
    layer: Message
    top: int


def describe_node(node: Optional[Node]) -> str:
    return 'the image' if node is None else f"'{node.layer.name}'" + (f' (top {node.top})' if node.top else '')


def _caffe_refuses(layer: Message, reason: str) -> UserError:
    return UserError(f"{layer.type} layer '{layer.name}': Caffe refuses this net ({reason}); {CORRUPT}")


def _runs_at_test(layer: Message) -> bool:
    """Caffe's NetState rules for the test phase (level 0, no stages)."""
    def meets(rule: Message) -> bool:
        return not ((rule.HasField('phase') and rule.phase != _TEST) or rule.min_level > 0
                    or (rule.HasField('max_level') and rule.max_level < 0) or len(rule.stage))
    if len(layer.include) and len(layer.exclude):
        raise _caffe_refuses(layer, 'Specify either include rules or exclude rules; not both.')
    if len(layer.include):
        return any(meets(rule) for rule in layer.include)
    return not any(meets(rule) for rule in layer.exclude)


class InferenceGraph:
    """The test-phase layers between the image and the logits, each bottom resolved to the output that feeds it.

    The image is the stem convolution's input. Blobs that layers of the other phase produce (a snapshot's
    TRAIN-only data layer) count as inputs, as do the net's declared ``input`` blobs.
    """

    def __init__(self, net: Message):
        self.layers: List[Message] = []
        self.inputs: Dict[str, List[Optional[Node]]] = {}
        self.matches: Dict[str, LayerMatch] = {}  # by name: for messages; ``place_layers`` decides by place
        active, other_phase = [], set()
        for layer in net.layer:
            if _runs_at_test(layer):
                active.append(layer)
            else:
                other_phase.update(layer.top)
        names = [layer.name for layer in active]
        if len(set(names)) != len(names):
            twice = next(name for name in names if names.count(name) > 1)
            raise UserError(f"two layers are named '{twice}', so their blobs cannot be told apart; {CORRUPT}")
        stem = [layer for layer in active if (m := match_layer(layer.name)) and m.row.role == 'stem']
        if len(stem) != 1 or len(stem[0].bottom) != 1:
            first = ', '.join(layer.name for layer in net.layer[:4])
            raise UserError(
                f'the network has no single stem convolution conv1/7x7_s2 (its first layers are {first}): '
                'it is not an SKNet of the Caffe release')
        self.image_blob = stem[0].bottom[0]
        available, produced = {*net.input, *other_phase, self.image_blob}, set(net.input)
        producers: Dict[str, Optional[Node]] = {self.image_blob: None}
        for layer in active:
            for index, blob in enumerate(layer.bottom):
                if blob not in available:
                    raise _caffe_refuses(
                        layer, f"Unknown bottom blob '{blob}' (layer '{layer.name}', bottom index {index})")
            for index, blob in enumerate(layer.top):
                if blob in produced and not (index < len(layer.bottom) and layer.bottom[index] == blob):
                    raise _caffe_refuses(layer, f"Top blob '{blob}' produced by multiple sources.")
                produced.add(blob)
                available.add(blob)
            if layer.bottom and all(blob in producers for blob in layer.bottom):
                self._add(layer, [producers[blob] for blob in layer.bottom], producers)
            else:  # off the image's path (data, label, loss, accuracy): what it writes no longer derives from it
                for blob in layer.top:
                    if blob != self.image_blob:
                        producers.pop(blob, None)
        classifier = [name for name, match in self.matches.items() if match.row.role == 'classifier']
        if len(classifier) != 1:
            raise UserError("the network has no single 'classifier' layer after the image: not an SKNet release")
        self.classifier = next(layer for layer in self.layers if layer.name == classifier[0])

    def _add(self, layer: Message, inputs: List[Optional[Node]], producers: Dict[str, Optional[Node]]) -> None:
        self.layers.append(layer)
        self.inputs[layer.name] = inputs
        match = match_layer(layer.name)
        if match:
            self.matches[layer.name] = match
        for index, blob in enumerate(layer.top):
            # Caffe's Split copies its bottom to every top: its readers read the bottom's producer
            producers[blob] = inputs[0] if layer.type == 'Split' else Node(layer, index)

    @property
    def logits_blob(self) -> str:
        return self.classifier.top[0]

    def source(self, layer: Message, index: int = 0) -> Optional[Node]:
        return self.inputs[layer.name][index]


# -- each layer set up as Caffe does: counts, parameters, shapes, blobs ---------------------------------

class _Refusal(Exception):
    """Caffe's reason for refusing a layer; ``layer_shapes`` names the layer."""


def _require(condition: bool, reason: str) -> None:
    if not condition:
        raise _Refusal(reason)


def axis_index(axis: int, shape: Shape) -> int:
    _require(-len(shape) <= axis < len(shape), f'axis {axis} out of range for {len(shape)}-D Blob with shape {shape}')
    return axis % len(shape)


def _count(shape: Sequence[int]) -> int:
    return math.prod(shape)


# type -> (min bottoms, max bottoms, min tops, max tops); None: no limit. Caffe's Exact/Min/MaxNum*Blobs.
_BLOB_COUNTS = {
    'Convolution': (1, None, 1, None), 'InnerProduct': (1, 1, 1, 1), 'Pooling': (1, 1, 1, 2),
    'ReLU': (1, 1, 1, 1), 'BatchNorm': (1, 1, 1, 1), 'CuDNNBatchNorm': (1, 1, 1, 1), 'Scale': (1, 2, 1, 1),
    'Eltwise': (2, None, 1, 1), 'Reshape': (1, 1, 1, 1), 'Softmax': (1, 1, 1, 1), 'Slice': (1, 1, 1, None),
    'Split': (1, 1, 1, None), 'Axpy': (3, 3, 1, 1),
}


def _check_counts(layer: Message) -> None:
    low_b, high_b, low_t, high_t = _BLOB_COUNTS[layer.type]
    for count, low, high, what in ((len(layer.bottom), low_b, high_b, 'takes {} bottom blob(s) as input'),
                                   (len(layer.top), low_t, high_t, 'produces {} top blob(s) as output')):
        if low == high:
            _require(count == low, f'{layer.type} Layer {what.format(low)}.')
        _require(count >= low, f"{layer.type} Layer {what.format(f'at least {low}')}.")
        _require(high is None or count <= high, f"{layer.type} Layer {what.format(f'at most {high}')}.")
    if layer.type == 'Convolution':
        _require(len(layer.top) == len(layer.bottom),
                 'Convolution Layer produces one top blob as output for each bottom blob input.')
    if layer.type == 'Pooling' and layer.pooling_param.pool != layer.pooling_param.MAX:
        _require(len(layer.top) == 1, 'Pooling Layer produces 1 top blob(s) as output.')  # only MAX has a mask


def conv_pair(p: Message, name: str, default: Optional[int]) -> Tuple[int, int]:
    """kernel / stride / pad of a 2-D convolution, from ``<name>`` (once or per axis) or ``<name>_h``, ``_w``."""
    listed = list(getattr(p, 'kernel_size' if name == 'kernel' else name))
    label = 'kernel_size' if name == 'kernel' else name
    if name != 'dilation' and (p.HasField(f'{name}_h') or p.HasField(f'{name}_w')):
        _require(not listed, f'Either {label} or {name}_h/w should be specified; not both.')
        if name == 'kernel':
            _require(p.HasField('kernel_h') and p.HasField('kernel_w'),
                     'For non-square filters both kernel_h and kernel_w are required.')
        return getattr(p, f'{name}_h'), getattr(p, f'{name}_w')
    _require(len(listed) in ((1, 2) if default is None else (0, 1, 2)),
             f'{label} must be specified once, or once per spatial dimension ({label} specified {len(listed)} '
             'times; 2 spatial dims).')
    return (listed[0], listed[-1]) if listed else (default, default)


def _convolution(layer: Message, bottoms: List[Shape]) -> Tuple[List[Shape], List[Tuple[Shape, str]]]:
    p = layer.convolution_param
    x = bottoms[0]
    _require(all(b == x for b in bottoms), 'All inputs must have the same shape.')
    _require(len(x) == 4 and axis_index(p.axis, x) == 1,
             f'a convolution over axis {p.axis} of a {len(x)}-D blob; the release has 2-D ones over axis 1')
    kernel, stride, pad = conv_pair(p, 'kernel', None), conv_pair(p, 'stride', 1), conv_pair(p, 'pad', 0)
    dilation = conv_pair(p, 'dilation', 1)
    _require(min(kernel) > 0, 'Filter dimensions must be nonzero.')
    _require(min(stride) > 0, 'Stride dimensions must be nonzero.')
    _require(p.group > 0, f'group {p.group}: a convolution needs at least one group')
    _require(x[1] % p.group == 0, f'channels_ % group_ == 0: {x[1]} input channels in {p.group} groups')
    _require(p.num_output > 0, 'num_output_ > 0')
    _require(p.num_output % p.group == 0, 'Number of output should be multiples of group.')
    size = tuple((x[2 + i] + 2 * pad[i] - dilation[i] * (kernel[i] - 1) - 1) // stride[i] + 1 for i in range(2))
    _require(min(size) > 0, f'its {kernel[0]}x{kernel[1]} kernel does not fit its {x[2]}x{x[3]} input')
    why = f'num_output {p.num_output}, {x[1]} input channels in {p.group} groups, kernel {kernel[0]}x{kernel[1]}'
    params = [((p.num_output, x[1] // p.group, *kernel), why)]
    if p.bias_term:
        params.append(((p.num_output,), f'num_output {p.num_output}'))
    return [(x[0], p.num_output, *size)] * len(bottoms), params


def _inner_product(layer: Message, bottoms: List[Shape]) -> Tuple[List[Shape], List[Tuple[Shape, str]]]:
    p = layer.inner_product_param
    x = bottoms[0]
    axis = axis_index(p.axis, x)
    inputs = _count(x[axis:])
    why = f'num_output {p.num_output}, {inputs} inputs'
    params = [((inputs, p.num_output) if p.transpose else (p.num_output, inputs), why)]
    if p.bias_term:
        params.append(((p.num_output,), f'num_output {p.num_output}'))
    return [(*x[:axis], p.num_output)], params


def pool_window(layer: Message, x: Shape) -> Tuple[Tuple[int, int], Tuple[int, int], Tuple[int, int]]:
    p = layer.pooling_param
    has_kernel = p.HasField('kernel_size') or p.HasField('kernel_h') or p.HasField('kernel_w')
    if p.global_pooling:
        _require(not has_kernel, 'With Global_pooling: true Filter size cannot specified')
        kernel = (x[2], x[3])
    else:
        _require(p.HasField('kernel_size') != (p.HasField('kernel_h') and p.HasField('kernel_w')),
                 'Filter size is kernel_size OR kernel_h and kernel_w; not both')
        _require(p.HasField('kernel_size') or (p.HasField('kernel_h') and p.HasField('kernel_w')),
                 'For non-square filters both kernel_h and kernel_w are required.')
        kernel = (p.kernel_size,) * 2 if p.HasField('kernel_size') else (p.kernel_h, p.kernel_w)
    _require(min(kernel) > 0, 'Filter dimensions cannot be zero.')
    pad = (p.pad_h, p.pad_w) if p.HasField('pad_h') else (p.pad,) * 2
    stride = (p.stride_h, p.stride_w) if p.HasField('stride_h') else (p.stride,) * 2
    if p.global_pooling:
        _require(pad == (0, 0) and stride == (1, 1), 'With Global_pooling: true; only pad = 0 and stride = 1')
    _require(min(stride) > 0, 'Stride dimensions must be nonzero.')
    if pad != (0, 0):
        _require(p.pool in (p.AVE, p.MAX), 'Padding implemented only for average and max pooling.')
        _require(pad[0] < kernel[0] and pad[1] < kernel[1], f'pad {pad} must be smaller than the kernel {kernel}')
    return kernel, stride, pad


def _pooling(layer: Message, bottoms: List[Shape]) -> Tuple[List[Shape], List]:
    x = bottoms[0]
    _require(len(x) == 4, 'Input must have 4 axes, corresponding to (num, channels, height, width)')
    kernel, stride, pad = pool_window(layer, x)
    round_up = layer.pooling_param.ceil_mode
    size = []
    for i in range(2):
        span = x[2 + i] + 2 * pad[i] - kernel[i]
        out = (-(-span // stride[i]) if round_up else span // stride[i]) + 1
        if pad[i] and (out - 1) * stride[i] >= x[2 + i] + pad[i]:
            out -= 1  # Caffe: the last window starts inside the image
        size.append(out)
    _require(min(size) > 0, f'its {kernel[0]}x{kernel[1]} window does not fit its {x[2]}x{x[3]} input')
    return [(x[0], x[1], *size)] * len(layer.top), []


def _eltwise(layer: Message, bottoms: List[Shape]) -> Tuple[List[Shape], List]:
    p = layer.eltwise_param
    if len(p.coeff):
        _require(len(p.coeff) == len(bottoms), 'Eltwise Layer takes one coefficient per bottom blob.')
        _require(p.operation == p.SUM, 'Eltwise layer only takes coefficients for summation.')
    for i, shape in enumerate(bottoms[1:], 1):
        _require(shape == bottoms[0], f'bottom[0]: {bottoms[0]}, bottom[{i}]: {shape}')
    return [bottoms[0]], []


def _batch_norm(layer: Message, bottoms: List[Shape]) -> Tuple[List[Shape], List]:
    x = bottoms[0]
    channels = x[1] if len(x) > 1 else 1
    why = f'{channels} channels'
    if layer.type == 'CuDNNBatchNorm':  # the fork: scale, bias, mean, variance, each (1, C, 1, 1)
        return [x], [((1, channels, 1, 1), why)] * 4
    return [x], [((channels,), why), ((channels,), why), ((1,), 'the moving-average factor')]


def scale_factor(layer: Message, bottoms: List[Shape]) -> Shape:
    """The shape of the factor: the second bottom, or the blob's (``num_axes`` axes of bottom[0] from ``axis``)."""
    if len(bottoms) == 2:
        return bottoms[1]
    p, x = layer.scale_param, bottoms[0]
    _require(p.num_axes >= -1, 'num_axes must be non-negative, or -1 to extend to the end of bottom[0]')
    axis = axis_index(p.axis, x)
    return x[axis:] if p.num_axes == -1 else x[axis:axis + p.num_axes]


def _scale(layer: Message, bottoms: List[Shape]) -> Tuple[List[Shape], List]:
    p = layer.scale_param
    x = bottoms[0]
    axis = axis_index(p.axis, x)
    factor = scale_factor(layer, bottoms)
    _require(axis + len(factor) <= len(x), "scale blob's shape extends past bottom[0]'s shape when applied "
                                           f'starting with bottom[0] axis = {axis}')
    _require(x[axis:axis + len(factor)] == factor, f'dimension mismatch between bottom[0] {x} from axis {axis} '
                                                   f'and the scale {factor}')
    why = f'bottom[0] {x} from axis {axis}'
    params = [] if len(bottoms) == 2 else [(factor, why)]
    if p.bias_term:
        params.append((factor, why))
    return [x], params


def _axpy(layer: Message, bottoms: List[Shape]) -> Tuple[List[Shape], List]:
    a, x, y = bottoms
    _require(len(x) == 4 and a[:2] == x[:2] and (a[2:] in ((), (1, 1))) and x == y,
             f'Axpy needs a of (N, C) or (N, C, 1, 1) and x, y of one (N, C, H, W) shape; got a {a}, x {x}, y {y}')
    return [x], []


def _reshape(layer: Message, bottoms: List[Shape]) -> Tuple[List[Shape], List]:
    p, x = layer.reshape_param, bottoms[0]
    dims = list(p.shape.dim)
    _require(dims.count(-1) <= 1, 'new shape contains multiple -1 dims; at most a single (1) value of -1 may be '
                                  'specified')
    _require(min(dims, default=0) >= -1, f'new shape {dims} has a negative dimension other than -1')
    start = p.axis if p.axis >= 0 else len(x) + p.axis + 1
    _require(0 <= start <= len(x), f'axis {p.axis} out of range for {len(x)}-D input blob')
    _require(p.num_axes >= -1, 'num_axes must be >= 0, or -1 for all')
    end = len(x) if p.num_axes == -1 else start + p.num_axes
    _require(end <= len(x), 'end_axis = axis + num_axes is out of range')
    for i, dim in enumerate(dims):
        _require(dim != 0 or start + i < len(x),
                 'new shape contains a 0, but there was no corresponding bottom axis to copy')
    new = [x[start + i] if dim == 0 else dim for i, dim in enumerate(dims)]
    if -1 in dims:
        known = _count(x[:start]) * _count(x[end:]) * _count(d for d in new if d != -1)
        _require(known > 0 and _count(x) % known == 0,
                 f'bottom count ({_count(x)}) must be divisible by the product of the specified dimensions ({known})')
        new[dims.index(-1)] = _count(x) // known
    top = (*x[:start], *new, *x[end:])
    _require(_count(top) == _count(x), 'output count must match input count')
    return [top], []


def _softmax(layer: Message, bottoms: List[Shape]) -> Tuple[List[Shape], List]:
    axis_index(layer.softmax_param.axis, bottoms[0])
    return [bottoms[0]], []


def slice_sizes(layer: Message, x: Shape) -> Tuple[int, List[int]]:
    p = layer.slice_param
    _require(not (p.HasField('axis') and p.HasField('slice_dim')), 'Either axis or slice_dim should be specified; '
                                                                   'not both.')
    axis = p.slice_dim if p.HasField('slice_dim') else p.axis
    axis = axis_index(axis, x)
    tops, points = len(layer.top), list(p.slice_point)
    if not points:
        _require(x[axis] % tops == 0,
                 f'Number of top blobs ({tops}) should evenly divide input slice axis ({x[axis]})')
        return axis, [x[axis] // tops] * tops
    _require(len(points) == tops - 1, f'slice_point_.size() == top.size() - 1: {len(points)} points, {tops} tops')
    bounds = [0, *points, x[axis]]
    sizes = [b - a for a, b in zip(bounds, bounds[1:])]
    _require(min(sizes) > 0, f'slice points {points} do not cut axis {axis} of {x[axis]} into increasing parts')
    return axis, sizes


def _slice(layer: Message, bottoms: List[Shape]) -> Tuple[List[Shape], List]:
    x = bottoms[0]
    axis, sizes = slice_sizes(layer, x)
    return [(*x[:axis], size, *x[axis + 1:]) for size in sizes], []


def _same(layer: Message, bottoms: List[Shape]) -> Tuple[List[Shape], List]:
    return [bottoms[0]] * len(layer.top), []


_LAYER_SHAPES: Dict[str, Callable[[Message, List[Shape]], Tuple[List[Shape], List[Tuple[Shape, str]]]]] = {
    'Convolution': _convolution, 'InnerProduct': _inner_product, 'Pooling': _pooling, 'Eltwise': _eltwise,
    'BatchNorm': _batch_norm, 'CuDNNBatchNorm': _batch_norm, 'Scale': _scale, 'Axpy': _axpy, 'Reshape': _reshape,
    'Softmax': _softmax, 'Slice': _slice, 'ReLU': _same, 'Split': _same,
}
_BLOB_NAMES = {
    'Convolution': ('weights', 'bias'), 'InnerProduct': ('weights', 'bias'),
    'CuDNNBatchNorm': ('scale', 'bias', 'mean', 'variance'), 'BatchNorm': ('mean * s', 'variance * s', 's'),
}


def _blob_names(layer: Message, count: int) -> str:
    if layer.type == 'Scale':
        names = ('gamma', 'beta (bias_term: true)') if len(layer.bottom) == 1 else ('bias',)
    else:
        names = _BLOB_NAMES.get(layer.type, ())
    return ', '.join(names[:count]) or 'none'


def check_blob_shapes(layer: Message, blobs: Sequence[Message], params: List[Tuple[Shape, str]]) -> None:
    """Caffe's weight loading: as many blobs as the layer has, each shaped as its parameters and bottoms imply
    (up to singleton axes: legacy 4-D blobs, and (1, C, 1, 1) BN blobs)."""
    if len(blobs) != len(params):
        raise blob_count_error(layer, len(blobs), len(params))
    for index, (blob, (expected, why)) in enumerate(zip(blobs, params)):
        found = blob_shape(blob, f"blob {index} of layer '{layer.name}'")
        if [d for d in found if d != 1] != [d for d in expected if d != 1]:
            raise UserError(
                f"{layer.type} layer '{layer.name}': blob {index} has shape {list(found)} where its parameters "
                f'({why}) make it {list(expected)}; Caffe refuses this net (shape mismatch): {CORRUPT}')


def blob_count_error(layer: Message, found: int, expected: int) -> UserError:
    return UserError(f"{layer.type} layer '{layer.name}' has {found} blobs; expected {expected} "
                     f'({_blob_names(layer, expected)})')


def layer_shapes(layer: Message, bottoms: List[Shape]) -> Tuple[List[Shape], List[Tuple[Shape, str]]]:
    """(top shapes, parameter blob shapes with the parameters that imply them), as Caffe sets the layer up."""
    if layer.type not in _LAYER_SHAPES:
        raise UserError(f"{layer.type or 'untyped'} layer '{layer.name}' is not part of the SKNet release graph: "
                        'another architecture, or a damaged file')
    try:
        _check_counts(layer)
        return _LAYER_SHAPES[layer.type](layer, bottoms)
    except _Refusal as refusal:
        raise _caffe_refuses(layer, str(refusal)) from None


def caffe_shapes(graph: InferenceGraph, image_shape: Shape) -> Dict[Tuple[str, int], Shape]:
    """Every top's shape, (layer name, top index) -> shape, each layer set up as Caffe does."""
    shapes: Dict[Tuple[str, int], Shape] = {}
    for layer in graph.layers:
        bottoms = [image_shape if node is None else shapes[node.layer.name, node.top]
                   for node in graph.inputs[layer.name]]
        for index, shape in enumerate(layer_shapes(layer, bottoms)[0]):
            shapes[layer.name, index] = shape
    return shapes

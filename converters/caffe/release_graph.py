"""The release's network definition as data: ``sknet50.prototxt`` / ``sknet101.prototxt``, built from a spec.

Every layer of the authors' Caffe release -- names, bottoms and tops, layer parameters, fillers, learning-rate
settings, the input and the train/val layers -- generated from an architecture spec (``specs/<model>.json``),
without blobs and without torch. ``converters.caffe.writer`` adds a model's weights to it to write release-format
caffemodels, and ``tests/converters/caffe/test_caffe_writer.py`` checks it against the released ``sknet50.prototxt``
layer by layer; the conversion compares a caffemodel's own graph with it (``converters.caffe.net_rules``).

``bn_style='cudnn'`` is the release's fork ``CuDNNBatchNorm``; ``'bvlc'`` is standard ``BatchNorm`` followed by
an affine ``Scale`` (``<conv>/bn/scale``, in place), as the SENet release writes it.
"""
from typing import Any, Dict

from google.protobuf.message import Message

from .proto import LayerParameter, NetParameter
from .mapping import caffe_name

__all__ = ['BN_STYLES', 'release_graph']

BN_STYLES = ('cudnn', 'bvlc')
_TRAIN_BATCH = 32
_NETWORK_STRIDE = 32  # the head's map is the input / 32: avepool/7x7 is global at the release's 224 x 224


def _filler(param: Message, filler_type: str, **values) -> None:
    param.type = filler_type
    for key, value in values.items():
        setattr(param, key, value)


def _params(layer: LayerParameter, *mults) -> None:
    for lr_mult, decay_mult in mults:
        layer.param.add(lr_mult=lr_mult, decay_mult=decay_mult)


class _ReleaseNet:
    """Appends layers in the release's order and style, reading each module's geometry from the spec."""

    def __init__(self, spec: Dict[str, Any], bn_style: str):
        if bn_style not in BN_STYLES:
            raise ValueError(f"bn_style must be 'cudnn' or 'bvlc', got {bn_style!r}")
        self.modules, self.tensors = spec['modules'], spec['tensors']
        self.net = NetParameter(name=f"{spec['architecture']}_basic")
        self.bn_style = bn_style

    def layer(self, name: str, layer_type: str, bottoms, tops) -> LayerParameter:
        return self.net.layer.add(name=name, type=layer_type, bottom=list(bottoms), top=list(tops))

    def conv(self, name: str, bottom: str, module: str, filler: str = 'msra') -> str:
        geometry = self.modules[module]
        square = all(geometry[key][0] == geometry[key][1] for key in ('kernel', 'stride', 'padding', 'dilation'))
        if geometry['type'] != 'Conv2d' or not square:
            raise ValueError(f'{module}: only square 2-D convolutions have a release-format layer')
        layer = self.layer(name, 'Convolution', [bottom], [name])
        _params(layer, (1., 1.))
        p = layer.convolution_param
        p.num_output = self.tensors[f'{module}.weight'][0]
        p.bias_term = f'{module}.bias' in self.tensors
        if geometry['padding'][0]:
            p.pad.append(geometry['padding'][0])
        p.kernel_size.append(geometry['kernel'][0])
        if geometry['groups'] > 1:
            p.group = geometry['groups']
        p.stride.append(geometry['stride'][0])
        if filler == 'msra':
            _filler(p.weight_filler, 'msra')
        else:
            _filler(p.weight_filler, 'gaussian', std=0.01)
        if geometry['dilation'][0] > 1:
            p.dilation.append(geometry['dilation'][0])
        return name

    def bn(self, conv_name: str) -> str:
        """The BN of ``conv_name``'s output; returns its top (``<conv>/bn``)."""
        top = f'{conv_name}/bn'
        if self.bn_style == 'cudnn':
            layer = self.layer(top, 'CuDNNBatchNorm', [conv_name], [top])
            _params(layer, (1., 0.), (1., 0.), (0., 0.), (0., 0.))
            p = layer.batch_norm_param
            p.frozen, p.momentum = False, 0.95
            _filler(p.scale_filler, 'constant', value=1.)
            _filler(p.bias_filler, 'constant', value=0.)
        else:
            layer = self.layer(top, 'BatchNorm', [conv_name], [top])
            _params(layer, (0., 0.), (0., 0.), (0., 0.))
            scale = self.layer(f'{top}/scale', 'Scale', [top], [top])
            _params(scale, (1., 0.), (1., 0.))
            scale.scale_param.bias_term = True
        return top

    def relu(self, name: str, blob: str) -> None:
        self.layer(name, 'ReLU', [blob], [blob])

    def conv_bn_relu(self, name: str, bottom: str, module: str, filler: str = 'msra') -> str:
        top = self.bn(self.conv(name, bottom, module, filler))
        self.relu(f'{name}/relu', top)
        return top

    def reshape(self, name: str, bottom: str, dims, top: str = '') -> str:
        layer = self.layer(name, 'Reshape', [bottom], [top or name])
        layer.reshape_param.shape.dim.extend(dims)
        return top or name

    def unit(self, bottom: str, s: int, u: int) -> str:
        """SK unit ``conv{s}_{u}`` (Caffe's stage and unit numbers) of timm's block ``layer{s - 1}.{u - 1}``."""
        block, prefix = f'layer{s - 1}.{u - 1}', f'conv{s}_{u}'
        paths = [f'{block}.conv2.paths.{i}.conv' for i in range(2)]
        if f'{block}.conv2.paths.2.conv' in self.modules or f'{block}.conv2.attn.fc_select' not in self.modules:
            raise ValueError(f'{block}: the release format has SK units of two paths with attention')
        groups = self.modules[paths[0]]['groups']
        reduced = self.conv_bn_relu(caffe_name('reduce', s, u), bottom, f'{block}.conv1.conv')
        path_tops = [self.conv_bn_relu(caffe_name(role, s, u, groups), reduced, path)
                     for role, path in zip(('path0', 'path1'), paths)]
        fused = self.layer(f'{prefix}_3x3', 'Eltwise', path_tops, [f'{prefix}_3x3'])
        fused.eltwise_param.operation = fused.eltwise_param.SUM
        pool = self.layer(f'{prefix}/B_global_pool', 'Pooling', [fused.top[0]], [f'{prefix}/B_global_pool'])
        pool.pooling_param.pool = pool.pooling_param.AVE
        pool.pooling_param.engine = pool.pooling_param.CAFFE
        pool.pooling_param.global_pooling = True
        squeezed = self.conv_bn_relu(
            caffe_name('fc1', s, u), pool.top[0], f'{block}.conv2.attn.fc_reduce', 'gaussian')
        logits = self.conv(caffe_name('fc2', s, u), squeezed, f'{block}.conv2.attn.fc_select', 'gaussian')

        # Select: softmax across the paths of (N, M, C, 1) logits, one slice of weights per path
        channels = self.tensors[f'{block}.conv2.attn.fc_select.weight'][0] // len(paths)
        grouped = self.reshape(f'{prefix}/B_re', logits, (0, len(paths), -1, 0))
        softmax = self.layer(f'{prefix}/B_softmax', 'Softmax', [grouped], [f'{prefix}/B_softmax'])
        softmax.softmax_param.axis = 1
        sliced = self.layer(
            f'{prefix}/B_slice', 'Slice', [softmax.top[0]], [f'{prefix}/B_slice0_', f'{prefix}/B_slice1_'])
        sliced.slice_param.slice_point.append(1)
        sliced.slice_param.axis = 1
        weight1 = self.reshape(f'{prefix}/B_slice1', sliced.top[1], (0, channels, -1, 0))
        weight0 = self.reshape(f'{prefix}/B_slice0', sliced.top[0], (0, channels, -1, 0))
        weight0 = self.reshape(f'{prefix}/B_w0/reshape', weight0, (0, 0))
        scaled = self.layer(f'{prefix}/scale', 'Scale', [path_tops[0], weight0], [f'{prefix}/scale'])
        scaled.scale_param.axis = 0
        scaled.scale_param.bias_term = False
        axpy = self.layer(f'{prefix}/B_axpy', 'Axpy', [weight1, path_tops[1], scaled.top[0]], [f'{prefix}/B_axpy'])

        increased = self.bn(self.conv(caffe_name('increase', s, u), axpy.top[0], f'{block}.conv3.conv'))
        shortcut = bottom
        if f'{block}.downsample.0' in self.modules:
            shortcut = self.bn(self.conv(caffe_name('proj', s, u), bottom, f'{block}.downsample.0'))
        merged = self.layer(prefix, 'Eltwise', [increased, shortcut], [prefix])
        merged.eltwise_param.operation = merged.eltwise_param.SUM
        self.relu(f'{prefix}/relu', prefix)
        return prefix


def release_graph(spec: Dict[str, Any], bn_style: str = 'cudnn') -> Message:
    """The release's ``NetParameter`` of ``spec``'s model, without blobs (train/val layers included, as released).

    Raises ``ValueError`` for a spec outside the release layout (not four stages of two-path SK units).
    """
    builder = _ReleaseNet(spec, bn_style)
    stem_weight = spec['tensors']['conv1.weight']
    map_size = spec['head_pool'][0]
    data = builder.layer('input', 'Input', [], ['data', 'label'])
    input_size = map_size * _NETWORK_STRIDE
    data.input_param.shape.add().dim.extend((_TRAIN_BATCH, stem_weight[1], input_size, input_size))
    data.input_param.shape.add().dim.append(_TRAIN_BATCH)

    top = builder.bn(builder.conv(caffe_name('stem'), 'data', 'conv1'))
    builder.relu(f"{caffe_name('stem')}/relu", top)
    stem_pool = spec['modules'].get('maxpool', {})
    if stem_pool.get('type') != 'MaxPool2d' or len(spec['stage_units']) != 4:
        raise ValueError(f"{spec['architecture']}: the release format has a max-pool stem and four stages")
    pool = builder.layer('pool1/3x3_s2', 'Pooling', [top], ['pool1/3x3_s2'])
    pool.pooling_param.pool = pool.pooling_param.MAX
    pool.pooling_param.kernel_size = stem_pool['kernel'][0]
    pool.pooling_param.stride = stem_pool['stride'][0]
    top = pool.top[0]

    for stage_index, units in enumerate(spec['stage_units']):
        for unit_index in range(units):
            top = builder.unit(top, stage_index + 2, unit_index + 1)

    head_pool = builder.layer(f'avepool/{map_size}x{map_size}', 'Pooling', [top], [f'avepool/{map_size}x{map_size}'])
    head_pool.pooling_param.pool = head_pool.pooling_param.AVE
    head_pool.pooling_param.kernel_size = map_size
    head_pool.pooling_param.stride = 1
    fc = builder.layer(caffe_name('classifier'), 'InnerProduct', head_pool.top, [caffe_name('classifier')])
    _params(fc, (1., 1.), (2., 0.))
    fc.inner_product_param.num_output = spec['tensors']['fc.weight'][0]
    _filler(fc.inner_product_param.weight_filler, 'gaussian', std=0.01)
    _filler(fc.inner_product_param.bias_filler, 'constant', value=0.)

    builder.layer('loss', 'SoftmaxWithLoss', [fc.name, 'label'], ['loss'])
    builder.layer('top-1', 'Accuracy', [fc.name, 'label'], ['top-1'])
    top5 = builder.layer('top-5', 'Accuracy', [fc.name, 'label'], ['top-5'])
    top5.accuracy_param.top_k = 5
    return builder.net

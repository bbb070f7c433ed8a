"""Write an SKNet as a caffemodel (and prototxt) in the format of the authors' Caffe release.

The graph, names, layer parameters and train/val layers follow ``sknet50.prototxt`` of the release; the
weights are the model's with the input convention unfolded (conv1 back to BGR input channels), so that
``convert-caffe`` of the written file gives the model back. ``bn_style='cudnn'`` writes the fork's
``CuDNNBatchNorm`` (4 blobs); ``'bvlc'`` writes standard ``BatchNorm`` (3 blobs, with a non-trivial moving
average scale factor) followed by an affine ``Scale``, as the SENet release does.
"""
import os
from typing import Optional

import numpy as np
import torch
from torch import nn

from timm_sknet import SKBottleneck, SKNet
from timm_sknet.fileio import atomic_output

from .caffe_proto import LayerParameter, NetParameter, array_blob, net_to_text
from .mapping import CAFFE_BN_EPS, caffe_name

__all__ = ['write_caffemodel', 'BVLC_SCALE_FACTOR']

# What BVLC BatchNorm's accumulator holds after a long training run with moving_average_fraction 0.999
# (s <- 0.999 s + 1 tends to 1000): stored statistics are mean * s and var * s.
BVLC_SCALE_FACTOR = 999.982
_TRAIN_BATCH = 32


def _filler(param, filler_type: str, **values) -> None:
    param.type = filler_type
    for key, value in values.items():
        setattr(param, key, value)


def _params(layer: LayerParameter, *mults) -> None:
    for lr_mult, decay_mult in mults:
        layer.param.add(lr_mult=lr_mult, decay_mult=decay_mult)


def _vector(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().to(torch.float64).cpu().numpy()


class _ReleaseNet:
    """Appends layers in the release's order and style; ``self.net`` is the NetParameter with blobs."""

    def __init__(self, name: str, bn_style: str):
        if bn_style not in ('cudnn', 'bvlc'):
            raise ValueError(f"bn_style must be 'cudnn' or 'bvlc', got {bn_style!r}")
        self.net = NetParameter(name=name)
        self.bn_style = bn_style

    def layer(self, name: str, layer_type: str, bottoms, tops) -> LayerParameter:
        return self.net.layer.add(name=name, type=layer_type, bottom=list(bottoms), top=list(tops))

    def conv(self, name: str, bottom: str, conv: nn.Conv2d, filler: str = 'msra', weight=None) -> str:
        layer = self.layer(name, 'Convolution', [bottom], [name])
        _params(layer, (1., 1.))
        p = layer.convolution_param
        p.num_output = conv.out_channels
        p.bias_term = conv.bias is not None
        if conv.padding[0]:
            p.pad.append(conv.padding[0])
        p.kernel_size.append(conv.kernel_size[0])
        if conv.groups > 1:
            p.group = conv.groups
        p.stride.append(conv.stride[0])
        if filler == 'msra':
            _filler(p.weight_filler, 'msra')
        else:
            _filler(p.weight_filler, 'gaussian', std=0.01)
        if conv.dilation[0] > 1:
            p.dilation.append(conv.dilation[0])
        square = all(v[0] == v[1] for v in (conv.kernel_size, conv.stride, conv.padding, conv.dilation))
        if not square or conv.padding_mode != 'zeros':
            raise ValueError(f'{name}: only square, zero-padded convolutions have a release-format layer')
        layer.blobs.append(array_blob((conv.weight if weight is None else weight).detach().cpu().numpy()))
        if conv.bias is not None:
            layer.blobs.append(array_blob(conv.bias.detach().cpu().numpy()))
        return name

    def bn(self, conv_name: str, bn: nn.BatchNorm2d) -> str:
        """The BN of ``conv_name``'s output; returns its top (``<conv>/bn``)."""
        top = f'{conv_name}/bn'
        channels = bn.num_features
        # bn_eps: Caffe's eps stays at its default; the difference goes into the variance (as the converter reads it)
        eps_delta = 0. if np.float32(bn.eps) == np.float32(CAFFE_BN_EPS) else bn.eps - CAFFE_BN_EPS
        mean, var = _vector(bn.running_mean), _vector(bn.running_var) + eps_delta
        if self.bn_style == 'cudnn':
            layer = self.layer(top, 'CuDNNBatchNorm', [conv_name], [top])
            _params(layer, (1., 0.), (1., 0.), (0., 0.), (0., 0.))
            p = layer.batch_norm_param
            p.frozen, p.momentum = False, 0.95
            _filler(p.scale_filler, 'constant', value=1.)
            _filler(p.bias_filler, 'constant', value=0.)
            for values in (_vector(bn.weight), _vector(bn.bias), mean, var):
                layer.blobs.append(array_blob(values, (1, channels, 1, 1)))
        else:
            layer = self.layer(top, 'BatchNorm', [conv_name], [top])
            _params(layer, (0., 0.), (0., 0.), (0., 0.))
            s = BVLC_SCALE_FACTOR
            layer.blobs.extend([array_blob(mean * s), array_blob(var * s), array_blob(np.array([s]))])
            scale = self.layer(f'{top}/scale', 'Scale', [top], [top])
            _params(scale, (1., 0.), (1., 0.))
            scale.scale_param.bias_term = True
            scale.blobs.extend([array_blob(_vector(bn.weight)), array_blob(_vector(bn.bias))])
        return top

    def relu(self, name: str, blob: str) -> None:
        self.layer(name, 'ReLU', [blob], [blob])

    def conv_bn_relu(self, name: str, bottom: str, conv: nn.Conv2d, bn: nn.BatchNorm2d, filler: str = 'msra') -> str:
        top = self.bn(self.conv(name, bottom, conv, filler), bn)
        self.relu(f'{name}/relu', top)
        return top

    def reshape(self, name: str, bottom: str, dims, top: Optional[str] = None) -> str:
        layer = self.layer(name, 'Reshape', [bottom], [top or name])
        layer.reshape_param.shape.dim.extend(dims)
        return top or name

    def unit(self, block: SKBottleneck, bottom: str, s: int, u: int) -> str:
        sk = block.conv2
        paths, attn = sk.paths, sk.attn
        groups = paths[0].conv.groups
        prefix = f'conv{s}_{u}'
        reduced = self.conv_bn_relu(
            caffe_name('reduce', s, u), bottom, block.conv1.conv, block.conv1.bn)
        path_tops = [
            self.conv_bn_relu(caffe_name(role, s, u, groups), reduced, path.conv, path.bn)
            for role, path in zip(('path0', 'path1'), paths)]
        fused = self.layer(f'{prefix}_3x3', 'Eltwise', path_tops, [f'{prefix}_3x3'])
        fused.eltwise_param.operation = fused.eltwise_param.SUM
        pool = self.layer(f'{prefix}/B_global_pool', 'Pooling', [fused.top[0]], [f'{prefix}/B_global_pool'])
        pool.pooling_param.pool = pool.pooling_param.AVE
        pool.pooling_param.engine = pool.pooling_param.CAFFE
        pool.pooling_param.global_pooling = True
        squeezed = self.conv_bn_relu(caffe_name('fc1', s, u), pool.top[0], attn.fc_reduce, attn.bn, 'gaussian')
        logits = self.conv(caffe_name('fc2', s, u), squeezed, attn.fc_select, 'gaussian')

        # Select: softmax across the paths of (N, M, C, 1) logits, one slice of weights per path
        channels = attn.fc_select.out_channels // len(paths)
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

        increased = self.bn(self.conv(caffe_name('increase', s, u), axpy.top[0], block.conv3.conv), block.conv3.bn)
        shortcut = bottom
        if block.downsample is not None:
            proj, proj_bn = block.downsample
            shortcut = self.bn(self.conv(caffe_name('proj', s, u), bottom, proj), proj_bn)
        merged = self.layer(prefix, 'Eltwise', [increased, shortcut], [prefix])
        merged.eltwise_param.operation = merged.eltwise_param.SUM
        self.relu(f'{prefix}/relu', prefix)
        return prefix


def _check_release_layout(model: nn.Module) -> None:
    stages = [getattr(model, name, None) for name in ('layer1', 'layer2', 'layer3', 'layer4')]
    pool = getattr(model, 'maxpool', None)
    caffe_pool = isinstance(pool, nn.MaxPool2d) and (pool.kernel_size, pool.stride, pool.padding, pool.ceil_mode) == (
        3, 2, 0, True)
    blocks = [block for stage in stages if stage is not None for block in stage]
    sk_ok = all(
        isinstance(b, SKBottleneck) and b.conv2.attn is not None and not b.conv2.split_input
        and [(p.conv.kernel_size, p.conv.dilation) for p in b.conv2.paths] == [((3, 3), (1, 1)), ((3, 3), (2, 2))]
        for b in blocks)
    if not (isinstance(model, SKNet) and caffe_pool and len(model.stage_names) == 4 and sk_ok and blocks
            and model.conv1.kernel_size == (7, 7)):
        raise ValueError(
            'write_caffemodel needs an SKNet in the release layout (7x7 stem, Caffe ceil-mode stem pool, four '
            'stages of SK bottlenecks with a 3x3 and a 3x3 dilation-2 path and attention), e.g. sknet50, sknet101')


def release_net(model: nn.Module, bn_style: str = 'cudnn') -> NetParameter:
    """The model as a release-format NetParameter with blobs (train/val layers included, like the release)."""
    _check_release_layout(model)
    cfg = model.pretrained_cfg
    builder = _ReleaseNet(f"{cfg['architecture']}_basic", bn_style)
    net = builder.net
    data = builder.layer('input', 'Input', [], ['data', 'label'])
    data.input_param.shape.add().dim.extend((_TRAIN_BATCH, *cfg['input_size']))
    data.input_param.shape.add().dim.append(_TRAIN_BATCH)

    with torch.no_grad():
        bgr_weight = model.conv1.weight.flip(1)  # bgr_to_rgb, inverted: the release's conv1 reads BGR
    top = builder.bn(builder.conv(caffe_name('stem'), 'data', model.conv1, weight=bgr_weight), model.bn1)
    builder.relu(f"{caffe_name('stem')}/relu", top)
    pool = builder.layer('pool1/3x3_s2', 'Pooling', [top], ['pool1/3x3_s2'])
    pool.pooling_param.pool = pool.pooling_param.MAX
    pool.pooling_param.kernel_size = model.maxpool.kernel_size
    pool.pooling_param.stride = model.maxpool.stride
    top = pool.top[0]

    for stage_index, stage_name in enumerate(model.stage_names):
        for unit_index, block in enumerate(getattr(model, stage_name)):
            top = builder.unit(block, top, stage_index + 2, unit_index + 1)

    map_size = cfg['pool_size'][0]
    head_pool = builder.layer(f'avepool/{map_size}x{map_size}', 'Pooling', [top], [f'avepool/{map_size}x{map_size}'])
    head_pool.pooling_param.pool = head_pool.pooling_param.AVE
    head_pool.pooling_param.kernel_size = map_size
    head_pool.pooling_param.stride = 1
    fc = builder.layer(caffe_name('classifier'), 'InnerProduct', head_pool.top, [caffe_name('classifier')])
    _params(fc, (1., 1.), (2., 0.))
    fc.inner_product_param.num_output = model.fc.out_features
    _filler(fc.inner_product_param.weight_filler, 'gaussian', std=0.01)
    _filler(fc.inner_product_param.bias_filler, 'constant', value=0.)
    fc.blobs.extend([array_blob(model.fc.weight.detach().cpu().numpy()), array_blob(_vector(model.fc.bias))])

    builder.layer('loss', 'SoftmaxWithLoss', [fc.name, 'label'], ['loss'])
    builder.layer('top-1', 'Accuracy', [fc.name, 'label'], ['top-1'])
    top5 = builder.layer('top-5', 'Accuracy', [fc.name, 'label'], ['top-5'])
    top5.accuracy_param.top_k = 5
    return net


def write_caffemodel(
        model: nn.Module,
        caffemodel_path: os.PathLike,
        prototxt_path: Optional[os.PathLike] = None,
        *,
        bn_style: str = 'cudnn',
) -> None:
    """Write ``model`` as a release-format caffemodel (and, if asked, its prototxt without blobs)."""
    net = release_net(model, bn_style)
    with atomic_output(caffemodel_path) as tmp:
        tmp.write_bytes(net.SerializeToString())
    if prototxt_path is not None:
        for layer in net.layer:
            del layer.blobs[:]
        with atomic_output(prototxt_path) as tmp:
            tmp.write_text(net_to_text(net))

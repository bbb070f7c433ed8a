"""Write an SKNet as a caffemodel (and prototxt) in the format of the authors' Caffe release.

The graph is the release's (``converters.caffe.release_graph``, checked layer by layer against ``sknet50.prototxt``);
each layer's blobs are the model's weights, found through the conversion's mapping table, with the input
convention unfolded (conv1 back to BGR input channels), so that ``convert-caffe`` of the written file gives the
model back. ``bn_style='cudnn'`` writes the fork's ``CuDNNBatchNorm`` (4 blobs); ``'bvlc'`` writes standard
``BatchNorm`` (3 blobs, with a non-trivial moving average scale factor) followed by an affine ``Scale``, as the
SENet release does. ``caffe_splits=True`` writes what Caffe's own snapshots hold: a ``Split`` layer wherever a
blob feeds several layers (Caffe inserts them when it builds a net, and saves them with it).
"""
import os
from pathlib import Path
from typing import Dict, Optional

import numpy as np
import torch
from torch import nn

from timm_sknet import SKBottleneck, SKNet
from timm_sknet.io.files import write_outputs

from .proto import NetParameter, array_blob, net_to_text
from .mapping import CAFFE_BN_EPS, match_layer
from .release_graph import release_graph
from .spec import architecture_spec

__all__ = ['write_caffemodel', 'release_net', 'insert_splits', 'BVLC_SCALE_FACTOR']

# What BVLC BatchNorm's accumulator holds after a long training run with moving_average_fraction 0.999
# (s <- 0.999 s + 1 tends to 1000): stored statistics are mean * s and var * s.
BVLC_SCALE_FACTOR = 999.982


def _array(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().cpu().numpy()


def _vector(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().to(torch.float64).cpu().numpy()


def _bn_blobs(bn: nn.BatchNorm2d, layer_type: str) -> list:
    # bn_eps: Caffe's eps stays at its default; the difference goes into the variance (as the converter reads it)
    eps_delta = 0. if np.float32(bn.eps) == np.float32(CAFFE_BN_EPS) else bn.eps - CAFFE_BN_EPS
    mean, var = _vector(bn.running_mean), _vector(bn.running_var) + eps_delta
    if layer_type == 'CuDNNBatchNorm':
        shape = (1, bn.num_features, 1, 1)
        return [array_blob(values, shape) for values in (_vector(bn.weight), _vector(bn.bias), mean, var)]
    s = BVLC_SCALE_FACTOR
    return [array_blob(mean * s), array_blob(var * s), array_blob(np.array([s]))]


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
    net = release_graph(architecture_spec(model), bn_style)
    bn_of_blob: Dict[str, nn.Module] = {}  # a BN's top -> its module, for the affine Scale that follows it
    for layer in net.layer:
        match = match_layer(layer.name)
        if layer.type in ('Convolution', 'InnerProduct'):
            module = model.get_submodule(match.module)
            weight = module.weight.flip(1) if match.row.role == 'stem' else module.weight  # bgr_to_rgb, inverted
            layer.blobs.append(array_blob(_array(weight)))
            if module.bias is not None:
                layer.blobs.append(array_blob(_array(module.bias)))
        elif layer.type in ('CuDNNBatchNorm', 'BatchNorm'):
            bn = model.get_submodule(match_layer(layer.bottom[0]).bn_module)  # the release's BN reads its conv
            layer.blobs.extend(_bn_blobs(bn, layer.type))
            bn_of_blob[layer.top[0]] = bn
        elif layer.type == 'Scale' and len(layer.bottom) == 1:
            bn = bn_of_blob[layer.bottom[0]]
            layer.blobs.extend([array_blob(_vector(bn.weight)), array_blob(_vector(bn.bias))])
    return net


def insert_splits(net: NetParameter) -> NetParameter:
    """``net`` as Caffe instantiates (and snapshots) it: a ``Split`` layer after every top that several layers read.

    Names follow Caffe's ``insert_splits.cpp``: layer ``<blob>_<layer>_<top index>_split``, tops ``..._split_<k>``.
    """
    last_producer: Dict[str, tuple] = {}
    readers: Dict[tuple, int] = {}
    for i, layer in enumerate(net.layer):
        for blob in layer.bottom:
            source = last_producer.get(blob)  # None: a net input
            readers[source] = readers.get(source, 0) + 1
        for j, blob in enumerate(layer.top):
            last_producer[blob] = (i, j)
    split = NetParameter()
    split.CopyFrom(net)
    del split.layer[:]
    last_producer.clear()
    next_split: Dict[tuple, int] = {}
    for i, layer in enumerate(net.layer):
        copy = split.layer.add()
        copy.CopyFrom(layer)
        for j, blob in enumerate(layer.bottom):
            source = last_producer.get(blob)
            if source is not None and readers[source] > 1:
                producer = net.layer[source[0]].name
                copy.bottom[j] = f'{blob}_{producer}_{source[1]}_split_{next_split.get(source, 0)}'
                next_split[source] = next_split.get(source, 0) + 1
        for j, blob in enumerate(layer.top):
            last_producer[blob] = (i, j)
            if readers.get((i, j), 0) > 1:
                name = f'{blob}_{layer.name}_{j}_split'
                split.layer.add(name=name, type='Split', bottom=[blob],
                                top=[f'{name}_{k}' for k in range(readers[(i, j)])])
    return split


def write_caffemodel(
        model: nn.Module,
        caffemodel_path: os.PathLike,
        prototxt_path: Optional[os.PathLike] = None,
        *,
        bn_style: str = 'cudnn',
        caffe_splits: bool = False,
        force: bool = False,
) -> None:
    """Write ``model`` as a release-format caffemodel (and, if asked, its prototxt without blobs); both appear
    or neither, and existing files are replaced only with ``force`` (``timm_sknet.io.files.write_outputs``)."""
    net = release_net(model, bn_style)
    if caffe_splits:
        net = insert_splits(net)
    outputs = {Path(caffemodel_path): net.SerializeToString()}
    if prototxt_path is not None:
        for layer in net.layer:
            del layer.blobs[:]
        outputs[Path(prototxt_path)] = net_to_text(net)
    write_outputs(outputs, force)

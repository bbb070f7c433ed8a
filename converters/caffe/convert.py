"""Caffe SKNet release -> timm state dict: every layer placed in the release's graph, every blob and tensor used.

The file's graph (the prototxt, or the layer definitions every caffemodel embeds) is first checked as Caffe
checks it and then layer by layer against the release's (``converters.caffe.net_rules``); each weighted layer then fills
the timm module of its place in the graph (``mapping.LAYER_TABLE``), and the normalisation layers that read its
output fill its BN. Nothing is written here: the caller gets arrays whose names and shapes already match the
target model exactly.

The target is the model's architecture spec (``specs/<model>.json``, generated from the timm model by
``converters.caffe.spec`` and tested equal to it), not the model itself: the conversion never imports torch or timm,
whose import alone takes several times the memory the conversion does.
"""
import json
from collections import Counter
from pathlib import Path
from typing import Any, Dict, List, Set

import numpy as np
from google.protobuf.message import Message

from timm_sknet.io.errors import UserError
from timm_sknet.weights.release import CAFFE_TAG  # the tag whose data config is the release's input convention

from .proto import blob_array
from .net_rules import BN_TYPES, WEIGHTED_TYPES, InferenceGraph
from .mapping import BVLC_BN_BLOBS, CAFFE_BN_EPS, CUDNN_BN_BLOBS, CUDNN_BN_MIN_EPSILON, SCALE_BLOBS, match_layer
from .release_match import place_layers

__all__ = [
    'CAFFE_TAG', 'SPEC_DIR', 'convertible_models', 'target_spec', 'InferenceGraph', 'bn_eps', 'caffe_state_dict']

SPEC_DIR = Path(__file__).parent / 'specs'  # one architecture spec per model in the release's format


def convertible_models() -> List[str]:
    """Models whose data config is the release's input convention (their ``caffe_in1k`` tag): those with a spec."""
    return sorted(path.stem for path in SPEC_DIR.glob('*.json'))


def target_spec(model_name: str) -> Dict[str, Any]:
    """The target architecture as data: names, shapes and module geometry of ``{model_name}.caffe_in1k``."""
    if model_name not in convertible_models():
        raise UserError(
            f"{model_name} is not a model in the Caffe release's format; choose one of {convertible_models()}")
    return json.loads((SPEC_DIR / f'{model_name}.json').read_text())


def bn_eps(layer: Message) -> float:
    """The eps Caffe computes a CuDNNBatchNorm or BatchNorm layer with (``mapping.CUDNN_BN_MIN_EPSILON``)."""
    eps = CAFFE_BN_EPS
    # BVLC's BatchNorm keeps it in field 139; the fork's CuDNNBatchNorm (and any text prototxt) under the name
    # batch_norm_param, which this schema reads as field 200
    for field in ('bvlc_batch_norm_param', 'batch_norm_param'):
        if layer.HasField(field):
            eps = getattr(layer, field).eps
            break
    return max(eps, CUDNN_BN_MIN_EPSILON) if layer.type == 'CuDNNBatchNorm' else eps


class _Converter:
    def __init__(self, graph: InferenceGraph, weights: Message, spec: Dict[str, Any]):
        self.graph = graph
        self.spec = spec
        self.model_name = spec['architecture']
        self.modules = spec['modules']  # module name -> {'type': 'Conv2d', 'kernel': [3, 3], ...}
        self.expected = {key: tuple(shape) for key, shape in spec['tensors'].items()}
        self.blobs = {layer.name: layer.blobs for layer in weights.layer if len(layer.blobs)}
        self.tensors: Dict[str, np.ndarray] = {}
        self.consumed: Set[str] = set()
        self.placed: Dict[str, str] = {}  # file layer name -> the release layer whose place it takes

    # -- blobs -------------------------------------------------------------------------------------------
    def layer_blobs(self, layer: Message) -> List[np.ndarray]:
        """The layer's blobs as arrays (their count and shapes were checked with the graph)."""
        self.consumed.add(layer.name)
        arrays = []
        for i, blob in enumerate(self.blobs[layer.name]):
            where = f"blob {i} of layer '{layer.name}'"
            array = blob_array(blob, where)
            bad = array.size - np.count_nonzero(np.isfinite(array))
            if bad:
                raise UserError(f'{where} holds {bad} NaN/Inf values: the caffemodel is corrupt')
            arrays.append(array)
        return arrays

    def put(self, key: str, array: np.ndarray) -> None:
        """Store ``array`` as timm's ``key``, in its shape (Caffe's BN blobs are (1, C, 1, 1) or (C,))."""
        self.tensors[key] = np.ascontiguousarray(array.reshape(self.expected[key]), dtype=np.float32)

    def bn_module(self, layer: Message) -> str:
        """The timm BN that a BN or affine Scale layer fills: that of the convolution whose output it reads."""
        node = self.graph.source(layer)
        while node.layer.type != 'Convolution':  # a Scale reads its BatchNorm
            node = self.graph.source(node.layer)
        return match_layer(self.placed[node.layer.name]).bn_module

    # -- layers ------------------------------------------------------------------------------------------
    def weighted(self, layer: Message) -> None:
        match = match_layer(self.placed[layer.name])
        weight, *bias = self.layer_blobs(layer)
        if match.row.role == 'stem':
            weight = weight[:, ::-1]  # bgr_to_rgb
        self.put(f'{match.module}.weight', weight)
        if bias:
            self.put(f'{match.module}.bias', bias[0])

    def batch_norm(self, layer: Message) -> None:
        bn_module = self.bn_module(layer)
        eps_caffe, eps_timm = bn_eps(layer), self.modules[bn_module]['eps']
        # bn_eps: timm's eps is fixed, so a different Caffe eps moves into the variance
        eps_delta = 0. if np.float32(eps_caffe) == np.float32(eps_timm) else eps_caffe - eps_timm
        if layer.type == 'CuDNNBatchNorm':
            scale, bias, mean, var = self.layer_blobs(layer)
            statistics = dict(zip(CUDNN_BN_BLOBS, (scale, bias, mean, var + eps_delta)))
        else:
            mean_s, var_s, s = self.layer_blobs(layer)
            factor = 0. if s.item() == 0 else 1. / s.item()  # as Caffe: s = 0 means statistics of 0
            statistics = dict(zip(BVLC_BN_BLOBS, (mean_s * factor, var_s * factor + eps_delta)))
        # both sides divide by sqrt(var + eps): a channel without a positive one makes NaN or Inf of everything after
        bad = int(np.count_nonzero(~(np.float32(statistics['running_var']) + np.float32(eps_timm) > 0)))
        if bad:
            raise UserError(f"{layer.type} layer '{layer.name}' has {bad} channels whose variance + eps "
                            f'({eps_caffe:g}) is not positive: the file is corrupt; use the released file')
        for name, array in statistics.items():
            self.put(f'{bn_module}.{name}', array)

    def affine_scale(self, layer: Message) -> None:
        for name, array in zip(SCALE_BLOBS, self.layer_blobs(layer)):
            self.put(f'{self.bn_module(layer)}.{name}', array)

    def run(self) -> Dict[str, np.ndarray]:
        self.check_depth()
        self.placed = place_layers(self.graph, self.blobs, self.spec)
        for layer in self.graph.layers:
            if layer.name not in self.placed:
                continue  # Caffe's Split layers, a deploy prototxt's Softmax of the logits
            if layer.type in WEIGHTED_TYPES:
                self.weighted(layer)
            elif layer.type in BN_TYPES:
                self.batch_norm(layer)
            elif layer.type == 'Scale' and len(layer.bottom) == 1:
                self.affine_scale(layer)
        unused = sorted(set(self.blobs) - self.consumed)
        if unused:
            raise UserError(
                f'{len(unused)} layers with weights are not part of the SKNet graph, e.g. {unused[0]!r}: '
                'the caffemodel holds another architecture or does not match the prototxt')
        missing = [k for k in self.expected if k not in self.tensors and not k.endswith('.num_batches_tracked')]
        if missing:  # the release graph fills every tensor of the release's models: a spec of another layout
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
        expected = self.spec['stage_units']
        if found and found != expected:  # no SK units at all: the layer placement names the first foreign layer
            raise UserError(
                f"the caffemodel's stages have {'/'.join(map(str, found))} units, {self.model_name}'s "
                f"{'/'.join(map(str, expected))}: it is another model (--model {self.model_name} is wrong?)")


def caffe_state_dict(graph: InferenceGraph, weights: Message, spec: Dict[str, Any]) -> Dict[str, np.ndarray]:
    """Arrays named and shaped exactly as the state dict of ``spec``'s model, from the Caffe graph and its blobs.

    Raises ``UserError`` on any difference from the release's graph or any inconsistency, before the caller
    writes anything.
    """
    return _Converter(graph, weights, spec).run()

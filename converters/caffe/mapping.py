"""The conversion as data: Caffe layer names of the SKNet release <-> timm modules, and the few transforms.

One row per Caffe layer that holds weights. In Caffe names, ``{s}`` / ``{u}`` are the release's stage (2..5)
and unit (1..n) and ``{g}`` the paths' group count; ``{unit}`` is the timm block ``layer{s - 1}.{u - 1}``.
A row's BN module is filled by the normalisation layer that consumes the row's output in the graph (the
fork's ``CuDNNBatchNorm``, or BVLC ``BatchNorm`` followed by an affine ``Scale``), whatever it is called.

Transforms, each named where it is applied:
- ``bgr_to_rgb``: the stem conv's input channels are reversed, folding the release's BGR input into timm's
  RGB one (the writer applies the inverse). The rest of the input convention (0..255 minus (104, 117, 123))
  is the model's data config: mean (123, 117, 104) / 255, std 1 / 255.
- ``cudnn_bn``: ``CuDNNBatchNorm`` blobs (scale, bias, mean, var), each (1, C, 1, 1) -> weight, bias,
  running_mean, running_var.
- ``bvlc_bn``: ``BatchNorm`` blobs (mean * s, var * s, s) -> running_mean, running_var divided by s (s = 0
  means 0, as Caffe); the ``Scale`` after it (gamma, beta) -> weight, bias.
- ``bn_eps``: a Caffe eps other than timm's BN eps goes into running_var (var + eps_caffe - eps_timm). The eps
  is the one Caffe computed with: ``CuDNNBatchNorm`` never goes below ``CUDNN_BN_MIN_EPSILON``; BVLC
  ``BatchNorm`` uses its own.
BN ``num_batches_tracked`` has no Caffe counterpart and stays at its default, 0.
"""
import re
from typing import NamedTuple, Optional, Tuple

__all__ = [
    'LayerRow', 'LayerMatch', 'LAYER_TABLE', 'CAFFE_BN_EPS', 'CUDNN_BN_MIN_EPSILON', 'CUDNN_BN_BLOBS',
    'BVLC_BN_BLOBS', 'SCALE_BLOBS', 'match_layer', 'caffe_name']


class LayerRow(NamedTuple):
    role: str
    caffe: str
    timm: str
    timm_bn: Optional[str]


LAYER_TABLE: Tuple[LayerRow, ...] = (
    #        role          Caffe layer                 timm module                    timm BN module
    LayerRow('stem',       'conv1/7x7_s2',             'conv1',                       'bn1'),
    LayerRow('reduce',     'conv{s}_{u}/1x1_reduce',   '{unit}.conv1.conv',           '{unit}.conv1.bn'),
    LayerRow('path0',      'conv{s}_{u}/3x3g{g}',      '{unit}.conv2.paths.0.conv',   '{unit}.conv2.paths.0.bn'),
    LayerRow('path1',      'conv{s}_{u}/3x3g{g}d2',    '{unit}.conv2.paths.1.conv',   '{unit}.conv2.paths.1.bn'),
    LayerRow('fc1',        'conv{s}_{u}/B_fc1',        '{unit}.conv2.attn.fc_reduce', '{unit}.conv2.attn.bn'),
    LayerRow('fc2',        'conv{s}_{u}/B_fc2',        '{unit}.conv2.attn.fc_select', None),
    LayerRow('increase',   'conv{s}_{u}/1x1_increase', '{unit}.conv3.conv',           '{unit}.conv3.bn'),
    LayerRow('proj',       'conv{s}_{u}/1x1_proj',     '{unit}.downsample.0',         '{unit}.downsample.1'),
    LayerRow('classifier', 'classifier',               'fc',                          None),
)

CAFFE_BN_EPS = 1e-5  # both Caffe BatchNorm layers' eps when batch_norm_param leaves it unset
# The release's CuDNNBatchNorm (borrowed from GENet) computes with a floor on the file's eps, in inference as in
# training: src/caffe/layers/cudnn_batch_norm_layer.cu line 26 of github.com/implus/SKNet at 17dd708,
# `double epsilon = max(this->eps_, CUDNN_BN_MIN_EPSILON);` -- and cuDNN 7's cudnn.h, the release's, defines
# CUDNN_BN_MIN_EPSILON as 1e-5. A file that says less was run with 1e-5.
CUDNN_BN_MIN_EPSILON = 1e-5
CUDNN_BN_BLOBS = ('weight', 'bias', 'running_mean', 'running_var')
BVLC_BN_BLOBS = ('running_mean', 'running_var')  # blob 2 is the scale factor s
SCALE_BLOBS = ('weight', 'bias')

_FIELD_PATTERNS = {'s': r'(?P<s>[2-9])', 'u': r'(?P<u>[1-9]\d*)', 'g': r'(?P<g>[1-9]\d*)'}


def _name_pattern(template: str) -> re.Pattern:
    # re.split with a group alternates literal text (even items) and field names (odd items)
    parts = re.split(r'\{(\w)\}', template)
    return re.compile(''.join(_FIELD_PATTERNS[p] if i % 2 else re.escape(p) for i, p in enumerate(parts)))


_PATTERNS = tuple((_name_pattern(row.caffe), row) for row in LAYER_TABLE)


class LayerMatch(NamedTuple):
    row: LayerRow
    module: str
    bn_module: Optional[str]
    stage: Optional[int]  # Caffe's s, for messages about depth


def match_layer(caffe_name: str) -> Optional[LayerMatch]:
    """The table row and timm module names of a Caffe layer, or None when the release has no such layer."""
    for pattern, row in _PATTERNS:
        found = pattern.fullmatch(caffe_name)
        if found:
            fields = found.groupdict()
            s, u = (int(fields[k]) if k in fields else None for k in 'su')
            unit = f'layer{s - 1}.{u - 1}' if s else None
            return LayerMatch(row, row.timm.format(unit=unit), row.timm_bn and row.timm_bn.format(unit=unit), s)
    return None


def caffe_name(
        role: str, stage: Optional[int] = None, unit: Optional[int] = None, groups: Optional[int] = None) -> str:
    """The release's name of a weighted layer; ``stage`` and ``unit`` are Caffe's (from 2 and 1)."""
    row = next(r for r in LAYER_TABLE if r.role == role)
    return row.caffe.format(s=stage, u=unit, g=groups)

"""The conversion as data: module names of the SKNet authors' PyTorch SK-ResNets (PytorchInsight,
``classification/models/imagenet/resnet_sk.py``) <-> timm's ``sk_resnet50`` / ``sk_resnet101``.

One row per module. ``{unit}`` is a residual unit, ``layer{1..4}.{0..}``, named alike on both sides (both nets
are torchvision's ResNet layout). Every tensor of a module (weight, bias, BatchNorm statistics) keeps its name and
its values: the two units compute the same thing with the same shapes.
- The authors' ``conv2`` (3x3 on the full width) is path 0 and ``conv2g`` (3x3, groups 32) path 1; both carry the
  unit's stride, as timm's paths do.
- Their attention pools each path and adds the pooled maps, which is the pooled sum timm computes.
- ``conv_fc2`` has 2 x planes outputs that they view as (2, planes): path-major, as ``fc_select``'s outputs are.
The checkpoint's ``module.`` prefix (``torch.nn.DataParallel``) is not part of these names.
"""
import re
from typing import NamedTuple, Optional, Tuple

__all__ = ['CONVERTIBLE_MODELS', 'DATA_PARALLEL_PREFIX', 'ModuleRow', 'MODULE_TABLE', 'timm_name', 'checkpoint_name']

CONVERTIBLE_MODELS = ('sk_resnet50', 'sk_resnet101')  # the authors' SK-ResNet-50* / -101*, their geometry
DATA_PARALLEL_PREFIX = 'module.'


class ModuleRow(NamedTuple):
    checkpoint: str
    timm: str


MODULE_TABLE: Tuple[ModuleRow, ...] = (
    #         PytorchInsight              timm
    ModuleRow('conv1',                   'conv1'),                        # stem 7x7, stride 2
    ModuleRow('bn1',                     'bn1'),
    ModuleRow('{unit}.conv1',            '{unit}.conv1.conv'),            # 1x1 reduce to planes
    ModuleRow('{unit}.bn1',              '{unit}.conv1.bn'),
    ModuleRow('{unit}.conv2',            '{unit}.conv2.paths.0.conv'),    # 3x3, dense
    ModuleRow('{unit}.bn2',              '{unit}.conv2.paths.0.bn'),
    ModuleRow('{unit}.conv2g',           '{unit}.conv2.paths.1.conv'),    # 3x3, groups 32
    ModuleRow('{unit}.bn2g',             '{unit}.conv2.paths.1.bn'),
    ModuleRow('{unit}.conv_fc1',         '{unit}.conv2.attn.fc_reduce'),  # planes -> planes // 16
    ModuleRow('{unit}.bn_fc1',           '{unit}.conv2.attn.bn'),
    ModuleRow('{unit}.conv_fc2',         '{unit}.conv2.attn.fc_select'),  # -> 2 x planes, path-major
    ModuleRow('{unit}.conv3',            '{unit}.conv3.conv'),            # 1x1 increase to 4 x planes
    ModuleRow('{unit}.bn3',              '{unit}.conv3.bn'),
    ModuleRow('{unit}.downsample.0',     '{unit}.downsample.0'),          # projection shortcut
    ModuleRow('{unit}.downsample.1',     '{unit}.downsample.1'),
    ModuleRow('fc',                      'fc'),                           # classifier, with bias
)

_UNIT = r'(?P<unit>layer[1-4]\.(?:0|[1-9]\d*))'


def _name_pattern(module: str) -> re.Pattern:
    parts = re.escape(module).replace(re.escape('{unit}'), _UNIT)
    return re.compile(rf'{parts}\.(?P<tensor>\w+)')


_TO_TIMM = tuple((_name_pattern(row.checkpoint), row.timm) for row in MODULE_TABLE)
_TO_CHECKPOINT = tuple((_name_pattern(row.timm), row.checkpoint) for row in MODULE_TABLE)


def _translate(name: str, table) -> Optional[str]:
    for pattern, module in table:
        found = pattern.fullmatch(name)
        if found:
            return f"{module.format(**found.groupdict())}.{found['tensor']}"
    return None


def timm_name(checkpoint_key: str) -> Optional[str]:
    """``layer1.0.conv2g.weight`` -> ``layer1.0.conv2.paths.1.conv.weight``; None for a name of no row.
    The key is given without the ``module.`` prefix."""
    return _translate(checkpoint_key, _TO_TIMM)


def checkpoint_name(timm_key: str) -> Optional[str]:
    """The inverse of ``timm_name``: which checkpoint tensor fills a timm tensor (None for one no row fills)."""
    return _translate(timm_key, _TO_CHECKPOINT)

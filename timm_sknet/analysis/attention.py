"""Kernel selection of SK units: the paper's analysis (Sec. 4.4, Figs. 3-4) for any timm_sknet model.

API: ``sk_units(model)`` lists the SK units under the paper's names, ``capture_selection(model)`` records the
selection weights of every unit during forward passes (forward hooks on each ``SKConv.attn``, removed on exit;
outputs are untouched), ``zoom_transform(data_config, scale)`` enlarges the object as the paper does and
``mean_difference`` is the paper's per-unit statistic. The ``timm-sknet attention`` subcommand that writes the
paper's figures from these is ``timm_sknet.cli.attention``.

Unit names: the paper writes ``SK_3_4`` for the 4th unit of stage 3 and numbers stages like the Caffe blobs,
``conv2_x`` .. ``conv5_x`` (``conv1`` is the stem); its SKNet-50 figures discuss SK_2_3, SK_3_4 and SK_5_3, and a
stage 5 exists only in that numbering. timm's ``layer1`` is therefore stage 2: ``layer1.0`` -> ``SK_2_1``, and the
paper's units are ``layer1.2``, ``layer2.3`` and ``layer4.2``. SK-ShuffleNetV2's ``stages.0`` is its paper's Stage2,
so ``stages.0.0`` is ``SK_2_1`` too; an SK conv inside a branch module of a unit is named after that branch: the
downsampling unit's ``stages.0.0.shortcut.conv_dw`` is ``SK_2_1_shortcut``.

Zoom protocol (the paper: "central cropping and subsequent resizing", objects 1.0x / 1.5x / 2.0x): the 1.0x view
is exactly the model's eval preprocessing from its pretrained_cfg (timm: shorter side resized to
S = floor(H / crop_pct), centre crop H x W, normalise). The s-times view resizes the shorter side to round(s * S)
instead and centre-crops H x W: the central 1/s of the 1.0x view, at H x W, resampled once from the original
pixels rather than upsampled from the 1.0x view.
"""
import math
import re
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
from PIL import Image
from timm.data.transforms import MaybeToTensor, ResizeKeepRatio, str_to_interp_mode
from torch import nn
from torchvision import transforms

from ..models.sk_conv import SKConv, effective_kernel_size

__all__ = [
    'SKUnit', 'SelectionCapture', 'sk_units', 'capture_selection', 'mean_difference', 'check_zoom_scale',
    'zoom_transform',
]

# a unit of timm's ResNet (layerS.U, S from 1) or of SK-ShuffleNetV2 (stages.S.U, S from 0)
_UNIT_NAME_RE = re.compile(r'(?:^|\.)(?:layer(\d+)|stages\.(\d+))\.(\d+)\.')
_ZOOM_CROP_MODES = ('center', 'squash')


@dataclass(frozen=True)
class SKUnit:
    """One SK convolution with attention: its paper name, where it sits and the kernel size of each path."""
    name: str  # 'SK_3_4' (or 'SK_2_1_shortcut'); the module name when it is not in a unit
    module_name: str  # the SKConv, e.g. 'layer2.3.conv2'
    stage: Optional[int]  # paper / Caffe stage: timm layerS is stage S + 1
    index: Optional[int]  # 1-based unit index within the stage
    channels: int
    kernel_sizes: Tuple[int, ...]  # effective size per path: a 3x3 with dilation 2 is 5

    @property
    def smallest_path(self) -> int:
        return self.kernel_sizes.index(min(self.kernel_sizes))

    @property
    def largest_path(self) -> int:
        return self.kernel_sizes.index(max(self.kernel_sizes))

    @property
    def difference_label(self) -> str:
        large, small = max(self.kernel_sizes), min(self.kernel_sizes)
        return f'{large}x{large} - {small}x{small}'


def sk_units(model: nn.Module) -> List[SKUnit]:
    """The model's SK convolutions that have selection attention, in forward order.

    Raises ValueError when there are none (not an SK model, or built with ``sk_attention=False``).
    """
    units = []
    for module_name, module in model.named_modules():
        if not isinstance(module, SKConv) or module.attn is None:
            continue
        match = _UNIT_NAME_RE.search(module_name + '.')
        stage = index = None
        name = module_name
        if match:
            layer, stages, unit_index = match.groups()
            stage, index = (int(layer) + 1 if layer else int(stages) + 2), int(unit_index) + 1
            inner = module_name[match.end():].split('.')  # an SK conv in a branch module takes the branch's name
            name = f'SK_{stage}_{index}' + (f'_{inner[0]}' if len(inner) > 1 else '')
        units.append(SKUnit(
            name=name,
            module_name=module_name,
            stage=stage,
            index=index,
            channels=module.paths[0].conv.out_channels,
            kernel_sizes=tuple(
                effective_kernel_size(path.conv.kernel_size[0], path.conv.dilation[0]) for path in module.paths),
        ))
    if not units:
        raise ValueError(f'{type(model).__name__} has no SK units with selection attention')
    return units


class SelectionCapture:
    """Records the selection weights of every SK unit; use through ``capture_selection``.

    ``weights`` maps unit name -> (B, M, C) float32 CPU tensor of the most recent forward pass: softmax
    attention over the M paths, per image and channel.
    """

    def __init__(self, model: nn.Module):
        self.model = model
        self.units = sk_units(model)
        self.weights: Dict[str, torch.Tensor] = {}
        self._handles = []

    def _hook(self, unit_name: str) -> Callable:
        def hook(module: nn.Module, args: Any, output: torch.Tensor) -> None:
            # a copy, so nothing the network does in place later can change what was recorded
            self.weights[unit_name] = output.detach().flatten(2).to('cpu', torch.float32, copy=True)
        return hook

    def __enter__(self) -> 'SelectionCapture':
        if self._handles:
            raise RuntimeError('this SelectionCapture is already active')
        modules = dict(self.model.named_modules())
        for unit in self.units:
            self._handles.append(modules[unit.module_name].attn.register_forward_hook(self._hook(unit.name)))
        return self

    def __exit__(self, *exc_info) -> None:
        self.remove()

    def remove(self) -> None:
        """Detach every hook; the weights recorded so far stay readable."""
        for handle in self._handles:
            handle.remove()
        self._handles = []


def capture_selection(model: nn.Module) -> SelectionCapture:
    """Context manager recording each SK unit's selection weights during forward passes::

        with capture_selection(model) as selection:
            logits = model(x)  # identical to the logits without capture
        selection.weights['SK_3_4']  # (B, M, C), sums to 1 over M
    """
    return SelectionCapture(model)


def mean_difference(weights: torch.Tensor, unit: SKUnit) -> torch.Tensor:
    """The paper's statistic: mean over channels of (attention of the largest kernel - of the smallest).

    ``weights`` is (..., M, C); returns (...), in float64.
    """
    weights = weights.double()
    return (weights[..., unit.largest_path, :] - weights[..., unit.smallest_path, :]).mean(-1)


def check_zoom_scale(scale: float) -> None:
    """Raise ValueError unless ``scale`` enlarges the object: a finite number >= 1."""
    if not (math.isfinite(scale) and scale >= 1):
        raise ValueError(f'{scale} is not a zoom-in factor (a finite number >= 1)')


def zoom_transform(data_config: Dict[str, Any], scale: float) -> Callable[[Image.Image], torch.Tensor]:
    """Eval preprocessing of ``data_config`` (timm's ``resolve_data_config``) with the object enlarged ``scale``x.

    ``scale == 1`` is timm's eval transform; see the module docstring for the protocol.
    """
    check_zoom_scale(scale)
    crop_mode = data_config.get('crop_mode') or 'center'
    if crop_mode not in _ZOOM_CROP_MODES:
        raise ValueError(f'zoom supports crop_mode {_ZOOM_CROP_MODES}, got {crop_mode!r}')
    size = tuple(data_config['input_size'][1:])
    interpolation = data_config['interpolation']
    scale_size = tuple(round(scale * math.floor(s / data_config['crop_pct'])) for s in size)
    # the same resize timm's transforms_imagenet_eval picks for each case, so 1.0x reproduces it exactly
    if crop_mode == 'squash':
        resize = transforms.Resize(scale_size, interpolation=str_to_interp_mode(interpolation))
    elif scale_size[0] == scale_size[1]:
        resize = transforms.Resize(scale_size[0], interpolation=str_to_interp_mode(interpolation))
    else:
        resize = ResizeKeepRatio(scale_size, interpolation=interpolation)
    return transforms.Compose([
        resize,
        transforms.CenterCrop(size),
        MaybeToTensor(),
        transforms.Normalize(mean=torch.tensor(data_config['mean']), std=torch.tensor(data_config['std'])),
    ])

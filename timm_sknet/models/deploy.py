"""timm's deploy convention for the SK models: BatchNorms folded into the convs before them.

``timm.utils.reparameterize_model`` (what ``--reparam`` in timm's scripts calls) finds ``fuse()`` (returns the
replacement module) and ``reparameterize()`` (changes the module in place). Each module here is, until then, the
plain timm module it extends (same children, state dict and forward), so hooks, FX and profilers see the network.
"""
from typing import Optional

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_weights
from timm.layers import ConvNormAct, register_notrace_module

__all__ = ['BatchNormAfterConv', 'ConvAct', 'FusibleConvNormAct', 'FusibleDownsample', 'fuse_conv_bn', 'has_running_stats']


def has_running_stats(norm: nn.Module) -> bool:
    """A BatchNorm (plain, timm's norm+act, frozen or sync) whose running statistics make it an affine map."""
    return getattr(norm, 'running_mean', None) is not None and getattr(norm, 'running_var', None) is not None


@torch.no_grad()
def fuse_conv_bn(conv: nn.Conv2d, norm: nn.Module) -> nn.Conv2d:
    """A new conv (same geometry, with a bias) computing ``norm(conv(x))`` on the norm's running statistics."""
    fused = nn.Conv2d(
        conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride, padding=conv.padding,
        dilation=conv.dilation, groups=conv.groups, bias=True, padding_mode=conv.padding_mode,
        device=conv.weight.device, dtype=conv.weight.dtype)
    fused.weight, fused.bias = fuse_conv_bn_weights(
        conv.weight, conv.bias, norm.running_mean, norm.running_var, norm.eps, norm.weight, norm.bias)
    return fused


class ConvAct(nn.Module):
    """Deploy form of ``ConvNormAct``: the conv with the norm folded in, then the activation and anti-aliasing."""

    def __init__(self, conv: nn.Conv2d, act: nn.Module, aa: Optional[nn.Module] = None):
        super().__init__()
        self.conv = conv
        self.act = act
        self.aa = aa

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.conv(x))
        if self.aa is not None:
            x = self.aa(x)
        return x


class FusibleConvNormAct(ConvNormAct):
    """timm's ``ConvNormAct`` (same modules, same state dict, same forward) with timm's deploy hook ``fuse()``.

    The deploy form keeps the activation and anti-aliasing; a drop layer (DropBlock) between norm and activation
    is the identity in inference and goes.
    """

    def fuse(self) -> nn.Module:
        if not has_running_stats(self.bn):
            return self  # e.g. a GroupNorm: no fixed affine map to fold
        return ConvAct(fuse_conv_bn(self.conv, self.bn), getattr(self.bn, 'act', nn.Identity()),
                       getattr(self, 'aa', None))


class FusibleDownsample(nn.Sequential):
    """timm's ResNet shortcut ``Sequential([pool,] conv, norm)`` (same children, same state dict, same forward)
    with timm's deploy hook ``fuse()``, which returns ``Sequential([pool,] conv)`` with the norm folded in."""

    @classmethod
    def wrap(cls, downsample: Optional[nn.Module]) -> Optional[nn.Module]:
        """timm's conv + norm shortcut as a ``FusibleDownsample``; anything else (None, identity) as it is."""
        if type(downsample) is nn.Sequential and len(downsample) >= 2 and isinstance(downsample[-2], nn.Conv2d):
            return cls(*downsample)
        return downsample

    def fuse(self) -> nn.Module:
        *pools, conv, norm = self
        if not has_running_stats(norm):
            return self
        return nn.Sequential(*pools, fuse_conv_bn(conv, norm))


@register_notrace_module  # traced as the nn.BatchNorm2d it is
class BatchNormAfterConv(nn.BatchNorm2d):
    """``nn.BatchNorm2d`` (same forward, same state dict) that folds itself into the conv before it on ``fuse()``.

    For a conv -> norm pair that sits directly in the model, such as timm's ResNet stem (``conv1``, ``bn1``):
    ``reparameterize_model`` visits only the root's children, so no parent of the pair can fold it, and renaming
    the pair into a child module would change the state-dict keys timm's checkpoints and the converter use.
    """

    def __init__(self, conv: nn.Conv2d, **kwargs):
        super().__init__(conv.out_channels, device=conv.weight.device, dtype=conv.weight.dtype, **kwargs)
        # a plain attribute, not a submodule: the conv is registered (and saved) by its own parent
        self.__dict__['conv_before'] = conv

    @torch.no_grad()
    def fuse(self) -> nn.Module:
        if not has_running_stats(self):
            return self
        conv = self.__dict__['conv_before']
        fused = fuse_conv_bn(conv, self)
        conv.weight, conv.bias = fused.weight, fused.bias
        return nn.Identity()

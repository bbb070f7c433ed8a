"""timm's deploy convention for the SK models: every BatchNorm folded into the conv before it, in place.

``timm.utils.reparameterize_model`` (what ``--reparam`` in timm's scripts calls) walks the module tree and puts
``child.fuse()`` in each child's place. Here the BatchNorms have ``fuse()``: each one that follows a conv is bound to
that conv when the model is built (``bind_norm``), and folding writes the norm into the conv's own weight and bias
(the same conv module, now with a bias) and leaves the norm's activation, or an identity, where the norm was. Every
module but the norms stays where it was, as the same object: hooks on it keep firing (a user's, timm's hook-based
``features_only``), and an FX graph, which calls its leaf modules by name, runs the folded convs and the
activations (``feature_cls='fx'``). Until folded, each norm is the timm or torch module it extends (same forward,
state dict, FX leaf), so hooks, FX and profilers see the network.

A norm swapped after the model is built (timm's ``freeze_batch_norm_2d``, ``convert_sync_batchnorm``) is a plain
timm or torch module again and stays unfolded: the deploy form still computes the same function.
"""
from typing import Optional

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_weights
from timm.layers import BatchNormAct2d, ConvNormAct, register_notrace_module

__all__ = [
    'BatchNormActAfterConv', 'BatchNormAfterConv', 'FusibleConvNormAct', 'bind_norm', 'bind_norms_in_sequence',
    'has_running_stats']


def has_running_stats(norm: nn.Module) -> bool:
    """A BatchNorm whose running statistics make it an affine map in eval (one built without them has none)."""
    return getattr(norm, 'running_mean', None) is not None and getattr(norm, 'running_var', None) is not None


@torch.no_grad()
def _fold_into(conv: nn.Conv2d, norm: nn.modules.batchnorm._BatchNorm) -> None:
    """``conv`` computes ``norm(conv(x))`` on the norm's running statistics: new weight and bias, same module."""
    conv.weight, conv.bias = fuse_conv_bn_weights(
        conv.weight, conv.bias, norm.running_mean, norm.running_var, norm.eps, norm.weight, norm.bias)


@register_notrace_module  # traced as the nn.BatchNorm2d it is
class BatchNormAfterConv(nn.BatchNorm2d):
    """``nn.BatchNorm2d`` (same forward, same state dict) that folds itself into the conv before it on ``fuse()``
    and leaves an identity in its place."""

    def __init__(self, conv: nn.Conv2d, **kwargs):
        super().__init__(conv.out_channels, device=conv.weight.device, dtype=conv.weight.dtype, **kwargs)
        # a plain attribute, not a submodule: the conv is registered (and saved) by its own parent
        self.__dict__['conv_before'] = conv

    def fuse(self) -> nn.Module:
        if not has_running_stats(self):
            return self
        _fold_into(self.__dict__['conv_before'], self)
        return nn.Identity()


@register_notrace_module  # traced as the BatchNormAct2d it is
class BatchNormActAfterConv(BatchNormAct2d):
    """timm's ``BatchNormAct2d`` (same forward, same state dict) that folds itself into the conv before it on
    ``fuse()`` and leaves its own activation module in its place. The drop layer between norm and activation
    (DropBlock) is the identity in inference and goes."""

    def __init__(self, conv: nn.Conv2d, **kwargs):
        super().__init__(conv.out_channels, device=conv.weight.device, dtype=conv.weight.dtype, **kwargs)
        self.__dict__['conv_before'] = conv

    def fuse(self) -> nn.Module:
        if not has_running_stats(self):
            return self
        _fold_into(self.__dict__['conv_before'], self)
        return self.act


def bind_norm(norm: nn.Module, conv: nn.Module) -> nn.Module:
    """``norm`` (right after ``conv``) as its equivalent bound to ``conv`` when it is a plain ``nn.BatchNorm2d`` or
    timm's ``BatchNormAct2d``: same settings, state and submodules. Anything else (a GroupNorm, a SyncBatchNorm, ...)
    is returned as it is and stays unfolded."""
    if not isinstance(conv, nn.Conv2d) or getattr(norm, 'num_features', None) != conv.out_channels:
        return norm
    settings = dict(eps=norm.eps, momentum=norm.momentum, affine=norm.affine,
                    track_running_stats=norm.track_running_stats)
    if type(norm) is nn.BatchNorm2d:
        bound = BatchNormAfterConv(conv, **settings)
    elif type(norm) is BatchNormAct2d:
        bound = BatchNormActAfterConv(conv, apply_act=False, **settings)
        bound.drop, bound.act = norm.drop, norm.act  # the modules timm built, as they are
    else:
        return norm
    bound.load_state_dict(norm.state_dict())
    bound.train(norm.training)
    return bound


def bind_norms_in_sequence(sequence: Optional[nn.Module]) -> None:
    """Bind each norm of an ``nn.Sequential`` to the conv before it (timm's deep stem, its ResNet shortcuts
    ``[pool,] conv, norm``); anything that is not a Sequential is left alone."""
    if type(sequence) is not nn.Sequential:
        return
    for i in range(1, len(sequence)):
        sequence[i] = bind_norm(sequence[i], sequence[i - 1])


class FusibleConvNormAct(ConvNormAct):
    """timm's ``ConvNormAct`` (same modules, same state dict, same forward) whose norm folds into its conv."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.bn = bind_norm(self.bn, self.conv)

"""Selective Kernel convolution (Split / Fuse / Select) and the SK residual units.

Paper: "Selective Kernel Networks", Li, Wang, Hu, Yang, CVPR 2019 (https://arxiv.org/abs/1903.06586).

State-dict layout (shared by the Caffe converter and timm's ``skresnext50_32x4d`` checkpoints):
``paths.{m}.conv.weight`` / ``paths.{m}.bn.*`` per path, ``attn.fc_reduce.weight``, ``attn.bn.*`` and
``attn.fc_select.weight`` whose ``M * C`` outputs are path-major (all channels of path 0 first), exactly
the order of Caffe's ``B_fc2`` -> ``Reshape(0, M, -1, 0)``.
"""
from typing import Optional, Sequence, Tuple, Type

import torch
import torch.nn.functional as F
from torch import nn
from timm.layers import ConvNormAct, register_notrace_module

__all__ = [
    'ConvNormActFold', 'ConvNormFoldDownsample', 'SKAttention', 'SKConv', 'SKBottleneck', 'SKBasicBlock',
    'conv_norm_act_folded', 'fold_batchnorm', 'sk_attn_channels',
]


def sk_attn_channels(channels: int, rd_ratio: float = 1. / 16, min_channels: int = 32) -> int:
    """Width d of the fuse fc: the paper's d = max(C / r, L)."""
    return max(int(channels * rd_ratio), min_channels)


def _path_geometry(kernel_size: int, dilation: int, dilate_large_kernels: bool):
    """(kernel, dilation, padding) of one path; a K x K path becomes 3x3 dilated (K - 1) / 2 when asked."""
    if kernel_size < 3 or kernel_size % 2 == 0:
        raise ValueError(f'SK path kernel sizes must be odd and >= 3, got {kernel_size}')
    if dilate_large_kernels:
        path_dilation = dilation * (kernel_size - 1) // 2
        return 3, path_dilation, path_dilation
    return kernel_size, dilation, dilation * (kernel_size - 1) // 2


# The fused conv ops that inductor emits on CPU; private, so their absence only disables the fast eval path.
_HAS_ONEDNN_CONV_FUSION = hasattr(torch.ops.mkldnn, '_convolution_pointwise')


def _onednn_fusable(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether oneDNN's fused conv ops apply: plain fp32 CPU tensors and nothing needing a gradient (the ops have
    no backward); not while torch.compile, export or the JIT tracer records a graph (they fuse by themselves)."""
    if not _HAS_ONEDNN_CONV_FUSION or torch.compiler.is_compiling() or torch.jit.is_tracing():
        return False
    return (
        type(x) is torch.Tensor and x.device.type == 'cpu' and x.dtype == torch.float32
        and weight.dtype == torch.float32 and not (x.requires_grad or weight.requires_grad)
        and torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled)


def fold_batchnorm(conv: nn.Conv2d, norm: nn.Module, x: torch.Tensor) -> Optional[Tuple[torch.Tensor, torch.Tensor]]:
    """(weight, bias) of ``conv`` with ``norm`` folded in, for input ``x``; None unless ``norm`` is a BatchNorm on
    running statistics, and where folding costs more than it saves.

    On running statistics the norm is a per-channel affine map: it scales the conv weights and becomes the conv's
    bias, one pass over the weights instead of one over the activations. So the fold is taken only where the
    weights are the smaller (not for wide 1x1 convs on small maps, e.g. stage 4 at batch 1). It is differentiable:
    gradients in eval still reach every parameter.
    """
    if isinstance(x, torch.fx.Proxy):
        return None  # FX symbolic tracing: no shapes to decide on; the traced graph keeps conv -> norm
    running_mean = getattr(norm, 'running_mean', None)
    running_var = getattr(norm, 'running_var', None)
    if not isinstance(conv, nn.Conv2d) or running_mean is None or running_var is None or norm.training:
        return None
    weight = conv.weight
    stride = conv.stride
    out_pixels = x.shape[0] * (x.shape[-2] // stride[0]) * (x.shape[-1] // stride[1])
    if weight.numel() // weight.shape[0] > out_pixels:
        return None
    norm_weight, norm_bias, conv_bias = norm.weight, norm.bias, conv.bias
    scale = torch.rsqrt(running_var + norm.eps)
    if norm_weight is not None:
        scale = scale * norm_weight
    if norm_bias is not None:
        bias = torch.addcmul(norm_bias, running_mean, scale, value=-1.)
    else:
        bias = -running_mean * scale
    if conv_bias is not None:
        bias = torch.addcmul(bias, conv_bias, scale)
    return weight * scale.reshape(-1, 1, 1, 1), bias


def conv_norm_act_folded(
        x: torch.Tensor,
        conv: nn.Conv2d,
        norm: nn.Module,
        act: Optional[nn.Module] = None,
        residual: Optional[torch.Tensor] = None,
) -> Optional[torch.Tensor]:
    """``act(norm(conv(x))) [+ residual]`` with the norm folded into the conv (see ``fold_batchnorm``); None where
    it is not folded, for the caller to run its modules. On CPU without autograd, conv + bias + ReLU (or
    + residual) is a single oneDNN call. The norm (and activation) modules are not called: their hooks do not fire.
    """
    folded = fold_batchnorm(conv, norm, x)
    if folded is None:
        return None
    weight, bias = folded
    out = _onednn_conv(x, conv, weight, bias, act, residual)
    if out is not None:
        return out
    x = conv._conv_forward(x, weight, bias)
    if act is not None and not isinstance(act, nn.Identity):
        x = act(x)
        if residual is not None:
            x = x + residual
    elif residual is not None:
        x += residual  # nothing saves the conv's output for backward
    return x


def _onednn_conv(
        x: torch.Tensor,
        conv: nn.Conv2d,
        weight: torch.Tensor,
        bias: torch.Tensor,
        act: Optional[nn.Module],
        residual: Optional[torch.Tensor],
) -> Optional[torch.Tensor]:
    """conv + bias + ReLU, or conv + bias + residual, as one oneDNN call; None where that does not apply."""
    if not _onednn_fusable(x, weight) or conv.padding_mode != 'zeros' or isinstance(conv.padding, str):
        return None
    plain = act is None or isinstance(act, nn.Identity)
    if residual is None and (plain or isinstance(act, nn.ReLU)):
        return torch.ops.mkldnn._convolution_pointwise(
            x, weight, bias, conv.padding, conv.stride, conv.dilation, conv.groups,
            'none' if plain else 'relu', [], '')
    if residual is not None and plain and residual.dtype == x.dtype:
        return torch.ops.mkldnn._convolution_pointwise.binary(
            x, residual, weight, bias, conv.padding, conv.stride, conv.dilation, conv.groups,
            'add', None, None, [], None)
    return None


@register_notrace_module  # whether to fold depends on the input shape
class ConvNormActFold(ConvNormAct):
    """``ConvNormAct`` (same modules, same state dict) whose BatchNorm on running statistics is folded into the
    conv, where that pays (``conv_norm_act_folded``). Batch statistics (training) run conv -> norm as
    ``ConvNormAct``; so does TorchScript. When folded, hooks on ``bn`` do not fire (hooks on this module do).

    ``residual``, when given, is added to the output (after the norm's activation).
    """

    def forward(self, x: torch.Tensor, residual: Optional[torch.Tensor] = None) -> torch.Tensor:
        if not torch.jit.is_scripting():
            out = self._forward_folded(x, residual)
            if out is not None:
                return out
        x = self.bn(self.conv(x))
        if residual is not None:
            if isinstance(self.bn.act, nn.Identity):
                x += residual  # nothing saves the norm's output for backward
            else:
                x = x + residual
        return x

    @torch.jit.unused
    def _forward_folded(self, x: torch.Tensor, residual: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
        act, drop = getattr(self.bn, 'act', None), getattr(self.bn, 'drop', None)
        if act is None or drop is None or (drop.training and not isinstance(drop, nn.Identity)):
            return None  # not a BatchNormAct, or an active drop block between norm and activation
        return conv_norm_act_folded(x, self.conv, self.bn, act, residual)


@register_notrace_module  # whether to fold depends on the input shape
class ConvNormFoldDownsample(nn.Sequential):
    """timm's ResNet shortcut ``Sequential([pool,] conv, norm)`` (same children, same state dict) whose norm is
    folded into the conv where that pays (``conv_norm_act_folded``); TorchScript runs the children in turn."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.jit.is_scripting():
            for module in self:
                x = module(x)
            return x
        return self._forward_eager(x)

    @torch.jit.unused
    def _forward_eager(self, x: torch.Tensor) -> torch.Tensor:
        *pools, conv, norm = self
        for pool in pools:
            x = pool(x)
        out = conv_norm_act_folded(x, conv, norm)
        return norm(conv(x)) if out is None else out


def _foldable_downsample(downsample: Optional[nn.Module]) -> Optional[nn.Module]:
    """timm's conv + norm shortcut as a ``ConvNormFoldDownsample``; anything else as it is."""
    if type(downsample) is nn.Sequential and len(downsample) in (2, 3) and isinstance(downsample[-2], nn.Conv2d):
        return ConvNormFoldDownsample(*downsample)
    return downsample


class SKAttention(nn.Module):
    """Fuse and Select: pooled descriptor -> fc (d) -> BN -> ReLU -> fc (M * C) -> softmax across paths.

    Returns the selection weights shaped (B, M, C, 1, 1); forward hooks on this module see them, which is
    how the attention analysis captures kernel selection without touching the forward pass.
    """

    def __init__(
            self,
            channels: int,
            num_paths: int,
            attn_channels: int,
            act_layer: Type[nn.Module] = nn.ReLU,
            norm_layer: Type[nn.Module] = nn.BatchNorm2d,
            device=None,
            dtype=None,
    ):
        dd = {'device': device, 'dtype': dtype}
        super().__init__()
        self.num_paths = num_paths
        self.fc_reduce = nn.Conv2d(channels, attn_channels, kernel_size=1, bias=False, **dd)
        self.bn = norm_layer(attn_channels, **dd)
        self.act = act_layer(inplace=True)
        self.fc_select = nn.Conv2d(attn_channels, channels * num_paths, kernel_size=1, bias=False, **dd)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        # The 1x1 convs (the checkpoint layout) act on a 1x1 map: as GEMMs they skip the conv setup.
        batch = pooled.shape[0]
        x = F.linear(pooled.flatten(1), self.fc_reduce.weight.flatten(1), self.fc_reduce.bias)
        x = self.act(self.bn(x.view(batch, -1, 1, 1)))
        x = F.linear(x.flatten(1), self.fc_select.weight.flatten(1), self.fc_select.bias)
        return x.view(batch, self.num_paths, -1, 1, 1).softmax(dim=1)


class SKConv(nn.Module):
    """Selective Kernel convolution.

    Split: M conv-BN-ReLU paths over the same input (kernel sizes ``kernel_size``; by default K > 3 is a 3x3
    with dilation (K - 1) / 2, as in the release; ``dilate_large_kernels=False`` gives true K x K kernels).
    Fuse: global average of the sum of the paths -> ``SKAttention``. Select: softmax-weighted sum of paths.
    ``attention=False`` is the paper's no-attention baseline: the plain sum of the paths.
    ``split_input=True`` feeds each path 1/M of the input channels (timm's ``skresnet*`` variant).

    Computed without stacking the paths: their sum is never materialised (Fuse pools each path), and Select
    accumulates the weighted paths in place; without autograd the output reuses path 0's output buffer.
    """

    def __init__(
            self,
            in_channels: int,
            out_channels: int,
            kernel_size: Sequence[int] = (3, 5),
            stride: int = 1,
            dilation: int = 1,
            groups: int = 1,
            attention: bool = True,
            attn_channels: Optional[int] = None,
            rd_ratio: float = 1. / 16,
            min_attn_channels: int = 32,
            dilate_large_kernels: bool = True,
            split_input: bool = False,
            act_layer: Type[nn.Module] = nn.ReLU,
            norm_layer: Type[nn.Module] = nn.BatchNorm2d,
            drop_layer: Optional[Type[nn.Module]] = None,
            device=None,
            dtype=None,
    ):
        dd = {'device': device, 'dtype': dtype}
        super().__init__()
        kernel_size = [kernel_size] if isinstance(kernel_size, int) else list(kernel_size)
        self.num_paths = len(kernel_size)
        self.split_input = split_input
        path_in = in_channels
        if split_input:
            if in_channels % self.num_paths:
                raise ValueError(f'split_input needs in_channels ({in_channels}) divisible by M={self.num_paths}')
            path_in = in_channels // self.num_paths
        self.path_in_channels = path_in
        self.paths = nn.ModuleList()
        for k in kernel_size:
            k, d, p = _path_geometry(k, dilation, dilate_large_kernels)
            self.paths.append(ConvNormActFold(
                path_in, out_channels, kernel_size=k, stride=stride, padding=p, dilation=d, groups=groups,
                act_layer=act_layer, norm_layer=norm_layer, drop_layer=drop_layer, **dd))
        self.attn = None
        if attention and self.num_paths > 1:
            attn_channels = attn_channels or sk_attn_channels(out_channels, rd_ratio, min_attn_channels)
            self.attn = SKAttention(out_channels, self.num_paths, attn_channels, act_layer, norm_layer, **dd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.split_input:
            inputs = torch.split(x, self.path_in_channels, dim=1)
            feats = [path(inputs[i]) for i, path in enumerate(self.paths)]
        else:
            feats = [path(x) for path in self.paths]
        if self.attn is None:
            out = feats[0]
            for f in feats[1:]:
                out = out + f
            return out
        # Fuse without materialising the sum of the paths: its mean is the sum of the paths' means. Spatial sums
        # scaled once (not means) give a backward that broadcasts one gradient per channel instead of
        # materialising a full-size one per path.
        pooled = feats[0].sum((2, 3), keepdim=True)
        for f in feats[1:]:
            pooled = pooled + f.sum((2, 3), keepdim=True)
        weights = self.attn(pooled / (feats[0].shape[-2] * feats[0].shape[-1]))
        weights = weights.to(feats[0].dtype)  # under autocast: keep the output in the paths' dtype
        # Select, accumulating in place: into a fresh product under autograd (neither mul nor addcmul saves its
        # output), into path 0's own buffer without autograd (no allocation, no page faults for a fresh one).
        if torch.is_grad_enabled():
            out = feats[0] * weights[:, 0]
        else:
            out = feats[0].mul_(weights[:, 0])
        for m in range(1, len(feats)):
            out.addcmul_(feats[m], weights[:, m])
        return out


class SKBottleneck(nn.Module):
    """1x1 reduce -> SKConv (grouped, carries the stride) -> 1x1 increase; residual add; ReLU."""
    expansion = 4

    def __init__(
            self,
            inplanes: int,
            planes: int,
            stride: int = 1,
            downsample: Optional[nn.Module] = None,
            cardinality: int = 1,
            base_width: int = 64,
            sk_kwargs: Optional[dict] = None,
            reduce_first: int = 1,
            dilation: int = 1,
            first_dilation: Optional[int] = None,
            act_layer: Type[nn.Module] = nn.ReLU,
            norm_layer: Type[nn.Module] = nn.BatchNorm2d,
            attn_layer: Optional[Type[nn.Module]] = None,
            aa_layer: Optional[Type[nn.Module]] = None,
            drop_block: Optional[Type[nn.Module]] = None,
            drop_path: Optional[nn.Module] = None,
            device=None,
            dtype=None,
    ):
        dd = {'device': device, 'dtype': dtype}
        super().__init__()
        if aa_layer is not None or attn_layer is not None:
            raise ValueError('SK units support neither aa_layer nor an extra attn_layer')
        sk_kwargs = dict(sk_kwargs or {})
        groups = sk_kwargs.pop('groups', None) or cardinality
        width = int(planes * (base_width / 64)) * cardinality
        first_planes = width // reduce_first
        outplanes = planes * self.expansion
        self.conv1 = ConvNormActFold(inplanes, first_planes, kernel_size=1, act_layer=act_layer,
                                     norm_layer=norm_layer, **dd)
        self.conv2 = SKConv(
            first_planes, width, stride=stride, dilation=first_dilation or dilation, groups=groups,
            act_layer=act_layer, norm_layer=norm_layer, drop_layer=drop_block, **sk_kwargs, **dd)
        self.conv3 = ConvNormActFold(width, outplanes, kernel_size=1, apply_act=False, act_layer=act_layer,
                                     norm_layer=norm_layer, **dd)
        self.act = act_layer(inplace=True)
        self.downsample = _foldable_downsample(downsample)
        self.drop_path = drop_path

    def zero_init_last(self) -> None:
        nn.init.zeros_(self.conv3.bn.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self.conv2(self.conv1(x))
        if self.downsample is not None:
            shortcut = self.downsample(shortcut)
        if self.drop_path is None:
            x = self.conv3(x, shortcut)
        else:
            x = self.drop_path(self.conv3(x)) + shortcut
        return self.act(x)


class SKBasicBlock(nn.Module):
    """SKConv (3x3 paths, carries the stride) -> 3x3 conv; residual add; ReLU (SK-ResNet-18/34)."""
    expansion = 1

    def __init__(
            self,
            inplanes: int,
            planes: int,
            stride: int = 1,
            downsample: Optional[nn.Module] = None,
            cardinality: int = 1,
            base_width: int = 64,
            sk_kwargs: Optional[dict] = None,
            reduce_first: int = 1,
            dilation: int = 1,
            first_dilation: Optional[int] = None,
            act_layer: Type[nn.Module] = nn.ReLU,
            norm_layer: Type[nn.Module] = nn.BatchNorm2d,
            attn_layer: Optional[Type[nn.Module]] = None,
            aa_layer: Optional[Type[nn.Module]] = None,
            drop_block: Optional[Type[nn.Module]] = None,
            drop_path: Optional[nn.Module] = None,
            device=None,
            dtype=None,
    ):
        dd = {'device': device, 'dtype': dtype}
        super().__init__()
        if aa_layer is not None or attn_layer is not None:
            raise ValueError('SK units support neither aa_layer nor an extra attn_layer')
        if cardinality != 1 or base_width != 64:
            raise ValueError('SKBasicBlock supports only cardinality=1 and base_width=64')
        sk_kwargs = dict(sk_kwargs or {})
        groups = sk_kwargs.pop('groups', None) or 1
        first_planes = planes // reduce_first
        self.conv1 = SKConv(
            inplanes, first_planes, stride=stride, dilation=first_dilation or dilation, groups=groups,
            act_layer=act_layer, norm_layer=norm_layer, drop_layer=drop_block, **sk_kwargs, **dd)
        self.conv2 = ConvNormActFold(first_planes, planes, kernel_size=3, padding=dilation, dilation=dilation,
                                     apply_act=False, act_layer=act_layer, norm_layer=norm_layer, **dd)
        self.act = act_layer(inplace=True)
        self.downsample = _foldable_downsample(downsample)
        self.drop_path = drop_path

    def zero_init_last(self) -> None:
        nn.init.zeros_(self.conv2.bn.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self.conv1(x)
        if self.downsample is not None:
            shortcut = self.downsample(shortcut)
        if self.drop_path is None:
            x = self.conv2(x, shortcut)
        else:
            x = self.drop_path(self.conv2(x)) + shortcut
        return self.act(x)

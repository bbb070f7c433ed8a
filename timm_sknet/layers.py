"""Selective Kernel convolution (Split / Fuse / Select), the SK residual units, and their deploy form.

Paper: "Selective Kernel Networks", Li, Wang, Hu, Yang, CVPR 2019 (https://arxiv.org/abs/1903.06586).

State-dict layout (shared by the Caffe converter and timm's ``skresnext50_32x4d`` checkpoints):
``paths.{m}.conv.weight`` / ``paths.{m}.bn.*`` per path, ``attn.fc_reduce.weight``, ``attn.bn.*`` and
``attn.fc_select.weight`` whose ``M * C`` outputs are path-major (all channels of path 0 first), exactly
the order of Caffe's ``B_fc2`` -> ``Reshape(0, M, -1, 0)``.

Every module here is a plain timm module in every mode: each submodule's ``forward`` runs in train and eval,
with or without autograd. The deploy form is timm's convention: ``timm.utils.reparameterize_model`` finds
``fuse()`` (returns the replacement module) and ``reparameterize()`` (changes the module in place) and folds
each BatchNorm's running statistics into the conv before it, permanently.
"""
from typing import Optional, Sequence, Type

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_weights
from timm.layers import ConvNormAct, create_attn, register_notrace_module

__all__ = [
    'BatchNormAfterConv', 'ConvAct', 'FusibleConvNormAct', 'FusibleDownsample', 'SKAttention', 'SKBasicBlock',
    'SKBottleneck', 'SKConv', 'fuse_conv_bn', 'sk_attn_channels',
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


def _has_running_stats(norm: nn.Module) -> bool:
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
        if not _has_running_stats(self.bn):
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
        if not _has_running_stats(norm):
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
        if not _has_running_stats(self):
            return self
        conv = self.__dict__['conv_before']
        fused = fuse_conv_bn(conv, self)
        conv.weight, conv.bias = fused.weight, fused.bias
        return nn.Identity()


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
        x = self.act(self.bn(self.fc_reduce(pooled)))
        x = self.fc_select(x)
        return x.view(x.shape[0], self.num_paths, -1, 1, 1).softmax(dim=1)

    def reparameterize(self) -> None:
        """Fold the BatchNorm into ``fc_reduce`` (which gains a bias); the module keeps its type and outputs."""
        if _has_running_stats(self.bn):
            self.fc_reduce = fuse_conv_bn(self.fc_reduce, self.bn)
            self.bn = nn.Identity()


class SKConv(nn.Module):
    """Selective Kernel convolution.

    Split: M conv-BN-ReLU paths over the same input (kernel sizes ``kernel_size``; by default K > 3 is a 3x3
    with dilation (K - 1) / 2, as in the release; ``dilate_large_kernels=False`` gives true K x K kernels).
    ``path_act=False`` leaves the paths without activation (conv-BN, as ShuffleNetV2's depthwise convs).
    Fuse: global average of the sum of the paths -> ``SKAttention``. Select: softmax-weighted sum of paths.
    ``attention=False`` is the paper's no-attention baseline: the plain sum of the paths.
    ``split_input=True`` feeds each path 1/M of the input channels (timm's ``skresnet*`` variant).
    ``aa_layer`` anti-aliases a strided unit the way timm's ``SelectiveKernel`` does: each path convolves at
    stride 1 and is then blurred and subsampled by ``aa_layer``.

    Unlike timm's ``SelectiveKernel`` the paths are never stacked: Fuse pools each path and adds the (B, C)
    means, and Select writes the weighted sum in one pass (``torch.lerp`` for M = 2), so neither the sum of the
    paths nor M weighted copies are materialised.
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
            path_act: bool = True,
            act_layer: Type[nn.Module] = nn.ReLU,
            norm_layer: Type[nn.Module] = nn.BatchNorm2d,
            aa_layer: Optional[Type[nn.Module]] = None,
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
            self.paths.append(FusibleConvNormAct(
                path_in, out_channels, kernel_size=k, stride=stride, padding=p, dilation=d, groups=groups,
                apply_act=path_act, act_layer=act_layer, norm_layer=norm_layer, aa_layer=aa_layer,
                drop_layer=drop_layer, **dd))
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
        # Fuse: the mean of the sum of the paths is the sum of their means. Spatial sums scaled once (not means)
        # give a backward that broadcasts one gradient per channel instead of materialising one per path.
        pooled = feats[0].sum((2, 3), keepdim=True)
        for f in feats[1:]:
            pooled = pooled + f.sum((2, 3), keepdim=True)
        weights = self.attn(pooled / (feats[0].shape[-2] * feats[0].shape[-1]))
        weights = weights.to(feats[0].dtype)  # under autocast: keep the output in the paths' dtype
        # Select with out-of-place ops only: FX's dead-code elimination drops an in-place update whose result is
        # unused (the traced graph would lose every path but the first), and no module's output is written to.
        if len(feats) == 2:
            # the softmax weights sum to 1, so w0 * f0 + w1 * f1 = f1 + w0 * (f0 - f1): one pass over both paths
            return torch.lerp(feats[1], feats[0], weights[:, 0])
        out = feats[0] * weights[:, 0]
        for m in range(1, len(feats)):
            out = torch.addcmul(out, feats[m], weights[:, m])
        return out


class SKBottleneck(nn.Module):
    """1x1 reduce -> SKConv (grouped, carries the stride) -> 1x1 increase [-> attn_layer]; residual add; ReLU.

    Takes every keyword timm's ResNet passes its blocks; ``aa_layer`` and ``attn_layer`` are honoured as in timm's
    ``SelectiveKernelBottleneck`` (anti-aliased SK paths; e.g. an SE module after the 1x1 increase).
    """
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
        sk_kwargs = dict(sk_kwargs or {})
        groups = sk_kwargs.pop('groups', None) or cardinality
        width = int(planes * (base_width / 64)) * cardinality
        first_planes = width // reduce_first
        outplanes = planes * self.expansion
        self.conv1 = FusibleConvNormAct(
            inplanes, first_planes, kernel_size=1, act_layer=act_layer, norm_layer=norm_layer, **dd)
        self.conv2 = SKConv(
            first_planes, width, stride=stride, dilation=first_dilation or dilation, groups=groups,
            act_layer=act_layer, norm_layer=norm_layer, aa_layer=aa_layer, drop_layer=drop_block,
            **sk_kwargs, **dd)
        self.conv3 = FusibleConvNormAct(
            width, outplanes, kernel_size=1, apply_act=False, act_layer=act_layer, norm_layer=norm_layer, **dd)
        self.se = create_attn(attn_layer, outplanes, **dd)
        self.act = act_layer(inplace=True)
        self.downsample = FusibleDownsample.wrap(downsample)
        self.drop_path = drop_path

    def zero_init_last(self) -> None:
        nn.init.zeros_(self.conv3.bn.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self.conv1(x)
        x = self.conv2(x)
        x = self.conv3(x)
        if self.se is not None:
            x = self.se(x)
        if self.drop_path is not None:
            x = self.drop_path(x)
        if self.downsample is not None:
            shortcut = self.downsample(shortcut)
        x += shortcut
        return self.act(x)


class SKBasicBlock(nn.Module):
    """SKConv (3x3 paths, carries the stride) -> 3x3 conv [-> attn_layer]; residual add; ReLU (SK-ResNet-18/34).

    ``aa_layer`` and ``attn_layer`` are honoured as in timm's ``SelectiveKernelBasic``.
    """
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
        if cardinality != 1 or base_width != 64:
            raise ValueError("SKBasicBlock supports only cardinality=1 and base_width=64; use block='bottleneck'")
        sk_kwargs = dict(sk_kwargs or {})
        groups = sk_kwargs.pop('groups', None) or 1
        first_planes = planes // reduce_first
        self.conv1 = SKConv(
            inplanes, first_planes, stride=stride, dilation=first_dilation or dilation, groups=groups,
            act_layer=act_layer, norm_layer=norm_layer, aa_layer=aa_layer, drop_layer=drop_block,
            **sk_kwargs, **dd)
        self.conv2 = FusibleConvNormAct(
            first_planes, planes, kernel_size=3, padding=dilation, dilation=dilation, apply_act=False,
            act_layer=act_layer, norm_layer=norm_layer, **dd)
        self.se = create_attn(attn_layer, planes, **dd)
        self.act = act_layer(inplace=True)
        self.downsample = FusibleDownsample.wrap(downsample)
        self.drop_path = drop_path

    def zero_init_last(self) -> None:
        nn.init.zeros_(self.conv2.bn.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self.conv1(x)
        x = self.conv2(x)
        if self.se is not None:
            x = self.se(x)
        if self.drop_path is not None:
            x = self.drop_path(x)
        if self.downsample is not None:
            shortcut = self.downsample(shortcut)
        x += shortcut
        return self.act(x)

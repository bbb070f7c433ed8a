"""Selective Kernel convolution (Split / Fuse / Select) and its attention.

Paper: "Selective Kernel Networks", Li, Wang, Hu, Yang, CVPR 2019 (https://arxiv.org/abs/1903.06586).

State-dict layout (shared by the Caffe converter and timm's ``skresnext50_32x4d`` checkpoints):
``paths.{m}.conv.weight`` / ``paths.{m}.bn.*`` per path, ``attn.fc_reduce.weight``, ``attn.bn.*`` and
``attn.fc_select.weight`` whose ``M * C`` outputs are path-major (all channels of path 0 first), exactly
the order of Caffe's ``B_fc2`` -> ``Reshape(0, M, -1, 0)``.

Every module here is a plain timm module in every mode: each submodule's ``forward`` runs in train and eval,
with or without autograd. Its deploy form (``reparameterize_model``) folds every BatchNorm (``deploy.py``).
"""
from typing import Any, Optional, Sequence, Tuple, Type, Union

import torch
from torch import nn

from .deploy import FusibleConvNormAct, bind_norm

__all__ = [
    'SKAttention', 'SKConv', 'SKPath', 'check_flag', 'check_output_stride', 'effective_kernel_size', 'resolve_sk_paths',
    'sk_attn_channels']


# One SK path: (kernel, dilation, groups). groups None: the unit's own (SK-ResNeXt: its cardinality; SK-ShuffleNetV2:
# its channels, i.e. depthwise).
SKPath = Tuple[int, int, Optional[int]]


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_int(what: str, value: Any, minimum: int) -> None:
    if not _is_int(value):
        raise TypeError(f'{what} must be an int, got {value!r}')
    if value < minimum:
        raise ValueError(f'{what} must be >= {minimum}, got {value}')


def check_flag(name: str, value: Any) -> None:
    """Refuse a non-bool where a keyword takes True or False (a tuple would otherwise read as True)."""
    if not isinstance(value, bool):
        raise TypeError(f'{name} takes True or False, got {value!r}')


def check_output_stride(output_stride: Any) -> None:
    """Refuse an output stride the trunks cannot give by dilating their later stages (timm's ResNet takes the same
    three, by an assert without a message)."""
    if not _is_int(output_stride) or output_stride not in (8, 16, 32):
        raise ValueError(
            f'output_stride must be 32, 16 or 8 (the later stages dilated instead of strided), got {output_stride!r}')


def _check_kernel(what: str, kernel: Any) -> None:
    _check_int(what, kernel, 3)
    if kernel % 2 == 0:
        raise ValueError(f'{what} must be odd (a centred path), got {kernel}')


def _check_sk_paths(sk_paths: Any) -> Tuple[SKPath, ...]:
    if not isinstance(sk_paths, (tuple, list)) or not sk_paths:
        raise TypeError(f'sk_paths takes a non-empty tuple of (kernel, dilation, groups) per path, got {sk_paths!r}')
    paths = []
    for path in sk_paths:
        if not isinstance(path, (tuple, list)) or len(path) != 3:
            raise TypeError(f'each sk_paths entry is (kernel, dilation, groups), got {path!r}')
        kernel, dilation, groups = path
        _check_kernel(f'the kernel of sk_paths entry {tuple(path)}', kernel)
        _check_int(f'the dilation of sk_paths entry {tuple(path)}', dilation, 1)
        if groups is not None:
            _check_int(f"the groups of sk_paths entry {tuple(path)} (None: the unit's own)", groups, 1)
        paths.append((kernel, dilation, groups))
    return tuple(paths)


def _kernel_sizes(kernel_size: Any) -> Tuple[int, ...]:
    kernels = (kernel_size,) if _is_int(kernel_size) else kernel_size
    if not isinstance(kernels, (tuple, list)) or not kernels:
        raise TypeError(f'kernel_size takes an int or a non-empty tuple of ints (one per path), got {kernel_size!r}')
    for kernel in kernels:
        _check_kernel('each kernel_size entry', kernel)
    return tuple(kernels)


def effective_kernel_size(kernel: int, dilation: int) -> int:
    """The span of a dilated kernel: a 3x3 with dilation 2 covers 5x5."""
    return dilation * (kernel - 1) + 1


def resolve_sk_paths(
        sk_paths: Optional[Sequence[Sequence[Optional[int]]]] = None,
        kernel_size: Optional[Union[int, Sequence[int]]] = None,
        dilate_large_kernels: Optional[bool] = None,
        groups: Optional[int] = None,
        groups_keyword: str = 'groups',
) -> Tuple[SKPath, ...]:
    """The SK unit's paths as ``(kernel, dilation, groups)``, from ``sk_paths`` or from the older keywords.

    Without ``sk_paths``: one path per ``kernel_size`` (default (3, 5)); K > 3 is a 3x3 with dilation (K - 1) / 2
    unless ``dilate_large_kernels=False``; every path has ``groups``. With ``sk_paths``, each older keyword given
    must describe the same paths (kernel sizes as effective spans, dilate_large_kernels as "every kernel is 3x3" or
    "no dilation", one ``groups`` for all); one that does not, or a value of a type the keyword does not take, is
    refused. Groups left None stay None: the unit fills in its own.
    """
    if dilate_large_kernels is not None:
        check_flag('dilate_large_kernels', dilate_large_kernels)
    if groups is not None:
        _check_int(f'{groups_keyword} (one value for every path; per-path groups go in sk_paths)', groups, 1)
    kernels = None if kernel_size is None else _kernel_sizes(kernel_size)
    if sk_paths is None:
        dilate = True if dilate_large_kernels is None else dilate_large_kernels
        return tuple(
            (3, (k - 1) // 2, groups) if dilate else (k, 1, groups) for k in (kernels or (3, 5)))

    paths = _check_sk_paths(sk_paths)
    if kernels is not None and kernels != tuple(effective_kernel_size(k, d) for k, d, _ in paths):
        raise ValueError(
            f'kernel_size={kernel_size!r} contradicts sk_paths={paths} (effective kernel sizes '
            f'{tuple(effective_kernel_size(k, d) for k, d, _ in paths)}); give sk_paths alone')
    if dilate_large_kernels and any(k != 3 for k, _, _ in paths):
        raise ValueError(
            f'dilate_large_kernels=True contradicts sk_paths={paths}, which has kernels other than 3x3; '
            'give sk_paths alone')
    if dilate_large_kernels is False and any(d != 1 for _, d, _ in paths):
        raise ValueError(
            f'dilate_large_kernels=False contradicts sk_paths={paths}, which has dilated paths; give sk_paths alone')
    if groups is not None:
        if any(g not in (None, groups) for _, _, g in paths):
            raise ValueError(
                f'{groups_keyword}={groups} contradicts the groups of sk_paths={paths}; give sk_paths alone')
        paths = tuple((k, d, groups) for k, d, _ in paths)
    return paths


def sk_attn_channels(channels: int, rd_ratio: float = 1. / 16, min_channels: int = 32) -> int:
    """Width d of the fuse fc: the paper's d = max(C / r, L) (PyTorchInsight's unit: C // 16, no L)."""
    if isinstance(rd_ratio, bool) or not isinstance(rd_ratio, (int, float)):
        raise TypeError(f'the attention ratio 1/r (sk_rd_ratio) must be a number, got {rd_ratio!r}')
    if not rd_ratio > 0:
        raise ValueError(f'the attention ratio 1/r (sk_rd_ratio) must be > 0, got {rd_ratio!r}')
    _check_int('the minimum attention width L (sk_min_attn_channels)', min_channels, 0)
    width = max(int(channels * rd_ratio), min_channels)
    if width < 1:
        raise ValueError(
            f'the attention width max({channels} * {rd_ratio}, {min_channels}) is 0; '
            'raise sk_rd_ratio or sk_min_attn_channels')
    return width


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
        self.bn = bind_norm(norm_layer(attn_channels, **dd), self.fc_reduce)  # folds into fc_reduce (deploy form)
        self.act = act_layer(inplace=True)
        self.fc_select = nn.Conv2d(attn_channels, channels * num_paths, kernel_size=1, bias=False, **dd)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        x = self.act(self.bn(self.fc_reduce(pooled)))
        x = self.fc_select(x)
        return x.view(x.shape[0], self.num_paths, -1, 1, 1).softmax(dim=1)


class SKConv(nn.Module):
    """Selective Kernel convolution.

    Split: M conv-BN-ReLU paths over the same input, one per ``sk_paths`` entry ``(kernel, dilation, groups)``
    (groups None: ``default_groups``); a dilation multiplies the unit's own ``dilation`` (output_stride).
    Without ``sk_paths`` the paths come from ``kernel_size`` (default (3, 5); K > 3 is a 3x3 with dilation
    (K - 1) / 2, as in the release, unless ``dilate_large_kernels=False``) and ``groups`` (see
    ``resolve_sk_paths``). E.g. the release's unit is ((3, 1, 32), (3, 2, 32)), PyTorchInsight's SK-ResNet unit
    ((3, 1, 1), (3, 1, 32)) with ``rd_ratio=1/16, min_attn_channels=0``.
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
            kernel_size: Optional[Union[int, Sequence[int]]] = None,
            stride: int = 1,
            dilation: int = 1,
            groups: Optional[int] = None,
            attention: bool = True,
            attn_channels: Optional[int] = None,
            rd_ratio: float = 1. / 16,
            min_attn_channels: int = 32,
            dilate_large_kernels: Optional[bool] = None,
            split_input: bool = False,
            sk_paths: Optional[Sequence[Sequence[Optional[int]]]] = None,
            default_groups: int = 1,
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
        for name, flag in (('attention', attention), ('split_input', split_input), ('path_act', path_act)):
            check_flag(name, flag)
        paths = resolve_sk_paths(sk_paths, kernel_size, dilate_large_kernels, groups)
        paths = tuple((k, d, default_groups if g is None else g) for k, d, g in paths)
        self.num_paths = len(paths)
        self.split_input = split_input
        path_in = in_channels
        if split_input:
            if in_channels % self.num_paths:
                raise ValueError(f'split_input needs in_channels ({in_channels}) divisible by M={self.num_paths}')
            path_in = in_channels // self.num_paths
        self.path_in_channels = path_in
        self.paths = nn.ModuleList()
        for k, d, g in paths:
            if path_in % g or out_channels % g:
                raise ValueError(
                    f'SK path ({k}, {d}, {g}): {g} groups do not divide its {path_in} input and {out_channels} '
                    'output channels')
            path_dilation = dilation * d
            self.paths.append(FusibleConvNormAct(
                path_in, out_channels, kernel_size=k, stride=stride, padding=path_dilation * (k - 1) // 2,
                dilation=path_dilation, groups=g, apply_act=path_act, act_layer=act_layer, norm_layer=norm_layer,
                aa_layer=aa_layer, drop_layer=drop_layer, **dd))
        self.attn = None
        if attention and self.num_paths > 1:
            if attn_channels is None:
                attn_channels = sk_attn_channels(out_channels, rd_ratio, min_attn_channels)
            _check_int('the attention width (sk_attn_channels)', attn_channels, 1)
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

"""Selective Kernel convolution (Split / Fuse / Select) and its attention.

Paper: "Selective Kernel Networks", Li, Wang, Hu, Yang, CVPR 2019 (https://arxiv.org/abs/1903.06586).

State-dict layout (shared by the Caffe converter and timm's ``skresnext50_32x4d`` checkpoints):
``paths.{m}.conv.weight`` / ``paths.{m}.bn.*`` per path, ``attn.fc_reduce.weight``, ``attn.bn.*`` and
``attn.fc_select.weight`` whose ``M * C`` outputs are path-major (all channels of path 0 first), exactly
the order of Caffe's ``B_fc2`` -> ``Reshape(0, M, -1, 0)``.

Every module here is a plain timm module in every mode: each submodule's ``forward`` runs in train and eval,
with or without autograd. Its deploy form (``reparameterize_model``) folds every BatchNorm (``deploy.py``).
"""
from typing import Optional, Sequence, Type

import torch
from torch import nn

from .deploy import FusibleConvNormAct, fuse_conv_bn, has_running_stats

__all__ = ['SKAttention', 'SKConv', 'sk_attn_channels']


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
        if has_running_stats(self.bn):
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

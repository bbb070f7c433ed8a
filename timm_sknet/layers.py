"""Selective Kernel convolution (Split / Fuse / Select) and the SK residual units.

Paper: "Selective Kernel Networks", Li, Wang, Hu, Yang, CVPR 2019 (https://arxiv.org/abs/1903.06586).

State-dict layout (shared by the Caffe converter and timm's ``skresnext50_32x4d`` checkpoints):
``paths.{m}.conv.weight`` / ``paths.{m}.bn.*`` per path, ``attn.fc_reduce.weight``, ``attn.bn.*`` and
``attn.fc_select.weight`` whose ``M * C`` outputs are path-major (all channels of path 0 first), exactly
the order of Caffe's ``B_fc2`` -> ``Reshape(0, M, -1, 0)``.
"""
from typing import Optional, Sequence, Type

import torch
from torch import nn
from timm.layers import ConvNormAct

__all__ = ['SKAttention', 'SKConv', 'SKBottleneck', 'SKBasicBlock', 'sk_attn_channels']


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


class SKConv(nn.Module):
    """Selective Kernel convolution.

    Split: M conv-BN-ReLU paths over the same input (kernel sizes ``kernel_size``; by default K > 3 is a 3x3
    with dilation (K - 1) / 2, as in the release; ``dilate_large_kernels=False`` gives true K x K kernels).
    Fuse: global average of the sum of the paths -> ``SKAttention``. Select: softmax-weighted sum of paths.
    ``attention=False`` is the paper's no-attention baseline: the plain sum of the paths.
    ``split_input=True`` feeds each path 1/M of the input channels (timm's ``skresnet*`` variant).
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
            self.paths.append(ConvNormAct(
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
        # Fuse without materialising the sum: the mean of a sum is the sum of the means.
        pooled = feats[0].mean((2, 3), keepdim=True)
        for f in feats[1:]:
            pooled = pooled + f.mean((2, 3), keepdim=True)
        weights = self.attn(pooled)
        out = feats[0] * weights[:, 0]
        for m in range(1, len(feats)):
            out = torch.addcmul(out, feats[m], weights[:, m])
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
        self.conv1 = ConvNormAct(inplanes, first_planes, kernel_size=1, act_layer=act_layer,
                                 norm_layer=norm_layer, **dd)
        self.conv2 = SKConv(
            first_planes, width, stride=stride, dilation=first_dilation or dilation, groups=groups,
            act_layer=act_layer, norm_layer=norm_layer, drop_layer=drop_block, **sk_kwargs, **dd)
        self.conv3 = ConvNormAct(width, outplanes, kernel_size=1, apply_act=False, act_layer=act_layer,
                                 norm_layer=norm_layer, **dd)
        self.act = act_layer(inplace=True)
        self.downsample = downsample
        self.drop_path = drop_path

    def zero_init_last(self) -> None:
        nn.init.zeros_(self.conv3.bn.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self.conv3(self.conv2(self.conv1(x)))
        if self.drop_path is not None:
            x = self.drop_path(x)
        if self.downsample is not None:
            shortcut = self.downsample(shortcut)
        x += shortcut
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
        self.conv2 = ConvNormAct(first_planes, planes, kernel_size=3, padding=dilation, dilation=dilation,
                                 apply_act=False, act_layer=act_layer, norm_layer=norm_layer, **dd)
        self.act = act_layer(inplace=True)
        self.downsample = downsample
        self.drop_path = drop_path

    def zero_init_last(self) -> None:
        nn.init.zeros_(self.conv2.bn.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self.conv2(self.conv1(x))
        if self.drop_path is not None:
            x = self.drop_path(x)
        if self.downsample is not None:
            shortcut = self.downsample(shortcut)
        x += shortcut
        return self.act(x)

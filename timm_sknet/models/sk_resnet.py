"""SKNet, SK-ResNeXt and SK-ResNet for timm.

Paper: "Selective Kernel Networks", Xiang Li, Wenhai Wang, Xiaolin Hu, Jian Yang, CVPR 2019
(https://arxiv.org/abs/1903.06586). Released Caffe models: github.com/implus/SKNet (no licence file); the
authors' PyTorch SK-ResNets (``sk_resnet50`` / ``sk_resnet101`` here): github.com/implus/PytorchInsight (no
licence file either).

The trunk is timm's ``ResNet`` (same module and parameter names, so timm's ``skresnext50_32x4d`` checkpoints
load into ``sk_resnext50_32x4d``/``sknet50``); this file adds what the release needs and timm's ResNet lacks:
per-stage SK attention widths (SKNet-101's release uses 32/16/32/64), Caffe's ceil-mode stem pool and the
single-3x3-conv CIFAR stem with three stages.
"""
from functools import partial
from typing import Any, Dict, List, Optional, Sequence, Tuple, Type, Union

import torch
from torch import nn
from timm.layers import create_attn, get_norm_layer
from timm.models import ResNet, checkpoint_seq, generate_default_cfgs, get_pretrained_cfg, register_model

from ..weights.hub import hub_source
from .timm_internals import feature_take_indices
from ..weights.release import CAFFE_BGR_MEAN
# modules, not their names: the autoload hook may import this file while one of them is mid-import
from ..weights import pretrained as pretrained_weights
from . import deploy, sk_conv

__all__ = ['SKBasicBlock', 'SKBottleneck', 'SKNet']

_STEM_POOLS = ('max', 'caffe_ceil')


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
        width = int(planes * (base_width / 64)) * cardinality
        first_planes = width // reduce_first
        outplanes = planes * self.expansion
        self.conv1 = deploy.FusibleConvNormAct(
            inplanes, first_planes, kernel_size=1, act_layer=act_layer, norm_layer=norm_layer, **dd)
        self.conv2 = sk_conv.SKConv(
            first_planes, width, stride=stride, dilation=first_dilation or dilation, default_groups=cardinality,
            act_layer=act_layer, norm_layer=norm_layer, aa_layer=aa_layer, drop_layer=drop_block,
            **(sk_kwargs or {}), **dd)
        self.conv3 = deploy.FusibleConvNormAct(
            width, outplanes, kernel_size=1, apply_act=False, act_layer=act_layer, norm_layer=norm_layer, **dd)
        self.se = create_attn(attn_layer, outplanes, **dd)
        self.act = act_layer(inplace=True)
        deploy.bind_norms_in_sequence(downsample)  # timm's shortcut [pool,] conv, norm
        self.downsample = downsample
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
        first_planes = planes // reduce_first
        self.conv1 = sk_conv.SKConv(
            inplanes, first_planes, stride=stride, dilation=first_dilation or dilation,
            act_layer=act_layer, norm_layer=norm_layer, aa_layer=aa_layer, drop_layer=drop_block,
            **(sk_kwargs or {}), **dd)
        self.conv2 = deploy.FusibleConvNormAct(
            first_planes, planes, kernel_size=3, padding=dilation, dilation=dilation, apply_act=False,
            act_layer=act_layer, norm_layer=norm_layer, **dd)
        self.se = create_attn(attn_layer, planes, **dd)
        self.act = act_layer(inplace=True)
        deploy.bind_norms_in_sequence(downsample)  # timm's shortcut [pool,] conv, norm
        self.downsample = downsample
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


_BLOCKS = {'basic': SKBasicBlock, 'bottleneck': SKBottleneck}


def _stage_block(block_cls: type, sk_kwargs: Dict[str, Any]):
    block = partial(block_cls, sk_kwargs=sk_kwargs)
    block.expansion = block_cls.expansion  # timm's make_blocks reads it off the block factory
    return block


class SKNet(ResNet):
    """ResNet / ResNeXt trunk whose 3x3 convolutions are Selective Kernel convolutions.

    Args beyond timm's ``ResNet`` (num_classes, in_chans, output_stride, global_pool, cardinality,
    base_width, stem_width, avg_down, drop_rate, drop_path_rate, drop_block_rate, zero_init_last, ...):
        layers: units per stage (3 or 4 stages).
        block: 'bottleneck' or 'basic'.
        sk_paths: ``(kernel, dilation, groups)`` of each SK path, M = len(sk_paths); groups None: the
            cardinality. Default ((3, 1, None), (3, 2, None)), the release's 3x3 and "5x5" (3x3 dilation 2).
        kernel_size: kernel size of each SK path instead of sk_paths (a contradicting pair is refused).
        sk_attention: softmax selection (True) or the paper's plain-sum baseline (False).
        sk_groups: groups of every path (default: cardinality).
        sk_attn_channels: explicit fuse width d per stage (default max(C * sk_rd_ratio, sk_min_attn_channels)).
        sk_rd_ratio, sk_min_attn_channels: the fuse width rule, 1/r and L (0: no minimum).
        dilate_large_kernels: realise K > 3 as a 3x3 with dilation (K - 1) / 2 (the release) or as true K x K.
        split_input: give each path 1/M of the input channels (timm ``skresnet*`` style).
        stem_type: '' (7x7), 'deep', 'deep_tiered' (timm's) or 'cifar' (one 3x3 stride-1 conv, no pool).
        stem_pool: 'max' (timm: 3x3/s2, pad 1) or 'caffe_ceil' (the release: 3x3/s2, pad 0, ceil rounding).
        bn_momentum, bn_eps: BatchNorm settings, as timm's train.py passes them (``--bn-momentum``, ``--bn-eps``).
    """

    def __init__(
            self,
            layers: Sequence[int],
            block: str = 'bottleneck',
            channels: Optional[Sequence[int]] = None,
            sk_paths: Optional[Sequence[Sequence[Optional[int]]]] = None,
            kernel_size: Optional[Union[int, Sequence[int]]] = None,
            sk_attention: bool = True,
            sk_groups: Optional[int] = None,
            sk_attn_channels: Optional[Sequence[int]] = None,
            sk_rd_ratio: float = 1. / 16,
            sk_min_attn_channels: int = 32,
            dilate_large_kernels: Optional[bool] = None,
            split_input: bool = False,
            stem_type: str = '',
            stem_pool: str = 'max',
            in_chans: int = 3,
            bn_momentum: Optional[float] = None,
            bn_eps: Optional[float] = None,
            **kwargs,
    ):
        if block not in _BLOCKS:
            raise ValueError(f"block must be one of {sorted(_BLOCKS)}, got {block!r}")
        if stem_pool not in _STEM_POOLS:
            raise ValueError(f"stem_pool must be one of {_STEM_POOLS}, got {stem_pool!r}")
        num_stages = len(layers)
        if num_stages not in (3, 4):
            raise ValueError(f'SKNet has 3 or 4 stages, got layers={list(layers)}')
        channels = tuple(channels or (64, 128, 256, 512)[:num_stages])
        if sk_attn_channels is not None and not isinstance(sk_attn_channels, (tuple, list)):
            raise TypeError(f'sk_attn_channels takes one width per stage, got {sk_attn_channels!r}')
        attn_widths = tuple(sk_attn_channels) if sk_attn_channels else (None,) * num_stages
        if len(channels) != num_stages or len(attn_widths) != num_stages:
            raise ValueError('layers, channels and sk_attn_channels need one entry per stage')
        sk_conv.check_output_stride(kwargs.get('output_stride', 32))
        cifar_stem = stem_type == 'cifar'
        if cifar_stem and kwargs.get('output_stride', 32) != 32:
            raise ValueError('the CIFAR stem supports output_stride=32 only')
        for name, flag in (('sk_attention', sk_attention), ('split_input', split_input)):
            sk_conv.check_flag(name, flag)
        sk_common = dict(
            sk_paths=sk_conv.resolve_sk_paths(sk_paths, kernel_size, dilate_large_kernels, sk_groups, 'sk_groups'),
            attention=sk_attention, rd_ratio=sk_rd_ratio, min_attn_channels=sk_min_attn_channels,
            split_input=split_input)
        if bn_momentum is not None or bn_eps is not None:
            norm_overrides = {k: v for k, v in (('momentum', bn_momentum), ('eps', bn_eps)) if v is not None}
            kwargs['norm_layer'] = partial(get_norm_layer(kwargs.get('norm_layer', nn.BatchNorm2d)), **norm_overrides)
        if stem_pool == 'caffe_ceil' and (kwargs.get('aa_layer') or kwargs.get('replace_stem_pool')):
            raise ValueError(
                "aa_layer and replace_stem_pool replace the stem's max pool, so they cannot keep the release's "
                "stem_pool='caffe_ceil'; pass stem_pool='max' with them")
        block_cls = _BLOCKS[block]
        blocks = tuple(_stage_block(block_cls, dict(sk_common, attn_channels=w)) for w in attn_widths)
        super().__init__(
            block=blocks, layers=tuple(layers), channels=channels, in_chans=in_chans,
            stem_type='' if cifar_stem else stem_type, **kwargs)

        self.stage_names = [f'layer{i + 1}' for i in range(num_stages)]
        # timm's ResNet has no option for what follows, so it is set after its construction.
        if num_stages == 3:
            self.layer4 = nn.Sequential()  # keeps ResNet's scriptable four-stage forward; holds no parameters
        if cifar_stem:
            dd = {'device': kwargs.get('device'), 'dtype': kwargs.get('dtype')}
            self.conv1 = nn.Conv2d(in_chans, self.bn1.num_features, 3, stride=1, padding=1, bias=False, **dd)
            nn.init.kaiming_normal_(self.conv1.weight, mode='fan_out', nonlinearity='relu')
            self.maxpool = nn.Identity()
            for info in self.feature_info:  # ResNet counts a stride-4 stem; this one has stride 1
                info['reduction'] //= 4 if info['module'] != 'act1' else 2
        elif stem_pool == 'caffe_ceil':
            # Caffe's pooling rounds the output size up with no padding: 112 -> 56 like timm's pad-1 pool,
            # but every window is shifted by one pixel, so the released weights need exactly this pool.
            self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=0, ceil_mode=True)
        self._bind_stem_norms()

    def _bind_stem_norms(self) -> None:
        """Let each stem BatchNorm fold itself into the conv before it in the deploy form (``deploy.bind_norm``):
        the stem's conv -> norm pairs sit in the model itself or in timm's plain Sequentials."""
        stem_convs = self.conv1 if isinstance(self.conv1, nn.Sequential) else [self.conv1]
        self.bn1 = deploy.bind_norm(self.bn1, stem_convs[-1])
        for seq in (self.conv1, self.maxpool):
            deploy.bind_norms_in_sequence(seq)

    def forward_intermediates(
            self,
            x: torch.Tensor,
            indices: Optional[Union[int, List[int]]] = None,
            norm: bool = False,
            stop_early: bool = False,
            output_fmt: str = 'NCHW',
            intermediates_only: bool = False,
    ) -> Union[List[torch.Tensor], Tuple[torch.Tensor, List[torch.Tensor]]]:
        """Stem output then each stage's output (``len(stage_names) + 1`` taps), as timm's ResNet."""
        assert output_fmt == 'NCHW', 'Output shape must be NCHW.'
        take_indices, max_index = feature_take_indices(len(self.stage_names) + 1, indices)
        intermediates = []
        x = self.act1(self.bn1(self.conv1(x)))
        if 0 in take_indices:
            intermediates.append(x)
        x = self.maxpool(x)
        stage_names = self.stage_names[:max_index] if stop_early else self.stage_names
        for feat_idx, name in enumerate(stage_names, start=1):
            stage = getattr(self, name)
            x = checkpoint_seq(stage, x) if self.grad_checkpointing and not torch.jit.is_scripting() else stage(x)
            if feat_idx in take_indices:
                intermediates.append(x)
        if intermediates_only:
            return intermediates
        return x, intermediates

    def prune_intermediate_layers(
            self,
            indices: Union[int, List[int]] = 1,
            prune_norm: bool = False,
            prune_head: bool = True,
    ) -> List[int]:
        """Drop the stages (and head) that the requested taps do not need."""
        num_taps = len(self.stage_names) + 1
        take_indices, max_index = feature_take_indices(num_taps, indices)
        for name in self.stage_names[max_index:]:
            setattr(self, name, nn.Sequential())
        if max_index == 0:
            self.maxpool = nn.Identity()
        prune_end = max_index < num_taps - 1
        if prune_end:
            self.num_features = self.head_hidden_size = self.feature_info[max_index]['num_chs']
        if prune_head or prune_end:
            self.reset_classifier(0, '')
        return take_indices


def _create_sknet(variant: str, pretrained: bool = False, **kwargs) -> SKNet:
    num_taps = len(kwargs['layers']) + 1  # the stem, then every stage
    # pretrained=True: the copy convert-caffe --install put in the local store, else the Hub, else an error that
    # names both and how to install the weights
    return pretrained_weights.build_model_with_store(
        SKNet, variant, pretrained, feature_cfg=dict(out_indices=tuple(range(num_taps))), **kwargs)


def _cfg(url: str = '', **kwargs) -> Dict[str, Any]:
    return {
        'url': url,
        'num_classes': 1000, 'input_size': (3, 224, 224), 'pool_size': (7, 7),
        'crop_pct': 0.875, 'interpolation': 'bicubic',
        'mean': (0.485, 0.456, 0.406), 'std': (0.229, 0.224, 0.225),
        'first_conv': 'conv1', 'classifier': 'fc',
        **kwargs,
    }


# The release feeds BGR pixels in 0..255 minus CAFFE_BGR_MEAN. timm feeds RGB (x / 255 - mean) / std, so the RGB
# mean / 255 and std = 1 / 255 reproduce it; the converter folds BGR -> RGB into conv1.
CAFFE_MEAN = tuple(m / 255 for m in reversed(CAFFE_BGR_MEAN))
CAFFE_STD = (1 / 255, 1 / 255, 1 / 255)


def _caffe_cfg(model_name_tag: str, **kwargs) -> Dict[str, Any]:
    # 224 eval: shorter side to 256 (crop 0.875), bilinear; the paper also reports 320.
    return _cfg(
        **hub_source(model_name_tag), interpolation='bilinear', crop_pct=0.875, crop_mode='center',
        mean=CAFFE_MEAN, std=CAFFE_STD, test_input_size=(3, 320, 320), test_crop_pct=0.875,
        license='other', **kwargs)


def _pytorchinsight_cfg(model_name_tag: str) -> Dict[str, Any]:
    # the authors' PyTorch evaluation (torchvision): resize 256, centre crop 224, bilinear, ImageNet mean / std;
    # their repository has no licence
    return _cfg(**hub_source(model_name_tag), interpolation='bilinear', crop_pct=0.875, crop_mode='center',
                license='other')


default_cfgs = generate_default_cfgs({
    'sknet26.untrained': _cfg(),
    'sknet50.caffe_in1k': _caffe_cfg('sknet50.caffe_in1k'),
    'sknet101.caffe_in1k': _caffe_cfg('sknet101.caffe_in1k'),
    'sknet29_cifar.untrained': _cfg(
        num_classes=10, input_size=(3, 32, 32), pool_size=(8, 8), crop_pct=1.0,
        mean=(0.4914, 0.4822, 0.4465), std=(0.2470, 0.2435, 0.2616)),
    # timm's own trained weights (timm/skresnext50_32x4d.ra_in1k): same graph and names, so they load strictly
    'sk_resnext50_32x4d.ra_in1k': get_pretrained_cfg('skresnext50_32x4d.ra_in1k'),
    'sk_resnext101_32x4d.untrained': _cfg(),
    'sk_resnext101_32x8d.untrained': _cfg(),
    # timm's own trained weights (timm/skresnet18.ra_in1k, timm/skresnet34.ra_in1k): same graph and names
    'sk_resnet18.ra_in1k': get_pretrained_cfg('skresnet18.ra_in1k'),
    'sk_resnet34.ra_in1k': get_pretrained_cfg('skresnet34.ra_in1k'),
    'sk_resnet50.pytorchinsight_in1k': _pytorchinsight_cfg('sk_resnet50.pytorchinsight_in1k'),
    'sk_resnet101.pytorchinsight_in1k': _pytorchinsight_cfg('sk_resnet101.pytorchinsight_in1k'),
})

# The released SKNets: ResNeXt 32x4d, SK[M=2 (3x3, 3x3 dilation 2), G=32, r=16, L=32], Caffe stem pool.
_RELEASE_ARGS = dict(cardinality=32, base_width=4, stem_pool='caffe_ceil')


# timm's skresnet18 / skresnet34: each path sees half the input channels, fuse width max(C / 8, 16).
_TIMM_SKRESNET_ARGS = dict(split_input=True, sk_rd_ratio=1 / 8, sk_min_attn_channels=16, zero_init_last=False)
# The SKNet authors' PyTorch SK-ResNet unit: full-width 3x3 dense + 3x3 G32 paths, fuse width C // 16, no minimum.
_PYTORCHINSIGHT_ARGS = dict(sk_paths=((3, 1, 1), (3, 1, 32)), sk_rd_ratio=1 / 16, sk_min_attn_channels=0)


@register_model
def sknet26(pretrained: bool = False, **kwargs) -> SKNet:
    """SKNet-26 (paper, {2, 2, 2, 2} units): the SKNet-50 design, shallower.

    Differs from timm's ``skresnext50_32x4d`` family only by the release's ceil-mode, pad-0 stem max pool.
    """
    model_args = dict(_RELEASE_ARGS, layers=(2, 2, 2, 2))
    return _create_sknet('sknet26', pretrained, **dict(model_args, **kwargs))


@register_model
def sknet50(pretrained: bool = False, **kwargs) -> SKNet:
    """SKNet-50 exactly as the authors' Caffe release (``sknet50.prototxt``); loads its converted weights.

    Same graph and parameter names as timm's ``skresnext50_32x4d`` except the stem max pool, which is
    Caffe's 3x3 / stride 2 / pad 0 / ceil mode (timm's pad-1 pool shifts every window).
    """
    model_args = dict(_RELEASE_ARGS, layers=(3, 4, 6, 3))
    return _create_sknet('sknet50', pretrained, **dict(model_args, **kwargs))


@register_model
def sknet101(pretrained: bool = False, **kwargs) -> SKNet:
    """SKNet-101 exactly as the authors' Caffe release, including its fuse widths d = 32 / 16 / 32 / 64.

    The release's stage conv3_x attention is 16 wide where the paper's rule gives 32; timm has no SKNet-101.
    """
    model_args = dict(_RELEASE_ARGS, layers=(3, 4, 23, 3), sk_attn_channels=(32, 16, 32, 64))
    return _create_sknet('sknet101', pretrained, **dict(model_args, **kwargs))


@register_model
def sknet29_cifar(pretrained: bool = False, **kwargs) -> SKNet:
    """SKNet-29 for CIFAR (paper, Table 7): ResNeXt-29 16x32d trunk (one 3x3 stem conv, three stages of
    three bottlenecks, widths 512 / 1024 / 2048), SK[M=2, G=32, r=16, L=32]; 32x32 input. No timm equivalent.

    Not a dense-prediction backbone: its stem keeps full resolution and its three stages reach stride 4, so it has
    none of the stride 2-32 pyramid that segmentation_models_pytorch and transformers' TimmBackbone build on.
    """
    model_args = dict(
        layers=(3, 3, 3), channels=(64, 128, 256), cardinality=16, base_width=32, sk_groups=32,
        stem_type='cifar')
    return _create_sknet('sknet29_cifar', pretrained, **dict(model_args, **kwargs))


@register_model
def sk_resnext50_32x4d(pretrained: bool = False, **kwargs) -> SKNet:
    """SK-ResNeXt-50 32x4d with timm's standard stem (pad-1 max pool).

    The same network and parameter names as timm's ``skresnext50_32x4d``: its ``ra_in1k`` weights load here.
    """
    model_args = dict(layers=(3, 4, 6, 3), cardinality=32, base_width=4)
    return _create_sknet('sk_resnext50_32x4d', pretrained, **dict(model_args, **kwargs))


@register_model
def sk_resnext101_32x4d(pretrained: bool = False, **kwargs) -> SKNet:
    """SK-ResNeXt-101 32x4d with timm's standard stem; fuse widths by the paper's d = max(C / 16, 32)."""
    model_args = dict(layers=(3, 4, 23, 3), cardinality=32, base_width=4)
    return _create_sknet('sk_resnext101_32x4d', pretrained, **dict(model_args, **kwargs))


@register_model
def sk_resnext101_32x8d(pretrained: bool = False, **kwargs) -> SKNet:
    """SK-ResNeXt-101 32x8d with timm's standard stem; fuse widths by the paper's d = max(C / 16, 32)."""
    model_args = dict(layers=(3, 4, 23, 3), cardinality=32, base_width=8)
    return _create_sknet('sk_resnext101_32x8d', pretrained, **dict(model_args, **kwargs))


@register_model
def sk_resnet18(pretrained: bool = False, **kwargs) -> SKNet:
    """SK-ResNet-18, timm's ``skresnet18``: basic blocks whose first 3x3 is an SK conv (3x3 and 3x3 dilation 2)
    fed half the input channels per path, fuse width max(C / 8, 16). timm's ``ra_in1k`` weights load here.

    The paper's SK over the full input (no checkpoint exists): ``split_input=False, sk_rd_ratio=1/16,
    sk_min_attn_channels=32``.
    """
    model_args = dict(block='basic', layers=(2, 2, 2, 2), **_TIMM_SKRESNET_ARGS)
    return _create_sknet('sk_resnet18', pretrained, **dict(model_args, **kwargs))


@register_model
def sk_resnet34(pretrained: bool = False, **kwargs) -> SKNet:
    """SK-ResNet-34, timm's ``skresnet34`` (split input, fuse width max(C / 8, 16)); its ``ra_in1k`` weights load."""
    model_args = dict(block='basic', layers=(3, 4, 6, 3), **_TIMM_SKRESNET_ARGS)
    return _create_sknet('sk_resnet34', pretrained, **dict(model_args, **kwargs))


@register_model
def sk_resnet50(pretrained: bool = False, **kwargs) -> SKNet:
    """SK-ResNet-50 of the SKNet authors' PyTorch release (PyTorchInsight ``resnet_sk.py``, 26.15M parameters).

    Each bottleneck's 3x3 becomes two 3x3 paths on the full width, one dense and one with 32 groups; fuse width
    C // 16 with no minimum.
    """
    model_args = dict(layers=(3, 4, 6, 3), **_PYTORCHINSIGHT_ARGS)
    return _create_sknet('sk_resnet50', pretrained, **dict(model_args, **kwargs))


@register_model
def sk_resnet101(pretrained: bool = False, **kwargs) -> SKNet:
    """SK-ResNet-101 of the SKNet authors' PyTorch release (PyTorchInsight ``resnet_sk.py``, 45.68M parameters)."""
    model_args = dict(layers=(3, 4, 23, 3), **_PYTORCHINSIGHT_ARGS)
    return _create_sknet('sk_resnet101', pretrained, **dict(model_args, **kwargs))

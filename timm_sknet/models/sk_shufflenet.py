"""SK-ShuffleNetV2: ShuffleNetV2 whose 3x3 depthwise convolutions are Selective Kernel convolutions.

Papers: "Selective Kernel Networks", Li, Wang, Hu, Yang, CVPR 2019 (https://arxiv.org/abs/1903.06586), Sec. 3 and
Table 4 (SK in ShuffleNetV2 0.5x / 1.0x); "ShuffleNet V2: Practical Guidelines for Efficient CNN Architecture
Design", Ma, Zhang, Zheng, Sun, ECCV 2018 (https://arxiv.org/abs/1807.11164), Table 5 (the trunk).

Neither the SKNet release nor timm has these models. The trunk follows the ShuffleNetV2 paper and torchvision's
``shufflenet_v2_x0_5`` / ``x1_0`` unit for unit, so with one plain path (``kernel_size=(3,), sk_attention=False``)
the network is ShuffleNetV2 itself: the same parameters, and torchvision's state dict loads into it through
``checkpoint_filter_fn`` and gives the same logits.
"""
import re
from functools import partial
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn
from timm.layers import ClassifierHead, LayerType, get_act_layer, get_device_dtype, get_norm_layer
from timm.models import checkpoint_seq, generate_default_cfgs, register_model

from .timm_internals import feature_take_indices
# modules, not their names: the autoload hook may import this file while one of them is mid-import
from ..weights import pretrained as pretrained_weights
from . import deploy, sk_conv

__all__ = ['SKShuffleNetV2']

_JOIN_PREVIOUS_GROUP = (99999,)  # timm's MATCH_PREV_GROUP (private): the final conv joins the last unit's group


class SKShuffleShortcut(nn.Module):
    """The left branch of ShuffleNetV2's downsampling unit: strided 3x3 depthwise (here SK) conv, then 1x1 conv."""

    def __init__(self, in_chs: int, out_chs: int, stride: int, dilation: int, sk_kwargs: Dict[str, Any],
                 act_layer: LayerType, norm_layer: LayerType, device=None, dtype=None):
        dd = {'device': device, 'dtype': dtype}
        super().__init__()
        self.conv_dw = sk_conv.SKConv(
            in_chs, in_chs, stride=stride, dilation=dilation, default_groups=in_chs, act_layer=act_layer,
            norm_layer=norm_layer, **sk_kwargs, **dd)
        self.conv_pw = deploy.FusibleConvNormAct(
            in_chs, out_chs, kernel_size=1, act_layer=act_layer, norm_layer=norm_layer, **dd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_pw(self.conv_dw(x))


class SKShuffleUnit(nn.Module):
    """ShuffleNetV2 unit (its paper's Fig. 3c/d) with an SK depthwise conv in each branch that has one.

    ``channel_split`` (the basic unit, Fig. 3c): one half of the channels passes, the other runs 1x1 -> SK 3x3
    depthwise -> 1x1. Otherwise (the downsampling unit that starts each stage, Fig. 3d) both branches see the whole
    input, the left one (``shortcut``) SK 3x3 depthwise -> 1x1. Then concat and channel shuffle. Under an
    ``output_stride`` a downsampling unit keeps its two branches with stride 1, as timm's ResNet keeps a stage's
    projection shortcut; ``dilation`` dilates its depthwise convs (each SK path's own dilation times it).
    """

    def __init__(self, in_chs: int, out_chs: int, stride: int, dilation: int, channel_split: bool,
                 sk_kwargs: Dict[str, Any], act_layer: LayerType, norm_layer: LayerType, device=None, dtype=None):
        dd = {'device': device, 'dtype': dtype}
        super().__init__()
        branch_chs = out_chs // 2
        if channel_split and (stride != 1 or in_chs != out_chs):
            raise ValueError(
                f'a channel-split unit keeps its size and width: stride {stride}, in_chs {in_chs}, out_chs {out_chs}')
        if out_chs % 2:
            raise ValueError(f'out_chs must be even (two concatenated branches), got {out_chs}')
        layers = dict(act_layer=act_layer, norm_layer=norm_layer, **dd)
        self.shortcut = None if channel_split else SKShuffleShortcut(
            in_chs, branch_chs, stride, dilation, sk_kwargs, **layers)
        self.conv_pw = deploy.FusibleConvNormAct(branch_chs if channel_split else in_chs, branch_chs, 1, **layers)
        self.conv_dw = sk_conv.SKConv(
            branch_chs, branch_chs, stride=stride, dilation=dilation, default_groups=branch_chs, **sk_kwargs,
            **layers)
        self.conv_pwl = deploy.FusibleConvNormAct(branch_chs, branch_chs, 1, **layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.shortcut is None:
            shortcut, x = x.chunk(2, dim=1)
        else:
            shortcut = self.shortcut(x)
        x = self.conv_pwl(self.conv_dw(self.conv_pw(x)))
        # concat then shuffle with 2 groups puts channel i of each branch at 2i and 2i + 1: one interleaving copy
        return torch.stack((shortcut, x), dim=2).flatten(1, 2)


class SKShuffleNetV2(nn.Module):
    """ShuffleNetV2 (3x3 conv stem, max pool, 3 stages of shuffle units, 1x1 conv, pool, fc) with SK depthwise convs.

    Every 3x3 depthwise conv (one per unit, two in each stage's first, downsampling unit) is an ``SKConv`` whose
    paths are depthwise (groups = channels): by default 3x3 and 3x3 dilation 2, fuse width d = max(C / r, L).

    The SK paths are depthwise conv -> BN with **no ReLU** (``sk_path_act=False``), exactly ShuffleNetV2's
    depthwise conv + BN, where SKNet's ResNeXt units use conv -> BN -> ReLU paths. Two reasons. ShuffleNet keeps the
    depthwise output linear on purpose (no ReLU after the depthwise conv, as Xception found best; the 1x1 conv that
    follows has its own), and ShuffleNetV2 keeps that. And with linear paths the one-path, no-attention form is
    ShuffleNetV2 itself, so an SK model differs from its baseline by the second path and the selection alone, the
    comparison the paper's Table 4 makes. The unit stays nonlinear in the kernel choice: the selection is a softmax of
    fc -> BN -> ReLU -> fc over the pooled sum of the paths. ``sk_path_act=True`` gives SKNet's conv -> BN -> ReLU
    paths.

    ``output_stride`` 16 or 8 (dense prediction, e.g. DeepLabV3+) as timm's ResNet and EfficientNet do it: a stage
    that would take the network past it starts with a stride-1 unit, and the units after that one are dilated by
    the stride it gave up (their SK paths' dilations times 2, then 4). The state dict is the same for every
    output stride; ``feature_info`` reports each tap's reduction as the output stride caps it (16: 2, 4, 8, 16, 16).

    Feature taps (``features_only``, ``forward_intermediates``), timm's CNN pyramid at reductions 2, 4, 8, 16, 32:
    the stem conv (before the max pool, as timm's ResNet), the stem's max pool and each stage's output. Dense
    prediction decoders (segmentation_models_pytorch, transformers' ``TimmBackbone``) expect the stride-4 map even
    where only a max pool computes it. The final 1x1 conv is no tap: it is part of the final features and goes
    with the head when pruning, as the head conv of timm's EfficientNet / GhostNet.

    Args:
        stage_repeats: units per stage (ShuffleNetV2: 4, 8, 4).
        stage_channels: output width of each stage.
        stem_chs: width of the 3x3 stride-2 stem conv.
        final_chs: width of the final 1x1 conv (the pooled features).
        sk_paths: ``(kernel, dilation, groups)`` of each SK path, M = len(sk_paths); groups None: depthwise (the
            unit's channels). Default ((3, 1, None), (3, 2, None)).
        kernel_size: kernel size of each SK path instead of sk_paths; (3,) is ShuffleNetV2's single 3x3.
        sk_attention: softmax selection (True) or the paper's plain-sum baseline (False).
        sk_rd_ratio, sk_min_attn_channels: fuse width d = max(C * sk_rd_ratio, sk_min_attn_channels) (1/r and L).
        dilate_large_kernels: realise K > 3 as a 3x3 with dilation (K - 1) / 2 (SKNet's release) or as true K x K.
        sk_path_act: an activation on every SK path (SKNet's units) instead of ShuffleNetV2's linear depthwise.
        num_classes, in_chans, output_stride (32, 16 or 8), global_pool, drop_rate (dropout before the classifier):
            timm's.
        act_layer, norm_layer, bn_momentum, bn_eps: activation and norm everywhere (as timm's train.py passes them).
    """

    def __init__(
            self,
            stage_repeats: Sequence[int] = (4, 8, 4),
            stage_channels: Sequence[int] = (116, 232, 464),
            stem_chs: int = 24,
            final_chs: int = 1024,
            sk_paths: Optional[Sequence[Sequence[Optional[int]]]] = None,
            kernel_size: Optional[Union[int, Sequence[int]]] = None,
            sk_attention: bool = True,
            sk_rd_ratio: float = 1. / 16,
            sk_min_attn_channels: int = 32,
            dilate_large_kernels: Optional[bool] = None,
            sk_path_act: bool = False,
            num_classes: int = 1000,
            in_chans: int = 3,
            output_stride: int = 32,
            global_pool: str = 'avg',
            drop_rate: float = 0.,
            act_layer: LayerType = nn.ReLU,
            norm_layer: LayerType = nn.BatchNorm2d,
            bn_momentum: Optional[float] = None,
            bn_eps: Optional[float] = None,
            device=None,
            dtype=None,
    ):
        dd = {'device': device, 'dtype': dtype}
        super().__init__()
        if len(stage_repeats) != len(stage_channels):
            raise ValueError('stage_repeats and stage_channels need one entry per stage')
        sk_conv.check_output_stride(output_stride)
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.drop_rate = drop_rate
        self.grad_checkpointing = False
        act_layer = get_act_layer(act_layer)
        norm_layer = get_norm_layer(norm_layer)
        norm_overrides = {k: v for k, v in (('momentum', bn_momentum), ('eps', bn_eps)) if v is not None}
        if norm_overrides:
            norm_layer = partial(norm_layer, **norm_overrides)
        layers = dict(act_layer=act_layer, norm_layer=norm_layer, **dd)
        for name, flag in (('sk_attention', sk_attention), ('sk_path_act', sk_path_act)):
            sk_conv.check_flag(name, flag)
        sk_kwargs = dict(
            sk_paths=sk_conv.resolve_sk_paths(sk_paths, kernel_size, dilate_large_kernels), attention=sk_attention,
            rd_ratio=sk_rd_ratio, min_attn_channels=sk_min_attn_channels, path_act=sk_path_act)

        self.stem = deploy.FusibleConvNormAct(in_chans, stem_chs, kernel_size=3, stride=2, **layers)
        self.stem_pool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.feature_info = [
            dict(num_chs=stem_chs, reduction=2, module='stem'), dict(num_chs=stem_chs, reduction=4, module='stem_pool')]
        stages = []
        prev_chs, reduction, dilation = stem_chs, 4, 1
        for i, (repeats, chs) in enumerate(zip(stage_repeats, stage_channels)):
            # timm's rule: the first unit runs at the dilation so far, the rest at what the dropped stride adds
            stride, first_dilation = 2, dilation
            if reduction * stride > output_stride:
                stride, dilation = 1, dilation * stride
            reduction *= stride
            stages.append(nn.Sequential(*[
                SKShuffleUnit(
                    prev_chs if u == 0 else chs, chs, stride if u == 0 else 1, first_dilation if u == 0 else dilation,
                    channel_split=u > 0, sk_kwargs=sk_kwargs, **layers)
                for u in range(repeats)]))
            self.feature_info.append(dict(num_chs=chs, reduction=reduction, module=f'stages.{i}'))
            prev_chs = chs
        self.stages = nn.Sequential(*stages)
        self.final_conv = deploy.FusibleConvNormAct(prev_chs, final_chs, kernel_size=1, **layers)
        self.num_features = self.head_hidden_size = final_chs
        self.head = ClassifierHead(final_chs, num_classes, global_pool, drop_rate, **dd)
        self._init_weights()

    def _init_weights(self) -> None:
        # timm's ResNet init (the SK families' trunk); BatchNorms and the classifier keep torch's defaults
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode='fan_out', nonlinearity='relu')

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict[str, Any]:
        units = r'^stages\.(\d+)' if coarse else r'^stages\.(\d+)\.(\d+)'
        return dict(stem=r'^stem', blocks=[(units, None), (r'^final_conv', _JOIN_PREVIOUS_GROUP)])

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head.fc

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None, device=None, dtype=None) -> None:
        dd = get_device_dtype(self, device=device, dtype=dtype)
        self.num_classes = num_classes
        if device is not None or dtype is not None:
            pool_type = global_pool if global_pool is not None else self.head.global_pool.pool_type
            self.head = ClassifierHead(self.num_features, num_classes, pool_type, self.drop_rate, **dd)
            self.head.train(self.training)
        else:
            self.head.reset(num_classes, global_pool, in_features=self.num_features, **dd)
        self.head_hidden_size = self.head.num_features

    def forward_intermediates(
            self,
            x: torch.Tensor,
            indices: Optional[Union[int, List[int]]] = None,
            norm: bool = False,
            stop_early: bool = False,
            output_fmt: str = 'NCHW',
            intermediates_only: bool = False,
    ) -> Union[List[torch.Tensor], Tuple[torch.Tensor, List[torch.Tensor]]]:
        """The stem conv's output, the max pool's, then each stage's (``len(stages) + 2`` taps); ``norm`` has
        nothing to apply."""
        assert output_fmt == 'NCHW', 'Output shape must be NCHW.'
        intermediates = []
        # taps: 0 the stem conv, 1 its max pool, 2 onwards the stages
        take_indices, max_index = feature_take_indices(len(self.stages) + 2, indices)
        x = self.stem(x)
        if 0 in take_indices:
            intermediates.append(x)
        x = self.stem_pool(x)
        if 1 in take_indices:
            intermediates.append(x)
        # the final conv follows the last tap and is part of the final features: it runs when the last stage does
        run_all = torch.jit.is_scripting() or not stop_early or max_index == len(self.stages) + 1
        if torch.jit.is_scripting() or run_all:  # TorchScript cannot slice by a variable, and never stops early
            stages = self.stages
        else:
            stages = self.stages[:max(max_index - 1, 0)]
        for feat_idx, stage in enumerate(stages, start=2):
            if self.grad_checkpointing and not torch.jit.is_scripting():
                x = checkpoint_seq(stage, x)
            else:
                x = stage(x)
            if feat_idx in take_indices:
                intermediates.append(x)
        if intermediates_only:
            return intermediates
        if run_all:
            x = self.final_conv(x)
        return x, intermediates

    def prune_intermediate_layers(
            self,
            indices: Union[int, List[int]] = 1,
            prune_norm: bool = False,
            prune_head: bool = True,
    ) -> List[int]:
        """Drop the stages after the last requested tap; the final conv goes with them, or with the head."""
        num_taps = len(self.stages) + 2  # the stem conv, its max pool, then every stage
        take_indices, max_index = feature_take_indices(num_taps, indices)
        if not (prune_norm or prune_head or max_index < num_taps - 1):
            return take_indices
        self.stages = self.stages[:max(max_index - 1, 0)]
        if max_index == 0:
            self.stem_pool = nn.Identity()  # the stem tap is taken before it
        self.final_conv = nn.Identity()
        # the features now end at the last kept tap; the head was sized for the final conv's, so it goes too
        self.num_features = self.head_hidden_size = self.feature_info[max_index]['num_chs']
        self.reset_classifier(0, '')
        return take_indices

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem_pool(self.stem(x))
        if self.grad_checkpointing and not torch.jit.is_scripting():
            x = checkpoint_seq(self.stages, x, flatten=True)
        else:
            x = self.stages(x)
        return self.final_conv(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return self.head(x, pre_logits=pre_logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


# torchvision's ShuffleNetV2 keys -> ours, in order; its depthwise convs become the single path of each SKConv.
_TORCHVISION_KEYS = (
    (r'^conv1\.0\.', 'stem.conv.'), (r'^conv1\.1\.', 'stem.bn.'),
    (r'^stage(\d)\.', lambda m: f'stages.{int(m.group(1)) - 2}.'),
    (r'\.branch1\.0\.', '.shortcut.conv_dw.paths.0.conv.'), (r'\.branch1\.1\.', '.shortcut.conv_dw.paths.0.bn.'),
    (r'\.branch1\.2\.', '.shortcut.conv_pw.conv.'), (r'\.branch1\.3\.', '.shortcut.conv_pw.bn.'),
    (r'\.branch2\.0\.', '.conv_pw.conv.'), (r'\.branch2\.1\.', '.conv_pw.bn.'),
    (r'\.branch2\.3\.', '.conv_dw.paths.0.conv.'), (r'\.branch2\.4\.', '.conv_dw.paths.0.bn.'),
    (r'\.branch2\.5\.', '.conv_pwl.conv.'), (r'\.branch2\.6\.', '.conv_pwl.bn.'),
    (r'^conv5\.0\.', 'final_conv.conv.'), (r'^conv5\.1\.', 'final_conv.bn.'),
    (r'^fc\.', 'head.fc.'),
)


def checkpoint_filter_fn(state_dict: Dict[str, torch.Tensor], model: nn.Module) -> Dict[str, torch.Tensor]:
    """torchvision ShuffleNetV2 weights (``conv1.0.weight``, ...) renamed for the one-path form; ours as they are."""
    if 'conv1.0.weight' not in state_dict:
        return state_dict
    renamed = {}
    for key, value in state_dict.items():
        for pattern, replacement in _TORCHVISION_KEYS:
            key = re.sub(pattern, replacement, key)
        renamed[key] = value
    return renamed


def _create_sk_shufflenet(variant: str, pretrained: bool = False, **kwargs) -> SKShuffleNetV2:
    num_taps = len(kwargs.get('stage_repeats', (4, 8, 4))) + 2  # the stem conv, its max pool, then every stage
    return pretrained_weights.build_model_with_store(
        SKShuffleNetV2, variant, pretrained, pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(flatten_sequential=True, out_indices=tuple(range(num_taps))), **kwargs)


def _cfg(url: str = '', **kwargs) -> Dict[str, Any]:
    # torchvision's ShuffleNetV2 eval preprocessing: shorter side 256, centre crop 224, bilinear
    return {
        'url': url,
        'num_classes': 1000, 'input_size': (3, 224, 224), 'pool_size': (7, 7),
        'crop_pct': 0.875, 'interpolation': 'bilinear',
        'mean': (0.485, 0.456, 0.406), 'std': (0.229, 0.224, 0.225),
        'first_conv': 'stem.conv', 'classifier': 'head.fc',
        **kwargs,
    }


default_cfgs = generate_default_cfgs({
    'sk_shufflenetv2_050.untrained': _cfg(),
    'sk_shufflenetv2_100.untrained': _cfg(),
})


@register_model
def sk_shufflenetv2_050(pretrained: bool = False, **kwargs) -> SKShuffleNetV2:
    """SK-ShuffleNetV2 0.5x (SKNet paper, Table 4): widths 24-48-96-192-1024, SK[M=2, depthwise, r=16, L=32].

    ``kernel_size=(3,), sk_attention=False`` is torchvision's ``shufflenet_v2_x0_5`` (1,366,792 parameters).
    """
    model_args = dict(stage_repeats=(4, 8, 4), stage_channels=(48, 96, 192))
    return _create_sk_shufflenet('sk_shufflenetv2_050', pretrained, **dict(model_args, **kwargs))


@register_model
def sk_shufflenetv2_100(pretrained: bool = False, **kwargs) -> SKShuffleNetV2:
    """SK-ShuffleNetV2 1.0x (SKNet paper, Table 4): widths 24-116-232-464-1024, SK[M=2, depthwise, r=16, L=32].

    ``kernel_size=(3,), sk_attention=False`` is torchvision's ``shufflenet_v2_x1_0`` (2,278,604 parameters).
    """
    model_args = dict(stage_repeats=(4, 8, 4), stage_channels=(116, 232, 464))
    return _create_sk_shufflenet('sk_shufflenetv2_100', pretrained, **dict(model_args, **kwargs))

"""Every ImageNet-scale model as a dense-prediction backbone, where people plug timm backbones in:
segmentation_models_pytorch's ``tu-<name>`` encoders (U-Net, FPN, DeepLabV3+ at output stride 16 and 8; forward,
backward, and ``encoder_weights`` from the local store) and transformers' ``TimmBackbone``; ``output_stride`` by
dilation; SK-ShuffleNetV2's five-tap pyramid in every feature mode and output stride, in the plain and the deploy
form.

The models come from timm's registry (``timm_sknet.model_names()``), so a new model is covered when it registers.
Everything but the store test builds with random weights, asking no library for any; the store test loads in a
subprocess with the Hub offline (``HF_HUB_OFFLINE``) at a closed loopback port.
"""
import json
import subprocess
import sys

import pytest
import segmentation_models_pytorch as smp
import timm
import torch
from safetensors.torch import save_file
from timm.models import get_pretrained_cfg, model_entrypoint
from timm.utils import reparameterize_model
from torch import nn
from transformers import TimmBackbone, TimmBackboneConfig

import timm_sknet
from timm_sknet import SKConv

from hub_helpers import client_env, free_port
from support import randomize_norms

SIZE = 128  # every map down to stride 32 is 4x4: BatchNorm in training sees more than one value per channel
# timm's reductions of the five taps at each output stride: dilation keeps the deepest maps at the output stride
REDUCTIONS = {32: [2, 4, 8, 16, 32], 16: [2, 4, 8, 16, 16], 8: [2, 4, 8, 8, 8]}
# decoder, its keywords and the encoder's output stride. The input is 4x the output stride: the deepest maps are
# 4x4, as SIZE leaves them at stride 32, so the dilated stages (whose maps do not shrink) cost no more than there.
DECODERS = {
    'unet': (smp.Unet, {}, 32),
    'fpn': (smp.FPN, {}, 32),
    'deeplabv3plus-os16': (smp.DeepLabV3Plus, dict(encoder_output_stride=16), 16),
    'deeplabv3plus-os8': (smp.DeepLabV3Plus, dict(encoder_output_stride=8), 8),
}
NOT_A_BACKBONE = 'not a dense-prediction backbone'


def _imagenet_scale(name: str) -> bool:
    """Configured for ImageNet-size input; the CIFAR models take 32x32."""
    return min(get_pretrained_cfg(name).input_size[1:]) >= 224


MODELS = timm_sknet.model_names()
BACKBONES = [name for name in MODELS if _imagenet_scale(name)]
WITH_WEIGHTS = [name for name in BACKBONES if get_pretrained_cfg(name).has_weights]

# SK-ShuffleNetV2's taps: the stem conv and its max pool (24 wide), then the three stages (paper widths)
SHUFFLENET_TAPS = {'sk_shufflenetv2_050': [24, 24, 48, 96, 192], 'sk_shufflenetv2_100': [24, 24, 116, 232, 464]}
FEATURE_MODES = [None, 'hook', 'fx', 'getter']  # feature_cls: None is timm's default, FeatureListNet


def test_the_lists_cover_the_package():
    """Guards the discovery: every family is here, and the small-input models say why they are not."""
    assert {'sknet50', 'sknet101', 'sk_resnext50_32x4d', 'sk_resnet18', *SHUFFLENET_TAPS} <= set(BACKBONES)
    assert sorted(SHUFFLENET_TAPS) == timm.list_models(module='sk_shufflenet')
    assert {'sknet50', 'sknet101', 'sk_resnext50_32x4d'} <= set(WITH_WEIGHTS)
    small_input = sorted(set(MODELS) - set(BACKBONES))
    assert 'sknet29_cifar' in small_input
    for name in small_input:
        assert NOT_A_BACKBONE in ' '.join(model_entrypoint(name).__doc__.lower().split()), name


@pytest.mark.parametrize('decoder', list(DECODERS))
@pytest.mark.parametrize('name', BACKBONES)
def test_smp_encoder_trains(name, decoder):
    """``tu-<name>`` in U-Net / FPN / DeepLabV3+ (which builds the encoder with ``output_stride``): the encoder
    reports the model's five taps at timm's reductions, and one training step's forward and backward reach every
    encoder parameter. DeepLabV3+ joins the upsampled deepest map to the stride-4 map, so an encoder whose real
    stride differed from the one it reports would fail the forward."""
    decoder_cls, decoder_kwargs, output_stride = DECODERS[decoder]
    size = 4 * output_stride
    torch.manual_seed(0)
    model = decoder_cls(encoder_name=f'tu-{name}', encoder_weights=None, classes=3, **decoder_kwargs).train()
    encoder = model.encoder
    assert any(isinstance(m, SKConv) for m in encoder.modules())
    assert encoder.model.feature_info.reduction() == REDUCTIONS[output_stride]
    assert encoder.out_channels == [3, *encoder.model.feature_info.channels()]
    # timm zero-inits each residual branch's last norm, which stops the gradient to the branch's other layers
    randomize_norms(encoder)
    x = torch.randn(2, 3, size, size)
    out = model(x)
    assert out.shape == (2, 3, size, size)
    out.square().mean().backward()
    no_grad = [n for n, p in encoder.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not no_grad, f'{len(no_grad)} encoder parameters got no gradient, first {no_grad[0]}'


@pytest.mark.parametrize('name', BACKBONES)
def test_transformers_timm_backbone(name):
    """``TimmBackbone(out_indices=(1, 2, 3, 4))``: strides 4, 8, 16, 32, each map as wide as it reports."""
    backbone = TimmBackbone(TimmBackboneConfig(backbone=name, out_indices=(1, 2, 3, 4))).eval()
    with torch.no_grad():
        maps = backbone(torch.randn(1, 3, SIZE, SIZE)).feature_maps
    assert [SIZE // m.shape[-1] for m in maps] == [SIZE // m.shape[-2] for m in maps] == [4, 8, 16, 32]
    assert [m.shape[1] for m in maps] == backbone.channels
    assert backbone.channels == [info['num_chs'] for info in timm.create_model(name, device='meta').feature_info[1:]]


# argv: STORE MODEL...; builds U-Net and FPN on each model with encoder_weights=True and prints, as JSON, per model
# and decoder the encoder's tensors that differ from the installed file and the file's tensors the encoder lacks.
# The log goes to stderr.
STORE_SCRIPT = """
import json, logging, sys
import segmentation_models_pytorch as smp, torch
from safetensors.torch import load_file
from timm_sknet.weights.store import installed_path
from timm.models import get_pretrained_cfg

logging.basicConfig(level=logging.INFO, format='%(name)s: %(message)s')
report = {}
for name in sys.argv[1:]:
    weights = load_file(installed_path(f'{name}.{get_pretrained_cfg(name).tag}'))
    for decoder in (smp.Unet, smp.FPN):
        state = decoder(encoder_name=f'tu-{name}', encoder_weights=True).encoder.model.state_dict()
        report[f'{name} {decoder.__name__}'] = dict(
            compared=len(state),
            differ=[k for k, v in state.items() if k not in weights or not torch.equal(v, weights[k])],
            not_in_encoder=sorted(weights.keys() - state.keys()))
print(json.dumps(report))
"""


@pytest.fixture(scope='module')
def store_loads(tmp_path_factory):
    """Random weights installed in a temporary store for every model with weights, then loaded as smp encoders in
    one subprocess (one start-up for all) with the Hub offline and unreachable: its report and log."""
    tmp_path = tmp_path_factory.mktemp('store')
    store = tmp_path / 'store'
    for name in WITH_WEIGHTS:
        torch.manual_seed(0)
        model = timm.create_model(name)
        randomize_norms(model)  # so no BatchNorm tensor equals its initial value by default
        installed = store / f'{name}.{get_pretrained_cfg(name).tag}' / 'model.safetensors'
        installed.parent.mkdir(parents=True)
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(installed))
    env = dict(client_env(f'http://127.0.0.1:{free_port()}', tmp_path / 'hf', store), HF_HUB_OFFLINE='1')
    run = subprocess.run([sys.executable, '-c', STORE_SCRIPT, *WITH_WEIGHTS], env=env, capture_output=True,
                         text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-4000:]
    return json.loads(run.stdout.splitlines()[-1]), run.stderr, store


@pytest.mark.parametrize('name', WITH_WEIGHTS)
def test_smp_encoder_weights_from_the_local_store(name, store_loads):
    """``encoder_weights=True`` is timm's ``pretrained=True``, which reads the store's copy: the random weights
    installed there are exactly the encoder's, in U-Net and in FPN."""
    report, log, store = store_loads
    cfg = get_pretrained_cfg(name)
    classifier = {f'{cfg.classifier}.weight', f'{cfg.classifier}.bias'}
    for decoder in ('Unet', 'FPN'):
        loaded = report[f'{name} {decoder}']
        assert loaded['compared'] > 0 and loaded['differ'] == [], decoder
        assert set(loaded['not_in_encoder']) == classifier, decoder  # the encoder is the whole trunk
    installed = store / f'{name}.{cfg.tag}' / 'model.safetensors'
    assert log.count(f'loading the installed copy {installed}') == 2


def _taps(name: str, **kwargs) -> nn.Module:
    """The model with weights seeded the same way, so every form and wrapper of it computes the same maps."""
    torch.manual_seed(0)
    model = timm.create_model(name, **kwargs).eval()
    randomize_norms(model)
    return model


def _assert_taps(name: str, output_stride: int, feature_info, maps, reference, folded: bool) -> None:
    reductions = REDUCTIONS[output_stride]
    assert feature_info.reduction() == reductions and feature_info.channels() == SHUFFLENET_TAPS[name]
    assert [(m.shape[1], SIZE // m.shape[-1]) for m in maps] == list(zip(SHUFFLENET_TAPS[name], reductions))
    assert len(maps) == len(reference)
    for got, expected in zip(maps, reference):
        if folded:  # BatchNorms folded into the convs round differently: relative to the largest value
            assert (got - expected).abs().max() <= 1e-5 * expected.abs().max()
        else:
            assert torch.equal(got, expected)


@pytest.mark.parametrize('output_stride', sorted(REDUCTIONS, reverse=True))
@pytest.mark.parametrize('feature_cls', FEATURE_MODES, ids=lambda c: c or 'default')
@pytest.mark.parametrize('name', sorted(SHUFFLENET_TAPS))
def test_shufflenet_five_taps_in_every_feature_mode_and_form(name, feature_cls, output_stride):
    """The stem conv, the max pool and the three stages, at timm's reductions for the output stride, as
    ``forward_intermediates`` gives them, through ``features_only`` in the plain form and folded as it is wrapped:
    the fold works in place, so the taps' hooks and the FX graph's module calls reach the folded modules."""
    x = torch.randn(1, 3, SIZE, SIZE)
    plain = _taps(name, output_stride=output_stride)
    with torch.no_grad():
        reference = plain.forward_intermediates(x, intermediates_only=True)
        kwargs = {} if feature_cls is None else {'feature_cls': feature_cls}
        features = _taps(name, features_only=True, output_stride=output_stride, **kwargs)
        _assert_taps(name, output_stride, features.feature_info, features(x), reference, folded=False)
        deploy_features = reparameterize_model(features)
        assert not any(isinstance(m, nn.BatchNorm2d) for m in deploy_features.modules())
        _assert_taps(name, output_stride, deploy_features.feature_info, deploy_features(x), reference, folded=True)


@pytest.mark.parametrize('output_stride', sorted(REDUCTIONS, reverse=True))
@pytest.mark.parametrize('form', ['plain', 'deploy'])
def test_shufflenet_intermediates_and_pruning_per_tap(form, output_stride):
    """Each tap alone: ``stop_early`` stops at it, and pruning to it leaves a model whose features it is."""
    name = 'sk_shufflenetv2_050'
    x = torch.randn(1, 3, SIZE, SIZE)
    model = _taps(name, output_stride=output_stride)
    if form == 'deploy':
        model = reparameterize_model(model)
    with torch.no_grad():
        final, reference = model.forward_intermediates(x)
        # the final 1x1 conv follows the last tap
        assert final.shape == (1, 1024, SIZE // output_stride, SIZE // output_stride)
        for index in range(len(SHUFFLENET_TAPS[name])):
            early = model.forward_intermediates(x, indices=[index], stop_early=True, intermediates_only=True)
            assert len(early) == 1 and torch.equal(early[0], reference[index])
            pruned = _taps(name, output_stride=output_stride)
            if form == 'deploy':
                pruned = reparameterize_model(pruned)
            assert pruned.prune_intermediate_layers([index]) == [index]
            assert len(pruned.stages) == max(index - 1, 0) and isinstance(pruned.final_conv, nn.Identity)
            assert pruned.num_features == SHUFFLENET_TAPS[name][index]
            assert torch.equal(pruned.forward_features(x), reference[index])


# one model of each trunk: SK-ShuffleNetV2's units, the ResNet family's bottleneck and basic block (timm's stages)
DILATED_TRUNKS = ['sk_shufflenetv2_050', 'sknet26', 'sk_resnet18']


@pytest.mark.parametrize('output_stride', [16, 8])
@pytest.mark.parametrize('name', DILATED_TRUNKS)
def test_output_stride_is_dilation_a_trous(name, output_stride):
    """timm's output_stride: a stage that would pass it loses its stride, and every conv after that is dilated by
    the stride given up. Then the dilated network computes the stride-32 network's maps at every position of their
    grid, which sampling its denser maps at the lost stride shows exactly, with the same weights (the state dict
    does not change). This holds without the SK attention only: the attention pools each map whole, and a denser
    map pools positions the stride-32 one never had (with it, the check that the model folds, runs and reports its
    reductions is the DeepLabV3+ test above)."""
    reference = _taps(name, sk_attention=False)
    dilated = timm.create_model(name, sk_attention=False, output_stride=output_stride).eval()
    assert {k: v.shape for k, v in dilated.state_dict().items()} == {k: v.shape for k, v in reference.state_dict().items()}
    dilated.load_state_dict(reference.state_dict())
    x = torch.randn(2, 3, SIZE // 2, SIZE // 2)
    with torch.no_grad():
        expected = reference.forward_intermediates(x, intermediates_only=True)
        maps = dilated.forward_intermediates(x, intermediates_only=True)
    stride_given_up = [full // capped for full, capped in zip(REDUCTIONS[32], REDUCTIONS[output_stride])]
    assert [m.shape[-1] for m in maps] == [e.shape[-1] * s for e, s in zip(expected, stride_given_up)]
    for i, (got, want, step) in enumerate(zip(maps, expected, stride_given_up)):
        sampled = got[..., ::step, ::step]
        err = (sampled - want).abs().max()
        assert err <= 1e-5 * want.abs().max(), f'tap {i}: max abs error {err:.3g}'


@pytest.mark.parametrize('output_stride', [4, 12, 64, 16.0, '16'])
@pytest.mark.parametrize('name', ['sk_shufflenetv2_050', 'sknet50'])
def test_an_output_stride_no_trunk_gives_is_refused_in_one_line(name, output_stride):
    with pytest.raises(ValueError) as refusal:
        timm.create_model(name, output_stride=output_stride, device='meta')
    assert str(refusal.value) == (
        f'output_stride must be 32, 16 or 8 (the later stages dilated instead of strided), got {output_stride!r}')

"""The deploy form, timm's convention: ``timm.utils.reparameterize_model`` (what ``--reparam`` in timm's scripts calls)
folds every BatchNorm into the conv before it and keeps the logits, eager, scripted, exported, compiled and in ONNX;
it folds in place, so a ``features_only`` model of every registered model keeps its maps and hooks in every feature
mode; the ResNet keywords the SK units honour (anti-aliasing, an extra attention module, ...) survive it."""
import re
from functools import partial

import onnxruntime as ort
import pytest
import timm
import torch
from timm.layers import BlurPool2d
from timm.utils import reparameterize_model
from torch import nn

import timm_sknet
from timm_sknet.analysis.attention import capture_selection

from support import randomize_norms
from test_plain_modules import FAMILY_MODELS

RTOL = 1e-5  # relative to the largest logit


def _assert_close(actual: torch.Tensor, expected: torch.Tensor, what: str, rtol: float = RTOL) -> None:
    err = (actual - expected).abs().max().item()
    scale = expected.abs().max().item()
    assert err <= rtol * scale, f'{what}: max abs error {err:.3g} > {rtol} x {scale:.3g}'


# The last norm of each residual branch (SKBottleneck's conv3, SKBasicBlock's conv2: the norms timm's zero_init_last
# zeroes), by name, so that a wrapper which keeps the names but not the blocks (an FX graph) is covered too.
RESIDUAL_BRANCH_END = re.compile(r'\.conv[23]\.bn$')


def _model_and_input(name: str, size: int, **kwargs):
    """The model with BatchNorms that all matter to the logits, and an input.

    The residual branches' last norms are scaled to a quarter, as training leaves them (``zero_init_last`` starts
    them at 0): at full scale a deep ungrouped net's fp32 logits are only good to ~5e-5 against fp64 in either
    form, which would hide what the fold does behind what fp32 does. The fp64 test below takes full scale.
    """
    torch.manual_seed(0)
    model = timm.create_model(name, **kwargs).eval()
    randomize_norms(model)
    with torch.no_grad():
        for norm_name in _norms(model):
            if RESIDUAL_BRANCH_END.search(norm_name):
                model.get_submodule(norm_name).weight.mul_(0.25)
    return model, torch.randn(2, 3, size, size)


def _structure(model: nn.Module):
    """What a keyword can change: module types and their geometry, parameter shapes."""
    return [(n, type(m).__name__, getattr(m, 'stride', None), getattr(m, 'dilation', None))
            for n, m in model.named_modules()] + [(k, v.shape) for k, v in model.state_dict().items()]


def _norms(model: nn.Module):
    return [name for name, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._NormBase)]


def _fewer_units(name: str) -> dict:
    """The same code paths with one unit per stage (two in SK-ShuffleNetV2's middle stage, which has both unit
    kinds): compiling, by far the slowest check, then takes a fraction of the time."""
    if 'shufflenet' in name:
        return dict(stage_repeats=(1, 2, 1))
    return dict(layers=(1, 1, 1) if 'cifar' in name else (1, 1, 1, 1))


@pytest.mark.parametrize('name', sorted(FAMILY_MODELS))
def test_reparameterize_folds_every_batchnorm_and_keeps_the_logits(name):
    model, x = _model_and_input(name, FAMILY_MODELS[name])
    plain_state = {k: v.clone() for k, v in model.state_dict().items()}
    deployed = reparameterize_model(model)
    assert _norms(model) and not _norms(deployed)
    with torch.no_grad():
        expected = model(x)
        _assert_close(deployed(x), expected, 'deploy form')
        _assert_close(torch.jit.script(deployed)(x), expected, 'scripted deploy form')
        _assert_close(torch.export.export(deployed, (x,)).module()(x), expected, 'exported deploy form')
        shallow, _ = _model_and_input(name, FAMILY_MODELS[name], **_fewer_units(name))
        compiled = torch.compile(reparameterize_model(shallow), backend='inductor', dynamic=False, fullgraph=True)
        _assert_close(compiled(x), shallow(x), 'compiled deploy form')
    # the plain model is untouched (reparameterize_model works on a copy) and keeps the release's state dict
    assert all(torch.equal(v, plain_state[k]) for k, v in model.state_dict().items())
    assert list(model.state_dict()) == list(plain_state)


@pytest.mark.parametrize('name', sorted(FAMILY_MODELS))
def test_deploy_form_is_exact_in_fp64(name):
    """Folding is exact arithmetic: in fp64 the two forms agree to rounding, whatever the norms hold."""
    torch.manual_seed(0)
    model = timm.create_model(name).eval().double()
    randomize_norms(model)
    size = FAMILY_MODELS[name] // 2  # fp64 convolutions run without oneDNN: slow
    x = torch.randn(2, 3, size, size, dtype=torch.float64)
    with torch.no_grad():
        _assert_close(reparameterize_model(model)(x), model(x), 'fp64 deploy form', rtol=1e-12)


def test_deploy_form_in_place_and_attention_capture():
    model, x = _model_and_input('sknet26', 64)
    with torch.no_grad(), capture_selection(model) as plain:
        expected = model(x)
    reparameterize_model(model, inplace=True)  # what timm's validate.py --reparam does to its model
    assert not _norms(model)
    with torch.no_grad(), capture_selection(model) as deployed:
        _assert_close(model(x), expected, 'in-place deploy form')
    assert plain.weights.keys() == deployed.weights.keys()
    for unit, weights in plain.weights.items():
        _assert_close(deployed.weights[unit], weights, f'selection weights of {unit}')


def _input_size(name: str) -> int:
    """Small, as the family checks: the ImageNet-scale models at 64 (their stride-32 map is 2x2), the CIFAR one at 32."""
    return 64 if min(timm.models.get_pretrained_cfg(name).input_size[1:]) >= 224 else 32


@pytest.mark.parametrize('feature_cls', [None, 'hook', 'fx'], ids=lambda c: c or 'default')
@pytest.mark.parametrize('name', timm_sknet.model_names())
def test_folding_a_feature_extractor_keeps_its_maps_and_hooks(name, feature_cls):
    """``reparameterize_model`` on a ``features_only`` model, as it is wrapped (hooks on its taps, an FX graph that
    calls modules by name): every BatchNorm folds, every map is still there with its shape and values, and a hook a
    user put on each conv before folding fires on the folded conv. Both the copy reparameterize_model makes by
    default and the fold in place (``inplace=True``, what timm's validate.py does)."""
    kwargs = {} if feature_cls is None else {'feature_cls': feature_cls}
    features, x = _model_and_input(name, _input_size(name), features_only=True, **kwargs)
    convs = [n for n, m in features.named_modules() if isinstance(m, nn.Conv2d)]
    fired = []
    for conv_name in convs:
        features.get_submodule(conv_name).register_forward_hook(lambda *args, n=conv_name: fired.append(n))
    with torch.no_grad():
        expected = features(x)
    assert len(expected) == len(features.feature_info.reduction())
    num_norms = len(_norms(features))
    for deployed in (reparameterize_model(features), reparameterize_model(features, inplace=True)):
        assert not _norms(deployed)
        # each norm went into the conv before it, which gained a bias
        assert sum(deployed.get_submodule(n).bias is not None for n in convs) == num_norms
        fired.clear()
        with torch.no_grad():
            maps = deployed(x)
        assert sorted(set(fired)) == sorted(convs)
        assert [m.shape for m in maps] == [m.shape for m in expected]
        for i, (got, want) in enumerate(zip(maps, expected)):
            _assert_close(got, want, f'map {i} of the folded {feature_cls or "default"} feature extractor')


@pytest.mark.parametrize('form', ['plain', 'deploy'])
def test_onnx_export_runs_in_onnxruntime(form, tmp_path):
    model, x = _model_and_input('sknet26', 64)
    with torch.no_grad():
        expected = model(x)
    if form == 'deploy':
        model = reparameterize_model(model)
    path = tmp_path / f'sknet26-{form}.onnx'
    torch.onnx.export(model, (x,), dynamo=True).save(str(path))
    session = ort.InferenceSession(str(path), providers=['CPUExecutionProvider'])
    logits, = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    _assert_close(torch.from_numpy(logits), expected, f'onnxruntime, {form} form', rtol=1e-4)


# timm's ResNet keywords that reach the SK units; each must change the network, in both forms.
RESNET_KEYWORDS = {
    'aa_layer': dict(aa_layer=BlurPool2d),
    'attn_layer': dict(block_args=dict(attn_layer='se')),
    'output_stride': dict(output_stride=16),
    'reduce_first_avg_down': dict(block_reduce_first=2, avg_down=True, down_kernel_size=3),
    'deep_stem_conv_pool': dict(stem_type='deep', replace_stem_pool=True),
}


@pytest.mark.parametrize('keywords', RESNET_KEYWORDS.values(), ids=RESNET_KEYWORDS.keys())
@pytest.mark.parametrize('name', ['sk_resnext50_32x4d', 'sk_resnet18'])
def test_resnet_keywords_are_honoured_in_both_forms(name, keywords):
    model, x = _model_and_input(name, 64, **keywords)
    assert _structure(model) != _structure(timm.create_model(name)), f'{keywords} left the network as it was'
    deployed = reparameterize_model(model)
    assert not _norms(deployed)
    with torch.no_grad():
        _assert_close(deployed(x), model(x), f'deploy form with {keywords}')


# timm's skresnext50_32x4d passes its SK settings in block_args, so a block_args of its own must repeat them.
TIMM_SK_BLOCK_ARGS = dict(sk_kwargs=dict(rd_ratio=1 / 16, rd_divisor=32, split_input=False))


@pytest.mark.parametrize('ours, timms', [
    pytest.param(dict(aa_layer=BlurPool2d), dict(aa_layer=BlurPool2d), id='aa_layer'),
    pytest.param(dict(block_args=dict(attn_layer='se')), dict(block_args=dict(attn_layer='se', **TIMM_SK_BLOCK_ARGS)),
                 id='attn_layer'),
])
def test_anti_aliasing_and_attention_as_timms_sk_units(ours, timms):
    """timm's skresnext50_32x4d with the same keywords loads strictly and computes the same function."""
    reference, x = _model_and_input('skresnext50_32x4d', 64, **timms)
    model = timm.create_model('sk_resnext50_32x4d', **ours).eval()
    model.load_state_dict(reference.state_dict(), strict=True)
    with torch.no_grad():
        _assert_close(model(x), reference(x), f'against timm with {ours}')
    if 'aa_layer' in ours:
        unit = model.layer2[0].conv2
        assert all(p.conv.stride == (1, 1) and isinstance(p.aa, BlurPool2d) for p in unit.paths)


def test_release_stem_pool_refuses_a_stem_that_replaces_it():
    for keywords in (dict(aa_layer=BlurPool2d), dict(replace_stem_pool=True)):
        with pytest.raises(ValueError, match="stem_pool='max'"):
            timm.create_model('sknet50', **keywords)


def test_batchnorm_settings_reach_every_norm_through_norm_layer():
    model = timm.create_model('sknet26', bn_momentum=0.2, bn_eps=1e-3, norm_layer=partial(nn.BatchNorm2d))
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert norms and all(m.momentum == 0.2 and m.eps == 1e-3 for m in norms)

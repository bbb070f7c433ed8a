"""SK-ShuffleNetV2 0.5x / 1.0x: the plain form is torchvision's ShuffleNetV2, what SK adds, the SK units, the
attention analysis on them and timm's model contract. The deploy form and plain-module checks of
``sk_shufflenetv2_050``: test_deploy.py and test_plain_modules.py (FAMILY_MODELS); the five feature taps in every
``features_only`` mode and form: test_backbones.py."""
import csv
import json

import pytest
import timm
import torch
import torchvision
from safetensors.torch import save_file
from timm.data import resolve_data_config
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from timm_sknet import SKConv, SKShuffleNetV2
from timm_sknet.analysis.attention import capture_selection, sk_units, zoom_transform
from timm_sknet.io.synthetic import synthetic_images
from timm_sknet.models.sk_shufflenet import checkpoint_filter_fn

from support import randomize_norms, run_cli

PLAIN = dict(kernel_size=(3,), sk_attention=False)  # one 3x3 path, no attention: ShuffleNetV2 itself
# model -> (torchvision baseline, its parameter count, its multiply-adds at 224 (issue 14's figures))
BASELINES = {
    'sk_shufflenetv2_050': ('shufflenet_v2_x0_5', 1_366_792, 40.5e6),
    'sk_shufflenetv2_100': ('shufflenet_v2_x1_0', 2_278_604, 144.9e6),
}
# the five feature taps: the stem conv, its max pool, the three stages
TAP_WIDTHS = {'sk_shufflenetv2_050': [24, 24, 48, 96, 192], 'sk_shufflenetv2_100': [24, 24, 116, 232, 464]}


def _params_and_macs(model: nn.Module, size: int = 224):
    """Parameters, and multiply-adds of one image in eval under no_grad on CPU (torch.utils.flop_counter)."""
    model.eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.randn(1, 3, size, size))
    return sum(p.numel() for p in model.parameters()), counter.get_total_flops() / 2


def _torchvision_with_statistics(name: str) -> nn.Module:
    torch.manual_seed(0)
    model = getattr(torchvision.models, name)().eval()
    randomize_norms(model)
    return model


def test_registered_in_timm():
    assert timm.list_models('sk_shufflenet*') == sorted(BASELINES)
    assert {'sk_shufflenetv2_050.untrained', 'sk_shufflenetv2_100.untrained'} <= set(
        timm.list_models('sk_shufflenet*', include_tags=True))
    assert type(timm.create_model('sk_shufflenetv2_050', device='meta')) is SKShuffleNetV2


@pytest.mark.parametrize('name', sorted(BASELINES))
def test_plain_form_has_torchvision_size(name):
    tv_name, tv_params, tv_macs = BASELINES[name]
    params, macs = _params_and_macs(timm.create_model(name, **PLAIN))
    assert params == tv_params
    assert macs == pytest.approx(tv_macs, rel=0.02)
    assert (params, macs) == _params_and_macs(getattr(torchvision.models, tv_name)())


@pytest.mark.parametrize('name', sorted(BASELINES))
def test_plain_form_computes_torchvision_shufflenetv2(name, tmp_path):
    """torchvision's weights load (renamed by checkpoint_filter_fn, strictly) and give its logits exactly: the
    interleaving of the unit outputs is torchvision's concat + channel shuffle, the linear SK path its depthwise."""
    reference = _torchvision_with_statistics(BASELINES[name][0])
    path = tmp_path / 'torchvision.safetensors'
    save_file(reference.state_dict(), str(path))
    model = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=str(path)), **PLAIN).eval()
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        assert torch.equal(model(x), reference(x))
    # our own state dicts pass through the filter unchanged
    assert checkpoint_filter_fn(model.state_dict(), model).keys() == model.state_dict().keys()


@pytest.mark.parametrize('name', sorted(BASELINES))
def test_sk_defaults_cost_more_but_at_most_a_quarter_more_macs(name):
    plain_params, plain_macs = _params_and_macs(timm.create_model(name, **PLAIN))
    sk_params, sk_macs = _params_and_macs(timm.create_model(name))
    assert sk_params > plain_params and sk_macs > plain_macs
    assert sk_macs <= 1.25 * plain_macs
    # the plain sum of two paths costs the second path's convs; attention costs a little more on top
    sum_params, sum_macs = _params_and_macs(timm.create_model(name, sk_attention=False))
    assert plain_macs < sum_macs < sk_macs and plain_params < sum_params < sk_params


@pytest.mark.parametrize('name', sorted(BASELINES))
def test_every_depthwise_3x3_is_an_sk_conv_with_two_paths(name):
    model = timm.create_model(name, device='meta')
    tv_model = getattr(torchvision.models, BASELINES[name][0])(weights=None).to('meta')
    tv_depthwise = [m for m in tv_model.modules()
                    if isinstance(m, nn.Conv2d) and m.groups > 1 and m.groups == m.in_channels == m.out_channels]
    sk_convs = [m for m in model.modules() if isinstance(m, SKConv)]
    assert len(sk_convs) == len(tv_depthwise) == 19  # 16 units, and the shortcut branch of 3 downsampling units
    for sk, dw in zip(sk_convs, tv_depthwise):  # both in unit order, the downsampling unit's shortcut first
        channels = dw.in_channels
        assert [(p.conv.kernel_size, p.conv.dilation, p.conv.padding, p.conv.stride, p.conv.groups,
                 p.conv.in_channels, p.conv.out_channels) for p in sk.paths] == \
            [((3, 3), (1, 1), (1, 1), dw.stride, channels, channels, channels),
             ((3, 3), (2, 2), (2, 2), dw.stride, channels, channels, channels)]
        assert sk.attn.fc_reduce.out_channels == max(channels // 16, 32)  # d = max(C / r, L)
        assert all(isinstance(p.bn.act, nn.Identity) for p in sk.paths)  # ShuffleNetV2's linear depthwise
    # every other conv is a 1x1 or the 3x3 stem
    others = [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.groups == 1]
    assert {m.kernel_size for m in others} == {(1, 1), (3, 3)}
    assert [m for m in others if m.kernel_size == (3, 3)] == [model.stem.conv]


def test_sk_keywords():
    model = timm.create_model(
        'sk_shufflenetv2_050', kernel_size=(3, 5, 7), sk_rd_ratio=1 / 4, sk_min_attn_channels=8,
        dilate_large_kernels=False, sk_path_act=True, device='meta')
    sk = model.stages[2][1].conv_dw  # 96 channels
    assert [(p.conv.kernel_size, p.conv.dilation) for p in sk.paths] == [((3, 3), (1, 1)), ((5, 5), (1, 1)),
                                                                          ((7, 7), (1, 1))]
    assert sk.attn.fc_reduce.out_channels == 24 and sk.attn.fc_select.out_channels == 3 * 96
    assert all(isinstance(p.bn.act, nn.ReLU) for p in sk.paths)
    plain_sum = timm.create_model('sk_shufflenetv2_050', sk_attention=False, device='meta')
    assert all(m.attn is None and len(m.paths) == 2 for m in plain_sum.modules() if isinstance(m, SKConv))
    with pytest.raises(ValueError, match='one entry per stage'):
        timm.create_model('sk_shufflenetv2_050', stage_repeats=(4, 8), device='meta')


def test_path_activation_changes_the_function():
    """sk_path_act=True puts a ReLU after each depthwise path: no longer ShuffleNetV2, same parameters."""
    torch.manual_seed(0)
    linear = timm.create_model('sk_shufflenetv2_050', **PLAIN).eval()
    randomize_norms(linear)
    with_act = timm.create_model('sk_shufflenetv2_050', sk_path_act=True, **PLAIN).eval()
    with_act.load_state_dict(linear.state_dict())
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert not torch.allclose(linear(x), with_act(x))


def test_sk_units_names_and_capture():
    model = timm.create_model('sk_shufflenetv2_050').eval()
    units = sk_units(model)
    names = [u.name for u in units]
    assert names == [n for s, n_units in ((2, 4), (3, 8), (4, 4))
                     for n in [f'SK_{s}_1_shortcut'] + [f'SK_{s}_{i}' for i in range(1, n_units + 1)]]
    by_name = {u.name: u for u in units}
    assert by_name['SK_2_1_shortcut'].module_name == 'stages.0.0.shortcut.conv_dw'
    assert by_name['SK_3_5'].module_name == 'stages.1.4.conv_dw'
    assert (by_name['SK_4_1'].stage, by_name['SK_4_1'].index, by_name['SK_4_1'].channels) == (4, 1, 96)
    assert by_name['SK_4_1_shortcut'].channels == 96 and all(u.kernel_sizes == (3, 5) for u in units)

    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = model(x)
        with capture_selection(model) as selection:
            captured = model(x)
    assert torch.equal(captured, expected)
    assert list(selection.weights) == names  # recorded in forward order
    for unit in units:
        weights = selection.weights[unit.name]
        assert weights.shape == (2, 2, unit.channels) and (weights >= 0).all()
        torch.testing.assert_close(weights.sum(1), torch.ones(2, unit.channels), rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match='no SK units'):
        sk_units(timm.create_model('sk_shufflenetv2_050', **PLAIN))


def test_attention_cli(tmp_path, monkeypatch):
    """``timm-sknet attention`` on SK-ShuffleNetV2: every unit in units.csv, numbers as a direct capture gives."""
    out = tmp_path / 'out'
    assert run_cli(monkeypatch, 'attention', '--model', 'sk_shufflenetv2_050', '--synthetic', '3', '--img-size', '64',
                   '--scales', '1.0,2.0', '--workers', '0', '--units', 'SK_3_1_shortcut', '--out', str(out)) == 0
    torch.manual_seed(0)  # the CLI's random init: seed 0
    model = timm.create_model('sk_shufflenetv2_050').eval()
    data_config = resolve_data_config({'img_size': 64}, model=model)
    views = torch.stack([torch.stack([zoom_transform(data_config, s)(im) for s in (1.0, 2.0)])
                         for im in synthetic_images(3, seed=0)])
    with torch.no_grad(), capture_selection(model) as selection:
        model(views.flatten(0, 1))
    with open(out / 'units.csv', newline='') as f:
        rows = list(csv.DictReader(f))
    assert [r['unit'] for r in rows[::2]] == [u.name for u in sk_units(model)]
    for row in rows:
        weights = selection.weights[row['unit']].double().unflatten(0, (3, 2))[:, int(row['scale'] == '2.0')]
        per_image = (weights[:, 1] - weights[:, 0]).mean(-1)  # 3x3 dilation 2 minus 3x3, per image
        assert (int(row['large_kernel']), int(row['small_kernel']), int(row['images'])) == (5, 3, 3)
        assert float(row['mean_difference']) == pytest.approx(per_image.mean().item(), rel=1e-12, abs=1e-15)
    summary = json.loads((out / 'attention.json').read_text())
    assert summary['model'] == 'sk_shufflenetv2_050' and len(summary['units']) == 19
    with open(out / 'channels.csv', newline='') as f:
        assert {r['unit'] for r in csv.DictReader(f)} == {'SK_3_1_shortcut'}


@pytest.mark.parametrize('name', sorted(BASELINES))
def test_forward_intermediates_and_pruning(name):
    model = timm.create_model(name).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        final, taps = model.forward_intermediates(x)
        assert torch.equal(final, model.forward_features(x)) and final.shape[1] == 1024
        assert [t.shape[1] for t in taps] == TAP_WIDTHS[name]
        early = model.forward_intermediates(x, indices=[2], stop_early=True, intermediates_only=True)
        assert torch.equal(early[0], taps[2])
        pruned = timm.create_model(name).eval()
        pruned.load_state_dict(model.state_dict())
        assert pruned.prune_intermediate_layers([0, 3]) == [0, 3]
        assert len(pruned.stages) == 2 and isinstance(pruned.final_conv, nn.Identity)
        assert torch.equal(pruned.forward_features(x), taps[3])
        assert pruned(x).shape == (2, TAP_WIDTHS[name][3], 4, 4)  # no head left: unpooled features


def test_grad_checkpointing_reset_classifier_and_group_matcher():
    model = timm.create_model('sk_shufflenetv2_050', num_classes=5).train()
    x = torch.randn(2, 3, 64, 64)
    ref = model(x)
    model.set_grad_checkpointing(True)
    out = model(x)
    out.sum().backward()
    assert torch.allclose(out, ref, atol=1e-5)
    assert all(p.grad is not None for p in model.parameters())
    model.reset_classifier(3, 'max')
    assert model.get_classifier().out_features == 3 and model(x).shape == (2, 3)
    model.reset_classifier(0)
    assert model(x).shape == (2, 1024)
    groups = timm.models.group_parameters(model, model.group_matcher())
    # the stem, then every unit; the final conv joins the last unit's group (timm's MATCH_PREV_GROUP)
    assert len(groups) == 1 + 16 and groups[16][-1] == 'final_conv.bn.bias'


def test_timm_keywords():
    """The keywords timm's train.py and users pass to create_model."""
    model = timm.create_model(
        'sk_shufflenetv2_050', num_classes=11, in_chans=1, drop_rate=0.2, global_pool='avgmax', bn_momentum=0.2,
        bn_eps=1e-3, scriptable=True, checkpoint_path='')
    assert model.get_classifier().out_features == 11 and model.stem.conv.in_channels == 1
    assert model.head.drop.p == 0.2 and model.head.global_pool.pool_type == 'avgmax'
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert norms and all(m.momentum == 0.2 and m.eps == 1e-3 for m in norms)
    model.train()(torch.randn(2, 1, 64, 64)).sum().backward()
    with pytest.raises(TypeError):
        timm.create_model('sk_shufflenetv2_050', drop_path_rate=0.1)  # no residual branch to drop


def test_device_dtype_and_pretrained_cfg():
    model = timm.create_model('sk_shufflenetv2_100', device='meta', dtype=torch.bfloat16)
    assert {(p.device.type, p.dtype) for p in model.parameters()} == {('meta', torch.bfloat16)}
    cfg = model.pretrained_cfg
    assert (cfg['architecture'], cfg['tag'], cfg['input_size'], cfg['interpolation']) == \
        ('sk_shufflenetv2_100', 'untrained', (3, 224, 224), 'bilinear')
    state_dict = model.state_dict()
    assert f"{cfg['first_conv']}.weight" in state_dict and f"{cfg['classifier']}.weight" in state_dict


def test_torchscript_and_compile_match_eager():
    """Scripted: the same kernels. Compiled (fullgraph; a shallower copy, the same code paths, to keep the compile
    short): inductor may reorder float reductions, relative 1e-5. The deploy form compiled: test_deploy.py."""
    model = timm.create_model('sk_shufflenetv2_050').eval()
    randomize_norms(model)
    short = timm.create_model('sk_shufflenetv2_050', stage_repeats=(1, 2, 1)).eval()
    randomize_norms(short)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        eager = model(x)
        assert (torch.jit.script(model)(x) - eager).abs().max() <= 1e-6 * eager.abs().max()
        getter = timm.create_model('sk_shufflenetv2_050', features_only=True, feature_cls='getter',
                                   out_indices=(0, 2)).eval()
        torch.testing.assert_close(torch.jit.script(getter)(x), getter(x))
        short_eager = short(x)
        compiled = torch.compile(short, fullgraph=True)(x)
    assert (compiled - short_eager).abs().max() <= 1e-5 * short_eager.abs().max()

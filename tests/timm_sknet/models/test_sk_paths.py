"""One SK unit, many geometries: ``sk_paths=((kernel, dilation, groups), ...)`` builds the paper's Table 6 / 7 rows and
the authors' PyTorch unit (PyTorchInsight ``resnet_sk.py``) exactly, each holds through the deploy form, hooks and
the FLOP counter; the names follow the trained checkpoints (timm's ``skresnet*``, the authors' SK-ResNet-50/101);
keywords that contradict ``sk_paths`` or have the wrong type are refused in one line."""
import pytest
import timm
import torch
from safetensors.torch import save_file
from timm.models import create_feature_extractor, get_graph_node_names
from timm.utils import reparameterize_model
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from timm_sknet import SKConv
from timm_sknet.weights.hub import hub_repo_id

from support import randomize_norms
from test_deploy import _assert_close, _model_and_input
from test_plain_modules import _conv_and_norm_names

# name -> (model, keywords, the (kernel, dilation, groups) every SK unit must have)
GEOMETRIES = {
    # Table 6: the first path fixed at 3x3 G32, the second a larger kernel with larger groups at similar cost
    'table6_3x3g32_5x5g64': ('sknet50', dict(sk_paths=((3, 1, 32), (5, 1, 64)))),
    'table6_3x3g32_7x7g128': ('sknet50', dict(sk_paths=((3, 1, 32), (7, 1, 128)))),
    # Table 7: kernel combinations, K5 / K7 as 3x3 with dilation 2 / 3
    'table7_k3_k7': ('sknet50', dict(sk_paths=((3, 1, 32), (3, 3, 32)))),
    'table7_k3_k5_k7': ('sknet50', dict(sk_paths=((3, 1, 32), (3, 2, 32), (3, 3, 32)))),
    # the authors' PyTorch SK-ResNet unit: 3x3 dense + 3x3 G32 on the full width
    'pytorchinsight': ('sk_resnet50', {}),
}
EXPECTED_PATHS = {
    'table6_3x3g32_5x5g64': ((3, 1, 32), (5, 1, 64)),
    'table6_3x3g32_7x7g128': ((3, 1, 32), (7, 1, 128)),
    'table7_k3_k7': ((3, 1, 32), (3, 3, 32)),
    'table7_k3_k5_k7': ((3, 1, 32), (3, 2, 32), (3, 3, 32)),
    'pytorchinsight': ((3, 1, 1), (3, 1, 32)),
}
ONE_UNIT_PER_STAGE = dict(layers=(1, 1, 1, 1))  # the same code paths, a fraction of the CPU time


def _sk_units(model: nn.Module):
    return [m for m in model.modules() if isinstance(m, SKConv)]


@pytest.mark.parametrize('geometry', GEOMETRIES)
def test_each_geometry_builds_exactly_its_convs(geometry):
    name, kwargs = GEOMETRIES[geometry]
    model = timm.create_model(name, device='meta', **kwargs)
    units = _sk_units(model)
    assert len(units) == 16
    for unit in units:
        stride = unit.paths[0].conv.stride
        assert [(p.conv.kernel_size, p.conv.dilation, p.conv.padding, p.conv.groups, p.conv.stride)
                for p in unit.paths] == [((k, k), (d, d), (d * (k - 1) // 2,) * 2, g, stride)
                                         for k, d, g in EXPECTED_PATHS[geometry]]
        assert unit.attn.fc_select.out_channels == len(EXPECTED_PATHS[geometry]) * unit.paths[0].conv.out_channels


def _conv_and_linear_macs(model: nn.Module, x: torch.Tensor) -> int:
    """Multiply-adds of every Conv2d and Linear, from the shapes each one produced (every one must run)."""
    macs, ran = [], set()

    def count(module, inputs, output, name):
        ran.add(name)
        if isinstance(module, nn.Conv2d):
            k = module.kernel_size[0] * module.kernel_size[1]
            macs.append(output.numel() * module.in_channels // module.groups * k)
        else:
            macs.append(output.numel() * module.in_features)

    layers = {n: m for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}
    handles = [m.register_forward_hook(lambda *a, n=n: count(*a, n)) for n, m in layers.items()]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    assert ran == set(layers)
    return sum(macs)


@pytest.mark.parametrize('geometry', GEOMETRIES)
def test_each_geometry_runs_deploys_hooks_and_counts(geometry):
    name, kwargs = GEOMETRIES[geometry]
    model, x = _model_and_input(name, 64, **kwargs, **ONE_UNIT_PER_STAGE)
    assert [len(u.paths) for u in _sk_units(model)] == [len(EXPECTED_PATHS[geometry])] * 4

    deployed = reparameterize_model(model)
    with torch.no_grad():
        expected = model(x)
        _assert_close(deployed(x), expected, f'{geometry} deploy form')
    assert torch.isfinite(expected).all() and expected.shape == (2, 1000)

    fired = []
    for module_name in _conv_and_norm_names(model):
        model.get_submodule(module_name).register_forward_hook(lambda *a, n=module_name: fired.append(n))
    with torch.no_grad():
        model(x)
    assert sorted(set(fired)) == sorted(_conv_and_norm_names(model))

    # FlopCounterMode sees every conv and the classifier, in both forms (folding a norm adds no multiply)
    for form in (model, deployed):
        expected_macs = _conv_and_linear_macs(form, x)
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            form(x)
        assert counter.get_total_flops() == 2 * expected_macs


@pytest.mark.parametrize('geometry', GEOMETRIES)
def test_each_geometry_keeps_timms_model_contract(geometry):
    """What timm's suite checks of a model, on each geometry: scripted and FX-traced forwards compute the eager
    logits, and a training step reaches every parameter."""
    name, kwargs = GEOMETRIES[geometry]
    model, x = _model_and_input(name, 64, **kwargs, **ONE_UNIT_PER_STAGE)
    with torch.no_grad():
        expected = model(x)
        _assert_close(torch.jit.script(model)(x), expected, f'{geometry} scripted', rtol=1e-6)
        _, eval_nodes = get_graph_node_names(model)
        traced, = create_feature_extractor(model, return_nodes=[eval_nodes[-1]]).eval()(x).values()
        _assert_close(traced, expected, f'{geometry} FX-traced', rtol=1e-6)
    model.train()(x).logsumexp(1).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def _pytorchinsight_parameter_count(layers) -> int:
    """The authors' SK-ResNet parameter count, from the unit as their resnet_sk.py describes it."""
    count = 3 * 64 * 7 * 7 + 2 * 64  # stem conv, bn
    inplanes = 64
    for planes, blocks in zip((64, 128, 256, 512), layers):
        for b in range(blocks):
            d = planes // 16
            count += inplanes * planes + 2 * planes  # conv1, bn1
            count += 9 * planes * planes + 2 * planes  # conv2 (dense 3x3), bn2
            count += 9 * planes * planes // 32 + 2 * planes  # conv2g (3x3, 32 groups), bn2g
            count += planes * d + 2 * d + d * 2 * planes  # conv_fc1, bn_fc1, conv_fc2
            count += planes * 4 * planes + 2 * 4 * planes  # conv3, bn3
            if b == 0:
                count += inplanes * 4 * planes + 2 * 4 * planes  # downsample conv, bn
            inplanes = 4 * planes
    return count + 2048 * 1000 + 1000  # fc


@pytest.mark.parametrize('name, layers, published_m', [
    ('sk_resnet50', (3, 4, 6, 3), 26.15), ('sk_resnet101', (3, 4, 23, 3), 45.68)])
def test_pytorchinsight_parameter_counts_are_the_published_ones(name, layers, published_m):
    model = timm.create_model(name, device='meta')
    params = sum(p.numel() for p in model.parameters())
    assert params == _pytorchinsight_parameter_count(layers)
    assert round(params / 1e6, 2) == published_m
    widths = [stage[0].conv2.attn.fc_reduce.out_channels for stage in (model.layer1, model.layer2, model.layer3,
                                                                      model.layer4)]
    assert widths == [4, 8, 16, 32]  # planes // 16, no minimum


@pytest.mark.parametrize('timm_name, tag', [
    ('skresnet18', 'sk_resnet18.ra_in1k'), ('skresnet34', 'sk_resnet34.ra_in1k'),
    ('skresnext50_32x4d', 'sk_resnext50_32x4d.ra_in1k')])
def test_timm_checkpoints_load_strictly_with_timm_logits(tmp_path, timm_name, tag):
    torch.manual_seed(0)
    reference = timm.create_model(timm_name).eval()
    with torch.no_grad():
        for p in reference.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    randomize_norms(reference)
    weights = tmp_path / 'model.safetensors'
    save_file(reference.state_dict(), str(weights))

    ours = timm.create_model(tag, pretrained=True, pretrained_cfg_overlay=dict(file=str(weights))).eval()
    assert list(ours.state_dict()) == list(reference.state_dict())
    ours.load_state_dict(reference.state_dict(), strict=True)
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        _assert_close(ours(x), reference(x), f'{tag} against timm {timm_name}')
    # the tag is timm's: its Hub repo and its preprocessing
    timm_cfg = timm.models.get_pretrained_cfg(f'{timm_name}.ra_in1k')
    assert ours.pretrained_cfg['hf_hub_id'] == f'timm/{timm_name}.ra_in1k' == timm_cfg.hf_hub_id
    for key in ('input_size', 'crop_pct', 'interpolation', 'mean', 'std', 'license'):
        assert ours.pretrained_cfg[key] == getattr(timm_cfg, key), key


@pytest.mark.parametrize('name', ['sk_resnet50', 'sk_resnet101'])
def test_pytorchinsight_tags_carry_the_authors_preprocessing(name):
    tag = f'{name}.pytorchinsight_in1k'
    assert tag in timm.list_pretrained(name)
    cfg = timm.models.get_pretrained_cfg(tag)
    # torchvision's evaluation: resize 256, centre crop 224, bilinear, ImageNet mean / std
    assert (cfg.input_size, cfg.crop_pct, cfg.crop_mode, cfg.interpolation) == ((3, 224, 224), 0.875, 'center',
                                                                                 'bilinear')
    assert (cfg.mean, cfg.std) == ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    assert cfg.hf_hub_id == hub_repo_id(tag) and cfg.license == 'other'


def test_consistent_keywords_are_accepted_with_sk_paths():
    plain = timm.create_model('sknet50', device='meta')
    spelled = timm.create_model(
        'sknet50', sk_paths=((3, 1, None), (3, 2, None)), kernel_size=(3, 5), dilate_large_kernels=True,
        sk_groups=32, device='meta')
    assert [(n, p.shape) for n, p in spelled.named_parameters()] == [(n, p.shape) for n, p in plain.named_parameters()]
    assert [(m.kernel_size, m.dilation, m.groups) for m in spelled.modules() if isinstance(m, nn.Conv2d)] == \
        [(m.kernel_size, m.dilation, m.groups) for m in plain.modules() if isinstance(m, nn.Conv2d)]
    true_kernels = timm.create_model('sknet26', sk_paths=((3, 1, 32), (5, 1, 32)), dilate_large_kernels=False,
                                     device='meta')
    assert [p.conv.kernel_size for p in true_kernels.layer1[0].conv2.paths] == [(3, 3), (5, 5)]
    # groups None in SK-ShuffleNetV2: depthwise, as its default
    shuffle = timm.create_model('sk_shufflenetv2_050', sk_paths=((3, 1, None), (5, 1, None)), device='meta')
    sk = shuffle.stages[0][1].conv_dw
    assert [(p.conv.kernel_size, p.conv.groups) for p in sk.paths] == [((3, 3), 24), ((5, 5), 24)]


REFUSALS = {
    'sk_groups_per_path': ('sknet50', dict(sk_groups=(32, 64)), TypeError, r'sk_groups .*must be an int'),
    'dilate_tuple': ('sknet50', dict(dilate_large_kernels=(True, False)), TypeError,
                     'dilate_large_kernels takes True or False'),
    'kernel_size_contradicts': ('sknet50', dict(sk_paths=((3, 1, 32), (3, 2, 32)), kernel_size=(3, 7)), ValueError,
                                r'kernel_size=\(3, 7\) contradicts sk_paths'),
    'dilate_true_contradicts': ('sknet50', dict(sk_paths=((3, 1, 32), (5, 1, 64)), dilate_large_kernels=True),
                                ValueError, 'dilate_large_kernels=True contradicts sk_paths'),
    'dilate_false_contradicts': ('sknet50', dict(sk_paths=((3, 1, 32), (3, 2, 32)), dilate_large_kernels=False),
                                 ValueError, 'dilate_large_kernels=False contradicts sk_paths'),
    'sk_groups_contradicts': ('sknet50', dict(sk_paths=((3, 1, 32), (3, 2, 64)), sk_groups=32), ValueError,
                              'sk_groups=32 contradicts the groups of sk_paths'),
    'kernel_size_on_a_paths_model': ('sk_resnet50', dict(kernel_size=(3, 5)), ValueError,
                                     'kernel_size=.* contradicts sk_paths'),
    'path_not_a_triple': ('sknet50', dict(sk_paths=((3, 1), (3, 2))), TypeError,
                          r'each sk_paths entry is \(kernel, dilation, groups\)'),
    'paths_a_string': ('sknet50', dict(sk_paths='3x3,5x5'), TypeError, 'sk_paths takes a non-empty tuple'),
    'even_kernel': ('sknet50', dict(sk_paths=((3, 1, 32), (4, 1, 32))), ValueError,
                    r'the kernel of sk_paths entry \(4, 1, 32\) must be odd'),
    'float_dilation': ('sknet50', dict(sk_paths=((3, 1, 32), (3, 1.5, 32))), TypeError,
                       'dilation of sk_paths entry .* must be an int'),
    'groups_not_dividing': ('sknet50', dict(sk_paths=((3, 1, 32), (3, 1, 48))), ValueError,
                            'groups do not divide'),
    'kernel_size_string': ('sknet50', dict(kernel_size='35'), TypeError, 'kernel_size takes an int or'),
    'bool_kernel': ('sknet50', dict(kernel_size=(3, True)), TypeError, 'each kernel_size entry must be an int'),
    'ratio_string': ('sknet50', dict(sk_rd_ratio='1/16'), TypeError, 'attention ratio'),
    'min_width_float': ('sknet50', dict(sk_min_attn_channels=2.5), TypeError, 'minimum attention width'),
    'zero_width': ('sk_resnet50', dict(sk_rd_ratio=1 / 128), ValueError, 'attention width'),
    'attention_string': ('sknet50', dict(sk_attention='yes'), TypeError, 'sk_attention takes True or False'),
    'attn_widths_int': ('sknet50', dict(sk_attn_channels=32), TypeError, 'sk_attn_channels takes one width'),
    'shufflenet_contradicts': ('sk_shufflenetv2_050', dict(sk_paths=((3, 1, None),), kernel_size=(3, 5)),
                               ValueError, 'contradicts sk_paths'),
    'shufflenet_dilate_tuple': ('sk_shufflenetv2_050', dict(dilate_large_kernels=(True,)), TypeError,
                                'dilate_large_kernels takes True or False'),
}


@pytest.mark.parametrize('case', REFUSALS)
def test_contradicting_or_wrong_type_keywords_are_refused_in_one_line(case):
    name, kwargs, error, message = REFUSALS[case]
    with pytest.raises(error, match=message) as info:
        timm.create_model(name, device='meta', **kwargs)
    assert '\n' not in str(info.value)


def test_skconv_refuses_groups_that_contradict_its_paths():
    with pytest.raises(ValueError, match='groups=32 contradicts the groups of sk_paths') as info:
        SKConv(64, 64, groups=32, sk_paths=((3, 1, 1), (3, 1, 32)))
    assert '\n' not in str(info.value)
    sk = SKConv(64, 64, sk_paths=((3, 1, None), (3, 2, 32)), default_groups=4, dilation=2)
    assert [(p.conv.dilation, p.conv.padding, p.conv.groups) for p in sk.paths] == \
        [((2, 2), (2, 2), 4), ((4, 4), (4, 4), 32)]


# The README's call for timm's (untrained) skresnet50, the geometry lucid's sk_resnet_50 config names
TIMM_SKRESNET50_CALL = dict(sk_paths=((3, 1, 1), (3, 2, 1)), split_input=True, sk_min_attn_channels=8)


def test_timm_skresnet50_is_a_call_of_sk_resnet50():
    torch.manual_seed(0)
    reference = timm.create_model('skresnet50').eval()
    randomize_norms(reference)
    ours = timm.create_model('sk_resnet50', **TIMM_SKRESNET50_CALL).eval()
    ours.load_state_dict(reference.state_dict(), strict=True)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        _assert_close(ours(x), reference(x), 'sk_resnet50 call against timm skresnet50')

"""The registered architectures: sizes, release-specific structure, timm's model contract."""
import pytest
import timm
import torch
from safetensors.torch import save_file
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from timm_sknet import SKConv

from support import randomize_norms

OUR_MODELS = sorted(set(timm.list_models('sknet*') + timm.list_models('sk_res*') + timm.list_models('sk_shuffle*')))
EXPECTED_MODELS = {
    'sknet26', 'sknet50', 'sknet101', 'sknet29_cifar', 'sk_resnext50_32x4d', 'sk_resnext101_32x4d',
    'sk_resnext101_32x8d', 'sk_resnet18', 'sk_resnet34', 'sk_resnet50', 'sk_resnet101', 'sk_shufflenetv2_050',
    'sk_shufflenetv2_100'}


def _params_and_macs(name: str, **kwargs):
    """Parameter count and multiply-adds of one forward pass in eval under no_grad, as inference runs: on CPU with
    real tensors, where a fast path hidden from the FLOP counter would run."""
    model = timm.create_model(name, **kwargs).eval()
    size = model.pretrained_cfg['input_size']
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.randn(1, *size))
    return sum(p.numel() for p in model.parameters()), counter.get_total_flops() / 2


def test_registry_names_and_no_collision_with_timm():
    assert set(OUR_MODELS) == EXPECTED_MODELS
    # timm's own SK models stay what they are
    assert {'skresnext50_32x4d', 'skresnet18'} <= set(timm.list_models('skres*'))


@pytest.mark.parametrize('name, params_m, gmacs', [
    ('sknet26', 16.75, 2.59), ('sknet50', 27.48, 4.46), ('sknet101', 48.69, 8.45)])
def test_release_sizes_at_224(name, params_m, gmacs):
    params, macs = _params_and_macs(name)
    assert params / 1e6 == pytest.approx(params_m, rel=0.005)
    assert macs / 1e9 == pytest.approx(gmacs, rel=0.02)


def test_sknet29_cifar_structure_and_size():
    model = timm.create_model('sknet29_cifar').eval()
    assert [m.conv2.paths[0].conv.out_channels for m in (model.layer1[0], model.layer2[0], model.layer3[0])] == \
        [512, 1024, 2048]
    assert {p.conv.groups for m in model.modules() if isinstance(m, SKConv) for p in m.paths} == {32}
    assert isinstance(model.conv1, nn.Conv2d) and model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1)
    assert len(model.layer4) == 0
    feats = model.forward_intermediates(torch.randn(2, 3, 32, 32), intermediates_only=True)
    assert [tuple(f.shape[1:]) for f in feats] == [(64, 32, 32), (256, 32, 32), (512, 16, 16), (1024, 8, 8)]
    params, _ = _params_and_macs('sknet29_cifar')
    # the paper gives "27.7M" without the fuse widths; ours uses its d = max(C/16, 32) rule: 28.26M (+2.0%)
    assert params / 1e6 == pytest.approx(27.7, rel=0.025)


def test_release_stem_pool_is_caffe_ceil_mode():
    model = timm.create_model('sknet50')
    pool = model.maxpool
    assert (pool.kernel_size, pool.stride, pool.padding, pool.ceil_mode) == (3, 2, 0, True)
    # 112 -> 56 at 224 and 160 -> 80 at 320, like Caffe's ceil rounding
    assert pool(torch.randn(1, 1, 112, 112)).shape[-1] == 56
    assert pool(torch.randn(1, 1, 160, 160)).shape[-1] == 80


def test_release_sk_configuration():
    model = timm.create_model('sknet101', device='meta')
    for stage, width in zip((model.layer1, model.layer2, model.layer3, model.layer4), (32, 16, 32, 64)):
        for unit in stage:
            sk = unit.conv2
            assert sk.attn.fc_reduce.out_channels == width
            assert [(p.conv.kernel_size, p.conv.dilation, p.conv.groups) for p in sk.paths] == \
                [((3, 3), (1, 1), 32), ((3, 3), (2, 2), 32)]
    first = model.layer2[0]
    assert [p.conv.stride for p in first.conv2.paths] == [(2, 2), (2, 2)]
    assert first.conv1.conv.stride == (1, 1) and first.downsample[0].stride == (2, 2)


def test_sknet50_widths_follow_paper_rule():
    model = timm.create_model('sknet50', device='meta')
    widths = [stage[0].conv2.attn.fc_reduce.out_channels for stage in (model.layer1, model.layer2, model.layer3, model.layer4)]
    assert widths == [32, 32, 32, 64]


@pytest.mark.parametrize('kernel_size, paths', [((3,), 1), ((3, 5), 2), ((3, 5, 7), 3)])
def test_number_of_paths(kernel_size, paths):
    model = timm.create_model('sknet26', kernel_size=kernel_size, device='meta')
    sk = model.layer1[0].conv2
    assert len(sk.paths) == paths
    assert [p.conv.dilation for p in sk.paths] == [(d, d) for d in range(1, paths + 1)]
    assert (sk.attn is None) == (paths == 1)
    if paths > 1:
        assert sk.attn.fc_select.out_channels == paths * sk.paths[0].conv.out_channels


def test_plain_sum_and_true_large_kernels():
    plain = timm.create_model('sknet26', sk_attention=False).eval()
    assert all(m.attn is None for m in plain.modules() if isinstance(m, SKConv))
    sk = plain.layer1[0].conv2
    x = torch.randn(2, 128, 8, 8)
    with torch.no_grad():
        assert torch.allclose(sk(x), sk.paths[0](x) + sk.paths[1](x))
    large = timm.create_model('sknet26', dilate_large_kernels=False, device='meta')
    assert [(p.conv.kernel_size, p.conv.dilation, p.conv.padding) for p in large.layer1[0].conv2.paths] == \
        [((3, 3), (1, 1), (1, 1)), ((5, 5), (1, 1), (2, 2))]


def test_sk_resnet_configuration_knobs():
    model = timm.create_model(
        'sk_resnet18', block='bottleneck', layers=(1, 1, 1, 1), kernel_size=(3, 5, 7), split_input=False,
        num_classes=7, in_chans=1, stem_type='deep', stem_width=16).eval()
    assert isinstance(model.conv1, nn.Sequential) and model.conv1[0].in_channels == 1
    assert model.conv1[0].out_channels == 16
    assert [len(s) for s in (model.layer1, model.layer2, model.layer3, model.layer4)] == [1, 1, 1, 1]
    assert type(model.layer1[0]).__name__ == 'SKBottleneck' and len(model.layer1[0].conv2.paths) == 3
    assert model(torch.randn(2, 1, 64, 64)).shape == (2, 7)
    basic = timm.create_model('sk_resnet34', device='meta')
    assert type(basic.layer1[0]).__name__ == 'SKBasicBlock' and basic.layer1[0].conv1.paths[0].conv.groups == 1
    with pytest.raises(ValueError, match='block must be one of'):
        timm.create_model('sk_resnet18', block='inverted')


def test_train_py_keywords():
    """The keywords timm's train.py passes to create_model."""
    model = timm.create_model(
        'sknet26', pretrained=False, in_chans=3, num_classes=11, drop_rate=0.2, drop_path_rate=0.1,
        drop_block_rate=0.1, global_pool='avgmax', bn_momentum=0.2, bn_eps=1e-3, scriptable=True,
        checkpoint_path='')
    assert model.fc.out_features == 11 and model.drop_rate == 0.2
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns and all(m.momentum == 0.2 and m.eps == 1e-3 for m in bns)
    assert model.layer4[-1].drop_path is not None
    model.train()(torch.randn(2, 3, 64, 64)).sum().backward()


def test_pretrained_release_tags():
    tags = set(timm.list_pretrained('sknet*'))
    assert {'sknet50.caffe_in1k', 'sknet101.caffe_in1k'} <= tags
    cfg = timm.models.get_pretrained_cfg('sknet50.caffe_in1k')
    assert cfg.interpolation == 'bilinear' and cfg.crop_pct == 0.875 and cfg.test_input_size == (3, 320, 320)
    # timm's normalisation (x/255 - mean)/std must give the release's 0..255 input minus (123, 117, 104) in RGB
    pixel = torch.tensor([0., 50., 255.])
    for c, caffe_mean in enumerate((123., 117., 104.)):
        normalised = (pixel / 255 - cfg.mean[c]) / cfg.std[c]
        assert torch.allclose(normalised, pixel - caffe_mean, atol=1e-4)


def test_pretrained_load_adapts_in_chans_and_num_classes(tmp_path):
    source = timm.create_model('sknet26').eval()
    path = tmp_path / 'model.safetensors'
    save_file(source.state_dict(), str(path))
    model = timm.create_model(
        'sknet26', pretrained=True, pretrained_cfg_overlay=dict(file=str(path)), in_chans=1, num_classes=10)
    assert torch.allclose(model.conv1.weight, source.conv1.weight.sum(dim=1, keepdim=True))
    assert torch.equal(model.layer3[1].conv2.attn.fc_select.weight, source.layer3[1].conv2.attn.fc_select.weight)
    assert model.fc.out_features == 10


def test_features_only_and_intermediates_give_five_stages():
    model = timm.create_model('sknet50', features_only=True).eval()
    x = torch.randn(1, 3, 128, 128)
    feats = model(x)
    assert model.feature_info.channels() == [64, 256, 512, 1024, 2048]
    assert model.feature_info.reduction() == [2, 4, 8, 16, 32]
    assert [f.shape[1] for f in feats] == [64, 256, 512, 1024, 2048]
    assert [128 // f.shape[-1] for f in feats] == [2, 4, 8, 16, 32]
    full = timm.create_model('sknet50').eval()
    final, inter = full.forward_intermediates(x)
    assert len(inter) == 5 and torch.equal(final, full.forward_features(x))


def test_grad_checkpointing_and_reset_classifier():
    model = timm.create_model('sknet26', num_classes=5).train()
    x = torch.randn(2, 3, 64, 64)
    torch.manual_seed(0)
    ref = model(x)
    model.set_grad_checkpointing(True)
    torch.manual_seed(0)
    out = model(x)
    out.sum().backward()
    assert torch.allclose(out, ref, atol=1e-5)
    model.reset_classifier(3, 'max')
    assert model.get_classifier().out_features == 3 and model(x).shape == (2, 3)


def test_torchscript_and_compile_match_eager():
    """The plain form scripted (the same kernels: relative 1e-6) and compiled (inductor may reorder float
    reductions: relative 1e-5 of the largest logit; compiled with one unit per stage, the same code, to keep the
    compile short). The deploy form: tests/timm_sknet/models/test_deploy.py."""
    model = timm.create_model('sknet26').eval()
    shallow = timm.create_model('sknet26', layers=(1, 1, 1, 1)).eval()
    randomize_norms(model)
    randomize_norms(shallow)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        eager, shallow_eager = model(x), shallow(x)
        scripted = torch.jit.script(model)(x)
        compiled = torch.compile(shallow, fullgraph=True)(x)
    assert (scripted - eager).abs().max() <= 1e-6 * eager.abs().max()
    assert (compiled - shallow_eager).abs().max() <= 1e-5 * shallow_eager.abs().max()

"""Plain timm modules in every mode: in eval under no_grad (how nearly everyone runs inference) the models run every
submodule, so hooks, FX and timm's hook-based feature extraction see the network they see in training (the FLOP
counter: test_architectures.py); and nothing in the package reaches for private torch ops."""
import re
from pathlib import Path

import pytest
import timm
import torch
from torch import nn

import timm_sknet
from timm.models import create_feature_extractor, get_graph_node_names

from support import randomize_norms

# One model per family (release SKNet, CIFAR SKNet, SK-ResNet, SK-ResNeXt, SK-ShuffleNetV2) with
# the input size it is checked at: small, since what is checked does not depend on it.
FAMILY_MODELS = {
    'sknet50': 64, 'sknet29_cifar': 32, 'sk_resnet18': 64, 'sk_resnext50_32x4d': 64, 'sk_shufflenetv2_050': 64,
}
FAMILY_MODELS = {name: size for name, size in FAMILY_MODELS.items() if timm.is_model(name)}
PRIVATE_TORCH = re.compile(r'torch\.(ops\b|_\w+)|from torch\._|\._conv_forward\b|mkldnn')


def _conv_and_norm_names(model: nn.Module):
    return [name for name, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.BatchNorm2d))]


@pytest.mark.parametrize('grad', [False, True], ids=['no_grad', 'grad'])
@pytest.mark.parametrize('name', sorted(FAMILY_MODELS))
def test_hooks_fire_on_every_conv_and_norm_in_eval(name, grad):
    model = timm.create_model(name).eval()
    size = FAMILY_MODELS[name]
    fired = []
    for module_name in _conv_and_norm_names(model):
        model.get_submodule(module_name).register_forward_hook(lambda *args, n=module_name: fired.append(n))
    with torch.set_grad_enabled(grad):
        model(torch.randn(2, 3, size, size))
    assert sorted(set(fired)) == sorted(_conv_and_norm_names(model))


@pytest.mark.parametrize('feature_cls', [None, 'hook', 'fx'])
def test_features_only_gives_five_maps_in_eval_under_no_grad(feature_cls):
    kwargs = {} if feature_cls is None else {'feature_cls': feature_cls}
    model = timm.create_model('sknet50', features_only=True, **kwargs).eval()
    with torch.no_grad():
        feats = model(torch.randn(1, 3, 64, 64))
    assert [f.shape[1] for f in feats] == [64, 256, 512, 1024, 2048]
    assert [64 // f.shape[-1] for f in feats] == [2, 4, 8, 16, 32]


@pytest.mark.parametrize('name', sorted(FAMILY_MODELS))
def test_fx_graph_computes_what_the_model_computes(name):
    """timm's FX feature extraction (torchvision's tracer, then dead-code elimination) keeps every path of every
    selection. Every BatchNorm is randomised so that the residual branches count (zero_init_last hides them at
    init, and with them a traced graph that lost a path)."""
    model = timm.create_model(name).eval()
    randomize_norms(model)
    _, eval_nodes = get_graph_node_names(model)
    traced = create_feature_extractor(model, return_nodes=[eval_nodes[-1]]).eval()
    size = FAMILY_MODELS[name]
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        expected = model(x)
        logits, = traced(x).values()
    assert (logits - expected).abs().max() <= 1e-6 * expected.abs().max()


def test_no_private_torch_ops_in_the_package():
    package = Path(timm_sknet.__file__).parent
    hits = [f'{path.name}:{n}: {line.strip()}' for path in sorted(package.rglob('*.py'))
            for n, line in enumerate(path.read_text().splitlines(), 1) if PRIVATE_TORCH.search(line)]
    assert not hits, hits


def test_the_scan_for_private_ops_would_catch_one():
    for line in ('torch.ops.mkldnn._convolution_pointwise(x)', 'torch._C._nn.foo', 'conv._conv_forward(x, w, b)',
                 'from torch._dynamo import config'):
        assert PRIVATE_TORCH.search(line), line

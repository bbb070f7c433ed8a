"""The SK block (plain and deploy forms) against the reference formulation (timm's: stack the paths, sum, mean,
attention, multiply, sum), written here from the same module parameters with plain functional ops."""
import copy
from functools import partial

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from timm.layers import DropBlock2d, convert_sync_batchnorm, freeze_batch_norm_2d
from timm.models.resnet import downsample_avg, downsample_conv
from timm.utils import reparameterize_model

from timm_sknet.models.sk_conv import SKConv
from timm_sknet.models.sk_resnet import SKBottleneck

from support import randomize_norms

RTOL = 1e-5  # fp32, relative to the largest magnitude of the compared tensor
RTOL_FP64 = 1e-9  # gradients are compared in fp64, where the two formulations agree to rounding


def _bn(x: torch.Tensor, bn: nn.Module, act: bool) -> torch.Tensor:
    # Batch statistics in training (no running-stat update, so both sides see the same buffers).
    if bn.training:
        x = F.batch_norm(x, None, None, bn.weight, bn.bias, True, 0., bn.eps)
    else:
        x = F.batch_norm(x, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0., bn.eps)
    return F.relu(x) if act else x


def _conv_bn(x: torch.Tensor, cna: nn.Module, act: bool = True) -> torch.Tensor:
    c = cna.conv
    return _bn(F.conv2d(x, c.weight, c.bias, c.stride, c.padding, c.dilation, c.groups), cna.bn, act)


def reference_sk(sk: SKConv, x: torch.Tensor) -> torch.Tensor:
    inputs = torch.split(x, sk.path_in_channels, 1) if sk.split_input else [x] * sk.num_paths
    feats = torch.stack([_conv_bn(inp, path) for inp, path in zip(inputs, sk.paths)], dim=1)
    if sk.attn is None:
        return feats.sum(1)
    attn = sk.attn
    pooled = feats.sum(1).mean((2, 3), keepdim=True)
    a = _bn(F.conv2d(pooled, attn.fc_reduce.weight), attn.bn, act=True)
    a = F.conv2d(a, attn.fc_select.weight)
    a = a.view(a.shape[0], sk.num_paths, -1, 1, 1).softmax(dim=1)
    return (feats * a).sum(1)


def reference_bottleneck(block: SKBottleneck, x: torch.Tensor) -> torch.Tensor:
    out = _conv_bn(reference_sk(block.conv2, _conv_bn(x, block.conv1)), block.conv3, act=False)
    shortcut = x
    if block.downsample is not None:  # timm's Sequential([avg pool,] conv, norm)
        *pools, conv, norm = block.downsample
        for pool in pools:
            shortcut = pool(shortcut)
        conv_out = F.conv2d(shortcut, conv.weight, conv.bias, conv.stride, conv.padding, conv.dilation, conv.groups)
        shortcut = _bn(conv_out, norm, act=False)
    return F.relu(out + shortcut)


def _assert_close(actual: torch.Tensor, expected: torch.Tensor, what: str, rtol: float = RTOL) -> None:
    assert actual.shape == expected.shape, what
    err = (actual - expected).abs().max().item()
    scale = expected.abs().max().item()
    assert err <= rtol * scale, f'{what}: max abs error {err:.3g} > {rtol} x {scale:.3g}'


def _inputs(batch: int, channels: int, size: int, memory_format) -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    return torch.randn(batch, channels, size, size, generator=gen).contiguous(memory_format=memory_format)


def _check_against_reference(module, reference, x, training: bool) -> None:
    """fp32 outputs (in eval also under inference mode, and of the deploy form); gradients of input and parameters
    in fp64, where fp32 rounding, amplified by batch-statistics BN on a handful of pooled vectors, cannot hide a
    real error."""
    module.train(training)
    with torch.no_grad():
        expected = reference(module, x)
        _assert_close(module(x), expected, 'output')
    if not training:
        with torch.inference_mode():
            _assert_close(module(x), expected, 'inference-mode output')
            deployed = reparameterize_model(module)
            assert not any(isinstance(m, nn.BatchNorm2d) for m in deployed.modules()), 'a BatchNorm was not folded'
            _assert_close(deployed(x), expected, 'deploy-form output')

    module64 = copy.deepcopy(module).double()
    params = list(module64.parameters())
    ref_x = x.detach().double().requires_grad_()
    fast_x = x.detach().double().requires_grad_()
    expected, actual = reference(module64, ref_x), module64(fast_x)
    _assert_close(actual, expected, 'fp64 output', RTOL_FP64)
    grad_out = torch.randn(expected.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    ref_grads = torch.autograd.grad(expected, [ref_x] + params, grad_out)
    fast_grads = torch.autograd.grad(actual, [fast_x] + params, grad_out)
    names = ['input'] + [n for n, _ in module64.named_parameters()]
    for name, got, want in zip(names, fast_grads, ref_grads):
        _assert_close(got, want, f'grad of {name}', RTOL_FP64)


MEMORY_FORMATS = [
    pytest.param(torch.contiguous_format, id='nchw'),
    pytest.param(torch.channels_last, id='channels_last'),
]


@pytest.mark.parametrize('memory_format', MEMORY_FORMATS)
@pytest.mark.parametrize('training', [False, True], ids=['eval', 'train'])
@pytest.mark.parametrize('num_paths, groups', [(2, 1), (2, 8), (3, 1), (3, 8)])
def test_sk_conv_matches_reference(num_paths, groups, training, memory_format):
    torch.manual_seed(0)
    sk = SKConv(32, 32, kernel_size=(3, 5, 7)[:num_paths], groups=groups, attn_channels=16)
    randomize_norms(sk)
    sk = sk.to(memory_format=memory_format)
    _check_against_reference(sk, reference_sk, _inputs(3, 32, 12, memory_format), training)


@pytest.mark.parametrize('memory_format', MEMORY_FORMATS)
@pytest.mark.parametrize('kwargs', [
    pytest.param(dict(split_input=True), id='split_input'),
    pytest.param(dict(attention=False), id='plain_sum'),
    pytest.param(dict(stride=2, dilation=2, groups=4), id='stride_dilation'),
    pytest.param(dict(kernel_size=(3,)), id='single_path'),
])
def test_sk_conv_variants_match_reference(kwargs, memory_format):
    torch.manual_seed(0)
    sk = SKConv(32, 48, attn_channels=16, **kwargs)
    randomize_norms(sk)
    sk = sk.to(memory_format=memory_format)
    for training in (False, True):
        _check_against_reference(sk, reference_sk, _inputs(2, 32, 12, memory_format), training)


@pytest.mark.parametrize('memory_format', MEMORY_FORMATS)
def test_bottleneck_matches_reference(memory_format):
    torch.manual_seed(0)
    block = SKBottleneck(128, 32, cardinality=8, base_width=16, sk_kwargs=dict(attn_channels=16))
    randomize_norms(block)
    block = block.to(memory_format=memory_format)
    for training in (False, True):
        _check_against_reference(block, reference_bottleneck, _inputs(2, 128, 8, memory_format), training)


@pytest.mark.parametrize('memory_format', MEMORY_FORMATS)
@pytest.mark.parametrize('downsample', [downsample_conv, downsample_avg], ids=['conv', 'avg_down'])
def test_strided_bottleneck_with_downsample_matches_reference(downsample, memory_format):
    torch.manual_seed(0)
    block = SKBottleneck(
        64, 32, stride=2, cardinality=8, base_width=16, sk_kwargs=dict(attn_channels=16),
        downsample=downsample(64, 128, kernel_size=1, stride=2))
    assert list(block.downsample.state_dict()) == list(downsample(64, 128, 1, stride=2).state_dict())
    randomize_norms(block)
    block = block.to(memory_format=memory_format)
    x = _inputs(2, 64, 16, memory_format)
    for training in (False, True):
        _check_against_reference(block, reference_bottleneck, x, training)


def test_drop_block_is_inactive_in_eval():
    torch.manual_seed(0)
    block = SKBottleneck(
        64, 16, cardinality=4, base_width=32, sk_kwargs=dict(attn_channels=16),
        drop_block=partial(DropBlock2d, drop_prob=0.5, block_size=3))
    randomize_norms(block)
    block = block.to(memory_format=torch.channels_last)
    _check_against_reference(block, reference_bottleneck, _inputs(2, 64, 8, torch.channels_last), training=False)


def test_attention_hook_sees_the_selection_weights():
    torch.manual_seed(0)
    sk = SKConv(32, 32, kernel_size=(3, 5, 7), groups=4, attn_channels=16).eval()
    randomize_norms(sk)
    seen = []
    sk.attn.register_forward_hook(lambda module, args, output: seen.append(output))
    x = _inputs(2, 32, 10, torch.channels_last)
    with torch.inference_mode():
        sk(x)
    weights, = seen
    assert weights.shape == (2, 3, 32, 1, 1)
    feats = torch.stack([_conv_bn(x, path) for path in sk.paths], 1)
    pooled = feats.sum(1).mean((2, 3), keepdim=True)
    a = F.conv2d(_bn(F.conv2d(pooled, sk.attn.fc_reduce.weight), sk.attn.bn, True), sk.attn.fc_select.weight)
    _assert_close(weights, a.view(2, 3, 32, 1, 1).softmax(1), 'selection weights')


def test_frozen_and_sync_batchnorm_keep_eval_results():
    torch.manual_seed(0)
    block = SKBottleneck(64, 16, cardinality=4, base_width=32, sk_kwargs=dict(attn_channels=16)).eval()
    randomize_norms(block)
    x = _inputs(2, 64, 8, torch.contiguous_format)
    with torch.no_grad():
        expected = reference_bottleneck(block, x)
        _assert_close(convert_sync_batchnorm(block).eval()(x), expected, 'SyncBatchNorm')
        _assert_close(freeze_batch_norm_2d(block)(x), expected, 'frozen BatchNorm')


@pytest.mark.parametrize('training', [False, True], ids=['eval', 'train'])
def test_torchscript_matches_eager(training):
    torch.manual_seed(0)
    block = SKBottleneck(64, 16, cardinality=4, base_width=32, sk_kwargs=dict(attn_channels=16))
    randomize_norms(block)
    block.train(training)
    scripted = torch.jit.script(block)
    for memory_format in (torch.contiguous_format, torch.channels_last):
        x = _inputs(2, 64, 8, memory_format)
        with torch.no_grad():
            expected = reference_bottleneck(block, x)
            _assert_close(scripted(x), expected, 'scripted')
            _assert_close(block(x), expected, 'eager')


def test_torch_compile_matches_eager():
    torch.manual_seed(0)
    sk = SKConv(32, 32, groups=4, attn_channels=16)
    randomize_norms(sk)
    compiled = torch.compile(sk, backend='inductor', dynamic=False, fullgraph=True)  # a graph break fails
    x = _inputs(2, 32, 8, torch.channels_last)
    grad_out = torch.randn(2, 32, 8, 8, generator=torch.Generator().manual_seed(2))
    for training in (False, True):
        sk.train(training)
        fast_x, ref_x = x.clone().requires_grad_(), x.clone().requires_grad_()
        expected, actual = reference_sk(sk, ref_x), compiled(fast_x)
        mode = 'train' if training else 'eval'
        _assert_close(actual, expected, f'compiled output ({mode})')
        _assert_close(
            torch.autograd.grad(actual, fast_x, grad_out)[0], torch.autograd.grad(expected, ref_x, grad_out)[0],
            f'compiled input grad ({mode})')
        with torch.no_grad():
            _assert_close(compiled(x), expected, f'compiled no-grad output ({mode})')

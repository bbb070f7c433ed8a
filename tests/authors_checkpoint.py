"""The SKNet authors' PyTorch SK-ResNets as the issue describes them, written here without their code or ours:
a state dict under their names with random (trained-looking) values, the checkpoint file their training script
saves, and the network's forward in plain ``torch.nn.functional`` over that state dict.

Their unit (PytorchInsight, ``resnet_sk.py``): 1x1 conv to ``planes``; two 3x3 paths on the full width, ``conv2``
dense and ``conv2g`` with groups 32, both with the unit's stride, each conv-BN-ReLU; attention on the pooled sum,
``conv_fc1`` (planes -> planes // 16, no bias) -> BN -> ReLU -> ``conv_fc2`` (-> 2 x planes, no bias) viewed as
(2, planes) -> softmax over the paths; the weighted sum -> 1x1 ``conv3`` to 4 x planes -> BN; the shortcut a 1x1
conv + BN (``downsample``) in each stage's first unit; add, ReLU. Around it torchvision's ResNet: 7x7 stem, BN,
ReLU, 3x3 max pool (stride 2, pad 1), four stages of widths 64..512, global average, ``fc``.
"""
from pathlib import Path
from typing import Dict, Sequence

import torch
import torch.nn.functional as F

DEPTHS = {'sk_resnet50': (3, 4, 6, 3), 'sk_resnet101': (3, 4, 23, 3)}
PUBLISHED_PARAMS_M = {'sk_resnet50': 26.15, 'sk_resnet101': 45.68}  # PytorchInsight's README, in millions
WIDTHS = (64, 128, 256, 512)
GROUPS = 32
EPOCH, ACC, BEST_ACC = 100, 77.538, 77.61  # what the file records, as their script saves it


def _shapes(depths: Sequence[int]) -> Dict[str, tuple]:
    """Their state dict's names and shapes (BatchNorms as ``name: channels``, expanded by the caller)."""
    convs, norms = {'conv1': (64, 3, 7, 7)}, {'bn1': 64}
    in_channels = 64
    for stage, (planes, units) in enumerate(zip(WIDTHS, depths), 1):
        for unit in range(units):
            p = f'layer{stage}.{unit}.'
            convs.update({
                p + 'conv1': (planes, in_channels, 1, 1), p + 'conv2': (planes, planes, 3, 3),
                p + 'conv2g': (planes, planes // GROUPS, 3, 3), p + 'conv_fc1': (planes // 16, planes, 1, 1),
                p + 'conv_fc2': (2 * planes, planes // 16, 1, 1), p + 'conv3': (4 * planes, planes, 1, 1)})
            norms.update({p + 'bn1': planes, p + 'bn2': planes, p + 'bn2g': planes, p + 'bn_fc1': planes // 16,
                          p + 'bn3': 4 * planes})
            if unit == 0:
                convs[p + 'downsample.0'] = (4 * planes, in_channels, 1, 1)
                norms[p + 'downsample.1'] = 4 * planes
            in_channels = 4 * planes
    return {'convs': convs, 'norms': norms, 'features': in_channels}


def authors_state_dict(model_name: str, seed: int = 0) -> Dict[str, torch.Tensor]:
    """Random weights under their names, in eval-ready shape: He-scaled convs, BatchNorm statistics and affine
    terms far from their initial values (so every one matters), the residual branches' last BN damped so that
    the activations stay finite through 33 or 100 layers."""
    gen = torch.Generator().manual_seed(seed)
    shapes = _shapes(DEPTHS[model_name])
    state = {}
    for name, shape in shapes['convs'].items():
        fan_in = shape[1] * shape[2] * shape[3]
        state[f'{name}.weight'] = torch.randn(shape, generator=gen) * (2 / fan_in) ** 0.5
    for name, channels in shapes['norms'].items():
        damp = 0.2 if name.endswith(('bn3', 'downsample.1')) else 1.
        state[f'{name}.weight'] = (torch.rand(channels, generator=gen) + 0.5) * damp
        state[f'{name}.bias'] = torch.randn(channels, generator=gen) * 0.1
        state[f'{name}.running_mean'] = torch.randn(channels, generator=gen) * 0.1
        state[f'{name}.running_var'] = torch.rand(channels, generator=gen) + 0.5
        state[f'{name}.num_batches_tracked'] = torch.tensor(500_000)
    state['fc.weight'] = torch.randn(1000, shapes['features'], generator=gen) * 0.02
    state['fc.bias'] = torch.randn(1000, generator=gen) * 0.1
    return state


def parameter_count(state: Dict[str, torch.Tensor]) -> int:
    """Parameters as their flops counter counts them: every weight and bias, no BatchNorm statistics."""
    return sum(t.numel() for name, t in state.items() if name.endswith(('.weight', '.bias')))


def save_authors_checkpoint(path: Path, state: Dict[str, torch.Tensor], *, legacy: bool = True,
                            optimizer: bool = True) -> Path:
    """The file their ``imagenet.py`` writes: ``{'epoch', 'state_dict', 'acc', 'best_acc', 'optimizer'}``, the
    state dict of ``torch.nn.DataParallel`` (``module.`` keys), accuracies as 0-dim tensors, SGD's state with a
    momentum buffer per parameter, keyed by parameter ids as torch 0.4 / 1.0 did; torch's legacy serialization."""
    parameters = [t for name, t in state.items() if name.endswith(('.weight', '.bias'))]
    ids = [140_000_000_000 + 64 * i for i in range(len(parameters))]
    checkpoint = {
        'epoch': EPOCH,
        'state_dict': {f'module.{name}': t for name, t in state.items()},
        'acc': torch.tensor(ACC),
        'best_acc': torch.tensor(BEST_ACC),
    }
    if optimizer:
        checkpoint['optimizer'] = {
            'state': {i: {'momentum_buffer': torch.zeros_like(t)} for i, t in zip(ids, parameters)},
            'param_groups': [{'lr': 0.0001, 'momentum': 0.9, 'dampening': 0, 'weight_decay': 0.0001,
                              'nesterov': False, 'params': ids}],
        }
    torch.save(checkpoint, path, _use_new_zipfile_serialization=not legacy)
    return path


def authors_forward(state: Dict[str, torch.Tensor], x: torch.Tensor, model_name: str) -> torch.Tensor:
    """Their network in eval mode, in plain functional ops over their state dict (BatchNorm eps 1e-5)."""
    def bn(y: torch.Tensor, name: str) -> torch.Tensor:
        return F.batch_norm(y, state[f'{name}.running_mean'], state[f'{name}.running_var'],
                            state[f'{name}.weight'], state[f'{name}.bias'], training=False, eps=1e-5)

    x = F.relu(bn(F.conv2d(x, state['conv1.weight'], stride=2, padding=3), 'bn1'))
    x = F.max_pool2d(x, 3, stride=2, padding=1)
    for stage, (planes, units) in enumerate(zip(WIDTHS, DEPTHS[model_name]), 1):
        for unit in range(units):
            p = f'layer{stage}.{unit}.'
            stride = 2 if stage > 1 and unit == 0 else 1
            out = F.relu(bn(F.conv2d(x, state[p + 'conv1.weight']), p + 'bn1'))
            dense = F.relu(bn(F.conv2d(out, state[p + 'conv2.weight'], stride=stride, padding=1), p + 'bn2'))
            grouped = F.relu(bn(F.conv2d(out, state[p + 'conv2g.weight'], stride=stride, padding=1,
                                         groups=GROUPS), p + 'bn2g'))
            pooled = dense.mean((2, 3), keepdim=True) + grouped.mean((2, 3), keepdim=True)
            z = F.relu(bn(F.conv2d(pooled, state[p + 'conv_fc1.weight']), p + 'bn_fc1'))
            weights = F.conv2d(z, state[p + 'conv_fc2.weight']).view(-1, 2, planes, 1, 1).softmax(dim=1)
            selected = dense * weights[:, 0] + grouped * weights[:, 1]
            out = bn(F.conv2d(selected, state[p + 'conv3.weight']), p + 'bn3')
            shortcut = x
            if unit == 0:
                shortcut = bn(F.conv2d(x, state[p + 'downsample.0.weight'], stride=stride), p + 'downsample.1')
            x = F.relu(out + shortcut)
    return F.linear(x.mean((2, 3)), state['fc.weight'], state['fc.bias'])

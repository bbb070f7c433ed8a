"""convert-pytorchinsight on checkpoints in the SKNet authors' exact format (random weights): what it writes, and
that ``pretrained=True`` then gives the logits of the authors' network, computed in plain functional ops over
their state dict (``authors_checkpoint.authors_forward``), not by this project's modules."""
import hashlib
import json
import subprocess
import sys
import zipfile

import pytest
import timm
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from authors_checkpoint import (
    ACC, BEST_ACC, EPOCH, PUBLISHED_PARAMS_M, authors_forward, authors_state_dict, parameter_count,
    save_authors_checkpoint)
from hub_helpers import FAIL_SCRIPT, client_env, free_port
from support import run_cli
from timm_sknet.weights.release import PYTORCHINSIGHT_URL
from timm_sknet.weights.store import PROVENANCE_KEYS, STORE_ENV

RELATIVE_TOLERANCE = 1e-5


def _assert_same_logits(model: torch.nn.Module, state, model_name: str, size: int) -> None:
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = authors_forward(state, x, model_name)
        logits = model.eval()(x)
    error = float((logits - expected).abs().max() / expected.abs().max())
    assert error < RELATIVE_TOLERANCE, error
    assert float(expected.std()) > 0.1  # logits that differ from class to class: every weight counts


def test_the_test_checkpoint_is_the_authors_format(sk_resnet50_checkpoint, sk_resnet50_state):
    """What the tests convert is what the authors' training script writes, with their published parameter count."""
    assert round(parameter_count(sk_resnet50_state) / 1e6, 2) == PUBLISHED_PARAMS_M['sk_resnet50']
    assert not zipfile.is_zipfile(sk_resnet50_checkpoint)  # torch's legacy serialization
    loaded = torch.load(sk_resnet50_checkpoint, weights_only=True)
    assert loaded.keys() == {'epoch', 'state_dict', 'acc', 'best_acc', 'optimizer'}
    assert all(key.startswith('module.') for key in loaded['state_dict'])
    assert len(loaded['optimizer']['state']) == sum(key.endswith(('weight', 'bias')) for key in sk_resnet50_state)


def test_install_then_pretrained_gives_the_authors_logits(
        sk_resnet50_checkpoint, sk_resnet50_state, convert_pytorchinsight, tmp_path, monkeypatch, capsys):
    store = tmp_path / 'store'
    monkeypatch.setenv(STORE_ENV, str(store))
    installed = store / 'sk_resnet50.pytorchinsight_in1k' / 'model.safetensors'
    code, out, err = convert_pytorchinsight(sk_resnet50_checkpoint, '--model', 'sk_resnet50', '--install')
    assert code == 0, err
    assert out.splitlines() == [
        f'sk_resnet50.pth.tar: {len(sk_resnet50_state)} tensors -> {len(sk_resnet50_state)} tensors of sk_resnet50 '
        f'(optimizer state dropped; the file records epoch {EPOCH}, acc {ACC}, best_acc {BEST_ACC})',
        f"installed sk_resnet50.pytorchinsight_in1k as {installed}; timm.create_model('sk_resnet50', "
        'pretrained=True) loads it']
    assert sorted(p.name for p in installed.parent.iterdir()) == ['install.json', 'model.safetensors']

    with safe_open(str(installed), framework='pt') as f:
        metadata = f.metadata()
    assert set(PROVENANCE_KEYS) <= metadata.keys()
    assert metadata['source_file'] == 'sk_resnet50.pth.tar' and metadata['model_name'] == 'sk_resnet50'
    assert metadata['source_size'] == str(sk_resnet50_checkpoint.stat().st_size)
    assert metadata['source_sha256'] == hashlib.sha256(sk_resnet50_checkpoint.read_bytes()).hexdigest()
    assert (metadata['source_epoch'], metadata['source_acc'], metadata['source_best_acc']) == (
        str(EPOCH), str(ACC), str(BEST_ACC))
    assert run_cli(monkeypatch, 'installed') == 0
    assert capsys.readouterr().out.splitlines()[1:] == [
        f'sk_resnet50.pytorchinsight_in1k  {installed}  ({installed.stat().st_size:,} bytes)',
        '  checked: as installed (size and sha256), fits its model, every value finite',
        f"  converted from sk_resnet50.pth.tar ({sk_resnet50_checkpoint.stat().st_size:,} bytes, sha256 "
        f"{metadata['source_sha256']}) for sk_resnet50 by timm-sknet {metadata['timm_sknet_version']}",
        f'  the checkpoint records epoch {EPOCH}, acc {ACC}, best_acc {BEST_ACC}']

    model = timm.create_model('sk_resnet50', pretrained=True)
    assert model.pretrained_cfg['tag'] == 'pytorchinsight_in1k'
    assert model.pretrained_cfg['mean'] == timm.data.IMAGENET_DEFAULT_MEAN and model.pretrained_cfg['crop_pct'] == 0.875
    _assert_same_logits(model, sk_resnet50_state, 'sk_resnet50', 96)


def test_sk_resnet101_converts_with_the_authors_logits(convert_pytorchinsight, tmp_path, monkeypatch):
    monkeypatch.setenv(STORE_ENV, str(tmp_path / 'empty-store'))
    state = authors_state_dict('sk_resnet101', seed=1)
    assert round(parameter_count(state) / 1e6, 2) == PUBLISHED_PARAMS_M['sk_resnet101']
    checkpoint = save_authors_checkpoint(tmp_path / 'sk_resnet101.pth.tar', state)
    output = tmp_path / 'sk_resnet101.safetensors'
    code, out, err = convert_pytorchinsight(checkpoint, '--model', 'sk_resnet101', '--output', output)
    assert code == 0, err
    assert out.splitlines()[-1] == (
        f"wrote {output}; load it with timm.create_model('sk_resnet101', pretrained=True, "
        f"pretrained_cfg_overlay=dict(file='{output}')), or convert with --install instead of --output")
    model = timm.create_model('sk_resnet101', pretrained=True, pretrained_cfg_overlay=dict(file=str(output)))
    _assert_same_logits(model, state, 'sk_resnet101', 64)


def test_without_the_weights_the_error_says_how_to_convert_them(tmp_path):
    """No installed copy, the Hub off: the guiding error names the authors' repository and the command."""
    env = client_env(f'http://127.0.0.1:{free_port()}', tmp_path / 'hf', tmp_path / 'empty-store')
    env['HF_HUB_OFFLINE'] = '1'
    proc = subprocess.run([sys.executable, '-c', FAIL_SCRIPT, 'sk_resnet101'], env=env, capture_output=True,
                          text=True, timeout=120)
    failure = json.loads(proc.stdout.splitlines()[-1])
    assert 'PretrainedWeightsNotFoundError' in failure['types']
    assert failure['message'].startswith('sk_resnet101.pytorchinsight_in1k has no pretrained weights here: ')
    assert failure['message'].endswith(
        f'To install them: download the sk_resnet101 checkpoint linked from {PYTORCHINSIGHT_URL} (README), then run: '
        'convert-pytorchinsight sk_resnet101.pth.tar --model sk_resnet101 --install')


# Their script saved from the GPU: every storage is tagged cuda:0. A torch.save in another process with a tagger that
# says so writes the same bytes as a CUDA save would, on a machine without a GPU.
_RESAVE_FROM_GPU = """
import sys, torch
torch.serialization.register_package(1, lambda storage: 'cuda:0', lambda storage, location: None)
torch.save(torch.load(sys.argv[1], weights_only=True), sys.argv[2], _use_new_zipfile_serialization=False)
"""


@pytest.mark.parametrize('variant', ['zip serialization', 'no batch counts', 'parameters', 'saved from the GPU'])
def test_other_torch_versions_files(variant, sk_resnet50_state, sk_resnet50_checkpoint, convert_pytorchinsight,
                                    tmp_path):
    """A checkpoint re-saved by a torch of the zip era converts alike; one from a torch before 0.4.1 has no
    BatchNorm num_batches_tracked, which are then left at 0; one saved with state_dict(keep_vars=True) holds
    parameters that require grad; one saved from the GPU, as theirs were, converts on a machine without one."""
    state = dict(sk_resnet50_state)
    if variant == 'no batch counts':
        state = {k: v for k, v in state.items() if not k.endswith('num_batches_tracked')}
    elif variant == 'parameters':
        state = {k: torch.nn.Parameter(v) if v.is_floating_point() else v for k, v in state.items()}
    checkpoint = tmp_path / 'sk_resnet50.pth.tar'
    if variant == 'saved from the GPU':
        subprocess.run([sys.executable, '-c', _RESAVE_FROM_GPU, str(sk_resnet50_checkpoint), str(checkpoint)],
                       check=True, timeout=300)
        locations = set()
        torch.load(checkpoint, weights_only=True, map_location=lambda s, location: locations.add(location) or s)
        assert locations == {'cuda:0'}
    else:
        save_authors_checkpoint(checkpoint, state, legacy=variant != 'zip serialization')
    output = tmp_path / 'out.safetensors'
    code, _, err = convert_pytorchinsight(checkpoint, '--model', 'sk_resnet50', '--output', output)
    assert code == 0, err
    converted = load_file(str(output))
    counts = [key for key in converted if key.endswith('num_batches_tracked')]
    assert len(counts) == 1 + 16 * 5 + 4  # the stem, five BNs per unit, a projection per stage
    for key in counts:
        assert converted[key].dtype == torch.int64
        assert int(converted[key]) == (0 if variant == 'no batch counts' else 500_000)
    assert torch.equal(converted['layer3.5.conv2.paths.1.conv.weight'], sk_resnet50_state['layer3.5.conv2g.weight'])
    assert torch.equal(converted['layer4.2.conv2.attn.fc_select.weight'], sk_resnet50_state['layer4.2.conv_fc2.weight'])

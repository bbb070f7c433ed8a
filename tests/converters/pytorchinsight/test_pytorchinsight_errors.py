"""Bad input to convert-pytorchinsight: one line naming the problem, exit code 2, no traceback, nothing written;
a checkpoint whose pickle would run code runs none of it; --output / --install / --force as convert-caffe."""
import builtins
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from authors_checkpoint import save_authors_checkpoint
from timm_sknet.weights.store import STORE_ENV

PROG = 'convert-pytorchinsight: error:'
REPO = Path(__file__).resolve().parents[3]


def _args(checkpoint, out_dir, model='sk_resnet50'):
    return checkpoint, '--model', model, '--output', out_dir / 'out.safetensors'


def _edited_checkpoint(tmp_path: Path, state, **edits) -> Path:
    """The authors' checkpoint of ``state`` with some tensors replaced (a value) or removed (None)."""
    state = dict(state)
    for key, value in edits.items():
        if value is None:
            del state[key]
        else:
            state[key] = value
    return save_authors_checkpoint(tmp_path / 'edited.pth.tar', state, optimizer=False)


class _WritesMarker:
    """Unpickled by a plain pickle loader, this calls open(marker, 'w'): a file appears."""
    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return builtins.open, (self.marker, 'w')


@pytest.mark.parametrize('legacy', [True, False], ids=['legacy', 'zip'])
def test_a_pickle_that_would_run_code_is_refused_and_runs_nothing(legacy, sk_resnet50_state, tmp_path, out_dir):
    marker = tmp_path / 'code-ran'
    checkpoint = tmp_path / 'sk_resnet50.pth.tar'
    torch.save({'epoch': 1, 'state_dict': {'module.fc.bias': sk_resnet50_state['fc.bias']},
                'optimizer': _WritesMarker(marker)}, checkpoint, _use_new_zipfile_serialization=not legacy)
    proc = subprocess.run(
        [sys.executable, '-m', 'converters.pytorchinsight.cli', *map(str, _args(checkpoint, out_dir))],
        capture_output=True, text=True, cwd=REPO, timeout=300)
    assert proc.returncode == 2 and proc.stdout == ''
    assert proc.stderr == (
        f'{PROG} checkpoint {checkpoint} needs code to load (its pickle calls io.open, which is not a tensor, '
        'container or number), so none of it was run; convert the checkpoint PytorchInsight published\n')
    assert not marker.exists() and list(out_dir.iterdir()) == []
    torch.load(checkpoint, weights_only=False)  # the payload is live: a plain unpickler runs it
    assert marker.exists()


def test_a_missing_tensor(sk_resnet50_state, tmp_path, out_dir, refused_conversion):
    checkpoint = _edited_checkpoint(tmp_path, sk_resnet50_state, **{'layer2.1.bn_fc1.running_var': None})
    assert refused_conversion(*_args(checkpoint, out_dir)) == (
        f"{PROG} the checkpoint has no layer2.1.bn_fc1.running_var (for sk_resnet50's "
        'layer2.1.conv2.attn.bn.running_var), nor 0 other tensors sk_resnet50 needs: it is incomplete or of another '
        'architecture')


def test_an_extra_tensor(sk_resnet50_state, tmp_path, out_dir, refused_conversion):
    checkpoint = _edited_checkpoint(tmp_path, sk_resnet50_state, **{'layer1.0.se.fc.weight': torch.ones(4, 256)})
    assert refused_conversion(*_args(checkpoint, out_dir)) == (
        f"{PROG} 1 tensors of the checkpoint have no place in sk_resnet50, e.g. module.layer1.0.se.fc.weight: it "
        "holds another architecture than PytorchInsight's sk_resnet50 / sk_resnet101")


def test_a_name_with_a_newline_stays_one_line(sk_resnet50_state, tmp_path, out_dir, refused_conversion):
    checkpoint = _edited_checkpoint(tmp_path, sk_resnet50_state, **{'layer1.0.bad\nname.weight': torch.ones(1)})
    assert 'e.g. module.layer1.0.bad\\nname.weight: it holds' in refused_conversion(*_args(checkpoint, out_dir))


def test_a_mis_shaped_tensor(sk_resnet50_state, tmp_path, out_dir, refused_conversion):
    """An attention width of planes // 32 instead of their planes // 16."""
    narrow = torch.ones(8, 256, 1, 1)
    checkpoint = _edited_checkpoint(tmp_path, sk_resnet50_state, **{'layer3.2.conv_fc1.weight': narrow})
    assert refused_conversion(*_args(checkpoint, out_dir)) == (
        f"{PROG} module.layer3.2.conv_fc1.weight is 8x256x1x1, sk_resnet50's layer3.2.conv2.attn.fc_reduce.weight "
        '16x256x1x1: the checkpoint is of another geometry (--model wrong?)')


def test_an_integer_tensor_for_a_weight(sk_resnet50_state, tmp_path, out_dir, refused_conversion):
    checkpoint = _edited_checkpoint(tmp_path, sk_resnet50_state, **{'fc.bias': torch.zeros(1000, dtype=torch.int64)})
    assert refused_conversion(*_args(checkpoint, out_dir)) == (
        f"{PROG} module.fc.bias holds torch.int64 values, sk_resnet50's fc.bias torch.float32: the checkpoint is "
        'damaged or of another model')


@pytest.mark.parametrize('entry, kind', [
    (0.5, 'float'), (torch.eye(1000).to_sparse(), 'torch.sparse_coo tensor')], ids=['number', 'sparse'])
def test_an_entry_that_is_not_a_dense_tensor(entry, kind, sk_resnet50_state, tmp_path, out_dir, refused_conversion):
    checkpoint = _edited_checkpoint(tmp_path, sk_resnet50_state, **{'fc.bias': entry})
    assert refused_conversion(*_args(checkpoint, out_dir)) == (
        f"{PROG} checkpoint {checkpoint}: state_dict entry 'module.fc.bias' is a {kind}, not a dense tensor; it is "
        'not a PytorchInsight checkpoint')


def test_a_key_that_is_not_a_name(sk_resnet50_state, tmp_path, out_dir, refused_conversion):
    checkpoint = tmp_path / 'numbered.pth.tar'
    torch.save({'epoch': 1, 'state_dict': {0: sk_resnet50_state['fc.bias']}}, checkpoint,
               _use_new_zipfile_serialization=False)
    assert refused_conversion(*_args(checkpoint, out_dir)) == (
        f'{PROG} checkpoint {checkpoint}: state_dict has a key 0 that is not a name; it is not a PytorchInsight '
        'checkpoint')


def test_non_finite_values(sk_resnet50_state, tmp_path, out_dir, refused_conversion):
    variance = sk_resnet50_state['layer4.1.bn2g.running_var'].clone()
    variance[[3, 7]] = torch.tensor([float('nan'), float('inf')])
    checkpoint = _edited_checkpoint(tmp_path, sk_resnet50_state, **{'layer4.1.bn2g.running_var': variance})
    assert refused_conversion(*_args(checkpoint, out_dir)) == (
        f'{PROG} 1 tensors of the checkpoint hold NaN or Inf, e.g. module.layer4.1.bn2g.running_var (2 values): the '
        'file is damaged; download it again')


def test_the_other_depth(sk_resnet50_checkpoint, out_dir, refused_conversion):
    assert refused_conversion(*_args(sk_resnet50_checkpoint, out_dir, model='sk_resnet101')) == (
        f"{PROG} the checkpoint's stages have 3/4/6/3 units, sk_resnet101's 3/4/23/3: it is another model "
        '(--model sk_resnet101 is wrong?)')


def test_a_file_without_state_dict(sk_resnet50_state, tmp_path, out_dir, refused_conversion):
    bare = tmp_path / 'bare.pth'
    torch.save(sk_resnet50_state, bare)
    err = refused_conversion(*_args(bare, out_dir))
    first_keys = ', '.join(list(sk_resnet50_state)[:3])
    assert err == (f"{PROG} checkpoint {bare} has no 'state_dict' (it holds {len(sk_resnet50_state)} keys, e.g. "
                   f"{first_keys}): it is not a PytorchInsight checkpoint, whose training script saves {{'epoch', "
                   "'state_dict', 'acc', 'best_acc', 'optimizer'}")


@pytest.mark.parametrize('damage, reason', [
    ('random bytes', 'Unsupported operand'),
    ('truncated', 'unexpected EOF, expected'),
])
def test_damaged_files(damage, reason, sk_resnet50_checkpoint, tmp_path, out_dir, refused_conversion):
    damaged = tmp_path / 'damaged.pth.tar'
    if damage == 'random bytes':
        damaged.write_bytes(np.random.default_rng(1).bytes(1 << 16))
    else:
        damaged.write_bytes(sk_resnet50_checkpoint.read_bytes()[:50_000_000])
    err = refused_conversion(*_args(damaged, out_dir))
    assert err.startswith(f'{PROG} checkpoint {damaged} is truncated or not a PyTorch checkpoint (')
    assert reason in err and err.endswith('); download it again')


def test_missing_empty_or_a_directory(tmp_path, out_dir, refused_conversion):
    missing, empty = tmp_path / 'nope.pth.tar', tmp_path / 'empty.pth.tar'
    empty.touch()
    assert refused_conversion(*_args(missing, out_dir)) == f'{PROG} checkpoint {missing} does not exist'
    assert refused_conversion(*_args(empty, out_dir)) == f'{PROG} checkpoint {empty} is empty'
    assert refused_conversion(*_args(tmp_path, out_dir)) == (
        f'{PROG} checkpoint {tmp_path} is a directory; give the checkpoint file itself')


def test_an_output_timm_would_unpickle(sk_resnet50_checkpoint, out_dir, refused_conversion):
    output = out_dir / 'sk_resnet50.pth'
    assert refused_conversion(sk_resnet50_checkpoint, '--model', 'sk_resnet50', '--output', output) == (
        f'{PROG} {output} does not end in .safetensors: timm would open it with torch.load, which unpickles it and '
        f'fails on safetensors data; name it {out_dir / "sk_resnet50.safetensors"}')


def test_an_existing_output_is_replaced_only_with_force(sk_resnet50_checkpoint, out_dir, convert_pytorchinsight):
    output = out_dir / 'out.safetensors'
    output.write_bytes(b'an older file')
    code, _, err = convert_pytorchinsight(*_args(sk_resnet50_checkpoint, out_dir))
    assert code == 2 and err == f'{PROG} {output} already exists; pass --force to overwrite it\n'
    assert output.read_bytes() == b'an older file'
    code, _, err = convert_pytorchinsight(*_args(sk_resnet50_checkpoint, out_dir), '--force')
    assert code == 0, err
    assert 'layer1.0.conv2.attn.fc_select.weight' in load_file(str(output))
    assert os.listdir(out_dir) == ['out.safetensors']  # no staging file left


def test_an_installed_copy_is_replaced_only_with_force(sk_resnet50_checkpoint, tmp_path, monkeypatch,
                                                       convert_pytorchinsight):
    monkeypatch.setenv(STORE_ENV, str(tmp_path / 'store'))
    installed = tmp_path / 'store' / 'sk_resnet50.pytorchinsight_in1k' / 'model.safetensors'
    installed.parent.mkdir(parents=True)
    installed.write_bytes(b'an older copy')
    args = (sk_resnet50_checkpoint, '--model', 'sk_resnet50', '--install')
    code, _, err = convert_pytorchinsight(*args)
    assert code == 2 and err == (f'{PROG} sk_resnet50.pytorchinsight_in1k is already installed ({installed}); pass '
                                 '--force to replace it\n')
    assert installed.read_bytes() == b'an older copy'
    code, _, err = convert_pytorchinsight(*args, '--force')
    assert code == 0, err
    assert 'fc.weight' in load_file(str(installed)) and sorted(os.listdir(installed.parent)) == ['install.json', 'model.safetensors']
    code, _, err = convert_pytorchinsight(*args, '--output', tmp_path / 'x.safetensors')
    assert code == 2 and 'argument --output: not allowed with argument --install' in err


def test_help_is_plain_text_and_imports_neither_torch_nor_timm():
    probe = ("import runpy, sys\n"
             "sys.argv = ['convert-pytorchinsight', '--help']\n"
             "try:\n"
             "    runpy.run_module('converters.pytorchinsight.cli', run_name='__main__')\n"
             "except SystemExit as e:\n"
             "    assert e.code == 0\n"
             "print(sorted(m for m in ('torch', 'timm') if m in sys.modules))\n")
    proc = subprocess.run([sys.executable, '-c', probe], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith('usage: convert-pytorchinsight') and '``' not in proc.stdout
    assert '--install' in proc.stdout and proc.stdout.splitlines()[-1] == '[]'

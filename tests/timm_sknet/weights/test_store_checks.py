"""The store knows what it holds: damaged, changed, ill-fitting and non-finite installed copies, each marked by
``timm-sknet installed`` with the command that mends it, and refused by ``create_model(..., pretrained=True)`` in one
exception naming the file, the problem and the mend. Real files in a real store, every command in a subprocess;
the store is byte for byte the same after each command (nothing here writes to it)."""
import json
import struct
import subprocess
import sys
from pathlib import Path
from typing import Callable, Dict

import numpy as np
import pytest
import timm
import torch
from safetensors.torch import save_file

from hub_helpers import BIN_DIR, FAIL_SCRIPT, client_env, free_port
from timm_sknet.io.errors import UserError
from timm_sknet.io.files import sha256_file
from timm_sknet.weights.loading import create_model_with_weights

NAME = 'sk_shufflenetv2_050.untrained'  # the smallest model: the store holds any <model>.<tag> timm-sknet registers
RUN_TIMEOUT_S = 300


def _snapshot(root: Path) -> Dict[str, str]:
    return {str(p.relative_to(root)): sha256_file(p) for p in sorted(root.rglob('*')) if p.is_file()}


def _record(slot: Path) -> None:
    """The install record convert-caffe --install writes beside the copy (issue 20's agreed format)."""
    weights = slot / 'model.safetensors'
    record = {'sha256': sha256_file(weights), 'size': weights.stat().st_size, 'model': NAME,
              'installed_by': 'convert-caffe'}
    (slot / 'install.json').write_text(json.dumps(record))


def _state() -> Dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return timm.create_model('sk_shufflenetv2_050').state_dict()


def _env(tmp_path: Path, store: Path) -> Dict[str, str]:
    env = client_env(f'http://127.0.0.1:{free_port()}', tmp_path / 'hf', store)
    env['HF_HUB_OFFLINE'] = '1'
    return env


# Each case damages a good installed copy (with its record) as it happens: after install (the record then shows the
# change) or by installing the wrong file (the record matches it). -> (damage, what the message says of it).
def _truncated(slot: Path) -> None:
    weights = slot / 'model.safetensors'
    weights.write_bytes(weights.read_bytes()[:weights.stat().st_size // 2])


def _garbage(slot: Path) -> None:
    weights = slot / 'model.safetensors'
    weights.write_bytes(np.random.default_rng(0).bytes(weights.stat().st_size))


def _not_safetensors(slot: Path) -> None:  # a pickle where the safetensors should be
    torch.save(_state(), slot / 'model.safetensors')
    _record(slot)


def _wrong_shape(slot: Path) -> None:
    state = _state()
    state['head.fc.weight'] = torch.zeros(10, state['head.fc.weight'].shape[1])
    save_file(state, str(slot / 'model.safetensors'))
    _record(slot)


def _missing_key(slot: Path) -> None:
    state = _state()
    del state['head.fc.bias']
    save_file(state, str(slot / 'model.safetensors'))
    _record(slot)


def _extra_key(slot: Path) -> None:
    save_file({**_state(), 'head.extra': torch.zeros(3)}, str(slot / 'model.safetensors'))
    _record(slot)


def _changed(slot: Path) -> None:
    """One value of one tensor changed in place, still finite, same size: only the sha256 shows it."""
    weights = slot / 'model.safetensors'
    data = bytearray(weights.read_bytes())
    header_size = struct.unpack('<Q', data[:8])[0]
    begin = 8 + header_size + json.loads(data[8:8 + header_size])['head.fc.bias']['data_offsets'][0]
    data[begin:begin + 4] = struct.pack('<f', 1234.5)
    weights.write_bytes(bytes(data))


def _nan(slot: Path) -> None:
    state = _state()
    state['head.fc.bias'][3] = float('nan')
    save_file(state, str(slot / 'model.safetensors'))
    _record(slot)


def _nan_without_record(slot: Path) -> None:  # installed before records were kept
    _nan(slot)
    (slot / 'install.json').unlink()


def _folder(slot: Path) -> None:  # e.g. a download tool given model.safetensors as its folder
    (slot / 'model.safetensors').unlink()
    (slot / 'model.safetensors').mkdir()


def _dangling_link(slot: Path) -> None:  # the file it pointed to moved or was deleted
    (slot / 'model.safetensors').unlink()
    (slot / 'model.safetensors').symlink_to(slot.parent / 'moved.safetensors')


DAMAGE: Dict[str, tuple] = {
    'truncated': (_truncated, 'truncated: its tensors need '),
    'garbage': (_garbage, 'not a safetensors file (garbage): its first 8 bytes are no safetensors header length'),
    'not_safetensors': (_not_safetensors, 'not a safetensors file: a zip archive (a torch.save checkpoint?)'),
    'wrong_shape': (_wrong_shape, 'does not fit sk_shufflenetv2_050: 1 of the wrong shape (first: head.fc.weight '
                                  'is [10, 1024], sk_shufflenetv2_050 needs [1000, 1024])'),
    'missing_key': (_missing_key, 'does not fit sk_shufflenetv2_050: 1 missing tensors (first: head.fc.bias)'),
    'extra_key': (_extra_key, 'does not fit sk_shufflenetv2_050: 1 extra tensors (first: head.extra)'),
    'changed': (_changed, 'changed since install: sha256 '),
    'nan': (_nan, '1 tensors hold NaN or infinite values (first: head.fc.bias)'),
    'nan_without_record': (_nan_without_record, '1 tensors hold NaN or infinite values (first: head.fc.bias)'),
    'folder': (_folder, 'model.safetensors is a folder, not a safetensors file'),
    'dangling_link': (_dangling_link, 'model.safetensors is a symbolic link to {store}/moved.safetensors, which does '
                                      'not exist, not a safetensors file'),
}
CHANGE_SHOWN = {'truncated': 'bytes, ', 'garbage': '(changed since install: sha256 '}  # the record's view too


def _damaged_store(tmp_path: Path, damage: Callable[[Path], None]) -> Path:
    store = tmp_path / 'store'
    slot = store / NAME
    slot.mkdir(parents=True)
    save_file(_state(), str(slot / 'model.safetensors'))
    _record(slot)
    damage(slot)
    return store


@pytest.mark.parametrize('case', DAMAGE)
def test_damaged_copy_is_marked_and_refused_in_one_exception(tmp_path, case):
    damage, says = DAMAGE[case]
    store = _damaged_store(tmp_path, damage)
    says = says.format(store=store)
    weights = store / NAME / 'model.safetensors'
    before = _snapshot(store)
    mend = f'delete it (rm -r {store / NAME}) or save good weights there'

    listing = subprocess.run([str(BIN_DIR / 'timm-sknet'), 'installed'], env=_env(tmp_path, store),
                             capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
    assert listing.returncode == 1, listing.stderr
    lines = listing.stdout.splitlines()
    assert lines[1].startswith(f'{NAME}  {weights}  (')
    assert lines[2].startswith('  NEEDS MENDING: ') and says in lines[2] and lines[2].endswith(f'; {mend}')
    if case in CHANGE_SHOWN:
        assert CHANGE_SHOWN[case] in lines[2] and 'when installed)' in lines[2]
    assert listing.stderr == ''

    load = subprocess.run([sys.executable, '-c', FAIL_SCRIPT, NAME], env=_env(tmp_path, store),
                          capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
    (failure,) = [json.loads(line) for line in load.stdout.splitlines() if line.startswith('{')]
    assert failure['types'][:2] == ['InstalledWeightsError', 'UserError'], failure
    message = failure['message']
    assert '\n' not in message
    assert message.startswith(f'the installed copy {weights} of {NAME} cannot be loaded: ')
    assert says in message and message.endswith(f'; {mend}')
    assert 'Traceback' not in load.stderr
    assert failure['seconds'] < 60  # the store's word, not a wait for the Hub (offline here: it would say "no weights")
    assert _snapshot(store) == before


def test_good_copy_is_checked_and_loads(tmp_path):
    store = _damaged_store(tmp_path, lambda slot: None)
    listing = subprocess.run([str(BIN_DIR / 'timm-sknet'), 'installed'], env=_env(tmp_path, store),
                             capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
    assert listing.returncode == 0, listing.stderr
    assert listing.stdout.splitlines()[2] == (
        '  checked: as installed (size and sha256), fits its model, every value finite')
    load = subprocess.run(
        [sys.executable, '-c', 'import timm, sys; m = timm.create_model(sys.argv[1], pretrained=True); '
         'print(float(m.head.fc.bias.sum()))', NAME],
        env=_env(tmp_path, store), capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
    assert load.returncode == 0, load.stderr
    assert float(load.stdout) == pytest.approx(float(_state()['head.fc.bias'].sum()))


def test_copy_without_record_is_checked_and_says_so(tmp_path):
    store = _damaged_store(tmp_path, lambda slot: (slot / 'install.json').unlink())
    listing = subprocess.run([str(BIN_DIR / 'timm-sknet'), 'installed'], env=_env(tmp_path, store),
                             capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
    assert listing.returncode == 0, listing.stderr
    assert listing.stdout.splitlines()[2] == (
        '  checked: fits its model, every value finite; installed without a record (older install), so a change '
        'since cannot be seen')


def test_weights_with_nan_are_refused_where_they_enter(tmp_path):
    """validate, publish and attention load converted files through create_model_with_weights."""
    state = timm.create_model('sknet26').state_dict()
    state['layer2.0.conv2.attn.fc_select.weight'][0, 0] = float('inf')
    weights = tmp_path / 'sknet26.safetensors'
    save_file(state, str(weights), metadata={'model_name': 'sknet26'})
    before = sha256_file(weights)
    with pytest.raises(UserError) as raised:
        create_model_with_weights('sknet26', weights)
    assert str(raised.value) == (
        f'{weights} holds NaN or infinite values in 1 tensors (first: layer2.0.conv2.attn.fc_select.weight), which '
        'would make every prediction NaN; convert the caffemodel again (convert-caffe refuses non-finite blobs)')
    assert sha256_file(weights) == before


_LOAD_AND_LOG = """
import json, logging, sys
import timm, torch
logging.basicConfig(level=logging.WARNING, format='%(levelname)s %(message)s')
model = timm.create_model(sys.argv[1], pretrained=True)
print(json.dumps({k: [str(v.dtype), v.double().sum().item()] for k, v in model.state_dict().items()
                  if v.is_floating_point()}))
"""


@pytest.mark.parametrize('dtype, how', [(torch.float16, 'upcast'), (torch.bfloat16, 'upcast'),
                                        (torch.float64, 'rounded')])
@pytest.mark.parametrize('recorded', [True, False], ids=['with record', 'without record'])
def test_a_copy_of_another_dtype_loads_with_one_line_saying_so(tmp_path, dtype, how, recorded):
    """torch casts a state dict to the model's float32 without a word: the store says what it loaded."""
    state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in _state().items()}
    floating = sum(v.is_floating_point() for v in state.values())
    store = _damaged_store(tmp_path, lambda slot: None)
    save_file(state, str(store / NAME / 'model.safetensors'))
    if recorded:
        _record(store / NAME)
    else:
        (store / NAME / 'install.json').unlink()
    weights = store / NAME / 'model.safetensors'
    note = (f'{str(dtype).removeprefix("torch.")} values (all {floating} floating tensors), which load {how} to '
            'float32')

    load = subprocess.run([sys.executable, '-c', _LOAD_AND_LOG, NAME], env=_env(tmp_path, store),
                          capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
    assert load.returncode == 0, load.stderr
    said = [line for line in load.stderr.splitlines() if 'float' in line]
    assert said == [f'WARNING {NAME}: the installed copy {weights} holds {note}']
    loaded = json.loads(load.stdout)
    assert {dtype_name for dtype_name, _ in loaded.values()} == {'torch.float32'}
    assert all(loaded[k][1] == pytest.approx(v.double().sum().item(), rel=1e-6, abs=1e-6)
               for k, v in state.items() if v.is_floating_point())  # the file's values, cast

    listing = subprocess.run([str(BIN_DIR / 'timm-sknet'), 'installed'], env=_env(tmp_path, store),
                             capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
    assert listing.returncode == 0, listing.stderr
    assert f'  holds {note} (the dtype timm builds the model in)' in listing.stdout.splitlines()


def test_a_float32_copy_loads_without_a_word(tmp_path):
    store = _damaged_store(tmp_path, lambda slot: None)
    load = subprocess.run([sys.executable, '-c', _LOAD_AND_LOG, NAME], env=_env(tmp_path, store),
                          capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
    assert load.returncode == 0 and 'WARNING' not in load.stderr, load.stderr

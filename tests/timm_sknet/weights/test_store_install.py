"""``install_weights``, what every converter's --install goes through: the slot appears with model.safetensors and
install.json together, the listing never shows an install under way as installed, a failed install leaves no
folder, and what a killed install left is listed, and removed when asked."""
import hashlib
import json
import os

import numpy as np
import pytest
from safetensors.numpy import save_file

from kill_sweep import leftover_of_a_killed_writer, writer_in_the_middle
from support import run_cli
from timm_sknet.io.errors import UserError
from timm_sknet.io.locks import leftovers
from timm_sknet.weights.store import install_weights, installed_weights

SLOT = 'sknet50.caffe_in1k'


def _no_model(arch):  # the listing's model shapes: this test's slot holds no model's weights
    return None


def test_the_slot_appears_whole_and_the_listing_shows_it_only_then(tmp_path, monkeypatch):
    store = tmp_path / 'store'
    monkeypatch.setenv('TIMM_SKNET_HOME', str(store))
    with install_weights(SLOT, False, 'test') as weights:
        save_file({'w': np.ones(3, dtype=np.float32)}, str(weights))
        assert installed_weights(_no_model) == [] and not (store / SLOT).exists()  # written, not yet installed
    assert [w.name for w in installed_weights(_no_model)] == [SLOT]
    installed = store / SLOT / 'model.safetensors'
    assert sorted(os.listdir(store / SLOT)) == ['install.json', 'model.safetensors']
    assert json.loads((store / SLOT / 'install.json').read_text()) == {
        'sha256': hashlib.sha256(installed.read_bytes()).hexdigest(), 'size': installed.stat().st_size,
        'model': SLOT, 'installed_by': 'test'}


def test_a_failed_install_leaves_no_folder(tmp_path, monkeypatch):
    store = tmp_path / 'cache' / 'store'
    monkeypatch.setenv('TIMM_SKNET_HOME', str(store))
    with pytest.raises(UserError, match='the converter failed'):
        with install_weights(SLOT, False, 'test') as weights:
            weights.write_bytes(b'half a file')
            raise UserError('the converter failed')
    assert os.listdir(tmp_path) == []


def test_installed_lists_what_installs_left_and_removes_it_only_when_asked(tmp_path, monkeypatch, capsys):
    """An install under way (another process, waiting mid-write) and one that was killed: ``timm-sknet installed``
    lists both with their size and which is which, exit 0, removing nothing; ``--remove-leftovers`` removes the
    killed one's only; the one under way then finishes into its slot."""
    store = tmp_path / 'store'
    store.mkdir()
    monkeypatch.setenv('TIMM_SKNET_HOME', str(store))
    running = writer_in_the_middle(store, install=True)  # first: the next install would remove a killed one's
    try:
        (under_way,) = store.iterdir()
        killed = leftover_of_a_killed_writer(store, install=True)
        sizes = {leftover.path: leftover.size for leftover in leftovers(store)}
        assert sizes == {killed: 850_000, under_way: 850_000}  # the bytes written so far: install.json comes later

        listed = {  # in the order of their names
            under_way: f'in progress  {under_way}  (850,000 bytes)\n  a running install is writing it; nothing '
                       'removes it while that process lives\n',
            killed: f'left behind  {killed}  (850,000 bytes)\n  by an install that was killed; the next install into '
                    'this store removes it, or now: timm-sknet installed --remove-leftovers\n'}
        assert run_cli(monkeypatch, 'installed') == 0
        assert capsys.readouterr().out == (
            f'store: TIMM_SKNET_HOME={store}\n'
            'nothing installed; install converted weights with: convert-caffe CAFFEMODEL --model sknet50 --install\n'
            + ''.join(listed[path] for path in sorted(listed)))
        assert killed.exists() and under_way.exists()

        assert run_cli(monkeypatch, 'installed', '--remove-leftovers') == 0
        out = capsys.readouterr().out
        assert f'removed {killed} (850,000 bytes), left by an install that was killed\n' in out
        assert f'in progress  {under_way}  (850,000 bytes)' in out and 'left behind' not in out
        assert not killed.exists() and under_way.exists()
    finally:
        running.communicate('go\n', timeout=60)
    assert running.returncode == 0
    assert sorted(os.listdir(store)) == ['.locks', SLOT]
    run_cli(monkeypatch, 'installed')  # the test's bytes are no safetensors: its copy is marked to be mended
    out = capsys.readouterr().out
    assert f'{SLOT}  {store / SLOT}' in out and 'left behind' not in out and 'in progress' not in out

"""The local weights store: ``convert-caffe --install``, ``pretrained=True`` reading it with no network, the listing,
and the error that says what to do when neither the store nor the Hub has the weights.

Every load runs in a subprocess whose store (``TIMM_SKNET_HOME``) and Hub (``HF_ENDPOINT``) are set for it: a
closed loopback port as the Hub, with ``HF_HUB_OFFLINE`` where the Hub must not even be tried.
"""
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Dict, NamedTuple, Tuple

import pytest
import torch
from safetensors.torch import load_file, save_file

from hub_helpers import (
    BIN_DIR, FAIL_SCRIPT, NAMESPACE, client_env, convert_random_sknet50, free_port, load_pretrained)
from support import run_cli
from timm_sknet.io.files import sha256_file
from timm_sknet.weights.release import RELEASE_URL
from timm_sknet.weights.store import PROVENANCE_KEYS, STORE_ENV, installed_path, read_metadata, store_dir

NAME = 'sknet50.caffe_in1k'
GUIDANCE_TIMEOUT_S = 60


class Failure(NamedTuple):
    seconds: float
    message: str
    types: list
    cause: str


def _failures(stdout: str) -> Dict[str, Failure]:
    found = {}
    for line in stdout.splitlines():
        if line.startswith('{'):
            record = json.loads(line)
            model = record.pop('model')
            found[model] = Failure(**record)
    return found


def _offline_env(tmp_path: Path, store: Path) -> Dict[str, str]:
    """The Hub at a closed loopback port, offline mode on: nothing may come from the network."""
    env = client_env(f'http://127.0.0.1:{free_port()}', tmp_path / 'hf', store)
    env['HF_HUB_OFFLINE'] = '1'
    return env


@pytest.fixture(scope='module')
def caffemodel(tmp_path_factory) -> Path:
    """A release-format caffemodel of random sknet50 weights (and, beside it, its conversion by --output)."""
    workdir = tmp_path_factory.mktemp('caffemodel')
    convert_random_sknet50(workdir)
    return workdir / 'sknet50.caffemodel'


def _convert_caffe(env: Dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN_DIR / 'convert-caffe'), *args], env=env, capture_output=True, text=True,
                          timeout=300)


def _assert_same_conversion(installed: Path, written: Path) -> None:
    """What --install wrote is what --output writes: the same tensors and provenance metadata."""
    assert set(PROVENANCE_KEYS) <= read_metadata(installed).keys()
    assert read_metadata(installed) == read_metadata(written)
    expected = load_file(str(written))
    assert all(torch.equal(expected[k], v) for k, v in load_file(str(installed)).items())
    assert load_file(str(installed)).keys() == expected.keys()


def test_store_location(monkeypatch, tmp_path):
    monkeypatch.delenv(STORE_ENV, raising=False)
    monkeypatch.setenv('HOME', str(tmp_path / 'home'))
    monkeypatch.delenv('XDG_CACHE_HOME', raising=False)
    assert store_dir() == tmp_path / 'home' / '.cache' / 'timm-sknet'
    monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path / 'cache'))
    assert store_dir() == tmp_path / 'cache' / 'timm-sknet'
    monkeypatch.setenv(STORE_ENV, '~/weights')
    assert installed_path(NAME) == tmp_path / 'home' / 'weights' / NAME / 'model.safetensors'


def test_install_then_pretrained_loads_it_with_no_network(caffemodel, tmp_path):
    store = tmp_path / 'store'
    env = _offline_env(tmp_path, store)
    installed = store / NAME / 'model.safetensors'
    install = _convert_caffe(env, str(caffemodel), '--model', 'sknet50', '--install')
    assert install.returncode == 0, install.stderr
    assert install.stdout.splitlines()[-1] == (
        f"installed {NAME} as {installed}; timm.create_model('sknet50', pretrained=True) loads it")
    _assert_same_conversion(installed, caffemodel.parent / 'sknet50.safetensors')

    out, log = load_pretrained(env, installed, tmp_path, registry='sknet50', tagged=NAME)
    for label in ('registry', 'tagged'):
        assert out[f'{label}_same_weights'].item()
        assert torch.equal(out[label], out['converted'])
    assert log.count(f'timm_sknet.weights.pretrained: {NAME}: loading the installed copy {installed}') == 2
    assert f'Loading pretrained weights from file ({installed})' in log  # timm's own loader read it


def test_installed_copy_is_replaced_only_with_force(caffemodel, tmp_path):
    store = tmp_path / 'store'
    env = _offline_env(tmp_path, store)
    installed = store / NAME / 'model.safetensors'
    installed.parent.mkdir(parents=True)
    installed.write_bytes(b'an older copy')
    again = _convert_caffe(env, str(caffemodel), '--model', 'sknet50', '--install')
    assert again.returncode == 2
    assert again.stderr == (
        f'convert-caffe: error: {NAME} is already installed ({installed}); pass --force to replace it\n')
    assert installed.read_bytes() == b'an older copy'
    forced = _convert_caffe(env, str(caffemodel), '--model', 'sknet50', '--install', '--force')
    assert forced.returncode == 0, forced.stderr
    _assert_same_conversion(installed, caffemodel.parent / 'sknet50.safetensors')
    assert sorted(p.name for p in installed.parent.iterdir()) == ['install.json', 'model.safetensors']  # no staging

    both = _convert_caffe(env, str(caffemodel), '--model', 'sknet50', '--install', '--output', str(tmp_path / 'x'))
    assert both.returncode == 2 and 'not allowed with argument' in both.stderr


def test_install_into_an_unusable_store_is_one_line(caffemodel, tmp_path):
    blocker = tmp_path / 'a-file'
    blocker.write_text('not a folder')
    failed = _convert_caffe(_offline_env(tmp_path, blocker / 'store'), str(caffemodel), '--model', 'sknet50',
                            '--install')
    assert failed.returncode == 2
    assert failed.stderr.startswith(f'convert-caffe: error: could not write {blocker / "store" / NAME}/model.')
    assert failed.stderr.count('\n') == 1 and 'Not a directory' in failed.stderr
    assert blocker.read_text() == 'not a folder'


def test_listing_shows_provenance_and_verify_figures(monkeypatch, capsys, tmp_path):
    monkeypatch.setenv(STORE_ENV, str(tmp_path))
    assert run_cli(monkeypatch, 'installed') == 0
    assert capsys.readouterr().out == (
        f'store: {STORE_ENV}={tmp_path}\n'
        'nothing installed; install converted weights with: convert-caffe CAFFEMODEL --model sknet50 --install\n')

    provenance = {
        'source_file': 'SKNet-101.caffemodel', 'source_size': '195512345', 'source_sha256': 'a' * 64,
        'model_name': 'sknet101', 'timm_sknet_version': '0.1.0', 'timm_version': '1.0.31', 'torch_version': '2.14.1'}
    verified = {
        'verify_runtime': 'opencv 4.14.0', 'verify_images': '2', 'verify_max_abs_diff': '2.15e-06',
        'verify_max_rel_diff': '1.46e-06', 'verify_top5_agreement': '2/2'}
    tensors = {'fc.bias': torch.zeros(3)}
    for name, metadata in (('sknet101.caffe_in1k', {**provenance, **verified}), (NAME, provenance)):
        installed_path(name).parent.mkdir()
        save_file(tensors, str(installed_path(name)), metadata)
    installed_path('sknet26.untrained').parent.mkdir()
    installed_path('sknet26.untrained').write_bytes(b'not safetensors')

    assert run_cli(monkeypatch, 'installed') == 1  # a copy needs mending
    lines = capsys.readouterr().out.splitlines()
    size = {name: f'{installed_path(name).stat().st_size:,} bytes' for name in ('sknet101.caffe_in1k', NAME)}
    broken = installed_path('sknet26.untrained')
    source = (f'  converted from SKNet-101.caffemodel (195,512,345 bytes, sha256 {"a" * 64}) for sknet101 by '
              'timm-sknet 0.1.0')
    # the stand-in tensors fit no model: each copy is marked, with its mend (test_store_checks.py: every fault)
    assert lines[0] == f'store: {STORE_ENV}={tmp_path}'
    assert lines[1] == f'sknet101.caffe_in1k  {installed_path("sknet101.caffe_in1k")}  ({size["sknet101.caffe_in1k"]})'
    assert lines[2] == (
        '  NEEDS MENDING: does not fit sknet101: 1054 missing tensors (first: conv1.weight), 1 of the wrong shape '
        '(first: fc.bias is [3], sknet101 needs [1000]); re-install it: convert-caffe SKNet-101.caffemodel --model '
        f'sknet101 --install --force (or delete it: rm -r {tmp_path / "sknet101.caffe_in1k"})')
    assert lines[3] == source
    assert lines[4] == (
        '  verified against opencv 4.14.0 on 2 images: max |logit diff| 2.15e-06, relative 1.46e-06, same top-5 on 2/2')
    assert lines[5] == f'sknet26.untrained  {broken}  (15 bytes)'
    assert lines[6] == (
        '  NEEDS MENDING: not a safetensors file (garbage): its first 8 bytes are no safetensors header length; '
        f'delete it (rm -r {broken.parent}) or save good weights there')
    assert lines[7] == f'{NAME}  {installed_path(NAME)}  ({size[NAME]})'
    # converted for sknet101, so the mend names the sknet50 release file, not the file this one came from
    assert lines[8].endswith(
        f'; re-install it: convert-caffe SKNet-50.caffemodel --model sknet50 --install --force (or delete it: rm -r '
        f'{tmp_path / NAME})')
    assert lines[9:] == [source, '  not verified (converted without --verify)']


def test_offline_without_installed_weights_says_how_to_install_them(tmp_path):
    """With the Hub off (HF_HUB_OFFLINE) at once; the message names the Hub repo, the store path and the commands,
    and, for weights not from the Caffe release, where to put them."""
    store = tmp_path / 'empty-store'
    proc = subprocess.run([sys.executable, '-c', FAIL_SCRIPT, NAME, 'sk_resnext50_32x4d'],
                          env=_offline_env(tmp_path, store), capture_output=True, text=True, timeout=120)
    failures = _failures(proc.stdout)
    release = failures[NAME]
    assert 'PretrainedWeightsNotFoundError' in release.types and 'FileNotFoundError' in release.types
    assert release.cause == 'LocalEntryNotFoundError'
    assert release.message.startswith(
        f'{NAME} has no pretrained weights here: the local store has no {store / NAME / "model.safetensors"}, '
        f'and the Hub repo {NAMESPACE}/{NAME} (model.safetensors at http://127.0.0.1:')
    assert 'offline mode is enabled' in release.message
    assert release.message.endswith(
        f'To install them: download the SKNet-50 caffemodel linked from {RELEASE_URL}, then run: '
        'convert-caffe SKNet-50.caffemodel --model sknet50 --install')
    timm_weights = failures['sk_resnext50_32x4d']
    assert 'the Hub repo timm/skresnext50_32x4d.ra_in1k (its weights at' in timm_weights.message
    assert timm_weights.message.endswith(
        'Fetch them once with Hub access (they are cached), or save their safetensors as '
        f'{store / "sk_resnext50_32x4d.ra_in1k" / "model.safetensors"}.')


def test_dead_hub_and_no_installed_weights_give_the_guiding_error_within_60_s(dead_hub):
    """The run started with the session (conftest.py): an empty store, a Hub endpoint that refuses connections."""
    stdout, stderr = dead_hub.proc.communicate(timeout=GUIDANCE_TIMEOUT_S + 60)
    failure = _failures(stdout)['sknet50']
    assert failure.seconds < GUIDANCE_TIMEOUT_S, failure
    assert 'PretrainedWeightsNotFoundError' in failure.types and failure.cause == 'LocalEntryNotFoundError'
    assert failure.message.startswith(
        f'{NAME} has no pretrained weights here: the local store has no {dead_hub.store / NAME / "model.safetensors"}, '
        f'and the Hub repo {NAMESPACE}/{NAME} (model.safetensors at http://127.0.0.1:')
    assert 'convert-caffe SKNet-50.caffemodel --model sknet50 --install' in failure.message
    print(f'guiding error after {failure.seconds:.1f} s: {failure.message}')


def test_damaged_install_is_marked_refused_and_mended_by_the_command_given(caffemodel, tmp_path):
    """An installed sknet50 whose tensor turned NaN: ``installed`` marks it with a command, ``pretrained=True``
    refuses it naming file, problem and that command, and running the command makes the store good again."""
    store = tmp_path / 'store'
    env = _offline_env(tmp_path, store)
    installed = store / NAME / 'model.safetensors'
    assert _convert_caffe(env, str(caffemodel), '--model', 'sknet50', '--install').returncode == 0
    installed_sha256 = sha256_file(installed)
    state = load_file(str(installed))
    state['fc.bias'][7] = float('nan')
    save_file(state, str(installed), read_metadata(installed))
    damaged = sha256_file(installed)
    mend = 'convert-caffe sknet50.caffemodel --model sknet50 --install --force'

    listing = subprocess.run([str(BIN_DIR / 'timm-sknet'), 'installed'], env=env, capture_output=True, text=True,
                             timeout=300)
    assert listing.returncode == 1
    # convert-caffe recorded the sha256 at install: the edit shows as a change too
    changed = f'changed since install: sha256 {damaged[:16]}..., {installed_sha256[:16]}... when installed'
    assert listing.stdout.splitlines()[2] == (
        '  NEEDS MENDING: 1 tensors hold NaN or infinite values (first: fc.bias), which would make its predictions '
        f'NaN ({changed}); re-install it: {mend} (or delete it: rm -r {store / NAME})')
    load = subprocess.run([sys.executable, '-c', FAIL_SCRIPT, 'sknet50'], env=env, capture_output=True, text=True,
                          timeout=300)
    failure = _failures(load.stdout)['sknet50']
    assert 'InstalledWeightsError' in failure.types and 'UserError' in failure.types
    assert failure.message == (
        f'the installed copy {installed} of {NAME} cannot be loaded: 1 tensors hold NaN or infinite values (first: '
        f'fc.bias), which would make its predictions NaN ({changed}); re-install it: {mend} (or delete it: rm -r '
        f'{store / NAME})')
    assert sha256_file(installed) == damaged  # neither command touched it

    program, *words = mend.split()  # run as printed, from the folder holding the caffemodel
    mended = subprocess.run([str(BIN_DIR / program), *words], cwd=caffemodel.parent, env=env, capture_output=True,
                            text=True, timeout=300)
    assert mended.returncode == 0, mended.stderr
    _assert_same_conversion(installed, caffemodel.parent / 'sknet50.safetensors')
    listing = subprocess.run([str(BIN_DIR / 'timm-sknet'), 'installed'], env=env, capture_output=True, text=True,
                             timeout=300)
    assert listing.returncode == 0 and 'NEEDS MENDING' not in listing.stdout
    out, _ = load_pretrained(env, installed, tmp_path, registry='sknet50')
    assert out['registry_same_weights'].item()


def _as_printed(command: str, cwd: Path, env: Dict[str, str]) -> subprocess.CompletedProcess:
    """A command a message printed, pasted into bash (the console scripts on PATH, as in an activated venv)."""
    return subprocess.run(['bash', '-c', command], cwd=cwd, env=dict(env, PATH=f"{BIN_DIR}:{env['PATH']}"),
                          capture_output=True, timeout=300)


def _mends(listing: str) -> Tuple[str, str]:
    """(the re-install command, the delete command) the listing's NEEDS MENDING line gives."""
    found = re.search(r're-install it: (.*) \(or delete it: (.*)\)$', listing.splitlines()[2])
    return found.group(1), found.group(2)


def test_a_folder_in_place_of_the_weights_is_named_and_mended_as_printed(caffemodel, tmp_path):
    """``model.safetensors`` a folder: marked and refused (not "no weights" and a wait for the Hub) with the mend;
    an empty one goes with ``--install --force``, one holding files is never deleted by it."""
    store = tmp_path / 'store'
    env = _offline_env(tmp_path, store)
    installed = store / NAME / 'model.safetensors'
    assert _convert_caffe(env, str(caffemodel), '--model', 'sknet50', '--install').returncode == 0
    installed.unlink()
    installed.mkdir()
    # the header that named the caffemodel is gone with the file: the mend names the release's own file
    mend = 'convert-caffe SKNet-50.caffemodel --model sknet50 --install --force'
    downloads = tmp_path / 'downloads'
    downloads.mkdir()
    os.link(caffemodel, downloads / 'SKNet-50.caffemodel')

    listing = subprocess.run([str(BIN_DIR / 'timm-sknet'), 'installed'], env=env, capture_output=True, text=True,
                             timeout=300)
    assert listing.returncode == 1 and listing.stderr == ''
    assert listing.stdout.splitlines()[1:3] == [
        f'{NAME}  {installed}  (not a file)',
        f'  NEEDS MENDING: model.safetensors is a folder, not a safetensors file; re-install it: {mend} (or delete '
        f'it: rm -r {store / NAME})']
    load = subprocess.run([sys.executable, '-c', FAIL_SCRIPT, 'sknet50'], env=env, capture_output=True, text=True,
                          timeout=300)
    failure = _failures(load.stdout)['sknet50']
    assert failure.types[:2] == ['InstalledWeightsError', 'UserError']
    assert failure.message == (f'the installed copy {installed} of {NAME} cannot be loaded: model.safetensors is a '
                               f'folder, not a safetensors file; re-install it: {mend} (or delete it: rm -r '
                               f'{store / NAME})')

    (installed / 'notes.txt').write_text('mine')  # a folder holding a file: --force must not delete it
    listing = subprocess.run([str(BIN_DIR / 'timm-sknet'), 'installed'], env=env, capture_output=True, text=True,
                             timeout=300)
    assert listing.stdout.splitlines()[2] == (
        f'  NEEDS MENDING: model.safetensors is a folder, not a safetensors file; move what no install wrote out of '
        f'{store / NAME} (e.g. model.safetensors/notes.txt), then re-install it: {mend} (or delete it: rm -r '
        f'{store / NAME})')
    refused = _as_printed(_mends(listing.stdout)[0], downloads, env)
    assert refused.returncode == 2 and b'(e.g. model.safetensors/notes.txt)' in refused.stderr
    assert (installed / 'notes.txt').read_text() == 'mine'
    (installed / 'notes.txt').rename(tmp_path / 'notes.txt')  # moved out, as the listing says

    reinstall, delete = _mends(subprocess.run([str(BIN_DIR / 'timm-sknet'), 'installed'], env=env,
                                              capture_output=True, text=True, timeout=300).stdout)
    mended = _as_printed(reinstall, downloads, env)
    assert mended.returncode == 0, mended.stderr
    assert load_file(str(installed)).keys() == load_file(str(caffemodel.parent / 'sknet50.safetensors')).keys()
    listing = subprocess.run([str(BIN_DIR / 'timm-sknet'), 'installed'], env=env, capture_output=True, text=True,
                             timeout=300)
    assert listing.returncode == 0 and 'NEEDS MENDING' not in listing.stdout

    installed.unlink()
    installed.mkdir()
    assert _as_printed(delete, tmp_path, env).returncode == 0
    assert not (store / NAME).exists()


def test_mends_naming_files_that_are_not_utf8_work_as_printed(caffemodel, tmp_path):
    """A caffemodel whose name is Latin-1 bytes, a store whose name a shell must quote: the printed commands quote
    them so that bash gives the same bytes back. A store that is not UTF-8 is refused: safetensors cannot open it."""
    folder = os.path.join(os.fsencode(tmp_path), b'caf\xe9')
    os.mkdir(folder)
    source = os.path.join(folder, b'SKNet-50-caf\xe9.caffemodel')
    os.link(caffemodel, source)
    latin1_store = os.path.join(os.fsencode(tmp_path), b'st\xf6re')
    refused = subprocess.run([BIN_DIR / 'convert-caffe', source, '--model', 'sknet50', '--install'],
                             env=dict(_offline_env(tmp_path, tmp_path), TIMM_SKNET_HOME=latin1_store),
                             capture_output=True, timeout=300)
    assert refused.returncode == 2 and b'is not a UTF-8 path, and safetensors (so timm) opens' in refused.stderr
    assert not os.path.exists(latin1_store)
    store = tmp_path / "the user's store"
    env = _offline_env(tmp_path, store)
    installed = store / NAME / 'model.safetensors'
    assert subprocess.run([BIN_DIR / 'convert-caffe', source, '--model', 'sknet50', '--install'], env=env,
                          capture_output=True, timeout=300).returncode == 0
    good = {k: v.clone() for k, v in load_file(str(installed)).items()}, read_metadata(installed)
    data = bytearray(installed.read_bytes())
    data[-3] ^= 0x40  # changed since install; its header, naming the caffemodel, still reads
    installed.write_bytes(bytes(data))

    listing = subprocess.run([BIN_DIR / 'timm-sknet', 'installed'], env=env, capture_output=True, timeout=300)
    assert listing.returncode == 1
    text = listing.stdout.decode('ascii')  # every byte that is not UTF-8 escaped, every command quoted for bash
    assert "convert-caffe $'SKNet-50-caf\\xe9.caffemodel' --model sknet50 --install --force" in text
    reinstall, delete = _mends(text)
    mended = _as_printed(reinstall, Path(os.fsdecode(folder)), env)
    assert mended.returncode == 0, mended.stderr
    tensors, metadata = load_file(str(installed)), read_metadata(installed)
    assert metadata == good[1] and metadata['source_file'] == 'SKNet-50-caf\\xe9.caffemodel'
    assert tensors.keys() == good[0].keys() and all(torch.equal(good[0][k], v) for k, v in tensors.items())
    assert _as_printed(delete, tmp_path, env).returncode == 0
    assert not (store / NAME).exists()

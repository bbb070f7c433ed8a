"""``timm-sknet publish --output-dir``: never a file it did not write, --force included (it used to empty the folder,
the current one with ``--output-dir .``); two publishes into one new folder, one wins; Ctrl-C leaves nothing."""
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict

import pytest

from support import run_cli
from timm_sknet.io.files import MANIFEST_NAME, TEMP_PREFIX, sha256_file

TIMM_SKNET = Path(sys.executable).parent / 'timm-sknet'
REPO_FILES = ['README.md', 'config.json', 'model.safetensors']
FOREIGN = ('timm-sknet: error: {dir} holds files timm-sknet publish did not write (e.g. {first}); it writes only '
           'into a new or empty folder, or with --force over its own earlier output: choose another folder\n')


def _checksums(root: Path) -> Dict[str, str]:
    """Every file and folder under ``root``, hidden ones included, with the sha256 of each file."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else 'folder'
            for p in sorted(root.rglob('*'))}


def _publish(monkeypatch, weights: Path, output_dir, *extra: str, repo_id: str = 'someone/sknet50.caffe_in1k'):
    return run_cli(monkeypatch, 'publish', '--model', 'sknet50', '--weights', str(weights), '--repo-id', repo_id,
                   '--dry-run', '--output-dir', str(output_dir), *extra)


@pytest.fixture
def users_folder(tmp_path) -> Path:
    """A project folder of the user's, with names a Hub repo also uses."""
    folder = tmp_path / 'project'
    (folder / 'src').mkdir(parents=True)
    (folder / 'README.md').write_text('# my project\n')
    (folder / 'config.json').write_text('{"mine": true}\n')
    (folder / '.env').write_text('SECRET=1\n')
    (folder / 'src' / 'train.py').write_text('print("training")\n')
    return folder


@pytest.mark.parametrize('where', ['a folder', 'the current folder'])
@pytest.mark.parametrize('force', [[], ['--force']], ids=['', 'force'])
def test_a_folder_of_the_users_is_never_written_into(where, force, users_folder, weights, tmp_path, monkeypatch,
                                                      capsys):
    before = _checksums(tmp_path)
    output_dir = users_folder
    if where == 'the current folder':
        monkeypatch.chdir(users_folder)
        output_dir = Path('.')
    assert _publish(monkeypatch, weights, output_dir, *force) == 2
    assert capsys.readouterr().err == FOREIGN.format(dir=output_dir, first='.env')
    assert _checksums(tmp_path) == before


def test_force_replaces_only_its_own_files(weights, tmp_path, monkeypatch, capsys):
    out = tmp_path / 'repo'
    assert _publish(monkeypatch, weights, out) == 0
    assert sorted(os.listdir(out)) == sorted([MANIFEST_NAME, *REPO_FILES])
    assert json.loads((out / MANIFEST_NAME).read_text()) == {'written_by': 'timm-sknet publish', 'files': REPO_FILES}
    (out / 'notes.txt').write_text('what I changed in the card')
    capsys.readouterr()

    assert _publish(monkeypatch, weights, out, repo_id='someone/sknet50.second') == 2
    assert capsys.readouterr().err == (f'timm-sknet: error: {out} already holds an earlier output of timm-sknet '
                                       'publish; pass --force to replace its files\n')
    assert _publish(monkeypatch, weights, out, '--force', repo_id='someone/sknet50.second') == 0
    assert 'someone/sknet50.second' in (out / 'README.md').read_text()
    assert (out / 'notes.txt').read_text() == 'what I changed in the card'
    assert sha256_file(out / 'model.safetensors') == sha256_file(weights)
    assert list(tmp_path.rglob(f'{TEMP_PREFIX}*')) == []  # no temporary, no lock


def test_an_empty_current_folder(weights, tmp_path, monkeypatch):
    """``--output-dir .`` used to end in a traceback (rename of '.'); an empty folder is written into."""
    monkeypatch.chdir(tmp_path)
    assert _publish(monkeypatch, weights, '.') == 0
    assert sorted(os.listdir(tmp_path)) == sorted([MANIFEST_NAME, *REPO_FILES])  # and no lock file


def test_folder_names_at_and_past_the_limit(weights, tmp_path, monkeypatch, capsys):
    limit = os.pathconf(tmp_path, 'PC_NAME_MAX')
    assert _publish(monkeypatch, weights, tmp_path / ('d' * limit)) == 0
    assert sorted(os.listdir(tmp_path / ('d' * limit))) == sorted([MANIFEST_NAME, *REPO_FILES])
    capsys.readouterr()
    assert _publish(monkeypatch, weights, tmp_path / ('d' * (limit + 1))) == 2
    assert capsys.readouterr().err == (f"timm-sknet: error: the name {'d' * (limit + 1)} is {limit + 1} bytes long, "
                                       f'more than the {limit} its file system allows; choose a shorter name\n')
    assert os.listdir(tmp_path) == ['d' * limit]


def _start(weights: Path, output_dir: Path, repo_id: str) -> subprocess.Popen:
    return subprocess.Popen(
        [str(TIMM_SKNET), 'publish', '--model', 'sknet50', '--weights', str(weights), '--repo-id', repo_id,
         '--dry-run', '--output-dir', str(output_dir)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_two_publishes_into_one_new_folder_one_wins(weights, tmp_path):
    out = tmp_path / 'repo'
    repo_ids = ['someone/sknet50.first', 'someone/sknet50.second']
    procs = [_start(weights, out, repo_id) for repo_id in repo_ids]
    results = [(proc.wait(timeout=300), proc.stderr.read()) for proc in procs]
    winners = [i for i, (code, _) in enumerate(results) if code == 0]
    assert len(winners) == 1, results
    code, err = results[1 - winners[0]]
    assert code == 2 and err.count('\n') == 1 and 'Traceback' not in err, err
    assert err.startswith('timm-sknet: error: ') and 'pass --force' in err, err
    assert repo_ids[winners[0]] in (out / 'README.md').read_text()
    assert sha256_file(out / 'model.safetensors') == sha256_file(weights)
    assert sorted(os.listdir(out)) == sorted([MANIFEST_NAME, *REPO_FILES])
    assert sorted(os.listdir(tmp_path)) == ['repo']


def _torch_loaded(pid: int) -> bool:
    try:
        return 'libtorch_cpu' in Path(f'/proc/{pid}/maps').read_text()
    except OSError:
        return False


@pytest.mark.parametrize('moment', ['importing', 'writing'])
def test_ctrl_c_leaves_nothing(moment, weights, tmp_path):
    out = tmp_path / 'repo'
    proc = _start(weights, out, 'someone/sknet50.caffe_in1k')
    moments = {'importing': lambda: _torch_loaded(proc.pid),
               'writing': lambda: any(p.name.startswith(TEMP_PREFIX) for p in tmp_path.iterdir())}
    deadline = time.monotonic() + 120
    while not moments[moment]():
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
        time.sleep(0.0005)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert (proc.returncode, err) == (130, 'timm-sknet: error: interrupted (Ctrl-C); nothing partial was left '
                                           'behind\n')
    assert os.listdir(tmp_path) == []

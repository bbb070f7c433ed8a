"""Writes that appear whole or not at all and never replace what they should not, through real processes racing
for the same file, store slot and output folder, and real file names at and past the file system's limit."""
import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from timm_sknet.io.errors import UserError
from timm_sknet.io.files import MANIFEST_NAME, TEMP_PREFIX, atomic_output, check_name, replace_folder, write_outputs

RACERS = 4
# Each racer writes its own content under a temporary name, waits until every racer has, then all move their
# output into place at the same moment: exactly the window in which a check-then-write would let two win.
RACER = r'''
import os, sys, time
from pathlib import Path
from timm_sknet.io.errors import run_cli
from timm_sknet.io.files import atomic_output, output_directory
from timm_sknet.weights.store import install_weights

kind, target, index, barrier, force = sys.argv[1:]
content = index.encode() * 300_000

def wait_for_all():
    Path(barrier, index).touch()
    while len(os.listdir(barrier)) < RACERS:
        time.sleep(0.002)

def race():
    if kind == 'file':
        with atomic_output(target, force == 'force') as tmp:
            tmp.write_bytes(content)
            wait_for_all()
    elif kind == 'slot':
        with install_weights('sknet50.caffe_in1k', force == 'force', 'test') as tmp:
            tmp.write_bytes(content)
            wait_for_all()
    else:
        with output_directory(target, force == 'force', 'test') as staging:
            (staging / 'data.bin').write_bytes(content)
            wait_for_all()
    return 0

run_cli('racer', race)
'''.replace('RACERS', str(RACERS))


def _race(kind: str, target: Path, tmp_path: Path, force: bool = False):
    barrier = tmp_path / 'barrier'
    barrier.mkdir()
    env = dict(os.environ, TIMM_SKNET_HOME=str(tmp_path / 'store'))
    procs = [subprocess.Popen([sys.executable, '-c', RACER, kind, str(target), str(i), str(barrier),
                               'force' if force else 'no-force'],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for i in range(RACERS)]
    return [(proc.wait(timeout=120), proc.stderr.read()) for proc in procs]


def _written(kind: str, target: Path, tmp_path: Path) -> Path:
    """The file whose bytes the race decided."""
    if kind == 'file':
        return target
    if kind == 'slot':
        return tmp_path / 'store' / 'sknet50.caffe_in1k' / 'model.safetensors'
    return target / 'data.bin'


def _leftovers(root: Path):
    """Temporaries and lock files of ours anywhere under ``root`` (the store's ``.locks`` folder stays, empty)."""
    return [*root.rglob(f'{TEMP_PREFIX}*'), *root.rglob('.locks/*')]


@pytest.mark.parametrize('kind', ['file', 'slot', 'new folder', 'empty folder'])
def test_racing_writers_one_wins_and_its_bytes_stay(kind, tmp_path):
    target = tmp_path / 'out' / 'target'
    target.parent.mkdir()
    if kind == 'empty folder':  # written into in place, under the folder's lock
        target.mkdir()
    kind = kind.split()[-1]
    results = _race(kind, target, tmp_path)
    winners = [i for i, (code, _) in enumerate(results) if code == 0]
    assert len(winners) == 1, results
    for i, (code, err) in enumerate(results):
        if i != winners[0]:
            assert code == 2 and 'Traceback' not in err and err.count('\n') == 1, err
            assert err.startswith('racer: error: ') and '--force' in err, err
    written = _written(kind, target, tmp_path)
    assert written.read_bytes() == str(winners[0]).encode() * 300_000
    assert _leftovers(tmp_path) == []
    if kind == 'slot':
        slot = written.parent
        assert sorted(os.listdir(slot)) == ['install.json', 'model.safetensors']
        record = (slot / 'install.json').read_text()
        assert hashlib.sha256(written.read_bytes()).hexdigest() in record
    if kind == 'folder':
        assert sorted(os.listdir(target)) == [MANIFEST_NAME, 'data.bin']  # and no lock file


@pytest.mark.parametrize('kind', ['file', 'slot'])
def test_racing_writers_with_force_each_replace_whole(kind, tmp_path):
    """With --force every racer may replace the output; what is left is one racer's bytes, never a mix."""
    target = tmp_path / 'target'
    results = _race(kind, target, tmp_path, force=True)
    assert [code for code, _ in results] == [0] * RACERS, results
    content = _written(kind, target, tmp_path).read_bytes()
    assert content in {str(i).encode() * 300_000 for i in range(RACERS)}
    assert _leftovers(tmp_path) == []


def test_several_outputs_appear_together_or_not_at_all(tmp_path):
    """One output of a set exists when they are moved into place: none is written, that one is untouched."""
    first, second = tmp_path / 'units.csv', tmp_path / 'units.png'
    second.write_bytes(b'mine')
    with pytest.raises(UserError) as error:
        write_outputs({first: 'new', second: b'new'})
    assert str(error.value) == (f'{second} appeared while this command ran (another process wrote it) and was left '
                                'as it is; nothing was written; pass --force to replace it')
    assert not first.exists() and second.read_bytes() == b'mine'
    assert sorted(os.listdir(tmp_path)) == ['units.png']


def test_a_name_at_the_limit_is_written_and_one_past_it_refused(tmp_path):
    """The temporary name is short and fixed in length: any name the folder accepts can be written."""
    limit = os.pathconf(tmp_path, 'PC_NAME_MAX')
    longest = tmp_path / ('n' * limit)
    with atomic_output(check_name(longest)) as tmp:
        tmp.write_bytes(b'whole')
    assert longest.read_bytes() == b'whole' and os.listdir(tmp_path) == [longest.name]
    with pytest.raises(UserError) as error:
        check_name(tmp_path / ('n' * (limit + 1)))
    assert str(error.value) == (f"the name {'n' * (limit + 1)} is {limit + 1} bytes long, more than the {limit} its "
                                'file system allows; choose a shorter name')


def test_a_name_that_is_not_utf8(tmp_path):
    """Linux names are bytes; Python keeps those that are not UTF-8 as surrogates, and so must the write."""
    name = os.fsdecode(b'caf\xe9.bin')  # Latin-1, as an old system would have written it
    with atomic_output(tmp_path / name) as tmp:
        tmp.write_bytes(b'whole')
    assert os.listdir(os.fsencode(tmp_path)) == [b'caf\xe9.bin']


def test_a_folder_is_replaced_in_one_step(tmp_path):
    """``--install --force`` swaps the new slot in: the two folders exchange names in one step (a process killed at
    any moment leaves one of them in place), the old content then under the new one's temporary name."""
    old, new = tmp_path / 'slot', tmp_path / 'new'
    old.mkdir()
    new.mkdir()
    (old / 'model.safetensors').write_bytes(b'old')
    (new / 'model.safetensors').write_bytes(b'new')
    replace_folder(new, old)
    assert (old / 'model.safetensors').read_bytes() == b'new'
    assert (new / 'model.safetensors').read_bytes() == b'old'  # exchanged, not moved: nothing was ever missing

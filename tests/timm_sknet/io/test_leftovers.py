"""What a killed process leaves, told from what a live one writes (``timm_sknet.io.locks``), with real processes:
killed writers' temporaries listed and removed by the next write into the folder; a live writer's kept while it is
stopped, creates its file anew, and other processes write and sweep beside it; every dead state of a claim removed
and nothing of the user's; lock files gone when their holder ends, however it ends; sweeps racing writers."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kill_sweep import checksums, leftover_of_a_killed_writer, ours, writer_in_the_middle
from timm_sknet.io.errors import UserError
from timm_sknet.io.files import atomic_output
from timm_sknet.io.locks import file_lock, leftovers, remove_leftovers

HALF_AN_OUTPUT = len(b'half of an output' * 50_000)


@pytest.fixture
def users_folder(tmp_path) -> Path:
    folder = tmp_path / 'work'
    (folder / 'data').mkdir(parents=True)
    (folder / 'notes.txt').write_text('mine\n')
    (folder / 'data' / 'train.csv').write_text('a,b\n1,2\n')
    return folder


def _stopped(pid: int) -> bool:
    return Path(f'/proc/{pid}/stat').read_text().rpartition(')')[2].split()[0] == 'T'


def test_a_killed_writers_temporary_is_listed_then_removed_by_the_next_write(users_folder):
    before = checksums(users_folder)
    left = leftover_of_a_killed_writer(users_folder)
    assert sorted(os.listdir(left)) == ['output', 'owner.lock']
    (found,) = leftovers(users_folder)
    assert (found.path, found.live) == (left, False) and found.size == HALF_AN_OUTPUT

    with atomic_output(users_folder / 'next.bin') as tmp:
        tmp.write_bytes(b'whole')
    assert not left.exists() and leftovers(users_folder) == []
    assert (users_folder / 'next.bin').read_bytes() == b'whole'
    assert checksums(users_folder, skip=[users_folder / 'next.bin']) == before


def test_a_live_writer_keeps_its_temporary_while_others_sweep_and_write(users_folder):
    """Stopped (SIGSTOP: as slow as a writer can be) after creating its file anew, its temporary is listed as live,
    kept by a sweep here and by a write of another process into the same folder; resumed, it finishes whole."""
    writer = writer_in_the_middle(users_folder)
    try:
        writer.send_signal(signal.SIGSTOP)
        while not _stopped(writer.pid):
            time.sleep(0.001)
        (live,) = leftovers(users_folder)
        assert live.live and live.size == HALF_AN_OUTPUT
        assert remove_leftovers(users_folder) == []
        other = subprocess.run(
            [sys.executable, '-c', 'import sys; from pathlib import Path; from timm_sknet.io.files import '
             'write_outputs; write_outputs({Path(sys.argv[1]): b"other"})', str(users_folder / 'other.bin')],
            capture_output=True, text=True, timeout=60)
        assert other.returncode == 0, other.stderr
        assert leftovers(users_folder) == [live] and (users_folder / 'other.bin').read_bytes() == b'other'
    finally:
        writer.send_signal(signal.SIGCONT)
    writer.communicate('go\n', timeout=60)
    assert writer.returncode == 0
    assert (users_folder / 'output.bin').read_bytes() == b'half of an output' * 50_000
    assert ours(users_folder) == []


def test_a_sweep_in_the_writers_own_process_keeps_its_temporary(users_folder, monkeypatch):
    """Another write of the same process (a thread, or a second output) sweeps the folder while the first is open:
    its temporary stays, listed as live, whichever way the folder is named (here the current one, '.')."""
    monkeypatch.chdir(users_folder)
    with atomic_output(Path('first.bin')) as tmp:
        tmp.write_bytes(b'first')
        with atomic_output(Path('second.bin')) as second:
            second.write_bytes(b'second')
        assert [(f.path, f.live) for f in leftovers(Path('.'))] == [(tmp.parent.parent, True)]
        assert remove_leftovers(Path('.')) == [] and tmp.read_bytes() == b'first'
    assert (users_folder / 'first.bin').read_bytes() == b'first' and ours(users_folder) == []


def test_every_dead_state_is_removed_and_nothing_of_the_users(users_folder):
    """What a writer killed at each step leaves: a temporary folder without ``owner.lock`` (killed right after
    making it), with one nobody holds, with part of its output; an earlier version's temporary file, the lock file
    of an output folder, an earlier version's store lock. Names like ours that are the user's stay."""
    dead = {'.tsk-aaaaaaaa.partial': 0, '.tsk-bbbbbbbb.partial': 0, '.tsk-cccccccc.partial': 5,
            '.tsk-dddd_123.partial': 7, '.tsk-folder.lock': 0, '.tsk-0123456789abcdef.lock': 0}
    (users_folder / '.tsk-aaaaaaaa.partial').mkdir()
    (users_folder / '.tsk-bbbbbbbb.partial').mkdir()
    (users_folder / '.tsk-bbbbbbbb.partial' / 'owner.lock').touch()
    (users_folder / '.tsk-cccccccc.partial' / 'output').mkdir(parents=True)
    (users_folder / '.tsk-cccccccc.partial' / 'owner.lock').touch()
    (users_folder / '.tsk-cccccccc.partial' / 'output' / 'a.bin').write_bytes(b'a par')
    (users_folder / '.tsk-dddd_123.partial').write_bytes(b'earlier')
    (users_folder / '.tsk-folder.lock').touch()
    (users_folder / '.tsk-0123456789abcdef.lock').touch()
    for name in ('.tsk-notes.txt', '.tsk-abc.partial', '.tsk-ABCDEFGH.partial', 'x.partial', '.tsk-folder.lock.bak',
                 'folder.lock'):
        (users_folder / name).write_text('mine')
    (users_folder / '.locks').mkdir()
    (users_folder / '.locks' / 'a.lock').write_text('mine')
    users = checksums(users_folder, skip=[users_folder / name for name in dead])

    found = leftovers(users_folder)
    assert {f.path.name: (f.size, f.live) for f in found} == {name: (size, False) for name, size in dead.items()}
    removed = remove_leftovers(users_folder)
    assert sorted(f.path.name for f in removed) == sorted(dead)
    assert checksums(users_folder) == users and leftovers(users_folder) == []


_HOLDER = r'''
import sys
from pathlib import Path
from timm_sknet.io.locks import file_lock
with file_lock(Path(sys.argv[1]), 'the test folder'):
    print('held', flush=True)
    sys.stdin.readline()
'''


def _holder(lock: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, '-c', _HOLDER, str(lock)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout.readline() == 'held\n'
    return proc


def test_a_lock_file_lives_as_long_as_its_holder(users_folder):
    """Held: listed as live and kept by a sweep; released: gone; its holder killed: left, then swept."""
    lock = users_folder / '.tsk-folder.lock'
    holder = _holder(lock)
    assert [(f.path, f.live) for f in leftovers(users_folder)] == [(lock, True)]
    assert remove_leftovers(users_folder) == [] and lock.exists()
    holder.communicate('\n', timeout=60)
    assert holder.returncode == 0 and not lock.exists()

    holder = _holder(lock)
    holder.kill()
    holder.wait()
    assert [(f.path, f.live) for f in leftovers(users_folder)] == [(lock, False)]
    assert [f.path for f in remove_leftovers(users_folder)] == [lock]
    assert sorted(os.listdir(users_folder)) == ['data', 'notes.txt']


@pytest.mark.parametrize('ending', ['normal', 'error', 'ctrl-c'])
def test_a_lock_file_goes_however_the_block_ends(ending, users_folder):
    lock = users_folder / '.tsk-folder.lock'
    raised = {'normal': None, 'error': UserError('failed'), 'ctrl-c': KeyboardInterrupt()}[ending]
    try:
        with file_lock(lock, 'the test folder'):
            assert lock.exists()
            if raised is not None:
                raise raised
    except (UserError, KeyboardInterrupt) as e:
        assert e is raised
    assert not lock.exists() and sorted(os.listdir(users_folder)) == ['data', 'notes.txt']


_MANY_WRITES = r'''
import sys
from pathlib import Path
from timm_sknet.io.files import atomic_output
folder, writer, count = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
for i in range(count):
    content = f'output {i} of {writer} '.encode() * 10_000
    with atomic_output(folder / f'{writer}-{i}.bin') as tmp:
        tmp.write_bytes(b'draft')
        tmp.unlink()
        tmp.write_bytes(content)
        assert tmp.read_bytes() == content
    assert (folder / f'{writer}-{i}.bin').read_bytes() == content
'''

_SWEEPS = r'''
import json, sys
from pathlib import Path
from timm_sknet.io.locks import remove_leftovers
folder, done = Path(sys.argv[1]), Path(sys.argv[2])
print('sweeping', flush=True)
removed = []
while not done.exists():
    removed += [(str(f.path), f.size) for f in remove_leftovers(folder)]
print(json.dumps(removed))
'''
WRITES = 150


def test_sweeps_racing_writers_never_take_a_written_temporary(tmp_path):
    """Two processes write 150 outputs each into one folder while a third sweeps it without pause: every output is
    whole, and a sweep removes at most a temporary that no writer had yet claimed (it holds no data: the writer
    starts over under another name)."""
    done = tmp_path / 'done'
    folder = tmp_path / 'outputs'
    folder.mkdir()
    sweeper = subprocess.Popen([sys.executable, '-c', _SWEEPS, str(folder), str(done)], stdout=subprocess.PIPE,
                               text=True)
    assert sweeper.stdout.readline() == 'sweeping\n'
    writers = [subprocess.Popen([sys.executable, '-c', _MANY_WRITES, str(folder), str(w), str(WRITES)],
                                stderr=subprocess.PIPE, text=True) for w in range(2)]
    results = [(writer.wait(timeout=300), writer.stderr.read()) for writer in writers]
    done.touch()
    out, _ = sweeper.communicate(timeout=60)
    assert results == [(0, ''), (0, '')]
    assert all(size == 0 for _, size in json.loads(out)), out
    assert sorted(os.listdir(folder)) == sorted(f'{w}-{i}.bin' for w in range(2) for i in range(WRITES))

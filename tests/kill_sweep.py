"""Hard kills, as the tests of every writing command use them: SIGKILL at a seeded sweep of moments across a real
run of the command, a dead writer's leftover made by a real process killed mid-write, and the state on disk to
compare (checksums of the user's files, our temporaries and lock files).

The moments: the command is run once to the end, timing it and noting when its first temporary appears; then it
is killed ``spread`` times at delays drawn one in each of ``spread`` equal slices of that run, and ``anchored`` times
during its write, counted from the moment a temporary of it appears: the first at once, the others at delays drawn
within the write's length. The draws come from
``random.Random(seed)``: the seed and the schedule are in every failure message, and ``TIMM_SKNET_KILL_SEED`` runs
the same test with another seed.
"""
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple

from safetensors import safe_open

from timm_sknet.io.files import TEMP_PREFIX, sha256_file

SEED = int(os.environ.get('TIMM_SKNET_KILL_SEED', 27))
RUN_TIMEOUT_S = 300

# A writer stopped in the middle of writing an output (a file, or a store slot's install), until a line on stdin
_WRITER = r'''
import sys
from pathlib import Path
from timm_sknet.io.files import atomic_output
from timm_sknet.weights.store import install_weights
kind, where = sys.argv[1:]
output = install_weights('sknet50.caffe_in1k', False, 'test') if kind == 'install' else atomic_output(Path(where))
with output as tmp:
    tmp.write_bytes(b'first draft')
    tmp.unlink()  # then created anew, as safetensors' writer does
    tmp.write_bytes(b'half of an output' * 50_000)
    print('written', flush=True)
    sys.stdin.readline()
'''


EARLIER_SLOT = 'sk_shufflenetv2_050.mine'  # a store slot no writing command under test writes


def install_an_earlier_copy(store: Path) -> Path:
    """A good install of ``EARLIER_SLOT`` in ``store``, made as ``--install`` makes one (6 MB): the copy whose bytes
    a command killed while installing another one must leave as they are."""
    import timm
    from safetensors.torch import save_file
    from timm_sknet.weights.store import STORE_ENV, install_weights
    previous = os.environ.get(STORE_ENV)
    os.environ[STORE_ENV] = str(store)
    try:
        with install_weights(EARLIER_SLOT, False, 'test') as path:
            save_file(timm.create_model(EARLIER_SLOT.partition('.')[0]).state_dict(), str(path))
    finally:
        if previous is None:
            del os.environ[STORE_ENV]
        else:
            os.environ[STORE_ENV] = previous
    return store / EARLIER_SLOT


def converted(weights: Path) -> Tuple[Dict[str, str], List[tuple], int]:
    """What a converter wrote, as two whole runs agree on it: provenance, tensors (name, dtype, shape), file size
    (safetensors orders the header's metadata as it likes, so the bytes of two runs may differ); a file cut short
    differs in size."""
    with safe_open(str(weights), framework='np') as f:
        tensors = sorted((k, str(f.get_slice(k).get_dtype()), tuple(f.get_slice(k).get_shape())) for k in f.keys())
        return f.metadata(), tensors, weights.stat().st_size


def slot_state(slot: Path, reference: Tuple) -> str:
    """'as before' without the store slot, 'written' when it holds the whole install of ``reference``
    (``converted``), else what is wrong."""
    if not slot.exists():
        return 'as before'
    files = sorted(os.listdir(slot))
    if files != ['install.json', 'model.safetensors']:
        return f'a slot holding {files}'
    record = json.loads((slot / 'install.json').read_text())
    weights = slot / 'model.safetensors'
    if (record['sha256'], record['size']) != (sha256_file(weights), weights.stat().st_size):
        return 'a slot whose install.json does not match its weights'
    return 'written' if converted(weights) == reference else 'a slot with other weights'


def store_listing(monkeypatch, capsys) -> Tuple[int, str]:
    """``timm-sknet installed`` in this process: (exit code, what it printed)."""
    from support import run_cli
    code = run_cli(monkeypatch, 'installed')
    return code, capsys.readouterr().out


def checksums(root: Path, skip: Sequence[Path] = ()) -> Dict[str, str]:
    """Every file under ``root`` (hidden ones included) but ``skip`` and what is in them, with its sha256."""
    skipped = [Path(p) for p in skip]
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob('*'))
            if p.is_file() and not any(p == s or s in p.parents for s in skipped)}


def ours(root: Path) -> List[Path]:
    """Our temporaries and lock files anywhere under ``root``."""
    return sorted(p for p in root.rglob('*') if p.name.startswith(TEMP_PREFIX) or p.suffix == '.lock')


def writer_in_the_middle(folder: Path, install: bool = False) -> subprocess.Popen:
    """A process that has written part of an output into ``folder`` (with ``install``, of an install into the store
    ``folder``) and waits for a line on its stdin to finish."""
    env = dict(os.environ, TIMM_SKNET_HOME=str(folder))
    proc = subprocess.Popen([sys.executable, '-c', _WRITER, 'install' if install else 'file',
                             str(folder / 'output.bin')], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                            env=env)
    assert proc.stdout.readline() == 'written\n'
    return proc


def leftover_of_a_killed_writer(folder: Path, install: bool = False) -> Path:
    """Kill (SIGKILL) a process in the middle of writing an output into ``folder``; the temporary it leaves."""
    before = set(os.listdir(folder))
    proc = writer_in_the_middle(folder, install)
    proc.kill()
    proc.wait()
    (left,) = set(os.listdir(folder)) - before
    return folder / left


class Outcome(NamedTuple):
    anchor: str  # 'start': counted from the start; 'temporary': from when its first temporary appeared
    delay: float  # seconds
    exit_code: int  # -9: killed; 0: it had finished
    left: List[str]  # the temporaries it left in the watched folders


class KillSweep:
    """``command`` (argv) run with ``env``, writing into ``folders``; see the module docstring."""

    def __init__(self, command: Sequence[str], env: Optional[Dict[str, str]], folders: Sequence[Path]):
        self.command = [str(a) for a in command]
        self.env = dict(os.environ, **(env or {}))
        self.folders = list(folders)
        self.log: List[Outcome] = []

    def _temporaries(self) -> List[str]:
        found = []
        for folder in self.folders:
            try:
                found += [str(folder / n) for n in os.listdir(folder) if n.startswith(TEMP_PREFIX)]
            except FileNotFoundError:
                pass
        return sorted(found)

    def _start(self) -> subprocess.Popen:
        return subprocess.Popen(self.command, env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                text=True)

    def run_to_end(self) -> subprocess.CompletedProcess:
        """One run without a kill. The first is timed: its length and that of its write set the schedule."""
        before = set(self._temporaries())
        start = time.monotonic()
        proc, first_temporary = self._start(), None
        while proc.poll() is None:
            if first_temporary is None and set(self._temporaries()) - before:
                first_temporary = time.monotonic()
            time.sleep(0.001)
        end = time.monotonic()
        if not hasattr(self, 'duration'):
            self.duration, self.write_s = end - start, end - (first_temporary or end)
        _, err = proc.communicate()
        return subprocess.CompletedProcess(self.command, proc.returncode, '', err)

    def schedule(self, seed: int, spread: int, anchored: int) -> List[tuple]:
        rng = random.Random(f'{seed} {" ".join(self.command[:2])}')
        return ([('start', self.duration * (i + rng.random()) / spread) for i in range(spread)] +
                [('temporary', self.write_s * rng.random() if i else 0.) for i in range(anchored)])

    def kill_at(self, anchor: str, delay: float) -> Outcome:
        before = set(self._temporaries())
        proc = self._start()
        start = time.monotonic()
        if anchor == 'temporary':
            while proc.poll() is None and not set(self._temporaries()) - before:
                time.sleep(0.0005)
            start = time.monotonic()
        while proc.poll() is None and time.monotonic() - start < delay:
            time.sleep(0.0005)
        proc.send_signal(signal.SIGKILL)
        _, err = proc.communicate(timeout=RUN_TIMEOUT_S)
        assert proc.returncode in (0, -signal.SIGKILL), (proc.returncode, err)
        outcome = Outcome(anchor, round(delay, 4), proc.returncode, sorted(set(self._temporaries()) - before))
        self.log.append(outcome)
        return outcome

    def sweep(self, output_state: Callable[[], str], undo_output: Callable[[], None], *,
              seed: int = SEED, spread: int = 4, anchored: int = 1) -> None:
        """The seeded kills. After each, ``output_state()`` must say 'as before' (nothing of the killed run in
        place) or 'written' (the whole output: the run had finished), and a written output is undone so that the
        next run writes it again."""
        for anchor, delay in self.schedule(seed, spread, anchored):
            self.kill_at(anchor, delay)
            state = output_state()
            assert state in ('as before', 'written'), f'after a kill the output is {state}: {self.report(seed)}'
            if state == 'written':
                undo_output()

    def report(self, seed: int = SEED) -> str:
        return (f'{" ".join(self.command)}: seed {seed}, run {self.duration:.2f} s, write {self.write_s:.3f} s; '
                f'kills: {self.log}')

    def killed_mid_write(self) -> bool:
        """Whether a kill left a temporary (which the next run then had to remove)."""
        return any(outcome.left for outcome in self.log)


def install_survives_kills(command: Sequence, slot: Path, monkeypatch, capsys, spread: int, anchored: int) -> None:
    """``command`` installs ``slot``: killed at the seeded moments, the slot is absent or whole after each kill; a
    writer killed mid-write leaves a temporary that ``timm-sknet installed`` lists; then the next install succeeds,
    the listing shows no leftover, and an earlier install of another slot keeps every byte."""
    store = slot.parent
    monkeypatch.setenv('TIMM_SKNET_HOME', str(store))
    install_an_earlier_copy(store)
    sweep = KillSweep(command, None, [store])
    assert sweep.run_to_end().returncode == 0
    reference = converted(slot / 'model.safetensors')
    shutil.rmtree(slot)
    before = checksums(store)

    sweep.sweep(lambda: slot_state(slot, reference), lambda: shutil.rmtree(slot), spread=spread, anchored=anchored)
    assert sweep.killed_mid_write(), sweep.report()
    planted = leftover_of_a_killed_writer(store)
    code, listing = store_listing(monkeypatch, capsys)
    assert code == 0 and f'left behind  {planted}  (' in listing, listing
    assert 'or now: timm-sknet installed --remove-leftovers' in listing

    final = sweep.run_to_end()
    assert final.returncode == 0, (final.stderr, sweep.report())
    assert slot_state(slot, reference) == 'written'
    code, listing = store_listing(monkeypatch, capsys)
    assert code == 0 and 'left behind' not in listing and 'in progress' not in listing, listing
    assert listing.count('checked: as installed') == 2, listing  # this install and the earlier one
    assert ours(store) == [], sweep.report()
    assert checksums(store, skip=[slot]) == before  # the earlier install, byte for byte
    assert sorted(os.listdir(store)) == sorted(['.locks', EARLIER_SLOT, slot.name])

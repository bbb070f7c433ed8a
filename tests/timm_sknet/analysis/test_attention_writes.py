"""``timm-sknet attention`` writes its five files together or not at all: a write that fails half-way (a file-size
limit, as on a full disk) leaves neither some of the files nor the folder it made; --force keeps the user's files;
killed (SIGKILL) at any moment of a run it leaves none or all of them, and the next run removes what it left."""
import hashlib
import os
import resource
import subprocess
import sys
from pathlib import Path

from kill_sweep import KillSweep, checksums, leftover_of_a_killed_writer, ours

TIMM_SKNET = Path(sys.executable).parent / 'timm-sknet'
OUTPUTS = ['attention.json', 'channels.csv', 'channels.png', 'units.csv', 'units.png']


def _attention(out: Path, *extra: str, preexec_fn=None) -> subprocess.CompletedProcess:
    return subprocess.run([str(TIMM_SKNET), 'attention', '--model', 'sk_resnet18', '--img-size', '64', '--workers', '0',
                           '--synthetic', '1', '--out', str(out), *extra],
                          capture_output=True, text=True, preexec_fn=preexec_fn, timeout=300)


def test_a_write_that_fails_half_way_leaves_nothing(tmp_path):
    """units.csv (under 2 kB) is written first and fits a 16 kB file-size limit; channels.csv (200 kB) does not."""
    out = tmp_path / 'figures'

    def limit_file_size():
        resource.setrlimit(resource.RLIMIT_FSIZE, (16 << 10, 16 << 10))
    proc = _attention(out, preexec_fn=limit_file_size)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith(f'timm-sknet: error: could not write {out}/') and proc.stderr.count('\n') == 1
    assert 'File too large' in proc.stderr and 'Traceback' not in proc.stderr
    assert os.listdir(tmp_path) == []


def test_force_replaces_its_outputs_and_nothing_else(tmp_path):
    out = tmp_path / 'figures'
    out.mkdir()
    (out / 'notes.md').write_text('my reading of the plots')
    (out / 'units.csv').write_text('an older run')
    proc = _attention(out)
    assert proc.returncode == 2 and proc.stderr == (f'timm-sknet: error: {out / "units.csv"} already exists; pass '
                                                    '--force to overwrite it\n')
    assert sorted(os.listdir(out)) == ['notes.md', 'units.csv']
    notes = hashlib.sha256((out / 'notes.md').read_bytes()).hexdigest()
    proc = _attention(out, '--force')
    assert proc.returncode == 0, proc.stderr
    assert sorted(os.listdir(out)) == sorted(['notes.md', *OUTPUTS])
    assert hashlib.sha256((out / 'notes.md').read_bytes()).hexdigest() == notes
    assert (out / 'units.csv').read_text() != 'an older run'


def test_killed_at_any_moment(tmp_path):
    """Seeded SIGKILLs across a real run (``kill_sweep``): after each, none of the five files or all of them; then a
    run succeeds, removes what killed writers left in --out, and the user's notes there keep every byte."""
    out = tmp_path / 'figures'
    out.mkdir()
    (out / 'notes.md').write_text('my reading of the plots')
    sweep = KillSweep([TIMM_SKNET, 'attention', '--model', 'sk_resnet18', '--img-size', '64', '--workers', '0',
                       '--synthetic', '1', '--out', out], None, [out])
    assert sweep.run_to_end().returncode == 0
    reference = checksums(out, skip=[out / 'notes.md'])
    assert sorted(reference) == OUTPUTS

    def state() -> str:
        present = sorted(name for name in OUTPUTS if (out / name).exists())
        if not present:
            return 'as before'
        return 'written' if checksums(out, skip=[out / 'notes.md']) == reference else f'these of its files: {present}'

    def undo():
        for name in OUTPUTS:
            (out / name).unlink()
    undo()
    before = checksums(out)
    sweep.sweep(state, undo, spread=3, anchored=1)
    planted = leftover_of_a_killed_writer(out)

    final = sweep.run_to_end()
    assert final.returncode == 0, (final.stderr, sweep.report())
    assert state() == 'written' and not planted.exists()
    assert ours(out) == [], sweep.report()
    assert checksums(out, skip=[out / name for name in OUTPUTS]) == before

"""``timm-sknet publish --dry-run --output-dir`` killed (SIGKILL) at a seeded sweep of moments of a real run
(``kill_sweep``): after every kill the repo folder is absent or whole, the next run succeeds and removes what the
killed ones left beside the folder and in the temporary directory (timm's export of the config writes the weights
there), and the user's files keep every byte, with no lock file among them."""
import os
import shutil
import sys
from pathlib import Path

from kill_sweep import KillSweep, checksums, leftover_of_a_killed_writer, ours

TIMM_SKNET = Path(sys.executable).parent / 'timm-sknet'


def test_dry_run_killed_at_any_moment(weights, tmp_path):
    work, scratch = tmp_path / 'project', tmp_path / 'tmp'
    (work / 'src').mkdir(parents=True)
    scratch.mkdir()
    (work / 'README.md').write_text('# my project\n')
    (work / 'src' / 'train.py').write_text('print("training")\n')
    out = work / 'repo'
    sweep = KillSweep([TIMM_SKNET, 'publish', '--model', 'sknet50', '--weights', weights, '--repo-id',
                       'someone/sknet50.caffe_in1k', '--dry-run', '--output-dir', out],
                      {'TMPDIR': str(scratch)}, [work, scratch])
    assert sweep.run_to_end().returncode == 0
    reference = checksums(out)
    shutil.rmtree(out)
    before = checksums(work)

    sweep.sweep(lambda: 'as before' if not out.exists() else 'written' if checksums(out) == reference else
                f'a folder holding {sorted(os.listdir(out))}', lambda: shutil.rmtree(out), spread=3, anchored=1)
    planted = [leftover_of_a_killed_writer(work), leftover_of_a_killed_writer(scratch)]

    final = sweep.run_to_end()
    assert final.returncode == 0, (final.stderr, sweep.report())
    assert checksums(out) == reference
    assert not any(path.exists() for path in planted)
    assert ours(work) == [] and os.listdir(scratch) == [], sweep.report()
    assert checksums(work, skip=[out]) == before
    assert sweep.killed_mid_write(), sweep.report()

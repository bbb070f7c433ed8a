"""A release resumes: after Ctrl-C (SIGINT) and after a kill without warning (SIGKILL) in each of its five steps, and
after a full disk in its work folder, the same command finishes the release. Finished steps whose inputs did not
change are skipped, no file is uploaded twice, and the final summary is an uninterrupted run's.

Each signal is sent a seeded random delay after the release announces a step (the seed is in the test: a failure
replays); a step shorter than the delay (the gate takes milliseconds) is then interrupted in the step after it.
"""
import random
import re
import subprocess
from pathlib import Path

import pytest

from hub_helpers import NAMESPACE
from release_helpers import REPO, SIGNALS, commits, release, results_of, uploads
from timm_sknet.io.files import sha256_file

SEED = 20261208
MAX_DELAY_S = 0.5


@pytest.fixture(scope='module')
def baseline(caffe_releaser, release_hub, tmp_path_factory):
    """An uninterrupted release: the summary every resumed one must end with."""
    done = release(caffe_releaser, release_hub, REPO, tmp_path_factory.mktemp('baseline') / 'work')
    assert done.run.returncode == 0, done.run.stdout + done.run.stderr
    return done


def _normalised(summary: str, repo: str, workdir: Path) -> str:
    """The summary with what differs between two releases of the same file to two repos: the repo, its commit."""
    summary = summary.replace(f'{NAMESPACE}/{repo}', 'REPO').replace(str(workdir), 'WORKDIR')
    return re.sub(r'\b[0-9a-f]{40}\b', 'COMMIT', summary)


@pytest.mark.parametrize('name', SIGNALS)
def test_a_release_resumes_after_a_signal_in_each_step(caffe_releaser, release_hub, baseline, tmp_path, name):
    repo, workdir = f'sknet50.{name.lower()}', tmp_path / 'work'
    delays = random.Random(f'{SEED}-{name}')
    before = len(release_hub.requests())
    for step in range(1, 6):
        delay = delays.uniform(0, MAX_DELAY_S)
        stopped = caffe_releaser.interrupt(repo, workdir, step, SIGNALS[name], delay)
        where = f'step {step}, {delay:.3f} s in (seed {SEED})'
        started = [int(line[1]) for line in stopped.step_lines() if line.endswith(': started')]
        landed = started[-1]  # the step under way when the signal came
        assert landed == step or (step == 3 and landed == 4), (where, stopped.stdout)  # the gate is over in ms
        assert not any(line.startswith(f'[{landed}/5]') and ': done in ' in line for line in stopped.step_lines())
        if name == 'SIGKILL':
            assert stopped.returncode == -9, (where, stopped.stdout, stopped.stderr)
        else:
            assert stopped.returncode == 130, (where, stopped.stdout, stopped.stderr)
            last = stopped.stderr.splitlines()[-1]
            interrupted_in = int(re.fullmatch(
                rf'timm-sknet: error: interrupted \(Ctrl-C\) in \[(\d)/5\] [a-z-]+; the finished steps are recorded '
                rf'in {re.escape(str(workdir))}: run the same command again to resume', last)[1])
            assert interrupted_in == landed, (where, last)
            assert 'Traceback' not in stopped.stderr
    resumed = release(caffe_releaser, release_hub, repo, workdir)
    assert resumed.run.returncode == 0, resumed.run.stdout + resumed.run.stderr
    assert any('skipped, finished before with the same inputs' in line for line in resumed.run.step_lines())
    assert _normalised(resumed.run.summary(), repo, workdir) == \
        _normalised(baseline.run.summary(), REPO, baseline.workdir)
    assert results_of(workdir)['evaluations'] == results_of(baseline.workdir)['evaluations']

    requests = [r for r in release_hub.requests()[before:] if f'{NAMESPACE}/{repo}' in r['path']
                or r['path'].startswith('/lfs/')]
    assert set(uploads(requests).values()) <= {1}, uploads(requests)  # no object stored twice
    assert len(commits(requests)) == 1  # and one commit: a resumed publish finds the files already there
    assert not list(workdir.rglob('.tsk-*')), list(workdir.rglob('.tsk-*'))


def _mount_tmpfs(folder: Path, size: str) -> None:
    folder.mkdir()
    mounted = subprocess.run(['mount', '-t', 'tmpfs', '-o', f'size={size}', 'tmpfs', str(folder)],
                             capture_output=True, text=True)
    if mounted.returncode:
        pytest.skip(f'a full disk needs a small file system, and mounting a tmpfs failed here: {mounted.stderr}')


def test_a_full_disk_in_the_work_folder_is_one_line_and_the_release_resumes(caffe_releaser, release_hub, baseline,
                                                                             tmp_path):
    """The work folder on a 40 MB file system: the 110 MB weights do not fit. One line naming the cause, nothing
    half-written, the store's copy untouched; with room made, the same command finishes the release."""
    installed = Path(caffe_releaser.env['TIMM_SKNET_HOME']) / REPO / 'model.safetensors'
    before = sha256_file(installed)
    disk = tmp_path / 'disk'
    _mount_tmpfs(disk, '40m')
    try:
        workdir = disk / 'work'
        full = release(caffe_releaser, release_hub, 'sknet50.fulldisk', workdir)
        assert full.run.returncode == 2, full.run.stdout + full.run.stderr
        last = full.run.stderr.splitlines()[-1]
        assert last == (f'timm-sknet: error: could not write {workdir / "model.safetensors"}: No space left on device; '
                        'free some space or write it elsewhere (nothing was written)'), full.run.stderr
        assert 'Traceback' not in full.run.stderr
        assert sorted(p.name for p in workdir.iterdir()) == ['.timm-sknet-release.json']
        assert [r for r in full.requests if r['method'] in ('PUT', 'POST')] == []
        assert sha256_file(installed) == before

        subprocess.run(['mount', '-o', 'remount,size=400m', str(disk)], check=True)
        resumed = release(caffe_releaser, release_hub, 'sknet50.fulldisk', workdir)
        assert resumed.run.returncode == 0, resumed.run.stdout + resumed.run.stderr
        assert _normalised(resumed.run.summary(), 'sknet50.fulldisk', workdir) == \
            _normalised(baseline.run.summary(), REPO, baseline.workdir)
    finally:
        subprocess.run(['umount', str(disk)], check=True)

"""``timm-sknet release`` rehearsed whole: a release-format caffemodel and a checkpoint in the authors' PyTorch format,
made here, go through convert, validate, gate, publish and read back, against a Hub on loopback (the project's
write server, whose file downloads an olah answers); the expected validation set is shrunk (``release_helpers``).

A pass, the same command again, a repo holding other weights, a shortfall refused then accepted, the authors'
PyTorch checkpoint, and each way the checks before any work refuse. Resuming after signals and a full disk:
``test_release_resume.py``.
"""
import hashlib
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from hub_helpers import BIN_DIR, NAMESPACE, TOKEN, WriteHub, free_port
from release_helpers import (
    IMAGES, REPO, Released, Releaser, Run, commits, imagenet_like, pytorchinsight_source, release, results_of, uploads)
from test_hub_e2e import TRANSFORMERS_SCRIPT
from timm_sknet.io.files import sha256_file

REPO_ID = f'{NAMESPACE}/{REPO}'
STEPS = ('convert', 'validate', 'gate', 'publish', 'read-back')
REASON = 'the *released* file is not the one the paper measured:\nsee https://example.org/issue/1 "as discussed"'


@pytest.fixture(scope='module')
def hub(release_hub) -> WriteHub:
    return release_hub


@pytest.fixture(scope='module')
def releaser(caffe_releaser) -> Releaser:
    return caffe_releaser


@pytest.fixture(scope='module')
def passed(releaser, hub, tmp_path_factory) -> Released:
    """The first release of the caffemodel."""
    return release(releaser, hub, REPO, tmp_path_factory.mktemp('release') / 'work')


def _one_line(run: Run, says: str, alone: bool = True) -> str:
    """The run was refused in one line saying ``says``: on its own (``alone``), or after the progress lines of the
    work done before the refusal."""
    assert run.returncode == 2, run.stdout + run.stderr
    lines = run.stderr.splitlines()
    assert lines and lines[-1].startswith('timm-sknet: error: ') and 'Traceback' not in run.stderr, run.stderr
    assert len(lines) == 1 or not alone, run.stderr
    assert [line for line in lines if 'error' in line] == lines[-1:], run.stderr
    assert says in lines[-1], run.stderr
    return lines[-1]


def test_a_release_converts_validates_gates_publishes_and_reads_back(passed, releaser, hub):
    run = passed.run
    assert run.returncode == 0, run.stdout + run.stderr
    lines = run.step_lines()
    for number, step in enumerate(STEPS, 1):
        assert f'[{number}/5] {step}: started' in lines
        assert any(line.startswith(f'[{number}/5] {step}: done in ') for line in lines), lines
    # the validation's progress, with its rate and ETA, in a log as on a terminal
    assert f'sknet50.caffe_in1k @ 224 crop_pct 0.875: 0/{IMAGES} imgs (0%)' in run.stderr
    assert f'sknet50.caffe_in1k @ 320 crop_pct 1.0: {IMAGES}/{IMAGES} imgs (100%), ' in run.stderr
    assert 'ETA' in run.stderr

    # one commit holding the three files, the weights stored once; the store holds what was published
    (commit,) = commits(passed.requests)
    sha = commit['commit']
    assert commit['files'] == {'model.safetensors': 'lfs', 'config.json': 'regular', 'README.md': 'regular'}
    assert list(uploads(passed.requests).values()) == [1]
    weights = hub.file(REPO_ID, sha, 'model.safetensors')
    assert weights == (passed.workdir / 'model.safetensors').read_bytes()
    assert sha256_file(Path(releaser.env['TIMM_SKNET_HOME']) / REPO / 'model.safetensors') == \
        hashlib.sha256(weights).hexdigest()

    # the card: each measured number with its preprocessing, the validate.py flags and the authors' number
    card = hub.file(REPO_ID, sha, 'README.md').decode()
    assert ('| 224 x 224 | bilinear resize of the shorter side to 256, centre crop 224 | `--img-size 224 --crop-pct '
            '0.875` | 79.21 | 100.000 | +20.790 |') in card
    for flags in ('--img-size 320 --crop-pct 0.875', '--img-size 320 --crop-pct 1.0'):
        assert f'| 320 x 320 | bilinear resize of the shorter side to {320 if "1.0" in flags else 365}, centre crop ' \
               f'320 | `{flags}` | 80.68 | ' in card
    assert 'The authors give no resize for their 320 x 320 number, 80.68%.' in card
    assert "Gate: passed: top-1 at 224 (224 crop_pct 0.875) 100.000%, 20.790 points above the authors' 79.21%" in card
    assert 'Shortfall' not in card

    # the read-back came through the Hub API, answered by olah: every file at the commit
    read = {r['path'] for r in passed.requests if r.get('read_through') and r['status'] == 200}
    assert read >= {f'/{REPO_ID}/resolve/{sha}/{name}' for name in ('model.safetensors', 'config.json', 'README.md')}
    summary = run.summary()
    assert f'  publish: {REPO_ID} at commit {sha}: {hub.endpoint}/{REPO_ID}/commit/{sha}\n' in summary
    assert f'  read-back: hf-hub:{REPO_ID}@{sha}: 3 files with the uploaded sha256' in summary
    assert not (passed.workdir / 'read-back-cache').exists()


def test_the_same_command_again_skips_every_step_and_uploads_nothing(passed, releaser, hub):
    again = release(releaser, hub, REPO, passed.workdir)
    assert again.run.returncode == 0, again.run.stderr
    for number, step in enumerate(STEPS, 1):
        assert any(line.startswith(f'[{number}/5] {step}: skipped, finished before with the same inputs: ')
                   for line in again.run.step_lines()), again.run.stdout
    assert [r for r in again.requests if r['method'] in ('PUT', 'POST')] == []
    assert again.run.summary() == passed.run.summary()


def test_a_repo_holding_other_weights_is_refused_before_validation(passed, releaser, hub, tmp_path):
    """Other weights already in the repo: refused once the release's own are known (before the validation, had it
    not been done already), nothing uploaded; --replace-weights publishes over them."""
    other = f'{NAMESPACE}/sknet50.other'
    weights = tmp_path / 'other.safetensors'
    shutil.copyfile(passed.workdir / 'model.safetensors', weights)
    with open(weights, 'r+b') as f:  # other weights: one float of the last tensor changed
        f.seek(-4, 2)
        f.write(b'\x00\x00\x80\x3f')
    env = dict(releaser.env)
    publish = subprocess.run([str(BIN_DIR / 'timm-sknet'), 'publish', '--model', 'sknet50', '--weights', str(weights),
                              '--repo-id', other, '--allow-unvalidated'], env=env, capture_output=True, text=True,
                             timeout=300)
    assert publish.returncode == 0, publish.stderr
    workdir = tmp_path / 'work'
    shutil.copytree(passed.workdir, workdir)

    refused = release(releaser, hub, 'sknet50.other', workdir)
    _one_line(refused.run, f'{other} already holds other weights (model.safetensors {sha256_file(weights)}, '
                           f'these are {sha256_file(workdir / "model.safetensors")}); pass --replace-weights')
    assert '[2/5]' not in refused.run.stdout
    assert [r for r in refused.requests if r['method'] in ('PUT', 'POST')] == []

    replaced = release(releaser, hub, 'sknet50.other', workdir, '--replace-weights')
    assert replaced.run.returncode == 0, replaced.run.stderr
    (commit,) = commits(replaced.requests)
    assert hub.file(other, commit['commit'], 'model.safetensors') == (workdir / 'model.safetensors').read_bytes()
    assert hub.git(other, 'rev-list', '--count', commit['commit']) == '3'  # the other weights' commit is kept


def test_a_shortfall_is_refused_and_then_published_with_its_reason(releaser, hub, tmp_path):
    """Half the images in the wrong class: 50% at 224, far below the authors' 79.21%. The gate refuses, nothing is
    uploaded; --accept-shortfall publishes, the card stating the shortfall and the reason word for word."""
    data = tmp_path / 'val'
    expected = imagenet_like(data, releaser.source, IMAGES, mislabelled=IMAGES // 2, seed=0)
    short = Releaser(releaser.source, data, expected, releaser.env['HF_ENDPOINT'], tmp_path)
    short.env = releaser.env
    workdir = tmp_path / 'work'
    refused = release(short, hub, 'sknet50.short', workdir)
    _one_line(refused.run, "measured top-1 at 224 is 50.000%, 29.210 points below the authors' 79.21% (from the "
                           'paper, as 100 minus its top-1 error), more than the 0.5 a card may quote; nothing was '
                           'published. Usual causes: the channel order', alone=False)
    assert [r for r in refused.requests if r['method'] in ('PUT', 'POST')] == []
    assert not (hub.root / 'models' / NAMESPACE / 'sknet50.short').exists()

    accepted = release(short, hub, 'sknet50.short', workdir, '--accept-shortfall', REASON)
    assert accepted.run.returncode == 0, accepted.run.stderr
    assert [line.split(': ')[1] for line in accepted.run.step_lines() if line.startswith(('[1/5]', '[2/5]'))
            and not line.endswith('started')] == ['skipped, finished before with the same inputs'] * 2, \
        accepted.run.stdout
    (commit,) = commits(accepted.requests)
    card = hub.file(f'{NAMESPACE}/sknet50.short', commit['commit'], 'README.md').decode()
    assert ("**Shortfall:** the top-1 measured at 224 x 224 on these weights, 50.000%, is 29.210 points below the "
            "authors' 79.21%") in card
    assert '> the *released* file is not the one the paper measured:\n> see https://example.org/issue/1 "as ' \
           'discussed"\n' in card
    assert '| 79.21 | 50.000 | -29.210 |' in card


def test_the_authors_pytorch_checkpoint_is_released(hub, tmp_path):
    source = pytorchinsight_source(tmp_path)
    expected = imagenet_like(tmp_path / 'val', source, IMAGES)
    releaser = Releaser(source, tmp_path / 'val', expected, hub.endpoint, tmp_path)
    released = release(releaser, hub, 'sk_resnet50.pytorchinsight_in1k', tmp_path / 'work')
    assert released.run.returncode == 0, released.run.stdout + released.run.stderr
    (commit,) = commits(released.requests)
    card = hub.file(f'{NAMESPACE}/sk_resnet50.pytorchinsight_in1k', commit['commit'], 'README.md').decode()
    assert 'converted by timm-sknet from the checkpoint `sk_resnet50.pth.tar`' in card
    assert "| 224 x 224 | bilinear resize of the shorter side to 256, centre crop 224 | `--img-size 224 --crop-pct " \
           "0.875` | 77.538 | 100.000 | +22.462 |" in card
    assert '| 320 x 320 | bilinear resize of the shorter side to 320, centre crop 320 | `--img-size 320 --crop-pct ' \
           '1.0` | not reported |' in card
    assert 'the checkpoint records epoch | 100' in card
    assert 'No other runtime ran the checkpoint' in card
    assert [e['protocol'] for e in results_of(tmp_path / 'work')['evaluations']] == [
        '224 crop_pct 0.875', '320 crop_pct 0.875', '320 crop_pct 1.0']


PREFLIGHT = {  # case -> what the one line says ({endpoint}: the Hub asked)
    'unreachable_hub': 'cannot reach the Hub at {endpoint} (',
    'wrong_token': 'the Hub at {endpoint} refuses the token (',
    'no_token': 'no Hugging Face token: log in with `hf auth login` or set HF_TOKEN',
    'missing_data': 'data directory {data} does not exist; pass ImageNet val in ImageFolder layout',
    'not_all_of_val': f'holds {IMAGES + 1} images in',
    'missing_source': 'source file {source} does not exist or is not a file',
    'not_an_authors_tag': "sknet26.",
    'prototxt_for_a_checkpoint': '--prototxt is for the Caffe release',
}


@pytest.mark.parametrize('case', PREFLIGHT)
def test_what_can_be_checked_before_any_work_is_refused_in_one_line(releaser, hub, tmp_path, case):
    env, extra, release = dict(releaser.env), [], releaser
    endpoint = hub.endpoint
    if case == 'unreachable_hub':
        endpoint = env['HF_ENDPOINT'] = f'http://127.0.0.1:{free_port()}'
    elif case == 'wrong_token':
        env['HF_TOKEN'] = 'hf_notTheServersToken0000'
    elif case == 'no_token':
        del env['HF_TOKEN']
    elif case == 'missing_data':
        release = Releaser(releaser.source, tmp_path / 'absent', releaser.expected, hub.endpoint, tmp_path)
    elif case == 'not_all_of_val':
        data = tmp_path / 'val'
        shutil.copytree(releaser.data, data)
        extra_image = next(data.rglob('*.JPEG'))
        shutil.copyfile(extra_image, extra_image.with_name('ILSVRC2012_val_00099999.JPEG'))
        release = Releaser(releaser.source, data, releaser.expected, hub.endpoint, tmp_path)
    elif case == 'missing_source':
        release = Releaser(releaser.source._replace(file=tmp_path / 'absent.caffemodel'), releaser.data,
                           releaser.expected, hub.endpoint, tmp_path)
    elif case == 'not_an_authors_tag':
        release = Releaser(releaser.source._replace(model='sknet26'), releaser.data, releaser.expected,
                           hub.endpoint, tmp_path)
    elif case == 'prototxt_for_a_checkpoint':
        release = Releaser(releaser.source._replace(model='sk_resnet50.pytorchinsight_in1k'), releaser.data,
                           releaser.expected, hub.endpoint, tmp_path)
        extra = ['--prototxt', str(releaser.source.file)]
    workdir = tmp_path / 'work'
    before = len(hub.requests())
    start = time.monotonic()
    repo = 'sk_resnet50.preflight' if case == 'prototxt_for_a_checkpoint' else 'sknet50.preflight'
    run = release.run(repo, workdir, *extra, env=env)
    _one_line(run, PREFLIGHT[case].format(endpoint=endpoint, data=tmp_path / 'absent',
                                          source=tmp_path / 'absent.caffemodel'))
    assert not workdir.exists() and run.stdout == ''
    assert time.monotonic() - start < 60  # before any work: no conversion, no validation
    assert [r for r in hub.requests()[before:] if r['method'] in ('PUT', 'POST')] == []
    assert TOKEN not in run.stderr


def test_transformers_loads_the_released_repo(passed, releaser, tmp_path):
    """What the release published loads in transformers' timm wrapper, through the same Hub, with timm's logits."""
    assert passed.run.returncode == 0
    output = tmp_path / 'transformers.safetensors'
    env = dict(releaser.env, HF_HOME=str(tmp_path / 'hf'))
    proc = subprocess.run([sys.executable, '-c', TRANSFORMERS_SCRIPT, REPO_ID, str(output)], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    report = json.loads(proc.stdout.splitlines()[-1])
    assert report['wrapped'] == 'SKNet' and report['same_weights']
    assert report['pipeline_labels'] == report['timm_top5_labels']
    out = load_file(str(output))
    assert torch.equal(out['aligned_logits'], out['timm_logits'])


def test_the_same_weights_with_other_provenance_are_neither_replaced_nor_refused(releaser, hub, tmp_path):
    """Weights installed and published before by ``convert-caffe --install --verify`` (verified on generated images:
    other metadata, another sha256, the same tensors) are these weights: the store's copy stays as it is, and the
    repo is published to without --replace-weights or --force."""
    home = tmp_path / 'home'
    env = dict(releaser.env, TIMM_SKNET_HOME=str(home / 'store'))
    subprocess.run([str(BIN_DIR / 'convert-caffe'), str(releaser.source.file), '--model', 'sknet50', '--install',
                    '--verify'], env=env, check=True, capture_output=True, timeout=300)
    installed = home / 'store' / REPO / 'model.safetensors'
    before = installed.read_bytes()
    publish = subprocess.run([str(BIN_DIR / 'timm-sknet'), 'publish', '--model', 'sknet50', '--weights',
                              str(installed), '--repo-id', f'{NAMESPACE}/sknet50.earlier', '--allow-unvalidated'],
                             env=env, capture_output=True, text=True, timeout=300)
    assert publish.returncode == 0, publish.stderr
    later = Releaser(releaser.source, releaser.data, releaser.expected, hub.endpoint, home)
    released = release(later, hub, 'sknet50.earlier', tmp_path / 'work')
    assert released.run.returncode == 0, released.run.stdout + released.run.stderr
    assert installed.read_bytes() == before
    assert sha256_file(tmp_path / 'work' / 'model.safetensors') != hashlib.sha256(before).hexdigest()
    (commit,) = commits(released.requests)
    assert hub.file(f'{NAMESPACE}/sknet50.earlier', commit['commit'], 'model.safetensors') == \
        (tmp_path / 'work' / 'model.safetensors').read_bytes()


def test_two_releases_in_one_work_folder_one_runs_the_other_is_refused_at_once(releaser, hub, tmp_path):
    workdir = tmp_path / 'work'
    with subprocess.Popen(releaser.command('sknet50.twice', workdir), env=releaser.env, stdout=subprocess.PIPE,
                          stderr=subprocess.DEVNULL, text=True) as first:
        try:
            for line in first.stdout:
                if line.startswith('[1/5] convert: started'):
                    break
            start = time.monotonic()
            second = releaser.run('sknet50.twice', workdir)
            assert time.monotonic() - start < 30  # refused, not queued
            _one_line(second, f'another process has been writing the release work folder {workdir} (another '
                              f'timm-sknet release) (it holds {workdir / ".release.lock"}); let it finish and run this '
                              'again')
        finally:
            first.kill()

"""``timm-sknet publish`` uploading for real: the CLI against a writable Hub on loopback, then olah serving the
upload to timm.

The Hub is ``tests/hub_write_server.py`` (no writable Hub-compatible server exists on PyPI), which implements
the part of the Hub's HTTP API that huggingface_hub's create_repo, create_branch, repo_info and upload_folder
call, as a separate process with its git repos in tmp. The CLI runs as a subprocess with ``HF_ENDPOINT`` at it,
``HF_HOME`` in tmp and the token in ``HF_TOKEN``. With hf_xet importable, huggingface_hub uploads LFS files
through xet and never falls back (``_commit_api._upload_files``); the server implements the plain LFS transfer,
so ``HF_HUB_DISABLE_XET`` makes the client take that path. What makes re-publishing a no-op comes before either
transfer: ``upload_folder`` (its ``create_commit``) drops the files whose oid from the preupload endpoint equals
their local oid. The server's test-only switch cuts uploads off mid-transfer, for the dropped-connection case.
"""
import subprocess
from pathlib import Path
from typing import Dict, Iterator, List, NamedTuple

import pytest
import torch
from safetensors.torch import load_file, save_file

from hub_helpers import (
    BIN_DIR, NAMESPACE, TOKEN, WriteHub, client_env, convert_random_sknet50, load_through_hub, olah, write_hub)
from hub_write_server import DROP_UPLOADS_DIR
from support import run_cli
from timm_sknet.io.files import sha256_file
from timm_sknet.weights.store import read_metadata

REPO = f'{NAMESPACE}/sknet50.upload'
DROPPED_REPO = f'{NAMESPACE}/sknet50.dropped'
REPO_FILES = {'model.safetensors', 'config.json', 'README.md'}


class Publish(NamedTuple):
    proc: subprocess.CompletedProcess
    requests: List[dict]  # what the server was asked during this run, with what it answered and did

    def only(self, method: str, path: str) -> dict:
        """The one request to ``path``; the test fails if there were none or several."""
        found = [r for r in self.requests if r['method'] == method and r['path'] == path]
        assert len(found) == 1, (method, path, self.requests)
        return found[0]

    def check_published(self, hub: WriteHub, repo_id: str, branch: str) -> str:
        """Asserts the run succeeded with one commit to ``branch``, which it reported; returns that commit."""
        assert self.proc.returncode == 0, self.proc.stderr[-4000:] + hub.log.read_text()[-4000:]
        commit = self.only('POST', f'/api/models/{repo_id}/commit/{branch}')['commit']
        assert self.proc.stdout == f'published {repo_id}: {hub.endpoint}/{repo_id}/commit/{commit}\n'
        return commit


def _publish(hub: WriteHub, hf_home: Path, weights: Path, *extra: str, repo_id: str = REPO,
             token: str = TOKEN) -> Publish:
    """The real CLI, uploading (no --dry-run) to ``hub``."""
    env = client_env(hub.endpoint, hf_home)
    env.update(HF_TOKEN=token, HF_HUB_DISABLE_XET='1')
    before = len(hub.requests())
    proc = subprocess.run(
        [str(BIN_DIR / 'timm-sknet'), 'publish', '--model', 'sknet50', '--weights', str(weights),
         '--repo-id', repo_id, '--allow-unvalidated', *extra], env=env, capture_output=True, text=True, timeout=300)
    return Publish(proc, hub.requests()[before:])


def _changes(hub: WriteHub, repo_id: str, commit: str) -> Dict[str, str]:
    """path -> A(dded) / M(odified) / D(eleted) by ``commit`` against its parent."""
    lines = hub.git(repo_id, 'diff-tree', '--no-commit-id', '--name-status', '-r', f'{commit}^', commit)
    return {path: status for status, path in (line.split('\t') for line in lines.splitlines())}


@pytest.fixture(scope='module')
def weights(tmp_path_factory) -> Path:
    return convert_random_sknet50(tmp_path_factory.mktemp('weights'))


@pytest.fixture(scope='module')
def hub(tmp_path_factory) -> Iterator[WriteHub]:
    with write_hub(tmp_path_factory.mktemp('hub')) as hub:
        yield hub


class DroppedUpload(NamedTuple):
    hub: WriteHub  # a server of its own: the other tests read their requests off their server's log
    switch: Path
    proc: subprocess.Popen


@pytest.fixture(scope='module', autouse=True)
def dropped_upload(weights, tmp_path_factory) -> Iterator[DroppedUpload]:
    """A publish whose upload of the weights is cut off mid-transfer, every time (the server's test-only switch),
    until huggingface_hub gives up. Started before the module's tests: it spends about 25 s waiting between its
    client's retries, which the other tests fill."""
    workdir = tmp_path_factory.mktemp('dropping-hub')
    with write_hub(workdir) as hub:
        switch = hub.root / DROP_UPLOADS_DIR / DROPPED_REPO
        switch.parent.mkdir(parents=True)
        switch.touch()
        env = client_env(hub.endpoint, workdir / 'hf')
        env.update(HF_TOKEN=TOKEN, HF_HUB_DISABLE_XET='1')
        with subprocess.Popen(
                [str(BIN_DIR / 'timm-sknet'), 'publish', '--model', 'sknet50', '--weights', str(weights),
                 '--repo-id', DROPPED_REPO, '--allow-unvalidated'],
                env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as proc:
            try:
                yield DroppedUpload(hub, switch, proc)
            finally:
                proc.kill()


@pytest.fixture(scope='module')
def published(hub, weights, tmp_path_factory) -> Publish:
    """The first publish of ``weights`` to REPO, which creates it private. The tests leave main at its commit."""
    return _publish(hub, tmp_path_factory.mktemp('hf'), weights, '--private')


def test_first_publish_creates_private_repo_with_one_commit(hub, weights, published, monkeypatch, tmp_path):
    commit = published.check_published(hub, REPO, 'main')
    assert TOKEN not in published.proc.stdout + published.proc.stderr
    assert published.only('POST', '/api/repos/create')['private'] is True
    assert hub.git(REPO, 'config', 'hub.private') == 'true'
    # as on the Hub, a new repo starts with an "initial commit" of .gitattributes; publish added one commit to it
    initial = hub.git(REPO, 'rev-parse', f'{commit}^')
    assert hub.git(REPO, 'rev-list', commit).split() == [commit, initial]
    assert hub.git(REPO, 'ls-tree', '--name-only', initial).split() == ['.gitattributes']
    assert _changes(hub, REPO, commit) == {name: 'A' for name in REPO_FILES}

    dry_run = tmp_path / 'dry-run'
    assert run_cli(monkeypatch, 'publish', '--model', 'sknet50', '--weights', str(weights), '--repo-id', REPO,
                   '--dry-run', '--output-dir', str(dry_run)) == 0
    for name in REPO_FILES:
        assert hub.file(REPO, commit, name) == (dry_run / name).read_bytes(), name

    # the weights went the LFS way (batch API, PUT to the href it gave, verify), the two text files inline
    oid = sha256_file(weights)
    assert published.only('POST', f'/{REPO}.git/info/lfs/objects/batch')['objects'] == [
        {'oid': oid, 'size': weights.stat().st_size, 'upload': True}]
    assert published.only('PUT', f'/lfs/{REPO}/{oid}')['status'] == 200
    assert published.only('POST', f'/{REPO}.git/info/lfs/objects/verify')['status'] == 200
    assert published.only('POST', f'/api/models/{REPO}/commit/main')['files'] == {
        'model.safetensors': 'lfs', 'config.json': 'regular', 'README.md': 'regular'}


def test_republishing_the_same_files_makes_no_commit(hub, weights, published, tmp_path):
    first = published.check_published(hub, REPO, 'main')
    same = _publish(hub, tmp_path / 'hf', weights)
    assert same.proc.returncode == 0, same.proc.stderr[-4000:]
    assert same.proc.stdout == f'{REPO} already holds these files; no commit made ({first})\n'
    assert hub.git(REPO, 'rev-list', 'main').split() == [first, hub.git(REPO, 'rev-parse', f'{first}^')]
    # the server gave each file's oid, computed from what it stores; the client found them equal to its own and
    # sent no commit. The weights were not sent again either: the LFS store already held them.
    oids = {f['path']: f.get('oid') for f in same.only('POST', f'/api/models/{REPO}/preupload/main')['files']}
    assert oids == {'model.safetensors': sha256_file(weights),
                    'config.json': hub.git(REPO, 'rev-parse', f'{first}:config.json'),
                    'README.md': hub.git(REPO, 'rev-parse', f'{first}:README.md')}
    assert same.only('POST', f'/{REPO}.git/info/lfs/objects/batch')['objects'][0]['upload'] is False
    assert [r for r in same.requests if r['method'] == 'PUT' or '/commit/' in r['path']] == []


def test_changed_weights_to_a_new_branch_commit_only_what_changed(hub, weights, published, tmp_path):
    first = published.check_published(hub, REPO, 'main')
    changed = tmp_path / 'changed.safetensors'
    tensors = load_file(str(weights))
    tensors['fc.bias'] += 1
    save_file(tensors, str(changed), metadata=read_metadata(weights))
    run = _publish(hub, tmp_path / 'hf', changed, '--revision', 'dev')
    commit = run.check_published(hub, REPO, 'dev')
    assert run.only('POST', f'/api/models/{REPO}/branch/dev')['from'] == first
    assert hub.git(REPO, 'rev-list', 'dev').split()[:2] == [commit, first]
    assert hub.git(REPO, 'rev-parse', 'main') == first
    # new weights, so a new card (it names their sha256); the config is the same and was not even sent
    assert _changes(hub, REPO, commit) == {'model.safetensors': 'M', 'README.md': 'M'}
    assert run.only('POST', f'/api/models/{REPO}/commit/dev')['files'] == {
        'model.safetensors': 'lfs', 'README.md': 'regular'}
    assert hub.file(REPO, commit, 'model.safetensors') == changed.read_bytes()
    assert sha256_file(changed) in hub.file(REPO, commit, 'README.md').decode()


def test_wrong_token_is_one_line(hub, weights, tmp_path):
    repo_id = f'{NAMESPACE}/sknet50.refused'
    wrong = 'hf_notTheServersToken0000'
    run = _publish(hub, tmp_path / 'hf', weights, repo_id=repo_id, token=wrong)
    assert run.proc.returncode != 0
    assert run.proc.stderr.startswith('timm-sknet: error: ') and run.proc.stderr.count('\n') == 1
    assert "'401 Unauthorized'" in run.proc.stderr and 'Invalid credentials in Authorization header' in run.proc.stderr
    assert wrong not in run.proc.stdout + run.proc.stderr + hub.log.read_text()
    assert run.requests and all(r['status'] == 401 for r in run.requests)
    assert not (hub.root / 'models' / repo_id).exists()


def test_olah_serves_the_upload_to_timm(hub, weights, published, tmp_path):
    """olah, an independent implementation, serves the write server's repos (its offline mirrors-path is the
    server's root; it does not know the repo is private): timm loads the converted weights from main."""
    published.check_published(hub, REPO, 'main')
    with olah(hub.root, tmp_path, f'{REPO}/resolve/main/config.json') as endpoint:
        out = load_through_hub(endpoint, tmp_path / 'hf', weights, tmp_path, hub=f'hf-hub:{REPO}')
    assert out['hub_same_weights'].item()
    assert torch.equal(out['hub'], out['converted'])


def test_dropped_upload_is_one_line_and_publishes_nothing(dropped_upload, weights, tmp_path):
    """The connection dropped in the middle of every upload of the weights: one line, no commit, nothing stored;
    once the network is back the same command publishes everything in a single commit."""
    hub = dropped_upload.hub
    stdout, stderr = dropped_upload.proc.communicate(timeout=240)
    dropped_upload.switch.unlink()
    failed = hub.requests()
    assert dropped_upload.proc.returncode != 0
    assert stderr.startswith(f'timm-sknet: error: upload to {DROPPED_REPO} at {hub.endpoint} failed: ')
    assert stderr.count('\n') == 1 and 'run the command again' in stderr and stdout == ''
    puts = [r for r in failed if r['method'] == 'PUT']
    assert puts and all(r['status'] is None and 0 < r['dropped_after'] < weights.stat().st_size for r in puts)
    assert [r for r in failed if '/commit/' in r['path']] == []
    initial = hub.git(DROPPED_REPO, 'rev-parse', 'main')
    assert hub.git(DROPPED_REPO, 'ls-tree', '--name-only', initial).split() == ['.gitattributes']
    assert not (hub.root / 'models' / DROPPED_REPO / 'lfs').exists()
    assert list(hub.root.glob('.upload-*')) == []  # no spooled part of an upload either

    rerun = _publish(hub, tmp_path / 'hf', weights, repo_id=DROPPED_REPO)
    commit = rerun.check_published(hub, DROPPED_REPO, 'main')
    assert hub.git(DROPPED_REPO, 'rev-list', 'main').split() == [commit, initial]
    assert _changes(hub, DROPPED_REPO, commit) == {name: 'A' for name in REPO_FILES}
    assert hub.file(DROPPED_REPO, commit, 'model.safetensors') == weights.read_bytes()

"""A writable Hugging Face Hub on loopback, for tests: the part of the Hub's HTTP API that ``huggingface_hub``'s
``create_repo``, ``create_branch``, ``repo_info`` and ``upload_folder`` (its ``create_commit``, plain LFS transfer)
use.

    python tests/hub_write_server.py --root DIR --port N --token T

No Hub-compatible server on PyPI accepts writes (olah, the mirror the read-side tests use, is read-only), so
this one is written against the installed client (huggingface_hub/hf_api.py, _commit_api.py, lfs.py) and answers
what the Hub answers where the client depends on it:

- ``POST /api/repos/create``: a bare git repo at ``DIR/models/<namespace>/<name>``, the layout olah's offline
  ``mirrors-path`` serves. Like the Hub, a new repo starts with an "initial commit" of a ``.gitattributes``
  that marks the usual binary formats for LFS. 409 with the repo's url if it exists (``exist_ok`` reads it).
  ``visibility: private`` is kept in the repo's git config (``hub.private``); a private repo is not found
  without the token.
- ``POST /api/models/<repo>/branch/<branch>``: a branch from ``startingPoint`` (default main); 409 if it exists.
- ``GET /api/models/<repo>[/revision/<rev>]``: the model info, ``sha`` being the revision's commit.
- ``POST /api/validate-yaml``: checks only that a README's metadata block is closed; the Hub's schema checks
  are not reproduced.
- ``POST /api/models/<repo>/preupload/<rev>``: per file, ``uploadMode`` by the Hub's rule as we read it (the
  client leaves it to the server): "lfs" when the revision's ``.gitattributes`` marks the path ``filter=lfs``,
  the file is over 10 MB or its 512-byte sample holds a NUL byte (git's binary test), else "regular";
  ``shouldIgnore`` false; ``oid`` only where the path exists at the
  revision, computed from the stored bytes as the client's ``CommitOperationAdd._local_oid`` computes its own:
  the sha256 for a file the same rule makes LFS, the git blob sha1 for a regular one.
- ``POST /<repo>.git/info/lfs/objects/batch``: the git-LFS batch API, ``basic`` transfer only (no xet, no
  multipart): objects already stored need no action; others get an upload href on this server signed for
  that object (the client PUTs to it without credentials, as to S3) and a verify href.
- ``PUT /lfs/<repo>/<oid>``: stores the object after checking its sha256 and size.
- ``POST /<repo>.git/info/lfs/objects/verify``: 200 if the object is stored with that size.
- ``POST /api/models/<repo>/commit/<branch>``: the NDJSON commit (``header``, ``file``, ``lfsFile``). An LFS
  file's real bytes become an ordinary git blob, so olah serves them. Like the Hub, it commits whatever it is
  sent, unchanged files included: dropping those is the client's job.

- ``GET /api/whoami-v2``: who the token is (401 without a valid one), what a client asks before it writes.
- ``GET /api/models/<repo>...?blobs=true``: each file's ``size``, ``blobId`` and, for a file the preupload rule
  makes LFS, ``lfs`` (``sha256``, ``size``): what the Hub says of a repo's files.
- With ``--read-through URL``, the file downloads (``GET`` / ``HEAD /<repo>/resolve/<rev>/<path>``) are passed on
  to the server at URL, an olah whose ``mirrors-path`` is this server's root: one endpoint then reads and writes,
  as the Hub does, and what is read back comes from an implementation other than this one. A private repo's files
  need the token here too.

Writes need ``Authorization: Bearer <token>``; a wrong token gets 401 on any request, as on the Hub. ``HEAD /``
answers 200 once the server is up. Every request is logged to stdout as one JSON line (method, path, status
and what it did), before it is answered and never with its headers.

Test-only switch: while the file ``DIR/.drop-uploads/<namespace>/<name>`` exists, every LFS upload (``PUT``) to
that repo is cut off mid-transfer, as by a network failure: the server reads half the body, logs the request with
status ``null`` and ``dropped_after`` (bytes read), and closes the connection without an answer. Nothing of it
is stored.
"""
import argparse
import base64
import fnmatch
import hashlib
import hmac
import json
import os
import re
import secrets
import socket
import subprocess
import tempfile
import threading
import traceback
import urllib.error
import urllib.request
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple
from urllib.parse import parse_qs, unquote, urlsplit

LFS_SIZE_THRESHOLD = 10_000_000
SAMPLE_SIZE = 512
# the LFS rules of the .gitattributes the Hub puts in a new model repo's initial commit
INITIAL_GITATTRIBUTES = ''.join(f'{pattern} filter=lfs diff=lfs merge=lfs -text\n' for pattern in (
    '*.7z', '*.arrow', '*.bin', '*.bz2', '*.ckpt', '*.ftz', '*.gz', '*.h5', '*.joblib', '*.lfs.*', '*.mlmodel',
    '*.model', '*.msgpack', '*.npy', '*.npz', '*.onnx', '*.ot', '*.parquet', '*.pb', '*.pickle', '*.pkl', '*.pt',
    '*.pth', '*.rar', '*.safetensors', 'saved_model/**/*', '*.tar.*', '*.tar', '*.tflite', '*.tgz', '*.wasm',
    '*.xz', '*.zip', '*.zst', '*tfevents*'))
NAME = re.compile(r'[A-Za-z0-9][A-Za-z0-9._-]*')
OID = re.compile(r'[0-9a-f]{64}')
COMMIT_SHA = re.compile(r'[0-9a-f]{40}')
GIT_ENV = {**os.environ, 'GIT_CONFIG_NOSYSTEM': '1', 'GIT_CONFIG_GLOBAL': os.devnull,
           'GIT_AUTHOR_NAME': 'hub-write-server', 'GIT_AUTHOR_EMAIL': 'hub@localhost',
           'GIT_COMMITTER_NAME': 'hub-write-server', 'GIT_COMMITTER_EMAIL': 'hub@localhost'}
INVALID_TOKEN = 'Invalid credentials in Authorization header'
DROP_UPLOADS_DIR = '.drop-uploads'  # the test-only switch (see the module docstring)


class DroppedConnection(Exception):
    """The test-only switch cut an upload off after ``received`` bytes: the connection closes with no answer."""

    def __init__(self, received: int):
        super().__init__(received)
        self.received = received


class ReadThrough(Exception):
    """A file download, answered by the ``--read-through`` server: ``url`` is what to ask it."""

    def __init__(self, url: str):
        super().__init__(url)
        self.url = url


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A redirect goes back to the client as it is: the client follows it to this server, which reads through."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


_READ_THROUGH = urllib.request.build_opener(urllib.request.ProxyHandler({}), _NoRedirect())
HOP_BY_HOP = {'connection', 'keep-alive', 'transfer-encoding', 'te', 'trailer', 'upgrade', 'proxy-authenticate',
              'proxy-authorization'}


class HubError(Exception):
    """An error answer: the Hub puts the message in X-Error-Message and the body, and some kinds in X-Error-Code."""

    def __init__(self, status: int, message: str, code: Optional[str] = None, **body: Any):
        super().__init__(message)
        self.status, self.message, self.code, self.body = status, message, code, body


def _git(repo: Path, *args: str, input: Optional[bytes] = None, env: Optional[Dict[str, str]] = None) -> str:
    return subprocess.run(['git', '-C', str(repo), *args], input=input, env=env or GIT_ENV, check=True,
                          capture_output=True).stdout.decode().strip()


def _blob_sha256(repo: Path, blob: str) -> str:
    """sha256 of a stored blob, streamed from git: the oid the Hub reports for an LFS file."""
    digest = hashlib.sha256()
    with subprocess.Popen(['git', '-C', str(repo), 'cat-file', 'blob', blob], stdout=subprocess.PIPE,
                          env=GIT_ENV) as cat:
        for chunk in iter(lambda: cat.stdout.read(1 << 20), b''):
            digest.update(chunk)
    if cat.returncode:
        raise RuntimeError(f'git cat-file blob {blob} failed with {cat.returncode}')
    return digest.hexdigest()


def _check_name(namespace: str, name: str) -> str:
    if not (NAME.fullmatch(namespace) and NAME.fullmatch(name)) or '..' in namespace + name:
        raise HubError(400, f'Invalid repo id {namespace}/{name}')
    return f'{namespace}/{name}'


class Repo:
    """One model repo: a bare git repo, and the LFS objects uploaded to it under ``lfs/objects`` (git-lfs's layout)."""

    def __init__(self, root: Path, repo_id: str):
        self.id = repo_id
        self.path = root / 'models' / repo_id

    def exists(self) -> bool:
        return (self.path / 'HEAD').is_file()

    @property
    def private(self) -> bool:
        return _git(self.path, 'config', '--get', 'hub.private') == 'true'

    def create(self, private: bool) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(['git', 'init', '-q', '--bare', '-b', 'main', str(self.path)], env=GIT_ENV, check=True)
        _git(self.path, 'config', 'core.looseCompression', '0')  # weights do not compress: skip zlib's work
        _git(self.path, 'config', 'hub.private', 'true' if private else 'false')
        blob = _git(self.path, 'hash-object', '-w', '--stdin', input=INITIAL_GITATTRIBUTES.encode())
        tree = _git(self.path, 'mktree', input=f'100644 blob {blob}\t.gitattributes\n'.encode())
        commit = _git(self.path, 'commit-tree', tree, '-m', 'initial commit')
        _git(self.path, 'update-ref', 'refs/heads/main', commit, '0' * 40)

    def branch_head(self, branch: str) -> Optional[str]:
        found = subprocess.run(['git', '-C', str(self.path), 'rev-parse', '--verify', '--quiet',
                                f'refs/heads/{branch}^{{commit}}'], env=GIT_ENV, capture_output=True, text=True)
        return found.stdout.strip() if found.returncode == 0 else None

    def resolve(self, revision: str) -> str:
        """The commit a branch name or a full commit sha names; RevisionNotFound otherwise."""
        head = self.branch_head(revision)
        if head is None and COMMIT_SHA.fullmatch(revision):
            found = subprocess.run(['git', '-C', str(self.path), 'cat-file', '-t', revision], env=GIT_ENV,
                                   capture_output=True, text=True)
            head = revision if found.stdout.strip() == 'commit' else None
        if head is None:
            raise HubError(404, f'Invalid rev id: {revision}', 'RevisionNotFound')
        return head

    def files(self, commit: str) -> Dict[str, Tuple[str, int]]:
        """path -> (blob sha1, size) for every file at ``commit``."""
        files = {}
        for entry in filter(None, _git(self.path, 'ls-tree', '-r', '-l', '-z', commit).split('\0')):
            meta, path = entry.split('\t', 1)
            _, kind, blob, size = meta.split()
            if kind == 'blob':
                files[path] = (blob, int(size))
        return files

    def lfs_patterns(self, files: Dict[str, Tuple[str, int]]) -> List[str]:
        """The patterns that ``.gitattributes`` (among ``files``) marks ``filter=lfs``."""
        if '.gitattributes' not in files:
            return []
        lines = _git(self.path, 'cat-file', 'blob', files['.gitattributes'][0]).splitlines()
        return [line.split()[0].lstrip('/') for line in lines if 'filter=lfs' in line.split()[1:]]

    def remote_oid(self, files: Dict[str, Tuple[str, int]], patterns: List[str], path: str) -> Optional[str]:
        """The oid of the stored file at ``path``, from its bytes: sha256 if the preupload rule makes it LFS, else
        its git blob sha1."""
        if path not in files:
            return None
        blob, size = files[path]
        sample = b'' if size > LFS_SIZE_THRESHOLD else subprocess.run(
            ['git', '-C', str(self.path), 'cat-file', 'blob', blob], env=GIT_ENV, check=True,
            capture_output=True).stdout[:SAMPLE_SIZE]
        return _blob_sha256(self.path, blob) if is_lfs(patterns, path, size, sample) else blob

    def lfs_object(self, oid: str) -> Path:
        if not OID.fullmatch(oid):
            raise HubError(400, f'Invalid LFS oid {oid!r}')
        return self.path / 'lfs' / 'objects' / oid[:2] / oid[2:4] / oid

    def commit(self, branch: str, header: Dict[str, Any], blobs: Dict[str, str]) -> str:
        """Commit ``blobs`` (path -> blob sha1) on top of ``branch``; returns the new commit."""
        head = self.branch_head(branch)
        if head is None:
            raise HubError(404, f'Invalid rev id: {branch}', 'RevisionNotFound')
        if header.get('parentCommit') not in (None, head):
            raise HubError(412, f'A commit has happened since {header["parentCommit"]}: {branch} is at {head}')
        with tempfile.TemporaryDirectory(dir=self.path) as scratch:
            env = {**GIT_ENV, 'GIT_INDEX_FILE': str(Path(scratch) / 'index')}
            _git(self.path, 'read-tree', head, env=env)
            for path, blob in blobs.items():
                _git(self.path, 'update-index', '--add', '--cacheinfo', f'100644,{blob},{path}', env=env)
            tree = _git(self.path, 'write-tree', env=env)
        message = header['summary'] + (f'\n\n{header["description"]}' if header.get('description') else '')
        commit = _git(self.path, 'commit-tree', tree, '-p', head, '-m', message)
        _git(self.path, 'update-ref', f'refs/heads/{branch}', commit, head)
        return commit


def is_lfs(patterns: List[str], path: str, size: int, sample: bytes) -> bool:
    """The preupload rule (see the module docstring)."""
    name = path.rsplit('/', 1)[-1]
    matched = any(fnmatch.fnmatchcase(path if '/' in pattern else name, pattern) for pattern in patterns)
    return matched or size > LFS_SIZE_THRESHOLD or b'\0' in sample


Answer = Tuple[int, Dict[str, Any], Dict[str, Any]]  # status, JSON body, what to log


class Hub:
    """The endpoints, called with what their route names (the repo, found and access-checked; a revision or
    branch) and a POST's body."""

    def __init__(self, root: Path, token: str, endpoint: str):
        self.root, self.token, self.endpoint = root, token, endpoint
        self.secret = secrets.token_bytes(32)  # signs upload hrefs, as S3 signs presigned URLs
        self.lock = threading.Lock()  # one request at a time touches the repos

    def repo(self, namespace: str, name: str, authorized: bool) -> Repo:
        repo = Repo(self.root, _check_name(namespace, name))
        if not repo.exists() or (repo.private and not authorized):
            raise HubError(404 if authorized else 401, 'Repository not found', 'RepoNotFound')
        return repo

    def upload_signature(self, repo_id: str, oid: str, size: int) -> str:
        return hmac.new(self.secret, f'{repo_id}/{oid}/{size}'.encode(), 'sha256').hexdigest()

    def create_repo(self, body: bytes) -> Answer:
        request = json.loads(body)
        if request.get('type', 'model') != 'model':
            raise HubError(400, 'Only model repos are implemented by this server')
        repo = Repo(self.root, _check_name(request.get('organization') or '', request.get('name') or ''))
        url = f'{self.endpoint}/{repo.id}'
        if repo.exists():
            raise HubError(409, 'You already created this model repo', url=url)  # create_repo(exist_ok) reads it
        private = request.get('visibility') == 'private'
        repo.create(private)
        return 200, {'url': url, 'name': repo.id, 'id': repo.id}, {'repo': repo.id, 'private': private}

    @staticmethod
    def validate_yaml(body: bytes) -> Answer:
        lines = (json.loads(body).get('content') or '').splitlines()
        if lines and lines[0].strip() == '---' and '---' not in (line.strip() for line in lines[1:]):
            raise HubError(400, 'The metadata block of README.md is not closed by a --- line')
        return 200, {'errors': [], 'warnings': []}, {}

    def model_info(self, repo: Repo, query: Dict[str, List[str]], rev: str = 'main') -> Answer:
        sha = repo.resolve(rev)
        committed = datetime.fromtimestamp(int(_git(repo.path, 'show', '-s', '--format=%ct', sha)), timezone.utc)
        files = repo.files(sha)
        siblings = [{'rfilename': path} for path in files]
        if query.get('blobs') == ['True'] or query.get('blobs') == ['true']:
            patterns = repo.lfs_patterns(files)
            for sibling in siblings:
                blob, size = files[sibling['rfilename']]
                sibling.update(size=size, blobId=blob)
                oid = repo.remote_oid(files, patterns, sibling['rfilename'])
                if oid != blob:  # the preupload rule makes it LFS: the Hub describes its LFS object
                    sibling['lfs'] = {'sha256': oid, 'size': size, 'pointerSize': 134}
        return 200, {
            'id': repo.id, 'modelId': repo.id, 'author': repo.id.split('/')[0], 'sha': sha, 'private': repo.private,
            'disabled': False, 'gated': False, 'lastModified': committed.strftime('%Y-%m-%dT%H:%M:%S.000Z'),
            'tags': [], 'downloads': 0, 'likes': 0, 'siblings': siblings,
        }, {'repo': repo.id, 'revision': rev, 'sha': sha}

    @staticmethod
    def whoami() -> Answer:
        return 200, {'type': 'user', 'name': 'hub-write-server-user', 'auth': {'type': 'access_token'}}, {}

    def create_branch(self, repo: Repo, branch: str, body: bytes) -> Answer:
        if subprocess.run(['git', 'check-ref-format', '--branch', branch], capture_output=True).returncode:
            raise HubError(400, f'Invalid branch name {branch}')
        if repo.branch_head(branch) is not None:
            raise HubError(409, 'Reference already exists')
        start = repo.resolve((json.loads(body) if body else {}).get('startingPoint') or 'main')
        _git(repo.path, 'update-ref', f'refs/heads/{branch}', start, '0' * 40)
        return 200, {}, {'repo': repo.id, 'branch': branch, 'from': start}

    def preupload(self, repo: Repo, rev: str, body: bytes) -> Answer:
        head = repo.resolve(rev)
        files = repo.files(head)
        patterns = repo.lfs_patterns(files)
        answers = []
        for file in json.loads(body)['files']:
            sample = base64.b64decode(file['sample'])
            mode = 'lfs' if is_lfs(patterns, file['path'], file['size'], sample) else 'regular'
            answer = {'path': file['path'], 'uploadMode': mode, 'shouldIgnore': False}
            oid = repo.remote_oid(files, patterns, file['path'])
            if oid is not None:
                answer['oid'] = oid
            answers.append(answer)
        return 200, {'files': answers, 'commitOid': head}, {'repo': repo.id, 'revision': rev, 'files': answers}

    def lfs_batch(self, repo: Repo, body: bytes) -> Answer:
        request = json.loads(body)
        if request.get('operation') != 'upload' or 'basic' not in request.get('transfers', ['basic']):
            raise HubError(400, 'Only uploads with the basic transfer are implemented by this server')
        if request.get('ref'):
            repo.resolve(request['ref']['name'])
        objects = []
        for obj in request['objects']:
            oid, size = obj['oid'], obj['size']
            if repo.lfs_object(oid).is_file():
                objects.append({'oid': oid, 'size': size})  # already stored: no action
                continue
            signature = self.upload_signature(repo.id, oid, size)
            objects.append({'oid': oid, 'size': size, 'authenticated': True, 'actions': {
                'upload': {'href': f'{self.endpoint}/lfs/{repo.id}/{oid}?size={size}&signature={signature}'},
                'verify': {'href': f'{self.endpoint}/{repo.id}.git/info/lfs/objects/verify'}}})
        log = [{'oid': o['oid'], 'size': o['size'], 'upload': 'actions' in o} for o in objects]
        return 200, {'transfer': 'basic', 'objects': objects}, {'repo': repo.id, 'objects': log}

    def lfs_upload(self, repo_id: str, oid: str, query: Dict[str, List[str]], spooled: Path, sha256: str,
                   size: int) -> Answer:
        """The PUT to a signed href: no token, the signature is the credential (as with S3)."""
        expected = self.upload_signature(repo_id, oid, size)
        if not hmac.compare_digest(query.get('signature', [''])[0], expected):
            raise HubError(403, 'Invalid upload signature')
        if sha256 != oid:
            raise HubError(400, f'Uploaded content has sha256 {sha256}, not {oid}')
        target = Repo(self.root, repo_id).lfs_object(oid)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(spooled, target)
        return 200, {}, {'repo': repo_id, 'oid': oid, 'size': size}

    def lfs_verify(self, repo: Repo, body: bytes) -> Answer:
        request = json.loads(body)
        stored = repo.lfs_object(str(request.get('oid')))
        if not stored.is_file() or stored.stat().st_size != request.get('size'):
            raise HubError(404, f'LFS object {request.get("oid")} of size {request.get("size")} is not stored')
        return 200, {}, {'repo': repo.id, 'oid': request['oid']}

    def commit(self, repo: Repo, branch: str, body: bytes) -> Answer:
        items = [json.loads(line) for line in body.splitlines() if line.strip()]
        if not items or items[0].get('key') != 'header':
            raise HubError(400, 'The commit payload must start with a header line')
        blobs, kinds = {}, {}
        for item in items[1:]:
            key, value = item.get('key'), item.get('value', {})
            path = value.get('path', '')
            if not path or path.startswith('/') or '..' in path.split('/') or path.split('/')[0] == '.git':
                raise HubError(400, f'Invalid path in repo: {path!r}')
            if key == 'file' and value.get('encoding') == 'base64':
                blobs[path] = _git(repo.path, 'hash-object', '-w', '--stdin', input=base64.b64decode(value['content']))
            elif key == 'lfsFile' and value.get('algo') == 'sha256':
                stored = repo.lfs_object(value.get('oid', ''))
                if not stored.is_file():
                    raise HubError(400, f'LFS file {path} ({value.get("oid")}) was not uploaded')
                if stored.stat().st_size != value.get('size', stored.stat().st_size):
                    raise HubError(400, f'LFS file {path}: size {value["size"]} differs from the stored object')
                blobs[path] = _git(repo.path, 'hash-object', '-w', str(stored))  # real bytes, for olah
            else:
                raise HubError(400, f'{key} operations are not implemented by this server')
            kinds[path] = 'lfs' if key == 'lfsFile' else 'regular'
        commit = repo.commit(branch, items[0]['value'], blobs)
        return 200, {'success': True, 'commitOid': commit, 'commitUrl': f'{self.endpoint}/{repo.id}/commit/{commit}',
                     'hookOutput': ''}, {'repo': repo.id, 'branch': branch, 'commit': commit, 'files': kinds}


REPO = r'/(?P<ns>[^/]+)/(?P<name>[^/]+)'
ROUTES = [  # method, path, Hub method, whether it needs the token; a path with a repo gets it found and checked
    ('POST', r'/api/repos/create', 'create_repo', True),
    ('POST', r'/api/validate-yaml', 'validate_yaml', False),
    ('GET', r'/api/whoami-v2', 'whoami', True),
    ('GET', rf'/api/models{REPO}', 'model_info', False),
    ('GET', rf'/api/models{REPO}/revision/(?P<rev>[^/]+)', 'model_info', False),
    ('POST', rf'/api/models{REPO}/branch/(?P<branch>[^/]+)', 'create_branch', True),
    ('POST', rf'/api/models{REPO}/preupload/(?P<rev>[^/]+)', 'preupload', True),
    ('POST', rf'/api/models{REPO}/commit/(?P<branch>[^/]+)', 'commit', True),
    ('POST', rf'{REPO}\.git/info/lfs/objects/batch', 'lfs_batch', True),
    ('POST', rf'{REPO}\.git/info/lfs/objects/verify', 'lfs_verify', True),
]


class Handler(BaseHTTPRequestHandler):
    """Reads the whole request, checks the token, routes it to the Hub, then logs and answers it."""

    server: 'HubServer'

    def do_HEAD(self) -> None:
        self._handle()

    def do_GET(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        self._handle()

    def do_PUT(self) -> None:
        self._handle()

    def log_message(self, format: str, *args: Any) -> None:
        """Silenced: ``_handle`` logs every request once, as JSON."""

    def _handle(self) -> None:
        url = urlsplit(self.path)
        details: Dict[str, Any] = {}
        headers: Dict[str, str] = {}
        try:
            try:
                status, body, details = self._dispatch(url.path, parse_qs(url.query))
            except json.JSONDecodeError as e:
                raise HubError(400, f'Malformed JSON in the request body: {e}') from None
        except ReadThrough as e:
            self._read_through(e.url, unquote(url.path))
            return
        except DroppedConnection as e:
            print(json.dumps({'method': self.command, 'path': unquote(url.path), 'status': None,
                              'dropped_after': e.received}), flush=True)
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)  # the unread rest of the body makes the client's send fail
            return
        except HubError as e:
            status, body, details = e.status, {'error': e.message, **e.body}, {'error': e.message}
            headers = {'X-Error-Message': e.message, **({'X-Error-Code': e.code} if e.code else {})}
        except Exception as e:  # noqa: BLE001  (a bug must reach the client and the log, not just kill the thread)
            traceback.print_exc()
            status, body = 500, {'error': f'{type(e).__name__}: {e}'}
        print(json.dumps({'method': self.command, 'path': unquote(url.path), 'status': status, **details}),
              flush=True)  # before answering: once the client has its answer, the log holds the request
        payload = json.dumps(body).encode()
        self.send_response(status)
        for name, value in {'Content-Type': 'application/json', **headers}.items():
            self.send_header(name, value)
        self.send_header('Content-Length', str(len(payload)))
        self.end_headers()
        if self.command != 'HEAD':
            self.wfile.write(payload)

    def _read_through(self, url: str, path: str) -> None:
        """Answer with what the read-through server answers to ``url``, streamed; logged as every request is."""
        request = urllib.request.Request(url, method=self.command, headers={
            k: v for k, v in self.headers.items() if k.lower() in ('range', 'accept-encoding')})
        try:
            response = _READ_THROUGH.open(request, timeout=60)
        except urllib.error.HTTPError as e:  # an error answer (or a redirect) is passed on as it is
            response = e
        with response:
            print(json.dumps({'method': self.command, 'path': path, 'status': response.status, 'read_through': True}),
                  flush=True)
            self.send_response(response.status)
            for name, value in response.headers.items():
                if name.lower() not in HOP_BY_HOP:
                    self.send_header(name, value)
            self.end_headers()
            if self.command != 'HEAD':
                for chunk in iter(lambda: response.read(1 << 20), b''):
                    self.wfile.write(chunk)

    def _dispatch(self, raw_path: str, query: Dict[str, List[str]]) -> Answer:
        hub = self.server.hub
        length = int(self.headers.get('Content-Length') or 0)
        upload = re.fullmatch(rf'/lfs{REPO}/(?P<oid>[0-9a-f]{{64}})', raw_path) if self.command == 'PUT' else None
        if upload:
            repo_id = _check_name(unquote(upload['ns']), unquote(upload['name']))
            if (hub.root / DROP_UPLOADS_DIR / repo_id).exists():
                raise DroppedConnection(len(self.rfile.read(length // 2)))
            with tempfile.NamedTemporaryFile(dir=hub.root, prefix='.upload-', delete=False) as spool:
                digest = hashlib.sha256()
                for chunk in iter(lambda: self.rfile.read(min(1 << 20, length - spool.tell())), b''):
                    digest.update(chunk)
                    spool.write(chunk)
            try:
                with hub.lock:
                    return hub.lfs_upload(repo_id, unquote(upload['oid']), query, Path(spool.name),
                                          digest.hexdigest(), length)
            finally:
                Path(spool.name).unlink(missing_ok=True)
        body = self.rfile.read(length)
        if raw_path == '/' and self.command in ('GET', 'HEAD'):
            return 200, {}, {}
        authorized = False
        if 'Authorization' in self.headers:
            scheme, _, token = self.headers['Authorization'].partition(' ')
            if scheme.lower() != 'bearer' or not hmac.compare_digest(token.encode(), hub.token.encode()):
                raise HubError(401, INVALID_TOKEN)
            authorized = True
        download = re.fullmatch(rf'{REPO}/resolve/.+', raw_path)
        if download and self.command in ('GET', 'HEAD') and self.server.read_through:
            with hub.lock:  # found, and its privacy respected, before the other server is asked
                hub.repo(unquote(download['ns']), unquote(download['name']), authorized)
            raise ReadThrough(self.server.read_through + self.path)
        for method, pattern, action, needs_token in ROUTES:
            match = re.fullmatch(pattern, raw_path)
            if method == self.command and match:
                if needs_token and not authorized:
                    raise HubError(401, 'You must be authenticated to do this')
                args: Dict[str, Any] = {k: unquote(v) for k, v in match.groupdict().items()}
                if method == 'POST':
                    args['body'] = body
                if action == 'model_info':
                    args['query'] = query
                with hub.lock:
                    if 'ns' in args:
                        args['repo'] = hub.repo(args.pop('ns'), args.pop('name'), authorized)
                    return getattr(hub, action)(**args)
        raise HubError(404, f'{self.command} {raw_path} is not implemented by this server')


class HubServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, port: int, root: Path, token: str, read_through: str = ''):
        super().__init__(('127.0.0.1', port), Handler)
        self.hub = Hub(root, token, f'http://127.0.0.1:{self.server_address[1]}')
        self.read_through = read_through.rstrip('/')


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--root', type=Path, required=True, help='where repos live: ROOT/models/<namespace>/<name>')
    parser.add_argument('--port', type=int, required=True)
    parser.add_argument('--token', required=True, help='the one token that may write')
    parser.add_argument('--read-through', default='', metavar='URL',
                        help='the server that answers file downloads: an olah serving ROOT as its mirrors-path')
    args = parser.parse_args()
    args.root.mkdir(parents=True, exist_ok=True)
    HubServer(args.port, args.root.resolve(), args.token, args.read_through).serve_forever()


if __name__ == '__main__':
    main()

"""What the Hub tests share: random converted weights, servers on loopback (olah, our write server), the
client's environment, and loading models through a Hub in a subprocess.

huggingface_hub reads ``HF_ENDPOINT`` and ``HF_HOME`` when it is imported, so loading happens in a subprocess.
"""
import contextlib
import dataclasses
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple

import pytest
import timm
import torch
from safetensors.torch import load_file, save_file

from converters.caffe.writer import write_caffemodel
from hub_write_server import Repo
from support import randomize_norms

NAMESPACE = 'e2e-sknet'
TOKEN = 'hf_loopbackWriteToken4e1f0c'  # the one token the write server takes
WRITE_SERVER = Path(__file__).parent / 'hub_write_server.py'
BIN_DIR = Path(sys.executable).parent
SERVER_START_TIMEOUT_S = 60

# argv: converted.safetensors REFERENCE_MODEL inputs.safetensors output.safetensors LABEL=MODEL_NAME...; the
# reference model is built with the converted weights and its logits saved as 'converted'; each labelled model is
# built with pretrained=True and its logits and whether its weights equal the converted ones are saved under LABEL.
# The log (INFO: where the weights came from) goes to stderr.
LOAD_SCRIPT = """
import logging, sys
import timm, timm_sknet, torch
from safetensors.torch import load_file, save_file

logging.basicConfig(level=logging.INFO, format='%(name)s: %(message)s')

converted_path, reference_model, inputs_path, output_path, *labelled = sys.argv[1:]
converted = load_file(converted_path)
reference = timm.create_model(reference_model)
reference.load_state_dict(converted)
models = {'converted': reference}
for label, name in (arg.split('=', 1) for arg in labelled):
    models[label] = timm.create_model(name, pretrained=True)
x = load_file(inputs_path)['x']
out = {}
with torch.inference_mode():
    for name, model in models.items():
        out[name] = model.eval()(x)
        state = model.state_dict()
        out[name + '_same_weights'] = torch.tensor(
            state.keys() == converted.keys() and all(torch.equal(converted[k], v) for k, v in state.items()))
save_file(out, output_path)
"""


# Builds each argv model with pretrained=True and prints, as one JSON line each, how long that took and the error.
FAIL_SCRIPT = """
import json, sys, time
import timm
for name in sys.argv[1:]:
    start = time.monotonic()
    try:
        timm.create_model(name, pretrained=True)
        error = None
    except Exception as e:
        error = e
    print(json.dumps({
        'model': name, 'seconds': time.monotonic() - start, 'message': str(error),
        'types': [t.__name__ for t in type(error).__mro__],
        'cause': type(error.__cause__).__name__ if error is not None else None}), flush=True)
"""


def convert_random_sknet50(directory: Path, *extra: str) -> Path:
    """A random release-format sknet50 caffemodel through the real ``convert-caffe`` (``extra``: its options);
    returns the safetensors, with convert-caffe's provenance metadata."""
    torch.manual_seed(0)
    original = timm.create_model('sknet50')
    randomize_norms(original)  # so every converted tensor matters to the logits
    caffemodel = directory / 'sknet50.caffemodel'
    write_caffemodel(original.eval(), caffemodel)
    converted = directory / 'sknet50.safetensors'
    subprocess.run(
        [str(BIN_DIR / 'convert-caffe'), str(caffemodel), '--model', 'sknet50', '--output', str(converted), *extra],
        check=True, timeout=300)
    return converted


def free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def _wait_until_serving(server: subprocess.Popen, name: str, url: str, log: Path) -> None:
    no_proxy = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    deadline = time.monotonic() + SERVER_START_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f'{name} exited with {server.returncode}:\n{log.read_text()}')
        try:
            with no_proxy.open(urllib.request.Request(url, method='HEAD'), timeout=5) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.25)
    pytest.fail(f'{name} did not serve {url} within {SERVER_START_TIMEOUT_S} s:\n{log.read_text()}')


@contextlib.contextmanager
def serve(name: str, command: List[str], cwd: Path, log: Path, probe_url: str) -> Iterator[None]:
    """Run a server, output to ``log``, until the block ends; ready once ``probe_url`` answers HEAD with 200."""
    with open(log, 'w') as log_file:
        server = subprocess.Popen(command, cwd=cwd, stdout=log_file, stderr=subprocess.STDOUT)
        try:
            _wait_until_serving(server, name, probe_url, log)
            yield
        finally:
            server.terminate()
            try:
                server.wait(timeout=15)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()


@contextlib.contextmanager
def olah(mirrors: Path, workdir: Path, probe: str) -> Iterator[str]:
    """An offline olah serving the git repos under ``mirrors/models/<namespace>/<name>`` on a free loopback port,
    ready once it serves ``probe`` (e.g. ``NS/NAME/resolve/main/config.json``); yields its endpoint."""
    port = free_port()
    config = workdir / 'olah.toml'
    config.write_text(
        '[basic]\nhost = "127.0.0.1"\n'
        f'port = {port}\nrepos-path = {json.dumps(str(workdir / "repos"))}\n'
        f'mirrors-path = [{json.dumps(str(mirrors))}]\n'
        '[accessibility]\noffline = true\n')
    endpoint = f'http://127.0.0.1:{port}'
    with serve('olah', [str(BIN_DIR / 'olah-cli'), '-c', str(config), '--log-path', str(workdir / 'logs')],
               workdir, workdir / 'olah.log', f'{endpoint}/{probe}'):
        yield endpoint


@dataclasses.dataclass
class WriteHub:
    """The running write server: its endpoint, the root of its git repos, and its request log."""

    endpoint: str
    root: Path
    log: Path

    def requests(self) -> List[dict]:
        """Every request the server answered so far, in order: its log's JSON lines."""
        return [json.loads(line) for line in self.log.read_text().splitlines() if line.startswith('{')]

    def git(self, repo_id: str, *args: str) -> str:
        """git in a repo as the server stores it: what it holds, not what it answered."""
        return subprocess.run(['git', '-C', str(self.root / 'models' / repo_id), *args], check=True,
                              capture_output=True, text=True).stdout.strip()

    def file(self, repo_id: str, commit: str, path: str) -> bytes:
        """The stored bytes of ``path`` at ``commit``."""
        return subprocess.run(['git', '-C', str(self.root / 'models' / repo_id), 'cat-file', 'blob',
                               f'{commit}:{path}'], check=True, capture_output=True).stdout


@contextlib.contextmanager
def write_hub(workdir: Path, read_through: str = '') -> Iterator[WriteHub]:
    """``hub_write_server.py`` on a free loopback port, its repos under ``workdir/root`` (with ``read_through``: file
    downloads answered by that server); at the end, no request may have failed with a server error and the token
    must not be in its log."""
    port = free_port()
    hub = WriteHub(f'http://127.0.0.1:{port}', workdir / 'root', workdir / 'server.log')
    command = [sys.executable, str(WRITE_SERVER), '--root', str(hub.root), '--port', str(port), '--token', TOKEN,
               '--read-through', read_through]
    with serve('hub_write_server', command, workdir, hub.log, f'{hub.endpoint}/'):
        yield hub
    assert all(r['status'] != 500 for r in hub.requests()), hub.log.read_text()
    assert TOKEN not in hub.log.read_text()


@contextlib.contextmanager
def read_write_hub(workdir: Path) -> Iterator[WriteHub]:
    """One endpoint that reads and writes, as the Hub: the write server, which passes file downloads on to an olah
    serving its repos (a repo is made first for olah to show it is up)."""
    root = workdir / 'root'
    Repo(root, 'probe/ready').create(private=False)
    with olah(root, workdir, 'probe/ready/resolve/main/.gitattributes') as olah_endpoint:
        with write_hub(workdir, olah_endpoint) as hub:
            yield hub


def client_env(endpoint: str, hf_home: Path, store: Optional[Path] = None) -> Dict[str, str]:
    """huggingface_hub pointed at ``endpoint`` with its cache in ``hf_home``: no HF_* settings (token included)
    or proxies from outside, the models' Hub namespace set to ``NAMESPACE``, and timm-sknet's local weights store
    at ``store`` (default: an empty folder), never the user's."""
    proxies = ('http_proxy', 'https_proxy', 'all_proxy')
    env = {k: v for k, v in os.environ.items() if not k.startswith('HF_') and k.lower() not in proxies}
    env.update(
        HF_ENDPOINT=endpoint, HF_HOME=str(hf_home), HF_HUB_DISABLE_TELEMETRY='1', NO_PROXY='127.0.0.1,localhost',
        TIMM_SKNET_HUB_NAMESPACE=NAMESPACE, TIMM_SKNET_HOME=str(store or hf_home / 'empty-weights-store'))
    return env


def load_pretrained(env: Dict[str, str], converted: Path, workdir: Path, reference: str = 'sknet50',
                    **models: str) -> Tuple[Dict[str, torch.Tensor], str]:
    """Build ``models`` (label -> timm model name, pretrained) in a subprocess with ``env``; returns LOAD_SCRIPT's
    outputs (each label's logits and ``LABEL_same_weights``, and the logits of ``reference`` with the converted
    weights) and its log."""
    inputs = workdir / 'inputs.safetensors'
    save_file({'x': torch.randn(2, 3, 96, 96, generator=torch.Generator().manual_seed(1))}, str(inputs))
    logits = workdir / 'logits.safetensors'
    load = subprocess.run(
        [sys.executable, '-c', LOAD_SCRIPT, str(converted), reference, str(inputs), str(logits),
         *(f'{label}={name}' for label, name in models.items())],
        env=env, capture_output=True, text=True, timeout=300)
    assert load.returncode == 0, load.stderr[-4000:]
    return load_file(str(logits)), load.stderr


def load_through_hub(endpoint: str, hf_home: Path, converted: Path, workdir: Path, reference: str = 'sknet50',
                     **models: str) -> Dict[str, torch.Tensor]:
    """``load_pretrained`` with the Hub at ``endpoint`` (``client_env``); returns the outputs."""
    return load_pretrained(client_env(endpoint, hf_home), converted, workdir, reference, **models)[0]

"""End to end: caffemodel -> convert-caffe -> publish --dry-run -> git repo served by olah -> timm loads it.

olah (a Hub mirror) serves git repos under ``mirrors-path/models/<namespace>/<name>`` offline, on loopback;
``HF_ENDPOINT`` points huggingface_hub at it and ``HF_HOME`` keeps the cache in tmp. Models register at import
and read ``TIMM_SKNET_HUB_NAMESPACE`` then, so the loading happens in a subprocess.
"""
import contextlib
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Dict, Iterator

import pytest
import timm
import torch
from safetensors.torch import load_file, save_file

from converters.writer import write_caffemodel
from timm_sknet.weights import PROVENANCE_KEYS, VERIFY_KEYS, read_metadata
from timm_sknet.cli import main

NAMESPACE = 'e2e-sknet'
REPO_NAME = 'sknet50.caffe_in1k'
BIN_DIR = Path(sys.executable).parent
SERVER_START_TIMEOUT_S = 60

LOAD_SCRIPT = f"""
import sys
import timm, timm_sknet, torch
from safetensors.torch import load_file, save_file

converted_path, inputs_path, output_path = sys.argv[1:]
converted = load_file(converted_path)
reference = timm.create_model('sknet50')
reference.load_state_dict(converted)
models = {{
    'converted': reference,
    'hub': timm.create_model('hf-hub:{NAMESPACE}/{REPO_NAME}', pretrained=True),
    'registry': timm.create_model('sknet50', pretrained=True),
}}
x = load_file(inputs_path)['x']
out = {{}}
with torch.inference_mode():
    for name, model in models.items():
        out[name] = model.eval()(x)
        state = model.state_dict()
        out[name + '_same_weights'] = torch.tensor(
            state.keys() == converted.keys() and all(torch.equal(converted[k], v) for k, v in state.items()))
save_file(out, output_path)
"""


def _randomise_norms(model: torch.nn.Module) -> None:
    """Non-trivial BN statistics and affines, so every converted tensor matters to the logits."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_(0, 0.1)
                module.running_mean.normal_(0, 0.1)
                module.running_var.uniform_(0.5, 1.5)


def _git_commit_all(repo: Path) -> None:
    git = ['git', '-C', str(repo), '-c', 'user.name=e2e', '-c', 'user.email=e2e@localhost',
           '-c', 'commit.gpgsign=false']
    subprocess.run(['git', 'init', '-q', '-b', 'main', str(repo)], check=True)
    subprocess.run(git + ['-c', 'core.looseCompression=0', 'add', '-A'], check=True)  # 110 MB: skip zlib work
    subprocess.run(git + ['commit', '-q', '-m', 'publish'], check=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def _wait_until_serving(server: subprocess.Popen, url: str, log: Path) -> None:
    no_proxy = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    deadline = time.monotonic() + SERVER_START_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f'olah exited with {server.returncode}:\n{log.read_text()}')
        try:
            with no_proxy.open(urllib.request.Request(url, method='HEAD'), timeout=5) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.25)
    pytest.fail(f'olah did not serve {url} within {SERVER_START_TIMEOUT_S} s:\n{log.read_text()}')


@contextlib.contextmanager
def _olah(mirrors: Path, workdir: Path) -> Iterator[str]:
    """An offline olah serving the git repos under ``mirrors`` on a free loopback port; yields its endpoint."""
    port = _free_port()
    config = workdir / 'olah.toml'
    config.write_text(
        '[basic]\nhost = "127.0.0.1"\n'
        f'port = {port}\nrepos-path = {json.dumps(str(workdir / "repos"))}\n'
        f'mirrors-path = [{json.dumps(str(mirrors))}]\n'
        '[accessibility]\noffline = true\n')
    log = workdir / 'olah.log'
    with open(log, 'w') as log_file:
        server = subprocess.Popen(
            [str(BIN_DIR / 'olah-cli'), '-c', str(config), '--log-path', str(workdir / 'logs')],
            cwd=workdir, stdout=log_file, stderr=subprocess.STDOUT)
        endpoint = f'http://127.0.0.1:{port}'
        try:
            _wait_until_serving(server, f'{endpoint}/{NAMESPACE}/{REPO_NAME}/resolve/main/config.json', log)
            yield endpoint
        finally:
            server.terminate()
            try:
                server.wait(timeout=15)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()


def _client_env(endpoint: str, hf_home: Path) -> Dict[str, str]:
    proxies = ('http_proxy', 'https_proxy', 'all_proxy')
    env = {k: v for k, v in os.environ.items() if not k.startswith('HF_') and k.lower() not in proxies}
    env.update(
        HF_ENDPOINT=endpoint, HF_HOME=str(hf_home), HF_HUB_DISABLE_TELEMETRY='1', NO_PROXY='127.0.0.1,localhost',
        TIMM_SKNET_HUB_NAMESPACE=NAMESPACE)
    return env


def test_convert_publish_serve_load(monkeypatch, tmp_path):
    torch.manual_seed(0)
    original = timm.create_model('sknet50')
    _randomise_norms(original)
    caffemodel = tmp_path / 'sknet50.caffemodel'
    write_caffemodel(original.eval(), caffemodel)

    converted = tmp_path / 'sknet50.safetensors'
    subprocess.run(
        [str(BIN_DIR / 'convert-caffe'), str(caffemodel), '--model', 'sknet50', '--output', str(converted), '--verify'],
        check=True, timeout=300)

    mirrors = tmp_path / 'mirrors'
    repo = mirrors / 'models' / NAMESPACE / REPO_NAME
    repo.parent.mkdir(parents=True)
    monkeypatch.setattr(sys, 'argv', [
        'timm-sknet', 'publish', '--model', 'sknet50', '--weights', str(converted),
        '--repo-id', f'{NAMESPACE}/{REPO_NAME}', '--dry-run', '--output-dir', str(repo)])
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 0
    card = (repo / 'README.md').read_text()
    metadata = read_metadata(converted)
    for key in PROVENANCE_KEYS + VERIFY_KEYS:  # provenance and parity as convert-caffe recorded them
        assert metadata[key] in card, key
    _git_commit_all(repo)

    inputs = tmp_path / 'inputs.safetensors'
    save_file({'x': torch.randn(2, 3, 96, 96, generator=torch.Generator().manual_seed(1))}, str(inputs))
    logits = tmp_path / 'logits.safetensors'
    hf_home = tmp_path / 'hf'
    with _olah(mirrors, tmp_path) as endpoint:
        load = subprocess.run(
            [sys.executable, '-c', LOAD_SCRIPT, str(converted), str(inputs), str(logits)],
            env=_client_env(endpoint, hf_home), capture_output=True, text=True, timeout=300)
    assert load.returncode == 0, load.stderr[-4000:]

    out = load_file(str(logits))
    assert out['hub_same_weights'].item() and out['registry_same_weights'].item()
    assert torch.equal(out['hub'], out['converted'])
    assert torch.equal(out['registry'], out['converted'])
    # only safetensors and the config came over the wire: no pickle was even asked for
    fetched = {p.name for p in hf_home.rglob('*') if 'snapshots' in p.parts and not p.is_dir()}
    assert fetched == {'config.json', 'model.safetensors'}
    assert 'pytorch_model.bin' not in (tmp_path / 'olah.log').read_text()

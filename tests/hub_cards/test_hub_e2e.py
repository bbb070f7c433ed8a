"""End to end: caffemodel -> convert-caffe -> publish --dry-run -> git repo served by olah -> timm loads it.

olah (a Hub mirror) serves git repos under ``mirrors-path/models/<namespace>/<name>`` offline, on loopback;
``HF_ENDPOINT`` points huggingface_hub at it and ``HF_HOME`` keeps the cache in tmp. Models register at import
and read ``TIMM_SKNET_HUB_NAMESPACE`` then, so the loading happens in a subprocess.
"""
import subprocess
from pathlib import Path

import torch

from hub_helpers import NAMESPACE, convert_random_sknet50, load_through_hub, olah
from support import run_cli
from timm_sknet.weights import PROVENANCE_KEYS, VERIFY_KEYS, read_metadata

REPO_NAME = 'sknet50.caffe_in1k'


def _git_commit_all(repo: Path) -> None:
    git = ['git', '-C', str(repo), '-c', 'user.name=e2e', '-c', 'user.email=e2e@localhost',
           '-c', 'commit.gpgsign=false']
    subprocess.run(['git', 'init', '-q', '-b', 'main', str(repo)], check=True)
    subprocess.run(git + ['-c', 'core.looseCompression=0', 'add', '-A'], check=True)  # 110 MB: skip zlib work
    subprocess.run(git + ['commit', '-q', '-m', 'publish'], check=True)


def test_convert_publish_serve_load(monkeypatch, tmp_path):
    converted = convert_random_sknet50(tmp_path, '--verify')

    mirrors = tmp_path / 'mirrors'
    repo = mirrors / 'models' / NAMESPACE / REPO_NAME
    repo.parent.mkdir(parents=True)
    assert run_cli(monkeypatch, 'publish', '--model', 'sknet50', '--weights', str(converted),
                   '--repo-id', f'{NAMESPACE}/{REPO_NAME}', '--dry-run', '--output-dir', str(repo)) == 0
    card = (repo / 'README.md').read_text()
    metadata = read_metadata(converted)
    for key in PROVENANCE_KEYS + VERIFY_KEYS:  # provenance and parity as convert-caffe recorded them
        assert metadata[key] in card, key
    _git_commit_all(repo)

    hf_home = tmp_path / 'hf'
    with olah(mirrors, tmp_path, f'{NAMESPACE}/{REPO_NAME}/resolve/main/config.json') as endpoint:
        out = load_through_hub(endpoint, hf_home, converted, tmp_path,
                               hub=f'hf-hub:{NAMESPACE}/{REPO_NAME}', registry='sknet50')

    assert out['hub_same_weights'].item() and out['registry_same_weights'].item()
    assert torch.equal(out['hub'], out['converted'])
    assert torch.equal(out['registry'], out['converted'])
    # only safetensors and the config came over the wire: no pickle was even asked for
    fetched = {p.name for p in hf_home.rglob('*') if 'snapshots' in p.parts and not p.is_dir()}
    assert fetched == {'config.json', 'model.safetensors'}
    assert 'pytorch_model.bin' not in (tmp_path / 'olah.log').read_text()

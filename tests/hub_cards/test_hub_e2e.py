"""End to end through a Hub: caffemodel -> convert-caffe -> publish --dry-run -> git repo served by olah -> timm,
the local store and transformers load it; timm's own skresnext50_32x4d repo serves ``sk_resnext50_32x4d.ra_in1k``.

olah (a Hub mirror) serves git repos under ``mirrors-path/models/<namespace>/<name>`` offline, on loopback;
``HF_ENDPOINT`` points huggingface_hub at it and ``HF_HOME`` keeps the cache in tmp; huggingface_hub reads both
when it is imported, so the loading happens in subprocesses. One olah serves the module.
"""
import json
import subprocess
import sys
from pathlib import Path
from typing import Iterator, NamedTuple

import pytest
import timm
import torch
from safetensors.torch import load_file, save_file
from timm.models import save_for_hf

from hub_helpers import NAMESPACE, client_env, convert_random_sknet50, load_pretrained, load_through_hub, olah
from support import randomize_norms, run_cli
from timm_sknet.weights.store import PROVENANCE_KEYS, VERIFY_KEYS, read_metadata

REPO_NAME = 'sknet50.caffe_in1k'
REPO_ID = f'{NAMESPACE}/{REPO_NAME}'
TIMM_REPO_ID = 'timm/skresnext50_32x4d.ra_in1k'  # a generated stand-in with timm's name and file layout

# argv: REPO_ID output.safetensors. One picture through timm (hf-hub:) and through transformers' timm wrapper:
# AutoModelForImageClassification + AutoImageProcessor, and the image-classification pipeline. timm_sknet is
# not imported: installing it is what registers the models when timm is imported. The processor and the pipeline
# read the repo's snapshot as downloaded through the Hub: for a file a repo lacks (transformers first asks for
# processor_config.json) the Hub answers 404 EntryNotFound, which transformers skips, but an offline olah answers
# 401 RepoNotFound, which it takes as fatal. transformers keeps the weights as views into the memory-mapped file,
# at offsets the CPU allocator would have aligned; oneDNN rounds differently there, so the wrapped model is also
# run on an aligned copy of itself (copy.deepcopy).
TRANSFORMERS_SCRIPT = """
import copy, json, sys
import numpy as np, timm, torch
from huggingface_hub import snapshot_download
from PIL import Image
from safetensors.torch import save_file
from transformers import AutoImageProcessor, AutoModelForImageClassification, pipeline
from transformers.pipelines.image_classification import softmax

repo_id, output = sys.argv[1:]
image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (300, 400, 3), dtype=np.uint8))
model = timm.create_model(f'hf-hub:{repo_id}', pretrained=True).eval()
data_config = timm.data.resolve_data_config({}, model=model)
timm_pixels = timm.data.create_transform(**data_config, is_training=False)(image).unsqueeze(0)
hf_model = AutoModelForImageClassification.from_pretrained(repo_id).eval()
snapshot = snapshot_download(repo_id)
processor = AutoImageProcessor.from_pretrained(snapshot)
hf_pixels = processor(image)['pixel_values']
with torch.inference_mode():
    timm_logits, hf_logits = model(timm_pixels), hf_model(hf_pixels).logits
    aligned_logits = copy.deepcopy(hf_model)(hf_pixels).logits
top5 = pipeline('image-classification', model=snapshot)(image, top_k=5)
label_names = timm.data.ImageNetInfo().label_descriptions()
timm_state, hf_state = model.state_dict(), hf_model.timm_model.state_dict()
same_weights = timm_state.keys() == hf_state.keys() and all(torch.equal(v, hf_state[k]) for k, v in timm_state.items())
save_file({'timm_pixels': timm_pixels, 'hf_pixels': hf_pixels, 'timm_logits': timm_logits,
           'hf_logits': hf_logits, 'aligned_logits': aligned_logits,
           'pipeline_scores': torch.tensor([r['score'] for r in top5]),
           'hf_probs': torch.from_numpy(softmax(hf_logits[0].numpy()))}, output)
print(json.dumps({
    'same_weights': same_weights, 'wrapped': type(hf_model.timm_model).__name__,
    'hf_data_config': processor.data_config, 'timm_data_config': data_config,
    'pipeline_labels': [r['label'] for r in top5],
    'timm_top5_labels': [label_names[i] for i in timm_logits.topk(5).indices[0].tolist()]}))
"""


class Hub(NamedTuple):
    endpoint: str
    repo: Path  # REPO_ID's files, as publish --dry-run wrote them
    converted: Path  # the weights published as REPO_ID
    timm_weights: Path  # the weights published as TIMM_REPO_ID
    log: Path  # olah's


def _git_commit_all(repo: Path) -> None:
    git = ['git', '-C', str(repo), '-c', 'user.name=e2e', '-c', 'user.email=e2e@localhost',
           '-c', 'commit.gpgsign=false']
    subprocess.run(['git', 'init', '-q', '-b', 'main', str(repo)], check=True)
    subprocess.run(git + ['-c', 'core.looseCompression=0', 'add', '-A'], check=True)  # 110 MB: skip zlib work
    subprocess.run(git + ['commit', '-q', '-m', 'publish'], check=True)


def _timm_stand_in(repo: Path) -> Path:
    """What timm's own repo holds, written by timm's public export: its skresnext50_32x4d with trained-looking
    BatchNorm, as model.safetensors and config.json."""
    torch.manual_seed(0)
    model = timm.create_model('skresnext50_32x4d')
    randomize_norms(model)
    save_for_hf(model, repo, safe_serialization=True)
    return repo / 'model.safetensors'


@pytest.fixture(scope='module')
def hub(tmp_path_factory) -> Iterator[Hub]:
    workdir = tmp_path_factory.mktemp('e2e')
    converted = convert_random_sknet50(workdir, '--verify')
    mirrors = workdir / 'mirrors'
    repo = mirrors / 'models' / REPO_ID
    repo.parent.mkdir(parents=True)
    with pytest.MonkeyPatch.context() as monkeypatch:
        assert run_cli(monkeypatch, 'publish', '--model', 'sknet50', '--weights', str(converted),
                       '--repo-id', REPO_ID, '--dry-run', '--output-dir', str(repo)) == 0
    timm_weights = _timm_stand_in(mirrors / 'models' / TIMM_REPO_ID)
    for published in (repo, timm_weights.parent):
        _git_commit_all(published)
    with olah(mirrors, workdir, f'{REPO_ID}/resolve/main/config.json') as endpoint:
        yield Hub(endpoint, repo, converted, timm_weights, workdir / 'olah.log')


def test_convert_publish_serve_load(hub, tmp_path):
    metadata = read_metadata(hub.converted)
    card = (hub.repo / 'README.md').read_text()
    for key in PROVENANCE_KEYS + VERIFY_KEYS:  # provenance and parity as convert-caffe recorded them
        assert metadata[key] in card, key

    hf_home = tmp_path / 'hf'
    out = load_through_hub(hub.endpoint, hf_home, hub.converted, tmp_path, hub=f'hf-hub:{REPO_ID}', registry='sknet50')
    assert out['hub_same_weights'].item() and out['registry_same_weights'].item()
    assert torch.equal(out['hub'], out['converted'])
    assert torch.equal(out['registry'], out['converted'])
    # only safetensors and the config came over the wire: no pickle was even asked for
    fetched = {p.name for p in hf_home.rglob('*') if 'snapshots' in p.parts and not p.is_dir()}
    assert fetched == {'config.json', 'model.safetensors'}
    assert 'pytorch_model.bin' not in hub.log.read_text()


def test_sk_resnext50_ra_in1k_loads_timms_skresnext50_repo(hub, tmp_path):
    """``sk_resnext50_32x4d.ra_in1k`` (the default tag of ``sk_resnext50_32x4d``) is timm's own
    ``timm/skresnext50_32x4d.ra_in1k``: its state dict loads strictly and computes what timm's model computes."""
    out = load_through_hub(hub.endpoint, tmp_path / 'hf', hub.timm_weights, tmp_path, reference='skresnext50_32x4d',
                           ours='sk_resnext50_32x4d.ra_in1k')
    assert out['ours_same_weights'].item()
    assert (out['ours'] - out['converted']).abs().max() <= 1e-5 * out['converted'].abs().max()
    assert f'/{TIMM_REPO_ID}/resolve/main/model.safetensors' in hub.log.read_text()
    # the tag's cfg is timm's own, and the architecture's default
    cfg, timm_cfg = timm.models.get_pretrained_cfg('sk_resnext50_32x4d'), timm.models.get_pretrained_cfg(
        'skresnext50_32x4d.ra_in1k')
    assert cfg.tag == 'ra_in1k'
    assert {**cfg.to_dict(), 'architecture': None} == {**timm_cfg.to_dict(), 'architecture': None}


def test_installed_copy_wins_over_the_hub(hub, tmp_path):
    """The Hub serves the converted weights; the store holds other ones: ``pretrained=True`` loads the store's,
    and says so; ``hf-hub:`` still names the Hub's."""
    store = tmp_path / 'store'
    installed = store / REPO_NAME / 'model.safetensors'
    installed.parent.mkdir(parents=True)
    tensors = load_file(str(hub.converted))
    tensors['fc.bias'] += 1
    save_file(tensors, str(installed), read_metadata(hub.converted))
    out, log = load_pretrained(client_env(hub.endpoint, tmp_path / 'hf', store), installed, tmp_path,
                               registry='sknet50', hub=f'hf-hub:{REPO_ID}')
    assert out['registry_same_weights'].item() and torch.equal(out['registry'], out['converted'])
    assert f'{REPO_NAME}: loading the installed copy {installed} (the local store comes before the Hub)' in log
    assert not out['hub_same_weights'].item()


def test_transformers_loads_the_published_repo(hub, tmp_path):
    """The published config.json loads in transformers' timm wrapper (AutoModelForImageClassification and the
    image-classification pipeline) with the same preprocessing and logits as timm."""
    output = tmp_path / 'transformers.safetensors'
    proc = subprocess.run([sys.executable, '-c', TRANSFORMERS_SCRIPT, REPO_ID, str(output)],
                          env=client_env(hub.endpoint, tmp_path / 'hf'), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    report = json.loads(proc.stdout.splitlines()[-1])
    out = load_file(str(output))
    assert report['wrapped'] == 'SKNet' and report['same_weights']
    assert report['hf_data_config'] == report['timm_data_config'] == {
        'input_size': [3, 224, 224], 'interpolation': 'bilinear', 'mean': [123 / 255, 117 / 255, 104 / 255],
        'std': [1 / 255] * 3, 'crop_pct': 0.875, 'crop_mode': 'center'}
    assert torch.equal(out['hf_pixels'], out['timm_pixels'])
    assert torch.equal(out['aligned_logits'], out['timm_logits'])
    # as loaded, the only difference is float rounding from where the weights sit in memory (measured: 7e-7)
    assert (out['hf_logits'] - out['timm_logits']).abs().max() <= 1e-5 * out['timm_logits'].abs().max()
    assert report['pipeline_labels'] == report['timm_top5_labels']
    # the pipeline's scores are its own (numpy) softmax of the wrapped model's logits
    assert torch.equal(out['pipeline_scores'], out['hf_probs'].topk(5).values)

"""``timm-sknet publish --dry-run``: the repo files, timm loading them back, and refusals of user errors."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import load_file, save_file

from hub_cards.results import RESULTS_FORMAT
from hub_helpers import free_port
from test_card import evaluation
from support import run_cli
from timm_sknet.io.files import MANIFEST_NAME, sha256_file

REPO_ID = 'someone/sknet50.caffe_in1k'

def _results(weights_sha256: str, image_count: int = 50000, skipped: tuple = (), top1_correct: int = 39627) -> dict:
    return {
        'format': RESULTS_FORMAT, 'model': 'sknet50',
        'weights': {'file': 'sknet50.safetensors', 'size': 1, 'sha256': weights_sha256},
        'data': {'dir': '/data/imagenet/val', 'sha256': 'd' * 64, 'image_count': image_count, 'num_classes': 1000,
                 'class_map': 'the sorted class folders',
                 'skipped': [{'file': f, 'error': 'OSError: image file is truncated'} for f in skipped]},
        'evaluations': [evaluation(224, 0.875, top1_correct, 47300, image_count)],
        'device': 'cpu', 'command': 'timm-sknet validate ...',
        'versions': {'timm_sknet': '0.1.0', 'timm': '1.0.31', 'torch': '2.15.0', 'python': '3.11.2'},
    }


def _publish(monkeypatch, weights: Path, out: Path, *extra: str) -> int:
    return run_cli(monkeypatch, 'publish', '--model', 'sknet50', '--weights', str(weights), '--repo-id', REPO_ID,
                   '--dry-run', '--output-dir', str(out), *extra)


def test_dry_run_writes_loadable_repo(monkeypatch, tmp_path, weights):
    out = tmp_path / 'repo'
    assert _publish(monkeypatch, weights, out) == 0
    # and the manifest that lets a later --force tell its own files from the user's (test_publish_safety.py)
    assert sorted(p.name for p in out.iterdir()) == [MANIFEST_NAME, 'README.md', 'config.json', 'model.safetensors']
    assert sha256_file(out / 'model.safetensors') == sha256_file(weights)
    config = json.loads((out / 'config.json').read_text())
    assert config['architecture'] == 'sknet50' and config['num_classes'] == 1000
    assert config['pretrained_cfg']['test_input_size'] == [3, 320, 320]
    # the weights are named, so timm reads model.safetensors and never tries a pickle (test_hub_e2e shows it over
    # HTTP); no model_args, as in timm's own Hub configs: transformers' timm wrapper fails on a second num_classes
    assert config['pretrained_cfg']['hf_hub_filename'] == 'model.safetensors'
    assert 'model_args' not in config
    assert 'not yet validated' in (out / 'README.md').read_text()

    model = timm.create_model(f'local-dir:{out}', pretrained=True)
    expected = load_file(str(weights))
    assert model.state_dict().keys() == expected.keys()
    assert all(torch.equal(expected[k], v) for k, v in model.state_dict().items())
    assert model.pretrained_cfg['crop_pct'] == 0.875 and model.pretrained_cfg['interpolation'] == 'bilinear'

    # same inputs, same bytes: a real upload of them again is dropped by the Hub as unchanged
    again = tmp_path / 'again'
    assert _publish(monkeypatch, weights, again) == 0
    for name in ('README.md', 'config.json', 'model.safetensors'):
        assert (again / name).read_bytes() == (out / name).read_bytes()


def test_dry_run_with_matching_results_has_model_index(monkeypatch, tmp_path, weights):
    results = tmp_path / 'results.json'
    results.write_text(json.dumps(_results(sha256_file(weights))))
    out = tmp_path / 'repo'
    assert _publish(monkeypatch, weights, out, '--results', str(results)) == 0
    card = (out / 'README.md').read_text()
    assert 'model-index:' in card and 'not yet validated' not in card
    assert '| `--img-size 224 --crop-pct 0.875` | 79.21 | 79.254 | +0.044 | 94.600 |' in card


def test_publish_gates_the_number_and_states_an_accepted_shortfall(monkeypatch, tmp_path, weights, capsys):
    """Results 2.21 points short of the authors' 79.21 at 224: refused without a reason, nothing written; with
    --accept-shortfall the card carries the shortfall and the reason."""
    results = tmp_path / 'results.json'
    results.write_text(json.dumps(_results(sha256_file(weights), top1_correct=38500)))
    out = tmp_path / 'repo'
    assert _publish(monkeypatch, weights, out, '--results', str(results)) == 2
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and "77.000%, 2.210 points below the authors' 79.21%" in err
    assert '--accept-shortfall "REASON"' in err and not out.exists()
    assert _publish(monkeypatch, weights, out, '--results', str(results), '--accept-shortfall',
                    'a known difference of the released file') == 0
    card = (out / 'README.md').read_text()
    assert '2.210 points below' in card and '> a known difference of the released file\n' in card


USER_ERRORS = {  # case -> what the one-line message must say
    'results_for_other_weights': 'measured on other weights',
    'results_on_a_subset': 'covers 8 images',
    'results_that_skipped_images': 'skipped 1 unreadable images (the first n01440764/bad.JPEG)',
    'results_of_an_older_validate': 'an older validate wrote it, before each number named its preprocessing',
    'not_a_results_file': 'is not a timm-sknet validate results file',
    'missing_weights': 'does not exist',
    'wrong_model': 'holds sknet50 weights, not sknet101',
    'no_provenance': 'lacks source_file',
    'existing_output': 'holds files timm-sknet publish did not write (e.g. keep)',
    'dry_run_without_output_dir': '--output-dir',
    'bad_repo_id': 'must be NAMESPACE/NAME',
    'repo_named_for_other_model': 'named for sknet101',
    'unreleased_model': "sknet26.untrained holds no weights of the authors' releases",
    'accept_shortfall_without_results': '--accept-shortfall applies to the results a card quotes',
}


@pytest.mark.parametrize('case', USER_ERRORS)
def test_publish_user_errors(monkeypatch, tmp_path, weights, capsys, case):
    out = tmp_path / 'repo'
    model, weights_arg, repo_id, extra = 'sknet50', weights, REPO_ID, ['--dry-run', '--output-dir', str(out)]
    if case == 'results_for_other_weights':
        (tmp_path / 'r.json').write_text(json.dumps(_results('0' * 64)))
        extra += ['--results', str(tmp_path / 'r.json')]
    elif case == 'results_on_a_subset':
        (tmp_path / 'r.json').write_text(json.dumps(_results(sha256_file(weights), image_count=8)))
        extra += ['--results', str(tmp_path / 'r.json')]
    elif case == 'results_that_skipped_images':  # 50,000 decoded, one more skipped: still not the whole val set
        results = _results(sha256_file(weights), skipped=('n01440764/bad.JPEG',))
        (tmp_path / 'r.json').write_text(json.dumps(results))
        extra += ['--results', str(tmp_path / 'r.json')]
    elif case == 'results_of_an_older_validate':
        results = _results(sha256_file(weights))
        results['format'] = 'timm-sknet-validate/2'
        del results['data']['sha256']
        (tmp_path / 'r.json').write_text(json.dumps(results))
        extra += ['--results', str(tmp_path / 'r.json')]
    elif case == 'missing_weights':
        weights_arg = tmp_path / 'absent.safetensors'
    elif case == 'wrong_model':
        model, repo_id = 'sknet101', 'someone/my-sknet'
    elif case == 'no_provenance':
        weights_arg = tmp_path / 'bare.safetensors'
        save_file(load_file(str(weights)), str(weights_arg))
    elif case == 'existing_output':
        out.mkdir()
        (out / 'keep').write_text('mine')
    elif case == 'dry_run_without_output_dir':
        extra = ['--dry-run']
    elif case == 'bad_repo_id':
        repo_id = 'sknet50.caffe_in1k'
    elif case == 'repo_named_for_other_model':
        repo_id = 'someone/sknet101.caffe_in1k'
    elif case == 'unreleased_model':
        model = 'sknet26'
    elif case == 'accept_shortfall_without_results':
        extra += ['--accept-shortfall', 'because']
    elif case == 'not_a_results_file':
        (tmp_path / 'r.json').write_text(json.dumps({'format': RESULTS_FORMAT, 'top1': 80.0}))
        extra += ['--results', str(tmp_path / 'r.json')]
    code = run_cli(
        monkeypatch, 'publish', '--model', model, '--weights', str(weights_arg), '--repo-id', repo_id, *extra)
    err = capsys.readouterr().err
    assert code != 0
    assert err.startswith('timm-sknet: error: ') and err.count('\n') == 1
    assert USER_ERRORS[case] in err
    if case == 'existing_output':
        assert [p.name for p in out.iterdir()] == ['keep']
    else:
        assert not out.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith('.')] == []  # no staging left behind


UPLOAD_FAILURES = {  # case -> what the one-line message must say ({endpoint}: the Hub tried)
    'no_token': 'no Hugging Face token',
    'hub_not_answering': f'upload to {REPO_ID} at {{endpoint}} failed: ',
    'no_results': 'pass --allow-unvalidated to upload an unvalidated card',
}


@pytest.mark.parametrize('case', UPLOAD_FAILURES)
def test_upload_failures_are_one_line(tmp_path, weights, case):
    """A real upload: refused before any network access without a token (HF_HOME in tmp, no HF_TOKEN) and without
    results unless the unvalidated card is allowed; with both, a Hub that does not answer (a closed loopback port)
    gives one line naming it. None leaves an --output-dir behind."""
    endpoint = f'http://127.0.0.1:{free_port()}'
    env = {k: v for k, v in os.environ.items() if not k.startswith('HF_')}
    env.update(HF_HOME=str(tmp_path / 'hf'), HF_ENDPOINT=endpoint)
    token = None if case == 'no_token' else 'hf_not_a_real_token'
    if token:
        env['HF_TOKEN'] = token
    out = tmp_path / 'repo'
    allow = [] if case == 'no_results' else ['--allow-unvalidated']
    proc = subprocess.run(
        [sys.executable, '-c', 'from timm_sknet.cli import main; main()', 'publish', '--model', 'sknet50',
         '--weights', str(weights), '--repo-id', REPO_ID, '--output-dir', str(out), *allow],
        env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert proc.stderr.startswith('timm-sknet: error: ') and proc.stderr.count('\n') == 1
    assert UPLOAD_FAILURES[case].format(endpoint=endpoint) in proc.stderr
    if token:
        assert token not in proc.stderr + proc.stdout
    assert [p.name for p in tmp_path.iterdir() if p.name != 'hf'] == []  # neither --output-dir nor staging


def test_publish_takes_the_authors_pytorch_weights(monkeypatch, tmp_path):
    """sk_resnet50 / sk_resnet101 (their pytorchinsight_in1k tag) publish as the Caffe release's tags do."""
    weights = tmp_path / 'sk_resnet50.safetensors'
    provenance = {'source_file': 'sk_resnet50.pth.tar', 'source_size': '1', 'source_sha256': 'c' * 64,
                  'model_name': 'sk_resnet50', 'timm_sknet_version': '0', 'timm_version': '0', 'torch_version': '0'}
    save_file(timm.create_model('sk_resnet50').state_dict(), str(weights), metadata=provenance)
    results = tmp_path / 'results.json'
    results.write_text(json.dumps({**_results(sha256_file(weights), top1_correct=38800),
                                   'model': 'sk_resnet50.pytorchinsight_in1k'}))
    out = tmp_path / 'repo'
    assert run_cli(monkeypatch, 'publish', '--model', 'sk_resnet50', '--weights', str(weights), '--repo-id',
                   'someone/sk_resnet50.pytorchinsight_in1k', '--results', str(results), '--dry-run',
                   '--output-dir', str(out)) == 0
    card = (out / 'README.md').read_text()
    assert 'from the checkpoint `sk_resnet50.pth.tar`' in card and '| 77.538 | 77.600 | +0.062 |' in card
    config = json.loads((out / 'config.json').read_text())
    assert config['architecture'] == 'sk_resnet50' and config['pretrained_cfg']['tag'] == 'pytorchinsight_in1k'

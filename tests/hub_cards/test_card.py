"""Model cards: Hub front matter, provenance, parity, and a metric only from results on the published weights."""
import re

import pytest
import timm
import yaml
from huggingface_hub import ModelCard

from hub_cards.card import render_card
from hub_cards.results import RESULTS_FORMAT
from timm_sknet.weights.store import PROVENANCE_KEYS, VERIFY_KEYS
from timm_sknet.io.errors import UserError

WEIGHTS_SHA256 = '5' * 64
PROVENANCE = {
    'source_file': 'SKNet-50.caffemodel', 'source_size': '110428633', 'source_sha256': 'c' * 64,
    'model_name': 'sknet50', 'timm_sknet_version': '0.1.0', 'timm_version': '1.0.31', 'torch_version': '2.15.0',
}
VERIFIED = {
    'verify_runtime': 'opencv-dnn 4.14.0', 'verify_images': '16', 'verify_max_abs_diff': '3.1e-05',
    'verify_max_rel_diff': '2.4e-06', 'verify_top5_agreement': '16/16',
}
# 39,627 and 47,301 of 50,000 correct at 224; 40,401 and 47,622 at 320.
COUNTS = {224: (39627, 47301), 320: (40401, 47622)}


def _results() -> dict:
    evaluations = [{
        'input_size': [3, size, size], 'crop_pct': 0.875, 'crop_mode': 'center', 'interpolation': 'bilinear',
        'image_count': 50000, 'top1_correct': c1, 'top5_correct': c5,
        'top1': 100 * c1 / 50000, 'top5': 100 * c5 / 50000,
    } for size, (c1, c5) in COUNTS.items()]
    return {
        'format': RESULTS_FORMAT, 'model': 'sknet50',
        'weights': {'file': 'sknet50.safetensors', 'size': 110310704, 'sha256': WEIGHTS_SHA256},
        'data': {'dir': '/data/imagenet/val', 'image_count': 50000, 'num_classes': 1000, 'skipped': []},
        'evaluations': evaluations, 'device': 'cuda',
        'command': 'timm-sknet validate --model sknet50 --weights sknet50.safetensors /data/imagenet/val',
        'versions': {'timm_sknet': '0.1.0', 'timm': '1.0.31', 'torch': '2.15.0', 'python': '3.11.2'},
    }


@pytest.fixture(scope='module')
def sknet50():
    return timm.create_model('sknet50')


def _front_matter(card: str) -> dict:
    assert card.startswith('---\n')
    header, _ = card[4:].split('\n---\n', 1)
    return yaml.safe_load(header)


def test_card_without_results_has_no_metric(sknet50):
    card = render_card(sknet50, 'sknet50', 'someone/sknet50.caffe_in1k', WEIGHTS_SHA256, PROVENANCE)
    front = _front_matter(card)
    assert front['library_name'] == 'timm'
    assert front['license'] == 'other'
    assert front['pipeline_tag'] == 'image-classification'
    assert {'timm', 'image-classification', 'sknet'} <= set(front['tags'])
    assert 'datasets' not in front and 'model-index' not in front  # nothing shows what the weights were trained on
    assert 'not yet validated' in card and '**These weights are unvalidated:**' in card
    assert 'measured top-1' not in card
    for reported in ('79.21', '80.68', '20.79', '19.32'):
        assert reported not in card
    assert 'no licence file' in card
    assert "timm.create_model('hf-hub:someone/sknet50.caffe_in1k', pretrained=True)" in card
    assert 'TIMM_SKNET_HUB_NAMESPACE=someone' in card
    assert ModelCard(card).data.eval_results is None


def test_unvalidated_card_claims_nothing_it_cannot_show(sknet50):
    """The demo's random weights (convert-caffe's metadata names their generated source file): the card states the
    provenance as facts and says nothing about training, ImageNet accuracy or the authors' weights."""
    demo = {**PROVENANCE, **VERIFIED, 'source_file': 'sknet50_random.caffemodel'}
    card = render_card(sknet50, 'sknet50', 'someone/sknet50.caffe_in1k', WEIGHTS_SHA256, demo)
    assert '`sknet50_random.caffemodel` (sha256 `' + 'c' * 64 + '`)' in card
    for fact in ('3.1e-05', '2.4e-06', '16/16', WEIGHTS_SHA256):
        assert fact in card
    assert re.search(r'\btrained\b', card, re.IGNORECASE) is None
    for claim in ('ImageNet-1k by', "authors' weights", 'ImageNet weights'):
        assert claim not in card, claim
    assert '- **Dataset:** not established: the weights are unvalidated' in card

    validated = render_card(sknet50, 'sknet50', 'someone/sknet50.caffe_in1k', WEIGHTS_SHA256, demo, _results())
    assert _front_matter(validated)['datasets'] == ['imagenet-1k']
    assert ('Its top-1 on the 50,000 ImageNet-1k validation images, measured on exactly these weights, is 79.254% '
            'at 224 x 224 (the paper reports 79.21%)') in validated
    assert 'unvalidated' not in validated


def test_card_provenance_and_parity(sknet50):
    card = render_card(sknet50, 'sknet50', 'someone/sknet50.caffe_in1k', WEIGHTS_SHA256, {**PROVENANCE, **VERIFIED})
    for key in PROVENANCE_KEYS + VERIFY_KEYS:
        value = {**PROVENANCE, **VERIFIED}[key]
        assert value in card, key
    assert WEIGHTS_SHA256 in card
    assert 'convert-caffe --verify` ran the source caffemodel in opencv-dnn 4.14.0 on 16 images' in card
    assert 'not checked against a Caffe runtime' not in card

    unverified = render_card(sknet50, 'sknet50', 'someone/sknet50.caffe_in1k', WEIGHTS_SHA256, PROVENANCE)
    assert 'not checked against a Caffe runtime' in unverified
    assert '3.1e-05' not in unverified


def test_card_with_results_reports_measured_against_paper(sknet50):
    card = render_card(sknet50, 'sknet50', 'someone/sknet50.caffe_in1k', WEIGHTS_SHA256, PROVENANCE, _results())
    assert 'not yet validated' not in card
    # reported top-1 = 100 - paper top-1 error: 79.21 at 224, 80.68 at 320
    assert '| 224 x 224 | bilinear to 256, crop 224 | 79.21 | 79.254 | +0.044 | 94.602 |' in card
    assert '| 320 x 320 | bilinear to 365, crop 320 | 80.68 | 80.802 | +0.122 | 95.244 |' in card
    model_index = _front_matter(card)['model-index']
    assert model_index[0]['name'] == 'sknet50.caffe_in1k'
    eval_results = ModelCard(card).data.eval_results
    assert {(r.metric_name, r.metric_value) for r in eval_results} == {
        ('Top-1 accuracy (224 px, centre crop 0.875)', 79.254), ('Top-5 accuracy (224 px, centre crop 0.875)', 94.602),
        ('Top-1 accuracy (320 px, centre crop 0.875)', 80.802), ('Top-5 accuracy (320 px, centre crop 0.875)', 95.244),
    }
    assert all(r.dataset_type == 'imagenet-1k' and r.task_type == 'image-classification' for r in eval_results)


def test_card_is_deterministic(sknet50):
    args = (sknet50, 'sknet50', 'someone/sknet50.caffe_in1k', WEIGHTS_SHA256, PROVENANCE, _results())
    assert render_card(*args) == render_card(*args)


def test_card_registry_hint_only_for_registry_repo_names(sknet50):
    card = render_card(sknet50, 'sknet50', 'timm-sknet/sknet50.caffe_in1k', WEIGHTS_SHA256, PROVENANCE)
    assert "timm.create_model('sknet50', pretrained=True)` loads them too." in card
    other = render_card(sknet50, 'sknet50', 'someone/my-sknet', WEIGHTS_SHA256, PROVENANCE)
    assert "timm.create_model('sknet50', pretrained=True)" not in other


def test_card_refuses_weights_without_provenance(sknet50):
    with pytest.raises(UserError, match='source_sha256'):
        render_card(sknet50, 'sknet50', 'someone/sknet50.caffe_in1k', WEIGHTS_SHA256,
                    {k: v for k, v in PROVENANCE.items() if k != 'source_sha256'})


def test_card_refuses_models_without_release(sknet50):
    with pytest.raises(UserError, match='no released Caffe weights'):
        render_card(sknet50, 'sknet26', 'someone/sknet26', WEIGHTS_SHA256, PROVENANCE)


@pytest.mark.parametrize('case', ['skipped', 'subset'])
def test_card_refuses_incomplete_results(sknet50, case):
    """The card checks what publish checks: results on every image of ImageNet-1k val, none skipped."""
    results = _results()
    if case == 'skipped':
        results['data']['skipped'] = [{'file': 'n01440764/bad.JPEG', 'error': 'OSError: image file is truncated'}]
    else:
        results['data']['image_count'] = 49999
    message = {'skipped': 'skipped 1 unreadable images', 'subset': 'covers 49999 images of 1000 classes'}[case]
    with pytest.raises(UserError, match=message):
        render_card(sknet50, 'sknet50', 'someone/sknet50.caffe_in1k', WEIGHTS_SHA256, PROVENANCE, results)

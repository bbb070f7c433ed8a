"""Model cards for the converted SKNets: Hub front matter, provenance, parity with Caffe, measured accuracy.

A card claims only what it can show. Provenance is stated as facts (source file, sha256, verify figures); what the
weights are (an ImageNet-1k classifier, how accurate) only from validation results measured on them. Without
results the card says the weights are unvalidated and carries no metric, dataset or ``model-index``.
"""
import math
from importlib import resources
from string import Template
from typing import Any, Dict, List, Optional

import yaml
from timm.models import get_pretrained_cfg
from torch import nn

from timm_sknet.io.errors import UserError
from timm_sknet.weights.hub import DEFAULT_HUB_NAMESPACE, HUB_NAMESPACE_ENV
from timm_sknet.weights.release import (
    CITATION, PAPER_AUTHORS, PAPER_TITLE, PAPER_URL, RELEASE_URL, ReleasedModel, released_model)
from timm_sknet.weights.store import PROVENANCE_KEYS, VERIFY_KEYS

from .results import check_complete

TEMPLATE = 'templates/model_card.md'
UNVALIDATED_SUMMARY = (
    '**These weights are unvalidated:** no accuracy has been measured on them, so this card makes no claim about '
    'their training data or how well they classify; the provenance below is what is known of them.')
TAGS = ['image-classification', 'timm', 'sknet', 'selective-kernel']


def render_card(
        model: nn.Module,
        arch: str,
        repo_id: str,
        weights_sha256: str,
        metadata: Dict[str, str],
        results: Optional[Dict[str, Any]] = None,
) -> str:
    """README.md for ``repo_id`` holding ``model``'s weights (``arch``: its registered architecture, as the command
    resolved it); ``metadata`` is their safetensors header.

    ``results`` must already be checked against the weights (``results.read_results``); results that skipped an
    image or did not cover all of ImageNet-1k val are refused here too.
    """
    if results:
        check_complete(results, 'the results')
    release = released_model(arch)
    missing = [k for k in PROVENANCE_KEYS if k not in metadata]
    if missing:
        raise UserError(
            f"the weights' safetensors metadata lacks {', '.join(missing)}; publish a file written by convert-caffe")
    repo_name = repo_id.split('/')[-1]
    fields = dict(
        front_matter=yaml.safe_dump(front_matter(repo_name, results), sort_keys=False, allow_unicode=True),
        repo_name=repo_name,
        repo_id=repo_id,
        summary=_summary(release, results) if results else UNVALIDATED_SUMMARY,
        dataset='ImageNet-1k (validation results below)' if results else 'not established: the weights are unvalidated',
        arch=arch,
        paper_name=release.paper_name,
        paper_title=PAPER_TITLE,
        paper_url=PAPER_URL,
        paper_authors=PAPER_AUTHORS,
        release_url=RELEASE_URL,
        prototxt=release.prototxt,
        params_m=f'{sum(p.numel() for p in model.parameters()) / 1e6:.2f}',
        reported_params_m=release.reported_params_m,
        reported_gflops=release.reported_gflops,
        registry_use=_registry_use(arch, repo_id),
        resize_224=_resize(224, model.pretrained_cfg['crop_pct']),
        resize_320=_resize(320, model.pretrained_cfg.get('test_crop_pct') or model.pretrained_cfg['crop_pct']),
        converted_for=metadata['model_name'],
        weights_sha256=weights_sha256,
        parity=_parity(metadata),
        evaluation=_evaluation(release, results) if results else _not_validated(arch),
        citation=CITATION,
        **{k: metadata[k] for k in PROVENANCE_KEYS if k != 'model_name'},
    )
    template = resources.files(__package__).joinpath(TEMPLATE).read_text(encoding='utf-8')
    return Template(template).substitute(fields)


def front_matter(repo_name: str, results: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """The card's YAML header; ``model-index`` only from measured results."""
    # The release has no licence file: 'other' says exactly that, the card body explains it.
    front = {
        'library_name': 'timm',
        'license': 'other',
        'tags': list(TAGS),
        'pipeline_tag': 'image-classification',
    }
    if results:
        front['datasets'] = ['imagenet-1k']
        front['model-index'] = [{
            'name': repo_name,
            'results': [{
                'task': {'type': 'image-classification', 'name': 'Image Classification'},
                'dataset': {'name': 'ImageNet-1k', 'type': 'imagenet-1k', 'split': 'validation'},
                'metrics': _metrics(results),
            }],
        }]
    return front


def _metrics(results: Dict[str, Any]) -> List[Dict[str, Any]]:
    metrics = []
    for evaluation in results['evaluations']:
        size = evaluation['input_size'][-1]
        setting = f"{size} px, centre crop {evaluation['crop_pct']}"
        metrics += [
            {'type': 'accuracy', 'name': f'Top-1 accuracy ({setting})', 'value': round(evaluation['top1'], 3)},
            {'type': 'top_5_accuracy', 'name': f'Top-5 accuracy ({setting})', 'value': round(evaluation['top5'], 3)},
        ]
    return metrics


def _summary(release: ReleasedModel, results: Dict[str, Any]) -> str:
    first = results['evaluations'][0]
    size = first['input_size'][-1]
    reported = f" (the paper reports {release.reported_top1(size):.2f}%)" if size in release.reported_top1_err else ''
    return (f"Its top-1 on the {results['data']['image_count']:,} ImageNet-1k validation images, measured on exactly "
            f"these weights, is {first['top1']:.3f}% at {size} x {size}{reported}; see Evaluation.")


def _resize(size: int, crop_pct: float) -> int:
    return math.floor(size / crop_pct)  # as timm's eval transform


def _registry_use(arch: str, repo_id: str) -> str:
    namespace, repo_name = repo_id.split('/')
    if repo_name != f'{arch}.{get_pretrained_cfg(arch).tag}':
        return ''
    env = '' if namespace == DEFAULT_HUB_NAMESPACE else f' (with `{HUB_NAMESPACE_ENV}={namespace}` set)'
    return (f"\nThese are timm-sknet's registered pretrained weights for `{arch}`: "
            f"`timm.create_model('{arch}', pretrained=True)` loads them too{env}.\n")


def _parity(metadata: Dict[str, str]) -> str:
    if not all(k in metadata for k in VERIFY_KEYS):
        return ('The conversion was not checked against a Caffe runtime (`convert-caffe --verify` was not run), '
                'so no parity figures are given.')
    return (
        f"`convert-caffe --verify` ran the source caffemodel in {metadata['verify_runtime']} on "
        f"{metadata['verify_images']} images and compared its logits with this model's:\n\n"
        '| largest absolute logit difference | largest relative logit difference | top-5 agreement |\n'
        '|---|---|---|\n'
        f"| {metadata['verify_max_abs_diff']} | {metadata['verify_max_rel_diff']} "
        f"| {metadata['verify_top5_agreement']} |")


def _evaluation(release: ReleasedModel, results: Dict[str, Any]) -> str:
    lines = [
        f"Measured with `timm-sknet validate` on the {results['data']['image_count']:,} ImageNet-1k validation "
        f"images ({results['device']}; timm {results['versions']['timm']}, torch {results['versions']['torch']}), "
        f"on exactly this repo's model.safetensors (sha256 `{results['weights']['sha256']}`). Reported is 100 "
        "minus the paper's top-1 error (single centre crop); the difference is measured minus reported, in "
        'percentage points.',
        '',
        '| input | eval resize, crop | reported top-1 (%) | measured top-1 (%) | difference | measured top-5 (%) |',
        '|---|---|---|---|---|---|',
    ]
    for evaluation in results['evaluations']:
        size = evaluation['input_size'][-1]
        measured = round(evaluation['top1'], 3)
        if size in release.reported_top1_err:
            reported = release.reported_top1(size)
            reported_text, difference = f'{reported:.2f}', f'{measured - reported:+.3f}'
        else:
            reported_text = difference = 'not reported'
        resize = f"{evaluation['interpolation']} to {_resize(size, evaluation['crop_pct'])}, crop {size}"
        lines.append(
            f"| {size} x {size} | {resize} | {reported_text} | {measured:.3f} | {difference} "
            f"| {evaluation['top5']:.3f} |")
    lines += ['', f"Command: `{results['command']}`"]
    return '\n'.join(lines)


def _not_validated(arch: str) -> str:
    return (
        'These weights are not yet validated: no accuracy has been measured on them, so this card states none. '
        f'Measure it with `timm-sknet validate --model {arch} --weights model.safetensors IMAGENET_VAL_DIR` and '
        'publish again with `--results`.')

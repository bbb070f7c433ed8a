"""Model cards for the authors' converted weights: Hub front matter, provenance, parity, measured accuracy.

A card claims only what it can show. Provenance is stated as facts (source file, sha256, verify figures); what the
weights are (an ImageNet-1k classifier, how accurate) only from validation results measured on them, each number
with the preprocessing that gave it and the timm validate.py flags that give it again, beside the authors' number.
Without results the card says the weights are unvalidated and carries no metric, dataset or ``model-index``.
What differs between the Caffe release and the PyTorch one (PytorchInsight) is data: ``SOURCE_TEXT``.
"""
import math
from fractions import Fraction
from importlib import resources
from string import Template
from typing import Any, Dict, List, Optional

import yaml
from timm.models import get_pretrained_cfg
from torch import nn

from timm_sknet.io.errors import UserError
from timm_sknet.weights.hub import DEFAULT_HUB_NAMESPACE, HUB_NAMESPACE_ENV
from timm_sknet.weights.release import (
    CAFFE, CITATION, PAPER_AUTHORS, PAPER_TITLE, PAPER_URL, PYTORCHINSIGHT, AuthorsWeights)
from timm_sknet.weights.store import PROVENANCE_KEYS, VERIFY_KEYS

from .gate import GATE_SIZE, Verdict
from .results import check_complete

TEMPLATE = 'templates/model_card.md'
UNVALIDATED_SUMMARY = (
    '**These weights are unvalidated:** no accuracy has been measured on them, so this card makes no claim about '
    'their training data or how well they classify; the provenance below is what is known of them.')
TAGS = ['image-classification', 'timm', 'sknet', 'selective-kernel']

# What a card says of each kind of authors' file: {source} is the source file's name, {url} the release.
SOURCE_TEXT = {
    CAFFE: dict(
        file_kind='caffemodel',
        release="the authors' Caffe release",
        network=(
            'The network is the released graph (`{prototxt}`): a ResNeXt 32x4d trunk whose 3x3 convolutions are '
            'Selective Kernel convolutions with two paths (3x3, and 3x3 with dilation 2; G = 32) fused by softmax '
            "attention across the paths, and the release's Caffe stem max pool (3x3, stride 2, no padding, ceil "
            'rounding).'),
        input=(
            "The release's Caffe models take BGR pixels in 0..255 minus the per-channel mean (104, 117, 123), with no "
            'scaling. The conversion folds the BGR -> RGB swap into the first convolution, so this model takes '
            "timm's usual RGB input; its pretrained config has `mean = (123, 117, 104) / 255` and `std = 1 / 255`, "
            'which gives exactly the Caffe input.'),
        licence=("The authors' release repository ({url}) links the SKNet caffemodels and carries no licence file. No "
                 'licence is stated for those weights, hence `license: other`; the conversion adds none.'),
    ),
    PYTORCHINSIGHT: dict(
        file_kind='checkpoint',
        release="the authors' PyTorch release (PytorchInsight)",
        network=(
            "The network is the authors' PyTorch SK-ResNet (PytorchInsight's `resnet_sk.py`): a ResNet whose "
            'bottleneck 3x3 convolution is a Selective Kernel convolution with two 3x3 paths on the full width, one '
            'dense and one with 32 groups, fused by softmax attention across the paths (d = C / 16).'),
        input="The checkpoint takes RGB input normalised with ImageNet's mean and std, timm's usual preprocessing.",
        licence=("The authors' repository ({url}) links the SK-ResNet checkpoints and carries no licence file. No "
                 'licence is stated for those weights, hence `license: other`; the conversion adds none.'),
    ),
}


def render_card(
        model: nn.Module,
        authors: AuthorsWeights,
        repo_id: str,
        weights_sha256: str,
        metadata: Dict[str, str],
        results: Optional[Dict[str, Any]] = None,
        verdict: Optional[Verdict] = None,
) -> str:
    """README.md for ``repo_id`` holding ``model``'s weights, converted from the authors' file ``authors`` names;
    ``metadata`` is their safetensors header.

    ``results`` must already be checked against the weights (``results.read_results``) and passed by the gate
    (``verdict``, which every card with results carries); results that skipped an image or did not cover all of
    ImageNet-1k val are refused here too.
    """
    if results:
        check_complete(results, 'the results')
        if verdict is None:
            raise ValueError('results go on a card only with the verdict of the gate')
    missing = [k for k in PROVENANCE_KEYS if k not in metadata]
    if missing:
        raise UserError(
            f"the weights' safetensors metadata lacks {', '.join(missing)}; publish a file written by "
            f'{authors.converter}')
    text = {key: value.format(url=authors.url, prototxt=f'{authors.architecture}.prototxt')
            for key, value in SOURCE_TEXT[authors.kind].items()}
    arch, repo_name = authors.architecture, repo_id.split('/')[-1]
    fields = dict(
        front_matter=yaml.safe_dump(front_matter(repo_name, results), sort_keys=False, allow_unicode=True),
        repo_name=repo_name,
        repo_id=repo_id,
        summary=_summary(authors, results) if results else UNVALIDATED_SUMMARY,
        shortfall=_shortfall(verdict) if verdict is not None and verdict.short else '',
        dataset='ImageNet-1k (validation results below)' if results else 'not established: the weights are unvalidated',
        arch=arch,
        paper_name=authors.paper_name,
        paper_title=PAPER_TITLE,
        paper_url=PAPER_URL,
        paper_authors=PAPER_AUTHORS,
        release_url=authors.url,
        params_m=f'{sum(p.numel() for p in model.parameters()) / 1e6:.2f}',
        reported_size=authors.reported_size,
        registry_use=_registry_use(arch, repo_id),
        preprocessing=_preprocessing(model, results),
        converted_for=metadata['model_name'],
        weights_sha256=weights_sha256,
        source_rows=_source_rows(metadata),
        parity=_parity(authors, metadata),
        evaluation=_evaluation(authors, repo_id, results, verdict) if results else _not_validated(arch),
        citation=CITATION,
        **text,
        **{k: metadata[k] for k in PROVENANCE_KEYS if k != 'model_name'},
    )
    template = resources.files(__package__).joinpath(TEMPLATE).read_text(encoding='utf-8')
    return Template(template).substitute(fields)


def front_matter(repo_name: str, results: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """The card's YAML header; ``model-index`` only from measured results."""
    # The releases have no licence file: 'other' says exactly that, the card body explains it.
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
        setting = f"{evaluation['input_size'][-1]} px, resize {evaluation['resize']}, centre crop"
        metrics += [
            {'type': 'accuracy', 'name': f'Top-1 accuracy ({setting})', 'value': round(evaluation['top1'], 3)},
            {'type': 'top_5_accuracy', 'name': f'Top-5 accuracy ({setting})', 'value': round(evaluation['top5'], 3)},
        ]
    return metrics


def _summary(authors: AuthorsWeights, results: Dict[str, Any]) -> str:
    first = results['evaluations'][0]
    size = first['input_size'][-1]
    reported = f" (the authors report {authors.reported_top1[size]:g}%)" if size in authors.reported_top1 else ''
    return (f"Its top-1 on the {results['data']['image_count']:,} ImageNet-1k validation images, measured on exactly "
            f"these weights, is {first['top1']:.3f}% at {size} x {size}{reported}; see Evaluation.")


def _shortfall(verdict: Verdict) -> str:
    reason = '\n'.join(f'> {line}' for line in verdict.accepted_reason.splitlines())
    return (f"\n**Shortfall:** the top-1 measured at {GATE_SIZE} x {GATE_SIZE} on these weights, "
            f"{verdict.measured:.3f}%, is {verdict.shortfall:.3f} points below the authors' {verdict.reported:g}%, from "
            f'{verdict.reported_in}. They were published anyway, for this reason, given by the publisher:\n\n'
            f'{reason}\n')


def _registry_use(arch: str, repo_id: str) -> str:
    namespace, repo_name = repo_id.split('/')
    if repo_name != f'{arch}.{get_pretrained_cfg(arch).tag}':
        return ''
    env = '' if namespace == DEFAULT_HUB_NAMESPACE else f' (with `{HUB_NAMESPACE_ENV}={namespace}` set)'
    return (f"\nThese are timm-sknet's registered pretrained weights for `{arch}`: "
            f"`timm.create_model('{arch}', pretrained=True)` loads them too{env}.\n")


def _preprocessing(model: nn.Module, results: Optional[Dict[str, Any]]) -> str:
    cfg = model.pretrained_cfg
    size = cfg['input_size'][-1]
    resize = math.floor(size / cfg['crop_pct'])  # as timm's eval transform
    text = (f"The pretrained config evaluates with a {cfg['interpolation']} resize of the shorter side to {resize} "
            f"and a centre crop of {size} (crop_pct {cfg['crop_pct']:g}), the authors' protocol.")
    if results:
        text += ' Each number under Evaluation names its own preprocessing and the timm validate.py flags that repeat it.'
    return text


def _source_rows(metadata: Dict[str, str]) -> str:
    """The rows a converter recorded beyond the provenance keys: what the authors' checkpoint says of itself."""
    rows = [f"| the checkpoint records {key[len('source_'):]} | {metadata[key]} |"
            for key in ('source_epoch', 'source_acc', 'source_best_acc') if key in metadata]
    return ''.join(f'\n{row}' for row in rows)


def _parity(authors: AuthorsWeights, metadata: Dict[str, str]) -> str:
    if authors.kind == PYTORCHINSIGHT:
        return ("The conversion gives each tensor of the authors' state_dict its timm name, values unchanged, and "
                'refuses a file in which any tensor has no place or any timm tensor stays empty. No other runtime '
                'ran the checkpoint: the top-1 below is measured on this model.')
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


def _evaluation(authors: AuthorsWeights, repo_id: str, results: Dict[str, Any], verdict: Verdict) -> str:
    lines = [
        f"Measured on the {results['data']['image_count']:,} ImageNet-1k validation images ({results['device']}; timm "
        f"{results['versions']['timm']}, torch {results['versions']['torch']}), on exactly this repo's "
        f"model.safetensors (sha256 `{results['weights']['sha256']}`), through timm's validate.py pipeline with its "
        'defaults: the calls `python validate.py IMAGENET_VAL --model hf-hub:' + repo_id + ' --pretrained` makes with '
        f"the flags shown. Reported is the authors' top-1 (single centre crop), from {authors.reported_in}; the "
        'difference is measured minus reported, in percentage points.',
        '',
        '| input | preprocessing | validate.py flags | reported top-1 (%) | measured top-1 (%) | difference '
        '| measured top-5 (%) |',
        '|---|---|---|---|---|---|---|',
    ]
    for evaluation in results['evaluations']:
        size = evaluation['input_size'][-1]
        measured = round(evaluation['top1'], 3)
        if size in authors.reported_top1:
            reported = authors.reported_top1[size]
            reported_text, difference = f'{reported:g}', f'{measured - reported:+.3f}'
        else:
            reported_text = difference = 'not reported'
        lines.append(
            f"| {size} x {size} | {evaluation['preprocessing']} | `{evaluation['validate_py_flags']}` "
            f"| {reported_text} | {measured:.3f} | {difference} | {evaluation['top5']:.3f} |")
    lines += ['', f'Gate: {verdict.describe()}.']
    closer = _closer_at_320(authors, results)
    if closer:
        lines += ['', closer]
    lines += ['', f"Command: `{results['command']}`"]
    return '\n'.join(lines)


def _closer_at_320(authors: AuthorsWeights, results: Dict[str, Any]) -> str:
    """Which of the two 320 px conventions comes closer to the authors' 320 number, when both were measured."""
    at_320 = [e for e in results['evaluations'] if e['input_size'][-1] == 320]
    if 320 not in authors.reported_top1 or len(at_320) < 2:
        return ''
    reported = authors.reported_top1[320]
    distance = {e['protocol']: abs(Fraction(100 * e['top1_correct'], e['image_count']) - Fraction(str(reported)))
                for e in at_320}
    closest = min(at_320, key=lambda e: distance[e['protocol']])
    others = [e for e in at_320 if e is not closest]
    measured = ', '.join(f"{e['preprocessing']} (crop_pct {e['crop_pct']}) gives {e['top1']:.3f}%" for e in at_320)
    intro = f"The authors give no resize for their 320 x 320 number, {reported:g}%. Measured here: {measured}. "
    if all(distance[e['protocol']] == distance[closest['protocol']] for e in others):
        return intro + 'Both are equally close to it.'
    return intro + f"Closer to the authors' number is {closest['convention']} ({closest['preprocessing']})."


def _not_validated(arch: str) -> str:
    return (
        'These weights are not yet validated: no accuracy has been measured on them, so this card states none. '
        f'Measure it with `timm-sknet validate --model {arch} --weights model.safetensors IMAGENET_VAL_DIR` and '
        'publish again with `--results`.')

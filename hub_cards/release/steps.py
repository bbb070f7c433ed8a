"""The five steps of a release, each as what it takes in (its inputs, recorded), what it does and what it gives out.

1. convert: the authors' file -> ``WORK/model.safetensors`` (Caffe: verified against OpenCV on images of the
   validation set), installed into the store, where ``pretrained=True`` finds it;
2. validate: top-1 / top-5 on the whole validation set at 224 and at 320 (both 320 conventions), one record per
   protocol, then ``WORK/results.json``;
3. gate: the top-1 at 224 against the authors' (``hub_cards.gate``);
4. publish: card, config.json and the weights to the Hub repo in one commit (``--dry-run``: to ``--output-dir``);
5. read back: what the Hub now holds, through the Hub API into a fresh cache: every file's sha256, and the logits
   of ``hf-hub:REPO@COMMIT`` against the installed copy's on a fixed batch.
"""
import hashlib
import json
import os
import shutil
from dataclasses import asdict, dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import timm
import torch
from huggingface_hub import constants as hf_constants

from converters.output import safetensors_bytes
from timm_sknet.io.errors import UserError
from timm_sknet.io.files import atomic_output, output_directory, printable_name, read_manifest, sha256_file
from timm_sknet.weights.loading import create_model_with_weights
from timm_sknet.weights.release import CAFFE, AuthorsWeights
from timm_sknet.weights.store import VERIFY_KEYS, install_weights, installed_path, tensors_digest

from ..data import CheckedImages, FoundImages, check_images
from ..gate import SHORTFALL_LIMIT, GATE_SIZE, Verdict, check_gate
from ..protocols import Protocol
from ..publish import REPO_FILES, repo_texts, upload, write_repo_files
from ..card import render_card
from ..results import read_results, validation_set
from ..validate import measure, results_record, validation_protocols
from .hub import RepoState, check_hub, download_weights, fixed_batch_logits, read_back
from .workdir import WorkFolder

__all__ = ['Release', 'STEPS', 'Step']

WRITTEN_BY = 'timm-sknet release'  # in the store's install record, and (with the release's id) a --dry-run's manifest
VERIFY_IMAGE_COUNT = 4  # validation images the Caffe conversion is verified on (OpenCV's Caffe run is slow)


@dataclass
class Release:
    """One run of ``timm-sknet release``: its arguments and what the checks before any work found."""
    args: Any  # the parsed command line
    work: WorkFolder
    authors: AuthorsWeights
    found: FoundImages
    device: torch.device
    token: Optional[str]
    repo: Optional[RepoState]  # None with --dry-run
    outputs: Dict[str, Dict[str, Any]] = field(default_factory=dict)  # each step's, as recorded
    checked: Optional[CheckedImages] = None  # the images as decoded and hashed in this run

    @property
    def weights_sha256(self) -> str:
        return self.outputs['convert']['sha256']


@dataclass(frozen=True)
class Step:
    name: str
    inputs: Callable[[Release], Dict[str, Any]]
    run: Callable[[Release, Dict[str, Any]], Dict[str, Any]]  # (release, its inputs) -> outputs
    report: Callable[[Release, Dict[str, Any]], str]  # one line on the outputs
    intact: Callable[[Release, Dict[str, Any]], bool] = lambda release, outputs: True  # outputs still in place


def _file(path: Optional[Path]) -> Optional[Dict[str, Any]]:
    """What identifies an input file: its name, size and sha256."""
    if path is None:
        return None
    return {'name': printable_name(Path(path).name), 'size': os.path.getsize(path), 'sha256': sha256_file(path)}


# -- 1. convert ----------------------------------------------------------------------------------------------------
def _convert_inputs(release: Release) -> Dict[str, Any]:
    args = release.args
    return {'model': release.authors.name, 'source': _file(args.source), 'prototxt': _file(args.prototxt),
            'verify_images': [printable_name(path) for path in _verify_images(release)],
            'versions': {name: version(name) for name in ('timm-sknet', 'timm', 'torch')}}


def _verify_images(release: Release) -> List[str]:
    """The first image of each of the first classes: real pictures for the Caffe parity check."""
    if release.authors.kind != CAFFE:
        return []
    firsts: Dict[int, str] = {}
    for path, target in release.found.samples:
        firsts.setdefault(target, path)
    return list(firsts.values())[:VERIFY_IMAGE_COUNT]


def _convert(release: Release, inputs: Dict[str, Any]) -> Dict[str, Any]:
    authors, args = release.authors, release.args
    if authors.kind == CAFFE:
        from converters.caffe.command import convert_caffemodel
        tensors, metadata = convert_caffemodel(
            str(args.source), authors.architecture, str(args.prototxt) if args.prototxt else None, True,
            _verify_images(release))
    else:
        from converters.pytorchinsight.command import convert_checkpoint
        tensors, metadata = convert_checkpoint(str(args.source), authors.architecture)
    content = safetensors_bytes(tensors, metadata)
    with atomic_output(release.work.weights, force=True) as tmp:
        tmp.write_bytes(content)
    installed = installed_path(authors.name)
    # weights installed before (by convert-caffe --install, say) stay when they are these, whatever their provenance
    same = installed.is_file() and tensors_digest(installed) == tensors_digest(release.work.weights)
    if not same:
        if installed.exists() and not args.force:
            raise UserError(
                f'the store already holds other weights as {authors.name} ({installed}); pass --force to replace them '
                "with this release's, or move them out of the store")
        with install_weights(authors.name, installed.exists(), WRITTEN_BY) as tmp:
            tmp.write_bytes(content)
    return {'sha256': sha256_file(release.work.weights), 'size': len(content), 'installed': str(installed),
            'installed_sha256': sha256_file(installed),
            'verify': {key: metadata[key] for key in VERIFY_KEYS} if VERIFY_KEYS[0] in metadata else None}


def _convert_intact(release: Release, outputs: Dict[str, Any]) -> bool:
    installed, weights = installed_path(release.authors.name), release.work.weights
    return (weights.is_file() and sha256_file(weights) == outputs['sha256'] and installed.is_file()
            and sha256_file(installed) == outputs['installed_sha256'])


def _convert_report(release: Release, outputs: Dict[str, Any]) -> str:
    text = f"model.safetensors sha256 {outputs['sha256']}, installed as {release.authors.name}"
    verify = outputs['verify']
    if verify:
        text += (f"; verified against {verify['verify_runtime']} on {verify['verify_images']} validation images: "
                 f"max relative logit difference {verify['verify_max_rel_diff']}, same top-5 on "
                 f"{verify['verify_top5_agreement']}")
    return text


# -- 2. validate ---------------------------------------------------------------------------------------------------
def _protocols(release: Release) -> List[Protocol]:
    with torch.device('meta'):
        model = timm.create_model(release.authors.name)
    return validation_protocols(model)


def _validate_inputs(release: Release) -> Dict[str, Any]:
    if release.checked is None:
        release.checked = check_images(release.found, release.args.data, False, release.args.workers)
    checked = release.checked
    return {'weights_sha256': release.weights_sha256,
            'data': {'sha256': checked.digest, 'images': len(checked.samples),
                     'classes': len(release.found.class_to_idx), 'class_map': release.found.class_map},
            'validation_set': asdict(validation_set()),
            'protocols': [asdict(protocol) for protocol in _protocols(release)]}


def _evaluation_step(protocol_name: str) -> str:
    return 'validate-' + protocol_name.replace(' ', '-')


def _validate(release: Release, inputs: Dict[str, Any]) -> Dict[str, Any]:
    args, work = release.args, release.work
    model, _ = create_model_with_weights(release.authors.name, work.weights)
    chosen = _protocols(release)
    by_name = {protocol.name: protocol for protocol in chosen}
    common = {'weights_sha256': inputs['weights_sha256'], 'data': inputs['data']}
    done = {}
    for protocol in chosen:
        recorded = work.finished(_evaluation_step(protocol.name), {**common, 'protocol': asdict(protocol)})
        if recorded is not None:
            print(f'{protocol.name}: measured before on the same weights and images')
            done[protocol.name] = recorded

    def save(evaluation: Dict[str, Any]) -> None:
        protocol = by_name[evaluation['protocol']]
        work.save(_evaluation_step(protocol.name), {**common, 'protocol': asdict(protocol)}, evaluation, 0.)

    evaluations = measure(model, release.checked, chosen, args.batch_size, args.workers, release.device,
                          release.authors.name, done, save)
    command = (f'timm-sknet validate --model {release.authors.name} --weights {work.weights} --input-size '
               f"{','.join(dict.fromkeys(str(p.size) for p in chosen))} --batch-size {args.batch_size} --workers "
               f'{args.workers} --device {release.device} --output {work.results} {args.data}')
    results = results_record(release.authors.name, work.weights, release.weights_sha256, args.data, release.found,
                             release.checked, evaluations, release.device, command)
    with atomic_output(work.results, force=True) as tmp:
        tmp.write_text(json.dumps(results, indent=2) + '\n', encoding='utf-8')
    return {'results_sha256': sha256_file(work.results),
            'top1': {evaluation['protocol']: evaluation['top1'] for evaluation in evaluations}}


def _validate_intact(release: Release, outputs: Dict[str, Any]) -> bool:
    return release.work.results.is_file() and sha256_file(release.work.results) == outputs['results_sha256']


def _validate_report(release: Release, outputs: Dict[str, Any]) -> str:
    tops = ', '.join(f'{name} {top1:.3f}%' for name, top1 in outputs['top1'].items())
    return f'top-1 {tops} on {len(release.checked.samples):,} images; {release.work.results}'


# -- 3. gate -------------------------------------------------------------------------------------------------------
def _gate_inputs(release: Release) -> Dict[str, Any]:
    return {'results_sha256': release.outputs['validate']['results_sha256'],
            'reported': release.authors.reported_top1[GATE_SIZE], 'limit': float(SHORTFALL_LIMIT),
            'accept_shortfall': release.args.accept_shortfall}


def _results(release: Release) -> Dict[str, Any]:
    work = release.work
    return read_results(work.results, work.weights, release.weights_sha256, release.authors.architecture)


def _gate(release: Release, inputs: Dict[str, Any]) -> Dict[str, Any]:
    return check_gate(_results(release), release.authors, release.args.accept_shortfall).to_dict()


def _gate_report(release: Release, outputs: Dict[str, Any]) -> str:
    return Verdict(**outputs).describe()


# -- 4. publish ----------------------------------------------------------------------------------------------------
def _repo_contents(release: Release) -> Dict[str, str]:
    """README.md and config.json as they will be published (model.safetensors is WORK/model.safetensors)."""
    model, metadata = create_model_with_weights(release.authors.name, release.work.weights)
    verdict = Verdict(**release.outputs['gate'])
    card = render_card(model, release.authors, release.args.repo_id, release.weights_sha256, metadata,
                       _results(release), verdict)
    return repo_texts(model, card)


def _publish_inputs(release: Release) -> Dict[str, Any]:
    args = release.args
    files = {name: hashlib.sha256(text.encode('utf-8')).hexdigest() for name, text in _repo_contents(release).items()}
    files['model.safetensors'] = release.weights_sha256
    where = {'output_dir': str(args.output_dir.resolve())} if args.dry_run else {
        'repo_id': args.repo_id, 'revision': args.revision, 'private': args.private, 'endpoint': hf_constants.ENDPOINT}
    return {'files': dict(sorted(files.items())), **where}


def _publish(release: Release, inputs: Dict[str, Any]) -> Dict[str, Any]:
    args, work = release.args, release.work
    contents = _repo_contents(release)
    if args.dry_run:
        written_by = f'{WRITTEN_BY} {work.id}'  # an earlier run of this release may be replaced, nothing else
        manifest = read_manifest(args.output_dir) if args.output_dir.is_dir() else None
        with output_directory(args.output_dir, bool(manifest) and manifest.get('written_by') == written_by,
                              written_by) as staging:
            write_repo_files(staging, work.weights, contents)
        return {'output_dir': str(args.output_dir), 'files': inputs['files']}
    check_repo_weights(release, check_hub(args.repo_id, args.revision, release.token))
    shutil.rmtree(work.repo, ignore_errors=True)
    work.repo.mkdir()
    write_repo_files(work.repo, work.weights, contents, link_weights=True)
    commit = upload(work.repo, args.repo_id, release.token, args.private, args.revision)
    return {'repo_id': args.repo_id, 'commit': commit.oid, 'url': commit.url, 'files': inputs['files']}


def check_repo_weights(release: Release, repo: RepoState) -> None:
    """Refuse, unless ``--replace-weights``, a repo that already holds other weights than these (the same tensors
    with other provenance in their header are these weights)."""
    if repo.weights is None or repo.weights == release.weights_sha256 or release.args.replace_weights:
        return
    args, cache = release.args, release.work.path / 'repo-weights-cache'
    try:
        held = download_weights(args.repo_id, args.revision, cache, release.token)
        if tensors_digest(held) == tensors_digest(release.work.weights):
            return
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    raise UserError(
        f'{release.args.repo_id} already holds other weights (model.safetensors {repo.weights}, these are '
        f'{release.weights_sha256}); pass --replace-weights to publish over them (the Hub keeps the earlier commit), '
        'or choose another --repo-id')


def _publish_intact(release: Release, outputs: Dict[str, Any]) -> bool:
    if 'output_dir' not in outputs:
        return True  # what the Hub holds is checked by the read-back
    folder = Path(outputs['output_dir'])
    return all((folder / name).is_file() and sha256_file(folder / name) == sha256
               for name, sha256 in outputs['files'].items())


def _publish_report(release: Release, outputs: Dict[str, Any]) -> str:
    if 'output_dir' in outputs:
        return f"wrote {', '.join(REPO_FILES)} to {outputs['output_dir']} (--dry-run: nothing uploaded)"
    return f"{outputs['repo_id']} at commit {outputs['commit']}: {outputs['url']}"


# -- 5. read back --------------------------------------------------------------------------------------------------
def _read_back_inputs(release: Release) -> Dict[str, Any]:
    return {'published': release.outputs['publish']}


def _read_back(release: Release, inputs: Dict[str, Any]) -> Dict[str, Any]:
    published, work = inputs['published'], release.work
    if 'output_dir' in published:
        folder = Path(published['output_dir'])
        changed = [name for name, sha256 in published['files'].items() if sha256_file(folder / name) != sha256]
        if changed:
            raise UserError(f'{folder / changed[0]} changed since it was written; run the same command again')
        source = f'local-dir:{folder}'
        model = timm.create_model(source, pretrained=True)
    else:
        source = f"hf-hub:{published['repo_id']}@{published['commit']}"
        model = read_back(published['repo_id'], published['commit'], published['files'], work.read_back_cache,
                          release.token)
        shutil.rmtree(work.read_back_cache, ignore_errors=True)
    installed = timm.create_model(release.authors.name, pretrained=True)
    if not torch.equal(fixed_batch_logits(model), fixed_batch_logits(installed)):
        raise UserError(f"{source} does not compute what the installed {release.authors.name} computes on a fixed "
                        'batch: the published files are not these weights; look at the repo, then run again')
    return {'source': source, 'files': published['files'], 'logits_equal': True}


def _read_back_report(release: Release, outputs: Dict[str, Any]) -> str:
    return (f"{outputs['source']}: {len(outputs['files'])} files with the uploaded sha256; its logits on a fixed batch "
            f'equal those of the installed {release.authors.name}')


STEPS = (
    Step('convert', _convert_inputs, _convert, _convert_report, _convert_intact),
    Step('validate', _validate_inputs, _validate, _validate_report, _validate_intact),
    Step('gate', _gate_inputs, _gate, _gate_report),
    Step('publish', _publish_inputs, _publish, _publish_report, _publish_intact),
    Step('read-back', _read_back_inputs, _read_back, _read_back_report),
)

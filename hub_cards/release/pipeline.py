"""``timm-sknet release``: from the authors' file to a Hub repo whose number anyone can reproduce, in one command
that resumes and cannot publish a wrong or short number by accident.

Everything that can be checked without doing the work is checked first, each in one line: the model's tag holds
the authors' weights, the files exist, the data folder is the whole validation set, the device exists, the Hub
answers and takes the token (``--dry-run`` aside). Then the steps (``steps.py``) run in order, each announced when it
starts and when it ends, or skipped when the work folder shows it finished with the same inputs
(``workdir.py``). The summary at the end is made from the work folder's records alone, so a resumed run ends with
the same summary as an uninterrupted one.
"""
import argparse
import time
from pathlib import Path

import torch
from huggingface_hub import get_token
from timm.data import ImageNetInfo

from timm_sknet.io.errors import UserError
from timm_sknet.weights.loading import authors_weights_of
from timm_sknet.weights.release import CAFFE

from ..data import find_images
from ..publish import check_repo_id
from ..results import validation_set
from ..validate import available_device
from .hub import check_hub
from .steps import STEPS, Release, check_repo_weights
from .workdir import work_folder

__all__ = ['run']


def run(args: argparse.Namespace) -> int:
    authors = authors_weights_of(args.model)
    check_repo_id(args.repo_id, authors)
    _check_input_file(args.source, 'source file')
    if args.prototxt is not None:
        if authors.kind != CAFFE:
            raise UserError(f'--prototxt is for the Caffe release; {authors.name} comes from a PyTorch checkpoint')
        _check_input_file(args.prototxt, 'prototxt')
    if args.dry_run and args.output_dir is None:
        raise UserError('--dry-run writes the repo files to --output-dir DIR; pass one')
    if args.output_dir is not None and not args.dry_run:
        raise UserError('--output-dir is where --dry-run writes the repo files; pass --dry-run too, or leave it out')
    synsets = ImageNetInfo().label_names()
    found = find_images(args.data, len(synsets), synsets, "ImageNet-1k's synsets")
    expected = validation_set()
    if len(found.samples) != expected.images or len(found.class_to_idx) != expected.classes:
        raise UserError(
            f'{args.data} holds {len(found.samples):,} images in {len(found.class_to_idx)} class folders, not the '
            f'{expected.images:,} images in {expected.classes} of {expected.name}; pass the whole validation set')
    device = available_device(args.device or ('cuda' if torch.cuda.is_available() else 'cpu'))
    token = None if args.dry_run else get_token()
    repo = None if args.dry_run else check_hub(args.repo_id, args.revision, token)
    workdir = args.workdir or Path(f'{authors.name}-release')
    with work_folder(workdir) as work:
        release = Release(args, work, authors, found, device, token, repo)
        print(f'release {authors.name} -> {"--output-dir " + str(args.output_dir) if args.dry_run else args.repo_id}; '
              f'work folder {workdir}', flush=True)
        for number, step in enumerate(STEPS, 1):
            _run_step(release, step, f'[{number}/{len(STEPS)}] {step.name}')
            if step.name == 'convert' and repo is not None:
                check_repo_weights(release, repo)  # now, not after the validation: the weights are known
        print(_summary(release))
    return 0


def _check_input_file(path: Path, what: str) -> None:
    if not path.is_file():
        raise UserError(f'{what} {path} does not exist or is not a file')


def _run_step(release: Release, step, label: str) -> None:
    print(f'{label}: started', flush=True)
    start = time.monotonic()
    try:
        inputs = step.inputs(release)
        outputs = release.work.finished(step.name, inputs)
        if outputs is not None and step.intact(release, outputs):
            release.outputs[step.name] = outputs
            print(f'{label}: skipped, finished before with the same inputs: {step.report(release, outputs)}',
                  flush=True)
            return
        outputs = step.run(release, inputs)
        release.work.save(step.name, inputs, outputs, time.monotonic() - start)
    except KeyboardInterrupt:
        raise KeyboardInterrupt(
            f'interrupted (Ctrl-C) in {label}; the finished steps are recorded in {release.work.path}: run the same '
            'command again to resume') from None
    release.outputs[step.name] = outputs
    print(f'{label}: done in {_duration(time.monotonic() - start)}: {step.report(release, outputs)}', flush=True)


def _duration(seconds: float) -> str:
    return f'{seconds:.1f} s' if seconds < 120 else f'{seconds / 60:.1f} min'


def _summary(release: Release) -> str:
    """The release as its records tell it: the same whether or not the run was interrupted and resumed."""
    lines = [f'released {release.authors.name}:']
    for step in STEPS:
        lines.append(f'  {step.name}: {step.report(release, release.outputs[step.name])}')
    return '\n'.join(lines)

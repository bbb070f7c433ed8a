"""``timm-sknet publish``: a Hub repo's model.safetensors, config.json (timm's format) and README.md.

``--dry-run --output-dir DIR`` only writes the three files, and the manifest by which a later ``--force`` replaces
them and nothing else in DIR (``timm_sknet.io.files.output_directory``); otherwise they are uploaded as one commit
(the token comes from ``hf auth login`` or ``$HF_TOKEN``). huggingface_hub drops files that did not change, so
publishing the same files again makes no commit. Uploading a card without validation results needs
``--allow-unvalidated``: such a card says the weights are unvalidated.
"""
import argparse
import contextlib
import json
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any, Dict, Iterator, Optional

import timm
from huggingface_hub import HfApi, get_token
from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import (
    are_progress_bars_disabled, disable_progress_bars, enable_progress_bars, validate_repo_id)
from huggingface_hub.utils import logging as hf_logging
from timm.models import save_for_hf, split_model_name_tag
from torch import nn

from timm_sknet.io.errors import UserError
from timm_sknet.io.files import check_output_directory, output_directory, sha256_file, staging_folder
from timm_sknet.weights.hub import HUB_WEIGHTS_FILENAME
from timm_sknet.weights.release import released_model
from timm_sknet.weights.loading import architecture, create_model_with_weights

from .card import render_card
from .results import read_results

__all__ = ['REPO_FILES', 'WRITTEN_BY', 'run']

REPO_FILES = (HUB_WEIGHTS_FILENAME, 'config.json', 'README.md')
WRITTEN_BY = 'timm-sknet publish'  # in the manifest of an --output-dir: --force replaces only such a folder's files


def run(args: argparse.Namespace) -> int:
    arch = architecture(args.model)
    released_model(arch)
    _check_repo_id(args.repo_id, arch)
    if args.dry_run and args.output_dir is None:
        raise UserError('--dry-run writes the repo files to --output-dir DIR; pass one')
    if not args.dry_run and args.results is None and not args.allow_unvalidated:
        raise UserError(
            'no --results: the card would say these weights are unvalidated; measure them with timm-sknet validate '
            'and pass --results, or pass --allow-unvalidated to upload an unvalidated card')
    if args.output_dir is not None:
        check_output_directory(args.output_dir, args.force, WRITTEN_BY)
    token = None if args.dry_run else get_token()
    if not args.dry_run and not token:
        raise UserError('no Hugging Face token: log in with `hf auth login` or set HF_TOKEN (or pass --dry-run)')

    model, metadata = create_model_with_weights(args.model, args.weights)
    weights_sha256 = sha256_file(args.weights)
    results = read_results(args.results, args.weights, weights_sha256, arch) if args.results else None
    card = render_card(model, arch, args.repo_id, weights_sha256, metadata, results)

    if args.dry_run:
        with output_directory(args.output_dir, args.force, WRITTEN_BY) as staging:
            write_repo_files(staging, model, args.weights, card)
        print(f"wrote {', '.join(REPO_FILES)} to {args.output_dir}")
        return 0
    with contextlib.ExitStack() as stack:
        if args.output_dir is not None:
            directory = stack.enter_context(output_directory(args.output_dir, args.force, WRITTEN_BY))
        else:
            directory = stack.enter_context(staging_folder(Path(tempfile.gettempdir())))
        write_repo_files(directory, model, args.weights, card)
        print(upload(directory, args.repo_id, token, args.private, args.revision))
    return 0


def write_repo_files(directory: Path, model: nn.Module, weights: Path, card: str) -> None:
    """The Hub repo's files: the weights byte for byte (their sha256 is what results refer to), config, card."""
    shutil.copyfile(weights, directory / HUB_WEIGHTS_FILENAME)
    (directory / 'config.json').write_text(json.dumps(hub_config(model), indent=2), encoding='utf-8')
    (directory / 'README.md').write_text(card, encoding='utf-8')


def hub_config(model: nn.Module) -> Dict[str, Any]:
    """config.json as timm writes it for its own Hub repos, which ``hf-hub:`` and transformers' timm wrapper read."""
    with staging_folder(Path(tempfile.gettempdir())) as scratch:
        # timm's public export writes the weights too; they are discarded, the repo gets the converted file as is.
        # Naming the file keeps timm on safetensors: without it a missing file would send it to pytorch_model.bin.
        save_for_hf(model, scratch, model_config={'pretrained_cfg': {'hf_hub_filename': HUB_WEIGHTS_FILENAME}},
                    safe_serialization=True)
        config = json.loads((scratch / 'config.json').read_text(encoding='utf-8'))
    # model_args repeats what the root and pretrained_cfg already say; timm's own Hub configs have none, and
    # transformers' wrapper, which passes num_classes itself, fails on a second one ("multiple values").
    implied = {'num_classes': config['num_classes'], 'in_chans': config['pretrained_cfg']['input_size'][0],
               'global_pool': config.get('global_pool')}
    model_args = {k: v for k, v in config.pop('model_args', {}).items() if k not in implied or implied[k] != v}
    if model_args:
        config['model_args'] = model_args
    return config


def upload(directory: Path, repo_id: str, token: str, private: bool, revision: Optional[str]) -> str:
    """Create the repo (and branch) if needed and upload the repo files as one commit; returns a one-line report."""
    api = HfApi(token=token)
    with _quiet_hub_client():
        try:
            api.create_repo(repo_id, private=private, exist_ok=True)
            if revision:
                api.create_branch(repo_id, branch=revision, exist_ok=True)
            head = api.repo_info(repo_id, revision=revision).sha
            commit = api.upload_folder(
                repo_id=repo_id, folder_path=directory, allow_patterns=list(REPO_FILES), revision=revision,
                parent_commit=head, commit_message='Publish model.safetensors, config.json and the model card')
            failure = ''
        except Exception as e:  # noqa: BLE001  (the Hub's HTTP client, hence its errors, differs across versions)
            failure = _reason(e)
    # raised here, not in the except block, so the failed call's frames (and their progress bars) are gone first
    if failure:
        raise UserError(
            f'upload to {repo_id} at {api.endpoint} failed: {failure}; the files go in one commit, so the repo '
            'holds all of them or none: run the command again once the cause is fixed')
    if commit.oid == head:
        return f'{repo_id} already holds these files; no commit made ({head})'
    return f'published {repo_id}: {commit.commit_url}'


@contextlib.contextmanager
def _quiet_hub_client() -> Iterator[None]:
    """huggingface_hub's retry and "no files modified" warnings off (this command reports in its own line), and its
    upload progress bars only on a terminal."""
    verbosity, bars_disabled = hf_logging.get_verbosity(), are_progress_bars_disabled()
    hf_logging.set_verbosity_error()
    if not sys.stderr.isatty():
        disable_progress_bars()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if not bars_disabled:
            enable_progress_bars()


def _reason(error: Exception) -> str:
    """The error's first line, with the Hub's reason (e.g. 'Invalid credentials in Authorization header'), which
    huggingface_hub puts on a later line."""
    message = str(error).strip().splitlines()[0] if str(error).strip() else ''
    server_message = ' '.join((getattr(error, 'server_message', None) or '').split())
    if server_message and server_message not in message:
        message += f' ({server_message})'
    return f'{type(error).__name__}: {message}'


def _check_repo_id(repo_id: str, arch: str) -> None:
    try:
        validate_repo_id(repo_id)
    except HFValidationError as e:
        raise UserError(f'invalid --repo-id {repo_id!r}: {str(e).splitlines()[0]}') from None
    if repo_id.count('/') != 1:
        raise UserError(f'--repo-id {repo_id!r} must be NAMESPACE/NAME, e.g. timm-sknet/{arch}.caffe_in1k')
    # timm builds the architecture a repo is named after: other weights there would fail to load
    named_arch, _ = split_model_name_tag(repo_id.split('/')[1])
    if timm.is_model(named_arch) and named_arch != arch:
        raise UserError(f'--repo-id {repo_id} is named for {named_arch} but --model is {arch}; name it {arch}.<tag>')

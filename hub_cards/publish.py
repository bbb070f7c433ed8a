"""``timm-sknet publish``: a Hub repo's model.safetensors, config.json (timm's format) and README.md.

``--dry-run --output-dir DIR`` only writes the three files, and the manifest by which a later ``--force`` replaces
them and nothing else in DIR (``timm_sknet.io.files.output_directory``); otherwise they are uploaded as one commit
(the token comes from ``hf auth login`` or ``$HF_TOKEN``). huggingface_hub drops files that did not change, so
publishing the same files again makes no commit. Uploading a card without validation results needs
``--allow-unvalidated``: such a card says the weights are unvalidated. Results pass the gate first (``gate.py``): a
top-1 at 224 more than half a point below the authors' is published only with ``--accept-shortfall REASON``.
"""
import argparse
import contextlib
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any, Dict, Iterator, NamedTuple, Optional

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
from timm_sknet.weights.loading import authors_weights_of, create_model_with_weights
from timm_sknet.weights.release import AuthorsWeights

from .card import render_card
from .gate import check_gate
from .results import read_results

__all__ = ['REPO_FILES', 'WRITTEN_BY', 'Commit', 'check_repo_id', 'hub_config', 'quiet_hub_client', 'reason', 'repo_texts',
           'run', 'upload', 'write_repo_files']

REPO_FILES = (HUB_WEIGHTS_FILENAME, 'config.json', 'README.md')
WRITTEN_BY = 'timm-sknet publish'  # in the manifest of an --output-dir: --force replaces only such a folder's files


def run(args: argparse.Namespace) -> int:
    authors = authors_weights_of(args.model)
    check_repo_id(args.repo_id, authors)
    if args.dry_run and args.output_dir is None:
        raise UserError('--dry-run writes the repo files to --output-dir DIR; pass one')
    if args.accept_shortfall is not None and args.results is None:
        raise UserError('--accept-shortfall applies to the results a card quotes; pass --results too')
    if not args.dry_run and args.results is None and not args.allow_unvalidated:
        raise UserError(
            'no --results: the card would say these weights are unvalidated; measure them with timm-sknet validate '
            'and pass --results, or pass --allow-unvalidated to upload an unvalidated card')
    if args.output_dir is not None:
        check_output_directory(args.output_dir, args.force, WRITTEN_BY)
    token = None if args.dry_run else get_token()
    if not args.dry_run and not token:
        raise UserError('no Hugging Face token: log in with `hf auth login` or set HF_TOKEN (or pass --dry-run)')

    model, metadata = create_model_with_weights(authors.name, args.weights)
    weights_sha256 = sha256_file(args.weights)
    results = read_results(args.results, args.weights, weights_sha256, authors.architecture) if args.results else None
    verdict = check_gate(results, authors, args.accept_shortfall) if results else None
    card = render_card(model, authors, args.repo_id, weights_sha256, metadata, results, verdict)

    if args.dry_run:
        with output_directory(args.output_dir, args.force, WRITTEN_BY) as staging:
            write_repo_files(staging, args.weights, repo_texts(model, card))
        print(f"wrote {', '.join(REPO_FILES)} to {args.output_dir}")
        return 0
    with contextlib.ExitStack() as stack:
        if args.output_dir is not None:
            directory = stack.enter_context(output_directory(args.output_dir, args.force, WRITTEN_BY))
        else:
            directory = stack.enter_context(staging_folder(Path(tempfile.gettempdir())))
        write_repo_files(directory, args.weights, repo_texts(model, card))
        commit = upload(directory, args.repo_id, token, args.private, args.revision)
    print(f'published {args.repo_id}: {commit.url}' if commit.new else
          f'{args.repo_id} already holds these files; no commit made ({commit.oid})')
    return 0


def repo_texts(model: nn.Module, card: str) -> Dict[str, str]:
    """The repo's text files: config.json and the card."""
    return {'config.json': json.dumps(hub_config(model), indent=2), 'README.md': card}


def write_repo_files(directory: Path, weights: Path, texts: Dict[str, str], link_weights: bool = False) -> None:
    """The Hub repo's files: the weights byte for byte (their sha256 is what results refer to), and ``texts``. With
    ``link_weights`` (a folder of the command's own beside the weights) the weights are a hard link, not a copy."""
    target = directory / HUB_WEIGHTS_FILENAME
    if not (link_weights and _hard_linked(weights, target)):
        shutil.copyfile(weights, target)
    for name, text in texts.items():
        (directory / name).write_text(text, encoding='utf-8')


def _hard_linked(source: Path, target: Path) -> bool:
    """Whether ``target`` could be made a hard link to ``source`` (not across file systems, nor on one without)."""
    try:
        os.link(source, target)
    except OSError:
        return False
    return True


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


class Commit(NamedTuple):
    """What an upload left the repo at: the commit holding the files, and whether the upload made it."""
    oid: str
    url: str
    new: bool


def upload(directory: Path, repo_id: str, token: str, private: bool, revision: Optional[str]) -> Commit:
    """Create the repo (and branch) if needed and upload the repo files as one commit (none when the repo already
    holds them, as huggingface_hub drops unchanged files)."""
    api = HfApi(token=token)
    with quiet_hub_client():
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
            failure = reason(e)
    # raised here, not in the except block, so the failed call's frames (and their progress bars) are gone first
    if failure:
        raise UserError(
            f'upload to {repo_id} at {api.endpoint} failed: {failure}; the files go in one commit, so the repo '
            'holds all of them or none: run the command again once the cause is fixed')
    return Commit(commit.oid, commit.commit_url, commit.oid != head)


@contextlib.contextmanager
def quiet_hub_client() -> Iterator[None]:
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


def reason(error: Exception) -> str:
    """The error's first line, with the Hub's reason (e.g. 'Invalid credentials in Authorization header'), which
    huggingface_hub puts on a later line."""
    message = str(error).strip().splitlines()[0] if str(error).strip() else ''
    server_message = ' '.join((getattr(error, 'server_message', None) or '').split())
    if server_message and server_message not in message:
        message += f' ({server_message})'
    return f'{type(error).__name__}: {message}'


def check_repo_id(repo_id: str, authors: AuthorsWeights) -> None:
    """A repo id the Hub accepts, and not named for another architecture (timm would build that one)."""
    try:
        validate_repo_id(repo_id)
    except HFValidationError as e:
        raise UserError(f"invalid --repo-id '{repo_id}': {str(e).splitlines()[0]}") from None
    if repo_id.count('/') != 1:
        raise UserError(f"--repo-id '{repo_id}' must be NAMESPACE/NAME, e.g. --repo-id timm-sknet/{authors.name}")
    named_arch, _ = split_model_name_tag(repo_id.split('/')[1])
    if timm.is_model(named_arch) and named_arch != authors.architecture:
        raise UserError(f'--repo-id {repo_id} is named for {named_arch} but --model is {authors.architecture}; name '
                        f'it {authors.name}')

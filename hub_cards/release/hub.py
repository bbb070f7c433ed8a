"""What a release asks of the Hub: whether it answers and takes the token, what the repo holds now, and, once
published, reading back what it holds through the Hub API into a fresh cache."""
import shutil
from pathlib import Path
from typing import Dict, NamedTuple, Optional

import timm
import torch
from huggingface_hub import HfApi, hf_hub_download
from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError, RevisionNotFoundError
from torch import nn

from timm_sknet.io.errors import UserError
from timm_sknet.io.files import sha256_file

from ..publish import quiet_hub_client, reason

__all__ = ['RepoState', 'check_hub', 'download_weights', 'fixed_batch_logits', 'read_back']

WEIGHTS_FILE = 'model.safetensors'


class RepoState(NamedTuple):
    exists: bool
    weights: Optional[str]  # the sha256 of the model.safetensors the repo holds (its git blob if not in LFS), or None


def check_hub(repo_id: str, revision: Optional[str], token: Optional[str]) -> RepoState:
    """Before any work: the Hub answers, takes ``token``, and what ``repo_id`` holds (at ``revision``, or at its
    main branch for a branch the release will create)."""
    if not token:
        raise UserError('no Hugging Face token: log in with `hf auth login` or set HF_TOKEN (or pass --dry-run)')
    api = HfApi(token=token)
    failure = ''
    with quiet_hub_client():
        try:
            api.whoami()
        except HfHubHTTPError as e:
            status = getattr(e.response, 'status_code', None)
            failure = (f'the Hub at {api.endpoint} refuses the token ({reason(e)}); log in again with `hf auth '
                       'login` or set HF_TOKEN to a token that may write to ' + repo_id) if status == 401 else \
                f'the Hub at {api.endpoint} answered {reason(e)}; run the same command again later'
        except Exception as e:  # noqa: BLE001  (the HTTP client's connection errors differ across versions)
            failure = (f'cannot reach the Hub at {api.endpoint} ({reason(e)}); check the network (and HF_ENDPOINT), '
                       'then run the same command again')
    if failure:
        raise UserError(f'{failure}; nothing was done')
    with quiet_hub_client():
        try:
            info = api.model_info(repo_id, revision=revision, files_metadata=True)
        except RepositoryNotFoundError:
            return RepoState(False, None)
        except RevisionNotFoundError:  # a new branch starts from main: what main holds is what it will hold
            info = api.model_info(repo_id, files_metadata=True)
    for sibling in info.siblings or []:
        if sibling.rfilename == WEIGHTS_FILE:
            return RepoState(True, sibling.lfs.sha256 if sibling.lfs else f'git blob {sibling.blob_id}')
    return RepoState(True, None)


def download_weights(repo_id: str, revision: Optional[str], cache: Path, token: Optional[str]) -> Path:
    """The repo's model.safetensors at ``revision`` (or main, for a branch not made yet), downloaded into ``cache``."""
    failure = ''
    with quiet_hub_client():
        try:
            try:
                return Path(hf_hub_download(repo_id, WEIGHTS_FILE, revision=revision, cache_dir=cache, token=token))
            except RevisionNotFoundError:
                return Path(hf_hub_download(repo_id, WEIGHTS_FILE, cache_dir=cache, token=token))
        except Exception as e:  # noqa: BLE001  (as check_hub)
            failure = reason(e)
    raise UserError(f'cannot download the model.safetensors {repo_id} holds, to compare it with these weights '
                    f'({failure}); run the same command again later')


def read_back(repo_id: str, commit: str, uploaded: Dict[str, str], cache: Path, token: Optional[str]) -> nn.Module:
    """Download every uploaded file at ``commit`` through the Hub API into the empty ``cache`` and check its sha256
    against ``uploaded`` (name -> sha256); return the model ``hf-hub:`` builds from that snapshot."""
    shutil.rmtree(cache, ignore_errors=True)  # fresh: nothing of an earlier, interrupted read-back counts
    failure = ''
    with quiet_hub_client():
        try:
            for name, sha256 in uploaded.items():
                found = sha256_file(hf_hub_download(repo_id, name, revision=commit, cache_dir=cache, token=token))
                if found != sha256:
                    failure = f'{name} of {repo_id} at {commit} has sha256 {found}, not the uploaded {sha256}'
                    break
            model = None if failure else timm.create_model(
                f'hf-hub:{repo_id}@{commit}', pretrained=True, cache_dir=cache).eval()
        except Exception as e:  # noqa: BLE001  (as check_hub)
            failure = f'reading {repo_id} at {commit} back from the Hub failed ({reason(e)})'
    if failure:
        raise UserError(f'{failure}; the repo does not hold what was published: look at it on the Hub, then run the '
                        'same command again')
    return model


def fixed_batch_logits(model: nn.Module) -> torch.Tensor:
    """The logits of a fixed batch (seeded, 2 x 3 x 224 x 224) on the CPU: equal weights give equal logits."""
    batch = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        return model.to('cpu').eval()(batch)

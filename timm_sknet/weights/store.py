"""Converted weights on disk: the provenance convert-caffe writes into their header, and the local store.

The store is where ``pretrained=True`` looks before the Hub: ``$TIMM_SKNET_HOME/<model>.<tag>/model.safetensors``,
by default ``timm-sknet`` in the user cache directory (``$XDG_CACHE_HOME``, else ``~/.cache``).
``convert-caffe CAFFEMODEL --model sknet50 --install`` writes there (``convert-pytorchinsight`` likewise);
``timm-sknet installed`` lists it.
Nothing here imports torch or timm, so convert-caffe stays light.
"""
import os
from pathlib import Path
from typing import Dict, List, NamedTuple

from safetensors import SafetensorError, safe_open

from ..io.errors import UserError
from ..io.files import check_output_file
from .hub import HUB_WEIGHTS_FILENAME
from .release import RELEASED_MODELS

STORE_ENV = 'TIMM_SKNET_HOME'
# Header metadata written by convert-caffe; the VERIFY_KEYS only when it ran with --verify.
PROVENANCE_KEYS = (
    'source_file', 'source_size', 'source_sha256', 'model_name',
    'timm_sknet_version', 'timm_version', 'torch_version',
)
VERIFY_KEYS = (
    'verify_runtime', 'verify_images', 'verify_max_abs_diff', 'verify_max_rel_diff', 'verify_top5_agreement',
)


def read_metadata(weights: Path) -> Dict[str, str]:
    """The safetensors header metadata (empty when there is none)."""
    if not weights.is_file():
        raise UserError(f'weights file {weights} does not exist; convert the caffemodel with convert-caffe first')
    try:
        with safe_open(str(weights), framework='np') as f:
            return dict(f.metadata() or {})
    except (SafetensorError, OSError) as e:
        raise UserError(
            f'{weights} is not a readable safetensors file ({e}); pass the output of convert-caffe') from None


def store_dir() -> Path:
    """The store's root: ``$TIMM_SKNET_HOME``, else ``timm-sknet`` under ``$XDG_CACHE_HOME`` or ``~/.cache``."""
    home = os.environ.get(STORE_ENV)
    if home:
        return Path(home).expanduser()
    return Path(os.environ.get('XDG_CACHE_HOME') or Path.home() / '.cache') / 'timm-sknet'


def installed_path(model_name_tag: str) -> Path:
    """Where the store keeps the weights of one pretrained tag, e.g. ``sknet50.caffe_in1k``."""
    return store_dir() / model_name_tag / HUB_WEIGHTS_FILENAME


def install_target(model_name_tag: str, force: bool) -> Path:
    """Where ``convert-caffe --install`` writes ``model_name_tag``; an installed copy is replaced only when forced.
    The rules of any output file apply (``io.files.check_output_file``); the caller creates the folder."""
    target = installed_path(model_name_tag)
    if target.is_file() and not force:
        raise UserError(f'{model_name_tag} is already installed ({target}); pass --force to replace it')
    return check_output_file(target, force, parent_created_later=True)


class InstalledWeights(NamedTuple):
    name: str  # <model>.<tag>
    path: Path
    metadata: Dict[str, str]
    error: str  # why the file could not be read; empty when it could


def installed_weights() -> List[InstalledWeights]:
    """Every ``<model>.<tag>/model.safetensors`` in the store, with its header metadata, sorted by name."""
    root = store_dir()
    found = []
    for path in sorted(root.glob(f'*/{HUB_WEIGHTS_FILENAME}')) if root.is_dir() else ():
        try:
            found.append(InstalledWeights(path.parent.name, path, read_metadata(path), ''))
        except UserError as e:
            found.append(InstalledWeights(path.parent.name, path, {}, str(e)))
    return found


def describe(weights: InstalledWeights) -> str:
    """The store listing's lines for one installed copy: its file, then its provenance (with the epoch and accuracy
    a training checkpoint records) and, for the Caffe release, the verify figures."""
    lines = [f'{weights.name}  {weights.path}  ({weights.path.stat().st_size:,} bytes)']
    meta = weights.metadata
    if weights.error:
        lines.append(f'  unreadable: {weights.error}')
    elif not all(k in meta for k in PROVENANCE_KEYS):
        lines.append('  no convert-caffe provenance in its header')
    else:
        lines.append(
            f"  converted from {meta['source_file']} ({int(meta['source_size']):,} bytes, sha256 "
            f"{meta['source_sha256']}) for {meta['model_name']} by timm-sknet {meta['timm_sknet_version']}")
        recorded = [f"{key} {meta[f'source_{key}']}" for key in ('epoch', 'acc', 'best_acc') if f'source_{key}' in meta]
        if recorded:
            lines.append(f"  the checkpoint records {', '.join(recorded)}")
        if all(k in meta for k in VERIFY_KEYS):
            lines.append(
                f"  verified against {meta['verify_runtime']} on {meta['verify_images']} images: max |logit diff| "
                f"{meta['verify_max_abs_diff']}, relative {meta['verify_max_rel_diff']}, same top-5 on "
                f"{meta['verify_top5_agreement']}")
        elif meta['model_name'] in RELEASED_MODELS:
            lines.append('  not verified (converted without --verify)')
    return '\n'.join(lines)

"""Converted weights on disk: the provenance convert-caffe writes into their header, and the local store.

The store is where ``pretrained=True`` looks before the Hub: ``$TIMM_SKNET_HOME/<model>.<tag>/model.safetensors``,
by default ``timm-sknet`` in the user cache directory (``$XDG_CACHE_HOME``, else ``~/.cache``).
``convert-caffe CAFFEMODEL --model sknet50 --install`` (``convert-pytorchinsight`` likewise) writes there
(``install_weights``), together with ``install.json``, the record of what was installed: the slot folder appears
with both files or not at all. ``timm-sknet installed`` lists it. Nothing here imports torch or timm, so
convert-caffe stays light.
"""
import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Dict, Iterator, List, NamedTuple

from safetensors import SafetensorError, safe_open

from ..io.errors import UserError
from ..io.files import (
    TEMP_PREFIX, TEMP_SUFFIX, check_name, check_output_file, current_umask, file_lock, interrupts_deferred, lock_path,
    move_no_replace, sha256_file, write_error)
from .hub import HUB_WEIGHTS_FILENAME
from .release import RELEASED_MODELS

STORE_ENV = 'TIMM_SKNET_HOME'
INSTALL_RECORD = 'install.json'  # {"sha256", "size" of model.safetensors, "model": "<model>.<tag>", "installed_by"}
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
    target = check_name(installed_path(model_name_tag))
    if target.is_file() and not force:
        raise UserError(f'{model_name_tag} is already installed ({target}); pass --force to replace it')
    return check_output_file(target, force, parent_created_later=True)


@contextlib.contextmanager
def install_weights(model_name_tag: str, force: bool, installed_by: str) -> Iterator[Path]:
    """Yield the path to write ``model.safetensors`` to; once written, ``<store>/<model_name_tag>/`` appears in one
    step holding it and ``install.json``, or on any error (Ctrl-C included) nothing new is left in the store.

    Installs of one slot take its ``filelock`` in turn, so two of them cannot both win: without ``force`` the
    second is refused in one line and the first one's copy stays; with ``force`` a slot holding only these two
    files is replaced whole, and one holding anything else is never touched.
    """
    root = store_dir()
    slot = root / model_name_tag
    weights_target = slot / HUB_WEIGHTS_FILENAME
    made = []  # the folders of the store's root this call creates: removed again when it fails
    staging = None
    installed = False
    try:
        with interrupts_deferred():
            for folder in reversed([root, *root.parents]):
                try:
                    folder.mkdir()
                    made.append(folder)
                except FileExistsError:
                    pass
            staging = Path(tempfile.mkdtemp(prefix=TEMP_PREFIX, suffix=TEMP_SUFFIX, dir=root))
        weights = staging / HUB_WEIGHTS_FILENAME
        try:
            yield weights
        except OSError as e:
            raise write_error(weights_target, e) from None
        record = {'sha256': sha256_file(weights), 'size': weights.stat().st_size, 'model': model_name_tag,
                  'installed_by': installed_by}
        (staging / INSTALL_RECORD).write_text(json.dumps(record, indent=1) + '\n', encoding='utf-8')
        for path in (weights, staging / INSTALL_RECORD):
            with open(path, 'rb') as f:
                os.fsync(f.fileno())
        os.chmod(staging, 0o777 & ~current_umask())  # mkdtemp's 0700 would hide the copy from other users
        os.chmod(weights, 0o666 & ~current_umask())  # safetensors creates its file 0600
        with file_lock(lock_path(slot), f'{model_name_tag} into the store {root}'):
            _check_slot(slot, force)  # again, with the lock held: another install may have finished meanwhile
            with interrupts_deferred():
                if slot.exists():
                    old = Path(tempfile.mkdtemp(prefix=TEMP_PREFIX, suffix=TEMP_SUFFIX, dir=root))
                    os.replace(slot, old)  # onto the empty folder just made, in one step
                    os.replace(staging, slot)
                    shutil.rmtree(old)
                else:
                    move_no_replace(staging, slot)
                installed = True
    except FileExistsError:
        raise UserError(f'{model_name_tag} was installed by another process while this one ran ({slot}); it was '
                        'left as it is; pass --force to replace it') from None
    except OSError as e:
        raise write_error(weights_target, e) from None
    finally:
        with interrupts_deferred():
            if staging is not None:
                shutil.rmtree(staging, ignore_errors=True)
            for folder in reversed(made if not installed else []):
                with contextlib.suppress(OSError):
                    folder.rmdir()  # only while empty: nothing another process put there meanwhile goes


def _check_slot(slot: Path, force: bool) -> None:
    """A slot is replaced only with ``force``, and only while it holds nothing but what an install writes."""
    if not slot.exists():
        return
    if not force:
        raise UserError(f'{slot.name} is already installed ({slot / HUB_WEIGHTS_FILENAME}); pass --force to replace '
                        'it')
    others = sorted(set(os.listdir(slot)) - {HUB_WEIGHTS_FILENAME, INSTALL_RECORD}) if slot.is_dir() else [slot.name]
    if others:
        raise UserError(f'{slot} holds files an install did not write (e.g. {others[0]}); --force replaces only '
                        'installed copies: move them out of the store first')


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
        if path.parent.name.startswith(TEMP_PREFIX):  # an install being written, or a replaced copy going
            continue
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

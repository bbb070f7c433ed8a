"""Converted weights on disk: the provenance convert-caffe writes into their header, and the local store.

The store is where ``pretrained=True`` looks before the Hub: ``$TIMM_SKNET_HOME/<model>.<tag>/model.safetensors``,
by default ``timm-sknet`` in the user cache directory (``$XDG_CACHE_HOME``, else ``~/.cache``).
``convert-caffe CAFFEMODEL --model sknet50 --install`` (``convert-pytorchinsight`` likewise) writes there
(``install_weights``), together with ``install.json``, the record of what was installed (the file's sha256 and
size): the slot folder appears with both files or not at all. ``timm-sknet installed`` lists and re-checks it.

The store knows what it holds: ``installed_problem`` finds a copy that changed since install (size, sha256), is
damaged (truncated, garbage, not safetensors, a folder or a link to nothing in its place), does not fit its model
(missing, extra or mis-shaped tensors) or holds non-finite values; ``pretrained=True`` and ``timm-sknet installed`` both ask it, and ``mend`` says what fixes it.
Nothing here imports torch or timm, so convert-caffe stays light.
"""
import contextlib
import hashlib
import json
import os
import re
import struct
from collections import Counter
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Mapping, NamedTuple, Optional, Sequence, Tuple

import numpy as np
from safetensors import SafetensorError, safe_open

from ..io.errors import UserError, shell_word
from ..io.files import (
    TEMP_PREFIX, check_name, check_writable, current_umask, file_lock, interrupts_deferred, lock_path,
    move_no_replace, replace_folder, sha256_file, staging_folder, write_error)
from .hub import HUB_WEIGHTS_FILENAME
from .release import PYTORCHINSIGHT_TAG, RELEASED_MODELS

STORE_ENV = 'TIMM_SKNET_HOME'
INSTALL_RECORD = 'install.json'  # {"sha256", "size" of model.safetensors, "model": "<model>.<tag>", "installed_by"}
# safetensors dtypes that can hold a NaN or an infinity, as numpy reads them; bfloat16 by its bits (numpy has none)
_FLOAT_DTYPES = {'F16': np.float16, 'F32': np.float32, 'F64': np.float64}
_BF16_EXPONENT = 0x7F80  # all ones: an infinity or a NaN
_FLOAT_NAMES = {'F64': 'float64', 'F32': 'float32', 'F16': 'float16', 'BF16': 'bfloat16', 'F8_E4M3': 'float8_e4m3fn',
                'F8_E5M2': 'float8_e5m2'}  # safetensors' floating dtypes, by torch's names
# Header metadata written by convert-caffe; the VERIFY_KEYS only when it ran with --verify.
PROVENANCE_KEYS = (
    'source_file', 'source_size', 'source_sha256', 'model_name',
    'timm_sknet_version', 'timm_version', 'torch_version',
)
VERIFY_KEYS = (
    'verify_runtime', 'verify_images', 'verify_max_abs_diff', 'verify_max_rel_diff', 'verify_top5_agreement',
)


def check_safetensors_path(path: Path) -> Path:
    """Refuse a safetensors path that is not UTF-8 (a name the OS accepts): safetensors, and so timm, opens only
    UTF-8 paths; return the path."""
    try:
        os.fsencode(path).decode('utf-8')
    except UnicodeDecodeError:
        raise UserError(f'{path} is not a UTF-8 path, and safetensors (so timm) opens only those; rename it, or the '
                        'folder on its way that is not UTF-8') from None
    return path


def read_metadata(weights: Path) -> Dict[str, str]:
    """The safetensors header metadata (empty when there is none)."""
    if not weights.is_file():
        raise UserError(f'weights file {weights} does not exist; convert the caffemodel with convert-caffe first')
    check_safetensors_path(weights)
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
    """Where ``convert-caffe --install`` writes ``model_name_tag``, checked before any work: an installed copy (a
    damaged one too) is replaced only when forced, and only while its slot holds nothing else (``_check_slot``);
    the store must be writable. ``install_weights`` makes the folders."""
    target = check_safetensors_path(check_name(installed_path(model_name_tag)))
    _check_slot(target.parent, force)
    check_writable(store_dir(), target)
    return target


@contextlib.contextmanager
def install_weights(model_name_tag: str, force: bool, installed_by: str) -> Iterator[Path]:
    """Yield the path to write ``model.safetensors`` to; once written, ``<store>/<model_name_tag>/`` appears in one
    step holding it and ``install.json``, or on any error (Ctrl-C included) nothing new is left in the store.

    Installs of one slot take its lock (``io.locks.file_lock``, in ``<store>/.locks``) in turn, so two of them
    cannot both win: without ``force`` the second is refused in one line and the first one's copy stays; with
    ``force`` a slot holding only these two files is replaced whole, in one step where the file system can swap two
    folders (``files.replace_folder``), and one holding anything else is never touched. An install killed (SIGKILL)
    leaves its temporary folder in the store, which the next install removes and ``timm-sknet installed`` lists.
    """
    root = store_dir()
    slot = root / model_name_tag
    weights_target = slot / HUB_WEIGHTS_FILENAME
    made = []  # the folders of the store's root this call creates: removed again when it fails
    installed = False
    try:
        with interrupts_deferred():
            for folder in reversed([root, *root.parents]):
                try:
                    folder.mkdir()
                    made.append(folder)
                except FileExistsError:
                    pass
        with staging_folder(root, output=weights_target) as staging:
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
            os.chmod(weights, 0o666 & ~current_umask())  # safetensors creates its file 0600
            lock = lock_path(slot)
            lock.parent.mkdir(exist_ok=True)
            with file_lock(lock, f'{model_name_tag} into the store {root}'):
                _check_slot(slot, force)  # again, with the lock held: another install may have finished meanwhile
                with interrupts_deferred():
                    if slot.exists():
                        replace_folder(staging, slot)
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
            for folder in reversed(made if not installed else []):
                with contextlib.suppress(OSError):
                    folder.rmdir()  # only while empty: nothing another process put there meanwhile goes


def _check_slot(slot: Path, force: bool) -> None:
    """A slot is replaced only with ``force``, and only while it holds nothing but what an install writes."""
    if not os.path.lexists(slot):
        return
    if not force:
        raise UserError(f'{slot.name} is already installed ({slot / HUB_WEIGHTS_FILENAME}); pass --force to replace '
                        'it')
    others = _not_installed(slot)
    if others:
        raise UserError(f'{slot} holds files an install did not write (e.g. {others[0]}); --force replaces only '
                        'installed copies: move them out of the store first')


def _not_installed(slot: Path) -> List[str]:
    """What in ``slot`` no install wrote; a folder in the place of an installed file counts by what it holds (an
    empty one is just damage, which ``--force`` mends)."""
    if not os.path.lexists(slot):
        return []
    if not slot.is_dir() or slot.is_symlink():
        return [slot.name]
    others = sorted(set(os.listdir(slot)) - {HUB_WEIGHTS_FILENAME, INSTALL_RECORD})
    for name in (HUB_WEIGHTS_FILENAME, INSTALL_RECORD):
        if (slot / name).is_dir() and not (slot / name).is_symlink():
            others += [f'{name}/{inner}' for inner in sorted(os.listdir(slot / name))]
    return others


class InstalledWeightsError(UserError):
    """An installed copy that changed since install, is damaged, does not fit its model or holds non-finite values;
    the message names the file, what is wrong and the command that mends it."""


def install_record_path(model_name_tag: str) -> Path:
    """The install record beside an installed copy: its sha256 and size when ``convert-caffe --install`` wrote it."""
    return store_dir() / model_name_tag / INSTALL_RECORD


def read_install_record(model_name_tag: str) -> Optional[Dict]:
    """The copy's install record; None when there is none (installed before records were kept), and an empty dict
    when it cannot be read."""
    path = install_record_path(model_name_tag)
    if not os.path.lexists(path):
        return None
    if not path.is_file():  # a folder or a FIFO in its place: reading it fails, or waits for ever
        return {}
    try:
        record = json.loads(path.read_text(encoding='utf-8'))
        if isinstance(record['sha256'], str) and isinstance(record['size'], int) and isinstance(record['model'], str):
            return record
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError):
        pass
    return {}  # a record that says nothing: the copy cannot be shown to be what was installed


def installed_problem(model_name_tag: str, path: Path, expected_shapes: Mapping[str, Sequence[int]]) -> str:
    """What is wrong with the installed copy ``path`` of ``model_name_tag``, empty when nothing is.

    Damaged (truncated, garbage, not safetensors), not fitting ``expected_shapes`` (the tensors of the model it is
    installed for) or non-finite values, each with a change since install if ``install.json`` shows one (size, then
    sha256); else just that change. A copy without a record is checked for all but the change. The whole file is
    read twice (sha256, values): for SKNet-50 about 0.2 s from the page cache.
    """
    not_a_file = _not_a_regular_file(path)
    if not_a_file:
        return f'{path.name} is {not_a_file}, not a safetensors file'
    record = read_install_record(model_name_tag)
    size = path.stat().st_size
    if record == {}:
        return f'its install record {install_record_path(model_name_tag)} is unreadable, so it cannot be checked'
    change = ''
    if record is not None:
        if record['model'] != model_name_tag:
            return f"its install record says it was installed as {record['model']}, not {model_name_tag}"
        if size != record['size']:
            change = f"changed since install: {size:,} bytes, {record['size']:,} when installed"
        else:
            sha256 = sha256_file(path)
            if sha256 != record['sha256']:
                change = f"changed since install: sha256 {sha256[:16]}..., {record['sha256'][:16]}... when installed"
    problem = _content_problem(path, size, expected_shapes, model_name_tag.partition('.')[0])
    if problem and change:
        return f'{problem} ({change})'
    return problem or change


def _not_a_regular_file(path: Path) -> str:
    """What ``path`` is when it is not a file to read weights from (empty when it is): reading a folder fails, and
    reading a FIFO or a device could wait for ever."""
    if path.is_file():
        return ''
    if path.is_dir():
        return 'a folder'
    if path.is_symlink() and not path.exists():
        return f'a symbolic link to {os.readlink(path)}, which does not exist'
    return 'not a regular file (a FIFO, socket or device)'


def _content_problem(path: Path, size: int, expected_shapes: Mapping[str, Sequence[int]], arch: str) -> str:
    tensors, data_offset, problem = _read_header(path, size)
    if problem:
        return problem
    problem = _fit_problem(tensors, expected_shapes, arch)
    if problem:
        return problem
    non_finite = _non_finite_tensors(path, tensors, data_offset)
    if non_finite:
        return (f'{len(non_finite)} tensors hold NaN or infinite values (first: {non_finite[0]}), '
                'which would make its predictions NaN')
    return ''


def _read_header(path: Path, size: int) -> Tuple[Dict, int, str]:
    """The safetensors header's tensors (name -> dtype, shape, data_offsets), where their data begin, and what makes
    the file unusable (empty when nothing)."""
    with open(path, 'rb') as f:
        prefix = f.read(8)
        if len(prefix) < 8:
            return {}, 0, f'truncated or not safetensors: {size} bytes, fewer than a safetensors header needs'
        (header_size,) = struct.unpack('<Q', prefix)
        if header_size > size - 8:
            if f.read(1) == b'{':
                return {}, 0, f'truncated: its header alone needs {8 + header_size:,} bytes, the file holds {size:,}'
            if prefix.startswith(b'PK'):
                return {}, 0, 'not a safetensors file: a zip archive (a torch.save checkpoint?)'
            return {}, 0, 'not a safetensors file (garbage): its first 8 bytes are no safetensors header length'
        try:
            header = json.loads(f.read(header_size))
            tensors = {k: v for k, v in header.items() if k != '__metadata__'}
            data_size = max((v['data_offsets'][1] for v in tensors.values()), default=0)
        except (UnicodeDecodeError, json.JSONDecodeError, AttributeError, KeyError, TypeError, IndexError):
            return {}, 0, 'not a safetensors file (garbage): its header is not the JSON a safetensors header is'
    if 8 + header_size + data_size > size:
        return {}, 0, f'truncated: its tensors need {8 + header_size + data_size:,} bytes, the file holds {size:,}'
    try:  # the final word is the reader timm uses
        with safe_open(str(path), framework='np'):
            pass
    except (SafetensorError, OSError) as e:
        return {}, 0, f'not a readable safetensors file ({e})'
    return tensors, 8 + header_size, ''


def tensor_dtypes(path: Path) -> Counter:
    """How many tensors of each dtype (safetensors' names: ``F32``, ``F16``, ``BF16``...) the safetensors file
    ``path`` holds, from its header alone; empty when it has none that can be read."""
    return Counter(info['dtype'] for info in _read_header(path, path.stat().st_size)[0].values())


def precision_note(dtypes: Mapping[str, int], model_dtype: str = 'float32') -> str:
    """What loading tensors of ``dtypes`` (``tensor_dtypes``) into a model of ``model_dtype`` does to their values,
    e.g. ``float16 values (all 310 floating tensors), which load upcast to float32``; empty when every floating
    tensor is of ``model_dtype``. torch's ``load_state_dict`` casts without a word: a smaller type exactly, a
    larger one rounded."""
    floating = {_FLOAT_NAMES[dtype]: count for dtype, count in dtypes.items() if dtype in _FLOAT_NAMES}
    cast = {name: count for name, count in floating.items() if name != model_dtype}
    if not cast:
        return ''
    total = sum(floating.values())
    held = ' and '.join(f'{name} values ({"all" if count == total else f"{count} of"} {total} floating tensors)'
                        for name, count in sorted(cast.items()))
    exact = all(_bits(name) < _bits(model_dtype) for name in cast)
    return f"{held}, which load {'upcast' if exact else 'rounded'} to {model_dtype}"


def _bits(dtype_name: str) -> int:
    return int(re.search(r'\d+', dtype_name).group())


def _fit_problem(tensors: Dict, expected_shapes: Mapping[str, Sequence[int]], arch: str) -> str:
    missing = [k for k in expected_shapes if k not in tensors]
    extra = [k for k in tensors if k not in expected_shapes]
    wrong = [k for k in expected_shapes if k in tensors and list(tensors[k]['shape']) != list(expected_shapes[k])]
    if not (missing or extra or wrong):
        return ''
    parts = [f'{len(missing)} missing tensors (first: {missing[0]})' if missing else '',
             f'{len(extra)} extra tensors (first: {extra[0]})' if extra else '',
             f"{len(wrong)} of the wrong shape (first: {wrong[0]} is {list(tensors[wrong[0]]['shape'])}, "
             f'{arch} needs {list(expected_shapes[wrong[0]])})' if wrong else '']
    return f"does not fit {arch}: {', '.join(p for p in parts if p)}"


def _non_finite_tensors(path: Path, tensors: Dict, data_offset: int) -> List[str]:
    """The floating tensors holding a NaN or an infinity, read in place (memory-mapped)."""
    if data_offset == path.stat().st_size:
        return []  # no tensor data to map
    data = np.memmap(path, dtype=np.uint8, mode='r', offset=data_offset)
    found = []
    for name, info in tensors.items():
        begin, end = info['data_offsets']
        if info['dtype'] in _FLOAT_DTYPES:
            finite = np.isfinite(data[begin:end].view(_FLOAT_DTYPES[info['dtype']])).all()
        elif info['dtype'] == 'BF16':
            finite = not ((data[begin:end].view(np.uint16) & _BF16_EXPONENT) == _BF16_EXPONENT).any()
        else:
            continue
        if not finite:
            found.append(name)
    return found


def tensors_digest(path: Path) -> Optional[str]:
    """sha256 of the weights a safetensors file holds, its header metadata (provenance, verify figures) left out: the
    tensors' names, dtypes, shapes, places and bytes. Two conversions of one file that recorded other provenance have
    the same digest; None when the file is not readable safetensors."""
    tensors, data_offset, problem = _read_header(path, path.stat().st_size)
    if problem:
        return None
    digest = hashlib.sha256(json.dumps(tensors, sort_keys=True).encode())
    with open(path, 'rb') as f:
        f.seek(data_offset)
        for chunk in iter(lambda: f.read(1 << 20), b''):
            digest.update(chunk)
    return digest.hexdigest()


def reinstall_command(model_name_tag: str, metadata: Mapping[str, str]) -> Optional[str]:
    """The converter command that installs ``model_name_tag`` again, over what is there: convert-caffe for the Caffe
    release's tags, convert-pytorchinsight for the authors' PyTorch ones; None for any other."""
    arch, _, tag = model_name_tag.partition('.')
    release = RELEASED_MODELS.get(arch)
    if tag == PYTORCHINSIGHT_TAG:
        converter, default_source = 'convert-pytorchinsight', f'{arch}.pth.tar'
    elif release is not None:
        converter, default_source = 'convert-caffe', release.caffemodel
    else:
        return None
    converted_for = metadata.get('model_name', '').partition('.')[0]
    source = (_recorded_name(metadata['source_file']) if converted_for == arch and 'source_file' in metadata
              else default_source)
    return f'{converter} {shell_word(source)} --model {arch} --install --force'


def _recorded_name(recorded: str) -> str:
    """The file name ``files.printable_name`` recorded: its ``\\xNN`` escapes (only ever of bytes >= 0x80, which are
    not UTF-8) back to those bytes, so that a command naming the file finds it."""
    name = re.sub(rb'\\x([89a-f][0-9a-f])', lambda m: bytes([int(m.group(1), 16)]), recorded.encode('utf-8'))
    return os.fsdecode(name)


def mend(model_name_tag: str, metadata: Mapping[str, str]) -> str:
    """What makes the slot of ``model_name_tag`` good again: re-installing (once what no install wrote is moved out
    of it, which ``--force`` never replaces), or deleting it."""
    slot = store_dir() / model_name_tag
    delete = f'rm -r {shell_word(str(slot))}'
    command = reinstall_command(model_name_tag, metadata)
    if command is None:
        return f'delete it ({delete}) or save good weights there'
    others = _not_installed(slot)
    first = f'move what no install wrote out of {slot} (e.g. {others[0]}), then ' if others else ''
    return f'{first}re-install it: {command} (or delete it: {delete})'


def refuse_installed(model_name_tag: str, path: Path, problem: str) -> InstalledWeightsError:
    """The one exception ``pretrained=True`` raises for an installed copy with ``problem``."""
    try:
        metadata = read_metadata(path)
    except UserError:
        metadata = {}
    return InstalledWeightsError(
        f'the installed copy {path} of {model_name_tag} cannot be loaded: {problem}; {mend(model_name_tag, metadata)}')


class InstalledWeights(NamedTuple):
    name: str  # <model>.<tag>
    path: Path
    metadata: Dict[str, str]
    error: str  # why the file could not be read; empty when it could
    problem: str  # what installed_problem found; empty when nothing
    recorded: bool  # whether convert-caffe --install left a record of the file


def installed_weights(model_shapes: Callable[[str], Optional[Mapping[str, Sequence[int]]]]) -> List[InstalledWeights]:
    """Every ``<model>.<tag>/model.safetensors`` in the store, with its header metadata and what is wrong with it
    (``model_shapes(arch)``: the tensors of a model, None for a name no model has), sorted by name."""
    root = store_dir()
    found = []
    slots = sorted(root.iterdir()) if root.is_dir() else ()
    for path in (slot / HUB_WEIGHTS_FILENAME for slot in slots if os.path.lexists(slot / HUB_WEIGHTS_FILENAME)):
        if path.parent.name.startswith(TEMP_PREFIX):  # an install being written, or a replaced copy going
            continue
        name = path.parent.name
        try:
            metadata, error = read_metadata(path), ''
        except UserError as e:
            metadata, error = {}, str(e)
        shapes = model_shapes(name.partition('.')[0])
        problem = (installed_problem(name, path, shapes) if shapes is not None else
                   f"no model {name.partition('.')[0]} is registered, so nothing loads it")
        found.append(InstalledWeights(name, path, metadata, error, problem, read_install_record(name) is not None))
    return found


def describe(weights: InstalledWeights) -> str:
    """The store listing's lines for one installed copy: its file, what is wrong with it and the mend (or that it
    was checked), then its provenance (with the epoch and accuracy a training checkpoint records) and, for the Caffe
    release, the verify figures."""
    size = f'{weights.path.stat().st_size:,} bytes' if weights.path.is_file() else 'not a file'
    lines = [f'{weights.name}  {weights.path}  ({size})']
    if weights.problem:
        lines.append(f'  NEEDS MENDING: {weights.problem}; {mend(weights.name, weights.metadata)}')
    elif weights.recorded:
        lines.append('  checked: as installed (size and sha256), fits its model, every value finite')
    else:
        command = reinstall_command(weights.name, weights.metadata)
        lines.append('  checked: fits its model, every value finite; installed without a record (older install), so a '
                     'change since cannot be seen' + (f'; re-install with --force: {command}' if command else ''))
    cast = '' if weights.problem else precision_note(tensor_dtypes(weights.path))
    if cast:
        lines.append(f'  holds {cast} (the dtype timm builds the model in)')
    meta = weights.metadata
    if weights.error:  # the problem above says why its header cannot be read
        return '\n'.join(lines)
    if not all(k in meta for k in PROVENANCE_KEYS):
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

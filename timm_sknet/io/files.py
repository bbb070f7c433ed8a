"""Outputs that appear whole or not at all, never replace what they should not; input files read with one-line
errors; content hashes.

Every output is written inside a temporary folder (``.tsk-XXXXXXXX.partial``, short and fixed in length, so any
name the folder accepts stays writable) beside its destination and then moved there in one step. Without ``force``
the move never replaces anything, even something another process created meanwhile: the loser of such a race gets
one line and its temporary goes. A failure (a full disk, a file-size limit, missing permission) or Ctrl-C leaves
nothing half-written, and a failed write is one line naming the cause and the path. A new file gets the mode any
new file gets under the umask; a replaced one keeps its own. The temporary's writer holds its lock for its whole
life, so that what a killed process leaves is told from what a live one writes, and removed by the next write into
that folder (``locks``: the reasoning, the sweep, and where locks live).

A folder of outputs (``output_directory``) carries a manifest naming the command that wrote it and its files:
``force`` replaces those files only, and a folder without the manifest that holds anything is never written into.
"""
import contextlib
import errno
import hashlib
import json
import os
import re
import signal
import stat
import threading
from pathlib import Path
from typing import Dict, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

from .errors import UserError
from .locks import FOLDER_LOCK, LOCK_SUFFIX, LOCKS_FOLDER, OUTPUT, TEMP_PREFIX, claim_temporary, file_lock

MANIFEST_NAME = '.timm-sknet-outputs.json'  # in an output folder: {"written_by": ..., "files": [...]}

_WRITE_FIXES = {
    errno.ENOSPC: 'free some space or write it elsewhere',
    errno.EDQUOT: 'free some of your disk quota or write it elsewhere',
    errno.EFBIG: 'a file-size limit (ulimit -f) or the file system caps its size; write it elsewhere',
    errno.EACCES: 'choose a folder you can write to',
    errno.EPERM: 'choose a folder you can write to',
    errno.EROFS: 'choose a folder on a file system mounted read-write',
    errno.ENAMETOOLONG: 'choose a shorter name',
}


def sha256_file(path: os.PathLike, chunk_size: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, 'rb') as f:
        for chunk in iter(lambda: f.read(chunk_size), b''):
            digest.update(chunk)
    return digest.hexdigest()


def read_input_file(path: os.PathLike, what: str) -> bytes:
    """The bytes of an input file the user named (``what`` says which, e.g. ``caffemodel``), or one line saying
    why there are none: a directory, a missing, unreadable or empty file."""
    path = Path(path)
    try:  # a name longer than the file system allows fails even the checks (ENAMETOOLONG)
        if path.is_dir():
            raise UserError(f'{what} {path} is a directory; give the {what} file itself')
        if not path.exists():
            raise UserError(f'{what} {path} does not exist')
        data = path.read_bytes()
    except OSError as e:
        raise UserError(f'cannot read {what} {path}: {e.strerror or e}; check the path and its permissions') from None
    if not data:
        raise UserError(f'{what} {path} is empty')
    return data


def printable_name(name: str) -> str:
    """``name`` as text: bytes that are not UTF-8 (a name the OS accepts, which Python keeps as surrogates) shown as
    ``\\xNN``, where text must be valid (a safetensors header, JSON that other tools read)."""
    return os.fsencode(name).decode('utf-8', 'backslashreplace')


def check_name(path: os.PathLike) -> Path:
    """Refuse a path with a name (of the file or of a folder on the way) longer than its file system allows, before
    any work is done; return the path."""
    path = Path(path)
    for part in (path, *path.parents):
        size = len(os.fsencode(part.name))
        try:
            limit = os.pathconf(part.parent, 'PC_NAME_MAX')
        except (OSError, ValueError):
            limit = 255  # the folder does not exist (yet): the limit of every common Linux file system
        if size > limit:
            raise UserError(f'the name {part.name} is {size} bytes long, more than the {limit} its file system '
                            f'allows; choose a shorter name')
    return path


def check_can_write(path: os.PathLike, force: bool) -> Path:
    """Refuse to replace an existing output unless forced, and a folder it cannot be written into (said now, not
    after a long run); return the path."""
    path = check_name(path)
    if path.exists() and not force:
        raise UserError(f'{path} already exists; pass --force to overwrite it')
    if not path.parent.exists():
        raise UserError(f'output directory {path.parent} does not exist; create it first')
    if not path.parent.is_dir():
        raise UserError(f'{path.parent} is not a directory; choose an output path in an existing folder')
    check_writable(path.parent, path)
    return path


def check_writable(folder: Path, target: Path) -> None:
    """Refuse, before any work, to write ``target`` into ``folder`` (or, while it does not exist, the nearest folder
    above it, where it will be made) when that cannot be written, naming the cause as the write would: a read-only
    file system (``EROFS``), missing permission (``EACCES``) or a file in the way (``ENOTDIR``)."""
    existing = next(p for p in (folder, *folder.absolute().parents) if os.path.lexists(p))
    if not existing.is_dir():
        code = errno.ENOTDIR
    elif os.access(existing, os.W_OK | os.X_OK):
        return
    else:  # os.access says no more than False; a read-only mount refuses even root
        code = errno.EROFS if os.statvfs(existing).f_flag & os.ST_RDONLY else errno.EACCES
    raise write_error(target, OSError(code, os.strerror(code)))


def check_output_file(path: os.PathLike, force: bool) -> Path:
    """Where an output *file* may be written: ``check_can_write``, and never over a directory or a device,
    even with ``force``."""
    path = check_name(path)
    if path.is_dir():
        raise UserError(f'{path} is a directory; give the path of a file to write (inside it, for example)')
    if path.exists() and not path.is_file():
        raise UserError(f'{path} exists and is not a regular file; choose another output path')
    return check_can_write(path, force)


def write_error(path: os.PathLike, error: Exception) -> UserError:
    """One line for a failed write: the cause (from ``OSError.errno``, or an ``(os error N)`` in a library's
    message, as safetensors' Rust writer puts it) and what to do."""
    code = getattr(error, 'errno', None)
    if code is None:
        found = re.search(r'\(os error (\d+)\)', str(error))
        code = int(found.group(1)) if found else None
    cause = os.strerror(code) if code else str(error)
    fix = _WRITE_FIXES.get(code, 'check the output folder and try again')
    return UserError(f'could not write {path}: {cause}; {fix} (nothing was written)')


def appeared_error(path: os.PathLike) -> UserError:
    """The loser of a race for one output: someone else's file is kept."""
    return UserError(f'{path} appeared while this command ran (another process wrote it) and was left as it is; '
                     'nothing was written; pass --force to replace it')


@contextlib.contextmanager
def interrupts_deferred() -> Iterator[None]:
    """Hold Ctrl-C back until the block is done, so that moving finished outputs into place is never cut short;
    a Ctrl-C received meanwhile is delivered right after it (outside the main thread signals cannot be held)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: received.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous if previous is not None else signal.default_int_handler)
        if received:
            signal.raise_signal(signal.SIGINT)


_RENAME_NOREPLACE, _RENAME_EXCHANGE = 1, 2


def _renameat2(source: Path, target: Path, flags: int) -> bool:
    """Linux's rename with ``flags``: without replacing (EEXIST instead), or exchanging the two names; False where
    the kernel, libc or file system does not offer it."""
    import ctypes  # only here: the import is not free and most calls never reach this
    libc = ctypes.CDLL(None, use_errno=True)
    renameat2 = getattr(libc, 'renameat2', None)
    if renameat2 is None:
        return False
    at_fdcwd = -100
    if renameat2(at_fdcwd, os.fsencode(source), at_fdcwd, os.fsencode(target), flags) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), os.fsdecode(os.fsencode(target)))


def move_no_replace(source: Path, target: Path) -> None:
    """Move ``source`` to ``target`` in one step unless ``target`` exists: then ``FileExistsError``, even when
    another process creates ``target`` at the same moment."""
    try:
        if _renameat2(source, target, _RENAME_NOREPLACE):
            return
    except OSError as e:
        if e.errno in (errno.EEXIST, errno.ENOTEMPTY):
            raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(target)) from None
        raise
    if source.is_dir():  # rename(2) replaces only an empty folder, where nothing can be lost
        try:
            os.rename(source, target)
        except OSError as e:
            if e.errno in (errno.EEXIST, errno.ENOTEMPTY):
                raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(target)) from None
            raise
        return
    os.link(source, target)  # a hard link never replaces: FileExistsError when target exists
    os.unlink(source)


def replace_folder(source: Path, target: Path) -> None:
    """Put the folder ``source`` in place of the folder ``target`` in one step where the file system can
    (``RENAME_EXCHANGE``): ``target``'s old content is then at ``source``, for the caller to remove, and a process
    killed at any moment leaves one of the two at ``target``, never neither. Elsewhere, two renames."""
    if _renameat2(source, target, _RENAME_EXCHANGE):
        return
    with staging_folder(target.absolute().parent) as old:
        os.replace(target, old)  # onto the empty folder just made, in one step
        os.replace(source, target)


def current_umask() -> int:
    """The process umask (reading it means setting it: set back at once)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _output_mode(path: Path) -> int:
    """The mode ``open(path, 'w')`` would leave: the existing file's, else 0o666 under the umask."""
    if path.is_file():
        return stat.S_IMODE(path.stat().st_mode)
    return 0o666 & ~current_umask()


def _sync(path: Path) -> None:
    """The data on disk before the name points to it: a crash later cannot leave an empty file under the name."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _commit(pairs: Sequence[Tuple[Path, Path]], force: bool) -> None:
    """Move each finished temporary file to its target; without ``force`` none replaces anything, and when one
    target appeared meanwhile, those already moved go again: all or nothing. Ctrl-C waits for the moves only."""
    for tmp, target in pairs:
        try:
            tmp.chmod(_output_mode(target) if force else 0o666 & ~current_umask())
            _sync(tmp)
        except OSError as e:
            raise write_error(target, e) from None
    placed: List[Path] = []
    with interrupts_deferred():
        try:
            for tmp, target in pairs:
                try:
                    if force:
                        os.replace(tmp, target)
                    else:
                        move_no_replace(tmp, target)
                except FileExistsError:
                    raise appeared_error(target) from None
                except OSError as e:
                    raise write_error(target, e) from None
                placed.append(target)
        except BaseException:
            if not force:  # created just now by this process, exclusively: nobody else's
                for target in placed:
                    target.unlink(missing_ok=True)
            raise


@contextlib.contextmanager
def atomic_output(path: os.PathLike, force: bool = False) -> Iterator[Path]:
    """Yield a temporary path (of the same name, in a temporary folder beside ``path``); on success it becomes
    ``path``, on any error it is removed. Without ``force`` an existing ``path`` is never replaced, even one created
    while the caller wrote.

    Whoever writes the temporary file may create it anew (safetensors does, with mode 0600): its mode is set
    once it is written. An ``OSError`` while creating, writing or moving it becomes ``write_error``'s one line.
    """
    path = Path(path)
    with staging_folder(path.parent, output=path) as staging:
        tmp = staging / path.name
        try:
            yield tmp
        except OSError as e:
            raise write_error(path, e) from None
        _commit([(tmp, path)], force)


def write_outputs(contents: Mapping[Path, Union[str, bytes]], force: bool = False) -> None:
    """Write several files as one output: all of them appear, or none (see ``atomic_output``)."""
    with contextlib.ExitStack() as stack:
        stagings: Dict[Path, Path] = {}  # one temporary folder in each destination folder
        pairs: List[Tuple[Path, Path]] = []
        for target, content in contents.items():
            target = Path(target)
            if target.parent not in stagings:
                stagings[target.parent] = stack.enter_context(staging_folder(target.parent, output=target))
            tmp = stagings[target.parent] / target.name
            try:
                if isinstance(content, bytes):
                    tmp.write_bytes(content)
                else:
                    tmp.write_text(content, encoding='utf-8')
            except OSError as e:
                raise write_error(target, e) from None
            pairs.append((tmp, target))
        _commit(pairs, force)


def lock_path(target: Path) -> Path:
    """The lock file that guards ``target`` (a store slot): in the ``.locks`` folder beside it, named after it, or
    after its hash where the name would be too long for the file system."""
    name = f'{target.name}{LOCK_SUFFIX}'
    if len(os.fsencode(name)) > 255:
        name = hashlib.sha256(os.fsencode(target.name)).hexdigest()[:16] + LOCK_SUFFIX
    return target.parent / LOCKS_FOLDER / name


def read_manifest(directory: Path) -> Optional[dict]:
    """The manifest of an output folder, or None when it has none (or one that is not ours)."""
    try:
        manifest = json.loads((directory / MANIFEST_NAME).read_text(encoding='utf-8'))
    except (OSError, ValueError):
        return None
    if not isinstance(manifest, dict) or not isinstance(manifest.get('files'), list):
        return None
    return manifest


def check_output_directory(path: os.PathLike, force: bool, written_by: str) -> Path:
    """Where ``output_directory`` may write: a new or empty folder, or with ``force`` an earlier output of
    ``written_by`` (its manifest says so); never a folder holding files the command did not write."""
    path = check_name(path)
    if path.exists() and not path.is_dir():
        raise UserError(f'{path} exists and is not a folder; choose a new folder')
    if not path.exists():
        if not path.parent.is_dir():
            raise UserError(f'the parent of {path} does not exist; create it first')
        check_writable(path.parent, path)
        return path
    names = sorted(name for name in os.listdir(path) if not name.startswith(TEMP_PREFIX))  # a lock, staging
    if names:
        manifest = read_manifest(path)
        if manifest is None or manifest.get('written_by') != written_by:
            raise UserError(f'{path} holds files {written_by} did not write (e.g. {names[0]}); it writes only into a '
                            f'new or empty folder, or with --force over its own earlier output: choose another folder')
        if not force:
            raise UserError(f'{path} already holds an earlier output of {written_by}; pass --force to replace its '
                            'files')
    check_writable(path, path)
    return path


@contextlib.contextmanager
def output_directory(path: os.PathLike, force: bool, written_by: str) -> Iterator[Path]:
    """Yield an empty staging folder beside ``path`` (inside it, if it exists); what the caller writes there becomes
    ``path``'s content.

    A new ``path`` appears in one step with all of it, and never replaces a folder that appeared meanwhile. An
    existing empty ``path``, or with ``force`` an earlier output (``check_output_directory``), gets the new files
    one by one, each in one step, under the folder's lock (``locks.file_lock``: there only while the files move)
    so that two writers do not interleave; files the command did not write stay. New folders get the mode any new
    folder gets under the umask; the manifest lists the files.
    """
    path = check_output_directory(path, force, written_by)
    # inside a folder that exists (its parent may not be writable, e.g. --output-dir .), else beside it
    parent = path if path.is_dir() else path.absolute().parent
    try:
        with staging_folder(parent, output=path) as staging:
            yield staging
            files = sorted(os.listdir(staging))
            (staging / MANIFEST_NAME).write_text(
                json.dumps({'written_by': written_by, 'files': files}, indent=1) + '\n', encoding='utf-8')
            if not path.exists():
                with interrupts_deferred():
                    try:
                        move_no_replace(staging, path)
                        return
                    except FileExistsError:  # created meanwhile: written into only as an existing folder would be
                        pass
            check_output_directory(path, force, written_by)  # what is there now, before a lock file goes into it
            with file_lock(path / FOLDER_LOCK, f'into {path}'):
                check_output_directory(path, force, written_by)  # again: what is there now, with the lock held
                with interrupts_deferred():
                    for name in files:
                        (staging / name).chmod(_output_mode(path / name))
                        os.replace(staging / name, path / name)
                    os.replace(staging / MANIFEST_NAME, path / MANIFEST_NAME)  # last: it lists files all there
    except OSError as e:
        raise write_error(path, e) from None


@contextlib.contextmanager
def staging_folder(parent: Path, output: Optional[Path] = None) -> Iterator[Path]:
    """A new, empty folder inside a temporary one in ``parent`` (``locks.claim_temporary``: this process's while the
    block runs, and a killed writer's leftovers in ``parent`` removed first), to write outputs into before they are
    moved into place; with the mode any new folder gets under the umask (what is published is readable by others).
    Removed with whatever is left in it on the way out, Ctrl-C held back while it is made and removed. A failure to
    make it is ``write_error``'s line, naming ``output`` (else ``parent``)."""
    temporary = None
    try:
        with interrupts_deferred():  # a Ctrl-C now is raised only once the cleanup below knows the folder
            try:
                temporary = claim_temporary(parent)
                staging = temporary.path / OUTPUT
                staging.mkdir()
            except OSError as e:
                raise write_error(output or parent, e) from None
        yield staging
    finally:
        if temporary is not None:
            with interrupts_deferred():
                temporary.remove()

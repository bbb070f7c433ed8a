"""Output files that appear whole or not at all, input files read with one-line errors, and content hashes for
provenance.

An output file is written to a temporary file beside it and renamed into place, so a failure (a full disk, a
file-size limit, missing permission, Ctrl-C) leaves nothing half-written, and a failed write is one line naming
the cause and the path. A new file gets the mode any new file gets under the umask; a replaced one keeps its own.
"""
import contextlib
import errno
import hashlib
import os
import re
import shutil
import stat
import tempfile
from pathlib import Path
from typing import Iterator

from .errors import UserError

_WRITE_FIXES = {
    errno.ENOSPC: 'free some space or write it elsewhere',
    errno.EDQUOT: 'free some of your disk quota or write it elsewhere',
    errno.EFBIG: 'a file-size limit (ulimit -f) or the file system caps its size; write it elsewhere',
    errno.EACCES: 'choose a folder you can write to',
    errno.EPERM: 'choose a folder you can write to',
    errno.EROFS: 'that file system is read-only; choose another folder',
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
    if path.is_dir():
        raise UserError(f'{what} {path} is a directory; give the {what} file itself')
    if not path.exists():
        raise UserError(f'{what} {path} does not exist')
    try:
        data = path.read_bytes()
    except OSError as e:
        raise UserError(f'cannot read {what} {path}: {e.strerror or e}; check the path and its permissions') from None
    if not data:
        raise UserError(f'{what} {path} is empty')
    return data


def check_can_write(path: os.PathLike, force: bool) -> Path:
    """Refuse to replace an existing output unless forced; return the path."""
    path = Path(path)
    if path.exists() and not force:
        raise UserError(f'{path} already exists; pass --force to overwrite it')
    if not path.parent.exists():
        raise UserError(f'output directory {path.parent} does not exist; create it first')
    return path


def check_output_file(path: os.PathLike, force: bool, *, parent_created_later: bool = False) -> Path:
    """Where an output *file* may be written: ``check_can_write``, and never over a directory or a device,
    even with ``force``. With ``parent_created_later`` a missing folder is fine: the caller makes it."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f'{path} is a directory; give the path of a file to write (inside it, for example)')
    if path.exists() and not path.is_file():
        raise UserError(f'{path} exists and is not a regular file; choose another output path')
    if parent_created_later and not path.parent.exists():
        return path
    check_can_write(path, force)
    if not path.parent.is_dir():
        raise UserError(f'{path.parent} is not a directory; choose an output path in an existing folder')
    if not os.access(path.parent, os.W_OK | os.X_OK):  # said now, not after a long conversion
        raise write_error(path, PermissionError(errno.EACCES, os.strerror(errno.EACCES)))
    return path


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


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _output_mode(path: Path) -> int:
    """The mode ``open(path, 'w')`` would leave: the existing file's, else 0o666 under the umask."""
    if path.is_file():
        return stat.S_IMODE(path.stat().st_mode)
    return 0o666 & ~_umask()


@contextlib.contextmanager
def atomic_output(path: os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path``, on any error it is removed.

    Whoever writes the temporary file may create it anew (safetensors does, with mode 0600): its mode is set
    once it is written. An ``OSError`` while creating, writing or renaming it becomes ``write_error``'s one line.
    """
    path = Path(path)
    try:
        fd, name = tempfile.mkstemp(prefix=f'.{path.name}.', suffix='.partial', dir=path.parent)
    except OSError as e:
        raise write_error(path, e) from None
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        tmp.chmod(_output_mode(path))
        os.replace(tmp, path)
    except OSError as e:
        raise write_error(path, e) from None
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_directory(path: os.PathLike) -> Iterator[Path]:
    """Yield an empty directory beside ``path``; on success it replaces ``path`` (a file or folder there goes),
    on any error it is removed. It gets the mode any new directory gets under the umask."""
    path = Path(path)
    staging = Path(tempfile.mkdtemp(prefix=f'.{path.name}.', suffix='.partial', dir=path.parent))
    staging.chmod(0o777 & ~_umask())  # mkdtemp's 0700 would make a published directory private to its writer
    try:
        yield staging
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()
        os.replace(staging, path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)

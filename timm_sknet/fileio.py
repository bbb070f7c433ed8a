"""Output files that appear whole or not at all, and content hashes for provenance."""
import contextlib
import hashlib
import os
import tempfile
from pathlib import Path
from typing import Iterator

from .errors import UserError


def sha256_file(path: os.PathLike, chunk_size: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, 'rb') as f:
        for chunk in iter(lambda: f.read(chunk_size), b''):
            digest.update(chunk)
    return digest.hexdigest()


def check_can_write(path: os.PathLike, force: bool) -> Path:
    """Refuse to replace an existing output unless forced; return the path."""
    path = Path(path)
    if path.exists() and not force:
        raise UserError(f'{path} already exists; pass --force to overwrite it')
    if not path.parent.exists():
        raise UserError(f'output directory {path.parent} does not exist; create it first')
    return path


@contextlib.contextmanager
def atomic_output(path: os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path``, on any error it is removed."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f'.{path.name}.', suffix='.partial', dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod(0o666 & ~umask)  # mkstemp makes 0600; an output file gets the permissions open() would give it
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)

"""Who owns a temporary, locks that leave nothing behind, and the sweep of what a killed process left.

A process killed without warning (SIGKILL, the OOM killer, a CI timeout, power loss) runs no cleanup: its
temporary folder stays, 106 MB for an SKNet-50 install. The next command that writes into the same folder removes
such leftovers (``remove_leftovers``), and ``timm-sknet installed`` lists those of the store (``leftovers``), the way
huggingface_hub leaves ``.incomplete`` files for ``hf cache scan`` to show. A leftover is removed only when its
writer is gone: a live writer's files are never touched, however slow it is or whichever process or machine it
runs on.

**How "the writer is gone" is decided: a kernel lock the writer holds for the temporary's whole life.** Every
temporary is a folder ``.tsk-XXXXXXXX.partial`` (``tempfile.mkdtemp``'s names) holding ``owner.lock``, on which
its writer holds ``flock(LOCK_EX)`` from before it writes anything until the folder is gone, and ``output``, what
becomes the output (one file, several, or a whole folder). The kernel drops the lock the moment the process dies,
however it dies. A sweep takes the lock without waiting: it gets it only when no process holds it, and then removes
the folder while holding it, so a writer and a sweep can never both own one. The alternative, a name carrying the
writer's pid and its start time (``/proc/<pid>/stat``, against pid reuse), answers only on the machine and in the
pid namespace of the writer: a container sharing a mounted cache with the host, or a second machine on NFS, sees
no such process and would remove a live writer's file. A lock lives where the file lives, so every process that
can see the temporary asks the same lock (over NFS the client turns ``flock`` into the server's byte-range locks,
which the server drops when a client's lease expires). It also survives a writer that creates its file anew
(safetensors' writer does): the lock is a file of its own beside the output, never the output.

*The claim.* ``mkdtemp`` then ``O_CREAT | O_EXCL`` of ``owner.lock`` then ``flock`` are three steps. A sweep that
finds a folder without ``owner.lock``, or with one nobody holds, creates or takes it and removes the folder: the
writer then fails its exclusive create, or finds its lock file no longer at that path, and starts over under a new
name. It wrote nothing yet: nothing is lost. The writer starts writing only once it holds the lock on the file
that is at the path (the same check after every lock taken here: ``_locked_at``).

*One process, two roles.* Where ``flock`` is emulated by POSIX record locks (NFS), a process does not conflict
with itself, and closing any descriptor of a file drops all its locks on it: a sweep must never probe a temporary
its own process owns. ``_OWNED`` lists them, under ``_CLAIMS``, which a claim holds until it has its lock.

*Where locking is not offered* (``flock`` fails with ENOLCK or ENOSYS, some FUSE file systems), liveness cannot be
known: the writer works unlocked and sweeps never remove anything there; ``leftovers`` shows them as live.

**Where locks live.** Nothing of ours stays in a folder of the user's once a command ends. The temporary's lock is
inside the temporary and goes with it. The two locks that take turns (``file_lock``: one store slot's installs, an
output folder written into in place) are removed by their holder on release, while still holding them; a waiter
that then gets the lock on the removed file sees it is no longer at the path and tries again. So a lock file
exists only while a command holds it: normal exit, an error and Ctrl-C remove it; after a SIGKILL it is removed
by the next command writing there (``remove_leftovers``), or re-used and removed by the next one that takes it.
Keeping the folder's lock outside the folder (the store's ``.locks/``, keyed by the folder's path) would leave it
unseen by a process with another ``$TIMM_SKNET_HOME``, another user or another machine, which would then write
into the folder at the same time. The store's slot locks are in ``STORE/.locks/`` (huggingface_hub's place), the
store root holding only installed slots and, while one runs, an install's temporary.
"""
import contextlib
import errno
import fcntl
import os
import re
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Iterator, List, NamedTuple, Optional, Set

from .errors import UserError

TEMP_PREFIX, TEMP_SUFFIX = '.tsk-', '.partial'
OWNER_LOCK = 'owner.lock'  # inside a temporary: held by its writer for the temporary's whole life
OUTPUT = 'output'  # inside a temporary: what becomes the output
LOCK_SUFFIX = '.lock'
LOCKS_FOLDER = '.locks'  # the store's slot locks
FOLDER_LOCK = f'{TEMP_PREFIX}folder{LOCK_SUFFIX}'  # in an output folder while files move into it in place
LOCK_TIMEOUT_S = 60.  # another process holds a file lock only while it moves finished files into place
_POLL_S = 0.05
# What a sweep may remove: mkdtemp's names (a plain file of that name is an earlier version's temporary), the
# folder lock, and the slot locks earlier versions kept in the store root. Nothing else, whatever its name.
_LEFTOVER = re.compile(rf'{re.escape(TEMP_PREFIX)}'
                       rf'([a-z0-9_]{{8}}{re.escape(TEMP_SUFFIX)}|(folder|[0-9a-f]{{16}}){re.escape(LOCK_SUFFIX)})')
_NO_LOCKING = (errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP)

_OWNED: Set[Path] = set()  # the temporaries this process writes: its own sweeps never probe them
_CLAIMS = threading.Lock()


class Leftover(NamedTuple):
    path: Path  # a temporary folder (or an earlier version's temporary file) or a lock file
    size: int  # bytes, of everything in it
    live: bool  # a running process still owns it: it is being written, not left behind


def _locked_at(fd: int, path: Path) -> bool:
    """Whether the file ``fd`` has open (and locked) is still the one at ``path``."""
    try:
        return os.path.samestat(os.fstat(fd), os.lstat(path))
    except FileNotFoundError:
        return False


def _lock_now(fd: int, operation: int) -> Optional[bool]:
    """``flock`` without waiting: True when taken, False when another holds it, None where there is no locking."""
    try:
        fcntl.flock(fd, operation | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    except OSError as e:
        if e.errno in _NO_LOCKING:
            return None
        raise
    return True


class Temporary(NamedTuple):
    path: Path  # .tsk-XXXXXXXX.partial
    lock_fd: int  # its owner.lock, locked

    def remove(self) -> None:
        """Remove the temporary with all in it, then let go of its lock."""
        try:
            shutil.rmtree(self.path, ignore_errors=True)
        finally:
            _OWNED.discard(self.path)
            os.close(self.lock_fd)


def claim_temporary(parent: Path) -> Temporary:
    """A new temporary folder in ``parent``, locked as this process's until ``Temporary.remove``; the leftovers of
    a killed writer in ``parent`` are removed first."""
    remove_leftovers(parent)
    while True:
        with _CLAIMS:
            temporary = Path(os.path.abspath(tempfile.mkdtemp(prefix=TEMP_PREFIX, suffix=TEMP_SUFFIX, dir=parent)))
            _OWNED.add(temporary)
            try:
                fd = os.open(temporary / OWNER_LOCK, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
            except (FileExistsError, FileNotFoundError):  # a sweep took it first, and removes it
                _OWNED.discard(temporary)
                continue
            try:  # waits only while a sweep or a listing probes it, an instant
                fcntl.flock(fd, fcntl.LOCK_EX)
            except OSError as e:
                if e.errno not in _NO_LOCKING:
                    os.close(fd)
                    shutil.rmtree(temporary, ignore_errors=True)
                    _OWNED.discard(temporary)
                    raise
        if _locked_at(fd, temporary / OWNER_LOCK):
            return Temporary(temporary, fd)
        os.close(fd)
        _OWNED.discard(temporary)


def file_lock(path: Path, what: str, wait_s: float = LOCK_TIMEOUT_S):
    """An exclusive lock on the file ``path`` (created if absent, removed on release), waited for up to ``wait_s``;
    a holder that keeps it longer is refused in one line naming ``what`` it guards. An ``OSError`` (the folder is
    read-only, say) is the caller's to word."""
    @contextlib.contextmanager
    def held() -> Iterator[None]:
        deadline = time.monotonic() + wait_s
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
            taken = _lock_now(fd, fcntl.LOCK_EX)
            if taken is not False and _locked_at(fd, path):
                break
            os.close(fd)
            if time.monotonic() > deadline:
                held_for = f' for over {wait_s:.0f} s' if wait_s else ''
                raise UserError(f'another process has been writing {what}{held_for} (it holds {path}); let it finish '
                                'and run this again')
            if taken is False:
                time.sleep(_POLL_S)
        try:
            yield
        finally:
            try:
                if _locked_at(fd, path):
                    path.unlink()  # while held: whoever waits on this file sees it gone and takes a new one
            finally:
                os.close(fd)
    return held()


def _size(path: Path) -> int:
    if not path.is_dir() or path.is_symlink():
        return path.lstat().st_size
    return sum((Path(folder) / name).lstat().st_size
               for folder, _, names in os.walk(path) for name in names)


def _candidates(folder: Path) -> List[Path]:
    """Our names in ``folder``, as absolute paths (as ``_OWNED`` holds them)."""
    folder = Path(os.path.abspath(folder))
    try:
        return [folder / name for name in sorted(os.listdir(folder)) if _LEFTOVER.fullmatch(name)]
    except (FileNotFoundError, NotADirectoryError):
        return []


def _lock_file_of(candidate: Path) -> Path:
    """The file whose lock says whether ``candidate``'s writer lives: a temporary folder's ``owner.lock``, else the
    file itself (a lock file, or an earlier version's temporary file)."""
    return candidate / OWNER_LOCK if candidate.is_dir() and not candidate.is_symlink() else candidate


def leftovers(folder: Path) -> List[Leftover]:
    """The temporaries and lock files of ours in ``folder`` (not in its subfolders), each with its size and whether
    a running process owns it. Only looks: takes a shared lock for an instant, creates and removes nothing."""
    found = []
    for candidate in _candidates(folder):
        try:
            fd = os.open(_lock_file_of(candidate), os.O_RDONLY)
        except FileNotFoundError:
            fd = None  # no owner.lock: its writer died before it had one (or is between two steps)
        except OSError:  # someone else's, that we cannot read
            continue
        try:
            live = candidate in _OWNED or (fd is not None and _lock_now(fd, fcntl.LOCK_SH) is not True)
            found.append(Leftover(candidate, _size(candidate), live))
        except FileNotFoundError:  # finished meanwhile
            pass
        finally:
            if fd is not None:
                os.close(fd)
    return found


def remove_leftovers(folder: os.PathLike) -> List[Leftover]:
    """Remove from ``folder`` (not its subfolders) the temporaries and lock files of ours whose writer is gone, and
    return them; a live writer's are kept, whichever process or machine it runs on, and so is anything that cannot
    be removed (another user's, say). Every write through ``files`` calls it for the folder it writes into."""
    removed = []
    for candidate in _candidates(Path(folder)):
        lock = _lock_file_of(candidate)
        with _CLAIMS:
            if candidate in _OWNED:
                continue
            try:  # a temporary without owner.lock gets one: a writer between two steps then starts over
                fd = os.open(lock, os.O_RDWR | (os.O_CREAT if lock != candidate else 0), 0o600)
            except OSError:  # gone meanwhile, or not ours to open
                continue
            try:
                taken = _lock_now(fd, fcntl.LOCK_EX)
            except OSError:
                taken = None
        try:
            if not taken or not _locked_at(fd, lock):
                continue
            size = _size(candidate)
            if lock == candidate:
                candidate.unlink()
            else:
                shutil.rmtree(candidate, ignore_errors=True)
            if not os.path.lexists(candidate):
                removed.append(Leftover(candidate, size, False))
        except OSError:
            continue
        finally:
            os.close(fd)
    return removed

"""The release's work folder: the converted weights, the results, the repo files, and a record of each finished
step (what it took in, what it gave out), so that the same command resumes where a failure, a Ctrl-C or a kill
stopped it.

A step is skipped when its record holds exactly the inputs it has now and its outputs are still there, unchanged;
otherwise it runs, and since a later step's inputs include an earlier step's outputs, everything after a changed
step runs again. Records are written whole (``atomic_output``) and only once the step's outputs are in place, so a
record never speaks of an output that is not there. One release at a time holds the folder (a lock taken without
waiting, removed when the release ends); what a killed release left half-written there is removed when the next one
takes the folder (``io.locks.remove_leftovers``); a folder that holds anything but a release's files is never
written into.
"""
import contextlib
import json
import os
import secrets
from pathlib import Path
from typing import Any, Dict, Iterator, Optional

from timm_sknet.io.errors import UserError
from timm_sknet.io.files import TEMP_PREFIX, atomic_output, check_name, write_error
from timm_sknet.io.locks import file_lock, remove_leftovers

__all__ = ['RECORD_FORMAT', 'WorkFolder', 'work_folder']

RECORD_FORMAT = 'timm-sknet-release/1'
MARKER = '.timm-sknet-release.json'  # {"format": ..., "id": ...}: the folder is a release's, and which one
LOCK = '.release.lock'


class WorkFolder:
    """Paths of one release's work folder, and its step records."""

    def __init__(self, path: Path, release_id: str):
        self.path = path
        self.id = release_id  # names this folder's release in what it writes elsewhere (an --output-dir's manifest)
        self.weights = path / 'model.safetensors'
        self.results = path / 'results.json'
        self.repo = path / 'repo'  # the repo's files as published
        self.read_back_cache = path / 'read-back-cache'  # a fresh Hub cache for the read-back, removed after it
        self.steps = path / 'steps'

    def record(self, step: str) -> Optional[Dict[str, Any]]:
        """The step's record, or None when it has none (or one that cannot be read: the step then runs again)."""
        try:
            record = json.loads((self.steps / f'{step}.json').read_text(encoding='utf-8'))
        except (OSError, ValueError):
            return None
        if not isinstance(record, dict) or record.get('format') != RECORD_FORMAT:
            return None
        return record

    def finished(self, step: str, inputs: Dict[str, Any]) -> Optional[Dict[str, Any]]:
        """The outputs the step recorded if it finished with exactly ``inputs``, else None."""
        record = self.record(step)
        if record is None or record.get('inputs') != _as_json(inputs):
            return None
        return record['outputs']

    def save(self, step: str, inputs: Dict[str, Any], outputs: Dict[str, Any], seconds: float) -> None:
        record = {'format': RECORD_FORMAT, 'step': step, 'inputs': _as_json(inputs), 'outputs': _as_json(outputs),
                  'seconds': round(seconds, 1)}
        self.steps.mkdir(exist_ok=True)
        with atomic_output(self.steps / f'{step}.json', force=True) as tmp:
            tmp.write_text(json.dumps(record, indent=1) + '\n', encoding='utf-8')


def _as_json(value: Any) -> Any:
    """``value`` as it reads back from its record (tuples become lists), so that inputs compare equal."""
    return json.loads(json.dumps(value))


@contextlib.contextmanager
def work_folder(path: Path) -> Iterator[WorkFolder]:
    """The work folder at ``path``, created if new, held for this process alone until the block ends."""
    path = check_name(path)
    if path.exists() and not path.is_dir():
        raise UserError(f'--workdir {path} exists and is not a folder; choose a folder')
    if not path.exists():
        if not path.parent.is_dir():
            raise UserError(f'the parent of --workdir {path} does not exist; create it first')
        try:
            path.mkdir()
        except FileExistsError:
            pass  # another release made it meanwhile: the lock below decides
        except OSError as e:
            raise write_error(path, e) from None
    with contextlib.ExitStack() as held:
        try:
            held.enter_context(file_lock(path / LOCK, f'the release work folder {path} (another timm-sknet release)',
                                         wait_s=0))
            work = WorkFolder(path, _release_id(path))
            for folder in (work.path, work.steps):
                remove_leftovers(folder)
        except OSError as e:
            raise write_error(path / LOCK, e) from None
        yield work


def _release_id(path: Path) -> str:
    """This folder's release id, from its marker; a folder without one must hold nothing but our lock."""
    marker = path / MARKER
    try:
        found = json.loads(marker.read_text(encoding='utf-8'))
        if found.get('format') == RECORD_FORMAT and isinstance(found.get('id'), str):
            return found['id']
    except (OSError, ValueError, AttributeError):
        pass
    others = sorted(name for name in os.listdir(path) if name not in (LOCK, MARKER) and not name.startswith(TEMP_PREFIX))
    if others:
        raise UserError(f'--workdir {path} holds files a release did not write (e.g. {others[0]}); give a new or '
                        'empty folder, or the work folder of an earlier run of this release')
    release_id = secrets.token_hex(8)
    with atomic_output(marker, force=True) as tmp:
        tmp.write_text(json.dumps({'format': RECORD_FORMAT, 'id': release_id}) + '\n', encoding='utf-8')
    return release_id

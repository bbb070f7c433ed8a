"""convert-caffe never leaves anything partial and never replaces what it should not: two conversions racing for
one --output or one store slot, Ctrl-C at several moments of a real run, names at and past the file system's limit
and names that are not UTF-8, a file-size limit during --install, --force against files it did not write."""
import hashlib
import json
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Tuple

import pytest
from safetensors import safe_open

from timm_sknet.io.files import TEMP_PREFIX

CONVERT_CAFFE = Path(sys.executable).parent / 'convert-caffe'
INTERRUPTED = 'convert-caffe: error: interrupted (Ctrl-C); nothing partial was left behind\n'
SLOT = 'sknet50.caffe_in1k'


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _checksums(root: Path) -> Dict[str, str]:
    """Every file under ``root`` (hidden ones included) with its sha256: the state on disk to compare."""
    return {str(p.relative_to(root)): _sha256(p) for p in sorted(root.rglob('*')) if p.is_file()}


def _start(*args, env: Dict[str, str] = None) -> subprocess.Popen:
    """The installed console script, as a user runs it; unbuffered, so that its progress shows as it happens."""
    return subprocess.Popen([str(CONVERT_CAFFE), *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=dict(os.environ, PYTHONUNBUFFERED='1', **(env or {})))


def _conversion(weights: Path) -> Tuple[Dict[str, str], Dict[str, str]]:
    """A converted file's provenance and the sha256 of each tensor (safetensors orders the header's metadata as it
    likes, so two runs that write the same thing may differ in bytes)."""
    with safe_open(str(weights), framework='np') as f:
        return f.metadata(), {k: hashlib.sha256(f.get_tensor(k).tobytes()).hexdigest() for k in f.keys()}


def _source_file(weights: Path) -> str:
    with safe_open(str(weights), framework='np') as f:
        return f.metadata()['source_file']


@pytest.fixture(scope='module')
def reference(sknet50_caffemodel, tmp_path_factory) -> Path:
    """What convert-caffe writes for the fixture's caffemodel when nothing interferes."""
    path = tmp_path_factory.mktemp('reference') / 'sknet50.safetensors'
    proc = subprocess.run([str(CONVERT_CAFFE), str(sknet50_caffemodel), '--model', 'sknet50', '--output', str(path)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return path


@pytest.fixture
def two_caffemodels(sknet50_caffemodel, tmp_path) -> List[Path]:
    """The fixture's caffemodel under two names: their conversions differ in the provenance they record."""
    names = []
    for name in ('first.caffemodel', 'second.caffemodel'):
        os.link(sknet50_caffemodel, tmp_path / name)
        names.append(tmp_path / name)
    return names


# -- two writers of one target ------------------------------------------------------------------------------

@pytest.mark.parametrize('destination', ['--output', '--install'])
def test_two_conversions_to_one_target_one_wins(destination, two_caffemodels, tmp_path, out_dir):
    """Both start together and convert for a second or more; whichever moves its file in first wins, the other is
    refused in one line (before converting, or at the move if both got that far) and the winner's file stays."""
    store = tmp_path / 'store'
    output = out_dir / 'sknet50.safetensors'
    target = ['--output', output] if destination == '--output' else ['--install']
    procs = [_start(caffemodel, '--model', 'sknet50', *target, env={'TIMM_SKNET_HOME': str(store)})
             for caffemodel in two_caffemodels]
    results = [(proc.wait(timeout=300), proc.stderr.read()) for proc in procs]
    winners = [i for i, (code, _) in enumerate(results) if code == 0]
    assert len(winners) == 1, results
    code, err = results[1 - winners[0]]
    assert code == 2 and err.count('\n') == 1 and 'Traceback' not in err, err
    assert err.startswith('convert-caffe: error: ') and 'pass --force to replace it' in err
    written = output if destination == '--output' else store / SLOT / 'model.safetensors'
    assert _source_file(written) == two_caffemodels[winners[0]].name  # whole, and the winner's
    if destination == '--install':
        assert sorted(os.listdir(store / SLOT)) == ['install.json', 'model.safetensors']
        record = json.loads((store / SLOT / 'install.json').read_text())
        assert record == {'sha256': _sha256(written), 'size': written.stat().st_size, 'model': SLOT,
                          'installed_by': 'convert-caffe'}
        assert sorted(os.listdir(store)) == ['.locks', SLOT] and os.listdir(store / '.locks') == []  # locks go
    else:
        assert os.listdir(out_dir) == ['sknet50.safetensors']


# -- Ctrl-C --------------------------------------------------------------------------------------------------

def _interrupt_when(proc: subprocess.Popen, moment: Callable[[], bool]) -> Tuple[int, str]:
    """SIGINT (what Ctrl-C sends) as soon as ``moment()`` holds; (exit code, stderr)."""
    deadline = time.monotonic() + 120
    while not moment():
        assert proc.poll() is None, f'it ended before the moment came: {proc.stderr.read()}'
        assert time.monotonic() < deadline
        time.sleep(0.0005)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    return proc.returncode, err


def _numpy_loaded(pid: int) -> bool:
    """convert-caffe is importing its dependencies (numpy's extension is mapped), well inside its first second."""
    try:
        return '_multiarray_umath' in Path(f'/proc/{pid}/maps').read_text()
    except OSError:
        return False


def _holds_the_caffemodel(pid: int) -> bool:
    """Past reading the 110 MB caffemodel into memory: converting."""
    try:
        status = Path(f'/proc/{pid}/status').read_text()
    except OSError:
        return False
    return int(status.split('VmRSS:')[1].split()[0]) > 250_000  # kB


def _partial_files(root: Path) -> List[Path]:
    return list(root.rglob(f'{TEMP_PREFIX}*'))


def _partial_of_size(root: Path, minimum: int) -> bool:
    """A temporary output under ``root`` holding at least ``minimum`` bytes."""
    for path in root.rglob('*'):
        try:
            if TEMP_PREFIX in str(path.relative_to(root)) and path.is_file() and path.stat().st_size >= minimum:
                return True
        except OSError:  # moved or removed meanwhile
            pass
    return False


@pytest.mark.parametrize('moment', ['importing', 'converting', 'writing', 'moving into place'])
def test_ctrl_c_leaves_nothing(moment, sknet50_caffemodel, reference, out_dir):
    """Exit code 130, one line, and no trace of the output; from 'writing' on the file may be whole already: then
    Ctrl-C waited for the move into place (a file is written in one go, then synced, then moved)."""
    output = out_dir / 'sknet50.safetensors'
    proc = _start(sknet50_caffemodel, '--model', 'sknet50', '--output', output)
    moments = {
        'importing': lambda: _numpy_loaded(proc.pid),
        'converting': lambda: _holds_the_caffemodel(proc.pid),
        'writing': lambda: _partial_of_size(out_dir, 1),
        # written in full: what is left is syncing it to disk and moving it to its name
        'moving into place': lambda: _partial_of_size(out_dir, reference.stat().st_size),
    }
    code, err = _interrupt_when(proc, moments[moment])
    assert (code, err) == (130, INTERRUPTED) or (moment == 'moving into place' and code == 0), (code, err)
    assert _partial_files(out_dir) == []
    if moment in ('importing', 'converting'):
        assert os.listdir(out_dir) == []
    elif os.listdir(out_dir):  # the move was done when Ctrl-C came: the whole file, nothing else
        assert os.listdir(out_dir) == ['sknet50.safetensors'] and _conversion(output) == _conversion(reference)


@pytest.mark.parametrize('moment', ['converting', 'writing'])
def test_ctrl_c_during_install_leaves_no_store_folder(moment, sknet50_caffemodel, reference, tmp_path):
    """The store did not exist: it is gone again, unless Ctrl-C came once the slot was moved into place."""
    store = tmp_path / 'store'
    proc = _start(sknet50_caffemodel, '--model', 'sknet50', '--install', env={'TIMM_SKNET_HOME': str(store)})
    moments = {'converting': lambda: _holds_the_caffemodel(proc.pid), 'writing': lambda: _partial_of_size(store, 1)}
    assert _interrupt_when(proc, moments[moment]) == (130, INTERRUPTED)
    if moment == 'converting' or not (store / SLOT).exists():
        assert not store.exists()
    else:
        assert sorted(os.listdir(store / SLOT)) == ['install.json', 'model.safetensors']
        assert _conversion(store / SLOT / 'model.safetensors') == _conversion(reference)
        assert _partial_files(store) == []


# -- names ---------------------------------------------------------------------------------------------------

def test_an_output_name_at_the_limit(sknet50_caffemodel, reference, out_dir, convert_caffe):
    name = 'n' * (os.pathconf(out_dir, 'PC_NAME_MAX') - len('.safetensors')) + '.safetensors'
    code, _, err = convert_caffe(sknet50_caffemodel, '--model', 'sknet50', '--output', out_dir / name)
    assert code == 0, err
    assert os.listdir(out_dir) == [name] and _conversion(out_dir / name) == _conversion(reference)


def test_an_output_name_past_the_limit(sknet50_caffemodel, out_dir, refused):
    limit = os.pathconf(out_dir, 'PC_NAME_MAX')
    name = 'n' * (limit + 1 - len('.safetensors')) + '.safetensors'
    err = refused(sknet50_caffemodel, '--model', 'sknet50', '--output', out_dir / name)
    assert err == (f'convert-caffe: error: the name {name} is {limit + 1} bytes long, more than the {limit} its file '
                   'system allows; choose a shorter name')


def test_a_store_folder_name_past_the_limit(sknet50_caffemodel, tmp_path, out_dir, monkeypatch, refused):
    store = out_dir / ('s' * 300)
    monkeypatch.setenv('TIMM_SKNET_HOME', str(store))
    err = refused(sknet50_caffemodel, '--model', 'sknet50', '--install')
    assert err.startswith(f'convert-caffe: error: the name {store.name} is 300 bytes long')


def test_a_caffemodel_name_past_the_limit(tmp_path, out_dir, refused):
    caffemodel = tmp_path / ('c' * 300)
    err = refused(caffemodel, '--model', 'sknet50', '--output', out_dir / 'w.safetensors')
    assert err == (f'convert-caffe: error: cannot read caffemodel {caffemodel}: File name too long; check the path '
                   'and its permissions')


def test_names_that_are_not_utf8(sknet50_caffemodel, reference, out_dir):
    """Names are bytes on Linux: a caffemodel named in Latin-1 converts like any other; the output records its name
    with the byte escaped (safetensors headers are UTF-8), and messages show it so. An output named so is refused
    before any work: safetensors, and so timm, cannot open a path that is not UTF-8."""
    caffemodel = os.path.join(os.fsencode(out_dir.parent), b'SKNet-50-caf\xe9.caffemodel')
    os.link(sknet50_caffemodel, caffemodel)
    output = os.path.join(os.fsencode(out_dir), b'sknet50-caf\xc3\xa9.safetensors')  # UTF-8
    proc = subprocess.run([os.fsencode(CONVERT_CAFFE), caffemodel, b'--model', b'sknet50', b'--output', output],
                          capture_output=True)
    assert proc.returncode == 0, proc.stderr
    assert os.listdir(os.fsencode(out_dir)) == [b'sknet50-caf\xc3\xa9.safetensors']
    assert b'SKNet-50-caf\\xe9.caffemodel: 102 weighted layers' in proc.stdout
    assert _source_file(Path(os.fsdecode(output))) == 'SKNet-50-caf\\xe9.caffemodel'

    latin1_output = os.path.join(os.fsencode(out_dir), b'sknet50-caf\xe9.safetensors')
    proc = subprocess.run([os.fsencode(CONVERT_CAFFE), caffemodel, b'--model', b'sknet50', b'--output', latin1_output],
                          capture_output=True)
    assert proc.returncode == 2 and proc.stdout == b''
    assert proc.stderr == (b'convert-caffe: error: ' + latin1_output.replace(b'\xe9', b'\\xe9') + b' is not a UTF-8 '
                           b'path, and safetensors (so timm) opens only those; rename it, or the folder on its way '
                           b'that is not UTF-8\n')
    assert os.listdir(os.fsencode(out_dir)) == [b'sknet50-caf\xc3\xa9.safetensors']


def test_messages_show_the_bytes_of_names_that_are_not_utf8(tmp_path):
    """Every way a name reaches a message shows its bytes as \\xNN (the README's promise), never Python's \\udcNN:
    a command's one line, the text of a UserError wherever it is shown (str(), a traceback), a printed line."""
    missing = os.path.join(os.fsencode(tmp_path), b'caf\xe9.caffemodel')
    proc = subprocess.run([os.fsencode(CONVERT_CAFFE), missing, b'--model', b'sknet50', b'--output', b'x.safetensors'],
                          capture_output=True)
    shown = missing.replace(b'\xe9', b'\\xe9')
    assert proc.stderr == b'convert-caffe: error: caffemodel ' + shown + b' does not exist\n'
    traceback = subprocess.run(
        [os.fsencode(sys.executable), b'-c', b'import sys; from timm_sknet.io.errors import UserError; '
         b'raise UserError(f"cannot read {sys.argv[1]}")', b'caf\xe9'], capture_output=True)
    assert traceback.stderr.splitlines()[-1] == b'timm_sknet.io.errors.UserError: cannot read caf\\xe9'
    assert b'udc' not in proc.stderr + traceback.stderr


# -- a full disk, and --force ---------------------------------------------------------------------------------

def test_a_file_size_limit_during_install_leaves_no_store_folder(sknet50_caffemodel, tmp_path):
    """The 110 MB copy against a 20 MB file-size limit (as on a full disk, the write fails with EFBIG)."""
    store = tmp_path / 'store'

    def limit_file_size():
        resource.setrlimit(resource.RLIMIT_FSIZE, (20 << 20, 20 << 20))
    proc = subprocess.run([str(CONVERT_CAFFE), str(sknet50_caffemodel), '--model', 'sknet50', '--install'],
                          capture_output=True, text=True, preexec_fn=limit_file_size,
                          env=dict(os.environ, TIMM_SKNET_HOME=str(store)))
    assert proc.returncode == 2
    assert proc.stderr == (f'convert-caffe: error: could not write {store / SLOT / "model.safetensors"}: File too '
                           'large; a file-size limit (ulimit -f) or the file system caps its size; write it elsewhere '
                           '(nothing was written)\n')
    assert not store.exists()


def test_install_force_replaces_an_installed_copy_but_no_other_file(sknet50_caffemodel, tmp_path, monkeypatch,
                                                                     convert_caffe):
    store = tmp_path / 'store'
    monkeypatch.setenv('TIMM_SKNET_HOME', str(store))
    code, _, err = convert_caffe(sknet50_caffemodel, '--model', 'sknet50', '--install')
    assert code == 0, err
    (store / SLOT / 'notes.txt').write_text('my notes on this copy')
    before = _checksums(store)
    code, _, err = convert_caffe(sknet50_caffemodel, '--model', 'sknet50', '--install', '--force')
    assert code == 2 and err == (f'convert-caffe: error: {store / SLOT} holds files an install did not write (e.g. '
                                 'notes.txt); --force replaces only installed copies: move them out of the store '
                                 'first\n')
    assert _checksums(store) == before

    (store / SLOT / 'notes.txt').unlink()
    code, _, err = convert_caffe(sknet50_caffemodel, '--model', 'sknet50', '--install', '--force')
    assert code == 0, err
    assert sorted(os.listdir(store / SLOT)) == ['install.json', 'model.safetensors']
    assert _partial_files(store) == []


def test_output_force_replaces_the_file_only(sknet50_caffemodel, reference, out_dir, convert_caffe):
    (out_dir / 'other.txt').write_text('mine')
    output = out_dir / 'sknet50.safetensors'
    output.write_bytes(b'an older conversion')
    code, _, err = convert_caffe(sknet50_caffemodel, '--model', 'sknet50', '--output', output, '--force')
    assert code == 0, err
    assert sorted(os.listdir(out_dir)) == ['other.txt', 'sknet50.safetensors']
    assert (out_dir / 'other.txt').read_text() == 'mine' and _conversion(output) == _conversion(reference)

"""Where convert-caffe writes: a .safetensors file (never a directory), with the mode of any new file, and a
failed write (file-size limit, permissions) is one line naming the cause and the path, with nothing left behind."""
import os
import resource
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.numpy import load_file

CONVERT_CAFFE = Path(sys.executable).parent / 'convert-caffe'


def _args(caffemodel, output):
    return caffemodel, '--model', 'sknet50', '--output', output


def test_a_directory_is_refused_even_with_force(sknet50_caffemodel, out_dir, refused):
    err = refused(*_args(sknet50_caffemodel, out_dir), '--force')
    assert err == (f'convert-caffe: error: {out_dir} is a directory; give the path of a file to write '
                   '(inside it, for example)')


@pytest.mark.parametrize('name, suggestion', [
    ('w.pt', 'w.safetensors'), ('sknet50', 'sknet50.safetensors'), ('w.SAFETENSORS', 'w.safetensors'),
    ('sknet50.safetensors.bak', 'sknet50.safetensors.safetensors'),
])
def test_a_name_timm_would_unpickle_is_refused(name, suggestion, sknet50_caffemodel, out_dir, refused):
    """timm's load_checkpoint opens any file not ending in .safetensors with torch.load."""
    err = refused(*_args(sknet50_caffemodel, out_dir / name), '--force')
    assert err == (f'convert-caffe: error: {out_dir / name} does not end in .safetensors: timm would open it with '
                   f'torch.load, which unpickles it and fails on safetensors data; name it {out_dir / suggestion}')


def test_something_other_than_a_file_is_not_replaced(sknet50_caffemodel, out_dir, convert_caffe):
    fifo = out_dir / 'pipe.safetensors'
    os.mkfifo(fifo)
    code, _, err = convert_caffe(*_args(sknet50_caffemodel, fifo), '--force')
    assert code != 0 and err.strip() == (f'convert-caffe: error: {fifo} exists and is not a regular file; choose '
                                         'another output path')
    assert stat.S_ISFIFO(fifo.stat().st_mode) and os.listdir(out_dir) == ['pipe.safetensors']


def test_a_directory_as_the_caffemodel(tmp_path, out_dir, refused):
    err = refused(*_args(tmp_path, out_dir / 'out.safetensors'))
    assert err == f'convert-caffe: error: caffemodel {tmp_path} is a directory; give the caffemodel file itself'


@pytest.fixture
def umask():
    """Set the process umask for one test."""
    saved = os.umask(0o022)
    yield os.umask
    os.umask(saved)


@pytest.mark.parametrize('mask, mode', [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_a_new_file_gets_the_mode_of_any_new_file(mask, mode, umask, sknet50_caffemodel, out_dir, convert_caffe):
    """safetensors creates its file 0600 whatever the umask; the output is what open() would have made."""
    umask(mask)
    output = out_dir / 'new.safetensors'
    code, _, err = convert_caffe(*_args(sknet50_caffemodel, output))
    assert code == 0, err
    assert stat.S_IMODE(output.stat().st_mode) == mode
    assert os.listdir(out_dir) == ['new.safetensors']


def test_a_replaced_file_keeps_its_mode(umask, sknet50_caffemodel, out_dir, convert_caffe):
    output = out_dir / 'shared.safetensors'
    output.write_bytes(b'old')
    output.chmod(0o640)
    code, _, err = convert_caffe(*_args(sknet50_caffemodel, output), '--force')
    assert code == 0, err
    assert stat.S_IMODE(output.stat().st_mode) == 0o640 and 'fc.bias' in load_file(output)


def test_a_full_disk_or_file_size_limit(sknet50_caffemodel, out_dir):
    """The 110 MB output against a 20 MB file-size limit (CPython ignores SIGXFSZ, so the write fails with
    EFBIG as it does on a full disk): one line naming the cause and the file, nothing left behind."""
    output = out_dir / 'sknet50.safetensors'

    def limit_file_size():
        resource.setrlimit(resource.RLIMIT_FSIZE, (20 << 20, 20 << 20))
    proc = subprocess.run([str(CONVERT_CAFFE), *map(str, _args(sknet50_caffemodel, output))],
                          capture_output=True, text=True, preexec_fn=limit_file_size)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr == (f'convert-caffe: error: could not write {output}: File too large; a file-size limit '
                           '(ulimit -f) or the file system caps its size; write it elsewhere (nothing was written)\n')
    assert os.listdir(out_dir) == []


def _unwritable_folder(tmp_path) -> Path:
    """A folder this process may not create files in: read-only for a user; for root, who may write anywhere,
    sysfs, where not even root can create a file."""
    if os.geteuid() != 0:
        folder = tmp_path / 'read-only'
        folder.mkdir(mode=0o555)
        return folder
    try:
        os.close(os.open('/sys/convert-caffe-probe', os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except PermissionError:
        return Path('/sys')
    os.unlink('/sys/convert-caffe-probe')
    pytest.skip('running as root on a system where root can create files anywhere, /sys included')


def test_a_folder_without_write_permission(sknet50_caffemodel, tmp_path, convert_caffe):
    """Said before converting where the permission shows (os.access: Permission denied), else when the write fails,
    with the file system's own word (sysfs refuses root a new folder with EPERM); nothing left."""
    folder = _unwritable_folder(tmp_path)
    before = sorted(os.listdir(folder))
    output = folder / 'timm-sknet-test.safetensors'
    try:
        os.mkdir(folder / 'timm-sknet-probe')  # what writing a temporary folder there gets
        os.rmdir(folder / 'timm-sknet-probe')
    except OSError as e:
        cause = e.strerror if os.geteuid() == 0 else 'Permission denied'
    code, _, err = convert_caffe(*_args(sknet50_caffemodel, output))
    assert code == 2 and err == (f'convert-caffe: error: could not write {output}: {cause}; choose a '
                                 'folder you can write to (nothing was written)\n')
    assert sorted(os.listdir(folder)) == before


def test_one_caffemodel_converts_to_the_same_bytes_every_time(sknet50_caffemodel, out_dir):
    """Two conversions in two processes give one file: safetensors writes its metadata in hash-map order, which the
    converter puts back in key order. A resumed release can then tell unchanged weights from new ones."""
    outputs = [out_dir / f'{run}.safetensors' for run in ('first', 'second')]
    for output in outputs:
        subprocess.run([str(CONVERT_CAFFE), *_args(sknet50_caffemodel, output)], check=True, capture_output=True,
                       timeout=300)
    first, second = (output.read_bytes() for output in outputs)
    assert first == second
    header = first[8:8 + int.from_bytes(first[:8], 'little')].decode()
    metadata = header[header.index('"__metadata__":{') + 16:header.index('}')]
    keys = [item.split('":"')[0].strip('"') for item in metadata.split('","')]
    assert keys == sorted(keys) and 'source_sha256' in keys

"""Every command that writes, pointed at a read-only file system: one line naming that cause (not "Permission
denied", which even root would not be told), before any work, nothing written.

Each command runs in a mount namespace of its own (``unshare -m``) in which a prepared folder is bind-mounted
read-only over itself; outside that process the folder stays as it was.
"""
import os
import subprocess
import sys
from pathlib import Path
from typing import Dict, List

import pytest
import timm
import torch
from PIL import Image
from safetensors.torch import save_file

from converters.caffe.writer import write_caffemodel
from timm_sknet.io.files import sha256_file

BIN = Path(sys.executable).parent
READ_ONLY = 'Read-only file system; choose a folder on a file system mounted read-write (nothing was written)'
# mounts FOLDER read-only over itself in a new mount namespace, then runs the command
_READ_ONLY_RUN = 'mount --bind "$1" "$1" && mount -o remount,bind,ro "$1" && shift && exec "$@"'


def _can_mount() -> str:
    """Empty when this process may make a mount namespace and mount in it (root, or CAP_SYS_ADMIN), else why not."""
    try:
        probe = subprocess.run(['unshare', '-m', 'sh', '-c', 'mount -t tmpfs none /mnt'], capture_output=True,
                               text=True, timeout=30)
    except FileNotFoundError:
        return 'unshare (util-linux) is not installed'
    return '' if probe.returncode == 0 else f'cannot mount in a new mount namespace: {probe.stderr.strip()}'


pytestmark = pytest.mark.skipif(bool(_can_mount()), reason=_can_mount() or 'mounting works')


@pytest.fixture(scope='module')
def inputs(tmp_path_factory) -> Dict[str, Path]:
    """A release-format sknet50 caffemodel, its weights as a converter writes them, a one-image dataset."""
    folder = tmp_path_factory.mktemp('inputs')
    torch.manual_seed(0)
    model = timm.create_model('sknet50')
    write_caffemodel(model, folder / 'sknet50.caffemodel', folder / 'sknet50.prototxt')
    save_file(model.state_dict(), str(folder / 'sknet50.safetensors'), metadata={'model_name': 'sknet50'})
    (folder / 'data' / 'n01440764').mkdir(parents=True)
    Image.new('RGB', (64, 64), (200, 30, 30)).save(folder / 'data' / 'n01440764' / '0.JPEG')
    (folder / 'classes.txt').write_text('n01440764\n')
    return {'caffemodel': folder / 'sknet50.caffemodel', 'weights': folder / 'sknet50.safetensors',
            'data': folder / 'data', 'class_map': folder / 'classes.txt'}


def _listing(root: Path) -> Dict[str, str]:
    return {str(p.relative_to(root)): sha256_file(p) if p.is_file() else 'folder' for p in sorted(root.rglob('*'))}


def _run_read_only(folder: Path, argv: List[str], env: Dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(['unshare', '-m', 'sh', '-c', _READ_ONLY_RUN, 'sh', str(folder), *argv], env=env,
                          capture_output=True, text=True, timeout=300)


CASES = {  # name -> (program, its arguments, what it would write); RO is the read-only folder
    'convert --output': ('convert-caffe', ['{caffemodel}', '--model', 'sknet50', '--output', 'RO/w.safetensors'],
                         'RO/w.safetensors'),
    'convert --install, new store': ('convert-caffe', ['{caffemodel}', '--model', 'sknet50', '--install'],
                                     'RO/new-store/sknet50.caffe_in1k/model.safetensors'),
    'convert --install --force, installed copy': (
        'convert-caffe', ['{caffemodel}', '--model', 'sknet50', '--install', '--force'],
        'RO/store/sknet50.caffe_in1k/model.safetensors'),
    'validate -o': ('timm-sknet', ['validate', '{data}', '--model', 'sknet50', '--weights', '{weights}',
                                   '--class-map', '{class_map}', '--workers', '0', '-o', 'RO/results.json'],
                    'RO/results.json'),
    'publish --output-dir, new': ('timm-sknet', ['publish', '--model', 'sknet50', '--weights', '{weights}',
                                                 '--repo-id', 'someone/sknet50.caffe_in1k', '--dry-run',
                                                 '--output-dir', 'RO/repo'], 'RO/repo'),
    'publish --output-dir, empty': ('timm-sknet', ['publish', '--model', 'sknet50', '--weights', '{weights}',
                                                   '--repo-id', 'someone/sknet50.caffe_in1k', '--dry-run',
                                                   '--output-dir', 'RO/empty'], 'RO/empty'),
    'attention --out, new': ('timm-sknet', ['attention', '--model', 'sk_resnet18', '--synthetic', '1', '--workers',
                                            '0', '--out', 'RO/figures'], 'RO/figures'),
    'attention --out, empty': ('timm-sknet', ['attention', '--model', 'sk_resnet18', '--synthetic', '1', '--workers',
                                              '0', '--out', 'RO/empty'], 'RO/empty/units.csv'),
}


@pytest.mark.parametrize('case', CASES)
def test_a_read_only_file_system_is_named_before_any_work(inputs, tmp_path, case):
    program, args, written = CASES[case]
    folder = tmp_path / 'RO'
    (folder / 'empty').mkdir(parents=True)
    slot = folder / 'store' / 'sknet50.caffe_in1k'
    slot.mkdir(parents=True)
    (slot / 'model.safetensors').write_bytes(b'an installed copy')
    before = _listing(folder)
    fill = {name: str(path) for name, path in inputs.items()}
    argv = [str(BIN / program)] + [arg.format(**fill).replace('RO/', f'{folder}/') for arg in args]
    store = 'new-store' if 'new store' in case else 'store'
    env = dict(os.environ, TIMM_SKNET_HOME=str(folder / store), HF_HUB_OFFLINE='1')

    proc = _run_read_only(folder, argv, env)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr == f"{program}: error: could not write {written.replace('RO/', f'{folder}/')}: {READ_ONLY}\n"
    assert proc.stdout == ''  # refused before the work: a conversion, evaluation or analysis prints first
    assert _listing(folder) == before

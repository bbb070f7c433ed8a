"""``timm-sknet validate`` counts only images it decoded: bad data folders and devices, run as the user runs it
(the installed ``timm-sknet`` in a subprocess), each refused in one line with nothing written and the data untouched,
and an unreadable image either stops the run or, when skipped, is named in results that ``publish`` refuses."""
import json
import os
import subprocess
from pathlib import Path
from typing import Dict

import pytest
import timm
from PIL import Image
from safetensors.torch import save_file

from hub_helpers import BIN_DIR
from hub_cards.data import DecodedImages, UnreadableImageError
from hub_cards.protocols import Protocol
from hub_cards.validate import evaluate
from test_validate import IMAGES, NUM_CLASSES, TOP1_CORRECT, TOP5_CORRECT, _colour_classifier, _image
from timm_sknet.io.errors import UserError
from timm_sknet.io.files import sha256_file

RUN_TIMEOUT_S = 300


def _snapshot(root: Path) -> Dict[str, str]:
    """Every file under ``root`` and its sha256: the state a refused run must leave as it found it."""
    return {str(p.relative_to(root)): sha256_file(p) for p in sorted(root.rglob('*')) if p.is_file()}


def _truncated_jpeg(path: Path) -> None:
    """A JPEG cut short, as an interrupted copy leaves it: its header opens, its pixels do not decode."""
    Image.new('RGB', (64, 64), (0, 255, 0)).save(path, format='JPEG')
    path.write_bytes(path.read_bytes()[:300])


def _validate(weights: Path, data: Path, output: Path, *extra: str, model: str = 'sknet26',
              class_map: bool = True, workers: int = 0) -> subprocess.CompletedProcess:
    maps = ['--class-map', str(data / 'classes.txt')] if class_map else []
    return subprocess.run(
        [str(BIN_DIR / 'timm-sknet'), 'validate', '--model', model, '--weights', str(weights), '--input-size', '224',
         '--batch-size', '4', '--workers', str(workers), '--output', str(output), *maps, *extra, str(data)],
        capture_output=True, text=True, timeout=RUN_TIMEOUT_S)


def _assert_refused(proc: subprocess.CompletedProcess, says: str) -> None:
    """One line saying ``says``, last on stderr; before it at most the progress of the work it stopped."""
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.splitlines()
    assert lines[-1].startswith('timm-sknet: error: ') and 'Traceback' not in proc.stderr, proc.stderr
    assert all(line.startswith('decoding and hashing every image: ') for line in lines[:-1]), proc.stderr
    assert says in lines[-1], proc.stderr


@pytest.fixture(scope='module')
def colour_weights(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp('weights') / 'colour.safetensors'
    save_file(_colour_classifier().state_dict(), str(path), metadata={'model_name': 'sknet26'})
    return path


@pytest.fixture
def folder_with_a_bad_jpeg(tmp_path) -> Path:
    """test_validate's eight images, whose top-1/top-5 are known, and a truncated JPEG in class c1."""
    root = tmp_path / 'data'
    for i, (folder, name) in enumerate(IMAGES):
        (root / 'val' / folder).mkdir(parents=True, exist_ok=True)
        _image(name).save(root / 'val' / folder / f'{i}_{name}.png')
    _truncated_jpeg(root / 'val' / 'c1' / 'cut.jpg')
    (root / 'classes.txt').write_text(''.join(f'c{i}\n' for i in range(NUM_CLASSES)))
    return root


@pytest.mark.parametrize('workers', [0, 2])  # decoded in this process, or in a pool of two
def test_unreadable_image_stops_the_run_before_anything_is_written(colour_weights, folder_with_a_bad_jpeg, tmp_path,
                                                                   workers):
    before = _snapshot(folder_with_a_bad_jpeg)
    output = tmp_path / 'results.json'
    proc = _validate(colour_weights, folder_with_a_bad_jpeg, output, workers=workers)
    bad = folder_with_a_bad_jpeg / 'val' / 'c1' / 'cut.jpg'
    _assert_refused(proc, f'1 of {len(IMAGES) + 1} images do not decode, the first {bad} (OSError: ')
    assert '--skip-unreadable' in proc.stderr
    assert not output.exists() and sorted(p.name for p in tmp_path.iterdir()) == ['data']
    assert _snapshot(folder_with_a_bad_jpeg) == before


def test_skipped_image_is_listed_and_not_replaced_by_another(colour_weights, folder_with_a_bad_jpeg, tmp_path):
    """timm's own dataset would count the next image in the bad one's place: the known counts show it did not."""
    output = tmp_path / 'results.json'
    proc = _validate(colour_weights, folder_with_a_bad_jpeg, output, '--skip-unreadable')
    assert proc.returncode == 0, proc.stderr
    results = json.loads(output.read_text())
    assert results['data']['image_count'] == len(IMAGES)
    assert [s['file'] for s in results['data']['skipped']] == ['val/c1/cut.jpg']
    assert results['data']['skipped'][0]['error'].startswith('OSError: ')
    assert ' --skip-unreadable --output ' in results['command']
    (evaluation,) = results['evaluations']
    assert (evaluation['image_count'], evaluation['top1_correct'], evaluation['top5_correct']) == (
        len(IMAGES), TOP1_CORRECT, TOP5_CORRECT)


def test_publish_refuses_results_that_skipped_an_image(tmp_path):
    """Real results of a run that skipped a file, on sknet50 weights with convert-caffe's provenance."""
    data = tmp_path / 'data'
    for name in ('a', 'b'):
        (data / 'c0').mkdir(parents=True, exist_ok=True)
        Image.new('RGB', (64, 64), (40, 90, 200)).save(data / 'c0' / f'{name}.png')
    _truncated_jpeg(data / 'c0' / 'cut.jpg')
    (data / 'classes.txt').write_text(''.join(f'c{i}\n' for i in range(1000)))
    weights = tmp_path / 'sknet50.safetensors'
    provenance = {'source_file': 'SKNet-50.caffemodel', 'source_size': '1', 'source_sha256': 'c' * 64,
                  'model_name': 'sknet50', 'timm_sknet_version': '0', 'timm_version': '0', 'torch_version': '0'}
    save_file(timm.create_model('sknet50').state_dict(), str(weights), metadata=provenance)
    results = tmp_path / 'results.json'
    measured = _validate(weights, data, results, '--skip-unreadable', model='sknet50')
    assert measured.returncode == 0, measured.stderr
    assert [s['file'] for s in json.loads(results.read_text())['data']['skipped']] == ['c0/cut.jpg']
    out = tmp_path / 'repo'
    proc = subprocess.run(
        [str(BIN_DIR / 'timm-sknet'), 'publish', '--model', 'sknet50', '--weights', str(weights), '--repo-id',
         'someone/sknet50.caffe_in1k', '--results', str(results), '--dry-run', '--output-dir', str(out)],
        capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
    _assert_refused(proc, f'{results} skipped 1 unreadable images (the first c0/cut.jpg); replace them')
    assert not out.exists()


def _empty(root: Path) -> None:
    root.mkdir()


def _class_folders_without_images(root: Path) -> None:
    for name in ('c0', 'c1'):
        (root / name).mkdir(parents=True)
        (root / name / 'labels.txt').write_text('not an image')
        (root / name / 'notes.md').write_text('not an image')


def _images_without_class_folders(root: Path) -> None:
    root.mkdir()
    for i in range(3):
        _image('red').save(root / f'{i}.png')


def _one_class_folder_without_images(root: Path) -> None:
    (root / 'c0').mkdir(parents=True)
    _image('red').save(root / 'c0' / '0.png')
    (root / 'c1').mkdir()
    (root / 'c1' / 'README').write_text('images to come')


BAD_FOLDERS = {  # case -> (how the folder is made, what the one line says)
    'empty_folder': (_empty, 'holds no images (.png, .jpg, .jpeg), nothing; expected DATA_DIR/<class>/<image>'),
    'class_folders_without_images': (
        _class_folders_without_images, 'holds no images (.png, .jpg, .jpeg), only 4 other files; expected'),
    'images_without_class_folders': (
        _images_without_class_folders, 'holds 3 images outside class folders (their class is unknown)'),
    'a_class_folder_without_images': (
        _one_class_folder_without_images, '1 class folders of {root} hold no images (.png, .jpg, .jpeg), e.g. c1'),
}


@pytest.mark.parametrize('case', BAD_FOLDERS)
def test_bad_data_folder_is_one_line(colour_weights, tmp_path, case):
    make, says = BAD_FOLDERS[case]
    root = tmp_path / 'data'
    make(root)
    before = _snapshot(root)
    output = tmp_path / 'results.json'
    proc = _validate(colour_weights, root, output, class_map=False)
    _assert_refused(proc, says.format(root=root))
    assert not output.exists()
    assert _snapshot(root) == before


def test_device_that_is_not_here_is_one_line(colour_weights, folder_with_a_bad_jpeg, tmp_path):
    """cuda on a machine without it (skipped where there is one), and a device name torch does not know."""
    import torch
    output = tmp_path / 'results.json'
    devices = {'nonsense': '--device nonsense is not available on this machine ('}
    if not torch.cuda.is_available():
        devices['cuda'] = '--device cuda is not available on this machine ('
    else:
        devices[f'cuda:{torch.cuda.device_count()}'] = f'--device cuda:{torch.cuda.device_count()} is not available'
    for device, says in devices.items():
        proc = _validate(colour_weights, folder_with_a_bad_jpeg, output, '--device', device)
        _assert_refused(proc, says)
        assert proc.stderr.endswith('; pass --device cpu\n')
        assert not output.exists()


def test_image_that_stops_decoding_mid_run_raises_instead_of_being_replaced(tmp_path):
    """The check before the run cannot see a file damaged during it: the dataset raises, in a loader worker too."""
    good, bad = tmp_path / 'good.png', tmp_path / 'bad.jpg'
    _image('red').save(good)
    _truncated_jpeg(bad)
    dataset = DecodedImages([(str(good), 0), (str(bad), 1)])
    assert dataset[0][1] == 0
    with pytest.raises(UnreadableImageError, match=f'{bad} does not decode'):
        dataset[1]
    model = _colour_classifier().eval()
    protocol = Protocol(64, 0.875, model.pretrained_cfg['interpolation'])
    for workers in (0, 1):
        with pytest.raises(UserError) as raised:
            evaluate(model, DecodedImages([(str(good), 0), (str(bad), 1)]), protocol, batch_size=1, workers=workers)
        message = str(raised.value)
        assert '\n' not in message and f'{bad} does not decode (OSError: ' in message
        assert message.endswith('did it change during the run?); nothing was written')


def test_image_whose_bytes_change_mid_run_raises_instead_of_being_counted(tmp_path):
    """An image replaced by another picture that decodes just as well: its sha256 from the check before the run no
    longer holds, and the dataset says so rather than counting the new picture under the old one's name."""
    path = tmp_path / 'red.png'
    _image('red').save(path)
    dataset = DecodedImages([(str(path), 1)], {str(path): sha256_file(path)})
    assert dataset[0][1] == 1
    _image('green').save(path)
    with pytest.raises(UnreadableImageError, match=f'{path} changed: its bytes are not those checked before the run'):
        dataset[0]


def test_names_that_are_not_utf8_are_written_as_their_bytes(colour_weights, folder_with_a_bad_jpeg, tmp_path):
    """A skipped image whose name is not UTF-8: the results (JSON that other tools read) show its bytes as \\xNN,
    never Python's \\udcNN surrogate escape."""
    odd = folder_with_a_bad_jpeg / 'val' / 'c1' / os.fsdecode(b'cut-\xff.jpg')
    (folder_with_a_bad_jpeg / 'val' / 'c1' / 'cut.jpg').rename(odd)
    output = tmp_path / 'results.json'
    proc = _validate(colour_weights, folder_with_a_bad_jpeg, output, '--skip-unreadable')
    assert proc.returncode == 0, proc.stderr
    text = output.read_text(encoding='utf-8')
    assert '\\udc' not in text
    assert [s['file'] for s in json.loads(text)['data']['skipped']] == ['val/c1/cut-\\xff.jpg']

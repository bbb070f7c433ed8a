"""Kernel-selection capture, the zoom protocol and the ``timm-sknet attention`` outputs."""
import argparse
import csv
import json
import subprocess
import sys

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from safetensors.torch import save_file
from timm.data import create_transform, resolve_data_config

from timm_sknet.analysis.attention import capture_selection, sk_units, zoom_transform
from timm_sknet.cli import attention as attention_cli  # importing timm_sknet registers the models
from timm_sknet.cli.commands import ATTENTION
from timm_sknet.io.errors import UserError
from timm_sknet.io.files import sha256_file
from timm_sknet.io.synthetic import synthetic_images

IMG_SIZE = 64
SCALES = (1.0, 1.5, 2.0)


def _attention_cli(argv) -> int:
    parser = argparse.ArgumentParser()
    ATTENTION.configure_parser(parser)
    return attention_cli.run(parser.parse_args([str(a) for a in argv]))


def _read_csv(path):
    with open(path, newline='') as f:
        return list(csv.DictReader(f))


def _hook_count(model) -> int:
    return sum(len(m._forward_hooks) for m in model.modules())


@pytest.fixture(scope='module')
def image_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp('images')
    for i, image in enumerate(synthetic_images(5, size=96, seed=3)):
        folder = root / ('cls_a' if i < 3 else 'cls_b')
        folder.mkdir(exist_ok=True)
        image.save(folder / f'{i}.png')
    return root


def test_unit_names_follow_the_papers_stage_numbering():
    units = sk_units(timm.create_model('sknet50'))
    names = [u.name for u in units]
    assert len(names) == 16
    assert names[:3] == ['SK_2_1', 'SK_2_2', 'SK_2_3'] and names[-1] == 'SK_5_3'
    by_name = {u.name: u for u in units}
    assert by_name['SK_2_1'].module_name == 'layer1.0.conv2'
    assert by_name['SK_3_4'].module_name == 'layer2.3.conv2'
    assert by_name['SK_4_6'].module_name == 'layer3.5.conv2'
    assert (by_name['SK_3_4'].stage, by_name['SK_3_4'].index, by_name['SK_3_4'].channels) == (3, 4, 256)
    assert all(u.kernel_sizes == (3, 5) for u in units)  # the release's 3x3 dilation 2 is the "5x5"

    cifar = [u.name for u in sk_units(timm.create_model('sknet29_cifar'))]
    assert cifar == [f'SK_{s}_{i}' for s in (2, 3, 4) for i in (1, 2, 3)]
    basic = sk_units(timm.create_model('sk_resnet18'))
    assert [u.module_name for u in basic][:2] == ['layer1.0.conv1', 'layer1.1.conv1']


@pytest.mark.parametrize('model_name, kwargs, num_paths', [
    ('sk_resnet18', {}, 2),
    ('sk_resnet18', {'kernel_size': (3, 5, 7), 'split_input': False}, 3),
    ('sknet26', {}, 2),
])
def test_capture_sums_to_one_and_leaves_outputs_unchanged(model_name, kwargs, num_paths):
    torch.manual_seed(0)
    model = timm.create_model(model_name, **kwargs).eval()
    x = torch.randn(2, 3, IMG_SIZE, IMG_SIZE)
    with torch.no_grad():
        reference = model(x)
        with capture_selection(model) as selection:
            captured = model(x)
    assert torch.equal(captured, reference)
    assert _hook_count(model) == 0
    assert [u.name for u in selection.units] == list(selection.weights)
    for unit in selection.units:
        weights = selection.weights[unit.name]
        assert weights.shape == (2, num_paths, unit.channels)
        assert (weights >= 0).all()
        torch.testing.assert_close(weights.sum(1), torch.ones(2, unit.channels), rtol=0, atol=1e-6)
    if num_paths == 3:
        assert selection.units[0].kernel_sizes == (3, 5, 7) and selection.units[0].largest_path == 2

    recorded = {k: v.clone() for k, v in selection.weights.items()}
    with torch.no_grad():
        model(torch.randn(1, 3, IMG_SIZE, IMG_SIZE))  # after exit: nothing is recorded any more
    assert all(torch.equal(recorded[k], selection.weights[k]) for k in recorded)


def test_capture_removes_its_hooks_when_the_forward_fails():
    model = timm.create_model('sk_resnet18').eval()
    with pytest.raises(RuntimeError):
        with capture_selection(model):
            assert _hook_count(model) == len(sk_units(model))
            model(torch.randn(1, 5, IMG_SIZE, IMG_SIZE))  # wrong channel count
    assert _hook_count(model) == 0


def test_capture_rejects_models_without_sk_attention():
    with pytest.raises(ValueError, match='no SK units'):
        capture_selection(timm.create_model('resnet18'))
    with pytest.raises(ValueError, match='no SK units'):
        capture_selection(timm.create_model('sk_resnet18', sk_attention=False))


@pytest.mark.parametrize('model_name', ['sknet50.caffe_in1k', 'sk_resnet18'])
def test_zoom_at_scale_one_is_the_eval_preprocessing(model_name):
    data_config = resolve_data_config(model=timm.create_model(model_name))
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (150, 230, 3), dtype=np.uint8))
    assert torch.equal(zoom_transform(data_config, 1.0)(image), create_transform(**data_config)(image))


@pytest.mark.parametrize('scale', [1.0, 1.5, 2.0, 3.0])
def test_zoom_geometry(scale):
    # pixel (x, y) holds the value (x, y): the output then shows which source position each pixel samples
    width, height = 256, 192
    xs = np.broadcast_to(np.arange(width, dtype=np.uint8)[None], (height, width))
    ys = np.broadcast_to(np.arange(height, dtype=np.uint8)[:, None], (height, width))
    image = Image.fromarray(np.stack([xs, ys, np.zeros_like(xs)], -1))
    data_config = dict(input_size=(3, IMG_SIZE, IMG_SIZE), crop_pct=0.875, crop_mode='center',
                       interpolation='bilinear', mean=(0, 0, 0), std=(1 / 255,) * 3)
    out = zoom_transform(data_config, scale)(image).numpy()
    assert out.shape == (3, IMG_SIZE, IMG_SIZE)

    # the crop box: centred, side = (side of the 1.0x box) / scale, the 1.0x box being crop_pct of the
    # shorter side (H / floor(H / crop_pct) of it exactly)
    box_side = height * IMG_SIZE / (np.floor(IMG_SIZE / 0.875) * scale)
    centres = (np.arange(IMG_SIZE) + 0.5) * box_side / IMG_SIZE - box_side / 2 - 0.5
    # torchvision resizes and crops in whole pixels (up to one resized pixel off), outputs round to uint8
    tolerance = box_side / IMG_SIZE + 0.5
    assert np.abs(out[0] - (width / 2 + centres)[None]).max() <= tolerance
    assert np.abs(out[1] - (height / 2 + centres)[:, None]).max() <= tolerance


def test_zoom_rejects_zoom_out():
    data_config = resolve_data_config(model=timm.create_model('sk_resnet18'))
    with pytest.raises(ValueError, match='>= 1'):
        zoom_transform(data_config, 0.5)


def test_synthetic_images_are_reproducible():
    first, second = synthetic_images(2, size=48, seed=5), synthetic_images(2, size=48, seed=5)
    assert [im.size for im in first] == [(48, 48)] * 2
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(first, second))
    assert not np.array_equal(np.asarray(first[0]), np.asarray(first[1]))


def _direct_differences(model_name, model_kwargs, state_dict, images):
    """Per image (images, scales, units) and per-channel attention straight from capture_selection."""
    model = timm.create_model(model_name, **model_kwargs).eval()
    model.load_state_dict(state_dict)
    data_config = resolve_data_config({'img_size': IMG_SIZE}, model=model)
    zooms = [zoom_transform(data_config, s) for s in SCALES]
    views = torch.stack([torch.stack([zoom(im) for zoom in zooms]) for im in images])
    with torch.no_grad(), capture_selection(model) as selection:
        model(views.flatten(0, 1))
    weights = {k: v.double().numpy().reshape(len(images), len(SCALES), *v.shape[1:])
               for k, v in selection.weights.items()}
    # the largest kernel is the last path, the smallest the first, in these models
    diffs = {k: (w[:, :, -1] - w[:, :, 0]).mean(-1) for k, w in weights.items()}
    return diffs, weights


@pytest.mark.parametrize('model_kwargs', [{}, {'kernel_size': (3, 5, 7), 'split_input': False}])
def test_cli_numbers_equal_a_direct_computation(tmp_path, image_dir, model_kwargs):
    torch.manual_seed(123)
    trained = timm.create_model('sk_resnet18', **model_kwargs).state_dict()
    weights_file = tmp_path / 'w.safetensors'
    save_file(trained, weights_file)
    out = tmp_path / 'out'
    kwargs_args = ['--model-kwargs', 'kernel_size=(3,5,7)', '--model-kwargs', 'split_input=False'] if model_kwargs else []
    assert _attention_cli([
        '--model', 'sk_resnet18', *kwargs_args, '--weights', weights_file, '--img-size', IMG_SIZE,
        '--scales', ','.join(map(str, SCALES)), '--workers', 0, '--batch-size', 8, '--units', 'SK_3_2', '--out', out,
        image_dir]) == 0  # the positional after the list options is not swallowed

    images = [Image.open(p).convert('RGB') for p in sorted(image_dir.rglob('*.png'))]
    diffs, weights = _direct_differences('sk_resnet18', model_kwargs, trained, images)
    rows = _read_csv(out / 'units.csv')
    assert len(rows) == len(diffs) * len(SCALES)
    for row in rows:
        per_image = diffs[row['unit']][:, SCALES.index(float(row['scale']))]
        assert int(row['images']) == len(images)
        assert float(row['mean_difference']) == pytest.approx(per_image.mean(), rel=1e-12, abs=1e-15)
        assert float(row['std_difference']) == pytest.approx(per_image.std(), rel=1e-9, abs=1e-15)
        assert (int(row['large_kernel']), int(row['small_kernel'])) == ((7 if model_kwargs else 5), 3)

    channel_rows = _read_csv(out / 'channels.csv')
    expected = weights['SK_3_2'].mean(0)  # (scales, paths, channels)
    assert len(channel_rows) == expected.size
    for row in channel_rows:
        value = expected[SCALES.index(float(row['scale'])), int(row['path']), int(row['channel'])]
        assert float(row['mean_attention']) == pytest.approx(value, rel=1e-12)

    summary = json.loads((out / 'attention.json').read_text())
    assert summary['weights'] == {'path': str(weights_file), 'sha256': sha256_file(weights_file)}
    assert summary['images'] == len(images) and summary['scales'] == list(SCALES)
    unit = next(u for u in summary['units'] if u['name'] == 'SK_4_1')
    np.testing.assert_allclose(unit['mean_difference'], diffs['SK_4_1'].mean(0), rtol=1e-12)

    with Image.open(out / 'units.png') as png:
        assert png.size == (800, 400)
    with Image.open(out / 'channels.png') as png:
        assert png.size == (800, 300)


def test_cli_per_class(tmp_path, image_dir):
    out = tmp_path / 'out'
    assert _attention_cli([
        '--per-class', image_dir, '--model', 'sk_resnet18', '--img-size', IMG_SIZE,
        '--scales', ','.join(map(str, SCALES)),
        '--workers', 0, '--out', out]) == 0
    torch.manual_seed(0)
    state_dict = timm.create_model('sk_resnet18').state_dict()  # the CLI's random init, seed 0
    images = [Image.open(p).convert('RGB') for p in sorted(image_dir.rglob('*.png'))]
    diffs, _ = _direct_differences('sk_resnet18', {}, state_dict, images)
    targets = np.array([0, 0, 0, 1, 1])

    rows = _read_csv(out / 'classes.csv')
    assert {r['class_name'] for r in rows} == {'cls_a', 'cls_b'}
    assert len(rows) == 2 * len(diffs) * len(SCALES)
    for row in rows:
        per_image = diffs[row['unit']][targets == int(row['class_index']), SCALES.index(float(row['scale']))]
        assert int(row['images']) == len(per_image)
        assert float(row['mean_difference']) == pytest.approx(per_image.mean(), rel=1e-12, abs=1e-15)

    summary = json.loads((out / 'attention.json').read_text())
    assert summary['weights'] == 'random-init weights (untrained, seed 0)'
    assert summary['classes'] == ['cls_a', 'cls_b']
    num_plotted = 4  # default: the last unit of each stage
    with Image.open(out / 'classes.png') as png:
        assert png.size == (1000, 300 * num_plotted)
    with Image.open(out / 'channels.png') as png:
        assert png.size == (800, 300 * num_plotted)


def _base_args(out):
    return ['--model', 'sk_resnet18', '--img-size', IMG_SIZE, '--workers', 0, '--out', out]


@pytest.mark.parametrize('extra, message', [
    ([], 'no images given'),
    (['--synthetic', 1, '--model', 'nosuchnet'], 'not a timm_sknet SK model'),
    (['--synthetic', 1, '--model', 'resnet18'], 'not a timm_sknet SK model'),
    (['--synthetic', 1, '--scales', '1.0,0.5'], 'not a zoom-in factor'),
    (['--synthetic', 1, '--scales', 'nan'], 'not a zoom-in factor'),
    (['--synthetic', 1, '--scales', '1.0,1.0'], 'lists a scale twice'),
    (['--synthetic', 1, '--units', 'SK_9_9'], 'SK_9_9 not in sk_resnet18'),
    (['--synthetic', 1, '--batch-size', 0], '--batch-size must be at least 1'),
    (['--synthetic', 1, '--device', 'abacus'], 'not a torch device'),
    (['--per-class'], '--per-class needs exactly one IMAGE'),
])
def test_cli_user_errors(tmp_path, extra, message):
    out = tmp_path / 'out'
    with pytest.raises(UserError, match=message):
        _attention_cli(_base_args(out) + extra)
    assert not out.exists()


def test_cli_unreadable_and_missing_images(tmp_path, image_dir):
    broken = tmp_path / 'broken.jpg'
    broken.write_bytes(b'not a jpeg')
    out = tmp_path / 'out'
    with pytest.raises(UserError, match='cannot read image .*broken.jpg'):
        _attention_cli([image_dir / 'cls_a' / '0.png', broken] + _base_args(out))
    with pytest.raises(UserError, match='does not exist'):
        _attention_cli([tmp_path / 'absent.png'] + _base_args(out))
    empty = tmp_path / 'empty'
    empty.mkdir()
    with pytest.raises(UserError, match='no images found'):
        _attention_cli([empty] + _base_args(out))
    assert not out.exists()


def test_cli_refuses_existing_outputs_and_bad_weights(tmp_path):
    out = tmp_path / 'out'
    out.mkdir()
    (out / 'units.csv').write_text('keep me')
    with pytest.raises(UserError, match='--force'):
        _attention_cli(['--synthetic', 1] + _base_args(out))
    assert (out / 'units.csv').read_text() == 'keep me'

    not_safetensors = tmp_path / 'w.safetensors'
    not_safetensors.write_bytes(b'\x00' * 64)
    with pytest.raises(UserError, match='is not a readable safetensors file'):
        _attention_cli(['--synthetic', 1, '--weights', not_safetensors, '--force'] + _base_args(out))
    other_model = tmp_path / 'r34.safetensors'
    save_file(timm.create_model('sk_resnet34').state_dict(), other_model)
    with pytest.raises(UserError, match='does not fit sk_resnet18'):
        _attention_cli(['--synthetic', 1, '--weights', other_model, '--force'] + _base_args(out))
    assert sorted(p.name for p in out.iterdir()) == ['units.csv']


def test_cli_needs_the_plots_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, 'matplotlib', None)  # import matplotlib now raises ImportError
    with pytest.raises(UserError, match=r"pip install 'timm-sknet\[plots\]'"):
        _attention_cli(['--synthetic', 1] + _base_args(tmp_path / 'out'))


def test_console_script_prints_one_line(tmp_path):
    result = subprocess.run(
        [sys.executable, '-c', 'from timm_sknet.cli import main; main()', 'attention', '--model', 'sk_resnet18',
         '--synthetic', '1', '--scales', '0.5', '--out', str(tmp_path / 'out')],
        capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.startswith('timm-sknet: error: --scales: 0.5 is not a zoom-in factor')
    assert len(result.stderr.strip().splitlines()) == 1

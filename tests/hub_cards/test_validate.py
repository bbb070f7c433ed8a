"""``timm-sknet validate`` on a generated ImageFolder, with a model whose prediction for each image is known."""
import json
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

import timm_sknet
from hub_cards.validate import validation_protocols
from timm_sknet.io.files import sha256_file

from support import run_cli

NUM_CLASSES = 10
BACKGROUND, RED, GREEN, BLUE, WHITE = range(5)
SIDE = 256
BORDER = 10  # inside the 0.875 centre crop's margin at 224 (16 px) and at 320 (22 of 365 px)

COLOURS = {
    'black': (0, 0, 0), 'red': (255, 0, 0), 'green': (0, 255, 0), 'white': (255, 255, 255),
}
# (class folder, image): the hand-set classifier predicts background for black (its logits are the biases,
# background > c5 > c6 > c7 > c8 > c9 > the colour classes), the colour for a uniform colour, white second
# for red; the red border lies outside the centre crop, so a correct crop sees black.
IMAGES = [
    ('c0', 'black'),       # top-1
    ('c0', 'red_border'),  # top-1, only if the crop removes the border
    ('c1', 'red'),         # top-1
    ('c1', 'green'),       # miss: red scores lowest for green
    ('c4', 'white'),       # top-1
    ('c4', 'red'),         # top-5: white is second for red
    ('c7', 'black'),       # top-5: background, c5, c6, c7, c8
    ('c9', 'black'),       # miss
]
TOP1_CORRECT, TOP5_CORRECT = 4, 6


def _colour_classifier() -> torch.nn.Module:
    """sknet26 whose pooled features 0..2 are the ReLU'd normalised mean RGB of the crop, then a hand-set fc.

    Every residual branch is zeroed (last BN gamma = beta = 0), the stem conv and each downsample copy
    channels 0..2 and every BN is the identity, so only the colour reaches the classifier.
    """
    model = timm.create_model('sknet26', num_classes=NUM_CLASSES)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.weight.fill_(1), module.bias.zero_(), module.running_mean.zero_(), module.running_var.fill_(1)
        for stage in (model.layer1, model.layer2, model.layer3, model.layer4):
            for block in stage:
                block.conv3.bn.weight.zero_()
                block.conv3.bn.bias.zero_()
                if block.downsample is not None:
                    copy = block.downsample[0].weight
                    copy.zero_()
                    copy[:3, :3, 0, 0] = torch.eye(3)
        model.conv1.weight.zero_()
        model.conv1.weight[:3, :3, 3, 3] = torch.eye(3)
        model.fc.weight.zero_()
        model.fc.weight[RED, :3] = torch.tensor([10., -10., -10.])
        model.fc.weight[GREEN, :3] = torch.tensor([-10., 10., -10.])
        model.fc.weight[BLUE, :3] = torch.tensor([-10., -10., 10.])
        model.fc.weight[WHITE, :3] = torch.tensor([5., 5., 5.])
        model.fc.bias.copy_(torch.tensor([1., 0., 0., 0., 0., .9, .8, .7, .6, .5]))
    return model


def _image(name: str) -> Image.Image:
    if name == 'red_border':
        pixels = np.zeros((SIDE, SIDE, 3), np.uint8)
        pixels[:BORDER, :, 0] = pixels[-BORDER:, :, 0] = pixels[:, :BORDER, 0] = pixels[:, -BORDER:, 0] = 255
        return Image.fromarray(pixels)
    return Image.new('RGB', (SIDE, SIDE), COLOURS[name])


@pytest.fixture(scope='module')
def colour_weights(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp('weights') / 'colour.safetensors'
    save_file(_colour_classifier().state_dict(), str(path), metadata={'model_name': 'sknet26'})
    return path


@pytest.fixture(scope='module')
def image_folder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp('imagefolder')
    for i, (folder, name) in enumerate(IMAGES):
        (root / 'val' / folder).mkdir(parents=True, exist_ok=True)
        _image(name).save(root / 'val' / folder / f'{i}_{name}.png')
    class_map = root / 'classes.txt'
    class_map.write_text(''.join(f'c{i}\n' for i in range(NUM_CLASSES)))
    return root


def test_validate_known_top1_top5(monkeypatch, tmp_path, colour_weights, image_folder, capsys):
    output = tmp_path / 'results.json'
    code = run_cli(  # the data folder last: the list option before it takes one value
        monkeypatch, 'validate', '--model', 'sknet26', '--weights', str(colour_weights), '--input-size', '224,320',
        '--class-map', str(image_folder / 'classes.txt'), '--batch-size', '3', '--workers', '0', '--device', 'cpu',
        '--output', str(output), str(image_folder))
    assert code == 0
    results = json.loads(output.read_text())
    assert results['model'] == 'sknet26'
    assert results['weights']['sha256'] == sha256_file(colour_weights)
    assert results['weights']['size'] == colour_weights.stat().st_size
    data = results['data']
    assert {k: v for k, v in data.items() if k != 'sha256'} == {
        'dir': str(image_folder.resolve()), 'image_count': len(IMAGES), 'num_classes': 5,
        'class_map': str(image_folder / 'classes.txt'), 'skipped': []}
    assert len(data['sha256']) == 64
    assert [e['input_size'] for e in results['evaluations']] == [[3, 224, 224], [3, 320, 320]]
    assert [e['protocol'] for e in results['evaluations']] == ['224 crop_pct 0.875', '320 crop_pct 0.875']
    for evaluation in results['evaluations']:
        assert evaluation['crop_pct'] == 0.875 and evaluation['crop_mode'] == 'center'
        assert evaluation['image_count'] == len(IMAGES)
        assert (evaluation['top1_correct'], evaluation['top5_correct']) == (TOP1_CORRECT, TOP5_CORRECT)
        assert evaluation['top1'] == 100 * TOP1_CORRECT / len(IMAGES)
        assert evaluation['top5'] == 100 * TOP5_CORRECT / len(IMAGES)
    assert results['command'].startswith('timm-sknet validate --model sknet26 --weights ')
    assert '--input-size 224,320' in results['command']
    assert results['versions']['timm'] == timm.__version__
    assert results['versions']['torch'] == torch.__version__
    assert results['versions']['timm_sknet'] == timm_sknet.__version__
    assert 'top-1 50.000%, top-5 75.000% on 8 images' in capsys.readouterr().out


def test_release_preprocessing_defaults():
    """The authors' weights are measured at 224 and, under both conventions, at 320; other models at their input and
    test sizes with their pretrained crop."""
    model = timm.create_model('sknet50')
    protocols = validation_protocols(model)
    assert [(p.size, p.crop_pct, p.resize) for p in protocols] == [(224, 0.875, 256), (320, 0.875, 365), (320, 1.0, 320)]
    for protocol in protocols:
        config = protocol.data_config(model)
        assert config['input_size'] == (3, protocol.size, protocol.size)
        assert config['crop_pct'] == protocol.crop_pct and config['crop_mode'] == 'center'
        assert config['interpolation'] == 'bilinear'
        assert np.allclose(np.array(config['mean']) * 255, (123, 117, 104))
        assert np.allclose(np.array(config['std']) * 255, 1)
    pytorchinsight = validation_protocols(timm.create_model('sk_resnet50'))
    assert [(p.size, p.crop_pct) for p in pytorchinsight] == [(224, 0.875), (320, 0.875), (320, 1.0)]
    others = validation_protocols(timm.create_model('sk_resnext50_32x4d'))
    assert [(p.size, p.crop_pct, p.interpolation) for p in others] == [(224, 0.875, 'bicubic')]


@pytest.mark.parametrize(
    'case', ['missing_weights', 'wrong_model', 'wrong_model_no_metadata', 'not_safetensors', 'no_class_map', 'no_data'])
def test_validate_user_errors(monkeypatch, tmp_path, colour_weights, image_folder, capsys, case):
    weights, model, data = colour_weights, 'sknet26', image_folder
    extra = ['--class-map', str(image_folder / 'classes.txt')]
    if case == 'missing_weights':
        weights = tmp_path / 'absent.safetensors'
    elif case == 'wrong_model':
        model = 'sknet50'
    elif case == 'wrong_model_no_metadata':
        model, weights = 'sk_resnet18', tmp_path / 'bare.safetensors'
        save_file(load_file(str(colour_weights)), str(weights))
    elif case == 'not_safetensors':
        weights = tmp_path / 'model.bin'
        weights.write_bytes(b'\x80\x02not a safetensors header')
    elif case == 'no_class_map':
        extra = []
    elif case == 'no_data':
        data = tmp_path / 'absent'
    output = tmp_path / 'results.json'
    code = run_cli(monkeypatch, 'validate', '--model', model, '--weights', str(weights), '--workers', '0',
                '--output', str(output), *extra, str(data))
    err = capsys.readouterr().err
    assert code != 0
    assert err.startswith('timm-sknet: error: ') and err.count('\n') == 1
    assert not output.exists()


def test_validate_refuses_existing_output(monkeypatch, tmp_path, colour_weights, image_folder, capsys):
    output = tmp_path / 'results.json'
    output.write_text('{}')
    code = run_cli(monkeypatch, 'validate', '--model', 'sknet26', '--weights', str(colour_weights),
                '--output', str(output), str(image_folder))
    assert code != 0
    assert '--force' in capsys.readouterr().err
    assert output.read_text() == '{}'


CLASS_MAPS = {  # case -> (the map's lines, what the one line says; {map}: its path, {data}: the folder's)
    'fewer_classes_than_the_model': (['c0', 'c1'], 'the class map {map} lists 2 classes, the model predicts 10'),
    'more_classes_than_the_model': ([f'c{i}' for i in range(11)], 'lists 11 classes, the model predicts 10'),
    'a_duplicated_name': ([f'c{i}' for i in range(10)] + ['c3'], 'class map {map} lists c3 twice (lines 4 and 11)'),
    'a_folder_not_in_the_map': ([f'c{i}' for i in range(9)] + ['other'],
                                '1 class folders of {data}/val are not in the class map {map}, e.g. c9'),
    'an_empty_line': (['c0', 'c1', '', 'c3'], 'line 3 of class map {map} is empty'),
}


@pytest.mark.parametrize('case', CLASS_MAPS)
def test_a_class_map_must_list_every_class_once_in_order(monkeypatch, tmp_path, colour_weights, image_folder, capsys,
                                                         case):
    """A map names every class the model predicts, each once, and every class folder; anything else is one line
    before any work (no image is decoded), where timm would renumber the classes or leave images out silently."""
    lines, says = CLASS_MAPS[case]
    class_map = tmp_path / 'classes.txt'
    class_map.write_text(''.join(f'{line}\n' for line in lines))
    output = tmp_path / 'results.json'
    code = run_cli(monkeypatch, 'validate', '--model', 'sknet26', '--weights', str(colour_weights), '--workers', '0',
                   '--class-map', str(class_map), '--output', str(output), str(image_folder))
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith('timm-sknet: error: ') and err.count('\n') == 1, err  # nothing decoded: no progress line
    assert says.format(map=class_map, data=image_folder) in err, err
    assert not output.exists()

"""The two 320 px conventions give the numbers timm's own validate.py gives with the matching ``--crop-pct``.

timm's validate.py is not part of the timm package (it lives in timm's repository), so ``validate_py`` below makes
the calls it makes, keyword for keyword, for ``validate.py DATA --model sknet50 --checkpoint W --img-size 320
--crop-pct P --class-map F`` (its defaults otherwise: the prefetcher, float32, no AMP), and counts as it counts
(``timm.utils.accuracy``, ``AverageMeter``, rounded to 4 places). The images are chosen so that the two conventions
disagree on some of them, so the comparison tells the protocols apart.
"""
import json
from pathlib import Path
from typing import Dict, Tuple

import pytest
import timm
import torch
from safetensors.torch import save_file
from timm.data import ImageNetInfo, create_dataset, create_loader, resolve_data_config
from timm.utils import AverageMeter, accuracy

from hub_cards.protocols import Protocol
from release_helpers import caffe_source, predictions
from support import run_cli
from timm_sknet.io.synthetic import synthetic_images

CANDIDATES = 12


def validate_py(model: torch.nn.Module, data: Path, class_map: Path, img_size: int, crop_pct: float) -> Dict:
    """validate.py's ``validate(args)`` on ``model``, as far as it decides the numbers."""
    args = dict(img_size=img_size, crop_pct=crop_pct, input_size=None, in_chans=None, mean=None, std=None,
                interpolation='', crop_mode=None)
    data_config = resolve_data_config(args, model=model, use_test_size=True, verbose=True)
    dataset = create_dataset(root=str(data), name='', split='validation', download=False, load_bytes=False,
                             class_map=str(class_map), num_samples=None, input_key=None, input_img_mode='RGB',
                             target_key=None, trust_remote_code=False, seed=42)
    loader = create_loader(
        dataset, input_size=data_config['input_size'], batch_size=4, use_prefetcher=True,
        interpolation=data_config['interpolation'], mean=data_config['mean'], std=data_config['std'], num_workers=0,
        crop_pct=data_config['crop_pct'], crop_mode=data_config['crop_mode'], crop_border_pixels=None,
        pin_memory=False, device=torch.device('cpu'), img_dtype=torch.float32, tf_preprocessing=False)
    top1, top5 = AverageMeter(), AverageMeter()
    model.eval()
    with torch.inference_mode():
        for images, target in loader:
            output = model(images)
            acc1, acc5 = accuracy(output.detach(), target, topk=(1, 5))
            top1.update(acc1.item(), output.shape[0])
            top5.update(acc5.item(), output.shape[0])
    return dict(top1=round(top1.avg, 4), top5=round(top5.avg, 4), img_size=data_config['input_size'][-1],
                crop_pct=data_config['crop_pct'], interpolation=data_config['interpolation'])


@pytest.fixture(scope='module')
def disagreeing(tmp_path_factory) -> Tuple[Path, Path, Path, torch.nn.Module]:
    """(data folder, class map, weights, model): ImageNet synset folders of pictures labelled by what the model
    predicts at 320 with crop_pct 0.875, among them pictures for which the full crop predicts something else."""
    directory = tmp_path_factory.mktemp('protocols')
    source = caffe_source(directory)
    candidates = directory / 'candidates'
    candidates.mkdir()
    paths = []
    for i, image in enumerate(synthetic_images(CANDIDATES, 400, seed=7)):
        paths.append(candidates / f'{i:03d}.JPEG')
        image.save(paths[-1], quality=90)
    cfg = source.converted.pretrained_cfg
    by_timm = predictions(source.converted, paths, Protocol(320, 0.875, cfg['interpolation']))
    by_full = predictions(source.converted, paths, Protocol(320, 1.0, cfg['interpolation']))
    assert any(a[0] != b[0] for a, b in zip(by_timm, by_full)), 'no picture tells the two 320 conventions apart'
    synsets = ImageNetInfo().label_names()
    data = directory / 'val'
    for path, (label, _) in zip(paths, by_timm):
        (data / synsets[label]).mkdir(parents=True, exist_ok=True)
        path.rename(data / synsets[label] / path.name)
    class_map = directory / 'imagenet_synsets.txt'
    class_map.write_text(''.join(f'{name}\n' for name in synsets))
    weights = directory / 'sknet50.safetensors'
    save_file(source.converted.state_dict(), str(weights), metadata={'model_name': 'sknet50'})
    return data, class_map, weights, source.converted


def test_both_320_conventions_give_validate_pys_numbers(disagreeing, monkeypatch, tmp_path):
    data, class_map, weights, model = disagreeing
    output = tmp_path / 'results.json'
    assert run_cli(monkeypatch, 'validate', '--model', 'sknet50', '--weights', str(weights), '--input-size', '320',
                   '--class-map', str(class_map), '--batch-size', '3', '--workers', '0', '--device', 'cpu',
                   '--output', str(output), str(data)) == 0
    evaluations = json.loads(output.read_text())['evaluations']
    assert [(e['crop_pct'], e['resize'], e['validate_py_flags']) for e in evaluations] == [
        (0.875, 365, '--img-size 320 --crop-pct 0.875'), (1.0, 320, '--img-size 320 --crop-pct 1.0')]
    assert evaluations[0]['top1_correct'] == CANDIDATES  # labelled by that convention's own predictions
    assert evaluations[1]['top1_correct'] < CANDIDATES  # the full crop predicts otherwise on some pictures
    for evaluation in evaluations:
        theirs = validate_py(model, data, class_map, 320, evaluation['crop_pct'])
        assert (theirs['img_size'], theirs['crop_pct'], theirs['interpolation']) == (
            320, evaluation['crop_pct'], evaluation['interpolation'])
        assert round(evaluation['top1'], 4) == theirs['top1'] and round(evaluation['top5'], 4) == theirs['top5']

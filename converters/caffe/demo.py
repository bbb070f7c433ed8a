"""``make demo``: what converting the released SKNet-50 looks like, on a caffemodel made on the spot.

The released caffemodels live on Google Drive (linked from github.com/implus/SKNet; the repository has no
licence file) and cannot be fetched here, so the demo writes an SKNet-50 caffemodel in the release's exact
format (graph, layer names, CuDNNBatchNorm blobs) from random weights with trained-looking BatchNorm, then
runs the same ``convert-caffe --verify`` command a user runs on the real file. Output: ``out/demo/``.
Then it installs them as a user would (``convert-caffe --install``), into a temporary store so that the user's own
stays untouched, lists the store and loads them with ``timm.create_model('sknet50', pretrained=True)``.
"""
import logging
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import timm
import torch
from safetensors.numpy import load_file
from torch import nn

from timm_sknet import SKBottleneck
from timm_sknet.weights.release import RELEASE_URL
from timm_sknet.weights.store import STORE_ENV

from .verify import generated_images, timm_input
from .writer import write_caffemodel

OUT_DIR = Path('out/demo')


def release_like_model(model_name: str, seed: int = 0) -> nn.Module:
    """Random weights whose BatchNorm looks trained: gamma / beta spread around 1 / 0, running statistics
    measured on generated images, so activations stay in range through every unit, the logits spread like a
    trained model's and the SK attention actually selects (neither flat nor saturated).
    """
    torch.manual_seed(seed)
    model = timm.create_model(model_name)
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    with torch.no_grad():
        for bn in norms:
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.normal_(0., 0.2)
            bn.momentum = None  # cumulative average: the statistics of the calibration batch itself
        for block in model.modules():
            if isinstance(block, SKBottleneck):
                # as in trained ResNets, each residual branch ends in a small gamma: without it the residual
                # stream grows unit by unit and float32 rounding alone nears the 1e-4 verification tolerance
                block.conv3.bn.weight.uniform_(0.1, 0.4)
        model.fc.bias.normal_(0., 0.1)
        data_config = timm.data.resolve_data_config({}, model=model)
        # The attention BN sees one pooled value per image: 8 images (at half size, to keep it quick) give
        # it usable statistics where 2 would leave it dividing by a near-zero variance.
        images = generated_images(8, data_config['input_size'][-1] // 2, seed=seed + 1)
        model.train()(timm_input(images, data_config))  # train mode: BN records the batch statistics
    for bn in norms:
        bn.momentum = 0.1
    return model.eval()


def main() -> None:
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    caffemodel, output = OUT_DIR / 'sknet50_random.caffemodel', OUT_DIR / 'sknet50.safetensors'
    print(f'The released SKNet-50 / SKNet-101 caffemodels are linked from {RELEASE_URL} (Google Drive; the '
          'repository has no licence file). Download one and run the command below on it.\n'
          f'Here: an SKNet-50 caffemodel in the release format with random weights, {caffemodel}.\n')
    model = release_like_model('sknet50')
    write_caffemodel(model, caffemodel, OUT_DIR / 'sknet50_random.prototxt', force=True)  # the demo's own files

    args = [str(caffemodel), '--model', 'sknet50', '--output', str(output), '--force', '--verify']
    print('$ convert-caffe ' + ' '.join(args), flush=True)
    code = subprocess.run([sys.executable, '-m', 'converters.caffe.cli', *args]).returncode
    if code:
        sys.exit(code)

    converted = load_file(output)
    expected = {k: v for k, v in model.state_dict().items() if not k.endswith('num_batches_tracked')}
    max_diff = max(float(np.abs(converted[k] - v.numpy()).max()) for k, v in expected.items())
    print(f'\nround trip: the {len(expected)} weight and BN tensors converted back from the caffemodel equal the '
          f'generated model\'s: max |diff| {max_diff:g}')
    with tempfile.TemporaryDirectory(prefix='timm-sknet-demo-store-') as store:
        install_and_load(caffemodel, converted, store)


def install_and_load(caffemodel: Path, converted: dict, store: str) -> None:
    """What a user does next with the real file: install it, list the store, load it with pretrained=True."""
    os.environ[STORE_ENV] = store
    print(f'\nWith the real file, install the weights where pretrained=True finds them. The demo installs its random '
          f'ones into a temporary store ({STORE_ENV}={store}), leaving yours untouched.')
    for command in (['convert-caffe', str(caffemodel), '--model', 'sknet50', '--install'],
                    ['timm-sknet', 'installed']):
        print('$ ' + ' '.join(command), flush=True)
        module = 'converters.caffe.cli' if command[0] == 'convert-caffe' else 'timm_sknet.cli'
        code = subprocess.run([sys.executable, '-c', f'from {module} import main; main()', *command[1:]]).returncode
        if code:
            sys.exit(code)

    print(">>> model = timm.create_model('sknet50', pretrained=True)")
    log = logging.getLogger('timm_sknet.weights.pretrained')
    log.addHandler(logging.StreamHandler(sys.stdout))
    log.setLevel(logging.INFO)
    model = timm.create_model('sknet50', pretrained=True)
    state = model.state_dict()
    same = state.keys() == converted.keys() and all(np.array_equal(converted[k], v.numpy()) for k, v in state.items())
    print(f'its weights equal {OUT_DIR / "sknet50.safetensors"}: {same}')


if __name__ == '__main__':
    main()

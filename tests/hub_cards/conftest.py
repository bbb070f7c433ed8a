"""Fixtures the hub_cards tests share across modules."""
from pathlib import Path
from typing import Iterator

import pytest
import timm
import torch
from safetensors.torch import save_file

from hub_helpers import WriteHub, read_write_hub
from release_helpers import IMAGES, Releaser, caffe_source, imagenet_like

PROVENANCE = {
    'source_file': 'SKNet-50.caffemodel', 'source_size': '110428633', 'source_sha256': 'c' * 64,
    'model_name': 'sknet50', 'timm_sknet_version': '0.1.0', 'timm_version': timm.__version__,
    'torch_version': torch.__version__,
}


@pytest.fixture(scope='module')
def weights(tmp_path_factory) -> Path:
    """sknet50 weights (random, stand-ins for converted ones) with convert-caffe's provenance metadata."""
    torch.manual_seed(0)
    model = timm.create_model('sknet50')
    path = tmp_path_factory.mktemp('weights') / 'sknet50.safetensors'
    save_file(model.state_dict(), str(path), metadata=PROVENANCE)
    return path


@pytest.fixture(scope='module')
def release_hub(tmp_path_factory) -> Iterator[WriteHub]:
    """A Hub that reads and writes, on loopback, for a module's releases."""
    with read_write_hub(tmp_path_factory.mktemp('hub')) as hub:
        yield hub


@pytest.fixture(scope='module')
def caffe_releaser(release_hub, tmp_path_factory) -> Releaser:
    """Releases of a release-format SKNet-50 caffemodel on validation folders labelled by what it predicts."""
    directory = tmp_path_factory.mktemp('caffe')
    source = caffe_source(directory)
    expected = imagenet_like(directory / 'val', source, IMAGES)
    return Releaser(source, directory / 'val', expected, release_hub.endpoint, directory)

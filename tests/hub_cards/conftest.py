"""Fixtures the hub_cards tests share across modules."""
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file

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

"""Fixtures of the weights tests."""
import subprocess
import sys
from pathlib import Path
from typing import Iterator, NamedTuple

import pytest
import timm
import torch
from safetensors.torch import save_file

from hub_helpers import FAIL_SCRIPT, client_env, free_port

PROVENANCE = {
    'source_file': 'SKNet-50.caffemodel', 'source_size': '110428633', 'source_sha256': 'c' * 64,
    'model_name': 'sknet50', 'timm_sknet_version': '0.1.0', 'timm_version': timm.__version__,
    'torch_version': torch.__version__,
}


class DeadHub(NamedTuple):
    proc: subprocess.Popen  # FAIL_SCRIPT building sknet50; its stdout is one JSON line
    store: Path  # the empty local weights store it checked


@pytest.fixture(scope='session', autouse=True)
def dead_hub(tmp_path_factory) -> Iterator[DeadHub]:
    """``pretrained=True`` with an empty store and a Hub endpoint that refuses connections (online mode, so
    huggingface_hub retries with back-off, about 24 s). Started with the first test here, so that the others fill
    its waiting; test_store.py reads the result."""
    workdir = tmp_path_factory.mktemp('dead-hub')
    store = workdir / 'empty-store'
    env = client_env(f'http://127.0.0.1:{free_port()}', workdir / 'hf', store)
    with subprocess.Popen([sys.executable, '-c', FAIL_SCRIPT, 'sknet50'], env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True) as proc:
        try:
            yield DeadHub(proc, store)
        finally:
            proc.kill()


@pytest.fixture(scope='module')
def weights(tmp_path_factory) -> Path:
    """sknet50 weights (random, stand-ins for converted ones) with convert-caffe's provenance metadata."""
    torch.manual_seed(0)
    model = timm.create_model('sknet50')
    path = tmp_path_factory.mktemp('weights') / 'sknet50.safetensors'
    save_file(model.state_dict(), str(path), metadata=PROVENANCE)
    return path

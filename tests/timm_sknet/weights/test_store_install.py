"""``install_weights``, what every converter's --install goes through: the slot appears with model.safetensors and
install.json together, the listing never shows an install under way, and a failed install leaves no folder."""
import hashlib
import json
import os

import numpy as np
import pytest
from safetensors.numpy import save_file

from timm_sknet.io.errors import UserError
from timm_sknet.weights.store import install_weights, installed_weights

SLOT = 'sknet50.caffe_in1k'


def _no_model(arch):  # the listing's model shapes: this test's slot holds no model's weights
    return None


def test_the_slot_appears_whole_and_the_listing_shows_it_only_then(tmp_path, monkeypatch):
    store = tmp_path / 'store'
    monkeypatch.setenv('TIMM_SKNET_HOME', str(store))
    with install_weights(SLOT, False, 'test') as weights:
        save_file({'w': np.ones(3, dtype=np.float32)}, str(weights))
        assert installed_weights(_no_model) == [] and not (store / SLOT).exists()  # written, not yet installed
    assert [w.name for w in installed_weights(_no_model)] == [SLOT]
    installed = store / SLOT / 'model.safetensors'
    assert sorted(os.listdir(store / SLOT)) == ['install.json', 'model.safetensors']
    assert json.loads((store / SLOT / 'install.json').read_text()) == {
        'sha256': hashlib.sha256(installed.read_bytes()).hexdigest(), 'size': installed.stat().st_size,
        'model': SLOT, 'installed_by': 'test'}


def test_a_failed_install_leaves_no_folder(tmp_path, monkeypatch):
    store = tmp_path / 'cache' / 'store'
    monkeypatch.setenv('TIMM_SKNET_HOME', str(store))
    with pytest.raises(UserError, match='the converter failed'):
        with install_weights(SLOT, False, 'test') as weights:
            weights.write_bytes(b'half a file')
            raise UserError('the converter failed')
    assert os.listdir(tmp_path) == []

"""Where timm looks for the released weights: one namespace (overridable by environment), safetensors only."""
import json
import os
import subprocess
import sys

import pytest
from timm.models import get_pretrained_cfg

import timm_sknet  # noqa: F401
from timm_sknet.weights.hub import DEFAULT_HUB_NAMESPACE, HUB_NAMESPACE_ENV, hub_namespace, hub_repo_id, hub_source


def test_namespace_default_and_override(monkeypatch):
    monkeypatch.delenv(HUB_NAMESPACE_ENV, raising=False)
    assert hub_namespace() == DEFAULT_HUB_NAMESPACE
    monkeypatch.setenv(HUB_NAMESPACE_ENV, 'my-org')
    assert hub_repo_id('sknet50.caffe_in1k') == 'my-org/sknet50.caffe_in1k'
    assert hub_source('sknet101.caffe_in1k') == {
        'hf_hub_id': 'my-org/sknet101.caffe_in1k', 'hf_hub_filename': 'model.safetensors'}


@pytest.mark.parametrize('model_name', ['sknet50', 'sknet101'])
def test_registry_loads_safetensors_only(model_name):
    """The registered tag names ``<namespace>/<model>.caffe_in1k`` and its ``model.safetensors`` and no other source:
    with a filename timm reads that safetensors file directly and never tries pytorch_model.bin (test_hub_e2e shows
    what goes over the wire)."""
    cfg = get_pretrained_cfg(model_name)
    assert cfg.tag == 'caffe_in1k'
    assert (cfg.hf_hub_id, cfg.hf_hub_filename) == (hub_repo_id(f'{model_name}.caffe_in1k'), 'model.safetensors')
    assert not (cfg.url or cfg.file or cfg.state_dict or cfg.source)


def test_namespace_env_is_read_at_registration():
    env = dict(os.environ, **{HUB_NAMESPACE_ENV: 'elsewhere'})
    code = ("import json, timm, timm_sknet; from timm.models import get_pretrained_cfg; "
            "print(json.dumps([get_pretrained_cfg(m).hf_hub_id for m in ('sknet50', 'sknet101')]))")
    out = subprocess.run([sys.executable, '-c', code], env=env, capture_output=True, text=True, check=True, timeout=120)
    assert json.loads(out.stdout.splitlines()[-1]) == ['elsewhere/sknet50.caffe_in1k', 'elsewhere/sknet101.caffe_in1k']

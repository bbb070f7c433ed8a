"""Where timm looks for the released weights: one namespace (overridable by environment), safetensors only."""
import pytest
from timm.models import get_pretrained_cfg

import timm_sknet  # noqa: F401
from timm_sknet.weights.hub import DEFAULT_HUB_NAMESPACE, HUB_NAMESPACE_ENV, hub_namespace, hub_repo_id, hub_source


def test_namespace_default_and_override(monkeypatch):
    monkeypatch.delenv(HUB_NAMESPACE_ENV, raising=False)
    assert hub_namespace() == DEFAULT_HUB_NAMESPACE
    monkeypatch.setenv(HUB_NAMESPACE_ENV, 'my-org')
    assert hub_repo_id('sknet50.caffe_in1k') == 'my-org/sknet50.caffe_in1k'
    # the registered cfgs name the default namespace; a created model moves it (below)
    assert hub_source('sknet101.caffe_in1k') == {
        'hf_hub_id': f'{DEFAULT_HUB_NAMESPACE}/sknet101.caffe_in1k', 'hf_hub_filename': 'model.safetensors'}


@pytest.mark.parametrize('model_name', ['sknet50', 'sknet101'])
def test_registry_loads_safetensors_only(model_name):
    """The registered tag names ``<namespace>/<model>.caffe_in1k`` and its ``model.safetensors`` and no other source:
    with a filename timm reads that safetensors file directly and never tries pytorch_model.bin (test_hub_e2e shows
    what goes over the wire)."""
    cfg = get_pretrained_cfg(model_name)
    assert cfg.tag == 'caffe_in1k'
    assert (cfg.hf_hub_id, cfg.hf_hub_filename) == (f'{DEFAULT_HUB_NAMESPACE}/{model_name}.caffe_in1k', 'model.safetensors')
    assert not (cfg.url or cfg.file or cfg.state_dict or cfg.source)


def test_namespace_env_is_read_when_a_model_is_created(monkeypatch):
    """Configuration is read when a model is created, not at import: the registry keeps the default namespace and
    each created model names the repo in the namespace set at that moment."""
    import timm
    monkeypatch.setenv(HUB_NAMESPACE_ENV, 'elsewhere')
    assert get_pretrained_cfg('sknet50').hf_hub_id == f'{DEFAULT_HUB_NAMESPACE}/sknet50.caffe_in1k'
    assert timm.create_model('sknet50').pretrained_cfg['hf_hub_id'] == 'elsewhere/sknet50.caffe_in1k'
    monkeypatch.setenv(HUB_NAMESPACE_ENV, 'later')
    assert timm.create_model('sknet50').pretrained_cfg['hf_hub_id'] == 'later/sknet50.caffe_in1k'
    # timm's own repos are not ours to move
    assert timm.create_model('sk_resnext50_32x4d').pretrained_cfg['hf_hub_id'] == 'timm/skresnext50_32x4d.ra_in1k'

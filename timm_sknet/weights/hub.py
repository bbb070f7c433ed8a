"""Where this project's weights live on the Hugging Face Hub: one namespace, set here or by environment (read when
used, never at import)."""
import os
from typing import Dict

HUB_NAMESPACE_ENV = 'TIMM_SKNET_HUB_NAMESPACE'
DEFAULT_HUB_NAMESPACE = 'timm-sknet'
# The only weights file a repo holds; naming it in the pretrained cfg stops timm from falling back to a pickle.
HUB_WEIGHTS_FILENAME = 'model.safetensors'


def hub_namespace() -> str:
    """The Hub namespace (user or organisation) holding ``<model>.<tag>`` repos; ``$TIMM_SKNET_HUB_NAMESPACE`` wins."""
    return os.environ.get(HUB_NAMESPACE_ENV) or DEFAULT_HUB_NAMESPACE


def hub_repo_id(model_name_tag: str) -> str:
    """The Hub repo of one pretrained tag, e.g. ``sknet50.caffe_in1k`` -> ``timm-sknet/sknet50.caffe_in1k``."""
    return f'{hub_namespace()}/{model_name_tag}'


def hub_source(model_name_tag: str) -> Dict[str, str]:
    """The pretrained-cfg keys that make timm load ``model.safetensors`` from the tag's repo and nothing else.

    The repo is named in the default namespace; ``weights.source`` moves it to ``$TIMM_SKNET_HUB_NAMESPACE`` when a
    model is created. timm appends ``<model>.<tag>`` to an ``hf_hub_id`` only when it is exactly ``'timm/'``, so the
    repo id is spelled out; without ``hf_hub_filename`` timm would try ``pytorch_model.bin`` when the safetensors is
    absent.
    """
    return {'hf_hub_id': f'{DEFAULT_HUB_NAMESPACE}/{model_name_tag}', 'hf_hub_filename': HUB_WEIGHTS_FILENAME}

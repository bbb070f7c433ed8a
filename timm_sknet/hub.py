"""Where this project's weights live on the Hugging Face Hub: one namespace, set here or by environment."""
import os

HUB_NAMESPACE_ENV = 'TIMM_SKNET_HUB_NAMESPACE'
DEFAULT_HUB_NAMESPACE = 'timm-sknet'


def hub_namespace() -> str:
    """The Hub namespace (user or organisation) holding ``<model>.<tag>`` repos; ``$TIMM_SKNET_HUB_NAMESPACE`` wins."""
    return os.environ.get(HUB_NAMESPACE_ENV) or DEFAULT_HUB_NAMESPACE

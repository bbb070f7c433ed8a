"""timm-sknet: Selective Kernel Networks in timm's model registry.

``import timm_sknet`` registers the models with timm: at once if timm is loaded, otherwise the moment it is.
Until then nothing here imports torch, so torch-free tools (``convert-caffe`` without ``--verify``) stay light.
"""
import importlib
import sys

__version__ = '0.1.0'
__all__ = ['SKAttention', 'SKBasicBlock', 'SKBottleneck', 'SKConv', 'SKNet', 'SKShuffleNetV2']

_LAZY_ATTRIBUTES = {
    'SKAttention': 'models.sk_conv', 'SKConv': 'models.sk_conv', 'SKBasicBlock': 'models.sk_resnet',
    'SKBottleneck': 'models.sk_resnet', 'SKNet': 'models.sk_resnet', 'SKShuffleNetV2': 'models.sk_shufflenet'}
# the modules whose @register_model functions fill timm's registry, one per model family; timm files each model
# under its module's last name, so these are names of their own (timm.list_models(module='sk_resnet'))
MODEL_MODULES = ('sk_resnet', 'sk_shufflenet')


def __getattr__(name: str):
    if name in _LAZY_ATTRIBUTES:
        return getattr(importlib.import_module(f'{__name__}.{_LAZY_ATTRIBUTES[name]}'), name)
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')


def model_names() -> list:
    """The names of this package's models in timm's registry (imports torch, timm and the model modules)."""
    register_models()
    import timm
    return sorted(name for module in MODEL_MODULES for name in timm.list_models(module=module))


def register_models() -> None:
    """Register every model with timm (imports torch, timm and the model modules); the import hook calls it."""
    for module in MODEL_MODULES:
        importlib.import_module(f'{__name__}.models.{module}')


if 'timm' in sys.modules:
    register_models()
else:
    try:  # the copy the start-up hook already runs from, so only one hook is ever waiting
        import _timm_sknet_autoload as _autoload
    except ImportError:  # a source tree that was never installed
        from . import _autoload
    _autoload.install(explicit=True)

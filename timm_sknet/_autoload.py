"""Register timm-sknet's models whenever timm is imported, so timm's own scripts see them with no code change.

The wheel ships this file at its root as ``_timm_sknet_autoload`` together with ``timm_sknet_autoload.pth``,
whose ``import`` line runs at every interpreter start. That line must cost nothing: this module imports only
what ``site`` has already loaded and puts one finder on ``sys.meta_path``. The finder stays idle until
``timm`` is imported, lets the real loader run timm, then has ``timm_sknet`` import its model modules (whose
``@register_model`` functions fill timm's registry) and leaves ``sys.meta_path`` for good. The list of model
modules lives in the package, not in this file: an editable install keeps a copy of this file from install time.

Set ``TIMM_SKNET_AUTOLOAD=0`` (or false / no / off) to switch it off, in the environment or in ``os.environ``
before timm is imported; ``import timm_sknet`` then registers the models explicitly. ``python -S`` skips all
``.pth`` files, this one included.
"""
import os
import sys

AUTOLOAD_ENV = 'TIMM_SKNET_AUTOLOAD'
_DISABLED_VALUES = ('0', 'false', 'no', 'off')


def autoload_enabled() -> bool:
    return os.environ.get(AUTOLOAD_ENV, '1').strip().lower() not in _DISABLED_VALUES


def _register_models(explicit: bool) -> None:
    if not (explicit or autoload_enabled()):  # os.environ may have changed since start-up
        return
    import importlib
    try:
        importlib.import_module('timm_sknet').register_models()
    except Exception as e:  # a broken plugin must never break `import timm` itself
        import warnings
        warnings.warn(
            f'timm-sknet could not register its models with timm ({e!r}); '
            f'set {AUTOLOAD_ENV}=0 to skip it', RuntimeWarning)


class _RegisterAfterExec:
    """Loader wrapper: runs timm's real loader, hands the module back to it, then registers the models."""

    def __init__(self, loader, explicit: bool):
        self.loader = loader
        self.explicit = explicit

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module) -> None:
        # leave no trace of this wrapper on the imported module
        module.__loader__ = module.__spec__.loader = self.loader
        self.loader.exec_module(module)
        _register_models(self.explicit)


class TimmImportHook:
    """``sys.meta_path`` finder that fires once, on the import of the top-level ``timm`` package.

    ``explicit``: ``import timm_sknet`` asked for the models, so they register even with autoload switched off.
    """

    def __init__(self):
        self.explicit = False

    def find_spec(self, fullname, path=None, target=None):
        if fullname != 'timm':
            return None
        sys.meta_path.remove(self)  # fire once; also keeps the search below from reaching this finder
        import importlib.util
        spec = importlib.util.find_spec(fullname)
        if spec is None or spec.loader is None:
            return spec
        spec.loader = _RegisterAfterExec(spec.loader, self.explicit)
        return spec


def install(explicit: bool = False) -> None:
    """Wait for ``import timm``: called by the ``.pth`` line at start-up, and by ``import timm_sknet`` (explicit)."""
    # Python 3.11's site runs a venv's .pth import lines twice (venv() and main() both add site-packages)
    hook = next((finder for finder in sys.meta_path if isinstance(finder, TimmImportHook)), None)
    if hook is None:
        if not (explicit or autoload_enabled()):
            return
        hook = TimmImportHook()
        sys.meta_path.insert(0, hook)
    hook.explicit = hook.explicit or explicit

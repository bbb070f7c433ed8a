"""``timm-sknet installed``: what the local weights store holds, each copy re-checked (as installed, fits its model,
every value finite) and marked with the command that mends it when it is not; exit status 1 when one needs mending.
Its command line is in ``commands.py``."""
import argparse
import os

from ..weights.store import STORE_ENV, describe, installed_weights, store_dir

__all__ = ['run']


def run(args: argparse.Namespace) -> int:
    root = store_dir()
    where = f'{STORE_ENV}={root}' if os.environ.get(STORE_ENV) else f'{root} (set {STORE_ENV} to use another folder)'
    print(f'store: {where}')
    found = installed_weights(_model_shapes())
    if not found:
        print('nothing installed; install converted weights with: convert-caffe CAFFEMODEL --model sknet50 --install')
    for weights in found:
        print(describe(weights))
    return 1 if any(weights.problem for weights in found) else 0


def _model_shapes():
    """``pretrained.model_shapes``, with the models registered (torch and timm only once the arguments are parsed)."""
    from .. import register_models
    register_models()  # importing timm does it too, unless TIMM_SKNET_AUTOLOAD=0
    from ..weights.pretrained import model_shapes
    return model_shapes

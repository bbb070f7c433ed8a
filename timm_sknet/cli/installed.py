"""``timm-sknet installed``: what the local weights store holds, with each copy's provenance (its command line is
in ``commands.py``)."""
import argparse
import os

from ..weights.store import STORE_ENV, describe, installed_weights, store_dir

__all__ = ['run']


def run(args: argparse.Namespace) -> int:
    root = store_dir()
    where = f'{STORE_ENV}={root}' if os.environ.get(STORE_ENV) else f'{root} (set {STORE_ENV} to use another folder)'
    print(f'store: {where}')
    found = installed_weights()
    if not found:
        print('nothing installed; install converted weights with: convert-caffe CAFFEMODEL --model sknet50 --install')
    for weights in found:
        print(describe(weights))
    return 0

"""``timm-sknet installed``: what the local weights store holds, with each copy's provenance."""
import argparse
import os

from ..weights.store import STORE_ENV, describe, installed_weights, store_dir

__all__ = ['HELP', 'configure_parser', 'run']

HELP = 'list the weights in the local store (what convert-caffe --install wrote)'


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """``timm-sknet installed`` takes no arguments: the store is ``$TIMM_SKNET_HOME`` or its default."""
    parser.description = (f'{HELP}. The store is ${STORE_ENV} if set, else timm-sknet in $XDG_CACHE_HOME or '
                          f'~/.cache; here: {store_dir()}')


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

"""``timm-sknet installed``: what the local weights store holds, each copy re-checked (as installed, fits its model,
every value finite) and marked with the command that mends it when it is not, exit status 1 when one needs mending;
then the temporary folders of installs, those under way and those a killed install left (``io.locks``), which
``--remove-leftovers`` removes first. Its command line is in ``commands.py``."""
import argparse
import os

from ..io.locks import LOCK_SUFFIX, Leftover, leftovers, remove_leftovers
from ..weights.store import STORE_ENV, describe, installed_weights, store_dir

__all__ = ['run']

REMOVE_LEFTOVERS = 'timm-sknet installed --remove-leftovers'


def run(args: argparse.Namespace) -> int:
    root = store_dir()
    where = f'{STORE_ENV}={root}' if os.environ.get(STORE_ENV) else f'{root} (set {STORE_ENV} to use another folder)'
    print(f'store: {where}')
    if args.remove_leftovers:
        for leftover in remove_leftovers(root):
            print(f'removed {leftover.path} ({leftover.size:,} bytes), left by an install that was killed')
    found = installed_weights(_model_shapes())
    if not found:
        print('nothing installed; install converted weights with: convert-caffe CAFFEMODEL --model sknet50 --install')
    for weights in found:
        print(describe(weights))
    for leftover in leftovers(root):
        print(describe_leftover(leftover))
    return 1 if any(weights.problem for weights in found) else 0


def describe_leftover(leftover: Leftover) -> str:
    """The listing's lines for a temporary in the store: an install under way, or what a killed one left."""
    if leftover.live:
        return (f'in progress  {leftover.path}  ({leftover.size:,} bytes)\n'
                '  a running install is writing it; nothing removes it while that process lives')
    what = ('a lock file no process holds (an earlier version left it)' if leftover.path.suffix == LOCK_SUFFIX else
            'by an install that was killed')
    return (f'left behind  {leftover.path}  ({leftover.size:,} bytes)\n'
            f'  {what}; the next install into this store removes it, or now: {REMOVE_LEFTOVERS}')


def _model_shapes():
    """``pretrained.model_shapes``, with the models registered (torch and timm only once the arguments are parsed)."""
    from .. import register_models
    register_models()  # importing timm does it too, unless TIMM_SKNET_AUTOLOAD=0
    from ..weights.pretrained import model_shapes
    return model_shapes

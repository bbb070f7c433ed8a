"""The command lines of timm_sknet's own ``timm-sknet`` commands: help and arguments only, no torch, so that every
``--help`` answers at once; the work is in each command's implementation module, imported after parsing."""
import argparse
from pathlib import Path

from .. import MODEL_MODULES
from ..weights.store import STORE_ENV, store_dir
from .dispatch import Command, comma_separated

__all__ = ['ATTENTION', 'INSTALLED']

def _attention_parser(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Capture the kernel-selection attention of every SK unit on images enlarged by centre crop and resize "
        "(paper Sec. 4.4); write units.csv, channels.csv, attention.json and the Fig. 3 plots units.png and "
        "channels.png; with --per-class also classes.csv and classes.png (Fig. 4).")
    parser.add_argument('images', nargs='*', metavar='IMAGE',
                        help='image files or folders (searched recursively); with --per-class one ImageFolder root')
    parser.add_argument('--model', required=True,
                        help=f"an SK model of this package: timm.list_models(module={list(MODEL_MODULES)})")
    parser.add_argument('--model-kwargs', action='append', default=[], metavar='KEY=VALUE',
                        help='an extra model argument as a Python literal, e.g. kernel_size="(3, 5, 7)"; repeat the '
                             'flag for more')
    parser.add_argument('--weights', type=Path, metavar='FILE.safetensors',
                        help='state dict to load; without it the model keeps its random init (see --seed)')
    parser.add_argument('--seed', type=int, default=0, help='seed of the random init and of --synthetic images')
    parser.add_argument('--synthetic', type=int, default=0, metavar='N',
                        help='analyse N generated pictures (a striped ellipse on a smooth background)')
    parser.add_argument('--per-class', action='store_true',
                        help='IMAGE is an ImageFolder root: also per-class differences (paper Fig. 4)')
    parser.add_argument('--scales', type=comma_separated(float), default=[1.0, 1.5, 2.0], metavar='S[,S...]',
                        help='object enlargements, each >= 1 (default: 1.0,1.5,2.0)')
    parser.add_argument('--img-size', type=int, help="input size (default: the model's pretrained_cfg)")
    parser.add_argument('--crop-pct', type=float, help="eval crop fraction (default: the model's pretrained_cfg)")
    parser.add_argument('--units', type=comma_separated(str), metavar='SK_S_U[,SK_S_U...]',
                        help='units of channels.png and classes.png (default: the last unit of every stage)')
    parser.add_argument('--channel-group', type=int, default=16, metavar='N',
                        help='channels.png averages N successive channels, as the paper (default: 16)')
    parser.add_argument('--batch-size', type=int, default=16, help='images per forward pass (each at every scale)')
    parser.add_argument('--workers', type=int, default=2, help='image decoding processes (0: in this process)')
    parser.add_argument('--device',
                        help='torch device to run on, e.g. cpu, cuda, cuda:1 (default: cuda if present, else cpu)')
    parser.add_argument('--out', type=Path, required=True, metavar='DIR', help='output folder (created if absent)')
    parser.add_argument('--force', action='store_true', help='overwrite existing outputs in DIR')


def _installed_parser(parser: argparse.ArgumentParser) -> None:
    """``timm-sknet installed`` lists the store, ``$TIMM_SKNET_HOME`` or its default, and what killed installs left
    there; ``--remove-leftovers`` removes those first."""
    parser.description = (f'{INSTALLED.help}. The store is ${STORE_ENV} if set, else timm-sknet in $XDG_CACHE_HOME or '
                          f'~/.cache; here: {store_dir()}. The temporary folder of an install that was killed is '
                          'listed with its size; the next install removes it, as does --remove-leftovers.')
    parser.add_argument('--remove-leftovers', action='store_true',
                        help='first remove the temporary folders that killed installs left in the store (never one '
                             'that a running install is writing)')


ATTENTION = Command(
    "capture SK selection weights; the paper's Figs. 3-4", _attention_parser, 'timm_sknet.cli.attention')
INSTALLED = Command('list the weights in the local store (what convert-caffe --install wrote)', _installed_parser,
                    'timm_sknet.cli.installed')

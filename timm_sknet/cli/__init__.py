"""timm-sknet: validate weights, publish them to the Hub, list the installed ones, analyse SK attention."""
from __future__ import annotations  # the hints are never evaluated: see timm_sknet.io.errors

import sys

from ..io.errors import run_cli

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import List, Optional

# subcommand -> module exposing configure_parser(parser) and run(args) -> int; imported only when chosen
SUBCOMMANDS = {
    'validate': ('hub_cards.validate', 'measure top-1/top-5 of weights on an ImageFolder / ImageNet val'),
    'publish': ('hub_cards.publish', 'write or upload model.safetensors, config.json and a model card'),
    'attention': ('timm_sknet.cli.attention', "capture SK selection weights; the paper's Figs. 3-4"),
    'installed': ('timm_sknet.cli.installed', 'list the weights in the local store (what convert-caffe --install wrote)'),
}


def _main(argv: Optional[List[str]] = None) -> int:
    import argparse  # imported once run_cli handles Ctrl-C, as everything the subcommand imports
    import importlib

    parser = argparse.ArgumentParser(prog='timm-sknet', description=__doc__)
    sub = parser.add_subparsers(dest='command', required=True)
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        sub_parser = sub.add_parser(name, help=help_text, description=help_text, add_help=False)  # module's parser owns -h
        sub_parser.set_defaults(_module=module_name)
    args, _ = parser.parse_known_args(argv)
    module = importlib.import_module(args._module)
    command_parser = argparse.ArgumentParser(prog=f'timm-sknet {args.command}', description=SUBCOMMANDS[args.command][1])
    module.configure_parser(command_parser)
    command_args = command_parser.parse_args((sys.argv[1:] if argv is None else argv)[1:])
    return module.run(command_args)


def main() -> None:
    run_cli('timm-sknet', _main)

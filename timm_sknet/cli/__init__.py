"""timm-sknet: the project's commands (validate weights, publish them to the Hub, list the installed ones,
analyse SK attention).

Commands are found through the ``timm_sknet.commands`` entry points (pyproject.toml): each names a module with
``HELP`` (one line), ``configure_parser(parser)`` and ``run(args) -> int``. ``hub_cards`` adds ``validate`` and
``publish`` that way, so this package never imports it. Only the chosen command's module is imported, and no
command module imports torch before its arguments are parsed, so every ``--help`` answers at once.
"""
import argparse
import sys
from importlib.metadata import EntryPoint, entry_points
from typing import Dict, List, Optional

from ..io.errors import UserError, run_cli

__all__ = ['COMMAND_GROUP', 'command_names', 'main']

COMMAND_GROUP = 'timm_sknet.commands'
_PROG = 'timm-sknet'


def _commands() -> Dict[str, EntryPoint]:
    found = {ep.name: ep for ep in entry_points(group=COMMAND_GROUP)}
    if not found:
        raise UserError(f'no {_PROG} commands are registered (entry points {COMMAND_GROUP!r}); install the project '
                        'with: pip install -e .')
    return dict(sorted(found.items()))


def command_names() -> List[str]:
    """The installed commands, e.g. ``['attention', 'installed', 'publish', 'validate']``."""
    return list(_commands())


def _main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    commands = _commands()
    if argv and argv[0] in commands:
        module = commands[argv[0]].load()
        parser = argparse.ArgumentParser(prog=f'{_PROG} {argv[0]}', description=module.HELP)
        module.configure_parser(parser)
        return module.run(parser.parse_args(argv[1:]))
    # no command, --help or a typo: the listing (every command module is light to import)
    parser = argparse.ArgumentParser(prog=_PROG, description=__doc__.split('\n\n')[0])
    sub = parser.add_subparsers(dest='command', required=True, metavar='COMMAND')
    for name, entry_point in commands.items():
        sub.add_parser(name, help=entry_point.load().HELP)
    parser.parse_args(argv)  # exits: prints the help, or names what is wrong
    return 2


def main() -> None:
    run_cli(_PROG, _main)

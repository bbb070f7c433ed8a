"""The ``timm-sknet`` dispatcher, imported once ``run_cli`` handles errors and Ctrl-C.

Commands are found through the ``timm_sknet.commands`` entry points (pyproject.toml), each a ``Command``: its
help line, its argument parser, and the module whose ``run(args) -> int`` does the work. ``hub_cards`` adds
``validate`` and ``publish`` that way, so this package never imports it. A command's parser imports no torch and
its work module is imported only after the arguments are parsed, so every ``--help`` answers at once.
"""
import argparse
import importlib
import sys
from importlib.metadata import EntryPoint, entry_points
from typing import Any, Callable, Dict, List, NamedTuple

from ..io.errors import UserError

__all__ = ['COMMAND_GROUP', 'Command', 'command_names', 'comma_separated', 'dispatch', 'main']

COMMAND_GROUP = 'timm_sknet.commands'
PROG = 'timm-sknet'
_DESCRIPTION = ('the project\'s commands: validate weights, publish them to the Hub, list the installed ones, '
                'analyse SK attention')


class Command(NamedTuple):
    """One ``timm-sknet`` command, as an entry point of the ``timm_sknet.commands`` group names it."""
    help: str  # one line, for the command list and the top of its --help
    configure_parser: Callable[[argparse.ArgumentParser], None]  # adds its arguments; imports nothing heavy
    implementation: str  # the module whose run(args) -> int does the work, imported after parsing


def _commands() -> Dict[str, EntryPoint]:
    found = {ep.name: ep for ep in entry_points(group=COMMAND_GROUP)}
    if not found:
        raise UserError(f'no {PROG} commands are registered (entry points {COMMAND_GROUP!r}); install the project '
                        'with: pip install -e .')
    return dict(sorted(found.items()))


def comma_separated(item_type: Callable[[str], Any]) -> Callable[[str], List[Any]]:
    """An argparse ``type`` for a list in one value (``--scales 1,1.5,2``): a list option that took several values
    would swallow the positional arguments after it."""
    def parse(text: str) -> List[Any]:
        items = [item.strip() for item in text.split(',')]
        if not all(items):
            raise argparse.ArgumentTypeError(f'{text!r} has an empty item; separate the values with single commas')
        return [item_type(item) for item in items]
    parse.__name__ = f'comma-separated {getattr(item_type, "__name__", "value")} list'
    return parse


def command_names() -> List[str]:
    """The installed commands, e.g. ``['attention', 'installed', 'publish', 'validate']``."""
    return list(_commands())


def dispatch(argv: List[str]) -> int:
    """Run the command ``argv`` names with the rest of ``argv``; without one, list the commands."""
    commands = _commands()
    if argv and argv[0] in commands:
        command: Command = commands[argv[0]].load()
        parser = argparse.ArgumentParser(prog=f'{PROG} {argv[0]}', description=command.help)
        command.configure_parser(parser)
        args = parser.parse_args(argv[1:])
        return importlib.import_module(command.implementation).run(args)
    # no command, --help or a typo: the list of commands
    parser = argparse.ArgumentParser(prog=PROG, description=_DESCRIPTION)
    sub = parser.add_subparsers(dest='command', required=True, metavar='COMMAND')
    for name, entry_point in commands.items():
        sub.add_parser(name, help=entry_point.load().help)
    parser.parse_args(argv)  # exits: prints the help, or names what is wrong
    return 2


def main() -> int:
    """``timm-sknet`` with this process's arguments."""
    return dispatch(sys.argv[1:])

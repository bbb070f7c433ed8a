"""timm-sknet: the project's commands (validate weights, publish them to the Hub, list the installed ones,
analyse SK attention); the dispatcher and the ``Command`` a command is registered as are in ``dispatch.py``.

This module imports nothing heavy, so that Ctrl-C at any moment after the interpreter starts ends in one line.
"""
import sys

from ..io.errors import run_cli


def _dispatch() -> int:
    from .dispatch import dispatch  # argparse and importlib.metadata: imported once run_cli handles Ctrl-C
    return dispatch(sys.argv[1:])


def main() -> None:
    run_cli('timm-sknet', _dispatch)

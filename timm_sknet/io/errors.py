"""User-facing errors: one line naming the problem and the fix, a non-zero exit, no traceback.

Console entry points import ``run_cli`` before anything else, so this module imports nothing the interpreter has
not loaded already: Ctrl-C during a command's own (long) imports is then one line too.
"""
from __future__ import annotations  # the hints are never evaluated: typing is not imported at run time

import codecs
import sys

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (type checkers read it the same way)
if TYPE_CHECKING:
    from types import ModuleType
    from typing import Callable, NoReturn

INTERRUPTED = 'interrupted (Ctrl-C); nothing partial was left behind'
NAME_BYTES_ERRORS = 'timm_sknet.name_bytes'  # the error handler of the console streams, registered below


def _name_bytes_escaped(error: UnicodeError) -> tuple:
    """A file name that is not UTF-8 reaches Python as surrogates (PEP 383): print its bytes as ``\\xNN``, as
    ``files.printable_name`` writes it into files; anything else unprintable as a backslash escape."""
    if isinstance(error, UnicodeEncodeError):
        chunk = error.object[error.start:error.end]
        if all(0xdc80 <= ord(c) <= 0xdcff for c in chunk):
            return ''.join(f'\\x{ord(c) - 0xdc00:02x}' for c in chunk), error.end
    return codecs.backslashreplace_errors(error)


codecs.register_error(NAME_BYTES_ERRORS, _name_bytes_escaped)


class UserError(Exception):
    """A problem the user caused and can fix (bad file, wrong model, missing extra, existing output)."""


def require_module(name: str, extra: str) -> ModuleType:
    """Import an optional dependency or fail with the pip command that installs it."""
    import importlib
    try:
        return importlib.import_module(name)
    except ImportError:
        raise UserError(f"{name} is not installed; install it with: pip install 'timm-sknet[{extra}]'") from None


def _one_line(text: str) -> str:
    """``text`` with control characters escaped (``\\n`` for a newline): names read from a damaged file may hold
    them, and an error stays one line all the same."""
    return ''.join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def run_cli(prog: str, main: Callable[[], int]) -> NoReturn:
    """Run a console entry point, turning UserError and Ctrl-C into a one-line message and exit code (2, 130).

    The command's heavy imports belong inside ``main``, so that Ctrl-C during them is one line too. File names
    that are not UTF-8 (which the OS accepts) are printed with ``\\xNN`` escapes rather than failing the print.
    """
    try:
        for stream in (sys.stdout, sys.stderr):
            if hasattr(stream, 'reconfigure'):  # not a test's capture object
                stream.reconfigure(errors=NAME_BYTES_ERRORS)
        code = main()
    except UserError as e:
        print(f'{prog}: error: {_one_line(str(e))}', file=sys.stderr)
        code = 2
    except KeyboardInterrupt as e:  # a command may say what an interrupt leaves (a release: how to resume)
        print(f'{prog}: error: {_one_line(str(e.args[0])) if e.args else INTERRUPTED}', file=sys.stderr)
        code = 130
    sys.exit(code)


def run_command(prog: str, module: str) -> NoReturn:
    """``run_cli`` for a console command whose work is ``module``'s ``main() -> int``, imported only once errors and
    Ctrl-C are handled: the entry point's own module then imports nothing heavy, and Ctrl-C is one line at any
    moment."""
    def main() -> int:
        import importlib
        return importlib.import_module(module).main()
    run_cli(prog, main)

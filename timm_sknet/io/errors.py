"""User-facing errors: one line naming the problem and the fix, a non-zero exit, no traceback.

Console entry points import ``run_cli`` before anything else, so this module imports nothing the interpreter has
not loaded already: Ctrl-C during a command's own (long) imports is then one line too.
"""
from __future__ import annotations  # the hints are never evaluated: typing is not imported at run time

import codecs
import os
import sys

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (type checkers read it the same way)
if TYPE_CHECKING:
    from types import ModuleType
    from typing import Callable, NoReturn

INTERRUPTED = 'interrupted (Ctrl-C); nothing partial was left behind'
NAME_BYTES_ERRORS = 'timm_sknet.name_bytes'  # the error handler of the console streams, registered below


def _escaped(char: str) -> str:
    """A character a message cannot show as it is: a byte of a file name that is not UTF-8 (which Python keeps as a
    surrogate, PEP 383) as ``\\xNN``, as ``files.printable_name`` writes it into files; anything else as Python's
    backslash escape (``\\n`` for a newline)."""
    code = ord(char)
    if 0xdc80 <= code <= 0xdcff:
        return f'\\x{code - 0xdc00:02x}'
    return repr(char)[1:-1]


def printable(text: str) -> str:
    """``text`` as a message shows it: on one line (names read from a damaged file may hold control characters), and
    the bytes of a name that is not UTF-8 as ``\\xNN``."""
    return ''.join(c if c.isprintable() else _escaped(c) for c in text)


def shell_word(word: str) -> str:
    """``word`` quoted for a command the user copies into a shell (bash, zsh): as ``shlex.quote`` does, but a name
    that is not UTF-8, or holds control characters, as ``$'...'`` with its bytes as ``\\xNN``, which such a shell reads
    back as the same bytes: the command works as printed."""
    if word.isprintable():
        import shlex  # not loaded at start-up: only the messages that print a command need it
        return shlex.quote(word)
    return "$'" + ''.join(chr(b) if 0x20 <= b < 0x7f and b not in b"'\\" else f'\\x{b:02x}'
                          for b in os.fsencode(word)) + "'"


def _name_bytes_escaped(error: UnicodeError) -> tuple:
    """The console streams' error handler: what reaches them without ``printable`` (a path in a line printed
    as it is) is shown the same way; anything else unencodable as a backslash escape."""
    if isinstance(error, UnicodeEncodeError):
        chunk = error.object[error.start:error.end]
        if all(0xdc80 <= ord(c) <= 0xdcff for c in chunk):
            return ''.join(map(_escaped, chunk)), error.end
    return codecs.backslashreplace_errors(error)


codecs.register_error(NAME_BYTES_ERRORS, _name_bytes_escaped)


class UserError(Exception):
    """A problem the user caused and can fix (bad file, wrong model, missing extra, existing output).

    Its text is ``printable``, wherever it is shown (this one line, a traceback, ``str()``): a name that is not UTF-8
    appears as ``\\xNN``, as the README promises, never as Python's ``\\udcNN`` surrogate escape."""

    def __str__(self) -> str:
        return printable(super().__str__())


def require_module(name: str, extra: str) -> ModuleType:
    """Import an optional dependency or fail with the pip command that installs it."""
    import importlib
    try:
        return importlib.import_module(name)
    except ImportError:
        raise UserError(f"{name} is not installed; install it with: pip install 'timm-sknet[{extra}]'") from None


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
        sys.stdout.flush()  # here, where a reader that went away is caught, not at exit
    except UserError as e:
        print(f'{prog}: error: {e}', file=sys.stderr)
        code = 2
    except (KeyboardInterrupt, RuntimeError) as e:
        # Python < 3.12 wraps an exception raised while a class is made (in __set_name__) in a RuntimeError
        if not isinstance(e, KeyboardInterrupt) and not isinstance(e.__cause__, KeyboardInterrupt):
            raise
        # a command may say what an interrupt leaves (a release: how to resume)
        said = str(e.args[0]) if isinstance(e, KeyboardInterrupt) and e.args else INTERRUPTED
        print(f'{prog}: error: {printable(said)}', file=sys.stderr)
        code = 130
    except BrokenPipeError:  # the reader went away (`timm-sknet installed | head -1`): not worth a word
        import os
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so that the exit's flush cannot fail again
        code = 1
    sys.exit(code)


def run_command(prog: str, module: str) -> NoReturn:
    """``run_cli`` for a console command whose work is ``module``'s ``main() -> int``, imported only once errors and
    Ctrl-C are handled: the entry point's own module then imports nothing heavy, and Ctrl-C is one line at any
    moment."""
    def main() -> int:
        import importlib
        return importlib.import_module(module).main()
    run_cli(prog, main)

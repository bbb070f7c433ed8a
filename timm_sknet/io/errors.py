"""User-facing errors: one line naming the problem and the fix, a non-zero exit, no traceback."""
import importlib
import sys
from types import ModuleType
from typing import Callable, NoReturn


class UserError(Exception):
    """A problem the user caused and can fix (bad file, wrong model, missing extra, existing output)."""


def require_module(name: str, extra: str) -> ModuleType:
    """Import an optional dependency or fail with the pip command that installs it."""
    try:
        return importlib.import_module(name)
    except ImportError:
        raise UserError(f"{name} is not installed; install it with: pip install 'timm-sknet[{extra}]'") from None


def _one_line(text: str) -> str:
    """``text`` with control characters escaped (``\\n`` for a newline): names read from a damaged file may hold
    them, and an error stays one line all the same."""
    return ''.join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def run_cli(prog: str, main: Callable[[], int]) -> NoReturn:
    """Run a console entry point, turning UserError and Ctrl-C into a one-line message and exit code."""
    try:
        code = main()
    except UserError as e:
        print(f'{prog}: error: {_one_line(str(e))}', file=sys.stderr)
        code = 2
    except KeyboardInterrupt:
        print(f'{prog}: interrupted', file=sys.stderr)
        code = 130
    sys.exit(code)

"""timm-sknet: the project's commands (validate weights, publish them to the Hub, list the installed ones,
analyse SK attention). The dispatcher, and the ``Command`` a command is registered as, are in ``dispatch.py``,
imported once Ctrl-C is handled."""
from ..io.errors import run_command


def main() -> None:
    run_command('timm-sknet', 'timm_sknet.cli.dispatch')

"""Ctrl-C from a console script's first statement on: the scripts start in ``_timm_sknet_console``, whose handler
covers the packages' own imports (before ``run_cli`` is running) and the Ctrl-C that CPython catches and drops while
it checks the script's path. The milliseconds before (CPython starting) are measured by
``python -m benchmarks.sigint_window``, not tested: a timed test would fail by the load of the machine."""
import os
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import pytest

from support import run_cli

INTERRUPTED = 'timm-sknet: error: interrupted (Ctrl-C); nothing partial was left behind\n'
SCRIPTS = {'timm-sknet': 'timm_sknet', 'convert-caffe': 'convert_caffe',
           'convert-pytorchinsight': 'convert_pytorchinsight'}


def test_every_console_script_starts_in_the_entry_module():
    installed = {ep.name: ep.value for ep in entry_points(group='console_scripts') if ep.name in SCRIPTS}
    assert installed == {name: f'_timm_sknet_console:{function}' for name, function in SCRIPTS.items()}


# what the generated script does (import the entry module, call its function), with a Ctrl-C put at one moment
_SCRIPT = """
import sys
{before}
from _timm_sknet_console import timm_sknet
sys.argv = ['timm-sknet', 'installed']
sys.exit(timm_sknet())
"""
_DURING_PACKAGE_IMPORTS = """
class CtrlC:  # as a SIGINT arriving while the package's modules are imported, before run_cli runs
    def find_spec(self, name, path=None, target=None):
        if name == 'timm_sknet.io.errors':
            sys.meta_path.remove(self)  # a signal comes once
            raise KeyboardInterrupt
sys.meta_path.insert(0, CtrlC())
"""
# CPython 3.11 prints a Ctrl-C that lands while it checks whether argv[0] is an import path entry ("Failed
# checking if argv[0] is an import path entry"), leaves it in sys.last_value and runs the script all the same
_CAUGHT_BY_CPYTHON = 'sys.last_type, sys.last_value = KeyboardInterrupt, KeyboardInterrupt()'


@pytest.mark.parametrize('before', [_DURING_PACKAGE_IMPORTS, _CAUGHT_BY_CPYTHON], ids=['package imports', 'cpython'])
def test_ctrl_c_before_run_cli_is_one_line(tmp_path, before):
    proc = subprocess.run([sys.executable, '-c', _SCRIPT.format(before=before)], capture_output=True, text=True,
                          timeout=120, env={'TIMM_SKNET_HOME': str(tmp_path / 'store'), 'PATH': '/usr/bin:/bin'})
    assert (proc.returncode, proc.stderr) == (130, INTERRUPTED)
    assert proc.stdout == ''  # the command did not run


def test_ctrl_c_wrapped_by_python_is_one_line(monkeypatch, capsys):
    """Python < 3.12 wraps an exception raised in ``__set_name__`` (a Ctrl-C while a class with such descriptors is
    made, as ipaddress' during an import) in a RuntimeError: it is a Ctrl-C all the same."""
    class CtrlC:
        def __set_name__(self, owner, name):
            raise KeyboardInterrupt

    def work(args):
        type('Made', (), {'attribute': CtrlC()})
        return 0

    monkeypatch.setattr('timm_sknet.cli.installed.run', work)
    assert run_cli(monkeypatch, 'installed') == 130
    assert capsys.readouterr().err == INTERRUPTED


def test_a_reader_that_goes_away_ends_the_command_without_a_traceback(tmp_path):
    """``timm-sknet installed | head -1``: the pipe closes before the listing is written; the command ends quietly."""
    read_end, write_end = os.pipe()
    os.close(read_end)  # a reader that has already gone: every write fails with EPIPE
    try:
        proc = subprocess.run([str(Path(sys.executable).parent / 'timm-sknet'), 'installed'], stdout=write_end,
                              stderr=subprocess.PIPE, text=True, timeout=60,
                              env=dict(os.environ, TIMM_SKNET_HOME=str(tmp_path / 'store')))
    finally:
        os.close(write_end)
    assert proc.stderr == '' and proc.returncode == 1

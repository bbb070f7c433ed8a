"""Helpers shared by the tests: BatchNorms worth folding or converting, the CLI run in-process, a command's --help
timed in a fresh interpreter."""
import argparse
import json
import subprocess
import sys
import time
from typing import Callable, List, NamedTuple, Tuple

import pytest
import torch
from torch import nn

from timm_sknet.cli import main


def randomize_norms(module: nn.Module, seed: int = 1) -> None:
    """Running statistics and affine parameters far from their initial values, so that every BatchNorm matters to
    the output and folding them into convs (or converting them) is actually exercised."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                c = m.num_features
                m.running_mean.copy_(torch.randn(c, generator=gen) * 0.3)
                m.running_var.copy_(torch.rand(c, generator=gen) + 0.5)
                m.weight.copy_(torch.rand(c, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(c, generator=gen) * 0.3)


def run_cli(monkeypatch, *argv: str) -> int:
    """``timm-sknet ARGV`` in this process (torch and timm are already imported); returns its exit code."""
    monkeypatch.setattr(sys, 'argv', ['timm-sknet', *argv])
    with pytest.raises(SystemExit) as exit_info:
        main()
    return exit_info.value.code


class HelpRun(NamedTuple):
    code: int
    out: str
    seconds: float  # wall time of the whole process, interpreter start included
    heavy_modules: List[str]  # of torch, timm, numpy's C parts... that the process imported before exiting


_HELP_PROBE = """
import importlib, json, sys
module, sys.argv = sys.argv[1], sys.argv[2:]
try:
    importlib.import_module(module).main()
    code = 0
except SystemExit as e:
    code = e.code
print(json.dumps(dict(code=code, heavy=sorted(m for m in ('torch', 'timm', 'transformers') if m in sys.modules))),
      file=sys.stderr)
"""


def run_help(module: str, prog: str, *argv: str) -> HelpRun:
    """``prog ARGV --help`` as its console script runs it (``module.main()``), in a fresh interpreter."""
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, '-c', _HELP_PROBE, module, prog, *argv, '--help'],
                          capture_output=True, text=True, timeout=60)
    seconds = time.perf_counter() - start
    report = json.loads(proc.stderr.strip().splitlines()[-1])
    return HelpRun(report['code'], proc.stdout, seconds, report['heavy'])


def options_without_help(parser: argparse.ArgumentParser) -> List[str]:
    """The options and arguments of ``parser`` that say nothing about themselves in --help."""
    return [action.dest for action in parser._actions  # argparse has no public list of a parser's arguments
            if not isinstance(action, argparse._HelpAction) and not action.help]


def in_process_command(prog: str, main: Callable[[], None], capsys, monkeypatch) -> Callable[..., Tuple[int, str, str]]:
    """``prog ARGS`` through its console entry point ``main``, in this process: (exit code, stdout, stderr)."""
    def run(*args) -> Tuple[int, str, str]:
        monkeypatch.setattr(sys, 'argv', [prog, *map(str, args)])
        with pytest.raises(SystemExit) as exit_info:
            main()
        out, err = capsys.readouterr()
        return exit_info.value.code, out, err
    return run


def refusal_checker(run: Callable[..., Tuple[int, str, str]], out_dir) -> Callable[..., str]:
    """``run(*args)`` must refuse cleanly: exit 2, one line on stderr and no traceback, ``out_dir`` left empty;
    returns that line."""
    def check(*args) -> str:
        code, out, err = run(*args)
        assert code == 2, (out, err)
        assert 'Traceback' not in out + err
        assert len(err.strip().splitlines()) == 1, err
        assert list(out_dir.iterdir()) == [], 'something was left behind'
        return err.strip()
    return check

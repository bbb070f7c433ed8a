"""Helpers shared by the tests: BatchNorms worth folding or converting, the CLI run in-process."""
import sys

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

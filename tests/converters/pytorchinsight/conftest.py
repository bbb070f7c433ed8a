"""Fixtures of the convert-pytorchinsight tests: the authors' SK-ResNet-50 state dict (random weights, their names),
its checkpoint in their exact format, and convert-pytorchinsight run in this process (``out_dir`` comes from
tests/converters/conftest.py)."""
from pathlib import Path
from typing import Callable, Dict, Tuple

import pytest
import torch

from authors_checkpoint import authors_state_dict, save_authors_checkpoint
from converters.pytorchinsight.cli import main as convert_main
from support import in_process_command, refusal_checker


@pytest.fixture(scope='session')
def sk_resnet50_state() -> Dict[str, torch.Tensor]:
    """The authors' SK-ResNet-50 state dict under their names, random trained-looking values (never modified)."""
    return authors_state_dict('sk_resnet50')


@pytest.fixture(scope='session')
def sk_resnet50_checkpoint(sk_resnet50_state, tmp_path_factory) -> Path:
    """That state dict as their training script saves it (legacy serialization, DataParallel keys, optimizer)."""
    return save_authors_checkpoint(tmp_path_factory.mktemp('authors') / 'sk_resnet50.pth.tar', sk_resnet50_state)


@pytest.fixture
def convert_pytorchinsight(capsys, monkeypatch) -> Callable[..., Tuple[int, str, str]]:
    """``convert-pytorchinsight ARGS`` in this process (torch is already imported): (exit code, stdout, stderr)."""
    return in_process_command('convert-pytorchinsight', convert_main, capsys, monkeypatch)


@pytest.fixture
def refused_conversion(convert_pytorchinsight, out_dir) -> Callable[..., str]:
    """Run convert-pytorchinsight, expect a clean refusal and an untouched ``out_dir``; return its one line."""
    return refusal_checker(convert_pytorchinsight, out_dir)

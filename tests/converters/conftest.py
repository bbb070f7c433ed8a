"""Fixtures of the converter tests: a release-format SKNet-50 caffemodel, and convert-caffe run in this process."""
from pathlib import Path
from typing import Callable, Tuple

import pytest
import timm

import timm_sknet  # noqa: F401  (registers the models)
from support import in_process_command, refusal_checker
from converters.caffe.cli import main as convert_main
from converters.caffe.writer import write_caffemodel


@pytest.fixture(scope='session')
def sknet50_caffemodel(tmp_path_factory) -> Path:
    """A release-format SKNet-50 (random weights) that converts; its prototxt lies beside it."""
    path = tmp_path_factory.mktemp('valid') / 'sknet50.caffemodel'
    write_caffemodel(timm.create_model('sknet50'), path, path.with_suffix('.prototxt'))
    return path


@pytest.fixture
def out_dir(tmp_path) -> Path:
    path = tmp_path / 'out'
    path.mkdir()
    return path


@pytest.fixture
def convert_caffe(capsys, monkeypatch) -> Callable[..., Tuple[int, str, str]]:
    """``convert-caffe ARGS`` in this process (torch is already imported): (exit code, stdout, stderr)."""
    return in_process_command('convert-caffe', convert_main, capsys, monkeypatch)


@pytest.fixture
def refused(convert_caffe, out_dir) -> Callable[..., str]:
    """Run convert-caffe, expect a clean refusal and an untouched ``out_dir``; return the one line it printed."""
    return refusal_checker(convert_caffe, out_dir)

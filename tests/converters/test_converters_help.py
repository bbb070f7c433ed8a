"""Both converters answer --help at once, in plain text, without importing torch, and explain every option."""
import argparse
import importlib

import pytest

from support import options_without_help, run_help

CONVERTERS = {'convert-caffe': 'converters.caffe', 'convert-pytorchinsight': 'converters.pytorchinsight'}


@pytest.mark.parametrize('prog', CONVERTERS)
def test_help_is_fast_plain_and_torch_free(prog):
    result = run_help(f'{CONVERTERS[prog]}.cli', prog)
    assert result.code == 0
    assert result.out.startswith(f'usage: {prog}') and '``' not in result.out
    assert '--install' in result.out and '--output OUTPUT' in result.out
    assert result.heavy_modules == []
    assert result.seconds < 1.0


@pytest.mark.parametrize('prog', CONVERTERS)
def test_every_option_is_explained(prog):
    parser = argparse.ArgumentParser(prog=prog)
    importlib.import_module(f'{CONVERTERS[prog]}.command').configure_parser(parser)
    assert options_without_help(parser) == []

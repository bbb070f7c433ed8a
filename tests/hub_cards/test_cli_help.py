"""Every command's --help reads as plain text: no reST markup (double backticks) from the docstrings it shows."""
import sys

import pytest

from converters.caffe.cli import main as convert_caffe_main
from support import run_cli
from timm_sknet.cli.dispatch import command_names


@pytest.mark.parametrize('argv', [[], *([name] for name in command_names())], ids=lambda argv: argv[0] if argv else 'main')
def test_timm_sknet_help_is_plain_text(monkeypatch, capsys, argv):
    assert run_cli(monkeypatch, *argv, '--help') == 0
    out = capsys.readouterr().out
    assert out.startswith('usage: timm-sknet') and '``' not in out


def test_convert_caffe_help_is_plain_text(monkeypatch, capsys):
    monkeypatch.setattr(sys, 'argv', ['convert-caffe', '--help'])
    with pytest.raises(SystemExit) as exit_info:
        convert_caffe_main()
    out = capsys.readouterr().out
    assert exit_info.value.code == 0
    assert out.startswith('usage: convert-caffe') and '``' not in out
    assert '--install' in out and '--output OUTPUT' in out

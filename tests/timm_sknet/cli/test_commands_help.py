"""Every ``timm-sknet`` command answers --help at once, in plain text, without importing torch, and says what each
of its options is for (hub_cards' validate and publish are reached through the same entry points)."""
import argparse
import os
import subprocess
import sys
from importlib.metadata import entry_points

import pytest

from support import options_without_help, run_help
from timm_sknet.cli.dispatch import COMMAND_GROUP, command_names

HELP_SECONDS = 1.0


@pytest.mark.parametrize('command', ['', *command_names()], ids=lambda name: name or 'timm-sknet')
def test_help_is_fast_plain_and_torch_free(command):
    argv = [command] if command else []
    result = run_help('timm_sknet.cli', 'timm-sknet', *argv)
    assert result.code == 0
    assert result.out.startswith(f"usage: timm-sknet{' ' + command if command else ''}") and '``' not in result.out
    assert result.heavy_modules == []
    assert result.seconds < HELP_SECONDS


def test_every_command_is_listed_and_every_option_explained():
    commands = {ep.name: ep.load() for ep in entry_points(group=COMMAND_GROUP)}
    assert sorted(commands) == ['attention', 'installed', 'publish', 'release', 'validate'] == command_names()
    for name, command in commands.items():
        parser = argparse.ArgumentParser(prog=f'timm-sknet {name}')
        command.configure_parser(parser)
        assert options_without_help(parser) == [], name


def test_the_data_folder_after_a_list_option_stays_a_positional():
    from hub_cards.commands import VALIDATE
    parser = argparse.ArgumentParser()
    VALIDATE.configure_parser(parser)
    args = parser.parse_args(['--model', 'sknet50', '--weights', 'w.safetensors', '--input-size', '224,320', 'DATA'])
    assert (args.input_size, str(args.data_dir)) == ([224, 320], 'DATA')
    with pytest.raises(SystemExit):
        parser.parse_args(['--model', 'm', '--weights', 'w', '--input-size', '224,,320', 'DATA'])


def test_installed_help_says_where_the_store_is(tmp_path):
    store = tmp_path / 'my-store'
    env = dict(os.environ, TIMM_SKNET_HOME=str(store), COLUMNS='400')  # argparse would wrap a long path
    out = subprocess.run([sys.executable, '-c', 'from timm_sknet.cli import main; main()', 'installed', '--help'],
                         env=env, capture_output=True, text=True, timeout=60).stdout
    assert '$TIMM_SKNET_HOME' in out and f'here: {store}' in out

"""What the docs pages of one test session share: the temporary root, the stand-in files (made once), and the Hub
stand-in (started on the first page that asks for it).

The Hub is two loopback servers over one folder of git repos: ``tests/hub_write_server.py`` takes what
``timm-sknet publish`` uploads (``docs-test: hub write``), and olah, a Hub mirror, serves those repos to timm,
transformers and huggingface_hub (``docs-test: hub read``), as in ``tests/hub_cards/test_hub_upload.py``. The write
server passes file downloads on to olah, so that a command that uploads and then reads back (``timm-sknet
release``) has one endpoint for both, as on the Hub.
"""
import contextlib
import os
import subprocess
import sys
from pathlib import Path
from typing import Dict, Optional

from hub_write_server import GIT_ENV

from .standins import make

HUB_SERVER = Path(__file__).resolve().parents[1] / 'hub_write_server.py'
HUB_TOKEN = 'hf_docsLoopbackToken7c1d'
PROBE_REPO = 'docs-test/probe'


# what a page's `docs-test: installed NAME` copies into its store: the stand-in and the command that installs it
INSTALLS = {
    'sknet50.caffe_in1k': ('SKNet-50.caffemodel', ['convert-caffe', '--model', 'sknet50', '--install', '--verify']),
    'sk_resnet50.pytorchinsight_in1k': (
        'sk_resnet50.pth.tar', ['convert-pytorchinsight', '--model', 'sk_resnet50', '--install']),
}
TIMM_SCRIPTS_ENV = 'TIMM_SCRIPTS'
TIMM_SCRIPTS = ('train.py', 'validate.py', 'inference.py', 'benchmark.py')


class DocsContext:
    def __init__(self, tmp_root: Path) -> None:
        self.tmp_root = tmp_root
        # timm's scripts live in its repository, not its PyPI release: the pages run them given a checkout
        scripts = os.environ.get(TIMM_SCRIPTS_ENV)
        self.timm_scripts: Optional[Path] = Path(scripts) if scripts else None
        if self.timm_scripts and not all((self.timm_scripts / name).is_file() for name in TIMM_SCRIPTS):
            raise ValueError(f'{TIMM_SCRIPTS_ENV}={scripts} holds no {", ".join(TIMM_SCRIPTS)}: give a checkout of '
                             'timm\'s repository')
        self.standins = tmp_root / 'standins'
        self.standins.mkdir()
        self._servers = contextlib.ExitStack()
        self._endpoints: Optional[Dict[str, str]] = None

    def installed_slot(self, name: str) -> Path:
        """The store slot ``name`` (e.g. ``sknet50.caffe_in1k``) as the page that converts it leaves it: installed
        once per session by the real command, from the stand-in of the authors' file (``INSTALLS``)."""
        if name not in INSTALLS:
            raise KeyError(f'no install recipe for {name!r}; known: {", ".join(sorted(INSTALLS))} '
                           '(tests/docs_harness/context.py)')
        store = self.tmp_root / 'store'
        slot = store / name
        if not slot.exists():
            source, command = INSTALLS[name]
            env = dict(os.environ, TIMM_SKNET_HOME=str(store), HF_HUB_OFFLINE='1')
            subprocess.run([str(Path(sys.executable).parent / command[0]), str(make(source, self.standins)),
                            *command[1:]], check=True, env=env, capture_output=True)
        return slot

    def hub_env(self, side: str) -> Dict[str, str]:
        """The client's settings for publishing (``write``) or downloading (``read``) through the loopback Hub."""
        if self._endpoints is None:
            self._endpoints = self._start_hub()
        env = dict(HF_ENDPOINT=self._endpoints[side], HF_HUB_OFFLINE='0', HF_HUB_DISABLE_XET='1')
        if side == 'write':
            env['HF_TOKEN'] = HUB_TOKEN  # what `hf auth login` gives a user
        return env

    def _start_hub(self) -> Dict[str, str]:
        from hub_helpers import free_port, olah, serve  # torch and timm: only for the pages that need a Hub
        workdir = self.tmp_root / 'hub'
        root = workdir / 'root'
        workdir.mkdir()
        # olah is ready once it serves a file: one repo of its own, beside those the pages publish
        probe = root / 'models' / PROBE_REPO
        probe.mkdir(parents=True)
        (probe / 'README.md').write_text('the docs tests\' probe of the loopback Hub\n')
        for git in (['init', '-q', '-b', 'main'], ['add', '-A'], ['commit', '-q', '-m', 'probe']):
            subprocess.run(['git', '-C', str(probe), *git], check=True, env=GIT_ENV)
        read = self._servers.enter_context(olah(root, workdir, f'{PROBE_REPO}/resolve/main/README.md'))
        port = free_port()
        write = f'http://127.0.0.1:{port}'
        self._servers.enter_context(serve(
            'hub_write_server', [sys.executable, str(HUB_SERVER), '--root', str(root), '--port', str(port),
                                 '--token', HUB_TOKEN, '--read-through', read], workdir, workdir / 'write-server.log',
            f'{write}/'))
        return dict(write=write, read=read)

    def close(self) -> None:
        self._servers.close()

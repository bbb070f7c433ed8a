"""Fixtures of the weights tests."""
import subprocess
import sys
from pathlib import Path
from typing import Iterator, NamedTuple

import pytest

from hub_helpers import FAIL_SCRIPT, client_env, free_port

class DeadHub(NamedTuple):
    proc: subprocess.Popen  # FAIL_SCRIPT building sknet50; its stdout is one JSON line
    store: Path  # the empty local weights store it checked


@pytest.fixture(scope='session', autouse=True)
def dead_hub(tmp_path_factory) -> Iterator[DeadHub]:
    """``pretrained=True`` with an empty store and a Hub endpoint that refuses connections (online mode, so
    huggingface_hub retries with back-off, about 24 s). Started with the first test here, so that the others fill
    its waiting; test_store.py reads the result."""
    workdir = tmp_path_factory.mktemp('dead-hub')
    store = workdir / 'empty-store'
    env = client_env(f'http://127.0.0.1:{free_port()}', workdir / 'hf', store)
    with subprocess.Popen([sys.executable, '-c', FAIL_SCRIPT, 'sknet50'], env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True) as proc:
        try:
            yield DeadHub(proc, store)
        finally:
            proc.kill()

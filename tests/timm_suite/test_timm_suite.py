"""timm's own tests/test_models.py, run on one model per code path (the full run: tests/timm_suite/run.py)."""
import re
import subprocess
import sys
from pathlib import Path

import pytest

RUNNER = Path(__file__).parent / 'run.py'


def test_timm_model_suite_quick_subset():
    sys.path.insert(0, str(RUNNER.parent))
    try:
        import run as timm_suite
    finally:
        sys.path.pop(0)
    if not (timm_suite.SUITE_DIR / 'tests' / 'test_models.py').exists():
        pytest.skip(f"timm's test suite is not unpacked in {timm_suite.SUITE_DIR}: `python {RUNNER} --fetch` "
                    "downloads it from PyPI (make test does this)")
    proc = subprocess.run(
        [sys.executable, str(RUNNER), '--quick'], capture_output=True, text=True, timeout=1500)
    summary = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else proc.stderr[-2000:]
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
    passed = int(re.search(r'(\d+) passed', summary).group(1))
    # 3 models x (forward, backward, default_cfgs, torchscript, features, fx fwd/bwd ...) + 3 x 3 intermediates
    assert passed >= 27, summary

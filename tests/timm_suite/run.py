"""Run timm's own model test suite (``tests/test_models.py`` of the installed timm's source release) on this
package's models, with timm CI's settings (``GITHUB_ACTIONS=1``: no pretrained downloads, big models excluded).

    python tests/timm_suite/run.py --fetch   # download and unpack timm's sdist tests (PyPI; once per version)
    python tests/timm_suite/run.py           # every model this package registers
    python tests/timm_suite/run.py --quick   # one model per code path (CI)

``test_models.py`` selects most tests with ``list_models()``, so they pick up our models once ``timm_sknet`` is
loaded (``-p timm_sknet``). Its forward_intermediates and prune tests select by timm module name instead;
``intermediates_tests.py`` beside this file runs those same timm test functions on our models.
"""
import argparse
import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import timm

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
SUITE_DIR = REPO / '.cache' / f'timm-{timm.__version__}'
# release stem + bottleneck, CIFAR stem, basic block, ShuffleNetV2 trunk
QUICK_MODELS = ('sknet26', 'sknet29_cifar', 'sk_resnet18', 'sk_shufflenetv2_050')


def fetch() -> None:
    """Unpack ``tests/`` and ``pyproject.toml`` (pytest markers) of timm's sdist for the installed version."""
    if (SUITE_DIR / 'tests' / 'test_models.py').exists():
        return
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [sys.executable, '-m', 'pip', 'download', '-q', '--no-deps', '--no-binary', ':all:',
             '-d', tmp, f'timm=={timm.__version__}'], check=True)
        sdist, = Path(tmp).glob('timm-*.tar.gz')
        root = f'timm-{timm.__version__}/'
        with tarfile.open(sdist) as tar:
            members = [m for m in tar.getmembers()
                       if m.name.startswith(root + 'tests/') or m.name == root + 'pyproject.toml']
            for m in members:
                m.name = m.name[len(root):]
            tar.extractall(SUITE_DIR, members=members, filter='data')


def model_filter(quick: bool) -> str:
    """A ``-k`` expression naming our models (each name is a substring of no other model's name)."""
    import timm_sknet
    return ' or '.join(QUICK_MODELS if quick else timm_sknet.model_names())


def run(quick: bool, extra_args: list) -> int:
    if not (SUITE_DIR / 'tests' / 'test_models.py').exists():
        print(f'timm test suite not found in {SUITE_DIR}; run: python {Path(__file__).name} --fetch', file=sys.stderr)
        return 2
    env = dict(os.environ, GITHUB_ACTIONS='1', PYTHONPATH=str(SUITE_DIR / 'tests'))
    cmd = [
        sys.executable, '-m', 'pytest', '-p', 'timm_sknet', '-p', 'no:cacheprovider', '-q',
        '-W', 'ignore::pytest.PytestUnknownMarkWarning', '-W', 'ignore::FutureWarning',
        '--rootdir', str(SUITE_DIR), '-k', model_filter(quick),
        str(SUITE_DIR / 'tests' / 'test_models.py'), str(HERE / 'intermediates_tests.py'), *extra_args]
    return subprocess.run(cmd, env=env, cwd=SUITE_DIR).returncode


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--fetch', action='store_true', help="download timm's test suite and exit")
    parser.add_argument('--quick', action='store_true', help=f'only {", ".join(QUICK_MODELS)}')
    args, pytest_args = parser.parse_known_args()
    if args.fetch:
        fetch()
        return 0
    return run(args.quick, pytest_args)


if __name__ == '__main__':
    sys.exit(main())

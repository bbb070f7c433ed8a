"""The models register themselves whenever timm is imported, in a real install of each kind.

Each install is a throwaway venv into which pip installs this checkout, ``pip install .`` or ``pip install -e .``
(hatchling's PEP 517 / 660 hooks). torch, timm and hatchling come from the running environment through a
path-only ``.pth`` line, so nothing is downloaded. Every check runs in a fresh interpreter started with ``-I``
in an empty directory: only the installed files can be what it imports.
"""
import json
import os
import pkgutil
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path
from typing import Dict, List, Optional

import pytest
import timm
from timm.models import model_entrypoint

import timm_sknet
from timm_sknet._autoload import AUTOLOAD_ENV

REPO = Path(__file__).resolve().parents[2]
TIMEOUT_S = 600

# What a child reports about itself: which heavy modules it holds and how many hooks still wait for timm.
_STATE = '''
import json, sys
def state():
    return dict(
        modules=sorted(m for m in ('torch', 'timm', 'timm_sknet', '_timm_sknet_autoload') if m in sys.modules),
        hooks_waiting=sum(type(f).__name__ == 'TimmImportHook' for f in sys.meta_path),
    )
'''


def sknet_model_names() -> List[str]:
    """Every model this package registers, read back from timm's registry by the package's own module names."""
    names = sorted(timm.list_models(module=list(timm_sknet.MODEL_MODULES)))
    assert 'sknet50' in names and 'sknet26' in names
    return names


def _run(args: List[str], cwd: Path, env: Optional[Dict[str, str]] = None) -> str:
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=TIMEOUT_S)
    assert proc.returncode == 0, f'{args[:3]} failed:\n{proc.stdout}\n{proc.stderr}'
    return proc.stdout


class Install:
    """A venv with this project installed in one mode; runs code in fresh interpreters of it."""

    def __init__(self, root: Path, mode: str):
        self.root = root
        self.mode = mode
        env_dir = root / 'venv'
        venv.EnvBuilder(with_pip=False, symlinks=True).create(env_dir)
        self.python = str(env_dir / 'bin' / 'python')
        purelib = 'import sysconfig; print(sysconfig.get_path("purelib"))'
        self.site_packages = Path(_run([self.python, '-I', '-c', purelib], root).strip())
        # torch, timm, hatchling & co. from the running environment; a bare path line runs no code, adds no hook
        (self.site_packages / '_test_dependencies.pth').write_text(sysconfig.get_path('purelib') + '\n')
        # `pip install .` / `pip install -e .`, offline: pip runs hatchling inside the venv, through that path
        editable = ['-e'] if mode == 'editable' else []
        _run([
            sys.executable, '-m', 'pip', '--python', self.python, 'install', '--quiet', '--no-deps', '--no-index',
            '--no-build-isolation', '--disable-pip-version-check', *editable, str(REPO)], root)

    def run(self, code: str, *args: str, autoload: Optional[str] = None) -> dict:
        env = {k: v for k, v in os.environ.items() if k != AUTOLOAD_ENV}
        if autoload is not None:
            env[AUTOLOAD_ENV] = autoload
        out = _run([self.python, '-I', '-c', _STATE + code, *args], self.root, env)
        return json.loads(out.strip().splitlines()[-1])


@pytest.fixture(scope='module')
def installs() -> Dict[str, Install]:
    """One venv per install mode, shared by this module's tests."""
    return {}


def _install(installs: Dict[str, Install], mode: str, tmp_path_factory) -> Install:
    if mode not in installs:
        installs[mode] = Install(tmp_path_factory.mktemp(mode), mode)
    return installs[mode]


@pytest.fixture(params=['wheel', 'editable'])
def install(request, installs, tmp_path_factory) -> Install:
    return _install(installs, request.param, tmp_path_factory)


@pytest.fixture
def wheel_install(installs, tmp_path_factory) -> Install:
    """For behaviour that does not depend on the install mode."""
    return _install(installs, 'wheel', tmp_path_factory)


def test_installed_files(install):
    assert (install.site_packages / 'timm_sknet_autoload.pth').is_file()
    assert (install.site_packages / '_timm_sknet_autoload.py').is_file()
    # the editable install must not carry a stale copy of the package
    assert (install.site_packages / 'timm_sknet').is_dir() == (install.mode == 'wheel')


def test_start_up_imports_neither_torch_nor_timm(install):
    result = install.run('print(json.dumps(state()))')
    assert result == dict(modules=['_timm_sknet_autoload'], hooks_waiting=1)


def test_env_var_at_start_up_installs_nothing(install):
    for value in ('0', 'false', 'OFF'):
        assert install.run('print(json.dumps(state()))', autoload=value) == dict(
            modules=['_timm_sknet_autoload'], hooks_waiting=0)


def test_import_timm_alone_creates_every_model(install):
    names = sknet_model_names()
    # building a model does not depend on how the package was installed: all of them once, one in the editable
    to_create = names if install.mode == 'wheel' else ['sknet26']
    result = install.run('''
import timm
after_import = state()
for name in sys.argv[1:]:
    model = timm.create_model(name)
    assert type(model).__name__ in ('SKNet', 'SKShuffleNetV2'), name
print(json.dumps(dict(
    after_import=after_import,
    package=sys.modules['timm_sknet'].__file__,
    registered=sorted(timm.list_models(module=list(sys.modules['timm_sknet'].MODEL_MODULES))),
    timm_loader=type(timm.__loader__).__name__,
    timm_spec_loader_is_loader=timm.__spec__.loader is timm.__loader__,
)))
''', *to_create)
    assert result['after_import'] == dict(
        modules=['_timm_sknet_autoload', 'timm', 'timm_sknet', 'torch'], hooks_waiting=0)
    assert result['registered'] == names
    expected_root = REPO if install.mode == 'editable' else install.site_packages
    assert Path(result['package']) == expected_root / 'timm_sknet' / '__init__.py'
    # the hook leaves timm's module exactly as its own loader made it
    assert result['timm_loader'] == 'SourceFileLoader' and result['timm_spec_loader_is_loader']


def test_env_var_set_in_process_before_import(wheel_install):
    result = wheel_install.run(f'''
import os
os.environ[{AUTOLOAD_ENV!r}] = '0'
import timm
before = dict(state(), registered=timm.is_model('sknet50'))
import timm_sknet
print(json.dumps(dict(before=before, explicit=timm.is_model('sknet50'))))
''')
    assert result['before'] == dict(
        modules=['_timm_sknet_autoload', 'timm', 'torch'], hooks_waiting=0, registered=False)
    assert result['explicit']


def test_broken_plugin_does_not_break_timm(wheel_install):
    result = wheel_install.run('''
import warnings
sys.modules['timm_sknet'] = None  # makes `import timm_sknet` fail, as a broken install would
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter('always')
    import timm
print(json.dumps(dict(
    resnet=type(timm.create_model('resnet18')).__name__, sknet=timm.is_model('sknet50'),
    warnings=[str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)])))
''')
    assert result['resnet'] == 'ResNet' and not result['sknet']
    assert len(result['warnings']) == 1 and AUTOLOAD_ENV in result['warnings'][0]


def test_explicit_import_before_timm_registers_with_autoload_off(wheel_install):
    """``import timm_sknet`` loads no torch; the models register once timm is imported, autoload or not."""
    result = wheel_install.run(f'''
import os
os.environ[{AUTOLOAD_ENV!r}] = '0'
import timm_sknet
import timm_sknet.io.errors, timm_sknet.io.files
before = state()
import timm
print(json.dumps(dict(before=before, registered=timm.is_model('sknet50'), after=state())))
''')
    assert 'torch' not in result['before']['modules'] and result['before']['hooks_waiting'] == 1
    assert result['registered'] and result['after']['hooks_waiting'] == 0


@pytest.mark.parametrize('first', ['timm_sknet.models.sk_conv', 'timm_sknet.weights.pretrained',
                                   'timm_sknet.models.sk_resnet'])
def test_importing_a_package_module_first_still_registers(wheel_install, first):
    """These modules import timm mid-way through themselves: the hook must still register every model."""
    result = wheel_install.run(f'''
import importlib, warnings
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter('always')
    importlib.import_module({first!r})
    import timm
print(json.dumps(dict(registered=timm.is_model('sknet50'), model=type(timm.create_model('sknet26')).__name__,
                      warnings=[str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)])))
''')
    assert result == dict(registered=True, model='SKNet', warnings=[])


def test_each_model_module_lists_exactly_its_own_models():
    """timm files a model under its module's last name: ours are names of their own, so ``list_models(module=M)``
    gives exactly that file's models and ``list_modules()`` shows them."""
    timm_own_modules = {m.name for m in pkgutil.iter_modules(timm.models.__path__)}
    assert not set(timm_sknet.MODEL_MODULES) & timm_own_modules
    assert set(timm_sknet.MODEL_MODULES) <= set(timm.list_modules())
    for module in timm_sknet.MODEL_MODULES:
        defined_there = {n for n in timm.list_models() if model_entrypoint(n).__module__ == f'timm_sknet.models.{module}'}
        assert defined_there and sorted(timm.list_models(module=module)) == sorted(defined_there)
    assert timm_sknet.model_names() == sorted(timm.list_models(module=list(timm_sknet.MODEL_MODULES)))

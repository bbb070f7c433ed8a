"""``timm_sknet`` never imports ``hub_cards`` or ``converters`` (they import it): not by name, not by string."""
import ast
import json
import subprocess
import sys
from pathlib import Path
from typing import List

import pytest

import timm_sknet

PACKAGE = Path(timm_sknet.__file__).parent
OUTER_PACKAGES = ('hub_cards', 'converters')


def _names_outer_package(module: str) -> bool:
    return module.split('.')[0] in OUTER_PACKAGES


def outer_imports(source: str) -> List[str]:
    """What in ``source`` reaches an outer package: import statements, and strings that spell one of its modules
    (``importlib.import_module('hub_cards.publish')``, an entry-point string and the like)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names if _names_outer_package(alias.name)]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and _names_outer_package(node.module):
            found.append(node.module)
        elif (isinstance(node, ast.Constant) and isinstance(node.value, str)
              and node.value.replace('.', '').replace('_', '').isalnum() and _names_outer_package(node.value)
              and ('.' in node.value or node.value in OUTER_PACKAGES)):
            found.append(repr(node.value))
    return found


@pytest.mark.parametrize('source, expected', [
    ('import hub_cards.publish', ['hub_cards.publish']),
    ('from converters.caffe import cli', ['converters.caffe']),
    ("importlib.import_module('hub_cards.validate')", ["'hub_cards.validate'"]),
    ("x = 'converters'", ["'converters'"]),
    ('from .io import files\nimport timm\n"the converters write here"', []),
])
def test_the_scan_finds_what_it_looks_for(source, expected):
    assert outer_imports(source) == expected


def test_no_module_of_the_package_reaches_an_outer_package():
    offenders = {str(path.relative_to(PACKAGE)): found for path in sorted(PACKAGE.rglob('*.py'))
                 if (found := outer_imports(path.read_text()))}
    assert not offenders


def test_importing_the_package_and_running_its_own_command_loads_no_outer_package(tmp_path):
    code = f'''
import json, sys
import timm_sknet, timm
assert timm.is_model('sknet50')
after_import = sorted(m for m in sys.modules if m.split('.')[0] in {OUTER_PACKAGES!r})
from timm_sknet.cli import main
sys.argv = ['timm-sknet', 'installed']
try:
    main()
except SystemExit as e:
    code = e.code
print(json.dumps(dict(after_import=after_import, code=code,
                      after_command=sorted(m for m in sys.modules if m.split('.')[0] in {OUTER_PACKAGES!r}))))
'''
    env = {'PATH': '/usr/bin:/bin', 'HOME': str(tmp_path), 'TIMM_SKNET_HOME': str(tmp_path / 'store')}
    out = subprocess.run([sys.executable, '-c', code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.splitlines()[-1])
    assert result == dict(after_import=[], code=0, after_command=[])

"""The docs' own rules, and the harness that runs their examples (tests/docs_harness): that a page whose shown output
differs from the real one fails, what matches and what does not; and what the pages promise about themselves (the
README's length, its models table, the speed table against the chart's numbers, every skip with a reason)."""
import json
import re
import shutil
import subprocess
import sys
import unittest
from pathlib import Path
from typing import List, Optional

import pytest
import yaml
from sybil.example import SybilFailure

from benchmarks.chart import markdown_table
from docs_harness import REPO, SYBIL, teardown
from docs_harness.context import DocsContext

PAGES = [REPO / 'README.md', *sorted((REPO / 'docs').glob('*.md'))]
SKIP = re.compile(r'^<!-- skip: (?P<action>\w+)(?P<rest>.*?)-->$', re.MULTILINE)


def run_page(tmp_path: Path, text: str) -> List[Optional[str]]:
    """Every example of a page with ``text``, in order: None for one that passed, else why it failed."""
    page = tmp_path / 'page.md'
    page.write_text(text)
    document = SYBIL.parse(page)
    context = DocsContext(tmp_path / 'context')
    document.namespace['docs_context'] = context
    results = []
    try:
        for example in document.examples():
            try:
                example.evaluate()
                results.append(None)
            except SybilFailure as failure:
                results.append(str(failure))
            except unittest.SkipTest as skipped:
                results.append(f'skipped: {skipped}')
    finally:
        teardown(document.namespace)
        context.close()
    return results


def fence(language: str, body: str) -> str:
    return f'```{language}\n{body}\n```\n\n'


@pytest.fixture
def context_dir(tmp_path) -> Path:
    (tmp_path / 'context').mkdir()
    return tmp_path


def test_shown_output_must_be_the_real_one(context_dir):
    passed, changed, extra_line, missing = run_page(context_dir, ''.join([
        fence('console', '$ echo hello world\nhello world'),
        fence('console', '$ echo hello world\nhello there'),
        fence('console', '$ printf "a\\nb\\n"\na'),
        fence('console', '$ true\nsomething'),
    ]))
    assert passed is None
    assert 'printed what the page does not show' in changed and 'hello there' in changed
    assert extra_line and missing


def test_an_ellipsis_stands_for_what_varies_and_nothing_else(context_dir):
    results = run_page(context_dir, ''.join([
        fence('console', '$ echo "took 1.23 s in /tmp/abc"\ntook ... s in /tmp/...'),
        fence('console', '$ printf "one\\ntwo\\nthree\\n"\none\n...\nthree'),
        fence('console', '$ echo "took 1.23 s"\nlasted ... s'),
    ]))
    assert results[:2] == [None, None]
    assert results[2] is not None


def test_a_failing_command_fails_unless_its_status_is_shown(context_dir):
    silent, shown, wrong_status, bash = run_page(context_dir, ''.join([
        fence('console', '$ false'),
        fence('console', '$ false\n$ echo $?\n1'),
        fence('console', '$ (exit 3)\n$ echo $?\n2'),
        fence('bash', 'true\nls no-such-file\ntrue'),
    ]))
    assert 'exited with status 1' in silent
    assert shown is None
    assert wrong_status is not None
    assert 'status 2 from: ls no-such-file' in bash


def test_a_page_keeps_its_shell_and_python_state_and_runs_in_a_home_of_its_own(context_dir):
    results = run_page(context_dir, ''.join([
        fence('bash', 'export GREETING=hi\nmkdir sub && cd sub'),
        fence('console', '$ echo "$GREETING from $(basename "$PWD")"\nhi from sub'),
        fence('python', 'import os\nvalue = 41'),
        fence('python', '>>> value + 1\n42\n>>> os.environ["HOME"].startswith(os.getcwd().rsplit("/work", 1)[0])\nTrue'
                        '\n>>> [k for k in os.environ if k.startswith(("HF_TOKEN", "TIMM_SKNET_HOME", "XDG_"))]\n[]'),
        fence('python', '>>> value\n40'),
        fence('python', 'raise ValueError("broken example")'),
    ]))
    assert results[:4] == [None] * 4
    assert 'Expected:\n    40\nGot:\n    41' in results[4]
    assert 'ValueError: broken example' in results[5] and 'page.md' in results[5]


def test_single_command_blocks_take_dollar_lines_as_output(context_dir):
    results = run_page(context_dir, '<!-- docs-test: single-command -->\n' + ''.join([
        fence('console', '$ printf "made\\n$ inner command\\ndone\\n"\nmade\n$ inner command\ndone'),
        fence('console', '$ echo one\none\n$ echo two\ntwo'),
    ]))
    assert results == [None, None, None]  # the directive, then both blocks (the second one is two commands again)


def test_a_skipped_example_does_not_run(context_dir):
    results = run_page(context_dir, '<!-- skip: next "it would fail" -->\n' + fence('console', '$ false'))
    assert results == [None, 'skipped: it would fail']  # the directive, then the example it skips


@pytest.mark.parametrize('page', PAGES, ids=lambda p: p.name)
def test_every_skip_says_why(page):
    """Examples that are not run are few and each carries its reason; the report lists them."""
    for match in SKIP.finditer(page.read_text()):
        reason = match['rest'].strip()
        assert match['action'] == 'next', match[0]
        assert re.fullmatch(r'"[^"]{20,}"|if\(.+reason="[^"]{20,}"\)', reason), f'{page.name}: {match[0]}'


def test_the_readme_is_a_front_page():
    readme = (REPO / 'README.md').read_text()
    assert len(readme.splitlines()) <= 250
    for page in sorted((REPO / 'docs').glob('*.md')):
        assert f'](docs/{page.name})' in readme, f'the README does not link {page.name}'


def test_every_page_is_in_the_site():
    nav = yaml.safe_load((REPO / 'mkdocs.yml').read_text().replace('!!python/name:', ''))['nav']
    listed = {next(iter(entry.values())) for entry in nav}
    assert listed == {'index.md'} | {p.name for p in (REPO / 'docs').glob('*.md')}


def _table(text: str, header: str) -> List[str]:
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header))
    end = next(i for i in range(start, len(lines)) if not lines[i].startswith('|'))
    return lines[start:end]


def test_the_models_table_is_the_same_in_the_readme_and_the_models_page():
    header = '| name | what | params |'
    assert _table((REPO / 'README.md').read_text(), header) == _table((REPO / 'docs' / 'models.md').read_text(), header)


def test_the_speed_page_shows_what_the_chart_measured():
    numbers = json.loads((REPO / 'docs' / 'figures' / 'speed_sknet50.json').read_text())
    page = (REPO / 'docs' / 'speed.md').read_text()
    assert '\n' + markdown_table(numbers) + '\n' in page
    assert f'`{numbers["command"]}`' in page and numbers['machine'] in page
    assert (REPO / 'docs' / 'figures' / 'speed_sknet50.png').stat().st_size > 10_000


def test_the_docs_build_fails_on_a_broken_link(tmp_path):
    """`make docs` (make test's first step) is what catches a broken link or anchor: run its recipe on a copy of the
    docs with one of each (a silenced build, `mkdocs --quiet`, would pass them)."""
    recipe = re.search(r'^docs:.*\n\t(.+)$', (REPO / 'Makefile').read_text(), re.MULTILINE)[1]
    for name in ('mkdocs.yml', 'README.md', 'timm_sknet', 'converters', 'hub_cards'):
        (tmp_path / name).symlink_to(REPO / name)
    shutil.copytree(REPO / 'docs', tmp_path / 'docs')
    with open(tmp_path / 'docs' / 'speed.md', 'a') as page:
        page.write('\n[a page that is not there](nope.md), [an anchor that is not there](models.md#nope)\n')
    command = recipe.replace('$(VENV)/bin/', str(Path(sys.executable).parent) + '/')
    build = subprocess.run(command, shell=True, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert build.returncode != 0
    assert "contains a link 'nope.md'" in build.stderr and "does not contain an anchor '#nope'" in build.stderr

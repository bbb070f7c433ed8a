"""README.md and docs/ as tests: every command and code example runs, and its shown output is compared.

Sybil (https://sybil.readthedocs.io) finds the examples; what runs them is here. How a page is tested, and how to
add a stand-in file or a server, is in docs/contributing.md ("How the docs are tested").

- ``console`` blocks are transcripts: each ``$ command`` runs in the page's bash session and its output (stdout and
  stderr together) must be what the block shows below it, where ``...`` stands for any text (doctest's ELLIPSIS).
  A command must exit 0, unless the next one is ``echo $?`` (which then shows the status).
- ``bash`` blocks run in the same session; every command in them must exit 0. Nothing is compared.
- ``python`` blocks run in the page's Python process, in one namespace; a block that starts with ``>>>`` is a
  doctest (output compared, ``...`` allowed).
- ``<!-- docs-test: ... -->`` comments (invisible on the page) set up what a reader would have:
  ``files NAME...`` links stand-ins for files a user downloads into the working directory (``standins.py``),
  ``installed NAME...`` puts converted weights into the page's store as the converters install them (made once
  per session by the real command from the stand-in: ``context.py``),
  ``hub write`` / ``hub read`` point the Hub at the loopback servers (``context.py``), ``validation-set IMAGES
  CLASSES`` makes the page's ``timm-sknet`` expect that many validation images where a card's number otherwise
  needs all of ImageNet-1k val (``tests/validation_set_seam.py``: the command itself is untouched),
  ``env NAME=VALUE...`` sets variables for the commands that follow, ``killed COMMAND...`` runs an install and
  kills it (SIGKILL) half-way through its write, ``single-command`` makes the next ``console`` block one command
  whose output holds ``$ `` lines of its own (``make demo`` prints the commands it runs), ``timm-scripts`` links timm's
  ``train.py``, ``validate.py``, ... into the working directory when ``TIMM_SCRIPTS`` names a checkout of timm's
  repository (they are not in its PyPI release; the examples that need them are skipped otherwise).
- ``<!-- skip: next "why" -->`` (Sybil's own) leaves the next example out, with the reason; the reasons are listed
  by ``tests/test_docs_harness.py``, which fails on a skip without one.

Each page runs in a fresh temporary folder laid out like the checkout (links to its files; ``benchmarks/`` and
``docs/``, which commands write into, copied), with ``HOME`` there too: the weights store, the Hugging Face cache
and every other default location are the page's own, and nothing of the user's is read or touched.
"""
import doctest
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

from sybil import Example, Region, Sybil
from sybil.parsers.abstract.lexers import LexerCollection
from sybil.parsers.markdown import CodeBlockParser, SkipParser
from sybil.parsers.markdown.lexers import DirectiveInHTMLCommentLexer

from validation_set_seam import SHRUNK_TIMM_SKNET

from .context import TIMM_SCRIPTS
from .sessions import COMMAND_TIMEOUT_S, PythonSession, ShellSession, split_transcript
from .standins import link_into

REPO = Path(__file__).resolve().parents[2]
DOCS = ('README.md', 'docs/*.md')
COPIED = ('benchmarks', 'docs')  # commands on the pages write into these: each page gets its own copy
PAGE_KEY = '_docs_page'
CONTEXT_FIXTURE = 'docs_context'  # a session fixture (conftest.py): stand-in cache, servers, temporary root


def page_env(home: Path) -> Dict[str, str]:
    """The environment of a page's commands: the user's, less anything that points at their files or the network
    (Hugging Face settings and token, proxies, timm-sknet's own settings, cache locations), with HOME in tmp."""
    dropped = ('HF_', 'TIMM_SKNET_', 'XDG_', 'HUGGINGFACE_')
    # under `make test` make's own variables would make the pages' `make demo` a sub-make, which says so
    makes = ('MAKEFLAGS', 'MAKELEVEL', 'MFLAGS', 'MAKEOVERRIDES')
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(dropped) and k.lower() not in ('http_proxy', 'https_proxy', 'all_proxy')
           and not k.startswith(('PYTEST_', 'COV_')) and k not in makes}
    env.update(
        HOME=str(home), HF_HUB_OFFLINE='1', HF_HUB_DISABLE_TELEMETRY='1', HF_HUB_DISABLE_PROGRESS_BARS='1',
        NO_PROXY='127.0.0.1,localhost', PATH=f'{Path(sys.executable).parent}:{env["PATH"]}')
    return env


class Page:
    """A page's working directory, environment, and (started on first use) its bash and Python sessions."""

    def __init__(self, document_path: Path, context: Any) -> None:
        self.name = _shown_path(document_path)
        self.context = context
        root = context.tmp_root / self.name.replace('/', '_')
        self.workdir, home = root / 'work', root / 'home'
        home.mkdir(parents=True)
        self.workdir.mkdir()
        for entry in _checkout_entries():
            if entry.name in COPIED:
                shutil.copytree(entry, self.workdir / entry.name, ignore=shutil.ignore_patterns('__pycache__'))
            else:
                (self.workdir / entry.name).symlink_to(entry)
        self._link_environment(self.workdir / '.venv')
        self.env = page_env(home)
        self.single_command = False  # set by `docs-test: single-command` for the next console block
        self._shell: Optional[ShellSession] = None
        self._python: Optional[PythonSession] = None

    @staticmethod
    def _link_environment(venv: Path) -> None:
        """``.venv`` as the Makefile finds it installed, made of links to the environment running the tests (for
        ``make demo`` and ``source .venv/bin/activate``): make never rebuilds it, and the real one is not touched."""
        venv.mkdir()
        for entry in Path(sys.prefix).iterdir():
            if entry.name != '.installed':
                (venv / entry.name).symlink_to(entry)
        (venv / '.installed').touch()

    @property
    def shell(self) -> ShellSession:
        if self._shell is None:
            self._shell = ShellSession(self.workdir, self.env)
        return self._shell

    @property
    def python(self) -> PythonSession:
        if self._python is None:
            self._python = PythonSession(self.workdir, self.env)
        return self._python

    def set_env(self, **values: str) -> None:
        if self._python is not None:
            raise ValueError(f'{self.name}: set the environment before the page\'s first Python example '
                             '(huggingface_hub reads it when it is imported)')
        self.env.update(values)
        if self._shell is not None:
            self._shell.run('export ' + ' '.join(f'{k}={shlex.quote(v)}' for k, v in values.items()))

    def close(self) -> None:
        for session in (self._shell, self._python):
            if session is not None:
                session.close()


def _checkout_entries() -> List[Path]:
    """The checkout's top-level files and folders that git tracks: not .venv, out/, site/ or caches, which a
    command on a page could otherwise write into through a link."""
    tracked = subprocess.run(['git', '-C', str(REPO), 'ls-files', '-z'], capture_output=True, check=True).stdout
    names = {path.split('/', 1)[0] for path in tracked.decode().split('\0') if path}
    return sorted(REPO / name for name in names if (REPO / name).exists())


def page_of(example: Example) -> Page:
    namespace = example.namespace
    if PAGE_KEY not in namespace:
        namespace[PAGE_KEY] = Page(Path(example.path), namespace[CONTEXT_FIXTURE])
    return namespace[PAGE_KEY]


def _shown_path(path: Path) -> str:
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


def _where(example: Example) -> str:
    return f'{_shown_path(Path(example.path))}:{example.line}'


def _matches(shown: str, output: str) -> bool:
    """The shown output against the real one: exact but for ``...`` (any text) and trailing blanks on a line."""
    def clean(text: str) -> str:
        return '\n'.join(line.rstrip() for line in text.rstrip('\n').splitlines())
    shown, output = clean(shown), clean(output)
    if not shown:
        return not output
    return doctest.OutputChecker().check_output(shown + '\n', output + '\n', doctest.ELLIPSIS)


def evaluate_console(example: Example) -> Optional[str]:
    page = page_of(example)
    steps = split_transcript(example.parsed, single_command=page.single_command)
    page.single_command = False
    for i, step in enumerate(steps):
        run = page.shell.run(step.command)
        status_shown = i + 1 < len(steps) and steps[i + 1].command.strip() == 'echo $?'
        if run.status and not status_shown:
            return (f'{_where(example)}: `{step.command}` exited with status {run.status}; its output:\n'
                    f'{run.output}')
        if not _matches(step.shown, run.output):
            return (f'{_where(example)}: `{step.command}` printed what the page does not show.\n'
                    f'--- shown on the page\n{step.shown}\n--- printed\n{run.output}')
    return None


def evaluate_bash(example: Example) -> Optional[str]:
    page = page_of(example)
    # every failing command is reported, and the session (variables, folder) carries on as a terminal would
    run = page.shell.run(
        "__docs_failed=0\n"
        "trap 'echo \"[status $? from: $BASH_COMMAND]\"; __docs_failed=1' ERR\n"
        f'{example.parsed}\n'
        'trap - ERR\n'
        '[ $__docs_failed = 0 ]')
    if run.status:
        return f'{_where(example)}: a command failed:\n{run.output}'
    return None


def evaluate_python(example: Example) -> Optional[str]:
    source = example.parsed
    mode = 'doctest' if source.lstrip().startswith('>>>') else 'exec'
    # line numbers in tracebacks are the page's: the code is padded to where the block starts
    code = '\n' * example.line + source if mode == 'exec' else source
    return page_of(example).python.run(code, mode, _where(example))


def evaluate_directive(example: Example) -> Optional[str]:
    page = page_of(example)
    action, *args = example.parsed.split()
    if action == 'files':
        for name in args:
            link_into(name, page.context.standins, page.workdir)
    elif action == 'hub':
        if args not in (['write'], ['read']):
            raise ValueError(f'{_where(example)}: docs-test: hub takes write or read, not {args}')
        page.set_env(**page.context.hub_env(args[0]))
    elif action == 'installed':
        store = Path(page.env['HOME']) / '.cache' / 'timm-sknet'
        for name in args:
            shutil.copytree(page.context.installed_slot(name), store / name)
    elif action == 'timm-scripts':
        for name in TIMM_SCRIPTS if page.context.timm_scripts else ():
            (page.workdir / name).symlink_to(page.context.timm_scripts / name)
    elif action == 'single-command':
        page.single_command = True
    elif action == 'validation-set':
        images, classes = map(int, args)  # the stand-in folder's: a card's number must cover every image
        page.shell.run(f'timm-sknet() {{ {shlex.quote(sys.executable)} -c {shlex.quote(SHRUNK_TIMM_SKNET)} {images} '
                       f'{classes} "$@"; }}')
    elif action == 'env':
        page.set_env(**dict(arg.split('=', 1) for arg in args))
    elif action == 'killed':
        _kill_while_installing(page, args)
    else:
        raise ValueError(f'{_where(example)}: unknown docs-test directive {action!r} (files, installed, hub, '
                         'validation-set, env, killed, single-command, timm-scripts)')
    return None


def _kill_while_installing(page: Page, command: List[str]) -> None:
    """Run ``command`` (an install) in the page's folder and environment and kill it (SIGKILL) once its temporary
    in the store holds a megabyte: what a process killed without warning leaves."""
    store = Path(page.env.get('TIMM_SKNET_HOME') or Path(page.env['HOME']) / '.cache' / 'timm-sknet')
    proc = subprocess.Popen(command, cwd=page.workdir, env=page.env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + COMMAND_TIMEOUT_S
        while not any(path.is_file() and path.stat().st_size > 1 << 20 for path in store.glob('.tsk-*/**/*')):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f'{" ".join(command)} ended (or ran past {COMMAND_TIMEOUT_S} s) before it had '
                                   'written a megabyte into the store, so it could not be killed half-way')
            time.sleep(0.01)
    finally:
        proc.kill()
        proc.wait()


class DirectiveParser:
    """``<!-- docs-test: ACTION ARGS -->``: set-up a reader would have done before the examples that follow."""

    def __init__(self) -> None:
        self.lexers = LexerCollection([DirectiveInHTMLCommentLexer(directive='docs-test', arguments='.+?')])

    def __call__(self, document):
        for lexed in self.lexers(document):
            yield Region(lexed.start, lexed.end, lexed.lexemes['arguments'].strip(), evaluate_directive)


def teardown(namespace: Dict[str, Any]) -> None:
    page = namespace.pop(PAGE_KEY, None)
    if page is not None:
        page.close()


SYBIL = Sybil(
    parsers=[
        CodeBlockParser('console', evaluate_console),
        CodeBlockParser('bash', evaluate_bash),
        CodeBlockParser('python', evaluate_python),
        DirectiveParser(),
        SkipParser(),
    ],
    patterns=DOCS,
    path=str(REPO),
    fixtures=[CONTEXT_FIXTURE],
    teardown=teardown,
)

"""Every hint a message or a help text gives is a command that works as printed.

The project's own strings are read from its source (every string and f-string but docstrings): each command line of
a project program found there (``convert-caffe CAFFEMODEL --model sknet50 --install``) is parsed by that program's
real argparse parser, and each option named anywhere (``pass --device cpu``, ``e.g. --scales 1.0,1.5,2.0``) must be
an option of the programs whose messages the module writes, taking the value the text gives it and nothing more.
A new module that names options, or a new program, has to be added to the tables below. Hints that only a run
prints are run: the example of ``attention --scales``, and (in the store tests) every mend the store prints.
"""
import argparse
import ast
import importlib
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Dict, Iterator, List, NamedTuple, Optional, Tuple

import pytest

from hub_helpers import BIN_DIR
from timm_sknet.cli.dispatch import command_names

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ('timm_sknet', 'converters', 'hub_cards')
# the words that start a command line -> the module whose main() builds its parser
PROGRAMS = {
    'convert-caffe': 'converters.caffe.command',
    'convert-pytorchinsight': 'converters.pytorchinsight.command',
    'python -m converters.caffe.spec': 'converters.caffe.spec',
    **{f'timm-sknet {name}': 'timm_sknet.cli.dispatch' for name in command_names()},
}
_WRITERS = ('convert-caffe', 'convert-pytorchinsight', 'timm-sknet validate', 'timm-sknet publish',
            'timm-sknet attention')
# the programs whose messages (and help) each module writes: an option its strings name must be one of theirs
MODULE_PROGRAMS = {
    'converters/caffe/spec.py': ('python -m converters.caffe.spec',),
    'converters/caffe/': ('convert-caffe',),
    'converters/pytorchinsight/': ('convert-pytorchinsight',),
    'converters/output.py': ('convert-caffe', 'convert-pytorchinsight'),
    'timm_sknet/cli/': ('timm-sknet attention', 'timm-sknet installed'),
    'timm_sknet/io/files.py': _WRITERS,
    'timm_sknet/weights/loading.py': ('timm-sknet validate', 'timm-sknet publish', 'timm-sknet attention'),
    'timm_sknet/weights/': ('convert-caffe', 'convert-pytorchinsight'),
    'hub_cards/validate.py': ('timm-sknet validate',),
    'hub_cards/data.py': ('timm-sknet validate', 'timm-sknet release'),
    'hub_cards/gate.py': ('timm-sknet validate', 'timm-sknet publish', 'timm-sknet release'),
    'hub_cards/commands.py': ('timm-sknet validate', 'timm-sknet publish', 'timm-sknet release'),
    'hub_cards/release/': ('timm-sknet release',),
    'hub_cards/': ('timm-sknet publish', 'timm-sknet release'),
}
# Options of timm's validate.py (a script of timm's repository, not of its package: its parser cannot be read
# here) that the cards name, as the flags that repeat a measurement
FOREIGN_OPTIONS = {'hub_cards/card.py': {'--pretrained', '--model'},
                   'hub_cards/protocols.py': {'--img-size', '--crop-pct'}}
_COMMAND = re.compile(r'(?<![\w-])(' + '|'.join(map(re.escape, sorted(PROGRAMS, key=len, reverse=True))) + r')(?=\s|$)')
_OPTION = re.compile(r'(?<![\w-])--[a-z][a-z0-9-]*')
_PLACEHOLDER = re.compile('\ue000(\\d+)\ue001')  # an f-string's {expression}, as rendered below
_METAVAR = re.compile(r'[A-Z][A-Z0-9_]*(\.[a-z]+)?')  # CAFFEMODEL, N, IMAGENET_VAL_DIR, W.safetensors
_END = re.compile(r'[;`)\n]| \(|, |: ')  # where the words of a command in prose end


class Text(NamedTuple):
    module: str  # its path, relative to the repository
    line: int
    text: str  # an f-string's expressions as placeholders

    def __str__(self) -> str:
        return f'{self.module}:{self.line}: {_PLACEHOLDER.sub("{...}", self.text)!r}'


def user_texts() -> Iterator[Text]:
    """Every string and f-string of the packages' source but docstrings."""
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob('*.py')):
            tree = ast.parse(path.read_text(encoding='utf-8'))
            docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                          if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                          and node.body and isinstance(node.body[0], ast.Expr)}
            parts = {id(value) for node in ast.walk(tree) if isinstance(node, ast.JoinedStr) for value in node.values}
            for node in ast.walk(tree):
                if id(node) in docstrings or id(node) in parts:
                    continue
                if isinstance(node, ast.Constant) and isinstance(node.value, str):
                    text = node.value
                elif isinstance(node, ast.JoinedStr):
                    text = ''.join(value.value if isinstance(value, ast.Constant) else f'\ue000{i}\ue001'
                                   for i, value in enumerate(node.values))
                else:
                    continue
                yield Text(str(path.relative_to(ROOT)), node.lineno, text)


class _Captured(Exception):
    pass


_PARSERS: Dict[str, argparse.ArgumentParser] = {}


def real_parser(program: str, monkeypatch: pytest.MonkeyPatch) -> argparse.ArgumentParser:
    """The parser ``program``'s own main() builds, caught as it is about to parse."""
    if program not in _PARSERS:
        module = importlib.import_module(PROGRAMS[program])
        found = []

        def capture(parser, *args, **kwargs):
            found.append(parser)
            raise _Captured

        with monkeypatch.context() as patch:
            patch.setattr(argparse.ArgumentParser, 'parse_args', capture)
            patch.setattr(sys, 'argv', [program.split()[0], *program.split()[1:][-1:]])
            with pytest.raises(_Captured):
                module.main()
        _PARSERS[program] = found[0]
    return _PARSERS[program]


def _option(parser: argparse.ArgumentParser, name: str) -> Optional[argparse.Action]:
    return parser._option_string_actions.get(name)  # argparse has no public lookup of an option's action


def _takes_value(action: argparse.Action) -> bool:
    return action.nargs != 0


def _sample(action: Optional[argparse.Action]) -> str:
    """A value ``action`` accepts, for a placeholder or a metavar the text gives in its place."""
    candidates = [str(choice) for choice in action.choices] if action is not None and action.choices else ['1', 'X']
    for candidate in candidates:
        try:
            if action is None or action.type is None or action.type(candidate) is not None:
                return candidate
        except (TypeError, ValueError, argparse.ArgumentTypeError):
            continue
    raise AssertionError(f'no sample value for {action.option_strings}')


def _is_stand_in(word: str) -> bool:
    return bool(_PLACEHOLDER.fullmatch(word) or _METAVAR.fullmatch(word))


def _looks_like_a_value(word: str) -> bool:
    return _is_stand_in(word) or bool(re.search(r'[./_,0-9=:]', word))


def _words(parser: argparse.ArgumentParser, words: List[str]) -> List[str]:
    """The words of ``words`` that belong to the command, stand-ins replaced by samples: options, their values and
    words that look like arguments (paths, numbers, lists, stand-ins); the first word of prose ends them. An option
    followed by prose is a mention (``--synthetic makes its own pictures``): it takes no value here."""
    taken: List[str] = []
    for i, word in enumerate(words):
        action = _option(parser, taken[-1]) if taken and taken[-1].startswith('-') else None
        if action is not None and _takes_value(action) and (_looks_like_a_value(word) or _accepts(action, word)):
            taken.append(_sample(action) if _is_stand_in(word) else word)
        elif word.startswith('-'):
            taken.append(word)
        elif _looks_like_a_value(word):
            taken.append('X' if _is_stand_in(word) else word)
        else:
            break
    return taken


def _accepts(action: argparse.Action, word: str) -> bool:
    """Whether a plain word is a value ``action`` takes (``--device cpu``), not the prose after a mention."""
    if action.choices is not None:
        return word in map(str, action.choices)
    return action.type is None and word.isalnum() and word not in _PROSE


_PROSE = {'is', 'are', 'must', 'makes', 'needs', 'lists', 'only', 'to', 'and', 'or', 'with', 'was', 'the', 'a',
          'writes', 'replaces', 'over', 'instead', 'of', 'in', 'if', 'not', 'ran', 'wrote', 'disagrees', 'does'}


def _unpunctuated(words: List[str]) -> List[str]:
    return [word.rstrip(':;,') for word in words]


def _parse(parser: argparse.ArgumentParser, words: List[str]) -> Tuple[Optional[argparse.Namespace], str]:
    """(the namespace, '') or (None, argparse's complaint)."""
    try:
        return parser.parse_args(words), ''
    except SystemExit:
        return None, 'argparse refused it'


def _minimal_words(parser: argparse.ArgumentParser, leaving_out: str) -> List[str]:
    """The fewest words the parser accepts: its required arguments with sample values (one of each required group,
    other than ``leaving_out``)."""
    words = []
    for action in parser._actions:
        if action.required and action.option_strings:
            words += [action.option_strings[0]] + ([_sample(action)] if _takes_value(action) else [])
        elif not action.option_strings and action.nargs in (None, '+'):
            words.append('X')
    for group in parser._mutually_exclusive_groups:
        if group.required and not any(leaving_out in action.option_strings for action in group._group_actions):
            action = group._group_actions[0]
            words += [action.option_strings[0]] + ([_sample(action)] if _takes_value(action) else [])
    return words


def _fragment_problem(parser: argparse.ArgumentParser, fragment: List[str]) -> str:
    """What is wrong with ``fragment`` (an option and the words after it) added to a minimal command line: the option
    is unknown, its value refused, or words meant for it land elsewhere."""
    action = _option(parser, fragment[0])
    if action is None:
        return f'{parser.prog} has no option {fragment[0]}'
    if _takes_value(action) and len(fragment) == 1:
        return ''  # a mention: the option exists, and the text gives no value for it
    base_words = _minimal_words(parser, fragment[0])
    base, _ = _parse(parser, base_words + [fragment[0]] + ([_sample(action)] if _takes_value(action) else []))
    with_fragment, refused = _parse(parser, base_words + fragment)
    if with_fragment is None:
        return f'{parser.prog} refuses {shlex.join(fragment)}'
    moved = [k for k, v in vars(with_fragment).items() if k != action.dest and vars(base).get(k) != v]
    return f'{shlex.join(fragment)}: words land in {moved}, not in {fragment[0]}' if moved else ''


def _programs_of(module: str) -> Tuple[str, ...]:
    matches = [prefix for prefix in MODULE_PROGRAMS if module.startswith(prefix)]
    return MODULE_PROGRAMS[max(matches, key=len)] if matches else ()


def hint_problems(text: Text, monkeypatch) -> List[str]:
    """What is wrong with the hints in one string."""
    problems = []
    covered = []  # spans of command lines, whose options their own parser checks
    for found in _COMMAND.finditer(text.text):
        end = _END.search(text.text, found.end())
        span = (found.start(), end.start() if end else len(text.text))
        covered.append(span)
        parser = real_parser(found.group(), monkeypatch)
        try:
            words = _words(parser, _unpunctuated(shlex.split(text.text[found.end():span[1]])))
        except ValueError as e:
            problems.append(f'{found.group()}: its words do not split as a shell splits them ({e})')
            continue
        options = [i for i, word in enumerate(words) if word.startswith('-')]
        if any(not word.startswith('-') for word in words):
            _, refused = _parse(parser, words)  # a command line with arguments: it must parse as it is
            if refused:
                problems.append(f'{found.group()} {shlex.join(words)}: {refused}')
        else:  # a mention (what `convert-caffe --install` wrote): its options must be the program's
            for i in options:
                action = _option(parser, words[i])
                value = words[i + 1:i + 2] if action is not None and _takes_value(action) else []
                problem = _fragment_problem(parser, words[i:i + 1] + [w for w in value if not w.startswith('-')])
                if problem:
                    problems.append(problem)
    for found in _OPTION.finditer(text.text):
        if any(start <= found.start() < end for start, end in covered):
            continue
        if found.group() in FOREIGN_OPTIONS.get(text.module, ()):
            continue
        programs = _programs_of(text.module)
        if not programs:
            problems.append(f'names {found.group()}, but MODULE_PROGRAMS does not say whose messages it writes')
            continue
        end = _END.search(text.text, found.end())
        after = text.text[found.end():end.start() if end else len(text.text)]
        words = [found.group()] + (_unpunctuated(after.split()) if after[:1] == ' ' else [])  # '--units:' names it
        having = [real_parser(program, monkeypatch) for program in programs]
        having = [parser for parser in having if _option(parser, found.group())]
        if not having:
            problems.append(f'{found.group()} is an option of none of {programs}')
        for parser in having:
            fragment = _words(parser, words)
            next_option = next((i for i, word in enumerate(fragment[1:], 1) if word.startswith('-')), len(fragment))
            problem = _fragment_problem(parser, fragment[:next_option])
            if problem:
                problems.append(problem)
    if _OPTION.match(text.text):  # a message about an option: its examples are option forms, as the user types them
        problems += [f'the example {example.group()!r} is not an option form' for example in re.finditer(
            r'(?<!\()e\.g\. (?!--)\S+', text.text)]  # '(e.g. notes.txt)' lists what was found, not a hint
    return problems


def test_every_hint_in_the_source_parses_with_the_real_parser(monkeypatch):
    checked = [text for text in user_texts() if _COMMAND.search(text.text) or _OPTION.search(text.text)]
    assert len(checked) > 100  # the scan sees the project's strings
    problems = [f'{text}: {problem}' for text in checked for problem in hint_problems(text, monkeypatch)]
    assert problems == []


@pytest.mark.parametrize('wrong, why', [
    ("give numbers >= 1, e.g. --scales 1.0 1.5 2.0", "words land in ['images']"),
    ('pass --synthetic 1.5', 'refuses'),
    ('--device abacus is not a torch device; use e.g. cpu or cuda', "the example 'e.g. cpu' is not an option form"),
    ('pass --sclaes 1,2', '--sclaes is an option of none of'),
    ('run: timm-sknet attention --model sk_resnet18', 'argparse refused it'),
    ("install it with: convert-caffe X --model sknet51 --install", 'argparse refused it'),
])
def test_the_check_catches_wrong_hints(monkeypatch, wrong, why):
    """The check itself: hints that do not work as printed are found."""
    problems = hint_problems(Text('timm_sknet/cli/attention.py', 1, wrong), monkeypatch)
    assert problems and why in problems[0], problems


def test_the_pip_extras_that_messages_name_exist():
    """``require_module(name, extra)`` prints ``pip install 'timm-sknet[extra]'``: every extra it names is one."""
    extras = tomllib.loads((ROOT / 'pyproject.toml').read_text())['project']['optional-dependencies']
    named = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob('*.py')):
            for node in ast.walk(ast.parse(path.read_text(encoding='utf-8'))):
                if (isinstance(node, ast.Call) and getattr(node.func, 'id', None) == 'require_module'
                        and len(node.args) == 2):
                    named.append((f'{path.relative_to(ROOT)}:{node.lineno}', node.args[1].value))
    assert named and [(where, extra) for where, extra in named if extra not in extras] == []


def test_hf_auth_login_is_a_command_of_the_installed_hf():
    """publish without a token says: log in with `hf auth login`."""
    proc = subprocess.run([str(BIN_DIR / 'hf'), 'auth', 'login', '--help'], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr


def test_the_scales_example_runs_as_printed(tmp_path):
    """``attention --scales 0.5`` is refused with an example: that example, put in place of the refused value, runs."""
    command = [str(BIN_DIR / 'timm-sknet'), 'attention', '--model', 'sk_resnet18', '--synthetic', '1',
               '--workers', '0', '--device', 'cpu', '--out', str(tmp_path / 'out')]
    refused = subprocess.run(command + ['--scales', '0.5'], capture_output=True, text=True, timeout=300)
    assert refused.returncode == 2 and refused.stderr.count('\n') == 1, refused.stderr
    example = shlex.split(refused.stderr.rstrip().split('e.g. ', 1)[1])
    assert example[0] == '--scales'
    ran = subprocess.run(command + example, capture_output=True, text=True, timeout=300)
    assert ran.returncode == 0, ran.stderr
    assert (tmp_path / 'out' / 'units.csv').is_file()


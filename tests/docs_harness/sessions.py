"""The two long-lived processes a docs page runs in: a bash session for its commands, a Python process for its code.

Both keep their state from one example to the next, as a reader's terminal and interpreter do: a variable set or a
folder entered in one block is there in the next, a model built in one Python block is used in the next. Each
command's output (stdout and stderr together, as a terminal shows them) and exit status come back separately.
"""
import json
import os
import secrets
import select
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, NamedTuple, Optional

COMMAND_TIMEOUT_S = 300


class CommandRun(NamedTuple):
    output: str
    status: int


class ShellSession:
    """``bash`` in ``cwd`` with ``env``, fed one command at a time; each command's stdin is /dev/null."""

    def __init__(self, cwd: Path, env: Dict[str, str]) -> None:
        self._mark = f'\x1edocs-test-{secrets.token_hex(8)}:'
        self._proc = subprocess.Popen(
            ['bash', '--noprofile', '--norc'], cwd=cwd, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, start_new_session=True)
        self._buffer = b''

    def run(self, command: str, timeout: float = COMMAND_TIMEOUT_S) -> CommandRun:
        """``command`` (one or more lines of shell) as typed at a prompt: its output and exit status."""
        # the status is restored after the marker is printed, so that `echo $?` in the next command shows it
        script = (f'{{ {command}\n}} </dev/null\n__docs_status=$?; printf "{self._mark}%d\\n" $__docs_status; '
                  '(exit $__docs_status)\n')
        self._proc.stdin.write(script.encode())
        self._proc.stdin.flush()
        mark = self._mark.encode()
        deadline = time.monotonic() + timeout
        while mark not in self._buffer or not self._buffer.split(mark, 1)[1].count(b'\n'):
            if self._proc.poll() is not None and not select.select([self._proc.stdout], [], [], 0)[0]:
                raise RuntimeError(f'the shell exited ({self._proc.returncode}) during: {command}\n'
                                   + self._buffer.decode(errors='replace'))
            left = deadline - time.monotonic()
            if left <= 0:
                self.close()
                raise TimeoutError(f'{command!r} ran past {timeout} s; its output so far:\n'
                                   + self._buffer.decode(errors='replace'))
            if select.select([self._proc.stdout], [], [], min(left, 1.0))[0]:
                chunk = os.read(self._proc.stdout.fileno(), 1 << 16)
                self._buffer += chunk
        output, rest = self._buffer.split(mark, 1)
        status, self._buffer = rest.split(b'\n', 1)
        return CommandRun(output.decode(errors='backslashreplace'), int(status))

    def close(self) -> None:
        if self._proc.poll() is None:
            try:
                os.killpg(self._proc.pid, signal.SIGKILL)  # the session and whatever it started
            except ProcessLookupError:
                pass
        self._proc.wait()


# The Python process: reads one JSON request a line ({"code", "mode": "exec" | "doctest", "name"}), runs it in its
# one namespace with fds 1 and 2 going to a file, answers one JSON line ({"output", "error"}) on its own copy of fd 1.
KERNEL = r'''
import doctest, json, os, sys, tempfile, traceback
answers = os.fdopen(os.dup(1), 'w')
namespace = {'__name__': '__main__'}
for line in sys.stdin:
    request = json.loads(line)
    error = None
    with tempfile.TemporaryFile() as captured:
        saved = os.dup(1), os.dup(2)
        sys.stdout.flush(); sys.stderr.flush()
        os.dup2(captured.fileno(), 1); os.dup2(captured.fileno(), 2)
        try:
            if request['mode'] == 'doctest':
                test = doctest.DocTestParser().get_doctest(request['code'], namespace, request['name'],
                                                           request['name'], 0)
                report = []
                runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
                runner.run(test, out=report.append, clear_globs=False)
                namespace.update(test.globs)  # DocTest ran on a copy: what it defined stays for the next block
                if runner.failures:
                    error = ''.join(report)
            else:
                exec(compile(request['code'], request['name'], 'exec'), namespace)
        except BaseException:
            error = traceback.format_exc()
        finally:
            sys.stdout.flush(); sys.stderr.flush()
            os.dup2(saved[0], 1); os.dup2(saved[1], 2)
            os.close(saved[0]); os.close(saved[1])
        captured.seek(0)
        output = captured.read().decode(errors='backslashreplace')
    answers.write(json.dumps({'output': output, 'error': error}) + '\n')
    answers.flush()
'''


class PythonSession:
    """One Python process in ``cwd`` with ``env``, running the page's Python blocks in one namespace."""

    def __init__(self, cwd: Path, env: Dict[str, str]) -> None:
        self._proc = subprocess.Popen([sys.executable, '-c', KERNEL], cwd=cwd, env=env, stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE, text=True, start_new_session=True)

    def run(self, code: str, mode: str, name: str, timeout: float = COMMAND_TIMEOUT_S) -> Optional[str]:
        """Runs ``code``; returns None, or what went wrong (a traceback, or doctest's report of a difference)."""
        self._proc.stdin.write(json.dumps({'code': code, 'mode': mode, 'name': name}) + '\n')
        self._proc.stdin.flush()
        if not select.select([self._proc.stdout], [], [], timeout)[0]:
            self.close()
            raise TimeoutError(f'{name} ran past {timeout} s')
        line = self._proc.stdout.readline()
        if not line:
            raise RuntimeError(f'the Python process exited ({self._proc.wait()}) during {name}')
        answer = json.loads(line)
        if answer['error']:
            return answer['error'] + ('\noutput:\n' + answer['output'] if answer['output'] else '')
        return None

    def close(self) -> None:
        if self._proc.poll() is None:
            try:
                os.killpg(self._proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self._proc.wait()


def split_transcript(source: str, single_command: bool = False) -> List['TranscriptStep']:
    """A ``console`` block's ``$ command`` lines (a line ending in a backslash goes on to the next) and, after each,
    the output shown for it; with ``single_command``, every line after the first command is its output."""
    steps, command, output, continued = [], None, [], False
    for line in source.splitlines():
        if continued:
            command += '\n' + line
            continued = line.endswith('\\')
        elif line.startswith('$ ') and not (single_command and command is not None):
            if command is not None:
                steps.append(TranscriptStep(command, '\n'.join(output)))
            command, output = line[2:], []
            continued = line.endswith('\\')
        elif command is None:
            raise ValueError(f'a console block starts with "$ command", not {line!r}')
        else:
            output.append(line)
    if command is not None:
        steps.append(TranscriptStep(command, '\n'.join(output)))
    return steps


class TranscriptStep(NamedTuple):
    command: str
    shown: str  # the output the page shows ('' when it shows none)

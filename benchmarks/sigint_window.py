"""What a console script does with a SIGINT (Ctrl-C) in its first milliseconds: a sweep of delays after exec, many
runs each, the outcomes counted, the installed ``timm-sknet`` side by side with a script of the older form (one that
imports ``timm_sknet.cli`` itself, as the console scripts did before ``_timm_sknet_console``).

    python -m benchmarks.sigint_window                    # 20 runs per delay, 0-40 ms in 1 ms steps
    python -m benchmarks.sigint_window --runs 5 --max-ms 20 --step-ms 2

Each run is ``timm-sknet installed`` on an empty store; the delay is counted from the moment the process exists
(``subprocess.Popen`` returns once exec succeeded). The runs of both scripts and all delays are interleaved in a
seeded random order, so load from other processes hits them alike. Outcomes:

- ``signal``: ended by the signal, nothing printed (a shell shows 130): before CPython installs its handler;
- ``fatal``: CPython's "Fatal Python error: init_import_site", exit 1: while ``site`` runs the ``.pth`` files;
- ``lost``: CPython printed the KeyboardInterrupt ("Failed checking if argv[0] is an import path entry") and ran the
  command to its end: the Ctrl-C was lost;
- ``cpython-exit-1``: another step of CPython's between ``site`` and the script ("failed to set
  __main__.__loader__", or a bare "KeyboardInterrupt"), exit 1;
- ``traceback+signal``: a KeyboardInterrupt traceback, then ended by the signal: in the script before our handler;
- ``traceback+line``: CPython's traceback of a Ctrl-C it caught, then our line and 130 (the ``lost`` case, ended);
- ``line``: our one line, exit 130;
- anything else by exit code (``exit-0``: the Ctrl-C landed where Python only reports it, e.g. in a weakref
  callback of the import machinery, and the command ran to its end).
"""
import argparse
import collections
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List

OUTCOMES = ('signal', 'fatal', 'lost', 'cpython-exit-1', 'traceback+signal', 'traceback+line', 'line')
_OLDER_SCRIPT = f"""#!{sys.executable}
import sys
from timm_sknet.cli import main
if __name__ == '__main__':
    sys.exit(main())
"""


def outcome(code: int, stderr: str) -> str:
    lines = stderr.strip().splitlines()
    if code == -signal.SIGINT:
        return 'signal' if not lines else 'traceback+signal'
    if code == 1 and 'Fatal Python error' in stderr:
        return 'fatal'
    if code == 1 and lines and lines[-1].startswith('KeyboardInterrupt'):
        return 'cpython-exit-1'
    if code == 130 and lines and lines[-1].endswith('interrupted (Ctrl-C); nothing partial was left behind'):
        return 'line' if len(lines) == 1 else 'traceback+line'
    if code == 0 and 'Failed checking if argv[0] is an import path entry' in stderr:
        return 'lost'
    return f'exit-{code}'


def interrupted_at(argv: List[str], delay_s: float, env: Dict[str, str]) -> str:
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    start = time.perf_counter()
    while time.perf_counter() - start < delay_s:
        pass  # a sleep's granularity is too coarse for the first milliseconds
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=300)
    return outcome(proc.returncode, stderr.decode(errors='replace'))


def main() -> None:
    parser = argparse.ArgumentParser(prog='python -m benchmarks.sigint_window', description=__doc__.split('\n')[0])
    parser.add_argument('--runs', type=int, default=20, help='runs per delay and script (default: 20)')
    parser.add_argument('--max-ms', type=float, default=40, help='the longest delay (default: 40)')
    parser.add_argument('--step-ms', type=float, default=1, help='between delays (default: 1)')
    parser.add_argument('--seed', type=int, default=0, help='of the order of the runs')
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        older = Path(scratch) / 'timm-sknet-older'
        older.write_text(_OLDER_SCRIPT)
        older.chmod(0o755)
        scripts = {'console script': [str(Path(sys.executable).parent / 'timm-sknet'), 'installed'],
                   'older form': [str(older), 'installed']}
        env = dict(os.environ, TIMM_SKNET_HOME=str(Path(scratch) / 'empty-store'))
        delays = [round(i * args.step_ms, 3) for i in range(int(args.max_ms / args.step_ms) + 1)]
        trials = [(name, delay) for name in scripts for delay in delays for _ in range(args.runs)]
        random.Random(args.seed).shuffle(trials)
        load = os.getloadavg()[0]
        counts = {name: collections.defaultdict(collections.Counter) for name in scripts}
        for name, delay in trials:
            counts[name][delay][interrupted_at(scripts[name], delay / 1000, env)] += 1
    print(f'{sys.version.split()[0]}, {os.cpu_count()} CPUs, load {load:.1f} at the start, '
          f'{os.getloadavg()[0]:.1f} at the end; {args.runs} runs per delay and script')
    for name in scripts:
        seen = list(OUTCOMES) + sorted({o for c in counts[name].values() for o in c} - set(OUTCOMES))
        print(f'\n{name}: {" ".join(scripts[name])}')
        print(f"{'delay ms':>8} " + ' '.join(f'{o:>16}' for o in seen))
        total = collections.Counter()
        for delay in delays:
            total.update(counts[name][delay])
            print(f'{delay:8.1f} ' + ' '.join(f'{counts[name][delay][o]:>16}' for o in seen))
        print(f"{'share':>8} " + ' '.join(f'{100 * total[o] / sum(total.values()):>15.1f}%' for o in seen))


if __name__ == '__main__':
    main()

"""The speed chart of ``bench_sk --chart FILE.png``: img/s of each model, eager beside ``torch.compile``, drawn from
what that run measured, with the numbers beside it as ``FILE.json`` (docs/speed.md's table is checked against them).

Each model is shown in its faster memory format of the run, as in the script's goals summary.
"""
import io
import json
import shlex
import textwrap
import sys
from pathlib import Path
from typing import Any, Dict, List, Sequence

from timm_sknet.io.errors import UserError, require_module
from timm_sknet.io.files import check_output_file, write_outputs

DPI = 100
PANEL_SIZE = (6.0, 3.6)  # inches per (mode, batch) panel
BACKEND_COLOURS = {'eager': '#4c72b0', 'compile': '#dd8452'}


def check_chart_path(path: Path, force: bool) -> None:
    """Before any timing: a .png name that can be written, and matplotlib installed."""
    if path.suffix != '.png':
        raise UserError(f'--chart {path}: give a .png file name (the numbers go beside it as .json)')
    for target in (path, path.with_suffix('.json')):
        check_output_file(target, force)
    require_module('matplotlib', 'plots')


def chart_data(best_speeds: Dict[str, Dict[str, Dict[str, Any]]], machine: str, argv: Sequence[str],
               load: Sequence[str]) -> Dict[str, Any]:
    """``best_speeds``: 'eval b8' -> backend -> model -> {'img_s', 'format'}; with what measured them, and the load
    average (1/5/15 min) at the start and the end of the run."""
    return {'command': 'python -m benchmarks.bench_sk ' + shlex.join(argv), 'machine': machine,
            'load_average': {'start': load[0], 'end': load[1]}, 'cases': best_speeds}


def _png(data: Dict[str, Any]) -> bytes:
    require_module('matplotlib', 'plots')
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    cases = list(data['cases'])
    fig = Figure(figsize=(PANEL_SIZE[0] * len(cases), PANEL_SIZE[1] + 0.6), dpi=DPI, layout='constrained')
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(cases), squeeze=False)[0]
    for ax, case in zip(axes, cases):
        backends = data['cases'][case]
        models: List[str] = list(dict.fromkeys(m for speeds in backends.values() for m in speeds))
        width = 0.8 / len(backends)
        y = np.arange(len(models))
        for i, (backend, speeds) in enumerate(backends.items()):
            values = [speeds[m]['img_s'] if m in speeds else 0.0 for m in models]
            bars = ax.barh(y + (i - (len(backends) - 1) / 2) * width, values, height=width, label=backend,
                           color=BACKEND_COLOURS.get(backend))
            ax.bar_label(bars, labels=[f'{v:.1f}' if v else '' for v in values], fontsize=7, padding=2)
        ax.set_yticks(y, models, fontsize=8)
        ax.invert_yaxis()
        ax.set_xlabel('img/s (median of the rounds; higher is faster)', fontsize=8)
        ax.set_title(case, fontsize=9)
        ax.margins(x=0.15)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc='outside lower center', ncols=len(labels), fontsize=8)
    title = textwrap.fill(data['command'], width=int(fig.get_figwidth() * 16))
    fig.suptitle(f'{title}\n{data["machine"]}', fontsize=7)
    buffer = io.BytesIO()
    fig.savefig(buffer, format='png', dpi=DPI)
    return buffer.getvalue()


def write_chart(path: Path, data: Dict[str, Any], force: bool) -> None:
    """FILE.png and FILE.json, together or not at all."""
    write_outputs({path: _png(data), path.with_suffix('.json'): json.dumps(data, indent=1) + '\n'}, force)
    print(f'wrote {path} and {path.with_suffix(".json")}', file=sys.stderr)


def markdown_table(data: Dict[str, Any]) -> str:
    """The chart's numbers as docs/speed.md shows them: one row per model, img/s eager and compiled per case, then
    the command, the machine and its load."""
    cases = list(data['cases'])
    backends = list(dict.fromkeys(b for case in cases for b in data['cases'][case]))
    models = list(dict.fromkeys(m for case in cases for speeds in data['cases'][case].values() for m in speeds))
    columns = [(case, backend) for case in cases for backend in backends]
    lines = ['| model | ' + ' | '.join(f'{case} {backend}' for case, backend in columns) + ' |',
             '|---|' + '---|' * len(columns)]
    for model in models:
        cells = []
        for case, backend in columns:
            speed = data['cases'][case].get(backend, {}).get(model)
            cells.append('-' if speed is None else f'{speed["img_s"]:.2f} ({speed["format"]})')
        lines.append(f'| `{model}` | ' + ' | '.join(cells) + ' |')
    load = data['load_average']
    lines += ['', f'Measured by `{data["command"]}` on {data["machine"]}; load average (1/5/15 min) '
                  f'{load["start"]} at the start, {load["end"]} at the end.']
    return '\n'.join(lines)


def main(argv: Sequence[str] = None) -> int:
    """``python -m benchmarks.chart FILE.json``: the table of a chart's numbers, for docs/speed.md."""
    import argparse
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument('numbers', type=Path, help='the FILE.json that bench_sk --chart FILE.png wrote')
    args = parser.parse_args(argv)
    try:
        data = json.loads(args.numbers.read_text())
    except (OSError, ValueError) as e:
        raise UserError(f'{args.numbers}: not the numbers of a chart ({e}); pass the FILE.json that '
                        'bench_sk --chart FILE.png wrote') from None
    print(markdown_table(data))
    return 0


if __name__ == '__main__':
    from timm_sknet.io.errors import run_cli
    run_cli('benchmarks.chart', main)

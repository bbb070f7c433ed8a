"""SKNet-50 speed against timm's ``skresnext50_32x4d`` (the same network) and ``resnext50_32x4d`` (the cost floor).

    python -m benchmarks.bench_sk                  # eval at batch 1 and 8, a training step at batch 8; NCHW and
                                                   # channels_last; eager (add --compile for torch.compile too)
    python -m benchmarks.bench_sk --quick          # smoke test: 3 repeats, batch 8 only, eager only
    python -m benchmarks.bench_sk --runs 5         # the same in 5 fresh processes, then the goals' ratios of
                                                   # every run and their median
    python -m benchmarks.bench_sk --compile --chart speed.png   # and a chart of it: eager beside compile

A model is a timm name, optionally with a deploy transform: ``NAME:deploy`` is ``timm.utils.reparameterize_model``
(what ``--reparam`` in timm's scripts calls), ``NAME:fx-fuse`` is ``torch.fx.experimental.optimization.fuse`` (conv
+ BN folding by graph rewrite, for models without a deploy form). Deploy forms are timed in eval only. ``NAME+VARIANT``
builds a variant of an SK model that shows what its parts cost: ``+sum`` has both paths and the paper's plain-sum
selection (no attention), ``+m1`` has one path (a ResNeXt unit built from this package's modules), e.g.

    python -m benchmarks.bench_sk --eval-batch-sizes 8 --train-batch-size 0 \
        --models sknet50:deploy,sknet50+sum:deploy,sknet50+m1:deploy,resnext50_32x4d:fx-fuse

Every mode, batch size and backend times the models in every memory format round-robin in one process, one
iteration each per round, so load from other processes hits all of them alike; a model's figure is the median over
rounds, and a ratio is the median of the per-round ratios (this machine's speed drifts from round to round).
A model's speed also differs from process to process by more than from round to round (on the 2-core CI VM fx-fused
``resnext50_32x4d`` ran at 29.8 to 36.9 img/s in five runs of this script, sknet50's deploy form at 27.3 to 31.4),
so ``--runs K`` repeats the whole run in K fresh processes and reports the median of their ratios as well.
``sknet50`` differs from ``skresnext50_32x4d`` only by its stem pool (Caffe's pad-0 ceil-mode pool), which costs
the same. On a GPU everything runs under bf16 autocast and peak memory is ``torch.cuda.max_memory_allocated``;
on CPU the training step's peak memory is reported twice: the peak of live tensor bytes (torch.profiler memory
events: exact, deterministic, but blind to oneDNN's private scratch buffers) and the growth of the process's
peak RSS over the step (everything the process touches, allocator caching included; Linux only).
"""
import argparse
import copy
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

import timm
from timm.utils import reparameterize_model
from torch.fx.experimental.optimization import fuse
from timm_sknet.io.errors import UserError, run_cli  # importing timm_sknet registers sknet50

from benchmarks.chart import chart_data, check_chart_path, write_chart
from benchmarks.timing import (
    FORMATS, Case, cpu_rss_peak_growth, describe_machine, load_average, make_step, tensor_peak_growth,
    time_round_robin)

OURS, TIMM_SK, FLOOR = 'sknet50', 'skresnext50_32x4d', 'resnext50_32x4d'
OURS_DEPLOY, FLOOR_FUSED = f'{OURS}:deploy', f'{FLOOR}:fx-fuse'
DEFAULT_MODELS = (OURS, OURS_DEPLOY, TIMM_SK, FLOOR, FLOOR_FUSED)
VARIANTS = {
    'sum': dict(sk_attention=False),
    'm1': dict(kernel_size=(3,)),
}
TRANSFORMS = {
    'deploy': reparameterize_model,
    'fx-fuse': lambda model: fuse(model.eval()),
}
# The project's speed goals (2-core CPU, 224px, each model in its faster memory format): (mode, batch, backend)
# -> [(model, other model, minimum of model / other)].
GOALS = {
    ('eval', 8, 'eager'): [(OURS, TIMM_SK, 1.5), (OURS_DEPLOY, FLOOR, 1.0), (OURS_DEPLOY, FLOOR_FUSED, 0.92)],
    ('train', 8, 'eager'): [(OURS, TIMM_SK, 1.15)],
}


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--models', default=','.join(DEFAULT_MODELS),
                        help=f'comma-separated timm model names, each optionally NAME+{{{",".join(VARIANTS)}}} '
                             f'and NAME:{{{",".join(TRANSFORMS)}}}')
    parser.add_argument('--eval-batch-sizes', help='comma-separated; empty: no eval cases (default: 1,8)')
    parser.add_argument('--train-batch-size', type=int, default=8, help='0: no training cases')
    parser.add_argument('--formats', default='nchw,channels_last', help=f'comma-separated, of {sorted(FORMATS)}')
    parser.add_argument('--compile', action='store_true', help='also time torch.compile (inductor) versions')
    parser.add_argument('--compile-only', action='store_true', help='time torch.compile versions only')
    parser.add_argument('--img-size', type=int, default=224)
    parser.add_argument('--repeats', type=int, help='timed rounds per case (default: 10)')
    parser.add_argument('--warmup', type=int, help='untimed rounds per case (default: 2)')
    parser.add_argument('--device', default='auto', choices=('auto', 'cpu', 'cuda'))
    parser.add_argument('--threads', type=int, default=0, help='torch CPU threads (0: leave the default)')
    parser.add_argument(
        '--quick', action='store_true', help='smoke test: defaults become --repeats 3 --warmup 1 --eval-batch-sizes 8')
    parser.add_argument('--runs', type=int, default=1,
                        help='repeat the whole run in this many fresh processes and report the median ratios')
    parser.add_argument('--chart', type=Path, metavar='FILE.png',
                        help='draw each model\'s img/s in its faster memory format, eager beside compile, to '
                             'FILE.png, with the numbers in FILE.json (needs the plots extra; not with --runs)')
    parser.add_argument('--force', action='store_true', help='replace an existing --chart FILE.png / FILE.json')
    parser.add_argument('--goals-out', help=argparse.SUPPRESS)  # a run of --runs writes its goals here (JSON)
    args = parser.parse_args(argv)
    if args.runs < 1:
        raise UserError(f'--runs must be at least 1, got {args.runs}')
    if args.chart is not None:
        if args.runs > 1:
            raise UserError('--chart draws the figures of one run: leave out --runs')
        check_chart_path(args.chart, args.force)
    defaults = dict(repeats=3, warmup=1, eval_batch_sizes='8') if args.quick else \
        dict(repeats=10, warmup=2, eval_batch_sizes='1,8')
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    return args


def _split(text: str) -> List[str]:
    return [t.strip() for t in text.split(',') if t.strip()]


def build_cases(args: argparse.Namespace) -> List[Case]:
    backends = ['compile'] if args.compile_only else ['eager', 'compile'] if args.compile else ['eager']
    formats = _split(args.formats)
    unknown = set(formats) - set(FORMATS)
    if unknown:
        raise UserError(f'unknown --formats {sorted(unknown)}; choose from {sorted(FORMATS)}')
    modes = [('eval', int(b)) for b in _split(args.eval_batch_sizes)]
    if args.train_batch_size > 0:
        modes.append(('train', args.train_batch_size))
    return [Case(mode, batch, fmt, backend) for backend in backends for mode, batch in modes for fmt in formats]


def build_model(name: str, device: torch.device) -> nn.Module:
    """``NAME[+VARIANT][:TRANSFORM]`` (see ``VARIANTS``, ``TRANSFORMS``), in eval mode, on ``device``."""
    spec, _, transform = name.partition(':')
    arch, _, variant = spec.partition('+')
    if not timm.is_model(arch):
        raise UserError(f'unknown model {arch!r} in --models; give timm model names, e.g. {",".join(DEFAULT_MODELS)}')
    if variant and variant not in VARIANTS:
        raise UserError(f'unknown variant {variant!r} in --models; choose from {sorted(VARIANTS)}')
    if transform and transform not in TRANSFORMS:
        raise UserError(f'unknown transform {transform!r} in --models; choose from {sorted(TRANSFORMS)}')
    try:
        model = timm.create_model(arch, **VARIANTS.get(variant, {})).to(device).eval()
    except TypeError as e:
        raise UserError(f'{arch} has no variant {variant!r} ({e}); variants are for SK models such as {OURS}') from e
    return TRANSFORMS[transform](model) if transform else model


def _mib(nbytes: Optional[int]) -> str:
    return 'n/a' if nbytes is None else f'{nbytes / 2 ** 20:.0f}'


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    if args.runs > 1:
        return run_in_processes(argv, args.runs)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == 'auto':
        device = torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    else:
        device = torch.device(args.device)
    if device.type == 'cuda' and not torch.cuda.is_available():
        raise UserError('--device cuda: no CUDA device is visible; use --device cpu')
    torch.manual_seed(0)
    # Every model shares ResNet.forward: without headroom dynamo would stop compiling after a few variants.
    torch._dynamo.config.cache_size_limit = 64
    torch._dynamo.config.accumulated_cache_size_limit = 512
    names = _split(args.models)
    cases = build_cases(args)
    base_models = {name: build_model(name, device) for name in names}

    machine = describe_machine(device)
    print(f'machine: {machine}')
    print(f'precision: {"bf16 autocast" if device.type == "cuda" else "fp32"}; image {args.img_size}px; '
          f'{args.repeats} timed rounds (+{args.warmup} warm-up) per case, models interleaved, median reported')
    load_at_start = load_average()
    print(f'load average at start (1/5/15 min): {load_at_start}\n')

    samples = {}  # (case, name) -> seconds per iteration, one per round
    memory = {}  # (case, name) -> (tensor peak bytes, rss peak growth bytes)
    # The memory formats of one mode, batch size and backend run in the same rounds, so that the comparison of each
    # model in its faster format is paired round by round (this machine's speed drifts between rounds).
    groups = {}
    for case in cases:
        groups.setdefault((case.mode, case.batch_size, case.backend), []).append(case)
    for group in groups.values():
        if group[0].backend == 'compile':
            torch._dynamo.reset()
        steps = {}
        for case in group:
            for name, base in base_models.items():
                if case.mode == 'train' and ':' in name:
                    continue  # deploy forms are for inference
                # train steps change weights and BN statistics: give each case fresh copies.
                model = copy.deepcopy(base).to(memory_format=FORMATS[case.memory_format])
                model.train(case.mode == 'train')
                steps[case, name] = make_step(model, case, device, args.img_size)
        started = time.perf_counter()
        samples.update(time_round_robin(steps, args.repeats, args.warmup))
        for case in group:
            timed = {name: samples[c, name] for c, name in steps if c == case}
            if case.mode == 'train':
                for name in timed:
                    step = steps[case, name]
                    rss = cpu_rss_peak_growth(step) if device.type == 'cpu' else None
                    memory[case, name] = (tensor_peak_growth(step, device), rss)
            spread = ', '.join(
                f'{name} {case.batch_size / statistics.median(t):.2f} img/s '
                f'(min..max {case.batch_size / max(t):.2f}..{case.batch_size / min(t):.2f})'
                for name, t in timed.items())
            print(f'[{case}] {spread}', flush=True)
        print(f'({time.perf_counter() - started:.0f} s)', flush=True)
    load_at_end = load_average()
    print(f'\nload average at end (1/5/15 min): {load_at_end}')
    # The goals were set for 224px on a CPU.
    measured = report(names, cases, samples, memory, show_goals=args.img_size == 224 and device.type == 'cpu')
    if args.goals_out:
        with open(args.goals_out, 'w') as f:
            json.dump(measured, f)
    if args.chart is not None:
        data = chart_data(fastest_speeds(names, cases, samples), machine, argv, (load_at_start, load_at_end))
        write_chart(args.chart, data, args.force)
    return 0


def _best_formats(names: List[str], group: List[Case], speed: Dict[Tuple[Case, str], float]) -> Dict[str, Case]:
    """Each model's faster case of one mode, batch size and backend (the group differs only in memory format)."""
    return {n: max(group, key=lambda c: speed[c, n]) for n in names if (group[0], n) in speed}


def _speeds(samples: Dict[Tuple[Case, str], List[float]]) -> Dict[Tuple[Case, str], float]:
    """img/s: the batch over the median seconds per iteration."""
    return {key: key[0].batch_size / statistics.median(t) for key, t in samples.items()}


def _groups(cases: List[Case]) -> List[Tuple[str, int, str]]:
    return sorted({(c.mode, c.batch_size, c.backend) for c in cases}, key=str)


def fastest_speeds(names: List[str], cases: List[Case], samples: Dict[Tuple[Case, str], List[float]]
                   ) -> Dict[str, Dict[str, Dict[str, Dict[str, Any]]]]:
    """'eval b8' -> backend -> model -> {'img_s', 'format'}, each model in its faster memory format."""
    speed = _speeds(samples)
    result: Dict[str, Dict[str, Dict[str, Dict[str, Any]]]] = {}
    for mode, batch, backend in sorted(_groups(cases), key=lambda g: (g[0], g[1], g[2] != 'eager')):
        group = [c for c in cases if (c.mode, c.batch_size, c.backend) == (mode, batch, backend)]
        best = _best_formats(names, group, speed)
        result.setdefault(f'{mode} b{batch}', {})[backend] = {
            n: {'img_s': round(speed[case, n], 2), 'format': case.memory_format} for n, case in best.items()}
    return result


def _paired_ratio(faster: List[float], slower: List[float]) -> float:
    """Median over rounds of one model's speed over another's, each timed in the same round."""
    return statistics.median(t_slower / t_faster for t_faster, t_slower in zip(faster, slower))


def report(
        names: List[str],
        cases: List[Case],
        samples: Dict[Tuple[Case, str], List[float]],
        memory: Dict[Tuple[Case, str], Tuple[int, Optional[int]]],
        show_goals: bool,
) -> List[Dict[str, Any]]:
    """Print the tables; return the goals as measured (empty unless ``show_goals``)."""
    speed = _speeds(samples)
    ratio_cols = [n for n in names if n != OURS] if OURS in names else []
    print(f'\n## img/s (median) and {OURS} / other (median of the per-round ratios)')
    print('| case | ' + ' | '.join(names + [f'{OURS} / {n}' for n in ratio_cols]) + ' |')
    print('|' + '---|' * (1 + len(names) + len(ratio_cols)))
    for case in cases:
        cells = [f'{speed[case, n]:.2f}' if (case, n) in speed else '-' for n in names]
        cells += [f'{_paired_ratio(samples[case, OURS], samples[case, n]):.2f}x' if (case, n) in speed else '-'
                  for n in ratio_cols]
        print(f'| {case} | ' + ' | '.join(cells) + ' |')

    train_cases = [c for c in cases if c.mode == 'train']
    train_names = [n for n in names if ':' not in n]
    if train_cases:
        print('\n## training step peak memory, MiB: tensor peak (profiler / cuda allocator) | peak RSS growth')
        print('| case | ' + ' | '.join(train_names) + ' |')
        print('|' + '---|' * (1 + len(train_names)))
        for case in train_cases:
            cells = [f'{_mib(memory[case, n][0])} \\| {_mib(memory[case, n][1])}' for n in train_names]
            print(f'| {case} | ' + ' | '.join(cells) + ' |')

    print("\n## each model in its faster memory format (the goals' comparison; ratios paired round by round)")
    measured = []
    for mode, batch, backend in _groups(cases):
        group = [c for c in cases if (c.mode, c.batch_size, c.backend) == (mode, batch, backend)]
        best = _best_formats(names, group, speed)
        timed = list(best)
        parts = [f'{n} {speed[best[n], n]:.2f} img/s ({best[n].memory_format})' for n in timed]
        print(f'{mode} b{batch} {backend}: ' + ', '.join(parts))
        if mode == 'train':
            print('    tensor peak: ' + ', '.join(f'{n} {_mib(memory[best[n], n][0])} MiB' for n in timed))
        if FLOOR_FUSED in best:
            floor = samples[best[FLOOR_FUSED], FLOOR_FUSED]
            print(f'    speed / {FLOOR_FUSED}: ' + ', '.join(
                f'{n} {_paired_ratio(samples[best[n], n], floor):.2f}x' for n in timed if n != FLOOR_FUSED))
        for result in goal_results(best, samples, memory, mode, batch, backend) if show_goals else ():
            print(f'    {_describe_goal(result, result["value"])}')
            measured.append(result)
    return measured


def goal_results(
        best: Dict[str, Case],
        samples: Dict[Tuple[Case, str], List[float]],
        memory: Dict[Tuple[Case, str], Tuple[int, Optional[int]]],
        mode: str,
        batch: int,
        backend: str,
) -> List[Dict[str, Any]]:
    """The goals for one mode, batch size and backend, each model in its faster format (``best``)."""
    case = f'{mode} b{batch} {backend}'
    results = []
    for model, other, goal in GOALS.get((mode, batch, backend), ()):
        if model in best and other in best:
            ratio = _paired_ratio(samples[best[model], model], samples[best[other], other])
            results.append(dict(case=case, name=f'{model} / {other}', value=ratio, minimum=goal))
    if (mode, backend) == ('train', 'eager') and OURS in best and TIMM_SK in best:
        ours_mem, timm_mem = memory[best[OURS], OURS][0], memory[best[TIMM_SK], TIMM_SK][0]
        results.append(dict(case=case, name=f'peak tensor memory {OURS} / {TIMM_SK}', value=ours_mem / timm_mem,
                            below=1.0))
    return results


def _goal_met(result: Dict[str, Any], value: float) -> bool:
    return value >= result['minimum'] if 'minimum' in result else value < result['below']


def _describe_goal(result: Dict[str, Any], value: float) -> str:
    goal = f'>= {result["minimum"]}x' if 'minimum' in result else f'< {result["below"]}x'
    verdict = 'met' if _goal_met(result, value) else 'NOT met'
    return f'{result["name"]} = {value:.3f}x (goal {goal}: {verdict})'


def run_in_processes(argv: Sequence[str], runs: int) -> int:
    """The whole benchmark in ``runs`` fresh processes one after another; then each goal's ratio per run and
    the median over runs."""
    per_run = []
    with tempfile.TemporaryDirectory() as tmp:
        for run in range(runs):
            print(f'# run {run + 1} of {runs} (a fresh process)', flush=True)
            out = os.path.join(tmp, f'run{run}.json')
            command = [sys.executable, '-m', 'benchmarks.bench_sk', *argv, '--runs', '1', '--goals-out', out]
            returncode = subprocess.run(command).returncode
            if returncode:
                raise UserError(f'run {run + 1} of {runs} failed with exit code {returncode} (its output is above)')
            with open(out) as f:
                per_run.append(json.load(f))
            print(flush=True)
    if per_run[0]:
        print(f'## the goals in {runs} runs (fresh processes): each run\'s ratio, and their median')
        print('\n'.join(summarise_runs(per_run)))
    return 0


def summarise_runs(per_run: List[List[Dict[str, Any]]]) -> List[str]:
    """One line per goal: met or not by the median over runs, then every run's ratio."""
    lines = []
    for i, result in enumerate(per_run[0]):
        values = [run[i]['value'] for run in per_run]
        listed = ', '.join(f'{v:.3f}' for v in values)
        lines.append(f'{result["case"]}: {_describe_goal(result, statistics.median(values))}; runs: {listed}')
    return lines


if __name__ == '__main__':
    run_cli('bench_sk', main)

"""SK-ShuffleNetV2 speed at batch 1 in eval (a small model's use: one image at a time, on a CPU) against its plain
form, ShuffleNetV2 (``kernel_size=(3,), sk_attention=False``), each as built and in timm's deploy form
(``timm.utils.reparameterize_model``: every BatchNorm folded into its conv), with torchvision's ShuffleNetV2 of the
same width as a reference for the plain form.

    python -m benchmarks.bench_shufflenet                 # both widths, NCHW and channels_last
    python -m benchmarks.bench_shufflenet --quick         # smoke test: 0.5x, NCHW, 5 rounds

For each width and memory format the five models are timed round-robin in one process, one forward each per round
(``benchmarks.timing``), so load from other processes hits all of them alike; a model's figure is its median.
"""
import argparse
import statistics
from typing import Dict, Optional, Sequence

import torch
import torchvision
from torch import nn

import timm
from timm.utils import reparameterize_model

from timm_sknet.io.errors import UserError, run_cli  # importing timm_sknet registers the models

from benchmarks.timing import FORMATS, Case, describe_machine, load_average, make_step, time_round_robin

WIDTHS = {'050': 'shufflenet_v2_x0_5', '100': 'shufflenet_v2_x1_0'}
PLAIN = dict(kernel_size=(3,), sk_attention=False)
SK, SK_DEPLOY, BASE, BASE_DEPLOY, TORCHVISION = 'SK', 'SK deploy', 'plain', 'plain deploy', 'torchvision'
COLUMNS = (SK, SK_DEPLOY, BASE, BASE_DEPLOY, TORCHVISION)
# (numerator, denominator) of each ratio column
RATIOS = ((SK, BASE), (SK_DEPLOY, BASE_DEPLOY), (SK_DEPLOY, SK), (BASE_DEPLOY, BASE), (BASE, TORCHVISION))


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--widths', default=','.join(WIDTHS), help=f'comma-separated, of {sorted(WIDTHS)}')
    parser.add_argument('--formats', default='nchw,channels_last', help=f'comma-separated, of {sorted(FORMATS)}')
    parser.add_argument('--batch-size', type=int, default=1)
    parser.add_argument('--img-size', type=int, default=224)
    parser.add_argument('--repeats', type=int, help='timed rounds per case (default: 200)')
    parser.add_argument('--warmup', type=int, help='untimed rounds per case (default: 10)')
    parser.add_argument('--threads', type=int, default=0, help='torch CPU threads (0: leave the default)')
    parser.add_argument('--quick', action='store_true', help='smoke test: --widths 050 --formats nchw, 5 rounds')
    args = parser.parse_args(argv)
    if args.quick:
        args.widths, args.formats = '050', 'nchw'
    defaults = dict(repeats=5, warmup=1) if args.quick else dict(repeats=200, warmup=10)
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    args.widths = [w.strip() for w in args.widths.split(',') if w.strip()]
    args.formats = [f.strip() for f in args.formats.split(',') if f.strip()]
    if set(args.widths) - set(WIDTHS) or not args.widths:
        raise UserError(f'--widths {",".join(args.widths)}: choose from {",".join(WIDTHS)}')
    if set(args.formats) - set(FORMATS) or not args.formats:
        raise UserError(f'--formats {",".join(args.formats)}: choose from {",".join(FORMATS)}')
    return args


def build_models(width: str) -> Dict[str, nn.Module]:
    """The five models of one width, in eval mode; the deploy forms from the very models they are timed against."""
    torch.manual_seed(0)
    sk = timm.create_model(f'sk_shufflenetv2_{width}').eval()
    base = timm.create_model(f'sk_shufflenetv2_{width}', **PLAIN).eval()
    return {
        SK: sk, SK_DEPLOY: reparameterize_model(sk), BASE: base, BASE_DEPLOY: reparameterize_model(base),
        TORCHVISION: getattr(torchvision.models, WIDTHS[width])().eval(),
    }


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device('cpu')
    print(f'machine: {describe_machine(device)}')
    print(f'eval, batch {args.batch_size}, fp32, {args.img_size}px; {args.repeats} timed rounds (+{args.warmup} '
          f'warm-up) per case, the five models of a width interleaved, median reported')
    print(f'load average at start (1/5/15 min): {load_average()}\n')
    results = {}  # (width, memory format, column) -> img/s
    for width in args.widths:
        models = build_models(width)
        for fmt in args.formats:
            case = Case('eval', args.batch_size, fmt, 'eager')
            steps = {name: make_step(model.to(memory_format=FORMATS[fmt]), case, device, args.img_size)
                     for name, model in models.items()}
            times = time_round_robin(steps, args.repeats, args.warmup)
            for name, samples in times.items():
                results[width, fmt, name] = args.batch_size / statistics.median(samples)
            print(f'[{width} {fmt}] ' + ', '.join(f'{n} {results[width, fmt, n]:.1f} img/s' for n in steps), flush=True)
    print(f'load average at end (1/5/15 min): {load_average()}')

    ratio_names = [f'{a} / {b}' for a, b in RATIOS]
    print('\n| width | format | ' + ' | '.join(f'{c} img/s' for c in COLUMNS) + ' | ' + ' | '.join(ratio_names) + ' |')
    print('|' + '---|' * (2 + len(COLUMNS) + len(RATIOS)))
    for width in args.widths:
        for fmt in args.formats:
            cells = [f'{results[width, fmt, c]:.1f}' for c in COLUMNS]
            cells += [f'{results[width, fmt, a] / results[width, fmt, b]:.2f}x' for a, b in RATIOS]
            print(f'| {int(width) / 100:.1f}x | {fmt} | ' + ' | '.join(cells) + ' |')
    return 0


if __name__ == '__main__':
    run_cli('bench_shufflenet', main)

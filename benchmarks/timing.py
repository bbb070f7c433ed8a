"""What the benchmarks share: a case, one timed step of it, round-robin timing, memory peaks, the machine.

Run the benchmarks from the checkout (``python -m benchmarks.bench_sk``, ``python -m benchmarks.bench_shufflenet``).
"""
import ctypes
import gc
import os
import platform
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional

import torch
import torch.nn.functional as F
from torch import nn

import timm

FORMATS = {'nchw': torch.contiguous_format, 'channels_last': torch.channels_last}


@dataclass(frozen=True)
class Case:
    mode: str  # 'eval' or 'train'
    batch_size: int
    memory_format: str  # a FORMATS key
    backend: str  # 'eager' or 'compile'

    def __str__(self) -> str:
        return f'{self.mode} b{self.batch_size} {self.memory_format} {self.backend}'


def sync(device: torch.device) -> None:
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def make_step(model: nn.Module, case: Case, device: torch.device, img_size: int) -> Callable[[], None]:
    """One iteration of ``case`` on ``model`` (already in the case's memory format and mode), synchronised."""
    memory_format = FORMATS[case.memory_format]
    x = torch.randn(case.batch_size, 3, img_size, img_size, device=device).contiguous(memory_format=memory_format)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == 'cuda')
    net = torch.compile(model, dynamic=False) if case.backend == 'compile' else model
    if case.mode == 'eval':
        def step():
            with torch.inference_mode(), autocast:
                net(x)
            sync(device)
        return step

    target = torch.randint(0, 1000, (case.batch_size,), device=device)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)

    def step():
        with autocast:
            loss = F.cross_entropy(net(x), target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        sync(device)
    return step


def time_round_robin(steps: Dict[Any, Callable[[], None]], repeats: int, warmup: int) -> Dict[Any, List[float]]:
    """Seconds per iteration of each step, interleaved: every round runs each step once."""
    times = {name: [] for name in steps}
    for round_idx in range(warmup + repeats):
        for name, step in steps.items():
            start = time.perf_counter()
            step()
            if round_idx >= warmup:
                times[name].append(time.perf_counter() - start)
    return times


def malloc_trim() -> None:
    try:
        ctypes.CDLL('libc.so.6').malloc_trim(0)
    except (OSError, AttributeError):
        pass


def proc_status_kib(field: str) -> Optional[int]:
    try:
        with open('/proc/self/status') as f:
            for line in f:
                if line.startswith(field + ':'):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def cpu_rss_peak_growth(step: Callable[[], None]) -> Optional[int]:
    """Growth of the peak RSS over one step, in bytes (Linux: VmHWM reset through /proc/self/clear_refs)."""
    gc.collect()
    malloc_trim()  # hand cached heap back so the baseline is what is really live
    base = proc_status_kib('VmRSS')
    try:
        with open('/proc/self/clear_refs', 'w') as f:
            f.write('5')  # resets VmHWM to the current RSS
    except OSError:
        return None
    step()
    peak = proc_status_kib('VmHWM')
    return None if base is None or peak is None else (peak - base) * 1024


def tensor_peak_growth(step: Callable[[], None], device: torch.device) -> int:
    """Peak of live tensor bytes over one step above those live before it."""
    if device.type == 'cuda':
        sync(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        step()
        return torch.cuda.max_memory_allocated(device) - base
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == '[memory]']
    live = peak = 0
    for event in sorted(events, key=lambda e: e.start_ns()):
        live += event.nbytes()
        peak = max(peak, live)
    return peak


def describe_machine(device: torch.device) -> str:
    if device.type == 'cuda':
        where = torch.cuda.get_device_name(device)
    else:
        where = platform.processor() or platform.machine()
        try:
            with open('/proc/cpuinfo') as f:
                where = next(line.split(':', 1)[1].strip() for line in f if line.startswith('model name'))
        except (OSError, StopIteration):
            pass
        where += f', {os.cpu_count()} logical CPUs, torch threads {torch.get_num_threads()}'
    return f'{where}; torch {torch.__version__}, timm {timm.__version__}, Python {platform.python_version()}'


def load_average() -> str:
    try:
        return ' / '.join(f'{v:.1f}' for v in os.getloadavg())
    except OSError:
        return 'n/a'

"""Progress of a long pass over the validation images, with its rate and ETA, on stderr.

On a terminal it is tqdm's bar. Elsewhere (a release's log file, CI) a bar redrawn with carriage returns is
unreadable, so it is a line when the pass starts, one every ``LOG_EVERY_S`` and one when it ends.
"""
import sys
import time
from typing import Optional

from tqdm import tqdm

LOG_EVERY_S = 60.


class Progress:
    """``update(n)`` as ``n`` more of ``total`` items are done; use it as a context manager."""

    def __init__(self, total: int, desc: str, unit: str = 'img'):
        self.total, self.desc, self.unit = total, desc, unit
        self.done = 0
        self.logged: Optional[int] = None  # how many were done at the last line
        self.bar: Optional[tqdm] = None
        if sys.stderr.isatty():
            self.bar = tqdm(total=total, desc=desc, unit=unit)
        else:
            self.start = time.monotonic()
            self._line()

    def update(self, count: int) -> None:
        self.done += count
        if self.bar is not None:
            self.bar.update(count)
        elif time.monotonic() - self.last_line >= LOG_EVERY_S:
            self._line()

    def _line(self) -> None:
        self.last_line, self.logged = time.monotonic(), self.done
        elapsed = self.last_line - self.start
        line = f'{self.desc}: {self.done:,}/{self.total:,} {self.unit}s ({100 * self.done / max(self.total, 1):.0f}%)'
        if self.done:
            rate = self.done / max(elapsed, 1e-9)
            remaining = (self.total - self.done) / rate
            line += f', {rate:,.1f} {self.unit}/s, {tqdm.format_interval(elapsed)} elapsed, ETA ' \
                    f'{tqdm.format_interval(remaining)}'
        print(line, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        elif self.logged != self.done:
            self._line()

    def __enter__(self) -> 'Progress':
        return self

    def __exit__(self, *exc) -> None:
        self.close()

"""Progress of long work, on stderr: a bar on a terminal, plain lines in a log.

On a terminal (stderr a TTY) with tqdm installed (the progress extra) a bar shows the work done,
its rate and the time left. Anywhere else (a log file, a pipe, a CI job, or no tqdm) plain lines
come at a steady interval, each complete in itself and with the time left:

    mindref: train K=4: 1,200/4,000 steps (30%), 41.2 steps/s, about 1 min 8 s left

The rate is the run's average since it started (not a moving average, which jumped at every
epoch's checkpoint and promised minutes that never came). Lines between the bar's updates
(`say`) never tear the bar.
"""
from __future__ import annotations

import os
import sys
import threading
import time

INTERVAL = 10.0  # seconds between two plain progress lines (a log stays readable, a wait is never silent)


def _tqdm():
    """tqdm's class, or None without the progress extra."""
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm


def interactive() -> bool:
    """A person watches stderr (a terminal), unless MINDREF_PROGRESS=lines asks for log lines."""
    return sys.stderr.isatty() and os.environ.get("MINDREF_PROGRESS") != "lines"


def duration(seconds: float) -> str:
    """'45 s', '3 min 5 s', '2 h 4 min'."""
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60} min"


class Progress:
    """Work of `total` units (None: unknown); update(n) after each piece, close() at the end."""

    def __init__(self, total: int | None, desc: str, unit: str, interval: float = INTERVAL):
        self.total, self.desc, self.unit, self.interval = total, desc, unit, interval
        self.n, self.t0, self.last, self.postfix = 0, time.perf_counter(), time.perf_counter(), ""
        tqdm = _tqdm() if interactive() else None
        self.bar = None if tqdm is None else tqdm(total=total, desc=desc, unit=unit, leave=False,
                                                  file=sys.stderr, mininterval=0.5, smoothing=0)

    def update(self, n: int = 1) -> None:
        self.n += n
        if self.bar is not None:
            self.bar.update(n)
            return
        now = time.perf_counter()
        if now - self.last >= self.interval:
            self.last = now
            say(f"mindref: {self.line()}")

    def note(self, **fields) -> None:
        """Figures shown beside the count (loss, samples/s)."""
        self.postfix = ", ".join(f"{k} {v}" for k, v in fields.items())
        if self.bar is not None:
            self.bar.set_postfix(fields, refresh=False)

    def line(self) -> str:
        elapsed = max(time.perf_counter() - self.t0, 1e-9)
        rate = self.n / elapsed
        done = f"{self.n:,}/{self.total:,} {self.unit}s ({self.n / self.total:.0%})" if self.total else \
            f"{self.n:,} {self.unit}s"
        left = ""
        if self.total and rate > 0 and self.n < self.total:
            left = f", about {duration((self.total - self.n) / rate)} left"
        extra = f", {self.postfix}" if self.postfix else ""
        return f"{self.desc}: {done}, {rate:,.1f} {self.unit}s/s{left}{extra}"

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def say(line: str) -> None:
    """A line on stderr that does not tear a progress bar."""
    tqdm = _tqdm() if interactive() else None
    if tqdm is None:
        print(line, file=sys.stderr, flush=True)
    else:
        tqdm.write(line, file=sys.stderr)


class Working:
    """A step with no count to show (one library call: Annoy's build): a line when it starts and,
    every `interval` seconds while it runs, a line with the time so far, so no wait is silent."""

    def __init__(self, desc: str, interval: float = INTERVAL):
        self.desc, self.interval = desc, interval
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._beat, daemon=True)

    def _beat(self) -> None:
        t0 = time.perf_counter()
        while not self.done.wait(self.interval):
            say(f"mindref: {self.desc}: still working, {duration(time.perf_counter() - t0)} so far")

    def __enter__(self) -> Working:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.done.set()
        self.thread.join()

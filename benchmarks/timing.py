"""Timing harness: warm-up, calibrated batches, contenders interleaved.

Every figure is the median over many batches; the spread is kept as
min, max and the interquartile range.  Contenders of one case are timed in
turn within each repetition (the order rotates), so a slow phase of the
machine hits all of them alike and their ratios stay meaningful.
"""

from __future__ import annotations

import itertools
import statistics
import sys
import time
from typing import Callable, Dict, List, Sequence

Op = Callable[[], object]


class Progress:
    """Plain progress lines on stderr: step counter, elapsed time, what runs."""

    def __init__(self, total: int) -> None:
        self.total = max(total, 1)
        self.done = 0
        self.start = time.monotonic()

    def step(self, what: str) -> None:
        self.done += 1
        elapsed = time.monotonic() - self.start
        sys.stderr.write(f"[{self.done:3d}/{self.total}] {elapsed:6.1f}s  {what}\n")
        sys.stderr.flush()


def summarize(samples: Sequence[float]) -> Dict[str, float]:
    """Median, quartiles and extremes of per-call times in nanoseconds."""
    s = sorted(samples)
    if len(s) >= 4:
        q1, _, q3 = statistics.quantiles(s, n=4)
    else:
        q1, q3 = s[0], s[-1]
    return {
        "median_ns": statistics.median(s),
        "q1_ns": q1,
        "q3_ns": q3,
        "min_ns": s[0],
        "max_ns": s[-1],
        "samples": len(s),
    }


def _batch(op: Op, number: int) -> float:
    """Nanoseconds per call over one batch of ``number`` calls.  An op with
    a ``batch`` method (a floor looping in C) runs and times the batch
    itself."""
    own = getattr(op, "batch", None)
    if own is not None:
        return float(own(number))
    rep = itertools.repeat(None, number)
    t0 = time.perf_counter_ns()
    for _ in rep:
        op()
    return (time.perf_counter_ns() - t0) / number


def calibrate(op: Op, batch_ns: float, max_number: int = 1 << 20) -> int:
    """Calls per batch so that one batch lasts about ``batch_ns``, after a
    warm-up: the first calls fault in the pages of fresh mappings (both slots
    of a segment), fill caches and resolve lazy imports, and must not make
    the batches too short."""
    for _ in range(3):
        op()
    number = 1
    while True:
        per_call = _batch(op, number)
        if per_call * number >= batch_ns / 4 or number >= max_number:
            break
        number *= 4
    per_call = min(per_call, _batch(op, number))
    return max(1, min(max_number, int(batch_ns / max(per_call, 1.0))))


def interleaved(
    ops: Dict[str, Op], batch_ns: float, repeats: int, max_number: int = 1 << 20
) -> Dict[str, Dict[str, float]]:
    """Time each op ``repeats`` batches, contenders taking turns."""
    numbers = {label: calibrate(op, batch_ns, max_number) for label, op in ops.items()}
    samples: Dict[str, List[float]] = {label: [] for label in ops}
    labels = list(ops)
    for r in range(repeats):
        k = r % len(labels)
        for label in labels[k:] + labels[:k]:
            samples[label].append(_batch(ops[label], numbers[label]))
    out = {}
    for label, s in samples.items():
        out[label] = summarize(s)
        out[label]["calls_per_batch"] = numbers[label]
    return out


def timed_calls(fn: Callable[[], object], count: int) -> List[float]:
    """Nanoseconds of each of ``count`` single calls (for operations that
    take microseconds or more, where one clock read per call is noise)."""
    out = []
    clock = time.perf_counter_ns
    for _ in range(count):
        t0 = clock()
        fn()
        out.append(float(clock() - t0))
    return out

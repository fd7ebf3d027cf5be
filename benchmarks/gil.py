"""Where releasing the GIL pays for a copy.

The C-API binding copies with the GIL held below
``fastshm._cext.GIL_RELEASE_BYTES`` and lets it go from there up; cffi lets
it go around every call.  Releasing lets another Python thread run during
the copy, but the copying thread must then take the GIL back from a thread
that holds it, which can cost it up to a switch interval.

For each size, one thread stores and loads (``store`` + ``load_into``) in a
loop while a second Python thread runs a counting loop, for a fixed time:

- ``copy`` is the time per store+load_into pair with the counter running,
  beside ``alone`` (the same without it);
- ``counter`` is the other thread's progress, as a share of what it counts
  alone in the same time;
- ``combined`` adds the two shares (the copy rate with / alone, plus the
  counter's): 1.0 is what taking turns on one GIL gives, up to 2.0 when the
  copy and the counter run on two cores at once.

The routes: ``native`` (the default binding: the C-API one on CPython),
``native-cffi`` (releases always) and ``memcpy`` (two memoryview slice
copies, which hold the GIL always).
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

from fastshm import Segment

from .inproc import native_labels
from .names import Names
from .timing import Progress

KIB, MIB = 1024, 1024 * 1024


def gil_release_bytes() -> Optional[int]:
    try:
        from fastshm import _cext

        return int(_cext.GIL_RELEASE_BYTES)
    except Exception:
        return None


class _Counter(threading.Thread):
    """A Python thread counting in a loop until stopped: the other thread
    whose progress releasing the GIL is for."""

    def __init__(self) -> None:
        super().__init__()
        self.stop = False
        self.n = 0

    def run(self) -> None:
        k = 0
        while not self.stop:
            k += 1
        self.n = k


def _count_alone(seconds: float) -> float:
    t = _Counter()
    t0 = time.perf_counter()
    t.start()
    time.sleep(seconds)
    t.stop = True
    t.join()
    return t.n / (time.perf_counter() - t0)


def _run(op: Callable[[], object], seconds: float, with_counter: bool) -> Tuple[float, float]:
    """(ns per op, counts per second of the other thread) over ``seconds``."""
    t = _Counter() if with_counter else None
    for _ in range(3):
        op()
    t0 = time.perf_counter()
    if t is not None:
        t.start()
    ops = 0
    end = t0 + seconds
    clock = time.perf_counter
    while True:
        op()
        op()
        ops += 2
        if clock() >= end:
            break
    elapsed = clock() - t0
    if t is None:
        return elapsed * 1e9 / ops, 0.0
    t.stop = True
    t.join()
    return elapsed * 1e9 / ops, t.n / elapsed


def gil(
    names: Names, sizes: List[int], seconds: float, repeats: int, progress: Progress
) -> List[Dict[str, Any]]:
    progress.step(f"GIL: store+load_into beside a counting thread, {len(sizes)} sizes")
    rows = []
    threshold = gil_release_bytes()
    routes = native_labels()
    for size in sizes:
        data = os.urandom(size)
        dst = bytearray(size)
        segs = []
        ops: Dict[str, Tuple[Callable[[], object], str]] = {}
        try:
            for label, backend in routes:
                seg = Segment(names.new("gil"), size, create=True, backend=backend)
                segs.append(seg)
                seg.store(data)

                def pair(s: Any = seg, d: bytes = data, t: bytearray = dst) -> None:
                    s.store(d)
                    s.load_into(t)

                if label == "native" and threshold is not None:
                    how = "released" if size >= threshold else "held"
                else:
                    how = "released"  # cffi lets the GIL go around every call
                ops[label] = (pair, how)
            src, a, b = memoryview(data), memoryview(bytearray(size)), memoryview(dst)

            def two_copies(a: memoryview = a, b: memoryview = b, src: memoryview = src) -> None:
                a[:] = src
                b[:] = a

            ops["memcpy"] = (two_copies, "held")
            res: Dict[str, Dict[str, List[float]]] = {
                k: {"alone": [], "with": [], "counter": []} for k in ops
            }
            solos: List[float] = []
            labels = list(ops)
            for r in range(repeats):
                # The counter alone, in each repetition: the machine's other
                # work moves it as much as it moves the rest.
                solos.append(_count_alone(seconds / 2))
                k = r % len(labels)
                for label in labels[k:] + labels[:k]:
                    op = ops[label][0]
                    alone, _ = _run(op, seconds / 2, False)
                    with_ns, count = _run(op, seconds, True)
                    res[label]["alone"].append(alone)
                    res[label]["with"].append(with_ns)
                    res[label]["counter"].append(count)
            solo = sorted(solos)[len(solos) // 2]
            for label, r in res.items():
                med = {k: sorted(v)[len(v) // 2] for k, v in r.items()}
                counter_share = med["counter"] / solo
                rows.append(
                    {
                        "case": "gil",
                        "op": "store+load_into",
                        "contender": label,
                        "size": size,
                        "gil": ops[label][1],
                        "alone_ns": med["alone"],
                        "median_ns": med["with"],
                        "counter_share": counter_share,
                        "combined": med["alone"] / med["with"] + counter_share,
                        "gil_release_bytes": threshold,
                    }
                )
        finally:
            for seg in segs:
                seg.delete()
    return rows

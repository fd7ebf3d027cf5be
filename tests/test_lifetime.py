"""Views that outlive their object: reading and writing through them after
close() and garbage collection must never crash the interpreter.

Each case runs in a child process, so a segfault fails the test (a negative
return code) instead of taking the test run down with it."""

from __future__ import annotations

import pytest
from conftest import run_python

import fastshm

SEGMENT_VIEWS = r"""
import gc, sys
import fastshm

name, backend = sys.argv[1:3]
seg = fastshm.Segment(name, 4096, create=True, backend=backend)
seg.store(b"A" * 4000)
view = seg.view()
part = view[100:200]
seg.close()
# The name goes too, and every reference to the object: only the views remain.
fastshm.Segment(name, create=False, backend=backend).delete()
del seg
gc.collect()
assert bytes(part) == b"A" * 100
assert bytes(view[:4]) == b"AAAA" and len(view) == 4000
print("ok")
"""

SHARED_MEMORY_VIEWS = r"""
import gc, sys
import fastshm

name, backend = sys.argv[1:3]
sm = fastshm.SharedMemory(name, create=True, size=1 << 16, backend=backend)
head = sm.buf[:16]
tail = sm.buf[-16:]
sm.close()
sm.unlink()
del sm
gc.collect()
head[:5] = b"write"
tail[-4:] = b"tail"
assert bytes(head[:5]) == b"write" and bytes(tail[-4:]) == b"tail"
print("ok")
"""

NUMPY_VIEWS = r"""
import gc, sys
import numpy as np
import fastshm

name, backend = sys.argv[1:3]
seg = fastshm.Segment(name, 4096, create=True, backend=backend)
seg.store(np.arange(1000, dtype=np.int32))
readable = np.frombuffer(seg.view(), dtype=np.int32)
sm = fastshm.SharedMemory(name, backend=backend)
whole = np.frombuffer(sm.buf, dtype=np.uint8)
payload = np.frombuffer(sm.buf[128 + 64 + 4096 + 64:], dtype=np.int32)[:1000]
seg.close()
sm.close()  # numpy holds an export of buf: close must not fail nor unmap
seg.unlink()
del seg, sm
gc.collect()
assert readable.tolist() == list(range(1000))
payload[:] = 7
assert readable.tolist() == [7] * 1000
whole[:4] = 0
assert whole[:4].tolist() == [0, 0, 0, 0]
del whole, payload
gc.collect()
assert readable.sum() == 7000
print("ok")
"""


def run_child(code: str, name: str, backend: str) -> None:
    proc = run_python(code, name, backend, timeout=60, check=False)
    err = proc.stderr.decode(errors="replace")
    # Exactly 0: a negative code means a signal (SIGSEGV, SIGBUS) killed it.
    assert proc.returncode == 0, f"child exited with {proc.returncode}: {err}"
    assert proc.stdout.decode().strip() == "ok", err


def test_segment_views_outlive_segment(backend: str, name: str) -> None:
    run_child(SEGMENT_VIEWS, name, backend)


def test_shared_memory_views_outlive_object(backend: str, name: str) -> None:
    run_child(SHARED_MEMORY_VIEWS, name, backend)


def test_numpy_arrays_outlive_objects(backend: str, name: str) -> None:
    pytest.importorskip("numpy")
    run_child(NUMPY_VIEWS, name, backend)


def test_views_outlive_object_in_process(backend: str, name: str) -> None:
    """The same in this process, where a crash would be noticed by everyone."""
    import gc

    seg = fastshm.Segment(name, 64, create=True, backend=backend)
    seg.store(b"survivor")
    view = seg.view()
    seg.close()
    del seg
    gc.collect()
    assert bytes(view) == b"survivor"
    with fastshm.Segment(name, create=False, backend=backend) as again:
        again.store(b"one")
        again.store(b"two")
        # The old view is still over the live shared mapping.
        assert bytes(view[:3]) == b"two"

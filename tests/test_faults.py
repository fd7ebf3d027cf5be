"""Faults: a writer killed with SIGKILL in the middle of its stores, and
calls with bad input, must cost nothing that was published.

The killed-writer test kills 20 writers per backend in the quick form and
200 with ``FASTSHM_LONG=1``.
"""

from __future__ import annotations

import os
import random
import select
import signal
import subprocess
import sys
import threading
import time

import pytest
from test_stress import HDR, LONG, TESTS_DIR, check_message, make_message, report

import fastshm

KILLS = 200 if LONG else 20
BIG = 4 * 1024 * 1024


def killed_writer_main(name: str, backend: str) -> None:
    """Store large self-checking messages until killed; says "ready" once
    the first is published."""
    seg = fastshm.Segment(name, create=False, backend=backend)
    cap = seg.capacity
    pool = os.urandom(2 * cap)
    rnd = random.Random(os.getpid())
    msgs = [
        make_message(i, os.getpid(), rnd.randint(cap // 2, cap), pool, rnd.randrange(cap))
        for i in range(3)
    ]
    seg.store(msgs[0])
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    i = 1
    while True:
        seg.store(msgs[i % 3])
        i += 1


def _spawn_writer(name: str, backend: str) -> subprocess.Popen:
    code = (
        f"import sys; sys.path.insert(0, {TESTS_DIR!r}); import test_faults as t; "
        f"t.killed_writer_main({name!r}, {backend!r})"
    )
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)


def _wait_ready(p: subprocess.Popen, timeout: float) -> None:
    ready, _, _ = select.select([p.stdout], [], [], timeout)
    assert ready, "writer did not start in time"
    line = p.stdout.readline()  # type: ignore[union-attr]
    assert line == b"ready\n", f"writer said {line!r}: {p.stderr.read()!r}"  # type: ignore[union-attr]


def _store_bounded(seg: fastshm.Segment, data: bytes, timeout: float) -> int:
    """seg.store(data) on a thread that must finish within ``timeout``: a
    lock left by a dead writer has to be taken over, not waited on."""
    box: list[object] = []

    def run() -> None:
        try:
            box.append(seg.store(data))
        except BaseException as e:  # noqa: BLE001 -- reported below, in the test's thread
            box.append(e)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(timeout)
    assert not t.is_alive(), f"store did not finish within {timeout} s: lock not taken over"
    assert box and isinstance(box[0], int), f"store failed: {box!r}"
    return box[0]


def test_killed_writer(backend: str, name: str) -> None:
    seg = fastshm.Segment(name, BIG, create=True, backend=backend)
    pool = os.urandom(2 * BIG)
    rnd = random.Random()
    held = 0
    stores_seen = 0
    try:
        for kill in range(KILLS):
            p = _spawn_writer(name, backend)
            try:
                _wait_ready(p, 30)
                before = seg.seq
                time.sleep(rnd.uniform(0, 0.03))
                p.send_signal(signal.SIGKILL)
                p.wait(timeout=10)
            finally:
                if p.poll() is None:
                    p.kill()
                    p.wait()
                p.stdout.close()  # type: ignore[union-attr]
                p.stderr.close()  # type: ignore[union-attr]
            assert p.returncode == -signal.SIGKILL
            stores_seen += seg.seq - before
            # Was the writer inside a store, holding the lock, when it died?
            owner = seg._lock_owner()
            if owner & 0xFFFFFFFF == p.pid:
                held += 1
            else:
                assert owner == 0, f"lock word {owner:#x} names neither the dead writer nor 0"
            # The last published message is complete ...
            data = seg.load()
            assert seg.last_seq == seg.seq, "load() did not return the current message"
            _, writer = check_message(data)
            assert writer in (p.pid, 0)
            # ... and a new writer gets the lock at once.
            marker = make_message(kill, 0, rnd.randint(HDR.size, 4096), pool, 0)
            seq = _store_bounded(seg, marker, timeout=1.0)
            assert seg._lock_owner() == 0
            assert seg.load() == marker and seg.last_seq == seq
    finally:
        seg.close()
    report(f"killed writer {backend}", kills=KILLS, held_lock_at_kill=held,
           takeovers=held, writer_stores=stores_seen, capacity=BIG)
    # Large messages make a kill inside a store likely: the dead-owner
    # takeover must really have been exercised, not just the easy path.
    assert held >= 1, "no kill landed inside a store; the takeover path went untested"


# ---- nothing lost on bad input ----


def _state(seg: fastshm.Segment) -> tuple:
    return seg.seq, seg.load(), len(seg)


def test_rejected_calls_change_nothing(backend: str, name: str) -> None:
    with fastshm.Segment(name, 64, create=True, backend=backend) as seg:
        seg.store(b"the message that must survive")
        before = _state(seg)
        with pytest.raises(ValueError):
            seg.store(b"x" * 65)
        with pytest.raises(ValueError):
            seg.store(bytearray(1000))
        with pytest.raises(TypeError):
            seg.store(12345)  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            seg.store(None)  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            seg.store([1, 2, 3])  # type: ignore[arg-type]
        with pytest.raises(ValueError):
            seg.store(memoryview(bytearray(20))[::2])  # not contiguous
        with pytest.raises(ValueError):
            seg.store("é" * 40)  # 80 bytes once encoded
        assert _state(seg) == before

        small = bytearray(b"\xaa" * 10)
        with pytest.raises(ValueError):
            seg.load_into(small)
        assert small == bytearray(b"\xaa" * 10), "a too-small buffer was written to"
        with pytest.raises(TypeError):
            seg.load_into(b"read-only bytes object, large enough for it")
        with pytest.raises(TypeError):
            seg.load_into(12)
        with pytest.raises(ValueError):
            seg.wait(-1)
        with pytest.raises(TypeError):
            seg.wait("1")  # type: ignore[arg-type]
        with pytest.raises(ValueError):
            seg.wait(0, after=-1)
        assert _state(seg) == before


def test_rejected_store_from_other_process_changes_nothing(
    backend: str, other_backend: str, name: str
) -> None:
    """The reader in this process sees the same message and number after
    another process's over-capacity store was refused."""
    from conftest import run_python

    with fastshm.Segment(name, 100, create=True, backend=backend) as seg:
        seg.store(b"kept")
        code = (
            "import sys, fastshm\n"
            "s = fastshm.Segment(sys.argv[1], create=False, backend=sys.argv[2])\n"
            "try:\n    s.store(b'y' * 101)\nexcept ValueError:\n    print('refused')\n"
        )
        out = run_python(code, name, other_backend, timeout=30).stdout
        assert out.strip() == b"refused"
        assert seg.seq == 1 and seg.load() == b"kept"

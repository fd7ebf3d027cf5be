"""Stress: one writer and three readers, and four writers and two readers,
in separate processes, loading and checking every message they see.

Each message carries its own number, its writer and a CRC-32 of its payload,
so a reader can tell a torn or out-of-order message from a good one.  The
quick form runs a few seconds per case; ``FASTSHM_LONG=1`` runs a minute.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import struct
import subprocess
import sys
import time
import zlib

import pytest
from conftest import BACKENDS

import fastshm
from fastshm import _backend

LONG = os.environ.get("FASTSHM_LONG") == "1"
TESTS_DIR = os.path.dirname(os.path.abspath(__file__))

# counter (the segment's seq for one writer; a per-writer count for many),
# writer id, total length, CRC-32 of the payload after this header.
HDR = struct.Struct("<QIII")


# ---- the self-checking message format (also used by test_faults) ----


def tiny_message(seq: int, n: int) -> bytes:
    """A message too short for a header: its bytes follow from its number."""
    return hashlib.blake2b(struct.pack("<QQ", seq, n), digest_size=64).digest()[:n]


def make_message(counter: int, writer: int, n: int, pool: bytes, offset: int) -> bytes:
    """``n`` bytes (n >= HDR.size): the header, then random payload from ``pool``."""
    payload = pool[offset : offset + n - HDR.size]
    return HDR.pack(counter, writer, n, zlib.crc32(payload)) + payload


def check_message(data: bytes) -> tuple[int, int]:
    """(counter, writer) of a complete message; AssertionError if torn."""
    assert len(data) >= HDR.size, f"message of {len(data)} bytes has no header"
    counter, writer, n, crc = HDR.unpack_from(data)
    assert n == len(data), f"length field {n} != loaded length {len(data)}"
    assert zlib.crc32(memoryview(data)[HDR.size :]) == crc, "payload checksum mismatch"
    return counter, writer


def _result(**kw: object) -> None:
    sys.stdout.write(json.dumps(kw) + "\n")
    sys.stdout.flush()


# ---- child process entry points (run through `python -c`) ----


def torn_writer(name: str, backend: str, seconds: float, seed: int) -> None:
    """The only writer: messages of random length 1..capacity whose header
    counter is the seq the store publishes them under."""
    seg = fastshm.Segment(name, create=False, backend=backend)
    cap = seg.capacity
    rnd = random.Random(seed)
    pool = os.urandom(2 * cap)
    stores = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        nxt = seg.seq + 1
        if rnd.random() < 0.1:
            msg = tiny_message(nxt, rnd.randint(1, HDR.size - 1))
        else:
            n = rnd.randint(HDR.size, cap)
            msg = make_message(nxt, 0, n, pool, rnd.randrange(cap))
        got = seg.store(msg)
        assert got == nxt, f"store published #{got}, expected #{nxt}"
        stores += 1
    _result(stores=stores)


def torn_reader(name: str, backend: str, seconds: float) -> None:
    """Load until the deadline; every message must match the number it was
    loaded under, and numbers never go backwards."""
    seg = fastshm.Segment(name, create=False, backend=backend)
    buf = bytearray(seg.capacity)
    loads = distinct = 0
    prev = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if loads & 1:
            n = seg.load_into(buf)
            data = bytes(buf[:n])
        else:
            data = seg.load()
        seq = seg.last_seq
        loads += 1
        assert seq >= prev, f"seq went backwards: #{seq} after #{prev}"
        if seq == 0:
            assert data == b""
            continue
        if seq > prev:
            distinct += 1
        prev = seq
        assert len(data) >= 1
        if len(data) < HDR.size:
            assert data == tiny_message(seq, len(data)), f"torn short message #{seq}"
        else:
            counter, _ = check_message(data)
            assert counter == seq, f"message #{counter} loaded as #{seq}"
    _result(loads=loads, distinct=distinct, torn=0)


def many_writer(name: str, backend: str, seconds: float, writer: int) -> None:
    seg = fastshm.Segment(name, create=False, backend=backend)
    cap = seg.capacity
    rnd = random.Random(writer)
    pool = os.urandom(2 * cap)
    counter = 0
    last = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        counter += 1
        msg = make_message(counter, writer, rnd.randint(HDR.size, cap), pool, rnd.randrange(cap))
        seq = seg.store(msg)
        assert seq > last, f"writer {writer}: store #{seq} after #{last}"
        last = seq
    _result(stores=counter)


def many_reader(name: str, backend: str, seconds: float) -> None:
    """Every message is one writer's complete message, and a newer message
    of a writer always has a higher counter than an older one."""
    seg = fastshm.Segment(name, create=False, backend=backend)
    last_counter: dict[int, int] = {}
    last_seq_of: dict[int, int] = {}
    prev_seq = 0
    prev_data = b""
    loads = distinct = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        data = seg.load()
        seq = seg.last_seq
        loads += 1
        assert seq >= prev_seq, f"seq went backwards: #{seq} after #{prev_seq}"
        if seq == 0:
            continue
        if seq == prev_seq:
            assert data == prev_data, f"message #{seq} changed between two loads"
            continue
        distinct += 1
        counter, writer = check_message(data)
        if writer in last_seq_of:
            assert counter > last_counter[writer], (
                f"writer {writer}: counter {counter} at #{seq} not after "
                f"{last_counter[writer]} at #{last_seq_of[writer]}"
            )
        last_counter[writer] = counter
        last_seq_of[writer] = seq
        prev_seq, prev_data = seq, data
    _result(loads=loads, distinct=distinct, writers_seen=len(last_counter), torn=0)


# ---- driving the children ----


def spawn(func: str, *args: object) -> subprocess.Popen:
    code = (
        f"import sys; sys.path.insert(0, {TESTS_DIR!r}); import test_stress as t; "
        f"t.{func}(*{args!r})"
    )
    return subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )


def collect(procs: list[subprocess.Popen], timeout: float) -> list[dict]:
    """Every child's result line; kills them all if one is late."""
    deadline = time.monotonic() + timeout
    results: list[dict] = []
    failures: list[str] = []
    try:
        for p in procs:
            out, err = p.communicate(timeout=max(0.1, deadline - time.monotonic()))
            if p.returncode != 0:
                failures.append(f"exit {p.returncode}: {err.decode(errors='replace')}")
            else:
                results.append(json.loads(out.decode().strip().splitlines()[-1]))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert not failures, "\n".join(failures)
    return results


def report(label: str, **numbers: object) -> None:
    # Shown with `pytest -n 0 -s` (or -rA); the README's figures come from here.
    print(f"\n[stress] {label}: " + ", ".join(f"{k}={v}" for k, v in numbers.items()))


SECONDS = 60.0 if LONG else 3.0
MIXES = [(b, b) for b in BACKENDS] + (
    [("native", "python"), ("python", "native")] if len(BACKENDS) == 2 else []
)


@pytest.mark.parametrize("writer_backend,reader_backend", MIXES)
def test_no_torn_reads(writer_backend: str, reader_backend: str, name: str) -> None:
    fastshm.Segment(name, 64 * 1024, create=True, backend=writer_backend).close()
    seed = random.randrange(1 << 30)
    procs = [spawn("torn_writer", name, writer_backend, SECONDS, seed)]
    procs += [spawn("torn_reader", name, reader_backend, SECONDS) for _ in range(3)]
    results = collect(procs, timeout=SECONDS + 60)
    writer, readers = results[0], results[1:]
    loads = sum(r["loads"] for r in readers)
    distinct = sum(r["distinct"] for r in readers)
    report(
        f"torn reads {writer_backend}->{reader_backend}",
        seconds=SECONDS, stores=writer["stores"], loads_checked=loads,
        distinct_checked=distinct, torn=0, seed=seed,
    )
    # The run proves something only if the readers really raced the writer.
    assert writer["stores"] > 100
    assert all(r["distinct"] > 10 for r in readers)


@pytest.mark.parametrize("backend_", BACKENDS)
def test_many_writers(backend_: str, name: str) -> None:
    if not {"atomic_lock", "file_lock"} & _backend.resolve(backend_).features:
        pytest.skip(f"the {backend_} backend has no writer lock on this platform")
    fastshm.Segment(name, 16 * 1024, create=True, backend=backend_).close()
    procs = [spawn("many_writer", name, backend_, SECONDS, w) for w in range(1, 5)]
    procs += [spawn("many_reader", name, backend_, SECONDS) for _ in range(2)]
    results = collect(procs, timeout=SECONDS + 60)
    writers, readers = results[:4], results[4:]
    stores = sum(w["stores"] for w in writers)
    seg = fastshm.Segment(name, create=False, backend=backend_)
    try:
        # The lock serialised every store: the counter is their exact sum.
        assert seg.seq == stores
        assert seg._lock_owner() == 0, "lock word left held after every writer exited"
        check_message(seg.load())
    finally:
        seg.close()
    report(
        f"many writers {backend_}",
        seconds=SECONDS, writers=4, stores=stores,
        loads_checked=sum(r["loads"] for r in readers),
        distinct_checked=sum(r["distinct"] for r in readers), torn=0,
    )
    assert all(w["stores"] > 10 for w in writers)
    assert all(r["distinct"] > 10 for r in readers)
    # Each reader saw messages of more than one writer, so stores interleaved.
    assert all(r["writers_seen"] >= 2 for r in readers)

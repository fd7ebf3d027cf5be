"""Hardening: interrupted and re-entrant stores, starving loads, squatted
names, read-only opens, slow and dead creators, huge and integer-like
sizes, one exception per condition, descriptors, weakly ordered CPUs.

Every concurrency claim is shown with real processes, bounded by timeouts.
"""

from __future__ import annotations

import fcntl
import gc
import json
import os
import pickle
import random
import select
import signal
import struct
import subprocess
import sys
import threading
import time
from typing import Any, Callable

import pytest
from conftest import BACKENDS, PREFIX, SHM_DIR, backend_name, run_python
from test_faults import _store_bounded
from test_stress import TESTS_DIR, check_message, make_message

import fastshm
from fastshm import _common as C
from fastshm import _pure, _pure_lock, _pure_open, _pure_segment

posix_only = pytest.mark.skipif(not os.path.isdir(SHM_DIR), reason="needs /dev/shm")
needs_root = pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() != 0,
    reason="needs root, to run child processes as other users",
)
pytestmark = posix_only


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def settled_fds() -> int:
    """Open descriptors once garbage (and its finalizers) is gone; PyPy
    needs more than one collection for that."""
    for _ in range(4):
        gc.collect()
    return open_fds()


def raw_bytes(name: str) -> bytes:
    with fastshm.SharedMemory(name, backend="python") as raw:
        assert raw.buf is not None
        return bytes(raw.buf)


def exists(name: str) -> bool:
    return os.path.exists(os.path.join(SHM_DIR, name))


# ---- children: started with `python -c`, driven through stdin/stdout ----


def _child(func: str, *args: object) -> subprocess.Popen:
    code = (
        f"import sys; sys.path.insert(0, {TESTS_DIR!r}); import test_hardening as t; "
        f"t.{func}(*{args!r})"
    )
    # Unbuffered: a buffered readline could swallow the next line, which
    # select() would then not report.
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, bufsize=0)


def _line(p: subprocess.Popen, timeout: float) -> str:
    """The child's next line, or an AssertionError when none comes in time."""
    ready, _, _ = select.select([p.stdout], [], [], timeout)
    if not ready:
        p.kill()
        _, err = p.communicate()
        raise AssertionError(f"no word from the child within {timeout} s: {err!r}")
    line = p.stdout.readline().decode()  # type: ignore[union-attr]
    if not line:
        p.wait(timeout=10)
        raise AssertionError(f"child ended (exit {p.returncode}): {p.stderr.read()!r}")  # type: ignore[union-attr]
    return line.strip()


def _finish(p: subprocess.Popen) -> None:
    if p.poll() is None:
        p.kill()
    p.wait(timeout=10)
    p.stdout.close()  # type: ignore[union-attr]
    p.stderr.close()  # type: ignore[union-attr]


def _messages(cap: int, count: int, seed: int) -> list[bytes]:
    rnd = random.Random(seed)
    pool = os.urandom(2 * cap)
    return [
        make_message(i, seed, rnd.randint(cap // 2, cap), pool, rnd.randrange(cap))
        for i in range(count)
    ]


# ---- 1. Ctrl-C at any instant of store() ----


def sigint_storer_main(name: str, backend: str, ctl_name: str) -> None:
    """Store in a loop while SIGINTs raise KeyboardInterrupt inside the
    stores (and are only counted elsewhere); then store once more, and idle."""
    seg = fastshm.Segment(name, create=False, backend=backend)
    ctl = fastshm.Segment(ctl_name, create=False, backend="python")
    msgs = _messages(seg.capacity, 3, os.getpid())
    state = {"inside": False, "outside": 0}

    def on_sigint(signum: int, frame: Any) -> None:
        if state["inside"]:
            # One KeyboardInterrupt per store: a second signal while the first
            # is being caught would end this loop, not test the store.
            state["inside"] = False
            raise KeyboardInterrupt
        state["outside"] += 1

    signal.signal(signal.SIGINT, on_sigint)
    print("ready", flush=True)
    stores = interrupted = i = 0
    while ctl.seq == 0:
        try:
            state["inside"] = True
            seg.store(msgs[i % 3])
            state["inside"] = False
            stores += 1
        except KeyboardInterrupt:
            state["inside"] = False
            interrupted += 1
        i += 1
    print(json.dumps({"stores": stores, "interrupted": interrupted}), flush=True)
    seg.store(b"after the storm")  # hangs if an interrupted store kept the lock
    print("stored", flush=True)
    while ctl.seq < 2:  # idle, alive, while the test process stores
        time.sleep(0.005)
    print("bye", flush=True)


@pytest.mark.parametrize("backend", BACKENDS)
def test_ctrl_c_inside_store_releases_the_lock(backend: str, shm_name: Callable[..., str]
                                                ) -> None:
    name, ctl_name = shm_name(), shm_name("ctl")
    seg = fastshm.Segment(name, 256 * 1024, create=True, backend=backend)
    ctl = fastshm.Segment(ctl_name, 64, create=True, backend="python")
    p = _child("sigint_storer_main", name, backend, ctl_name)
    try:
        assert _line(p, 30) == "ready"
        rnd = random.Random()
        for _ in range(400):
            time.sleep(rnd.uniform(0, 0.004))
            assert p.poll() is None, f"the storer died: {p.stderr.read()!r}"  # type: ignore[union-attr]
            p.send_signal(signal.SIGINT)
        ctl.store(b"stop")
        counts = json.loads(_line(p, 30))
        assert counts["interrupted"] >= 1, counts
        assert _line(p, 10) == "stored", "the storer's next store did not finish"
        # Another process stores while the storer is alive and idle.
        data = make_message(1, 0, 1000, os.urandom(2000), 0)
        seq = _store_bounded(seg, data, timeout=5.0)
        assert seg.load() == data and seg.last_seq == seq
        assert seg._lock_owner() == 0
        ctl.store(b"exit")
        assert _line(p, 10) == "bye"
    finally:
        _finish(p)
        seg.close()
        ctl.close()


# ---- 2. a signal handler that stores while the main code is storing ----


def handler_storer_main(name: str, backend: str, seconds: float, own_handle: bool) -> None:
    """Main code stores and loads; a 0.5 ms timer's handler stores too,
    through the same Segment or (own_handle) through a second one."""
    main = fastshm.Segment(name, create=False, backend=backend)
    seg = fastshm.Segment(name, create=False, backend=backend) if own_handle else main
    main_msgs = _messages(seg.capacity, 3, 1)
    handler_msgs = _messages(seg.capacity, 3, 2)
    state = {"busy": False, "ok": 0, "refused": 0}

    def on_alarm(signum: int, frame: Any) -> None:
        if state["busy"]:  # a nested run of this handler
            return
        state["busy"] = True
        try:
            try:
                seg.store(handler_msgs[state["ok"] % 3])
                state["ok"] += 1
            except RuntimeError as e:
                assert "called from a signal handler while this thread is inside" in str(e), e
                state["refused"] += 1
        finally:
            state["busy"] = False

    signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, 0.0005, 0.0005)
    stores = loads = i = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        main.store(main_msgs[i % 3])
        stores += 1
        check_message(main.load())
        loads += 1
        i += 1
    signal.setitimer(signal.ITIMER_REAL, 0)
    signal.signal(signal.SIGALRM, signal.SIG_IGN)
    counter, writer = check_message(seg.load())
    assert writer in (1, 2)
    print(json.dumps({"stores": stores, "loads": loads, "handler_ok": state["ok"],
                      "handler_refused": state["refused"]}), flush=True)


@pytest.mark.parametrize("own_handle", [False, True], ids=["same_handle", "own_handle"])
def test_store_from_signal_handler(backend: str, name: str, own_handle: bool) -> None:
    with fastshm.Segment(name, 256 * 1024, create=True, backend=backend) as seg:
        p = _child("handler_storer_main", name, backend, 2.0, own_handle)
        try:
            out = json.loads(_line(p, 60))
            p.wait(timeout=10)
            assert p.returncode == 0, p.stderr.read()  # type: ignore[union-attr]
        finally:
            _finish(p)
        assert out["handler_ok"] + out["handler_refused"] >= 1, out
        if backend == "python":
            # The timer did fire inside stores: the refusal was exercised.
            assert out["handler_refused"] >= 1, out
        else:
            assert out["handler_refused"] == 0, out
        check_message(seg.load())


def test_stale_busy_marker_is_ignored(name: str) -> None:
    """A store interrupted before it could clear its marker leaves a frame
    that is no longer running: later stores go ahead."""
    with fastshm.Segment(name, 64, create=True, backend="python") as seg:
        seg.store(b"one")
        h = seg._h
        t = h._tls.t

        def finished() -> Any:
            return sys._getframe()

        t.busy[h._key] = finished()
        assert seg.store(b"two") == 2
        assert seg.load() == b"two"


# ---- 3. a load ends, whatever the writers do ----

BIG = 4 * 1024 * 1024
LOADS = 100


def fast_producer_main(name: str, backend: str) -> None:
    seg = fastshm.Segment(name, create=False, backend=backend)
    msgs = _messages(seg.capacity, 3, 7)
    seg.store(msgs[0])
    print("ready", flush=True)
    i = 1
    while True:
        seg.store(msgs[i % 3])
        i += 1


def starving_consumer_main(name: str, loads: int) -> None:
    """Checked loads and load_intos; reports the most seqlock attempts
    (reads of the current slot) that one of them took."""
    seg = fastshm.Segment(name, create=False, backend="python")
    attempts = [0]
    begin = _pure.SegmentHandle._begin

    def counting_begin(self: Any) -> Any:
        attempts[0] += 1
        return begin(self)

    _pure.SegmentHandle._begin = counting_begin  # type: ignore[method-assign]
    buf = bytearray(seg.capacity)
    most = total = 0
    for i in range(loads):
        attempts[0] = 0
        if i & 1:
            n = seg.load_into(buf)
            check_message(bytes(buf[:n]))
        else:
            check_message(seg.load())
        most = max(most, attempts[0])
        total += attempts[0]
    print(json.dumps({"loads": loads, "most_attempts": most, "attempts": total}), flush=True)


@pytest.mark.parametrize("producer", BACKENDS)
def test_loads_end_against_a_fast_producer(producer: str, name: str) -> None:
    """The consumer is stopped and continued all the time, as on a loaded
    machine that preempts it: nearly every copy then spans two stores.  It
    must still finish its loads, each a complete message."""
    seg = fastshm.Segment(name, BIG, create=True, backend=producer)
    prod = _child("fast_producer_main", name, producer)
    cons = None
    try:
        assert _line(prod, 30) == "ready"
        cons = _child("starving_consumer_main", name, LOADS)
        deadline = time.monotonic() + 60
        out = None
        while out is None:
            assert time.monotonic() < deadline, "the consumer's loads did not end"
            ready, _, _ = select.select([cons.stdout], [], [], 0)
            if ready:
                out = json.loads(_line(cons, 10))
                break
            assert cons.poll() is None, cons.stderr.read()  # type: ignore[union-attr]
            os.kill(cons.pid, signal.SIGSTOP)
            time.sleep(0.003)
            os.kill(cons.pid, signal.SIGCONT)
            time.sleep(0.0005)
        assert out["loads"] == LOADS
        if producer == "python":
            # A few lock-free attempts, then one under the writer lock that no
            # writer can spoil: never more, whatever the writers do.  (A native
            # writer can take the word with its CAS between the reader's look
            # and its plain store, so against native writers a locked attempt
            # can still lose, rarely; the loads end all the same.)
            assert out["most_attempts"] <= getattr(_pure, "_LOCKFREE_TRIES", 3) + 1, out
    finally:
        if cons is not None:
            if cons.poll() is None:
                os.kill(cons.pid, signal.SIGCONT)
            _finish(cons)
        _finish(prod)
        seg.close()


# ---- 3b. the slowest load, python against native ----

LARGE = 6 * 1024 * 1024


def flat_out_writer_main(name: str, backend: str) -> None:
    """Stores large messages as fast as it can, until killed."""
    seg = fastshm.Segment(name, create=False, backend=backend)
    msgs = [bytes([i]) * seg.capacity for i in range(3)]
    print("ready", flush=True)
    i = 0
    while True:
        seg.store(msgs[i % 3])
        i += 1


def timed_reader_main(name: str, backend: str, seconds: float) -> None:
    """Loads for ``seconds``; reports the slowest load, how many it made
    and how many stores the writer made meanwhile."""
    seg = fastshm.Segment(name, create=False, backend=backend)
    slowest, loads, first = 0.0, 0, seg.seq
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        start = time.perf_counter()
        msg = seg.load()
        slowest = max(slowest, time.perf_counter() - start)
        assert msg == msg[:1] * len(msg), "a torn message"
        loads += 1
    print(json.dumps({"slowest": slowest, "loads": loads, "stores": seg.seq - first}),
          flush=True)


def _slowest_load(backend: str, name: str, seconds: float) -> "dict[str, float]":
    seg = fastshm.Segment(name, LARGE, create=True, backend=backend)
    writer = _child("flat_out_writer_main", name, backend)
    reader = None
    try:
        assert _line(writer, 30) == "ready"
        reader = _child("timed_reader_main", name, backend, seconds)
        return json.loads(_line(reader, seconds + 30))  # type: ignore[no-any-return]
    finally:
        if reader is not None:
            _finish(reader)
        _finish(writer)
        seg.delete()


@pytest.mark.skipif("native" not in BACKENDS, reason="compares with the native backend")
def test_python_load_keeps_up_with_native(shm_name: Callable[..., str]) -> None:
    """Under a writer storing 6 MiB messages as fast as it can, the python
    backend's slowest load stays near the native backend's, measured in the
    same run (two rounds each, alternating): the python reader, once its
    lock-free copies are spoiled, gets the writer lock in its turn rather
    than whenever the writer happens to let go of its flock.  The target is
    3x (measured: 0.7-2.4x); 5x leaves room for a busy machine that stops
    one reader for a while, far below the 20x a starved reader showed.
    Other work on the machine (the suite's own parallel workers) can stall
    any one round, so a miss is measured again, up to three times: a starved
    reader misses every time."""
    report: "dict[str, list[tuple[float, float, float]]]" = {}
    for _attempt in range(3):
        figures: "dict[str, list[dict[str, float]]]" = {"native": [], "python": []}
        for _ in range(2):
            for backend in ("native", "python"):
                figures[backend].append(_slowest_load(backend, shm_name(), 1.5))
        native = max(r["slowest"] for r in figures["native"])
        python = max(r["slowest"] for r in figures["python"])
        report = {b: [(round(r["slowest"] * 1e3, 1), r["loads"], r["stores"]) for r in rs]
                  for b, rs in figures.items()}
        print(f"[slowest load, ms / loads / stores per round] {report}")
        if python <= 5 * native:
            return
    pytest.fail(
        f"the python backend's slowest load took {python * 1e3:.1f} ms, the native "
        f"backend's {native * 1e3:.1f} ms, in each of three measurements: "
        f"(slowest ms, loads, stores) of the last {report}"
    )


@pytest.mark.skipif("file_lock" not in _pure.features, reason="python writers lock with flock")
def test_python_writer_leaves_the_lock_to_its_turn(name: str) -> None:
    """A process that names itself in lock_next (docs/FORMAT.md) gets the
    lock from a python writer storing back to back within a store or two,
    as from native writers: the writer waits for the turn to be taken before
    it takes the flock again.  Done as a python reader does it: name itself,
    then take the flock as soon as it is free, and the lock word."""
    seg = fastshm.Segment(name, 1 << 20, create=True, backend="python")
    writer = _child("flat_out_writer_main", name, "python")
    me = _pure.self_id()
    fd = os.open(f"{SHM_DIR}/{name}", os.O_RDWR)
    mm = None
    counts = []
    late = 0
    try:
        assert _line(writer, 30) == "ready"
        import mmap

        mm = mmap.mmap(fd, C.HEADER_SIZE)
        for _ in range(60):
            if len(counts) == 20:
                break
            time.sleep(0.005)
            named_at = seg.seq
            mm[C.H_LOCK_NEXT : C.H_LOCK_NEXT + 8] = struct.pack("<Q", me)
            named = time.monotonic()
            deadline = named + 5
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    assert time.monotonic() < deadline, "the writer kept the flock for 5 s"
                    time.sleep(50e-6)
            mm[C.H_LOCK : C.H_LOCK + 8] = struct.pack("<Q", me)
            if time.monotonic() - named < _pure_lock._TURN_MAX_S / 2:
                counts.append(seg.seq - named_at)
            else:
                # This process did not run for long enough that the turn may
                # have lapsed (the writer's patience): the round says nothing.
                late += 1
            mm[C.H_LOCK_NEXT : C.H_LOCK_NEXT + 8] = bytes(8)
            mm[C.H_LOCK : C.H_LOCK + 8] = bytes(8)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        _finish(writer)
        if mm is not None:
            mm.close()
        os.close(fd)
        seg.close()
    # One store may be under way when the turn is named, and one more may
    # have looked at the turn just before; a few more for a machine that
    # slows this process down.  Rounds that took this process half the
    # writer's 10 ms of patience or more are not counted; a writer that
    # ignored the turn fails all the same: its rounds come late, or count
    # many stores.
    print(f"[turn taken from a python writer] stores meanwhile: {counts}, late rounds: {late}")
    assert len(counts) == 20, f"{len(counts)} of {len(counts) + late} rounds took the turn in time"
    assert max(counts) <= 6, f"stores the writer made before the turn was taken: {counts}"


# ---- 4. squatted names, truncated segments ----

AS_USER = r"""
import importlib, os, sys
uid, src, needed, body = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
for mod in needed.split(","):
    if mod:
        importlib.import_module(mod)
os.setgroups([])
os.setgid(uid)
os.setuid(uid)
assert "fastshm" not in sys.modules
sys.path.insert(0, src)
args = sys.argv[5:]
exec(compile(body, "<as user>", "exec"))
"""


def as_user(uid: int, body: str, *args: str) -> list[str]:
    """Run ``body`` (with ``args`` as a list of str) as ``uid``; its output lines."""
    from test_permissions import modules_fastshm_needs

    src = os.path.dirname(os.path.dirname(os.path.abspath(fastshm.__file__)))
    needed = ",".join([modules_fastshm_needs(), "json", "errno"])
    out = run_python(AS_USER, str(uid), src, needed, body, *args, timeout=60).stdout
    return out.decode().split("\n")[:-1]


NOBODY = 65534
VICTIM = 65533  # a second unprivileged uid (it needs no account)

SQUAT = r"""
import fastshm
seg = fastshm.Segment(args[0], 64, create=True, backend="python", mode=0o666)
seg.store(b"squatted")
fastshm.SharedMemory(args[1], create=True, size=64, backend="python", mode=0o666).close()
print("made")
"""

VICTIM_BODY = r"""
import errno, os, fastshm
backend = args[2]
def fds():
    return len(os.listdir("/proc/self/fd"))
for label, open_ in [
    ("attach", lambda **kw: fastshm.Segment(args[0], create=False, backend=backend, **kw)),
    ("open_or_create", lambda **kw: fastshm.Segment(args[0], 64, backend=backend, **kw)),
    ("shared_memory", lambda **kw: fastshm.SharedMemory(args[1], backend=backend, **kw)),
    ("open_or_create_raw",
     lambda **kw: fastshm.SharedMemory.open_or_create(args[1], 64, backend=backend, **kw)),
]:
    before = fds()
    try:
        open_()
    except PermissionError as e:
        ok = e.errno == errno.EPERM and "any_owner=True" in str(e)
        print(label, "refused" if ok else f"wrong error {e!r}", fds() - before)
    else:
        print(label, "attached", fds() - before)
    obj = open_(any_owner=True)
    print(label, "any_owner", "created" if obj.created else "attached")
    obj.close()
"""


@needs_root
def test_squatted_name_is_refused(backend: str, shm_name: Callable[..., str]) -> None:
    seg_name, raw_name = shm_name("squat"), shm_name("squatraw")
    assert as_user(NOBODY, SQUAT, seg_name, raw_name) == ["made"]
    out = as_user(VICTIM, VICTIM_BODY, seg_name, raw_name, backend)
    assert out == [
        "attach refused 0", "attach any_owner attached",
        "open_or_create refused 0", "open_or_create any_owner attached",
        "shared_memory refused 0", "shared_memory any_owner attached",
        "open_or_create_raw refused 0", "open_or_create_raw any_owner attached",
    ]


def test_own_and_root_segments_are_trusted(backend: str, name: str) -> None:
    """What this process (or root) made is attached to without any_owner."""
    with fastshm.Segment(name, 64, create=True, backend=backend, mode=0o666) as a:
        a.store(b"mine")
        with fastshm.Segment(name, create=False, backend=backend) as b:
            assert b.load() == b"mine"


def test_truncated_segment_is_refused(backend: str, name: str) -> None:
    with fastshm.Segment(name, 4096, create=True, backend=backend) as seg:
        seg.store(b"x" * 4096)
    os.truncate(os.path.join(SHM_DIR, name), 1000)  # its header says 8448 bytes
    before = open_fds()
    with pytest.raises(fastshm.FormatError):
        fastshm.Segment(name, create=False, backend=backend)
    with pytest.raises(fastshm.FormatError):
        fastshm.Segment(name, 64, backend=backend)
    assert open_fds() == before


# ---- 5. sizes no mapping can have ----


@pytest.mark.parametrize("size", [2**63, 2**64, sys.maxsize + 1, 2**100])
def test_huge_shared_memory_is_refused_up_front(backend: str, name: str, size: int) -> None:
    entries = set(os.listdir(SHM_DIR))
    before = open_fds()
    with pytest.raises(ValueError, match="too large"):
        fastshm.SharedMemory(name, create=True, size=size, backend=backend)
    with pytest.raises(ValueError, match="too large"):
        fastshm.SharedMemory(create=True, size=size, backend=backend)
    with pytest.raises(ValueError, match="too large"):
        fastshm.SharedMemory.open_or_create(name, size, backend=backend)
    assert open_fds() == before
    assert not exists(name)
    # Nothing new but what other test processes made meanwhile (their names
    # carry their own pid).
    new = {e for e in set(os.listdir(SHM_DIR)) - entries
           if not (e.startswith("fshmtest") and not e.startswith(PREFIX))}
    assert new == set()
    # The name is still free for a sensible size.
    with fastshm.SharedMemory(name, create=True, size=64, backend=backend) as sm:
        assert sm.size == 64


@pytest.mark.parametrize("size", [2**62, 2**63, 2**64])
def test_huge_segment_is_refused_up_front(backend: str, name: str, size: int) -> None:
    before = open_fds()
    with pytest.raises(ValueError, match="too large"):
        fastshm.Segment(name, size, backend=backend)
    assert open_fds() == before
    assert not exists(name)


# ---- 6. read-only opens ----

READER = r"""
import fastshm
backend = args[1]
seg = fastshm.Segment(args[0], create=False, backend=backend)
print("readonly", seg.readonly)
print("load", seg.load().decode(), seg.last_seq)
print("view", bytes(seg.view()).decode())
print("wait", seg.wait(timeout=5, after=0))
try:
    seg.wait(timeout=0.05)
except TimeoutError:
    print("wait timeout")
buf = bytearray(64)
print("load_into", bytes(buf[:seg.load_into(buf)]).decode())
try:
    seg.store(b"no")
except PermissionError as e:
    print("store refused", "read-only" in str(e))
print("load", seg.load().decode(), seg.seq)
seg.close()
raw = fastshm.SharedMemory(args[0], backend=backend)
print("raw", raw.buf.readonly, raw._map.readonly)
raw.close()
"""


@needs_root
def test_read_only_open(backend: str, name: str) -> None:
    with fastshm.Segment(name, 64, create=True, backend=backend, mode=0o644) as seg:
        seg.store(b"for everyone")
        before = raw_bytes(name)
        out = as_user(NOBODY, READER, name, backend)
        assert out == [
            "readonly True", "load for everyone 1", "view for everyone", "wait 1",
            "wait timeout", "load_into for everyone", "store refused True",
            "load for everyone 1", "raw True True",
        ]
        # Nothing shared was written: no waiter count, no lock word.
        assert raw_bytes(name) == before


def test_read_only_store_touches_nothing(name: str) -> None:
    with fastshm.Segment(name, 64, create=True, backend="python") as seg:
        seg.store(b"kept")
        h = seg._h
        h.readonly = True  # as if opened read-only
        with pytest.raises(PermissionError, match="read-only"):
            seg.store(b"no")
        with pytest.raises(PermissionError, match="read-only"):
            h.break_lock(12345)
        assert seg.load() == b"kept" and seg.seq == 1


# ---- 7. a slow creator, and a dead one ----

SLOW_CREATOR = r"""
import mmap, os, struct, sys, time, _posixshmem
sys.path.insert(0, sys.argv[4])
from fastshm import _pure
name, cap, pause = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
stride = 64 + ((cap + 63) & ~63)
size = 128 + 2 * stride
fd = _posixshmem.shm_open("/" + name, os.O_RDWR | os.O_CREAT | os.O_EXCL, mode=0o600)
os.ftruncate(fd, size)
mm = mmap.mmap(fd, size)
mm[64:72] = struct.pack("<Q", _pure.self_id())  # "being created by me", magic still 0
print("ready", flush=True)
time.sleep(pause)  # pre-allocating a large segment
mm[4:16] = struct.pack("<HHQ", 1, 128, cap)
mm[64:72] = bytes(8)
mm[0:4] = struct.pack("<I", 0x4D485346)
print("done", flush=True)
"""


def _creator(name: str, pause: float) -> subprocess.Popen:
    src = os.path.dirname(os.path.dirname(os.path.abspath(fastshm.__file__)))
    return subprocess.Popen(
        [sys.executable, "-c", SLOW_CREATOR, name, "64", str(pause), src],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, bufsize=0,
    )


def test_slow_creator_is_waited_for(backend: str, name: str) -> None:
    p = _creator(name, 2.5)
    try:
        assert _line(p, 30) == "ready"
        with fastshm.Segment(name, create=False, backend=backend) as seg:
            assert seg.capacity == 64 and not seg.created
            seg.store(b"after a slow start")
        assert _line(p, 30) == "done"
    finally:
        _finish(p)


def test_dead_creator_is_refused_at_once(backend: str, name: str,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    # A deadline longer than the bound below: only an opener that sees the
    # creator dead can finish in time.
    monkeypatch.setattr(_pure_open, "_READY_WAIT_S", 3600.0)
    p = _creator(name, 3600)
    try:
        assert _line(p, 30) == "ready"
        p.kill()
        p.wait(timeout=10)
    finally:
        _finish(p)
    box: list[BaseException] = []

    def attach() -> None:
        try:
            fastshm.Segment(name, create=False, backend=backend).close()
        except BaseException as e:  # noqa: BLE001 -- checked in the test's thread
            box.append(e)

    t = threading.Thread(target=attach, daemon=True)
    t.start()
    t.join(20)
    assert not t.is_alive(), "the opener kept waiting for a dead creator"
    assert box and isinstance(box[0], fastshm.FormatError), box


def test_creator_names_itself_while_creating(name: str, monkeypatch: pytest.MonkeyPatch
                                             ) -> None:
    """The protocol, seen from the inside: the lock word holds the creator's
    id while the magic is 0, and is 0 once the magic is there."""
    seen: list[tuple[int, int]] = []
    real = _pure_open._put

    def spy(mm: Any, offset: int, st: Any, value: int) -> None:
        seen.append((struct.unpack_from("<I", mm, 0)[0], struct.unpack_from("<Q", mm, 64)[0]))
        real(mm, offset, st, value)

    # Where _publish (which writes the header) looks it up.
    monkeypatch.setattr(_pure_open, "_put", spy)
    monkeypatch.setattr(_pure_segment, "_put", spy)
    with fastshm.Segment(name, 64, create=True, backend="python") as seg:
        assert seg._lock_owner() == 0
    assert seen[1] == (0, _pure.self_id())  # before the header is written
    assert seen[-1] == (0, 0)  # lock cleared, magic about to be written


# ---- 8. integer-like sizes ----


class Index:
    def __init__(self, value: int) -> None:
        self.value = value

    def __index__(self) -> int:
        return self.value


def _int_likes() -> list[Any]:
    kinds: list[Any] = [pytest.param(Index, id="__index__")]
    try:
        import numpy
    except ImportError:
        kinds.append(pytest.param(None, id="numpy", marks=pytest.mark.skip("needs numpy")))
    else:
        kinds.append(pytest.param(numpy.int64, id="numpy"))
    return kinds


@pytest.mark.parametrize("kind", _int_likes())
def test_integer_like_sizes(backend: str, name: str, kind: Any,
                            request: pytest.FixtureRequest) -> None:
    with fastshm.SharedMemory(name, create=True, size=kind(100), mode=kind(0o600),
                              backend=backend) as sm:
        assert sm.size == 100 and type(sm.size) is int
    fastshm.SharedMemory(name, backend=backend).unlink()
    with fastshm.SharedMemory.open_or_create(name, kind(64), backend=backend) as sm:
        assert sm.size == 64
    fastshm.SharedMemory(name, backend=backend).unlink()
    with fastshm.Segment(name, kind(64), mode=kind(0o640), backend=backend) as seg:
        assert seg.capacity == 64
        seg.store(b"x" * 64)


def test_bool_is_still_refused(backend: str, name: str) -> None:
    with pytest.raises(TypeError):
        fastshm.Segment(name, True, backend=backend)
    with pytest.raises(TypeError):
        fastshm.Segment(name, 64, mode=True, backend=backend)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        fastshm.SharedMemory(name, create=True, size=True, backend=backend)
    with pytest.raises(TypeError):
        fastshm.SharedMemory(name, create=True, size=64, mode=True, backend=backend)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        fastshm.SharedMemory(name, create=True, size=64.0, backend=backend)  # type: ignore[arg-type]
    assert not exists(name)


def test_check_functions_return_plain_ints() -> None:
    assert type(C.check_size(Index(5))) is int
    assert type(C.check_mode(Index(0o600))) is int
    with pytest.raises(TypeError, match="size"):
        C.check_size(False)
    with pytest.raises(TypeError, match="mode"):
        C.check_mode(True)


# ---- 9. one exception per condition; pickles keep their backend ----


def test_size_zero_object_is_format_error(backend: str, name: str) -> None:
    import _posixshmem

    os.close(_posixshmem.shm_open("/" + name, os.O_RDWR | os.O_CREAT | os.O_EXCL, mode=0o600))
    with pytest.raises(fastshm.FormatError):
        fastshm.SharedMemory(name, backend=backend)
    with pytest.raises(fastshm.FormatError):
        fastshm.Segment(name, create=False, backend=backend)


@pytest.mark.parametrize("kind", ["shared_memory", "segment"])
def test_pickle_keeps_backend(backend: str, name: str, kind: str) -> None:
    if kind == "segment":
        obj: Any = fastshm.Segment(name, 64, create=True, backend=backend)
    else:
        obj = fastshm.SharedMemory(name, create=True, size=64, backend=backend)
    for default in BACKENDS:
        code = (
            "import pickle, sys, fastshm\n"
            "obj = pickle.loads(bytes.fromhex(sys.argv[1]))\n"
            "print(obj.backend)\n"
        )
        out = run_python(code, pickle.dumps(obj).hex(), env={"FASTSHM_BACKEND": default},
                         timeout=30).stdout.decode().strip()
        assert out == backend_name(backend)
    obj.close()


# ---- 10. descriptors ----


def test_descriptors_per_segment(name: str, shm_name: Callable[..., str]) -> None:
    """One per open segment (the mapping's), plus one per thread that has
    stored; the thread's goes with the thread, the rest with the segment."""
    base = settled_fds()
    seg = fastshm.Segment(name, 64, create=True, backend="python")
    assert settled_fds() == base + 1
    seg.load()
    assert settled_fds() == base + 1
    seg.store(b"main thread")
    assert settled_fds() == base + 2
    t = threading.Thread(target=seg.store, args=(b"other thread",))
    t.start()
    t.join(10)
    assert settled_fds() == base + 2
    other = fastshm.Segment(name, create=False, backend="python")
    assert settled_fds() == base + 3
    raw = fastshm.SharedMemory(shm_name(), create=True, size=64, backend="python")
    # The raw mapping's own duplicate (CPython 3.13 maps without one).
    assert settled_fds() == base + 3 + (sys.version_info < (3, 13))
    raw.close()
    other.close()
    seg.close()
    assert settled_fds() == base


def test_threads_exclude_each_other(name: str) -> None:
    """Threads of one process, storing through one handle, are serialised
    (each has a descriptor of its own for flock)."""
    with fastshm.Segment(name, 64 * 1024, create=True, backend="python") as seg:
        msgs = _messages(seg.capacity, 3, 3)
        errors: list[BaseException] = []
        counts = [0] * 4

        def writer(k: int) -> None:
            try:
                for i in range(300):
                    seg.store(msgs[(i + k) % 3])
                    counts[k] += 1
                    check_message(seg.load())
            except BaseException as e:  # noqa: BLE001
                errors.append(e)

        threads = [threading.Thread(target=writer, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not errors, errors
        assert seg.seq == sum(counts) == 1200


# ---- 11. weakly ordered CPUs: readers take a shared flock ----


def weak_reader_main(name: str, seconds: float) -> None:
    _pure_segment._STRONG_ORDER = False
    seg = fastshm.Segment(name, create=False, backend="python")
    buf = bytearray(seg.capacity)
    loads = views_checked = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        check_message(seg.load())
        n = seg.load_into(buf)
        check_message(bytes(buf[:n]))
        v = seg.view()
        data = bytes(v)
        if seg.intact(seg.last_seq):
            check_message(data)
            views_checked += 1
        loads += 3
    print(json.dumps({"loads": loads, "views": views_checked}), flush=True)


def weak_writer_main(name: str, seconds: float) -> None:
    _pure_segment._STRONG_ORDER = False
    seg = fastshm.Segment(name, create=False, backend="python")
    msgs = _messages(seg.capacity, 5, 11)
    deadline = time.monotonic() + seconds
    i = 0
    while time.monotonic() < deadline:
        seg.store(msgs[i % 5])
        i += 1
    print(json.dumps({"stores": i}), flush=True)


def test_weak_order_readers_take_a_shared_lock(name: str, monkeypatch: pytest.MonkeyPatch
                                               ) -> None:
    monkeypatch.setattr(_pure_segment, "_STRONG_ORDER", False)
    with fastshm.Segment(name, 1024, create=True, backend="python") as seg:
        seg.store(b"first")
        # An exclusive flock, as a python writer holds during its store.
        fd = os.open(os.path.join(SHM_DIR, name), os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            box: list[object] = []
            t = threading.Thread(target=lambda: box.append(seg.load()), daemon=True)
            t.start()
            t.join(0.3)
            assert not box, "a weakly ordered reader copied while a writer held the lock"
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
        t.join(10)
        assert box == [b"first"]


def test_weak_order_loads_stay_intact(name: str) -> None:
    with fastshm.Segment(name, 64 * 1024, create=True, backend="python") as seg:
        seg.store(_messages(seg.capacity, 1, 0)[0])
        procs = [_child("weak_writer_main", name, 2.0)] + [
            _child("weak_reader_main", name, 2.0) for _ in range(2)
        ]
        try:
            outs = [json.loads(_line(p, 60)) for p in procs]
            for p in procs:
                p.wait(timeout=10)
                assert p.returncode == 0, p.stderr.read()  # type: ignore[union-attr]
        finally:
            for p in procs:
                _finish(p)
        assert outs[0]["stores"] > 0 and all(o["loads"] > 0 for o in outs[1:])


# ---- intact(): the seqlock's re-check for a view ----


def test_intact(name: str) -> None:
    with fastshm.Segment(name, 64, create=True, backend="python") as seg:
        h = seg._h
        assert h.intact(0)
        seg.store(b"one")
        v = seg.view()
        s = seg.last_seq
        assert h.intact(s)
        seg.store(b"two")
        assert h.intact(s), "one store later, the view's slot is untouched"
        seg.store(b"three")
        assert not h.intact(s), "two stores later, the view's slot was rewritten"
        assert bytes(v) == b"thr"
        assert h.intact(seg.seq)
        assert not h.intact(2**63)
        with pytest.raises(ValueError):
            h.intact(-1)


# ---- fork: a child does not lock through its parent's descriptions ----


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_forked_child_excludes_its_parent(name: str) -> None:
    """flock belongs to an open file description, which a forked child
    shares with its parent: the child must lock through descriptors of its
    own, or its stores would not wait for the parent's."""
    with fastshm.Segment(name, 64, create=True, backend="python") as seg:
        seg.store(b"before the fork")  # this thread now has its lock descriptor
        t = seg._h._tls.t
        fcntl.flock(t.fd, fcntl.LOCK_EX)  # as if inside a store
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: store, and say when it is done
            try:
                os.close(r)
                seg.store(b"from the child")
                os.write(w, b"stored")
            finally:
                os._exit(0)
        os.close(w)
        try:
            ready, _, _ = select.select([r], [], [], 0.3)
            assert not ready, "the child stored while the parent held the lock"
        finally:
            fcntl.flock(t.fd, fcntl.LOCK_UN)
        ready, _, _ = select.select([r], [], [], 10)
        assert ready and os.read(r, 16) == b"stored"
        os.close(r)
        os.waitpid(pid, 0)
        assert seg.load() == b"from the child"
        # And the parent's own descriptor still works.
        assert seg.store(b"parent again") == 3

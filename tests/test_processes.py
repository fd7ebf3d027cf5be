"""Real separate processes: P1 stores, P2 loads; many processes open one name at once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import backend_name, run_python

import fastshm

STORE = (
    "import sys, fastshm\n"
    "seg = fastshm.Segment(sys.argv[1], 1024, backend=sys.argv[2])\n"
    "print(seg.created, seg.store('12345'))\n"
    "seg.close()\n"
)
LOAD = (
    "import sys, fastshm\n"
    "seg = fastshm.Segment(sys.argv[1], backend=sys.argv[2])\n"
    "print(seg.created, seg.seq, seg.load_str())\n"
)


@pytest.mark.parametrize("same", [True, False], ids=["same-backend", "cross-backend"])
def test_p1_stores_p2_loads(backend: str, other_backend: str, name: str, same: bool) -> None:
    """The original program's demonstration, between two processes that do
    not overlap: P1 has exited before P2 starts."""
    p2_backend = backend if same else other_backend
    out1 = run_python(STORE, name, backend, timeout=30).stdout.decode().split()
    assert out1 == ["True", "1"]
    out2 = run_python(LOAD, name, p2_backend, timeout=30).stdout.decode().split()
    assert out2 == ["False", "1", "12345"]
    # And back: P2's kind stores, P1's kind loads, in this process.
    run_python(STORE.replace("'12345'", "'54321'"), name, p2_backend, timeout=30)
    with fastshm.Segment(name, create=False, backend=backend) as seg:
        assert seg.load() == b"54321"
        assert seg.seq == 2


RACER = r"""
import json, os, sys, time
import fastshm

name, backend, size, workdir, index = sys.argv[1:6]
open(os.path.join(workdir, "ready." + index), "w").close()
go = os.path.join(workdir, "go")
deadline = time.monotonic() + 30
while not os.path.exists(go):
    if time.monotonic() > deadline:
        sys.exit("no go signal")
    time.sleep(0.001)
seg = fastshm.Segment(name, int(size), backend=backend)
result = {"created": seg.created, "capacity": seg.capacity, "backend": seg.backend}
if seg.created:
    seg.store(b"from the creator %d" % os.getpid())
deadline = time.monotonic() + 30
while seg.seq == 0:
    if time.monotonic() > deadline:
        sys.exit("the creator never stored")
    time.sleep(0.001)
result["message"] = seg.load().decode()
result["pid"] = os.getpid()
print(json.dumps(result))
"""


@pytest.mark.parametrize("mixed", [False, True], ids=["one-backend", "mixed-backends"])
def test_open_or_create_race(backend: str, other_backend: str, name: str, tmp_path: Path,
                             mixed: bool) -> None:
    """Six processes open the same new name at the same moment: exactly one
    creates it, all see its capacity, and all load what it stores."""
    n = 6
    procs: list[subprocess.Popen] = []
    try:
        for i in range(n):
            b = other_backend if (mixed and i % 2) else backend
            # Each asks for a different size: only the creator's may count.
            procs.append(subprocess.Popen(
                [sys.executable, "-c", RACER, name, b, str(1000 + i), str(tmp_path), str(i)],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            ))
        deadline = time.monotonic() + 60
        while len(list(tmp_path.glob("ready.*"))) < n:
            assert time.monotonic() < deadline, "the racers did not start"
            assert all(p.poll() is None for p in procs), "a racer died before the start"
            time.sleep(0.005)
        (tmp_path / "go").touch()
        results = []
        for p in procs:
            out, err = p.communicate(timeout=60)
            assert p.returncode == 0, err.decode(errors="replace")
            results.append(json.loads(out))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(timeout=10)
    creators = [r for r in results if r["created"]]
    assert len(creators) == 1, results
    creator = creators[0]
    assert creator["capacity"] in range(1000, 1000 + n)
    assert {r["capacity"] for r in results} == {creator["capacity"]}
    assert {r["message"] for r in results} == {f"from the creator {creator['pid']}"}
    if mixed and other_backend != backend:
        assert {r["backend"] for r in results} == {
            backend_name(backend), backend_name(other_backend)
        }
    with fastshm.Segment(name, create=False, backend=backend) as seg:
        assert seg.seq == 1
        assert seg.capacity == creator["capacity"]


def test_many_sequential_processes_count_stores(backend: str, other_backend: str,
                                                name: str) -> None:
    """Stores from processes that come and go add up in one counter."""
    code = (
        "import sys, fastshm\n"
        "for b in sys.argv[2:]:\n"
        "    with fastshm.Segment(sys.argv[1], 64, backend=b) as s:\n"
        "        s.store(b'from ' + b.encode())\n"
    )
    run_python(code, name, backend, other_backend, timeout=30)
    run_python(code, name, other_backend, backend, timeout=30)
    with fastshm.Segment(name, create=False, backend=backend) as seg:
        assert seg.seq == 4
        assert seg.load() == f"from {backend}".encode()
    assert os.path.exists(f"/dev/shm/{name}")

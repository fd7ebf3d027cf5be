"""SharedMemory as a drop-in for multiprocessing.shared_memory.SharedMemory."""

from __future__ import annotations

import os
import pickle
from multiprocessing import resource_tracker
from multiprocessing import shared_memory as stdlib_shm
from typing import Any

import pytest
from conftest import SHM_DIR, backend_name, run_python

import fastshm


def stdlib_attach(name: str) -> stdlib_shm.SharedMemory:
    """The stdlib class attached to ``name``, without leaving it registered
    with the resource tracker (which would unlink it when this process ends)."""
    sm = stdlib_shm.SharedMemory(name)
    resource_tracker.unregister(sm._name, "shared_memory")  # type: ignore[attr-defined]
    return sm


def test_create_and_attach(backend: str, other_backend: str, name: str) -> None:
    with fastshm.SharedMemory(name, create=True, size=100, backend=backend) as a:
        assert a.name == name
        assert a.size == 100
        assert a.created is True
        assert a.backend == backend_name(backend)
        assert a.buf is not None and len(a.buf) == 100
        assert not a.buf.readonly
        a.buf[:5] = b"hello"
        with fastshm.SharedMemory(name, backend=other_backend) as b:
            assert b.created is False
            assert b.size == 100
            assert b.buf is not None
            assert bytes(b.buf[:5]) == b"hello"
            b.buf[99] = 7
        assert a.buf[99] == 7


def test_positional_arguments_as_stdlib(backend: str, name: str) -> None:
    a = fastshm.SharedMemory(name, True, 64, backend=backend)
    try:
        b = fastshm.SharedMemory(name, False, 0, backend=backend)
        assert b.size == 64
        b.close()
    finally:
        a.close()


def test_attach_size_argument_is_ignored(backend: str, name: str) -> None:
    with fastshm.SharedMemory(name, create=True, size=4096, backend=backend), \
            fastshm.SharedMemory(name, size=10, backend=backend) as b:
        assert b.size == 4096


def test_auto_name(backend: str) -> None:
    a = fastshm.SharedMemory(create=True, size=32, backend=backend)
    try:
        ref = stdlib_shm.SharedMemory(create=True, size=32)
        try:
            assert a.name.startswith("psm_")
            assert len(a.name) == len(ref.name)
            assert os.path.exists(os.path.join(SHM_DIR, a.name))
            b = fastshm.SharedMemory(create=True, size=32, backend=backend)
            assert b.name != a.name
            b.close()
            b.unlink()
        finally:
            ref.close()
            ref.unlink()
    finally:
        a.close()
        a.unlink()
    assert not os.path.exists(os.path.join(SHM_DIR, a.name))


def test_leading_slash_is_stripped(backend: str, name: str) -> None:
    with fastshm.SharedMemory("/" + name, create=True, size=8, backend=backend) as a:
        assert a.name == name
        assert os.path.exists(os.path.join(SHM_DIR, name))


@pytest.mark.parametrize("with_stdlib_creator", [True, False])
def test_stdlib_interoperates(backend: str, name: str, with_stdlib_creator: bool) -> None:
    if with_stdlib_creator:
        creator: Any = stdlib_shm.SharedMemory(name, create=True, size=1000)
        other: Any = fastshm.SharedMemory(name, backend=backend)
    else:
        creator = fastshm.SharedMemory(name, create=True, size=1000, backend=backend)
        other = stdlib_attach(name)
    try:
        assert other.size == creator.size
        assert other.name == creator.name == name
        creator.buf[:6] = b"by one"
        assert bytes(other.buf[:6]) == b"by one"
        other.buf[500:509] = b"by other!"
        assert bytes(creator.buf[500:509]) == b"by other!"
    finally:
        other.close()
        creator.close()
        if with_stdlib_creator:
            creator.unlink()  # unregisters it from the tracker as well


def test_open_or_create(backend: str, other_backend: str, name: str) -> None:
    with fastshm.SharedMemory.open_or_create(name, 256, backend=backend) as a:
        assert a.created is True
        assert a.size == 256
        assert a.buf is not None
        a.buf[0] = 42
        with fastshm.SharedMemory.open_or_create(name, 999, backend=other_backend) as b:
            assert b.created is False
            assert b.size == 256
            assert b.buf is not None and b.buf[0] == 42
    with pytest.raises(ValueError):
        fastshm.SharedMemory.open_or_create(name, 0, backend=backend)


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    def __call__(self, *args: Any) -> None:
        self.calls.append(args)


@pytest.fixture
def tracker(monkeypatch: pytest.MonkeyPatch) -> dict[str, Recorder]:
    calls = {"register": Recorder(), "unregister": Recorder()}
    monkeypatch.setattr(resource_tracker, "register", calls["register"])
    monkeypatch.setattr(resource_tracker, "unregister", calls["unregister"])
    return calls


def test_untracked_by_default(backend: str, name: str, tracker: dict[str, Recorder]) -> None:
    a = fastshm.SharedMemory(name, create=True, size=64, backend=backend)
    b = fastshm.SharedMemory(name, backend=backend)
    c = fastshm.SharedMemory.open_or_create(name, 64, backend=backend)
    for x in (c, b, a):
        x.close()
    a.unlink()
    assert tracker["register"].calls == []
    assert tracker["unregister"].calls == []


def test_track_true_registers(backend: str, name: str, tracker: dict[str, Recorder]) -> None:
    a = fastshm.SharedMemory(name, create=True, size=64, track=True, backend=backend)
    assert tracker["register"].calls == [("/" + name, "shared_memory")]
    a.close()
    a.unlink()
    assert tracker["unregister"].calls == [("/" + name, "shared_memory")]


def test_close_twice_and_buf_none(backend: str, name: str) -> None:
    a = fastshm.SharedMemory(name, create=True, size=64, backend=backend)
    assert a.buf is not None
    a.close()
    assert a.buf is None
    a.close()
    assert a.buf is None
    # What needs no mapping still answers, as with the stdlib.
    assert a.name == name
    assert a.size == 64
    assert repr(a) == f"SharedMemory({name!r}, size=64)"
    a.unlink()
    assert not os.path.exists(os.path.join(SHM_DIR, name))


def test_errors_match_stdlib(backend: str, name: str) -> None:
    """Each bad call raises what the stdlib raises for it."""
    with fastshm.SharedMemory(name, create=True, size=16, backend=backend):
        cases: list[dict[str, Any]] = [
            {},
            {"create": True, "size": 0},
            {"create": True, "size": -1},
            {"name": name + "_missing"},
            {"name": name, "create": True, "size": 16},
            {"name": name + "_neg", "create": True, "size": -5},
        ]
        for kw in cases:
            with pytest.raises(Exception) as ours:
                fastshm.SharedMemory(**kw, backend=backend)
            with pytest.raises(Exception) as theirs:
                stdlib_shm.SharedMemory(**kw)
            assert type(ours.value) is type(theirs.value), kw
    assert not os.path.exists(os.path.join(SHM_DIR, name + "_missing"))
    assert not os.path.exists(os.path.join(SHM_DIR, name + "_neg"))


def test_specific_errors(backend: str, name: str) -> None:
    with pytest.raises(ValueError):
        fastshm.SharedMemory(create=True, size=0, backend=backend)
    with pytest.raises(ValueError):
        fastshm.SharedMemory(backend=backend)
    with pytest.raises(FileNotFoundError):
        fastshm.SharedMemory(name, backend=backend)
    with pytest.raises(TypeError):
        fastshm.SharedMemory(name, create=True, size=1.5, backend=backend)  # type: ignore
    assert not os.path.exists(os.path.join(SHM_DIR, name))


def test_repr_as_stdlib(backend: str, name: str) -> None:
    with fastshm.SharedMemory(name, create=True, size=48, backend=backend) as a:
        b = stdlib_attach(name)
        try:
            assert repr(a) == repr(b) == f"SharedMemory({name!r}, size=48)"
        finally:
            b.close()


def test_pickle_as_stdlib(backend: str, name: str) -> None:
    with fastshm.SharedMemory(name, create=True, size=48, backend=backend) as a:
        assert a.buf is not None
        a.buf[:3] = b"abc"
        with pickle.loads(pickle.dumps(a)) as b:
            assert type(b) is fastshm.SharedMemory
            assert b.name == name and b.size == 48 and b.created is False
            assert b.buf is not None and bytes(b.buf[:3]) == b"abc"
        # A pickle of the stdlib's shape, (class, (name, False, size)), still
        # loads: that is the constructor's signature.
        ref = stdlib_attach(name)
        try:
            cls, args = ref.__reduce__()
            with fastshm.SharedMemory(*args, backend=backend) as c:
                assert c.name == name and c.size == 48 and c.created is False
        finally:
            ref.close()


def test_pickle_in_child_process(backend: str, name: str) -> None:
    with fastshm.SharedMemory(name, create=True, size=48, backend=backend) as a:
        assert a.buf is not None
        a.buf[:6] = b"parent"
        code = (
            "import pickle, sys\n"
            "sm = pickle.loads(bytes.fromhex(sys.argv[1]))\n"
            "print(bytes(sm.buf[:6]).decode(), sm.size)\n"
            "sm.buf[:5] = b'child'\n"
            "sm.close()\n"
        )
        out = run_python(code, pickle.dumps(a).hex(), timeout=30).stdout.decode()
        assert out.split() == ["parent", "48"]
        assert bytes(a.buf[:6]) == b"childt"


def test_child_exit_does_not_unlink(backend: str, name: str) -> None:
    """Unlike the stdlib's tracker, nothing removes the block when a process
    that attached to it exits."""
    with fastshm.SharedMemory(name, create=True, size=16, backend=backend):
        code = (
            "import sys, fastshm\n"
            "sm = fastshm.SharedMemory(sys.argv[1], backend=sys.argv[2])\n"
            "sm.buf[0] = 9\n"
        )
        run_python(code, name, backend, timeout=30)
        with fastshm.SharedMemory(name, backend=backend) as b:
            assert b.buf is not None and b.buf[0] == 9


def test_segment_seen_through_shared_memory(backend: str, name: str) -> None:
    """A Segment is a named block like any other: SharedMemory maps all of it."""
    with fastshm.Segment(name, 64, backend=backend) as seg:
        seg.store(b"framed")
        with fastshm.SharedMemory(name, backend=backend) as raw:
            assert raw.buf is not None
            assert raw.size == 128 + 2 * (64 + 64)
            assert bytes(raw.buf[:4]) == b"FSHM"
            assert b"framed" in bytes(raw.buf)


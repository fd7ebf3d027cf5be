"""Segment: the menu (store, load, delete) and the object's protocol, per backend."""

from __future__ import annotations

import array
import pickle
from typing import Any, Callable

import pytest
from conftest import backend_name, run_python

import fastshm

# -- opening --


def test_open_or_create_creates_then_attaches(backend: str, name: str) -> None:
    with fastshm.Segment(name, 100, backend=backend) as first:
        assert first.created is True
        assert first.capacity == 100
        assert first.backend == backend_name(backend)
        assert first.name == name
        with fastshm.Segment(name, 100, backend=backend) as second:
            assert second.created is False
            assert second.capacity == 100


def test_create_true_on_existing_name(backend: str, name: str) -> None:
    with fastshm.Segment(name, 64, create=True, backend=backend) as seg:
        seg.store(b"kept")
        with pytest.raises(FileExistsError):
            fastshm.Segment(name, 64, create=True, backend=backend)
        assert seg.load() == b"kept"
        assert seg.seq == 1


def test_create_false_on_missing_name(backend: str, name: str) -> None:
    with pytest.raises(FileNotFoundError):
        fastshm.Segment(name, 64, create=False, backend=backend)


def test_attach_ignores_size(backend: str, other_backend: str, name: str) -> None:
    with fastshm.Segment(name, 300, create=True, backend=backend):
        for create in (None, False):
            with fastshm.Segment(name, 5, create=create, backend=other_backend) as s:
                assert s.created is False
                assert s.capacity == 300
        # On attach, even a size that would be refused when creating is ignored.
        with fastshm.Segment(name, 0, create=False, backend=other_backend) as s:
            assert s.capacity == 300


def test_leading_slash_is_stripped(backend: str, name: str) -> None:
    with fastshm.Segment("/" + name, 64, backend=backend) as seg:
        assert seg.name == name
        seg.store(b"x")
        with fastshm.Segment(name, create=False, backend=backend) as other:
            assert other.load() == b"x"


# -- store and load --


def test_store_and_load_kinds_of_data(backend: str, name: str) -> None:
    with fastshm.Segment(name, 256, backend=backend) as seg:
        seg.store(b"bytes")
        assert seg.load() == b"bytes"
        seg.store(bytearray(b"bytearray"))
        assert seg.load() == b"bytearray"
        seg.store(memoryview(b"__memoryview__")[2:-2])
        assert seg.load() == b"memoryview"
        ints = array.array("i", [1, -2, 300000])
        seg.store(ints)
        assert seg.load() == ints.tobytes()
        assert len(seg) == 3 * ints.itemsize
        seg.store(memoryview(ints))
        assert seg.load() == ints.tobytes()
        seg.store("héllo ✓")
        assert seg.load() == "héllo ✓".encode()
        assert seg.load_str() == "héllo ✓"
        assert seg.load_str("latin-1") == "héllo ✓".encode().decode("latin-1")


def test_store_numpy_int32_as_raw_bytes(backend: str, name: str) -> None:
    np = pytest.importorskip("numpy")
    a = np.arange(12, dtype=np.int32).reshape(3, 4)
    with fastshm.Segment(name, 256, backend=backend) as seg:
        seg.store(a)
        assert seg.load() == a.tobytes()
        back = np.frombuffer(seg.load(), dtype=np.int32).reshape(3, 4)
        assert (back == a).all()


def test_empty_segment_loads_nothing(backend: str, name: str) -> None:
    with fastshm.Segment(name, 64, backend=backend) as seg:
        assert seg.load() == b""
        assert seg.load_str() == ""
        assert len(seg) == 0
        assert seg.seq == 0
        assert seg.last_seq == 0
        assert bytes(seg.view()) == b""
        buf = bytearray(b"untouched")
        assert seg.load_into(buf) == 0
        assert buf == b"untouched"


def test_zero_length_store(backend: str, name: str) -> None:
    with fastshm.Segment(name, 64, backend=backend) as seg:
        seg.store(b"something")
        assert seg.store(b"") == 2
        assert seg.load() == b""
        assert len(seg) == 0
        assert seg.seq == 2


@pytest.mark.parametrize("capacity", [1, 63, 64, 65, 1000])
def test_store_exactly_capacity(backend: str, name: str, capacity: int) -> None:
    data = bytes((i * 7 + 3) % 256 for i in range(capacity))
    with fastshm.Segment(name, capacity, backend=backend) as seg:
        seg.store(data)
        assert seg.load() == data
        # Both slots, since stores alternate between them.
        seg.store(data[::-1])
        assert seg.load() == data[::-1]
        assert len(seg) == capacity


def test_seq_and_last_seq(backend: str, other_backend: str, name: str) -> None:
    with fastshm.Segment(name, 64, backend=backend) as writer, \
            fastshm.Segment(name, backend=other_backend) as reader:
        assert reader.last_seq == 0
        for i in range(1, 6):
            assert writer.store(b"m%d" % i) == i
            assert writer.seq == i
            assert writer.last_seq == i
        assert reader.seq == 5
        assert reader.last_seq == 0  # only loading moves it
        assert reader.load() == b"m5"
        assert reader.last_seq == 5
        writer.store(b"m6")
        buf = bytearray(8)
        assert reader.load_into(buf) == 2
        assert reader.last_seq == 6
        writer.store(b"m7")
        reader.view()
        assert reader.last_seq == 7


def test_load_into(backend: str, name: str) -> None:
    with fastshm.Segment(name, 64, backend=backend) as seg:
        seg.store(b"hello")
        buf = bytearray(b"0123456789")
        assert seg.load_into(buf) == 5
        assert buf == b"hello56789"
        exact = bytearray(5)
        assert seg.load_into(exact) == 5
        assert exact == b"hello"
        ints = array.array("i", [0, 0, 0])
        assert seg.load_into(ints) == 5
        assert ints.tobytes()[:5] == b"hello"
        mv = memoryview(bytearray(20))
        assert seg.load_into(mv[4:]) == 5
        assert mv[4:9] == b"hello"


def test_load_into_too_small_leaves_buffer(backend: str, name: str) -> None:
    with fastshm.Segment(name, 64, backend=backend) as seg:
        seg.store(b"a longer message")
        seg_seq = seg.seq
        small = bytearray(b"tiny")
        with pytest.raises(ValueError, match="too small"):
            seg.load_into(small)
        assert small == b"tiny"
        assert seg.seq == seg_seq
        assert seg.load() == b"a longer message"


def test_load_into_allocates_no_copy(backend: str, name: str) -> None:
    # PyPy has no tracemalloc (no _tracemalloc module).
    tracemalloc = pytest.importorskip("tracemalloc")
    size = 64 * 1024
    with fastshm.Segment(name, size, backend=backend) as seg:
        seg.store(b"z" * size)
        buf = bytearray(size)
        seg.load_into(buf)  # first call: whatever cffi or struct cache once
        tracemalloc.start()
        try:
            tracemalloc.reset_peak()
            for _ in range(20):
                assert seg.load_into(buf) == size
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        # A copy of the message anywhere on the way would show as >= 64 KiB.
        assert peak < size // 4
        assert buf == b"z" * size


# -- view --


def test_view_is_read_only_and_zero_copy(backend: str, name: str) -> None:
    with fastshm.Segment(name, 64, backend=backend) as seg:
        seg.store(b"first")
        v = seg.view()
        assert v.readonly
        assert bytes(v) == b"first"
        with pytest.raises(TypeError):
            v[0] = 0
        # The next store goes to the other slot: the view still shows "first".
        seg.store(b"other")
        assert bytes(v) == b"first"
        # The store after that reuses the view's slot: the view sees it, so
        # it is the shared memory itself, not a copy.
        seg.store(b"third")
        assert bytes(v) == b"third"
        v.release()


def test_view_shares_memory_numpy(backend: str, name: str) -> None:
    np = pytest.importorskip("numpy")
    with fastshm.Segment(name, 64, backend=backend) as seg:
        seg.store(np.arange(8, dtype=np.int32))
        a = np.frombuffer(seg.view(), dtype=np.int32)
        b = np.frombuffer(seg.view(), dtype=np.int32)
        assert np.shares_memory(a, b)
        assert not a.flags.writeable
        assert a.tolist() == list(range(8))
        seg.store(np.zeros(8, dtype=np.int32))
        seg.store(np.full(8, 42, dtype=np.int32))
        assert a.tolist() == [42] * 8
        del a, b


# -- closing, deleting --


def test_context_manager_closes(backend: str, name: str) -> None:
    with fastshm.Segment(name, 64, backend=backend) as seg:
        assert not seg.closed
    assert seg.closed
    with pytest.raises(ValueError, match="closed"):
        seg.load()


def test_close_twice_is_harmless(backend: str, name: str) -> None:
    seg = fastshm.Segment(name, 64, backend=backend)
    seg.close()
    seg.close()
    assert seg.closed


CLOSED_CALLS: dict[str, Callable[[Any], Any]] = {
    "store": lambda s: s.store(b"x"),
    "load": lambda s: s.load(),
    "load_str": lambda s: s.load_str(),
    "load_into": lambda s: s.load_into(bytearray(8)),
    "view": lambda s: s.view(),
    "wait": lambda s: s.wait(0),
    "messages": lambda s: next(s.messages(0)),
    "seq": lambda s: s.seq,
    "capacity": lambda s: s.capacity,
    "created": lambda s: s.created,
    "len": lambda s: len(s),
    "enter": lambda s: s.__enter__(),
}


@pytest.mark.parametrize("call", sorted(CLOSED_CALLS))
def test_closed_object_raises_value_error(backend: str, name: str, call: str) -> None:
    seg = fastshm.Segment(name, 64, backend=backend)
    seg.store(b"still here")
    seg.close()
    with pytest.raises(ValueError, match="closed"):
        CLOSED_CALLS[call](seg)
    # Properties that need no mapping still answer.
    assert seg.name == name
    assert seg.backend == backend_name(backend)
    assert seg.last_seq == 1
    with fastshm.Segment(name, create=False, backend=backend) as other:
        assert other.load() == b"still here"


def test_unlink_works_after_close(backend: str, name: str) -> None:
    seg = fastshm.Segment(name, 64, backend=backend)
    seg.close()
    seg.unlink()
    with pytest.raises(FileNotFoundError):
        fastshm.Segment(name, create=False, backend=backend)
    with pytest.raises(FileNotFoundError):
        seg.unlink()


def test_delete_removes_name(backend: str, other_backend: str, name: str) -> None:
    seg = fastshm.Segment(name, 64, backend=backend)
    seg.store(b"bye")
    seg.delete()
    assert seg.closed
    for b in (backend, other_backend):
        with pytest.raises(FileNotFoundError):
            fastshm.Segment(name, create=False, backend=b)
    # Open-or-create now makes a fresh, empty one.
    with fastshm.Segment(name, 32, backend=other_backend) as fresh:
        assert fresh.created
        assert fresh.load() == b""
        assert fresh.seq == 0


def test_delete_keeps_open_mappings(backend: str, name: str) -> None:
    with fastshm.Segment(name, 64, backend=backend) as keeper:
        keeper.store(b"kept")
        fastshm.Segment(name, create=False, backend=backend).delete()
        assert keeper.load() == b"kept"
        keeper.store(b"still works")
        assert keeper.load() == b"still works"


# -- pickling and repr --


def test_pickle_reattaches_by_name(backend: str, name: str) -> None:
    with fastshm.Segment(name, 77, backend=backend) as seg:
        seg.store(b"pickled")
        with pickle.loads(pickle.dumps(seg)) as copy:
            assert isinstance(copy, fastshm.Segment)
            assert copy is not seg
            assert copy.name == name
            assert copy.backend == backend_name(backend)
            assert copy.created is False
            assert copy.capacity == 77
            assert copy.load() == b"pickled"
            copy.store(b"back")
        assert seg.load() == b"back"


def test_pickle_in_child_process(backend: str, name: str) -> None:
    with fastshm.Segment(name, 64, backend=backend) as seg:
        seg.store(b"from the parent")
        code = (
            "import pickle, sys\n"
            "seg = pickle.loads(bytes.fromhex(sys.argv[1]))\n"
            "print(seg.backend, seg.load().decode())\n"
            "seg.store(b'from the child')\n"
        )
        out = run_python(code, pickle.dumps(seg).hex(), timeout=30).stdout.decode()
        assert out.strip() == f"{backend_name(backend)} from the parent"
        assert seg.load() == b"from the child"
        assert seg.seq == 2


def test_pickle_of_deleted_segment(backend: str, name: str) -> None:
    seg = fastshm.Segment(name, 64, backend=backend)
    data = pickle.dumps(seg)
    seg.delete()
    with pytest.raises(FileNotFoundError):
        pickle.loads(data)


def test_repr(backend: str, name: str) -> None:
    seg = fastshm.Segment(name, 64, backend=backend)
    seg.store(b"a")
    seg.store(b"b")
    r = repr(seg)
    assert r.startswith("Segment(")
    assert repr(name) in r
    assert "capacity=64" in r
    assert "seq=2" in r
    assert f"backend={backend_name(backend)!r}" in r
    seg.close()
    r = repr(seg)
    assert repr(name) in r
    assert "closed" in r

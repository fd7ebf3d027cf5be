"""Bad input: each case gets a clear error and changes nothing (message, seq,
files in /dev/shm stay as they were)."""

from __future__ import annotations

import errno
import os
import struct
from collections.abc import Iterator
from multiprocessing import shared_memory as stdlib_shm
from typing import Any, Callable

import pytest
from conftest import SHM_DIR, run_python

import fastshm
from fastshm import _common as C

U16 = struct.Struct("<H")
posix_only = pytest.mark.skipif(not os.path.isdir(SHM_DIR), reason="needs /dev/shm")


def exists(name: str) -> bool:
    return os.path.exists(os.path.join(SHM_DIR, name))


_snapshots: dict[str, bytes] = {}


def raw_bytes(name: str) -> bytes:
    """Every byte of the named mapping: header, both slots, lock and wait words."""
    with fastshm.SharedMemory(name) as raw:
        assert raw.buf is not None
        return bytes(raw.buf)


@pytest.fixture
def seg(backend: str, name: str) -> Iterator[fastshm.Segment]:
    """A segment holding one message, to check that failed calls leave it alone."""
    with fastshm.Segment(name, 64, create=True, backend=backend) as s:
        s.store(b"the previous message")
        _snapshots[name] = raw_bytes(name)
        yield s
    del _snapshots[name]


def assert_unchanged(seg: fastshm.Segment) -> None:
    assert seg.seq == 1
    assert seg.load() == b"the previous message"
    # Not a byte written anywhere, not even in the slot that is not current.
    assert raw_bytes(seg.name) == _snapshots[seg.name]


# -- names --


@pytest.mark.parametrize(
    "bad, match",
    [
        ("", "empty"),
        ("/", "empty"),
        ("a\0b", "NUL"),
        ("a/b", "'/'"),
        ("//a", "'/'"),
        ("x" * 256, "at most 255"),
        ("é" * 128, "at most 255"),  # 256 bytes in UTF-8, though 128 characters
        ("\udcff", "UTF-8"),
    ],
)
@posix_only
def test_bad_names(backend: str, bad: str, match: str) -> None:
    def others() -> set[str]:
        # Other test processes (this run's parallel workers too) make objects
        # meanwhile: named fshmtest<pid>_..., or psm_... by SharedMemory with
        # no name. No bad name below can turn into either.
        return {n for n in os.listdir(SHM_DIR)
                if not n.startswith(("fshmtest", "psm_"))}

    before = others()
    for create in (None, True, False):
        with pytest.raises(ValueError, match=match):
            fastshm.Segment(bad, 64, create=create, backend=backend)
    for create in (True, False):
        with pytest.raises(ValueError, match=match):
            fastshm.SharedMemory(bad, create=create, size=64, backend=backend)
    assert others() == before


@pytest.mark.parametrize("bad", [None, 5, b"name", ["n"]])
def test_name_not_str(backend: str, bad: Any) -> None:
    with pytest.raises(TypeError, match="name must be a str"):
        fastshm.Segment(bad, 64, backend=backend)


def test_longest_name_is_accepted(backend: str, shm_name: Callable[..., str]) -> None:
    base = shm_name()
    longest = base + "y" * (255 - len(base))
    try:
        with fastshm.Segment(longest, 64, create=True, backend=backend) as s:
            assert s.name == longest
    finally:
        fastshm.Segment(longest, create=False, backend=backend).delete()
    # A leading '/' does not count, as with shm_open.
    try:
        with fastshm.Segment("/" + longest, 64, create=True, backend=backend) as s:
            assert s.name == longest
    finally:
        fastshm.Segment(longest, create=False, backend=backend).delete()


# -- sizes, modes and other arguments --


@pytest.mark.parametrize(
    "size, exc",
    [
        (0, ValueError),
        (-1, ValueError),
        (2**63, ValueError),
        (2**62, ValueError),
        (1.0, TypeError),
        (True, TypeError),
        ("64", TypeError),
        (None, TypeError),
    ],
)
@pytest.mark.parametrize("create", [None, True])
def test_bad_sizes(backend: str, name: str, size: Any, exc: type, create: Any) -> None:
    with pytest.raises(exc, match="size"):
        fastshm.Segment(name, size, create=create, backend=backend)
    assert not exists(name)


def test_failed_create_leaves_no_file(backend: str, name: str) -> None:
    """A size the checks accept but the system cannot back (1 PiB) fails in
    the system calls, after the name was made: it must be removed again."""
    with pytest.raises(OSError) as info:
        fastshm.Segment(name, 2**50, create=True, backend=backend)
    assert info.value.errno in (errno.ENOSPC, errno.ENOMEM, errno.EFBIG)
    assert not exists(name)


def test_bad_backend(name: str) -> None:
    with pytest.raises(ValueError, match="bogus"):
        fastshm.Segment(name, 64, backend="bogus")
    with pytest.raises(ValueError, match="bogus"):
        fastshm.SharedMemory(name, create=True, size=64, backend="bogus")
    assert not exists(name)


def test_bad_backend_in_the_environment(name: str) -> None:
    """A FASTSHM_BACKEND fastshm does not know breaks neither the import nor
    an explicit choice; the first use of the default says what is wrong."""
    code = (
        "import sys, fastshm\n"
        "name = sys.argv[1]\n"
        "fastshm.Segment(name, 64, create=True, backend='python').delete()\n"
        "try:\n"
        "    fastshm.Segment(name, 64)\n"
        "except ValueError as e:\n"
        "    print('ValueError:', e)\n"
        "try:\n"
        "    fastshm.backend\n"
        "except ValueError:\n"
        "    print('backend: ValueError')\n"
    )
    out = run_python(code, name, env={"FASTSHM_BACKEND": "bogus"}, timeout=30).stdout.decode()
    assert "ValueError: FASTSHM_BACKEND='bogus' is not a fastshm backend" in out
    assert "backend: ValueError" in out
    assert not exists(name)


@pytest.mark.parametrize("create", ["yes", 1, 0])
def test_bad_create(backend: str, name: str, create: Any) -> None:
    with pytest.raises(TypeError, match="create"):
        fastshm.Segment(name, 64, create=create, backend=backend)
    assert not exists(name)


@pytest.mark.parametrize("mode, exc", [(-1, ValueError), (0o1000, ValueError),
                                       (0o4755, ValueError), ("0o600", TypeError),
                                       (0.5, TypeError)])
def test_bad_mode(backend: str, name: str, mode: Any, exc: type) -> None:
    with pytest.raises(exc, match="mode"):
        fastshm.Segment(name, 64, mode=mode, backend=backend)
    with pytest.raises(exc, match="mode"):
        fastshm.SharedMemory(name, create=True, size=64, mode=mode, backend=backend)
    assert not exists(name)


# -- store, load_into --


@pytest.mark.parametrize("size", [65, 1000])
def test_store_over_capacity(seg: fastshm.Segment, size: int) -> None:
    with pytest.raises(ValueError, match="capacity is 64"):
        seg.store(b"x" * size)
    assert_unchanged(seg)
    assert seg.last_seq == 1


@pytest.mark.parametrize("data", [5, [1, 2], None, 1.5, object()])
def test_store_non_buffer(seg: fastshm.Segment, data: Any) -> None:
    with pytest.raises(TypeError, match="bytes-like"):
        seg.store(data)
    assert_unchanged(seg)


def test_store_non_contiguous(seg: fastshm.Segment) -> None:
    with pytest.raises(ValueError, match="contiguous"):
        seg.store(memoryview(b"abcdefgh")[::2])
    assert_unchanged(seg)


@pytest.mark.parametrize("buf", [b"read-only buffer here", memoryview(b"x" * 40)])
def test_load_into_read_only(seg: fastshm.Segment, buf: Any) -> None:
    before = bytes(buf)
    with pytest.raises(TypeError, match="writable"):
        seg.load_into(buf)
    assert bytes(buf) == before
    assert_unchanged(seg)


@pytest.mark.parametrize("buf", [5, None, "a str"])
def test_load_into_non_buffer(seg: fastshm.Segment, buf: Any) -> None:
    with pytest.raises(TypeError, match="writable"):
        seg.load_into(buf)
    assert_unchanged(seg)


@pytest.mark.parametrize("after, error", [
    (-1, ValueError), (True, TypeError), ("1", TypeError), (1.0, TypeError),
])
def test_bad_wait_after(seg: fastshm.Segment, after: Any, error: type) -> None:
    with pytest.raises(error, match="after"):
        seg.wait(0, after=after)
    assert_unchanged(seg)


def test_create_true_on_existing_keeps_message(seg: fastshm.Segment,
                                               other_backend: str) -> None:
    with pytest.raises(FileExistsError):
        fastshm.Segment(seg.name, 999, create=True, backend=other_backend)
    assert_unchanged(seg)
    assert seg.capacity == 64


# -- headers that are not fastshm's --


def corrupt(name: str, offset: int, fmt: Any, value: int) -> None:
    with fastshm.SharedMemory(name) as raw:
        assert raw.buf is not None
        fmt.pack_into(raw.buf, offset, value)


@pytest.mark.parametrize(
    "offset, fmt, value, match",
    [
        (C.H_MAGIC, C.U32, 0x12345678, "not a fastshm segment"),
        (C.H_VERSION, U16, 2, "version"),
        (C.H_VERSION, U16, 0, "version"),
        (C.H_HEADER_SIZE, U16, 64, "not a fastshm segment"),
        (C.H_CAPACITY, C.U64, 1 << 20, "not a fastshm segment"),
        (C.H_CAPACITY, C.U64, 65, "not a fastshm segment"),
        (C.H_CAPACITY, C.U64, 0, "not a fastshm segment"),
        (C.H_CAPACITY, C.U64, 2**64 - 1, "not a fastshm segment"),
    ],
)
def test_corrupt_header(backend: str, other_backend: str, name: str, offset: int, fmt: Any,
                        value: int, match: str) -> None:
    with fastshm.Segment(name, 64, create=True, backend=backend) as s:
        s.store(b"payload")
    corrupt(name, offset, fmt, value)
    for b in (backend, other_backend):
        for create in (None, False):
            with pytest.raises(fastshm.FormatError, match=match) as info:
                fastshm.Segment(name, 64, create=create, backend=b)
            assert isinstance(info.value, ValueError)
    # The failed opens did not repair or remove it.
    with fastshm.SharedMemory(name) as raw:
        assert raw.buf is not None
        assert fmt.unpack_from(raw.buf, offset)[0] == value


def test_format_error_is_value_error() -> None:
    assert issubclass(fastshm.FormatError, ValueError)


def test_stdlib_block_is_not_a_segment(backend: str, name: str) -> None:
    raw = stdlib_shm.SharedMemory(name, create=True, size=4096)
    try:
        raw.buf[:11] = b"not fastshm"
        for create in (None, False):
            with pytest.raises(fastshm.FormatError):
                fastshm.Segment(name, 64, create=create, backend=backend)
        assert bytes(raw.buf[:11]) == b"not fastshm"
    finally:
        raw.close()
        raw.unlink()


def test_tiny_block_is_not_a_segment(backend: str, name: str) -> None:
    with fastshm.SharedMemory(name, create=True, size=16, backend=backend) as raw:
        assert raw.buf is not None
        raw.buf[:4] = C.U32.pack(C.MAGIC)
    with pytest.raises(fastshm.FormatError):
        fastshm.Segment(name, create=False, backend=backend)


def test_never_initialised_segment_gives_up(backend: str, name: str) -> None:
    """A name whose header is all zeros (its creator died before writing it)
    is waited for a bounded time, then refused."""
    with fastshm.SharedMemory(name, create=True, size=4096, backend=backend):
        pass
    code = (
        "import sys, time, fastshm\n"
        "t = time.monotonic()\n"
        "try:\n"
        "    fastshm.Segment(sys.argv[1], 64, backend=sys.argv[2])\n"
        "except fastshm.FormatError as e:\n"
        "    print('FormatError', round(time.monotonic() - t, 1), e)\n"
    )
    out = run_python(code, name, backend, timeout=30).stdout.decode()
    assert out.startswith("FormatError"), out
    assert "is not a finished fastshm segment" in out
    # Still all zeros: the opener did not initialise someone else's name.
    with fastshm.SharedMemory(name, backend=backend) as raw:
        assert raw.buf is not None
        assert bytes(raw.buf) == bytes(4096)


def test_empty_name_object_gives_up(backend: str, name: str) -> None:
    """A name that exists with size 0 (its creator has not sized it yet,
    and never will) is refused after the same bounded wait."""
    import _posixshmem

    fd = _posixshmem.shm_open("/" + name, os.O_RDWR | os.O_CREAT | os.O_EXCL, mode=0o600)
    os.close(fd)
    code = (
        "import sys, fastshm\n"
        "try:\n"
        "    fastshm.Segment(sys.argv[1], 64, backend=sys.argv[2])\n"
        "except ValueError as e:\n"
        "    print(type(e).__name__)\n"
    )
    out = run_python(code, name, backend, timeout=30).stdout.decode()
    assert out.strip() in ("FormatError", "ValueError")
    assert os.stat(os.path.join(SHM_DIR, name)).st_size == 0



# -- names that hold something else, and corrupt queues: the same words from every route --

OPEN_EACH = r"""
import json, sys
import fastshm
from fastshm import _backend
name, kind = sys.argv[1], sys.argv[2]
cls = {"Queue": fastshm.Queue, "Segment": fastshm.Segment}[kind]
out = {}
for backend in sys.argv[3:]:
    for create in (None, False):
        try:
            cls(name, 4096, create=create, backend=backend).close()
            out[f"{backend} {create}"] = "opened"
        except Exception as e:
            out[f"{backend} {create}"] = f"{type(e).__name__}: {e}"
print(json.dumps(out))
"""


def _opened_by_each(name: str, kind: str) -> "dict[str, str]":
    import json

    from conftest import BACKENDS

    proc = run_python(OPEN_EACH, name, kind, *BACKENDS, timeout=60)
    return json.loads(proc.stdout)  # type: ignore[no-any-return]


@pytest.mark.skipif(not os.path.isdir(SHM_DIR) or not hasattr(os, "mkfifo"),
                    reason="makes a FIFO and a directory in /dev/shm")
@pytest.mark.parametrize("thing", ["fifo", "directory", "symlink"])
@pytest.mark.parametrize("kind", ["Queue", "Segment"])
def test_a_name_that_holds_no_shared_memory(name: str, thing: str, kind: str,
                                            tmp_path: Any) -> None:
    """A FIFO, a directory or a symbolic link under the name: every route
    refuses it at once with the same FormatError, which says what it is and
    how to remove it, and leaves it alone (opening a FIFO never blocks)."""
    path = os.path.join(SHM_DIR, name)
    if thing == "fifo":
        os.mkfifo(path, 0o600)
    elif thing == "directory":
        os.mkdir(path, 0o700)
    else:
        os.symlink(tmp_path / "elsewhere", path)
    try:
        said = _opened_by_each(name, kind)
        words = {"fifo": "is a FIFO (a named pipe) in /dev/shm, not shared memory",
                 "directory": "is a directory in /dev/shm, not shared memory",
                 "symlink": "is a symbolic link in /dev/shm, not shared memory"}[thing]
        remove = f"rmdir {path}" if thing == "directory" else f"fastshm delete {name}"
        first = next(iter(said.values()))
        assert first.startswith("FormatError: ") and words in first and remove in first, said
        assert set(said.values()) == {first}, said
        assert os.path.lexists(path) and not os.path.isfile(path)
    finally:
        if thing == "directory":
            os.rmdir(path)
        else:
            os.unlink(path)


@posix_only
def test_a_corrupt_queue_is_called_a_queue(name: str) -> None:
    """A queue whose head and tail are out of range: every route says the
    queue is corrupt (not "not a fastshm segment"), in the same words, and
    takes nothing."""
    import json

    from conftest import BACKENDS

    code = (
        "import json, sys, fastshm\n"
        "out = []\n"
        "for b in sys.argv[2:]:\n"
        "    q = fastshm.Queue(sys.argv[1], create=False, backend=b)\n"
        "    try:\n"
        "        q.get_nowait()\n"
        "    except fastshm.FormatError as e:\n"
        "        out.append(str(e))\n"
        "    q.close()\n"
        "print(json.dumps(out))\n"
    )
    for maker in BACKENDS:
        with fastshm.Queue(name, 4096, create=True, backend=maker) as q:
            q.put(b"kept")
        with fastshm.SharedMemory(name) as raw:
            assert raw.buf is not None
            C.U64.pack_into(raw.buf, C.Q_TAIL, 12)  # not a multiple of 8
        same_lock = [b for b in BACKENDS if (b == "python") == (maker == "python")]
        said = json.loads(run_python(code, name, *same_lock, timeout=60).stdout)
        assert len(said) == len(same_lock), said
        assert said[0].startswith(f"queue {name!r} is corrupt: its head and tail"), said
        assert "segment" not in said[0] and f"fastshm delete {name}" in said[0]
        assert set(said) == {said[0]}, said
        with fastshm.SharedMemory(name) as raw:
            assert raw.buf is not None and C.U64.unpack_from(raw.buf, C.Q_TAIL)[0] == 12
        fastshm.Queue(name, create=False, backend=maker).delete()

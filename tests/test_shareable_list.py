"""ShareableList and SharedMemoryManager as drop-ins for the stdlib's: the
same bytes, opened both ways in one process and across processes, bad input
refused with nothing changed, and CPython's own tests run against them."""

from __future__ import annotations

import functools
import math
import multiprocessing
import os
import pickle
import signal
import struct
import subprocess
import sys
import time
import unittest
from multiprocessing import managers as stdlib_managers
from multiprocessing import resource_tracker
from multiprocessing import shared_memory as stdlib_shm
from typing import Any, Callable, Iterator, List

import pytest
from conftest import SHM_DIR, backend_name, run_python, unlink_quietly

import fastshm
from fastshm import FormatError, ShareableList, SharedMemoryManager

# Every type a ShareableList holds, at its edges: the stdlib's test values,
# empty and exactly-a-slot text, NULs inside, non-ASCII text that fits the
# stdlib's slot, the int64 limits, infinities.
ITEMS: List[Any] = [
    "howdy", b"HoWdY", -273.154, 100, None, True, 42, False, 0, -2**63, 2**63 - 1,
    1e308, -math.inf, "", b"", "encodés", "x" * 15, b"\x00mid\x00dle", "ünïcødé ✓",
    b"\xff" * 40,
]
# What each item is set to in the other direction: every type into every
# other type's slot where it fits.
REPLACEMENTS: List[Any] = [
    42, "abc", None, b"bytes!", 2.5, "text", False, True, -1, "neg", b"pos",
    None, 7, 1.0, 0.0, "enc", b"y" * 15, "mid", -5, "z" * 40,
]


def same(a: List[Any], b: List[Any]) -> bool:
    """Equal item by item, with the same types (True is not 1 here)."""
    return len(a) == len(b) and all(
        type(x) is type(y) and (x == y or (x != x and y != y)) for x, y in zip(a, b))


def stdlib_open(name: str) -> Any:
    """The stdlib's ShareableList attached to ``name``, without leaving it
    registered with the resource tracker (which would unlink it when this
    process ends)."""
    sl = stdlib_shm.ShareableList(name=name)
    resource_tracker.unregister(sl.shm._name, "shared_memory")
    return sl


def stdlib_make(items: List[Any], name: str) -> Any:
    """A stdlib ShareableList made under ``name``, not left registered."""
    sl = stdlib_shm.ShareableList(items, name=name)
    resource_tracker.unregister(sl.shm._name, "shared_memory")
    return sl


def raw(sl: Any) -> bytes:
    return bytes(sl.shm.buf[:sl.shm.size])


def exists(name: str) -> bool:
    return os.path.exists(os.path.join(SHM_DIR, name))


@pytest.fixture
def made() -> Iterator[Callable[..., ShareableList]]:
    """fastshm.ShareableList(...), each one closed and unlinked afterwards."""
    lists: List[ShareableList] = []

    def make(*args: Any, **kwargs: Any) -> ShareableList:
        sl = ShareableList(*args, **kwargs)
        lists.append(sl)
        return sl

    yield make
    for sl in lists:
        sl.shm.close()
        unlink_quietly(sl.shm.name)


# ---- the same bytes as the stdlib's ----


def test_same_bytes_as_stdlib(backend: str, shm_name: Callable[..., str]) -> None:
    """A list made by either class has the same bytes, byte for byte."""
    ours = ShareableList(ITEMS, name=shm_name(), backend=backend)
    theirs = stdlib_make(ITEMS, shm_name())
    try:
        assert ours.shm.backend == backend_name(backend)
        assert ours.shm.size == theirs.shm.size
        assert raw(ours) == raw(theirs)
        assert ours.format == theirs.format
        empty = ShareableList(name=shm_name(), sequence=[], backend=backend)
        assert raw(empty) == struct.pack("qq", 0, 0)
        empty.shm.close()
    finally:
        ours.shm.close()
        theirs.shm.close()


@pytest.mark.parametrize("maker", ["stdlib", "fastshm"])
def test_open_the_others_list(backend: str, name: str, maker: str) -> None:
    """Made by one class, opened by the other: every item read as it was
    stored, every item set by the opener read back by the maker, with its
    new type."""
    if maker == "stdlib":
        first: Any = stdlib_make(ITEMS, name)
        second: Any = ShareableList(name=name, backend=backend)
    else:
        first = ShareableList(ITEMS, name=name, backend=backend)
        second = stdlib_open(name)
    try:
        assert same(list(second), ITEMS)
        assert len(second) == len(ITEMS) and second.format == first.format
        for i, value in enumerate(REPLACEMENTS):
            second[i] = value
        assert same(list(first), REPLACEMENTS)
        for i, value in enumerate(ITEMS):
            first[i] = value
        assert same(list(second), ITEMS)
        assert repr(first) == repr(second)
    finally:
        second.shm.close()
        first.shm.close()


@pytest.mark.parametrize("maker", ["stdlib", "fastshm"])
def test_open_the_others_list_in_another_process(backend: str, name: str, maker: str) -> None:
    """The same, with the opener in a separate process."""
    child = (
        "import sys, pickle\n"
        "from multiprocessing import resource_tracker, shared_memory\n"
        "import fastshm\n"
        "name, backend, opener = sys.argv[1:4]\n"
        "if opener == 'fastshm':\n"
        "    sl = fastshm.ShareableList(name=name, backend=backend)\n"
        "else:\n"
        "    sl = shared_memory.ShareableList(name=name)\n"
        "    resource_tracker.unregister(sl.shm._name, 'shared_memory')\n"
        "print(pickle.dumps(list(sl)).hex())\n"
        "for i, v in enumerate(pickle.loads(bytes.fromhex(sys.argv[4]))):\n"
        "    sl[i] = v\n"
        "sl.shm.close()\n"
    )
    opener = "fastshm" if maker == "stdlib" else "stdlib"
    maker_list: Any = (stdlib_make(ITEMS, name) if maker == "stdlib"
                       else ShareableList(ITEMS, name=name, backend=backend))
    try:
        out = run_python(child, name, backend, opener, pickle.dumps(REPLACEMENTS).hex(),
                         timeout=60).stdout
        assert same(pickle.loads(bytes.fromhex(out.decode())), ITEMS)
        assert same(list(maker_list), REPLACEMENTS)
    finally:
        maker_list.shm.close()


def test_non_ascii_text_longer_than_the_stdlib_slot(backend: str, name: str) -> None:
    """'€' * 8 is 8 characters and 24 bytes: the stdlib's 16-byte slot would
    cut it short; fastshm gives it a slot it fits, which the stdlib reads."""
    sl = ShareableList(["€" * 8, 1], name=name, backend=backend)
    try:
        assert sl.format == "32sq"
        other = stdlib_open(name)
        assert list(other) == ["€" * 8, 1]
        other.shm.close()
    finally:
        sl.shm.close()


def test_pickle(backend: str, name: str) -> None:
    """Pickles by name and backend; the stdlib's pickle shape,
    partial(cls, name=...), loads too; and in a separate process."""
    sl = ShareableList([1, "two"], name=name, backend=backend)
    try:
        copy = pickle.loads(pickle.dumps(sl))
        assert type(copy) is ShareableList and copy is not sl
        assert copy.shm.backend == backend_name(backend)
        copy[0] = 11
        assert sl[0] == 11
        copy.shm.close()
        copy = functools.partial(ShareableList, name=name)()
        assert list(copy) == [11, "two"]
        copy.shm.close()
        child = ("import pickle, sys\n"
                 "sl = pickle.loads(bytes.fromhex(sys.argv[1]))\n"
                 "print(sl.shm.backend, list(sl)); sl[1] = 'owt'; sl.shm.close()\n")
        out = run_python(child, pickle.dumps(sl).hex(), timeout=60).stdout.decode()
        assert out.strip() == f"{backend_name(backend)} [11, 'two']"
        assert sl[1] == "owt"
    finally:
        sl.shm.close()


def test_list_methods_as_stdlib(backend: str, shm_name: Callable[..., str]) -> None:
    items = [1, True, "a", b"a", None, 1.0, "a"]
    ours = ShareableList(items, name=shm_name(), backend=backend)
    theirs = stdlib_make(items, shm_name())
    try:
        for value in (1, True, "a", b"a", None, 2, "zz"):
            assert ours.count(value) == theirs.count(value)
            try:
                expected: Any = theirs.index(value)
            except ValueError as e:
                with pytest.raises(ValueError, match="not in this container"):
                    ours.index(value)
                assert str(e) == f"{value!r} not in this container"
            else:
                assert ours.index(value) == expected
        assert [ours[i] for i in range(-7, 7)] == [theirs[i] for i in range(-7, 7)]
        assert repr(ours) == f"ShareableList({items!r}, name={ours.shm.name!r})"
        assert ShareableList[int].__origin__ is ShareableList
    finally:
        ours.shm.close()
        theirs.shm.close()


# ---- bad input: a clear error, nothing changed ----


def test_bad_sets_change_nothing(backend: str, name: str) -> None:
    sl = ShareableList(["howdy", b"HoWdY", 1.5, 100, None, True], name=name, backend=backend)
    ref = stdlib_open(name)
    try:
        before = raw(sl)
        cases = [
            (0, "far too many", ValueError, "exceeds available storage: 12 bytes"),
            (1, b"123456789", ValueError, "exceeds available storage"),
            (0, "encodées", ValueError, "exceeds available storage"),  # 9 bytes of UTF-8
            (3, "123456789", ValueError, "exceeds available storage"),  # an int's 8 bytes
            (3, 2**63, OverflowError, "does not fit the 64-bit slot"),
            (4, -2**63 - 1, struct.error, "does not fit the 64-bit slot"),
            (2, [1], TypeError, "not list"),
            (2, 1 + 2j, KeyError, "not complex"),
            (5, bytearray(b"x"), TypeError, "not bytearray"),
            (6, 0, IndexError, "assignment index out of range: 6 for a ShareableList of 6"),
            (-7, 0, IndexError, "assignment index out of range"),
            ("0", 0, TypeError, "indices must be integers, not str"),
            (slice(0, 1), [0], TypeError, "indices must be integers, not slice"),
        ]
        for position, value, error, message in cases:
            with pytest.raises(error, match=message.replace("(", r"\(")):
                sl[position] = value
            assert raw(sl) == before, (position, value)
        for position in (6, -7, 2**70):
            with pytest.raises(IndexError, match="index out of range"):
                sl[position]
        with pytest.raises(TypeError, match="indices must be integers"):
            sl[1.0]  # type: ignore[index]
        assert list(sl) == ["howdy", b"HoWdY", 1.5, 100, None, True]
        # The stdlib raises the same class for the same mistakes (last: its
        # struct.error for 2**63 comes after it has written the item).
        for position, value, error in [(0, "far too many", ValueError), (2, [1], KeyError),
                                       (6, 0, IndexError), (3, 2**63, struct.error)]:
            with pytest.raises(error):
                ref[position] = value
    finally:
        ref.shm.close()
        sl.shm.close()


@pytest.mark.parametrize("items, error, message", [
    ([1, [2]], TypeError, "not list"),
    ([{}], KeyError, "not dict"),
    ([2**64], OverflowError, "does not fit"),
    ([b"x" * 10_000_000], ValueError, "holds at most 9999991 bytes"),
])
def test_bad_items_make_no_block(backend: str, name: str, items: List[Any],
                                 error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        ShareableList(items, name=name, backend=backend)
    assert not exists(name)


def test_largest_text_item(backend: str, name: str) -> None:
    sl = ShareableList([b"x" * 9_999_991], name=name, backend=backend)
    try:
        assert sl.format == "9999992s" and sl[0] == b"x" * 9_999_991
    finally:
        sl.shm.close()


def test_not_a_list(backend: str, name: str) -> None:
    with fastshm.SharedMemory(name, create=True, size=64, backend=backend) as block:
        assert block.buf is not None
        block.buf[:8] = struct.pack("q", 1000)
        with pytest.raises(FormatError, match="is not a ShareableList: its length field"):
            ShareableList(name=name, backend=backend)
        block.buf[:24] = struct.pack("qqq", 1, 0, 40)
        with pytest.raises(FormatError, match="slot offsets"):
            ShareableList(name=name, backend=backend)
        block.buf[:64] = bytes(64)
        block.buf[:24] = struct.pack("qqq", 1, 0, 8)
        block.buf[32:40] = b"zz\0\0\0\0\0\0"  # not a format
        sl = ShareableList(name=name, backend=backend)
        with pytest.raises(FormatError, match="has format 'zz' with type code 0"):
            sl[0]
        sl[0] = 5  # setting writes a good format
        assert sl[0] == 5
        sl.shm.close()
    block.unlink()
    with pytest.raises(FileNotFoundError):
        ShareableList(name=name, backend=backend)


def test_closed(backend: str, name: str) -> None:
    sl = ShareableList([1], name=name, backend=backend)
    sl.shm.close()
    for call in (lambda: sl[0], lambda: sl.__setitem__(0, 2), lambda: sl.format):
        with pytest.raises(ValueError, match="is closed"):
            call()
    assert len(sl) == 1


def test_untracked_unless_asked(backend: str, shm_name: Callable[..., str],
                                monkeypatch: pytest.MonkeyPatch) -> None:
    calls: List[Any] = []
    monkeypatch.setattr(resource_tracker, "register", lambda *a: calls.append(a))
    monkeypatch.setattr(resource_tracker, "unregister", lambda *a: calls.append(a))
    a, b = shm_name(), shm_name()
    ShareableList([1], name=a, backend=backend).shm.close()
    ShareableList(name=a, backend=backend).shm.close()
    assert calls == []
    sl = ShareableList([1], name=b, backend=backend, track=True)
    assert calls == [("/" + b, "shared_memory")]
    sl.shm.close()
    sl.shm.unlink()
    assert calls == [("/" + b, "shared_memory")] * 2


# ---- SharedMemoryManager ----


def test_manager_hands_out_fastshm_objects_and_unlinks_them(backend: str) -> None:
    with SharedMemoryManager(backend=backend) as smm:
        sl = smm.ShareableList(ITEMS)
        shm = smm.SharedMemory(100)
        assert type(sl) is ShareableList and type(shm) is fastshm.SharedMemory
        assert sl.shm.backend == shm.backend == backend_name(backend)
        names = [sl.shm.name, shm.name]
        assert all(exists(n) for n in names)
        other = stdlib_open(sl.shm.name)
        assert same(list(other), ITEMS)
        other.shm.close()
        sl.shm.close()
    assert not any(exists(n) for n in names)


@pytest.mark.parametrize("method", ["spawn", "forkserver"])
def test_manager_with_other_start_methods(method: str) -> None:
    """Its server starts by spawn (macOS's and Windows' default) and
    forkserver too, and still unlinks at the end."""
    if method not in multiprocessing.get_all_start_methods():
        pytest.skip(f"no {method} start method here")
    with SharedMemoryManager(ctx=multiprocessing.get_context(method)) as smm:
        sl = smm.ShareableList([1, "x"])
        assert list(sl) == [1, "x"] and exists(sl.shm.name)
        name = sl.shm.name
        sl.shm.close()
    assert not exists(name)


def test_manager_not_started() -> None:
    smm = SharedMemoryManager()
    with pytest.raises(ValueError, match="not running: call start"):
        smm.SharedMemory(10)
    with pytest.raises(ValueError, match="not running"):
        smm.ShareableList([1])
    with pytest.raises(ValueError, match="backend must be one of"):
        SharedMemoryManager(backend="nonesuch")


def test_manager_unlinks_the_rest_when_one_is_gone_already() -> None:
    """The stdlib's stops at a block someone unlinked, leaving the rest."""
    smm = SharedMemoryManager()
    smm.start()
    try:
        first = smm.SharedMemory(16)
        rest = [smm.ShareableList([i]) for i in range(3)]
        first.close()
        first.unlink()
        names = [sl.shm.name for sl in rest]
    finally:
        smm.shutdown()
    assert not any(exists(n) for n in names)


def test_manager_blocks_go_when_the_process_exits_without_shutdown() -> None:
    """No shutdown() and no with block: the blocks go when the process
    exits, with nothing on stderr (no resource tracker complaints)."""
    child = (
        "import fastshm\n"
        "smm = fastshm.SharedMemoryManager(); smm.start()\n"
        "sl = smm.ShareableList(range(10)); shm = smm.SharedMemory(64)\n"
        "print(sl.shm.name, shm.name, flush=True)\n"
        "raise SystemExit(3)\n"
    )
    proc = run_python(child, timeout=60, check=False)
    names = proc.stdout.decode().split()
    try:
        assert proc.returncode == 3 and len(names) == 2, proc.stderr
        assert not any(exists(n) for n in names)
        assert proc.stderr == b""
    finally:
        for n in names:
            unlink_quietly(n)


@pytest.mark.skipif(os.name != "posix", reason="the resource tracker is POSIX only")
def test_manager_blocks_go_when_its_server_ends_after_a_sigkill() -> None:
    """The process that started the manager is killed outright: its server
    lives on with the blocks, and when the server is stopped the resource
    tracker unlinks them, as with the stdlib's manager."""
    child = (
        "import os, signal, fastshm\n"
        "smm = fastshm.SharedMemoryManager(); smm.start()\n"
        "sl = smm.ShareableList([1, 'a']); shm = smm.SharedMemory(64)\n"
        "print(smm._process.pid, sl.shm.name, shm.name, flush=True)\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    # Not run_python: the server keeps the child's stdout open, so read one
    # line, not to the end.
    proc = subprocess.Popen([sys.executable, "-c", child], stdout=subprocess.PIPE)
    assert proc.stdout is not None
    with proc.stdout:
        pid, *names = proc.stdout.readline().decode().split()
    try:
        assert proc.wait(timeout=60) == -signal.SIGKILL and len(names) == 2
        time.sleep(0.5)
        assert all(exists(n) for n in names)  # the server still holds them
        os.kill(int(pid), signal.SIGTERM)
        deadline = time.monotonic() + 30
        while any(exists(n) for n in names) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(exists(n) for n in names)
    finally:
        try:
            os.kill(int(pid), signal.SIGKILL)
        except ProcessLookupError:
            pass
        for n in names:
            unlink_quietly(n)


def test_manager_shutdown_is_quiet() -> None:
    """fastshm's version of CPython's _reuses_resource_tracker test, which
    can only run the stdlib's class (see SKIPS)."""
    child = (
        "from fastshm import SharedMemoryManager\n"
        "smm = SharedMemoryManager(); smm.start()\n"
        "sl = smm.ShareableList(range(10)); print(sl.shm.name)\n"
        "smm.shutdown()\n"
    )
    proc = run_python(child, timeout=60)
    assert proc.stderr == b""
    assert not exists(proc.stdout.decode().strip())


def test_manager_objects_in_another_process(backend: str) -> None:
    with SharedMemoryManager(backend=backend) as smm:
        sl = smm.ShareableList([0, "x" * 10])
        child = ("import pickle, sys\n"
                 "sl = pickle.loads(bytes.fromhex(sys.argv[1]))\n"
                 "sl[0] = 123; sl[1] = 'from child'; sl.shm.close()\n")
        run_python(child, pickle.dumps(sl).hex(), timeout=60)
        assert list(sl) == [123, "from child"]
        # The child exiting unlinked nothing: the manager alone does.
        assert exists(sl.shm.name)
        name = sl.shm.name
        sl.shm.close()
    assert not exists(name)


# ---- CPython's own tests, with fastshm's classes in place of the stdlib's ----

try:
    from test import _test_multiprocessing as cpython_tests
except ImportError:  # an interpreter without its test package
    cpython_tests = None

# Why each of CPython's _TestSharedMemory tests that cannot apply is skipped.
SKIPS = {
    "test_shared_memory_basics":
        "asserts the private attribute _name is the POSIX name with its leading "
        "'/' ('/psm_...'); fastshm.SharedMemory keeps it without (its public "
        "name is the stdlib's: test_shared_memory.py checks it)",
    "test_shared_memory_recreate":
        "asserts the private attribute _name is '/psm_...', as "
        "test_shared_memory_basics does",
    "test_shared_memory_cleaned_after_process_termination":
        "its child (python -E -c) makes the block with the stdlib's class and "
        "the test checks that the stdlib's resource tracker removes it; "
        "fastshm registers nothing with the tracker by design, and the test's "
        "final resource_tracker.unregister() of a name fastshm never registered "
        "makes the tracker print a KeyError",
    "test_shared_memory_SharedMemoryManager_reuses_resource_tracker":
        "runs 'from multiprocessing.managers import SharedMemoryManager' in a "
        "fresh isolated interpreter (python -I -c), which the swap cannot reach, "
        "so it would pass on the stdlib's class alone; "
        "test_manager_shutdown_is_quiet is its fastshm form",
}


class RecordingShareableList(ShareableList):
    """fastshm's class, noting each block made so that a failing CPython
    test leaves none behind."""

    names: List[str] = []

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.shm.created:
            self.names.append(self.shm.name)


class RecordingSharedMemory(fastshm.SharedMemory):
    names: List[str] = []

    def _open(self, *args: Any) -> None:
        super()._open(*args)
        if self.created:
            self.names.append(self.name)


def cpython_test_names() -> List[str]:
    if cpython_tests is None:
        return []
    return sorted(n for n in dir(cpython_tests._TestSharedMemory) if n.startswith("test_"))


@pytest.mark.skipif(cpython_tests is None, reason="this Python has no test package")
@pytest.mark.parametrize("method", cpython_test_names())
def test_cpython_shared_memory_tests(method: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """CPython's own tests of shared_memory (ShareableList, SharedMemory,
    SharedMemoryManager), run with multiprocessing.shared_memory.ShareableList,
    .SharedMemory and multiprocessing.managers.SharedMemoryManager replaced
    by fastshm's."""
    if method in SKIPS:
        pytest.skip(SKIPS[method])
    monkeypatch.setattr(stdlib_shm, "ShareableList", RecordingShareableList)
    monkeypatch.setattr(stdlib_shm, "SharedMemory", RecordingSharedMemory)
    monkeypatch.setattr(stdlib_managers, "SharedMemoryManager", SharedMemoryManager)
    monkeypatch.setattr(RecordingShareableList, "names", [])
    monkeypatch.setattr(RecordingSharedMemory, "names", [])

    class FastshmSharedMemoryTests(cpython_tests._TestSharedMemory,  # type: ignore[misc]
                                   cpython_tests.ProcessesMixin, unittest.TestCase):
        pass

    result = unittest.TestResult()
    start = time.monotonic()
    try:
        unittest.TestSuite([FastshmSharedMemoryTests(method)]).run(result)
    finally:
        for name in RecordingShareableList.names + RecordingSharedMemory.names:
            unlink_quietly(name)
    assert time.monotonic() - start < 120
    problems = result.errors + result.failures
    assert not problems, "\n".join(text for _, text in problems)
    assert not result.skipped, result.skipped
    assert result.testsRun == 1


def test_cpython_tests_were_found() -> None:
    """The parametrisation above sees CPython's ShareableList and manager
    tests (an empty list would pass without running any)."""
    if cpython_tests is None:
        pytest.skip("this Python has no test package")
    names = set(cpython_test_names())
    assert {
        "test_shared_memory_ShareableList_basics",
        "test_shared_memory_ShareableList_pickling",
        "test_shared_memory_ShareableList_pickling_dead_object",
        "test_shared_memory_SharedMemoryManager_basics",
        "test_shared_memory_SharedMemoryServer_ignores_sigint",
    } <= names
    assert set(SKIPS) <= names


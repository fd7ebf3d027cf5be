"""Fixtures shared by the whole suite.

Every test that takes ``backend`` runs once per importable backend; names
are random and every segment a test makes is unlinked afterwards, and the
session fails if anything is left in /dev/shm.

The suite runs in parallel (pytest-xdist, ``-n auto`` in pyproject.toml):
each worker is its own process with its own name prefix, so the check
above holds per worker.
"""

from __future__ import annotations

import os
import queue
import secrets
import struct
import subprocess
import sys
import threading
import time
from typing import Any, Callable, Iterator, List, Tuple

import pytest

import fastshm
from fastshm import _backend

# Each route to the C core, and the python backend: "native" is the default
# binding (the C-API one on CPython, cffi on PyPy); "native-cffi" runs the
# suite through cffi on CPython too.
if _backend.native_error() is not None:
    BACKENDS = ["python"]
elif _backend.capi_error() is None:
    BACKENDS = ["native", "native-cffi", "python"]
else:
    BACKENDS = ["native", "python"]
SHM_DIR = "/dev/shm"
# Per session, so suites running side by side never judge each other's names.
PREFIX = f"fshmtest{os.getpid()}_"


def make_name(tag: str = "") -> str:
    """A fresh random segment name, recognisable as the suite's."""
    return f"{PREFIX}{tag}{secrets.token_hex(6)}"


def shm_entries() -> List[str]:
    if not os.path.isdir(SHM_DIR):
        return []
    return sorted(n for n in os.listdir(SHM_DIR) if n.startswith(PREFIX))


def unlink_quietly(name: str) -> None:
    try:
        _backend.resolve("python").unlink(name)
    except OSError:
        pass


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    """Each backend in turn, by name."""
    return request.param  # type: ignore[no-any-return]


def backend_name(backend: str) -> str:
    """What ``Segment.backend`` says for a ``backend=`` choice."""
    return backend.split("-")[0]


@pytest.fixture
def other_backend(backend: str) -> str:
    """The other backend: python for either native binding, native for
    python (the same one when only one is importable)."""
    others = [b for b in BACKENDS if backend_name(b) != backend_name(backend)]
    return others[0] if others else backend


@pytest.fixture
def shm_name() -> Iterator[Callable[..., str]]:
    """A factory of fresh names; whatever it named is unlinked afterwards."""
    made: List[str] = []

    def factory(tag: str = "") -> str:
        name = make_name(tag)
        made.append(name)
        return name

    yield factory
    for name in made:
        unlink_quietly(name)


@pytest.fixture
def name(shm_name: Callable[..., str]) -> str:
    """One fresh name, unlinked after the test."""
    return shm_name()


def run_python(code: str, *args: str, timeout: float = 60, env: dict | None = None,
               check: bool = True, **kw: object) -> subprocess.CompletedProcess:
    """Run ``code`` in a separate Python process, bounded by ``timeout``."""
    full_env = dict(os.environ)
    if env:
        full_env.update(env)
    proc = subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, timeout=timeout,
        env=full_env, **kw,  # type: ignore[arg-type]
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"child exited with {proc.returncode}\nstdout: {proc.stdout!r}\n"
            f"stderr: {proc.stderr.decode(errors='replace')}"
        )
    return proc


def header_word(name: str, offset: int, fmt: str = "<I") -> int:
    """A word of the header of the object called ``name`` (docs/FORMAT.md):
    a waiters count, say, read through a raw mapping of it whichever binding
    made it."""
    with fastshm.SharedMemory(name) as raw:
        return struct.unpack_from(fmt, raw.buf, offset)[0]  # type: ignore[no-any-return]


def drain(q: fastshm.Queue) -> List[bytes]:
    """Every message queued now, without waiting."""
    out: List[bytes] = []
    while True:
        try:
            out.extend(q.get_many(block=False))
        except queue.Empty:
            return out


def in_thread(fn: Callable[[], Any]) -> Tuple[threading.Thread, List[object]]:
    """fn() in a daemon thread, started; what it returns or raises lands in
    the list, for the test's thread to check."""
    box: List[object] = []

    def run() -> None:
        try:
            box.append(fn())
        except BaseException as e:  # noqa: BLE001 -- reported in the test's thread
            box.append(e)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, box


def close_ends_blocked_call(obj: Any, call: Callable[[], Any]) -> BaseException:
    """call() blocks in another thread; obj.close() from this one must end it
    within 1 s with a ValueError that says obj is closed, which is returned."""
    t, box = in_thread(call)
    time.sleep(0.2)
    assert t.is_alive()  # blocked, and the GIL free for this thread
    start = time.monotonic()
    obj.close()
    t.join(5)
    assert not t.is_alive() and time.monotonic() - start < 1
    assert len(box) == 1 and isinstance(box[0], ValueError), box
    assert "closed" in str(box[0])
    return box[0]


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """``-n auto``: two workers per core, at most 16.  Most tests spend their
    time waiting on other processes (a child's start, a timeout running
    out, a blocked call woken), so one worker per core leaves the cores
    idle a third of the time."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        cores = os.cpu_count() or 1
    return min(2 * cores, 16)


# Tests that run one after another on one worker, given out first (the
# longest): the two Wine modules (one build and one prefix per module, never
# two wineservers starting under each other's load), and the sanitizer
# tests sharing a harness compiled once per module (its queue_ and channel_
# tests; the others build their own and run anywhere).
WINE_MODULES = ("test_windows.py", "test_windows_channel.py")
FIRST = ("test_sanitizers.py", *WINE_MODULES)


def _module_of(nodeid: str) -> str:
    return nodeid.partition("::")[0].rsplit("/", 1)[-1]


def _group_of(nodeid: str) -> "str | None":
    module, test = _module_of(nodeid), nodeid.partition("::")[2]
    if module in WINE_MODULES:
        return "wine"
    if module == "test_sanitizers.py":
        for part in ("queue", "channel"):
            if test.startswith(f"test_{part}_"):
                return f"sanitizers-{part}"
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: List[pytest.Item]) -> None:
    """The long modules' tests first, so that their runs start while the
    rest of the suite is shared out around them (a stable sort: each
    module's tests keep their order)."""
    def rank(item: pytest.Item) -> int:
        module = _module_of(item.nodeid)
        return FIRST.index(module) if module in FIRST else len(FIRST)

    items.sort(key=rank)


def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """Every test its own unit of work, but a group's tests one unit, in
    their order.  (xdist's own ``xdist_group`` mark works by renaming the
    tests; with pytest 9.2 and pytest-xdist 3.8 it left a group's tests
    spread over the workers.)"""
    from xdist.scheduler import LoadScopeScheduling

    class SerialGroups(LoadScopeScheduling):  # type: ignore[misc]
        def _split_scope(self, nodeid: str) -> str:
            return _group_of(nodeid) or nodeid

    return SerialGroups(config, log)


@pytest.fixture(scope="session", autouse=True)
def nothing_left_behind() -> Iterator[None]:
    """Fail the session if any test leaves a segment of its own in /dev/shm."""
    before = set(shm_entries())
    yield
    left = sorted(set(shm_entries()) - before)
    for entry in left:
        unlink_quietly(entry)
    assert not left, f"tests left segments behind in {SHM_DIR}: {left}"


def pytest_report_header(config: pytest.Config) -> str:
    err = _backend.native_error()
    return (
        f"fastshm {fastshm.__version__}: default backend {fastshm.backend}; "
        f"testing backends {BACKENDS}" + (f" (native unavailable: {err})" if err else "")
    )

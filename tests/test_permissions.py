"""Permission bits: applied exactly as given, and enforced against another user."""

from __future__ import annotations

import functools
import os
import stat
from collections.abc import Iterator

import pytest
from conftest import BACKENDS, SHM_DIR, run_python

import fastshm

pytestmark = [
    pytest.mark.skipif(not os.path.isdir(SHM_DIR), reason="needs /dev/shm"),
    pytest.mark.skipif(
        not hasattr(os, "geteuid") or os.geteuid() != 0,
        reason="needs root, to run a child process as the user 'nobody'",
    ),
]

# The child gives up root before it imports fastshm.  The interpreter's own
# library may sit where 'nobody' cannot read (a pyenv build under /root), so
# the child first loads the standard modules that fastshm imports (the list
# comes from a root child), then finds fastshm itself where this process did.
AS_NOBODY = r"""
import importlib, os, pwd, sys
kind, name, src, backend, needed = sys.argv[1:6]
for mod in needed.split(","):
    importlib.import_module(mod)
nobody = pwd.getpwnam("nobody")
os.setgroups([])
os.setgid(nobody.pw_gid)
os.setuid(nobody.pw_uid)
assert "fastshm" not in sys.modules
sys.path.insert(0, src)
import fastshm
try:
    if kind == "segment":
        seg = fastshm.Segment(name, create=False, backend=backend)
        seg.store(b"from nobody")
        print("attached", seg.load().decode())
    else:
        sm = fastshm.SharedMemory(name, backend=backend)
        sm.buf[:6] = b"nobody"
        print("attached", bytes(sm.buf[:6]).decode())
except PermissionError as e:
    print("PermissionError", e.errno)
"""


@pytest.fixture
def wide_umask() -> Iterator[None]:
    """A umask that would narrow the bits if fastshm let it."""
    old = os.umask(0o077)
    try:
        yield
    finally:
        os.umask(old)


def file_mode(name: str) -> int:
    return stat.S_IMODE(os.stat(os.path.join(SHM_DIR, name)).st_mode)


@functools.cache
def modules_fastshm_needs() -> str:
    """Comma-separated names of what fastshm and its backends load besides
    themselves."""
    code = (
        "import sys\n"
        "before = set(sys.modules)\n"
        "import fastshm._backend\n"
        "for b in sys.argv[1:]:\n"
        "    fastshm._backend.resolve(b)\n"
        "print(','.join(sorted(m for m in set(sys.modules) - before\n"
        "                      if m.split('.')[0] != 'fastshm')))\n"
    )
    return run_python(code, *BACKENDS, timeout=30).stdout.decode().strip()


def as_nobody(kind: str, name: str, backend: str) -> str:
    src = os.path.dirname(os.path.dirname(os.path.abspath(fastshm.__file__)))
    out = run_python(AS_NOBODY, kind, name, src, backend, modules_fastshm_needs(),
                     timeout=30).stdout.decode()
    return out.strip()


def make(kind: str, name: str, backend: str, **mode: int) -> object:
    if kind == "segment":
        return fastshm.Segment(name, 64, create=True, backend=backend, **mode)
    return fastshm.SharedMemory(name, create=True, size=64, backend=backend, **mode)


@pytest.mark.parametrize("kind", ["segment", "shared_memory"])
def test_default_mode_keeps_others_out(backend: str, other_backend: str, name: str,
                                       kind: str, wide_umask: None) -> None:
    obj = make(kind, name, backend)
    try:
        assert file_mode(name) == 0o600
        assert as_nobody(kind, name, other_backend) == "PermissionError 13"
    finally:
        obj.close()  # type: ignore[attr-defined]


@pytest.mark.parametrize("kind", ["segment", "shared_memory"])
def test_mode_666_lets_others_in(backend: str, other_backend: str, name: str, kind: str,
                                 wide_umask: None) -> None:
    obj = make(kind, name, backend, mode=0o666)
    try:
        assert file_mode(name) == 0o666
        assert as_nobody(kind, name, other_backend) == (
            "attached from nobody" if kind == "segment" else "attached nobody"
        )
    finally:
        obj.close()  # type: ignore[attr-defined]
    if kind == "segment":
        with fastshm.Segment(name, create=False, backend=backend) as seg:
            assert seg.load() == b"from nobody"


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o400, 0o700, 0o777])
def test_mode_is_applied_exactly(backend: str, name: str, mode: int,
                                 wide_umask: None) -> None:
    with fastshm.Segment(name, 64, create=True, backend=backend, mode=mode):
        assert file_mode(name) == mode


def test_open_or_create_mode(backend: str, name: str, wide_umask: None) -> None:
    with fastshm.Segment(name, 64, backend=backend, mode=0o660) as seg:
        assert seg.created
        assert file_mode(name) == 0o660
        # Attaching does not change the bits of an existing name.
        with fastshm.Segment(name, 64, backend=backend, mode=0o666) as other:
            assert not other.created
            assert file_mode(name) == 0o660

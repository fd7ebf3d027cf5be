"""The python backend's process identity and liveness: the id this process
writes into lock words (the same word the C core uses: its pid, and its pid
namespace on Linux), and whether the process a word names is dead (as
fshm_owner_dead in map_posix.c and map_win32.c).  A forked child forgets its
parent's id."""

from __future__ import annotations

import os
import sys

from . import _common as C

if C.WINDOWS:
    import _winapi

# ---- process identity for the writer lock (the same word the C core uses) ----

_self_id = 0


def _forget_id() -> None:
    global _self_id
    _self_id = 0


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_id)


def self_id() -> int:
    global _self_id
    if not _self_id:
        tag = 0
        if sys.platform.startswith("linux"):
            try:
                tag = os.stat("/proc/self/ns/pid").st_ino & 0xFFFFFFFF
            except OSError:
                pass
        _self_id = (tag << 32) | (os.getpid() & 0xFFFFFFFF)
    return _self_id


def owner_dead(owner: int) -> int:
    pid = owner & 0xFFFFFFFF
    if pid == 0 or (owner >> 32) != (self_id() >> 32):
        return -1
    if sys.platform == "win32":  # spelled so that type checkers follow it
        return _owner_dead_windows(pid)
    if pid > 0x7FFFFFFF:
        # Not a pid (pid_t is signed: fshm_owner_dead sees it <= 0), and
        # os.kill would raise OverflowError on it: a word nobody can judge.
        return -1
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return 1
    except PermissionError:
        return 0
    return 1 if _is_zombie(pid) else 0


if sys.platform == "win32":

    def _owner_dead_windows(pid: int) -> int:
        """As fshm_owner_dead in map_win32.c: a process object is signalled once
        its process has exited (the exit code alone could be STILL_ACTIVE)."""
        query_limited_information, synchronize = 0x1000, 0x00100000
        try:
            h = _winapi.OpenProcess(query_limited_information | synchronize, False, pid)
        except OSError as e:
            # ERROR_INVALID_PARAMETER: no process has that id; ERROR_ACCESS_DENIED:
            # one does, owned by someone we may not inspect.
            return {87: 1, 5: 0}.get(getattr(e, "winerror", 0) or 0, -1)
        try:
            waited = _winapi.WaitForSingleObject(h, 0)
        finally:
            _winapi.CloseHandle(h)
        if waited == _winapi.WAIT_OBJECT_0:
            return 1
        return 0 if waited == _winapi.WAIT_TIMEOUT else -1


def _is_zombie(pid: int) -> bool:
    """Killed but not yet reaped by its parent: kill(0) still succeeds, but
    /proc says Z (or X) and no thread of it is left (as in map_posix.c)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return False
    state = stat[stat.rfind(b")") + 2 : stat.rfind(b")") + 3]
    if state not in (b"Z", b"X"):
        return False
    try:
        return len(os.listdir(f"/proc/{pid}/task")) <= 1
    except OSError:
        return True

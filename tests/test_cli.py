"""The ``fastshm`` command, run as a separate process each time."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from typing import Callable, List

import pytest

from fastshm import Segment


def cli(*args: str, backend: str, input: bytes = b"", timeout: float = 60,
        ) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "fastshm", "--backend", backend, *args],
        input=input, capture_output=True, timeout=timeout,
    )


def assert_clean_error(proc: subprocess.CompletedProcess, *words: str) -> None:
    """Exit status 1, one line on stderr naming the problem, no traceback."""
    err = proc.stderr.decode()
    assert proc.returncode == 1, (proc.returncode, err)
    assert "Traceback" not in err
    assert err.startswith("fastshm: error: ") and err.count("\n") == 1, err
    for w in words:
        assert w in err, (w, err)


def test_p1_stores_p2_loads(backend: str, other_backend: str, name: str) -> None:
    p1 = cli("store", name, "12345", backend=backend)
    assert p1.returncode == 0, p1.stderr
    p2 = cli("load", name, backend=other_backend)
    assert p2.returncode == 0, p2.stderr
    assert p2.stdout == b"12345"


def test_store_from_stdin_keeps_bytes_exactly(backend: str, name: str) -> None:
    payload = bytes(range(256)) + b"\r\n\x00tail"
    assert cli("store", name, "-", backend=backend, input=payload).returncode == 0
    assert cli("load", name, backend=backend).stdout == payload


def test_store_size_sets_capacity_only_when_creating(backend: str, name: str) -> None:
    assert cli("store", name, "x", "--size", "4096", backend=backend).returncode == 0
    assert cli("store", name, "y", "--size", "16", backend=backend).returncode == 0
    with Segment(name, create=False, backend=backend) as seg:
        assert seg.capacity == 4096
        assert seg.load() == b"y"


def test_store_too_large_is_refused_and_keeps_message(backend: str, name: str) -> None:
    assert cli("store", name, "keep", "--size", "8", backend=backend).returncode == 0
    proc = cli("store", name, "-", backend=backend, input=b"z" * 9)
    assert_clean_error(proc, "9 bytes", "capacity 8")
    assert cli("load", name, backend=backend).stdout == b"keep"


@pytest.mark.parametrize("args, words", [
    (["load", "{name}"], ["no segment named"]),
    (["delete", "{name}"], ["no segment or queue named"]),
    (["info", "{name}"], ["no segment or queue named"]),
    (["store", "a/b", "x"], ["'/'"]),
    (["store", "", "x"], ["empty"]),
    (["store", "x" * 300, "x"], ["300 bytes"]),
])
def test_expected_errors_are_one_line(backend: str, name: str, args: List[str],
                                      words: List[str]) -> None:
    proc = cli(*[a.format(name=name) for a in args], backend=backend)
    assert_clean_error(proc, *words)
    assert not os.path.exists(f"/dev/shm/{name}")


@pytest.mark.parametrize("size", ["0", "-5", "ten"])
def test_bad_size_is_a_usage_error(backend: str, name: str, size: str) -> None:
    proc = cli("store", name, "x", "--size", size, backend=backend)
    assert proc.returncode == 2
    assert b"Traceback" not in proc.stderr and b"--size" in proc.stderr
    assert not os.path.exists(f"/dev/shm/{name}")


def test_delete_removes_the_name(backend: str, name: str) -> None:
    cli("store", name, "x", backend=backend)
    proc = cli("delete", name, backend=backend)
    assert proc.returncode == 0 and name in proc.stdout.decode()
    assert not os.path.exists(f"/dev/shm/{name}")


def test_info_and_list(backend: str, name: str) -> None:
    cli("store", name, "hello", "--size", "100", backend=backend)
    cli("store", name, "hello!", backend=backend)
    info = cli("info", name, backend=backend).stdout.decode()
    fields = dict(line.split(None, 1) for line in info.splitlines())
    assert fields["capacity"] == "100 bytes"
    assert fields["length"] == "6 bytes"
    assert fields["stores"] == "2"
    assert fields["format"] == "fastshm version 1"
    assert fields["mode"].startswith("0o600")
    listing = cli("list", backend=backend).stdout.decode().splitlines()
    row = [line.split() for line in listing if line.split()[0] == name]
    mapped = str(os.stat(f"/dev/shm/{name}").st_size)
    assert row == [[name, "segment", "100", "2", "-", "-", mapped, "-", "-"]]


def test_menu_store_load_delete(backend: str, name: str) -> None:
    script = "1\n12345\n2\n9\n\n3\n"
    proc = cli("menu", name, "--size", "64", backend=backend, input=script.encode())
    out = proc.stdout.decode()
    assert proc.returncode == 0, proc.stderr
    assert f"Created shared memory '{name}' (64 bytes)" in out
    assert "Stored message #1" in out
    assert "Load Shared Data: 12345" in out
    assert "Select only 1, 2, 3 or q (got '9')" in out
    assert f"Deleted '{name}'" in out
    assert not os.path.exists(f"/dev/shm/{name}")


def test_menu_finds_existing_and_quits_without_deleting(backend: str, other_backend: str,
                                                       name: str) -> None:
    cli("store", name, "from P1", backend=other_backend)
    proc = cli("menu", name, backend=backend, input=b"2\nq\n")
    out = proc.stdout.decode()
    assert proc.returncode == 0
    assert f"Found shared memory '{name}' (1024 bytes)" in out
    assert "Load Shared Data: from P1" in out
    assert cli("load", name, backend=backend).stdout == b"from P1"


def test_menu_end_of_input_exits_cleanly(backend: str, name: str) -> None:
    proc = cli("menu", name, backend=backend, input=b"1\n")
    assert proc.returncode == 0 and b"Traceback" not in proc.stderr
    assert os.path.exists(f"/dev/shm/{name}")


def test_menu_over_capacity_store_goes_on(backend: str, name: str) -> None:
    proc = cli("menu", name, "--size", "4", backend=backend, input=b"1\nabcdefgh\n2\nq\n")
    out = proc.stdout.decode()
    assert proc.returncode == 0
    assert "Not stored: message of 8 bytes does not fit" in out
    assert "Load Shared Data: \n" in out


def test_menu_default_name_is_the_original(backend: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "fastshm", "--backend", backend, "menu", "--help"],
        capture_output=True, timeout=60,
    )
    assert b"richong_Shared_Mem" in proc.stdout


def test_load_follow_prints_each_new_message(backend: str, other_backend: str,
                                             name: str) -> None:
    with Segment(name, backend=other_backend) as seg:
        seg.store("first")
        follower = subprocess.Popen(
            [sys.executable, "-m", "fastshm", "--backend", backend, "load", name, "--follow"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )
        try:
            assert follower.stdout is not None
            assert follower.stdout.readline() == b"first\n"
            for text in ("second", "third"):
                seg.store(text)
                # The follower waits past the message it printed last, so a
                # store made before it is back in wait() is not missed.
                assert follower.stdout.readline() == f"{text}\n".encode()
            follower.send_signal(signal.SIGINT)
            assert follower.wait(timeout=10) == 130
            assert b"Traceback" not in follower.stderr.read()  # type: ignore[union-attr]
        finally:
            follower.kill()
            follower.wait(timeout=10)


def test_load_follow_timeout_ends(backend: str, name: str) -> None:
    Segment(name, backend=backend).close()
    proc = cli("load", name, "--follow", "--timeout", "0.3", backend=backend)
    assert proc.returncode == 0 and proc.stdout == b""


def test_demo(backend: str) -> None:
    proc = cli("demo", backend=backend)
    out = proc.stdout.decode()
    assert proc.returncode == 0, proc.stderr
    assert "stored '12345'" in out and "loaded '12345'" in out


def test_python_dash_m_and_console_script_agree(name: str,
                                                shm_name: Callable[..., str]) -> None:
    exe = os.path.join(os.path.dirname(sys.executable), "fastshm")
    if not os.path.exists(exe):
        pytest.skip("the fastshm console script is not installed next to this Python")
    subprocess.run([exe, "store", name, "via script"], check=True, timeout=60)
    assert cli("load", name, backend="auto").stdout == b"via script"


def _set_lock(name: str, owner: int) -> None:
    from fastshm import SharedMemory

    shm = SharedMemory(name)
    assert shm.buf is not None
    shm.buf[64:72] = owner.to_bytes(8, "little")
    shm.close()


def _own_tag() -> int:
    return os.stat("/proc/self/ns/pid").st_ino & 0xFFFFFFFF


@pytest.mark.skipif(not os.path.exists("/proc/self/ns/pid"), reason="needs Linux /proc")
def test_unlock(backend: str, name: str) -> None:
    cli("store", name, "kept", backend=backend)
    assert b"is not locked" in cli("unlock", name, backend=backend).stdout

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait(timeout=60)
    _set_lock(name, gone.pid | _own_tag() << 32)
    proc = cli("unlock", name, backend=backend)
    assert proc.returncode == 0 and f"held by pid {gone.pid}".encode() in proc.stdout
    assert cli("store", name, "after", backend=backend, timeout=30).returncode == 0

    _set_lock(name, os.getpid() | _own_tag() << 32)  # this test process: alive
    assert_clean_error(cli("unlock", name, backend=backend), "alive", "left alone")

    foreign = 1 | ((_own_tag() ^ 0x5A5A) << 32)  # same pid, another namespace's tag
    _set_lock(name, foreign)
    assert_clean_error(cli("unlock", name, backend=backend), "another pid namespace", "--force")
    assert cli("unlock", name, "--force", backend=backend).returncode == 0
    assert cli("store", name, "free", backend=backend, timeout=30).returncode == 0
    assert cli("load", name, backend=backend).stdout == b"free"

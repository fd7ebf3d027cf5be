"""The ``fastshm`` command's channel side: publish and subscribe (from
stdin, waiting, --follow, --nowait, --timeout), and info / list / delete
and the other kinds' commands when a name holds a channel.  Each command
runs as a separate process, bounded by a timeout; every name is unlinked
afterwards."""

from __future__ import annotations

import os
import signal
import time

import pytest
from conftest import BACKENDS, header_word
from test_cli import assert_clean_error
from test_cli_queue import finish, popen, run

import fastshm
from fastshm._pure_channel_layout import _H_ROOM_WAITERS

ROUTES = [b for b in BACKENDS if b != "python"]


@pytest.fixture(params=ROUTES)
def route(request: pytest.FixtureRequest) -> str:
    return request.param  # type: ignore[no-any-return]


def wait_until(check: "object", limit: float = 30) -> None:
    deadline = time.monotonic() + limit
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, "the condition never came"
        time.sleep(0.02)


def test_publish_then_subscribe(route: str, name: str) -> None:
    got = run("publish", name, "hello", "--history", "2", "--slots", "4", backend=route)
    assert got.returncode == 0, got.stderr
    assert got.stdout == f"published 5 bytes as message #1 on channel {name!r}\n".encode()
    assert run("publish", name, "-", input=b"from stdin", backend=route).returncode == 0
    with fastshm.Publisher(name, backend=route) as pub:
        assert (pub.slots, pub.history, pub.overflow, pub.slot_size) == (4, 2, "block", 65536)
    one = run("subscribe", name, backend=route)  # the history's first
    assert one.returncode == 0 and one.stdout == b"hello", one.stderr
    both = run("subscribe", name, "--follow", "--timeout", "0.3", backend=route)
    assert both.returncode == 0 and both.stdout == b"hello\nfrom stdin\n", both.stderr


def test_subscribe_waits_for_the_next_publish(route: str, name: str) -> None:
    fastshm.Publisher(name, 64, 4, create=True, backend=route).close()
    sub = popen("subscribe", name, backend=route)
    try:
        with fastshm.Publisher(name, backend=route) as pub:
            wait_until(lambda: pub.subscribers == 1)
            pub.publish(b"news")
        out, err = sub.communicate(timeout=30)
        assert sub.returncode == 0 and out == b"news", err
    finally:
        finish(sub)


def test_nothing_in_time_is_exit_1(route: str, name: str) -> None:
    fastshm.Publisher(name, 64, 4, create=True, backend=route).close()
    for how in (["--nowait"], ["--timeout", "0.2"]):
        got = run("subscribe", name, *how, backend=route)
        assert got.returncode == 1 and got.stdout == b""
        assert_clean_error(got, "no message on channel")


def test_a_full_block_channel_refuses_publish_in_time(route: str, name: str) -> None:
    with fastshm.Publisher(name, 64, 2, create=True, backend=route) as pub, \
            fastshm.Subscriber(name, backend=route):
        pub.publish(b"1")
        pub.publish(b"2")  # unread by the subscriber: no slot is free
        for how in (["--nowait"], ["--timeout", "0.2"]):
            got = run("publish", name, "3", *how, backend=route)
            assert got.returncode == 1, got.stderr
            assert_clean_error(got, "no free slot")
        assert pub.last_seq == 2


def test_ctrl_c_while_waiting_is_exit_130_with_nothing_done(route: str, name: str) -> None:
    with fastshm.Publisher(name, 64, 2, create=True, backend=route) as pub, \
            fastshm.Subscriber(name, backend=route) as sub:
        waiting = popen("subscribe", "--follow", name, backend=route)
        try:
            wait_until(lambda: pub.subscribers == 2)
            waiting.send_signal(signal.SIGINT)
            waiting.wait(timeout=30)
            assert waiting.returncode == 130
        finally:
            finish(waiting)
        pub.publish(b"1")
        pub.publish(b"2")
        blocked = popen("publish", name, "3", backend=route)
        try:
            # Asleep for a slot (counted in the room waiters word), so inside
            # the command, whatever its start-up took.
            wait_until(lambda: header_word(name, _H_ROOM_WAITERS) == 1)
            assert blocked.poll() is None
            blocked.send_signal(signal.SIGINT)
            blocked.wait(timeout=30)
            assert blocked.returncode == 130
        finally:
            finish(blocked)
        assert [bytes(s) for s in sub.samples(0)] == [b"1", b"2"]  # and no third


def test_too_big_and_bad_options_change_nothing(route: str, name: str) -> None:
    got = run("publish", name, "x" * 100, "--slot-size", "64", backend=route)
    assert got.returncode == 1
    assert_clean_error(got, "does not fit a slot of 64 bytes")
    assert not os.path.exists(f"/dev/shm/{name}")
    got = run("publish", name, "x", "--slots", "1", backend=route)
    assert got.returncode == 1
    assert_clean_error(got, "--slots must be at least 2")
    assert run("publish", name, "x", "--slot-size", "64", backend=route).returncode == 0
    got = run("publish", name, "-", input=b"y" * 65, backend=route)
    assert got.returncode == 1
    assert_clean_error(got, "does not fit the slots of channel")


def test_info_shows_subscribers_and_their_lag(route: str, name: str) -> None:
    with fastshm.Publisher(name, 64, 8, create=True, backend=route) as pub, \
            fastshm.Subscriber(name, backend=route) as sub:
        for i in range(3):
            pub.publish(b"%d" % i)
        sub.receive(1).release()
        got = run("info", name, backend=route)
        assert got.returncode == 0, got.stderr
        rows = dict(line.split(None, 1) for line in got.stdout.decode().splitlines()
                    if not line.startswith("subscriber "))
        assert rows["kind"] == "channel" and rows["slots"] == "8"
        assert rows["subscribers"] == "1 of at most 64" and rows["published"] == "3"
        assert f"pid {os.getpid()}: 2 behind, 1 received, 0 missed, 0 held" in got.stdout.decode()
        listed = run("list", backend=route).stdout.decode()
        row = next(line for line in listed.splitlines() if line.startswith(name))
        assert row.split()[1:5] == ["channel", "64", "3", "1"]


def test_other_kinds_commands_refuse_a_channel(route: str, name: str) -> None:
    fastshm.Publisher(name, 64, 4, create=True, backend=route).close()
    for args in (["get", name], ["put", name, "x"], ["load", name], ["store", name, "x"]):
        got = run(*args, backend=route)
        assert got.returncode == 1, args
        assert_clean_error(got, "is a fastshm Channel")
    with fastshm.Queue(name + "q", 64, create=True, backend=route) as q:
        try:
            got = run("subscribe", q.name, backend=route)
            assert got.returncode == 1
            assert_clean_error(got, "is a fastshm Queue, not a Channel")
        finally:
            q.unlink()
    got = run("delete", name, backend=route)
    assert got.returncode == 0 and not os.path.exists(f"/dev/shm/{name}")
    got = run("subscribe", name, backend=route)
    assert got.returncode == 1
    assert_clean_error(got, "no channel named")

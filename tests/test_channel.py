"""fastshm.Publisher, Subscriber and Sample in one process: the API's
contract, samples in place, release rules, history, parameters, bad input.
The multi-process proof is tests/test_channel_procs.py."""

from __future__ import annotations

import gc
import pickle
import platform
import threading
import time
from typing import Callable, Iterator

import pytest
from conftest import BACKENDS, in_thread, run_python

import fastshm
from fastshm import _backend
from fastshm._errors import ProtocolMismatch

# Every route: the native backend through each binding, and the python
# backend where it can lock a channel (flock: its "file_lock" feature), which
# it does its own way (test_backends_keep_to_their_own_channels).
PY_CHANNELS = "file_lock" in _backend.resolve("python").features
ROUTES = [b for b in BACKENDS if b != "python" or PY_CHANNELS]
CPYTHON = platform.python_implementation() == "CPython"

try:
    import numpy as np
except ImportError:  # PyPy's test extras leave numpy out
    np = None  # type: ignore[assignment]
needs_numpy = pytest.mark.skipif(np is None, reason="needs numpy")


@pytest.fixture(params=ROUTES)
def route(request: pytest.FixtureRequest) -> str:
    return request.param  # type: ignore[no-any-return]


@pytest.fixture
def pub(route: str, name: str) -> Iterator[fastshm.Publisher]:
    p = fastshm.Publisher(name, 256, 4, create=True, backend=route)
    yield p
    p.close()


def subscribe(pub: fastshm.Publisher) -> fastshm.Subscriber:
    return fastshm.Subscriber(pub.name, backend=pub.backend)


# -- publishing and receiving --


def test_publish_then_receive_in_order(pub: fastshm.Publisher) -> None:
    with subscribe(pub) as sub:
        assert pub.subscribers == 1
        seqs = [pub.publish(b"m%d" % i) for i in range(3)]
        assert seqs == sorted(seqs) and pub.last_seq == seqs[-1]
        for i, seq in enumerate(seqs):
            with sub.receive(timeout=1) as s:
                assert bytes(s) == b"m%d" % i and s.seq == seq and len(s) == 2
        assert sub.received == 3 and sub.missed == 0 and sub.last_seq == seqs[-1]
        with pytest.raises(TimeoutError, match="no new message"):
            sub.receive(timeout=0)
    assert pub.subscribers == 0


def test_publish_takes_str_and_buffers(pub: fastshm.Publisher) -> None:
    with subscribe(pub) as sub:
        pub.publish("héllo")
        pub.publish(bytearray(b"ba"))
        pub.publish(memoryview(b"xmvx")[1:3])
        pub.publish(b"")
        assert [s.tobytes() for s in sub.samples(0)] == ["héllo".encode(), b"ba", b"mv", b""]


def test_a_sample_is_the_slot_in_place(pub: fastshm.Publisher) -> None:
    with subscribe(pub) as sub:
        pub.publish(b"abcdef")
        s = sub.receive(1)
        mv = memoryview(s)
        assert mv.readonly and mv.format == "B" and mv.contiguous and mv.nbytes == 6
        if CPYTHON:  # PyPy's memoryview names the buffer the sample lent
            assert mv.obj is s  # the sample itself exports it: no copy was made
        with pytest.raises((BufferError, TypeError)):
            mv2 = memoryview(s)
            mv2[0] = 0  # read-only
        mv.release()
        mv2.release()
        s.release()


def test_receive_blocks_until_a_publish(pub: fastshm.Publisher) -> None:
    with subscribe(pub) as sub:
        t = threading.Timer(0.2, pub.publish, args=(b"late",))
        t.start()
        try:
            start = time.monotonic()
            s = sub.receive(timeout=20)
            assert bytes(s) == b"late" and time.monotonic() - start >= 0.1
            s.release()
        finally:
            t.join()


def test_samples_iterator_stops_at_the_timeout(pub: fastshm.Publisher) -> None:
    with subscribe(pub) as sub:
        for i in range(3):
            pub.publish(b"%d" % i)
        got = []
        for s in sub.samples(timeout=0.05):
            got.append(bytes(s))
            s.release()
        assert got == [b"0", b"1", b"2"]


# -- loans --


def test_loan_publishes_at_the_end_of_the_block(pub: fastshm.Publisher) -> None:
    with subscribe(pub) as sub:
        with pub.loan(5) as buf:
            assert isinstance(buf, memoryview) and not buf.readonly and len(buf) == 5
            buf[:] = b"hello"
            with pytest.raises(TimeoutError):
                sub.receive(0)  # nothing is seen before the block ends
        assert pub.last_seq == 1
        with sub.receive(1) as s:
            assert bytes(s) == b"hello" and s.seq == 1
        with pytest.raises(ValueError):
            buf[0] = 1  # the loan's view is released with the block


def test_loan_left_by_an_exception_is_discarded(pub: fastshm.Publisher) -> None:
    with subscribe(pub) as sub:
        with pytest.raises(KeyError):
            with pub.loan(3) as buf:
                buf[:] = b"bad"
                raise KeyError("stop")
        assert pub.last_seq == 0
        with pytest.raises(TimeoutError):
            sub.receive(0)
        # The slot came back: the whole ring is still usable.
        for i in range(pub.slots):
            pub.publish(b"%d" % i, timeout=0)
        assert [bytes(s) for s in sub.samples(0)] == [b"%d" % i for i in range(pub.slots)]


@needs_numpy
def test_numpy_frame_built_in_place_and_read_in_place(route: str, name: str) -> None:
    shape = (48, 64, 3)
    size = int(np.prod(shape))
    with fastshm.Publisher(name, size, 3, create=True, backend=route) as pub, \
            fastshm.Subscriber(name, backend=route) as sub:
        with pub.loan(size) as buf:
            frame = np.frombuffer(buf, dtype=np.uint8).reshape(shape)
            frame[:] = np.arange(size, dtype=np.uint64).reshape(shape) % 251
            del frame
        s = sub.receive(1)
        got = np.frombuffer(s, dtype=np.uint8).reshape(shape)
        assert got.flags.c_contiguous and not got.flags.writeable
        assert int(got[47, 63, 2]) == (size - 1) % 251
        # The array reads the slot itself: its address is inside the mapping.
        assert got.ctypes.data % 64 == 0
        with pytest.raises(BufferError, match="view"):
            s.release()  # the array still reads it: the slot stays pinned
        del got
        s.release()


# -- release --


@pytest.mark.skipif(not CPYTHON, reason="PyPy does not tell a sample when a view of it dies")
def test_release_refuses_while_a_view_is_alive(pub: fastshm.Publisher) -> None:
    with subscribe(pub) as sub:
        pub.publish(b"held")
        s = sub.receive(1)
        mv = memoryview(s)
        with pytest.raises(BufferError, match="1 view of it is alive"):
            s.release()
        assert bytes(mv) == b"held"  # still pinned and intact
        mv.release()
        s.release()


def test_use_after_release_is_a_value_error(pub: fastshm.Publisher) -> None:
    with subscribe(pub) as sub:
        pub.publish(b"x")
        s = sub.receive(1)
        s.release()
        s.release()  # twice: harmless
        for use in (lambda: bytes(s), lambda: memoryview(s), lambda: len(s),
                    lambda: s.tobytes(), lambda: s.__enter__()):
            with pytest.raises(ValueError, match="released"):
                use()
        assert "released" in repr(s)


def test_a_forgotten_sample_is_released_when_collected(pub: fastshm.Publisher) -> None:
    with subscribe(pub) as sub:
        for round_ in range(3 * pub.slots):
            pub.publish(b"%d" % round_, timeout=5)  # would wait for ever if pins leaked
            sub.receive(1)  # dropped without release
            gc.collect()


def test_held_samples_hold_the_ring_back_in_block_mode(pub: fastshm.Publisher) -> None:
    with subscribe(pub) as sub:
        held = []
        for i in range(pub.slots):
            pub.publish(b"%d" % i, timeout=0)
            held.append(sub.receive(1))
        with pytest.raises(TimeoutError, match="no free slot"):
            pub.publish(b"more", timeout=0.05)
        held.pop(0).release()
        pub.publish(b"more", timeout=1)
        for s in held:
            s.release()


@pytest.mark.parametrize("size, slots", [
    (4 << 20, 6),  # two messages unread before pacing starts
    (6 << 20, 4),  # lockstep: none
])
def test_a_paced_publisher_takes_every_free_slot_of_a_subscriber_not_reading(
        route: str, name: str, size: int, slots: int) -> None:
    """The native backend paces publishers of large messages (the slots a
    stream cycles through hold about 16 MiB while its subscriber keeps
    reading); a subscriber that reads nothing holds no publish or loan back
    while a slot is free, even with no timeout, and block mode still waits
    once the ring is full."""
    with fastshm.Publisher(name, size, slots, create=True, backend=route) as pub, \
            fastshm.Subscriber(name, backend=route) as sub:

        def fill() -> None:
            for i in range(slots - 1):
                pub.publish(bytes([i]) * size)
            with pub.loan(size) as buf:
                buf[:] = bytes([slots - 1]) * size

        t, box = in_thread(fill)
        t.join(60)
        assert not t.is_alive() and box == [None]
        with pytest.raises(TimeoutError, match="no free slot"):
            pub.publish(b"more", timeout=0.05)
        for i in range(slots):
            with sub.receive(0) as s:
                assert (s.seq, len(s), bytes(s)[:1], bytes(s)[-1:]) == (
                    i + 1, size, bytes([i]), bytes([i]))
        assert pub.publish(b"more", timeout=0) == slots + 1


def test_closing_the_subscriber_releases_its_samples(pub: fastshm.Publisher) -> None:
    sub = subscribe(pub)
    pub.publish(b"a")
    s = sub.receive(1)
    sub.close()
    assert pub.subscribers == 0
    with pytest.raises(ValueError, match="released"):
        bytes(s)
    with pytest.raises(ValueError, match="closed"):
        sub.receive(0)
    for i in range(2 * pub.slots):  # no pin or cursor of it holds the ring
        pub.publish(b"%d" % i, timeout=0)


# -- receive_into: the next message copied out --


def test_receive_into_copies_and_releases_the_slot(route: str, name: str) -> None:
    """Block mode, 2 slots, both holding messages the subscriber has not
    received: after receive_into the first one's slot is free again (a
    publish that never waits finds it), where a held Sample keeps it."""
    with fastshm.Publisher(name, 64, 2, create=True, backend=route) as pub, \
            fastshm.Subscriber(name, backend=route) as sub:
        buf = bytearray(64)
        pub.publish(b"first", timeout=0)
        pub.publish(b"second", timeout=0)
        assert sub.receive_into(buf, timeout=0) == 5 and buf[:5] == b"first"
        assert (sub.received, sub.missed, sub.last_seq) == (1, 0, 1)
        pub.publish(b"third", timeout=0)  # the first message's slot
        # A Sample, by contrast, holds its slot until released.
        held = sub.receive(0)
        with pytest.raises(TimeoutError, match="no free slot"):
            pub.publish(b"fourth", timeout=0)
        held.release()
        pub.publish(b"fourth", timeout=0)
        got = []
        for _ in range(2):
            n = sub.receive_into(buf, 0)
            got.append(bytes(buf[:n]))
        assert got == [b"third", b"fourth"] and sub.received == 4 and sub.last_seq == 4
        with pytest.raises(TimeoutError, match="no new message"):
            sub.receive_into(buf, timeout=0)
        assert sub.received == 4


@pytest.mark.parametrize("length", [0, 1, 100, 256])
def test_receive_into_any_length_up_to_the_slot(pub: fastshm.Publisher, length: int) -> None:
    data = bytes(range(256))[:length]
    with subscribe(pub) as sub:
        for room in (length, pub.slot_size, pub.slot_size + 10):
            buf = bytearray(b"\xee" * room)
            seq = pub.publish(data, timeout=0)
            assert sub.receive_into(buf, timeout=1) == length
            assert buf[:length] == data and buf[length:] == b"\xee" * (room - length)
            assert sub.last_seq == seq


def test_receive_into_any_writable_buffer(pub: fastshm.Publisher) -> None:
    import mmap

    with subscribe(pub) as sub:
        for i in range(3):
            pub.publish(b"msg%d" % i, timeout=0)
        whole = bytearray(b"." * 12)
        view = memoryview(whole)[4:10]  # a slice: the copy lands in the middle
        assert sub.receive_into(view) == 4 and whole == b"....msg0...."
        m = mmap.mmap(-1, 4096)
        try:
            assert sub.receive_into(m, timeout=1) == 4 and m[:4] == b"msg1"
        finally:
            m.close()
        ints = memoryview(bytearray(8)).cast("I")  # not bytes, but C-contiguous
        assert sub.receive_into(buffer=ints, timeout=1) == 4
        assert ints.tobytes()[:4] == b"msg2"


@needs_numpy
def test_receive_into_a_numpy_array(pub: fastshm.Publisher) -> None:
    with subscribe(pub) as sub:
        pub.publish(np.arange(8, dtype=np.int32).tobytes(), timeout=0)
        out = np.zeros((2, 4), dtype=np.int32)
        assert sub.receive_into(out, timeout=1) == 32
        assert out.tolist() == [[0, 1, 2, 3], [4, 5, 6, 7]]
        with pytest.raises(ValueError, match="C-contiguous"):
            sub.receive_into(np.zeros((4, 4), dtype=np.int32)[:, 0], timeout=0)


def test_receive_into_large_messages(route: str, name: str) -> None:
    """2 MiB messages, which the C-API route copies without the GIL (even
    the first try), waiting and not."""
    size = 2 << 20
    data = bytes(range(256)) * (size // 256)
    with fastshm.Publisher(name, size, 2, create=True, backend=route) as pub, \
            fastshm.Subscriber(name, backend=route) as sub:
        buf = bytearray(size)
        with pytest.raises(TimeoutError, match="no new message"):
            sub.receive_into(buf, timeout=0)
        pub.publish(data, timeout=0)
        with pytest.raises(ValueError, match=f"buffer of {size - 1} bytes"):
            sub.receive_into(memoryview(buf)[1:], timeout=0)
        assert sub.receive_into(buf, timeout=0) == size and buf == data
        t = threading.Timer(0.2, pub.publish, args=(data[::-1],))
        t.start()
        try:
            assert sub.receive_into(buf, timeout=20) == size and buf == data[::-1]
        finally:
            t.join()
        assert (sub.received, sub.missed, sub.last_seq) == (2, 0, 2)


def test_receive_into_a_buffer_too_small_receives_nothing(pub: fastshm.Publisher) -> None:
    with subscribe(pub) as sub:
        seq = pub.publish(b"0123456789", timeout=0)
        small = bytearray(b"\xee" * 9)
        with pytest.raises(ValueError, match="buffer of 9 bytes.*message of 10 bytes") as e:
            sub.receive_into(small, timeout=1)
        assert "nothing was received" in str(e.value)
        assert small == b"\xee" * 9
        assert (sub.received, sub.missed, sub.last_seq) == (0, 0, 0)
        with pytest.raises(ValueError, match="too small"):
            sub.receive_into(bytearray(), timeout=0)
        # Still the next message: for receive, and for receive_into.
        with sub.receive(0) as s:
            assert bytes(s) == b"0123456789" and s.seq == seq
        assert (sub.received, sub.last_seq) == (1, seq)
        seq2 = pub.publish(b"abc", timeout=0)
        with pytest.raises(ValueError, match="too small"):
            sub.receive_into(bytearray(2), timeout=0)
        buf = bytearray(3)
        assert sub.receive_into(buf, timeout=0) == 3 and buf == b"abc"
        assert (sub.received, sub.missed, sub.last_seq) == (2, 0, seq2)


def test_receive_into_refuses_what_it_cannot_write(pub: fastshm.Publisher) -> None:
    with subscribe(pub) as sub:
        pub.publish(b"keep", timeout=0)
        for bad in (b"read-only!", memoryview(bytearray(8)).toreadonly()):
            with pytest.raises(TypeError, match="writable"):
                sub.receive_into(bad, timeout=0)
        for bad in ("str", 12, None):
            with pytest.raises(TypeError):
                sub.receive_into(bad, timeout=0)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="C-contiguous"):
            sub.receive_into(memoryview(bytearray(16))[::2], timeout=0)
        with pytest.raises(TypeError):
            sub.receive_into()  # type: ignore[call-arg]
        with pytest.raises(TypeError):
            sub.receive_into(bytearray(8), 0, 0)  # type: ignore[call-arg]
        with pytest.raises(TypeError):
            sub.receive_into(bytearray(8), wait=0)  # type: ignore[call-arg]
        with pytest.raises(ValueError):
            sub.receive_into(bytearray(8), timeout=-1)
        assert sub.received == 0  # nothing was consumed
        buf = bytearray(8)
        assert sub.receive_into(buf, 0) == 4 and buf[:4] == b"keep"


def test_receive_into_blocks_until_a_publish(pub: fastshm.Publisher) -> None:
    with subscribe(pub) as sub:
        t = threading.Timer(0.2, pub.publish, args=(b"late",))
        t.start()
        try:
            buf = bytearray(16)
            assert sub.receive_into(buf, timeout=20) == 4 and buf[:4] == b"late"
            t2 = threading.Timer(0.2, pub.publish, args=(b"later",))
            t2.start()
            try:
                assert sub.receive_into(buf) == 5 and buf[:5] == b"later"
            finally:
                t2.join()
        finally:
            t.join()


def test_receive_into_after_close_and_from_another_thread(pub: fastshm.Publisher) -> None:
    sub = subscribe(pub)
    t, box = in_thread(lambda: sub.receive_into(bytearray(8)))
    time.sleep(0.2)
    assert t.is_alive()
    sub.close()
    t.join(5)
    assert not t.is_alive() and isinstance(box[0], ValueError) and "closed" in str(box[0])
    pub.publish(b"x", timeout=0)
    with pytest.raises(ValueError, match="closed"):
        sub.receive_into(bytearray(8), timeout=0)


def test_receive_into_counts_what_was_overwritten(route: str, name: str) -> None:
    with fastshm.Publisher(name, 64, 4, overflow="overwrite", create=True,
                           backend=route) as pub, fastshm.Subscriber(name, backend=route) as sub:
        for i in range(20):
            pub.publish(b"%d" % i, timeout=0)
        # A buffer too small changes nothing: not even the count of the
        # messages overwritten before the next one in place.
        with pytest.raises(ValueError, match="too small"):
            sub.receive_into(bytearray(1), timeout=0)
        assert (sub.received, sub.missed, sub.last_seq) == (0, 0, 0)
        buf = bytearray(8)
        got = []
        while True:
            try:
                n = sub.receive_into(buf, timeout=0)
            except TimeoutError:
                break
            got.append((int(buf[:n]), sub.last_seq))
        assert [seq for _, seq in got] == [k + 1 for k, _ in got] and got[-1][0] == 19
        assert sub.missed == got[0][0] > 0 and sub.received == len(got)
        assert sub.received + sub.missed == 20
        # Overwritten between a refusal and the next receive: counted missed.
        pub.publish(b"long message", timeout=0)
        with pytest.raises(ValueError, match="too small"):
            sub.receive_into(buf, timeout=0)
        for i in range(10):
            pub.publish(b"%d" % i, timeout=0)
        # Messages 21 (the long one) to 31 ("0" to "9"): the ring holds 28 on.
        assert sub.receive_into(buf, timeout=0) == 1 and buf[:1] == b"6"
        assert sub.last_seq == 28 and sub.missed == got[0][0] + 7
        assert sub.received + sub.missed == 28


# -- overwrite, history, several subscribers --


def test_overwrite_never_waits_and_counts_what_was_missed(route: str, name: str) -> None:
    with fastshm.Publisher(name, 64, 4, overflow="overwrite", create=True,
                           backend=route) as pub, fastshm.Subscriber(name, backend=route) as sub:
        for i in range(20):
            pub.publish(b"%d" % i, timeout=0)
        got = [int(bytes(s)) for s in sub.samples(0)]
        assert got == sorted(got) and got[-1] == 19
        assert sub.received + sub.missed == 20 and sub.missed > 0


def test_overwrite_keeps_a_pinned_sample_intact(route: str, name: str) -> None:
    with fastshm.Publisher(name, 64, 3, overflow="overwrite", create=True,
                           backend=route) as pub, fastshm.Subscriber(name, backend=route) as sub:
        pub.publish(b"keep me")
        s = sub.receive(1)
        for i in range(50):  # laps the ring many times around the pinned slot
            pub.publish(b"x%d" % i, timeout=0)
        assert bytes(s) == b"keep me"
        s.release()


def test_late_joiner_gets_the_history_then_new_messages(route: str, name: str) -> None:
    with fastshm.Publisher(name, 64, 8, history=3, create=True, backend=route) as pub:
        for i in range(6):
            pub.publish(b"%d" % i)  # no subscriber: never waits
        with fastshm.Subscriber(name, backend=route) as sub:
            pub.publish(b"new")
            assert [bytes(s) for s in sub.samples(0)] == [b"3", b"4", b"5", b"new"]


def test_every_subscriber_gets_every_message(route: str, name: str) -> None:
    with fastshm.Publisher(name, 64, 4, create=True, backend=route) as pub:
        subs = [fastshm.Subscriber(name, backend=route) for _ in range(3)]
        try:
            assert pub.subscribers == 3
            for i in range(4):
                pub.publish(b"%d" % i, timeout=0)
            for sub in subs:
                assert [bytes(s) for s in sub.samples(0)] == [b"0", b"1", b"2", b"3"]
        finally:
            for sub in subs:
                sub.close()


def test_too_many_subscribers(route: str, name: str) -> None:
    with fastshm.Publisher(name, 64, 4, max_subscribers=1, create=True, backend=route):
        with fastshm.Subscriber(name, backend=route):
            with pytest.raises(TimeoutError, match="subscriber entries taken"):
                fastshm.Subscriber(name, backend=route)
        fastshm.Subscriber(name, backend=route).close()  # free again


# -- opening, parameters, lifetime --


def test_opening_takes_the_channels_parameters(route: str, name: str) -> None:
    with fastshm.Publisher(name, 100, 5, history=2, overflow="overwrite", max_subscribers=3,
                           create=True, backend=route) as a:
        assert a.created
        with fastshm.Publisher(name, backend=route) as b:
            assert not b.created
            assert (b.slot_size, b.slots, b.history, b.overflow, b.max_subscribers) == \
                (100, 5, 2, "overwrite", 3)
        with fastshm.Publisher(name, 100, 5, backend=route) as c:  # agreeing: fine
            assert c.slots == 5
        with pytest.raises(ValueError, match=r"slots=6 \(the channel has 5\)"):
            fastshm.Publisher(name, 100, 6, backend=route)
        with pytest.raises(ValueError, match="overflow='block'"):
            fastshm.Publisher(name, overflow="block", backend=route)


def test_creating_needs_slot_size_and_slots(route: str, name: str) -> None:
    with pytest.raises(TypeError, match="needs slots"):
        fastshm.Publisher(name, 64, create=True, backend=route)
    with pytest.raises(FileNotFoundError):
        fastshm.Publisher(name, backend=route)  # nothing given: open what is there
    with pytest.raises(FileNotFoundError):
        fastshm.Subscriber(name, backend=route)


@pytest.mark.parametrize("kwargs, error, match", [
    ({"slot_size": 0, "slots": 4}, ValueError, "slot_size"),
    ({"slot_size": 64, "slots": 1}, ValueError, "slots must be between 2"),
    ({"slot_size": 64, "slots": 4, "history": 4}, ValueError, "history"),
    ({"slot_size": 64, "slots": 4, "history": -1}, ValueError, "history"),
    ({"slot_size": 64, "slots": 4, "max_subscribers": 65}, ValueError, "max_subscribers"),
    ({"slot_size": 64, "slots": 4, "overflow": "drop"}, ValueError, "overflow"),
    ({"slot_size": "64", "slots": 4}, TypeError, "slot_size"),
    ({"slot_size": 64, "slots": 4.0}, TypeError, "slots"),
])
def test_bad_parameters_create_nothing(route: str, name: str, kwargs: dict, error: type,
                                       match: str) -> None:
    with pytest.raises(error, match=match):
        fastshm.Publisher(name, create=True, backend=route, **kwargs)
    with pytest.raises(FileNotFoundError):
        fastshm.Subscriber(name, backend=route)


def test_bad_messages_change_nothing(pub: fastshm.Publisher) -> None:
    with subscribe(pub) as sub:
        pub.publish(b"good")
        with pytest.raises(ValueError, match="does not fit"):
            pub.publish(b"x" * 257)
        with pytest.raises(ValueError, match="does not fit"):
            pub.loan(257)
        with pytest.raises(ValueError, match="size must be >= 0"):
            pub.loan(-1)
        with pytest.raises(TypeError):
            pub.publish(12)  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            pub.publish(b"x", timeout="1")  # type: ignore[arg-type]
        with pytest.raises(ValueError):
            pub.publish(b"x", timeout=-1)
        assert pub.last_seq == 1
        assert [bytes(s) for s in sub.samples(0)] == [b"good"]


def test_other_kinds_are_refused_both_ways(route: str, shm_name: Callable[..., str]) -> None:
    seg, q, ch = shm_name(), shm_name(), shm_name()
    with fastshm.Segment(seg, 64, create=True, backend=route), \
            fastshm.Queue(q, 64, create=True, backend=route), \
            fastshm.Publisher(ch, 64, 4, create=True, backend=route):
        for other, kind in ((seg, "Segment"), (q, "Queue")):
            with pytest.raises(fastshm.FormatError, match=f"is a fastshm {kind}, not a Channel"):
                fastshm.Subscriber(other, backend=route)
            with pytest.raises(fastshm.FormatError, match=f"is a fastshm {kind}"):
                fastshm.Publisher(other, backend=route)
        with pytest.raises(fastshm.FormatError, match="is a fastshm Channel, not a Segment"):
            fastshm.Segment(ch, backend=route)
        with pytest.raises(fastshm.FormatError, match="is a fastshm Channel, not a Queue"):
            fastshm.Queue(ch, backend=route)


def test_closed_objects_refuse_everything(pub: fastshm.Publisher) -> None:
    sub = subscribe(pub)
    sub.close()
    sub.close()  # twice: harmless
    pub.close()
    for call in (lambda: pub.publish(b"x"), lambda: pub.loan(1), lambda: pub.subscribers,
                 lambda: sub.receive(0), lambda: pub.slot_size):
        with pytest.raises(ValueError, match="closed"):
            call()
    assert "closed" in repr(pub) and "closed" in repr(sub)


def test_close_from_another_thread_ends_a_blocked_receive(pub: fastshm.Publisher) -> None:
    sub = subscribe(pub)
    t, box = in_thread(lambda: sub.receive())
    time.sleep(0.2)
    assert t.is_alive()
    sub.close()
    t.join(5)
    assert not t.is_alive() and isinstance(box[0], ValueError) and "closed" in str(box[0])


def test_pickling_reopens_by_name(pub: fastshm.Publisher) -> None:
    with subscribe(pub) as sub:
        p2 = pickle.loads(pickle.dumps(pub))
        s2 = pickle.loads(pickle.dumps(sub))
        try:
            assert isinstance(p2, fastshm.Publisher) and p2.name == pub.name
            assert isinstance(s2, fastshm.Subscriber) and pub.subscribers == 2
            p2.publish(b"to both")
            assert bytes(sub.receive(1)) == bytes(s2.receive(1)) == b"to both"
        finally:
            p2.close()
            s2.close()


def test_delete_removes_the_name(route: str, name: str) -> None:
    pub = fastshm.Publisher(name, 64, 4, create=True, backend=route)
    pub.delete()
    with pytest.raises(FileNotFoundError):
        fastshm.Subscriber(name, backend=route)


# -- the two lock protocols --

needs_py_channels = pytest.mark.skipif(not PY_CHANNELS,
                                       reason="the python backend's channels lock with flock")


@pytest.mark.skipif(not PY_CHANNELS or len(BACKENDS) < 2,
                    reason="needs the native backend and the python one's channels")
def test_backends_keep_to_their_own_channels(shm_name: Callable[..., str]) -> None:
    """A channel is locked the way the backend that made it locks (a
    compare-and-swap, or the python backend's flock): the other refuses it
    by name, and without an explicit backend the matching one opens it."""
    made = {"native": shm_name(), "python": shm_name()}
    pubs = [fastshm.Publisher(made[b], 64, 4, create=True, backend=b) for b in made]
    try:
        for made_by, other in (("native", "python"), ("python", "native")):
            ch = made[made_by]
            for args in ((), (64, 4)):
                with pytest.raises(fastshm.FormatError,
                                   match=f"made by the {made_by} backend.*backend='{made_by}'"):
                    fastshm.Publisher(ch, *args, backend=other)
            with pytest.raises(ProtocolMismatch, match=f"made by the {made_by} backend"):
                fastshm.Subscriber(ch, backend=other)
            with fastshm.Subscriber(ch) as sub, fastshm.Publisher(ch, 64, 4) as pub:
                assert sub.backend == pub.backend == made_by and not pub.created
                pub.publish(b"to " + made_by.encode())
                with sub.receive(1) as s:
                    assert bytes(s) == b"to " + made_by.encode()
        # And from a process whose default backend is python.
        code = ("import sys, fastshm\n"
                "for ch in sys.argv[1:]:\n"
                "    with fastshm.Subscriber(ch) as s:\n"
                "        print(s.backend)\n")
        out = run_python(code, made["native"], made["python"],
                         env={"FASTSHM_BACKEND": "python"}, timeout=60)
        assert out.stdout.decode().split() == ["native", "python"]
    finally:
        for p in pubs:
            p.close()


@needs_py_channels
def test_the_python_backend_marks_its_channels(name: str) -> None:
    with fastshm.Publisher(name, 64, 4, create=True, backend="python") as pub:
        assert pub.flags == 2  # PYLOCK (docs/FORMAT.md)
    with fastshm.Publisher(name, create=False, backend="python") as pub:
        assert pub.overflow == "block" and pub.flags == 2


@needs_py_channels
def test_python_samples_are_the_slot_in_place(name: str) -> None:
    """A python-backend sample lends the channel's own bytes: a change to
    the slot shows through it (which no publisher makes while it is pinned;
    the test makes one through the mapping)."""
    with fastshm.Publisher(name, 64, 4, create=True, backend="python") as pub, \
            fastshm.Subscriber(name, backend="python") as sub:
        with pub.loan(8) as buf:
            buf[:] = b"in place"
        s = sub.receive(1)
        mv = memoryview(s)
        assert bytes(mv) == b"in place" and mv.readonly
        h = pub._handle()
        first = h._payload  # the first message goes to slot 0
        h.view[first : first + 2] = b"IN"
        assert bytes(mv) == b"IN place"
        mv.release()
        s.release()

"""The C core's hands-on repairs of a channel, through the cffi binding:
``fshm_channel_evict`` (a subscriber entry) and ``fshm_channel_evict_loan``
(a lent slot), for processes whose death cannot be seen (another pid
namespace).  Each takes back only what still belongs to the owner named,
and what it takes back is usable at once."""

from __future__ import annotations

import pytest
from conftest import BACKENDS

import fastshm

pytestmark = pytest.mark.skipif("native-cffi" not in BACKENDS,
                                reason="needs the cffi binding of the C core")


def _core(pub: fastshm.Publisher):  # type: ignore[no-untyped-def]
    from fastshm._fastshm import ffi, lib

    return ffi, lib, pub._handle()._c


def test_evict_loan_takes_back_only_the_owners_slot(name: str) -> None:
    pub = fastshm.Publisher(name, 64, 2, create=True, backend="native-cffi")
    try:
        ffi, lib, c = _core(pub)
        loans = [ffi.new("fshm_loan *") for _ in range(2)]
        for loan in loans:
            assert lib.fshm_channel_try_loan(c, 8, loan) == 0
        assert lib.fshm_channel_try_loan(c, 8, ffi.new("fshm_loan *")) == lib.FSHM_EFULL
        me = lib.fshm_self_id()
        slot = loans[0].slot
        # Another owner's name changes nothing.
        assert lib.fshm_channel_evict_loan(c, slot, me + 1, 0) == lib.FSHM_EAGAIN
        assert lib.fshm_channel_evict_loan(c, 2, me, 0) == 22  # EINVAL: no such slot
        assert lib.fshm_channel_evict_loan(c, slot, 0, 0) == 22
        assert lib.fshm_channel_try_loan(c, 8, ffi.new("fshm_loan *")) == lib.FSHM_EFULL
        # The owner's: the slot is lent again at once, and the old loan is lost.
        assert lib.fshm_channel_evict_loan(c, slot, me, 0) == 0
        again = ffi.new("fshm_loan *")
        assert lib.fshm_channel_try_loan(c, 8, again) == 0 and again.slot == slot
        seq = ffi.new("uint64_t *")
        assert lib.fshm_channel_try_commit(c, again, 8, seq) == 0 and seq[0] == 1
        assert lib.fshm_channel_try_commit(c, loans[0], 8, seq) == lib.FSHM_ELOST
        assert lib.fshm_channel_try_commit(c, loans[1], 8, seq) == 0 and seq[0] == 2
        assert pub._lock_owner() == 0
    finally:
        pub.delete()


def test_evict_frees_only_the_owners_entry(name: str) -> None:
    pub = fastshm.Publisher(name, 64, 4, max_subscribers=1, create=True,
                            backend="native-cffi")
    sub = fastshm.Subscriber(name, backend="native-cffi")
    try:
        ffi, lib, c = _core(pub)
        me = lib.fshm_self_id()
        pub.publish(b"one")
        held = sub.receive(timeout=0)  # pinned by entry 0
        assert lib.fshm_channel_evict(c, 0, me + 1, 0) == lib.FSHM_EAGAIN
        assert pub.subscribers == 1
        assert lib.fshm_channel_evict(c, 0, me, 0) == 0
        assert pub.subscribers == 0
        with pytest.raises(ValueError, match="taken away"):
            sub.receive(timeout=0)
        # The entry and the pin are free: a new subscriber joins, and the
        # ring is never held back by the evicted one's pin.
        other = fastshm.Subscriber(name, backend="native-cffi")
        for n in range(8):
            pub.publish(b"m%d" % n, timeout=0)
            with other.receive(timeout=0) as s:
                assert bytes(s) == b"m%d" % n
        other.close()
        held.release()  # the evicted subscriber's sample: nothing left to let go
    finally:
        sub.close()
        pub.delete()

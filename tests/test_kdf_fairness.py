"""
The KDF pool is fair between sources (client addresses): one FIFO per
source, threads fed round-robin, at most C{maxPerSource} pending per source
on top of the total bound.  So a login storm from one address fills only its
own share, and a LOGIN from another address is served within one round.

Most tests drive the pool by hand: a ThreadPool stand-in whose jobs run when
the test says so and a reactor whose callFromThread calls at once, so order
and counts are exact.  The others use the real threads with tiny scrypt
parameters (N=2**10) and assert order and results, never timings.
"""

import hashlib

import pytest
import pytest_twisted
from twisted.internet import defer
from twisted.logger import Logger, LogLevel, formatEvent
from twisted.python.failure import Failure

from netshare.errors import RateLimited
from netshare.kdf import KDFPool
from tests.inprocess import reactor

pytestmark = pytest.mark.timeout(60, method="thread")

N, R, P = 2**10, 8, 1
SALT = b"0123456789abcdef"


def want(password, salt=SALT, n=N, length=32):
    return hashlib.scrypt(password, salt=salt, n=n, r=R, p=P, dklen=length, maxmem=2**25)


class ManualThreadPool:
    """A ThreadPool stand-in: jobs wait in C{jobs} (what the pool was handed
    and has not finished) until the test runs them, in the test's thread."""

    def __init__(self):
        self.jobs = []
        self.started = self.stopped = False
        self.most = 0  # the most jobs ever handed to it at once

    def start(self):
        self.started = True

    def stop(self):
        self.stopped = True

    def callInThreadWithCallback(self, onResult, fn, *args, **kw):
        self.jobs.append((args[0], onResult, fn, args, kw))
        self.most = max(self.most, len(self.jobs))

    def handed(self):
        """The passwords of the jobs handed and not yet run."""
        return [job[0] for job in self.jobs]

    def run(self, i=0):
        """Run the i-th job handed (the oldest by default); its password."""
        password, onResult, fn, args, kw = self.jobs.pop(i)
        try:
            result = fn(*args, **kw)
        except Exception:
            onResult(False, Failure())
        else:
            onResult(True, result)
        return password


class SyncReactor:
    """All deferToThreadPool needs: results are delivered at once."""

    def callFromThread(self, f, *args, **kw):
        f(*args, **kw)


def manual(threads=1, maxQueued=64, maxPerSource=8):
    kdf = KDFPool(threads, maxQueued, maxPerSource, reactor=SyncReactor())
    fake = kdf._pool = ManualThreadPool()
    return kdf, fake


def outcome(d):
    """What a Deferred has fired with so far: None, ("ok", value) or
    ("fail", failure); a failure is consumed."""
    box = []
    d.addCallbacks(lambda v: box.append(("ok", v)), lambda f: box.append(("fail", f)))
    return box[0] if box else None


def assert_429_at_once(d, text="server busy; try later"):
    got = outcome(d)
    assert got is not None and got[0] == "fail", got
    assert got[1].check(RateLimited) and got[1].value.code == 429
    assert got[1].value.text == text


def pw(source, i):
    return b"%s%d" % (source.encode(), i)


# --- order ------------------------------------------------------------------------


def test_a_new_source_is_served_after_one_turn_not_after_the_backlog():
    """threads=1: A asks for 20, then B for 1.  B's derivation runs third
    (after A's running one and one more of A's), not 21st; A's stay in order."""
    kdf, fake = manual(threads=1, maxPerSource=32)
    ds = {pw("A", i): kdf.derive(pw("A", i), SALT, N, R, P, source="A") for i in range(20)}
    ds[b"B0"] = kdf.derive(b"B0", SALT, N, R, P, source="B")
    assert (kdf.pending, kdf.sources) == (21, 2)
    order = []
    while fake.jobs:
        assert len(fake.jobs) == 1  # never more than `threads` handed over
        order.append(fake.run())
    assert order == [b"A0", b"A1", b"B0"] + [pw("A", i) for i in range(2, 20)]
    for password, d in ds.items():
        assert outcome(d) == ("ok", want(password))
    assert (kdf.pending, kdf.sources) == (0, 0)


def test_sources_take_turns_and_the_pool_is_never_handed_more_than_threads():
    """threads=2: A (holding both threads) and B have 10 waiting each, then C
    asks once: B gets the first free thread, then A and C, and from then on
    A and B alternate; C's one runs within the first round."""
    kdf, fake = manual(threads=2, maxPerSource=16)
    for s in ("A", "B"):
        for i in range(10):
            kdf.derive(pw(s, i), SALT, N, R, P, source=s)
    kdf.derive(b"C0", SALT, N, R, P, source="C")
    assert fake.handed() == [b"A0", b"A1"]  # the first two found the threads free
    order = []
    while fake.jobs:
        order.append(fake.run())
    assert fake.most == 2
    assert order[:8] == [b"A0", b"A1", b"B0", b"A2", b"C0", b"B1", b"A3", b"B2"]
    # From there on strictly alternating until A runs out, each in its own order.
    assert [x for x in order if x.startswith(b"A")] == [pw("A", i) for i in range(10)]
    assert [x for x in order if x.startswith(b"B")] == [pw("B", i) for i in range(10)]
    assert (kdf.pending, kdf.sources) == (0, 0)


def test_one_source_cannot_hold_every_thread_while_another_waits():
    """threads=2, both running A's: the next free thread goes to B, who has
    none, although A has been waiting in line longer."""
    kdf, fake = manual(threads=2, maxPerSource=8)
    for i in range(8):
        kdf.derive(pw("A", i), SALT, N, R, P, source="A")
    kdf.derive(b"B0", SALT, N, R, P, source="B")
    kdf.derive(b"B1", SALT, N, R, P, source="B")
    assert fake.handed() == [b"A0", b"A1"]
    fake.run(1)  # A1 ends, A0 still runs
    assert fake.handed() == [b"A0", b"B0"]
    fake.run(1)  # B0 ends: A still runs one, B none
    assert fake.handed() == [b"A0", b"B1"]
    fake.run(0)  # A0 ends: one each
    assert fake.handed() == [b"B1", b"A2"]
    while fake.jobs:
        fake.run()
    assert (kdf.pending, kdf.sources) == (0, 0)


@pytest_twisted.inlineCallbacks
def test_round_robin_with_real_threads():
    """The same with the real ThreadPool and scrypt: with one thread only one
    derivation is handed over at a time, so the completion order is exact."""
    kdf = KDFPool(threads=1, maxQueued=64, maxPerSource=32)
    try:
        order = []
        ds = []
        for source, count in (("10.0.0.1", 20), ("10.0.0.2", 1)):
            for i in range(count):
                password = pw(source, i)
                d = kdf.derive(password, SALT, N, R, P, source=source)
                d.addCallback(lambda key, password=password: order.append(password) or key)
                ds.append((password, d))
        keys = yield defer.gatherResults([d for _, d in ds]).addTimeout(10, reactor())
        assert order.index(b"10.0.0.20") == 2, order  # third, not 21st
        assert keys == [want(password) for password, _ in ds]
        assert (kdf.pending, kdf.sources) == (0, 0)
    finally:
        kdf.stop()


# --- bounds -----------------------------------------------------------------------


def test_one_source_gets_429_past_its_share_while_another_gets_in():
    kdf, fake = manual(threads=1, maxQueued=64, maxPerSource=8)
    storm = [kdf.derive(pw("A", i), SALT, N, R, P, source="10.0.0.1") for i in range(8)]
    assert not any(d.called for d in storm)  # running or waiting
    assert_429_at_once(kdf.derive(b"A8", SALT, N, R, P, source="10.0.0.1"))
    assert kdf.pending == 8  # the refusal took no place
    legit = kdf.derive(b"B0", SALT, N, R, P, source="10.0.0.2")
    assert not legit.called
    assert (kdf.pending, kdf.sources) == (9, 2)
    fake.run()  # one of the storm's ends...
    assert outcome(storm[0]) == ("ok", want(b"A0"))
    again = kdf.derive(b"A9", SALT, N, R, P, source="10.0.0.1")
    assert not again.called  # ...so it has a place again
    assert fake.run() == b"A1"  # handed over when A0 ended
    assert fake.run() == b"B0"  # then the other address's turn
    assert outcome(legit) == ("ok", want(b"B0"))
    while fake.jobs:
        fake.run()
    assert (kdf.pending, kdf.sources) == (0, 0)


def test_refusals_are_counted_and_logged_once_until_there_is_room():
    """A storm of refusals is one warning, not one per refusal; again once
    the source (or the total) has had room."""
    kdf, fake = manual(threads=1, maxQueued=2, maxPerSource=2)
    events = []
    kdf.log = Logger(observer=events.append)
    for i in range(2):
        kdf.derive(pw("A", i), SALT, N, R, P, source="10.0.0.1")
    for _ in range(50):
        assert_429_at_once(kdf.derive(b"x", SALT, N, R, P, source="10.0.0.1"))
    kdf.derive(b"B0", SALT, N, R, P, source="10.0.0.2")  # the total is full now
    for _ in range(50):
        assert_429_at_once(kdf.derive(b"y", SALT, N, R, P, source="10.0.0.3"))
    assert kdf.refused == 100
    warned = [formatEvent(e) for e in events if e["log_level"] == LogLevel.warn]
    assert warned == [
        "kdf: 10.0.0.1 has 2 derivations pending: refusing it until one ends",
        "kdf queue full (3 pending): refusing until one ends",
    ]
    fake.run()  # room for one more
    kdf.derive(b"A2", SALT, N, R, P, source="10.0.0.1")
    assert_429_at_once(kdf.derive(b"A3", SALT, N, R, P, source="10.0.0.1"))
    warned = [formatEvent(e) for e in events if e["log_level"] == LogLevel.warn]
    assert len(warned) == 3 and kdf.refused == 101
    while fake.jobs:
        fake.run()
    assert (kdf.pending, kdf.sources) == (0, 0)


def test_the_total_bound_still_applies():
    """threads=1 + maxQueued=4: five pending in all, from two sources each
    under its own bound; a sixth, from anyone, gets 429 at once."""
    kdf, fake = manual(threads=1, maxQueued=4, maxPerSource=8)
    accepted = [kdf.derive(pw("A", i), SALT, N, R, P, source="A") for i in range(3)]
    accepted += [kdf.derive(pw("B", i), SALT, N, R, P, source="B") for i in range(2)]
    assert not any(d.called for d in accepted) and kdf.pending == 5
    assert_429_at_once(kdf.derive(b"C0", SALT, N, R, P, source="C"))
    assert_429_at_once(kdf.derive(b"internal", SALT, N, R, P))
    assert kdf.pending == 5 and kdf.sources == 2
    fake.run()
    late = kdf.derive(b"C0", SALT, N, R, P, source="C")
    assert not late.called
    while fake.jobs:
        fake.run()
    assert outcome(late) == ("ok", want(b"C0"))
    assert (kdf.pending, kdf.sources) == (0, 0)


def test_internal_callers_are_one_source_bounded_only_by_the_total():
    """source=None (the operator shell, callers that pass no address) is
    not held to maxPerSource, but takes turns like any other source."""
    kdf, fake = manual(threads=1, maxQueued=64, maxPerSource=2)
    internal = [kdf.derive(pw("I", i), SALT, N, R, P) for i in range(10)]
    assert not any(d.called for d in internal)
    outside = kdf.derive(b"X0", SALT, N, R, P, source="10.0.0.9")
    assert not outside.called and kdf.sources == 2
    order = [fake.run() for _ in range(3)]
    assert order == [b"I0", b"I1", b"X0"]
    while fake.jobs:
        fake.run()
    assert [outcome(d) for d in internal] == [("ok", want(pw("I", i))) for i in range(10)]
    assert kdf.pending == 0


def test_a_cancelled_waiting_derivation_frees_its_place_and_never_runs():
    kdf, fake = manual(threads=1, maxPerSource=3)
    ds = [kdf.derive(pw("A", i), SALT, N, R, P, source="A") for i in range(3)]
    assert_429_at_once(kdf.derive(b"A3", SALT, N, R, P, source="A"))
    ds[1].cancel()  # waiting: leaves the queue
    assert outcome(ds[1])[1].check(defer.CancelledError)
    assert kdf.pending == 2
    ds.append(kdf.derive(b"A3", SALT, N, R, P, source="A"))
    assert not ds[3].called
    ds[0].cancel()  # running: cannot be stopped
    assert outcome(ds[0])[1].check(defer.CancelledError)
    assert kdf.pending == 3  # it keeps its thread till it ends
    order = []
    while fake.jobs:
        order.append(fake.run())
    assert order == [b"A0", b"A2", b"A3"]
    assert outcome(ds[2]) == ("ok", want(b"A2"))
    assert (kdf.pending, kdf.sources) == (0, 0)


def test_a_failing_derivation_fails_its_caller_and_frees_its_place():
    kdf, fake = manual(threads=1)
    bad = kdf.derive(b"bad", SALT, 3, R, P, source="A")  # N not a power of 2
    good = kdf.derive(b"good", SALT, N, R, P, source="A")
    fake.run()
    got = outcome(bad)
    assert got[0] == "fail" and got[1].check(ValueError)
    fake.run()
    assert outcome(good) == ("ok", want(b"good"))
    assert (kdf.pending, kdf.sources) == (0, 0)


# --- results and stop, with the real threads ---------------------------------------


@pytest_twisted.inlineCallbacks
def test_results_are_standard_scrypt_and_pending_returns_to_zero():
    kdf = KDFPool(threads=2, maxQueued=64, maxPerSource=8)
    try:
        asked = []
        for s in range(3):
            for i in range(5):
                password, salt, length = pw("s%d-" % s, i), SALT[: 8 + i], (32, 64)[i % 2]
                source = "10.0.0.%d" % s if s else None
                asked.append(
                    (
                        password,
                        salt,
                        length,
                        kdf.derive(password, salt, N, R, P, length, source=source),
                    )
                )
        assert kdf.pending == 15 and kdf.sources == 3
        keys = yield defer.gatherResults([d for *_, d in asked]).addTimeout(10, reactor())
        assert keys == [want(password, salt, length=length) for password, salt, length, _ in asked]
        assert (kdf.pending, kdf.sources) == (0, 0)
    finally:
        kdf.stop()


@pytest_twisted.inlineCallbacks
def test_stop_fails_the_waiting_lets_the_running_finish_and_refuses_new_work():
    kdf = KDFPool(threads=1, maxQueued=64, maxPerSource=8)
    try:
        running = kdf.derive(b"first", SALT, N, R, P, source="A")
        waiting = [kdf.derive(pw("A", i), SALT, N, R, P, source="A") for i in range(3)]
        waiting += [kdf.derive(pw("B", i), SALT, N, R, P, source="B") for i in range(3)]
        kdf.stop()  # joins the one running thread: the derivation is tiny
        for d in waiting:  # failed at once, nothing left to hang on
            assert_429_at_once(d, "server shutting down; try later")
        assert_429_at_once(
            kdf.derive(b"late", SALT, N, R, P, source="C"), "server shutting down; try later"
        )
        key = yield running.addTimeout(10, reactor())
        assert key == want(b"first")
        assert (kdf.pending, kdf.sources) == (0, 0)
        # Started again (a service restarted), it works with fresh threads.
        kdf.start()
        key = yield kdf.derive(b"again", SALT, N, R, P, source="A").addTimeout(10, reactor())
        assert key == want(b"again")
    finally:
        kdf.stop()

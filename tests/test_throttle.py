"""
L{netshare.throttle.Penalties}, on a L{task.Clock}: free attempts, growing
and capped delays, one slot after another per key (so parallel attempts buy
nothing), 429 past the longest wait, success taking its count back, decay,
and bounded memory.
"""

import pytest
from twisted.internet.task import Clock

from netshare.errors import RateLimited
from netshare.throttle import Penalties


def make(**kw):
    clock = Clock()
    clock.advance(1000)
    kw.setdefault("decay", 0)  # no forgetting unless a test wants it
    return Penalties(clock, **kw), clock


def test_free_attempts_then_a_doubling_capped_delay():
    p, clock = make(free=3, base=1, max_delay=8, max_wait=10_000)
    waits = []
    for _ in range(9):
        waits.append(p.attempt("k"))
        clock.advance(waits[-1])  # each attempt runs when its slot comes
    assert waits == [0, 0, 0, 1, 2, 4, 8, 8, 8]


def test_parallel_attempts_are_counted_at_once_and_queue_one_after_another():
    """A burst started together: each counts before the previous ones have
    failed, and each waits for the slot after the one before it."""
    p, clock = make(free=2, base=1, max_delay=4, max_wait=1000)
    waits = [p.attempt("k") for _ in range(6)]
    assert waits == [0, 0, 1, 1 + 2, 1 + 2 + 4, 1 + 2 + 4 + 4]


def test_every_key_of_an_attempt_counts_and_the_slowest_decides():
    p, clock = make(free=1, base=1, max_delay=100, max_wait=1000)
    assert p.attempt(("account", 1), ("address", "a")) == 0
    assert p.attempt(("account", 1), ("address", "b")) == 1  # the account is known
    assert p.attempt(("account", 2), ("address", "a")) == 1  # the address is known
    assert p.attempt(("account", 3), ("address", "c")) == 0  # someone else entirely


def test_beyond_the_longest_wait_it_is_429_and_not_counted():
    p, clock = make(free=0, base=10, max_delay=10, max_wait=25)
    assert p.attempt("k") == 10
    assert p.attempt("k") == 20
    with pytest.raises(RateLimited) as e:
        p.attempt("k")
    assert e.value.code == 429 and "try again in" in e.value.text
    assert p.failures("k") == 2 and p.refused == 1
    clock.advance(20)
    assert p.attempt("k") == 10  # the queue moved on


def test_success_takes_the_count_back():
    p, clock = make(free=2, base=1, max_delay=4)
    for _ in range(10):
        assert p.attempt("k") == 0
        p.succeeded("k")
    assert p.failures("k") == 0


def test_failures_are_forgotten_one_per_decay_period():
    p, clock = make(free=2, base=1, max_delay=64, max_wait=1000, decay=60)
    for _ in range(6):
        clock.advance(p.attempt("k"))
    assert p.failures("k") == pytest.approx(6, abs=0.5)
    clock.advance(60 * 4)
    assert p.failures("k") == pytest.approx(2, abs=0.5)
    clock.advance(60 * 10)
    assert p.failures("k") == 0 and p.attempt("k") == 0
    assert p.penalised() == []


def test_memory_is_bounded_and_an_operator_can_lift_a_penalty():
    p, clock = make(free=1, base=1, max_delay=1, max_keys=100)
    for i in range(1000):
        p.attempt(("address", i))
    assert len(p) == 100
    assert p.attempt("k") == 0 and p.attempt("k") == 1
    assert [key for key, _, _ in p.penalised()][-1] == "k"
    assert p.forget("k") and p.attempt("k") == 0

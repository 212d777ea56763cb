"""
Growing delays for repeated failures: how guessing is made slow.

A L{Penalties} object counts failures per key (an account, a client
address, a file) and turns them into a wait before the next attempt:

 - every attempt counts as a failure from the moment it starts until it
   proves otherwise (L{Penalties.succeeded}): counting failures only once
   they are known would let a burst of parallel attempts all start before
   the first one failed;
 - the first C{free} failures cost nothing (people mistype);
 - after that every attempt under that key waits C{base * 2**k} seconds
   (k = failures beyond the free ones), at most C{max_delay};
 - attempts under one key are serialised: each takes the next free slot
   after the previous one, so opening more connections buys nothing;
 - an attempt whose slot is more than C{max_wait} away is refused at once
   (C{429}, saying how long to wait) instead of queueing;
 - failures are forgotten one per C{decay} seconds, so a key that stops
   failing is back to normal after a while.

Every attempt under a penalised key waits, successful ones included: a
delay on failures alone would let a client learn from the answer time
whether a guess was right before the answer comes.

Memory is bounded: at most C{max_keys} keys, the least recently used
forgotten first (forgetting only ever hands a key a clean slate, which the
per-account and per-address keys of the same attempt limit anyway).
"""

import math
from collections import OrderedDict
from dataclasses import dataclass

from netshare.errors import RateLimited


@dataclass
class _Score:
    failures: float = 0.0  # decayed count of failures
    updated: float = 0.0  # when failures was last decayed
    next_slot: float = 0.0  # the earliest time the next attempt may run


class Penalties:
    """
    @ivar refused: attempts refused with 429 so far.
    @ivar delayed: attempts that had to wait so far.
    """

    def __init__(
        self,
        clock,
        *,
        free: int = 5,
        base: float = 1.0,
        max_delay: float = 30.0,
        max_wait: float = 60.0,
        decay: float = 60.0,
        max_keys: int = 100_000,
        what: str = "attempts",
    ):
        self.clock = clock
        self.free = free
        self.base = base
        self.max_delay = max_delay
        self.max_wait = max_wait
        self.decay = decay
        self.max_keys = max_keys
        self.what = what
        self._scores: OrderedDict = OrderedDict()
        self.refused = 0
        self.delayed = 0

    def __len__(self):
        return len(self._scores)

    def _score(self, key, now, create=False):
        score = self._scores.get(key)
        if score is None:
            if not create:
                return None
            score = self._scores[key] = _Score(updated=now)
            if len(self._scores) > self.max_keys:
                self._scores.popitem(last=False)
            return score
        self._scores.move_to_end(key)
        if self.decay and now > score.updated:
            score.failures = max(0.0, score.failures - (now - score.updated) / self.decay)
        score.updated = now
        return score

    def delay(self, failures: float) -> float:
        """The wait an attempt costs after C{failures} failures."""
        beyond = math.floor(failures) - self.free
        if beyond < 0:
            return 0.0
        return min(self.max_delay, self.base * 2 ** min(beyond, 30))

    def attempt(self, *keys) -> float:
        """
        Start one attempt under every key: count it as a failure (until
        L{succeeded}) and take its slot.

        @return: how many seconds the attempt must wait before it runs (0
            when no key is penalised).
        @raise RateLimited: (429) the wait would exceed C{max_wait}; the
            attempt is not counted.
        """
        now = self.clock.seconds()
        start, cost = now, 0.0
        scores = []
        for key in keys:
            score = self._score(key, now, create=True)
            scores.append(score)
            d = self.delay(score.failures)
            if d:
                start = max(start, score.next_slot)
                cost = max(cost, d)
        wait = start + cost - now
        if wait > self.max_wait:
            self.refused += 1
            raise RateLimited(
                "too many %s; try again in %d s"
                % (self.what, math.ceil(wait - self.max_wait) or 1)
            )
        for score in scores:
            score.failures += 1
            if cost:
                score.next_slot = start + cost
        if cost:
            self.delayed += 1
        return wait

    def succeeded(self, *keys):
        """The attempt started by L{attempt} did not fail: take back its count."""
        now = self.clock.seconds()
        for key in keys:
            score = self._score(key, now)
            if score is not None:
                score.failures = max(0.0, score.failures - 1)

    def failures(self, key) -> float:
        score = self._score(key, self.clock.seconds())
        return score.failures if score is not None else 0.0

    def forget(self, key) -> bool:
        """Lift the penalty of one key (an operator's decision)."""
        return self._scores.pop(key, None) is not None

    def penalised(self) -> list:
        """C{[(key, failures, delay)]} of every key that costs a wait now."""
        now = self.clock.seconds()
        out = []
        for key in list(self._scores):
            score = self._score(key, now)
            d = self.delay(score.failures)
            if d:
                out.append((key, round(score.failures, 2), d))
        return out


class TokenBuckets:
    """
    A token bucket per key: C{burst} at once, then C{rate} per second.

    L{allow} takes one token from every key it is given, or from none: an
    attempt is allowed only if each of its keys (a user name, a connection,
    an address) still has a token.

    Memory stays bounded: keys live in LRU order and the least recently used
    are forgotten beyond C{max_keys}.  Forgetting a key only hands it a full
    bucket again, and a bucket refills within C{burst / rate} seconds, so
    the LRU end is almost always a full (equivalent to absent) bucket
    anyway.  C{burst <= 0} or C{rate <= 0} disables the limit.
    """

    def __init__(self, clock, burst: float, rate: float, max_keys: int = 10_000):
        self.clock = clock
        self.burst = float(burst)
        self.rate = float(rate)
        self.max_keys = max_keys
        self._buckets: OrderedDict = OrderedDict()

    @property
    def enabled(self) -> bool:
        return self.burst > 0 and self.rate > 0

    def _bucket(self, key, now):
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = [self.burst, now]
            if len(self._buckets) > self.max_keys:
                self._buckets.popitem(last=False)
            return bucket
        self._buckets.move_to_end(key)
        elapsed = now - bucket[1]
        if elapsed > 0:  # a clock stepping back refills nothing
            bucket[0] = min(self.burst, bucket[0] + elapsed * self.rate)
            bucket[1] = now
        return bucket

    def has(self, *keys) -> bool:
        """Would L{allow} say yes (nothing is taken)?"""
        if not self.enabled:
            return True
        now = self.clock.seconds()
        return all(self._bucket(key, now)[0] >= 1.0 for key in keys)

    def allow(self, *keys) -> bool:
        """Take one token from each of C{keys}; False (taking none) when any
        of them is empty."""
        if not self.enabled:
            return True
        now = self.clock.seconds()
        buckets = [self._bucket(key, now) for key in keys]
        if any(b[0] < 1.0 for b in buckets):
            return False
        for b in buckets:
            b[0] -= 1.0
        return True

    def forget(self, key):
        self._buckets.pop(key, None)

    @staticmethod
    def take_together(*pairs) -> bool:
        """
        L{allow} over several bucket sets at once: C{pairs} of C{(buckets,
        keys)}; one token is taken from every key of every pair, or (when
        any of them is empty) none at all.

        One pass instead of a L{has} and an L{allow} per set: a TWEET
        checks its account, its session and its address.
        """
        taken = []
        for buckets, keys in pairs:
            if buckets.burst <= 0 or buckets.rate <= 0:
                continue
            now = buckets.clock.seconds()
            for key in keys:
                bucket = buckets._bucket(key, now)
                if bucket[0] < 1.0:
                    return False
                taken.append(bucket)
        for bucket in taken:
            bucket[0] -= 1.0
        return True

    def __len__(self) -> int:
        return len(self._buckets)


@dataclass(frozen=True)
class LoginPolicy:
    """
    How failed logins are paid for (every number a setting): C{free}
    failures per key cost nothing; then each attempt under that key waits
    C{base} seconds, doubling per further failure, at most C{max_delay}, one
    attempt after another; one failure is forgotten per C{forget} seconds; an
    attempt that would wait more than C{max_wait} is refused (429).  An
    account with C{lockout} failures is locked for C{lockout_seconds} for
    sources outside the exempt networks (429, saying how long).
    """

    free: int = 5
    base: float = 1.0
    max_delay: float = 180.0
    max_wait: float = 360.0
    forget: float = 180.0
    lockout: int = 20
    lockout_seconds: float = 900.0

    @classmethod
    def from_config(cls, cfg) -> "LoginPolicy":
        """The policy the settings describe (the server and the CLI alike)."""
        return cls(
            free=cfg.login_free,
            base=min(1.0, cfg.login_max_delay),
            max_delay=cfg.login_max_delay,
            max_wait=2 * cfg.login_max_delay,
            forget=cfg.login_forget,
            lockout=cfg.account_lockout,
            lockout_seconds=cfg.account_lockout_seconds,
        )

    def decayed(self, failures, updated_ms, now_ms) -> float:
        if self.forget and now_ms > updated_ms:
            failures -= (now_ms - updated_ms) / 1000.0 / self.forget
        return max(0.0, failures)

    def delay(self, failures) -> float:
        beyond = math.floor(failures) - self.free
        if beyond < 0:
            return 0.0
        return min(self.max_delay, self.base * 2 ** min(beyond, 30))

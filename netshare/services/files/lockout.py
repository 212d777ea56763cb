"""
Wrong file passwords per user and file.

L{PasswordLockout}: 5 wrong passwords for one file by one user within 15
minutes lock that user out of that file for 15 minutes (C{429}); other users
are unaffected.  The lockout is checked before the KDF runs, so a locked-out
guesser costs no scrypt work.
"""

from __future__ import annotations

import math
from collections import OrderedDict, deque
from collections.abc import Hashable
from dataclasses import dataclass

from twisted.internet.interfaces import IReactorTime

from netshare.errors import RateLimited

#: Whose wrong passwords for which file: (the user's account id, the
#: file's name key).
_Key = tuple[Hashable, str]


@dataclass
class _Strikes:
    times: deque[float]
    locked_until: float = 0.0


class PasswordLockout:
    """
    Wrong file passwords per (user, file key): C{max_failures} within
    C{window} seconds lock that user out of that file for C{lockout}
    seconds.  Only failures count; a right password clears the record.

    Memory is bounded: each record keeps at most C{max_failures} times,
    expired records are dropped lazily, and beyond C{max_entries} records
    the least recently touched ones are evicted.
    """

    def __init__(
        self,
        clock: IReactorTime,
        max_failures: int = 5,
        window: float = 900.0,
        lockout: float = 900.0,
        max_entries: int = 100_000,
    ):
        self.clock = clock
        self.max_failures = max_failures
        self.window = window
        self.lockout = lockout
        self.max_entries = max_entries
        self._entries: OrderedDict[_Key, _Strikes] = OrderedDict()
        self._inflight: dict[_Key, int] = {}  # attempts being checked now
        self._last_prune = clock.seconds()

    def __len__(self) -> int:
        return len(self._entries)

    def check(self, user: Hashable, key: str) -> None:
        """
        @raise RateLimited: (429) while C{user} is locked out of C{key}, or
            when its recent failures plus its attempts still in flight (see
            L{begin}) already reach the limit: parallel attempts on several
            connections cannot add up to more guesses than that.
        """
        entry = self._entries.get((user, key))
        now = self.clock.seconds()
        if entry is not None and entry.locked_until > now:
            wait = int(math.ceil(entry.locked_until - now))
            raise RateLimited("too many wrong passwords for this file; try again in %d s" % wait)
        inflight = self._inflight.get((user, key), 0)
        if inflight:
            recent = 0
            if entry is not None:
                recent = sum(1 for t in entry.times if t > now - self.window)
            if recent + inflight >= self.max_failures:
                raise RateLimited(
                    "too many password attempts for this file at once; try again in a moment"
                )

    def begin(self, user: Hashable, key: str) -> None:
        """An attempt is being checked (L{end} when it is decided)."""
        self._inflight[(user, key)] = self._inflight.get((user, key), 0) + 1

    def end(self, user: Hashable, key: str) -> None:
        n = self._inflight.get((user, key), 0) - 1
        if n > 0:
            self._inflight[(user, key)] = n
        else:
            self._inflight.pop((user, key), None)

    def failure(self, user: Hashable, key: str) -> bool:
        """Record a wrong password.  @return: whether the user is now locked out."""
        now = self.clock.seconds()
        entry = self._entries.pop((user, key), None)
        if entry is None:
            entry = _Strikes(deque(maxlen=self.max_failures))
        while entry.times and entry.times[0] <= now - self.window:
            entry.times.popleft()
        entry.times.append(now)
        locked = len(entry.times) >= self.max_failures
        if locked:
            entry.locked_until = now + self.lockout
            entry.times.clear()
        self._entries[(user, key)] = entry
        self._prune(now)
        return locked

    def success(self, user: Hashable, key: str) -> None:
        self._entries.pop((user, key), None)

    def _prune(self, now: float) -> None:
        if len(self._entries) <= self.max_entries and now - self._last_prune < self.window:
            return
        self._last_prune = now
        for k in [
            k
            for k, e in self._entries.items()
            if e.locked_until <= now and (not e.times or e.times[-1] <= now - self.window)
        ]:
            del self._entries[k]
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

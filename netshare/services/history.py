"""
The request history: every command on every port, written in batches.

L{HistoryRecorder.record} only appends to a list; a timer writes the list
with one batched INSERT off the reactor at most every C{interval} seconds,
so recording never slows a reply.  Queries and deletions first flush, so a
caller always sees its own latest commands.  A failed write keeps the
entries and is retried; a clean stop flushes everything.

Ownership rules (docs/protocol.md section 1.8, made precise): without C{user=},
everyone (admins included) sees and clears their own entries, by account
id; an admin may name any user with C{user=NAME} (every account that had
that name), the entries of unauthenticated commands with C{user=-}, and
everyone with C{user=*}.  Deleting and clearing only take entries out of
their owner's view: an admin's view still shows them until the retention
period (C{--history-retention}) purges them, so nobody erases their own
audit trail.
"""

from __future__ import annotations

import builtins
from collections.abc import Hashable
from typing import Any, Protocol

from twisted.internet import task
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from netshare.deferreds import deferred
from netshare.errors import BadArguments, DatabaseUnavailable, NotFound, PermissionDenied
from netshare.services.clock import default_clock
from netshare.storage.history import ALL, HistoryEntry, JournalRow, journal_row
from netshare.text import is_username
from netshare.throttle import TokenBuckets

MAX_BUFFERED = 200_000  # beyond this (database down for long) the oldest go


class HistoryCaller(Protocol):
    """Who asks for a history view: an account, or a
    L{netshare.services.accounts.Caller} (the operator shell's)."""

    @property
    def id(self) -> int | None: ...

    @property
    def name(self) -> str | None: ...

    @property
    def is_admin(self) -> bool: ...


class HistoryStore(Protocol):
    """The store calls the recorder makes (L{netshare.storage.history.HistoryStore})."""

    def insert_many(self, rows: builtins.list[JournalRow], /) -> Deferred[int]: ...

    def list(
        self,
        limit: int,
        /,
        *,
        own: int | None = ...,
        user: str | None = ...,
        anonymous: bool = ...,
    ) -> Deferred[builtins.list[HistoryEntry]]: ...

    def get(self, entry_id: int, /) -> Deferred[tuple[HistoryEntry, int | None, bool] | None]: ...

    def hide(self, entry_id: int, /, *, journal: JournalRow | None) -> Deferred[int]: ...

    def hide_all(
        self,
        *,
        own: int | None = ...,
        user: str | None = ...,
        anonymous: bool = ...,
        journal: JournalRow | None,
    ) -> Deferred[int]: ...

    def purge(self, before_ms: int, /) -> Deferred[int]: ...

    def purge_beyond(self, keep: int, /) -> Deferred[int]: ...


class HistoryRecorder:
    """
    @ivar dropped: entries dropped because the buffer was full.
    """

    log = Logger()

    def __init__(
        self,
        store: HistoryStore,
        clock: IReactorTime | None = None,
        interval: float = 0.2,
        batch: int = 1000,
        max_buffered: int = MAX_BUFFERED,
        prelogin: tuple[float, float] = (10, 1.0),
        prelogin_address: tuple[float, float] = (50, 5.0),
        max_entries: int = 0,
    ):
        clock = default_clock(clock)
        self.store = store
        self.clock = clock
        self.interval = interval
        self.batch = batch
        self.max_buffered = max_buffered
        # (sequence number, row), oldest first; every entry in flight is
        # older than every pending one.
        self._pending: list[tuple[int, JournalRow]] = []  # recorded, not being written yet
        self._inflight: list[tuple[int, JournalRow]] = []  # the batch being written now
        self._waiters: list[tuple[int, Deferred[None]]] = []  # (sequence number to pass, ...)
        self._recorded = 0  # entries ever recorded (the next sequence number)
        self._timer: IDelayedCall | None = None
        self._writing = False
        self._stopped = False  # no more timers (a flush() still writes)
        self._retention = 0.0  # seconds; 0 keeps entries forever
        self.max_entries = max_entries  # 0: no cap
        self._lastSeq = 0  # the last row's seq (see row())
        self._purger: task.LoopingCall | None = None
        # Commands sent before login are recorded at a bounded rate, per
        # connection and per address (see admitPrelogin).
        self._prelogin = TokenBuckets(clock, *prelogin)
        self._preloginAddress = TokenBuckets(clock, *prelogin_address)
        self.dropped = 0
        self.unrecorded = 0  # pre-login commands over the rate, counted only

    def row(
        self,
        ts_ms: int,
        service: str,
        user: str | None,
        peer: str,
        command: str,
        code: int,
        account_id: int | None = None,
    ) -> JournalRow:
        """
        A history row, numbered in the order entries are made: its C{seq}
        is the wall clock in microseconds, but always above the last one
        handed out, so two entries of one millisecond (or of a clock set
        back) still come out in the order they were made.  Rows for the
        batch (L{record}) and rows written with a write
        (L{netshare.storage.history.journaled}) share the numbering.
        """
        seq = max(int(self.clock.seconds() * 1_000_000), self._lastSeq + 1)
        self._lastSeq = seq
        return journal_row(seq, ts_ms, service, user, peer, command, code, account_id)

    def admitPrelogin(self, connection: Hashable, address: str) -> bool:
        """
        May one more command sent before login on C{connection} (any
        hashable key) from C{address} be recorded?  Up to a burst, then a
        steady rate, per connection and per address: a client that never
        logs in cannot make the history grow faster than that, however many
        connections it opens.  A refusal is counted (L{unrecorded}); the
        caller records how many at the end (L{recordUnrecorded}).
        """
        key = ("connection", connection)
        if TokenBuckets.take_together(
            (self._prelogin, (key,)), (self._preloginAddress, (address,))
        ):
            return True
        self.unrecorded += 1
        return False

    def recordUnrecorded(
        self, connection: Hashable, n: int, ts_ms: int, service: str, peer: str
    ) -> None:
        """One entry saying how many commands of a connection were over the
        pre-login rate (so the trail shows they happened), and forget the
        connection's bucket."""
        self._prelogin.forget(("connection", connection))
        if n:
            self.record(
                ts_ms,
                service,
                None,
                peer,
                "<%d commands before login not recorded: over the rate>" % (n,),
                429,
            )
            self.log.info(
                "{n} commands from {peer} before login were over the rate and not "
                "recorded one by one",
                n=n,
                peer=peer,
            )

    def stats(self) -> dict[str, int]:
        """For the operator: what waits, what was dropped, what was counted only."""
        return {
            "pending": len(self._pending) + len(self._inflight),
            "dropped": self.dropped,
            "unrecorded_prelogin": self.unrecorded,
        }

    def record(
        self,
        ts_ms: int,
        service: str,
        user: str | None,
        peer: str,
        command: str,
        code: int,
        account_id: int | None = None,
    ) -> None:
        """
        @param user: the name shown (an account's, a ttweet guest's), or None
            before login.
        @param account_id: the account that sent it, or None.
        """
        # L{row} inlined (its seq rule, journal_row's shape): this runs for
        # every command, and the two calls cost 4 % of PING throughput at
        # 100 connections (bench/peers.py, paired runs).  Keep them in step.
        seq = int(self.clock.seconds() * 1_000_000)
        if seq <= self._lastSeq:
            seq = self._lastSeq + 1
        self._lastSeq = seq
        self._pending.append(
            (
                self._recorded,
                {
                    "seq": seq,
                    "ts_ms": ts_ms,
                    "service": service,
                    "user": user,
                    "account_id": account_id,
                    "peer": peer[:64],
                    "command": command,
                    "code": code,
                },
            )
        )
        self._recorded += 1
        excess = len(self._pending) + len(self._inflight) - self.max_buffered
        if excess > 0 and self._pending:
            # The database is down or slower than the traffic: keep memory
            # bounded and lose the oldest waiting entries (not those in flight).
            excess = min(excess, len(self._pending))
            del self._pending[:excess]
            if self.dropped == 0 or (self.dropped + excess) // 10000 > self.dropped // 10000:
                self.log.error(
                    "history buffer full: {dropped} oldest entries dropped so far",
                    dropped=self.dropped + excess,
                )
            self.dropped += excess
            self._wakeWaiters()
        if self._timer is None and not self._writing and not self._stopped:
            self._timer = self.clock.callLater(self.interval, self._tick)

    def _tick(self) -> None:
        self._timer = None
        # Only an errback: a failed write was logged and will be retried.
        self.flush().addErrback(lambda f: None)

    def _unsettled(self) -> int:
        """The sequence number of the oldest entry not yet written (or dropped)."""
        if self._inflight:
            return self._inflight[0][0]
        if self._pending:
            return self._pending[0][0]
        return self._recorded

    def flush(self) -> Deferred[None]:
        """
        @return: a Deferred that fires once everything recorded before this
            call is written (later records do not delay it, however fast they
            come), or fails if a write failed (entries are kept and retried
            later).
        """
        d: Deferred[None] = Deferred()
        if self._unsettled() >= self._recorded:
            d.callback(None)
            return d
        self._waiters.append((self._recorded, d))
        if not self._writing:
            self._writeNext()
        return d

    def _wakeWaiters(self) -> None:
        done = self._unsettled()
        ready = [w for w in self._waiters if w[0] <= done]
        if ready:
            self._waiters = [w for w in self._waiters if w[0] > done]
            for _, d in ready:
                d.callback(None)

    def _writeNext(self) -> None:
        if not self._pending:
            return
        self._writing = True
        batch = self._inflight = self._pending[: self.batch]
        del self._pending[: len(batch)]
        self._write(batch)

    @deferred
    async def _write(self, batch: list[tuple[int, JournalRow]]) -> None:
        """Write C{batch} (which is L{_inflight}), then decide what next."""
        try:
            try:
                await self.store.insert_many([row for _, row in batch])
            except DatabaseUnavailable:
                raise
            except Exception:
                # Not an outage: the database refused some row.  Write the
                # batch row by row and drop only what it refuses, so one bad
                # entry can never block the history for good.
                await self._salvage(batch)
        except Exception:
            self._writeFailed(Failure(), batch)
        else:
            self._written()

    def _written(self) -> None:
        self._inflight = []
        self._writing = False
        self._wakeWaiters()
        if self._waiters or len(self._pending) >= self.batch:
            self._writeNext()  # someone waits, or a full batch is ready
        elif self._pending and self._timer is None and not self._stopped:
            self._timer = self.clock.callLater(self.interval, self._tick)

    def _writeFailed(self, failure: Failure, batch: list[tuple[int, JournalRow]]) -> None:
        self._inflight = []
        self._writing = False
        self._pending[:0] = batch  # back in front, in order, to be retried
        self.log.warn(
            "history write failed ({n} entries kept, retrying): {error}",
            n=len(self._pending),
            error=failure.getErrorMessage(),
        )
        if self._timer is None and not self._stopped:
            self._timer = self.clock.callLater(max(1.0, self.interval), self._tick)
        waiters, self._waiters = self._waiters, []
        for _, w in waiters:
            w.errback(failure)

    async def _salvage(self, batch: list[tuple[int, JournalRow]]) -> None:
        """Insert C{batch} one row at a time, dropping rows the database
        refuses; an outage part-way leaves the unwritten rest in C{batch}
        (to be put back in front) and raises."""
        for i, (_, row) in enumerate(batch):
            try:
                await self.store.insert_many([row])
            except DatabaseUnavailable:
                del batch[:i]
                raise
            except Exception as e:
                self.dropped += 1
                self.log.error(
                    "history: the database refused an entry ({service}, code "
                    "{code}): dropped: {error}",
                    service=row.get("service"),
                    code=row.get("code"),
                    error=str(e).splitlines()[0][:200],
                )
        del batch[:]

    @deferred
    async def stop(self, attempts: int = 3) -> None:
        """Write everything before the database goes away (a clean stop loses nothing)."""
        self._stopped = True
        self.stopRetention()
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        for _ in range(attempts):
            try:
                await self.flush()
                return
            except Exception:
                pass  # logged by the write; try again
        if self._pending or self._inflight:
            self.log.error(
                "history: {n} entries could not be written at shutdown",
                n=len(self._pending) + len(self._inflight),
            )

    # -- retention

    def startRetention(self, retention: float, interval: float = 3600.0) -> None:
        """Purge entries older than C{retention} seconds (0: keep them) and
        beyond L{max_entries} (0: no cap), now and every C{interval} seconds."""
        if not retention and not self.max_entries:
            return
        self._retention = retention
        self._purger = task.LoopingCall(self.purgeExpired)
        self._purger.clock = self.clock
        self._purger.start(interval, now=True).addErrback(
            lambda f: self.log.failure("history retention stopped", f)
        )

    def stopRetention(self) -> None:
        purger, self._purger = self._purger, None
        if purger is not None and purger.running:
            purger.stop()

    @deferred
    async def purgeExpired(self) -> int:
        """Delete the entries older than the retention period.
        @return: Deferred[int] rows deleted."""
        before = int((self.clock.seconds() - self._retention) * 1000)
        total = 0
        try:
            while self._retention:
                n = await self.store.purge(before)
                total += n
                if n < 10_000:
                    break
            if self.max_entries:
                total += await self.store.purge_beyond(self.max_entries)
        except Exception as e:
            self.log.warn(
                "history retention: purge failed, retrying later: {error}",
                error=str(e).splitlines()[0][:200] if str(e) else repr(e),
            )
        if total:
            self.log.info(
                "history retention: {n} entries purged (older than {days} days, or "
                "beyond {cap} entries)",
                n=total,
                days=round(self._retention / 86400, 2),
                cap=self.max_entries or "no",
            )
        return total

    # -- views

    def _view(self, caller: HistoryCaller, user: str | None) -> dict[str, Any]:
        """
        Which entries a query/clear addresses, as keyword arguments of the
        store: the caller's own view (C{own=<account id>}, hidden entries
        left out), or for an admin a name, C{*} or C{-} (every entry,
        hidden ones included).
        """
        if user is None or (user == caller.name and not caller.is_admin):
            return {"own": caller.id}
        if not caller.is_admin:
            raise PermissionDenied("only an admin may see other users' history")
        if user == "*":
            return {"user": ALL}
        if user == "-":
            return {"anonymous": True}
        if not is_username(user):
            raise BadArguments("user= must be an account name, - or *")
        return {"user": user}

    @deferred
    async def query(
        self, caller: HistoryCaller, user: str | None, limit: int
    ) -> list[HistoryEntry]:
        view = self._view(caller, user)
        await self.flush()
        return await self.store.list(limit, **view)

    @deferred
    async def delete(
        self, caller: HistoryCaller, entry_id: int, journal: JournalRow | None = None
    ) -> None:
        """Take one entry out of its owner's view (an admin may do so for
        anyone's): 550 if there is none the caller could see.
        C{journal}: this command's own history row, written with the change."""
        await self.flush()
        found = await self.store.get(entry_id)
        if found is None:
            raise NotFound("no history entry %d" % (entry_id,))
        _, owner, hidden = found
        if not caller.is_admin:
            if owner != caller.id:
                raise PermissionDenied("not your history entry")
            if hidden:
                raise NotFound("no history entry %d" % (entry_id,))
        await self.store.hide(entry_id, journal=journal)

    @deferred
    async def clear(
        self, caller: HistoryCaller, user: str | None, journal: JournalRow | None = None
    ) -> int:
        """Take a view's entries out of their owners' views; the clear's own
        entry (C{journal}) is written in the same transaction, after them.
        @return: Deferred[int] how many were taken out."""
        view = self._view(caller, user)
        await self.flush()
        return await self.store.hide_all(**view, journal=journal)

"""
The ttweet batch writer: published tweets become durable a batch at a time.

The hub fans a tweet out at once and hands it here; nothing on the fan-out
path waits for the database.  The writer stores the queued tweets, their
timeline entries (registered recipients' account ids) and their history
rows with one store call per batch, at most one call in flight, and fires
each tweet's Deferred when its batch is committed: that is when the
publisher gets C{200 ok}.

Group commit without a timer (the default, C{batch_interval} 0): a tweet
that arrives while no batch is being written starts one at once, alone;
tweets that arrive while a batch is in flight make the next batch, which
starts the moment that one is committed.  An idle server acknowledges a
tweet one commit after it arrives; a busy one puts everything that arrived
during a commit into the next, so batches grow with the load and no tweet
waits for a clock.  A positive C{batch_interval} adds a wait before a batch
starts (fewer, larger transactions at the cost of latency).

A database outage does not lose tweets and does not grow memory without
bound: a failed batch goes back to the front of the queue and is retried
with backoff; a publisher that waited C{fail_after} gets
L{DatabaseUnavailable} (451) while its tweet stays queued and is stored
once the database is back; the hub refuses new tweets while too many rows
wait (L{BatchWriter.pending_rows}).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from netshare.errors import DatabaseUnavailable

#: A tweet as the wire shows it (docs/protocol.md section 3).
Tweet = dict[str, Any]

#: What one batch hands the store: the tweet rows, the timeline entries
#: (tweet id, registered recipients' account ids) and the TWEETs' history
#: rows (tweet id, row); fires with the number of tweets stored.
SaveBatch = Callable[
    [list[dict[str, Any]], list[tuple[int, list[int]]], list[tuple[int, dict[str, Any]]]],
    "Deferred[int]",
]


class PendingTweet:
    """One published tweet waiting to be stored (with its timeline entries)."""

    __slots__ = ("tweet", "ts_ms", "recipients", "deferred", "since", "rows", "journal")

    def __init__(
        self,
        tweet: Tweet,
        ts_ms: int,
        recipients: list[int],
        deferred: Deferred[Tweet],
        since: float,
        journal: dict[str, Any] | None = None,
    ):
        self.tweet = tweet
        self.ts_ms = ts_ms
        self.recipients = recipients  # registered recipients' account ids
        self.deferred: Deferred[Tweet] | None = deferred  # None once fired or failed
        self.since = since
        self.journal = journal  # the TWEET's history row, stored with the tweet
        self.rows = 1 + len(recipients) + (journal is not None)


class BatchWriter:
    """
    Stores L{PendingTweet}s a batch at a time; see the module docstring.

    States: idle (queue empty) -> armed (timer running) -> in flight (one
    store call) -> idle, armed or in flight again; a failed call puts its
    batch back at the front of the queue and waits out a backoff (retry
    call) before the next attempt.

    @param save: the store call for one batch (the hub's store's
        C{save_batch}).
    @param batch_interval: a queued tweet waits at most this long before its
        batch starts (unless a batch is already being written); 0: no wait.
    @param batch_rows: start a batch at once when this many rows (tweets +
        timeline entries) are queued.
    @param batch_max_rows: rows per store call, at most (a backlog after an
        outage is written in several calls, never one huge transaction).
    @param fail_after: a publisher waiting this long for a failing database
        gets L{DatabaseUnavailable}; the tweet stays queued.
    @param retry_delays: backoff between failed batches (the last repeats).
    @param stop_timeout: how long L{stop} keeps retrying before it gives up
        on what is still queued (and logs how much).

    @ivar stored: tweets stored so far.
    @ivar flush_failures: store calls that failed so far.
    """

    log = Logger()

    def __init__(
        self,
        save: SaveBatch,
        clock: IReactorTime,
        *,
        batch_interval: float,
        batch_rows: int,
        batch_max_rows: int,
        fail_after: float,
        retry_delays: Iterable[float],
        stop_timeout: float,
    ):
        self.save = save
        self.clock = clock
        self.batch_interval = batch_interval
        self.batch_rows = batch_rows
        self.batch_max_rows = batch_max_rows
        self.fail_after = fail_after
        self.retry_delays = tuple(retry_delays) or (1.0,)
        self.stop_timeout = stop_timeout

        self._queue: deque[PendingTweet] = deque()
        self._queued_rows = 0
        self._pending_rows = 0  # queued + in flight
        self._inflight: list[PendingTweet] | None = None
        self._timer: IDelayedCall | None = None
        self._retry_call: IDelayedCall | None = None
        self._failures = 0
        self._stopping = False
        self._stop_deadline = 0.0
        self._stop_waiters: list[Deferred[None]] = []

        self.stored = 0
        self.flush_failures = 0

    @property
    def pending_rows(self) -> int:
        """Rows (tweets, timeline entries, history rows) not yet stored."""
        return self._pending_rows

    def pending(self) -> list[PendingTweet]:
        """Tweets not yet known to be stored, oldest first."""
        return (self._inflight or []) + list(self._queue)

    def pending_count(self) -> int:
        """How many tweets L{pending} would return."""
        return len(self._queue) + len(self._inflight or ())

    def add(self, p: PendingTweet) -> None:
        """Queue a published tweet; its Deferred fires once it is stored."""
        self._queue.append(p)
        self._queued_rows += p.rows
        self._pending_rows += p.rows
        if self._inflight is not None or self._retry_call is not None:
            return
        if self._queued_rows >= self.batch_rows or self.batch_interval <= 0:
            self._cancel_timer()
            self._start_flush()
        elif self._timer is None:
            self._timer = self.clock.callLater(self.batch_interval, self._timer_fired)

    def stop(self) -> Deferred[None]:
        """
        Write everything queued.

        Fires (never fails) when the queue is empty, or after
        C{stop_timeout} of failed attempts, when what is left is logged as
        lost and its publishers get L{DatabaseUnavailable}.
        """
        d: Deferred[None] = Deferred()
        self._stop_waiters.append(d)
        if not self._stopping:
            self._stopping = True
            self._stop_deadline = self.clock.seconds() + self.stop_timeout
            self._cancel_timers()
        if self._inflight is None and self._retry_call is None:
            self._next_step(failed=False)
        return d

    # --- the state machine ---------------------------------------------

    def _timer_fired(self) -> None:
        self._timer = None
        if self._inflight is None and self._retry_call is None and self._queue:
            self._start_flush()

    def _retry_fired(self) -> None:
        self._retry_call = None
        self._expire_waiters()
        if self._inflight is None and self._queue:
            self._start_flush()

    def _start_flush(self) -> None:
        batch: list[PendingTweet] = []
        rows = 0
        queue = self._queue
        while queue and (not batch or rows + queue[0].rows <= self.batch_max_rows):
            p = queue.popleft()
            batch.append(p)
            rows += p.rows
        self._queued_rows -= rows
        self._inflight = batch
        tweet_rows = []
        entries = []
        journals = []
        for p in batch:
            t = p.tweet
            tweet_rows.append(
                {
                    "id": t["id"],
                    "user": t["user"],
                    "message": t["message"],
                    "hashtags": t["hashtags"],
                    "ts_ms": p.ts_ms,
                }
            )
            if p.recipients:
                entries.append((t["id"], p.recipients))
            if p.journal is not None:
                journals.append((t["id"], p.journal))
        # A callback chain, not a coroutine: this is the publish path, and
        # _flush_done/_flush_failed are the state machine's transitions.
        d = maybeDeferred(self.save, tweet_rows, entries, journals)
        d.addCallbacks(
            self._flush_done,
            self._flush_failed,
            callbackArgs=(batch, rows),
            errbackArgs=(batch, rows),
        )
        d.addErrback(lambda f: self.log.failure("ttweet batch writer bug", f))

    def _flush_done(self, _result: object, batch: list[PendingTweet], rows: int) -> None:
        self._inflight = None
        self._pending_rows -= rows
        if self._failures:
            self.log.info("tweets are stored again after {n} failed attempts", n=self._failures)
        self._failures = 0
        self.stored += len(batch)
        # Without a timer, the next batch starts before this one's
        # publishers are answered: the database thread commits it while the
        # reactor writes these replies (in a closed loop of 100 publishers
        # the two otherwise took turns, each idle while the other worked).
        # Not while stopping: stop() fires only after every reply is out.
        overlap = self.batch_interval <= 0 and not self._stopping and bool(self._queue)
        if overlap:
            self._start_flush()
        for p in batch:
            d, p.deferred = p.deferred, None
            if d is not None:
                d.callback(p.tweet)
        if not overlap:
            self._next_step(failed=False)

    def _flush_failed(self, failure: Failure, batch: list[PendingTweet], rows: int) -> None:
        self._inflight = None
        self._failures += 1
        self.flush_failures += 1
        self.log.warn(
            "storing {count} tweets failed (attempt {attempt}): {error}",
            count=len(batch),
            attempt=self._failures,
            error=failure.getErrorMessage(),
        )
        self._queue.extendleft(reversed(batch))
        self._queued_rows += rows
        self._expire_waiters()
        self._next_step(failed=True)

    def _next_step(self, failed: bool) -> None:
        """After a batch (or at stop): decide when the next one starts."""
        if self._inflight is not None or self._retry_call is not None:
            # A publisher's callback (run while the last batch's Deferreds
            # fired) published or stopped and a batch or a retry started
            # meanwhile: it comes back here when done.  Without this, stop()
            # could fire while that batch is still being written, and two
            # batches could be in flight at once.
            return
        if self._stopping:
            if not self._queue:
                self._fire_stop_waiters()
            elif not failed:
                self._start_flush()
            elif self.clock.seconds() >= self._stop_deadline:
                self._abandon()
                self._fire_stop_waiters()
            else:
                self._retry_call = self.clock.callLater(self._backoff(), self._retry_fired)
            return
        if not self._queue:
            return
        if failed:
            self._retry_call = self.clock.callLater(self._backoff(), self._retry_fired)
        else:
            # The oldest entry has waited during the last batch already.
            wait = self._queue[0].since + self.batch_interval - self.clock.seconds()
            if wait <= 0 or self._queued_rows >= self.batch_rows:
                self._cancel_timer()
                self._start_flush()
            elif self._timer is None:
                self._timer = self.clock.callLater(wait, self._timer_fired)

    def _backoff(self) -> float:
        return self.retry_delays[min(self._failures, len(self.retry_delays)) - 1]

    def _expire_waiters(self) -> None:
        """Fail publishers that waited C{fail_after}; their tweets stay queued."""
        limit = self.clock.seconds() - self.fail_after
        expired = 0
        for p in self._queue:
            if p.since > limit:
                break
            d, p.deferred = p.deferred, None
            if d is not None:
                expired += 1
                d.errback(DatabaseUnavailable())
        if expired:
            self.log.error(
                "{count} tweets not yet stored after {seconds}s; publishers told 451, "
                "still retrying",
                count=expired,
                seconds=self.fail_after,
            )

    def _abandon(self) -> None:
        lost = list(self._queue)
        self._queue.clear()
        self._queued_rows = 0
        self._pending_rows = 0
        self.log.critical(
            "shutting down with {count} tweets not stored (ids {first}..{last})",
            count=len(lost),
            first=lost[0].tweet["id"],
            last=lost[-1].tweet["id"],
        )
        for p in lost:
            d, p.deferred = p.deferred, None
            if d is not None:
                d.errback(DatabaseUnavailable())

    def _fire_stop_waiters(self) -> None:
        waiters, self._stop_waiters = self._stop_waiters, []
        for d in waiters:
            d.callback(None)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            if self._timer.active():
                self._timer.cancel()
            self._timer = None

    def _cancel_timers(self) -> None:
        self._cancel_timer()
        if self._retry_call is not None:
            if self._retry_call.active():
                self._retry_call.cancel()
            self._retry_call = None

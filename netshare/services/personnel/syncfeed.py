"""
One live SYNC stream: a sync client's pending outbox messages, pushed as
C{61x} lines at the pace its connection drains (docs/protocol.md section 4).

A module of its own because it is the personnel service's hot path and its
one state machine: page reads from the store, read-ahead, writes in blocks,
backpressure from the connection and retries after a database error all
meet here, and nowhere else.

An outbox message whose action this server does not know (a newer
server's, say) is logged and skipped, never sent; every other message is
sent exactly as stored.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from netshare.services.clock import default_clock
from netshare.storage.outbox import DELETE, DELETE_ALL, SAVE, Message

#: Messages read from the outbox per query by one sync stream.
DEFAULT_PAGE_SIZE = 500

#: Seconds a sync stream waits before reading again after a database error.
DEFAULT_RETRY_DELAY = 5.0

#: A sync stream writes its pushes in blocks of about this many bytes: one
#: C{transport.write} per block instead of one per message, while the sink's
#: writability is still checked often enough that a page of large records
#: never lands in the connection's output at once.
DEFAULT_CHUNK_BYTES = 32 * 1024

#: The push code of each message action.
PUSH_CODES = {SAVE: 610, DELETE: 611, DELETE_ALL: 612}

#: C{"<code> %d <ACTION> %s\r\n"} per action: a push is one C{%} away.
_PUSH_FORMATS = {
    action: "%d %%d %s %%s\r\n" % (code, action) for action, code in PUSH_CODES.items()
}


class SyncSink(Protocol):
    """
    Where a L{SyncFeed} pushes: the personnel protocol's connection.

    It calls L{SyncFeed.resume} when its output has drained and
    L{SyncFeed.stop} when the connection closes.  It may also have
    C{streamFailed()}, called when the feed stopped on an unexpected error
    (the connection should then close; the client reconnects and gets
    everything unacknowledged again).
    """

    def sendPushes(self, data: bytes, count: int) -> None:
        """Write C{count} complete push lines, CRLF-terminated, at once."""

    def writable(self) -> bool:
        """Whether more output may be written now (not over the limit)."""

    def streamReplaced(self) -> None:
        """A newer SYNC of the same client took over this stream."""


class OutboxReader(Protocol):
    """The one store call a feed makes (L{netshare.storage.personnel.PersonnelStore})."""

    def pending_page(self, client: str, after_seq: int, limit: int, /) -> Deferred[list[Message]]:
        """Up to C{limit} messages of C{client} after C{after_seq}, in seq order."""


class SyncFeed:
    """
    Drives one SYNC stream: reads the client's pending messages a page at a
    time and pushes them to C{sink}, then waits for L{notify}.

    A page is written in blocks of about C{chunk_bytes}: each block is the
    push lines of consecutive messages, encoded once and handed to the sink
    in one call (the payload is the outbox's JSON text as stored: nothing is
    decoded or re-encoded).  Writability is checked before every block.

    Memory stays bounded by two pages: the one being written and the next
    one, read ahead while the current one is still being written or waits
    for the sink to drain (so the database round trip overlaps the
    network instead of adding to it).  No further page is read until the
    current one is written.  If the sink stops being writable in the middle
    of a page, the rest of that page waits in C{_backlog} until L{resume},
    so a page of large records never piles up in the connection's output
    (which would get the reader dropped as a slow reader).  A notify that
    arrives while a page is being read is remembered, so a message queued
    during that read is never missed.

    @param on_stop: called with the feed once it stops (the service forgets
        it then).
    @ivar lastSent: the highest seq pushed so far (or the start point).
    @ivar sent: how many messages this stream pushed.
    """

    log = Logger()

    def __init__(
        self,
        store: OutboxReader,
        client: str,
        sink: SyncSink,
        after: int = 0,
        *,
        page_size: int = DEFAULT_PAGE_SIZE,
        clock: IReactorTime | None = None,
        retry_delay: float = DEFAULT_RETRY_DELAY,
        on_stop: Callable[[SyncFeed], object] | None = None,
        chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    ):
        self.store = store
        self.client = client
        self.sink = sink
        self.lastSent = after
        self.sent = 0
        self.page_size = page_size
        self.chunk_bytes = max(1, chunk_bytes)
        self.clock = default_clock(clock)
        self.retry_delay = retry_delay
        self.stopped = False
        self._on_stop = on_stop
        self._started = False
        self._wanted = True  # there may be messages we have not read yet
        self._fetching = False  # a page read is in flight
        self._pumping = False  # guards against re-entering the pump loop
        self._retry: IDelayedCall | None = None  # delayed call after a database error
        self._backlog: list[Message] = []  # rest of the page being written (the sink was full)
        self._ahead: list[Message] | None = None  # the next page, read ahead, not yet written
        self._readUpTo = after  # the highest seq read so far: the next read starts there

    @property
    def caughtUp(self) -> bool:
        """Everything queued so far has been pushed; waiting for L{notify}."""
        return (
            self._started
            and not self._wanted
            and not self._fetching
            and not self._backlog
            and not self._ahead
        )

    def start(self) -> None:
        """Begin pushing (call after the C{200 syncing} reply is written)."""
        self._started = True
        self._pump()

    def notify(self) -> None:
        """New messages were queued for this client."""
        self._wanted = True
        self._pump()

    def resume(self) -> None:
        """The sink's output drained: continue if there is more to send."""
        self._pump()

    def stop(self) -> None:
        """The connection closed or the stream was replaced: push nothing more."""
        if self.stopped:
            return
        self.stopped = True
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self._retry = None
        self._backlog = []
        self._ahead = None
        if self._on_stop is not None:
            self._on_stop(self)

    def _pump(self) -> None:
        # A loop rather than recursion: with a store whose Deferreds fire
        # synchronously, _gotPage runs inside this loop and only stores the
        # page.
        if self._pumping:
            return
        self._pumping = True
        try:
            while self._started and not self.stopped:
                if not self._backlog and self._ahead is not None:
                    self._backlog, self._ahead = self._ahead, None
                if self._backlog:
                    self._write(self._backlog)
                    if self.stopped:
                        return
                    if not self._backlog and self._ahead is not None:
                        continue  # the page ahead becomes the current one
                if (
                    self._wanted
                    and not self._fetching
                    and self._ahead is None
                    and self._retry is None
                ):
                    # Read the next page now, even if the sink is full: at
                    # most one page ahead of the one being written.
                    self._wanted = False
                    self._fetching = True
                    # A callback chain, not a coroutine: the page feeds this
                    # loop's state machine, which must not wait for it.
                    d = self.store.pending_page(self.client, self._readUpTo, self.page_size)
                    d.addCallbacks(self._gotPage, self._pageFailed)
                    d.addErrback(self._bug)
                    continue  # the page may be here already
                return
        except Exception:
            self._bug(Failure())
        finally:
            self._pumping = False

    def _gotPage(self, messages: list[Message]) -> None:
        self._fetching = False
        if self.stopped:
            return
        if len(messages) >= self.page_size:
            self._wanted = True
        if messages:
            self._readUpTo = messages[-1].seq
            self._ahead = messages
        self._pump()

    def _write(self, messages: list[Message]) -> None:
        """Push C{messages} in blocks while the sink is writable; keep the
        rest in C{_backlog}."""
        formats = _PUSH_FORMATS
        limit = self.chunk_bytes
        i, n = 0, len(messages)
        while i < n:
            if self.stopped:
                # The sink dropped its connection while we were writing
                # (e.g. a slow reader over its output limit).
                self._backlog = []
                return
            if not self.sink.writable():
                self._backlog = messages[i:]
                return
            lines: list[str] = []
            size = 0
            while i < n and size < limit:
                message = messages[i]
                i += 1
                fmt = formats.get(message.action)
                if fmt is None:
                    if lines:
                        i -= 1  # send what precedes it first, in seq order
                        break
                    self.log.error(
                        "skipping outbox message {client}/{seq} with unknown action {action}",
                        client=self.client,
                        seq=message.seq,
                        action=message.action,
                    )
                    self.lastSent = message.seq
                    continue
                line = fmt % (message.seq, message.payload)
                lines.append(line)
                size += len(line)
            if lines:
                self.sink.sendPushes("".join(lines).encode("utf-8"), len(lines))
                self.sent += len(lines)
                self.lastSent = messages[i - 1].seq
        self._backlog = []

    def _pageFailed(self, failure: Failure) -> None:
        self._fetching = False
        self._wanted = True
        if self.stopped:
            return
        self.log.warn(
            "sync stream for {client} cannot read its outbox, retrying in {delay}s: {error}",
            client=self.client,
            delay=self.retry_delay,
            error=failure.getErrorMessage(),
        )
        self._retry = self.clock.callLater(self.retry_delay, self._retryNow)

    def _retryNow(self) -> None:
        self._retry = None
        self._pump()

    def _bug(self, failure: Failure) -> None:
        # An unexpected error writing a page: stop, rather than read the
        # same page again and again.  The sink closes the connection; the
        # client reconnects and gets everything unacknowledged again.
        self.log.failure("sync stream for {client} failed", failure, client=self.client)
        if not self.stopped:
            self.stop()
            failed = getattr(self.sink, "streamFailed", None)  # optional: see SyncSink
            if failed is not None:
                failed()

"""
The personnel sync client (C{netshare-personnel sync}): keeps a local SQLite
copy of what the server sends this account, over one long-lived connection
(docs/protocol.md section 4), and survives disconnects and crashes without
losing or repeating a change.

This module is the session logic only; the command line that starts it is
L{netshare.clients.personnel}, the local database is
L{netshare.clients.syncdb.LocalStore}, and the connection is an ordinary
L{netshare.clients.protocol.ClientProtocol}, whose line framing already
costs linear time per read.

 - it connects, logs in and sends C{SYNC after=<last applied seq>};
 - pushes arriving together (one read from the socket, or within
   C{batch_delay}) are applied as one batch, at most C{batch_max}
   messages, in one local transaction that also records the last seq, then
   acknowledged with one cumulative C{ACK <highest seq committed>}, never
   before the commit (so a crash anywhere loses nothing and applies nothing
   twice: what is not acknowledged is sent again and skipped by its seq).
   At most one ACK is in flight; batches committed while it is answered
   are covered by the next one;
 - while a batch is being applied and more than C{2 * batch_max} messages
   wait, it stops reading the socket (C{pauseProducing}), so a fast server
   cannot fill the client's memory: TCP backpressure reaches the server's
   sync feed;
 - the reactor thread only splits lines and buffers pushes; parsing, JSON
   decoding and every blocking SQLite call run in one dedicated worker
   thread, in order;
 - every applied change is logged, cheaply: one C{info} event per committed
   batch, C{applied 500 changes, seq 1..500: 1 SAVE 000001, 2 SAVE 000002,
   ..., 500 DELETE_ALL *}, with the fields C{count}, C{first}, C{last} and
   C{changes} (that list as one string: C{"<seq> <action> <ssn>"} joined
   by C{", "}); with C{log_each}, also one C{debug} event per change with
   the person's name.  A twisted.logger event costs about as much as
   applying ten changes to SQLite, so one event per change made logging
   the bottleneck of a large push;
 - after any disconnect it reconnects with exponential backoff (C{retry_min}
   doubling up to C{retry_max}, with jitter), resuming after its last
   applied seq, and acknowledges that seq at once (the acknowledgement of
   the last batch before a disconnect may have been lost); a wrong password
   or a refused SYNC (the local copy belongs to another server) stops it
   with L{SyncFailed}.
"""

from __future__ import annotations

import functools
import random
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from twisted.internet import defer, task
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool

from netshare.clients.protocol import ClientProtocol, CommandFailed, login
from netshare.deferreds import deferred

#: Push code -> action (docs/protocol.md section 4).
PUSH_ACTIONS = {610: "SAVE", 611: "DELETE", 612: "DELETE_ALL"}

#: Replies that retrying cannot fix: stop the sync client.
FATAL_CODES = frozenset({500, 501, 503, 530, 531, 535})

#: A parsed push: (seq, action, the JSON payload as text).
Message = tuple[int, str, str]

#: A change applied to the local copy: (seq, action, the payload decoded).
Change = tuple[int, str, dict[str, Any]]


class LocalCopy(Protocol):
    """
    The local database a L{SyncClient} writes
    (L{netshare.clients.syncdb.LocalStore}); its methods block and are
    called only in the client's own worker thread.
    """

    def last_seq(self) -> int: ...

    def apply_messages(self, messages: Sequence[Message]) -> list[Change]: ...


class SyncFailed(Exception):
    """The sync client cannot go on (bad password, SYNC refused)."""


class BadPush(ValueError):
    """A push that is not C{61x <seq> <ACTION> <json>} (or out of order)."""


class SyncSession:
    """One connection's state: pushes received but not yet applied, and the
    acknowledgements."""

    def __init__(self, proto: ClientProtocol) -> None:
        self.proto = proto
        self.buffer: list[tuple[int, str]] = []  # (code, text) of each push, unparsed
        self.flushCall: IDelayedCall | None = None
        self.paused = False
        self.acked = 0  # the highest seq an ACK was sent for
        self.ackWanted = 0  # the highest seq committed locally
        self.ackInFlight = False

    @property
    def connected(self) -> bool:
        transport = self.proto.transport
        return transport is not None and bool(getattr(transport, "connected", False))


class SyncClient:
    """
    See the module docstring.

    @param store: the local copy (blocking; called only in this client's
        own worker thread).
    @param connector: returns a Deferred firing with a greeted
        L{ClientProtocol}.
    @ivar applied: messages applied since start.
    @ivar batches: local transactions committed since start.
    @ivar connections: connections made since start.
    """

    log = Logger(namespace="netshare.services.personnel.sync")

    def __init__(
        self,
        reactor: Any,
        store: LocalCopy,
        connector: Callable[[], defer.Deferred[ClientProtocol]],
        user: str,
        password: str,
        *,
        retry_min: float = 1.0,
        retry_max: float = 30.0,
        batch_max: int = 500,
        batch_delay: float = 0.005,
        command_timeout: float = 60.0,
        rng: random.Random | None = None,
        log_each: bool = False,
    ) -> None:
        self.reactor = reactor
        self.store = store
        self.connector = connector
        self.user = user
        self.password = password
        self.retry_min = retry_min
        self.retry_max = max(retry_max, retry_min)
        self.batch_max = max(1, batch_max)
        self.batch_delay = batch_delay
        self.command_timeout = command_timeout
        self.rng = rng or random.Random()
        self.log_each = log_each  # one debug event per change as well
        self.applied = 0
        self.batches = 0
        self.connections = 0
        self._pool = ThreadPool(minthreads=1, maxthreads=1, name="netshare-syncdb")
        self._session: SyncSession | None = None
        self._applying: defer.Deferred[None] | None = None  # the batch being applied
        self._sleep: defer.Deferred[None] | None = None
        self._stopping = False
        self._stopped = False
        self._loop: defer.Deferred[None] | None = None

    # -- lifecycle

    def start(self) -> defer.Deferred[None]:
        """Run until L{stop}; the Deferred fails with L{SyncFailed} on a
        fatal refusal."""
        self._pool.start()
        self._loop = defer.ensureDeferred(self._run())
        return self._loop

    @deferred
    async def stop(self) -> None:
        """Disconnect, let a batch being applied commit, stop the worker."""
        self._stopping = True
        if self._sleep is not None and not self._sleep.called:
            self._sleep.cancel()
        session = self._session
        if session is not None:
            self._cancelFlush(session)
            if session.connected:
                session.proto.close()
        if self._applying is not None:
            await self._applying
        if self._loop is not None:
            try:
                await self._loop
            except Exception:
                pass
        if not self._stopped:
            self._stopped = True
            self._pool.stop()

    def _db(self, fn: Callable[..., Any], *args: Any) -> defer.Deferred[Any]:
        return deferToThreadPool(self.reactor, self._pool, fn, *args)

    # -- the connection loop

    async def _run(self) -> None:
        delay = self.retry_min
        while not self._stopping:
            proto = None
            try:
                proto = await self.connector()
                self.connections += 1
                # A server that accepts but never answers must not hang us.
                await login(proto, self.user, self.password).addTimeout(
                    self.command_timeout, self.reactor
                )
                last = await self._db(self.store.last_seq)
                session = self._session = SyncSession(proto)
                proto.onPush = functools.partial(self._onPush, session)
                resp = await proto.command("SYNC after=%d" % (last,)).addTimeout(
                    self.command_timeout, self.reactor
                )
                if resp.code != 200:
                    raise CommandFailed(resp)
                self.log.info("syncing as {user} after seq {seq}", user=self.user, seq=last)
                if last > 0:
                    # The ACK of the last batch before a disconnect may have
                    # been lost; the server does not send those messages
                    # again (we asked for after=last), so acknowledge them
                    # here or they would stay pending for ever.
                    self._ack(session, last)
                delay = self.retry_min
                await proto.closed
                if not self._stopping:
                    self.log.warn("sync connection closed; reconnecting")
            except CommandFailed as e:
                if e.code in FATAL_CODES:
                    self.log.error("sync refused: {reply}", reply=e.response.line)
                    raise SyncFailed(e.response.line) from None
                self.log.warn("sync refused for now: {reply}", reply=e.response.line)
            except Exception as e:
                if self._stopping:
                    break
                self.log.warn("cannot sync with the server: {error}", error=_reason(e))
            finally:
                if proto is not None and proto.isOpen:
                    proto.abort()
                ended, self._session = self._session, None
                if ended is not None:
                    self._cancelFlush(ended)
                    ended.buffer = []
            if self._stopping:
                break
            wait = delay * (0.5 + self.rng.random() / 2)
            self.log.info("reconnecting in {delay:.2f}s", delay=wait)
            self._sleep = task.deferLater(self.reactor, wait, lambda: None)
            try:
                await self._sleep
            except defer.CancelledError:
                break
            finally:
                self._sleep = None
            delay = min(delay * 2, self.retry_max)

    # -- pushes and batches

    def _onPush(self, session: SyncSession, code: int, text: str) -> None:
        # Runs once per push: only buffer it.  Parsing and decoding happen in
        # the worker thread with the batch (L{_applyPushes}).
        if session is not self._session:
            return
        buffer = session.buffer
        buffer.append((code, text))
        if len(buffer) >= 2 * self.batch_max and not session.paused:
            # Stop reading until the batches in hand are applied.
            session.paused = True
            session.proto.pauseProducing()
        if self._applying is None:
            if len(buffer) >= self.batch_max:
                self._flush(session)
            elif session.flushCall is None:
                session.flushCall = self.reactor.callLater(self.batch_delay, self._flush, session)

    def _cancelFlush(self, session: SyncSession) -> None:
        if session.flushCall is not None and session.flushCall.active():
            session.flushCall.cancel()
        session.flushCall = None

    def _flush(self, session: SyncSession) -> None:
        self._cancelFlush(session)
        if self._applying is not None or not session.buffer or session is not self._session:
            return
        batch = session.buffer[: self.batch_max]
        del session.buffer[: self.batch_max]
        applying = self._applyBatch(session, batch)
        if not applying.called:
            # (A batch that failed at once has already cleared _applying,
            # and may have started the next one.)
            self._applying = applying

    @deferred
    async def _applyBatch(self, session: SyncSession, batch: list[tuple[int, str]]) -> None:
        """Apply one batch in the worker thread, then acknowledge it and
        resume reading; never fails (a failure drops the connection)."""
        try:
            changes, top = await self._db(self._applyPushes, batch)
        except BadPush as e:
            self._applying = None
            self.log.error("{error}; reconnecting", error=str(e))
            self._drop(session)
            return
        except Exception:
            self._applying = None
            self.log.failure("cannot apply a batch to the local database; reconnecting")
            self._drop(session)
            return
        self._applying = None
        try:
            self._applied(session, changes, top)
        except Exception:
            self.log.failure("sync client bug")

    def _applyPushes(self, pushes: list[tuple[int, str]]) -> tuple[list[Change], int]:
        """In the worker thread: parse C{pushes} and apply them in one local
        transaction.  @return: (the changes applied, the highest seq of the
        batch -- applied now or before, either way safe to acknowledge)."""
        messages = parse_pushes(pushes)
        return self.store.apply_messages(messages), messages[-1][0]

    def _applied(self, session: SyncSession, changes: list[Change], top: int) -> None:
        self.batches += 1
        self.applied += len(changes)
        if changes:
            self._logChanges(changes)
        if session is not self._session or not session.connected:
            return
        self._ack(session, top)
        if session.paused and len(session.buffer) < self.batch_max:
            session.paused = False
            session.proto.resumeProducing()
        if session.buffer:
            if len(session.buffer) >= self.batch_max or self.batch_delay <= 0:
                self._flush(session)
            elif session.flushCall is None:
                session.flushCall = self.reactor.callLater(self.batch_delay, self._flush, session)

    def _drop(self, session: SyncSession) -> None:
        if session.connected:
            session.proto.close()

    def _ack(self, session: SyncSession, seq: int) -> None:
        """Acknowledge everything up to C{seq} (committed locally).  At most
        one ACK is in flight: whatever commits meanwhile is covered by one
        cumulative ACK when the answer comes, so a fast stream of small
        batches costs the server one acknowledgement per round trip, not
        one per batch."""
        if seq > session.ackWanted:
            session.ackWanted = seq
        if session.ackInFlight or session.ackWanted <= session.acked or not session.connected:
            return
        seq = session.acked = session.ackWanted
        session.ackInFlight = True
        self._sendAck(session, seq)

    @deferred
    async def _sendAck(self, session: SyncSession, seq: int) -> None:
        try:
            resp = await session.proto.command("ACK %d" % (seq,))
        except Exception:
            # The connection closed first; the next session acknowledges
            # what was committed (it resumes after the local last seq).
            session.ackInFlight = False
            return
        session.ackInFlight = False
        if resp.code != 200:
            self.log.warn("ACK {seq} refused: {reply}", seq=seq, reply=resp.line)
        if session is self._session:
            self._ack(session, seq)

    def _logChanges(self, changes: list[Change]) -> None:
        """One info event for the batch, listing every change; per change
        only at debug level (see the module docstring)."""
        if self.log_each:
            for seq, action, payload in changes:
                if action == "SAVE":
                    self.log.debug(
                        "applied {seq} SAVE {ssn} ({name} {surname})",
                        seq=seq,
                        action=action,
                        ssn=payload.get("ssn"),
                        name=payload.get("name"),
                        surname=payload.get("surname"),
                    )
                elif action == "DELETE":
                    self.log.debug(
                        "applied {seq} DELETE {ssn}",
                        seq=seq,
                        action=action,
                        ssn=payload.get("ssn"),
                    )
                else:
                    self.log.debug("applied {seq} DELETE_ALL", seq=seq, action=action, ssn=None)
        # One string, not a list of lists: a JSON log observer encodes a
        # 5000-item list per batch at ~1 us an item (as much as the apply),
        # a string at memory speed; "%d %s %s" per change is the only cost.
        listed = ", ".join(
            [
                "%d %s %s" % (seq, action, payload.get("ssn", "*"))
                for seq, action, payload in changes
            ]
        )
        self.log.info(
            "applied {count} changes, seq {first}..{last}: {changes}",
            count=len(changes),
            first=changes[0][0],
            last=changes[-1][0],
            changes=listed,
        )


def parse_pushes(pushes: Sequence[tuple[int, str]]) -> list[Message]:
    """
    C{[(code, text)]} as received -> C{[(seq, action, payload text)]}.

    @raise BadPush: an unparsable push, or seqs that do not rise (the
        server sends each stream in seq order): nothing of the batch may be
        applied then.
    """
    out: list[Message] = []
    append = out.append
    actions = PUSH_ACTIONS
    previous = -1
    for code, text in pushes:
        parts = text.split(" ", 2)
        action = actions.get(code)
        if len(parts) != 3 or action is None or parts[1] != action or not parts[0].isdigit():
            raise BadPush("unparsable push %d %s" % (code, text[:200]))
        seq = int(parts[0])
        if seq <= previous:
            raise BadPush("push %d after %d: out of order" % (seq, previous))
        previous = seq
        append((seq, action, parts[2]))
    return out


def _reason(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__

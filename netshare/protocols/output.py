"""
The output side of a command connection: what is written, when, and how
much may wait (docs/protocol.md section 1: slow readers, pushes, order).

L{Output} is registered on the transport as a streaming producer only to
learn when the transport's send buffer is full and when it has drained.
While it is full, everything written counts against C{max_output}, and a
connection past it is dropped: one reader that never reads cannot make the
server hold unbounded memory or make anyone else wait.  Pushes (6xx lines)
wait while raw data is in flight (no line may land inside it) and, for
protocols that ask, are gathered per reactor turn.

L{HeldReplies} keeps replies in command order behind a reply that comes
later (L{netshare.protocols.replies.Later}).
"""

from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

from twisted.internet import defer
from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from zope.interface import implementer

from netshare.protocols import writethrough

CRLF = b"\r\n"


class Writer(Protocol):
    """What L{Output} writes for: the connection."""

    transport: Any
    factory: Any
    service: str
    peer: str

    @property
    def closing(self) -> bool: ...

    @property
    def transferring(self) -> bool: ...

    @property
    def user(self) -> str | None: ...

    def countCommandBytes(self, nbytes: int) -> None: ...

    def outputDrained(self) -> None: ...

    def dropped(self) -> None: ...


@implementer(IPushProducer)
class Output:
    """See the module docstring.

    @ivar full: the transport's buffer is over its limit.
    @ivar queuedWhileFull: bytes written since it became full.
    """

    log = Logger()

    def __init__(self, writer: Writer, max_output: int):
        self.writer = writer
        self.max_output = max_output
        self.full = False
        self.queuedWhileFull = 0
        self.registered = False
        self._pushQueue: list[bytes] = []  # pushes held back by raw data
        self._pushQueued = 0
        self._turnPushes: list[bytes] | None = None

    # -- IPushProducer, as the transport's observer

    def pauseProducing(self) -> None:
        # The transport calls this again on every write while its buffer is
        # over the limit: only the first call starts the count.
        if not self.full:
            self.full = True
            self.queuedWhileFull = 0

    def resumeProducing(self) -> None:
        self.full = False
        self.queuedWhileFull = 0
        self.writer.outputDrained()

    def stopProducing(self) -> None:
        pass

    def register(self) -> None:
        # Tracked here: a TLS transport does not expose its producer as
        # C{transport.producer} (that attribute is the TCP transport's, and
        # holds a wrapper), so identity checks on it do not work.
        if not self.registered:
            self.full = False
            transport = self.writer.transport
            try:
                transport.registerProducer(self, True)
            except RuntimeError:  # a raw-send producer that never unregistered
                transport.unregisterProducer()
                transport.registerProducer(self, True)
            self.registered = True

    def unregister(self) -> None:
        """Off the transport: during a raw send (its producer takes the
        place) and before a close (the transport would resume us instead
        of closing)."""
        if self.registered:
            self.registered = False
            self.writer.transport.unregisterProducer()

    # -- writing

    def send(self, data: bytes) -> None:
        """Write C{data} now, counting it; drop the connection past C{max_output}."""
        writer = self.writer
        if writer.closing:
            return  # the closing line (421, 221, 500) was the last one
        writer.factory.stats.bytes_out += len(data)
        writer.countCommandBytes(len(data))
        if self.full:
            self.queuedWhileFull += len(data)
            if self.queuedWhileFull + self._pushQueued > self.max_output:
                return self.dropSlowReader()
        if self.registered:
            # Between raw transfers (a raw send's producer takes the
            # transport's producer slot and waits for its buffer to drain).
            writethrough.write(writer.transport, data)
        else:
            writer.transport.write(data)

    def sendReply(self, lines: list[str]) -> None:
        """A reply's lines: the pushes gathered before it first, then the
        lines in one write (the path of every answer)."""
        if self._turnPushes is not None:
            self.writeTurnPushes()
        if len(lines) == 1:
            self.send(lines[0].encode("utf-8") + CRLF)
        else:
            self.send(CRLF.join([line.encode("utf-8") for line in lines]) + CRLF)

    def push(self, data: bytes, count: int = 1) -> None:
        """C{count} push lines: written now, or queued while raw data flows."""
        writer = self.writer
        if writer.closing:
            return
        if writer.transferring:
            self._pushQueue.append(data)
            self._pushQueued += len(data)
            if self._pushQueued > self.max_output:
                self.dropSlowReader()
            return
        writer.factory.stats.pushes += count
        self.send(data)

    def pushThisTurn(self, data: bytes) -> None:
        """Gather a push to be written with the others of this reactor turn
        (once per delivery on the fan-out path: an append, after the first)."""
        if self._turnPushes is not None:
            self._turnPushes.append(data)
            return
        if self.writer.closing:
            return
        self._turnPushes = [data]
        self.writer.factory.endOfTurn(self.writeTurnPushes)

    def writeTurnPushes(self) -> None:
        """Write the pushes gathered this turn, as one chunk (before any
        reply, so they keep the order things happened in)."""
        buf, self._turnPushes = self._turnPushes, None
        if buf:
            self.push(buf[0] if len(buf) == 1 else b"".join(buf), len(buf))

    def flushQueued(self) -> None:
        """Raw data is over: write the pushes that waited for it."""
        if self._pushQueue and not self.writer.transferring:
            queue, self._pushQueue, self._pushQueued = self._pushQueue, [], 0
            for data in queue:
                self.writer.factory.stats.pushes += 1
                self.send(data)

    def discard(self) -> None:
        """The connection is gone: forget what waits."""
        self._pushQueue, self._pushQueued, self._turnPushes = [], 0, None

    def dropSlowReader(self) -> None:
        writer = self.writer
        if writer.closing:
            return
        self.log.warn(
            "dropping slow reader {peer}: more than {limit} bytes queued",
            service=writer.service,
            peer=writer.peer,
            user=writer.user,
            limit=self.max_output,
        )
        writer.factory.stats.slow_drops += 1
        self.discard()
        writer.dropped()


class _Slot:
    """A reply reserved in command order, filled in when known."""

    __slots__ = ("lines",)

    def __init__(self) -> None:
        self.lines: list[str] | None = None


class HeldReplies:
    """
    Replies in command order behind one that comes later: a reserved slot
    per L{Later}, the replies after it queued behind, each released as soon
    as everything before it is ready.

    @ivar paused: the connection stopped reading because too many wait.
    """

    def __init__(self, write: Callable[[list[str]], None]):
        self.write = write
        self.paused = False
        #: What waits (true when a reply is held): tested on every reply.
        self.queue: deque[_Slot | list[str]] = deque()
        self._waiters: list[defer.Deferred[None]] = []

    def __len__(self) -> int:
        return len(self.queue)

    def append(self, lines: list[str]) -> None:
        """A ready reply, behind the held ones."""
        self.queue.append(lines)

    def reserve(self, lines: "defer.Deferred[list[str]]") -> None:
        """A place for the reply C{lines} will give, written in its turn."""
        slot = _Slot()
        self.queue.append(slot)
        lines.addCallback(self._fill, slot)

    def _fill(self, lines: list[str], slot: _Slot) -> None:
        slot.lines = lines
        self.release()

    def release(self) -> None:
        """Write every reply at the head that is ready; wake the waiters
        once none is left."""
        queue = self.queue
        while queue:
            head = queue[0]
            lines = head.lines if isinstance(head, _Slot) else head
            if lines is None:
                break
            queue.popleft()
            self.write(lines)
        if not queue and self._waiters:
            waiters, self._waiters = self._waiters, []
            for w in waiters:
                w.callback(None)

    def whenEmpty(self) -> "defer.Deferred[None]":
        """Fires once no reply is held (at once if none is)."""
        if not self.queue:
            return defer.succeed(None)
        d: defer.Deferred[None] = defer.Deferred()
        self._waiters.append(d)
        return d

    def clear(self) -> None:
        self.queue.clear()

"""
Raw data inside a line protocol: the pieces that move an upload's bytes
into a consumer and a download's bytes out of a producer, with
backpressure both ways (docs/protocol.md section 1, raw mode).

L{CommandProtocol} (netshare/protocols/line.py) decides I{when} a transfer
starts and ends; these objects hold what one transfer needs while it runs,
so the protocol does not carry a dozen fields that mean something only
during an upload.
"""

from collections.abc import Callable
from typing import Any, Protocol

from twisted.internet import defer
from twisted.internet.interfaces import IConsumer, IPushProducer
from twisted.python.failure import Failure
from zope.interface import implementer

from netshare.protocols.replies import ReceiveRaw


class Pausable(Protocol):
    """What the raw input producer pauses and resumes: the connection."""

    transport: Any

    def pauseProducing(self) -> None: ...

    def resumeProducing(self) -> None: ...


@implementer(IPushProducer)
class RawInputProducer:
    """
    The connection's raw input as a streaming producer for an upload's
    consumer: the consumer pauses it when its queue is full (the socket is
    then not read), resumes it when drained, and stops it to give up (the
    connection is closed).  Only while the upload still expects bytes: once
    the last byte is in, reading is the line protocol's business again.
    """

    def __init__(self, connection: Pausable, receive: "RawReceive"):
        self.connection = connection
        self.receive = receive

    def pauseProducing(self) -> None:
        if self.receive.remaining:
            self.connection.pauseProducing()

    def resumeProducing(self) -> None:
        if self.receive.remaining:
            self.connection.resumeProducing()

    def stopProducing(self) -> None:
        if self.connection.transport:
            self.connection.transport.loseConnection()


class RawReceive:
    """
    One L{ReceiveRaw} in progress: exactly C{raw.size} bytes go to
    C{raw.consumer}; then C{raw.finish()} gives the reply, or, if the
    connection is lost first, C{raw.abort()} runs and L{done} fails.

    @ivar remaining: bytes still expected.
    @ivar done: fires with the final reply (the result of C{raw.finish}).
    """

    def __init__(self, raw: ReceiveRaw, connection: Pausable):
        self.raw = raw
        self.remaining = raw.size
        self.done: defer.Deferred[Any] = defer.Deferred()
        raw.consumer.registerProducer(RawInputProducer(connection, self), True)

    def feed(self, data: bytes) -> tuple[int, bytes]:
        """Give the consumer what belongs to the upload.
        @return: (bytes taken, the rest: the next pipelined lines)."""
        chunk, rest = data[: self.remaining], data[self.remaining :]
        self.remaining -= len(chunk)
        self.raw.consumer.write(chunk)
        return len(chunk), rest

    def finish(self) -> "defer.Deferred[Any]":
        """The last byte is in: the consumer's reply (C{raw.finish})."""
        self.raw.consumer.unregisterProducer()
        return defer.maybeDeferred(self.raw.finish)

    def abort(self, reason: Exception | Failure, log: Any) -> None:
        """The connection went away mid-transfer: let the consumer clean up."""
        self.remaining = 0
        try:
            self.raw.consumer.unregisterProducer()
        except Exception:
            pass
        if self.raw.abort is not None:
            try:
                self.raw.abort()
            except Exception:
                log.failure("aborting an upload")
        if not self.done.called:
            self.done.errback(reason)


@implementer(IConsumer)
class CountingConsumer:
    """
    Stands between a download's producer and the transport, telling the
    connection about every chunk written (byte counts, and the stall
    timer: a transfer that makes no progress for a whole idle timeout is
    cut).
    """

    def __init__(self, transport: Any, wrote: Callable[[int], None]):
        self.transport = transport
        self.wrote = wrote

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        self.transport.registerProducer(producer, streaming)

    def unregisterProducer(self) -> None:
        self.transport.unregisterProducer()

    def write(self, data: bytes) -> None:
        self.wrote(len(data))
        self.transport.write(data)

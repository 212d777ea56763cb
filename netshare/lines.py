"""
The line framing of every connection, server and client: a small line
receiver that costs linear time per read.

Twisted's C{LineReceiver.dataReceived} splits one line off its buffer at a
time (C{buffer.split(delimiter, 1)}), copying the rest of the buffer for
every line: a 64 KiB read of ~150-byte pushes is ~430 lines and ~14 MB of
copying, which was the largest single cost of the personnel sync client on
a large push, and makes a burst of pipelined commands cost quadratic time
on the server.  L{LinearLineReceiver} finds the line ends of a read in one
pass (C{bytes.find} from the previous end) and keeps only the unfinished
tail, as a list of pieces, so a long line arriving in many reads is joined
once.  Every client connection uses it, from the first byte (the greeting)
to the last: command replies, pushes and the raw bytes of a download.

It keeps what C{LineReceiver} (with C{delimiter = b"\\n"}) promises:

 - lines end with LF; one CR before the LF is removed (CRLF or a bare LF);
 - a line longer than C{MAX_LENGTH} bytes (counting a CR before its LF), or
   an unfinished one that grew beyond it, goes to L{lineLengthExceeded}
   with everything received after it (which drops the connection unless
   overridden);
 - L{pauseProducing} stops delivery at once, even in the middle of a read
   (the lines not delivered wait), and pauses the transport, so the peer
   meets TCP backpressure; L{resumeProducing} delivers what waits first;
 - L{setRawMode} sends every byte after the current line to
   L{rawDataReceived} until L{setLineMode}, whose C{extra} bytes are framed
   as lines again;
 - delivery stops after a line once the transport is disconnecting;
 - data received while a line is being delivered (re-entry) is queued
   behind what is being delivered.
"""

from __future__ import annotations

from typing import cast

from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Protocol

_CR = ord("\r")


class LinearLineReceiver(Protocol):
    """
    A line receiver with pausing and a raw mode; subclasses implement
    L{lineReceived} and, if they use the raw mode, L{rawDataReceived}.

    @ivar paused: whether delivery (and the transport) is paused.
    """

    #: The longest line accepted, in bytes (a CR before the LF counts).
    MAX_LENGTH = 16384
    #: While paused, how many received bytes may wait undelivered before
    #: the transport itself is paused.  None: pause the transport at once.
    #: A server sets a bound: pausing and resuming a socket is two
    #: C{epoll_ctl} calls, which a per-command pause (replies stay in
    #: order) would pay on every command; memory stays bounded either way.
    readAhead: int | None = None

    def __init__(self) -> None:
        self.paused = False
        self._lineMode = True
        self._tail: list[bytes] = []  # the unfinished line: pieces with no LF
        self._tailSize = 0
        self._unread = b""  # received, not framed yet (follows the tail)
        self._busy = False  # inside dataReceived: re-entry only queues
        self._transportPaused = False

    # -- what subclasses implement

    def lineReceived(self, line: bytes) -> None:
        """One line, without its CRLF or LF."""
        raise NotImplementedError

    def rawDataReceived(self, data: bytes) -> None:
        """Bytes received in raw mode."""
        raise NotImplementedError

    def lineLengthExceeded(self, line: bytes) -> None:
        """A line too long (C{line}: its beginning and what followed it):
        drop the connection."""
        if self.transport is not None:
            self.transport.loseConnection()

    # -- modes and flow control

    @property
    def lineMode(self) -> bool:
        """Whether received bytes are framed as lines (else raw)."""
        return self._lineMode

    def setRawMode(self) -> None:
        """Send the bytes after the current line to L{rawDataReceived}."""
        self._lineMode = False

    def setLineMode(self, extra: bytes = b"") -> None:
        """Frame lines again, starting with C{extra} (bytes received in raw
        mode that belong to the lines after it)."""
        self._lineMode = True
        if extra:
            self._receive(extra)

    def pauseProducing(self) -> None:
        """Stop delivering lines; stop reading the transport (at once, or
        once L{readAhead} bytes wait)."""
        self.paused = True
        if self.readAhead is None or len(self._unread) > self.readAhead:
            self._pauseTransport()

    def resumeProducing(self) -> None:
        """Deliver what waits, then read the transport again."""
        self.paused = False
        if self._transportPaused:
            self._transportPaused = False
            producer = self._producer()
            if producer is not None:
                producer.resumeProducing()
        self._receive(b"")

    def stopProducing(self) -> None:
        """Stop for good: deliver nothing more."""
        self.paused = True
        producer = self._producer()
        if producer is not None:
            producer.stopProducing()

    @property
    def buffered(self) -> int:
        """Bytes received and not delivered yet (bounded by L{readAhead}
        plus one read while paused)."""
        return self._tailSize + len(self._unread)

    def clearLineBuffer(self) -> bytes:
        """Forget (and return) everything received and not delivered yet."""
        waiting = b"".join(self._tail) + self._unread
        self._tail, self._tailSize, self._unread = [], 0, b""
        return waiting

    def _pauseTransport(self) -> None:
        if not self._transportPaused:
            self._transportPaused = True
            producer = self._producer()
            if producer is not None:
                producer.pauseProducing()

    def _producer(self) -> IPushProducer | None:
        # Stream transports (TCP, TLS, the test transports) are push
        # producers; Protocol.transport is typed as the narrower ITransport.
        return cast("IPushProducer | None", self.transport)

    # -- receiving

    def dataReceived(self, data: bytes) -> None:
        self._receive(data)

    def _receive(self, data: bytes) -> None:
        """Frame and deliver; the one path of every byte (what
        L{dataReceived} got, and what waited while paused or in raw mode)."""
        if self._unread:
            self._unread += data
        else:
            self._unread = data
        if self._busy:
            return
        if self.paused:
            if self.readAhead is not None and len(self._unread) > self.readAhead:
                self._pauseTransport()
            return
        self._busy = True
        try:
            while self._unread and not self.paused:
                data, self._unread = self._unread, b""
                if not self._lineMode:
                    self._passRaw(data)
                    continue
                rest = self._frame(data)
                if rest is None:  # a line too long: everything went with it
                    return
                if rest:
                    self._unread = rest + self._unread
                if self._disconnecting():
                    return
        finally:
            self._busy = False

    def _disconnecting(self) -> bool:
        return bool(getattr(self.transport, "disconnecting", False))

    def _passRaw(self, data: bytes) -> None:
        if self._tail:
            data = b"".join(self._tail) + data
            self._tail, self._tailSize = [], 0
        self.rawDataReceived(data)

    def _frame(self, data: bytes) -> bytes | None:
        """
        Deliver the lines of C{data} (which follows the tail), in one pass.

        @return: the bytes not framed because delivery had to stop (paused,
            raw mode, disconnecting), C{b""} if all were framed, or C{None}
            after L{lineLengthExceeded}.
        """
        limit = self.MAX_LENGTH
        find = data.find
        end = find(b"\n")
        if end < 0:
            self._tail.append(data)
            self._tailSize += len(data)
            if self._tailSize > limit:
                self._exceeded(b"")
                return None
            return b""
        start = 0
        if self._tail:
            if self._tailSize + end > limit:
                self._exceeded(data)
                return None
            self._tail.append(data[:end])
            line = b"".join(self._tail)
            self._tail, self._tailSize = [], 0
            start = end + 1
            self.lineReceived(line[:-1] if line[-1:] == b"\r" else line)
            if self.paused or not self._lineMode or self._disconnecting():
                return data[start:]
            end = find(b"\n", start)
        while end >= 0:
            if end - start > limit:
                self._exceeded(data[start:])
                return None
            if end > start and data[end - 1] == _CR:
                line = data[start : end - 1]
            else:
                line = data[start:end]
            start = end + 1
            self.lineReceived(line)
            if self.paused or not self._lineMode or self._disconnecting():
                return data[start:]
            end = find(b"\n", start)
        if start < len(data):
            tail = data[start:]
            self._tail.append(tail)
            self._tailSize = len(tail)
            if self._tailSize > limit:
                self._exceeded(b"")
                return None
        return b""

    def _exceeded(self, rest: bytes) -> None:
        line = b"".join(self._tail) + rest + self._unread
        self._tail, self._tailSize, self._unread = [], 0, b""
        self.lineLengthExceeded(line)

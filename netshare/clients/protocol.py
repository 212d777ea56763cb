"""
The client side of the netshare line protocol, used by every client program
and by the tests: one code path, asynchronous (the command-line programs run
it under L{twisted.internet.task.react}).

L{ClientProtocol.command} sends one command and returns a Deferred firing
with a L{Response} when its whole reply has arrived; commands may be
pipelined and replies are matched in order.  Listings come back parsed
(C{response.items}), single-object replies too (C{response.obj}).  Server
pushes (6xx) go to C{onPush(code, text)} and are never mixed into a reply.
L{ClientProtocol.upload} streams a file after C{350} with a producer;
L{ClientProtocol.download} writes exactly the announced bytes of a C{150}
into a file-like sink.  L{connect} verifies TLS certificates and host names
(service_identity) before any command is sent.

Lines are framed by L{netshare.lines.LinearLineReceiver} (linear
time per read), so a connection that receives a long stream of pushes, such
as the personnel sync client's, needs nothing else: the protocol the
factory builds serves the whole connection.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, cast

from twisted.internet import defer
from twisted.internet.interfaces import IStreamClientEndpoint, ITCPTransport
from twisted.internet.protocol import Factory, connectionDone
from twisted.logger import Logger
from twisted.protocols.basic import FileSender
from twisted.python.failure import Failure

from netshare.clients.replies import CommandFailed as CommandFailed
from netshare.clients.replies import Response as Response
from netshare.clients.replies import final_response, split_reply_line
from netshare.clients.replies import quote as quote
from netshare.deferreds import deferred
from netshare.lines import LinearLineReceiver

#: Bytes per write of an upload: 16 KiB chunks (FileSender's default) made
#: uploads 1.8 times slower than 256 KiB ones on loopback.
CHUNK = 256 * 1024

#: C{progress} callables get the byte count of each chunk sent or received.
Progress = Callable[[int], object]


class Source(Protocol):
    """What an upload reads from: a binary file opened for reading."""

    def read(self, n: int = -1, /) -> bytes: ...


class Sink(Protocol):
    """What a download writes to: a binary file opened for writing."""

    def write(self, data: bytes, /) -> object: ...


class ProtocolError(Exception):
    """The server said something that does not fit the protocol."""


class WrongService(ConnectionError):
    """The server greeted as another netshare service (a wrong --port)."""


class _Pending:
    """A command sent (or waiting to be sent) and the reply lines so far."""

    def __init__(
        self,
        line: str,
        kind: str = "line",
        source: Source | None = None,
        sink: Sink | None = None,
        progress: Progress | None = None,
    ) -> None:
        self.line = line
        self.kind = kind
        self.source = source
        self.sink = sink
        self.progress = progress
        self.deferred: defer.Deferred[Response] = defer.Deferred()
        self.lines: list[str] = []
        self.rawResponse: int | None = None
        self.sent = False


@dataclass
class _Download:
    """The raw bytes of a download being received."""

    pending: _Pending
    sink: Sink
    size: int
    got: int = 0


class ClientProtocol(LinearLineReceiver):
    """
    @ivar greeting: Deferred firing with the C{220} line.
    @ivar closed: Deferred firing (with C{None}) when the connection is lost.
    @ivar onPush: callable(code, text) for 6xx lines (default: collected in
        C{pushes}).
    """

    log = Logger()
    MAX_LENGTH = 16 * 1024 * 1024

    def __init__(self) -> None:
        super().__init__()
        self.greeting: defer.Deferred[str] = defer.Deferred()
        self.closed: defer.Deferred[None] = defer.Deferred()
        self.onPush: Callable[[int, str], object] | None = None
        self.pushes: list[tuple[int, str]] = []
        self._queue: list[_Pending] = []  # commands sent (or waiting to be sent), in order
        self._blocked = False  # an upload is between its command and its last byte
        self._receiving: _Download | None = None
        self._greeted = False

    # -- lifecycle

    @property
    def isOpen(self) -> bool:
        """Whether the transport is (still) connected."""
        return self.transport is not None and bool(getattr(self.transport, "connected", False))

    @property
    def busy(self) -> bool:
        """Whether a command or a transfer is still unanswered (a QUIT would
        wait behind it: after a Ctrl-C it may never be answered)."""
        return bool(self._queue) or self._blocked or self._receiving is not None

    def connectionMade(self) -> None:
        if hasattr(self.transport, "setTcpNoDelay"):
            try:
                cast(ITCPTransport, self.transport).setTcpNoDelay(True)
            except Exception:
                pass

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        err = ConnectionError("connection closed: %s" % (reason.getErrorMessage(),))
        if not self._greeted:
            self.greeting.errback(reason)
        queue, self._queue = self._queue, []
        for p in queue:
            if not p.deferred.called:
                p.deferred.errback(err)
        self._receiving = None
        self.closed.callback(None)

    def close(self) -> defer.Deferred[None]:
        """Close the connection; @return: L{closed}."""
        if self.transport is not None:
            self.transport.loseConnection()
        return self.closed

    def abort(self) -> None:
        """Drop the connection at once (nothing more is sent)."""
        if self.transport is not None:
            cast(ITCPTransport, self.transport).abortConnection()

    # -- sending

    def command(self, line: str) -> defer.Deferred[Response]:
        """Send one command line; fire with its L{Response} (any code)."""
        return self._enqueue(_Pending(line))

    def upload(
        self, line: str, source: Source, progress: Progress | None = None
    ) -> defer.Deferred[Response]:
        """
        Send an UPLOAD-style command; after C{350 send <n> bytes}, stream
        exactly n bytes from the binary file C{source}.  Fires with the final
        reply (C{226 ...} or an error), or the refusal before 350.
        """
        return self._enqueue(_Pending(line, "upload", source=source, progress=progress))

    def download(
        self, line: str, sink: Sink, progress: Progress | None = None
    ) -> defer.Deferred[Response]:
        """
        Send a DOWNLOAD-style command; after C{150 <n> bytes sha256=<hex>},
        write exactly n bytes to C{sink} (a binary file).  Fires with the
        final C{226} reply whose C{lines[0]} is the 150 line.
        """
        return self._enqueue(_Pending(line, "download", sink=sink, progress=progress))

    def _enqueue(self, pending: _Pending) -> defer.Deferred[Response]:
        if not self.isOpen:
            return defer.fail(ConnectionError("not connected"))
        self._queue.append(pending)
        self._pump()
        return pending.deferred

    def _pump(self) -> None:
        transport = self.transport
        assert transport is not None
        for p in self._queue:
            if self._blocked:
                return
            if not p.sent:
                p.sent = True
                transport.write(p.line.encode("utf-8") + b"\r\n")
                if p.kind == "upload":
                    # The server will read raw bytes right after this line:
                    # nothing else may be sent until the upload is over.
                    self._blocked = True

    # -- receiving

    def lineReceived(self, line: bytes) -> None:
        if line[:1] == b"6" and line[3:4] == b" " and line[1:3].isdigit() and self._greeted:
            # A push, the bulk of a sync connection: no more work than this.
            code, rest = int(line[:3]), line[4:].decode("utf-8", "replace")
            if self.onPush is not None:
                self.onPush(code, rest)
            else:
                self.pushes.append((code, rest))
            return
        text = line.decode("utf-8", "replace")
        parts = split_reply_line(text)
        if parts is None:
            self.log.warn("unparsable line from server: {line!r}", line=text[:200])
            return
        code, sep, rest = parts
        if not self._greeted:
            self._greeted = True
            if code == 220:
                self.greeting.callback(text)
            else:
                self.greeting.errback(ProtocolError(text))
            return
        if 600 <= code < 700:
            if self.onPush is not None:
                self.onPush(code, rest)
            else:
                self.pushes.append((code, rest))
            return
        if not self._queue:
            if code == 421:  # unsolicited close notice (idle, shutdown)
                self.pushes.append((code, rest))
                return
            self.log.warn("reply with no command pending: {line}", line=text[:200])
            return
        p = self._queue[0]
        p.lines.append(text)
        if sep == "-":
            return
        if code == 350 and p.kind == "upload":
            self._startUpload(p, rest)
            return
        if code == 150 and p.kind == "download":
            self._startDownload(p, rest)
            return
        self._finish(p, code, rest)

    def _finish(self, p: _Pending, code: int, rest: str) -> None:
        self._queue.pop(0)
        if p.kind == "upload" and self._blocked:
            self._blocked = False
        resp = final_response(code, rest, p.lines)
        if p.rawResponse is not None:
            resp.bytes = p.rawResponse
        p.deferred.callback(resp)
        self._pump()

    # -- raw upload

    def _startUpload(self, p: _Pending, rest: str) -> None:
        # A bad count raises here, out of dataReceived, as any protocol error.
        self._sendRaw(p, _parse_count(rest))

    @deferred
    async def _sendRaw(self, p: _Pending, size: int) -> None:
        transport = self.transport
        assert transport is not None and p.source is not None
        sender = _BigFileSender()
        counter = _Progress(transport, p.progress)
        # Exactly `size` bytes: whatever the source holds beyond them would
        # otherwise be read by the server as command lines.
        try:
            await sender.beginFileTransfer(_Limited(p.source, size), counter)
        except Exception:
            transport.loseConnection()
            return
        p.rawResponse = counter.count
        if counter.count != size:
            self.log.error(
                "upload source gave {got} bytes, server expects {size}",
                got=counter.count,
                size=size,
            )
            transport.loseConnection()

    # -- raw download

    def _startDownload(self, p: _Pending, rest: str) -> None:
        size = _parse_count(rest)
        if size == 0:
            return
        assert p.sink is not None
        self._receiving = _Download(p, p.sink, size)
        self.setRawMode()

    def rawDataReceived(self, data: bytes) -> None:
        raw = self._receiving
        assert raw is not None
        want = raw.size - raw.got
        chunk, rest = data[:want], data[want:]
        raw.sink.write(chunk)
        raw.got += len(chunk)
        p = raw.pending
        if p.progress is not None:
            p.progress(len(chunk))
        if raw.got == raw.size:
            p.rawResponse = raw.size
            self._receiving = None
            self.setLineMode(rest)


def _parse_count(text: str) -> int:
    try:
        return int(text.split()[0] if text.split()[0] != "send" else text.split()[1])
    except (IndexError, ValueError):
        raise ProtocolError("bad byte count in %r" % (text,)) from None


class _Limited:
    """A read-only view of at most C{limit} bytes of a binary file."""

    def __init__(self, f: Source, limit: int) -> None:
        self._f = f
        self._left = limit

    def read(self, n: int | None = -1) -> bytes:
        if self._left <= 0:
            return b""
        n = self._left if n is None or n < 0 else min(n, self._left)
        data = self._f.read(n)
        self._left -= len(data)
        return data


class _BigFileSender(FileSender):
    """FileSender with L{CHUNK}-sized chunks."""

    CHUNK_SIZE = CHUNK


class _Progress:
    """A consumer wrapper that counts bytes and reports progress."""

    def __init__(self, transport: Any, progress: Progress | None) -> None:
        self.transport = transport
        self.progress = progress
        self.count = 0

    def registerProducer(self, producer: object, streaming: bool) -> None:
        self.transport.registerProducer(producer, streaming)

    def unregisterProducer(self) -> None:
        self.transport.unregisterProducer()

    def write(self, data: bytes) -> None:
        self.count += len(data)
        if self.progress is not None:
            self.progress(len(data))
        self.transport.write(data)


class _ClientFactory(Factory):
    protocol = ClientProtocol
    noisy = False  # no "Starting factory" line on every (re)connection


@deferred
async def connect(
    host: str = "127.0.0.1",
    port: int = 7001,
    tls: bool = False,
    cafile: str | None = None,
    hostname: str | None = None,
    reactor: Any = None,
    timeout: float = 10,
    service: str | None = None,
) -> ClientProtocol:
    """
    Connect and wait for the greeting.

    With C{service}, the greeting (C{220 netshare <service> <version> ...},
    docs/protocol.md section 1) must name it: a client pointed at another
    service's port fails with L{WrongService} instead of misreading its
    replies.

    With C{tls}, the server's certificate must chain to C{cafile} (or the
    system trust store) and match C{hostname} (default: C{host}); otherwise
    the connection fails during the handshake, before any command is sent.
    @return: Deferred[ClientProtocol]
    """
    from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS

    if reactor is None:
        from twisted.internet import reactor
    ep: IStreamClientEndpoint = HostnameEndpoint(reactor, host, port, timeout=timeout)
    if tls:
        from netshare.tls import client_options

        ep = wrapClientTLS(client_options(hostname or host, cafile), ep)
    proto = cast(ClientProtocol, await ep.connect(_ClientFactory()))
    proto.greeting.addTimeout(timeout, reactor)
    try:
        greeting = await proto.greeting
        if service is not None:
            words = str(greeting).split()
            actual = words[2] if len(words) > 2 and words[1] == "netshare" else None
            if actual != service:
                raise WrongService(
                    "this is %s, not the netshare %s service (check --port)"
                    % ("the netshare %s service" % actual if actual else "not netshare", service)
                )
    except BaseException:
        proto.abort()
        raise
    return proto


@deferred
async def login(proto: ClientProtocol, user: str, password: str) -> Response:
    """LOGIN; raise L{CommandFailed} unless 230."""
    resp = await proto.command(quote("LOGIN", user, password))
    if resp.code != 230:
        raise CommandFailed(resp)
    return resp


def password_from_env_or_prompt(prompt: str = "Password: ") -> str:
    """NETSHARE_PASSWORD, else an interactive prompt; never the command line."""
    env = os.environ.get("NETSHARE_PASSWORD")
    if env is not None:
        return env
    import getpass

    return getpass.getpass(prompt)

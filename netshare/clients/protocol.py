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
"""

import json
import os
import shlex
from dataclasses import dataclass, field

from twisted.internet import defer
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.protocols.basic import FileSender, LineReceiver

CHUNK = 256 * 1024


class ProtocolError(Exception):
    """The server said something that does not fit the protocol."""


class CommandFailed(Exception):
    """A command got an error reply (4xx/5xx)."""

    def __init__(self, response):
        self.response = response
        super().__init__(response.line)

    @property
    def code(self):
        return self.response.code


@dataclass
class Response:
    code: int
    text: str
    lines: list = field(default_factory=list)   # every line's text, in order
    items: list | None = None                   # a 210 listing, parsed
    bytes: int = 0                              # raw bytes transferred

    @property
    def line(self) -> str:
        return "%d %s" % (self.code, self.text)

    @property
    def ok(self) -> bool:
        return self.code < 400

    @property
    def obj(self):
        """The JSON object of a C{200 {...}} or C{226 stored {...}} reply."""
        start = self.text.find("{")
        return json.loads(self.text[start:]) if start >= 0 else None


def quote(*words) -> str:
    """Build a command line from words, quoting as the server splits them."""
    return " ".join(shlex.quote(str(w)) for w in words)


class _Pending:
    def __init__(self, line, kind="line", source=None, sink=None, progress=None):
        self.line = line
        self.kind = kind
        self.source = source
        self.sink = sink
        self.progress = progress
        self.deferred = defer.Deferred()
        self.lines = []
        self.rawResponse = None
        self.sent = False


class ClientProtocol(LineReceiver):
    """
    @ivar greeting: Deferred firing with the C{220} line.
    @ivar onPush: callable(code, text) for 6xx lines (default: collected in
        C{pushes}).
    """

    log = Logger()
    delimiter = b"\n"
    MAX_LENGTH = 16 * 1024 * 1024

    def __init__(self):
        self.greeting = defer.Deferred()
        self.closed = defer.Deferred()
        self.onPush = None
        self.pushes = []
        self._queue = []        # commands sent (or waiting to be sent), in order
        self._blocked = False   # an upload is between its command and its last byte
        self._raw = None
        self._greeted = False

    # -- lifecycle

    def connectionMade(self):
        if hasattr(self.transport, "setTcpNoDelay"):
            try:
                self.transport.setTcpNoDelay(True)
            except Exception:
                pass

    def connectionLost(self, reason):
        err = ConnectionError("connection closed: %s" % (reason.getErrorMessage(),))
        if not self._greeted:
            self.greeting.errback(reason)
        queue, self._queue = self._queue, []
        for p in queue:
            if not p.deferred.called:
                p.deferred.errback(err)
        if self._raw is not None:
            self._raw = None
        self.closed.callback(None)

    def close(self):
        if self.transport is not None:
            self.transport.loseConnection()
        return self.closed

    # -- sending

    def command(self, line: str) -> defer.Deferred:
        """Send one command line; fire with its L{Response} (any code)."""
        return self._enqueue(_Pending(line))

    def upload(self, line: str, source, progress=None) -> defer.Deferred:
        """
        Send an UPLOAD-style command; after C{350 send <n> bytes}, stream
        exactly n bytes from the binary file C{source}.  Fires with the final
        reply (C{226 ...} or an error), or the refusal before 350.
        """
        return self._enqueue(_Pending(line, "upload", source=source, progress=progress))

    def download(self, line: str, sink, progress=None) -> defer.Deferred:
        """
        Send a DOWNLOAD-style command; after C{150 <n> bytes sha256=<hex>},
        write exactly n bytes to C{sink} (a binary file).  Fires with the
        final C{226} reply whose C{lines[0]} is the 150 line.
        """
        return self._enqueue(_Pending(line, "download", sink=sink, progress=progress))

    def _enqueue(self, pending):
        if self.transport is None or not self.transport.connected:
            return defer.fail(ConnectionError("not connected"))
        self._queue.append(pending)
        self._pump()
        return pending.deferred

    def _pump(self):
        for p in self._queue:
            if self._blocked:
                return
            if not p.sent:
                p.sent = True
                self.transport.write(p.line.encode("utf-8") + b"\r\n")
                if p.kind == "upload":
                    # The server will read raw bytes right after this line:
                    # nothing else may be sent until the upload is over.
                    self._blocked = True

    # -- receiving

    def lineReceived(self, line):
        if line.endswith(b"\r"):
            line = line[:-1]
        text = line.decode("utf-8", "replace")
        if len(text) < 3 or not text[:3].isdigit():
            self.log.warn("unparsable line from server: {line!r}", line=text[:200])
            return
        code, sep, rest = int(text[:3]), text[3:4], text[4:]
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
            return self._startUpload(p, rest)
        if code == 150 and p.kind == "download":
            return self._startDownload(p, rest)
        self._finish(p, code, rest)

    def _finish(self, p, code, rest):
        self._queue.pop(0)
        if p.kind == "upload" and self._blocked:
            self._blocked = False
        resp = Response(code, rest, p.lines)
        if p.rawResponse is not None:
            resp.bytes = p.rawResponse
        if code == 210:
            resp.items = [json.loads(line[4:]) for line in p.lines[:-1]]
        p.deferred.callback(resp)
        self._pump()

    # -- raw upload

    def _startUpload(self, p, rest):
        size = _parse_count(rest)
        sender = _BigFileSender()
        counter = _Progress(self.transport, p.progress)
        # Exactly `size` bytes: whatever the source holds beyond them would
        # otherwise be read by the server as command lines.
        d = sender.beginFileTransfer(_Limited(p.source, size), counter)

        def sent(_):
            p.rawResponse = counter.count
            if counter.count != size:
                self.log.error("upload source gave {got} bytes, server expects {size}",
                               got=counter.count, size=size)
                self.transport.loseConnection()

        d.addCallbacks(sent, lambda f: self.transport.loseConnection())

    # -- raw download

    def _startDownload(self, p, rest):
        size = _parse_count(rest)
        self._raw = [p, size, 0]
        if size == 0:
            self._raw = None
            return
        self.setRawMode()

    def rawDataReceived(self, data):
        p, size, got = self._raw
        chunk, rest = data[:size - got], data[size - got:]
        p.sink.write(chunk)
        got += len(chunk)
        self._raw[2] = got
        if p.progress is not None:
            p.progress(len(chunk))
        if got == size:
            p.rawResponse = size
            self._raw = None
            self.setLineMode(rest)


def _parse_count(text):
    try:
        return int(text.split()[0] if text.split()[0] != "send" else text.split()[1])
    except (IndexError, ValueError):
        raise ProtocolError("bad byte count in %r" % (text,)) from None


class _Limited:
    """A read-only view of at most C{limit} bytes of a binary file."""

    def __init__(self, f, limit):
        self._f = f
        self._left = limit

    def read(self, n=-1):
        if self._left <= 0:
            return b""
        n = self._left if n is None or n < 0 else min(n, self._left)
        data = self._f.read(n)
        self._left -= len(data)
        return data


class _BigFileSender(FileSender):
    """FileSender with 256 KiB chunks (16 KiB is 1.8x slower here, PERF.md)."""
    CHUNK_SIZE = CHUNK


class _Progress:
    """A consumer wrapper that counts bytes and reports progress."""

    def __init__(self, transport, progress):
        self.transport = transport
        self.progress = progress
        self.count = 0

    def registerProducer(self, producer, streaming):
        self.transport.registerProducer(producer, streaming)

    def unregisterProducer(self):
        self.transport.unregisterProducer()

    def write(self, data):
        self.count += len(data)
        if self.progress is not None:
            self.progress(len(data))
        self.transport.write(data)


class _ClientFactory(Factory):
    protocol = ClientProtocol


@defer.inlineCallbacks
def connect(host="127.0.0.1", port=7001, tls=False, cafile=None, hostname=None,
            reactor=None, timeout=10):
    """
    Connect and wait for the greeting.

    With C{tls}, the server's certificate must chain to C{cafile} (or the
    system trust store) and match C{hostname} (default: C{host}); otherwise
    the connection fails during the handshake, before any command is sent.
    @return: Deferred[ClientProtocol]
    """
    from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
    if reactor is None:
        from twisted.internet import reactor
    ep = HostnameEndpoint(reactor, host, port, timeout=timeout)
    if tls:
        from netshare.tls import client_options
        ep = wrapClientTLS(client_options(hostname or host, cafile), ep)
    proto = yield ep.connect(_ClientFactory())
    proto.greeting.addTimeout(timeout, reactor)
    try:
        yield proto.greeting
    except Exception:
        proto.transport.abortConnection()
        raise
    return proto


@defer.inlineCallbacks
def login(proto, user, password):
    """LOGIN; raise L{CommandFailed} unless 230."""
    resp = yield proto.command(quote("LOGIN", user, password))
    if resp.code != 230:
        raise CommandFailed(resp)
    return resp


def password_from_env_or_prompt(prompt="Password: "):
    """NETSHARE_PASSWORD, else an interactive prompt; never the command line."""
    env = os.environ.get("NETSHARE_PASSWORD")
    if env is not None:
        return env
    import getpass
    return getpass.getpass(prompt)

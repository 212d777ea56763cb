"""
The machinery of a command connection, below accounts and history: framing,
dispatch, reply order, pushes, output limits, raw data, timeouts, shutdown
(docs/protocol.md section 1).

L{LineConnection} knows nothing of who is logged in: that is
L{netshare.protocols.line.CommandProtocol}, which every service protocol
subclasses.  The split keeps each part small enough to read in one sitting;
the hooks between them are the documented methods below (C{mayRun},
C{recordCommand}, C{afterCommand}, C{user}), not shared private fields.

Ordering: while a command's Deferred is pending the receiver is paused (no
further line is parsed, the socket is not read), so replies can never
reorder.  A handler that returns L{Later} lets the next command run while
its reply is reserved in place.  Output: the connection registers itself as
a streaming producer's observer on the transport (L{_OutputMonitor}); while
the transport says its buffer is full, everything written counts against
C{max_output}, and a connection past it is dropped, so one reader that never
reads cannot make the server hold unbounded memory or make anyone else wait.
"""

import time
from dataclasses import dataclass
from typing import Any, Protocol

from twisted.internet import defer
from twisted.internet.interfaces import IHandshakeListener, ISSLTransport
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.protocols.policies import TimeoutMixin
from twisted.python.failure import Failure
from zope.interface import implementer

from netshare import __version__
from netshare.errors import LoginRequired, NetshareError, SyntaxError_, TemporaryError
from netshare.lines import LinearLineReceiver
from netshare.protocols.output import HeldReplies, Output
from netshare.protocols.replies import (
    MAX_HELD,
    NO_REPLY,
    Later,
    Lines,
    Listing,
    ReceiveRaw,
    Reply,
    SendRaw,
)
from netshare.protocols.sendfile import CopyStopped, KernelCopy
from netshare.protocols.transfer import CountingConsumer, RawReceive
from netshare.protocols.words import UNKNOWN, redact, tokenize
from netshare.wire import now_ms

CRLF = b"\r\n"


class StreamTransport(Protocol):
    """
    What a command connection uses of its transport: a TCP connection or
    TLS over one.  (Twisted types C{Protocol.transport} as an optional
    C{ITransport}, which lacks the TCP half; a connection only runs while
    connected, so it is never None here.)
    """

    connected: int
    disconnecting: bool

    def write(self, data: bytes) -> None: ...

    def writeSequence(self, data: Any) -> None: ...

    def loseConnection(self) -> None: ...

    def abortConnection(self) -> None: ...

    def getPeer(self) -> Any: ...

    def getHost(self) -> Any: ...

    def setTcpNoDelay(self, enabled: bool) -> None: ...

    def setTcpKeepAlive(self, enabled: bool) -> None: ...

    def registerProducer(self, producer: Any, streaming: bool) -> None: ...

    def unregisterProducer(self) -> None: ...

    def pauseProducing(self) -> None: ...

    def resumeProducing(self) -> None: ...


@dataclass
class Command:
    """The command in progress, as it will be recorded."""

    verb: str
    recorded: str
    started: float
    ts_ms: int
    bytes: int = 0
    code: int = 0
    #: The code this command's history row was written with, in its write's
    #: own transaction (L{CommandProtocol.journal}); None: not written yet.
    journaled: int | None = None


@implementer(IHandshakeListener)
class LineConnection(LinearLineReceiver, TimeoutMixin):
    """See the module docstring."""

    log = Logger()
    #: Pipelined input read ahead while a command runs (see
    #: L{LinearLineReceiver.readAhead}): a command does not cost a pause and
    #: a resume of the socket; past this the socket is paused.
    readAhead = 64 * 1024
    service = "base"
    #: One-line descriptions for HELP, by verb.
    HELP = {"HELP": "HELP: this text", "PING": "PING: 200 pong", "QUIT": "QUIT"}
    #: Push lines of one reactor turn are written as one chunk at its end
    #: (ttweet's fan-out: one trip through the transport per connection per
    #: burst instead of one per tweet).  Off: each push is written at once.
    batchPushes = False
    transport: StreamTransport  # type: ignore[assignment]  # narrower: see StreamTransport

    def __init__(self) -> None:
        super().__init__()
        self.host = "-"
        self.peer = "-"
        self._current: Command | None = None
        self._closing = False
        self._lost = False
        self._shuttingDown = False
        self._idleExempt = False
        self._receiving: RawReceive | None = None
        self._sendingRaw: SendRaw | None = None
        self.output: Output | None = None  # set once connected
        self._waitingForDrain = False
        self._abortCall: Any = None
        self._refused = False
        self._handshakeTimer: Any = None  # a TLS handshake's deadline
        self._held = HeldReplies(self._writeNow)  # replies behind a Later
        self._closePending = False  # a close waits for the held replies
        self.lost: defer.Deferred[None] = defer.Deferred()

    # -- what the layers above read and override

    @property
    def runtime(self) -> Any:
        return self.factory.runtime

    @property
    def config(self) -> Any:
        return self.factory.runtime.config

    @property
    def user(self) -> str | None:
        """Who is logged in, for logs (None here: accounts are a layer up)."""
        return None

    @property
    def closing(self) -> bool:
        """The connection is closing: nothing more is read or written."""
        return self._closing

    @property
    def rawRemaining(self) -> int:
        """Bytes an upload in progress still expects (0: none)."""
        return self._receiving.remaining if self._receiving is not None else 0

    @property
    def transferring(self) -> bool:
        """Raw data is in flight, in either direction."""
        return self._sendingRaw is not None or self.rawRemaining > 0

    @property
    def currentCommand(self) -> Command | None:
        """The command being answered (None between commands)."""
        return self._current

    def countCommandBytes(self, nbytes: int) -> None:
        """(L{Output}) Bytes written for the command in progress."""
        if self._current is not None:
            self._current.bytes += nbytes

    def mayRun(self, verb: str) -> bool:
        """Hook: may C{verb} run now? (No: C{530 login required}.)"""
        return True

    def recordCommand(
        self,
        verb: str,
        recorded: str,
        code: int,
        started: float | None = None,
        ts_ms: int | None = None,
        nbytes: int = 0,
        written: bool = False,
    ) -> None:
        """Hook: a command was answered with C{code} (history, logs)."""

    def afterCommand(self) -> str | None:
        """Hook: after each answer, a line to close the connection with, or None."""
        return None

    def connectionReady(self) -> None:
        """Hook for subclasses: the greeting has been sent."""

    def connectionClosed(self) -> None:
        """Hook for subclasses: release subscriptions, streams, files."""

    def onDrain(self) -> None:
        """Hook: the output has drained (e.g. resume a SYNC feed)."""

    # -- connection lifecycle

    def connectionMade(self) -> None:
        self.MAX_LENGTH = self.config.max_line + 1  # + the optional CR
        self.factory.stats.connections_total += 1
        peer = self.transport.getPeer()
        self.host = getattr(peer, "host", "?")
        self.peer = "%s:%s" % (self.host, getattr(peer, "port", "?"))
        refusal = self.factory.admit(self)
        if refusal:
            self._refused = True
            self._closing = True
            self.transport.write(("421 %s" % refusal).encode() + CRLF)
            self.transport.loseConnection()
            self.log.warn(
                "refused {peer}: {reason}", service=self.service, peer=self.peer, reason=refusal
            )
            return
        if hasattr(self.transport, "setTcpNoDelay"):
            try:
                self.transport.setTcpNoDelay(True)
                self.transport.setTcpKeepAlive(True)
            except Exception:
                pass
        self.output = Output(self, self.config.max_output)
        self.output.register()
        self.setTimeout(self.config.idle_timeout)
        if ISSLTransport.providedBy(self.transport):
            self._handshakeTimer = self.factory.reactor.callLater(
                self.config.tls_handshake_timeout, self._handshakeExpired
            )
        self._write(["220 netshare %s %s ready" % (self.service, __version__)])
        self.connectionReady()

    @property
    def refused(self) -> bool:
        """Turned away at connect (too many connections): never served."""
        return self._refused

    def handshakeCompleted(self) -> None:
        """(IHandshakeListener) The TLS handshake is done: its deadline is off."""
        if self._handshakeTimer is not None and self._handshakeTimer.active():
            self._handshakeTimer.cancel()
        self._handshakeTimer = None

    def _handshakeExpired(self) -> None:
        """A TLS handshake not done in C{--tls-handshake-timeout}: cut (nothing
        can be said to a peer that never finished the handshake)."""
        self._handshakeTimer = None
        self.log.info(
            "TLS handshake with {peer} not done in time: closing",
            service=self.service,
            peer=self.peer,
        )
        self._closing = True
        self.transport.abortConnection()

    def callLater(self, period: float, func: Any) -> Any:
        # TimeoutMixin's timer, on the factory's (injected) reactor.
        return self.factory.reactor.callLater(period, func)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._lost = True
        self.setTimeout(None)
        self.handshakeCompleted()
        if self._abortCall is not None and self._abortCall.active():
            self._abortCall.cancel()
        self._abortCall = None
        self._held.clear()
        if self.output is not None:
            self.output.discard()
        self.factory.release(self)
        if self._receiving is not None and self._receiving.remaining:
            receiving, self._receiving = self._receiving, None
            receiving.abort(Failure(TemporaryError("connection lost mid-transfer")), self.log)
        if self._sendingRaw is not None:
            try:
                self._sendingRaw.producer.stopProducing()
            except Exception:
                pass
        if not self._refused:  # a refused connection never got to connectionReady
            self.connectionClosed()
        if not self.lost.called:
            self.lost.callback(None)

    def timeoutConnection(self) -> None:
        if self._sendingRaw is not None:
            # Nothing was written for a whole timeout: the client stopped
            # reading mid-transfer (or the producer is stuck).  No line can be
            # sent inside raw data, so just cut it.
            self.log.info(
                "stalled download to {peer}, closing",
                service=self.service,
                peer=self.peer,
                user=self.user,
            )
            self._closing = True
            self.transport.abortConnection()
            return
        if self._current is not None and not self.rawRemaining:
            # The server, not the client, is the slow one (a queued password
            # check, a slow database): wait for the answer, then time again.
            self.setTimeout(self.timeOut)
            return
        self.log.info("idle timeout {peer}", service=self.service, peer=self.peer, user=self.user)
        self.closeWith("421 idle timeout")

    def setIdleExempt(self, exempt: bool) -> None:
        """
        A connection that only waits for pushes (a SYNC stream, a subscriber)
        is not idle: exempt it from the idle timeout (TCP keepalive still
        reaps dead peers).
        """
        self._idleExempt = exempt
        self.setTimeout(None if exempt else self.config.idle_timeout)

    def closeWith(self, line: str) -> None:
        """
        Write C{line} (a 421, 221 or 500) as the last line and close.

        Replies held behind a L{Later} go first, so an accepted command is
        never left unanswered by an orderly close; nothing more is read
        meanwhile.
        """
        if self._closing:
            return
        if len(self._held) and not self._lost:
            if not self._closePending:
                self._closePending = True
                if not self.paused:
                    self.pauseProducing()
                self._held.whenEmpty().addCallback(lambda _: self.closeWith(line))
            return
        if self.output is not None:
            self.output.writeTurnPushes()
        self._closing = True
        self._loseConnection(line.encode("utf-8") + CRLF)

    def _loseConnection(self, last: bytes = b"") -> None:
        """Write C{last} and close gracefully; abort if that takes too long."""
        self._closing = True
        # While our output monitor is registered (and possibly paused by a
        # full buffer) the transport would resume it instead of closing.
        if self.output is not None:
            self.output.unregister()
        if last:
            self.transport.write(last)
        self.transport.loseConnection()
        # A peer that never reads would keep a graceful close pending forever.
        if self._abortCall is None and self.transport.connected:
            self._abortCall = self.factory.reactor.callLater(5, self._abortIfConnected)

    def _abortIfConnected(self) -> None:
        self._abortCall = None
        if self.transport.connected:
            self.transport.abortConnection()

    # -- input

    def dataReceived(self, data: bytes) -> Any:
        if self._closing:
            return None
        self.factory.stats.bytes_in += len(data)
        return LinearLineReceiver.dataReceived(self, data)

    def lineLengthExceeded(self, line: bytes) -> None:
        self.log.warn("line too long from {peer}", service=self.service, peer=self.peer)
        self.recordCommand("-", "<line too long>", 500)
        self.closeWith("500 line too long")

    def lineReceived(self, line: bytes) -> None:
        if self._closing:
            return
        if len(line) > self.factory.runtime.config.max_line:  # (framing removed one CR)
            return self.lineLengthExceeded(line)
        if not self._idleExempt:
            self.resetTimeout()
        started, ts = time.monotonic(), now_ms()
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError:
            self.recordCommand("-", "<invalid utf-8>", 500, started, ts)
            return self._write(["500 invalid UTF-8"])
        try:
            words = tokenize(text)
        except ValueError as e:
            verb = text.split(None, 1)[0].upper() if text.split() else "-"
            if not (verb.isalnum() and hasattr(self, "cmd_" + verb)):
                verb = UNKNOWN
            self.recordCommand(verb, verb + " <unparsable>", 500, started, ts)
            return self._write(["500 bad quoting: %s" % (e,)])
        if not words:
            return None  # a blank line is not a command
        verb = words[0].upper()
        handler = getattr(self, "cmd_" + verb, None) if verb.isalnum() else None
        if handler is not None:
            cmd = Command(verb, redact(verb, words[1:]) if len(words) > 1 else verb, started, ts)
        else:
            # A mistyped LOGIN, or a password typed alone on a line: record
            # and log none of it (the reply goes only to the sender).
            cmd = Command(UNKNOWN, UNKNOWN, started, ts)
        self._current = cmd
        # The per-command path: a synchronous handler's reply is written
        # without a Deferred (none is allocated unless a handler or a reply
        # returns one); an asynchronous one gets a callback chain, not a
        # coroutine, as this runs once per command.
        try:
            if handler is None:
                shown = verb[:32] if verb.isascii() and verb.isprintable() else ""
                raise SyntaxError_(("unknown command " + shown).rstrip())
            if not self.mayRun(verb):
                raise LoginRequired("login required")
            result = handler(words[1:])
            # (Deferred is an ABC subclass: isinstance on it costs a Python
            # frame, so the common plain answers are told apart first.)
            if type(result) is not Reply and isinstance(result, defer.Deferred):
                result.addCallback(self._deliver)
            else:
                result = self._deliver(result)  # a Deferred only for raw transfers
        except Exception:
            self._deliverError(Failure())
            result = None
        if result is None or not isinstance(result, defer.Deferred):
            self._commandDone(None)
            return None
        result.addErrback(self._deliverError)
        result.addBoth(self._commandDone)
        # Still pending (a Deferred from the handler, or a raw send started
        # by a synchronous handler): parse nothing more until it is answered.
        # During a raw receive the bytes must keep coming; _rawComplete pauses.
        if self._current is cmd and not self.paused and not self.rawRemaining:
            self.pauseProducing()
        return None

    def resumeProducing(self) -> None:
        if self._held.paused or self._closePending:
            return  # resumed by _releaseHeld once the held replies are out
        LinearLineReceiver.resumeProducing(self)

    # -- replies

    def _deliver(self, result: Any) -> Any:
        if type(result) is Reply:  # the common case first
            assert self._current is not None
            self._current.code = result.code
            self._write(result.lines())
            return None
        if isinstance(result, tuple):
            result = Reply(*result)
        if isinstance(result, Later):
            return self._hold(result)
        if isinstance(result, ReceiveRaw):
            return self._startRawReceive(result)
        if isinstance(result, SendRaw):
            return self._startRawSend(result)
        if result is None:
            result = Reply(200, "ok")
        assert self._current is not None
        self._current.code = getattr(result, "code", 210 if isinstance(result, Listing) else 200)
        self._write(result.lines())
        return None

    def _errorLine(self, failure: Failure, verb: str) -> str:
        """The one place an exception becomes a reply line."""
        err = failure.value
        if isinstance(err, NetshareError):
            return err.replyLine()
        self.log.failure(
            "internal error in {verb}",
            failure,
            service=self.service,
            verb=verb,
            user=self.user,
            peer=self.peer,
        )
        return "451 internal error"

    def _deliverError(self, failure: Failure) -> None:
        assert self._current is not None
        line = self._errorLine(failure, self._current.verb)
        self._current.code = int(line[:3])
        self._write([line])
        if self._current.code == 421:
            self._loseConnection()

    def _commandDone(self, _: object) -> None:
        cmd, self._current = self._current, None
        if not self._idleExempt and self._sendingRaw is None:
            self.resetTimeout()  # idle time counts from the last answer
        if cmd is not None:
            self.recordCommand(
                cmd.verb,
                cmd.recorded,
                cmd.code,
                cmd.started,
                cmd.ts_ms,
                cmd.bytes,
                written=cmd.journaled == cmd.code,
            )
            self.factory.stats.commands += 1
        if self._closing:
            return
        if self._shuttingDown:
            return self.closeWith("421 shutting down")
        last = self.afterCommand()
        if last is not None:
            return self.closeWith(last)
        if self.output is not None and self.output.full:
            self._waitingForDrain = True  # read no more commands until drained
            if not self.paused:
                self.pauseProducing()
            return
        if self.paused:
            self.resumeProducing()

    # -- replies that come later, in order (Later)

    def _hold(self, later: Later) -> Any:
        if later.result.called:  # already known: answer as usual
            return later.result.addCallback(self._deliver)
        assert self._current is not None
        self._current.code = later.code
        verb = self._current.verb
        later.result.addCallbacks(self._lateLines, self._lateError, errbackArgs=(verb,))
        self._held.reserve(later.result)
        later.result.addCallback(lambda _: self._heldReleased())
        if len(self._held) >= MAX_HELD and not self._held.paused:
            self._held.paused = True
            self.pauseProducing()
        return None

    def _lateLines(self, reply: Any) -> list[str]:
        if isinstance(reply, tuple):
            reply = Reply(*reply)
        return (reply or Reply(200, "ok")).lines()

    def _lateError(self, failure: Failure, verb: str) -> list[str]:
        line = self._errorLine(failure, verb)
        self.log.warn(
            "reply to {verb} came late with {line}",
            service=self.service,
            user=self.user,
            peer=self.peer,
            verb=verb,
            line=line,
        )
        return [line]

    def _heldReleased(self) -> None:
        """Some held replies went out: read again once few enough wait."""
        if self._held.paused and len(self._held) < MAX_HELD // 2:
            self._held.paused = False
            if not (
                self._closePending
                or self._closing
                or self._waitingForDrain
                or self._current is not None
            ):
                self.resumeProducing()

    # -- output

    def outputDrained(self) -> None:
        """(L{Output}) The transport's buffer has drained."""
        self._flushPushes()
        if self._waitingForDrain and self._current is None:
            self._waitingForDrain = False
            if self.paused and not self._closing:
                self.resumeProducing()

    def dropped(self) -> None:
        """(L{Output}) Too much waits for a reader that does not read: cut."""
        self._closing = True
        self.transport.abortConnection()

    def _write(self, lines: list[str]) -> None:
        # Every reply goes through here: behind a held one, it waits.
        if not lines:
            return
        if self._held.queue:
            self._held.append(lines)
            return
        self._writeNow(lines)

    def _writeNow(self, lines: list[str]) -> None:
        if self._lost or self.output is None:
            return
        self.output.sendReply(lines)  # (pushes gathered before it go first)

    def sendPush(self, data: bytes | str, count: int = 1) -> None:
        """
        Send a 6xx push line (bytes ending in CRLF, or str without it), or
        C{count} of them joined in one chunk.

        Queued while raw data is in flight in either direction, written at
        once otherwise (or, with L{batchPushes}, at the end of this reactor
        turn).  Never blocks; drops this connection when its queued output
        passes C{max_output}.
        """
        if isinstance(data, str):
            data = data.encode("utf-8") + CRLF
        if self.output is None or self._lost:
            return
        if self.batchPushes and count == 1:
            self.output.pushThisTurn(data)
        else:
            self.output.push(data, count)

    def writable(self) -> bool:
        """False while the transport's buffer is full: producers should wait
        for L{onDrain} before sending more."""
        return (
            self.output is not None
            and not self.output.full
            and self._sendingRaw is None
            and not self._closing
        )

    def _flushPushes(self) -> None:
        if self.output is None:
            return
        self.output.flushQueued()
        if not self.output.full:
            self.onDrain()

    # -- raw receive (client -> server)

    def _startRawReceive(self, raw: ReceiveRaw) -> "defer.Deferred[Any]":
        self._write(["350 send %d bytes" % (raw.size,)])
        receiving = self._receiving = RawReceive(raw, self)
        if raw.size == 0:
            self._rawComplete()
            return receiving.done
        self.setRawMode()
        self.resumeProducing()  # only raw bytes can come until the last one
        return receiving.done

    def rawDataReceived(self, data: bytes) -> None:
        receiving = self._receiving
        if self._closing or receiving is None or not receiving.remaining:
            return
        self.resetTimeout()  # a stalled upload times out like an idle line
        taken, rest = receiving.feed(data)
        if self._current is not None:
            self._current.bytes += taken
        if not receiving.remaining:
            self._rawComplete()
            self.setLineMode(rest)  # buffered: we are paused until the reply

    def _rawComplete(self) -> None:
        self.pauseProducing()  # next pipelined commands wait for the final reply
        receiving, self._receiving = self._receiving, None
        assert receiving is not None
        self.setTimeout(None if self._idleExempt else self.config.idle_timeout)
        receiving.finish().addCallback(self._deliver).chainDeferred(receiving.done)
        self._flushPushes()

    # -- raw send (server -> client)

    def _startRawSend(self, raw: SendRaw) -> "defer.Deferred[Any]":
        assert self._current is not None
        self._current.code = 226
        if self.output is not None:
            # Off the transport first: the 150 line then waits in the
            # transport's buffer (not written through), and the producer
            # below starts once that buffer has drained.
            self.output.unregister()
        self._write(["150 %d bytes sha256=%s" % (raw.size, raw.sha256)])
        self._sendingRaw = raw
        # A transfer that makes no progress for a whole idle timeout is cut
        # (each chunk written resets the timer, see _rawSent).
        self.setTimeout(None if self._idleExempt else self.config.idle_timeout)
        copy = self._kernelCopy(raw)
        if copy is not None:
            raw.producer = copy  # (so that a lost connection stops the copy)
            d = copy.start()
        else:
            d = raw.producer.beginFileTransfer(CountingConsumer(self.transport, self._rawSent))
        d.addCallbacks(
            self._rawSendDone, self._rawSendFailed, callbackArgs=(raw,), errbackArgs=(raw,)
        )
        return d

    def _kernelCopy(self, raw: SendRaw) -> KernelCopy | None:
        """A L{KernelCopy} of the download, when its bytes are a file's own
        and the connection is plain TCP (see L{netshare.protocols.sendfile})."""
        source = getattr(raw.producer, "kernelSource", lambda: None)()
        if (
            source is None
            or self._lost
            or not self.config.sendfile
            or ISSLTransport.providedBy(self.transport)
            or not hasattr(self.transport, "fileno")
            or not hasattr(self.factory.reactor, "callInThread")
            or not KernelCopy.available()
        ):
            return None
        fd, offset, count = source
        self.factory.stats.sendfile_downloads += 1
        return KernelCopy(
            self.transport,
            self.factory.reactor,
            fd,
            offset,
            count,
            raw.producer.close,
            self._rawSent,
        )

    def _rawSent(self, nbytes: int) -> None:
        if not self._idleExempt:
            self.resetTimeout()
        self.factory.stats.bytes_out += nbytes
        if self._current is not None:
            self._current.bytes += nbytes

    def _rawSendDone(self, _: object, raw: SendRaw) -> None:
        self._sendingRaw = None
        if raw.done is not None:
            raw.done()
        if self._closing or not self.transport.connected or self.output is None:
            return
        self.output.register()
        self.setTimeout(None if self._idleExempt else self.config.idle_timeout)
        self._write(["226 transfer complete"])
        self._flushPushes()

    def _rawSendFailed(self, f: Failure, raw: SendRaw) -> None:
        self._sendingRaw = None
        if raw.done is not None:
            raw.done()
        # The byte count promised in the 150 line cannot be kept: the only
        # honest thing left is to close the connection.
        if not self.transport.connected or f.check(CopyStopped):  # the client hung up
            self.log.info(
                "raw send to {peer} cut short: {why}",
                service=self.service,
                peer=self.peer,
                user=self.user,
                why=f.getErrorMessage(),
            )
        else:
            self.log.failure(
                "raw send failed, closing {peer}",
                f,
                service=self.service,
                peer=self.peer,
                user=self.user,
            )
        if self._current is not None:
            self._current.code = 451
        self._closing = True
        if self.transport.connected:
            self.transport.abortConnection()

    # -- shutdown

    def beginShutdown(self) -> "defer.Deferred[None]":
        """
        The service is stopping: answer C{421 shutting down} now if idle, or
        as soon as the command in progress has been answered.
        @return: a Deferred that fires when the connection is closed.
        """
        self._shuttingDown = True
        if self._current is None and self._sendingRaw is None and not self.rawRemaining:
            self.closeWith("421 shutting down")
        return self.lost

    # -- commands every port has

    def cmd_PING(self, args: list[str]) -> Reply:
        return Reply(200, "pong")

    def cmd_QUIT(self, args: list[str]) -> Any:
        # 221 comes after every held reply, then the close.
        if len(self._held):
            return self._held.whenEmpty().addCallback(lambda _: self.cmd_QUIT(args))
        self._write(["221 bye"])
        assert self._current is not None
        self._current.code = 221
        self._loseConnection()
        return NO_REPLY

    def cmd_HELP(self, args: list[str]) -> Lines:
        verbs = sorted(name[4:] for name in dir(self) if name.startswith("cmd_"))
        lines = ["214-" + self.HELP.get(v, v) for v in verbs]
        return Lines(214, lines + ["214 end"])

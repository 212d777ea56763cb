"""
The line protocol every netshare port speaks (PROTOCOL.md section 1).

L{CommandProtocol} does everything that is the same on every port, once:
greeting, framing and limits, shell-word tokenizing, C{cmd_<VERB>} dispatch,
the single place where exceptions become reply lines, replies in command
order under pipelining, listings and object replies, pushes that never land
inside a multi-line reply or raw data, raw transfers in both directions with
backpressure, idle timeout, slow-reader drop, login throttling, the request
history and per-command structured logging.

A service protocol subclasses it, sets C{service}, and adds C{cmd_VERB(self,
args)} methods.  A handler receives the list of shell words after the verb
and returns (or returns a Deferred of) one of:

  - L{Reply} (or a C{(code, text)} tuple): one line;
  - L{ObjectReply}: C{200 <json>};
  - L{Listing}: C{210-<json>} lines and C{210 <n> items};
  - L{ReceiveRaw}: C{350}, then exactly n raw bytes into a consumer;
  - L{SendRaw}: C{150}, then exactly n raw bytes from a producer, then C{226}.

or raises a L{NetshareError}.  Anything else raised is a bug: logged once
with its traceback and answered C{451 internal error}; the session goes on.

Ordering: while a command's Deferred is pending the receiver is paused (no
further line is parsed, the socket is not read), so replies can never
reorder.  Output: the protocol registers itself as a streaming producer's
observer on the transport (L{_OutputMonitor}); while the transport says its
buffer is full, everything written counts against C{max_output}, and a
connection past it is dropped, so one reader that never reads cannot make
the server hold unbounded memory or make anyone else wait.
"""

import re
import shlex
import time
from dataclasses import dataclass
from typing import Any

from twisted.internet import defer, task
from twisted.internet.interfaces import IHandshakeListener, IPushProducer, ISSLTransport
from twisted.logger import Logger
from twisted.protocols.basic import LineReceiver
from twisted.protocols.policies import TimeoutMixin
from twisted.python.failure import Failure
from zope.interface import implementer

from netshare import __version__
from netshare.errors import (
    BadArguments,
    BadSequence,
    ClosingConnection,
    Conflict,
    LoginRequired,
    NetshareError,
    SyntaxError_,
    TemporaryError,
)
from netshare.services.accounts import UNKNOWN_USER, Caller
from netshare.text import escape_unsafe
from netshare.wire import dumps, now_ms

CRLF = b"\r\n"
SECRET_OPTIONS = ("password",)
_QUOTING = re.compile(r"[\"'\\]")
_WORD = re.compile(r"[^ \t\r\n]+")


def tokenize(text: str) -> list:
    """
    Split a command line into POSIX shell words (C{shlex.split}).

    Most lines have no quote and no backslash; for them shlex's result is
    exactly the runs of non-whitespace (shlex splits only on space, tab, CR
    and LF), at a fraction of shlex's cost on the hot path of every command.
    @raise ValueError: unbalanced quotes or a trailing backslash.
    """
    if _QUOTING.search(text) is None:
        return _WORD.findall(text)
    return shlex.split(text, posix=True)
#: How an unknown verb is recorded in history and logs (it may be a secret).
UNKNOWN = "<unknown>"


# --- what handlers return -------------------------------------------------

@dataclass
class Reply:
    code: int
    text: str

    def lines(self):
        return ["%d %s" % (self.code, self.text)]


@dataclass
class ObjectReply:
    obj: Any
    code: int = 200
    prefix: str = ""

    def lines(self):
        return ["%d %s%s" % (self.code, self.prefix, dumps(self.obj))]


@dataclass
class Listing:
    items: list

    def lines(self):
        out = ["210-" + dumps(item) for item in self.items]
        out.append("210 %d items" % (len(self.items),))
        return out


@dataclass
class ReceiveRaw:
    """
    Ask the client for exactly C{size} raw bytes.

    @ivar consumer: an C{IConsumer}; it is given this connection's raw input
        as a streaming producer (so it can pause the socket) and every byte.
    @ivar finish: called with no arguments after the last byte; returns the
        final reply (or a Deferred of it).
    @ivar abort: called if the connection is lost before the last byte.
    """
    size: int
    consumer: Any
    finish: Any
    abort: Any = None


@dataclass
class SendRaw:
    """
    Send exactly C{size} raw bytes after C{150 <size> bytes sha256=<sha256>}.

    @ivar producer: has C{beginFileTransfer(consumer) -> Deferred} and
        C{stopProducing()}, like L{twisted.protocols.basic.FileSender}.
    @ivar done: optional callable run after the transfer (success or not).
    """
    size: int
    sha256: str
    producer: Any
    done: Any = None


# --- helpers for handlers -------------------------------------------------

def split_options(words, allowed=(), positional=(0, None)):
    """
    Separate C{key=value} options from positional words.

    Only keys in C{allowed} are options (so a tweet "a=b" stays a word).
    @return: (positional list, {key: value})
    @raise BadArguments: unknown or repeated option, wrong count.
    """
    args, opts = [], {}
    for w in words:
        key, sep, value = w.partition("=")
        if sep and key in allowed:
            if key in opts:
                raise BadArguments("option %s given twice" % (key,))
            opts[key] = value
        else:
            args.append(w)
    lo, hi = positional
    if hi is not None and len(args) > hi and allowed:
        extra = args[hi]
        if re.fullmatch(r"[a-z][a-z0-9_]*=.*", extra, re.S):
            raise BadArguments("unknown option %s (allowed: %s)"
                               % (extra.partition("=")[0], ", ".join(allowed)))
    if len(args) < lo or (hi is not None and len(args) > hi):
        if hi == lo:
            raise BadArguments("expected %d argument%s" % (lo, "" if lo == 1 else "s"))
        raise BadArguments("wrong number of arguments")
    return args, opts


def parse_int(text, name, lo=0, hi=None):
    """An integer option within [lo, hi]; BadArguments (501) otherwise."""
    try:
        v = int(text, 10)
    except (TypeError, ValueError):
        raise BadArguments("%s must be a whole number" % (name,)) from None
    if v < lo or (hi is not None and v > hi):
        raise BadArguments("%s out of range" % (name,))
    return v


#: How much of a command sent before login is recorded (after its verb).
PRELOGIN_RECORDED = 48


def bounded(recorded: str) -> str:
    """A command sent before login as it is recorded: its verb and a short
    prefix of the rest (the line may be 4 KiB of anything)."""
    verb, _, rest = recorded.partition(" ")
    if len(rest) <= PRELOGIN_RECORDED:
        return recorded
    return "%s %s..." % (verb, rest[:PRELOGIN_RECORDED])


def redact(verb, words):
    """The command as recorded in history and logs: no password anywhere.

    C{LOGIN} and C{REGISTER} are recorded without any argument here: a user
    name may be a password typed in the wrong place (C{LOGIN <password>},
    swapped arguments), so their handlers record the name only once it is
    known to be an account's (L{CommandProtocol.recordAs}).  Elsewhere a
    C{password=} option is masked."""
    if verb in ("LOGIN", "REGISTER"):
        return verb + " ***" if words else verb
    out = []
    for w in words:
        key, sep, _ = w.partition("=")
        if sep and key.lower() in SECRET_OPTIONS:
            out.append(key + "=***")
        else:
            out.append(shlex.quote(w))
    return escape_unsafe(" ".join([verb] + out))


# --- the output side ------------------------------------------------------

@implementer(IPushProducer)
class _OutputMonitor:
    """
    Registered on the transport as a streaming producer only to learn when
    the transport's send buffer is full (pauseProducing) and drained
    (resumeProducing).
    """

    def __init__(self, proto):
        self.proto = proto
        self.full = False

    def pauseProducing(self):
        # The transport calls this again on every write while its buffer is
        # over the limit: only the first call starts the count.
        if not self.full:
            self.full = True
            self.proto._queuedWhileFull = 0

    def resumeProducing(self):
        self.full = False
        self.proto._queuedWhileFull = 0
        self.proto._outputDrained()

    def stopProducing(self):
        pass


@implementer(IPushProducer)
class _RawInput:
    """The connection's raw input as a producer for an upload consumer."""

    def __init__(self, proto):
        self.proto = proto

    def pauseProducing(self):
        if self.proto._rawRemaining:
            self.proto.pauseProducing()

    def resumeProducing(self):
        if self.proto._rawRemaining:
            self.proto.resumeProducing()

    def stopProducing(self):
        if self.proto.transport:
            self.proto.transport.loseConnection()


@dataclass
class _Command:
    verb: str
    recorded: str
    started: float
    ts_ms: int
    bytes: int = 0
    code: int = 0
    #: The code this command's history row was written with, in its write's
    #: own transaction (L{CommandProtocol.journal}); None: not written yet.
    journaled: int | None = None


# --- the protocol ---------------------------------------------------------

@implementer(IHandshakeListener)
class CommandProtocol(LineReceiver, TimeoutMixin):
    """See the module docstring."""

    log = Logger()
    delimiter = b"\n"
    service = "base"
    #: Verbs allowed before LOGIN; every other verb answers 530 until then.
    PUBLIC = frozenset({"HELP", "PING", "LOGIN", "REGISTER", "WHOAMI", "QUIT"})
    #: One-line descriptions for HELP, by verb.
    HELP = {
        "HELP": "HELP: this text",
        "PING": "PING: 200 pong",
        "LOGIN": "LOGIN <user> <password>",
        "REGISTER": "REGISTER <user> <password>",
        "WHOAMI": "WHOAMI",
        "HISTORY": "HISTORY [limit=N] [user=NAME|*] | HISTORY DELETE <id> | HISTORY CLEAR [user=NAME|*]",
        "QUIT": "QUIT",
    }

    def __init__(self):
        self.account = None
        self.host = "-"
        self.peer = "-"
        self._current = None
        self._loginFailures = 0
        self._closing = False
        self._shuttingDown = False
        self._idleExempt = False
        self._rawRemaining = 0
        self._rawReceive = None
        self._sendingRaw = None
        self._pushQueue = []
        self._pushQueued = 0
        self._queuedWhileFull = 0
        self._output = _OutputMonitor(self)
        self._rawInput = _RawInput(self)
        self._waitingForDrain = False
        self._abortCall = None
        self._monitorRegistered = False
        self._refused = False
        self._loginTimer = None    # the login deadline (cancelled by loginDone)
        self._handshakeTimer = None  # a TLS handshake's deadline
        self._loginLate = False    # the deadline passed during a command
        self._unrecorded = 0       # pre-login commands over the history rate
        self.lost = defer.Deferred()

    # -- configuration shortcuts

    @property
    def runtime(self):
        return self.factory.runtime

    @property
    def config(self):
        return self.factory.runtime.config

    @property
    def user(self):
        return self.account.name if self.account else None

    @property
    def caller(self) -> Caller:
        """The account and address of this connection, for the services."""
        return Caller(self.account, self.host)

    def accountRemoved(self):
        """The logged-in account was removed: this connection ends."""
        self._closeWith("421 account removed")

    # -- connection lifecycle

    def connectionMade(self):
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
            self.log.warn("refused {peer}: {reason}", service=self.service, peer=self.peer,
                          reason=refusal)
            return
        if hasattr(self.transport, "setTcpNoDelay"):
            try:
                self.transport.setTcpNoDelay(True)
                self.transport.setTcpKeepAlive(True)
            except Exception:
                pass
        self._registerMonitor()
        self.setTimeout(self.config.idle_timeout)
        self._loginTimer = self.factory.reactor.callLater(self.config.login_timeout,
                                                          self._loginExpired)
        if ISSLTransport.providedBy(self.transport):
            self._handshakeTimer = self.factory.reactor.callLater(
                self.config.tls_handshake_timeout, self._handshakeExpired)
        self._write(["220 netshare %s %s ready" % (self.service, __version__)])
        self.connectionReady()

    def handshakeCompleted(self):
        """(IHandshakeListener) The TLS handshake is done: its deadline is off."""
        if self._handshakeTimer is not None and self._handshakeTimer.active():
            self._handshakeTimer.cancel()
        self._handshakeTimer = None

    def _handshakeExpired(self):
        """A TLS handshake not done in C{--tls-handshake-timeout}: cut (nothing
        can be said to a peer that never finished the handshake)."""
        self._handshakeTimer = None
        self.log.info("TLS handshake with {peer} not done in time: closing",
                      service=self.service, peer=self.peer)
        self._closing = True
        self.transport.abortConnection()

    # -- the login deadline

    def isLoggedIn(self) -> bool:
        """Whether this connection has logged in (ttweet: as a guest too)."""
        return self.account is not None

    def loginDone(self):
        """Logged in: the login deadline no longer applies."""
        if self._loginTimer is not None and self._loginTimer.active():
            self._loginTimer.cancel()
        self._loginTimer = None

    def _loginExpired(self):
        """
        Not logged in after C{--login-timeout}: close, whatever was sent
        meanwhile (blank lines and refused commands keep a connection from
        being idle, not from having to log in), so connections that never
        log in cannot hold every slot.  A command in progress (a LOGIN
        waiting for its password check) is answered first.
        """
        self._loginTimer = None
        if self.isLoggedIn() or self._closing:
            return
        if self._current is not None:
            self._loginLate = True
            return
        self.log.info("login timeout {peer}", service=self.service, peer=self.peer)
        self._closeWith("421 login timeout")

    def connectionReady(self):
        """Hook for subclasses: the greeting has been sent."""

    def callLater(self, period, func):
        # TimeoutMixin's timer, on the factory's (injected) reactor.
        return self.factory.reactor.callLater(period, func)

    def connectionLost(self, reason):
        self.setTimeout(None)
        self.loginDone()
        self.handshakeCompleted()
        if not self._refused:
            self.runtime.history.recordUnrecorded(id(self), self._unrecorded, now_ms(),
                                                  self.service, self.peer)
        if self._abortCall is not None and self._abortCall.active():
            self._abortCall.cancel()
        self._abortCall = None
        self.factory.release(self)
        if self._rawReceive is not None and self._rawRemaining:
            self._abortRawReceive()
        if self._sendingRaw is not None:
            try:
                self._sendingRaw.producer.stopProducing()
            except Exception:
                pass
        if not self._refused:  # a refused connection never got to connectionReady
            self.connectionClosed()
        if not self.lost.called:
            self.lost.callback(None)

    def connectionClosed(self):
        """Hook for subclasses: release subscriptions, streams, files."""

    def timeoutConnection(self):
        if self._sendingRaw is not None:
            # Nothing was written for a whole timeout: the client stopped
            # reading mid-transfer (or the producer is stuck).  No line can be
            # sent inside raw data, so just cut it.
            self.log.info("stalled download to {peer}, closing", service=self.service,
                          peer=self.peer, user=self.user)
            self._closing = True
            self.transport.abortConnection()
            return
        if self._current is not None and not self._rawRemaining:
            # The server, not the client, is the slow one (a queued password
            # check, a slow database): wait for the answer, then time again.
            self.setTimeout(self.timeOut)
            return
        self.log.info("idle timeout {peer}", service=self.service, peer=self.peer,
                      user=self.user)
        self._closeWith("421 idle timeout")

    def setIdleExempt(self, exempt: bool):
        """
        A connection that only waits for pushes (a SYNC stream, a subscriber)
        is not idle: exempt it from the idle timeout (TCP keepalive still
        reaps dead peers).
        """
        self._idleExempt = exempt
        self.setTimeout(None if exempt else self.config.idle_timeout)

    def _closeWith(self, line):
        if self._closing:
            return
        self._closing = True
        self._loseConnection(line.encode("utf-8") + CRLF)

    def _loseConnection(self, last=b""):
        """Write C{last} and close gracefully; abort if that takes too long."""
        self._closing = True
        # While our output monitor is registered (and possibly paused by a
        # full buffer) the transport would resume it instead of closing.
        self._unregisterMonitor()
        if last:
            self.transport.write(last)
        self.transport.loseConnection()
        # A peer that never reads would keep a graceful close pending forever.
        if self._abortCall is None and self.transport.connected:
            self._abortCall = self.factory.reactor.callLater(5, self._abortIfConnected)

    def _registerMonitor(self):
        # Tracked here: a TLS transport does not expose its producer as
        # C{transport.producer} (that attribute is the TCP transport's, and
        # holds a wrapper), so identity checks on it do not work.
        if not self._monitorRegistered:
            self._output.full = False
            try:
                self.transport.registerProducer(self._output, True)
            except RuntimeError:  # a raw-send producer that never unregistered
                self.transport.unregisterProducer()
                self.transport.registerProducer(self._output, True)
            self._monitorRegistered = True

    def _unregisterMonitor(self):
        if self._monitorRegistered:
            self._monitorRegistered = False
            self.transport.unregisterProducer()

    def _abortIfConnected(self):
        self._abortCall = None
        if self.transport.connected:
            self.transport.abortConnection()

    # -- input

    def dataReceived(self, data):
        if self._closing:
            return
        self.factory.stats.bytes_in += len(data)
        return LineReceiver.dataReceived(self, data)

    def lineLengthExceeded(self, line):
        self.log.warn("line too long from {peer}", service=self.service, peer=self.peer)
        self._buffer = b""
        self._record("-", "<line too long>", 500)
        self._closeWith("500 line too long")

    def lineReceived(self, line):
        if self._closing:
            return
        if line.endswith(b"\r"):
            line = line[:-1]
        if len(line) > self.config.max_line:
            return self.lineLengthExceeded(line)
        if not self._idleExempt:
            self.resetTimeout()
        started, ts = time.monotonic(), now_ms()
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError:
            self._record("-", "<invalid utf-8>", 500, started, ts)
            return self._write(["500 invalid UTF-8"])
        try:
            words = tokenize(text)
        except ValueError as e:
            verb = text.split(None, 1)[0].upper() if text.split() else "-"
            if not (verb.isalnum() and hasattr(self, "cmd_" + verb)):
                verb = UNKNOWN
            self._record(verb, verb + " <unparsable>", 500, started, ts)
            return self._write(["500 bad quoting: %s" % (e,)])
        if not words:
            return  # a blank line is not a command
        verb = words[0].upper()
        handler = getattr(self, "cmd_" + verb, None) if verb.isalnum() else None
        if handler is not None:
            cmd = _Command(verb, redact(verb, words[1:]), started, ts)
        else:
            # A mistyped LOGIN, or a password typed alone on a line: record
            # and log none of it (the reply goes only to the sender).
            cmd = _Command(UNKNOWN, UNKNOWN, started, ts)
        self._current = cmd
        if handler is None:
            shown = verb[:32] if verb.isascii() and verb.isprintable() else ""
            d = defer.fail(SyntaxError_(("unknown command " + shown).rstrip()))
        elif self.account is None and verb not in self.PUBLIC and not self.isPublic(verb):
            d = defer.fail(LoginRequired("login required"))
        else:
            d = defer.maybeDeferred(handler, words[1:])
        d.addCallback(self._deliver)
        d.addErrback(self._deliverError)
        d.addBoth(self._commandDone)
        # Still pending (a Deferred from the handler, or a raw send started
        # by a synchronous handler): parse nothing more until it is answered.
        # During a raw receive the bytes must keep coming; _rawComplete pauses.
        if self._current is cmd and not self.paused and not self._rawRemaining:
            self.pauseProducing()

    def isPublic(self, verb):
        """Hook: may this verb run before login? (ttweet's guests, say)."""
        return False

    # -- replies

    def _deliver(self, result):
        if isinstance(result, tuple):
            result = Reply(*result)
        if isinstance(result, ReceiveRaw):
            return self._startRawReceive(result)
        if isinstance(result, SendRaw):
            return self._startRawSend(result)
        if result is None:
            result = Reply(200, "ok")
        self._current.code = getattr(result, "code", 210 if isinstance(result, Listing) else 200)
        self._write(result.lines())

    def _deliverError(self, failure):
        err = failure.value
        if isinstance(err, NetshareError):
            self._current.code = err.code
            self._write([err.replyLine()])
            if err.code == 421:
                self._loseConnection()
            return
        self.log.failure("internal error in {verb}", failure, service=self.service,
                         verb=self._current.verb, user=self.user, peer=self.peer)
        self._current.code = 451
        self._write(["451 internal error"])

    def _commandDone(self, _):
        cmd, self._current = self._current, None
        if not self._idleExempt and self._sendingRaw is None:
            self.resetTimeout()  # idle time counts from the last answer
        if cmd is not None:
            self._record(cmd.verb, cmd.recorded, cmd.code, cmd.started, cmd.ts_ms, cmd.bytes,
                         written=cmd.journaled is not None and cmd.journaled == cmd.code)
            self.factory.stats.commands += 1
        if self._shuttingDown and not self._closing:
            self._closeWith("421 shutting down")
            return
        if self._loginLate and not self.isLoggedIn() and not self._closing:
            self.log.info("login timeout {peer}", service=self.service, peer=self.peer)
            self._closeWith("421 login timeout")
            return
        if self._output.full:
            self._waitingForDrain = True  # read no more commands until drained
            if not self.paused and not self._closing:
                self.pauseProducing()
            return
        if self.paused and not self._closing:
            self.resumeProducing()

    def _outputDrained(self):
        self._flushPushes()
        if self._waitingForDrain and self._current is None:
            self._waitingForDrain = False
            if self.paused and not self._closing:
                self.resumeProducing()

    def _write(self, lines):
        if not lines:
            return
        data = CRLF.join(line.encode("utf-8") for line in lines) + CRLF
        self._send(data)

    def _send(self, data: bytes):
        if self._closing:
            return  # the closing line (421, 221, 500) was the last one
        self.factory.stats.bytes_out += len(data)
        if self._current is not None:
            self._current.bytes += len(data)
        if self._output.full:
            self._queuedWhileFull += len(data)
            if self._queuedWhileFull + self._pushQueued > self.config.max_output:
                return self._dropSlowReader()
        self.transport.write(data)

    def sendPush(self, data):
        """
        Send a 6xx push line (bytes ending in CRLF, or str without it).

        Queued while raw data is in flight in either direction, written at
        once otherwise.  Never blocks; drops this connection when its queued
        output passes C{max_output}.
        """
        if isinstance(data, str):
            data = data.encode("utf-8") + CRLF
        if self._closing:
            return
        if self._sendingRaw is not None or self._rawRemaining:
            self._pushQueue.append(data)
            self._pushQueued += len(data)
            if self._pushQueued > self.config.max_output:
                self._dropSlowReader()
            return
        self.factory.stats.pushes += 1
        self._send(data)

    def writable(self) -> bool:
        """False while the transport's buffer is full: producers should wait
        for L{onDrain} before sending more."""
        return not self._output.full and self._sendingRaw is None and not self._closing

    def _flushPushes(self):
        if self._pushQueue and self._sendingRaw is None and not self._rawRemaining:
            queue, self._pushQueue, self._pushQueued = self._pushQueue, [], 0
            for data in queue:
                self._send(data)
        if not self._output.full:
            self.onDrain()

    def onDrain(self):
        """Hook: the output has drained (e.g. resume a SYNC feed)."""

    def _dropSlowReader(self):
        if self._closing:
            return
        self.log.warn("dropping slow reader {peer}: more than {limit} bytes queued",
                      service=self.service, peer=self.peer, user=self.user,
                      limit=self.config.max_output)
        self.factory.stats.slow_drops += 1
        self._closing = True
        self._pushQueue, self._pushQueued = [], 0
        self.transport.abortConnection()

    # -- raw receive (client -> server)

    def _startRawReceive(self, raw: ReceiveRaw):
        self._rawReceive = raw
        self._rawRemaining = raw.size
        self._rawDone = defer.Deferred()
        self._write(["350 send %d bytes" % (raw.size,)])
        raw.consumer.registerProducer(self._rawInput, True)
        if raw.size == 0:
            self._rawComplete()
            return self._rawDone
        self.setRawMode()
        self.resumeProducing()  # only raw bytes can come until the last one
        return self._rawDone

    def rawDataReceived(self, data):
        if self._closing or not self._rawRemaining:
            return
        self.resetTimeout()  # a stalled upload times out like an idle line
        chunk, rest = data[:self._rawRemaining], data[self._rawRemaining:]
        self._rawRemaining -= len(chunk)
        if self._current is not None:
            self._current.bytes += len(chunk)
        self._rawReceive.consumer.write(chunk)
        if not self._rawRemaining:
            self._rawComplete()
            self.setLineMode(rest)  # buffered: we are paused until the reply

    def _rawComplete(self):
        self.pauseProducing()  # next pipelined commands wait for the final reply
        raw, done = self._rawReceive, self._rawDone
        raw.consumer.unregisterProducer()
        self._rawReceive = None
        self.setTimeout(None if self._idleExempt else self.config.idle_timeout)
        d = defer.maybeDeferred(raw.finish)
        d.addCallback(self._deliver)
        d.chainDeferred(done)
        self._flushPushes()

    def _abortRawReceive(self):
        raw, self._rawReceive = self._rawReceive, None
        self._rawRemaining = 0
        try:
            raw.consumer.unregisterProducer()
        except Exception:
            pass
        if raw.abort is not None:
            try:
                raw.abort()
            except Exception:
                self.log.failure("aborting an upload", service=self.service)
        if not self._rawDone.called:
            self._rawDone.errback(Failure(TemporaryError("connection lost mid-transfer")))

    # -- raw send (server -> client)

    def _startRawSend(self, raw: SendRaw):
        self._current.code = 226
        self._write(["150 %d bytes sha256=%s" % (raw.size, raw.sha256)])
        self._sendingRaw = raw
        # A transfer that makes no progress for a whole idle timeout is cut
        # (each chunk written resets the timer, see _CountingConsumer).
        self.setTimeout(None if self._idleExempt else self.config.idle_timeout)
        self._unregisterMonitor()
        counter = _CountingConsumer(self)
        d = raw.producer.beginFileTransfer(counter)

        def finished(result):
            self._sendingRaw = None
            if raw.done is not None:
                raw.done()
            if self._closing or not self.transport.connected:
                return
            self._registerMonitor()
            self.setTimeout(None if self._idleExempt else self.config.idle_timeout)
            self._write(["226 transfer complete"])
            self._flushPushes()

        def failed(f):
            self._sendingRaw = None
            if raw.done is not None:
                raw.done()
            # The byte count promised in the 150 line cannot be kept: the only
            # honest thing left is to close the connection.
            if not self.transport.connected:  # the client hung up: not a bug
                self.log.info("raw send to {peer} cut short: {why}", service=self.service,
                              peer=self.peer, user=self.user, why=f.getErrorMessage())
            else:
                self.log.failure("raw send failed, closing {peer}", f, service=self.service,
                                 peer=self.peer, user=self.user)
            self._current.code = 451
            self._closing = True
            if self.transport.connected:
                self.transport.abortConnection()

        d.addCallbacks(finished, failed)
        return d

    # -- shutdown

    def beginShutdown(self):
        """
        The service is stopping: answer C{421 shutting down} now if idle, or
        as soon as the command in progress has been answered.
        @return: a Deferred that fires when the connection is closed.
        """
        self._shuttingDown = True
        if self._current is None and self._sendingRaw is None and not self._rawRemaining:
            self._closeWith("421 shutting down")
        return self.lost

    # -- history and logs

    def _record(self, verb, recorded, code, started=None, ts_ms=None, nbytes=0, written=False):
        """The history entry (unless C{written} with the command's write
        already) and the per-command log event."""
        duration = (time.monotonic() - started) * 1000.0 if started else 0.0
        if written:
            pass
        elif self.account is not None:
            self.runtime.history.record(ts_ms or now_ms(), self.service, self.user, self.peer,
                                        recorded, code, self.account.id)
        elif self.runtime.history.admitPrelogin(id(self), self.host):
            # Before login: a bounded form, at a bounded rate (see admitPrelogin).
            self.runtime.history.record(ts_ms or now_ms(), self.service, None, self.peer,
                                        bounded(recorded), code)
        else:
            self._unrecorded += 1
        (self.runtime.commandLog or self.log).info(
            "{verb} -> {code}", service=self.service, user=self.user or "-", peer=self.peer,
            verb=verb, code=code, duration_ms=round(duration, 3), bytes=nbytes)

    # -- commands every port has

    def cmd_PING(self, args):
        return Reply(200, "pong")

    def cmd_QUIT(self, args):
        self._write(["221 bye"])
        self._current.code = 221
        self._loseConnection()
        return _NO_REPLY

    def cmd_HELP(self, args):
        verbs = sorted(name[4:] for name in dir(self) if name.startswith("cmd_"))
        lines = ["214-" + self.HELP.get(v, v) for v in verbs]
        return _Lines(214, lines + ["214 end"])

    def cmd_WHOAMI(self, args):
        if self.account is None:
            raise LoginRequired("not logged in")
        return Reply(200, "%s %s" % (self.account.name, self.account.role))

    def cmd_LOGIN(self, args):
        if len(args) != 2:
            raise BadArguments("usage: LOGIN <user> <password>")
        return self.authenticate(args[0], args[1])

    def journal(self, code: int) -> dict | None:
        """
        The history row of the command in progress, for its write to insert
        in the same transaction (C{DBPool.run(journal=...)}), with the code
        the command is answered on success.  An acknowledged write and the
        record of it then survive a crash together; if the write fails (its
        transaction is rolled back) the command is recorded as usual, with
        the code it got.
        """
        cmd = self._current
        if cmd is None:
            return None
        cmd.journaled = code
        return self.runtime.history.row(cmd.ts_ms, self.service, self.user, self.peer,
                                        cmd.recorded, code,
                                        self.account.id if self.account is not None else None)

    def recordAs(self, command: str):
        """Record the command in progress as C{command} (escaped) instead of
        what the parser made of it: for handlers that learn only while they
        run what may be written down (the user name of a LOGIN)."""
        if self._current is not None:
            self._current.recorded = escape_unsafe(command)

    @defer.inlineCallbacks
    def authenticate(self, name, password):
        """Check an account password; throttle and count failures.  The
        name is recorded only if it is an account's (L{UNKNOWN_USER}
        otherwise)."""
        if self.account is not None:
            raise BadSequence("already logged in as %s" % (self.account.name,))
        try:
            account = yield self.runtime.accounts.authenticate(name, password, source=self.host)
        except NetshareError as e:
            self.recordAs("LOGIN %s ***" % (getattr(e, "account", None) or UNKNOWN_USER,))
            if e.code != 535:
                raise
            yield self.loginFailed()
            raise
        self.recordAs("LOGIN %s ***" % (account.name,))
        self.account = account
        self.loginDone()
        self.loggedIn()
        return Reply(230, "logged in as %s (%s)" % (account.name, account.role))

    @defer.inlineCallbacks
    def loginFailed(self):
        """Pause (without blocking anyone else), then count the failure."""
        self._loginFailures += 1
        self.factory.stats.login_failures += 1
        yield task.deferLater(self.factory.reactor, self.config.login_failure_delay,
                              lambda: None)
        if self._loginFailures >= self.config.max_login_failures:
            raise ClosingConnection("too many failures")

    def loggedIn(self):
        """Hook for subclasses: C{self.account} was just set."""

    @defer.inlineCallbacks
    def cmd_REGISTER(self, args):
        if len(args) != 2:
            raise BadArguments("usage: REGISTER <user> <password>")
        # Should the account be created, the name is an account's: record it
        # with the write (and undo that below if the write fails).
        self.recordAs("REGISTER %s ***" % (args[0],))
        try:
            account = yield self.runtime.accounts.register(args[0], args[1],
                                                           journal=self.journal(201))
        except Conflict:
            self.recordAs("REGISTER %s ***" % (args[0],))   # an existing account's name
            raise
        except NetshareError:
            self.recordAs("REGISTER %s ***" % (UNKNOWN_USER,))
            raise
        self.recordAs("REGISTER %s ***" % (account.name,))
        return Reply(201, "registered %s" % (account.name,))

    def cmd_HISTORY(self, args):
        history = self.runtime.history
        if args and args[0].upper() == "DELETE":
            pos, _ = split_options(args[1:], positional=(1, 1))
            entry = parse_int(pos[0], "id", lo=1, hi=2**63 - 1)
            d = history.delete(self.account, entry, journal=self.journal(200))
            return d.addCallback(lambda _: Reply(200, "deleted"))
        if args and args[0].upper() == "CLEAR":
            _, opts = split_options(args[1:], allowed=("user",), positional=(0, 0))
            d = history.clear(self.account, opts.get("user"), journal=self.journal(200))
            return d.addCallback(lambda n: Reply(200, "%d deleted" % (n,)))
        _, opts = split_options(args, allowed=("limit", "user"), positional=(0, 0))
        limit = parse_int(opts.get("limit", str(self.config.history_default)), "limit", 1,
                          self.config.history_max)
        d = history.query(self.account, opts.get("user"), limit)
        return d.addCallback(lambda entries: Listing([e.to_wire() for e in entries]))


class _Lines:
    """A reply made of ready lines (HELP)."""

    def __init__(self, code, lines):
        self.code = code
        self._lines = lines

    def lines(self):
        return self._lines


class _NoReply:
    code = 221

    def lines(self):
        return []


_NO_REPLY = _NoReply()


@implementer(IPushProducer)
class _CountingConsumer:
    """Stands between a raw-send producer and the transport, counting bytes."""

    def __init__(self, proto):
        self.proto = proto
        self.transport = proto.transport

    def registerProducer(self, producer, streaming):
        self.transport.registerProducer(producer, streaming)

    def unregisterProducer(self):
        self.transport.unregisterProducer()

    def write(self, data):
        if not self.proto._idleExempt:
            self.proto.resetTimeout()
        self.proto.factory.stats.bytes_out += len(data)
        if self.proto._current is not None:
            self.proto._current.bytes += len(data)
        self.transport.write(data)

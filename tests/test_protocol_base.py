"""
docs/protocol.md section 1 against a real listener over TCP: framing, every limit,
codes, ordering, replies, raw mode, pushes, errors.

L{LabProtocol} is a test-only service protocol with an upload-like (PUT) and
a download-like (GET) command built on ReceiveRaw/SendRaw, so the raw paths
of the base are tested before any real file service exists.
"""

import hashlib
import json
import random
import socket

import pytest
import pytest_twisted
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import defer, task
from twisted.internet.interfaces import IConsumer, IPullProducer
from twisted.logger import capturedLogs
from zope.interface import implementer

from netshare import config as configmod
from netshare.protocols.line import CommandProtocol
from netshare.protocols.replies import Listing, ObjectReply, ReceiveRaw, Reply, SendRaw
from netshare.protocols.words import parse_int
from tests.inprocess import add_account, listen, reactor, wait_for

pytestmark = pytest.mark.timeout(60, method="thread")


# --- the test-only protocol ------------------------------------------------


class LabApp:
    """Test hooks shared by a listener's connections."""

    def __init__(self):
        self.sinks = []
        self.files = []
        self.senders = []
        self.hold_uploads = False  # sinks pause their producer at the first byte
        self.hold_downloads = False  # senders stop after the first chunk until released
        self.slow_uploads = False  # sinks pause at every chunk and resume a turn later


@implementer(IConsumer)
class Sink:
    """An upload consumer that hashes what it gets and can push back."""

    def __init__(self, app, clock):
        self.app, self.clock = app, clock
        self.sha = hashlib.sha256()
        self.count = 0
        self.producer = None
        self.paused = False
        self.pauses = 0
        self.aborted = False
        self.hold = app.hold_uploads
        app.sinks.append(self)

    def registerProducer(self, producer, streaming):
        assert streaming
        self.producer = producer

    def unregisterProducer(self):
        self.producer = None

    def write(self, data):
        self.sha.update(data)
        self.count += len(data)
        if self.producer is None or self.paused:
            return
        if self.hold or self.app.slow_uploads:
            self.paused = True
            self.pauses += 1
            self.producer.pauseProducing()
            if not self.hold:
                self.clock.callLater(0, self.release)

    def release(self):
        self.hold = False
        if self.paused:
            self.paused = False
            if self.producer is not None:
                self.producer.resumeProducing()

    def finish(self):
        return Reply(226, "stored %d bytes sha256=%s" % (self.count, self.sha.hexdigest()))

    def abort(self):
        self.aborted = True


class PatternFile:
    """A deterministic pseudo-random 'file' of any size, made on demand."""

    def __init__(self, size, seed=0):
        self.size, self.pos = size, 0
        self.block = random.Random(seed).randbytes(65537)

    def read(self, n=-1):
        n = self.size - self.pos if n < 0 else min(n, self.size - self.pos)
        out, L = [], len(self.block)
        while n > 0:
            start = self.pos % L
            piece = self.block[start : start + n]
            out.append(piece)
            self.pos += len(piece)
            n -= len(piece)
        return b"".join(out)

    def close(self):
        pass


def pattern(size, seed=0):
    return PatternFile(size, seed).read()


@implementer(IPullProducer)
class _Sender:
    """A pull producer like FileSender (one chunk each time the transport
    asks), which can also hold the transfer after its first chunk."""

    CHUNK = 2**16

    def __init__(self, f, app):
        self.file, self.app = f, app
        self.consumer = self.deferred = None
        self.waiting = False

    def beginFileTransfer(self, consumer):
        self.consumer = consumer
        self.deferred = d = defer.Deferred()
        self.app.senders.append(self)
        consumer.registerProducer(self, False)
        return d

    def resumeProducing(self):
        if self.deferred is None:
            return
        if self.app.hold_downloads and self.file.pos > 0:
            self.waiting = True
            return
        chunk = self.file.read(self.CHUNK)
        if not chunk:
            self.consumer.unregisterProducer()
            d, self.deferred = self.deferred, None
            d.callback(None)
            return
        self.consumer.write(chunk)

    def release(self):
        self.app.hold_downloads = False
        if self.waiting:
            self.waiting = False
            self.resumeProducing()

    def pauseProducing(self):
        pass

    def stopProducing(self):
        if self.deferred is not None:
            d, self.deferred = self.deferred, None
            d.errback(ConnectionError("consumer stopped the transfer"))


class LabProtocol(CommandProtocol):
    service = "lab"
    PUBLIC = CommandProtocol.PUBLIC | {
        "ECHO",
        "BOOM",
        "BOOMLATER",
        "ITEMS",
        "OBJ",
        "PUT",
        "GET",
        "EXEMPT",
    }

    @property
    def app(self):
        return self.factory.app

    def cmd_ECHO(self, args):
        """Answer after a short delay that varies with the first argument."""
        delay = (int(args[0]) % 4) * 0.002 if args and args[0].isdigit() else 0
        return task.deferLater(self.factory.reactor, delay, Reply, 200, " ".join(args))

    def cmd_BOOM(self, args):
        raise RuntimeError("boom")

    def cmd_BOOMLATER(self, args):
        def fail():
            raise KeyError("later")

        return task.deferLater(self.factory.reactor, 0.001, fail)

    def cmd_ITEMS(self, args):
        n = parse_int(args[0], "n") if args else 0
        pad = parse_int(args[1], "pad") if len(args) > 1 else 0
        items = [{"i": i, "pad": "x" * pad} for i in range(n)]
        return task.deferLater(self.factory.reactor, 0.01, Listing, items)

    def cmd_OBJ(self, args):
        return ObjectReply({"args": args, "n": len(args)})

    def cmd_PUT(self, args):
        size = parse_int(args[0] if args else None, "size", lo=0)
        sink = Sink(self.app, self.factory.reactor)
        return ReceiveRaw(size, sink, sink.finish, sink.abort)

    def cmd_GET(self, args):
        size = parse_int(args[0], "size", lo=0)
        seed = parse_int(args[1], "seed") if len(args) > 1 else 0
        f = PatternFile(size, seed)
        self.app.files.append(f)
        sha = hashlib.sha256(pattern(size, seed)).hexdigest()
        return SendRaw(size, sha, _Sender(f, self.app))

    def cmd_EXEMPT(self, args):
        self.setIdleExempt(True)
        return Reply(200, "exempt")


@defer.inlineCallbacks
def lab(rt, **kw):
    app = LabApp()
    srv = yield listen(rt, LabProtocol, app=app, **kw)
    return srv


# --- greeting, commands, replies -------------------------------------------


@pytest_twisted.inlineCallbacks
def test_greeting_ping_help_and_case_insensitive_verbs(runtime):
    srv = yield lab(runtime)
    c = yield srv.raw()
    assert c.greeting.startswith("220 netshare lab ") and c.greeting.endswith(" ready")
    assert (yield c.cmd("PING")) == ["200 pong"]
    assert (yield c.cmd("pInG")) == ["200 pong"]
    c.send(b"PING\n")  # LF alone ends a line too; the server always sends CRLF
    assert (yield c.reply()) == ["200 pong"]
    help_ = yield c.cmd("HELP")
    assert help_[-1] == "214 end" and all(h.startswith("214-") for h in help_[:-1])
    assert any("LOGIN" in h for h in help_)
    c.send(b"\r\n   \r\nPING\r\n")  # blank lines are not commands
    assert (yield c.reply()) == ["200 pong"]


@pytest_twisted.inlineCallbacks
def test_listing_and_object_replies(runtime):
    srv = yield lab(runtime)
    c = yield srv.raw()
    assert (yield c.cmd("ITEMS 0")) == ["210 0 items"]
    lines = yield c.cmd("ITEMS 3")
    assert lines[-1] == "210 3 items"
    assert [json.loads(x[4:]) for x in lines[:-1]] == [{"i": i, "pad": ""} for i in range(3)]
    assert all(x.startswith("210-") for x in lines[:-1])
    (line,) = yield c.cmd('OBJ a "b c" name="x y"')
    assert line.startswith("200 {")
    assert json.loads(line[4:]) == {"args": ["a", "b c", "name=x y"], "n": 3}


@pytest_twisted.inlineCallbacks
def test_unknown_verb_and_login_required(runtime):
    srv = yield lab(runtime)
    c = yield srv.raw()
    assert (yield c.cmd("FROB x y")) == ["500 unknown command FROB"]
    (line,) = yield c.cmd("FOO-BAR")
    assert line.startswith("500 unknown command")
    assert (yield c.cmd("HISTORY")) == ["530 login required"]
    assert (yield c.cmd("WHOAMI")) == ["530 not logged in"]
    assert (yield c.cmd("PING")) == ["200 pong"]


@pytest_twisted.inlineCallbacks
def test_quit_says_bye_and_ignores_what_follows(runtime):
    srv = yield lab(runtime)
    c = yield srv.raw()
    c.send(b"PING\r\nQUIT\r\nPING\r\n")
    assert (yield c.reply()) == ["200 pong"]
    assert (yield c.reply()) == ["221 bye"]
    yield c.wait_closed()
    assert c.buffer == b""


# --- framing limits ----------------------------------------------------------


@pytest_twisted.inlineCallbacks
def test_4096_byte_line_accepted_4097_refused_and_closed(runtime):
    assert configmod.defaults().max_line == 4096
    srv = yield lab(runtime)
    c = yield srv.raw()
    arg = "a" * (4096 - len("ECHO "))
    c.send(("ECHO " + arg).encode() + b"\r\n")  # 4096 bytes + CRLF
    assert (yield c.reply()) == ["200 " + arg]
    c.send(("ECHO " + arg).encode() + b"\n")  # 4096 bytes + LF
    assert (yield c.reply()) == ["200 " + arg]
    c.send(("ECHO " + arg + "b").encode() + b"\r\n")  # 4097 bytes
    assert (yield c.reply()) == ["500 line too long"]
    yield c.wait_closed()
    d = yield srv.raw()
    d.send(("ECHO " + arg + "b").encode() + b"\n")
    assert (yield d.reply()) == ["500 line too long"]
    yield d.wait_closed()
    e = yield srv.raw()
    e.send(b"x" * 5000)  # no newline at all: refused as soon as the cap is passed
    assert (yield e.reply()) == ["500 line too long"]
    yield e.wait_closed()


@pytest_twisted.inlineCallbacks
def test_10mb_without_newline_is_closed_at_the_cap(runtime):
    srv = yield lab(runtime)
    c = yield srv.raw()
    c.send(b"A" * (10 * 2**20))
    yield c.wait_closed()
    # Whatever arrived before the close is the refusal and nothing else.
    assert c.buffer in (b"", b"500 line too long\r\n")
    server = srv.protocols[0]
    yield server.lost.addTimeout(10, reactor())
    assert srv.factory.stats.bytes_in < 256 * 1024  # stopped reading at the cap
    assert server.clearLineBuffer() == b""  # nothing of it kept
    yield runtime.history.flush()
    entries = yield runtime.history.store.list(10, anonymous=True)
    assert [(e.command, e.code) for e in entries] == [("<line too long>", 500)]
    p = yield srv.raw()
    assert (yield p.cmd("PING")) == ["200 pong"]


@pytest_twisted.inlineCallbacks
def test_invalid_utf8_and_bad_quoting_answer_500_and_the_session_goes_on(runtime):
    srv = yield lab(runtime)
    c = yield srv.raw()
    for bad in (b"\xff\xfe PING", b"ECHO \xc0\xaf", b"ECHO \xed\xa0\x80", b"ECHO caf\xe9"):
        c.send(bad + b"\r\n")
        assert (yield c.reply()) == ["500 invalid UTF-8"]
    for bad in ('ECHO "unbalanced', "ECHO 'x", "ECHO trailing\\"):
        (line,) = yield c.cmd(bad)
        assert line.startswith("500 bad quoting")
    assert (yield c.cmd("ECHO \"a b\" c\\ d 'e f'")) == ["200 a b c d e f"]
    assert (yield c.cmd("ECHO h\u00e9llo \u2603")) == ["200 h\u00e9llo \u2603"]
    assert (yield c.cmd("PING")) == ["200 pong"]


@pytest_twisted.inlineCallbacks
def test_idle_timeout_closes_an_idle_connection_only(make_runtime):
    rt = make_runtime(idle_timeout=0.4)
    srv = yield lab(rt)
    idle = yield srv.raw()
    busy = yield srv.raw()
    exempt = yield srv.raw()
    assert (yield exempt.cmd("EXEMPT")) == ["200 exempt"]
    start = reactor().seconds()
    while not idle.closed.called and reactor().seconds() - start < 5:
        assert (yield busy.cmd("PING")) == ["200 pong"]
        yield task.deferLater(reactor(), 0.1, lambda: None)
    assert (yield idle.reply()) == ["421 idle timeout"]
    yield idle.wait_closed()
    assert reactor().seconds() - start >= 0.35
    # One more full timeout: the busy and the exempt connections stay.
    for _ in range(5):
        assert (yield busy.cmd("PING")) == ["200 pong"]
        yield task.deferLater(reactor(), 0.1, lambda: None)
    assert not busy.closed.called and not exempt.closed.called
    assert (yield exempt.cmd("PING")) == ["200 pong"]


@pytest_twisted.inlineCallbacks
def test_a_slow_answer_is_not_an_idle_client(make_runtime):
    rt = make_runtime(idle_timeout=0.3, login_failure_delay=0.7)
    srv = yield lab(rt)
    c = yield srv.raw()
    started = reactor().seconds()
    assert (yield c.cmd("LOGIN nobody wrong")) == ["535 bad credentials"]
    assert reactor().seconds() - started >= 0.6
    assert (yield c.cmd("PING")) == ["200 pong"]
    assert (yield c.reply()) == ["421 idle timeout"]  # idle after the answer
    yield c.wait_closed()


@pytest_twisted.inlineCallbacks
def test_connection_caps_total_and_per_ip(make_runtime):
    rt = make_runtime(max_connections=3, max_per_ip=2)
    srv = yield lab(rt)
    a1 = yield srv.raw()
    a2 = yield srv.raw()
    a3 = yield srv.raw(greet=False)  # third from 127.0.0.1: per-IP cap
    assert (yield a3.readline()) == "421 too many connections"
    yield a3.wait_closed()
    b1 = yield srv.raw(bind="127.0.0.2")  # another IP: admitted (3 in all)
    assert b1.greeting.startswith("220 ")
    b2 = yield srv.raw(bind="127.0.0.2", greet=False)  # total cap
    assert (yield b2.readline()) == "421 too many connections"
    yield b2.wait_closed()
    assert srv.factory.stats.refused == 2
    for c in (a1, a2, b1):
        assert (yield c.cmd("PING")) == ["200 pong"]
    a1.transport.loseConnection()
    yield wait_for(lambda: srv.factory.stats.connections == 2, what="slot released")
    a4 = yield srv.raw()  # a slot is free again
    assert (yield a4.cmd("PING")) == ["200 pong"]


# --- logins ------------------------------------------------------------------


@pytest_twisted.inlineCallbacks
def test_three_bad_logins_each_paused_then_421_and_nobody_else_waits(make_runtime):
    assert configmod.defaults().login_failure_delay == 1.0
    assert configmod.defaults().max_login_failures == 3
    delay = 0.4
    rt = make_runtime(login_failure_delay=delay)
    yield add_account(rt, "alice", "right-pw")
    srv = yield lab(rt)
    bad = yield srv.raw()
    other = yield srv.raw()
    for attempt in (1, 2, 3):
        sent = reactor().seconds()
        bad.send(b"LOGIN alice wrong-pw\r\n")
        answer = bad.reply()
        # Meanwhile another connection is served at once, many times over.
        for _ in range(3):
            assert (yield other.cmd("PING")) == ["200 pong"]
        assert not answer.called
        assert reactor().seconds() - sent < delay
        lines = yield answer
        assert reactor().seconds() - sent >= delay * 0.9
        if attempt < 3:
            assert lines == ["535 bad credentials"]
        else:
            assert lines == ["421 too many failures"]
    yield bad.wait_closed()
    assert srv.factory.stats.login_failures == 3
    # The limit is per connection: a new one may log in.
    good = yield srv.raw()
    assert (yield good.cmd("LOGIN alice wrong-pw")) == ["535 bad credentials"]
    assert (yield good.cmd("LOGIN alice")) == ["501 usage: LOGIN <user> <password>"]
    assert (yield good.cmd("LOGIN alice right-pw")) == ["230 logged in as alice (user)"]
    assert (yield good.cmd("LOGIN alice right-pw")) == ["503 already logged in as alice"]


@pytest_twisted.inlineCallbacks
def test_unknown_user_costs_the_same_as_a_wrong_password(make_runtime):
    rt = make_runtime(login_failure_delay=0.01)
    yield add_account(rt, "alice", "right-pw")
    srv = yield lab(rt)
    derive = rt.kdf.derive
    calls = []

    def spy(password, salt, n, r, p, length=32, source=None):
        calls.append((n, r, p, length))
        return derive(password, salt, n, r, p, length, source=source)

    rt.kdf.derive = spy
    replies = []
    for line in ("LOGIN alice wrong", "LOGIN nosuchuser wrong"):
        c = yield srv.raw()
        replies.append((yield c.cmd(line)))
    c = yield srv.raw()
    replies.append((yield c.cmd("LOGIN bad!name wrong")))
    assert replies == [["535 bad credentials"]] * 3
    # One derivation each, with the same parameters: the dummy-hash path.
    assert len(calls) == 3 and len(set(calls)) == 1


# --- pipelining, errors --------------------------------------------------------


@pytest_twisted.inlineCallbacks
def test_100_pipelined_commands_answered_in_order(runtime):
    srv = yield lab(runtime)
    c = yield srv.raw()
    lines, expected = [], []
    for i in range(100):
        if i % 10 == 3:
            lines.append(b"PING")
            expected.append(["200 pong"])
        elif i % 10 == 7:
            lines.append(b"ITEMS 2")
            expected.append(['210-{"i":0,"pad":""}', '210-{"i":1,"pad":""}', "210 2 items"])
        elif i % 10 == 9:
            lines.append(b"NOPE %d" % i)
            expected.append(["500 unknown command NOPE"])
        elif i % 10 == 5:
            lines.append(b"ECHO \xff")
            expected.append(["500 invalid UTF-8"])
        else:
            lines.append(b"ECHO %d" % i)
            expected.append(["200 %d" % i])
    c.send(b"\r\n".join(lines) + b"\r\n")
    got = []
    for _ in range(100):
        got.append((yield c.reply()))
    assert got == expected


@pytest_twisted.inlineCallbacks
def test_unexpected_handler_error_is_451_logged_once_and_the_connection_survives(runtime):
    srv = yield lab(runtime)
    c = yield srv.raw()
    with capturedLogs() as events:
        assert (yield c.cmd("BOOM")) == ["451 internal error"]
        assert (yield c.cmd("BOOMLATER")) == ["451 internal error"]
        assert (yield c.cmd("PING")) == ["200 pong"]
    failures = [e for e in events if e.get("log_failure") is not None]
    assert [(e["verb"], e["log_failure"].type) for e in failures] == [
        ("BOOM", RuntimeError),
        ("BOOMLATER", KeyError),
    ]
    assert all(e["log_failure"].getTraceback() for e in failures)


# --- raw mode -------------------------------------------------------------------


@pytest_twisted.inlineCallbacks
def test_upload_exact_bytes_then_line_mode_again(runtime):
    srv = yield lab(runtime)
    c = yield srv.raw()
    # The body and the next commands in one write: exactly 5 bytes are raw.
    c.send(b"PUT 5\r\nhelloPING\r\nPUT 0\r\nPING\r\n")
    assert (yield c.reply()) == ["350 send 5 bytes"]
    assert (yield c.reply()) == [
        "226 stored 5 bytes sha256=%s" % hashlib.sha256(b"hello").hexdigest()
    ]
    assert (yield c.reply()) == ["200 pong"]
    assert (yield c.reply()) == ["350 send 0 bytes"]
    assert (yield c.reply()) == ["226 stored 0 bytes sha256=%s" % hashlib.sha256().hexdigest()]
    assert (yield c.reply()) == ["200 pong"]
    body = bytes(range(256)) * 4096 + b"\r\n"  # line breaks inside raw data are data
    srv.factory.app.slow_uploads = True  # the consumer pushes back at every chunk
    c.send(b"PUT %d\r\n" % len(body))
    assert (yield c.reply()) == ["350 send %d bytes" % len(body)]
    c.send(body + b"PING\r\n")
    assert (yield c.reply()) == [
        "226 stored %d bytes sha256=%s" % (len(body), hashlib.sha256(body).hexdigest())
    ]
    assert (yield c.reply()) == ["200 pong"]
    assert srv.factory.app.sinks[-1].pauses > 1
    (line,) = yield c.cmd("PUT -1")
    assert line.startswith("501 ")


@pytest_twisted.inlineCallbacks
def test_upload_backpressure_stops_reading_the_socket(runtime):
    srv = yield lab(runtime)
    srv.factory.app.hold_uploads = True
    c = yield srv.raw()
    size = 32 * 2**20
    body = pattern(size, seed=3)
    c.send(b"PUT %d\r\n" % size)
    assert (yield c.reply()) == ["350 send %d bytes" % size]
    c.send(body)
    sink = srv.factory.app.sinks[0]
    yield wait_for(lambda: sink.paused, what="consumer paused")
    server = srv.protocols[0]
    # Paused: the server does not read the socket, so the body stays in the
    # kernel's buffers and the client's, not in the server's memory.
    # (The receiver reads ahead up to readAhead bytes before it pauses the
    # socket, then the socket is paused.)
    tcp = server.transport
    yield wait_for(lambda: tcp not in reactor().getReaders(), what="socket paused")
    yield task.deferLater(reactor(), 0.1, lambda: None)
    assert sink.count < size // 2
    assert server.buffered < 2**20
    sink.release()
    assert (yield c.reply()) == [
        "226 stored %d bytes sha256=%s" % (size, hashlib.sha256(body).hexdigest())
    ]
    assert (yield c.cmd("PING")) == ["200 pong"]
    assert tcp in reactor().getReaders()


@pytest_twisted.inlineCallbacks
def test_upload_cut_mid_body_aborts_the_consumer(runtime):
    srv = yield lab(runtime)
    c = yield srv.raw()
    c.send(b"PUT 100\r\n")
    assert (yield c.reply()) == ["350 send 100 bytes"]
    c.send(b"x" * 50)
    yield wait_for(lambda: srv.factory.app.sinks and srv.factory.app.sinks[0].count == 50)
    c.transport.loseConnection()
    yield srv.protocols[0].lost.addTimeout(10, reactor())
    assert srv.factory.app.sinks[0].aborted


@pytest_twisted.inlineCallbacks
def test_stalled_upload_times_out_like_an_idle_line(make_runtime):
    rt = make_runtime(idle_timeout=0.4)
    srv = yield lab(rt)
    c = yield srv.raw()
    c.send(b"PUT 100\r\n")
    assert (yield c.reply()) == ["350 send 100 bytes"]
    for _ in range(4):  # progress keeps it alive
        c.send(b"x" * 10)
        yield task.deferLater(reactor(), 0.2, lambda: None)
    assert not c.closed.called
    assert (yield c.reply()) == ["421 idle timeout"]  # then it stalls
    yield c.wait_closed()
    yield srv.protocols[0].lost.addTimeout(10, reactor())
    sink = srv.factory.app.sinks[0]
    assert sink.count == 40 and sink.aborted


@pytest_twisted.inlineCallbacks
def test_download_exact_bytes_with_backpressure(runtime):
    srv = yield lab(runtime)
    c = yield srv.raw()
    size = 32 * 2**20
    c.transport.pauseProducing()  # a client that does not read yet
    c.send(b"GET %d 5\r\nPING\r\n" % size)
    yield wait_for(
        lambda: srv.factory.app.files and srv.factory.app.files[0].pos > 0, what="transfer started"
    )
    f = srv.factory.app.files[0]
    yield task.deferLater(reactor(), 0.2, lambda: None)
    # The producer only produces as the socket drains: most of the file
    # has not even been read on the server.
    assert f.pos < size // 2
    c.transport.resumeProducing()
    expected = pattern(size, seed=5)
    assert (yield c.readline()) == "150 %d bytes sha256=%s" % (
        size,
        hashlib.sha256(expected).hexdigest(),
    )
    data = yield c.read_exactly(size, timeout=30)
    assert data == expected
    assert (yield c.reply()) == ["226 transfer complete"]
    assert (yield c.reply()) == ["200 pong"]
    c.send(b"GET 0\r\n")
    assert (yield c.reply()) == ["150 0 bytes sha256=%s" % hashlib.sha256().hexdigest()]
    assert (yield c.reply()) == ["226 transfer complete"]


# --- pushes ----------------------------------------------------------------------


def _split_stream(buffer):
    """Parse a recorded byte stream into ('line', text) / ('raw', n) items,
    using 150 lines to know where raw data is."""
    out, rest = [], buffer
    while rest:
        line, sep, rest = rest.partition(b"\r\n")
        assert sep, "unterminated line %r" % line[:80]
        text = line.decode("utf-8")
        out.append(("line", text))
        if text.startswith("150 "):
            n = int(text.split()[1])
            out.append(("raw", rest[:n]))
            rest = rest[n:]
    return out


@pytest_twisted.inlineCallbacks
def test_pushes_never_inside_a_listing_or_raw_data(runtime):
    """Record everything one connection receives and check where pushes fall."""
    srv = yield lab(runtime)
    a = yield srv.raw()
    server_a = srv.protocols[0]
    start = len(a.buffer)
    size = 4 * 2**20
    a.send(b"ITEMS 40\r\n")
    yield wait_for(lambda: server_a._current is not None, what="listing pending")
    server_a.sendPush("600 p1")
    srv.factory.app.hold_downloads = True
    a.send(b"GET %d 2\r\n" % size)
    yield wait_for(
        lambda: srv.factory.app.senders and srv.factory.app.senders[0].waiting,
        what="download in flight",
    )
    server_a.sendPush("600 p2")
    server_a.sendPush("600 p3")
    srv.factory.app.senders[0].release()
    yield wait_for(lambda: b"226 transfer complete" in a.buffer, what="download done")
    a.send(b"PUT 6\r\nabc")
    yield wait_for(lambda: server_a.rawRemaining == 3, what="upload half done")
    server_a.sendPush("600 p4")
    a.send(b"def")
    yield wait_for(
        lambda: b"226 stored 6" in a.buffer and b"600 p4" in a.buffer, what="upload done"
    )
    stream = _split_stream(a.buffer[start:])
    texts = [v if k == "line" else "<raw %d>" % len(v) for k, v in stream]
    # The listing is contiguous.
    first = texts.index('210-{"i":0,"pad":""}')
    assert texts[first : first + 41] == ['210-{"i":%d,"pad":""}' % i for i in range(40)] + [
        "210 40 items"
    ]
    # The raw data follows its 150 line directly, exactly, then 226.
    i150 = next(i for i, t in enumerate(texts) if t.startswith("150 "))
    assert texts[i150 + 1] == "<raw %d>" % size and texts[i150 + 2] == "226 transfer complete"
    raw = next(v for k, v in stream if k == "raw")
    assert raw == pattern(size, seed=2)
    assert texts.index("600 p2") > i150 + 2 and texts.index("600 p3") > i150 + 2
    # The upload's push comes after the 350 and nothing ever splits a reply.
    assert texts.index("600 p4") > texts.index("350 send 6 bytes")
    assert sorted(t for t in texts if t.startswith("600 ")) == [
        "600 p1",
        "600 p2",
        "600 p3",
        "600 p4",
    ]


# --- slow readers ------------------------------------------------------------------


@pytest_twisted.inlineCallbacks
def test_reader_that_never_reads_is_dropped_and_others_keep_being_served(make_runtime):
    limit = 256 * 1024
    rt = make_runtime(max_output=limit)
    srv = yield lab(rt)
    # A client socket that never reads, with a small receive buffer.
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(5)
    sock.connect((srv.host, srv.number))
    sock.setblocking(False)
    try:
        yield wait_for(lambda: len(srv.protocols) == 1, what="server side of the silent client")
        silent = srv.protocols[0]
        reader = yield srv.raw()
        reader.discard = True  # reads everything, keeps nothing
        other = yield srv.raw()
        server_reader = srv.protocols[1]
        push = b"600 " + b"p" * 4090 + b"\r\n"
        sent = 0

        def flood():
            # Pushes every reactor turn, like a busy fan-out: four to the
            # silent client, one to the reader.
            nonlocal sent
            for _ in range(4):
                if not silent.lost.called:
                    silent.sendPush(push)
                    sent += len(push)
            server_reader.sendPush(push)

        loop = task.LoopingCall(flood)
        loop.clock = reactor()
        loop.start(0.001)
        rtts = []
        try:
            while not silent.lost.called and sent < 256 * 2**20:
                t0 = reactor().seconds()
                assert (yield other.cmd("PING")) == ["200 pong"]
                rtts.append(reactor().seconds() - t0)
        finally:
            loop.stop()
        assert silent.lost.called, "the silent client was never dropped"
        assert srv.factory.stats.slow_drops == 1
        # What the server held for it was bounded by the limit.
        assert silent.output.queuedWhileFull <= limit + len(push)
        assert not reader.closed.called and not other.closed.called
        assert reader.received > 0
        assert rtts and max(rtts) < 2.0  # generous: others were served throughout
    finally:
        sock.close()


@pytest_twisted.inlineCallbacks
def test_download_cut_by_the_client_stops_the_producer_quietly(runtime):
    srv = yield lab(runtime)
    c = yield srv.raw()
    c.send(b"GET %d\r\n" % (64 * 2**20))
    yield wait_for(lambda: c.received > 2**20, what="some of the download")
    with capturedLogs() as events:
        c.transport.abortConnection()
        yield srv.protocols[0].lost.addTimeout(10, reactor())
    sender = srv.factory.app.senders[0]
    assert sender.deferred is None and sender.file.pos < 64 * 2**20  # stopped early
    assert [e for e in events if e.get("log_failure") is not None] == []
    yield runtime.history.flush()
    entries = yield runtime.history.store.list(5, anonymous=True)
    assert [(e.command, e.code) for e in entries] == [("GET 67108864", 451)]


@pytest_twisted.inlineCallbacks
def test_stalled_download_is_dropped_after_the_idle_timeout(make_runtime):
    rt = make_runtime(idle_timeout=0.5)
    srv = yield lab(rt)
    srv.factory.app.hold_downloads = True  # the producer stalls after one chunk
    c = yield srv.raw()
    c.send(b"GET %d\r\n" % (4 * 2**20))
    yield wait_for(lambda: srv.factory.app.senders and srv.factory.app.senders[0].waiting)
    started = reactor().seconds()
    yield c.wait_closed()
    assert reactor().seconds() - started >= 0.4
    assert srv.factory.app.senders[0].deferred is None  # the producer was stopped


@pytest_twisted.inlineCallbacks
def test_orderly_stop_answers_pending_commands_then_says_421(make_runtime):
    from tests.inprocess import stop_runtime

    rt = make_runtime(login_failure_delay=0.3)
    srv = yield lab(rt)
    idle = yield srv.raw()
    busy = yield srv.raw()
    busy.send(b"LOGIN nobody wrong\r\n")
    yield wait_for(lambda: srv.protocols[1]._current is not None, what="login pending")
    stopping = stop_runtime(rt, close_clients=False)
    assert (yield idle.reply()) == ["421 shutting down"]
    assert (yield busy.reply()) == ["535 bad credentials"]  # answered first
    assert (yield busy.reply()) == ["421 shutting down"]
    yield idle.wait_closed()
    yield busy.wait_closed()
    yield stopping.addTimeout(10, reactor())


@settings(max_examples=500, deadline=None)
@given(
    st.text(
        alphabet=st.sampled_from(list("ab =#\t\r\n\xa0\u2028\u00e9\x0b\x0c\x1f-'\"\\")),
        max_size=20,
    )
)
def test_tokenize_is_shlex_split(text):
    """The fast path must split exactly as shlex.split does (docs/protocol.md)."""
    import shlex

    from netshare.protocols.words import tokenize

    try:
        expected = shlex.split(text, posix=True)
    except ValueError:
        with pytest.raises(ValueError):
            tokenize(text)
        return
    assert tokenize(text) == expected

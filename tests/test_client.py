"""
The client library (netshare.clients.protocol) against a real listener: one Deferred
per command, pipelining, parsed listings and objects, uploads from a file
with a producer, downloads into a file, pushes, and failure handling.

Also here: the client's line framing (netshare.lines), fed the same
bytes in random pieces as Twisted's LineReceiver, must deliver exactly what
LineReceiver delivers, pausing and raw mode included.
"""

import hashlib
import io
import json
import os
import random

import pytest
import pytest_twisted
from twisted.internet import defer
from twisted.internet.testing import StringTransport
from twisted.logger import capturedLogs
from twisted.protocols.basic import LineReceiver, _PauseableMixin

from netshare.clients.protocol import (
    ClientProtocol,
    CommandFailed,
    ProtocolError,
    Response,
    login,
    quote,
)
from netshare.lines import LinearLineReceiver
from tests.inprocess import add_account, listen, reactor, wait_for
from tests.test_protocol_base import LabApp, LabProtocol, pattern

pytestmark = pytest.mark.timeout(60, method="thread")


@defer.inlineCallbacks
def lab(rt, **kw):
    srv = yield listen(rt, LabProtocol, app=LabApp(), **kw)
    return srv


@pytest_twisted.inlineCallbacks
def test_one_deferred_per_command_in_order_with_parsed_replies(runtime):
    yield add_account(runtime, "alice", "pw-alice")
    srv = yield lab(runtime)
    c = yield srv.connect()
    # Fire everything at once; each Deferred gets its own reply.
    ds = [c.command("ECHO %d" % i) for i in range(30)]
    listing = c.command("ITEMS 3 2")
    empty = c.command("ITEMS 0")
    obj = c.command(quote("OBJ", "a b", 'q"uote'))
    bad = c.command("NOPE")
    replies = yield defer.gatherResults(ds + [listing, empty, obj, bad])
    assert [r.line for r in replies[:30]] == ["200 %d" % i for i in range(30)]
    listing, empty, obj, bad = replies[30:]
    assert listing.code == 210 and listing.items == [{"i": i, "pad": "xx"} for i in range(3)]
    assert listing.text == "3 items" and len(listing.lines) == 4
    assert empty.items == [] and empty.line == "210 0 items"
    assert obj.code == 200 and obj.obj == {"args": ["a b", 'q"uote'], "n": 2}
    assert isinstance(bad, Response) and bad.code == 500 and not bad.ok
    resp = yield login(c, "alice", "pw-alice")
    assert resp.code == 230
    who = yield c.command("WHOAMI")
    assert who.line == "200 alice user"
    with pytest.raises(CommandFailed) as e:
        yield login(c, "alice", "pw-alice")
    assert e.value.code == 503
    yield c.close().addTimeout(10, reactor())


@pytest_twisted.inlineCallbacks
def test_upload_from_a_file_with_a_producer(runtime, tmp_path):
    srv = yield lab(runtime)
    srv.factory.app.slow_uploads = True  # server-side backpressure on every chunk
    c = yield srv.connect()
    data = pattern(3 * 2**20 + 17, seed=11)
    path = tmp_path / "up.bin"
    path.write_bytes(data)
    progress = []
    with open(path, "rb") as f:
        d = c.upload("PUT %d" % len(data), f, progress=progress.append)
        after = c.command("PING")  # queued behind the upload, sent after it
        resp = yield d
    assert resp.code == 226
    assert resp.text == "stored %d bytes sha256=%s" % (len(data), hashlib.sha256(data).hexdigest())
    assert resp.lines[0] == "350 send %d bytes" % len(data)
    assert resp.bytes == len(data) and sum(progress) == len(data)
    assert (yield after).line == "200 pong"
    assert srv.factory.app.sinks[0].pauses > 1


@pytest_twisted.inlineCallbacks
def test_upload_sends_exactly_the_announced_bytes(runtime, tmp_path):
    """A source longer than the size sent: only `size` bytes go out, so the
    next command is still a command."""
    srv = yield lab(runtime)
    c = yield srv.connect()
    path = tmp_path / "long.bin"
    path.write_bytes(b"0123456789" * 10 + b"PING\r\n")
    with open(path, "rb") as f:
        resp = yield c.upload("PUT 50", f)
    assert resp.text == "stored 50 bytes sha256=%s" % hashlib.sha256(b"0123456789" * 5).hexdigest()
    assert resp.bytes == 50
    replies = yield defer.gatherResults([c.command("ECHO 1"), c.command("PING")])
    assert [r.line for r in replies] == ["200 1", "200 pong"]
    assert srv.factory.stats.commands == 3


@pytest_twisted.inlineCallbacks
def test_upload_from_a_short_source_fails_and_closes(runtime, tmp_path):
    srv = yield lab(runtime)
    c = yield srv.connect()
    path = tmp_path / "short.bin"
    path.write_bytes(b"abc")
    with open(path, "rb") as f:
        d = c.upload("PUT 10", f)
        with pytest.raises(ConnectionError):
            yield d
    yield c.closed.addTimeout(10, reactor())
    yield wait_for(lambda: srv.factory.app.sinks and srv.factory.app.sinks[0].aborted)


@pytest_twisted.inlineCallbacks
def test_upload_refused_before_350(runtime, tmp_path):
    srv = yield lab(runtime)
    c = yield srv.connect()
    path = tmp_path / "x.bin"
    path.write_bytes(b"abc")
    with open(path, "rb") as f:
        resp = yield c.upload("PUT -3", f)
    assert resp.code == 501
    assert (yield c.command("PING")).line == "200 pong"


@pytest_twisted.inlineCallbacks
def test_download_into_a_file(runtime, tmp_path):
    srv = yield lab(runtime)
    c = yield srv.connect()
    size = 5 * 2**20 + 3
    path = tmp_path / "down.bin"
    with open(path, "wb") as sink:
        progress = []
        d = c.download("GET %d 4" % size, sink, progress=progress.append)
        after = c.command("PING")
        resp = yield d
    expected = pattern(size, seed=4)
    sha = hashlib.sha256(expected).hexdigest()
    assert resp.code == 226 and resp.lines[0] == "150 %d bytes sha256=%s" % (size, sha)
    assert resp.bytes == size and sum(progress) == size
    assert path.read_bytes() == expected
    assert (yield after).line == "200 pong"
    with open(tmp_path / "empty.bin", "wb") as sink:
        resp = yield c.download("GET 0", sink)
    assert resp.code == 226 and os.path.getsize(tmp_path / "empty.bin") == 0


@pytest_twisted.inlineCallbacks
def test_push_callback_and_pushes_never_mix_into_replies(runtime, tmp_path):
    srv = yield lab(runtime)
    c = yield srv.connect()
    got = []
    c.onPush = lambda code, text: got.append((code, text))
    server = srv.protocols[0]
    listing = c.command("ITEMS 20")
    yield wait_for(lambda: server._current is not None)
    server.sendPush("600 one")
    resp = yield listing
    assert len(resp.items) == 20
    with open(tmp_path / "d.bin", "wb") as sink:
        app = srv.factory.app
        app.hold_downloads = True  # the server holds the transfer after one chunk
        d = c.download("GET %d" % (2 * 2**20), sink)
        yield wait_for(lambda: app.senders and app.senders[0].waiting)
        server.sendPush('601 {"two":2}')
        app.senders[0].release()
        resp = yield d
    assert resp.code == 226 and (tmp_path / "d.bin").read_bytes() == pattern(2 * 2**20)
    yield wait_for(lambda: len(got) == 2)
    assert got == [(600, "one"), (601, '{"two":2}')]


@pytest_twisted.inlineCallbacks
def test_pending_commands_fail_when_the_connection_drops(runtime):
    srv = yield lab(runtime)
    c = yield srv.connect()
    d = c.command("ITEMS 5")
    srv.protocols[0].transport.abortConnection()
    with pytest.raises(ConnectionError):
        yield d
    with pytest.raises(ConnectionError):
        yield c.command("PING")


@pytest_twisted.inlineCallbacks
def test_greeting_refusal_and_timeout_fail_cleanly(make_runtime):
    rt = make_runtime(max_per_ip=1)
    srv = yield lab(rt)
    first = yield srv.connect()
    with pytest.raises(ProtocolError, match="421 too many connections"):
        yield srv.connect()
    assert (yield first.command("PING")).line == "200 pong"
    # A server that never greets (a TLS port spoken to in plain text):
    # the greeting times out, and nothing else goes wrong on the way.
    tls = yield lab(rt, tls=True)
    with capturedLogs() as events:
        with pytest.raises(defer.TimeoutError):
            yield tls.connect(tls=False, timeout=0.5)
        yield wait_for(lambda: all(p.lost.called for p in tls.protocols))
    errors = [e for e in events if e.get("log_failure") is not None or e.get("isError")]
    assert errors == []


# -- the line framing, against Twisted's LineReceiver ---------------------------------


class LineReceiverClient(LineReceiver, ClientProtocol):
    """The reference: L{ClientProtocol} framed by Twisted's LineReceiver (with
    LF as the delimiter, a CR before it removed), as the client was before."""

    delimiter = b"\n"
    MAX_LENGTH = ClientProtocol.MAX_LENGTH

    def lineReceived(self, line):
        ClientProtocol.lineReceived(self, line[:-1] if line.endswith(b"\r") else line)

    rawDataReceived = ClientProtocol.rawDataReceived
    # LineReceiver's own flow control (the MRO would otherwise pick
    # LinearLineReceiver's, which feeds the linear framing).
    pauseProducing = _PauseableMixin.pauseProducing
    resumeProducing = _PauseableMixin.resumeProducing
    stopProducing = _PauseableMixin.stopProducing


NASTY = ["'; DROP TABLE personnel;--", "100%", "back\\slash", '"quoted"', "Zo\u00eb \U0001f600"]
RAW = b"raw\r\n610 1 SAVE {}\r\n\n\r" * 700 + b"tail"


def _stream():
    """
    What a server may send a client: every kind of line, and the raw bytes
    of a download.  @return: (the bytes; the kind of command each reply
    answers, in order; the lines, without their ends).
    """
    lines = [b"220 netshare personnel 1 ready"]
    kinds = []
    for i in range(1, 301):
        name = NASTY[i % len(NASTY)]
        lines.append(
            (
                "610 %d SAVE %s"
                % (i, json.dumps({"ssn": "p%d" % i, "name": name}, ensure_ascii=False))
            ).encode()
        )
        if i % 37 == 0:
            lines += [b'210-{"a":1}', b'210-{"a":"\xc3\xa9"}', b"210 2 items"]
            kinds.append("line")
        if i % 53 == 0:
            lines += [b"200 ok", b"611 %d DELETE {}" % (1000 + i), b"612 %d DELETE_ALL {}" % i]
            kinds.append("line")
        if i == 150:
            lines += [b"150 %d bytes sha256=x" % len(RAW), RAW + b"226 done"]
            kinds.append("download")
    lines += [
        b"6105 no space",
        b"61",
        b"",
        b"hello",
        b"610 \xff\xfe bad utf-8",
        b"610\xc3\xa9 not a push",
        b"600-continued",
        b"610 ends with CR\r",
        b"421 shutting down",
    ]
    # CRLF mostly, a bare LF sometimes.
    data = b"".join(line + (b"\n" if i % 11 == 0 else b"\r\n") for i, line in enumerate(lines))
    return data, kinds, lines


def _feed(cls, seed):
    """Deliver the stream in random pieces (splitting CRLF and UTF-8
    sequences), pausing in the middle of a read now and then as the sync
    client does; @return: everything the protocol produced."""
    data, kinds, _ = _stream()
    rng = random.Random(seed)
    proto = cls()
    proto.makeConnection(StringTransport())
    pushes, replies, sink = [], [], io.BytesIO()

    def onPush(code, text):
        pushes.append((code, text))
        if rng.random() < 0.02:
            proto.pauseProducing()

    proto.onPush = onPush
    for kind in kinds:
        d = proto.download("D", sink) if kind == "download" else proto.command("X")
        d.addCallback(lambda r: replies.append((r.code, r.text, r.lines, r.bytes)))
    i = 0
    while i < len(data):
        n = rng.choice([1, 2, 3, 7, 100, 1000, 5000, 70000])
        proto.dataReceived(data[i : i + n])
        i += n
        if proto.paused and rng.random() < 0.5:
            proto.resumeProducing()
    while proto.paused:
        proto.resumeProducing()
    return (pushes, replies, sink.getvalue(), proto.pushes, proto.clearLineBuffer(), rng.random())


@pytest.mark.parametrize("seed", range(12))
def test_client_frames_lines_exactly_like_line_receiver(seed):
    linear, reference = _feed(ClientProtocol, seed), _feed(LineReceiverClient, seed)
    assert linear == reference
    pushes, replies, raw = linear[0], linear[1], linear[2]
    assert raw == RAW and len(replies) == len(_stream()[1])
    # Every 6xx line (after the greeting) is a push, parsed as its decoded text.
    texts = [line.decode("utf-8", "replace") for line in _stream()[2][1:]]
    assert pushes == [
        (int(t[:3]), t[4:]) for t in texts if t[:3].isdigit() and 600 <= int(t[:3]) < 700
    ]
    assert (610, '1 SAVE {"ssn": "p1", "name": "100%"}') in pushes
    assert (610, "ends with CR\r") in pushes


class _Recording:
    MAX_LENGTH = 50

    def lineLengthExceeded(self, line):
        self.got.append(b"! " + line)
        return super().lineLengthExceeded(line)


class SmallLinear(_Recording, LinearLineReceiver):
    def __init__(self):
        super().__init__()
        self.got = []

    def lineReceived(self, line):
        self.got.append(line)


class SmallReference(_Recording, LineReceiver):
    delimiter = b"\n"

    def __init__(self):
        self.got = []

    def lineReceived(self, line):
        self.got.append(line[:-1] if line.endswith(b"\r") else line)


@pytest.mark.parametrize("seed", range(40))
def test_line_length_limit_like_line_receiver(seed):
    """Lines around the limit (a CR counts), an unfinished line growing past
    it, and what arrives after the connection starts closing."""
    rng = random.Random(seed)
    pieces = []
    for _ in range(rng.randint(1, 12)):
        body = b"x" * rng.choice([0, 1, 48, 49, 50, 51, 52, 120])
        pieces.append(body + rng.choice([b"\n", b"\r\n", b"\r\r\n"]))
    if rng.random() < 0.5:
        pieces.append(b"y" * rng.choice([10, 50, 51, 200]))  # unfinished
    data = b"".join(pieces)
    cuts = sorted(rng.sample(range(1, len(data)), min(len(data) - 1, rng.randint(0, 8))))
    chunks = [data[a:b] for a, b in zip([0] + cuts, cuts + [len(data)], strict=True)]
    results = []
    for cls in (SmallLinear, SmallReference):
        proto = cls()
        proto.makeConnection(StringTransport())
        for chunk in chunks:
            proto.dataReceived(chunk)
        results.append((proto.got, proto.transport.disconnecting, proto.clearLineBuffer()))
    assert results[0] == results[1]


def test_data_received_while_a_line_is_delivered_is_queued_in_order():
    class Reentrant(LinearLineReceiver):
        def __init__(self):
            super().__init__()
            self.got = []

        def lineReceived(self, line):
            self.got.append(line)
            if line == b"a":
                self.dataReceived(b"c\nd")

    proto = Reentrant()
    proto.makeConnection(StringTransport())
    proto.dataReceived(b"a\nb\n")
    proto.dataReceived(b"\n")
    assert proto.got == [b"a", b"b", b"c", b"d"]


def test_pausing_stops_reading_the_transport_and_keeps_the_lines():
    proto = ClientProtocol()
    transport = StringTransport()
    proto.makeConnection(transport)
    got = []
    proto.onPush = lambda code, text: (got.append(text), proto.pauseProducing())
    proto.dataReceived(b"220 hi\r\n600 a\r\n600 b\r\n600 c")
    assert got == ["a"] and transport.producerState == "paused"
    proto.resumeProducing()
    assert got == ["a", "b"] and transport.producerState == "paused"
    proto.dataReceived(b"\r\n")  # arrives while paused: waits
    assert got == ["a", "b"]
    proto.resumeProducing()
    proto.resumeProducing()
    assert got == ["a", "b", "c"] and transport.producerState == "producing"


def test_read_ahead_pauses_the_transport_only_past_its_bound():
    """A server's receiver (readAhead set) stops delivering at once but
    keeps reading the socket until readAhead bytes wait: no epoll_ctl per
    command, and memory still bounded."""

    class Server(LinearLineReceiver):
        readAhead = 100

        def __init__(self):
            super().__init__()
            self.got = []

        def lineReceived(self, line):
            self.got.append(line)
            self.pauseProducing()  # one command at a time, as the server does

    proto, transport = Server(), StringTransport()
    proto.makeConnection(transport)
    proto.dataReceived(b"A\r\nB\r\n")
    assert proto.got == [b"A"] and transport.producerState == "producing"
    proto.dataReceived(b"x" * 90 + b"\r\n")  # 95 bytes wait: still reading
    assert proto.got == [b"A"] and transport.producerState == "producing"
    proto.dataReceived(b"C" * 10 + b"\r\n")  # past the bound: the socket is paused
    assert proto.got == [b"A"] and transport.producerState == "paused"
    proto.resumeProducing()
    assert proto.got == [b"A", b"B"] and transport.producerState == "producing"
    for _ in range(2):
        proto.resumeProducing()
    assert proto.got == [b"A", b"B", b"x" * 90, b"C" * 10]


def test_the_interactive_ttweet_client_keeps_an_idle_session_alive():
    """A PING well inside the server's idle timeout, and none once closed."""
    from twisted.internet.task import Clock

    from netshare import config as configmod
    from netshare.clients.ttweet import KEEPALIVE_SECONDS, start_keepalive

    assert KEEPALIVE_SECONDS * 2 <= configmod.defaults().idle_timeout

    class Proto:
        isOpen = True
        sent: list = []

        def command(self, line):
            self.sent.append(line)
            return defer.Deferred()

    clock, proto = Clock(), Proto()
    call = start_keepalive(proto, clock)
    clock.advance(KEEPALIVE_SECONDS - 1)
    assert proto.sent == []
    clock.advance(1)
    assert proto.sent == ["PING"]
    for _ in range(3):
        clock.advance(KEEPALIVE_SECONDS)
    assert proto.sent == ["PING"] * 4
    proto.isOpen = False
    clock.advance(KEEPALIVE_SECONDS)
    assert len(proto.sent) == 4
    call.stop()


def test_sizes_are_human_readable_in_tables_and_raw_with_bytes_or_json():
    import argparse

    from netshare.clients import common

    assert [common.human_size(n) for n in (0, 1023, 1536, 10 * 2**20, 3 * 2**40)] == [
        "0 B",
        "1023 B",
        "1.5 KiB",
        "10.0 MiB",
        "3.0 TiB",
    ]
    rows = [{"name": "a", "size": 1536}]
    for flags, shown in (({}, "1.5 KiB"), ({"bytes": True}, "1536")):
        out = io.StringIO()
        common.emit(argparse.Namespace(**flags), rows, ["name", "size"], out=out)
        assert shown in out.getvalue()
    out = io.StringIO()
    common.emit(argparse.Namespace(json=True), rows, ["name", "size"], out=out)
    assert json.loads(out.getvalue()) == rows  # JSON: always bytes

"""
The client library (netshare.clients.protocol) against a real listener: one Deferred
per command, pipelining, parsed listings and objects, uploads from a file
with a producer, downloads into a file, pushes, and failure handling.
"""

import hashlib
import os

import pytest
import pytest_twisted
from twisted.internet import defer
from twisted.logger import capturedLogs

from netshare.clients.protocol import CommandFailed, ProtocolError, Response, login, quote
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

"""
ttweet's event stream (C{GET /api/events}, Server-Sent Events) read with a
raw socket: tweets posted over HTTP and over the ttweet line port arrive
as events; a reconnect with C{Last-Event-ID} gets what it missed from the
persisted timeline, then live ones; a reader that stops reading is dropped
like a slow line reader, and nobody else waits for it.
"""

import json
import time
from types import SimpleNamespace

import pytest
import pytest_twisted
from twisted.internet import threads

from tests.support import LineConn, ServerProcess
from tests.web_support import EventReader, Http, login, register


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    s = ServerProcess(
        tmp_path_factory.mktemp("websse") / "data",
        web=True,
        extra_args=[
            "--max-output",
            "16KiB",
            "--flood-burst",
            "1000000",
            "--flood-rate",
            "1000000",
            "--flood-address-burst",
            "1000000",
            "--flood-address-rate",
            "1000000",
        ],
    )
    s.start()
    try:
        for name in ("reader", "poster", "liner", "slow"):
            register(s, name, name + "pw")
        yield s
    finally:
        s.terminate()
        s.kill()


def line_login(server, name):
    c = LineConn(server.ports["ttweet"])
    c.readline()
    assert c.cmd("LOGIN %s %spw" % (name, name))[0].startswith("230")
    return c


def tweet_of(event):
    assert event["event"] == "tweet"
    tweet = json.loads(event["data"])
    assert int(event["id"]) == tweet["id"]
    return tweet


def test_events_from_http_and_line_then_resume(server):
    port = server.ports["web"]
    reader, r = login(port, "reader", "readerpw")
    token = r.json["token"]
    poster = login(port, "poster", "posterpw")[0]
    assert reader.post("/api/subscriptions", {"hashtag": "ALL"}).status == 200

    stream = EventReader(port, token)
    liner = line_login(server, "liner")
    try:
        assert stream.read_head() == 200
        assert stream.headers["content-type"].startswith("text/event-stream")
        assert (
            poster.post("/api/tweets", {"message": "over http", "hashtags": ["a"]}).status == 201
        )
        first = tweet_of(stream.next_event())
        assert (first["user"], first["message"]) == ("poster", "over http")
        assert liner.cmd('TWEET "over the line" #b') == ["200 ok"]
        second = tweet_of(stream.next_event())
        assert (second["user"], second["message"], second["hashtags"]) == (
            "liner",
            "over the line",
            "#b",
        )
        assert second["id"] > first["id"]
    finally:
        stream.close()

    # Missed while disconnected: still delivered to the account's timeline.
    missed = []
    for i in range(3):
        r = poster.post("/api/tweets", {"message": "missed %d" % i})
        assert r.status == 201
        missed.append(r.json["id"])
    assert liner.cmd('TWEET "missed line"') == ["200 ok"]

    again = EventReader(port, token, last_event_id=second["id"])
    try:
        assert again.read_head() == 200
        got = [tweet_of(again.next_event()) for _ in range(4)]
        assert [t["message"] for t in got] == ["missed 0", "missed 1", "missed 2", "missed line"]
        assert [t["id"] for t in got][:3] == missed
        # ...then the live ones, none twice.
        assert poster.post("/api/tweets", {"message": "live again"}).status == 201
        live = tweet_of(again.next_event())
        assert live["message"] == "live again" and live["id"] > got[-1]["id"]
    finally:
        again.close()
        liner.close()

    # The request was recorded (once, when the stream started).
    r = reader.get("/api/history?limit=50")
    commands = [e["command"] for e in r.json["items"]]
    assert commands.count("GET /api/events") == 2


def test_event_stream_needs_a_session(server):
    stream = EventReader(server.ports["web"], "ns1.1.notarealtokennotarealtoken")
    try:
        assert stream.read_head() == 401
    finally:
        stream.close()


def test_slow_event_reader_is_dropped(server):
    """A stream whose reader stops reading is aborted once more than
    --max-output (16 KiB here) waits for it; the others keep getting
    their events."""
    port = server.ports["web"]
    slow, r = login(port, "slow", "slowpw")
    assert slow.post("/api/subscriptions", {"hashtag": "ALL"}).status == 200
    admin = login(port, "admin", "adminpw")[0]
    stuck = EventReader(port, r.json["token"], rcvbuf=4096)
    liner = line_login(server, "liner")
    try:
        assert stuck.read_head() == 200
        message = "z" * 150
        deadline = time.monotonic() + 60
        dropped = 0
        while not dropped:
            assert time.monotonic() < deadline, "the slow reader was never dropped"
            liner.send(('TWEET "%s"\r\n' % message).encode() * 500)
            for _ in range(500):
                assert liner.readline() == "200 ok"
            dropped = slow_drops(admin)
        # Everyone else is served: the line client and HTTP alike.
        assert liner.cmd("PING") == ["200 pong"]
        assert admin.get("/api/users").status == 200
        # The stuck stream is gone: reading it ends (reset or EOF) early.
        with pytest.raises((EOFError, ConnectionResetError)):
            while True:
                stuck._decode_chunks()
                stuck._recv()
    finally:
        stuck.close()
        liner.close()


def slow_drops(admin):
    r = admin.get("/metrics")
    assert r.status == 200
    for line in r.data.decode().splitlines():
        if line.startswith('netshare_slow_readers_dropped_total{service="web"}'):
            return float(line.split()[-1])
    raise AssertionError("no slow_readers_dropped metric")


def test_keepalive_and_retry_are_comments_and_fields(server):
    """The stream starts with a comment and a retry field (no event)."""
    port = server.ports["web"]
    _, r = login(port, "poster", "posterpw")
    stream = EventReader(port, r.json["token"])
    try:
        assert stream.read_head() == 200
        stream._decode_chunks()
        while b"\n\n" not in stream.body:
            stream._recv()
            stream._decode_chunks()
        assert stream.body.startswith(b": netshare ttweet events\nretry: 3000\n\n")
    finally:
        stream.close()
    assert Http(port).get("/healthz").status == 200


@pytest_twisted.inlineCallbacks
def test_event_stream_ends_in_order_at_shutdown(make_runtime):
    """The server stops: an open event stream is ended (its last chunk
    sent), not cut, as line connections get their 421."""
    from twisted.internet import reactor, task

    from netshare.services.accounts import Caller
    from netshare.web.site import build_site
    from tests.inprocess import add_account, stop_runtime

    rt = make_runtime(ttweet="tcp:0:interface=127.0.0.1")
    site = build_site(rt)
    port = reactor.listenTCP(0, site, interface="127.0.0.1")
    rt.harness.listeners.append(SimpleNamespace(port=port))
    account = yield add_account(rt, "watcher", "watcherpw")
    made = yield rt.sessions.new(Caller(account, "127.0.0.1"), label="t")

    def read_all():
        stream = EventReader(port.getHost().port, made["token"])
        try:
            assert stream.read_head() == 200
            while True:
                try:
                    stream._decode_chunks()
                except EOFError:
                    return "ended"
                try:
                    stream._recv()
                except EOFError:
                    return "cut"
        finally:
            stream.close()

    reading = threads.deferToThread(read_all)
    for _ in range(500):
        if sum(len(p.streams) for p in site.ttweetPresences.byAccount.values()):
            break
        yield task.deferLater(reactor, 0.01, lambda: None)
    else:
        raise AssertionError("the stream never opened")
    yield stop_runtime(rt)
    how = yield reading.addTimeout(20, reactor)
    assert how == "ended"


def _in_process_site(rt, tls=False):
    """The web site over an in-process runtime, on a free loopback port
    (over TLS with the runtime's certificate if C{tls})."""
    from twisted.internet import reactor

    from netshare.web.site import build_site
    from tests.inprocess import _escape, tls_material

    site = build_site(rt)
    cafile = None
    if tls:
        from netshare.tls import server_endpoint

        ca, cert, key = tls_material(rt)
        cafile = ca
        endpoint = server_endpoint(
            reactor,
            "ssl:0:interface=127.0.0.1:privateKey=%s:certKey=%s" % (_escape(key), _escape(cert)),
        )
        port = yield endpoint.listen(site)
    else:
        port = reactor.listenTCP(0, site, interface="127.0.0.1")
    rt.harness.listeners.append(SimpleNamespace(port=port))
    return site, port.getHost().port, cafile


@pytest_twisted.inlineCallbacks
def test_removed_account_stream_ends(make_runtime):
    """Removing an account ends its event streams (as its line connections
    get 421 account removed) and takes its presence out of the hub."""
    from twisted.internet import reactor, task

    from netshare.services.accounts import Caller
    from tests.inprocess import add_account

    rt = make_runtime(ttweet="tcp:0:interface=127.0.0.1")
    site, port, _ = yield from _in_process_site(rt)
    account = yield add_account(rt, "goner", "gonerpw")
    made = yield rt.sessions.new(Caller(account, "127.0.0.1"), label="t")

    def read_all():
        stream = EventReader(port, made["token"])
        try:
            assert stream.read_head() == 200
            while True:
                try:
                    stream._decode_chunks()
                except EOFError:
                    return "ended"
                try:
                    stream._recv()
                except (EOFError, ConnectionResetError):
                    return "closed"
        finally:
            stream.close()

    reading = threads.deferToThread(read_all)
    for _ in range(500):
        if site.ttweetPresences.streams:
            break
        yield task.deferLater(reactor, 0.01, lambda: None)
    assert rt.apps["ttweet"].is_online("goner")
    yield rt.accounts.remove("goner")
    how = yield reading.addTimeout(20, reactor)
    assert how in ("ended", "closed")
    assert not rt.apps["ttweet"].is_online("goner")
    assert site.ttweetPresences.streams == 0


@pytest_twisted.inlineCallbacks
def test_https_and_a_secure_cookie(make_runtime):
    """Over TLS the session cookie is Secure; the API is the same."""
    import http.client
    import ssl

    from tests.inprocess import add_account

    rt = make_runtime()
    _, port, cafile = yield from _in_process_site(rt, tls=True)
    yield add_account(rt, "tlsuser", "tlsuserpw")

    def exchange():
        context = ssl.create_default_context(cafile=cafile)
        conn = http.client.HTTPSConnection("127.0.0.1", port, timeout=20, context=context)
        try:
            conn.request(
                "POST",
                "/api/session",
                body=json.dumps({"user": "tlsuser", "password": "tlsuserpw"}),
                headers={"Content-Type": "application/json"},
            )
            r = conn.getresponse()
            body = json.loads(r.read())
            cookie = r.getheader("Set-Cookie")
            conn.request("GET", "/api/session", headers={"Cookie": cookie.split(";")[0]})
            r2 = conn.getresponse()
            return r.status, cookie, body, r2.status, json.loads(r2.read())
        finally:
            conn.close()

    status, cookie, body, status2, whoami = yield threads.deferToThread(exchange)
    assert status == 201 and "; Secure" in cookie and "HttpOnly" in cookie
    assert status2 == 200 and whoami == {"user": "tlsuser", "role": "user", "csrf": body["csrf"]}

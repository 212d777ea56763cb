"""
The HTTP API over real sockets: a real C{twistd netshare} with its web
listener, driven with the stdlib HTTP client (and once with the C{curl}
binary).

Sessions (login, throttling, Bearer and cookie + CSRF), roles, the request
history (every request, no secrets), ttweet, personnel and its sync
clients, request bodies (bounded, refused early), errors as JSON with the
one status table, and the health endpoints.
"""

import hashlib
import http.client
import json
import os
import shutil
import socket
import subprocess
from types import SimpleNamespace

import pytest
import pytest_twisted
from twisted.internet import threads

from netshare.web.auth import csrf_for
from netshare.web.openapi import document
from tests.inprocess import add_account
from tests.support import LineConn
from tests.web_support import Http, login, register, web_server

PEOPLE = "/api/people"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    # Loopback counts as "remote" here (the exempt network is elsewhere), so
    # the account lockout is reachable in a few attempts; the address is
    # slowed only after 10 failures, more than this module makes.
    yield from web_server(
        tmp_path_factory.mktemp("webapi") / "data",
        ["bob", "carol", "victim", "lineuser"],
        [
            "--lockout-exempt",
            "10.255.255.255/32",
            "--account-lockout",
            "3",
            "--login-free",
            "10",
            "--login-failure-delay",
            "0.2",
        ],
    )


@pytest.fixture(scope="module")
def port(server):
    return server.ports["web"]


@pytest.fixture(scope="module")
def admin(port):
    return login(port, "admin", "adminpw")[0]


@pytest.fixture(scope="module")
def bob(port):
    return login(port, "bob", "bobpw")[0]


def error_of(reply):
    body = reply.json
    assert set(body) == {"code", "error"}, body
    assert reply.header("Content-Type").startswith("application/json")
    return body["code"]


# -- operations


def test_healthz_and_readyz(port):
    r = Http(port).get("/healthz")
    assert r.status == 200 and r.json == {"status": "ok"}
    r = Http(port).get("/readyz")
    assert r.status == 200 and r.json == {"status": "ok"}


def test_openapi_document_is_served(port):
    r = Http(port).get("/api/openapi.yaml")
    assert r.status == 200
    assert r.header("Content-Type").startswith("application/yaml")
    assert r.data == document()


def test_unknown_route_and_method(admin):
    r = admin.get("/api/nothing-here")
    assert r.status == 404 and error_of(r) == 550
    r = admin.request("PATCH", PEOPLE)
    assert r.status == 405 and error_of(r) == 500
    assert set(r.header("Allow").split(", ")) == {"GET", "HEAD", "POST"}


# -- sessions


def test_login_good(port):
    client, r = login(port, "bob", "bobpw")
    body = r.json
    assert set(body) == {"id", "token", "expires", "user", "role", "csrf"}
    assert (body["user"], body["role"]) == ("bob", "user")
    assert body["csrf"] == csrf_for(body["token"])
    cookie = r.header("Set-Cookie")
    assert cookie.startswith("netshare_session=%s;" % body["token"])
    for attribute in ("HttpOnly", "SameSite=Strict", "Path=/"):
        assert attribute in cookie
    assert "Secure" not in cookie  # plain HTTP here
    r = client.get("/api/session")
    assert r.status == 200 and r.json == {"user": "bob", "role": "user"}


def test_login_bad_password_and_bad_body(port):
    r = Http(port).post("/api/session", {"user": "bob", "password": "wrong"})
    assert r.status == 401 and error_of(r) == 535
    assert r.header("WWW-Authenticate").startswith("Bearer")
    r = Http(port).post("/api/session", {"user": "nobody", "password": "x"})
    assert r.status == 401 and error_of(r) == 535
    r = Http(port).post("/api/session", raw=b"{not json", headers={"Content-Type": "x"})
    assert r.status == 400 and error_of(r) == 501
    r = Http(port).post("/api/session", {"user": "bob"})
    assert r.status == 400 and error_of(r) == 501
    r = Http(port).post("/api/session", ["bob", "bobpw"])
    assert r.status == 400 and error_of(r) == 501


def test_login_throttled_like_the_line_ports(server, port):
    """The same lockout as LOGIN: after 3 failures the account is locked,
    even with the right password (429 with Retry-After), over HTTP and on
    the line port alike."""
    for _ in range(3):
        r = Http(port).post("/api/session", {"user": "victim", "password": "nope"})
        assert r.status == 401
    r = Http(port).post("/api/session", {"user": "victim", "password": "victimpw"})
    assert r.status == 429 and error_of(r) == 429
    assert "locked" in r.json["error"]
    assert int(r.header("Retry-After")) > 0
    c = LineConn(server.ports["files"])
    try:
        c.readline()
        assert c.cmd("LOGIN victim victimpw")[0].startswith("429")
    finally:
        c.close()


def test_no_session(port):
    r = Http(port).get("/api/timeline")
    assert r.status == 401 and error_of(r) == 530
    r = Http(port, token="ns1.1.notarealtokennotarealtoken").get("/api/timeline")
    assert r.status == 401 and error_of(r) == 535
    r = Http(port).get("/api/history", headers={"Authorization": "Basic Ym9iOmJvYnB3"})
    assert r.status == 401 and error_of(r) == 530


def test_cookie_needs_csrf_for_changes_bearer_does_not(port, admin):
    _, r = login(port, "carol", "carolpw")
    token, csrf = r.json["token"], r.json["csrf"]
    browser = Http(port, cookie=token)
    # Reading with the cookie alone is fine, and tells the CSRF token.
    r = browser.get("/api/session")
    assert r.status == 200 and r.json["csrf"] == csrf
    # Changing state without (or with a wrong) X-CSRF-Token: 403.
    r = browser.post("/api/subscriptions", {"hashtag": "csrf"})
    assert r.status == 403 and error_of(r) == 531
    assert r.json["error"] == "missing or wrong CSRF token"
    r = browser.post("/api/subscriptions", {"hashtag": "csrf"}, headers={"X-CSRF-Token": "0" * 64})
    assert r.status == 403 and error_of(r) == 531
    # With it: done.
    r = Http(port, cookie=token, csrf=csrf).post("/api/subscriptions", {"hashtag": "csrf"})
    assert r.status == 200 and "#csrf" in r.json["items"]
    # The same token as Bearer needs no CSRF header.
    r = Http(port, token=token).delete("/api/subscriptions/csrf")
    assert r.status == 200 and "#csrf" not in r.json["items"]
    # Logging out with the cookie: the session ends, the cookie is cleared.
    r = Http(port, cookie=token, csrf=csrf).delete("/api/session")
    assert r.status == 204
    assert "Max-Age=0" in r.header("Set-Cookie")
    r = browser.get("/api/session")
    assert r.status == 401 and error_of(r) == 535
    assert "Max-Age=0" in r.header("Set-Cookie")


def test_sessions_list_and_revoke(port, admin):
    client, r = login(port, "bob", "bobpw")
    sid = r.json["id"]
    r = client.get("/api/sessions")
    assert r.status == 200
    mine = r.json["items"]
    assert sid in [s["id"] for s in mine] and {s["user"] for s in mine} == {"bob"}
    assert {s["label"] for s in mine} == {"web"}
    r = client.get("/api/sessions?user=*")
    assert r.status == 403 and error_of(r) == 531
    r = admin.get("/api/sessions?user=bob")
    assert r.status == 200 and sid in [s["id"] for s in r.json["items"]]
    r = client.delete("/api/sessions/%d" % sid)
    assert r.status == 204
    r = client.get("/api/session")
    assert r.status == 401
    r = admin.delete("/api/sessions/999999999")
    assert r.status == 404 and error_of(r) == 550
    r = admin.delete("/api/sessions/abc")
    assert r.status == 400 and error_of(r) == 501


def test_token_from_the_line_port_works_over_http(server, port):
    """One session mechanism: a token made with SESSION NEW is a Bearer token."""
    c = LineConn(server.ports["personnel"])
    try:
        c.readline()
        assert c.cmd("LOGIN carol carolpw")[0].startswith("230")
        reply = c.cmd("SESSION NEW label=cli")
        assert reply[0].startswith("201")
        token = json.loads(reply[0][4:])["token"]
    finally:
        c.close()
    r = Http(port, token=token).get("/api/session")
    assert r.status == 200 and r.json["user"] == "carol"


# -- roles


def test_roles(port, admin, bob):
    r = bob.post(PEOPLE, {"ssn": "R-1", "name": "A", "surname": "B"})
    assert r.status == 403 and error_of(r) == 531
    r = bob.post(PEOPLE, {"nonsense": True})  # the role is checked before the body
    assert r.status == 403
    r = bob.get("/api/sync-clients")
    assert r.status == 403
    r = bob.post("/api/sync-clients/send", {"client": "*", "id": "*"})
    assert r.status == 403
    r = bob.get("/api/history?user=*")
    assert r.status == 403 and error_of(r) == 531
    r = admin.get("/api/history?user=*&limit=1")
    assert r.status == 200


# -- history


def test_every_request_recorded_without_secrets(port, admin):
    r = Http(port).post("/api/session", {"user": "bob", "password": "Hunter2-Secret"})
    assert r.status == 401
    client, r = login(port, "carol", "carolpw")
    token = r.json["token"]
    r = client.get("/api/users?token=%s&q=1" % token)
    assert r.status == 200
    r = client.get("/api/no-such-thing")
    assert r.status == 404
    r = admin.post(PEOPLE, {"ssn": "H-1", "name": "Hist", "surname": "Ory"})
    assert r.status == 201
    r = admin.get("/api/history?user=*&limit=200")
    assert r.status == 200
    entries = r.json["items"]
    text = json.dumps(entries)
    assert "Hunter2-Secret" not in text and token not in text
    assert "carolpw" not in text and "adminpw" not in text
    commands = [(e["user"], e["service"], e["command"], e["code"]) for e in entries]
    assert ("-", "web", "POST /api/session", 401) in commands
    assert ("carol", "web", "POST /api/session", 201) in commands
    assert ("carol", "ttweet", "GET /api/users?token=***&q=1", 200) in commands
    assert ("carol", "web", "GET /api/no-such-thing", 404) in commands
    assert ("admin", "personnel", "POST /api/people", 201) in commands
    # A user's own view: its own entries only, the listing itself not in it.
    r = client.get("/api/history?limit=10")
    assert r.status == 200
    own = r.json["items"]
    assert own and {e["user"] for e in own} == {"carol"}
    assert own[0]["command"] == "GET /api/no-such-thing"
    # Deleting one and clearing: out of the owner's view, still in the admin's.
    r = client.delete("/api/history/%d" % own[0]["id"])
    assert r.status == 204
    r = client.get("/api/history?limit=10")
    assert own[0]["id"] not in [e["id"] for e in r.json["items"]]
    r = client.delete("/api/history")
    assert r.status == 200 and r.json["deleted"] >= 1
    r = client.get("/api/history?limit=10")
    assert [e["command"] for e in r.json["items"]] == ["DELETE /api/history"]
    r = admin.get("/api/history?user=carol&limit=100")
    assert own[0]["id"] in [e["id"] for e in r.json["items"]]
    r = client.get("/api/history?limit=0")
    assert r.status == 400 and error_of(r) == 501
    r = client.get("/api/history?limit=1001")
    assert r.status == 400
    r = client.delete("/api/history/999999999")
    assert r.status == 404


# -- ttweet


def test_ttweet_post_timeline_subscriptions(server, admin):
    dave = register_and_login(server, "dave")
    r = dave.get("/api/subscriptions")
    assert r.status == 200 and r.json == {"items": []}
    r = dave.post("/api/subscriptions", {"hashtag": "news"})
    assert r.status == 200 and r.json == {"items": ["#news"]}
    r = dave.post("/api/subscriptions", {"hashtag": "#news"})
    assert r.status == 413 and error_of(r) == 552  # already subscribed
    r = admin.post("/api/tweets", {"message": "hello web", "hashtags": ["news", "#x"]})
    assert r.status == 201
    tweet = r.json
    assert (tweet["user"], tweet["message"], tweet["hashtags"]) == (
        "admin",
        "hello web",
        "#news#x",
    )
    r = dave.get("/api/timeline")
    assert r.status == 200 and tweet in r.json["items"]
    r = admin.post("/api/tweets", {"message": "not for dave", "hashtags": ["other"]})
    assert r.status == 201
    r = dave.get("/api/timeline")
    assert [t["message"] for t in r.json["items"]] == ["hello web"]
    r = dave.get("/api/users")
    assert {"user": "dave"} in r.json["items"]
    r = dave.get("/api/users/admin/tweets")
    assert [t["message"] for t in r.json["items"]][-2:] == ["hello web", "not for dave"]
    r = dave.get("/api/users/nobodyhere/tweets")
    assert r.status == 404 and error_of(r) == 550
    r = dave.get("/api/users/bad%20name/tweets")
    assert r.status == 400 and error_of(r) == 553
    r = dave.delete("/api/subscriptions/news")
    assert r.status == 200 and r.json == {"items": []}
    r = dave.delete("/api/subscriptions/%23ALL")
    assert r.status == 200


def test_ttweet_rules_are_the_hubs(server):
    erin = register_and_login(server, "erin")
    r = erin.post("/api/tweets", {"message": "x" * 151})
    assert r.status == 413 and error_of(r) == 552
    r = erin.post("/api/tweets", {"message": ""})
    assert r.status == 400 and error_of(r) == 501
    r = erin.post("/api/tweets", {"message": "ok", "hashtags": ["ALL"]})
    assert r.status == 400 and error_of(r) == 553
    r = erin.post("/api/tweets", {"message": "é" * 150})
    assert r.status == 201
    for tag in ("a", "b", "c"):
        assert erin.post("/api/subscriptions", {"hashtag": tag}).status == 200
    r = erin.post("/api/subscriptions", {"hashtag": "d"})
    assert r.status == 413 and error_of(r) == 552
    r = erin.post("/api/subscriptions", {"hashtag": "bad tag"})
    assert r.status == 400 and error_of(r) == 553


def test_ttweet_name_online_on_the_line_port(server, port):
    """A name is online once: an account logged in on the ttweet port
    cannot come online over HTTP meanwhile (and can once that session
    ends); tweeting and reading over HTTP do not keep it online."""
    web = login(port, "lineuser", "lineuserpw")[0]
    assert web.post("/api/tweets", {"message": "from the web"}).status == 201
    assert web.get("/api/timeline").status == 200
    assert {"user": "lineuser"} not in web.get("/api/users").json["items"]
    c = LineConn(server.ports["ttweet"])
    try:
        c.readline()
        assert c.cmd("LOGIN lineuser lineuserpw")[0].startswith("230")
        assert web.post("/api/tweets", {"message": "meanwhile"}).status == 409
        r = web.post("/api/subscriptions", {"hashtag": "x"})
        assert r.status == 409 and error_of(r) == 555
        assert c.cmd("QUIT")[0].startswith("221")
        assert c.closed()  # the server closed it: its hub session is over
    finally:
        c.close()
    r = web.post("/api/subscriptions", {"hashtag": "x"})
    assert r.status == 200


# -- personnel


def test_personnel_crud(port, admin, bob):
    person = {"ssn": "123-45-6789", "name": "Ann", "surname": "Lee", "job": "ops"}
    r = admin.post(PEOPLE, dict(person, salary="52000.00"))
    assert r.status == 201
    assert r.json["salary"] == "52000.00" and r.json["ssn"] == "123-45-6789"
    r = admin.post(PEOPLE, person)
    assert r.status == 409 and error_of(r) == 555
    r = admin.get(PEOPLE + "/123-45-6789")
    assert r.status == 200 and r.json["name"] == "Ann"
    r = bob.get(PEOPLE + "/123-45-6789")
    assert r.status == 200
    assert r.json["ssn"] == "*******6789" and r.json["salary"] is None
    r = bob.get(PEOPLE + "?q=lee")
    assert r.status == 200 and [p["surname"] for p in r.json["items"]] == ["Lee"]
    r = bob.get(PEOPLE + "?q=6789")  # a non-admin's search never matches the ssn
    assert r.json["items"] == []
    r = admin.get(PEOPLE + "?q=6789&limit=5&offset=0")
    assert [p["ssn"] for p in r.json["items"]] == ["123-45-6789"]
    r = admin.put(PEOPLE + "/123-45-6789", {"job": "lead", "salary": 60000})
    assert r.status == 200 and (r.json["job"], r.json["salary"]) == ("lead", "60000")
    r = admin.put(PEOPLE + "/123-45-6789", {"ssn": "other"})
    assert r.status == 400 and error_of(r) == 501
    r = admin.put(PEOPLE + "/nobody-1", {"job": "x"})
    assert r.status == 404 and error_of(r) == 550
    r = admin.post(PEOPLE, {"ssn": "bad ssn", "name": "A", "surname": "B"})
    assert r.status == 400
    r = admin.delete(PEOPLE + "/123-45-6789")
    assert r.status == 204
    r = admin.get(PEOPLE + "/123-45-6789")
    assert r.status == 404 and error_of(r) == 550


def test_sync_clients_send_and_remove(server, port, admin):
    assert admin.post(PEOPLE, {"ssn": "S-1", "name": "Sy", "surname": "Nc"}).status == 201
    sync = LineConn(server.ports["personnel"])
    try:
        sync.readline()
        assert sync.cmd("LOGIN carol carolpw")[0].startswith("230")
        assert sync.cmd("SYNC")[0] == "200 syncing"
        r = admin.get("/api/sync-clients")
        assert r.status == 200
        carol = {c["client"]: c for c in r.json["items"]}["carol"]
        assert carol["online"] is True and carol["pending"] == 0
        r = admin.post("/api/sync-clients/send", {"client": "carol", "id": "S-1"})
        assert r.status == 200 and r.json == {"queued": 1}
        push = sync.readline()
        assert push.startswith("610 ") and '"ssn":"S-1"' in push
        seq = int(push.split()[1])
        carol = {c["client"]: c for c in admin.get("/api/sync-clients").json["items"]}["carol"]
        assert carol["pending"] == 1
        assert sync.cmd("ACK %d" % seq) == ["200 ok"]
        carol = {c["client"]: c for c in admin.get("/api/sync-clients").json["items"]}["carol"]
        assert (carol["pending"], carol["acked"]) == (0, seq)
        r = admin.post("/api/sync-clients/remove", {"client": "carol", "id": "S-1"})
        assert r.status == 200 and r.json == {"queued": 1}
        assert sync.readline().startswith("611 ")
        r = admin.post("/api/sync-clients/send", {"client": "nosuchclient", "id": "*"})
        assert r.status == 404 and error_of(r) == 550
        r = admin.post("/api/sync-clients/send", {"client": "carol"})
        assert r.status == 400 and error_of(r) == 501
    finally:
        sync.close()


# -- bodies


def test_body_over_the_limit_is_refused_before_it_is_read(port, admin):
    """413 as soon as the headers say too much: the server does not wait
    for the megabytes, and closes the connection."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=20)
    try:
        sock.sendall(
            b"POST /api/people HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n"
            b"Content-Type: application/json\r\nContent-Length: 100000000\r\n\r\n"
            % admin.token.encode()
        )
        sock.sendall(b"{" * 1000)
        data = b""
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    finally:
        sock.close()
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413 ")
    assert json.loads(body)["code"] == 552


def test_chunked_body_over_the_limit(port, admin):
    def chunks():
        for _ in range(100):
            yield b"x" * 1024

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
    try:
        conn.putrequest("POST", PEOPLE)
        conn.putheader("Authorization", "Bearer " + admin.token)
        conn.putheader("Transfer-Encoding", "chunked")
        conn.endheaders()
        try:
            for c in chunks():
                conn.send(b"%x\r\n%s\r\n" % (len(c), c))
            conn.send(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass
        r = conn.getresponse()
        assert r.status == 413
        assert json.loads(r.read())["code"] == 552
    finally:
        conn.close()


def test_json_body_within_the_limit(admin):
    r = admin.post(PEOPLE, {"ssn": "J-1", "name": "N" * 255, "surname": "S", "job": "j" * 255})
    assert r.status == 201


# -- curl


@pytest.mark.skipif(shutil.which("curl") is None, reason="no curl binary")
def test_with_curl(port):
    base = "http://127.0.0.1:%d" % port
    out = subprocess.run(
        [
            "curl",
            "-sS",
            "--max-time",
            "20",
            "-X",
            "POST",
            "-H",
            "Content-Type: application/json",
            "-d",
            '{"user": "admin", "password": "adminpw"}',
            base + "/api/session",
        ],
        capture_output=True,
        timeout=30,
        check=True,
    )
    token = json.loads(out.stdout)["token"]
    out = subprocess.run(
        [
            "curl",
            "-sS",
            "--max-time",
            "20",
            "-w",
            "\\n%{http_code}",
            "-H",
            "Authorization: Bearer " + token,
            base + "/api/session",
        ],
        capture_output=True,
        timeout=30,
        check=True,
    )
    body, _, code = out.stdout.decode().rpartition("\n")
    assert code == "200"
    assert json.loads(body) == {"user": "admin", "role": "admin"}


def register_and_login(server, name):
    register(server, name, name + "pw")
    return login(server.ports["web"], name, name + "pw")[0]


# -- streamed request bodies (in process: the hook netshare/web/files.py uses)


class Collect:
    """A consumer that pauses its producer now and then, as a disk writer
    with a full queue would."""

    def __init__(self, reactor):
        self.reactor = reactor
        self.data = bytearray()
        self.producer = None
        self.pauses = 0

    def registerProducer(self, producer, streaming):
        assert streaming
        self.producer = producer

    def unregisterProducer(self):
        self.producer = None

    def write(self, data):
        before = len(self.data) // (256 * 1024)
        self.data += data
        if len(self.data) // (256 * 1024) != before and self.producer is not None:
            self.pauses += 1
            self.producer.pauseProducing()
            self.reactor.callLater(0.01, self._resume)

    def _resume(self):
        if self.producer is not None:
            self.producer.resumeProducing()


@pytest.fixture
def streaming_site(runtime):
    """A site over an in-process runtime with one streaming test route."""
    from twisted.internet import reactor

    from netshare.errors import PermissionDenied
    from netshare.web.app import Response
    from netshare.web.site import build_site

    site = build_site(runtime)
    seen = {}

    async def upload(call):
        seen["length"] = call.body.length
        if call.header("X-Refuse"):
            raise PermissionDenied("refused before the body")
        sink = Collect(reactor)
        call.body.deliverTo(sink)
        n = await call.body.received
        seen["pauses"] = sink.pauses
        return Response(201, {"bytes": n, "sha256": hashlib.sha256(sink.data).hexdigest()})

    site.router.add("PUT", "/test/upload/{name}", upload, service="files", stream=True)
    port = reactor.listenTCP(0, site, interface="127.0.0.1")
    runtime.harness.listeners.append(SimpleNamespace(port=port))
    return SimpleNamespace(site=site, port=port.getHost().port, seen=seen, runtime=runtime)


def _token(runtime, name):
    from netshare.services.accounts import Caller

    account = yield add_account(runtime, name, name + "pw")
    made = yield runtime.sessions.new(Caller(account, "127.0.0.1"), label="t")
    return made["token"]


def _raw_exchange(port, head, body_part):
    """Send a request head and part of a body; read until the server closes."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=20)
    try:
        sock.sendall(head + body_part)
        data = b""
        while True:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            data += chunk
        return data
    finally:
        sock.close()


@pytest_twisted.inlineCallbacks
def test_streamed_body_arrives_whole_with_backpressure(streaming_site):
    token = yield from _token(streaming_site.runtime, "streamer")
    payload = os.urandom(2 * 1024 * 1024 + 7)

    def put(chunked):
        conn = http.client.HTTPConnection("127.0.0.1", streaming_site.port, timeout=20)
        try:
            headers = {"Authorization": "Bearer " + token}
            if chunked:
                conn.request(
                    "PUT",
                    "/test/upload/x",
                    body=iter([payload[:1000], payload[1000:]]),
                    headers=headers,
                    encode_chunked=True,
                )
            else:
                conn.request("PUT", "/test/upload/x", body=payload, headers=headers)
            r = conn.getresponse()
            return r.status, json.loads(r.read())
        finally:
            conn.close()

    status, body = yield threads.deferToThread(put, False)
    assert status == 201
    assert body == {"bytes": len(payload), "sha256": hashlib.sha256(payload).hexdigest()}
    assert streaming_site.seen["length"] == len(payload)
    assert streaming_site.seen["pauses"] >= 4
    status, body = yield threads.deferToThread(put, True)
    assert status == 201 and body["bytes"] == len(payload)
    assert streaming_site.seen["length"] is None


@pytest_twisted.inlineCallbacks
def test_streamed_body_refused_before_it_is_read(streaming_site):
    token = yield from _token(streaming_site.runtime, "refused")
    head = (
        b"PUT /test/upload/x HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000000\r\n"
        b"Authorization: Bearer %s\r\n" % token.encode()
    )
    data = yield threads.deferToThread(
        _raw_exchange, streaming_site.port, head + b"X-Refuse: yes\r\n\r\n", b"a" * 1000
    )
    status_line, _, rest = data.partition(b"\r\n")
    assert status_line.startswith(b"HTTP/1.1 403 ")
    assert json.loads(rest.partition(b"\r\n\r\n")[2])["code"] == 531
    # Without a session: 401 before the body, too.
    data = yield threads.deferToThread(
        _raw_exchange,
        streaming_site.port,
        b"PUT /test/upload/x HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000000\r\n\r\n",
        b"a" * 1000,
    )
    assert data.startswith(b"HTTP/1.1 401 ")
    # Both recorded, the refused one as the account's.
    entries = yield streaming_site.runtime.history.query(
        SimpleNamespace(id=None, name="admin", is_admin=True), "*", 10
    )
    recorded = [(e.user, e.service, e.command, e.code) for e in entries]
    assert ("refused", "files", "PUT /test/upload/x", 403) in recorded
    assert (None, "files", "PUT /test/upload/x", 401) in recorded

"""
The files endpoints of the HTTP API (netshare/web/files.py, docs/http.md)
over real sockets: a real C{twistd netshare} with its web listener, driven
with the stdlib HTTP client, raw sockets where the exact bytes matter, and
the C{curl} binary (a resumed download with C{-C -}, an upload with C{-T}).

Streaming uploads (small, 50 MiB from a generator, 200 MiB while the
server's RSS is watched), refusals before the body (411, 413 for size and
quota), the checksum header, list/meta/quota with the visibility rules of
LIST, downloads whole, ranged (206, 416, If-Range) and HEAD, protected
files (password header, 403, the lockout's 429), delete by owner, other
and admin, the request history, a cookie session's CSRF header on a
streamed PUT, the same files seen from the files port, and a stalled
download being cut.
"""

import hashlib
import http.client
import os
import shutil
import socket
import subprocess
import threading
import time
import urllib.parse

import pytest

from tests.support import LineConn, ServerProcess
from tests.web_support import TIMEOUT, Http, Reply, login, web_server

MiB = 1024 * 1024
CURL = shutil.which("curl")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    yield from web_server(
        tmp_path_factory.mktemp("webfiles") / "data",
        ["bob", "carol", "dave"],
        ["--max-file-size", "512MiB", "--user-quota", "400MiB"],
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


@pytest.fixture(scope="module")
def carol(port):
    return login(port, "carol", "carolpw")[0]


@pytest.fixture(scope="module")
def dave(port):
    return login(port, "dave", "davepw")[0]


def url(name, query=""):
    return "/api/files/" + urllib.parse.quote(name, safe="") + query


def error_code(reply):
    return reply.json["code"]


class Content:
    """Deterministic content of C{size} bytes, produced in 1 MiB pieces
    (never whole in memory), with its SHA-256."""

    _block = os.urandom(MiB)

    def __init__(self, size, seed=0):
        self.size = size
        self.seed = seed
        h = hashlib.sha256()
        for piece in self.pieces():
            h.update(piece)
        self.sha256 = h.hexdigest()

    def pieces(self):
        left, i = self.size, 0
        while left:
            n = min(MiB, left)
            head = (self.seed * 1_000_003 + i).to_bytes(8, "big")
            yield (head + self._block[8:])[:n]
            left -= n
            i += 1

    def bytes(self, first=0, last=None):
        """Bytes C{first}..C{last} (inclusive), for small ranges."""
        last = self.size - 1 if last is None else last
        out, pos = [], 0
        for piece in self.pieces():
            end = pos + len(piece)
            if end > first and pos <= last:
                out.append(piece[max(0, first - pos) : last + 1 - pos])
            pos = end
            if pos > last:
                break
        return b"".join(out)

    def write_to(self, path):
        with open(path, "wb") as f:
            for piece in self.pieces():
                f.write(piece)


def put(client, name, content, query="", headers=None, chunked=False):
    """PUT C{content} (a L{Content}, or bytes) streamed from its pieces."""
    conn = http.client.HTTPConnection("127.0.0.1", client.port, timeout=TIMEOUT)
    try:
        h = {"Authorization": "Bearer " + client.token}
        if isinstance(content, bytes):
            body, size = iter([content]), len(content)
        else:
            body, size = content.pieces(), content.size
        if not chunked:
            h["Content-Length"] = str(size)
        h.update(headers or {})
        conn.request("PUT", url(name, query), body=body, headers=h, encode_chunked=chunked)
        r = conn.getresponse()
        return Reply(r.status, r.getheaders(), r.read())
    finally:
        conn.close()


def get_stream(client, path, headers=None, method="GET"):
    """A download read in pieces: (status, headers, sha256 of the body, length)."""
    conn = http.client.HTTPConnection("127.0.0.1", client.port, timeout=TIMEOUT)
    try:
        h = {"Authorization": "Bearer " + client.token}
        h.update(headers or {})
        conn.request(method, path, headers=h)
        r = conn.getresponse()
        digest, n = hashlib.sha256(), 0
        while True:
            piece = r.read(MiB)
            if not piece:
                break
            digest.update(piece)
            n += len(piece)
        return r.status, {k.lower(): v for k, v in r.getheaders()}, digest.hexdigest(), n
    finally:
        conn.close()


def raw_request(port, head, body=b"", check_close=True):
    """Send C{head} (and C{body}) on a fresh socket and read one response:
    (status, head text, body bytes, whether the server then closed the
    connection (within 5 s))."""
    s = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
    try:
        try:
            s.sendall(head.encode("latin-1") + body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # refused while we were still sending: the answer is there
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = s.recv(65536)
            assert chunk, "closed without an answer: %r" % (data,)
            data += chunk
        top, _, rest = data.partition(b"\r\n\r\n")
        lines = top.decode("latin-1").split("\r\n")
        length = 0
        for line in lines[1:]:
            key, _, value = line.partition(":")
            if key.strip().lower() == "content-length":
                length = int(value)
        while len(rest) < length:
            chunk = s.recv(65536)
            assert chunk, "closed in the body"
            rest += chunk
        if not check_close:
            return int(lines[0].split()[1]), top.decode("latin-1"), rest, None
        s.settimeout(5)
        try:
            closed = s.recv(1) == b""
        except ConnectionResetError:
            closed = True
        except (TimeoutError, socket.timeout):
            closed = False
        return int(lines[0].split()[1]), top.decode("latin-1"), rest, closed
    finally:
        s.close()


def sha(data):
    return hashlib.sha256(data).hexdigest()


def names(reply):
    assert reply.status == 200, reply
    return {f["name"] for f in reply.json["items"]}


# -- uploads


def test_small_upload_meta_list_quota(bob, carol):
    data = b"hello over http\n"
    r = put(bob, "hello.txt", data)
    assert r.status == 201, r
    f = r.json
    assert f["name"] == "hello.txt" and f["size"] == len(data) and f["sha256"] == sha(data)
    assert f["owner"] == "bob" and f["visibility"] == "public" and f["protected"] is False
    assert r.header("ETag") == '"%s"' % sha(data)
    assert r.header("Location") == "/api/files/hello.txt"

    meta = carol.get(url("hello.txt", "/meta"))
    assert meta.status == 200 and meta.json == f
    assert "hello.txt" in names(carol.get("/api/files"))

    q = bob.get("/api/quota")
    assert q.status == 200
    assert q.json["files"] >= 1 and q.json["bytes"] >= len(data)
    assert q.json["quota"] == 400 * MiB and q.json["max_file_size"] == 512 * MiB

    # Exists: 409 (code 555) unless replace=yes.
    again = put(bob, "hello.txt", b"v2")
    assert again.status == 409 and error_code(again) == 555
    replaced = put(bob, "hello.txt", b"v2", "?replace=yes")
    assert replaced.status == 201 and replaced.json["sha256"] == sha(b"v2")
    # Someone else's name: 409 too, replace or not.
    theirs = put(carol, "hello.txt", b"x", "?replace=yes")
    assert theirs.status == 409 and error_code(theirs) == 555


def test_unicode_name_and_content_disposition(bob, carol):
    name = "r\u00e9sum\u00e9 d'\u00e9t\u00e9 #1.txt"
    r = put(bob, name, b"unicode name")
    assert r.status == 201, r
    assert r.json["name"] == name
    status, headers, digest, n = get_stream(carol, url(name))
    assert status == 200 and digest == sha(b"unicode name")
    assert headers["content-disposition"] == "attachment; filename*=UTF-8''" + urllib.parse.quote(
        name, safe=""
    )
    bad = put(bob, "a\tb", b"x")  # a control character: the name rules (553 -> 400)
    assert bad.status == 400 and error_code(bad) == 553


def test_50_mib_upload_streamed_then_downloads(bob, carol):
    content = Content(50 * MiB, seed=1)
    r = put(bob, "big50.bin", content, headers={"X-Content-SHA256": content.sha256})
    assert r.status == 201, r
    assert r.json["size"] == content.size and r.json["sha256"] == content.sha256

    status, headers, digest, n = get_stream(carol, url("big50.bin"))
    assert status == 200 and n == content.size and digest == content.sha256
    assert headers["content-length"] == str(content.size)
    assert headers["etag"] == '"%s"' % content.sha256
    assert headers["accept-ranges"] == "bytes"
    assert headers["content-type"] == "application/octet-stream"
    assert headers["content-disposition"] == "attachment; filename*=UTF-8''big50.bin"


def test_ranges(bob, carol):
    content = Content(3 * MiB + 12345, seed=2)
    assert put(bob, "ranged.bin", content).status == 201
    size, etag = content.size, '"%s"' % content.sha256

    def ranged(value, **extra):
        h = {"Range": value}
        h.update(extra)
        return carol.get(url("ranged.bin"), headers=h)

    r = ranged("bytes=0-999")
    assert r.status == 206 and r.data == content.bytes(0, 999)
    assert r.header("Content-Range") == "bytes 0-999/%d" % size
    assert r.header("Content-Length") == "1000" and r.header("ETag") == etag

    r = ranged("bytes=%d-" % (size - 5000))
    assert r.status == 206 and r.data == content.bytes(size - 5000)
    assert r.header("Content-Range") == "bytes %d-%d/%d" % (size - 5000, size - 1, size)

    r = ranged("bytes=-100")  # the last 100 bytes
    assert r.status == 206 and r.data == content.bytes(size - 100)

    r = ranged("bytes=1048570-2097160")  # across read pieces, past the end clamped below
    assert r.status == 206 and r.data == content.bytes(1048570, 2097160)
    r = ranged("bytes=%d-%d" % (size - 10, size + 1000))
    assert r.status == 206 and r.data == content.bytes(size - 10)

    for unsatisfiable in ("bytes=%d-" % size, "bytes=%d-%d" % (size + 10, size + 20), "bytes=-0"):
        r = ranged(unsatisfiable)
        assert r.status == 416, (unsatisfiable, r)
        assert r.header("Content-Range") == "bytes */%d" % size
        assert error_code(r) == 501

    # Several ranges, or nonsense: ignored, the whole content.
    for ignored in ("bytes=0-1,5-6", "items=0-5", "bytes=9-3", "bytes=abc"):
        status, headers, digest, n = get_stream(carol, url("ranged.bin"), {"Range": ignored})
        assert status == 200 and digest == content.sha256, ignored

    # If-Range: the current ETag -> the range; another (or a date) -> all of it.
    r = ranged("bytes=10-19", **{"If-Range": etag})
    assert r.status == 206 and r.data == content.bytes(10, 19)
    for other in ('"%s"' % ("0" * 64), "W/" + etag, "Wed, 21 Oct 2015 07:28:00 GMT"):
        status, headers, digest, n = get_stream(
            carol, url("ranged.bin"), {"Range": "bytes=10-19", "If-Range": other}
        )
        assert status == 200 and n == size and digest == content.sha256, other
    # ...even when the range would have been unsatisfiable
    status, _, digest, n = get_stream(
        carol, url("ranged.bin"), {"Range": "bytes=%d-" % (size + 1), "If-Range": '"x"'}
    )
    assert status == 200 and digest == content.sha256


def test_head(bob, carol):
    data = b"head me" * 1000
    assert put(bob, "head.bin", data).status == 201
    conn = http.client.HTTPConnection("127.0.0.1", carol.port, timeout=TIMEOUT)
    try:
        conn.request(
            "HEAD",
            url("head.bin"),
            headers={"Authorization": "Bearer " + carol.token, "Range": "bytes=0-1"},
        )
        r = conn.getresponse()
        assert r.read() == b""
        assert r.status == 200  # Range is for GET only
        assert r.getheader("Content-Length") == str(len(data))
        assert r.getheader("ETag") == '"%s"' % sha(data)
        assert r.getheader("Accept-Ranges") == "bytes"
        # The connection stays usable after a HEAD.
        conn.request("GET", url("head.bin"), headers={"Authorization": "Bearer " + carol.token})
        r2 = conn.getresponse()
        assert r2.status == 200 and r2.read() == data
        conn.request("HEAD", url("nope.bin"), headers={"Authorization": "Bearer " + carol.token})
        r3 = conn.getresponse()
        assert r3.status == 404 and r3.read() == b""
    finally:
        conn.close()


def test_empty_file(bob, carol):
    r = put(bob, "empty.bin", b"")
    assert r.status == 201 and r.json["size"] == 0, r
    status, headers, digest, n = get_stream(carol, url("empty.bin"))
    assert status == 200 and n == 0 and headers["content-length"] == "0"
    assert carol.get(url("empty.bin"), headers={"Range": "bytes=0-"}).status == 416


def test_refused_before_the_body(port, bob):
    auth = "Authorization: Bearer %s\r\n" % bob.token
    before = bob.get("/api/quota").json

    # No Content-Length (chunked): 411.
    status, head, body, closed = raw_request(
        port,
        "PUT %s HTTP/1.1\r\nHost: x\r\n%sTransfer-Encoding: chunked\r\n\r\n"
        % (url("chunked.bin"), auth),
        b"5\r\nhello\r\n0\r\n\r\n",
        check_close=False,
    )
    assert status == 411, head
    assert b'"code":501' in body and b"Content-Length" in body

    # Over --max-file-size (512 MiB): 413 (552) before a byte is read.
    status, head, body, closed = raw_request(
        port,
        "PUT %s HTTP/1.1\r\nHost: x\r\n%sContent-Length: %d\r\n\r\n"
        % (url("huge.bin"), auth, 600 * MiB),
    )
    assert status == 413 and closed, head
    assert b'"code":552' in body and b"too large" in body

    # Within the size limit but over the 400 MiB quota: 413 (552) too.
    status, head, body, closed = raw_request(
        port,
        "PUT %s HTTP/1.1\r\nHost: x\r\n%sContent-Length: %d\r\n\r\n"
        % (url("overquota.bin"), auth, 450 * MiB),
        b"x" * 1000,
    )
    assert status == 413 and closed, head
    assert b"quota" in body

    # Nothing was stored.
    assert bob.get("/api/quota").json == before
    assert bob.get(url("huge.bin", "/meta")).status == 404

    # Without a session: 401 before the body.
    status, head, body, closed = raw_request(
        port, "PUT %s HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n" % (url("anon.bin"),)
    )
    assert status == 401 and closed, head

    # Bad arguments: 400 (501).
    r = put(bob, "v.bin", b"x", "?visibility=secret")
    assert r.status == 400 and error_code(r) == 501
    r = put(bob, "v.bin", b"x", "?replace=maybe")
    assert r.status == 400 and error_code(r) == 501


def test_checksum_header(bob):
    data = os.urandom(300_000)
    bad = put(bob, "checked.bin", data, headers={"X-Content-SHA256": sha(b"other")})
    assert bad.status == 400 and error_code(bad) == 554, bad
    assert bob.get(url("checked.bin", "/meta")).status == 404
    malformed = put(bob, "checked.bin", data, headers={"X-Content-SHA256": "xyz"})
    assert malformed.status == 400 and error_code(malformed) == 501
    good = put(bob, "checked.bin", data, headers={"X-Content-SHA256": sha(data).upper()})
    assert good.status == 201 and good.json["sha256"] == sha(data)


def test_hidden_listing_rules(bob, carol, admin):
    assert put(bob, "bob-hidden.txt", b"hidden", "?visibility=hidden").status == 201
    assert put(bob, "bob-public.txt", b"public").status == 201
    assert put(carol, "carol-hidden.txt", b"c", "?visibility=hidden").status == 201

    public = names(carol.get("/api/files"))
    assert "bob-public.txt" in public and "bob-hidden.txt" not in public
    assert "carol-hidden.txt" not in public

    assert names(carol.get("/api/files?which=hidden")) == {"carol-hidden.txt"}
    assert "bob-hidden.txt" in names(bob.get("/api/files?which=hidden"))
    assert "carol-hidden.txt" not in names(bob.get("/api/files?which=hidden"))
    mine = names(bob.get("/api/files?which=mine"))
    assert "bob-public.txt" in mine and "bob-hidden.txt" not in mine
    assert "carol-hidden.txt" not in mine
    assert names(carol.get("/api/files?which=MINE")) == set()  # case as LIST

    everyone = names(admin.get("/api/files?which=hidden"))
    assert {"bob-hidden.txt", "carol-hidden.txt"} <= everyone

    bad = carol.get("/api/files?which=all")
    assert bad.status == 400 and error_code(bad) == 501
    # Unlisted, not secret: by name it is there (as INFO and DOWNLOAD).
    assert carol.get(url("bob-hidden.txt", "/meta")).json["visibility"] == "hidden"
    assert carol.get(url("bob-hidden.txt")).data == b"hidden"
    # Replacing keeps the visibility unless given.
    assert put(bob, "bob-hidden.txt", b"hidden2", "?replace=yes").json["visibility"] == "hidden"


def test_protected_file(bob, carol):
    content = Content(300_000, seed=3)
    pw = {"X-File-Password": "s3cr\u00e9t".encode("utf-8").decode("latin-1")}
    r = put(bob, "prot.bin", content, headers=pw)
    assert r.status == 201, r
    assert r.json["protected"] is True and r.json["sha256"] == content.sha256

    # The owner sees the sha256; others need the password.
    assert bob.get(url("prot.bin", "/meta")).json["sha256"] == content.sha256
    assert carol.get(url("prot.bin", "/meta")).json["sha256"] is None
    wrong = carol.get(url("prot.bin", "/meta"), headers={"X-File-Password": "nope"})
    assert wrong.status == 403 and error_code(wrong) == 535
    assert carol.get(url("prot.bin", "/meta"), headers=pw).json["sha256"] == content.sha256

    # Content: the password is needed, whoever asks.
    for h in ({}, {"X-File-Password": "nope"}):
        r = carol.get(url("prot.bin"), headers=h)
        assert r.status == 403 and error_code(r) == 535, r
        assert r.header("WWW-Authenticate") is None  # the session is fine
    status, headers, digest, n = get_stream(carol, url("prot.bin"), pw)
    assert status == 200 and digest == content.sha256 and n == content.size
    # Ranges inside the encrypted chunks (64 KiB) and across them.
    for first, last in ((0, 9), (65530, 65545), (70000, 200000), (content.size - 3, None)):
        spec = "bytes=%d-%s" % (first, "" if last is None else last)
        r = carol.get(url("prot.bin"), headers=dict(pw, Range=spec))
        assert r.status == 206 and r.data == content.bytes(first, last), spec
    r = carol.get(url("prot.bin"), headers=dict(pw, Range="bytes=-1000"))
    assert r.status == 206 and r.data == content.bytes(content.size - 1000)
    # HEAD needs it too.
    conn = http.client.HTTPConnection("127.0.0.1", carol.port, timeout=TIMEOUT)
    try:
        conn.request("HEAD", url("prot.bin"), headers={"Authorization": "Bearer " + carol.token})
        h = conn.getresponse()
        h.read()
        assert h.status == 403
    finally:
        conn.close()


def test_protected_lockout(bob, carol):
    pw = {"X-File-Password": "right-one"}
    assert put(bob, "locked.bin", b"guarded", headers=pw).status == 201
    for _ in range(5):
        r = bob.get(url("locked.bin"), headers={"X-File-Password": "wrong"})
        assert r.status == 403 and error_code(r) == 535, r
    locked = bob.get(url("locked.bin"), headers=pw)
    assert locked.status == 429 and error_code(locked) == 429, locked
    assert int(locked.header("Retry-After")) > 0
    # The lockout is per user and file: others are unaffected.
    other = carol.get(url("locked.bin"), headers=pw)
    assert other.status == 200 and other.data == b"guarded"


def test_delete(bob, carol, dave, admin):
    assert put(bob, "del-me.txt", b"bye").status == 201
    r = carol.delete(url("del-me.txt"))
    assert r.status == 403 and error_code(r) == 531
    assert carol.delete(url("never-was.txt")).status == 404
    r = bob.delete(url("del-me.txt"))
    assert r.status == 204 and r.data == b""
    assert bob.get(url("del-me.txt", "/meta")).status == 404
    assert bob.delete(url("del-me.txt")).status == 404
    # An admin deletes anyone's.
    assert put(dave, "dave.txt", b"d").status == 201
    assert admin.delete(url("dave.txt")).status == 204
    assert dave.get(url("dave.txt")).status == 404


def test_history_records_file_requests(bob):
    assert put(bob, "hist.txt", b"h", headers={"X-File-Password": "hist-secret"}).status == 201
    assert bob.get(url("hist.txt"), headers={"X-File-Password": "hist-secret"}).status == 200
    assert bob.delete(url("hist.txt")).status == 204
    items = bob.get("/api/history?limit=50").json["items"]
    seen = {(e["service"], e["command"], e["code"]) for e in items}
    assert ("files", "PUT /api/files/hist.txt", 201) in seen
    assert ("files", "GET /api/files/hist.txt", 200) in seen
    assert ("files", "DELETE /api/files/hist.txt", 204) in seen
    assert not any("hist-secret" in e["command"] for e in items)


def test_cookie_session_needs_csrf_before_the_body(port):
    made = Http(port).post("/api/session", {"user": "carol", "password": "carolpw"}).json
    no_csrf = Http(port, cookie=made["token"])
    status, head, body, closed = raw_request(
        port,
        "PUT %s HTTP/1.1\r\nHost: x\r\nCookie: netshare_session=%s\r\n"
        "Content-Length: 5000000\r\n\r\n" % (url("csrf.bin"), made["token"]),
    )
    assert status == 403 and closed and b'"code":531' in body, head
    with_csrf = Http(port, cookie=made["token"], csrf=made["csrf"])
    r = with_csrf.request("PUT", url("csrf.bin"), raw=b"cookie upload")
    assert r.status == 201, r
    assert no_csrf.get(url("csrf.bin")).data == b"cookie upload"  # reading needs none
    assert with_csrf.delete(url("csrf.bin")).status == 204


def test_same_files_as_the_line_port(server, bob):
    """One service behind both: a file stored over HTTP is the files
    port's, and the other way round."""
    data = b"over http, read on the line\n"
    assert put(bob, "both.txt", data).status == 201
    c = LineConn(server.ports["files"])
    try:
        c.readline()
        assert c.cmd("LOGIN bob bobpw")[0].startswith("230")
        line = c.cmd("DOWNLOAD both.txt")[0]
        assert line == "150 %d bytes sha256=%s" % (len(data), sha(data)), line
        while len(c.buf) < len(data):
            c.buf += c.sock.recv(65536)
        body, c.buf = c.buf[: len(data)], c.buf[len(data) :]
        assert body == data
        assert c.readline().startswith("226")
        line_data = b"stored on the line port"
        assert c.cmd("UPLOAD from-line.txt %d" % len(line_data))[0].startswith("350")
        c.send(line_data)
        assert c.reply()[0].startswith("226")
    finally:
        c.close()
    r = bob.get(url("from-line.txt"))
    assert r.status == 200 and r.data == line_data
    assert r.header("ETag") == '"%s"' % sha(line_data)


def test_not_logged_in(port):
    anon = Http(port)
    for path in ("/api/files", "/api/quota", url("x", "/meta"), url("x")):
        r = anon.get(path)
        assert r.status == 401 and error_code(r) == 530, path


# -- curl


needs_curl = pytest.mark.skipif(CURL is None, reason="the curl binary is not installed")


def curl(port, token, *args, timeout=60):
    return subprocess.run(
        [CURL, "-sS", "-H", "Authorization: Bearer " + token, *args],
        capture_output=True,
        timeout=timeout,
    )


def file_sha(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for piece in iter(lambda: f.read(MiB), b""):
            h.update(piece)
    return h.hexdigest()


@needs_curl
def test_curl_upload_and_resumed_download(port, bob, tmp_path):
    content = Content(20 * MiB + 777, seed=4)
    src = tmp_path / "src.bin"
    content.write_to(src)
    base = "http://127.0.0.1:%d" % port
    # curl -T: a PUT with Content-Length (and Expect: 100-continue).
    up = curl(port, bob.token, "-T", str(src), base + url("curl.bin", "?visibility=hidden"))
    assert up.returncode == 0, up.stderr
    assert b'"sha256":"%s"' % content.sha256.encode() in up.stdout
    assert b'"visibility":"hidden"' in up.stdout

    # The first MB, then the rest with -C -.
    part = tmp_path / "part.bin"
    first = curl(port, bob.token, "-r", "0-999999", "-o", str(part), base + url("curl.bin"))
    assert first.returncode == 0, first.stderr
    assert part.stat().st_size == 1_000_000
    rest = curl(port, bob.token, "-C", "-", "-o", str(part), base + url("curl.bin"))
    assert rest.returncode == 0, rest.stderr
    assert part.stat().st_size == content.size and file_sha(part) == content.sha256

    # A download cut off for real (curl killed mid-way), then resumed.
    cut = tmp_path / "cut.bin"
    slow = subprocess.Popen(
        [
            CURL,
            "-sS",
            "--limit-rate",
            "4M",
            "-H",
            "Authorization: Bearer " + bob.token,
            "-o",
            str(cut),
            base + url("curl.bin"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while not (cut.exists() and cut.stat().st_size >= 2 * MiB):
            assert slow.poll() is None, "curl ended before it was cut"
            assert time.monotonic() < deadline, "curl made no progress"
            time.sleep(0.05)
    finally:
        slow.kill()
        slow.wait(10)
    assert 0 < cut.stat().st_size < content.size
    resumed = curl(port, bob.token, "-C", "-", "-o", str(cut), base + url("curl.bin"))
    assert resumed.returncode == 0, resumed.stderr
    assert file_sha(cut) == content.sha256

    head = curl(port, bob.token, "-I", base + url("curl.bin"))
    assert head.returncode == 0
    assert b'etag: "%s"' % content.sha256.encode() in head.stdout.lower()
    assert b"accept-ranges: bytes" in head.stdout.lower()


# -- memory


def vm_rss_kib(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_upload_keeps_rss_bounded(server, dave):
    pid = server.proc.pid
    content = Content(200 * MiB, seed=5)
    time.sleep(0.2)
    idle = vm_rss_kib(pid)
    peak = [idle]
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            try:
                peak[0] = max(peak[0], vm_rss_kib(pid))
            except (OSError, AssertionError):
                return
            stop.wait(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        r = put(dave, "rss.bin", content, headers={"X-Content-SHA256": content.sha256})
    finally:
        stop.set()
        sampler.join(5)
    peak[0] = max(peak[0], vm_rss_kib(pid))
    assert r.status == 201, r
    growth_mib = (peak[0] - idle) / 1024
    assert growth_mib < 100, "RSS grew by %.1f MiB during a 200 MiB PUT" % growth_mib
    assert dave.delete(url("rss.bin")).status == 204


# -- a second server: the Python read path, and a stalled reader


@pytest.fixture(scope="module")
def plain_server(tmp_path_factory):
    """No sendfile (every download through the reader), a 2 s idle timeout."""
    s = ServerProcess(
        tmp_path_factory.mktemp("webfiles2") / "data",
        web=True,
        extra_args=["--sendfile", "no", "--idle-timeout", "2"],
    )
    s.start()
    try:
        yield s
    finally:
        s.terminate()
        s.kill()


def test_reader_path_and_stalled_download(plain_server):
    port = plain_server.ports["web"]
    admin = login(port, "admin", "adminpw")[0]
    content = Content(40 * MiB, seed=6)
    assert put(admin, "plain.bin", content).status == 201
    status, headers, digest, n = get_stream(admin, url("plain.bin"))
    assert status == 200 and digest == content.sha256
    r = admin.get(url("plain.bin"), headers={"Range": "bytes=5000000-5000099"})
    assert r.status == 206 and r.data == content.bytes(5_000_000, 5_000_099)

    # A reader that stops reading: cut after the idle timeout (the socket
    # buffers hold far less than 40 MiB).
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    s.settimeout(TIMEOUT)
    try:
        s.connect(("127.0.0.1", port))
        s.sendall(
            (
                "GET %s HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n\r\n"
                % (url("plain.bin"), admin.token)
            ).encode("ascii")
        )
        assert s.recv(100).startswith(b"HTTP/1.1 200")
        # Not reading any more: the server gives up after 2 s without progress.
        deadline = time.monotonic() + TIMEOUT
        while "made no progress" not in plain_server.output():
            assert time.monotonic() < deadline, "the stalled download was not cut"
            time.sleep(0.1)
        got, closed = 0, False
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline:
            try:
                piece = s.recv(MiB)
            except ConnectionResetError:
                closed = True
                break
            if not piece:
                closed = True
                break
            got += len(piece)
        assert closed and got < content.size
    finally:
        s.close()
    # The server is fine afterwards.
    assert admin.get(url("plain.bin", "/meta")).status == 200

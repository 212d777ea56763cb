"""
Helpers for the web listener's tests: a small HTTP client over the
stdlib (the server is another process), and a raw-socket reader of a
Server-Sent Events stream (chunked transfer decoded by hand).

Every socket has a timeout; every wait ends.
"""

import http.client
import json
import socket
import time

from tests.support import LineConn, ServerProcess

TIMEOUT = 20


class Reply:
    def __init__(self, status, headers, data):
        self.status = status
        self.headers = headers
        self.data = data

    @property
    def json(self):
        return json.loads(self.data)

    def header(self, name):
        for k, v in self.headers:
            if k.lower() == name.lower():
                return v
        return None

    def headers_all(self, name):
        return [v for k, v in self.headers if k.lower() == name.lower()]

    def __repr__(self):
        return "<Reply %d %r>" % (self.status, self.data[:300])


class Http:
    """One client identity: a Bearer token, or a cookie (+ CSRF token)."""

    def __init__(self, port, token=None, cookie=None, csrf=None):
        self.port = port
        self.token = token
        self.cookie = cookie
        self.csrf = csrf

    def request(self, method, path, body=None, headers=None, raw=None):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=TIMEOUT)
        try:
            h = {}
            if self.token:
                h["Authorization"] = "Bearer " + self.token
            if self.cookie:
                h["Cookie"] = "netshare_session=" + self.cookie
            if self.csrf:
                h["X-CSRF-Token"] = self.csrf
            h.update(headers or {})
            data = raw
            if body is not None:
                data = json.dumps(body).encode("utf-8")
                h.setdefault("Content-Type", "application/json")
            conn.request(method, path, body=data, headers=h)
            r = conn.getresponse()
            return Reply(r.status, r.getheaders(), r.read())
        finally:
            conn.close()

    def get(self, path, **kw):
        return self.request("GET", path, **kw)

    def post(self, path, body=None, **kw):
        return self.request("POST", path, body=body, **kw)

    def put(self, path, body=None, **kw):
        return self.request("PUT", path, body=body, **kw)

    def delete(self, path, **kw):
        return self.request("DELETE", path, **kw)


def login(port, user, password):
    """A Bearer client for C{user}; also the login answer."""
    r = Http(port).post("/api/session", {"user": user, "password": password})
    assert r.status == 201, r
    return Http(port, token=r.json["token"]), r


def web_server(data, users, extra_args=()):
    """
    A generator for a module fixture: a real server with the web listener
    on, the accounts C{users} registered (each with the password
    C{<name>pw}), stopped afterwards however the module ended.
    """
    s = ServerProcess(data, web=True, extra_args=list(extra_args))
    s.start()
    try:
        for user in users:
            register(s, user, user + "pw")
        yield s
    finally:
        s.terminate()
        s.kill()


def register(server, user, password):
    """An account, made with REGISTER on the personnel port (tests open it)."""
    c = LineConn(server.ports["personnel"])
    try:
        c.readline()
        reply = c.cmd("REGISTER %s %s" % (user, password))
        assert reply[0].startswith("201"), reply
    finally:
        c.close()


class EventReader:
    """
    A raw socket reading C{GET /api/events}: the response head, then the
    chunked body, split into Server-Sent Events.
    """

    def __init__(self, port, token, last_event_id=None, rcvbuf=None):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(TIMEOUT)
        self.sock.connect(("127.0.0.1", port))
        head = "GET /api/events HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer %s\r\n" % (
            token,
        )
        if last_event_id is not None:
            head += "Last-Event-ID: %s\r\n" % (last_event_id,)
        self.sock.sendall((head + "\r\n").encode("ascii"))
        self.raw = b""
        self.body = b""
        self.status = None
        self.headers = {}

    def _recv(self):
        chunk = self.sock.recv(65536)
        if not chunk:
            raise EOFError("stream closed")
        self.raw += chunk

    def read_head(self):
        while b"\r\n\r\n" not in self.raw:
            self._recv()
        head, self.raw = self.raw.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        self.status = int(lines[0].split()[1])
        for line in lines[1:]:
            k, _, v = line.partition(":")
            self.headers[k.strip().lower()] = v.strip()
        return self.status

    def _decode_chunks(self):
        """Move whole chunks from raw to body."""
        while True:
            if b"\r\n" not in self.raw:
                return
            size_line, rest = self.raw.split(b"\r\n", 1)
            size = int(size_line.split(b";")[0], 16)
            if size == 0:
                raise EOFError("stream ended")
            if len(rest) < size + 2:
                return
            self.body += rest[:size]
            self.raw = rest[size + 2 :]

    def next_event(self, timeout=TIMEOUT):
        """The next event that carries data: a dict of its fields."""
        deadline = time.monotonic() + timeout
        while True:
            while b"\n\n" in self.body:
                block, self.body = self.body.split(b"\n\n", 1)
                fields = {}
                for line in block.decode("utf-8").split("\n"):
                    if not line or line.startswith(":"):
                        continue
                    k, _, v = line.partition(":")
                    fields[k] = v[1:] if v.startswith(" ") else v
                if "data" in fields:
                    return fields
            if time.monotonic() > deadline:
                raise TimeoutError("no event within %s s" % (timeout,))
            self.sock.settimeout(max(0.1, deadline - time.monotonic()))
            self._recv()
            self._decode_chunks()

    def close(self):
        self.sock.close()

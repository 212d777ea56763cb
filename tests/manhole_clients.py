"""
Minimal telnet and SSH clients for driving the manhole in tests.

The telnet client answers option negotiation the way a plain terminal would
(it lets the server echo, refuses everything else) and strips IAC sequences
from what it shows the test.  The SSH client opens a session channel with a
pty and a shell, like `ssh -tt`, using Twisted conch.
"""

import re
import socket
import time

IAC, DONT, DO, WONT, WILL, SB, SE = 255, 254, 253, 252, 251, 250, 240
ECHO = 1
ANSI = re.compile(rb"\x1b\[[0-9;?]*[A-Za-z]|\x1b[>=c]|\x1b\[\d*[A-Za-z]")


class TelnetClient:
    def __init__(self, port, host="127.0.0.1", timeout=10):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.text = b""
        self._raw = b""
        self._pos = 0  # expect() searches only text after its previous match

    def _feed(self, data):
        self._raw += data
        out = bytearray()
        i = 0
        raw = self._raw
        while i < len(raw):
            b = raw[i]
            if b != IAC:
                out.append(b)
                i += 1
                continue
            if i + 1 >= len(raw):
                break
            cmd = raw[i + 1]
            if cmd in (WILL, WONT, DO, DONT):
                if i + 2 >= len(raw):
                    break
                opt = raw[i + 2]
                if cmd == WILL:
                    self.sock.sendall(bytes([IAC, DO if opt == ECHO else DONT, opt]))
                elif cmd == DO:
                    self.sock.sendall(bytes([IAC, WONT, opt]))
                elif cmd == WONT:
                    self.sock.sendall(bytes([IAC, DONT, opt]))
                elif cmd == DONT:
                    self.sock.sendall(bytes([IAC, WONT, opt]))
                i += 3
            elif cmd == SB:
                end = raw.find(bytes([IAC, SE]), i)
                if end < 0:
                    break
                i = end + 2
            elif cmd == IAC:
                out.append(IAC)
                i += 2
            else:
                i += 2
        self._raw = raw[i:]
        self.text += ANSI.sub(b"", bytes(out))

    def expect(self, needle, timeout=10):
        """Read until C{needle} (bytes or regex pattern) appears after the
        previous match; return all text so far."""
        deadline = time.monotonic() + timeout
        pattern = re.compile(needle, re.S) if isinstance(needle, bytes) else needle
        while True:
            m = pattern.search(self.text, self._pos)
            if m:
                self._pos = m.end()
                return self.text
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("did not see %r in %r" % (needle, self.text[-500:]))
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(65536)
            except (socket.timeout, TimeoutError):
                continue
            if not data:
                raise EOFError("closed; text so far %r" % (self.text[-500:],))
            self._feed(data)

    def send(self, line):
        self.sock.sendall(line.encode("utf-8") + b"\r\n")

    def closed(self, timeout=10):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                data = self.sock.recv(65536)
            except (socket.timeout, TimeoutError):
                continue
            except ConnectionResetError:
                return True
            if not data:
                return True
            self._feed(data)
        return False

    def login(self, user, password):
        self.expect(rb"Username: ")
        self.send(user)
        self.expect(rb"Password: ")
        self.send(password)

    def close(self):
        self.sock.close()


def run_ssh(port, user, keyfile, lines, until, timeout=30):
    """
    Run an SSH shell session in a child process (it needs its own reactor):
    authenticate as C{user} with the private key in C{keyfile}, type
    C{lines}, wait for C{until} in the output.
    @return: {"auth": "ok"|None, "output": str, "code": 0 ok, 2 closed after
        auth, 3 closed before auth (refused), 4 timed out}
    """
    import json
    import subprocess
    import sys

    from tests.support import ROOT, env

    out = subprocess.run(
        [sys.executable, "-c", SSH_SCRIPT, str(port), user, keyfile, json.dumps(lines), until],
        cwd=ROOT,
        env=env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    last = [line for line in out.stdout.splitlines() if line.startswith("{")]
    if not last:
        raise RuntimeError("ssh client failed: %s %s" % (out.stdout, out.stderr[-2000:]))
    return json.loads(last[-1])


SSH_SCRIPT = r"""
import struct, sys, json
from twisted.internet import defer, protocol, reactor, task
from twisted.conch.ssh import channel, common, connection, keys, transport, userauth

port, user, keyfile = int(sys.argv[1]), sys.argv[2], sys.argv[3]
script, until = json.loads(sys.argv[4]), sys.argv[5].encode()
key = keys.Key.fromFile(keyfile)
result = {"auth": None, "output": ""}

class Session(channel.SSHChannel):
    name = b"session"
    def channelOpen(self, _):
        term = common.NS(b"xterm") + struct.pack(">4L", 80, 24, 0, 0) + common.NS(b"")
        self.conn.sendRequest(self, b"pty-req", term, wantReply=True)
        d = self.conn.sendRequest(self, b"shell", b"", wantReply=True)
        self.received = b""
        self.typed = False
    def dataReceived(self, data):
        self.received += data
        if not self.typed and b">>> " in self.received:
            # type only once the shell has drawn its prompt, as a person would
            self.typed = True
            for l in script:
                self.write(l.encode() + b"\r")
        result["output"] = self.received.decode("utf-8", "replace")
        if until in self.received:
            finish(0)

class Conn(connection.SSHConnection):
    def serviceStarted(self):
        result["auth"] = "ok"
        self.openChannel(Session())

class Auth(userauth.SSHUserAuthClient):
    def getPublicKey(self):
        if getattr(self, "_tried", False):
            return None
        self._tried = True
        return key.public()
    def getPrivateKey(self):
        return defer.succeed(key)
    def getPassword(self, prompt=None):
        return None

class Transport(transport.SSHClientTransport):
    def verifyHostKey(self, hostKey, fingerprint):
        return defer.succeed(True)
    def connectionSecure(self):
        self.requestService(Auth(user.encode(), Conn()))
    def connectionLost(self, reason):
        transport.SSHClientTransport.connectionLost(self, reason)
        finish(3 if result["auth"] is None else 2)

done = []
def finish(code):
    if not done:
        done.append(code)
        print(json.dumps(dict(result, code=code)))
        sys.stdout.flush()
        reactor.callLater(0, reactor.stop)

protocol.ClientCreator(reactor, Transport).connectTCP("127.0.0.1", port)
reactor.callLater(15, finish, 4)
reactor.run()
"""

"""
Test helpers: a real netshare server process, and an in-process runtime.

Every wait here has a timeout, and everything started is stopped.
"""

import os
import random
import signal
import socket
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SERVICES = ("personnel", "files", "ttweet")
# Cheap password hashing for tests that log in a lot (a documented setting),
# and REGISTER open for tests that make their accounts with it (the server's
# default is closed: tests/test_config.py checks it).
FAST_ENV = {
    "NETSHARE_SCRYPT_N": "1024",
    "NETSHARE_FILE_SCRYPT_N": "1024",
    "NETSHARE_REGISTRATION": "open",
}


#: Ports free_port() handed out in this process (never handed out twice).
_HANDED_OUT: set[int] = set()


def _ephemeral_low():
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 0


def free_port():
    """
    A loopback port for a server a test starts later.  Not from the kernel's
    ephemeral range (what binding port 0 gives): there, any outgoing
    connection (a test client, the browser driver, a database connection)
    may take the port between this check and the server's bind, and the
    server then fails with "Address already in use" (seen once in CI).
    Below that range only listeners take ports, so a random free one stays
    free.
    """
    low = _ephemeral_low()
    if low > 20000:
        rng = random.SystemRandom()
        for _ in range(200):
            port = rng.randrange(20000, low)
            if port in _HANDED_OUT:
                continue
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", port))
                except OSError:
                    continue
            _HANDED_OUT.add(port)
            return port
    with socket.socket() as s:  # no usable range: the kernel's choice
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def env(**extra):
    e = dict(os.environ)
    e["PYTHONPATH"] = ROOT + os.pathsep + e.get("PYTHONPATH", "")
    e.update(FAST_ENV)
    e.update({k: str(v) for k, v in extra.items()})
    return e


def run_cli(*args, input=None, timeout=60, **envextra):
    """Run the operator CLI from the source tree."""
    return subprocess.run(
        [sys.executable, "-m", "netshare.cli", *args],
        cwd=ROOT,
        env=env(**envextra),
        input=input,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def twistd_command(*args):
    return [
        sys.executable,
        "-c",
        "from twisted.scripts.twistd import run; run()",
        "--pidfile=",
        "-n",
        "netshare",
        *args,
    ]


class ServerProcess:
    """
    C{twistd -n netshare} on free loopback ports with its own data dir.

    @ivar ports: {service: port}
    """

    def __init__(
        self,
        data_dir,
        db=None,
        extra_args=(),
        admin_password="adminpw",
        manhole=False,
        web=False,
        init=True,
        env_extra=None,
    ):
        self.data = str(data_dir)
        self.db = db
        self.admin_password = admin_password
        self.ports = {s: free_port() for s in SERVICES}
        if manhole:
            self.ports["manhole"] = free_port()
        if web:
            self.ports["web"] = free_port()
        self.extra_args = list(extra_args)
        self.env_extra = env_extra or {}
        self.proc = None
        self.output_path = os.path.join(self.data + ".out")
        if init:
            self.init()

    def db_args(self):
        return ["--db", self.db] if self.db else []

    def init(self):
        r = run_cli(
            "init", "--data", self.data, *self.db_args(), "--admin-password", self.admin_password
        )
        assert r.returncode == 0, r.stderr

    def args(self):
        a = ["--data", self.data, *self.db_args()]
        for s in SERVICES:
            a += ["--" + s, "tcp:%d:interface=127.0.0.1" % self.ports[s]]
        a += [
            "--manhole",
            "tcp:%d:interface=127.0.0.1" % self.ports["manhole"]
            if "manhole" in self.ports
            else "none",
            "--web",
            "tcp:%d:interface=127.0.0.1" % self.ports["web"] if "web" in self.ports else "none",
        ]
        return a + self.extra_args

    def start(self, timeout=20):
        self._out = open(self.output_path, "ab")
        self.proc = subprocess.Popen(
            twistd_command(*self.args()),
            cwd=ROOT,
            env=env(**self.env_extra),
            stdout=self._out,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout
        for port in self.ports.values():
            while True:
                if self.proc.poll() is not None:
                    raise RuntimeError(
                        "server exited %s:\n%s" % (self.proc.returncode, self.output())
                    )
                try:
                    with socket.create_connection(("127.0.0.1", port), timeout=1):
                        break
                except OSError:
                    if time.monotonic() > deadline:
                        self.kill()
                        raise RuntimeError(
                            "server did not listen on %d:\n%s" % (port, self.output())
                        ) from None
                    time.sleep(0.05)
        return self

    def output(self):
        try:
            with open(self.output_path, "rb") as f:
                return f.read().decode("utf-8", "replace")[-5000:]
        except OSError:
            return ""

    def terminate(self, timeout=15):
        """SIGTERM and wait; returns the exit status (kills on timeout)."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise

    def kill(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        if getattr(self, "_out", None):
            self._out.close()


class LineConn:
    """A blocking raw-socket client for tests that need exact bytes."""

    def __init__(self, port, timeout=10):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.buf = b""

    def send(self, data: bytes):
        self.sock.sendall(data)

    def readline(self) -> str:
        while b"\r\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError("closed; buffered %r" % (self.buf[:200],))
            self.buf += chunk
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line.decode("utf-8")

    def reply(self) -> list:
        """Every line of one reply (multi-line replies included)."""
        lines = [self.readline()]
        while lines[-1][3:4] == "-":
            lines.append(self.readline())
        return lines

    def cmd(self, line: str) -> list:
        self.send(line.encode("utf-8") + b"\r\n")
        return self.reply()

    def closed(self, timeout=5) -> bool:
        """True if the server closes the connection within timeout."""
        self.sock.settimeout(timeout)
        try:
            while True:
                chunk = self.sock.recv(65536)
                if not chunk:
                    return True
                self.buf += chunk
        except (socket.timeout, TimeoutError):
            return False
        except ConnectionResetError:
            return True

    def close(self):
        self.sock.close()

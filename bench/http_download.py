#!/usr/bin/env python3
"""
netshare downloads over HTTP against the files port (issue 16's goals).

Starts one `twistd -n netshare` with the files and web listeners on free
loopback ports (personnel, ttweet and the manhole off), stores a file of
--size-mib (default 1024) with an HTTP PUT, then downloads it --reps times
(default 3) each way, the two ways in turn (which goes first alternates
per repetition), after one unrecorded warm-up of each:

  line    DOWNLOAD <name> on the files port (a raw socket: the command,
          the 150 line, the body read with recv_into a 1 MiB buffer)
  http    GET /api/files/<name> on the web port (a raw socket: the request
          with a Bearer token, the response head, the body read the same way)

Both read from the page cache (the file was just written and read).  It
prints MB/s (10^6 bytes/s) median [min..max] of each, the paired ratio
http/line per repetition (goal: >= 70 %), the PUT's own MB/s, and the
server's VmRSS (from /proc/<pid>/status every 20 ms): idle after start-up
and login, and the peak during the PUT (goal: within 100 MiB of idle).

Usage (from the repository root, with the project's virtualenv):
  .venv/bin/python bench/http_download.py [--size-mib 1024] [--reps 3]
        [--sendfile yes|no] [--dir DIR]

--sendfile no runs the server with sendfile off: both ways then read the
file in Python (the files port's BlobReader, and the web's push producer
over it), which compares the two Python paths.  Scratch files (the source,
the server's data directory) live in a fresh temporary directory under
--dir (default $TMPDIR), removed at the end; the server is stopped by its
own pid.  Needs about 2x the size in free space.  Exit status 0 when both
goals are met.
"""

import argparse
import hashlib
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

from benchlib import free_port, wait_port  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LOOPBACK = "127.0.0.1"
MiB = 1024 * 1024
PASSWORD = "benchpw-not-secret"
NAME = "bench-http.bin"


def make_source(path, size, block=8 * MiB):
    data = os.urandom(min(block, max(size, 1)))
    h = hashlib.sha256()
    with open(path, "wb") as f:
        left = size
        while left:
            piece = data[: min(left, len(data))]
            f.write(piece)
            h.update(piece)
            left -= len(piece)
    return h.hexdigest()


class Server:
    """The netshare server process; stopped by its own pid only."""

    def __init__(self, data, files_port, web_port, sendfile, log_path):
        env = dict(os.environ)
        env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
        env["NETSHARE_SCRYPT_N"] = "1024"  # account hash cost only (login speed)
        self.log = open(log_path, "wb")
        self.p = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "from twisted.scripts.twistd import run; run()",
                "--pidfile=",
                "-n",
                "netshare",
                "--data",
                data,
                "--files",
                "tcp:%d:interface=%s" % (files_port, LOOPBACK),
                "--web",
                "tcp:%d:interface=%s" % (web_port, LOOPBACK),
                "--personnel",
                "none",
                "--ttweet",
                "none",
                "--manhole",
                "none",
                "--sendfile",
                sendfile,
            ],
            cwd=ROOT,
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        self.pid = self.p.pid
        for port in (files_port, web_port):
            self.wait_port(port)

    def wait_port(self, port, timeout=30):
        wait_port(port, self.p, timeout)

    def rss_kib(self):
        try:
            with open("/proc/%d/status" % self.pid) as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        return int(line.split()[1])
        except OSError:
            return None
        return None

    def stop(self, timeout=20):
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
            try:
                self.p.wait(timeout)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait(timeout)
        self.log.close()


class RSSSampler(threading.Thread):
    """Peak VmRSS of the server while sampling is on."""

    def __init__(self, server, interval=0.02):
        super().__init__(daemon=True)
        self.server, self.interval = server, interval
        self.active = threading.Event()
        self.stopped = threading.Event()
        self.peak = 0

    def run(self):
        while not self.stopped.is_set():
            if self.active.is_set():
                rss = self.server.rss_kib()
                if rss is not None:
                    self.peak = max(self.peak, rss)
            time.sleep(self.interval)


def read_exactly_into(sock, buf, n, already=0):
    """Read and drop the C{n - already} bytes still to come."""
    mv = memoryview(buf)
    got = already
    while got < n:
        k = sock.recv_into(mv, min(len(buf), n - got))
        if not k:
            raise RuntimeError("closed after %d of %d bytes" % (got, n))
        got += k


class LineClient:
    """The files port: lines and raw bodies, on a blocking socket."""

    def __init__(self, port):
        self.sock = socket.create_connection((LOOPBACK, port))
        self.sock.settimeout(300)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""
        self.expect("220")
        self.cmd("LOGIN admin %s" % PASSWORD, "230")

    def line(self):
        while b"\r\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise RuntimeError("server closed the connection")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line.decode("utf-8")

    def expect(self, code):
        line = self.line()
        if not line.startswith(code):
            raise RuntimeError("expected %s, got %r" % (code, line))
        return line

    def cmd(self, text, code):
        self.sock.sendall(text.encode("utf-8") + b"\r\n")
        return self.expect(code)

    def download(self, size, sha256, buf):
        t0 = time.perf_counter()
        line = self.cmd("DOWNLOAD %s" % (NAME,), "150")
        if int(line.split()[1]) != size or not line.endswith("sha256=" + sha256):
            raise RuntimeError("unexpected 150 line %r" % (line,))
        got = min(len(self.buf), size)
        self.buf = self.buf[got:]
        read_exactly_into(self.sock, buf, size, got)
        dt = time.perf_counter() - t0
        self.expect("226")
        return dt

    def close(self):
        try:
            self.sock.sendall(b"QUIT\r\n")
        except OSError:
            pass
        self.sock.close()


class HttpClient:
    """The web port on one keep-alive raw socket."""

    def __init__(self, port, token):
        self.port = port
        self.token = token
        self.sock = socket.create_connection((LOOPBACK, port))
        self.sock.settimeout(300)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def head(self):
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise RuntimeError("server closed the connection")
            data += chunk
        top, _, rest = data.partition(b"\r\n\r\n")
        lines = top.decode("latin-1").split("\r\n")
        headers = {}
        for line in lines[1:]:
            k, _, v = line.partition(":")
            headers[k.strip().lower()] = v.strip()
        return int(lines[0].split()[1]), headers, rest

    def download(self, size, sha256, buf):
        t0 = time.perf_counter()
        self.sock.sendall(
            (
                "GET /api/files/%s HTTP/1.1\r\nHost: bench\r\nAuthorization: Bearer %s\r\n\r\n"
                % (NAME, self.token)
            ).encode("ascii")
        )
        status, headers, rest = self.head()
        if status != 200 or int(headers["content-length"]) != size:
            raise RuntimeError("unexpected answer %d %r" % (status, headers))
        if headers.get("etag") != '"%s"' % sha256:
            raise RuntimeError("unexpected ETag %r" % (headers.get("etag"),))
        read_exactly_into(self.sock, buf, size, len(rest))
        return time.perf_counter() - t0

    def upload(self, path, size, sha256):
        """PUT the file (os.sendfile of the body); @return: seconds."""
        s = socket.create_connection((LOOPBACK, self.port))
        s.settimeout(600)
        try:
            t0 = time.perf_counter()
            s.sendall(
                (
                    "PUT /api/files/%s?replace=yes HTTP/1.1\r\nHost: bench\r\n"
                    "Authorization: Bearer %s\r\nContent-Length: %d\r\n"
                    "X-Content-SHA256: %s\r\nConnection: close\r\n\r\n"
                    % (NAME, self.token, size, sha256)
                ).encode("ascii")
            )
            with open(path, "rb") as f:
                sent = s.sendfile(f, 0, size)
            if sent != size:
                raise RuntimeError("sent %d of %d bytes" % (sent, size))
            data = b""
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
            dt = time.perf_counter() - t0
        finally:
            s.close()
        if not data.startswith(b"HTTP/1.1 201"):
            raise RuntimeError("upload refused: %r" % (data[:300],))
        return dt

    def close(self):
        self.sock.close()


def login(port):
    req = urllib.request.Request(
        "http://%s:%d/api/session" % (LOOPBACK, port),
        data=json.dumps({"user": "admin", "password": PASSWORD}).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(req, timeout=60) as r:
        return json.load(r)["token"]


def fmt(xs):
    if not xs:
        return "n/a"
    return "%s [%s..%s] (n=%d)" % (
        "{:,.0f}".format(statistics.median(xs)),
        "{:,.0f}".format(min(xs)),
        "{:,.0f}".format(max(xs)),
        len(xs),
    )


def run(args):
    size = args.size_mib * MiB
    work = tempfile.mkdtemp(prefix="netshare-bench-http-", dir=args.dir)
    server = None
    try:
        src = os.path.join(work, "src.bin")
        sha = make_source(src, size)
        data = os.path.join(work, "data")
        env = dict(os.environ)
        env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
        env["NETSHARE_SCRYPT_N"] = "1024"
        init = subprocess.run(
            [sys.executable, "-m", "netshare.cli", "init", "--data", data]
            + ["--admin-password", PASSWORD],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        if init.returncode:
            raise RuntimeError("netshare init failed: " + init.stderr)
        files_port, web_port = free_port(), free_port()
        server = Server(
            data, files_port, web_port, args.sendfile, os.path.join(work, "server.log")
        )
        token = login(web_port)
        line = LineClient(files_port)
        http = HttpClient(web_port, token)
        time.sleep(0.5)
        idle_kib = server.rss_kib() or 0
        sampler = RSSSampler(server)
        sampler.start()
        sampler.active.set()
        try:
            up_s = http.upload(src, size, sha)
        finally:
            sampler.active.clear()
            sampler.stopped.set()
        peak_kib = max(sampler.peak, idle_kib)
        print(
            "RESULT "
            + json.dumps({"kind": "upload", "seconds": round(up_s, 3), "MBps": size / up_s / 1e6}),
            flush=True,
        )

        buf = bytearray(MiB)
        ways = {"line": line.download, "http": http.download}
        for fetch in ways.values():  # warm-up: the page cache, the code paths
            fetch(size, sha, buf)
        results = {name: [] for name in ways}
        for rep in range(args.reps):
            order = list(ways.items())
            for name, fetch in order if rep % 2 == 0 else order[::-1]:
                dt = fetch(size, sha, buf)
                mbps = size / dt / 1e6
                results[name].append(mbps)
                print(
                    "RESULT "
                    + json.dumps(
                        {"kind": "download", "way": name, "rep": rep, "MBps": round(mbps, 1)}
                    ),
                    flush=True,
                )
        line.close()
        http.close()
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(work, ignore_errors=True)

    ratios = [100.0 * h / x for h, x in zip(results["http"], results["line"], strict=True)]
    ratio = statistics.median(ratios)
    growth = (peak_kib - idle_kib) / 1024.0
    print(
        "\n### netshare downloads, HTTP vs the files port: %d MiB, %d reps, sendfile %s\n"
        % (args.size_mib, args.reps, args.sendfile)
    )
    print("| way | MB/s median [min..max] |")
    print("|---|---|")
    for name, xs in results.items():
        print("| %s | %s |" % (name, fmt(xs)))
    print(
        "\nhttp / line (paired): median %.1f %% [%.1f..%.1f] (goal >= 70 %%: %s)"
        % (ratio, min(ratios), max(ratios), "met" if ratio >= 70 else "MISSED")
    )
    print(
        "HTTP PUT of %d MiB: %.0f MB/s; server VmRSS idle %.1f MiB, peak during the PUT "
        "%.1f MiB, growth %.1f MiB (goal < 100 MiB: %s)"
        % (
            args.size_mib,
            size / up_s / 1e6,
            idle_kib / 1024.0,
            peak_kib / 1024.0,
            growth,
            "met" if growth < 100 else "MISSED",
        )
    )
    return 0 if ratio >= 70 and growth < 100 else 1


def main(argv=None):
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--size-mib", type=int, default=1024, help="file size (default 1024)")
    ap.add_argument("--reps", type=int, default=3, help="repetitions (default 3)")
    ap.add_argument("--sendfile", choices=("yes", "no"), default="yes", help="server --sendfile")
    ap.add_argument("--dir", default=None, help="scratch directory (default $TMPDIR)")
    args = ap.parse_args(argv)
    if args.size_mib < 1 or args.reps < 1:
        ap.error("--size-mib and --reps must be at least 1")
    return run(args)


if __name__ == "__main__":
    sys.exit(main())

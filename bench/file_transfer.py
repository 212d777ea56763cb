#!/usr/bin/env python3
"""
netshare file transfer benchmark (the speed goals of issue 4).

Measures, side by side in the same run (round-robin, paired per repetition):

  netshare-up     UPLOAD <name> <size> sha256=<hex> replace=yes through a real
                  `twistd -n netshare` (350, os.sendfile of the body, until 226:
                  SHA-256 inline, fsync, rename, directory fsync, database row)
  netshare-down   DOWNLOAD <name> right after that upload (from the command
                  until the last body byte).  The upload wrote its file behind
                  and dropped it from the page cache, so this reads from disk.
  netshare-down-warm  the same download again, now from the page cache
  tw-up-disk      reference: minimal Twisted Protocol writing each dataReceived
                  chunk to a file in the same directory (page cache, no fsync)
  tw-up-disk-fsync  the same + fsync before the ack (what netshare pays too)
  tw-down-256k    reference: Twisted FileSender with 256 KiB chunks, source in
                  the page cache
  tw-down-256k-cold  the same from a second source file dropped from the page
                  cache first (POSIX_FADV_DONTNEED), i.e. read from disk

The reference servers are the minimal Twisted servers the goals were set
against, copied into this script (the same clients: os.sendfile up,
recv_into a 1 MiB buffer down).  Every
client is a plain Python socket, so the numbers compare servers.

It prints MB/s (10^6 bytes/s) median [min..max], netshare as a paired ratio to
each reference, and the netshare server's VmRSS (read from /proc/<pid>/status
every 20 ms): idle after start-up and login, and the peak during the netshare
transfers.  Goals (issue 4): upload >= 60 % of tw-up-disk, download >= 70 % of
tw-down-256k (both from the page cache: netshare-down-warm), RSS growth
< 100 MiB.  The cold pair (netshare-down / tw-down-256k-cold) is shown beside.

Usage:
  python bench/file_transfer.py [--size-mib 1024] [--reps 5] [--quick]
                                [--dir DIR] [--max-seconds 600]

--quick is 256 MiB and 2 repetitions.  Scratch files (source, uploads, the
server's data directory) live in a fresh temporary directory under --dir
(default $TMPDIR), removed at the end; every process started is stopped by
its own pid.  Needs about 5x the size in free space.
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

from benchlib import free_port, wait_port  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LOOPBACK = "127.0.0.1"
MiB = 1024 * 1024
HDR = 9  # reference protocol: 8-byte big-endian size + 1 mode byte (2 disk, 3 disk+fsync)
PASSWORD = "benchpw-not-secret"


# ------------------------------------------------------------------ reference servers


def serve_twisted(out_dir, src, src_cold):
    """Minimal Twisted upload server + 256 KiB FileSender download servers
    (one for a cached source, one for a source dropped from the cache)."""
    from twisted.internet import reactor
    from twisted.internet.protocol import Factory, Protocol
    from twisted.protocols.basic import FileSender

    reactor.callLater(3600, reactor.stop)  # bounded lifetime

    class Upload(Protocol):
        def connectionMade(self):
            self.transport.setTcpNoDelay(True)
            self.hdr, self.left, self.f = b"", None, None

        def dataReceived(self, data):
            if self.left is None:
                self.hdr += data
                if len(self.hdr) < HDR:
                    return
                self.left = int.from_bytes(self.hdr[:8], "big")
                self.mode = self.hdr[8]
                data = self.hdr[HDR:]
                self.f = open(os.path.join(out_dir, "tw_upload.bin"), "wb", buffering=0)
            if data:
                self.left -= len(data)
                self.f.write(data)
            if self.left == 0:
                if self.mode == 3:
                    os.fsync(self.f.fileno())
                self.f.close()
                self.left = -1
                self.transport.write(b"K")
                self.transport.loseConnection()

    class BigFileSender(FileSender):
        CHUNK_SIZE = 256 * 1024

    class Download(Protocol):
        path, cold = src, False

        def connectionMade(self):
            self.transport.setTcpNoDelay(True)
            f = open(self.path, "rb")
            if self.cold:
                os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)

            def done(_):
                f.close()
                self.transport.loseConnection()

            BigFileSender().beginFileTransfer(f, self.transport).addBoth(done)

    class ColdDownload(Download):
        path, cold = src_cold, True

    up = reactor.listenTCP(0, Factory.forProtocol(Upload), interface=LOOPBACK)
    down = reactor.listenTCP(0, Factory.forProtocol(Download), interface=LOOPBACK)
    cold = reactor.listenTCP(0, Factory.forProtocol(ColdDownload), interface=LOOPBACK)
    print("PORTS", up.getHost().port, down.getHost().port, cold.getHost().port, flush=True)
    reactor.run()


# ------------------------------------------------------------------ clients


def _sendfile(sock, path, size):
    """os.sendfile through socket.sendfile (which copes with the timeout)."""
    with open(path, "rb") as f:
        sent = sock.sendfile(f, 0, size)
    if sent != size:
        raise RuntimeError("sent %d of %d bytes" % (sent, size))


def ref_upload(port, path, size, mode):
    s = socket.create_connection((LOOPBACK, port))
    s.settimeout(300)
    t0 = time.perf_counter()
    s.sendall(size.to_bytes(8, "big") + bytes([mode]))
    _sendfile(s, path, size)
    if s.recv(1) != b"K":
        raise RuntimeError("no ack from the reference server")
    dt = time.perf_counter() - t0
    s.close()
    return dt


def ref_download(port, size):
    buf = bytearray(MiB)
    mv = memoryview(buf)
    s = socket.create_connection((LOOPBACK, port))
    s.settimeout(300)
    t0 = time.perf_counter()
    got = 0
    while True:
        n = s.recv_into(mv)
        if not n:
            break
        got += n
    dt = time.perf_counter() - t0
    s.close()
    if got != size:
        raise RuntimeError("reference download got %d bytes, expected %d" % (got, size))
    return dt


class NetshareConn:
    """A blocking client for the files port (lines + raw bodies)."""

    def __init__(self, port):
        self.sock = socket.create_connection((LOOPBACK, port))
        self.sock.settimeout(300)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""
        self.expect("220")

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

    def upload(self, name, path, size, sha256):
        t0 = time.perf_counter()
        self.cmd("UPLOAD %s %d sha256=%s replace=yes" % (name, size, sha256), "350")
        _sendfile(self.sock, path, size)
        self.expect("226")
        return time.perf_counter() - t0

    def download(self, name, size, sha256):
        buf = bytearray(MiB)
        mv = memoryview(buf)
        t0 = time.perf_counter()
        line = self.cmd("DOWNLOAD %s" % (name,), "150")
        n = int(line.split()[1])
        if n != size or not line.endswith("sha256=" + sha256):
            raise RuntimeError("unexpected 150 line %r" % (line,))
        got = min(len(self.buf), n)
        self.buf = self.buf[got:]
        while got < n:
            k = self.sock.recv_into(mv, min(len(buf), n - got))
            if not k:
                raise RuntimeError("closed after %d of %d bytes" % (got, n))
            got += k
        dt = time.perf_counter() - t0
        self.expect("226")
        return dt

    def close(self):
        try:
            self.sock.sendall(b"QUIT\r\n")
        except OSError:
            pass
        self.sock.close()


# ------------------------------------------------------------------ processes


class Proc:
    """A child process we started; stopped by its own pid only."""

    def __init__(self, argv, env=None, ready_prefix=None, log_path=None, timeout=30):
        self.log = open(log_path, "wb") if log_path else None
        self.p = subprocess.Popen(
            argv,
            env=env,
            cwd=ROOT,
            stdout=subprocess.PIPE if ready_prefix else self.log,
            stderr=self.log or subprocess.DEVNULL,
        )
        self.pid = self.p.pid
        self.ready_line = None
        if ready_prefix:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                line = self.p.stdout.readline().decode()
                if not line:
                    break
                if line.startswith(ready_prefix):
                    self.ready_line = line.strip()
                    break
            if self.ready_line is None:
                self.stop()
                raise RuntimeError("%s did not become ready" % (argv,))

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
        if self.p.stdout:
            self.p.stdout.close()
        if self.log:
            self.log.close()


class RSSSampler(threading.Thread):
    """Peak VmRSS of one process while sampling is on."""

    def __init__(self, proc, interval=0.02):
        super().__init__(daemon=True)
        self.proc, self.interval = proc, interval
        self.active = threading.Event()
        self.stopped = threading.Event()
        self.peak = 0

    def run(self):
        while not self.stopped.is_set():
            if self.active.is_set():
                rss = self.proc.rss_kib()
                if rss is not None:
                    self.peak = max(self.peak, rss)
            time.sleep(self.interval)


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
        f.flush()
        os.fsync(f.fileno())  # clean pages: the cold reference can drop them
    return h.hexdigest()


# ------------------------------------------------------------------ driver


def fmt(xs, digits=0):
    if not xs:
        return "n/a"
    f = "{:,.%df}" % digits
    return "%s [%s..%s] (n=%d)" % (
        f.format(statistics.median(xs)),
        f.format(min(xs)),
        f.format(max(xs)),
        len(xs),
    )


def table(rows, headers):
    w = [max(len(str(h)), *(len(str(r[i])) for r in rows)) for i, h in enumerate(headers)]
    out = [
        "| " + " | ".join(str(h).ljust(w[i]) for i, h in enumerate(headers)) + " |",
        "|" + "|".join("-" * (x + 2) for x in w) + "|",
    ]
    out += ["| " + " | ".join(str(c).ljust(w[i]) for i, c in enumerate(r)) + " |" for r in rows]
    return "\n".join(out)


def emit(**fields):
    print("RESULT " + json.dumps(fields), flush=True)


def run(args):
    size = args.size_mib * MiB
    work = tempfile.mkdtemp(prefix="netshare-bench-ft-", dir=args.dir)
    procs = []
    results = {}
    try:
        src = os.path.join(work, "src.bin")
        sha = make_source(src, size)
        src_cold = os.path.join(work, "src-cold.bin")
        make_source(src_cold, size)
        ref_dir = os.path.join(work, "ref")
        os.mkdir(ref_dir)
        me = os.path.abspath(__file__)
        ref = Proc(
            [sys.executable, me, "--serve", ref_dir, "--src", src, "--src-cold", src_cold],
            ready_prefix="PORTS",
        )
        procs.append(ref)
        up_port, down_port, cold_port = map(int, ref.ready_line.split()[1:])

        data = os.path.join(work, "data")
        env = dict(os.environ)
        env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
        env["NETSHARE_SCRYPT_N"] = "1024"  # account hash cost only (login speed)
        init = subprocess.run(
            [
                sys.executable,
                "-m",
                "netshare.cli",
                "init",
                "--data",
                data,
                "--admin-password",
                PASSWORD,
            ],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        if init.returncode:
            raise RuntimeError("netshare init failed: " + init.stderr)
        port = free_port()
        server = Proc(
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
                "tcp:%d:interface=%s" % (port, LOOPBACK),
                "--personnel",
                "none",
                "--ttweet",
                "none",
                "--manhole",
                "none",
                "--web",  # (a second server would clash on 7005)
                "none",
            ],
            env=env,
            log_path=os.path.join(work, "server.log"),
        )
        procs.append(server)
        wait_port(port, server.p)
        conn = NetshareConn(port)
        conn.cmd("LOGIN admin %s" % PASSWORD, "230")
        time.sleep(0.5)
        idle_kib = server.rss_kib()
        sampler = RSSSampler(server)
        sampler.start()

        variants = [
            "netshare-up",
            "tw-up-disk",
            "netshare-down",
            "netshare-down-warm",
            "tw-down-256k",
            "tw-down-256k-cold",
        ]
        if not args.no_fsync_ref:
            variants.insert(2, "tw-up-disk-fsync")

        def one(name):
            if name == "netshare-up":
                sampler.active.set()
                try:
                    return conn.upload("bench.bin", src, size, sha)
                finally:
                    sampler.active.clear()
            if name in ("netshare-down", "netshare-down-warm"):
                sampler.active.set()
                try:
                    return conn.download("bench.bin", size, sha)
                finally:
                    sampler.active.clear()
            if name == "tw-up-disk":
                return ref_upload(up_port, src, size, 2)
            if name == "tw-up-disk-fsync":
                return ref_upload(up_port, src, size, 3)
            if name == "tw-down-256k":
                return ref_download(down_port, size)
            if name == "tw-down-256k-cold":
                return ref_download(cold_port, size)
            raise KeyError(name)

        for name in variants:  # warm-up: page cache and code paths, not recorded
            one(name)
        results = {n: [] for n in variants}
        deadline = time.monotonic() + args.max_seconds
        for rep in range(args.reps):
            if time.monotonic() > deadline:
                print("# time limit hit after %d reps" % rep, flush=True)
                break
            for name in variants:
                dt = one(name)
                mbps = size / dt / 1e6
                results[name].append(mbps)
                emit(
                    kind="transfer",
                    variant=name,
                    rep=rep,
                    seconds=round(dt, 4),
                    MBps=round(mbps, 1),
                )
        sampler.stopped.set()
        conn.close()
        peak_kib = max(sampler.peak, idle_kib or 0)
        emit(kind="rss", idle_kib=idle_kib, peak_kib=peak_kib)
    finally:
        for p in reversed(procs):
            p.stop()
        shutil.rmtree(work, ignore_errors=True)

    print(
        "\n### netshare file transfer: %d MiB per transfer, %d reps, scratch in %s\n"
        % (args.size_mib, len(results.get("netshare-up", [])), args.dir or tempfile.gettempdir())
    )
    rows = [[n, fmt(xs)] for n, xs in results.items()]
    print(table(rows, ["variant", "MB/s median [min..max]"]))

    def paired(a, b):
        xs, ys = results.get(a, []), results.get(b, [])
        return [100.0 * x / y for x, y in zip(xs, ys, strict=True)]

    ratios = [
        ("netshare-up", "tw-up-disk", 60),
        ("netshare-down-warm", "tw-down-256k", 70),
        ("netshare-down", "tw-down-256k-cold", None),
        ("netshare-down", "tw-down-256k", None),
    ]
    if "tw-up-disk-fsync" in results:
        ratios.insert(1, ("netshare-up", "tw-up-disk-fsync", None))
    rows, verdicts = [], []
    for a, b, goal in ratios:
        rs = paired(a, b)
        med = statistics.median(rs) if rs else float("nan")
        verdict = "" if goal is None else ("met" if med >= goal else "MISSED")
        rows.append(
            [
                "%s / %s" % (a, b),
                fmt(rs) + " %",
                "" if goal is None else ">= %d %%" % goal,
                verdict,
            ]
        )
        if goal is not None:
            verdicts.append(med >= goal)
    print()
    print(table(rows, ["paired ratio", "median [min..max]", "goal", ""]))
    growth = (peak_kib - idle_kib) / 1024.0
    ok = growth < 100
    verdicts.append(ok)
    print(
        "\nnetshare server VmRSS: idle %.1f MiB, peak during transfers %.1f MiB, "
        "growth %.1f MiB (goal < 100 MiB: %s)"
        % (idle_kib / 1024.0, peak_kib / 1024.0, growth, "met" if ok else "MISSED")
    )
    return 0 if all(verdicts) else 1


def main(argv=None):
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--size-mib", type=int, default=None, help="transfer size (default 1024)")
    ap.add_argument("--reps", type=int, default=None, help="repetitions (default 5)")
    ap.add_argument("--quick", action="store_true", help="256 MiB and 2 repetitions")
    ap.add_argument("--dir", default=None, help="scratch directory (default $TMPDIR)")
    ap.add_argument(
        "--max-seconds", type=float, default=600, help="start no new repetition after this"
    )
    ap.add_argument("--no-fsync-ref", action="store_true", help="skip tw-up-disk-fsync")
    ap.add_argument("--serve", help=argparse.SUPPRESS)
    ap.add_argument("--src", help=argparse.SUPPRESS)
    ap.add_argument("--src-cold", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.serve:
        return serve_twisted(args.serve, args.src, args.src_cold)
    if args.size_mib is None:
        args.size_mib = 256 if args.quick else 1024
    if args.reps is None:
        args.reps = 2 if args.quick else 5
    if args.size_mib < 1 or args.reps < 1:
        ap.error("--size-mib and --reps must be at least 1")
    return run(args)


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""
ttweet fan-out: one publisher, N subscribers on one hashtag, netshare beside
a minimal Twisted fan-out, in the same run (the goal: >= 50 % of its
delivered/s and an all-N p99 within 2x, see bench/README.md).

Servers (started here as subprocesses, stopped by PID at the end):
  reference  a minimal Twisted LineReceiver fan-out (defined below):
             "SUB <tag>" registers, "PUB <tag> <payload>" writes
             "MSG <tag> <payload>" to every subscriber and ":<n>" back.
  netshare   the real `twistd -n netshare` (ttweet listener only) on a fresh
             data dir: SQLite (or --db URL), default settings except the
             flood limit (raised out of the way: one publisher floods on
             purpose) and the connection caps (N + 1 connections from one IP).

One harness (this process; one epoll loop over N subscriber sockets and the
publisher) drives both.  Payload: a 100-character message.  netshare's
subscribers log in as guests and SUBSCRIBE #chan; the publisher logs in and
sends TWEET "<100 x>" #chan; a delivery is one "600 {tweet}" line.
  throughput  publish bursts of W messages (2000 / 200 / 20 for N = 1 / 100 /
              1000, as the anchor), wait until every subscriber has all of
              them, repeat (bounded by count and --seconds):
              delivered/s = N * messages / elapsed.
  latency     one message in flight: publish, wait for all N deliveries;
              per-delivery latency (publish -> harness read it) p50/p99 and
              all-N (until the last subscriber has it) p50/p99.
The publisher's replies are read as they come but do not gate the next
publish (--gate-acks makes them gate it): netshare acknowledges a tweet
only once its batch is committed (a durable 200, up to the batch interval
later), while the reference answers at once; fan-out is what is compared
here.  Their latency is reported separately ("ack p50/p99").

Also reported: each server's CPU time (user + system, all threads, from
/proc) per delivery, which a busy machine disturbs less than the rates.

Caveat: on 2 cores the Python harness shares the CPU with the
server, so absolute numbers are a floor; quote the paired ratio.

Usage:  python bench/ttweet_fanout.py [--subs 1,100,1000] [--reps 3] [--seconds 2]
        python bench/ttweet_fanout.py --quick      # one short rep, under a minute
"""

import argparse
import json
import os
import resource
import selectors
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

from benchlib import free_port, stop_process, wait_port  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LOOPBACK = "127.0.0.1"
PAYLOAD = "x" * 100


def raise_nofile():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


# --- the reference server (the anchor's, unchanged in behaviour) ----------


def serve_reference():
    raise_nofile()
    from twisted.internet import reactor
    from twisted.internet.protocol import Factory
    from twisted.protocols.basic import LineReceiver

    reactor.callLater(1800, reactor.stop)
    subs = {}

    class Fan(LineReceiver):
        delimiter = b"\n"
        tag = None

        def connectionMade(self):
            self.transport.setTcpNoDelay(True)

        def lineReceived(self, line):
            if line[:4] == b"PUB ":
                _, tag, rest = line.split(b" ", 2)
                targets = subs.get(tag, ())
                msg = b"MSG " + tag + b" " + rest + b"\n"
                for proto in targets:
                    proto.transport.write(msg)
                self.transport.write(b":%d\n" % len(targets))
            elif line[:4] == b"SUB ":
                self.tag = line[4:].strip()
                subs.setdefault(self.tag, {})[self] = None
                self.transport.write(b"+OK\n")

        def connectionLost(self, reason):
            if self.tag is not None:
                subs[self.tag].pop(self, None)

    p = reactor.listenTCP(0, Factory.forProtocol(Fan), interface=LOOPBACK, backlog=2048)
    print("PORT", p.getHost().port, flush=True)
    reactor.run()


# --- processes --------------------------------------------------------------


def start_reference():
    proc = subprocess.Popen(
        [sys.executable, os.path.abspath(__file__), "--serve-reference"],
        stdout=subprocess.PIPE,
        text=True,
    )
    line = proc.stdout.readline()
    if not line.startswith("PORT"):
        stop_process(proc)
        raise RuntimeError("reference server did not start")
    return proc, int(line.split()[1])


def start_netshare(workdir, db, max_conns, batch_interval):
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    data = os.path.join(workdir, "data")
    init = [
        sys.executable,
        "-m",
        "netshare.cli",
        "init",
        "--data",
        data,
        "--admin-password",
        "bench-admin",
    ]
    if db:
        init += ["--db", db]
    r = subprocess.run(init, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    if r.returncode:
        raise RuntimeError("netshare init failed: %s" % r.stderr.strip())
    port = free_port()
    args = [
        sys.executable,
        "-c",
        "from twisted.scripts.twistd import run; run()",
        "--pidfile=",
        "-n",
        "netshare",
        "--data",
        data,
        "--ttweet",
        "tcp:%d:interface=%s" % (port, LOOPBACK),
        "--personnel",
        "none",
        "--files",
        "none",
        "--manhole",
        "none",
        "--web",  # (a second server would clash on 7005)
        "none",
        "--flood-burst",
        "1000000000",
        "--flood-rate",
        "1000000000",
        "--flood-address-burst",
        "1000000000",
        "--flood-address-rate",
        "1000000000",
        "--max-connections",
        str(max_conns),
        "--max-per-ip",
        str(max_conns),
    ]
    if db:
        args += ["--db", db]
    if batch_interval:
        args += ["--ttweet-batch-interval", str(batch_interval)]
    log = open(os.path.join(workdir, "twistd.log"), "wb")
    proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    log.close()
    wait_port(port, proc)
    return proc, port


# --- the harness ------------------------------------------------------------


def cpu_seconds(pid):
    """User + system CPU time of a process so far (Linux /proc), or None."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


class Reference:
    name = "reference"

    def __init__(self, port, pid=None):
        self.port = port
        self.pid = pid

    def subscribe(self, socks, run):
        for s in socks:
            s.sendall(b"SUB chan\n")
        return 1  # "+OK"

    def publisher(self, sock, run):
        return 0

    def publish_line(self):
        return ("PUB chan " + PAYLOAD + "\n").encode()


class Netshare:
    name = "netshare"

    def __init__(self, port, pid=None):
        self.port = port
        self.pid = pid

    def subscribe(self, socks, run):
        for i, s in enumerate(socks):
            s.sendall(b"LOGIN b%ds%d\r\nSUBSCRIBE #chan\r\n" % (run, i))
        return 3  # 220, 230, 200

    def publisher(self, sock, run):
        sock.sendall(b"LOGIN b%dp\r\n" % (run,))
        return 2  # 220, 230

    def publish_line(self):
        return ('TWEET "%s" #chan\r\n' % (PAYLOAD,)).encode()


def _connect(port):
    s = socket.create_connection((LOOPBACK, port))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def _expect_lines(sock, n, what, timeout=30):
    got, data = 0, b""
    sock.settimeout(timeout)
    while got < n:
        d = sock.recv(65536)
        if not d:
            raise RuntimeError("server closed during %s: %r" % (what, data[-200:]))
        data += d
        got += d.count(b"\n")
    sock.settimeout(None)
    for line in data.splitlines():
        if line[:1] in (b"4", b"5"):
            raise RuntimeError("%s refused: %r" % (what, line))


def run_fanout(target, n, mode, burst, max_msgs, seconds, run, gate_acks):
    subs = [_connect(target.port) for _ in range(n)]
    per_sub = target.subscribe(subs, run)
    for s in subs:
        _expect_lines(s, per_sub, "subscribe")
    pub = _connect(target.port)
    want = target.publisher(pub, run)
    if want:
        _expect_lines(pub, want, "publisher login")
    sel = selectors.DefaultSelector()
    for s in subs:
        sel.register(s, selectors.EVENT_READ)
    sel.register(pub, selectors.EVENT_READ)
    clock = time.perf_counter_ns
    w = burst if mode == "throughput" else 1
    batch = target.publish_line() * w
    remaining = dict.fromkeys(subs, 0)
    sent_at = []  # publish time of every message, in order
    acked = 0
    ack_lat, lat, done_lat = [], [], []
    published = 0
    cpu0 = cpu_seconds(target.pid) if target.pid else None
    own0 = time.process_time()
    t0 = clock()
    deadline = t0 + int(seconds * 1e9)

    def read_acks(now, data):
        nonlocal acked
        k = data.count(b"\n")
        for i in range(acked, acked + k):
            ack_lat.append((now - sent_at[i]) / 1000)
        acked += k
        if b"\n4" in b"\n" + data or b"\n5" in b"\n" + data:
            raise RuntimeError("publisher refused: %r" % (data[:200],))

    while published < max_msgs and clock() < deadline:
        for s in subs:
            remaining[s] = w
        outstanding = n + (1 if gate_acks else 0)
        ack_target = published + w
        tp = clock()
        pub.sendall(batch)
        sent_at.extend([tp] * w)
        published += w
        while outstanding:
            ev = sel.select(30)
            if not ev:
                raise RuntimeError("stalled: %d sockets still waiting" % outstanding)
            now = clock()
            for key, _ in ev:
                s = key.fileobj
                d = s.recv(262144)
                if not d:
                    raise RuntimeError("server closed a connection")
                if s is pub:
                    read_acks(now, d)
                    if gate_acks and acked >= ack_target and acked - d.count(b"\n") < ack_target:
                        outstanding -= 1
                    continue
                k = d.count(b"\n")
                r = remaining[s] - k
                remaining[s] = r
                if r <= 0 and r + k > 0:
                    outstanding -= 1
                    if mode == "latency":
                        lat.append((now - tp) / 1000)
        if mode == "latency":
            done_lat.append((clock() - tp) / 1000)
    dt = (clock() - t0) / 1e9
    cpu1 = cpu_seconds(target.pid) if target.pid else None
    own1 = time.process_time()
    # drain the publisher's remaining acknowledgements (not timed)
    pub.settimeout(30)
    while acked < published:
        d = pub.recv(262144)
        if not d:
            raise RuntimeError("publisher connection closed")
        read_acks(clock(), d)
    for s in subs + [pub]:
        sel.unregister(s)
        s.close()
    sel.close()
    time.sleep(0.2)  # let the server drop the closed connections
    out = {
        "delivered_per_s": n * published / dt,
        "messages": published,
        "harness_cpu_pct": (own1 - own0) / dt * 100,
    }
    if cpu0 is not None and cpu1 is not None:
        out["server_cpu_pct"] = (cpu1 - cpu0) / dt * 100
        out["server_cpu_us_per_delivery"] = (cpu1 - cpu0) * 1e6 / max(1, n * published)
    ack_lat.sort()
    out.update(ack_p50_us=percentile(ack_lat, 50), ack_p99_us=percentile(ack_lat, 99))
    if mode == "latency":
        lat.sort()
        done_lat.sort()
        out.update(
            p50_us=percentile(lat, 50),
            p99_us=percentile(lat, 99),
            all_p50_us=percentile(done_lat, 50),
            all_p99_us=percentile(done_lat, 99),
        )
    return out


# --- statistics and tables --------------------------------------------------


def percentile(sorted_values, p):
    if not sorted_values:
        return float("nan")
    k = (len(sorted_values) - 1) * p / 100.0
    lo = int(k)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (k - lo)


def fmt_summary(values, digits=0):
    if not values:
        return "n/a"
    f = "{:,.%df}" % digits
    return "%s [%s..%s]" % (
        f.format(statistics.median(values)),
        f.format(min(values)),
        f.format(max(values)),
    )


def table(rows, header):
    out = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(out)


def main():
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--serve-reference", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--subs", default="1,100,1000")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument(
        "--quick",
        action="store_true",
        help="one rep of 0.4 s per measurement (finishes in under a minute)",
    )
    ap.add_argument("--db", help="netshare database URL (default: SQLite in a temp dir)")
    ap.add_argument(
        "--batch-interval",
        type=float,
        default=None,
        help="netshare --ttweet-batch-interval (default: the server's default)",
    )
    ap.add_argument(
        "--gate-acks",
        action="store_true",
        help="also wait for the publisher's acknowledgements before the next burst",
    )
    ap.add_argument("--targets", default="reference,netshare")
    ap.add_argument(
        "--netshare-port",
        type=int,
        help="use a netshare already listening on this port (e.g. under a profiler)",
    )
    ap.add_argument("--netshare-pid", type=int, help="its process id (for the CPU columns)")
    args = ap.parse_args()
    if args.serve_reference:
        return serve_reference()
    if args.quick:
        args.reps, args.seconds = 1, 0.4
    raise_nofile()
    signal.alarm(1800)  # a hard bound on the whole run
    ns = [int(x) for x in args.subs.split(",")]
    names = [t for t in args.targets.split(",") if t]
    workdir = tempfile.mkdtemp(prefix="ttweet-bench-")
    procs = []
    targets = {}
    try:
        if "reference" in names:
            proc, port = start_reference()
            procs.append(proc)
            targets["reference"] = Reference(port, proc.pid)
        if "netshare" in names and args.netshare_port:
            targets["netshare"] = Netshare(args.netshare_port, args.netshare_pid)
        elif "netshare" in names:
            proc, port = start_netshare(workdir, args.db, max(ns) + 50, args.batch_interval)
            procs.append(proc)
            targets["netshare"] = Netshare(port, proc.pid)
        res = {}
        run = 0
        for rep in range(args.reps):
            for n in ns:
                for mode in ("throughput", "latency"):
                    burst = max(20, min(2000, 20000 // n))
                    max_msgs = (
                        (2_000_000 // n)
                        if mode == "throughput"
                        else max(200, 2000 // max(1, n // 10))
                    )
                    for name in names:
                        run += 1
                        r = run_fanout(
                            targets[name],
                            n,
                            mode,
                            burst,
                            max_msgs,
                            args.seconds,
                            run,
                            args.gate_acks,
                        )
                        res.setdefault((mode, n, name), []).append(r)
                        print(
                            "RESULT "
                            + json.dumps(
                                dict(
                                    mode=mode,
                                    subscribers=n,
                                    target=name,
                                    rep=rep,
                                    burst=burst,
                                    **{k: round(v, 1) for k, v in r.items()},
                                )
                            ),
                            flush=True,
                        )
    finally:
        for p in procs:
            stop_process(p)
        shutil.rmtree(workdir, ignore_errors=True)

    print(
        "\n### ttweet fan-out, delivered messages/s, median [min..max] over %d rep(s)"
        " (100-character message)\n" % args.reps
    )
    rows = []
    for n in ns:
        row = [n, max(20, min(2000, 20000 // n))]
        for name in names:
            row.append(fmt_summary([r["delivered_per_s"] for r in res[("throughput", n, name)]]))
        if len(names) == 2:
            a, b = res[("throughput", n, "netshare")], res[("throughput", n, "reference")]
            row.append(
                fmt_summary(
                    [
                        x["delivered_per_s"] / y["delivered_per_s"] * 100
                        for x, y in zip(a, b, strict=True)
                    ]
                )
                + " %"
            )
        rows.append(row)
    header = (
        ["subscribers", "burst"]
        + names
        + (["netshare/reference (paired)"] if len(names) == 2 else [])
    )
    print(table(rows, header))
    print(
        "\n### Server CPU per delivery in throughput mode (us, median [min..max]; "
        "both threads of the process, less sensitive to a busy machine than rates)\n"
    )
    rows = []
    for n in ns:
        row = [n]
        for name in names:
            row.append(
                fmt_summary(
                    [
                        r["server_cpu_us_per_delivery"]
                        for r in res[("throughput", n, name)]
                        if "server_cpu_us_per_delivery" in r
                    ],
                    2,
                )
            )
        rows.append(row)
    print(table(rows, ["subscribers"] + names))
    print("\n### Delivery latency, one message in flight (us, median of reps)\n")
    rows = []
    for n in ns:
        for name in names:
            rs = res[("latency", n, name)]

            def med(k, rs=rs):
                return "%.0f" % statistics.median([r[k] for r in rs])

            rows.append(
                [
                    n,
                    name,
                    med("p50_us"),
                    med("p99_us"),
                    med("all_p50_us"),
                    med("all_p99_us"),
                    med("ack_p50_us"),
                    med("ack_p99_us"),
                ]
            )
    print(
        table(
            rows,
            [
                "subscribers",
                "server",
                "delivery p50",
                "delivery p99",
                "all-N p50",
                "all-N p99",
                "ack p50",
                "ack p99",
            ],
        )
    )
    if len(names) == 2:
        print("\n### all-N p99 ratio netshare/reference (paired, %)\n")
        rows = []
        for n in ns:
            a, b = res[("latency", n, "netshare")], res[("latency", n, "reference")]
            rows.append(
                [
                    n,
                    fmt_summary(
                        [
                            x["all_p99_us"] / y["all_p99_us"] * 100
                            for x, y in zip(a, b, strict=True)
                        ]
                    )
                    + " %",
                ]
            )
        print(table(rows, ["subscribers", "all-N p99 netshare/reference"]))


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""
Personnel sync end to end: `SEND * *` of P people to C sync clients, timed
until every client has acknowledged everything, beside the raw SQLite
batched-insert rate measured in the same run (the goal: a client applies
a 100 000-record push at >= 100 000 rows/s end to end, >= 20 % of
core-executemany in the same run).

What runs (all started here, stopped by PID at the end):
  server   the real `twistd -n netshare` (personnel listener only) on a
           fresh data dir: SQLite (or --db URL), default settings.
  clients  C real `netshare-personnel sync` processes (accounts client1..C),
           each with its own SQLite file, default options (batches of at most
           500 messages, one local transaction per batch, cumulative ACKs,
           every applied change logged at info level -- one event per batch
           listing its changes -- to a file, in JSON so that the harness can
           read when the first and last batches were applied).
The P people are written straight into the server's database before the
clock starts.  One repetition:
  t0       the harness sends `SEND * *` on an admin connection
  queued   the `200 queued <P*C>` reply: the outbox rows are committed
  done     CLIENTS (polled every 20 ms) shows every client with pending 0
           and acked = its highest seq: each client has applied and
           committed every message in its own SQLite file.
  records/s = P*C / (done - t0)  (each client applies P upserts);
  delivery  = P*C / (done - queued): the push itself, without the server's
              queueing of the outbox rows.
Also reported: the queue rate (outbox rows committed by SEND per second,
the server-side bulk load), when the first and last batch were applied
(from the clients' logs), and the CPU seconds the server and the clients
used per repetition (/proc; steadier than wall time on a shared machine).
Repetitions send the same people again (upserts of existing rows).

Reference, measured in the same run between repetitions (paired):
  sqlite3-executemany   stdlib sqlite3, P*C rows in one executemany and one
                        transaction (WAL, synchronous=FULL as the sync client
                        uses), the floor of a batched SQLite write
  core-executemany      SQLAlchemy Core insert(t), same rows, one transaction
  localstore-apply      netshare.clients.syncdb.LocalStore.apply_batch of P SAVE
                        messages in batches of 500 (the client's own write
                        path without the network), x C sequentially

Caveat: on 2 cores the server, C client processes and this harness share
the CPU; quote the ratio to the reference, not the absolute rate.

Usage:  python bench/personnel_sync.py [--people 10000] [--clients 10] [--reps 3]
        python bench/personnel_sync.py --one-client 100000 [--reps 3]
                                    # one client gets a 100 000-record push
        python bench/personnel_sync.py --quick      # 2000 people, 3 clients, 1 rep
"""

import argparse
import json
import os
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time

from benchlib import free_port  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
LOOPBACK = "127.0.0.1"
ADMIN_PASSWORD = "bench-admin"


def cpu_seconds(pid):
    """utime + stime of a process, in seconds (Linux /proc)."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def child_env(**extra):
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    # Account passwords are not what is measured: cheap hashing for logins.
    env["NETSHARE_SCRYPT_N"] = "1024"
    env.update(extra)
    return env


class Conn:
    """A blocking line connection (admin or registration)."""

    def __init__(self, port, timeout=120):
        self.sock = socket.create_connection((LOOPBACK, port), timeout=timeout)
        self.buf = b""
        assert self.readline().startswith("220 ")

    def readline(self):
        while b"\r\n" not in self.buf:
            chunk = self.sock.recv(1 << 16)
            if not chunk:
                raise EOFError("server closed the connection")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line.decode("utf-8")

    def cmd(self, line):
        self.sock.sendall(line.encode("utf-8") + b"\r\n")
        lines = [self.readline()]
        while lines[-1][3:4] == "-":
            lines.append(self.readline())
        return lines

    def close(self):
        self.sock.close()


class Bench:
    def __init__(self, args):
        self.args = args
        self.dir = tempfile.mkdtemp(prefix="personnel-bench-", dir=args.dir)
        self.data = os.path.join(self.dir, "data")
        self.db = args.db or "sqlite:///" + os.path.join(self.dir, "server.db")
        self.port = free_port()
        self.server = None
        self.clients = []
        self.logs = []

    # -- processes

    def start_server(self):
        r = subprocess.run(
            [
                sys.executable,
                "-m",
                "netshare.cli",
                "init",
                "--data",
                self.data,
                "--db",
                self.db,
                "--admin-password",
                ADMIN_PASSWORD,
            ],
            cwd=ROOT,
            env=child_env(),
            capture_output=True,
            text=True,
        )
        if r.returncode:
            raise SystemExit("netshare init failed: " + r.stderr)
        out = open(os.path.join(self.dir, "server.log"), "wb")
        self.logs.append(out)
        args = [
            sys.executable,
            "-c",
            "from twisted.scripts.twistd import run; run()",
            "--pidfile=",
            "-n",
            "netshare",
            "--data",
            self.data,
            "--db",
            self.db,
            "--personnel",
            "tcp:%d:interface=%s" % (self.port, LOOPBACK),
            "--files",
            "none",
            "--ttweet",
            "none",
            "--manhole",
            "none",
            "--web",  # (a second server would clash on 7005)
            "none",
            "--sync-page",
            str(self.args.sync_page),
            "--registration",
            "open",
        ]
        self.server = subprocess.Popen(
            args, cwd=ROOT, env=child_env(), stdout=out, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection((LOOPBACK, self.port), timeout=1).close()
                return
            except OSError as e:
                if self.server.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit("server did not start; see %s" % out.name) from e
                time.sleep(0.05)

    def seed(self):
        """P people straight into the server database, one transaction."""
        from netshare.storage.engine import create_engine

        try:
            from netshare.storage.roster import thd_demo_people
        except ImportError:  # a tree from before storage/roster.py
            from netshare.storage.personnel import thd_demo_people
        engine = create_engine(self.db)
        try:
            with engine.begin() as conn:
                people = [
                    ("%06d" % i, "Name%d" % i, "Surname%d" % i, "engineer", str(40000 + i))
                    for i in range(self.args.people)
                ]
                added = thd_demo_people(conn, people)
        finally:
            engine.dispose()
        assert added == self.args.people, added

    def start_clients(self):
        c = Conn(self.port)
        for i in range(1, self.args.clients + 1):
            name = "client%d" % i
            reply = c.cmd("REGISTER %s pw-%s" % (name, name))[0]
            assert reply.startswith("201 "), reply
        c.close()
        for i in range(1, self.args.clients + 1):
            name = "client%d" % i
            log = open(os.path.join(self.dir, name + ".log"), "wb")
            self.logs.append(log)
            cmd = [
                sys.executable,
                "-m",
                "netshare.clients.personnel",
                "--port",
                str(self.port),
                "--user",
                name,
                "sync",
                "--db",
                os.path.join(self.dir, name + ".sqlite"),
                "--log-level",
                self.args.client_log_level,
                "--log-format",
                "json",
                "--batch-max",
                str(self.args.batch_max),
            ]
            self.clients.append(
                subprocess.Popen(
                    cmd,
                    cwd=ROOT,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=child_env(NETSHARE_PASSWORD="pw-" + name),
                )
            )

    def admin(self):
        c = Conn(self.port)
        assert c.cmd("LOGIN admin %s" % ADMIN_PASSWORD)[0].startswith("230 ")
        return c

    def clients_info(self, admin):
        return [json.loads(line[4:]) for line in admin.cmd("CLIENTS")[:-1]]

    def wait_online(self, admin, timeout=60):
        deadline = time.monotonic() + timeout
        while True:
            info = self.clients_info(admin)
            if len(info) == self.args.clients and all(c["online"] for c in info):
                return
            if time.monotonic() > deadline:
                raise SystemExit("sync clients did not come online: %r" % (info,))
            time.sleep(0.05)

    def stop(self):
        for p in self.clients + ([self.server] if self.server else []):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.clients + ([self.server] if self.server else []):
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(10)
        for f in self.logs:
            f.close()

    # -- one measurement

    def cpu(self):
        """CPU seconds used so far by the server and by all the clients
        (user + system, from /proc): far less noisy than wall time on a
        shared machine, and it says which side does the work."""
        return (cpu_seconds(self.server.pid), sum(cpu_seconds(p.pid) for p in self.clients))

    def applied_window(self, since):
        """(first, last) wall time of the clients' "applied" log events
        logged after C{since}, or Nones (e.g. at --client-log-level warn)."""
        first = last = None
        for i in range(1, self.args.clients + 1):
            with open(os.path.join(self.dir, "client%d.log" % i), "rb") as f:
                for line in f:
                    try:
                        e = json.loads(line)
                    except ValueError:
                        continue
                    if not str(e.get("log_format", "")).startswith("applied"):
                        continue
                    t = e.get("log_time", 0)
                    if t >= since:
                        first = t if first is None else min(first, t)
                        last = t if last is None else max(last, t)
        return first, last

    def run_once(self, admin):
        n = self.args.people * self.args.clients
        cpu0 = self.cpu()
        wall0 = time.time()
        t0 = time.perf_counter()
        reply = admin.cmd("SEND * *")[0]
        t_queued = time.perf_counter()
        assert reply == "200 queued %d" % n, reply
        deadline = t0 + self.args.timeout
        while True:
            info = self.clients_info(admin)
            if all(c["pending"] == 0 for c in info):
                break
            if time.perf_counter() > deadline:
                raise SystemExit("clients did not converge: %r" % (info,))
            time.sleep(0.02)
        t_done = time.perf_counter()
        cpu1 = self.cpu()
        first, last = self.applied_window(wall0)
        return {
            "records": n,
            "queue_s": t_queued - t0,
            "total_s": t_done - t0,
            "records_per_s": n / (t_done - t0),
            "delivery_per_s": n / (t_done - t_queued),
            "first_applied_s": None if first is None else round(first - wall0, 3),
            "last_applied_s": None if last is None else round(last - wall0, 3),
            "server_cpu_s": round(cpu1[0] - cpu0[0], 3),
            "clients_cpu_s": round(cpu1[1] - cpu0[1], 3),
        }

    def verify(self):
        """Every client's SQLite file holds the P people."""
        for i in range(1, self.args.clients + 1):
            db = sqlite3.connect(os.path.join(self.dir, "client%d.sqlite" % i))
            try:
                count = db.execute("SELECT count(*) FROM personnel").fetchone()[0]
            finally:
                db.close()
            assert count == self.args.people, (i, count)


# -- the reference, same rows, same run ------------------------------------------


def reference(kind, rows, directory, clients):
    path = os.path.join(directory, "ref-%s-%d.db" % (kind, os.getpid()))
    for suffix in ("", "-wal", "-shm", "-journal"):
        if os.path.exists(path + suffix):
            os.unlink(path + suffix)
    try:
        if kind == "sqlite3-executemany":
            db = sqlite3.connect(path, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            db.execute(
                "CREATE TABLE personnel (ssn TEXT PRIMARY KEY, name TEXT, surname TEXT, "
                "job TEXT, salary TEXT, updated TEXT)"
            )
            data = [
                (r["ssn"], r["name"], r["surname"], r["job"], r["salary"], r["updated"])
                for r in rows
            ]
            t0 = time.perf_counter()
            db.execute("BEGIN")
            db.executemany("INSERT INTO personnel VALUES (?,?,?,?,?,?)", data)
            db.execute("COMMIT")
            dt = time.perf_counter() - t0
            db.close()
            return len(rows), dt
        if kind == "core-executemany":
            import sqlalchemy as sa

            engine = sa.create_engine("sqlite:///" + path)
            md = sa.MetaData()
            t = sa.Table(
                "personnel",
                md,
                sa.Column("ssn", sa.String(32), primary_key=True),
                *[
                    sa.Column(c, sa.String(255))
                    for c in ("name", "surname", "job", "salary", "updated")
                ],
            )
            md.create_all(engine)
            t0 = time.perf_counter()
            with engine.begin() as conn:
                conn.execute(sa.insert(t), rows)
            dt = time.perf_counter() - t0
            engine.dispose()
            return len(rows), dt
        if kind == "localstore-apply":
            from netshare.clients.syncdb import LocalStore

            per_client = len(rows) // clients
            msgs = [(i + 1, "SAVE", json.dumps(r)) for i, r in enumerate(rows[:per_client])]
            total, dt = 0, 0.0
            for c in range(clients):
                store = LocalStore(path + ".%d" % c)
                t0 = time.perf_counter()
                for i in range(0, len(msgs), 500):
                    total += store.apply_batch(msgs[i : i + 500])
                dt += time.perf_counter() - t0
                store.close()
                for suffix in ("", "-wal", "-shm"):
                    if os.path.exists(path + ".%d" % c + suffix):
                        os.unlink(path + ".%d" % c + suffix)
            return total, dt
        raise KeyError(kind)
    finally:
        for suffix in ("", "-wal", "-shm", "-journal"):
            if os.path.exists(path + suffix):
                os.unlink(path + suffix)


REFERENCES = ("sqlite3-executemany", "core-executemany", "localstore-apply")


def fmt(xs, digits=0):
    xs = sorted(xs)
    med = statistics.median(xs)
    f = "{:,.%df}" % digits
    return "%s [%s..%s]" % (f.format(med), f.format(xs[0]), f.format(xs[-1]))


def main():
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--people", type=int, default=10000)
    ap.add_argument("--clients", type=int, default=10)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--db", help="server database URL [default: SQLite in the scratch dir]")
    ap.add_argument("--dir", help="scratch directory [default: $TMPDIR]")
    ap.add_argument("--sync-page", type=int, default=500)
    ap.add_argument("--batch-max", type=int, default=500)
    ap.add_argument(
        "--client-log-level",
        default="info",
        help="sync clients' log level (info logs every applied change)",
    )
    ap.add_argument("--timeout", type=float, default=600.0, help="per repetition")
    ap.add_argument("--keep", action="store_true", help="keep the scratch directory")
    ap.add_argument("--quick", action="store_true", help="2000 people, 3 clients, 1 rep")
    ap.add_argument(
        "--one-client",
        type=int,
        metavar="N",
        help="the single-client case: N people to one sync client "
        "(the goal's case: a 100 000-record push)",
    )
    args = ap.parse_args()
    if args.quick:
        args.people, args.clients, args.reps = 2000, 3, 1
    if args.one_client:
        args.people, args.clients = args.one_client, 1

    bench = Bench(args)
    results, refs = [], {k: [] for k in REFERENCES}
    ref_rows = [
        {
            "ssn": "%06d" % i,
            "name": "Name%d" % i,
            "surname": "Surname%d" % i,
            "job": "engineer",
            "salary": str(40000 + i),
            "updated": "2026-01-01T00:00:00.000Z",
        }
        for i in range(args.people)
    ] * 1
    # The reference inserts as many rows as the clients apply in total.
    all_rows = [
        dict(r, ssn="%s-%d" % (r["ssn"], c)) for c in range(args.clients) for r in ref_rows
    ]
    try:
        bench.start_server()
        bench.seed()
        bench.start_clients()
        admin = bench.admin()
        bench.wait_online(admin)
        for rep in range(args.reps):
            r = bench.run_once(admin)
            bench.verify()
            results.append(r)
            print("RESULT " + json.dumps(dict(r, kind="netshare", rep=rep)), flush=True)
            for kind in REFERENCES:
                rows = all_rows if kind != "localstore-apply" else ref_rows * args.clients
                n, dt = reference(kind, rows, bench.dir, args.clients)
                refs[kind].append(n / dt)
                print(
                    "RESULT "
                    + json.dumps(
                        {
                            "kind": kind,
                            "rep": rep,
                            "records": n,
                            "seconds": round(dt, 4),
                            "records_per_s": round(n / dt),
                        }
                    ),
                    flush=True,
                )
        admin.close()
    finally:
        bench.stop()
        if not args.keep:
            shutil.rmtree(bench.dir, ignore_errors=True)

    n = args.people * args.clients
    rates = [r["records_per_s"] for r in results]
    print(
        "\n### personnel SEND * * of %d people to %d sync clients (%d records), server db %s"
        % (args.people, args.clients, n, "SQLite" if not args.db else args.db.split(":")[0])
    )
    print("\n| measure | median [min..max] (n = %d) |" % args.reps)
    print("| --- | --- |")
    print("| queue (SEND * * -> 200 queued), s | %s |" % fmt([r["queue_s"] for r in results], 3))
    print(
        "| queue rate (outbox rows written by SEND), rows/s | %s |"
        % fmt([n / r["queue_s"] for r in results])
    )
    print("| until every client acknowledged, s | %s |" % fmt([r["total_s"] for r in results], 3))
    print("| netshare end to end (SEND -> all acknowledged), records/s | %s |" % fmt(rates))
    print(
        "| delivery (200 queued -> all acknowledged), records/s | %s |"
        % fmt([r["delivery_per_s"] for r in results])
    )
    if all(r["first_applied_s"] is not None for r in results):
        print(
            "| first / last batch applied (client log), s after SEND | %s / %s |"
            % (
                fmt([r["first_applied_s"] for r in results], 3),
                fmt([r["last_applied_s"] for r in results], 3),
            )
        )
    print(
        "| server CPU (SEND, delivery, ACKs), s | %s |"
        % fmt([r["server_cpu_s"] for r in results], 2)
    )
    print(
        "| sync clients' CPU (all clients), s | %s |"
        % fmt([r["clients_cpu_s"] for r in results], 2)
    )
    for kind in REFERENCES:
        ratios = [a / b for a, b in zip(rates, refs[kind], strict=True)]
        delivery = [r["delivery_per_s"] / b for r, b in zip(results, refs[kind], strict=True)]
        print(
            "| reference %s, rows/s | %s (netshare end to end = %.1f %%, delivery = %.1f %% "
            "of it, paired medians) |"
            % (
                kind,
                fmt(refs[kind]),
                100 * statistics.median(ratios),
                100 * statistics.median(delivery),
            )
        )


if __name__ == "__main__":
    main()

"""
Login storm: does a flood of wrong passwords slow everyone else down?

One connection measures PING round trips (sequential, --ping-interval apart)
first with no load (baseline), then while --connections connections send
wrong passwords continuously for --duration seconds: each logs in with a
wrong password until the server closes it (3rd failure: 421), then
reconnects.  Half of them use an existing account (admin), half unknown
names (the dummy-hash path).  Passwords are checked with the production
scrypt cost unless --scrypt-n says otherwise.

By default the server is a real `twistd -n netshare` subprocess (its own
process and GIL, like production); --inprocess runs it in this process
instead (the load generator then shares the reactor and GIL with it).

    .venv/bin/python bench/login_storm.py                   # 50 connections, 10 s
    .venv/bin/python bench/login_storm.py --connections 100 --duration 20
    .venv/bin/python bench/login_storm.py --inprocess --kdf-impl cryptography

Prints p50/p90/p99/max PING latency for both phases, the ratios, and what
the storm got (answers by code, their latency).
"""

import argparse
import os
import shutil
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from twisted.internet import defer, task  # noqa: E402

from netshare.client import connect, quote  # noqa: E402

ADMIN_PASSWORD = "bench-admin-pw"


def percentile(values, q):
    if not values:
        return float("nan")
    s = sorted(values)
    k = min(len(s) - 1, max(0, int(round(q / 100.0 * (len(s) - 1)))))
    return s[k]


def summary(values):
    ms = [v * 1000.0 for v in values]
    return {"n": len(ms), "p50": percentile(ms, 50), "p90": percentile(ms, 90),
            "p99": percentile(ms, 99), "max": max(ms) if ms else float("nan")}


# --- servers -------------------------------------------------------------------

class SubprocessServer:
    def __init__(self, args, data):
        from tests.support import ServerProcess, run_cli
        env = self.env = {
            "NETSHARE_SCRYPT_N": str(args.scrypt_n),
            "NETSHARE_KDF_THREADS": str(args.kdf_threads),
            "NETSHARE_KDF_QUEUE": str(args.kdf_queue),
            "NETSHARE_LOGIN_FAILURE_DELAY": str(args.login_delay),
            "NETSHARE_MAX_PER_IP": str(max(100, args.connections + 10)),
            "NETSHARE_MAX_CONNECTIONS": str(max(1000, args.connections + 10)),
        }
        r = run_cli("init", "--data", data, "--admin-password", ADMIN_PASSWORD, **env)
        if r.returncode != 0:
            raise SystemExit("netshare init failed:\n" + r.stderr)
        self.proc = ServerProcess(data, init=False, env_extra=env)
        self.proc.start()
        self.port = self.proc.ports[args.service]

    def stop(self):
        self.proc.terminate()
        self.proc.kill()

    def describe(self):
        return "twistd subprocess pid %d" % self.proc.proc.pid


class InProcessServer:
    def __init__(self, args, data):
        from tests.inprocess import add_account, start_runtime
        if args.kdf_impl == "cryptography":
            # The implementation this project used first: it holds the GIL
            # for the whole derivation (see netshare/kdf.py).
            import netshare.kdf as kdfmod
            from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

            def gil_scrypt(password, salt, n, r, p, length=32):
                return Scrypt(salt=salt, length=length, n=n, r=r, p=p).derive(password)

            kdfmod.scrypt = gil_scrypt
        self.args = args
        self.rt = start_runtime(data, scrypt_n=args.scrypt_n, kdf_threads=args.kdf_threads,
                                kdf_queue=args.kdf_queue, login_failure_delay=args.login_delay,
                                max_per_ip=max(100, args.connections + 10),
                                max_connections=max(1000, args.connections + 10),
                                history_flush=0.2)
        self._add = add_account(self.rt, "admin", ADMIN_PASSWORD, "admin")

    @defer.inlineCallbacks
    def start(self):
        from tests.inprocess import listen
        from netshare.protocols.base import CommandProtocol
        yield self._add
        self.listener = yield listen(self.rt, CommandProtocol)
        self.port = self.listener.number

    def stop(self):
        from tests.inprocess import stop_runtime
        return stop_runtime(self.rt)

    def describe(self):
        return "in-process (kdf: %s)" % (self.args.kdf_impl,)


# --- load ------------------------------------------------------------------------

class Storm:
    def __init__(self, reactor, port, args):
        self.reactor, self.port, self.args = reactor, port, args
        self.running = True
        self.codes = {}
        self.latency = []
        self.connects = 0
        self.errors = 0
        self.attempts = 0

    @defer.inlineCallbacks
    def worker(self, i):
        user = "admin" if i % 2 else "nobody%d" % i
        while self.running and self.attempts < self.args.max_attempts:
            try:
                c = yield connect("127.0.0.1", self.port, reactor=self.reactor, timeout=30)
            except Exception:
                self.errors += 1
                yield task.deferLater(self.reactor, 0.05, lambda: None)
                continue
            self.connects += 1
            try:
                while self.running:
                    self.attempts += 1
                    t0 = time.perf_counter()
                    resp = yield c.command(quote("LOGIN", user, "wrong-%d-%d" % (i, self.attempts)))
                    self.latency.append(time.perf_counter() - t0)
                    self.codes[resp.code] = self.codes.get(resp.code, 0) + 1
                    if resp.code in (421, 230):
                        break
                    if resp.code == 429:
                        yield task.deferLater(self.reactor, 0.05, lambda: None)
            except ConnectionError:
                pass
            finally:
                if c.transport.connected:
                    c.transport.loseConnection()
                yield c.closed


@defer.inlineCallbacks
def ping_phase(reactor, pinger, seconds, interval):
    rtts = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        t0 = time.perf_counter()
        resp = yield pinger.command("PING")
        rtts.append(time.perf_counter() - t0)
        assert resp.line == "200 pong", resp.line
        yield task.deferLater(reactor, interval, lambda: None)
    return rtts


@defer.inlineCallbacks
def run(reactor, args):
    data = tempfile.mkdtemp(prefix="netshare-bench-")
    server = None
    try:
        if args.inprocess:
            server = InProcessServer(args, data)
            yield server.start()
        else:
            server = SubprocessServer(args, os.path.join(data, "data"))
        pinger = yield connect("127.0.0.1", server.port, reactor=reactor)
        yield ping_phase(reactor, pinger, 0.5, args.ping_interval)  # warm up
        baseline = yield ping_phase(reactor, pinger, args.baseline, args.ping_interval)
        storm = Storm(reactor, server.port, args)
        workers = [storm.worker(i) for i in range(args.connections)]
        started = time.monotonic()
        loaded = yield ping_phase(reactor, pinger, args.duration, args.ping_interval)
        storm.running = False
        yield defer.DeferredList(workers, consumeErrors=True).addTimeout(120, reactor)
        storm_seconds = time.monotonic() - started
        after = yield ping_phase(reactor, pinger, 1.0, args.ping_interval)
        yield pinger.close()
        report(args, server, baseline, loaded, after, storm, storm_seconds)
    finally:
        if server is not None:
            yield defer.maybeDeferred(server.stop)
        shutil.rmtree(data, ignore_errors=True)


def report(args, server, baseline, loaded, after, storm, storm_seconds):
    b, s, a = summary(baseline), summary(loaded), summary(after)
    print("login storm: %d connections, %.0f s, scrypt N=%d r=8 p=1, kdf_threads=%d, "
          "kdf_queue=%d, failure delay %.2f s" % (args.connections, args.duration, args.scrypt_n,
                                                 args.kdf_threads, args.kdf_queue,
                                                 args.login_delay))
    print("server: %s; service port: %s" % (server.describe(), args.service))
    print()
    print("PING round trip (ms)   %6s %8s %8s %8s %8s" % ("n", "p50", "p90", "p99", "max"))
    for name, x in (("no storm", b), ("during storm", s), ("after storm", a)):
        print("  %-20s %6d %8.2f %8.2f %8.2f %8.2f" % (name, x["n"], x["p50"], x["p90"],
                                                       x["p99"], x["max"]))
    print()
    print("ratio storm/no storm:  p50 x%.1f   p99 x%.1f   max x%.1f"
          % (s["p50"] / b["p50"], s["p99"] / b["p99"], s["max"] / b["max"]))
    lat = summary(storm.latency)
    codes = ", ".join("%d: %d" % kv for kv in sorted(storm.codes.items()))
    print("storm: %d LOGINs answered in %.1f s (%.1f/s) over %d connections; codes {%s}; "
          "connect errors %d" % (len(storm.latency), storm_seconds,
                                 len(storm.latency) / storm_seconds, storm.connects, codes,
                                 storm.errors))
    print("storm LOGIN answer (ms): p50 %.0f  p99 %.0f  max %.0f"
          % (lat["p50"], lat["p99"], lat["max"]))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--connections", type=int, default=50)
    p.add_argument("--duration", type=float, default=10.0, help="storm seconds")
    p.add_argument("--baseline", type=float, default=5.0, help="no-storm seconds")
    p.add_argument("--max-attempts", type=int, default=100000,
                   help="stop the storm after this many LOGINs")
    p.add_argument("--scrypt-n", type=int, default=2**17, help="default: production 131072")
    p.add_argument("--kdf-threads", type=int, default=2)
    p.add_argument("--kdf-queue", type=int, default=64)
    p.add_argument("--login-delay", type=float, default=1.0)
    p.add_argument("--ping-interval", type=float, default=0.01)
    p.add_argument("--service", default="files", choices=("files", "personnel"),
                   help="which listener of the subprocess server to use")
    p.add_argument("--inprocess", action="store_true", help="server in this process")
    p.add_argument("--kdf-impl", default="hashlib", choices=("hashlib", "cryptography"),
                   help="with --inprocess: cryptography = the GIL-holding scrypt")
    args = p.parse_args(argv)
    if args.kdf_impl != "hashlib" and not args.inprocess:
        p.error("--kdf-impl needs --inprocess")
    task.react(run, [args])


if __name__ == "__main__":
    main()

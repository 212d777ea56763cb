"""
Login storm: does a flood of wrong passwords slow everyone else down?

One connection measures PING round trips (sequential, --ping-interval apart)
first with no load (baseline), then while --connections connections send
wrong passwords continuously for --duration seconds: each logs in with a
wrong password until the server closes it (3rd failure: 421), then
reconnects.  Half of them use an existing account (admin), half unknown
names (the dummy-hash path).  Passwords are checked with the production
scrypt cost unless --scrypt-n says otherwise.

The whole storm comes from one address (--storm-address, 127.0.0.1).
Meanwhile a legitimate user (alice, an account the storm leaves alone) logs
in with the right password from another loopback address (--legit-address,
127.0.0.2), one attempt at a time, --legit-interval apart, each on a new
connection: the server's password hashing queue is fair between addresses,
so these should get in while the storm runs instead of 429 or a wait
behind the whole backlog.  A few such logins before the storm give the
no-storm figure.  The per-account and per-address login penalties are set
out of the way (--login-free), as they would hold the storm back before it
reached the hashing queue; the PING connection's login deadline too.

By default the server is a real `twistd -n netshare` subprocess (its own
process and GIL, like production); --inprocess runs it in this process
instead (the load generator then shares the reactor and GIL with it).

    .venv/bin/python bench/login_storm.py                   # 50 connections, 10 s
    .venv/bin/python bench/login_storm.py --connections 100 --duration 20
    .venv/bin/python bench/login_storm.py --connections 150   # past the KDF queue bound
    .venv/bin/python bench/login_storm.py --inprocess --kdf-impl cryptography

Prints p50/p90/p99/max PING latency for both phases, the ratios, what
the storm got (answers by code, their latency), and what the legitimate
logins got (how many succeeded, how many got 429, the latency of the
successful ones), without and during the storm.
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
from twisted.internet.endpoints import TCP4ClientEndpoint  # noqa: E402
from twisted.internet.protocol import Factory  # noqa: E402

from netshare.clients.protocol import ClientProtocol, connect, quote  # noqa: E402

ADMIN_PASSWORD = "bench-admin-pw"
LEGIT_USER, LEGIT_PASSWORD = "alice", "bench-alice-pw"


def server_settings(args):
    """The server settings this benchmark sets, as {name: value}.  Only those
    the server knows: a setting added or renamed later is left at its
    default instead of breaking the run."""
    from netshare.config import SETTINGS

    wanted = dict(
        scrypt_n=args.scrypt_n,
        kdf_threads=args.kdf_threads,
        kdf_queue=args.kdf_queue,
        kdf_per_source=args.kdf_per_source,
        login_failure_delay=args.login_delay,
        max_per_ip=max(100, args.connections + 10),
        max_connections=max(1000, args.connections + 10),
        # This measures the password-hashing queue: the per-account and
        # per-address login penalties would hold the storm back before it
        # got there (--login-free 5 for the production setting), and the
        # PING connection never logs in.
        login_free=args.login_free,
        login_timeout=3600,
    )
    known = {s.name for s in SETTINGS}
    return {k: v for k, v in wanted.items() if k in known and v is not None}


def percentile(values, q):
    if not values:
        return float("nan")
    s = sorted(values)
    k = min(len(s) - 1, max(0, int(round(q / 100.0 * (len(s) - 1)))))
    return s[k]


def summary(values):
    ms = [v * 1000.0 for v in values]
    return {
        "n": len(ms),
        "p50": percentile(ms, 50),
        "p90": percentile(ms, 90),
        "p99": percentile(ms, 99),
        "max": max(ms) if ms else float("nan"),
    }


# --- servers -------------------------------------------------------------------


class SubprocessServer:
    def __init__(self, args, data):
        from tests.support import ServerProcess, run_cli

        env = self.env = {
            "NETSHARE_" + k.upper(): str(v) for k, v in server_settings(args).items()
        }
        r = run_cli("init", "--data", data, "--admin-password", ADMIN_PASSWORD, **env)
        if r.returncode != 0:
            raise SystemExit("netshare init failed:\n" + r.stderr)
        r = run_cli(
            "user", "add", LEGIT_USER, "--data", data, NETSHARE_PASSWORD=LEGIT_PASSWORD, **env
        )
        if r.returncode != 0:
            raise SystemExit("netshare user add failed:\n" + r.stderr)
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
            from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

            import netshare.kdf as kdfmod

            def gil_scrypt(password, salt, n, r, p, length=32):
                return Scrypt(salt=salt, length=length, n=n, r=r, p=p).derive(password)

            kdfmod.scrypt = gil_scrypt
        self.args = args
        self.rt = start_runtime(data, history_flush=0.2, **server_settings(args))
        self._add = defer.gatherResults(
            [
                add_account(self.rt, "admin", ADMIN_PASSWORD, "admin"),
                add_account(self.rt, LEGIT_USER, LEGIT_PASSWORD),
            ]
        )

    @defer.inlineCallbacks
    def start(self):
        from netshare.protocols.line import CommandProtocol
        from tests.inprocess import listen

        yield self._add
        self.listener = yield listen(self.rt, CommandProtocol)
        self.port = self.listener.number

    def stop(self):
        from tests.inprocess import stop_runtime

        return stop_runtime(self.rt)

    def describe(self):
        return "in-process (kdf: %s)" % (self.args.kdf_impl,)


# --- load ------------------------------------------------------------------------


@defer.inlineCallbacks
def connect_from(reactor, host, port, local, timeout=30):
    """Like L{netshare.clients.protocol.connect}, from the local address C{local}: the
    server tells clients apart by address (any 127.x.y.z is loopback)."""
    ep = TCP4ClientEndpoint(reactor, host, port, timeout=timeout, bindAddress=(local, 0))
    proto = yield ep.connect(Factory.forProtocol(ClientProtocol))
    proto.greeting.addTimeout(timeout, reactor)
    try:
        yield proto.greeting
    except Exception:
        proto.transport.abortConnection()
        raise
    return proto


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
                c = yield connect_from(
                    self.reactor, "127.0.0.1", self.port, self.args.storm_address
                )
            except Exception:
                self.errors += 1
                yield task.deferLater(self.reactor, 0.05, lambda: None)
                continue
            self.connects += 1
            try:
                while self.running:
                    self.attempts += 1
                    t0 = time.perf_counter()
                    wrong = "wrong-%d-%d" % (i, self.attempts)
                    resp = yield c.command(quote("LOGIN", user, wrong))
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


class Legit:
    """A user with the right password, from another address: one LOGIN at a
    time, each on a new connection, C{--legit-interval} apart."""

    def __init__(self, reactor, port, args):
        self.reactor, self.port, self.args = reactor, port, args
        self.running = True
        self.codes = {}
        self.ok_latency = []  # seconds, of the LOGINs answered 230
        self.errors = 0  # could not connect, or the connection dropped

    @property
    def attempts(self):
        return sum(self.codes.values()) + self.errors

    @defer.inlineCallbacks
    def attempt(self):
        try:
            c = yield connect_from(self.reactor, "127.0.0.1", self.port, self.args.legit_address)
        except Exception:
            self.errors += 1
            return
        try:
            t0 = time.perf_counter()
            resp = yield c.command(quote("LOGIN", LEGIT_USER, LEGIT_PASSWORD))
            dt = time.perf_counter() - t0
            self.codes[resp.code] = self.codes.get(resp.code, 0) + 1
            if resp.code == 230:
                self.ok_latency.append(dt)
        except ConnectionError:
            self.errors += 1
        finally:
            if c.transport.connected:
                c.transport.loseConnection()
            yield c.closed

    @defer.inlineCallbacks
    def loop(self, count=None):
        """Until C{running} is False (or C{count} attempts)."""
        while self.running and (count is None or self.attempts < count):
            yield self.attempt()
            yield task.deferLater(self.reactor, self.args.legit_interval, lambda: None)


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
        calm = Legit(reactor, server.port, args)
        yield calm.loop(count=3).addTimeout(120, reactor)
        storm = Storm(reactor, server.port, args)
        workers = [storm.worker(i) for i in range(args.connections)]
        started = time.monotonic()
        legit = Legit(reactor, server.port, args)
        # Let the storm fill the queue before the first legitimate attempt.
        legit_loop = task.deferLater(reactor, min(0.5, args.duration / 4), legit.loop)
        loaded = yield ping_phase(reactor, pinger, args.duration, args.ping_interval)
        storm.running = legit.running = False
        yield defer.DeferredList(workers + [legit_loop], consumeErrors=True).addTimeout(
            120, reactor
        )
        storm_seconds = time.monotonic() - started
        after = yield ping_phase(reactor, pinger, 1.0, args.ping_interval)
        yield pinger.close()
        report(args, server, baseline, loaded, after, storm, storm_seconds, calm, legit)
    finally:
        if server is not None:
            yield defer.maybeDeferred(server.stop)
        shutil.rmtree(data, ignore_errors=True)


def report(args, server, baseline, loaded, after, storm, storm_seconds, calm, legit):
    b, s, a = summary(baseline), summary(loaded), summary(after)
    print(
        "login storm: %d connections, %.0f s, scrypt N=%d r=8 p=1, kdf_threads=%d, "
        "kdf_queue=%d, failure delay %.2f s"
        % (
            args.connections,
            args.duration,
            args.scrypt_n,
            args.kdf_threads,
            args.kdf_queue,
            args.login_delay,
        )
    )
    print("server: %s; service port: %s" % (server.describe(), args.service))
    settings = server_settings(args)
    print(
        "server settings: kdf_per_source=%s, login_free=%s, login_timeout=%s"
        % tuple(
            settings.get(k, "default") for k in ("kdf_per_source", "login_free", "login_timeout")
        )
    )
    print()
    print("PING round trip (ms)   %6s %8s %8s %8s %8s" % ("n", "p50", "p90", "p99", "max"))
    for name, x in (("no storm", b), ("during storm", s), ("after storm", a)):
        print(
            "  %-20s %6d %8.2f %8.2f %8.2f %8.2f"
            % (name, x["n"], x["p50"], x["p90"], x["p99"], x["max"])
        )
    print()
    print(
        "ratio storm/no storm:  p50 x%.1f   p99 x%.1f   max x%.1f"
        % (s["p50"] / b["p50"], s["p99"] / b["p99"], s["max"] / b["max"])
    )
    lat = summary(storm.latency)
    codes = ", ".join("%d: %d" % kv for kv in sorted(storm.codes.items()))
    print(
        "storm: %d LOGINs answered in %.1f s (%.1f/s) over %d connections; codes {%s}; "
        "connect errors %d"
        % (
            len(storm.latency),
            storm_seconds,
            len(storm.latency) / storm_seconds,
            storm.connects,
            codes,
            storm.errors,
        )
    )
    print(
        "storm LOGIN answer (ms): p50 %.0f  p99 %.0f  max %.0f"
        % (lat["p50"], lat["p99"], lat["max"])
    )
    print()
    print(
        "legitimate LOGIN (right password) from %s, storm from %s, one at a time "
        "%.2f s apart:" % (args.legit_address, args.storm_address, args.legit_interval)
    )
    for name, x in (("no storm", calm), ("during storm", legit)):
        ok = summary(x.ok_latency)
        other = sum(v for k, v in x.codes.items() if k not in (230, 429))
        latency = (
            "p50 %.0f  p99 %.0f  max %.0f" % (ok["p50"], ok["p99"], ok["max"])
            if ok["n"]
            else "none"
        )
        print(
            "  %-13s %4d attempts: %4d ok (230), %4d refused (429), %d other, "
            "%d connect errors; 230 answer (ms): %s"
            % (
                name,
                x.attempts,
                x.codes.get(230, 0),
                x.codes.get(429, 0),
                other,
                x.errors,
                latency,
            )
        )


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--connections", type=int, default=50)
    p.add_argument("--duration", type=float, default=10.0, help="storm seconds")
    p.add_argument("--baseline", type=float, default=5.0, help="no-storm seconds")
    p.add_argument(
        "--max-attempts", type=int, default=100000, help="stop the storm after this many LOGINs"
    )
    p.add_argument("--scrypt-n", type=int, default=2**17, help="default: production 131072")
    p.add_argument("--kdf-threads", type=int, default=2)
    p.add_argument("--kdf-queue", type=int, default=64)
    p.add_argument(
        "--kdf-per-source",
        type=int,
        default=None,
        help="password hashes one address may have pending (default: the server's, 8)",
    )
    p.add_argument("--login-delay", type=float, default=1.0)
    p.add_argument(
        "--login-free",
        type=int,
        default=1000000,
        help="failed logins per account/address before the login penalties "
        "start (default: out of the way; the server's default is 5)",
    )
    p.add_argument("--ping-interval", type=float, default=0.01)
    p.add_argument(
        "--storm-address", default="127.0.0.1", help="local address the storm connects from"
    )
    p.add_argument(
        "--legit-address",
        default="127.0.0.2",
        help="local address the legitimate logins connect from",
    )
    p.add_argument(
        "--legit-interval", type=float, default=0.2, help="pause between two legitimate logins"
    )
    p.add_argument(
        "--service",
        default="files",
        choices=("files", "personnel"),
        help="which listener of the subprocess server to use",
    )
    p.add_argument("--inprocess", action="store_true", help="server in this process")
    p.add_argument(
        "--kdf-impl",
        default="hashlib",
        choices=("hashlib", "cryptography"),
        help="with --inprocess: cryptography = the GIL-holding scrypt",
    )
    args = p.parse_args(argv)
    if args.kdf_impl != "hashlib" and not args.inprocess:
        p.error("--kdf-impl needs --inprocess")
    task.react(run, [args])


if __name__ == "__main__":
    main()

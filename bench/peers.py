#!/usr/bin/env python3
"""
netshare beside its peers, in one run (issue 14 item 4).

Starts a real `twistd -n netshare` and, on free loopback ports, the reference
servers, drives every one with the same client code, and prints per workload
and client count each server's rate, p50 and p99, and netshare's ratio to each
reference (paired per repetition: the servers are measured round-robin within
a repetition, in a rotated order, so the machine's noise hits all of them).

Servers (all bound to 127.0.0.1, started here, stopped by PID at the end):
  netshare      `twistd -n netshare` (the twistd and `netshare init` of the
                virtualenv this script runs in, e.g. .venv/bin/twistd) with
                the package from --netshare-tree (default: the repository
                this script is in), a fresh data dir made by
                `netshare init`, SQLite (synchronous=full, the default) or
                --db; TLS off, registration open (accounts are made with
                REGISTER), cheap account hashing (--scrypt-n 1024), connection
                caps, flood limits and login penalties raised out of the way.
                A fresh server per workload.
  twisted       bench/peers_refs.py: a bare Twisted LineReceiver answering
                every line with `200 pong` (TCP_NODELAY).
  redis         redis-server, no persistence (`--save '' --appendonly no`,
                pub/sub output buffers unlimited), for PING and PUBLISH.
  redis-aof     redis-server `--appendonly yes --appendfsync always` with its
                AOF in the scratch dir (on disk), for XADD.
  vsftpd        anonymous, passive, root in the scratch dir (same file system
                as netshare's data), sendfile on (skipped when vsftpd is not
                installed; --install-vsftpd installs it with apt-get).

Client: separate worker processes (fork), each an epoll loop over plain
non-TLS sockets; closed loop, one command in flight per connection; the
clock starts after a warm-up; rate = replies completed in the window /
window; latency = request written -> last reply byte read.  Workloads:
  ping      PING at 1, 100, 1000 connections: netshare (personnel port,
            logged in, so each PING is a history row and a log event, as for
            any client), twisted (`200 pong`), redis (inline PING).
  tweet     netshare ttweet `TWEET "<100 chars>"` (each connection logged in
            as its own account; `200 ok` = stored) vs redis-aof `XADD`.
  add       netshare personnel `ADD ssn=.. name=.. surname=.. job=..
            salary=..` (admin; `201` = stored) vs redis-aof `XADD`.
            tweet and add at 1 and 100 connections; with --db also on
            PostgreSQL (a fresh database, dropped at the end).
  fanout    one publisher that waits for each acknowledgement (netshare
            `TWEET .. #chan` -> `200 ok` = stored; redis `PUBLISH` -> `:n`),
            --fanout-window publishes in flight (default 1), N subscribers
            (netshare: guests, `SUBSCRIBE #chan`, one `600` line each;
            redis: `SUBSCRIBE chan`) at N = 1, 100, 1000; rate =
            deliveries received per second; latency = publish -> delivery
            (one sampled delivery per read).  The publisher is held back
            when the subscribers fall behind (bounded backlog).
  upload, download   a --size-mib file (default 1 GiB) from tmpfs: netshare
            `UPLOAD name size sha256= replace=yes` (unprotected; 350, body
            by sendfile, until `226`) and `DOWNLOAD` vs vsftpd `STOR` /
            `RETR` with the same client socket code (sendfile up, recv_into
            1 MiB down), from the command to the final 226; each server's
            stored copy is read once before its download (page cache warm
            for both).  MB/s = 10^6 bytes/s.

Caveat: this machine has 2 vCPUs shared by the server, the client workers
and anything else running.  The client's CPU% is printed beside each row: a
row whose client CPU is near 100 % per worker process is client-bound (it
understates the server, which flatters netshare's ratio).

Usage:
  .venv/bin/python bench/peers.py                   # everything, 3 reps (~6 min on 2 vCPUs)
  .venv/bin/python bench/peers.py --quick           # short windows, 1 rep, 128 MiB (~1-2 min)
  .venv/bin/python bench/peers.py --only ping,tweet --clients 1,100 --reps 5
  .venv/bin/python bench/peers.py --db postgresql+psycopg://postgres@127.0.0.1:5432/test
  .venv/bin/python bench/peers.py --netshare-tree /tmp/snapshot   # a stable copy
"""

import argparse
import array
import collections
import ctypes
import hashlib
import json
import multiprocessing
import os
import platform
import resource
import select
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import uuid

from benchlib import free_port  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
LOOPBACK = "127.0.0.1"
MiB = 1024 * 1024
ADMIN_PW = "peers-admin-pw"
USER_PW = "peers-user-pw"
PAYLOAD = "x" * 100
WORKLOADS = ("ping", "tweet", "add", "fanout", "upload", "download")
GROUPS = {"durable": ("tweet", "add"), "files": ("upload", "download")}
DEFAULT_CLIENTS = {"ping": [1, 100, 1000], "durable": [1, 100], "fanout": [1, 100, 1000]}

_CTX = multiprocessing.get_context("fork")


# --------------------------------------------------------------------- small helpers


def set_pdeathsig(sig=signal.SIGTERM):
    """Ask the kernel to send C{sig} to this process when its parent dies
    (Linux prctl PR_SET_PDEATHSIG), so nothing outlives a killed run."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(sig), 0, 0, 0)
    except (OSError, AttributeError):
        pass


def raise_nofile():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def cpu_seconds(pid):
    """utime + stime of a process and all its threads so far (/proc)."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def percentile(sorted_values, p):
    if not sorted_values:
        return float("nan")
    k = (len(sorted_values) - 1) * p / 100.0
    lo = int(k)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (k - lo)


def fs_type(path):
    best, typ = "", "?"
    real = os.path.realpath(path)
    try:
        with open("/proc/mounts") as f:
            for line in f:
                parts = line.split()
                mnt, t = parts[1], parts[2]
                inside = real == mnt or real.startswith(mnt.rstrip("/") + "/")
                if inside and len(mnt) >= len(best):
                    best, typ = mnt, t
    except OSError:
        pass
    return typ


def loadavg():
    return " ".join("%.2f" % x for x in os.getloadavg())


def sleep_until_ns(t):
    while True:
        d = (t - time.perf_counter_ns()) / 1e9
        if d <= 0:
            return
        time.sleep(min(d, 0.5))


class Stopped(Exception):
    """SIGTERM or the run's time bound."""


# --------------------------------------------------------------------- processes


class Managed:
    """A server process started here; stopped by its own PID (and its
    children's, e.g. vsftpd sessions), never by name."""

    def __init__(self, name, argv, log_path, env=None, cwd=None, pipe_stdout=False):
        self.name = name
        self.argv = argv
        self.log_path = log_path
        self.log = open(log_path, "ab")
        self.proc = subprocess.Popen(
            argv,
            env=env,
            cwd=cwd,
            stdout=subprocess.PIPE if pipe_stdout else self.log,
            stderr=self.log,
            preexec_fn=set_pdeathsig,
        )
        self.pid = self.proc.pid

    def ready_line(self, prefix, timeout=30):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            r, _, _ = select.select([self.proc.stdout], [], [], 0.2)
            if r:
                line = self.proc.stdout.readline().decode("utf-8", "replace")
                if not line:
                    break
                if line.startswith(prefix):
                    return line.strip()
            if self.proc.poll() is not None:
                break
        raise RuntimeError("%s did not start (see %s)" % (self.name, self.log_path))

    def wait_port(self, port, timeout=60):
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    "%s exited with status %s; its output:\n%s"
                    % (self.name, self.proc.returncode, self.tail())
                )
            try:
                with socket.create_connection((LOOPBACK, port), timeout=1):
                    return
            except OSError as e:
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        "%s did not listen on %d within %d s" % (self.name, port, timeout)
                    ) from e
                time.sleep(0.05)

    def tail(self, n=3000):
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode("utf-8", "replace")[-n:]
        except OSError:
            return ""

    def descendants(self):
        out, todo = [], [self.pid]
        while todo:
            pid = todo.pop()
            try:
                for tid in os.listdir("/proc/%d/task" % pid):
                    with open("/proc/%d/task/%s/children" % (pid, tid)) as f:
                        kids = [int(x) for x in f.read().split()]
                    out += kids
                    todo += kids
            except OSError:
                pass
        return out

    def stop(self, timeout=30):
        """SIGTERM the descendants (deepest first, so each parent reaps its
        own: vsftpd's sessions), then the process; SIGKILL what is still
        there after C{timeout}."""
        kids = self.descendants()
        for k in reversed(kids):
            _signal_pid(k, signal.SIGTERM)
        _wait_gone(kids, 5)
        if self.proc.poll() is None:
            try:
                self.proc.send_signal(signal.SIGTERM)
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        left = _wait_gone(kids + self.descendants(), 5)
        for k in left:
            _signal_pid(k, signal.SIGKILL)
        if self.proc.stdout:
            self.proc.stdout.close()
        self.log.close()


def _signal_pid(pid, sig):
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _alive(pid):
    """Running (not gone, not a zombie)."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _wait_gone(pids, timeout):
    """Wait up to C{timeout} s for C{pids} to exit; returns those still running."""
    deadline = time.monotonic() + timeout
    left = [p for p in pids if _alive(p)]
    while left and time.monotonic() < deadline:
        time.sleep(0.05)
        left = [p for p in left if _alive(p)]
    return left


class Run:
    """Everything this run started: servers, worker processes, temp dirs,
    scratch databases.  cleanup() undoes all of it (also on Ctrl-C)."""

    def __init__(self, args):
        self.args = args
        self.servers = []
        self.workers = []
        self.dbs = []
        self.dirs = []
        base = args.dir or tempfile.gettempdir()
        self.work = tempfile.mkdtemp(prefix="netshare-peers-", dir=base)
        self.dirs.append(self.work)

    def subdir(self, name):
        d = os.path.join(self.work, name)
        os.makedirs(d, exist_ok=True)
        return d

    def start(self, name, argv, **kw):
        m = Managed(name, argv, os.path.join(self.work, name + ".log"), **kw)
        self.servers.append(m)
        return m

    def stop(self, m):
        if m in self.servers:
            self.servers.remove(m)
        m.stop()

    def cleanup(self):
        for w in self.workers:
            if w.is_alive():
                w.terminate()
                w.join(5)
                if w.is_alive():
                    w.kill()
                    w.join(5)
        self.workers = []
        for m in reversed(self.servers):
            try:
                m.stop()
            except Exception as e:  # keep cleaning up
                print("warning: stopping %s: %s" % (m.name, e), file=sys.stderr)
        self.servers = []
        for drop in reversed(self.dbs):
            try:
                drop()
            except Exception as e:
                print("warning: dropping a scratch database: %s" % e, file=sys.stderr)
        self.dbs = []
        for d in self.dirs:
            shutil.rmtree(d, ignore_errors=True)
        self.dirs = []


# --------------------------------------------------------------------- servers


def start_redis(run, name, durable):
    port = free_port()
    d = run.subdir(name)
    argv = [
        "redis-server",
        "--port",
        str(port),
        "--bind",
        LOOPBACK,
        "--daemonize",
        "no",
        "--protected-mode",
        "no",
        "--save",
        "",
        "--logfile",
        "",
        "--dir",
        d,
        "--maxclients",
        "10000",
        "--client-output-buffer-limit",
        "pubsub",
        "0",
        "0",
        "0",
    ]
    if durable:
        argv += [
            "--appendonly",
            "yes",
            "--appendfsync",
            "always",
            "--auto-aof-rewrite-percentage",
            "0",
        ]
    else:
        argv += ["--appendonly", "no"]
    m = run.start(name, argv)
    m.wait_port(port)
    m.port = port
    return m


def start_pong(run):
    m = run.start(
        "twisted", [sys.executable, os.path.join(HERE, "peers_refs.py"), "pong"], pipe_stdout=True
    )
    m.port = int(m.ready_line("PORT").split()[1])
    return m


def _venv_script(name):
    """The console script C{name} beside this interpreter (the project's
    .venv/bin/twistd, .venv/bin/netshare), or None."""
    path = os.path.join(os.path.dirname(sys.executable), name)
    return path if os.access(path, os.X_OK) else None


def twistd_argv():
    """The venv's twistd; the same entry point through this interpreter when
    the script is not there."""
    exe = _venv_script("twistd")
    return (
        [exe] if exe else [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]
    )


def netshare_cli_argv():
    """The venv's `netshare` operator command (or `python -m netshare.cli`)."""
    exe = _venv_script("netshare")
    return [exe] if exe else [sys.executable, "-m", "netshare.cli"]


def netshare_env(tree, **extra):
    env = dict(os.environ)
    env["PYTHONPATH"] = tree + os.pathsep + env.get("PYTHONPATH", "")
    env["NETSHARE_SCRYPT_N"] = "1024"  # cheap account hashing: logins are not measured
    env["NETSHARE_FILE_SCRYPT_N"] = "1024"
    env.update(extra)
    return env


def check_tree(tree):
    """Which netshare (package and twistd plugin module) the server will
    load from C{tree}; exits if it is not the tree's own."""
    code = (
        "import netshare, importlib\n"
        "from twisted.plugin import getPlugins\n"
        "from twisted.application.service import IServiceMaker\n"
        "mods = [importlib.import_module(p.module).__file__ for p in getPlugins(IServiceMaker)"
        " if p.tapname == 'netshare']\n"
        "print(netshare.__file__); print(mods[0] if mods else 'NO PLUGIN')\n"
    )
    r = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tree,
        env=netshare_env(tree),
        capture_output=True,
        text=True,
        timeout=120,
    )
    lines = r.stdout.split()
    if r.returncode or len(lines) < 2:
        raise SystemExit("cannot import netshare from %s:\n%s" % (tree, r.stderr[-3000:]))
    real = os.path.realpath(tree) + os.sep
    for f in lines[:2]:
        if not os.path.realpath(f).startswith(real):
            raise SystemExit(
                "netshare would be loaded from %s, not from --netshare-tree %s" % (f, tree)
            )
    return lines[0], lines[1]


class Netshare:
    """A fresh netshare: init, start, accounts."""

    def __init__(self, run, name, services, db=None, extra=()):
        self.run = run
        self.name = name
        self.tree = run.args.netshare_tree
        self.dir = run.subdir(name)
        self.data = os.path.join(self.dir, "data")
        self.db = db
        self.ports = {s: free_port() for s in services}
        env = netshare_env(self.tree, NETSHARE_PASSWORD=ADMIN_PW)
        cmd = netshare_cli_argv() + ["init", "--data", self.data]
        if db:
            cmd += ["--db", db]
        r = subprocess.run(
            cmd, cwd=self.tree, env=env, capture_output=True, text=True, timeout=180
        )
        if r.returncode:
            raise RuntimeError("netshare init failed: %s" % (r.stderr or r.stdout)[-3000:])
        caps = str(run.args.max_conns)
        argv = twistd_argv() + ["--pidfile=", "-n", "netshare", "--data", self.data]
        if db:
            argv += ["--db", db]
        for svc in ("personnel", "files", "ttweet"):
            argv += [
                "--" + svc,
                ("tcp:%d:interface=%s" % (self.ports[svc], LOOPBACK))
                if svc in self.ports
                else "none",
            ]
        argv += [
            "--manhole",
            "none",
            "--web",  # (a second server would clash on 7005)
            "none",
            "--registration",
            "open",
            "--scrypt-n",
            "1024",
            "--max-connections",
            caps,
            "--max-per-ip",
            caps,
            "--kdf-per-source",
            "64",
            "--kdf-queue",
            "1024",
            "--login-free",
            "1000000",
            "--login-timeout",
            "3600",
            "--idle-timeout",
            "3600",
            "--max-output",
            "64MiB",
            "--flood-burst",
            "1000000000",
            "--flood-rate",
            "1000000000",
            "--flood-address-burst",
            "1000000000",
            "--flood-address-rate",
            "1000000000",
        ]
        argv += list(extra)
        self.proc = run.start(name, argv, env=env, cwd=self.tree)
        self.pid = self.proc.pid
        for p in self.ports.values():
            self.proc.wait_port(p)

    def register(self, names):
        """REGISTER the accounts (password USER_PW) over the wire."""
        svc = next(iter(self.ports))
        c = LineClient(self.ports[svc])
        c.expect("220")
        for n in names:
            c.cmd("REGISTER %s %s" % (n, USER_PW), "201")
        c.close()


def scratch_postgres(run, url):
    """A fresh PostgreSQL database beside the one C{url} names (dropped at
    the end of the run); returns its URL."""
    import sqlalchemy as sa

    u = sa.engine.make_url(url)
    name = "netshare_peers_%s" % uuid.uuid4().hex[:10]
    admin = sa.create_engine(
        url,
        isolation_level="AUTOCOMMIT",
        poolclass=sa.pool.NullPool,
        connect_args={"connect_timeout": 10},
    )
    with admin.connect() as conn:
        conn.exec_driver_sql('CREATE DATABASE "%s"' % name)

    def drop():
        with admin.connect() as conn:
            conn.exec_driver_sql('DROP DATABASE IF EXISTS "%s" WITH (FORCE)' % name)
        admin.dispose()

    run.dbs.append(drop)
    return u.set(database=name).render_as_string(hide_password=False)


VSFTPD_CONF = """\
listen=YES
listen_ipv6=NO
listen_address=127.0.0.1
listen_port={port}
background=NO
anonymous_enable=YES
local_enable=NO
write_enable=YES
anon_upload_enable=YES
anon_other_write_enable=YES
anon_mkdir_write_enable=NO
no_anon_password=YES
anon_root={root}
anon_umask=022
secure_chroot_dir={empty}
pasv_enable=YES
pasv_address=127.0.0.1
pasv_min_port={pmin}
pasv_max_port={pmax}
connect_from_port_20=NO
seccomp_sandbox=NO
isolate=NO
isolate_network=NO
xferlog_enable=NO
dirmessage_enable=NO
use_sendfile=YES
"""


def vsftpd_available(args):
    if shutil.which("vsftpd") or os.path.exists("/usr/sbin/vsftpd"):
        return True
    if args.install_vsftpd:
        print("# installing vsftpd (apt-get install -y vsftpd) ...", flush=True)
        r = subprocess.run(
            ["apt-get", "install", "-y", "vsftpd"], capture_output=True, text=True, timeout=600
        )
        if r.returncode:
            subprocess.run(["apt-get", "update"], capture_output=True, timeout=600)
            r = subprocess.run(
                ["apt-get", "install", "-y", "vsftpd"], capture_output=True, text=True, timeout=600
            )
        if r.returncode:
            print("# vsftpd install failed: %s" % r.stderr[-500:], flush=True)
        return bool(shutil.which("vsftpd") or os.path.exists("/usr/sbin/vsftpd"))
    return False


def start_vsftpd(run):
    exe = shutil.which("vsftpd") or "/usr/sbin/vsftpd"
    base = run.subdir("vsftpd")
    root, pub, empty = (os.path.join(base, x) for x in ("root", "root/pub", "empty"))
    for d in (root, pub, empty):
        os.makedirs(d, exist_ok=True)
    os.chmod(root, 0o755)
    os.chmod(empty, 0o755)
    os.chmod(pub, 0o777)
    port = free_port()
    pmin = 40000 + (os.getpid() % 2000) * 10
    conf = os.path.join(base, "vsftpd.conf")
    with open(conf, "w") as f:
        f.write(VSFTPD_CONF.format(port=port, root=root, empty=empty, pmin=pmin, pmax=pmin + 9))
    m = run.start("vsftpd", [exe, conf])
    m.wait_port(port)
    m.port = port
    m.pub = pub
    return m


# --------------------------------------------------------------------- blocking clients


class LineClient:
    """A blocking line connection (setup, files)."""

    def __init__(self, port, timeout=120):
        self.sock = socket.create_connection((LOOPBACK, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""

    def line(self):
        while b"\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise RuntimeError("server closed the connection (buffered %r)" % self.buf[:200])
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return line.rstrip(b"\r").decode("utf-8", "replace")

    def reply(self):
        """One reply; FTP and netshare both mark continuation with '-'."""
        lines = [self.line()]
        while lines[-1][3:4] == "-":
            lines.append(self.line())
        return lines[-1]

    def expect(self, code):
        r = self.reply()
        if not r.startswith(code):
            raise RuntimeError("expected %s, got %r" % (code, r))
        return r

    def cmd(self, text, code):
        self.sock.sendall(text.encode("utf-8") + b"\r\n")
        return self.expect(code)

    def close(self):
        self.sock.close()


# --------------------------------------------------------------------- load workers


def _read_lines(sock, n, buf, deadline):
    while buf.count(b"\n") < n:
        sock.settimeout(max(0.05, deadline - time.monotonic()))
        try:
            chunk = sock.recv(65536)
        except socket.timeout as e:
            raise RuntimeError("setup: no reply in time (buffered %r)" % buf[:200]) from e
        if not chunk:
            raise RuntimeError("setup: server closed the connection (buffered %r)" % buf[:300])
        buf += chunk
    parts = buf.split(b"\n")
    return parts[:n], b"\n".join(parts[n:])


def open_conns(port, idxs, greeting, steps_of, window=8, timeout=300):
    """Connect len(idxs) sockets and take each through its setup: C{greeting}
    lines to read, then C{steps_of(i)} = [(line, n reply lines, ok first
    byte(s), retry on a 555)], C{window} connections at a time.  Returns
    [(socket, leftover bytes)]."""
    deadline = time.monotonic() + timeout
    socks = []
    for _ in idxs:
        s = socket.create_connection((LOOPBACK, port), timeout=30)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        socks.append(s)
    bufs = [b""] * len(socks)
    for b in range(0, len(socks), window):
        part = range(b, min(b + window, len(socks)))
        if greeting:
            for j in part:
                lines, bufs[j] = _read_lines(socks[j], greeting, bufs[j], deadline)
                if not lines[0].startswith(b"2"):
                    raise RuntimeError("greeting refused: %r" % lines[0])
        steps = {j: steps_of(idxs[j]) for j in part}
        for k in range(len(steps[part[0]])):
            for j in part:
                socks[j].sendall(steps[j][k][0])
            for j in part:
                line, n, ok, retry = steps[j][k]
                while True:
                    lines, bufs[j] = _read_lines(socks[j], n, bufs[j], deadline)
                    if lines[0][:1] in ok:
                        break
                    if retry and lines[0].startswith(b"555") and time.monotonic() < deadline:
                        time.sleep(0.1)  # the previous run's session not gone yet
                        socks[j].sendall(line)
                        continue
                    raise RuntimeError("setup %r refused: %r" % (line[:60], lines[0][:200]))
    for s in socks:
        s.settimeout(None)
    return list(zip(socks, bufs, strict=True))


def loop_rr(conns, idxs, spec, t0, t1, drain_s):
    """Closed loop, one request in flight per connection."""
    ep = select.epoll(len(conns) + 1)
    reply_lines = spec["reply_lines"]
    okb = spec["ok"]
    clock = time.perf_counter_ns
    read, write = os.read, os.write
    need, tsent, tmpl, ctr = {}, {}, {}, {}
    counted = spec["counter"]
    for i, (s, left) in enumerate(conns):
        if left:
            raise RuntimeError("unexpected data after setup: %r" % left[:200])
        fd = s.fileno()
        ep.register(fd, select.EPOLLIN)
        tmpl[fd] = spec["request"](idxs[i])
        ctr[fd] = 0
    lat = []
    count = 0
    cpu0 = cpu1 = None
    for fd in tmpl:
        req = tmpl[fd] % ctr[fd] if counted else tmpl[fd]
        ctr[fd] += 1
        tsent[fd] = clock()
        write(fd, req)
        need[fd] = reply_lines
    active = len(tmpl)
    hard_end = t1 + int(drain_s * 1e9)
    while active:
        evs = ep.poll(0.5)
        now = clock()
        if cpu0 is None and now >= t0:
            cpu0 = time.process_time()
        if cpu1 is None and now >= t1:
            cpu1 = time.process_time()
        if not evs:
            if now > hard_end:
                break
            continue
        for fd, _ in evs:
            data = read(fd, 65536)
            if not data:
                raise RuntimeError("server closed a connection")
            n = need[fd]
            if n == reply_lines and data[0] not in okb:
                raise RuntimeError("refused: %r" % data[:200])
            n -= data.count(b"\n")
            if n > 0:
                need[fd] = n
                continue
            if now <= t1:
                if now >= t0:
                    count += 1
                    lat.append(now - tsent[fd])
                req = tmpl[fd] % ctr[fd] if counted else tmpl[fd]
                ctr[fd] += 1
                tsent[fd] = clock()
                write(fd, req)
                need[fd] = reply_lines
            else:
                ep.unregister(fd)
                active -= 1
    if cpu1 is None:
        cpu1 = time.process_time()
    ep.close()
    return {
        "count": count,
        "lat": array.array("q", lat).tobytes(),
        "cpu": (cpu1 - (cpu0 if cpu0 is not None else cpu1)),
        "unfinished": active,
    }


def loop_fanout(conns, pub, spec, wid, shared, nworkers, t0, t1, drain_s):
    """Subscribers (and, in worker 0, the publisher) in one epoll loop."""
    ep = select.epoll(len(conns) + 2)
    clock = time.perf_counter_ns
    read, write = os.read, os.write
    lpm = spec["lpm"]
    nsubs_total = spec["nsubs"]
    sub_fds = set()
    lines_total = 0
    for s, _left in conns:
        fd = s.fileno()
        ep.register(fd, select.EPOLLIN)
        sub_fds.add(fd)
    mine = len(sub_fds)
    lines_win = 0
    lat = []
    ack_lat = []
    pfd = None
    published = acked = 0
    inflight = collections.deque()
    window = spec["window"]
    lag_lines = spec["lag"] * lpm
    tmpl = spec["publish"]
    okb = spec["ack_ok"]
    pub_win = 0
    if pub is not None:
        pfd = pub[0].fileno()
        ep.register(pfd, select.EPOLLIN)
    cpu0 = cpu1 = None
    stopped = False
    hard_end = t1 + int(drain_s * 1e9)
    pidx = nworkers  # shared[nworkers] = published, [nworkers+1] = publisher done

    def try_publish():
        nonlocal published
        while len(inflight) < window:
            total = 0
            for k in range(nworkers):
                total += shared[k]
            if published * nsubs_total * lpm - total > lag_lines:
                return True  # held back: subscribers behind
            t = clock()
            write(pfd, tmpl % t)
            inflight.append(t)
            published += 1
            shared[pidx] = published
        return False

    held = try_publish() if pfd is not None else False
    while True:
        evs = ep.poll(0.0005 if held else 0.2)
        now = clock()
        if cpu0 is None and now >= t0:
            cpu0 = time.process_time()
        if cpu1 is None and now >= t1:
            cpu1 = time.process_time()
        for fd, _ in evs:
            data = read(fd, 262144)
            if not data:
                raise RuntimeError("server closed a connection")
            if fd == pfd:
                if data[0] not in okb:
                    raise RuntimeError("publish refused: %r" % data[:200])
                k = data.count(b"\n")
                for _ in range(k):
                    ts = inflight.popleft()
                    if t0 <= now <= t1:
                        ack_lat.append(now - ts)
                        pub_win += 1
                acked += k
                continue
            k = data.count(b"\n")
            lines_total += k
            if t0 <= now <= t1:
                lines_win += k
                i = data.find(b"@@")
                if i >= 0 and len(data) >= i + 18:
                    try:
                        lat.append(now - int(data[i + 2 : i + 18]))
                    except ValueError:
                        pass
        shared[wid] = lines_total
        if pfd is not None and not stopped:
            if now > t1:
                stopped = True
                shared[pidx + 1] = 1
            else:
                held = try_publish()
        if stopped and pfd is not None and acked == published:
            ep.unregister(pfd)
            pfd = None
        if now > t1:
            done = shared[pidx + 1] == 1 and lines_total >= shared[pidx] * mine * lpm
            if (done and pfd is None) or now > hard_end:
                break
    if cpu1 is None:
        cpu1 = time.process_time()
    ep.close()
    return {
        "count": lines_win // lpm,
        "lat": array.array("q", lat).tobytes(),
        "ack_lat": array.array("q", ack_lat).tobytes(),
        "published_win": pub_win,
        "cpu": cpu1 - (cpu0 if cpu0 is not None else cpu1),
        "delivered": lines_total // lpm,
        "expected": shared[pidx] * mine,
        "published": shared[pidx],
    }


def worker_main(wid, pipe, kind, spec, idxs, shared, nworkers):
    set_pdeathsig(signal.SIGKILL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # not the parent's handler (fork)
    raise_nofile()
    conns = []
    pub = None
    try:
        conns = open_conns(
            spec["port"], idxs, spec["greeting"], spec["setup"], window=spec.get("setup_window", 8)
        )
        if kind == "fanout" and wid == 0:
            pub = open_conns(spec["port"], [0], spec["greeting"], spec["pub_setup"])[0]
        pipe.send(("ready", len(conns)))
        if not pipe.poll(600):
            return
        msg = pipe.recv()
        if msg[0] != "go":
            return
        _, t0, t1, drain_s = msg
        if kind == "rr":
            res = loop_rr(conns, idxs, spec, t0, t1, drain_s)
        else:
            res = loop_fanout(conns, pub, spec, wid, shared, nworkers, t0, t1, drain_s)
        pipe.send(("result", res))
    except Exception:
        try:
            pipe.send(("error", traceback.format_exc()))
        except OSError:
            pass
    finally:
        for s, _ in conns + ([pub] if pub else []):
            try:
                s.close()
            except OSError:
                pass


def measure(run, kind, spec, n, server_pid):
    """One closed-loop measurement with n connections spread over the client
    worker processes.  Returns a dict of figures."""
    args = run.args
    procs = args.client_procs or (1 if n <= 100 else 2)
    procs = max(1, min(procs, n))
    shares = [list(range(w, n, procs)) for w in range(procs)]
    shared = _CTX.Array("q", procs + 2, lock=False)
    if kind == "fanout":
        spec = dict(spec, nsubs=n)
    ws, pipes = [], []
    try:
        for w in range(procs):
            a, b = _CTX.Pipe()
            p = _CTX.Process(
                target=worker_main, args=(w, b, kind, spec, shares[w], shared, procs), daemon=True
            )
            p.start()
            run.workers.append(p)
            ws.append(p)
            pipes.append(a)
        for a in pipes:
            if not a.poll(600):
                raise RuntimeError("a client worker did not finish its setup in 600 s")
            msg = a.recv()
            if msg[0] == "error":
                raise RuntimeError("client worker failed during setup:\n" + msg[1])
        t_go = time.perf_counter_ns()
        t0 = t_go + int(args.warmup * 1e9)
        t1 = t0 + int(args.seconds * 1e9)
        drain = 20.0
        for a in pipes:
            a.send(("go", t0, t1, drain))
        sleep_until_ns(t0)
        s0 = cpu_seconds(server_pid) if server_pid else None
        sleep_until_ns(t1)
        s1 = cpu_seconds(server_pid) if server_pid else None
        results = []
        for a in pipes:
            if not a.poll(drain + 60):
                raise RuntimeError("a client worker did not report within %d s" % (drain + 60))
            msg = a.recv()
            if msg[0] == "error":
                raise RuntimeError("client worker failed:\n" + msg[1])
            results.append(msg[1])
    finally:
        for p in ws:
            p.join(10)
            if p.is_alive():
                p.terminate()
                p.join(5)
            if p in run.workers:
                run.workers.remove(p)
    secs = (t1 - t0) / 1e9
    lat = array.array("q")
    for r in results:
        lat.frombytes(r["lat"])
    lat = sorted(lat)
    out = {
        "rate": sum(r["count"] for r in results) / secs,
        "p50_us": percentile(lat, 50) / 1000,
        "p99_us": percentile(lat, 99) / 1000,
        "samples": len(lat),
        "client_procs": procs,
        "client_cpu_pct": sum(r["cpu"] for r in results) / secs * 100,
    }
    if s0 is not None and s1 is not None:
        out["server_cpu_pct"] = (s1 - s0) / secs * 100
    if kind == "rr":
        out["unfinished"] = sum(r["unfinished"] for r in results)
    else:
        ack = array.array("q")
        for r in results:
            ack.frombytes(r["ack_lat"])
        ack = sorted(ack)
        out.update(
            ack_p50_us=percentile(ack, 50) / 1000,
            ack_p99_us=percentile(ack, 99) / 1000,
            publishes_per_s=sum(r["published_win"] for r in results) / secs,
            delivered=sum(r["delivered"] for r in results),
            expected=sum(r["expected"] for r in results),
        )
        if out["delivered"] != out["expected"]:
            out["missing"] = out["expected"] - out["delivered"]
    return out


# --------------------------------------------------------------------- workload specs


def spec_ping_netshare(port):
    return {
        "port": port,
        "greeting": 1,
        "setup": lambda i: [(("LOGIN bench %s\r\n" % USER_PW).encode(), 1, (b"2",), False)],
        "request": lambda i: b"PING\r\n",
        "counter": False,
        "reply_lines": 1,
        "ok": b"2",
    }


def spec_ping_plain(port, ok):
    return {
        "port": port,
        "greeting": 0,
        "setup": lambda i: [],
        "request": lambda i: b"PING\r\n",
        "counter": False,
        "reply_lines": 1,
        "ok": ok,
    }


def spec_tweet(port):
    line = ('TWEET "%s"\r\n' % PAYLOAD).encode()
    return {
        "port": port,
        "greeting": 1,
        "setup": lambda i: [(("LOGIN bu%d %s\r\n" % (i, USER_PW)).encode(), 1, (b"2",), True)],
        "request": lambda i: line,
        "counter": False,
        "reply_lines": 1,
        "ok": b"2",
    }


def spec_add(port, tag):
    def request(i):
        return (
            "ADD ssn=%sc%dn%%d name=Bench surname=Peers job=tester salary=100\r\n" % (tag, i)
        ).encode()

    return {
        "port": port,
        "greeting": 1,
        "setup": lambda i: [(("LOGIN admin %s\r\n" % ADMIN_PW).encode(), 1, (b"2",), False)],
        "request": request,
        "counter": True,
        "reply_lines": 1,
        "ok": b"2",
    }


def spec_xadd(port):
    line = ("XADD peers * f %s\r\n" % PAYLOAD).encode()
    return {
        "port": port,
        "greeting": 0,
        "setup": lambda i: [],
        "request": lambda i: line,
        "counter": False,
        "reply_lines": 2,
        "ok": b"$",
    }


def fan_payload():
    # "@@" + 16-digit perf_counter_ns of the publish + padding: 100 characters
    return "@@%016d" + "x" * 82


def spec_fan_netshare(port, tag, window, lag):
    return {
        "port": port,
        "greeting": 1,
        "setup_window": 16,
        "setup": lambda i: [
            (("LOGIN g%ss%d\r\n" % (tag, i)).encode(), 1, (b"2",), True),
            (b"SUBSCRIBE #chan\r\n", 1, (b"2",), False),
        ],
        "pub_setup": lambda i: [(("LOGIN bpub %s\r\n" % USER_PW).encode(), 1, (b"2",), True)],
        "publish": ('TWEET "%s" #chan\r\n' % fan_payload()).encode(),
        "ack_ok": b"2",
        "lpm": 1,
        "window": window,
        "lag": lag,
    }


def spec_fan_redis(port, window, lag):
    return {
        "port": port,
        "greeting": 0,
        "setup_window": 16,
        "setup": lambda i: [(b"SUBSCRIBE chan\r\n", 6, (b"*",), False)],
        "pub_setup": lambda i: [],
        "publish": ("PUBLISH chan %s\r\n" % fan_payload()).encode(),
        "ack_ok": b":",
        "lpm": 7,
        "window": window,
        "lag": lag,
    }


# --------------------------------------------------------------------- results


class Results:
    def __init__(self):
        self.rows = []  # dicts

    def add(self, workload, clients, server, rep, unit, r):
        d = dict(workload=workload, clients=clients, server=server, rep=rep, unit=unit, **r)
        self.rows.append(d)
        show = {k: (round(v, 1) if isinstance(v, float) else v) for k, v in d.items()}
        print("RESULT " + json.dumps(show), flush=True)
        extra = ""
        if "client_cpu_pct" in r:
            extra = "  client %3.0f%%" % r["client_cpu_pct"]
            if r.get("server_cpu_pct") is not None:
                extra += "  server %3.0f%%" % r["server_cpu_pct"]
        if r.get("missing"):
            extra += "  MISSING %d deliveries" % r["missing"]
        print(
            "#   %-9s %5s  %-18s rep %d: %12s %s  p50 %s  p99 %s%s"
            % (
                workload,
                clients,
                server,
                rep,
                fmt_num(r["rate"]),
                unit,
                fmt_lat(r.get("p50_us")),
                fmt_lat(r.get("p99_us")),
                extra,
            ),
            flush=True,
        )

    def get(self, workload, clients, server):
        return sorted(
            (
                r
                for r in self.rows
                if r["workload"] == workload and r["clients"] == clients and r["server"] == server
            ),
            key=lambda r: r["rep"],
        )


def fmt_num(v):
    if v is None or v != v:
        return "n/a"
    if v >= 100:
        return "{:,.0f}".format(v)
    if v >= 10:
        return "{:,.1f}".format(v)
    return "{:,.2f}".format(v)


def fmt_lat(us):
    if us is None or us != us:
        return "-"
    if us >= 1000:
        return "%.3g ms" % (us / 1000) if us < 100000 else "%.0f ms" % (us / 1000)
    return "%.0f µs" % us


def fmt_range(vals, f=fmt_num):
    vals = [v for v in vals if v is not None and v == v]
    if not vals:
        return "n/a"
    if len(vals) == 1:
        return f(vals[0])
    return "%s [%s..%s]" % (f(statistics.median(vals)), f(min(vals)), f(max(vals)))


def pct(v):
    if v >= 10:
        return "%.0f %%" % v
    if v >= 1:
        return "%.1f %%" % v
    return "%.2f %%" % v


def med(vals):
    vals = [v for v in vals if v is not None and v == v]
    return statistics.median(vals) if vals else None


def md_table(rows, header):
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(out)


# --------------------------------------------------------------------- workloads


def rotated(items, rep):
    k = rep % len(items)
    return items[k:] + items[:k]


def run_ping(run, res, clients):
    ns = Netshare(run, "netshare-ping", ["personnel"])
    ns.register(["bench"])
    tw = start_pong(run)
    rd = start_redis(run, "redis-ping", durable=False)
    targets = [
        ("netshare", spec_ping_netshare(ns.ports["personnel"]), ns.pid),
        ("twisted", spec_ping_plain(tw.port, b"2"), tw.pid),
        ("redis", spec_ping_plain(rd.port, b"+"), rd.pid),
    ]
    try:
        for rep in range(run.args.reps):
            for n in clients:
                for name, spec, pid in rotated(targets, rep):
                    res.add("ping", n, name, rep, "req/s", measure(run, "rr", spec, n, pid))
    finally:
        for m in (ns.proc, tw, rd):
            run.stop(m)


def run_durable(run, res, clients, which):
    maxn = max(clients)
    servers = [("sqlite", Netshare(run, "netshare-durable", ["ttweet", "personnel"]))]
    if run.args.db:
        url = scratch_postgres(run, run.args.db)
        servers.append(
            ("pg", Netshare(run, "netshare-durable-pg", ["ttweet", "personnel"], db=url))
        )
    for _, s in servers:
        s.register(["bu%d" % i for i in range(maxn)])
    rd = start_redis(run, "redis-aof", durable=True)
    targets = []
    for label, s in servers:
        suffix = "" if label == "sqlite" else "-pg"
        if "tweet" in which:
            targets.append(("netshare-tweet" + suffix, "tweet", s, s.pid))
        if "add" in which:
            targets.append(("netshare-add" + suffix, "add", s, s.pid))
    targets.append(("redis-xadd", "xadd", rd, rd.pid))
    try:
        for rep in range(run.args.reps):
            for n in clients:
                for name, what, s, pid in rotated(targets, rep):
                    if what == "tweet":
                        spec = spec_tweet(s.ports["ttweet"])
                    elif what == "add":
                        spec = spec_add(s.ports["personnel"], "r%dn%d" % (rep, n))
                    else:
                        spec = spec_xadd(s.port)
                    r = measure(run, "rr", spec, n, pid)
                    if what == "xadd":
                        for w in which:
                            res.add(w, n, name, rep, "writes/s", r)
                    else:
                        res.add(what, n, name, rep, "writes/s", r)
    finally:
        for _, s in servers:
            run.stop(s.proc)
        run.stop(rd)


def run_fanout(run, res, clients):
    ns = Netshare(run, "netshare-fanout", ["ttweet"])
    ns.register(["bpub"])
    rd = start_redis(run, "redis-pubsub", durable=False)
    w = run.args.fanout_window
    names = ["netshare", "redis"]
    try:
        k = 0
        for rep in range(run.args.reps):
            for n in clients:
                lag = max(1000, 20 * n)
                for name in rotated(names, rep):
                    k += 1
                    if name == "netshare":
                        spec, pid = spec_fan_netshare(ns.ports["ttweet"], "%d" % k, w, lag), ns.pid
                    else:
                        spec, pid = spec_fan_redis(rd.port, w, lag), rd.pid
                    res.add(
                        "fanout",
                        n,
                        name,
                        rep,
                        "deliveries/s",
                        measure(run, "fanout", spec, n, pid),
                    )
    finally:
        run.stop(ns.proc)
        run.stop(rd)


def make_source(path, size):
    h = hashlib.sha256()
    block = os.urandom(8 * MiB)
    with open(path, "wb") as f:
        left = size
        while left:
            b = block[: min(left, len(block))]
            f.write(b)
            h.update(b)
            left -= len(b)
    return h.hexdigest()


def read_through(path):
    """Read a file once (puts it in the page cache)."""
    buf = bytearray(MiB)
    with open(path, "rb", buffering=0) as f:
        while f.readinto(buf):
            pass


def ns_upload(port, src, size, sha):
    c = LineClient(port, timeout=600)
    c.expect("220")
    c.cmd("LOGIN bench %s" % USER_PW, "230")
    t0 = time.perf_counter()
    c.cmd("UPLOAD peers.bin %d sha256=%s replace=yes" % (size, sha), "350")
    with open(src, "rb") as f:
        if c.sock.sendfile(f, 0, size) != size:
            raise RuntimeError("short sendfile")
    c.expect("226")
    dt = time.perf_counter() - t0
    c.close()
    return dt


def recv_exact(sock, size, first=b""):
    buf = bytearray(MiB)
    mv = memoryview(buf)
    got = len(first)
    while got < size:
        n = sock.recv_into(mv, min(MiB, size - got))
        if not n:
            raise RuntimeError("connection closed after %d of %d bytes" % (got, size))
        got += n
    return got


def ns_download(port, size):
    c = LineClient(port, timeout=600)
    c.expect("220")
    c.cmd("LOGIN bench %s" % USER_PW, "230")
    t0 = time.perf_counter()
    c.sock.sendall(b"DOWNLOAD peers.bin\r\n")
    line = c.line()
    if not line.startswith("150 %d bytes" % size):
        raise RuntimeError("DOWNLOAD: %r" % line)
    first, c.buf = c.buf[:size], c.buf[size:]
    recv_exact(c.sock, size, first)
    c.expect("226")
    dt = time.perf_counter() - t0
    c.close()
    return dt


def ftp_login(port):
    c = LineClient(port, timeout=600)
    c.expect("220")
    r = c.cmd("USER anonymous", "")
    if r.startswith("331"):
        c.cmd("PASS peers@", "230")
    elif not r.startswith("230"):
        raise RuntimeError("FTP login: %r" % r)
    c.cmd("TYPE I", "200")
    return c


def ftp_pasv(c):
    r = c.cmd("PASV", "227")
    nums = r[r.index("(") + 1 : r.index(")")].split(",")
    port = int(nums[4]) * 256 + int(nums[5])
    d = socket.create_connection((LOOPBACK, port), timeout=600)
    return d


def ftp_upload(port, src, size):
    c = ftp_login(port)
    t0 = time.perf_counter()
    d = ftp_pasv(c)
    c.cmd("STOR pub/up.bin", "150")
    with open(src, "rb") as f:
        if d.sendfile(f, 0, size) != size:
            raise RuntimeError("short sendfile")
    d.close()
    c.expect("226")
    dt = time.perf_counter() - t0
    c.close()
    return dt


def ftp_download(port, size):
    c = ftp_login(port)
    t0 = time.perf_counter()
    d = ftp_pasv(c)
    c.cmd("RETR pub/up.bin", "150")
    recv_exact(d, size)
    if d.recv(1):
        raise RuntimeError("FTP download: more bytes than expected")
    d.close()
    c.expect("226")
    dt = time.perf_counter() - t0
    c.close()
    return dt


def ns_blob(data, size):
    best = None
    for dirpath, _, files in os.walk(os.path.join(data, "files", "blobs")):
        for f in files:
            p = os.path.join(dirpath, f)
            st = os.stat(p)
            if st.st_size == size and (best is None or st.st_mtime > best[0]):
                best = (st.st_mtime, p)
    if best is None:
        raise RuntimeError("netshare's stored copy not found under %s" % data)
    return best[1]


def run_files(run, res, which, have_vsftpd):
    args = run.args
    size = args.size_mib * MiB
    src_base = args.src_dir
    src_dir = tempfile.mkdtemp(prefix="netshare-peers-src-", dir=src_base)
    run.dirs.append(src_dir)
    src = os.path.join(src_dir, "src.bin")
    print(
        "# files: making a %d MiB source in %s (%s)" % (args.size_mib, src_dir, fs_type(src_dir)),
        flush=True,
    )
    sha = make_source(src, size)
    ns = Netshare(run, "netshare-files", ["files"])
    ns.register(["bench"])
    vs = start_vsftpd(run) if have_vsftpd else None
    names = ["netshare"] + (["vsftpd"] if vs else [])
    try:
        for rep in range(args.reps):
            if "upload" in which or "download" in which:
                for name in rotated(names, rep):
                    if name == "netshare":
                        dt = ns_upload(ns.ports["files"], src, size, sha)
                    else:
                        target = os.path.join(vs.pub, "up.bin")
                        if os.path.exists(target):
                            os.unlink(target)  # a fresh file, as netshare's replace makes
                        dt = ftp_upload(vs.port, src, size)
                    if "upload" in which:
                        res.add("upload", 1, name, rep, "MB/s", {"rate": size / dt / 1e6})
            if "download" in which:
                for name in rotated(names, rep):
                    if name == "netshare":
                        read_through(ns_blob(ns.data, size))
                        dt = ns_download(ns.ports["files"], size)
                    else:
                        read_through(os.path.join(vs.pub, "up.bin"))
                        dt = ftp_download(vs.port, size)
                    res.add("download", 1, name, rep, "MB/s", {"rate": size / dt / 1e6})
    finally:
        run.stop(ns.proc)
        if vs:
            run.stop(vs)
        os.unlink(src)


# --------------------------------------------------------------------- report

REFS = {
    "ping": ["twisted", "redis"],
    "tweet": ["redis-xadd"],
    "add": ["redis-xadd"],
    "fanout": ["redis"],
    "upload": ["vsftpd"],
    "download": ["vsftpd"],
}
UNITS = {
    "ping": "req/s",
    "tweet": "writes/s",
    "add": "writes/s",
    "fanout": "deliveries/s",
    "upload": "MB/s",
    "download": "MB/s",
}


def report(res, workloads, reps):
    print(
        "\n## Results: median [min..max] over %d repetition(s); p50/p99 = median over the"
        " repetitions; CPU = %% of one core during the window (server: all its threads;"
        " client: all worker processes together)\n" % reps
    )
    rows = []
    for w in workloads:
        keys = []
        for r in res.rows:
            if r["workload"] == w and (r["clients"], r["server"]) not in keys:
                keys.append((r["clients"], r["server"]))
        for n, server in keys:
            rs = res.get(w, n, server)
            row = [
                w,
                n,
                server,
                "%s %s" % (fmt_range([r["rate"] for r in rs]), UNITS[w]),
                fmt_lat(med([r.get("p50_us") for r in rs])),
                fmt_lat(med([r.get("p99_us") for r in rs])),
            ]
            sc = med([r.get("server_cpu_pct") for r in rs])
            cc = med([r.get("client_cpu_pct") for r in rs])
            row.append("%.0f %%" % sc if sc is not None else "-")
            row.append(
                "%.0f %% (%d proc)" % (cc, rs[0]["client_procs"]) if cc is not None else "-"
            )
            if w == "fanout":
                row.append(
                    "ack p50 %s / p99 %s, %s pub/s"
                    % (
                        fmt_lat(med([r.get("ack_p50_us") for r in rs])),
                        fmt_lat(med([r.get("ack_p99_us") for r in rs])),
                        fmt_num(med([r.get("publishes_per_s") for r in rs])),
                    )
                )
                miss = sum(r.get("missing", 0) for r in rs)
                if miss:
                    row[-1] += ", %d deliveries MISSING" % miss
            elif any(r.get("unfinished") for r in rs):
                row.append(
                    "%d requests unanswered at the end" % sum(r.get("unfinished", 0) for r in rs)
                )
            else:
                row.append("")
            rows.append(row)
    print(
        md_table(
            rows,
            [
                "workload",
                "clients",
                "server",
                "rate",
                "p50",
                "p99",
                "server CPU",
                "client CPU",
                "notes",
            ],
        )
    )

    print(
        "\n## netshare / reference, paired per repetition: rate median [min..max];"
        " p50 and p99 as ratios of the medians (lower is better for latency)\n"
    )
    rows = []
    for w in workloads:
        keys = []
        for r in res.rows:
            if (
                r["workload"] == w
                and r["server"].startswith("netshare")
                and (r["clients"], r["server"]) not in keys
            ):
                keys.append((r["clients"], r["server"]))
        for n, server in keys:
            a = {r["rep"]: r for r in res.get(w, n, server)}
            for ref in REFS[w]:
                b = {r["rep"]: r for r in res.get(w, n, ref)}
                reps_both = sorted(set(a) & set(b))
                if not reps_both:
                    continue
                ratios = [a[k]["rate"] / b[k]["rate"] * 100 for k in reps_both if b[k]["rate"]]
                lat = []
                for key in ("p50_us", "p99_us"):
                    x = med([a[k].get(key) for k in reps_both])
                    y = med([b[k].get(key) for k in reps_both])
                    lat.append("%.1f×" % (x / y) if x and y else "-")
                rows.append([w, n, server, ref, fmt_range(ratios, pct)] + lat)
    print(
        md_table(
            rows, ["workload", "clients", "netshare", "vs", "rate ratio", "p50 ratio", "p99 ratio"]
        )
    )


# --------------------------------------------------------------------- main


def parse_args(argv=None):
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--quick",
        action="store_true",
        help="1 rep (unless --reps), 1 s windows, 128 MiB files: a couple of minutes",
    )
    ap.add_argument("--reps", type=int, help="repetitions (default 3; median of them)")
    ap.add_argument(
        "--only",
        default=",".join(WORKLOADS),
        help="comma list of: ping, tweet, add, fanout, upload, download "
        "(groups: durable = tweet,add; files = upload,download)",
    )
    ap.add_argument(
        "--clients",
        help="comma list of client counts for every workload "
        "(default: ping and fanout 1,100,1000; tweet and add 1,100)",
    )
    ap.add_argument("--seconds", type=float, help="measured window per run (default 3; quick 1)")
    ap.add_argument(
        "--warmup", type=float, help="warm-up before the window (default 0.5; quick 0.3)"
    )
    ap.add_argument(
        "--size-mib", type=int, help="file size for upload/download (default 1024; quick 128)"
    )
    ap.add_argument(
        "--client-procs",
        type=int,
        default=0,
        help="client worker processes (default: 1 up to 100 connections, else 2)",
    )
    ap.add_argument(
        "--fanout-window",
        type=int,
        default=1,
        help="publishes in flight in the fan-out (default 1: wait for each ack)",
    )
    ap.add_argument(
        "--db",
        help="also run tweet/add on netshare with this database URL "
        "(PostgreSQL: a fresh database is created beside it and dropped)",
    )
    ap.add_argument(
        "--netshare-tree",
        default=ROOT,
        help="the netshare source tree to run the server from (default: %(default)s)",
    )
    ap.add_argument(
        "--dir",
        help="scratch dir for data dirs, redis AOF, vsftpd root: use a real "
        "disk (default: $TMPDIR or /tmp)",
    )
    ap.add_argument(
        "--src-dir",
        help="where the upload source file goes (default: /dev/shm when "
        "it is a tmpfs, else --dir)",
    )
    ap.add_argument(
        "--install-vsftpd",
        action="store_true",
        help="apt-get install -y vsftpd if it is missing (otherwise its rows are skipped)",
    )
    ap.add_argument("--max-minutes", type=float, default=120, help="hard bound on the whole run")
    args = ap.parse_args(argv)
    if args.reps is None:
        args.reps = 1 if args.quick else 3
    if args.seconds is None:
        args.seconds = 1.0 if args.quick else 3.0
    if args.warmup is None:
        args.warmup = 0.3 if args.quick else 0.5
    if args.size_mib is None:
        args.size_mib = 128 if args.quick else 1024
    only = []
    for w in args.only.split(","):
        w = w.strip()
        if not w:
            continue
        for x in GROUPS.get(w, (w,)):
            if x not in WORKLOADS:
                ap.error("unknown workload %r" % w)
            if x not in only:
                only.append(x)
    args.only = only
    if args.src_dir is None:
        args.src_dir = (
            "/dev/shm" if fs_type("/dev/shm") == "tmpfs" else (args.dir or tempfile.gettempdir())
        )
    args.netshare_tree = os.path.abspath(args.netshare_tree)
    return args


def tree_digest(tree):
    """SHA-256 (12 hex digits) over the netshare package's .py files: which
    server code a figure came from, committed or not."""
    h = hashlib.sha256()
    pkg = os.path.join(tree, "netshare")
    for dirpath, dirnames, files in os.walk(pkg):
        dirnames.sort()
        for f in sorted(files):
            if f.endswith(".py"):
                path = os.path.join(dirpath, f)
                h.update(os.path.relpath(path, tree).encode() + b"\0")
                with open(path, "rb") as fh:
                    h.update(fh.read())
    return h.hexdigest()[:12]


def header(args):
    def out(cmd):
        try:
            return subprocess.run(cmd, capture_output=True, text=True, timeout=30).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return "?"

    tree = args.netshare_tree
    commit = out(["git", "-C", tree, "rev-parse", "--short", "HEAD"])
    dirty = out(["git", "-C", tree, "status", "--porcelain", "--untracked-files=no"])
    mod, plugin = check_tree(tree)
    print("# netshare peers benchmark")
    print(
        "# machine: %s, %d CPUs, load average %s"
        % (platform.platform(), os.cpu_count(), loadavg())
    )
    redis = out(["redis-server", "--version"]).split()
    print(
        "# python %s; %s %s; twistd %s; netshare CLI %s"
        % (
            platform.python_version(),
            " ".join(redis[:1]),
            " ".join(redis[2:3]),
            " ".join(twistd_argv()),
            " ".join(netshare_cli_argv()),
        )
    )
    print(
        "# netshare tree %s (commit %s%s; netshare/*.py digest %s); package %s;"
        " twistd plugin module %s"
        % (
            tree,
            commit,
            ", with uncommitted changes" if dirty else "",
            tree_digest(tree),
            mod,
            plugin,
        )
    )
    base = args.dir or tempfile.gettempdir()
    print(
        "# scratch (data dirs, AOF, vsftpd root): %s (%s); upload source: %s (%s)"
        % (base, fs_type(base), args.src_dir, fs_type(args.src_dir))
    )
    if fs_type(base) in ("tmpfs", "ramfs"):
        print(
            "# WARNING: the scratch dir is a %s: fsync costs nothing there, the durable "
            "rows do not measure durability" % fs_type(base)
        )
    print(
        "# reps %d, window %.1f s after %.1f s warm-up, workloads %s"
        % (args.reps, args.seconds, args.warmup, ",".join(args.only)),
        flush=True,
    )


def main(argv=None):
    args = parse_args(argv)
    raise_nofile()
    header(args)
    clients = {}
    for key, default in DEFAULT_CLIENTS.items():
        clients[key] = [int(x) for x in args.clients.split(",")] if args.clients else default
    maxn = max(max(v) for v in clients.values())
    args.max_conns = 2 * maxn + 100
    have_vsftpd = True
    if "upload" in args.only or "download" in args.only:
        have_vsftpd = vsftpd_available(args)
        if not have_vsftpd:
            print(
                "# NOTE: vsftpd is not installed: the vsftpd rows are skipped "
                "(rerun with --install-vsftpd, or apt-get install -y vsftpd)",
                flush=True,
            )

    def on_signal(signum, frame):
        raise Stopped("signal %d" % signum)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGALRM, on_signal)
    signal.alarm(int(args.max_minutes * 60))
    run = Run(args)
    res = Results()
    t_start = time.monotonic()
    status = 0
    try:
        if "ping" in args.only:
            print("# ping ...", flush=True)
            run_ping(run, res, clients["ping"])
        durable = [w for w in ("tweet", "add") if w in args.only]
        if durable:
            print("# durable writes (%s) ..." % ",".join(durable), flush=True)
            run_durable(run, res, clients["durable"], durable)
        if "fanout" in args.only:
            print("# fan-out ...", flush=True)
            run_fanout(run, res, clients["fanout"])
        files = [w for w in ("upload", "download") if w in args.only]
        if files:
            print("# files (%s) ..." % ",".join(files), flush=True)
            run_files(run, res, files, have_vsftpd)
    except (KeyboardInterrupt, Stopped) as e:
        print("\n# interrupted (%s): stopping everything" % (e or "Ctrl-C"), flush=True)
        status = 130
    except Exception:
        traceback.print_exc()
        status = 1
    finally:
        signal.alarm(0)
        run.cleanup()
    if res.rows:
        report(res, [w for w in WORKLOADS if w in args.only], args.reps)
        if ("upload" in args.only or "download" in args.only) and not have_vsftpd:
            print("\n(vsftpd rows skipped: vsftpd is not installed; --install-vsftpd)")
    print(
        "\n# wall time %.0f s; load average at the end %s"
        % (time.monotonic() - t_start, loadavg())
    )
    return status


if __name__ == "__main__":
    sys.exit(main())

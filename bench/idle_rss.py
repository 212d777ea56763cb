"""
The resident memory of an idle server with every default listener on.

Starts a real `twistd -n netshare` on a fresh data dir (`netshare init`,
SQLite) with the personnel, files and ttweet ports, the telnet manhole and
the web listener, each on a free loopback port (the defaults, moved off
7001-7005 so a running server does not clash), waits until every port
answers, lets it settle, prints the process's VmRSS and VmHWM from /proc,
--runs times (a fresh server each), and stops it by PID.

    .venv/bin/python bench/idle_rss.py            # 3 runs
    .venv/bin/python bench/idle_rss.py --settle 10

Issue 14's bound is 80 MiB.  Nothing here gates CI.
"""

import argparse
import os
import shutil
import statistics
import subprocess
import tempfile
import time

from benchlib import free_port, stop_process, wait_port  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VENV_BIN = os.path.join(ROOT, ".venv", "bin")
LISTENERS = ("personnel", "files", "ttweet", "manhole", "web")


def status_kib(pid: int, field: str) -> int:
    with open("/proc/%d/status" % (pid,)) as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError("no %s for %d" % (field, pid))


def one_run(settle: float) -> tuple[float, float]:
    tmp = tempfile.mkdtemp(prefix="netshare-rss-")
    proc = None
    try:
        data = os.path.join(tmp, "data")
        env = dict(os.environ, NETSHARE_PASSWORD="bench-admin-pw")
        subprocess.run(
            [os.path.join(VENV_BIN, "netshare"), "init", "--data", data],
            env=env,
            check=True,
            stdout=subprocess.DEVNULL,
        )
        ports = {name: free_port() for name in LISTENERS}
        argv = [os.path.join(VENV_BIN, "twistd"), "--pidfile=", "-n", "netshare", "--data", data]
        for name, port in ports.items():
            argv += ["--" + name, "tcp:%d:interface=127.0.0.1" % (port,)]
        proc = subprocess.Popen(
            argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        for port in ports.values():
            wait_port(port, proc, timeout=60)
        time.sleep(settle)
        return status_kib(proc.pid, "VmRSS") / 1024, status_kib(proc.pid, "VmHWM") / 1024
    finally:
        if proc is not None:
            stop_process(proc, timeout=30)
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--settle", type=float, default=3.0, help="seconds idle before reading")
    opts = ap.parse_args()
    rss, hwm = [], []
    for _ in range(opts.runs):
        r, h = one_run(opts.settle)
        rss.append(r)
        hwm.append(h)
        print("idle server, every default listener on: VmRSS %.1f MiB (peak %.1f MiB)" % (r, h))
    print("median VmRSS %.1f MiB over %d runs" % (statistics.median(rss), len(rss)))


if __name__ == "__main__":
    main()

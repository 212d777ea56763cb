"""
How long a one-shot client command takes, end to end, as a user sees it.

Starts a real `twistd -n netshare` (files port only, on a free loopback
port, its own temporary data directory, the production password hashing
cost unless --scrypt-n says otherwise), then runs the installed
`netshare-files list` as a subprocess, --runs times each way:

  - password: `--no-session`, a full LOGIN (scrypt) every time;
  - session:  with the session token the first run kept (the quick path:
    no Twisted import, TOKEN instead of LOGIN);

and, as references measured in the same run: `python -c pass` (the
interpreter's own start-up, the floor of any Python client), and
`redis-cli PING` against a redis-server this script starts (a C client:
what "tens of milliseconds" means for psql or redis-cli).

    .venv/bin/python bench/oneshot.py              # 20 runs each
    .venv/bin/python bench/oneshot.py --runs 50

Prints min, median and p90 wall time per row.  Nothing here gates CI.
"""

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from benchlib import free_port, wait_port  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VENV_BIN = os.path.join(ROOT, ".venv", "bin")


def timed(cmd: list[str], runs: int, env: dict[str, str]) -> list[float]:
    out = []
    for _ in range(runs):
        started = time.perf_counter()
        r = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        out.append(time.perf_counter() - started)
        if r.returncode != 0:
            raise RuntimeError("%s failed: %s" % (" ".join(cmd), r.stderr.decode()[-500:]))
    return out


def row(name: str, xs: list[float]) -> str:
    xs = sorted(xs)
    p90 = xs[min(len(xs) - 1, int(len(xs) * 0.9))]
    return "%-34s min %6.1f ms   median %6.1f ms   p90 %6.1f ms" % (
        name,
        xs[0] * 1e3,
        statistics.median(xs) * 1e3,
        p90 * 1e3,
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--scrypt-n", type=int, default=2**17)
    opts = ap.parse_args()

    tmp = tempfile.mkdtemp(prefix="netshare-oneshot-")
    procs: list[subprocess.Popen[bytes]] = []
    try:
        data = os.path.join(tmp, "data")
        port = free_port()
        env = dict(os.environ, NETSHARE_PASSWORD="bench-admin-pw")
        env.update(
            NETSHARE_SCRYPT_N=str(opts.scrypt_n),
            NETSHARE_USER="admin",
            NETSHARE_PORT=str(port),
            NETSHARE_SESSIONS=os.path.join(tmp, "sessions.json"),
        )
        subprocess.run(
            [os.path.join(VENV_BIN, "netshare"), "init", "--data", data],
            env=env,
            check=True,
            stdout=subprocess.DEVNULL,
        )
        server = subprocess.Popen(
            [os.path.join(VENV_BIN, "twistd"), "--pidfile=", "-n", "netshare"]
            + ["--data", data, "--files", "tcp:%d:interface=127.0.0.1" % port]
            + sum((["--" + s, "none"] for s in ("personnel", "ttweet", "manhole", "web")), []),
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        procs.append(server)
        wait_port(port)
        files = [os.path.join(VENV_BIN, "netshare-files"), "list"]
        rows = [
            row("python -c pass", timed([sys.executable, "-c", "pass"], opts.runs, env)),
            row(
                "netshare-files list (password)",
                timed([files[0], "--no-session", "list"], opts.runs, env),
            ),
        ]
        timed(files, 1, env)  # the first run keeps a session token
        rows.append(row("netshare-files list (session)", timed(files, opts.runs, env)))
        redis = shutil.which("redis-server")
        if redis and shutil.which("redis-cli"):
            rport = free_port()
            procs.append(
                subprocess.Popen(
                    [redis, "--port", str(rport), "--save", "", "--appendonly", "no"],
                    stdout=subprocess.DEVNULL,
                )
            )
            wait_port(rport)
            cli = ["redis-cli", "-p", str(rport), "PING"]
            rows.append(row("redis-cli PING (reference)", timed(cli, opts.runs, env)))
        print("one-shot command wall time, %d runs each:" % opts.runs)
        for r in rows:
            print("  " + r)
    finally:
        for p in procs:
            p.terminate()
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()

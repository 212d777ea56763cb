"""
What every benchmark script needs to run a server beside it: a free
loopback port, a bounded wait until something listens on it, and a stop
that ends the process whatever state it is in.  (The scripts run as
C{.venv/bin/python bench/<name>.py}, so this directory is on the path.)
"""

import signal
import socket
import subprocess
import time

LOOPBACK = "127.0.0.1"


def free_port() -> int:
    """A port nothing listens on now (the kernel's pick)."""
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


def wait_port(port: int, proc: subprocess.Popen | None = None, timeout: float = 30.0) -> None:
    """Return once C{port} accepts a connection; raise RuntimeError if
    C{proc} exits first or nothing listens within C{timeout} seconds."""
    deadline = time.monotonic() + timeout
    while True:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError("the server exited with status %s" % (proc.returncode,))
        try:
            with socket.create_connection((LOOPBACK, port), timeout=1):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError("nothing listens on %d after %gs" % (port, timeout)) from None
            time.sleep(0.05)


def stop_process(proc: subprocess.Popen, timeout: float = 15.0) -> None:
    """SIGTERM, up to C{timeout} seconds for a clean exit, then SIGKILL."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)

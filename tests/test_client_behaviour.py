"""
One behaviour for every client program (the shared code in
L{netshare.clients.common} and L{netshare.clients.protocol}): a wrong port
is named as such, Ctrl-C exits 130 quietly, local file errors are local,
bad options are usage errors, and nothing ends in a traceback.  Real
programs (subprocesses) against a real server or a socket this test holds.
"""

import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from tests.support import ROOT, ServerProcess, env

pytestmark = pytest.mark.timeout(120)


def client(module, *args, **kw):
    return subprocess.Popen(
        [sys.executable, "-m", "netshare.clients." + module, *args],
        cwd=kw.pop("cwd", ROOT),
        env=env(**kw.pop("env", {})),
        stdin=kw.pop("stdin", subprocess.DEVNULL),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(proc, timeout=30):
    out, err = proc.communicate(timeout=timeout)
    assert "Traceback" not in out + err, out + err
    return proc.returncode, out, err


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = ServerProcess(tmp_path_factory.mktemp("client-behaviour") / "data")
    srv.start()
    yield srv
    srv.kill()


def test_a_client_on_another_service_port_says_so(server):
    code, out, err = finish(
        client(
            "files",
            "--port",
            str(server.ports["personnel"]),
            "--user",
            "admin",
            "list",
            env={"NETSHARE_PASSWORD": "adminpw"},
        )
    )
    assert code == 3 and out == ""
    assert "netshare personnel service, not the netshare files service" in err
    assert "--port" in err and len(err.strip().splitlines()) == 1
    code, out, err = finish(
        client(
            "personnel",
            "--port",
            str(server.ports["files"]),
            "--user",
            "admin",
            "list",
            env={"NETSHARE_PASSWORD": "adminpw"},
        )
    )
    assert code == 3 and "netshare files service, not the netshare personnel" in err


def test_a_local_file_error_is_local(server, tmp_path):
    env_pw = {"NETSHARE_PASSWORD": "adminpw"}
    port = str(server.ports["files"])
    src = tmp_path / "a.txt"
    src.write_bytes(b"hello")
    code, _, err = finish(
        client("files", "--port", port, "--user", "admin", "upload", str(src), env=env_pw)
    )
    assert code == 0, err
    missing = tmp_path / "no-such-dir" / "a.txt"
    code, _, err = finish(
        client(
            "files",
            "--port",
            port,
            "--user",
            "admin",
            "download",
            "a.txt",
            "--output",
            str(missing),
            env=env_pw,
        )
    )
    assert code == 1, err
    assert "cannot talk" not in err and "no-such-dir" in err


def test_version_and_bad_options(server):
    for module in ("files", "personnel"):
        code, out, err = finish(client(module, "--version"))
        assert code == 0 and "netshare" in out + err and "0." in out + err
        code, out, err = finish(client(module, "--timeout", "-1", "list"))
        assert code == 2 and "positive number of seconds" in err


def test_ctrl_c_while_waiting_exits_130_quietly(tmp_path):
    """A server that accepts and never greets: the client waits (timeout
    30 s); Ctrl-C stops it at once, with one line and status 130."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        port = listener.getsockname()[1]
        proc = client(
            "files",
            "--port",
            str(port),
            "--user",
            "admin",
            "--timeout",
            "30",
            "list",
            env={"NETSHARE_PASSWORD": "x"},
        )
        try:
            listener.settimeout(20)
            conn, _ = listener.accept()  # the client is now waiting for the greeting
            with conn:
                time.sleep(0.3)  # (the reactor is running: its handler is installed)
                proc.send_signal(signal.SIGINT)
                code, out, err = finish(proc)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert code == 130 and err.strip().endswith("interrupted"), err


def test_ctrl_c_at_the_password_prompt_exits_130_quietly(server):
    environ = env()
    environ.pop("NETSHARE_PASSWORD", None)  # so that the client asks
    proc = subprocess.Popen(
        [sys.executable, "-m", "netshare.clients.files", "--port", str(server.ports["files"])]
        + ["--user", "admin", "list"],
        cwd=ROOT,
        env=environ,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,  # no terminal: getpass prompts on stderr, reads stdin
    )
    err = b""
    try:
        os.set_blocking(proc.stderr.fileno(), False)
        deadline = time.monotonic() + 20
        while b"Password" not in err and time.monotonic() < deadline:
            try:
                err += os.read(proc.stderr.fileno(), 4096)
            except BlockingIOError:
                time.sleep(0.05)
        assert b"Password" in err, err
        proc.send_signal(signal.SIGINT)
        proc.wait(20)
        os.set_blocking(proc.stderr.fileno(), True)
        err += proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdin.close()
        proc.stdout.close()
        proc.stderr.close()
    text = err.decode("utf-8", "replace")
    assert proc.returncode == 130 and "Traceback" not in text, text
    assert text.strip().endswith("interrupted"), text

"""
The real service, as an operator runs it: C{twistd -n netshare} (and
C{twist netshare}, and C{make run}) in a subprocess on free loopback ports.

Greetings on every listener, an orderly SIGTERM (C{421 shutting down},
pending work answered first, exit status 0), and start-up refusals that are
one clear line and a non-zero exit: a bad setting, a busy port, a missing
data dir, a database without (or with a newer) schema.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import sqlalchemy as sa

from netshare import __version__
from netshare.storage import migrate
from tests.manhole_clients import TelnetClient
from tests.support import (
    ROOT,
    SERVICES,
    LineConn,
    ServerProcess,
    env,
    free_port,
    run_cli,
    twistd_command,
)

HEAD = migrate.head()


def connect(port, timeout=10):
    conn = LineConn(port, timeout=timeout)
    return conn, conn.readline()


def wait_listening(proc, ports, timeout=20, output=lambda: ""):
    deadline = time.monotonic() + timeout
    for port in ports:
        while True:
            if proc.poll() is not None:
                raise AssertionError("exited %s:\n%s" % (proc.returncode, output()))
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                assert time.monotonic() < deadline, "not listening on %d:\n%s" % (port, output())
                time.sleep(0.05)


def refused(port):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            return False
    except ConnectionRefusedError:
        return True


def run_twistd(*args, timeout=30, **envextra):
    """Run twistd to completion (start-up failures): (status, output lines)."""
    try:
        r = subprocess.run(
            twistd_command(*args),
            cwd=ROOT,
            env=env(**envextra),
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired as e:
        out = (
            (e.stdout or b"").decode("utf-8", "replace")
            if isinstance(e.stdout, bytes)
            else (e.stdout or "")
        )
        raise AssertionError(
            "twistd did not exit within %d s; output:\n%s" % (timeout, out)
        ) from None
    lines = [line for line in (r.stdout + r.stderr).splitlines() if line.strip()]
    return r.returncode, lines


def assert_one_clear_line(status, lines, *fragments):
    assert status not in (0, None), lines
    text = "\n".join(lines)
    assert "Traceback" not in text, text
    last = lines[-1]
    assert "netshare: " in last, text
    for fragment in fragments:
        assert fragment in last, (fragment, text)
    # exactly one line says it
    assert sum("netshare: " in line for line in lines) == 1, text


def listener_args(ports):
    args = []
    for s in SERVICES:
        args += ["--" + s, "tcp:%d:interface=127.0.0.1" % ports[s] if s in ports else "none"]
    return args + ["--manhole", "none", "--web", "none"]


@pytest.fixture
def server(tmp_path):
    srv = ServerProcess(tmp_path / "data", extra_args=["--shutdown-timeout", "5"])
    yield srv
    srv.kill()


# -- serving ------------------------------------------------------------------------


def test_greetings_on_every_listener(server):
    server.start()
    for service in SERVICES:
        conn, greeting = connect(server.ports[service])
        try:
            assert greeting == "220 netshare %s %s ready" % (service, __version__)
            assert conn.cmd("PING") == ["200 pong"]
            assert conn.cmd("QUIT") == ["221 bye"]
            assert conn.closed(5)
        finally:
            conn.close()


def test_sigterm_with_an_idle_client(server):
    server.start()
    conn, greeting = connect(server.ports["ttweet"])
    try:
        assert greeting.startswith("220 ")
        assert conn.cmd("PING") == ["200 pong"]
        start = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        assert conn.readline() == "421 shutting down"
        assert conn.closed(5)
        assert refused(server.ports["files"])  # listeners stopped first
        status = server.proc.wait(15)
        elapsed = time.monotonic() - start
    finally:
        conn.close()
    print("\nSIGTERM -> exit %s in %.2f s" % (status, elapsed))
    assert "netshare stopped" in server.output()
    assert elapsed < 10
    assert status == 0, "exit status %s after SIGTERM:\n%s" % (status, server.output())


def history_rows(data_dir):
    """(user, service, command, code) of every history entry, oldest first,
    read straight from the server's SQLite file."""
    engine = sa.create_engine("sqlite:///" + os.path.join(str(data_dir), "netshare.db"))
    try:
        with engine.connect() as conn:
            return [
                tuple(r)
                for r in conn.exec_driver_sql(
                    'SELECT "user", service, command, code FROM history ORDER BY id'
                )
            ]
    finally:
        engine.dispose()


def test_sigterm_with_every_default_listener_on(tmp_path):
    """
    The default configuration, manhole included (what `make run` serves):
    SIGTERM is an orderly stop.  Every line port says C{421 shutting down},
    every manhole session (a shell and one still at its login prompt) is
    closed with the same line, the command answered just before the signal
    is in the request history, and the exit status is 0.
    """
    server = ServerProcess(tmp_path / "data", manhole=True, web=True)
    conns, shells = {}, []
    try:
        server.start()
        for service in SERVICES:
            conns[service], greeting = connect(server.ports[service])
            assert greeting.startswith("220 ")
        shell = TelnetClient(server.ports["manhole"])
        shells.append(shell)
        shell.login("admin", server.admin_password)
        shell.expect(rb">>> ")
        waiting = TelnetClient(server.ports["manhole"])
        shells.append(waiting)
        waiting.expect(rb"Username: ")
        last = conns["personnel"]
        assert last.cmd("LOGIN admin %s" % server.admin_password)[0].startswith("230 ")
        assert last.cmd("WHOAMI") == ["200 admin admin"]
        time.sleep(0.05)
        server.proc.send_signal(signal.SIGTERM)
        for service, conn in conns.items():
            assert conn.readline() == "421 shutting down", service
            assert conn.closed(5), service
        for c in shells:
            c.expect(rb"421 shutting down")
            assert c.closed(5)
        status = server.proc.wait(15)
    finally:
        for c in list(conns.values()) + shells:
            c.close()
        server.kill()
    assert status == 0, "exit status %s after SIGTERM:\n%s" % (status, server.output())
    assert "netshare stopped" in server.output()
    assert ("admin", "personnel", "WHOAMI", 200) in history_rows(server.data)


def test_sigterm_answers_pending_work_first(tmp_path):
    """A command in progress at SIGTERM is answered before 421."""
    server = ServerProcess(
        tmp_path / "data", extra_args=["--login-failure-delay", "1.5", "--shutdown-timeout", "8"]
    )
    try:
        server.start()
        conn, _ = connect(server.ports["personnel"])
        try:
            # both lines arrive together: once PING is answered, LOGIN is running
            conn.send(b"PING\r\nLOGIN admin wrong\r\n")
            assert conn.readline() == "200 pong"
            server.proc.send_signal(signal.SIGTERM)
            assert conn.readline().startswith("535 ")
            assert conn.readline() == "421 shutting down"
            assert conn.closed(5)
        finally:
            conn.close()
        status = server.proc.wait(15)
        assert status == 0, "exit status %s after SIGTERM:\n%s" % (status, server.output())
    finally:
        server.kill()


def test_disabled_listener(tmp_path):
    server = ServerProcess(tmp_path / "data")
    files_port = server.ports.pop("files")
    server.args = lambda: ["--data", server.data, *listener_args(server.ports)]
    try:
        server.start()
        for service in ("personnel", "ttweet"):
            conn, greeting = connect(server.ports[service])
            conn.close()
            assert greeting.startswith("220 netshare %s " % service)
        assert refused(files_port)
        started = [line for line in server.output().splitlines() if "netshare started:" in line]
        assert started and "files=" not in started[0] and "personnel=" in started[0]
    finally:
        server.kill()


def test_json_console_log(tmp_path):
    server = ServerProcess(tmp_path / "data", extra_args=["--log-format", "json"])
    try:
        server.start()
        conn, _ = connect(server.ports["personnel"])
        assert conn.cmd("PING") == ["200 pong"]
        assert conn.cmd("QUIT") == ["221 bye"]
        conn.close()
        server.terminate()
    finally:
        server.kill()
    with open(server.output_path, encoding="utf-8") as f:
        lines = [line for line in f.read().splitlines() if line.strip()]
    events = [json.loads(line) for line in lines]  # every console line is JSON
    pings = [e for e in events if e.get("verb") == "PING"]
    assert len(pings) == 1, lines
    ping = pings[0]
    assert ping["code"] == 200 and ping["service"] == "personnel" and ping["user"] == "-"
    assert ping["peer"].startswith("127.0.0.1:") and ping["duration_ms"] >= 0
    assert any(e.get("log_format", "").startswith("netshare stopped") for e in events)
    # the same events go to the data dir's JSON log file
    with open(os.path.join(server.data, "logs", "netshare.jsonl")) as f:
        logged = [json.loads(line) for line in f if line.strip()]
    assert any(e.get("verb") == "PING" and e.get("code") == 200 for e in logged)


def test_twist_netshare(tmp_path):
    data = tmp_path / "data"
    assert run_cli("init", "--data", str(data), "--admin-password", "pw").returncode == 0
    ports = {s: free_port() for s in SERVICES}
    out_path = tmp_path / "twist.out"
    with open(out_path, "wb") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "twisted",
                "netshare",
                "--data",
                str(data),
                *listener_args(ports),
            ],
            cwd=ROOT,
            env=env(),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_listening(proc, ports.values(), output=out_path.read_text)
        for service in SERVICES:
            conn, greeting = connect(ports[service])
            conn.close()
            assert greeting == "220 netshare %s %s ready" % (service, __version__)
        proc.send_signal(signal.SIGTERM)
        proc.wait(15)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert "netshare stopped" in out_path.read_text()


def test_make_run(tmp_path):
    """`make run` initialises a fresh data dir and serves (ports from NETSHARE_* here,
    so as not to collide with anything on 7001-7003)."""
    data = tmp_path / "var"
    ports = {s: free_port() for s in SERVICES}
    extra = {"NETSHARE_" + s.upper(): "tcp:%d:interface=127.0.0.1" % p for s, p in ports.items()}
    extra["NETSHARE_MANHOLE"] = "tcp:%d:interface=127.0.0.1" % free_port()
    extra["NETSHARE_WEB"] = "tcp:%d:interface=127.0.0.1" % free_port()  # not the shared 7005
    out_path = tmp_path / "make.out"
    with open(out_path, "wb") as out:
        # -o: the venv is already installed (by `make test`, which runs this).
        proc = subprocess.Popen(
            ["make", "--no-print-directory", "-o", ".venv/.installed", "run", "DATA=%s" % data],
            cwd=ROOT,
            env=env(**extra),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_listening(proc, ports.values(), timeout=60, output=out_path.read_text)
        for service in SERVICES:
            conn, greeting = connect(ports[service])
            conn.close()
            assert greeting == "220 netshare %s %s ready" % (service, __version__)
        # As Ctrl-C does: the signal reaches make and the server; make may
        # pass on one of its own (a second signal during the stop).
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(15)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
    text = out_path.read_text()
    assert "netshare stopped" in text and "Traceback" not in text, text
    assert text.count("admin password (shown once): ") == 1, text
    assert oct(os.stat(data).st_mode & 0o777) == oct(0o700)


# -- start-up refusals ------------------------------------------------------------------


def test_bad_setting_option(tmp_path):
    status, lines = run_twistd("--data", str(tmp_path), "--idle-timeout", "abc")
    assert_one_clear_line(status, lines, "--idle-timeout", "'abc'")
    assert lines == ["netshare: setting --idle-timeout: expected a number of seconds (got 'abc')"]


def test_bad_setting_environment(tmp_path):
    status, lines = run_twistd("--data", str(tmp_path), NETSHARE_MAX_LINE="0")
    assert_one_clear_line(status, lines, "NETSHARE_MAX_LINE")


def test_bad_config_file(tmp_path):
    ini = tmp_path / "netshare.ini"
    ini.write_text("[files]\nendpoint = tcp:nope\n")
    status, lines = run_twistd("--config", str(ini), "--data", str(tmp_path))
    assert_one_clear_line(status, lines, "[files] endpoint in %s" % ini)
    ini.write_text("[files]\nendpoint = none\ncolour = blue\n")
    status, lines = run_twistd("--config", str(ini), "--data", str(tmp_path))
    assert_one_clear_line(status, lines, "unknown setting [files] colour")


def test_busy_port(tmp_path):
    data = tmp_path / "data"
    assert run_cli("init", "--data", str(data), "--admin-password", "pw").returncode == 0
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        ports = {"personnel": free_port(), "files": port, "ttweet": free_port()}
        status, lines = run_twistd("--data", str(data), *listener_args(ports), timeout=20)
    assert_one_clear_line(status, lines, "cannot listen on", str(port), "in use")


def test_missing_data_dir(tmp_path):
    status, lines = run_twistd("--data", str(tmp_path / "nowhere"))
    assert_one_clear_line(status, lines, "does not exist", "netshare init")


def test_database_without_schema(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    status, lines = run_twistd("--data", str(data), *listener_args({}))
    assert_one_clear_line(status, lines, "no netshare schema", "run `netshare init` first")


def test_database_with_newer_schema(tmp_path):
    data = tmp_path / "data"
    assert run_cli("init", "--data", str(data), "--admin-password", "pw").returncode == 0
    engine = sa.create_engine("sqlite:///%s" % (data / "netshare.db"))
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE alembic_version SET version_num = '9999_future'"))
    engine.dispose()
    status, lines = run_twistd("--data", str(data), *listener_args({}))
    assert_one_clear_line(
        status, lines, "9999_future is newer than this netshare (%s)" % HEAD, "upgrade netshare"
    )


def test_unreachable_database(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    url = "postgresql+psycopg://postgres@127.0.0.1:%d/none" % free_port()
    start = time.monotonic()
    status, lines = run_twistd("--data", str(data), "--db", url, *listener_args({}))
    assert_one_clear_line(status, lines, "cannot use database", "127.0.0.1")
    assert time.monotonic() - start < 20

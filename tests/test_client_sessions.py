"""
The client programs' session tokens against a real `twistd netshare`: the
first command logs in with the password and keeps a token (mode 0600), the
next ones log in with it and need no password and no Twisted (the quick
path, netshare/clients/quick.py), print exactly what the full program
prints, fall back to the password when the token was revoked, and
`logout` ends the session on the server.
"""

import json
import os
import stat
import subprocess
import sys

import pytest

from tests.support import ROOT, ServerProcess, env, run_cli

pytestmark = pytest.mark.timeout(180, method="thread")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = ServerProcess(tmp_path_factory.mktemp("sessions") / "data").start()
    yield srv
    srv.terminate()
    srv.kill()


def files(server, *args, password="adminpw", importtime=False, sessions_file, **extra):
    """`netshare-files` as its console script runs it (netshare.clients.quick)."""
    settings = dict(NETSHARE_USER="admin", NETSHARE_SESSIONS=str(sessions_file))
    if password is not None:
        settings["NETSHARE_PASSWORD"] = password
    settings.update(extra)
    e = env(**settings)
    if password is None:
        e.pop("NETSHARE_PASSWORD", None)
    return subprocess.run(
        [
            sys.executable,
            *(["-X", "importtime"] if importtime else []),
            "-m",
            "netshare.clients.quick",
            "--port",
            str(server.ports["files"]),
            *args,
        ],
        cwd=ROOT,
        env=e,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_token_kept_then_used_without_password_or_twisted(server, tmp_path):
    kept = tmp_path / "conf" / "sessions.json"
    first = files(server, "list", sessions_file=kept)
    assert first.returncode == 0, first.stderr
    assert stat.S_IMODE(os.stat(kept).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(kept.parent).st_mode) == 0o700
    (which,) = json.loads(kept.read_text())
    assert which == "admin@127.0.0.1:%d" % server.ports["files"]

    # No password anywhere (stdin is not a terminal: a prompt would fail),
    # and Twisted never imported.
    second = files(server, "list", password=None, importtime=True, sessions_file=kept)
    assert second.returncode == 0, second.stderr
    assert second.stdout == first.stdout
    imported = [line.split("|")[-1].strip() for line in second.stderr.splitlines()]
    assert "netshare.clients.files_args" in imported and "twisted" not in imported

    # The same output as the full program, JSON and errors included.
    for args in (["--json", "list"], ["info", "nosuch"], ["history", "--limit", "2"]):
        quick = files(server, *args, password=None, sessions_file=kept)
        full = files(server, "--no-session", *args, sessions_file=kept)
        assert quick.returncode == full.returncode, (args, quick, full)
        if args[0] != "history":  # (the history itself moved on)
            assert (quick.stdout, quick.stderr) == (full.stdout, full.stderr), args

    listed = files(server, "--json", "sessions", password=None, sessions_file=kept)
    assert listed.returncode == 0, listed.stderr
    (session,) = json.loads(listed.stdout)
    token = json.loads(kept.read_text())[which]["token"]
    assert token.split(".")[1] == str(session["id"]) and token not in listed.stdout


def test_revoked_token_falls_back_to_the_password_and_logout(server, tmp_path):
    kept = tmp_path / "sessions.json"
    assert files(server, "list", sessions_file=kept).returncode == 0
    (which,) = json.loads(kept.read_text())
    old = json.loads(kept.read_text())[which]["token"]
    r = run_cli("user", "sessions", "admin", "--revoke", old.split(".")[1], "--data", server.data)
    assert r.returncode == 0, r.stderr

    # Without a password the revoked token cannot be replaced: a clean refusal.
    r = files(server, "list", password=None, sessions_file=kept)
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert which not in json.loads(kept.read_text())
    # With it, a new session is kept.
    r = files(server, "list", sessions_file=kept)
    assert r.returncode == 0, r.stderr
    new = json.loads(kept.read_text())[which]["token"]
    assert new != old

    r = files(server, "logout", password=None, sessions_file=kept)
    assert r.returncode == 0 and r.stdout.startswith("logged out of " + which), r
    assert which not in json.loads(kept.read_text())
    r = files(server, "logout", password=None, sessions_file=kept)
    assert r.stdout == "no session kept for %s\n" % which
    r = run_cli("user", "sessions", "admin", "--json", "--data", server.data)
    assert new.split(".")[1] not in [str(s["id"]) for s in json.loads(r.stdout)]


def test_no_session_keeps_nothing(server, tmp_path):
    kept = tmp_path / "sessions.json"
    assert files(server, "--no-session", "list", sessions_file=kept).returncode == 0
    assert not kept.exists()
    assert files(server, "list", sessions_file=kept, NETSHARE_SESSIONS="off").returncode == 0
    assert not kept.exists()

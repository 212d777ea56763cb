"""
The operator CLI: C{netshare init | user ... | db ...}.

Most tests call L{netshare.cli.main} in-process (fast); the ones about what
an operator sees from the real command (exit status, the password printed
once, a password on standard input) run it as a subprocess.  Database tests
run on SQLite and, when configured, on a private PostgreSQL / MariaDB
database each.
"""

import io
import json
import os
import stat

import pytest
import sqlalchemy as sa

from netshare import cli
from netshare.kdf import scrypt
from netshare.services.accounts import parse_hash
from netshare.storage import accounts as A
from netshare.storage import migrate
from netshare.storage import sessions as session_store
from netshare.storage.engine import create_engine
from netshare.wire import now_ms
from tests.support import run_cli

HEAD = migrate.head()


@pytest.fixture
def environ(monkeypatch):
    """Cheap hashing, and no NETSHARE_* setting from outside."""
    for key in list(os.environ):
        if key.startswith("NETSHARE_") and not key.startswith("NETSHARE_TEST_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("NETSHARE_SCRYPT_N", "1024")
    return monkeypatch


def run(*args):
    """Run the CLI in-process: (exit status, stdout, message of a SystemExit)."""
    out = io.StringIO()
    try:
        code, message = cli.main(list(args), out=out), ""
    except SystemExit as e:
        code, message = (1, e.code) if isinstance(e.code, str) else (e.code, "")
    return code, out.getvalue(), message


def mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def engine_for(url, data):
    return create_engine(url, str(data))


def account(url, data, name):
    engine = engine_for(url, data)
    try:
        with engine.begin() as conn:
            return A.thd_get(conn, name)
    finally:
        engine.dispose()


def password_ok(acct, password):
    n, r, p, salt, key = parse_hash(acct.password_hash)
    return scrypt(password.encode("utf-8"), salt, n, r, p, len(key)) == key


def set_revision(url, data, revision):
    engine = engine_for(url, data)
    try:
        with engine.begin() as conn:
            conn.execute(sa.text("UPDATE alembic_version SET version_num = :v"), {"v": revision})
    finally:
        engine.dispose()


def snapshot(data, url):
    files = {}
    for rel in ("tls/cert.pem", "tls/key.pem", "ssh_host_key"):
        path = os.path.join(data, rel)
        files[rel] = (open(path, "rb").read(), os.stat(path).st_mtime_ns, mode(path))
    acct = account(url, data, "admin")
    engine = engine_for(url, data)
    try:
        revision = migrate.current(engine)
        with engine.begin() as conn:
            accounts = [(a.name, a.role, a.password_hash) for a in A.thd_list(conn)]
    finally:
        engine.dispose()
    return files, acct, revision, accounts, mode(data)


# -- init ---------------------------------------------------------------------------


def test_init_creates_everything_and_prints_the_password_once(tmp_path):
    data = str(tmp_path / "var")
    url = "sqlite:///netshare.db"
    r = run_cli("init", "--data", data)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    shown = [line for line in lines if line.startswith("admin password (shown once): ")]
    assert len(shown) == 1, r.stdout
    password = shown[0].split(": ", 1)[1]
    assert len(password) >= 12
    assert "database schema empty -> %s" % HEAD in lines
    assert "created account admin (admin)" in lines
    # permissions
    assert mode(data) == 0o700
    for sub in ("files", "logs", "tls"):
        assert mode(os.path.join(data, sub)) == 0o700, sub
    assert mode(os.path.join(data, "tls", "key.pem")) == 0o600
    assert mode(os.path.join(data, "ssh_host_key")) == 0o600
    assert (
        open(os.path.join(data, "tls", "cert.pem"))
        .read()
        .startswith("-----BEGIN CERTIFICATE-----")
    )
    assert b"OPENSSH PRIVATE KEY" in open(os.path.join(data, "ssh_host_key"), "rb").read()
    # the printed password is the admin's, stored only as a salted scrypt hash
    admin = account(url, data, "admin")
    assert admin.role == "admin"
    assert password not in admin.password_hash and admin.password_hash.startswith("scrypt$")
    assert password_ok(admin, password)
    assert password not in open(os.path.join(data, "netshare.db"), "rb").read().decode("latin-1")

    # again: nothing changes, and it says so
    before = snapshot(data, url)
    r = run_cli("init", "--data", data)
    assert r.returncode == 0, r.stderr
    assert r.stdout == "already initialised: nothing changed (%s)\n" % data
    assert snapshot(data, url) == before


def test_init_repairs_the_data_dir_mode(tmp_path, environ):
    data = str(tmp_path / "var")
    assert run("init", "--data", data, "--admin-password", "pw")[0] == 0
    os.chmod(data, 0o755)
    assert run("init", "--data", data)[0] == 0
    assert mode(data) == 0o700


def test_init_with_admin_password(scratch_url, tmp_path, environ):
    data = str(tmp_path / "var")
    code, out, _ = run(
        "init", "--data", data, "--db", scratch_url, "--admin-password", "correct horse ✓"
    )
    assert code == 0
    assert "shown once" not in out and "correct horse" not in out
    assert "database schema empty -> %s" % HEAD in out.splitlines()
    admin = account(scratch_url, data, "admin")
    assert admin.role == "admin" and password_ok(admin, "correct horse ✓")
    before = snapshot(data, scratch_url)
    # a second run with another password changes nothing
    code, out, _ = run("init", "--data", data, "--db", scratch_url, "--admin-password", "other")
    assert (code, out) == (0, "already initialised: nothing changed (%s)\n" % data)
    assert snapshot(data, scratch_url) == before


def test_init_takes_the_admin_password_from_the_environment_not_the_command_line(tmp_path):
    data = str(tmp_path / "var")
    r = run_cli("init", "--data", data, NETSHARE_PASSWORD="from the environment")
    assert r.returncode == 0, r.stderr
    assert "shown once" not in r.stdout and "from the environment" not in r.stdout + r.stderr
    admin = account("sqlite:///netshare.db", data, "admin")
    assert password_ok(admin, "from the environment")
    helptext = run_cli("init", "--help").stdout
    assert "--admin-password " not in helptext and "--ask-admin-password" in helptext
    r = run_cli("init", "--data", str(tmp_path / "other"), "--admin-password", "visible-pw")
    assert r.returncode == 0 and "prefer NETSHARE_PASSWORD" in r.stderr


def test_init_refuses_a_bad_admin_password(tmp_path):
    data = str(tmp_path / "var")
    r = run_cli("init", "--data", data, "--admin-password", "x" * 129)
    assert r.returncode == 1, r.stdout
    assert r.stderr == "netshare: password must be 1-128 characters\n"
    # a good password afterwards completes the set-up
    r = run_cli("init", "--data", data, "--admin-password", "good")
    assert r.returncode == 0, r.stderr
    assert "created account admin (admin)" in r.stdout.splitlines()


def test_init_demo(scratch_url, tmp_path, environ):
    data = str(tmp_path / "var")
    code, out, _ = run(
        "init", "--data", data, "--db", scratch_url, "--demo", "--admin-password", "pw"
    )
    assert code == 0, out
    for name in ("alice", "bob", "client1", "client2"):
        assert "created demo account %s (password %s-demo)" % (name, name) in out
        acct = account(scratch_url, data, name)
        assert acct.role == "user" and password_ok(acct, name + "-demo")
    assert "added 3 demo personnel" in out
    before = snapshot(data, scratch_url)
    code, out, _ = run("init", "--data", data, "--db", scratch_url, "--demo")
    assert (code, out) == (0, "already initialised: nothing changed (%s)\n" % data)
    assert snapshot(data, scratch_url) == before


# -- user ---------------------------------------------------------------------------


def test_user_commands(scratch_url, tmp_path, environ):
    data = str(tmp_path / "var")
    db = ["--data", data, "--db", scratch_url]
    assert run("init", *db, "--admin-password", "pw")[0] == 0

    environ.setenv("NETSHARE_PASSWORD", "alice pw ✓")
    assert run("user", "add", "alice", *db)[:2] == (0, "created alice (user)\n")
    assert password_ok(account(scratch_url, data, "alice"), "alice pw ✓")
    environ.setenv("NETSHARE_PASSWORD", "rootpw")
    assert run("user", "add", "Root2", "--admin", *db)[:2] == (0, "created Root2 (admin)\n")
    assert account(scratch_url, data, "root2").role == "admin"

    code, _, message = run("user", "add", "ALICE", *db)
    assert (code, message) == (1, "netshare: account ALICE exists")
    code, _, message = run("user", "add", "bad-name", *db)
    assert (code, message) == (1, "netshare: username must be 1-32 ASCII letters or digits")
    environ.setenv("NETSHARE_PASSWORD", "")
    code, _, message = run("user", "add", "carol", *db)
    assert (code, message) == (1, "netshare: password must be 1-128 characters")
    assert account(scratch_url, data, "carol") is None

    code, out, _ = run("user", "list", *db)
    assert code == 0
    header, *lines = out.splitlines()
    assert header.split() == ["USER", "ROLE", "CREATED", "LAST", "LOGIN"]
    rows = [line.split()[:2] for line in lines]
    assert sorted(rows) == [["Root2", "admin"], ["admin", "admin"], ["alice", "user"]]
    assert all(line.split()[2].endswith("Z") for line in lines)
    assert all(line.split()[3] == "never" for line in lines)
    code, listed, _ = run("user", "list", "--json", *db)
    assert code == 0 and sorted(a["user"] for a in json.loads(listed)) == [
        "Root2",
        "admin",
        "alice",
    ]
    # options before the sub-command work too
    assert run("--data", data, "--db", scratch_url, "user", "list")[1] == out

    # Sessions: listed per account (or *), ended one by one or all.
    alice_id = account(scratch_url, data, "alice").id
    engine = create_engine(scratch_url, data)
    try:
        with engine.begin() as conn:
            ids = [
                session_store.thd_create(conn, alice_id, "0" * 64, label, "127.0.0.1", now_ms(), 0)
                for label in ("laptop", "ci")
            ]
    finally:
        engine.dispose()
    code, out, _ = run("user", "sessions", "alice", *db)
    assert code == 0
    header, *lines = out.splitlines()
    assert header.split()[:3] == ["ID", "USER", "LABEL"]
    assert [line.split()[:3] for line in lines] == [
        [str(ids[1]), "alice", "ci"],
        [str(ids[0]), "alice", "laptop"],
    ]
    code, out, _ = run("user", "sessions", "*", "--json", *db)
    assert [s["label"] for s in json.loads(out)] == ["ci", "laptop"]
    assert "token" not in out and "0" * 64 not in out
    assert run("user", "sessions", "alice", "--revoke", str(ids[0]), *db)[:2] == (
        0,
        "1 session ended\n",
    )
    code, _, message = run("user", "sessions", "alice", "--revoke", str(ids[0]), *db)
    assert (code, message) == (1, "netshare: no session %d of alice" % ids[0])
    assert run("user", "sessions", "nobody", *db)[2] == "netshare: no account nobody"
    assert run("user", "sessions", "admin", *db)[1] == "no sessions\n"

    # A new password ends the account's sessions.
    environ.setenv("NETSHARE_PASSWORD", "new pw")
    assert run("user", "passwd", "alice", *db)[:2] == (0, "password of alice changed\n")
    assert run("user", "sessions", "alice", *db)[1] == "no sessions\n"
    alice = account(scratch_url, data, "alice")
    assert password_ok(alice, "new pw") and not password_ok(alice, "alice pw ✓")
    code, _, message = run("user", "passwd", "nobody", *db)
    assert (code, message) == (1, "netshare: no account nobody")
    environ.setenv("NETSHARE_PASSWORD", "")  # asked before the password is checked
    code, _, message = run("user", "passwd", "nobody", *db)
    assert (code, message) == (1, "netshare: no account nobody")

    assert run("user", "remove", "alice", *db)[:2] == (
        0,
        (
            "removed alice (files: 0 deleted; pending sync records: 0 dropped; history kept for "
            "admins)\n"
        ),
    )
    assert account(scratch_url, data, "alice") is None
    code, _, message = run("user", "remove", "alice", *db)
    assert (code, message) == (1, "netshare: no account alice")
    assert "alice" not in run("user", "list", *db)[1]


def test_user_password_from_standard_input(tmp_path):
    data = str(tmp_path / "var")
    assert run_cli("init", "--data", data, "--admin-password", "pw").returncode == 0
    assert "NETSHARE_PASSWORD" not in os.environ
    r = run_cli("user", "add", "dave", "--data", data, input="from stdin pw\n")
    assert r.returncode == 0, r.stderr
    assert r.stdout == "created dave (user)\n"
    assert password_ok(account("sqlite:///netshare.db", data, "dave"), "from stdin pw")


def test_user_commands_need_the_schema(scratch_url, tmp_path, environ, capsys):
    data = tmp_path / "var"
    data.mkdir()
    assert run("user", "list", "--data", str(data), "--db", scratch_url)[0] == 1
    assert capsys.readouterr().err == (
        "netshare: database has no netshare schema: run `netshare init` first\n"
    )


# -- db -------------------------------------------------------------------------------


def test_db_check_and_upgrade(scratch_url, tmp_path, environ, capsys):
    data = tmp_path / "var"
    data.mkdir()
    db = ["--data", str(data), "--db", scratch_url]
    assert run("db", "check", *db)[:2] == (
        1,
        "schema missing (database none, this netshare %s)\n" % HEAD,
    )
    assert run("db", "upgrade", *db)[:2] == (0, "schema empty -> %s\n" % HEAD)
    assert run("db", "upgrade", *db)[:2] == (0, "schema already current (%s)\n" % HEAD)
    assert run("db", "check", *db)[:2] == (
        0,
        "schema current (database %s, this netshare %s)\n"
        "files: 0 rows, 0 blobs on disk\nfiles: consistent\n" % (HEAD, HEAD),
    )
    set_revision(scratch_url, data, "9999_future")
    assert run("db", "check", *db)[:2] == (
        1,
        "schema newer (database 9999_future, this netshare %s)\n" % HEAD,
    )
    assert run("user", "list", *db)[0] == 1
    assert capsys.readouterr().err == (
        "netshare: database schema 9999_future is newer than this netshare (%s): "
        "upgrade netshare\n" % HEAD
    )


def test_db_upgrade_migrates_an_older_schema(scratch_url, tmp_path, environ):
    revisions = migrate.revisions()  # oldest first
    if len(revisions) < 2:
        pytest.skip("only one migration exists so far")
    first = revisions[0]
    data = tmp_path / "var"
    data.mkdir()
    engine = engine_for(scratch_url, data)
    try:
        migrate.upgrade(engine, first)
        with engine.begin() as conn:
            A.thd_create(conn, "kept", "user", "h")
    finally:
        engine.dispose()
    db = ["--data", str(data), "--db", scratch_url]
    assert run("db", "check", *db)[:2] == (
        1,
        "schema old (database %s, this netshare %s)\n" % (first, HEAD),
    )
    assert run("db", "upgrade", *db)[:2] == (0, "schema %s -> %s\n" % (first, HEAD))
    assert run("db", "check", *db)[0] == 0
    assert account(scratch_url, data, "kept").name == "kept"  # data survives the migration


def test_db_check_reports_files_without_content_and_content_without_files(scratch_url, tmp_path):
    """A row whose blob is gone from disk and a blob no row names: both
    listed, exit status 1."""
    from netshare.services.files.blobs import BlobStore
    from netshare.storage.files import thd_insert

    data = tmp_path / "var"
    data.mkdir()
    db = ["--data", str(data), "--db", scratch_url]
    assert run("db", "upgrade", *db)[0] == 0
    blobs = BlobStore(str(data / "files"))
    stray = "ab" * 16
    os.makedirs(os.path.dirname(blobs.path_of(stray)), exist_ok=True)
    with open(blobs.path_of(stray), "wb") as f:
        f.write(b"nobody's")
    engine = engine_for(scratch_url, data)
    try:
        with engine.begin() as conn:
            thd_insert(
                conn,
                name="lost.txt",
                name_key="lost.txt",
                owner="alice",
                owner_id=1,
                size=3,
                sha256="0" * 64,
                visibility="public",
                blob_id="cd" * 16,
                enc_meta=None,
                created_ms=1,
            )
    finally:
        engine.dispose()
    code, out, _ = run("db", "check", *db)
    assert code == 1
    assert out.splitlines()[1:] == [
        "files: 1 rows, 1 blobs on disk",
        "row without content: lost.txt",
        "content without a row: " + stray,
    ]


def test_db_check_exit_status(tmp_path):
    """The real command's exit status: missing 1, current 0, newer 1."""
    data = tmp_path / "var"
    data.mkdir()
    r = run_cli("db", "check", "--data", str(data))
    assert (r.returncode, r.stdout.split()[:2]) == (1, ["schema", "missing"]), r.stderr
    assert run_cli("db", "upgrade", "--data", str(data)).returncode == 0
    r = run_cli("db", "check", "--data", str(data))
    assert (r.returncode, r.stdout.split()[:2]) == (0, ["schema", "current"]), r.stderr
    set_revision("sqlite:///netshare.db", data, "9999_future")
    r = run_cli("db", "check", "--data", str(data))
    assert (r.returncode, r.stdout.split()[:2]) == (1, ["schema", "newer"]), r.stderr


def test_db_upgrade_refuses_a_newer_schema_clearly(tmp_path):
    data = tmp_path / "var"
    data.mkdir()
    assert run_cli("db", "upgrade", "--data", str(data)).returncode == 0
    set_revision("sqlite:///netshare.db", data, "9999_future")
    for args in (["db", "upgrade"], ["init"]):
        r = run_cli(*args, "--data", str(data), NETSHARE_PASSWORD="pw")
        assert r.returncode == 1, (args, r.stdout, r.stderr)
        assert "Traceback" not in r.stderr, (args, r.stderr)
        assert len(r.stderr.splitlines()) == 1, (args, r.stderr)
        assert "newer than this netshare" in r.stderr, (args, r.stderr)


# -- bad settings ----------------------------------------------------------------------


def test_bad_setting_exit_2(tmp_path, environ, capsys):
    environ.setenv("NETSHARE_SCRYPT_N", "1000")
    assert run("db", "check", "--data", str(tmp_path))[0] == 2
    assert capsys.readouterr().err == (
        "netshare: setting NETSHARE_SCRYPT_N: must be a power of two (e.g. 131072) (got '1000')\n"
    )


def test_bad_database_url(tmp_path, environ, capsys):
    assert run("db", "check", "--data", str(tmp_path), "--db", "nosuchdb://x/y")[0] == 1
    err = capsys.readouterr().err
    assert err.startswith("netshare: ") and len(err.splitlines()) == 1, err
    assert run("db", "check", "--data", str(tmp_path / "missing"))[0] == 1
    err = capsys.readouterr().err
    assert err.startswith("netshare: SQLite directory ") and "does not exist" in err, err


def test_unreachable_database(tmp_path, environ, capsys):
    from tests.support import free_port

    url = "postgresql+psycopg://postgres@127.0.0.1:%d/none" % free_port()
    assert run("db", "check", "--data", str(tmp_path), "--db", url)[0] == 1
    err = capsys.readouterr().err
    assert err.startswith("netshare: database error: ") and len(err.splitlines()) == 1, err

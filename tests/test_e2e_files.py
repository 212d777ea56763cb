"""
The files service end to end (issue 4): the real `twistd -n netshare`
process, the `netshare-files` client program and raw sockets.

 - every client command, its output and its exit status;
 - every refusal code of docs/protocol.md section 2 on the wire;
 - the names that must be refused, one test each, and nothing written
   outside the data directory; NFC/NFD spellings of one name collide;
 - kill -9 of the server mid-upload (a new file and a replace): after the
   restart the new file is absent, the old one intact, no temporary left;
 - a protected file's plaintext is nowhere in the data directory, the right
   password gets it byte for byte, the lockout hits only the guesser;
 - a download cut off halfway is resumed by the client with offset= and
   ends verified;
 - a download in flight finishes on the old content across a replace and
   a delete;
 - TLS, and the same flow on PostgreSQL and MariaDB when configured.

One server serves most of this module (SQLite); tests that need other
settings or a crash start their own.  Files are small except where size is
the point (a few MiB for resume and in-flight replace).
"""

import hashlib
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

from tests.support import ROOT, LineConn, ServerProcess, env

pytestmark = pytest.mark.timeout(180)

MiB = 1024 * 1024
PW = {
    "admin": "adminpw",
    "alice": "pw-alice",
    "bob": "pw-bob",
    "carol": "pw-carol",
    "dave": "pw-dave",
    "erin": "pw-erin",
}
MODULE_ARGS = [
    "--max-file-size",
    "32MiB",
    "--user-quota",
    "40MiB",
    "--login-failure-delay",
    "0.05",
    "--registration",
    "open",
]


def sha(data):
    return hashlib.sha256(data).hexdigest()


def quote(*words):
    return " ".join(shlex.quote(str(w)) for w in words)


# ---------------------------------------------------------------- helpers


def files_cli(server, *args, user="alice", cwd=None, timeout=60, **env_extra):
    """Run `netshare-files --port P ARGS` as C{user} (password from the env)."""
    settings = dict(NETSHARE_USER=user, NETSHARE_PASSWORD=PW.get(user, "x"))
    settings.update(env_extra)
    e = env(**settings)
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "netshare.clients.files",
            "--port",
            str(server.ports["files"]),
            *args,
        ],
        cwd=cwd or ROOT,
        env=e,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def connect(port, user=None, rcvbuf=None):
    """A raw LineConn, greeted and (if C{user}) logged in."""
    if rcvbuf is None:
        c = LineConn(port)
    else:
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)  # before connect
        s.settimeout(10)
        s.connect(("127.0.0.1", port))
        c = LineConn.__new__(LineConn)
        c.sock, c.buf = s, b""
    assert c.readline().startswith("220 netshare files ")
    if user is not None:
        r = c.cmd(quote("LOGIN", user, PW[user]))
        assert r[0].startswith("230 "), r
    return c


def read_exactly(c, n):
    while len(c.buf) < n:
        chunk = c.sock.recv(min(1 << 20, max(n - len(c.buf), 65536)))
        if not chunk:
            raise EOFError("closed after %d of %d bytes" % (len(c.buf), n))
        c.buf += chunk
    data, c.buf = c.buf[:n], c.buf[n:]
    return data


def upload(c, name, data, *options):
    """UPLOAD on a raw connection; @return: the final line (or the refusal)."""
    r = c.cmd(quote("UPLOAD", name, len(data), *options))
    if not r[0].startswith("350 "):
        return r[0]
    c.send(data)
    return c.readline()


def download(c, name, *options):
    """DOWNLOAD on a raw connection; @return: (150 line, bytes, 226 line) or (refusal,)."""
    r = c.cmd(quote("DOWNLOAD", name, *options))
    if not r[0].startswith("150 "):
        return (r[0],)
    n = int(r[0].split()[1])
    body = read_exactly(c, n)
    return r[0], body, c.readline()


def tree(path, skip=()):
    """Every file below C{path} (relative), except below the names in C{skip}."""
    out = set()
    for base, dirs, names in os.walk(path):
        dirs[:] = [d for d in dirs if os.path.join(base, d) not in skip]
        out |= {os.path.relpath(os.path.join(base, n), path) for n in names}
    return out


def wait_until(predicate, timeout=10, what="condition"):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("%s not reached within %ss" % (what, timeout))
        time.sleep(0.02)


def register(port, *users):
    c = connect(port)
    try:
        for u in users:
            r = c.cmd(quote("REGISTER", u, PW[u]))
            assert r[0].startswith("201 "), r
    finally:
        c.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    base = tmp_path_factory.mktemp("files-e2e")
    srv = ServerProcess(base / "data", extra_args=MODULE_ARGS).start()
    srv.base = str(base)
    srv.before = tree(str(base), skip={srv.data})
    register(srv.ports["files"], "alice", "bob", "carol", "dave", "erin")
    yield srv
    srv.terminate()
    srv.kill()


@pytest.fixture
def workdir(tmp_path):
    d = tmp_path / "client"
    d.mkdir()
    return str(d)


# ---------------------------------------------------------------- the client program


def test_client_commands(server, workdir):
    """Every command of netshare-files against the real server: its output
    on success, and a non-zero exit status with the server's reply line on
    a refusal."""
    src = os.path.join(workdir, "notes.txt")
    with open(src, "wb") as f:
        f.write(b"client test content\n" * 100)
    content = open(src, "rb").read()

    r = files_cli(server, "--user", "frank", "register", cwd=workdir, NETSHARE_PASSWORD="pw-f")
    assert r.returncode == 0 and r.stdout.strip() == "registered frank", r
    r = files_cli(server, "--user", "frank", "register", cwd=workdir, NETSHARE_PASSWORD="pw-f")
    assert r.returncode == 1 and "555" in r.stderr

    r = files_cli(server, "upload", src, cwd=workdir)
    assert r.returncode == 0, r
    assert r.stdout.strip() == "stored notes.txt (%d bytes, sha256 %s)" % (
        len(content),
        sha(content),
    )
    r = files_cli(server, "upload", src, cwd=workdir)
    assert r.returncode == 1 and "555 file exists (use replace=yes)" in r.stderr
    r = files_cli(server, "upload", src, "--replace", cwd=workdir)
    assert r.returncode == 0, r
    r = files_cli(server, "upload", src, "--name", "cli hidden.txt", "--hidden", cwd=workdir)
    assert r.returncode == 0, r
    r = files_cli(
        server,
        "upload",
        src,
        "--name",
        "cli-vault.txt",
        "--protect",
        cwd=workdir,
        NETSHARE_FILE_PASSWORD="file-pw",
    )
    assert r.returncode == 0, r

    r = files_cli(server, "list", cwd=workdir)
    assert r.returncode == 0
    assert r.stdout.splitlines()[0].split() == [
        "name",
        "size",
        "owner",
        "visibility",
        "protected",
        "created",
    ]
    # Sizes are human-readable in tables (2000 bytes: "2.0 KiB"), raw with --bytes.
    assert re.search(r"^notes\.txt +2\.0 KiB +alice +public +no ", r.stdout, re.M)
    assert re.search(r"^cli-vault\.txt +2\.0 KiB +alice +public +yes ", r.stdout, re.M)
    raw = files_cli(server, "list", "--bytes", cwd=workdir).stdout
    assert re.search(r"^notes\.txt +%d +alice +public +no " % len(content), raw, re.M)
    assert "cli hidden.txt" not in r.stdout
    r = files_cli(server, "--json", "list", "--mine", cwd=workdir, user="bob")
    assert r.returncode == 0 and json.loads(r.stdout) == []
    r = files_cli(server, "list", "--hidden", user="admin", cwd=workdir)
    assert r.returncode == 0 and "cli hidden.txt" in r.stdout
    r = files_cli(server, "list", "--hidden", cwd=workdir)  # the owner's own
    assert r.returncode == 0 and "cli hidden.txt" in r.stdout
    r = files_cli(server, "--json", "list", "--hidden", cwd=workdir, user="bob")
    assert r.returncode == 0 and json.loads(r.stdout) == []

    r = files_cli(server, "--json", "info", "notes.txt", cwd=workdir, user="bob")
    info = json.loads(r.stdout)
    assert info["sha256"] == sha(content) and info["owner"] == "alice"
    r = files_cli(server, "info", "no-such-file", cwd=workdir)
    assert r.returncode == 1 and r.stderr.strip() == "netshare-files: 550 no such file"

    r = files_cli(server, "checksum", "notes.txt", cwd=workdir)
    assert (r.returncode, r.stdout.strip()) == (0, sha(content))
    r = files_cli(server, "checksum", "notes.txt", src, cwd=workdir)
    assert r.returncode == 0 and "match" in r.stdout
    other = os.path.join(workdir, "other.txt")
    with open(other, "wb") as f:
        f.write(b"different")
    r = files_cli(server, "checksum", "notes.txt", other, cwd=workdir)
    assert r.returncode == 1 and "DIFFERENT" in r.stdout

    r = files_cli(server, "download", "notes.txt", cwd=workdir, user="bob")
    assert r.returncode == 0 and "sha256 verified" in r.stdout, r
    assert r.stderr == ""  # no progress bar when not on a terminal
    assert open(os.path.join(workdir, "notes.txt"), "rb").read() == content
    out_dir = os.path.join(workdir, "out")
    os.mkdir(out_dir)
    r = files_cli(server, "download", "cli hidden.txt", "-o", out_dir, cwd=workdir, user="bob")
    assert r.returncode == 0, r
    assert open(os.path.join(out_dir, "cli hidden.txt"), "rb").read() == content
    r = files_cli(
        server,
        "download",
        "cli-vault.txt",
        "-o",
        os.path.join(out_dir, "v"),
        cwd=workdir,
        user="bob",
        NETSHARE_FILE_PASSWORD="file-pw",
    )
    assert r.returncode == 0, r
    assert open(os.path.join(out_dir, "v"), "rb").read() == content
    r = files_cli(
        server,
        "download",
        "cli-vault.txt",
        "-o",
        os.path.join(out_dir, "w"),
        cwd=workdir,
        user="carol",
        NETSHARE_FILE_PASSWORD="wrong",
    )
    assert r.returncode == 1 and "535 wrong file password" in r.stderr
    assert sorted(os.listdir(out_dir)) == ["cli hidden.txt", "v"]  # no partial left

    r = files_cli(server, "delete", "notes.txt", cwd=workdir, user="bob")
    assert r.returncode == 1 and "531 " in r.stderr
    r = files_cli(server, "delete", "notes.txt", cwd=workdir)
    assert (r.returncode, r.stdout.strip()) == (0, "deleted notes.txt")
    r = files_cli(server, "delete", "cli hidden.txt", cwd=workdir, user="admin")
    assert r.returncode == 0

    r = files_cli(server, "--json", "history", "--limit", "50", cwd=workdir)
    commands = [(e["command"], e["code"]) for e in json.loads(r.stdout)]
    assert ("DELETE notes.txt", 200) in commands
    assert any(
        c.startswith("UPLOAD cli-vault.txt") and "password=***" in c and code == 226
        for c, code in commands
    )
    assert "file-pw" not in r.stdout
    r = files_cli(server, "history", cwd=workdir)
    assert r.returncode == 0 and r.stdout.splitlines()[0].split() == [
        "id",
        "ts",
        "user",
        "service",
        "command",
        "code",
    ]

    # The session kept by the commands above logs in without the password;
    # --no-session uses (and checks) the password.
    r = files_cli(server, "list", cwd=workdir, NETSHARE_PASSWORD="wrong")
    assert r.returncode == 0, r
    r = files_cli(server, "--no-session", "list", cwd=workdir, NETSHARE_PASSWORD="wrong")
    assert r.returncode == 1 and "535" in r.stderr
    r = subprocess.run(
        [sys.executable, "-m", "netshare.clients.files", "--port", "1", "list"],
        env=env(NETSHARE_USER="alice", NETSHARE_PASSWORD="x"),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 3 and "cannot talk to" in r.stderr


def test_progress_bar_shows_bytes_rate_and_eta_on_a_terminal():
    """The transfer bar (tqdm) on a terminal: the label, bytes done of the
    total in binary units, the rate and the time left; a resumed transfer
    starts at what it has.  Nothing at all when stderr is not a terminal."""
    import io

    from netshare.clients.files import progress_bar

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    out = Terminal()
    bar = progress_bar(8 * MiB, "download", initial=2 * MiB, stream=out)
    bar.update(2 * MiB)
    bar.close()
    text = out.getvalue()
    assert "download" in text and "50%" in text, text
    assert "4.00M/8.00M" in text and "B/s" in text and "<" in text, text  # done/total, rate, ETA
    piped = io.StringIO()
    quiet = progress_bar(10, "upload", stream=piped)
    quiet.update(10)
    quiet.close()
    assert piped.getvalue() == ""


# ---------------------------------------------------------------- refusal codes


def test_every_refusal_code_on_the_wire(server):
    """553, 555, 552 (size and quota), 554, 550, 535, 429, 501, 531 (and 530
    before login) from the real server; 452 has its own server below."""
    port = server.ports["files"]
    anon = connect(port)
    dave = connect(port, "dave")
    erin = connect(port, "erin")
    try:
        assert anon.cmd("LIST")[0].startswith("530 ")
        assert dave.cmd("UPLOAD a/b 1")[0].startswith("553 ")
        assert upload(dave, "d.txt", b"ddd").startswith("226 ")
        assert dave.cmd("UPLOAD D.TXT 3")[0].startswith("555 ")
        assert erin.cmd("UPLOAD d.txt 3 replace=yes")[0].startswith("555 ")
        assert dave.cmd("UPLOAD huge %d" % (32 * MiB + 1))[0].startswith("552 file too large")
        assert upload(dave, "q1", bytes(24 * MiB)).startswith("226 ")
        assert dave.cmd("UPLOAD q2 %d" % (17 * MiB))[0].startswith("552 quota exceeded")
        assert upload(dave, "bad-sum", b"abc", "sha256=" + sha(b"abd")) == "554 checksum mismatch"
        assert dave.cmd("INFO bad-sum")[0].startswith("550 ")
        assert dave.cmd("DOWNLOAD d.txt offset=4")[0].startswith("501 ")
        assert dave.cmd("UPLOAD x 12ab")[0].startswith("501 ")
        assert erin.cmd("DELETE d.txt")[0].startswith("531 ")
        assert erin.cmd("LIST hidden") == ["210 0 items"]  # only her own hidden files
        assert upload(dave, "locked", b"top secret", "password=right").startswith("226 ")
        for i in range(5):
            assert download(erin, "locked", "password=wrong%d" % i)[0] == "535 wrong file password"
        refused = download(erin, "locked", "password=right")[0]
        assert refused.startswith("429 too many wrong passwords"), refused
        assert dave.cmd("DELETE q1") == ["200 deleted"]
    finally:
        for c in (anon, dave, erin):
            c.close()


def test_disk_space_guard_452(tmp_path, workdir):
    srv = ServerProcess(tmp_path / "data", extra_args=["--min-free-percent", "99.999"]).start()
    try:
        register(srv.ports["files"], "alice")
        c = connect(srv.ports["files"], "alice")
        assert c.cmd("UPLOAD f 10") == ["452 insufficient storage"]
        c.close()
        src = os.path.join(workdir, "f")
        with open(src, "wb") as f:
            f.write(b"0123456789")
        r = files_cli(srv, "upload", src, cwd=workdir)
        assert r.returncode == 1 and r.stderr.strip() == "netshare-files: 452 insufficient storage"
    finally:
        srv.terminate()
        srv.kill()


# ---------------------------------------------------------------- names

BAD_NAMES = {
    "traversal": "../../etc/passwd",
    "dotdot": "..",
    "dot": ".",
    "slash": "a/b",
    "backslash": "a\\b",
    "nul": "a\x00b",
    "control": "bell\x07",
    "escape": "x\x1b[2Jy",
    "leading-space": " lead",
    "trailing-space": "trail ",
    "256-bytes": "\u00e9" * 128,
}


@pytest.mark.parametrize("name", list(BAD_NAMES.values()), ids=list(BAD_NAMES))
def test_bad_names_are_refused_and_nothing_is_written_outside(server, name):
    c = connect(server.ports["files"], "alice")
    try:
        for verb in (
            "UPLOAD %s 3",
            "UPLOAD %s 3 replace=yes",
            "INFO %s",
            "DOWNLOAD %s",
            "CHECKSUM %s",
            "DELETE %s",
        ):
            r = c.cmd(verb % (shlex.quote(name),))
            assert r[0].startswith("553 "), (verb, r)
        assert c.cmd("PING") == ["200 pong"]  # no body was expected
    finally:
        c.close()
    assert tree(server.base, skip={server.data}) == server.before
    for blob in tree(os.path.join(server.data, "files")):
        assert re.fullmatch(r"blobs/[0-9a-f]{2}/[0-9a-f]{32}", blob), blob


def test_traversal_name_through_the_client(server, workdir):
    src = os.path.join(workdir, "payload")
    with open(src, "wb") as f:
        f.write(b"root::0:0::/:/bin/sh\n")
    r = files_cli(server, "upload", src, "--name", "../../etc/passwd", cwd=workdir)
    assert r.returncode == 1 and "553 name may not contain / or \\" in r.stderr
    assert tree(server.base, skip={server.data}) == server.before


def test_255_bytes_is_the_longest_name(server):
    c = connect(server.ports["files"], "alice")
    try:
        name = "\u00e9" * 127 + "z"
        assert upload(c, name, b"abc").startswith("226 ")
        assert c.cmd(quote("DELETE", name)) == ["200 deleted"]
    finally:
        c.close()


def test_nfc_and_nfd_spellings_collide(server):
    nfc, nfd = "caf\u00e9.txt", "cafe\u0301.txt"
    c = connect(server.ports["files"], "bob")
    try:
        line = upload(c, nfd, b"first")
        assert line.startswith("226 ") and json.loads(line[len("226 stored ") :])["name"] == nfc
        assert upload(c, nfc, b"second").startswith("555 ")
        assert upload(c, "CAF\u00c9.TXT", b"third").startswith("555 ")
        r = c.cmd(quote("INFO", nfd))
        assert json.loads(r[0][4:])["sha256"] == sha(b"first")
        assert c.cmd(quote("DELETE", nfc)) == ["200 deleted"]
    finally:
        c.close()


# ---------------------------------------------------------------- crash


def test_kill_9_mid_upload_leaves_nothing_and_the_old_file_intact(tmp_path):
    srv = ServerProcess(tmp_path / "data").start()
    tmp_dir = os.path.join(srv.data, "files", "tmp")
    try:
        register(srv.ports["files"], "alice")
        old = os.urandom(MiB)
        c = connect(srv.ports["files"], "alice")
        assert upload(c, "keep.bin", old).startswith("226 ")
        c.close()
        new_file = connect(srv.ports["files"], "alice")
        replace = connect(srv.ports["files"], "alice")
        assert new_file.cmd("UPLOAD new.bin %d" % (8 * MiB))[0].startswith("350 ")
        assert replace.cmd("UPLOAD keep.bin %d replace=yes" % (8 * MiB))[0].startswith("350 ")
        new_file.send(os.urandom(2 * MiB))
        replace.send(os.urandom(2 * MiB))

        def parts_on_disk():
            parts = [os.path.join(tmp_dir, n) for n in os.listdir(tmp_dir)]
            return len(parts) == 2 and all(os.path.getsize(p) > 0 for p in parts)

        wait_until(parts_on_disk, what="both bodies reaching the disk")
        srv.proc.kill()  # kill -9, mid-body
        srv.proc.wait(10)
        new_file.close()
        replace.close()
        assert len(os.listdir(tmp_dir)) == 2  # the crash left them

        srv.start()
        assert os.listdir(tmp_dir) == []  # swept at start-up, before listening
        # ... and reported by the start-up housekeeping (which may finish
        # just after the ports answer).
        wait_until(lambda: "removed 2 stale temporaries" in srv.output(), what="the report")
        c = connect(srv.ports["files"], "alice")
        assert c.cmd("INFO new.bin")[0].startswith("550 ")
        line, body, done = download(c, "keep.bin")
        assert line == "150 %d bytes sha256=%s" % (len(old), sha(old)) and body == old
        assert c.cmd("LIST mine")[-1] == "210 1 items"
        c.close()
        blobs = tree(os.path.join(srv.data, "files", "blobs"))
        assert len(blobs) == 1
    finally:
        srv.terminate()
        srv.kill()


# ---------------------------------------------------------------- protected files


def test_protected_file_is_encrypted_at_rest(server, workdir):
    marker = b"PLAINTEXT-MARKER-0123456789-"
    plain = marker * (MiB // len(marker) + 1)
    src = os.path.join(workdir, "secret.bin")
    with open(src, "wb") as f:
        f.write(plain)
    r = files_cli(
        server, "upload", src, "--protect", cwd=workdir, NETSHARE_FILE_PASSWORD="correct horse"
    )
    assert r.returncode == 0, r
    r = files_cli(server, "list", "--mine", cwd=workdir)  # history written meanwhile
    for path in tree(server.data):
        with open(os.path.join(server.data, path), "rb") as f:
            stored = f.read()
        assert marker not in stored, path
        assert b"correct horse" not in stored, path
    assert "correct horse" not in server.output()

    dest = os.path.join(workdir, "back.bin")
    r = files_cli(
        server,
        "download",
        "secret.bin",
        "-o",
        dest,
        cwd=workdir,
        user="carol",
        NETSHARE_FILE_PASSWORD="correct horse",
    )
    assert r.returncode == 0, r
    assert open(dest, "rb").read() == plain
    c = connect(server.ports["files"], "carol")
    try:
        line, body, _ = download(c, "secret.bin", "password=correct horse", "offset=100000")
        assert body == plain[100000:]
    finally:
        c.close()


def test_lockout_affects_nobody_else(server, workdir):
    port = server.ports["files"]
    owner = connect(port, "carol")
    guesser = connect(port, "bob")
    bystander = connect(port, "erin")
    try:
        assert upload(owner, "lockbox", b"gold", "password=sesame").startswith("226 ")
        assert upload(owner, "lockbox2", b"silver", "password=sesame").startswith("226 ")
        for i in range(5):
            assert download(guesser, "lockbox", "password=nope%d" % i) == (
                "535 wrong file password",
            )
        assert download(guesser, "lockbox", "password=sesame")[0].startswith("429 ")
        assert download(bystander, "lockbox", "password=sesame")[1] == b"gold"
        assert download(owner, "lockbox", "password=sesame")[1] == b"gold"
        assert download(guesser, "lockbox2", "password=sesame")[1] == b"silver"
    finally:
        for c in (owner, guesser, bystander):
            c.close()
    r = files_cli(
        server,
        "download",
        "lockbox",
        "-o",
        os.path.join(workdir, "x"),
        cwd=workdir,
        user="bob",
        NETSHARE_FILE_PASSWORD="sesame",
    )
    assert r.returncode == 1 and "429 too many wrong passwords" in r.stderr


# ---------------------------------------------------------------- resume


class CuttingProxy:
    """A one-connection TCP proxy that forwards everything from the client,
    and only C{budget} bytes from the server, then cuts both sides (or, with
    C{stall}, keeps them open and silent until closed)."""

    def __init__(self, port, budget, stall=False):
        self.target = port
        self.budget = budget
        self.stall = stall
        self.closing = threading.Event()
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(1)
        self.listener.settimeout(30)
        self.port = self.listener.getsockname()[1]
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        try:
            down, _ = self.listener.accept()
        except OSError:
            return
        up = socket.create_connection(("127.0.0.1", self.target), timeout=30)
        down.settimeout(30)

        def client_to_server():
            try:
                while True:
                    data = down.recv(65536)
                    if not data:
                        break
                    up.sendall(data)
            except OSError:
                pass

        t = threading.Thread(target=client_to_server, daemon=True)
        t.start()
        left = self.budget
        try:
            while left > 0:
                data = up.recv(min(65536, left))
                if not data:
                    break
                down.sendall(data)
                left -= len(data)
        except OSError:
            pass
        if self.stall:
            self.closing.wait(60)
        for s in (down, up):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()
        t.join(10)

    def close(self):
        self.closing.set()
        self.listener.close()
        self.thread.join(10)


def test_cut_download_is_resumed_and_verified(server, workdir):
    data = os.urandom(4 * MiB)
    c = connect(server.ports["files"], "erin")
    try:
        assert upload(c, "resume.bin", data).startswith("226 ")
    finally:
        c.close()
    dest = os.path.join(workdir, "resume.bin")
    part = os.path.join(workdir, ".resume.bin.%s.part" % sha(data)[:16])

    proxy = CuttingProxy(server.ports["files"], budget=2 * MiB)
    try:
        r = subprocess.run(
            [
                sys.executable,
                "-m",
                "netshare.clients.files",
                "--port",
                str(proxy.port),
                "download",
                "resume.bin",
            ],
            cwd=workdir,
            env=env(NETSHARE_USER="erin", NETSHARE_PASSWORD=PW["erin"]),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        proxy.close()
    assert r.returncode == 3, r
    assert "partial file" in r.stderr and "run the same command again" in r.stderr
    assert not os.path.exists(dest)
    kept = os.path.getsize(part)
    assert 0 < kept < len(data)
    assert open(part, "rb").read() == data[:kept]

    r = files_cli(server, "download", "resume.bin", cwd=workdir, user="erin")
    assert r.returncode == 0, r
    assert "resumed at %d" % kept in r.stdout and "sha256 verified" in r.stdout
    assert open(dest, "rb").read() == data
    assert not os.path.exists(part)
    c = connect(server.ports["files"], "erin")
    try:
        history = [json.loads(line[4:]) for line in c.cmd("HISTORY limit=20")[:-1]]
    finally:
        c.close()
    assert {"command": "DOWNLOAD resume.bin offset=%d" % kept, "code": 226} in [
        {"command": e["command"], "code": e["code"]} for e in history
    ]


def test_ctrl_c_during_a_download_keeps_the_partial_file(server, workdir):
    """Ctrl-C while bytes are coming (a proxy holds the rest back): exit 130,
    one line saying what is kept, and the next run resumes from there."""
    data = os.urandom(4 * MiB)
    c = connect(server.ports["files"], "erin")
    try:
        assert upload(c, "stall.bin", data).startswith("226 ")
    finally:
        c.close()
    part = os.path.join(workdir, ".stall.bin.%s.part" % sha(data)[:16])
    proxy = CuttingProxy(server.ports["files"], budget=2 * MiB, stall=True)
    proc = subprocess.Popen(
        [sys.executable, "-m", "netshare.clients.files", "--port", str(proxy.port)]
        + ["download", "stall.bin"],
        cwd=workdir,
        env=env(NETSHARE_USER="erin", NETSHARE_PASSWORD=PW["erin"]),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if os.path.exists(part) and os.path.getsize(part) >= MiB:
                break
            time.sleep(0.05)
        assert os.path.getsize(part) >= MiB
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        proxy.close()
    assert proc.returncode == 130 and "Traceback" not in err, err
    assert "interrupted after" in err and "is kept" in err, err
    kept = os.path.getsize(part)
    assert open(part, "rb").read() == data[:kept]
    r = files_cli(server, "download", "stall.bin", cwd=workdir, user="erin")
    assert r.returncode == 0 and "resumed at %d" % kept in r.stdout, r
    assert open(os.path.join(workdir, "stall.bin"), "rb").read() == data


def test_download_resumes_only_matching_content(server, workdir):
    """A partial file of other content is never mixed in: the partial's name
    carries the checksum it belongs to, and a stale one is discarded."""
    c = connect(server.ports["files"], "erin")
    try:
        assert upload(c, "changing.bin", b"A" * 5000).startswith("226 ")
        stale = os.path.join(workdir, ".changing.bin.%s.part" % sha(b"A" * 5000)[:16])
        with open(stale, "wb") as f:
            f.write(b"A" * 1000)
        assert upload(c, "changing.bin", b"B" * 5000, "replace=yes").startswith("226 ")
    finally:
        c.close()
    r = files_cli(server, "download", "changing.bin", cwd=workdir, user="erin")
    assert r.returncode == 0 and "resumed" not in r.stdout, r
    assert open(os.path.join(workdir, "changing.bin"), "rb").read() == b"B" * 5000
    assert not os.path.exists(stale)


# ---------------------------------------------------------------- downloads in flight


def test_download_in_flight_survives_replace_and_delete(server):
    """A reader with a small receive window holds a download open; the file
    is replaced (then deleted) meanwhile; the download finishes on the old
    content, whole, with the checksum its 150 line announced."""
    port = server.ports["files"]
    v1, v2 = os.urandom(16 * MiB), os.urandom(16 * MiB)
    writer = connect(port, "carol")
    reader = connect(port, "alice", rcvbuf=32 * 1024)
    try:
        assert upload(writer, "stream.bin", v1).startswith("226 ")
        r = reader.cmd("DOWNLOAD stream.bin")
        assert r == ["150 %d bytes sha256=%s" % (len(v1), sha(v1))]
        head = read_exactly(reader, MiB)
        assert upload(writer, "stream.bin", v2, "replace=yes").startswith("226 ")
        assert json.loads(writer.cmd("INFO stream.bin")[0][4:])["sha256"] == sha(v2)
        rest = read_exactly(reader, len(v1) - MiB)
        assert head + rest == v1
        assert reader.readline() == "226 transfer complete"

        r = reader.cmd("DOWNLOAD stream.bin")
        assert r == ["150 %d bytes sha256=%s" % (len(v2), sha(v2))]
        head = read_exactly(reader, MiB)
        assert writer.cmd("DELETE stream.bin") == ["200 deleted"]
        rest = read_exactly(reader, len(v2) - MiB)
        assert head + rest == v2
        assert reader.readline() == "226 transfer complete"
        assert reader.cmd("INFO stream.bin")[0].startswith("550 ")
    finally:
        writer.close()
        reader.close()


# ---------------------------------------------------------------- TLS and databases


def test_client_over_tls(tmp_path, workdir):
    data_dir = tmp_path / "data"
    srv = ServerProcess(data_dir)
    cert = os.path.join(srv.data, "tls", "cert.pem")
    key = os.path.join(srv.data, "tls", "key.pem")
    srv.extra_args = [
        "--files",
        "ssl:%d:interface=127.0.0.1:privateKey=%s:certKey=%s" % (srv.ports["files"], key, cert),
    ]
    srv.start()
    try:
        src = os.path.join(workdir, "tls.bin")
        payload = os.urandom(3 * MiB)
        with open(src, "wb") as f:
            f.write(payload)
        tls = [
            "--tls",
            "--cafile",
            os.path.join(srv.data, "tls", "ca.pem"),
            "--hostname",
            "localhost",
        ]
        r = files_cli(srv, *tls, "--user", "admin", "upload", src, cwd=workdir, user="admin")
        assert r.returncode == 0, r
        r = files_cli(
            srv,
            *tls,
            "download",
            "tls.bin",
            "-o",
            os.path.join(workdir, "back"),
            cwd=workdir,
            user="admin",
        )
        assert r.returncode == 0, r
        assert open(os.path.join(workdir, "back"), "rb").read() == payload
        r = files_cli(srv, "--tls", "list", cwd=workdir, user="admin")  # not trusted
        assert r.returncode == 3 and "TLS failure" in r.stderr, r
    finally:
        srv.terminate()
        srv.kill()


def _server_dbs():
    kinds = []
    if os.environ.get("NETSHARE_TEST_POSTGRES"):
        kinds.append("postgres")
    if os.environ.get("NETSHARE_TEST_MYSQL"):
        kinds.append("mysql")
    return kinds


@pytest.mark.parametrize("kind", _server_dbs())
def test_same_flow_on_a_database_server(tmp_path, kind):
    """Upload, list, download, replace, the name-key collision, delete, and
    a restart keeping the files, through twistd on PostgreSQL / MariaDB."""
    from tests.inprocess import PrivateDatabase

    db = PrivateDatabase(kind)
    srv = None
    try:
        srv = ServerProcess(tmp_path / "data", db=db.url).start()
        register(srv.ports["files"], "alice", "bob")
        a = connect(srv.ports["files"], "alice")
        data = os.urandom(2 * MiB)
        assert upload(a, "Shared.bin", data, "sha256=" + sha(data)).startswith("226 ")
        assert upload(a, "shared.BIN", b"x").startswith("555 ")
        assert upload(a, "Shared.bin", b"v2", "replace=yes").startswith("226 ")
        assert upload(a, "keep.bin", data).startswith("226 ")
        a.close()
        srv.terminate()
        srv.kill()
        srv.start()
        b = connect(srv.ports["files"], "bob")
        assert [json.loads(x[4:])["name"] for x in b.cmd("LIST")[:-1]] == [
            "keep.bin",
            "Shared.bin",
        ]
        assert download(b, "shared.bin")[1] == b"v2"
        assert download(b, "keep.bin", "offset=5")[1] == data[5:]
        assert b.cmd("DELETE keep.bin")[0].startswith("531 ")
        b.close()
    finally:
        if srv is not None:
            srv.terminate()
            srv.kill()
        db.drop()

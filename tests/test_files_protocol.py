"""
The files protocol (docs/protocol.md section 2) over real TCP, in process: the
real runtime (accounts, history, database pool), the real files service (L{build_files}) with
its blob store under the data dir, a L{FilesProtocol} listener on a free
port, netshare's client library and a raw byte client.

What each test proves is in its docstring.  The tests whose outcome depends
on the database (rows, the unique name key, the quota re-check in the insert
transaction, replace) run on every configured database.
"""

import errno
import hashlib
import io
import json
import os

import pytest
import pytest_twisted
from twisted.internet import defer, task
from twisted.python.failure import Failure

from netshare.clients.protocol import quote
from netshare.protocols.files import RAW_READ, FilesProtocol
from netshare.service import build_files
from netshare.services.files import crypto, disk, upload
from netshare.services.files.blobs import BlobStore
from netshare.services.files.download import BlobReader
from netshare.services.files.lockout import PasswordLockout
from tests.inprocess import add_account, listen, reactor, wait_for

pytestmark = pytest.mark.timeout(120)

PW = {"alice": "pw-alice", "bob": "pw-bob", "root": "pw-root"}
FILE_KEYS = {"name", "size", "sha256", "owner", "visibility", "protected", "created"}


def sha(data):
    return hashlib.sha256(data).hexdigest()


@defer.inlineCallbacks
def serve(rt, **app_kw):
    """Accounts alice, bob (users) and root (admin), and a files listener."""
    yield add_account(rt, "alice", PW["alice"])
    yield add_account(rt, "bob", PW["bob"])
    yield add_account(rt, "root", PW["root"], role="admin")
    app = build_files(rt, **app_kw)
    srv = yield listen(rt, FilesProtocol, app=app)
    return srv, app


@defer.inlineCallbacks
def client(srv, user):
    c = yield srv.connect()
    r = yield c.command(quote("LOGIN", user, PW[user]))
    assert r.code == 230, r.line
    return c


@defer.inlineCallbacks
def raw_client(srv, user):
    c = yield srv.raw()
    r = yield c.cmd(quote("LOGIN", user, PW[user]))
    assert r[0].startswith("230"), r
    return c


def put(c, name, data, *options):
    return c.upload(quote("UPLOAD", name, len(data), *options), io.BytesIO(data))


@defer.inlineCallbacks
def get(c, name, *options):
    sink = io.BytesIO()
    r = yield c.download(quote("DOWNLOAD", name, *options), sink)
    return r, sink.getvalue()


def blob_files(app):
    """Every finished blob and temporary file under the store."""
    out = []
    for base, _, names in os.walk(app.blobs.root):
        out += [os.path.relpath(os.path.join(base, n), app.blobs.root) for n in names]
    return sorted(out)


def temporaries(app):
    return os.listdir(app.blobs.tmp_dir)


# ---------------------------------------------------------------- commands


@pytest_twisted.inlineCallbacks
def test_every_command_and_its_reply(db_runtime):
    """LIST / LIST mine / LIST hidden / INFO / CHECKSUM / UPLOAD (new, hidden,
    replace) / DOWNLOAD (whole, offset) / DELETE give the docs/protocol.md replies
    and file objects, on every database."""
    srv, app = yield serve(db_runtime)
    alice = yield client(srv, "alice")
    bob = yield client(srv, "bob")
    root = yield client(srv, "root")

    r = yield alice.command("LIST")
    assert (r.code, r.text, r.items) == (210, "0 items", [])

    data = os.urandom(300_000)
    r = yield put(alice, "Report.txt", data, "sha256=" + sha(data))
    assert r.code == 226 and r.text.startswith("stored {")
    obj = r.obj
    assert set(obj) == FILE_KEYS
    assert (
        obj["name"],
        obj["size"],
        obj["sha256"],
        obj["owner"],
        obj["visibility"],
        obj["protected"],
    ) == ("Report.txt", len(data), sha(data), "alice", "public", False)
    assert obj["created"].endswith("Z")

    r = yield put(bob, "bobs.bin", b"bob's", "visibility=public")
    assert r.code == 226
    r = yield put(alice, "secret plan", b"hidden bytes", "visibility=hidden")
    assert r.code == 226 and r.obj["visibility"] == "hidden"

    r = yield bob.command("LIST")
    assert [i["name"] for i in r.items] == ["bobs.bin", "Report.txt"]  # by name key
    assert r.items[1] == obj
    r = yield alice.command("LIST mine")
    assert [i["name"] for i in r.items] == ["Report.txt"]
    r = yield root.command("LIST hidden")
    assert [i["name"] for i in r.items] == ["secret plan"]
    r = yield alice.command("LIST hidden")  # an owner sees their own
    assert [i["name"] for i in r.items] == ["secret plan"]
    r = yield bob.command("LIST hidden")  # ... and nobody else's
    assert (r.code, r.items) == (210, [])

    r = yield bob.command("INFO report.TXT")  # case-insensitive lookup
    assert r.code == 200 and r.obj == obj
    r = yield bob.command("CHECKSUM Report.txt")
    assert (r.code, r.text) == (200, "sha256 " + sha(data))

    r, body = yield get(bob, "Report.txt")
    assert r.code == 226 and r.text == "transfer complete"
    assert r.lines[0] == "150 %d bytes sha256=%s" % (len(data), sha(data))
    assert body == data
    r, body = yield get(bob, "Report.txt", "offset=123456")
    assert r.lines[0] == "150 %d bytes sha256=%s" % (len(data) - 123456, sha(data))
    assert body == data[123456:]

    new = os.urandom(1000)
    r = yield put(alice, "REPORT.txt", new, "replace=yes")
    assert r.code == 226 and r.obj["name"] == "REPORT.txt" and r.obj["sha256"] == sha(new)
    r, body = yield get(bob, "report.txt")
    assert body == new

    r = yield alice.command("DELETE report.txt")
    assert (r.code, r.text) == (200, "deleted")
    r = yield bob.command("INFO Report.txt")
    assert r.code == 550
    yield wait_for(lambda: len(blob_files(app)) == 2, what="old blobs removed")


@pytest_twisted.inlineCallbacks
def test_pipelined_commands_after_a_body_are_answered_in_order(runtime):
    """Commands sent in the same write as an upload body (and after a
    download) are answered after the 226, in order."""
    srv, _ = yield serve(runtime)
    c = yield raw_client(srv, "alice")
    c.send(b"UPLOAD a.txt 5\r\nhelloINFO a.txt\r\nDOWNLOAD a.txt offset=1\r\nCHECKSUM a.txt\r\n")
    assert (yield c.readline()) == "350 send 5 bytes"
    assert (yield c.readline()).startswith('226 stored {"name":"a.txt","size":5,')
    assert (yield c.readline()).startswith('200 {"name":"a.txt"')
    assert (yield c.readline()) == "150 4 bytes sha256=" + sha(b"hello")
    assert (yield c.read_exactly(4)) == b"ello"
    assert (yield c.readline()) == "226 transfer complete"
    assert (yield c.readline()) == "200 sha256 " + sha(b"hello")


@pytest_twisted.inlineCallbacks
def test_zero_byte_file(runtime):
    srv, _ = yield serve(runtime)
    c = yield raw_client(srv, "alice")
    assert (yield c.cmd("UPLOAD empty 0"))[0] == "350 send 0 bytes"
    assert (yield c.readline()).startswith('226 stored {"name":"empty","size":0,')
    assert (yield c.cmd("DOWNLOAD empty")) == ["150 0 bytes sha256=" + sha(b"")]
    assert (yield c.readline()) == "226 transfer complete"


@pytest_twisted.inlineCallbacks
def test_names_are_the_first_word_even_when_they_look_like_options(runtime):
    srv, _ = yield serve(runtime)
    c = yield client(srv, "alice")
    r = yield put(c, "sha256=x y", b"abc", "visibility=hidden")
    assert r.code == 226 and r.obj["name"] == "sha256=x y"
    r = yield c.command(quote("INFO", "sha256=x y"))
    assert r.code == 200 and r.obj["visibility"] == "hidden"


@pytest_twisted.inlineCallbacks
def test_login_required(runtime):
    srv, _ = yield serve(runtime)
    c = yield srv.raw()
    for line in ("LIST", "INFO a", "CHECKSUM a", "UPLOAD a 1", "DOWNLOAD a", "DELETE a"):
        r = yield c.cmd(line)
        assert r[0].startswith("530 "), (line, r)


@pytest_twisted.inlineCallbacks
def test_help_lists_the_files_commands(runtime):
    srv, _ = yield serve(runtime)
    c = yield srv.raw()
    lines = yield c.cmd("HELP")
    for verb in ("LIST", "INFO", "CHECKSUM", "UPLOAD", "DOWNLOAD", "DELETE"):
        assert any(line.startswith("214-" + verb) for line in lines), verb


# ---------------------------------------------------------------- refusals


@pytest_twisted.inlineCallbacks
def test_upload_refusals_before_350(make_runtime):
    """Every refusal comes before 350 (no body is expected, the session goes
    on): 553 names, 555 exists / someone else's, 552 size and quota, 501 bad
    arguments."""
    rt = make_runtime(max_file_size=1000, user_quota=1500)
    srv, app = yield serve(rt)
    alice = yield raw_client(srv, "alice")
    bob = yield raw_client(srv, "bob")
    assert (yield alice.cmd("UPLOAD taken 3"))[0] == "350 send 3 bytes"
    alice.send(b"abc")
    assert (yield alice.readline()).startswith("226 ")
    assert (yield alice.cmd("UPLOAD big 900"))[0] == "350 send 900 bytes"
    alice.send(b"x" * 900)
    assert (yield alice.readline()).startswith("226 ")

    cases = [
        (alice, "UPLOAD ../../etc/passwd 3", "553"),
        (alice, "UPLOAD .. 3", "553"),
        (alice, "UPLOAD 'a\\b' 3", "553"),
        (alice, 'UPLOAD "" 3', "553"),
        (alice, "UPLOAD TAKEN 3", "555"),  # exists (case-insensitive)
        (bob, "UPLOAD taken 3", "555"),  # someone else's
        (bob, "UPLOAD taken 3 replace=yes", "555"),  # replace is owner only
        (bob, "UPLOAD huge 1001", "552"),  # over max_file_size
        (alice, "UPLOAD more 700", "552"),  # 903 + 700 > quota 1500
        (alice, "UPLOAD more -1", "501"),
        (alice, "UPLOAD more 1e3", "501"),
        (alice, "UPLOAD more", "501"),
        (alice, "UPLOAD more 3 visibility=secret", "501"),
        (alice, "UPLOAD more 3 sha256=abc", "501"),
        (alice, "UPLOAD more 3 replace=maybe", "501"),
        (alice, "UPLOAD more 3 colour=red", "501"),
        (alice, "UPLOAD more 3 password=", "501"),
    ]
    for conn, line, code in cases:
        r = yield conn.cmd(line)
        assert r[0][:3] == code, (line, r)
    # Nothing was waiting for a body: the sessions go on, nothing was stored.
    assert (yield alice.cmd("PING")) == ["200 pong"]
    assert (yield bob.cmd("PING")) == ["200 pong"]
    r = yield alice.cmd("LIST mine")
    assert r[-1] == "210 2 items"
    assert temporaries(app) == []


@pytest_twisted.inlineCallbacks
def test_disk_space_guard_is_452(make_runtime):
    srv, app = yield serve(make_runtime(min_free_percent=99.999))
    c = yield raw_client(srv, "alice")
    r = yield c.cmd("UPLOAD a 1")
    assert r == ["452 insufficient storage"]
    assert temporaries(app) == []


@pytest_twisted.inlineCallbacks
def test_checksum_mismatch_is_554_and_leaves_nothing(runtime):
    srv, app = yield serve(runtime)
    c = yield raw_client(srv, "alice")
    assert (yield c.cmd("UPLOAD a 5 sha256=" + sha(b"other")))[0] == "350 send 5 bytes"
    c.send(b"hello")
    assert (yield c.readline()) == "554 checksum mismatch"
    assert (yield c.cmd("INFO a"))[0].startswith("550 ")
    assert blob_files(app) == []


@pytest_twisted.inlineCallbacks
def test_download_refusals(runtime):
    srv, _ = yield serve(runtime)
    c = yield client(srv, "alice")
    yield put(c, "f", b"0123456789")
    for line, code in [
        ("DOWNLOAD nope", 550),
        ("DOWNLOAD f offset=11", 501),
        ("DOWNLOAD f offset=-1", 501),
        ("DOWNLOAD f offset=x", 501),
        ("DOWNLOAD f offset=1 offset=2", 501),
        ("DOWNLOAD f colour=red", 501),
        ("DOWNLOAD", 501),
        ("DOWNLOAD ../f", 553),
        ("INFO nope", 550),
        ("CHECKSUM nope", 550),
        ("DELETE nope", 550),
        ("LIST everything", 501),
    ]:
        r = yield c.command(line)
        assert r.code == code, (line, r.line)
    r, body = yield get(c, "f", "offset=10")
    assert r.lines[0] == "150 0 bytes sha256=" + sha(b"0123456789") and body == b""


@pytest_twisted.inlineCallbacks
def test_hidden_files_are_unlisted_links(runtime):
    """Hidden: never in LIST or LIST mine; anyone logged in with the exact
    name may INFO, CHECKSUM and DOWNLOAD; LIST hidden shows it to its owner
    and admins only."""
    srv, _ = yield serve(runtime)
    alice = yield client(srv, "alice")
    bob = yield client(srv, "bob")
    yield put(alice, "link", b"unlisted", "visibility=hidden")
    for who in (alice, bob):
        assert (yield who.command("LIST")).items == []
        assert (yield who.command("LIST mine")).items == []
    assert (yield bob.command("INFO link")).obj["visibility"] == "hidden"
    assert (yield bob.command("CHECKSUM link")).text == "sha256 " + sha(b"unlisted")
    assert (yield get(bob, "link"))[1] == b"unlisted"
    assert (yield bob.command("LIST hidden")).items == []
    assert [f["name"] for f in (yield alice.command("LIST hidden")).items] == ["link"]


@pytest_twisted.inlineCallbacks
def test_delete_by_owner_or_admin_only(runtime):
    srv, app = yield serve(runtime)
    alice = yield client(srv, "alice")
    bob = yield client(srv, "bob")
    root = yield client(srv, "root")
    yield put(alice, "a1", b"1")
    yield put(alice, "a2", b"2")
    r = yield bob.command("DELETE a1")
    assert r.code == 531
    assert (yield alice.command("DELETE A1")).code == 200
    assert (yield root.command("DELETE a2")).code == 200
    assert (yield bob.command("LIST")).items == []
    yield wait_for(lambda: blob_files(app) == [], what="blobs removed")


@pytest_twisted.inlineCallbacks
def test_protected_file_password_and_lockout(make_runtime):
    """535 without or with a wrong password, before any byte; the 5th wrong
    password locks that user out of that file (429) even with the right
    one, for 15 minutes, and nobody else."""
    rt = make_runtime()
    clock = task.Clock()
    srv, app = yield serve(rt, lockout=PasswordLockout(clock, 5, 900, 900))
    alice = yield client(srv, "alice")
    bob = yield client(srv, "bob")
    plain = b"attack at dawn " * 5000
    r = yield put(alice, "vault", plain, "password=open sesame")
    assert r.code == 226 and r.obj["protected"] is True
    yield put(alice, "other", b"x", "password=open sesame")

    r = yield bob.command("DOWNLOAD vault")
    assert (r.code, r.text) == (535, "file is protected: password required")
    for i in range(5):
        r = yield bob.command("DOWNLOAD vault password=guess%d" % i)
        assert r.code == 535 and len(r.lines) == 1, r.lines  # no 150, no bytes
    r = yield bob.command(quote("DOWNLOAD", "vault", "password=open sesame"))
    assert r.code == 429
    # Nobody else is affected, nor is bob on another file.
    r, body = yield get(alice, "vault", "password=open sesame")
    assert r.code == 226 and body == plain
    r, body = yield get(bob, "other", "password=open sesame")
    assert r.code == 226 and body == b"x"
    clock.advance(899)
    assert (yield bob.command(quote("DOWNLOAD", "vault", "password=open sesame"))).code == 429
    clock.advance(2)
    r, body = yield get(bob, "vault", "password=open sesame", "offset=7")
    assert r.code == 226 and body == plain[7:]


# ---------------------------------------------------------------- after the body


@pytest_twisted.inlineCallbacks
def test_parallel_upload_of_one_name_loses_with_555(db_runtime):
    """Both uploads pass the checks before 350; the second to finish is
    refused after its body (the unique name key), and its blob is removed."""
    srv, app = yield serve(db_runtime)
    a = yield raw_client(srv, "alice")
    b = yield raw_client(srv, "bob")
    assert (yield a.cmd("UPLOAD same.txt 3"))[0] == "350 send 3 bytes"
    assert (yield b.cmd("UPLOAD SAME.TXT 3"))[0] == "350 send 3 bytes"
    a.send(b"aaa")
    assert (yield a.readline()).startswith('226 stored {"name":"same.txt"')
    b.send(b"bbb")
    assert (yield b.readline()).startswith("555 ")
    assert (yield get((yield client(srv, "bob")), "same.txt"))[1] == b"aaa"
    yield wait_for(lambda: len(blob_files(app)) == 1, what="loser's blob removed")
    assert temporaries(app) == []


@pytest_twisted.inlineCallbacks
def test_quota_is_checked_again_when_the_row_is_written(make_runtime):
    """Two uploads of one user both fit the quota before 350; together they
    do not: the second to finish gets 552 after its body."""
    from tests.inprocess import db_kinds

    for kind in db_kinds():
        rt = make_runtime(db=kind, user_quota=1000)
        srv, app = yield serve(rt)
        a = yield raw_client(srv, "alice")
        b = yield raw_client(srv, "alice")
        assert (yield a.cmd("UPLOAD one 600"))[0] == "350 send 600 bytes"
        assert (yield b.cmd("UPLOAD two 600"))[0] == "350 send 600 bytes"
        a.send(b"1" * 600)
        assert (yield a.readline()).startswith("226 ")
        b.send(b"2" * 600)
        line = yield b.readline()
        assert line.startswith("552 quota exceeded"), (kind, line)
        yield wait_for(lambda app=app: len(blob_files(app)) == 1, what="refused blob removed")


@pytest_twisted.inlineCallbacks
def test_disk_full_during_the_body_is_452(runtime, monkeypatch):
    srv, app = yield serve(runtime)
    c = yield raw_client(srv, "alice")

    def full(fd, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(upload, "write_all", full)
    assert (yield c.cmd("UPLOAD big 200000"))[0] == "350 send 200000 bytes"
    c.send(b"z" * 200000)
    assert (yield c.readline()) == "452 insufficient storage"
    monkeypatch.undo()
    assert (yield c.cmd("INFO big"))[0].startswith("550 ")
    assert blob_files(app) == []


@pytest_twisted.inlineCallbacks
def test_dropped_connection_mid_body_leaves_nothing(runtime):
    srv, app = yield serve(runtime)
    c = yield raw_client(srv, "alice")
    assert (yield c.cmd("UPLOAD cut.bin 3000000"))[0] == "350 send 3000000 bytes"
    c.send(os.urandom(1_000_000))
    yield wait_for(
        lambda: any(s.received > 0 for s in app.blobs._uploading.values()), what="body arriving"
    )
    c.transport.abortConnection()
    yield wait_for(
        lambda: not app.blobs._uploading and temporaries(app) == [], what="temporary removed"
    )
    other = yield client(srv, "alice")
    assert (yield other.command("INFO cut.bin")).code == 550
    assert blob_files(app) == []
    history = yield other.command("HISTORY limit=5")
    assert any(
        e["command"] == "UPLOAD cut.bin 3000000" and e["code"] == 451 for e in history.items
    )


class GatedPool:
    """A thread pool stand-in that runs jobs at once in the calling thread,
    or holds them while gated: makes the upload sink's worker as slow as a
    test wants, without timing."""

    def __init__(self):
        self.gated = False
        self.jobs = []

    def callInThread(self, fn, *args, **kw):
        self._submit(lambda: fn(*args, **kw))

    def callInThreadWithCallback(self, onResult, fn, *args, **kw):
        def job():
            try:
                result = fn(*args, **kw)
            except BaseException:
                onResult(False, Failure())
            else:
                onResult(True, result)

        self._submit(job)

    def _submit(self, job):
        if self.gated:
            self.jobs.append(job)
        else:
            job()

    def open(self):
        self.gated = False
        while self.jobs:
            self.jobs.pop(0)()


@pytest_twisted.inlineCallbacks
def test_upload_backpressure_pauses_the_socket(runtime):
    """While the disk side is behind, the sink pauses the connection: the
    server stops reading, and what it holds stays near the high-water mark
    however large the body; then it resumes and completes."""
    pool = GatedPool()
    high = 64 * 1024
    store = BlobStore(
        os.path.join(runtime.config.data, "files"),
        threadpool=pool,
        reactor=reactor(),
        high_water=high,
    )
    srv, app = yield serve(runtime, blobs=store)
    c = yield raw_client(srv, "alice")
    size = 8 * 1024 * 1024
    data = os.urandom(size)
    pool.gated = True
    assert (yield c.cmd("UPLOAD big %d sha256=%s" % (size, sha(data))))[0].startswith("350")
    c.send(data)
    server = srv.protocols[-1]
    yield wait_for(lambda: server.paused and store._uploading, what="socket paused")
    sink = next(iter(store._uploading.values()))
    held = sink.received
    yield task.deferLater(reactor(), 0.2, lambda: None)
    assert sink.received == held  # nothing more was read
    assert sink.paused and sink.queued == held <= high + RAW_READ
    pool.open()
    line = yield c.readline(timeout=60)
    assert line.startswith('226 stored {"name":"big","size":%d' % size)
    assert (yield get((yield client(srv, "alice")), "big"))[1] == data


@pytest_twisted.inlineCallbacks
def test_damaged_storage_is_554_before_any_byte(runtime):
    srv, app = yield serve(runtime)
    c = yield client(srv, "alice")
    yield put(c, "f", b"0123456789")
    blob = [p for p in blob_files(app) if p.startswith("blobs")][0]
    os.truncate(os.path.join(app.blobs.root, blob), 4)
    r = yield c.command("DOWNLOAD f")
    assert r.code == 554 and len(r.lines) == 1


# ---------------------------------------------------------------- start-up and records


@pytest_twisted.inlineCallbacks
def test_start_up_removes_stale_temporaries_and_orphans(runtime):
    root = os.path.join(runtime.config.data, "files")
    stale = BlobStore(root)
    orphan_id = "ab" * 16
    os.makedirs(os.path.join(stale.blobs_dir, "ab"), exist_ok=True)
    with open(stale.path_of(orphan_id), "wb") as f:
        f.write(b"no row names me")
    with open(os.path.join(stale.tmp_dir, "cd" * 16 + ".part"), "wb") as f:
        f.write(b"cut by a crash")
    app = build_files(runtime)  # sweeps temporaries synchronously
    assert temporaries(app) == []
    yield app.start().addTimeout(10, reactor())  # removes orphans
    assert blob_files(app) == []
    app.stop()


@pytest_twisted.inlineCallbacks
def test_history_records_transfers_without_passwords(runtime):
    srv, _ = yield serve(runtime)
    c = yield client(srv, "alice")
    yield put(c, "p", b"secret content", "password=hunter2")
    yield get(c, "p", "password=hunter2", "offset=3")
    r = yield c.command("HISTORY limit=3")
    commands = [(e["command"], e["code"]) for e in r.items]
    assert ("DOWNLOAD p password=*** offset=3", 226) in commands
    assert ("UPLOAD p 14 password=***", 226) in commands
    assert "hunter2" not in json.dumps(r.items)


@pytest_twisted.inlineCallbacks
def test_download_of_an_uncached_file_waits_off_the_reactor(runtime, monkeypatch):
    """A file the page cache does not hold is read in by a worker first
    (the reactor thread only reads cached pieces); the bytes are right."""
    if disk.RWF_NOWAIT is None:
        pytest.skip("no preadv(RWF_NOWAIT) on this platform")
    waits = []
    real = BlobReader._await_pages

    def counting(self, pos):
        waits.append(pos)
        return real(self, pos)

    monkeypatch.setattr(BlobReader, "_await_pages", counting)
    srv, app = yield serve(runtime)
    c = yield client(srv, "alice")
    data = os.urandom(4 * 1024 * 1024)
    yield put(c, "cold.bin", data)
    blob = os.path.join(app.blobs.root, [p for p in blob_files(app) if p.startswith("blobs")][0])
    fd = os.open(blob, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)  # clean pages (fsynced): dropped
    finally:
        os.close(fd)
    r, body = yield get(c, "cold.bin", "offset=1000")
    assert r.code == 226 and body == data[1000:]
    if not waits:
        pytest.skip("this file system kept the file cached (or ignores RWF_NOWAIT)")
    assert waits[0] == 1000


@pytest_twisted.inlineCallbacks
def test_damage_found_mid_transfer_closes_the_connection(runtime):
    """A protected file whose seventh chunk was altered on disk: the 150
    line promised the whole file, the server cannot keep that promise, so it
    drops the connection; the client gets at most the authentic chunks and
    never a 226."""
    srv, app = yield serve(runtime)
    c = yield client(srv, "alice")
    data = os.urandom(8 * crypto.ENC_CHUNK)
    yield put(c, "tampered", data, "password=pw")
    blob = os.path.join(app.blobs.root, [p for p in blob_files(app) if p.startswith("blobs")][0])
    at = crypto.HEADER_SIZE + 6 * (crypto.ENC_CHUNK + crypto.TAG_SIZE) + 10
    with open(blob, "r+b") as f:
        f.seek(at)
        byte = f.read(1)
        f.seek(at)
        f.write(bytes([byte[0] ^ 0xFF]))
    raw = yield raw_client(srv, "alice")
    raw.discard = False
    raw.send(b"DOWNLOAD tampered password=pw\r\n")
    yield raw.wait_closed()
    got = bytes(raw.buffer)
    if got:  # what was flushed before the abort: the 150 line and a prefix
        line, _, body = got.partition(b"\r\n")
        assert line.decode() == "150 %d bytes sha256=%s" % (len(data), sha(data))
        assert len(body) <= 6 * crypto.ENC_CHUNK and body == data[: len(body)]
    other = yield client(srv, "alice")
    history = yield other.command("HISTORY limit=3")
    assert {"command": "DOWNLOAD tampered password=***", "code": 451} in [
        {"command": e["command"], "code": e["code"]} for e in history.items
    ]

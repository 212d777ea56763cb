"""
Resumable, verified uploads and owners' hidden listings (issue 15, items 3
and 4; docs/protocol.md section 2.A.3).

In process, over real TCP (the real runtime, L{build_files} and a
L{FilesProtocol} listener, as in tests/test_files_protocol.py), one test per
rule:

 - a cut C{UPLOAD ... resume=yes} is kept as a partial; C{PARTIAL} tells how
   much (and the SHA-256 of it); C{offset=} continues it and the whole is
   verified (C{sha256=trailer} or C{sha256=} up front);
 - a mismatch at the end is C{554} and the partial is gone;
 - only its owner sees or continues it;
 - it is never listed, never downloadable, and its name is still free;
 - it counts in the quota (and QUOTA shows it);
 - it expires after C{upload_partial_ttl} (never with 0), and a restart
   keeps it (the prefix is hashed again from disk);
 - protected uploads resume with the same password only, at chunk
   boundaries;
 - a second connection takes an interrupted upload over from one still open;
 - a plain UPLOAD is exactly as before (a cut leaves nothing);
 - a non-admin's C{LIST hidden} shows their own hidden files only.

End to end, with the real C{twistd netshare} and C{netshare-files}
processes (a 200 MiB random file, through a proxy that stops forwarding the
client's bytes after a budget so the cut always lands mid-body): SIGINT of
the client (exit 130), SIGKILL of the client, and a restart of the server
(SIGTERM and SIGKILL) mid-upload; each time the next run of the same
command resumes (offset > 0 in its JSON) and the stored SHA-256 is the
local file's.
"""

import hashlib
import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest
import pytest_twisted
from twisted.internet import defer

from netshare.clients.protocol import quote
from netshare.protocols.files import FilesProtocol
from netshare.service import build_files
from netshare.services.files import crypto
from tests.inprocess import add_account, listen, wait_for
from tests.support import ROOT, LineConn, ServerProcess, env

pytestmark = pytest.mark.timeout(120)

KiB = 1024
MiB = 1024 * KiB
PW = {"alice": "pw-alice", "bob": "pw-bob", "root": "pw-root"}


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
def raw(srv, user):
    c = yield srv.raw()
    r = yield c.cmd(quote("LOGIN", user, PW[user]))
    assert r[0].startswith("230"), r
    return c


@defer.inlineCallbacks
def client(srv, user):
    c = yield srv.connect()
    r = yield c.command(quote("LOGIN", user, PW[user]))
    assert r.code == 230, r.line
    return c


def partial_of(app, user, name):
    from netshare.services.files.names import name_key, normalize_name

    account_id = {a.meta.owner: a.meta.owner_id for a in app.partials}.get(user)
    if account_id is None:
        return None
    return app.partials.get(account_id, name_key(normalize_name(name)))


@defer.inlineCallbacks
def cut_upload(srv, app, user, name, data, sent, *options):
    """Start a resumable upload of C{data}, send C{sent} bytes, drop the
    connection, and wait until the server keeps them (its partial idle).
    @return: the PARTIAL object then."""
    c = yield raw(srv, user)
    opts = options or ("sha256=trailer",)
    r = yield c.cmd(quote("UPLOAD", name, len(data), "resume=yes", *opts))
    assert r[0].startswith("350 send "), r
    c.send(data[:sent])
    yield wait_for(
        lambda: (
            (p := partial_of(app, user, name)) is not None
            and p.user is not None
            and p.user.sink.received >= sent
        ),
        what="the bytes at the server",
    )
    c.transport.loseConnection()
    yield c.wait_closed()
    yield wait_for(
        lambda: (p := partial_of(app, user, name)) is not None and p.idle,
        what="the partial kept",
    )
    info = yield partial(srv, user, name, len(data))
    return info


@defer.inlineCallbacks
def partial(srv, user, name, size, *options):
    c = yield raw(srv, user)
    try:
        (line,) = yield c.cmd(quote("PARTIAL", name, size, *options))
    finally:
        c.transport.loseConnection()
    assert line.startswith("200 {"), line
    return json.loads(line[4:])


@defer.inlineCallbacks
def resume(srv, user, name, data, offset, *options, trailer=True):
    """Continue an upload at C{offset}; @return: (350 line, final line)."""
    c = yield raw(srv, user)
    opts = list(options) + (["sha256=trailer"] if trailer else [])
    words = ["UPLOAD", name, len(data), "resume=yes"] + (["offset=%d" % offset] if offset else [])
    (first,) = yield c.cmd(quote(*words + opts))
    if not first.startswith("350 "):
        c.transport.loseConnection()
        return first, None
    c.send(data[offset:] + (sha(data).encode() if trailer else b""))
    last = yield c.readline()
    c.transport.loseConnection()
    return first, last


def pair_files(app):
    return sorted(os.listdir(app.blobs.tmp_dir))


# ---------------------------------------------------------------- resume


@pytest_twisted.inlineCallbacks
def test_cut_upload_is_kept_and_resumed_at_its_offset(db_runtime):
    """A cut resumable upload keeps what arrived (fsynced: the content file
    and its sidecar); PARTIAL gives the offset and the SHA-256 of those
    bytes; UPLOAD ... offset=N sends `350 send <size-N+64> bytes` and the
    whole, checked against the trailer, is stored (on every database)."""
    srv, app = yield serve(db_runtime)
    data = os.urandom(3 * MiB + 5)
    info = yield cut_upload(srv, app, "alice", "big.bin", data, MiB + 7)
    assert info == {
        "name": "big.bin",
        "size": len(data),
        "offset": MiB + 7,
        "protected": False,
        "sha256": None,
        "prefix_sha256": sha(data[: MiB + 7]),
        "expires": info["expires"],
    }
    assert info["expires"].endswith("Z")
    p = partial_of(app, "alice", "big.bin")
    assert pair_files(app) == sorted([p.blob_id + ".part", p.blob_id + ".resume"])
    assert os.path.getsize(os.path.join(app.blobs.tmp_dir, p.blob_id + ".part")) == MiB + 7

    first, last = yield resume(srv, "alice", "big.bin", data, MiB + 7)
    assert first == "350 send %d bytes" % (len(data) - MiB - 7 + 64)
    assert last.startswith("226 stored {"), last
    stored = json.loads(last[len("226 stored ") :])
    assert (stored["size"], stored["sha256"]) == (len(data), sha(data))
    c = yield client(srv, "bob")
    body = io.BytesIO()
    r = yield c.download(quote("DOWNLOAD", "big.bin"), body)
    assert r.code == 226 and body.getvalue() == data
    assert pair_files(app) == []  # renamed into blobs/, sidecar gone
    assert (yield partial(srv, "alice", "big.bin", len(data)))["offset"] == 0


@pytest_twisted.inlineCallbacks
def test_resume_with_the_checksum_up_front(runtime):
    """The old form of the checksum works too: sha256=<hex> up front, the
    raw data is the content alone; PARTIAL with that sha256 finds the
    partial, another sha256 does not."""
    srv, app = yield serve(runtime)
    data = os.urandom(700_000)
    info = yield cut_upload(srv, app, "alice", "up.bin", data, 300_000, "sha256=" + sha(data))
    assert (info["offset"], info["sha256"]) == (300_000, sha(data))
    other = yield partial(srv, "alice", "up.bin", len(data), "sha256=" + sha(b"x"))
    assert other["offset"] == 0
    first, last = yield resume(
        srv, "alice", "up.bin", data, 300_000, "sha256=" + sha(data), trailer=False
    )
    assert first == "350 send %d bytes" % (len(data) - 300_000)
    assert last.startswith("226 stored ") and sha(data) in last


@pytest_twisted.inlineCallbacks
def test_mismatch_is_554_and_the_partial_is_gone(runtime):
    """Content that does not match its checksum at the end: 554, and the
    partial (content and sidecar) is removed: the next try starts at 0."""
    srv, app = yield serve(runtime)
    data = os.urandom(600_000)
    yield cut_upload(srv, app, "alice", "m.bin", data, 200_000)
    changed = data[:400_000] + b"X" + data[400_001:]
    c = yield raw(srv, "alice")
    r = yield c.cmd(quote("UPLOAD", "m.bin", len(data), "resume=yes", "offset=200000"))
    assert r == ["501 resume=yes needs sha256=<hex> or sha256=trailer"]
    r = yield c.cmd(
        quote("UPLOAD", "m.bin", len(data), "resume=yes", "offset=200000", "sha256=trailer")
    )
    assert r[0].startswith("350 ")
    c.send(changed[200_000:] + sha(data).encode())
    assert (yield c.readline()) == "554 checksum mismatch"
    assert (yield c.cmd("PING")) == ["200 pong"]  # the session goes on
    assert pair_files(app) == []
    assert (yield partial(srv, "alice", "m.bin", len(data)))["offset"] == 0
    first, _ = yield resume(srv, "alice", "m.bin", data, 200_000)
    assert first.startswith("550 no interrupted upload of this name and size keeps 200000")


@pytest_twisted.inlineCallbacks
def test_a_bad_trailer_is_501_and_the_partial_is_gone(runtime):
    srv, app = yield serve(runtime)
    data = b"t" * 1000
    c = yield raw(srv, "alice")
    r = yield c.cmd(quote("UPLOAD", "t.bin", 1000, "resume=yes", "sha256=trailer"))
    assert r == ["350 send 1064 bytes"]
    c.send(data + b"z" * 64)
    assert (yield c.readline()) == "501 the sha256 trailer must be 64 hex digits"
    assert pair_files(app) == [] and len(app.partials) == 0


@pytest_twisted.inlineCallbacks
def test_only_the_owner_sees_and_continues_a_partial(runtime):
    """Bob cannot see (PARTIAL says 0) or continue (550) Alice's partial,
    nor does his own upload of that name disturb it."""
    srv, app = yield serve(runtime)
    data = os.urandom(500_000)
    yield cut_upload(srv, app, "alice", "mine.bin", data, 100_000)
    assert (yield partial(srv, "bob", "mine.bin", len(data)))["offset"] == 0
    first, _ = yield resume(srv, "bob", "mine.bin", data, 100_000)
    assert first.startswith("550 ")
    root_view = yield partial(srv, "root", "mine.bin", len(data))  # admins neither
    assert root_view["offset"] == 0
    assert (yield partial(srv, "alice", "mine.bin", len(data)))["offset"] == 100_000
    # A partial does not hold the name: someone else may store it.
    c = yield client(srv, "bob")
    r = yield c.upload(quote("UPLOAD", "mine.bin", 3), io.BytesIO(b"bob"))
    assert r.code == 226
    first, _ = yield resume(srv, "alice", "mine.bin", data, 100_000)
    assert first == "555 file exists and belongs to someone else"
    assert (yield partial(srv, "alice", "mine.bin", len(data)))["offset"] == 100_000


@pytest_twisted.inlineCallbacks
def test_a_partial_is_never_listed_nor_downloadable(runtime):
    srv, app = yield serve(runtime)
    data = os.urandom(300_000)
    yield cut_upload(srv, app, "alice", "ghost.bin", data, 100_000)
    for user in ("alice", "bob", "root"):
        c = yield client(srv, user)
        for line in ("LIST", "LIST mine", "LIST hidden"):
            r = yield c.command(line)
            assert (r.code, r.items) == (210, []), (user, line)
        for line in ("INFO ghost.bin", "CHECKSUM ghost.bin", "DOWNLOAD ghost.bin"):
            r = yield c.command(line)
            assert r.code == 550, (user, line, r.line)
    assert partial_of(app, "alice", "ghost.bin").kept == 100_000  # still kept


@pytest_twisted.inlineCallbacks
def test_partials_count_in_the_quota(make_runtime):
    """A partial's kept bytes count: QUOTA shows them, another upload that
    would not fit beside them is 552, while continuing the partial itself
    (its own bytes are not counted twice) fits."""
    srv, app = yield serve(make_runtime(user_quota=1_000_000))
    data = os.urandom(600_000)
    yield cut_upload(srv, app, "alice", "half.bin", data, 450_000)
    c = yield raw(srv, "alice")
    (line,) = yield c.cmd("QUOTA")
    q = json.loads(line[4:])
    assert (q["files"], q["bytes"], q["partials"], q["partial_bytes"]) == (0, 450_000, 1, 450_000)
    r = yield c.cmd(quote("UPLOAD", "other.bin", 600_000))
    assert r == ["552 quota exceeded: 450000 of 1000000 bytes used"]
    r = yield c.cmd(quote("UPLOAD", "other.bin", 550_000, "resume=yes", "sha256=trailer"))
    assert r[0].startswith("350 ")  # fits beside the partial
    c.transport.loseConnection()
    first, last = yield resume(srv, "alice", "half.bin", data, 450_000)
    assert last is not None and last.startswith("226 "), (first, last)


@pytest_twisted.inlineCallbacks
def test_the_quota_recheck_at_commit_counts_partials(runtime):
    """The quota is checked again in the transaction writing the row, with
    the partials counted (two uploads racing cannot both pass it)."""
    srv, app = yield serve(runtime)
    app.user_quota = 1_000
    data = b"p" * 600
    c1 = yield raw(srv, "alice")
    r = yield c1.cmd(quote("UPLOAD", "a.bin", 600))
    assert r[0].startswith("350 ")
    yield cut_upload(srv, app, "alice", "b.bin", data, 500)
    c1.send(b"a" * 600)
    assert (yield c1.readline()) == "552 quota exceeded: 500 of 1000 bytes used"


@pytest_twisted.inlineCallbacks
def test_partials_expire_after_their_ttl(runtime):
    """After upload_partial_ttl seconds without a byte a partial is removed
    (content and sidecar) and its bytes no longer count; with ttl 0 it is
    kept until resumed."""
    srv, app = yield serve(runtime)
    data = os.urandom(200_000)
    yield cut_upload(srv, app, "alice", "old.bin", data, 50_000)
    p = partial_of(app, "alice", "old.bin")
    app.partial_ttl = 0
    assert (yield app.expire_partials(now=p.last_active + 10 * 365 * 86400)) == 0
    app.partial_ttl = 3600
    assert (yield app.expire_partials(now=p.last_active + 3599)) == 0
    assert (yield partial(srv, "alice", "old.bin", len(data)))["offset"] == 50_000
    assert (yield app.expire_partials(now=p.last_active + 3600)) == 1
    assert pair_files(app) == []
    assert (yield partial(srv, "alice", "old.bin", len(data)))["offset"] == 0
    c = yield client(srv, "alice")
    assert (yield c.command("QUOTA")).obj["bytes"] == 0


@pytest_twisted.inlineCallbacks
def test_expiry_runs_periodically_once_started(make_runtime):
    """The service's periodic check removes an expired partial by itself
    (here with a 1 s lifetime: it runs every second)."""
    rt = make_runtime()
    yield add_account(rt, "alice", PW["alice"])
    yield add_account(rt, "bob", PW["bob"])
    yield add_account(rt, "root", PW["root"], role="admin")
    app = build_files(rt)
    app.partial_ttl = 1.0  # before start(): the period follows it
    srv = yield listen(rt, FilesProtocol, app=app)
    yield cut_upload(srv, app, "alice", "brief.bin", b"b" * 5000, 1000)
    yield wait_for(
        lambda: len(app.partials) == 0 and pair_files(app) == [],
        timeout=20,
        what="the partial expiring",
    )


@pytest_twisted.inlineCallbacks
def test_a_restart_keeps_partials_and_hashes_them_again(runtime):
    """A new service on the same data directory (a restart) finds the
    partial (the start-up sweep keeps it, a lone content file or sidecar
    goes), knows no SHA-256 state for it, hashes its bytes again when it is
    continued, and the whole is verified."""
    srv, app = yield serve(runtime)
    data = os.urandom(2 * MiB + 3)
    yield cut_upload(srv, app, "alice", "r.bin", data, MiB)
    tmp = app.blobs.tmp_dir
    with open(os.path.join(tmp, "a" * 32 + ".part"), "wb") as f:
        f.write(b"no sidecar")
    with open(os.path.join(tmp, "b" * 32 + ".resume"), "wb") as f:
        f.write(b"{}")
    # The restart: the runtime's other service objects stay; the files
    # service and its blob store are new.
    app2 = build_files(runtime)
    srv2 = yield listen(runtime, FilesProtocol, app=app2)
    p = partial_of(app2, "alice", "r.bin")
    assert (p.kept, p.hasher) == (MiB, None)
    assert len(pair_files(app2)) == 2
    info = yield partial(srv2, "alice", "r.bin", len(data))
    assert (info["offset"], info["prefix_sha256"]) == (MiB, None)
    first, last = yield resume(srv2, "alice", "r.bin", data, MiB)
    assert last.startswith("226 ") and sha(data) in last


@pytest_twisted.inlineCallbacks
def test_a_partial_damaged_on_disk_is_dropped_with_554(runtime):
    """A partial whose content file went missing or shrank (an operator, a
    disk) cannot be continued: 554, it is removed, and the client starts
    again from 0."""
    srv, app = yield serve(runtime)
    data = os.urandom(300_000)
    for name, damage in (("gone.bin", "unlink"), ("short.bin", "truncate")):
        yield cut_upload(srv, app, "alice", name, data, 200_000)
        p = partial_of(app, "alice", name)
        p.hasher = None  # as after a restart: the bytes must be read again
        path = os.path.join(app.blobs.tmp_dir, p.blob_id + ".part")
        if damage == "unlink":
            os.unlink(path)
        else:
            os.truncate(path, 1000)
        first, _ = yield resume(srv, "alice", name, data, 200_000)
        assert (
            first == "554 the interrupted upload is damaged and was removed; upload from the start"
        )
        assert partial_of(app, "alice", name) is None
    assert pair_files(app) == []


@pytest_twisted.inlineCallbacks
def test_a_shorter_offset_drops_the_rest_and_offset_0_starts_afresh(runtime):
    """The client may continue before the end of what is kept (the rest is
    cut off); offset 0 (or another size) replaces the partial."""
    srv, app = yield serve(runtime)
    data = os.urandom(400_000)
    yield cut_upload(srv, app, "alice", "s.bin", data, 300_000)
    first, last = yield resume(srv, "alice", "s.bin", data, 123_456)
    assert first == "350 send %d bytes" % (400_000 - 123_456 + 64)
    assert last.startswith("226 ")
    yield cut_upload(srv, app, "alice", "z.bin", data, 300_000)
    assert (yield partial(srv, "alice", "z.bin", 400_001))["offset"] == 0  # another size
    first, last = yield resume(srv, "alice", "z.bin", data, 0)
    assert first == "350 send 400064 bytes" and last.startswith("226 ")
    assert pair_files(app) == []


@pytest_twisted.inlineCallbacks
def test_protected_uploads_resume_with_the_same_password(runtime):
    """A protected partial keeps whole sealed chunks; it resumes only with
    its password (535 otherwise, and it is kept), at a chunk boundary (501
    otherwise); the stored file is encrypted and decrypts to the data."""
    srv, app = yield serve(runtime)
    chunk = crypto.ENC_CHUNK
    data = os.urandom(5 * chunk + 999)
    info = yield cut_upload(
        srv, app, "alice", "vault.bin", data, 2 * chunk + 10, "password=pw1", "sha256=trailer"
    )
    assert (info["offset"], info["protected"]) == (2 * chunk, True)
    assert info["prefix_sha256"] == sha(data[: 2 * chunk])
    first, _ = yield resume(srv, "alice", "vault.bin", data, 2 * chunk, "password=pw2")
    assert first == "535 wrong file password: the interrupted upload has another one"
    first, _ = yield resume(srv, "alice", "vault.bin", data, chunk + 1, "password=pw1")
    assert first == "501 offset must be a multiple of %d for a protected upload" % chunk
    first, _ = yield resume(srv, "alice", "vault.bin", data, 2 * chunk)  # no password
    assert first.startswith("550 ")
    first, last = yield resume(srv, "alice", "vault.bin", data, 2 * chunk, "password=pw1")
    assert last.startswith("226 ") and '"protected":true' in last, (first, last)
    c = yield client(srv, "bob")
    body = io.BytesIO()
    r = yield c.download(quote("DOWNLOAD", "vault.bin", "password=pw1"), body)
    assert r.code == 226 and body.getvalue() == data
    blobs = [os.path.join(b, n) for b, _, ns in os.walk(app.blobs.blobs_dir) for n in ns]
    assert data[:64] not in open(blobs[0], "rb").read()


@pytest_twisted.inlineCallbacks
def test_a_protected_partial_is_hashed_again_after_a_restart(runtime):
    srv, app = yield serve(runtime)
    chunk = crypto.ENC_CHUNK
    data = os.urandom(3 * chunk + 5)
    yield cut_upload(
        srv, app, "alice", "v2.bin", data, 2 * chunk + 1, "password=pw", "sha256=trailer"
    )
    app2 = build_files(runtime)
    srv2 = yield listen(runtime, FilesProtocol, app=app2)
    assert partial_of(app2, "alice", "v2.bin").kept == 2 * chunk
    first, last = yield resume(srv2, "alice", "v2.bin", data, 2 * chunk, "password=pw")
    assert last.startswith("226 ") and sha(data) in last


@pytest_twisted.inlineCallbacks
def test_a_new_connection_takes_over_an_open_one(runtime):
    """A client whose old connection still looks open to the server (a
    network cut not noticed yet) can continue at once: the old connection
    is closed, what it delivered is kept, and the new one continues."""
    srv, app = yield serve(runtime)
    data = os.urandom(MiB)
    old = yield raw(srv, "alice")
    r = yield old.cmd(quote("UPLOAD", "t.bin", len(data), "resume=yes", "sha256=trailer"))
    assert r[0].startswith("350 ")
    old.send(data[:300_000])
    yield wait_for(
        lambda: (
            (p := partial_of(app, "alice", "t.bin")) is not None
            and p.user is not None
            and p.user.sink.received == 300_000
        ),
        what="the first bytes",
    )
    info = yield partial(srv, "alice", "t.bin", len(data))
    assert info["offset"] == 300_000 and info["prefix_sha256"] is None  # still being written
    first, last = yield resume(srv, "alice", "t.bin", data, 300_000)
    assert last.startswith("226 ") and sha(data) in last, (first, last)
    yield old.wait_closed()


@pytest_twisted.inlineCallbacks
def test_a_plain_upload_is_as_before(runtime):
    """Without resume=yes nothing changes: a cut removes the temporary file
    at once and keeps no partial; offset= needs resume=yes; a stored plain
    upload of a name drops the uploader's partial of it."""
    srv, app = yield serve(runtime)
    c = yield raw(srv, "alice")
    r = yield c.cmd(quote("UPLOAD", "plain.bin", 100_000))
    assert r == ["350 send 100000 bytes"]
    c.send(b"x" * 50_000)
    yield wait_for(lambda: pair_files(app) != [], what="the temporary file")
    c.transport.loseConnection()
    yield wait_for(lambda: pair_files(app) == [], what="the temporary file removed")
    assert len(app.partials) == 0
    # A resumable upload cut before its first byte keeps nothing.
    c = yield raw(srv, "alice")
    r = yield c.cmd(quote("UPLOAD", "e.bin", 10, "resume=yes", "sha256=trailer"))
    assert r == ["350 send 74 bytes"]
    c.transport.loseConnection()
    yield wait_for(lambda: len(app.partials) == 0 and pair_files(app) == [], what="nothing kept")
    c = yield raw(srv, "alice")
    assert (yield c.cmd(quote("UPLOAD", "p.bin", 10, "offset=5"))) == [
        "501 offset= needs resume=yes"
    ]
    assert (yield c.cmd(quote("UPLOAD", "p.bin", 10, "resume=maybe"))) == [
        "501 resume must be yes or no"
    ]
    assert (
        yield c.cmd(quote("UPLOAD", "p.bin", 10, "resume=yes", "offset=11", "sha256=trailer"))
    )[0] == "501 bad offset: must be from 0 to 10"
    assert (yield c.cmd(quote("PARTIAL", "p.bin"))) == [
        "501 usage: " + FilesProtocol.HELP["PARTIAL"]
    ]
    assert (yield c.cmd(quote("PARTIAL", "a/b", 3)))[0].startswith("553 ")
    data = os.urandom(100_000)
    yield cut_upload(srv, app, "alice", "sup.bin", data, 40_000)
    cc = yield client(srv, "alice")
    r = yield cc.upload(quote("UPLOAD", "sup.bin", 3), io.BytesIO(b"new"))
    assert r.code == 226
    assert len(app.partials) == 0 and pair_files(app) == []


@pytest_twisted.inlineCallbacks
def test_list_hidden_shows_a_user_their_own_and_an_admin_all(runtime):
    srv, app = yield serve(runtime)
    alice = yield client(srv, "alice")
    bob = yield client(srv, "bob")
    root = yield client(srv, "root")
    for c, name in ((alice, "a-secret"), (bob, "b-secret"), (alice, "a-open")):
        vis = "visibility=public" if name.endswith("open") else "visibility=hidden"
        r = yield c.upload(quote("UPLOAD", name, 1, vis), io.BytesIO(b"x"))
        assert r.code == 226
    names = {}
    for who, c in (("alice", alice), ("bob", bob), ("root", root)):
        r = yield c.command("LIST hidden")
        assert r.code == 210
        names[who] = [f["name"] for f in r.items]
    assert names == {"alice": ["a-secret"], "bob": ["b-secret"], "root": ["a-secret", "b-secret"]}


# ---------------------------------------------------------------- the client's choices


@defer.inlineCallbacks
def client_upload(srv, path, name):
    """The upload of netshare-files (its coroutine, on a logged-in client
    connection).  @return: (final reply, the offset it resumed from)."""
    from netshare.clients import files as cli

    c = yield client(srv, "alice")
    state = cli._UploadState(os.path.getsize(path))
    resp = yield defer.ensureDeferred(cli._upload(c, path, name, os.path.getsize(path), [], state))
    return resp, state.offset


@pytest_twisted.inlineCallbacks
def test_the_client_resumes_and_restarts_when_the_local_file_changed(runtime, tmp_path, capsys):
    """netshare-files upload continues a partial of the same content; when
    the local file changed, it notices before sending (the server knows the
    kept bytes' SHA-256) or, after a server restart, from the 554 at the end,
    and uploads from the start, saying so."""
    srv, app = yield serve(runtime)
    data = os.urandom(2 * MiB)
    path = str(tmp_path / "local.bin")
    with open(path, "wb") as f:
        f.write(data)
    yield cut_upload(srv, app, "alice", "same.bin", data, MiB)
    resp, offset = yield client_upload(srv, path, "same.bin")
    assert resp.code == 226 and offset == MiB and resp.obj["sha256"] == sha(data)

    yield cut_upload(srv, app, "alice", "changed.bin", data, MiB)
    changed = b"!" + data[1:]
    with open(path, "wb") as f:
        f.write(changed)
    resp, offset = yield client_upload(srv, path, "changed.bin")
    assert resp.code == 226 and offset == 0 and resp.obj["sha256"] == sha(changed)
    assert "holds other content" in capsys.readouterr().err

    yield cut_upload(srv, app, "alice", "late.bin", data, MiB)
    app2 = build_files(runtime)  # a restart: the kept bytes' hash is not known
    srv2 = yield listen(runtime, FilesProtocol, app=app2)
    resp, offset = yield client_upload(srv2, path, "late.bin")
    assert resp.code == 226 and offset == 0 and resp.obj["sha256"] == sha(changed)
    err = capsys.readouterr().err
    assert "resuming at %d failed (554 checksum mismatch): uploading from the start" % MiB in err
    assert pair_files(app2) == []


class OldFilesProtocol(FilesProtocol):
    """A files port from before resumable uploads."""

    cmd_PARTIAL = None


@pytest_twisted.inlineCallbacks
def test_the_client_uploads_to_an_older_server_the_old_way(runtime, tmp_path):
    """A server without PARTIAL gets the old form: the file hashed first,
    sha256= up front, no resume=, no trailer."""
    yield add_account(runtime, "alice", PW["alice"])
    app = build_files(runtime)
    srv = yield listen(runtime, OldFilesProtocol, app=app)
    data = os.urandom(300_000)
    path = str(tmp_path / "old.bin")
    with open(path, "wb") as f:
        f.write(data)
    resp, offset = yield client_upload(srv, path, "old.bin")
    assert resp.code == 226 and offset == 0 and resp.obj["sha256"] == sha(data)
    yield runtime.history.flush()
    c = yield client(srv, "alice")
    r = yield c.command("HISTORY limit=5")
    commands = [e["command"] for e in r.items]
    assert "UPLOAD old.bin 300000 sha256=%s" % sha(data) in commands, commands


# ---------------------------------------------------------------- end to end

E2E_SIZE = 200 * MiB
BUDGET = 48 * MiB  # client bytes the proxy forwards before it stalls


class StallingProxy:
    """
    A one-connection TCP proxy: everything from the server is forwarded;
    from the client only C{budget} bytes, then it stops reading the client
    (the upload stalls mid-body, whatever the machine's speed) until
    L{close}, which closes both sides.  C{client_gone} is set when the
    client closes its side.
    """

    def __init__(self, port, budget):
        self.target = port
        self.budget = budget
        self.closing = threading.Event()
        self.client_gone = threading.Event()
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(1)
        self.listener.settimeout(30)
        self.port = self.listener.getsockname()[1]
        self.socks = []
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        try:
            down, _ = self.listener.accept()
        except OSError:
            return
        up = socket.create_connection(("127.0.0.1", self.target), timeout=30)
        self.socks = [down, up]

        def server_to_client():
            try:
                while True:
                    data = up.recv(65536)
                    if not data:
                        break
                    down.sendall(data)
            except OSError:
                pass

        t = threading.Thread(target=server_to_client, daemon=True)
        t.start()
        left = self.budget
        try:
            while left > 0:
                data = down.recv(min(1 << 20, left))
                if not data:
                    self.client_gone.set()
                    break
                up.sendall(data)
                left -= len(data)
        except OSError:
            self.client_gone.set()
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
        self.thread.join(15)


def make_file(path, size):
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(8 * MiB, left)
            f.write(os.urandom(n))
            left -= n
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(8 * MiB):
            h.update(block)
    return h.hexdigest()


def client_cmd(port, *args):
    return [
        sys.executable,
        "-m",
        "netshare.clients.files",
        "--port",
        str(port),
        "--json",
        *args,
    ]


def client_env(workdir):
    return env(
        NETSHARE_USER="alice",
        NETSHARE_PASSWORD="pw-alice",
        XDG_CONFIG_HOME=os.path.join(workdir, "config"),  # sessions kept here
    )


def part_size(srv):
    """The bytes of the one partial's content file on the server's disk."""
    tmp = os.path.join(srv.data, "files", "tmp")
    sizes = [os.path.getsize(os.path.join(tmp, n)) for n in os.listdir(tmp) if n.endswith(".part")]
    return max(sizes, default=0)


def wait_until(predicate, timeout=30, what="condition"):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("%s not reached within %ss" % (what, timeout))
        time.sleep(0.02)


def start_cut_upload(srv, workdir, src):
    """netshare-files upload through a stalling proxy, once the server holds
    part of the body.  @return: (process, proxy)."""
    proxy = StallingProxy(srv.ports["files"], BUDGET)
    proc = subprocess.Popen(
        client_cmd(proxy.port, "upload", src),
        cwd=workdir,
        env=client_env(workdir),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_until(lambda: part_size(srv) >= BUDGET // 2, what="half the budget on the server")
    except BaseException:
        proc.kill()
        proc.communicate()
        proxy.close()
        raise
    return proc, proxy


def finish_upload(srv, workdir, src, digest):
    """Run the same command again, directly: it resumes and stores the file."""
    r = subprocess.run(
        client_cmd(srv.ports["files"], "upload", src),
        cwd=workdir,
        env=client_env(workdir),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r
    out = json.loads(r.stdout)
    assert out["resumed_from"] > 0, out
    assert (out["size"], out["sha256"]) == (E2E_SIZE, digest), out
    c = LineConn(srv.ports["files"])
    try:
        c.readline()
        assert c.cmd(quote("LOGIN", "alice", "pw-alice"))[0].startswith("230 ")
        assert c.cmd("CHECKSUM big.bin") == ["200 sha256 " + digest]
        assert c.cmd(quote("DELETE", "big.bin")) == ["200 deleted"]
    finally:
        c.close()
    assert os.listdir(os.path.join(srv.data, "files", "tmp")) == []
    return out


@pytest.fixture(scope="module")
def e2e(tmp_path_factory):
    base = tmp_path_factory.mktemp("resume-e2e")
    srv = ServerProcess(
        base / "data", extra_args=["--registration", "open", "--shutdown-timeout", "1"]
    ).start()
    c = LineConn(srv.ports["files"])
    c.readline()
    assert c.cmd("REGISTER alice pw-alice")[0].startswith("201 ")
    c.close()
    work = base / "client"
    work.mkdir()
    src = str(work / "big.bin")
    srv.src, srv.digest, srv.work = src, make_file(src, E2E_SIZE), str(work)
    yield srv
    srv.terminate()
    srv.kill()


@pytest.mark.timeout(60)
def test_e2e_ctrl_c_then_the_same_command_resumes(e2e):
    proc, proxy = start_cut_upload(e2e, e2e.work, e2e.src)
    try:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        proxy.close()
    assert proc.returncode == 130, (out, err)
    assert "Traceback" not in err and "run the same command again to resume" in err, err
    finish_upload(e2e, e2e.work, e2e.src, e2e.digest)


@pytest.mark.timeout(60)
def test_e2e_kill_9_of_the_client_then_the_same_command_resumes(e2e):
    proc, proxy = start_cut_upload(e2e, e2e.work, e2e.src)
    try:
        proc.kill()
        proc.communicate(timeout=30)
        wait_until(proxy.client_gone.is_set, what="the proxy seeing the client go")
    finally:
        proxy.close()
    assert proc.returncode == -signal.SIGKILL
    finish_upload(e2e, e2e.work, e2e.src, e2e.digest)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("how", ["sigterm", "sigkill"])
def test_e2e_server_restart_mid_upload_then_the_same_command_resumes(e2e, how):
    """The server stops mid-body (in order, or killed): the client says the
    upload can be resumed (exit 3); the restarted server finds the partial
    and the same command continues it."""
    proc, proxy = start_cut_upload(e2e, e2e.work, e2e.src)
    try:
        if how == "sigterm":
            assert e2e.terminate() == 0
        else:
            e2e.proc.kill()
            e2e.proc.wait(10)
        proxy.close()
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        proxy.close()
        if e2e.proc.poll() is not None:
            e2e.kill()
            e2e.start()
    assert proc.returncode == 3, (out, err)
    assert "run the same command again to resume" in err and "Traceback" not in err, err
    assert "interrupted uploads kept to be resumed" in e2e.output()
    finish_upload(e2e, e2e.work, e2e.src, e2e.digest)


def test_e2e_list_hidden_through_the_client(e2e):
    """netshare-files list --hidden: the caller's own hidden files."""
    c = LineConn(e2e.ports["files"])
    try:
        c.readline()
        assert c.cmd("REGISTER carol pw-carol")[0].startswith("201 ")
        assert c.cmd(quote("LOGIN", "alice", "pw-alice"))[0].startswith("230 ")
        assert c.cmd(quote("UPLOAD", "alice-hidden", 2, "visibility=hidden"))[0].startswith("350")
        c.send(b"hi")
        assert c.readline().startswith("226 ")
    finally:
        c.close()
    listings = {}
    for user, pw in (("alice", "pw-alice"), ("carol", "pw-carol"), ("admin", "adminpw")):
        e = env(NETSHARE_USER=user, NETSHARE_PASSWORD=pw, XDG_CONFIG_HOME=e2e.work + "/config")
        r = subprocess.run(
            client_cmd(e2e.ports["files"], "list", "--hidden"),
            cwd=ROOT,
            env=e,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert r.returncode == 0, r
        listings[user] = [f["name"] for f in json.loads(r.stdout)]
    assert listings == {"alice": ["alice-hidden"], "carol": [], "admin": ["alice-hidden"]}

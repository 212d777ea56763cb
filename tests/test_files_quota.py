"""
QUOTA on the files port (docs/protocol.md section 2), over real TCP, in
process: the real runtime, the real files service (L{build_files}) and a
L{FilesProtocol} listener on a free port, as in tests/test_files_protocol.py.

QUOTA is the worked example of adding a command (docs/architecture.md): a
handler in netshare/protocols/files.py, a rule in
netshare/services/files/service.py and a query in netshare/storage/files.py;
these tests go through all three.  The tests whose answer comes from the
database run on every configured database.
"""

import io
import json

import pytest
import pytest_twisted
from twisted.internet import defer

from netshare.clients.protocol import quote
from netshare.protocols.files import FilesProtocol
from netshare.service import build_files
from tests.inprocess import add_account, db_kinds, listen

pytestmark = pytest.mark.timeout(120)

PW = {"alice": "pw-alice", "bob": "pw-bob", "root": "pw-root"}
QUOTA_KEYS = {"files", "bytes", "quota", "max_file_size", "partials", "partial_bytes"}


@defer.inlineCallbacks
def serve(rt):
    """Accounts alice, bob (users) and root (admin), and a files listener."""
    yield add_account(rt, "alice", PW["alice"])
    yield add_account(rt, "bob", PW["bob"])
    yield add_account(rt, "root", PW["root"], role="admin")
    srv = yield listen(rt, FilesProtocol, app=build_files(rt))
    return srv


@defer.inlineCallbacks
def client(srv, user):
    c = yield srv.connect()
    r = yield c.command(quote("LOGIN", user, PW[user]))
    assert r.code == 230, r.line
    return c


@defer.inlineCallbacks
def put(c, name, size, *options):
    r = yield c.upload(quote("UPLOAD", name, size, *options), io.BytesIO(b"q" * size))
    assert r.code == 226, (name, r.lines)
    return r


@defer.inlineCallbacks
def quota(c):
    r = yield c.command("QUOTA")
    assert r.code == 200, r.lines
    assert set(r.obj) == QUOTA_KEYS, r.obj
    return r.obj


@pytest.mark.parametrize("kind", db_kinds())
@pytest_twisted.inlineCallbacks
def test_an_empty_account_and_the_exact_reply_line(make_runtime, kind):
    """An account without files: 0 files, 0 bytes, and the configured
    limits, as one compact C{200 {json}} line."""
    srv = yield serve(make_runtime(db=kind, user_quota=10_000, max_file_size=4_000))
    raw = yield srv.raw()
    assert (yield raw.cmd(quote("LOGIN", "alice", PW["alice"])))[0].startswith("230 ")
    (line,) = yield raw.cmd("QUOTA")
    assert line.startswith("200 {")
    assert json.loads(line[4:]) == {
        "files": 0,
        "bytes": 0,
        "quota": 10_000,
        "max_file_size": 4_000,
        "partials": 0,
        "partial_bytes": 0,
    }
    assert (yield raw.cmd("quota")) == [line]  # verbs are case-insensitive


@pytest.mark.parametrize("kind", db_kinds())
@pytest_twisted.inlineCallbacks
def test_counts_own_files_hidden_and_protected_included(make_runtime, kind):
    """After uploads: the caller's files are counted, public, hidden and
    password-protected alike (protected ones by their plaintext size, as the
    quota measures them); another user's files are not, not even an
    admin's own QUOTA counts anyone else's; a replace counts once and a
    delete stops counting."""
    srv = yield serve(make_runtime(db=kind, user_quota=2_000, max_file_size=4_000))
    alice = yield client(srv, "alice")
    bob = yield client(srv, "bob")
    root = yield client(srv, "root")

    yield put(alice, "open.txt", 100)
    yield put(alice, "unlisted.txt", 200, "visibility=hidden")
    yield put(alice, "locked.bin", 300, "password=sesame")
    yield put(alice, "both.bin", 400, "visibility=hidden", "password=sesame")
    yield put(bob, "bobs.bin", 1_000)

    mine = yield quota(alice)
    assert (mine["files"], mine["bytes"]) == (4, 1_000)
    assert (mine["quota"], mine["max_file_size"]) == (2_000, 4_000)
    theirs = yield quota(bob)
    assert (theirs["files"], theirs["bytes"]) == (1, 1_000)
    admin = yield quota(root)
    assert (admin["files"], admin["bytes"]) == (0, 0)

    yield put(alice, "open.txt", 50, "replace=yes")
    mine = yield quota(alice)
    assert (mine["files"], mine["bytes"]) == (4, 950)
    r = yield alice.command(quote("DELETE", "both.bin"))
    assert r.code == 200, r.lines
    mine = yield quota(alice)
    assert (mine["files"], mine["bytes"]) == (3, 550)

    # The same measure as UPLOAD's quota check: the refusal names it.
    r = yield alice.command(quote("UPLOAD", "big", 1_451))
    assert (r.code, r.text) == (552, "quota exceeded: 550 of 2000 bytes used")


@pytest_twisted.inlineCallbacks
def test_no_quota_configured_is_null(make_runtime):
    """C{--user-quota 0} (unlimited): C{"quota": null}; the file size limit
    is still reported."""
    srv = yield serve(make_runtime(user_quota=0, max_file_size=4_000))
    alice = yield client(srv, "alice")
    yield put(alice, "a", 10)
    assert (yield quota(alice)) == {
        "files": 1,
        "bytes": 10,
        "quota": None,
        "max_file_size": 4_000,
        "partials": 0,
        "partial_bytes": 0,
    }


@pytest_twisted.inlineCallbacks
def test_before_login_is_login_required(runtime):
    srv = yield serve(runtime)
    raw = yield srv.raw()
    assert (yield raw.cmd("QUOTA")) == ["530 login required"]
    assert (yield raw.cmd("PING")) == ["200 pong"]  # the session goes on


@pytest_twisted.inlineCallbacks
def test_an_argument_is_a_syntax_error(runtime):
    """QUOTA takes nothing: any argument, option-like or not, is C{501}
    (the files port's usage reply) and the session goes on."""
    srv = yield serve(runtime)
    raw = yield srv.raw()
    assert (yield raw.cmd(quote("LOGIN", "alice", PW["alice"])))[0].startswith("230 ")
    for line in ("QUOTA bob", "QUOTA user=bob", "QUOTA ''"):
        assert (yield raw.cmd(line)) == ["501 usage: QUOTA"], line
    assert (yield raw.cmd("PING")) == ["200 pong"]


@pytest_twisted.inlineCallbacks
def test_help_lists_quota_with_every_files_command(runtime):
    srv = yield serve(runtime)
    raw = yield srv.raw()
    lines = yield raw.cmd("HELP")
    assert lines[-1] == "214 end"
    for verb in ("LIST", "INFO", "CHECKSUM", "UPLOAD", "DOWNLOAD", "DELETE", "QUOTA", "PARTIAL"):
        assert any(line.startswith("214-" + verb) for line in lines), verb

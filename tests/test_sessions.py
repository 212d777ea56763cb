"""
Session tokens (docs/protocol.md section 1.7.1) over real TCP connections on
every configured database: SESSION NEW / TOKEN / SESSION LIST / SESSION
REVOKE, who may see and end whose sessions, expiry (on a test clock), a new
password or a removed account ending them, the token never written to the
history or the log, and the last-login time.
"""

import json

import pytest
import pytest_twisted
from twisted.internet import task

from netshare.protocols.line import CommandProtocol
from netshare.services.accounts import Caller
from netshare.services.sessions import SessionService, parse_token
from netshare.storage.sessions import SessionStore
from tests.inprocess import add_account, listen

pytestmark = pytest.mark.timeout(120, method="thread")


def obj(lines):
    (line,) = lines
    return json.loads(line.split(" ", 1)[1])


def items(lines):
    assert lines[-1].endswith(" items"), lines
    return [json.loads(x[4:]) for x in lines[:-1]]


@pytest_twisted.inlineCallbacks
def logged_in(srv, user, password):
    c = yield srv.raw()
    assert (yield c.cmd("LOGIN %s %s" % (user, password)))[0].startswith("230 ")
    return c


@pytest_twisted.inlineCallbacks
def new_token(srv, user, password, label="test"):
    c = yield srv.raw()
    assert (yield c.cmd("LOGIN %s %s" % (user, password)))[0].startswith("230 ")
    (line,) = yield c.cmd("SESSION NEW label=%s" % label)
    assert line.startswith("201 "), line
    made = json.loads(line[4:])
    return c, made


@pytest_twisted.inlineCallbacks
def test_token_logs_in_lists_and_revokes(db_runtime):
    rt = db_runtime
    yield add_account(rt, "alice", "pw-alice")
    yield add_account(rt, "bob", "pw-bob")
    yield add_account(rt, "root", "pw-root", "admin")
    srv = yield listen(rt, CommandProtocol)

    c, made = yield new_token(srv, "alice", "pw-alice", label="laptop")
    assert parse_token(made["token"]) is not None and made["expires"]

    d = yield srv.raw()
    assert (yield d.cmd("TOKEN " + made["token"])) == ["230 logged in as alice (user)"]
    assert (yield d.cmd("WHOAMI")) == ["200 alice user"]
    assert (yield d.cmd("TOKEN " + made["token"]))[0].startswith("503 ")

    # A wrong secret, another id, garbage: 535, like a wrong password.
    prefix, sid, secret = made["token"].split(".")
    for bad in (
        "%s.%s.%s" % (prefix, sid, secret[:-1] + ("A" if secret[-1] != "A" else "B")),
        "%s.%d.%s" % (prefix, int(sid) + 1000, secret),
        "not-a-token",
    ):
        e = yield srv.raw()
        assert (yield e.cmd("TOKEN " + bad)) == ["535 bad or expired session"], bad

    listed = items((yield c.cmd("SESSION LIST")))
    assert [(s["id"], s["user"], s["label"]) for s in listed] == [(made["id"], "alice", "laptop")]
    assert "token" not in listed[0] and "secret_hash" not in listed[0]

    # bob neither sees nor ends alice's sessions; an admin does both.
    b = yield logged_in(srv, "bob", "pw-bob")
    assert (yield b.cmd("SESSION LIST"))[-1] == "210 0 items"
    assert (yield b.cmd("SESSION LIST user=alice"))[0].startswith("531 ")
    assert (yield b.cmd("SESSION REVOKE %d" % made["id"])) == ["550 no session %d" % made["id"]]
    r = yield logged_in(srv, "root", "pw-root")
    assert [s["user"] for s in items((yield r.cmd("SESSION LIST user=*")))] == ["alice"]
    assert [s["id"] for s in items((yield r.cmd("SESSION LIST user=alice")))] == [made["id"]]
    assert (yield r.cmd("SESSION REVOKE %d" % made["id"])) == ["200 1 revoked"]

    f = yield srv.raw()
    assert (yield f.cmd("TOKEN " + made["token"])) == ["535 bad or expired session"]

    # REVOKE all: the caller's own.
    _, t1 = yield new_token(srv, "alice", "pw-alice")
    _, t2 = yield new_token(srv, "alice", "pw-alice")
    assert (yield c.cmd("SESSION REVOKE all")) == ["200 2 revoked"]
    for t in (t1, t2):
        g = yield srv.raw()
        assert (yield g.cmd("TOKEN " + t["token"])) == ["535 bad or expired session"]

    for bad in ("SESSION", "SESSION FLY", "SESSION REVOKE", "SESSION REVOKE x", "TOKEN"):
        assert (yield c.cmd(bad))[0].startswith("501 "), bad
    assert (yield (yield srv.raw()).cmd("SESSION NEW"))[0].startswith("530 ")


@pytest_twisted.inlineCallbacks
def test_token_never_recorded_and_last_login_set(db_runtime, tmp_path):
    rt = db_runtime
    yield add_account(rt, "alice", "pw-alice")
    srv = yield listen(rt, CommandProtocol)
    before = yield rt.accounts.store.get("alice")
    assert before.last_login_ms is None
    c, made = yield new_token(srv, "alice", "pw-alice")
    d = yield srv.raw()
    assert (yield d.cmd("TOKEN " + made["token"]))[0].startswith("230 ")
    assert (yield d.cmd("TOKEN %s extra" % made["token"]))[0].startswith("501 ")
    yield rt.history.flush()
    entries = items((yield d.cmd("HISTORY limit=50")))
    recorded = [e["command"] for e in entries]
    assert "TOKEN alice ***" in recorded and "SESSION NEW label=test" in recorded
    secret = made["token"].split(".")[2]
    assert not any(secret in e for e in recorded)
    after = yield rt.accounts.store.get("alice")
    assert after.last_login_ms is not None and after.to_wire()["last_login"]


@pytest_twisted.inlineCallbacks
def test_new_password_and_removal_end_sessions(db_runtime):
    rt = db_runtime
    yield add_account(rt, "alice", "pw-alice")
    yield add_account(rt, "bob", "pw-bob")
    srv = yield listen(rt, CommandProtocol)
    _, a = yield new_token(srv, "alice", "pw-alice")
    _, b = yield new_token(srv, "bob", "pw-bob")
    assert (yield rt.accounts.passwd("alice", "pw-new")) == 1
    yield rt.accounts.remove("bob")
    for t in (a, b):
        c = yield srv.raw()
        assert (yield c.cmd("TOKEN " + t["token"])) == ["535 bad or expired session"]


@pytest_twisted.inlineCallbacks
def test_lifetime_slides_with_use_and_expires(db_runtime):
    """On a test clock: a session used within its lifetime lives on; one
    left unused longer than the lifetime is refused and not listed."""
    rt = db_runtime
    account = yield add_account(rt, "alice", "pw-alice")
    clock = task.Clock()
    clock.advance(1_800_000_000)
    service = SessionService(SessionStore(rt.pool), rt.accounts.store, ttl=100.0, clock=clock)
    caller = Caller(account, "127.0.0.1")
    made = yield service.new(caller, "x")
    clock.advance(90)
    assert (yield service.login(made["token"])).name == "alice"
    clock.advance(90)  # 180 s after creation, 90 after the last use
    assert (yield service.login(made["token"])).name == "alice"
    assert [s.id for s in (yield service.list(caller))] == [made["id"]]
    clock.advance(101)
    with pytest.raises(Exception) as e:
        yield service.login(made["token"])
    assert getattr(e.value, "code", None) == 535
    assert (yield service.list(caller)) == []
    # A new session of the account clears the expired rows.
    yield service.new(caller, "y")
    assert len((yield rt.pool.run(_all_rows))) == 1


def _all_rows(conn):
    import sqlalchemy as sa

    from netshare.storage.schema import sessions

    return list(conn.execute(sa.select(sessions.c.id)))

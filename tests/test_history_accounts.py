"""
Accounts, the request history and the logs, over real TCP connections and on
every configured database: REGISTER/LOGIN/WHOAMI, HISTORY and its ownership
rules, no password anywhere (history table, HISTORY replies, JSON log), the
batched history writer, and the bounded KDF pool that keeps the reactor free.
"""

import json
import os
import threading
import time

import pytest
import pytest_twisted
from twisted.internet import defer, task

from netshare.errors import DatabaseUnavailable, RateLimited
from netshare.kdf import KDFPool
from netshare.protocols.line import CommandProtocol
from tests.inprocess import add_account, listen, reactor, stop_runtime, wait_for

pytestmark = pytest.mark.timeout(120, method="thread")

SECRETS = (
    "Sekret-Alice-1",
    "Sekret-Bob-2",
    "Sekret-Admin-3",
    "Sekret-Typo-4",
    "Sekret-Reg-5",
    "Sekret-Opt-6",
)


def assert_no_secret(text):
    for s in SECRETS:
        assert s not in text, "password %r leaked" % s


@defer.inlineCallbacks
def logged_in(srv, user, password):
    c = yield srv.raw()
    assert (yield c.cmd("LOGIN %s %s" % (user, password)))[0].startswith("230 ")
    return c


def history(lines):
    assert lines[-1].endswith(" items")
    return [json.loads(x[4:]) for x in lines[:-1]]


# --- accounts --------------------------------------------------------------------


@pytest_twisted.inlineCallbacks
def test_register_login_whoami(db_runtime):
    srv = yield listen(db_runtime, CommandProtocol)
    c = yield srv.raw()
    assert (yield c.cmd("WHOAMI")) == ["530 not logged in"]
    assert (yield c.cmd("REGISTER alice Sekret-Reg-5")) == ["201 registered alice"]
    assert (yield c.cmd("REGISTER alice other")) == ["555 account alice exists"]
    assert (yield c.cmd("REGISTER ALICE other")) == ["555 account ALICE exists"]
    for bad in ("bad-name", "b\u00e9", "a" * 33, "''", "x.y"):
        (line,) = yield c.cmd("REGISTER %s pw" % bad)
        assert line.startswith("553 "), (bad, line)
    (line,) = yield c.cmd("REGISTER bob ''")
    assert line.startswith("501 ")
    (line,) = yield c.cmd("REGISTER bob %s" % ("p" * 129))
    assert line.startswith("501 ")
    (line,) = yield c.cmd("REGISTER bob")
    assert line.startswith("501 ")
    assert (yield c.cmd("REGISTER %s pw" % ("b" * 32))) == ["201 registered %s" % ("b" * 32)]
    assert (yield c.cmd("LOGIN alice Sekret-Reg-5")) == ["230 logged in as alice (user)"]
    assert (yield c.cmd("WHOAMI")) == ["200 alice user"]
    d = yield srv.raw()
    assert (yield d.cmd("login ALICE Sekret-Reg-5")) == ["230 logged in as alice (user)"]
    yield add_account(db_runtime, "root2", "Sekret-Admin-3", "admin")
    e = yield logged_in(srv, "root2", "Sekret-Admin-3")
    assert (yield e.cmd("WHOAMI")) == ["200 root2 admin"]


@pytest_twisted.inlineCallbacks
def test_registration_closed_by_config(make_runtime):
    rt = make_runtime(registration="closed")
    srv = yield listen(rt, CommandProtocol)
    c = yield srv.raw()
    assert (yield c.cmd("REGISTER alice pw")) == ["531 registration is closed"]
    assert (yield c.cmd("LOGIN alice pw")) == ["535 bad credentials"]


# --- history -----------------------------------------------------------------------


@pytest_twisted.inlineCallbacks
def test_history_own_entries_codes_and_no_password(db_runtime):
    rt = db_runtime
    yield add_account(rt, "alice", "Sekret-Alice-1")
    srv = yield listen(rt, CommandProtocol)
    c = yield srv.raw()
    assert (yield c.cmd("LOGIN alice Sekret-Typo-4")) == ["535 bad credentials"]
    assert (yield c.cmd('LOGIN alice "Sekret-Alice-1"')) == ["230 logged in as alice (user)"]
    assert (yield c.cmd("PING")) == ["200 pong"]
    (line,) = yield c.cmd('LOGIN alice "Sekret-Typo-4')  # bad quoting
    assert line.startswith("500 ")
    # A password with spaces, unquoted: all of it stays out of the record.
    (line,) = yield c.cmd("LOGIN alice my Sekret-Opt-6 words")
    assert line.startswith("501 ")
    assert (yield c.cmd("REGISTER carol Sekret-Reg-5")) == ["201 registered carol"]
    (line,) = yield c.cmd("LOGN alice Sekret-Typo-4")  # a typo'd verb
    assert line.startswith("500 unknown command")
    (line,) = yield c.cmd("HISTORY password=Sekret-Opt-6")
    assert line.startswith("501 ")
    (line,) = yield c.cmd("Sekret-Alice-1")  # a password typed on its own line
    assert line.startswith("500 unknown command")
    lines = yield c.cmd("HISTORY")
    assert_no_secret("\n".join(lines))
    entries = history(lines)
    assert all(set(e) == {"id", "ts", "user", "service", "command", "code"} for e in entries)
    assert all(e["user"] == "alice" and e["service"] == "base" for e in entries)
    times = [e["ts"] for e in entries]
    assert times == sorted(times, reverse=True)  # newest first (by time: see below)
    got = [(e["command"].split()[0], e["code"]) for e in entries]
    assert got == [
        ("<unknown>", 500),
        ("HISTORY", 501),
        ("<unknown>", 500),
        ("REGISTER", 201),
        ("LOGIN", 501),
        ("LOGIN", 500),
        ("PING", 200),
        ("LOGIN", 230),
    ]
    assert entries[-1]["command"] == "LOGIN alice ***"
    # An unknown verb may be a secret typed on its own: none of it is recorded.
    assert entries[2]["command"] == entries[0]["command"] == "<unknown>"
    # The refused attempt before login is recorded without a user.
    admin = yield _admin(rt, srv)
    lines = yield admin.cmd("HISTORY user=-")
    anon = history(lines)
    assert [(e["command"], e["code"], e["user"]) for e in anon] == [("LOGIN alice ***", 535, "-")]
    # Nothing secret in the table either.
    rows = yield rt.pool.run(_all_history_rows)
    assert rows and all(isinstance(r, str) for r in rows)
    assert_no_secret("\n".join(rows))


def _all_history_rows(conn):
    import sqlalchemy as sa

    from netshare.storage.schema import history as table

    return [" ".join(str(v) for v in r) for r in conn.execute(sa.select(table))]


@defer.inlineCallbacks
def _admin(rt, srv):
    yield add_account(rt, "boss", "Sekret-Admin-3", "admin")
    c = yield logged_in(srv, "boss", "Sekret-Admin-3")
    return c


@pytest_twisted.inlineCallbacks
def test_history_ownership_delete_and_clear(db_runtime):
    rt = db_runtime
    yield add_account(rt, "alice", "Sekret-Alice-1")
    yield add_account(rt, "bob", "Sekret-Bob-2")
    srv = yield listen(rt, CommandProtocol)
    alice = yield logged_in(srv, "alice", "Sekret-Alice-1")
    bob = yield logged_in(srv, "bob", "Sekret-Bob-2")
    for _ in range(3):
        yield alice.cmd("PING")
    mine = history((yield alice.cmd("HISTORY")))
    assert len(mine) == 4  # LOGIN + 3 PING
    target = mine[0]["id"]
    # A user can neither read nor delete nor clear another's entries.
    assert (yield bob.cmd("HISTORY user=alice")) == [
        "531 only an admin may see other users' history"
    ]
    assert (yield bob.cmd("HISTORY DELETE %d" % target)) == ["531 not your history entry"]
    (line,) = yield bob.cmd("HISTORY CLEAR user=alice")
    assert line.startswith("531 ")
    bobs = history((yield bob.cmd("HISTORY")))
    assert {e["user"] for e in bobs} == {"bob"}
    assert (yield bob.cmd("HISTORY DELETE 999999999")) == ["550 no history entry 999999999"]
    (line,) = yield bob.cmd("HISTORY DELETE x")
    assert line.startswith("501 ")
    for bad in ("limit=0", "limit=1001", "limit=x", "bogus=1", "extra"):
        (line,) = yield bob.cmd("HISTORY " + bad)
        assert line.startswith("501 "), (bad, line)
    assert len(history((yield bob.cmd("HISTORY limit=2")))) == 2
    # The owner may delete their own entry: it leaves their view only.
    assert (yield alice.cmd("HISTORY DELETE %d" % mine[1]["id"])) == ["200 deleted"]
    assert mine[1]["id"] not in [e["id"] for e in history((yield alice.cmd("HISTORY")))]
    assert (yield alice.cmd("HISTORY DELETE %d" % mine[1]["id"])) == [
        "550 no history entry %d" % mine[1]["id"]
    ]
    # An admin may read, delete and clear anyone's, and still sees what was
    # deleted or cleared (nobody erases their own audit trail).
    admin = yield _admin(rt, srv)
    theirs = history((yield admin.cmd("HISTORY user=alice")))
    # Alice's HISTORY DELETE (twice) and HISTORY first, then all of hers.
    assert [e["command"].split()[0] for e in theirs[:4]] == ["HISTORY"] * 4
    assert [e["id"] for e in theirs[4:]] == [e["id"] for e in mine]
    assert (yield admin.cmd("HISTORY DELETE %d" % target)) == ["200 deleted"]
    assert target not in [e["id"] for e in history((yield alice.cmd("HISTORY")))]
    assert target in [e["id"] for e in history((yield admin.cmd("HISTORY user=alice")))]
    everyone = history((yield admin.cmd("HISTORY user=* limit=1000")))
    assert {"alice", "bob", "boss"} <= {e["user"] for e in everyone}
    visible = len(history((yield alice.cmd("HISTORY"))))
    (line,) = yield admin.cmd("HISTORY CLEAR user=alice")
    assert line == "200 %d deleted" % (visible + 1)  # + her HISTORY just now
    assert history((yield alice.cmd("HISTORY")))[1:] == []  # only that HISTORY itself
    kept = history((yield admin.cmd("HISTORY user=alice limit=1000")))
    assert {e["id"] for e in mine} <= {e["id"] for e in kept}
    # A clear is itself recorded, as exactly one new entry.
    before = len(history((yield admin.cmd("HISTORY user=bob limit=1000"))))
    (line,) = yield bob.cmd("HISTORY CLEAR")
    n = int(line.split()[1])
    assert line == "200 %d deleted" % n and n >= 10
    after = history((yield bob.cmd("HISTORY")))
    assert [(e["command"], e["code"]) for e in after] == [("HISTORY CLEAR", 200)]
    # Bob's entries are all still there for the admin, plus his CLEAR and HISTORY.
    assert len(history((yield admin.cmd("HISTORY user=bob limit=1000")))) == before + 2


@pytest_twisted.inlineCallbacks
def test_a_password_typed_as_the_user_name_is_never_recorded(make_runtime, capsys):
    """A password given as the name (alone, swapped with the name, for a
    name that is no account) reaches neither the history, nor the JSON log,
    nor the console; a failed login records a name only when an account has
    it, else C{<unknown user>}."""
    rt = make_runtime(registration="open", max_login_failures=10, login_failure_delay=0)
    yield add_account(rt, "alice", "Sekret-Alice-1")
    srv = yield listen(rt, CommandProtocol)
    c = yield srv.raw()
    assert (yield c.cmd("LOGIN Sekret-Alice-1"))[0].startswith("501 ")  # alone
    assert (yield c.cmd("LOGIN Sekret-Alice-1 alice")) == ["535 bad credentials"]  # swapped
    assert (yield c.cmd("LOGIN SekretTypo4 Sekret-Typo-4")) == ["535 bad credentials"]
    assert (yield c.cmd("LOGIN alice Sekret-Typo-4")) == ["535 bad credentials"]
    assert (yield c.cmd("REGISTER Sekret-Reg-5 carol"))[0].startswith("553 ")  # swapped
    assert (yield c.cmd("REGISTER alice Sekret-Reg-5"))[0].startswith("555 ")
    boss = yield _admin(rt, srv)
    lines = yield boss.cmd("HISTORY user=- limit=20")
    assert_no_secret("\n".join(lines))
    assert "SekretTypo4" not in "\n".join(lines)  # a valid name, but no account's
    assert [(e["command"], e["code"]) for e in history(lines)] == [
        ("REGISTER alice ***", 555),
        ("REGISTER <unknown user> ***", 553),
        ("LOGIN alice ***", 535),
        ("LOGIN <unknown user> ***", 535),
        ("LOGIN <unknown user> ***", 535),
        ("LOGIN ***", 501),
    ]
    yield stop_runtime(rt)
    with open(os.path.join(rt.config.data, "logs", "netshare.jsonl"), encoding="utf-8") as f:
        logged = f.read()
    out = capsys.readouterr()
    for text in (logged, out.out + out.err):
        assert_no_secret(text)
        assert "SekretTypo4" not in text


@pytest_twisted.inlineCallbacks
def test_json_log_is_one_object_per_line_without_passwords(make_runtime):
    rt = make_runtime()
    yield add_account(rt, "alice", "Sekret-Alice-1")
    srv = yield listen(rt, CommandProtocol)
    c = yield srv.raw()
    yield c.cmd("LOGIN alice Sekret-Typo-4")
    yield c.cmd("LOGIN alice Sekret-Alice-1")
    yield c.cmd("REGISTER dave Sekret-Reg-5")
    yield c.cmd('LOGIN "Sekret-Typo-4')
    yield c.cmd("PING password=Sekret-Opt-6")
    yield c.cmd("QUIT")
    yield stop_runtime(rt)  # the JSON log file is closed at the end of the stop
    path = os.path.join(rt.config.data, "logs", "netshare.jsonl")
    with open(path, encoding="utf-8") as f:
        text = f.read()
    assert_no_secret(text)
    events = [json.loads(line) for line in text.splitlines()]
    assert all(isinstance(e, dict) for e in events)
    commands = [(e.get("verb"), e.get("code")) for e in events if "verb" in e and "code" in e]
    assert ("LOGIN", 535) in commands and ("LOGIN", 230) in commands
    assert ("REGISTER", 201) in commands and ("QUIT", 221) in commands
    done = [e for e in events if e.get("verb") == "PING"]
    assert done and {"service", "user", "peer", "duration_ms", "bytes"} <= set(done[0])


@pytest_twisted.inlineCallbacks
def test_history_batched_off_the_reactor_and_not_lost_on_a_clean_stop(db_runtime):
    rt = db_runtime
    import netshare.storage.history as storage_history

    # A flush interval far longer than the test: only the stop writes.
    rt.history.interval = 3600
    writes = []
    real = storage_history.thd_insert_many

    def spy(conn, rows):
        writes.append((threading.current_thread() is threading.main_thread(), len(rows)))
        return real(conn, rows)

    storage_history.thd_insert_many = spy
    try:
        yield add_account(rt, "alice", "Sekret-Alice-1")
        srv = yield listen(rt, CommandProtocol)
        c = yield logged_in(srv, "alice", "Sekret-Alice-1")
        c.send(b"PING\r\n" * 150)
        for _ in range(150):
            assert (yield c.reply()) == ["200 pong"]
        assert writes == []  # recording never wrote on the reply path
        yield stop_runtime(rt)
    finally:
        storage_history.thd_insert_many = real
    assert writes and not any(on_main for on_main, _ in writes)
    assert sum(n for _, n in writes) == 151 and len(writes) <= 2  # LOGIN + 150, batched
    # Read back through a fresh engine: all 150 are there.
    import sqlalchemy as sa

    from netshare.storage.engine import create_engine

    engine = create_engine(rt.harness.db_url, rt.config.data)
    try:
        with engine.connect() as conn:
            n = conn.execute(sa.text("SELECT COUNT(*) FROM history WHERE command = 'PING'"))
            assert n.scalar_one() == 150
    finally:
        engine.dispose()


@pytest_twisted.inlineCallbacks
def test_history_query_is_answered_under_a_continuous_stream_of_records(runtime):
    rt = runtime
    yield add_account(rt, "alice", "Sekret-Alice-1")
    srv = yield listen(rt, CommandProtocol)
    c = yield logged_in(srv, "alice", "Sekret-Alice-1")

    def burst():
        for _ in range(200):
            rt.history.record(int(time.time() * 1000), "load", "loadgen", "-", "PING", 200)

    loop = task.LoopingCall(burst)
    loop.start(0.002)
    try:
        lines = yield c.cmd("HISTORY limit=5", timeout=15)
    finally:
        loop.stop()
    assert lines[-1] == "210 1 items"  # alice's LOGIN; the load is someone else's


# --- the KDF pool --------------------------------------------------------------------


@pytest_twisted.inlineCallbacks
def test_kdf_pool_refuses_beyond_its_bound_at_once():
    pool = KDFPool(threads=1, maxQueued=1)
    try:
        d1 = pool.derive(b"a", b"salt" * 4, 2**14, 8, 1)
        d2 = pool.derive(b"b", b"salt" * 4, 2**14, 8, 1)
        d3 = pool.derive(b"c", b"salt" * 4, 2**14, 8, 1)
        assert d3.called
        failures = []
        d3.addErrback(failures.append)
        assert failures and failures[0].check(RateLimited)
        assert failures[0].value.code == 429
        results = yield defer.gatherResults([d1, d2]).addTimeout(10, reactor())
        assert len(results) == 2 and results[0] != results[1]
        assert pool.pending == 0
    finally:
        pool.stop()


@pytest_twisted.inlineCallbacks
def test_login_gets_429_when_the_kdf_queue_is_full_and_the_reactor_stays_free(
    make_runtime, monkeypatch
):
    rt = make_runtime(kdf_threads=1, kdf_queue=0, login_failure_delay=0.01)
    yield add_account(rt, "alice", "Sekret-Alice-1")
    import netshare.kdf as kdfmod

    gate = threading.Event()
    real = kdfmod.scrypt

    def slow_scrypt(*a, **kw):  # a derivation that takes as long as the test wants
        gate.wait(10)
        return real(*a, **kw)

    monkeypatch.setattr(kdfmod, "scrypt", slow_scrypt)
    srv = yield listen(rt, CommandProtocol)
    a = yield srv.raw()
    b = yield srv.raw()
    p = yield srv.raw()
    a.send(b"LOGIN alice Sekret-Alice-1\r\n")
    yield wait_for(lambda: rt.kdf.pending == 1, what="derivation running")
    assert (yield b.cmd("LOGIN alice Sekret-Alice-1")) == ["429 server busy; try later"]
    assert (yield p.cmd("PING")) == ["200 pong"]  # the reactor is not waiting for it
    gate.set()
    assert (yield a.reply()) == ["230 logged in as alice (user)"]
    assert (yield b.cmd("LOGIN alice Sekret-Alice-1")) == ["230 logged in as alice (user)"]


@pytest_twisted.inlineCallbacks
def test_login_storm_does_not_stall_other_connections(make_runtime):
    """50 connections send wrong passwords at once (real scrypt, N=2**15 so
    each derivation is long enough to matter); a separate connection's PING
    keeps answering.  Generous bounds: the figures are in bench/.  (The
    per-address login penalties are set out of the way: this is about the
    hashing pool, not about who gets to hash.)"""
    rt = make_runtime(
        scrypt_n=2**15,
        login_failure_delay=0.2,
        login_free=1000,
        login_timeout=600,
        kdf_per_source=100,
    )
    yield add_account(rt, "alice", "Sekret-Alice-1")
    srv = yield listen(rt, CommandProtocol)
    pinger = yield srv.raw()
    storm = []
    for _ in range(50):
        storm.append((yield srv.raw()))
    for i, c in enumerate(storm):
        c.send(b"LOGIN %s wrong%d\r\n" % (b"alice" if i % 2 else b"nobody%d" % i, i))
    answers = defer.gatherResults([c.reply(timeout=60) for c in storm])
    yield wait_for(lambda: rt.kdf.pending > 0, what="storm started")
    rtts = []
    while not answers.called:
        t0 = time.monotonic()
        assert (yield pinger.cmd("PING")) == ["200 pong"]
        rtts.append(time.monotonic() - t0)
        yield task.deferLater(reactor(), 0.005, lambda: None)
    replies = yield answers
    assert all(r == ["535 bad credentials"] for r in replies)
    assert len(rtts) >= 5
    rtts.sort()
    assert rtts[len(rtts) // 2] < 0.1 and rtts[-1] < 1.0, rtts


# --- the history writer, driven by hand ------------------------------------------------


class _ManualStore:
    """insert_many returns a Deferred the test fires."""

    def __init__(self):
        self.calls = []
        self.rows = []

    def insert_many(self, rows):
        d = defer.Deferred()
        self.calls.append((list(rows), d))
        return d

    def succeed(self, i=-1):
        rows, d = self.calls[i]
        self.rows.extend(rows)
        d.callback(len(rows))

    def fail(self, i=-1):
        # What the pool raises when the database stays unreachable.
        self.calls[i][1].errback(DatabaseUnavailable("database down"))


def _rec(h, n, start=0):
    for i in range(start, start + n):
        h.record(i, "svc", "u", "peer", "CMD %d" % i, 200)


def test_history_flush_waits_only_for_what_was_recorded_before_it():
    from twisted.internet.task import Clock

    from netshare.services.history import HistoryRecorder

    store, clock = _ManualStore(), Clock()
    h = HistoryRecorder(store, clock, interval=0.2, batch=1000)
    _rec(h, 5)
    assert store.calls == []  # nothing written on the recording path
    clock.advance(0.2)  # the batch timer: one INSERT for all five
    assert [len(r) for r, _ in store.calls] == [5]
    flushed = h.flush()
    _rec(h, 3, 5)  # more keep coming during the write
    store.succeed()
    assert flushed.called  # not held up by the later three
    assert [len(r) for r, _ in store.calls] == [5]
    clock.advance(0.2)  # they go in the next batch
    assert [len(r) for r, _ in store.calls] == [5, 3]
    store.succeed()
    assert [r["command"] for r in store.rows] == ["CMD %d" % i for i in range(8)]
    assert h.flush().called  # nothing pending: at once


def test_history_failed_write_keeps_order_and_retries_and_buffer_is_bounded():
    from twisted.internet.task import Clock

    from netshare.services.history import HistoryRecorder

    store, clock = _ManualStore(), Clock()
    h = HistoryRecorder(store, clock, interval=0.2, batch=4, max_buffered=10)
    _rec(h, 6)
    flushed = h.flush()
    assert [len(r) for r, _ in store.calls] == [4]
    errors = []
    flushed.addErrback(errors.append)
    store.fail()
    assert errors and errors[0].check(DatabaseUnavailable)
    clock.advance(1.0)  # retried by the timer
    assert [r["command"] for r in store.calls[-1][0]] == ["CMD 0", "CMD 1", "CMD 2", "CMD 3"]
    # The database stays slow: a write is in flight while records pour in;
    # memory stays bounded, the oldest waiting ones go, the batch in flight stays.
    pending_flush = h.flush()  # waits for CMD 0..5
    _rec(h, 20, 6)
    assert len(h._pending) + len(h._inflight) == 10 and h.dropped == 16
    assert not pending_flush.called  # CMD 0..3 are still in flight
    store.succeed()
    assert pending_flush.called  # 0..3 written, 4 and 5 dropped
    stop = h.stop()
    while not stop.called:
        store.succeed()
    assert stop.called
    written = [r["command"] for r in store.rows]
    assert written[:4] == ["CMD 0", "CMD 1", "CMD 2", "CMD 3"]
    assert written[4:] == ["CMD %d" % i for i in range(20, 26)]


def test_kdf_is_standard_scrypt_so_existing_hashes_still_verify():
    from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

    from netshare.kdf import scrypt

    for n, r, p, length in ((1024, 8, 1, 32), (2**14, 8, 1, 64), (2**17, 8, 1, 32)):
        salt = os.urandom(16)
        want = Scrypt(salt=salt, length=length, n=n, r=r, p=p).derive(b"pw \xc3\xa9")
        assert scrypt(b"pw \xc3\xa9", salt, n, r, p, length) == want


def test_history_drops_only_a_row_the_database_refuses():
    """A row the database refuses (not an outage) is dropped alone; the rest
    of its batch is written, and the history keeps working."""
    from twisted.internet import defer, task

    from netshare.services.history import HistoryRecorder

    class Store:
        def __init__(self):
            self.rows = []

        def insert_many(self, rows):
            if any(r["command"] == "BAD" for r in rows):
                return defer.fail(ValueError("refused by the database"))
            self.rows.extend(rows)
            return defer.succeed(len(rows))

    store, clock = Store(), task.Clock()
    h = HistoryRecorder(store, clock, interval=0.1)
    for cmd in ("A", "BAD", "C"):
        h.record(1, "svc", "u", "peer", cmd, 200)
    done = []
    h.flush().addCallback(done.append)
    assert done == [None]
    assert [r["command"] for r in store.rows] == ["A", "C"]
    assert h.dropped == 1
    h.record(2, "svc", "u", "peer", "D", 200)
    h.flush()
    assert [r["command"] for r in store.rows] == ["A", "C", "D"]

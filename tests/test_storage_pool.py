"""
L{netshare.storage.pool.DBPool} and the core stores (accounts, history) on
every configured database (SQLite always; PostgreSQL and MariaDB when
NETSHARE_TEST_POSTGRES / NETSHARE_TEST_MYSQL are set), plus the outage test:
the service is cut off from its database through a TCP proxy this test
controls (the shared server keeps running), database work fails with
L{DatabaseUnavailable} (C{451}) within a few seconds, and comes back by
itself when the path is restored.
"""

import os
import select
import socket
import threading
import time

import pytest
import pytest_twisted
import sqlalchemy as sa
from sqlalchemy.engine import make_url
from twisted.internet import defer, reactor, task, threads

from netshare.errors import Conflict, DatabaseUnavailable, NotFound
from netshare.storage import accounts as A
from netshare.storage import history as H
from netshare.storage import migrate, plainsql
from netshare.storage.engine import create_engine
from netshare.storage.pool import DBPool, is_transient
from netshare.storage.schema import accounts as accounts_table
from tests.conftest import ENV, scratch_database
from tests.support import LineConn, ServerProcess, run_cli

NASTY = "'; DROP TABLE accounts;--"


def timed(d, seconds=30):
    return d.addTimeout(seconds, reactor)


def count_accounts(conn):
    return conn.execute(sa.select(sa.func.count()).select_from(accounts_table)).scalar_one()


# -- DBPool.run -------------------------------------------------------------------


@pytest_twisted.inlineCallbacks
def test_run_returns_plain_data(db_pool):
    def fn(conn, a, b=0):
        return {
            "sum": conn.execute(sa.select(sa.literal(a) + sa.literal(b))).scalar_one(),
            "thread": threading.current_thread().name,
        }

    result = yield timed(db_pool.run(fn, 2, b=3))
    assert result["sum"] == 5
    assert result["thread"] != threading.current_thread().name  # not the reactor thread
    assert db_pool.stats()["calls"] == 1


@pytest_twisted.inlineCallbacks
def test_returning_a_result_is_refused(db_pool):
    def leaky(conn):
        return conn.execute(sa.select(sa.literal(1)))

    with pytest.raises(AssertionError, match="plain data"):
        yield timed(db_pool.run(leaky))

    def leaky_row(conn):
        return conn.execute(sa.select(sa.literal(1).label("x"))).first()

    with pytest.raises(AssertionError, match="plain data"):
        yield timed(db_pool.run(leaky_row))
    # the pool goes on working
    assert (yield timed(db_pool.run(lambda conn: 7))) == 7


@pytest_twisted.inlineCallbacks
def test_netshare_error_propagates_and_rolls_back(db_pool):
    def create_then_refuse(conn):
        A.thd_create(conn, "carol", "user", "h")
        assert count_accounts(conn) == 1
        raise NotFound("no such thing")

    with pytest.raises(NotFound, match="no such thing"):
        yield timed(db_pool.run(create_then_refuse))
    assert (yield timed(db_pool.run(count_accounts))) == 0
    assert db_pool.stats()["failures"] == 0  # not a database failure


@pytest_twisted.inlineCallbacks
def test_other_error_propagates_and_rolls_back(db_pool):
    calls = []

    def buggy(conn):
        calls.append(1)
        A.thd_create(conn, "dave", "user", "h")
        raise ValueError("a bug")

    with pytest.raises(ValueError, match="a bug"):
        yield timed(db_pool.run(buggy))
    assert calls == [1]  # a bug is not retried
    assert (yield timed(db_pool.run(count_accounts))) == 0


def _operational_error():
    return sa.exc.OperationalError("SELECT 1", {}, Exception("connection refused (simulated)"))


@pytest_twisted.inlineCallbacks
def test_transient_error_is_retried(db_pool):
    attempts = []

    def flaky(conn, name):
        attempts.append(name)
        A.thd_create(conn, name, "user", "h")  # written, then rolled back on the first try
        if len(attempts) == 1:
            raise _operational_error()
        return count_accounts(conn)

    assert is_transient(_operational_error())
    assert (yield timed(db_pool.run(flaky, "erin"))) == 1
    assert attempts == ["erin", "erin"]
    assert (yield timed(db_pool.run(count_accounts))) == 1


@pytest_twisted.inlineCallbacks
def test_persistent_transient_error_becomes_database_unavailable(db_pool):
    attempts = []

    def down(conn):
        attempts.append(1)
        raise _operational_error()

    with pytest.raises(DatabaseUnavailable) as e:
        yield timed(db_pool.run(down))
    assert e.value.code == 451
    assert len(attempts) == len(db_pool.retry_delays) + 1
    assert db_pool.stats()["failures"] == 1
    assert (yield timed(db_pool.run(lambda conn: "back"))) == "back"


@pytest_twisted.inlineCallbacks
def test_stop_waits_for_inflight_calls(db_pool):
    started, release = defer.Deferred(), threading.Event()
    order = []

    def slow(conn):
        reactor.callFromThread(started.callback, None)
        assert release.wait(20), "never released"
        order.append("call finished")
        return "done"

    call = db_pool.run(slow)
    call.addCallback(lambda r: order.append("call delivered") or r)
    yield timed(started)
    assert db_pool.stats()["active"] == 1
    stopping = db_pool.stop()
    stopping.addCallback(lambda _: order.append("stopped"))
    # refused at once while stopping
    with pytest.raises(DatabaseUnavailable):
        yield db_pool.run(lambda conn: 1)
    yield task.deferLater(reactor, 0.05, lambda: None)  # give stop() a chance to be wrong
    assert not stopping.called
    release.set()
    assert (yield timed(call)) == "done"
    yield timed(stopping)
    assert order == ["call finished", "call delivered", "stopped"]
    assert not db_pool.running
    with pytest.raises(DatabaseUnavailable, match="stopped"):
        yield db_pool.run(lambda conn: 1)


@pytest_twisted.inlineCallbacks
def test_write_returns_plain_data_and_rolls_back_on_error(db_pool):
    assert (yield timed(db_pool.write(A.thd_create, "heidi", "user", "h"))).name == "heidi"

    def create_then_refuse(conn):
        A.thd_create(conn, "ivan", "user", "h")
        raise Conflict("refused")

    with pytest.raises(Conflict):
        yield timed(db_pool.write(create_then_refuse))
    assert (yield timed(db_pool.run(count_accounts))) == 1
    assert db_pool.stats()["in_doubt"] == 0


@pytest_twisted.inlineCallbacks
def test_writes_arriving_during_a_commit_share_the_next_one(db_pool):
    """Group commit without a timer: a lone write starts at once; what
    arrives while it is in flight is committed together, as soon as it
    ends; a refused write in a group is rolled back alone."""
    started, release = defer.Deferred(), threading.Event()

    def first(conn):
        A.thd_create(conn, "first", "user", "h")
        reactor.callFromThread(started.callback, None)
        assert release.wait(20), "never released"
        return "first"

    def refuse(conn):
        A.thd_create(conn, "refused", "user", "h")  # rolled back with its savepoint
        raise Conflict("refused")

    lone = db_pool.write(first)
    yield timed(started)  # in flight, before anything else was asked for
    assert db_pool.stats()["groups"] == 1
    rest = [db_pool.write(A.thd_create, "u%d" % i, "user", "h") for i in range(10)]
    refused = db_pool.write(refuse)
    rest += [db_pool.write(A.thd_create, "v%d" % i, "user", "h") for i in range(5)]
    assert db_pool.stats()["groups"] == 1 and db_pool.stats()["queued"] >= 16
    release.set()
    assert (yield timed(lone)) == "first"
    names = [a.name for a in (yield timed(defer.gatherResults(rest)))]
    assert names == ["u%d" % i for i in range(10)] + ["v%d" % i for i in range(5)]
    with pytest.raises(Conflict):
        yield timed(refused)
    stats = db_pool.stats()
    assert (stats["groups"], stats["writes"]) == (2, 17)
    assert (yield timed(db_pool.run(count_accounts))) == 16  # all but the refused one
    # Idle again: the next write is a group of its own, at once.
    yield timed(db_pool.write(A.thd_create, "later", "user", "h"))
    assert db_pool.stats()["groups"] == 3


@pytest_twisted.inlineCallbacks
def test_a_failing_write_in_a_group_fails_alone(db_pool):
    """A write that fails with a database error of its own (here a missing
    table) is rolled back alone and answered alone; the group commits."""
    started, release = defer.Deferred(), threading.Event()

    def first(conn):
        reactor.callFromThread(started.callback, None)
        assert release.wait(20), "never released"
        return 0

    def poisoned(conn):
        A.thd_create(conn, "poisoner", "user", "h")
        conn.exec_driver_sql("SELECT * FROM no_such_table_here")

    lone = db_pool.write(first)
    yield timed(started)
    good = [db_pool.write(A.thd_create, "g%d" % i, "user", "h") for i in range(4)]
    bad = db_pool.write(poisoned)
    good.append(db_pool.write(A.thd_create, "g4", "user", "h"))
    release.set()
    yield timed(lone)
    assert len((yield timed(defer.gatherResults(good)))) == 5
    with pytest.raises(sa.exc.DBAPIError):
        yield timed(bad)
    assert (yield timed(db_pool.run(count_accounts))) == 5  # not the poisoner
    assert db_pool.stats()["groups"] == 2


@pytest_twisted.inlineCallbacks
def test_writes_made_by_callbacks_join_the_next_group(db_pool):
    """One group in flight at a time, also when the callers of a group
    write again from their callbacks."""
    lock, active, most = threading.Lock(), [0], [0]

    def tracked(conn, name):
        with lock:
            active[0] += 1
            most[0] = max(most[0], active[0])
        try:
            time.sleep(0.01)
            return A.thd_create(conn, name, "user", "h").name
        finally:
            with lock:
                active[0] -= 1

    followers = []

    def follow(name):
        followers.append(db_pool.write(tracked, name + "x"))
        return name

    firsts = [db_pool.write(tracked, "w%d" % i).addCallback(follow) for i in range(6)]
    assert len((yield timed(defer.gatherResults(firsts)))) == 6
    assert len((yield timed(defer.gatherResults(followers)))) == 6
    assert most[0] == 1  # never two groups' writes at once
    assert (yield timed(db_pool.run(count_accounts))) == 12


@pytest_twisted.inlineCallbacks
def test_stop_commits_the_writes_already_accepted(db_pool):
    started, release = defer.Deferred(), threading.Event()

    def first(conn):
        reactor.callFromThread(started.callback, None)
        assert release.wait(20), "never released"
        return 0

    lone = db_pool.write(first)
    yield timed(started)
    waiting = [db_pool.write(A.thd_create, "w%d" % i, "user", "h") for i in range(3)]
    stopping = db_pool.stop()
    with pytest.raises(DatabaseUnavailable):  # new writes are refused while stopping
        yield db_pool.write(A.thd_create, "late", "user", "h")
    release.set()
    yield timed(lone)
    assert [a.name for a in (yield timed(defer.gatherResults(waiting)))] == ["w0", "w1", "w2"]
    yield timed(stopping)
    with db_pool.engine.connect() as conn:
        assert count_accounts(conn) == 3


@pytest_twisted.inlineCallbacks
def test_a_worker_keeps_its_connection_until_a_call_fails(db_engine):
    """A worker's connection serves call after call (reads, writes, and a
    refusal, which rolls back cleanly); a call that fails otherwise
    discards it, so the next one starts on a fresh connection; stop()
    returns every kept connection to the engine's pool."""
    pool = DBPool(db_engine, threads=1, retry_delays=(0.05,))
    pool.start()
    try:

        def which(conn):
            return id(conn)

        def refuse(conn):
            raise NotFound("no such thing")

        def buggy(conn):
            raise ValueError("a bug")

        first = yield timed(pool.run(which))
        assert pool.kept == 1
        assert (yield timed(pool.write(which))) == first
        with pytest.raises(NotFound):
            yield timed(pool.run(refuse))
        assert (yield timed(pool.run(which))) == first
        assert pool.kept == 1 and db_engine.pool.checkedout() == 1
        with pytest.raises(ValueError):
            yield timed(pool.run(buggy))
        assert pool.kept == 0 and db_engine.pool.checkedout() == 0
        yield timed(pool.run(which))
        assert pool.kept == 1
        with pytest.raises(ValueError):
            yield timed(pool.write(buggy))
        assert pool.kept == 0
        yield timed(pool.run(which))
        assert pool.kept == 1
    finally:
        yield timed(pool.stop())
    assert pool.kept == 0 and db_engine.pool.checkedout() == 0


def test_worker_threads_follow_the_engine():
    """One thread for SQLite (one writer); the connection pool's size for a
    server (no thread waits for a connection)."""
    from netshare.storage.engine import worker_threads

    engine = create_engine("sqlite://")
    try:
        assert worker_threads(engine) == 1
        assert DBPool(engine).threads == 1
        assert DBPool(engine, threads=3).threads == 3
    finally:
        engine.dispose()
    server = create_engine("postgresql+psycopg://u@127.0.0.1:1/x", pool_size=4)
    assert worker_threads(server) == 4  # no connection is made


@pytest_twisted.inlineCallbacks
def test_many_concurrent_calls(db_pool):
    ds = [db_pool.run(A.thd_create, "user%d" % i, "user", "h") for i in range(20)]
    yield timed(defer.gatherResults(ds, consumeErrors=True))
    assert (yield timed(db_pool.run(_count_accounts))) == 20
    stats = db_pool.stats()
    assert stats["active"] == 0 and stats["queued"] == 0 and stats["calls"] == 21


# -- the accounts store --------------------------------------------------------------


@pytest_twisted.inlineCallbacks
def test_accounts_store(db_pool):
    store = A.AccountStore(db_pool)
    created = yield timed(store.create("Alice", "admin", "scrypt$1$2$3$c2FsdA==$a2V5"))
    assert created.name == "Alice" and created.is_admin and created.created_ms > 0
    assert created.to_wire()["user"] == "Alice"
    assert created.to_wire()["created"].endswith("Z")
    got = yield timed(store.get("alice"))  # names are case-insensitive
    assert got == created
    assert (yield timed(store.get("nobody"))) is None
    with pytest.raises(Conflict):
        yield timed(store.create("ALICE", "user", "h"))
    yield timed(store.create("bob", "user", "h1"))
    yield timed(store.set_password("BOB", "h2"))
    bob = yield timed(store.get("bob"))
    assert (bob.password_hash, bob.role) == ("h2", "user")
    for bad in (store.set_password("zed", "h"), store.remove("zed")):
        with pytest.raises(NotFound):
            yield timed(bad)
    names = [a.name for a in (yield timed(store.list()))]
    assert names == ["Alice", "bob"]
    yield timed(store.remove("ALICE"))
    assert [a.name for a in (yield timed(store.list()))] == ["bob"]


@pytest_twisted.inlineCallbacks
def test_accounts_conflict_keeps_the_transaction_usable(db_pool):
    def fn(conn):
        A.thd_create(conn, "frank", "user", "h")
        try:
            A.thd_create(conn, "Frank", "user", "h")
        except Conflict:
            pass
        A.thd_create(conn, "grace", "user", "h")
        return _count_accounts(conn)

    assert (yield timed(db_pool.run(fn))) == 2


@pytest_twisted.inlineCallbacks
def test_accounts_text_is_stored_literally(db_pool):
    # The store binds every value; name rules live in netshare.services.accounts.
    names = [NASTY, "Zoë", "O'Brien", "100%_x", "a\\b"]
    for name in names:
        yield timed(db_pool.run(A.thd_create, name, "user", "hash'--"))
    for name in names:
        got = yield timed(db_pool.run(A.thd_get, name))
        assert got is not None and got.name == name and got.password_hash == "hash'--"
    assert (yield timed(db_pool.run(A.thd_get, "100%_"))) is None  # no LIKE anywhere
    assert (yield timed(db_pool.run(_count_accounts))) == len(names)
    assert sorted(a.name for a in (yield timed(db_pool.run(A.thd_list)))) == sorted(names)
    tables = yield timed(db_pool.run(lambda conn: sorted(sa.inspect(conn).get_table_names())))
    assert "accounts" in tables and "history" in tables


def _count_accounts(conn):
    return len(A.thd_list(conn))


# -- the history store ------------------------------------------------------------


def _row(i, user, command="PING", code=200, service="files", account_id=None):
    return H.journal_row(
        (1_700_000_000_000 + i) * 1000,
        1_700_000_000_000 + i,
        service,
        user,
        "127.0.0.1:%d" % (40000 + i),
        command,
        code,
        account_id,
    )


@pytest_twisted.inlineCallbacks
def test_history_store(db_pool):
    store = H.HistoryStore(db_pool)
    ann, bob = 11, 12
    rows = [
        _row(0, "ann", account_id=ann),
        _row(1, None, "LOGIN ann ***", 535),
        _row(2, "bob", account_id=bob),
        _row(3, "ann", "HISTORY", 210, "ttweet", ann),
        _row(4, None),
    ]
    # Written out of order (a write's own entry goes before the batch): the
    # views still come back in the order the entries were made.
    assert (yield timed(store.insert_many(rows[2:]))) == 3
    assert (yield timed(store.insert_many(rows[:2]))) == 2
    assert (yield timed(store.insert_many([]))) == 0
    everything = yield timed(store.list(100))
    assert [e.command for e in everything] == [r["command"] for r in reversed(rows)]
    own = yield timed(store.list(100, own=ann))
    assert [(e.command, e.code, e.service) for e in own] == [
        ("HISTORY", 210, "ttweet"),
        ("PING", 200, "files"),
    ]
    assert [e.command for e in (yield timed(store.list(100, user="ann")))] == ["HISTORY", "PING"]
    assert len((yield timed(store.list(1, own=ann)))) == 1
    anon = yield timed(store.list(100, anonymous=True))
    assert [e.user for e in anon] == [None, None]
    wire = anon[-1].to_wire()
    assert wire == {
        "id": anon[-1].id,
        "ts": "2023-11-14T22:13:20.001Z",
        "user": "-",
        "service": "files",
        "command": "LOGIN ann ***",
        "code": 535,
    }
    entry, owner, hidden = yield timed(store.get(own[0].id))
    assert (entry, owner, hidden) == (own[0], ann, False)
    assert (yield timed(store.get(max(e.id for e in everything) + 1000))) is None
    # Hiding takes entries out of their owner's view, never out of the table.
    assert (yield timed(store.hide(own[0].id))) == 1
    assert [e.command for e in (yield timed(store.list(100, own=ann)))] == ["PING"]
    assert (yield timed(store.get(own[0].id)))[2] is True
    assert (yield timed(store.hide_all(own=ann))) == 1
    assert (yield timed(store.hide_all(own=ann))) == 0
    assert (yield timed(store.list(100, own=ann))) == []
    assert len((yield timed(store.list(100, user="ann")))) == 2  # an admin's view
    assert len((yield timed(store.list(100)))) == 5
    # Only the retention period deletes.
    assert (yield timed(store.purge(1_700_000_000_000 + 3))) == 3
    assert [e.command for e in (yield timed(store.list(100)))] == [
        rows[4]["command"],
        rows[3]["command"],
    ]


@pytest_twisted.inlineCallbacks
def test_a_journaled_write_stores_its_entry_with_it(db_pool):
    """The history entry of a write goes in the write's own transaction:
    there when the write committed, not there when it failed."""
    store = A.AccountStore(db_pool)
    yield timed(store.create("judy", "user", "h", journal=_row(0, "admin", "ADD judy", 201)))
    with pytest.raises(Conflict):
        yield timed(store.create("JUDY", "user", "h", journal=_row(1, "admin", "ADD JUDY", 201)))
    entries = yield timed(db_pool.run(H.thd_list, 10))
    assert [(e.command, e.code) for e in entries] == [("ADD judy", 201)]
    assert H.journaled(A.thd_create, None) is A.thd_create
    assert H.journaled(A.thd_create, _row(2, "admin")).__name__ == "thd_create"


@pytest_twisted.inlineCallbacks
def test_history_text_is_stored_literally(db_pool):
    commands = ['TWEET "héllo wörld ✓ 🐍" #a', NASTY, "LIST 100%_", "GET 'a\"b'", "x" * 5000]
    yield timed(
        db_pool.run(H.thd_insert_many, [_row(i, NASTY[:32], c) for i, c in enumerate(commands)])
    )
    got = yield timed(db_pool.run(H.thd_list, 100, user=NASTY[:32]))
    assert [e.command for e in reversed(got)] == commands
    assert all(e.user == NASTY[:32] for e in got)
    assert (yield timed(db_pool.run(H.thd_list, 100, user="'"))) == []
    assert (yield timed(db_pool.run(H.thd_hide_all, user=NASTY[:32]))) == len(commands)


@pytest_twisted.inlineCallbacks
def test_a_large_history_batch_keeps_every_column(db_pool):
    """A batch bigger than one statement's chunk (SQLite inserts many rows a
    statement) stores every row whole, in order: NULL user and account,
    large numbers, quotes and backslashes, text beyond ASCII."""
    n = plainsql._SQLITE_VARIABLES // len(H._COLUMNS) * 2 + 3
    rows = [
        _row(
            i,
            None if i % 3 == 0 else "u%d" % (i % 7),
            'TWEET "%d \\ \\n \t é 🐍"' % i,
            200 + i % 300,
            ("files", "ttweet", "personnel")[i % 3],
            None if i % 3 == 0 else 2**40 + i,
        )
        for i in range(n)
    ]
    assert (yield timed(db_pool.run(H.thd_insert_many, rows))) == n
    got = list(reversed((yield timed(db_pool.run(H.thd_list, n + 10)))))
    assert len(got) == n
    assert [(e.command, e.code, e.service, e.user) for e in got] == [
        (r["command"], r["code"], r["service"], r["user"]) for r in rows
    ]
    for r in (rows[0], rows[-1]):
        entry, owner, hidden = yield timed(
            db_pool.run(H.thd_get, next(e.id for e in got if e.command == r["command"]))
        )
        assert (owner, hidden) == (r["account_id"], False)


# -- the outage test: a TCP proxy between netshare and the database ------------------


class TcpProxy:
    """
    A loopback TCP proxy in threads: C{port} forwards to C{target}.
    L{cut} closes every proxied connection and stops listening (connections
    are refused); L{restore} listens on the same port again.
    """

    def __init__(self, target_host, target_port):
        self.target = (target_host, target_port)
        self.port = 0
        self._lock = threading.Lock()
        self._socks = set()
        self._threads = []
        self._listener = None
        self._stop = None
        self.accepted = 0
        self._listen()

    def _listen(self):
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", self.port))
        s.listen(64)
        self.port = s.getsockname()[1]
        self._listener, self._stop = s, threading.Event()
        self._spawn(self._accept, s, self._stop)

    def _spawn(self, fn, *args):
        t = threading.Thread(target=fn, args=args, daemon=True, name="test-proxy")
        t.start()
        self._threads.append(t)

    def _accept(self, listener, stop):
        while not stop.is_set():
            ready, _, _ = select.select([listener], [], [], 0.1)
            if not ready or stop.is_set():
                continue
            try:
                client, _ = listener.accept()
            except OSError:
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            with self._lock:
                if stop.is_set():
                    client.close()
                    upstream.close()
                    continue
                self._socks.update((client, upstream))
                self.accepted += 1
            self._spawn(self._pump, client, upstream)

    def _pump(self, a, b):
        try:
            while True:
                ready, _, _ = select.select([a, b], [], [], 0.5)
                for s in ready:
                    data = s.recv(65536)
                    if not data:
                        return
                    (b if s is a else a).sendall(data)
        except (OSError, ValueError):
            return
        finally:
            with self._lock:
                for s in (a, b):
                    self._socks.discard(s)
                    s.close()

    def cut(self):
        self._stop.set()
        self._listener.close()
        with self._lock:
            socks = list(self._socks)
        for s in socks:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self._join()

    def restore(self):
        self._listen()

    def _join(self):
        for t in self._threads:
            t.join(10)
        alive = [t for t in self._threads if t.is_alive()]
        self._threads = alive
        assert not alive, "proxy threads did not stop"

    def close(self):
        if not self._stop.is_set():
            self.cut()


OUTAGE_KINDS = [k for k in ("postgres", "mysql") if os.environ.get(ENV[k])]


@pytest.fixture(
    params=OUTAGE_KINDS
    or [
        pytest.param(
            None,
            marks=pytest.mark.skip(reason="needs NETSHARE_TEST_POSTGRES or NETSHARE_TEST_MYSQL"),
        )
    ]
)
def proxied(request):
    """(direct URL of a private database, URL of the same through a proxy, proxy)."""
    with scratch_database(os.environ[ENV[request.param]]) as direct:
        u = make_url(direct)
        proxy = TcpProxy(u.host or "127.0.0.1", u.port or (5432 if "postgres" in direct else 3306))
        try:
            yield (
                direct,
                u.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False),
                proxy,
            )
        finally:
            proxy.close()


def _deferred_elapsed(d):
    start = time.monotonic()
    d.addBoth(lambda r: (r, time.monotonic() - start))
    return d


@pytest_twisted.inlineCallbacks
def test_database_outage_fails_fast_and_recovers(proxied):
    direct, via_proxy, proxy = proxied
    engine = create_engine(via_proxy)
    pool = DBPool(engine)  # production retry delays
    pool.start()
    try:

        def select_one(conn):
            return conn.execute(sa.text("SELECT 1")).scalar_one()

        assert (yield timed(pool.run(select_one))) == 1
        # several pooled connections, all through the proxy
        assert (yield timed(defer.gatherResults([pool.run(select_one) for _ in range(4)]))) == [
            1
        ] * 4
        assert proxy.accepted >= 1

        yield threads.deferToThread(proxy.cut)
        failure, elapsed = yield timed(_deferred_elapsed(pool.run(select_one)))
        print("\n%s: database work failed %.2f s after the cut" % (engine.dialect.name, elapsed))
        assert isinstance(failure.value, DatabaseUnavailable), failure
        assert failure.value.code == 451
        assert elapsed < 10
        # still down: still a fast, clear failure
        failure, elapsed2 = yield timed(_deferred_elapsed(pool.run(select_one)))
        assert isinstance(failure.value, DatabaseUnavailable) and elapsed2 < 10

        before = proxy.accepted
        proxy.restore()
        result, elapsed3 = yield timed(_deferred_elapsed(pool.run(select_one)))
        print(
            "%s: first call after the path came back: %r in %.2f s"
            % (engine.dialect.name, result, elapsed3)
        )
        assert result == 1
        assert proxy.accepted > before  # a new connection through the restored path
        assert pool.engine is engine and pool.running  # nothing was rebuilt
    finally:
        yield timed(pool.stop())


def test_outage_through_the_protocol(proxied, tmp_path):
    """A real server on the proxy: 451 during the cut, the session survives,
    HISTORY works again once the path is back, no restart."""
    direct, via_proxy, proxy = proxied
    data = tmp_path / "data"
    r = run_cli("init", "--data", str(data), "--db", direct, "--admin-password", "adminpw")
    assert r.returncode == 0, r.stderr
    server = ServerProcess(
        data,
        db=via_proxy,
        init=False,
        extra_args=["--history-flush", "0.05", "--shutdown-timeout", "3"],
    )
    server.start()
    conn = None
    try:
        conn = LineConn(server.ports["personnel"], timeout=20)
        assert conn.readline().startswith("220 ")
        assert conn.cmd("LOGIN admin adminpw")[0].startswith("230 ")
        listing = conn.cmd("HISTORY")
        assert listing[-1].startswith("210 ") and "LOGIN admin ***" in listing[0]

        proxy.cut()
        start = time.monotonic()
        reply = conn.cmd("HISTORY")
        elapsed = time.monotonic() - start
        print("\nHISTORY during the cut: %r after %.2f s" % (reply, elapsed))
        assert reply[0].startswith("451 "), reply
        assert elapsed < 10
        assert conn.cmd("PING") == ["200 pong"]
        assert conn.cmd("WHOAMI") == ["200 admin admin"]

        proxy.restore()
        start = time.monotonic()
        listing = conn.cmd("HISTORY")
        print(
            "HISTORY after the restore: %d lines in %.2f s"
            % (len(listing), time.monotonic() - start)
        )
        assert listing[-1].startswith("210 "), listing
        # the commands answered during the cut were kept and written later
        commands = [line for line in listing if '"command":"PING"' in line]
        assert commands, listing
        assert conn.cmd("QUIT") == ["221 bye"]
    finally:
        if conn is not None:
            conn.close()
        server.terminate()
        server.kill()
    # (the exit status after SIGTERM is tested in test_e2e_service.py)
    assert "netshare stopped" in server.output()


# -- a full disk ------------------------------------------------------------------------


def test_plain_sql_errors_are_wrapped_as_sqlalchemy_wraps_them(db_engine):
    """The statements run on the DB-API cursor (L{plainsql.execute}) fail
    with SQLAlchemy's exception types, C{.orig} and all, and without their
    parameters in the message (user data); a savepoint rolled back after
    one leaves the transaction usable, as through Core."""
    columns = ("name", "name_key", "password_hash", "role", "created_ms")
    sql = plainsql.insert_sql
    with db_engine.begin() as conn:
        insert = sql(conn, accounts_table, columns)
        secret = "s3cret-hash-value"
        plainsql.run(conn, insert, ("dup", "dup", secret, "user", 1))
        plainsql.run(conn, "SAVEPOINT t")
        with pytest.raises(sa.exc.IntegrityError) as caught:
            plainsql.run(conn, insert, ("dup", "dup", secret, "user", 2))
        assert isinstance(caught.value.orig, conn.dialect.loaded_dbapi.IntegrityError)
        assert not caught.value.connection_invalidated
        assert secret not in str(caught.value)
        assert "INSERT INTO" in str(caught.value)
        plainsql.run(conn, "ROLLBACK TO SAVEPOINT t")
        with pytest.raises(sa.exc.DBAPIError):
            plainsql.run(conn, "SELECT no_such_column FROM accounts")
        plainsql.run(conn, "ROLLBACK TO SAVEPOINT t")
        plainsql.run(conn, insert, ("other", "other", secret, "user", 3))
        assert plainsql.fetch_column(conn, "SELECT name FROM accounts ORDER BY name") == [
            "dup",
            "other",
        ]


def test_a_plain_statement_on_a_lost_connection_invalidates_it(proxied):
    """A statement whose server connection is gone fails as a transient,
    invalidated-connection error (the pool retries it on a fresh one), and
    the pool does not hand the dead connection out again."""
    direct, via_proxy, proxy = proxied
    engine = create_engine(via_proxy)
    try:
        with engine.connect() as conn:
            conn.begin()
            assert plainsql.fetch_column(conn, "SELECT 1") == [1]
            proxy.cut()
            with pytest.raises(sa.exc.DBAPIError) as caught:
                plainsql.fetch_column(conn, "SELECT 2")
            assert caught.value.connection_invalidated
            assert is_transient(caught.value)
            assert conn.invalidated
        proxy.restore()
        with engine.connect() as conn:
            assert plainsql.fetch_column(conn, "SELECT 3") == [3]
    finally:
        engine.dispose()


@pytest_twisted.inlineCallbacks
def test_a_full_sqlite_disk_is_452_at_once_not_an_outage(tmp_path):
    """SQLite's SQLITE_FULL (here from a page limit, as a full file system
    gives it) is C{452 insufficient storage} on the first attempt: no
    retries that stall the caller, and reads keep working."""
    from sqlalchemy import event

    from netshare.errors import InsufficientStorage

    engine = create_engine("sqlite:///" + str(tmp_path / "full.db"))
    migrate.upgrade(engine)

    @event.listens_for(engine, "connect")
    def small(dbapi_conn, record):
        dbapi_conn.execute("PRAGMA max_page_count = 64")

    engine.dispose()
    pool = DBPool(engine, retry_delays=(0.5, 0.5, 0.5))
    pool.start()
    try:
        rows = [_row(i, "ann", "x" * 2000) for i in range(200)]
        with pytest.raises(InsufficientStorage) as e:
            yield timed(pool.write(H.thd_insert_many, rows))
        assert e.value.code == 452
        assert pool.failures == 0  # not counted as an outage, not retried
        assert (yield timed(pool.run(H.thd_list, 10))) == []  # reads still answer
    finally:
        yield pool.stop()
        engine.dispose()


def test_the_sqlite_files_are_private(tmp_path):
    """netshare.db and its -wal/-shm files: readable by their owner only."""
    import stat

    path = tmp_path / "netshare.db"
    path.touch(mode=0o644)
    os.chmod(path, 0o644)
    engine = create_engine("sqlite:///" + str(path))
    try:
        migrate.upgrade(engine)
        with engine.begin() as conn:
            conn.exec_driver_sql("CREATE TABLE t (a int)")
        with engine.connect() as conn:  # while open, the WAL files exist
            conn.exec_driver_sql("SELECT * FROM t").all()
            for suffix in ("", "-wal", "-shm"):
                mode = stat.S_IMODE(os.stat(str(path) + suffix).st_mode)
                assert mode == 0o600, (suffix, oct(mode))
    finally:
        engine.dispose()

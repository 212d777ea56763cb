"""
The personnel wire protocol (docs/protocol.md section 4) in-process: the real
factory, accounts, history and database pool behind a loopback TCP port,
spoken to with the real client library.  The tests that touch the database
run on SQLite, PostgreSQL and MariaDB (the C{db_pool} fixture).

Also here: the sync feed's backpressure through a real socket whose reader
stops reading, and the L{SyncClient} of C{netshare-personnel sync} against
the in-process server (batches, acknowledgements, reconnect).
"""

import json
import random

import pytest
import pytest_twisted
from twisted.internet import defer, reactor, task
from twisted.internet.testing import StringTransport

from netshare import config as configmod
from netshare.clients.personnel_sync import BadPush, SyncClient, SyncSession, parse_pushes
from netshare.clients.protocol import ClientProtocol, connect, login, quote
from netshare.clients.syncdb import LocalStore
from netshare.kdf import KDFPool
from netshare.service import Runtime, make_factory
from netshare.services.accounts import AccountService
from netshare.services.history import HistoryRecorder
from netshare.services.personnel.syncfeed import SyncFeed
from netshare.storage.accounts import AccountStore
from netshare.storage.engine import create_engine
from netshare.storage.history import HistoryStore
from netshare.storage.pool import DBPool
from netshare.storage.schema import metadata

TIMEOUT = 20
NASTY = [
    "'; DROP TABLE personnel;--",
    "100%",
    "under_score",
    "back\\slash",
    '"quoted"',
    "Zoë Ünïcødé 😀",
]
ADMIN_VERBS = [
    ("ADD", "ADD ssn=9 name=A surname=B"),
    ("UPDATE", "UPDATE p1 job=x"),
    ("DELETE", "DELETE p1"),
    ("CLIENTS", "CLIENTS"),
    ("MESSAGES", "MESSAGES"),
    ("SEND", "SEND * *"),
    ("REMOVE", "REMOVE * *"),
]


# -- an in-process server ---------------------------------------------------------


class Server:
    """The personnel factory on a loopback port, with every client it opened."""

    def __init__(self, pool, tmp_path, **settings):
        settings.setdefault("scrypt_n", 1024)
        self.config = configmod.defaults(data=str(tmp_path), **settings)
        self.kdf = KDFPool(1, 16, reactor=reactor)
        self.kdf.start()
        self.runtime = Runtime(
            config=self.config,
            reactor=reactor,
            pool=pool,
            kdf=self.kdf,
            accounts=AccountService(AccountStore(pool), self.kdf, 1024, 8, 1),
            history=HistoryRecorder(HistoryStore(pool), reactor, 0.05),
        )
        self.factory = make_factory(self.runtime, "personnel")
        self.app = self.factory.app
        self.port = reactor.listenTCP(0, self.factory, interface="127.0.0.1")
        self.clients = []

    @defer.inlineCallbacks
    def setup_accounts(self):
        yield self.runtime.accounts.add("admin", "adminpw", "admin")
        yield self.runtime.accounts.add("alice", "alicepw", "user")
        yield self.runtime.accounts.add("bob", "bobpw", "user")

    @defer.inlineCallbacks
    def client(self, user=None):
        proto = yield connect("127.0.0.1", self.port.getHost().port, reactor=reactor)
        self.clients.append(proto)
        if user is not None:
            yield login(proto, user, user + "pw")
        return proto

    @defer.inlineCallbacks
    def close(self):
        for proto in self.clients:
            if proto.transport.connected:
                proto.transport.abortConnection()
        for p in list(self.factory.connections):
            p.transport.abortConnection()
        yield self.port.stopListening()
        waits = [p.closed for p in self.clients] + [p.lost for p in self.factory.connections]
        yield defer.DeferredList(waits).addTimeout(TIMEOUT, reactor)
        self.app.stop()
        yield self.runtime.history.stop()
        self.kdf.stop()


@pytest.fixture
def server(db_pool, tmp_path):
    srv = Server(db_pool, tmp_path)
    pytest_twisted.blockon(srv.setup_accounts())
    yield srv
    pytest_twisted.blockon(srv.close())


@pytest.fixture
def sqlite_pool(tmp_path):
    engine = create_engine("sqlite:///" + str(tmp_path / "server.db"))
    metadata.create_all(engine)
    pool = DBPool(engine, retry_delays=(0.05,))
    pool.start()
    yield pool
    pytest_twisted.blockon(pool.stop())


@defer.inlineCallbacks
def sqlite_server(pool, tmp_path, **settings):
    srv = Server(pool, tmp_path, **settings)
    try:
        yield srv.setup_accounts()
    except BaseException:
        yield srv.close()
        raise
    return srv


def cmd(proto, *words):
    return proto.command(quote(*words)).addTimeout(TIMEOUT, reactor)


def until(predicate, timeout=TIMEOUT, interval=0.01):
    """A Deferred firing once C{predicate()} is true (checked every
    C{interval} s), failing after C{timeout} s."""

    @defer.inlineCallbacks
    def poll():
        waited = 0.0
        while not predicate():
            if waited > timeout:
                raise AssertionError("condition not met within %s s" % (timeout,))
            yield task.deferLater(reactor, interval, lambda: None)
            waited += interval

    return poll()


class Pushes:
    """Collects the 61x pushes of one client connection."""

    def __init__(self, proto):
        self.items = []
        proto.onPush = self.onPush

    def onPush(self, code, text):
        seq, action, payload = text.split(" ", 2)
        self.items.append((code, int(seq), action, json.loads(payload)))

    def seqs(self):
        return [i[1] for i in self.items]

    def wait(self, n):
        return until(lambda: len(self.items) >= n)


@defer.inlineCallbacks
def add_people(admin, n, prefix="p"):
    replies = yield defer.gatherResults(
        [
            cmd(admin, "ADD", "ssn=%s%d" % (prefix, i), "name=N%d" % i, "surname=S")
            for i in range(1, n + 1)
        ]
    )
    assert {r.code for r in replies} == {201}


# -- roster commands --------------------------------------------------------------


@pytest_twisted.inlineCallbacks
def test_roster_commands_and_literal_text(server):
    admin = yield server.client("admin")
    r = yield cmd(
        admin, "ADD", "ssn=A-1", "name=Ann", "surname=Lee", "job=cook", "salary=52000.00"
    )
    assert r.code == 201
    assert {k: v for k, v in r.obj.items() if k != "updated"} == {
        "ssn": "A-1",
        "name": "Ann",
        "surname": "Lee",
        "job": "cook",
        "salary": "52000.00",
    }
    for i, text in enumerate(NASTY):
        r = yield cmd(
            admin, "ADD", "ssn=n%d" % i, "name=" + text, "surname=" + text[::-1], "job=" + text
        )
        assert r.code == 201 and r.obj["name"] == text and r.obj["job"] == text
    # Stored and found literally: % and _ are not wildcards, quotes are text.
    for i, text in enumerate(NASTY):
        r = yield cmd(admin, "LIST", text)
        assert [p["ssn"] for p in r.items] == ["n%d" % i], text
        r = yield cmd(admin, "GET", "n%d" % i)
        assert r.obj["name"] == text and r.obj["surname"] == text[::-1]
    r = yield cmd(admin, "LIST", "%")
    assert [p["ssn"] for p in r.items] == ["n1"]
    r = yield cmd(admin, "LIST", "_")
    assert [p["ssn"] for p in r.items] == ["n2"]
    r = yield cmd(admin, "LIST")
    assert len(r.items) == 1 + len(NASTY) and r.line == "210 %d items" % (1 + len(NASTY))
    r = yield cmd(admin, "LIST", "limit=2", "offset=1")
    assert [p["ssn"] for p in r.items] == ["n0", "n1"]
    # The personnel table is still there and whole after the injection attempt.
    r = yield cmd(admin, "LIST", "COOK")
    assert [p["ssn"] for p in r.items] == ["A-1"]  # case-insensitive on every DB
    r = yield cmd(admin, "UPDATE", "A-1", "job=chef", "salary=60000")
    assert r.code == 200 and (r.obj["job"], r.obj["salary"]) == ("chef", "60000")
    assert (yield cmd(admin, "GET", "A-1")).obj == r.obj
    assert (yield cmd(admin, "DELETE", "A-1")).line == "200 deleted"
    assert (yield cmd(admin, "GET", "A-1")).code == 550
    assert (yield cmd(admin, "DELETE", "A-1")).code == 550
    assert (yield cmd(admin, "UPDATE", "A-1", "job=x")).code == 550
    assert (yield cmd(admin, "ADD", "ssn=n0", "name=X", "surname=Y")).code == 555
    for words in [
        ("ADD", "ssn=bad ssn", "name=A", "surname=B"),
        ("ADD", "ssn=z", "name=A"),  # no surname
        ("ADD", "name=A", "surname=B"),  # no ssn
        ("ADD", "ssn=z", "name=A", "surname=B", "age=3"),
        ("ADD", "ssn=z", "name=A", "surname=B", "extra"),
        ("ADD", "ssn=z", "name=a\tb", "surname=B"),  # control character
        ("UPDATE", "n0"),
        ("UPDATE", "n0", "ssn=x"),
        ("UPDATE", "n0", "age=3"),
        ("GET",),
        ("GET", "a", "b"),
        ("LIST", "a", "b"),
        ("LIST", "limit=x"),
        ("LIST", "offset=-1"),
        ("SEND", "n0"),
        ("SEND", "n0", "bad name!"),
        ("MESSAGES", "limit=0x"),
        ("CLIENTS", "x"),
    ]:
        r = yield cmd(admin, *words)
        assert r.code == 501, (words, r.line)
    assert (yield cmd(admin, "SEND", "nobody", "alice")).code == 550  # no such person
    assert (yield cmd(admin, "SEND", "n0", "nobody")).code == 550  # no such account
    help_ = yield cmd(admin, "HELP")
    assert {"SYNC", "ACK", "SEND", "REMOVE"} <= {
        line[4:].split()[0] for line in help_.lines if line.startswith("214-")
    }


@pytest_twisted.inlineCallbacks
def test_a_user_reads_the_directory_view_and_an_admin_or_sync_stream_the_record(server):
    """Non-admins read name, surname and job, the ssn masked to its last four
    characters and no salary, and cannot search by ssn; admins and sync
    streams (what an admin sent to that client) get the whole record."""
    admin = yield server.client("admin")
    assert (
        yield cmd(
            admin,
            "ADD",
            "ssn=123-45-6789",
            "name=Ada",
            "surname=Lovelace",
            "job=engineer",
            "salary=120000",
        )
    ).code == 201
    assert (yield cmd(admin, "ADD", "ssn=X12", "name=Short", "surname=Ssn")).code == 201
    alice = yield server.client("alice")
    (ada, short) = (yield cmd(alice, "LIST")).items
    assert (ada["ssn"], ada["salary"], ada["name"], ada["job"]) == (
        "*******6789",
        None,
        "Ada",
        "engineer",
    )
    assert (short["ssn"], short["salary"]) == ("***", None)
    got = (yield cmd(alice, "GET", "123-45-6789")).obj
    assert (got["ssn"], got["salary"]) == ("*******6789", None)
    assert "120000" not in json.dumps((yield cmd(alice, "LIST", "Ada")).items)
    for needle in ("123-4", "45-67", "6789"):  # no searching by ssn
        assert (yield cmd(alice, "LIST", needle)).items == []
    assert [p["ssn"] for p in (yield cmd(admin, "LIST", "45-67")).items] == ["123-45-6789"]
    full = (yield cmd(admin, "GET", "123-45-6789")).obj
    assert (full["ssn"], full["salary"]) == ("123-45-6789", "120000")
    pushes = Pushes(alice)
    assert (yield cmd(alice, "SYNC")).line == "200 syncing"
    assert (yield cmd(admin, "SEND", "123-45-6789", "alice")).line == "200 queued 1"
    yield until(lambda: pushes.items)
    record = pushes.items[0][3]
    assert (record["ssn"], record["salary"]) == ("123-45-6789", "120000")


@pytest_twisted.inlineCallbacks
def test_user_reads_and_syncs_but_gets_531_for_every_write(server):
    admin = yield server.client("admin")
    yield add_people(admin, 2)
    alice = yield server.client("alice")
    assert [p["name"] for p in (yield cmd(alice, "LIST")).items] == ["N1", "N2"]
    assert (yield cmd(alice, "GET", "p1")).obj["name"] == "N1"
    for verb, line in ADMIN_VERBS:
        r = yield alice.command(line)
        assert r.code == 531, (verb, r.line)
        # Refused before the arguments are even looked at.
        r = yield alice.command(verb + " ' '")
        assert r.code == 531, (verb, r.line)
    # Nothing was written.
    assert [p["name"] for p in (yield cmd(admin, "LIST")).items] == ["N1", "N2"]
    assert (yield cmd(admin, "CLIENTS")).items == []
    assert (yield cmd(admin, "MESSAGES")).items == []
    # ... and every refusal is in the history with its code.
    hist = yield cmd(alice, "HISTORY", "limit=100")
    refused = [e["command"].split()[0] for e in hist.items if e["code"] == 531]
    assert sorted(set(refused)) == sorted(v for v, _ in ADMIN_VERBS)
    assert len(refused) == 2 * len(ADMIN_VERBS)
    # A user may be a sync client.
    pushes = Pushes(alice)
    assert (yield cmd(alice, "SYNC")).line == "200 syncing"
    assert (yield cmd(admin, "SEND", "p1", "alice")).line == "200 queued 1"
    yield pushes.wait(1)
    assert (yield cmd(alice, "ACK", "1")).line == "200 ok"
    anon = yield server.client()
    for line in ["LIST", "GET p1", "SYNC", "ACK 1", "SEND * *"]:
        assert (yield anon.command(line)).code == 530


# -- sync streams ----------------------------------------------------------------


@pytest_twisted.inlineCallbacks
def test_sync_stream_pushes_acks_and_sends_again(server, tmp_path):
    admin = yield server.client("admin")
    yield add_people(admin, 5)
    alice = yield server.client("alice")
    assert (yield cmd(alice, "ACK", "1")).code == 503  # not a sync stream
    pushes = Pushes(alice)
    assert (yield cmd(alice, "SYNC")).line == "200 syncing"
    assert (yield cmd(alice, "SYNC")).code == 503  # already one
    assert (yield cmd(admin, "SEND", "*", "alice")).line == "200 queued 5"
    yield pushes.wait(5)
    assert pushes.seqs() == [1, 2, 3, 4, 5]
    assert {(i[0], i[2]) for i in pushes.items} == {(610, "SAVE")}
    assert [i[3]["ssn"] for i in pushes.items] == ["p1", "p2", "p3", "p4", "p5"]
    first = list(pushes.items)
    assert (yield cmd(alice, "ACK", "3")).line == "200 ok"
    assert (yield cmd(alice, "ACK", "2")).line == "200 ok"  # late ack: no change
    assert (yield cmd(alice, "ACK", "x")).code == 501
    assert (yield cmd(alice, "ACK", "6")).code == 501  # never sent
    clients = (yield cmd(admin, "CLIENTS")).items
    assert [(c["client"], c["online"], c["pending"], c["acked"]) for c in clients] == [
        ("alice", True, 2, 3)
    ]
    messages = yield cmd(admin, "MESSAGES", "client=alice")
    assert [(m["seq"], m["acked"]) for m in messages.items] == [
        (5, False),
        (4, False),
        (3, True),
        (2, True),
        (1, True),
    ]

    # The client applies what it got, then loses its connection before
    # acknowledging 4 and 5: the next SYNC sends them again.
    local = LocalStore(str(tmp_path / "alice.db"))
    try:
        assert local.apply_batch([(i[1], i[2], i[3]) for i in first]) == 5
        before = local.snapshot()
        yield alice.close()
        yield until(lambda: not server.app.isOnline("alice"))
        alice = yield server.client("alice")
        pushes = Pushes(alice)
        assert (yield cmd(alice, "SYNC", "after=3")).line == "200 syncing"
        yield pushes.wait(2)
        assert pushes.seqs() == [4, 5] and pushes.items == first[3:]
        # Delivered twice: applying it again changes nothing.
        assert local.apply_batch([(i[1], i[2], i[3]) for i in pushes.items]) == 0
        assert local.snapshot() == before and local.last_seq() == 5
    finally:
        local.close()
    assert (yield cmd(alice, "ACK", "5")).line == "200 ok"

    # Live DELETE and DELETE_ALL pushes; the new messages follow in seq order.
    assert (yield cmd(admin, "REMOVE", "p2", "alice")).line == "200 queued 1"
    assert (yield cmd(admin, "REMOVE", "ghost", "alice")).line == "200 queued 1"
    assert (yield cmd(admin, "REMOVE", "*", "*")).line == "200 queued 1"
    yield pushes.wait(5)
    assert pushes.items[2:] == [
        (611, 6, "DELETE", {"ssn": "p2"}),
        (611, 7, "DELETE", {"ssn": "ghost"}),
        (612, 8, "DELETE_ALL", {}),
    ]
    # SYNC after= beyond anything queued: refused, not silently skipped.
    bob = yield server.client("bob")
    assert (yield cmd(bob, "SYNC", "after=1")).code == 501
    assert (yield cmd(bob, "SYNC", "after=-1")).code == 501
    assert (yield cmd(bob, "SYNC", "after=0")).line == "200 syncing"


@pytest_twisted.inlineCallbacks
def test_second_sync_replaces_the_first_and_offline_targets(server):
    admin = yield server.client("admin")
    yield add_people(admin, 2)
    # bob has never connected: he can be targeted by name, and is then known.
    assert (yield cmd(admin, "SEND", "p1", "bob")).line == "200 queued 1"
    clients = (yield cmd(admin, "CLIENTS")).items
    assert clients == [
        {"client": "bob", "online": False, "pending": 1, "acked": 0, "last_seen": None}
    ]
    assert (yield cmd(admin, "SEND", "p2", "*")).line == "200 queued 1"  # only bob is known
    old = yield server.client("bob")
    old_pushes = Pushes(old)
    assert (yield cmd(old, "SYNC")).line == "200 syncing"
    yield old_pushes.wait(2)
    new = yield server.client("bob")
    new_pushes = Pushes(new)
    assert (yield cmd(new, "SYNC")).line == "200 syncing"
    yield old.closed.addTimeout(TIMEOUT, reactor)
    assert (421, "stream replaced by a new SYNC") in old.pushes
    yield new_pushes.wait(2)  # nothing acknowledged: both again
    assert new_pushes.seqs() == [1, 2]
    assert (yield cmd(admin, "SEND", "p1", "*")).line == "200 queued 1"
    yield new_pushes.wait(3)
    assert new_pushes.seqs() == [1, 2, 3] and old_pushes.seqs() == [1, 2]
    assert server.app.onlineClients() == ["bob"]


@pytest_twisted.inlineCallbacks
def test_sync_stream_is_exempt_from_the_idle_timeout(db_pool, tmp_path):
    srv = Server(db_pool, tmp_path, idle_timeout=0.3)
    try:
        yield srv.setup_accounts()
        idle = yield srv.client("alice")
        stream = yield srv.client("bob")
        assert (yield cmd(stream, "SYNC")).line == "200 syncing"
        yield idle.closed.addTimeout(TIMEOUT, reactor)
        assert (421, "idle timeout") in idle.pushes
        yield task.deferLater(reactor, 0.5, lambda: None)
        assert stream.transport.connected
        assert (yield cmd(stream, "PING")).line == "200 pong"
    finally:
        yield srv.close()


# -- backpressure ------------------------------------------------------------------


class _Sink:
    def __init__(self, room):
        self.lines, self.room = [], room

    def sendPushes(self, data, count):
        self.lines.extend(data.decode("utf-8").split("\r\n")[:count])

    def writable(self):
        return len(self.lines) < self.room

    def streamReplaced(self):
        pass


class _Store:
    def __init__(self, n):
        from netshare.storage.personnel import Message

        self.rows = [Message("c", s, "SAVE", "x", '{"ssn":"x"}', 0) for s in range(1, n + 1)]
        self.calls = 0

    def pending_page(self, client, after, limit):
        self.calls += 1
        return defer.succeed([m for m in self.rows if m.seq > after][:limit])


def test_feed_stops_mid_page_when_the_sink_fills_and_goes_on_after_a_drain():
    store, sink = _Store(10), _Sink(room=2)
    feed = SyncFeed(store, "c", sink, page_size=8, clock=task.Clock(), chunk_bytes=1)
    feed.start()
    assert [int(line.split()[1]) for line in sink.lines] == [1, 2]
    # The rest of the page waits; the next page (9, 10) is read ahead.
    assert not feed.caughtUp and store.calls == 2
    feed.notify()
    assert store.calls == 2 and len(sink.lines) == 2
    sink.room = 5
    feed.resume()
    assert len(sink.lines) == 5 and store.calls == 2
    sink.room = 100
    feed.resume()
    assert [int(line.split()[1]) for line in sink.lines] == list(range(1, 11))
    assert feed.caughtUp and store.calls == 3


@pytest_twisted.inlineCallbacks
def test_a_reader_that_stops_reading_is_paused_not_dropped(sqlite_pool, tmp_path):
    """Pages of large records to a client that stops reading: the feed stops
    writing whenever the transport says its buffer is full (it never writes
    a block into a full buffer, whatever the kernel's socket buffers hold),
    the reader is paused rather than dropped, and everything arrives, in
    order, once the client reads again.

    The properties, not a byte count: how much the kernel absorbs before the
    transport's buffer fills depends on its socket-buffer tuning."""
    srv = yield sqlite_server(sqlite_pool, tmp_path, sync_page=500)
    try:
        admin = yield srv.client("admin")
        big = "\U0001f600" * 255  # 1020 bytes of UTF-8 per field: a page of
        #                                      500 such people is over the 1 MiB limit
        yield defer.gatherResults(
            [
                cmd(admin, "ADD", "ssn=b%03d" % i, "name=" + big, "surname=" + big, "job=" + big)
                for i in range(300)
            ]
        )
        alice = yield srv.client("alice")
        pushes = Pushes(alice)
        assert (yield cmd(alice, "SYNC")).line == "200 syncing"
        alice.pauseProducing()  # stop reading the socket
        feed = srv.app._streams["alice"]
        sink = feed.sink
        blocks_into_a_full_buffer = []
        pauses = []
        real_send, real_writable = sink.sendPushes, sink.writable

        def writable():
            ok = real_writable()
            if not ok:
                pauses.append(feed.sent)
            return ok

        def send(data, count):
            if not real_writable():
                blocks_into_a_full_buffer.append(count)
            return real_send(data, count)

        sink.writable, sink.sendPushes = writable, send
        rounds = 12
        total = 300 * rounds  # about 11 MB of pushes: more than the
        #                                      kernel's socket buffers take
        for _ in range(rounds):
            assert (yield cmd(admin, "SEND", "*", "alice")).line == "200 queued 300"
        yield until(lambda: pauses)  # the feed met a full buffer and waited
        assert srv.factory.stats.slow_drops == 0 and sink.transport.connected
        alice.resumeProducing()
        yield until(lambda: len(pushes.items) >= total)
        assert pushes.seqs() == list(range(1, total + 1))
        assert srv.factory.stats.slow_drops == 0 and feed.sent == total
        assert blocks_into_a_full_buffer == []
        assert (yield cmd(alice, "ACK", str(total))).line == "200 ok"
    finally:
        yield srv.close()


# -- the sync client of netshare-personnel, in-process ------------------------------


@pytest_twisted.inlineCallbacks
def test_sync_client_batches_acks_and_resumes_after_a_disconnect(sqlite_pool, tmp_path):
    srv = yield sqlite_server(sqlite_pool, tmp_path, sync_page=100)
    local = LocalStore(str(tmp_path / "alice-local.db"))
    port = srv.port.getHost().port

    def connector():
        return connect("127.0.0.1", port, reactor=reactor)

    client = SyncClient(
        reactor,
        local,
        connector,
        "alice",
        "alicepw",
        retry_min=0.01,
        retry_max=0.05,
        batch_max=100,
        batch_delay=0.002,
    )
    acks = []
    try:
        admin = yield srv.client("admin")
        yield add_people(admin, 1000)
        running = client.start()
        yield until(lambda: srv.app.isOnline("alice"))
        original = srv.app.ack

        def spy(name, seq, **kwargs):
            acks.append(seq)
            return original(name, seq, **kwargs)

        srv.app.ack = spy
        assert (yield cmd(admin, "SEND", "*", "alice")).line == "200 queued 1000"
        yield until(lambda: local.last_seq() == 1000 and acks and acks[-1] == 1000)
        assert client.applied == 1000
        # Batched: at most 100 messages per transaction; at most one ACK per
        # batch (one in flight at a time: batches committed meanwhile share
        # the next cumulative ACK), rising, the last one covering everything.
        assert 10 <= client.batches <= 1000 // 10 and 1 <= len(acks) <= client.batches
        assert acks == sorted(set(acks)) and acks[-1] == 1000
        clients = (yield cmd(admin, "CLIENTS")).items
        assert (clients[0]["pending"], clients[0]["acked"]) == (0, 1000)
        assert [p["ssn"] for p in local.snapshot()] == sorted("p%d" % i for i in range(1, 1001))

        # The server drops the stream: the client reconnects and resumes
        # after its last applied seq.
        for proto in list(srv.factory.connections):
            if proto.user == "alice":
                proto.transport.abortConnection()
        yield until(lambda: client.connections == 2 and srv.app.isOnline("alice"))
        assert (yield cmd(admin, "UPDATE", "p7", "job=diver")).code == 200
        assert (yield cmd(admin, "SEND", "p7", "alice")).line == "200 queued 1"
        assert (yield cmd(admin, "REMOVE", "p8", "alice")).line == "200 queued 1"
        yield until(lambda: client.applied == 1002)  # counted after the commit
        assert local.last_seq() == 1002
        people = {p["ssn"]: p for p in local.snapshot()}
        assert people["p7"]["job"] == "diver" and "p8" not in people
        yield client.stop()
        yield running
    finally:
        yield client.stop()
        local.close()
        yield srv.close()


def _stream():
    """What a server may send on a sync connection: every kind of line."""
    out = [b"220 netshare personnel 1 ready"]
    for i in range(1, 301):
        name = NASTY[i % len(NASTY)]
        out.append(
            (
                "610 %d SAVE %s"
                % (i, json.dumps({"ssn": "p%d" % i, "name": name}, ensure_ascii=False))
            ).encode()
        )
        if i % 37 == 0:
            out += [b'210-{"a":1}', b'210-{"a":"\xc3\xa9"}', b"210 2 items"]
        if i % 53 == 0:
            out += [b"200 ok", b"611 %d DELETE {}" % (1000 + i), b"612 %d DELETE_ALL {}" % i]
    out += [
        b"6105 no space",
        b"61",
        b"",
        b"hello",
        b"610 \xff\xfe bad utf-8",
        b"421 shutting down",
    ]
    # CRLF mostly, a bare LF sometimes, as LineReceiver with delimiter LF sees both.
    return b"".join(line + (b"\n" if i % 11 == 0 else b"\r\n") for i, line in enumerate(out))


def _feed(data, seed, whole=False):
    """Deliver C{data} to a L{ClientProtocol} in random pieces (splitting
    CRLF and UTF-8 sequences), or in one piece, pausing in the middle of a
    read now and then as the sync client does;
    @return: everything the protocol produced."""
    rng = random.Random(seed)
    proto = ClientProtocol()
    proto.makeConnection(StringTransport())
    pushes, replies = [], []

    def onPush(code, text):
        pushes.append((code, text))
        if rng.random() < 0.02:
            proto.pauseProducing()

    proto.onPush = onPush
    for _ in range(8):
        proto.command("X").addCallback(lambda r: replies.append((r.code, r.text, r.lines)))
    i = 0
    while i < len(data):
        n = len(data) if whole else rng.choice([1, 2, 3, 7, 100, 1000, 5000, 70000])
        proto.dataReceived(data[i : i + n])
        i += n
        if proto.paused and rng.random() < 0.5:
            proto.resumeProducing()
    while proto.paused:
        proto.resumeProducing()
    return pushes, replies, proto.pushes


@pytest.mark.parametrize("seed", range(12))
def test_a_sync_stream_is_framed_the_same_in_any_pieces(seed):
    """The sync client reads through the ordinary client protocol (no
    special framing): however the stream is cut and paused, the same pushes
    and replies come out."""
    data = _stream()
    pieces, whole = _feed(data, seed), _feed(data, seed, whole=True)
    assert pieces == whole
    pushes, replies = pieces[0], pieces[1]
    assert len(pushes) >= 300 and len(replies) >= 8
    assert (610, '1 SAVE {"ssn": "p1", "name": "100%"}') in pushes


def test_sync_client_logs_each_change_in_one_event_per_batch():
    from twisted.logger import Logger, LogLevel, formatEvent

    changes = [
        (7, "SAVE", {"ssn": "p1", "name": "Ann", "surname": "Lee"}),
        (8, "DELETE", {"ssn": "p2"}),
        (9, "DELETE_ALL", {}),
    ]
    for log_each, debug in ((False, 0), (True, 3)):
        events = []
        client = SyncClient(task.Clock(), None, None, "alice", "pw", log_each=log_each)
        client.log = Logger(namespace="test", observer=events.append)
        client._logChanges(changes)
        infos = [e for e in events if e["log_level"] == LogLevel.info]
        assert len(infos) == 1 and len(events) == 1 + debug
        e = infos[0]
        assert (e["count"], e["first"], e["last"]) == (3, 7, 9)
        assert e["changes"] == "7 SAVE p1, 8 DELETE p2, 9 DELETE_ALL *"
        assert formatEvent(e) == "applied 3 changes, seq 7..9: " + e["changes"]
        if debug:
            texts = [formatEvent(e) for e in events if e["log_level"] == LogLevel.debug]
            assert texts == [
                "applied 7 SAVE p1 (Ann Lee)",
                "applied 8 DELETE p2",
                "applied 9 DELETE_ALL",
            ]


def test_pushes_are_parsed_strictly_in_the_worker():
    assert parse_pushes(
        [(610, '4 SAVE {"ssn":"a b"}'), (611, '5 DELETE {"ssn":"a"}'), (612, "9 DELETE_ALL {}")]
    ) == [(4, "SAVE", '{"ssn":"a b"}'), (5, "DELETE", '{"ssn":"a"}'), (9, "DELETE_ALL", "{}")]
    for bad in (
        [(610, "4 DELETE {}")],
        [(613, "4 SAVE {}")],
        [(610, "x SAVE {}")],
        [(610, "4 SAVE")],
        [(610, "-4 SAVE {}")],
        [(610, "5 SAVE {}"), (610, "5 SAVE {}")],  # seqs must rise
        [(610, "5 SAVE {}"), (610, "4 SAVE {}")],
    ):
        with pytest.raises(BadPush):
            parse_pushes(bad)


class _AckProto:
    """Stands in for a connection: records commands, answers by hand."""

    def __init__(self):
        self.sent = []
        self.transport = StringTransport()

    def command(self, line):
        d = defer.Deferred()
        self.sent.append((line, d))
        return d


def test_sync_client_keeps_one_ack_in_flight():
    from netshare.clients.protocol import Response

    client = SyncClient(task.Clock(), None, None, "alice", "pw")
    proto = _AckProto()
    session = client._session = SyncSession(proto)
    client._ack(session, 100)
    client._ack(session, 200)
    client._ack(session, 300)
    assert [line for line, _ in proto.sent] == ["ACK 100"]
    proto.sent[0][1].callback(Response(200, "ok"))
    # What committed meanwhile goes in one cumulative ACK.
    assert [line for line, _ in proto.sent] == ["ACK 100", "ACK 300"]
    proto.sent[1][1].callback(Response(200, "ok"))
    client._ack(session, 250)  # already covered
    assert len(proto.sent) == 2
    client._ack(session, 400)
    proto.sent[2][1].errback(ConnectionError("lost"))
    assert not session.ackInFlight and session.acked == 400
    client._ack(session, 500)  # a live session goes on
    assert [line for line, _ in proto.sent][-1] == "ACK 500"


@pytest_twisted.inlineCallbacks
def test_sync_client_stops_on_a_wrong_password(sqlite_pool, tmp_path):
    from netshare.clients.personnel_sync import SyncFailed

    srv = yield sqlite_server(sqlite_pool, tmp_path)
    local = LocalStore(str(tmp_path / "x.db"))
    port = srv.port.getHost().port
    client = SyncClient(
        reactor,
        local,
        lambda: connect("127.0.0.1", port, reactor=reactor),
        "alice",
        "wrong",
        retry_min=0.01,
    )
    try:
        with pytest.raises(SyncFailed, match="535"):
            yield client.start().addTimeout(TIMEOUT, reactor)
    finally:
        yield client.stop()
        local.close()
        yield srv.close()


# -- the operator console and the shared client helpers ------------------------------


class ScriptedInput:
    """Stands in for L{netshare.clients.common.LineInput}: answers from a
    script, then the end of input."""

    def __init__(self, lines):
        self.lines = list(lines)
        self.out = []

    def ask(self, prompt=""):
        self.out.append(prompt)
        return defer.succeed(self.lines.pop(0) if self.lines else None)

    def write(self, text):
        self.out.append(text)

    def text(self):
        return "".join(self.out)


@pytest_twisted.inlineCallbacks
def test_console_menu_over_the_protocol(sqlite_pool, tmp_path):
    from netshare.clients.personnel import Console

    srv = yield sqlite_server(sqlite_pool, tmp_path)
    try:
        admin = yield srv.client("admin")
        yield add_people(admin, 3)
        yield cmd(admin, "SEND", "p1", "bob")  # bob becomes a known client
        io = ScriptedInput(
            [
                "",
                "8",
                "x",
                "1",
                "p2",
                "bob",
                "2",
                "p3",
                "3",
                "no",  # not confirmed: nothing queued
                "3",
                "y",
                "4",
                "p1",
                "alice",
                "5",
                "p1",
                "6",
                "yes",
                "1",
                "",
                "4",
                "p1",
                "",
                "1",
                "p1",
                "ghost",
                "0",
            ]
        )
        yield defer.ensureDeferred(Console(admin, io).run())  # ends at the end of input
        out = io.text()
        assert out.count("please choose a number from 0 to 7") == 2
        assert out.count("queued 1 message\n") == 3  # 1, 2 (one client), 6
        assert "queued 3 messages" in out  # 3: three people, one client
        # alice never synced, but she has an account: 4 targets her by name
        # and makes her a known client, so 5 and 6 reach bob and her.
        assert out.count("queued 2 messages") == 2
        assert "error: 550 no such client ghost" in out
        assert out.count("nothing entered; back to the menu") == 2
        assert out.count("not confirmed; back to the menu") == 1
        assert out.count("send ALL personnel to ALL clients? [y/N] ") == 2
        assert "personnel (first 20):" in out and "DELETE_ALL" in out
        messages = (yield cmd(admin, "MESSAGES", "client=bob")).items
        assert [(m["action"], m["ssn"]) for m in reversed(messages)] == [
            ("SAVE", "p1"),
            ("SAVE", "p2"),
            ("SAVE", "p3"),
            ("SAVE", "p1"),
            ("SAVE", "p2"),
            ("SAVE", "p3"),
            ("DELETE", "p1"),
            ("DELETE_ALL", None),
        ]
        messages = (yield cmd(admin, "MESSAGES", "client=alice")).items
        assert [(m["action"], m["ssn"]) for m in reversed(messages)] == [
            ("DELETE", "p1"),
            ("DELETE", "p1"),
            ("DELETE_ALL", None),
        ]
        # A user's console: a menu of what a user may do; the others are
        # refused before anything is sent; personnel only in choice 0.
        alice = yield srv.client("alice")
        io = ScriptedInput(["3", "6", "0", "7", "never read"])
        yield defer.ensureDeferred(Console(alice, io).run())
        text = io.text()
        assert "1  send one person" not in text and "0  show personnel\n" in text
        assert text.count("only an admin may send or delete") == 2
        assert "531" not in text and "personnel (first 20):" in text and "clients:" not in text
        assert text.endswith("bye\n") and io.lines == ["never read"]
    finally:
        yield srv.close()


def test_client_table_and_progress_helpers():
    from netshare.clients import common

    table = common.format_table(
        [{"a": "x", "b": None}, {"a": "long\x1b[2J", "b": True}], ["a", "b"]
    )
    assert table.splitlines() == [
        "a" + " " * 14 + "b",
        "-" * 13 + "  ---",
        "x" + " " * 14 + "-",
        "long\\u001b[2J  yes",
    ]
    assert (
        common.format_table([{"a": "abcdef"}], ["a"], max_width=4).splitlines()[2] == "abc\u2026"
    )
    assert common.format_object({"k": 1, "key": "v"}) == "k  : 1\nkey: v\n"
    ticks = iter([0.0, 0.1, 0.5, 1.0, 1.0])
    out = []

    class Stream:
        def write(self, s):
            out.append(s)

        def flush(self):
            pass

    bar = common.ProgressBar(
        2_000_000, "up", stream=Stream(), force=True, clock=lambda: next(ticks), width=10
    )
    bar(500_000)  # t=0.1: too soon to draw
    bar(500_000)  # t=0.5: drawn
    bar(1_000_000)  # t=1.0: drawn (done)
    bar.finish()
    assert len(out) == 4 and out[0] == "\rup [#####-----]  50%  2.0 MB/s"
    assert out[1] == out[2] == "\rup [##########] 100%  2.0 MB/s" and out[3] == "\n"

"""
The personnel service without its wire protocol: validation, the SyncFeed
state machine (fake store and sink, driven step by step), and the service on
a real SQLite store.
"""

import pytest
import pytest_twisted
from twisted.internet import defer, task
from twisted.python.failure import Failure

from netshare.errors import BadArguments, DatabaseUnavailable, NotFound, PermissionDenied
from netshare.services.personnel.rules import check_field, check_fields, check_ssn, parse_int
from netshare.services.personnel.service import PersonnelService
from netshare.services.personnel.syncfeed import SyncFeed
from netshare.storage import personnel as P
from netshare.storage.engine import create_engine
from netshare.storage.pool import DBPool
from netshare.storage.schema import accounts, metadata

T0 = 1_700_000_000.0


def result_of(d):
    """The result of a Deferred that must already have fired."""
    out = []
    d.addBoth(out.append)
    assert out, "the Deferred has not fired"
    if isinstance(out[0], Failure):
        out[0].raiseException()
    return out[0]


def failure_of(d, kind):
    with pytest.raises(kind) as e:
        result_of(d)
    return e.value


# -- validation ---------------------------------------------------------------


@pytest.mark.parametrize("ssn", ["1", "123-45-6789", "A" * 32, "abc-DEF-9"])
def test_good_ssn(ssn):
    assert check_ssn(ssn) == ssn


@pytest.mark.parametrize(
    "ssn", ["", "A" * 33, "12 34", "12_34", "'; DROP", "%", "é", None, 12, "12\n", "*"]
)
def test_bad_ssn(ssn):
    with pytest.raises(BadArguments) as e:
        check_ssn(ssn)
    assert e.value.code == 501


def test_field_rules():
    assert check_field("name", "'; DROP TABLE personnel;--") == "'; DROP TABLE personnel;--"
    assert check_field("name", " padded ") == " padded "  # stored literally
    assert check_field("name", "x" * 255) == "x" * 255
    assert check_field("salary", 52000) == "52000"
    assert check_field("salary", "52000.00") == "52000.00"
    assert check_field("salary", "") == "" and check_field("job", "") == ""
    for name, value in [
        ("name", "x" * 256),
        ("salary", "1" * 33),
        ("name", ""),
        ("surname", "   "),
        ("name", "a\x00b"),
        ("job", "a\rb"),
        ("job", "\x1b[31mred"),
        ("name", "evil\u202egnp"),
        ("job", "a\u2028b"),
        ("name", 5),
        ("salary", True),
        ("nickname", "x"),
    ]:
        with pytest.raises(BadArguments):
            check_field(name, value)


def test_fields_for_add_and_update():
    fields = {"name": "A", "surname": "B"}
    assert check_fields(fields, adding=True) == fields
    with pytest.raises(BadArguments, match="missing field surname"):
        check_fields({"name": "A"}, adding=True)
    with pytest.raises(BadArguments, match="ssn cannot be changed"):
        check_fields({"ssn": "x"}, adding=False)
    with pytest.raises(BadArguments, match="nothing to update"):
        check_fields({}, adding=False)
    assert check_fields({"job": "cook"}, adding=False) == {"job": "cook"}


def test_parse_int():
    assert parse_int("42", "limit") == 42 and parse_int(7, "limit") == 7
    for bad in ["x", "", "1.5", "-1", "9" * 30, None, True]:
        with pytest.raises(BadArguments):
            parse_int(bad, "limit")


def test_authorize():
    service = PersonnelService(store=None, clock=task.Clock())
    for verb in ("LIST", "GET", "SYNC", "ACK", "list"):
        service.authorize(verb, "user")
    for verb in ("ADD", "UPDATE", "DELETE", "CLIENTS", "MESSAGES", "SEND", "REMOVE", "send"):
        service.authorize(verb, "admin")
        with pytest.raises(PermissionDenied) as e:
            service.authorize(verb, "user")
        assert e.value.code == 531


# -- SyncFeed with a fake store and sink ----------------------------------------


class FakeStore:
    """An in-memory outbox.  In manual mode a page is computed when asked
    for (like a database snapshot) but delivered only on L{release}."""

    def __init__(self, manual=False):
        self.outbox = {}
        self.acked = {}
        self.calls = []
        self.manual = manual
        self.waiting = []
        self.failures = []

    def queue(self, client, n, action="SAVE"):
        rows = self.outbox.setdefault(client, [])
        for _ in range(n):
            seq = len(rows) + 1
            rows.append(P.Message(client, seq, action, "p%d" % seq, '{"ssn":"p%d"}' % seq, 0))

    def pending_page(self, client, after, limit):
        self.calls.append((client, after, limit))
        if self.failures:
            return defer.fail(self.failures.pop(0))
        start = max(after, self.acked.get(client, 0))
        page = [m for m in self.outbox.get(client, []) if m.seq > start][:limit]
        if not self.manual:
            return defer.succeed(page)
        d = defer.Deferred()
        self.waiting.append((d, page))
        return d

    def release(self):
        d, page = self.waiting.pop(0)
        d.callback(page)


class FakeSink:
    def __init__(self, room=None):
        self.lines = []
        self.writes = []  # push count of each sendPushes call
        self.room = room  # pushes accepted before it stops being writable
        self.replaced = 0
        self.failed = 0

    def sendPushes(self, data, count):
        assert isinstance(data, bytes) and data.endswith(b"\r\n")
        lines = data.decode("utf-8").split("\r\n")[:-1]
        assert len(lines) == count
        self.writes.append(count)
        self.lines.extend(lines)

    def streamFailed(self):
        self.failed += 1

    def writable(self):
        return self.room is None or len(self.lines) < self.room

    def streamReplaced(self):
        self.replaced += 1

    def seqs(self):
        return [int(line.split()[1]) for line in self.lines]


def make_feed(store, sink, after=0, page_size=3, clock=None, chunk_bytes=1):
    # chunk_bytes=1: one push per write, so writability is checked before
    # every message (the block tests below use real block sizes).
    return SyncFeed(
        store,
        "alice",
        sink,
        after,
        page_size=page_size,
        clock=clock or task.Clock(),
        retry_delay=5,
        chunk_bytes=chunk_bytes,
    )


def test_push_lines_are_the_stored_payloads_and_unknown_actions_are_skipped():
    store, sink = FakeStore(), FakeSink()
    store.outbox["alice"] = [
        P.Message("alice", 1, "SAVE", "1", '{"ssn":"1"}', 0),
        P.Message("alice", 2, "DELETE", "1", '{"ssn":"1"}', 0),
        P.Message("alice", 3, "BOGUS", None, "{}", 0),
        P.Message("alice", 4, "DELETE_ALL", None, "{}", 0),
    ]
    feed = make_feed(store, sink, chunk_bytes=1024)
    feed.start()
    assert sink.lines == [
        '610 1 SAVE {"ssn":"1"}',
        '611 2 DELETE {"ssn":"1"}',
        "612 4 DELETE_ALL {}",
    ]
    assert sink.writes == [2, 1] and feed.lastSent == 4 and feed.sent == 3


def test_feed_pushes_pages_in_order_then_waits():
    store, sink = FakeStore(), FakeSink()
    store.queue("alice", 7)
    feed = make_feed(store, sink)
    assert store.calls == []  # nothing before start()
    feed.start()
    assert sink.seqs() == [1, 2, 3, 4, 5, 6, 7]
    assert sink.lines[0] == '610 1 SAVE {"ssn":"p1"}'
    assert store.calls == [("alice", 0, 3), ("alice", 3, 3), ("alice", 6, 3)]
    assert feed.caughtUp and feed.lastSent == 7 and feed.sent == 7


def test_feed_starts_after_the_given_seq():
    store, sink = FakeStore(), FakeSink()
    store.queue("alice", 5)
    make_feed(store, sink, after=3).start()
    assert sink.seqs() == [4, 5]


def test_feed_pauses_on_backpressure_and_resumes():
    store, sink = FakeStore(), FakeSink(room=3)
    store.queue("alice", 20)
    feed = make_feed(store, sink)
    feed.start()
    # One page went out and the sink is full: the next page waits to be
    # written and one more is read ahead -- and nothing beyond that.
    assert sink.seqs() == [1, 2, 3] and len(store.calls) == 3
    assert [m.seq for m in feed._backlog] == [4, 5, 6]
    assert [m.seq for m in feed._ahead] == [7, 8, 9]
    feed.resume()  # still not writable
    feed.notify()
    assert len(store.calls) == 3 and sink.seqs() == [1, 2, 3]
    sink.room = 6
    feed.resume()
    assert sink.seqs() == [1, 2, 3, 4, 5, 6] and len(store.calls) == 4
    assert store.calls[-1] == ("alice", 9, 3)  # reads go on from the page ahead
    sink.room = None
    feed.resume()
    assert sink.seqs() == list(range(1, 21)) and feed.caughtUp


def test_feed_holds_at_most_one_page_request():
    store, sink = FakeStore(manual=True), FakeSink()
    store.queue("alice", 10)
    feed = make_feed(store, sink)
    feed.start()
    for _ in range(3):
        assert len(store.waiting) == 1
        feed.notify()
        feed.resume()
        assert len(store.waiting) == 1
        store.release()
    assert sink.seqs() == list(range(1, 10))
    store.release()
    assert sink.seqs() == list(range(1, 11)) and feed.caughtUp


def test_feed_picks_up_notify_while_caught_up():
    store, sink = FakeStore(), FakeSink()
    store.queue("alice", 2)
    feed = make_feed(store, sink)
    feed.start()
    assert feed.caughtUp and len(store.calls) == 1
    store.queue("alice", 2)
    assert sink.seqs() == [1, 2]  # nothing without a notify
    feed.notify()
    assert sink.seqs() == [1, 2, 3, 4] and store.calls[-1] == ("alice", 2, 3)


def test_notify_during_a_read_is_not_lost():
    store, sink = FakeStore(manual=True), FakeSink()
    feed = make_feed(store, sink)
    feed.start()  # reads an empty outbox...
    store.queue("alice", 1)  # ...while a message commits
    feed.notify()
    assert len(store.waiting) == 1  # no second read in parallel
    store.release()  # the stale, empty page
    assert sink.lines == [] and len(store.waiting) == 1
    store.release()
    assert sink.seqs() == [1] and feed.caughtUp


def test_unacknowledged_messages_are_sent_again_on_a_new_feed():
    store = FakeStore()
    store.queue("alice", 5)
    first = FakeSink()
    feed = make_feed(store, first)
    feed.start()
    assert first.seqs() == [1, 2, 3, 4, 5]
    store.acked["alice"] = 3
    feed.stop()
    second = FakeSink()
    make_feed(store, second).start()
    assert second.seqs() == [4, 5]


def test_stopped_feed_pushes_nothing():
    store, sink = FakeStore(manual=True), FakeSink()
    store.queue("alice", 2)
    stopped = []
    feed = SyncFeed(
        store, "alice", sink, 0, page_size=3, clock=task.Clock(), on_stop=stopped.append
    )
    feed.start()
    feed.stop()
    feed.stop()
    assert stopped == [feed]
    store.release()
    feed.notify()
    feed.resume()
    assert sink.lines == [] and len(store.calls) == 1


def test_feed_stops_mid_page_when_the_sink_drops_the_connection():
    store = FakeStore()
    store.queue("alice", 3)

    class DroppingSink(FakeSink):
        def sendPushes(self, data, count):
            super().sendPushes(data, count)
            feed.stop()  # over its output limit

    sink = DroppingSink()
    feed = make_feed(store, sink)
    feed.start()
    assert sink.seqs() == [1]


def test_a_page_goes_out_in_blocks_of_many_pushes():
    store, sink = FakeStore(), FakeSink()
    store.queue("alice", 40)
    line = len('610 1 SAVE {"ssn":"p1"}\r\n')
    feed = make_feed(store, sink, page_size=40, chunk_bytes=10 * line)
    feed.start()
    assert sink.seqs() == list(range(1, 41))
    # One write per ~10 pushes, not one per push; each block is whole lines.
    assert 3 <= len(sink.writes) <= 5 and sum(sink.writes) == 40
    assert sink.lines[0] == '610 1 SAVE {"ssn":"p1"}'
    assert feed.sent == 40 and feed.lastSent == 40 and feed.caughtUp


def test_writability_is_checked_between_blocks():
    store, sink = FakeStore(), FakeSink(room=5)
    store.queue("alice", 30)
    line = len('610 1 SAVE {"ssn":"p1"}\r\n')
    feed = make_feed(store, sink, page_size=30, chunk_bytes=5 * line)
    feed.start()
    # The first block fills the sink: the rest of the page waits, the next
    # (empty) read is the only one ahead, and lastSent says exactly what
    # went out.
    assert sink.seqs() == [1, 2, 3, 4, 5] and feed.lastSent == 5
    assert len(feed._backlog) == 25 and len(store.calls) == 2 and not feed.caughtUp
    sink.room = 12
    feed.resume()
    assert sink.seqs() == list(range(1, 16)) and len(store.calls) == 2
    sink.room = None
    feed.resume()
    assert sink.seqs() == list(range(1, 31)) and feed.caughtUp and feed._backlog == []


def test_unknown_action_inside_a_block_is_skipped_in_order():
    store, sink = FakeStore(), FakeSink()
    store.queue("alice", 2)
    store.queue("alice", 1, action="BOGUS")
    store.queue("alice", 2, action="DELETE")
    store.queue("alice", 1, action="DELETE_ALL")
    feed = make_feed(store, sink, page_size=10, chunk_bytes=4096)
    feed.start()
    assert sink.seqs() == [1, 2, 4, 5, 6]
    assert [line.split()[0] for line in sink.lines] == ["610", "610", "611", "611", "612"]
    assert feed.lastSent == 6 and feed.sent == 5 and feed.caughtUp


def test_a_broken_sink_stops_the_stream_instead_of_spinning():
    store = FakeStore()
    store.queue("alice", 3)

    class BrokenSink(FakeSink):
        def sendPushes(self, data, count):
            raise RuntimeError("boom")

    sink = BrokenSink()
    feed = make_feed(store, sink)
    feed.start()
    # Logged (the pytest-twisted logger shows it), the feed stopped and asked
    # the sink to close; the page was read once, not again and again.
    assert feed.stopped and sink.failed == 1 and len(store.calls) == 1
    feed.notify()
    assert len(store.calls) == 1


def test_database_error_is_retried_after_a_delay():
    clock = task.Clock()
    store, sink = FakeStore(), FakeSink()
    store.queue("alice", 2)
    store.failures.append(DatabaseUnavailable())
    feed = make_feed(store, sink, clock=clock)
    feed.start()
    assert sink.lines == [] and len(store.calls) == 1
    feed.notify()  # waits for the retry delay
    assert len(store.calls) == 1
    clock.advance(4.9)
    assert len(store.calls) == 1
    clock.advance(0.2)
    assert sink.seqs() == [1, 2]


def test_stop_cancels_a_pending_retry():
    clock = task.Clock()
    store, sink = FakeStore(), FakeSink()
    store.failures.append(DatabaseUnavailable())
    feed = make_feed(store, sink, clock=clock)
    feed.start()
    assert len(clock.getDelayedCalls()) == 1
    feed.stop()
    assert clock.getDelayedCalls() == []


# -- the service on a real SQLite store -----------------------------------------


class SyncPool:
    """DBPool's contract (one transaction per call, plain data back) run
    synchronously, so the service can be stepped through without threads."""

    def __init__(self, engine):
        self.engine = engine

    def run(self, fn, *args, journal=None, **kwargs):
        try:
            with self.engine.begin() as conn:
                result = fn(conn, *args, **kwargs)
                if journal:
                    from netshare.storage.schema import history

                    conn.execute(history.insert(), [journal])
                return defer.succeed(result)
        except Exception:
            return defer.fail()

    write = run  # one connection, no lost COMMIT answers: the same here


@pytest.fixture
def engine():
    engine = create_engine("sqlite://")
    metadata.create_all(engine)
    with engine.begin() as conn:
        for name in ("alice", "bob", "carol"):
            conn.execute(
                accounts.insert().values(
                    name=name, name_key=name, role="user", password_hash="x", created_ms=0
                )
            )
    yield engine
    engine.dispose()


@pytest.fixture
def service(engine):
    clock = task.Clock()
    clock.advance(T0)
    return PersonnelService(P.PersonnelStore(SyncPool(engine)), clock=clock, page_size=4)


def add_people(service, n):
    for i in range(n):
        result_of(service.add({"ssn": "p%02d" % i, "name": "N%d" % i, "surname": "S"}))


def open_stream(service, client, after=0):
    sink = FakeSink()
    feed = result_of(service.openSync(client, sink, after))
    feed.start()
    return feed, sink


def test_crud_returns_wire_objects(service):
    person = result_of(
        service.add({"ssn": "A-1", "name": "Ann", "surname": "Lee", "salary": "52000.00"})
    )
    assert person == {
        "ssn": "A-1",
        "name": "Ann",
        "surname": "Lee",
        "job": "",
        "salary": "52000.00",
        "updated": "2023-11-14T22:13:20.000Z",
    }
    assert result_of(service.get("A-1")) == person
    service.clock.advance(1.5)
    person = result_of(service.update("A-1", {"job": "cook", "salary": 100}))
    assert (person["job"], person["salary"], person["updated"]) == (
        "cook",
        "100",
        "2023-11-14T22:13:21.500Z",
    )
    assert [p["ssn"] for p in result_of(service.list("COOK"))] == ["A-1"]
    assert result_of(service.list("nobody")) == []
    assert result_of(service.delete("A-1")) is None
    assert failure_of(service.get("A-1"), NotFound).code == 550
    assert failure_of(service.delete("A-1"), NotFound).code == 550
    assert failure_of(service.update("A-1", {"job": "x"}), NotFound).code == 550


def test_validation_errors_are_failed_deferreds(service):
    for d in [
        service.add({"ssn": "bad ssn", "name": "A", "surname": "B"}),
        service.add({"ssn": "ok", "name": "A"}),
        service.add({"ssn": "ok", "name": "A", "surname": "B", "age": "3"}),
        service.update("ok", {"ssn": "other"}),
        service.get("%"),
        service.list(limit="many"),
        service.list(offset="-1"),
        service.send("x y", "alice"),
        service.send("p1", "not a name"),
        service.openSync("alice", FakeSink(), after="-1"),
        service.ack("alice", "x"),
    ]:
        assert failure_of(d, BadArguments).code == 501


def test_list_limits(service):
    add_people(service, 6)
    assert len(result_of(service.list(limit="2"))) == 2
    assert [p["ssn"] for p in result_of(service.list(limit=2, offset="3"))] == ["p03", "p04"]
    assert len(result_of(service.list(limit="100000"))) == 6
    assert len(result_of(service.list(limit="0"))) == 1


def test_send_all_to_all_reaches_online_and_offline_clients(service):
    add_people(service, 6)
    feed, sink = open_stream(service, "alice")
    result_of(service.store.register_client("bob", 0))  # known but offline
    assert feed.caughtUp and sink.lines == []
    assert result_of(service.send("*", "*")) == 12
    # alice is online: the notify made her feed read the new pages now.
    assert sink.seqs() == [1, 2, 3, 4, 5, 6]
    assert sink.lines[0].startswith('610 1 SAVE {"ssn":"p00","name":"N0"')
    clients = {c["client"]: c for c in result_of(service.clients())}
    assert clients["alice"]["online"] is True and clients["bob"]["online"] is False
    assert clients["bob"]["pending"] == 6 and clients["bob"]["last_seen"] is not None
    # bob connects later and gets his whole queue.
    _, bob = open_stream(service, "bob")
    assert bob.seqs() == [1, 2, 3, 4, 5, 6]


def test_remove_pushes_delete_and_delete_all(service):
    add_people(service, 2)
    feed, sink = open_stream(service, "alice")
    assert result_of(service.remove("p01", "alice")) == 1
    assert result_of(service.remove("*", "*")) == 1
    assert sink.lines == ['611 1 DELETE {"ssn":"p01"}', "612 2 DELETE_ALL {}"]


def test_target_by_name_before_first_sync(service):
    add_people(service, 1)
    assert failure_of(service.send("p00", "nobody"), NotFound).text == "no such client nobody"
    assert failure_of(service.send("p99", "carol"), NotFound).code == 550
    assert result_of(service.send("p00", "carol")) == 1
    clients = result_of(service.clients())
    assert clients == [
        {"client": "carol", "online": False, "pending": 1, "acked": 0, "last_seen": None}
    ]
    _, sink = open_stream(service, "carol")
    assert sink.seqs() == [1]


def test_ack_and_resend_on_next_sync(service):
    add_people(service, 5)
    feed, sink = open_stream(service, "alice")
    result_of(service.send("*", "alice"))
    assert sink.seqs() == [1, 2, 3, 4, 5]
    assert result_of(service.ack("alice", "2")) == 2
    assert result_of(service.ack("alice", 1)) == 2
    assert failure_of(service.ack("alice", 6), BadArguments).code == 501
    feed.stop()  # the connection closed
    assert not service.isOnline("alice")
    _, again = open_stream(service, "alice")
    assert again.seqs() == [3, 4, 5]  # unacknowledged ones again
    _, later = open_stream(service, "alice", after=4)
    assert later.seqs() == [5]
    clients = result_of(service.clients())
    assert clients[0]["pending"] == 3 and clients[0]["acked"] == 2


def test_second_sync_replaces_the_first(service):
    add_people(service, 1)
    first, sink1 = open_stream(service, "alice")
    second, sink2 = open_stream(service, "alice")
    assert first.stopped and sink1.replaced == 1 and not second.stopped
    assert service.onlineClients() == ["alice"]
    first.stop()  # its connection closes later
    assert service.isOnline("alice")
    result_of(service.send("p00", "alice"))
    assert sink1.lines == [] and sink2.seqs() == [1]
    second.stop()
    assert not service.isOnline("alice")


def test_messages_and_overview(service):
    add_people(service, 2)
    open_stream(service, "alice")
    result_of(service.send("*", "alice"))
    result_of(service.ack("alice", 1))
    rows = result_of(service.messages())
    assert [(m["seq"], m["ssn"], m["acked"]) for m in rows] == [
        (2, "p01", False),
        (1, "p00", True),
    ]
    assert result_of(service.messages(client="*", limit="1"))[0]["seq"] == 2
    assert result_of(service.messages(client="bob")) == []
    view = result_of(service.overview(limit=1))
    assert view["person_count"] == 2 and len(view["persons"]) == 1
    assert view["online"] == ["alice"] and view["clients"][0]["online"] is True
    assert len(view["messages"]) == 1


def test_prune_keeps_pending_messages(service):
    add_people(service, 3)
    open_stream(service, "alice")
    result_of(service.send("*", "alice"))
    result_of(service.ack("alice", 2))
    service.clock.advance(8 * 86400)
    assert result_of(service.prune(7)) == 2
    assert [m["seq"] for m in result_of(service.messages())] == [3]


# -- the whole path through the real threaded pool ------------------------------


@pytest.fixture
def threaded_service(tmp_path):
    engine = create_engine("sqlite:///" + str(tmp_path / "p.db"))
    metadata.create_all(engine)
    pool = DBPool(engine, retry_delays=(0.05,))
    pool.start()
    yield PersonnelService(P.PersonnelStore(pool), page_size=100)
    pytest_twisted.blockon(pool.stop())


@pytest_twisted.inlineCallbacks
def test_sync_stream_through_the_pool(threaded_service):
    from twisted.internet import reactor

    service = threaded_service
    for i in range(250):
        yield service.add({"ssn": "p%03d" % i, "name": "N", "surname": "S"})
    sink = FakeSink()
    feed = yield service.openSync("alice", sink)
    feed.start()
    queued = yield service.send("*", "alice")
    assert queued == 250
    deadline = reactor.seconds() + 10
    while len(sink.lines) < 250 and reactor.seconds() < deadline:
        yield task.deferLater(reactor, 0.01, lambda: None)
    feed.stop()
    assert sink.seqs() == list(range(1, 251))

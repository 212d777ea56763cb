"""
The personnel tables (the roster, L{netshare.storage.roster}, and the sync
outbox, L{netshare.storage.outbox}): thd_* functions on a real database
(SQLite always, PostgreSQL and MariaDB when the conftest is told their
URLs), and the L{netshare.storage.personnel.PersonnelStore} over both.
"""

import threading

import pytest
import pytest_twisted
import sqlalchemy as sa
from sqlalchemy import event

from netshare.errors import BadArguments, Conflict, NotFound
from netshare.storage import outbox as O
from netshare.storage import personnel as P
from netshare.storage import roster as R
from netshare.storage.schema import accounts

NOW = 1_700_000_000_000


def run(engine, fn, *args, **kwargs):
    """One transaction, as the DBPool would run it."""
    with engine.begin() as conn:
        return fn(conn, *args, **kwargs)


def add(engine, ssn, name="Ann", surname="Lee", job="", salary="", now=NOW):
    return run(
        engine,
        R.thd_add_person,
        ssn,
        {"name": name, "surname": surname, "job": job, "salary": salary},
        now,
    )


def make_account(engine, name, role="user"):
    with engine.begin() as conn:
        conn.execute(
            sa.insert(accounts).values(
                name=name, name_key=name.lower(), role=role, password_hash="x", created_ms=NOW
            )
        )


def outbox_rows(engine, client):
    with engine.connect() as conn:
        return conn.execute(
            sa.select(O.outbox).where(O.outbox.c.client == client).order_by(O.outbox.c.seq)
        ).all()


@pytest.fixture
def engine(db_engine):
    return db_engine


# -- the roster ---------------------------------------------------------------

NASTY = [
    "'; DROP TABLE personnel;--",
    "%",
    "_",
    "100%_sure",
    "back\\slash",
    "sl/ash",
    'quote"d',
    "Ünïcödé ✓",
]


def test_nasty_text_is_stored_and_found_literally(engine):
    for i, name in enumerate(NASTY):
        add(engine, "n%d" % i, name=name, surname=name, job=name)
    add(engine, "plain", name="Plain", surname="Person", job="clerk")
    for i, name in enumerate(NASTY):
        person = run(engine, R.thd_get_person, "n%d" % i)
        assert (person.name, person.surname, person.job) == (name, name, name)
    assert "personnel" in sa.inspect(engine).get_table_names()

    def found(text):
        return sorted(p.ssn for p in run(engine, R.thd_list_persons, text))

    # % and _ are not wildcards: only the rows that contain them literally.
    assert found("%") == ["n1", "n3"]
    assert found("_") == ["n2", "n3"]
    assert found("%_") == ["n3"]
    assert found("\\") == ["n4"]
    assert found("/") == ["n5"]
    assert found('"') == ["n6"]
    assert found("'; drop table") == ["n0"]  # case-insensitive
    assert found("✓") == ["n7"]
    assert found("PLAIN") == ["plain"]
    assert found("CLERK") == ["plain"]  # job matches too
    assert found("PLA") == ["plain"]  # ssn matches too (lowered)
    assert found("zzz") == []


def test_list_order_limit_offset_clamped(engine):
    for i in range(12):
        add(engine, "s%02d" % i)
    ssns = [p.ssn for p in run(engine, R.thd_list_persons)]
    assert ssns == ["s%02d" % i for i in range(12)]
    assert [p.ssn for p in run(engine, R.thd_list_persons, None, 3, 4)] == ["s04", "s05", "s06"]
    assert len(run(engine, R.thd_list_persons, None, 0)) == 1  # clamped up to 1
    assert len(run(engine, R.thd_list_persons, None, 10**9)) == 12  # clamped to the max
    assert [p.ssn for p in run(engine, R.thd_list_persons, None, 2, -5)] == ["s00", "s01"]
    assert R.clamp_limit(None) == 50 and R.clamp_limit(5000) == 1000
    assert run(engine, R.thd_count_persons) == 12


def test_add_conflict_update_delete(engine):
    person = add(engine, "A-1", name="Ann", salary="52000.00")
    assert person.salary == "52000.00" and person.job == "" and person.updated_ms == NOW
    assert person.to_wire() == {
        "ssn": "A-1",
        "name": "Ann",
        "surname": "Lee",
        "job": "",
        "salary": "52000.00",
        "updated": "2023-11-14T22:13:20.000Z",
    }
    with pytest.raises(Conflict) as e:
        add(engine, "A-1")
    assert e.value.code == 555
    updated = run(engine, R.thd_update_person, "A-1", {"job": "boss", "salary": "1e6"}, NOW + 5)
    assert (updated.name, updated.job, updated.salary, updated.updated_ms) == (
        "Ann",
        "boss",
        "1e6",
        NOW + 5,
    )
    with pytest.raises(NotFound) as e:
        run(engine, R.thd_update_person, "nobody", {"job": "x"}, NOW)
    assert e.value.code == 550
    with pytest.raises(BadArguments):
        run(engine, R.thd_update_person, "A-1", {"ssn": "B"}, NOW)
    run(engine, R.thd_delete_person, "A-1")
    with pytest.raises(NotFound):
        run(engine, R.thd_get_person, "A-1")
    with pytest.raises(NotFound):
        run(engine, R.thd_delete_person, "A-1")


# -- clients and queueing ------------------------------------------------------


def test_register_client_keeps_first_seen(engine):
    info = run(engine, O.thd_register_client, "alice", NOW)
    assert (info.first_seen_ms, info.last_seen_ms, info.acked_seq, info.pending) == (
        NOW,
        NOW,
        0,
        0,
    )
    info = run(engine, O.thd_register_client, "alice", NOW + 1000)
    assert (info.first_seen_ms, info.last_seen_ms) == (NOW, NOW + 1000)
    assert [c.name for c in run(engine, O.thd_list_clients)] == ["alice"]


def test_enqueue_10000_persons_to_10_clients_is_batched(engine):
    with engine.begin() as conn:
        conn.execute(
            sa.insert(R.personnel),
            [
                {
                    "ssn": "p%05d" % i,
                    "name": "N%d" % i,
                    "surname": "S",
                    "job": "",
                    "salary": str(i),
                    "updated_ms": NOW,
                }
                for i in range(10000)
            ],
        )
    clients = ["c%d" % i for i in range(10)]
    for c in clients:
        run(engine, O.thd_register_client, c, NOW)

    statements = []

    def count(conn, cursor, statement, parameters, context, executemany):
        statements.append(statement)

    event.listen(engine, "before_cursor_execute", count)
    try:
        result = run(engine, O.thd_enqueue, "*", "*", O.SAVE, NOW + 1)
    finally:
        event.remove(engine, "before_cursor_execute", count)

    assert result.count == 100_000
    assert result.ranges == {c: (1, 10000) for c in clients}
    # 20 executemany chunks of 5000 rows plus a few reads and one seq update
    # (23-24 on all three databases): nowhere near one per row.
    assert len(statements) <= 40, len(statements)

    for c in ("c0", "c9"):
        rows = outbox_rows(engine, c)
        assert [r.seq for r in rows] == list(range(1, 10001))
        assert rows[42].ssn == "p00042" and rows[42].action == "SAVE"
        assert '"salary":"42"' in rows[42].payload

    # The next batch continues each client's sequence without a gap.
    result = run(engine, O.thd_enqueue, "p00007", "*", O.SAVE, NOW + 2)
    assert result.count == 10 and result.ranges["c3"] == (10001, 10001)
    result = run(engine, O.thd_enqueue, "*", "c3", O.DELETE, NOW + 3)
    assert result.ranges == {"c3": (10002, 10002)}
    infos = {c.name: c for c in run(engine, O.thd_list_clients)}
    assert infos["c3"].pending == 10002 and infos["c4"].pending == 10001


def test_enqueue_actions_and_payloads(engine):
    add(engine, "a1", name="Ann")
    add(engine, "b2", name="Bob")
    run(engine, O.thd_register_client, "alice", NOW)
    assert run(engine, O.thd_enqueue, "a1", "alice", O.SAVE, NOW).count == 1
    assert run(engine, O.thd_enqueue, "b2", "alice", O.DELETE, NOW).count == 1
    # REMOVE of a person the server no longer has is still allowed.
    assert run(engine, O.thd_enqueue, "gone", "alice", O.DELETE, NOW).count == 1
    assert run(engine, O.thd_enqueue, "*", "alice", O.DELETE, NOW).count == 1
    with pytest.raises(NotFound):
        run(engine, O.thd_enqueue, "gone", "alice", O.SAVE, NOW)
    # The payload is a snapshot: changing the person later does not alter it.
    run(engine, R.thd_update_person, "a1", {"name": "Changed"}, NOW + 1)
    rows = outbox_rows(engine, "alice")
    assert [(r.seq, r.action, r.ssn) for r in rows] == [
        (1, "SAVE", "a1"),
        (2, "DELETE", "b2"),
        (3, "DELETE", "gone"),
        (4, "DELETE_ALL", None),
    ]
    assert '"name":"Ann"' in rows[0].payload
    assert rows[1].payload == '{"ssn":"b2"}' and rows[3].payload == "{}"


def test_save_payloads_are_exactly_the_wire_json():
    """The fast payload builder gives the very text of wire.dumps(to_wire())
    (same keys, order, escapes): clients may compare payloads as text."""
    tricky = NASTY + [
        "",
        "tab\there",
        "nl\nand\rcr",
        "ctl\x00\x1f\x7f",
        "line\u2028sep\u2029",
        "emoji \U0001f600",
        '\\"',
        "\ud7ff\ue000",
    ]
    persons = [
        R.Person("s%d" % i, t, t[::-1], t + "job", t[:8], NOW + i * 7)
        for i, t in enumerate(tricky)
    ]
    rows = [(p.ssn, p.name, p.surname, p.job, p.salary, p.updated_ms) for p in persons]
    assert R.save_payloads(rows) == [R.person_payload(p) for p in persons]
    assert all("\u2028" not in t and "\n" not in t for t in R.save_payloads(rows))


def test_enqueue_reads_the_roster_in_pages_and_writes_in_chunks(engine):
    for i in range(23):
        add(engine, "p%02d" % i, name="N%d" % i, surname=NASTY[i % len(NASTY)], now=NOW + i)
    for c in ("alice", "bob", "carol"):
        run(engine, O.thd_register_client, c, NOW)
    run(engine, O.thd_enqueue, "p03", "bob", O.SAVE, NOW)  # bob is one ahead
    statements = []

    def count(conn, cursor, statement, parameters, context, executemany):
        if statement.lstrip().upper().startswith("INSERT"):
            statements.append(len(parameters) if executemany else 1)

    event.listen(engine, "before_cursor_execute", count)
    try:
        # 23 persons, 5 per page, at most 7 rows per executemany.
        result = run(engine, O.thd_enqueue, "*", "*", O.SAVE, NOW + 100, chunk=7, page=5)
    finally:
        event.remove(engine, "before_cursor_execute", count)
    assert result.count == 69
    assert result.ranges == {"alice": (1, 23), "bob": (2, 24), "carol": (1, 23)}
    assert sum(statements) == 69 and max(statements) <= 7 and len(statements) >= 10
    expected = [R.person_payload(run(engine, R.thd_get_person, "p%02d" % i)) for i in range(23)]
    for c, first in (("alice", 1), ("bob", 2), ("carol", 1)):
        rows = [r for r in outbox_rows(engine, c) if r.seq >= first]
        assert [r.seq for r in rows] == list(range(first, first + 23))  # no gap
        assert [r.ssn for r in rows] == ["p%02d" % i for i in range(23)]  # ssn order
        assert [r.payload for r in rows] == expected
        assert {r.created_ms for r in rows} == {NOW + 100}
    infos = {c.name: c for c in run(engine, O.thd_list_clients)}
    assert (infos["alice"].next_seq, infos["bob"].next_seq) == (24, 25)
    # A roster that is an exact multiple of the page ends cleanly too.
    run(engine, R.thd_delete_person, "p22")
    run(engine, R.thd_delete_person, "p21")
    run(engine, R.thd_delete_person, "p20")
    assert run(engine, O.thd_enqueue, "*", "alice", O.SAVE, NOW, page=5).ranges == {
        "alice": (24, 43)
    }


def test_enqueue_with_no_clients_or_no_persons(engine):
    add(engine, "a1")
    assert run(engine, O.thd_enqueue, "*", "*", O.SAVE, NOW) == O.EnqueueResult(0, {})
    run(engine, O.thd_register_client, "alice", NOW)
    run(engine, R.thd_delete_person, "a1")
    assert run(engine, O.thd_enqueue, "*", "*", O.SAVE, NOW).count == 0
    assert run(engine, O.thd_get_client, "alice").next_seq == 1


def test_named_target_that_never_connected(engine):
    add(engine, "a1")
    with pytest.raises(NotFound) as e:
        run(engine, O.thd_enqueue, "a1", "bob", O.SAVE, NOW)
    assert e.value.text == "no such client bob"
    assert run(engine, O.thd_list_clients) == []  # rolled back, nothing created
    make_account(engine, "Bob")
    result = run(engine, O.thd_enqueue, "a1", "bob", O.SAVE, NOW)
    assert result.ranges == {"Bob": (1, 1)}  # the account's own spelling
    info = run(engine, O.thd_get_client, "Bob")
    assert info.last_seen_ms is None and info.pending == 1
    # Now a known client: included in "*" and found by its name.
    assert run(engine, O.thd_enqueue, "a1", "*", O.SAVE, NOW).ranges == {"Bob": (2, 2)}
    assert run(engine, O.thd_enqueue, "a1", "Bob", O.SAVE, NOW).ranges == {"Bob": (3, 3)}
    # Its first SYNC finds the queue.
    run(engine, O.thd_register_client, "Bob", NOW + 1)
    assert [m.seq for m in run(engine, O.thd_pending_page, "Bob", 0, 10)] == [1, 2, 3]


def test_pending_page_and_cumulative_ack(engine):
    for i in range(8):
        add(engine, "p%d" % i)
    run(engine, O.thd_register_client, "alice", NOW)
    run(engine, O.thd_enqueue, "*", "alice", O.SAVE, NOW)

    def page(after, limit=3):
        return [m.seq for m in run(engine, O.thd_pending_page, "alice", after, limit)]

    assert page(0) == [1, 2, 3] and page(3) == [4, 5, 6] and page(6) == [7, 8] and page(8) == []
    msg = run(engine, O.thd_pending_page, "alice", 0, 1)[0]
    assert (msg.client, msg.action, msg.ssn) == ("alice", "SAVE", "p0")

    assert run(engine, O.thd_ack, "alice", 5) == 5
    assert page(0) == [6, 7, 8]  # acknowledged ones are not sent again
    assert page(7) == [8]  # "after" above the ack wins
    assert run(engine, O.thd_ack, "alice", 2) == 5  # a late, lower ack changes nothing
    assert run(engine, O.thd_get_client, "alice").pending == 3
    with pytest.raises(BadArguments):
        run(engine, O.thd_ack, "alice", 9)  # never queued
    with pytest.raises(NotFound):
        run(engine, O.thd_ack, "nobody", 1)
    assert run(engine, O.thd_ack, "alice", 8) == 8
    assert run(engine, O.thd_get_client, "alice").pending == 0
    assert page(0) == []
    assert run(engine, O.thd_pending_page, "unknown", 0, 10) == []


def test_messages_listing_and_prune(engine):
    add(engine, "a1")
    for c in ("alice", "bob"):
        run(engine, O.thd_register_client, c, NOW)
    run(engine, O.thd_enqueue, "a1", "*", O.SAVE, NOW)
    run(engine, O.thd_enqueue, "a1", "*", O.DELETE, NOW + 10)
    run(engine, O.thd_ack, "alice", 1)

    rows = run(engine, O.thd_list_messages)
    assert [(m.client, m.seq, m.action, m.acked) for m in rows] == [
        ("alice", 2, "DELETE", False),
        ("bob", 2, "DELETE", False),
        ("alice", 1, "SAVE", True),
        ("bob", 1, "SAVE", False),
    ]
    assert rows[1].to_wire() == {
        "seq": 2,
        "client": "bob",
        "action": "DELETE",
        "ssn": "a1",
        "created": "2023-11-14T22:13:20.010Z",
        "acked": False,
    }
    assert [m.seq for m in run(engine, O.thd_list_messages, "alice")] == [2, 1]
    assert len(run(engine, O.thd_list_messages, None, 1)) == 1

    # Only acknowledged rows older than the cutoff go.
    assert run(engine, O.thd_prune_acked, NOW + 5) == 1
    assert [(m.client, m.seq) for m in run(engine, O.thd_list_messages)] == [
        ("alice", 2),
        ("bob", 2),
        ("bob", 1),
    ]
    run(engine, O.thd_ack, "alice", 2)
    assert run(engine, O.thd_prune_acked, NOW + 5) == 0  # too new
    assert run(engine, O.thd_prune_acked, NOW + 11) == 1
    assert run(engine, O.thd_get_client, "alice").pending == 0


def test_concurrent_batches_get_distinct_gapless_seqs(engine):
    """Two writers queueing for the same clients at once (row locks on
    PostgreSQL/MariaDB, the single writer on SQLite)."""
    for i in range(20):
        add(engine, "p%02d" % i)
    for c in ("alice", "bob"):
        run(engine, O.thd_register_client, c, NOW)
    errors = []

    def worker():
        try:
            for _ in range(5):
                run(engine, O.thd_enqueue, "*", "*", O.SAVE, NOW)
        except Exception as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads)
    assert errors == []
    for c in ("alice", "bob"):
        assert [r.seq for r in outbox_rows(engine, c)] == list(range(1, 201))
        assert run(engine, O.thd_get_client, c).next_seq == 201


# -- the asynchronous facade on the real pool ---------------------------------


@pytest_twisted.inlineCallbacks
def test_store_facade_through_the_pool(db_pool):
    store = P.PersonnelStore(db_pool)
    person = yield store.add("x1", {"name": "Xi", "surname": "Yu"}, NOW)
    assert person.ssn == "x1"
    yield store.register_client("alice", NOW)
    result = yield store.enqueue("*", "*", O.SAVE, NOW)
    assert result.ranges == {"alice": (1, 1)}
    page = yield store.pending_page("alice", 0, 10)
    assert [m.seq for m in page] == [1]
    assert (yield store.ack("alice", 1)) == 1
    clients = yield store.clients()
    assert clients[0].to_wire(online=False) == {
        "client": "alice",
        "online": False,
        "pending": 0,
        "acked": 1,
        "last_seen": "2023-11-14T22:13:20.000Z",
    }
    try:
        yield store.add("x1", {"name": "Xi", "surname": "Yu"}, NOW)
    except Conflict:
        pass
    else:
        pytest.fail("duplicate ADD was accepted")

"""
ttweet storage (netshare.storage.tweets): the thd_* functions on a real
database migrated to head (SQLite always; PostgreSQL / MariaDB when the
conftest's NETSHARE_TEST_* URLs are set), and the TweetStore facade through
a real DBPool.
"""

import pytest_twisted
import sqlalchemy as sa

from netshare.storage import tweets as T
from netshare.storage.schema import accounts

#: Timelines belong to accounts by id: a stable id per name used here.
ID = {
    name: i
    for i, name in enumerate(["alice", "bob", "carol", "dave", "reader", "r", "reg"], start=1)
}


def tweet(i, user="alice", message=None, hashtags="", ts_ms=None):
    return {
        "id": i,
        "user": user,
        "message": message if message is not None else "m%d" % i,
        "hashtags": hashtags,
        "ts_ms": ts_ms if ts_ms is not None else 1_700_000_000_000 + i,
    }


def run(engine, fn, *args):
    with engine.begin() as conn:
        return fn(conn, *args)


def test_empty_database(db_engine):
    assert run(db_engine, T.thd_max_tweet_id) == 0
    assert run(db_engine, T.thd_last_message) is None
    assert run(db_engine, T.thd_tweets_by, "alice", 10) == []
    assert run(db_engine, T.thd_timeline, ID["alice"], 10) == []
    assert run(db_engine, T.thd_user_known, "alice") is False


def test_save_batch_and_read_back(db_engine):
    rows = [tweet(1, "alice", hashtags="#cs#3251"), tweet(2, "bob"), tweet(3, "alice")]
    entries = [(1, [ID["carol"], ID["dave"]]), (2, [ID["carol"]]), (3, [ID["dave"], ID["carol"]])]
    assert run(db_engine, T.thd_save_batch, rows, entries) == 3
    assert run(db_engine, T.thd_max_tweet_id) == 3
    assert run(db_engine, T.thd_last_message) == "m3"
    by_alice = run(db_engine, T.thd_tweets_by, "alice", 10)
    assert by_alice == [
        T.TweetRow(1, "alice", "m1", "#cs#3251", 1_700_000_000_001),
        T.TweetRow(3, "alice", "m3", "", 1_700_000_000_003),
    ]
    assert [r.id for r in run(db_engine, T.thd_timeline, ID["carol"], 10)] == [1, 2, 3]
    assert [r.id for r in run(db_engine, T.thd_timeline, ID["dave"], 10)] == [1, 3]
    assert run(db_engine, T.thd_timeline, ID["alice"], 10) == []


def test_limits_keep_most_recent_oldest_first(db_engine):
    rows = [tweet(i) for i in range(1, 21)]
    run(db_engine, T.thd_save_batch, rows, [(i, [ID["reader"]]) for i in range(1, 21)])
    assert [r.id for r in run(db_engine, T.thd_tweets_by, "alice", 5)] == [16, 17, 18, 19, 20]
    assert [r.id for r in run(db_engine, T.thd_timeline, ID["reader"], 3)] == [18, 19, 20]
    assert run(db_engine, T.thd_tweets_by, "alice", -5) == []  # clamped, no error
    assert len(run(db_engine, T.thd_timeline, ID["reader"], 10**12)) == 20


def test_timeline_order_follows_batches(db_engine):
    run(db_engine, T.thd_save_batch, [tweet(1), tweet(2)], [(1, [ID["r"]]), (2, [ID["r"]])])
    run(db_engine, T.thd_save_batch, [tweet(3)], [(3, [ID["r"]])])
    assert [r.id for r in run(db_engine, T.thd_timeline, ID["r"], 10)] == [1, 2, 3]


def test_replayed_batch_is_skipped_not_duplicated(db_engine):
    rows = [tweet(1), tweet(2)]
    entries = [(1, [ID["r"]]), (2, [ID["r"]])]
    assert run(db_engine, T.thd_save_batch, rows, entries) == 2
    # the same batch again (commit succeeded, answer lost), plus one new tweet
    assert run(db_engine, T.thd_save_batch, rows + [tweet(3)], entries + [(3, [ID["r"]])]) == 1
    assert [r.id for r in run(db_engine, T.thd_tweets_by, "alice", 10)] == [1, 2, 3]
    assert [r.id for r in run(db_engine, T.thd_timeline, ID["r"], 10)] == [1, 2, 3]


def test_large_batch_spans_in_chunks(db_engine):
    n = 1200  # > the IN (...) chunk size
    rows = [tweet(i, "u%d" % (i % 7)) for i in range(1, n + 1)]
    assert run(db_engine, T.thd_save_batch, rows, [(i, [ID["r"]]) for i in range(1, n + 1)]) == n
    assert run(db_engine, T.thd_save_batch, rows, []) == 0
    assert run(db_engine, T.thd_max_tweet_id) == n
    assert len(run(db_engine, T.thd_timeline, ID["r"], 5000)) == n


def test_values_are_stored_literally(db_engine):
    nasty = '\'; DROP TABLE tweets;-- %_ \\ "x"'
    emoji = "\U0001f600" * 150
    combining = "e\u0301" * 75
    rows = [
        tweet(1, message=nasty),
        tweet(2, message=emoji),
        tweet(3, message=combining),
        tweet(4, message="héllo 世界", hashtags="#a" * 5),
    ]
    run(db_engine, T.thd_save_batch, rows, [])
    got = run(db_engine, T.thd_tweets_by, "alice", 10)
    assert [r.message for r in got] == [nasty, emoji, combining, "héllo 世界"]
    assert got[3].hashtags == "#a#a#a#a#a"
    assert run(db_engine, T.thd_last_message) == "héllo 世界"


def test_names_are_exact_case_sensitive(db_engine):
    run(
        db_engine,
        T.thd_save_batch,
        [tweet(1, "Alice"), tweet(2, "alice")],
        [(1, [ID["bob"]]), (2, [ID["carol"]])],
    )
    assert [r.id for r in run(db_engine, T.thd_tweets_by, "Alice", 10)] == [1]
    assert [r.id for r in run(db_engine, T.thd_tweets_by, "alice", 10)] == [2]
    assert [r.id for r in run(db_engine, T.thd_timeline, ID["carol"], 10)] == [2]


def test_user_known_by_account_or_tweets(db_engine):
    with db_engine.begin() as conn:
        conn.execute(
            accounts.insert().values(
                name="Carol", name_key="carol", role="user", password_hash="x", created_ms=0
            )
        )
    run(db_engine, T.thd_save_batch, [tweet(1, "dave")], [])
    assert run(db_engine, T.thd_user_known, "Carol") is True
    assert run(db_engine, T.thd_user_known, "carol") is True  # account names: any case
    assert run(db_engine, T.thd_user_known, "dave") is True
    assert run(db_engine, T.thd_user_known, "Dave") is False  # tweets: exact name
    assert run(db_engine, T.thd_user_known, "erin") is False
    assert run(db_engine, T.thd_user_known, "x" * 500) is False


def test_migration_creates_the_tables_of_the_metadata(db_engine):
    insp = sa.inspect(db_engine)
    for table in (T.tweets, T.timelines):
        cols = {c["name"] for c in insp.get_columns(table.name)}
        assert cols == {c.name for c in table.columns}
        assert insp.get_pk_constraint(table.name)["constrained_columns"] == ["id"]
        indexes = {i["name"]: i["column_names"] for i in insp.get_indexes(table.name)}
        for ix in table.indexes:
            assert indexes.get(ix.name) == [c.name for c in ix.columns]


@pytest_twisted.inlineCallbacks
def test_tweet_store_facade_through_pool(db_pool):
    store = T.TweetStore(db_pool)
    n = yield store.save_batch(
        [tweet(1, "alice"), tweet(2, "bob")], [(1, [ID["bob"]]), (2, [ID["bob"]])]
    )
    assert n == 2
    assert (yield store.max_tweet_id()) == 2
    assert (yield store.last_message()) == "m2"
    assert [r.id for r in (yield store.tweets_by("alice", 10))] == [1]
    assert [r.id for r in (yield store.timeline(ID["bob"], 10))] == [1, 2]
    assert (yield store.user_known("bob")) is True
    assert (yield store.user_known("nobody")) is False


class _Session:
    def __init__(self, name, registered):
        self.username = name
        self.account_id = ID[name] if registered else None
        self.pushes = []

    def sendPush(self, data):
        self.pushes.append(data)


@pytest_twisted.inlineCallbacks
def test_hub_state_survives_restart(db_pool):
    """GETTWEETS, LAST and a registered user's TIMELINE come back after a
    restart; a guest's timeline does not outlive its session."""
    from twisted.internet import reactor

    from netshare.services.ttweet.hub import Hub

    hub = Hub(T.TweetStore(db_pool))
    yield hub.start().addTimeout(5, reactor)
    reg, guest, poster = _Session("reg", True), _Session("guest", False), _Session("poster", False)
    for s in (reg, guest, poster):
        hub.login(s)
    hub.subscribe(reg, "#t")
    hub.subscribe(guest, "#ALL")
    first = yield hub.publish(poster, "first", "#t").addTimeout(5, reactor)
    hub.publish(poster, "second")  # stop() must flush this one
    yield hub.stop().addTimeout(5, reactor)
    assert len(guest.pushes) == 2 and len(reg.pushes) == 1

    hub2 = Hub(T.TweetStore(db_pool))
    yield hub2.start().addTimeout(5, reactor)
    assert (yield hub2.last()) == "second"
    got = yield hub2.tweets_by("poster").addTimeout(5, reactor)
    assert [(t["id"], t["message"], t["hashtags"]) for t in got] == [
        (first["id"], "first", "#t"),
        (first["id"] + 1, "second", ""),
    ]
    assert got[0]["ts"] == first["ts"]
    reg2, guest2 = _Session("reg", True), _Session("guest", False)
    hub2.login(reg2)
    hub2.login(guest2)
    assert [t["message"] for t in (yield hub2.timeline(reg2).addTimeout(5, reactor))] == ["first"]
    assert (yield hub2.timeline(guest2)) == []
    hub2.subscribe(reg2, "#ALL")
    third = yield hub2.publish(reg2, "third").addTimeout(5, reactor)
    assert third["id"] == first["id"] + 2  # ids continue
    yield hub2.stop().addTimeout(5, reactor)

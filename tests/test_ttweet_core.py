"""
The ttweet core (netshare.services.ttweet): validation texts of docs/protocol.md section 3,
subscriptions, fan-out, flood limit, timelines and the batch writer.

No sockets and no database: sessions are fakes with C{sendPush}, the store is
an in-memory fake whose answers the tests control, time is a L{Clock}.
"""

import json

import pytest
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock

from netshare.errors import (
    BadArguments,
    Conflict,
    DatabaseUnavailable,
    LimitExceeded,
    LoginRequired,
    NameNotAllowed,
    NotFound,
    RateLimited,
    TemporaryError,
)
from netshare.services.ttweet import rules
from netshare.services.ttweet.hub import Hub
from netshare.storage.tweets import TweetRow
from netshare.throttle import TokenBuckets

# --- fakes -------------------------------------------------------------------

#: Registered users' account ids, one per name (the hub keys timelines by id).
ACCOUNT_IDS = {}


class FakeSession:
    def __init__(self, name, registered=False):
        self.username = name
        self.account_id = (
            ACCOUNT_IDS.setdefault(name, len(ACCOUNT_IDS) + 1) if registered else None
        )
        self.pushes = []

    def sendPush(self, data):
        self.pushes.append(data)

    def tweets(self):
        out = []
        for line in self.pushes:
            assert line.startswith(b"600 ") and line.endswith(b"\r\n")
            out.append(json.loads(line[4:-2].decode("utf-8")))
        return out


class FakeStore:
    """
    Stores batches in memory.  C{failures} makes the next N save_batch calls
    fail; C{manual} makes save_batch return an unfired Deferred the test
    fires (in C{calls}).
    """

    def __init__(self, max_id=0, last=None):
        self.tweets = {}
        self.timelines = []
        self.batches = []
        self.failures = 0
        self.manual = False
        self.calls = []
        self._max_id = max_id
        self._last = last
        self.accounts = set()

    def save_batch(self, tweet_rows, entries, journals=()):
        self.batches.append((list(tweet_rows), list(entries)))
        if self.manual:
            d = Deferred()
            self.calls.append((d, tweet_rows, entries))
            return d
        if self.failures:
            self.failures -= 1
            return fail(DatabaseUnavailable())
        self.apply(tweet_rows, entries)
        return succeed(len(tweet_rows))

    def apply(self, tweet_rows, entries):
        for t in tweet_rows:
            self.tweets[t["id"]] = t
        for tid, users in entries:
            for u in users:
                self.timelines.append((u, tid))

    def max_tweet_id(self):
        return succeed(self._max_id)

    def last_message(self):
        return succeed(self._last)

    def _row(self, t):
        return TweetRow(t["id"], t["user"], t["message"], t["hashtags"], t["ts_ms"])

    def tweets_by(self, user, limit):
        rows = [self._row(t) for _, t in sorted(self.tweets.items()) if t["user"] == user]
        return succeed(rows[-limit:])

    def timeline(self, user, limit):
        rows = [self._row(self.tweets[tid]) for u, tid in self.timelines if u == user]
        return succeed(rows[-limit:])

    def user_known(self, user):
        return succeed(
            user.lower() in self.accounts or any(t["user"] == user for t in self.tweets.values())
        )


def result_of(d):
    """The result of an already-fired Deferred (raises its failure)."""
    out = []
    d.addBoth(out.append)
    assert out, "Deferred has not fired"
    if hasattr(out[0], "raiseException"):
        out[0].raiseException()
    return out[0]


def failure_of(d):
    out = []
    d.addBoth(out.append)
    assert out, "Deferred has not fired"
    assert hasattr(out[0], "raiseException"), "Deferred succeeded with %r" % (out[0],)
    return out[0].value


def make_hub(**kw):
    """A hub on a Clock; its batch writer waits 50 ms before a batch (the
    timer mode, so the batch tests can see a batch form) unless the test
    asks for group commit (C{batch_interval=0}, the server's default)."""
    kw.setdefault("batch_interval", 0.05)
    clock = Clock()
    clock.advance(1_700_000_000)
    store = kw.pop("store", None) or FakeStore()
    hub = Hub(store, clock=clock, **kw)
    result_of(hub.start())
    return hub, store, clock


def online(hub, *names, registered=False):
    sessions = []
    for n in names:
        s = FakeSession(n, registered)
        hub.login(s)
        sessions.append(s)
    return sessions


# --- validation --------------------------------------------------------------


@pytest.mark.parametrize("name", ["a", "A1", "x" * 32, "abcXYZ0189"])
def test_username_ok(name):
    assert rules.check_username(name) == name


@pytest.mark.parametrize("name", ["", "x" * 33, "a b", "a_b", "a-b", "é", "a\n", "ａ", "١٢"])
def test_username_wrong_format(name):
    with pytest.raises(NameNotAllowed) as e:
        rules.check_username(name)
    assert e.value.replyLine() == "553 username has wrong format"


def test_message_150_code_points_ok_151_not():
    assert rules.check_message("a" * 150)
    with pytest.raises(LimitExceeded) as e:
        rules.check_message("a" * 151)
    assert e.value.replyLine() == "552 message length illegal"


def test_message_150_emoji_counts_code_points_not_bytes():
    msg = "\U0001f600" * 150
    assert len(msg.encode("utf-8")) == 600
    assert rules.check_message(msg) == msg
    with pytest.raises(LimitExceeded):
        rules.check_message(msg + "\U0001f600")


def test_message_combining_marks_are_code_points():
    # "e" + COMBINING ACUTE: one visible character, two code points.
    assert rules.check_message("e\u0301" * 75)
    with pytest.raises(LimitExceeded):
        rules.check_message("e\u0301" * 75 + "x")


@pytest.mark.parametrize("msg", ["", " ", "   \t ", "\u3000", " " * 150])
def test_message_empty_or_blank_is_format_error(msg):
    with pytest.raises(BadArguments) as e:
        rules.check_message(msg)
    assert e.value.replyLine() == "501 message format illegal"


@pytest.mark.parametrize("msg", ["a\rb", "a\x00", "\x1b[31mred", "a\u2028b", "a\ud800"])
def test_message_control_characters_are_format_error(msg):
    with pytest.raises(BadArguments) as e:
        rules.check_message(msg)
    assert e.value.text == "message format illegal"


def test_message_allows_ordinary_unicode():
    assert rules.check_message("héllo 世界 \u200d zwj") == "héllo 世界 \u200d zwj"


@pytest.mark.parametrize(
    "s,tags",
    [
        ("", ()),
        (None, ()),
        ("#cs", ("#cs",)),
        ("#cs#3251", ("#cs", "#3251")),
        ("#a#b#c#d#e", ("#a", "#b", "#c", "#d", "#e")),
        ("#" + "x" * 14, ("#" + "x" * 14,)),
        ("#all#All", ("#all", "#All")),
    ],
)
def test_hashtags_ok(s, tags):
    assert rules.parse_hashtags(s) == tags


@pytest.mark.parametrize(
    "s",
    [
        "#",
        "##",
        "#a##b",
        "#a#",
        "cs",
        "#cs #b",
        "#a#b#c#d#e#f",
        "#" + "x" * 15,
        "#ALL",
        "#cs#ALL",
        "#é",
        "#a-b",
        "#" + "a" * 1000,
        "#a" * 50,
        " #a",
    ],
)
def test_hashtags_illegal(s):
    with pytest.raises(NameNotAllowed) as e:
        rules.parse_hashtags(s)
    assert e.value.replyLine() == "553 hashtag illegal format"


@pytest.mark.parametrize("tag", ["#ALL", "#cs", "#" + "9" * 14])
def test_subscription_tag_ok(tag):
    assert rules.check_subscription_tag(tag) == tag


@pytest.mark.parametrize("tag", ["", "#", "cs", "#a#b", "#" + "x" * 15, "##", "#é"])
def test_subscription_tag_illegal(tag):
    with pytest.raises(NameNotAllowed) as e:
        rules.check_subscription_tag(tag)
    assert e.value.text == "hashtag illegal format"


# --- login and subscriptions ----------------------------------------------------


def test_login_name_online_is_conflict_and_logout_frees_it():
    hub, _, _ = make_hub()
    (a,) = online(hub, "alice")
    with pytest.raises(Conflict) as e:
        hub.login(FakeSession("alice"))
    assert e.value.replyLine() == "555 username illegal"
    with pytest.raises(NameNotAllowed):
        hub.login(FakeSession("bad name"))
    assert hub.online_users() == ["alice"]
    hub.logout(a)
    hub.logout(a)  # idempotent
    assert hub.online_users() == []
    hub.login(FakeSession("alice"))
    assert hub.online_users() == ["alice"]


def test_commands_need_login():
    hub, _, _ = make_hub()
    s = FakeSession("bob")
    with pytest.raises(LoginRequired):
        hub.subscribe(s, "#a")
    with pytest.raises(LoginRequired):
        hub.publish(s, "hi")
    with pytest.raises(LoginRequired):
        hub.timeline(s)


def test_three_subscriptions_all_counts_as_one():
    hub, _, _ = make_hub()
    (s,) = online(hub, "alice")
    hub.subscribe(s, "#ALL")
    hub.subscribe(s, "#a")
    hub.subscribe(s, "#b")
    with pytest.raises(LimitExceeded) as e:
        hub.subscribe(s, "#c")
    assert e.value.replyLine() == (
        "552 operation failed: sub #c failed, already exists or exceeds 3 limitation"
    )
    assert hub.subscriptions(s) == ["#ALL", "#a", "#b"]


def test_subscribe_twice_fails_with_exact_text():
    hub, _, _ = make_hub()
    (s,) = online(hub, "alice")
    hub.subscribe(s, "#cs")
    with pytest.raises(LimitExceeded) as e:
        hub.subscribe(s, "#cs")
    assert e.value.text == (
        "operation failed: sub #cs failed, already exists or exceeds 3 limitation"
    )
    with pytest.raises(NameNotAllowed):
        hub.subscribe(s, "#a#b")
    assert hub.subscriptions(s) == ["#cs"]


def test_unsubscribe_all_drops_all_unknown_changes_nothing():
    hub, _, _ = make_hub()
    (s,) = online(hub, "alice")
    for t in ("#a", "#b", "#ALL"):
        hub.subscribe(s, t)
    hub.unsubscribe(s, "#zzz")
    assert hub.subscriptions(s) == ["#ALL", "#a", "#b"]
    hub.unsubscribe(s, "#a")
    assert hub.subscriptions(s) == ["#ALL", "#b"]
    hub.unsubscribe(s, "#ALL")
    assert hub.subscriptions(s) == []
    assert hub.stats()["subscriptions"] == {}
    with pytest.raises(NameNotAllowed):
        hub.unsubscribe(s, "nohash")
    # the 3 slots are free again
    for t in ("#x", "#y", "#z"):
        hub.subscribe(s, t)


def test_logout_drops_subscriptions_from_index():
    hub, _, _ = make_hub()
    a, b = online(hub, "alice", "bob")
    hub.subscribe(a, "#t")
    hub.subscribe(b, "#t")
    hub.logout(a)
    assert hub.stats()["subscriptions"] == {"#t": 1}
    hub.publish(b, "x", "#t")
    assert a.pushes == [] and len(b.pushes) == 1


# --- fan-out -------------------------------------------------------------------------


def test_fan_out_overlapping_subscriptions_exactly_once_same_bytes():
    hub, _, _ = make_hub()
    s1, s2, s3, s4, s5 = online(hub, "u1", "u2", "u3", "u4", "u5")
    hub.subscribe(s1, "#a")
    hub.subscribe(s1, "#b")  # both tags of tweet 1
    hub.subscribe(s2, "#ALL")
    hub.subscribe(s2, "#a")  # ALL and a tag
    hub.subscribe(s3, "#b")
    hub.subscribe(s4, "#c")
    # s5 subscribes to nothing, and is the sender of tweet 2
    hub.subscribe(s3, "#c")

    hub.publish(s5, "one", "#a#b")  # -> s1, s2, s3
    hub.publish(s5, "two", "#c#c")  # -> s2, s3, s4 (tag repeated)
    hub.publish(s1, "three", "#b")  # -> s1 (sender, subscribed), s2, s3
    hub.publish(s4, "four")  # no tags -> #ALL only: s2

    def msgs(s):
        return [t["message"] for t in s.tweets()]

    assert msgs(s1) == ["one", "three"]
    assert msgs(s2) == ["one", "two", "three", "four"]
    assert msgs(s3) == ["one", "two", "three"]
    assert msgs(s4) == ["two"]
    assert msgs(s5) == []
    # one bytes object per tweet, shared by every recipient
    assert s1.pushes[0] is s2.pushes[0] is s3.pushes[0]
    assert s2.pushes[1] is s3.pushes[1] is s4.pushes[0]
    assert hub.stats()["deliveries"] == 3 + 3 + 3 + 1
    assert hub.stats()["published"] == 4


def test_push_line_format():
    hub, _, clock = make_hub()
    (s,) = online(hub, "alice")
    hub.subscribe(s, "#x")
    hub.publish(s, "héllo \U0001f600", "#x")
    line = s.pushes[0]
    assert line.startswith(b"600 {") and line.endswith(b"}\r\n") and line.count(b"\n") == 1
    assert "héllo \U0001f600".encode("utf-8") in line  # UTF-8, not \u escapes
    t = json.loads(line[4:-2])
    assert set(t) == {"id", "user", "message", "hashtags", "ts"}
    assert (t["id"], t["user"], t["hashtags"]) == (1, "alice", "#x")
    assert t["ts"] == "2023-11-14T22:13:20.000Z"


def test_sender_gets_own_tweet_only_when_subscribed():
    hub, _, _ = make_hub()
    a, b = online(hub, "alice", "bob")
    hub.subscribe(b, "#t")
    hub.publish(a, "x", "#t")
    assert a.pushes == [] and len(b.pushes) == 1
    hub.subscribe(a, "#ALL")
    hub.publish(a, "y", "#t")
    assert len(a.pushes) == 1 and len(b.pushes) == 2


def test_failing_push_does_not_stop_others():
    hub, _, _ = make_hub()

    class Broken(FakeSession):
        def sendPush(self, data):
            raise RuntimeError("socket gone")

    (a,) = online(hub, "a")
    b = Broken("b")
    hub.login(b)
    (c,) = online(hub, "c")
    for s in (a, b, c):
        hub.subscribe(s, "#t")
    hub.publish(a, "x", "#t")
    assert len(a.pushes) == 1 and len(c.pushes) == 1


def test_push_that_logs_out_a_recipient_mid_fan_out():
    """A protocol dropping slow readers synchronously must not break the loop,
    and a member logged out during the loop gets nothing more."""
    hub, _, _ = make_hub()
    online_at_push = []

    class Watcher(FakeSession):
        def sendPush(self, data):
            online_at_push.append(hub.is_online(self.username))
            super().sendPush(data)

    class Dropper(FakeSession):
        def sendPush(self, data):
            super().sendPush(data)
            for s in watchers:
                hub.logout(s)

    watchers = [Watcher("u%d" % i) for i in range(20)]
    dropper = Dropper("dropper")
    for s in watchers + [dropper]:
        hub.login(s)
        hub.subscribe(s, "#t")
    hub.publish(dropper, "x", "#t")
    assert len(dropper.pushes) == 1
    assert all(online_at_push) and len(online_at_push) <= 20
    assert hub.stats()["subscriptions"] == {"#t": 1}


def test_invalid_tweets_publish_nothing():
    hub, store, clock = make_hub()
    a, b = online(hub, "a", "b")
    hub.subscribe(b, "#ALL")
    for msg, tags, exc in [
        ("", "", BadArguments),
        ("x" * 151, "", LimitExceeded),
        ("ok", "#ALL", NameNotAllowed),
        ("ok", "##", NameNotAllowed),
    ]:
        with pytest.raises(exc):
            hub.publish(a, msg, tags)
    clock.advance(1)
    assert b.pushes == [] and store.batches == []


# --- flood limit ----------------------------------------------------------------------


def test_flood_limiter_burst_then_rate():
    clock = Clock()
    f = TokenBuckets(clock, burst=50, rate=20.0)
    assert all(f.allow("u") for _ in range(50))
    assert not f.allow("u")
    assert f.allow("other")  # per key
    clock.advance(0.05)  # one token at 20/s
    assert f.allow("u")
    assert not f.allow("u")
    clock.advance(100)  # refills only up to the burst
    assert sum(f.allow("u") for _ in range(60)) == 50


def test_flood_limiter_memory_is_bounded():
    clock = Clock()
    f = TokenBuckets(clock, burst=2, rate=1.0, max_keys=100)
    for i in range(1000):
        f.allow("user%d" % i)
    assert len(f) == 100


def test_flood_limiter_disabled():
    f = TokenBuckets(Clock(), burst=0, rate=20)
    assert all(f.allow("u") for _ in range(1000))


def test_tokens_are_taken_from_every_set_or_from_none():
    """take_together: an empty bucket in any set refuses the whole attempt
    and takes nothing from the others; a disabled set is no limit."""
    clock = Clock()
    users = TokenBuckets(clock, burst=3, rate=1.0)
    addresses = TokenBuckets(clock, burst=2, rate=1.0)
    off = TokenBuckets(clock, burst=0, rate=1.0)
    take = TokenBuckets.take_together
    assert take((users, ("a", "s1")), (addresses, ("10.0.0.1",)), (off, ("x",)))
    assert take((users, ("a", "s1")), (addresses, ("10.0.0.1",)))
    # the address is empty now: refused, and user "a" keeps its last token
    assert not take((users, ("a", "s1")), (addresses, ("10.0.0.1",)))
    assert take((users, ("a", "s2")), (addresses, ("10.0.0.2",)))
    assert not take((users, ("a",)), (addresses, ()))
    clock.advance(1)
    assert take((users, ("a",)), (addresses, ("10.0.0.1",)))
    assert all(take((off, ("x",))) for _ in range(100))


def test_hub_rate_limits_per_user_with_429():
    hub, _, clock = make_hub(flood_burst=3, flood_rate=1.0)
    a, b = online(hub, "a", "b")
    for _ in range(3):
        hub.publish(a, "x")
    with pytest.raises(RateLimited) as e:
        hub.publish(a, "x")
    assert e.value.code == 429
    hub.publish(b, "y")  # others unaffected
    clock.advance(1.0)
    hub.publish(a, "x")
    assert hub.stats()["rate_limited"] == 1


# --- batch writer -------------------------------------------------------------------


def test_publish_fires_after_batch_is_stored_fan_out_does_not_wait():
    hub, store, clock = make_hub(batch_interval=0.05)
    a, b = online(hub, "a", "b")
    hub.subscribe(b, "#t")
    d1 = hub.publish(a, "one", "#t")
    d2 = hub.publish(a, "two")
    assert len(b.pushes) == 1  # pushed at once
    assert not d1.called and store.batches == []
    clock.advance(0.049)
    assert store.batches == []
    clock.advance(0.001)
    assert len(store.batches) == 1  # one store call for both
    assert [t["message"] for t in store.batches[0][0]] == ["one", "two"]
    assert result_of(d1)["message"] == "one" and result_of(d2)["id"] == 2
    assert hub.stats()["stored"] == 2


def test_group_commit_starts_at_once_and_takes_what_arrived_meanwhile():
    """batch_interval 0 (the default): no timer; a lone tweet is written at
    once; tweets published while it is in flight make the next batch, which
    starts the moment the first is committed."""
    store = FakeStore()
    store.manual = True
    hub, _, clock = make_hub(store=store, batch_interval=0)
    (a,) = online(hub, "a")
    d1 = hub.publish(a, "1")
    assert len(store.calls) == 1  # at once: no clock advanced
    ds = [hub.publish(a, str(i)) for i in range(2, 6)]
    assert len(store.calls) == 1  # one batch in flight at a time
    d, rows, entries = store.calls[0]
    store.apply(rows, entries)
    d.callback(1)
    assert result_of(d1)["id"] == 1 and not any(x.called for x in ds)
    assert len(store.calls) == 2 and [t["id"] for t in store.calls[1][1]] == [2, 3, 4, 5]
    d, rows, entries = store.calls[1]
    store.apply(rows, entries)
    d.callback(4)
    assert [result_of(x)["id"] for x in ds] == [2, 3, 4, 5]
    assert clock.getDelayedCalls() == [] or all(
        c.getTime() > clock.seconds() + 1 for c in clock.getDelayedCalls()
    )  # no batch timer armed


def test_the_next_batch_is_on_its_way_before_the_last_ones_publishers_hear():
    """Group commit overlaps the database and the reactor: when a batch is
    committed and more tweets wait, their store call is made before the
    committed batch's publishers are answered (it is in flight while those
    replies are written).  While stopping, the answers come first."""
    store = FakeStore()
    store.manual = True
    hub, _, clock = make_hub(store=store, batch_interval=0)
    (a,) = online(hub, "a")
    seen = []

    def note(tweet):
        seen.append((tweet["id"], len(store.calls)))
        return tweet

    hub.publish(a, "1").addCallback(note)
    hub.publish(a, "2").addCallback(note)
    d, rows, entries = store.calls[0]
    store.apply(rows, entries)
    d.callback(1)
    assert seen == [(1, 2)]  # answered with batch 2 already handed to the store
    hub.publish(a, "3").addCallback(note)
    stopped = hub.writer.stop()
    d, rows, entries = store.calls[1]
    store.apply(rows, entries)
    d.callback(1)
    assert seen[1] == (2, 2)  # stopping: answered before batch 3 is handed over
    assert len(store.calls) == 3 and not stopped.called
    d, rows, entries = store.calls[2]
    store.apply(rows, entries)
    d.callback(1)
    assert seen[2] == (3, 3) and stopped.called


def test_batch_starts_at_once_when_rows_reach_threshold():
    hub, store, clock = make_hub(batch_rows=3)
    (a,) = online(hub, "a")
    hub.publish(a, "1")
    hub.publish(a, "2")
    assert store.batches == []
    hub.publish(a, "3")
    assert len(store.batches) == 1 and len(store.batches[0][0]) == 3


def test_at_most_one_flush_in_flight_and_batches_keep_order():
    store = FakeStore()
    store.manual = True
    hub, _, clock = make_hub(store=store, batch_max_rows=2)
    (a,) = online(hub, "a")
    ds = [hub.publish(a, str(i)) for i in range(5)]
    clock.advance(0.05)
    assert len(store.calls) == 1 and [t["id"] for t in store.calls[0][1]] == [1, 2]
    clock.advance(10)
    assert len(store.calls) == 1  # waits for the one in flight
    d, rows, entries = store.calls[0]
    store.apply(rows, entries)
    d.callback(2)
    assert [d.called for d in ds] == [True, True, False, False, False]
    assert len(store.calls) == 2 and [t["id"] for t in store.calls[1][1]] == [3, 4]


def test_failed_batch_is_retried_with_backoff_and_nothing_lost():
    store = FakeStore()
    store.failures = 2
    hub, _, clock = make_hub(store=store, retry_delays=(0.1, 0.5), fail_after=10)
    (a,) = online(hub, "a")
    d = hub.publish(a, "kept")
    clock.advance(0.05)
    assert len(store.batches) == 1 and not d.called
    clock.advance(0.09)
    assert len(store.batches) == 1
    clock.advance(0.01)  # first backoff 0.1 s
    assert len(store.batches) == 2
    d2 = hub.publish(a, "later")  # queued behind the retry
    clock.advance(0.49)
    assert len(store.batches) == 2
    clock.advance(0.01)  # second backoff 0.5 s
    assert len(store.batches) == 3
    assert [t["message"] for t in store.batches[2][0]] == ["kept", "later"]
    assert result_of(d)["message"] == "kept" and d2.called
    assert hub.stats()["flush_failures"] == 2


def test_publisher_gets_451_only_after_bounded_time_tweet_still_stored_later():
    store = FakeStore()
    store.failures = 1000
    hub, _, clock = make_hub(store=store, retry_delays=(1.0,), fail_after=5)
    (a,) = online(hub, "a")
    d = hub.publish(a, "x")
    clock.pump([1.0] * 4)
    assert not d.called
    clock.pump([1.0] * 2)
    assert isinstance(failure_of(d), DatabaseUnavailable)
    store.failures = 0
    clock.advance(1.0)
    assert [t["message"] for t in store.tweets.values()] == ["x"]


def test_backlog_bound_refuses_new_tweets_with_451():
    store = FakeStore()
    store.failures = 1000
    hub, _, clock = make_hub(store=store, max_pending_rows=3)
    (a,) = online(hub, "a")
    for _ in range(3):
        hub.publish(a, "x")
    with pytest.raises(DatabaseUnavailable) as e:
        hub.publish(a, "x")
    assert e.value.code == 451


def test_stop_flushes_everything_and_refuses_new_tweets():
    hub, store, clock = make_hub(batch_max_rows=2)
    (a,) = online(hub, "a")
    ds = [hub.publish(a, str(i)) for i in range(5)]
    d = hub.stop()
    assert result_of(d) is None
    assert sorted(store.tweets) == [1, 2, 3, 4, 5]
    assert all(x.called for x in ds)
    with pytest.raises(TemporaryError):
        hub.publish(a, "late")
    assert result_of(hub.stop()) is None  # again: fires at once


def test_stop_gives_up_after_timeout_and_fails_waiters():
    store = FakeStore()
    store.failures = 1000
    hub, _, clock = make_hub(store=store, stop_timeout=2, retry_delays=(0.5,), fail_after=60)
    (a,) = online(hub, "a")
    p = hub.publish(a, "x")
    d = hub.stop()
    clock.pump([0.5] * 3)
    assert not d.called
    clock.pump([0.5] * 2)
    assert result_of(d) is None
    assert isinstance(failure_of(p), DatabaseUnavailable)


def test_start_continues_ids_and_last_from_store():
    hub, _, _ = make_hub(store=FakeStore(max_id=41, last="before restart"))
    assert result_of(hub.last()) == "before restart"
    (a,) = online(hub, "a")
    hub.subscribe(a, "#ALL")
    hub.publish(a, "new")
    assert a.tweets()[0]["id"] == 42
    assert result_of(hub.last()) == "new"


def test_last_is_none_when_no_tweets():
    hub, _, _ = make_hub()
    assert result_of(hub.last()) is None


# --- timelines and GETTWEETS -----------------------------------------------------------------


def test_guest_timeline_in_memory_bounded_and_ends_with_session():
    hub, store, clock = make_hub(timeline_limit=3)
    (g,) = online(hub, "guest")
    (p,) = online(hub, "poster")
    hub.subscribe(g, "#ALL")
    for i in range(5):
        hub.publish(p, str(i))
    clock.advance(1)
    assert [t["message"] for t in result_of(hub.timeline(g))] == ["2", "3", "4"]
    assert store.timelines == []  # guests are never stored
    hub.logout(g)
    g2 = FakeSession("guest")
    hub.login(g2)
    assert result_of(hub.timeline(g2)) == []


def test_registered_timeline_from_store_plus_unflushed():
    store = FakeStore()
    store.manual = True
    hub, _, clock = make_hub(store=store)
    (r,) = online(hub, "reg", registered=True)
    (p,) = online(hub, "poster")
    hub.subscribe(r, "#t")
    hub.publish(p, "a", "#t")
    hub.publish(p, "not for reg", "#other")
    clock.advance(0.05)  # batch 1 in flight
    hub.publish(p, "b", "#t")  # queued behind it
    assert [t["message"] for t in result_of(hub.timeline(r))] == ["a", "b"]
    d, rows, entries = store.calls[0]
    assert entries == [(1, [r.account_id])]
    store.apply(rows, entries)  # stored, but not yet acknowledged
    assert [t["message"] for t in result_of(hub.timeline(r))] == ["a", "b"]
    d.callback(2)
    clock.advance(0.05)
    d, rows, entries = store.calls[1]
    store.apply(rows, entries)
    d.callback(1)
    assert store.timelines == [(r.account_id, 1), (r.account_id, 3)]
    # a later session of the same registered user sees it (e.g. after restart)
    hub.logout(r)
    r2 = FakeSession("reg", registered=True)
    hub.login(r2)
    assert [t["message"] for t in result_of(hub.timeline(r2))] == ["a", "b"]


def test_tweets_by_oldest_first_including_unflushed():
    hub, store, clock = make_hub()
    a, b = online(hub, "alice", "bob")
    hub.publish(a, "1")
    hub.publish(b, "other")
    clock.advance(1)
    hub.publish(a, "2")
    tweets = result_of(hub.tweets_by("alice"))
    assert [t["message"] for t in tweets] == ["1", "2"]
    assert all(set(t) == {"id", "user", "message", "hashtags", "ts"} for t in tweets)


def test_tweets_by_unknown_and_known_users():
    hub, store, _ = make_hub()
    store.accounts.add("carol")
    (a,) = online(hub, "alice")
    assert result_of(hub.tweets_by("alice")) == []  # online, no tweets
    assert result_of(hub.tweets_by("Carol")) == []  # has an account
    e = failure_of(hub.tweets_by("nobody"))
    assert isinstance(e, NotFound) and e.replyLine() == "550 no user nobody in the system"
    with pytest.raises(NameNotAllowed):
        hub.tweets_by("bad name\r")
    # a user who tweeted and went offline is still known
    hub.publish(a, "hi")
    hub.logout(a)
    assert [t["message"] for t in result_of(hub.tweets_by("alice"))] == ["hi"]


def test_stats_and_online_users():
    hub, _, _ = make_hub()
    a, b = online(hub, "a", "b")
    hub.subscribe(a, "#x")
    hub.subscribe(b, "#x")
    hub.subscribe(b, "#ALL")
    st = hub.stats()
    assert st["online"] == 2
    assert st["subscriptions"] == {"#x": 2, "#ALL": 1}
    assert hub.online_users() == ["a", "b"]

"""
The ttweet protocol (docs/protocol.md section 3) over real TCP, in process: the
real runtime (accounts, history, database pool), the real hub and store, a
L{TtweetProtocol} listener on a free port, netshare's own client library and
a raw byte client.

What each group proves is said in its docstring.  The persistence tests run
on every configured database (SQLite, and PostgreSQL / MariaDB when their
NETSHARE_TEST_* URLs are set).
"""

import json
import socket

import pytest
import pytest_twisted
from twisted.internet import defer, task

from netshare.clients.protocol import quote
from netshare.protocols.replies import MAX_HELD
from netshare.protocols.ttweet import TtweetProtocol
from netshare.service import build_hub
from netshare.storage.tweets import TweetStore
from tests.inprocess import (
    add_account,
    db_kinds,
    listen,
    reactor,
    start_runtime,
    stop_runtime,
    wait_for,
)

pytestmark = pytest.mark.timeout(120)

#: Quick failures and batches; a flood limit out of the way unless a test sets one.
FAST = dict(
    login_failure_delay=0.05,
    flood_burst=100000,
    flood_rate=100000.0,
    flood_address_burst=100000,
    flood_address_rate=100000.0,
)


@defer.inlineCallbacks
def serve(rt):
    """A started hub (as the root service would start it) and its listener."""
    hub = build_hub(rt)
    yield hub.start()
    srv = yield listen(rt, TtweetProtocol, app=hub)
    return srv, hub


@defer.inlineCallbacks
def read_lines(raw, n):
    out = []
    for _ in range(n):
        out.append((yield raw.readline()))
    return out


@defer.inlineCallbacks
def guest(srv, name):
    c = yield srv.connect()
    r = yield c.command("LOGIN " + name)
    assert (r.code, r.text) == (230, "logged in as %s (guest)" % name)
    return c


class GatedStore:
    """The real store, except that batches wait until L{release}: lets a test
    see what happens before a tweet is durable, without timing."""

    def __init__(self, store):
        self.store = store
        self.open = False
        self.waiting = []

    def __getattr__(self, name):
        return getattr(self.store, name)

    def save_batch(self, rows, entries, journals=()):
        if self.open:
            return self.store.save_batch(rows, entries, journals)
        d = defer.Deferred()
        self.waiting.append((d, rows, entries, journals))
        return d

    def release(self):
        self.open = True
        waiting, self.waiting = self.waiting, []
        for d, rows, entries, journals in waiting:
            self.store.save_batch(rows, entries, journals).chainDeferred(d)


@defer.inlineCallbacks
def serve_gated(rt):
    hub = build_hub(rt)
    hub.store = GatedStore(hub.store)
    stop = hub.stop

    def release_and_stop():  # a failed test must not leave a batch hanging
        hub.store.release()
        return stop()

    hub.stop = release_and_stop
    yield hub.start()
    srv = yield listen(rt, TtweetProtocol, app=hub)
    return srv, hub


def tweets_of(client):
    """The tweet objects pushed to a client so far (600 lines only)."""
    assert all(code == 600 for code, _ in client.pushes), client.pushes
    return [json.loads(text) for _, text in client.pushes]


def lines(r):
    return (r.code, r.text)


# --- login ------------------------------------------------------------------


@pytest_twisted.inlineCallbacks
def test_login_guest_registered_and_refusals(make_runtime):
    """LOGIN: guests, accounts (password needed, 535 delayed and counted like
    any failed login), 553 format, 555 online, 503 twice, 501 arity; guests
    get WHOAMI but not HISTORY; LAST needs no login, TWEET does."""
    rt = make_runtime(**FAST)
    yield add_account(rt, "alice", "pw-alice")
    srv, hub = yield serve(rt)
    c = yield srv.connect()
    assert lines((yield c.command("LAST"))) == (200, "Empty Message")
    assert lines((yield c.command('TWEET "hi"'))) == (530, "login required")
    assert lines((yield c.command("SUBSCRIBE #a")))[0] == 530
    assert lines((yield c.command("LOGIN bad-name"))) == (553, "username has wrong format")
    assert lines((yield c.command("LOGIN " + "x" * 33))) == (553, "username has wrong format")
    assert lines((yield c.command("LOGIN"))) == (501, "usage: LOGIN <user> [password]")
    assert lines((yield c.command("LOGIN a b c")))[0] == 501
    assert lines((yield c.command("LOGIN bob"))) == (230, "logged in as bob (guest)")
    assert lines((yield c.command("LOGIN carol")))[0] == 503
    assert lines((yield c.command("WHOAMI"))) == (200, "bob guest")
    assert lines((yield c.command("HISTORY")))[0] == 530

    other = yield srv.connect()
    assert lines((yield other.command("LOGIN bob"))) == (555, "username illegal")
    # A registered name: without its password, with a wrong one, and a
    # password for a name that has no account: 535 each time.
    r = yield other.command("LOGIN alice")
    assert r.code == 535 and "password required" in r.text
    assert (yield other.command(quote("LOGIN", "dave", "pw"))).code == 535
    r = yield other.command(quote("LOGIN", "alice", "wrong"))
    assert lines(r) == (421, "too many failures")
    yield other.closed.addTimeout(10, reactor())
    assert srv.factory.stats.login_failures == 3

    third = yield srv.connect()
    r = yield third.command(quote("LOGIN", "ALICE", "pw-alice"))
    assert lines(r) == (230, "logged in as alice (user)")  # the account's own spelling
    assert lines((yield third.command("WHOAMI"))) == (200, "alice user")
    assert (yield third.command("HISTORY limit=5")).code == 210
    fourth = yield srv.connect()
    assert lines((yield fourth.command(quote("LOGIN", "alice", "pw-alice")))) == (
        555,
        "username illegal",
    )
    assert hub.online_users() == ["bob", "alice"]
    assert fourth.transport.connected


@pytest_twisted.inlineCallbacks
def test_history_records_ttweet_commands_without_passwords(make_runtime):
    """Every command of a registered user is in its history with its code,
    the password redacted; a guest's commands are recorded unauthenticated."""
    rt = make_runtime(**FAST)
    yield add_account(rt, "alice", "pw-alice")
    srv, hub = yield serve(rt)
    c = yield srv.connect()
    yield c.command(quote("LOGIN", "alice", "pw-alice"))
    yield c.command('TWEET "one" #a')
    yield c.command("TWEET")
    yield c.command("SUBSCRIBE #a")
    r = yield c.command("HISTORY limit=10")
    entries = [(e["command"], e["code"]) for e in r.items]
    assert entries[:4] == [
        ("SUBSCRIBE '#a'", 200),
        ("TWEET", 501),
        ("TWEET one '#a'", 200),
        ("LOGIN alice ***", 230),
    ]
    assert "pw-alice" not in json.dumps(r.items)
    assert all(e["service"] == "ttweet" and e["user"] == "alice" for e in r.items)


# --- tweets -----------------------------------------------------------------


@pytest_twisted.inlineCallbacks
def test_tweet_validation_codes(make_runtime):
    """TWEET refusals exactly as section 3: 552 length (code points), 501
    empty/blank/missing, 553 hashtags (format, count, #ALL, case rules)."""
    rt = make_runtime(**FAST)
    srv, hub = yield serve(rt)
    c = yield guest(srv, "alice")
    ok = (200, "ok")
    assert lines((yield c.command(quote("TWEET", "m" * 150, "#a")))) == ok
    assert lines((yield c.command(quote("TWEET", "\U0001f600" * 150)))) == ok  # 600 bytes
    assert lines((yield c.command(quote("TWEET", "e\u0301" * 75, "#b")))) == ok  # 150 points
    assert lines((yield c.command(quote("TWEET", "m" * 151, "#a")))) == (
        552,
        "message length illegal",
    )
    assert lines((yield c.command(quote("TWEET", "e\u0301" * 76)))) == (
        552,
        "message length illegal",
    )
    for empty in ('TWEET ""', 'TWEET "" #a', "TWEET", 'TWEET "   " #a', quote("TWEET", "a\tb")):
        assert lines((yield c.command(empty))) == (501, "message format illegal"), empty
    assert (yield c.command('TWEET "a" #b extra')).code == 501
    good_tags = ["#a", "#cs#3251", "#a#b#c#d#e", "#" + "x" * 14, "#all", "#a#a", "#CS"]
    for tags in good_tags:
        assert lines((yield c.command(quote("TWEET", "t", tags)))) == ok, tags
    bad_tags = [
        "#",
        "##",
        "#a#",
        "a",
        "#a#b#c#d#e#f",
        "#" + "x" * 15,
        "#ALL",
        "#a#ALL",
        "#a b",
        "#caf\u00e9",
        "#a-b",
        "#" + "a" * 1000,
    ]
    for tags in bad_tags:
        assert lines((yield c.command(quote("TWEET", "t", tags)))) == (
            553,
            "hashtag illegal format",
        ), tags
    # length is checked before the hashtags, as the assignment does
    assert (yield c.command(quote("TWEET", "m" * 151, "#ALL"))).code == 552
    assert lines((yield c.command("LAST"))) == (200, "t")


@pytest_twisted.inlineCallbacks
def test_subscriptions_limits_and_unsubscribe(make_runtime):
    """At most 3 subscriptions, #ALL counts, repeats fail with the
    assignment's text, 553 for malformed tags; UNSUBSCRIBE of an unknown tag
    changes nothing, of #ALL drops every subscription."""
    rt = make_runtime(**FAST)
    srv, hub = yield serve(rt)
    c = yield guest(srv, "alice")
    success = (200, "operation success")
    assert lines((yield c.command("SUBSCRIBE #a"))) == success
    assert lines((yield c.command("SUBSCRIBE #a"))) == (
        552,
        "operation failed: sub #a failed, already exists or exceeds 3 limitation",
    )
    assert lines((yield c.command("SUBSCRIBE #ALL"))) == success
    assert lines((yield c.command("SUBSCRIBE #b"))) == success
    assert lines((yield c.command("SUBSCRIBE #c"))) == (
        552,
        "operation failed: sub #c failed, already exists or exceeds 3 limitation",
    )
    for bad in ("a", "#", "#a#b", "#" + "x" * 15, "#\u00e9"):
        assert lines((yield c.command(quote("SUBSCRIBE", bad)))) == (
            553,
            "hashtag illegal format",
        ), bad
        assert (yield c.command(quote("UNSUBSCRIBE", bad))).code == 553
    assert (yield c.command("SUBSCRIBE")).code == 501
    assert lines((yield c.command("UNSUBSCRIBE #zzz"))) == success
    assert hub.subscriptions(srv.protocols[0]) == ["#ALL", "#a", "#b"]
    assert lines((yield c.command("UNSUBSCRIBE #a"))) == success
    assert hub.subscriptions(srv.protocols[0]) == ["#ALL", "#b"]
    assert lines((yield c.command("UNSUBSCRIBE #ALL"))) == success
    assert hub.subscriptions(srv.protocols[0]) == []
    for tag in ("#x", "#y", "#z"):
        assert lines((yield c.command("SUBSCRIBE " + tag))) == success


@pytest_twisted.inlineCallbacks
def test_five_clients_overlapping_subscriptions(make_runtime):
    """Issue item 2: five clients with overlapping subscriptions; every tweet
    reaches exactly the clients subscribed to one of its tags or to #ALL,
    exactly once each; the sender gets its own tweet only when subscribed."""
    rt = make_runtime(**FAST)
    srv, hub = yield serve(rt)
    subs = {"c1": ["#a"], "c2": ["#a", "#b"], "c3": ["#ALL"], "c4": ["#b", "#c", "#d"], "c5": []}
    clients = {}
    for name, tags in subs.items():
        clients[name] = yield guest(srv, name)
        for tag in tags:
            assert (yield clients[name].command("SUBSCRIBE " + tag)).code == 200
    plan = [
        ("c1", "#a"),
        ("c1", "#b"),
        ("c2", "#a#b"),
        ("c3", "#c#d#a"),
        ("c5", "#e"),
        ("c4", "#b#b"),
        ("c5", ""),
        ("c3", "#zz"),
        ("c2", "#d#a#b#c"),
    ]
    for i, (sender, tags) in enumerate(plan):
        r = yield clients[sender].command(
            quote("TWEET", "m%d" % i, tags) if tags else quote("TWEET", "m%d" % i)
        )
        assert lines(r) == (200, "ok")

    def expected(name):
        mine = set(subs[name])
        return [
            "m%d" % i
            for i, (_, tags) in enumerate(plan)
            if "#ALL" in mine or mine & set("#" + t for t in tags.split("#") if t)
        ]

    # the rule above, spelled out by hand for this plan
    assert {n: expected(n) for n in subs} == {
        "c1": ["m0", "m2", "m3", "m8"],
        "c2": ["m0", "m1", "m2", "m3", "m5", "m8"],  # its own m2 and m8
        "c3": ["m%d" % i for i in range(9)],  # #ALL
        "c4": ["m1", "m2", "m3", "m5", "m8"],  # m3 (#c#d) and m5 (#b#b) once
        "c5": [],  # not even its own m4, m6
    }
    total = sum(len(expected(n)) for n in subs)
    yield wait_for(
        lambda: sum(len(c.pushes) for c in clients.values()) >= total, what="all deliveries"
    )
    for c in clients.values():  # a later ping proves nothing more was on its way
        yield c.command("PING")
    for name, c in clients.items():
        got = tweets_of(c)
        assert [t["message"] for t in got] == expected(name), name
        ids = [t["id"] for t in got]
        assert len(ids) == len(set(ids))
        for t in got:
            sender, tags = plan[int(t["message"][1:])]
            assert (t["user"], t["hashtags"]) == (sender, tags)
    assert hub.deliveries == total
    # TIMELINE of a guest: what was delivered to it, oldest first.
    r = yield clients["c4"].command("TIMELINE")
    assert [t["message"] for t in r.items] == expected("c4")
    assert r.items == tweets_of(clients["c4"])


@pytest_twisted.inlineCallbacks
def test_getusers_gettweets_last(make_runtime):
    """GETUSERS lists every online user (the caller included; gone users
    drop out), GETTWEETS a user's tweets oldest first, 550 with the
    assignment's text for an unknown user, 553 for a malformed name; LAST."""
    rt = make_runtime(**FAST)
    yield add_account(rt, "reg", "pw-reg")
    srv, hub = yield serve(rt)
    a = yield guest(srv, "alice")
    b = yield guest(srv, "bob")
    r = yield a.command("GETUSERS")
    assert (r.code, r.items, r.text) == (210, [{"user": "alice"}, {"user": "bob"}], "2 items")
    for m in ("first", "second"):
        yield a.command(quote("TWEET", m, "#t"))
    r = yield b.command("GETTWEETS alice")
    assert [(t["user"], t["message"], t["hashtags"]) for t in r.items] == [
        ("alice", "first", "#t"),
        ("alice", "second", "#t"),
    ]
    assert set(r.items[0]) == {"id", "user", "message", "hashtags", "ts"}
    assert (yield b.command("GETTWEETS bob")).items == []  # online, no tweets
    assert (yield b.command("GETTWEETS reg")).items == []  # an account, offline
    assert lines((yield b.command("GETTWEETS nobody"))) == (550, "no user nobody in the system")
    assert lines((yield b.command("GETTWEETS no-body"))) == (553, "username has wrong format")
    assert (yield b.command("GETTWEETS")).code == 501
    assert lines((yield b.command("LAST"))) == (200, "second")
    yield b.close()
    yield wait_for(lambda: hub.online_users() == ["alice"], what="bob gone")
    assert (yield a.command("GETUSERS")).items == [{"user": "alice"}]
    # a user that is gone but has tweets is still "in the system"
    c = yield guest(srv, "carol")
    yield c.command('TWEET "bye"')
    yield c.close()
    yield wait_for(lambda: not hub.is_online("carol"), what="carol gone")
    assert [t["message"] for t in (yield a.command("GETTWEETS carol")).items] == ["bye"]
    assert (yield a.command("HELP")).lines[-1] == "214 end"


# --- acknowledgements, ordering, flood limit, idle --------------------------


@pytest_twisted.inlineCallbacks
def test_pipelined_tweets_are_acknowledged_in_order_once_durable(make_runtime):
    """A publisher that pipelines is not held to one tweet per commit: every
    tweet is fanned out while none is stored yet, no reply overtakes an
    unacknowledged tweet, every reply comes back in command order, and each
    200 is sent only once its tweet is in the database."""
    rt = make_runtime(**FAST)
    srv, hub = yield serve_gated(rt)
    sub = yield guest(srv, "sub")
    yield sub.command("SUBSCRIBE #ALL")
    raw = yield srv.raw()
    raw.send(b"LOGIN pub\r\n")
    assert (yield raw.readline()) == "230 logged in as pub (guest)"
    n = 300
    raw.send(
        b"".join(b'TWEET "p%d" #x\r\n' % i for i in range(n)) + b"PING\r\nTWEET\r\n"
        b"GETUSERS\r\nLAST\r\nQUIT\r\n"
    )
    yield wait_for(lambda: len(sub.pushes) == n, what="fan-out")
    assert hub.stored == 0
    yield sub.command("PING")  # a round trip: nothing else is on its way
    assert raw.buffer == b"" and not raw.closed.called
    store = TweetStore(rt.pool)
    assert (yield store.max_tweet_id()) == 0
    hub.store.release()
    replies = yield read_lines(raw, n)
    assert replies == ["200 ok"] * n
    assert (yield store.max_tweet_id()) == n
    assert (yield raw.readline()) == "200 pong"
    assert (yield raw.readline()) == "501 message format illegal"
    assert (yield raw.reply()) == ['210-{"user":"sub"}', '210-{"user":"pub"}', "210 2 items"]
    assert (yield raw.readline()) == "200 p%d" % (n - 1)
    assert (yield raw.readline()) == "221 bye"
    yield raw.wait_closed()
    assert [t["message"] for t in tweets_of(sub)] == ["p%d" % i for i in range(n)]


@pytest_twisted.inlineCallbacks
def test_held_replies_are_bounded(make_runtime):
    """A client that pipelines more tweets than MAX_HELD while their
    acknowledgements wait is not read further until some are sent."""
    rt = make_runtime(**FAST)
    srv, hub = yield serve_gated(rt)
    raw = yield srv.raw()
    raw.send(b"LOGIN pub\r\n")
    yield raw.readline()
    n = MAX_HELD + 200
    raw.send(b"".join(b'TWEET "p%d"\r\n' % i for i in range(n)))
    yield wait_for(lambda: hub.published >= MAX_HELD, what="held queue full")
    other = yield guest(srv, "other")
    yield other.command("PING")  # the reactor went round: still stopped
    assert hub.published == MAX_HELD and srv.protocols[0]._held.paused
    hub.store.release()
    replies = yield read_lines(raw, n)
    assert replies == ["200 ok"] * n
    assert hub.published == n


@pytest_twisted.inlineCallbacks
def test_flood_limit_429_in_order(make_runtime):
    """Per-user flood limit: a burst, then 429 (in command order with the
    acknowledgements before it); another user is not limited by it."""
    rt = make_runtime(login_failure_delay=0.05, flood_burst=3, flood_rate=0.01)
    srv, hub = yield serve(rt)
    raw = yield srv.raw()
    raw.send(b"LOGIN alice\r\n")
    yield raw.readline()
    raw.send(b'TWEET "1"\r\nTWEET "2"\r\nTWEET "3"\r\nTWEET "4"\r\nTWEET "5"\r\n')
    replies = yield read_lines(raw, 5)
    assert replies == ["200 ok"] * 3 + ["429 too many tweets; try later"] * 2
    b = yield guest(srv, "bob")
    assert lines((yield b.command('TWEET "mine"'))) == (200, "ok")
    assert hub.rate_limited == 2


@pytest_twisted.inlineCallbacks
def test_idle_timeout_only_without_subscriptions(make_runtime):
    """A logged-in connection with a subscription waits for pushes and is
    not timed out; without one (never, or after UNSUBSCRIBE) it is."""
    rt = make_runtime(idle_timeout=0.3, **FAST)
    srv, hub = yield serve(rt)
    idle = yield srv.raw()
    idle.send(b"LOGIN idle\r\n")
    waiting = yield srv.raw()
    waiting.send(b"LOGIN waiting\r\nSUBSCRIBE #a\r\n")
    assert (yield idle.readline()) == "230 logged in as idle (guest)"
    assert (yield waiting.readline()) == "230 logged in as waiting (guest)"
    assert (yield waiting.readline()) == "200 operation success"
    assert (yield idle.readline(timeout=5)) == "421 idle timeout"
    yield idle.wait_closed()
    # well past the timeout: still connected, and receives a push
    yield task.deferLater(reactor(), 1.0, lambda: None)
    assert not waiting.closed.called
    pub = yield guest(srv, "pub")
    yield pub.command('TWEET "still there" #a')
    line = yield waiting.readline(timeout=5)
    assert line.startswith("600 ") and json.loads(line[4:])["message"] == "still there"
    waiting.send(b"UNSUBSCRIBE #a\r\n")
    assert (yield waiting.readline()) == "200 operation success"
    assert (yield waiting.readline(timeout=5)) == "421 idle timeout"
    yield waiting.wait_closed()
    yield wait_for(lambda: "waiting" not in hub.online_users(), what="logged out")


# --- slow subscribers ---------------------------------------------------------


class SmallBufferProtocol(TtweetProtocol):
    """A tiny kernel send buffer, so a stalled reader reaches the output
    limit after a few hundred tweets instead of megabytes (test speed only;
    the drop logic is the base's and the same for any buffer size)."""

    def connectionMade(self):
        sock = self.transport.getHandle()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        super().connectionMade()


@pytest_twisted.inlineCallbacks
def test_stalled_subscriber_dropped_others_keep_receiving(make_runtime):
    """Issue item 3: a subscriber that stops reading is dropped at its output
    limit while 100 others keep receiving every tweet exactly once; the
    publisher is never refused and its tweets keep flowing while (and after)
    the stalled one is dropped."""
    rt = make_runtime(max_output=16 * 1024, max_per_ip=200, **FAST)
    hub = build_hub(rt)
    yield hub.start()
    srv = yield listen(rt, SmallBufferProtocol, app=hub)
    healthy = []
    for i in range(100):
        c = yield srv.connect()
        healthy.append(c)
        c.command("LOGIN h%d" % i)
        c.command("SUBSCRIBE #news")
    yield healthy[-1].command("PING")
    # The stalled subscriber: a raw socket with a tiny receive window that
    # subscribes and then never reads again.
    stalled = socket.socket()
    stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stalled.connect((srv.host, srv.number))
    stalled.sendall(b"LOGIN stalled\r\nSUBSCRIBE #news\r\n")
    try:
        yield wait_for(
            lambda: (
                "stalled" in hub.online_users()
                and hub.stats()["subscriptions"].get("#news") == 101
            ),
            what="subscribed",
        )
        pub = yield guest(srv, "pub")
        sent = 0
        dropped_at = None
        while sent < 3000 and (dropped_at is None or sent < dropped_at + 200):
            burst = [
                pub.command(quote("TWEET", "%05d " % (sent + i) + "z" * 140, "#news"))
                for i in range(50)
            ]
            replies = yield defer.gatherResults(burst)
            assert [r.code for r in replies] == [200] * 50
            sent += 50
            if dropped_at is None and srv.factory.stats.slow_drops:
                dropped_at = sent
        assert dropped_at is not None, "the stalled subscriber was never dropped"
        assert srv.factory.stats.slow_drops == 1
        assert "stalled" not in hub.online_users()
        yield wait_for(
            lambda: all(len(c.pushes) == sent for c in healthy),
            timeout=30,
            what="every healthy subscriber has every tweet",
        )
        for c in healthy:
            got = [t["message"][:5] for t in tweets_of(c)]
            assert got == ["%05d" % i for i in range(sent)]
        # the server closed the stalled connection (reset, or EOF once read)
        stalled.settimeout(10)
        try:
            while stalled.recv(65536):
                pass
        except ConnectionResetError:
            pass
    finally:
        stalled.close()


# --- persistence and restart ------------------------------------------------


@pytest.mark.parametrize("db", db_kinds())
@pytest_twisted.inlineCallbacks
def test_tweets_and_registered_timeline_survive_restart(tmp_path, db):
    """Issue item 4 (in process; the e2e test restarts the real daemon):
    tweets, LAST, GETTWEETS and a registered user's TIMELINE come back after
    an orderly stop and a new start on the same database; a guest's
    timeline lives as long as its session."""
    if db == "sqlite":
        url = "sqlite:///" + str(tmp_path / "shared.db")
        first = start_runtime(tmp_path / "a", db=url, **FAST)
        private = None
    else:
        first = start_runtime(tmp_path / "a", db=db, **FAST)
        private, first.harness.private_db = first.harness.private_db, None
        url = private.url
    second = None
    try:
        yield add_account(first, "reg", "pw-reg")
        srv, hub = yield serve(first)
        reg = yield srv.connect()
        yield reg.command(quote("LOGIN", "reg", "pw-reg"))
        yield reg.command("SUBSCRIBE #a")
        g = yield guest(srv, "gst")
        yield g.command("SUBSCRIBE #a")
        pub = yield guest(srv, "pub")
        for i, tags in enumerate(["#a", "#b", "#a#b", ""]):
            assert (yield pub.command(quote("TWEET", "t%d" % i, tags))).code == 200
        r = yield reg.command("TIMELINE")
        assert [t["message"] for t in r.items] == ["t0", "t2"]
        assert [t["message"] for t in (yield g.command("TIMELINE")).items] == ["t0", "t2"]
        yield stop_runtime(first)

        second = start_runtime(tmp_path / "b", db=url, **FAST)
        srv2, hub2 = yield serve(second)
        c = yield srv2.connect()
        assert lines((yield c.command("LAST"))) == (200, "t3")
        yield c.command(quote("LOGIN", "reg", "pw-reg"))
        r = yield c.command("TIMELINE")
        assert [(t["user"], t["message"], t["hashtags"]) for t in r.items] == [
            ("pub", "t0", "#a"),
            ("pub", "t2", "#a#b"),
        ]
        r = yield c.command("GETTWEETS pub")  # pub is offline now
        assert [t["message"] for t in r.items] == ["t0", "t1", "t2", "t3"]
        g2 = yield guest(srv2, "gst")
        assert (yield g2.command("TIMELINE")).items == []
        # ids continue after the stored ones
        yield g2.command('TWEET "after"')
        assert [t["id"] for t in (yield c.command("GETTWEETS gst")).items] == [5]
    finally:
        if second is not None:
            yield stop_runtime(second)
        yield stop_runtime(first)
        if private is not None:
            private.drop()


@pytest_twisted.inlineCallbacks
def test_orderly_stop_acknowledges_pending_tweets_first(make_runtime):
    """At shutdown a connection whose tweet waits for its batch gets the
    200 before 421 shutting down, and the tweet is stored."""
    rt = make_runtime(**FAST)
    srv, hub = yield serve_gated(rt)
    raw = yield srv.raw()
    raw.send(b"LOGIN pub\r\n")
    yield raw.readline()
    raw.send(b'TWEET "last words"\r\n')
    yield wait_for(lambda: hub.published == 1, what="published")
    yield srv.port.stopListening()
    stopping = rt.harness.service.stopService()
    yield wait_for(lambda: srv.protocols[0]._closePending, what="close waits for the ack")
    assert raw.buffer == b""
    hub.store.release()
    assert (yield raw.readline()) == "200 ok"
    assert (yield raw.readline()) == "421 shutting down"
    yield raw.wait_closed()
    yield stopping
    rt.harness.stopped = True  # stopped here; nothing left to clean
    assert hub.stored == 1


# --- the hub's batch writer under re-entrant callbacks --------------------------


class ManualStore:
    """save_batch answers only when the test says so (no database)."""

    def __init__(self):
        self.calls = []

    def max_tweet_id(self):
        return defer.succeed(0)

    def last_message(self):
        return defer.succeed(None)

    def save_batch(self, rows, entries, journals=()):
        d = defer.Deferred()
        self.calls.append((d, [r["message"] for r in rows]))
        return d

    def pending(self):
        return [msgs for d, msgs in self.calls if not d.called]


class Poster:
    username, account_id = "poster", None

    def sendPush(self, data):
        pass


def test_hub_stop_and_batches_with_reentrant_callbacks():
    """Regression (found by these tests on PostgreSQL): a publisher whose
    acknowledgement callback publishes again and stops the hub (what an
    orderly stop does when a tweet is acknowledged at that moment) made
    stop() fire while the new batch was still being written, and could put
    two batches in flight at once.  Now: at most one batch in flight, and
    stop() fires only when everything is written."""
    from twisted.internet.task import Clock

    from netshare.services.ttweet.hub import Hub

    clock, store = Clock(), ManualStore()
    hub = Hub(store, clock=clock, batch_rows=2, batch_interval=0.05)
    hub.start()
    poster = Poster()
    hub.login(poster)
    stopped = []

    def again(_):
        hub.publish(poster, "b")  # queued ...
        hub.publish(poster, "c")  # ... batch_rows reached: a batch starts
        hub.publish(poster, "d")
        hub.publish(poster, "e")  # 2 rows queued again
        hub.stop().addCallback(stopped.append)

    hub.publish(poster, "a").addCallback(again)
    clock.advance(0.05)
    assert store.pending() == [["a"]]
    store.calls[0][0].callback(1)  # "a" is stored: its callback runs
    assert store.pending() == [["b", "c"]]  # one batch in flight, not two
    assert stopped == []
    store.calls[1][0].callback(2)
    assert store.pending() == [["d", "e"]]
    assert stopped == []  # "d" and "e" are not written yet
    store.calls[2][0].callback(2)
    assert store.pending() == [] and stopped == [None]
    assert hub.stored == 5

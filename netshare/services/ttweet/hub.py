"""
The ttweet hub: who is online, the tag index, fan-out, the flood limit and
timelines (docs/protocol.md section 3).

This module decides; it never parses wire lines, never touches SQL and never
touches a socket.  The protocol (C{netshare.protocols.ttweet}) hands the
L{Hub} its connections as L{HubSession}s; the hub hands the
L{BatchWriter<netshare.services.ttweet.writer.BatchWriter>} the tweets to
make durable, and reads timelines from its L{TweetStore}.

Fan-out is the hot path: the goal is at least half the delivery rate of a
minimal Twisted fan-out (C{bench/ttweet_fanout.py} measures both;
C{bench/README.md} has the figures).  So, per tweet: the push line is
serialised once; the recipients are the union of the tag index's sets (each
recipient once, the sender only if subscribed); each recipient costs one
C{sendPush(data)} with the I{same} bytes object plus one timeline entry (a
reference to the shared tweet dict for a guest, the recipient's account id
in the tweet's batch entry for a registered user).  Nothing on that path
waits for the database or for a slow reader: C{sendPush} only queues, and
the protocol drops a connection whose queue passes its output limit.

Durability: the Deferred returned by L{Hub.publish} fires when the batch
holding the tweet is committed, so C{200 ok} means durable, while
subscribers already had their C{600} push.

Decisions where docs/protocol.md is silent, besides those of
L{netshare.services.ttweet.rules}:
 - C{GETTWEETS <user>}: the user is "in the system" when online now, or
   holding an account, or having any stored tweet.
 - C{UNSUBSCRIBE} of a well-formed tag one is not subscribed to: success
   with no change.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Iterable
from typing import Any, Protocol

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from netshare import wire
from netshare.deferreds import deferred
from netshare.errors import (
    Conflict,
    DatabaseUnavailable,
    LimitExceeded,
    LoginRequired,
    NotFound,
    RateLimited,
    TemporaryError,
)
from netshare.services.clock import default_clock
from netshare.services.ttweet.rules import (
    ALL,
    MAX_SUBSCRIPTIONS,
    SUBSCRIPTION_REFUSED,
    check_message,
    check_subscription_tag,
    check_username,
    parse_hashtags,
)
from netshare.services.ttweet.writer import BatchWriter, PendingTweet, Tweet
from netshare.storage.tweets import TweetRow
from netshare.throttle import TokenBuckets


class HubSession(Protocol):
    """
    What the hub needs of a logged-in connection (the ttweet protocol).

    It may also have C{host}, the client's address, which keys the per
    address flood limit; a session without it is limited per name and per
    session only.
    """

    @property
    def username(self) -> str | None:
        """The name it logs in with (a guest's or an account's)."""

    @property
    def account_id(self) -> int | None:
        """The account's id; None for a guest."""

    def sendPush(self, data: bytes) -> None:
        """Queue one complete push line (C{600 <tweet>\\r\\n}); never blocks."""


class TweetStore(Protocol):
    """The store calls the hub makes (L{netshare.storage.tweets.TweetStore})."""

    def save_batch(
        self,
        tweet_rows: list[dict[str, Any]],
        timeline_entries: list[tuple[int, list[int]]],
        journals: list[tuple[int, dict[str, Any]]],
    ) -> Deferred[int]: ...

    def max_tweet_id(self) -> Deferred[int]: ...

    def last_message(self) -> Deferred[str | None]: ...

    def timeline(self, account_id: int, limit: int) -> Deferred[list[TweetRow]]: ...

    def tweets_by(self, user: str, limit: int) -> Deferred[list[TweetRow]]: ...

    def user_known(self, user: str) -> Deferred[bool]: ...


class _Member:
    """The hub's state for one logged-in session."""

    __slots__ = (
        "session",
        "name",
        "account_id",
        "address",
        "send",
        "tags",
        "timeline",
        "online",
        "serial",
    )

    #: Numbers sessions for their flood bucket (an id() would be reused).
    _serials = itertools.count(1)

    def __init__(self, session: HubSession, name: str, timeline_limit: int):
        self.session = session
        self.serial = next(self._serials)
        self.name = name
        self.address: str | None = getattr(session, "host", None)  # see HubSession
        self.account_id = session.account_id  # None for a guest
        self.send = session.sendPush
        self.tags: set[str] = set()
        # A guest's timeline lives (bounded) in memory for its session; a
        # registered user's goes to the database through the batch writer.
        self.timeline: deque[Tweet] | None = (
            None if self.account_id is not None else deque(maxlen=timeline_limit)
        )
        self.online = True


class Hub:
    """
    The live ttweet state: who is online, the tag index, fan-out, timelines
    and the flood limit; the L{BatchWriter} stores what is published.

    Validation errors and refusals are raised synchronously as
    L{netshare.errors.NetshareError}s; the protocol calls every method
    through C{maybeDeferred}, so a raise and a failed Deferred look the same.

    @param store: the L{TweetStore}.
    @param clock: an C{IReactorTime}; the global reactor by default.
    @param flood_burst: tweets a user name (and a session) may send at once,
        then C{flood_rate} a second; C{flood_address_burst} and
        C{flood_address_rate} are the same per client address.
    @param timeline_limit: the most recent entries kept in a guest's
        timeline and returned by L{timeline} / L{tweets_by}.
    @param max_pending_rows: refuse new tweets (451) while this many rows
        are waiting for the database, so an outage cannot exhaust memory.
    @param batch_interval: see L{BatchWriter}, like C{batch_rows},
        C{batch_max_rows}, C{fail_after}, C{retry_delays} and
        C{stop_timeout}.
    """

    log = Logger()

    def __init__(
        self,
        store: TweetStore,
        clock: IReactorTime | None = None,
        flood_burst: float = 50,
        flood_rate: float = 20.0,
        flood_address_burst: float = 100,
        flood_address_rate: float = 40.0,
        timeline_limit: int = 1000,
        batch_interval: float = 0.0,
        batch_rows: int = 2000,
        batch_max_rows: int = 20_000,
        max_pending_rows: int = 100_000,
        fail_after: float = 5.0,
        retry_delays: Iterable[float] = (0.1, 0.2, 0.5, 1.0, 2.0, 5.0),
        stop_timeout: float = 5.0,
    ):
        clock = default_clock(clock)
        self.store = store
        self.clock = clock
        # A token bucket per user name and per connection; and per client
        # address, a bigger one (several people may share an address), so
        # that new guest names on new connections buy no extra tweets.
        self.flood = TokenBuckets(clock, flood_burst, flood_rate)
        self.address_flood = TokenBuckets(clock, flood_address_burst, flood_address_rate)
        self.timeline_limit = max(1, int(timeline_limit))
        self.max_pending_rows = max_pending_rows
        self.writer = BatchWriter(
            self._save_batch,
            clock,
            batch_interval=batch_interval,
            batch_rows=batch_rows,
            batch_max_rows=batch_max_rows,
            fail_after=fail_after,
            retry_delays=retry_delays,
            stop_timeout=stop_timeout,
        )

        self._members: dict[HubSession, _Member] = {}  # session -> member
        self._by_name: dict[str, _Member] = {}  # username -> member
        self._index: dict[str, set[_Member]] = {}  # tag -> subscribed members
        self._next_id = 1
        self._last_message: str | None = None
        self._running = False

        # statistics
        self.published = 0
        self.deliveries = 0
        self.rate_limited = 0

    def _save_batch(
        self,
        tweet_rows: list[dict[str, Any]],
        timeline_entries: list[tuple[int, list[int]]],
        journals: list[tuple[int, dict[str, Any]]],
    ) -> Deferred[int]:
        # Looked up per batch: the store may be swapped while the hub runs
        # (a test gates its batches that way).
        return self.store.save_batch(tweet_rows, timeline_entries, journals)

    @property
    def stored(self) -> int:
        """Tweets stored since the hub started."""
        return self.writer.stored

    # --- lifecycle -----------------------------------------------------

    @deferred
    async def start(self) -> None:
        """Load the next tweet id and the last message; then accept tweets."""
        max_id = await self.store.max_tweet_id()
        self._next_id = int(max_id or 0) + 1
        self._last_message = await self.store.last_message()
        self._running = True
        self.log.info("ttweet hub started, next tweet id {next_id}", next_id=self._next_id)

    def stop(self) -> Deferred[None]:
        """
        Refuse new tweets and write everything queued (see
        L{BatchWriter.stop}: it fires, never fails, once the queue is
        written or given up on).
        """
        self._running = False
        return self.writer.stop()

    # --- sessions ------------------------------------------------------

    def login(self, session: HubSession) -> None:
        """Make C{session} online; C{555 username illegal} if its name is."""
        name = check_username(session.username)
        if name in self._by_name:
            raise Conflict("username illegal")
        if session in self._members:
            raise Conflict("username illegal")
        member = _Member(session, name, self.timeline_limit)
        self._members[session] = member
        self._by_name[name] = member

    def logout(self, session: HubSession) -> None:
        """Forget C{session} and its subscriptions (idempotent; on disconnect)."""
        member = self._members.pop(session, None)
        if member is None:
            return
        member.online = False
        if self._by_name.get(member.name) is member:
            del self._by_name[member.name]
        for tag in member.tags:
            self._index_remove(tag, member)
        member.tags.clear()

    def is_online(self, name: str) -> bool:
        return name in self._by_name

    def online_users(self) -> list[str]:
        """Every online username, in login order."""
        return list(self._by_name)

    def _member(self, session: HubSession) -> _Member:
        member = self._members.get(session)
        if member is None:
            raise LoginRequired()
        return member

    # --- subscriptions -------------------------------------------------

    def subscribe(self, session: HubSession, tag: str) -> None:
        """At most 3 tags per session (C{#ALL} is one of them); no repeats."""
        member = self._member(session)
        tag = check_subscription_tag(tag)
        if tag in member.tags or len(member.tags) >= MAX_SUBSCRIPTIONS:
            raise LimitExceeded(SUBSCRIPTION_REFUSED % (tag,))
        member.tags.add(tag)
        self._index.setdefault(tag, set()).add(member)

    def unsubscribe(self, session: HubSession, tag: str) -> None:
        """C{#ALL} drops every subscription; an unknown tag changes nothing."""
        member = self._member(session)
        tag = check_subscription_tag(tag)
        if tag == ALL:
            drop = list(member.tags)
        elif tag in member.tags:
            drop = [tag]
        else:
            return
        for t in drop:
            member.tags.discard(t)
            self._index_remove(t, member)

    def subscriptions(self, session: HubSession) -> list[str]:
        return sorted(self._member(session).tags)

    def _index_remove(self, tag: str, member: _Member) -> None:
        members = self._index.get(tag)
        if members is not None:
            members.discard(member)
            if not members:
                del self._index[tag]

    # --- publishing ----------------------------------------------------

    def publish(
        self,
        session: HubSession,
        message: str,
        hashtags: str | None = "",
        journal: dict[str, Any] | None = None,
    ) -> Deferred[Tweet]:
        """
        Validate, rate-limit, fan out at once, and queue for storage.

        Not a coroutine: this is the hot path, and its refusals are raised
        synchronously (see the class docstring).

        @param journal: the TWEET's history row, stored in the tweet's batch.
        @return: a Deferred firing with the tweet object once it is durable
            (or failing with L{DatabaseUnavailable} after C{fail_after}).
        """
        member = self._member(session)
        check_message(message)
        hashtags = hashtags or ""
        tags = parse_hashtags(hashtags)
        if not self._running:
            raise TemporaryError("ttweet is not accepting tweets now; try later")
        if self.writer.pending_rows >= self.max_pending_rows:
            raise DatabaseUnavailable("tweets cannot be stored now; try later")
        keys = (member.name, ("session", member.serial))
        address = (member.address,) if member.address is not None else ()
        if not TokenBuckets.take_together((self.flood, keys), (self.address_flood, address)):
            self.rate_limited += 1
            raise RateLimited("too many tweets; try later")

        tweet_id = self._next_id
        self._next_id += 1
        now = self.clock.seconds()
        ts_ms = int(now * 1000)
        tweet: Tweet = {
            "id": tweet_id,
            "user": member.name,
            "message": message,
            "hashtags": hashtags,
            "ts": wire.iso_ms(ts_ms),
        }
        recipients = self._fan_out(tweet, tags)
        self._last_message = message
        self.published += 1

        d: Deferred[Tweet] = Deferred()
        self.writer.add(PendingTweet(tweet, ts_ms, recipients, d, now, journal))
        return d

    def _fan_out(self, tweet: Tweet, tags: tuple[str, ...]) -> list[int]:
        """
        Push the tweet's C{600} line once to every member subscribed to one
        of C{tags} or to C{#ALL}; return the registered recipients' account
        ids (their timeline entries, for the batch writer).  The line is
        encoded once, and only when someone is subscribed.

        The recipient collection is snapshotted (a tuple or a fresh union
        set) because a push may make the protocol drop a slow connection,
        and a synchronous logout would otherwise change a set mid-iteration.
        """
        index = self._index
        groups = [index[t] for t in tags if t in index]
        everyone = index.get(ALL)
        if everyone:
            groups.append(everyone)
        ids: list[int] = []
        if not groups:
            return ids
        targets: Iterable[_Member] = tuple(groups[0]) if len(groups) == 1 else set().union(*groups)
        data = b"600 " + wire.dumps(tweet).encode("utf-8") + b"\r\n"
        sent = 0
        for member in targets:
            if not member.online:  # dropped by an earlier push in this loop
                continue
            try:
                member.send(data)
            except Exception:
                self.log.failure("push to {user} failed", user=member.name)
            sent += 1
            timeline = member.timeline
            if timeline is None:
                assert member.account_id is not None
                ids.append(member.account_id)
            else:
                timeline.append(tweet)
        self.deliveries += sent
        return ids

    # --- reading -------------------------------------------------------

    def last(self) -> Deferred[str | None]:
        """The most recent tweet's message (kept in memory; loaded at start)."""
        return succeed(self._last_message)

    def timeline(self, session: HubSession) -> Deferred[list[Tweet]]:
        """Tweets delivered to this session's user, oldest first."""
        member = self._member(session)
        if member.timeline is not None:
            return succeed(list(member.timeline))
        account_id = member.account_id
        assert account_id is not None
        unflushed = [p.tweet for p in self.writer.pending() if account_id in p.recipients]
        # A callback chain, not a coroutine: a per-command lookup whose
        # refusal (not logged in) is raised synchronously, like every hub's.
        d = self.store.timeline(account_id, self.timeline_limit)
        return d.addCallback(self._merge, unflushed)

    def tweets_by(self, user: str) -> Deferred[list[Tweet]]:
        """
        C{user}'s tweets, oldest first (the newest C{timeline_limit}).

        @raise NameNotAllowed: C{user} is not a well-formed username.
        @raise NotFound: C{user} is not online, has no account and no tweets
            (as a failed Deferred).
        """
        check_username(user)  # raised synchronously, like every hub refusal
        unflushed = [p.tweet for p in self.writer.pending() if p.tweet["user"] == user]
        return self._tweets_by(user, unflushed)

    @deferred
    async def _tweets_by(self, user: str, unflushed: list[Tweet]) -> list[Tweet]:
        tweets = self._merge(await self.store.tweets_by(user, self.timeline_limit), unflushed)
        if tweets or user in self._by_name or await self.store.user_known(user):
            return tweets
        raise NotFound("no user %s in the system" % (user,))

    def _merge(self, rows: list[TweetRow], unflushed: list[Tweet]) -> list[Tweet]:
        """Stored rows plus not-yet-stored tweets, deduplicated, oldest first."""
        tweets = [_tweet_object(r) for r in rows]
        if unflushed:
            seen = {t["id"] for t in tweets}
            tweets.extend(t for t in unflushed if t["id"] not in seen)
            tweets.sort(key=lambda t: t["id"])
        return tweets[-self.timeline_limit :]

    def stats(self) -> dict[str, Any]:
        return {
            "online": len(self._by_name),
            "subscriptions": {tag: len(m) for tag, m in self._index.items()},
            "published": self.published,
            "deliveries": self.deliveries,
            "stored": self.writer.stored,
            "pending_tweets": self.writer.pending_count(),
            "pending_rows": self.writer.pending_rows,
            "flush_failures": self.writer.flush_failures,
            "rate_limited": self.rate_limited,
        }


def _tweet_object(row: TweetRow) -> Tweet:
    """The wire tweet object of a stored row."""
    return {
        "id": row.id,
        "user": row.user,
        "message": row.message,
        "hashtags": row.hashtags,
        "ts": wire.iso_ms(row.ts_ms),
    }

"""
ttweet: hashtag publish/subscribe with timelines (PROTOCOL.md section 3).

This module decides; it never parses wire lines, never touches SQL and never
touches a socket.  The protocol (C{netshare.protocols.ttweet}) hands the
L{Hub} opaque session objects with C{username}, C{account_id} (None for a
guest) and C{sendPush(data: bytes)}; the hub hands a
L{netshare.storage.tweets.TweetStore} batches to persist.

Fan-out is the hot path (PERF.md section 4: at least half the delivery rate of
a minimal Twisted fan-out).  So, per tweet: the push line is serialised
once; the recipients are the union of the tag index's sets (each recipient
once, the sender only if subscribed); each recipient costs one
C{sendPush(data)} with the I{same} bytes object plus one timeline entry (a
reference to the shared tweet dict for a guest, the recipient's account id
in the tweet's batch entry for a registered user).  Nothing on that path waits for
the database or for a slow reader: C{sendPush} only queues, and the protocol
drops a connection whose queue passes its output limit.

Durability: the tweet, and the timeline entries of registered recipients, are
written by the batch writer inside the hub (one store call per
batch, at most one in flight).  The Deferred returned by L{Hub.publish} fires
when the batch holding the tweet is committed, so C{200 ok} means durable,
while subscribers already had their C{600} push.

Decisions where PROTOCOL.md is silent (documented here and in the report):
 - A whitespace-only message is C{501 message format illegal}, like an empty
   one (RELIABILITY.md item 27); so is a message holding control characters
   (Unicode category Cc) or line/paragraph separators (Zl, Zp), which would
   let a tweet forge lines in C{LAST}, or lone surrogates (not encodable as
   UTF-8).
 - Length is counted in Unicode code points: an emoji is 1, a combining
   mark is 1 more.  An empty message is 501 even though "0 characters" is
   also a length problem: emptiness is a format error in the assignment.
 - Tags are case-sensitive (C{#cs} and C{#CS} differ); only the exact
   C{#ALL} is special, C{#all} is an ordinary tag.  A tag repeated inside
   one tweet (C{#a#a}) is allowed; it is still delivered once.
 - C{GETTWEETS <user>}: the user is "in the system" when online now, or
   holding an account, or having any stored tweet.  A name that is not even
   a well-formed username is C{553 username has wrong format} (never echoed).
 - C{UNSUBSCRIBE} of a malformed tag is C{553 hashtag illegal format}; of a
   well-formed tag one is not subscribed to, success with no change.
"""

from __future__ import annotations

import itertools
import re
from collections import deque
from typing import Any, Iterable

from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.logger import Logger

from netshare import wire
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
from netshare.text import first_unsafe, is_username
from netshare.throttle import TokenBuckets

ALL = "#ALL"
MAX_MESSAGE = 150
MAX_TAGS = 5
MAX_SUBSCRIPTIONS = 3
MAX_TAG_STRING = MAX_TAGS * 15            # "#" + 14 per unit

_UNIT_RE = re.compile(r"[A-Za-z0-9]{1,14}")
_TAG_RE = re.compile(r"#[A-Za-z0-9]{1,14}")

_USER_FORMAT = "username has wrong format"
_MESSAGE_LENGTH = "message length illegal"
_MESSAGE_FORMAT = "message format illegal"
_HASHTAG_FORMAT = "hashtag illegal format"
_SUB_FAILED = "operation failed: sub %s failed, already exists or exceeds 3 limitation"


# --- validation ----------------------------------------------------------

def check_username(name: str) -> str:
    """A user name (L{netshare.text.USERNAME}), else 553."""
    if not is_username(name):
        raise NameNotAllowed(_USER_FORMAT)
    return name


def check_message(text: str) -> str:
    """
    1-150 Unicode code points, not blank, no control characters.

    The cheap checks run first so a 4 KiB line is refused without scanning
    its characters one by one.
    """
    if not isinstance(text, str) or not text:
        raise BadArguments(_MESSAGE_FORMAT)
    if len(text) > MAX_MESSAGE:
        raise LimitExceeded(_MESSAGE_LENGTH)
    if text.isspace():
        raise BadArguments(_MESSAGE_FORMAT)
    if not text.isprintable() and first_unsafe(text) is not None:
        # (isprintable() is False for spaces other than " " too: it is only
        # the cheap test that nothing needs a closer look.)
        raise BadArguments(_MESSAGE_FORMAT)
    return text


def parse_hashtags(s: str | None) -> tuple[str, ...]:
    """
    C{"#cs#3251"} -> C{("#cs", "#3251")}; C{""} (or None) -> no tags.

    1-5 units, each C{#} + 1-14 ASCII letters/digits, written together;
    C{#ALL} may not be tweeted to.
    """
    if not s:
        return ()
    if not isinstance(s, str) or len(s) > MAX_TAG_STRING or s[0] != "#":
        raise NameNotAllowed(_HASHTAG_FORMAT)
    units = s[1:].split("#")
    if len(units) > MAX_TAGS:
        raise NameNotAllowed(_HASHTAG_FORMAT)
    tags = []
    for unit in units:
        if _UNIT_RE.fullmatch(unit) is None or unit == "ALL":
            raise NameNotAllowed(_HASHTAG_FORMAT)
        tags.append("#" + unit)
    return tuple(tags)


def check_subscription_tag(tag: str) -> str:
    """One unit (C{#ALL} allowed); returns it unchanged."""
    if not isinstance(tag, str) or _TAG_RE.fullmatch(tag) is None:
        raise NameNotAllowed(_HASHTAG_FORMAT)
    return tag


# --- flood limit ---------------------------------------------------------

#: The flood limit: a token bucket per user name, per connection and per
#: client address (see L{netshare.throttle.TokenBuckets}); renaming, or
#: reconnecting as a new guest, buys no extra tweets.
FloodLimiter = TokenBuckets


# --- the hub ---------------------------------------------------------------

class _Member:
    """The hub's state for one logged-in session."""

    __slots__ = ("session", "name", "account_id", "address", "send", "tags", "timeline",
                 "online", "serial")

    #: Numbers sessions for their flood bucket (an id() would be reused).
    _serials = itertools.count(1)

    def __init__(self, session, timeline_limit: int):
        self.session = session
        self.serial = next(self._serials)
        self.name: str = session.username
        self.address = getattr(session, "host", None)   # the client's address, if known
        self.account_id = session.account_id     # None for a guest
        self.send = session.sendPush
        self.tags: set[str] = set()
        # A guest's timeline lives (bounded) in memory for its session; a
        # registered user's goes to the database through the batch writer.
        self.timeline = None if self.account_id is not None else deque(maxlen=timeline_limit)
        self.online = True


class _Pending:
    """One published tweet waiting to be stored (with its timeline entries)."""

    __slots__ = ("tweet", "ts_ms", "recipients", "deferred", "since", "rows", "journal")

    def __init__(self, tweet: dict, ts_ms: int, recipients: list[int], deferred, since: float,
                 journal=None):
        self.tweet = tweet
        self.ts_ms = ts_ms
        self.recipients = recipients     # registered recipients' account ids
        self.deferred = deferred         # None once fired or failed
        self.since = since
        self.journal = journal           # the TWEET's history row, stored with the tweet
        self.rows = 1 + len(recipients) + (journal is not None)


class Hub:
    """
    The live ttweet state: who is online, the tag index, fan-out, timelines,
    flood limit and the batch writer.

    Validation errors and refusals are raised synchronously as
    L{netshare.errors.NetshareError}s; the protocol calls every method
    through C{maybeDeferred}, so a raise and a failed Deferred look the same.

    @param store: a L{netshare.storage.tweets.TweetStore} (or anything with
        its methods returning Deferreds).
    @param clock: an C{IReactorTime}; the global reactor by default.
    @param timeline_limit: the most recent entries kept in a guest's
        timeline and returned by L{timeline} / L{tweets_by}.
    @param batch_interval: a queued tweet waits at most this long before its
        batch starts (unless a batch is already being written).
    @param batch_rows: start a batch at once when this many rows (tweets +
        timeline entries) are queued.
    @param batch_max_rows: rows per store call, at most (a backlog after an
        outage is written in several calls, never one huge transaction).
    @param max_pending_rows: refuse new tweets (451) while this many rows
        are waiting for the database, so an outage cannot exhaust memory.
    @param fail_after: a publisher waiting this long for a failing database
        gets L{DatabaseUnavailable}; the tweet stays queued and is stored
        when the database is back.
    @param retry_delays: backoff between failed batches (the last repeats).
    @param stop_timeout: how long L{stop} keeps retrying before it gives up
        on what is still queued (and logs how much).
    """

    log = Logger()

    def __init__(self, store, clock=None, flood_burst: float = 50, flood_rate: float = 20.0,
                 flood_address_burst: float = 100, flood_address_rate: float = 40.0,
                 timeline_limit: int = 1000, batch_interval: float = 0.05,
                 batch_rows: int = 2000, batch_max_rows: int = 20_000,
                 max_pending_rows: int = 100_000, fail_after: float = 5.0,
                 retry_delays: Iterable[float] = (0.1, 0.2, 0.5, 1.0, 2.0, 5.0),
                 stop_timeout: float = 5.0):
        if clock is None:
            from twisted.internet import reactor as clock
        self.store = store
        self.clock = clock
        # Per user name and per connection; and per client address, a bigger
        # bucket (several people may share an address), so that new guest
        # names on new connections buy no extra tweets.
        self.flood = FloodLimiter(clock, flood_burst, flood_rate)
        self.address_flood = FloodLimiter(clock, flood_address_burst, flood_address_rate)
        self.timeline_limit = max(1, int(timeline_limit))
        self.batch_interval = batch_interval
        self.batch_rows = batch_rows
        self.batch_max_rows = batch_max_rows
        self.max_pending_rows = max_pending_rows
        self.fail_after = fail_after
        self.retry_delays = tuple(retry_delays) or (1.0,)
        self.stop_timeout = stop_timeout

        self._members: dict[Any, _Member] = {}      # session -> member
        self._by_name: dict[str, _Member] = {}      # username -> member
        self._index: dict[str, set[_Member]] = {}   # tag -> subscribed members
        self._next_id = 1
        self._last_message: str | None = None
        self._running = False

        # batch writer state
        self._queue: deque[_Pending] = deque()
        self._queued_rows = 0
        self._pending_rows = 0          # queued + in flight
        self._inflight: list[_Pending] | None = None
        self._timer = None
        self._retry_call = None
        self._failures = 0
        self._stopping = False
        self._stop_deadline = 0.0
        self._stop_waiters: list[Deferred] = []

        # statistics
        self.published = 0
        self.deliveries = 0
        self.stored = 0
        self.flush_failures = 0
        self.rate_limited = 0

    # --- lifecycle -----------------------------------------------------

    def start(self) -> Deferred:
        """Load the next tweet id and the last message; then accept tweets."""
        d = maybeDeferred(self.store.max_tweet_id)

        def got_max(max_id):
            self._next_id = int(max_id or 0) + 1
            return self.store.last_message()

        def got_last(message):
            self._last_message = message
            self._running = True
            self.log.info("ttweet hub started, next tweet id {next_id}", next_id=self._next_id)

        return d.addCallback(got_max).addCallback(got_last)

    def stop(self) -> Deferred:
        """
        Refuse new tweets and write everything queued.

        Fires (never fails) when the queue is empty, or after
        C{stop_timeout} of failed attempts, when what is left is logged as
        lost and its publishers get L{DatabaseUnavailable}.
        """
        self._running = False
        d = Deferred()
        self._stop_waiters.append(d)
        if not self._stopping:
            self._stopping = True
            self._stop_deadline = self.clock.seconds() + self.stop_timeout
            self._cancel_timers()
        if self._inflight is None and self._retry_call is None:
            self._next_step(failed=False)
        return d

    # --- sessions ------------------------------------------------------

    def login(self, session) -> None:
        """Make C{session} online; C{555 username illegal} if its name is."""
        name = check_username(session.username)
        if name in self._by_name:
            raise Conflict("username illegal")
        if session in self._members:
            raise Conflict("username illegal")
        member = _Member(session, self.timeline_limit)
        self._members[session] = member
        self._by_name[name] = member

    def logout(self, session) -> None:
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

    def _member(self, session) -> _Member:
        member = self._members.get(session)
        if member is None:
            raise LoginRequired()
        return member

    # --- subscriptions -------------------------------------------------

    def subscribe(self, session, tag: str) -> None:
        """At most 3 tags per session (C{#ALL} is one of them); no repeats."""
        member = self._member(session)
        tag = check_subscription_tag(tag)
        if tag in member.tags or len(member.tags) >= MAX_SUBSCRIPTIONS:
            raise LimitExceeded(_SUB_FAILED % (tag,))
        member.tags.add(tag)
        self._index.setdefault(tag, set()).add(member)

    def unsubscribe(self, session, tag: str) -> None:
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

    def subscriptions(self, session) -> list[str]:
        return sorted(self._member(session).tags)

    def _index_remove(self, tag: str, member: _Member) -> None:
        members = self._index.get(tag)
        if members is not None:
            members.discard(member)
            if not members:
                del self._index[tag]

    # --- publishing ----------------------------------------------------

    def publish(self, session, message: str, hashtags: str | None = "",
                journal=None) -> Deferred:
        """
        Validate, rate-limit, fan out at once, and queue for storage.

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
        if self._pending_rows >= self.max_pending_rows:
            raise DatabaseUnavailable("tweets cannot be stored now; try later")
        keys = (member.name, ("session", member.serial))
        address = (member.address,) if member.address is not None else ()
        if not (self.flood.has(*keys) and self.address_flood.has(*address)):
            self.rate_limited += 1
            raise RateLimited("too many tweets; try later")
        self.flood.allow(*keys)
        self.address_flood.allow(*address)

        tweet_id = self._next_id
        self._next_id += 1
        now = self.clock.seconds()
        ts_ms = int(now * 1000)
        tweet = {"id": tweet_id, "user": member.name, "message": message,
                 "hashtags": hashtags, "ts": wire.iso_ms(ts_ms)}
        data = b"600 " + wire.dumps(tweet).encode("utf-8") + b"\r\n"
        recipients = self._fan_out(tweet, tags, data)
        self._last_message = message
        self.published += 1

        d = Deferred()
        self._enqueue(_Pending(tweet, ts_ms, recipients, d, now, journal))
        return d

    def _fan_out(self, tweet: dict, tags: tuple[str, ...], data: bytes) -> list[int]:
        """
        Push C{data} once to every member subscribed to one of C{tags} or to
        C{#ALL}; return the registered recipients' account ids (their
        timeline entries, for the batch writer).

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
        targets = tuple(groups[0]) if len(groups) == 1 else set().union(*groups)
        sent = 0
        for member in targets:
            if not member.online:        # dropped by an earlier push in this loop
                continue
            try:
                member.send(data)
            except Exception:
                self.log.failure("push to {user} failed", user=member.name)
            sent += 1
            timeline = member.timeline
            if timeline is None:
                ids.append(member.account_id)
            else:
                timeline.append(tweet)
        self.deliveries += sent
        return ids

    # --- reading -------------------------------------------------------

    def last(self) -> Deferred:
        """The most recent tweet's message (kept in memory; loaded at start)."""
        return succeed(self._last_message)

    def timeline(self, session) -> Deferred:
        """Tweets delivered to this session's user, oldest first."""
        member = self._member(session)
        if member.timeline is not None:
            return succeed(list(member.timeline))
        account_id = member.account_id
        unflushed = [p.tweet for p in self._pending() if account_id in p.recipients]
        d = self.store.timeline(account_id, self.timeline_limit)
        return d.addCallback(self._merge, unflushed)

    def tweets_by(self, user: str) -> Deferred:
        """
        C{user}'s tweets, oldest first (the newest C{timeline_limit}).

        @raise NameNotAllowed: C{user} is not a well-formed username.
        @raise NotFound: C{user} is not online, has no account and no tweets.
        """
        check_username(user)
        unflushed = [p.tweet for p in self._pending() if p.tweet["user"] == user]
        d = self.store.tweets_by(user, self.timeline_limit)
        d.addCallback(self._merge, unflushed)

        def known(tweets):
            if tweets or user in self._by_name:
                return tweets
            d2 = self.store.user_known(user)
            return d2.addCallback(lambda ok: tweets if ok else _raise_no_user(user))

        return d.addCallback(known)

    def _pending(self) -> list[_Pending]:
        """Tweets not yet known to be stored, oldest first."""
        return (self._inflight or []) + list(self._queue)

    def _merge(self, rows, unflushed: list[dict]) -> list[dict]:
        """Stored rows plus not-yet-stored tweets, deduplicated, oldest first."""
        tweets = [_tweet_object(r) for r in rows]
        if unflushed:
            seen = {t["id"] for t in tweets}
            tweets.extend(t for t in unflushed if t["id"] not in seen)
            tweets.sort(key=lambda t: t["id"])
        return tweets[-self.timeline_limit:]

    def stats(self) -> dict:
        return {
            "online": len(self._by_name),
            "subscriptions": {tag: len(m) for tag, m in self._index.items()},
            "published": self.published,
            "deliveries": self.deliveries,
            "stored": self.stored,
            "pending_tweets": len(self._queue) + len(self._inflight or ()),
            "pending_rows": self._pending_rows,
            "flush_failures": self.flush_failures,
            "rate_limited": self.rate_limited,
        }

    # --- batch writer --------------------------------------------------
    #
    # States: idle (queue empty) -> armed (timer running) -> in flight
    # (one store call) -> idle, armed or in flight again; a failed call
    # puts its batch back at the front of the queue and waits out a
    # backoff (retry call) before the next attempt.

    def _enqueue(self, p: _Pending) -> None:
        self._queue.append(p)
        self._queued_rows += p.rows
        self._pending_rows += p.rows
        if self._inflight is not None or self._retry_call is not None:
            return
        if self._queued_rows >= self.batch_rows:
            self._cancel_timer()
            self._start_flush()
        elif self._timer is None:
            self._timer = self.clock.callLater(self.batch_interval, self._timer_fired)

    def _timer_fired(self) -> None:
        self._timer = None
        if self._inflight is None and self._retry_call is None and self._queue:
            self._start_flush()

    def _retry_fired(self) -> None:
        self._retry_call = None
        self._expire_waiters()
        if self._inflight is None and self._queue:
            self._start_flush()

    def _start_flush(self) -> None:
        batch: list[_Pending] = []
        rows = 0
        queue = self._queue
        while queue and (not batch or rows + queue[0].rows <= self.batch_max_rows):
            p = queue.popleft()
            batch.append(p)
            rows += p.rows
        self._queued_rows -= rows
        self._inflight = batch
        tweet_rows = []
        entries = []
        journals = []
        for p in batch:
            t = p.tweet
            tweet_rows.append({"id": t["id"], "user": t["user"], "message": t["message"],
                               "hashtags": t["hashtags"], "ts_ms": p.ts_ms})
            if p.recipients:
                entries.append((t["id"], p.recipients))
            if p.journal is not None:
                journals.append((t["id"], p.journal))
        d = maybeDeferred(self.store.save_batch, tweet_rows, entries, journals)
        d.addCallbacks(self._flush_done, self._flush_failed,
                       callbackArgs=(batch, rows), errbackArgs=(batch, rows))
        d.addErrback(lambda f: self.log.failure("ttweet batch writer bug", f))

    def _flush_done(self, _result, batch: list[_Pending], rows: int) -> None:
        self._inflight = None
        self._pending_rows -= rows
        if self._failures:
            self.log.info("tweets are stored again after {n} failed attempts", n=self._failures)
        self._failures = 0
        self.stored += len(batch)
        for p in batch:
            d, p.deferred = p.deferred, None
            if d is not None:
                d.callback(p.tweet)
        self._next_step(failed=False)

    def _flush_failed(self, failure, batch: list[_Pending], rows: int) -> None:
        self._inflight = None
        self._failures += 1
        self.flush_failures += 1
        self.log.warn("storing {count} tweets failed (attempt {attempt}): {error}",
                      count=len(batch), attempt=self._failures,
                      error=failure.getErrorMessage())
        self._queue.extendleft(reversed(batch))
        self._queued_rows += rows
        self._expire_waiters()
        self._next_step(failed=True)

    def _next_step(self, failed: bool) -> None:
        """After a batch (or at stop): decide when the next one starts."""
        if self._inflight is not None or self._retry_call is not None:
            # A publisher's callback (run while the last batch's Deferreds
            # fired) published or stopped and a batch or a retry started
            # meanwhile: it comes back here when done.  Without this, stop()
            # could fire while that batch is still being written, and two
            # batches could be in flight at once.
            return
        if self._stopping:
            if not self._queue:
                self._fire_stop_waiters()
            elif not failed:
                self._start_flush()
            elif self.clock.seconds() >= self._stop_deadline:
                self._abandon()
                self._fire_stop_waiters()
            else:
                self._retry_call = self.clock.callLater(self._backoff(), self._retry_fired)
            return
        if not self._queue:
            return
        if failed:
            self._retry_call = self.clock.callLater(self._backoff(), self._retry_fired)
        else:
            # The oldest entry has waited during the last batch already.
            wait = self._queue[0].since + self.batch_interval - self.clock.seconds()
            if wait <= 0 or self._queued_rows >= self.batch_rows:
                self._cancel_timer()
                self._start_flush()
            elif self._timer is None:
                self._timer = self.clock.callLater(wait, self._timer_fired)

    def _backoff(self) -> float:
        return self.retry_delays[min(self._failures, len(self.retry_delays)) - 1]

    def _expire_waiters(self) -> None:
        """Fail publishers that waited C{fail_after}; their tweets stay queued."""
        limit = self.clock.seconds() - self.fail_after
        expired = 0
        for p in self._queue:
            if p.since > limit:
                break
            d, p.deferred = p.deferred, None
            if d is not None:
                expired += 1
                d.errback(DatabaseUnavailable())
        if expired:
            self.log.error("{count} tweets not yet stored after {seconds}s; publishers told 451, "
                           "still retrying", count=expired, seconds=self.fail_after)

    def _abandon(self) -> None:
        lost = list(self._queue)
        self._queue.clear()
        self._queued_rows = 0
        self._pending_rows = 0
        self.log.critical("shutting down with {count} tweets not stored (ids {first}..{last})",
                          count=len(lost), first=lost[0].tweet["id"], last=lost[-1].tweet["id"])
        for p in lost:
            d, p.deferred = p.deferred, None
            if d is not None:
                d.errback(DatabaseUnavailable())

    def _fire_stop_waiters(self) -> None:
        waiters, self._stop_waiters = self._stop_waiters, []
        for d in waiters:
            d.callback(None)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            if self._timer.active():
                self._timer.cancel()
            self._timer = None

    def _cancel_timers(self) -> None:
        self._cancel_timer()
        if self._retry_call is not None:
            if self._retry_call.active():
                self._retry_call.cancel()
            self._retry_call = None


def _tweet_object(row) -> dict:
    """The wire tweet object of a stored row."""
    return {"id": row.id, "user": row.user, "message": row.message,
            "hashtags": row.hashtags, "ts": wire.iso_ms(row.ts_ms)}


def _raise_no_user(user: str):
    raise NotFound("no user %s in the system" % (user,))

"""
ttweet storage: the tweets themselves and the timelines of registered users.

The hub never writes one tweet at a time: its batch writer
(L{netshare.services.ttweet.writer}) hands L{thd_save_batch} everything that
accumulated in the last ~50 ms, so the
database is off the fan-out path and a write costs one transaction per batch
(a batched Core executemany is some 400 times faster than a transaction per
row).

Tweet ids are assigned by the hub (C{max(id) + 1} at start-up, then counted in
memory) rather than by the database: the id is part of the C{600} push, which
goes out before the batch is written.  That makes a batch replayable, so
L{thd_save_batch} skips tweets that are already stored: a batch whose commit
succeeded but whose answer was lost is retried without a duplicate-key error
poisoning the queue.

Timeline rows are ordered by their own autoincrement id; the hub writes
batches strictly in tweet order with at most one batch in flight, so that
order is also tweet order.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import Connection
from twisted.internet.defer import Deferred

from netshare.storage import plainsql
from netshare.storage.history import JournalRow, insert_rows
from netshare.storage.pool import DBPool
from netshare.storage.schema import ID, TABLE_KW, accounts, metadata

E = TypeVar("E")

# Column sizes, shared with the validation in netshare.services.ttweet.
USER_LEN = 32
HASHTAGS_LEN = 80  # 5 units of at most 15 characters = 75
# Upper bound of any listing limit, whatever a caller passes.
MAX_LIMIT = 100_000
# Ids per IN (...) clause: far below every backend's bound-parameter limit.
_IN_CHUNK = 500

tweets = sa.Table(
    "tweets",
    metadata,
    sa.Column("id", ID, primary_key=True, autoincrement=False),
    sa.Column("user", sa.String(USER_LEN), nullable=False),
    sa.Column("message", sa.Text, nullable=False),
    sa.Column("hashtags", sa.String(HASHTAGS_LEN), nullable=False),
    sa.Column("ts_ms", sa.BigInteger, nullable=False),
    # (user, id) serves GETTWEETS: one user's tweets in id order.
    sa.Index("ix_tweets_user_id", "user", "id"),
    **TABLE_KW,
)

timelines = sa.Table(
    "timelines",
    metadata,
    sa.Column("id", ID, primary_key=True, autoincrement=True),
    # The registered recipient, by account id (never by name: a removed
    # account's name registered again starts with an empty timeline).
    sa.Column("account_id", sa.BigInteger, nullable=False),
    sa.Column("tweet_id", sa.BigInteger, nullable=False),
    sa.Index("ix_timelines_account_id_id", "account_id", "id"),
    **TABLE_KW,
)


@dataclass(frozen=True, slots=True)
class TweetRow:
    """One stored tweet, as plain data (the hub renders the wire object)."""

    id: int
    user: str
    message: str
    hashtags: str
    ts_ms: int


def _limit(limit: int | str) -> int:
    """Clamp a listing limit to 0..MAX_LIMIT (never trust a caller's number)."""
    return max(0, min(int(limit), MAX_LIMIT))


def _chunks(seq: Sequence[E], n: int) -> Iterator[Sequence[E]]:
    for i in range(0, len(seq), n):
        yield seq[i : i + n]


_TWEET_COLS = (tweets.c.id, tweets.c.user, tweets.c.message, tweets.c.hashtags, tweets.c.ts_ms)


_TWEET_INSERT = ("id", "user", "message", "hashtags", "ts_ms")
_TIMELINE_INSERT = ("account_id", "tweet_id")


def _rows(result: Iterable[sa.Row[int, str, str, str, int]]) -> list[TweetRow]:
    return [TweetRow(r[0], r[1], r[2], r[3], r[4]) for r in result]


def thd_save_batch(
    conn: Connection,
    tweet_rows: Sequence[dict[str, Any]],
    timeline_entries: Sequence[tuple[int, Sequence[int]]],
    journals: Sequence[tuple[int, JournalRow]] = (),
) -> int:
    """
    Store one batch in the caller's transaction.

    @param tweet_rows: dicts with C{id, user, message, hashtags, ts_ms}.
    @param timeline_entries: C{(tweet_id, [recipient account id, ...])}
        pairs, in tweet order.  Grouped per tweet so the reactor thread
        never builds one object per delivery; the rows are expanded here.
    @param journals: C{(tweet_id, history row)} of the TWEET commands: each
        stored with its tweet, so an acknowledged tweet and its history entry
        survive a crash together.
    @return: the number of tweets newly stored (already-stored ones from a
        replayed batch are skipped, with their timeline rows).
    """
    ids = [t["id"] for t in tweet_rows]
    present: set[int] = set()
    for chunk in _chunks(ids, _IN_CHUNK):
        present.update(plainsql.select_in(conn, tweets, "id", chunk))
    new = [t for t in tweet_rows if t["id"] not in present] if present else list(tweet_rows)
    plainsql.insert_tuples(
        conn,
        tweets,
        _TWEET_INSERT,
        [(t["id"], t["user"], t["message"], t["hashtags"], t["ts_ms"]) for t in new],
    )
    plainsql.insert_tuples(
        conn,
        timelines,
        _TIMELINE_INSERT,
        [
            (account_id, tid)
            for tid, account_ids in timeline_entries
            if tid not in present
            for account_id in account_ids
        ],
    )
    rows = [row for tid, row in journals if tid not in present]
    if rows:
        insert_rows(conn, rows)
    return len(new)


def thd_max_tweet_id(conn: Connection) -> int:
    """The largest stored tweet id, 0 when there is none."""
    return conn.execute(sa.select(sa.func.max(tweets.c.id))).scalar() or 0


def thd_tweets_by(conn: Connection, user: str, limit: int) -> list[TweetRow]:
    """The C{limit} most recent tweets of C{user} (exact name), oldest first."""
    q = (
        sa.select(*_TWEET_COLS)
        .where(tweets.c.user == user)
        .order_by(tweets.c.id.desc())
        .limit(_limit(limit))
    )
    rows = _rows(conn.execute(q))
    rows.reverse()
    return rows


def thd_last_message(conn: Connection) -> str | None:
    """The message of the most recent tweet, or None."""
    return conn.execute(sa.select(tweets.c.message).order_by(tweets.c.id.desc()).limit(1)).scalar()


def thd_timeline(conn: Connection, account_id: int, limit: int) -> list[TweetRow]:
    """The C{limit} most recent tweets delivered to the account, oldest first."""
    q = (
        sa.select(*_TWEET_COLS)
        .select_from(timelines.join(tweets, tweets.c.id == timelines.c.tweet_id))
        .where(timelines.c.account_id == account_id)
        .order_by(timelines.c.id.desc())
        .limit(_limit(limit))
    )
    rows = _rows(conn.execute(q))
    rows.reverse()
    return rows


def thd_user_known(conn: Connection, user: str) -> bool:
    """
    Is C{user} "in the system" beyond being online: an account (names are
    unique case-insensitively, as in L{netshare.storage.accounts}) or at
    least one stored tweet under exactly that name.
    """
    if len(user) > USER_LEN:
        return False
    q = sa.select(accounts.c.id).where(accounts.c.name_key == user.lower()).limit(1)
    if conn.execute(q).first() is not None:
        return True
    q = sa.select(tweets.c.id).where(tweets.c.user == user).limit(1)
    return conn.execute(q).first() is not None


class TweetStore:
    """The ttweet tables seen from the reactor thread: every method runs one
    C{thd_*} function in the L{DBPool} and returns a Deferred of plain data."""

    def __init__(self, pool: DBPool):
        self.pool = pool

    def save_batch(
        self,
        tweet_rows: Sequence[dict[str, Any]],
        timeline_entries: Sequence[tuple[int, Sequence[int]]],
        journals: Sequence[tuple[int, JournalRow]] = (),
    ) -> Deferred[int]:
        # Not a write (DBPool.write): a batch is replay-safe by its tweet ids.
        return self.pool.run(thd_save_batch, tweet_rows, timeline_entries, journals)

    def max_tweet_id(self) -> Deferred[int]:
        return self.pool.run(thd_max_tweet_id)

    def tweets_by(self, user: str, limit: int) -> Deferred[list[TweetRow]]:
        return self.pool.run(thd_tweets_by, user, limit)

    def last_message(self) -> Deferred[str | None]:
        return self.pool.run(thd_last_message)

    def timeline(self, account_id: int, limit: int) -> Deferred[list[TweetRow]]:
        return self.pool.run(thd_timeline, account_id, limit)

    def user_known(self, user: str) -> Deferred[bool]:
        return self.pool.run(thd_user_known, user)

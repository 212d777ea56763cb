"""
The request history: one row per command on any port.

Entries are never deleted by the users they belong to: C{HISTORY DELETE}
and C{HISTORY CLEAR} set C{hidden}, which takes them out of that user's own
view; admins still see them, and only the retention period (L{thd_purge})
deletes rows.  A user's own view is by account id, so an account registered
later under a removed account's name sees none of the old entries.

Most entries are written in batches (L{thd_insert_many}); the entry of a
command that writes is written with the write itself (L{journaled}).
"""

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Concatenate, ParamSpec, TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlalchemy.sql.elements import ColumnElement
from twisted.internet.defer import Deferred

from netshare.storage import plainsql
from netshare.storage.pool import DBPool
from netshare.storage.schema import history
from netshare.wire import iso_ms

P = ParamSpec("P")
T = TypeVar("T")

#: Who a query or a clear addresses: everyone's entries (admins).
ALL = "*"

#: One history row, as L{journal_row} builds it (the columns of C{history}).
JournalRow = dict[str, Any]


@dataclass(frozen=True)
class HistoryEntry:
    id: int
    ts_ms: int
    service: str
    user: str | None
    peer: str
    command: str
    code: int

    def to_wire(self) -> dict[str, object]:
        return {
            "id": self.id,
            "ts": iso_ms(self.ts_ms),
            "user": self.user or "-",
            "service": self.service,
            "command": self.command,
            "code": self.code,
        }


def _entry(r: sa.Row[Any]) -> HistoryEntry:
    return HistoryEntry(r.id, r.ts_ms, r.service, r.user, r.peer, r.command, r.code)


def journal_row(
    seq: int,
    ts_ms: int,
    service: str,
    user: str | None,
    peer: str,
    command: str,
    code: int,
    account_id: int | None = None,
) -> JournalRow:
    """A history row as L{thd_insert_many} and L{journaled} take it (C{seq}:
    see L{netshare.services.history.HistoryRecorder.row})."""
    return {
        "seq": seq,
        "ts_ms": ts_ms,
        "service": service,
        "user": user,
        "account_id": account_id,
        "peer": peer[:64],
        "command": command,
        "code": code,
    }


def journaled(
    fn: Callable[Concatenate[Connection, P], T], journal: JournalRow | None
) -> Callable[Concatenate[Connection, P], T]:
    """
    C{fn} that also inserts C{journal}, the history entry of the command
    that asked for it, in the same transaction once C{fn} succeeded: an
    acknowledged write and the record of it survive a crash together or not
    at all.  Run it with L{DBPool.write} (inserted by a transaction run
    twice, the entry would be there twice).  Without a journal: C{fn}.
    """
    if not journal:
        return fn
    rows = [journal]

    @functools.wraps(fn)
    def thd(conn: Connection, /, *args: P.args, **kwargs: P.kwargs) -> T:
        result = fn(conn, *args, **kwargs)
        insert_rows(conn, rows)
        return result

    return thd


def thd_insert_many(conn: Connection, rows: list[JournalRow]) -> int:
    """One executemany for a whole batch (rows: L{journal_row})."""
    if rows:
        insert_rows(conn, rows)
    return len(rows)


#: The columns a history row is inserted with, in order.
_COLUMNS = ("seq", "ts_ms", "service", "user", "account_id", "peer", "command", "code")


def insert_rows(conn: Connection, rows: list[JournalRow]) -> None:
    """
    Insert history rows (L{journal_row}) in the caller's transaction.

    Every command is a history row, so this is the most frequent database
    statement: plain SQL over the same table (L{netshare.storage.plainsql}),
    as tuples; on SQLite many rows a statement.
    """
    plainsql.insert_tuples(
        conn, history, _COLUMNS, [tuple([r[c] for c in _COLUMNS]) for r in rows]
    )


def _where(
    own: int | None = None, user: str | None = ALL, anonymous: bool = False
) -> list[ColumnElement[bool]]:
    """The rows a view shows: C{own} (an account id: that account's own view,
    hidden entries left out), or an admin's view of C{user} (a name, or
    L{ALL}) or of the C{anonymous} entries (commands sent before login)."""
    if own is not None:
        return [history.c.account_id == own, history.c.hidden == sa.false()]
    if anonymous:
        return [history.c.user.is_(None)]
    if user != ALL:
        return [history.c.user == user]
    return []


def thd_list(
    conn: Connection,
    limit: int,
    own: int | None = None,
    user: str | None = ALL,
    anonymous: bool = False,
) -> list[HistoryEntry]:
    """Newest first; see L{_where} for which rows."""
    q = sa.select(history).where(*_where(own, user, anonymous))
    q = q.order_by(history.c.seq.desc()).limit(limit)
    return [_entry(r) for r in conn.execute(q)]


def thd_get(conn: Connection, entry_id: int) -> tuple[HistoryEntry, int | None, bool] | None:
    """One entry with its owner: C{(entry, account_id, hidden)}, or None."""
    r = conn.execute(sa.select(history).where(history.c.id == entry_id)).first()
    return None if r is None else (_entry(r), r.account_id, bool(r.hidden))


def thd_hide(conn: Connection, entry_id: int) -> int:
    """Take one entry out of its owner's view."""
    return conn.execute(
        history.update().where(history.c.id == entry_id).values(hidden=True)
    ).rowcount


def thd_hide_all(
    conn: Connection, own: int | None = None, user: str | None = ALL, anonymous: bool = False
) -> int:
    """Take the entries of a view out of their owners' views (admins still
    see them).  @return: how many were visible to their owners before."""
    where = _where(own, user, anonymous)
    if own is None:  # an own view leaves hidden ones out already
        where.append(history.c.hidden == sa.false())
    return conn.execute(history.update().where(*where).values(hidden=True)).rowcount


def thd_purge(conn: Connection, before_ms: int, batch: int = 10_000) -> int:
    """Delete entries made before C{before_ms} (the retention period), in
    batches so one run never holds a huge transaction.  @return: rows deleted."""
    ids = [
        r.id
        for r in conn.execute(
            sa.select(history.c.id)
            .where(history.c.seq < before_ms * 1000)
            .order_by(history.c.seq)
            .limit(batch)
        )
    ]
    if not ids:
        return 0
    return conn.execute(history.delete().where(history.c.id.in_(ids))).rowcount


def thd_purge_beyond(conn: Connection, keep: int) -> int:
    """Delete every entry but the newest C{keep} (the size cap).  The cut is
    found on the C{seq} index; rows go in batches.  @return: rows deleted."""
    edge = conn.execute(
        sa.select(history.c.seq).order_by(history.c.seq.desc()).offset(keep).limit(1)
    ).scalar()
    if edge is None:
        return 0
    deleted = 0
    while True:
        ids = [
            r.id
            for r in conn.execute(
                sa.select(history.c.id).where(history.c.seq <= edge).limit(10_000)
            )
        ]
        if not ids:
            return deleted
        deleted += conn.execute(history.delete().where(history.c.id.in_(ids))).rowcount


class HistoryStore:
    """The history table seen from the reactor thread: every method runs one
    C{thd_*} function in the L{DBPool} and returns a Deferred of plain data."""

    def __init__(self, pool: DBPool):
        self.pool = pool

    def insert_many(self, rows: list[JournalRow]) -> Deferred[int]:
        # A write: a batch run twice would be recorded twice.
        return self.pool.write(thd_insert_many, rows)

    def list(
        self, limit: int, own: int | None = None, user: str | None = ALL, anonymous: bool = False
    ) -> Deferred[list[HistoryEntry]]:
        return self.pool.run(thd_list, limit, own, user, anonymous)

    def get(self, entry_id: int) -> Deferred[tuple[HistoryEntry, int | None, bool] | None]:
        return self.pool.run(thd_get, entry_id)

    # Hiding is harmless to repeat, but its journal entry is not: a write.

    def hide(self, entry_id: int, journal: JournalRow | None = None) -> Deferred[int]:
        return self.pool.write(journaled(thd_hide, journal), entry_id)

    def hide_all(
        self,
        own: int | None = None,
        user: str | None = ALL,
        anonymous: bool = False,
        journal: JournalRow | None = None,
    ) -> Deferred[int]:
        return self.pool.write(journaled(thd_hide_all, journal), own, user, anonymous)

    def purge(self, before_ms: int) -> Deferred[int]:
        return self.pool.run(thd_purge, before_ms)

    def purge_beyond(self, keep: int) -> Deferred[int]:
        return self.pool.run(thd_purge_beyond, keep)

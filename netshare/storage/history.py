"""
The request history: one row per command on any port.

Entries are never deleted by the users they belong to: C{HISTORY DELETE}
and C{HISTORY CLEAR} set C{hidden}, which takes them out of that user's own
view; admins still see them, and only the retention period (L{thd_purge})
deletes rows.  A user's own view is by account id, so an account registered
later under a removed account's name sees none of the old entries.
"""

from dataclasses import dataclass

import sqlalchemy as sa

from netshare.storage.schema import history
from netshare.wire import iso_ms

#: Who a query or a clear addresses: everyone's entries (admins).
ALL = "*"


@dataclass(frozen=True)
class HistoryEntry:
    id: int
    ts_ms: int
    service: str
    user: str | None
    peer: str
    command: str
    code: int

    def to_wire(self) -> dict:
        return {"id": self.id, "ts": iso_ms(self.ts_ms), "user": self.user or "-",
                "service": self.service, "command": self.command, "code": self.code}


def _entry(r) -> HistoryEntry:
    return HistoryEntry(r.id, r.ts_ms, r.service, r.user, r.peer, r.command, r.code)


def thd_insert_many(conn, rows: list[dict]) -> int:
    """One executemany for a whole batch (rows: ts_ms, service, user,
    account_id, peer, command, code)."""
    if rows:
        conn.execute(history.insert(), rows)
    return len(rows)


def _where(own: int | None = None, user: str | None = ALL, anonymous: bool = False):
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


def thd_list(conn, limit: int, own: int | None = None, user: str | None = ALL,
             anonymous: bool = False) -> list[HistoryEntry]:
    """Newest first; see L{_where} for which rows."""
    q = sa.select(history).where(*_where(own, user, anonymous))
    q = q.order_by(history.c.seq.desc()).limit(limit)
    return [_entry(r) for r in conn.execute(q)]


def thd_get(conn, entry_id: int) -> HistoryEntry | None:
    """One entry with its owner: C{(entry, account_id, hidden)}, or None."""
    r = conn.execute(sa.select(history).where(history.c.id == entry_id)).first()
    return None if r is None else (_entry(r), r.account_id, bool(r.hidden))


def journal_row(seq, ts_ms, service, user, peer, command, code, account_id=None) -> dict:
    """A history row as L{thd_insert_many} and C{DBPool.run(journal=...)}
    take it (C{seq}: see L{netshare.services.history.HistoryRecorder.row})."""
    return {"seq": seq, "ts_ms": ts_ms, "service": service, "user": user,
            "account_id": account_id, "peer": peer[:64], "command": command, "code": code}


def thd_hide(conn, entry_id: int) -> int:
    """Take one entry out of its owner's view."""
    return conn.execute(history.update().where(history.c.id == entry_id)
                        .values(hidden=True)).rowcount


def thd_hide_all(conn, own: int | None = None, user: str | None = ALL,
                 anonymous: bool = False) -> int:
    """Take the entries of a view out of their owners' views (admins still
    see them).  @return: how many were visible to their owners before."""
    where = _where(own, user, anonymous)
    if own is None:                   # an own view leaves hidden ones out already
        where.append(history.c.hidden == sa.false())
    return conn.execute(history.update().where(*where).values(hidden=True)).rowcount


def thd_purge(conn, before_ms: int, batch: int = 10_000) -> int:
    """Delete entries made before C{before_ms} (the retention period), in
    batches so one run never holds a huge transaction.  @return: rows deleted."""
    ids = [r.id for r in conn.execute(sa.select(history.c.id)
                                      .where(history.c.seq < before_ms * 1000)
                                      .order_by(history.c.seq).limit(batch))]
    if not ids:
        return 0
    return conn.execute(history.delete().where(history.c.id.in_(ids))).rowcount


def thd_purge_beyond(conn, keep: int) -> int:
    """Delete every entry but the newest C{keep} (the size cap).  The cut is
    found on the C{seq} index; rows go in batches.  @return: rows deleted."""
    edge = conn.execute(sa.select(history.c.seq).order_by(history.c.seq.desc())
                        .offset(keep).limit(1)).scalar()
    if edge is None:
        return 0
    deleted = 0
    while True:
        ids = [r.id for r in conn.execute(sa.select(history.c.id).where(history.c.seq <= edge)
                                          .limit(10_000))]
        if not ids:
            return deleted
        deleted += conn.execute(history.delete().where(history.c.id.in_(ids))).rowcount


class HistoryStore:
    def __init__(self, pool):
        self.pool = pool

    def insert_many(self, rows):
        # A write: a batch run twice would be recorded twice.
        return self.pool.write(thd_insert_many, rows)

    def list(self, limit, own=None, user=ALL, anonymous=False):
        return self.pool.run(thd_list, limit, own, user, anonymous)

    def get(self, entry_id):
        return self.pool.run(thd_get, entry_id)

    def hide(self, entry_id, journal=None):
        return self.pool.run(thd_hide, entry_id, journal=journal)

    def hide_all(self, own=None, user=ALL, anonymous=False, journal=None):
        return self.pool.run(thd_hide_all, own, user, anonymous, journal=journal)

    def purge(self, before_ms):
        return self.pool.run(thd_purge, before_ms)

    def purge_beyond(self, keep):
        return self.pool.run(thd_purge_beyond, keep)

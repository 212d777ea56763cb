"""The request history: one row per command on any port."""

from dataclasses import dataclass

import sqlalchemy as sa

from netshare.storage.schema import history
from netshare.wire import iso_ms


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


def thd_insert_many(conn, rows: list[dict]) -> int:
    """One executemany for a whole batch (rows: ts_ms, service, user, peer, command, code)."""
    if rows:
        conn.execute(history.insert(), rows)
    return len(rows)


def thd_list(conn, user: str | None, limit: int) -> list[HistoryEntry]:
    q = sa.select(history).order_by(history.c.id.desc()).limit(limit)
    if user is not None:
        q = q.where(history.c.user == user)
    return [HistoryEntry(r.id, r.ts_ms, r.service, r.user, r.peer, r.command, r.code)
            for r in conn.execute(q)]


def thd_list_anonymous(conn, limit: int) -> list[HistoryEntry]:
    q = sa.select(history).where(history.c.user.is_(None)).order_by(history.c.id.desc()).limit(limit)
    return [HistoryEntry(r.id, r.ts_ms, r.service, r.user, r.peer, r.command, r.code)
            for r in conn.execute(q)]


def thd_clear_anonymous(conn) -> int:
    return conn.execute(history.delete().where(history.c.user.is_(None))).rowcount


def thd_get_owner(conn, entry_id: int):
    """Return (exists, user) of one entry."""
    r = conn.execute(sa.select(history.c.user).where(history.c.id == entry_id)).first()
    return (r is not None, r.user if r is not None else None)


def thd_delete(conn, entry_id: int) -> int:
    return conn.execute(history.delete().where(history.c.id == entry_id)).rowcount


def thd_clear(conn, user: str | None) -> int:
    q = history.delete()
    if user is not None:
        q = q.where(history.c.user == user)
    return conn.execute(q).rowcount


class HistoryStore:
    def __init__(self, pool):
        self.pool = pool

    def insert_many(self, rows):
        return self.pool.run(thd_insert_many, rows)

    def list(self, user, limit):
        return self.pool.run(thd_list, user, limit)

    def list_anonymous(self, limit):
        return self.pool.run(thd_list_anonymous, limit)

    def clear_anonymous(self):
        return self.pool.run(thd_clear_anonymous)

    def get_owner(self, entry_id):
        return self.pool.run(thd_get_owner, entry_id)

    def delete(self, entry_id):
        return self.pool.run(thd_delete, entry_id)

    def clear(self, user):
        return self.pool.run(thd_clear, user)

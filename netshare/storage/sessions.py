"""
Session tokens in the database (docs/protocol.md section 1.7.1).

A row holds the SHA-256 of a token's secret, never the secret: the secret
is 32 random bytes, so unlike a password there is nothing to guess from its
hash and no slow KDF is needed.  Lifetimes slide: every use pushes
C{expires_ms} forward by the lifetime the service gives.  Expired rows are
refused when used and deleted when their account makes a new session, so
they never pile up without a timer.
"""

import hmac
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.engine import Connection
from twisted.internet.defer import Deferred

from netshare.storage.accounts import Account, account_row, thd_logged_in
from netshare.storage.pool import DBPool
from netshare.storage.schema import accounts, inserted_id, sessions
from netshare.wire import iso_ms


@dataclass(frozen=True)
class Session:
    id: int
    account_id: int
    user: str
    label: str
    peer: str
    created_ms: int
    last_used_ms: int
    expires_ms: int

    def to_wire(self) -> dict[str, object]:
        return {
            "id": self.id,
            "user": self.user,
            "label": self.label,
            "peer": self.peer,
            "created": iso_ms(self.created_ms),
            "last_used": iso_ms(self.last_used_ms),
            "expires": iso_ms(self.expires_ms) if self.expires_ms else None,
        }


def _expiry(now_ms: int, ttl_ms: int) -> int:
    return now_ms + ttl_ms if ttl_ms else 0


def thd_create(
    conn: Connection,
    account_id: int,
    secret_hash: str,
    label: str,
    peer: str,
    now_ms: int,
    ttl_ms: int,
) -> int:
    """A new session of C{account_id}; its expired ones go.  @return: its id."""
    conn.execute(
        sessions.delete().where(
            sessions.c.account_id == account_id,
            sessions.c.expires_ms != 0,
            sessions.c.expires_ms <= now_ms,
        )
    )
    result = conn.execute(
        sessions.insert().values(
            account_id=account_id,
            secret_hash=secret_hash,
            label=label,
            peer=peer,
            created_ms=now_ms,
            last_used_ms=now_ms,
            expires_ms=_expiry(now_ms, ttl_ms),
        )
    )
    return inserted_id(result)


#: A session's last use (and its account's last login) is written at most
#: this often: a token login is then a read, not a durable write, and the
#: sliding lifetime is off by at most this much.
TOUCH_EVERY_MS = 60_000


def thd_check(
    conn: Connection, session_id: int, secret_hash: str, now_ms: int
) -> tuple[Account, bool] | None:
    """
    The account of a live session whose secret hashes to C{secret_hash},
    and whether its last use should be written now (L{TOUCH_EVERY_MS});
    None for anything else (no such session, another secret, expired).
    """
    row = conn.execute(
        sa.select(sessions.c.secret_hash, sessions.c.expires_ms, sessions.c.last_used_ms, accounts)
        .join(accounts, accounts.c.id == sessions.c.account_id)
        .where(sessions.c.id == session_id)
    ).first()
    if row is None or not hmac.compare_digest(row.secret_hash, secret_hash):
        return None
    if row.expires_ms and row.expires_ms <= now_ms:
        return None
    return account_row(row), now_ms - row.last_used_ms >= TOUCH_EVERY_MS


def thd_touch(
    conn: Connection, session_id: int, account_id: int, now_ms: int, ttl_ms: int
) -> None:
    """Used now: the lifetime slides forward, the account's last login is now."""
    conn.execute(
        sessions.update()
        .where(sessions.c.id == session_id)
        .values(last_used_ms=now_ms, expires_ms=_expiry(now_ms, ttl_ms))
    )
    thd_logged_in(conn, account_id, now_ms)


def thd_list(conn: Connection, account_id: int | None, now_ms: int) -> list[Session]:
    """The live sessions of one account, or of every account (None), newest first."""
    q = (
        sa.select(sessions, accounts.c.name)
        .join(accounts, accounts.c.id == sessions.c.account_id)
        .where(sa.or_(sessions.c.expires_ms == 0, sessions.c.expires_ms > now_ms))
        .order_by(sessions.c.id.desc())
    )
    if account_id is not None:
        q = q.where(sessions.c.account_id == account_id)
    return [
        Session(
            int(r.id),
            int(r.account_id),
            r.name,
            r.label,
            r.peer,
            r.created_ms,
            r.last_used_ms,
            r.expires_ms,
        )
        for r in conn.execute(q)
    ]


def thd_revoke(conn: Connection, session_id: int, account_id: int | None) -> int:
    """End one session (of C{account_id} only, unless None).  @return: 0 or 1."""
    q = sessions.delete().where(sessions.c.id == session_id)
    if account_id is not None:
        q = q.where(sessions.c.account_id == account_id)
    return conn.execute(q).rowcount


def thd_revoke_all(conn: Connection, account_id: int | None) -> int:
    """End every session of an account (of everyone: None).  @return: how many."""
    q = sessions.delete()
    if account_id is not None:
        q = q.where(sessions.c.account_id == account_id)
    return conn.execute(q).rowcount


class SessionStore:
    """The sessions seen from the reactor thread (every call a Deferred)."""

    def __init__(self, pool: DBPool):
        self.pool = pool

    # Writes (DBPool.write) are safe to run again after a lost COMMIT
    # answer except create, which would make a second row: a row nobody
    # holds the secret of, harmless and expired in time.

    def create(
        self, account_id: int, secret_hash: str, label: str, peer: str, now_ms: int, ttl_ms: int
    ) -> Deferred[int]:
        return self.pool.write(thd_create, account_id, secret_hash, label, peer, now_ms, ttl_ms)

    def check(
        self, session_id: int, secret_hash: str, now_ms: int
    ) -> Deferred[tuple[Account, bool] | None]:
        return self.pool.run(thd_check, session_id, secret_hash, now_ms)

    def touch(self, session_id: int, account_id: int, now_ms: int, ttl_ms: int) -> Deferred[None]:
        return self.pool.write(thd_touch, session_id, account_id, now_ms, ttl_ms)

    def list(self, account_id: int | None, now_ms: int) -> Deferred[list[Session]]:
        return self.pool.run(thd_list, account_id, now_ms)

    def revoke(self, session_id: int, account_id: int | None) -> Deferred[int]:
        return self.pool.write(thd_revoke, session_id, account_id)

    def revoke_all(self, account_id: int | None) -> Deferred[int]:
        return self.pool.write(thd_revoke_all, account_id)

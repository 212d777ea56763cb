"""
Accounts: names, roles and password hashes (never passwords), and what
removing an account does to everything it owned.

An account is identified by its C{id}; everything it owns refers to that id
(files, timeline, history), never to its name, so a name freed by a removal
and registered again starts with nothing.  L{thd_remove} decides, in one
transaction, what happens to what the account owned:

 - its files: deleted (their rows here; the blobs are the caller's to
   unlink once this has committed), or given to another account
   (C{transfer_to});
 - its timeline: deleted (registered users' timelines are theirs alone);
 - its sync-client queue (C{sync_clients} and C{outbox} rows under its
   name): deleted, so pending records are never pushed to a later account of
   the same name;
 - its request history: kept, for admins (under the old name and id, never
   shown to a new account of the same name), until the retention period
   purges it;
 - its tweets: kept (they were public and sit in other users' timelines).
"""

import builtins
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Connection
from twisted.internet.defer import Deferred

from netshare.errors import BadArguments, Conflict, NotFound, RateLimited
from netshare.storage.files import files
from netshare.storage.history import JournalRow, journaled
from netshare.storage.outbox import outbox, sync_clients
from netshare.storage.pool import DBPool
from netshare.storage.schema import AnyRow, accounts, inserted_id, login_penalties, sessions
from netshare.storage.tweets import timelines
from netshare.text import is_username
from netshare.throttle import LoginPolicy
from netshare.wire import iso_ms, now_ms


@dataclass(frozen=True)
class Account:
    id: int
    name: str
    role: str
    password_hash: str
    created_ms: int
    last_login_ms: int | None = None

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"

    def to_wire(self) -> dict[str, object]:
        return {
            "user": self.name,
            "role": self.role,
            "created": iso_ms(self.created_ms),
            "last_login": iso_ms(self.last_login_ms) if self.last_login_ms else None,
        }


@dataclass(frozen=True)
class RemovedAccount:
    """What L{thd_remove} did: the account, the blobs of its deleted files
    (to unlink after the commit) and how many rows of each kind went."""

    account: Account
    blob_ids: list[str] = field(default_factory=list)
    files_deleted: int = 0
    files_transferred: int = 0
    timeline_deleted: int = 0
    sync_messages_deleted: int = 0


def account_row(r: AnyRow) -> Account:
    return Account(int(r.id), r.name, r.role, r.password_hash, r.created_ms, r.last_login_ms)


def thd_get(conn: Connection, name: str) -> Account | None:
    r = conn.execute(sa.select(accounts).where(accounts.c.name_key == name.lower())).first()
    return account_row(r) if r else None


def thd_create(conn: Connection, name: str, role: str, password_hash: str) -> Account:
    created = now_ms()
    try:
        with conn.begin_nested():
            result = conn.execute(
                accounts.insert().values(
                    name=name,
                    name_key=name.lower(),
                    role=role,
                    password_hash=password_hash,
                    created_ms=created,
                )
            )
    except sa_exc.IntegrityError:
        raise Conflict("account %s exists" % (name,)) from None
    return Account(inserted_id(result), name, role, password_hash, created)


def thd_set_password(conn: Connection, name: str, password_hash: str) -> int:
    """Set a new password hash and end the account's sessions (whoever
    changes a password wants every other way in closed).
    @return: how many sessions ended."""
    account = thd_get(conn, name)
    if account is None:
        raise NotFound("no account %s" % (name,))
    conn.execute(
        accounts.update().where(accounts.c.id == account.id).values(password_hash=password_hash)
    )
    return conn.execute(sessions.delete().where(sessions.c.account_id == account.id)).rowcount


def thd_remove(conn: Connection, name: str, transfer_to: str | None = None) -> RemovedAccount:
    """
    Remove an account and decide what becomes of what it owned (see the
    module docstring), in the caller's transaction.

    @param transfer_to: another account's name to give the files to,
        instead of deleting them.
    @raise NotFound: (550) no such account (or no C{transfer_to} account).
    """
    account = thd_get(conn, name)
    if account is None:
        raise NotFound("no account %s" % (name,))
    heir = None
    if transfer_to is not None:
        heir = thd_get(conn, transfer_to)
        if heir is None:
            raise NotFound("no account %s" % (transfer_to,))
        if heir.id == account.id:
            raise BadArguments("cannot give the files of %s to itself" % (name,))
    owned = files.c.owner_id == account.id
    blob_ids: list[str] = []
    deleted = transferred = 0
    if heir is not None:
        transferred = conn.execute(
            files.update().where(owned).values(owner_id=heir.id, owner=heir.name)
        ).rowcount
    else:
        blob_ids = [r.blob_id for r in conn.execute(sa.select(files.c.blob_id).where(owned))]
        deleted = conn.execute(files.delete().where(owned)).rowcount
    timeline = conn.execute(
        timelines.delete().where(timelines.c.account_id == account.id)
    ).rowcount
    messages = conn.execute(outbox.delete().where(outbox.c.client == account.name)).rowcount
    conn.execute(sync_clients.delete().where(sync_clients.c.name == account.name))
    conn.execute(sessions.delete().where(sessions.c.account_id == account.id))
    conn.execute(accounts.delete().where(accounts.c.id == account.id))
    return RemovedAccount(account, blob_ids, deleted, transferred, timeline, messages)


def thd_list(conn: Connection) -> list[Account]:
    return [account_row(r) for r in conn.execute(sa.select(accounts).order_by(accounts.c.name))]


def thd_existing_ids(conn: Connection, ids: Iterable[int]) -> set[int]:
    """Which of C{ids} still belong to an account (the server closes the
    connections of accounts removed from outside, e.g. by the CLI)."""
    wanted = list(ids)
    found: set[int] = set()
    for i in range(0, len(wanted), 500):
        found.update(
            int(r.id)
            for r in conn.execute(
                sa.select(accounts.c.id).where(accounts.c.id.in_(wanted[i : i + 500]))
            )
        )
    return found


# ---------------------------------------------------------------------------
# Failed logins: growing delays per account and per address, in the database


def _penalty_row(conn: Connection, key: str, now_ms: int) -> AnyRow:
    """The row of C{key}, locked for this transaction, created if absent."""
    q = sa.select(login_penalties).where(login_penalties.c.key == key).with_for_update()
    row = conn.execute(q).first()
    if row is None:
        try:
            with conn.begin_nested():
                conn.execute(
                    login_penalties.insert().values(
                        key=key, failures=0.0, updated_ms=now_ms, next_slot_ms=0, locked_until_ms=0
                    )
                )
        except sa_exc.IntegrityError:  # another attempt created it just now
            pass
        row = conn.execute(q).one()
    return row


def thd_login_attempt(
    conn: Connection, keys: Sequence[tuple[str, bool]], now_ms: int, policy: LoginPolicy
) -> float:
    """
    Start one login attempt under C{keys} (C{(key, lockable)} pairs): count
    it as a failure until L{thd_login_succeeded} takes that back (so a burst
    of parallel attempts is counted before any is checked), and take its
    slot.  @return: seconds to wait before checking the password.
    @raise RateLimited: (429) a locked account (for a lockable key), or a
    wait beyond C{policy.max_wait}; the attempt is not counted.
    """
    rows = [(key, lockable, _penalty_row(conn, key, now_ms)) for key, lockable in keys]
    start, cost = now_ms, 0.0
    for _key, lockable, row in rows:
        if lockable and row.locked_until_ms > now_ms:
            raise RateLimited(
                "account locked after too many failed logins; try again in %d s"
                % math.ceil((row.locked_until_ms - now_ms) / 1000.0)
            )
        d = policy.delay(policy.decayed(row.failures, row.updated_ms, now_ms))
        if d:
            start = max(start, row.next_slot_ms)
            cost = max(cost, d)
    wait = (start - now_ms) / 1000.0 + cost
    if wait > policy.max_wait:
        raise RateLimited(
            "too many failed logins; try again in %d s" % max(1, math.ceil(wait - policy.max_wait))
        )
    for key, lockable, row in rows:
        prior = policy.decayed(row.failures, row.updated_ms, now_ms)
        failures = prior + 1
        values: dict[str, float | int] = dict(failures=failures, updated_ms=now_ms)
        if cost:
            values["next_slot_ms"] = start + int(cost * 1000)
        # Whole failures: a few seconds of forgetting must not let one more in.
        if lockable and round(prior) + 1 >= policy.lockout:
            values["locked_until_ms"] = now_ms + int(policy.lockout_seconds * 1000)
        conn.execute(login_penalties.update().where(login_penalties.c.key == key).values(**values))
    return wait


def thd_login_succeeded(
    conn: Connection,
    keys: Sequence[str],
    now_ms: int,
    policy: LoginPolicy,
    account_id: int | None = None,
) -> None:
    """The attempt started by L{thd_login_attempt} had the right password
    (and C{account_id}, if given, logged in now: its C{last_login_ms})."""
    if account_id is not None:
        thd_logged_in(conn, account_id, now_ms)
    for key in keys:
        row = conn.execute(
            sa.select(login_penalties).where(login_penalties.c.key == key).with_for_update()
        ).first()
        if row is not None:
            failures = max(0.0, policy.decayed(row.failures, row.updated_ms, now_ms) - 1)
            conn.execute(
                login_penalties.update()
                .where(login_penalties.c.key == key)
                .values(failures=failures, updated_ms=now_ms)
            )


def thd_logged_in(conn: Connection, account_id: int, now_ms: int) -> None:
    conn.execute(accounts.update().where(accounts.c.id == account_id).values(last_login_ms=now_ms))


def thd_login_penalties(
    conn: Connection, now_ms: int, policy: LoginPolicy
) -> list[dict[str, Any]]:
    """Every key that costs something now: C{{"key","who","failures","delay","locked_for"}},
    account keys shown with the account's name."""
    names: dict[str, str] = {}
    for r in conn.execute(sa.select(accounts.c.id, accounts.c.name)):
        names["account:%d" % r.id] = r.name
        names["account:%d:local" % r.id] = r.name + " (from exempt networks)"
    out = []
    for r in conn.execute(sa.select(login_penalties).order_by(login_penalties.c.key)):
        failures = policy.decayed(r.failures, r.updated_ms, now_ms)
        locked = max(0, r.locked_until_ms - now_ms) / 1000.0
        if policy.delay(failures) or locked:
            out.append(
                {
                    "key": r.key,
                    "who": names.get(r.key, r.key.partition(":")[2]),
                    "failures": round(failures, 2),
                    "delay": policy.delay(failures),
                    "locked_for": round(locked),
                }
            )
    return out


def thd_lift_penalty(conn: Connection, who: str) -> int:
    """Lift the penalties of an account (by name) or an address.
    @return: how many keys were lifted."""
    keys = ["address:" + who]
    account = thd_get(conn, who) if is_username(who) else None
    if account is not None:
        keys += ["account:%d" % account.id, "account:%d:local" % account.id]
    return conn.execute(login_penalties.delete().where(login_penalties.c.key.in_(keys))).rowcount


def thd_purge_penalties(conn: Connection, now_ms: int, policy: LoginPolicy) -> int:
    """Forget keys whose failures have all been forgotten (bounded table)."""
    stale = now_ms - int((policy.forget or 0) * 1000 * (policy.lockout + 1))
    return conn.execute(
        login_penalties.delete().where(
            login_penalties.c.updated_ms < stale, login_penalties.c.locked_until_ms < now_ms
        )
    ).rowcount


class AccountStore:
    """The accounts seen from the reactor thread: every method runs one
    C{thd_*} function in the L{DBPool} and returns a Deferred of plain data."""

    def __init__(self, pool: DBPool):
        self.pool = pool

    def get(self, name: str) -> Deferred[Account | None]:
        return self.pool.run(thd_get, name)

    # Writes (DBPool.write): run twice after a lost COMMIT answer, creating
    # and removing would answer "exists" or "no such account" for what they
    # did themselves.

    def create(
        self, name: str, role: str, password_hash: str, journal: JournalRow | None = None
    ) -> Deferred[Account]:
        return self.pool.write(journaled(thd_create, journal), name, role, password_hash)

    def set_password(self, name: str, password_hash: str) -> Deferred[int]:
        return self.pool.run(thd_set_password, name, password_hash)

    def remove(self, name: str, transfer_to: str | None = None) -> Deferred[RemovedAccount]:
        return self.pool.write(thd_remove, name, transfer_to)

    def list(self) -> Deferred[list[Account]]:
        return self.pool.run(thd_list)

    def existing_ids(self, ids: Iterable[int]) -> Deferred[set[int]]:
        return self.pool.run(thd_existing_ids, ids)

    # Writes: an attempt counted twice would cost a failure it never made.

    def login_attempt(
        self, keys: Sequence[tuple[str, bool]], now_ms: int, policy: LoginPolicy
    ) -> Deferred[float]:
        return self.pool.write(thd_login_attempt, keys, now_ms, policy)

    def login_succeeded(
        self,
        keys: Sequence[str],
        now_ms: int,
        policy: LoginPolicy,
        account_id: int | None = None,
    ) -> Deferred[None]:
        return self.pool.write(thd_login_succeeded, keys, now_ms, policy, account_id)

    def login_penalties(
        self, now_ms: int, policy: LoginPolicy
    ) -> Deferred[builtins.list[dict[str, Any]]]:
        return self.pool.run(thd_login_penalties, now_ms, policy)

    def lift_penalty(self, who: str) -> Deferred[int]:
        return self.pool.write(thd_lift_penalty, who)

    def purge_penalties(self, now_ms: int, policy: LoginPolicy) -> Deferred[int]:
        return self.pool.run(thd_purge_penalties, now_ms, policy)

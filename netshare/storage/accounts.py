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

from dataclasses import dataclass, field

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc

from netshare.errors import BadArguments, Conflict, NotFound
from netshare.storage.schema import accounts
from netshare.wire import iso_ms, now_ms


@dataclass(frozen=True)
class Account:
    id: int
    name: str
    role: str
    password_hash: str
    created_ms: int

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"

    def to_wire(self) -> dict:
        return {"user": self.name, "role": self.role, "created": iso_ms(self.created_ms)}


@dataclass(frozen=True)
class RemovedAccount:
    """What L{thd_remove} did: the account, the blobs of its deleted files
    (to unlink after the commit) and how many rows of each kind went."""

    account: Account
    blob_ids: list = field(default_factory=list)
    files_deleted: int = 0
    files_transferred: int = 0
    timeline_deleted: int = 0
    sync_messages_deleted: int = 0


def _row(r) -> Account:
    return Account(int(r.id), r.name, r.role, r.password_hash, r.created_ms)


def thd_get(conn, name: str) -> Account | None:
    r = conn.execute(sa.select(accounts).where(accounts.c.name_key == name.lower())).first()
    return _row(r) if r else None


def thd_create(conn, name: str, role: str, password_hash: str) -> Account:
    created = now_ms()
    try:
        with conn.begin_nested():
            result = conn.execute(accounts.insert().values(
                name=name, name_key=name.lower(), role=role, password_hash=password_hash,
                created_ms=created))
    except sa_exc.IntegrityError:
        raise Conflict("account %s exists" % (name,)) from None
    return Account(int(result.inserted_primary_key[0]), name, role, password_hash, created)


def thd_set_password(conn, name: str, password_hash: str):
    n = conn.execute(accounts.update().where(accounts.c.name_key == name.lower())
                     .values(password_hash=password_hash)).rowcount
    if not n:
        raise NotFound("no account %s" % (name,))


def thd_set_role(conn, name: str, role: str):
    n = conn.execute(accounts.update().where(accounts.c.name_key == name.lower())
                     .values(role=role)).rowcount
    if not n:
        raise NotFound("no account %s" % (name,))


def thd_remove(conn, name: str, transfer_to: str | None = None) -> RemovedAccount:
    """
    Remove an account and decide what becomes of what it owned (see the
    module docstring), in the caller's transaction.

    @param transfer_to: another account's name to give the files to,
        instead of deleting them.
    @raise NotFound: (550) no such account (or no C{transfer_to} account).
    """
    # Imported here: these modules define their tables on the shared
    # metadata and import this one's.
    from netshare.storage.files import files
    from netshare.storage.personnel import outbox, sync_clients
    from netshare.storage.tweets import timelines

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
    blob_ids, deleted, transferred = [], 0, 0
    if heir is not None:
        transferred = conn.execute(files.update().where(owned).values(
            owner_id=heir.id, owner=heir.name)).rowcount
    else:
        blob_ids = [r.blob_id for r in conn.execute(sa.select(files.c.blob_id).where(owned))]
        deleted = conn.execute(files.delete().where(owned)).rowcount
    timeline = conn.execute(timelines.delete().where(timelines.c.account_id == account.id)).rowcount
    messages = conn.execute(outbox.delete().where(outbox.c.client == account.name)).rowcount
    conn.execute(sync_clients.delete().where(sync_clients.c.name == account.name))
    conn.execute(accounts.delete().where(accounts.c.id == account.id))
    return RemovedAccount(account, blob_ids, deleted, transferred, timeline, messages)


def thd_list(conn) -> list[Account]:
    return [_row(r) for r in conn.execute(sa.select(accounts).order_by(accounts.c.name))]


def thd_existing_ids(conn, ids) -> set[int]:
    """Which of C{ids} still belong to an account (the server closes the
    connections of accounts removed from outside, e.g. by the CLI)."""
    ids = list(ids)
    found = set()
    for i in range(0, len(ids), 500):
        found.update(int(r.id) for r in conn.execute(
            sa.select(accounts.c.id).where(accounts.c.id.in_(ids[i:i + 500]))))
    return found


class AccountStore:
    """Async facade: every method returns a Deferred.  Creating and
    removing run as writes (L{DBPool.write}): run twice, they would answer
    "exists" or "no such account" for what they did themselves."""

    def __init__(self, pool):
        self.pool = pool

    def get(self, name):
        return self.pool.run(thd_get, name)

    def create(self, name, role, password_hash, journal=None):
        return self.pool.write(thd_create, name, role, password_hash, journal=journal)

    def set_password(self, name, password_hash):
        return self.pool.run(thd_set_password, name, password_hash)

    def set_role(self, name, role):
        return self.pool.run(thd_set_role, name, role)

    def remove(self, name, transfer_to=None):
        return self.pool.write(thd_remove, name, transfer_to)

    def list(self):
        return self.pool.run(thd_list)

    def existing_ids(self, ids):
        return self.pool.run(thd_existing_ids, ids)

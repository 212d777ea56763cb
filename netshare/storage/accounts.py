"""Accounts: names, roles and password hashes (never passwords)."""

from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc

from netshare.errors import Conflict, NotFound
from netshare.storage.schema import accounts
from netshare.wire import iso_ms, now_ms


@dataclass(frozen=True)
class Account:
    name: str
    role: str
    password_hash: str
    created_ms: int

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"

    def to_wire(self) -> dict:
        return {"user": self.name, "role": self.role, "created": iso_ms(self.created_ms)}


def _row(r) -> Account:
    return Account(r.name, r.role, r.password_hash, r.created_ms)


def thd_get(conn, name: str) -> Account | None:
    r = conn.execute(sa.select(accounts).where(accounts.c.name_key == name.lower())).first()
    return _row(r) if r else None


def thd_create(conn, name: str, role: str, password_hash: str) -> Account:
    created = now_ms()
    try:
        with conn.begin_nested():
            conn.execute(accounts.insert().values(name=name, name_key=name.lower(), role=role,
                                                  password_hash=password_hash, created_ms=created))
    except sa_exc.IntegrityError:
        raise Conflict("account %s exists" % (name,)) from None
    return Account(name, role, password_hash, created)


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


def thd_remove(conn, name: str):
    n = conn.execute(accounts.delete().where(accounts.c.name_key == name.lower())).rowcount
    if not n:
        raise NotFound("no account %s" % (name,))


def thd_list(conn) -> list[Account]:
    return [_row(r) for r in conn.execute(sa.select(accounts).order_by(accounts.c.name))]


def thd_count(conn) -> int:
    return conn.execute(sa.select(sa.func.count()).select_from(accounts)).scalar_one()


class AccountStore:
    """Async facade: every method returns a Deferred."""

    def __init__(self, pool):
        self.pool = pool

    def get(self, name):
        return self.pool.run(thd_get, name)

    def create(self, name, role, password_hash):
        return self.pool.run(thd_create, name, role, password_hash)

    def set_password(self, name, password_hash):
        return self.pool.run(thd_set_password, name, password_hash)

    def set_role(self, name, role):
        return self.pool.run(thd_set_role, name, role)

    def remove(self, name):
        return self.pool.run(thd_remove, name)

    def list(self):
        return self.pool.run(thd_list)

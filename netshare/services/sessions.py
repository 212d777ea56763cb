"""
Session tokens: a login that costs one database read instead of a password
hash (docs/protocol.md section 1.7.1).

Why: every one-shot client command used to pay a full scrypt derivation
(0.3-0.6 s by design, so that guessing passwords is slow).  A token is 32
random bytes, so checking it needs no slow hash: its guessing cost is 2**256
tries, not the strength of a password.  A client logs in with its password
once, asks for a token (C{SESSION NEW}) and keeps it (mode 0600) to log in
with C{TOKEN} until it expires or is revoked.

A token reads C{ns1.<id>.<secret>}: the id finds the row, the secret (43
characters of URL-safe base64) is compared with the stored SHA-256 in
constant time.  Lifetimes slide by C{session_ttl} from the last use; a new
password, removing the account, C{SESSION REVOKE} or C{netshare user
sessions --revoke} end them.
"""

from __future__ import annotations

import base64
import builtins
import hashlib
import os
from typing import Protocol

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from netshare.deferreds import deferred
from netshare.errors import BadArguments, BadCredentials, NotFound, PermissionDenied
from netshare.services.accounts import Caller
from netshare.services.clock import default_clock
from netshare.storage.accounts import Account
from netshare.storage.sessions import Session
from netshare.wire import iso_ms

TOKEN_PREFIX = "ns1"
MAX_LABEL = 64


class SessionStoreCalls(Protocol):
    """The store calls L{SessionService} makes (L{netshare.storage.sessions.SessionStore})."""

    def create(
        self,
        account_id: int,
        secret_hash: str,
        label: str,
        peer: str,
        now_ms: int,
        ttl_ms: int,
        /,
    ) -> Deferred[int]: ...

    def check(
        self, session_id: int, secret_hash: str, now_ms: int, /
    ) -> Deferred[tuple[Account, bool] | None]: ...

    def touch(
        self, session_id: int, account_id: int, now_ms: int, ttl_ms: int, /
    ) -> Deferred[None]: ...

    def list(self, account_id: int | None, now_ms: int, /) -> Deferred[builtins.list[Session]]: ...

    def revoke(self, session_id: int, account_id: int | None, /) -> Deferred[int]: ...

    def revoke_all(self, account_id: int | None, /) -> Deferred[int]: ...


class AccountLookup(Protocol):
    def get(self, name: str, /) -> Deferred[Account | None]: ...


def secret_hash(secret: str) -> str:
    return hashlib.sha256(secret.encode("ascii", "replace")).hexdigest()


def parse_token(token: str) -> tuple[int, str] | None:
    """C{ns1.<id>.<secret>} -> (id, secret); None if it cannot be a token."""
    parts = token.split(".")
    if len(parts) != 3 or parts[0] != TOKEN_PREFIX or not parts[1].isdigit():
        return None
    if not 1 <= len(parts[1]) <= 19 or not 20 <= len(parts[2]) <= 100:
        return None
    return int(parts[1]), parts[2]


class SessionService:
    """
    Make, check, list and end session tokens.

    @param ttl: seconds a session lives after its last use (0: forever).
    """

    log = Logger()

    def __init__(
        self,
        store: SessionStoreCalls,
        accounts: AccountLookup,
        ttl: float,
        clock: IReactorTime | None = None,
    ):
        self.store = store
        self.accounts = accounts
        self.ttl_ms = int(ttl * 1000)
        self.clock = default_clock(clock)

    def _now_ms(self) -> int:
        return int(self.clock.seconds() * 1000)

    @deferred
    async def new(self, caller: Caller, label: str = "") -> dict[str, object]:
        """
        A new token for the caller's account.
        @return: Deferred[dict] with C{id}, C{token} (shown once: only its
            hash is kept) and C{expires}.
        """
        if caller.account is None:
            raise PermissionDenied("a session needs an account")
        if len(label) > MAX_LABEL or not label.isprintable():
            raise BadArguments("label must be at most %d printable characters" % (MAX_LABEL,))
        secret = base64.urlsafe_b64encode(os.urandom(32)).rstrip(b"=").decode("ascii")
        now = self._now_ms()
        sid = await self.store.create(
            caller.account.id, secret_hash(secret), label, caller.address[:64], now, self.ttl_ms
        )
        self.log.info(
            "session {id} of {user} made from {peer}",
            id=sid,
            user=caller.account.name,
            peer=caller.address,
        )
        return {
            "id": sid,
            "token": "%s.%d.%s" % (TOKEN_PREFIX, sid, secret),
            "expires": iso_ms(now + self.ttl_ms) if self.ttl_ms else None,
        }

    @deferred
    async def login(self, token: str) -> Account:
        """
        The account a live token belongs to; L{BadCredentials} (535)
        otherwise.  A read: the session's last use is written at most once a
        minute (L{netshare.storage.sessions.TOUCH_EVERY_MS}), and then
        waited for, so that a lifetime never slides on a write that failed.
        """
        parsed = parse_token(token)
        if parsed is None:
            raise BadCredentials("bad or expired session")
        sid, secret = parsed
        now = self._now_ms()
        found = await self.store.check(sid, secret_hash(secret), now)
        if found is None:
            raise BadCredentials("bad or expired session")
        account, stale = found
        if stale:
            await self.store.touch(sid, account.id, now, self.ttl_ms)
        return account

    @deferred
    async def _whose(self, caller: Caller, user: str | None) -> int | None:
        """The account id a listing or revocation is about: the caller's own,
        or (admins only) another's by name, or everyone's (C{*}: None)."""
        if caller.account is None:
            raise PermissionDenied("sessions belong to accounts")
        if user is None or user.lower() == caller.account.name.lower():
            return caller.account.id
        if not caller.is_admin:
            raise PermissionDenied("only admins see other users' sessions")
        if user == "*":
            return None
        account = await self.accounts.get(user)
        if account is None:
            raise NotFound("no account %s" % (user,))
        return account.id

    @deferred
    async def list(self, caller: Caller, user: str | None = None) -> builtins.list[Session]:
        return await self.store.list(await self._whose(caller, user), self._now_ms())

    @deferred
    async def revoke(self, caller: Caller, session_id: int) -> None:
        """End one session: the caller's own, or anyone's for an admin."""
        if caller.account is None:
            raise PermissionDenied("sessions belong to accounts")
        owner = None if caller.is_admin else caller.account.id
        if not await self.store.revoke(session_id, owner):
            raise NotFound("no session %d" % (session_id,))
        self.log.info("session {id} revoked by {user}", id=session_id, user=caller.account.name)

    @deferred
    async def revoke_all(self, caller: Caller, user: str | None = None) -> int:
        n = await self.store.revoke_all(await self._whose(caller, user))
        self.log.info(
            "{n} sessions of {whose} revoked by {user}",
            n=n,
            whose=user or caller.name,
            user=caller.name,
        )
        return n

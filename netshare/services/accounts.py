"""
Accounts shared by every service: registration, login, roles.

Passwords are stored only as scrypt hashes in the self-describing form
C{scrypt$<N>$<r>$<p>$<salt b64>$<hash b64>} (16-byte random salt per
password, 32-byte key), so the cost parameters can be raised later without
invalidating old hashes.  Defaults follow OWASP: N=2**17, r=8, p=1 (about
128 MiB and 0.3 s per hash on the reference machine); derivations run in the
bounded L{KDFPool}, never on the reactor.  A login for an unknown name
derives against a dummy hash with the same parameters, so it costs the same
time as a wrong password and the reply is the same C{535}.
"""

from __future__ import annotations

import base64
import builtins
import hmac
import ipaddress
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from twisted.internet import task
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from netshare.deferreds import deferred
from netshare.errors import (
    BadArguments,
    BadCredentials,
    NameNotAllowed,
    PermissionDenied,
    RateLimited,
)
from netshare.kdf import KDFPool, scrypt
from netshare.services.clock import default_clock
from netshare.storage.accounts import Account, RemovedAccount
from netshare.storage.history import JournalRow
from netshare.text import USERNAME_RULE, is_username
from netshare.throttle import LoginPolicy

ROLES = ("admin", "user")
MAX_PASSWORD = 128

#: How a name that is not an account's is recorded (it may be a password
#: typed in the wrong place): as OpenSSH logs an invalid user, minus the name.
UNKNOWN_USER = "<unknown user>"

#: scrypt parameters and key of a hash: (N, r, p, salt, key).
HashParams = tuple[int, int, int, bytes, bytes]


@dataclass(frozen=True)
class Caller:
    """
    Who is asking, as the services see it: the logged-in account (None
    before login and for a ttweet guest) and the client's address (what
    guessing limits are kept per, besides the account).
    """

    account: Account | None
    address: str

    @property
    def id(self) -> int | None:
        return self.account.id if self.account is not None else None

    @property
    def name(self) -> str | None:
        return self.account.name if self.account is not None else None

    @property
    def is_admin(self) -> bool:
        return self.account is not None and self.account.is_admin


class LoginThrottled(RateLimited):
    """
    429 for a login attempt, naming the existing account it was about (None
    when no account has that name), like L{BadCredentials.account}: the
    protocols record the name only when it is an account's.
    """

    def __init__(self, text: str, account: str | None):
        super().__init__(text)
        self.account = account


class AccountIds(Protocol):
    """What L{AccountWatch} asks the account store."""

    def existing_ids(self, ids: Iterable[int], /) -> Deferred[set[int]]: ...


class AccountStore(AccountIds, Protocol):
    """The store calls L{AccountService} makes (L{netshare.storage.accounts.AccountStore})."""

    def get(self, name: str, /) -> Deferred[Account | None]: ...

    def create(
        self, name: str, role: str, password_hash: str, /, *, journal: JournalRow | None
    ) -> Deferred[Account]: ...

    def set_password(self, name: str, password_hash: str, /) -> Deferred[int]: ...

    def remove(self, name: str, transfer_to: str | None, /) -> Deferred[RemovedAccount]: ...

    def list(self) -> Deferred[builtins.list[Account]]: ...

    def login_attempt(
        self, keys: Sequence[tuple[str, bool]], now_ms: int, policy: LoginPolicy, /
    ) -> Deferred[float]: ...

    def login_succeeded(
        self, keys: Sequence[str], now_ms: int, policy: LoginPolicy, account_id: int | None, /
    ) -> Deferred[None]: ...

    def login_penalties(
        self, now_ms: int, policy: LoginPolicy, /
    ) -> Deferred[builtins.list[dict[str, Any]]]: ...

    def lift_penalty(self, who: str, /) -> Deferred[int]: ...


def check_username(name: str) -> None:
    if not is_username(name):
        raise NameNotAllowed("username must be " + USERNAME_RULE)


def check_password(password: str) -> None:
    if not 1 <= len(password) <= MAX_PASSWORD:
        raise BadArguments("password must be 1-%d characters" % (MAX_PASSWORD,))


def _b64(b: bytes) -> str:
    return base64.b64encode(b).decode("ascii")


def format_hash(n: int, r: int, p: int, salt: bytes, key: bytes) -> str:
    return "scrypt$%d$%d$%d$%s$%s" % (n, r, p, _b64(salt), _b64(key))


def parse_hash(stored: str) -> HashParams | None:
    """@return: (n, r, p, salt, key) or None for an unusable hash."""
    try:
        kind, n, r, p, salt, key = stored.split("$")
        if kind != "scrypt":
            return None
        return int(n), int(r), int(p), base64.b64decode(salt), base64.b64decode(key)
    except (ValueError, TypeError):
        return None


def hash_password_sync(password: str, n: int, r: int, p: int) -> str:
    """For the operator CLI, which has no reactor."""
    salt = os.urandom(16)
    return format_hash(n, r, p, salt, scrypt(password.encode("utf-8"), salt, n, r, p))


class AccountService:
    """
    Registration, login and roles, for every port and the operator shell.

    Every method that reaches the store or the KDF returns a Deferred.

    @param store: the L{AccountStore}.
    @param kdf: the bounded L{KDFPool} every derivation runs in.
    @param n: scrypt cost of new hashes, with C{r} and C{p}.
    @param policy: how failed logins are paid for (L{LoginPolicy}).
    @param lockout_exempt: networks whose failed logins are counted apart
        (see L{authenticate}).
    """

    log = Logger()

    def __init__(
        self,
        store: AccountStore,
        kdf: KDFPool,
        n: int = 2**17,
        r: int = 8,
        p: int = 1,
        registration_open: bool = True,
        policy: LoginPolicy | None = None,
        lockout_exempt: Iterable[str] = ("127.0.0.0/8", "::1/128"),
        clock: IReactorTime | None = None,
    ):
        self.store = store
        self.kdf = kdf
        self.clock = default_clock(clock)
        self.policy = policy if policy is not None else LoginPolicy()
        self.lockout_exempt = [ipaddress.ip_network(net, strict=False) for net in lockout_exempt]
        self.params = (n, r, p)
        self.registration_open = registration_open
        # An unknown name is checked against this hash: as slow as a real one.
        self._dummy_params: HashParams = (n, r, p, b"\0" * 16, b"\0" * 32)
        self._dummy = format_hash(*self._dummy_params)
        #: Called with the L{RemovedAccount} after an account is removed
        #: (the files service unlinks the blobs, the server closes the
        #: account's connections).
        self.removal_listeners: list[Callable[[RemovedAccount], object]] = []

    @deferred
    async def hash_password(self, password: str) -> str:
        n, r, p = self.params
        salt = os.urandom(16)
        key = await self.kdf.derive(password.encode("utf-8"), salt, n, r, p)
        return format_hash(n, r, p, salt, key)

    @deferred
    async def verify(self, password: str, stored: str, source: str | None = None) -> bool:
        parsed = parse_hash(stored)
        n, r, p, salt, key = parsed or self._dummy_params
        got = await self.kdf.derive(
            password.encode("utf-8"), salt, n, r, p, len(key), source=source
        )
        return hmac.compare_digest(got, key) and parsed is not None

    def _lockable(self, source: str | None) -> bool:
        """Is C{source} outside the exempt networks (by default loopback:
        the operator's own console)?  See L{authenticate}."""
        if source is None:
            return False
        try:
            address = ipaddress.ip_address(source)
        except ValueError:
            return True
        return not any(address in net for net in self.lockout_exempt)

    @deferred
    async def authenticate(self, name: str, password: str, source: str | None = None) -> Account:
        """
        Check a password, at the pace failed logins allow: failures count per
        account and per client address (C{source}) across connections and
        restarts (L{netshare.storage.accounts.thd_login_attempt}), so once an
        account or an address has failed a few times every further attempt
        waits its turn, and an account attacked from outside is locked.

        @return: Deferred[Account]; fails with L{BadCredentials} (535) or
            L{LoginThrottled} (429, saying how long to wait).
        """
        account = None
        if is_username(name) and len(password) <= MAX_PASSWORD:
            account = await self.store.get(name)
        known = account.name if account is not None else None
        # Sources in the exempt networks (the operator's console, by default
        # loopback) are counted apart: a flood from elsewhere neither slows
        # nor locks them, one from there is still bounded per account, and
        # local clients, which all share one address, are not held up for
        # each other's failures.
        remote = self._lockable(source)
        keys = []
        if remote:
            keys.append(("address:%s" % (source,), False))
        if account is not None:
            keys.append(("account:%d%s" % (account.id, "" if remote else ":local"), remote))
        if keys:
            try:
                wait = await self.store.login_attempt(keys, self._now_ms(), self.policy)
            except RateLimited as e:
                self.log.warn(
                    "login for {user} from {source} refused: {why}",
                    user=known or UNKNOWN_USER,
                    source=source,
                    why=e.text,
                )
                raise LoginThrottled(e.text, account=known) from e
            if wait:
                await task.deferLater(self.clock, wait, lambda: None)
        ok = await self.verify(
            password[:MAX_PASSWORD], account.password_hash if account else self._dummy, source
        )
        if account is None or not ok:
            self.log.info(
                "failed login for {user} from {source}", user=known or UNKNOWN_USER, source=source
            )
            raise BadCredentials("bad credentials", account=known)
        await self.store.login_succeeded(
            [k for k, _ in keys], self._now_ms(), self.policy, account.id
        )
        return account

    def _now_ms(self) -> int:
        return int(self.clock.seconds() * 1000)

    def penalties(self) -> Deferred[builtins.list[dict[str, Any]]]:
        """Keys that cost something now (see L{thd_login_penalties})."""
        return self.store.login_penalties(self._now_ms(), self.policy)

    @deferred
    async def lift(self, who: str) -> int:
        """Lift the login penalties of an account (by name) or an address."""
        n = await self.store.lift_penalty(who)
        self.log.info("login penalties of {who} lifted ({n})", who=who, n=n)
        return n

    @deferred
    async def register(
        self, name: str, password: str, journal: JournalRow | None = None
    ) -> Account:
        if not self.registration_open:
            raise PermissionDenied("registration is closed")
        return await self.add(name, password, "user", journal=journal)

    @deferred
    async def add(
        self, name: str, password: str, role: str = "user", journal: JournalRow | None = None
    ) -> Account:
        """Create an account.  C{journal}: the history row of the command
        that creates it, written in the same transaction."""
        check_username(name)
        check_password(password)
        if role not in ROLES:
            raise BadArguments("role must be admin or user")
        hashed = await self.hash_password(password)
        account = await self.store.create(name, role, hashed, journal=journal)
        self.log.info("account {user} created ({role})", user=name, role=role)
        return account

    @deferred
    async def passwd(self, name: str, password: str) -> int:
        """Set a password; the account's sessions end.
        @return: Deferred[int] how many sessions ended."""
        check_password(password)
        hashed = await self.hash_password(password)
        return await self.store.set_password(name, hashed)

    @deferred
    async def remove(self, name: str, transfer_to: str | None = None) -> RemovedAccount:
        """
        Remove an account; what becomes of what it owned is decided in one
        transaction (L{netshare.storage.accounts.thd_remove}), then every
        removal listener is told.  @return: Deferred[RemovedAccount].
        """
        removed = await self.store.remove(name, transfer_to)
        self.log.info(
            "account {user} removed: {files} files deleted, {moved} given away, "
            "{messages} pending sync records dropped",
            user=removed.account.name,
            files=removed.files_deleted,
            moved=removed.files_transferred,
            messages=removed.sync_messages_deleted,
        )
        for listener in list(self.removal_listeners):
            try:
                listener(removed)
            except Exception:
                self.log.failure("after removing account {user}", user=removed.account.name)
        return removed

    def list(self) -> Deferred[builtins.list[Account]]:
        return self.store.list()


class AccountConnection(Protocol):
    """
    A live connection L{AccountWatch} may close (any port's).  It has
    C{account}, the logged-in L{Account}, once logged in (None or absent
    before), and may have C{peer}, the client's address as logged.
    """

    def accountRemoved(self) -> None:
        """Close: the account was removed."""


def _account_of(connection: AccountConnection) -> Account | None:
    account: Account | None = getattr(connection, "account", None)
    return account


class AccountWatch:
    """
    Closes the connections of accounts that were removed while logged in.

    An account removed in this process (the manhole) is handled at once, by
    L{AccountService.removal_listeners}; one removed from outside (C{netshare
    user remove} is another process) is found here, every C{interval}
    seconds, by asking the database which of the logged-in accounts still
    exist.

    @param connections: returns the live connections.
    """

    log = Logger()

    def __init__(
        self,
        store: AccountIds,
        clock: IReactorTime,
        interval: float,
        connections: Callable[[], Iterable[AccountConnection]],
    ):
        self.store = store
        self.clock = clock
        self.interval = interval
        self.connections = connections
        self._loop: task.LoopingCall | None = None

    def start(self) -> None:
        if self.interval and self._loop is None:
            self._loop = task.LoopingCall(self.check)
            self._loop.clock = self.clock
            self._loop.start(self.interval, now=False).addErrback(
                lambda f: self.log.failure("account watch stopped", f)
            )

    def stop(self) -> None:
        loop, self._loop = self._loop, None
        if loop is not None and loop.running:
            loop.stop()

    @deferred
    async def check(self) -> int:
        """@return: Deferred[int] how many connections were closed."""
        live = [(c, a) for c in self.connections() if (a := _account_of(c)) is not None]
        if not live:
            return 0
        try:
            existing = await self.store.existing_ids({a.id for _, a in live})
        except Exception as e:
            self.log.warn("account watch: cannot check accounts now: {error}", error=str(e)[:200])
            return 0
        return self.close(c for c, a in live if a.id not in existing)

    def closeAccount(self, account_id: int) -> int:
        """Close the connections of one account (just removed here)."""
        return self.close(
            c
            for c in self.connections()
            if (a := _account_of(c)) is not None and a.id == account_id
        )

    def close(self, connections: Iterable[AccountConnection]) -> int:
        n = 0
        for c in connections:
            account = _account_of(c)
            self.log.info(
                "closing {peer}: account {user} was removed",
                peer=getattr(c, "peer", "?"),
                user=account.name if account is not None else None,
            )
            c.accountRemoved()
            n += 1
        return n

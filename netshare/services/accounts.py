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

import base64
import hmac
import ipaddress
import os
from dataclasses import dataclass
from typing import Any

from twisted.internet import defer, task
from twisted.logger import Logger

from netshare.errors import (
    BadArguments,
    BadCredentials,
    NameNotAllowed,
    PermissionDenied,
    RateLimited,
)
from netshare.kdf import scrypt
from netshare.text import USERNAME_RULE, is_username
from netshare.throttle import LoginPolicy


@dataclass(frozen=True)
class Caller:
    """
    Who is asking, as the services see it: the logged-in account (None
    before login and for a ttweet guest) and the client's address (what
    guessing limits are kept per, besides the account).
    """

    account: Any
    address: str

    @property
    def id(self):
        return self.account.id if self.account is not None else None

    @property
    def name(self):
        return self.account.name if self.account is not None else None

    @property
    def is_admin(self) -> bool:
        return self.account is not None and self.account.is_admin
ROLES = ("admin", "user")
MAX_PASSWORD = 128


#: How a name that is not an account's is recorded (it may be a password
#: typed in the wrong place): as OpenSSH logs an invalid user, minus the name.
UNKNOWN_USER = "<unknown user>"


def check_username(name: str):
    if not is_username(name):
        raise NameNotAllowed("username must be " + USERNAME_RULE)


def check_password(password: str):
    if not 1 <= len(password) <= MAX_PASSWORD:
        raise BadArguments("password must be 1-%d characters" % (MAX_PASSWORD,))


def _b64(b: bytes) -> str:
    return base64.b64encode(b).decode("ascii")


def format_hash(n, r, p, salt: bytes, key: bytes) -> str:
    return "scrypt$%d$%d$%d$%s$%s" % (n, r, p, _b64(salt), _b64(key))


def parse_hash(stored: str):
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
    log = Logger()

    def __init__(self, store, kdf, n=2**17, r=8, p=1, registration_open=True, policy=None,
                 lockout_exempt=("127.0.0.0/8", "::1/128"), clock=None):
        if clock is None:
            from twisted.internet import reactor as clock
        self.store = store
        self.kdf = kdf
        self.clock = clock
        self.policy = policy if policy is not None else LoginPolicy()
        self.lockout_exempt = [ipaddress.ip_network(n, strict=False) for n in lockout_exempt]
        self.params = (n, r, p)
        self.registration_open = registration_open
        self._dummy = format_hash(n, r, p, b"\0" * 16, b"\0" * 32)
        #: Called with the L{RemovedAccount} after an account is removed
        #: (the files service unlinks the blobs, the server closes the
        #: account's connections).
        self.removal_listeners = []

    @defer.inlineCallbacks
    def hash_password(self, password: str):
        n, r, p = self.params
        salt = os.urandom(16)
        key = yield self.kdf.derive(password.encode("utf-8"), salt, n, r, p)
        return format_hash(n, r, p, salt, key)

    @defer.inlineCallbacks
    def verify(self, password: str, stored: str, source=None):
        parsed = parse_hash(stored) or parse_hash(self._dummy)
        n, r, p, salt, key = parsed
        got = yield self.kdf.derive(password.encode("utf-8"), salt, n, r, p, len(key),
                                    source=source)
        return hmac.compare_digest(got, key) and parse_hash(stored) is not None

    def _lockable(self, source) -> bool:
        """Is C{source} outside the exempt networks (by default loopback:
        the operator's own console)?  See L{authenticate}."""
        if source is None:
            return False
        try:
            address = ipaddress.ip_address(source)
        except ValueError:
            return True
        return not any(address in net for net in self.lockout_exempt)

    @defer.inlineCallbacks
    def authenticate(self, name: str, password: str, source=None):
        """
        Check a password, at the pace failed logins allow: failures count per
        account and per client address (C{source}) across connections and
        restarts (L{netshare.storage.accounts.thd_login_attempt}), so once an
        account or an address has failed a few times every further attempt
        waits its turn, and an account attacked from outside is locked.

        @return: Deferred[Account]; fails with L{BadCredentials} (535) or
            L{RateLimited} (429, saying how long to wait).
        """
        account = None
        if is_username(name) and len(password) <= MAX_PASSWORD:
            account = yield self.store.get(name)
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
                wait = yield self.store.login_attempt(keys, self._now_ms(), self.policy)
            except RateLimited as e:
                self.log.warn("login for {user} from {source} refused: {why}",
                              user=known or UNKNOWN_USER, source=source, why=e.text)
                e.account = known
                raise
            if wait:
                yield task.deferLater(self.clock, wait, lambda: None)
        ok = yield self.verify(password[:MAX_PASSWORD],
                               account.password_hash if account else self._dummy, source)
        if account is None or not ok:
            self.log.info("failed login for {user} from {source}", user=known or UNKNOWN_USER,
                          source=source)
            raise BadCredentials("bad credentials", account=known)
        if keys:
            yield self.store.login_succeeded([k for k, _ in keys], self._now_ms(), self.policy)
        return account

    def _now_ms(self) -> int:
        return int(self.clock.seconds() * 1000)

    def penalties(self):
        """Keys that cost something now (see L{thd_login_penalties})."""
        return self.store.login_penalties(self._now_ms(), self.policy)

    def lift(self, who: str):
        """Lift the login penalties of an account (by name) or an address."""
        d = self.store.lift_penalty(who)

        def lifted(n):
            self.log.info("login penalties of {who} lifted ({n})", who=who, n=n)
            return n
        return d.addCallback(lifted)

    @defer.inlineCallbacks
    def register(self, name: str, password: str, journal=None):
        if not self.registration_open:
            raise PermissionDenied("registration is closed")
        return (yield self.add(name, password, "user", journal=journal))

    @defer.inlineCallbacks
    def add(self, name: str, password: str, role: str = "user", journal=None):
        """Create an account.  C{journal}: the history row of the command
        that creates it, written in the same transaction."""
        check_username(name)
        check_password(password)
        if role not in ROLES:
            raise BadArguments("role must be admin or user")
        hashed = yield self.hash_password(password)
        account = yield self.store.create(name, role, hashed, journal=journal)
        self.log.info("account {user} created ({role})", user=name, role=role)
        return account

    @defer.inlineCallbacks
    def passwd(self, name: str, password: str):
        check_password(password)
        hashed = yield self.hash_password(password)
        yield self.store.set_password(name, hashed)

    def remove(self, name: str, transfer_to: str | None = None):
        """
        Remove an account; what becomes of what it owned is decided in one
        transaction (L{netshare.storage.accounts.thd_remove}), then every
        removal listener is told.  @return: Deferred[RemovedAccount].
        """
        d = self.store.remove(name, transfer_to)
        d.addCallback(self._removed)
        return d

    def _removed(self, removed):
        self.log.info("account {user} removed: {files} files deleted, {moved} given away, "
                      "{messages} pending sync records dropped", user=removed.account.name,
                      files=removed.files_deleted, moved=removed.files_transferred,
                      messages=removed.sync_messages_deleted)
        for listener in list(self.removal_listeners):
            try:
                listener(removed)
            except Exception:
                self.log.failure("after removing account {user}", user=removed.account.name)
        return removed

    def list(self):
        return self.store.list()


class AccountWatch:
    """
    Closes the connections of accounts that were removed while logged in.

    An account removed in this process (the manhole) is handled at once, by
    L{AccountService.removal_listeners}; one removed from outside (C{netshare
    user remove} is another process) is found here, every C{interval}
    seconds, by asking the database which of the logged-in accounts still
    exist.

    @param connections: returns the live connections; each has C{account}
        (an L{Account} or None) and C{accountRemoved()}.
    """

    log = Logger()

    def __init__(self, store, clock, interval: float, connections):
        self.store = store
        self.clock = clock
        self.interval = interval
        self.connections = connections
        self._loop = None

    def start(self):
        if self.interval and self._loop is None:
            from twisted.internet.task import LoopingCall
            self._loop = LoopingCall(self.check)
            self._loop.clock = self.clock
            self._loop.start(self.interval, now=False).addErrback(
                lambda f: self.log.failure("account watch stopped", f))

    def stop(self):
        loop, self._loop = self._loop, None
        if loop is not None and loop.running:
            loop.stop()

    @defer.inlineCallbacks
    def check(self):
        """@return: Deferred[int] how many connections were closed."""
        live = [c for c in self.connections() if getattr(c, "account", None) is not None]
        if not live:
            return 0
        try:
            existing = yield self.store.existing_ids({c.account.id for c in live})
        except Exception as e:
            self.log.warn("account watch: cannot check accounts now: {error}",
                          error=str(e)[:200])
            return 0
        return self.close(c for c in live if c.account.id not in existing)

    def closeAccount(self, account_id: int) -> int:
        """Close the connections of one account (just removed here)."""
        return self.close(c for c in self.connections()
                          if getattr(c, "account", None) is not None
                          and c.account.id == account_id)

    def close(self, connections) -> int:
        n = 0
        for c in connections:
            self.log.info("closing {peer}: account {user} was removed",
                          peer=getattr(c, "peer", "?"), user=c.account.name)
            c.accountRemoved()
            n += 1
        return n

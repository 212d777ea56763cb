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
import os
import re

from twisted.internet import defer
from twisted.logger import Logger

from netshare.errors import BadArguments, BadCredentials, NameNotAllowed, PermissionDenied
from netshare.kdf import scrypt

USERNAME_RE = re.compile(r"[A-Za-z0-9]{1,32}")
ROLES = ("admin", "user")
MAX_PASSWORD = 128


#: How a name that is not an account's is recorded (it may be a password
#: typed in the wrong place): as OpenSSH logs an invalid user, minus the name.
UNKNOWN_USER = "<unknown user>"


def check_username(name: str):
    if not USERNAME_RE.fullmatch(name or ""):
        raise NameNotAllowed("username must be 1-32 ASCII letters or digits")


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

    def __init__(self, store, kdf, n=2**17, r=8, p=1, registration_open=True):
        self.store = store
        self.kdf = kdf
        self.params = (n, r, p)
        self.registration_open = registration_open
        self._dummy = format_hash(n, r, p, b"\0" * 16, b"\0" * 32)

    @defer.inlineCallbacks
    def hash_password(self, password: str):
        n, r, p = self.params
        salt = os.urandom(16)
        key = yield self.kdf.derive(password.encode("utf-8"), salt, n, r, p)
        return format_hash(n, r, p, salt, key)

    @defer.inlineCallbacks
    def verify(self, password: str, stored: str):
        parsed = parse_hash(stored) or parse_hash(self._dummy)
        n, r, p, salt, key = parsed
        got = yield self.kdf.derive(password.encode("utf-8"), salt, n, r, p, len(key))
        return hmac.compare_digest(got, key) and parse_hash(stored) is not None

    @defer.inlineCallbacks
    def authenticate(self, name: str, password: str):
        """@return: Deferred[Account]; fails with L{BadCredentials}."""
        account = None
        if USERNAME_RE.fullmatch(name or "") and len(password) <= MAX_PASSWORD:
            account = yield self.store.get(name)
        ok = yield self.verify(password[:MAX_PASSWORD],
                               account.password_hash if account else self._dummy)
        if account is None or not ok:
            known = account.name if account is not None else None
            self.log.info("failed login for {user}", user=known or UNKNOWN_USER)
            raise BadCredentials("bad credentials", account=known)
        return account

    @defer.inlineCallbacks
    def register(self, name: str, password: str):
        if not self.registration_open:
            raise PermissionDenied("registration is closed")
        return (yield self.add(name, password, "user"))

    @defer.inlineCallbacks
    def add(self, name: str, password: str, role: str = "user"):
        check_username(name)
        check_password(password)
        if role not in ROLES:
            raise BadArguments("role must be admin or user")
        hashed = yield self.hash_password(password)
        account = yield self.store.create(name, role, hashed)
        self.log.info("account {user} created ({role})", user=name, role=role)
        return account

    @defer.inlineCallbacks
    def passwd(self, name: str, password: str):
        check_password(password)
        hashed = yield self.hash_password(password)
        yield self.store.set_password(name, hashed)

    def remove(self, name: str):
        return self.store.remove(name)

    def list(self):
        return self.store.list()

"""
The telnet-style way into the admin shell: a username/password prompt
for netshare admin accounts, with the limits of every netshare port.

Kept apart from the shell itself (L{netshare.protocols.manhole_shell}) and
from the SSH way in (L{netshare.protocols.manhole_ssh}): this module is
about who may get the shell over a plain (or TLS) stream and what happens
to a connection before and around it.

 - The password is checked by the same scrypt path as C{LOGIN} (never a
   plaintext password file), and only C{admin} accounts get a shell
   (L{AdminPasswordChecker}).
 - A failure is answered after C{--login-failure-delay}, the connection is
   closed after C{--max-login-failures}, a prompt left unanswered is closed
   after the shorter of C{--login-timeout} and C{--idle-timeout}, and every
   attempt is in the request history (service C{manhole}) (L{ManholeLogin}).
 - The connection counts against C{--max-connections} and C{--max-per-ip},
   is refused off loopback unless C{--manhole-allow-remote yes}, answers
   garbage by closing, and is closed in order when the server stops or the
   admin's account is removed (L{ManholeConnection}, L{ManholeFactory}).
"""

from collections.abc import Callable
from typing import Any, cast

from twisted.conch.insults import insults
from twisted.conch.telnet import (
    ECHO,
    LINEMODE,
    NAWS,
    SGA,
    AuthenticatingTelnetProtocol,
    ITelnetProtocol,
    TelnetBootstrapProtocol,
    TelnetTransport,
)
from twisted.cred import credentials, portal
from twisted.cred import error as cred_error
from twisted.cred.checkers import ICredentialsChecker
from twisted.internet import protocol, task
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IAddress, ITCPTransport
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import Interface, implementer

from netshare.admin import AdminRuntime
from netshare.deferreds import deferred
from netshare.errors import BadCredentials
from netshare.listener import is_loopback_host
from netshare.protocols.factory import ConnectionLimits
from netshare.protocols.manhole_shell import SERVICE, admin_account, peer_text, shell_protocol
from netshare.services.accounts import UNKNOWN_USER, Account, AccountService
from netshare.stats import ServiceStats
from netshare.wire import now_ms

#: A typed name or password is cut to this many characters.
MAX_FIELD = 128

#: What a realm gives a login: (interface, avatar, logout).
Avatar = tuple[type[Interface], object, Callable[[], None]]


@implementer(credentials.IUsernamePassword)
class SourcedPassword(credentials.UsernamePassword):
    """A name and password typed at the prompt, and the client's address
    they came from (failed logins count per address too, and the password
    hashing is shared fairly between addresses)."""

    def __init__(self, username: bytes, password: bytes, source: str | None):
        super().__init__(username, password)
        self.source = source


class _Refused(cred_error.UnauthorizedLogin):
    """A refused manhole login, with the existing account's name if the
    attempt named one (else None: the typed name is never recorded)."""

    def __init__(self, why: str, account: str | None):
        super().__init__(why)
        self.account = account


@implementer(ICredentialsChecker)
class AdminPasswordChecker:
    """netshare accounts, admins only, through the same slow-hash path as LOGIN."""

    credentialInterfaces = (credentials.IUsernamePassword,)

    def __init__(self, accounts: AccountService):
        self.accounts = accounts

    @deferred
    async def requestAvatarId(self, creds: credentials.IUsernamePassword) -> bytes | tuple[()]:
        name = creds.username.decode("utf-8", "replace")[:MAX_FIELD]
        password = creds.password.decode("utf-8", "replace")[:MAX_FIELD]
        source = creds.source if isinstance(creds, SourcedPassword) else None
        try:
            account = await self.accounts.authenticate(name, password, source=source)
        except BadCredentials as e:
            raise _Refused("bad credentials", e.account) from None
        except Exception:
            raise _Refused("bad credentials", None) from None
        if not account.is_admin:
            raise _Refused("not an admin", account.name)
        return account.name.encode("utf-8")


@implementer(portal.IRealm)
class TelnetRealm:
    """
    A fresh shell per telnet login.  The shell is told who it serves: the
    admin's name and account id (read here, at login) and the client's
    address (known once the session is connected: the bootstrap passes it).
    """

    log = Logger()

    def __init__(self, runtime: AdminRuntime):
        self.runtime = runtime

    @deferred
    async def requestAvatar(
        self, avatarId: bytes | tuple[()], mind: object, *interfaces: type[Interface]
    ) -> Avatar:
        if ITelnetProtocol not in interfaces or not isinstance(avatarId, bytes):
            raise NotImplementedError("the telnet manhole serves admins' telnet sessions only")
        user = avatarId.decode("utf-8")
        account = await admin_account(self.runtime, user, self.log)
        account_id = account.id if account is not None else None

        def shell(peer: str) -> insults.ServerProtocol:
            return shell_protocol(self.runtime, user, account_id, peer)

        return ITelnetProtocol, _QuietBootstrap(shell, user, account), lambda: None


class ManholeLogin(AuthenticatingTelnetProtocol):
    """
    Username/password prompts with the limits of every netshare port:
    a pause after each failure, a close after C{max_login_failures}, a login
    timeout, and every attempt in the request history.
    """

    log = Logger()

    def __init__(self, portal: portal.Portal, runtime: AdminRuntime, stats: ServiceStats):
        super().__init__(portal)
        self.runtime = runtime
        self.stats = stats
        self.failures = 0
        self.username = b""
        self._timer: Any = None  # IDelayedCall of the login timeout

    @property
    def connection(self) -> "ManholeConnection":
        """The connection this prompt runs on (its transport: L{ManholeFactory}
        builds every manhole connection as a L{ManholeConnection})."""
        return cast(ManholeConnection, self.transport)

    @property
    def peer(self) -> str:
        return self.connection.peer

    def connectionMade(self) -> None:
        # At the prompt a connection is both idle and not logged in: the
        # shorter of the two limits ends it.
        cfg = self.runtime.config
        self._timer = self.runtime.reactor.callLater(
            min(cfg.login_timeout, cfg.idle_timeout), self._loginTimeout
        )
        self.connection.write(b"netshare manhole: admin accounts only\n")
        super().connectionMade()

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        super().connectionLost(reason)

    def _loginTimeout(self) -> None:
        self.connection.write(b"\n421 login timeout\n")
        self.connection.loseConnection()

    def telnet_User(self, line: bytes) -> str:
        self.username = line[:MAX_FIELD].strip()
        self.connection.will(ECHO).addErrback(lambda f: None)  # ECHO off on the client
        self.connection.write(b"Password: ")
        return "Password"

    def telnet_Password(self, line: bytes) -> str:
        username, password = self.username, line[:MAX_FIELD]
        self.username = b""
        self.state = "Discard"
        creds = SourcedPassword(username, password, self.connection.host)
        self._login(creds)
        return "Discard"

    @deferred
    async def _login(self, creds: SourcedPassword) -> None:
        try:
            ial = await self.portal.login(creds, None, ITelnetProtocol)
        except Exception as e:
            await self._failed(getattr(e, "account", None))
        else:
            self._ok(ial)

    def _record(self, name: str | None, code: int) -> None:
        """Every attempt in the history, the name only if it is an account's."""
        name = name or UNKNOWN_USER
        self.runtime.history.record(
            now_ms(),
            SERVICE,
            name if code == 230 else None,
            self.peer,
            "LOGIN %s ***" % (name,),
            code,
        )
        self.log.info(
            "manhole login {user} -> {code}", service=SERVICE, user=name, peer=self.peer, code=code
        )

    def _ok(self, ial: Avatar) -> None:
        bootstrap = cast(_QuietBootstrap, ial[1])  # what TelnetRealm gives
        # The account itself (read by the realm): removing it closes this shell.
        self.connection.loggedIn(bootstrap.admin, bootstrap.account)
        self._record(bootstrap.admin, 230)
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self.stats.commands += 1
        self._cbLogin(ial)  # the shell keeps server-side echo (WILL ECHO) on

    async def _failed(self, account: str | None) -> None:
        self.failures += 1
        self.stats.login_failures += 1
        self._record(account, 535)
        await task.deferLater(
            self.runtime.reactor, self.runtime.config.login_failure_delay, lambda: None
        )
        if self.connection.lost.called:
            return
        self.connection.wont(ECHO).addErrback(lambda f: None)
        if self.failures >= self.runtime.config.max_login_failures:
            self.connection.write(b"\ntoo many failures\n")
            self.connection.loseConnection()
            return
        self.connection.write(b"\nAuthentication failed\nUsername: ")
        self.state = "User"


class _QuietBootstrap(TelnetBootstrapProtocol):
    """
    The shell's telnet bootstrap, minus noise: the login already turned
    server-side echo on, and a client refusing LINEMODE/NAWS/SGA is normal,
    not an error worth a traceback.  C{shell} is called with the client's
    C{host:port}.

    @ivar admin: the admin's account name.
    @ivar account: the admin's account (None if it could not be read).
    """

    log = Logger()

    def __init__(
        self, shell: Callable[[str], insults.ServerProtocol], admin: str, account: Account | None
    ):
        super().__init__(shell)
        self.admin = admin
        self.account = account

    def connectionMade(self) -> None:
        telnet = cast(TelnetTransport, self.transport)  # a ManholeConnection
        telnet.negotiationMap[NAWS] = self.telnet_NAWS
        telnet.negotiationMap[LINEMODE] = self.telnet_LINEMODE
        for opt in (LINEMODE, NAWS, SGA):
            telnet.do(opt).addErrback(self._refused, opt)
        if not telnet.getOptionState(ECHO).us.state == "yes":
            telnet.will(ECHO).addErrback(self._refused, ECHO)
        self.protocol = self.protocolFactory(peer_text(telnet.getPeer()))
        self.protocol.factory = getattr(self, "factory", None)
        self.protocol.makeConnection(self)

    def _refused(self, failure: Failure, opt: bytes) -> None:
        self.log.debug(
            "telnet option {opt!r} not negotiated: {why}", opt=opt, why=failure.getErrorMessage()
        )


class ManholeConnection(TelnetTransport):
    """
    One manhole connection: a telnet transport that answers garbage by
    closing (not with a traceback), counted against the listener's caps,
    and closed in order when the server stops.

    @ivar admin: the admin logged in on this connection, or None.
    @ivar account: ... and the account (for its id), or None.
    @ivar lost: fires once the connection is gone.
    """

    log = Logger()
    transport: ITCPTransport
    factory: "ManholeFactory"

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.lost: Deferred[None] = Deferred()
        self.admin: str | None = None
        self.account: Account | None = None
        self._admitted = False

    @property
    def host(self) -> str | None:
        """The client's address (None for a Unix socket)."""
        return getattr(self.transport.getPeer(), "host", None)

    @property
    def peer(self) -> str:
        return peer_text(self.transport.getPeer())

    @property
    def user(self) -> str | None:
        """The admin logged in on this connection, or None."""
        return self.admin

    def loggedIn(self, admin: str, account: Account | None) -> None:
        """The login prompt let C{admin} in."""
        self.admin = admin
        self.account = account

    def connectionMade(self) -> None:
        factory = self.factory
        factory.stats.connections_total += 1
        refusal = factory.connections.admit(self, self.host or "?")
        if refusal:
            self.log.warn("manhole refused {peer}: {reason}", peer=self.peer, reason=refusal)
            self.transport.write(("421 %s\r\n" % (refusal,)).encode("ascii"))
            self.transport.loseConnection()
            return
        self._admitted = True
        super().connectionMade()

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        self.factory.connections.release(self)
        if self._admitted:
            super().connectionLost(reason)
        if not self.lost.called:
            self.lost.callback(None)

    def accountRemoved(self) -> None:
        """The admin's account was removed: the shell ends."""
        if not self.lost.called:
            self.transport.write(b"\r\n421 account removed\r\n")
            self.transport.loseConnection()

    def beginShutdown(self) -> Deferred[None]:
        """The server is stopping: say so and close (a shell has no command
        in progress that could be answered first: typed code runs on the
        reactor thread, so it is over before this runs)."""
        if not self.lost.called:
            self.transport.write(b"\r\n421 shutting down\r\n")
            self.transport.loseConnection()
        return self.lost

    def dataReceived(self, data: bytes) -> None:
        try:
            TelnetTransport.dataReceived(self, data)
        except ValueError as e:
            self.log.info(
                "manhole: dropping {peer}: telnet protocol error ({error})",
                peer=self.peer,
                error=str(e)[:80],
            )
            self.transport.abortConnection()


class ManholeFactory(protocol.ServerFactory[ManholeConnection]):
    """
    The telnet-style manhole listener: the same caps as every other
    listener (C{--max-connections}, C{--max-per-ip}), peers off loopback
    refused unless C{--manhole-allow-remote yes}, and an orderly close of
    every session when the server stops (L{shutdown}).
    """

    noisy = False
    log = Logger()
    service = SERVICE

    def __init__(self, runtime: AdminRuntime, the_portal: portal.Portal | None):
        self.runtime = runtime
        self.portal = the_portal
        self.stats = ServiceStats()
        cfg = runtime.config
        self.connections = ConnectionLimits(
            runtime.reactor, cfg.max_connections, cfg.max_per_ip, self.stats
        )

    def buildProtocol(self, addr: IAddress | None) -> ManholeConnection | None:
        host = getattr(addr, "host", None)
        if (
            host is not None
            and not self.runtime.config.manhole_allow_remote
            and not is_loopback_host(host)
        ):
            self.log.warn("manhole: refused a connection from {host}, not loopback", host=host)
            self.stats.refused += 1
            return None
        proto = ManholeConnection(ManholeLogin, self.portal, self.runtime, self.stats)
        proto.factory = self
        return proto

    def shutdown(self, timeout: float) -> Deferred[Any]:
        """Close every session; abort stragglers after C{timeout} seconds."""
        return self.connections.shutdown(timeout, SERVICE)

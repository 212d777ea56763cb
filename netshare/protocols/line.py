"""
The line protocol every netshare port speaks (docs/protocol.md section 1).

L{CommandProtocol} is what a service protocol subclasses.  It adds to the
machinery of L{netshare.protocols.connection.LineConnection} (framing,
dispatch, reply order, pushes, raw data, limits, timeouts, shutdown) what
every port has about accounts: the login deadline, C{LOGIN}, C{REGISTER},
C{WHOAMI}, C{HISTORY}, and the record of every command in the request
history and the structured log.

Writing a service protocol: subclass, set C{service}, extend C{HELP}, and
add C{cmd_VERB(self, args)} methods.  A handler receives the list of shell
words after the verb and returns (or returns a Deferred of) one of the
replies in L{netshare.protocols.replies}: L{Reply} (or a C{(code, text)}
tuple), L{ObjectReply}, L{Listing}, L{ReceiveRaw}, L{SendRaw}, L{Later};
or raises a L{NetshareError}.  Anything else raised is a bug: logged once
with its traceback and answered C{451 internal error}; the session goes on.

What a subclass may use (and nothing with a leading underscore):
  - state: C{account}, C{user}, C{caller}, C{host}, C{peer}, C{runtime},
    C{config}, C{factory} (its C{app} is the service object), C{closing};
  - actions: C{sendPush}, C{writable}, C{setIdleExempt}, C{closeWith},
    C{journal}, C{recordAs}, C{authenticate}, C{loginFailed},
    C{loginDone};
  - hooks to override: C{connectionReady}, C{connectionClosed},
    C{loggedIn}, C{isPublic}, C{isLoggedIn}, C{onDrain},
    C{accountRemoved}.
"""

import time
from typing import Any

from twisted.internet import task
from twisted.internet.protocol import connectionDone
from twisted.python.failure import Failure

from netshare.deferreds import deferred
from netshare.errors import (
    BadArguments,
    BadSequence,
    ClosingConnection,
    Conflict,
    LoginRequired,
    NetshareError,
)
from netshare.protocols.connection import LineConnection
from netshare.protocols.replies import Listing, ObjectReply, Reply
from netshare.protocols.words import bounded, parse_int, split_options
from netshare.services.accounts import UNKNOWN_USER, Caller
from netshare.text import escape_unsafe
from netshare.wire import now_ms


class CommandProtocol(LineConnection):
    """See the module docstring."""

    service = "base"
    #: Verbs allowed before LOGIN; every other verb answers 530 until then.
    PUBLIC = frozenset({"HELP", "PING", "LOGIN", "TOKEN", "REGISTER", "WHOAMI", "QUIT"})
    HELP = dict(LineConnection.HELP)
    HELP.update(
        {
            "LOGIN": "LOGIN <user> <password>",
            "REGISTER": "REGISTER <user> <password>",
            "TOKEN": "TOKEN <session token>",
            "SESSION": "SESSION NEW [label=TEXT] | SESSION LIST [user=NAME|*] | "
            "SESSION REVOKE <id>|all [user=NAME|*]",
            "WHOAMI": "WHOAMI",
            "HISTORY": "HISTORY [limit=N] [user=NAME|*] | HISTORY DELETE <id> | "
            "HISTORY CLEAR [user=NAME|*]",
        }
    )

    def __init__(self) -> None:
        super().__init__()
        self.account: Any = None
        self._loginFailures = 0
        self._loginTimer: Any = None  # the login deadline (cancelled by loginDone)
        self._loginLate = False  # the deadline passed during a command
        self._unrecorded = 0  # pre-login commands over the history rate

    # -- who is connected

    @property
    def user(self) -> str | None:
        return self.account.name if self.account else None

    @property
    def accountName(self) -> str:
        """The logged-in account's name, for commands that only run after
        login (L{mayRun} refuses them before it)."""
        if self.account is None:
            raise LoginRequired()
        return str(self.account.name)

    @property
    def caller(self) -> Caller:
        """The account and address of this connection, for the services."""
        return Caller(self.account, self.host)

    def accountRemoved(self) -> None:
        """The logged-in account was removed: this connection ends."""
        self.closeWith("421 account removed")

    def mayRun(self, verb: str) -> bool:
        return self.account is not None or verb in self.PUBLIC or self.isPublic(verb)

    def isPublic(self, verb: str) -> bool:
        """Hook: may this verb run before login? (ttweet's guests, say)."""
        return False

    # -- the login deadline

    def connectionMade(self) -> None:
        super().connectionMade()
        if not self.refused:
            self._loginTimer = self.factory.reactor.callLater(
                self.config.login_timeout, self._loginExpired
            )

    def isLoggedIn(self) -> bool:
        """Whether this connection has logged in (ttweet: as a guest too)."""
        return self.account is not None

    def loginDone(self) -> None:
        """Logged in: the login deadline no longer applies."""
        if self._loginTimer is not None and self._loginTimer.active():
            self._loginTimer.cancel()
        self._loginTimer = None

    def _loginExpired(self) -> None:
        """
        Not logged in after C{--login-timeout}: close, whatever was sent
        meanwhile (blank lines and refused commands keep a connection from
        being idle, not from having to log in), so connections that never
        log in cannot hold every slot.  A command in progress (a LOGIN
        waiting for its password check) is answered first.
        """
        self._loginTimer = None
        if self.isLoggedIn() or self.closing:
            return
        if self.currentCommand is not None:
            self._loginLate = True
            return
        self.log.info("login timeout {peer}", service=self.service, peer=self.peer)
        self.closeWith("421 login timeout")

    def afterCommand(self) -> str | None:
        if self._loginLate and not self.isLoggedIn():
            self.log.info("login timeout {peer}", service=self.service, peer=self.peer)
            return "421 login timeout"
        return None

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.loginDone()
        if not self.refused:
            self.runtime.history.recordUnrecorded(
                id(self), self._unrecorded, now_ms(), self.service, self.peer
            )
        super().connectionLost(reason)

    # -- history and logs

    def recordCommand(
        self,
        verb: str,
        recorded: str,
        code: int,
        started: float | None = None,
        ts_ms: int | None = None,
        nbytes: int = 0,
        written: bool = False,
    ) -> None:
        """The history entry (unless C{written} with the command's write
        already) and the per-command log event."""
        duration = (time.monotonic() - started) * 1000.0 if started else 0.0
        runtime = self.factory.runtime  # (this runs for every command)
        history = runtime.history
        user = self.user
        if written:
            pass
        elif self.account is not None:
            history.record(
                ts_ms or now_ms(),
                self.service,
                user,
                self.peer,
                recorded,
                code,
                self.account.id,
            )
        elif history.admitPrelogin(id(self), self.host):
            # Before login: a bounded form, at a bounded rate (see admitPrelogin).
            history.record(
                ts_ms or now_ms(), self.service, None, self.peer, bounded(recorded), code
            )
        else:
            self._unrecorded += 1
        commandLog = runtime.commandLog
        if commandLog is not None:  # buffered: see netshare.logs.CommandLog
            commandLog.command(
                self.service, user or "-", self.peer, verb, code, round(duration, 3), nbytes
            )
        else:
            self.log.info(
                "{verb} -> {code}",
                service=self.service,
                user=user or "-",
                peer=self.peer,
                verb=verb,
                code=code,
                duration_ms=round(duration, 3),
                bytes=nbytes,
            )

    def journal(self, code: int) -> dict | None:
        """
        The history row of the command in progress, for its write to insert
        in the same transaction (C{DBPool.write(journal=...)}), with the code
        the command is answered on success.  An acknowledged write and the
        record of it then survive a crash together; if the write fails (its
        transaction is rolled back) the command is recorded as usual, with
        the code it got.
        """
        cmd = self.currentCommand
        if cmd is None:
            return None
        cmd.journaled = code
        return self.runtime.history.row(
            cmd.ts_ms,
            self.service,
            self.user,
            self.peer,
            cmd.recorded,
            code,
            self.account.id if self.account is not None else None,
        )

    def recordAs(self, command: str) -> None:
        """Record the command in progress as C{command} (escaped) instead of
        what the parser made of it: for handlers that learn only while they
        run what may be written down (the user name of a LOGIN)."""
        cmd = self.currentCommand
        if cmd is not None:
            cmd.recorded = escape_unsafe(command)

    # -- LOGIN, REGISTER, WHOAMI

    def cmd_WHOAMI(self, args: list[str]) -> Reply:
        if self.account is None:
            raise LoginRequired("not logged in")
        return Reply(200, "%s %s" % (self.account.name, self.account.role))

    def cmd_LOGIN(self, args: list[str]) -> Any:
        if len(args) != 2:
            raise BadArguments("usage: LOGIN <user> <password>")
        return self.authenticate(args[0], args[1])

    @deferred
    async def authenticate(self, name: str, password: str) -> Reply:
        """Check an account password; throttle and count failures.  The
        name is recorded only if it is an account's (L{UNKNOWN_USER}
        otherwise)."""
        if self.account is not None:
            raise BadSequence("already logged in as %s" % (self.account.name,))
        try:
            account = await self.runtime.accounts.authenticate(name, password, source=self.host)
        except NetshareError as e:
            self.recordAs("LOGIN %s ***" % (getattr(e, "account", None) or UNKNOWN_USER,))
            if e.code != 535:
                raise
            await self.loginFailed()
            raise
        self.recordAs("LOGIN %s ***" % (account.name,))
        self.account = account
        self.loginDone()
        self.loggedIn()
        return Reply(230, "logged in as %s (%s)" % (account.name, account.role))

    def cmd_TOKEN(self, args: list[str]) -> Any:
        if len(args) != 1:
            raise BadArguments("usage: TOKEN <session token>")
        return self._tokenLogin(args[0])

    @deferred
    async def _tokenLogin(self, token: str) -> Reply:
        """Log in with a session token (docs/protocol.md section 1.7.1): one
        database read, no password hash.  A wrong token counts as a failed
        login on this connection like a wrong password."""
        if self.account is not None:
            raise BadSequence("already logged in as %s" % (self.account.name,))
        try:
            account = await self._sessions().login(token)
        except NetshareError as e:
            if e.code == 535:
                await self.loginFailed()
            raise
        self.recordAs("TOKEN %s ***" % (account.name,))
        self.account = account
        self.loginDone()
        self.loggedIn()
        return Reply(230, "logged in as %s (%s)" % (account.name, account.role))

    def _sessions(self) -> Any:
        sessions = self.runtime.sessions
        if sessions is None:
            raise NetshareError("sessions are not available here", code=502)
        return sessions

    @deferred
    async def cmd_SESSION(self, args: list[str]) -> Reply | ObjectReply | Listing:
        sub = args[0].upper() if args else ""
        sessions = self._sessions()
        if sub == "NEW":
            _, opts = split_options(args[1:], allowed=("label",), positional=(0, 0))
            made = await sessions.new(self.caller, opts.get("label", ""))
            return ObjectReply(made, code=201)
        if sub == "LIST":
            _, opts = split_options(args[1:], allowed=("user",), positional=(0, 0))
            found = await sessions.list(self.caller, opts.get("user"))
            return Listing([s.to_wire() for s in found])
        if sub == "REVOKE":
            pos, opts = split_options(args[1:], allowed=("user",), positional=(1, 1))
            if pos[0].lower() == "all":
                n = await sessions.revoke_all(self.caller, opts.get("user"))
                return Reply(200, "%d revoked" % (n,))
            if "user" in opts:
                raise BadArguments("user= goes with SESSION REVOKE all")
            await sessions.revoke(self.caller, parse_int(pos[0], "id", lo=1, hi=2**63 - 1))
            return Reply(200, "1 revoked")
        raise BadArguments("usage: " + self.HELP["SESSION"])

    @deferred
    async def loginFailed(self) -> None:
        """Pause (without blocking anyone else), then count the failure."""
        self._loginFailures += 1
        self.factory.stats.login_failures += 1
        await task.deferLater(self.factory.reactor, self.config.login_failure_delay, lambda: None)
        if self._loginFailures >= self.config.max_login_failures:
            raise ClosingConnection("too many failures")

    def loggedIn(self) -> None:
        """Hook for subclasses: C{self.account} was just set."""

    @deferred
    async def cmd_REGISTER(self, args: list[str]) -> Reply:
        if len(args) != 2:
            raise BadArguments("usage: REGISTER <user> <password>")
        # Should the account be created, the name is an account's: record it
        # with the write (and undo that below if the write fails).
        self.recordAs("REGISTER %s ***" % (args[0],))
        try:
            account = await self.runtime.accounts.register(
                args[0], args[1], journal=self.journal(201)
            )
        except Conflict:
            self.recordAs("REGISTER %s ***" % (args[0],))  # an existing account's name
            raise
        except NetshareError:
            self.recordAs("REGISTER %s ***" % (UNKNOWN_USER,))
            raise
        self.recordAs("REGISTER %s ***" % (account.name,))
        return Reply(201, "registered %s" % (account.name,))

    # -- HISTORY

    @deferred
    async def cmd_HISTORY(self, args: list[str]) -> Reply | Listing:
        history = self.runtime.history
        if args and args[0].upper() == "DELETE":
            pos, _ = split_options(args[1:], positional=(1, 1))
            entry = parse_int(pos[0], "id", lo=1, hi=2**63 - 1)
            await history.delete(self.account, entry, journal=self.journal(200))
            return Reply(200, "deleted")
        if args and args[0].upper() == "CLEAR":
            _, opts = split_options(args[1:], allowed=("user",), positional=(0, 0))
            n = await history.clear(self.account, opts.get("user"), journal=self.journal(200))
            return Reply(200, "%d deleted" % (n,))
        _, opts = split_options(args, allowed=("limit", "user"), positional=(0, 0))
        limit = parse_int(
            opts.get("limit", str(self.config.history_default)),
            "limit",
            1,
            self.config.history_max,
        )
        entries = await history.query(self.account, opts.get("user"), limit)
        return Listing([e.to_wire() for e in entries])

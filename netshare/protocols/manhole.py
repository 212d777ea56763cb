"""
The manhole: an interactive Python shell inside the running server, for
operators (PROTOCOL.md section 5).

Whoever logs in runs arbitrary Python in the daemon, with the database, the
TLS keys and every connection within reach.  So:

 - the telnet-style listener binds loopback by default
   (C{tcp:7004:interface=127.0.0.1}); a non-loopback interface is refused
   at start-up unless C{--manhole-allow-remote yes}, and then start-up warns
   loudly unless the listener is TLS (C{ssl:}) — prefer the SSH variant;
 - login asks for a netshare account and password, checked by the same
   scrypt path as C{LOGIN} (never a plaintext password file); only C{admin}
   accounts get a shell; a failure is answered after the configured pause,
   the connection is closed after C{max_login_failures}, and every attempt
   is recorded in the request history (service C{manhole});
 - C{--manhole-ssh ENDPOINT --manhole-keys FILE}: the same shell over SSH,
   for admin account names, with keys from an authorized_keys file; the host
   key is the one C{netshare init} wrote (C{<data>/ssh_host_key}, mode 0600);
 - every session gets a fresh namespace (L{netshare.admin.namespace}):
   nothing one operator defines leaks into another's session;
 - helpers that touch the database return Deferreds, which the shell prints
   when they fire: typed code runs on the reactor thread, so nothing in the
   helpers may block it;
 - every statement an admin runs is recorded in the request history
   (service C{manhole}, under the admin's name and account id, with the
   client's address) and logged as one command event, passwords redacted
   (L{RecordedManhole}, L{redact_command}).
"""

import io
import ipaddress
import time
import tokenize

from twisted.conch import interfaces as conch_interfaces
from twisted.conch import manhole_ssh
from twisted.conch.checkers import SSHPublicKeyChecker, readAuthorizedKeyFile
from twisted.conch.insults import insults
from twisted.conch.manhole import ColoredManhole, ManholeInterpreter
from twisted.conch.ssh import keys
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
from twisted.internet import defer, protocol, task
from twisted.logger import Logger
from zope.interface import implementer

from netshare.admin import SECRET_HELPERS, namespace
from netshare.errors import BadCredentials
from netshare.listener import Listener, RefusedAddress
from netshare.protocols.factory import ConnectionLimits
from netshare.services.accounts import UNKNOWN_USER
from netshare.stats import ServiceStats
from netshare.text import escape_unsafe
from netshare.wire import now_ms

SERVICE = "manhole"
MAX_FIELD = 128
#: A recorded statement is cut to this many characters (then a marker).
MAX_COMMAND = 1000


class ManholeConfigError(ValueError):
    pass


def _is_loopback_endpoint(description: str) -> bool:
    """
    True when a tcp:/ssl: endpoint names only loopback interfaces (unix:
    counts too).  A first, friendly check of the text; what is enforced is
    the address actually bound (L{check_bound_address}) and the address of
    every peer (L{ManholeFactory.buildProtocol}).
    """
    kind = description.split(":", 1)[0].lower()
    if kind == "unix":
        return True
    if kind not in ("tcp", "ssl", "tcp6"):
        return False
    interfaces = [part.partition("=")[2].replace("\\", "")
                  for part in description.split(":")[2:] if part.partition("=")[0] == "interface"]
    return bool(interfaces) and all(_is_loopback_host(i) for i in interfaces)


def _is_loopback_host(host) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_bound_address(address):
    """
    The manhole listener's C{check}: refuse unless the address the port
    actually bound is loopback (or a Unix socket).
    @raise RefusedAddress: naming the bound address.
    """
    host = getattr(address, "host", None)
    if host is None:          # a Unix socket: local by construction
        return
    if not _is_loopback_host(host):
        raise RefusedAddress(
            "manhole: bound %s:%s, which is not loopback; the manhole runs arbitrary Python, "
            "so binding it elsewhere needs --manhole-allow-remote yes"
            % (host, getattr(address, "port", "?")))


@implementer(ICredentialsChecker)
class AdminPasswordChecker:
    """netshare accounts, admins only, through the same slow-hash path as LOGIN."""

    credentialInterfaces = (credentials.IUsernamePassword,)

    def __init__(self, accounts):
        self.accounts = accounts

    @defer.inlineCallbacks
    def requestAvatarId(self, creds):
        name = creds.username.decode("utf-8", "replace")[:MAX_FIELD]
        password = creds.password.decode("utf-8", "replace")[:MAX_FIELD]
        try:
            account = yield self.accounts.authenticate(name, password,
                                                       source=getattr(creds, "source", None))
        except BadCredentials as e:
            raise _Refused("bad credentials", e.account) from None
        except Exception:
            raise _Refused("bad credentials", None) from None
        if not account.is_admin:
            raise _Refused("not an admin", account.name)
        return account.name.encode("utf-8")


class _Refused(cred_error.UnauthorizedLogin):
    """A refused manhole login, with the existing account's name if the
    attempt named one (else None: the typed name is never recorded)."""

    def __init__(self, why, account):
        super().__init__(why)
        self.account = account


@implementer(ICredentialsChecker)
class AdminKeyChecker:
    """An authorized key, and the SSH user name must be an admin account."""

    credentialInterfaces = (credentials.ISSHPrivateKey,)

    def __init__(self, accounts, keys_file):
        self.accounts = accounts
        self.keys_file = keys_file
        self._keys = SSHPublicKeyChecker(_FileKeys(keys_file))

    @defer.inlineCallbacks
    def requestAvatarId(self, creds):
        avatar = yield self._keys.requestAvatarId(creds)
        account = yield self.accounts.store.get(avatar.decode("utf-8", "replace")[:32])
        if account is None or not account.is_admin:
            raise cred_error.UnauthorizedLogin("not an admin account")
        return account.name.encode("utf-8")


class _FileKeys:
    """The authorized_keys file, re-read at each login so edits apply at once."""

    def __init__(self, path):
        self.path = path

    def getAuthorizedKeys(self, username):
        with open(self.path, "rb") as f:
            return list(readAuthorizedKeyFile(f, parseKey=keys.Key.fromString))


# -- what the shell records -------------------------------------------------

#: Keyword names whose value is masked wherever they appear (C{f(password=x)},
#: C{password = x}).
SECRET_KEYWORDS = frozenset({"password"})
REDACTED = "***"
UNTOKENIZABLE = "<untokenizable line>"

_OPEN, _CLOSE = frozenset("([{"), frozenset(")]}")
_SKIPPED = frozenset({tokenize.NL, tokenize.COMMENT, tokenize.INDENT, tokenize.DEDENT})
# Python 3.12 splits f-strings into tokens (3.14 t-strings too): one
# literal runs from a *_START to its matching *_END.
_LITERAL_STARTS = {getattr(tokenize, start): getattr(tokenize, end)
                   for start, end in (("FSTRING_START", "FSTRING_END"),
                                      ("TSTRING_START", "TSTRING_END"))
                   if hasattr(tokenize, start)}


def redact_command(source: str) -> str:
    """
    A statement typed in the shell as it may be recorded and shown: the
    text as typed, except that
     - inside a call to a helper taking a password (L{SECRET_HELPERS}:
       C{account_add(name, password, ...)}, C{account_passwd(name,
       password)}) every string literal after the first argument becomes
       C{'***'} (all of them when the arguments are unpacked, C{*args}),
       however deeply nested;
     - the value of any C{password=...} (a keyword argument, or an
       assignment) becomes C{***}, up to the next C{,}, C{;}, closing
       bracket or end of statement;
     - source that Python's C{tokenize} cannot split cleanly (an unclosed
       string or bracket, a stray character) becomes L{UNTOKENIZABLE}: it
       might hold anything.
    Lexical, so best effort: a password bound to a name on an earlier line
    (C{pw = "..."}) or passed through an alias of a helper is not seen.
    Pure: no I/O.
    """
    try:
        tokens = list(tokenize.generate_tokens(io.StringIO(source).readline))
    except (tokenize.TokenError, SyntaxError, ValueError):   # IndentationError is a SyntaxError
        return UNTOKENIZABLE
    if any(t.type == tokenize.ERRORTOKEN for t in tokens):
        return UNTOKENIZABLE   # e.g. an unterminated '...' on Python 3.11
    edits = []        # ((row, col) start, (row, col) end, replacement)
    frames = []       # per open bracket: [call to a secret helper, argument index, unpacked]
    prev = None       # the previous significant token
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        kind, text = tok.type, tok.string
        if kind == tokenize.OP and text in _OPEN:
            secret = (text == "(" and prev is not None and prev.type == tokenize.NAME
                      and prev.string in SECRET_HELPERS)
            frames.append([secret, 0, False])
        elif kind == tokenize.OP and text in _CLOSE:
            if frames:
                frames.pop()
        elif kind == tokenize.OP and text == "," and frames:
            frames[-1][1] += 1
        elif kind == tokenize.OP and text in ("*", "**") and frames and frames[-1][0] \
                and prev is not None and prev.string in ("(", ","):
            frames[-1][2] = True
        elif kind == tokenize.NAME and text in SECRET_KEYWORDS:
            j = _next_significant(tokens, i + 1)
            if j < len(tokens) and tokens[j].type == tokenize.OP and tokens[j].string == "=":
                start = _next_significant(tokens, j + 1)
                end = _value_end(tokens, start)
                if start < end:
                    edits.append((tokens[start].start, tokens[end - 1].end, REDACTED))
                    prev, i = tokens[end - 1], end
                    continue
        elif kind == tokenize.STRING or kind in _LITERAL_STARTS:
            last = _literal_end(tokens, i)
            if any(secret and (arg >= 1 or unpacked) for secret, arg, unpacked in frames):
                edits.append((tok.start, tokens[last].end, "'%s'" % (REDACTED,)))
            prev, i = tokens[last], last + 1
            continue
        if kind not in _SKIPPED:
            prev = tok
        i += 1
    return _apply(source, edits)


def _next_significant(tokens, i):
    while i < len(tokens) and tokens[i].type in _SKIPPED:
        i += 1
    return i


def _literal_end(tokens, i):
    """The index of the last token of the string literal starting at C{i}."""
    end = _LITERAL_STARTS.get(tokens[i].type)
    if end is None:
        return i
    depth = 0
    for k in range(i, len(tokens)):
        if tokens[k].type == tokens[i].type:
            depth += 1
        elif tokens[k].type == end:
            depth -= 1
            if depth == 0:
                return k
    return len(tokens) - 1


def _value_end(tokens, i):
    """The index just past the expression starting at C{i}: the first C{,}
    or C{;}, bracket closing an enclosing one, or end of statement outside
    brackets opened within it."""
    depth = 0
    for k in range(i, len(tokens)):
        kind, text = tokens[k].type, tokens[k].string
        if kind == tokenize.OP and text in _OPEN:
            depth += 1
        elif kind == tokenize.OP and text in _CLOSE:
            if depth == 0:
                return k
            depth -= 1
        elif depth == 0 and (kind in (tokenize.NEWLINE, tokenize.ENDMARKER)
                             or (kind == tokenize.OP and text in (",", ";"))):
            return k
    return len(tokens)


def _apply(source, edits):
    """C{source} with each (start, end) span, in tokenize's (row, col)
    coordinates, replaced."""
    if not edits:
        return source
    starts, offset = [0, 0], 0     # rows count from 1
    for line in io.StringIO(source):
        offset += len(line)
        starts.append(offset)
    out, done = [], 0
    for (srow, scol), (erow, ecol), replacement in sorted(edits):
        a, b = starts[srow] + scol, starts[erow] + ecol
        out += [source[done:a], replacement]
        done = b
    out.append(source[done:])
    return "".join(out)


def command_text(source: str) -> str:
    """What the history holds for a statement: redacted, control characters
    escaped, cut to L{MAX_COMMAND} characters with a marker."""
    text = escape_unsafe(redact_command(source))
    if len(text) > MAX_COMMAND:
        text = "%s... [cut: %d characters]" % (text[:MAX_COMMAND], len(text))
    return text


#: History codes for a statement: ran, did not compile, raised.
RAN, SYNTAX_ERROR, RAISED = 200, 500, 451


class RecordingInterpreter(ManholeInterpreter):
    """
    The manhole's interpreter, telling C{done(source, code)} the outcome of
    every complete statement it was handed.

    The outcome comes from the hooks L{code.InteractiveInterpreter} calls
    for exactly these cases: C{showsyntaxerror} when the source does not
    compile, C{showtraceback} when running it raised; neither means it ran.
    A statement still incomplete (C{runsource} answers "more") is not done
    yet: it is reported, whole, once its last line arrives.
    """

    def __init__(self, handler, locals, done):
        super().__init__(handler, locals)
        self._done = done
        self._outcome = RAN

    def runsource(self, source, filename="<input>", symbol="single"):
        self._outcome = RAN
        try:
            more = super().runsource(source, filename, symbol)
        except BaseException:      # SystemExit: runcode lets it through
            self._done(source, RAISED)
            raise
        if not more:
            self._done(source, self._outcome)
        return more

    def showsyntaxerror(self, *args, **kwargs):
        self._outcome = SYNTAX_ERROR
        return super().showsyntaxerror(*args, **kwargs)

    def showtraceback(self, *args, **kwargs):
        self._outcome = RAISED
        return super().showtraceback(*args, **kwargs)


class RecordedManhole(ColoredManhole):
    """
    The admin shell (telnet and SSH): a L{ColoredManhole} whose every
    statement is one request-history entry and one command log event.

    Entries: service C{manhole}, the admin's name and account id, the
    client's C{host:port}, the statement as L{command_text} renders it, and
    C{200} (ran), C{500} (a syntax error) or C{451} (raised).  Blank lines
    are not recorded; a multi-line statement is one entry, recorded when it
    is complete (one abandoned with ^C never ran and is not recorded).  The
    code is the statement's own: a Deferred it returned that fails later is
    shown in the shell but does not change the entry.

    @param history: the L{netshare.services.history.HistoryRecorder}.
    @param log: the Logger of per-command events (C{runtime.commandLog}).
    """

    fallbackLog = Logger()

    def __init__(self, namespace, *, history, user, account_id, peer, log=None):
        super().__init__(namespace)
        self.history = history
        self.user = user
        self.account_id = account_id
        self.peer = peer
        self.commandLog = log
        self._started = (now_ms(), time.monotonic())   # of the line being run

    def connectionMade(self):
        super().connectionMade()
        self.interpreter = RecordingInterpreter(self, self.namespace, self.statementDone)

    def lineReceived(self, line):
        self._started = (now_ms(), time.monotonic())
        super().lineReceived(line)

    def statementDone(self, source, code):
        if not source.strip():
            return
        ts_ms, started = self._started
        self.history.record(ts_ms, SERVICE, self.user, self.peer,
                            command_text(source.rstrip("\n")), code, self.account_id)
        # The statement itself stays out of the log: the history holds it.
        (self.commandLog or self.fallbackLog).info(
            "{verb} -> {code}", service=SERVICE, user=self.user, peer=self.peer, verb="python",
            code=code, duration_ms=round((time.monotonic() - started) * 1000.0, 3), bytes=0)


def _address_text(address) -> str:
    """C{host:port} of a peer (an SSH address is unwrapped first)."""
    address = getattr(address, "address", address)   # SSHTransportAddress
    return "%s:%s" % (getattr(address, "host", "?"), getattr(address, "port", "?"))


def _shell(runtime, user, account_id, peer):
    """The terminal protocol of one admin session."""
    return insults.ServerProtocol(
        RecordedManhole, namespace(runtime, user), history=runtime.history, user=user,
        account_id=account_id, peer=peer, log=getattr(runtime, "commandLog", None))


def _lookup(runtime, user, log):
    """Deferred[Account | None]: the admin's account (None if it cannot be read)."""
    d = runtime.accounts.store.get(user)

    def failed(f):
        log.warn("manhole: cannot look up {user}: {error}", user=user,
                 error=f.getErrorMessage())
        return None
    return d.addErrback(failed)


@implementer(portal.IRealm)
class ShellRealm:
    """
    A fresh namespace and shell per login, telnet or SSH.

    The shell is told who it serves: the admin's name and account id (read
    here, at login) and the client's address (known only once the session
    is connected: the telnet bootstrap and the SSH session pass it in).
    """

    log = Logger()

    def __init__(self, runtime):
        self.runtime = runtime
        self.ssh = _SSHRealm(runtime)

    def shell(self, user, account_id, peer):
        return _shell(self.runtime, user, account_id, peer)

    def requestAvatar(self, avatarId, mind, *interfaces):
        user = avatarId.decode("utf-8")
        if ITelnetProtocol in interfaces:
            def avatar(account):
                account_id = account.id if account is not None else None
                proto = _QuietBootstrap(self.shell, user, account_id)
                proto.admin = user
                proto.account = account
                return ITelnetProtocol, proto, lambda: None
            return _lookup(self.runtime, user, self.log).addCallback(avatar)
        return self.ssh.requestAvatar(avatarId, mind, *interfaces)


class _SSHShellSession(manhole_ssh.TerminalSession):
    """A terminal session whose shell is told the client's address."""

    def openShell(self, proto):
        # proto: the SSHSessionProcessProtocol; its getPeer() is the SSH
        # connection's peer (an SSHTransportAddress around host:port).
        try:
            peer = _address_text(proto.getPeer())
        except Exception:
            peer = "?"
        self.transportFactory(proto, self.chainedProtocolFactory(peer=peer),
                              conch_interfaces.IConchUser(self.original), self.width,
                              self.height)


class _SSHRealm(manhole_ssh.TerminalRealm):
    sessionFactory = _SSHShellSession
    log = Logger()

    def __init__(self, runtime):
        super().__init__()
        self.runtime = runtime

    def requestAvatar(self, avatarId, mind, *interfaces):
        user = avatarId.decode("utf-8")

        def avatar(account):
            account_id = account.id if account is not None else None
            # Copied into this avatar's session by TerminalRealm._getAvatar,
            # in the same turn of the reactor; the session calls it with peer=.
            self.chainedProtocolFactory = lambda peer: _shell(self.runtime, user, account_id,
                                                              peer)
            return manhole_ssh.TerminalRealm.requestAvatar(self, avatarId, mind, *interfaces)
        return _lookup(self.runtime, user, self.log).addCallback(avatar)


class ManholeLogin(AuthenticatingTelnetProtocol):
    """
    Username/password prompts with the limits of every netshare port:
    a pause after each failure, a close after C{max_login_failures}, a login
    timeout, and every attempt in the request history.
    """

    log = Logger()

    def __init__(self, portal, runtime, stats):
        super().__init__(portal)
        self.runtime = runtime
        self.stats = stats
        self.failures = 0
        self._timer = None

    @property
    def peer(self):
        p = self.transport.getPeer()
        return "%s:%s" % (getattr(p, "host", "?"), getattr(p, "port", "?"))

    def connectionMade(self):
        # At the prompt a connection is both idle and not logged in: the
        # shorter of the two limits ends it.
        cfg = self.runtime.config
        self._timer = self.runtime.reactor.callLater(min(cfg.login_timeout, cfg.idle_timeout),
                                                     self._loginTimeout)
        self.transport.write(b"netshare manhole: admin accounts only\n")
        super().connectionMade()

    def connectionLost(self, reason):
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        super().connectionLost(reason)

    def _loginTimeout(self):
        self.transport.write(b"\n421 login timeout\n")
        self.transport.loseConnection()

    def telnet_User(self, line):
        self.username = line[:MAX_FIELD].strip()
        self.transport.will(b"\x01").addErrback(lambda f: None)  # ECHO off on the client
        self.transport.write(b"Password: ")
        return "Password"

    def telnet_Password(self, line):
        username, password = self.username, line[:MAX_FIELD]
        del self.username
        self.state = "Discard"
        creds = credentials.UsernamePassword(username, password)
        # Where it comes from: failed logins count per address too, and the
        # password hashing is shared fairly between addresses.
        creds.source = getattr(self.transport.getPeer(), "host", None)
        d = self.portal.login(creds, None, ITelnetProtocol)
        d.addCallbacks(self._ok, self._failed, callbackArgs=(username,),
                       errbackArgs=(username,))
        return "Discard"

    def _record(self, name, code):
        """Every attempt in the history, the name only if it is an account's."""
        name = name or UNKNOWN_USER
        self.runtime.history.record(now_ms(), SERVICE, name if code == 230 else None,
                                    self.peer, "LOGIN %s ***" % (name,), code)
        self.log.info("manhole login {user} -> {code}", service=SERVICE, user=name,
                      peer=self.peer, code=code)

    def _ok(self, ial, username):
        transport = self.transport
        transport.admin = getattr(ial[1], "admin", None)
        # The account itself (read by the realm): removing it closes this shell.
        transport.account = getattr(ial[1], "account", None)
        self._record(transport.admin, 230)
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self.stats.commands += 1
        self._cbLogin(ial)  # the shell keeps server-side echo (WILL ECHO) on

    @defer.inlineCallbacks
    def _failed(self, failure, username):
        self.failures += 1
        self.stats.login_failures += 1
        self._record(getattr(failure.value, "account", None), 535)
        yield task.deferLater(self.runtime.reactor, self.runtime.config.login_failure_delay,
                              lambda: None)
        if not self.transport.connected:
            return
        self.transport.wont(b"\x01").addErrback(lambda f: None)
        if self.failures >= self.runtime.config.max_login_failures:
            self.transport.write(b"\ntoo many failures\n")
            self.transport.loseConnection()
            return
        self.transport.write(b"\nAuthentication failed\nUsername: ")
        self.state = "User"


class _QuietBootstrap(TelnetBootstrapProtocol):
    """
    The shell's telnet bootstrap, minus noise: the login already turned
    server-side echo on, and a client refusing LINEMODE/NAWS/SGA is normal,
    not an error worth a traceback.  The shell factory is called with its
    arguments and C{peer=} the client's C{host:port}.
    """

    log = Logger()

    def connectionMade(self):
        self.transport.negotiationMap[NAWS] = self.telnet_NAWS
        self.transport.negotiationMap[LINEMODE] = self.telnet_LINEMODE
        for opt in (LINEMODE, NAWS, SGA):
            self.transport.do(opt).addErrback(self._refused, opt)
        if not self.transport.getOptionState(ECHO).us.state == "yes":
            self.transport.will(ECHO).addErrback(self._refused, ECHO)
        self.protocol = self.protocolFactory(*self.protocolArgs,
                                             peer=_address_text(self.transport.getPeer()),
                                             **self.protocolKwArgs)
        self.protocol.factory = getattr(self, "factory", None)
        self.protocol.makeConnection(self)

    def _refused(self, failure, opt):
        self.log.debug("telnet option {opt!r} not negotiated: {why}", opt=opt,
                       why=failure.getErrorMessage())


class _SafeTelnetTransport(TelnetTransport):
    """
    One manhole connection: a telnet transport that answers garbage by
    closing (not with a traceback), counted against the listener's caps,
    and closed in order when the server stops.
    """

    log = Logger()

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.lost = defer.Deferred()
        self.admin = None          # the account name, once logged in
        self.account = None        # ... and the account (for its id)
        self._admitted = False

    @property
    def peer(self):
        p = self.transport.getPeer()
        return "%s:%s" % (getattr(p, "host", "?"), getattr(p, "port", "?"))

    @property
    def user(self):
        """The admin logged in on this connection, or None."""
        return self.admin

    def connectionMade(self):
        factory = self.factory
        factory.stats.connections_total += 1
        refusal = factory.connections.admit(self, getattr(self.transport.getPeer(), "host", "?"))
        if refusal:
            self.log.warn("manhole refused {peer}: {reason}", peer=self.peer, reason=refusal)
            self.transport.write(("421 %s\r\n" % (refusal,)).encode("ascii"))
            self.transport.loseConnection()
            return
        self._admitted = True
        super().connectionMade()

    def connectionLost(self, reason):
        self.factory.connections.release(self)
        if self._admitted:
            super().connectionLost(reason)
        if not self.lost.called:
            self.lost.callback(None)

    def accountRemoved(self):
        """The admin's account was removed: the shell ends."""
        if self.transport.connected:
            self.transport.write(b"\r\n421 account removed\r\n")
            self.transport.loseConnection()

    def beginShutdown(self):
        """The server is stopping: say so and close (a shell has no command
        in progress that could be answered first: typed code runs on the
        reactor thread, so it is over before this runs)."""
        if self.transport.connected:
            self.transport.write(b"\r\n421 shutting down\r\n")
            self.transport.loseConnection()
        return self.lost

    def dataReceived(self, data):
        try:
            TelnetTransport.dataReceived(self, data)
        except ValueError as e:
            self.log.info("manhole: dropping {peer}: telnet protocol error ({error})",
                          peer=str(self.getPeer()), error=str(e)[:80])
            self.transport.abortConnection()


class ManholeFactory(protocol.ServerFactory):
    """
    The telnet-style manhole listener: the same caps as every other
    listener (C{--max-connections}, C{--max-per-ip}), peers off loopback
    refused unless C{--manhole-allow-remote yes}, and an orderly close of
    every session when the server stops (L{shutdown}).
    """

    noisy = False
    log = Logger()
    service = SERVICE

    def __init__(self, runtime, the_portal):
        self.runtime = runtime
        self.portal = the_portal
        self.stats = ServiceStats()
        cfg = runtime.config
        self.connections = ConnectionLimits(runtime.reactor, cfg.max_connections, cfg.max_per_ip,
                                            self.stats)

    def buildProtocol(self, addr):
        host = getattr(addr, "host", None)
        if host is not None and not self.runtime.config.manhole_allow_remote \
                and not _is_loopback_host(host):
            self.log.warn("manhole: refused a connection from {host}, not loopback", host=host)
            self.stats.refused += 1
            return None
        proto = _SafeTelnetTransport(ManholeLogin, self.portal, self.runtime, self.stats)
        proto.factory = self
        return proto

    def shutdown(self, timeout):
        """Close every session; abort stragglers after C{timeout} seconds."""
        return self.connections.shutdown(timeout, SERVICE)


def check_config(config):
    """@raise ManholeConfigError: a non-loopback manhole without the opt-in."""
    for option, endpoint in (("--manhole", config.manhole), ("--manhole-ssh", config.manhole_ssh)):
        if endpoint and not _is_loopback_endpoint(endpoint) and not config.manhole_allow_remote:
            raise ManholeConfigError(
                "setting %s: %s is not loopback-only; the manhole runs arbitrary Python, so "
                "binding it elsewhere needs --manhole-allow-remote yes" % (option, endpoint))


def makeListeners(runtime):
    """@return: [(name, service)] for the telnet and SSH manholes configured."""
    cfg = runtime.config
    check_config(cfg)
    log = Logger()
    the_portal = portal.Portal(ShellRealm(runtime), [AdminPasswordChecker(runtime.accounts)])
    out = []
    if cfg.manhole:
        if not _is_loopback_endpoint(cfg.manhole) and not cfg.manhole.lower().startswith("ssl:"):
            for _ in range(3):
                log.critical("WARNING: the manhole (a Python shell into this server) listens on "
                             "{endpoint} WITHOUT TLS: passwords and commands cross the network "
                             "in clear. Use ssl: or --manhole-ssh.", endpoint=cfg.manhole)
        factory = ManholeFactory(runtime, the_portal)
        runtime.factories["manhole"] = factory
        svc = Listener(cfg.manhole, factory, runtime.reactor, backlog=cfg.listen_backlog,
                       check=None if cfg.manhole_allow_remote else check_bound_address)
        svc.setName("manhole")
        out.append(("manhole", svc))
    if cfg.manhole_ssh:
        import os
        key_path = os.path.join(cfg.data, "ssh_host_key")
        host = keys.Key.fromFile(key_path)
        ssh_portal = portal.Portal(ShellRealm(runtime).ssh,
                                   [AdminKeyChecker(runtime.accounts, cfg.manhole_keys)])
        factory = manhole_ssh.ConchFactory(ssh_portal)
        factory.publicKeys = {host.sshType(): host.public()}
        factory.privateKeys = {host.sshType(): host}
        factory.noisy = False
        svc = Listener(cfg.manhole_ssh, factory, runtime.reactor, backlog=cfg.listen_backlog,
                       check=None if cfg.manhole_allow_remote else check_bound_address)
        svc.setName("manhole-ssh")
        out.append(("manhole-ssh", svc))
    return out

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
   helpers may block it.
"""

import ipaddress

from zope.interface import implementer

from twisted.conch import manhole_ssh
from twisted.conch.checkers import SSHPublicKeyChecker, readAuthorizedKeyFile
from twisted.conch.insults import insults
from twisted.conch.manhole import ColoredManhole
from twisted.conch.ssh import keys
from twisted.conch.telnet import (ECHO, LINEMODE, NAWS, SGA, AuthenticatingTelnetProtocol,
                                  ITelnetProtocol, TelnetBootstrapProtocol, TelnetTransport)
from twisted.cred import credentials, error as cred_error, portal
from twisted.cred.checkers import ICredentialsChecker
from twisted.internet import defer, protocol, task
from twisted.logger import Logger

from netshare.accounts import UNKNOWN_USER
from netshare.errors import BadCredentials
from netshare.listener import Listener, RefusedAddress
from netshare.protocols.base import ConnectionLimits, ServiceStats
from netshare.wire import now_ms

SERVICE = "manhole"
MAX_FIELD = 128


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
            account = yield self.accounts.authenticate(name, password)
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


@implementer(portal.IRealm)
class ShellRealm:
    """A fresh namespace and shell per login, telnet or SSH."""

    def __init__(self, runtime):
        self.runtime = runtime
        self.ssh = _SSHRealm(runtime)

    def shell(self, user):
        from netshare.admin import namespace
        return insults.ServerProtocol(ColoredManhole, namespace(self.runtime, user))

    def requestAvatar(self, avatarId, mind, *interfaces):
        user = avatarId.decode("utf-8")
        if ITelnetProtocol in interfaces:
            proto = _QuietBootstrap(lambda: self.shell(user))
            proto.admin = user
            return ITelnetProtocol, proto, lambda: None
        return self.ssh.requestAvatar(avatarId, mind, *interfaces)


class _SSHRealm(manhole_ssh.TerminalRealm):
    def __init__(self, runtime):
        super().__init__()
        self.runtime = runtime

    def requestAvatar(self, avatarId, mind, *interfaces):
        from netshare.admin import namespace
        user = avatarId.decode("utf-8")
        # Copied into this avatar's session by TerminalRealm._getAvatar.
        self.chainedProtocolFactory = lambda: insults.ServerProtocol(
            ColoredManhole, namespace(self.runtime, user))
        return super().requestAvatar(avatarId, mind, *interfaces)


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
        self._timer = self.runtime.reactor.callLater(self.runtime.config.idle_timeout,
                                                     self._loginTimeout)
        self.transport.write(b"netshare manhole: admin accounts only\n")
        super().connectionMade()

    def connectionLost(self, reason):
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        super().connectionLost(reason)

    def _loginTimeout(self):
        self.transport.write(b"\nlogin timeout\n")
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
        self._record(transport.admin, 230)
        # The account itself (its id), so that removing it closes this shell.
        d = self.runtime.accounts.store.get(transport.admin)
        d.addCallback(lambda account: setattr(transport, "account", account))
        d.addErrback(lambda f: self.log.warn("manhole: cannot look up {user}: {error}",
                                             user=transport.admin, error=f.getErrorMessage()))
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
    not an error worth a traceback.
    """

    log = Logger()

    def connectionMade(self):
        self.transport.negotiationMap[NAWS] = self.telnet_NAWS
        self.transport.negotiationMap[LINEMODE] = self.telnet_LINEMODE
        for opt in (LINEMODE, NAWS, SGA):
            self.transport.do(opt).addErrback(self._refused, opt)
        if not self.transport.getOptionState(ECHO).us.state == "yes":
            self.transport.will(ECHO).addErrback(self._refused, ECHO)
        self.protocol = self.protocolFactory(*self.protocolArgs, **self.protocolKwArgs)
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
        svc = Listener(cfg.manhole, factory, runtime.reactor,
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
        svc = Listener(cfg.manhole_ssh, factory, runtime.reactor,
                       check=None if cfg.manhole_allow_remote else check_bound_address)
        svc.setName("manhole-ssh")
        out.append(("manhole-ssh", svc))
    return out

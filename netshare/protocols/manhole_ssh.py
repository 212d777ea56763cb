"""
The SSH way into the admin shell (C{--manhole-ssh ENDPOINT --manhole-keys
FILE}): the same shell as the telnet-style listener
(L{netshare.protocols.manhole_shell}), for admin account names, with keys
from an authorized_keys file.

Kept apart from the telnet way in: here Twisted's conch does the transport,
the encryption and the key check; what netshare adds is that the SSH user
name must be an admin account, that the shell is told the admin's account
id and the client's address (so its history entries say who and from
where), and the host key C{netshare init} wrote (C{<data>/ssh_host_key},
mode 0600).
"""

import os
from collections.abc import Callable, Iterable

from twisted.conch import manhole_ssh as conch_manhole
from twisted.conch.checkers import IAuthorizedKeysDB, SSHPublicKeyChecker, readAuthorizedKeyFile
from twisted.conch.insults import insults
from twisted.conch.interfaces import IConchUser, ISession
from twisted.conch.ssh import keys
from twisted.conch.ssh.session import SSHSessionProcessProtocol
from twisted.cred import credentials, portal
from twisted.cred import error as cred_error
from twisted.cred.checkers import ICredentialsChecker
from twisted.logger import Logger
from twisted.python import components
from zope.interface import Interface, implementer

from netshare.admin import AdminRuntime
from netshare.deferreds import deferred
from netshare.protocols.manhole_shell import admin_account, peer_text, shell_protocol
from netshare.services.accounts import AccountService

#: What a realm gives a login: (interface, avatar, logout).
Avatar = tuple[type[Interface], object, Callable[[], None]]


@implementer(IAuthorizedKeysDB)
class _FileKeys:
    """The authorized_keys file, re-read at each login so edits apply at once."""

    def __init__(self, path: str):
        self.path = path

    def getAuthorizedKeys(self, avatarId: bytes) -> Iterable[keys.Key]:
        with open(self.path, "rb") as f:
            return list(readAuthorizedKeyFile(f, parseKey=keys.Key.fromString))


@implementer(ICredentialsChecker)
class AdminKeyChecker:
    """An authorized key, and the SSH user name must be an admin account."""

    credentialInterfaces = (credentials.ISSHPrivateKey,)

    def __init__(self, accounts: AccountService, keys_file: str):
        self.accounts = accounts
        self.keys_file = keys_file
        self._keys = SSHPublicKeyChecker(_FileKeys(keys_file))

    @deferred
    async def requestAvatarId(self, creds: credentials.ISSHPrivateKey) -> bytes | tuple[()]:
        avatar = await self._keys.requestAvatarId(creds)
        account = await self.accounts.store.get(avatar.decode("utf-8", "replace")[:32])
        if account is None or not account.is_admin:
            raise cred_error.UnauthorizedLogin("not an admin account")
        return account.name.encode("utf-8")


class _ShellSession(conch_manhole.TerminalSession):
    """
    A terminal session whose shell is told the client's address.

    @ivar shell: makes the session's terminal protocol, given the client's
        C{host:port}.
    """

    shell: Callable[[str], insults.ServerProtocol]

    def openShell(self, proto: SSHSessionProcessProtocol) -> None:
        # Its getPeer() is the SSH connection's peer (an SSHTransportAddress
        # around host:port).
        try:
            peer = peer_text(proto.getPeer())
        except Exception:
            peer = "?"
        conch_manhole.TerminalSessionTransport(
            proto, self.shell(peer), IConchUser(self.original), self.width, self.height
        )


@implementer(portal.IRealm)
class SSHRealm:
    """
    A fresh shell per SSH login, for an admin whose name and account id are
    read here, at login.  (Twisted's C{TerminalRealm}, with a session that
    knows whom it serves.)
    """

    log = Logger()

    def __init__(self, runtime: AdminRuntime):
        self.runtime = runtime

    @deferred
    async def requestAvatar(
        self, avatarId: bytes | tuple[()], mind: object, *interfaces: type[Interface]
    ) -> Avatar:
        if IConchUser not in interfaces or not isinstance(avatarId, bytes):
            raise NotImplementedError("the SSH manhole serves admins' conch users only")
        user = avatarId.decode("utf-8")
        account = await admin_account(self.runtime, user, self.log)
        account_id = account.id if account is not None else None
        comp = components.Componentized()
        conch_user = conch_manhole.TerminalUser(comp, avatarId)
        session = _ShellSession(comp)
        session.shell = lambda peer: shell_protocol(self.runtime, user, account_id, peer)
        comp.setComponent(IConchUser, conch_user)
        comp.setComponent(ISession, session)
        return IConchUser, conch_user, lambda: None


def ssh_factory(runtime: AdminRuntime, keys_file: str) -> conch_manhole.ConchFactory:
    """
    The SSH manhole's factory: admins by a key of the authorized_keys file
    C{keys_file}, the host key of C{<data>/ssh_host_key}.
    @raise OSError: the host key cannot be read.
    """
    host = keys.Key.fromFile(os.path.join(runtime.config.data, "ssh_host_key"))
    ssh_portal = portal.Portal(SSHRealm(runtime), [AdminKeyChecker(runtime.accounts, keys_file)])
    factory = conch_manhole.ConchFactory(ssh_portal)
    factory.publicKeys = {host.sshType(): host.public()}
    factory.privateKeys = {host.sshType(): host}
    factory.noisy = False
    return factory

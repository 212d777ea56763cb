"""
The manhole: an interactive Python shell inside the running server, for
operators (docs/protocol.md section 5).  This module decides where it may
listen and builds its listeners; the pieces live next to it:

 - L{netshare.protocols.manhole_shell}: the shell itself, every statement
   recorded with passwords redacted, a fresh namespace per session;
 - L{netshare.protocols.manhole_telnet}: the telnet-style way in (admin
   name and password, the limits of every netshare port);
 - L{netshare.protocols.manhole_ssh}: the SSH way in (authorized keys).

Whoever logs in runs arbitrary Python in the daemon, with the database, the
TLS keys and every connection within reach.  So:

 - the telnet-style listener binds loopback by default
   (C{tcp:7004:interface=127.0.0.1}); a non-loopback interface is refused
   at start-up unless C{--manhole-allow-remote yes}, and then start-up warns
   loudly unless the listener is TLS (C{ssl:}) - prefer the SSH variant;
 - what is enforced is the address each listener actually bound
   (L{check_bound_address}) and the address of every peer
   (L{netshare.protocols.manhole_telnet.ManholeFactory}), not only the
   endpoint text (L{check_config});
 - login is for admin accounts only, by the same scrypt path as C{LOGIN}
   (never a plaintext password file) or by an authorized key;
 - helpers that touch the database return Deferreds, which the shell prints
   when they fire: typed code runs on the reactor thread, so nothing in the
   helpers may block it.
"""

from twisted.application.service import Service
from twisted.cred import portal
from twisted.internet.interfaces import IAddress
from twisted.logger import Logger

from netshare.admin import AdminRuntime
from netshare.config import Config
from netshare.listener import Listener, RefusedAddress, is_loopback_endpoint, is_loopback_host
from netshare.protocols.manhole_telnet import AdminPasswordChecker, ManholeFactory, TelnetRealm

log = Logger()


class ManholeConfigError(ValueError):
    """The manhole's settings would expose it; the message names the setting."""


def check_config(config: Config) -> None:
    """@raise ManholeConfigError: a non-loopback manhole without the opt-in,
    or an SSH manhole without authorized keys."""
    for option, endpoint in (("--manhole", config.manhole), ("--manhole-ssh", config.manhole_ssh)):
        if endpoint and not is_loopback_endpoint(endpoint) and not config.manhole_allow_remote:
            raise ManholeConfigError(
                "setting %s: %s is not loopback-only; the manhole runs arbitrary Python, so "
                "binding it elsewhere needs --manhole-allow-remote yes" % (option, endpoint)
            )
    if config.manhole_ssh and not config.manhole_keys:
        raise ManholeConfigError(
            "setting --manhole-ssh: needs --manhole-keys (an authorized_keys file)"
        )


def check_bound_address(address: IAddress) -> None:
    """
    The manhole listener's C{check}: refuse unless the address the port
    actually bound is loopback (or a Unix socket).
    @raise RefusedAddress: naming the bound address.
    """
    host = getattr(address, "host", None)
    if host is None:  # a Unix socket: local by construction
        return
    if not is_loopback_host(host):
        raise RefusedAddress(
            "manhole: bound %s:%s, which is not loopback; the manhole runs arbitrary Python, "
            "so binding it elsewhere needs --manhole-allow-remote yes"
            % (host, getattr(address, "port", "?"))
        )


def makeListeners(runtime: AdminRuntime) -> list[tuple[str, Service]]:
    """
    The telnet-style and SSH manholes configured (the telnet factory is
    also registered in C{runtime.factories}, so its connections are counted,
    listed and closed at shutdown like every other listener's).
    @return: [(name, service)].
    @raise ManholeConfigError: see L{check_config}.
    @raise OSError: the SSH host key cannot be read.
    """
    cfg = runtime.config
    check_config(cfg)
    check = None if cfg.manhole_allow_remote else check_bound_address
    out: list[tuple[str, Service]] = []
    if cfg.manhole:
        if not is_loopback_endpoint(cfg.manhole) and not cfg.manhole.lower().startswith("ssl:"):
            for _ in range(3):
                log.critical(
                    "WARNING: the manhole (a Python shell into this server) listens on "
                    "{endpoint} WITHOUT TLS: passwords and commands cross the network "
                    "in clear. Use ssl: or --manhole-ssh.",
                    endpoint=cfg.manhole,
                )
        the_portal = portal.Portal(TelnetRealm(runtime), [AdminPasswordChecker(runtime.accounts)])
        factory = ManholeFactory(runtime, the_portal)
        runtime.factories["manhole"] = factory
        telnet = Listener(
            cfg.manhole, factory, runtime.reactor, backlog=cfg.listen_backlog, check=check
        )
        telnet.setName("manhole")
        out.append(("manhole", telnet))
    if cfg.manhole_ssh and cfg.manhole_keys:  # both or neither: check_config
        # Imported only when configured: Conch's SSH stack is megabytes of
        # resident memory a server without the SSH manhole need not hold.
        from netshare.protocols.manhole_ssh import ssh_factory

        ssh = Listener(
            cfg.manhole_ssh,
            ssh_factory(runtime, cfg.manhole_keys),
            runtime.reactor,
            backlog=cfg.listen_backlog,
            check=check,
        )
        ssh.setName("manhole-ssh")
        out.append(("manhole-ssh", ssh))
    return out

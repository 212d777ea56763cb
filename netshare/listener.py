"""
One listening endpoint in the service tree.

L{Listener} does what C{twisted.application.strports.service} does (listen
from C{privilegedStartService}; a bind error raises at once, so start-up
stops with one clear line instead of a logged failure) plus what netshare
needs of every listener:

 - C{check}: a function called with the address the port I{actually} bound,
   after listening and before anyone is served.  The manhole uses it to
   refuse anything but loopback: checking the endpoint text is not enough
   (C{tcp:7004:interface=127.0.0.1:interface=0.0.0.0} binds the last
   C{interface=}), the bound address is what counts.
 - C{backlog}: the listen queue of a C{tcp:}/C{ssl:} endpoint that does not
   set C{backlog=} itself.  Twisted's default of 50 loses most of a
   reconnect burst (every client of a restarted server connecting at once).
 - C{port}: the listening port (tests listen on port 0 and read it back).
 - C{ssl:} endpoints are served with netshare's own TLS options
   (L{netshare.tls.server_endpoint}: TLS 1.2+ with AEAD suites only).
"""

import ipaddress
from collections.abc import Callable
from typing import Any

from twisted.application.service import Service
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IListeningPort
from twisted.python.failure import Failure

_BACKLOG_KINDS = ("tcp", "tcp6", "ssl")


class RefusedAddress(Exception):
    """A listener bound an address its C{check} does not allow."""


def with_backlog(description: str, backlog: int | None) -> str:
    """C{description} with C{backlog=} added when it is a TCP or TLS endpoint
    that does not set one."""
    kind = description.split(":", 1)[0].strip().lower()
    if backlog is None or kind not in _BACKLOG_KINDS:
        return description
    parts = description.split(":")
    if any(p.strip().startswith("backlog=") for p in parts[1:]):
        return description
    return "%s:backlog=%d" % (description, backlog)


def is_loopback_host(host: str) -> bool:
    """C{localhost} or a loopback address (127.0.0.0/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def is_loopback_endpoint(description: str) -> bool:
    """
    True when a C{tcp:}/C{ssl:} endpoint names only loopback interfaces
    (C{unix:} counts too).  A first, friendly check of the text: what a
    C{check} sees is the address actually bound, and that is what to
    enforce (see the module docstring).
    """
    kind = description.split(":", 1)[0].lower()
    if kind == "unix":
        return True
    if kind not in ("tcp", "ssl", "tcp6"):
        return False
    interfaces = [
        part.partition("=")[2].replace("\\", "")
        for part in description.split(":")[2:]
        if part.partition("=")[0] == "interface"
    ]
    return bool(interfaces) and all(is_loopback_host(i) for i in interfaces)


class Listener(Service):
    """
    @ivar description: the endpoint string as configured.
    @ivar port: the L{IListeningPort} once listening, else None.
    """

    port: IListeningPort | None

    def __init__(
        self,
        description: str,
        factory: Any,
        reactor: Any,
        *,
        check: Callable[[Any], None] | None = None,
        backlog: int | None = None,
    ):
        self.description = description
        self.factory = factory
        if description.split(":", 1)[0].strip().lower() == "ssl":
            # Served with netshare's TLS options (AEAD suites only).
            from netshare.tls import server_endpoint

            self.endpoint = server_endpoint(reactor, description, backlog)
        else:
            self.endpoint = serverFromString(reactor, with_backlog(description, backlog))
        self.check = check
        self.port = None

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        results: list[IListeningPort | Failure] = []
        self.endpoint.listen(self.factory).addBoth(results.append)
        if not results:
            # Every endpoint netshare accepts (tcp, ssl, unix, systemd)
            # listens synchronously; anything else could not be checked.
            raise RuntimeError("endpoint %s did not listen synchronously" % (self.description,))
        if isinstance(results[0], Failure):
            results[0].raiseException()
        self.port = results[0]
        if self.check is not None:
            try:
                self.check(self.port.getHost())
            except BaseException:
                self.port.stopListening()
                self.port = None
                raise

    def startService(self) -> None:
        super().startService()
        if self.port is None:
            self.privilegedStartService()

    def stopService(self) -> Any:
        super().stopService()
        port, self.port = self.port, None
        if port is not None:
            return port.stopListening()

"""
The listener side of a line protocol: the factory that builds one
service's connections, and the caps on how many may be open.

L{CommandFactory} is what L{netshare.service} puts behind each port: it
holds the shared runtime and the service object (the files service, the
ttweet hub, the personnel service) its protocols call, counts connections
in L{ConnectionLimits} and stops them in order at shutdown.
"""

from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.internet.protocol import Factory
from twisted.logger import Logger

from netshare.protocols.line import CommandProtocol
from netshare.stats import ServiceStats


class ConnectionLimits:
    """
    The open connections of one listener, capped in total and per client
    address (docs/protocol.md section 1), and closed in order at shutdown.

    A connection is anything with C{beginShutdown() -> Deferred} (fires when
    it is closed) and a C{transport}; the line protocols and the manhole's
    telnet transport both are.
    """

    log = Logger()

    def __init__(self, reactor, max_total: int, max_per_host: int, stats=None):
        self.reactor = reactor
        self.max_total = max_total
        self.max_per_host = max_per_host
        self.stats = stats
        self._hosts: dict[Any, str] = {}  # connection -> the address it was counted under
        self._perHost: dict[str, int] = {}

    def __len__(self):
        return len(self._hosts)

    def __iter__(self):
        return iter(list(self._hosts))

    def __contains__(self, conn):
        return conn in self._hosts

    def admit(self, conn, host) -> str | None:
        """Count a new connection; return a refusal reason or None."""
        if len(self._hosts) >= self.max_total or self._perHost.get(host, 0) >= self.max_per_host:
            if self.stats is not None:
                self.stats.refused += 1
            return "too many connections"
        self._hosts[conn] = host
        self._perHost[host] = self._perHost.get(host, 0) + 1
        if self.stats is not None:
            self.stats.connections = len(self._hosts)
        return None

    def release(self, conn):
        if conn not in self._hosts:
            return
        host = self._hosts.pop(conn)
        left = self._perHost.get(host, 1) - 1
        if left:
            self._perHost[host] = left
        else:
            self._perHost.pop(host, None)
        if self.stats is not None:
            self.stats.connections = len(self._hosts)

    def shutdown(self, timeout, service="-"):
        """Tell every connection we are stopping; abort stragglers after
        C{timeout} seconds.  @return: a Deferred that fires when all are gone."""
        waits = [c.beginShutdown() for c in self]
        if not waits:
            return defer.succeed(None)
        d = defer.DeferredList(waits, consumeErrors=True)
        timer = self.reactor.callLater(timeout, self._abortAll, service)
        d.addBoth(lambda r: timer.cancel() if timer.active() else None)
        return d

    def _abortAll(self, service):
        for c in self:
            self.log.warn(
                "aborting {peer} at shutdown", peer=getattr(c, "peer", "?"), service=service
            )
            c.transport.abortConnection()


class CommandFactory(Factory):
    """
    Builds one service's protocols and enforces the connection caps.

    @ivar runtime: the shared L{netshare.service.Runtime}.
    @ivar app: the service object (files store, ttweet hub, ...), if any.
    @ivar connections: the L{ConnectionLimits} of this listener.
    """

    protocol = CommandProtocol
    log = Logger()
    noisy = False

    def __init__(self, runtime, protocol=None, app=None):
        self.runtime = runtime
        self.reactor = runtime.reactor
        if protocol is not None:
            self.protocol = protocol
        self.app = app
        self.service = self.protocol.service
        self.stats = ServiceStats()
        cfg = runtime.config
        self.connections = ConnectionLimits(
            self.reactor, cfg.max_connections, cfg.max_per_ip, self.stats
        )
        self._endOfTurn: list[Callable[[], None]] = []
        self._endOfTurnCall: Any = None

    def endOfTurn(self, write: Callable[[], None]) -> None:
        """
        Call C{write} at the end of this reactor turn (C{callLater(0)}:
        before the reactor next waits, so nothing is delayed by more than
        the turn that made it), with every other one asked for this turn.
        For pushes gathered per connection and written once per turn
        (L{LineConnection.batchPushes}).
        """
        self._endOfTurn.append(write)
        if self._endOfTurnCall is None:
            self._endOfTurnCall = self.reactor.callLater(0, self._runEndOfTurn)

    def _runEndOfTurn(self) -> None:
        self._endOfTurnCall = None
        writes, self._endOfTurn = self._endOfTurn, []
        for write in writes:
            try:
                write()
            except Exception:
                self.log.failure("writing at the end of a turn", service=self.service)

    def admit(self, proto):
        """Count a new connection; return a refusal reason or None."""
        return self.connections.admit(proto, proto.host)

    def release(self, proto):
        self.connections.release(proto)

    def shutdown(self, timeout):
        """Tell every connection we are stopping; abort stragglers after
        C{timeout} seconds.  @return: a Deferred that fires when all are gone."""
        return self.connections.shutdown(timeout, self.service)

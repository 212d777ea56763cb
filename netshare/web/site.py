"""
The C{web} listener's site (docs/http.md): the HTTP API (C{/api/...}),
the operations endpoints (C{/healthz}, C{/readyz}, C{/metrics}) and the
web interface's files (C{/}, C{/static/...}: netshare/web/static_site.py's
resource tree), over the same runtime and service objects as the line
ports.

L{WebSite} is a C{twisted.web} site whose requests (L{ApiRequest}) are
routed by L{netshare.web.app.Router} instead of a resource tree.  Like a
line listener's factory it counts and caps its connections
(C{--max-connections}, C{--max-per-ip}), keeps L{ServiceStats}, and closes
every connection in order at shutdown; L{build_site} registers it in
C{runtime.factories["web"]} (as the manhole's listener is), so the stop
sequence, C{stats()} and the account watch see it like any other.

Adding a module of the API: write C{register(router, runtime)} in
C{netshare/web/<module>.py} and add the module to L{MODULES}.
"""

from __future__ import annotations

import io
from typing import Any

from twisted.internet import defer
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import http, server

from netshare.errors import TemporaryError
from netshare.protocols.factory import ConnectionLimits
from netshare.stats import ServiceStats
from netshare.web import auth, files, history, metrics, openapi, personnel, ttweet
from netshare.web.app import (
    JSON_BODY_LIMIT,
    Call,
    Dispatcher,
    HttpError,
    RequestBody,
    Response,
    Route,
    Router,
    raw_response,
    split_target,
)
from netshare.web.static_site import is_static_path, static_root
from netshare.wire import now_ms

#: The modules of the API, each with C{register(router, runtime)}.
MODULES: tuple[Any, ...] = (auth, history, files, ttweet, personnel, metrics, openapi)

_KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def _unknown_route(method: str) -> Route:
    """What a request no route matches is recorded as (a bounded name:
    the metrics label it)."""
    return Route(method if method in _KNOWN_METHODS else "OTHER", "<unknown>", _none, "web")


def _none(call: Call) -> None:
    return None


#: What a request for the web interface's files is recorded as.
_STATIC = {m: Route(m, "<static>", _none, "web", auth=False) for m in ("GET", "HEAD")}


class ApiRequest(server.Request):
    """
    One HTTP request, dispatched by route (L{netshare.web.app.Dispatcher})
    rather than through a resource tree.

    The route is found as soon as the headers are in: a non-streaming
    route's body is read up to L{JSON_BODY_LIMIT} (more: 413 at once, and
    the connection closes); a streaming route's handler starts right then
    with the body as a L{RequestBody}.

    @ivar gone: the client went away before the response was finished.
    @ivar received: the whole request (body included) is in.
    @ivar sentBytes: response body bytes written.
    @ivar channelRef: the channel (twisted.web forgets it once the
        connection is lost; the record still needs it).
    """

    log = Logger()

    def __init__(self, channel: Any, *args: Any, **kwargs: Any) -> None:
        super().__init__(channel, *args, parsePOSTFormSubmission=False, **kwargs)
        self.channelRef = channel
        self.gone = False
        self.received = False
        self.sentBytes = 0
        self.body: RequestBody | None = None
        #: A non-streaming route's body (at most JSON_BODY_LIMIT bytes).
        self.jsonBody = io.BytesIO()
        self.route: Route | None = None
        self._params: dict[str, str] = {}
        self._matchError: HttpError | None = None
        self._early: HttpError | None = None
        self._closed = False  # answered early: nothing more is done
        self._call: Call | None = None
        self._static = False  # a file of the web interface (static_site.py)
        self._receivedWaiters: list[defer.Deferred[None]] = []
        self.notifyFinish().addErrback(self._lost)

    def _lost(self, reason: Failure) -> None:
        self.gone = True
        if self.body is not None:
            self.body.connectionLost(reason)
        waiters, self._receivedWaiters = self._receivedWaiters, []
        for d in waiters:
            d.errback(TemporaryError("connection lost before the whole request arrived"))

    # -- as the request arrives

    def gotLength(self, length: int | None) -> None:
        # The body never goes to twisted.web's content file: routes read
        # JSON bodies from memory (bounded) or stream them.
        self.content = io.BytesIO()
        channel: Any = self.channel
        method, target = _pending_request_line(channel)
        path, _ = split_target(target)
        try:
            self.route, self._params = channel.site.router.match(method, path)
        except HttpError as e:
            if method in _STATIC and is_static_path(path):
                self._static = True
                self.route = _STATIC[method]
            else:
                self._matchError = e
                self.route = _unknown_route(method)
        if self.route.stream and self._matchError is None:
            self.body = RequestBody(self, length)
        elif length is not None and length > JSON_BODY_LIMIT:
            self._early = _too_large()

    def headersDone(self) -> None:
        """(L{WebChannel}) Every header is in: refuse now, or start a
        streaming route's handler."""
        if self._early is not None:
            self._start(self._early)
        elif self.body is not None:
            self._start(None)

    def handleContentChunk(self, data: bytes) -> None:
        if self._closed:
            return
        if self.body is not None:
            self.body.dataReceived(data)
            return
        if self.jsonBody.tell() + len(data) > JSON_BODY_LIMIT:
            self._start(_too_large())
            return
        self.jsonBody.write(data)

    def _start(self, early: HttpError | None) -> None:
        """Dispatch before the body is complete (a refusal, or a streaming
        route)."""
        channel: Any = self.channel
        method, target = _pending_request_line(channel)
        call = self._makeCall(method, target, early)
        self._call = call
        channel.site.dispatcher.run(call, call.early)

    def _makeCall(self, method: str, target: bytes, early: HttpError | None) -> Call:
        path, query = split_target(target)
        site = self.channelRef.site
        assert self.route is not None
        early = early or self._matchError
        try:
            call = Call(site, self, self.route, self._params, method, path, query)
        except HttpError as e:
            call = Call(site, self, self.route, self._params, method, path, "")
            early = early or e
        call.early = early
        call.body = self.body
        return call

    def process(self) -> None:
        """The whole request is in (twisted.web calls this)."""
        channel: Any = self.channel
        site: WebSite = channel.site
        self.site = site
        if self._closed:
            return
        self.received = True
        if self._static:
            # The web interface's own files (netshare/web/static_site.py):
            # served, not recorded.  They are not commands (a page load is a
            # dozen of them, all before the page can sign in) and would use
            # up the address's budget of pre-login history entries, which is
            # there for failed logins.
            server.Request.process(self)
            return
        self.setHeader(b"date", http.datetimeToString())
        self.setHeader(b"cache-control", b"no-store")
        self.setHeader(b"x-content-type-options", b"nosniff")
        if self._call is not None:  # a streaming route: its handler runs already
            if self.body is not None:
                self.body.bodyEnded()
            waiters, self._receivedWaiters = self._receivedWaiters, []
            for d in waiters:
                d.callback(None)
            return
        call = self._makeCall(self.method.decode("latin-1"), self.uri, None)
        call.content = self.jsonBody.getvalue()
        self._call = call
        site.dispatcher.run(call, call.early)

    def whenReceived(self) -> defer.Deferred[None]:
        """Fires once the whole request is in (at once if it is)."""
        if self.received:
            return defer.succeed(None)
        if self.gone:
            return defer.fail(TemporaryError("connection lost"))
        d: defer.Deferred[None] = defer.Deferred()
        self._receivedWaiters.append(d)
        return d

    def rawRespond(self, status: int, body: Any, headers: list[tuple[str, str]]) -> None:
        """Answer a request whose body was not read (refused early) and
        close the connection."""
        if self._closed or self.gone:
            return
        self._closed = True
        channel: Any = self.channel
        data = raw_response(status, body, headers)
        self.sentBytes += len(data)
        channel.countOut(len(data))
        channel.transport.write(data)
        channel.loseConnection()

    def write(self, data: bytes) -> None:
        self.sentBytes += len(data)
        super().write(data)


def _pending_request_line(channel: Any) -> tuple[str, bytes]:
    """
    The method and target of the request whose headers the channel has
    just read.  twisted.web gives them to the request only once its body is
    in; a route must be known before (to bound or stream the body), so
    they are read from the channel, which keeps them from the request line
    until then.
    """
    method = getattr(channel, "_command", b"") or b""
    target = getattr(channel, "_path", b"") or b""
    return method.decode("latin-1"), target


def _too_large() -> HttpError:
    return HttpError(413, 552, "request body over %d KiB" % (JSON_BODY_LIMIT // 1024,))


class WebChannel(http.HTTPChannel):
    """
    One HTTP connection: counted and capped like a line connection,
    closed in order at shutdown, and (while it carries an event stream)
    closed when the stream's account is removed.

    @ivar account: the account of the event stream on this connection
        (what L{netshare.services.accounts.AccountWatch} looks at), or None.
    @ivar stream: that event stream (netshare/web/ttweet.py), or None.
    @ivar unrecorded: requests without a session over the history's rate.
    """

    log = Logger()
    site: WebSite
    transport: Any

    def __init__(self) -> None:
        super().__init__()
        self.account: Any = None
        self.stream: Any = None
        self.unrecorded = 0
        self.host = "-"
        self.peer = "-"
        self.refused = False
        self._lostWaiters: list[defer.Deferred[None]] = []
        self._isLost = False

    @property
    def user(self) -> str | None:
        return self.account.name if self.account is not None else None

    def connectionMade(self) -> None:
        super().connectionMade()
        peer = self.transport.getPeer()
        self.host = getattr(peer, "host", "?")
        self.peer = "%s:%s" % (self.host, getattr(peer, "port", "?"))
        site = self.site
        site.stats.connections_total += 1
        refusal = site.connections.admit(self, self.host)
        if refusal:
            self.refused = True
            data = raw_response(503, {"code": 421, "error": refusal}, [("Retry-After", "1")])
            self.transport.write(data)
            self.loseConnection()
            self.log.warn(
                "refused {peer}: {reason}", service="web", peer=self.peer, reason=refusal
            )

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        super().connectionLost(reason)
        self._isLost = True
        site = self.site
        site.connections.release(self)
        if not self.refused:
            site.runtime.history.recordUnrecorded(
                ("web", id(self)), self.unrecorded, now_ms(), "web", self.peer
            )
        waiters, self._lostWaiters = self._lostWaiters, []
        for d in waiters:
            d.callback(None)

    def dataReceived(self, data: bytes) -> None:
        if self.refused:
            return
        self.site.stats.bytes_in += len(data)
        super().dataReceived(data)

    def allHeadersReceived(self) -> None:
        request = self.requests[-1]
        super().allHeadersReceived()
        request.headersDone()

    # -- output, counted

    def countOut(self, n: int) -> None:
        self.site.stats.bytes_out += n

    def writeHeaders(self, version: bytes, code: bytes, reason: bytes, headers: Any) -> None:
        n = len(version) + len(code) + len(reason) + 4
        for name, values in headers.getAllRawHeaders():
            for value in values:
                n += len(name) + len(value) + 4
        self.countOut(n + 2)
        super().writeHeaders(version, code, reason, headers)

    def write(self, data: bytes) -> None:
        self.countOut(len(data))
        super().write(data)

    def writeSequence(self, iovec: Any) -> None:
        self.countOut(sum(len(b) for b in iovec))
        super().writeSequence(iovec)

    # -- closing

    def whenLost(self) -> defer.Deferred[None]:
        if self._isLost:
            return defer.succeed(None)
        d: defer.Deferred[None] = defer.Deferred()
        self._lostWaiters.append(d)
        return d

    def beginShutdown(self) -> defer.Deferred[None]:
        """
        (L{ConnectionLimits.shutdown}) The server stops: an event stream
        ends now, a request in progress is answered first, an idle
        connection closes at once.  Fires once the connection is closed.
        """
        if self.stream is not None:
            self.stream.close()
            self.loseConnection()
        elif not self.requests:
            self.loseConnection()
        else:
            self.persistent = False  # closed after the response in progress
        return self.whenLost()

    def accountRemoved(self) -> None:
        """The event stream's account was removed: end it, close."""
        if self.stream is not None:
            self.stream.accountRemoved()
        self.loseConnection()


class WebSite(server.Site):
    """
    See the module docstring.

    @ivar router: every route (L{Router}).
    @ivar stats: this listener's counters, like a line listener's.
    @ivar connections: the open connections (L{ConnectionLimits}).
    @ivar commandObservers: called with (service, verb, status,
        duration_ms) for every request answered (the metrics, when the
        command log does not feed them; see netshare/web/metrics.py).
    """

    protocol = WebChannel  # type: ignore[assignment]  # plain HTTP/1.1: no HTTP/2 switch
    requestFactory = ApiRequest
    service = "web"
    logger = Logger()

    def __init__(self, runtime: Any, router: Router):
        cfg = runtime.config
        super().__init__(static_root(), timeout=cfg.idle_timeout or None, reactor=runtime.reactor)
        self.runtime = runtime
        self.router = router
        self.dispatcher = Dispatcher(self, router)
        self.displayTracebacks = False
        self.noisy = False
        self.stats = ServiceStats()
        self.connections = ConnectionLimits(
            runtime.reactor, cfg.max_connections, cfg.max_per_ip, self.stats
        )
        self.commandObservers: list[Any] = []
        self.startHooks: list[Any] = []

    def startFactory(self) -> None:
        # No access log (and none of its once-a-second timer): every request
        # goes to the command log and the history (commandDone).
        for hook in self.startHooks:
            hook()

    def stopFactory(self) -> None:
        pass

    def log(self, request: Any) -> None:
        """No access log: every request is in the command log and the history."""

    def shutdown(self, timeout: float) -> defer.Deferred[Any]:
        """Close every connection in order; abort stragglers after C{timeout}."""
        return self.connections.shutdown(timeout, "web")

    def commandDone(self, call: Call, status: int, duration_ms: float, nbytes: int) -> None:
        """A request was answered: the per-command log event and counters."""
        self.stats.commands += 1
        verb = call.route.verb
        commandLog = self.runtime.commandLog
        if commandLog is not None:
            duration = round(duration_ms, 3)
            commandLog.command(
                call.service, call.user or "-", call.peer, verb, status, duration, nbytes
            )
        else:
            self.logger.info(
                "{verb} -> {code}",
                service=call.service,
                user=call.user or "-",
                peer=call.peer,
                verb=verb,
                code=status,
                duration_ms=round(duration_ms, 3),
                bytes=nbytes,
            )
        for observe in self.commandObservers:
            observe(call.service, verb, status, duration_ms)


# -- operations: health and readiness


def healthz(call: Call) -> dict[str, Any]:
    """C{GET /healthz}: the process serves (no database involved)."""
    return {"status": "ok"}


async def readyz(call: Call) -> Any:
    """C{GET /readyz}: the database answers (503 when it does not)."""
    try:
        await call.runtime.pool.run(_select_one)
    except Exception as e:
        text = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
        return Response(
            503,
            {"status": "unavailable", "code": 451, "error": text},
            [("Retry-After", "1")],
        )
    return {"status": "ok"}


def _select_one(conn: Any) -> Any:
    return conn.exec_driver_sql("SELECT 1").scalar()


def build_site(runtime: Any) -> WebSite:
    """The web listener's site over C{runtime}, registered as the
    C{web} listener factory (stats, account watch, orderly stop)."""
    router = Router()
    router.add("GET", "/healthz", healthz, service="web", auth=False)
    router.add("GET", "/readyz", readyz, service="web", auth=False)
    for module in MODULES:
        module.register(router, runtime)
    site = WebSite(runtime, router)
    for module in MODULES:
        attach = getattr(module, "attach", None)
        if attach is not None:
            attach(site, runtime)
    runtime.factories["web"] = site
    return site

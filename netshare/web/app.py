"""
The HTTP API's machinery (docs/http.md): routes, the request context a
handler gets (L{Call}), JSON in and out, errors mapped to HTTP statuses in
one table, request bodies (bounded, or streamed to a handler), and the
record of every request (history, command log, counters).

This is the web's counterpart of C{netshare/protocols/connection.py} and
C{line.py}: it parses and replies; every decision is the services' (the
same objects the line ports call).  A module of the API is a
C{register(router, runtime)} function adding its routes
(L{Router.add}); C{netshare/web/site.py} lists the modules.

A handler is C{handler(call) -> result} (an C{async def} or a plain
function) and returns:
 - a dict or a list: C{200} with it as JSON;
 - None: C{204};
 - a L{Response}: any status, body and headers;
 - a L{Streaming}: the handler writes the response itself (events, file
   content); the request is recorded when its C{done} fires.
It raises a L{NetshareError} (or L{HttpError}) for anything else: the one
funnel (L{Dispatcher.errorResponse}) turns it into the JSON error
C{{"code": <netshare code>, "error": "<text>"}} with the HTTP status of
L{STATUS}.  Anything else raised is a bug: logged once with its
traceback, answered C{500}.

Request bodies.  A route's body is read whole, up to L{JSON_BODY_LIMIT}
(more is C{413} at once, before the rest is read), unless the route is a
I{streaming} one (C{stream=True}): its handler then runs as soon as the
headers are in, with the body as L{RequestBody}, a push producer it hands
to a consumer (C{call.body.deliverTo(consumer)}) that gets the bytes as
they arrive, with backpressure; nothing is held beyond one read's worth
while no consumer is attached.
"""

from __future__ import annotations

import inspect
import io
import json
import re
import time
import urllib.parse
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import IConsumer, IPushProducer
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http import RESPONSES
from zope.interface import implementer

from netshare import wire
from netshare.deferreds import deferred
from netshare.errors import BadArguments, NetshareError, PermissionDenied, TemporaryError
from netshare.protocols.words import SECRET_OPTIONS, bounded
from netshare.services.accounts import Caller
from netshare.text import escape_unsafe
from netshare.wire import now_ms

#: The largest JSON request body; beyond it: 413 (code 552) before the rest is read.
JSON_BODY_LIMIT = 64 * 1024
#: A streamed body read ahead while no consumer is attached yet (then the
#: socket is paused).
STREAM_READ_AHEAD = 64 * 1024

#: The one table: netshare reply code (docs/protocol.md section 1.6) ->
#: HTTP status.  Anything else is a bug: 500.
STATUS: dict[int, int] = {
    500: 400,
    501: 400,
    553: 400,
    554: 400,
    530: 401,
    535: 401,
    531: 403,
    550: 404,
    555: 409,
    503: 409,  # bad sequence: the request conflicts with the current state
    552: 413,
    452: 507,
    429: 429,
    451: 503,
    421: 503,
    502: 503,  # a part of the server that is not running here (sessions)
}

#: Query parameters never recorded as they are (C{password=***}).
SECRET_PARAMS = frozenset(SECRET_OPTIONS) | {"token", "access_token", "csrf", "secret"}
#: Methods that change state (a cookie-authenticated one needs the CSRF header).
UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})

JSON_TYPE = b"application/json; charset=utf-8"
_RETRY_IN = re.compile(r"in (\d+) s")


class HttpError(NetshareError):
    """
    An error that is only HTTP's (405, 411, 413 for a body, 415): a status
    of its own besides the netshare code the JSON body carries.
    """

    def __init__(
        self, status: int, code: int, text: str, headers: list[tuple[str, str]] | None = None
    ):
        super().__init__(text, code)
        self.status = status
        self.headers = headers or []


def status_of(err: NetshareError) -> int:
    """The HTTP status of a netshare error (L{STATUS})."""
    if isinstance(err, HttpError):
        return err.status
    return STATUS.get(err.code, 500)


@dataclass
class Response:
    """
    A complete response: C{body} as JSON (None: no body), or bytes sent
    as they are with C{content_type}.
    """

    status: int = 200
    body: Any = None
    headers: list[tuple[str, str]] = field(default_factory=list)
    content_type: str | None = None


@dataclass
class Streaming:
    """
    The handler writes (or has started writing) the response itself.
    C{done} fires with the final status once it is over (the request is
    recorded then); None: record it now, with C{status}.
    """

    done: defer.Deferred[int] | None = None
    status: int = 200


Result = dict[str, Any] | list[Any] | Response | Streaming | None
Handler = Callable[["Call"], "Awaitable[Result] | Result"]


@dataclass(frozen=True)
class Route:
    """
    One endpoint: C{method} and C{template} (C{/api/people/{id}}: a
    C{{name}} segment matches one path segment, percent-decoded, given to
    the handler in C{call.params}).

    @ivar service: what the history records it under (C{files}, C{ttweet},
        C{personnel} or C{web}).
    @ivar auth: needs a session (Bearer or cookie; see netshare/web/auth.py).
    @ivar stream: the body is streamed to the handler (L{RequestBody}).
    """

    method: str
    template: str
    handler: Handler
    service: str
    auth: bool = True
    stream: bool = False

    @property
    def segments(self) -> tuple[str, ...]:
        return tuple(self.template.strip("/").split("/"))

    @property
    def verb(self) -> str:
        """How the command log and the metrics name it (bounded: the template)."""
        return "%s %s" % (self.method, self.template)


class Router:
    """
    Every route of the site, matched by method and path.

    @ivar authenticate: resolves a request's session (set by
        netshare/web/auth.py's C{register}); raises 401/403.
    """

    def __init__(self) -> None:
        self.routes: list[Route] = []
        #: C{authenticate(call, required)}: with C{required} False, a request
        #: without credentials passes as anonymous.
        self.authenticate: Callable[[Call, bool], Awaitable[None]] | None = None

    def add(
        self,
        method: str,
        template: str,
        handler: Handler,
        *,
        service: str,
        auth: bool = True,
        stream: bool = False,
    ) -> Route:
        route = Route(method.upper(), template, handler, service, auth, stream)
        for r in self.routes:
            if r.method == route.method and r.segments == route.segments:
                raise ValueError("route %s registered twice" % (route.verb,))
        self.routes.append(route)
        return route

    def match(self, method: str, path: str) -> tuple[Route, dict[str, str]]:
        """
        The route for C{method} and C{path} (percent-encoded, no query) and
        its path parameters.  C{HEAD} falls back to C{GET}.
        @raise HttpError: 404 (code 550) or 405 (code 500) or 400.
        """
        parts = path.strip("/").split("/") if path.startswith("/") else None
        if parts is None:
            raise HttpError(404, 550, "no such endpoint")
        allowed: list[str] = []
        found: dict[str, tuple[Route, dict[str, str]]] = {}
        for route in self.routes:
            params = _match(route.segments, parts)
            if params is None:
                continue
            allowed.append(route.method)
            found[route.method] = (route, params)
        if not found:
            raise HttpError(404, 550, "no such endpoint")
        hit = found.get(method) or (found.get("GET") if method == "HEAD" else None)
        if hit is None:
            allow = sorted(set(allowed) | ({"HEAD"} if "GET" in allowed else set()))
            raise HttpError(405, 500, "method not allowed", [("Allow", ", ".join(allow))])
        route, raw = hit
        params = {}
        for name, value in raw.items():
            try:
                params[name] = urllib.parse.unquote(value, errors="strict")
            except UnicodeDecodeError:
                raise HttpError(400, 501, "path is not UTF-8") from None
        return route, params


def _match(template: tuple[str, ...], parts: list[str]) -> dict[str, str] | None:
    if len(template) != len(parts):
        return None
    params = {}
    for t, p in zip(template, parts, strict=True):
        if t.startswith("{") and t.endswith("}"):
            if not p:
                return None
            params[t[1:-1]] = p
        elif t != p:
            return None
    return params


def split_target(target: bytes) -> tuple[str, str]:
    """A request target -> (path, query), as text (Latin-1: bytes as they came)."""
    text = target.decode("latin-1")
    path, _, query = text.partition("?")
    return path, query


def recorded_form(method: str, path: str, query: str) -> str:
    """
    A request as the history and the logs show it: C{METHOD /path?query},
    the path as sent (percent-encoded), the values of secret parameters
    (L{SECRET_PARAMS}) as C{***}, unsafe characters escaped, at most 1000
    characters.
    """
    shown = path[:800]
    if query:
        pairs = []
        for part in query.split("&")[:50]:
            key, sep, value = part.partition("=")
            name = urllib.parse.unquote_plus(key, errors="replace").lower()
            pairs.append(key + "=***" if sep and name in SECRET_PARAMS else part)
        shown += "?" + "&".join(pairs)
    return escape_unsafe("%s %s" % (method, shown))[:1000]


def whole_number(text: str | None, name: str, lo: int = 1, hi: int = 2**63 - 1) -> int:
    """A decimal integer from a path or a query (ASCII digits only), in
    [lo, hi]; 400 (code 501) otherwise, with the line protocol's texts."""
    if text is None or not (text.isascii() and text.isdigit()) or len(text) > 19:
        raise BadArguments("%s must be a whole number" % (name,))
    value = int(text)
    if not lo <= value <= hi:
        raise BadArguments("%s out of range" % (name,))
    return value


def parse_json(data: bytes) -> Any:
    """A JSON request body; 400 (code 501) if it is not JSON, not UTF-8, or
    holds text that is not (lone surrogates from C{\\ud800} escapes)."""
    try:
        value = json.loads(data)
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except (ValueError, UnicodeError, RecursionError):
        raise HttpError(400, 501, "the body must be JSON (UTF-8)") from None
    return value


@implementer(IPushProducer)
class RequestBody:
    """
    The body of a streaming route's request, as it arrives.

    Its handler hands it to a consumer (L{deliverTo}): the consumer gets
    every chunk with C{write}, and pauses and resumes this producer (the
    socket is then not read); what arrived before is given first.  Until
    then, at most L{STREAM_READ_AHEAD} bytes are kept and the socket is
    paused beyond that.

    @ivar length: the declared Content-Length, or None (chunked).
    @ivar count: bytes received so far.
    @ivar received: fires with C{count} once the last byte is in (the
        consumer's producer is unregistered first); fails if the
        connection is lost before.
    """

    def __init__(self, request: Any, length: int | None):
        self.request = request
        self.length = length
        self.count = 0
        self.complete = False
        self.received: defer.Deferred[int] = defer.Deferred()
        self._consumer: Any = None
        self._buffer: list[bytes] = []
        self._buffered = 0
        self._pausedByConsumer = False
        self._socketPaused = False

    @property
    def attached(self) -> bool:
        return self._consumer is not None

    def deliverTo(self, consumer: IConsumer) -> None:
        """Give the body to C{consumer} (once): what arrived, then the rest."""
        if self._consumer is not None:
            raise RuntimeError("the request body already has a consumer")
        self._consumer = consumer
        if not self.complete:
            consumer.registerProducer(self, True)
        buffered, self._buffer, self._buffered = self._buffer, [], 0
        for chunk in buffered:
            consumer.write(chunk)
        if self.complete:
            self._fire()
        elif not self._pausedByConsumer:
            self._resumeSocket()

    def discard(self) -> None:
        """Read the rest of the body and drop it (a handler that wants none)."""
        if self._consumer is None:
            self.deliverTo(_Discard())

    # IPushProducer, for the consumer

    def pauseProducing(self) -> None:
        self._pausedByConsumer = True
        self._pauseSocket()

    def resumeProducing(self) -> None:
        self._pausedByConsumer = False
        self._resumeSocket()

    def stopProducing(self) -> None:
        """The consumer gives up: the connection is closed (the rest of the
        body cannot be skipped on a persistent connection)."""
        transport = self._transport()
        if transport is not None and not self.complete:
            transport.loseConnection()

    # from the request

    def dataReceived(self, data: bytes) -> None:
        self.count += len(data)
        if self._consumer is not None:
            self._consumer.write(data)
            return
        self._buffer.append(data)
        self._buffered += len(data)
        if self._buffered >= STREAM_READ_AHEAD:
            self._pauseSocket()

    def bodyEnded(self) -> None:
        self.complete = True
        self._resumeSocket()
        if self._consumer is not None:
            self._fire()

    def connectionLost(self, reason: Failure) -> None:
        if not self.received.called:
            self.complete = True
            self.received.errback(reason)

    def _fire(self) -> None:
        if self.received.called:
            return
        try:
            self._consumer.unregisterProducer()
        finally:
            self.received.callback(self.count)

    def _transport(self) -> Any:
        channel = getattr(self.request, "channel", None)
        return getattr(channel, "transport", None)

    def _pauseSocket(self) -> None:
        transport = self._transport()
        if not self._socketPaused and transport is not None and not self.complete:
            self._socketPaused = True
            transport.pauseProducing()

    def _resumeSocket(self) -> None:
        transport = self._transport()
        if self._socketPaused and transport is not None:
            self._socketPaused = False
            transport.resumeProducing()


@implementer(IConsumer)
class _Discard:
    def registerProducer(self, producer: Any, streaming: bool) -> None:
        pass

    def unregisterProducer(self) -> None:
        pass

    def write(self, data: bytes) -> None:
        pass


class Call:
    """
    One request, as its handler sees it.

    @ivar params: the path parameters, percent-decoded.
    @ivar account: the logged-in account (None for a public route, or
        until the session is resolved).
    @ivar token: the session token the request came with (None: public).
    @ivar viaCookie: the session came in the cookie (not Bearer).
    @ivar body: a streaming route's L{RequestBody}; None otherwise.
    @ivar content: a non-streaming route's body (bytes, possibly empty).
    """

    def __init__(
        self,
        site: Any,
        request: Any,
        route: Route,
        params: dict[str, str],
        method: str,
        path: str,
        query: str,
    ):
        self.site = site
        self.runtime = site.runtime
        self.request = request
        self.route = route
        self.params = params
        self.method = method
        self.path = path
        self.service = route.service
        self.recorded = recorded_form(method, path, query)
        self.started = time.monotonic()
        self.ts_ms = now_ms()
        self.account: Any = None
        self.token: str | None = None
        self.viaCookie = False
        self.body: RequestBody | None = None
        self.content = b""
        self.journaled: int | None = None
        #: An error to answer at once (a refused body, a bad query string).
        self.early: HttpError | None = None
        #: Response headers every answer gets (a cleared cookie after a bad one).
        self.extraHeaders: list[tuple[str, str]] = []
        address = request.getClientAddress()
        self.host: str = getattr(address, "host", None) or "-"
        self.peer = "%s:%s" % (self.host, getattr(address, "port", "?"))
        try:
            self._query = urllib.parse.parse_qs(
                query, keep_blank_values=True, errors="strict", max_num_fields=100
            )
        except (UnicodeDecodeError, ValueError):
            raise HttpError(400, 501, "bad query string") from None

    @property
    def config(self) -> Any:
        return self.runtime.config

    @property
    def user(self) -> str | None:
        return self.account.name if self.account is not None else None

    @property
    def caller(self) -> Caller:
        """The account and address, as the services take them."""
        return Caller(self.account, self.host)

    @property
    def is_admin(self) -> bool:
        return self.account is not None and self.account.is_admin

    def arg(self, name: str, default: str | None = None) -> str | None:
        """A query parameter (400 if given twice)."""
        values = self._query.get(name)
        if not values:
            return default
        if len(values) > 1:
            raise HttpError(400, 501, "parameter %s given twice" % (name,))
        return values[0]

    def header(self, name: str) -> str | None:
        value = self.request.getHeader(name)
        if value is None:
            return None
        return value.decode("latin-1") if isinstance(value, bytes) else str(value)

    def json(self) -> Any:
        return parse_json(self.content)

    def object(self) -> dict[str, Any]:
        """The body as a JSON object (400 otherwise)."""
        value = self.json()
        if not isinstance(value, dict):
            raise HttpError(400, 501, "the body must be a JSON object")
        return value

    def requireAdmin(self, what: str = "this") -> None:
        if not self.is_admin:
            raise PermissionDenied("permission denied: %s needs admin" % (what,))

    def app(self, name: str) -> Any:
        """A service object (files, ttweet, personnel); 503 if that
        service does not run in this server."""
        app = self.runtime.apps.get(name)
        if app is None:
            raise TemporaryError("the %s service is not running on this server" % (name,))
        return app

    def journal(self, status: int) -> dict[str, Any]:
        """
        This request's history row, for a write to insert in its own
        transaction (as a line command's C{journal}), recorded with
        C{status} (the HTTP status of success).  If the request ends with
        another status, it is recorded as usual instead.
        """
        self.journaled = status
        return self.runtime.history.row(
            self.ts_ms,
            self.service,
            self.user,
            self.peer,
            self.recorded,
            status,
            self.account.id if self.account is not None else None,
        )


class Dispatcher:
    """Runs a L{Call}: session, handler, response, record."""

    log = Logger()

    def __init__(self, site: Any, router: Router):
        self.site = site
        self.router = router

    @deferred
    async def run(self, call: Call, early: HttpError | None = None) -> None:
        request = call.request
        result: Any
        authenticate = self.router.authenticate
        assert authenticate is not None, "no authenticator registered"
        try:
            if early is not None:
                if request.received:
                    # A 404 or 405 is recorded as the account's when it came
                    # with a session (and a bad session is answered first).
                    await authenticate(call, False)
                raise early
            if call.route.auth:
                await authenticate(call, True)
            result = call.route.handler(call)
            if inspect.isawaitable(result):
                result = await result
            if call.body is not None:
                call.body.discard()
                try:
                    await call.body.received
                except Exception:
                    raise TemporaryError("connection lost before the whole body arrived") from None
                await request.whenReceived()
        except Exception:
            result = self.errorResponse(Failure(), call)
            if call.body is not None:
                # Nobody reads the body now: losing the connection is expected.
                call.body.received.addErrback(lambda _: None)
        if isinstance(result, Streaming):
            status = result.status
            if result.done is None:
                self.record(call, status)
                return
            try:
                status = await result.done
            except Exception:
                self.log.failure("streaming {verb}", verb=call.route.verb)
            self.record(call, status)
            return
        response = result if isinstance(result, Response) else _response(result)
        self.respond(call, response)

    def errorResponse(self, failure: Failure, call: Call | None) -> Response:
        """The one place an exception becomes an HTTP answer."""
        err = failure.value
        if not isinstance(err, NetshareError):
            self.log.failure(
                "internal error in {verb}",
                failure,
                verb=call.route.verb if call is not None else "-",
                peer=call.peer if call is not None else "-",
                user=call.user if call is not None else None,
            )
            return Response(500, {"code": 451, "error": "internal error"})
        status = status_of(err)
        headers = list(getattr(err, "headers", []))
        if status == 429:
            m = _RETRY_IN.search(err.text)
            headers.append(("Retry-After", m.group(1) if m else "1"))
        elif status == 503:
            headers.append(("Retry-After", "1"))
        elif status == 401:
            headers.append(("WWW-Authenticate", 'Bearer realm="netshare"'))
        return Response(status, {"code": err.code, "error": err.text}, headers)

    def respond(self, call: Call, response: Response) -> None:
        """Write C{response} (unless the client is gone) and record it."""
        request = call.request
        headers = response.headers + call.extraHeaders
        if not request.gone:
            if request.received:
                write_response(request, response, headers)
            else:
                # A streaming route refused before its body was read: answer
                # now and close (the rest of the body cannot be skipped).
                request.rawRespond(response.status, response.body, headers)
        self.record(call, response.status)

    def record(self, call: Call, status: int) -> None:
        """The history entry (unless written with the request's write), the
        per-command log event, the counters."""
        runtime = self.site.runtime
        history = runtime.history
        user = call.user
        if call.journaled == status:
            pass
        elif call.account is not None:
            history.record(
                call.ts_ms, call.service, user, call.peer, call.recorded, status, call.account.id
            )
        else:
            channel = call.request.channelRef
            if history.admitPrelogin(("web", id(channel)), call.host):
                history.record(
                    call.ts_ms, call.service, None, call.peer, bounded(call.recorded), status
                )
            elif channel is not None:
                channel.unrecorded += 1
        duration = (time.monotonic() - call.started) * 1000.0
        nbytes = call.request.sentBytes
        self.site.commandDone(call, status, duration, nbytes)


def _response(result: Any) -> Response:
    if result is None:
        return Response(204)
    if isinstance(result, (dict, list)):
        return Response(200, result)
    raise TypeError("a handler returned %r" % (type(result),))


def json_bytes(body: Any) -> bytes:
    return wire.dumps(body).encode("utf-8") + b"\n"


def write_response(request: Any, response: Response, headers: list[tuple[str, str]]) -> None:
    """A whole response: status, headers, the body (JSON, raw, or none)."""
    status, body = response.status, response.body
    request.setResponseCode(status)
    for name, value in headers:
        request.responseHeaders.addRawHeader(name.encode("latin-1"), value.encode("latin-1"))
    if body is not None and status != 204:
        if isinstance(body, bytes):
            data = body
            request.setHeader(b"content-type", (response.content_type or "").encode("latin-1"))
        else:
            data = json_bytes(body)
            request.setHeader(b"content-type", JSON_TYPE)
        request.setHeader(b"content-length", b"%d" % (len(data),))
        request.write(data)
    elif status != 204:
        request.setHeader(b"content-length", b"0")
    request.finish()


def raw_response(status: int, body: Any, headers: list[tuple[str, str]]) -> bytes:
    """The bytes of a complete response that closes the connection (for
    requests refused before their body was read)."""
    data = json_bytes(body) if body is not None else b""
    reason = RESPONSES.get(status, b"Error")
    lines = [b"HTTP/1.1 %d %s" % (status, reason)]
    for name, value in headers:
        lines.append(name.encode("latin-1") + b": " + value.encode("latin-1"))
    if body is not None:
        lines.append(b"Content-Type: " + JSON_TYPE)
    lines.append(b"Content-Length: %d" % (len(data),))
    lines.append(b"Connection: close")
    lines.append(b"Cache-Control: no-store")
    return b"\r\n".join(lines) + b"\r\n\r\n" + data


def empty_content() -> io.BytesIO:
    return io.BytesIO()

"""
Sessions over HTTP (docs/http.md, Authentication): log in, find the
session of every request, CSRF for browsers, list and end sessions.

There is one session mechanism: the tokens of
L{netshare.services.sessions.SessionService}, the same the client
programs get with C{SESSION NEW} and log in with C{TOKEN}.  A request
carries its token as C{Authorization: Bearer <token>}, or (a browser) in
the HttpOnly cookie L{COOKIE} set at login.  A cookie is sent by the
browser whoever made the page, so a state-changing request authenticated
by it must also carry C{X-CSRF-Token}: a value derived from the token
(L{csrf_for}), which a page of another origin cannot read; a Bearer
request needs none (no browser adds that header on its own).

Logging in checks the password with
L{AccountService.authenticate<netshare.services.accounts.AccountService.authenticate>},
the client's address as the source: the same throttling and lockout as a
C{LOGIN} on any port, and the same pause (C{--login-failure-delay})
before a C{401}.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

from twisted.internet import task

from netshare.errors import BadArguments, BadCredentials, LoginRequired, PermissionDenied
from netshare.services.accounts import Caller
from netshare.services.sessions import parse_token
from netshare.web.app import UNSAFE_METHODS, Call, HttpError, Response, Router, whole_number

#: The session cookie's name.
COOKIE = "netshare_session"
#: The header a cookie-authenticated state-changing request must carry.
CSRF_HEADER = "X-CSRF-Token"


def csrf_for(token: str) -> str:
    """
    The CSRF token of a session: derived from the session token, so it
    needs no storage and holds across restarts, and only a page that was
    told it at login (or by C{GET /api/session}) can send it (the session
    token itself is in an HttpOnly cookie no script can read).
    """
    return hashlib.sha256(b"netshare-csrf:" + token.encode("ascii", "replace")).hexdigest()


def _sessions(call: Call) -> Any:
    sessions = call.runtime.sessions
    if sessions is None:
        raise HttpError(503, 502, "sessions are not available here")
    return sessions


def _cookie(call: Call, token: str) -> str:
    secure = "; Secure" if call.request.isSecure() else ""
    return "%s=%s; Path=/; HttpOnly; SameSite=Strict%s" % (COOKIE, token, secure)


def _clearedCookie(call: Call) -> str:
    secure = "; Secure" if call.request.isSecure() else ""
    return "%s=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0%s" % (COOKIE, secure)


async def authenticate(call: Call, required: bool = True) -> None:
    """
    Find the request's session (L{netshare.web.app.Router.authenticate}):
    Bearer first, else the cookie; 401 (code 530) without either (unless
    not C{required}: then the request stays anonymous), 401 (code 535) for
    a bad or expired one, 403 (code 531) for a cookie request that changes
    state without the right CSRF header.
    """
    header = call.header("Authorization")
    if header is None and not required and not call.request.getCookie(COOKIE.encode("ascii")):
        return
    if header is not None:
        scheme, _, token = header.strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise LoginRequired("use Authorization: Bearer <session token>")
        viaCookie = False
    else:
        cookie = call.request.getCookie(COOKIE.encode("ascii"))
        if not cookie:
            raise LoginRequired("login required: POST /api/session, then send the token")
        token = cookie.decode("latin-1")
        viaCookie = True
    try:
        account = await _sessions(call).login(token)
    except BadCredentials:
        call.site.stats.login_failures += 1
        if viaCookie:
            call.extraHeaders.append(("Set-Cookie", _clearedCookie(call)))
        raise
    if viaCookie and call.method in UNSAFE_METHODS:
        sent = call.header(CSRF_HEADER) or ""
        if not hmac.compare_digest(sent.encode("latin-1"), csrf_for(token).encode("ascii")):
            raise PermissionDenied("missing or wrong CSRF token")
    call.account = account
    call.token = token
    call.viaCookie = viaCookie


def _text(body: dict[str, Any], name: str) -> str:
    value = body.get(name)
    if not isinstance(value, str):
        raise BadArguments("%s must be a string" % (name,))
    return value


async def login(call: Call) -> Response:
    """C{POST /api/session}: a session for a name and a password."""
    body = call.object()
    name, password = _text(body, "user"), _text(body, "password")
    accounts = call.runtime.accounts
    sessions = _sessions(call)
    try:
        account = await accounts.authenticate(name, password, source=call.host)
    except BadCredentials:
        call.site.stats.login_failures += 1
        delay = call.config.login_failure_delay
        if delay:
            await task.deferLater(call.runtime.reactor, delay, lambda: None)
        raise
    call.account = account  # recorded as this account's from here on
    made = await sessions.new(Caller(account, call.host), label="web")
    token = str(made["token"])
    out = dict(made)
    out.update(user=account.name, role=account.role, csrf=csrf_for(token))
    return Response(201, out, [("Set-Cookie", _cookie(call, token))])


def whoami(call: Call) -> dict[str, Any]:
    """C{GET /api/session}: who the session is (and its CSRF token, for a cookie)."""
    out: dict[str, Any] = {"user": call.account.name, "role": call.account.role}
    if call.viaCookie and call.token is not None:
        out["csrf"] = csrf_for(call.token)
    return out


async def logout(call: Call) -> Response:
    """C{DELETE /api/session}: end this session; the cookie goes too."""
    assert call.token is not None
    parsed = parse_token(call.token)
    assert parsed is not None  # it logged in
    await _sessions(call).revoke(call.caller, parsed[0])
    return Response(204, None, [("Set-Cookie", _clearedCookie(call))])


async def list_sessions(call: Call) -> dict[str, Any]:
    """C{GET /api/sessions[?user=NAME|*]}: own sessions (an admin: anyone's)."""
    found = await _sessions(call).list(call.caller, call.arg("user"))
    return {"items": [s.to_wire() for s in found]}


async def revoke_session(call: Call) -> None:
    """C{DELETE /api/sessions/{id}}: end one session (own; an admin: any)."""
    await _sessions(call).revoke(call.caller, whole_number(call.params["id"], "id"))


def register(router: Router, runtime: Any) -> None:
    router.authenticate = authenticate
    router.add("POST", "/api/session", login, service="web", auth=False)
    router.add("GET", "/api/session", whoami, service="web")
    router.add("DELETE", "/api/session", logout, service="web")
    router.add("GET", "/api/sessions", list_sessions, service="web")
    router.add("DELETE", "/api/sessions/{id}", revoke_session, service="web")

"""
The web interface's files: C{/} is C{index.html}, C{/static/...}
the scripts, styles and images it loads, all from the package data in
C{netshare/web/static/}.

The files are read once, when the site is built (before the reactor runs):
they are a few tens of KiB, and serving them from memory keeps the
reactor off the disk.  Only files found under that directory are served,
by exact relative path (no directory listing, no dot files, nothing
outside it), each with its own content type (C{text/javascript} for
modules: browsers refuse a module of any other type under C{nosniff}).

Every answer carries the headers a strict policy needs: the interface has
no inline script or style and talks only to its own origin, so
C{Content-Security-Policy} allows C{'self'} and nothing else (C{data:}
images only), and the page may not be framed.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from importlib import resources
from typing import Any

from twisted.web import resource

#: The directory the files come from (package data of netshare.web).
STATIC_DIR = "static"

CONTENT_SECURITY_POLICY = (
    "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)

#: Headers on every answer of this module (files and refusals alike).
SECURITY_HEADERS: tuple[tuple[bytes, bytes], ...] = (
    (b"content-security-policy", CONTENT_SECURITY_POLICY.encode("ascii")),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
    (b"cross-origin-opener-policy", b"same-origin"),
)

#: Content types by extension; a file of any other extension is not served.
CONTENT_TYPES = {
    ".html": b"text/html; charset=utf-8",
    ".js": b"text/javascript; charset=utf-8",
    ".css": b"text/css; charset=utf-8",
    ".svg": b"image/svg+xml",
    ".png": b"image/png",
    ".ico": b"image/x-icon",
    ".txt": b"text/plain; charset=utf-8",
}


@dataclass(frozen=True)
class Asset:
    """One file, as served."""

    body: bytes
    content_type: bytes
    etag: bytes


def load_assets(directory: str | None = None) -> dict[str, Asset]:
    """
    Every servable file under C{directory} (default: the package's
    C{static/}), by its relative path with C{/} separators.
    """
    if directory is None:
        directory = str(resources.files("netshare.web").joinpath(STATIC_DIR))
    assets: dict[str, Asset] = {}
    for base, dirs, names in os.walk(directory):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(names):
            ext = os.path.splitext(name)[1].lower()
            if name.startswith(".") or ext not in CONTENT_TYPES:
                continue
            path = os.path.join(base, name)
            with open(path, "rb") as f:
                body = f.read()
            rel = os.path.relpath(path, directory).replace(os.sep, "/")
            etag = b'"%s"' % hashlib.sha256(body).hexdigest()[:32].encode("ascii")
            assets[rel] = Asset(body, CONTENT_TYPES[ext], etag)
    return assets


def _secure(request: Any) -> None:
    for name, value in SECURITY_HEADERS:
        request.setHeader(name, value)


def _refuse(request: Any, status: int, text: bytes) -> bytes:
    """A plain-text refusal (404, 405) with the same headers."""
    _secure(request)
    request.setResponseCode(status)
    request.setHeader(b"content-type", b"text/plain; charset=utf-8")
    request.setHeader(b"cache-control", b"no-store")
    if status == 405:
        request.setHeader(b"allow", b"GET, HEAD")
    body = text + b"\n"
    request.setHeader(b"content-length", b"%d" % (len(body),))
    return b"" if request.method == b"HEAD" else body


def _serve(request: Any, asset: Asset | None) -> bytes:
    """One file: 200, or 304 when the browser holds this version."""
    if request.method not in (b"GET", b"HEAD"):
        return _refuse(request, 405, b"method not allowed")
    if asset is None:
        return _refuse(request, 404, b"not found")
    _secure(request)
    request.setHeader(b"content-type", asset.content_type)
    # Revalidated on every load: the files change with the server, and a
    # 304 costs one small round trip.
    request.setHeader(b"cache-control", b"no-cache")
    request.setHeader(b"etag", asset.etag)
    match = request.getHeader(b"if-none-match")
    if isinstance(match, str):
        match = match.encode("latin-1")
    if match is not None and asset.etag in [t.strip() for t in match.split(b",")]:
        request.setResponseCode(304)
        return b""
    request.setHeader(b"content-length", b"%d" % (len(asset.body),))
    return b"" if request.method == b"HEAD" else asset.body


class StaticFiles(resource.Resource):
    """C{/static/<path>}: one of the loaded files, by exact path."""

    isLeaf = True

    def __init__(self, assets: dict[str, Asset]) -> None:
        super().__init__()
        self.assets = assets

    def render(self, request: Any) -> bytes:
        try:
            rel = "/".join(p.decode("utf-8") for p in request.postpath)
        except UnicodeDecodeError:
            rel = ""
        return _serve(request, self.assets.get(rel))


class Index(resource.Resource):
    """C{/}: the single page (its routes are in the URL's fragment)."""

    isLeaf = True

    def __init__(self, asset: Asset | None) -> None:
        super().__init__()
        self.asset = asset

    def render(self, request: Any) -> bytes:
        return _serve(request, self.asset)


class StaticRoot(resource.Resource):
    """
    The site's resource tree: C{/} and C{/static/...}.  The site routes
    every other path itself (netshare/web/site.py, L{is_static_path}); one
    that reaches this tree anyway is a 404 with the same headers.
    """

    def __init__(self, assets: dict[str, Asset]) -> None:
        super().__init__()
        self.putChild(b"", Index(assets.get("index.html")))
        self.putChild(b"static", StaticFiles(assets))

    def getChild(self, path: bytes, request: Any) -> resource.Resource:
        return _NotFound()

    def render(self, request: Any) -> bytes:
        # Reached only for a request without a path ("GET  HTTP/1.1").
        return _refuse(request, 404, b"not found")


class _NotFound(resource.Resource):
    isLeaf = True

    def render(self, request: Any) -> bytes:
        return _refuse(request, 404, b"not found")


def static_root(directory: str | None = None) -> StaticRoot:
    """
    The resource for C{/}: the interface's files from C{directory}
    (default: the package's C{static/}).
    """
    return StaticRoot(load_assets(directory))


def is_static_path(path: str) -> bool:
    """
    Whether a request path (as sent, percent-encoded, no query) is the
    interface's (served by L{static_root}'s resource tree) rather than the
    API's (routed).
    """
    return path == "/" or path.startswith("/static/")

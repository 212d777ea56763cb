"""
The C{web} listener's site: the HTTP API (C{/api/...}), the operations
endpoints (C{/healthz}, C{/readyz}, C{/metrics}) and the web interface,
over the same runtime and service objects as the line ports.
"""

from __future__ import annotations

from typing import Any

from twisted.web import resource, server
from twisted.web.iweb import IRequest

from netshare.deferreds import deferred


class Healthz(resource.Resource):
    """C{GET /healthz}: the process serves (no database involved)."""

    isLeaf = True

    def render_GET(self, request: IRequest) -> bytes:
        request.setHeader(b"content-type", b"application/json")
        return b'{"status": "ok"}\n'


class Readyz(resource.Resource):
    """C{GET /readyz}: the database answers (503 when it does not)."""

    isLeaf = True

    def __init__(self, runtime: Any) -> None:
        super().__init__()
        self.runtime = runtime

    def render_GET(self, request: IRequest) -> Any:
        self._check(request)
        return server.NOT_DONE_YET

    @deferred
    async def _check(self, request: Any) -> None:
        request.setHeader(b"content-type", b"application/json")
        try:
            await self.runtime.pool.run(lambda conn: conn.exec_driver_sql("SELECT 1").scalar())
        except Exception as e:
            request.setResponseCode(503)
            body = b'{"status": "unavailable", "error": "%s"}\n' % (
                str(e).splitlines()[0][:200].replace('"', "'").encode("utf-8", "replace")
                if str(e)
                else type(e).__name__.encode()
            )
        else:
            body = b'{"status": "ok"}\n'
        if not request.finished and not getattr(request, "_disconnected", False):
            request.write(body)
            request.finish()


def build_site(runtime: Any) -> server.Site:
    root = resource.Resource()
    root.putChild(b"healthz", Healthz())
    root.putChild(b"readyz", Readyz(runtime))
    site = server.Site(root)
    site.displayTracebacks = False
    site.noisy = False
    return site

"""
C{GET /api/openapi.yaml}: the OpenAPI 3.1 document of the HTTP API.

The document is package data (C{netshare/web/openapi.yaml}, the canonical
copy; C{docs/openapi.yaml} is the same file for readers of the repository,
and C{tests/test_web_schema.py} checks that they do not differ).  It is
read once, when the site is built, and served as it is.
"""

from __future__ import annotations

from importlib import resources
from typing import Any

from netshare.web.app import Call, Response, Router

CONTENT_TYPE = "application/yaml; charset=utf-8"


def document() -> bytes:
    """The OpenAPI document, as shipped with the package."""
    return resources.files("netshare.web").joinpath("openapi.yaml").read_bytes()


def register(router: Router, runtime: Any) -> None:
    data = document()

    def serve(call: Call) -> Response:
        return Response(200, data, content_type=CONTENT_TYPE)

    router.add("GET", "/api/openapi.yaml", serve, service="web", auth=False)

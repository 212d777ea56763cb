"""
The OpenAPI document (netshare/web/openapi.yaml, also docs/openapi.yaml and
C{GET /api/openapi.yaml}) against the server: it describes every route,
and schemathesis, generating a bounded number of requests per operation
with an admin's token, finds no server error and no response that
violates the document.
"""

import os

import pytest
import schemathesis
import yaml
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from netshare.web.openapi import document
from tests.support import ROOT, ServerProcess
from tests.web_support import login, register

#: Per operation: enough to reach the error paths, bounded in time.
MAX_EXAMPLES = 10
#: Not fuzzed: the event stream never ends (tests/test_web_sse.py reads
#: it), and revoking sessions would revoke the fuzzer's own
#: (tests/test_web_api.py covers both).
SKIP = {
    ("GET", "/api/events"),
    ("DELETE", "/api/session"),
    ("DELETE", "/api/sessions/{id}"),
}
#: Routes of the files module (netshare/web/files.py): in the document,
#: served once that module is registered.
FILES = {
    ("GET", "/api/files"),
    ("GET", "/api/quota"),
    ("GET", "/api/files/{name}/meta"),
    ("GET", "/api/files/{name}"),
    ("HEAD", "/api/files/{name}"),
    ("PUT", "/api/files/{name}"),
    ("DELETE", "/api/files/{name}"),
}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    s = ServerProcess(
        tmp_path_factory.mktemp("webschema") / "data",
        web=True,
        extra_args=[
            "--login-failure-delay",
            "0",
            "--flood-burst",
            "100000",
            "--flood-address-burst",
            "100000",
        ],
    )
    s.start()
    try:
        register(s, "fuzzed", "fuzzedpw")
        yield s
    finally:
        s.terminate()
        s.kill()


def documented_operations():
    doc = yaml.safe_load(document())
    ops = set()
    for path, item in doc["paths"].items():
        for method in item:
            if method in ("get", "put", "post", "delete", "patch", "head"):
                ops.add((method.upper(), path))
    return ops


def test_docs_copy_is_the_package_document():
    with open(os.path.join(ROOT, "docs", "openapi.yaml"), "rb") as f:
        assert f.read() == document(), "docs/openapi.yaml differs from netshare/web/openapi.yaml"


def test_every_route_is_documented():
    from types import SimpleNamespace

    from netshare.web import site
    from netshare.web.app import Router

    router = Router()
    router.add("GET", "/healthz", site.healthz, service="web", auth=False)
    router.add("GET", "/readyz", site.readyz, service="web", auth=False)
    runtime = SimpleNamespace(config=SimpleNamespace(metrics_public=False))
    for module in site.MODULES:
        module.register(router, runtime)
    served = {(r.method, r.template) for r in router.routes}
    documented = documented_operations()
    assert served - documented == set()
    assert documented - served <= FILES


def test_schemathesis_finds_no_server_error(server):
    port = server.ports["web"]
    base = "http://127.0.0.1:%d" % port
    token = login(port, "admin", "adminpw")[0].token
    schema = schemathesis.openapi.from_url(base + "/api/openapi.yaml", timeout=20)
    checks = [
        not_a_server_error,
        status_code_conformance,
        content_type_conformance,
        response_schema_conformance,
    ]
    headers = {"Authorization": "Bearer " + token}
    tested = []
    for result in schema.get_all_operations():
        operation = result.ok()
        key = (operation.method.upper(), operation.path)
        if key in SKIP:
            continue
        tested.append(key)

        @given(case=operation.as_strategy())
        @settings(
            max_examples=MAX_EXAMPLES,
            deadline=None,
            database=None,
            derandomize=True,
            suppress_health_check=list(HealthCheck),
        )
        def run(case):
            case.call_and_validate(base_url=base, headers=headers, checks=checks, timeout=20)

        run()
    # (schemathesis leaves out the document's own URL: tests/test_web_api.py
    # checks what it serves.)
    assert set(tested) == documented_operations() - SKIP - {("GET", "/api/openapi.yaml")}
    # The server still serves (nothing the fuzzer did broke it).
    r = login(port, "fuzzed", "fuzzedpw")[0].get("/api/session")
    assert r.status == 200

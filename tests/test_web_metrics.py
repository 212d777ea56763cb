"""
C{GET /metrics}: scraped from a real server and parsed with
prometheus_client's own parser; admin only unless C{--metrics-public yes}.
"""

import pytest
from prometheus_client.parser import text_string_to_metric_families

from netshare.web.metrics import Buckets, CommandMetrics, histogram_buckets
from tests.support import LineConn, ServerProcess
from tests.web_support import Http, login, register


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    s = ServerProcess(tmp_path_factory.mktemp("webmetrics") / "data", web=True)
    s.start()
    try:
        register(s, "mona", "monapw")
        yield s
    finally:
        s.terminate()
        s.kill()


def families(text):
    return {f.name: f for f in text_string_to_metric_families(text)}


def sample(fams, family, name=None, **labels):
    for s in fams[family].samples:
        if (name is None or s.name == name) and all(
            s.labels.get(k) == v for k, v in labels.items()
        ):
            return s.value
    raise AssertionError("no sample %s %s" % (family, labels))


def test_metrics_need_an_admin(server):
    port = server.ports["web"]
    r = Http(port).get("/metrics")
    assert r.status == 401 and r.json["code"] == 530
    mona = login(port, "mona", "monapw")[0]
    r = mona.get("/metrics")
    assert r.status == 403 and r.json["code"] == 531


def test_metrics_parse_and_count(server):
    port = server.ports["web"]
    admin = login(port, "admin", "adminpw")[0]
    mona = login(port, "mona", "monapw")[0]
    assert mona.post("/api/subscriptions", {"hashtag": "m"}).status == 200
    assert admin.post("/api/tweets", {"message": "counted", "hashtags": ["m"]}).status == 201
    assert admin.get("/api/nowhere").status == 404
    # A personnel sync client with a message it has not acknowledged: its lag.
    admin.post("/api/people", {"ssn": "M-1", "name": "Me", "surname": "Tric"})
    sync = LineConn(server.ports["personnel"])
    try:
        sync.readline()
        assert sync.cmd("LOGIN mona monapw")[0].startswith("230")
        assert sync.cmd("SYNC")[0] == "200 syncing"
        r = admin.post("/api/sync-clients/send", {"client": "mona", "id": "M-1"})
        assert r.json == {"queued": 1}
        assert sync.readline().startswith("610 ")

        r = admin.get("/metrics")
        assert r.status == 200
        assert r.header("Content-Type").startswith("text/plain")
        fams = families(r.data.decode("utf-8"))
    finally:
        sync.close()

    assert sample(fams, "netshare_info") == 1
    # Connections and commands per listener.
    assert sample(fams, "netshare_connections", service="web") >= 1
    assert sample(fams, "netshare_connections", service="personnel") == 1  # the SYNC
    assert sample(fams, "netshare_commands", service="web") >= 5
    assert sample(fams, "netshare_commands", service="personnel") >= 2
    assert sample(fams, "netshare_received_bytes", service="web") > 0
    assert sample(fams, "netshare_sent_bytes", service="web") > 0
    assert sample(fams, "netshare_slow_readers_dropped", service="web") == 0
    # Commands by verb and code, and their latency.
    replies = fams["netshare_command_replies"]
    assert (
        sample(
            fams, "netshare_command_replies", service="ttweet", verb="POST /api/tweets", code="201"
        )
        == 1
    )
    assert sample(
        fams, "netshare_command_replies", service="web", verb="GET <unknown>", code="404"
    )
    assert replies.type == "counter"
    duration = fams["netshare_command_duration_seconds"]
    assert duration.type == "histogram"
    count = sample(
        fams,
        "netshare_command_duration_seconds",
        name="netshare_command_duration_seconds_count",
        service="ttweet",
        verb="POST /api/tweets",
    )
    inf = sample(
        fams,
        "netshare_command_duration_seconds",
        name="netshare_command_duration_seconds_bucket",
        service="ttweet",
        verb="POST /api/tweets",
        le="+Inf",
    )
    assert count == inf == 1
    # The rest of the server.
    assert sample(fams, "netshare_history_backlog") >= 0
    assert sample(fams, "netshare_db_calls_in_flight") >= 0
    assert sample(fams, "netshare_db_threads") >= 1
    assert sample(fams, "netshare_db_calls") > 0
    assert sample(fams, "netshare_kdf_pending") >= 0
    assert sample(fams, "netshare_uploads_in_progress", listener="files") == 0
    assert sample(fams, "netshare_ttweet_online") >= 1
    assert sample(fams, "netshare_ttweet_published") >= 1
    assert sample(fams, "netshare_web_event_streams") == 0
    # Per sync client: its lag and acknowledged seq.
    assert sample(fams, "netshare_sync_client_pending", client="mona") == 1
    assert sample(fams, "netshare_sync_client_acked_seq", client="mona") == 0
    assert sample(fams, "netshare_sync_client_online", client="mona") == 1
    # The process collector of the runtime's own registry.
    assert sample(fams, "process_resident_memory_bytes") > 0


def test_metrics_public(tmp_path):
    s = ServerProcess(tmp_path / "data", web=True, extra_args=["--metrics-public", "yes"])
    s.start()
    try:
        r = Http(s.ports["web"]).get("/metrics")
        assert r.status == 200
        fams = families(r.data.decode("utf-8"))
        assert sample(fams, "netshare_connections", service="web") >= 1
        # Public metrics still record the request (anonymously).
        admin = login(s.ports["web"], "admin", "adminpw")[0]
        r = admin.get("/api/history?user=-&limit=20")
        assert "GET /metrics" in [e["command"] for e in r.json["items"]]
    finally:
        s.terminate()
        s.kill()


def test_command_metrics_from_log_events():
    """The command log's event tuples, counted off the command path."""
    m = CommandMetrics(bounds=(0.001, 0.01))
    m.observe_events(
        [
            (0.0, "files", "u", "p", "LIST", 210, 0.5, 10),
            (0.0, "files", "u", "p", "LIST", 210, 5.0, 10),
            (0.0, "files", "u", "p", "LIST", 550, 50.0, 10),
        ]
    )
    assert m.counts == {("files", "LIST", 210): 2, ("files", "LIST", 550): 1}
    h = m.latency[("files", "LIST")]
    assert histogram_buckets(h) == [("0.001", 1.0), ("0.01", 2.0), ("+Inf", 3.0)]
    assert h.sum == pytest.approx(0.0555)
    b = Buckets((1.0,))
    b.observe(1.0)  # "le": the bound itself counts in its bucket
    assert b.counts == [1, 0]

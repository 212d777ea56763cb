"""
C{GET /metrics} (docs/http.md): the Prometheus text format, made by the
official C{prometheus_client} from a registry of this runtime's own (never
the process-global one, so two runtimes in one process, as in tests, do
not mix).

Almost everything is read at scrape time from counters the server keeps
anyway (a custom collector, L{NetshareCollector}): each listener's
L{ServiceStats<netshare.stats.ServiceStats>} (connections, commands, bytes
in and out, pushes, slow readers dropped, failed logins), the history's
backlog, the database pool (calls running and queued, failures,
timeouts), the password-hashing queue, the ttweet hub, the uploads in
progress (files connections in raw mode, streamed HTTP bodies) and the
sync clients' lag (one outbox read per scrape, before the text is made).
The hot command path pays nothing for them.

Commands by verb and code, and their latency histograms, need one
observation per command (L{CommandMetrics}).  They are taken from the
command log's events (L{netshare.logs.CommandLog}), which every port
already records per command, at the log's flush (every 0.2 s, a batch
at a time) rather than on the command's path: about a microsecond per
command in the flush (a dict lookup, a bisect, three additions), for
which the command log needs an C{observers} list (docs/http.md,
Metrics).  While it has none, only the web's own requests are counted
this way, directly as each is answered.
"""

from __future__ import annotations

import bisect
import time
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, ProcessCollector, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import CollectorRegistry
from twisted.logger import Logger

from netshare import __version__
from netshare.web.app import Call, Response, Router

#: Upper bounds (seconds) of the command latency histogram.
COMMAND_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)


class Buckets:
    """
    A histogram kept as plain numbers (reactor thread only: no lock):
    counts per upper bound (not cumulative; the last one is +Inf) and the
    sum of what was observed.
    """

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: Sequence[float]):
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value


def histogram_buckets(h: Any) -> list[tuple[str, float]]:
    """Cumulative C{(le, count)} pairs of anything with C{bounds} and
    C{counts} (L{Buckets}), as prometheus_client takes them."""
    out = []
    total = 0
    for bound, n in zip(list(h.bounds) + [float("inf")], h.counts, strict=True):
        total += n
        out.append(("+Inf" if bound == float("inf") else repr(float(bound)), float(total)))
    return out


class CommandMetrics:
    """Commands by (service, verb, code) and their latency by (service,
    verb), from command log events or one by one."""

    def __init__(self, bounds: Sequence[float] = COMMAND_BUCKETS):
        self.bounds = tuple(bounds)
        self.counts: dict[tuple[str, str, int], int] = {}
        self.latency: dict[tuple[str, str], Buckets] = {}

    def observe(self, service: str, verb: str, code: int, duration_ms: float) -> None:
        self.observe_events([(0.0, service, None, None, verb, code, duration_ms, 0)])

    def observe_events(self, events: Iterable[Sequence[Any]]) -> None:
        """
        A command log batch: C{(time, service, user, peer, verb, code,
        duration_ms, bytes)} tuples.  Once per command, in the log's flush:
        kept to two dict lookups and a bisect (about a microsecond).
        """
        counts, latency, bounds = self.counts, self.latency, self.bounds
        find = bisect.bisect_left
        for e in events:
            service, verb, code, ms = e[1], e[4], e[5], e[6]
            key = (service, verb, code)
            counts[key] = counts.get(key, 0) + 1
            h = latency.get((service, verb))
            if h is None:
                h = latency[(service, verb)] = Buckets(bounds)
            seconds = ms / 1000.0
            h.counts[find(bounds, seconds)] += 1
            h.sum += seconds


def _family(kind: type, name: str, doc: str, labels: Sequence[str]) -> Any:
    return kind(name, doc, labels=list(labels))


class NetshareCollector:
    """Everything but the process metrics, read at scrape time (see the
    module docstring)."""

    def __init__(self, metrics: Metrics):
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        m = self.metrics
        rt = m.runtime
        info = GaugeMetricFamily("netshare_info", "netshare version", labels=["version"])
        info.add_metric([__version__], 1)
        yield info
        yield from self._listeners(rt)
        yield from self._commands(m.commands)
        yield from self._history(rt)
        yield from self._database(rt)
        yield from self._kdf(rt)
        yield from self._uploads(rt, m.site)
        yield from self._ttweet(rt, m.site)
        yield from self._sync_clients(m.clients)

    def _listeners(self, rt: Any) -> Iterator[Metric]:
        fields = [
            ("connections", GaugeMetricFamily, "netshare_connections", "open connections"),
            (
                "connections_total",
                CounterMetricFamily,
                "netshare_connections_opened",
                "connections accepted",
            ),
            (
                "refused",
                CounterMetricFamily,
                "netshare_connections_refused",
                "connections refused (too many)",
            ),
            (
                "commands",
                CounterMetricFamily,
                "netshare_commands",
                "commands (HTTP requests on the web listener) answered",
            ),
            ("bytes_in", CounterMetricFamily, "netshare_received_bytes", "bytes received"),
            ("bytes_out", CounterMetricFamily, "netshare_sent_bytes", "bytes sent"),
            ("pushes", CounterMetricFamily, "netshare_pushes", "push lines sent"),
            (
                "slow_drops",
                CounterMetricFamily,
                "netshare_slow_readers_dropped",
                "connections dropped for not reading their output",
            ),
            (
                "login_failures",
                CounterMetricFamily,
                "netshare_login_failures",
                "failed logins (bad password or session)",
            ),
        ]
        snapshots = [(name, f.stats) for name, f in rt.factories.items()]
        for attr, kind, name, doc in fields:
            family = _family(kind, name, doc, ["service"])
            for service, stats in snapshots:
                family.add_metric([service], getattr(stats, attr, 0))
            yield family

    def _commands(self, commands: CommandMetrics) -> Iterator[Metric]:
        by_code = CounterMetricFamily(
            "netshare_command_replies",
            "commands answered, by service, verb (an HTTP request: method and route) and code "
            "(an HTTP request: its status)",
            labels=["service", "verb", "code"],
        )
        for (service, verb, code), n in sorted(commands.counts.items()):
            by_code.add_metric([service, verb, str(code)], n)
        yield by_code
        latency = HistogramMetricFamily(
            "netshare_command_duration_seconds",
            "time from a command's arrival to its answer",
            labels=["service", "verb"],
        )
        for (service, verb), h in sorted(commands.latency.items()):
            latency.add_metric([service, verb], histogram_buckets(h), h.sum)
        yield latency

    def _history(self, rt: Any) -> Iterator[Metric]:
        stats = rt.history.stats()
        yield GaugeMetricFamily(
            "netshare_history_backlog",
            "history entries recorded, not yet written",
            value=stats["pending"],
        )
        yield CounterMetricFamily(
            "netshare_history_dropped",
            "history entries dropped (buffer full while the database was away)",
            value=stats["dropped"],
        )
        yield CounterMetricFamily(
            "netshare_history_unrecorded_prelogin",
            "commands before login counted, not recorded one by one (over the rate)",
            value=stats["unrecorded_prelogin"],
        )

    def _database(self, rt: Any) -> Iterator[Metric]:
        pool = rt.pool
        s = pool.stats()
        yield GaugeMetricFamily(
            "netshare_db_threads", "database worker threads", value=s["threads"]
        )
        yield GaugeMetricFamily(
            "netshare_db_calls_in_flight",
            "database calls running or waiting for a worker",
            value=s["active"] + s["queued"],
        )
        yield GaugeMetricFamily(
            "netshare_db_calls_running", "database calls running in a worker", value=s["active"]
        )
        yield GaugeMetricFamily(
            "netshare_db_calls_queued", "database calls waiting for a worker", value=s["queued"]
        )
        for key, name, doc in [
            ("calls", "netshare_db_calls", "database calls completed"),
            ("failures", "netshare_db_failures", "database calls failed after their retries"),
            ("timeouts", "netshare_db_timeouts", "database calls past their deadline"),
            (
                "outcome_unknown",
                "netshare_db_outcome_unknown",
                "writes whose COMMIT was never confirmed",
            ),
        ]:
            yield CounterMetricFamily(name, doc, value=s.get(key, 0))
        latency = getattr(pool, "latency", None)
        if latency is not None:
            h = HistogramMetricFamily(
                "netshare_db_call_duration_seconds",
                "time from a database call's submission to its answer",
            )
            h.add_metric([], histogram_buckets(latency), latency.sum)
            yield h

    def _kdf(self, rt: Any) -> Iterator[Metric]:
        kdf = rt.kdf
        yield GaugeMetricFamily(
            "netshare_kdf_pending", "password hashes waiting or running", value=kdf.pending
        )
        yield CounterMetricFamily(
            "netshare_kdf_refused", "password hashes refused (queue full)", value=kdf.refused
        )

    def _uploads(self, rt: Any, site: Any) -> Iterator[Metric]:
        family = GaugeMetricFamily(
            "netshare_uploads_in_progress",
            "uploads receiving their bytes now",
            labels=["listener"],
        )
        files = rt.factories.get("files")
        if files is not None:
            n = sum(1 for c in files.connections if getattr(c, "rawRemaining", 0))
            family.add_metric(["files"], n)
        web = 0
        for channel in site.connections:
            for request in getattr(channel, "requests", ()):
                body = getattr(request, "body", None)
                route = getattr(request, "route", None)
                if body is not None and not body.complete and route is not None:
                    web += route.service == "files"
        family.add_metric(["web"], web)
        yield family

    def _ttweet(self, rt: Any, site: Any) -> Iterator[Metric]:
        presences = getattr(site, "ttweetPresences", None)
        streams = sum(len(p.streams) for p in presences.byAccount.values()) if presences else 0
        yield GaugeMetricFamily(
            "netshare_web_event_streams", "open ttweet event streams (SSE)", value=streams
        )
        hub = rt.apps.get("ttweet")
        if hub is None:
            return
        s = hub.stats()
        yield GaugeMetricFamily("netshare_ttweet_online", "ttweet users online", value=s["online"])
        yield GaugeMetricFamily(
            "netshare_ttweet_pending_tweets",
            "tweets published, not yet stored",
            value=s["pending_tweets"],
        )
        for key, name, doc in [
            ("published", "netshare_ttweet_published", "tweets published"),
            ("deliveries", "netshare_ttweet_deliveries", "tweet pushes to subscribers"),
            ("stored", "netshare_ttweet_stored", "tweets stored"),
            ("rate_limited", "netshare_ttweet_rate_limited", "tweets refused by the flood limit"),
        ]:
            yield CounterMetricFamily(name, doc, value=s[key])

    def _sync_clients(self, clients: list[dict[str, Any]] | None) -> Iterator[Metric]:
        if clients is None:
            return
        pending = GaugeMetricFamily(
            "netshare_sync_client_pending",
            "messages queued for a personnel sync client, not yet acknowledged (its lag)",
            labels=["client"],
        )
        acked = GaugeMetricFamily(
            "netshare_sync_client_acked_seq",
            "the last seq a personnel sync client acknowledged",
            labels=["client"],
        )
        online = GaugeMetricFamily(
            "netshare_sync_client_online",
            "1 while a personnel sync client's stream is open",
            labels=["client"],
        )
        for c in clients:
            name = str(c["client"])
            pending.add_metric([name], c["pending"])
            acked.add_metric([name], c["acked"])
            online.add_metric([name], 1 if c["online"] else 0)
        yield pending
        yield acked
        yield online


class Metrics:
    """The metrics of one runtime's web listener: its registry, the
    command observations, and what a scrape reads first."""

    log = Logger()

    def __init__(self, site: Any, runtime: Any):
        self.site = site
        self.runtime = runtime
        self.commands = CommandMetrics()
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(NetshareCollector(self))
        ProcessCollector(registry=self.registry)
        self.clients: list[dict[str, Any]] | None = None
        #: The command log feeds the command metrics (its C{observers} hook).
        self.viaLog = False
        self._log: Any = None
        site.commandObservers.append(self._observeRequest)
        site.startHooks.append(self._started)

    def _started(self) -> None:
        self.runtime.reactor.callWhenRunning(self.attachLog)

    def attachLog(self) -> None:
        """Take the command metrics from the command log's events, where
        it offers them (see the module docstring)."""
        log = self.runtime.commandLog
        if log is None or log is self._log:
            return
        observers = getattr(log, "observers", None)
        if observers is None:
            return
        observers.append(self.commands.observe_events)
        self._log = log
        self.viaLog = True

    def _observeRequest(self, service: str, verb: str, status: int, duration_ms: float) -> None:
        if not self.viaLog:
            self.commands.observe(service, verb, status, duration_ms)

    async def refresh(self) -> None:
        """Read what the collector cannot read synchronously (the sync
        clients, from the outbox); keep the last answer if the database
        does not give one now."""
        self.attachLog()
        if self.viaLog and self._log is not None:
            self._log.flush()  # every command answered so far is counted
        personnel = self.runtime.apps.get("personnel")
        if personnel is None:
            self.clients = None
            return
        try:
            self.clients = await personnel.clients()
        except Exception as e:
            self.log.warn("metrics: sync clients not read: {error}", error=str(e)[:200])

    def render(self) -> bytes:
        started = time.monotonic()
        data = generate_latest(self.registry)
        self.lastRenderSeconds = time.monotonic() - started
        return data


async def scrape(call: Call) -> Response:
    """C{GET /metrics}: admins only, unless C{--metrics-public yes}."""
    if not call.config.metrics_public:
        call.requireAdmin("GET /metrics")
    metrics: Metrics = call.site.metrics
    await metrics.refresh()
    return Response(200, metrics.render(), content_type=CONTENT_TYPE_LATEST)


async def stats(call: Call) -> dict[str, Any]:
    """
    C{GET /api/stats} (admin): the counters the operator dashboard charts,
    as JSON: the runtime's own snapshot (per service connections, commands,
    bytes, slow readers dropped; the database pool; the history backlog;
    the password-hashing pool), the database call latency if measured, the
    sync clients (acknowledged seq, lag) and the server time, so the page
    computes rates from successive snapshots.
    """
    call.requireAdmin("GET /api/stats")
    runtime = call.runtime
    out: dict[str, Any] = {"time_ms": int(time.time() * 1000), "services": runtime.stats()}
    latency = getattr(runtime.pool, "latency", None)
    if latency is not None:
        out["db_latency"] = {
            "bounds": list(latency.bounds),
            "counts": list(latency.counts),
            "sum": latency.sum,
        }
    personnel = runtime.apps.get("personnel")
    out["sync_clients"] = await personnel.clients() if personnel is not None else []
    return out


def register(router: Router, runtime: Any) -> None:
    router.add("GET", "/metrics", scrape, service="web", auth=not runtime.config.metrics_public)
    router.add("GET", "/api/stats", stats, service="web")


def attach(site: Any, runtime: Any) -> None:
    site.metrics = Metrics(site, runtime)

"""
Live counters of one listener, shown by the admin shell's C{stats()} and
(in time) exported for monitoring.  Plain integers bumped on the reactor
thread: no locks, no cost worth measuring on the per-command path.
"""

import bisect
from collections.abc import Sequence
from dataclasses import asdict, dataclass


@dataclass
class ServiceStats:
    """Live counters of one listener (shown by the admin shell)."""

    connections: int = 0
    connections_total: int = 0
    refused: int = 0
    commands: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    pushes: int = 0
    slow_drops: int = 0
    login_failures: int = 0
    #: Downloads copied by the kernel (sendfile) rather than read by Python.
    sendfile_downloads: int = 0

    def snapshot(self) -> dict:
        return asdict(self)


class Histogram:
    """
    A latency histogram kept as plain numbers, bumped on the reactor thread
    (no lock): counts per upper bound (not cumulative; the last one is
    +Inf) and the sum of what was observed.  What a Prometheus histogram
    exports (netshare/web/metrics.py reads C{bounds}, C{counts}, C{sum}).
    """

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: Sequence[float]):
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value


#: Upper bounds (seconds) of the database call latency histogram.
DB_CALL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 15.0)

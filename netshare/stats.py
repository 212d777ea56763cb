"""
Live counters of one listener, shown by the admin shell's C{stats()} and
(in time) exported for monitoring.  Plain integers bumped on the reactor
thread: no locks, no cost worth measuring on the per-command path.
"""

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

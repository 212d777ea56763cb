"""
Structured logging.

Every event netshare emits carries fields (service, user, peer, verb, code,
duration_ms, bytes ...) instead of pre-formatted text.  L{JsonLogFile} writes
one JSON object per line to C{<data>/logs/netshare.jsonl}, rotated by size;
L{consoleObserver} gives the console either the usual text or the same JSON.
Nothing secret is ever put in a field: commands are recorded redacted
(L{netshare.protocols.line.redact}).
"""

import io
import os
import sys
from typing import IO, Any, cast

from twisted.logger import (
    FilteringLogObserver,
    ILogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    globalLogPublisher,
    jsonFileLogObserver,
    textFileLogObserver,
)
from twisted.python.logfile import LogFile
from zope.interface import implementer

from netshare.wire import dumps

#: The namespace of the one-event-per-command log, and its fields.
COMMAND_NAMESPACE = "netshare.command"
COMMAND_FIELDS = ("service", "user", "peer", "verb", "code", "duration_ms", "bytes")


@implementer(ILogObserver)
class JsonLogFile:
    """JSON lines in a size-rotated file; add with L{start}, remove with L{stop}."""

    #: Buffered writes are flushed this often, and at once for warnings and
    #: errors (so the event explaining a crash is on disk).
    FLUSH_INTERVAL = 0.5

    def __init__(
        self,
        directory,
        name="netshare.jsonl",
        max_bytes=10 * 2**20,
        keep=5,
        publisher=globalLogPublisher,
        clock=None,
    ):
        os.makedirs(directory, mode=0o700, exist_ok=True)
        self.path = os.path.join(directory, name)
        self._file = LogFile(
            name, directory, rotateLength=max_bytes, maxRotatedFiles=keep, defaultMode=0o600
        )
        # jsonFileLogObserver only calls write() (typeshed's IO is wider than it needs).
        self._observer = jsonFileLogObserver(
            cast(IO[Any], _TextOut(self._file)), recordSeparator=""
        )
        self._publisher = publisher
        self._clock = clock
        self._flusher = None

    def __call__(self, event):
        if event.get("log_namespace") == COMMAND_NAMESPACE:
            # One per command: write just its fields (Twisted's generic
            # event serialisation costs more than the command itself).
            self._file.write(
                dumps(
                    {
                        "time": event["log_time"],
                        "level": "info",
                        "event": "command",
                        **{k: event.get(k) for k in COMMAND_FIELDS},
                    }
                )
                + "\n"
            )
        else:
            self._observer(event)
        level = event.get("log_level")
        if self._flusher is None or (level is not None and level >= LogLevel.warn):
            self._file.flush()

    def start(self):
        self._publisher.addObserver(self)
        if self._clock is not None:
            from twisted.internet.task import LoopingCall

            self._flusher = LoopingCall(self._file.flush)
            self._flusher.clock = self._clock
            self._flusher.start(self.FLUSH_INTERVAL, now=False)

    def stop(self):
        self._publisher.removeObserver(self)
        if self._flusher is not None and self._flusher.running:
            self._flusher.stop()
        self._flusher = None
        self._file.close()


class _TextOut(io.TextIOBase):
    """LogFile takes str; jsonFileLogObserver wants a text file: adapt."""

    def __init__(self, logfile):
        self._f = logfile

    def write(self, text):
        self._f.write(text)
        return len(text)


def consoleObserver(fmt="text", out=None, level=LogLevel.info):
    out = out or sys.stdout
    if fmt == "json":
        obs = jsonFileLogObserver(out, recordSeparator="")
    else:
        obs = textFileLogObserver(out)
    return FilteringLogObserver(obs, [LogLevelFilterPredicate(defaultLogLevel=level)])


def observer():
    """For C{twistd --logger=netshare.logs.observer}: JSON lines on stdout."""
    return consoleObserver("json")

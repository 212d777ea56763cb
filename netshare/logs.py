"""
Structured logging.

Every event netshare emits carries fields (service, user, peer, verb, code,
duration_ms, bytes ...) instead of pre-formatted text.  L{JsonLogFile} writes
one JSON object per line to C{<data>/logs/netshare.jsonl}, rotated by size;
L{consoleObserver} gives the console either the usual text or the same JSON.
Nothing secret is ever put in a field: commands are recorded redacted
(L{netshare.protocols.base.redact}).
"""

import io
import os
import sys

from zope.interface import implementer

from twisted.logger import (FilteringLogObserver, ILogObserver, LogLevel,
                            LogLevelFilterPredicate, globalLogPublisher,
                            jsonFileLogObserver, textFileLogObserver)
from twisted.python.logfile import LogFile


@implementer(ILogObserver)
class JsonLogFile:
    """JSON lines in a size-rotated file; add with L{start}, remove with L{stop}."""

    def __init__(self, directory, name="netshare.jsonl", max_bytes=10 * 2**20, keep=5,
                 publisher=globalLogPublisher):
        os.makedirs(directory, mode=0o700, exist_ok=True)
        self.path = os.path.join(directory, name)
        self._file = LogFile(name, directory, rotateLength=max_bytes, maxRotatedFiles=keep,
                             defaultMode=0o600)
        self._observer = jsonFileLogObserver(_TextOut(self._file), recordSeparator="")
        self._publisher = publisher

    def __call__(self, event):
        self._observer(event)

    def start(self):
        self._publisher.addObserver(self)

    def stop(self):
        self._publisher.removeObserver(self)
        self._file.close()


class _TextOut(io.TextIOBase):
    """LogFile takes str; jsonFileLogObserver wants a text file: adapt and flush."""

    def __init__(self, logfile):
        self._f = logfile

    def write(self, text):
        self._f.write(text)
        self._f.flush()
        return len(text)


def consoleObserver(fmt="text", out=None, level=LogLevel.info):
    out = out or sys.stdout
    obs = jsonFileLogObserver(out, recordSeparator="") if fmt == "json" else textFileLogObserver(out)
    return FilteringLogObserver(obs, [LogLevelFilterPredicate(defaultLogLevel=level)])


def observer():
    """For C{twistd --logger=netshare.logs.observer}: JSON lines on stdout."""
    return consoleObserver("json")

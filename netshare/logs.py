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
import json
import os
import sys
import time
from typing import IO, Any, cast

from twisted.logger import (
    FilteringLogObserver,
    ILogObserver,
    Logger,
    LogLevel,
    LogLevelFilterPredicate,
    globalLogPublisher,
    jsonFileLogObserver,
    textFileLogObserver,
)
from twisted.python.logfile import LogFile
from zope.interface import implementer

#: The fields of the one-event-per-command log (L{CommandLog}).
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
        self._observer(event)
        level = event.get("log_level")
        if self._flusher is None or (level is not None and level >= LogLevel.warn):
            self._file.flush()

    def writeText(self, text):
        """Lines already formatted (L{CommandLog}'s, in bulk)."""
        self._file.write(text)
        if self._flusher is None:
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


class CommandLog:
    """
    The one-event-per-command log, buffered: L{command} appends a tuple (a
    fraction of a microsecond), and L{flush} formats everything waiting as
    JSON lines in one pass and hands the text to each writer, at most
    C{interval} seconds later (on the next reactor turn once C{slice} wait),
    and at a clean stop.

    A command's event went through C{Logger.info} before: building an event
    dict, the publisher, and a C{json.dumps} per command, which cost more
    than Twisted spends on the command itself.  The lines are the same
    (fields L{COMMAND_FIELDS} plus C{time}, C{level}, C{event}); a kill -9
    loses at most the last C{interval} of them, as the file's own buffer
    always did (the request history, in the database, is the record that
    must not be lost).

    @param writers: callables taking formatted text (the JSON log file's
        L{JsonLogFile.writeText}, a JSON console's C{write}).
    """

    def __init__(self, writers, clock, interval=0.2, slice=512):
        self.writers = list(writers)
        self.clock = clock
        self.interval = interval
        #: Events that make a flush start at once rather than at the interval.
        self.slice = slice
        #: Called at each flush with the events waiting, as tuples
        #: (time, service, user, peer, verb, code, duration_ms, bytes): the
        #: metrics count commands by verb and code from the same events, a
        #: batch at a time, off the command's path (netshare/web/metrics.py).
        self.observers = []
        self._waiting = []
        self._timer = None

    def command(self, service, user, peer, verb, code, duration_ms, nbytes):
        waiting = self._waiting
        waiting.append((time.time(), service, user, peer, verb, code, duration_ms, nbytes))
        if self._timer is None:
            self._timer = self.clock.callLater(self.interval, self.flush)
        elif len(waiting) == self.slice:
            # A busy server: format this slice on the next reactor turn, so
            # no single flush holds the reactor for long (tail latency).
            self._timer.reset(0)

    def flush(self):
        if self._timer is not None:
            if self._timer.active():
                self._timer.cancel()
            self._timer = None
        waiting, self._waiting = self._waiting, []
        if not waiting:
            return
        for observe in self.observers:
            try:
                observe(waiting)
            except Exception:  # the log is written whatever an observer does
                _log.failure("a command log observer failed")
        # Users, peers and verbs repeat from one command to the next: each
        # is made a JSON string once per flush.
        js: dict[object, str] = {}
        get = js.get
        lines: list[str] = []
        add = lines.append
        for t, s, u, p, v, c, d, n in waiting:
            ju = get(u)
            if ju is None:
                ju = js[u] = _js(u)
            jp = get(p)
            if jp is None:
                jp = js[p] = _js(p)
            jv = get(v)
            if jv is None:
                jv = js[v] = _js(v)
            add(_COMMAND_LINE % (t, s, ju, jp, jv, c, d, n))
        text = "".join(lines)
        for write in self.writers:
            try:
                write(text)
            except Exception:  # one writer failing must not take the others
                _log.failure("writing the command log failed")

    def stop(self):
        self.flush()


_log = Logger(namespace="netshare.logs")

#: One command's JSON line (the field order of COMMAND_FIELDS).
_COMMAND_LINE = (
    '{"time":%.6f,"level":"info","event":"command","service":"%s","user":%s,'
    '"peer":%s,"verb":%s,"code":%d,"duration_ms":%r,"bytes":%d}\n'
)


def _js(value):
    """A JSON string (or null) for one field: printable ASCII without a
    quote or a backslash (names, addresses, verbs, almost always) as it is,
    anything else through the JSON encoder."""
    if value is None:
        return "null"
    text = str(value)
    if text.isascii() and text.isprintable() and '"' not in text and "\\" not in text:
        return '"' + text + '"'
    # ASCII escapes: a lone surrogate or U+0085 must not break the line or
    # the file's UTF-8.
    return json.dumps(text)


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

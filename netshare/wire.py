"""
Small wire-format helpers shared by the server and the clients.

Timestamps are kept as integer epoch milliseconds everywhere inside netshare
(portable across SQLite, PostgreSQL and MariaDB, no time-zone surprises) and
rendered on the wire as ISO 8601 UTC strings.  JSON on the wire is compact and
UTF-8 (``ensure_ascii=False``); the json module escapes control characters,
so a field can never forge a line break inside a reply.
"""

import json
import time


def now_ms() -> int:
    """The current wall-clock time in epoch milliseconds."""
    return int(time.time() * 1000)


#: The last second rendered by L{iso_ms} and its text up to the dot: a
#: busy server renders many timestamps within one second (one tuple,
#: replaced whole, so any thread may read it).
_last_second: tuple[int, str] = (-1, "")


def iso_ms(ms: int) -> str:
    """Render epoch milliseconds as C{2026-11-21T05:15:35.120Z} (with
    C{time.gmtime}, once per second: every pushed tweet and every person
    on the wire carries one)."""
    global _last_second
    second = ms // 1000
    last, prefix = _last_second
    if second != last:
        t = time.gmtime(second)
        prefix = "%04d-%02d-%02dT%02d:%02d:%02d." % (
            t.tm_year,
            t.tm_mon,
            t.tm_mday,
            t.tm_hour,
            t.tm_min,
            t.tm_sec,
        )
        _last_second = (second, prefix)
    return "%s%03dZ" % (prefix, ms % 1000)


#: One encoder for every reply: C{json.dumps} with any option builds a new
#: encoder per call.
_ENCODE = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


def dumps(obj: object) -> str:
    """Compact JSON for one reply line.

    Line separators U+2028/U+2029 are escaped as well, so that a line-based
    reader splitting on any Unicode line break still sees one line.
    """
    text = _ENCODE(obj)
    return text.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")

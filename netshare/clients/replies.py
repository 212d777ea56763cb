"""
Replies as the client programs see them: L{Response} (the code, the text,
every line, a parsed listing), L{CommandFailed} for a 4xx/5xx, and L{quote}
to build a command line.  Standard library only: shared by the Twisted
client (L{netshare.clients.protocol}) and the blocking one-shot client
(L{netshare.clients.quick}).
"""

from __future__ import annotations

import json
import shlex

#: The typing module costs milliseconds to import; the quick path does not need it.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


class CommandFailed(Exception):
    """A command got an error reply (4xx/5xx)."""

    def __init__(self, response: Response) -> None:
        self.response = response
        super().__init__(response.line)

    @property
    def code(self) -> int:
        return self.response.code


class Response:
    """
    A whole reply: its final line's C{code} and C{text}, every line's text
    in order (C{lines}), a 210 listing parsed (C{items}), and the raw bytes
    a transfer moved (C{bytes}).  (A plain class, not a dataclass: see
    L{TYPE_CHECKING}.)
    """

    __slots__ = ("code", "text", "lines", "items", "bytes")

    def __init__(
        self,
        code: int,
        text: str,
        lines: list[str] | None = None,
        items: list[Any] | None = None,
        bytes: int = 0,
    ) -> None:
        self.code = code
        self.text = text
        self.lines = lines if lines is not None else []
        self.items = items
        self.bytes = bytes

    def __repr__(self) -> str:
        return "Response(%r, %r, lines=%d)" % (self.code, self.text, len(self.lines))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Response):
            return NotImplemented
        return all(getattr(self, k) == getattr(other, k) for k in self.__slots__)

    @property
    def line(self) -> str:
        return "%d %s" % (self.code, self.text)

    @property
    def ok(self) -> bool:
        return self.code < 400

    @property
    def obj(self) -> Any:
        """The JSON object of a C{200 {...}} or C{226 stored {...}} reply."""
        start = self.text.find("{")
        return json.loads(self.text[start:]) if start >= 0 else None


def split_reply_line(text: str) -> tuple[int, str, str] | None:
    """C{(code, separator, text)} of a reply line (the separator: C{-} on a
    continuation line, a space or nothing on a final one), or None when the
    line is not a reply line (no three-digit code)."""
    if len(text) < 3 or not text[:3].isdigit():
        return None
    return int(text[:3]), text[3:4], text[4:]


def final_response(code: int, text: str, lines: list[str]) -> Response:
    """The L{Response} a final line ends: its code and text, every line, and
    a 210 listing's items parsed from the continuation lines."""
    resp = Response(code, text, lines)
    if code == 210:
        resp.items = [json.loads(line[4:]) for line in lines[:-1]]
    return resp


def quote(*words: object) -> str:
    """Build a command line from words, quoting as the server splits them."""
    return " ".join(shlex.quote(str(w)) for w in words)

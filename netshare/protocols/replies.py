"""
What a command handler returns: the shapes of reply a line protocol knows.

A handler (C{cmd_VERB(self, args)}) returns one of these, or a Deferred of
one, or raises a L{netshare.errors.NetshareError}; L{CommandProtocol}
(netshare/protocols/line.py) turns it into lines on the wire (docs/protocol.md
section 1).  Kept apart from the protocol so that a service protocol module
reads as "parse, call, return a reply" without the machinery behind it.
"""

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from twisted.internet.defer import Deferred

from netshare.wire import dumps


@dataclass
class Reply:
    """One line: C{<code> <text>}."""

    code: int
    text: str

    def lines(self) -> list[str]:
        return ["%d %s" % (self.code, self.text)]


@dataclass
class ObjectReply:
    """One line carrying a JSON object: C{200 <json>}."""

    obj: Any
    code: int = 200
    prefix: str = ""

    def lines(self) -> list[str]:
        return ["%d %s%s" % (self.code, self.prefix, dumps(self.obj))]


@dataclass
class Listing:
    """C{210-<json>} per item, then C{210 <n> items}."""

    items: list

    def lines(self) -> list[str]:
        out = ["210-" + dumps(item) for item in self.items]
        out.append("210 %d items" % (len(self.items),))
        return out


@dataclass
class Lines:
    """A reply made of ready lines (HELP's C{214-} lines)."""

    code: int
    ready: list[str]

    def lines(self) -> list[str]:
        return self.ready


class NoReply:
    """The handler wrote its own last line (QUIT's C{221 bye})."""

    code = 221

    def lines(self) -> list[str]:
        return []


NO_REPLY = NoReply()


@dataclass
class ReceiveRaw:
    """
    Ask the client for exactly C{size} raw bytes.

    @ivar consumer: an C{IConsumer}; it is given this connection's raw input
        as a streaming producer (so it can pause the socket) and every byte.
    @ivar finish: called with no arguments after the last byte; returns the
        final reply (or a Deferred of it).
    @ivar abort: called if the connection is lost before the last byte.
    """

    size: int
    consumer: Any
    finish: Callable[[], Any]
    abort: Callable[[], Any] | None = None


@dataclass
class SendRaw:
    """
    Send exactly C{size} raw bytes after C{150 <size> bytes sha256=<sha256>}.

    @ivar producer: has C{beginFileTransfer(consumer) -> Deferred} and
        C{stopProducing()}, like L{twisted.protocols.basic.FileSender}.
    @ivar done: optional callable run after the transfer (success or not).
    """

    size: int
    sha256: str
    producer: Any
    done: Callable[[], Any] | None = None


@dataclass
class Later:
    """
    A reply that comes later I{without holding up the commands after it}.

    Normally a command's Deferred pauses the connection until it is
    answered.  A handler that returns C{Later(d)} lets the next command run
    at once: its reply is reserved in command order and written when C{d}
    fires (with a reply, as a handler's result), strictly after every reply
    before it and before every reply after it.  ttweet's TWEET uses it, so a
    publisher that pipelines tweets is not limited to one per commit.  At
    most L{MAX_HELD} replies wait; beyond, the connection is not read until
    some are written.  A failure of C{d} becomes its error line.

    @ivar result: the Deferred of the reply.
    @ivar code: the code the command is recorded with (history, logs): what
        it had when accepted.
    """

    result: Deferred
    code: int = 200


#: Reserved replies after which a connection is not read until some are sent.
MAX_HELD = 4096

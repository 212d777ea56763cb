"""
The one adapter between netshare's async style and Twisted's.

Service and client logic is written as C{async def}; Twisted (a protocol's
handler result, C{DeferredList}, C{addTimeout}, a caller that chains
callbacks) wants a L{Deferred}.  L{deferred} turns an C{async def} into a
function that returns a Deferred, so every public service method keeps
returning one, and the body reads top to bottom.

Callback chains (C{d.addCallback(...)}) remain only on measured hot paths,
where a coroutine's frame and its Deferred would cost more than the work;
each such place says so in a comment.
"""

import functools
from collections.abc import Callable, Coroutine
from typing import Any, ParamSpec, TypeVar

from twisted.internet.defer import Deferred

P = ParamSpec("P")
T = TypeVar("T")


def deferred(f: Callable[P, Coroutine[Any, Any, T]]) -> Callable[P, "Deferred[T]"]:
    """
    Decorate an C{async def} so that calling it returns a L{Deferred}.

    An exception raised before the first C{await} fails the Deferred, as
    with C{inlineCallbacks}: callers never see a synchronous raise.
    """

    @functools.wraps(f)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> "Deferred[T]":
        return Deferred.fromCoroutine(f(*args, **kwargs))

    return wrapper

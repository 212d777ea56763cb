"""
The clock of a service that was given none: the global reactor.

Every service takes its clock as an argument (tests pass a
C{twisted.internet.task.Clock}); only when it is left out does the service
fall back to the global reactor, imported then and not at module level, so
importing a service never installs the default reactor before C{twistd}
has chosen one.
"""

from typing import cast

from twisted.internet.interfaces import IReactorTime


def default_clock(clock: IReactorTime | None = None) -> IReactorTime:
    """C{clock}, or the global reactor when it is None."""
    if clock is not None:
        return clock
    from twisted.internet import reactor

    # The reactor module stands for the installed reactor, which provides
    # IReactorTime; its static type is the module.
    return cast(IReactorTime, reactor)

"""The ttweet protocol (PROTOCOL.md). Placeholder until its issue: the common commands only."""

from netshare.protocols.base import CommandFactory, CommandProtocol


class TtweetProtocol(CommandProtocol):
    service = "ttweet"


def makeFactory(runtime):
    return CommandFactory(runtime, TtweetProtocol)

"""The personnel protocol (PROTOCOL.md). Placeholder until its issue: the common commands only."""

from netshare.protocols.base import CommandFactory, CommandProtocol


class PersonnelProtocol(CommandProtocol):
    service = "personnel"


def makeFactory(runtime):
    return CommandFactory(runtime, PersonnelProtocol)

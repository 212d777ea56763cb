"""The files protocol (PROTOCOL.md). Placeholder until its issue: the common commands only."""

from netshare.protocols.base import CommandFactory, CommandProtocol


class FilesProtocol(CommandProtocol):
    service = "files"


def makeFactory(runtime):
    return CommandFactory(runtime, FilesProtocol)

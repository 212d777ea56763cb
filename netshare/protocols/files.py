"""
The files protocol (docs/protocol.md section 2) on the line protocol.

This module only parses commands and formats replies; every decision (name
rules, ownership, quota, disk space, passwords, lockout, atomic replace) is
made by the L{netshare.services.files.service.FilesService} (the factory's
C{app}), and every byte of content goes through its upload sink (raw upload
body, with backpressure) or blob reader (raw download body).

A file name is always the first word after the verb, so a name that looks
like an option (C{"sha256=x"}) is still a name; options follow it.

Resumable uploads (docs/protocol.md section 2.A.3) add C{PARTIAL} (how much
of an interrupted upload the server keeps) and three UPLOAD options:
C{resume=yes} (keep what arrives if the connection is cut), C{offset=N}
(continue from there) and C{sha256=trailer} (the hex SHA-256 follows the
content inside the raw data, so a client hashes while it sends).  The C{350}
line keeps its contract form: it counts the raw bytes still to come.
"""

from typing import Any

from netshare.deferreds import deferred
from netshare.errors import BadArguments, BadCredentials, TemporaryError
from netshare.protocols.line import CommandProtocol
from netshare.protocols.replies import Listing, ObjectReply, ReceiveRaw, Reply, SendRaw
from netshare.protocols.words import split_options, yes_no
from netshare.services.files.names import parse_size
from netshare.services.files.service import FilesService
from netshare.wire import dumps

UPLOAD_OPTIONS = ("visibility", "password", "sha256", "replace", "resume", "offset")
INFO_OPTIONS = ("password",)
PARTIAL_OPTIONS = ("sha256",)
DOWNLOAD_OPTIONS = ("password", "offset")
RAW_READ = 256 * 1024


def _name_and_options(args, allowed, fixed, usage):
    """The first C{fixed} words are positional (the name first); the rest
    are C{key=value} options among C{allowed}."""
    if len(args) < fixed:
        raise BadArguments("usage: " + usage)
    _, opts = split_options(args[fixed:], allowed=allowed, positional=(0, 0))
    return args[:fixed], opts


class FilesProtocol(CommandProtocol):
    service = "files"
    HELP = dict(
        CommandProtocol.HELP,
        **{
            "LIST": "LIST [mine|hidden]: public files, your own public files, or hidden files "
            "(your own; an admin's: all)",
            "INFO": "INFO <name> [password=P]: a protected file's sha256 needs its password "
            "unless it is yours",
            "CHECKSUM": "CHECKSUM <name> [password=P]: 200 sha256 <hex>",
            "UPLOAD": "UPLOAD <name> <size> [visibility=public|hidden] [password=P] "
            "[sha256=HEX|trailer] [replace=yes] [resume=yes [offset=N]]: 350 send <n> bytes, "
            "then exactly n raw bytes (the content from N, then 64 hex digits with "
            "sha256=trailer), then 226 stored {file}",
            "PARTIAL": "PARTIAL <name> <size> [sha256=HEX]: 200 {name, size, offset, protected, "
            "sha256, prefix_sha256, expires}: how much of your interrupted upload is kept "
            "(continue it with UPLOAD ... resume=yes offset=<offset>)",
            "DOWNLOAD": "DOWNLOAD <name> [password=P] [offset=N]: 150 <n> bytes sha256=<hex>, "
            "n raw bytes, 226",
            "DELETE": "DELETE <name>: owner or admin",
            "QUOTA": "QUOTA: 200 {files, bytes, quota, max_file_size, partials, partial_bytes}: "
            "what you store (hidden and protected files and interrupted uploads too) and "
            "your limits",
        },
    )

    @property
    def files(self) -> FilesService:
        return self.factory.app

    def cmd_LIST(self, args):
        if len(args) > 1:
            raise BadArguments("usage: LIST [mine|hidden]")
        which = args[0].lower() if args else None
        d = self.files.list(self.caller, which)
        return d.addCallback(lambda views: Listing([v.to_wire() for v in views]))

    def cmd_INFO(self, args):
        (name,), opts = _name_and_options(args, INFO_OPTIONS, 1, self.HELP["INFO"])
        d = self.files.info(self.caller, name, opts.get("password"))
        return d.addCallback(lambda view: ObjectReply(view.to_wire()))

    def cmd_CHECKSUM(self, args):
        (name,), opts = _name_and_options(args, INFO_OPTIONS, 1, self.HELP["CHECKSUM"])
        d = self.files.info(self.caller, name, opts.get("password"))
        return d.addCallback(self._checksum)

    @staticmethod
    def _checksum(view):
        if view.sha256 is None:
            raise BadCredentials("file is protected: give password=P to see its checksum")
        return Reply(200, "sha256 " + view.sha256)

    @deferred
    async def cmd_UPLOAD(self, args: list[str]) -> ReceiveRaw:
        (name, size_text), opts = _name_and_options(args, UPLOAD_OPTIONS, 2, self.HELP["UPLOAD"])
        size = parse_size(size_text)
        replace = yes_no(opts["replace"], "replace") if "replace" in opts else False
        resume = yes_no(opts["resume"], "resume") if "resume" in opts else False
        offset = parse_size(opts["offset"], "offset") if "offset" in opts else 0
        visibility = opts.get("visibility")
        sha256 = opts.get("sha256")
        trailer = sha256 is not None and sha256.lower() == "trailer"
        await self.files.whenReady()
        up = await self.files.begin_upload(
            self.caller,
            name,
            size,
            visibility,
            opts.get("password"),
            None if trailer else sha256,
            replace,
            resume=resume,
            offset=offset,
            trailer=trailer,
        )
        if self.transport is None or not self.transport.connected:
            up.abort()
            raise TemporaryError("connection lost before the upload started")

        restore = self._readInBigChunks()

        def finish():
            restore()
            return up.complete(journal=self.journal(226)).addCallback(
                lambda rec: Reply(226, "stored " + dumps(rec.to_wire()))
            )

        def abort():
            restore()
            return up.abort()

        return ReceiveRaw(up.raw_size, consumer=up.sink, finish=finish, abort=abort)

    @deferred
    async def cmd_PARTIAL(self, args: list[str]) -> ObjectReply:
        (name, size_text), opts = _name_and_options(args, PARTIAL_OPTIONS, 2, self.HELP["PARTIAL"])
        size = parse_size(size_text)
        await self.files.whenReady()
        view = await self.files.partial(self.caller, name, size, opts.get("sha256"))
        return ObjectReply(view.to_wire())

    def _readInBigChunks(self):
        """
        While an upload body comes in, read the socket RAW_READ bytes at a
        time instead of Twisted's 64 KiB: a quarter of the reactor turns and
        queue operations per byte.  @return: a callable restoring the old size.
        """
        transport: Any = getattr(self.transport, "transport", self.transport)  # under TLS
        old = getattr(transport, "bufferSize", None)
        if not isinstance(old, int) or old >= RAW_READ:
            return lambda: None
        transport.bufferSize = RAW_READ

        def restore():
            transport.bufferSize = old

        return restore

    @deferred
    async def cmd_DOWNLOAD(self, args: list[str]) -> SendRaw:
        (name,), opts = _name_and_options(args, DOWNLOAD_OPTIONS, 1, self.HELP["DOWNLOAD"])
        offset = parse_size(opts["offset"], "offset") if "offset" in opts else 0
        prepared = await self.files.open_download(self.caller, name, opts.get("password"), offset)
        if self.transport is None or not self.transport.connected:
            prepared.reader.close()
            raise TemporaryError("connection lost before the download started")
        return SendRaw(
            prepared.remaining, prepared.sha256, prepared.reader, done=prepared.reader.close
        )

    def cmd_DELETE(self, args):
        if len(args) != 1:
            raise BadArguments("usage: DELETE <name>")
        d = self.files.delete(self.caller, args[0], journal=self.journal(200))
        return d.addCallback(lambda rec: Reply(200, "deleted"))

    @deferred
    async def cmd_QUOTA(self, args: list[str]) -> ObjectReply:
        if args:
            raise BadArguments("usage: QUOTA")
        view = await self.files.quota(self.caller)
        return ObjectReply(view.to_wire())

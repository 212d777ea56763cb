"""
The files protocol (PROTOCOL.md section 2) on the base line protocol.

This module only parses commands and formats replies; every decision (name
rules, ownership, quota, disk space, passwords, lockout, atomic replace) is
made by L{netshare.files.FilesService}, and every byte of content goes
through its L{netshare.files.UploadSink} (raw upload body, with
backpressure) or L{netshare.files.BlobReader} (raw download body).

A file name is always the first word after the verb, so a name that looks
like an option (C{"sha256=x"}) is still a name; options follow it.

Start-up: the blob store's stale temporaries are swept synchronously when
the factory is built (before the reactor runs), then L{FilesApp.start}
removes orphaned blobs (content without a database row) once the database
pool is up.  Uploads wait for that to finish, so the orphan scan can never
race an upload that is just recording its row.
"""

import os

from twisted.internet import defer
from twisted.logger import Logger

from netshare.errors import BadArguments, BadCredentials, TemporaryError
from netshare.files import BlobStore, FilesService, PasswordLockout, parse_size
from netshare.throttle import Penalties
from netshare.protocols.base import (CommandFactory, CommandProtocol, Listing, ObjectReply,
                                     ReceiveRaw, Reply, SendRaw, split_options)
from netshare.wire import dumps

UPLOAD_OPTIONS = ("visibility", "password", "sha256", "replace")
INFO_OPTIONS = ("password",)
DOWNLOAD_OPTIONS = ("password", "offset")
RAW_READ = 256 * 1024


class FilesApp:
    """
    The files service object of one server: the blob store and the
    L{FilesService}, with the start/stop hooks the root service calls.

    @ivar service: the L{FilesService} every command goes through.
    @ivar blobs: the L{BlobStore} under C{<data>/files}.
    """

    log = Logger()

    def __init__(self, runtime, blobs=None, lockout=None):
        cfg = runtime.config
        self.blobs = blobs if blobs is not None else BlobStore(
            os.path.join(cfg.data, "files"), reactor=runtime.reactor)
        # Synchronous and before the reactor runs (makeFactory is called by
        # makeService): nothing can be uploading yet.
        self.blobs.sweep()
        if lockout is None:
            lockout = PasswordLockout(runtime.reactor, cfg.file_lockout_failures,
                                      cfg.file_lockout_seconds, cfg.file_lockout_seconds)
        misses = Penalties(runtime.reactor, free=cfg.misses_free,
                           base=min(1.0, cfg.misses_max_delay),
                           max_delay=cfg.misses_max_delay, max_wait=2 * cfg.misses_max_delay,
                           decay=cfg.misses_forget, what="names not found")
        file_guesses = Penalties(runtime.reactor, free=cfg.file_guesses_free,
                                 base=min(2.0, cfg.file_guesses_max_delay),
                                 max_delay=cfg.file_guesses_max_delay,
                                 max_wait=2 * cfg.file_guesses_max_delay,
                                 decay=3 * cfg.misses_forget,
                                 what="wrong passwords for this file")
        from netshare.storage.files import FileStore
        self.service = FilesService(
            FileStore(runtime.pool), self.blobs, runtime.kdf, lockout,
            max_file_size=cfg.max_file_size, user_quota=cfg.user_quota,
            min_free_percent=cfg.min_free_percent,
            kdf_params=(cfg.file_scrypt_n, 8, 1), clock=runtime.reactor,
            misses=misses, file_guesses=file_guesses)
        self._starting = None

    def start(self):
        """Remove orphaned blobs (needs the database pool running)."""
        self._starting = d = defer.Deferred()

        def done(counts):
            self.log.info("files ready: removed {temporaries} stale temporaries and "
                          "{orphans} orphaned blobs; {missing} files without content",
                          **counts)

        def failed(f):
            # Not fatal: orphans only waste space; the next start-up retries.
            self.log.failure("files start-up housekeeping failed", f)

        def finished(_):
            self._starting = None
            d.callback(None)

        self.service.startup().addCallbacks(done, failed).addBoth(finished)
        return self.whenReady()

    def whenReady(self):
        """A Deferred that fires once start-up housekeeping is over."""
        if self._starting is None:
            return defer.succeed(None)
        d = defer.Deferred()
        self._starting.addBoth(lambda r: (d.callback(None), r)[1])
        return d

    def stop(self):
        self.blobs.stop()


def _yes_no(value, name):
    v = value.lower()
    if v in ("yes", "true", "1"):
        return True
    if v in ("no", "false", "0"):
        return False
    raise BadArguments("%s must be yes or no" % (name,))


def _name_and_options(args, allowed, fixed, usage):
    """The first C{fixed} words are positional (the name first); the rest
    are C{key=value} options among C{allowed}."""
    if len(args) < fixed:
        raise BadArguments("usage: " + usage)
    _, opts = split_options(args[fixed:], allowed=allowed, positional=(0, 0))
    return args[:fixed], opts


class FilesProtocol(CommandProtocol):
    service = "files"
    HELP = dict(CommandProtocol.HELP, **{
        "LIST": "LIST [mine|hidden]: public files, your own public files, or hidden files "
                "(your own; an admin's: all)",
        "INFO": "INFO <name> [password=P]: a protected file's sha256 needs its password "
                "unless it is yours",
        "CHECKSUM": "CHECKSUM <name> [password=P]: 200 sha256 <hex>",
        "UPLOAD": "UPLOAD <name> <size> [visibility=public|hidden] [password=P] [sha256=HEX] "
                  "[replace=yes]: 350, then exactly <size> raw bytes, then 226 stored {file}",
        "DOWNLOAD": "DOWNLOAD <name> [password=P] [offset=N]: 150 <n> bytes sha256=<hex>, "
                    "n raw bytes, 226",
        "DELETE": "DELETE <name>: owner or admin",
    })

    @property
    def app(self) -> FilesApp:
        return self.factory.app

    @property
    def files(self) -> FilesService:
        return self.factory.app.service

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

    @defer.inlineCallbacks
    def cmd_UPLOAD(self, args):
        (name, size_text), opts = _name_and_options(args, UPLOAD_OPTIONS, 2, self.HELP["UPLOAD"])
        size = parse_size(size_text)
        replace = _yes_no(opts["replace"], "replace") if "replace" in opts else False
        visibility = opts.get("visibility")
        yield self.app.whenReady()
        up = yield self.files.begin_upload(self.caller, name, size, visibility,
                                           opts.get("password"), opts.get("sha256"), replace)
        if self.transport is None or not self.transport.connected:
            up.abort()
            raise TemporaryError("connection lost before the upload started")

        restore = self._readInBigChunks()

        def finish():
            restore()
            return up.complete(journal=self.journal(226)).addCallback(
                lambda rec: Reply(226, "stored " + dumps(rec.to_wire())))

        def abort():
            restore()
            return up.abort()

        return ReceiveRaw(size, consumer=up.sink, finish=finish, abort=abort)

    def _readInBigChunks(self):
        """
        While an upload body comes in, read the socket RAW_READ bytes at a
        time instead of Twisted's 64 KiB: a quarter of the reactor turns and
        queue operations per byte.  @return: a callable restoring the old size.
        """
        transport = getattr(self.transport, "transport", self.transport)  # under TLS
        old = getattr(transport, "bufferSize", None)
        if not isinstance(old, int) or old >= RAW_READ:
            return lambda: None
        transport.bufferSize = RAW_READ

        def restore():
            transport.bufferSize = old

        return restore

    @defer.inlineCallbacks
    def cmd_DOWNLOAD(self, args):
        (name,), opts = _name_and_options(args, DOWNLOAD_OPTIONS, 1, self.HELP["DOWNLOAD"])
        offset = parse_size(opts["offset"], "offset") if "offset" in opts else 0
        prepared = yield self.files.open_download(self.caller, name, opts.get("password"),
                                                  offset)
        if self.transport is None or not self.transport.connected:
            prepared.reader.close()
            raise TemporaryError("connection lost before the download started")
        return SendRaw(prepared.remaining, prepared.sha256, prepared.reader,
                       done=prepared.reader.close)

    def cmd_DELETE(self, args):
        if len(args) != 1:
            raise BadArguments("usage: DELETE <name>")
        d = self.files.delete(self.caller, args[0], journal=self.journal(200))
        return d.addCallback(lambda rec: Reply(200, "deleted"))


def makeFactory(runtime, app=None):
    return CommandFactory(runtime, FilesProtocol, app=app if app is not None else FilesApp(runtime))

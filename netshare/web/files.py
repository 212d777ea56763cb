"""
files over HTTP (docs/http.md; the rules are docs/protocol.md section 2,
decided by L{FilesService<netshare.services.files.service.FilesService>},
the object the files port's C{LIST}, C{INFO}, C{UPLOAD}, C{DOWNLOAD},
C{DELETE} and C{QUOTA} call): nothing here decides who may see, store or
delete what; this module maps HTTP onto those calls.

Downloads.  C{GET /api/files/{name}} is C{DOWNLOAD}: the service checks
the name, the password of a protected file and its lockout before any
byte, and opens the content.  The response carries C{ETag: "<sha256>"},
C{Accept-Ranges: bytes} and C{Content-Disposition}; one byte range
(C{Range: bytes=a-b}, C{a-}, C{-n}) is a C{206} with C{Content-Range}, an
unsatisfiable one C{416}, several ranges or a malformed header are ignored
(the whole content, as HTTP allows), and C{If-Range} with another ETag
than the current one asks for the whole content again.  C{HEAD} answers
the same headers without the body (and ignores C{Range}, which HTTP
defines for GET only).  A file password travels in C{X-File-Password}; a
wrong or missing one is C{403} (code 535), not C{401}: the session is
fine, and a C{401} would tell the client to log in again.

The bytes are sent with backpressure, never more than one read ahead of
the socket: the unprotected content of a plain TCP connection is copied
by the kernel (C{sendfile}, L{netshare.protocols.sendfile.KernelCopy},
as the files port does), anything else (a protected file decrypted, TLS)
comes from the service's L{BlobReader} through L{_ReaderSender}, a push
producer on the response.  A download that makes no progress for
C{--idle-timeout} seconds is cut, as on the files port (twisted.web turns
its own idle timeout off while a response is being written).

Uploads.  C{PUT /api/files/{name}} is C{UPLOAD}, on a streaming route:
the handler runs as soon as the headers are in, so the service checks the
name, the size (C{Content-Length}, required: C{411} without), the quota
and the disk space before the first byte is read, then the body goes to
the service's upload sink as it arrives (the sink pauses the socket when
its queue is full).  C{X-File-Password} protects the file;
C{X-Content-SHA256} is checked by the sink (a mismatch is C{400}, code
554, and nothing is stored).
"""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from twisted.internet import defer
from twisted.internet.interfaces import IConsumer, IDelayedCall, IPushProducer, ISSLTransport
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from netshare.errors import BadArguments, BadCredentials, TemporaryError
from netshare.protocols.sendfile import CopyStopped, KernelCopy
from netshare.protocols.words import yes_no
from netshare.services.files.download import BlobReader, DownloadStopped
from netshare.services.files.service import FilesService, PreparedDownload
from netshare.web.app import Call, HttpError, Response, Router, Streaming

PASSWORD_HEADER = b"x-file-password"
SHA256_HEADER = "X-Content-SHA256"
OCTET_STREAM = b"application/octet-stream"
#: Socket reads while an upload body comes in (as the files port's
#: UPLOAD: a quarter of the reactor turns of Twisted's 64 KiB).
RAW_READ = 256 * 1024
#: How many times a download is looked up again when the file changes
#: between the lookups a range needs (a replace in between).
RANGE_TRIES = 3

_RANGE = re.compile(r"^\s*bytes\s*=\s*(\d{0,19})\s*-\s*(\d{0,19})\s*$", re.ASCII | re.IGNORECASE)

T = TypeVar("T")

log = Logger()


def _files(call: Call) -> FilesService:
    app: FilesService = call.app("files")
    return app


async def _password_checked(d: defer.Deferred[T]) -> T:
    """A service call that may check a file password: a wrong or missing
    one is 403 here (the session is not what is wrong)."""
    try:
        return await d
    except BadCredentials as e:
        raise HttpError(403, e.code, e.text) from None


def _file_password(call: Call) -> str | None:
    """C{X-File-Password}, as UTF-8 (passwords are text on every port)."""
    raw = call.request.getHeader(PASSWORD_HEADER)
    if raw is None:
        return None
    try:
        text: str = raw.decode("utf-8") if isinstance(raw, bytes) else str(raw)
    except UnicodeDecodeError:
        raise BadArguments("file password is not valid UTF-8") from None
    return text


def _quoted(name: str) -> str:
    return urllib.parse.quote(name, safe="")


def content_disposition(name: str) -> str:
    """C{attachment; filename*=UTF-8''<name, percent-encoded>} (RFC 6266,
    RFC 8187): any name survives, whatever its characters."""
    return "attachment; filename*=UTF-8''" + _quoted(name)


def etag_of(sha256: str) -> str:
    return '"%s"' % (sha256,)


# -- listing, meta, quota, delete


async def list_files(call: Call) -> dict[str, Any]:
    """C{GET /api/files?which=mine|hidden} (C{LIST}, the same visibility)."""
    which = call.arg("which")
    views = await _files(call).list(call.caller, which.lower() if which is not None else None)
    return {"items": [v.to_wire() for v in views]}


async def quota(call: Call) -> dict[str, Any]:
    """C{GET /api/quota} (C{QUOTA})."""
    view = await _files(call).quota(call.caller)
    return view.to_wire()


async def meta(call: Call) -> dict[str, Any]:
    """C{GET /api/files/{name}/meta} (C{INFO}; C{X-File-Password} shows a
    protected file's sha256 to others than its owner and admins)."""
    app = _files(call)
    view = await _password_checked(
        app.info(call.caller, call.params["name"], _file_password(call))
    )
    return view.to_wire()


async def delete_file(call: Call) -> None:
    """C{DELETE /api/files/{name}} (C{DELETE}: the owner or an admin)."""
    await _files(call).delete(call.caller, call.params["name"], journal=call.journal(204))


# -- upload


async def upload(call: Call) -> Response:
    """C{PUT /api/files/{name}?visibility=&replace=} (C{UPLOAD}); see the
    module docstring."""
    body = call.body
    assert body is not None, "PUT /api/files/{name} is a streaming route"
    if body.length is None:
        raise HttpError(411, 501, "Content-Length required: the size is checked before storing")
    replace_arg = call.arg("replace")
    replace = yes_no(replace_arg, "replace") if replace_arg is not None else False
    app = _files(call)
    await app.whenReady()
    up = await app.begin_upload(
        call.caller,
        call.params["name"],
        body.length,
        call.arg("visibility"),
        _file_password(call),
        call.header(SHA256_HEADER),
        replace,
    )
    if call.request.gone:
        up.abort()
        raise TemporaryError("connection lost before the upload started")
    restore = _read_in_big_chunks(call)
    try:
        body.deliverTo(up.sink)
        await body.received
    except Exception:
        up.abort()
        raise TemporaryError("connection lost before the whole body arrived") from None
    finally:
        restore()
    record = await up.complete(journal=call.journal(201))
    headers = [
        ("Location", "/api/files/" + _quoted(record.name)),
        ("ETag", etag_of(record.sha256)),
    ]
    return Response(201, record.to_wire(reveal_sha256=True), headers)


def _read_in_big_chunks(call: Call) -> Callable[[], None]:
    """While a body comes in, read the socket L{RAW_READ} bytes at a time
    (the files port does the same for UPLOAD).  @return: the undo."""
    channel = getattr(call.request, "channel", None)
    transport: Any = getattr(channel, "transport", None)
    transport = getattr(transport, "transport", transport)  # under TLS: the TCP one
    old = getattr(transport, "bufferSize", None)
    if not isinstance(old, int) or old >= RAW_READ:
        return lambda: None
    transport.bufferSize = RAW_READ

    def restore() -> None:
        transport.bufferSize = old

    return restore


# -- download


@dataclass(frozen=True)
class ByteRange:
    """One C{Range: bytes=...} as asked: C{first}-C{last} (C{last} None:
    to the end), or the last C{suffix} bytes."""

    first: int | None
    last: int | None
    suffix: int | None = None

    def resolve(self, size: int) -> tuple[int, int] | None:
        """The first and last byte for a file of C{size} bytes; None when
        unsatisfiable (416)."""
        if self.suffix is not None:
            if self.suffix == 0 or size == 0:
                return None
            return max(0, size - self.suffix), size - 1
        assert self.first is not None
        if self.first >= size:
            return None
        last = size - 1 if self.last is None else min(self.last, size - 1)
        return self.first, last


def parse_range(value: str | None) -> ByteRange | None:
    """
    A C{Range} header: one byte range, or None for none, for several
    (a multipart answer is not offered: the whole content is) and for a
    malformed one (ignored, as HTTP says).
    """
    if value is None:
        return None
    m = _RANGE.match(value)
    if m is None:
        return None
    first, last = m.group(1), m.group(2)
    if first:
        a = int(first)
        b = int(last) if last else None
        if b is not None and b < a:
            return None
        return ByteRange(a, b)
    if last:
        return ByteRange(None, None, int(last))
    return None


def _if_range_holds(value: str | None, sha256: str) -> bool:
    """C{If-Range}: the range applies only if the client's strong ETag is
    the current one (a date or a weak tag never matches: ours are hashes)."""
    return value is None or value.strip() == etag_of(sha256)


@dataclass
class _Plan:
    """What a download sends: the opened content, the status, the first
    byte and how many (the reader already limited to it)."""

    prepared: PreparedDownload
    status: int
    first: int
    length: int

    @property
    def size(self) -> int:
        return self.prepared.record.size


async def _open(call: Call, name: str, password: str | None, offset: int) -> PreparedDownload:
    app = _files(call)
    return await _password_checked(app.open_download(call.caller, name, password, offset))


async def _plan(call: Call, name: str, password: str | None) -> _Plan:
    """
    Open the download the request asks for.  A range that starts at a
    known byte opens there (one lookup); the last C{n} bytes need the size
    first (C{INFO}, which needs no password); a changed file (If-Range)
    is opened again from byte 0.  Every lookup is the service's, with its
    checks; the few cases that need two re-check a size that changed in
    between.
    """
    head = call.method == "HEAD"
    wanted = None if head else parse_range(call.header("Range"))
    if_range = call.header("If-Range")
    for _ in range(RANGE_TRIES):
        start = 0
        expected_size = None
        if wanted is not None and wanted.suffix is not None:
            view = await _password_checked(_files(call).info(call.caller, name))
            expected_size = view.record.size
            span = wanted.resolve(expected_size)
            start = span[0] if span is not None else 0
        elif wanted is not None:
            assert wanted.first is not None
            start = wanted.first
        try:
            prepared = await _open(call, name, password, start)
        except BadArguments:
            if start == 0:
                raise
            prepared = await _open(call, name, password, 0)  # starts past the end: 416 below
        reader = prepared.reader
        size = prepared.record.size
        if expected_size is not None and size != expected_size:
            reader.close()  # replaced in between: again
            continue
        if wanted is None or not _if_range_holds(if_range, prepared.sha256):
            if reader.offset:
                reader.close()  # a range of content that changed: the whole of it
                prepared = await _open(call, name, password, 0)
            return _Plan(prepared, 200, 0, prepared.record.size)
        span = wanted.resolve(size)
        if span is None:
            reader.close()
            raise HttpError(
                416,
                501,
                "range not satisfiable: the file has %d bytes" % (size,),
                [("Content-Range", "bytes */%d" % (size,))],
            )
        first, last = span
        if first != reader.offset:  # (only after a fallback to byte 0)
            reader.close()
            prepared = await _open(call, name, password, first)
            if prepared.record.size != size:
                prepared.reader.close()
                continue
            reader = prepared.reader
        reader.limit(last - first + 1)  # stops after the range's last byte
        return _Plan(prepared, 206, first, last - first + 1)
    raise TemporaryError("the file changed while it was being opened; try again")


async def download(call: Call) -> Streaming:
    """C{GET} and C{HEAD /api/files/{name}} (C{DOWNLOAD}); see the module
    docstring."""
    name = call.params["name"]
    plan = await _plan(call, name, _file_password(call))
    reader = plan.prepared.reader
    request = call.request
    if request.gone:
        reader.close()
        raise TemporaryError("connection lost before the download started")
    record = plan.prepared.record
    request.setResponseCode(plan.status)
    headers = [
        ("Content-Type", OCTET_STREAM.decode("ascii")),
        ("Content-Length", "%d" % (plan.length,)),
        ("ETag", etag_of(plan.prepared.sha256)),
        ("Accept-Ranges", "bytes"),
        ("Content-Disposition", content_disposition(record.name)),
    ]
    if plan.status == 206:
        last = plan.first + plan.length - 1
        headers.append(("Content-Range", "bytes %d-%d/%d" % (plan.first, last, plan.size)))
    for key, value in headers:
        request.responseHeaders.setRawHeaders(key.encode("latin-1"), [value.encode("latin-1")])
    for key, value in call.extraHeaders:
        request.responseHeaders.addRawHeader(key.encode("latin-1"), value.encode("latin-1"))
    if call.method == "HEAD" or plan.length == 0:
        reader.close()
        request.write(b"")  # the head (a HEAD sends no body)
        request.finish()
        return Streaming(None, plan.status)
    sender = _kernel_sender(call, reader, plan) or _ReaderSender(call, reader)
    sender.start(plan.status)
    return Streaming(sender.done, plan.status)


class _Sender:
    """What both ways of sending a body share: the result (C{done} fires
    with the status to record), the stall timer, the end."""

    def __init__(self, call: Call):
        self.call = call
        self.request = call.request
        self.reactor = call.runtime.reactor
        self.done: defer.Deferred[int] = defer.Deferred()
        self.status = 200
        self.over = False
        self._idle = float(call.config.idle_timeout or 0)
        self._stall: IDelayedCall | None = None

    def _watch(self) -> None:
        if self._idle > 0:
            self._stall = self.reactor.callLater(self._idle, self._stalled)

    def _progress(self) -> None:
        stall = self._stall
        if stall is not None and stall.active():
            stall.reset(self._idle)

    def _stalled(self) -> None:
        self._stall = None
        if self.over:
            return
        log.info(
            "download to {peer} made no progress for {idle} s: closing",
            service="files",
            peer=self.call.peer,
            user=self.call.user,
            idle=self._idle,
        )
        self._abort()

    def _transport(self) -> Any:
        channel = getattr(self.request, "channel", None)
        return getattr(channel, "transport", None)

    def _abort(self) -> None:
        transport = self._transport()
        if transport is not None:
            transport.abortConnection()

    def _end(self, failure: Failure | None, stopped: type[Exception]) -> None:
        """The body is sent (C{failure} None), or cut: the client went away
        (C{stopped}) or the content could not be read (logged; the
        connection is aborted, since fewer bytes than announced went out)."""
        if self.over:
            return
        self.over = True
        if self._stall is not None and self._stall.active():
            self._stall.cancel()
        self._stall = None
        request = self.request
        status = self.status
        if failure is None:
            if not request.gone and not request.finished:
                request.finish()
        elif request.gone or failure.check(stopped):
            log.info(
                "download to {peer} cut short: {why}",
                service="files",
                peer=self.call.peer,
                user=self.call.user,
                why=failure.getErrorMessage(),
            )
        else:
            log.failure(
                "download to {peer} failed: closing",
                failure,
                service="files",
                peer=self.call.peer,
                user=self.call.user,
            )
            status = 500
            self._abort()
        self.done.callback(status)


@implementer(IPushProducer, IConsumer)
class _ReaderSender(_Sender):
    """
    Sends a L{BlobReader}'s bytes as the response body.

    The reader is a pull producer (one read per C{resumeProducing}); the
    response wants a push producer (paused when the socket's buffer is
    full, resumed once it drained).  This is both: the response's producer,
    and the reader's consumer.  While not paused it pulls one read after
    another; each is bigger than the transport's buffer, so in practice
    one read goes out per reactor turn the socket is writable.  A read the
    page cache cannot serve happens in a worker first (the reader calls
    L{write} when it is done), and pulling goes on from there.
    """

    def __init__(self, call: Call, reader: BlobReader):
        super().__init__(call)
        self.reader = reader
        self.paused = False
        self._pumping = False
        self._writes = 0
        self._kick: IDelayedCall | None = None

    def start(self, status: int) -> None:
        self.status = status
        self.request.registerProducer(self, True)
        self.request.notifyFinish().addErrback(self._lost)
        self.reader.beginFileTransfer(self).addCallbacks(self._sent, self._failed)
        self._watch()
        self._pump()

    # the response's producer

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
        self._pump()

    def stopProducing(self) -> None:
        if not self.over:
            self.reader.stopProducing()

    # the reader's consumer

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        pass  # (the reader: pulled by _pump)

    def unregisterProducer(self) -> None:
        pass

    def write(self, data: bytes) -> None:
        self._writes += 1
        self.request.write(data)  # may pause us at once (the buffer is full)
        self._progress()
        if not self._pumping and not self.paused and self._kick is None:
            # Written by the reader after a wait for the disk: go on pulling,
            # from a fresh call stack.
            self._kick = self.reactor.callLater(0, self._pump)

    def _pump(self) -> None:
        self._kick = None
        if self._pumping:
            return
        self._pumping = True
        try:
            while not self.paused and not self.over:
                before = self._writes
                self.reader.resumeProducing()
                if self._writes == before:
                    break  # waiting for the disk (it writes when woken), or over
        finally:
            self._pumping = False

    # the end

    def _lost(self, reason: Failure) -> None:
        if not self.over:
            self.reader.stopProducing()

    def _unregister(self) -> None:
        if self._kick is not None and self._kick.active():
            self._kick.cancel()
        self._kick = None
        request = self.request
        if request.producer is not None and request.channel is not None:
            request.unregisterProducer()

    def _sent(self, _: object) -> None:
        self._unregister()
        self._end(None, DownloadStopped)

    def _failed(self, failure: Failure) -> None:
        self._unregister()
        self._end(failure, DownloadStopped)


class _KernelSender(_Sender):
    """
    Sends an unprotected file's bytes with the kernel's C{sendfile}, as the
    files port does (L{KernelCopy}: a worker thread owns the socket's
    sending side until the last byte).

    KernelCopy registers on the TCP transport as its pull producer, and the
    transport has one: the HTTP channel, which twisted.web registers so it
    hears of a full buffer.  For the copy the channel steps aside
    (C{transport.unregisterProducer}) and is registered again after it; in
    between nothing else writes (the channel answers requests in order,
    and this one's head is written before the copy starts: the copy begins
    once the transport's buffer holding it is empty).
    """

    def __init__(self, call: Call, reader: BlobReader, offset: int, count: int):
        super().__init__(call)
        self.reader = reader
        self.offset = offset
        self.count = count
        self.channel: Any = call.request.channel
        self.transport: Any = self.channel.transport
        self.sent = 0

    def start(self, status: int) -> None:
        self.status = status
        request = self.request
        request.write(b"")  # the status line and headers, into the transport's buffer
        transport = self.transport
        fd = self.reader.kernelSource()
        assert fd is not None
        transport.unregisterProducer()
        copy = KernelCopy(
            transport,
            self.reactor,
            fd[0],
            self.offset,
            self.count,
            self.reader.close,
            self._wrote,
        )
        self.call.site.stats.sendfile_downloads += 1
        self._watch()
        copy.start().addCallbacks(self._sent, self._failed)

    def _wrote(self, n: int) -> None:
        self.sent += n
        self.request.sentBytes += n
        self.channel.countOut(n)
        self._progress()

    def _restore(self) -> None:
        transport = self.transport
        if transport.connected and getattr(transport, "producer", None) is None:
            transport.registerProducer(self.channel, True)

    def _sent(self, _: object) -> None:
        self._restore()
        self._end(None, CopyStopped)

    def _failed(self, failure: Failure) -> None:
        self._restore()
        if failure.check(CopyStopped) and self.sent == self.count:
            # Every byte went out, and the client closed the connection
            # before the copy's end reached this thread: sent, not cut.
            self._end(None, CopyStopped)
            return
        self._end(failure, CopyStopped)


def _kernel_sender(call: Call, reader: BlobReader, plan: _Plan) -> _KernelSender | None:
    """A L{_KernelSender} when the bytes are the file's own (unprotected),
    the connection plain TCP, C{--sendfile} on, a copy slot free, and the
    channel the transport's producer (as twisted.web sets it up)."""
    if reader.kernelSource() is None or not call.config.sendfile:
        return None
    channel = getattr(call.request, "channel", None)
    transport = getattr(channel, "transport", None)
    if (
        transport is None
        or ISSLTransport.providedBy(transport)
        or not hasattr(transport, "fileno")
        or not getattr(transport, "connected", False)
        or getattr(transport, "producer", None) is not channel
        or not hasattr(call.runtime.reactor, "callInThread")
        or not KernelCopy.available()
    ):
        return None
    return _KernelSender(call, reader, plan.first, plan.length)


def register(router: Router, runtime: Any) -> None:
    router.add("GET", "/api/files", list_files, service="files")
    router.add("GET", "/api/quota", quota, service="files")
    router.add("GET", "/api/files/{name}/meta", meta, service="files")
    router.add("GET", "/api/files/{name}", download, service="files")
    router.add("PUT", "/api/files/{name}", upload, service="files", stream=True)
    router.add("DELETE", "/api/files/{name}", delete_file, service="files")

"""
C{netshare-files}: the files client program (docs/protocol.md section 2).

::

    netshare-files [--host H --port P --user U --tls --cafile F] [--json] COMMAND ...

    list [--mine | --hidden]                 public files (yours; hidden ones: yours, admin: all)
    info NAME
    upload PATH [--name N] [--hidden] [--protect] [--replace]
    download NAME [-o PATH]
    delete NAME
    checksum NAME [PATH]                     the server's sha256, or compare with PATH
    register                                 create the account --user
    history [--limit N] [--for-user U]

The account password comes from C{NETSHARE_PASSWORD} or a prompt, never
from the command line.  A file password (C{upload --protect}, C{download}
of a protected file) comes from C{NETSHARE_FILE_PASSWORD} or a prompt.

B{upload} is resumable and verified (docs/protocol.md section 2.A.3): it
asks the server how much of an interrupted upload of the same name and size
it keeps (C{PARTIAL}), hashes that much of the local file (shown as
"verifying"; compared with the server's own hash of it when the server
knows it), then sends the rest with C{UPLOAD ... resume=yes offset=N
sha256=trailer}, hashing as it sends, and ends with the SHA-256 of the
whole, which the server checks (C{554} otherwise).  So the bar starts at
once, whatever the size, and nothing becomes visible unless all of it
arrived intact.  If the upload is cut (Ctrl-C, a lost connection, a server
restart) the server keeps what it received, and the same command continues
from there.  If the resumed upload fails its check (the local file changed),
or the server's partial turns out unusable, it starts once from the
beginning.  A server without C{PARTIAL} gets the old form (the file hashed
first, C{sha256=} up front).

B{download} writes into a partial file beside the destination,
C{.<name>.<first 16 hex digits of the sha256>.part}, verifies the SHA-256
of the whole file against the one the server announced, and only then
renames it to the destination.  If the transfer is cut off, the partial
file stays; running the same command again resumes it with C{offset=}
(its bytes are re-hashed first, shown as "verifying", so the final check
still covers the whole file).  A partial file of other content (the file
was replaced on the server meanwhile) is never mixed in: its name carries
the checksum it belongs to.

Progress (bytes done and total, rate, time left; C{tqdm}) is drawn on
stderr when it is a terminal; nothing when piped.  Exit statuses
(L{netshare.clients.common}): 0 ok, 1 refused by the server (its reply line
on stderr) or a local integrity failure, 2 usage, 3 connection problem,
130 interrupted (Ctrl-C; what was transferred is kept for the next run).
"""

from __future__ import annotations

import argparse
import getpass
import hashlib
import os
import stat
import sys
import time
from typing import IO, Any

from tqdm import tqdm  # type: ignore[import-untyped]  # (no stubs shipped)
from twisted.internet import defer, threads

from netshare.clients import common
from netshare.clients.files_args import PROG, SIMPLE, build_parser
from netshare.clients.protocol import ClientProtocol, CommandFailed, Response, connect, quote

READ_SIZE = 1024 * 1024
#: Bytes hashed per worker-thread job when a prefix is verified: small
#: enough for a prompt Ctrl-C and a smooth bar.
VERIFY_SLICE = 16 * READ_SIZE
#: Seconds between PINGs while a long prefix is verified (the server closes
#: a connection idle for its idle timeout, 300 s by default).
KEEPALIVE = 60.0


class LocalFailure(Exception):
    """Something went wrong on this side (exit status C{code}, message on stderr)."""

    def __init__(self, message: str, code: int = common.EXIT_REFUSED) -> None:
        super().__init__(message)
        self.code = code


# -- helpers ----------------------------------------------------------------------


def progress_bar(total: int, desc: str, initial: int = 0, stream: IO[str] | None = None) -> tqdm:
    """
    A transfer's progress on C{stream} (stderr): bytes done of C{total},
    rate and time left, from C{initial} (the bytes a resumed transfer
    already has).  Drawn only on a terminal; elsewhere a silent no-op.
    Call C{update(nbytes)} per chunk, C{close()} at the end.
    """
    stream = stream if stream is not None else sys.stderr
    terminal = hasattr(stream, "isatty") and stream.isatty()
    sized = terminal and _has_size(stream)
    return tqdm(
        total=total,
        initial=initial,
        desc=desc,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        file=stream,
        disable=not terminal,
        # A terminal that reports no size (a bare pty) would get no bar at
        # all from tqdm: draw 80 columns then.
        ncols=None if sized else 80,
        nrows=None if sized else 24,
        dynamic_ncols=sized,
        mininterval=0.2,
        smoothing=0.1,
    )


def _has_size(stream: IO[str]) -> bool:
    """Whether the terminal C{stream} is on reports its width and height."""
    try:
        size = os.get_terminal_size(stream.fileno())
    except (AttributeError, OSError, ValueError):
        return False
    return size.columns > 0 and size.lines > 0


def file_password(confirm: bool = False) -> str:
    """C{NETSHARE_FILE_PASSWORD}, else a prompt (twice to confirm a new one)."""
    env = os.environ.get("NETSHARE_FILE_PASSWORD")
    if env is not None:
        return env
    if not sys.stdin.isatty():
        raise LocalFailure(
            "a file password is needed: set NETSHARE_FILE_PASSWORD or run on a terminal",
            common.EXIT_USAGE,
        )
    first = getpass.getpass("File password: ")
    if confirm and getpass.getpass("File password again: ") != first:
        raise LocalFailure("file passwords do not match", common.EXIT_USAGE)
    return first


def partial_path(dest: str, sha256: str) -> str:
    """Where a download of content C{sha256} to C{dest} is assembled."""
    folder, base = os.path.split(os.path.abspath(dest))
    name = ".%s.%s.part" % (base, sha256[:16])
    if len(name.encode("utf-8", "surrogateescape")) > 255:
        digest = hashlib.sha256(base.encode("utf-8", "surrogateescape")).hexdigest()[:16]
        name = ".netshare-%s.%s.part" % (digest, sha256[:16])
    return os.path.join(folder, name)


async def hash_prefix(
    path: str, length: int, desc: str = "verifying", proto: ClientProtocol | None = None
) -> Any:
    """
    The SHA-256 state after the first C{length} bytes of a local file,
    computed in worker threads a slice at a time (the reactor stays free:
    Ctrl-C stops it at once), shown as C{desc} on the bar.  With C{proto},
    the connection is kept alive meanwhile (a PING a minute).
    @return: the hasher.
    """
    h = hashlib.sha256()
    bar = progress_bar(length, desc)
    pinged = time.monotonic()
    try:
        with open(path, "rb") as f:
            done = 0
            while done < length:
                n = await threads.deferToThread(
                    _hash_slice, f, h, min(VERIFY_SLICE, length - done)
                )
                if n == 0:
                    raise LocalFailure("%s: shorter than %d bytes" % (path, length))
                done += n
                bar.update(n)
                if proto is not None and time.monotonic() - pinged > KEEPALIVE:
                    await proto.command("PING")
                    pinged = time.monotonic()
    finally:
        bar.close()
    return h


def _hash_slice(f: IO[bytes], h: Any, n: int) -> int:
    """(worker thread) Hash the next C{n} bytes of C{f}; @return: bytes read."""
    done = 0
    while done < n:
        block = f.read(min(READ_SIZE, n - done))
        if not block:
            break
        h.update(block)
        done += len(block)
    return done


class UploadSource:
    """
    What an upload reads after its C{350}: the local file from where the
    server's copy ends, hashed on the way (C{hasher} already holds the bytes
    before), then, with C{trailer}, the hex SHA-256 of the whole (the
    checksum is computed while sending: no pass over the file before).

    @ivar sent: content bytes handed out so far.
    @ivar short: set when the file ended before its size (it changed).
    """

    def __init__(self, f: IO[bytes], hasher: Any, length: int, trailer: bool = True) -> None:
        self._f = f
        self._hasher = hasher
        self._left = length
        self._trailer = trailer
        self._tail: bytes | None = None
        self.sent = 0
        self.short = False

    def read(self, n: int = -1, /) -> bytes:
        if self._left > 0:
            data = self._f.read(self._left if n < 0 else min(n, self._left))
            if not data:
                self.short = True  # the transfer ends short: the server refuses it
                self._left = 0
                return b""
            self._left -= len(data)
            self.sent += len(data)
            self._hasher.update(data)
            return data
        if self.short:
            return b""
        if self._tail is None:
            self._tail = self._hasher.hexdigest().encode("ascii") if self._trailer else b""
        out, self._tail = (self._tail, b"") if n < 0 else (self._tail[:n], self._tail[n:])
        return out


class HashingWriter:
    """The download sink: appends to the partial file and hashes as it goes."""

    def __init__(self, f: IO[bytes], hasher: Any) -> None:
        self.f = f
        self.hasher = hasher
        self.written = 0

    def write(self, data: bytes) -> None:
        self.f.write(data)
        self.hasher.update(data)
        self.written += len(data)


_one = common.one_command


# -- commands ---------------------------------------------------------------------


async def run_simple(reactor: Any, args: argparse.Namespace) -> int | None:
    """A one-request command of L{SIMPLE}, as the quick path runs it
    (L{netshare.clients.quick}): the same request, the same output."""
    simple = SIMPLE[args.command]
    return simple.present(args, await _one(reactor, args, simple.request(args)))


async def cmd_checksum(reactor: Any, args: argparse.Namespace) -> int | None:
    if args.path is None:
        return await run_simple(reactor, args)
    resp = await _one(reactor, args, quote("CHECKSUM", args.name))
    remote = resp.text.split()[-1]
    path = _regular_file(args.path)
    local = (await hash_prefix(path, os.path.getsize(path), "hashing")).hexdigest()
    same = local == remote
    common.emit(
        args,
        {"name": args.name, "sha256": remote, "local": local, "match": same},
        text="%s: %s (server %s, %s %s)"
        % (args.name, "match" if same else "DIFFERENT", remote, args.path, local),
    )
    if not same:
        return common.EXIT_REFUSED
    return None


async def cmd_register(reactor: Any, args: argparse.Namespace) -> None:
    if not args.user:
        raise common.UsageError("--user is required (or set NETSHARE_USER)")
    secret = os.environ.get("NETSHARE_PASSWORD")
    if secret is None:
        secret = getpass.getpass("New password for %s: " % (args.user,))
        if getpass.getpass("Again: ") != secret:
            raise LocalFailure("passwords do not match", common.EXIT_USAGE)
    proto = await connect(
        args.host,
        args.port,
        tls=args.tls,
        cafile=args.cafile,
        hostname=args.hostname,
        reactor=reactor,
        timeout=args.timeout,
    )
    try:
        resp = common.checked(await proto.command(quote("REGISTER", args.user, secret)))
    finally:
        await common.close(proto)
    common.emit(args, {"registered": args.user}, text=resp.text)


def _regular_file(path: str) -> str:
    try:
        st = os.stat(path)
    except OSError as e:
        raise LocalFailure("%s: %s" % (path, e.strerror)) from None
    if not stat.S_ISREG(st.st_mode):
        raise LocalFailure("%s: not a regular file" % (path,))
    return path


async def cmd_upload(reactor: Any, args: argparse.Namespace) -> None:
    if not args.user:
        raise common.UsageError("--user is required (or set NETSHARE_USER)")
    path = _regular_file(args.path)
    name = args.name if args.name is not None else os.path.basename(os.path.abspath(path))
    size = os.path.getsize(path)
    protect = file_password(confirm=True) if args.protect else None
    options = []
    if args.hidden:
        options.append("visibility=hidden")
    if protect is not None:
        options.append("password=" + protect)
    if args.replace:
        options.append("replace=yes")
    proto = await common.open_session(reactor, args)
    state = _UploadState(size)
    try:
        resp = await _upload(proto, path, name, size, options, state)
    except defer.CancelledError:
        # Ctrl-C (see netshare.clients.common.run): the server keeps what it got.
        sys.stderr.write("%s: %s; %s\n" % (PROG, state.where(), state.advice()))
        raise
    except ConnectionError as e:
        raise LocalFailure(
            "connection lost %s (%s); %s" % (state.where(interrupted=False), e, state.advice()),
            common.EXIT_CONNECT,
        ) from None
    finally:
        await common.close(proto)
    common.checked(resp)
    stored = resp.obj or {}
    common.emit(
        args,
        dict(stored, resumed_from=state.offset),
        text="stored %s (%d bytes, sha256 %s%s)"
        % (
            stored.get("name", name),
            stored.get("size", size),
            stored.get("sha256"),
            ", resumed at %d" % state.offset if state.offset else "",
        ),
    )


class _UploadState:
    """Where an upload is, for the message when it is cut."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.offset = 0
        self.source: UploadSource | None = None
        self.resumable = True  # False for a server from before resumable uploads

    def advice(self) -> str:
        if self.resumable:
            return "the server keeps what it received: run the same command again to resume"
        return "this server cannot resume uploads: run the same command again to upload it"

    def where(self, interrupted: bool = True) -> str:
        if self.source is None:
            return "interrupted before sending" if interrupted else "before sending"
        sent = self.offset + self.source.sent
        return "%safter sending %d of %d bytes" % (
            "interrupted " if interrupted else "",
            sent,
            self.size,
        )


def _note(text: str) -> None:
    sys.stderr.write("%s: %s\n" % (PROG, text))
    sys.stderr.flush()


async def _upload(
    proto: ClientProtocol,
    path: str,
    name: str,
    size: int,
    options: list[str],
    state: _UploadState,
) -> Response:
    """
    Upload C{path} as C{name}, continuing the server's interrupted upload of
    it if there is one (see the module docstring).  @return: the final reply.
    """
    resp = await proto.command(quote("PARTIAL", name, size))
    if resp.code == 500:  # a server from before resumable uploads
        return await _upload_whole(proto, path, name, size, options, state)
    kept = common.checked(resp).obj or {}
    protect = any(o.startswith("password=") for o in options)
    offset = int(kept.get("offset") or 0)
    if bool(kept.get("protected")) != protect:
        offset = 0  # protected then and not now (or the reverse): start afresh
    retried = False
    while True:
        hasher = await hash_prefix(path, offset, proto=proto) if offset else hashlib.sha256()
        known = kept.get("prefix_sha256")
        if offset and known and hasher.hexdigest() != known:
            _note(
                "the server's interrupted upload of %s holds other content (the local "
                "file changed?): uploading from the start" % (name,)
            )
            offset, hasher = 0, hashlib.sha256()
        state.offset = offset
        words = ["UPLOAD", name, size, "sha256=trailer", "resume=yes"]
        if offset:
            words.append("offset=%d" % offset)
        resp = await _send(proto, path, quote(*words + options), size, offset, hasher, state)
        if resp.ok or not offset or retried or resp.code not in (535, 550, 554):
            return resp
        # 550: the partial expired meanwhile; 554: it did not match the local
        # file (which changed) or was damaged, and the server dropped it;
        # 535: it was protected with another password.
        _note("resuming at %d failed (%s): uploading from the start" % (offset, resp.line))
        offset, kept, retried = 0, {}, True


async def _send(
    proto: ClientProtocol,
    path: str,
    line: str,
    size: int,
    offset: int,
    hasher: Any,
    state: _UploadState,
    trailer: bool = True,
) -> Response:
    """Send UPLOAD C{line}, then the file from C{offset} (and the trailer)."""
    bar = progress_bar(size, "upload", initial=offset)
    with open(path, "rb") as f:
        f.seek(offset)
        source = state.source = UploadSource(f, hasher, size - offset, trailer)
        left = [size - offset]

        def progress(n: int) -> None:
            n = min(n, left[0])  # (the trailer is not content)
            left[0] -= n
            bar.update(n)

        try:
            resp = await proto.upload(line, source, progress=progress)
        finally:
            bar.close()
    if source.short:
        raise LocalFailure("%s changed during the upload (it is shorter now)" % (path,))
    return resp


async def _upload_whole(
    proto: ClientProtocol,
    path: str,
    name: str,
    size: int,
    options: list[str],
    state: _UploadState,
) -> Response:
    """The form every server takes: the file hashed first (shown), its
    sha256= up front, no resuming."""
    state.resumable = False
    digest = (await hash_prefix(path, size, "hashing", proto)).hexdigest()
    line = quote("UPLOAD", name, size, "sha256=" + digest, *options)
    return await _send(proto, path, line, size, 0, hashlib.sha256(), state, trailer=False)


async def cmd_download(reactor: Any, args: argparse.Namespace) -> None:
    proto = await common.open_session(reactor, args)
    try:
        return await _download(proto, args)
    finally:
        await common.close(proto)


async def _download(proto: ClientProtocol, args: argparse.Namespace, retry: bool = True) -> None:
    info = common.checked(await proto.command(quote("INFO", args.name))).obj
    secret = file_password() if info.get("protected") else None
    if info.get("sha256") is None and secret is not None:
        # A protected file of someone else's: its checksum needs its password.
        info = common.checked(
            await proto.command(quote("INFO", args.name, "password=" + secret))
        ).obj
    expected, size = info["sha256"], int(info["size"])
    dest = args.output if args.output is not None else info["name"]
    if os.path.isdir(dest):
        dest = os.path.join(dest, info["name"])
    part = partial_path(dest, expected)
    _remove_stale_partials(dest, part)

    offset = 0
    if os.path.exists(part):
        offset = os.path.getsize(part)
        if offset > size:
            os.unlink(part)
            offset = 0
    hasher = await hash_prefix(part, offset, proto=proto) if offset else hashlib.sha256()
    words = ["DOWNLOAD", args.name]
    if secret is not None:
        words.append("password=" + secret)
    if offset:
        words.append("offset=%d" % offset)
    bar = progress_bar(size, "download", initial=offset)
    created = not os.path.exists(part)
    with open(part, "ab") as f:
        writer = HashingWriter(f, hasher)
        try:
            resp = await proto.download(quote(*words), writer, progress=bar.update)
        except defer.CancelledError:
            # Ctrl-C (see netshare.clients.common.run): keep what arrived.
            bar.close()
            f.flush()
            sys.stderr.write(
                "%s: interrupted after %d of %d bytes; the partial file %s is kept: run "
                "the same command again to resume\n" % (PROG, offset + writer.written, size, part)
            )
            raise
        except ConnectionError as e:
            bar.close()
            f.flush()
            raise LocalFailure(
                "connection lost after %d of %d bytes (%s); the partial file %s "
                "is kept: run the same command again to resume"
                % (offset + writer.written, size, e, part),
                common.EXIT_CONNECT,
            ) from None
        f.flush()
        os.fsync(f.fileno())
    bar.close()
    if not resp.ok:
        if created and os.path.getsize(part) == 0:
            os.unlink(part)
        raise CommandFailed(resp)
    announced = resp.lines[0].rsplit("sha256=", 1)[-1] if resp.lines else ""
    if announced != expected:
        # Replaced on the server between INFO and DOWNLOAD: the bytes before
        # the offset belong to the old content.
        os.unlink(part)
        if retry:
            return await _download(proto, args, retry=False)
        raise LocalFailure(
            "%s changed on the server during the download; try again" % (args.name,)
        )
    got = hasher.hexdigest()
    if got != expected or offset + writer.written != size:
        os.unlink(part)
        raise LocalFailure(
            "checksum mismatch for %s: expected %s, got %s (partial file removed)"
            % (args.name, expected, got)
        )
    os.replace(part, dest)
    fsync_dir(os.path.dirname(os.path.abspath(dest)))
    common.emit(
        args,
        {"name": info["name"], "path": dest, "size": size, "sha256": got, "resumed_from": offset},
        text="downloaded %s to %s (%d bytes%s, sha256 verified)"
        % (info["name"], dest, size, ", resumed at %d" % offset if offset else ""),
    )


def _remove_stale_partials(dest: str, keep: str) -> None:
    """Partial files of the same destination for other content are useless."""
    folder, base = os.path.split(os.path.abspath(dest))
    prefix = "." + base + "."
    try:
        names = os.listdir(folder)
    except OSError:
        return
    for n in names:
        p = os.path.join(folder, n)
        if (
            n.startswith(prefix)
            and n.endswith(".part")
            and len(n) == len(prefix) + 21
            and p != keep
        ):
            try:
                os.unlink(p)
            except OSError:
                pass


def fsync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


async def cmd_logout(reactor: Any, args: argparse.Namespace) -> int:
    from netshare.clients.quick import logout

    return logout(args)


COMMANDS = {
    "list": run_simple,
    "info": run_simple,
    "upload": cmd_upload,
    "download": cmd_download,
    "delete": run_simple,
    "checksum": cmd_checksum,
    "register": cmd_register,
    "history": run_simple,
    "sessions": run_simple,
    "logout": cmd_logout,
}


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    handler = COMMANDS[args.command]

    async def guarded(reactor: Any) -> int | None:
        try:
            return await handler(reactor, args)
        except LocalFailure as e:
            sys.stderr.write("%s: %s\n" % (PROG, e))
            sys.stderr.flush()
            return e.code

    common.run(args, guarded, prog=PROG)


if __name__ == "__main__":
    main()

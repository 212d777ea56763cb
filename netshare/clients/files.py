"""
C{netshare-files}: the files client program (docs/protocol.md section 2).

::

    netshare-files [--host H --port P --user U --tls --cafile F] [--json] COMMAND ...

    list [--mine | --hidden]                 public files (yours; hidden ones: admin)
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

B{upload} hashes the file first and sends C{sha256=}, so the server refuses
(554) content that changed or was damaged on the way; nothing becomes
visible unless all of it arrived intact.

B{download} writes into a partial file beside the destination,
C{.<name>.<first 16 hex digits of the sha256>.part}, verifies the SHA-256
of the whole file against the one the server announced, and only then
renames it to the destination.  If the transfer is cut off, the partial
file stays; running the same command again resumes it with C{offset=}
(its bytes are re-hashed first, so the final check still covers the whole
file).  A partial file of other content (the file was replaced on the
server meanwhile) is never mixed in: its name carries the checksum it
belongs to.

A progress bar with the rate and the time left is drawn on stderr when it
is a terminal; nothing when piped.  Exit statuses (L{netshare.clients.common}):
0 ok, 1 refused by the server (its reply line on stderr) or a local
integrity failure, 2 usage, 3 connection problem.
"""

from __future__ import annotations

import argparse
import getpass
import hashlib
import os
import stat
import sys
from typing import IO, Any

from twisted.internet import defer

from netshare.clients import common
from netshare.clients.files_args import PROG, build_parser
from netshare.clients.protocol import ClientProtocol, CommandFailed, connect, quote

READ_SIZE = 1024 * 1024
FILE_COLUMNS = ["name", "size", "owner", "visibility", "protected", "created"]
INFO_COLUMNS = ["name", "size", "sha256", "owner", "visibility", "protected", "created"]
HISTORY_COLUMNS = ["id", "ts", "user", "service", "command", "code"]


class LocalFailure(Exception):
    """Something went wrong on this side (exit status C{code}, message on stderr)."""

    def __init__(self, message: str, code: int = common.EXIT_REFUSED) -> None:
        super().__init__(message)
        self.code = code


# -- helpers ----------------------------------------------------------------------


class TransferProgress(common.ProgressBar):
    """The shared progress bar plus the time left (ETA)."""

    def render(self, now: float | None = None) -> str:
        now = self.clock() if now is None else now
        text = super().render(now)
        elapsed = now - self.started
        if self.done >= self.total:
            return text + "  done in %s" % (_duration(elapsed),)
        if self.done and elapsed > 0:
            eta = (self.total - self.done) * elapsed / self.done
            return text + "  ETA %s" % (_duration(eta),)
        return text + "  ETA --:--"

    def abort(self) -> None:
        """End the bar's line after a failure (the error message follows)."""
        if self.enabled and self.done:
            self.stream.write("\n")
            self.stream.flush()


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return "%d:%02d:%02d" % (h, m, s) if h else "%d:%02d" % (m, s)


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


def sha256_of(path: str, limit: int | None = None) -> Any:
    """SHA-256 of a local file (of its first C{limit} bytes); returns the hasher."""
    h = hashlib.sha256()
    left = limit
    with open(path, "rb") as f:
        while left is None or left > 0:
            block = f.read(READ_SIZE if left is None else min(READ_SIZE, left))
            if not block:
                break
            h.update(block)
            if left is not None:
                left -= len(block)
    return h


def partial_path(dest: str, sha256: str) -> str:
    """Where a download of content C{sha256} to C{dest} is assembled."""
    folder, base = os.path.split(os.path.abspath(dest))
    name = ".%s.%s.part" % (base, sha256[:16])
    if len(name.encode("utf-8", "surrogateescape")) > 255:
        digest = hashlib.sha256(base.encode("utf-8", "surrogateescape")).hexdigest()[:16]
        name = ".netshare-%s.%s.part" % (digest, sha256[:16])
    return os.path.join(folder, name)


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


async def cmd_list(reactor: Any, args: argparse.Namespace) -> None:
    words = ["LIST"] + (["mine"] if args.mine else ["hidden"] if args.hidden else [])
    resp = await _one(reactor, args, quote(*words))
    common.emit(args, resp.items, FILE_COLUMNS)


async def cmd_info(reactor: Any, args: argparse.Namespace) -> None:
    resp = await _one(reactor, args, quote("INFO", args.name))
    common.emit(args, resp.obj, INFO_COLUMNS)


async def cmd_delete(reactor: Any, args: argparse.Namespace) -> None:
    await _one(reactor, args, quote("DELETE", args.name))
    common.emit(args, {"deleted": args.name}, text="deleted %s" % (args.name,))


async def cmd_checksum(reactor: Any, args: argparse.Namespace) -> int | None:
    resp = await _one(reactor, args, quote("CHECKSUM", args.name))
    remote = resp.text.split()[-1]
    if args.path is None:
        common.emit(args, {"name": args.name, "sha256": remote}, text=remote)
        return None
    local = sha256_of(_regular_file(args.path)).hexdigest()
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


async def cmd_history(reactor: Any, args: argparse.Namespace) -> None:
    words = ["HISTORY"]
    if args.limit is not None:
        words.append("limit=%d" % args.limit)
    if args.for_user is not None:
        words.append("user=" + args.for_user)
    resp = await _one(reactor, args, quote(*words))
    common.emit(args, resp.items, HISTORY_COLUMNS)


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
    secret = common.password(args)
    protect = file_password(confirm=True) if args.protect else None
    digest = sha256_of(path).hexdigest()
    words = ["UPLOAD", name, size, "sha256=" + digest]
    if args.hidden:
        words.append("visibility=hidden")
    if protect is not None:
        words.append("password=" + protect)
    if args.replace:
        words.append("replace=yes")
    proto = await common.open_session(reactor, args, secret)
    try:
        bar = TransferProgress(size, "upload")
        with open(path, "rb") as source:
            try:
                resp = await proto.upload(quote(*words), source, progress=bar)
            except BaseException:
                bar.abort()
                raise
        if resp.code == 226:
            bar.finish()
        else:
            bar.abort()
        common.checked(resp)
    finally:
        await common.close(proto)
    stored = resp.obj or {}
    common.emit(
        args,
        stored,
        text="stored %s (%d bytes, sha256 %s)"
        % (stored.get("name", name), stored.get("size", size), stored.get("sha256", digest)),
    )


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
    hasher = sha256_of(part, offset) if offset else hashlib.sha256()
    words = ["DOWNLOAD", args.name]
    if secret is not None:
        words.append("password=" + secret)
    if offset:
        words.append("offset=%d" % offset)
    bar = TransferProgress(size - offset, "download")
    created = not os.path.exists(part)
    with open(part, "ab") as f:
        writer = HashingWriter(f, hasher)
        try:
            resp = await proto.download(quote(*words), writer, progress=bar)
        except defer.CancelledError:
            # Ctrl-C (see netshare.clients.common.run): keep what arrived.
            bar.abort()
            f.flush()
            sys.stderr.write(
                "%s: interrupted after %d of %d bytes; the partial file %s is kept: run "
                "the same command again to resume\n" % (PROG, offset + writer.written, size, part)
            )
            raise
        except ConnectionError as e:
            bar.abort()
            f.flush()
            raise LocalFailure(
                "connection lost after %d of %d bytes (%s); the partial file %s "
                "is kept: run the same command again to resume"
                % (offset + writer.written, size, e, part),
                common.EXIT_CONNECT,
            ) from None
        f.flush()
        os.fsync(f.fileno())
    if not resp.ok:
        bar.abort()
        if created and os.path.getsize(part) == 0:
            os.unlink(part)
        raise CommandFailed(resp)
    bar.finish()
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


COMMANDS = {
    "list": cmd_list,
    "info": cmd_info,
    "upload": cmd_upload,
    "download": cmd_download,
    "delete": cmd_delete,
    "checksum": cmd_checksum,
    "register": cmd_register,
    "history": cmd_history,
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

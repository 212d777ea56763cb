"""
Linux disk I/O for the blob store: writing a batch of buffers whole,
writing big uploads behind as they arrive (bounded dirty pages), fsyncing
directories, and telling a full disk (452) from other errors.
"""

from __future__ import annotations

import errno
import os
import stat
from collections import deque

from netshare.errors import InsufficientStorage

KiB = 1024
MiB = 1024 * KiB


_IOV_MAX = 512


def write_all(fd: int, data) -> None:
    """
    Write all of C{data}: one buffer, or a list of buffers written in order
    with as few system calls as the kernel allows (C{writev}, up to 512
    buffers per call).
    """
    if not isinstance(data, list):
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        return
    parts = [memoryview(p) for p in data if len(p)]
    while parts:
        batch = parts[:_IOV_MAX]
        written = os.writev(fd, batch)
        done = 0
        while done < len(batch) and written >= len(batch[done]):
            written -= len(batch[done])
            done += 1
        parts = parts[done:]
        if written:
            parts[0] = parts[0][written:]


def _load_sync_file_range():
    """libc's C{sync_file_range} (Linux), or None where there is none."""
    try:
        import ctypes
        import ctypes.util

        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        fn = libc.sync_file_range
    except (OSError, AttributeError, TypeError):
        return None
    fn.argtypes = (ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint)
    fn.restype = ctypes.c_int
    return fn


_sync_file_range = _load_sync_file_range()
fadvise = getattr(os, "posix_fadvise", None)
RWF_NOWAIT = getattr(os, "RWF_NOWAIT", None) if hasattr(os, "preadv") else None
_SFR_WAIT_BEFORE, _SFR_WRITE, _SFR_WAIT_AFTER = 1, 2, 4
WRITE_BEHIND_STEP = 8 * MiB  # an upload is handed to the disk in pieces of this size
WRITE_BEHIND_LAG = 8  # pieces in flight before the oldest is waited for and dropped


class WriteBehind:
    """
    Streaming write-behind for one upload (Linux; a no-op elsewhere).

    Every C{WRITE_BEHIND_STEP} bytes the new piece is handed to the disk at
    once (C{sync_file_range(WRITE)}, which does not wait).  Once more than
    C{WRITE_BEHIND_LAG} pieces are in flight, the oldest is waited for and
    dropped from the page cache (C{POSIX_FADV_DONTNEED}).  So an upload of
    any size keeps at most about 64 MiB of dirty page cache, the pages it
    frees are reused by its own next writes (on this VM, touching fresh
    pages costs more than the copy itself: see bench/README.md),
    and the final fsync has only the last pieces left to flush.

    None of this is a durability promise: the fsync before the rename is.
    It runs only in the upload's worker thread.
    """

    def __init__(self, fd: int, start: int):
        self.fd = fd
        self.next = start  # everything before this was handed to the disk
        self.in_flight: deque = deque()
        self.dropped = False

    def advance(self, end: int) -> None:
        """The file now holds C{end} bytes."""
        if _sync_file_range is None:
            return
        while end - self.next >= WRITE_BEHIND_STEP:
            _sync_file_range(self.fd, self.next, WRITE_BEHIND_STEP, _SFR_WRITE)
            self.in_flight.append(self.next)
            self.next += WRITE_BEHIND_STEP
            if len(self.in_flight) > WRITE_BEHIND_LAG:
                old = self.in_flight.popleft()
                _sync_file_range(
                    self.fd,
                    old,
                    WRITE_BEHIND_STEP,
                    _SFR_WAIT_BEFORE | _SFR_WRITE | _SFR_WAIT_AFTER,
                )
                if fadvise is not None:
                    fadvise(self.fd, old, WRITE_BEHIND_STEP, os.POSIX_FADV_DONTNEED)
                self.dropped = True

    def finish(self) -> None:
        """
        After the final fsync: if part of the file was dropped from the page
        cache, drop the rest too.  A file cached in scattered pieces is read
        back slower than one not cached at all (the kernel's read-ahead
        stops at every cached page); a file small enough never to have been
        dropped stays cached.
        """
        if self.dropped and fadvise is not None:
            fadvise(self.fd, 0, 0, os.POSIX_FADV_DONTNEED)


def fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | getattr(os, "O_CLOEXEC", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def reraise_storage(error: OSError):
    """Disk full or quota-like errors become 452; any other I/O error stays
    itself (logged once by the protocol, answered 451)."""
    if error.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", -1), errno.EFBIG):
        raise InsufficientStorage("insufficient storage") from error
    raise error


def ensure_real_dir(path: str) -> bool:
    """Create C{path} (mode 0700) unless it exists; refuse a symlink in its
    place.  @return: True if it was created."""
    try:
        os.mkdir(path, 0o700)
        return True
    except FileExistsError:
        st = os.lstat(path)
        if not stat.S_ISDIR(st.st_mode):
            raise OSError(errno.ENOTDIR, "not a real directory (symlink?)", path) from None
        return False


O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)

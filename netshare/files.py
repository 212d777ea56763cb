"""
The files service: names, content storage, encryption at rest, lockout, and
the service object that decides every UPLOAD/DOWNLOAD/DELETE (PROTOCOL.md
section 2).  No SQL here (the metadata rows live behind an injected
L{netshare.storage.files.FileStore}) and no wire format (the protocol in
C{netshare.protocols.files} parses commands and formats replies).

Names
=====

A file name is only ever a database value.  Content lives under the data
directory by an opaque random id (C{secrets.token_hex(16)}, checked to be 32
lowercase hex digits before any path is built), so a name such as
C{../../etc/passwd}, C{C:\\x} or C{CON} can never reach the filesystem:
traversal is impossible by construction, not by filtering.  The name rules
still exist, so that names stay printable and unambiguous on every client:
see L{normalize_name}.  Uniqueness is case-insensitive through
L{name_key} (NFC, Unicode case folding, NFC again), stored in its own
unique column.

Layout on disk
==============

::

    <root>/blobs/<first 2 hex digits>/<32 hex digit id>   finished content
    <root>/tmp/<32 hex digit id>.part                    uploads in progress

Upload pipeline
===============

L{BlobStore.open_upload} returns an L{UploadSink}, a Twisted C{IConsumer}.
The protocol registers its raw-input side (a push producer that pauses the
socket) and C{write()}s each received chunk.  The sink only queues the chunk
and hands the queue to one job at a time in a small dedicated thread pool,
which hashes it (SHA-256 of the plaintext), encrypts it when the file is
protected, and writes it to the temporary file (everything queued at once,
one C{writev} of up to 1 MiB).  Large uploads are written behind
(L{_WriteBehind}): handed to the disk in 8 MiB pieces as they arrive, and
dropped from the page cache once written, so an upload keeps at most about
64 MiB of dirty pages and the final fsync has little left to do.  When more than
C{high_water} bytes (4 MiB) are queued the sink pauses the producer, and it
resumes it once the queue is down to half of that: memory per upload stays
flat whatever the size, and the reactor thread never touches the disk.
C{finish()} (after exactly the declared size) checks the size and optional
SHA-256, then fsyncs the file, renames it into C{blobs/}, and fsyncs that
directory, all in the worker; only then may the caller insert the database
row and answer C{226}.  A mismatch removes the temporary file
(C{554 checksum mismatch}).  C{abort()} (connection dropped) removes it
too.  A crash leaves at worst a stale C{tmp/*.part} (removed by
L{BlobStore.sweep} at start-up) or a finished blob without a row (kill -9
between rename and insert; removed by L{BlobStore.remove_orphans} at
start-up).  Nothing partial is ever visible.

Download and deletion
=====================

L{BlobStore.open_download} opens the blob and returns a L{BlobReader}, a
pull producer like Twisted's C{FileSender} but with 256 KiB reads (PERF.md:
16 KiB chunks are 1.8x slower), starting at C{offset}.  It reads on the
reactor thread only what the page cache holds (checked without blocking);
otherwise a worker has the kernel read it in first, so a cold disk never
stalls the reactor.  Deleting or
replacing a file removes the database row first and unlinks the old blob
afterwards.  A download already in flight keeps its open file descriptor,
and on POSIX an unlinked file stays readable through an open descriptor
until it is closed: so an in-flight download finishes on the old content
whole, and the space is freed when the last reader closes.  We rely on that
instead of reference-counting readers (this would not hold on Windows,
which netshare does not support as a server platform).

Encryption at rest (protected files)
====================================

A protected file's key comes from its file password: scrypt with a
per-file random 16-byte salt gives 64 bytes; the first 32 are the AES-256
key, the last 32 are hashed (SHA-256, domain-separated) into a I{verifier}
kept in the database.  L{unlock} re-derives and compares the verifier with
C{hmac.compare_digest}, so a wrong password is answered C{535} before a
single byte is sent, and the key itself is never stored.  The scrypt
parameters are stored per file (they can change later without breaking old
files).  The default for file passwords is N=2**15, r=8, p=1 (32 MiB, a few
tens of ms): smaller than the account-password cost, because every download
of a protected file pays it, and the lockout below caps online guessing.
All derivations run in the injected C{KDFPool}, off the reactor.

The blob format (version 1), all integers big-endian::

    header (44 bytes):
      0  magic          4   b"NSFE"
      4  version        1   1
      5  algorithm      1   1 = AES-256-GCM
      6  reserved       2   zero
      8  chunk size     4   plaintext bytes per chunk (default 65536)
     12  plaintext size 8
     20  salt          16   the scrypt salt (also in the database)
     36  nonce prefix   8   random per file
    then chunk 0, chunk 1, ... chunk n-1, each = AES-GCM(ciphertext || 16-byte tag)

    n = max(1, ceil(size / chunk size)); every chunk holds exactly chunk-size
    plaintext bytes except the last, which holds the rest (0 bytes only for
    an empty file, so even an empty file has one authenticated chunk).
    nonce(i) = nonce prefix || uint32(i)              (12 bytes)
    aad(i)   = header || uint64(i) || uint8(i == n-1)

Binding the chunk index and the last-chunk flag into the AAD (and the nonce)
means reordered, duplicated, spliced or dropped chunks fail authentication,
and a blob truncated at a chunk boundary is caught because the new last
chunk was sealed as "not last"; binding the whole header means its sizes
cannot be edited either.  Each chunk is sealed and opened independently, so
uploads and downloads stay streaming and C{offset=} starts decrypting at the
chunk that contains the offset.  A fresh salt per upload gives a fresh key
per file, so (key, nonce) pairs never repeat even with the same password.

Wrong passwords
===============

L{PasswordLockout}: 5 wrong passwords for one file by one user within 15
minutes lock that user out of that file for 15 minutes (C{429}); other users
are unaffected.  The lockout is checked before the KDF runs, so a locked-out
guesser costs no scrypt work.
"""

from __future__ import annotations

import errno
import hashlib
import hmac
import math
import os
import re
import secrets
import stat
import struct
import threading
import unicodedata
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from twisted.internet import defer, task
from twisted.internet.interfaces import IConsumer, IPullProducer
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool
from zope.interface import implementer

from netshare.errors import (
    BadArguments,
    BadCredentials,
    Conflict,
    InsufficientStorage,
    IntegrityFailure,
    LimitExceeded,
    NameNotAllowed,
    NotFound,
    OutcomeUnknown,
    RateLimited,
)
from netshare.throttle import Penalties

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB

MAX_NAME_BYTES = 255
READ_CHUNK = 256 * KiB          # download read size (PERF.md)
ENC_CHUNK = 64 * KiB            # plaintext bytes per encrypted chunk
HIGH_WATER = 4 * MiB            # upload bytes queued before the socket is paused
WRITE_BATCH = 1 * MiB           # upload bytes the worker takes per writev
FILE_SCRYPT = (2**15, 8, 1)     # default (N, r, p) for file passwords
MAX_PASSWORD_CHARS = 128        # like account passwords (PROTOCOL.md section 1)
VISIBILITIES = ("public", "hidden")

_BLOB_ID = re.compile(r"[0-9a-f]{32}", re.ASCII)
_SHA256 = re.compile(r"[0-9a-fA-F]{64}", re.ASCII)
_DIGITS = re.compile(r"[0-9]{1,20}", re.ASCII)


# ---------------------------------------------------------------- names

# Bidirectional formatting characters (category Cf): they reorder how a name
# is displayed ("txt.exe" shown as "exe.txt" with U+202E), so a listing could
# lie about a name.  Other format characters stay allowed: ZERO WIDTH JOINER
# builds emoji sequences and tag characters build subdivision flags.
_BIDI_CONTROLS = frozenset(
    "\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")

# Cc: C0/C1 controls (NUL, CR, LF, ESC, DEL, ...); Cs: lone surrogates (not
# UTF-8); Zl/Zp: U+2028/U+2029, which some readers treat as line breaks.
_FORBIDDEN_CATEGORIES = frozenset(("Cc", "Cs", "Zl", "Zp"))


def normalize_name(name: str) -> str:
    """
    Check a file name and return its NFC form (the spelling we store).

    Rules (PROTOCOL.md section 2): 1-255 bytes of UTF-8 after NFC; no C{/},
    C{\\}, NUL or other control character; not C{.} or C{..}; no leading or
    trailing space.  Our reading of the last two rules, documented here:
     - "control character" means Unicode categories Cc (C0 and C1 controls),
       Cs (lone surrogates, which are not UTF-8), Zl/Zp (Unicode line and
       paragraph separators) and the bidirectional formatting characters
       (U+061C, U+200E/F, U+202A-U+202E, U+2066-U+2069), which can make a
       listing display a different name than the one stored.
     - "space" means any Unicode white space (C{str.isspace}), so a trailing
       NO-BREAK SPACE is refused like a trailing U+0020.
    A trailing dot, C{CON}, C{%2e%2e%2f} and the like are allowed: a name is
    never a path here, so they are harmless literal text.

    @raise NameNotAllowed: (553) with a text saying which rule failed.
    """
    if not isinstance(name, str):
        raise NameNotAllowed("name must be text")
    nfc = unicodedata.normalize("NFC", name)
    if not nfc:
        raise NameNotAllowed("name is empty")
    for ch in nfc:
        if ch in "/\\":
            raise NameNotAllowed("name may not contain / or \\")
        category = unicodedata.category(ch)
        if category == "Cs":
            raise NameNotAllowed("name is not valid UTF-8")
        if category in _FORBIDDEN_CATEGORIES or ch in _BIDI_CONTROLS:
            raise NameNotAllowed("name may not contain control characters (U+%04X)" % ord(ch))
    if len(nfc.encode("utf-8")) > MAX_NAME_BYTES:
        raise NameNotAllowed("name is longer than %d bytes of UTF-8" % MAX_NAME_BYTES)
    if nfc in (".", ".."):
        raise NameNotAllowed("name may not be . or ..")
    if nfc[0].isspace() or nfc[-1].isspace():
        raise NameNotAllowed("name may not begin or end with a space")
    return nfc


def name_key(name: str) -> str:
    """
    The case-insensitive uniqueness key of a (valid) name.

    NFC, then full Unicode case folding (so C{"Straße"} and C{"STRASSE"}
    collide, as do the NFC and NFD spellings of C{"é"}), then NFC again,
    because folding can produce decomposed sequences.  Folding never makes a
    character longer than its UTF-8 bytes (checked over all of Unicode), so
    the key of a 255-byte name fits the 255-character column.
    """
    folded = unicodedata.normalize("NFC", name).casefold()
    return unicodedata.normalize("NFC", folded)


def parse_size(text: str, what: str = "size") -> int:
    """
    Parse a decimal byte count from the wire (a size or an offset).

    Only ASCII digits, at most 20 of them, so a negative, signed, spaced,
    non-ASCII-digit or absurd value is refused before anything is
    allocated; a large but well-formed value is returned and refused by the
    size limit (552) instead.

    @raise BadArguments: (501).
    """
    if not isinstance(text, str) or not _DIGITS.fullmatch(text):
        raise BadArguments("%s must be a whole number of bytes" % (what,))
    return int(text)


def check_sha256(text: str | None) -> str | None:
    """Validate an optional C{sha256=HEX} argument; return it lowercased."""
    if text is None:
        return None
    if not isinstance(text, str) or not _SHA256.fullmatch(text):
        raise BadArguments("sha256 must be 64 hexadecimal digits")
    return text.lower()


def _password_bytes(password: str) -> bytes:
    """NFC then UTF-8, so the same password typed on any keyboard gives one key."""
    return unicodedata.normalize("NFC", password).encode("utf-8")


def check_file_password(password: str | None) -> None:
    """1-128 characters, like account passwords (PROTOCOL.md section 1)."""
    if password is None:
        return
    if not isinstance(password, str) or not password:
        raise BadArguments("file password may not be empty")
    if len(password) > MAX_PASSWORD_CHARS:
        raise BadArguments("file password longer than %d characters" % MAX_PASSWORD_CHARS)
    try:
        password.encode("utf-8")
    except UnicodeEncodeError:
        raise BadArguments("file password is not valid UTF-8") from None


# ---------------------------------------------------------------- encryption

_MAGIC = b"NSFE"
_FORMAT_VERSION = 1
_ALG_AES256GCM = 1
_HEADER = struct.Struct(">4sBBHIQ16s8s")
HEADER_SIZE = _HEADER.size      # 44
TAG_SIZE = 16
_VERIFIER_CONTEXT = b"netshare file password verifier v1\x00"


@dataclass(frozen=True)
class EncryptionParams:
    """
    Everything an upload needs to encrypt: the key (never stored) and the
    parameters that go into the database as C{enc_meta}.
    """

    key: bytes = field(repr=False)
    salt: bytes
    n: int
    r: int
    p: int
    verifier: str
    nonce_prefix: bytes
    chunk_size: int = ENC_CHUNK

    def meta(self) -> dict:
        """The JSON-able C{enc_meta} for the database (no key, no password)."""
        return {
            "v": _FORMAT_VERSION, "alg": "AES-256-GCM", "kdf": "scrypt",
            "n": self.n, "r": self.r, "p": self.p, "salt": self.salt.hex(),
            "verifier": self.verifier, "nonce_prefix": self.nonce_prefix.hex(),
            "chunk_size": self.chunk_size,
        }


def _split_derived(derived: bytes) -> tuple[bytes, str]:
    """64 scrypt bytes -> (AES key, verifier hex)."""
    if len(derived) != 64:
        raise ValueError("expected 64 derived bytes")
    verifier = hashlib.sha256(_VERIFIER_CONTEXT + derived[32:]).hexdigest()
    return derived[:32], verifier


def prepare_encryption(password: str, kdf, n: int = FILE_SCRYPT[0], r: int = FILE_SCRYPT[1],
                       p: int = FILE_SCRYPT[2], chunk_size: int = ENC_CHUNK, source=None):
    """
    Derive a fresh key for a new protected upload (fresh salt and nonce
    prefix), in the KDF pool.

    @return: Deferred[L{EncryptionParams}]; fails with C{RateLimited} (429)
        when the KDF pool is saturated.
    """
    try:
        check_file_password(password)
    except BadArguments:
        return defer.fail()
    if not 1 <= chunk_size <= 2**31:
        raise ValueError("bad chunk size")
    salt = secrets.token_bytes(16)
    prefix = secrets.token_bytes(8)
    d = kdf.derive(_password_bytes(password), salt, n, r, p, 64, source=source)

    def made(derived):
        key, verifier = _split_derived(derived)
        return EncryptionParams(key, salt, n, r, p, verifier, prefix, chunk_size)

    return d.addCallback(made)


def _meta_params(meta: Any) -> tuple[bytes, int, int, int, str]:
    """Validate stored C{enc_meta}; a malformed one is an integrity failure."""
    try:
        if meta["v"] != _FORMAT_VERSION or meta["alg"] != "AES-256-GCM" or meta["kdf"] != "scrypt":
            raise ValueError("unknown format")
        salt = bytes.fromhex(meta["salt"])
        n, r, p = int(meta["n"]), int(meta["r"]), int(meta["p"])
        verifier = str(meta["verifier"])
        if len(salt) != 16 or len(verifier) != 64 or min(n, r, p) < 1:
            raise ValueError("bad parameters")
    except (KeyError, TypeError, ValueError):
        raise IntegrityFailure("stored encryption parameters are damaged") from None
    return salt, n, r, p, verifier


def unlock(enc_meta: dict, password: str, kdf, source=None):
    """
    Check a file password against a protected file's stored verifier.

    @return: Deferred[bytes], the AES key; fails with L{BadCredentials}
        (535) for a wrong password, before any content is read.
    """
    try:
        salt, n, r, p, verifier = _meta_params(enc_meta)
    except IntegrityFailure:
        return defer.fail()
    if not isinstance(password, str) or not password or len(password) > MAX_PASSWORD_CHARS:
        return defer.fail(BadCredentials("wrong file password"))
    try:
        secret = _password_bytes(password)
    except UnicodeEncodeError:
        return defer.fail(BadCredentials("wrong file password"))
    d = kdf.derive(secret, salt, n, r, p, 64, source=source)

    def check(derived):
        key, candidate = _split_derived(derived)
        if not hmac.compare_digest(candidate.encode("ascii"), verifier.encode("ascii")):
            raise BadCredentials("wrong file password")
        return key

    return d.addCallback(check)


def chunk_count(size: int, chunk_size: int) -> int:
    return max(1, -(-size // chunk_size))


def encrypted_size(size: int, chunk_size: int = ENC_CHUNK) -> int:
    """Bytes on disk for C{size} plaintext bytes in the encrypted format."""
    return HEADER_SIZE + size + TAG_SIZE * chunk_count(size, chunk_size)


@dataclass(frozen=True)
class _Header:
    chunk_size: int
    size: int
    salt: bytes
    nonce_prefix: bytes

    def pack(self) -> bytes:
        return _HEADER.pack(_MAGIC, _FORMAT_VERSION, _ALG_AES256GCM, 0, self.chunk_size,
                            self.size, self.salt, self.nonce_prefix)

    @classmethod
    def unpack(cls, data: bytes) -> "_Header":
        if len(data) != HEADER_SIZE:
            raise IntegrityFailure("stored file is truncated")
        magic, version, alg, reserved, chunk, size, salt, prefix = _HEADER.unpack(data)
        if magic != _MAGIC or version != _FORMAT_VERSION or alg != _ALG_AES256GCM or reserved \
                or chunk < 1:
            raise IntegrityFailure("stored file has an unknown format")
        return cls(chunk, size, salt, prefix)

    @property
    def chunks(self) -> int:
        return chunk_count(self.size, self.chunk_size)

    def plain_len(self, index: int) -> int:
        if index < self.chunks - 1:
            return self.chunk_size
        return self.size - (self.chunks - 1) * self.chunk_size

    def cipher_offset(self, index: int) -> int:
        return HEADER_SIZE + index * (self.chunk_size + TAG_SIZE)


def _nonce(prefix: bytes, index: int) -> bytes:
    return prefix + struct.pack(">I", index)


def _aad(header: bytes, index: int, last: bool) -> bytes:
    return header + struct.pack(">QB", index, 1 if last else 0)


class _ChunkEncryptor:
    """Seal a plaintext stream into fixed-size chunks (worker thread only)."""

    def __init__(self, key: bytes, header: _Header):
        if header.chunks > 2**32:
            raise LimitExceeded("file too large for encryption")
        self._aead = AESGCM(key)
        self._header = header
        self.header_bytes = header.pack()
        self._index = 0
        self._buf = bytearray()

    def _seal(self, plain: bytes, last: bool) -> bytes:
        i = self._index
        self._index += 1
        return self._aead.encrypt(_nonce(self._header.nonce_prefix, i), plain,
                                  _aad(self.header_bytes, i, last))

    def feed(self, data: bytes) -> list[bytes]:
        """Buffer C{data}; return the chunks now complete.  A full chunk is
        sealed only once a byte beyond it exists, because the last chunk must
        be sealed as last."""
        self._buf += data
        out = []
        size = self._header.chunk_size
        while len(self._buf) > size:
            out.append(self._seal(bytes(self._buf[:size]), False))
            del self._buf[:size]
        return out

    def finish(self) -> bytes:
        last = self._seal(bytes(self._buf), True)
        self._buf = bytearray()
        return last


def _open_chunk(aead: AESGCM, header: _Header, header_bytes: bytes, index: int,
                sealed: bytes) -> bytes:
    last = index == header.chunks - 1
    try:
        return aead.decrypt(_nonce(header.nonce_prefix, index), sealed,
                            _aad(header_bytes, index, last))
    except InvalidTag:
        raise IntegrityFailure("stored file failed authentication (chunk %d)" % index) from None


# ---------------------------------------------------------------- disk helpers

_IOV_MAX = 512


def _write_all(fd: int, data) -> None:
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
_fadvise = getattr(os, "posix_fadvise", None)
_RWF_NOWAIT = getattr(os, "RWF_NOWAIT", None) if hasattr(os, "preadv") else None
_SFR_WAIT_BEFORE, _SFR_WRITE, _SFR_WAIT_AFTER = 1, 2, 4
WRITE_BEHIND_STEP = 8 * MiB     # an upload is handed to the disk in pieces of this size
WRITE_BEHIND_LAG = 8            # pieces in flight before the oldest is waited for and dropped


class _WriteBehind:
    """
    Streaming write-behind for one upload (Linux; a no-op elsewhere).

    Every C{WRITE_BEHIND_STEP} bytes the new piece is handed to the disk at
    once (C{sync_file_range(WRITE)}, which does not wait).  Once more than
    C{WRITE_BEHIND_LAG} pieces are in flight, the oldest is waited for and
    dropped from the page cache (C{POSIX_FADV_DONTNEED}).  So an upload of
    any size keeps at most about 64 MiB of dirty page cache, the pages it
    frees are reused by its own next writes (on this VM, touching fresh
    pages costs more than the copy itself: PERF notes in bench/README.md),
    and the final fsync has only the last pieces left to flush.

    None of this is a durability promise: the fsync before the rename is.
    It runs only in the upload's worker thread.
    """

    def __init__(self, fd: int, start: int):
        self.fd = fd
        self.next = start           # everything before this was handed to the disk
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
                _sync_file_range(self.fd, old, WRITE_BEHIND_STEP,
                                 _SFR_WAIT_BEFORE | _SFR_WRITE | _SFR_WAIT_AFTER)
                if _fadvise is not None:
                    _fadvise(self.fd, old, WRITE_BEHIND_STEP, os.POSIX_FADV_DONTNEED)
                self.dropped = True

    def finish(self) -> None:
        """
        After the final fsync: if part of the file was dropped from the page
        cache, drop the rest too.  A file cached in scattered pieces is read
        back slower than one not cached at all (the kernel's read-ahead
        stops at every cached page); a file small enough never to have been
        dropped stays cached.
        """
        if self.dropped and _fadvise is not None:
            _fadvise(self.fd, 0, 0, os.POSIX_FADV_DONTNEED)


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | getattr(os, "O_CLOEXEC", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _reraise_storage(error: OSError):
    """Disk full or quota-like errors become 452; any other I/O error stays
    itself (logged once by the protocol, answered 451)."""
    if error.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", -1), errno.EFBIG):
        raise InsufficientStorage("insufficient storage") from error
    raise error


def _ensure_real_dir(path: str) -> bool:
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


_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)


# ---------------------------------------------------------------- upload

@dataclass(frozen=True)
class StoredBlob:
    """A finished, durable blob: C{sha256} and C{size} are of the plaintext."""

    blob_id: str
    size: int
    sha256: str
    enc_meta: dict | None


class _BlobWriter:
    """
    The worker-thread half of an upload.  Only one worker job touches it at
    a time (L{UploadSink} guarantees that), so it needs no lock.
    """

    def __init__(self, tmp_path: str, shard_dir: str, final_path: str, blob_id: str, size: int,
                 encryption: EncryptionParams | None, fsync: bool, write_behind: bool = True):
        self.tmp_path = tmp_path
        self.write_behind = write_behind
        self.shard_dir = shard_dir
        self.final_path = final_path
        self.blob_id = blob_id
        self.size = size
        self.fsync = fsync
        self.encryption = encryption
        self.hasher = hashlib.sha256()
        self.count = 0
        self.on_disk = 0            # bytes written to the file (ciphertext if encrypted)
        self.behind: _WriteBehind | None = None
        self.fd: int | None = None
        self.encryptor = None
        if encryption is not None:
            header = _Header(encryption.chunk_size, size, encryption.salt, encryption.nonce_prefix)
            self.encryptor = _ChunkEncryptor(encryption.key, header)

    def _open(self) -> int:
        if self.fd is None:
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | _O_NOFOLLOW | _O_CLOEXEC
            self.fd = os.open(self.tmp_path, flags, 0o600)
            if self.encryptor is not None:
                _write_all(self.fd, self.encryptor.header_bytes)
                self.on_disk = HEADER_SIZE
            if self.write_behind:
                self.behind = _WriteBehind(self.fd, self.on_disk)
        return self.fd

    def write(self, chunk: bytes) -> None:
        self.write_many([chunk])

    def write_many(self, chunks: list) -> None:
        """Hash, (encrypt,) and append C{chunks} with one C{writev}."""
        try:
            fd = self._open()
            for chunk in chunks:
                self.hasher.update(chunk)
                self.count += len(chunk)
            if self.encryptor is None:
                out = chunks
            else:
                out = []
                for chunk in chunks:
                    out.extend(self.encryptor.feed(chunk))
            _write_all(fd, out)
            self.on_disk += sum(len(c) for c in out)
            if self.behind is not None:
                self.behind.advance(self.on_disk)
        except OSError as e:
            self.discard()
            _reraise_storage(e)

    def finalize(self, expected_sha256: str | None, parent_dir: str) -> StoredBlob:
        """Verify, make durable, and move into place; on any failure the
        temporary file is removed."""
        try:
            fd = self._open()
            if self.encryptor is not None:
                _write_all(fd, self.encryptor.finish())
            digest = self.hasher.hexdigest()
            if self.count != self.size:
                raise IntegrityFailure("size mismatch: received %d of %d bytes"
                                       % (self.count, self.size))
            if expected_sha256 is not None and not hmac.compare_digest(digest, expected_sha256):
                raise IntegrityFailure("checksum mismatch")
            if self.fsync:
                os.fsync(fd)
            if self.behind is not None:
                self.behind.finish()
            os.close(fd)
            self.fd = None
            if _ensure_real_dir(self.shard_dir) and self.fsync:
                _fsync_dir(parent_dir)
            os.rename(self.tmp_path, self.final_path)
            if self.fsync:
                _fsync_dir(self.shard_dir)
        except OSError as e:
            self.discard()
            _reraise_storage(e)
        except BaseException:
            self.discard()
            raise
        meta = self.encryption.meta() if self.encryption is not None else None
        return StoredBlob(self.blob_id, self.size, digest, meta)

    def discard(self) -> None:
        if self.fd is not None:
            try:
                os.close(self.fd)
            except OSError:
                pass
            self.fd = None
        try:
            os.unlink(self.tmp_path)
        except FileNotFoundError:
            pass


@implementer(IConsumer)
class UploadSink:
    """
    Receives an upload body on the reactor thread and writes it from a
    worker thread; see the module docstring.

    Use: C{registerProducer(transportSide, True)}, C{write()} each chunk,
    then C{finish()} after exactly C{size} bytes, or C{abort()} when the
    connection drops.  Writes after a worker failure (disk full) are
    discarded, so the protocol can still consume the rest of the body and
    get the error from C{finish()}.

    @ivar received: bytes accepted so far.
    """

    log = Logger()

    def __init__(self, store: "BlobStore", writer: _BlobWriter, expected_sha256: str | None,
                 reactor, pool: ThreadPool, high_water: int):
        self.blob_id = writer.blob_id
        self.size = writer.size
        self.received = 0
        self._store = store
        self._writer = writer
        self._expected = expected_sha256
        self._reactor = reactor
        self._pool = pool
        self._high = high_water
        self._low = high_water // 2
        self._lock = threading.Lock()
        # guarded by _lock:
        self._queue: deque[bytes] = deque()
        self._queued = 0            # bytes queued or being written
        self._running = False       # a worker job owns the writer
        self._state = "open"        # open -> finishing | aborting -> done
        self._paused = False
        self._resume_pending = False
        # worker-owned until settled:
        self._error: Failure | None = None
        # reactor-only:
        self._overflow = False
        self._producer = None
        self._streaming = True
        self._pull_call = None
        self._outcome: Any = None
        self._settled = False
        self._waiters: list[defer.Deferred] = []

    # IConsumer

    def registerProducer(self, producer, streaming: bool) -> None:
        self._producer = producer
        self._streaming = bool(streaming)
        if not streaming:
            self._want_more()

    def unregisterProducer(self) -> None:
        """Forget the producer, resuming it first if the sink had paused it:
        the sink never leaves a socket paused behind it (the same happens in
        L{finish} and L{abort})."""
        producer, self._producer = self._producer, None
        if self._pull_call is not None and self._pull_call.active():
            self._pull_call.cancel()
        self._pull_call = None
        with self._lock:
            was_paused, self._paused = self._paused, False
        if producer is not None and self._streaming and was_paused:
            producer.resumeProducing()

    def write(self, data: bytes) -> None:
        if self._state != "open" or not data:
            return
        room = self.size - self.received
        if len(data) > room:
            self._overflow = True
            data = data[:room]
        self.received += len(data)
        if not data or self._error is not None:
            return
        chunk = bytes(data)
        with self._lock:
            self._queue.append(chunk)
            self._queued += len(chunk)
            start = not self._running
            self._running = True
            pause = not self._paused and self._queued > self._high
            if pause:
                self._paused = True
        if start:
            self._pool.callInThread(self._work)
        if pause:
            if self._producer is not None and self._streaming:
                self._producer.pauseProducing()
        elif not self._streaming:
            self._want_more()

    # flow control (reactor thread)

    def _want_more(self) -> None:
        if self._producer is None or self._state != "open":
            return
        if self._streaming:
            self._producer.resumeProducing()
        elif self._pull_call is None or not self._pull_call.active():
            self._pull_call = self._reactor.callLater(0, self._pull)

    def _pull(self) -> None:
        self._pull_call = None
        if self._producer is not None and not self._paused and self._state == "open":
            self._producer.resumeProducing()

    def _resume(self) -> None:
        with self._lock:
            self._resume_pending = False
            if not self._paused or self._queued > self._low:
                return
            self._paused = False
        self._want_more()

    # the worker

    def _work(self) -> None:
        """Drain the queue; when finishing/aborting and drained, settle."""
        while True:
            with self._lock:
                if self._queue:
                    # Take what is queued (up to WRITE_BATCH bytes): one
                    # writev for many socket reads.
                    chunks, taken = [], 0
                    while self._queue and taken < WRITE_BATCH:
                        chunk = self._queue.popleft()
                        chunks.append(chunk)
                        taken += len(chunk)
                    final = None
                else:
                    final = self._state
                    if final == "open":
                        self._running = False
                        return
            if final is not None:
                break
            if self._error is None:
                try:
                    self._writer.write_many(chunks)
                except Exception:
                    self._error = Failure()
            with self._lock:
                self._queued -= taken
                wake = self._paused and not self._resume_pending and self._queued <= self._low
                if wake:
                    self._resume_pending = True
            if wake:
                self._reactor.callFromThread(self._resume)
        if final == "aborting" or self._error is not None:
            self._writer.discard()
            outcome: Any = self._error
        else:
            try:
                outcome = self._writer.finalize(self._expected, self._store.blobs_dir)
            except Exception:
                outcome = Failure()
        self._reactor.callFromThread(self._settle, outcome)

    def _enter(self, state: str) -> None:
        with self._lock:
            self._state = state
            start = not self._running
            self._running = True
        if start:
            self._pool.callInThread(self._work)

    def _settle(self, outcome) -> None:
        with self._lock:
            self._state = "done"
            self._running = False
        if isinstance(outcome, Failure):
            outcome.cleanFailure()
            if not outcome.check(IntegrityFailure, InsufficientStorage):
                self.log.failure("upload {blob} failed", outcome, blob=self.blob_id)
        self._settled = True
        self._outcome = outcome
        if isinstance(outcome, StoredBlob):
            self._store._finished(self.blob_id)
        else:
            self._store._forget(self.blob_id)
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            d.callback(None)

    def _when_settled(self) -> defer.Deferred:
        d = defer.Deferred()
        if self._settled:
            d.callback(None)
        else:
            self._waiters.append(d)
        return d

    # the caller's side

    @property
    def queued(self) -> int:
        """Bytes received and not yet on disk (bounded by about C{high_water})."""
        return self._queued

    @property
    def paused(self) -> bool:
        """Whether the sink has asked its producer to pause."""
        return self._paused

    def finish(self) -> defer.Deferred:
        """
        Complete the upload after exactly C{size} bytes.

        @return: Deferred[L{StoredBlob}], fired once the blob is durable in
            C{blobs/}; fails with L{IntegrityFailure} (554) on a size or
            checksum mismatch, L{InsufficientStorage} (452) on a full disk.
        """
        if self._state != "open":
            return defer.fail(RuntimeError("finish() after finish() or abort()"))
        self.unregisterProducer()
        if self.received != self.size or self._overflow:
            got, size = self.received, self.size
            self._enter("aborting")

            def mismatch(_):
                raise IntegrityFailure("size mismatch: received %d of %d bytes" % (got, size))

            return self._when_settled().addCallback(mismatch)
        self._enter("finishing")

        return self._when_settled().addCallback(lambda _: self._outcome)

    def abort(self) -> defer.Deferred:
        """
        The connection dropped: remove the temporary file.

        After C{finish()} this changes nothing (the last byte is in; the
        upload completes).  @return: Deferred[None] fired when settled.
        """
        self.unregisterProducer()
        if self._state == "open":
            self.log.info("upload {blob} aborted after {received} of {size} bytes",
                          blob=self.blob_id, received=self.received, size=self.size)
            self._enter("aborting")
        return self._when_settled()


# ---------------------------------------------------------------- download

class DownloadStopped(Exception):
    """The consumer stopped the transfer (the connection went away)."""


@implementer(IPullProducer)
class BlobReader:
    """
    Stream a blob (or its decryption) from C{offset} to a consumer: a pull
    producer like C{twisted.protocols.basic.FileSender}, with 256 KiB reads
    (PERF.md: 16 KiB chunks are 1.8x slower).

    Every read happens in C{resumeProducing}; with a C{pool} (what
    L{BlobStore.open_download} gives) only once the page cache holds the
    piece, so the reactor thread never waits for the disk.  Before each
    read a one-byte C{preadv(RWF_NOWAIT)} of the piece's last byte (which
    never blocks) says whether it is cached, as it almost always is: the
    file was just read or written, or the kernel's read-ahead (widened with
    C{POSIX_FADV_SEQUENTIAL}) is ahead of us.  When it is not (a cold disk,
    or an upload just written behind, L{_WriteBehind}), a job in the pool
    reads one byte at the current offset, which blocks that worker (not the
    reactor) until the kernel has read the piece in and restarted its
    read-ahead; then the reactor reads it (about 30 such waits per GiB
    here).  The worker only waits: the bytes never cross threads, so there
    is no buffer to bound and no lock on the data path.  Where
    C{RWF_NOWAIT} does not exist (or without a pool) reads simply happen in
    C{resumeProducing}, as in FileSender.

    @ivar remaining: plaintext bytes still to send; before the transfer it is
        the count for the C{150} line.
    @ivar size: the whole file's plaintext size.
    """

    def __init__(self, fd: int, size: int, offset: int, read_size: int = READ_CHUNK,
                 key: bytes | None = None, header: _Header | None = None,
                 pool: ThreadPool | None = None, reactor=None):
        self._fd = fd
        self.size = size
        self.offset = offset
        self.remaining = size - offset
        self.sent = 0
        self._read_size = read_size
        self.consumer = None
        self.deferred: defer.Deferred | None = None
        self._header = header
        if header is not None:
            self._aead = AESGCM(key)
            self._header_bytes = header.pack()
            self._index = offset // header.chunk_size
            self._skip = offset - self._index * header.chunk_size
            if self.remaining == 0:
                self._index = header.chunks
            pos = header.cipher_offset(self._index)
        else:
            pos = offset
        os.lseek(fd, pos, os.SEEK_SET)
        if _fadvise is not None and self.remaining:
            _fadvise(fd, pos, 0, os.POSIX_FADV_SEQUENTIAL)   # a wider kernel read-ahead
        self._pos = pos                 # file offset of the next read
        self._probe = bytearray(1)
        self._pool = pool if _RWF_NOWAIT is not None else None
        self._reactor = reactor
        self._lock = threading.Lock()
        # guarded by _lock (a waiting worker job uses the descriptor):
        self._waiting = False
        self._closing = False
        self._fd_closed = False

    def beginFileTransfer(self, consumer) -> defer.Deferred:
        """
        @return: Deferred firing with the number of bytes sent once the last
            byte was written to C{consumer}; fails with L{IntegrityFailure} on
            a damaged or tampered blob (the caller must then drop the
            connection: fewer bytes than announced were sent), or with
            L{DownloadStopped} when the consumer stops it.
        """
        self.consumer = consumer
        self.deferred = d = defer.Deferred()
        consumer.registerProducer(self, False)
        return d

    # reading

    def _read(self, n: int) -> bytes:
        parts = []
        while n > 0:
            data = os.read(self._fd, n)
            if not data:
                raise IntegrityFailure("stored file is truncated")
            parts.append(data)
            n -= len(data)
            self._pos += len(data)
        return b"".join(parts)

    def _next_span(self) -> int:
        """How many file bytes the next L{_next} reads."""
        if self._header is None:
            return min(self._read_size, self.remaining)
        h = self._header
        last = min(h.chunks, self._index + max(1, self._read_size // h.chunk_size))
        return sum(h.plain_len(i) + TAG_SIZE for i in range(self._index, last))

    def _cached(self, span: int) -> bool:
        """Is the piece of C{span} bytes at the current offset in the page
        cache?  Never blocks."""
        if span <= 0:
            return True
        try:
            return os.preadv(self._fd, [self._probe], self._pos + span - 1, _RWF_NOWAIT) == 1
        except BlockingIOError:
            return False
        except OSError:
            self._pool = None           # not supported here: read like FileSender
            return True

    def _next(self) -> bytes:
        """The next piece of plaintext (at most C{remaining} bytes)."""
        if self._header is None:
            return self._read(min(self._read_size, self.remaining))
        h = self._header
        per_read = max(1, self._read_size // h.chunk_size)
        plain = []
        for _ in range(per_read):
            if self._index >= h.chunks:
                break
            sealed = self._read(h.plain_len(self._index) + TAG_SIZE)
            plain.append(_open_chunk(self._aead, h, self._header_bytes, self._index, sealed))
            self._index += 1
        data = b"".join(plain)
        if self._skip:
            data = data[self._skip:]
            self._skip = 0
        return data[:self.remaining]

    def _await_pages(self, pos: int) -> None:
        """Worker: wait until the kernel has read in the piece at C{pos}
        (and started reading ahead); then wake the reactor side."""
        with self._lock:
            closing = self._closing
        if not closing:
            try:
                os.pread(self._fd, 1, pos)              # blocks until it is read in
            except OSError:
                pass                                    # the real read will say
        with self._lock:
            self._waiting = False
            if self._closing:
                self._close_fd_locked()
                return
        self._reactor.callFromThread(self._wake)

    # the consumer's side (reactor thread)

    def _wake(self) -> None:
        if self.consumer is not None:
            self.resumeProducing()

    def resumeProducing(self) -> None:
        if self.consumer is None or self.deferred is None or self._waiting:
            return
        if self.remaining > 0:
            if self._pool is not None:
                span = self._next_span()
                if not self._cached(span):
                    with self._lock:
                        self._waiting = True
                    self._pool.callInThread(self._await_pages, self._pos)
                    return
            try:
                data = self._next()
                if not data:
                    raise IntegrityFailure("stored file ended early")
            except Exception:
                self._end(Failure())
                return
            self.remaining -= len(data)
            self.sent += len(data)
            self.consumer.write(data)
        if self.remaining <= 0 and self.deferred is not None:
            self._end(None)

    def pauseProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        d, self.deferred = self.deferred, None
        self.consumer = None
        self._close()
        if d is not None:
            d.errback(DownloadStopped("consumer stopped the transfer"))

    def _close_fd_locked(self) -> None:
        if not self._fd_closed:
            self._fd_closed = True
            os.close(self._fd)

    def _close(self) -> None:
        """Close the file now, or let the waiting worker job close it."""
        with self._lock:
            self._closing = True
            if not self._waiting:
                self._close_fd_locked()

    def _end(self, failure: Failure | None) -> None:
        self._close()
        consumer, self.consumer = self.consumer, None
        if consumer is not None:
            consumer.unregisterProducer()
        d, self.deferred = self.deferred, None
        if d is None:
            return
        if failure is None:
            d.callback(self.sent)
        else:
            d.errback(failure)

    def close(self) -> None:
        """Release the file when the transfer will not be started after all
        (or is over: then this changes nothing)."""
        self._close()


# ---------------------------------------------------------------- the store

class BlobStore:
    """
    Content by opaque id under C{root}.  Paths come only from L{path_of},
    which accepts nothing but 32 lowercase hex digits.

    Disk work of uploads and deletions runs in a small dedicated thread pool
    (its own unless one is given), started on first use; call L{stop} at
    shutdown (it is also registered as a reactor shutdown trigger).

    @param fsync: make uploads durable (fsync the file and directories);
        only tests and benchmarks on tmpfs turn it off.
    @param write_behind: hand uploads to the disk while they arrive and keep
        their page cache bounded (L{_WriteBehind}).
    """

    log = Logger()

    def __init__(self, root: str, threadpool: ThreadPool | None = None, reactor=None,
                 fsync: bool = True, high_water: int = HIGH_WATER, read_size: int = READ_CHUNK,
                 threads: int = 4, write_behind: bool = True):
        self.root = os.path.abspath(root)
        self.write_behind = write_behind
        self.blobs_dir = os.path.join(self.root, "blobs")
        self.tmp_dir = os.path.join(self.root, "tmp")
        os.makedirs(self.root, mode=0o700, exist_ok=True)   # may be a symlink (operator's choice)
        for path in (self.blobs_dir, self.tmp_dir):
            _ensure_real_dir(path)
        self.fsync = fsync
        self.high_water = high_water
        self.read_size = read_size
        self._reactor = reactor
        self._given_pool = threadpool
        self._own_pool = None if threadpool is not None else ThreadPool(
            minthreads=0, maxthreads=threads, name="netshare-blobs")
        self._started = False
        self._trigger = None
        self._uploading: dict[str, UploadSink] = {}     # open sinks (space reservation)
        self._held: set[str] = set()                    # ids not to treat as stale/orphaned

    # lifecycle

    def _get_reactor(self, reactor=None):
        if reactor is not None:
            return reactor
        if self._reactor is None:
            from twisted.internet import reactor as global_reactor
            self._reactor = global_reactor
        return self._reactor

    def _pool(self) -> ThreadPool:
        if self._given_pool is not None:
            return self._given_pool
        if not self._started:
            self._own_pool.start()
            self._started = True
            self._trigger = self._get_reactor().addSystemEventTrigger(
                "during", "shutdown", self.stop)
        return self._own_pool

    def stop(self) -> None:
        """Stop our own worker threads (waits for running jobs)."""
        if self._started:
            self._started = False
            if self._trigger is not None:
                try:
                    self._get_reactor().removeSystemEventTrigger(self._trigger)
                except (ValueError, KeyError):
                    pass
                self._trigger = None
            self._own_pool.stop()
            self._own_pool = ThreadPool(minthreads=0, maxthreads=self._own_pool.max,
                                        name="netshare-blobs")

    def _run(self, fn, *args) -> defer.Deferred:
        return deferToThreadPool(self._get_reactor(), self._pool(), fn, *args)

    # paths

    @staticmethod
    def new_id() -> str:
        return secrets.token_hex(16)

    def path_of(self, blob_id: str) -> str:
        """The content path of C{blob_id}; anything but 32 lowercase hex
        digits is refused, so no outside string ever reaches a path."""
        if not isinstance(blob_id, str) or not _BLOB_ID.fullmatch(blob_id):
            raise ValueError("invalid blob id %r" % (blob_id,))
        return os.path.join(self.blobs_dir, blob_id[:2], blob_id)

    def _tmp_path(self, blob_id: str) -> str:
        self.path_of(blob_id)
        return os.path.join(self.tmp_dir, blob_id + ".part")

    # start-up housekeeping

    def sweep(self) -> int:
        """
        Remove stale temporary files (uploads cut by a crash).  Called
        synchronously at start-up; uploads in progress in this process are
        left alone, so it is also safe later.  @return: files removed.
        """
        removed = 0
        with os.scandir(self.tmp_dir) as entries:
            for entry in entries:
                blob_id = entry.name[:-5] if entry.name.endswith(".part") else None
                if blob_id in self._held:
                    continue
                if entry.is_dir(follow_symlinks=False):
                    self.log.warn("sweep: leaving unexpected directory {name} in tmp",
                                  name=entry.name)
                    continue
                try:
                    os.unlink(entry.path)
                    removed += 1
                except FileNotFoundError:
                    pass
        if removed:
            self.log.info("sweep: removed {count} stale temporary files", count=removed)
        return removed

    def all_blob_ids(self) -> set[str]:
        """Every blob id on disk (worker or start-up only: it lists directories)."""
        found = set()
        with os.scandir(self.blobs_dir) as shards:
            for shard in shards:
                if not shard.is_dir(follow_symlinks=False) or len(shard.name) != 2:
                    continue
                with os.scandir(shard.path) as entries:
                    for entry in entries:
                        if _BLOB_ID.fullmatch(entry.name) and entry.name[:2] == shard.name:
                            found.add(entry.name)
        return found

    def _remove_orphans(self, known: frozenset) -> int:
        removed = 0
        for blob_id in self.all_blob_ids() - known:
            if blob_id in self._held:
                continue
            try:
                os.unlink(self.path_of(blob_id))
                removed += 1
            except FileNotFoundError:
                pass
        return removed

    def remove_orphans(self, known_ids) -> defer.Deferred:
        """
        Remove blobs that no database row names (kill -9 between the rename
        into C{blobs/} and the row insert).  C{known_ids} must be read from
        the database I{after} this process started accepting uploads only
        if those uploads are L{hold}ed until their row is written, which
        L{FilesService} does; at start-up, before listening, it is simply
        safe.  Runs in the worker.  @return: Deferred[int] blobs removed.
        """
        known = frozenset(known_ids)

        def logged(n):
            if n:
                self.log.warn("removed {count} orphaned blobs (no database row)", count=n)
            return n

        return self._run(self._remove_orphans, known).addCallback(logged)

    # space

    def check_space(self, size: int, min_free_percent: float) -> None:
        """
        Refuse (452) if storing C{size} more bytes, on top of the uploads in
        progress, would leave less than C{min_free_percent} of the disk free.
        One statvfs call: cheap enough for the reactor thread.
        """
        st = os.statvfs(self.root)
        total = st.f_blocks * st.f_frsize
        free = st.f_bavail * st.f_frsize
        reserved = sum(max(0, s.size - s.received) for s in self._uploading.values())
        if free - reserved - size < total * (min_free_percent / 100.0):
            self.log.warn("refusing {size} bytes: {free} free of {total}, {reserved} reserved",
                          size=size, free=free, total=total, reserved=reserved)
            raise InsufficientStorage("insufficient storage")

    # upload

    def open_upload(self, size: int, sha256_hex: str | None = None,
                    encryption: EncryptionParams | None = None, reactor=None) -> UploadSink:
        """Start receiving a blob of exactly C{size} plaintext bytes."""
        if not isinstance(size, int) or size < 0:
            raise BadArguments("size must be a whole number of bytes")
        expected = check_sha256(sha256_hex)
        blob_id = self.new_id()
        writer = _BlobWriter(self._tmp_path(blob_id), os.path.dirname(self.path_of(blob_id)),
                             self.path_of(blob_id), blob_id, size, encryption, self.fsync,
                             self.write_behind)
        sink = UploadSink(self, writer, expected, self._get_reactor(reactor), self._pool(),
                          self.high_water)
        self._uploading[blob_id] = sink
        self._held.add(blob_id)
        return sink

    def _finished(self, blob_id: str) -> None:
        """A sink stored its blob: still held until the caller L{release}s it."""
        self._uploading.pop(blob_id, None)

    def _forget(self, blob_id: str) -> None:
        self._uploading.pop(blob_id, None)
        self._held.discard(blob_id)

    def hold(self, blob_id: str) -> None:
        """Protect a blob from L{remove_orphans} (its row is not written yet)."""
        self._held.add(blob_id)

    def release(self, blob_id: str) -> None:
        """The blob's row is written (or the blob deleted): stop protecting it."""
        self._held.discard(blob_id)

    # download

    def open_download(self, blob_id: str, offset: int = 0, key: bytes | None = None,
                      expected_size: int | None = None) -> BlobReader:
        """
        Open a blob for streaming from C{offset} (plaintext position).

        The file is opened now, so a later delete or replace cannot take it
        away from this reader (module docstring).  Symlinks are not
        followed.  @raise NotFound: the blob is gone (deleted meanwhile).
        @raise BadArguments: (501) offset outside 0..size.
        @raise IntegrityFailure: (554) the blob's length or header is wrong.
        """
        path = self.path_of(blob_id)
        try:
            fd = os.open(path, os.O_RDONLY | _O_NOFOLLOW | _O_CLOEXEC)
        except FileNotFoundError:
            raise NotFound("no such file") from None
        except OSError as e:
            if e.errno == errno.ELOOP:
                self.log.error("blob {blob} is a symlink: refusing it", blob=blob_id)
                raise IntegrityFailure("stored file is damaged") from None
            raise
        try:
            return self._reader(fd, blob_id, offset, key, expected_size)
        except BaseException:
            os.close(fd)
            raise

    def _reader(self, fd: int, blob_id: str, offset: int, key: bytes | None,
                expected_size: int | None) -> BlobReader:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise IntegrityFailure("stored file is damaged")
        header = None
        if key is None:
            size = st.st_size
        else:
            header = _Header.unpack(os.pread(fd, HEADER_SIZE, 0))
            size = header.size
            if st.st_size != encrypted_size(size, header.chunk_size):
                self.log.error("blob {blob} has {actual} bytes, expected {expected}",
                               blob=blob_id, actual=st.st_size,
                               expected=encrypted_size(size, header.chunk_size))
                raise IntegrityFailure("stored file is truncated or damaged")
        if expected_size is not None and size != expected_size:
            self.log.error("blob {blob} holds {actual} bytes, its row says {expected}",
                           blob=blob_id, actual=size, expected=expected_size)
            raise IntegrityFailure("stored file has the wrong size")
        if not isinstance(offset, int) or not 0 <= offset <= size:
            raise BadArguments("bad offset: must be from 0 to %d" % size)
        return BlobReader(fd, size, offset, self.read_size, key, header, pool=self._pool(),
                          reactor=self._get_reactor())

    # delete

    def _unlink(self, blob_id: str) -> bool:
        try:
            os.unlink(self.path_of(blob_id))
            return True
        except FileNotFoundError:
            return False

    def unlink_now(self, blob_id: str) -> bool:
        """Unlink a blob synchronously: for programs without a reactor (the
        operator CLI), never for a server."""
        return self._unlink(blob_id)

    def delete(self, blob_id: str) -> defer.Deferred:
        """
        Unlink a blob (in the worker).  Readers that already opened it keep
        reading the old content until they close it (POSIX semantics, see
        the module docstring).  Never fails: an error is logged (the blob
        becomes an orphan, removed at the next start-up).
        @return: Deferred[bool] whether a file was removed.
        """
        self.path_of(blob_id)

        def failed(f):
            self.log.failure("could not delete blob {blob}", f, blob=blob_id)
            return False

        def done(removed):
            self.release(blob_id)
            return removed

        return self._run(self._unlink, blob_id).addCallbacks(done, failed)


# ---------------------------------------------------------------- lockout

@dataclass
class _Strikes:
    times: deque
    locked_until: float = 0.0


class PasswordLockout:
    """
    Wrong file passwords per (user, file key): C{max_failures} within
    C{window} seconds lock that user out of that file for C{lockout}
    seconds.  Only failures count; a right password clears the record.

    Memory is bounded: each record keeps at most C{max_failures} times,
    expired records are dropped lazily, and beyond C{max_entries} records
    the least recently touched ones are evicted.
    """

    def __init__(self, clock, max_failures: int = 5, window: float = 900.0,
                 lockout: float = 900.0, max_entries: int = 100_000):
        self.clock = clock
        self.max_failures = max_failures
        self.window = window
        self.lockout = lockout
        self.max_entries = max_entries
        self._entries: OrderedDict[tuple[str, str], _Strikes] = OrderedDict()
        self._inflight: dict = {}       # (user, key) -> attempts being checked now
        self._last_prune = clock.seconds()

    def __len__(self) -> int:
        return len(self._entries)

    def check(self, user, key: str) -> None:
        """
        @raise RateLimited: (429) while C{user} is locked out of C{key}, or
            when its recent failures plus its attempts still in flight (see
            L{begin}) already reach the limit: parallel attempts on several
            connections cannot add up to more guesses than that.
        """
        entry = self._entries.get((user, key))
        now = self.clock.seconds()
        if entry is not None and entry.locked_until > now:
            wait = int(math.ceil(entry.locked_until - now))
            raise RateLimited("too many wrong passwords for this file; try again in %d s" % wait)
        inflight = self._inflight.get((user, key), 0)
        if inflight:
            recent = 0
            if entry is not None:
                recent = sum(1 for t in entry.times if t > now - self.window)
            if recent + inflight >= self.max_failures:
                raise RateLimited("too many password attempts for this file at once; "
                                  "try again in a moment")

    def begin(self, user, key: str) -> None:
        """An attempt is being checked (L{end} when it is decided)."""
        self._inflight[(user, key)] = self._inflight.get((user, key), 0) + 1

    def end(self, user, key: str) -> None:
        n = self._inflight.get((user, key), 0) - 1
        if n > 0:
            self._inflight[(user, key)] = n
        else:
            self._inflight.pop((user, key), None)

    def failure(self, user: str, key: str) -> bool:
        """Record a wrong password.  @return: whether the user is now locked out."""
        now = self.clock.seconds()
        entry = self._entries.pop((user, key), None)
        if entry is None:
            entry = _Strikes(deque(maxlen=self.max_failures))
        while entry.times and entry.times[0] <= now - self.window:
            entry.times.popleft()
        entry.times.append(now)
        locked = len(entry.times) >= self.max_failures
        if locked:
            entry.locked_until = now + self.lockout
            entry.times.clear()
        self._entries[(user, key)] = entry
        self._prune(now)
        return locked

    def success(self, user: str, key: str) -> None:
        self._entries.pop((user, key), None)

    def _prune(self, now: float) -> None:
        if len(self._entries) <= self.max_entries and now - self._last_prune < self.window:
            return
        self._last_prune = now
        for k in [k for k, e in self._entries.items()
                  if e.locked_until <= now and (not e.times or e.times[-1] <= now - self.window)]:
            del self._entries[k]
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)


# ---------------------------------------------------------------- the service

@dataclass
class PendingUpload:
    """
    An accepted UPLOAD, between C{350} and C{226}.

    The protocol sends C{350 send <size> bytes}, registers its producer on
    C{sink}, writes the body into it, then calls L{complete} (after exactly
    C{size} bytes) or L{abort} (connection lost).
    """

    service: "FilesService"
    sink: UploadSink
    name: str
    key: str
    owner: Any           # the uploader's Account
    size: int
    visibility: str | None
    replace: bool

    def complete(self, journal=None) -> defer.Deferred:
        """@return: Deferred[FileRecord] once durable and recorded (226).
        C{journal}: the UPLOAD's history row, written with the file's row."""
        return defer.ensureDeferred(self.service._complete(self, journal))

    def abort(self) -> defer.Deferred:
        return self.sink.abort()


@dataclass
class PreparedDownload:
    """
    An accepted DOWNLOAD: send C{150 <remaining> bytes sha256=<sha256>},
    then C{reader.beginFileTransfer(transport)}, then C{226 transfer
    complete}.  If the transfer will not start, call C{reader.close()}.
    """

    record: Any
    reader: BlobReader

    @property
    def remaining(self) -> int:
        return self.reader.remaining

    @property
    def sha256(self) -> str:
        return self.record.sha256


@dataclass(frozen=True)
class FileView:
    """A file as one caller may see it: C{sha256} is None for a protected
    file unless the caller owns it, is an admin or gave its password."""

    record: Any
    reveal_sha256: bool

    @property
    def sha256(self) -> str | None:
        return self.record.sha256 if self.reveal_sha256 else None

    def to_wire(self) -> dict:
        return self.record.to_wire(reveal_sha256=self.reveal_sha256)


class _NoPenalties:
    """The L{Penalties} interface, limiting nothing (a file's owner)."""

    free = 0

    def attempt(self, *keys):
        return 0.0

    def succeeded(self, *keys):
        pass

    def failures(self, key):
        return 0.0


_NO_PENALTIES = _NoPenalties()


class FilesService:
    """
    Decides every files command; the protocol only parses and replies.

    Every method takes the L{netshare.accounts.Caller} asking (its account
    decides ownership by id, its address keys the guessing limits).

    @param files: the metadata store (L{netshare.storage.files.FileStore}
        or anything with its methods).
    @param blobs: the L{BlobStore}.
    @param kdf: a C{KDFPool} (C{derive(password, salt, n, r, p, length)}).
    @param user_quota: bytes per user, 0 for unlimited.
    @param misses: the L{Penalties} of names not found (C{550} on INFO,
        CHECKSUM and DOWNLOAD), per account and per address: guessing the
        name of a hidden file costs seconds per try after a few misses.
    @param file_guesses: the L{Penalties} of wrong passwords per protected
        file from every account together (on top of the per-account
        L{PasswordLockout}), so extra accounts do not buy extra guesses.
    """

    log = Logger()

    def __init__(self, files, blobs: BlobStore, kdf, lockout: PasswordLockout | None = None,
                 max_file_size: int = 64 * GiB, user_quota: int = 100 * GiB,
                 min_free_percent: float = 5.0, kdf_params: tuple = FILE_SCRYPT, clock=None,
                 misses: Penalties | None = None, file_guesses: Penalties | None = None):
        if clock is None:
            from twisted.internet import reactor as clock
        self.files = files
        self.blobs = blobs
        self.kdf = kdf
        self.clock = clock
        self.lockout = lockout if lockout is not None else PasswordLockout(clock)
        self.misses = misses if misses is not None else Penalties(
            clock, what="names not found")
        self.file_guesses = file_guesses if file_guesses is not None else Penalties(
            clock, base=2.0, max_delay=180.0, max_wait=360.0, decay=180.0,
            what="wrong passwords for this file")
        self.max_file_size = max_file_size
        self.user_quota = user_quota
        self.min_free_percent = min_free_percent
        self.kdf_params = tuple(kdf_params)

    def _now_ms(self) -> int:
        return int(self.clock.seconds() * 1000)

    @property
    def _quota(self) -> int | None:
        return self.user_quota or None

    def startup(self) -> defer.Deferred:
        """
        Start-up housekeeping, before the listener accepts uploads: remove
        stale temporaries and orphaned blobs.
        @return: Deferred[dict] with the counts C{temporaries}, C{orphans}.
        """
        return defer.ensureDeferred(self._startup())

    async def _startup(self) -> dict:
        swept = self.blobs.sweep()
        known = await self.files.all_blob_ids()
        orphans = await self.blobs.remove_orphans(known)
        missing = known - self.blobs.all_blob_ids()
        if missing:
            names = await self.files.names_of_blobs(sorted(missing))
            self.log.error("{n} files have no content on disk (a DOWNLOAD answers 554; "
                           "`netshare db check` lists them): {names}", n=len(missing),
                           names=", ".join(names[:20]) + (" ..." if len(names) > 20 else ""))
        return {"temporaries": swept, "orphans": orphans, "missing": len(missing)}

    def forget_blobs(self, blob_ids) -> defer.Deferred:
        """Unlink blobs whose rows are gone for good (a removed account's
        files, deleted in the committed removal)."""
        return defer.DeferredList([self.blobs.delete(b) for b in blob_ids])

    # -- looking a name up, at the pace the guessing limits allow

    def _miss_keys(self, caller):
        return (("account", caller.id), ("address", caller.address))

    async def _find(self, caller, name: str):
        """
        The record of C{name} for INFO, CHECKSUM and DOWNLOAD.  A caller that
        missed too often waits first (every lookup, found or not, so the
        answer time tells nothing) or gets C{429}; a miss counts.  Admins
        are not slowed: they may list every hidden file anyway.
        """
        key = name_key(normalize_name(name))
        if caller.is_admin:
            rec = await self.files.get(key)
        else:
            keys = self._miss_keys(caller)
            wait = self.misses.attempt(*keys)       # a miss until found
            if wait:
                await task.deferLater(self.clock, wait, lambda: None)
            try:
                rec = await self.files.get(key)
            except BaseException:
                self.misses.succeeded(*keys)        # not a miss: the database failed
                raise
            if rec is not None:
                self.misses.succeeded(*keys)
            elif max(self.misses.failures(k) for k in keys) == self.misses.free + 1:
                self.log.warn("{user} from {address}: {n} names not found; every further "
                              "lookup is slowed down", user=caller.name,
                              address=caller.address, n=self.misses.free + 1)
        if rec is None:
            raise NotFound("no such file")
        return rec

    def _reveals(self, caller, rec) -> bool:
        return not rec.protected or caller.is_admin or rec.owner_id == caller.id

    # -- commands

    def info(self, caller, name: str, password: str | None = None) -> defer.Deferred:
        """INFO and CHECKSUM: any logged-in user, hidden files included.  A
        protected file's sha256 is shown only to its owner, an admin or a
        caller giving the right C{password} (a wrong one is C{535} and counts
        like a wrong DOWNLOAD password).  @return: Deferred[L{FileView}];
        550, 553, 535, 429."""
        return defer.ensureDeferred(self._info(caller, name, password))

    async def _info(self, caller, name, password):
        rec = await self._find(caller, name)
        reveal = self._reveals(caller, rec)
        if rec.protected and password is not None and not reveal:
            await self._unlock(caller, rec, password)
            reveal = True
        return FileView(rec, reveal)

    def list(self, caller, which: str | None = None) -> defer.Deferred:
        """LIST (public), LIST mine (own public), LIST hidden (an admin's:
        every hidden file; anyone else's: their own).
        @return: Deferred[list of L{FileView}]."""
        if which is None:
            d = self.files.list_public()
        elif which == "mine":
            d = self.files.list_public(owner_id=caller.id)
        elif which == "hidden":
            d = self.files.list_hidden(owner_id=None if caller.is_admin else caller.id)
        else:
            return defer.fail(BadArguments("LIST takes nothing, mine or hidden"))
        return d.addCallback(lambda recs: [FileView(r, self._reveals(caller, r)) for r in recs])

    def begin_upload(self, caller, name: str, size: int, visibility: str | None = None,
                     password: str | None = None, sha256: str | None = None,
                     replace: bool = False) -> defer.Deferred:
        """
        Everything that must be checked before C{350}: 553 bad name, 501 bad
        arguments, 552 size limit or quota, 555 exists (or someone else's),
        452 disk space, then the key derivation for a protected file (429
        when the KDF pool is saturated).  C{visibility=None} means public
        for a new file and unchanged for a replaced one.
        @return: Deferred[L{PendingUpload}].
        """
        return defer.ensureDeferred(
            self._begin_upload(caller, name, size, visibility, password, sha256, replace))

    async def _begin_upload(self, caller, name, size, visibility, password, sha256, replace):
        name = normalize_name(name)
        key = name_key(name)
        if not isinstance(size, int) or size < 0:
            raise BadArguments("size must be a whole number of bytes")
        if visibility is not None and visibility not in VISIBILITIES:
            raise BadArguments("visibility must be public or hidden")
        expected = check_sha256(sha256)
        check_file_password(password)
        if size > self.max_file_size:
            raise LimitExceeded("file too large: the limit is %d bytes" % self.max_file_size)
        existing = await self.files.get(key)
        if existing is not None:
            if existing.owner_id != caller.id:
                raise Conflict("file exists and belongs to someone else")
            if not replace:
                raise Conflict("file exists (use replace=yes)")
        if self._quota is not None:
            used = await self.files.usage(caller.id)
            if existing is not None:
                used -= existing.size
            if used + size > self._quota:
                raise LimitExceeded("quota exceeded: %d of %d bytes used" % (used, self._quota))
        on_disk = encrypted_size(size) if password is not None else size
        self.blobs.check_space(on_disk, self.min_free_percent)
        encryption = None
        if password is not None:
            n, r, p = self.kdf_params
            encryption = await prepare_encryption(password, self.kdf, n, r, p,
                                                  source=caller.address)
        sink = self.blobs.open_upload(size, expected, encryption)
        return PendingUpload(self, sink, name, key, caller.account, size, visibility,
                             bool(replace))

    async def _complete(self, up: PendingUpload, journal=None):
        stored = await up.sink.finish()
        row = dict(name=up.name, name_key=up.key, owner=up.owner.name, owner_id=up.owner.id,
                   size=stored.size, sha256=stored.sha256, visibility=up.visibility,
                   blob_id=stored.blob_id, enc_meta=stored.enc_meta, created_ms=self._now_ms(),
                   quota=self._quota)
        try:
            if up.replace:
                record, old_blob = await self.files.replace(**row, journal=journal)
            else:
                row["visibility"] = up.visibility or "public"
                record, old_blob = await self.files.insert(**row, journal=journal), None
        except OutcomeUnknown as e:
            # A committed row may point at the new content: keep it (held,
            # so no orphan sweep takes it) until the database knows.
            e.settled().addCallbacks(self._settledUpload, self._failedUpload,
                                     callbackArgs=(stored.blob_id, up.replace),
                                     errbackArgs=(stored.blob_id,))
            raise
        except BaseException:
            await self.blobs.delete(stored.blob_id)
            raise
        self.blobs.release(stored.blob_id)
        if old_blob is not None:
            await self.blobs.delete(old_blob)
        self.log.info("stored {name} ({size} bytes) for {owner}", name=up.name,
                      size=stored.size, owner=up.owner.name)
        return record

    def _settledUpload(self, result, blob_id, replaced):
        self.log.info("an upload whose outcome was unknown had committed")
        self.blobs.release(blob_id)
        old_blob = result[1] if replaced else None
        if old_blob is not None:
            self.blobs.delete(old_blob)

    def _failedUpload(self, failure, blob_id):
        self.log.info("an upload whose outcome was unknown had not committed: "
                      "removing its content")
        self.blobs.delete(blob_id)

    def open_download(self, caller, name: str, password: str | None = None,
                      offset: int = 0) -> defer.Deferred:
        """
        Everything before C{150}: 553/550 name, 501 bad offset, 429 locked
        out, 535 missing or wrong file password (checked before any byte).
        @return: Deferred[L{PreparedDownload}].
        """
        return defer.ensureDeferred(self._open_download(caller, name, password, offset))

    async def _open_download(self, caller, name, password, offset):
        if not isinstance(offset, int) or offset < 0:
            raise BadArguments("bad offset")
        tried = None
        while True:
            rec = await self._find(caller, name)
            if offset > rec.size:
                raise BadArguments("bad offset: must be from 0 to %d" % rec.size)
            key = None
            if rec.enc_meta is not None:
                key = await self._unlock(caller, rec, password)
            try:
                reader = self.blobs.open_download(rec.blob_id, offset, key, rec.size)
            except NotFound:
                if tried == rec.blob_id:
                    # The row still names it: the content is gone from disk.
                    self.log.error("{name}: its content {blob} is missing from disk "
                                   "(netshare db check lists every such file)",
                                   name=rec.name, blob=rec.blob_id)
                    raise IntegrityFailure("stored file is missing; the operator is told")
                # The row we read was replaced or deleted before we opened its
                # blob: look again once (a replace leaves a new row).
                tried = rec.blob_id
                continue
            return PreparedDownload(rec, reader)

    async def _unlock(self, caller, rec, password: str | None) -> bytes:
        """
        A protected file's key.  Wrong passwords are limited twice: per
        (account, file) by the L{PasswordLockout} (429 for 15 minutes after
        5), and per file across all accounts by L{file_guesses} (every try
        waits once the file has seen a few wrong passwords, then 429), so
        self-registered extra accounts do not buy extra guesses.
        """
        self.lockout.check(caller.id, rec.name_key)
        if password is None:
            raise BadCredentials("file is protected: password required")
        # The owner is no sybil: only their own lockout applies to them, so
        # guessers cannot keep the owner from their file.
        file_key = ("file", rec.id)
        guesses = self.file_guesses if rec.owner_id != caller.id else _NO_PENALTIES
        wait = guesses.attempt(file_key)               # a wrong password until proved right
        self.lockout.begin(caller.id, rec.name_key)
        try:
            if wait:
                await task.deferLater(self.clock, wait, lambda: None)
            key = await unlock(rec.enc_meta, password, self.kdf, source=caller.address)
        except BadCredentials:
            self.lockout.end(caller.id, rec.name_key)
            if self.lockout.failure(caller.id, rec.name_key):
                self.log.warn("{user} locked out of {name} after wrong passwords",
                              user=caller.name, name=rec.name)
            failures = guesses.failures(file_key)
            if failures >= guesses.free:
                self.log.warn("{name}: {n} recent wrong passwords from all accounts; every "
                              "further try waits (last from {user} at {address})",
                              name=rec.name, n=int(failures), user=caller.name,
                              address=caller.address)
            raise
        except BaseException:
            self.lockout.end(caller.id, rec.name_key)
            guesses.succeeded(file_key)                 # not a wrong password
            raise
        self.lockout.end(caller.id, rec.name_key)
        guesses.succeeded(file_key)
        self.lockout.success(caller.id, rec.name_key)
        return key

    def delete(self, caller, name: str, journal=None) -> defer.Deferred:
        """DELETE: owner or admin (531), 550.  The row goes first (with the
        command's history row, C{journal}), then the blob.
        @return: Deferred[FileRecord] of the deleted file."""
        return defer.ensureDeferred(self._delete(caller, name, journal))

    async def _delete(self, caller, name, journal=None):
        key = name_key(normalize_name(name))
        try:
            rec = await self.files.delete(key, owner_id=None if caller.is_admin else caller.id,
                                          journal=journal)
        except OutcomeUnknown as e:
            # The content goes only once its row is known to be gone.
            e.settled().addCallbacks(lambda gone: self.blobs.delete(gone.blob_id),
                                     lambda f: None)
            raise
        await self.blobs.delete(rec.blob_id)
        self.log.info("{user} deleted {name}", user=caller.name, name=rec.name)
        return rec

"""
Encryption at rest of protected files.

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
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import struct
from dataclasses import dataclass, field
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from netshare.deferreds import deferred
from netshare.errors import BadCredentials, IntegrityFailure, LimitExceeded
from netshare.kdf import KDFPool
from netshare.services.files.names import (
    MAX_PASSWORD_CHARS,
    check_file_password,
    password_bytes,
)

KiB = 1024
ENC_CHUNK = 64 * KiB  # plaintext bytes per encrypted chunk
FILE_SCRYPT = (2**15, 8, 1)  # default (N, r, p) for file passwords


_MAGIC = b"NSFE"
_FORMAT_VERSION = 1
_ALG_AES256GCM = 1
_HEADER = struct.Struct(">4sBBHIQ16s8s")
HEADER_SIZE = _HEADER.size  # 44
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
            "v": _FORMAT_VERSION,
            "alg": "AES-256-GCM",
            "kdf": "scrypt",
            "n": self.n,
            "r": self.r,
            "p": self.p,
            "salt": self.salt.hex(),
            "verifier": self.verifier,
            "nonce_prefix": self.nonce_prefix.hex(),
            "chunk_size": self.chunk_size,
        }


def _split_derived(derived: bytes) -> tuple[bytes, str]:
    """64 scrypt bytes -> (AES key, verifier hex)."""
    if len(derived) != 64:
        raise ValueError("expected 64 derived bytes")
    verifier = hashlib.sha256(_VERIFIER_CONTEXT + derived[32:]).hexdigest()
    return derived[:32], verifier


@deferred
async def prepare_encryption(
    password: str,
    kdf: KDFPool,
    n: int = FILE_SCRYPT[0],
    r: int = FILE_SCRYPT[1],
    p: int = FILE_SCRYPT[2],
    chunk_size: int = ENC_CHUNK,
    source: str | None = None,
) -> EncryptionParams:
    """
    Derive a fresh key for a new protected upload (fresh salt and nonce
    prefix), in the KDF pool.

    @return: Deferred[L{EncryptionParams}]; fails with C{RateLimited} (429)
        when the KDF pool is saturated.
    """
    check_file_password(password)
    if not 1 <= chunk_size <= 2**31:
        raise ValueError("bad chunk size")
    salt = secrets.token_bytes(16)
    prefix = secrets.token_bytes(8)
    derived = await kdf.derive(password_bytes(password), salt, n, r, p, 64, source=source)
    key, verifier = _split_derived(derived)
    return EncryptionParams(key, salt, n, r, p, verifier, prefix, chunk_size)


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


@deferred
async def unlock(
    enc_meta: dict[str, Any] | None, password: str, kdf: KDFPool, source: str | None = None
) -> bytes:
    """
    Check a file password against a protected file's stored verifier.

    @return: Deferred[bytes], the AES key; fails with L{BadCredentials}
        (535) for a wrong password, before any content is read, and with
        L{IntegrityFailure} (554) for damaged parameters.
    """
    salt, n, r, p, verifier = _meta_params(enc_meta)
    if not isinstance(password, str) or not password or len(password) > MAX_PASSWORD_CHARS:
        raise BadCredentials("wrong file password")
    try:
        secret = password_bytes(password)
    except UnicodeEncodeError:
        raise BadCredentials("wrong file password") from None
    derived = await kdf.derive(secret, salt, n, r, p, 64, source=source)
    key, candidate = _split_derived(derived)
    if not hmac.compare_digest(candidate.encode("ascii"), verifier.encode("ascii")):
        raise BadCredentials("wrong file password")
    return key


def params_from_meta(meta: dict[str, Any], key: bytes) -> EncryptionParams:
    """
    The L{EncryptionParams} of stored C{meta} with its C{key} (from
    L{unlock}): what continuing an interrupted protected upload needs, so
    its remaining chunks are sealed exactly as the first ones were (same
    salt, nonce prefix and chunk size, hence the same header).
    """
    salt, n, r, p, verifier = _meta_params(meta)
    try:
        prefix = bytes.fromhex(meta["nonce_prefix"])
        chunk_size = int(meta["chunk_size"])
        if len(prefix) != 8 or not 1 <= chunk_size <= 2**31:
            raise ValueError("bad parameters")
    except (KeyError, TypeError, ValueError):
        raise IntegrityFailure("stored encryption parameters are damaged") from None
    return EncryptionParams(key, salt, n, r, p, verifier, prefix, chunk_size)


def chunk_count(size: int, chunk_size: int) -> int:
    return max(1, -(-size // chunk_size))


def encrypted_size(size: int, chunk_size: int = ENC_CHUNK) -> int:
    """Bytes on disk for C{size} plaintext bytes in the encrypted format."""
    return HEADER_SIZE + size + TAG_SIZE * chunk_count(size, chunk_size)


@dataclass(frozen=True)
class BlobHeader:
    chunk_size: int
    size: int
    salt: bytes
    nonce_prefix: bytes

    def pack(self) -> bytes:
        return _HEADER.pack(
            _MAGIC,
            _FORMAT_VERSION,
            _ALG_AES256GCM,
            0,
            self.chunk_size,
            self.size,
            self.salt,
            self.nonce_prefix,
        )

    @classmethod
    def unpack(cls, data: bytes) -> "BlobHeader":
        if len(data) != HEADER_SIZE:
            raise IntegrityFailure("stored file is truncated")
        magic, version, alg, reserved, chunk, size, salt, prefix = _HEADER.unpack(data)
        if (
            magic != _MAGIC
            or version != _FORMAT_VERSION
            or alg != _ALG_AES256GCM
            or reserved
            or chunk < 1
        ):
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


class ChunkEncryptor:
    """
    Seal a plaintext stream into fixed-size chunks (worker thread only).

    @param start: the index of the first chunk to seal: a resumed upload
        continues after the C{start} chunks already on disk.
    @param hasher: if given, updated with each chunk's plaintext as it is
        sealed, so it always covers exactly the chunks written (what an
        interrupted upload keeps), never the bytes still buffered.
    """

    def __init__(self, key: bytes, header: BlobHeader, start: int = 0, hasher: Any = None):
        if header.chunks > 2**32:
            raise LimitExceeded("file too large for encryption")
        if not 0 <= start < header.chunks:
            raise ValueError("bad first chunk index")
        self._aead = AESGCM(key)
        self._header = header
        self.header_bytes = header.pack()
        self._index = start
        self._hasher = hasher
        self._buf = bytearray()

    @property
    def sealed(self) -> int:
        """Chunks sealed so far, those before C{start} included."""
        return self._index

    def _seal(self, plain: bytes, last: bool) -> bytes:
        i = self._index
        self._index += 1
        if self._hasher is not None:
            self._hasher.update(plain)
        return self._aead.encrypt(
            _nonce(self._header.nonce_prefix, i), plain, _aad(self.header_bytes, i, last)
        )

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


def open_chunk(
    aead: AESGCM, header: BlobHeader, header_bytes: bytes, index: int, sealed: bytes
) -> bytes:
    last = index == header.chunks - 1
    try:
        return aead.decrypt(
            _nonce(header.nonce_prefix, index), sealed, _aad(header_bytes, index, last)
        )
    except InvalidTag:
        raise IntegrityFailure("stored file failed authentication (chunk %d)" % index) from None

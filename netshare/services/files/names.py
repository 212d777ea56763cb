"""
File names, sizes, checksums and file passwords as the files protocol takes
them (docs/protocol.md section 2.A.1).

A file name is only ever a database value.  Content lives under the data
directory by an opaque random id (C{secrets.token_hex(16)}, checked to be 32
lowercase hex digits before any path is built), so a name such as
C{../../etc/passwd}, C{C:\\x} or C{CON} can never reach the filesystem:
traversal is impossible by construction, not by filtering.  The name rules
still exist, so that names stay printable and unambiguous on every client:
see L{normalize_name}.  Uniqueness is case-insensitive through
L{name_key} (NFC, Unicode case folding, NFC again), stored in its own
unique column.
"""

from __future__ import annotations

import re
import unicodedata

from netshare.errors import BadArguments, NameNotAllowed
from netshare.text import first_unsafe

MAX_NAME_BYTES = 255
MAX_PASSWORD_CHARS = 128  # like account passwords (docs/protocol.md section 1)
VISIBILITIES = ("public", "hidden")
_SHA256 = re.compile(r"[0-9a-fA-F]{64}", re.ASCII)
_DIGITS = re.compile(r"[0-9]{1,20}", re.ASCII)


def normalize_name(name: str) -> str:
    """
    Check a file name and return its NFC form (the spelling we store).

    Rules (docs/protocol.md section 2): 1-255 bytes of UTF-8 after NFC; no C{/},
    C{\\}, NUL or other control character; not C{.} or C{..}; no leading or
    trailing space.  Our reading of the last two rules, documented here:
     - "control character" means what L{netshare.text.UNSAFE} refuses
       everywhere: C0/C1 controls, lone surrogates (not UTF-8), the Unicode
       line and paragraph separators and the bidirectional formatting
       characters, which can make a listing display a different name than
       the one stored.
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
    if "/" in nfc or "\\" in nfc:
        raise NameNotAllowed("name may not contain / or \\")
    bad = first_unsafe(nfc)
    if bad is not None:
        if "\ud800" <= bad <= "\udfff":
            raise NameNotAllowed("name is not valid UTF-8")
        raise NameNotAllowed("name may not contain control characters (U+%04X)" % ord(bad))
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


def password_bytes(password: str) -> bytes:
    """NFC then UTF-8, so the same password typed on any keyboard gives one key."""
    return unicodedata.normalize("NFC", password).encode("utf-8")


def check_file_password(password: str | None) -> None:
    """1-128 characters, like account passwords (docs/protocol.md section 1)."""
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

"""
The session tokens a client program keeps (docs/protocol.md section 1.7.1).

After a password login the programs ask for a session token (C{SESSION
NEW}) and keep it in C{$XDG_CONFIG_HOME/netshare/sessions.json} (default
C{~/.config/netshare/sessions.json}; C{NETSHARE_SESSIONS} names another
file), one per server address and account, so the next command logs in
with C{TOKEN}: one database read on the server instead of a password hash
(about 0.6 s), and no password prompt.

The file is created mode 0600 in a directory made 0700, written to a
temporary file and renamed (never half written), and holds nothing but
the tokens: a stolen token is revoked with C{SESSION REVOKE}, C{netshare
user sessions NAME --revoke ID} or a new password.  C{--no-session} (or
C{NETSHARE_SESSIONS=off}) keeps no token and uses none.

Standard library only (see L{netshare.clients.options}).
"""

from __future__ import annotations

import json
import os

#: The typing module costs milliseconds to import; the quick path does not need it.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

OFF = "off"


def path() -> str | None:
    """The token file, or None when sessions are off."""
    explicit = os.environ.get("NETSHARE_SESSIONS")
    if explicit is not None:
        return None if explicit.strip().lower() in (OFF, "") else explicit
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return os.path.join(base, "netshare", "sessions.json")


def key(host: str, port: int, user: str) -> str:
    """Which server and account a token is for (names are case-blind)."""
    return "%s@%s:%d" % (user.lower(), host.lower(), port)


def _load(file: str) -> dict[str, Any]:
    try:
        with open(file, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def load(file: str | None, which: str) -> str | None:
    """The token kept for C{which} (a L{key}), if any."""
    if file is None:
        return None
    entry = _load(file).get(which)
    token = entry.get("token") if isinstance(entry, dict) else None
    return token if isinstance(token, str) else None


def save(file: str | None, which: str, token: str, expires: str | None) -> None:
    """Keep C{token} for C{which}.  A file that cannot be written costs the
    next command a password login, nothing more: errors are ignored."""
    if file is None:
        return
    _update(file, which, {"token": token, "expires": expires})


def forget(file: str | None, which: str) -> bool:
    """Drop the token of C{which}.  @return: whether there was one."""
    if file is None or which not in _load(file):
        return False
    _update(file, which, None)
    return True


def _update(file: str, which: str, entry: dict[str, Any] | None) -> None:
    import tempfile  # (only when writing: a one-shot command that reads costs less)

    folder = os.path.dirname(os.path.abspath(file))
    try:
        os.makedirs(folder, mode=0o700, exist_ok=True)
        data = _load(file)
        if entry is None:
            data.pop(which, None)
        else:
            data[which] = entry
        fd, tmp = tempfile.mkstemp(prefix=".sessions.", dir=folder)  # mode 0600
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(data, f, indent=1, sort_keys=True)
                f.write("\n")
            os.replace(tmp, file)
        except BaseException:
            os.unlink(tmp)
            raise
    except OSError:
        pass

"""
Every netshare setting, in one place.

Each L{Setting} is declared once below; from that one table come the
command-line options of C{twistd netshare} (and their C{--help}), the
C{NETSHARE_*} environment variables, the keys of the config file, the
defaults and the validation.  Precedence, highest first::

    command-line option > NETSHARE_<NAME> environment variable
        > config file (--config netshare.ini) > default

The config file is INI with one section per service: C{[netshare]} for the
general settings, C{[personnel]}, C{[files]}, C{[ttweet]} and C{[manhole]}
for each service's own (C{endpoint = tcp:7002:interface=127.0.0.1}, ...).

The result is a frozen L{Config}: services receive it and never look at the
environment or files themselves.
"""

import configparser
import dataclasses
import os
import re
from dataclasses import dataclass
from typing import Any, Callable


class ConfigError(ValueError):
    """A setting has a bad value; the message names the setting."""


# --- value parsers: each takes the raw string and returns the value or
# raises ValueError with a short reason.

_SIZE_UNITS = {"": 1, "b": 1, "k": 1024, "kb": 1024, "kib": 1024, "m": 1024**2, "mb": 1024**2,
               "mib": 1024**2, "g": 1024**3, "gb": 1024**3, "gib": 1024**3, "t": 1024**4,
               "tb": 1024**4, "tib": 1024**4}


def size(text: str) -> int:
    """A byte count: C{4096}, C{64KiB}, C{1MiB}, C{10G} (binary units)."""
    m = re.fullmatch(r"\s*(\d+)\s*([a-zA-Z]*)\s*", str(text))
    if not m or m.group(2).lower() not in _SIZE_UNITS:
        raise ValueError("expected a size such as 4096, 64KiB, 1MiB or 10GiB")
    return int(m.group(1)) * _SIZE_UNITS[m.group(2).lower()]


def positive_int(text: str) -> int:
    try:
        v = int(str(text).strip())
    except ValueError:
        raise ValueError("expected a whole number") from None
    if v < 1:
        raise ValueError("must be at least 1")
    return v


def non_negative_int(text: str) -> int:
    try:
        v = int(str(text).strip())
    except ValueError:
        raise ValueError("expected a whole number") from None
    if v < 0:
        raise ValueError("must not be negative")
    return v


def seconds(text: str) -> float:
    try:
        v = float(str(text).strip())
    except ValueError:
        raise ValueError("expected a number of seconds") from None
    if not v > 0 or v != v or v == float("inf"):
        raise ValueError("must be a positive number of seconds")
    return v


def positive_number(text: str) -> float:
    try:
        v = float(str(text).strip())
    except ValueError:
        raise ValueError("expected a number") from None
    if not v > 0 or v == float("inf"):
        raise ValueError("must be a positive number")
    return v


def non_negative_seconds(text: str) -> float:
    try:
        v = float(str(text).strip())
    except ValueError:
        raise ValueError("expected a number of seconds") from None
    if v < 0 or v != v or v == float("inf"):
        raise ValueError("must be zero or a positive number of seconds")
    return v


_DURATION_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def duration(text: str) -> float:
    """A span of time: C{90d}, C{12h}, C{30m}, C{45s} or plain seconds;
    C{0} means never (keep forever, do not check)."""
    m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([a-zA-Z]?)\s*", str(text))
    if not m or m.group(2).lower() not in _DURATION_UNITS:
        raise ValueError("expected a duration such as 90d, 12h, 30m, 45s or 0")
    return float(m.group(1)) * _DURATION_UNITS[m.group(2).lower()]


def percent(text: str) -> float:
    try:
        v = float(str(text).strip())
    except ValueError:
        raise ValueError("expected a percentage") from None
    if not 0 <= v < 100:
        raise ValueError("must be from 0 to below 100")
    return v


def power_of_two(text: str) -> int:
    v = positive_int(text)
    if v < 2 or v & (v - 1):
        raise ValueError("must be a power of two (e.g. 131072)")
    return v


def boolean(text: str) -> bool:
    t = str(text).strip().lower()
    if t in ("1", "yes", "true", "on"):
        return True
    if t in ("0", "no", "false", "off"):
        return False
    raise ValueError("expected yes or no")


def choice(*options: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        t = str(text).strip().lower()
        if t not in options:
            raise ValueError("expected one of: " + ", ".join(options))
        return t
    parse.__doc__ = "one of " + ", ".join(options)
    return parse


def endpoint(text: str) -> str | None:
    """A Twisted server endpoint string, or C{none} to disable the listener."""
    t = str(text).strip()
    if t.lower() in ("none", "off", ""):
        return None
    from twisted.internet.endpoints import serverFromString
    from twisted.internet.testing import MemoryReactor
    try:
        serverFromString(MemoryReactor(), t)
    except Exception as e:
        raise ValueError("not a valid endpoint (%s)" % (e,)) from None
    return t


def optional_endpoint(text: str) -> str | None:
    return endpoint(text)


def networks(text: str) -> tuple:
    """Comma-separated networks (C{127.0.0.0/8,::1/128}); empty for none."""
    import ipaddress
    out = []
    for part in str(text).split(","):
        part = part.strip()
        if part:
            try:
                out.append(str(ipaddress.ip_network(part, strict=False)))
            except ValueError:
                raise ValueError("expected networks such as 127.0.0.0/8,::1/128") from None
    return tuple(out)


def text(value: str) -> str:
    return str(value)


def optional_path(value: str) -> str | None:
    v = str(value).strip()
    return v or None


@dataclass(frozen=True)
class Setting:
    name: str          # Config attribute and --option (underscores become dashes)
    section: str       # config-file section
    key: str           # config-file key inside that section
    parse: Callable[[str], Any]
    default: str       # as text, parsed like any other source
    help: str

    @property
    def option(self) -> str:
        return self.name.replace("_", "-")

    @property
    def env(self) -> str:
        return "NETSHARE_" + self.name.upper()


S = Setting
SETTINGS: tuple[Setting, ...] = (
    # general
    S("data", "netshare", "data", text, "var", "data directory (database, files, TLS, logs)"),
    S("db", "netshare", "db", text, "sqlite:///netshare.db",
      "database URL (sqlite:///relative/to/data, postgresql+psycopg://..., mysql+pymysql://...)"),
    S("db_threads", "netshare", "db_threads", positive_int, "5",
      "database worker threads for PostgreSQL/MariaDB (SQLite always uses 1)"),
    S("db_timeout", "netshare", "db_timeout", seconds, "15",
      "a database call still running after this long answers 451 (a silently dead "
      "connection must not hang clients)"),
    S("sqlite_synchronous", "netshare", "sqlite_synchronous", choice("full", "normal", "extra"),
      "full", "SQLite synchronous pragma (full: an acknowledged write survives power loss)"),
    S("registration", "netshare", "registration", choice("open", "closed"), "closed",
      "whether REGISTER creates accounts (closed: an operator creates them, with "
      "`netshare user add` or the manhole)"),
    S("log_format", "netshare", "log_format", choice("text", "json"), "text",
      "console log format"),
    S("log_max_bytes", "netshare", "log_max_bytes", size, "10MiB",
      "rotate the JSON log file (data/logs/netshare.jsonl) at this size"),
    S("log_keep", "netshare", "log_keep", positive_int, "5", "rotated JSON log files to keep"),
    S("shutdown_timeout", "netshare", "shutdown_timeout", seconds, "8",
      "on SIGTERM, how long to wait for pending work before closing connections"),
    # limits of PROTOCOL.md section 1
    S("max_line", "netshare", "max_line", positive_int, "4096", "maximum command line, bytes"),
    S("idle_timeout", "netshare", "idle_timeout", seconds, "300",
      "close a connection after this long without a complete command"),
    S("tls_handshake_timeout", "netshare", "tls_handshake_timeout", seconds, "10",
      "close a TLS connection whose handshake has not finished after this long"),
    S("login_timeout", "netshare", "login_timeout", seconds, "30",
      "close a connection that has not logged in after this long (421 login timeout; "
      "commands and blank lines do not extend it)"),
    S("listen_backlog", "netshare", "listen_backlog", positive_int, "1024",
      "connections the kernel queues for each listener before they are accepted (a "
      "reconnect burst after a restart; capped by net.core.somaxconn)"),
    S("max_connections", "netshare", "max_connections", positive_int, "1000",
      "connections per service"),
    S("max_per_ip", "netshare", "max_per_ip", positive_int, "100",
      "connections per client IP per service"),
    S("max_login_failures", "netshare", "max_login_failures", positive_int, "3",
      "failed LOGINs before the connection is closed"),
    S("login_failure_delay", "netshare", "login_failure_delay", non_negative_seconds, "1",
      "pause before answering a failed LOGIN"),
    S("login_free", "netshare", "login_free", non_negative_int, "5",
      "failed logins per account and per client address (across connections and restarts) "
      "before every further attempt waits (1 s, doubling, at most --login-max-delay; then 429)"),
    S("login_max_delay", "netshare", "login_max_delay", seconds, "180",
      "the longest wait per login attempt of a penalised account or address (180 s: at most "
      "20 guesses an hour)"),
    S("login_forget", "netshare", "login_forget", seconds, "180",
      "one failed login is forgotten per this many seconds"),
    S("account_lockout", "netshare", "account_lockout", positive_int, "20",
      "failed logins that lock an account for --account-lockout-seconds (for sources outside "
      "--lockout-exempt)"),
    S("account_lockout_seconds", "netshare", "account_lockout_seconds", seconds, "900",
      "how long a locked account stays locked (netshare user unlock lifts it)"),
    S("lockout_exempt", "netshare", "lockout_exempt", networks, "127.0.0.0/8,::1/128",
      "the operator's own networks: their failed logins are counted apart (never slowed or "
      "locked by failures from elsewhere, never locking an account); empty: none"),
    S("max_output", "netshare", "max_output", size, "1MiB",
      "output queued for one slow reader before it is dropped"),
    S("history_default", "netshare", "history_default", positive_int, "50",
      "HISTORY entries shown without limit="),
    S("history_max", "netshare", "history_max", positive_int, "1000", "largest HISTORY limit="),
    S("history_flush", "netshare", "history_flush", seconds, "0.2",
      "request history is written in batches at most this often"),
    S("history_retention", "netshare", "history_retention", duration, "90d",
      "request history entries older than this are deleted (hidden or not; 0: never)"),
    S("history_max_entries", "netshare", "history_max_entries", non_negative_int, "5000000",
      "the request history keeps at most this many entries, the oldest go first (0: no cap)"),
    S("prelogin_burst", "netshare", "prelogin_burst", positive_int, "10",
      "commands sent before login recorded at once per connection (beyond: counted only)"),
    S("prelogin_rate", "netshare", "prelogin_rate", positive_number, "1",
      "commands sent before login recorded per second per connection"),
    S("prelogin_address_burst", "netshare", "prelogin_address_burst",
      positive_int, "50", "commands sent before login recorded at once per client address"),
    S("prelogin_address_rate", "netshare", "prelogin_address_rate",
      positive_number, "5", "commands sent before login recorded per second per address"),
    S("account_check", "netshare", "account_check", duration, "10s",
      "how often connections of accounts removed from outside (netshare user remove) "
      "are looked for and closed (0: never)"),
    # password hashing
    S("scrypt_n", "netshare", "scrypt_n", power_of_two, "131072",
      "scrypt cost N for account passwords (OWASP: 2**17)"),
    S("scrypt_r", "netshare", "scrypt_r", positive_int, "8", "scrypt block size r"),
    S("scrypt_p", "netshare", "scrypt_p", positive_int, "1", "scrypt parallelism p"),
    S("kdf_threads", "netshare", "kdf_threads", positive_int, "2",
      "password hashing threads (each scrypt run at N=2**17 takes about 128 MiB)"),
    S("kdf_queue", "netshare", "kdf_queue", non_negative_int, "64",
      "password hashes allowed to wait; beyond that LOGIN answers 429"),
    S("kdf_per_source", "netshare", "kdf_per_source", positive_int, "8",
      "password hashes one client address may have waiting or running (beyond: 429), so one "
      "address cannot take the others' turns"),
    # listeners
    S("personnel", "personnel", "endpoint", endpoint, "tcp:7001:interface=127.0.0.1",
      "personnel listener endpoint, or none"),
    S("files", "files", "endpoint", endpoint, "tcp:7002:interface=127.0.0.1",
      "files listener endpoint, or none"),
    S("ttweet", "ttweet", "endpoint", endpoint, "tcp:7003:interface=127.0.0.1",
      "ttweet listener endpoint, or none"),
    S("manhole", "manhole", "endpoint", endpoint, "tcp:7004:interface=127.0.0.1",
      "manhole (admin shell, telnet-style) endpoint, or none"),
    S("manhole_ssh", "manhole", "ssh_endpoint", optional_endpoint, "none",
      "manhole over SSH endpoint (needs --manhole-keys), or none"),
    S("manhole_keys", "manhole", "authorized_keys", optional_path, "",
      "authorized_keys file for the SSH manhole"),
    S("manhole_allow_remote", "manhole", "allow_remote", boolean, "no",
      "allow the manhole on a non-loopback interface"),
    # files
    S("max_file_size", "files", "max_file_size", size, "64GiB", "largest upload"),
    S("user_quota", "files", "user_quota", size, "100GiB",
      "bytes stored per user (0: unlimited)"),
    S("min_free_percent", "files", "min_free_percent", percent, "5",
      "refuse uploads (452) that would leave less free disk than this"),
    S("file_scrypt_n", "files", "scrypt_n", power_of_two, "32768",
      "scrypt cost N for file passwords (paid on every protected download)"),
    S("file_lockout_failures", "files", "lockout_failures", positive_int, "5",
      "wrong file passwords before a user is locked out of that file"),
    S("file_lockout_seconds", "files", "lockout_seconds", seconds, "900",
      "window and duration of a file-password lockout"),
    S("file_guesses_free", "files", "file_guesses_free", positive_int, "5",
      "wrong passwords for one protected file from all accounts together before every "
      "further try waits (2 s, doubling, at most --file-guesses-max-delay; then 429)"),
    S("file_guesses_max_delay", "files", "file_guesses_max_delay", seconds, "180",
      "the longest wait per try at a protected file's password (180 s: 20 tries an hour "
      "for one file, whatever the number of accounts; its owner is not held up)"),
    S("misses_free", "files", "misses_free", non_negative_int, "5",
      "names not found (550 on INFO/CHECKSUM/DOWNLOAD) an account or address may try before "
      "every further lookup waits (1 s, doubling, at most --misses-max-delay; then 429)"),
    S("misses_max_delay", "files", "misses_max_delay", seconds, "30",
      "the longest wait per lookup after repeated misses"),
    S("misses_forget", "files", "misses_forget", seconds, "60",
      "one recorded miss (or wrong file password) is forgotten per this many seconds"),
    # ttweet
    S("flood_burst", "ttweet", "flood_burst", positive_int, "50", "tweets allowed in a burst"),
    S("flood_rate", "ttweet", "flood_rate", positive_number, "20",
      "sustained tweets per second, per user name and per connection"),
    S("flood_address_burst", "ttweet", "flood_address_burst", positive_int, "100",
      "tweets allowed in a burst from one client address (all its connections and names)"),
    S("flood_address_rate", "ttweet", "flood_address_rate", positive_number, "40",
      "sustained tweets per second from one client address"),
    S("timeline_limit", "ttweet", "timeline_limit", positive_int, "1000",
      "most recent tweets kept in a TIMELINE or GETTWEETS listing"),
    S("ttweet_batch_interval", "ttweet", "batch_interval", seconds, "0.05",
      "tweets are stored in batches at most this often (a tweet's 200 waits for its batch)"),
    # personnel
    S("sync_page", "personnel", "sync_page", positive_int, "500",
      "messages read from the outbox per page on a SYNC stream"),
    S("personnel_list_default", "personnel", "list_default", positive_int, "50",
      "people in a LIST without limit="),
    S("personnel_list_max", "personnel", "list_max", positive_int, "1000",
      "largest LIST / MESSAGES limit="),
)
del S

SETTINGS_BY_NAME = {s.name: s for s in SETTINGS}

Config = dataclasses.make_dataclass(
    "Config",
    [(s.name, Any) for s in SETTINGS] + [("config_file", Any, None)],
    frozen=True,
    namespace={"__doc__": "Frozen, validated settings. See L{SETTINGS}.",
               "replace": lambda self, **kw: dataclasses.replace(self, **kw)},
)


def read_ini(path: str) -> dict[str, str]:
    """Read a config file into {setting name: raw text}; unknown keys are errors."""
    parser = configparser.ConfigParser(interpolation=None)
    try:
        with open(path, encoding="utf-8") as f:
            parser.read_file(f)
    except OSError as e:
        raise ConfigError("config file %s: %s" % (path, e.strerror)) from None
    except configparser.Error as e:
        raise ConfigError("config file %s: %s" % (path, str(e).splitlines()[0])) from None
    by_place = {(s.section, s.key): s for s in SETTINGS}
    values = {}
    for section in parser.sections():
        for key, raw in parser.items(section):
            s = by_place.get((section, key))
            if s is None:
                raise ConfigError("config file %s: unknown setting [%s] %s" % (path, section, key))
            values[s.name] = raw
    return values


def build(cli: dict[str, str | None] | None = None, environ=None,
          config_file: str | None = None) -> "Config":
    """
    Merge the sources and validate every setting.

    @param cli: {setting name: raw text} for options given on the command
        line (absent or None when not given).
    @raise ConfigError: naming the first bad setting and where it came from.
    """
    cli = {k: v for k, v in (cli or {}).items() if v is not None}
    environ = os.environ if environ is None else environ
    config_file = config_file or environ.get("NETSHARE_CONFIG") or None
    ini = read_ini(config_file) if config_file else {}
    values = {}
    for s in SETTINGS:
        if s.name in cli:
            raw, where = cli[s.name], "--" + s.option
        elif s.env in environ:
            raw, where = environ[s.env], s.env
        elif s.name in ini:
            raw, where = ini[s.name], "[%s] %s in %s" % (s.section, s.key, config_file)
        else:
            raw, where = s.default, "default of --" + s.option
        try:
            values[s.name] = s.parse(raw)
        except ValueError as e:
            raise ConfigError("setting %s: %s (got %r)" % (where, e, raw)) from None
    _cross_check(values)
    return Config(config_file=config_file, **values)


def _cross_check(v: dict):
    if v["manhole_ssh"] and not v["manhole_keys"]:
        raise ConfigError("setting --manhole-ssh: needs --manhole-keys (an authorized_keys file)")
    if v["manhole_keys"] and not os.path.isfile(v["manhole_keys"]):
        raise ConfigError("setting --manhole-keys: no such file %r" % (v["manhole_keys"],))
    if v["history_default"] > v["history_max"]:
        raise ConfigError("setting --history-default: larger than --history-max")


def defaults(**overrides) -> "Config":
    """A Config of the defaults (for tests and tools), with overrides as values."""
    return build(environ={}).replace(**overrides)

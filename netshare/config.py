"""
Every netshare setting, in one place.

Each setting is one typed field of L{Config}, declared once below with
L{setting}: its config-file section (and key, when it is not the field's
name), its parser, its default (as text, parsed like any other source) and
its help.  From those declarations come the command-line options of
C{twistd netshare} (and their C{--help}), the C{NETSHARE_*} environment
variables, the keys of the config file, the defaults and the validation
(L{SETTINGS}, derived from the fields).  Precedence, highest first::

    command-line option > NETSHARE_<NAME> environment variable
        > config file (--config netshare.ini) > default

The config file is INI with one section per service: C{[netshare]} for the
general settings, C{[personnel]}, C{[files]}, C{[ttweet]} and C{[manhole]}
for each service's own (C{endpoint = tcp:7002:interface=127.0.0.1}, ...).

The result is a frozen L{Config}: services receive it and never look at the
environment or files themselves.  The type checker sees each field's type,
and checks it against what the setting's parser returns (L{setting} is a
field specifier of L{settings_class}, PEP 681).
"""

import configparser
import dataclasses
import ipaddress
import os
import re
from collections.abc import Callable, Mapping
from typing import Any, TypeVar, dataclass_transform

T = TypeVar("T")


class ConfigError(ValueError):
    """A setting has a bad value; the message names the setting."""


# --- value parsers: each takes the raw string and returns the value or
# raises ValueError with a short reason.

_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "k": 1024,
    "kb": 1024,
    "kib": 1024,
    "m": 1024**2,
    "mb": 1024**2,
    "mib": 1024**2,
    "g": 1024**3,
    "gb": 1024**3,
    "gib": 1024**3,
    "t": 1024**4,
    "tb": 1024**4,
    "tib": 1024**4,
}


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
    # Imported here: the endpoint parsers pull in TLS and more (some 0.4 s), which
    # importing this module (twistd's plugin listing, the tap's Options) need not pay.
    from twisted.internet.endpoints import serverFromString

    try:
        # Parsed only (an endpoint keeps its reactor until it listens): no
        # reactor needed, and twisted.internet.testing's MemoryReactor
        # would import twisted.trial into the server (megabytes resident).
        serverFromString(object(), t)
    except Exception as e:
        raise ValueError("not a valid endpoint (%s)" % (e,)) from None
    return t


def networks(text: str) -> tuple[str, ...]:
    """Comma-separated networks (C{127.0.0.0/8,::1/128}); empty for none."""
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


SETTING = "netshare.setting"  # the key of a Config field's metadata


@dataclasses.dataclass(frozen=True)
class Setting:
    """One setting as the option parser, the environment and the config file
    see it (derived from its L{Config} field)."""

    name: str  # Config attribute and --option (underscores become dashes)
    section: str  # config-file section
    key: str  # config-file key inside that section
    parse: Callable[[str], Any]
    default: str  # as text, parsed like any other source
    help: str

    @property
    def option(self) -> str:
        return self.name.replace("_", "-")

    @property
    def env(self) -> str:
        return "NETSHARE_" + self.name.upper()


def setting(
    section: str,
    parse: Callable[[str], T],
    default_text: str,
    help: str,
    *,
    key: str | None = None,
) -> T:
    """
    Declare one L{Config} field: read from C{[section] key} of the config
    file (C{key} defaults to the field's name), checked and converted by
    C{parse}, with C{default_text} when no source gives a value.  Typed as
    returning what C{parse} returns, so the type checker holds the field's
    annotation to its parser.
    """
    spec = {"section": section, "key": key, "parse": parse, "default": default_text, "help": help}
    return dataclasses.field(metadata={SETTING: spec})


@dataclass_transform(frozen_default=True, field_specifiers=(setting,))
def settings_class(cls: type[T]) -> type[T]:
    """A frozen dataclass whose L{setting} fields the type checker understands."""
    return dataclasses.dataclass(frozen=True)(cls)


@settings_class
class Config:
    """Frozen, validated settings: build with L{build} (or L{defaults})."""

    # general
    data: str = setting("netshare", text, "var", "data directory (database, files, TLS, logs)")
    db: str = setting(
        "netshare",
        text,
        "sqlite:///netshare.db",
        "database URL (sqlite:///relative/to/data, postgresql+psycopg://..., mysql+pymysql://...)",
    )
    db_threads: int = setting(
        "netshare",
        positive_int,
        "5",
        "database worker threads for PostgreSQL/MariaDB (SQLite always uses 1)",
    )
    db_timeout: float = setting(
        "netshare",
        seconds,
        "15",
        "a database call still running after this long answers 451 (a silently dead "
        "connection must not hang clients)",
    )
    sqlite_synchronous: str = setting(
        "netshare",
        choice("full", "normal", "extra"),
        "full",
        "SQLite synchronous pragma (full: an acknowledged write survives power loss)",
    )
    registration: str = setting(
        "netshare",
        choice("open", "closed"),
        "closed",
        "whether REGISTER creates accounts (closed: an operator creates them, with `netshare "
        "user add` or the manhole)",
    )
    log_format: str = setting("netshare", choice("text", "json"), "text", "console log format")
    log_max_bytes: int = setting(
        "netshare",
        size,
        "10MiB",
        "rotate the JSON log file (data/logs/netshare.jsonl) at this size",
    )
    log_keep: int = setting("netshare", positive_int, "5", "rotated JSON log files to keep")
    shutdown_timeout: float = setting(
        "netshare",
        seconds,
        "8",
        "on SIGTERM, how long to wait for pending work before closing connections",
    )

    # limits (docs/protocol.md section 1.5)
    max_line: int = setting("netshare", positive_int, "4096", "maximum command line, bytes")
    idle_timeout: float = setting(
        "netshare", seconds, "300", "close a connection after this long without a complete command"
    )
    tls_handshake_timeout: float = setting(
        "netshare",
        seconds,
        "10",
        "close a TLS connection whose handshake has not finished after this long",
    )
    login_timeout: float = setting(
        "netshare",
        seconds,
        "30",
        "close a connection that has not logged in after this long (421 login timeout; "
        "commands and blank lines do not extend it)",
    )
    listen_backlog: int = setting(
        "netshare",
        positive_int,
        "1024",
        "connections the kernel queues for each listener before they are accepted (a "
        "reconnect burst after a restart; capped by net.core.somaxconn)",
    )
    max_connections: int = setting("netshare", positive_int, "1000", "connections per service")
    max_per_ip: int = setting(
        "netshare", positive_int, "100", "connections per client IP per service"
    )
    max_login_failures: int = setting(
        "netshare", positive_int, "3", "failed LOGINs before the connection is closed"
    )
    session_ttl: float = setting(
        "netshare",
        duration,
        "30d",
        "how long a session token (SESSION NEW) lasts after its last use; the client "
        "programs use one instead of the password until it expires",
    )
    login_failure_delay: float = setting(
        "netshare", non_negative_seconds, "1", "pause before answering a failed LOGIN"
    )
    login_free: int = setting(
        "netshare",
        non_negative_int,
        "5",
        "failed logins per account and per client address (across connections and restarts) "
        "before every further attempt waits (1 s, doubling, at most --login-max-delay; then "
        "429)",
    )
    login_max_delay: float = setting(
        "netshare",
        seconds,
        "180",
        "the longest wait per login attempt of a penalised account or address (180 s: at most "
        "20 guesses an hour)",
    )
    login_forget: float = setting(
        "netshare", seconds, "180", "one failed login is forgotten per this many seconds"
    )
    account_lockout: int = setting(
        "netshare",
        positive_int,
        "20",
        "failed logins that lock an account for --account-lockout-seconds (for sources "
        "outside --lockout-exempt)",
    )
    account_lockout_seconds: float = setting(
        "netshare",
        seconds,
        "900",
        "how long a locked account stays locked (netshare user unlock lifts it)",
    )
    lockout_exempt: tuple[str, ...] = setting(
        "netshare",
        networks,
        "127.0.0.0/8,::1/128",
        "the operator's own networks: their failed logins are counted apart (never slowed or "
        "locked by failures from elsewhere, never locking an account); empty: none",
    )
    max_output: int = setting(
        "netshare", size, "1MiB", "output queued for one slow reader before it is dropped"
    )
    history_default: int = setting(
        "netshare", positive_int, "50", "HISTORY entries shown without limit="
    )
    history_max: int = setting("netshare", positive_int, "1000", "largest HISTORY limit=")
    history_flush: float = setting(
        "netshare", seconds, "0.2", "request history is written in batches at most this often"
    )
    history_retention: float = setting(
        "netshare",
        duration,
        "90d",
        "request history entries older than this are deleted (hidden or not; 0: never)",
    )
    history_max_entries: int = setting(
        "netshare",
        non_negative_int,
        "5000000",
        "the request history keeps at most this many entries, the oldest go first (0: no cap)",
    )
    prelogin_burst: int = setting(
        "netshare",
        positive_int,
        "10",
        "commands sent before login recorded at once per connection (beyond: counted only)",
    )
    prelogin_rate: float = setting(
        "netshare",
        positive_number,
        "1",
        "commands sent before login recorded per second per connection",
    )
    prelogin_address_burst: int = setting(
        "netshare",
        positive_int,
        "50",
        "commands sent before login recorded at once per client address",
    )
    prelogin_address_rate: float = setting(
        "netshare",
        positive_number,
        "5",
        "commands sent before login recorded per second per address",
    )
    account_check: float = setting(
        "netshare",
        duration,
        "10s",
        "how often connections of accounts removed from outside (netshare user remove) are "
        "looked for and closed (0: never)",
    )

    # password hashing
    scrypt_n: int = setting(
        "netshare", power_of_two, "131072", "scrypt cost N for account passwords (OWASP: 2**17)"
    )
    scrypt_r: int = setting("netshare", positive_int, "8", "scrypt block size r")
    scrypt_p: int = setting("netshare", positive_int, "1", "scrypt parallelism p")
    kdf_threads: int = setting(
        "netshare",
        positive_int,
        "2",
        "password hashing threads (each scrypt run at N=2**17 takes about 128 MiB)",
    )
    kdf_queue: int = setting(
        "netshare",
        non_negative_int,
        "64",
        "password hashes allowed to wait; beyond that LOGIN answers 429",
    )
    kdf_per_source: int = setting(
        "netshare",
        positive_int,
        "8",
        "password hashes one client address may have waiting or running (beyond: 429), so one "
        "address cannot take the others' turns",
    )

    # listeners
    personnel: str | None = setting(
        "personnel",
        endpoint,
        "tcp:7001:interface=127.0.0.1",
        "personnel listener endpoint, or none",
        key="endpoint",
    )
    files: str | None = setting(
        "files",
        endpoint,
        "tcp:7002:interface=127.0.0.1",
        "files listener endpoint, or none",
        key="endpoint",
    )
    ttweet: str | None = setting(
        "ttweet",
        endpoint,
        "tcp:7003:interface=127.0.0.1",
        "ttweet listener endpoint, or none",
        key="endpoint",
    )
    web: str | None = setting(
        "web",
        endpoint,
        "tcp:7005:interface=127.0.0.1",
        "HTTP API and web interface endpoint (ssl: for HTTPS), or none",
        key="endpoint",
    )
    metrics_public: bool = setting(
        "web",
        boolean,
        "no",
        "serve GET /metrics without an admin token",
    )
    manhole: str | None = setting(
        "manhole",
        endpoint,
        "tcp:7004:interface=127.0.0.1",
        "manhole (admin shell, telnet-style) endpoint, or none",
        key="endpoint",
    )
    manhole_ssh: str | None = setting(
        "manhole",
        endpoint,
        "none",
        "manhole over SSH endpoint (needs --manhole-keys), or none",
        key="ssh_endpoint",
    )
    manhole_keys: str | None = setting(
        "manhole",
        optional_path,
        "",
        "authorized_keys file for the SSH manhole",
        key="authorized_keys",
    )
    manhole_allow_remote: bool = setting(
        "manhole",
        boolean,
        "no",
        "allow the manhole on a non-loopback interface",
        key="allow_remote",
    )

    # files
    max_file_size: int = setting("files", size, "64GiB", "largest upload")
    user_quota: int = setting("files", size, "100GiB", "bytes stored per user (0: unlimited)")
    upload_partial_ttl: float = setting(
        "files",
        duration,
        "24h",
        "how long an interrupted upload is kept to be resumed (it counts in the quota meanwhile)",
    )
    sendfile: bool = setting(
        "files",
        boolean,
        "yes",
        "send unprotected downloads over plain TCP with the kernel's sendfile",
    )
    min_free_percent: float = setting(
        "files", percent, "5", "refuse uploads (452) that would leave less free disk than this"
    )
    file_scrypt_n: int = setting(
        "files",
        power_of_two,
        "32768",
        "scrypt cost N for file passwords (paid on every protected download)",
        key="scrypt_n",
    )
    file_lockout_failures: int = setting(
        "files",
        positive_int,
        "5",
        "wrong file passwords before a user is locked out of that file",
        key="lockout_failures",
    )
    file_lockout_seconds: float = setting(
        "files",
        seconds,
        "900",
        "window and duration of a file-password lockout",
        key="lockout_seconds",
    )
    file_guesses_free: int = setting(
        "files",
        positive_int,
        "5",
        "wrong passwords for one protected file from all accounts together before every "
        "further try waits (2 s, doubling, at most --file-guesses-max-delay; then 429)",
    )
    file_guesses_max_delay: float = setting(
        "files",
        seconds,
        "180",
        "the longest wait per try at a protected file's password (180 s: 20 tries an hour for "
        "one file, whatever the number of accounts; its owner is not held up)",
    )
    misses_free: int = setting(
        "files",
        non_negative_int,
        "5",
        "names not found (550 on INFO/CHECKSUM/DOWNLOAD) an account or address may try before "
        "every further lookup waits (1 s, doubling, at most --misses-max-delay; then 429)",
    )
    misses_max_delay: float = setting(
        "files", seconds, "30", "the longest wait per lookup after repeated misses"
    )
    misses_forget: float = setting(
        "files",
        seconds,
        "60",
        "one recorded miss (or wrong file password) is forgotten per this many seconds",
    )

    # ttweet
    flood_burst: int = setting("ttweet", positive_int, "50", "tweets allowed in a burst")
    flood_rate: float = setting(
        "ttweet",
        positive_number,
        "20",
        "sustained tweets per second, per user name and per connection",
    )
    flood_address_burst: int = setting(
        "ttweet",
        positive_int,
        "100",
        "tweets allowed in a burst from one client address (all its connections and names)",
    )
    flood_address_rate: float = setting(
        "ttweet", positive_number, "40", "sustained tweets per second from one client address"
    )
    timeline_limit: int = setting(
        "ttweet",
        positive_int,
        "1000",
        "most recent tweets kept in a TIMELINE or GETTWEETS listing",
    )
    ttweet_batch_interval: float = setting(
        "ttweet",
        non_negative_seconds,
        "0",
        "extra wait before a batch of tweets is stored; 0 (the default): group commit, "
        "a batch starts as soon as the previous one is committed",
        key="batch_interval",
    )

    # personnel
    sync_page: int = setting(
        "personnel", positive_int, "500", "messages read from the outbox per page on a SYNC stream"
    )
    personnel_list_default: int = setting(
        "personnel", positive_int, "50", "people in a LIST without limit=", key="list_default"
    )
    personnel_list_max: int = setting(
        "personnel", positive_int, "1000", "largest LIST / MESSAGES limit=", key="list_max"
    )

    # not a setting: the config file the values were read from, if any
    config_file: str | None = None

    def replace(self, **changes: Any) -> "Config":
        """A copy with some values changed (values, not text: not parsed)."""
        return dataclasses.replace(self, **changes)


SETTINGS: tuple[Setting, ...] = tuple(
    Setting(
        name=f.name,
        section=spec["section"],
        key=spec["key"] or f.name,
        parse=spec["parse"],
        default=spec["default"],
        help=spec["help"],
    )
    for f in dataclasses.fields(Config)
    if (spec := f.metadata.get(SETTING)) is not None
)

SETTINGS_BY_NAME = {s.name: s for s in SETTINGS}


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


def build(
    cli: Mapping[str, str | None] | None = None,
    environ: Mapping[str, str] | None = None,
    config_file: str | None = None,
) -> Config:
    """
    Merge the sources and validate every setting.

    @param cli: {setting name: raw text} for options given on the command
        line (absent or None when not given).
    @param environ: the environment (default: C{os.environ}).
    @raise ConfigError: naming the first bad setting and where it came from.
    """
    given = {k: v for k, v in (cli or {}).items() if v is not None}
    env: Mapping[str, str] = os.environ if environ is None else environ
    config_file = config_file or env.get("NETSHARE_CONFIG") or None
    ini = read_ini(config_file) if config_file else {}
    values: dict[str, Any] = {}
    for s in SETTINGS:
        if s.name in given:
            raw, where = given[s.name], "--" + s.option
        elif s.env in env:
            raw, where = env[s.env], s.env
        elif s.name in ini:
            raw, where = ini[s.name], "[%s] %s in %s" % (s.section, s.key, config_file)
        else:
            raw, where = s.default, "default of --" + s.option
        try:
            values[s.name] = s.parse(raw)
        except ValueError as e:
            raise ConfigError("setting %s: %s (got %r)" % (where, e, raw)) from None
    config = Config(config_file=config_file, **values)
    _cross_check(config)
    return config


def _cross_check(config: Config) -> None:
    if config.manhole_ssh and not config.manhole_keys:
        raise ConfigError("setting --manhole-ssh: needs --manhole-keys (an authorized_keys file)")
    if config.manhole_keys and not os.path.isfile(config.manhole_keys):
        raise ConfigError("setting --manhole-keys: no such file %r" % (config.manhole_keys,))
    if config.history_default > config.history_max:
        raise ConfigError("setting --history-default: larger than --history-max")


def defaults(**overrides: Any) -> Config:
    """A Config of the defaults (for tests and tools), with overrides as values."""
    return build(environ={}).replace(**overrides)

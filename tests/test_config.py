"""
Settings: one declaration per setting (a typed field of
L{netshare.config.Config}, from which L{netshare.config.SETTINGS} is derived)
gives the command-line options, the NETSHARE_* environment variables and the
config-file keys.

Precedence: option > environment > config file > default; every bad value
is a L{ConfigError} naming the setting and where the value came from.
"""

import dataclasses
import os
import subprocess
import types
import typing

import pytest

from netshare import config as C
from netshare.tap import Options
from tests.support import ROOT, twistd_command
from tests.support import env as support_env


def write_ini(path, text):
    path.write_text(text, encoding="utf-8")
    return str(path)


@pytest.fixture
def clean_environ(monkeypatch):
    """No NETSHARE_* setting from the surrounding environment leaks in."""
    for key in list(os.environ):
        if key.startswith("NETSHARE_") and not key.startswith("NETSHARE_TEST_"):
            monkeypatch.delenv(key)
    return monkeypatch


# -- precedence ---------------------------------------------------------------

INI = """\
[netshare]
idle_timeout = 30
max_output = 2MiB
registration = open
scrypt_n = 4096

[files]
endpoint = tcp:9102:interface=127.0.0.1
scrypt_n = 2048
"""


def test_defaults():
    cfg = C.build(environ={})
    assert cfg.idle_timeout == 300.0
    assert cfg.max_output == 2**20
    assert cfg.files == "tcp:7002:interface=127.0.0.1"
    assert cfg.personnel == "tcp:7001:interface=127.0.0.1"
    assert cfg.ttweet == "tcp:7003:interface=127.0.0.1"
    assert cfg.manhole == "tcp:7004:interface=127.0.0.1"
    assert cfg.manhole_ssh is None
    assert cfg.max_line == 4096
    assert cfg.max_connections == 1000 and cfg.max_per_ip == 100
    assert cfg.max_login_failures == 3 and cfg.login_failure_delay == 1.0
    assert cfg.registration == "closed"
    assert (cfg.scrypt_n, cfg.scrypt_r, cfg.scrypt_p) == (2**17, 8, 1)
    assert cfg.config_file is None
    # every setting has a default that its own parser accepts
    for s in C.SETTINGS:
        assert getattr(cfg, s.name) == s.parse(s.default), s.name


def test_config_file_beats_default(tmp_path):
    ini = write_ini(tmp_path / "n.ini", INI)
    cfg = C.build(environ={}, config_file=ini)
    assert cfg.idle_timeout == 30.0
    assert cfg.max_output == 2 * 2**20
    assert cfg.files == "tcp:9102:interface=127.0.0.1"
    assert cfg.registration == "open"
    # the same key in two sections is two settings
    assert cfg.scrypt_n == 4096 and cfg.file_scrypt_n == 2048
    assert cfg.config_file == ini
    assert cfg.personnel == "tcp:7001:interface=127.0.0.1"  # untouched: default


def test_environment_beats_config_file(tmp_path):
    ini = write_ini(tmp_path / "n.ini", INI)
    environ = {
        "NETSHARE_IDLE_TIMEOUT": "12.5",
        "NETSHARE_MAX_OUTPUT": "64KiB",
        "NETSHARE_FILES": "tcp:9202:interface=127.0.0.1",
    }
    cfg = C.build(environ=environ, config_file=ini)
    assert cfg.idle_timeout == 12.5
    assert cfg.max_output == 64 * 1024
    assert cfg.files == "tcp:9202:interface=127.0.0.1"
    assert cfg.registration == "open"  # from the file: no env for it


def test_option_beats_environment(tmp_path):
    ini = write_ini(tmp_path / "n.ini", INI)
    environ = {
        "NETSHARE_IDLE_TIMEOUT": "12.5",
        "NETSHARE_MAX_OUTPUT": "64KiB",
        "NETSHARE_FILES": "tcp:9202:interface=127.0.0.1",
        "NETSHARE_REGISTRATION": "closed",
    }
    cli = {"idle_timeout": "7", "max_output": "100", "files": "none", "registration": None}
    cfg = C.build(cli, environ=environ, config_file=ini)
    assert cfg.idle_timeout == 7.0
    assert cfg.max_output == 100
    assert cfg.files is None  # "none" disables the listener
    assert cfg.registration == "closed"  # None on the command line means "not given"


def test_config_file_named_by_environment(tmp_path):
    ini = write_ini(tmp_path / "n.ini", INI)
    cfg = C.build(environ={"NETSHARE_CONFIG": ini})
    assert cfg.idle_timeout == 30.0 and cfg.config_file == ini
    # an explicit --config wins over NETSHARE_CONFIG
    other = write_ini(tmp_path / "o.ini", "[netshare]\nidle_timeout = 44\n")
    assert C.build(environ={"NETSHARE_CONFIG": ini}, config_file=other).idle_timeout == 44.0


@pytest.mark.parametrize(
    "text,expected",
    [
        ("4096", 4096),
        ("64KiB", 65536),
        ("64kb", 65536),
        ("1MiB", 2**20),
        ("1 M", 2**20),
        ("10GiB", 10 * 2**30),
        ("2t", 2 * 2**40),
        (" 7 ", 7),
        ("0", 0),
    ],
)
def test_size_units(text, expected):
    assert C.size(text) == expected


@pytest.mark.parametrize(
    "text,expected",
    [
        ("90d", 90 * 86400),
        ("12h", 43200),
        ("30m", 1800),
        ("45s", 45),
        ("3600", 3600),
        ("0", 0),
        (" 1.5h ", 5400),
        ("2w", 14 * 86400),
    ],
)
def test_duration_units(text, expected):
    assert C.duration(text) == expected


def test_settings_are_the_config_fields():
    """SETTINGS is derived from Config: one setting per field (but config_file),
    in declaration order, each parsed to the type its field declares."""
    fields = [f.name for f in dataclasses.fields(C.Config)]
    assert [s.name for s in C.SETTINGS] == [n for n in fields if n != "config_file"]
    assert C.SETTINGS_BY_NAME["manhole_ssh"].key == "ssh_endpoint"  # key given
    assert C.SETTINGS_BY_NAME["idle_timeout"].key == "idle_timeout"  # key: the field's name
    hints = typing.get_type_hints(C.Config)
    cfg = C.defaults()
    for s in C.SETTINGS:
        value = getattr(cfg, s.name)
        declared = hints[s.name]
        union = isinstance(declared, types.UnionType)
        allowed = tuple(
            typing.get_origin(t) or t
            for t in (typing.get_args(declared) if union else (declared,))
        )
        if value is not None or type(None) not in allowed:
            assert isinstance(value, allowed), (s.name, value, declared)
    # and for the optional ones, the other branch too
    given = C.build({"manhole_keys": __file__}, environ={})
    assert isinstance(given.manhole_keys, str)


# -- bad values -----------------------------------------------------------------


def _bad_values(setting):
    """Values the setting's parser must refuse (none for free text)."""
    p = setting.parse
    table = {
        C.size: ["ten", "10 parsecs", "-1", "1.5MiB", ""],
        C.positive_int: ["0", "-3", "abc", "1.5", ""],
        C.non_negative_int: ["-1", "x", ""],
        C.seconds: ["0", "-1", "abc", "nan", "inf", ""],
        C.positive_number: ["0", "-1", "abc", "inf", ""],
        C.non_negative_seconds: ["-0.5", "nan", "inf", "soon"],
        C.percent: ["100", "-1", "half"],
        C.networks: ["10.0.0.0/33", "nonsense", "1.2.3"],
        C.duration: ["-1d", "ten days", "5y", "1.d", ""],
        C.power_of_two: ["1000", "1", "0", "x"],
        C.boolean: ["maybe", "2", ""],
        C.endpoint: ["tcp:notaport", "bogus:7000", "tcp:"],
    }
    if p in table:
        return table[p]
    if (p.__doc__ or "").startswith("one of "):
        return ["xml", ""]
    if p in (C.text, C.optional_path):
        return []  # free text: anything goes
    return None  # a parser this test does not know yet


CHECKED = [s for s in C.SETTINGS if _bad_values(s)]


def test_every_validated_setting_is_checked():
    unknown = [s.name for s in C.SETTINGS if _bad_values(s) is None]
    assert not unknown, "add bad values for these settings' parsers: %s" % unknown
    free_text = {s.name for s in C.SETTINGS if _bad_values(s) == []}
    assert {"data", "db", "manhole_keys"} <= free_text
    assert len(CHECKED) + len(free_text) == len(C.SETTINGS)


@pytest.mark.parametrize("setting", CHECKED, ids=lambda s: s.name)
def test_bad_value_names_the_setting(setting, tmp_path):
    for bad in _bad_values(setting):
        # on the command line
        with pytest.raises(C.ConfigError) as e:
            C.build({setting.name: bad}, environ={})
        assert "--" + setting.option in str(e.value), (bad, str(e.value))
        assert repr(bad) in str(e.value)
        # in the environment
        with pytest.raises(C.ConfigError) as e:
            C.build(environ={setting.env: bad})
        assert setting.env in str(e.value), (bad, str(e.value))
    # in the config file: the section, the key and the file are named
    bad = _bad_values(setting)[0]
    ini = write_ini(tmp_path / "bad.ini", "[%s]\n%s = %s\n" % (setting.section, setting.key, bad))
    with pytest.raises(C.ConfigError) as e:
        C.build(environ={}, config_file=ini)
    assert "[%s] %s in %s" % (setting.section, setting.key, ini) in str(e.value)


def test_error_is_one_line():
    with pytest.raises(C.ConfigError) as e:
        C.build({"files": "tcp:notaport"}, environ={})
    assert "\n" not in str(e.value)
    assert str(e.value).startswith("setting --files: not a valid endpoint")


def test_first_bad_source_wins_over_lower_ones():
    # a good option hides a bad environment variable for the same setting
    cfg = C.build({"max_line": "100"}, environ={"NETSHARE_MAX_LINE": "zero"})
    assert cfg.max_line == 100


def test_cross_checks(tmp_path):
    with pytest.raises(C.ConfigError, match="--manhole-ssh: needs --manhole-keys"):
        C.build({"manhole_ssh": "tcp:0:interface=127.0.0.1"}, environ={})
    with pytest.raises(C.ConfigError, match="--manhole-keys: no such file"):
        C.build({"manhole_keys": str(tmp_path / "missing")}, environ={})
    with pytest.raises(C.ConfigError, match="--history-default: larger than --history-max"):
        C.build({"history_default": "20", "history_max": "10"}, environ={})
    keys = tmp_path / "authorized_keys"
    keys.write_text("")
    cfg = C.build(
        {"manhole_ssh": "tcp:0:interface=127.0.0.1", "manhole_keys": str(keys)}, environ={}
    )
    assert cfg.manhole_ssh == "tcp:0:interface=127.0.0.1" and cfg.manhole_keys == str(keys)


# -- the config file ------------------------------------------------------------


def test_unknown_key_in_config_file(tmp_path):
    ini = write_ini(tmp_path / "n.ini", "[files]\nendpoint = none\nmax_fil_size = 1\n")
    with pytest.raises(C.ConfigError) as e:
        C.build(environ={}, config_file=ini)
    assert "unknown setting [files] max_fil_size" in str(e.value) and ini in str(e.value)


def test_setting_in_the_wrong_section(tmp_path):
    # idle_timeout is a [netshare] setting, not a [files] one
    ini = write_ini(tmp_path / "n.ini", "[files]\nidle_timeout = 5\n")
    with pytest.raises(C.ConfigError, match=r"unknown setting \[files\] idle_timeout"):
        C.build(environ={}, config_file=ini)


def test_unknown_section(tmp_path):
    ini = write_ini(tmp_path / "n.ini", "[nfs]\nendpoint = none\n")
    with pytest.raises(C.ConfigError, match=r"unknown setting \[nfs\] endpoint"):
        C.build(environ={}, config_file=ini)


def test_missing_and_malformed_config_file(tmp_path):
    with pytest.raises(C.ConfigError, match="config file .*missing.ini"):
        C.build(environ={}, config_file=str(tmp_path / "missing.ini"))
    ini = write_ini(tmp_path / "n.ini", "idle_timeout = 5\n")  # no section header
    with pytest.raises(C.ConfigError) as e:
        C.build(environ={}, config_file=ini)
    assert ini in str(e.value) and "\n" not in str(e.value)


def test_percent_signs_are_literal(tmp_path):
    # no interpolation: a database password may contain %
    ini = write_ini(tmp_path / "n.ini", "[netshare]\ndb = postgresql+psycopg://u:p%%x@h/d\n")
    assert C.build(environ={}, config_file=ini).db == "postgresql+psycopg://u:p%%x@h/d"


def test_config_is_frozen():
    cfg = C.defaults()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.idle_timeout = 1  # type: ignore[misc]
    assert C.defaults(idle_timeout=2.0).idle_timeout == 2.0
    assert cfg.replace(max_line=10).max_line == 10 and cfg.max_line == 4096


# -- the twistd plugin's options --------------------------------------------------


def test_options_parse(clean_environ, tmp_path):
    ini = write_ini(tmp_path / "n.ini", INI)
    clean_environ.setenv("NETSHARE_MAX_LINE", "2048")
    o = Options()
    o.parseOptions(
        [
            "--config",
            ini,
            "--idle-timeout",
            "9",
            "--files",
            "none",
            "--max-output",
            "3MiB",
            "--data",
            str(tmp_path / "d"),
        ]
    )
    cfg = o.netshareConfig
    assert cfg.idle_timeout == 9.0  # option
    assert cfg.max_line == 2048  # environment
    assert cfg.registration == "open"  # config file
    assert cfg.max_per_ip == 100  # default
    assert cfg.files is None and cfg.max_output == 3 * 2**20
    assert cfg.data == str(tmp_path / "d")


class _Exited(Exception):
    pass


def test_options_bad_value_exits_with_one_line(clean_environ, capsys, monkeypatch):
    # netshare.service.fatal exits with os._exit(1) when the reactor runs
    # (as it does under pytest-twisted) and SystemExit(1) otherwise.
    def fake_exit(code):
        raise _Exited(code)

    monkeypatch.setattr(os, "_exit", fake_exit)
    with pytest.raises((SystemExit, _Exited)) as e:
        Options().parseOptions(["--max-line", "-5"])
    assert e.value.args[0] == 1
    err = capsys.readouterr().err
    assert err == "netshare: setting --max-line: must be at least 1 (got '-5')\n"


def test_options_unknown_option():
    from twisted.python.usage import UsageError

    with pytest.raises(UsageError):
        Options().parseOptions(["--idle-timeuot", "5"])


def test_twistd_help_lists_every_setting():
    r = subprocess.run(
        twistd_command("--help"),
        cwd=ROOT,
        env=support_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    help_text = r.stdout
    flat = " ".join(help_text.split())
    assert "--config=" in help_text
    for s in C.SETTINGS:
        assert "--%s=" % s.option in help_text, s.option
        assert "env %s;" % s.env in flat, s.env
        assert "file [%s] %s]" % (s.section, s.key) in flat, s.name
    assert "Precedence: option > NETSHARE_* environment variable > config file > default" in flat

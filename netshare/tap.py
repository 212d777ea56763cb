"""
C{twistd netshare} / C{twist netshare}: options and the service tree.

Options come from L{netshare.config.SETTINGS}: one C{--option} per setting,
with its environment variable and default in the help text.
"""

from typing import TYPE_CHECKING

from twisted.python import usage

from netshare import config as configmod

if TYPE_CHECKING:
    from netshare.service import NetshareService


def _optParameters() -> list[list[str | None]]:
    params: list[list[str | None]] = [
        ["config", "c", None, "config file (INI, one section per service) [env NETSHARE_CONFIG]"]
    ]
    for s in configmod.SETTINGS:
        params.append(
            [
                s.option,
                None,
                None,
                "%s [default: %s; env %s; file [%s] %s]"
                % (s.help, s.default or '""', s.env, s.section, s.key),
            ]
        )
    return params


class Options(usage.Options):
    synopsis = "[options]"
    longdesc = (
        "Serve the netshare personnel, files and ttweet line protocols (and the admin "
        "manhole) over one account system and one database. Precedence: option > "
        "NETSHARE_* environment variable > config file > default."
    )
    optParameters = _optParameters()

    #: The validated settings, once the options are parsed.
    netshareConfig: configmod.Config

    def postOptions(self) -> None:
        cli = {s.name: self.get(s.option) for s in configmod.SETTINGS}
        try:
            self.netshareConfig = configmod.build(cli, config_file=self.get("config"))
        except configmod.ConfigError as e:
            from netshare.service import fatal

            fatal(str(e))


def makeService(options: Options) -> "NetshareService":
    # Imported here, not above: the service tree (SQLAlchemy, every protocol;
    # some 0.7 s) is needed to run, not to list or check the options.
    from netshare.service import NetshareService, StartupError, fatal

    service = NetshareService(options.netshareConfig)
    try:
        service.prepare()
    except StartupError as e:
        fatal(str(e))
    return service

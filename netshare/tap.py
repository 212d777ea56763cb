"""
C{twistd netshare} / C{twist netshare}: options and the service tree.

Options come from L{netshare.config.SETTINGS}: one C{--option} per setting,
with its environment variable and default in the help text.
"""

from twisted.python import usage

from netshare import config as configmod


def _optParameters():
    params = [["config", "c", None, "config file (INI, one section per service) "
               "[env NETSHARE_CONFIG]"]]
    for s in configmod.SETTINGS:
        params.append([s.option, None, None, "%s [default: %s; env %s; file [%s] %s]"
                       % (s.help, s.default or '""', s.env, s.section, s.key)])
    return params


class Options(usage.Options):
    synopsis = "[options]"
    longdesc = ("Serve the netshare personnel, files and ttweet line protocols (and the admin "
                "manhole) over one account system and one database. Precedence: option > "
                "NETSHARE_* environment variable > config file > default.")
    optParameters = _optParameters()

    def postOptions(self):
        cli = {s.name: self.get(s.option) for s in configmod.SETTINGS}
        try:
            self.netshareConfig = configmod.build(cli, config_file=self.get("config"))
        except configmod.ConfigError as e:
            from netshare.service import fatal
            fatal(str(e))


def makeService(options):
    from netshare.service import NetshareService, StartupError, fatal
    service = NetshareService(options.netshareConfig)
    try:
        service.prepare()
    except StartupError as e:
        fatal(str(e))
    return service

"""
Schema versioning with Alembic, driven from code (no alembic.ini).

C{netshare init} and C{netshare db upgrade} call L{upgrade}; service start-up
calls L{check}, which refuses a database whose schema is missing, older
(run C{netshare db upgrade}) or newer than this code (upgrade netshare), so a
half-migrated or foreign database is never written to.
"""

from alembic import command
from alembic.config import Config as AlembicConfig
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory


class SchemaError(Exception):
    """The database schema cannot be used by this version of netshare."""


def _config(connection=None) -> AlembicConfig:
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", "netshare.storage:migrations")
    cfg.attributes["connection"] = connection
    return cfg


def head() -> str:
    return ScriptDirectory.from_config(_config()).get_current_head()


def current(engine) -> str | None:
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def upgrade(engine, target: str = "head") -> tuple[str | None, str]:
    """Migrate to C{target}; return (revision before, revision after)."""
    before = current(engine)
    if status(engine) == "newer":
        raise SchemaError("database schema %s is newer than this netshare (%s): "
                          "upgrade netshare" % (before, head()))
    with engine.begin() as conn:
        command.upgrade(_config(conn), target)
    return before, current(engine)


def status(engine) -> str:
    """One of C{"missing"}, C{"old"}, C{"current"}, C{"newer"}."""
    rev = current(engine)
    if rev is None:
        return "missing"
    script = ScriptDirectory.from_config(_config())
    if rev == script.get_current_head():
        return "current"
    known = {s.revision for s in script.walk_revisions()}
    return "old" if rev in known else "newer"


def check(engine):
    """Raise L{SchemaError} with an operator-facing message unless current."""
    state = status(engine)
    if state == "missing":
        raise SchemaError("database has no netshare schema: run `netshare init` first")
    if state == "old":
        raise SchemaError("database schema %s is older than this netshare (%s): "
                          "run `netshare db upgrade`" % (current(engine), head()))
    if state == "newer":
        raise SchemaError("database schema %s is newer than this netshare (%s): "
                          "upgrade netshare" % (current(engine), head()))

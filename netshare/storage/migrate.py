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
from sqlalchemy.engine import Connection, Engine


class SchemaError(Exception):
    """The database schema cannot be used by this version of netshare."""


def _config(connection: Connection | None = None) -> AlembicConfig:
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", "netshare.storage:migrations")
    cfg.attributes["connection"] = connection
    return cfg


def _scripts() -> ScriptDirectory:
    return ScriptDirectory.from_config(_config())


def head() -> str:
    """The newest revision this netshare knows."""
    rev = _scripts().get_current_head()
    if rev is None:
        raise SchemaError("netshare has no migrations")  # a broken installation
    return rev


def revisions() -> list[str]:
    """Every revision this netshare knows, oldest first."""
    return [s.revision for s in _scripts().walk_revisions()][::-1]


def current(engine: Engine) -> str | None:
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def upgrade(engine: Engine, target: str = "head") -> tuple[str | None, str | None]:
    """Migrate to C{target}; return (revision before, revision after)."""
    before = current(engine)
    if status(engine) == "newer":
        raise SchemaError(
            "database schema %s is newer than this netshare (%s): "
            "upgrade netshare" % (before, head())
        )
    with engine.begin() as conn:
        command.upgrade(_config(conn), target)
    return before, current(engine)


def status(engine: Engine) -> str:
    """One of C{"missing"}, C{"old"}, C{"current"}, C{"newer"}."""
    rev = current(engine)
    if rev is None:
        return "missing"
    if rev == head():
        return "current"
    return "old" if rev in revisions() else "newer"


def check(engine: Engine) -> None:
    """Raise L{SchemaError} with an operator-facing message unless current."""
    state = status(engine)
    if state == "missing":
        raise SchemaError("database has no netshare schema: run `netshare init` first")
    if state == "old":
        raise SchemaError(
            "database schema %s is older than this netshare (%s): "
            "run `netshare db upgrade`" % (current(engine), head())
        )
    if state == "newer":
        raise SchemaError(
            "database schema %s is newer than this netshare (%s): "
            "upgrade netshare" % (current(engine), head())
        )

"""
Schema versioning with Alembic, driven from code (no alembic.ini).

C{netshare init} and C{netshare db upgrade} call L{upgrade}; service start-up
calls L{check}, which refuses a database whose schema is missing, older
(run C{netshare db upgrade}) or newer than this code (upgrade netshare), so a
half-migrated or foreign database is never written to.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

if TYPE_CHECKING:
    from alembic.config import Config as AlembicConfig
    from alembic.script import ScriptDirectory

# Alembic (with Mako and Pygments behind it) is imported only to migrate or
# to explain a schema that is not current: a server whose schema is current
# starts without it (L{check}), some 10 MiB less resident memory.
_VERSIONS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "migrations", "versions")


class SchemaError(Exception):
    """The database schema cannot be used by this version of netshare."""


def _config(connection: Connection | None = None) -> AlembicConfig:
    from alembic.config import Config as AlembicConfig

    cfg = AlembicConfig()
    cfg.set_main_option("script_location", "netshare.storage:migrations")
    cfg.attributes["connection"] = connection
    return cfg


def _scripts() -> ScriptDirectory:
    from alembic.script import ScriptDirectory

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
    from alembic.runtime.migration import MigrationContext

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
    from alembic import command

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


def newest_file_revision() -> str:
    """The newest revision by file name: every migration is
    C{versions/NNNN_name.py} with C{revision = "NNNN_name"} (a test holds
    them to it), so the head is known without importing Alembic."""
    return max(f[:-3] for f in os.listdir(_VERSIONS) if f[:4].isdigit() and f.endswith(".py"))


def _stored_revision(engine: Engine) -> str | None:
    """The revision Alembic recorded (its C{alembic_version} table), read
    with one query; None if there is none."""
    with engine.connect() as conn:
        if not sa.inspect(conn).has_table("alembic_version"):
            return None
        rows = conn.exec_driver_sql("SELECT version_num FROM alembic_version").all()
    return rows[0][0] if len(rows) == 1 else None


def check(engine: Engine) -> None:
    """Raise L{SchemaError} with an operator-facing message unless current."""
    if _stored_revision(engine) == newest_file_revision():
        return  # current: the usual start, no Alembic import
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

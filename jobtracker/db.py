"""Engines and migrations: how jobtracker connects, and how the schema gets to the right revision.

SQLite is configured for several readers and writers at once: WAL journal, a busy timeout, foreign
keys on, and write transactions that start with ``BEGIN IMMEDIATE`` so two writers queue on the
busy timeout instead of failing with "database is locked" when one upgrades a read lock.
PostgreSQL is used through psycopg 3 (``postgresql+psycopg://``).
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine, create_engine, event, inspect, text
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.exc import SQLAlchemyError

from jobtracker.errors import ConfigError, DatabaseNotReady
from jobtracker.urls import redact_db_url

if TYPE_CHECKING:
    from alembic.config import Config

#: The newest migration. Every command checks the database against it, and reading it here
#: spares them importing Alembic and its scripts (a test checks it equals Alembic's head).
SCHEMA_HEAD = "0005_request_hash"

#: Seconds a writer waits for another writer's lock on SQLite before giving up.
SQLITE_BUSY_TIMEOUT_S = 30
#: Execution option that makes the next SQLite transaction take the write lock at BEGIN.
WRITE = {"jobtracker_write": True}


class RawJSON(str):
    """JSON text that is already serialised; written as it is instead of being dumped again.

    The store serialises each payload once (it hashes that text too), so the engine's JSON
    serializer passes these through untouched.
    """

    __slots__ = ()


def _json_serializer(value: Any) -> str:
    if isinstance(value, RawJSON):
        return str(value)
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def sqlite_path(url: str) -> Path | None:
    """The file behind an SQLite URL, or ``None`` for in-memory / non-SQLite URLs."""
    parsed = make_url(url)
    if (
        parsed.get_backend_name() != "sqlite"
        or not parsed.database
        or parsed.database == ":memory:"
    ):
        return None
    return Path(parsed.database)


def make_engine(url: str) -> Engine:
    """Create an engine with jobtracker's connection settings for SQLite or PostgreSQL."""
    try:
        parsed = make_url(url)
    except Exception as exc:  # noqa: BLE001 - sqlalchemy raises several types here
        raise ConfigError(f"invalid database URL {redact_db_url(url)}: {exc}") from None
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        engine = create_engine(url, json_serializer=_json_serializer)
        _configure_sqlite(engine)
        return engine
    if backend == "postgresql":
        try:
            return create_engine(url, json_serializer=_json_serializer, pool_pre_ping=True)
        except ModuleNotFoundError as exc:
            raise ConfigError(
                "PostgreSQL needs the psycopg driver: pip install 'jobtracker[postgres]'"
            ) from exc
    raise ConfigError(f"unsupported database {backend!r}: use sqlite:/// or postgresql+psycopg://")


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Let SQLAlchemy's begin event decide how transactions start (pysqlite's own
        # implicit BEGIN cannot take the write lock up front).
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_S * 1000}")
        cur.execute("PRAGMA foreign_keys = ON")
        cur.execute("PRAGMA journal_mode = WAL")
        # In WAL mode NORMAL never corrupts and never loses a commit on a process crash; only
        # an OS crash or power cut can roll back the last transactions.
        cur.execute("PRAGMA synchronous = NORMAL")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        immediate = conn.get_execution_options().get("jobtracker_write", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


# --- migrations ------------------------------------------------------------------------------


def migrations_dir() -> Path:
    """Where the Alembic scripts live: inside the installed package, or beside it in a checkout."""
    spec = importlib.util.find_spec("jobtracker.migrations")
    if spec is not None and spec.submodule_search_locations:
        return Path(next(iter(spec.submodule_search_locations)))
    return Path(__file__).resolve().parent.parent / "migrations"


def alembic_config() -> Config:
    """An Alembic configuration built in code, so no ``alembic.ini`` is needed at run time."""
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(migrations_dir()))
    return cfg


def head_revision() -> str:
    """The newest revision this version of jobtracker knows."""
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None  # the package always ships at least one migration
    return head


def current_revision(conn: Connection) -> str | None:
    """The revision the database is at, or ``None`` when it has never been migrated."""
    if not inspect(conn).has_table("alembic_version"):
        return None
    versions = [row[0] for row in conn.execute(text("SELECT version_num FROM alembic_version"))]
    if len(versions) > 1:
        raise DatabaseNotReady(f"database has several schema heads ({', '.join(versions)})")
    return versions[0] if versions else None


def check_ready(engine: Engine, url: str) -> None:
    """Raise :class:`DatabaseNotReady` unless the database is at this code's head revision."""
    shown = redact_db_url(url)
    path = sqlite_path(url)
    if path is not None and not path.exists():
        raise DatabaseNotReady(f"no database at {path}; create it with `jobtracker db upgrade`")
    try:
        with engine.connect() as conn:
            current = current_revision(conn)
    except SQLAlchemyError as exc:
        raise DatabaseNotReady(
            f"cannot open database {shown}: {getattr(exc, 'orig', None) or exc}"
        ) from exc
    if current == SCHEMA_HEAD:
        return
    head = head_revision()
    if current is None:
        raise DatabaseNotReady(
            f"database {shown} has no jobtracker tables; run `jobtracker db upgrade`", head=head
        )
    from alembic.script import ScriptDirectory

    known = {rev.revision for rev in ScriptDirectory.from_config(alembic_config()).walk_revisions()}
    if current in known:
        raise DatabaseNotReady(
            f"database {shown} is at revision {current}, this jobtracker needs {head}; "
            "run `jobtracker db upgrade`",
            current=current,
            head=head,
        )
    raise DatabaseNotReady(
        f"database {shown} is at revision {current}, which this jobtracker does not know "
        "(written by a newer version?); upgrade jobtracker",
        current=current,
        head=head,
    )


def upgrade(engine: Engine, url: str, revision: str = "head") -> None:
    """Migrate the database up to ``revision``, creating the SQLite file if needed."""
    path = sqlite_path(url)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
    from alembic import command

    _run_command(engine, lambda cfg: command.upgrade(cfg, revision))


def downgrade(engine: Engine, revision: str) -> None:
    """Migrate the database down to ``revision`` (``base`` removes every jobtracker table)."""
    from alembic import command

    _run_command(engine, lambda cfg: command.downgrade(cfg, revision))


def _run_command(engine: Engine, run: Any) -> None:
    cfg = alembic_config()
    with engine.connect().execution_options(**WRITE) as conn, conn.begin():
        if conn.dialect.name == "postgresql":
            # Several machines may run `db upgrade` at once; let one migrate at a time.
            conn.execute(text("SELECT pg_advisory_xact_lock(7428130)"))
        cfg.attributes["connection"] = conn
        run(cfg)

"""Alembic environment: runs migrations on the connection jobtracker hands over.

``jobtracker db upgrade`` passes an open connection in ``config.attributes["connection"]`` so
the engine settings (SQLite pragmas, the transaction recipe) are the same as everywhere else.
Developers running ``alembic`` by hand get an engine from ``$JOBTRACKER_DB``.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy.engine import Connection

from jobtracker.schema import metadata

config = context.config


def _include_object(
    obj: object, name: str | None, type_: str, reflected: bool, compare_to: object
) -> bool:
    # Views are created by migrations with raw SQL; autogenerate must not treat them as tables.
    from jobtracker.schema import VIEW_NAMES

    return not (type_ == "table" and name in VIEW_NAMES)


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
        include_object=_include_object,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    """Run migrations on the handed-over connection, or on a fresh engine."""
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    from jobtracker.db import make_engine
    from jobtracker.settings import resolve_db_url

    engine = make_engine(resolve_db_url(config.get_main_option("sqlalchemy.url") or None))
    with engine.connect() as conn:
        _run(conn)
        conn.commit()
    engine.dispose()


if context.is_offline_mode():
    raise SystemExit("offline (--sql) migrations are not supported; run against a database")
run_migrations_online()

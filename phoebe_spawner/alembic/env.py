"""Alembic environment of phoebe-spawner's database migrations.

Loaded by alembic whenever :mod:`phoebe_spawner.store.schema` runs a migration
command (``Store.init`` on a fresh or outdated database, ``phoebe-spawner
upgrade-db``).  There is no ``alembic.ini``: ``store/schema.py`` builds the
``alembic.config.Config`` in code and passes the open connection of the store's
engine in ``config.attributes["connection"]``, so the engine's SQLite pragmas apply
and no second engine is made.  Without it, a URL in the ``sqlalchemy.url`` option is used
(handy for ad-hoc ``alembic`` runs by a developer).

Logging is deliberately *not* configured here: the hub owns the logging set-up.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection, create_engine, pool

from phoebe_spawner.store.orm import Base

config = context.config
target_metadata = Base.metadata


def _configure(**kwargs: object) -> None:
    """Configure the migration context with the options every mode shares."""
    context.configure(
        target_metadata=target_metadata,
        # SQLite cannot ALTER most things; batch mode recreates tables instead.
        render_as_batch=True,
        compare_type=True,
        **kwargs,  # type: ignore[arg-type]
    )


def run_migrations_offline() -> None:
    """Emit the migration SQL to stdout (``alembic upgrade --sql``) instead of running it."""
    _configure(
        url=config.get_main_option("sqlalchemy.url"),
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
    )
    with context.begin_transaction():
        context.run_migrations()


def _run_with(connection: Connection) -> None:
    """Run the pending migrations on ``connection``."""
    _configure(connection=connection)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    """Run the migrations on the caller's connection, or on one made from the URL."""
    connection = config.attributes.get("connection")
    if connection is not None:
        _run_with(connection)
        return
    url = config.get_main_option("sqlalchemy.url")
    if not url:
        raise RuntimeError("no connection attribute and no sqlalchemy.url option given")
    engine = create_engine(url, poolclass=pool.NullPool)
    try:
        with engine.connect() as conn:
            _run_with(conn)
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()

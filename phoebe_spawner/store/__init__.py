"""The hub's database: the :class:`Store` facade and what callers need beside it.

The hub builds one :class:`Store` at start-up (``PhoebeSpawnerApp``) and hands it to
the session manager, job manager, checkpoint code, accounts and handlers, which
await its coroutines and get rows back as plain dicts; so do the ``upgrade-db`` and
``create-user`` subcommands.  Tests and admin scripts use :func:`make_engine`,
:func:`schema_status` and :func:`upgrade_schema` on their own.
Outages surface as :class:`DatabaseUnavailable`; a schema that does not match the
code as :class:`DatabaseSchemaError`.  Import these names from here.

Inside: ``facade`` (:class:`Store`), ``engine`` (the engine and the one thread that
runs SQL), ``schema`` (alembic migrations), ``orm`` (the tables), ``errors``,
``batch`` (the buffer behind the two logs), ``commands`` and ``job_events`` (the
batched logs), and the queries by area: ``users``, ``sessions``, ``metrics``,
``jobs``, ``checkpoints``.
"""

from .engine import make_engine
from .errors import DatabaseSchemaError, DatabaseUnavailable
from .facade import Store
from .schema import schema_status, upgrade_schema

__all__ = [
    "DatabaseSchemaError",
    "DatabaseUnavailable",
    "Store",
    "make_engine",
    "schema_status",
    "upgrade_schema",
]

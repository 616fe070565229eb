"""The hub's database: the :class:`Store` facade and what callers need beside it.

The hub builds one :class:`Store` at start-up (``PhoebeSpawnerApp``) and hands it to
the session manager, job manager, checkpoint code, accounts and handlers, which
await its coroutines and get rows back as plain dicts.  The ``upgrade-db`` CLI uses
:func:`make_engine`, :func:`schema_status` and :func:`upgrade_schema`.  Outages
surface as :class:`DatabaseUnavailable`; a schema that does not match the code as
:class:`DatabaseSchemaError`.  The modules inside are described in
``docs/architecture.md``; import from here, not from them.
"""

from .facade import Store
from .schema import (
    DatabaseSchemaError,
    DatabaseUnavailable,
    make_engine,
    schema_status,
    upgrade_schema,
)

__all__ = [
    "DatabaseSchemaError",
    "DatabaseUnavailable",
    "Store",
    "make_engine",
    "schema_status",
    "upgrade_schema",
]

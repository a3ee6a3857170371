"""PostgreSQL queue and result backends for Nuvom: jobs that commit with your data.

Installed, they register under the name ``postgres`` (``queue_backend = "postgres"``,
``result_backend = "postgres"``) and keep their tables in the schema ``nuvom`` of the
database ``[plugins.postgres] dsn`` names (libpq's defaults when empty). To enqueue inside
your own transaction, see :func:`transaction`.
"""

from __future__ import annotations

from nuvom_plugins_postgres.queue import PostgresQueue
from nuvom_plugins_postgres.results import PostgresResultBackend
from nuvom_plugins_postgres.schema import SCHEMA_VERSION, SchemaOwnerError, SchemaVersionError
from nuvom_plugins_postgres.settings import PostgresSettings
from nuvom_plugins_postgres.store import PostgresUnavailableError
from nuvom_plugins_postgres.txn import WrongDatabaseError, transaction

__version__ = "0.1.0"

__all__ = [
    "SCHEMA_VERSION",
    "PostgresQueue",
    "PostgresResultBackend",
    "PostgresSettings",
    "PostgresUnavailableError",
    "SchemaOwnerError",
    "SchemaVersionError",
    "WrongDatabaseError",
    "__version__",
    "transaction",
]

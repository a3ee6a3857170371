"""SQLite queue and result backends for Nuvom: the embedded default, no server needed.

Installed, they register under the name ``sqlite`` (``queue_backend = "sqlite"``,
``result_backend = "sqlite"``) and share ``.nuvom/nuvom.db`` unless ``[plugins.sqlite] path``
(or ``results_path``, for the job records) says otherwise.
"""

from __future__ import annotations

from nuvom_plugins_sqlite.errors import (
    DatabaseBusyError,
    DatabaseFullError,
    SQLiteUnavailableError,
)
from nuvom_plugins_sqlite.queue import SQLiteJobQueue
from nuvom_plugins_sqlite.results import SQLiteResultBackend
from nuvom_plugins_sqlite.schema import SCHEMA_VERSION, SchemaVersionError
from nuvom_plugins_sqlite.settings import SQLiteSettings

__version__ = "0.1.0"

__all__ = [
    "SCHEMA_VERSION",
    "DatabaseBusyError",
    "DatabaseFullError",
    "SQLiteJobQueue",
    "SQLiteResultBackend",
    "SQLiteSettings",
    "SQLiteUnavailableError",
    "SchemaVersionError",
    "__version__",
]

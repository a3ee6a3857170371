"""The ``[plugins.postgres]`` table, and how a DSN is shown and connected to.

Why the DSN defaults to ``""``: libpq then reads its own environment (``PGHOST``,
``PGUSER``, ``PGDATABASE``, ``PGPASSWORD``, ``~/.pgpass``), so a machine already set up for
``psql`` needs no Nuvom setting at all.

Why every session gets keepalives, a connect timeout and
``idle_in_transaction_session_timeout``: a half-open TCP connection must fail within seconds
rather than hang a worker, and a session of ours left idle inside a transaction would hold
back vacuum for every table in the database (the queue's bloat problem), so the server ends
it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import attrs
import psycopg.conninfo

from nuvom_kernel.backends import BackendContext
from nuvom_kernel.config import mask_secret
from nuvom_kernel.errors import ConfigError

__all__ = ["PostgresSettings", "connect_kwargs", "masked_dsn", "schema_name"]

_IDENT = re.compile(r"[^a-z0-9_]")
_MAX_IDENT = 63  # PostgreSQL truncates longer identifiers (NAMEDATALEN - 1)


@attrs.frozen
class PostgresSettings:
    """The ``[plugins.postgres]`` table, shared by the queue and the result backend.

    :param dsn: a libpq connection string or URL; ``""`` uses libpq's defaults and ``PG*``
        environment variables.
    :param schema: the schema holding Nuvom's tables (created on first use). The core
        setting ``namespace`` (``NUVOM_NAMESPACE``; the kernel's tests, the contract suite,
        ``nuvom plugin test``) is appended: ``<schema>_<namespace>``.
    :param pool_size: most pooled connections per process (the LISTEN connection is extra).
    :param result_ttl_secs: finished job records older than this are deleted by the
        workers' maintenance tick; ``0`` keeps them until ``nuvom purge results``.
    :param visibility_timeout_secs: lease length for the queue; default from the kernel.
    """

    dsn: str = ""
    schema: str = "nuvom"
    pool_size: int = 10
    result_ttl_secs: float = 0.0
    visibility_timeout_secs: float = 30.0

    @classmethod
    def parse(cls, settings: Mapping[str, Any], context: BackendContext) -> PostgresSettings:
        """Validate a settings table; every error names the key and what it accepts."""
        known = {f.name for f in attrs.fields(cls)}
        unknown = sorted(set(settings) - known)
        if unknown:
            raise ConfigError(f"[plugins.postgres] has unknown key(s) {', '.join(unknown)}; "
                              f"known: {', '.join(sorted(known))}.")
        dsn = str(settings.get("dsn") or "")
        try:
            psycopg.conninfo.conninfo_to_dict(dsn)
        except psycopg.ProgrammingError as exc:
            raise ConfigError(f"[plugins.postgres] dsn={masked_dsn(dsn)!r} is not a valid "
                              f"libpq connection string or URL: {exc}") from None
        schema = schema_name(str(settings.get("schema") or "nuvom"), context.namespace)
        size = settings.get("pool_size", 10)
        if not isinstance(size, int) or isinstance(size, bool) or size < 1:
            raise ConfigError(f"[plugins.postgres] pool_size={size!r} is invalid: "
                              "it must be a whole number >= 1.")
        numbers = {}
        for key, default, floor in (("result_ttl_secs", 0.0, 0.0),
                                    ("visibility_timeout_secs",
                                     context.visibility_timeout_secs, None)):
            raw = settings.get(key, default)
            try:
                value = float(raw)
            except (TypeError, ValueError):
                value = -1.0
            if not (value >= floor if floor is not None else value > 0):
                limit = ">= 0" if floor is not None else "> 0"
                raise ConfigError(f"[plugins.postgres] {key}={raw!r} is invalid: it must be "
                                  f"a number of seconds {limit}.")
            numbers[key] = value
        return cls(dsn=dsn, schema=schema, pool_size=size, **numbers)


def schema_name(base: str, namespace: str = "") -> str:
    """``base``, or ``base_<namespace>`` folded to a plain lower-case identifier.

    Why fold: a namespace such as ``nuvom-test-1a2b`` would need quoting everywhere; a
    plain identifier can also name the LISTEN channel and appear in logs as typed.
    """
    name = f"{base}_{namespace}" if namespace else base
    folded = _IDENT.sub("_", name.lower())
    if not folded or folded[0].isdigit():
        folded = "n" + folded
    if len(folded) > _MAX_IDENT:
        raise ConfigError(f"[plugins.postgres] schema {name!r} is longer than "
                          f"{_MAX_IDENT} characters once the namespace is added.")
    return folded


def masked_dsn(dsn: str) -> str:
    """The DSN fit for an error message: its password replaced by ``***``; libpq's
    defaults spelled out as such when it is empty."""
    if not dsn:
        return "'' (libpq defaults: PGHOST, PGPORT, PGUSER, PGDATABASE)"
    return str(mask_secret("dsn", dsn))


def connect_kwargs(application_name: str = "nuvom") -> dict[str, Any]:
    """Options for every connection we open (merged into the DSN by psycopg)."""
    return {
        "application_name": application_name[:63],
        "connect_timeout": 5,
        "keepalives": 1,
        "keepalives_idle": 10,
        "keepalives_interval": 3,
        "keepalives_count": 3,
        "tcp_user_timeout": 15000,
        "options": "-c idle_in_transaction_session_timeout=60000",
    }

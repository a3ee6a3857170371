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
from typing import Annotated, Any

import attrs
import psycopg.conninfo

from nuvom_kernel.backends import BackendContext
from nuvom_kernel.config import mask_secret
from nuvom_kernel.errors import ConfigError
from nuvom_kernel.plugin_settings import plugin_env_var, schema_of, scrub_secret
from nuvom_kernel.values import RESULT_TTL_SECS, Converted, Retention, Seconds, whole

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
        workers' maintenance tick (default 7 days, as every persistent result backend's);
        ``0`` keeps them until ``nuvom purge results``.
    :param visibility_timeout_secs: lease length for the queue; default from the kernel.
        A :data:`~nuvom_kernel.values.Seconds` (at most 366 days), as is ``xmin_warn_secs``:
        both reach PostgreSQL as ``n * interval '1 second'``, and ``inf`` or ``1e13`` failed
        every claim with ``interval out of range``.
    :param sync_lease_commits: ``False`` (default): claims, acks, lease extensions and
        settle transactions commit with ``synchronous_commit = off``, not waiting for the
        WAL flush (a third of a claim's or an enqueue's time on a local disk). Why that is
        safe: a server crash can lose only the last few hundred milliseconds of them, whole
        transactions in commit order, so a lost claim or settle leaves its job leased under
        a token nobody acks and the lease's expiry runs it again (at-least-once), its
        record (which another session may already have read) rolled back with it.
        Enqueues, and ``retry``/``release`` called on their own, keep the server's
        ``synchronous_commit``; a retry settled with its record commits with the settle.
        ``True``: every statement waits for the flush.
    :param dead_tuple_warn_ratio: ``nuvom status`` warns when dead rows are at least this
        share of the ``jobs`` or ``results`` table (``n_dead_tup / (n_live_tup +
        n_dead_tup)``)…
    :param dead_tuple_warn_min: …and there are at least this many dead rows (so an empty or
        tiny table does not warn).
    :param xmin_warn_secs: ``nuvom status`` warns about any session whose snapshot or
        transaction (``backend_xmin``) is older than this: it stops vacuum from removing the
        queue's dead rows.
    """

    dsn: str = ""
    schema: str = "nuvom"
    pool_size: Annotated[int, Converted(whole(1))] = 10
    result_ttl_secs: Retention = RESULT_TTL_SECS
    visibility_timeout_secs: Seconds = 30.0
    sync_lease_commits: bool = False
    dead_tuple_warn_ratio: float = 0.2
    dead_tuple_warn_min: Annotated[int, Converted(whole(0))] = 10_000
    xmin_warn_secs: Seconds = 300.0

    @classmethod
    def parse(cls, settings: Mapping[str, Any], context: BackendContext) -> PostgresSettings:
        """Validate a settings table; every error names the key and what it accepts (the
        kernel's checks of the declared types, :meth:`PluginSchema.check`, then this
        plugin's own)."""
        values = schema_of("postgres", cls).check(settings)
        dsn = values.pop("dsn", "")
        _check_uri_user_info(dsn)
        try:
            psycopg.conninfo.conninfo_to_dict(dsn)
        except psycopg.ProgrammingError as exc:
            raise _bad_dsn(dsn, "is not a valid libpq connection string or URL "
                                "('postgresql://user@host:5432/db' or 'host=... dbname=...'): "
                                + scrub_secret(" ".join(str(exc).split()), dsn)) from None
        schema = schema_name(values.pop("schema", "") or "nuvom", context.namespace)
        ratio = values.get("dead_tuple_warn_ratio", 0.2)
        if not 0 < ratio <= 1:
            raise ConfigError(f"[plugins.postgres] dead_tuple_warn_ratio={ratio!r} "
                              f"({plugin_env_var('postgres', 'dead_tuple_warn_ratio')}) is "
                              "invalid: it must be a number > 0 and <= 1.")
        values.setdefault("visibility_timeout_secs", context.visibility_timeout_secs)
        return cls(dsn=dsn, schema=schema, **values)


def _bad_dsn(dsn: str, why: str, shown: str | None = None) -> ConfigError:
    return ConfigError(f"[plugins.postgres] dsn={shown or masked_dsn(dsn)!r} "
                       f"({plugin_env_var('postgres', 'dsn')}) {why}")


def _check_uri_user_info(dsn: str) -> None:
    """Refuse a URL whose user or password holds an unencoded ``@`` or ``/``.

    Why before connecting: libpq splits such a URL at the wrong place and takes the rest
    for a host, a port or a database name, which its errors (and our masking, reading the
    same split) then print: the password's tail. The password is also wrong for the
    server. Percent-encoding is the fix the user needs. A database name with an ``@`` is
    refused too: it cannot be told from a password holding a ``/``.
    """
    scheme, sep, rest = dsn.partition("://")
    if not sep or scheme.lower() not in ("postgres", "postgresql"):
        return
    authority, _, path = rest.partition("?")[0].partition("/")
    if authority.count("@") > 1 or "@" in path:
        raise _bad_dsn(dsn, "has an '@' or '/' in its user or password that is not "
                            "percent-encoded, so the host cannot be told apart; write '@' as "
                            "%40, '/' as %2F and ':' in the user as %3A, e.g. "
                            "'postgresql://app:p%40ss@db.example:5432/app'.",
                       shown=f"{scheme}://***")


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

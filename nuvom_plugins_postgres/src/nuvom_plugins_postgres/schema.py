"""Nuvom's tables in their own schema, created on first use and migrated in versions.

Why an advisory lock around migrations: two workers starting at once would both see an empty
schema and race to create it. ``pg_advisory_xact_lock`` serialises them per schema, is
released with the transaction (safe behind a transaction-mode pooler), and the second one
finds the version already current.

Why ``COLLATE "C"`` on job ids: keyset pages and the kernel's ``newer_first`` compare ids by
code point, as Python does; a locale collation would order them differently.

Why the ready and scheduled rows have separate partial indexes: a claim walks only ready
rows in (priority, FIFO) order, so a million delayed jobs cost the claim nothing; the
maintenance tick promotes due ones by the ``due_at`` index. Held rows (state 3, v6: ready
but parked by a concurrency limit) have their own too, for the same reason. The lease
deadline is not indexed, so a heartbeat (``extend``) is a HOT update.
"""

from __future__ import annotations

import psycopg
from psycopg import sql

from nuvom_kernel.errors import ConfigError, NuvomError

__all__ = ["ADVISORY_CLASS", "SCHEMA_VERSION", "SchemaOwnerError", "SchemaVersionError",
           "migrate", "owner_error"]

#: First key of every advisory lock we take (``'nu'``); the second is per schema and purpose.
ADVISORY_CLASS = 0x6E75

_V1 = """
CREATE TABLE {s}.jobs (
    id text COLLATE "C" PRIMARY KEY,
    queue text NOT NULL,
    state smallint NOT NULL,            -- 0 ready, 1 scheduled (delayed), 2 leased
    priority integer NOT NULL,
    created_at double precision NOT NULL,
    seq bigint GENERATED ALWAYS AS IDENTITY,
    available_at double precision NOT NULL,
    due_at timestamptz,
    task text NOT NULL,
    failures integer NOT NULL DEFAULT 0,
    deliveries integer NOT NULL DEFAULT 0,
    token text,
    lease_expires_at timestamptz,
    body bytea NOT NULL
) WITH (fillfactor = 85, autovacuum_vacuum_scale_factor = 0.01,
        autovacuum_analyze_scale_factor = 0.02, autovacuum_vacuum_cost_delay = 0);
CREATE INDEX jobs_ready_by_queue ON {s}.jobs (queue, priority DESC, created_at, seq)
    WHERE state = 0;
CREATE INDEX jobs_ready ON {s}.jobs (priority DESC, created_at, seq) WHERE state = 0;
CREATE INDEX jobs_scheduled ON {s}.jobs (due_at) WHERE state = 1;
CREATE INDEX jobs_leased ON {s}.jobs (queue) WHERE state = 2;
CREATE TABLE {s}.results (
    job_id text COLLATE "C" PRIMARY KEY,
    status text NOT NULL,
    func_name text NOT NULL,
    run integer NOT NULL,
    attempts integer NOT NULL,
    terminal boolean NOT NULL,
    updated_at double precision NOT NULL,
    data text NOT NULL
) WITH (autovacuum_vacuum_scale_factor = 0.02);
CREATE INDEX results_newest ON {s}.results (updated_at DESC, job_id DESC);
CREATE INDEX results_by_status ON {s}.results (status, updated_at DESC, job_id DESC);
CREATE INDEX results_by_task ON {s}.results (func_name, updated_at DESC, job_id DESC);
CREATE INDEX results_finished ON {s}.results (updated_at) WHERE terminal;
"""

# v2: a row's state and its columns must agree. Types alone let a hand edit (or another
# tool) write a state no statement here reads — ``state = 7``, a scheduled row without a due
# time, a lease without a deadline — and such a row would wait forever, never claimed,
# promoted or recovered. The server now refuses it, so no quarantine is needed.
_V2 = """
ALTER TABLE {s}.jobs ADD CONSTRAINT jobs_state_valid CHECK (
    state IN (0, 1, 2)
    AND (state <> 1 OR due_at IS NOT NULL)
    AND (state <> 2 OR (token IS NOT NULL AND lease_expires_at IS NOT NULL)));
"""

# v3: worker heartbeats, one row per live worker, replaced on each beat; the expiry is on the
# server's clock, so hosts need not agree on the time.
_V3 = """
CREATE TABLE {s}.workers (
    id text COLLATE "C" PRIMARY KEY,
    info text NOT NULL,
    expires_at timestamptz NOT NULL
);
"""

# v4: schedule state (``@task(schedule=...)``), one row per schedule, written with a
# compare-and-set on ``updated_at`` by whichever worker's scheduler fires a tick.
_V4 = """
CREATE TABLE {s}.schedules (
    name text PRIMARY KEY,
    updated_at double precision NOT NULL,
    state text NOT NULL
);
"""

# v5: the namespace that owns the schema, one row at most. Why: the schema's name is
# ``<schema>_<namespace>`` folded to a plain identifier, so namespaces such as ``app-1`` and
# ``app_1`` fold to one schema and would see each other's jobs. The mapping cannot change
# (an upgraded deployment's queue would look empty), so the first namespaced process to open
# the schema records its namespace (``claim``), which adopts a schema made by an older
# version, and a process of another namespace is refused at open (``SchemaOwnerError``).
_V5 = """
CREATE TABLE {s}.owner (
    one boolean PRIMARY KEY DEFAULT true CHECK (one),
    namespace text NOT NULL,
    claimed_at timestamptz NOT NULL DEFAULT now()
);
"""

# v6: state 3, "held": a ready row parked by a claim under concurrency limits because its
# task had no room (see ``nuvom_plugins_postgres.limits``). It is out of the claim-order
# indexes (``jobs_ready``, ``jobs_ready_by_queue``: ``WHERE state = 0``), so an idle limited
# claim no longer walks a saturated task's backlog; ``jobs_held`` holds only such rows, by
# task and queue first so a claim finds a task's first held rows without reading the others.
# No held row, no entry: push, ack and the plain claim pay nothing for it.
_V6 = """
ALTER TABLE {s}.jobs DROP CONSTRAINT IF EXISTS jobs_state_valid;
ALTER TABLE {s}.jobs ADD CONSTRAINT jobs_state_valid CHECK (
    state IN (0, 1, 2, 3)
    AND (state <> 1 OR due_at IS NOT NULL)
    AND (state <> 2 OR (token IS NOT NULL AND lease_expires_at IS NOT NULL)));
CREATE INDEX IF NOT EXISTS jobs_held ON {s}.jobs (task, queue, priority DESC, created_at, seq)
    WHERE state = 3;
"""

# v7: copies of messages whose bodies the kernel could not decode (a hand edit, another tool),
# kept as stored, byte for byte, with why (``copy_to_quarantine``). Why a table: the types
# and the state check refuse a malformed row, but a well-typed one can still carry a body
# that is no envelope; the worker fails that job and acks it, and without a copy its bytes
# went with the ack. Keyed by its own ``seq`` (a job's id may be pushed again, and copied
# again); no index on the id: only ``nuvom status`` reads it, oldest first.
_V7 = """
CREATE TABLE {s}.quarantine (
    seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id text COLLATE "C" NOT NULL,
    queue text NOT NULL,
    priority integer NOT NULL,
    created_at double precision NOT NULL,
    available_at double precision NOT NULL,
    task text NOT NULL,
    failures integer NOT NULL,
    deliveries integer NOT NULL,
    body bytea NOT NULL,
    reason text NOT NULL,
    quarantined_at timestamptz NOT NULL DEFAULT now()
);
"""

#: One entry per version; a new version appends its DDL here and never edits an old one.
MIGRATIONS: tuple[str, ...] = (_V1, _V2, _V3, _V4, _V5, _V6, _V7)
SCHEMA_VERSION = len(MIGRATIONS)


class SchemaVersionError(NuvomError):
    """The schema was migrated by a newer nuvom-plugins-postgres than this one."""


class SchemaOwnerError(ConfigError):
    """The schema belongs to another namespace that folds to the same schema name."""


def owner_error(schema: str, owner: str, namespace: str) -> SchemaOwnerError:
    """The refusal of ``namespace`` for ``schema``, owned by ``owner``: what collided, why,
    and the two ways out."""
    return SchemaOwnerError(
        f"PostgreSQL schema {schema!r} belongs to namespace {owner!r}, but this process's "
        f"namespace is {namespace!r} (NUVOM_NAMESPACE): a namespace's schema is "
        "'<[plugins.postgres] schema>_<namespace>' folded to a plain identifier (lower "
        "case, every character other than a-z, 0-9 and _ replaced by _), and both fold to "
        f"{schema!r}, so they would see and run each other's jobs. Choose a namespace that "
        f"still differs from {owner!r} after folding, or give this one a schema of its own "
        "([plugins.postgres] schema, NUVOM_PLUGINS__POSTGRES__SCHEMA). The owner is "
        f"recorded in {schema}.owner.")


def _owner(conn: psycopg.Connection, schema: str) -> str | None:
    row = conn.execute(sql.SQL("SELECT namespace FROM {}.owner").format(
        sql.Identifier(schema))).fetchone()
    return None if row is None else str(row[0])


def _current(conn: psycopg.Connection, schema: str) -> int | None:
    row = conn.execute(
        "SELECT 1 FROM pg_catalog.pg_tables WHERE schemaname = %s AND tablename = 'version'",
        (schema,)).fetchone()
    if row is None:
        return None
    found = conn.execute(sql.SQL("SELECT max(version) FROM {}.version").format(
        sql.Identifier(schema))).fetchone()
    return int(found[0]) if found and found[0] is not None else 0


def _check(version: int | None, schema: str) -> None:
    if version is not None and version > SCHEMA_VERSION:
        raise SchemaVersionError(
            f"PostgreSQL schema {schema!r} is at version {version}, newer than this "
            f"nuvom-plugins-postgres understands ({SCHEMA_VERSION}): upgrade the plugin "
            "on this machine (from a newer clone of Nuvom: `pip install -U "
            "./nuvom_plugins_postgres`), or point "
            "[plugins.postgres] schema at another schema.")


def migrate(conn: psycopg.Connection, schema: str, namespace: str = "") -> int | None:
    """Bring ``schema`` to :data:`SCHEMA_VERSION` on an autocommit connection and, for a
    ``namespace``, claim it; return the version found before (``None``: this call created
    the schema's tables).

    Why a process without a namespace neither claims nor is refused: it names its schema
    through the ``schema`` setting alone, which is how an operator points a tool at a
    namespace's schema on purpose; a namespace can only reach a schema by folding.

    :raises SchemaVersionError: the schema is newer than this code.
    :raises SchemaOwnerError: the schema belongs to another namespace.
    """
    found = _current(conn, schema)
    _check(found, schema)
    if found == SCHEMA_VERSION:
        if not namespace:
            return found  # no lock, two catalog reads
        owner = _owner(conn, schema)
        if owner == namespace:
            return found  # the common case: and one read of the owner
        if owner is not None:
            raise owner_error(schema, owner, namespace)
    ident = sql.Identifier(schema)
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s, hashtext(%s))",
                     (ADVISORY_CLASS, f"{schema}:migrate"))
        found = before = _current(conn, schema)  # another process may have migrated meanwhile
        _check(found, schema)
        conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(ident))
        if found is None:
            conn.execute(sql.SQL("CREATE TABLE {}.version (version integer NOT NULL)"
                                 ).format(ident))
            found = 0
        for number in range(found + 1, SCHEMA_VERSION + 1):
            conn.execute(sql.SQL(MIGRATIONS[number - 1]).format(s=ident))
            conn.execute(sql.SQL("INSERT INTO {}.version VALUES (%s)").format(ident),
                         (number,))
        if namespace:  # under the lock: of two namespaces claiming at once, one wins
            conn.execute(sql.SQL("INSERT INTO {}.owner (namespace) VALUES (%s) "
                                 "ON CONFLICT DO NOTHING").format(ident), (namespace,))
            owner = _owner(conn, schema)
            if owner != namespace:
                raise owner_error(schema, str(owner), namespace)
    return before

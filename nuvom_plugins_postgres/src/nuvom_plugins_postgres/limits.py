"""Claims under concurrency limits (``@task(concurrency=N)``) on PostgreSQL.

A limit is a promise across every worker on every host: at most N live leases of the task
at once. Live leases are rows in state 2 whose deadline (the database's clock) has not
passed, whoever holds them, in whichever queue; so the claim counts them per limited task
and leases only within the room left. A row held back by its limit is never written: no
delivery counted, no token, no lease, its place in claim order kept (``peek_state`` reads
it QUEUED, ``browse``, ``stats`` and ``cancel`` see a waiting job). Only a worker given
limits takes this path; the one-statement ``queries.CLAIM`` stays everyone else's.

Why a transaction-scoped advisory lock per limited task. Claims run concurrently, each in
its own READ COMMITTED transaction: two that count the task's leases at once both see room
and both lease, so counting and leasing must be serialized per task. SQLite has one writer;
PostgreSQL needs a lock whose holder is exactly "the claim counting this task now". The
alternatives were worse: ``SERIALIZABLE`` aborts racing claims (retry storms under load),
``LOCK TABLE`` or one lock for all limits serializes every claim of the app, even those
leasing only unlimited tasks, and a counter table is one more row written by every ack,
retry, expiry and cancel of a limited task — by code that does not know the limits. An
advisory lock costs nothing to anyone who does not take it, is released with the
transaction (commit or rollback, and a dead session's too), and is safe behind a
transaction-mode pooler. A lease made under the lock is committed before the lock is
released, and the count runs in a statement that starts after the lock was acquired, so its
snapshot sees every lease of every earlier holder.

The claim (:func:`claim_limited`), one transaction:

1. **Candidates**: the first ``n`` ready rows in claim order, locked ``FOR UPDATE SKIP
   LOCKED`` as the plain claim locks them, leaving out the tasks whose live leases already
   fill their limit (counted in the same statement, without a lock: a task that looks full
   is one whose lease ended in the last moment at best, which the next claim sees). So a
   backlog of a saturated task is filtered in the server, never locked nor sent here.
2. **Locks**, only for the limited tasks among the candidates (a claim that meets none
   takes none), blocking, in ascending key order, in one statement. No cycle of waits can
   form: a claim waits only for keys larger than every one it holds, and once granted it
   waits on nothing more (its statements lock rows with ``SKIP LOCKED``, update only rows
   it locked itself, and later rounds only try locks).
3. **Count** those tasks' live leases, in a statement of its own (see above), and hand out
   the room in claim order; a candidate of a task without room is dropped (it stays locked
   until the commit, unwritten).
4. **Again**, if rows were dropped and the claim is short: the next candidates without the
   full tasks. A task first met here is locked with ``pg_try_advisory_xact_lock`` (one
   already held may have a larger key, and waiting for a smaller one could close a cycle):
   if another claim holds it, the task is left out of this claim, which the next one
   serves. Each such round fills or leaves out one more task, so at most ``len(limits) +
   1`` rounds; almost always one.
5. **Lease** the chosen rows (one ``UPDATE``) and commit.

The transaction ends idle sessions after :data:`IDLE_IN_CLAIM_MS` (``set_config(…, true)``,
as the maintenance tick does): a client lost between its round trips would otherwise hold
its tasks' locks, and stall every limited claim of those tasks, for the session's 60 s idle
timeout.

What it costs. A worker with limits: five statements (``BEGIN``, the transaction's
settings, the candidates, the lease, ``COMMIT``) instead of one when no limited task is
among the first ``n`` ready rows, seven (the lock, the count) when one is; counting live
leases reads every leased row (no index by task), which the jobs in flight bound. Nobody
else: no index, no column, no trigger; push, ack, retry, extend and the plain claim are the
same statements as before. The price of no index is the backlog of a full task: step 1
reads (in the server, without locking) every held-back row ahead of the first claimable one
in the claim-order index, 0.2-0.3 µs a row: 18-27 ms a claim behind 100,000 of them.
An index leading with the task would bound that, but every push, retry, release and
promotion of every task would pay one more index entry (a ``.map()`` push 37 % slower);
see the plugin's README for the numbers.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

import psycopg
from psycopg import sql

from nuvom_plugins_postgres.queries import _RETURNING, _SECS, render
from nuvom_plugins_postgres.schema import ADVISORY_CLASS

__all__ = ["IDLE_IN_CLAIM_MS", "LimitQueries", "claim_limited", "lock_key"]

#: How long a limited claim's transaction may sit idle between its statements before the
#: server ends the session (and so releases its locks): its statements follow each other
#: at once, so only a client that stopped or lost the server waits that long.
IDLE_IN_CLAIM_MS = 2000

# Live leases per task among ``%b::text[]``: state 2 with the deadline ahead. Why
# ``statement_timestamp()`` (one clock for the statement, read once) where the tick's test
# of an expired lease reads ``clock_timestamp()``: a lease at its deadline between the two
# readings is counted as live here, never the other way round, so the count errs on the
# side of the limit.
_LIVE = """
SELECT task, count(*) AS n FROM {s}.jobs
WHERE state = 2 AND lease_expires_at > statement_timestamp() AND task = ANY(%b::text[])
GROUP BY task
"""

# Sent first in the transaction: its settings, each for this transaction only
# (``set_config(..., true)``, as ``SET LOCAL``), in one statement (parameter: the idle
# timeout). Why each:
# - ``enable_sort = off``: the candidates' filter on an init plan's array (the full tasks)
#   is one the planner cannot estimate, and where few tasks fill the table it guesses that
#   almost no row passes and sorts the whole table for the first ``n`` (4 ms a claim over
#   4,000 ready rows); walking the claim-order index (``jobs_ready``), as the plain claim
#   does, stops after the rows it takes and the held-back ones before them.
# - ``plan_cache_mode = force_generic_plan``: that plan does not depend on the parameters,
#   and planning it anew for each claim cost 0.45 ms, three times its execution.
# - ``idle_in_transaction_session_timeout``: see the module docstring.
# - ``synchronous_commit = off``, unless ``sync_lease_commits``: as every lease write
#   (``queries._ASYNC``).
SETTINGS = """
SELECT set_config('enable_sort', 'off', true),
       set_config('plan_cache_mode', 'force_generic_plan', true),
       set_config('idle_in_transaction_session_timeout', %s, true) {async}
"""
_ASYNC_COMMIT = ", set_config('synchronous_commit', 'off', true)"

# Step 1 (and 4): the next ready rows in claim order, without the tasks whose live leases
# fill their limit (counted here, unlocked: see the module docstring; an init plan, run
# once), the tasks given as left out and the rows already chosen. Parameters: the limited
# tasks (twice), their limits, the tasks left out, the chosen ids, [the queues], n.
CANDIDATES = f"""
SELECT j.id, j.task FROM {{s}}.jobs j
WHERE j.state = 0
  AND j.task <> ALL(ARRAY(
        SELECT c.task FROM ({_LIVE}) AS c
        JOIN unnest(%b::text[], %b::int[]) AS l(task, lim) ON l.task = c.task
        WHERE c.n >= l.lim))
  AND j.task <> ALL(%b::text[]) AND j.id <> ALL(%b::text[]) {{queues}}
ORDER BY j.priority DESC, j.created_at, j.seq LIMIT %s
FOR UPDATE OF j SKIP LOCKED
"""

# Step 2: blocking locks, taken in the order of the array (``unnest`` yields its elements
# in order, and the aggregate calls the function once per element as they come);
# parameters: ``ADVISORY_CLASS``, the keys. Step 4: try-locks, the keys acquired returned;
# parameters: the keys, ``ADVISORY_CLASS``.
LOCK = "SELECT count(pg_advisory_xact_lock(%s, k)) FROM unnest(%b::int[]) AS k"
TRY_LOCK = "SELECT k FROM unnest(%b::int[]) AS k WHERE pg_try_advisory_xact_lock(%s, k)"
# Step 3: live leases per task, in a statement begun after the locks were taken.
LIVE = _LIVE
# Step 5: lease the chosen rows (all locked by this transaction, all ready). Parameters: the
# lease's length, the ids.
LEASE = f"""
UPDATE {{s}}.jobs j
SET state = 2, deliveries = j.deliveries + 1,
    token = replace(gen_random_uuid()::text, '-', ''),
    lease_expires_at = clock_timestamp() + {_SECS}
FROM unnest(%b::text[]) AS c(id) WHERE j.id = c.id AND j.state = 0
RETURNING {_RETURNING}
"""
# ``task_counts``: per task, live leases and ready rows (an expired lease and a due scheduled
# row included, a delayed one not, as ``stats`` counts them), on one clock.
COUNTS = """
SELECT task,
       count(*) FILTER (WHERE state = 2 AND lease_expires_at > statement_timestamp()),
       count(*) FILTER (WHERE NOT ((state = 2 AND lease_expires_at > statement_timestamp())
                                   OR (state = 1 AND due_at > statement_timestamp()))
                               IS TRUE)
FROM {s}.jobs WHERE task = ANY(%b::text[]) GROUP BY task
"""


class LimitQueries:
    """The statements above bound to one schema; ``candidates[some queues?]``."""

    def __init__(self, schema: str, sync_lease_commits: bool = False) -> None:
        s = sql.Identifier(schema)

        def bind(text: str) -> bytes:
            return render(sql.SQL(text).format(s=s))

        self.settings = bind(SETTINGS.replace(
            "{async}", "" if sync_lease_commits else _ASYNC_COMMIT))
        self.candidates = {some: bind(CANDIDATES.replace(
            "{queues}", "AND j.queue = ANY(%b::text[])" if some else ""))
            for some in (False, True)}
        self.lock, self.try_lock = bind(LOCK), bind(TRY_LOCK)
        self.live, self.lease, self.counts = bind(LIVE), bind(LEASE), bind(COUNTS)


def lock_key(schema: str, task: str) -> int:
    """The second key of ``task``'s advisory lock (the first is ``ADVISORY_CLASS``): 32
    bits of BLAKE2b of ``<schema>:limit:<task>``, so every process of every host computes
    the same one without asking the server, and each namespace (schema) has its own. Two
    tasks sharing a key only share a lock: their claims serialize, the limits still hold.
    """
    digest = hashlib.blake2b(f"{schema}:limit:{task}".encode("utf-8", "surrogatepass"),
                             digest_size=4).digest()
    return int.from_bytes(digest, "big", signed=True)


def claim_limited(conn: psycopg.Connection[Any], q: LimitQueries, limits: Mapping[str, int],
                  keys: Mapping[str, int], n: int, queues: Sequence[str] | None,
                  vis: float) -> list[tuple[Any, ...]]:
    """Lease up to ``n`` ready rows in claim order, at most ``limits[task]`` live leases per
    limited task counting every holder's; the rows as ``queries.CLAIM`` returns them.
    ``keys``: each limited task's :func:`lock_key`. Runs its own transaction on ``conn``
    (an autocommit connection of the pool); the steps are the module docstring's.

    Why not in pipeline mode, which would save round trips: psycopg's pipeline costs more
    Python time than the round trips it saves here (a claim of one took 1.3 ms with it,
    0.6 ms without, on localhost).
    """
    tasks, caps = list(limits), list(limits.values())
    room: dict[str, int] = {}  # limited tasks locked by this claim: leases still allowed
    out: list[str] = []  # limited tasks left out: full, or locked by another claim
    chosen: list[str] = []
    with conn.transaction():
        conn.execute(q.settings, (str(IDLE_IN_CLAIM_MS),))
        while len(chosen) < n:
            wanted = n - len(chosen)
            params: list[Any] = [tasks, tasks, caps, out, chosen]
            if queues is not None:
                params.append(list(queues))
            params.append(wanted)
            rows = conn.execute(q.candidates[queues is not None], params).fetchall()
            _lock_and_count(conn, q, limits, keys, rows, room, out)
            dropped = False
            for job_id, task in rows:
                if task in limits:
                    if room.get(task, 0) <= 0:
                        dropped = True  # held back: locked until the commit, unwritten
                        if task not in out:
                            out.append(task)
                        continue
                    room[task] -= 1
                chosen.append(job_id)
            if len(rows) < wanted or not dropped:
                break
        if not chosen:
            return []
        return conn.execute(q.lease, (vis, chosen)).fetchall()


def _lock_and_count(conn: psycopg.Connection[Any], q: LimitQueries, limits: Mapping[str, int],
                    keys: Mapping[str, int], rows: Sequence[tuple[Any, ...]],
                    room: dict[str, int], out: list[str]) -> None:
    """Steps 2 and 3 (and 4) for the limited tasks among ``rows`` met for the first time:
    lock them, count their live leases into ``room``; a task whose lock another claim holds
    (only asked without waiting, in a later round) goes to ``out``."""
    fresh = sorted({t for _, t in rows if t in limits and t not in room and t not in out},
                   key=lambda t: keys[t])
    if not fresh:
        return
    new = sorted({keys[t] for t in fresh})
    if not room:  # no lock held yet: wait for them, in ascending order
        conn.execute(q.lock, (ADVISORY_CLASS, new))
        got = set(new)
    else:  # a larger key may be held already: never wait (step 4)
        got = {int(r[0]) for r in conn.execute(q.try_lock, (new, ADVISORY_CLASS)).fetchall()}
    mine = [t for t in fresh if keys[t] in got]
    live = dict(conn.execute(q.live, (mine,)).fetchall()) if mine else {}
    for t in fresh:
        if keys[t] in got:
            room[t] = limits[t] - int(live.get(t, 0))
        else:
            out.append(t)

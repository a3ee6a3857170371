"""Claims under concurrency limits (``@task(concurrency=N)``) on PostgreSQL.

A limit is a promise across every worker on every host: at most N live leases of the task
at once. Live leases are rows in state 2 whose deadline (the database's clock) has not
passed, whoever holds them, in whichever queue; so the claim counts them per limited task
and leases only within the room left. A row held back by its limit gets no delivery, no
token and no lease, and keeps its place in claim order; at most its ``state`` changes, from
0 (ready) to 3 (held: "parked", see below), which every reader takes for a ready row
(``peek_state`` reads it QUEUED, ``browse``, ``stats``, ``qsize``, ``task_counts``,
``cancel`` and ``clear`` see a waiting job). Only a worker given limits takes this path;
the one-statement ``queries.CLAIM`` stays everyone else's (``queries.CLAIM_HELD``, which
takes held rows as ready ones, while a probe once a second finds some).

Why park. A saturated task's backlog sits in the claim-order index (``jobs_ready``), and a
limited claim filtering it in SQL still walked all of it, at every claim: behind 100,000
held-back jobs, 18-27 ms a claim, and an idle fleet of 16 claiming threads burned 1.2
cores of the server. So a claim that meets ready rows of a task without room moves them
out of that index (state 3, into ``jobs_held``, which holds only such rows, by task), at
most :data:`PARK_BUDGET` a claim; and a claim of a task that has room r takes the first r
held rows of that task, in claim order, as candidates beside the ready ones (the index
leads with the task, so it reads r entries, not the backlog). The task's first r rows in
claim order, held or ready, are therefore always among the candidates: order is kept. Why
not an index by task on the ready rows instead: every push, retry, release and promotion
of every task would pay for its entry (a ``.map()`` push 37 % slower); ``jobs_held`` is
empty unless a limit holds rows back, so they pay nothing. Held rows of a task the claimer
has no limit for (another worker's limits parked them) are ready to it, as to a plain
claim: the first n of each (task, queue), found by a loose scan of ``jobs_held`` (one
probe of the empty index when nothing is held).

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

1. **Candidates**: the first ``n`` rows in claim order among the ready rows and the held
   rows it may take (above), locked ``FOR UPDATE SKIP LOCKED`` as the plain claim locks
   them, leaving out the tasks whose live leases already fill their limit (counted in the
   same statement, without a lock: a task that looks full is one whose lease ended in the
   last moment at best, which the next claim sees). In the first round, if the first ready
   row in claim order is a full task's, the same statement parks the full tasks' rows
   among the first :data:`PARK_BUDGET` ready rows in claim order (locked ``SKIP LOCKED``,
   only ``state`` written). So a backlog of a saturated task is
   filtered in the server, never leased nor sent here, and walked only until parked.
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
5. **Lease** the chosen rows (one ``UPDATE``, from state 0 or 3) and commit.

The transaction ends idle sessions after :data:`IDLE_IN_CLAIM_MS` (``set_config(…, true)``,
as the maintenance tick does): a client lost between its round trips would otherwise hold
its tasks' locks, and stall every limited claim of those tasks, for the session's 60 s idle
timeout.

What it costs. A worker with limits: five statements (``BEGIN``, the transaction's
settings, the candidates, the lease, ``COMMIT``) instead of one when no limited task is
among the first ``n`` rows, seven (the lock, the count) when one is; counting live leases
reads every leased row (no index by task), which the jobs in flight bound. Behind a
saturated task's backlog, the first claims park it, :data:`PARK_BUDGET` rows each (a few
ms each); later ones read only what vacuum has not yet removed of the parked rows' old
entries in ``jobs_ready``. Nobody else: push, ack, retry and extend are the statements
they were, and the plain claim pays one probe of the empty ``jobs_held`` a second. See the plugin's
README for the numbers.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

import psycopg
from psycopg import sql

from nuvom_plugins_postgres.queries import (
    _GQUEUES,
    _GROUPS,
    _HELD_FIRST,
    _RETURNING,
    _SECS,
    render,
)
from nuvom_plugins_postgres.schema import ADVISORY_CLASS

__all__ = ["IDLE_IN_CLAIM_MS", "PARK_BUDGET", "LimitQueries", "claim_limited", "lock_key"]

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
# - ``jit = off``: the candidates end in a sort of the few rows they return (ready and held
#   ones together), which ``enable_sort = off`` prices at 10^10, past ``jit_above_cost``:
#   the server compiled the statement at every claim (seconds under concurrency).
# - ``plan_cache_mode = force_generic_plan``: that plan does not depend on the parameters,
#   and planning it anew for each claim cost 0.45 ms, three times its execution.
# - ``idle_in_transaction_session_timeout``: see the module docstring.
# - ``synchronous_commit = off``, unless ``sync_lease_commits``: as every lease write
#   (``queries._ASYNC``).
SETTINGS = """
SELECT set_config('enable_sort', 'off', true), set_config('jit', 'off', true),
       set_config('plan_cache_mode', 'force_generic_plan', true),
       set_config('idle_in_transaction_session_timeout', %s, true) {async}
"""
_ASYNC_COMMIT = ", set_config('synchronous_commit', 'off', true)"

# Step 1 (and 4): the next rows in claim order among the ready ones (state 0) and the held
# ones (state 3) it may take, locked ``FOR UPDATE SKIP LOCKED``, in one statement (named
# parameters: the limited tasks and their limits, the tasks left out, the chosen ids, [the
# queues], n, the parking budget):
# - ``room``: per limited task, its limit less its live leases (counted here, unlocked: see
#   the module docstring; once per statement); ``full_``: the tasks with none left.
# - ``r``: the first n ready rows without the full tasks (``task <> ALL``: the claim-order
#   index is walked, filtering them, as before).
# - ``h``: held rows it may take, by the pairs of ``queries._GROUPS``: of a limited task with
#   room r, the first r of each of its queues (the steps after hand out the room exactly); of
#   a task without a limit here (parked by another worker's limits), the first n; of a full
#   task, none (``LIMIT 0``: its held rows are not even read).
# - ``parked``: of the first ``park`` ready rows in claim order (the ones this claim walks
#   first), those of full tasks go to state 3, nothing else written: out of the claim-order
#   index, so the next claims do not walk them. Only when the first ready row in claim
#   order is a full task's (one probe, a one-time filter): while claimable rows lead, the
#   claims take them and walk nothing, and walking the window at every claim of a busy
#   queue cost 0.4-0.5 ms a claim; ``park`` is 0 after the first round. Locked ``SKIP
#   LOCKED``, as every row lock here: a row another claim holds is left to it.
# Why ``(x.state = 3) IS TRUE`` where ``h`` and ``to_park`` lock rows by id: written plainly,
# the state matches a partial index's predicate, and the generic plan read that whole index
# (``jobs_ready``: every ready row) as a bitmap to intersect with the few ids; so written,
# the rows are looked up by primary key, and the lock still re-checks the state on the
# row's latest version. ``to_park`` and ``r`` never share a row (full tasks, the others),
# nor ``to_park`` and ``h`` (ready, held): the update never touches a row the answer holds.
# The answer: the first n of ``r`` and ``h`` together in claim order; rows of either locked
# but not among them stay locked until the commit, unwritten.
_LIVE_NAMED = _LIVE.replace("%b::text[]", "%(tasks)b::text[]")
CANDIDATES = f"""
WITH RECURSIVE {_GROUPS},
room AS MATERIALIZED (
    SELECT l.task, greatest(l.lim - coalesce(c.n, 0), 0) AS r
    FROM unnest(%(tasks)b::text[], %(caps)b::int[]) AS l(task, lim)
    LEFT JOIN ({_LIVE_NAMED}) AS c ON c.task = l.task),
full_ AS MATERIALIZED (SELECT ARRAY(SELECT room.task FROM room WHERE room.r = 0) AS t),
r AS MATERIALIZED (
    SELECT j.id, j.task, j.priority, j.created_at, j.seq FROM {{s}}.jobs j
    WHERE j.state = 0 AND j.task <> ALL((SELECT full_.t FROM full_)::text[])
      AND j.task <> ALL(%(out)b::text[]) AND j.id <> ALL(%(chosen)b::text[]) {{queues}}
    ORDER BY j.priority DESC, j.created_at, j.seq LIMIT %(n)s
    FOR UPDATE OF j SKIP LOCKED),
h AS MATERIALIZED (
    SELECT j.id, j.task, j.priority, j.created_at, j.seq FROM {{s}}.jobs j
    WHERE (j.state = 3) IS TRUE AND j.id <> ALL(%(chosen)b::text[]) AND j.id = ANY(ARRAY(
        SELECT p.id FROM g LEFT JOIN room ON room.task = g.task
        {_HELD_FIRST.replace("{take}", "least(coalesce(room.r, %(n)s), %(n)s)")}
        WHERE g.task <> ALL(%(out)b::text[]) {{gqueues}}))
    FOR UPDATE OF j SKIP LOCKED),
to_park AS MATERIALIZED (
    SELECT k.id FROM {{s}}.jobs k
    WHERE (k.state = 0) IS TRUE AND k.id = ANY(ARRAY(
        SELECT w.id FROM (
            SELECT f.id, f.task FROM {{s}}.jobs f
            WHERE f.state = 0 {{fqueues}} AND (
                SELECT hd.task FROM {{s}}.jobs hd WHERE hd.state = 0 {{hqueues}}
                ORDER BY hd.priority DESC, hd.created_at, hd.seq LIMIT 1)
              = ANY((SELECT full_.t FROM full_)::text[])
            ORDER BY f.priority DESC, f.created_at, f.seq LIMIT %(park)s) AS w
        WHERE w.task = ANY((SELECT full_.t FROM full_)::text[])))
    FOR UPDATE OF k SKIP LOCKED),
parked AS (
    UPDATE {{s}}.jobs j SET state = 3 FROM to_park WHERE j.id = to_park.id)
SELECT u.id, u.task FROM (SELECT * FROM r UNION ALL SELECT * FROM h) AS u
ORDER BY u.priority DESC, u.created_at, u.seq LIMIT %(n)s
"""
#: Most ready rows one claim's first round parks (see ``CANDIDATES``): locking and updating
#: 1,000 rows took ~15-20 ms on a busy 2-core machine (``EXPLAIN ANALYZE``), so a claim never
#: does unbounded work, and a backlog of 100,000 is parked by 100 claims.
PARK_BUDGET = 1000

# Step 2: blocking locks, taken in the order of the array (``unnest`` yields its elements
# in order, and the aggregate calls the function once per element as they come);
# parameters: ``ADVISORY_CLASS``, the keys. Step 4: try-locks, the keys acquired returned;
# parameters: the keys, ``ADVISORY_CLASS``.
LOCK = "SELECT count(pg_advisory_xact_lock(%s, k)) FROM unnest(%b::int[]) AS k"
TRY_LOCK = "SELECT k FROM unnest(%b::int[]) AS k WHERE pg_try_advisory_xact_lock(%s, k)"
# Step 3: live leases per task, in a statement begun after the locks were taken.
LIVE = _LIVE
# Step 5: lease the chosen rows (all locked by this transaction, all ready or held).
# Parameters: the lease's length, the ids.
LEASE = f"""
UPDATE {{s}}.jobs j
SET state = 2, deliveries = j.deliveries + 1,
    token = replace(gen_random_uuid()::text, '-', ''),
    lease_expires_at = clock_timestamp() + {_SECS}
FROM unnest(%b::text[]) AS c(id) WHERE j.id = c.id AND j.state IN (0, 3)
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
        self.candidates = {some: bind(
            CANDIDATES.replace("{queues}", "AND j.queue = ANY(%(queues)b::text[])" if some
                               else "")
            .replace("{fqueues}", "AND f.queue = ANY(%(queues)b::text[])" if some else "")
            .replace("{hqueues}", "AND hd.queue = ANY(%(queues)b::text[])" if some else "")
            .replace("{gqueues}", _GQUEUES if some else ""))
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
    rounds = 0
    with conn.transaction():
        conn.execute(q.settings, (str(IDLE_IN_CLAIM_MS),))
        while len(chosen) < n:
            wanted = n - len(chosen)
            params: dict[str, Any] = {"tasks": tasks, "caps": caps, "out": out,
                                      "chosen": chosen, "n": wanted,
                                      "park": 0 if rounds else PARK_BUDGET}
            if queues is not None:
                params["queues"] = list(queues)
            rounds += 1
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

"""The queue's statements, as text with a ``{s}`` schema placeholder, and :class:`Binder`,
which renders such text for one schema.

Here: push, claim, the lease bookkeeping, the reads and the maintenance tick. Statements of
one responsibility with a module of its own live there, bound by the same :class:`Binder`:
``settle_many``'s in :mod:`.settle`, the table-health checks in :mod:`.hygiene` (the claim
under concurrency limits, in :mod:`.limits`, has its own).

Why one statement per operation: each runs on an autocommit connection, so it is one round
trip and atomic by itself; statements that make work available end with one ``pg_notify``
(delivered at commit, empty payload so repeats collapse) through the ``_NOTIFYING`` wrapper.

Why the claim locks its rows in a ``MATERIALIZED`` CTE: without the fence the planner may
nest the ``LIMIT`` subquery into the update and lease more rows than asked (Oban's lesson);
``SKIP LOCKED`` lets concurrent claimers pass each other instead of queueing on row locks.
Lease deadlines and tokens come from the database (``clock_timestamp()``,
``gen_random_uuid()``), so no worker's clock decides who holds a job.
"""

from __future__ import annotations

from psycopg import sql

from nuvom_kernel.values import MAX_ETA

__all__ = ["REF_TOLERANCE", "Binder", "Queries", "render"]

_NOW = "extract(epoch FROM clock_timestamp())::float8"
_SECS = "(%s * interval '1 second')"

# Lease bookkeeping (claim, ack, extend, the settle transaction) commits without waiting for
# the WAL flush unless ``sync_lease_commits`` (see ``PostgresSettings``): the transaction's
# first statement calls ``set_config(…, is_local => true)`` from a qual, so the setting lasts
# exactly until its commit and costs no round trip (``SET LOCAL`` would need BEGIN, SET and
# COMMIT). The qual is a pseudo-constant (an init plan, evaluated before the first row), and
# a statement that writes no row has no commit record to flush anyway.
_ASYNC = "(SELECT set_config('synchronous_commit', 'off', true)) IS NOT NULL"

# A message's columns, in the order ``rows._message`` reads them: the claim's ``RETURNING``
# starts with them and ``MESSAGE`` (``peek``) selects them, so both build it alike.
_MESSAGE = "j.id, j.body, j.queue, j.priority, j.available_at, j.created_at, j.task, j.failures"
_RETURNING = (f"{_MESSAGE}, j.token, j.deliveries, "
              "extract(epoch FROM j.lease_expires_at)::float8, j.seq")

# Wraps a data-modifying statement that returns a ``state`` column: one notification when
# any row it touched is ready now (state 0), then its rows.
_NOTIFYING = """
WITH u AS ({stmt}),
     woke AS (SELECT count(pg_notify({chan}, '')) AS n
              FROM (SELECT 1 FROM u WHERE u.state = 0 LIMIT 1) AS ready)
SELECT u.* FROM u, woke
"""

#: How far (seconds) a producer's estimate of the server's clock may be from
#: ``clock_timestamp()`` and still be used as a push's moment (see ``PUSH``).
REF_TOLERANCE = 1.0

# A push's moment on the server's clock (``n.base``) and the server's now (``n.now``), from
# the producer's estimate of the former (the first parameter; NULL if it has none yet).
_CLOCK = f"""n AS (SELECT c.now, CASE WHEN abs(c.ref - c.now) <= {REF_TOLERANCE} THEN c.ref
                                ELSE c.now END AS base
           FROM (SELECT {_NOW} AS now, %s::float8 AS ref) AS c)"""
# Whether a message is delayed: a positive delay whose end is past the server's now.
_LATER = "(m.delay > 0 AND n.base + m.delay > n.now)"
# What every push inserts: the message's times, sent relative to the producer's clock
# reading at the push (``delay`` = available_at - reading, ``age`` = reading - created_at),
# stored against the push's moment on the server's clock (``n.base``): so due times and FIFO
# order are the server's, whatever the producer's clock says. ``n.base`` is the server's
# ``clock_timestamp()``, or the producer's estimate of it (its reading plus the offset it
# learned from the server's reply, ``base``) when within REF_TOLERANCE of it: all pushes of
# one process then share one offset and keep its messages in the order its clock made them
# (each statement's own clock would move each push by its own latency, and reorder messages
# made microseconds apart). A ready message is never due later than the server's now.
# (A due time is capped at the latest a push stores, ``MAX_ETA``, as the producer's was.)
_DUE = f"least(n.base + m.delay, {MAX_ETA!r})"
_INSERTED = f"""SELECT m.id, m.queue, CASE WHEN {_LATER} THEN 1 ELSE 0 END, m.priority,
       n.base - m.age,
       CASE WHEN {_LATER} THEN {_DUE} ELSE least(n.base + m.delay, n.now) END,
       CASE WHEN {_LATER} THEN to_timestamp({_DUE}) END, m.task, m.body"""

# ``%b`` (here and for every array below): the arrays travel in binary. Why: psycopg's text
# format quotes every element of a text array through a regular expression and hex-encodes
# every body; for a 10,000-job ``.map()`` that was half of the plugin's time, and quoting
# the JSON records of a settle was a fifth of a draining worker's settler thread.
PUSH = f"""
WITH {_CLOCK}
INSERT INTO {{s}}.jobs AS j (id, queue, state, priority, created_at, available_at, due_at,
                           task, body)
{_INSERTED}
FROM unnest(%b::text[], %b::text[], %b::int[], %b::float8[], %b::float8[], %b::text[],
            %b::bytea[]) WITH ORDINALITY
       AS m(id, queue, priority, age, delay, task, body, ord),
     n
ORDER BY m.ord
ON CONFLICT (id) DO NOTHING
RETURNING j.id, j.state, j.available_at, (SELECT n.base FROM n) AS base
"""

# What a push of many messages returns: one row, not one per message. Why: reading 10,000
# (id, state) rows back and matching them in Python was ~1 µs a job. A push that stored every
# message (the usual case: fresh ids) needs only the count; the stored ids come back only when
# some were not stored (the last parameter is the number of messages sent). Also whether any
# stored row is scheduled and when the soonest is due, for the maintenance tick. The
# notification is sent as in ``_NOTIFYING``.
_PUSH_SUMMARY = """
WITH u AS ({stmt}),
     woke AS (SELECT count(pg_notify({chan}, '')) AS n
              FROM (SELECT 1 FROM u WHERE u.state = 0 LIMIT 1) AS ready)
SELECT count(*), CASE WHEN count(*) < %s THEN array_agg(u.id) END,
       min(u.available_at) FILTER (WHERE u.state = 1), max(u.base)
FROM u, woke
"""

# The same insert without the speculative insertion of ``ON CONFLICT``: an id already in the
# table is skipped by a probe of the primary key instead. Why: ``ON CONFLICT`` inserts each
# row speculatively and confirms it (one more WAL record and buffer lock per row), ~3.5 µs a
# row of the ~14 µs the server spends per row here. Why only on the pool, in chunks: a
# concurrent push of the same new id (not yet committed when probed), or an id twice in one
# statement, makes this one fail with a unique violation instead of skipping it; the push
# then rolls back and runs again with ``PUSH``, which the caller's own transaction could not
# survive. The probe is a scalar subquery so it stays one lookup per row (a ``NOT EXISTS``
# could become a hash anti-join reading the whole table), and it runs after
# ``INDEX_PROBES``: a lookup by the primary key, never a scan.
PUSH_NEW = PUSH.replace("ORDER BY m.ord\nON CONFLICT (id) DO NOTHING",
                        "WHERE (SELECT 1 FROM {s}.jobs AS x WHERE x.id = m.id) IS NULL\n"
                        "ORDER BY m.ord")

# Sent first in a ``PUSH_NEW`` transaction. Why: once a drained queue's table was vacuumed
# (pg_class says it is empty), the planner made each row's probe a sequential scan, of every
# row the push had inserted so far: a push of 10,000 into it took 291 µs a job instead of
# 9.5, until autovacuum analyzed the table again. Scans stay possible where no index serves
# (the setting only prices them out), and ``LOCAL`` ends with the push's transaction.
INDEX_PROBES = "SET LOCAL enable_seqscan = off"

# The same two inserts for a batch whose messages share queue, priority, ``available_at`` and
# task (a ``.map()``: one task, one queue, one delay): those four travel once, as scalars,
# after the three arrays. Why: encoding four arrays of 10,000 equal values and unnesting them
# on the server was ~1 µs a job of the client's time and ~10 % of the server's.
_ARRAYS = """unnest(%b::text[], %b::text[], %b::int[], %b::float8[], %b::float8[], %b::text[],
            %b::bytea[]) WITH ORDINALITY
       AS m(id, queue, priority, age, delay, task, body, ord)"""
_UNIFORM = """(SELECT a.id, c.queue, c.priority, a.age, c.delay, c.task, a.body,
               a.ord
        FROM unnest(%b::text[], %b::float8[], %b::bytea[]) WITH ORDINALITY
               AS a(id, age, body, ord),
             (VALUES (%s::text, %s::int, %s::float8, %s::text))
               AS c(queue, priority, delay, task)) AS m"""
assert _ARRAYS in PUSH and _ARRAYS in PUSH_NEW
PUSH_UNIFORM = PUSH.replace(_ARRAYS, _UNIFORM)
PUSH_NEW_UNIFORM = PUSH_NEW.replace(_ARRAYS, _UNIFORM)

# One message: the same insert from scalar parameters. Why a second statement: adapting
# seven one-element arrays and planning ``unnest`` cost about a third of a single enqueue.
PUSH_ONE = f"""
WITH {_CLOCK}
INSERT INTO {{s}}.jobs AS j (id, queue, state, priority, created_at, available_at, due_at,
                           task, body)
{_INSERTED}
FROM (VALUES (%s::text, %s::text, %s::int, %s::float8, %s::float8, %s::text, %b::bytea))
       AS m(id, queue, priority, age, delay, task, body),
     n
ON CONFLICT (id) DO NOTHING
RETURNING j.id, j.state, (SELECT n.base FROM n) AS base
"""

# Held rows (state 3: ready, parked by a limited claim; see ``nuvom_plugins_postgres.limits``)
# are ready to every claim that has no limit for their task. ``_GROUPS``: the (task, queue)
# pairs of held rows, by a loose scan of ``jobs_held`` (one probe per pair, and exactly one
# probe of an empty index when nothing is held, the usual case). ``_HELD_FIRST``: the first
# ``{take}`` held rows of each pair in claim order (``{gqueues}``: of the claim's queues).
_GROUPS = """g(task, queue) AS (
    (SELECT task, queue FROM {s}.jobs WHERE state = 3 ORDER BY task, queue LIMIT 1)
    UNION ALL
    SELECT x.task, x.queue FROM g CROSS JOIN LATERAL (
        SELECT y.task, y.queue FROM {s}.jobs y
        WHERE y.state = 3 AND (y.task, y.queue) > (g.task, g.queue)
        ORDER BY y.task, y.queue LIMIT 1) AS x)"""
_HELD_FIRST = """CROSS JOIN LATERAL (
            SELECT z.id, z.priority, z.created_at, z.seq FROM {s}.jobs z
            WHERE z.state = 3 AND z.task = g.task AND z.queue = g.queue
            ORDER BY z.priority DESC, z.created_at, z.seq LIMIT {take}) AS p"""
_GQUEUES = "AND g.queue = ANY(%(queues)b::text[])"

# The plain claim (a worker without limits): the first n ready rows in claim order.
CLAIM = f"""
WITH c AS MATERIALIZED (
    SELECT id FROM {{s}}.jobs WHERE state = 0 {{queues}} AND {{lease}}
    ORDER BY priority DESC, created_at, seq LIMIT %s FOR UPDATE SKIP LOCKED)
UPDATE {{s}}.jobs j
SET state = 2, deliveries = j.deliveries + 1,
    token = replace(gen_random_uuid()::text, '-', ''),
    lease_expires_at = clock_timestamp() + {_SECS}
FROM c WHERE j.id = c.id
RETURNING {_RETURNING}
"""
# Whether any row is held: one probe of ``jobs_held``, empty unless limits parked rows.
ANY_HELD = "SELECT EXISTS (SELECT 1 FROM {s}.jobs WHERE state = 3)"
# The plain claim while rows are held (a worker without limits must not leave them parked:
# limits belong to the claimer, and lifted ones must release what they held): the first n
# rows in claim order among ready (state 0) and held (state 3) rows alike, each set locked
# ``FOR UPDATE SKIP LOCKED``; rows of either it locked but does not take stay unwritten. A
# held row it takes is leased straight from state 3. (``(j.state = 3) IS TRUE``: see
# ``limits.CANDIDATES``.) Not the plain claim itself: merging costs ~50 µs of the server's
# time per claim, which workers without limits would pay for rows that are almost never
# there.
CLAIM_HELD = f"""
WITH RECURSIVE {_GROUPS},
r AS MATERIALIZED (
    SELECT id, priority, created_at, seq FROM {{s}}.jobs WHERE state = 0 {{queues}} AND {{lease}}
    ORDER BY priority DESC, created_at, seq LIMIT %(n)s FOR UPDATE SKIP LOCKED),
h AS MATERIALIZED (
    SELECT j.id, j.priority, j.created_at, j.seq FROM {{s}}.jobs j
    WHERE (j.state = 3) IS TRUE AND j.id = ANY(ARRAY(
        SELECT p.id FROM g {_HELD_FIRST.replace("{take}", "%(n)s")}
        WHERE true {{gqueues}}
        ORDER BY p.priority DESC, p.created_at, p.seq LIMIT %(n)s))
    FOR UPDATE OF j SKIP LOCKED),
c AS MATERIALIZED (
    SELECT u.id FROM (SELECT * FROM r UNION ALL SELECT * FROM h) AS u
    ORDER BY u.priority DESC, u.created_at, u.seq LIMIT %(n)s)
UPDATE {{s}}.jobs j
SET state = 2, deliveries = j.deliveries + 1,
    token = replace(gen_random_uuid()::text, '-', ''),
    lease_expires_at = clock_timestamp() + {_SECS.replace("%s", "%(vis)s")}
FROM c WHERE j.id = c.id
RETURNING {_RETURNING}
"""

ACK = "DELETE FROM {s}.jobs WHERE id = %s AND token = %s AND {lease}"
# The batch calls return (id, token) of each row they changed, not the id alone: a batch may
# hold a stale lease and the current one of the same job (a worker whose first run lost the
# lease claimed the job again), and only the current one may read as acked or extended.
ACK_MANY = """
DELETE FROM {s}.jobs j USING unnest(%b::text[], %b::text[]) AS t(id, token)
WHERE j.id = t.id AND j.token = t.token AND {lease} RETURNING j.id, j.token
"""

# A copy of a leased row, as stored, into the quarantine (``copy_to_quarantine``), fenced
# by the lease's token like an ack. Committed durably (no ``{lease}``): it is rare, and the
# copy is what outlives the ack that follows.
COPY_TO_QUARANTINE = """
INSERT INTO {s}.quarantine (id, queue, priority, created_at, available_at, task, failures,
                            deliveries, body, reason)
SELECT id, queue, priority, created_at, available_at, task, failures, deliveries, body, %s
FROM {s}.jobs WHERE id = %s AND token = %s
"""
# One line's worth per quarantined copy, oldest first, one more than shown (for "and N more").
QUARANTINED = """
SELECT seq, id, queue, reason, extract(epoch FROM quarantined_at)::float8
FROM {s}.quarantine ORDER BY seq LIMIT %s
"""

# Retry and release: back to ready (no delay) or scheduled, the lease cleared.
# ``available_at`` moves to when the message is due again (a retry: now, or the end of its
# delay; a release only with a delay), as on the other backends: ``due_at`` is cleared when
# the row is promoted, and ``available_at`` is what ``stats`` (the oldest ready row's age)
# and the worker's wait time count from afterwards.
_PUT_BACK = f"""
UPDATE {{s}}.jobs SET
    state = CASE WHEN %(delay)s > 0 THEN 1 ELSE 0 END,
    due_at = CASE WHEN %(delay)s > 0 THEN clock_timestamp() + (%(delay)s * interval '1 second')
             END,
    available_at = CASE WHEN %(delay)s > 0 THEN {_NOW} + %(delay)s ELSE {{undelayed}} END,
    token = NULL, lease_expires_at = NULL, {{change}}
WHERE id = %(id)s AND token = %(token)s
RETURNING state, {_NOW} + %(delay)s AS due
"""
RETRY = _PUT_BACK.replace("{undelayed}", _NOW).replace(
    "{change}", "failures = failures + 1, body = COALESCE(%(body)s::bytea, body)")
RELEASE = _PUT_BACK.replace("{undelayed}", "available_at").replace(
    "{change}", "deliveries = deliveries - 1")

# extend: a live lease (or one expired but not claimed again) gets a new deadline;
# ``secs <= 0`` makes it claimable (and QUEUED) at once, its token kept until someone
# claims it.
EXTEND = f"""
UPDATE {{s}}.jobs SET state = 2, lease_expires_at = clock_timestamp() + {_SECS}
WHERE id = %s AND token = %s AND {{lease}} RETURNING state
"""
EXPIRE = """
UPDATE {s}.jobs SET state = 0, lease_expires_at = NULL
WHERE id = %s AND token = %s AND {lease} RETURNING state
"""
EXTEND_MANY = f"""
UPDATE {{s}}.jobs j SET state = 2, lease_expires_at = clock_timestamp() + {_SECS}
FROM unnest(%b::text[], %b::text[]) AS t(id, token)
WHERE j.id = t.id AND j.token = t.token AND {{lease}} RETURNING j.id, j.token
"""

# What a row is worth now. A lease counts as running only until its deadline: past it the
# job waits for a worker like any ready row (its holder may be dead or stopped), whether or
# not a tick has recovered it yet; likewise a scheduled row past its due time is ready.
# One clock per statement (``statement_timestamp()``) so each row lands in exactly one count.
_LIVE_LEASE = "(state = 2 AND lease_expires_at > statement_timestamp()) IS TRUE"
_DELAYED = "(state = 1 AND due_at > statement_timestamp()) IS TRUE"
_READY = f"NOT ({_LIVE_LEASE} OR {_DELAYED})"

# A row's state as a ``JobStatus`` value: 'RUNNING', 'RETRYING' or 'QUEUED'. One text for
# ``peek_state`` and ``browse``, so the two cannot disagree about a job.
_STATE = f"""CASE WHEN {_LIVE_LEASE} THEN 'RUNNING'
            WHEN {_DELAYED} AND failures > 0 THEN 'RETRYING'
            ELSE 'QUEUED' END"""
PEEK = f"SELECT {_STATE} FROM {{s}}.jobs WHERE id = %s"
# One page of ``browse``: rows in (created_at, id) order after the cursor, without the body
# (it can be large; a TOASTed one is then never read). Why the keyset compares the stored
# float8 itself, not a rounded or text form of it: the cursor is the ``repr`` of the float
# this statement returned, which psycopg sends back as the same float8, so ``(created_at,
# id) > cursor`` is exact and rows sharing a ``created_at`` page by id (``COLLATE "C"``:
# code points, as the kernel sorts). Parameters: the queues ({queues}), the cursor
# ({after}), the wanted states ({states}), the limit. No index serves it (see
# ``nuvom_plugins_postgres.browse``): one page is one scan of the table.
BROWSE = f"""
SELECT b.* FROM (
    SELECT id, task, queue, priority, {_STATE} AS status, created_at, available_at,
           failures, deliveries,
           CASE WHEN {_LIVE_LEASE} THEN extract(epoch FROM lease_expires_at)::float8 END
             AS lease_expires_at
    FROM {{s}}.jobs WHERE true {{queues}} {{after}}) AS b
WHERE true {{states}}
ORDER BY b.created_at, b.id LIMIT %s
"""
_AFTER = "AND (created_at, id) > (%s::float8, %s::text)"
# Only when some states are left out. Why not always: the planner guesses the ``CASE``
# matches ~1 % of rows, and with that guess would sort the whole table for a large page
# even where an index on (created_at, id) could walk it in order.
_STATES = "AND b.status = ANY(%b::text[])"
# The message as stored, in any state; a plain read (no lock), so nothing waits on it.
MESSAGE = f"SELECT {_MESSAGE} FROM {{s}}.jobs j WHERE j.id = %s"
QSIZE = f"SELECT count(*) FROM {{s}}.jobs WHERE NOT ({_LIVE_LEASE}) {{queues}}"
CLEAR = "DELETE FROM {s}.jobs WHERE true {queues}"
# A lease past its deadline by the database's clock. One text for the maintenance tick
# (which recovers such rows) and cancel (which may remove them), so the two cannot disagree
# about when a worker has lost its job: a row the tick would hand to the next claim is one
# no worker holds, and an operator may stop it.
_EXPIRED_LEASE = "state = 2 AND lease_expires_at <= clock_timestamp()"
# cancel: a waiting row (ready, held or scheduled; a ready or held row may still carry the
# token of a lease the tick recovered or ``extend(lease, 0)`` gave up) or one whose lease
# expired; never a live lease (its worker decides). Deleting the row fences the old lease:
# its ack, extend and settle find no row with its token. Why a plain row lock and not
# ``SKIP LOCKED``: a claim (or a tick) holding the row makes the delete wait for its
# commit and then re-check this ``WHERE`` on the row as it left it (READ COMMITTED), so a
# claim that re-leased it wins and cancel answers ``False``; skipping would refuse a row a
# tick was merely recovering. Conversely a claim meeting the row locked by this delete
# skips it, and finds it gone afterwards: exactly one of the two gets it.
CANCEL = f"""
DELETE FROM {{s}}.jobs
WHERE id = %s AND (state IN (0, 1, 3) OR ({_EXPIRED_LEASE}))
"""
# The oldest ready row's age runs from when it became due: its enqueue, or the end of its
# delay or retry delay (``available_at``, moved by every retry; ``due_at`` too for a
# scheduled row not yet promoted), as the worker's wait time does; the smallest due time,
# not the head of the claim order (which sorts by ``created_at``). ``greatest`` skips a
# NULL ``due_at``; the caller clamps a due time ahead of the server's clock to 0.
STATS = f"""
SELECT queue, count(*) FILTER (WHERE {_READY}), count(*) FILTER (WHERE {_DELAYED}),
       count(*) FILTER (WHERE {_LIVE_LEASE}),
       {_NOW} - min(greatest(created_at, available_at, extract(epoch FROM due_at)::float8))
                FILTER (WHERE {_READY})
FROM {{s}}.jobs GROUP BY queue
"""

# The maintenance tick, run by whichever process wins the advisory lock: promote due
# scheduled rows and recover expired leases (token kept: the old holder may still ack until
# someone claims the job again), a bounded batch each.
# The lock is held across round trips (the tick, maybe the purge, the commit): a client lost
# between them (a host cut off mid-tick) held it until the session's 60 s idle timeout, and
# no worker of the cluster could promote or recover a job meanwhile. The server ends that
# session after IDLE_IN_TICK_MS idle in the tick's transaction instead (set_config(...,
# true): for this transaction only; the pool replaces the connection it costs).
IDLE_IN_TICK_MS = 2000
TICK_LOCK = ("SELECT pg_try_advisory_xact_lock(%s, hashtext(%s)), "
             f"set_config('idle_in_transaction_session_timeout', '{IDLE_IN_TICK_MS}', true)")
TICK = f"""
WITH due AS MATERIALIZED (
        SELECT id FROM {{s}}.jobs WHERE state = 1 AND due_at <= clock_timestamp()
        ORDER BY due_at LIMIT 1000 FOR UPDATE SKIP LOCKED),
     expired AS MATERIALIZED (
        SELECT id FROM {{s}}.jobs WHERE {_EXPIRED_LEASE}
        LIMIT 1000 FOR UPDATE SKIP LOCKED),
     moved AS (
        UPDATE {{s}}.jobs j SET state = 0, due_at = NULL, lease_expires_at = NULL
        WHERE j.id IN (SELECT id FROM due UNION ALL SELECT id FROM expired)
        RETURNING 1),
     woke AS (SELECT count(pg_notify({{chan}}, '')) AS n
              FROM (SELECT 1 FROM moved LIMIT 1) AS any_moved)
SELECT (SELECT count(*) FROM moved), (SELECT n FROM woke)
"""
# Seconds until the next scheduled row is due or the next lease expires (NULL: none).
NEXT = """
SELECT extract(epoch FROM least(
           (SELECT min(due_at) FROM {s}.jobs WHERE state = 1),
           (SELECT min(lease_expires_at) FROM {s}.jobs WHERE state = 2))
       - clock_timestamp())::float8
"""
PURGE_RESULTS = """
DELETE FROM {s}.results WHERE job_id IN (
    SELECT job_id FROM {s}.results WHERE terminal AND updated_at < %s LIMIT 10000)
"""


def render(query: sql.Composable) -> bytes:
    """``query`` as the bytes psycopg sends. Why rendered once: psycopg re-renders a
    ``Composed`` (walking it, quoting every identifier) on each ``execute``, ~60 µs a call
    here; bytes go straight to its cache of converted queries."""
    return query.as_bytes(None)


class Binder:
    """Renders statement text for one schema: ``{s}`` (the schema), ``{chan}`` (its
    notification channel), ``{lease}`` (``_ASYNC``, unless ``sync_lease_commits``) and
    ``{queues}`` (a queue filter, or nothing) filled in. Why a class of its own: the
    statements of :mod:`.settle` and :mod:`.hygiene` are bound alike, by their modules."""

    def __init__(self, schema: str, sync_lease_commits: bool = False) -> None:
        self.s, self.chan = sql.Identifier(schema), sql.Literal(schema)
        self.lease = "true" if sync_lease_commits else _ASYNC

    def __call__(self, text: str, queues: str = "", notifying: bool = False) -> bytes:
        """``text`` rendered; ``notifying``: wrapped in ``_NOTIFYING`` first."""
        stmt = text.replace("{queues}", queues).replace("{lease}", self.lease)
        if notifying:
            stmt = _NOTIFYING.replace("{stmt}", stmt)
        return render(sql.SQL(stmt).format(s=self.s, chan=self.chan))


class Queries:
    """The statements above bound to one schema (and its notification channel)."""

    def __init__(self, schema: str, sync_lease_commits: bool = False) -> None:
        bind = Binder(schema, sync_lease_commits)
        s, chan = bind.s, bind.chan
        any_queue = "AND queue = ANY(%b::text[])"
        self.push, self.push_uniform, self.push_new, self.push_new_uniform = (
            render(sql.SQL(_PUSH_SUMMARY.replace("{stmt}", stmt)).format(s=s, chan=chan))
            for stmt in (PUSH, PUSH_UNIFORM, PUSH_NEW, PUSH_NEW_UNIFORM))
        self.push_one = bind(PUSH_ONE, notifying=True)
        self.claim_all, self.claim_some = bind(CLAIM), bind(CLAIM, any_queue)
        self.claim_held_all = bind(CLAIM_HELD.replace("{gqueues}", ""))
        self.claim_held_some = bind(CLAIM_HELD.replace("{gqueues}", _GQUEUES),
                                    "AND queue = ANY(%(queues)b::text[])")
        self.any_held = bind(ANY_HELD)
        self.ack, self.ack_many = bind(ACK), bind(ACK_MANY)
        self.copy_to_quarantine, self.quarantined = bind(COPY_TO_QUARANTINE), bind(QUARANTINED)
        self.quarantine_size = bind("SELECT count(*) FROM {s}.quarantine")
        self.retry = bind(RETRY, notifying=True)
        self.release = bind(RELEASE, notifying=True)
        self.extend, self.extend_many = bind(EXTEND), bind(EXTEND_MANY)
        self.expire = bind(EXPIRE, notifying=True)
        self.peek, self.message = bind(PEEK), bind(MESSAGE)
        #: ``browse`` by (some queues?, after a cursor?, some states?)
        self.browse = {
            (some, paged, only): bind(BROWSE.replace("{after}", _AFTER if paged else "")
                                      .replace("{states}", _STATES if only else ""),
                                      any_queue if some else "")
            for some in (False, True) for paged in (False, True) for only in (False, True)}
        self.qsize_all, self.qsize_some = bind(QSIZE), bind(QSIZE, any_queue)
        self.clear_all, self.clear_some = bind(CLEAR), bind(CLEAR, any_queue)
        self.cancel, self.stats = bind(CANCEL), bind(STATS)
        self.tick_lock, self.tick = bind(TICK_LOCK), bind(TICK)
        self.next, self.purge_results = bind(NEXT), bind(PURGE_RESULTS)
        self.notify = render(sql.SQL("SELECT pg_notify({chan}, %s)").format(chan=chan))

"""``RedisJobQueue``: one queue shared by workers on many hosts through one Redis server.

Every step is one Lua script (:mod:`.scripts`): push (idempotent per job id), claim
(promote due delayed jobs and expired leases, pop by priority then FIFO, stamp a token and a
deadline from the server's clock), and the token-checked ack, retry, release and extend.
A delayed job waits in its own sorted set, never in the lease set: an ETA is not a
visibility timeout.

Waiting: an idle ``pop_batch`` blocks in ``BZPOPMIN`` on a marker that every push (and every
claim that leaves work behind) sets, so pickup takes about a round trip and an idle worker
costs no CPU. The marker is only a hint: a waiter always claims after it wakes, and never
blocks past the next due time its last claim saw, nor past ``block_secs`` (what a lost
wake-up can cost). A reaper thread in each claiming process promotes due work every
``reap_interval_secs`` under a short server-side lock, so recovery never waits for claims.

Concurrency limits (``@task(concurrency=N)``): a worker given limits claims with
``CLAIM_LIMITED`` (:mod:`.limit_scripts`), which counts each limited task's live leases on
the server and holds back, in one atomic step, what has no room; a worker without limits
claims with ``CLAIM`` as before. See :mod:`.scripts`, "Concurrency limits".

This module is a job's path (push, claim, ack, retry, release, extend, settle), the wait
for work and the reaper; the read side (``peek``, counts, ``stats``, ``browse``) and an
operator's ``cancel`` and ``clear`` are :mod:`.inspection`.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, ClassVar

from nuvom_kernel.backends import (
    BackendContext,
    Capabilities,
    ResultBackend,
    check_pop_args,
    queue_names,
)
from nuvom_kernel.clock import relearned_offset
from nuvom_kernel.models import Lease, Message, Settlement
from nuvom_plugins_redis import admin_scripts, limit_scripts, record_scripts, scripts
from nuvom_plugins_redis.browse import BROWSE
from nuvom_plugins_redis.connection import Store, build_store
from nuvom_plugins_redis.errors import (
    DEFAULT_MAX_BULK,
    RedisUnavailableError,
    ValueTooLargeError,
    too_large,
)
from nuvom_plugins_redis.inspection import QueueInspection
from nuvom_plugins_redis.messages import _message, _unfit
from nuvom_plugins_redis.results import RedisResultBackend, record_values
from nuvom_plugins_redis.settings import RedisSettings

__all__ = ["RedisJobQueue"]

log = logging.getLogger("nuvom.redis")

#: Messages per push script: each chunk is atomic (all or none), a ``.map()`` of more is
#: several chunks (the docs say so); a bounded script never stalls the server for long.
PUSH_CHUNK = 1000
#: Settlements and leases per script call (ack_many, extend_many, settle_many).
BATCH = 500


class RedisJobQueue(QueueInspection):
    """The Redis queue backend (``queue_backend = "redis"``); see :class:`RedisSettings`."""

    name: ClassVar[str] = "redis"
    capabilities: ClassVar[Capabilities] = Capabilities(
        persistent=True, multiprocess_safe=True, priorities=True, delayed=True,
        blocking_dequeue=True, concurrency=True)
    namespaced: ClassVar[bool] = True

    def __init__(self, store: Store, *, visibility_timeout_secs: float = 30.0) -> None:
        super().__init__(visibility_timeout_secs=visibility_timeout_secs)
        self.store = store
        self.settings = store.settings
        self._scripts = {name: store.script(getattr(scripts, name)) for name in (
            "PUSH", "CLAIM", "ACK", "REQUEUE", "EXTEND", "QUARANTINE", "COPY_TO_QUARANTINE")}
        self._scripts.update({name: store.script(getattr(admin_scripts, name)) for name in (
            "CANCEL", "CLEAR", "REAP", "STATS", "PEEK")})
        self._scripts["SETTLE"] = store.script(record_scripts.SETTLE)
        self._scripts["BROWSE"] = store.script(BROWSE)
        self._scripts["CLAIM_LIMITED"] = store.script(limit_scripts.CLAIM_LIMITED)
        self._scripts["TASK_COUNTS"] = store.script(limit_scripts.TASK_COUNTS)
        self._limits: list[Any] = []  # (task, limit) pairs, flat: CLAIM_LIMITED's arguments
        self._due_at: float | None = None  # monotonic time the next waiting job is due
        self._reaper: threading.Thread | None = None
        self._stop = threading.Event()
        self._reaper_lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any], context: BackendContext) -> Any:
        store = build_store(settings, context)
        vis = RedisSettings.parse(settings).visibility_timeout_secs
        return cls(store, visibility_timeout_secs=float(vis or context.visibility_timeout_secs))

    streams_push = True  # each push chunk is built after the one before was sent
    observed_as_read = True  # no lock held while it reads: the server holds them

    def __repr__(self) -> str:
        return f"RedisJobQueue({self.store.masked_url!r}, prefix={self.store.prefix!r})"

    @property
    def location(self) -> str | None:
        return self.store.location

    def close(self) -> None:
        self._stop.set()
        reaper = self._reaper
        if reaper is not None and reaper is not threading.current_thread():
            reaper.join(self.settings.socket_timeout_secs + 1)
        self.store.close()

    def _run(self, name: str, args: Sequence[Any], what: str) -> Any:
        script, store = self._scripts[name], self.store
        return store.call(lambda: store.run(script, (store.prefix, *args)), what)

    # --- primitives -----------------------------------------------------------------------

    def push(self, messages: Sequence[Message]) -> list[bool]:
        """Store messages in chunks of :data:`PUSH_CHUNK`, each chunk atomic; an id already
        queued (or earlier in the batch) stores nothing.

        The chunks of a batch go out pipelined (:meth:`Store.run_many`): Redis stores one
        while this process reads (the kernel encodes as it is read) and packs the next, and
        the batch waits for one round trip. Each chunk runs only if the one before it did
        (see ``scripts.PUSH``), so after a failure what was stored is a prefix of the
        batch, as when chunks went one by one. A body longer than the server's
        ``proto-max-bulk-len`` is refused as its chunk is built (``ValueTooLargeError``),
        before that chunk is sent.
        """
        batch = uuid.uuid4().hex if len(messages) > PUSH_CHUNK else ""
        prefix, limit = self.store.prefix, self.store.max_bulk
        # A chunk's times go as offsets from this process's clock read as it is built
        # (scripts.PUSH), with the server's clock estimated from that reading: read once
        # for the whole push, the chunks of a push longer than REF_TOLERANCE (a slow
        # encoder, 100,000 jobs) ran too far from it, were stamped on the server's TIME
        # instead, and came out that much younger than they were: behind jobs pushed later.
        skew = self.store.clock_skew
        clock = time.time()  # the first chunk's: what _learn_skew compares the reply with
        ref = "" if skew is None else repr(clock + skew)

        def calls() -> Iterator[list[Any]]:  # each chunk read after the one before was sent
            for index, start in enumerate(range(0, len(messages), PUSH_CHUNK)):
                chunk = messages[start:start + PUSH_CHUNK]  # (reading it may encode it)
                at = clock if index == 0 else time.time()
                yield _push_call(prefix, chunk, batch, index, limit, at,
                                 "" if skew is None else repr(at + skew))

        store, script = self.store, self._scripts["PUSH"]
        what = f"storing {len(messages)} job(s)"
        replies = store.call(lambda: store.run_many(script, calls()), what)
        after = time.time()
        stored: list[bool] = []
        for reply in replies:
            if isinstance(reply, Exception):
                error = store.explain(reply, what)
                if error is reply:  # the script's own error, or a message that cannot go
                    if stored and hasattr(reply, "add_note"):  # Python 3.11+
                        reply.add_note(_partial(stored, len(messages)))
                    raise reply
                if not stored:
                    raise error from reply
                raise RedisUnavailableError(f"{error} {_partial(stored, len(messages))}"
                                            ) from reply
            if not stored:
                self._learn_skew(clock, after, ref, reply[-1])
            stored += [bool(f) for f in reply[:-1]]
        return stored

    def _learn_skew(self, clock: float, after: float, ref: str, base: bytes) -> None:
        """The offset of the server's clock kept, or learned from ``PUSH``'s moment
        (``base``): see :func:`nuvom_kernel.clock.relearned_offset`."""
        offset = relearned_offset(float(base), float(ref) if ref else None, clock, after,
                                  scripts.REF_TOLERANCE)
        if offset is not None:
            self.store.clock_skew = offset

    def claim(self, n: int, queues: Sequence[str] | None = None) -> list[Lease]:
        """Lease up to ``n`` messages in claim order; under limits, never more live leases
        of a limited task than its limit, on the whole server. A limited claim that stopped
        on its budget of messages to hold back (``limit_scripts.HOLD_BUDGET``) is called
        again at once, so a large saturated backlog ahead never hides the work behind it:
        each call is a few ms of the server's time, and other clients run in between."""
        if n <= 0 or (queues is not None and not queues):
            return []
        self._start_reaper()
        names = [] if queues is None else list(queues)
        count = -1 if queues is None else len(names)
        vis = repr(float(self.visibility_timeout_secs))
        if not self._limits:
            return self._leases(self._run("CLAIM", [n, vis, count, *names], "claiming jobs"),
                                4)
        limits = self._limits
        leases: list[Lease] = []
        while True:
            reply = self._run("CLAIM_LIMITED", [n - len(leases), vis,
                                                limit_scripts.HOLD_BUDGET, len(limits) // 2,
                                                *limits, count, *names], "claiming jobs")
            leases += self._leases(reply, 5)
            if reply[4] != b"1" or len(leases) >= n:
                return leases

    def _leases(self, reply: Sequence[Any], start: int) -> list[Lease]:
        """The leases of a ``CLAIM`` or ``CLAIM_LIMITED`` reply (its 11 values per lease
        from ``start``), after what its head says: the next due time, entries dropped and
        messages quarantined."""
        now, due, dropped, quarantined = float(reply[0]), reply[1], int(reply[2]), int(reply[3])
        if due != b"-":  # a full claim does not look it up: the next step is a claim again
            self._due_at = None if not due else time.monotonic() + max(float(due) - now, 0.0)
        if dropped:
            log.warning("dropped %d ready entr%s of %s whose job hash is gone (deleted by "
                        "hand or evicted: check maxmemory-policy); nothing was left to run",
                        dropped, "y" if dropped == 1 else "ies", self.store.masked_url)
        if quarantined:
            self._warn_quarantined(quarantined)
        leases = []
        damaged: list[Any] = []
        for i in range(start, len(reply), 11):
            job_id, token, deliveries, expires = reply[i:i + 4]
            try:
                message = _message(job_id.decode(), reply[i + 4:i + 11])
                lease = Lease(message=message, token=token.decode(),
                              deliveries=int(deliveries), expires_at=float(expires))
            except (TypeError, ValueError):  # a field the script took but cannot be parsed
                damaged += [job_id, token, reply[i + 5], _unfit(reply[i + 4:i + 11])]
                continue
            leases.append(lease)
        if damaged:
            self._quarantine(damaged)
        return leases

    def ack(self, lease: Lease) -> bool:
        return self.ack_many([lease])[0]

    def ack_many(self, leases: Sequence[Lease]) -> list[bool]:
        """One script per :data:`BATCH` leases: the drain rate's hot path."""
        out: list[bool] = []
        for start in range(0, len(leases), BATCH):
            pairs = [v for le in leases[start:start + BATCH] for v in (le.id, le.token)]
            out += [bool(f) for f in self._run("ACK", pairs, "acking jobs")]
        return out

    def retry(self, lease: Lease, *, delay_secs: float, body: bytes | None = None) -> bool:
        """Requeue with a delay, with ``body`` if given (refused before it is sent if it is
        longer than the server takes: see :func:`_checked`)."""
        if body is not None:
            body = _checked(lease.id, lease.message.task, bytes(body), self.store.max_bulk)
        args = [lease.id, lease.token, repr(max(float(delay_secs), 0.0)),
                "0" if body is None else "1", b"" if body is None else bytes(body), "retry"]
        return bool(self._run("REQUEUE", args, "retrying a job"))

    def release(self, lease: Lease, *, delay_secs: float = 0.0) -> bool:
        args = [lease.id, lease.token, repr(max(float(delay_secs), 0.0)), "0", b"",
                "release"]
        return bool(self._run("REQUEUE", args, "releasing a job"))

    def copy_to_quarantine(self, lease: Lease, reason: str) -> bool:
        return bool(self._run("COPY_TO_QUARANTINE", [lease.id, lease.token, reason],
                              "copying a job to quarantine"))

    def extend(self, lease: Lease, secs: float) -> bool:
        return self.extend_many([lease], secs)[0]

    def extend_many(self, leases: Sequence[Lease], secs: float) -> list[bool]:
        """Every lease of a worker in one script (the lease monitor's round)."""
        out: list[bool] = []
        for start in range(0, len(leases), BATCH):
            pairs = [v for le in leases[start:start + BATCH] for v in (le.id, le.token)]
            out += [bool(f) for f in self._run("EXTEND", [repr(float(secs)), *pairs],
                                               "extending leases")]
        return out

    # --- optional primitives --------------------------------------------------------------

    def set_concurrency_limits(self, limits: Mapping[str, int]) -> None:
        """Claim under these limits from now on (``{}``: none, and the plain ``CLAIM``).
        Nothing is written to the server: each claim sends its limits, so workers started
        with other limits never change what this one enforces."""
        self._limits = [v for task, limit in sorted(limits.items())
                        for v in (str(task), int(limit))]

    def settle_many(self, settlements: Sequence[Settlement], results: ResultBackend
                    ) -> list[bool] | None:
        """Store each record and ack or retry its lease in one script, when ``results`` is
        a Redis result backend on this server and prefix; ``None`` for any other.

        Every record and retry body is encoded and checked against the server's
        ``proto-max-bulk-len`` before the first call is sent. Why: such a value made the
        server drop the connection, which read as a server that is down, so the settler
        retried the whole batch and every job in it ran again. Refused here (a
        ``SerializationError``: one the settler knows as unstorable), nothing is sent, and
        the settler stores the batch one by one, failing only the job that is too large. A
        chunk stored before a refusal in a later one would be settled twice."""
        if not isinstance(results, RedisResultBackend) or \
                results.store.identity != self.store.identity:
            return None
        out: list[bool] = []
        ttl, limit = repr(float(results.settings.result_ttl_secs)), self.store.max_bulk
        calls: list[list[Any]] = []  # every chunk built (and each value checked) first
        for start in range(0, len(settlements), BATCH):
            chunk = settlements[start:start + BATCH]
            args: list[Any] = [results.store.prefix, ttl, len(chunk)]
            for s in chunk:
                retry = "" if s.retry_in is None else repr(max(float(s.retry_in), 0.0))
                body = b"" if s.body is None else _checked(s.lease.id, s.record.task,
                                                           bytes(s.body), limit)
                args += [s.lease.id, s.lease.token, retry, "0" if s.body is None else "1",
                         body, *record_values(s.record, limit)]
            calls.append(args)
        for args in calls:
            out += [bool(f) for f in self._run("SETTLE", args, "settling jobs")]
        return out

    def pop_batch(self, n: int, timeout: float = 0.0, queues: Sequence[str] | None = None
                  ) -> list[Lease]:
        """Claim up to ``n``; when none is ready, block on the wake-up marker (never past
        the next due time, ``block_secs`` or the deadline) and claim again."""
        if type(n) is not int or type(timeout) not in (float, int) or timeout != timeout:
            check_pop_args(n, timeout)
        if n <= 0:
            return []
        queues = queue_names(queues)
        deadline = time.monotonic() + max(timeout, 0.0)
        while True:
            leases = self.claim(n, queues)
            if leases:
                return leases
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return []
            self._block(remaining)

    def wait_for_messages(self, timeout: float, generation: int) -> None:
        if self._generation == generation:
            self._block(timeout)

    # --- helpers --------------------------------------------------------------------------

    def _block(self, timeout: float) -> None:
        """``BZPOPMIN`` the marker for up to ``timeout`` (bounded as described above)."""
        wait = min(timeout, self.settings.block_secs)
        if self._due_at is not None:
            wait = min(wait, self._due_at - time.monotonic())
        if wait < 0.001:
            return
        key = self.store.prefix + "wake"
        self.store.call(lambda: self.store.blocking.bzpopmin(key, wait), "waiting for jobs")

    def _quarantine(self, damaged: list[Any]) -> None:
        """Move just-claimed messages whose fields do not parse (``damaged``: id, token,
        queue, why per message) to quarantine, fenced by their tokens: one bad hash must
        never fail the claim of the jobs beside it, nor come back at every lease. If this
        call fails, the jobs beside them are still delivered: the damaged leases expire and
        the claim that meets them again quarantines them."""
        try:
            moved = int(self._run("QUARANTINE", damaged, "quarantining damaged jobs"))
        except Exception as exc:  # the jobs beside them matter more: see above
            log.warning("could not quarantine %d damaged job(s) of %s (%s); the next claim "
                        "that meets them tries again", len(damaged) // 4,
                        self.store.masked_url, exc)
            return
        if moved:
            self._warn_quarantined(moved)

    def _warn_quarantined(self, n: int) -> None:
        log.warning("quarantined %d damaged job hash%s of %s (a field missing or not what it "
                    "must be: edited by hand or by another tool); kept aside, not run: see "
                    "nuvom status", n, "" if n == 1 else "es", self.store.masked_url)

    def _start_reaper(self) -> None:
        """Start this process's reaper thread on the first claim (producers never claim,
        so they never run one); a forked child starts its own."""
        reaper = self._reaper
        if (reaper is not None and reaper.is_alive()) or self._stop.is_set():
            return
        with self._reaper_lock:
            if self._reaper is not None and self._reaper.is_alive():
                return
            self._reaper = threading.Thread(target=self._reap_loop, daemon=True,
                                            name="nuvom-redis-reaper")
            self._reaper.start()

    def _reap_loop(self) -> None:
        interval = self.settings.reap_interval_secs
        owner = uuid.uuid4().hex
        lock_ms = max(int(interval * 900), 1)
        failing = False
        while not self._stop.wait(interval):
            try:
                self.store.check_epoch()
                moved = self._run("REAP", [lock_ms, owner], "recovering expired leases")
                if failing:
                    log.warning("Redis at %s is reachable again", self.store.masked_url)
                failing = False
                if moved and int(moved) > 0:
                    log.debug("reaper moved %s due job(s) back to ready", moved)
            except Exception as exc:  # never die: the next tick tries again
                if not failing:
                    log.warning("the Redis reaper failed (%s); retrying every %.1f s",
                                exc, interval)
                failing = True



def _partial(stored: list[bool], total: int) -> str:
    return (f"{sum(stored)} job(s) of this batch were enqueued before the failure (chunks "
            f"of {PUSH_CHUNK} are stored all or none, in order); the remaining "
            f"{total - len(stored)} were not.")


def _checked(job_id: str, task: str, body: bytes, limit: int) -> bytes:
    """``body``, unless it is longer than ``limit`` (the server's ``proto-max-bulk-len``).

    :raises ValueTooLargeError: naming the job, the size, the limit and what to do. Why
        before sending: Redis answers a longer value by closing the connection, which
        redis-py retried (resending it) and the plugin reported as a server it cannot
        reach."""
    if len(body) > limit:
        raise _message_too_large(job_id, task, len(body), limit)
    return body


def _message_too_large(job_id: str, task: str, size: int, limit: int) -> ValueTooLargeError:
    return too_large(f"the message of job {job_id} ({task}: its arguments and options)",
                     size, limit)


def _push_call(prefix: str, chunk: Sequence[Message], batch: str, index: int,
               limit: int = DEFAULT_MAX_BULK, clock: float | None = None, ref: str = ""
               ) -> list[Any]:
    """The arguments of one ``PUSH`` script call (layout: ``scripts.PUSH``): the messages
    in runs that share queue, priority, available_at and task, each run's routing sent once
    (a ``.map()`` chunk is one run), so each message costs 3 arguments, not 8. ``limit``:
    the server's ``proto-max-bulk-len``, which each body is checked against
    (:func:`_checked`). ``clock``: this process's ``time.time()`` at the push (read now if
    not given), which the messages' times are sent relative to (available_at as a delay,
    created_at as an age); ``ref``: the server's clock estimated at that reading, or
    ``""``."""
    if clock is None:
        clock = time.time()
    args: list[Any] = [prefix, len(chunk), batch, index, ref]
    route: tuple[Any, ...] | None = None
    head = 0
    for m in chunk:
        body = m.checked_body()
        if len(body) > limit:
            raise _message_too_large(m.id, m.task, len(body), limit)
        age = clock - float(m.created_at)
        if (m.queue, m.priority, m.available_at, m.task) != route:
            route = (m.queue, m.priority, m.available_at, m.task)
            head = len(args)
            args += [0, str(m.queue), int(m.priority),
                     repr(float(m.available_at) - clock), str(m.task)]
        args[head] += 1
        args += [m.id, repr(age), body]
    return args

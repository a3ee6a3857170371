"""``RedisResultBackend``: one hash per job record, with a time to live once it is final.

Why a hash with the fence fields beside the JSON: the write is fenced
(:func:`~nuvom_kernel.models.supersedes`) inside a Lua script, which compares ``run``,
``attempts`` and ``status`` without decoding anything. Why three sorted-set indexes (every
record, per status, per task, each by ``updated_at``): ``nuvom history`` pages newest first
with a keyset cursor, a range read per page, never ``KEYS`` or ``SCAN``.

Why expired records' index entries are trimmed on the heartbeat: Redis deletes a record
when its TTL runs out, but not its index entries, which grew without bound and were counted
as records. Each final record's expiry is scheduled in ``rx`` (:mod:`.record_scripts`), and
:meth:`RedisResultBackend.trim_expired` removes the entries of records that are gone, in
bounded script calls. It runs on every worker heartbeat (the result backend's one periodic
call, made by every worker whatever its queue backend, on its own thread: never on the job
path) and before :meth:`~RedisResultBackend.counts`, so ``nuvom status`` counts live
records. No lock: each call takes the entries it handles out of ``rx`` atomically, so
workers beating together share the work instead of repeating it. Entries of records that
expired before this version (no ``rx`` entry) are still dropped when a query meets them;
``purge`` drops those in the ranges it walks.
"""

from __future__ import annotations

import functools
import json
import logging
import re
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, cast

from nuvom_kernel.backends import (
    BackendContext,
    Capabilities,
    ResultBackend,
    WorkerInfo,
    parse_cursor,
    read_schedule_state,
)
from nuvom_kernel.errors import SerializationError
from nuvom_kernel.models import TERMINAL_STATES, JobRecord, JobStatus, ScheduleState
from nuvom_plugins_redis import record_scripts as scripts
from nuvom_plugins_redis.connection import Store, build_store
from nuvom_plugins_redis.errors import DEFAULT_MAX_BULK, too_large

__all__ = ["RedisResultBackend", "record_values"]

log = logging.getLogger("nuvom.redis")

_PUT_CHUNK = 500
_PURGE_CHUNK = 500
#: Expiry-schedule entries per ``TRIM`` call (a bounded script: ~1 ms of the server), and
#: calls per heartbeat: at the default 5 s heartbeat, up to 4,000 records a second per
#: worker, well above what one worker settles, so the schedule never falls behind.
_TRIM_CHUNK = 500
_TRIM_CALLS_PER_BEAT = 40
#: Calls before ``counts()``: a backlog left while no worker ran (1,000,000 entries) is
#: caught up; past that ``counts()`` answers anyway, still counting the rest.
_TRIM_CALLS_BEFORE_COUNTS = 2000
_TERMINAL = sorted(s.value for s in TERMINAL_STATES)
#: Built once: ``json.dumps`` with any non-default option builds a new encoder per call.
_encode = json.JSONEncoder(separators=(",", ":"), allow_nan=False).encode


def _json_bytes(data: dict[str, Any]) -> bytes | str:
    """``data`` as compact JSON with the standard library (the fallback of
    :func:`record_json`)."""
    return _encode(data)


try:
    import orjson
except ImportError:  # pragma: no cover - orjson is a dependency; the stdlib encodes then
    record_json = _json_bytes
else:
    #: datetimes, dataclasses and subclasses of str, int, dict and list are not JSON-native:
    #: orjson would encode them its own way, the standard library refuses them, and so
    #: must we (``default`` is not given, so they raise ``TypeError``).
    _OPTIONS = (orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS
                | orjson.OPT_PASSTHROUGH_SUBCLASS)
    _dumps = orjson.dumps

    def record_json(data: dict[str, Any]) -> bytes | str:
        """``data`` as compact JSON: orjson, ~1 µs for a job record where the standard
        library takes ~11 (the settler encodes one per job, holding the GIL: it was 15 %
        of a draining worker's GIL time). Its output is what ``json`` writes, read back
        by the same ``json.loads``. Where orjson refuses a value it can (an integer past
        64 bits), the standard library encodes it; where json refuses, this raises too —
        except UUIDs and enum members (orjson writes their string and value), which the
        kernel never puts in a record: results and arguments are wire-safe data.

        NaN and infinities, which orjson writes as ``null`` where ``json`` (and so the
        SQLite and file backends) refuses them, are caught by counting: each ``null`` out
        must be a ``None`` among the record's own fields (a C count of each, ~0.5 µs).
        More means a NaN or a ``None`` nested in a value, and the standard library
        decides: it raises for the one and writes the same JSON for the other."""
        try:
            out = _dumps(data, option=_OPTIONS)
        except TypeError:
            return _encode(data)
        if out.count(b"null") != list(data.values()).count(None):
            return _encode(data)
        return out


def record_values(record: JobRecord, limit: int = DEFAULT_MAX_BULK) -> list[Any]:
    """The seven script arguments of one record: id, run, attempts, status, task,
    updated_at and the JSON of every field.

    :param limit: the server's ``proto-max-bulk-len`` (``Store.max_bulk``).
    :raises SerializationError: the record is not JSON-native, or its JSON is longer than
        ``limit`` (a :class:`~nuvom_plugins_redis.errors.ValueTooLargeError`, raised
        here, before any call is sent: the server would drop the connection, and the
        settler would take that for a server that is down and run the batch again)."""
    status = JobStatus(record.status).value
    try:
        data = record_json(record.to_dict())
    except (TypeError, ValueError, RecursionError) as exc:
        raise SerializationError(
            f"job {record.job_id}: the record is not JSON-native ({exc}); result backends "
            "store wire-safe values (see nuvom_kernel.serialization).") from exc
    if len(data) > limit:  # a str is the stdlib's ASCII JSON: characters are bytes
        raise too_large(
            f"the record of job {record.job_id} ({record.task}, {status}: its result, "
            "error text, arguments and history together)", len(data), limit)
    return [record.job_id, int(record.run), int(record.attempts), status,
            record.task or "", repr(float(record.updated_at)), data]


#: The record's top-level ``queue`` (see :meth:`RedisResultBackend.counts_since`).
_QUEUE = re.compile(rb'"queue":"((?:[^"\\]|\\.)*)"')


def _queue_of(raw: bytes) -> str:
    """The queue named in a record's JSON, escapes decoded; ``default`` without one."""
    match = _QUEUE.search(raw)
    if match is None:
        return "default"
    name = match.group(1)
    try:
        return str(json.loads(b'"' + name + b'"')) if b"\\" in name else name.decode()
    except ValueError:  # torn: counted under the text as stored
        return name.decode(errors="replace")


def _decode(job_id: str, raw: bytes) -> JobRecord:
    try:
        return JobRecord.from_dict(json.loads(raw))
    except (TypeError, ValueError, KeyError) as exc:
        raise SerializationError(f"job {job_id}: stored record is invalid ({exc})") from exc


# Schedule state: hash ``sched`` (name -> JSON) and ``sched:v`` (name -> repr(updated_at)),
# compared as strings (Lua numbers would round the float). ARGV: prefix, name, expected
# version ('' for none stored), new version, JSON, and, replacing an unreadable entry, the
# damaged JSON read ('' for none): then that is compared, not the version (which may be the
# damaged part, or missing).
_ADVANCE = """
local v = redis.call('HGET', ARGV[1] .. 'sched:v', ARGV[2])
if ARGV[6] then
  if (redis.call('HGET', ARGV[1] .. 'sched', ARGV[2]) or '') ~= ARGV[6] then return 0 end
elseif (ARGV[3] == '' and v) or (ARGV[3] ~= '' and v ~= ARGV[3]) then return 0 end
redis.call('HSET', ARGV[1] .. 'sched:v', ARGV[2], ARGV[4])
redis.call('HSET', ARGV[1] .. 'sched', ARGV[2], ARGV[5])
return 1
"""


def _version(raw: bytes | None) -> float | str | None:
    """A ``sched:v`` value as the version :func:`read_schedule_state` checks: the float
    it is the ``repr`` of, else the text itself (refused there, naming it). Why so strict:
    the script compares it as a string, so a version that is not exactly the ``repr`` of
    its float would never match again and the schedule would never fire."""
    if raw is None:
        return None
    text = raw.decode(errors="replace")
    try:
        number = float(text)
    except ValueError:
        return text
    return number if repr(number) == text else text


class RedisResultBackend(ResultBackend):
    """The Redis result backend (``result_backend = "redis"``); see ``RedisSettings``."""

    name: ClassVar[str] = "redis"
    capabilities: ClassVar[Capabilities] = Capabilities(persistent=True,
                                                        multiprocess_safe=True,
                                                        heartbeats=True,
                                                        schedules=True)
    namespaced: ClassVar[bool] = True

    def __init__(self, store: Store) -> None:
        super().__init__()
        self.store = store
        self.settings = store.settings
        self._put = store.script(scripts.PUT)
        self._purge = store.script(scripts.PURGE)
        self._prune = store.script(scripts.PRUNE)
        self._trim = store.script(scripts.TRIM)
        self._trim_failing = False
        self._advance = store.script(_ADVANCE)

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any], context: BackendContext) -> Any:
        """Read the shared ``[plugins.redis]`` table (its queue-only keys are ignored)."""
        return cls(build_store(settings, context))

    def __repr__(self) -> str:
        return f"RedisResultBackend({self.store.masked_url!r}, prefix={self.store.prefix!r})"

    @property
    def location(self) -> str | None:
        return self.store.location

    def close(self) -> None:
        self.store.close()

    def put(self, record: JobRecord) -> bool:
        return self.put_many([record])[0]

    def put_many(self, records: Sequence[JobRecord]) -> list[bool]:
        """Every record fenced in one script per chunk (all of a chunk or none).

        Every record is encoded and checked before the first chunk is sent, so a record
        that cannot be stored (``SerializationError``) leaves the whole call unstored:
        the settler then stores the batch one by one, and a chunk stored before the refusal
        would have been written twice."""
        out: list[bool] = []
        ttl, limit = repr(float(self.settings.result_ttl_secs)), self.store.max_bulk
        calls: list[list[Any]] = []  # every chunk built (and each record checked) first
        for start in range(0, len(records), _PUT_CHUNK):
            args: list[Any] = [self.store.prefix, ttl]
            for record in records[start:start + _PUT_CHUNK]:
                args += record_values(record, limit)
            calls.append(args)
        for args in calls:
            flags = self.store.call(functools.partial(self.store.run, self._put, args),
                                    "storing job records")
            out += [bool(f) for f in flags]
        return out

    def schedule_states(self) -> dict[str, ScheduleState]:
        """Both hashes in one transaction (a consistent pair), by name. An entry whose
        JSON or version does not decode — or a version with no JSON, which no insert could
        ever replace — is logged and read as a placeholder
        (:func:`~nuvom_kernel.backends.read_schedule_state`): one damaged value used to
        stop every schedule of every worker."""
        key = self.store.prefix + "sched"

        def read() -> list[Any]:
            pipe = self.store.client.pipeline(transaction=True)
            pipe.hgetall(key)
            pipe.hgetall(key + ":v")
            return pipe.execute()

        raw, versions = self.store.call(read, "reading schedule state")
        where = f"{self.location}, hash {key}"
        states: dict[str, ScheduleState] = {}
        for name_bytes in {*raw, *versions}:
            name = name_bytes.decode(errors="replace")
            states[name] = read_schedule_state(
                name, raw.get(name_bytes, b""), where,
                version=_version(versions.get(name_bytes)))
        return states

    def advance_schedule(self, previous: ScheduleState | None, state: ScheduleState) -> bool:
        args: list[Any] = [self.store.prefix, state.name,
                           "" if previous is None else repr(previous.updated_at),
                           repr(state.updated_at), json.dumps(state.to_dict())]
        if previous is not None and previous.unreadable is not None:
            args.append(previous.unreadable.stored)
        return bool(self.store.call(lambda: self.store.run(self._advance, args),
                                    "storing schedule state"))

    def get(self, job_id: str) -> JobRecord | None:
        key = self.store.prefix + "r:" + job_id
        raw = cast("bytes | None", self.store.call(lambda: self.store.client.hget(key, "d"),
                                                   "reading a job record"))
        return None if raw is None else _decode(job_id, raw)

    def known(self, job_ids: Sequence[str]) -> set[str]:
        """One pipeline of ``HEXISTS`` per 500 ids, not a round trip per id."""
        ids, found = list(dict.fromkeys(job_ids)), set[str]()
        p, client = self.store.prefix, self.store.client
        for start in range(0, len(ids), _PUT_CHUNK):
            chunk = ids[start:start + _PUT_CHUNK]
            pipe = client.pipeline(transaction=False)
            for job_id in chunk:
                pipe.hexists(p + "r:" + job_id, "d")
            values: list[Any] = self.store.call(pipe.execute, "reading job records")
            found.update(job_id for job_id, there in zip(chunk, values, strict=True) if there)
        return found

    def query(self, *, status: JobStatus | None = None, task: str | None = None,
              limit: int = 50, after: str | None = None) -> list[JobRecord]:
        """Newest first (``updated_at``, then ``job_id``, both descending), the page after
        ``after``: one index range per round, filtered by the other field when both are
        given. Index entries whose record expired are dropped as they are met."""
        p = self.store.prefix
        wanted = None if status is None else JobStatus(status).value
        if wanted is not None:
            index = p + "ri:s:" + wanted
        elif task is not None:
            index = p + "ri:t:" + task
        else:
            index = p + "ri"
        top, after_id = ("+inf", None) if after is None else \
            (repr(parse_cursor(after)[0]), parse_cursor(after)[1])
        limit = max(limit, 0)
        found: list[JobRecord] = []
        offset, step = 0, max(limit * 2, 20)
        client = self.store.client
        while len(found) < limit:
            rows = cast("list[tuple[bytes, float]]", self.store.call(functools.partial(
                client.zrange, index, top, "-inf", desc=True, byscore=True, offset=offset,
                num=step, withscores=True), "listing job records"))
            offset += len(rows)
            ids = [m.decode() for m, score in rows
                   if after_id is None or repr(score) != top or m.decode() < after_id]
            if ids:
                pipe = client.pipeline(transaction=False)
                for job_id in ids:
                    pipe.hmget(p + "r:" + job_id, "d", "st", "fn")
                values: list[Any] = self.store.call(pipe.execute, "reading job records")
                gone: list[str] = []
                for job_id, (raw, st, fn) in zip(ids, values, strict=True):
                    if raw is None:
                        gone += [index, job_id]
                        continue
                    if (wanted is not None and st.decode() != wanted) or \
                            (task is not None and fn.decode() != task):
                        continue
                    try:
                        found.append(_decode(job_id, raw))
                    except SerializationError as exc:
                        log.warning("%s: skipping unreadable job record: %s", p, exc)
                    if len(found) == limit:
                        break
                if gone:  # later rounds start that many entries earlier
                    self.store.call(functools.partial(self.store.run, self._prune, [p, *gone]),
                                    "pruning expired index entries")
                    offset -= len(gone) // 2
            if len(rows) < step:
                break
        return found

    def counts_since(self, since: float) -> dict[str, dict[str, int]]:
        """Records updated at or after ``since``, per queue and status: one range of the
        ``ri`` index, then each record's status field and its JSON's ``queue``, a chunk of
        records per round trip, nothing decoded.

        Why not the default (paging :meth:`query`): it decoded every record of the window,
        ~2-3 s per refresh of the dashboard's overview with 50,000 records of the last hour
        (and the overview asks twice). The queue is the first ``"queue":"`` of the record's
        JSON: the fields before it (job_id, task, status) are strings, inside which a quote
        is escaped, so the top-level key comes first (:data:`_QUEUE`)."""
        p, client = self.store.prefix, self.store.client
        ids = cast("list[bytes]", self.store.call(functools.partial(
            client.zrange, p + "ri", "+inf", repr(float(since)), desc=True, byscore=True),
            "listing recent job records"))
        totals: dict[str, dict[str, int]] = {}
        for start in range(0, len(ids), _PUT_CHUNK):
            pipe = client.pipeline(transaction=False)
            for job_id in ids[start:start + _PUT_CHUNK]:
                pipe.hmget(p + "r:" + job_id.decode(), "st", "d")
            values: list[Any] = self.store.call(pipe.execute, "reading job records")
            for status, raw in values:
                if status is None or raw is None:  # expired since the index was read
                    continue
                per_queue = totals.setdefault(_queue_of(raw), {})
                key = status.decode()
                per_queue[key] = per_queue.get(key, 0) + 1
        return totals

    def counts(self) -> dict[str, int]:
        """Entries per status index, after :meth:`trim_expired` (so a record that expired
        is not counted: ``nuvom status`` prints these as job records)."""
        self.trim_expired(_TRIM_CALLS_BEFORE_COUNTS)
        p = self.store.prefix
        pipe = self.store.client.pipeline(transaction=False)
        statuses = [s.value for s in JobStatus if s is not JobStatus.UNKNOWN]
        for status in statuses:
            pipe.zcard(p + "ri:s:" + status)
        values = self.store.call(pipe.execute, "counting job records")
        return {s: int(n) for s, n in zip(statuses, values, strict=True) if n}

    def trim_expired(self, max_calls: int = _TRIM_CALLS_PER_BEAT) -> int:
        """Remove the index entries of records whose TTL ran out, up to ``max_calls``
        bounded script calls (:data:`~nuvom_plugins_redis.record_scripts.TRIM`; each takes
        at most :data:`_TRIM_CHUNK` due entries, so the server is never held long). Returns
        how many records' entries were removed. The work is what the expiries owe, each
        entry handled once: nothing is read that is not due."""
        removed = 0
        for _ in range(max_calls):
            gone, taken = self.store.call(
                functools.partial(self.store.run, self._trim, [self.store.prefix, _TRIM_CHUNK]),
                "removing index entries of expired job records")
            removed += int(gone)
            if int(taken) < _TRIM_CHUNK:
                break
        return removed

    def purge(self, older_than: float) -> int:
        """Delete SUCCEEDED, FAILED and CANCELLED records last updated before
        ``older_than``, in bounded chunks; queued and running jobs are never purged."""
        bound = "+inf" if older_than == float("inf") else repr(float(older_than))
        deleted = 0
        for status in _TERMINAL:
            while True:
                gone, seen = self.store.call(
                    functools.partial(self.store.run, self._purge,
                                      [self.store.prefix, status, bound, _PURGE_CHUNK]),
                    "purging job records")
                deleted += int(gone)
                if int(seen) < _PURGE_CHUNK:
                    break
        return deleted

    # --- heartbeats: a key per worker that Redis expires, and a set of their ids ----------

    def heartbeat(self, info: WorkerInfo, ttl_secs: float) -> None:
        """``<prefix>w:<id>`` set with a TTL on the server's clock (hosts need not agree on
        the time), its id added to ``<prefix>workers``, in one transaction."""
        p = self.store.prefix
        pipe = self.store.client.pipeline(transaction=True)
        pipe.set(p + "w:" + info.id, _encode(info.to_dict()), px=max(1, int(ttl_secs * 1000)))
        pipe.sadd(p + "workers", info.id)
        self.store.call(pipe.execute, "recording a worker heartbeat")
        self._trim_on_beat()

    def _trim_on_beat(self) -> None:
        """:meth:`trim_expired` on a heartbeat (see the module docs). Its failure is logged
        (once until it works again) and not raised: the heartbeat itself was recorded, and
        the next beat trims what this one could not."""
        try:
            self.trim_expired()
        except Exception as exc:
            if not self._trim_failing:
                log.warning("%s: could not remove index entries of expired job records "
                            "(%s); retrying at each heartbeat", self.store.prefix, exc)
            self._trim_failing = True
            return
        if self._trim_failing:
            log.warning("%s: removing index entries of expired job records works again",
                        self.store.prefix)
        self._trim_failing = False

    def live_workers(self) -> list[WorkerInfo]:
        """Ids whose key expired are dropped from the set on the way."""
        p, client = self.store.prefix, self.store.client
        ids = sorted(m.decode() if isinstance(m, bytes) else m for m in self.store.call(
            lambda: client.smembers(p + "workers"), "listing workers"))
        if not ids:
            return []
        raws = self.store.call(lambda: client.mget([p + "w:" + i for i in ids]),
                               "reading worker heartbeats")
        gone = [i for i, raw in zip(ids, raws, strict=True) if raw is None]
        if gone:
            self.store.call(lambda: client.srem(p + "workers", *gone), "pruning workers")
        return [WorkerInfo.from_dict(json.loads(raw)) for raw in raws if raw is not None]

    def forget_worker(self, worker_id: str) -> bool:
        p = self.store.prefix
        pipe = self.store.client.pipeline(transaction=True)
        pipe.delete(p + "w:" + worker_id)
        pipe.srem(p + "workers", worker_id)
        deleted, _ = self.store.call(pipe.execute, "removing a worker")
        return bool(deleted)

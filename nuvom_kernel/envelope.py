"""The wire format of a job: one versioned :class:`Envelope`, the only code that knows it.

A queue backend stores a :class:`~nuvom_kernel.models.Message` whose body is an encoded
envelope and never parses it; the producer (``.delay()``, ``.map()``, ``nuvom retry job``)
builds envelopes, the worker decodes them, re-encodes them for a retry and turns them into
:class:`~nuvom_kernel.models.JobRecord` values. Arguments are wire-safe data from the moment
the envelope is built (:mod:`nuvom_kernel.serialization`), so a value JSON cannot carry fails
at ``.delay()`` and nothing is enqueued.

Version 1, as a JSON object: ``v``, ``id``, ``task``, ``module``, ``args``, ``kwargs``,
``opts`` (the :class:`~nuvom_kernel.models.TaskOptions`), ``created_at``, ``enqueued_by``,
``trace_id``, ``history``, and since kernel v1 ``run`` and ``headers`` (absent in older
envelopes: run 1, no headers). Older envelopes also carry ``failures``, which the queue
now counts on the message itself.
"""

from __future__ import annotations

import functools
import json.encoder
import math
import os
import re
import socket
import time
from collections.abc import Mapping, Sequence
from typing import Any

import attrs

from nuvom_kernel.errors import SerializationError
from nuvom_kernel.job import Job
from nuvom_kernel.models import Backoff, JobRecord, JobStatus, Message, TaskOptions
from nuvom_kernel.serialization import JsonSerializer, Serializer, from_wire, to_wire

__all__ = ["ENVELOPE_VERSION", "Envelope", "EnvelopeVersionError", "options_from_wire",
           "options_to_wire", "origin", "task_of_body", "wire_calls"]

ENVELOPE_VERSION = 1


#: The start of a JSON envelope's body: ``v``, ``id`` and ``task`` come first, in that order,
#: in every release (a plain id and task name need no escapes).
_TASK_AT_START = re.compile(rb'\{"v":1,"id":"[^"\\]*","task":"([^"\\]*)"')


def task_of_body(body: object) -> str:
    """The ``task`` a message body names if it is a JSON envelope, else ``""`` (a body
    another serializer wrote, a damaged one); never raises.

    For a backend reading messages stored before it kept the task beside the body (a
    migration, an old file's header): concurrency limits and per-task counts key on the
    task. The common start of a body is matched without parsing (a full ``json.loads``
    per row doubled the time of such a migration); the rest is parsed.
    """
    try:
        if type(body) is bytes:
            match = _TASK_AT_START.match(body)
            if match is not None:
                return match.group(1).decode()
        data = json.loads(body.decode() if isinstance(body, bytes) else str(body))
        task = data.get("task") if isinstance(data, dict) else None
        return task if type(task) is str else ""
    except Exception:  # any body, however broken: "" (the caller keeps what it has)
        return ""


class EnvelopeVersionError(SerializationError):
    """A message written by a newer release than this worker's (a producer upgraded before
    its workers): not damaged, only not readable *here*, so a worker leaves it for a newer
    one instead of failing it (see ``JobRunner``)."""
_HOST = ""


def _new_host() -> None:
    global _HOST
    _HOST = f"{socket.gethostname()}:{os.getpid()}"


_new_host()
if hasattr(os, "register_at_fork"):  # a forked child is another process: its own pid
    os.register_at_fork(after_in_child=_new_host)


def origin() -> str:
    """``host:pid`` of this process (recomputed after fork); read once per job enqueued."""
    return _HOST


@functools.lru_cache(maxsize=1024)
def options_to_wire(options: TaskOptions) -> dict[str, Any]:
    """The options as envelope data: ``queue``, and every other option that differs from
    its default (a worker reads a missing one as the default); never ``description``,
    which describes the task, not a job. All eleven options and the docstring made up half
    of a job's body: the worker decoded them, and SQLite stored them twice (the message and
    the record), for every job. Cached because a task's options rarely change and
    ``attrs.asdict`` is a measurable share of an enqueue. Callers must not mutate it."""
    data = attrs.asdict(options)
    data["backoff"] = options.backoff.value
    data["tags"] = list(options.tags)
    return {name: value for name, value in data.items()
            if name == "queue" or (name != "description" and value != _WIRE_DEFAULTS[name])}


@functools.lru_cache(maxsize=1024)
def _wire_options(options: TaskOptions) -> tuple[dict[str, Any], str]:
    """The options as envelope data and as the JSON :class:`JsonSerializer` writes for them:
    a task's options are the same for every job, so the producer encodes them once (they
    were about half of the encoding time of a ``.delay()``'s body)."""
    data = options_to_wire(options)
    return data, _encode(data)


def wire_calls(task: str, calls: Sequence[tuple[Sequence[Any], Mapping[str, Any], str | None]],
               param_names: Sequence[str] = ()
               ) -> list[tuple[list[Any], dict[str, Any], str | None]]:
    """Each call's arguments as wire data (new lists and dicts; JSON-native values kept).

    :raises SerializationError: naming the first bad argument (by parameter name where
        known) and its task.
    """
    out = []
    n = 0
    try:
        for n, (args, kwargs, job_id) in enumerate(calls):  # noqa: B007 (n: the except's)
            wire_args = list(args)
            try:
                for i, value in enumerate(wire_args):
                    if type(value) not in _NATIVE:  # the common case costs one type check
                        label = (f"argument {param_names[i]!r}" if i < len(param_names)
                                 else f"argument #{i}")
                        wire_args[i] = to_wire(value, f"{task}(): {label}")
                wire_kwargs = {k: v if type(v) in _NATIVE else
                               to_wire(v, f"{task}(): argument {k!r}")
                               for k, v in kwargs.items()} if kwargs else {}
            except RecursionError:  # a bare RecursionError named no argument
                raise SerializationError(
                    f"{task}(): an argument is nested too deeply to encode (hundreds of "
                    "levels of lists, dicts or tuples); pass it flatter, or as text") from None
            for name in wire_kwargs:
                if type(name) is not str:
                    raise SerializationError(
                        f"{task}(): keyword argument names must be strings, got {name!r}; "
                        "pass a dict of name -> value (or a tuple of positional arguments)")
            out.append((wire_args, wire_kwargs, job_id))
    except SerializationError as exc:  # which of a .map()'s 1,000 items: it did not say
        if len(calls) == 1:
            raise
        raise SerializationError(f"item #{n} of {len(calls)}: {exc}") from None
    return out


@functools.lru_cache(maxsize=1024)
def _body_parts(task: str, module: str | None, enqueued_by: str, options_json: str
                ) -> tuple[str, str, str]:
    """The JSON between a new job's varying fields (id, arguments, time, trace id): the
    same for every job a task enqueues from one process."""
    return (f',"task":{_quote(task)},"module":{"null" if module is None else _quote(module)},'
            '"args":',
            f',"opts":{options_json},"created_at":',
            f',"enqueued_by":{_quote(enqueued_by)},"trace_id":')


_BODY_START = f'{{"v":{ENVELOPE_VERSION},"id":'
_encode = JsonSerializer._encode
#: JSON of a str exactly as the serializer's encoder writes it (ensure_ascii; C function).
_quote: Any = json.encoder.encode_basestring_ascii
_LITERALS = {None: "null", True: "true", False: "false"}


def _json_args(values: list[Any]) -> str:
    """``values`` as :class:`JsonSerializer` encodes it; a flat list of str, int, bool and
    None (most calls) is joined here at a third of the encoder's per-call cost."""
    parts = []
    for value in values:
        kind = type(value)
        if kind is int:
            parts.append(int.__repr__(value))
        elif kind is str:
            parts.append(_quote(value))
        elif kind is bool or value is None:
            parts.append(_LITERALS[value])
        else:
            return str(_encode(values))
    return "[" + ",".join(parts) + "]"


#: Each option's default as wire data (what a worker assumes when the option is missing).
_WIRE_DEFAULTS = {name: list(value) if type(value) is tuple else getattr(value, "value", value)
                  for name, value in ((f.name, f.default) for f in attrs.fields(TaskOptions))}

#: Values that are their own wire form (floats are not: NaN must be refused by ``to_wire``).
_NATIVE = frozenset({str, int, bool, type(None)})

_OPTION_NAMES = frozenset(f.name for f in attrs.fields(TaskOptions))


def options_from_wire(data: Mapping[str, Any]) -> TaskOptions:
    """The options of an envelope or a record; keys this kernel does not know are ignored
    (a newer producer may send more). A worker sees the same few option sets over and over:
    comparing the decoded dict with the last few seen (a C-level ``==``) costs far less than
    building a hashable key, and that key was the largest kernel cost of decoding a job."""
    for seen, options in _recent_options:
        if seen == data:
            return options
    key = tuple((k, tuple(v) if isinstance(v, list) else v)
                for k, v in data.items() if k in _OPTION_NAMES)
    options = _options(key)
    _recent_options.insert(0, (dict(data), options))
    del _recent_options[8:]
    return options


#: The last option sets decoded, most recent first (a list: a racing insert from another
#: thread can only add a duplicate entry, never a wrong one).
_recent_options: list[tuple[dict[str, Any], TaskOptions]] = []


@functools.lru_cache(maxsize=1024)
def _options(key: tuple[tuple[str, Any], ...]) -> TaskOptions:
    raw = dict(key)
    raw["backoff"] = Backoff(raw.get("backoff", "fixed"))
    raw["tags"] = tuple(raw.get("tags", ()))
    return TaskOptions(**raw)


@attrs.define(eq=False)
class Envelope:
    """One job on the wire. ``args``, ``kwargs`` and ``options`` hold wire-safe data."""

    id: str
    task: str
    module: str | None
    args: list[Any]
    kwargs: dict[str, Any]
    options: dict[str, Any]
    created_at: float
    enqueued_by: str = ""
    trace_id: str = ""
    run: int = 1
    history: list[dict[str, Any]] = attrs.field(factory=list)
    headers: dict[str, Any] = attrs.field(factory=dict)
    legacy_failures: int = 0  # ``failures`` of an envelope written before kernel v1
    #: (options dict, its JSON) when :meth:`for_call` built ``options``: :meth:`to_body`
    #: splices the JSON in while ``options`` is still that dict. The dict is shared by every
    #: job of the task (cached): replace ``options``, never change it in place.
    _wire_options: tuple[dict[str, Any], str] | None = attrs.field(
        default=None, repr=False, alias="wire_options")

    # --- building ---------------------------------------------------------------------------

    @classmethod
    def for_call(
        cls,
        task: str,
        module: str | None,
        options: TaskOptions,
        args: Sequence[Any],
        kwargs: Mapping[str, Any],
        param_names: Sequence[str] = (),
        *,
        job_id: str | None = None,
    ) -> Envelope:
        """The envelope of a new job for ``task(*args, **kwargs)``.

        :raises SerializationError: naming the argument (by parameter name where known).
        """
        return cls.for_calls(task, module, options, [(args, kwargs, job_id)], param_names)[0]

    @classmethod
    def for_calls(
        cls,
        task: str,
        module: str | None,
        options: TaskOptions,
        calls: Sequence[tuple[Sequence[Any], Mapping[str, Any], str | None]],
        param_names: Sequence[str] = (),
    ) -> list[Envelope]:
        """The envelopes of new jobs, one per ``(args, kwargs, job_id)``.

        :raises SerializationError: naming the first bad argument; no envelope is returned.
        """
        return cls.for_wire_calls(task, module, options, wire_calls(task, calls, param_names))

    @classmethod
    def for_wire_calls(
        cls,
        task: str,
        module: str | None,
        options: TaskOptions,
        calls: Sequence[tuple[list[Any], dict[str, Any], str | None]],
    ) -> list[Envelope]:
        """The envelopes of calls whose arguments are wire data already (:func:`wire_calls`;
        ``.map()`` converts the whole batch first, then builds envelopes as they are pushed),
        with one system call for all the random ids (a job id and a trace id each) and the
        options looked up once.

        A new job id is 32 hex digits: the time in milliseconds (12), then 80 random bits
        (20). Time first puts a backend's newest ids at the right edge of its id index, as
        UUIDv7 does: a SQLite push into a 100,000-job backlog measured 13.2 → 8.6 µs of CPU
        per row against fully random ids, whose inserts land on pages all over the index."""
        wire_options = _wire_options(options)
        data, host = wire_options[0], _HOST
        ids = os.urandom(18 * len(calls)).hex()
        now = time.time
        stamp = f"{time.time_ns() // 1_000_000:012x}"
        out = []
        at = 0
        for args, kwargs, job_id in calls:
            # positional (the fields' order), as every job of a .map() pays for keywords
            out.append(cls(job_id or stamp + ids[at:at + 20], task, module, args, kwargs,
                           data, now(), host, ids[at + 20:at + 36], 1, [], {}, 0,
                           wire_options))
            at += 36
        return out

    @classmethod
    def for_rerun(cls, record: JobRecord) -> Envelope:
        """The next run of a finished job: same id, task and arguments, ``run + 1``."""
        return cls(id=record.job_id, task=record.task, module=record.module,
                   args=list(record.args), kwargs=dict(record.kwargs),
                   options=dict(record.options), created_at=time.time(),
                   enqueued_by=origin(), trace_id=record.trace_id or os.urandom(8).hex(),
                   run=record.run + 1)

    # --- the wire ---------------------------------------------------------------------------

    def to_message(self, serializer: Serializer, available_at: float = 0.0) -> Message:
        opts = self.options
        # positional: a .map() builds one per job, and keywords cost a tenth more here
        return Message(self.id, self.to_body(serializer), opts.get("queue", "default"),
                       opts.get("priority", 0),
                       available_at, self.created_at, self.task)

    @staticmethod
    def to_messages(envelopes: Sequence[Envelope], serializer: Serializer,
                    available_at: float = 0.0) -> list[Message]:
        """:meth:`to_message` of each envelope. A ``.map()``'s jobs share their task,
        options and producer, so the JSON around their varying fields and their routing are
        looked up once per run of such jobs instead of once per job (measured on a
        ``.map()``: 3.2 → 2.9 µs per message)."""
        if type(serializer) is not JsonSerializer:
            return [env.to_message(serializer, available_at) for env in envelopes]
        out = []
        wire: Any = None  # the shared part of the run of jobs so far: ``parts`` is for it
        task = module = producer = None
        parts: tuple[str, str, str] = ("", "", "")
        queue, priority = "default", 0
        for env in envelopes:
            if (env._wire_options is not wire or env.task is not task
                    or env.module is not module or env.enqueued_by is not producer):
                wire, task, module, producer = (env._wire_options, env.task, env.module,
                                                env.enqueued_by)
                if wire is not None:
                    parts = _body_parts(task, module, producer, wire[1])
                    queue, priority = wire[0].get("queue", "default"), wire[0].get("priority", 0)
            if (wire is None or wire[0] is not env.options or type(env.run) is not int
                    or env.run != 1 or env.history):
                out.append(env.to_message(serializer, available_at))
            else:
                out.append(Message(env.id, env._json_body(parts), queue, priority,
                                   available_at, env.created_at, task))
        return out

    def to_body(self, serializer: Serializer) -> bytes:
        wire = self._wire_options
        if (wire is not None and wire[0] is self.options and type(serializer) is JsonSerializer
                and type(self.run) is int and self.run == 1 and not self.history):
            return self._json_body(_body_parts(self.task, self.module, self.enqueued_by,
                                               wire[1]))
        return self._generic_body(serializer)

    def _generic_body(self, serializer: Serializer) -> bytes:
        data: dict[str, Any] = {
            "v": ENVELOPE_VERSION, "id": self.id, "task": self.task, "module": self.module,
            "args": self.args, "kwargs": self.kwargs, "opts": self.options,
            "created_at": self.created_at, "enqueued_by": self.enqueued_by,
            "trace_id": self.trace_id, "run": self.run, "history": self.history,
        }
        if self.headers:
            data["headers"] = self.headers
        return serializer.dumps(data)

    def _json_body(self, parts: tuple[str, str, str]) -> bytes:
        """What ``JsonSerializer().dumps`` writes for a new job's envelope (the same bytes:
        the same keys in the same order, every value as the same encoder writes it), with
        what every job of a task shares encoded once (``parts``: :func:`_body_parts`) and
        flat arguments joined by :func:`_json_args`: measured 13.6 → 5.0 µs per body."""
        created_at, kwargs, headers = self.created_at, self.kwargs, self.headers
        try:
            # the encoder's form of a finite float is its repr; it refuses the others
            created = (float.__repr__(created_at)
                       if type(created_at) is float and math.isfinite(created_at)
                       else _encode(created_at))
            end = f',"headers":{_encode(headers)}}}' if headers else "}"
            return (f"{_BODY_START}{_quote(self.id)}{parts[0]}{_json_args(self.args)}"
                    f',"kwargs":{_encode(kwargs) if kwargs else "{}"}{parts[1]}{created}'
                    f'{parts[2]}{_quote(self.trace_id)},"run":1,"history":[]{end}').encode()
        except TypeError:  # a field that is not a str (set by hand): the encoder decides
            return self._generic_body(JsonSerializer())

    @classmethod
    def from_message(cls, message: Message, serializer: Serializer) -> Envelope:
        """Decode a message's body.

        :raises SerializationError: for *any* failure to decode — a poison message must fail
            its job, never loop or kill the thread that read it.
        """
        try:
            data = serializer.loads(message.body)
            version = data.get("v")
        except Exception as exc:
            raise SerializationError(
                f"job {message.id}: the message body cannot be decoded "
                f"({type(exc).__name__}: {exc})") from exc
        if version != ENVELOPE_VERSION:
            newer = type(version) is int and version > ENVELOPE_VERSION
            raise (EnvelopeVersionError if newer else SerializationError)(
                f"job {message.id}: envelope version {version!r} is not supported by this "
                f"worker (expects {ENVELOPE_VERSION}); " + (
                    "upgrade nuvom on the worker" if newer else
                    # an older (or no) version: upgrading the worker, as it said, cannot help
                    "an older release than this one, or no release, wrote it: enqueue the "
                    "job again from a producer of this release"))
        try:
            args, kwargs, opts = data["args"], data["kwargs"], data["opts"]
            if not (isinstance(args, list) and isinstance(kwargs, dict)
                    and isinstance(opts, dict)):
                raise TypeError("args must be a list, kwargs and opts objects")
            if data["id"] != message.id:  # (a row copied by hand to enqueue a job again)
                raise ValueError(
                    f"its body is that of job {data['id']!r}, which would run (and be "
                    f"recorded) again under that id; enqueue a job anew instead "
                    f"(`nuvom retry job {data['id']}`, or `.delay()`)")
            get = data.get
            headers = get("headers")
            # positional (the fields' order): decoded once per job on the worker
            return cls(data["id"], data["task"], get("module"), args, kwargs, opts,
                       float(data["created_at"]), get("enqueued_by", ""),
                       get("trace_id", ""), int(get("run", 1)), list(get("history", ())),
                       dict(headers) if headers else {}, int(get("failures", 0)))
        except Exception as exc:
            raise SerializationError(
                f"job {message.id}: malformed envelope ({type(exc).__name__}: {exc})") from exc

    # --- what it describes ------------------------------------------------------------------

    def job(self, status: JobStatus = JobStatus.QUEUED) -> Job:
        """The :class:`Job` this envelope carries, arguments decoded.

        :raises SerializationError: an argument or option does not decode.
        """
        try:
            kwargs = self.kwargs
            # positional (the fields' order): built once per job on the worker
            return Job(self.id, self.task, tuple(from_wire(self.args)),
                       from_wire(kwargs) if kwargs else {}, self.module,
                       options_from_wire(self.options), self.created_at, self.enqueued_by,
                       self.trace_id, 0, list(self.history), 0, self.run,
                       dict(self.headers), status)
        except Exception as exc:
            raise SerializationError(
                f"job {self.id} ({self.task}): its arguments or options cannot be decoded "
                f"({type(exc).__name__}: {exc})") from exc

    def succeeded(self, result: Any, attempts: int, token: str | None, started_at: float,
                  finished_at: float, worker: str) -> JobRecord:
        """:meth:`record` of a success, the fields passed positionally: built once per job
        on the worker, at less than half the cost by keyword (1.7 → 0.7 µs)."""
        opts = self.options
        return JobRecord(self.id, self.task, JobStatus.SUCCEEDED, opts.get("queue", "default"),
                         self.args, self.kwargs, self.module, opts, result, None, None, None,
                         attempts, int(opts.get("retries", 0)), list(self.history),
                         self.created_at, started_at, finished_at, finished_at, worker,
                         self.trace_id, self.run, token)

    def record(self, status: JobStatus, **fields: Any) -> JobRecord:
        """A :class:`JobRecord` of this job in ``status``; ``fields`` fill the rest
        (attempts, token, times, result or error)."""
        return JobRecord(job_id=self.id, task=self.task, status=status,
                         queue=self.options.get("queue", "default"), args=self.args,
                         kwargs=self.kwargs, module=self.module, options=self.options,
                         max_retries=int(self.options.get("retries", 0)),
                         history=list(self.history), created_at=self.created_at,
                         trace_id=self.trace_id, run=self.run, **fields)

"""The kernel object: config + plugin manager + backends, built once per process on demand.

Nothing here runs at import. The first ``.delay()``, ``get_job()`` or CLI command calls
:func:`get_kernel`, which reads the configuration and loads plugins exactly once. Tests and
embedding applications build their own :class:`Kernel` and install it with :func:`use_kernel`.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from nuvom_kernel.backends import BackendContext, QueueBackend, ResultBackend
from nuvom_kernel.config import Config, load_config
from nuvom_kernel.envelope import Envelope, options_from_wire
from nuvom_kernel.errors import (
    EnqueueError,
    JobFailedError,
    NuvomError,
    PluginConfigError,
    SerializationError,
    UnknownJobError,
    error_text,
)
from nuvom_kernel.job import Job, StoreStall, still_waiting
from nuvom_kernel.models import TERMINAL_STATES, JobRecord, JobStatus, Message, TaskOptions
from nuvom_kernel.plugins import NuvomPluginManager
from nuvom_kernel.registry import REGISTRY, TaskRegistry
from nuvom_kernel.serialization import Serializer, from_wire
from nuvom_kernel.values import is_text

__all__ = ["Kernel", "get_job", "get_kernel", "set_kernel", "use_kernel"]

log = logging.getLogger("nuvom")


class Kernel:
    """Owns one process's configuration, plugin manager, backends and task registry.

    :param config: a ready configuration; default: :func:`load_config` of ``root``.
    :param plugins: extra plugin objects to register before loading (tests, embedding).
    """

    def __init__(
        self,
        config: Config | None = None,
        *,
        root: Path | str | None = None,
        environ: Mapping[str, str] | None = None,
        plugins: Mapping[str, Any] | None = None,
        registry: TaskRegistry | None = None,
    ) -> None:
        self.config = config or load_config(root, environ)
        self.pm = NuvomPluginManager()
        for name, plugin in (plugins or {}).items():
            self.pm.register(plugin, name=name)
            self.pm.sources[name] = ("embedded", None, None)
        self.pm.load(self.config, environ)
        self.registry = registry or REGISTRY
        self._lock = threading.Lock()
        self._queue: QueueBackend | None = None
        self._results: ResultBackend | None = None
        self._enqueued = False  # before_first_enqueue ran
        self._serializer: Serializer | None = None

    @property
    def settings(self) -> Any:
        return self.config.settings

    @property
    def data_dir(self) -> Path:
        path: Path = self.settings.data_dir
        return path if path.is_absolute() else self.config.root / path

    def _context(self) -> BackendContext:
        return BackendContext(data_dir=self.data_dir,
                              visibility_timeout_secs=self.settings.visibility_timeout_secs,
                              namespace=self.settings.namespace)

    def _build(self, hook: str, name: str, what: str) -> Any:
        """The ``what`` ``name``, built by its class's ``from_settings`` from its
        ``[plugins.<name>]`` settings.

        :raises PluginConfigError: ``from_settings`` (or the constructor it calls) refused
            its settings with a ``TypeError``, ``ValueError`` or ``KeyError`` (a key it does
            not accept, a value of the wrong type). Why: such a key gave a raw ``TypeError``
            about ``__init__`` from every command, naming neither the plugin nor the table
            the key came from (the scaffold's own example did).
        :raises EnqueueError: it raised anything else but a :class:`NuvomError` (which
            says what is wrong in the plugin's words, and passes as it is): a store it could
            not reach while it was built is no configuration error (exit status 1; the
            dashboard serves its 503 pages meanwhile).
        """
        cls: Any = self.pm.lookup(hook, name, what)
        settings = self.config.plugin_settings(name)
        try:
            return cls.from_settings(settings, self._context())
        except NuvomError:
            raise
        except (TypeError, ValueError, KeyError) as exc:
            raise PluginConfigError(self._not_built(hook, name, what, cls, exc)) from exc
        except Exception as exc:
            raise EnqueueError(self._not_built(hook, name, what, cls, exc, settings=False)
                               ) from exc

    def _not_built(self, hook: str, name: str, what: str, cls: type, exc: Exception, *,
                   settings: bool = True) -> str:
        """Why the ``what`` ``name`` could not be built: its plugin, its class, the settings
        keys it was given and where each was set (never their values: a URL may hold a
        password), the error, and what to check (``settings``: whether the error is one a
        setting can cause, else its store may be what is away)."""
        plugin = self.pm.provider(hook, name) or "?"
        table = f"[plugins.{name.lower()}]"
        sources = self.config.plugin_setting_sources(name)
        given = (f"its settings {table} gave it "
                 + ", ".join(f"{key} ({where})" for key, where in sorted(sources.items()))
                 if sources else f"it was given no settings (no {table} table nor "
                 f"NUVOM_PLUGINS__{name.upper()}__<KEY> variable)")
        if not settings:
            check = ("If it could not reach its store, check that the store runs and that "
                     f"{table} points at it; otherwise the plugin is at fault")
        elif sources:
            check = (f"Check those keys against the plugin's documentation (one it does not "
                     f"accept, a value of the wrong type) and fix or remove them in {table}; "
                     f"if they are right, the plugin is at fault")
        else:
            check = "The plugin fails without settings, so it is at fault"
        return (f"plugin {plugin!r}{self.pm.provenance(plugin)}: its {what} {name!r} "
                f"({cls.__module__}.{cls.__qualname__}) could not be built: {given}, and its "
                f"from_settings raised {type(exc).__name__}: {error_text(exc)}. {check}: fix "
                f"its from_settings or constructor (`nuvom plugin test {plugin}` runs its "
                f"contract), or choose another {what} with "
                f"NUVOM_{what.upper().replace(' ', '_')}=<name>.")

    @property
    def queue(self) -> QueueBackend:
        if self._queue is None:
            with self._lock:
                if self._queue is None:
                    self._queue = self._build("nuvom_register_queue_backends",
                                              self.settings.queue_backend, "queue backend")
        return self._queue

    @property
    def results(self) -> ResultBackend:
        if self._results is None:
            with self._lock:
                if self._results is None:
                    self._results = self._build("nuvom_register_result_backends",
                                                self.settings.result_backend, "result backend")
        return self._results

    def before_first_enqueue(self) -> None:
        """What a producer is told once, at its first enqueue (nothing per job after it).

        * A result backend name no installed, enabled plugin provides is refused (a
          lookup; nothing is built, so a producer never waits on a store it does not
          use): ``.delay()`` queued jobs that no worker could start to run (a worker
          builds it first), and only a ``get()`` said why.
        * A program run in a subfolder of a project (a ``scripts/`` folder, a cron job
          in ``$HOME``) with no project of its own there is warned: the working directory
          decides which ``.nuvom_plugins.toml`` is read and where the store is, so its
          jobs went to a new store of that folder, and no worker ever saw them.

        :raises BackendNotFoundError: naming the installed ones, as a worker would.
        """
        if self._enqueued:
            return
        self.pm.lookup("nuvom_register_result_backends", self.settings.result_backend,
                       "result backend")
        self._enqueued = True
        sources = self.config.sources
        if any(not sources.get(key, "default").startswith("default")
               for key in ("data_dir", "queue_backend")):
            return  # chosen on purpose (NUVOM_DATA_DIR, a server's backend): no hint
        from nuvom_kernel.hints import parent_project

        try:  # only a hint: a folder above that cannot be read is none
            above = parent_project(Path(self.config.root), Path(self.data_dir),
                                   self.config.path is not None)
        except OSError:
            above = None
        if above is not None:
            log.warning("enqueuing into the store of %s (no .nuvom_plugins.toml here), but "
                        "%s, a folder above, holds a Nuvom project: if its workers are to "
                        "run these jobs, run this program from there (the working directory "
                        "decides which .nuvom_plugins.toml is read and where the store is)",
                        self.config.root, above)

    @property
    def serializer(self) -> Serializer:
        if self._serializer is None:
            cls = self.pm.lookup("nuvom_register_serializers", self.settings.serializer,
                                 "serializer")
            self._serializer = cls()
        return self._serializer

    def close(self) -> None:
        for backend in (self._queue, self._results):
            if backend is not None:
                backend.close()
        self._queue = self._results = None

    # --- job state ----------------------------------------------------------------------

    def refresh_job(self, job: Job) -> Job:
        """Fill ``job`` with its current state (:meth:`state_of`) and its record.

        :raises SerializationError: the record's values do not decode (its state is still
            :meth:`state_of`'s to read).
        """
        status, record = self.state_of(job)
        if record is not None:
            _apply_record(job, record)
        else:  # purged, or never stored: an outcome read earlier is not the stores' now
            job.result = job.error_type = job.error = job.traceback = None
        job.status = status
        return job

    def state_of(self, job: Job) -> tuple[JobStatus, JobRecord | None]:
        """``job``'s state now and its record, whose values are not decoded: read from the
        queue *then* the results.

        That order is what keeps a known job from ever reading UNKNOWN: a worker stores the
        record before it acks, so a job the queue no longer holds has its record stored by
        the time the results are read. A terminal record wins over what the queue says (the
        ack may still be on its way); else the queue's state (queued, waiting for a retry,
        running); else the stored record; else a workflow step still waiting for its
        parents, which only its graph holds, is QUEUED (it was enqueued with its workflow);
        else UNKNOWN — an id no backend knows.
        """
        if not is_text(job.id):  # refused at enqueue (no store holds it): never stored
            return JobStatus.UNKNOWN, None
        status = self.queue.peek_state(job.id)
        record = self.results.get(job.id)
        if status is not None and (record is None or record.status not in TERMINAL_STATES):
            return status, record
        if record is not None:
            return record.status, record
        if self.queue.capabilities.workflows:  # only ids neither queued nor recorded
            from nuvom_kernel.workflow.steps import unqueued_step

            return unqueued_step(self, job)
        return JobStatus.UNKNOWN, None

    def cancel(self, job: Job) -> bool:
        """Cancel a job that has not started: QUEUED (or waiting for a retry, or left by a
        worker whose lease expired) → CANCELLED, and a workflow step still waiting for its
        parents (its graph cancels it).

        Returns ``False`` when the job is running, finished or unknown; a running job cannot
        be stopped from outside its thread.
        """
        if not is_text(job.id):  # never stored (see state_of)
            return False
        stored = self.results.get(job.id)
        # A job never run has no record: its message says what it was (read before the
        # queue forgets it), so `nuvom retry job` can run it again.
        envelope = None if stored is not None else self._queued(job.id)[1]
        if not self.queue.cancel(job.id):
            if envelope is not None or not self.queue.capabilities.workflows:
                return False
            # Not queued: a step waiting for its parents is in its graph only, and the
            # graph cancels it (atomically against a parent's settle); so is a step whose
            # earlier cancel failed after removing its message.
            from nuvom_kernel.workflow.steps import cancel_step

            done = cancel_step(self, job, stored)
            if done:
                job.status = JobStatus.CANCELLED
                return True
            if done is False:
                return False
            # a parent's settle released it meanwhile: it is a queued job now
            stored = self.results.get(job.id)
            envelope = None if stored is not None else self._queued(job.id)[1]
            if not self.queue.cancel(job.id):
                return False
        self._record_cancelled(job, envelope)
        if self.queue.capabilities.workflows:  # a step: its dependents will never run
            from nuvom_kernel.workflow.settle import cancelled_step

            cancelled_step(self.queue, self.results, job.id)
        job.status = JobStatus.CANCELLED
        return True

    def _record_cancelled(self, job: Job, envelope: Envelope | None) -> None:
        """Store CANCELLED over the job's latest record, read now that its message is gone.

        Why not the record read before the cancel: a worker may have stored a later attempt
        in between (a retry settled), which fenced out a CANCELLED built from the earlier
        one, and the job read RETRYING forever though it was no longer queued. A worker
        whose lease had expired may still store one after this read: read and try again.
        """
        for _ in range(3):
            if self._put_cancelled(job, envelope, self.results.get(job.id)):
                return
        log.warning("job=%s was cancelled, but its CANCELLED record was refused three times "
                    "(a worker that lost its lease kept recording it)", job.id)

    def _put_cancelled(self, job: Job, envelope: Envelope | None,
                       stored: JobRecord | None) -> bool:
        now = time.time()
        if stored is not None and (envelope is None or stored.run >= envelope.run):
            record = stored
        elif envelope is not None:  # (a record of an earlier run is not this run's)
            record = envelope.record(JobStatus.CANCELLED)
        else:  # a body that does not decode, or a backend that cannot peek: the handle's
            record = JobRecord(job_id=job.id, task=job.task, status=JobStatus.CANCELLED,
                               queue=job.queue, created_at=job.created_at,
                               max_retries=job.options.retries)
        record.status = JobStatus.CANCELLED
        record.finished_at = record.updated_at = now
        return self.results.put(record)  # same run and attempt: terminal over non-terminal

    def _queued(self, job_id: str) -> tuple[Message | None, Envelope | None]:
        """``job_id``'s message while the queue holds it (``None`` if it does not, or if the
        backend cannot ``peek``), and its envelope (``None`` too if the body does not decode:
        the worker that claims it fails it, saying why)."""
        if not is_text(job_id):  # refused at enqueue (see state_of)
            return None, None
        try:
            message = self.queue.peek(job_id)
        except NotImplementedError:
            return None, None
        try:
            return message, (None if message is None
                             else Envelope.from_message(message, self.serializer))
        except SerializationError:
            return message, None

    def _handle(self, job_id: str,
                queued: tuple[Message | None, Envelope | None] | None = None) -> Job:
        """A handle on ``job_id`` made from its message while it is queued (task, arguments,
        options; only the message's routing fields if its body does not decode), else from
        the id alone; :meth:`refresh_job` adds what its record says. ``queued``: what
        :meth:`_queued` answered already, for a caller that needs it too."""
        message, envelope = self._queued(job_id) if queued is None else queued
        try:
            job = None if envelope is None else envelope.job()
        except SerializationError:  # arguments that do not decode: its worker fails it
            job = None
        if job is None:
            job = (Job(id=job_id, task="") if message is None else
                   Job(id=job_id, task=message.task, created_at=message.created_at,
                       options=TaskOptions(queue=message.queue, priority=message.priority)))
        job._kernel = self
        return job

    def wait_for(self, job: Job, timeout: float | None = None, poll_secs: float = 0.05, *,
                 stall: StoreStall | None = None) -> Any:
        """Poll the backends until ``job`` is finished; its value (``None`` for a task with
        ``store_result=False``). A store that stops answering after it answered is waited
        for (:class:`~nuvom_kernel.job.StoreStall`; ``stall``: that of a caller polling in
        steps, ``get_async``, which raises its own timeout: it gets a bare
        ``TimeoutError``, without the hint that reads the live workers from the store).

        :raises JobCancelledError: it was cancelled before it ended.
        :raises JobFailedError: it ended FAILED.
        :raises UnknownJobError: no backend knows the id (it would never finish).
        :raises TimeoutError: not finished within ``timeout`` seconds.
        :raises EnqueueError: the store cannot be read (down, refusing the password) at the
            first poll, or still at the deadline.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        interval = 0.002
        given_stall = stall is not None
        stall = StoreStall() if stall is None else stall
        while True:
            try:
                self.refresh_job(job)
            except EnqueueError as exc:
                if deadline is not None and time.monotonic() >= deadline:
                    raise
                stall.failed(job, exc, timeout)
                wait = poll_secs if deadline is None else min(poll_secs,
                                                              deadline - time.monotonic())
                time.sleep(max(wait, 0.0))
                continue
            stall.answered = True
            if job.status is JobStatus.SUCCEEDED:
                return job.result
            if job.status is JobStatus.CANCELLED:  # a step's error says why
                from nuvom_kernel.workflow.steps import cancelled_error

                raise cancelled_error(self, job)
            if job.status is JobStatus.FAILED:
                raise JobFailedError(job.id, job.error_type, job.error, job.traceback)
            if job.status is JobStatus.UNKNOWN:
                raise UnknownJobError(
                    f"job {job.id!r} is unknown to queue backend {self.queue.name!r} and "
                    f"result backend {self.results.name!r}: never enqueued there, its "
                    "record was purged, or its message was damaged in the store and "
                    "quarantined (`nuvom status` lists those). Check the id and that this "
                    "process uses the same backends and data directory as the producer.")
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError if given_stall else still_waiting(job, timeout, self)
            wait = interval if deadline is None else min(interval, deadline - time.monotonic())
            time.sleep(max(wait, 0.0))
            interval = min(interval * 2, poll_secs)


def _apply_record(job: Job, record: JobRecord) -> None:
    """Fill ``job`` from its stored record.

    :raises SerializationError: the record's arguments or result do not decode (a value
        stored by hand, or by a newer release): said for the job, not a bare ``TypeError``
        from deep in the decoder at every ``get()``, ``inspect`` and dashboard page.
    """
    try:
        _fill(job, record)
    except Exception as exc:
        raise SerializationError(
            f"job {record.job_id} ({record.task}): its stored record cannot be decoded "
            f"({type(exc).__name__}: {exc})") from exc


def _fill(job: Job, record: JobRecord) -> None:
    if not job.task:  # a handle made from an id alone (get_job): what the record says it is
        job.task, job.module = record.task, record.module
        job.created_at = job.created_at if record.created_at is None else record.created_at
        job.trace_id = record.trace_id or ""
        if record.options:
            job.options = options_from_wire(record.options)
    if not job.args and record.args:
        job.args = tuple(from_wire(record.args))
    if not job.kwargs and record.kwargs:
        job.kwargs = from_wire(record.kwargs)
    job.status = record.status
    job.attempts = record.attempts
    job.run = record.run
    job.history = list(record.history)
    # the failed attempts of this run (one entry each, but an outcome that could not be
    # stored adds one to its attempt's): read 0 on every handle, however often it failed
    job.failures = len({h.get("attempt") for h in job.history
                        if isinstance(h, dict) and h.get("run", 1) == record.run})
    job.result = from_wire(record.result) if record.status is JobStatus.SUCCEEDED else None
    job.error_type, job.error, job.traceback = (record.error_type, record.error_message,
                                                record.traceback)


_default: Kernel | None = None
_default_lock = threading.Lock()


def get_kernel() -> Kernel:
    """This process's kernel, built from the working directory's config on first use."""
    global _default
    if _default is None:
        with _default_lock:
            if _default is None:
                _default = Kernel()
    return _default


def set_kernel(kernel: Kernel | None) -> Kernel | None:
    """Install ``kernel`` as this process's kernel; returns the previous one."""
    global _default
    with _default_lock:
        previous, _default = _default, kernel
    return previous


@contextlib.contextmanager
def use_kernel(kernel: Kernel) -> Iterator[Kernel]:
    """Use ``kernel`` inside the block, restoring the previous one after."""
    previous = set_kernel(kernel)
    try:
        yield kernel
    finally:
        set_kernel(previous)


def get_job(job_id: str) -> Job:
    """The current state of any job by id, from any process; ``status`` is UNKNOWN for an id
    no backend has seen.

    :raises TypeError: ``job_id`` is not a string (a ``None`` or a number failed deep in a
        backend's lookup).
    """
    if not isinstance(job_id, str):
        raise TypeError(f"get_job() takes a job id, a string (a handle's .id, or what "
                        f"`nuvom list jobs` shows), got {type(job_id).__name__} {job_id!r:.80}")
    kernel = get_kernel()
    return kernel.refresh_job(kernel._handle(job_id))

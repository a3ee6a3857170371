"""The process pool, parent side: children that run functions and can be killed.

Threads cannot be stopped, so a thread pool's timeout only gives up on a job. Here each
executor thread of the worker owns one child process (:mod:`.child`) and hands it one job at
a time: a job only ever goes to an idle child, and nothing is prefetched into a busy one.
The parent keeps everything that must survive the child — the lease, its extension, the
deadline, the settle — so a child that dies loses nothing but its attempt.

At a job's deadline the child gets SIGUSR1, raised in the task as ``JobTimeoutError`` (its
``finally`` blocks run); a child still busy ``kill_grace_secs`` later gets SIGKILL. A child
whose RSS passes ``max_memory_per_child`` while it runs is killed (a limit that waits for
the task to finish does not protect the host); after a job, a child past its task count,
memory or age is retired. A warm spare is always starting, so a retired or dead child is
replaced by one that has already imported the task modules: capacity does not drop.

A child's death is seen by end of file on its pipes and also by its process state (before
each job, and at each wake-up while one runs): a process a task left behind can hold the
pipes open, and end of file alone would then hide the death until that process ends.

Here the pool: which children it keeps, and how a job's outcome is built from a child's
reply. One child watched from the parent is :mod:`.child_process`; what a child itself runs
is :mod:`.child`.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from nuvom_kernel.envelope import options_to_wire
from nuvom_kernel.errors import (
    ChildKilledError,
    ChildTaskError,
    JobTimeoutError,
    NoRetry,
    Retry,
    SerializationError,
    UnknownTaskError,
)
from nuvom_kernel.serialization import from_wire, to_wire
from nuvom_kernel.worker.child_process import Child, NoChildYet, ended, format_size

if TYPE_CHECKING:
    from nuvom_kernel.kernel import Kernel
    from nuvom_kernel.worker.settle import Running

__all__ = ["ProcessPool"]

log = logging.getLogger("nuvom.worker")

#: How long a new child may take to import the kernel and the task modules.
START_TIMEOUT_SECS = 60.0
#: How many children a job may find gone (dead while idle) before one takes it: each is
#: replaced by a fresh one, and then the job fails instead of looping.
HANDOFF_TRIES = 3


def _limit(running: Running) -> float | None:
    """The attempt's time limit (its task's ``timeout_secs`` or the global default)."""
    deadline = running.job.deadline
    return None if deadline is None else deadline - running.started_mono


def _start_clock_now(running: Running) -> None:
    """The attempt starts when it reaches a ready child: a wait for one (a child starting,
    its task modules importing: seconds on a loaded host) is not the job's run time. Its
    deadline ran from the claim, so a first job on each child reached it with the deadline
    past; the soft timeout, sent before the task began, was dropped, and the job ran on
    without a limit until the kill grace (and its recorded duration held the start-up)."""
    shift = time.monotonic() - running.started_mono
    running.started_mono += shift
    running.started_at += shift
    job = running.job
    if job.deadline is not None:
        job.deadline += shift
    if running.deadline is not None:
        running.deadline += shift


class _ChildNoRetry(ChildTaskError, NoRetry):
    """A :class:`NoRetry` a task raised in a child (a subclass of it too): the settler
    fails the job at once, and the record names the task's own class (``error_type``)."""


class _ChildRetry(ChildTaskError, Retry):
    """A :class:`Retry` a task raised in a child (a subclass of it too), with its delay."""

    def __init__(self, message: str, *, error_type: str, delay_secs: float | None) -> None:
        super().__init__(message, error_type=error_type)
        self.delay_secs = delay_secs

class ProcessPool:
    """Children for a worker's executor threads; each thread holds one child at a time.

    :param slots: the worker's executor threads (one child each, plus one warm spare).
    """

    def __init__(self, kernel: Kernel, slots: int, stopping: threading.Event) -> None:
        settings = kernel.settings
        self.slots = slots
        self.grace = settings.kill_grace_secs
        self.max_tasks = settings.max_tasks_per_child
        self.max_memory = settings.max_memory_per_child
        self._limit_checked = False  # _check_memory_limit said its piece (or had none)
        self.max_age = settings.max_child_age_secs
        self.stopping = stopping
        self.kernel = kernel
        self.hello: dict[str, Any] = {}
        #: task → ``concurrency=`` as the children imported it (``None``: no limit), from
        #: each job's reply: the limits this process, which imports no task, must apply
        self.reported_limits: dict[str, int | None] = {}
        self._local = threading.local()
        self._lock = threading.Lock()
        self._spares: list[Child] = []
        self._children: set[Child] = set()
        self._start_failures = 0

    @staticmethod
    def _modules(kernel: Kernel) -> list[str]:
        """Task modules the children import at start (the manifest's, and the worker's)."""
        registry = kernel.registry
        modules = {getattr(getattr(fn, "fn", fn), "__module__", None)
                   for name in registry.names() if (fn := registry.get(name)) is not None}
        modules.update(registry.modules())
        return sorted(m for m in modules if m and m != "__main__")

    def start(self) -> None:
        """Start a child per slot and the spare (after the worker read the manifest: the
        children import its modules)."""
        self.hello = self._make_hello()
        with self._lock:
            for _ in range(self.slots + 1):
                self._spares.append(self._spawn())

    def _make_hello(self) -> dict[str, Any]:
        kernel = self.kernel
        # A plugin's nuvom_configure (an OpenTelemetry SDK set up there) must run where the
        # task runs too, or what the task records there goes nowhere. Loading every plugin
        # in each child costs 0.1-0.5 s (by the plugins installed): only when one has it.
        configure = bool(kernel.pm.hook.nuvom_configure.get_hookimpls())
        # The plugins this process disabled stay disabled there: one whose command hook
        # raised was disabled after loading, by the CLI, which a child never builds.
        return {"sys_path": list(sys.path), "data_dir": str(kernel.data_dir),
                "preload": self._modules(kernel),
                "root": str(kernel.config.root) if configure else None,
                "failed_plugins": dict(kernel.pm.failures)}

    def _spawn(self) -> Child:
        if not self.hello:  # a job run on its own (Worker.run_one), without start()
            self.hello = self._make_hello()
        child = Child(self.hello)
        self._children.add(child)
        return child

    def _take(self) -> Child | None:
        """A ready child for the calling executor (a spare if one is warm); a new spare
        starts at once, so the next replacement is warm too. ``None`` only when children
        keep dying at start and the worker is stopping."""
        while True:
            with self._lock:
                child = self._spares.pop(0) if self._spares else self._spawn()
                if not self._spares and not self.stopping.is_set():
                    self._spares.append(self._spawn())  # keep one warm
            if child.wait_ready(START_TIMEOUT_SECS):
                self._start_failures = 0
                self._check_memory_limit(child)
                return child
            silent = not child.exited()  # alive, not ready in time (an import of minutes)
            if silent:
                child.kill()  # reap() would wait for it for good, holding this executor
            exit_code = child.reap("it died while starting").get("exit_code")
            # the module it was importing killed it, unless this worker did (or is stopping)
            culprit = None if silent or self.stopping.is_set() else child.importing
            with self._lock:
                self._children.discard(child)
                first = culprit is not None and culprit in self.hello.get("preload", ())
                if first:
                    self.hello = {**self.hello, "preload": [
                        m for m in self.hello["preload"] if m != culprit]}
                if culprit is not None:  # (a spare started with it dies too: no backoff)
                    backoff = 0.0
                else:
                    self._start_failures += 1
                    backoff = min(0.5 * 2 ** (self._start_failures - 1), 30.0)
            if first:
                log.error("a pool child (pid %d) died importing task module %r (exit code "
                          "%s; its stderr says why): children no longer import it at start, "
                          "so the other tasks' jobs run, and each job of its tasks fails "
                          "when it kills its child", child.pid, culprit, exit_code)
            elif silent:
                log.error("a pool child (pid %d) was not ready %g s after it started (an "
                          "import that hangs?%s): killed; starting another in %.1f s",
                          child.pid, START_TIMEOUT_SECS, "" if child.importing is None else
                          f" it was importing task module {child.importing!r}", backoff)
            elif culprit is None:
                log.error("a pool child (pid %d) died while starting (exit code %s; its "
                          "stderr says why); starting another in %.1f s", child.pid,
                          exit_code, backoff)
            if self.stopping.wait(backoff):
                return None

    def _check_memory_limit(self, child: Child) -> None:
        """Say once if a child that has run nothing yet is already over
        ``max_memory_per_child``: every job of over ~0.2 s was then killed for its memory,
        and every other one replaced its child, without a word at start."""
        if self.max_memory is None or self._limit_checked:
            return
        self._limit_checked = True
        if (rss := child.rss() or 0) > self.max_memory:
            log.warning("max_memory_per_child (%s) is below what a fresh pool child holds "
                        "before running anything (%s): every job that runs more than a "
                        "moment will be killed for it, and every child replaced after one "
                        "job. Set it well above %s (--max-memory-per-child, "
                        "NUVOM_MAX_MEMORY_PER_CHILD)", format_size(self.max_memory),
                        format_size(rss), format_size(rss))

    def call(self, running: Running, starting: Callable[[], None]) -> Any:
        """Run the job in this thread's child; its value, or the exception to record.

        ``starting`` (``nuvom_before_execute``) is called once a child is ready for the
        job: called before, a job given back because the worker stopped while its child
        started (:class:`NoChildYet`) had begun for observers and never ended (an
        OpenTelemetry span left open).

        A child found gone when the job is sent (killed while idle: the OOM killer, a
        ``kill -9``) never saw the job, so the job is not charged for it: it goes to a
        fresh child, up to :data:`HANDOFF_TRIES` children, then fails saying so.
        """
        job = running.job
        for tries in range(1, HANDOFF_TRIES + 1):
            child = self._own(first=tries == 1)
            if tries == 1:
                _start_clock_now(running)
                starting()  # (before the arguments are encoded: a failure to encode them
                # is this attempt's error, after its before-execute observers saw it begin)
                args = to_wire(list(job.args), "arguments")
                kwargs = to_wire(job.kwargs, "arguments")
                opts = options_to_wire(job.options)  # current_job() in the child
            request = {"id": job.id, "task": job.task, "module": job.module, "args": args,
                       "kwargs": kwargs, "attempts": job.attempts, "run": job.run,
                       "headers": job.headers, "store_result": job.options.store_result,
                       "remaining": job.time_remaining(), "opts": opts, "failures":
                       job.failures, "created_at": job.created_at, "trace_id": job.trace_id,
                       "enqueued_by": job.enqueued_by}
            reply = child.run(request, job.deadline, self.grace, self.max_memory)
            if not reply.get("died"):
                break
            self._gone(child)
            if not reply.get("unsent"):
                raise self._death(running, child, reply)
            if tries == HANDOFF_TRIES:
                reply["reason"] = (f"{tries} pool children in a row were gone before the job "
                                   "reached them, this one too (something kills idle "
                                   "children)")
                raise self._death(running, child, reply)
            log.warning("job=%s task=%s: pool child pid %d was gone before the job reached "
                        "it (%s); a fresh child takes the job", job.id, job.task, child.pid,
                        ended(reply))
        self._maybe_retire(child)
        if "concurrency" in reply:
            self.reported_limits[job.task] = reply["concurrency"]
        if reply["ok"]:
            return from_wire(reply["result"])
        raise self._error(running, reply)

    def _own(self, first: bool = True) -> Child:
        """The calling executor's child, taken now if it has none.

        A job's ``first`` child waited for (seconds of task-module imports) while the
        worker was told to stop: the job goes back unrun (:class:`NoChildYet`), as a job
        not yet started does at a stop; it was run when the child became ready, after the
        first SIGINT, and a short grace period killed it part-way. Not for a later child
        (the first was found gone as the job was sent): the job has begun for its
        observers, and goes on to a fresh child as before."""
        child: Child | None = getattr(self._local, "child", None)
        if child is None:
            child = self._local.child = self._take()
            if child is None or (first and self.stopping.is_set()):
                raise NoChildYet("the worker stopped before a child process was ready")
        return child

    def _maybe_retire(self, child: Child) -> None:
        why = None
        if self.max_tasks is not None and child.tasks >= self.max_tasks:
            why = f"it ran {child.tasks} jobs (max_tasks_per_child)"
        elif self.max_age is not None and time.monotonic() - child.started >= self.max_age:
            why = f"it is older than max_child_age_secs={self.max_age:g}"
        elif self.max_memory is not None and (rss := child.rss() or 0) > self.max_memory:
            why = f"its RSS {format_size(rss)} passed max_memory_per_child"
        if why is not None:
            log.info("retiring pool child pid %d: %s", child.pid, why)
            self._gone(child)
            child.close()

    def _gone(self, child: Child) -> None:
        """The calling executor's child retired or died: a replacement spare starts now, so
        there are still a child per slot and one warm spare (retirements of several
        children at once would otherwise leave all but the first to start cold)."""
        self._local.child = None
        with self._lock:
            self._children.discard(child)
            if not self.stopping.is_set():
                self._spares.append(self._spawn())

    @staticmethod
    def _error(running: Running, reply: dict[str, Any]) -> BaseException:
        job, message, kind = running.job, reply["message"], reply.get("kind")
        exc: BaseException
        if kind == "timeout":
            exc = JobTimeoutError.of(job, _limit(running))
        elif kind == "unknown_task":
            exc = UnknownTaskError(message, import_failed=reply.get("import_failed", True))
        elif kind == "serialization":
            exc = SerializationError(message)
        elif kind == "no_retry":
            exc = _ChildNoRetry(message, error_type=reply["error_type"])
        elif kind == "retry":
            exc = _ChildRetry(message, error_type=reply["error_type"],
                              delay_secs=reply.get("delay_secs"))
        else:
            exc = ChildTaskError(message, error_type=reply["error_type"])
        exc.child_traceback = reply.get("traceback")  # type: ignore[union-attr]
        exc.details = {"cpu_secs": reply.get("cpu_secs"),  # type: ignore[union-attr]
                       "max_rss_kb": reply.get("max_rss_kb")}
        return exc

    def _death(self, running: Running, child: Child, reply: dict[str, Any]) -> BaseException:
        job, code = running.job, reply.get("exit_code", 0)
        how = ended(reply)
        details = {key: reply.get(key) for key in ("max_rss_kb", "cpu_secs")}
        details.update(signal=-code if code < 0 else None, pid=child.pid)
        exc: BaseException
        if reply.get("timed_out"):
            exc = JobTimeoutError.of(job, _limit(running), f"and {reply['reason']}; {how}")
        else:
            exc = ChildKilledError(how + (f": {reply['reason']}" if reply["reason"] else ""))
        exc.details = details  # type: ignore[union-attr]
        log.warning("job=%s task=%s: pool child pid %d %s%s; %s", job.id, job.task,
                    child.pid, how, f" ({reply['reason']})" if reply["reason"] else "",
                    "the worker is stopping" if self.stopping.is_set() else
                    "a fresh child takes its place")
        return exc

    def stop(self, force: bool, timeout: float = 5.0) -> None:
        """End every child: idle ones are asked to exit, busy ones (``force``) are killed."""
        with self._lock:
            children, self._spares = list(self._children), []
            self._children.clear()
        for child in children:
            if force:
                child.kill()
            if not child.busy and child.requests != -1:  # a busy one's thread reaps it
                child.close()
        deadline = time.monotonic() + timeout
        for child in children:
            try:
                child.proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.kill()
                child.proc.wait()

"""``@task``: turns a function into a job template with ``.delay()`` and ``.map()``."""

from __future__ import annotations

import contextlib
import functools
import gc
import inspect
import sys
import time
import types
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, TypeVar, overload

import attrs

from nuvom_kernel.arguments import Arguments
from nuvom_kernel.call_checks import PRIORITY_MAX as PRIORITY_MAX  # the PostgreSQL plugin's
from nuvom_kernel.call_checks import PRIORITY_MIN as PRIORITY_MIN  # import path
from nuvom_kernel.call_checks import (
    check_backoff,
    check_delay,
    check_eta,
    check_id,
    check_option_names,
    check_option_types,
    check_priority,
    check_queue,
)
from nuvom_kernel.dispatcher import BuiltOnRead, enqueue, enqueue_one, importable_module
from nuvom_kernel.envelope import Envelope, wire_calls
from nuvom_kernel.job import Job
from nuvom_kernel.models import Backoff, TaskOptions
from nuvom_kernel.registry import REGISTRY
from nuvom_kernel.schedules import POLICIES, Cron, Every, Schedule
from nuvom_kernel.unique import enqueue_unique

if TYPE_CHECKING:
    from nuvom_kernel.workflow.canvas import Step

__all__ = ["Task", "task"]

P = ParamSpec("P")
R = TypeVar("R")

_get_kernel: Callable[[], Any] | None = None  # nuvom_kernel.kernel.get_kernel, once imported


class Task(Generic[P, R]):
    """A registered task. Calling it runs the function inline; ``.delay()`` enqueues a job."""

    def __init__(self, fn: Callable[P, R], name: str, options: TaskOptions,
                 schedule: dict[str, Any] | None = None, *, site: str | None = None) -> None:
        self.fn = fn
        self.name = name
        self.options = options
        # A function's module is where it is defined; a callable that is no function (a
        # functools.partial, a builtin, an instance) was made a task where ``site`` says:
        # importing that module registers it (its own ``__module__`` said "functools").
        self.module = importable_module(
            fn, None if inspect.isfunction(inspect.unwrap(fn)) else site)
        #: the task's :class:`~nuvom_kernel.schedules.Schedule` (``schedule=``), or None
        self.schedule: Schedule | None = None
        if schedule:
            value = schedule.pop("schedule", None)
            if value is not None:
                self.schedule = Schedule.build(name, value, module=self.module,
                                               options=options, **schedule)
            elif schedule:  # a policy without a schedule (schedule=None alone is no schedule)
                raise ValueError(
                    f"task {name!r}: {', '.join(sorted(schedule))} "
                    f"{'applies' if len(schedule) == 1 else 'apply'} only with schedule=: "
                    "give the task a schedule (cron(...), every(...) or a cron string) or "
                    "drop the policy")
        self._arguments = Arguments(fn)
        self._params = self._arguments.params
        if self.schedule is not None:  # else each tick's job failed on a worker
            trigger = self.schedule.trigger
            self._arguments.check(name, trigger.args, trigger.kwargs,
                                  "fix the schedule's args= or kwargs=")
        # __name__, __doc__, __wrapped__ (the signature), and the function's attributes,
        # except those that would replace the task's own (a `name` another decorator set
        # became every job's task name; an `options` dict broke .delay())
        functools.update_wrapper(self, fn, updated=())
        for key, value in getattr(fn, "__dict__", {}).items():
            if key not in vars(self) and not hasattr(type(self), key):
                setattr(self, key, value)

    def __repr__(self) -> str:
        return (f"<Task {self.name} ({self.module}."
                f"{getattr(self.fn, '__qualname__', type(self.fn).__name__)})>")

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        return self.fn(*args, **kwargs)

    def _kernel(self) -> Any:
        global _get_kernel
        if _get_kernel is None:  # imported on first use: the kernel module imports tasks
            from nuvom_kernel.kernel import get_kernel

            _get_kernel = get_kernel
        return _get_kernel()

    def _call(self, args: Sequence[Any], kwargs: dict[str, Any], options: TaskOptions,
              job_id: str | None = None, *, fresh: bool = False) -> tuple[Envelope, Job]:
        """The envelope and the handle of one call. ``fresh``: ``args`` is a tuple and
        ``kwargs`` a dict nobody else holds (``.delay()``'s own), so the handle keeps them
        instead of copies."""
        self._arguments.check(self.name, args, kwargs)
        envelope = Envelope.for_call(self.name, self.module, options, args, kwargs,
                                     self._params, job_id=job_id)
        job = Job(id=envelope.id, task=self.name,
                  args=args if fresh else tuple(args),  # type: ignore[arg-type]
                  kwargs=kwargs if fresh else dict(kwargs),
                  module=self.module, options=options, created_at=envelope.created_at,
                  enqueued_by=envelope.enqueued_by, trace_id=envelope.trace_id)
        return envelope, job

    def delay(self, *args: P.args, **kwargs: P.kwargs) -> Job[R]:
        """Enqueue one job for ``fn(*args, **kwargs)`` and return its handle (for a
        ``unique`` task: the equal unfinished job's, if there is one)."""
        kernel = self._kernel()  # first: a process's first call loads the plugins, which
        # its job's created_at must not count as time spent waiting in the queue
        call = self._call(args, kwargs, self.options, fresh=True)
        if self.options.unique:
            return enqueue_unique(kernel, *call, self._params)
        return enqueue_one(kernel, *call)

    def s(self, *args: Any, **kwargs: Any) -> Step:
        """A workflow step calling this task with the previous step's result first, then
        ``args`` (see :func:`nuvom_kernel.chain`)."""
        from nuvom_kernel.workflow.canvas import Step

        return Step(self, tuple(args), dict(kwargs))

    def si(self, *args: Any, **kwargs: Any) -> Step:
        """A workflow step that ignores the previous result: it only waits for it."""
        from nuvom_kernel.workflow.canvas import Step

        return Step(self, tuple(args), dict(kwargs), takes_input=False)

    async def delay_async(self, *args: P.args, **kwargs: P.kwargs) -> Job[R]:
        """:meth:`delay` for asyncio producers: the backend call runs in a thread, so the
        caller's event loop keeps serving while the job is stored."""
        import asyncio  # loaded already where a coroutine runs; a task module need not load it

        return await asyncio.to_thread(self.delay, *args, **kwargs)

    async def map_async(self, arguments: Iterable[Any], *,
                        job_ids: Sequence[str] | None = None) -> list[Job[R]]:
        """:meth:`map` for asyncio producers (the batch is stored from a thread)."""
        import asyncio

        items = list(arguments)
        return await asyncio.to_thread(self.map, items, job_ids=job_ids)

    def apply_async(
        self,
        args: Sequence[Any] = (),
        kwargs: dict[str, Any] | None = None,
        *,
        delay_secs: float = 0.0,
        queue: str | None = None,
        priority: int | None = None,
        job_id: str | None = None,
        eta: datetime | None = None,
        expires_secs: float | None = None,
    ) -> Job[R]:
        """Like :meth:`delay`, with per-call routing (a start delay or an ``eta``, a queue,
        a priority) and an optional ``job_id`` of your own: a job id names one job for its
        life, so enqueuing an id that is queued, running or finished (and still recorded)
        creates nothing and returns a handle to that job — its task, arguments, options and
        state, not this call's — safe to call again after a crash or a timeout.

        Every argument is checked before anything is built or stored, so a bad one raises
        ``ValueError`` naming it instead of failing in a backend as if its storage were at
        fault.

        :param delay_secs: seconds before the job may start: a finite number from 0 to
            :data:`~nuvom_kernel.values.MAX_SECONDS` (366 days, as every duration setting);
            for a later start give ``eta``.
        :param eta: a timezone-aware datetime before which the job does not start, at most
            9999-12-31 23:59:59 UTC (any year a ``datetime`` holds; PostgreSQL's bound).
        :param priority: a whole number from -2**31 to 2**31-1, higher runs first.
        :param expires_secs: this job's own ``@task(expires_secs=)``: failed without running
            if not started this many seconds after now; it must be longer than the delay.
        """
        if not isinstance(args, (list, tuple)):  # a str ran task('a', 'b', 'c'), a dict
            raise TypeError(  # its keys: Celery refuses these too
                f"apply_async() args must be a tuple or list of positional arguments, got "
                f"{type(args).__name__} {args!r:.60}; for one argument write args=(value,)")
        if kwargs is not None and not isinstance(kwargs, dict):
            raise TypeError(f"apply_async() kwargs must be a dict, got {type(kwargs).__name__}")
        delay_secs = check_delay(delay_secs)
        at = None
        if eta is not None:
            if delay_secs:
                raise ValueError("give apply_async() delay_secs= or eta=, not both")
            at = check_eta(eta)
        options = self.options
        if expires_secs is not None:
            check_option_types({"expires_secs": expires_secs}, "apply_async")
            options = attrs.evolve(options, expires_secs=expires_secs)
        wait = delay_secs if at is None else at - time.time()
        if options.expires_secs is not None and wait >= options.expires_secs:
            raise ValueError(
                f"apply_async(): the job would expire before it may start (it waits "
                f"{wait:.3g} s, expires_secs is {options.expires_secs:.3g}); give a longer "
                "expires_secs (counted from now) or a shorter delay")
        if queue is not None or priority is not None:
            options = attrs.evolve(options, queue=options.queue if queue is None else
                                   check_queue(queue, "apply_async(queue=...)"),
                                   priority=options.priority if priority is None
                                   else check_priority(priority))
        kernel = self._kernel()  # a first call loads the plugins: an eta counts from after,
        # and the job's created_at (its wait) too
        call = self._call(tuple(args), dict(kwargs or {}), options, check_id(job_id))
        if at is not None:
            delay_secs = max(0.0, at - time.time())
        if options.unique and job_id is None:
            return enqueue_unique(kernel, *call, self._params, delay_secs)
        return enqueue(kernel, [call], delay_secs=delay_secs, known_ids=job_id is not None)[0]

    def map(self, arguments: Iterable[Any], *, job_ids: Sequence[str] | None = None
            ) -> list[Job[R]]:
        """Enqueue one job per item in one backend call (one transaction where supported).

        Each item is a tuple of positional arguments, a dict of keyword arguments, or a
        single non-tuple value passed as the only argument. Every argument is converted to
        wire data before anything is enqueued, so one bad argument enqueues nothing.
        ``job_ids`` (one per item) makes the batch idempotent like
        ``apply_async(job_id=...)``: items whose id exists are not enqueued again, and every
        item gets a handle.
        """
        with _collector_paused():
            return self._map(list(arguments), job_ids)

    def _map(self, items: list[Any], job_ids: Sequence[str] | None) -> list[Job[R]]:
        ids: list[str | None] = [None] * len(items)
        if job_ids is not None:
            ids = [check_id(i) for i in job_ids]
            if len(ids) != len(items):
                raise ValueError(f"map() got {len(items)} items but {len(ids)} job_ids; give "
                                 "one id per item")
        # Each item as (args, kwargs, job id); the handle gets copies of a caller's dict.
        parsed: list[tuple[tuple[Any, ...], dict[str, Any], str | None]] = [
            (item if type(item) is tuple else tuple(item), {}, job_id)
            if isinstance(item, tuple) else
            ((), dict(item), job_id) if isinstance(item, dict) else
            ((item,), {}, job_id)
            for item, job_id in zip(items, ids, strict=True)]
        options, name, module = self.options, self.name, self.module
        check = self._arguments.check
        try:
            for args, kwargs, _ in parsed:  # a call that cannot run enqueues nothing either
                check(name, args, kwargs)
        except TypeError as exc:
            raise _as_one_argument(exc, items, parsed, lambda a, k: check(name, a, k)
                                   ) from None
        # Every argument converted now, so a bad one enqueues nothing; the envelopes and
        # handles are built a run at a time as they are read.
        wired = wire_calls(name, parsed, self._params)

        def build(start: int, stop: int) -> list[tuple[Envelope, Job]]:
            envelopes = Envelope.for_wire_calls(name, module, options, wired[start:stop])
            # Job's first fields, positional: keywords were a fifth of a handle's cost
            return [(env, Job(env.id, name, args, kwargs, module, options, env.created_at,
                              env.enqueued_by, env.trace_id))
                    for env, (args, kwargs, _) in zip(envelopes, parsed[start:stop],
                                                      strict=True)]

        calls = BuiltOnRead(len(parsed), build)
        kernel = self._kernel()  # before the first envelope is built: see delay
        if self.options.unique and job_ids is None:  # one dedup check per item
            return [enqueue_unique(kernel, *call, self._params) for call in calls]
        return enqueue(kernel, calls, known_ids=job_ids is not None)


def _as_one_argument(exc: TypeError, items: list[Any],
                     parsed: list[tuple[tuple[Any, ...], dict[str, Any], str | None]],
                     check: Callable[[tuple[Any, ...], dict[str, Any]], None]) -> TypeError:
    """``exc``, saying which item failed, and why when it was a list: ``map([[1, 2]])``
    said "missing a required argument: 'y'", and the list being one argument was left to
    guess. Only on the error path: the first failing call is found again."""
    failed = None
    for i, (args, kwargs, _) in enumerate(parsed):
        try:
            check(args, kwargs)
        except TypeError:
            failed = i
            break
    if failed is None:
        return exc
    if type(items[failed]) is not list or len(items[failed]) < 2:  # which item: it did not
        return exc if len(items) == 1 else TypeError(  # say, of 1,000
            f"item #{failed} of {len(items)}: {exc}")
    return TypeError(f"{exc} (map() passes a list as one argument, so item #{failed} is "
                     f"one call with the list {items[failed]!r:.60}; write each call's "
                     f"arguments as a tuple: {tuple(items[failed])!r:.60})")


_SCHEDULE_OPTIONS = ("schedule", *POLICIES)
#: What ``@task(...)`` takes besides ``name`` and the schedule's options.
_OPTION_NAMES = tuple(f.name for f in attrs.fields(TaskOptions))


@contextlib.contextmanager
def _collector_paused() -> Iterator[None]:
    """A batch allocates several containers per job and frees none of them, so the cyclic
    garbage collector's passes over them find nothing to free — and cost 45 % of a
    ``.map()`` of 20,000 jobs (measured: 22 µs/job with it, 12 µs without). Pause it for the
    batch (it is switched back on after it if it was on before)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def checked_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """``@task``'s options without the schedule's, checked by name and type and in
    :class:`TaskOptions`' types. ``nuvom discover tasks`` runs it on the literals it
    records, to warn about an option that importing the module would refuse.

    :raises TypeError: an option ``@task`` does not take.
    :raises ValueError: a value of the wrong type or out of range.
    """
    check_option_names(options, (*_OPTION_NAMES, *_SCHEDULE_OPTIONS))
    out = {k: v for k, v in options.items() if k not in _SCHEDULE_OPTIONS}
    if out.get("unique_for") is not None:
        if out.get("unique", True) is False:  # setdefault kept it: unique_for did nothing
            raise ValueError(f"unique_for={out['unique_for']!r} makes the task unique, but "
                             "unique=False says it is not: drop one of the two")
        out["unique"] = True
    if "backoff" in out:
        out["backoff"] = check_backoff(out["backoff"])
    tags = out.get("tags")
    if tags is not None and not isinstance(tags, str | bytes):  # a str is refused (below),
        with contextlib.suppress(TypeError):  # not split into its letters
            out["tags"] = tuple(tags)
    if "priority" in out:  # the same bounds as apply_async(priority=), said alike
        out["priority"] = check_priority(out["priority"])
    check_option_types(out)
    return out


@overload
def task(fn: Callable[P, R], /) -> Task[P, R]: ...


@overload
def task(
    *,
    name: str | None = None,
    retries: int = 0,
    retry_delay_secs: float | None = None,
    backoff: str | Backoff = Backoff.FIXED,
    backoff_max_secs: float = 3600.0,
    jitter: bool = True,
    timeout_secs: float | None = None,
    store_result: bool = True,
    queue: str = "default",
    priority: int = 0,
    description: str | None = None,
    tags: Iterable[str] = (),
    schedule: Cron | Every | str | None = None,
    overlap: str = "allow",
    catch_up: str = "latest",
    catch_up_window_secs: float = 3600.0,
    concurrency: int | None = None,
    unique: bool = False,
    unique_for: float | None = None,
    expires_secs: float | None = None,
) -> Callable[[Callable[P, R]], Task[P, R]]: ...


def task(fn: Callable[..., Any] | None = None, /, *, name: str | None = None,
         **options: Any) -> Any:
    """Register ``fn`` as a task; works as ``@task`` and as ``@task(...)``.

    :param name: registry name (default: the function's name).

    The other options are keyword-only (their defaults are in the second overload):

    - ``retries``: extra attempts after a failure (0: run once).
    - ``retry_delay_secs``: base delay before a retry (default: the configured one).
    - ``backoff``: ``"fixed"`` or ``"exponential"`` (doubling, capped at
      ``backoff_max_secs``). ``jitter`` (on by default) draws each exponential delay at
      random from the upper half of that value, between half of it and all of it, so jobs
      that failed together do not retry together; a fixed delay is never jittered.
    - ``timeout_secs``: per-attempt timeout; a timed-out attempt is a failure kind.
    - ``store_result``: keep the return value (``job.get()`` needs it).
    - ``queue``: the named queue jobs go to; ``priority``: higher runs first.
    - ``description``: shown by ``nuvom list tasks`` (default: docstring's first line).
    - ``schedule``: ``cron(...)``, ``every(...)`` or a cron string (UTC): every worker's
      scheduler fires it, each tick once (see docs/scheduling.md); with ``overlap``,
      ``catch_up`` and ``catch_up_window_secs``.
    - ``concurrency``: at most this many jobs of the task run at once, across all workers.
    - ``unique``: ``.delay()`` with equal arguments returns the unfinished job;
      ``unique_for`` also returns a finished one for that many seconds.
    - ``expires_secs``: a job not started this many seconds after it was enqueued is
      failed without running (``JobExpiredError``): a notification that would arrive too
      late, a cache refresh a newer one replaced. Only its first start is checked: a job
      that started once (its worker died) runs again as at-least-once delivery says.
    """
    if name is not None and (not isinstance(name, str) or not name):
        # a number failed its first .delay() as if an argument were wrong; "" fell back
        # to the function's name
        raise ValueError(f"@task(name=...) takes a non-empty string (the name jobs and "
                         f"`nuvom enqueue` call the task by), got {name!r}")
    schedule = {k: options[k] for k in _SCHEDULE_OPTIONS if k in options}
    options = checked_options(options)

    def wrap(func: Callable[..., Any]) -> Task[Any, Any]:
        if isinstance(func, Task):
            raise TypeError(f"{func!r} is already a task; apply @task once")
        if not callable(func):
            raise TypeError(f"@task takes a function, got {func!r}")
        _not_a_method(func)
        task_name = name or getattr(func, "__name__", None)
        if not task_name:
            raise TypeError(f"{func!r} has no __name__ (a functools.partial or a callable "
                            "object): name its task with task(name=...)(...)")
        if task_name == "<lambda>":  # every lambda's name: the second replaced the first,
            # and the worker ran its code for the first's jobs
            raise TypeError("a lambda has no name of its own: name its task with "
                            "task(name=...)(lambda ...), or define it with def")
        frame = sys._getframe(1)  # where the task is made: the first frame outside here
        while frame is not None and frame.f_globals.get("__name__") == __name__:
            frame = frame.f_back  # type: ignore[assignment]
        site = None if frame is None else frame.f_globals.get("__name__")
        doc = (func.__doc__ or "").strip().splitlines()
        opts = TaskOptions(**options)
        if opts.description is None and doc:
            opts = attrs.evolve(opts, description=doc[0])
        registered: Task[Any, Any] = Task(func, task_name, opts, dict(schedule), site=site)
        REGISTRY.register(task_name, registered)
        return registered

    if fn is not None:
        return wrap(fn)
    return wrap


def _not_a_method(func: Callable[..., Any]) -> None:
    """Refuse ``@task`` on a method in a class body (``def method(self, ...)``): the task is
    the plain function, so ``Svc().method.delay(1)`` enqueued ``method(1)`` without an
    instance, and every job failed on the worker with a ``TypeError``."""
    qualname = getattr(func, "__qualname__", "")
    owner = qualname.rpartition(".")[0]
    if not inspect.isfunction(func) or not owner or owner.endswith("<locals>"):
        return
    first = next(iter(inspect.signature(func).parameters), None)
    if first in ("self", "cls"):
        raise TypeError(
            f"@task on the method {qualname}: a job carries data, not the instance its "
            f"{first!r} would be, so its jobs could not run. Make it a module-level function "
            "(or a @staticmethod) that takes what it needs as arguments")


class _CallableModule(types.ModuleType):
    """This module's type: ``task`` names both this module and the decorator that
    ``nuvom_kernel`` exports, and once the module is imported first (``from
    nuvom_kernel.task import Task``, a plugin's type hints) ``from nuvom_kernel import task``
    gives the module. Calling it decorates, so ``@task`` and ``@task(retries=3)`` work
    whichever object a caller got, and ``nuvom_kernel.task.Task`` stays the module's."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return task(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule

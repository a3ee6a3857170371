"""Every hook Nuvom calls, in one place. Plugins implement them with ``@nuvom_kernel.hookimpl``.

Call modes (pluggy): *1:N* calls every implementation and collects the non-``None`` results;
*firstresult* stops at the first non-``None`` result; *historic* is replayed to plugins
registered later. Lifecycle hooks are observers: one that raises is logged and never fails a
job. Hooks are called with keyword arguments; an implementation may accept fewer arguments
than its spec.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from nuvom_kernel.markers import hookspec

if TYPE_CHECKING:
    import click

    from nuvom_kernel.backends import QueueBackend, ResultBackend
    from nuvom_kernel.config import Config
    from nuvom_kernel.discovery import Discoverer
    from nuvom_kernel.job import Job
    from nuvom_kernel.outcome import Outcome
    from nuvom_kernel.serialization import Serializer
    from nuvom_kernel.worker import Worker


# --- bootstrap --------------------------------------------------------------------------


@hookspec(historic=True)
def nuvom_configure(config: Config) -> None:
    """Called once after every plugin is loaded, with the effective configuration.

    Call mode: historic (a plugin registered later still receives it). Per-plugin settings
    are ``config.plugin_settings(name)``. A plugin that raises here is named in the error.
    Once per process that builds a kernel: the producer's, the worker's and each process-pool
    child's (before the child imports the task modules).

    :param config: the effective :class:`~nuvom_kernel.config.Config`.

    .. versionadded:: 0.1
    """


# --- registration -----------------------------------------------------------------------


@hookspec
def nuvom_register_queue_backends() -> list[type[QueueBackend]]:
    """Contribute queue backend classes, each keyed by its ``name`` class attribute.

    Call mode: 1:N (the kernel merges every list; two classes with one name is an error
    naming both providers).

    :returns: a list of :class:`~nuvom_kernel.backends.QueueBackend` subclasses.

    .. versionadded:: 0.1
    """


@hookspec
def nuvom_register_result_backends() -> list[type[ResultBackend]]:
    """Contribute result backend classes, each keyed by its ``name`` class attribute.

    Call mode: 1:N.

    :returns: a list of :class:`~nuvom_kernel.backends.ResultBackend` subclasses.

    .. versionadded:: 0.1
    """


@hookspec
def nuvom_register_discoverers() -> list[type[Discoverer]]:
    """Contribute task discoverer classes, each keyed by its ``name`` class attribute.

    Call mode: 1:N (``nuvom discover tasks`` runs every discoverer and merges their tasks).

    :returns: a list of :class:`~nuvom_kernel.discovery.Discoverer` subclasses.

    .. versionadded:: 0.1
    """


@hookspec
def nuvom_register_serializers() -> list[type[Serializer]]:
    """Contribute payload codecs, each keyed by its ``name`` class attribute.

    Call mode: 1:N. The ``serializer`` setting picks one by name (default ``json``).

    :returns: a list of :class:`~nuvom_kernel.serialization.Serializer` subclasses.

    .. versionadded:: 0.1
    """


@hookspec
def nuvom_plugin_settings() -> dict[str, type]:
    """Declare the typed settings of ``[plugins.<name>]`` tables: one schema per table name.

    A schema is an attrs class or a dataclass whose annotated fields are the valid keys
    (``str``, ``int``, ``float``, ``bool``, ``Path``, ``Any`` or one of them ``| None``).
    The kernel converts ``NUVOM_PLUGINS__<NAME>__<KEY>`` strings and checks the file's values
    through it before any backend is built, so an unknown key or a bad value stops startup
    with an error naming the table or variable, the key and the valid keys. One schema
    covers every backend registered under that name (a queue and a result backend sharing
    ``path`` declare it once). A plugin that declares nothing gets its table as written and
    environment values as strings; one that registers backends but declares tables under
    none of their names (nor its own) is warned about, naming it.

    Call mode: 1:N (the kernel merges every mapping; two plugins declaring one table name is
    an error naming both).

    :returns: ``{table name: schema class}``, e.g. ``{"sqlite": SQLiteSettings}``.

    .. versionadded:: 0.1
    """


# --- lifecycle --------------------------------------------------------------------------


@hookspec
def nuvom_before_enqueue(job: Job) -> None:
    """Before a job is handed to the queue backend (once per job, also in ``.map()``: each
    observer for the whole batch before the backend is called; with
    ``QueueBackend.observed_as_read``, run by run as the backend reads the batch; on the
    enqueuing thread; for a workflow, every step when the workflow is submitted, the ones
    that wait for their parents too).

    Call mode: 1:N observer; an exception is logged, the job is still enqueued. What an
    observer puts in ``job.headers`` (JSON-native values: a trace context) travels with the
    job and is in ``job.headers`` on the worker.

    :param job: the job about to be enqueued.

    .. versionadded:: 0.1
    """


@hookspec
def nuvom_after_enqueue(job: Job) -> None:
    """After the queue backend accepted the job.

    Call mode: 1:N observer.

    :param job: the enqueued job.

    .. versionadded:: 0.1
    """


@hookspec
def nuvom_before_execute(job: Job) -> None:
    """In the worker thread, right before the task function runs.

    Call mode: 1:N observer. ``job.attempts`` is already the number of this attempt. In
    the process pool it is called in the worker once a child is ready for the job (the
    task runs in the child). Each call is followed by ``nuvom_after_execute`` or
    ``nuvom_on_execute_error`` for the same job, except when a job of a task this worker
    lacks is handed back during a rolling deploy (``unknown_task_grace_secs``) after a
    process-pool child found it missing.

    :param job: the job about to run.

    .. versionadded:: 0.1
    """


@hookspec
def nuvom_after_execute(job: Job, result: Any) -> None:
    """After the task returned successfully, in the worker thread.

    The outcome is then recorded and acked by the worker's settler, in a batch with other
    finished jobs; an observer that needs the stored record should not assume it is there yet.

    Call mode: 1:N observer.

    :param job: the job that ran.
    :param result: the task's return value.

    .. versionadded:: 0.1
    """


@hookspec
def nuvom_on_execute_error(job: Job, error: BaseException) -> None:
    """After an attempt failed (an exception, an unknown task or a timeout).

    Call mode: 1:N observer. Called for every failed attempt, after its outcome was decided
    (``job.status`` is RETRYING or FAILED) and handed to the settler, so an observer that
    blocks cannot hold the outcome back.

    :param job: the job whose attempt failed.
    :param error: the exception (a :class:`~nuvom_kernel.errors.JobTimeoutError` on timeout).

    .. versionadded:: 0.1
    """


@hookspec
def nuvom_on_retry(job: Job, error: BaseException, delay_secs: float) -> None:
    """After a failed attempt, once its retry is handed to the worker's settler (which
    stores it in a batch: it may not be stored yet; ``nuvom_after_settle`` follows once it
    is, its status ``retried`` or ``timed_out``, ``landed`` false if the lease was lost).

    Call mode: 1:N observer.

    :param job: the job that will run again.
    :param error: the exception of the failed attempt.
    :param delay_secs: how long until the next attempt becomes available.

    .. versionadded:: 0.1
    """


@hookspec
def nuvom_after_settle(outcome: Outcome) -> None:
    """After the worker settled an attempt: stored its outcome and acked or retried its
    lease, or found it could not because the lease was lost (``outcome.landed`` is false).

    Carries what metrics need: task, queue, status (succeeded, retried, timed_out, failed),
    attempt, enqueue, due, start and finish times, lease lost, earlier deliveries without an
    outcome (see :class:`~nuvom_kernel.outcome.Outcome`). Called on the worker's settling
    thread after each batch, once per attempt: keep it quick (count, observe, return).

    Call mode: 1:N observer.

    :param outcome: the settled attempt.

    .. versionadded:: 0.1
    """


@hookspec
def nuvom_worker_prepare(worker: Worker) -> None:
    """Before a worker starts its threads, in the process that runs it: claim what the
    plugin needs for this worker (a port to serve metrics on, a file).

    Call mode: 1:N; an exception is not isolated: it stops the worker before it leases
    anything, so a resource that cannot be had is a clear startup error instead of a worker
    running half-configured. ``Worker.start`` raises it as a ``WorkerPrepareError`` that
    names the plugin (the plugin's exception is its ``__cause__``); ``nuvom runworker``
    prints that and exits with status 1.
    ``nuvom_worker_shutdown`` then runs for every plugin, so one that prepared gives back
    what it took; a plugin must accept a shutdown for a worker it did not prepare.

    :param worker: the :class:`~nuvom_kernel.worker.Worker` about to start.

    .. versionadded:: 0.1
    """


@hookspec
def nuvom_worker_startup(worker: Worker) -> None:
    """When a worker pool has started its threads (it may already be leasing jobs).

    Call mode: 1:N observer.

    :param worker: the starting :class:`~nuvom_kernel.worker.Worker`.

    .. versionadded:: 0.1
    """


@hookspec
def nuvom_worker_shutdown(worker: Worker) -> None:
    """When a worker pool has stopped and returned its unstarted leases, or failed to
    start after ``nuvom_worker_prepare`` began (then nothing was leased).

    Call mode: 1:N observer.

    :param worker: the stopping :class:`~nuvom_kernel.worker.Worker`.

    .. versionadded:: 0.1
    """


# --- CLI --------------------------------------------------------------------------------


@hookspec
def nuvom_register_commands(cli: click.Group) -> None:
    """Add commands or groups to the ``nuvom`` command line.

    Call mode: 1:N. The kernel's own commands are registered through this hook too.

    :param cli: the root ``nuvom`` click group.

    .. versionadded:: 0.1
    """


__all__ = [
    "hookspec",
    "nuvom_after_enqueue",
    "nuvom_after_execute",
    "nuvom_after_settle",
    "nuvom_before_enqueue",
    "nuvom_before_execute",
    "nuvom_configure",
    "nuvom_on_execute_error",
    "nuvom_on_retry",
    "nuvom_plugin_settings",
    "nuvom_register_commands",
    "nuvom_register_discoverers",
    "nuvom_register_queue_backends",
    "nuvom_register_result_backends",
    "nuvom_register_serializers",
    "nuvom_worker_prepare",
    "nuvom_worker_shutdown",
    "nuvom_worker_startup",
]

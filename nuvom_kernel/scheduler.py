"""The scheduler every worker runs: any worker may fire a tick, the backend dedups it.

Each pass reads the schedule states from the result backend, plans what is due since each
schedule's ``last_tick`` (:func:`plan`: on-time ticks, missed ticks and the catch-up policy),
and writes the advanced state with a compare-and-set (``advance_schedule``). Only the
scheduler whose write lands pushes the due ticks, each under the id derived from (schedule
name, tick time) — so two workers, or twenty on ten hosts, fire each tick once, and a worker
killed mid-pass leaves the others to carry on. The pushes are idempotent by id as well.

Missed ticks (the workers were down) are counted in the state and logged, never dropped
silently; ticks skipped by ``overlap="skip"`` are counted too (``nuvom schedule list``).

Schedules are isolated from each other: one that raises (its tick math, its push) is logged
once and skipped, and the others keep firing; ``nuvom schedule list`` shows it with its error.
So are their stored states: the backend returns an entry it cannot decode as a placeholder
(:func:`~nuvom_kernel.result_backend.read_schedule_state`), that schedule fires as a new one,
and its next write replaces the damaged entry.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

import attrs

from nuvom_kernel.discovery import manifest_path, read_manifest
from nuvom_kernel.dispatcher import enqueue
from nuvom_kernel.envelope import Envelope, options_from_wire
from nuvom_kernel.errors import BackendCapabilityError, NuvomError, error_text, log_retried
from nuvom_kernel.job import Job
from nuvom_kernel.limits import apply_limits
from nuvom_kernel.models import ScheduleState
from nuvom_kernel.schedules import (
    POLICIES,
    Schedule,
    ScheduleError,
    from_manifest,
    iso,
    manual_job_id,
    schedule_job_id,
)

if TYPE_CHECKING:
    from nuvom_kernel.kernel import Kernel

__all__ = ["ON_TIME_SECS", "Plan", "Scheduler", "plan"]

log = logging.getLogger("nuvom.scheduler")
T = TypeVar("T")

#: A tick fired at most this late is on time; an older one was missed (downtime) and is
#: subject to the catch-up policy.
ON_TIME_SECS = 2.0
#: Longest sleep of the scheduler thread: newly imported tasks' schedules join this fast.
MAX_SLEEP_SECS = 1.0
#: A last tick further ahead of this clock than this is a clock's fault (said once).
CLOCK_AHEAD_SECS = 5.0


@attrs.frozen
class Plan:
    """What one pass does for one schedule: ``fire`` these ticks, record ``missed``, and
    mark everything up to ``last_tick`` handled."""

    fire: list[float]
    missed: int
    last_tick: float


def plan(schedule: Schedule, last_tick: float | None, now: float) -> Plan:
    """Due ticks since ``last_tick``, split into on-time ones (at most ``ON_TIME_SECS``
    late: always fired) and missed ones, which the catch-up policy fires (``all`` within the
    window, the ``latest`` within it) or not (``none``); ticks before the window are missed
    whatever the policy. A schedule never seen fires only its current tick."""
    if last_tick is None:  # a new schedule: nothing was missed; fire the current tick
        due = schedule.trigger.ticks(now - ON_TIME_SECS, now)
        return Plan(due[-1:], 0, due[-1] if due else now - ON_TIME_SECS)
    since = last_tick
    window_start = now - schedule.catch_up_window_secs
    missed = len(schedule.trigger.ticks(since, window_start)) if since < window_start else 0
    due = schedule.trigger.ticks(max(since, window_start), now)
    late = [t for t in due if now - t > ON_TIME_SECS]
    on_time = due[len(late):]
    caught = {"all": late, "latest": late[-1:], "none": []}[schedule.catch_up]
    missed += len(late) - len(caught)
    return Plan(caught + on_time, missed, due[-1] if due else max(since, window_start))


def tick_call(schedule: Schedule, tick: float | None, job_id: str | None = None
              ) -> tuple[Envelope, Job]:
    """The job of one tick (``tick=None``: a run fired by hand, now)."""
    trigger = schedule.trigger
    options = schedule.options or options_from_wire({})
    when = time.time() if tick is None else tick
    envelope = Envelope.for_call(schedule.name, schedule.module, options, trigger.args,
                                 trigger.kwargs, job_id=job_id or schedule_job_id(schedule.name,
                                                                                  when))
    envelope.headers = {"schedule": schedule.name, "scheduled_for": iso(when)}
    return envelope, envelope.job()


class Scheduler:
    """Fires the schedules of one process's tasks and of the discovery manifest.

    :param clock: epoch seconds now; tests pass a controllable one.
    :param fire: fire schedules (``False``: ``runworker --no-scheduler``).
    :param reported: task → limit, as a process pool's children report them (they import
        the task modules, not this process); read at every pass.
    """

    def __init__(self, kernel: Kernel, clock: Callable[[], float] = time.time, *,
                 fire: bool = True, reported: Mapping[str, int | None] | None = None
                 ) -> None:
        self.kernel = kernel
        self.clock = clock
        self.fire = fire
        self.reported = reported
        self._limits: dict[str, int] | None = None
        self._limits_error: str | None = None  # the last one logged
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._checked = False
        self._manifest_key: tuple[int, int] | None = None
        self._manifest_schedules: dict[str, Schedule] = {}
        #: Each manifest task's schedule as first read, and the tasks whose schedule the
        #: manifest changed since (see :meth:`schedules`).
        self._first_specs: dict[str, Any] | None = None
        self._edited: set[str] = set()
        #: (schedule name, error) already logged: a pass runs every second, and a schedule
        #: that keeps failing the same way is logged once, not every second.
        self._logged: set[tuple[str, str]] = set()
        #: schedules whose last tick was found ahead of this clock (logged once each)
        self._ahead: set[str] = set()

    # --- which schedules ----------------------------------------------------------------

    def schedules(self) -> dict[str, Schedule]:
        """Schedules of the manifest, overridden by those of imported tasks — but for a
        schedule the manifest changed while this process ran.

        Why the imported task's first: discovery cannot read every schedule (an interval
        held in a variable) or option (``queue=QUEUE``), and a worker's start-up discovery
        leaves the two alike. Why the manifest's trigger and policies once it changed
        them: that is `nuvom discover tasks` run after a schedule was edited, and a thread
        worker never imports a module again, so its task holds the old schedule; it kept
        firing while `nuvom schedule list` showed the new one. The task's options stay the
        imported ones (a changed task runs its old code and options), and a schedule the
        manifest cannot read is never changed by it."""
        manifest = self._from_manifest()
        found = dict(manifest)
        registry = self.kernel.registry
        for name in registry.names():
            imported = getattr(registry.get(name), "schedule", None)
            if name not in self._edited:
                if imported is not None:
                    found[name] = imported
            elif name in manifest and imported is not None:
                found[name] = attrs.evolve(manifest[name], options=imported.options,
                                           module=imported.module)
        return found

    def _from_manifest(self) -> dict[str, Schedule]:
        """The manifest's schedules, parsed again only when the file changed (a pass runs
        every second; a big project's manifest is not re-read that often)."""
        path = manifest_path(self.kernel.data_dir)
        try:
            stat = path.stat()
            key: tuple[int, int] | None = (stat.st_mtime_ns, stat.st_size)
        except OSError:
            key = None
        if self._first_specs is not None and key == self._manifest_key:
            return self._manifest_schedules
        found: dict[str, Schedule] = {}
        specs: dict[str, Any] = {}  # task -> its schedule and policies, or None: unread
        try:
            manifest = read_manifest(self.kernel.data_dir) or {}
        except ValueError as exc:
            log.warning("ignoring manifest schedules: %s", exc)
            manifest = {}
        for entry in manifest.get("tasks", []):
            opts: Mapping[str, Any] = entry.get("options") or {}
            unread = entry.get("unread") or ()
            specs[entry.get("name")] = (
                None if "schedule" in unread or "**" in unread else
                repr([opts.get(k) for k in ("schedule", *POLICIES)]))
            if opts.get("schedule") is None:
                continue
            if hidden := [u for u in unread if u not in ("schedule", "**", *POLICIES)]:
                log.warning("schedule of task %r: its %s= is not a literal, so a worker "
                            "that has not imported the task's module sends its ticks with "
                            "the default%s; write it as a literal", entry.get("name"),
                            "=, ".join(hidden), " (to queue 'default', where a worker serving "
                            "only the task's queue never runs them)" if "queue" in hidden
                            else "")
            try:
                # Built as @task(schedule=...) builds it: a spec that is neither a cron string
                # nor a cron/every dict (schedule=30) is refused with the same message.
                found[entry["name"]] = from_manifest(
                    entry["name"], opts, module=entry.get("module"),
                    task_options=options_from_wire({k: v for k, v in opts.items()
                                                    if k != "schedule" and k not in POLICIES}))
            except Exception as exc:
                log.warning("manifest schedule of task %r ignored: %s", entry.get("name"), exc)
        if self._first_specs is None:
            self._first_specs = specs
        else:
            first = self._first_specs
            edited = {name for name in {*first, *specs} if specs.get(name, "") is not None
                      and specs.get(name, "") != first.get(name, "")}
            if edited - self._edited:
                log.info("the manifest (%s) changed the schedule of task(s) %s: this worker "
                         "follows it from now on", path, ", ".join(sorted(edited - self._edited)))
            self._edited = edited
        self._manifest_key, self._manifest_schedules = key, found
        return found

    def check(self, schedules: dict[str, Schedule]) -> None:
        """Refuse to start when the result backend cannot keep schedule state."""
        results = self.kernel.results
        if schedules and not results.capabilities.schedules:
            raise BackendCapabilityError(
                f"result backend {results.name!r} cannot keep schedule state, so the "
                f"schedule= of task(s) {', '.join(sorted(schedules))} cannot run on it; use "
                "a result backend that declares 'schedules' (sqlite, file, memory, redis, "
                "postgres) or start the worker with --no-scheduler")

    # --- one pass -----------------------------------------------------------------------

    def run_pending(self, now: float | None = None) -> list[Job]:
        """Fire what is due in every schedule; the jobs this process pushed."""
        schedules = self.schedules()
        if not schedules:
            return []
        if not self._checked:
            self.check(schedules)
            self._checked = True
        states = self.kernel.results.schedule_states()
        # read after the states: a read that waited (a partition, a restart of the store)
        # while another worker fired made those ticks look ahead of a clock read before it
        now = self.clock() if now is None else now
        pushed: list[Job] = []
        for name, schedule in sorted(schedules.items()):
            # One schedule's error must not stop the others (a never-matching cron used to
            # abort every pass, so no schedule fired at all): log it once and go on.
            jobs = self._isolated(name, self._advance, schedule, states.get(name), now)
            if jobs is not None:
                self._recovered(name)
                pushed += jobs
        return pushed

    def _check_clock(self, name: str, last: float | None, now: float) -> None:
        """Say once why a schedule is silent when its last tick is ahead of this clock.

        Why: the state is shared, so a worker whose clock ran minutes ahead moved every
        schedule's last tick past the others' clocks (and a host whose clock stepped back an
        hour, past its own): each schedule then fired nothing, and said nothing, until this
        clock caught up. Firing anyway would run those ticks again."""
        if last is None or last <= now + CLOCK_AHEAD_SECS:
            if name in self._ahead and last is not None and last <= now:
                self._ahead.discard(name)
                log.info("schedule %r: this worker's clock has passed its last tick; it "
                         "fires again", name)
            return
        if name not in self._ahead:
            self._ahead.add(name)
            log.warning("schedule %r: its last tick, %s, is %.0f s ahead of this worker's "
                        "clock (a worker's clock runs ahead, or this host's clock stepped "
                        "back), so it fires nothing until this clock passes it; keep the "
                        "workers' clocks synchronised (NTP)", name, iso(last), last - now)

    def _isolated(self, name: str, step: Callable[..., T], *args: Any) -> T | None:
        """``step(*args)`` for schedule ``name``, or ``None`` if it raised: the error is
        logged the first time it happens (naming the schedule), and the schedule is tried
        again at the next pass."""
        try:
            return step(*args)
        except Exception as exc:
            text = schedule_error_text(exc)
            if (name, text) not in self._logged:
                self._logged.add((name, text))
                log.error("schedule %r skipped: %s. The other schedules keep firing; this one "
                          "is tried again at every pass (logged again only if its error "
                          "changes)", name, text, exc_info=exc)
            return None

    def _recovered(self, name: str) -> None:
        if any(logged == name for logged, _ in self._logged):
            self._logged = {entry for entry in self._logged if entry[0] != name}
            log.info("schedule %r fires again", name)

    def _advance(self, schedule: Schedule, state: ScheduleState | None, now: float
                 ) -> list[Job]:
        last = state.last_tick if state else None
        self._check_clock(schedule.name, last, now)
        todo = plan(schedule, last, now)
        if state is not None and not todo.fire and not todo.missed and todo.last_tick == last:
            return []
        # A placeholder for an unreadable stored state (``state.unreadable``) goes on as a
        # new schedule; the write below replaces the damaged entry (the backend compares
        # the damaged value, not an updated_at it could not read).
        new = (ScheduleState(schedule.name) if state is None
               else attrs.evolve(state, unreadable=None))
        busy = (schedule.overlap == "skip" and new.last_job_id is not None
                and self.kernel.queue.peek_state(new.last_job_id) is not None)
        calls = []
        for tick in todo.fire:
            if busy:
                new.skipped += 1
                continue
            calls.append(tick_call(schedule, tick))
            new.last_job_id, new.last_run = calls[-1][0].id, tick
            busy = schedule.overlap == "skip"
        new.fired += len(calls)
        new.missed += todo.missed
        new.last_tick = todo.last_tick
        new.updated_at = max(time.time(), state.updated_at + 1e-6 if state else 0.0)
        if not self.kernel.results.advance_schedule(state, new):
            return []  # another scheduler handled these ticks
        if state is not None and state.unreadable is not None:
            log.warning("schedule %r: its unreadable stored state (%s) was replaced by a "
                        "new one; the schedule fires again from this tick", schedule.name,
                        state.unreadable.problem)
        if todo.missed:
            log.warning("schedule %r: %d tick(s) missed while no worker ran it (catch_up=%r, "
                        "window %g s); handled up to %s", schedule.name, todo.missed,
                        schedule.catch_up, schedule.catch_up_window_secs, iso(todo.last_tick))
        skipped = len(todo.fire) - len(calls)
        if skipped:
            log.info("schedule %r: %d tick(s) skipped, the previous run is still queued or "
                     "running (overlap='skip')", schedule.name, skipped)
        return enqueue(self.kernel, calls) if calls else []

    def fire_now(self, name: str) -> Job:
        """``nuvom schedule run NAME``: one run now, outside the ticks."""
        schedule = self.schedules().get(name)
        if schedule is None:
            known = ", ".join(sorted(self.schedules())) or "none"
            raise NuvomError(f"no schedule named {name!r} (known: {known}); schedules come "
                             "from imported tasks and from `nuvom discover tasks`")
        envelope, job = tick_call(schedule, None, job_id=manual_job_id(name))
        return enqueue(self.kernel, [(envelope, job)])[0]

    # --- the thread ---------------------------------------------------------------------

    def start(self) -> None:
        """Start the thread; ``fire=False`` (``--no-scheduler``) only keeps the queue's
        concurrency limits up to date as tasks are imported."""
        if self.fire:
            self.check(self.schedules())
            self._checked = True
        self._thread = threading.Thread(target=self._loop, name="nuvom-scheduler",
                                        daemon=True)
        self._thread.start()

    def stop(self, wait: bool = True) -> None:
        """Fire no more ticks; ``wait=False`` returns at once (a worker that begins to
        drain calls it so, from its signal handler: a draining worker takes on no new work,
        scheduled work included, and the next worker to start catches the ticks up)."""
        self._stop.set()
        if wait and self._thread is not None:
            self._thread.join(10)

    def _loop(self) -> None:
        failures = 0
        while not self._stop.is_set():
            try:
                if self.fire:
                    self.run_pending()
                failures = 0
                wait = self._until_next() if self.fire else MAX_SLEEP_SECS
            except Exception as exc:
                failures += 1
                wait = min(0.1 * 2 ** min(failures, 5), MAX_SLEEP_SECS * 5)
                log_retried(log, exc, "scheduler pass failed; retrying in %.1f s", wait)
            self._refresh_limits()
            self._stop.wait(wait)

    def _refresh_limits(self) -> None:
        """Tasks imported (or reported by a process pool's children) since the last pass (a
        worker imports on first use) may bring limits the queue must enforce from its next
        claim on. Apart from the schedules: a
        limit the backend cannot keep (``concurrency=`` on Redis, in a module the worker
        imported after it started) failed every pass, and the schedules fired only on the
        retries. Said once per error; the schedules keep firing."""
        try:
            self._limits = apply_limits(self.kernel, self._limits, self.reported)
        except Exception as exc:
            text = f"{type(exc).__name__}: {exc}"
            if text != self._limits_error:
                self._limits_error = text
                log.error("task limits cannot be applied; schedules keep firing: %s", text)
        else:
            self._limits_error = None

    def _until_next(self) -> float:
        now = self.clock()
        nexts = [self._isolated(name, s.trigger.ticks, now, now + MAX_SLEEP_SECS, 1)
                 for name, s in sorted(self.schedules().items())]
        soonest = min((t[0] for t in nexts if t), default=now + MAX_SLEEP_SECS)
        return max(0.0, soonest - now) + 0.001


def next_run(schedule: Schedule, now: float) -> float | None:
    """The next tick after ``now`` (looking a year ahead)."""
    ticks = schedule.trigger.ticks(now, now + 366 * 86400, limit=1)
    return ticks[0] if ticks else None


def schedule_error_text(exc: BaseException) -> str:
    """An error as a log line or a ``schedule list`` cell: a ScheduleError's own message
    (it says what to fix), anything else with its type (``CroniterBadDateError: ...``).
    Its text through :func:`~nuvom_kernel.errors.error_text`: an error whose ``__str__``
    raises must not escape the isolation it is logged by."""
    text = error_text(exc)
    if not isinstance(exc, ScheduleError):
        text = f"{type(exc).__name__}: {text}"
    return text.rstrip(".")  # it is followed by more text in a log line


def schedule_rows(kernel: Any) -> list[dict[str, Any]]:
    """Every schedule the manifest and the imported tasks declare, with its stored state:
    the rows of ``nuvom schedule list`` (and of the dashboard's ``/schedules``). A schedule
    that raises gets a row with its ``error``; the others are listed as usual."""
    schedules = Scheduler(kernel).schedules()
    results = kernel.results
    states = results.schedule_states() if results.capabilities.schedules else {}
    now = time.time()
    return [describe(s, states.get(name), kernel, now) for name, s in sorted(schedules.items())]


def describe(schedule: Schedule, state: ScheduleState | None, kernel: Any, now: float
             ) -> dict[str, Any]:
    """One row of ``nuvom schedule list``; ``error`` is what the schedule raised (its next
    run, its description or its last job's status) or why its stored state could not be
    read, ``None`` when nothing did. Each part is computed on its own so one failing part
    blanks only its cell."""
    errors: list[str] = []

    def part(step: Callable[[], T]) -> T | None:
        try:
            return step()
        except Exception as exc:
            errors.append(schedule_error_text(exc))
            return None

    if state is not None and state.unreadable is not None:
        # Said in the row, not only in a worker's log: the schedule lost its history
        errors.append(f"its stored state is unreadable ({state.unreadable.problem}); it "
                      "fires as a new schedule, and its next run replaces that state")
    last_status = None
    if state is not None and state.last_job_id:
        last_job_id = state.last_job_id
        last_status = part(lambda: kernel.refresh_job(
            Job(id=last_job_id, task=schedule.name, kernel=kernel)).status.value)
    upcoming = part(lambda: next_run(schedule, now))
    return {"name": schedule.name, "task": schedule.name,
            "schedule": part(schedule.trigger.describe), "tz": schedule.trigger.tz,
            "next_run": iso(upcoming) if upcoming else None,
            "last_run": iso(state.last_run) if state and state.last_run else None,
            "last_status": last_status, "missed": state.missed if state else 0,
            "skipped": state.skipped if state else 0,
            "error": "; ".join(errors) or None}

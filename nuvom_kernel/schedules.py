"""Schedules as data: ``cron()``, ``every()`` and the tick times they produce.

A schedule is plain data held by its task; any worker may compute its ticks, and every host
must compute the *same* ticks, because a tick's job id is derived from (schedule name, tick
time) and the backends deduplicate by id. So the tick math lives here, once:

* ``every()`` ticks are multiples of the interval since the Unix epoch (UTC), whatever host
  or start time, computed in whole microseconds: tick ``k`` is ``k * interval`` exactly, so
  the same tick gets the same time (and job id) however it was reached;
* ``cron()`` expressions are parsed and iterated by ``croniter`` (imported on first use; it
  is not a kernel dependency) over *naive local wall times*, and each wall time is placed in
  its zone by our code with ``zoneinfo``: croniter's own DST handling has changed between
  releases. A wall time that does not exist (spring forward) fires once, at the instant the
  gap ends; an ambiguous one (fall back) fires once, at its first occurrence.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta, timezone
from typing import Any

import attrs

from nuvom_kernel.errors import NuvomError, SerializationError
from nuvom_kernel.serialization import to_wire
from nuvom_kernel.values import MAX_SECONDS

__all__ = ["CATCH_UP", "OVERLAP", "POLICIES", "Cron", "Every", "Schedule", "ScheduleError",
           "cron", "every", "from_manifest", "iso", "manual_job_id", "schedule_job_id",
           "trigger_from_dict"]

UTC = timezone.utc
CATCH_UP = ("latest", "all", "none")
OVERLAP = ("allow", "skip")
#: The ``@task`` options that are a schedule's policies (the manifest keeps them beside
#: ``schedule``).
POLICIES = ("catch_up", "catch_up_window_secs", "overlap")
#: Most ticks one computation returns: a catch-up window of a year of a per-second schedule
#: must not exhaust memory.
MAX_TICKS = 100_000
#: Tick times and job ids are whole microseconds.
_MICROS = 1_000_000
#: Shortest ``every()`` interval: one microsecond, the resolution of tick ids.
MIN_INTERVAL_SECS = 1 / _MICROS
#: croniter's named expressions, each one five-field expression (``@hourly`` is
#: ``0 * * * *``); ``@reboot`` is not a time and croniter refuses it.
_CRON_MACROS = frozenset({"@midnight", "@hourly", "@daily", "@weekly", "@monthly", "@yearly",
                          "@annually"})
#: Where :meth:`Cron.check` asks croniter for a first tick: any fixed instant does (cron
#: fields repeat within 28 years), and a fixed one makes the check the same on every host.
_CHECK_FROM = datetime(2000, 1, 1)


class ScheduleError(NuvomError, ValueError):
    """A schedule that cannot work: bad expression, zone, interval or policy."""


def _croniter() -> Any:
    try:
        from croniter import croniter
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ScheduleError(
            "cron schedules need the 'croniter' package (and 'tzdata' where the system has "
            "no zone database): pip install croniter tzdata — or, from a clone of "
            "Nuvom, pip install ./nuvom_plugins, which brings both") from exc
    return croniter


#: Each cron field's name and values, for saying which one is wrong.
_CRON_FIELDS = (("minute", "0-59"), ("hour", "0-23"), ("day-of-month", "1-31"),
                ("month", "1-12 or JAN-DEC"), ("day-of-week", "0-6 or SUN-SAT"))


def _bad_field(fields: Sequence[str]) -> str:
    """Which field of a five-field expression croniter refuses, and what it takes: its own
    words ("[61 * * * *] is not acceptable, out of range") name no field, and ours said
    "five fields" to an expression that has five."""
    croniter = _croniter()
    for i, (name, values) in enumerate(_CRON_FIELDS):
        alone = ["*"] * 5
        alone[i] = fields[i]
        if not croniter.is_valid(" ".join(alone)):
            return (f"its {name} field {fields[i]!r} is not valid ({name} takes {values}, "
                    "with * , - and /N steps of at least 1)")
    return ("its fields are valid alone but not together (fields: minute hour day-of-month "
            "month day-of-week)")


def _zone(tz: str) -> Any:
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    if not isinstance(tz, str):  # a ZoneInfo or timezone.utc: zoneinfo's TypeError named
        key = getattr(tz, "key", None)  # neither the task nor what tz= takes
        raise ScheduleError(f"tz= takes an IANA zone name as a string, got {tz!r}"
                            + (f": pass tz={key!r}" if isinstance(key, str) else
                               ", e.g. tz='Europe/Paris' or tz='UTC'"))
    try:
        return ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ScheduleError(f"unknown time zone {tz!r}: use an IANA name such as "
                            "'Europe/Paris' or 'UTC' (pip install tzdata if the system has "
                            "no zone database)") from exc


def iso(epoch: float) -> str:
    """An epoch as ISO 8601 in UTC (``2026-03-29T01:00:00+00:00``)."""
    return datetime.fromtimestamp(epoch, UTC).isoformat()


@attrs.frozen
class Cron:
    """``cron(expr, tz="UTC", args=(), kwargs={})``: ticks at the expression's wall times in
    ``tz``."""

    expr: str
    tz: str = "UTC"
    args: tuple[Any, ...] = ()
    kwargs: Mapping[str, Any] = attrs.field(factory=dict, eq=False, hash=False)

    def check(self) -> None:
        """Refuse at decoration what could not fire: a wrong number of fields, a field
        croniter cannot read, a date that never comes, an unknown zone.

        ``croniter.is_valid`` alone is not enough: it accepts six and seven fields (it reads
        the sixth as *seconds*, so Quartz-style ``0 */5 * * * *`` would fire 60 times every
        five hours) and dates that never exist (``0 0 31 2 *``), which then raise at every
        scheduler pass."""
        if not isinstance(self.expr, str):
            raise ScheduleError(f"a cron expression is a string, got {self.expr!r}")
        fields = self.expr.split()
        if not (len(fields) == 5 or (len(fields) == 1 and fields[0].lower() in _CRON_MACROS)):
            seconds = (" Seconds are not supported (croniter would read a sixth field as "
                       "seconds): for runs more often than once a minute use "
                       "every(seconds=...)." if len(fields) > 5 else "")
            named = (" It is none of the named ones: " + ", ".join(sorted(_CRON_MACROS)) + "."
                     if len(fields) == 1 and fields[0].startswith("@") else "")
            raise ScheduleError(f"invalid cron expression {self.expr!r}: it has {len(fields)} "
                                "field(s), a cron expression has five (minute hour "
                                f"day-of-month month day-of-week).{seconds}{named}")
        croniter = _croniter()
        if not croniter.is_valid(self.expr):
            raise ScheduleError(f"invalid cron expression {self.expr!r}: {_bad_field(fields)}")
        from croniter import CroniterBadDateError

        try:
            croniter(self.expr, _CHECK_FROM).get_next(datetime)
        except CroniterBadDateError as exc:
            raise ScheduleError(
                f"cron expression {self.expr!r} never fires: no date matches its day-of-month "
                "and month fields (such as February 30 or April 31); use a day that exists "
                "in that month, or 'L' for the last day of the month") from exc
        _zone(self.tz)

    def describe(self) -> str:
        return f"cron({self.expr})"

    def ticks(self, after: float, until: float, limit: int = MAX_TICKS) -> list[float]:
        """Tick instants ``t`` (epoch seconds) with ``after < t <= until``, oldest first."""
        zone = _zone(self.tz)
        start = datetime.fromtimestamp(after, zone).replace(tzinfo=None)
        # Start an hour early: the wall clock may have just gone back (fall back), and a
        # wall time in the repeated hour maps to an instant before ``after``.
        it = _croniter()(self.expr, start - timedelta(hours=1))
        out: list[float] = []
        while len(out) < limit:
            t = _instant(it.get_next(datetime), zone)
            if t > until:
                break
            if t > after and (not out or t > out[-1]):
                out.append(t)
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"cron": self.expr, "tz": self.tz, "args": list(self.args),
                "kwargs": dict(self.kwargs)}


def _instant(wall: datetime, zone: Any) -> float:
    """The one instant a naive wall time fires at in ``zone``: its first occurrence when it
    is ambiguous (fold=0), the end of the gap when it does not exist."""
    first = wall.replace(tzinfo=zone, fold=0)
    if first.astimezone(UTC).astimezone(zone).replace(tzinfo=None) == wall:
        return first.timestamp()
    # In a gap: fold=0 reads it with the offset before the jump, fold=1 after; the jump
    # lies between the two readings. Find it to the second.
    lo = int(wall.replace(tzinfo=zone, fold=1).timestamp())
    hi = math.ceil(first.timestamp())
    lo, hi = min(lo, hi), max(lo, hi)
    before = first.utcoffset()
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if datetime.fromtimestamp(mid, zone).utcoffset() == before:
            lo = mid
        else:
            hi = mid
    return float(hi)


@attrs.frozen
class Every:
    """``every(seconds=…, minutes=…, hours=…, days=…)``: ticks at multiples of the interval since
    the Unix epoch, so every host derives the same tick times."""

    interval: float
    args: tuple[Any, ...] = ()
    kwargs: Mapping[str, Any] = attrs.field(factory=dict, eq=False, hash=False)
    tz: str = "UTC"

    def check(self) -> None:
        """A finite interval from one microsecond (the resolution of tick ids) to
        ``MAX_SECONDS`` (366 days, the kernel's bound on every duration): an infinite or NaN
        one would raise at every scheduler pass instead of here."""
        secs = self.interval
        if isinstance(secs, bool) or not isinstance(secs, int | float):
            raise ScheduleError(f"every() takes a number of seconds, got {secs!r}")
        if secs > MAX_SECONDS:  # infinity too
            raise ScheduleError(f"every() needs a finite interval of at most {MAX_SECONDS} s "
                                f"(366 days), got {secs!r} s; for rarer runs use cron(...)")
        if not secs >= MIN_INTERVAL_SECS:  # NaN compares false: refused
            raise ScheduleError(f"every() needs a positive interval (at least 1 microsecond, "
                                f"the resolution of tick times), got {secs!r} s")

    def describe(self) -> str:
        secs = self.interval
        return f"every({secs:g}s)"

    @property
    def micros(self) -> int:
        """The interval in whole microseconds (at least 1)."""
        return max(1, round(self.interval * _MICROS))

    def ticks(self, after: float, until: float, limit: int = MAX_TICKS) -> list[float]:
        """Tick instants ``t`` with ``after < t <= until``, oldest first: tick ``k`` is
        ``k * interval`` computed in integer microseconds, so it is the same float whether
        it is the first tick of a computation or the hundredth. (Adding the interval to the
        first tick drifted: 0.6 s ticks came out as ``...577.9999998`` in one pass and
        ``...578.0`` in the next, two job ids for one tick.) ``after`` and ``until`` are
        rounded to microseconds, which also absorbs the float error of a stored tick."""
        step = self.micros
        first = round(after * _MICROS) // step + 1
        last = round(until * _MICROS) // step
        return [k * step / _MICROS for k in range(first, min(last, first + limit - 1) + 1)]

    def to_dict(self) -> dict[str, Any]:
        return {"every": self.interval, "args": list(self.args), "kwargs": dict(self.kwargs)}


def cron(expr: str, tz: str = "UTC", args: Sequence[Any] = (),
         kwargs: Mapping[str, Any] | None = None) -> Cron:
    """A cron schedule: ``expr`` is read as wall time in ``tz`` (an IANA zone name)."""
    return Cron(expr, tz, *_arguments("cron", args, kwargs))


def every(*, seconds: float = 0, minutes: float = 0, hours: float = 0, days: float = 0,
          args: Sequence[Any] = (), kwargs: Mapping[str, Any] | None = None) -> Every:
    """An interval schedule aligned to the Unix epoch (multiples of the interval, UTC)."""
    for unit, amount in (("seconds", seconds), ("minutes", minutes), ("hours", hours),
                         ("days", days)):
        if isinstance(amount, bool) or not isinstance(amount, int | float):
            # "5" would fail as "can only concatenate str", naming neither every() nor unit
            raise ScheduleError(f"every({unit}=...) takes a number, got {amount!r}; "
                                f"write every({unit}={_number_hint(amount)})")
    return Every(seconds + 60 * minutes + 3600 * hours + 86400 * days,
                 *_arguments("every", args, kwargs))


def _arguments(what: str, args: Any, kwargs: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """A schedule's call arguments, refused by name when they are not a sequence and a
    mapping: ``kwargs=[1]`` failed as "cannot convert dictionary update sequence", and
    ``args="ab"`` would have called the task with ``"a", "b"``."""
    if isinstance(args, str | bytes) or not isinstance(args, Sequence):
        raise ScheduleError(f"{what}(args=...) takes a list or tuple of the task's "
                            f"positional arguments, got {args!r}; e.g. args=[1, 'x']")
    if kwargs is not None and not isinstance(kwargs, Mapping):
        raise ScheduleError(f"{what}(kwargs=...) takes a dict of the task's keyword "
                            f"arguments, got {kwargs!r}; e.g. kwargs={{'to': 'ops'}}")
    return tuple(args), dict(kwargs or {})


def _number_hint(value: Any) -> str:
    try:
        return f"{float(value):g}"
    except (TypeError, ValueError):
        return "5"


def trigger_from_dict(data: Mapping[str, Any]) -> Cron | Every:
    """The inverse of ``to_dict`` (the discovery manifest stores schedules this way)."""
    if "cron" not in data and "every" not in data:
        raise ScheduleError(f"schedule {dict(data)!r} is neither cron(...) nor every(...)")
    if "cron" in data:
        return cron(data["cron"], data.get("tz", "UTC"), data.get("args", ()),
                    data.get("kwargs"))
    return every(seconds=float(data["every"]), args=data.get("args", ()),
                 kwargs=data.get("kwargs"))


@attrs.frozen
class Schedule:
    """One task's schedule and its policies; its name is the task's name.

    :param catch_up: after downtime, ``"latest"`` runs the most recent missed tick within
        ``catch_up_window_secs``, ``"all"`` every one of them oldest first, ``"none"`` none.
    :param overlap: ``"skip"`` skips (and records) a tick while the previous run is queued
        or running; ``"allow"`` fires it anyway.
    """

    name: str
    trigger: Cron | Every
    module: str | None = None
    options: Any = None  # the task's TaskOptions (None: defaults)
    catch_up: str = "latest"
    catch_up_window_secs: float = 3600.0
    overlap: str = "allow"

    @classmethod
    def build(cls, task: str, value: Any, *, module: str | None = None, options: Any = None,
              catch_up: str = "latest", catch_up_window_secs: float = 3600.0,
              overlap: str = "allow") -> Schedule:
        """Check everything at decoration time; errors name the task and the bad value."""
        try:
            trigger = cron(value) if isinstance(value, str) else value
            if not isinstance(trigger, Cron | Every):
                raise ScheduleError(f"schedule= takes cron(...), every(...) or a cron "
                                    f"string, got {value!r}")
            trigger.check()
            if catch_up not in CATCH_UP:
                raise ScheduleError(f"catch_up={catch_up!r} is not one of {CATCH_UP}")
            if overlap not in OVERLAP:
                raise ScheduleError(f"overlap={overlap!r} is not one of {OVERLAP}")
            try:  # each tick sends them: refuse now what no tick could (NaN, object())
                to_wire(list(trigger.args), "args")
                to_wire(dict(trigger.kwargs), "kwargs")
            except SerializationError as exc:
                raise ScheduleError(f"no job could carry the schedule's arguments: {exc}"
                                    ) from None
            window = catch_up_window_secs
            if (isinstance(window, bool) or not isinstance(window, int | float)
                    or not 0 < window <= MAX_SECONDS):  # NaN and infinity too
                raise ScheduleError(f"catch_up_window_secs must be a number of seconds "
                                    f"above 0 and at most {MAX_SECONDS} (366 days), got "
                                    f"{window!r}")
        except ScheduleError as exc:
            raise ScheduleError(f"task {task!r}: {exc}") from exc
        return cls(task, trigger, module, options, catch_up, float(catch_up_window_secs),
                   overlap)


def from_manifest(task: str, options: Mapping[str, Any], *, module: str | None = None,
                  task_options: Any = None) -> Schedule:
    """The schedule a discovery manifest entry declares (``options["schedule"]`` as
    ``to_dict`` wrote it, or a cron string, beside the :data:`POLICIES`), built and checked
    exactly as ``@task(schedule=...)`` is: discovery calls this to warn about a schedule the
    workers would refuse, the scheduler to fire it. Errors name the task and the value."""
    spec = options.get("schedule")
    try:
        value = trigger_from_dict(spec) if isinstance(spec, Mapping) else spec
    except ScheduleError as exc:
        raise ScheduleError(f"task {task!r}: {exc}") from exc
    except (KeyError, TypeError, ValueError) as exc:
        raise ScheduleError(f"task {task!r}: schedule {spec!r} cannot be read: {exc}") from exc
    policy = {k: options[k] for k in POLICIES if k in options}
    return Schedule.build(task, value, module=module, options=task_options, **policy)


def schedule_job_id(name: str, tick: float) -> str:
    """The job id of one tick: the same on every host, so a tick is pushed once.

    Derived from the tick in whole microseconds, so a tick a float error away from a whole
    second (``...577.9999998``) gets the same id as the whole second, never a seven-digit
    fraction; a whole-second tick's id has no fraction at all (the ids deployed schedules
    already use)."""
    secs, micros = divmod(round(tick * _MICROS), _MICROS)
    stamp = datetime.fromtimestamp(secs, UTC).strftime("%Y%m%dT%H%M%S")
    return f"schedule.{name}.{stamp}" + (f".{micros:06d}" if micros else "")


def manual_job_id(name: str) -> str:
    """The id of a run fired by hand (``nuvom schedule run``): unique, and readable as that
    schedule's."""
    return f"schedule.{name}.manual.{time.time_ns()}"

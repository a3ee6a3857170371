"""The checks a producer's call passes before anything is built or stored: ``@task``
options, and ``apply_async``'s and ``map``'s queue, priority, delay, eta and job id.

Kept apart from :mod:`nuvom_kernel.task` (the decorator and the ``Task`` handle) because
these are the bounds every backend stores — PostgreSQL's integer column, a key length every
index takes, a duration no setting exceeds — shared with ``nuvom runworker --queue`` and the
PostgreSQL plugin, and each check says by name what it refused instead of letting a backend
fail as if its storage were at fault.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from nuvom_kernel.hints import did_you_mean
from nuvom_kernel.models import Backoff
from nuvom_kernel.values import MAX_ETA, MAX_SECONDS, is_text

__all__ = ["MAX_JOB_ID", "PRIORITY_MAX", "PRIORITY_MIN", "check_backoff", "check_delay",
           "check_eta", "check_id", "check_option_names", "check_option_types",
           "check_priority", "check_queue"]


#: The longest job id of your own. Why a limit: an id is a key in every backend's index, and
#: PostgreSQL's (at most ~2,700 bytes an entry) refused a long one with an error its plugin
#: took for a lost connection; 255 characters are at most 1,020 bytes of UTF-8.
MAX_JOB_ID = 255


#: The priorities every backend stores: PostgreSQL's ``integer`` column (the narrowest; the
#: others hold at least that). Past it, a push failed with a database error, and a
#: non-integer failed a comparison in a backend, both reported as a storage problem.
PRIORITY_MIN, PRIORITY_MAX = -2**31, 2**31 - 1


#: ``@task`` options by the kind of value they take (``None`` allowed where it is listed).
_FLAGS = ("jitter", "store_result", "unique")
#: option -> (None allowed, 0 allowed): one message with the range each one takes (a -1 was
#: told "from 0" and then a 0 "must be > 0").
_DURATIONS = {"retry_delay_secs": (True, True), "timeout_secs": (True, False),
              "unique_for": (True, False), "expires_secs": (True, False),
              "backoff_max_secs": (False, True)}


def check_option_names(options: Mapping[str, Any], known: tuple[str, ...]) -> None:
    """Refuse an option ``@task`` does not take, with the closest it does. Why: ``retry=3``
    failed in ``TaskOptions.__init__`` with a ``TypeError`` that named no option of
    ``@task`` and no fix."""
    for option in options:
        if option not in known:
            raise TypeError(f"@task() has no option {option!r}"
                            f"{did_you_mean(option, known, lambda k: f'{k}=')}; it takes: "
                            f"name, {', '.join(sorted(known))}")


def check_backoff(value: Any) -> Backoff:
    """``value`` as a :class:`Backoff`, or an error naming the option and its values
    (Enum's own said ``'exp' is not a valid Backoff``)."""
    try:
        return Backoff(value)
    except ValueError:
        raise ValueError(f"@task(backoff=...) takes "
                         f"{' or '.join(repr(b.value) for b in Backoff)}, got {value!r}"
                         ) from None


def check_option_types(options: dict[str, Any], what: str = "@task") -> None:
    """Refuse an option of the wrong type or range by name, at decoration (``what`` is
    where it was given: ``apply_async`` passes its own name). Why: ``retries="2"`` failed
    with a bare ``'<' not supported``, and ``unique="yes"``, ``retries=True`` or a
    ``unique_for`` of 30,000 years were accepted as something else than meant.
    (TaskOptions checks ranges too: it also decodes what older producers sent.)"""
    for flag in _FLAGS:
        if flag in options and not isinstance(options[flag], bool):
            raise ValueError(f"{what}({flag}=...) takes True or False, got {options[flag]!r}")
    for name, least in (("retries", 0), ("concurrency", 1)):
        value = options.get(name)
        if name in options and not (name == "concurrency" and value is None) and (
                isinstance(value, bool) or not isinstance(value, int) or value < least):
            raise ValueError(
                f"{what}({name}=...) takes a whole number >= {least} "
                + ("(extra attempts after a failure)" if name == "retries" else
                   "(jobs of the task at once, across all workers) or None")
                + f", got {value!r}")
    for name, (none_ok, zero_ok) in _DURATIONS.items():
        value = options.get(name)
        if name not in options or (value is None and none_ok):
            continue
        if isinstance(value, bool) or not isinstance(value, int | float) or not (
                0 <= value <= MAX_SECONDS if zero_ok else 0 < value <= MAX_SECONDS):
            # (NaN compares false: refused too)
            raise ValueError(f"{what}({name}=...) takes a number of seconds "
                             f"{'from 0 to' if zero_ok else 'above 0 and at most'} "
                             f"{MAX_SECONDS} (366 days){' or None' if none_ok else ''}, got "
                             f"{value!r}")
    if "queue" in options:
        check_queue(options["queue"], f"{what}(queue=...)")
    description = options.get("description")
    if description is not None and not isinstance(description, str):
        raise ValueError(f"{what}(description=...) takes text (shown by `nuvom list tasks`) "
                         f"or None, got {description!r}")
    tags = options.get("tags", ())
    if not isinstance(tags, tuple) or not all(isinstance(tag, str) for tag in tags):
        raise ValueError(f"{what}(tags=...) takes a list of strings, e.g. tags=[\"email\"], "
                         f"got {tags!r}")


def check_queue(queue: Any, what: str) -> str:
    """``queue`` if it is a name every backend stores and a worker can be told to serve:
    refused by name otherwise (``what`` says where it was given). An empty name silently
    meant the task's own queue, a number was stored as one on some backends and failed in
    others as if their storage were at fault, and a comma made a queue that ``runworker
    --queue a,b`` (Celery's ``-Q a,b``) cannot name."""
    if not isinstance(queue, str) or not queue:
        raise ValueError(f"{what}: a queue name is a non-empty string, got {queue!r}")
    if "," in queue or not is_text(queue):
        raise ValueError(f"{what}: the queue name {queue[:40]!r} holds "
                         f"{'a comma' if ',' in queue else 'a NUL or a lone surrogate'}; a "
                         "queue name is UTF-8 text without a NUL or a comma (a comma "
                         "separates names on `nuvom runworker --queue a,b`)")
    return queue


def check_priority(priority: Any) -> int:
    """``priority`` as an ``int`` every backend stores, refused by name otherwise: a float
    was truncated in the queue but kept whole on the record, a string or a number past 32
    bits failed in the backend as if its storage were at fault. A ``bool`` is refused too
    (``priority=True`` is a mistake, not priority 1)."""
    if type(priority) is int or (isinstance(priority, numbers.Integral)
                                 and not isinstance(priority, bool)):  # numpy's ints too
        number = int(priority)
        if PRIORITY_MIN <= number <= PRIORITY_MAX:
            return number
    raise ValueError(f"priority must be a whole number from {PRIORITY_MIN} to {PRIORITY_MAX} "
                     f"(higher runs first), got {priority!r}; pass an int such as 10")


def check_delay(delay_secs: Any) -> float:
    """``delay_secs`` as a float from 0 to :data:`MAX_SECONDS`, refused by name otherwise:
    NaN ran the job at once, infinity left it QUEUED forever, and a string failed in the
    backend as if its storage were at fault. Over a year is refused like every duration
    setting (more likely milliseconds than a plan); an ``eta`` says a date outright."""
    number = (float(delay_secs) if type(delay_secs) is float or type(delay_secs) is int or (
        isinstance(delay_secs, numbers.Real) and not isinstance(delay_secs, bool))
        else math.nan)
    if not 0 <= number <= MAX_SECONDS:  # NaN compares false: refused too
        raise ValueError(f"delay_secs must be a number of seconds from 0 to {MAX_SECONDS} "
                         f"(366 days), got {delay_secs!r}; for a later start pass eta=, a "
                         "timezone-aware datetime")
    return number


def check_eta(eta: Any) -> float:
    """``eta`` as epoch seconds: a timezone-aware datetime (a naive one would be read in
    the worker's zone, not the caller's) no later than :data:`MAX_ETA`."""
    if not isinstance(eta, datetime) or eta.utcoffset() is None:
        raise ValueError(f"eta must be a timezone-aware datetime, got {eta!r}; pass a "
                         "zone, e.g. datetime(2030, 1, 1, 9, tzinfo=timezone.utc) or "
                         "datetime.now(timezone.utc) + timedelta(hours=1)")
    at = eta.timestamp()
    if at > MAX_ETA:
        raise ValueError(f"eta must be at most 9999-12-31 23:59:59 UTC (the latest time "
                         f"every backend stores), got {eta.isoformat()}")
    return at


def check_id(job_id: str | None) -> str | None:
    """A job id of your own: a non-empty string that every backend can store as a key."""
    if job_id is None:
        return None
    if not isinstance(job_id, str) or not job_id:
        raise ValueError(f"job_id must be a non-empty string, got {job_id!r}")
    if len(job_id) > MAX_JOB_ID or not is_text(job_id):
        raise ValueError(f"job_id must be at most {MAX_JOB_ID} characters of UTF-8 text "
                         f"without a NUL (\\x00), got {job_id[:40]!r}"
                         f"{'...' if len(job_id) > 40 else ''} ({len(job_id)} characters); "
                         + ("use a shorter key, or a hash of it" if len(job_id) > MAX_JOB_ID
                            else "leave out the NUL or lone surrogate, or use a hash of "
                                 "the key"))
    return job_id

"""Forward steps of the wall clock, seen against the monotonic clock.

Why: a backend on one host (SQLite, the file backend) keeps lease deadlines as wall-clock
times, which every process on the host shares (``time.monotonic`` is not comparable across
reboots). When the host's clock steps forward past a visibility timeout (NTP correcting a
drifted VM, a resumed laptop), every live lease looked expired at once, and the next claim
of any worker took them over while their workers still ran them: a clock hunt measured
every running job run twice. The workers holding them extend their leases within a third
of a visibility timeout, so for one timeout after a step such a backend takes over only
leases that had expired before it (``lapsed_before``).

A backend on a server (Redis, PostgreSQL) stamps times with the server's clock, and each
process estimates its offset from it (``server_offset``).
"""

from __future__ import annotations

import collections
import threading
import time

__all__ = ["StepWatch", "relearned_offset", "server_offset"]

#: A change of the wall clock against the monotonic one larger than this is a step, not
#: drift or jitter (NTP slews drift at most 500 ppm).
STEP_SECS = 1.0

#: Two readings of one clock (this process's and a server's on the same host) can differ by
#: their resolution (Redis and PostgreSQL give microseconds) and float rounding.
RESOLUTION_SECS = 1e-5
#: A round trip longer than this (a push of many chunks, read while it is sent) says little
#: about when in it the server read its clock: only its start is known to come before.
LONGEST_TRIP_SECS = 0.1


def server_offset(server: float, before: float, after: float) -> float:
    """The server's clock minus this process's, from the server's clock (``server``) read
    during a round trip this process's clock timed from ``before`` to ``after``.

    Why ``0.0`` when the difference fits in half the round trip: the server read its clock
    at some moment of the trip, so an offset that small is not measured, only latency. On
    one host (one clock) this keeps a job's times exactly as its producer stamped them,
    where an estimate off by its latency shifted every one of them (1.1 ms in a CI run).
    Past :data:`LONGEST_TRIP_SECS` the reading is taken as made at ``before``: a 4 s push
    whose first statement read the server's clock at once made a real offset of 3 s look
    like latency.
    """
    if after - before > LONGEST_TRIP_SECS:
        after = before
    offset = server - (before + after) / 2
    return 0.0 if abs(offset) <= (after - before) / 2 + RESOLUTION_SECS else offset


def relearned_offset(used: float, ref: float | None, before: float, after: float,
                     tolerance: float) -> float | None:
    """The server's offset to keep after a push that stamped its messages from ``used``,
    the moment it chose on the server's clock: ``None`` (keep the estimate) when that was
    ``ref``, our estimate sent with the push; else the offset measured from ``used``,
    read between ``before`` and ``after``.

    Why keep it: each process's pushes then share one offset, so its messages keep the
    order its clock gave them; a push measured anew would move by its own latency and
    reorder messages made microseconds apart. A server that refused our estimate (more
    than ``tolerance`` from its clock: a clock stepped since, a first push) teaches the
    offset again.
    """
    if ref is not None and abs(used - ref) <= tolerance / 2:
        return None
    return server_offset(used, before, after)


class StepWatch:
    """The wall clock's forward steps that this process saw, kept for a window."""

    def __init__(self) -> None:
        self._offset = time.time() - time.monotonic()
        self._steps: collections.deque[tuple[float, float]] = collections.deque()
        self._lock = threading.Lock()

    def stepped(self, now: float, window: float) -> float:
        """Seconds the wall clock stepped forward in the last ``window`` seconds (by the
        monotonic clock), ``now`` being the wall clock just read: ``0.0`` as almost always.
        A step backward only makes leases last longer, and is not counted."""
        mono = time.monotonic()
        offset = now - mono
        with self._lock:
            change = offset - self._offset
            if change > STEP_SECS:
                self._steps.append((mono, change))
            self._offset = offset  # drift and jitter are followed, never summed into a step
            while self._steps and self._steps[0][0] < mono - window:
                self._steps.popleft()
            return sum(change for _, change in self._steps)

    def lapsed_before(self, now: float, visibility: float) -> float:
        """The time a lease must have expired by to be taken over at ``now``: ``now``, or
        earlier by the forward steps of the last ``visibility`` seconds."""
        return now - self.stepped(now, visibility)

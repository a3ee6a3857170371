"""File names of the file queue: the naming scheme *is* the data structure.

A sorted listing of ``ready/`` is the claim order, and a lease's name carries its token,
expiry and delivery count, so one ``rename(2)`` both claims a message and records the lease.
See :mod:`nuvom_plugins.file.queue` for the layout.
"""

from __future__ import annotations

import itertools
import os
import random
import time
from pathlib import Path
from typing import NamedTuple

import attrs

__all__ = ["SEQ", "US", "Cache", "Name", "bump", "listdir", "parse", "read_mark", "sortkey", "us"]

SEQ = itertools.count(random.getrandbits(20))
US = 1_000_000


class Name(NamedTuple):
    """The fields encoded in a ready/delayed/leased file name."""

    sortkey: str
    queue: str  # encoded
    id: str  # encoded
    deliveries: int
    when_us: int = 0  # available_at (delayed) or expiry (leased)
    token: str = ""

    @property
    def core(self) -> str:
        return f"{self.sortkey}.{self.queue}.{self.id}"

    def ready(self, deliveries: int | None = None) -> str:
        return f"{self.core}.{self.deliveries if deliveries is None else deliveries}"


def us(seconds: float) -> int:
    return min(max(int(seconds * US), 0), 10**17 - 1)


def sortkey(priority: int, created_at: float, seq: int) -> str:
    pk = min(max(2**31 - priority, 0), 2**32 - 1)
    return f"{pk:010d}{us(created_at):017d}{seq & 0xFFFFFF:06x}"


def parse(name: str, kind: str) -> Name | None:
    """Split a file name of ``kind`` (ready/delayed/leased); ``None`` if it is malformed."""
    parts = name.split(".")
    try:
        if kind == "ready" and len(parts) == 4:
            when, token, (sortkey, queue, job, d) = 0, "", parts
        elif kind == "delayed" and len(parts) == 5:
            when, token, (sortkey, queue, job, d) = int(parts[0]), "", parts[1:]
        elif kind == "leased" and len(parts) == 6:
            when, token, (sortkey, queue, job, d) = int(parts[0]), parts[1], parts[2:]
        else:
            return None
        if len(sortkey) != 33 or not sortkey[:27].isdigit():
            return None
        return Name(sortkey, queue, job, int(d), when, token)
    except ValueError:
        return None


def bump(marker: Path) -> None:
    """Give ``marker`` a fresh mtime we pick ourselves: a kernel timestamp is too coarse
    (two pushes in one clock tick would look like none), a random low part is not."""
    value = time.time_ns() + random.getrandbits(20)
    try:
        os.utime(marker, ns=(value, value))
    except FileNotFoundError:
        marker.touch()
        os.utime(marker, ns=(value, value))


def read_mark(marker: Path) -> int:
    try:
        return os.stat(marker).st_mtime_ns
    except FileNotFoundError:
        return -1


def listdir(directory: Path) -> list[str]:
    return [n for n in os.listdir(directory) if not n.startswith(".")]


@attrs.define
class Cache:
    """A sorted listing of one directory, smallest name last (so ``pop()`` is the next);
    for ``ready/`` also split per queue, so a worker serving a few queues never walks the
    names of the others."""

    names: list[str] = attrs.field(factory=list)
    mark: int | None = None
    listed_at: float = 0.0
    ids: dict[str, list[str]] | None = None  # encoded id -> names, built by peek_state
    by_queue: dict[str, list[str]] = attrs.field(factory=dict)  # ready/ only, per queue
    bad: list[str] = attrs.field(factory=list)  # unparseable names, quarantined by claim

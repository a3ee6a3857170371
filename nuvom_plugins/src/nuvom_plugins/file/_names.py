"""File names of the file queue: the naming scheme *is* the data structure.

A sorted listing of ``ready/`` is the claim order, and a lease's name carries its token,
expiry, delivery count and failure count, so one ``rename(2)`` both claims a message and
records the lease (and one more ``rename(2)`` puts it back with a failure counted).
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
    """The fields encoded in a ready/delayed/leased file name.

    ``failures`` (attempts that ended in ``retry``) is the last part; names written before it
    existed have one part less and read as ``failures=0``.
    """

    sortkey: str
    queue: str  # encoded
    id: str  # encoded
    deliveries: int
    when_us: int = 0  # available_at (delayed) or expiry (leased)
    token: str = ""
    failures: int = 0

    @property
    def core(self) -> str:
        return f"{self.sortkey}.{self.queue}.{self.id}"

    def ready(self, deliveries: int | None = None, failures: int | None = None) -> str:
        """The name in ``ready/`` (and, behind a time prefix, in ``delayed/`` and
        ``leased/``), with the counts changed where given."""
        d = self.deliveries if deliveries is None else deliveries
        f = self.failures if failures is None else failures
        return f"{self.core}.{d}.{f}"


def us(seconds: float) -> int:
    return min(max(int(seconds * US), 0), 10**17 - 1)


def sortkey(priority: int, created_at: float, seq: int) -> str:
    pk = min(max(2**31 - priority, 0), 2**32 - 1)
    return f"{pk:010d}{us(created_at):017d}{seq & 0xFFFFFF:06x}"


def parse(name: str, kind: str) -> Name | None:
    """Split a file name of ``kind`` (ready/delayed/leased); ``None`` if it is malformed."""
    parts = name.split(".")
    prefix = {"ready": 0, "delayed": 1, "leased": 2}.get(kind)
    if prefix is None or len(parts) - prefix not in (4, 5):
        return None
    try:
        when = int(parts[0]) if prefix else 0
        token = parts[1] if prefix == 2 else ""
        sortkey, queue, job, d, *f = parts[prefix:]
        if len(sortkey) != 33 or not sortkey[:27].isdigit():
            return None
        return Name(sortkey, queue, job, int(d), when, token, int(f[0]) if f else 0)
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

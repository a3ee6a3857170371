"""Claims under concurrency limits (``@task(concurrency=N)``), in one write transaction.

Live leases are the running jobs of every process on the file, so counting them per limited
task and leasing within the room left, under SQLite's write lock, enforces a limit across
all workers. A row held back by its limit is not touched at all (no delivery counted, no
lease) and rows of other tasks are claimed past it. Saturated tasks are excluded in SQL, so
a backlog of thousands of held-back rows is not read on every claim. The plain claim
(:data:`~nuvom_plugins_sqlite.queue._CLAIM`) stays the path of a worker without limits.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["claim_limited", "count_per_task"]

_RUNNING = ("SELECT task, count(*) FROM nuvom_queue INDEXED BY nuvom_queue_waiting "
            "WHERE visible_at > ? AND token IS NOT NULL AND task IN ({tasks}) GROUP BY task")
_CANDIDATES = ("SELECT seq, task FROM nuvom_queue INDEXED BY nuvom_queue_ready "
               "WHERE visible_at IS NULL{where}{saturated} "
               "ORDER BY priority DESC, created_at, seq LIMIT ?")
_LEASE = ("UPDATE nuvom_queue SET token = lower(hex(randomblob(8))), "
          "deliveries = deliveries + 1, visible_at = ? WHERE seq IN ({seqs}) "
          "RETURNING {returning}, token, NULL")


def _marks(n: int) -> str:
    return ", ".join("?" * n)


def running_per_task(conn: sqlite3.Connection, tasks: Sequence[str], now: float
                     ) -> dict[str, int]:
    rows = conn.execute(_RUNNING.format(tasks=_marks(len(tasks))), (now, *tasks))
    return {task: int(n) for task, n in rows}


def claim_limited(conn: sqlite3.Connection, limits: Mapping[str, int], n: int,
                  where: str, names: Sequence[str], now: float, expires_at: float,
                  returning: str) -> list[tuple[Any, ...]]:
    """Lease up to ``n`` ready rows in claim order, at most ``limits[task]`` live leases
    per limited task; the rows as the plain claim returns them (its next-due hint NULL)."""
    running = running_per_task(conn, list(limits), now)
    room = {task: limit - running.get(task, 0) for task, limit in limits.items()}
    chosen: list[int] = []
    while len(chosen) < n:  # each short round saturates a task: at most len(limits) + 1
        saturated = [task for task, left in room.items() if left <= 0]
        sql = _CANDIDATES.format(
            where=where,
            saturated=(f" AND task NOT IN ({_marks(len(saturated))})" if saturated else "")
            + (f" AND seq NOT IN ({_marks(len(chosen))})" if chosen else ""))
        wanted = n - len(chosen)
        rows = conn.execute(sql, (*names, *saturated, *chosen, wanted)).fetchall()
        skipped = False
        for seq, task in rows:
            if task in room:
                if room[task] <= 0:
                    skipped = True  # saturated within this round: excluded in the next
                    continue
                room[task] -= 1
            chosen.append(seq)
        if len(rows) < wanted or not skipped:
            break
    if not chosen:
        return []
    sql = _LEASE.format(seqs=_marks(len(chosen)), returning=returning)
    return conn.execute(sql, (expires_at, *chosen)).fetchall()


def count_per_task(conn: sqlite3.Connection, tasks: Sequence[str], now: float
                ) -> dict[str, tuple[int, int]]:
    """Per task: (live leases, ready rows)."""
    if not tasks:
        return {}
    running = running_per_task(conn, tasks, now)
    ready = dict(conn.execute(
        f"SELECT task, count(*) FROM nuvom_queue WHERE visible_at IS NULL AND task IN "
        f"({_marks(len(tasks))}) GROUP BY task", tuple(tasks)).fetchall())
    return {t: (running.get(t, 0), int(ready.get(t, 0))) for t in tasks}

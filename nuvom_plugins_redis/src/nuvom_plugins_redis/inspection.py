"""The Redis queue's read side and an operator's steps: ``peek_state``, ``peek``, counts
and ``stats`` (with the quarantined messages), ``task_counts``, ``browse``, and
``cancel`` and ``clear`` (their scripts: :mod:`.admin_scripts`, :mod:`.limit_scripts`'
``TASK_COUNTS`` and :mod:`.browse`).

Why a module of its own: none of it is on a job's path (push, claim, ack, settle:
:mod:`.queue`), and each reads by the server's clock through a script, or one read-only
command, so it is read together. :class:`QueueInspection` is a base class of
:class:`~nuvom_plugins_redis.queue.RedisJobQueue` and uses its store and its ``_run``
(declared below).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import TYPE_CHECKING, Any, cast

from nuvom_kernel.backends import QueueBackend, QueueCounts, QueueStats, queue_names
from nuvom_kernel.models import JobStatus, Message
from nuvom_kernel.views import QueuedJob, quarantine_line
from nuvom_plugins_redis import limit_scripts
from nuvom_plugins_redis.browse import read_page
from nuvom_plugins_redis.connection import Store
from nuvom_plugins_redis.messages import _MESSAGE_FIELDS, _message

__all__ = ["QueueInspection"]

#: ``PEEK``'s replies.
_PEEKED = {b"R": JobStatus.RUNNING, b"T": JobStatus.RETRYING, b"Q": JobStatus.QUEUED}


class QueueInspection(QueueBackend):
    """The read side of :class:`~nuvom_plugins_redis.queue.RedisJobQueue`."""

    store: Store  # set by RedisJobQueue.__init__

    if TYPE_CHECKING:
        def _run(self, name: str, args: Sequence[Any], what: str) -> Any:
            """RedisJobQueue's call of one of its scripts."""
            raise NotImplementedError

    def peek_state(self, job_id: str) -> JobStatus | None:
        """RUNNING while a lease holds (its deadline not passed, by the server's clock);
        RETRYING while a job with failed attempts waits for its time; QUEUED otherwise — an
        expired lease included, moved back to ready or not (its worker is gone or stopped,
        and the next claim takes it)."""
        state = self._run("PEEK", [job_id], "reading a job's state")
        if not state:
            return None
        return _PEEKED[bytes(state)]

    def peek(self, job_id: str) -> Message | None:
        """One ``HMGET`` of the job's hash, which holds every field in every state (ready,
        delayed, leased): no script, and nothing written. Ack and cancel delete the hash, so
        a missing one means the id is not queued."""
        key = self.store.prefix + "j:" + job_id
        fields = cast("list[bytes | None]", self.store.call(
            lambda: self.store.client.hmget(key, _MESSAGE_FIELDS), "reading a job"))
        if any(v is None for v in fields[:-1]):  # gone (or not a whole message)
            return None
        try:
            return _message(job_id, fields)
        except (TypeError, ValueError):  # damaged: reads as absent (a claim quarantines it)
            return None

    def qsize(self, queues: Sequence[str] | None = None) -> int:
        """Waiting messages: ready, delayed, and expired leases (not yet claimed again)."""
        queues = queue_names(queues)
        return sum(c.ready + c.delayed for c in self._counts(queues).values())

    def clear(self, queues: Sequence[str] | None = None) -> int:
        """Delete every message of the queues, leased ones included (the contract: a
        cleared lease is gone, and its holder's ack reports it lost)."""
        queues = queue_names(queues)
        removed = 0
        for queue in self._queue_names(queues):
            while True:
                n = int(self._run("CLEAR", [queue], "clearing a queue"))
                removed += n
                if n == 0:
                    break
        return removed

    def cancel(self, job_id: str) -> bool:
        """Delete the message unless a live lease holds it: ready, delayed, or leased with
        its deadline passed (by the server's clock; moved back to ready yet or not), as
        ``peek_state`` reads QUEUED or RETRYING. Why an expired lease too: its worker is
        gone or stopped, and an operator must be able to stop a job that kills its worker
        before it runs again. The old lease's ack, extend and settle then report it lost;
        a lease still running is refused (its worker decides). See ``admin_scripts.CANCEL``."""
        return bool(self._run("CANCEL", [job_id], "cancelling a job"))

    def browse(self, queues: Sequence[str] | None = None, *,
               states: Collection[JobStatus] | None = None, after: str | None = None,
               limit: int = 100) -> list[QueuedJob]:
        """One page in one read-only script: nothing promoted, claimed or written; states as
        ``peek_state`` reads them, by the server's clock. See :mod:`.browse`."""
        queues = queue_names(queues)
        return read_page(self, queues, states, after, limit)

    def task_counts(self, tasks: Sequence[str]) -> dict[str, tuple[int, int]]:
        """Per task: (live leases, ready messages — held back ones included, delayed ones
        not), for ``nuvom status``. Nothing indexes messages by task, so the queues' sets are
        walked, one hash read per message, in read-only calls of at most
        ``limit_scripts.COUNT_BUDGET`` reads that resume where the one before stopped (so
        the server is never stalled: ~5 ms each); counts moved by claims meanwhile are as
        of when each part was read."""
        wanted = list(dict.fromkeys(tasks))
        totals = {task: [0, 0] for task in wanted}
        names = self._queue_names(None)
        where: list[Any] = [1, 1, 0]
        while wanted and names:
            reply = self._run("TASK_COUNTS", [limit_scripts.COUNT_BUDGET, *where, len(wanted),
                                              *wanted, *names], "counting jobs per task")
            for i, task in enumerate(wanted):
                totals[task][0] += int(reply[4 + 2 * i])
                totals[task][1] += int(reply[5 + 2 * i])
            if reply[0] == b"1":
                break
            where = [int(v) for v in reply[1:4]]
        return {task: (totals[task][0], totals[task][1]) for task in tasks}

    def stats(self) -> QueueStats:
        """Counts of the queues that hold something, as the other backends report them. The
        scripts drop a queue from ``queues`` once it is empty, and the reaper drops names an
        earlier release left there; until it has, such a name counts all zeros and is
        skipped here, so ``nuvom status`` never lists thousands of spent queue names."""
        stats = QueueStats()
        for queue, counts in self._counts(None, ages=True).items():
            if counts.ready or counts.delayed or counts.running:
                stats.queues[queue] = counts
        stats.quarantined = self._quarantined()
        return stats

    def _queue_names(self, queues: Sequence[str] | None) -> list[str]:
        if queues is not None:
            return list(queues)
        members = cast("set[bytes]", self.store.call(
            lambda: self.store.client.smembers(self.store.prefix + "queues"), "listing queues"))
        return sorted(m.decode() for m in members)

    def _counts(self, queues: Sequence[str] | None, ages: bool = False
                ) -> dict[str, QueueCounts]:
        """Counts per queue (one ``STATS`` call), with the oldest ready message's age (by
        the server's clock, which stamped it) when ``ages``."""
        names = self._queue_names(queues)
        if not names:
            return {}
        reply = self._run("STATS", names, "counting jobs")
        now = float(reply[0])
        counts = {}
        for i, queue in enumerate(names):
            # due: when the ready message due first became due (STATS); max(0, ...): never
            # a negative wait
            ready, delayed, running, due = reply[1 + i * 4:1 + i * 4 + 4]
            age = None if not ages or not due else max(0.0, now - float(due))
            counts[queue] = QueueCounts(ready=int(ready), delayed=int(delayed),
                                        running=int(running), oldest_ready_age_secs=age)
        return counts

    def _quarantined(self, limit: int = 100) -> list[str]:
        """One line per quarantined message, oldest first, for ``nuvom status``; an entry
        whose hash an operator deleted is dropped on the way."""
        key, client = self.store.prefix + "quarantine", self.store.client
        rows = cast("list[tuple[bytes, float]]", self.store.call(
            lambda: client.zrange(key, 0, limit, withscores=True), "listing quarantined jobs"))
        if not rows:
            return []
        pipe = client.pipeline(transaction=False)
        for n, _ in rows[:limit]:
            pipe.hmget(f"{key}:{n.decode()}", "xi", "xq", "xw")
        values: list[Any] = self.store.call(pipe.execute, "reading quarantined jobs")
        lines, gone = [], []
        for (n, at), (job_id, queue, why) in zip(rows, values, strict=False):
            if job_id is None:
                gone.append(n)
                continue
            lines.append(quarantine_line(_text(job_id), _text(queue), at, _text(why),
                                         f"its hash is kept as {key}:{n.decode()}"))
        if gone:
            self.store.call(lambda: client.zrem(key, *gone), "pruning quarantined jobs")
        if len(rows) > limit:
            total = int(self.store.call(lambda: client.zcard(key), "counting quarantined jobs"))
            lines.append(f"... and {total - limit} more listed in {key}")
        return lines


def _text(value: bytes | None) -> str:
    return "?" if value is None else value.decode(errors="replace")

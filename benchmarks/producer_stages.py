"""Where a producer's µs go on SQLite: each stage of ``.delay()`` and of ``.map()`` timed
alone, next to the whole call.

Run from the repository root::

    python -m benchmarks.producer_stages

Each stage is the kernel's or the plugin's own function, called ``--calls`` times on the
objects the previous stage built (the stages of one job, at ``synchronous=NORMAL``, in a
fresh directory), and reported as process CPU µs per job, the best of 5 rounds: the VM's
swings make a median of one stage against another meaningless, and the best round is the
work itself. The stages do not add up to the whole call exactly: the whole has the calls
between them, and the stages re-run what they need (a fresh id per insert).

SqliteHuey's ``add(1, 2)`` is measured the same way, for reference, and its storage write
alone (Huey's own ``BEGIN``, ``INSERT`` and ``COMMIT`` on its two-b-tree table): the floor
under Huey's enqueue, as "the plugin's push" is under ours.
"""

from __future__ import annotations

import argparse
import gc
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.throughput import HueySystem, NuvomSystem
from nuvom_kernel import events
from nuvom_kernel.dispatcher import check_capabilities
from nuvom_kernel.envelope import Envelope, wire_calls
from nuvom_kernel.job import Job
from nuvom_kernel.models import Message
from nuvom_plugins_sqlite.insert import INSERT, insert_batch, message_row


def best_us(fn: Callable[[], Any], calls: int, per: int = 1) -> float:
    """CPU µs per job of ``fn`` (which handles ``per`` jobs), the best of 5 rounds."""
    best = float("inf")
    for _ in range(5):
        started = time.process_time()
        for _ in range(calls):
            fn()
        best = min(best, (time.process_time() - started) / (calls * per) * 1e6)
    return best


def renewed(messages: list[Message]) -> list[Message]:
    """``messages`` with new ids: a push of an id already queued stores nothing."""
    return [Message(os.urandom(16).hex(), m.body, m.queue, m.priority, 0.0, m.created_at,
                    m.task) for m in messages]


def delay_stages(base: Path, calls: int) -> list[tuple[str, float]]:
    system = NuvomSystem(base / "delay", "NORMAL", False)
    try:
        add = system.add
        add.delay(1, 2)
        kernel = add._kernel()
        queue, serializer = kernel.queue, kernel.serializer
        env, job = add._call((1, 2), {}, add.options, fresh=True)
        message = env.to_message(serializer)
        before = events.observers(kernel.pm, "nuvom_before_enqueue")
        after = events.observers(kernel.pm, "nuvom_after_enqueue")
        conn = queue._db._write_conn()[1]
        row = list(message_row(message, time.time()))

        def new_id() -> None:
            row[0] = os.urandom(16).hex()

        def raw_insert() -> None:
            new_id()
            conn.execute(INSERT, row)

        def push() -> None:
            queue.push(renewed([message]))

        return [
            ("the whole add.delay(1, 2)", best_us(lambda: add.delay(1, 2), calls)),
            ("  envelope and handle (Task._call)",
             best_us(lambda: add._call((1, 2), {}, add.options, fresh=True), calls)),
            ("  capability check", best_us(lambda: check_capabilities(kernel, job.options,
                                                                      0.0), calls)),
            (f"  before-enqueue observers ({len(before)})",
             best_us(lambda: events.call_per_job(before, "nuvom_before_enqueue", [job]),
                     calls)),
            ("  message (Envelope.to_message)", best_us(lambda: env.to_message(serializer),
                                                        calls)),
            ("  the plugin's push (row, write lock, INSERT)",
             best_us(push, calls) - best_us(lambda: renewed([message]), calls)),
            ("    of which the INSERT alone (autocommit)",
             best_us(raw_insert, calls) - best_us(new_id, calls)),
            ("  wake-ups (this process, other processes)", best_us(queue.notify, calls)),
            (f"  after-enqueue observers ({len(after)})",
             best_us(lambda: events.call_each(after, "nuvom_after_enqueue", {"job": job}),
                     calls)),
        ]
    finally:
        system.close()


def map_stages(base: Path, calls: int, size: int) -> list[tuple[str, float]]:
    system = NuvomSystem(base / "map", "NORMAL", False)
    try:
        add = system.add
        add.map([(1, 2)] * 2)
        kernel = add._kernel()
        serializer = kernel.serializer
        parsed: list[tuple[tuple[Any, ...], dict[str, Any], str | None]] = \
            [((1, 2), {}, None)] * size
        wired = wire_calls(add.name, parsed, add._params)
        envs = Envelope.for_wire_calls(add.name, add.module, add.options, wired)
        messages = Envelope.to_messages(envs, serializer)
        db = kernel.queue._db
        rounds = max(1, calls // size)

        def store() -> None:
            fresh = renewed(messages)
            db.transaction(lambda conn: insert_batch(conn, fresh, time.time()))

        return [
            (f"the whole add.map() of {size}",
             best_us(lambda: add.map([(1, 2)] * size), rounds, size)),
            ("  arguments to wire data (wire_calls)",
             best_us(lambda: wire_calls(add.name, parsed, add._params), rounds, size)),
            ("  envelopes (Envelope.for_wire_calls)",
             best_us(lambda: Envelope.for_wire_calls(add.name, add.module, add.options,
                                                     wired), rounds, size)),
            ("  handles (Job)", best_us(lambda: [
                Job(e.id, add.name, a, k, add.module, add.options, e.created_at,
                    e.enqueued_by, e.trace_id) for e, (a, k, _) in zip(envs, parsed,
                                                                        strict=True)],
                rounds, size)),
            ("  messages (Envelope.to_messages)",
             best_us(lambda: Envelope.to_messages(envs, serializer), rounds, size)),
            ("  the plugin's insert, one transaction",
             best_us(store, rounds, size) - best_us(lambda: renewed(messages), rounds, size)),
        ]
    finally:
        system.close()


def huey_delay(base: Path, calls: int) -> list[tuple[str, float]]:
    system = HueySystem(base / "huey", "NORMAL", False)
    try:
        system.enqueue_one(10)
        storage = system.app.huey.storage
        data = storage.dequeue()  # one of add(1, 2)'s stored messages, as Huey wrote it
        return [("SqliteHuey add(1, 2), whole", best_us(lambda: system.enqueue_one(1), calls)),
                ("  its storage write (SqliteStorage.enqueue)",
                 best_us(lambda: storage.enqueue(data), calls))]
    finally:
        system.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.producer_stages",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=5_000, help="jobs per stage and round")
    parser.add_argument("--map-size", type=int, default=10_000)
    args = parser.parse_args(argv)
    gc.disable()  # as .map() does; a .delay() loop frees what it allocates either way
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        rows = delay_stages(base, args.calls)
        rows += huey_delay(base, args.calls)
        rows += map_stages(base, args.calls, args.map_size)
    print("stage                                            CPU µs per job (best of 5)")
    for label, us in rows:
        print(f"{label:48s} {us:8.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

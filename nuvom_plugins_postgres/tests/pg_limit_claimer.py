"""A claiming process for the concurrency-limit race (``test_postgres_concurrency.py``).

It opens its own queue (its own pool of connections) on the namespace's schema, claims
under ``{TASK: LIMIT}``, prints ``ready`` and waits for a line on stdin, so that every
process starts claiming at once. Then it claims ``CLAIM_N`` at a time until no job of the
schema is left, after each claim counting the task's live leases in the database (every
holder's: one snapshot, so never more than the limit if the limit holds), and acks what it
got. It prints one JSON line: ``{"claimed": [ids], "most_live": n}``.

Usage: python pg_limit_claimer.py DSN NAMESPACE TASK LIMIT CLAIM_N
"""

from __future__ import annotations

import json
import sys
import time

import psycopg
from psycopg import sql

from nuvom_kernel.backends import BackendContext
from nuvom_plugins_postgres import PostgresQueue

DEADLINE_SECS = 60.0


def main() -> None:
    dsn, namespace, task, limit, claim_n = sys.argv[1:6]
    queue = PostgresQueue.from_settings({"dsn": dsn}, BackendContext(namespace=namespace))
    queue.set_concurrency_limits({task: int(limit)})
    count = sql.SQL("SELECT count(*) FROM {}.jobs WHERE task = %s AND state = 2 "
                    "AND lease_expires_at > clock_timestamp()").format(
                        sql.Identifier(queue.schema))
    claimed: list[str] = []
    most = 0
    with psycopg.connect(dsn, autocommit=True) as conn:
        print("ready", flush=True)
        sys.stdin.readline()
        deadline = time.monotonic() + DEADLINE_SECS
        while time.monotonic() < deadline:
            got = queue.claim(int(claim_n))
            if got:
                row = conn.execute(count, (task,)).fetchone()
                most = max(most, int(row[0]) if row else 0)
                claimed.extend(le.id for le in got)
                assert queue.ack_many(got) == [True] * len(got)
            elif queue.qsize() == 0:
                break  # what is left is leased by another process, which acks it
    queue.close()
    print(json.dumps({"claimed": claimed, "most_live": most}), flush=True)


if __name__ == "__main__":
    main()

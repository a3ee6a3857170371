"""Broken queue backends: each subclasses the reference
:class:`~nuvom_kernel.testing.stubs.StubQueue` and changes one method, breaking one promise of
the queue contract."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import attrs

from nuvom_kernel.backends import queue_names
from nuvom_kernel.models import JobStatus, Lease, Message
from nuvom_kernel.testing.stubs import StubQueue

__all__ = [
    "EXPECTED_FAILURES", "CancelAnythingQueue", "ContextIgnoringQueue", "CountingReleaseQueue",
    "DeafQueue", "EagerStepsQueue", "ForgetfulRetryQueue", "GreedyBatchQueue",
    "ImpatientRetryQueue", "LeakyQsizeQueue", "LifoQueue", "MovingQuarantineQueue",
    "NoVisibilityTimeoutQueue",
    "NonWaitingQueue", "NoopExtendManyQueue", "NoopExtendQueue", "PerClaimLimitQueue",
    "PriorityLosingPutBackQueue", "RacyClaimQueue", "ReplacingPushQueue", "TextBodyQueue",
    "TieLosingBrowseQueue", "UnfencedAckManyQueue", "UnfencedExtendManyQueue", "UnfencedQueue",
    "UnfencedSettleQueue", "UnfencedWorkflowQueue", "VagueStateQueue", "WriteBlindSettleQueue",
]


class LifoQueue(StubQueue):
    """Hands out the newest message first within a priority."""

    name = "fake-lifo"

    def _order(self, entry: Any) -> tuple[int, float]:
        return (-entry.message.priority, -entry.message.created_at)


class UnfencedQueue(StubQueue):
    """Ignores fencing tokens: anyone holding any lease on the id may ack/retry/extend."""

    name = "fake-unfenced"

    def _held(self, lease: Lease) -> Any:
        return self._entries.get(lease.id)


class NoVisibilityTimeoutQueue(StubQueue):
    """Never recovers an un-acked lease: a crashed worker's job is lost forever."""

    name = "fake-no-visibility"

    def claim(self, n: int, queues: Sequence[str] | None = None) -> list[Lease]:
        with self._lock:
            for entry in self._entries.values():
                if entry.token is not None:
                    entry.expires_at = float("inf")
        return super().claim(n, queues)


class ContextIgnoringQueue(StubQueue):
    """Built on its default lease length, not the context's: ``from_settings`` forgot to
    pass ``context.visibility_timeout_secs`` on (the lease tests only timed out)."""

    name = "fake-context-ignoring"

    @classmethod
    def from_settings(cls, settings: Any, context: Any) -> ContextIgnoringQueue:
        return cls()


class NoopExtendQueue(StubQueue):
    """Says it extended the lease but did not: long jobs get run twice."""

    name = "fake-noop-extend"

    def extend(self, lease: Lease, secs: float) -> bool:
        with self._lock:
            return self._held(lease) is not None


class _SoundExtend(StubQueue):
    """``extend`` kept sound (the stub's fenced ``extend_many`` of one lease) for the fakes
    that break ``extend_many`` alone: the contract must catch the batch call by itself."""

    def extend(self, lease: Lease, secs: float) -> bool:
        held = super().extend_many([lease], secs)[0]
        if held and secs <= 0:
            self.notify()
        return held


class NoopExtendManyQueue(_SoundExtend):
    """``extend`` works, but ``extend_many`` — all the worker's lease monitor calls — only
    reports which leases are held: a job running past the visibility timeout is claimed
    again while it runs, again and again ("lost its lease")."""

    name = "fake-noop-extend-many"

    def extend_many(self, leases: Sequence[Lease], secs: float) -> list[bool]:
        with self._lock:
            return [self._held(lease) is not None for lease in leases]


class UnfencedExtendManyQueue(_SoundExtend):
    """``extend`` checks the token, ``extend_many`` extends by job id: a worker whose lease
    was taken over is told it still holds the job."""

    name = "fake-unfenced-extend-many"

    def extend_many(self, leases: Sequence[Lease], secs: float) -> list[bool]:
        with self._lock:
            entries = [self._entries.get(lease.id) for lease in leases]
            for entry in entries:
                if entry is not None and entry.token is not None:
                    entry.expires_at = time.time() + secs
            return [entry is not None and entry.token is not None for entry in entries]


class UnfencedAckManyQueue(StubQueue):
    """``ack`` checks the token, ``ack_many`` — what the worker's settler calls — deletes by
    job id: a worker that lost its lease deletes the job from under its new holder."""

    name = "fake-unfenced-ack-many"

    def ack(self, lease: Lease) -> bool:
        return super().ack_many([lease])[0]  # the stub's, which is fenced

    def ack_many(self, leases: Sequence[Lease]) -> list[bool]:
        with self._lock:
            gone = []
            for lease in leases:
                found = lease.id in self._entries
                if found:
                    self._delete(lease.id)
                gone.append(found)
            return gone


class PriorityLosingPutBackQueue(StubQueue):
    """Puts a message back — retried, released or its lease expired — at the default
    priority: an urgent job that failed once waits behind the whole backlog."""

    name = "fake-priority-losing-put-back"

    def _unlease(self, entry: Any) -> None:
        super()._unlease(entry)
        entry.message = attrs.evolve(entry.message, priority=0)


class ImpatientRetryQueue(StubQueue):
    """Ignores the retry delay: a failing job is retried immediately, in a hot loop."""

    name = "fake-impatient-retry"

    def retry(self, lease: Lease, *, delay_secs: float, body: bytes | None = None) -> bool:
        return super().retry(lease, delay_secs=0, body=body)


class CountingReleaseQueue(StubQueue):
    """Release counts as a delivery (so released jobs drift toward the dead-letter limit)."""

    name = "fake-counting-release"

    def release(self, lease: Lease, *, delay_secs: float = 0.0) -> bool:
        if not super().release(lease, delay_secs=delay_secs):
            return False
        with self._lock:
            self._entries[lease.id].deliveries += 1  # undo the undo
        return True


class RacyClaimQueue(StubQueue):
    """Picks messages and marks them leased in two steps: concurrent consumers collide."""

    name = "fake-racy-claim"
    #: its claim ignores limits, so it does not promise them (the limit tests skip it)
    capabilities = attrs.evolve(StubQueue.capabilities, concurrency=False)

    def claim(self, n: int, queues: Sequence[str] | None = None) -> list[Lease]:
        now = time.time()
        with self._lock:
            picked = sorted((e for e in self._entries.values()
                             if e.claimable(now) and (queues is None or e.message.queue in queues)),
                            key=lambda e: (*self._order(e), e.seq))[:max(n, 0)]
        time.sleep(0.002)  # the window another consumer walks through
        with self._lock:
            return [self._lease(entry, now) for entry in picked]


class GreedyBatchQueue(StubQueue):
    """Returns every available message from a batch claim, whatever ``n`` says."""

    name = "fake-greedy-batch"

    def claim(self, n: int, queues: Sequence[str] | None = None) -> list[Lease]:
        return super().claim(n if n <= 1 else 1 << 30, queues)


class NonWaitingQueue(StubQueue):
    """``dequeue(timeout)`` never waits: callers spin on an empty queue."""

    name = "fake-non-waiting"

    def pop_batch(self, n: int, timeout: float = 0.0,
                  queues: Sequence[str] | None = None) -> list[Lease]:
        return super().pop_batch(n, 0.0, queues)


class DeafQueue(StubQueue):
    """Declares ``blocking_dequeue`` but only polls: in-process pushes wake nobody."""

    name = "fake-deaf"

    def notify(self) -> None:
        pass


class LeakyQsizeQueue(StubQueue):
    """Counts leased messages as waiting."""

    name = "fake-leaky-qsize"

    def qsize(self, queues: Sequence[str] | None = None) -> int:
        queues = queue_names(queues)
        with self._lock:
            return sum(1 for e in self._entries.values()
                       if queues is None or e.message.queue in queues)


class TextBodyQueue(StubQueue):
    """Stores bodies as text, mangling anything that is not UTF-8."""

    name = "fake-text-body"

    def push(self, messages: Sequence[Message]) -> list[bool]:
        return super().push([attrs.evolve(m, body=m.checked_body().decode("utf-8", "replace")
                                          .encode()) for m in messages])


class ReplacingPushQueue(StubQueue):
    """A push of a queued id replaces the message (a second run of a running job)."""

    name = "fake-replacing-push"

    def push(self, messages: Sequence[Message]) -> list[bool]:
        with self._lock:
            for message in messages:
                self._entries.pop(message.id, None)
        return super().push(messages)


class ForgetfulRetryQueue(StubQueue):
    """Does not count failed attempts on retry: crash re-deliveries and retries mix."""

    name = "fake-forgetful-retry"

    def retry(self, lease: Lease, *, delay_secs: float, body: bytes | None = None) -> bool:
        done = super().retry(lease, delay_secs=delay_secs, body=body)
        with self._lock:
            entry = self._entries.get(lease.id)
            if entry is not None:
                entry.message = attrs.evolve(entry.message, failures=0)
        return done


class UnfencedSettleQueue(StubQueue):
    """Settles without checking the lease: a stale worker's outcome lands."""

    name = "fake-unfenced-settle"

    def settle_many(self, settlements: Sequence[Any], results: Any) -> list[bool] | None:
        landed = []
        for item in settlements:
            results.put(item.record)
            with self._lock:
                self._entries.pop(item.lease.id, None)
            landed.append(True)
        return landed


class WriteBlindSettleQueue(StubQueue):
    """Settles only held leases, but acks them whether or not the result backend took the
    record: an outcome its fence refused is lost, and the job never runs again."""

    name = "fake-write-blind-settle"

    def settle_many(self, settlements: Sequence[Any], results: Any) -> list[bool] | None:
        landed = []
        for item in settlements:
            with self._lock:
                held = self._held(item.lease) is not None
            if held:
                results.put(item.record)
                held = self.ack(item.lease) if item.retry_in is None else self.retry(
                    item.lease, delay_secs=item.retry_in, body=item.body)
            landed.append(held)
        return landed


class VagueStateQueue(StubQueue):
    """Reports every message it holds as QUEUED, leased or delayed alike."""

    name = "fake-vague-state"

    def peek_state(self, job_id: str) -> JobStatus | None:
        return JobStatus.QUEUED if super().peek_state(job_id) is not None else None


class CancelAnythingQueue(StubQueue):
    """Cancels leased messages too, pulling a job out from under its worker."""

    name = "fake-cancel-anything"

    def cancel(self, job_id: str) -> bool:
        with self._lock:
            return self._entries.pop(job_id, None) is not None


class MovingQuarantineQueue(StubQueue):
    """Moves a message to quarantine instead of copying it: the ack that follows (of the
    job recorded FAILED) is refused, and the job is delivered to nobody, forever leased."""

    name = "fake-moving-quarantine"

    def copy_to_quarantine(self, lease: Lease, reason: str) -> bool:
        copied = super().copy_to_quarantine(lease, reason)
        with self._lock:
            if copied:
                self._delete(lease.id)
        return copied


class TieLosingBrowseQueue(StubQueue):
    """Pages by ``created_at`` alone: a message made in the same instant as the last one of
    a page is never listed (``nuvom purge queue`` would leave it behind)."""

    name = "fake-tie-losing-browse"

    def browse(self, queues: Sequence[str] | None = None, *, states: Any = None,
               after: str | None = None, limit: int = 100) -> list[Any]:
        if after is not None:
            after = f"{after.partition('|')[0]}|\U0010ffff"  # past every id of that instant
        return super().browse(queues, states=states, after=after, limit=limit)


class PerClaimLimitQueue(StubQueue):
    """Counts a concurrency limit within each claim only, not the leases already out: every
    claim hands out up to the limit again, so N workers run N times the limit."""

    name = "fake-per-claim-limit"

    def _running_per_task(self) -> dict[str, int]:
        return {}


class UnfencedWorkflowQueue(StubQueue):
    """Advances workflows for any lease, held or lost: a stale worker releases steps."""

    name = "fake-unfenced-workflow"

    def holds(self, lease: Any) -> bool:
        return True


class EagerStepsQueue(StubQueue):
    """Pushes every step of a workflow at submit: dependents run before their parents."""

    name = "fake-eager-steps"

    def workflow_transaction(self, fn: Any, workflows: Sequence[str] = ()) -> Any:
        def eager(txn: Any) -> Any:
            insert = txn.insert

            def insert_all(flow: Any, output: Any, nodes: Any, messages: Any) -> bool:
                self.push(messages)
                return bool(insert(flow, output, nodes, messages))
            txn.insert = insert_all
            return fn(txn)
        return super().workflow_transaction(eager, workflows)


#: Queue fake class name -> the contract tests it must fail (and no others).
#: Parametrized tests are listed with their parameter, exactly as pytest names them.
EXPECTED_FAILURES: dict[str, set[str]] = {
    "LifoQueue": {"test_fifo_within_a_priority", "test_higher_priority_first",
                  "test_claim_order_survives_retry_release_and_expiry",
                  "test_browse_filters_by_queue_and_state",
                  "test_a_limit_holds_back_the_surplus_and_claims_past_it",
                  "test_a_held_back_message_costs_nothing_and_keeps_its_place",
                  *(f"test_every_way_a_lease_ends_gives_its_room_back[{ending}]"
                    for ending in ("ack", "ack_many", "retry", "release", "settle_many"))},
    "UnfencedQueue": {"test_stale_lease_is_fenced", "test_forged_token_changes_nothing",
                      "test_release_returns_at_once_with_count_restored",
                      "test_settle_many_is_fenced_and_atomic",
                      "test_ack_many_is_fenced_per_lease",
                      "test_extend_many_is_fenced_per_lease",
                      "test_workflow_advance_by_a_lost_lease_changes_nothing",
                      "test_copy_to_quarantine_keeps_the_message_past_its_ack"},
    "NoVisibilityTimeoutQueue": {
        "test_unacked_lease_becomes_visible_after_visibility_timeout",
        "test_stale_lease_is_fenced", "test_retry_counts_failures_release_does_not",
        "test_claim_order_survives_retry_release_and_expiry",
        "test_workflow_advance_by_a_lost_lease_changes_nothing",
        "test_an_expired_lease_stops_counting_and_extend_keeps_one"},
    "ContextIgnoringQueue": {"test_unacked_lease_becomes_visible_after_visibility_timeout",
                             "test_stale_lease_is_fenced", "test_extend_keeps_lease_alive",
                             "test_extend_many_keeps_every_lease_alive",
                             "test_an_expired_lease_stops_counting_and_extend_keeps_one",
                             "test_workflow_advance_by_a_lost_lease_changes_nothing"},
    "NoopExtendQueue": {"test_extend_keeps_lease_alive",
                        "test_an_expired_lease_stops_counting_and_extend_keeps_one",
                        "test_retry_counts_failures_release_does_not",
                        "test_an_expired_lease_counts_as_waiting",
                        "test_cancel_removes_a_message_whose_lease_expired",
                        "test_claim_order_survives_retry_release_and_expiry",
                        "test_extend_many_is_fenced_per_lease",
                        "test_browse_reads_an_expired_lease_as_queued"},
    "NoopExtendManyQueue": {"test_extend_many_keeps_every_lease_alive"},
    "UnfencedExtendManyQueue": {"test_extend_many_is_fenced_per_lease"},
    "UnfencedAckManyQueue": {"test_ack_many_is_fenced_per_lease"},
    "PriorityLosingPutBackQueue": {"test_claim_order_survives_retry_release_and_expiry"},
    "ImpatientRetryQueue": {"test_retry_with_delay_hides_until_due", "test_peek_state",
                            "test_browse_reads_each_state_and_changes_nothing",
                            "test_every_way_a_lease_ends_gives_its_room_back[retry]"},
    "CountingReleaseQueue": {"test_release_returns_at_once_with_count_restored",
                             "test_retry_counts_failures_release_does_not",
                             "test_release_with_delay_hides_until_due"},
    "RacyClaimQueue": {"test_concurrent_consumers_threads_never_share_a_message"},
    "GreedyBatchQueue": {"test_pop_batch_bounds", "test_fifo_within_a_priority"},
    "NonWaitingQueue": {"test_dequeue_timeout_really_waits",
                        "test_dequeue_returns_early_when_a_job_arrives",
                        "test_blocking_dequeue_wakes_without_polling"},
    "DeafQueue": {"test_blocking_dequeue_wakes_without_polling"},
    "LeakyQsizeQueue": {"test_qsize_counts_waiting_not_leased",
                        "test_stale_lease_is_fenced",
                        "test_an_expired_lease_counts_as_waiting"},
    "CancelAnythingQueue": {"test_cancel_removes_only_waiting_messages",
                            "test_cancel_removes_a_message_whose_lease_expired"},
    "TextBodyQueue": {"test_round_trip_preserves_every_field[binary-body]"},
    "ReplacingPushQueue": {"test_push_is_idempotent_per_job_id"},
    "ForgetfulRetryQueue": {"test_retry_counts_failures_release_does_not", "test_peek_state",
                            "test_settle_many_is_fenced_and_atomic",
                            "test_peek_reads_a_message_without_claiming_it",
                            "test_browse_reads_each_state_and_changes_nothing"},
    "VagueStateQueue": {"test_peek_state", "test_settle_many_is_fenced_and_atomic",
                        "test_an_expired_lease_counts_as_waiting",
                        "test_settle_many_lands_only_records_the_fence_takes"},
    "UnfencedSettleQueue": {"test_settle_many_is_fenced_and_atomic",
                            "test_every_way_a_lease_ends_gives_its_room_back[settle_many]",
                            "test_settle_many_lands_only_records_the_fence_takes"},
    "WriteBlindSettleQueue": {"test_settle_many_lands_only_records_the_fence_takes"},
    "TieLosingBrowseQueue": {"test_browse_lists_every_message_once_oldest_first"},
    "MovingQuarantineQueue": {"test_copy_to_quarantine_keeps_the_message_past_its_ack"},
    "PerClaimLimitQueue": {
        "test_a_limit_holds_back_the_surplus_and_claims_past_it",
        "test_a_held_back_message_costs_nothing_and_keeps_its_place",
        "test_every_way_a_lease_ends_gives_its_room_back[ack]",
        "test_every_way_a_lease_ends_gives_its_room_back[ack_many]",
        "test_every_way_a_lease_ends_gives_its_room_back[retry]",
        "test_every_way_a_lease_ends_gives_its_room_back[release]",
        "test_every_way_a_lease_ends_gives_its_room_back[settle_many]",
        "test_an_expired_lease_stops_counting_and_extend_keeps_one",
        "test_racing_claims_never_exceed_the_limit",
        "test_a_large_held_back_backlog_does_not_hide_what_is_behind_it",
        "test_lifting_the_limits_releases_what_they_held",
        "test_task_counts_says_running_and_ready_per_limited_task"},
    "UnfencedWorkflowQueue": {"test_workflow_advance_by_a_lost_lease_changes_nothing",
                              "test_workflow_join_is_released_once_by_its_last_parent"},
    "EagerStepsQueue": {"test_workflow_submit_makes_only_ready_steps_claimable",
                        "test_workflow_join_is_released_once_by_its_last_parent"},
}

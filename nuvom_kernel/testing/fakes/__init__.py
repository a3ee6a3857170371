"""Deliberately broken backends and discoverers: each breaks exactly one promise.

The queue and result fakes (:mod:`.queues`, :mod:`.results`) subclass the stubs
(:mod:`nuvom_kernel.testing.stubs`) and change one method. The discoverer fakes
(:mod:`.discoverers`) wrap a real discoverer handed to them and change what it reports or when
it runs: the kernel holds no task scanner, so neither do its fakes.

They prove the contract suites can fail, and fail precisely: ``tests/test_contracts_meta.py``
runs every contract against every fake and checks that exactly the tests listed in
:data:`EXPECTED_FAILURES` fail. A contract test that passes against a fake that breaks its
promise is a test that checks nothing. Every fake is importable from here
(``nuvom plugin test nuvom_kernel.testing.fakes:LifoQueue``); each module keeps its fakes'
expected failures beside them.
"""

from __future__ import annotations

from nuvom_kernel.testing.fakes import discoverers, queues, results
from nuvom_kernel.testing.fakes.discoverers import (
    FragileDiscoverer,
    ImportingDiscoverer,
    NameBlindDiscoverer,
    StaleCacheDiscoverer,
)
from nuvom_kernel.testing.fakes.queues import (
    CancelAnythingQueue,
    ContextIgnoringQueue,
    CountingReleaseQueue,
    DeafQueue,
    EagerStepsQueue,
    ForgetfulRetryQueue,
    GreedyBatchQueue,
    ImpatientRetryQueue,
    LeakyQsizeQueue,
    LifoQueue,
    MovingQuarantineQueue,
    NonWaitingQueue,
    NoopExtendManyQueue,
    NoopExtendQueue,
    NoVisibilityTimeoutQueue,
    PerClaimLimitQueue,
    PriorityLosingPutBackQueue,
    RacyClaimQueue,
    ReplacingPushQueue,
    TextBodyQueue,
    TieLosingBrowseQueue,
    UnfencedAckManyQueue,
    UnfencedExtendManyQueue,
    UnfencedQueue,
    UnfencedSettleQueue,
    UnfencedWorkflowQueue,
    VagueStateQueue,
    WriteBlindSettleQueue,
)
from nuvom_kernel.testing.fakes.results import (
    AliasingResults,
    AppendingHeartbeatResults,
    CancelUndoneResults,
    ImmortalWorkersResults,
    LastWriterWinsResults,
    NoTaskFilterResults,
    OldestFirstResults,
    PendingUnknownResults,
    PurgeEverythingResults,
)

#: fake class name -> the contract tests it must fail (and no others): queue fakes first, then
#: result fakes, then discoverer fakes.
EXPECTED_FAILURES: dict[str, set[str]] = {**queues.EXPECTED_FAILURES,
                                          **results.EXPECTED_FAILURES,
                                          **discoverers.EXPECTED_FAILURES}

__all__ = [
    "EXPECTED_FAILURES",
    "AliasingResults",
    "AppendingHeartbeatResults",
    "CancelAnythingQueue",
    "CancelUndoneResults",
    "ContextIgnoringQueue",
    "CountingReleaseQueue",
    "DeafQueue",
    "EagerStepsQueue",
    "ForgetfulRetryQueue",
    "FragileDiscoverer",
    "GreedyBatchQueue",
    "ImmortalWorkersResults",
    "ImpatientRetryQueue",
    "ImportingDiscoverer",
    "LastWriterWinsResults",
    "LeakyQsizeQueue",
    "LifoQueue",
    "MovingQuarantineQueue",
    "NameBlindDiscoverer",
    "NoTaskFilterResults",
    "NoVisibilityTimeoutQueue",
    "NonWaitingQueue",
    "NoopExtendManyQueue",
    "NoopExtendQueue",
    "OldestFirstResults",
    "PendingUnknownResults",
    "PerClaimLimitQueue",
    "PriorityLosingPutBackQueue",
    "PurgeEverythingResults",
    "RacyClaimQueue",
    "ReplacingPushQueue",
    "StaleCacheDiscoverer",
    "TextBodyQueue",
    "TieLosingBrowseQueue",
    "UnfencedAckManyQueue",
    "UnfencedExtendManyQueue",
    "UnfencedQueue",
    "UnfencedSettleQueue",
    "UnfencedWorkflowQueue",
    "VagueStateQueue",
    "WriteBlindSettleQueue",
]

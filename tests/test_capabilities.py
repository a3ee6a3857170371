"""The kernel refuses, before enqueueing anything, options the queue backend cannot honour."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from nuvom_kernel import hookimpl, task
from nuvom_kernel.backends import Capabilities, QueueBackend
from nuvom_kernel.errors import BackendCapabilityError
from nuvom_kernel.kernel import Kernel, use_kernel
from nuvom_kernel.testing.stubs import StubQueue, StubResults


class PlainQueue(StubQueue):
    """Implements delays and priorities underneath, but declares neither."""

    name = "plainq"
    capabilities = Capabilities()


class _Plugin:
    @hookimpl
    def nuvom_register_queue_backends(self) -> list[type[QueueBackend]]:
        return [PlainQueue]

    @hookimpl
    def nuvom_register_result_backends(self) -> list[type[Any]]:
        return [StubResults]


@task(name="capabilities_tests.noop")
def noop(x: int) -> int:
    return x


@pytest.fixture
def plain_kernel(tmp_path: Path) -> Any:
    kernel = Kernel(root=tmp_path, plugins={"undo-plainq": _Plugin()},
                    environ={"NUVOM_QUEUE_BACKEND": "plainq", "NUVOM_RESULT_BACKEND": "stub",
                             "NUVOM_DISABLE_PLUGIN_AUTOLOAD": "1"})
    with use_kernel(kernel):
        yield kernel
    kernel.close()


def test_delay_is_refused_without_the_delayed_capability(plain_kernel: Kernel) -> None:
    with pytest.raises(BackendCapabilityError, match="'plainq' does not support delayed"):
        noop.apply_async((1,), delay_secs=5)
    assert plain_kernel.queue.qsize() == 0, "nothing was enqueued"


def test_priority_is_refused_without_the_priorities_capability(plain_kernel: Kernel) -> None:
    with pytest.raises(BackendCapabilityError, match="'plainq' does not support priorities"):
        noop.apply_async((1,), priority=3)
    prioritized = task(name="capabilities_tests.urgent", priority=9)(lambda: None)
    with pytest.raises(BackendCapabilityError):
        prioritized.delay()
    assert plain_kernel.queue.qsize() == 0


def test_plain_options_still_work(plain_kernel: Kernel) -> None:
    noop.delay(1)
    noop.apply_async((2,), priority=0, delay_secs=0)
    noop.map([3, 4])
    assert plain_kernel.queue.qsize() == 4


def test_declared_capabilities_are_accepted(tmp_path: Path) -> None:
    class _Full:
        @hookimpl
        def nuvom_register_queue_backends(self) -> list[type[QueueBackend]]:
            return [StubQueue]

        @hookimpl
        def nuvom_register_result_backends(self) -> list[type[Any]]:
            return [StubResults]

    kernel = Kernel(root=tmp_path, plugins={"undo-stub": _Full()},
                    environ={"NUVOM_QUEUE_BACKEND": "stub", "NUVOM_RESULT_BACKEND": "stub",
                             "NUVOM_DISABLE_PLUGIN_AUTOLOAD": "1"})
    with use_kernel(kernel):
        job = noop.apply_async((1,), delay_secs=30, priority=5)
        assert kernel.queue.qsize() == 1
        assert kernel.queue.claim(1) == [], "the delay was honoured"
        assert kernel.queue.peek_state(job.id) is not None
    kernel.close()

"""A queue backend whose ``push`` answers with something else than one bool per message (a
plugin's bug): ``.delay()`` and ``.map()`` say so naming the backend and what ``push``
must return, instead of a ``TypeError`` in the kernel's ``stored[0]``."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from nuvom_kernel import hookimpl, task
from nuvom_kernel.backends import QueueBackend
from nuvom_kernel.errors import NuvomError
from nuvom_kernel.kernel import Kernel, use_kernel
from nuvom_kernel.models import Message
from nuvom_kernel.testing.stubs import StubQueue, StubResults


class SilentPushQueue(StubQueue):
    """Stores the messages, answers ``None`` (a ``push`` that forgot its ``return``)."""

    name = "silentpush"

    def push(self, messages: Sequence[Message]) -> list[bool]:
        super().push(messages)
        return None  # type: ignore[return-value]


class ShortPushQueue(StubQueue):
    """Answers for all but the last message."""

    name = "shortpush"

    def push(self, messages: Sequence[Message]) -> list[bool]:
        return super().push(messages)[:-1]


class _Plugin:
    @hookimpl
    def nuvom_register_queue_backends(self) -> list[type[QueueBackend]]:
        return [SilentPushQueue, ShortPushQueue]

    @hookimpl
    def nuvom_register_result_backends(self) -> list[type[Any]]:
        return [StubResults]


@task(name="push_answer_tests.noop")
def noop(x: int) -> int:
    return x


@pytest.fixture(params=["silentpush", "shortpush"])
def kernel(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Kernel]:
    kernel = Kernel(root=tmp_path, plugins={"undo-pushanswer": _Plugin()},
                    environ={"NUVOM_QUEUE_BACKEND": request.param,
                             "NUVOM_RESULT_BACKEND": "stub",
                             "NUVOM_DISABLE_PLUGIN_AUTOLOAD": "1"})
    with use_kernel(kernel):
        yield kernel
    kernel.close()


def test_a_wrong_push_answer_is_said_naming_the_backend(kernel: Kernel) -> None:
    name = kernel.settings.queue_backend
    cls = type(kernel.queue).__qualname__
    for call in (lambda: noop.delay(1), lambda: noop.map([(1,), (2,)])):
        with pytest.raises(NuvomError) as info:
            call()
        text = str(info.value)
        assert f"queue backend {name!r} (tests.test_push_answer.{cls}) returned " in text
        assert "push must return a list of one bool per message" in text, text
        assert "nuvom plugin test" in text
        assert not isinstance(info.value.__context__, TypeError), "said before stored[0]"

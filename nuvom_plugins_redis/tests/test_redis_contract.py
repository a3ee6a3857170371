"""The kernel's shared contract suites, run against the real Redis server."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from redis_helpers import forget, settings

from nuvom_kernel.backends import BackendContext
from nuvom_kernel.testing.contracts import (
    BackendFactory,
    QueueBackendContract,
    ResultBackendContract,
)
from nuvom_plugins_redis import RedisJobQueue, RedisResultBackend


class _Forget:
    @pytest.fixture(autouse=True)
    def _forget_namespace(self, backend_context: BackendContext) -> Iterator[None]:
        """The contract hands each test a fresh namespace; drop its keys afterwards."""
        yield
        forget(backend_context.namespace)


class TestRedisQueueContract(_Forget, QueueBackendContract):
    @pytest.fixture
    def make_queue_backend(self) -> BackendFactory:
        return BackendFactory(RedisJobQueue, settings())

    @pytest.fixture
    def settle_results(self, queue_backend: RedisJobQueue,
                       backend_context: BackendContext) -> Iterator[RedisResultBackend]:
        """Records on the queue's server and prefix: what ``settle_many`` settles in one
        script."""
        results = RedisResultBackend.from_settings(settings(), backend_context)
        yield results
        results.close()


class TestRedisResultContract(_Forget, ResultBackendContract):
    @pytest.fixture
    def make_result_backend(self) -> BackendFactory:
        return BackendFactory(RedisResultBackend, settings())

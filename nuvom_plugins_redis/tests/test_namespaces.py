"""Keys of two apps on one server and key prefix never collide: the settings that could
make them do so are refused at startup, naming the setting and its variable.

Keys are ``<key_prefix>:<namespace>:<suffix>``, ``<key_prefix>:<suffix>`` without a
namespace, nothing escaped (escaping would move every existing deployment's keys). So an
app without a namespace storing job ``epoch`` (hash ``<key_prefix>:j:epoch``) and an app
with namespace ``j`` (epoch marker ``<key_prefix>:j:epoch``) wrote one key, and both died
with raw ``WRONGTYPE`` tracebacks. Refused now: a namespace equal to a first key segment
the plugin uses, a namespace with ``:``, and a key prefix with ``:`` (``a:b`` wrote the keys
of prefix ``a`` with namespace ``b``). Queue names and job ids need no rule: each comes
after a fixed segment (``q:``, ``j:``, ``r:``...), and a queue's keys end in a fixed
segment without ``:`` (``:ready``, ``:delayed``, ``:leased``), so two of them never meet.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis_helpers import PREFIX, URL, settings

from nuvom_kernel.backends import BackendContext
from nuvom_kernel.errors import ConfigError
from nuvom_kernel.models import JobStatus
from nuvom_kernel.testing.contracts import make_message, make_record
from nuvom_plugins_redis import RedisJobQueue, RedisResultBackend
from nuvom_plugins_redis.connection import delete_prefix
from nuvom_plugins_redis.settings import RESERVED_SEGMENTS, check_namespace

SOURCES = Path(__file__).resolve().parents[1] / "src" / "nuvom_plugins_redis"


@pytest.fixture
def own_prefix() -> Iterator[str]:
    """A key prefix of this test's alone (an app without a namespace writes right under
    it), every key deleted afterwards."""
    prefix = f"{PREFIX}-{uuid.uuid4().hex[:12]}"
    yield prefix
    delete_prefix(URL, prefix + ":")


def test_every_key_segment_the_plugin_writes_is_reserved() -> None:
    """The rule is only as good as the list: every first segment after the prefix in the
    scripts (``P .. 'j:'``, ``R .. 'ri'``, ``ARGV[1] .. 'sched'``) and in the Python code
    (``prefix + "epoch"``, ``p + "w:"``) must be in it."""
    text = "\n".join(f.read_text() for f in SOURCES.glob("*.py"))
    lua = re.findall(r"\b(?:P|R|ARGV\[1\]) \.\. '([^']*)'", text)
    python = re.findall(r'\b(?:prefix|p) \+ "([^"]*)"', text)
    used = {s.split(":")[0] for s in lua + python}
    assert len(used) >= 12, used  # the patterns still find the keys
    assert used <= RESERVED_SEGMENTS, used - RESERVED_SEGMENTS


@pytest.mark.parametrize("namespace", sorted(RESERVED_SEGMENTS | {"app:j", "j:app"}))
def test_a_namespace_that_could_be_another_apps_keys_is_refused(namespace: str,
                                                               own_prefix: str) -> None:
    """``own_prefix``: a build that is not refused writes its epoch key there."""
    for backend in (RedisJobQueue, RedisResultBackend):
        with pytest.raises(ConfigError) as info:
            backend.from_settings(settings(key_prefix=own_prefix),
                                  BackendContext(namespace=namespace)).close()
        text = str(info.value)
        assert text.startswith(f"NUVOM_NAMESPACE={namespace!r} ([settings] namespace) "
                               "cannot be used with the Redis plugin"), text
        assert "is a key segment it uses itself" in text, text


@pytest.mark.parametrize("namespace", ["jobs", "ri-1", "sched2", "nuvom-test-x", "J",
                                       "team:app", "a:"])
def test_a_namespace_near_a_reserved_segment_is_fine(namespace: str) -> None:
    """No connection needed: the check is where the store builds its key prefix."""
    check_namespace(namespace)


def test_a_key_prefix_may_hold_a_colon_and_an_empty_one_is_refused(own_prefix: str
                                                                   ) -> None:
    """``myapp:nuvom`` is a common Redis habit that deployments use: still accepted (the
    README says which combination to keep apart); an empty prefix is not."""
    RedisJobQueue.from_settings(settings(key_prefix=f"{own_prefix}:app"),
                                BackendContext()).close()
    with pytest.raises(ConfigError, match=r"key_prefix .* is invalid: it is empty"):
        RedisJobQueue.from_settings(settings(key_prefix=""), BackendContext()).close()


def test_an_app_cannot_take_the_keys_of_an_app_without_a_namespace(own_prefix: str) -> None:
    """The collision as found: app 1 (no namespace) enqueues and settles job ``epoch``;
    app 2 with namespace ``j`` on the same prefix is refused at build time, before it
    reads or writes any key, instead of failing with ``WRONGTYPE`` (or corrupting app
    1's job) later."""
    one = settings(key_prefix=own_prefix)
    queue = RedisJobQueue.from_settings(one, BackendContext())
    results = RedisResultBackend.from_settings(one, BackendContext())
    try:
        assert queue.push([make_message("epoch")]) == [True]
        assert results.put(make_record("epoch", status=JobStatus.QUEUED))
        for backend in (RedisJobQueue, RedisResultBackend):
            with pytest.raises(ConfigError, match="NUVOM_NAMESPACE='j'"):
                backend.from_settings(one, BackendContext(namespace="j"))
        assert queue.peek("epoch") is not None, "app 1's job is untouched"
        assert queue.peek_state("epoch") is JobStatus.QUEUED
    finally:
        queue.close()
        results.close()


def test_the_cli_refuses_a_reserved_namespace_in_one_line(own_prefix: str,
                                                           tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NUVOM_")}
    env.update({"NUVOM_QUEUE_BACKEND": "redis", "NUVOM_RESULT_BACKEND": "redis",
                "NUVOM_NAMESPACE": "j", "NUVOM_PLUGINS__REDIS__URL": URL,
                "NUVOM_PLUGINS__REDIS__KEY_PREFIX": own_prefix})
    done = subprocess.run([sys.executable, "-m", "nuvom_kernel", "status"], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=60, check=False)
    lines = [line for line in (done.stdout + done.stderr).splitlines() if line.strip()]
    assert done.returncode != 0 and len(lines) == 1, lines
    assert lines[0].startswith("Error: ") and "NUVOM_NAMESPACE='j'" in lines[0], lines
    assert "WRONGTYPE" not in lines[0] and "Traceback" not in lines[0], lines

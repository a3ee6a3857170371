"""Every duration setting of ``[plugins.redis]`` is refused at startup, naming the setting
and its variable, when Redis or Python could not use it: ``inf`` and ``1e30`` passed a
check of ``> 0`` and then failed at run time (``PEXPIRE`` refused the result TTL, so each
job ran again and again and ``.get()`` never returned; a socket timeout of ``inf`` crashed
``nuvom status`` with an ``OverflowError``). The longest accepted value, the kernel's
``MAX_SECONDS`` (366 days), works against the real server."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from redis_helpers import URL, settings

from nuvom_kernel.backends import BackendContext
from nuvom_kernel.errors import ConfigError
from nuvom_kernel.models import JobRecord, JobStatus
from nuvom_kernel.testing.contracts import make_message
from nuvom_kernel.values import MAX_RETENTION_SECS as MAX_TTL_SECS
from nuvom_kernel.values import MAX_SECONDS
from nuvom_plugins_redis import RedisJobQueue, RedisResultBackend

DURATIONS = ["result_ttl_secs", "visibility_timeout_secs", "socket_timeout_secs",
             "socket_connect_timeout_secs", "health_check_interval_secs", "block_secs",
             "reap_interval_secs"]


@pytest.mark.parametrize("value", [float("inf"), 1e30, "over"])
@pytest.mark.parametrize("key", DURATIONS)
def test_a_duration_redis_or_python_cannot_take_is_refused_by_name(
        key: str, value: float | str, context: BackendContext) -> None:
    """``context``: its namespace's keys are deleted afterwards, should a build connect."""
    if value == "over":  # a second past the limit
        value = (MAX_TTL_SECS if key == "result_ttl_secs" else MAX_SECONDS) + 1.0
    with pytest.raises(ConfigError) as info:
        RedisJobQueue.from_settings(settings(**{key: value}), context).close()
    text = str(info.value)
    assert f"[plugins.redis] {key}={value!r} (NUVOM_PLUGINS__REDIS__{key.upper()})" in text
    assert (f"at most {MAX_TTL_SECS:.0f} seconds (100 years)" if key == "result_ttl_secs"
            else f"at most {MAX_SECONDS} seconds (366 days)") in text, text


def test_a_result_ttl_under_a_millisecond_is_refused(context: BackendContext) -> None:
    """``PEXPIRE`` counts whole milliseconds: 0.0005 s became ``PEXPIRE key 0``, which
    deletes each record as it is stored."""
    with pytest.raises(ConfigError) as info:
        RedisResultBackend.from_settings(settings(result_ttl_secs=0.0005), context).close()
    text = str(info.value)
    assert "[plugins.redis] result_ttl_secs=0.0005 (NUVOM_PLUGINS__REDIS__RESULT_TTL_SECS)" \
        in text and "at least 0.001" in text, text


def test_every_duration_at_the_limit_works_and_beyond_it_is_refused(
        context: BackendContext) -> None:
    """366 days for every duration at once (100 years for the result TTL, a retention): a
    push, a claim (a lease deadline that far ahead), a blocking wait, a record kept that
    long (``PEXPIREAT`` takes it); a second more of any of them is refused."""
    limit = {key: MAX_TTL_SECS if key == "result_ttl_secs" else float(MAX_SECONDS)
             for key in DURATIONS}
    at_limit = settings(**limit)
    queue = RedisJobQueue.from_settings(at_limit, context)
    results = RedisResultBackend.from_settings(at_limit, context)
    try:
        message = make_message()
        assert queue.push([message]) == [True]
        [lease] = queue.pop_batch(1, timeout=1.0)
        assert lease.message.id == message.id
        assert queue.pop_batch(1, timeout=0.05) == []  # BZPOPMIN for 0.05 s, not a year
        assert queue.ack(lease)
        record = JobRecord(job_id=message.id, task="tasks.add",
                           status=JobStatus.SUCCEEDED, result=3, attempts=1)
        assert results.put(record)
        stored = results.get(message.id)
        assert stored is not None and stored.result == 3
        pttl = results.store.client.pttl(results.store.prefix + "r:" + message.id)
        assert MAX_TTL_SECS * 1000 - 60_000 < pttl <= MAX_TTL_SECS * 1000, pttl
    finally:
        queue.close()
        results.close()
    for key in DURATIONS:
        with pytest.raises(ConfigError, match=f"NUVOM_PLUGINS__REDIS__{key.upper()}"):
            RedisJobQueue.from_settings(
                {**at_limit, key: limit[key] + 1.0}, context).close()


def _env(namespace: str, **plugin: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NUVOM_")}
    env.update({"NUVOM_QUEUE_BACKEND": "redis", "NUVOM_RESULT_BACKEND": "redis",
                "NUVOM_NAMESPACE": namespace, "NUVOM_PLUGINS__REDIS__URL": URL,
                "NUVOM_PLUGINS__REDIS__KEY_PREFIX": str(settings()["key_prefix"])})
    env.update({f"NUVOM_PLUGINS__REDIS__{k.upper()}": v for k, v in plugin.items()})
    return env


@pytest.mark.parametrize(("command", "key", "value"), [
    ("status", "socket_timeout_secs", "1e10"),  # inf was an OverflowError traceback
    ("status", "result_ttl_secs", "1e30"),  # was accepted
    ("runworker", "result_ttl_secs", "1e30"),  # inf ran each job again and again
])
def test_the_cli_refuses_it_at_startup_in_one_line_with_status_2(
        command: str, key: str, value: str, namespace: str, tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "nuvom_kernel", command], cwd=tmp_path,
                          env=_env(namespace, **{key: value}), capture_output=True,
                          text=True, timeout=60, check=False)
    output = done.stdout + done.stderr
    lines = [line for line in output.splitlines() if line.strip()]
    assert done.returncode == 2, output
    assert len(lines) == 1 and lines[0].startswith("Error: "), output
    assert f"env NUVOM_PLUGINS__REDIS__{key.upper()}: {key}={value!r} is invalid" \
        in lines[0], lines
    assert ("100 years" if key == "result_ttl_secs" else "366 days") in lines[0], lines

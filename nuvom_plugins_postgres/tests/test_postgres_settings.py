"""The hygiene thresholds and ``sync_lease_commits`` are typed settings: they reach the
queue from ``[plugins.postgres]`` or ``NUVOM_PLUGINS__POSTGRES__<KEY>``, and a bad value
stops with an error naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest
from pg_support import DSN

from nuvom_kernel.backends import BackendContext
from nuvom_kernel.errors import ConfigError
from nuvom_kernel.kernel import Kernel
from nuvom_plugins_postgres import PostgresSettings

CONTEXT = BackendContext(visibility_timeout_secs=30.0)


def test_defaults() -> None:
    parsed = PostgresSettings.parse({}, CONTEXT)
    assert (parsed.sync_lease_commits, parsed.dead_tuple_warn_ratio,
            parsed.dead_tuple_warn_min, parsed.xmin_warn_secs) == (False, 0.2, 10_000, 300.0)


@pytest.mark.parametrize("dsn", ["postgresql://app:se@cret@db.example/app",
                                 "postgres://app:se/cret@db.example/app",
                                 "postgresql://app:p@s/cret@db.example/app"])
def test_an_unencoded_at_or_slash_in_the_password_is_refused_unshown(dsn: str) -> None:
    """libpq would split the URL inside the password and print its tail as the host (or
    take it for the database: the last one connected to host 's' with password 'p')."""
    with pytest.raises(ConfigError, match="%40") as info:
        PostgresSettings.parse({"dsn": dsn}, CONTEXT)
    assert "cret" not in str(info.value)


@pytest.mark.parametrize("dsn", ["postgresql://app:50%cret@db/app",
                                 "postgresql://app:cret@[::1/app"])
def test_libpq_s_complaint_about_a_url_is_shown_without_its_password(dsn: str) -> None:
    """It quoted the bad token, the password whole, or the whole URL."""
    with pytest.raises(ConfigError, match="not a valid libpq") as info:
        PostgresSettings.parse({"dsn": dsn}, CONTEXT)
    assert "cret" not in str(info.value), info.value


def test_an_encoded_password_and_query_parameters_pass() -> None:
    for dsn in ("postgresql://app:se%40cret@db.example/app",
                "postgresql:///app?host=/run/postgresql&user=app"):
        assert PostgresSettings.parse({"dsn": dsn}, CONTEXT).dsn == dsn


@pytest.mark.parametrize(("key", "value"), [
    ("sync_lease_commits", "maybe"), ("dead_tuple_warn_ratio", 0), ("dead_tuple_warn_ratio", 1.5),
    ("dead_tuple_warn_min", -1), ("dead_tuple_warn_min", 2.5), ("xmin_warn_secs", 0),
    ("xmin_warn_secs", "soon"),
])
def test_bad_values_name_the_key(key: str, value: object) -> None:
    with pytest.raises(ConfigError, match=key) as info:
        PostgresSettings.parse({key: value}, CONTEXT)
    assert f"NUVOM_PLUGINS__POSTGRES__{key.upper()}" in str(info.value)


def test_environment_variables_reach_the_queue(tmp_path: Path, schema: str) -> None:
    kernel = Kernel(root=tmp_path, environ={
        "NUVOM_QUEUE_BACKEND": "postgres", "NUVOM_PLUGINS__POSTGRES__DSN": DSN,
        "NUVOM_PLUGINS__POSTGRES__SCHEMA": schema,
        "NUVOM_PLUGINS__POSTGRES__SYNC_LEASE_COMMITS": "true",
        "NUVOM_PLUGINS__POSTGRES__XMIN_WARN_SECS": "60",
        "NUVOM_PLUGINS__POSTGRES__DEAD_TUPLE_WARN_MIN": "500",
        "NUVOM_PLUGINS__POSTGRES__DEAD_TUPLE_WARN_RATIO": "0.5"})
    try:
        got = kernel.queue.settings  # type: ignore[attr-defined]
        assert (got.sync_lease_commits, got.xmin_warn_secs, got.dead_tuple_warn_min,
                got.dead_tuple_warn_ratio) == (True, 60.0, 500, 0.5)
        assert b"set_config" not in kernel.queue._q.claim_all  # type: ignore[attr-defined]
    finally:
        kernel.close()

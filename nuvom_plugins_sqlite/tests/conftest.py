"""Shared fixtures: every test gets its own real SQLite file under ``tmp_path``."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from nuvom_plugins_sqlite import SQLiteJobQueue, SQLiteResultBackend


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "data" / "nuvom.db"


@pytest.fixture
def queue(db_path: Path) -> Iterator[SQLiteJobQueue]:
    q = SQLiteJobQueue(db_path, visibility_timeout_secs=30.0)
    yield q
    q.close()


@pytest.fixture
def results(db_path: Path) -> Iterator[SQLiteResultBackend]:
    r = SQLiteResultBackend(db_path)
    yield r
    r.close()

"""A project directory per test: cwd, importable, no ``NUVOM_*`` left from the caller."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    for key in [k for k in os.environ if k.startswith("NUVOM_")]:
        monkeypatch.delenv(key)
    return tmp_path

"""Damaged schedule state of the file result backend (``schedules.json`` edited by hand, a
disk fault) stops nothing and loses nothing. A damaged entry: see
:mod:`nuvom_kernel.testing.contracts.schedule_damage`. A file that does not decode at all
reads as no state, and the first write keeps it aside, renamed beside it, before starting a
new one. Before, either made ``schedule_states()`` raise, so no schedule fired on any
worker."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from nuvom_kernel.models import ScheduleState
from nuvom_kernel.testing.contracts import check_damaged_entry
from nuvom_plugins.file import FileResultBackend


def _set(entry: Any) -> Callable[[dict[str, Any]], None]:
    def damage(data: dict[str, Any]) -> None:
        data["other"] = entry(data["other"]) if callable(entry) else entry
    return damage


DAMAGE = [
    # (how entry 'other' is damaged, what the log says is wrong, the text it quotes)
    (_set([1]), "a JSON object was expected, found an array", "[1]"),
    (_set(lambda e: {**e, "last_tick": "soon"}), "its last_tick is a string", '"soon"'),
    (_set(lambda e: {**e, "fired": None}), "its fired is null, not an integer", "null"),
    (_set(lambda e: {k: v for k, v in e.items() if k != "updated_at"}),
     "its updated_at is null", '"name": "other"'),
    (_set(lambda e: {**e, "name": "good"}), "names schedule 'good'", '"name": "good"'),
]


@pytest.mark.parametrize(("damage", "problem", "quoted"), DAMAGE)
def test_a_damaged_entry_is_a_placeholder_the_next_write_replaces_once(
        tmp_path: Path, damage: Callable[[dict[str, Any]], None], problem: str,
        quoted: str, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "r" / "schedules.json"

    def damaged() -> None:
        data = json.loads(path.read_text())
        damage(data)
        path.write_text(json.dumps(data))

    first, second = FileResultBackend(tmp_path / "r"), FileResultBackend(tmp_path / "r")
    check_damaged_entry(first, second, damaged, problem=problem, quoted=quoted,
                        where=str(path), caplog=caplog)


@pytest.mark.parametrize("content", ["{not json", "[1, 2]", "", "\udcff"])
def test_an_unreadable_file_is_kept_aside_and_every_schedule_goes_on(
        tmp_path: Path, content: str, caplog: pytest.LogCaptureFixture) -> None:
    first, second = FileResultBackend(tmp_path / "r"), FileResultBackend(tmp_path / "r")
    assert first.advance_schedule(None, ScheduleState("good", last_tick=100.0,
                                                      updated_at=100.0))
    path = tmp_path / "r" / "schedules.json"
    raw = content.encode("utf-8", "surrogateescape")  # "\udcff": a byte that is not UTF-8
    path.write_bytes(raw)

    with caplog.at_level(logging.ERROR, logger="nuvom.scheduler"):
        assert first.schedule_states() == {} and second.schedule_states() == {}
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and str(path) in errors[0] and "every schedule" in errors[0]

    caplog.clear()
    new = ScheduleState("good", last_tick=200.0, updated_at=200.0)
    with caplog.at_level(logging.ERROR, logger="nuvom.file.results"):
        assert first.advance_schedule(None, new), "the first write starts a new file"
    assert not second.advance_schedule(None, ScheduleState("good", last_tick=200.0,
                                                           updated_at=201.0)), \
        "a second scheduler that read the damaged file too is refused"
    assert second.schedule_states() == {"good": new}
    kept = list(path.parent.glob("schedules.json.corrupt-*"))
    assert len(kept) == 1 and kept[0].read_bytes() == raw, "the damaged file is kept"
    assert [r.getMessage() for r in caplog.records if str(kept[0]) in r.getMessage()], \
        "the log says where it is kept"

"""The public API carries its types through (issue 21): ``@task`` → ``.delay()`` → ``Job[R]``
→ ``.get()``, checked by mypy on ``tests/typecheck/public_api.py``.

Every ``T:`` line must reveal exactly that type, every ``E:`` line must be exactly that
error, and no other line of it may produce an error (the kernel's own errors are the
strict run's business, in .ci/run).
"""

from __future__ import annotations

import re
from pathlib import Path

from mypy import api

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "tests" / "typecheck" / "public_api.py"


def test_mypy_sees_the_task_result_type_through_jobs(tmp_path: Path) -> None:
    expected: dict[int, tuple[str, str]] = {}
    for number, line in enumerate(SAMPLE.read_text().splitlines(), start=1):
        if match := re.search(r"# ([TE]): (.+)$", line):
            expected[number] = (match.group(1), match.group(2).strip())
    assert len(expected) >= 10

    stdout, stderr, _ = api.run(["--strict", "--no-incremental", "--cache-dir", str(tmp_path),
                                 "--show-error-codes", "--hide-error-context", str(SAMPLE)])
    seen: dict[int, tuple[str, str]] = {}
    unexpected = []
    for out in stdout.splitlines():
        match = re.match(r"(?:.*/)?public_api\.py:(\d+): (note|error): (.*)$", out)
        if not match:
            continue
        number, kind, text = int(match.group(1)), match.group(2), match.group(3)
        if kind == "note" and text.startswith("Revealed type is "):
            seen[number] = ("T", text.removeprefix("Revealed type is ").strip('"'))
        elif kind == "error" and (code := re.search(r"\[([\w-]+)\]$", text)):
            seen[number] = ("E", code.group(1))
            if expected.get(number, ("", ""))[0] != "E":
                unexpected.append(out)
    assert not unexpected, "\n".join(unexpected)
    assert seen == expected, f"mypy said:\n{stdout}{stderr}"

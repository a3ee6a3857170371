"""The scenarios, one module per family, and :data:`SCENARIOS`, the registry in run order.

A scenario is ``scenario(base, backend, sizes) -> Outcome``: it builds its projects under
``base``, hurts them, and judges them; a new one joins by being named here.
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable
from pathlib import Path

from ..outcome import Outcome, Sizes
from ..project import POOL
from .corrupt import scenario_corrupt
from .crashes import scenario_crash, scenario_storm
from .disk import scenario_disk
from .leases import scenario_long_job, scenario_paused
from .plugins import scenario_plugins
from .producer import scenario_producer_crash
from .shutdown import scenario_graceful

__all__ = ["SCENARIOS", "run_scenario"]

SCENARIOS: dict[str, Callable[[Path, str, Sizes], Outcome]] = {
    "crash": scenario_crash,
    "storm": scenario_storm,
    "graceful": scenario_graceful,
    "producer": scenario_producer_crash,
    "disk": scenario_disk,
    "corrupt": scenario_corrupt,
    "plugins": scenario_plugins,
    "long-job": scenario_long_job,
    "paused": scenario_paused,
}


def run_scenario(name: str, base: Path, backend: str, sizes: Sizes, pool: str = "thread"
                 ) -> Outcome:
    """Run one scenario with workers of ``pool`` (``runworker --pool``); an exception (a
    deadline, a crash of the engine) becomes a failure of that scenario with the workers'
    last words attached."""
    t0 = time.monotonic()
    token = POOL.set(pool)
    try:
        out = SCENARIOS[name](base, backend, sizes)
    except Exception as exc:
        out = Outcome(name, backend)
        out.failures.append(f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=6)}"
                            + _last_words(base / f"{backend}-{name}"))
    finally:
        POOL.reset(token)
    out.seconds = time.monotonic() - t0
    return out


def _last_words(root: Path) -> str:
    """The last lines of every worker log under ``root``."""
    logs = sorted((root / "logs").glob("*.log")) if (root / "logs").exists() else []
    return "".join(f"\n--- {p.name} ---\n" + "\n".join(p.read_text(errors="replace")
                                                       .splitlines()[-15:]) for p in logs)


"""Running jobs: the pool (:mod:`.pool`), its lease monitor (:mod:`.monitor`) and the one
settle path every outcome takes (:mod:`.settle`)."""

from __future__ import annotations

from nuvom_kernel.worker.pool import Worker, current_job

__all__ = ["Worker", "current_job"]

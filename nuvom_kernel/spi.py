"""The shared ground of both backend SPIs: their version, what a backend promises
(:class:`Capabilities`), what the kernel hands it when building it (:class:`BackendContext`)
and the base both kinds derive from. :mod:`nuvom_kernel.backends` is the import path plugins
use; it re-exports all of this.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import attrs

from nuvom_kernel.errors import ConfigError
from nuvom_kernel.values import seconds

__all__ = ["SPI_VERSION", "Backend", "BackendContext", "Capabilities"]

#: The version of the promises in this module (see docs/writing_plugins.md). A backend written
#: against version 1 works with every kernel whose ``SPI_VERSION`` is 1; a change that would
#: break a backend raises the number.
SPI_VERSION = 1


@attrs.frozen
class Capabilities:
    """What a backend promises; the kernel refuses options it cannot honour, and the contract
    suite skips the tests of promises it does not make."""

    persistent: bool = False
    multiprocess_safe: bool = False
    priorities: bool = False
    delayed: bool = False
    blocking_dequeue: bool = False
    heartbeats: bool = False  # a result backend that lists live workers (``heartbeat``)
    #: queue: honours ``set_concurrency_limits`` at claim time (``@task(concurrency=N)``)
    concurrency: bool = False
    #: results: keeps schedule state with a compare-and-set (``@task(schedule=...)``)
    schedules: bool = False
    #: stores workflow graphs (:meth:`QueueBackend.workflow_transaction`) and advances them
    #: when a step settles
    workflows: bool = False
    #: the store lives in the process that built it (memory): nothing another process
    #: writes reaches it and nothing outlives the process, so the CLI refuses to enqueue
    #: into it (the job would end with the command) and ``nuvom runworker`` warns
    in_process: bool = False

    def as_list(self) -> list[str]:
        return [f.name for f in attrs.fields(type(self)) if getattr(self, f.name)]


@attrs.frozen
class BackendContext:
    """Kernel settings a backend may need when it is built (paths, lease length).

    :param namespace: a prefix for every key, table or channel the backend creates, empty
        by default. The contract suite hands each test a fresh one, so a server-backed
        store (Redis, PostgreSQL) runs the suite on a shared server without collisions;
        file-based backends get a fresh ``data_dir`` per test instead and may ignore it.
    """

    data_dir: Path = Path(".nuvom")
    visibility_timeout_secs: float = attrs.field(default=30.0)
    namespace: str = ""

    @visibility_timeout_secs.validator
    def _finite_lease(self, _: attrs.Attribute[float], value: float) -> None:
        """Checked here, not by each backend that defaults its own lease to it: a context
        built by hand (a test, a tool) with ``inf`` gave leases that never expire."""
        try:
            seconds(zero_ok=False)(value)
        except ValueError as exc:
            raise ConfigError(
                f"visibility_timeout_secs={value!r} (the kernel's NUVOM_VISIBILITY_TIMEOUT_SECS, "
                f"which backends default their lease to) is invalid: it {exc}.") from None


class Backend(abc.ABC):
    """What queue and result backends share: a registered name, capabilities, how they are
    built from settings, and close."""

    name: ClassVar[str]
    capabilities: ClassVar[Capabilities] = Capabilities()
    #: ``True`` for a server store prefixing all it creates with ``context.namespace``:
    #: ``nuvom plugin test`` then builds it from the project's ``[plugins.<name>]`` (its
    #: server URL), a fresh namespace per test. Others never see the project's settings.
    namespaced: ClassVar[bool] = False

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any], context: BackendContext) -> Any:
        """Build the backend from its ``[plugins.<name>]`` table and the kernel's context.

        The default passes the table as keyword arguments; override to derive paths from
        ``context.data_dir`` or to validate settings with a clear error.
        """
        return cls(**dict(settings))

    @property
    def location(self) -> str | None:
        """Where this backend keeps its data, for a person to read: an absolute file or
        folder, a server with its key prefix or schema, ``in-process``; ``None`` (the
        default) when the backend does not say.

        Why: a store is created on first use, so ``nuvom status`` run from the wrong folder
        (or with a mistyped ``NUVOM_DATA_DIR`` or namespace) opened a new, empty one and
        reported a healthy, idle deployment; printed, the location shows it was not the
        workers' store. Read-only and cheap: it describes the settings the backend was
        built with, opens nothing and never fails. It must never hold a password (mask it,
        e.g. with :func:`nuvom_kernel.config.mask_secret`)."""
        return None

    def close(self) -> None:  # noqa: B027 - optional hook, most backends hold nothing
        """Release connections and file handles."""

    def check_writable(self) -> None:  # noqa: B027 - optional, most stores open for writing
        """Raise a :class:`~nuvom_kernel.errors.NuvomError` naming what a worker could not
        write (a read-only folder, another user's files). Called once by a worker as it
        opens its stores, before it leases anything; never by the reading commands
        (``nuvom status``, ``inspect``, ``history``), so a store may open read-only for them
        and a worker still refuses to start there, in one line, instead of failing every
        claim. The default checks nothing."""

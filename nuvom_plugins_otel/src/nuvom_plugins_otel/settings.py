"""The ``[plugins.otel]`` table (``NUVOM_PLUGINS__OTEL__<KEY>``)."""

from __future__ import annotations

import attrs

__all__ = ["OtelSettings"]


@attrs.frozen
class OtelSettings:
    """:param consumer_parent: make each consumer span a child of the producer span (one
        trace from enqueue to every attempt) instead of the root of a trace of its own with
        a span link to the producer (the default, as the messaging conventions advise: a
        job retried for hours must not stretch its producer's trace)."""

    consumer_parent: bool = False

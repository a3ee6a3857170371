"""OpenTelemetry traces for Nuvom (``nuvom-plugins-otel``): a producer span at enqueue and
a consumer span per attempt, linked through the W3C trace context carried in the job's
headers. It uses the global tracer provider: configure the OpenTelemetry SDK in your app
and in the worker (see ``docs/observability.md``)."""

from __future__ import annotations

from nuvom_plugins_otel.settings import OtelSettings
from nuvom_plugins_otel.spans import Tracing

__version__ = "0.1.0"

__all__ = ["OtelSettings", "Tracing", "__version__"]

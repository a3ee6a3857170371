"""The kernel's own fallback plugin: registered like any other, first, so others override it."""

from __future__ import annotations

from nuvom_kernel import hookimpl
from nuvom_kernel.serialization import JsonSerializer, Serializer


@hookimpl(trylast=True)
def nuvom_register_serializers() -> list[type[Serializer]]:
    return [JsonSerializer]

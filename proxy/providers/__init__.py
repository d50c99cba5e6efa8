"""Provider registry: `provider = "..."` in the config names one of these.

Adding a provider is one module in this folder and one line here.
"""

from __future__ import annotations

from proxy.providers.base import Provider, UpstreamReply, UpstreamTimeout, UpstreamUnavailable
from proxy.providers.openai import OpenAIProvider
from proxy.providers.sim import SimProvider

PROVIDERS: dict[str, type[OpenAIProvider] | type[SimProvider]] = {
    "openai": OpenAIProvider,
    "sim": SimProvider,
}


def build_providers() -> dict[str, Provider]:
    return {name: cls() for name, cls in PROVIDERS.items()}


__all__ = [
    "PROVIDERS",
    "Provider",
    "UpstreamReply",
    "UpstreamTimeout",
    "UpstreamUnavailable",
    "build_providers",
]

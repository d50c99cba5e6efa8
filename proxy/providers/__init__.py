"""Provider registry: `provider = "..."` in the config names one of these.

Adding a provider is one folder here (its request, reply and error
translation behind `proxy.providers.base.Provider`) and one line below.
"""

from __future__ import annotations

from collections.abc import Callable

from proxy.providers.anthropic import AnthropicProvider
from proxy.providers.base import Provider
from proxy.providers.openai import OpenAIProvider
from proxy.providers.sim import SimProvider

PROVIDERS: dict[str, Callable[[], Provider]] = {
    "openai": OpenAIProvider,
    "anthropic": AnthropicProvider,
    "sim": SimProvider,
}


def build_providers() -> dict[str, Provider]:
    return {name: make() for name, make in PROVIDERS.items()}

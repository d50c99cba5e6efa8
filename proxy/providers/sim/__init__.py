"""Provider `sim`: the built-in simulator. `engine` decides what a chat model would
answer and when, `embeddings` the vectors, `provider` serves it in-process, `server` over HTTP
(`prometheus-gateway sim`)."""

from proxy.providers.sim.provider import SimProvider

__all__ = ["SimProvider"]

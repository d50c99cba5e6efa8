"""Provider `openai`: any OpenAI-compatible upstream (OpenAI, vLLM, Ollama, ...).

`provider` sends the request (a pass-through), `replies` turns the upstream's
bytes into what the client gets (only `model` rewritten, by `_fastpath`), and
`errors` maps the upstream's error answers to the gateway's.
"""

from proxy.providers.openai.provider import OpenAIProvider

__all__ = ["OpenAIProvider"]

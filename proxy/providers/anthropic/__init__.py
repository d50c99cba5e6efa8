"""Provider `anthropic`: Anthropic's Messages API behind the OpenAI surface.

`request` turns the client's chat body into a Messages body, `provider` sends
it, `replies` reads the answer through `response` (one JSON reply) or
`stream` (the event stream, translated event by event), and `errors` maps
Anthropic's error answers to the gateway's.
"""

from proxy.providers.anthropic.provider import AnthropicProvider

__all__ = ["AnthropicProvider"]

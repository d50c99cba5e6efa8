"""Prometheus Gateway: a self-hosted, OpenAI-compatible LLM gateway.

The request path lives in `proxy.app` (middleware) and `proxy.routes`; set-up
code in `proxy.config`, `proxy.server` and `proxy.cli`.
"""

__version__ = "0.1.0"

"""The built-in model line: the eight stable aliases and their list prices.

`proxy.config.load` starts from these and lets the config file or provider
credentials in the environment override them.
"""

from __future__ import annotations

from typing import Final

# alias -> (kind, input $/1M tokens, output $/1M tokens, audio $/minute)
ALIAS_CATALOGUE: Final[dict[str, tuple[str, float, float, float]]] = {
    "prometheus-spark": ("chat", 0.15, 0.60, 0.0),
    "prometheus-lite": ("chat", 0.10, 0.40, 0.0),
    "prometheus-core": ("chat", 1.10, 4.40, 0.0),
    "prometheus-vision": ("chat", 0.40, 1.60, 0.0),
    "prometheus-pulse": ("chat", 0.15, 0.60, 0.0),
    "prometheus-surge": ("chat", 0.40, 1.60, 0.0),
    "prometheus-atlas": ("embeddings", 0.02, 0.0, 0.0),
    "prometheus-echo": ("transcription", 0.0, 0.0, 0.006),
}

# Upstream model names used when a provider credential is found in the
# environment (documented in the README).
OPENAI_DEFAULT_MODELS: Final[dict[str, str]] = {
    "prometheus-spark": "gpt-4.1-nano",
    "prometheus-lite": "gpt-4.1-mini",
    "prometheus-core": "gpt-4.1",
    "prometheus-vision": "gpt-4.1-mini",
    "prometheus-pulse": "gpt-4o-mini",
    "prometheus-surge": "gpt-4o",
    "prometheus-atlas": "text-embedding-3-small",
    "prometheus-echo": "whisper-1",
}

# The simulator's pace per alias: (time to first token ms, tokens per second).
SIM_PACE: Final[dict[str, tuple[float, float]]] = {
    "prometheus-spark": (40.0, 400.0),
    "prometheus-lite": (80.0, 200.0),
    "prometheus-core": (250.0, 80.0),
    "prometheus-vision": (150.0, 120.0),
    "prometheus-pulse": (30.0, 300.0),
    "prometheus-surge": (60.0, 200.0),
    "prometheus-atlas": (10.0, 0.0),
    "prometheus-echo": (100.0, 0.0),
}

DEFAULT_HOST: Final = "127.0.0.1"
DEFAULT_PORT: Final = 8080
DEFAULT_CONFIG_FILE: Final = "prometheus.toml"
DEFAULT_DB_PATH: Final = "prometheus.db"
DEFAULT_MAX_BODY_MB: Final = 32.0

# Aliases whose streams hedge their first token by default ("auto") when they
# have two or more deployments: the voice tiers, where TTFT is the product.
HEDGED_BY_DEFAULT: Final = frozenset({"prometheus-pulse", "prometheus-surge"})

"""The typed settings: what `proxy.config.load` builds once at start.

`GatewayConfig` holds everything a process needs; `AliasRoute` is one alias
(its kind, price and deployments) and `Deployment` one upstream that can serve
it. The request path reads these; nothing on it reads files or the environment.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from proxy.config import catalogue


@dataclass(frozen=True, slots=True)
class Price:
    input_per_mtok: float = 0.0
    output_per_mtok: float = 0.0
    audio_per_minute: float = 0.0

    def cost(self, input_tokens: int, output_tokens: int, audio_seconds: float = 0.0) -> float:
        return (
            input_tokens * self.input_per_mtok / 1e6
            + output_tokens * self.output_per_mtok / 1e6
            + audio_seconds * self.audio_per_minute / 60.0
        )


@dataclass(frozen=True, slots=True)
class Deployment:
    """One upstream that can serve an alias."""

    provider: str
    model: str
    base_url: str = ""
    api_key: str = field(default="", repr=False)
    weight: float = 1.0
    timeout_s: float = 600.0  # idle: the longest silence while reading a reply
    connect_timeout_s: float = 10.0  # to open a connection to the upstream
    first_byte_timeout_s: float = 120.0  # until the upstream's answer (status, headers) begins
    first_token_timeout_s: float = 300.0  # streams: until the first content arrives
    total_timeout_s: float = 900.0  # the whole exchange, stream included
    max_reply_mb: float = 100.0  # a whole JSON reply
    max_event_kb: float = 1024.0  # one SSE event
    encoding: str = "o200k_base"
    # simulator pace (provider = "sim" only)
    ttft_ms: float = 0.0
    tokens_per_second: float = 0.0

    @property
    def name(self) -> str:
        return f"{self.provider}:{self.model}"


@dataclass(frozen=True, slots=True)
class AliasRoute:
    alias: str
    kind: str  # chat | embeddings | transcription
    deployments: tuple[Deployment, ...]
    price: Price
    priced: bool = True
    hedge_ms: float | str | None = None  # a delay, "auto" (recent p90 TTFT), or no hedging


@dataclass(frozen=True, slots=True)
class ShipConfig:
    """`[ship]`: the sidecar (`prometheus-gateway ship`) that ships usage upstream."""

    postgres_dsn: str = field(default="", repr=False)
    http_url: str = ""
    batch_size: int = 500
    interval_s: float = 1.0
    retain_days: float = 30.0
    node_id: str = ""  # set by load: the config's value or the host name
    metrics_port: int = 0  # the sidecar's own /metrics; 0: none


@dataclass(frozen=True, slots=True)
class GatewayConfig:
    host: str = catalogue.DEFAULT_HOST
    port: int = catalogue.DEFAULT_PORT
    workers: int = 1
    max_body_bytes: int = int(catalogue.DEFAULT_MAX_BODY_MB * 1024 * 1024)
    drain_s: float = 30.0  # on SIGTERM, how long requests in flight may take to finish
    db_path: Path = Path(catalogue.DEFAULT_DB_PATH)
    routes: dict[str, AliasRoute] = field(default_factory=dict)
    source: str = "built-in defaults"
    upstream_source: str = "sim"  # how the default aliases are served
    warnings: tuple[str, ...] = ()
    ship: ShipConfig = field(default_factory=ShipConfig)
    cluster_dsn: str = field(default="", repr=False)  # `[cluster] postgres_dsn`
    metrics_per_key: bool = False  # `[metrics] per_key`: a key_id label on /metrics
    redis_url: str | None = None  # [cluster]: per-key limits shared across machines
    redis_prefix: str = "prometheus:"

    @property
    def journal_dir(self) -> Path:
        return self.db_path.with_name(self.db_path.name + ".journal")

    def all_simulated(self) -> bool:
        return all(d.provider == "sim" for r in self.routes.values() for d in r.deployments)

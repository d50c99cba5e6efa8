"""Building the one `GatewayConfig` at start, from the file, the environment and
the catalogue.

`load_config` reads the TOML file named by `--config`, `PROMETHEUS_CONFIG` or
`./prometheus.toml` (in that order), checks it against the config schema
(`proxy.config.validate`: a wrong type, an unknown field or value is refused
naming the field, before anything is read; with `check_apart`, as `serve` and
`ship` ask, in a child process), lays it over the built-in defaults from
`proxy.config.catalogue`, and switches the defaults to real upstreams when provider
credentials are in the environment. The CLI, the server and the tests build a
`GatewayConfig` this way; nothing on the request path reads files or env.
"""

from __future__ import annotations

import os
import socket
import tomllib
from pathlib import Path
from typing import Any

from proxy.config import catalogue
from proxy.config.model import AliasRoute, Deployment, GatewayConfig, Price, ShipConfig
from proxy.config.validate import config_errors, config_errors_apart


class ConfigError(ValueError):
    """The config file is unreadable or names something we cannot serve."""


def _sim_deployment(alias: str) -> Deployment:
    ttft, tps = catalogue.SIM_PACE.get(alias, (50.0, 200.0))
    return Deployment(provider="sim", model=f"sim-{alias}", ttft_ms=ttft, tokens_per_second=tps)


def _default_routes(env: dict[str, str]) -> tuple[dict[str, AliasRoute], str]:
    openai_key = env.get("OPENAI_API_KEY", "")
    openai_base = env.get("OPENAI_BASE_URL", "https://api.openai.com/v1")
    routes: dict[str, AliasRoute] = {}
    for alias, (kind, pin, pout, paudio) in catalogue.ALIAS_CATALOGUE.items():
        if openai_key:
            dep = Deployment(
                provider="openai",
                model=catalogue.OPENAI_DEFAULT_MODELS[alias],
                base_url=openai_base,
                api_key=openai_key,
            )
        else:
            dep = _sim_deployment(alias)
        routes[alias] = AliasRoute(alias, kind, (dep,), Price(pin, pout, paudio))
    return routes, ("openai (OPENAI_API_KEY)" if openai_key else "sim")


def _parse_deployment(alias: str, raw: dict[str, Any], env: dict[str, str]) -> Deployment:
    provider = str(raw.get("provider", "openai"))
    if provider not in ("openai", "anthropic", "sim"):
        raise ConfigError(f"models.{alias}: provider {provider!r} is not supported yet")
    api_key = str(raw.get("api_key", ""))
    if not api_key and raw.get("api_key_env"):
        api_key = env.get(str(raw["api_key_env"]), "")
    default_url = "https://api.anthropic.com" if provider == "anthropic" else ""
    base_url = str(raw.get("base_url", default_url)).rstrip("/")
    if provider == "openai" and not base_url:
        raise ConfigError(f"models.{alias}: an openai deployment needs base_url")
    pace = catalogue.SIM_PACE.get(alias, (50.0, 200.0))
    return Deployment(
        provider=provider,
        model=str(raw.get("model", f"sim-{alias}" if provider == "sim" else alias)),
        base_url=base_url,
        api_key=api_key,
        weight=float(raw.get("weight", 1.0)),
        timeout_s=float(raw.get("timeout_s", 600.0)),
        connect_timeout_s=float(raw.get("connect_timeout_s", 10.0)),
        first_byte_timeout_s=float(raw.get("first_byte_timeout_s", 120.0)),
        first_token_timeout_s=float(raw.get("first_token_timeout_s", 300.0)),
        total_timeout_s=float(raw.get("total_timeout_s", 900.0)),
        max_reply_mb=float(raw.get("max_reply_mb", 100.0)),
        max_event_kb=float(raw.get("max_event_kb", 1024.0)),
        encoding=str(raw.get("encoding", "o200k_base")),
        ttft_ms=float(raw.get("ttft_ms", pace[0])),
        tokens_per_second=float(raw.get("tokens_per_second", pace[1])),
    )


def _parse_models(
    models: dict[str, Any], routes: dict[str, AliasRoute], env: dict[str, str]
) -> list[str]:
    warnings: list[str] = []
    for alias, spec in models.items():
        if not isinstance(spec, dict):
            raise ConfigError(f"models.{alias} must be a table")
        base = routes.get(alias)
        raw_deps = spec.get("deployments")
        if raw_deps is None:
            if base is None:
                raise ConfigError(
                    f"models.{alias}: a new alias needs [[models.{alias}.deployments]]"
                )
            deps = base.deployments
        else:
            if not isinstance(raw_deps, list) or not raw_deps:
                raise ConfigError(f"models.{alias}.deployments must be a non-empty array of tables")
            deps = tuple(_parse_deployment(alias, d, env) for d in raw_deps)
        kind = str(spec.get("kind", base.kind if base else "chat"))
        raw_price = spec.get("price")
        if raw_price is not None:
            price = Price(
                float(raw_price.get("input_per_mtok", 0.0)),
                float(raw_price.get("output_per_mtok", 0.0)),
                float(raw_price.get("audio_per_minute", 0.0)),
            )
            priced = True
        elif base is not None:
            price, priced = base.price, base.priced
        else:
            price, priced = Price(), False
            warnings.append(f"alias {alias} has no [models.{alias}.price] table: it costs 0")
        hedge = _hedge_ms(alias, spec.get("hedge_ms"), len(deps))
        routes[alias] = AliasRoute(alias, kind, deps, price, priced, hedge)
    return warnings


def _hedge_ms(alias: str, raw: Any, deployments: int) -> float | str | None:
    """An alias's hedge delay: as set, or "auto" for the voice tiers with a
    deployment to hedge to."""
    if raw is None:
        return "auto" if alias in catalogue.HEDGED_BY_DEFAULT and deployments >= 2 else None
    if raw == "auto":
        return "auto"
    if isinstance(raw, bool) or not isinstance(raw, (int, float)) or raw <= 0:
        raise ConfigError(f'models.{alias}.hedge_ms must be a positive number or "auto"')
    return float(raw)


def _ship(raw: dict[str, Any], env: dict[str, str]) -> ShipConfig:
    dsn = str(raw.get("postgres_dsn", ""))
    if not dsn and raw.get("postgres_dsn_env"):
        dsn = env.get(str(raw["postgres_dsn_env"]), "")
    return ShipConfig(
        postgres_dsn=dsn,
        http_url=str(raw.get("http_url", "")),
        batch_size=int(raw.get("batch_size", 500)),
        interval_s=float(raw.get("interval_s", 1.0)),
        retain_days=float(raw.get("retain_days", 30.0)),
        node_id=str(raw.get("node_id", "") or socket.gethostname()),
        metrics_port=int(raw.get("metrics_port", 0)),
    )


def _cluster_dsn(raw: dict[str, Any], env: dict[str, str]) -> str:
    dsn = str(raw.get("postgres_dsn", ""))
    if not dsn and raw.get("postgres_dsn_env"):
        dsn = env.get(str(raw["postgres_dsn_env"]), "")
    return dsn


def find_config_file(explicit: str | None, env: dict[str, str]) -> Path | None:
    if explicit:
        return Path(explicit)
    if env.get("PROMETHEUS_CONFIG"):
        return Path(env["PROMETHEUS_CONFIG"])
    local = Path(catalogue.DEFAULT_CONFIG_FILE)
    return local if local.exists() else None


def _read_file(cfg_path: Path, check_apart: bool) -> dict[str, Any]:
    """The file's TOML table, checked against the config schema (by a child process
    with `check_apart`)."""
    try:
        text = cfg_path.read_text()
        raw = tomllib.loads(text)
    except FileNotFoundError as exc:
        raise ConfigError(f"config file {cfg_path} not found") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file {cfg_path}: cannot be read: {exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {cfg_path}: {exc}") from exc
    errors = config_errors_apart(text) if check_apart else config_errors(raw)
    if len(errors) == 1:
        raise ConfigError(f"config file {cfg_path}: {errors[0]}")
    if errors:
        raise ConfigError(f"config file {cfg_path}:" + "".join(f"\n  {e}" for e in errors))
    return raw


def load_config(
    path: str | None = None, env: dict[str, str] | None = None, check_apart: bool = False
) -> GatewayConfig:
    env = dict(os.environ) if env is None else env
    routes, upstream_source = _default_routes(env)
    cfg_path = find_config_file(path, env)
    raw: dict[str, Any] = {}
    if cfg_path is not None:
        raw = _read_file(cfg_path, check_apart)
    server = raw.get("server", {})
    cluster = raw.get("cluster", {})
    storage = raw.get("storage", {})
    warnings = _parse_models(raw.get("models", {}), routes, env)
    db_path = Path(str(storage.get("path", catalogue.DEFAULT_DB_PATH)))
    if cfg_path is not None and not db_path.is_absolute() and "path" in storage:
        db_path = cfg_path.parent / db_path
    return GatewayConfig(
        host=str(server.get("host", catalogue.DEFAULT_HOST)),
        port=int(server.get("port", catalogue.DEFAULT_PORT)),
        workers=int(server.get("workers", 1)),
        max_body_bytes=int(
            float(server.get("max_body_mb", catalogue.DEFAULT_MAX_BODY_MB)) * 1024 * 1024
        ),
        drain_s=max(0.0, float(server.get("drain_s", 30.0))),
        db_path=db_path.resolve(),
        routes=routes,
        source=str(cfg_path) if cfg_path else "built-in defaults",
        upstream_source=upstream_source,
        warnings=tuple(warnings),
        ship=_ship(raw.get("ship", {}), env),
        cluster_dsn=_cluster_dsn(raw.get("cluster", {}), env),
        metrics_per_key=bool(raw.get("metrics", {}).get("per_key", False)),
        redis_url=str(cluster["redis_url"]) if cluster.get("redis_url") else None,
        redis_prefix=str(cluster.get("redis_prefix", "prometheus:")),
    )

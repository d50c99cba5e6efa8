"""The `prometheus-gateway` command line (also `python -m proxy`).

Only argument parsing and printing live here; the work is in `proxy.server.lifecycle`
(serve), `proxy.auth.keys` (keys), `proxy.usage.report` (usage; `--central`:
`proxy.usage.sinks.pg_report`), `proxy.usage.ship` (ship, the sidecar) and
`proxy.providers.sim.server` (sim).
"""

from __future__ import annotations

import argparse
import dataclasses
import sqlite3
import sys
from collections.abc import Callable
from contextlib import closing
from typing import Any

import orjson

from proxy import storage
from proxy.auth import key_params, keys
from proxy.auth.key_params import KeyParamError
from proxy.config.load import ConfigError, load_config
from proxy.config.model import GatewayConfig


def _print_json(value: Any) -> None:
    sys.stdout.write(orjson.dumps(value, option=orjson.OPT_INDENT_2).decode() + "\n")


def _database(args: argparse.Namespace) -> closing[sqlite3.Connection]:
    """The config's SQLite file, closed when the `with` block ends."""
    return closing(storage.connect(_config(args).db_path))


def _config(args: argparse.Namespace, long_running: bool = False) -> GatewayConfig:
    """The config; a process that then runs for long (`serve`, `ship`) has the file
    checked by a child process, so that it never holds jsonschema."""
    return load_config(args.config, check_apart=long_running)


def cmd_serve(args: argparse.Namespace) -> int:
    from proxy.server.lifecycle import serve

    config = _config(args, long_running=True)
    overrides: dict[str, Any] = {}
    if args.host:
        overrides["host"] = args.host
    if args.port:
        overrides["port"] = args.port
    if args.workers:
        overrides["workers"] = args.workers
    from proxy.observability import metrics

    metrics.prepare(config.journal_dir / "metrics", per_key=config.metrics_per_key)
    serve(dataclasses.replace(config, **overrides))
    return 0


def cmd_ship(args: argparse.Namespace) -> int:
    from proxy.usage.ship import NoSinkError, ship

    try:
        return ship(_config(args, long_running=not args.once), once=args.once)
    except NoSinkError as exc:
        print(f"prometheus-gateway: {exc}", file=sys.stderr)
        return 2


def _checked(check: Callable[[str], Any]) -> Callable[[str], Any]:
    """An argparse `type=` from a `proxy.auth.key_params` check: a refused value is
    a usage error (the rule on stderr, exit 2), before anything is written."""

    def parse(text: str) -> Any:
        try:
            return check(text)
        except KeyParamError as exc:
            raise argparse.ArgumentTypeError(exc.rule) from None

    return parse


def _key_id(text: str) -> str:
    if keys.looks_like_key(text):
        raise argparse.ArgumentTypeError(
            "pass the key's id (key_..., see `keys list`), not the key"
        )
    return text


def _grace_from_text(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise KeyParamError("grace_s", key_params.GRACE_RULE) from None
    return key_params.check_grace(value)


def cmd_keys_create(args: argparse.Namespace) -> int:
    with _database(args) as conn:
        created = keys.create_key(
            conn,
            args.name,
            rpm=args.rpm,
            tpm=args.tpm,
            budget_usd=args.budget_usd,
            models=args.models,
            budget_period=args.budget_period,
            expires_at=args.expires_at,
        )
    if args.json:
        _print_json(created)
    else:
        print(created["key"])
        print(
            f"id: {created['id']}  name: {created['name']}  (the key is shown only once)",
            file=sys.stderr,
        )
    return 0


def cmd_keys_list(args: argparse.Namespace) -> int:
    with _database(args) as conn:
        rows = keys.list_keys(conn)
    if args.json:
        _print_json(rows)
        return 0
    print(f"{'id':<22} {'name':<20} {'prefix':<14} {'status':<8} models")
    for r in rows:
        status = "revoked" if r["revoked"] else "active"
        print(
            f"{r['id']:<22} {r['name'][:20]:<20} {r['key_prefix']:<14} {status:<8} "
            f"{','.join(r['models']) if r['models'] else 'all'}"
        )
    return 0


UPDATE_FIELDS = ("name", "rpm", "tpm", "budget_usd", "budget_period", "models", "expires_at")


def cmd_keys_update(args: argparse.Namespace) -> int:
    changes = {f: getattr(args, f) for f in UPDATE_FIELDS if hasattr(args, f)}
    if not changes:
        print("prometheus-gateway: keys update: nothing to change", file=sys.stderr)
        return 2
    with _database(args) as conn:
        updated = keys.update_key(conn, args.id, changes)
    if updated is None:
        print(f"no key with id {args.id}", file=sys.stderr)
        return 1
    if args.json:
        _print_json(updated)
    else:
        print(f"updated {args.id}: " + ", ".join(f"{k}={updated[k]}" for k in changes))
    return 0


def cmd_keys_rotate(args: argparse.Namespace) -> int:
    with _database(args) as conn:
        rotated = keys.rotate_key(conn, args.id, args.grace_s)
    if rotated is None:
        print(f"no active key with id {args.id}", file=sys.stderr)
        return 1
    if args.json:
        _print_json(rotated)
    else:
        print(rotated["key"])
        print(
            f"id: {args.id}  the old secret works for {args.grace_s:g} s more"
            "  (the new key is shown only once)",
            file=sys.stderr,
        )
    return 0


def _or_none(check: Callable[[str], Any]) -> Callable[[str], Any]:
    """`keys update`: `none` clears a setting, anything else is checked."""

    def parse(text: str) -> Any:
        return None if text.strip().lower() == "none" else check(text)

    return parse


def _add_limit_options(p: argparse.ArgumentParser, update: bool) -> None:
    wrap = _or_none if update else (lambda check: check)
    extra: dict[str, Any] = {"default": argparse.SUPPRESS} if update else {}
    p.add_argument(
        "--rpm", type=_checked(wrap(lambda t: key_params.limit_from_text("rpm", t))), **extra
    )
    p.add_argument(
        "--tpm", type=_checked(wrap(lambda t: key_params.limit_from_text("tpm", t))), **extra
    )
    p.add_argument("--budget-usd", type=_checked(wrap(key_params.budget_from_text)), **extra)
    p.add_argument(
        "--budget-period",
        type=_checked(key_params.check_period),
        help="the period budget_usd caps: total (default), monthly or daily (UTC)",
        **extra,
    )
    p.add_argument(
        "--models",
        type=_checked(wrap(key_params.check_models)),
        help="comma-separated aliases the key may use (default: every alias)",
        **extra,
    )
    p.add_argument(
        "--expires-at",
        type=_checked(key_params.expires_from_text),
        help="when the key stops working: epoch seconds or ISO 8601 (never: no expiry)",
        **extra,
    )


def cmd_keys_revoke(args: argparse.Namespace) -> int:
    with _database(args) as conn:
        done = keys.revoke_key(conn, args.id)
    if args.json:
        _print_json({"id": args.id, "revoked": done})
    else:
        print(f"revoked {args.id}" if done else f"no active key with id {args.id}")
    return 0 if done else 1


def _central_usage(config: GatewayConfig, key_id: str | None, by: str) -> list[dict[str, Any]]:
    from proxy.usage.sinks.pg_report import query_central_usage

    dsn = config.ship.postgres_dsn or config.cluster_dsn
    if not dsn:
        raise ConfigError("--central needs [ship] postgres_dsn or [cluster] postgres_dsn")
    return query_central_usage(dsn, key_id, by)


def cmd_usage(args: argparse.Namespace) -> int:
    # imported here: the gateway's processes, which import this module, never report
    from proxy.usage.report import known_zone
    from proxy.usage.report_out import write_rows, write_usage

    config = _config(args)
    if not known_zone(args.tz):
        print(f"usage: --tz {args.tz!r} is not a known IANA timezone", file=sys.stderr)
        return 2
    out = sys.stdout.buffer
    sys.stdout.flush()
    if args.central:
        if args.tz != "UTC":
            print("usage: the central ledger has UTC days and weeks only", file=sys.stderr)
            return 2
        write_rows(out, _central_usage(config, args.key_id, args.by), args.json)
    else:
        with closing(storage.connect(config.db_path)) as conn:
            db = str(config.db_path)
            write_usage(out, conn, db, args.key_id, args.by, args.tz, args.json)
    out.flush()
    return 0


def cmd_sim(args: argparse.Namespace) -> int:
    from proxy.providers.sim.server import run_sim

    run_sim(args.host, args.port, args.ttft_ms, args.tokens_per_second)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="prometheus-gateway", description="OpenAI-compatible LLM gateway"
    )
    sub = parser.add_subparsers(dest="command", required=True)

    def with_config(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument(
            "--config", help="TOML config file (default: $PROMETHEUS_CONFIG or ./prometheus.toml)"
        )
        return p

    serve = with_config(sub.add_parser("serve", help="run the gateway"))
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    serve.add_argument("--workers", type=int)
    serve.set_defaults(func=cmd_serve)

    key_cmd = sub.add_parser("keys", help="create, list, update, rotate and revoke API keys")
    key_sub = key_cmd.add_subparsers(dest="keys_command", required=True)
    create = with_config(key_sub.add_parser("create", help="mint a new key"))
    create.add_argument("--name", required=True, type=_checked(key_params.check_name))
    _add_limit_options(create, update=False)
    create.add_argument("--json", action="store_true")
    create.set_defaults(func=cmd_keys_create)
    update = with_config(
        key_sub.add_parser("update", help="change a key's limits (none clears one)")
    )
    update.add_argument("id", type=_key_id)
    update.add_argument("--name", type=_checked(key_params.check_name), default=argparse.SUPPRESS)
    _add_limit_options(update, update=True)
    update.add_argument("--json", action="store_true")
    update.set_defaults(func=cmd_keys_update)
    rotate = with_config(
        key_sub.add_parser(
            "rotate", help="a new secret for a key; the old one works --grace-s more"
        )
    )
    rotate.add_argument("id", type=_key_id)
    rotate.add_argument("--grace-s", type=_checked(_grace_from_text), default=0.0)
    rotate.add_argument("--json", action="store_true")
    rotate.set_defaults(func=cmd_keys_rotate)
    lst = with_config(key_sub.add_parser("list", help="list keys"))
    lst.add_argument("--json", action="store_true")
    lst.set_defaults(func=cmd_keys_list)
    revoke = with_config(key_sub.add_parser("revoke", help="revoke a key by id"))
    revoke.add_argument("id", type=_key_id)
    revoke.add_argument("--json", action="store_true")
    revoke.set_defaults(func=cmd_keys_revoke)

    usage = with_config(sub.add_parser("usage", help="usage per key, alias and day or week"))
    usage.add_argument("--key-id")
    usage.add_argument("--by", choices=("hour", "day", "week"), default="day")
    usage.add_argument("--json", action="store_true")
    usage.add_argument("--tz", default="UTC", help="IANA timezone of the days and weeks (UTC)")
    usage.add_argument(
        "--central", action="store_true", help="read the cluster's central ledger (PostgreSQL)"
    )
    usage.set_defaults(func=cmd_usage)

    ship = with_config(
        sub.add_parser("ship", help="the sidecar: ship usage rows to the central ledger")
    )
    ship.add_argument("--once", action="store_true", help="ship what is there, then exit")
    ship.set_defaults(func=cmd_ship)

    sim = sub.add_parser(
        "sim", help="serve the simulator as a standalone OpenAI-compatible upstream"
    )
    sim.add_argument("--host", default="127.0.0.1")
    sim.add_argument("--port", type=int, default=9000)
    sim.add_argument("--ttft-ms", type=float, default=0.0)
    sim.add_argument("--tokens-per-second", type=float, default=0.0, help="0 = as fast as possible")
    sim.set_defaults(func=cmd_sim)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except ConfigError as exc:
        print(f"prometheus-gateway: {exc}", file=sys.stderr)
        return 2

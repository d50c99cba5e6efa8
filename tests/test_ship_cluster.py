"""Two gateway nodes, each with its own SQLite file and its own sidecar, ship
into one PostgreSQL ledger: after a scripted load the ledger holds, row for
row, what each client was billed (the usage the client saw in its replies,
under the request id it was answered with), and `usage --central` adds both
nodes up."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path
from typing import Any

import openai
from central_pg import ShipProcess, fetch, ledger_count, pg_dsn, ship_config
from gateway_process import ADMIN_KEY, GatewayProcess, gateway_config
from upstream_app import Upstream
from waiting import wait_for

__all__ = ["pg_dsn"]


def billed_load(gw: GatewayProcess, key: str, n: int) -> dict[str, tuple[int, int]]:
    """Requests on `gw`; request id -> (prompt, completion) tokens the client saw."""
    client = openai.OpenAI(base_url=gw.base_url, api_key=key, max_retries=0, timeout=30)
    billed: dict[str, tuple[int, int]] = {}
    for i in range(n):
        raw = client.chat.completions.with_raw_response.create(
            model=("prometheus-lite", "prometheus-core", "team-custom")[i % 3],
            messages=[{"role": "user", "content": "word " * (i % 5 + 1)}],
        )
        reply = raw.parse()
        assert reply.usage is not None
        billed[raw.headers["x-request-id"]] = (
            reply.usage.prompt_tokens,
            reply.usage.completion_tokens,
        )
    for _ in range(2):
        stream = client.chat.completions.create(
            model="prometheus-lite",
            messages=[{"role": "user", "content": "a stream"}],
            stream=True,
            stream_options={"include_usage": True},
        )
        usage = None
        for chunk in stream:
            usage = chunk.usage or usage
        assert usage is not None
        billed[stream.response.headers["x-request-id"]] = (
            usage.prompt_tokens,
            usage.completion_tokens,
        )
    return billed


def test_two_nodes_one_ledger_row_for_row(upstream: Upstream, pg_dsn: str, tmp_path: Path) -> None:
    nodes: list[tuple[str, GatewayProcess, ShipProcess]] = []
    try:
        for name in ("node-a", "node-b"):
            work = tmp_path / name
            gw = GatewayProcess(
                work, gateway_config(upstream.base_url) + ship_config(pg_dsn, node_id=name)
            ).start()
            assert gw.config is not None
            nodes.append((name, gw, ShipProcess(work, gw.config).start()))
        billed: dict[str, dict[str, tuple[int, int]]] = {}
        keys: dict[str, dict[str, Any]] = {}
        for name, gw, _ in nodes:
            keys[name] = gw.create_key(f"client-{name}")
            billed[name] = billed_load(gw, keys[name]["key"], 15)
        total = sum(len(b) for b in billed.values())
        wait_for(lambda: ledger_count(pg_dsn) >= total, timeout=30, message="every row shipped")
        ledger = fetch(pg_dsn, "SELECT * FROM usage_requests")
        assert len(ledger) == total
        for name, gw, _ in nodes:
            local = {
                r[0]: r
                for r in gw.db_rows(
                    "SELECT request_id, key_id, model, input_tokens, output_tokens, cost_usd"
                    " FROM requests"
                )
            }
            mine = {r["request_id"]: r for r in ledger if r["node_id"] == name}
            assert set(mine) == set(local) == set(billed[name])
            for rid, (prompt, completion) in billed[name].items():
                row = mine[rid]
                assert row["id"] == f"{name}:{rid}"
                assert (row["input_tokens"], row["output_tokens"]) == (prompt, completion)
                assert row["key_id"] == keys[name]["id"]
                assert row["cost_usd"] == local[rid][5]
        # the rollup counts the same rows
        daily = fetch(
            pg_dsn,
            "SELECT key_id, sum(requests)::bigint AS n, sum(input_tokens)::bigint AS i"
            " FROM usage_daily GROUP BY key_id",
        )
        assert {d["key_id"]: (d["n"], d["i"]) for d in daily} == {
            keys[name]["id"]: (len(b), sum(p for p, _ in b.values())) for name, b in billed.items()
        }
        # usage --central on either node shows both nodes' keys
        central = json.loads(nodes[0][1].cli("usage", "--central", "--json").stdout)
        assert {r["key_id"] for r in central} == {k["id"] for k in keys.values()}
        assert sum(r["requests"] for r in central) == total
        # and GET /admin/usage?central=1 on the other node gives the same rows
        req = urllib.request.Request(
            f"{nodes[1][1].root_url}/admin/usage?central=1",
            headers={"Authorization": f"Bearer {ADMIN_KEY}"},
        )
        with urllib.request.urlopen(req, timeout=10) as r:
            assert json.loads(r.read()) == central
    finally:
        for _, gw, ship in nodes:
            ship.stop()
            gw.stop()

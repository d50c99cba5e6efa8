"""Keys across a cluster: two gateway nodes with their own SQLite files and
sidecars share one PostgreSQL (`[cluster] postgres_dsn`). A key created on
node A authenticates on node B within 2 s; revoked on B, it stops on A within
2 s. The promise is checked with `assert_holds_within`, from the moment the
CLI returned."""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from pathlib import Path

from central_pg import ShipProcess, fetch, pg_dsn, table_exists
from gateway_process import GatewayProcess, gateway_config
from upstream_app import Upstream
from waiting import assert_holds_within, wait_for

__all__ = ["pg_dsn"]
PROMISED_S = 2.0


def status(gw: GatewayProcess, key: str) -> int:
    req = urllib.request.Request(
        f"{gw.base_url}/models", headers={"Authorization": f"Bearer {key}"}
    )
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return int(r.status)
    except urllib.error.HTTPError as err:
        return int(err.code)


def cluster_section(dsn: str) -> str:
    return f'\n[cluster]\npostgres_dsn = "{dsn}"\n'


def test_keys_created_and_revoked_anywhere_work_everywhere_within_2s(
    upstream: Upstream, pg_dsn: str, tmp_path: Path
) -> None:
    nodes: list[tuple[GatewayProcess, ShipProcess]] = []
    try:
        for name in ("a", "b"):
            gw = GatewayProcess(
                tmp_path / name, gateway_config(upstream.base_url) + cluster_section(pg_dsn)
            ).start()
            assert gw.config is not None
            nodes.append((gw, ShipProcess(gw.workdir, gw.config).start()))
        (a, ship_a), (b, ship_b) = nodes
        # an existing key of A's (made before the sync ran) reaches B as well
        early = a.create_key("made-before")
        wait_for(lambda: table_exists(pg_dsn, "api_keys"), message="the cluster key table")
        wait_for(lambda: status(b, early["key"]) == 200, message="A's earlier key on B")

        key = a.create_key("made-on-a")
        t0 = time.monotonic()
        assert status(a, key["key"]) == 200
        assert_holds_within(
            lambda: status(b, key["key"]) == 200,
            since=t0,
            promised_s=PROMISED_S,
            message="a key created on A authenticates on B",
        )
        b.cli("keys", "revoke", key["id"])
        t0 = time.monotonic()
        wait_for(lambda: status(b, key["key"]) == 401, message="the key stopped on B itself")
        assert_holds_within(
            lambda: status(a, key["key"]) == 401,
            since=t0,
            promised_s=PROMISED_S,
            message="a key revoked on B stops on A",
        )
        central = fetch(pg_dsn, "SELECT id, revoked_at FROM api_keys ORDER BY created_at")
        assert [(r["id"], r["revoked_at"] is not None) for r in central] == [
            (early["id"], False),
            (key["id"], True),
        ]
        # a sidecar restarted with its node's state forgotten revokes nothing back
        ship_a.stop()
        ship_a = ShipProcess(a.workdir, ship_a.config).start()
        nodes[0] = (a, ship_a)
        assert status(a, early["key"]) == 200 and status(b, early["key"]) == 200
    finally:
        for gw, ship in nodes:
            ship.stop()
            gw.stop()

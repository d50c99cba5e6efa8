"""The HTTP sink: gzip NDJSON batches with an idempotency key, and a receiver
that answers 500 first, then 200, gets every row exactly once.

The receiver here is a small stdlib HTTP server that keeps what it accepted
by idempotency key, as a real one would: a batch it answered 500 to is not
stored, the sidecar sends it again, and the second copy is taken.
"""

from __future__ import annotations

import gzip
import http.server
import json
import sqlite3
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from central_pg import ShipProcess, ship_config
from gateway_process import free_port
from test_ship_exactly_once import write_rows
from waiting import wait_for


class Receiver:
    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.seen: list[tuple[int, str, list[dict[str, Any]], dict[str, str]]] = []
        self.accepted: dict[str, list[dict[str, Any]]] = {}
        self.lock = threading.Lock()
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - the stdlib's name
                body = self.rfile.read(int(self.headers["Content-Length"]))
                lines = gzip.decompress(body).decode().splitlines()
                rows = [json.loads(line) for line in lines]
                key = self.headers["Idempotency-Key"]
                with receiver.lock:
                    status = 500 if receiver.failures > 0 else 200
                    receiver.failures -= 1
                    receiver.seen.append((status, key, rows, dict(self.headers)))
                    if status == 200:
                        receiver.accepted.setdefault(key, rows)
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/ingest"

    def rows(self) -> list[dict[str, Any]]:
        with self.lock:
            return [r for batch in self.accepted.values() for r in batch]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture()
def receiver() -> Iterator[Receiver]:
    r = Receiver(failures=2)
    yield r
    r.close()


def test_500_then_200_every_row_exactly_once(receiver: Receiver, tmp_path: Path) -> None:
    cfg = tmp_path / "prometheus.toml"
    cfg.write_text(
        '[storage]\npath = "gateway.db"\n'
        + ship_config(http_url=receiver.url, node_id="node-h", batch_size=50)
    )
    db = tmp_path / "gateway.db"
    rows = write_rows(db, 230)
    ship = ShipProcess(tmp_path, cfg).start()
    try:
        wait_for(lambda: len(receiver.rows()) >= len(rows), timeout=30, message="every row")
        more = write_rows(db, 20, start=230)  # shipped while it runs
        wait_for(lambda: len(receiver.rows()) >= 250, timeout=30, message="the late rows")
    finally:
        ship.stop()
    got = receiver.rows()
    assert sorted(r["id"] for r in got) == sorted(f"node-h:{r[0]}" for r in rows + more)
    by_id = {r["request_id"]: r for r in got}
    for row in rows + more:
        assert (by_id[row[0]]["input_tokens"], by_id[row[0]]["cost_usd"]) == (row[8], row[11])
    failed = [s for s in receiver.seen if s[0] == 500]
    assert len(failed) == 2
    # what failed was sent again whole, under the same idempotency key
    for _, key, batch, headers in failed:
        assert receiver.accepted[key] == batch
        assert headers["Content-Encoding"] == "gzip"
        assert headers["Content-Type"] == "application/x-ndjson"
    conn = sqlite3.connect(db)
    assert conn.execute("SELECT watermark FROM ship_state WHERE sink = 'http'").fetchone()[0] == 250
    conn.close()


def test_a_sink_that_is_down_keeps_rows_and_once_fails(tmp_path: Path) -> None:
    cfg = tmp_path / "prometheus.toml"
    cfg.write_text(
        '[storage]\npath = "gateway.db"\n'
        + ship_config(http_url=f"http://127.0.0.1:{free_port()}/down", node_id="n", retain_days=0)
    )
    db = tmp_path / "gateway.db"
    write_rows(db, 10)
    done = ShipProcess(tmp_path, cfg).once()
    assert done.returncode == 1
    conn = sqlite3.connect(db)
    # retain_days = 0 prunes shipped rows at once; these were never shipped: all kept
    assert conn.execute("SELECT count(*) FROM requests").fetchone()[0] == 10
    conn.close()


def test_shipped_rows_past_retention_are_pruned(receiver: Receiver, tmp_path: Path) -> None:
    receiver.failures = 0
    cfg = tmp_path / "prometheus.toml"
    cfg.write_text(
        '[storage]\npath = "gateway.db"\n'
        + ship_config(http_url=receiver.url, node_id="n", retain_days=0.01)  # 14.4 minutes
    )
    db = tmp_path / "gateway.db"
    write_rows(db, 10)  # an hour old
    conn = sqlite3.connect(db)
    with conn:  # and one from now
        conn.execute(
            "INSERT INTO requests (request_id, ts, key_id, model, deployment, endpoint, status,"
            " stream, input_tokens, output_tokens, audio_seconds, cost_usd, latency_ms,"
            " usage_source) VALUES ('req_new', strftime('%s','now'), 'k', 'm', 'd', 'chat', 200,"
            " 0, 1, 1, 0, 0, 1, 'upstream')"
        )
    assert ShipProcess(tmp_path, cfg).once().returncode == 0
    assert len(receiver.rows()) == 11
    left = [r[0] for r in conn.execute("SELECT request_id FROM requests")]
    conn.close()
    assert left == ["req_new"]


def test_sidecar_metrics_show_rows_waiting_and_lag(tmp_path: Path) -> None:
    """With its sink down, the sidecar's own /metrics says how many rows wait and
    how old the oldest is."""
    from prometheus_client.parser import text_string_to_metric_families

    port = free_port()
    cfg = tmp_path / "prometheus.toml"
    cfg.write_text(
        '[storage]\npath = "gateway.db"\n'
        + ship_config(
            http_url=f"http://127.0.0.1:{free_port()}/down", node_id="n", metrics_port=port
        )
    )
    write_rows(tmp_path / "gateway.db", 10)  # an hour old and older

    def scrape() -> dict[str, float]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
                text = r.read().decode()
        except OSError:
            return {}
        return {
            s.name: s.value
            for f in text_string_to_metric_families(text)
            for s in f.samples
            if not s.labels
        }

    ship = ShipProcess(tmp_path, cfg).start()
    try:
        seen = wait_for(
            lambda: (m := scrape()).get("prometheus_gateway_ship_rows_waiting") == 10 and m,
            message="10 rows waiting on the sidecar's /metrics",
        )
        assert seen["prometheus_gateway_ship_lag_seconds"] > 3000
    finally:
        ship.stop()

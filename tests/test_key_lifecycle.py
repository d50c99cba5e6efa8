"""A key's life: update, rotation with a grace period, expiry, the admin API's
every route (admin key, user key, no key) and `/v1/usage` showing only the
caller's own key; and a database from before these columns still serving.

Rotation runs on a gateway of two workers, so "works at once" and "stops
after the grace" are promises kept by every worker, not just one.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest
from gateway_process import ADMIN_KEY, GatewayProcess, gateway_config
from upstream_app import Upstream
from waiting import wait_for

CHAT = {"model": "prometheus-lite", "messages": [{"role": "user", "content": "hi"}]}


def call(
    gw: GatewayProcess, method: str, path: str, token: str | None, body: Any = None
) -> tuple[int, dict[str, str], Any]:
    conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=30)
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    try:
        conn.request(method, path, None if body is None else json.dumps(body), headers)
        resp = conn.getresponse()
        raw = resp.read()
        return (
            resp.status,
            {k.lower(): v for k, v in resp.getheaders()},
            json.loads(raw) if raw else None,
        )
    finally:
        conn.close()


def chat_status(gw: GatewayProcess, key: str) -> tuple[int, str | None]:
    status, _, body = call(gw, "POST", "/v1/chat/completions", key, CHAT)
    return status, (body or {}).get("error", {}).get("code") if status != 200 else None


@pytest.fixture(scope="module")
def two_workers(upstream: Upstream, tmp_path_factory: pytest.TempPathFactory) -> Any:
    gw = GatewayProcess(
        tmp_path_factory.mktemp("lifecycle"), gateway_config(upstream.base_url), workers=2
    )
    gw.start(timeout=60)
    yield gw
    gw.stop()


def new_key(gw: GatewayProcess, name: str, **settings: Any) -> dict[str, Any]:
    status, _, body = call(gw, "POST", "/admin/keys", ADMIN_KEY, {"name": name, **settings})
    assert status == 200, body
    return dict(body)


# -- rotation -------------------------------------------------------------------------


def test_rotation_keeps_the_old_secret_for_the_grace_then_stops_it(
    two_workers: GatewayProcess,
) -> None:
    gw = two_workers
    old = new_key(gw, "rotating")
    assert chat_status(gw, old["key"])[0] == 200
    rotated = json.loads(gw.cli("keys", "rotate", old["id"], "--grace-s", "3", "--json").stdout)
    assert rotated["id"] == old["id"] and rotated["key"] != old["key"]
    rotated_at = time.monotonic()
    # the new secret works at once, on every worker (SO_REUSEPORT spreads these)
    assert [chat_status(gw, rotated["key"]) for _ in range(8)] == [(200, None)] * 8
    # the old one still works during the grace...
    assert chat_status(gw, old["key"])[0] == 200 or time.monotonic() - rotated_at >= 3
    # ...and stops after it, on every worker
    wait_for(lambda: chat_status(gw, old["key"]) == (401, "invalid_api_key"), timeout=15)
    assert time.monotonic() - rotated_at >= 2.5
    assert [chat_status(gw, old["key"]) for _ in range(6)] == [(401, "invalid_api_key")] * 6
    assert chat_status(gw, rotated["key"])[0] == 200
    # one usage history under one key id
    wait_for(
        lambda: gw.db_rows("SELECT COUNT(*) FROM requests WHERE key_id = ?", old["id"])[0][0] >= 10,
        message="both secrets' requests recorded under one key id",
    )


def test_rotation_over_the_admin_api_with_no_grace(two_workers: GatewayProcess) -> None:
    gw = two_workers
    old = new_key(gw, "rotate-now")
    status, _, rotated = call(gw, "POST", f"/admin/keys/{old['id']}/rotate", ADMIN_KEY, {})
    assert status == 200 and rotated["key"].startswith("prom_sk_")
    assert chat_status(gw, rotated["key"])[0] == 200
    wait_for(lambda: chat_status(gw, old["key"])[0] == 401, timeout=5)
    status, _, body = call(
        gw, "POST", f"/admin/keys/{old['id']}/rotate", ADMIN_KEY, {"grace_s": -1}
    )
    assert status == 400 and body["error"]["param"] == "grace_s"


# -- update and expiry -------------------------------------------------------------------


def test_update_applies_limits_and_models_on_every_worker(two_workers: GatewayProcess) -> None:
    gw = two_workers
    key = new_key(gw, "updated")
    status, _, shown = call(gw, "PATCH", f"/admin/keys/{key['id']}", ADMIN_KEY, {"rpm": 2})
    assert status == 200 and shown["rpm"] == 2

    def limited() -> bool:
        _, headers, _ = call(gw, "GET", "/v1/models", key["key"])
        return headers.get("x-ratelimit-limit-requests") == "2"

    # 20 calls in a row (each on a new connection, which SO_REUSEPORT spreads): 6
    # could all land on the worker that made the change (1 in 64) while the other
    # had not reloaded yet, and that one then admitted every chat below
    wait_for(lambda: all(limited() for _ in range(20)), message="the new rpm seen by both workers")
    codes = [chat_status(gw, key["key"]) for _ in range(4)]
    assert codes.count((200, None)) == 2
    assert codes.count((429, "rate_limit_exceeded")) == 2
    # CLI: models restricted, then the rpm cleared
    gw.cli("keys", "update", key["id"], "--models", "prometheus-core", "--rpm", "none")
    wait_for(lambda: chat_status(gw, key["key"]) == (403, "model_not_allowed"), timeout=5)
    status, _, shown = call(gw, "GET", f"/admin/keys/{key['id']}", ADMIN_KEY)
    assert shown["rpm"] is None and shown["models"] == ["prometheus-core"]
    # refused settings: 400 naming the field, nothing changed
    for bad in ({"rpm": -1}, {"budget_period": "yearly"}, {"expires_at": "soon"}, {"owner": 1}):
        status, _, body = call(gw, "PATCH", f"/admin/keys/{key['id']}", ADMIN_KEY, bad)
        assert status == 400 and body["error"]["param"] == next(iter(bad)), body
    assert call(gw, "PATCH", "/admin/keys/key_nope", ADMIN_KEY, {"rpm": 1})[0] == 404


def test_an_expired_key_gets_its_own_401(two_workers: GatewayProcess) -> None:
    gw = two_workers
    key = new_key(gw, "expiring", expires_at=time.time() + 2)
    assert chat_status(gw, key["key"])[0] == 200
    wait_for(lambda: chat_status(gw, key["key"]) == (401, "expired_api_key"), timeout=10)
    past = new_key(gw, "expired", expires_at="2001-01-01T00:00:00Z")
    assert chat_status(gw, past["key"]) == (401, "expired_api_key")
    status, _, shown = call(gw, "GET", f"/admin/keys/{past['id']}", ADMIN_KEY)
    assert shown["expired"] is True


# -- the admin API: every route, three callers --------------------------------------------


def test_admin_routes_with_admin_key_user_key_and_none(two_workers: GatewayProcess) -> None:
    gw = two_workers
    user = new_key(gw, "a-user")
    target = new_key(gw, "a-target")
    revoked = new_key(gw, "a-revoked")
    wait_for(
        lambda: all(call(gw, "GET", "/admin/keys", user["key"])[0] == 403 for _ in range(6)),
        message="the user key known to both workers",
    )
    tid = target["id"]
    routes = [
        ("GET", "/admin/keys", None),
        ("GET", f"/admin/keys/{tid}", None),
        ("PATCH", f"/admin/keys/{tid}", {"tpm": 1000}),
        ("GET", "/admin/usage?by=hour&alias=prometheus-lite&from=2020-01-01", None),
        ("GET", "/admin/health", None),
        ("POST", f"/admin/keys/{tid}/rotate", {"grace_s": 0}),
        ("POST", "/admin/keys", {"name": "made-by-admin", "budget_usd": 1}),
        ("DELETE", f"/admin/keys/{tid}", None),
        ("POST", f"/admin/keys/{revoked['id']}/revoke", None),
    ]
    for method, path, body in routes:
        for token, want, code in (
            (None, 401, "missing_api_key"),
            (user["key"], 403, "admin_key_required"),
        ):
            status, headers, reply = call(gw, method, path, token, body)
            assert (status, reply["error"]["code"]) == (want, code), (method, path, reply)
            assert headers["x-request-id"].startswith("req_")
        status, _, reply = call(gw, method, path, ADMIN_KEY, body)
        assert status == 200, (method, path, reply)
    # DELETE revoked the target: gone for its holder, listed as revoked
    status, _, shown = call(gw, "GET", f"/admin/keys/{tid}", ADMIN_KEY)
    assert shown["revoked"] is True
    assert call(gw, "DELETE", f"/admin/keys/{tid}", ADMIN_KEY)[0] == 404


def test_v1_usage_shows_only_the_callers_key(two_workers: GatewayProcess) -> None:
    gw = two_workers
    mine, theirs = new_key(gw, "mine", rpm=50, budget_usd=2), new_key(gw, "theirs")
    for key in (mine, theirs, theirs):
        assert chat_status(gw, key["key"])[0] == 200

    def recorded(key: dict[str, Any]) -> int:
        return sum(row["requests"] for row in call(gw, "GET", "/v1/usage", key["key"])[2]["data"])

    wait_for(
        lambda: (recorded(mine), recorded(theirs)) == (1, 2), message="the usage rows in SQLite"
    )
    for key, requests in ((mine, 1), (theirs, 2)):
        # a key_id naming the other key is ignored: a holder sees its own usage only
        other = theirs if key is mine else mine
        status, headers, usage = call(gw, "GET", f"/v1/usage?key_id={other['id']}", key["key"])
        assert status == 200
        assert usage["key_id"] == key["id"]
        assert {row["key_id"] for row in usage["data"]} == {key["id"]}
        assert sum(row["requests"] for row in usage["data"]) == requests
    _, headers, usage = call(gw, "GET", "/v1/usage", mine["key"])
    assert usage["limits"]["rpm"] == 50 and usage["limits"]["budget_usd"] == 2
    assert headers["x-ratelimit-limit-requests"] == "50"
    assert call(gw, "GET", "/v1/usage", None)[0] == 401
    assert call(gw, "GET", "/v1/usage?by=year", mine["key"])[0] == 400
    assert call(gw, "GET", "/v1/usage?tz=Mars/Base", mine["key"])[0] == 400
    _, _, weekly = call(gw, "GET", "/v1/usage?by=week&tz=Asia/Tokyo&from=2020-01-01", mine["key"])
    assert sum(row["requests"] for row in weekly["data"]) == 1


# -- a database from before ------------------------------------------------------------


OLD_SCHEMA = """
CREATE TABLE meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT INTO meta VALUES ('keys_version', 1);
CREATE TABLE api_keys (
    id TEXT PRIMARY KEY, name TEXT NOT NULL, key_hash TEXT NOT NULL UNIQUE,
    key_prefix TEXT NOT NULL, created_at REAL NOT NULL, revoked_at REAL,
    rpm INTEGER, tpm INTEGER, budget_usd REAL, models TEXT
);
"""


def test_a_database_from_before_the_new_columns_keeps_its_keys(
    upstream: Upstream, tmp_path: Path
) -> None:
    gw = GatewayProcess(tmp_path / "old-db", gateway_config(upstream.base_url))
    plain = "prom_sk_" + "A" * 43
    conn = sqlite3.connect(gw.db_path)
    conn.executescript(OLD_SCHEMA)
    conn.execute(
        "INSERT INTO api_keys VALUES ('key_old', 'old', ?, 'prom_sk_AAAA', 1, NULL, 1, NULL,"
        " NULL, NULL)",
        (hashlib.sha256(plain.encode()).hexdigest(),),
    )
    conn.commit()
    conn.close()
    gw.start()
    try:
        status, headers, _ = call(gw, "POST", "/v1/chat/completions", plain, CHAT)
        assert status == 200 and headers["x-ratelimit-limit-requests"] == "1"
        assert chat_status(gw, plain) == (429, "rate_limit_exceeded")
        listed = json.loads(gw.cli("keys", "list", "--json").stdout)
        assert listed[0]["id"] == "key_old" and listed[0]["budget_period"] == "total"
    finally:
        gw.stop()

"""The dashboard's data endpoints: who may see what, and that the numbers are
the usage report's.

Against the session gateway (fake upstream): two fresh keys make known usage;
a key holder signs in with their key and gets a cookie (HttpOnly,
SameSite=Strict, never the key), sees only their own key's usage, keys and
request log, and is refused another key's (403); the admin sees every key; a
bad key, a forged or absent cookie, and a revoked key's session are refused
(401); the day and week series have 30 and 12 periods, and per alias equal
`usage --json` for the same data.
"""

from __future__ import annotations

import json
import math
import urllib.error
import urllib.request
from datetime import UTC, datetime, timedelta
from typing import Any

import openai
import pytest
from gateway_process import ADMIN_KEY, GatewayProcess
from waiting import wait_for

Reply = tuple[int, dict[str, str], Any]


def call(
    gw: GatewayProcess, method: str, path: str, body: Any = None, cookie: str | None = None
) -> Reply:
    req = urllib.request.Request(
        gw.root_url + path,
        method=method,
        data=None if body is None else json.dumps(body).encode(),
        headers={"Content-Type": "application/json", **({"Cookie": cookie} if cookie else {})},
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, dict(r.headers), json.loads(r.read())
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), json.loads(err.read())


def sign_in(gw: GatewayProcess, key: str) -> tuple[str, str]:
    """The cookie (name=value) and its Set-Cookie header."""
    status, headers, body = call(gw, "POST", "/dashboard/session", {"key": key})
    assert status == 200, body
    set_cookie = headers["Set-Cookie"]
    return set_cookie.split(";", 1)[0], set_cookie


def use(gw: GatewayProcess, key: dict[str, Any], calls: list[str]) -> None:
    client = openai.OpenAI(base_url=gw.base_url, api_key=key["key"], max_retries=0)
    for model in calls:
        client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "count me"}]
        )
    wait_for(
        lambda: sum(r["requests"] for r in gw.usage(key["id"])) == len(calls),
        message="the usage rows of the calls",
    )


@pytest.fixture()
def two_keys(gateway: GatewayProcess) -> tuple[dict[str, Any], dict[str, Any]]:
    a, b = gateway.create_key("dash-a"), gateway.create_key("dash-b")
    use(gateway, a, ["prometheus-lite"] * 3 + ["prometheus-core"])
    use(gateway, b, ["prometheus-lite"] * 2)
    return a, b


def by_alias(rows: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(r["period"], r["model"]): r for r in rows if r["model"] != "*"}


def assert_equals_report(dash: list[dict[str, Any]], report: list[dict[str, Any]]) -> None:
    mine = by_alias(dash)
    assert mine.keys() == {(r["period"], r["model"]) for r in report}
    for r in report:
        d = mine[(r["period"], r["model"])]
        for column in ("requests", "errors", "input_tokens", "output_tokens"):
            assert d[column] == r[column], column
        assert math.isclose(d["cost_usd"], r["cost_usd"], rel_tol=1e-9)
        assert math.isclose(d["audio_seconds"], r["audio_seconds"], abs_tol=1e-9)
        # both read the same histograms: the same bucket, so the same number
        for column in ("latency_ms_p50", "latency_ms_p95", "ttft_ms_p50"):
            assert d[column] == r[column], column
        assert d["latency_ms_p50"] is not None and d["latency_ms_p95"] >= d["latency_ms_p50"]


def assert_p50_near_the_raw_rows(gw: GatewayProcess, report: list[dict[str, Any]]) -> None:
    """`usage`'s p50 is the nearest-rank median of the requests' own latencies
    (read back from the raw rows), to within its histogram bucket: 2^(1/8)."""
    for r in report:
        latencies = sorted(
            lat
            for (lat,) in gw.db_rows(
                "SELECT latency_ms FROM requests WHERE key_id = ? AND model = ?"
                " AND date(ts, 'unixepoch') = ?",
                r["key_id"], r["model"], r["period"],
            )
        )  # fmt: skip
        exact = latencies[math.ceil(len(latencies) / 2) - 1]
        assert exact / 2 ** (1 / 16) <= r["latency_ms_p50"] <= exact * 2 ** (1 / 16), (r, exact)


def test_a_key_holder_sees_their_own_key_only(
    gateway: GatewayProcess, two_keys: tuple[dict[str, Any], dict[str, Any]]
) -> None:
    a, b = two_keys
    cookie, set_cookie = sign_in(gateway, a["key"])
    attributes = [p.strip().lower() for p in set_cookie.split(";")]
    assert "httponly" in attributes and "samesite=strict" in attributes
    assert "path=/dashboard" in attributes and any(p.startswith("max-age=") for p in attributes)
    assert a["key"] not in set_cookie and a["key"][8:] not in set_cookie

    status, _, usage = call(gateway, "GET", "/dashboard/api/usage?by=day", cookie=cookie)
    assert status == 200 and usage["key_id"] == a["id"]
    assert_equals_report(usage["rows"], gateway.usage(a["id"]))
    assert_p50_near_the_raw_rows(gateway, gateway.usage(a["id"]))
    [total] = [r for r in usage["rows"] if r["model"] == "*"]
    assert total["requests"] == 4

    status, _, keys = call(gateway, "GET", "/dashboard/api/keys", cookie=cookie)
    assert status == 200 and [k["id"] for k in keys["data"]] == [a["id"]]
    assert keys["data"][0]["spend_today_usd"] == pytest.approx(
        sum(r["cost_usd"] for r in gateway.usage(a["id"])), rel=1e-9
    )

    status, _, log = call(gateway, "GET", "/dashboard/api/requests", cookie=cookie)
    assert status == 200 and len(log["data"]) == 4
    assert {r["key_id"] for r in log["data"]} == {a["id"]}
    assert "count me" not in json.dumps(log)  # never the prompt
    status, _, log = call(
        gateway, "GET", "/dashboard/api/requests?alias=prometheus-core", cookie=cookie
    )
    assert [r["model"] for r in log["data"]] == ["prometheus-core"]

    for path in (
        f"/dashboard/api/usage?key_id={b['id']}",
        f"/dashboard/api/requests?key_id={b['id']}",
    ):
        status, headers, body = call(gateway, "GET", path, cookie=cookie)
        assert status == 403 and body["error"]["code"] == "key_not_visible"
        assert "x-request-id" in {h.lower() for h in headers}


def test_the_admin_sees_every_key(
    gateway: GatewayProcess, two_keys: tuple[dict[str, Any], dict[str, Any]]
) -> None:
    a, b = two_keys
    cookie, _ = sign_in(gateway, ADMIN_KEY)
    status, _, keys = call(gateway, "GET", "/dashboard/api/keys", cookie=cookie)
    assert status == 200 and {a["id"], b["id"]} <= {k["id"] for k in keys["data"]}
    for key in (a, b):
        status, _, usage = call(
            gateway, "GET", f"/dashboard/api/usage?key_id={key['id']}", cookie=cookie
        )
        assert status == 200
        assert_equals_report(usage["rows"], gateway.usage(key["id"]))
    status, _, every = call(gateway, "GET", "/dashboard/api/usage", cookie=cookie)
    all_report = gateway.usage()
    today = datetime.now(UTC).date().isoformat()
    [total] = [r for r in every["rows"] if r["model"] == "*" and r["period"] == today]
    assert total["requests"] == sum(r["requests"] for r in all_report if r["period"] == today)


def test_day_and_week_series_cover_30_days_and_12_iso_weeks(
    gateway: GatewayProcess, two_keys: tuple[dict[str, Any], dict[str, Any]]
) -> None:
    cookie, _ = sign_in(gateway, two_keys[0]["key"])
    today = datetime.now(UTC).date()
    _, _, days = call(gateway, "GET", "/dashboard/api/usage?by=day", cookie=cookie)
    assert len(days["periods"]) == 30 and days["periods"][-1] == today.isoformat()
    _, _, weeks = call(gateway, "GET", "/dashboard/api/usage?by=week", cookie=cookie)
    monday = today - timedelta(days=today.weekday())
    assert len(weeks["periods"]) == 12 and weeks["periods"][-1] == monday.isoformat()
    assert_equals_report(weeks["rows"], gateway.usage(two_keys[0]["id"], by="week"))
    status, _, body = call(gateway, "GET", "/dashboard/api/usage?tz=Mars/Base", cookie=cookie)
    assert status == 400 and body["error"]["param"] == "tz"


def test_bad_keys_forged_cookies_and_revoked_keys_are_refused(
    gateway: GatewayProcess, two_keys: tuple[dict[str, Any], dict[str, Any]]
) -> None:
    a, b = two_keys
    for token in ("prom_sk_" + "x" * 43, "not-a-key", a["key"] + "x"):
        status, headers, body = call(gateway, "POST", "/dashboard/session", {"key": token})
        assert status == 401 and body["error"]["code"] == "invalid_dashboard_session"
        assert "Set-Cookie" not in headers
    cookie, _ = sign_in(gateway, a["key"])
    name, value = cookie.split("=", 1)
    payload, _, mac = value.rpartition(".")
    forged = [
        None,
        f"{name}=k.{b['id']}.{payload.split('.')[-1]}.{mac}",  # another key, A's signature
        f"{name}={payload}.{'0' * len(mac)}",
        f"{name}=a.9999999999.{mac}",
    ]
    for attempt in forged:
        status, _, body = call(gateway, "GET", "/dashboard/api/keys", cookie=attempt)
        assert status == 401, attempt
    gateway.cli("keys", "revoke", a["id"])
    status, _, _ = call(gateway, "GET", "/dashboard/api/keys", cookie=cookie)
    assert status == 401  # the session ended with its key

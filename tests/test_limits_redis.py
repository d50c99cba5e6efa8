"""Per-key limits across machines through Redis (`[cluster] redis_url`).

- Two gateway processes with separate SQLite files (two "machines": each has its
  own database, journal and local limits table) share one key's rpm, and one
  key's budget, through the Redis on 127.0.0.1:6379, under a key prefix of
  this test's own that is deleted afterwards. The budget is given to a key
  that already spent on one machine: that spend counts; streams through both
  machines run until refused, and the spend recorded on both together is at
  most the cap plus one stream per worker. A daily budget's spend in Redis
  expires a day after its UTC day.
- A Redis of this test's own (a `redis-server` on a free port, stopped by its
  PID mid-run): the gateway falls back to its per-machine limits, logs it,
  shows it in `/admin/health`, answers no 5xx, and goes back to Redis when it
  returns; and one whose scripts were flushed gets them loaded again.

Without Redis these tests skip, saying why; in CI (`CI=true`) they fail
instead: `make test` starts Redis before the suite (tests/ensure_redis.sh).
"""

from __future__ import annotations

import http.client
import json
import os
import secrets
import shutil
import sqlite3
import subprocess
import time
from pathlib import Path
from typing import Any

import openai
import pytest
from gateway_process import ADMIN_KEY, GatewayProcess, free_port, gateway_config
from upstream_app import Upstream
from waiting import wait_for

REDIS_HOST, REDIS_PORT = "127.0.0.1", 6379
CHAT = {"model": "prometheus-lite", "messages": [{"role": "user", "content": "hi"}]}


def _redis_ping(port: int) -> bool:
    import redis

    try:
        return bool(redis.Redis(host=REDIS_HOST, port=port, socket_timeout=1).ping())
    except redis.RedisError:
        return False


def _unavailable(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI needs Redis: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def shared_redis() -> str:
    if not _redis_ping(REDIS_PORT):
        _unavailable(f"no Redis answers on {REDIS_HOST}:{REDIS_PORT}")
    return f"redis://{REDIS_HOST}:{REDIS_PORT}/0"


@pytest.fixture()
def prefix() -> Any:
    import redis

    mine = f"prometheus-test-{secrets.token_hex(6)}:"
    yield mine
    client = redis.Redis(host=REDIS_HOST, port=REDIS_PORT)
    for name in client.scan_iter(match=mine + "*"):
        client.delete(name)


def with_cluster(config: str, url: str, prefix: str) -> str:
    return config + f'\n[cluster]\nredis_url = "{url}"\nredis_prefix = "{prefix}"\n'


def status_of(gw: GatewayProcess, key: str) -> tuple[int, dict[str, str], Any]:
    conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=30)
    try:
        conn.request(
            "POST",
            "/v1/chat/completions",
            json.dumps(CHAT),
            {"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
        )
        resp = conn.getresponse()
        raw = resp.read()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, json.loads(raw)
    finally:
        conn.close()


def health(gw: GatewayProcess) -> dict[str, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=30)
    try:
        conn.request("GET", "/admin/health", headers={"Authorization": f"Bearer {ADMIN_KEY}"})
        return dict(json.loads(conn.getresponse().read())["limits"])
    finally:
        conn.close()


def copy_key(src: Path, dst: Path, key_id: str) -> None:
    """The same key in a second machine's database (same id, same hash, same
    settings: a key changed on the first machine is changed on the second)."""
    with sqlite3.connect(src) as a:
        row = a.execute("SELECT * FROM api_keys WHERE id = ?", (key_id,)).fetchone()
        names = [d[1] for d in a.execute("PRAGMA table_info(api_keys)")]
    with sqlite3.connect(dst) as b:
        b.execute(
            f"INSERT OR REPLACE INTO api_keys ({', '.join(names)})"
            f" VALUES ({', '.join('?' * len(names))})",
            row,
        )
        b.execute("UPDATE meta SET value = value + 1 WHERE name = 'keys_version'")


def test_two_machines_share_one_keys_rpm(
    shared_redis: str, prefix: str, upstream: Upstream, tmp_path: Path
) -> None:
    config = with_cluster(gateway_config(upstream.base_url), shared_redis, prefix)
    a = GatewayProcess(tmp_path / "machine-a", config).start()
    b = GatewayProcess(tmp_path / "machine-b", config).start()
    try:
        assert a.db_path != b.db_path
        key = json.loads(a.cli("keys", "create", "--name", "shared", "--rpm", "5", "--json").stdout)
        copy_key(a.db_path, b.db_path, key["id"])
        assert health(a)["mode"] == "redis" and health(b)["mode"] == "redis"
        for _ in range(3):
            assert status_of(a, key["key"])[0] == 200
        # machine b's own table has seen nothing of this key: Redis has seen 3
        status, headers, _ = status_of(b, key["key"])
        assert status == 200 and headers["x-ratelimit-remaining-requests"] == "1"
        assert status_of(b, key["key"])[0] == 200
        status, headers, body = status_of(b, key["key"])
        assert status == 429 and body["error"]["code"] == "rate_limit_exceeded"
        assert int(headers["retry-after"]) >= 1
        assert status_of(a, key["key"])[0] == 429
    finally:
        a.stop()
        b.stop()


CORE = "prometheus-core"  # the fake upstream: 12-word replies, usage = words + 7 in
HELLO = [{"role": "user", "content": "hello there"}]
PER_STREAM = (9 * 1.10 + 12 * 4.40) / 1e6  # 9 input, 12 output tokens at core's prices


def stream_once(gw: GatewayProcess, key: str) -> None:
    client = openai.OpenAI(base_url=gw.base_url, api_key=key, max_retries=0, timeout=30)
    for _ in client.chat.completions.create(
        model=CORE,
        messages=HELLO,  # type: ignore[arg-type]
        stream=True,
    ):
        pass


def recorded(gw: GatewayProcess, key_id: str) -> tuple[int, float]:
    rows = gw.db_rows("SELECT COUNT(*), SUM(cost_usd) FROM requests WHERE key_id = ?", key_id)
    return int(rows[0][0]), float(rows[0][1] or 0.0)


def own_budget(gw: GatewayProcess, key: str) -> Any:
    conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=30)
    try:
        conn.request("GET", "/v1/usage", headers={"Authorization": f"Bearer {key}"})
        return json.loads(conn.getresponse().read())["limits"]["budget_usd"]
    finally:
        conn.close()


def test_two_machines_share_one_keys_budget_and_its_earlier_spend(
    shared_redis: str, prefix: str, upstream: Upstream, tmp_path: Path
) -> None:
    import redis

    config = with_cluster(gateway_config(upstream.base_url), shared_redis, prefix)
    a = GatewayProcess(tmp_path / "machine-a", config).start()
    b = GatewayProcess(tmp_path / "machine-b", config).start()
    try:
        made = json.loads(a.cli("keys", "create", "--name", "budget", "--json").stdout)
        key, key_id = made["key"], made["id"]
        copy_key(a.db_path, b.db_path, key_id)
        # spent on machine a before the key had a budget
        for _ in range(3):
            stream_once(a, key)
        wait_for(lambda: recorded(a, key_id)[0] == 3, message="machine a's three records")
        cap = 0.0005  # 3 streams spent: room for about 5 more, on both machines together
        a.cli("keys", "update", key_id, "--budget-usd", str(cap))
        copy_key(a.db_path, b.db_path, key_id)
        for gw in (a, b):
            wait_for(lambda gw=gw: own_budget(gw, key) == cap, message="the budget on both")
        served: list[str] = []
        refused: dict[str, Any] = {}
        for i in range(40):  # b first: its own spend is 0, a's counts once a seeds it
            name, gw = ("b", b) if i % 2 == 0 else ("a", a)
            try:
                stream_once(gw, key)
                served.append(name)
            except openai.APIStatusError as exc:
                refused[name] = exc
                if len(refused) == 2:
                    break
        assert set(refused) == {"a", "b"}, (served, refused)
        for exc in refused.values():
            assert exc.status_code == 429 and exc.code == "insufficient_quota"
            assert exc.response.headers.get("retry-after")
        # one budget for both machines: together they served what one cap allows
        # (per-machine budgets would have let machine b alone serve 8 streams)
        assert 3 <= len(served) <= 6, served
        wait_for(
            lambda: recorded(a, key_id)[0] + recorded(b, key_id)[0] == 3 + len(served),
            message="every stream's record on both machines",
        )
        spent = recorded(a, key_id)[1] + recorded(b, key_id)[1]
        assert cap <= spent <= cap + 2 * PER_STREAM + 1e-12, (spent, cap)  # 1 worker each
        # Redis holds what both machines recorded (a's earlier spend seeded once)
        client = redis.Redis(host=REDIS_HOST, port=REDIS_PORT)
        hash_name = f"{prefix}{{{key_id}}}:spend:total"
        wait_for(
            lambda: abs(float(client.hget(hash_name, "s") or 0) - spent) < 1e-12,
            message="Redis's spend equal to the recorded spend",
        )
        assert len(client.hkeys(hash_name)) == 3  # the spend and both machines' marks
        assert client.ttl(hash_name) == -1  # a total budget's spend is kept
    finally:
        a.stop()
        b.stop()


def test_a_daily_budgets_spend_in_redis_expires_after_its_day(
    shared_redis: str, prefix: str, upstream: Upstream, tmp_path: Path
) -> None:
    import redis

    config = with_cluster(gateway_config(upstream.base_url), shared_redis, prefix)
    gw = GatewayProcess(tmp_path / "daily", config).start()
    try:
        made = json.loads(
            gw.cli(
                "keys", "create", "--name", "daily", "--json",
                "--budget-usd", "1", "--budget-period", "daily",
            ).stdout
        )  # fmt: skip
        stream_once(gw, made["key"])
        client = redis.Redis(host=REDIS_HOST, port=REDIS_PORT)
        names = [n.decode() for n in client.scan_iter(match=f"{prefix}*:spend:*")]
        day = int(time.time() // 86400)
        assert names == [f"{prefix}{{{made['id']}}}:spend:d{day}"], names
        # kept until a day after the UTC day ends, then gone
        assert 86400 < client.ttl(names[0]) <= 2 * 86400
    finally:
        gw.stop()


def _redis_server(port: int, cwd: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
        + ["--appendonly", "no"],
        cwd=cwd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _gateway_on_own_redis(
    tmp_path: Path, upstream: Upstream, port: int, prefix: str
) -> GatewayProcess:
    url = f"redis://127.0.0.1:{port}/0"
    config = with_cluster(gateway_config(upstream.base_url), url, prefix)
    return GatewayProcess(tmp_path / "gw", config).start()


def _key_with_rpm(gw: GatewayProcess, name: str, rpm: int) -> Any:
    made = gw.cli(
        "keys", "create", "--name", name, "--rpm", str(rpm), "--budget-usd", "1", "--json"
    )
    return json.loads(made.stdout)


@pytest.fixture()
def own_redis(tmp_path: Path) -> Any:
    """A redis-server of this test's own, on a free port (stopped by its PID)."""
    if shutil.which("redis-server") is None:
        _unavailable("redis-server is not installed")
    port = free_port()
    proc = _redis_server(port, tmp_path)
    try:
        wait_for(lambda: _redis_ping(port), message="the test's own redis-server")
        yield proc, port
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(10)


def test_redis_stopped_mid_run_falls_back_to_machine_limits(
    own_redis: Any, upstream: Upstream, tmp_path: Path
) -> None:
    proc, port = own_redis
    gw = _gateway_on_own_redis(tmp_path, upstream, port, "fallback:")
    try:
        key = _key_with_rpm(gw, "fb", 8)
        assert status_of(gw, key["key"])[0] == 200
        assert health(gw)["mode"] == "redis"
        proc.terminate()
        proc.wait(10)
        statuses = [status_of(gw, key["key"])[0] for _ in range(10)]
        # no 5xx; the machine's own table still holds the key to its rpm of 8
        assert all(s < 500 for s in statuses), statuses
        assert statuses.count(200) == 7 and statuses.count(429) == 3
        assert health(gw)["mode"] == "local_fallback"
        assert any(ln.get("event") == "redis_unreachable" for ln in gw.log_lines())
        # Redis back (empty): the gateway uses it again
        back = _redis_server(port, tmp_path)
        try:
            wait_for(lambda: health(gw)["mode"] == "redis", message="Redis used again")
            assert any(ln.get("event") == "redis_restored" for ln in gw.log_lines())
            # the machine's own window is still full: refused before Redis is asked
            assert status_of(gw, key["key"])[0] == 429
        finally:
            back.terminate()
            back.wait(10)
    finally:
        gw.stop()


def test_a_redis_that_lost_its_scripts_is_given_them_again(
    own_redis: Any, upstream: Upstream, tmp_path: Path
) -> None:
    import redis

    _, port = own_redis
    gw = _gateway_on_own_redis(tmp_path, upstream, port, "scripts:")
    try:
        made = _key_with_rpm(gw, "s", 5)
        assert status_of(gw, made["key"])[0] == 200
        redis.Redis(host=REDIS_HOST, port=port).script_flush()
        for remaining in ("3", "2"):
            status, headers, _ = status_of(gw, made["key"])
            assert status == 200 and headers["x-ratelimit-remaining-requests"] == remaining
        assert health(gw)["mode"] == "redis"
        client = redis.Redis(host=REDIS_HOST, port=port)
        hash_name = f"scripts:{{{made['id']}}}:spend:total"

        def both() -> tuple[float, float]:
            in_redis = float(client.hget(hash_name, "s") or 0.0)
            return in_redis, float(gw.db_rows("SELECT SUM(cost_usd) FROM requests")[0][0] or 0.0)

        wait_for(
            lambda: (
                len(gw.db_rows("SELECT 1 FROM requests")) == 3
                and abs(both()[0] - both()[1]) < 1e-12
            ),
            message=lambda: f"Redis's spend equal to the three recorded requests: {both()}",
        )
    finally:
        gw.stop()

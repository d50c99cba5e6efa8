"""Per-key rpm, tpm and budgets, as a client of the gateway sees them.

Against the session gateway (one worker, the fake upstream) and, for the
cross-worker promise, a gateway of its own with `--workers 4`:
- rpm and tpm at their edges: the last request that fits gets 200 with
  OpenAI's x-ratelimit-* headers, the next a 429 `rate_limit_exceeded` with
  `Retry-After`, which the official SDK raises with its retries off and waits
  out with them on (that case waits for the window to move, so its window is
  filled by the first test of the module and checked by the last);
- a request that fails gives its token reservation back;
- a key with a small budget runs streams until `insufficient_quota`; the spend
  recorded is at most the cap plus one request; a stream the client cancelled
  counts;
- 4 workers, one key with rpm 60, 200 requests spread over 10 s: exactly 60
  accepted;
- 4 workers, a key without limits spends, then gets a budget under what it
  spent: every worker refuses it (the spend each worker gathered counts).
"""

from __future__ import annotations

import http.client
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import openai
import pytest
from gateway_process import GatewayProcess
from waiting import wait_for

CORE = "prometheus-core"  # the fake upstream: 12-word replies, usage = words + 7 in
HELLO = [{"role": "user", "content": "hello there"}]


def make_key(gw: GatewayProcess, name: str, *args: str) -> dict[str, Any]:
    return dict(json.loads(gw.cli("keys", "create", "--name", name, "--json", *args).stdout))


def post(
    gw: GatewayProcess, key: str, body: dict[str, Any], path: str = "/v1/chat/completions"
) -> tuple[int, dict[str, str], dict[str, Any]]:
    conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=30)
    try:
        conn.request(
            "POST",
            path,
            json.dumps(body),
            {"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
        )
        resp = conn.getresponse()
        raw = resp.read()
        headers = {k.lower(): v for k, v in resp.getheaders()}
        return resp.status, headers, json.loads(raw) if raw.startswith(b"{") else {}
    finally:
        conn.close()


def get(gw: GatewayProcess, key: str, path: str) -> tuple[int, dict[str, Any]]:
    conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=30)
    try:
        conn.request("GET", path, headers={"Authorization": f"Bearer {key}"})
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read())
    finally:
        conn.close()


def chat(model: str = CORE, **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": HELLO, **extra}


def sdk(gw: GatewayProcess, key: str, retries: int) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.base_url, api_key=key, max_retries=retries, timeout=90)


# -- the SDK's own back-off: filled first, checked last --------------------------

_filled: dict[str, Any] = {}


def test_fill_windows_for_the_sdk_retry_case(gateway: GatewayProcess) -> None:
    """Fill an rpm-1 key's and a tpm-100 key's windows now; the module's last
    test checks that the SDK, retries on, waits until they move and succeeds."""
    rpm_key = make_key(gateway, "sdk-rpm", "--rpm", "1")
    tpm_key = make_key(gateway, "sdk-tpm", "--tpm", "100")
    assert post(gateway, rpm_key["key"], chat())[0] == 200
    assert post(gateway, tpm_key["key"], chat(max_tokens=12))[0] == 200
    # with room left for a small one, a request past the tpm is refused
    assert post(gateway, tpm_key["key"], chat(max_tokens=90))[0] == 429
    _filled.update(rpm=rpm_key, tpm=tpm_key, at=time.monotonic())


# -- rpm and tpm at their edges, retries off --------------------------------------


def test_rpm_edge_sends_openai_headers_then_429(gateway: GatewayProcess) -> None:
    key = make_key(gateway, "rpm-edge", "--rpm", "3")["key"]
    for remaining in (2, 1, 0):
        status, headers, _ = post(gateway, key, chat())
        assert status == 200
        assert headers["x-ratelimit-limit-requests"] == "3"
        assert headers["x-ratelimit-remaining-requests"] == str(remaining)
        assert headers["x-ratelimit-reset-requests"].endswith("s")
        assert "x-ratelimit-limit-tokens" not in headers  # no tpm on this key
    status, headers, body = post(gateway, key, chat())
    assert status == 429
    assert body["error"]["code"] == "rate_limit_exceeded"
    assert 1 <= int(headers["retry-after"]) <= 60
    assert 0 < int(headers["retry-after-ms"]) <= 60_000
    assert headers["x-ratelimit-remaining-requests"] == "0"
    assert headers["x-request-id"].startswith("req_")
    # the official SDK, retries off, raises its RateLimitError at once
    client = sdk(gateway, key, retries=0)
    with pytest.raises(openai.RateLimitError) as refused:
        client.chat.completions.create(model=CORE, messages=HELLO)  # type: ignore[arg-type]
    assert refused.value.code == "rate_limit_exceeded"
    assert refused.value.response.headers["x-ratelimit-limit-requests"] == "3"


def test_tpm_edge_reserves_the_estimate_and_settles_the_usage(gateway: GatewayProcess) -> None:
    # each call: "hello there" is 2 words -> 9 input tokens upstream; max_tokens 40
    # -> a reply of 12 words; reserved ~ prompt + 40, settled to 9 + 12 = 21
    key = make_key(gateway, "tpm-edge", "--tpm", "100")["key"]
    status, headers, _ = post(gateway, key, chat(max_tokens=40))
    assert status == 200
    assert headers["x-ratelimit-limit-tokens"] == "100"
    assert 40 < 100 - int(headers["x-ratelimit-remaining-tokens"]) < 60  # the estimate
    # settled: the window holds the 21 tokens the upstream reported, not the estimate
    _, usage = get(gateway, key, "/v1/usage")
    assert usage["current"]["tokens_in_window"] == 21
    status, headers, _ = post(gateway, key, chat(max_tokens=40))
    assert status == 200
    # 42 used: a request that may use 70 more does not fit, one that may use 40 does
    status, headers, body = post(gateway, key, chat(max_tokens=70))
    assert status == 429, body
    assert body["error"]["code"] == "rate_limit_exceeded"
    assert "TPM" in body["error"]["message"]
    assert int(headers["retry-after"]) >= 1
    assert headers["x-ratelimit-remaining-tokens"] == "58"
    assert post(gateway, key, chat(max_tokens=40))[0] == 200


def test_a_failed_request_gives_its_reservation_back(gateway: GatewayProcess) -> None:
    key = make_key(gateway, "tpm-release", "--tpm", "1000", "--rpm", "100")["key"]
    # prometheus-surge's upstream is down: 502, nothing billed
    status, _, body = post(gateway, key, chat("prometheus-surge", max_tokens=500))
    assert status == 502, body
    # the upstream refused it: 400, nothing billed
    refused = [{"role": "user", "content": "__status_400__"}]
    status, _, _ = post(gateway, key, {"model": CORE, "messages": refused, "max_tokens": 300})
    assert status == 400
    _, usage = get(gateway, key, "/v1/usage")
    assert usage["current"]["tokens_in_window"] == 0
    assert usage["current"]["requests_in_window"] == 2  # requests still count against rpm


# -- budgets --------------------------------------------------------------------------


def _stream_until_refused(client: openai.OpenAI, limit: int) -> tuple[int, openai.APIStatusError]:
    for served in range(limit):
        try:
            stream = client.chat.completions.create(
                model=CORE,
                messages=HELLO,  # type: ignore[arg-type]
                stream=True,
            )
            for _ in stream:
                pass
        except openai.APIStatusError as exc:
            return served, exc
    raise AssertionError(f"still served after {limit} streams")


def test_budget_refuses_with_insufficient_quota_and_counts_cancelled_streams(
    gateway: GatewayProcess,
) -> None:
    # one stream: 9 input, 12 output tokens at core's 1.10 / 4.40 per M = $0.0000627
    per_stream = (9 * 1.10 + 12 * 4.40) / 1e6
    cap = 0.0003
    made = make_key(gateway, "budget", "--budget-usd", str(cap))
    key = made["key"]
    client = sdk(gateway, key, retries=0)
    # a stream the client cancels after three chunks is billed, and counts
    with client.chat.completions.create(
        model=CORE,
        messages=[{"role": "user", "content": "__hold_after_3__ please"}],
        stream=True,
    ) as held:
        seen = 0
        for chunk in held:
            seen += bool(chunk.choices and chunk.choices[0].delta.content)
            if seen == 3:
                break
    cancelled = wait_for(
        lambda: gateway.db_rows(
            "SELECT cost_usd FROM requests WHERE key_id = ? AND status = 499", made["id"]
        ),
        message="the cancelled stream's usage record",
    )
    assert cancelled[0][0] > 0
    served, refused = _stream_until_refused(client, 50)
    assert refused.status_code == 429
    assert refused.code == "insufficient_quota"
    assert refused.response.headers.get("retry-after")
    assert 2 <= served <= 6

    def recorded() -> float:
        rows = gateway.db_rows("SELECT SUM(cost_usd) FROM requests WHERE key_id = ?", made["id"])
        return float(rows[0][0] or 0.0)

    # every record is in SQLite: the cancelled stream plus `served` streams
    wait_for(
        lambda: (
            len(gateway.db_rows("SELECT 1 FROM requests WHERE key_id = ?", made["id"]))
            == served + 1
        ),
        message="every stream's usage record",
    )
    spent = recorded()
    assert cap <= spent <= cap + per_stream + 1e-12, (spent, cap)
    # the spend that stopped the key is the recorded one, the cancelled stream's included
    _, usage = get(gateway, key, "/v1/usage")
    assert usage["current"]["spend_usd"] == pytest.approx(spent)
    assert usage["current"]["budget_remaining_usd"] == 0.0


# -- one budget across 4 workers ------------------------------------------------------


@pytest.fixture(scope="module")
def four_workers(tmp_path_factory: pytest.TempPathFactory) -> Any:
    gw = GatewayProcess(tmp_path_factory.mktemp("four-workers"), None, workers=4)
    gw.start(timeout=60)
    yield gw
    gw.stop()


def test_rpm_is_one_budget_across_four_workers(four_workers: GatewayProcess) -> None:
    gw = four_workers
    key = make_key(gw, "shared-rpm", "--rpm", "60")["key"]
    statuses: list[int] = []
    codes: set[str] = set()
    lock = threading.Lock()
    started = time.monotonic()

    def one(i: int) -> None:
        # 200 requests spread over 10 s: request i leaves at i * 50 ms
        delay = started + i * 0.05 - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        status, _, body = post(gw, key, chat("prometheus-spark", max_tokens=5))
        with lock:
            statuses.append(status)
            if status == 429:
                codes.add(body["error"]["code"])

    with ThreadPoolExecutor(max_workers=16) as pool:
        list(pool.map(one, range(200)))
    elapsed = time.monotonic() - started
    assert elapsed < 55, "the window must hold every request of the test"
    assert statuses.count(200) == 60, sorted(set(statuses))
    assert statuses.count(429) == 140
    assert codes == {"rate_limit_exceeded"}
    assert len(list(Path(gw.workdir).glob("*.journal/limits.shm"))) == 1  # one table


def test_a_budget_given_later_counts_what_the_key_spent_on_every_worker(
    four_workers: GatewayProcess,
) -> None:
    gw = four_workers
    made = make_key(gw, "budget-later")  # no limits: its spend is gathered per worker

    def records() -> tuple[int, float]:
        rows = gw.db_rows(
            "SELECT COUNT(*), SUM(cost_usd) FROM requests WHERE key_id = ?", made["id"]
        )
        return int(rows[0][0]), float(rows[0][1] or 0.0)

    for _ in range(12):  # a connection each: spread over the four workers
        assert post(gw, made["key"], chat("prometheus-spark", max_tokens=5))[0] == 200
    wait_for(lambda: records()[0] == 12, message="the 12 records")
    spent = records()[1]
    assert spent > 0
    # a budget just under what it spent: refused on every worker once they see it
    gw.cli("keys", "update", made["id"], "--budget-usd", repr(spent * 0.999))
    time.sleep(1.0)  # the key table reaches every worker within 0.2 s
    codes = {
        post(gw, made["key"], chat("prometheus-spark", max_tokens=5))[2]["error"]["code"]
        for _ in range(12)
    }
    assert codes == {"insufficient_quota"}
    assert records()[0] == 12


# -- last: the SDK's own back-off against the windows filled first ----------------------


def test_sdk_with_retries_waits_out_the_window_and_succeeds(gateway: GatewayProcess) -> None:
    if not _filled:
        pytest.skip("needs test_fill_windows_for_the_sdk_retry_case to run first")
    results: dict[str, Any] = {}

    def call(name: str, **extra: Any) -> None:
        client = sdk(gateway, _filled[name]["key"], retries=3)
        try:
            raw = client.chat.completions.with_raw_response.create(
                model=CORE,
                messages=HELLO,  # type: ignore[arg-type]
                **extra,
            )
            results[name] = raw.http_response.status_code
        except Exception as exc:  # noqa: BLE001 - reported by the assert below
            results[name] = exc

    threads = [
        threading.Thread(target=call, args=("rpm",)),
        threading.Thread(target=call, args=("tpm",), kwargs={"max_tokens": 90}),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert results == {"rpm": 200, "tpm": 200}
    # it could only succeed after the first request left the 60 s window
    assert time.monotonic() - _filled["at"] >= 58

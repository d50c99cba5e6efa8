"""What a client sees, and what is billed, when an upstream misbehaves.

One gateway in front of `faulty_upstream.FaultyUpstream`: each alias `f-<case>`
goes to a deployment whose upstream model name picks the misbehaviour. The
client is the official SDK (raw HTTP where the SDK hides the detail); the
records are read from the gateway's SQLite file.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from faulty_upstream import REPLY, FaultyUpstream
from gateway_process import ADMIN_KEY, GatewayProcess, closed_port_url, running_gateway
from waiting import wait_for

from proxy.metering.tokens import get_encoding

UPSTREAM_SECRET = "sk-faulty-deployment-secret-0123456789"
BAD_USAGE = ("usage-neg", "usage-bool", "usage-float", "usage-huge", "usage-notjson")
EXTRA = {
    "slow-headers": "first_byte_timeout_s = 0.5\n",
    "trickle": "total_timeout_s = 1.5\n",
    "huge": "max_reply_mb = 0.01\nmax_event_kb = 4\n",
}


def _deployment(alias: str, base_url: str, model: str, extra: str = "") -> str:
    return (
        f'\n[[models.{alias}.deployments]]\nprovider = "openai"\nbase_url = "{base_url}"\n'
        f'api_key = "{UPSTREAM_SECRET}"\nmodel = "{model}"\n{extra}'
        f"\n[models.{alias}.price]\ninput_per_mtok = 1.0\noutput_per_mtok = 2.0\n"
    )


def _config(base_url: str) -> str:
    cases = [
        *BAD_USAGE,
        "ok",
        "details",
        "html",
        "slow-headers",
        "leaky-500",
        "echo-key-400",
        "redirect",
    ]
    cases += ["trickle", "huge"]
    text = '[storage]\npath = "gateway.db"\n'
    for case in cases:
        text += _deployment(f"f-{case}", base_url, case, EXTRA.get(case, ""))
    text += _deployment("f-slow", base_url, "slow-headers")
    text += _deployment(
        "f-slow-token", base_url, "slow-first-token", "first_token_timeout_s = 0.3\n"
    )
    text += _deployment("f-down", closed_port_url(), "down")
    # one deployment rate limited, the other down: the client must hear of the limit
    text += _deployment("f-failover", base_url, "rate-limited")
    text += (
        f'\n[[models.f-failover.deployments]]\nprovider = "openai"\n'
        f'base_url = "{closed_port_url()}"\nmodel = "down"\n'
    )
    return text


@pytest.fixture(scope="module")
def gw(
    faulty: FaultyUpstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    with running_gateway(tmp_path_factory.mktemp("faults"), _config(faulty.base_url)) as gateway:
        yield gateway


@pytest.fixture(scope="module")
def key(gw: GatewayProcess) -> str:
    return str(gw.create_key("faults")["key"])


@pytest.fixture()
def client(gw: GatewayProcess, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.base_url, api_key=key, max_retries=0, timeout=30)


MESSAGES = [{"role": "user", "content": "Count to four, please."}]


class Raw:
    """A whole HTTP answer: status, headers, body."""

    def __init__(self, status: int, headers: dict[str, str], content: bytes) -> None:
        self.status_code = status
        self.headers = headers
        self.content = content
        self.text = content.decode("utf-8", "replace")

    def json(self) -> Any:
        return json.loads(self.content)


def post_chat(gw: GatewayProcess, key: str, body: dict[str, Any]) -> Raw:
    req = urllib.request.Request(
        f"{gw.base_url}/chat/completions",
        data=json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return Raw(resp.status, {k.lower(): v for k, v in resp.headers.items()}, resp.read())
    except urllib.error.HTTPError as err:
        return Raw(err.code, {k.lower(): v for k, v in err.headers.items()}, err.read())


def _record(gw: GatewayProcess, request_id: str) -> dict[str, Any]:
    cols = "status, input_tokens, output_tokens, usage_source, error, cost_usd"
    rows = wait_for(
        lambda: gw.db_rows(f"SELECT {cols} FROM requests WHERE request_id = ?", request_id),
        message=f"the usage record of {request_id}",
    )
    assert len(rows) == 1
    return dict(zip(cols.split(", "), rows[0], strict=True))


def _local_counts(text: str) -> tuple[int, int]:
    enc = get_encoding("o200k_base")
    prompt = 3 + 3 + len(enc.encode_ordinary(MESSAGES[0]["content"]))
    return prompt, len(enc.encode_ordinary(text))


@pytest.mark.parametrize("case", BAD_USAGE)
def test_insane_usage_is_no_report_and_counted_locally(
    gw: GatewayProcess, client: openai.OpenAI, case: str
) -> None:
    raw = client.chat.completions.with_raw_response.create(model=f"f-{case}", messages=MESSAGES)
    reply = raw.parse()
    assert reply.choices[0].message.content == "".join(REPLY)
    record = _record(gw, raw.headers["x-request-id"])
    assert record["status"] == 200
    assert record["usage_source"] == "local_invalid_upstream"
    assert (record["input_tokens"], record["output_tokens"]) == _local_counts("".join(REPLY))


@pytest.mark.parametrize("case", BAD_USAGE)
def test_insane_usage_in_a_stream_still_ends_the_stream_and_is_billed(
    gw: GatewayProcess, client: openai.OpenAI, case: str
) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model=f"f-{case}", messages=MESSAGES, stream=True
    )
    text = "".join(c.choices[0].delta.content or "" for c in raw.parse() if c.choices)
    assert text == "".join(REPLY)
    record = _record(gw, raw.headers["x-request-id"])
    assert record["status"] == 200
    assert record["usage_source"] == "local_invalid_upstream"
    assert (record["input_tokens"], record["output_tokens"]) == _local_counts(text)


def test_the_writer_keeps_writing_and_the_gateway_restarts_after_insane_usage(
    gw: GatewayProcess, client: openai.OpenAI
) -> None:
    for case in BAD_USAGE:
        client.chat.completions.create(model=f"f-{case}", messages=MESSAGES)
    raw = client.chat.completions.with_raw_response.create(model="f-ok", messages=MESSAGES)
    record = _record(gw, raw.headers["x-request-id"])
    assert (record["status"], record["usage_source"]) == (200, "upstream")
    assert (record["input_tokens"], record["output_tokens"]) == (10, 4)
    journal = gw.workdir / "gateway.db.journal"
    wait_for(lambda: not [p for p in journal.glob("*.jsonl") if p.stat().st_size])
    gw.stop()
    gw.start()
    assert client.chat.completions.create(model="f-ok", messages=MESSAGES).choices


def test_an_html_answer_to_a_stream_is_a_502_not_an_event_stream(
    gw: GatewayProcess, key: str
) -> None:
    resp = post_chat(gw, key, {"model": "f-html", "messages": MESSAGES, "stream": True})
    assert resp.status_code == 502
    assert resp.headers["content-type"].startswith("application/json")
    assert resp.json()["error"]["code"] == "upstream_bad_reply"
    assert "<html>" not in resp.text
    assert _record(gw, resp.headers["x-request-id"])["status"] == 502


@pytest.mark.parametrize("stream", [False, True])
def test_a_client_gone_before_any_answer_is_billed_nothing(
    gw: GatewayProcess, key: str, stream: bool
) -> None:
    before = {r[0] for r in gw.db_rows("SELECT request_id FROM requests")}
    quick = openai.OpenAI(base_url=gw.base_url, api_key=key, max_retries=0, timeout=0.5)
    with pytest.raises(openai.APITimeoutError):
        quick.chat.completions.create(model="f-slow", messages=MESSAGES, stream=stream)

    def new_rows() -> list[tuple[Any, ...]]:
        rows = gw.db_rows(
            "SELECT request_id, status, input_tokens, output_tokens, usage_source "
            "FROM requests WHERE model = 'f-slow'"
        )
        return [r for r in rows if r[0] not in before]

    rows = wait_for(new_rows, message="the abandoned request's record")
    assert [r[1:] for r in rows] == [(499, 0, 0, "none")]


def test_upstream_5xx_details_reach_the_log_not_the_client(
    gw: GatewayProcess, client: openai.OpenAI
) -> None:
    with pytest.raises(openai.APIStatusError) as caught:
        client.chat.completions.create(model="f-leaky-500", messages=MESSAGES)
    err = caught.value
    assert err.status_code == 502
    assert "10.0.3.7" not in err.response.text and "5432" not in err.response.text
    rid = err.response.headers["x-request-id"]
    lines = wait_for(lambda: gw.log_lines_for(rid), message="the request's log line")
    assert any("10.0.3.7:5432" in str(line.get("detail")) for line in lines)


def test_an_unreachable_upstream_names_no_address_to_the_client(
    gw: GatewayProcess, client: openai.OpenAI
) -> None:
    with pytest.raises(openai.APIStatusError) as caught:
        client.chat.completions.create(model="f-down", messages=MESSAGES)
    body = caught.value.response.text
    assert caught.value.status_code == 502
    assert "127.0.0.1" not in body and "Cannot connect" not in body


def test_an_upstream_4xx_passes_on_without_the_deployment_credential(
    gw: GatewayProcess, client: openai.OpenAI
) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="f-echo-key-400", messages=MESSAGES)
    body = caught.value.response.text
    assert "bad parameter for credential" in body
    assert UPSTREAM_SECRET not in body
    assert UPSTREAM_SECRET not in gw.log_text()


def test_redirects_are_not_followed(
    gw: GatewayProcess, client: openai.OpenAI, faulty: FaultyUpstream
) -> None:
    with pytest.raises(openai.APIStatusError) as caught:
        client.chat.completions.create(model="f-redirect", messages=MESSAGES)
    assert caught.value.status_code == 502
    assert faulty.models_seen("/redirect-target") == []


def test_an_upstream_that_never_answers_is_a_504_after_the_first_byte_timeout(
    gw: GatewayProcess, client: openai.OpenAI
) -> None:
    with pytest.raises(openai.APIStatusError) as caught:
        client.chat.completions.create(model="f-slow-headers", messages=MESSAGES)
    assert caught.value.status_code == 504
    record = _record(gw, caught.value.response.headers["x-request-id"])
    assert (record["status"], record["input_tokens"]) == (504, 0)


def test_a_trickling_stream_ends_at_the_total_timeout_with_an_error_event(
    gw: GatewayProcess, key: str
) -> None:
    resp = post_chat(gw, key, {"model": "f-trickle", "messages": MESSAGES, "stream": True})
    body, rid = resp.content, resp.headers["x-request-id"]
    assert b" more" in body
    assert b'"code":"upstream_timeout"' in body
    record = _record(gw, rid)
    assert record["status"] == 502
    assert record["output_tokens"] > 0 and record["usage_source"] == "local"


def test_replies_over_the_size_caps_are_refused(gw: GatewayProcess, key: str) -> None:
    resp = post_chat(gw, key, {"model": "f-huge", "messages": MESSAGES})
    assert resp.status_code == 502
    assert resp.json()["error"]["code"] == "upstream_bad_reply"
    streamed = post_chat(gw, key, {"model": "f-huge", "messages": MESSAGES, "stream": True})
    assert b'"code":"upstream_bad_reply"' in streamed.content
    assert b"y" * 5000 not in streamed.content


def test_a_rate_limit_wins_over_an_outage_when_every_deployment_fails(
    gw: GatewayProcess, client: openai.OpenAI
) -> None:
    for _ in range(8):  # both orders of the two deployments come up
        with pytest.raises(openai.RateLimitError) as caught:
            client.chat.completions.create(model="f-failover", messages=MESSAGES)
        assert caught.value.response.headers.get("retry-after") == "7"


def test_the_fault_gateway_log_has_no_traceback(gw: GatewayProcess) -> None:
    assert "Traceback" not in gw.log_text()
    assert Path(gw.log_path).exists()


def test_a_stream_without_a_first_token_in_time_ends_with_a_timeout_event(
    gw: GatewayProcess, key: str
) -> None:
    resp = post_chat(gw, key, {"model": "f-slow-token", "messages": MESSAGES, "stream": True})
    assert resp.status_code == 200
    assert b'"code":"upstream_timeout"' in resp.content
    assert b"one" not in resp.content  # the slow deployment's words never came
    record = _record(gw, resp.headers["x-request-id"])
    assert (record["status"], record["error"]) == (502, "upstream_timeout")


def _breaker(gw: GatewayProcess, alias: str) -> dict[str, Any]:
    req = urllib.request.Request(
        f"{gw.root_url}/admin/health", headers={"Authorization": f"Bearer {ADMIN_KEY}"}
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        rows = json.loads(resp.read())["data"]
    return dict(next(r for r in rows if r["alias"] == alias))


@pytest.mark.parametrize(
    ("alias", "status", "code", "failures"),
    [
        ("f-leaky-500", 502, "upstream_error", 2),  # tried, then retried once
        ("f-down", 502, "upstream_unavailable", 2),
        ("f-slow-headers", 504, "upstream_timeout", 2),
        ("f-html", 502, "upstream_bad_reply", 2),
        ("f-ok", 200, None, 0),
    ],
)
def test_each_fault_what_the_client_sees_what_is_recorded_and_the_breaker_after(
    gw: GatewayProcess, key: str, alias: str, status: int, code: str | None, failures: int
) -> None:
    before = _breaker(gw, alias)
    resp = post_chat(gw, key, {"model": alias, "messages": MESSAGES, "stream": True})
    assert resp.status_code == status
    if code is not None:
        assert resp.json()["error"]["code"] == code
    record = _record(gw, resp.headers["x-request-id"])
    assert (record["status"], record["error"]) == (status, code)
    after = _breaker(gw, alias)
    assert after["consecutive_failures"] - before["consecutive_failures"] == failures or (
        failures == 0 and after["consecutive_failures"] == 0
    )
    if code is not None:
        assert after["last_error"] == code


@pytest.mark.parametrize("stream", [False, True])
def test_cached_and_reasoning_tokens_are_kept_and_shown_by_usage(
    gw: GatewayProcess, stream: bool
) -> None:
    key = gw.create_key(f"details-{stream}")
    client = openai.OpenAI(base_url=gw.base_url, api_key=key["key"], max_retries=0)
    client.chat.completions.create(
        model="f-details", messages=MESSAGES, stream=stream, reasoning_effort="high"
    )
    rows = wait_for(
        lambda: gw.db_rows(
            "SELECT cached_tokens, reasoning_tokens FROM requests WHERE key_id = ?", key["id"]
        ),
        message="the record",
    )
    assert rows == [(6, 3)]
    [usage] = gw.usage(key["id"])
    assert (usage["cached_tokens"], usage["reasoning_tokens"]) == (6, 3)
    assert (usage["input_tokens"], usage["output_tokens"]) == (10, 4)

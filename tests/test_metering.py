"""Metering: usage --json matches what was sent, exactly; dropped streams are billed.

Every test runs twice (conftest.py): against the gateway serving with the
compiled `_fastpath` twin, then with the pure-Python one.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from typing import Any

import openai
import pytest
from gateway_process import GatewayProcess
from upstream_app import Upstream, reply_words
from waiting import wait_for

from proxy.metering.tokens import get_encoding

pytestmark = pytest.mark.both_fastpath_twins

PRICES = {  # $ per 1M tokens (input, output): PRODUCT.md list prices, team-custom from the config
    "prometheus-lite": (0.10, 0.40),
    "prometheus-core": (1.10, 4.40),
    "prometheus-atlas": (0.02, 0.0),
    "team-custom": (2.0, 8.0),
}


class Expected:
    """What usage should say, from what the fake upstream reports per request."""

    def __init__(self) -> None:
        self.rows: dict[str, dict[str, Any]] = defaultdict(
            lambda: {"requests": 0, "input_tokens": 0, "output_tokens": 0, "cost_usd": 0.0}
        )

    def add(self, model: str, tin: int, tout: int) -> None:
        row = self.rows[model]
        row["requests"] += 1
        row["input_tokens"] += tin
        row["output_tokens"] += tout
        pin, pout = PRICES[model]
        row["cost_usd"] += tin * pin / 1e6 + tout * pout / 1e6


def chat(
    client: openai.OpenAI,
    exp: Expected,
    model: str,
    text: str,
    *,
    stream: bool = False,
    include_usage: bool = False,
    max_tokens: int | None = None,
) -> None:
    messages = [{"role": "user", "content": text}]
    extra: dict[str, Any] = {}
    if max_tokens is not None:
        extra["max_tokens"] = max_tokens
    if stream:
        if include_usage:
            extra["stream_options"] = {"include_usage": True}
        for _ in client.chat.completions.create(
            model=model, messages=messages, stream=True, **extra
        ):
            pass
    else:
        client.chat.completions.create(model=model, messages=messages, **extra)
    exp.add(model, len(text.split()) + 7, min(12, max_tokens or 12))


def embed(client: openai.OpenAI, exp: Expected, inp: Any) -> None:
    client.embeddings.create(model="prometheus-atlas", input=inp)
    items = [inp] if isinstance(inp, str) else inp
    exp.add("prometheus-atlas", sum(len(i.split()) for i in items), 0)


def usage_by_model(gateway: GatewayProcess, key_id: str) -> dict[str, dict[str, Any]]:
    return {row["model"]: row for row in gateway.usage(key_id)}


def matches(got: dict[str, dict[str, Any]], exp: Expected) -> bool:
    if set(got) != set(exp.rows):
        return False
    for model, want in exp.rows.items():
        row = got[model]
        for field in ("requests", "input_tokens", "output_tokens"):
            if row[field] != want[field]:
                return False
        if row["cost_usd"] != pytest.approx(want["cost_usd"], rel=1e-9, abs=1e-15):
            return False
    return True


def test_usage_matches_a_scripted_mix_from_two_keys(gateway: GatewayProcess) -> None:
    key_a = gateway.create_key("meter-a")
    key_b = gateway.create_key("meter-b")
    a = openai.OpenAI(base_url=gateway.base_url, api_key=key_a["key"], max_retries=0)
    b = openai.OpenAI(base_url=gateway.base_url, api_key=key_b["key"], max_retries=0)
    exp_a, exp_b = Expected(), Expected()

    chat(a, exp_a, "prometheus-lite", "first question from a")
    chat(a, exp_a, "prometheus-lite", "second one", stream=True)
    chat(a, exp_a, "prometheus-lite", "third one with a cap", max_tokens=5)
    chat(
        a,
        exp_a,
        "prometheus-core",
        "a streamed core answer please",
        stream=True,
        include_usage=True,
    )
    embed(a, exp_a, "embed this sentence of seven words now")
    embed(a, exp_a, ["two items", "in a list"])
    chat(b, exp_b, "prometheus-core", "b asks core")
    chat(b, exp_b, "prometheus-core", "b streams core", stream=True, max_tokens=9)
    chat(b, exp_b, "team-custom", "custom alias with its own price")
    chat(b, exp_b, "prometheus-lite", "b again", stream=True, include_usage=True)

    # how soon usage is readable is test_startup's business; here, what it says
    # (10 requests, so the rows to wait for are exactly the expected ones)
    wait_for(
        lambda: (
            gateway.db_rows(
                "SELECT COUNT(*) FROM requests WHERE key_id IN (?, ?)", key_a["id"], key_b["id"]
            )[0][0]
            >= 10
        ),
        message="the usage records of the scripted mix",
    )
    got_a = usage_by_model(gateway, key_a["id"])
    got_b = usage_by_model(gateway, key_b["id"])
    assert matches(got_a, exp_a), (got_a, dict(exp_a.rows))
    assert matches(got_b, exp_b), (got_b, dict(exp_b.rows))
    for row in [*got_a.values(), *got_b.values()]:
        assert row["latency_ms_p50"] > 0
        assert row["audio_seconds"] == 0
        assert row["period"] == time.strftime("%Y-%m-%d", time.gmtime())
    assert got_a["prometheus-core"]["ttft_ms_p50"] > 0  # streamed: TTFT measured
    # every record says its tokens came from the upstream's own usage
    sources = gateway.db_rows(
        "SELECT DISTINCT usage_source FROM requests WHERE key_id IN (?, ?)",
        key_a["id"],
        key_b["id"],
    )
    assert sources == [("upstream",)]


def test_usage_table_output_and_week_rollup(gateway: GatewayProcess) -> None:
    key = gateway.create_key("meter-week")
    client = openai.OpenAI(base_url=gateway.base_url, api_key=key["key"], max_retries=0)
    exp = Expected()
    for _ in range(3):
        chat(client, exp, "prometheus-lite", "weekly")
    wait_for(
        lambda: (
            gateway.db_rows("SELECT COUNT(*) FROM requests WHERE key_id = ?", key["id"])[0][0] >= 3
        ),
        message="the usage records of 3 requests",
    )
    weekly = gateway.usage(key["id"], by="week")
    assert len(weekly) == 1 and weekly[0]["requests"] == 3
    monday = time.strftime("%Y-%m-%d", time.gmtime(time.time() - time.gmtime().tm_wday * 86400))
    assert weekly[0]["period"] == monday
    table = gateway.cli("usage", "--key-id", key["id"]).stdout
    assert key["id"] in table and "prometheus-lite" in table


def _wait_record(gateway: GatewayProcess, key_id: str) -> tuple[Any, ...]:
    """The one usage record of `key_id`, once it is in SQLite."""
    rows = wait_for(
        lambda: gateway.db_rows(
            "SELECT status, input_tokens, output_tokens, usage_source, error, cost_usd "
            "FROM requests WHERE key_id = ?",
            key_id,
        ),
        message=f"a usage record of {key_id}",
    )
    assert len(rows) == 1, rows
    return tuple(rows[0])


def test_dropped_stream_is_billed_for_what_the_client_got(
    gateway: GatewayProcess, upstream: Upstream
) -> None:
    key = gateway.create_key("dropper")
    client = openai.OpenAI(base_url=gateway.base_url, api_key=key["key"], max_retries=0)
    upstream.clear()
    received = ""
    content_chunks = 0
    # the upstream sends three words, then nothing until the gateway hangs up
    story = [{"role": "user", "content": "__hold_after_3__ tell me a long story"}]
    with client.chat.completions.create(
        model="prometheus-lite", stream=True, messages=story
    ) as stream:
        for chunk in stream:
            delta = chunk.choices[0].delta.content if chunk.choices else None
            if delta:
                received += delta
                content_chunks += 1
                if content_chunks == 3:
                    break
    # leaving the with-block closed the connection mid-stream
    assert received == "".join(reply_words(3))
    status, tin, tout, source, error, cost = _wait_record(gateway, key["id"])
    assert status == 499 and error == "client_disconnected"
    assert source == "local"  # the upstream never got to send its usage
    enc = get_encoding("o200k_base")
    assert tout == len(enc.encode(received))
    assert tin > 0
    assert cost == pytest.approx(tin * 0.10 / 1e6 + tout * 0.40 / 1e6)
    # and the gateway stopped the upstream request instead of reading it to the end
    wait_for(lambda: upstream.disconnects, message="the upstream to see the gateway hang up")
    assert upstream.disconnects == 1


def test_upstream_breaking_off_mid_stream(gateway: GatewayProcess) -> None:
    key = gateway.create_key("cut-upstream")
    client = openai.OpenAI(base_url=gateway.base_url, api_key=key["key"], max_retries=0)
    received = ""
    with pytest.raises(openai.APIError):
        for chunk in client.chat.completions.create(
            model="prometheus-lite",
            stream=True,
            messages=[{"role": "user", "content": "__cut_after_3__ go"}],
        ):
            if chunk.choices:
                received += chunk.choices[0].delta.content or ""
    assert received == "".join(reply_words(3))
    status, _tin, tout, source, error, _cost = _wait_record(gateway, key["id"])
    assert status == 502 and error == "upstream_disconnected"
    assert source == "local"
    assert tout == len(get_encoding("o200k_base").encode(received))


def test_upstream_without_usage_is_counted_locally(gateway: GatewayProcess) -> None:
    key = gateway.create_key("no-usage")
    client = openai.OpenAI(base_url=gateway.base_url, api_key=key["key"], max_retries=0)
    reply = client.chat.completions.create(
        model="prometheus-lite", messages=[{"role": "user", "content": "__no_usage__ hi"}]
    )
    assert reply.usage is None
    status, tin, tout, source, _error, _cost = _wait_record(gateway, key["id"])
    enc = get_encoding("o200k_base")
    assert status == 200 and source == "local"
    assert tout == len(enc.encode(reply.choices[0].message.content or ""))
    assert tin > len(enc.encode("__no_usage__ hi"))  # the message framing counts too


def test_one_log_line_per_request_with_its_figures(gateway: GatewayProcess) -> None:
    key = gateway.create_key("logged")
    client = openai.OpenAI(base_url=gateway.base_url, api_key=key["key"], max_retries=0)
    raw = client.chat.completions.with_raw_response.create(
        model="prometheus-lite", stream=True, messages=[{"role": "user", "content": "log me"}]
    )
    rid = raw.headers["x-request-id"]
    for _ in raw.parse():
        pass
    lines = wait_for(lambda: gateway.log_lines_for(rid), message=f"the log line of {rid}")
    assert len(lines) == 1
    line = lines[0]
    assert line["key_id"] == key["id"] and line["model"] == "prometheus-lite"
    assert line["status"] == 200
    assert (line["input_tokens"], line["output_tokens"]) == (len("log me".split()) + 7, 12)
    assert line["latency_ms"] > 0 and 0 < line["ttft_ms"] <= line["latency_ms"]
    assert key["key"] not in json.dumps(line)

"""`/metrics` over `--workers 2`: the Prometheus text parser reads it, and its
request and token counters equal `usage --json` after a scripted load (every
worker's counts, whichever worker answers the scrape)."""

from __future__ import annotations

import urllib.request
from collections import defaultdict
from pathlib import Path

import openai
import pytest
from gateway_process import GatewayProcess, gateway_config
from prometheus_client.parser import text_string_to_metric_families
from upstream_app import Upstream
from waiting import wait_for

PREFIX = "prometheus_gateway"


def scrape(gw: GatewayProcess) -> dict[str, list[tuple[dict[str, str], float]]]:
    with urllib.request.urlopen(f"{gw.root_url}/metrics", timeout=10) as r:
        assert r.status == 200
        assert r.headers["Content-Type"].startswith("text/plain")
        text = r.read().decode()
    found: dict[str, list[tuple[dict[str, str], float]]] = defaultdict(list)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[sample.name].append((sample.labels, sample.value))
    return found


def totals(samples: list[tuple[dict[str, str], float]], *by: str) -> dict[tuple[str, ...], float]:
    out: dict[tuple[str, ...], float] = defaultdict(float)
    for labels, value in samples:
        out[tuple(labels[b] for b in by)] += value
    return dict(out)


def load(gw: GatewayProcess, key: str) -> int:
    client = openai.OpenAI(base_url=gw.base_url, api_key=key, max_retries=0, timeout=30)
    sent = 0
    for i in range(12):
        client.chat.completions.create(
            model="prometheus-lite", messages=[{"role": "user", "content": f"hello {i}"}]
        )
        stream = client.chat.completions.create(
            model="prometheus-core",
            messages=[{"role": "user", "content": "stream please"}],
            stream=True,
            stream_options={"include_usage": True},
        )
        for _ in stream:
            pass
        client.embeddings.create(model="prometheus-atlas", input=["a b c", "d"])
        sent += 3
    for _ in range(3):
        with pytest.raises(openai.APIStatusError):
            client.chat.completions.create(
                model="prometheus-surge", messages=[{"role": "user", "content": "down"}]
            )
        sent += 1
    return sent


def test_metrics_equal_usage_over_two_workers(upstream: Upstream, tmp_path: Path) -> None:
    gw = GatewayProcess(tmp_path, gateway_config(upstream.base_url), workers=2).start()
    try:
        key = gw.create_key("metrics")
        sent = load(gw, key["key"])
        usage = wait_for(
            lambda: (rows := gw.usage()) and sum(r["requests"] for r in rows) == sent and rows,
            message="every request in usage --json",
        )
        for _ in range(4):  # the answering worker may differ each time: all agree
            m = scrape(gw)
            requests = totals(m[f"{PREFIX}_requests_total"], "alias")
            assert requests == {(r["model"],): r["requests"] for r in usage}
            tokens = totals(m[f"{PREFIX}_tokens_total"], "alias", "kind")
            for r in usage:
                assert tokens.get((r["model"], "input"), 0) == r["input_tokens"]
                assert tokens.get((r["model"], "output"), 0) == r["output_tokens"]
            errors = totals(m[f"{PREFIX}_errors_total"], "alias")
            assert errors == {(r["model"],): r["errors"] for r in usage if r["errors"]}
            spend = totals(m[f"{PREFIX}_spend_usd_total"], "alias")
            for r in usage:
                assert spend.get((r["model"],), 0.0) == pytest.approx(r["cost_usd"], rel=1e-9)
            latency = totals(m[f"{PREFIX}_request_latency_seconds_count"], "alias", "deployment")
            assert sum(latency.values()) == sent
            ttft = totals(m[f"{PREFIX}_ttft_seconds_count"], "alias")
            assert ttft[("prometheus-core",)] == 12
            breakers = totals(m[f"{PREFIX}_breaker_state"], "alias", "deployment")
            assert ("prometheus-surge", "openai:up-surge") in breakers
            # no key ids by default: the series stay per alias and deployment
            assert all("key_id" not in labels for labels, _ in m[f"{PREFIX}_requests_total"])
    finally:
        gw.stop()


def test_per_key_labels_when_switched_on(upstream: Upstream, tmp_path: Path) -> None:
    config = gateway_config(upstream.base_url) + "\n[metrics]\nper_key = true\n"
    gw = GatewayProcess(tmp_path, config).start()
    try:
        key = gw.create_key("labelled")
        client = openai.OpenAI(base_url=gw.base_url, api_key=key["key"], max_retries=0)
        client.chat.completions.create(
            model="prometheus-lite", messages=[{"role": "user", "content": "hi"}]
        )
        m = wait_for(
            lambda: (s := scrape(gw))[f"{PREFIX}_requests_total"] and s,
            message="a request counted",
        )
        assert totals(m[f"{PREFIX}_requests_total"], "key_id") == {(key["id"],): 1.0}
    finally:
        gw.stop()

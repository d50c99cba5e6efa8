#!/usr/bin/env python3
"""Anthropic-backed against OpenAI-backed streams, through the same gateway.

It starts, on free ports, in a temp dir, and stops by PID when it ends:

  openai sim     `prometheus-gateway sim --ttft-ms 0 --tokens-per-second 0`
  anthropic sim  bench/anthropic_sim.py (as fast, the same 60 words, one event a write)
  gateway        `prometheus-gateway serve --workers 1`; prometheus-lite -> the
                 OpenAI simulator (provider "openai"), prometheus-spark -> the
                 Anthropic simulator (provider "anthropic"); one client key

then runs bench/loadgen.py (its own process each run, after a warm-up)
against the two aliases in turn, A B A B ... (`--rounds`), so that drift in a
shared machine's load falls on both: streams of 60 chunks with 64 clients
(streams/s, latency, TTFT, the gateway's CPU per stream), and with one client
(latency and TTFT p50). What differs between the two is the provider's work:
the Messages request built from the chat body, and every Anthropic event
parsed and re-encoded as a chunk (`proxy.providers.anthropic.stream`), where
the OpenAI path rewrites `model` in place (`_fastpath`).

    python bench/anthropic_compare.py [--duration 10] [--rounds 2] [--json-out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from compare import (
    Procs,
    _raise_nofile,
    bench_config,
    deployment_toml,
    fmt,
    free_port,
    gateway_command,
    loadgen,
    sim_command,
    wait_healthz,
    wait_port,
)

HERE = Path(__file__).resolve().parent
OPENAI_ALIAS = "prometheus-lite"
ANTHROPIC_ALIAS = "prometheus-spark"


def write_config(tmp: Path, gw_port: int, openai_port: int, anthropic_port: int) -> Path:
    openai_url = f"http://127.0.0.1:{openai_port}/v1"
    anthropic_url = f"http://127.0.0.1:{anthropic_port}"
    return bench_config(
        tmp,
        gw_port,
        deployment_toml(OPENAI_ALIAS, "openai", openai_url, "sk-bench", "sim-model")
        + deployment_toml(
            ANTHROPIC_ALIAS, "anthropic", anthropic_url, "sk-ant-bench", "claude-bench"
        ),
    )


def translator_rate(streams: int = 2000, rounds: int = 5) -> dict[str, float]:
    """The stream translator alone, pure Python: events/s over a 60-word stream
    (66 events) fed one event a piece and cut into ~80 random pieces; best round."""
    import random
    import time

    from anthropic_sim import sse, words

    from proxy.providers.anthropic.stream import StreamTranslator

    start = {"id": "msg_bench", "type": "message", "role": "assistant", "content": []}
    start["usage"] = {"input_tokens": 12, "output_tokens": 1}
    events = [
        sse("message_start", {"type": "message_start", "message": start}),
        sse("ping", {"type": "ping"}),
        sse(
            "content_block_start",
            {
                "type": "content_block_start",
                "index": 0,
                "content_block": {"type": "text", "text": ""},
            },
        ),
        *(
            sse(
                "content_block_delta",
                {
                    "type": "content_block_delta",
                    "index": 0,
                    "delta": {"type": "text_delta", "text": w},
                },
            )
            for w in words(60)
        ),
        sse("content_block_stop", {"type": "content_block_stop", "index": 0}),
        sse(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": "end_turn"},
                "usage": {"output_tokens": 60},
            },
        ),
        sse("message_stop", {"type": "message_stop"}),
    ]
    whole = b"".join(events)
    rnd = random.Random(7)
    cuts = sorted(rnd.sample(range(1, len(whole)), 80))
    random_pieces = [whole[i:j] for i, j in zip([0, *cuts], [*cuts, len(whole)], strict=True)]
    out: dict[str, float] = {}
    for name, pieces in (("one event a piece", events), ("80 random pieces", random_pieces)):
        best = 0.0
        for _ in range(rounds):
            t0 = time.perf_counter()
            for _ in range(streams):
                translator = StreamTranslator("prometheus-spark", False, None, 1 << 20)
                for piece in pieces:
                    translator.feed(piece)
                assert translator.stopped
            best = max(best, streams * len(events) / (time.perf_counter() - t0))
        out[name] = round(best)
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--duration", type=float, default=10.0, help="seconds per 64-client run")
    p.add_argument("--warmup", type=float, default=1.0)
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--rounds", type=int, default=2, help="A B pairs of 64-client runs")
    p.add_argument("--json-out", help="also write all results to this JSON file")
    a = p.parse_args()
    _raise_nofile()
    gw = gateway_command()
    if gw is None:
        print("`prometheus-gateway` is not installed next to this Python", file=sys.stderr)
        return 2
    tmp = Path(tempfile.mkdtemp(prefix="prom-anthropic-bench-"))
    procs = Procs(tmp)
    results: dict[str, list[dict]] = {
        "openai": [],
        "anthropic": [],
        "openai1": [],
        "anthropic1": [],
    }
    try:
        openai_port, anthropic_port, gw_port = (free_port() for _ in range(3))
        env = dict(os.environ)
        sim = procs.start("openai-sim", sim_command(gw, openai_port, 0), env)
        wait_port(openai_port, sim, "OpenAI simulator")
        asim = procs.start(
            "anthropic-sim",
            [sys.executable, str(HERE / "anthropic_sim.py"), "--port", str(anthropic_port)],
            env,
        )
        wait_port(anthropic_port, asim, "Anthropic simulator")
        cfg = write_config(tmp, gw_port, openai_port, anthropic_port)
        gw_env = {k: v for k, v in env.items() if not k.startswith("PROMETHEUS_")}
        made = subprocess.run(
            gw + ["keys", "create", "--name", "bench", "--config", str(cfg), "--json"],
            capture_output=True,
            env=gw_env,
            timeout=60,
        )
        if made.returncode != 0:
            raise RuntimeError(f"keys create failed: {made.stderr.decode()[-800:]}")
        text = made.stdout.decode()
        key = json.JSONDecoder().raw_decode(text[text.index("{") :])[0]["key"]
        serve = ["serve", "--config", str(cfg), "--host", "127.0.0.1", "--port", str(gw_port)]
        gw_proc = procs.start("gateway", gw + serve + ["--workers", "1"], gw_env)
        wait_healthz(gw_port, gw_proc)
        url = f"http://127.0.0.1:{gw_port}/v1"
        micro = translator_rate()
        results["translator_events_per_s"] = [micro]
        print(
            "stream translator alone (pure Python), events/s: "
            + ", ".join(f"{k} {v:,.0f}" for k, v in micro.items()),
            flush=True,
        )
        print(
            f"machine: {os.cpu_count()} CPUs shared by the client, both simulators and the "
            f"gateway; {a.duration:g} s per run after {a.warmup:g} s warm-up",
            flush=True,
        )
        plan = [("openai", OPENAI_ALIAS), ("anthropic", ANTHROPIC_ALIAS)]
        for _ in range(a.rounds):
            for name, alias in plan:
                r = loadgen(
                    url,
                    api_key=key,
                    model=alias,
                    concurrency=a.concurrency,
                    duration=a.duration,
                    stream=True,
                    warmup=a.warmup,
                    watch=[gw_proc.pid],
                )
                r["server_cpu_ms_per_stream"] = (
                    round(1000 * r["server_cpu_s"] / r["requests_ok"], 3)
                    if r.get("requests_ok")
                    else None
                )
                results[name].append(r)
                print(
                    f"  64 clients  {name:9} {r['requests_per_s']:>9,.1f} streams/s  p50 "
                    f"{fmt(r['latency_ms'].get('p50'), 2)} ms  TTFT p50 "
                    f"{fmt(r.get('ttft_ms', {}).get('p50'), 2)} ms  gateway CPU/stream "
                    f"{fmt(r['server_cpu_ms_per_stream'], 3)} ms  errors {r['errors']}",
                    flush=True,
                )
        for name, alias in plan:
            r = loadgen(
                url,
                api_key=key,
                model=alias,
                concurrency=1,
                duration=max(2.0, a.duration / 2),
                stream=True,
                warmup=a.warmup,
            )
            results[name + "1"].append(r)
            print(
                f"  1 client    {name:9} latency p50 {fmt(r['latency_ms'].get('p50'), 2)} ms  "
                f"TTFT p50 {fmt(r.get('ttft_ms', {}).get('p50'), 2)} ms  errors {r['errors']}",
                flush=True,
            )
        rate = {n: statistics.mean(r["requests_per_s"] for r in results[n]) for n, _ in plan}
        cpu = {
            n: statistics.mean(r["server_cpu_ms_per_stream"] or 0 for r in results[n])
            for n, _ in plan
        }
        print(
            f"\nmean of {a.rounds} runs: anthropic {rate['anthropic']:,.1f} / openai "
            f"{rate['openai']:,.1f} streams/s = {rate['anthropic'] / rate['openai']:.2f}; "
            f"gateway CPU per stream {cpu['anthropic']:.3f} / {cpu['openai']:.3f} ms"
        )
        for n, _ in plan:
            for r in results[n] + results[n + "1"]:
                for m, count in (r.get("error_messages") or {}).items():
                    print(f"  [{n}] error x{count}: {m}")
        if a.json_out:
            Path(a.json_out).write_text(json.dumps(results, indent=2))
        return 0
    finally:
        procs.stop_all()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())

#!/usr/bin/env python3
"""Load generator for any OpenAI-compatible base URL.

One process, one uvloop event loop, one aiohttp ClientSession whose
TCPConnector has no connection limit, so N clients are N TCP connections.
Each client sends its next request as soon as the previous one has finished
(closed loop). Runs are bounded: by --requests, or by --duration (default 10 s),
and every request has a --timeout.

What it measures (time.perf_counter, milliseconds):
  latency   request sent -> whole body read (streams: through the last byte)
  TTFT      streams only: request sent -> first SSE event whose delta carries
            non-empty `content` (the role-only first chunk does not count)
  chunks    streams only: content-carrying events per stream
  ITL       streams only: inter-token latency, the gap between consecutive
            content-carrying events as the client receives them (events that
            arrive in the same read are 0 apart: they reached the client together)
  transit   with --stamps, against bench/stamped_sim.py only: each token's
            arrival minus the send time the upstream wrote into its content
The client stays light so that it is not the bottleneck: bodies are read as
they arrive (iter_any), and streamed events are not JSON-parsed; a byte regex
over complete lines finds content events.

    python bench/loadgen.py --base-url http://127.0.0.1:8080/v1 --api-key prom_sk_... \\
        --model prometheus-lite --concurrency 64 --duration 10 --stream

--json prints one JSON object on stdout instead of the text report.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import re
import resource
import sys
import time
from dataclasses import dataclass, field

import aiohttp

try:
    import orjson

    def _dumps(obj: object) -> bytes:
        return orjson.dumps(obj)
except ImportError:  # pragma: no cover - orjson is a gateway dependency

    def _dumps(obj: object) -> bytes:
        return json.dumps(obj, separators=(",", ":")).encode()


# An SSE event whose delta carries a non-empty string `content`. Matches both
# compact (`"content":"x`) and spaced (`"content": "x`) JSON.
_CONTENT = re.compile(rb'"content": ?"(?!")')
# bench/stamped_sim.py's tokens: `w<i>@<perf_counter at the upstream's write> `
_STAMP = re.compile(rb'"content": ?"w\d+@(\d+\.\d+) ')
_DONE = b"data: [DONE]"
_ERROR_EVENT = re.compile(rb'^data: ?\{"error"', re.M)
MAX_ERROR_KINDS = 5


@dataclass
class Stats:
    latencies: list[float] = field(default_factory=list)
    ttfts: list[float] = field(default_factory=list)
    chunks: list[int] = field(default_factory=list)
    itls: list[float] = field(default_factory=list)
    transits: list[float] = field(default_factory=list)
    ok: int = 0
    errors: int = 0
    error_kinds: dict[str, int] = field(default_factory=dict)
    bytes_in: int = 0

    def error(self, message: str) -> None:
        self.errors += 1
        message = message[:200]
        if message in self.error_kinds:
            self.error_kinds[message] += 1
        elif len(self.error_kinds) < MAX_ERROR_KINDS:
            self.error_kinds[message] = 1
        else:
            self.error_kinds["(other)"] = self.error_kinds.get("(other)", 0) + 1


def percentile(values: list[float], p: float) -> float | None:
    """Nearest-rank percentile (p in 0..100) of an unsorted list."""
    if not values:
        return None
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, math.ceil(p / 100.0 * len(ordered)) - 1))
    return ordered[k]


class ContentGaps:
    """Inter-token gaps of one stream, in ms: fed, per read, the number of content
    events that read completed and the time it came. The first content event of a
    stream has no gap; events after the first in one read are 0 ms apart."""

    __slots__ = ("gaps", "last")

    def __init__(self, gaps: list[float]) -> None:
        self.gaps = gaps  # shared with the run's Stats: appended to in place
        self.last: float | None = None

    def arrived(self, count: int, now: float) -> None:
        if count <= 0:
            return
        if self.last is not None:
            self.gaps.append((now - self.last) * 1000.0)
        if count > 1:
            self.gaps.extend([0.0] * (count - 1))
        self.last = now


def build_body(args: argparse.Namespace) -> bytes:
    if args.endpoint == "embeddings":
        return _dumps({"model": args.model, "input": args.prompt})
    body: dict[str, object] = {
        "model": args.model,
        "messages": [{"role": "user", "content": args.prompt}],
        "max_tokens": args.max_tokens,
    }
    if args.stream:
        body["stream"] = True
    return _dumps(body)


async def one_request(
    session: aiohttp.ClientSession,
    url: str,
    body: bytes,
    headers: dict[str, str],
    stream: bool,
    stats: Stats,
    stamps: bool = False,
) -> None:
    t0 = time.perf_counter()
    try:
        async with session.post(url, data=body, headers=headers) as resp:
            if resp.status != 200:
                text = await resp.text(errors="replace")
                stats.error(f"HTTP {resp.status}: {text.strip()[:160]}")
                return
            if not stream:
                data = await resp.read()
                stats.latencies.append((time.perf_counter() - t0) * 1000.0)
                stats.bytes_in += len(data)
                stats.ok += 1
                return
            ttft = None
            n_content = 0
            gaps: list[float] = []
            clock = ContentGaps(gaps)
            transits: list[float] = []
            done = False
            failed = None
            carry = b""
            size = 0
            async for piece in resp.content.iter_any():
                size += len(piece)
                buf = carry + piece if carry else piece
                if buf.endswith(b"\n"):
                    lines, carry = buf, b""
                else:
                    cut = buf.rfind(b"\n")
                    if cut < 0:
                        carry = buf
                        continue
                    lines, carry = buf[: cut + 1], buf[cut + 1 :]
                found = len(_CONTENT.findall(lines))
                if found:
                    now = time.perf_counter()
                    if ttft is None:
                        ttft = (now - t0) * 1000.0
                    clock.arrived(found, now)
                    n_content += found
                    if stamps:
                        transits.extend(now - float(m) for m in _STAMP.findall(lines))
                if _DONE in lines:
                    done = True
                if failed is None and b'{"error"' in lines and _ERROR_EVENT.search(lines):
                    failed = lines[lines.find(b'{"error"') :][:160].decode(errors="replace")
            latency = (time.perf_counter() - t0) * 1000.0
            stats.bytes_in += size
            if failed is not None:
                stats.error(f"error event in stream: {failed}")
                return
            if not done:
                stats.error("stream ended without data: [DONE]")
                return
            stats.latencies.append(latency)
            if ttft is not None:
                stats.ttfts.append(ttft)
            stats.itls.extend(gaps)
            stats.transits.extend(t * 1000.0 for t in transits)
            stats.chunks.append(n_content)
            stats.ok += 1
    except TimeoutError:
        stats.error("timeout")
    except aiohttp.ClientError as exc:
        stats.error(f"{type(exc).__name__}: {exc}")
    except OSError as exc:
        stats.error(f"{type(exc).__name__}: {exc}")


async def run_phase(
    session: aiohttp.ClientSession,
    args: argparse.Namespace,
    url: str,
    body: bytes,
    headers: dict[str, str],
    duration: float | None,
    requests: int | None,
    cancel_at_deadline: bool = False,
) -> tuple[Stats, float]:
    """Run N closed-loop clients until `duration` seconds or `requests` requests."""
    stats = Stats()
    remaining = [requests] if requests is not None else None
    start = time.perf_counter()
    deadline = start + duration if duration is not None else None

    async def client() -> None:
        while True:
            if remaining is not None:
                if remaining[0] <= 0:
                    return
                remaining[0] -= 1
            if deadline is not None and time.perf_counter() >= deadline:
                return
            await one_request(session, url, body, headers, args.stream, stats, args.stamps)

    tasks = [asyncio.ensure_future(client()) for _ in range(args.concurrency)]
    if cancel_at_deadline and duration is not None:
        # warm-up: whatever is still in flight at the deadline is dropped, not awaited
        _, pending = await asyncio.wait(tasks, timeout=duration)
        for t in pending:
            t.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
    else:
        await asyncio.gather(*tasks)
    return stats, time.perf_counter() - start


def summarize(stats: Stats, elapsed: float, args: argparse.Namespace) -> dict[str, object]:
    def r(v: float | None) -> float | None:
        return None if v is None else round(v, 2)

    def r3(v: float | None) -> float | None:  # ITL gaps are tens of µs apart
        return None if v is None else round(v, 4)

    result: dict[str, object] = {
        "base_url": args.base_url,
        "endpoint": args.endpoint,
        "model": args.model,
        "stream": bool(args.stream),
        "concurrency": args.concurrency,
        "max_tokens": args.max_tokens,
        "elapsed_s": round(elapsed, 3),
        "requests_ok": stats.ok,
        "errors": stats.errors,
        "error_messages": stats.error_kinds,
        "requests_per_s": round(stats.ok / elapsed, 2) if elapsed > 0 else 0.0,
        "latency_ms": {
            "p50": r(percentile(stats.latencies, 50)),
            "p90": r(percentile(stats.latencies, 90)),
            "p99": r(percentile(stats.latencies, 99)),
            "max": r(max(stats.latencies) if stats.latencies else None),
        },
        "bytes_in": stats.bytes_in,
    }
    if args.stream:
        result["ttft_ms"] = {
            "p50": r(percentile(stats.ttfts, 50)),
            "p90": r(percentile(stats.ttfts, 90)),
            "p99": r(percentile(stats.ttfts, 99)),
        }
        result["itl_ms"] = {
            "p50": r3(percentile(stats.itls, 50)),
            "p90": r3(percentile(stats.itls, 90)),
            "p99": r3(percentile(stats.itls, 99)),
            # the mean gap counts the 0s: the time per token when tokens come back to back
            "mean": r3(sum(stats.itls) / len(stats.itls)) if stats.itls else None,
            "gaps": len(stats.itls),
            # the share of gaps that are 0: events that reached the client in one read
            "same_read_share": (
                round(sum(1 for g in stats.itls if g == 0.0) / len(stats.itls), 3)
                if stats.itls
                else None
            ),
        }
        if args.stamps:
            result["transit_ms"] = {
                "p50": r3(percentile(stats.transits, 50)),
                "p90": r3(percentile(stats.transits, 90)),
                "p99": r3(percentile(stats.transits, 99)),
                "tokens": len(stats.transits),
            }
        result["chunks_per_stream"] = {
            "min": min(stats.chunks) if stats.chunks else None,
            "mean": round(sum(stats.chunks) / len(stats.chunks), 2) if stats.chunks else None,
            "max": max(stats.chunks) if stats.chunks else None,
        }
    return result


def print_report(res: dict[str, object]) -> None:
    lat = res["latency_ms"]
    kind = "streams" if res["stream"] else "requests"
    print(
        f"target       {res['base_url']}  ({res['endpoint']}, model {res['model']}, "
        f"{'stream' if res['stream'] else 'non-stream'})"
    )
    print(f"clients      {res['concurrency']}   elapsed {res['elapsed_s']} s")
    print(f"completed    {res['requests_ok']} {kind}   errors {res['errors']}")
    print(f"throughput   {res['requests_per_s']} {kind}/s")
    print(f"latency ms   p50 {lat['p50']}   p90 {lat['p90']}   p99 {lat['p99']}   max {lat['max']}")
    if res["stream"]:
        t = res["ttft_ms"]
        c = res["chunks_per_stream"]
        print(f"TTFT ms      p50 {t['p50']}   p90 {t['p90']}   p99 {t['p99']}")
        i = res["itl_ms"]
        print(
            f"ITL ms       p50 {i['p50']}   p90 {i['p90']}   p99 {i['p99']}"
            f"   ({i['gaps']} gaps, {i['same_read_share']} of them 0: same read)"
        )
        if "transit_ms" in res:
            tr = res["transit_ms"]
            print(f"transit ms   p50 {tr['p50']}   p90 {tr['p90']}   p99 {tr['p99']}")
        print(f"chunks/stream  min {c['min']}   mean {c['mean']}   max {c['max']}")
    for msg, n in (res["error_messages"] or {}).items():
        print(f"  error x{n}: {msg}")


async def main_async(args: argparse.Namespace) -> dict[str, object]:
    base = args.base_url.rstrip("/")
    path = "/embeddings" if args.endpoint == "embeddings" else "/chat/completions"
    url = base + path
    headers = {"Content-Type": "application/json"}
    if args.api_key:
        headers["Authorization"] = f"Bearer {args.api_key}"
    body = build_body(args)
    connector = aiohttp.TCPConnector(
        limit=0, limit_per_host=0, force_close=False, ttl_dns_cache=None
    )
    timeout = aiohttp.ClientTimeout(total=args.timeout)
    async with aiohttp.ClientSession(
        connector=connector,
        timeout=timeout,
        auto_decompress=False,
        skip_auto_headers=("User-Agent",),
    ) as session:
        if args.warmup > 0:
            await run_phase(
                session, args, url, body, headers, args.warmup, None, cancel_at_deadline=True
            )
        duration = args.duration
        if args.requests is None and duration is None:
            duration = 10.0
        stats, elapsed = await run_phase(session, args, url, body, headers, duration, args.requests)
    return summarize(stats, elapsed, args)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--base-url",
        default="http://127.0.0.1:8080/v1",
        help="OpenAI-compatible base URL, e.g. http://127.0.0.1:8080/v1",
    )
    p.add_argument("--api-key", default="", help="sent as 'Authorization: Bearer KEY'")
    p.add_argument("--model", default="prometheus-lite")
    p.add_argument("--endpoint", choices=("chat", "embeddings"), default="chat")
    p.add_argument("--concurrency", "-c", type=int, default=16, help="clients = connections")
    bound = p.add_mutually_exclusive_group()
    bound.add_argument(
        "--duration",
        "-d",
        type=float,
        default=None,
        help="seconds to run (default 10 unless --requests)",
    )
    bound.add_argument(
        "--requests", "-n", type=int, default=None, help="total requests to send, then stop"
    )
    p.add_argument("--stream", action="store_true", help="chat with stream=true")
    p.add_argument("--max-tokens", type=int, default=60)
    p.add_argument("--prompt", default="Say something about gateways.")
    p.add_argument("--warmup", type=float, default=0.0, help="seconds of unmeasured load first")
    p.add_argument("--timeout", type=float, default=120.0, help="per-request timeout, seconds")
    p.add_argument(
        "--stamps",
        action="store_true",
        help="streams from bench/stamped_sim.py: also report each token's transit",
    )
    p.add_argument("--json", action="store_true", help="print one JSON result on stdout")
    args = p.parse_args(argv)
    if args.concurrency < 1:
        p.error("--concurrency must be >= 1")
    if args.endpoint == "embeddings" and args.stream:
        p.error("--stream applies to --endpoint chat only")
    return args


def _raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):
            pass


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    _raise_nofile()
    try:
        import uvloop

        runner = uvloop.run
    except ImportError:  # pragma: no cover
        runner = asyncio.run
    res = runner(main_async(args))
    if args.json:
        sys.stdout.write(json.dumps(res) + "\n")
    else:
        print_report(res)
    return 0 if res["requests_ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())

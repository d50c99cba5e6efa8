"""In-process microbench of a key's admission: admit, the x-ratelimit-* headers,
settle and release, as a chat request runs them, without HTTP around them.

    python bench/limits_micro.py [--n 20000] [--rounds 7] [--redis-url URL] [--profile]

For each kind of key (unlimited; rpm only; rpm + tpm + budget) it runs `--n`
requests `--rounds` times on one event loop and prints the median wall and
CPU microseconds per request (admit + headers + settle + release, plus the
small scaffolding every kind shares: a fake request and a header map, whose
cost alone is the first row). The
limits table is a fresh file in a temporary directory; with `--redis-url`
the limits also go through that Redis (under a prefix of its own, deleted
afterwards). `--profile` prints a cProfile of the limited key's loop.

Whole-server throughput on a shared 2-core machine moves 10-20 % between runs;
these figures move a few percent, which is why the per-key limits section of
bench/README.md quotes both.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import pstats
import secrets
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from aiohttp import web
from multidict import CIMultiDict

from proxy.auth import admission
from proxy.auth.admission import LIMITS, Limits
from proxy.auth.estimate import chat_estimate
from proxy.auth.keys import KeyInfo
from proxy.auth.limits import LocalLimits
from proxy.auth.redis_limits import RedisLimits
from proxy.config.load import load_config
from proxy.observability.logs import get_logger
from proxy.server.app import _ratelimit_headers

BODY = {"model": "prometheus-lite", "messages": [{"role": "user", "content": "Say hello."}]}
BIG = 2_000_000_000
SCAFFOLD = KeyInfo("k-none", "none", "h0", False)  # the fake request and header map alone


class FakeRequest(dict[str, Any]):
    """What admission reads of an aiohttp request: a mapping and `.app`."""

    def __init__(self, app: web.Application, key: KeyInfo) -> None:
        super().__init__(key=key)
        self.app = app


class FakeResponse:
    def __init__(self) -> None:
        self.headers: CIMultiDict[str] = CIMultiDict()


def _settle(request: FakeRequest, tokens: int, cost: float) -> None:
    """What the meter does when it writes the record (either API generation)."""
    settle = getattr(admission, "settle", None)
    if settle is not None:
        settle(request, tokens, cost)
        return
    reservation = request.get(admission.RESERVATION)
    if reservation is not None:
        reservation.settle(tokens, cost)


async def run(app: web.Application, key: KeyInfo, route: Any, n: int) -> tuple[float, float]:
    encoding = route.deployments[0].encoding

    def estimate() -> Any:
        return chat_estimate(BODY, encoding)

    wall0, cpu0 = time.perf_counter(), time.process_time()
    if key is SCAFFOLD:
        for _ in range(n):
            request = FakeRequest(app, key)
            FakeResponse()
        wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
        return wall / n * 1e6, cpu / n * 1e6
    for _ in range(n):
        request = FakeRequest(app, key)
        await admission.admit(request, route, estimate)  # type: ignore[arg-type]
        await _ratelimit_headers(request, FakeResponse())  # type: ignore[arg-type]
        _settle(request, 40, 0.0000123)
        admission.release(request)  # type: ignore[arg-type]
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    await asyncio.sleep(0.01)  # let queued Redis settles go out
    return wall / n * 1e6, cpu / n * 1e6


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--redis-url", default=None)
    parser.add_argument("--profile", action="store_true")
    a = parser.parse_args()
    route = load_config(None, {}).routes["prometheus-lite"]
    log = get_logger()
    prefix = f"bench-micro-{secrets.token_hex(4)}:"
    with tempfile.TemporaryDirectory() as tmp:
        local = LocalLimits(Path(tmp) / "limits.shm")
        local.attach(lambda now: {})
        remote = None
        if a.redis_url:
            remote = RedisLimits(a.redis_url, prefix, log)
            await remote.start()
        app = web.Application()
        app[LIMITS] = Limits(local, remote, log)
        keys = {
            "(scaffold only)": SCAFFOLD,
            "unlimited": KeyInfo("k-free", "free", "h1", False),
            "rpm only": KeyInfo("k-rpm", "rpm", "h2", False, rpm=BIG),
            "rpm+tpm+budget": KeyInfo(
                "k-lim", "lim", "h3", False, rpm=BIG, tpm=BIG, budget_usd=1e9
            ),
        }
        for key in keys.values():  # warm: the tiktoken encoding, slots
            await run(app, key, route, 200)
        results: dict[str, list[tuple[float, float]]] = {name: [] for name in keys}
        for _ in range(a.rounds):
            for name, key in keys.items():
                results[name].append(await run(app, key, route, a.n))
        print(f"{a.n} requests x {a.rounds} rounds, median per request (redis: {a.redis_url})")
        for name, rows in results.items():
            wall = statistics.median(r[0] for r in rows)
            cpu = statistics.median(r[1] for r in rows)
            print(f"  {name:15s} wall {wall:7.2f} us   cpu {cpu:7.2f} us")
        if a.profile:
            prof = cProfile.Profile()
            prof.enable()
            await run(app, keys["rpm+tpm+budget"], route, a.n)
            prof.disable()
            pstats.Stats(prof).sort_stats("tottime").print_stats(18)
        if remote is not None:
            client = remote._client
            async for name in client.scan_iter(match=prefix + "*"):
                await client.delete(name)
            await remote.close()
        local.close()


if __name__ == "__main__":
    import uvloop

    uvloop.run(main())

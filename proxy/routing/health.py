"""Which deployments of an alias to try, in which order, given their health.

One `HealthBoard` per process (on `GatewayState`) holds a `Breaker` per
deployment. `order(route)` is the weighted random order of the deployments
whose breaker lets a request through; when none does, every deployment is
tried anyway, the longest-open first (a gateway that refused everything while
all its upstreams cool down would be worse than one that tries). `snapshot()`
is what `GET /admin/health` shows.
"""

from __future__ import annotations

import random
import time
from collections import deque
from typing import Any

from proxy.config.model import AliasRoute, Deployment
from proxy.routing.breaker import Breaker


def weighted_order(deps: list[Deployment]) -> list[Deployment]:
    if len(deps) <= 1:
        return deps
    remaining = list(deps)
    order = []
    while remaining:
        pick = random.choices(remaining, weights=[max(d.weight, 0.0001) for d in remaining])[0]
        order.append(pick)
        remaining.remove(pick)
    return order


TTFT_SAMPLES = 200  # recent times to first token kept per deployment
TTFT_MIN_SAMPLES = 10  # fewer than this: no p90 yet


class HealthBoard:
    def __init__(self) -> None:
        self._breakers: dict[tuple[str, int], Breaker] = {}
        self._ttft: dict[tuple[str, int], deque[float]] = {}

    def record_ttft(self, alias: str, index: int, seconds: float) -> None:
        key = (alias, index)
        samples = self._ttft.get(key)
        if samples is None:
            samples = self._ttft[key] = deque(maxlen=TTFT_SAMPLES)
        samples.append(seconds * 1000.0)

    def ttft_p90_ms(self, alias: str, index: int) -> float | None:
        samples = self._ttft.get((alias, index))
        if samples is None or len(samples) < TTFT_MIN_SAMPLES:
            return None
        ordered = sorted(samples)
        return ordered[min(len(ordered) - 1, int(len(ordered) * 0.9))]

    def breaker(self, alias: str, index: int) -> Breaker:
        key = (alias, index)
        found = self._breakers.get(key)
        if found is None:
            found = self._breakers[key] = Breaker()
        return found

    def order(self, route: AliasRoute) -> list[tuple[int, Deployment]]:
        """(index, deployment) pairs to try, in order."""
        if len(route.deployments) == 1:  # nowhere else to go: always tried
            return [(0, route.deployments[0])]
        now = time.monotonic()
        indexed = list(enumerate(route.deployments))
        open_ = [(i, d) for i, d in indexed if not self.breaker(route.alias, i).allows(now)]
        usable = [pair for pair in indexed if pair not in open_]
        if not usable:  # all cooling down: try them all, the longest-open first
            return sorted(open_, key=lambda pair: self.breaker(route.alias, pair[0]).opened_at)
        by_dep = {id(d): i for i, d in usable}
        return [(by_dep[id(d)], d) for d in weighted_order([d for _, d in usable])]

    def snapshot(self, routes: dict[str, AliasRoute]) -> list[dict[str, Any]]:
        rows = []
        for alias, route in routes.items():
            for i, dep in enumerate(route.deployments):
                b = self.breaker(alias, i)
                rows.append(
                    {
                        "alias": alias,
                        "deployment": dep.name,
                        "index": i,
                        "state": b.state,
                        "consecutive_failures": b.consecutive,
                        "recent_failures": sum(b.recent),
                        "recent_calls": len(b.recent),
                        "opens": b.opens,
                        "last_error": b.last_error,
                        "ttft_p90_ms": self.ttft_p90_ms(alias, i),
                    }
                )
        return rows

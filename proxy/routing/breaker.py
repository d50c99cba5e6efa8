"""A circuit breaker per deployment: stop sending requests to an upstream that
keeps failing, and find out cheaply when it is back.

`proxy.routing.failover` tells the breaker of every attempt's outcome; the
`HealthBoard` (`proxy.routing.health`) asks it whether a deployment may be
tried. Closed: every request goes. It opens after `OPEN_AFTER_CONSECUTIVE`
failures in a row, or when at least `RATE_MIN_CALLS` of the last
`RATE_WINDOW` attempts include more than `RATE_THRESHOLD` failures. Open: no
request goes for `COOLDOWN_S`; then one request is let through as a probe
(half-open): its success closes the breaker, its failure opens it again.
"""

from __future__ import annotations

from collections import deque

OPEN_AFTER_CONSECUTIVE = 5
RATE_WINDOW = 20
RATE_MIN_CALLS = 10
RATE_THRESHOLD = 0.5
COOLDOWN_S = 10.0

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"


class Breaker:
    __slots__ = ("state", "consecutive", "recent", "opened_at", "probing", "last_error", "opens")

    def __init__(self) -> None:
        self.state = CLOSED
        self.consecutive = 0  # failures in a row
        self.recent: deque[bool] = deque(maxlen=RATE_WINDOW)  # True = failed
        self.opened_at = 0.0
        self.probing = False  # a half-open probe is under way
        self.last_error: str | None = None
        self.opens = 0  # times it opened since start

    def allows(self, now: float) -> bool:
        """May a request go to this deployment now? (Starts the probe when due.)"""
        if self.state == CLOSED:
            return True
        if self.state == OPEN and now - self.opened_at >= COOLDOWN_S:
            self.state = HALF_OPEN
            self.probing = False
        if self.state == HALF_OPEN and not self.probing:
            self.probing = True
            return True
        return False

    def succeeded(self) -> None:
        self.state = CLOSED
        self.consecutive = 0
        self.probing = False
        self.recent.append(False)

    def failed(self, now: float, error: str | None) -> None:
        self.consecutive += 1
        self.recent.append(True)
        self.last_error = error
        if self.state == HALF_OPEN or self._tripped():
            if self.state != OPEN:
                self.opens += 1
            self.state = OPEN
            self.opened_at = now
            self.probing = False

    def _tripped(self) -> bool:
        if self.consecutive >= OPEN_AFTER_CONSECUTIVE:
            return True
        calls = len(self.recent)
        return calls >= RATE_MIN_CALLS and sum(self.recent) / calls > RATE_THRESHOLD

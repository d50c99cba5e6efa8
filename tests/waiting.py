"""Waiting on a running gateway without betting on the machine's speed.

The tests run on small, shared machines (2 cores, other work beside them), so
nothing here sleeps a fixed time and then hopes. `wait_for` polls a condition
until it holds or a generous deadline passes, and fails saying what it waited
for. Where the product promises a time bound ("a revoked key stops within 1
second"), `assert_holds_within` still checks it, honestly: it polls from the
moment the clock starts, records when the condition was first seen to hold,
and compares that moment with the promise plus `PROMISE_SLACK_S`; it never
asserts how long a `sleep` took.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

DEADLINE_S = 10.0
"""How long a test waits for something that should happen 'soon'."""

PROMISE_SLACK_S = 1.0
"""What a loaded CI machine may add to a promised bound (scheduling, our own probes)."""


def wait_for(
    predicate: Callable[[], T],
    timeout: float = DEADLINE_S,
    interval: float = 0.05,
    message: str | Callable[[], str] = "the condition",
) -> T:
    """Call `predicate` until it returns something truthy, and return that.

    Fails with an AssertionError naming `message` (a string, or a callable
    for details known only at the end) and the last value seen if `timeout`
    seconds pass first. The predicate is always called at least once, and
    once more at the deadline. Exceptions it raises are not caught: an
    assertion inside it fails the test at once.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            text = message() if callable(message) else message
            raise AssertionError(f"waited {timeout:g} s for {text}; last saw {value!r}")
        time.sleep(min(interval, max(0.0, deadline - time.monotonic())))


def assert_holds_within(
    predicate: Callable[[], T],
    *,
    since: float,
    promised_s: float,
    message: str,
    timeout: float = DEADLINE_S,
    interval: float = 0.05,
) -> tuple[T, float]:
    """Wait for `predicate`, then check it held within `promised_s` of `since`.

    `since` is a `time.monotonic()` reading taken when the promise's clock
    started. The moment the condition held is taken when the first probe that
    saw it returned (an upper bound: charging the probe to the product, never
    the other way round). The condition must hold by `promised_s` +
    `PROMISE_SLACK_S`; waiting goes on to `timeout` so that a slow product
    fails with its measured time, not with a timeout. Returns the
    predicate's value and the measured seconds.
    """
    value = wait_for(predicate, timeout=timeout, interval=interval, message=message)
    held_after = time.monotonic() - since
    assert held_after <= promised_s + PROMISE_SLACK_S, (
        f"{message}: first held {held_after:.2f} s after the start, promised within "
        f"{promised_s:g} s (+{PROMISE_SLACK_S:g} s allowance)"
    )
    return value, held_after

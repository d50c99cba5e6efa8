"""A key's sliding window as a check leaves it (`Window`), and the arithmetic on
its one-second buckets that a refusal needs: when the oldest request or
tokens leave the window, and when the refused request would fit.

Used by `proxy.auth.limits` (the machine's table) and read by
`proxy.auth.admission` (headers and refusals); `proxy.auth.redis_limits`
computes the same numbers inside its Lua script.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

WINDOW_S = 60
REQ = struct.Struct(f"<{WINDOW_S}I")  # requests per second, the head's second newest
TOK = struct.Struct(f"<{WINDOW_S}q")  # tokens per second


@dataclass(slots=True)  # not frozen: a frozen dataclass costs ~1 us more to build
class Window:
    """A key's window after a check: what is used, and when room comes back."""

    admitted: bool
    refused_by: str | None  # "rpm" | "tpm" | "budget" | None
    requests: int  # started in the last WINDOW_S seconds (this one included when admitted)
    tokens: int
    reset_requests_s: float  # until the oldest request in the window leaves it
    reset_tokens_s: float
    retry_after_s: float  # until the refused request would fit (0 when admitted)
    second: int  # the bucket this request was counted in
    spent: float = 0.0  # the key's spend in the budget period asked about


def refused(
    now: float,
    head: int,
    raw: bytes,
    used_r: int,
    used_t: int,
    rpm: int | None,
    tpm: int | None,
    tokens: int,
    refused_by: str,
) -> Window:
    """A refusal's window from the slot's raw buckets (`raw`: the request
    buckets, then the token buckets), the bucket of second `head` newest."""
    req_raw, tok_raw = raw[: REQ.size], raw[REQ.size :]
    retry = 0.0
    if refused_by == "rpm" and rpm is not None:
        retry = until(now, head, REQ.unpack(req_raw), used_r - rpm + 1)
    elif refused_by == "tpm" and tpm is not None:
        retry = until(now, head, TOK.unpack(tok_raw), used_t + tokens - tpm)
    oldest_r = oldest_second(head, req_raw, 4) if used_r > 0 else -1
    oldest_t = oldest_second(head, tok_raw, 8) if used_t > 0 else -1
    return Window(
        admitted=False,
        refused_by=refused_by,
        requests=used_r,
        tokens=used_t,
        reset_requests_s=max(oldest_r + WINDOW_S - now, 0.0) if oldest_r >= 0 else 0.0,
        reset_tokens_s=max(oldest_t + WINDOW_S - now, 0.0) if oldest_t >= 0 else 0.0,
        retry_after_s=retry,
        second=head,
    )


def oldest_second(head: int, raw: bytes, width: int) -> int:
    """The second of the oldest non-empty bucket (-1: all empty), by a byte scan."""
    oldest = (head + 1) % WINDOW_S  # the bucket of second head-59
    rotated = raw[oldest * width :] + raw[: oldest * width]
    skipped = (len(rotated) - len(rotated.lstrip(b"\0"))) // width
    if skipped >= WINDOW_S:
        return -1
    return head - WINDOW_S + 1 + skipped


def until(now: float, head: int, buckets: tuple[int, ...], free: int) -> float:
    """Seconds until at least `free` of what the buckets hold has left the window."""
    if free <= 0:
        return 0.0
    freed = 0
    for second in range(head - WINDOW_S + 1, head + 1):
        freed += buckets[second % WINDOW_S]
        if freed >= free:
            return max(second + WINDOW_S - now, 0.0)
    return float(WINDOW_S)

"""The refusals of the key's own limits, in OpenAI's shape (`GatewayError`):
an expired key (401), over rpm/tpm (429 `rate_limit_exceeded`) and a spent
budget (429 `insufficient_quota`, as OpenAI answers for an exhausted account).

Raised by `proxy.auth.bearer` and `proxy.auth.admission`; the middleware
(`proxy.http.middleware`) turns them into responses like any other.
"""

from __future__ import annotations

import math

from proxy.http.errors import GatewayError
from proxy.observability import metrics


def expired_key() -> GatewayError:
    return GatewayError(401, "This API key has expired.", code="expired_api_key")


def rate_limited(message: str, retry_after_s: float, headers: dict[str, str]) -> GatewayError:
    metrics.limit_rejected("rate")
    """Over the key's rpm or tpm, with `Retry-After` (whole seconds, rounded up)
    and `retry-after-ms`, which the official SDKs read before they retry."""
    wait = max(retry_after_s, 0.001)
    return GatewayError(
        429,
        message,
        type="requests",
        code="rate_limit_exceeded",
        headers={
            **headers,
            "Retry-After": str(max(1, math.ceil(wait))),
            "retry-after-ms": str(math.ceil(wait * 1000)),
        },
    )


def quota_exhausted(retry_after_s: float, headers: dict[str, str]) -> GatewayError:
    metrics.limit_rejected("budget")
    """The key's budget for its period is spent; `Retry-After` is the time until
    the period ends (a day for a `total` budget, which only an admin can lift)."""
    return GatewayError(
        429,
        "You exceeded your current quota: this API key's budget is spent.",
        type="insufficient_quota",
        code="insufficient_quota",
        headers={**headers, "Retry-After": str(max(1, math.ceil(retry_after_s)))},
    )

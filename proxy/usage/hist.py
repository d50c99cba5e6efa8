"""Latency and TTFT histograms as they are stored in a usage rollup row.

Where it sits: under `proxy.usage.rollups` (which writes them, merging with
`add` inside SQLite's upsert) and `proxy.usage.rollup_query` (which reads and
merges them). Buckets are fixed and log-scale: 8 per doubling from 0.1 ms,
so each spans 2^(1/8), about 9%; bucket 0 takes everything below 0.1 ms.
Merging two histograms is adding their counts, so p50/p95 of any range of
hours, days or weeks come from the rollups alone.

A histogram is one BLOB: four header bytes (the p50 bucket, the p95 bucket,
the number n of non-empty buckets, the width w of a count: 4 or 8), the n
bucket numbers (one byte each, ascending), then their n counts as
little-endian unsigned integers of w bytes (8 only once a count passes 2^32).
The header makes a single row's p50/p95 a byte read (what `usage --by week`
needs for every row); a range's quantile merges the counts. An empty
histogram is NULL. Its codec (`encode`, `add`, `add_into`, `add_to_list`) is
`_fastpath.hist`, compiled where it was built; re-exported here.
"""

from __future__ import annotations

import bisect
import math
from itertools import accumulate

from _fastpath.hist import add as add
from _fastpath.hist import add_into as add_into
from _fastpath.hist import add_to_list as add_to_list
from _fastpath.hist import encode as encode

HIST_BASE_MS = 0.1
BUCKETS_PER_DOUBLING = 8
HIST_BUCKETS = 8 * 27  # up to 0.1 ms x 2^27: about 3.7 hours (fits a byte)

# lower bound of each bucket; bucket 0 takes everything below bucket 1
BOUNDS: tuple[float, ...] = (-math.inf,) + tuple(
    HIST_BASE_MS * 2 ** ((i - 1) / BUCKETS_PER_DOUBLING) for i in range(1, HIST_BUCKETS)
)

Counts = dict[int, int]


def bucket_of(value_ms: float) -> int:
    """The bucket `value_ms` is counted in."""
    return bisect.bisect_right(BOUNDS, value_ms) - 1


def bucket_value(bucket: int) -> float:
    """A bucket's representative value: the geometric middle of its bounds, so
    the value shown is within 2^(1/16) (about 4.4%) of every value in it."""
    if bucket <= 0:
        return 0.0
    return HIST_BASE_MS * 2 ** ((bucket - 0.5) / BUCKETS_PER_DOUBLING)


SHOWN: tuple[float, ...] = tuple(round(bucket_value(b), 3) for b in range(HIST_BUCKETS))


def quantile_bucket(counts: Counts, q: float) -> int | None:
    """The bucket holding the nearest-rank q-quantile of `counts` (None: empty)."""
    total = sum(counts.values())
    if total <= 0:
        return None
    rank = max(1, math.ceil(q * total))
    seen = 0
    for bucket in sorted(counts):
        seen += counts[bucket]
        if seen >= rank:
            return bucket
    return max(counts)


def quantile(counts: Counts, q: float) -> float | None:
    """The q-quantile of `counts` as shown: its bucket's value, in ms."""
    bucket = quantile_bucket(counts, q)
    return None if bucket is None else SHOWN[bucket]


def list_quantile(counts: list[int], q: float) -> float | None:
    """`quantile` of counts kept as a list indexed by bucket."""
    cumulative = list(accumulate(counts))
    total = cumulative[-1]
    if total <= 0:
        return None
    return SHOWN[bisect.bisect_left(cumulative, max(1, math.ceil(q * total)))]


def decode(blob: bytes | None) -> Counts:
    counts: Counts = {}
    add_into(counts, blob)
    return counts


def p50(blob: bytes | None) -> float | None:
    """One stored histogram's p50 in ms, from its header."""
    return SHOWN[blob[0]] if blob else None


def p95(blob: bytes | None) -> float | None:
    return SHOWN[blob[1]] if blob else None

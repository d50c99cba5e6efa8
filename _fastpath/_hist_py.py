"""The usage histograms' byte codec, in Python: the pure twin of
`_fastpath._hist_c` (same functions, same bytes out).

The format is `proxy.usage.hist`'s (where the buckets and quantiles live): one
BLOB of four header bytes (the p50 bucket, the p95 bucket, the number n of
non-empty buckets, the width w of a count: 4 or 8), the n bucket numbers (a
byte each, ascending), then their n counts as little-endian unsigned
integers of w bytes (8 only once a count passes 2^32). An empty histogram is
None (NULL). `add` merges two stored ones (SQLite's upsert calls it for every
rollup row a batch touches), `add_into` / `add_to_list` add one into counts
kept as a dict or as a list indexed by bucket (the readers), `encode` packs a
dict of counts.
"""

from __future__ import annotations

import bisect
import math
import sys
from array import array
from itertools import accumulate

_BIG_ENDIAN = sys.byteorder == "big"


def _pack(buckets: bytearray | bytes, counts: array[int]) -> bytes:
    """Header (p50 bucket, p95 bucket, n, count width) + buckets + counts."""
    cumulative = list(accumulate(counts))
    total = cumulative[-1]
    p50 = buckets[bisect.bisect_left(cumulative, (total + 1) // 2)]
    p95 = buckets[bisect.bisect_left(cumulative, max(1, math.ceil(0.95 * total)))]
    if counts.typecode == "Q" and total < 2**32:
        counts = array("I", counts)
    if _BIG_ENDIAN:
        counts = array(counts.typecode, counts)
        counts.byteswap()
    return bytes((p50, p95, len(buckets), counts.itemsize)) + buckets + counts.tobytes()


def _unpack(blob: bytes) -> tuple[bytearray, array[int]]:
    n, width = blob[2], blob[3]
    counts = array("I" if width == 4 else "Q")
    counts.frombytes(blob[4 + n : 4 + n + width * n])
    if _BIG_ENDIAN:
        counts.byteswap()
    return bytearray(blob[4 : 4 + n]), counts


def encode(counts: dict[int, int]) -> bytes | None:
    """Counts per bucket (0 to 255; zeros left out) as a stored histogram."""
    kept = sorted(b for b, n in counts.items() if n)
    if not kept:
        return None
    return _pack(bytearray(kept), array("Q", [counts[b] for b in kept]))


def add_into(counts: dict[int, int], blob: bytes | None, sign: int = 1) -> None:
    """Add (sign 1) or take away (sign -1) a stored histogram's counts."""
    if not blob:
        return
    buckets, values = _unpack(blob)
    get = counts.get
    for bucket, count in zip(buckets, values, strict=True):
        counts[bucket] = get(bucket, 0) + sign * count


def add_to_list(counts: list[int], blob: bytes | None, sign: int = 1) -> None:
    """`add_into` for counts kept as a list indexed by bucket (what a reader
    merging many rows uses: a list index is cheaper than a dict's)."""
    if not blob:
        return
    buckets, values = _unpack(blob)
    if sign == 1:
        for bucket, count in zip(buckets, values, strict=True):
            counts[bucket] += count
    else:
        for bucket, count in zip(buckets, values, strict=True):
            counts[bucket] -= count


def add(old: bytes | None, new: bytes | None) -> bytes | None:
    """Two stored histograms merged: the `hist_add` SQL function of the upsert,
    so made for a long `old` and a short `new` (one batch's requests)."""
    if not old:
        return new
    if not new:
        return old
    buckets, counts = _unpack(old)
    if counts.typecode == "I" and new[3] == 8:
        counts = array("Q", counts)
    for bucket, count in zip(*_unpack(new), strict=True):
        i = buckets.find(bucket)
        try:
            if i >= 0:
                counts[i] += count
            else:
                i = bisect.bisect_left(buckets, bucket)
                buckets.insert(i, bucket)
                counts.insert(i, count)
        except OverflowError:  # past 2^32: 8-byte counts from now on
            counts = array("Q", counts)
            if len(counts) == len(buckets):
                counts[i] += count
            else:
                counts.insert(i, count)
    return _pack(buckets, counts)

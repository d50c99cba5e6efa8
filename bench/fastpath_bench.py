"""Micro-benchmark of `_fastpath.SseRewriter`: compiled twin against the pure one.

Feeds a recorded 60-chunk OpenAI chat stream (`tests/data/stream_60.sse`: a
role chunk, 60 content chunks with `"usage":null`, a finish chunk, a usage
chunk with `"choices":[]`, `data: [DONE]`; 64 events) through a fresh
rewriter per stream, the way `proxy.providers.openai.replies` does, and prints events per
second for each implementation and their ratio. Two cuttings of the stream:

* `random`: cut at seeded random places into pieces of 1..512 bytes (events
  split mid-way, several events per piece);
* `per-event`: one piece per event, the usual shape of upstream reads.

Figures only; nothing here asserts a speed.

    python bench/fastpath_bench.py [--streams N] [--rounds R] [--seed S]
"""

from __future__ import annotations

import argparse
import gc
import os
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STREAM_FILE = ROOT / "tests" / "data" / "stream_60.sse"


def load_impls() -> dict[str, Callable[[str, bool], object]]:
    """Both twins; the compiled one may be missing (then it is reported, not benched)."""
    try:  # prefer the installed package; fall back to the source tree
        import _fastpath  # noqa: F401 - only whether it imports matters here
    except ImportError:
        sys.path.insert(0, str(ROOT))
    from _fastpath import _sse_py

    impls: dict[str, Callable[[str, bool], object]] = {"py": _sse_py.SseRewriter}
    try:
        from _fastpath import _sse_c
    except ImportError as exc:
        print(f"compiled twin not importable ({exc}); benchmarking the pure one only")
    else:
        impls["c"] = _sse_c.SseRewriter
    return impls


def cut_random(stream: bytes, rng: random.Random, largest: int = 512) -> list[bytes]:
    pieces, i = [], 0
    while i < len(stream):
        n = rng.randint(1, largest)
        pieces.append(stream[i : i + n])
        i += n
    return pieces


def cut_per_event(stream: bytes) -> list[bytes]:
    return [part + b"\n\n" for part in stream.split(b"\n\n") if part]


def run_once(make: Callable[[str, bool], object], pieces: list[bytes], streams: int) -> float:
    """Seconds to relay `streams` streams of `pieces`."""
    t0 = time.perf_counter()
    for _ in range(streams):
        r = make("prometheus-lite", False)
        feed = r.feed  # type: ignore[attr-defined]
        for piece in pieces:
            feed(piece)
        r.finish()  # type: ignore[attr-defined]
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--streams", type=int, default=2000, help="streams per timed round")
    ap.add_argument("--rounds", type=int, default=5, help="timed rounds; the best one counts")
    ap.add_argument("--seed", type=int, default=1234)
    args = ap.parse_args()

    stream = STREAM_FILE.read_bytes()
    impls = load_impls()
    check = impls["py"]("prometheus-lite", False)
    check.feed(stream)  # type: ignore[attr-defined]
    events = check.events  # type: ignore[attr-defined]
    rng = random.Random(args.seed)
    cuttings = {
        "random": cut_random(stream, rng),
        "per-event": cut_per_event(stream),
    }
    print(
        f"stream: {STREAM_FILE.relative_to(ROOT)}, {len(stream)} bytes, {events} events; "
        f"{args.streams} streams x {args.rounds} rounds (best), "
        f"PROMETHEUS_NO_EXTENSIONS={os.environ.get('PROMETHEUS_NO_EXTENSIONS', '')!r}"
    )
    for name, pieces in cuttings.items():
        rates: dict[str, float] = {}
        for impl, make in impls.items():
            run_once(make, pieces, max(1, args.streams // 10))  # warm-up
            gc.disable()
            try:
                best = min(run_once(make, pieces, args.streams) for _ in range(args.rounds))
            finally:
                gc.enable()
            rates[impl] = events * args.streams / best
            print(
                f"  {name:<9} ({len(pieces):>3} pieces) {impl:>2}: "
                f"{rates[impl]:>12,.0f} events/s  ({best / args.streams * 1e6:7.1f} us/stream)"
            )
        if "c" in rates:
            print(f"  {name:<9} ratio c/py: {rates['c'] / rates['py']:.1f}x")


if __name__ == "__main__":
    main()

"""bench/loadgen.py's inter-token gaps: what the bench reports as ITL is the time
between content events as the client received them, 0 for events of one read."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

LOADGEN = Path(__file__).resolve().parent.parent / "bench" / "loadgen.py"


def _loadgen():
    spec = importlib.util.spec_from_file_location("bench_loadgen", LOADGEN)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_gaps_between_reads_and_within_one() -> None:
    gaps: list[float] = []
    clock = _loadgen().ContentGaps(gaps)
    clock.arrived(1, 10.000)  # the first content event: no gap yet
    clock.arrived(0, 10.001)  # a read without content changes nothing
    clock.arrived(1, 10.005)
    clock.arrived(3, 10.006)  # three in one read: 1 ms after the last, then 0, 0
    assert [round(g, 6) for g in gaps] == [5.0, 1.0, 0.0, 0.0]


def test_first_read_with_several_events() -> None:
    gaps: list[float] = []
    clock = _loadgen().ContentGaps(gaps)
    clock.arrived(2, 1.0)
    clock.arrived(1, 1.002)
    assert [round(g, 6) for g in gaps] == [0.0, 2.0]

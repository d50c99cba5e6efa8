"""The usage histograms' codec: the compiled twin (`_fastpath._hist_c`) makes
the same bytes and the same counts as the pure one (`_fastpath._hist_py`).

Both are fed random histograms (hypothesis): a few requests or billions per
bucket, counts on either side of 2^32 (where a stored count turns from 4
bytes to 8), merges of a long stored histogram with one batch's short one,
and counts added into and taken out of dicts and lists as the readers do.
Whichever twin is in use, `proxy.usage.hist` re-exports it.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import _fastpath.hist
from _fastpath import _hist_py
from proxy.usage import hist

NO_EXT = bool(os.environ.get("PROMETHEUS_NO_EXTENSIONS"))


def _compiled() -> ModuleType:
    try:
        return importlib.import_module("_fastpath._hist_c")
    except ImportError as exc:
        if NO_EXT:
            pytest.skip("PROMETHEUS_NO_EXTENSIONS is set: the compiled twin is not required")
        pytest.fail(f"_fastpath._hist_c is not importable (was the extension built?): {exc}")


count = st.one_of(
    st.integers(1, 50),
    st.integers(1, 2**31),
    st.integers(2**32 - 3, 2**32 + 3),
    st.integers(2**32, 2**40),
)
counts = st.dictionaries(st.integers(0, hist.HIST_BUCKETS - 1), count, max_size=40)
small = st.dictionaries(st.integers(0, hist.HIST_BUCKETS - 1), st.integers(1, 30), max_size=6)


def test_the_compiled_twin_is_in_use_unless_switched_off() -> None:
    if NO_EXT:
        assert _fastpath.hist.IMPLEMENTATION == "py"
    else:
        assert _fastpath.hist.IMPLEMENTATION == "c"
        assert hist.add is _compiled().add
    assert hist.encode is _fastpath.hist.encode


@settings(max_examples=400, deadline=None)
@given(counts, counts, small)
def test_the_twins_encode_and_merge_to_the_same_bytes(
    a: dict[int, int], b: dict[int, int], batch: dict[int, int]
) -> None:
    c = _compiled()
    blob_a, blob_b, blob_s = _hist_py.encode(a), _hist_py.encode(b), _hist_py.encode(batch)
    assert c.encode(a) == blob_a
    assert c.encode(batch) == blob_s
    for old, new in ((blob_a, blob_b), (blob_a, blob_s), (blob_s, blob_a), (None, blob_s)):
        merged = _hist_py.add(old, new)
        assert c.add(old, new) == merged
        if merged is not None:  # and it holds the counts of both
            total: dict[int, int] = {}
            for part in (old, new):
                _hist_py.add_into(total, part)
            assert hist.decode(merged) == total
    # a stored histogram grown batch by batch, as the upsert grows it
    grown_py = grown_c = None
    for piece in (blob_s, blob_a, blob_s, blob_b):
        grown_py, grown_c = _hist_py.add(grown_py, piece), c.add(grown_c, piece)
        assert grown_c == grown_py


@settings(max_examples=300, deadline=None)
@given(counts, counts)
def test_the_twins_add_and_take_away_the_same_counts(a: dict[int, int], b: dict[int, int]) -> None:
    c = _compiled()
    blob_a, blob_b = _hist_py.encode(a), _hist_py.encode(b)
    as_dict_py: dict[int, int] = {3: 5}
    as_dict_c: dict[int, int] = {3: 5}
    as_list_py, as_list_c = [0] * hist.HIST_BUCKETS, [0] * hist.HIST_BUCKETS
    for blob, sign in ((blob_a, 1), (blob_b, -1), (blob_a, -1), (None, 1)):
        _hist_py.add_into(as_dict_py, blob, sign)
        c.add_into(as_dict_c, blob, sign)
        _hist_py.add_to_list(as_list_py, blob, sign)
        c.add_to_list(as_list_c, blob, sign)
        assert as_dict_c == as_dict_py
        assert as_list_c == as_list_py
    assert as_dict_py[3] == 5 - b.get(3, 0)  # went negative: Python ints, not C ones


def test_a_merge_past_two_to_the_32_turns_to_eight_byte_counts() -> None:
    c = _compiled()
    old, new = _hist_py.encode({7: 2**32 - 1}), _hist_py.encode({7: 1, 9: 4})
    assert old is not None and old[3] == 4
    for twin in (_hist_py, c):
        merged = twin.add(old, new)
        assert merged is not None and merged[3] == 8
        assert hist.decode(merged) == {7: 2**32, 9: 4}
        assert merged[0] == merged[1] == 7  # p50 and p95 in the header


def test_a_bad_blob_is_refused_not_read_past_its_end() -> None:
    c = _compiled()
    good = _hist_py.encode({1: 1, 2: 2})
    assert good is not None
    with pytest.raises(ValueError):
        c.add(good, good[:-1])
    with pytest.raises(ValueError):
        c.add_into({}, b"\x00\x00\x05")

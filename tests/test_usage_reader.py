"""The usage report's row printer (`_fastpath.usage`): the compiled reader
prints, byte for byte, what the pure twin and the report's dicts print.

`prometheus-gateway usage` reads a year of every key's weeks (~370k rows)
through `_fastpath._usage_c` (SQLite's C API; its floats laid out as orjson
lays them out, its table columns as Python's `format` pads them). Here rollup
rows with awkward values are written straight into a fresh database: names
with quotes, control characters and non-ASCII, a key with no name, a key id
over 256 bytes, a non-ASCII alias, empty histograms, and costs from random
bit patterns, ties at the table's 6 places, zero, negative zero, tiny and
huge values. Both readers, and `query_usage` dumped by orjson, must agree on
every period, as JSON and as table lines; a period the compiled reader will
not print (a count stored as a REAL) falls back to the pure one.
"""

from __future__ import annotations

import importlib
import os
import random
import sqlite3
import struct
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import orjson
import pytest

from _fastpath import _usage_py
from proxy import storage
from proxy.usage import hist
from proxy.usage.report import plan_report, query_usage
from proxy.usage.report_out import SHOWN_JSON, SHOWN_TEXT, TABLE_HEADER, table_line, write_usage
from proxy.usage.rollups import ALL_KEYS, DAY, HOUR, MONDAY0, WEEK

NO_EXT = bool(os.environ.get("PROMETHEUS_NO_EXTENSIONS"))
WEEK0 = MONDAY0 + 2900 * WEEK  # a Monday in 2025


def _compiled() -> ModuleType:
    """The compiled reader: missing fails under CI (SQLite's headers are there),
    and is skipped elsewhere (the build leaves it out without them)."""
    try:
        return importlib.import_module("_fastpath._usage_c")
    except ImportError as exc:
        if NO_EXT:
            pytest.skip("PROMETHEUS_NO_EXTENSIONS is set: the compiled reader is not required")
        if os.environ.get("CI") == "true":
            pytest.fail(f"_fastpath._usage_c is not importable (was it built?): {exc}")
        pytest.skip(f"_fastpath._usage_c was not built (no SQLite headers?): {exc}")


def _costs(rng: random.Random) -> list[float]:
    fixed = [0.0, -0.0, 1e-5, 9.99e-6, 1.25e-5, 2.5e-7, 5e-324, 0.1, 0.30000000000000004]
    fixed += [1e15, 1e16, 1.5e16, 123456789.123456, 0.0000005, 0.0000015, 2.5e-6, 0.05, 0.15]
    fixed += [1e22, 1.7976931348623157e308, 999999.9999995, 1234567.0000005, 0.000451, 1 / 3]
    fixed += [sum([0.000451] * n) for n in range(1, 40)]  # what adding costs up leaves
    fixed += [n / 1e6 + 5e-7 for n in range(0, 3000, 37)]  # near ties at 6 places
    randoms = [struct.unpack("<d", rng.randbytes(8))[0] for _ in range(300)]
    randoms = [x for x in randoms if x == x and abs(x) != float("inf")]
    scaled = [rng.random() * 10.0 ** rng.randint(-9, 12) for _ in range(600)]
    return fixed + randoms + scaled


def _hist(rng: random.Random) -> bytes | None:
    if rng.random() < 0.2:
        return None  # an empty histogram: null / "-"
    return hist.encode({hist.bucket_of(rng.lognormvariate(5, 2)): rng.randint(1, 9)})


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("reader") / "usage.db"
    rng = random.Random(20261204)
    names = {
        "key_quote": 'team "a" \\ b',
        "key_ctrl": "tab\there\nnew\x01\x1f\x7f",
        "key_uni": "équipe ✓ 🚀",
        "key_" + "x" * 300: "long id",
    }
    # ALL_KEYS ("*"): the every-key rows, from which the report finds the periods
    keys = [*names, "key_nameless", "kéy_ünï", "key_plain", ALL_KEYS]
    models = ["prometheus-lite", "prometheus-core", "modèle-ß", "m"]
    costs = _costs(rng)
    conn = storage.connect(path)
    try:
        for kid, name in names.items():
            conn.execute(
                "INSERT INTO api_keys (id, name, key_hash, key_prefix, created_at)"
                " VALUES (?, ?, ?, 'prom_sk_x', 0)",
                (kid, name, "hash-" + kid),
            )
        rows, i = [], 0
        for grain, start0, span in (
            ("week", WEEK0, WEEK),
            ("day", WEEK0, DAY),
            ("hour", WEEK0, HOUR),
        ):
            for period in range(4):
                for kid in keys:
                    for model in models:
                        cost, audio = costs[i % len(costs)], costs[(i * 7 + 3) % len(costs)]
                        counts = [rng.choice([0, 1, 7, 10**6, 2**62]) for _ in range(6)]
                        rows.append(
                            (grain, start0 + period * span, kid, model, *counts, audio, cost,
                             _hist(rng), _hist(rng))
                        )  # fmt: skip
                        i += 1
        while i < len(costs) * 2:  # every cost at least twice, in extra day rows
            rows.append(
                ("day", WEEK0 + 5 * DAY, "key_plain", f"m{i}", 1, 0, 1, 1, 0, 0,
                 costs[(i * 7 + 3) % len(costs)], costs[i % len(costs)], _hist(rng), None)
            )  # fmt: skip
            i += 1
        rows.append(("day", WEEK0 + 5 * DAY, ALL_KEYS, "*", *[1] * 6, 0.0, 0.0, None, None))
        conn.executemany(
            "INSERT INTO usage_rollup (grain, start, key_id, model, requests, errors,"
            " input_tokens, output_tokens, cached_tokens, reasoning_tokens, audio_seconds,"
            " cost_usd, latency_hist, ttft_hist) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            rows,
        )
        conn.commit()
    finally:
        conn.close()
    return path


def _readers(db: Path, by: str) -> tuple[Any, Any, Any]:
    conn = storage.connect(db)
    plan = plan_report(conn, None, by)
    conn.close()
    names = {k.encode(): orjson.dumps(v) for k, v in plan.names.items()}
    args = (str(db), plan.sql, names, SHOWN_JSON, SHOWN_TEXT)
    return plan, _compiled().PeriodReader(*args), _usage_py.PeriodReader(*args)


@pytest.mark.parametrize("by", ["week", "day", "hour"])
def test_the_compiled_reader_prints_what_the_pure_twin_and_the_report_print(
    db: Path, by: str
) -> None:
    plan, compiled, pure = _readers(db, by)
    conn = storage.connect(db)
    rows = query_usage(conn, None, by)
    conn.close()
    assert plan.periods and len(plan.periods) >= 4
    seen = 0
    for start, label in plan.periods:
        args, tag = (plan.by, start, *plan.args), label.encode()
        mine = [r for r in rows if r["period"] == label]
        seen += len(mine)
        as_json = compiled.json_rows(args, tag)
        assert as_json == pure.json_rows(args, tag)
        assert as_json == orjson.dumps(mine, option=orjson.OPT_INDENT_2)[2:-2]
        lines = compiled.table_rows(args, tag)
        assert lines == pure.table_rows(args, tag)
        assert lines == "".join(map(table_line, mine)).encode()
    assert seen == len(rows) >= 4 * 6 * 4  # the day grain also holds every cost twice
    compiled.close()
    pure.close()


def test_the_command_prints_a_period_the_compiled_reader_refuses(db: Path, tmp_path: Path) -> None:
    _compiled()
    odd = tmp_path / "odd.db"
    with sqlite3.connect(db) as src, sqlite3.connect(odd) as dst:
        src.backup(dst)
    with sqlite3.connect(odd) as conn:  # a count stored as a REAL: the C reader's ReportError
        conn.execute(
            "UPDATE usage_rollup SET requests = 2.5 WHERE grain = 'week' AND start = ?"
            " AND key_id = 'key_plain' AND model = 'm'",
            (WEEK0 + WEEK,),
        )
    conn.close()
    plan, compiled, _pure = _readers(odd, "week")
    start, label = plan.periods[1]
    with pytest.raises(RuntimeError, match="integer"):
        compiled.json_rows((plan.by, start, *plan.args), label.encode())
    conn = storage.connect(odd)
    rows = query_usage(conn, None, "week")
    for as_json in (True, False):
        out = _Sink()
        write_usage(out, conn, str(odd), None, "week", "UTC", as_json)
        if as_json:
            assert out.getvalue() == orjson.dumps(rows, option=orjson.OPT_INDENT_2) + b"\n"
        else:
            assert out.getvalue().count(b"\n") == len(rows) + 1
            assert b"     2.5 " in out.getvalue() or b" 2.5 " in out.getvalue()
    conn.close()


@pytest.mark.parametrize(
    ("by", "key_id"), [("week", None), ("day", "key_quote"), ("hour", "kéy_ünï"), ("day", "nobody")]
)
def test_the_installed_command_uses_the_compiled_reader(
    db: Path, tmp_path: Path, by: str, key_id: str | None
) -> None:
    """Run as a user runs it (not from the source tree, whose `_fastpath` has
    no compiled twin), `usage` prints the report, for every key or one, by
    week, day or hour, as JSON and as the table."""
    if NO_EXT:
        pytest.skip("PROMETHEUS_NO_EXTENSIONS is set: the command uses the pure reader")
    _compiled()
    config = tmp_path / "prometheus.toml"
    config.write_text(f'[storage]\npath = "{db}"\n')
    code = "import _fastpath.usage as u; print(u.IMPLEMENTATION)"
    which = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True
    )
    assert which.stdout.strip() == "c"
    conn = storage.connect(db)
    rows = query_usage(conn, key_id, by)
    conn.close()
    assert (len(rows) > 0) == (key_id != "nobody")
    for as_json in (True, False):
        done = subprocess.run(
            [sys.executable, "-m", "proxy", "usage", "--by", by, "--config", str(config)]
            + (["--key-id", key_id] if key_id else [])
            + (["--json"] if as_json else []),
            cwd=tmp_path,
            capture_output=True,
            timeout=60,
            check=True,
        )
        if as_json:
            assert done.stdout == orjson.dumps(rows, option=orjson.OPT_INDENT_2) + b"\n"
        elif rows:
            assert done.stdout.decode() == TABLE_HEADER.decode() + "".join(map(table_line, rows))
        else:
            assert done.stdout == TABLE_HEADER + b"(no usage yet)\n"


class _Sink:
    def __init__(self) -> None:
        self.parts: list[bytes] = []

    def write(self, data: bytes) -> int:
        self.parts.append(bytes(data))
        return len(data)

    def getvalue(self) -> bytes:
        return b"".join(self.parts)

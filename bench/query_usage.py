"""Time the queries a usage view makes, on a database from gen_usage.py.

    python bench/query_usage.py /tmp/year.db [--runs 7]

Each dashboard query runs `--runs` times on one connection; the median and
the worst are shown. Then the usage report (`proxy.usage.report`, what
`usage`, `/admin/usage` and `/v1/usage` answer) for every key: by week and
by day in UTC, by week in New York (wall and CPU); and `prometheus-gateway
usage --by week`, as JSON and as the table, as a whole process (start-up,
query, output to /dev/null; 7 runs each, wall and the child's CPU, and which
`_fastpath.usage` reader printed the rows).
"""

from __future__ import annotations

import argparse
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from proxy import storage
from proxy.admin.dashboard.data import LOG_COLUMNS, _spend
from proxy.usage import report
from proxy.usage.rollup_query import last_days, usage_series


def timed(fn: Callable[[], Any], runs: int = 7) -> tuple[float, float, Any]:
    spent, out = [], None
    for _ in range(runs):
        t0 = time.perf_counter()
        out = fn()
        spent.append((time.perf_counter() - t0) * 1000)
    return statistics.median(spent), max(spent), out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("db", type=Path)
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    db, runs = args.db, args.runs
    conn = storage.connect(db)
    key = conn.execute("SELECT id FROM api_keys ORDER BY id LIMIT 1").fetchone()[0]
    rows = conn.execute("SELECT count(*) FROM requests").fetchone()[0]
    rollup_rows = conn.execute("SELECT count(*) FROM usage_rollup").fetchone()[0]
    print(f"{db}: {db.stat().st_size / 2**20:.0f} MiB, {rows} requests, {rollup_rows} rollup rows")
    for tz in ("UTC", "America/New_York", "Asia/Tokyo"):
        for who, key_id in (("every key", None), ("one key", key)):
            for by, days in (("day", 30), ("week", 84)):
                window = last_days(days, tz, by)
                med, worst, out = timed(lambda w=window, k=key_id: usage_series(conn, w, k), runs)
                print(
                    f"{who:9} {by:4} {days:2}d {tz:16} median {med:6.1f} ms"
                    f"  worst {worst:6.1f} ms  ({len(out)} rows)"
                )
    for tz in ("UTC", "America/New_York", "Asia/Tokyo"):
        med, worst, out = timed(lambda z=tz: _spend(conn, z), runs)
        print(
            f"keys: spend today and this week {tz:16} median {med:6.1f} ms  worst {worst:6.1f} ms"
            f"  ({len(out)} keys)"
        )
    for who, where, params in (("every key", "1", ()), ("one key", "key_id = ?", (key,))):
        sql = f"SELECT {LOG_COLUMNS} FROM requests WHERE {where} ORDER BY ts DESC LIMIT 100"
        med, worst, out = timed(lambda s=sql, a=params: conn.execute(s, a).fetchall(), runs)
        print(f"request log, 100 newest, {who:9}     median {med:6.1f} ms  worst {worst:6.1f} ms")
    for by, tz in (("week", "UTC"), ("day", "UTC"), ("week", "America/New_York")):
        cpu: list[float] = []

        def report_once(
            b: str = by, z: str = tz, spent_cpu: list[float] = cpu
        ) -> list[dict[str, Any]]:
            c0 = time.process_time()
            rows = report.query_usage(conn, by=b, tz=z)
            spent_cpu.append((time.process_time() - c0) * 1000)
            return rows

        med, worst, out = timed(report_once, 5 if by == "week" and tz == "UTC" else 3)
        print(
            f"usage report, every key, by {by:4} {tz:16} median {med:7.0f} ms"
            f"  worst {worst:7.0f} ms  CPU median {statistics.median(cpu):7.0f} ms"
            f"  ({len(out)} rows)"
        )
        del out
    conn.close()
    with tempfile.TemporaryDirectory() as d:
        config = Path(d) / "bench.toml"
        config.write_text(f'[storage]\npath = "{db.resolve()}"\n')
        # run in the temporary directory: from the repository's root, `-m proxy`
        # would import the source tree's `_fastpath`, which has no compiled twin
        reader = subprocess.run(
            [sys.executable, "-c", "import _fastpath.usage as u; print(u.IMPLEMENTATION)"],
            cwd=d,
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
        for extra in (["--json"], []):
            command = [sys.executable, "-m", "proxy", "usage", "--by", "week", *extra]
            spent, cpu = [], []
            for _ in range(7):
                before = resource.getrusage(resource.RUSAGE_CHILDREN)
                t0 = time.perf_counter()
                subprocess.run(
                    [*command, "--config", str(config)],
                    check=True,
                    cwd=d,
                    stdout=subprocess.DEVNULL,
                )
                spent.append(time.perf_counter() - t0)
                after = resource.getrusage(resource.RUSAGE_CHILDREN)
                cpu.append(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)
            print(
                f"prometheus-gateway usage --by week {' '.join(extra):6} (whole process,"
                f" {reader} reader): median {statistics.median(spent):.2f} s"
                f"  worst {max(spent):.2f} s  CPU median {statistics.median(cpu):.2f} s"
            )


if __name__ == "__main__":
    main()

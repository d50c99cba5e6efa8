"""Time the rollup queries a usage view makes, on a database from gen_usage.py.

    python bench/query_usage.py /tmp/year.db

Each query runs 7 times on one connection; the median and the worst are shown.
Also `usage --by week` as it reads today (`proxy.usage.report`, a scan of
`requests`), once.
"""

from __future__ import annotations

import statistics
import sys
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
    db = Path(sys.argv[1])
    conn = storage.connect(db)
    key = conn.execute("SELECT id FROM api_keys ORDER BY id LIMIT 1").fetchone()[0]
    rows = conn.execute("SELECT count(*) FROM requests").fetchone()[0]
    print(f"{db}: {db.stat().st_size / 2**20:.0f} MiB, {rows} requests")
    for tz in ("UTC", "America/New_York"):
        for who, key_id in (("every key", None), ("one key", key)):
            for by, days in (("day", 30), ("week", 84)):
                window = last_days(days, tz, by)
                med, worst, out = timed(lambda w=window, k=key_id: usage_series(conn, w, k))
                print(
                    f"{who:9} {by:4} {days:2}d {tz:16} median {med:6.1f} ms"
                    f"  worst {worst:6.1f} ms  ({len(out)} rows)"
                )
    for tz in ("UTC", "America/New_York"):
        med, worst, out = timed(lambda z=tz: _spend(conn, z))
        print(
            f"keys: spend today and this week {tz:16} median {med:6.1f} ms  worst {worst:6.1f} ms"
        )
    for who, where, args in (("every key", "1", ()), ("one key", "key_id = ?", (key,))):
        sql = f"SELECT {LOG_COLUMNS} FROM requests WHERE {where} ORDER BY ts DESC LIMIT 100"
        med, worst, out = timed(lambda s=sql, a=args: conn.execute(s, a).fetchall())
        print(f"request log, 100 newest, {who:9}     median {med:6.1f} ms  worst {worst:6.1f} ms")
    med, _, out = timed(lambda: report.query_usage(conn, by="week"), runs=1)
    print(f"usage --by week (report.query_usage, raw scan): {med:.0f} ms ({len(out)} rows)")
    conn.close()


if __name__ == "__main__":
    main()

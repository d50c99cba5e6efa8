"""A generated usage database: a year of usage for 1,000 keys over the eight
aliases, written the way the gateway writes it (`proxy.usage.rollups.write_rows`:
multi-row INSERTs into `requests` and, in the same transaction, one upsert per
rollup group of the batch, as the usage writer does live; here one batch per
generated day).

    python bench/gen_usage.py --out /tmp/year.db [--keys 1000] [--days 365] [--per-day 4]

Each key makes about `--per-day` requests a day (Poisson-ish: 0 to twice as
many), on aliases drawn with a skew (lite and spark most), at hours drawn
around the working day; latencies and TTFT log-normal, 2% errors.
"""

from __future__ import annotations

import argparse
import math
import random
import time
from pathlib import Path

from proxy import storage
from proxy.usage.rollups import write_rows

ALIASES = {  # alias: (weight, input $/1M, output $/1M, kind)
    "prometheus-lite": (30, 0.10, 0.40, "chat"),
    "prometheus-spark": (20, 0.15, 0.60, "chat"),
    "prometheus-core": (15, 1.10, 4.40, "chat"),
    "prometheus-pulse": (10, 0.15, 0.60, "chat"),
    "prometheus-surge": (8, 0.40, 1.60, "chat"),
    "prometheus-vision": (7, 0.40, 1.60, "chat"),
    "prometheus-atlas": (7, 0.02, 0.0, "embeddings"),
    "prometheus-echo": (3, 0.0, 0.0, "transcription"),
}
NAMES = list(ALIASES)
WEIGHTS = [ALIASES[a][0] for a in NAMES]


def one(rng: random.Random, seq: int, key: str, ts: float) -> tuple[object, ...]:
    alias = rng.choices(NAMES, WEIGHTS)[0]
    _, pin, pout, kind = ALIASES[alias]
    status = 200 if rng.random() > 0.02 else rng.choice([400, 429, 502, 504])
    tin = int(rng.lognormvariate(6, 1)) if kind != "transcription" else 0
    tout = int(rng.lognormvariate(5, 1)) if kind == "chat" else 0
    audio = round(rng.uniform(2, 300), 3) if kind == "transcription" else 0.0
    cost = (tin * pin + tout * pout) / 1e6 + audio * 0.0001
    latency = rng.lognormvariate(math.log(400 if kind == "chat" else 80), 0.6)
    stream = kind == "chat" and rng.random() < 0.6
    ttft = latency * rng.uniform(0.1, 0.4) if stream else None
    return (
        f"req_gen_{seq:012d}", ts, key, alias, f"sim:sim-{alias}", kind, status, int(stream),
        tin, tout, audio, cost, latency, ttft, "upstream", None,
        "file" if audio else None, 0, 0,
    )  # fmt: skip


def generate(out: Path, keys: int, days: int, per_day: float, seed: int = 7) -> int:
    rng = random.Random(seed)
    conn = storage.connect(out)
    now = time.time()
    start = (int(now) // 86400 - days + 1) * 86400
    conn.executemany(
        "INSERT OR IGNORE INTO api_keys (id, name, key_hash, key_prefix, created_at, rpm, tpm,"
        " budget_usd) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        [
            (f"key_gen{k:05d}", f"team-{k}", f"hash{k}", "prom_sk_gen", start, 600, 200000, 50.0)
            for k in range(keys)
        ],
    )
    conn.commit()
    seq = 0
    for day in range(days):
        batch = []
        for k in range(keys):
            for _ in range(rng.randint(0, int(2 * per_day))):
                ts = start + day * 86400 + min(86399.0, abs(rng.gauss(14, 4)) * 3600)
                if ts < now:
                    batch.append(one(rng, seq, f"key_gen{k:05d}", ts))
                    seq += 1
        batch.sort(key=lambda r: r[1])  # written in time order, as the gateway does
        with conn:
            write_rows(conn, batch)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    return seq


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--keys", type=int, default=1000)
    parser.add_argument("--days", type=int, default=365)
    parser.add_argument("--per-day", type=float, default=4.0)
    args = parser.parse_args()
    t0 = time.perf_counter()
    rows = generate(args.out, args.keys, args.days, args.per_day)
    size = args.out.stat().st_size / 2**20
    print(f"{rows} requests in {time.perf_counter() - t0:.0f} s; {args.out}: {size:.0f} MiB")


if __name__ == "__main__":
    main()

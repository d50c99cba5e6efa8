"""Per-key budgets: the spend that counts, and where it starts.

The spend that counts is what usage recorded: the meter
(`proxy.metering.meter`) settles each request's admission with the record's
`cost_usd` (streams, cancelled streams and audio included), which adds it to
the key's spend in the machine's shared table (`proxy.auth.limits`). When the
first worker of a gateway starts, that spend is seeded from SQLite's
`requests` table (in total, this UTC month, today), so a restart forgets
nothing; the journal replay at start has put every earlier record there.

A request is refused (`insufficient_quota`) once the key's spend in its period,
plus what this worker's own requests in flight are expected to cost, reaches
`budget_usd`. In-flight estimates are per worker, so a request may take the
spend past the cap by at most one request's cost per worker. With
`[cluster] redis_url` the same check runs on the spend of every machine in
Redis (`proxy.auth.redis_limits`), where each request's estimated cost is
reserved until it settles; each machine seeds Redis once with what its own
table knows.
"""

from __future__ import annotations

from pathlib import Path

from proxy import storage
from proxy.auth.periods import period_start

SEED_SQL = (
    "SELECT key_id, SUM(cost_usd), SUM(CASE WHEN ts >= ? THEN cost_usd ELSE 0 END),"
    " SUM(CASE WHEN ts >= ? THEN cost_usd ELSE 0 END) FROM requests GROUP BY key_id"
)


def recorded_spend(db_path: Path, now: float) -> dict[str, tuple[float, float, float]]:
    """Each key's recorded spend: (in total, this UTC month, today)."""
    conn = storage.connect(db_path)
    try:
        rows = conn.execute(
            SEED_SQL, (period_start("monthly", now), period_start("daily", now))
        ).fetchall()
    finally:
        conn.close()
    return {kid: (total or 0.0, month or 0.0, day or 0.0) for kid, total, month, day in rows}


def over_budget(budget: float | None, spent: float, in_flight: float) -> bool:
    """Whether a new request must be refused: the cap reached by what was spent
    and what this worker's requests in flight are expected to cost."""
    return budget is not None and spent + in_flight >= budget

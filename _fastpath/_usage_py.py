"""The usage report's rows, read and printed in Python: the pure twin of
`_fastpath._usage_c.PeriodReader` (same constructor, same bytes out), used
where the compiled one was not built or cannot read a period.

A `PeriodReader` holds one read-only connection and one statement selecting
a period's rollup rows (`proxy.usage.rollup_query.ROW_COLUMNS`: key_id,
model, six counts, audio_seconds, cost_usd, quantiles); `json_rows` prints
them as `orjson.dumps(rows, option=OPT_INDENT_2)` does, without its
brackets, and `table_rows` as lines of the `usage` table.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import orjson


class ReportError(RuntimeError):
    """The database could not be read, or held a value of an unexpected type."""


class PeriodReader:
    """`names`: key id (UTF-8) -> its name as JSON; `shown_json` and
    `shown_text`: a quantile bucket -> its value as JSON and as the table's
    8-wide column (the last one, for an empty histogram, `null` and `-`)."""

    def __init__(
        self,
        db_path: str,
        sql: str,
        names: dict[bytes, bytes],
        shown_json: list[bytes],
        shown_text: list[bytes],
    ) -> None:
        self._conn = sqlite3.connect(Path(db_path).resolve().as_uri() + "?mode=ro", uri=True)
        self._sql = sql
        self._names = {k.decode(): orjson.loads(v) for k, v in names.items()}
        self._json = [orjson.loads(v) for v in shown_json]
        self._text = [v.decode() for v in shown_text]

    def close(self) -> None:
        self._conn.close()

    def _rows(self, args: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        return self._conn.execute(self._sql, args).fetchall()

    def json_rows(self, args: tuple[Any, ...], label: bytes) -> bytes:
        rows = row_dicts(
            self._conn.execute(self._sql, args), label.decode(), self._names, self._json
        )
        return orjson.dumps(rows, option=orjson.OPT_INDENT_2)[2:-2] if rows else b""

    def table_rows(self, args: tuple[Any, ...], label: bytes) -> bytes:
        period = label.decode()
        text = self._text
        return "".join(
            [
                f"{period:<11} {kid:<21} {model:<18} {requests:>6} {errors:>5} {tin:>9} "
                f"{tout:>9} {audio:>8.1f} {cost:>11.6f} {text[q[0]]} {text[q[2]]}\n"
                for kid, model, requests, errors, tin, tout, _c, _r, audio, cost, q in (
                    self._rows(args)
                )
            ]
        ).encode()


def row_dicts(
    rows: Iterable[tuple[Any, ...]],
    period: str,
    names: Mapping[str, str | None],
    shown: Sequence[float | None],
) -> list[dict[str, Any]]:
    """The report's rows of one period: `rows` of `ROW_COLUMNS`, each key's name
    from `names`, each quantile bucket's value from `shown` (also what
    `proxy.usage.report` returns, so that both print the same)."""
    return [
        {
            "key_id": kid,
            "key_name": names.get(kid),
            "model": model,
            "period": period,
            "requests": requests,
            "errors": errors,
            "input_tokens": tin,
            "output_tokens": tout,
            "cached_tokens": cached,
            "reasoning_tokens": reasoning,
            "audio_seconds": audio,
            "cost_usd": cost,
            "latency_ms_p50": shown[q[0]],
            "latency_ms_p95": shown[q[1]],
            "ttft_ms_p50": shown[q[2]],
        }
        for kid, model, requests, errors, tin, tout, cached, reasoning, audio, cost, q in rows
    ]

"""What `prometheus-gateway usage` prints: the report's rows as JSON (`--json`,
byte for byte `orjson.dumps(rows, option=OPT_INDENT_2)`) or as a table,
written a period at a time so that a year of every key's weeks (~370k rows,
~150 MB of JSON) is never all in memory.

Where each row is one stored rollup row (`proxy.usage.report.plan_report`:
UTC, or by hour), the rows are read and printed by `_fastpath.usage`
(SQLite's C API, no Python object per row); a period it cannot print, and
the periods assembled in another timezone, are printed from the report's
dicts (`proxy.usage.report.usage_chunks`).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Iterator
from typing import Any, BinaryIO

import orjson

from proxy.usage import hist
from proxy.usage.report import ReportPlan, no_gc, plan_chunks, plan_report

TABLE_HEADER = (
    f"{'period':<11} {'key_id':<21} {'model':<18} {'reqs':>6} {'errs':>5} "
    f"{'in_tok':>9} {'out_tok':>9} {'audio_s':>8} {'cost_usd':>11} {'p50_ms':>8} "
    f"{'ttft_p50':>8}\n"
).encode()
NO_USAGE = b"(no usage yet)\n"
# a quantile bucket as JSON and as the table's column; the last: an empty histogram
SHOWN_JSON = [orjson.dumps(v) for v in hist.SHOWN] + [b"null"]
SHOWN_TEXT = [f"{v:>8.1f}".encode() for v in hist.SHOWN] + [f"{'-':>8}".encode()]


def write_usage(
    out: BinaryIO,
    conn: sqlite3.Connection,
    db_path: str,
    key_id: str | None,
    by: str,
    tz: str,
    as_json: bool,
) -> None:
    """The report of `key_id` (None: every key) by `by` in `tz`, to `out`."""
    with no_gc():
        plan = plan_report(conn, key_id, by, tz=tz)
        reader = None if plan.periods is None else _open_reader(plan, db_path)
        if reader is None:  # assembled periods, or a file only `conn` can read
            pieces = _dict_pieces(plan_chunks(conn, plan), as_json)
        else:
            pieces = _stored_pieces(plan, db_path, reader, as_json)
        if as_json:
            _write_json(out, pieces)
        else:
            _write_table(out, pieces)


def _reader_args(plan: ReportPlan, db_path: str) -> tuple[Any, ...]:
    names = {k.encode(): orjson.dumps(v) for k, v in plan.names.items()}
    return (db_path, plan.sql, names, SHOWN_JSON, SHOWN_TEXT)


def _open_reader(plan: ReportPlan, db_path: str) -> Any:
    """`_fastpath.usage`'s reader on its own read-only connection, or None
    where it cannot open one."""
    from _fastpath.usage import PeriodReader, ReportError

    try:
        return PeriodReader(*_reader_args(plan, db_path))
    except (ReportError, sqlite3.Error):
        return None


def _stored_pieces(plan: ReportPlan, db_path: str, reader: Any, as_json: bool) -> Iterator[bytes]:
    from _fastpath.usage import PurePeriodReader, ReportError

    fallback = None
    try:
        for start, label in plan.periods or ():
            args, tag = (plan.by, start, *plan.args), label.encode()
            try:
                yield reader.json_rows(args, tag) if as_json else reader.table_rows(args, tag)
            except ReportError:  # a value the compiled reader will not print
                fallback = fallback or PurePeriodReader(*_reader_args(plan, db_path))
                yield fallback.json_rows(args, tag) if as_json else fallback.table_rows(args, tag)
    finally:
        for r in (reader, fallback):
            if r is not None:
                r.close()


def write_rows(out: BinaryIO, rows: list[dict[str, Any]], as_json: bool) -> None:
    """Rows already in hand (the central ledger's), printed as `write_usage` prints."""
    pieces = _dict_pieces([rows], as_json)
    if as_json:
        _write_json(out, pieces)
    else:
        _write_table(out, pieces)


def _dict_pieces(chunks: Iterable[list[dict[str, Any]]], as_json: bool) -> Iterator[bytes]:
    for chunk in chunks:
        if not chunk:
            continue
        if as_json:  # `[\n  {...},\n  {...}\n]`: the rows without the brackets
            yield orjson.dumps(chunk, option=orjson.OPT_INDENT_2)[2:-2]
        else:
            yield "".join([table_line(r) for r in chunk]).encode()


def _write_json(out: BinaryIO, pieces: Iterable[bytes]) -> None:
    glue = b"[\n"
    for piece in pieces:
        if piece:
            out.write(glue)
            out.write(piece)
            glue = b",\n"
    out.write(b"[]\n" if glue == b"[\n" else b"\n]\n")


def _write_table(out: BinaryIO, pieces: Iterable[bytes]) -> None:
    out.write(TABLE_HEADER)
    empty = True
    for piece in pieces:
        empty = empty and not piece
        out.write(piece)
    if empty:
        out.write(NO_USAGE)


def table_line(r: dict[str, Any]) -> str:
    """One row of the `usage` table."""
    lat = f"{r['latency_ms_p50']:.1f}" if r["latency_ms_p50"] is not None else "-"
    ttft = f"{r['ttft_ms_p50']:.1f}" if r["ttft_ms_p50"] is not None else "-"
    return (
        f"{r['period']:<11} {r['key_id']:<21} {r['model']:<18} {r['requests']:>6} "
        f"{r['errors']:>5} {r['input_tokens']:>9} {r['output_tokens']:>9} "
        f"{r['audio_seconds']:>8.1f} {r['cost_usd']:>11.6f} {lat:>8} {ttft:>8}\n"
    )

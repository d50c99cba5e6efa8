"""A usage record as a row of the `requests` table: its columns and INSERTs,
and which failures are the row's own.

Shared by `proxy.usage.writer` (live batches) and `proxy.usage.replay`. A
failed INSERT is either the row's fault (a value SQLite cannot hold or a
constraint it breaks: that row is set aside, `proxy.usage.rejected`) or the
database's (busy, locked, disk full: everything is retried later).
"""

from __future__ import annotations

import sqlite3
from operator import itemgetter
from typing import Any

COLUMNS = (
    "request_id",
    "ts",
    "key_id",
    "model",
    "deployment",
    "endpoint",
    "status",
    "stream",
    "input_tokens",
    "output_tokens",
    "audio_seconds",
    "cost_usd",
    "latency_ms",
    "ttft_ms",
    "usage_source",
    "error",
    "audio_source",
    "cached_tokens",
    "reasoning_tokens",
)
# Keyed by request id: a row already there is skipped. Only that conflict:
# `INSERT OR IGNORE` would also drop a row that breaks NOT NULL, silently.
ON_CONFLICT = " ON CONFLICT (request_id) DO NOTHING"
# what a record without the column stores (records journaled before it existed)
DEFAULTS: dict[str, Any] = {"cached_tokens": 0, "reasoning_tokens": 0}
INSERT_SQL = (
    f"INSERT INTO requests ({', '.join(COLUMNS)}) "
    f"VALUES ({', '.join('?' for _ in COLUMNS)})" + ON_CONFLICT
)

# A batch goes to SQLite as multi-row INSERTs of up to ROWS_PER_INSERT rows
# (19 columns x 52 rows = 988 stays under SQLite's 999-variable floor). Measured
# (CPU per row, 1,300-row batches): 2.8 us this way, 4.5 us with executemany
# (which also hands the GIL back and forth once per row, each hand-over
# stalling the event loop's thread) and 14.6 us with one json_each()
# statement over the journal lines.
ROWS_PER_INSERT = 52
_ROW_SQL = "(" + ",".join("?" * len(COLUMNS)) + ")"
_insert_sql_cache: dict[int, str] = {}


def insert_sql(rows: int) -> str:
    sql = _insert_sql_cache.get(rows)
    if sql is None:
        sql = _insert_sql_cache[rows] = (
            f"INSERT INTO requests ({', '.join(COLUMNS)}) VALUES "
            + ",".join([_ROW_SQL] * rows)
            + ON_CONFLICT
        )
    return sql


_DEFAULT_AT = tuple((i, DEFAULTS[c]) for i, c in enumerate(COLUMNS) if c in DEFAULTS)
_ALL_COLUMNS = itemgetter(*COLUMNS)
_CACHED_AT, _REASONING_AT = (i for i, _ in _DEFAULT_AT)  # the columns DEFAULTS fills


def row_of(record: dict[str, Any]) -> tuple[Any, ...]:
    try:  # a record the meter wrote has every column: one C call picks them
        row = _ALL_COLUMNS(record)
        if row[_CACHED_AT] is not None and row[_REASONING_AT] is not None:
            return row  # type: ignore[no-any-return]
    except KeyError:  # a journal line older than a column
        pass
    values = [record.get(c) for c in COLUMNS]
    for i, default in _DEFAULT_AT:
        if values[i] is None:
            values[i] = default
    return tuple(values)


def record_of(row: tuple[Any, ...]) -> dict[str, Any]:
    return dict(zip(COLUMNS, row, strict=True))


_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_INTEGERS = frozenset(
    COLUMNS.index(c) for c in ("status", "stream", "input_tokens", "output_tokens")
)
_BINDABLE = (type(None), int, float, str, bytes)
_NUMBERS = frozenset(
    COLUMNS.index(c)
    for c in (
        "ts", "status", "stream", "input_tokens", "output_tokens", "audio_seconds", "cost_usd",
        "latency_ms", "ttft_ms", "cached_tokens", "reasoning_tokens",
    )
)  # fmt: skip


def row_problem(row: tuple[Any, ...]) -> str | None:
    """Which column SQLite cannot take as recorded, and why; None when it can.

    Replay checks each row with it: JSON gives an integer past 64 bits back as
    a float, which SQLite would store, while the live writer could not bind
    it (OverflowError); refusing it here treats it the same both ways. A text
    where a number belongs is refused too: the rollups could not add it up.
    The live writer checks each row with it when a batch failed."""
    for i, value in enumerate(row):
        if not isinstance(value, _BINDABLE):
            return f"{COLUMNS[i]}: a {type(value).__name__} cannot be stored"
        if i in _NUMBERS and isinstance(value, str | bytes):
            return f"{COLUMNS[i]}: {value!r} is not a number"
        in_range = not isinstance(value, int | float) or _INT64_MIN <= value <= _INT64_MAX
        if i in _INTEGERS and not in_range:
            return f"{COLUMNS[i]}: {value!r} does not fit a 64-bit integer"
    return None


def is_transient(exc: BaseException) -> bool:
    """A failure of the database or the machine, not of the rows: retry them all later.

    Anything else is taken as the rows' fault: retrying a row SQLite refuses
    would block every row behind it, while a row set aside is kept on disk."""
    if isinstance(exc, (sqlite3.OperationalError, MemoryError)):
        return True  # busy, locked, disk full, I/O error, cannot open
    if type(exc) is sqlite3.DatabaseError:
        return True  # the file is corrupt or not a database
    text = str(exc).lower()
    if isinstance(exc, sqlite3.ProgrammingError) and "closed" in text:
        return True  # our own connection is closed, not the row
    return isinstance(exc, ValueError) and "connection" in text  # aiosqlite's, closed

"""`prometheus-gateway usage` prints what the usage report holds.

The command writes its rows a period at a time (`proxy.usage.report.usage_chunks`,
`proxy.usage.report_out`), so that a year of every key is never all in
memory; what it prints must still be, byte for byte, the whole report dumped
at once (`--json`: `orjson` with two-space indents, as `keys list --json`), in
every grain, for one key or all, in UTC and in another zone, and `[]` or
`(no usage yet)` when there is nothing.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson
import pytest
from test_rollups import SAMPLE, T0, as_row, write

from proxy import storage
from proxy.usage.report import query_usage

SPREAD = [{**r, "ts": T0 + i * 50_000.0} for i, r in enumerate(SAMPLE)]  # over 3 ISO weeks


def usage(config: Path, *args: str) -> bytes:
    done = subprocess.run(
        [sys.executable, "-m", "proxy", "usage", "--config", str(config), *args],
        capture_output=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("usage_cli")
    conn = storage.connect(home / "usage.db")
    try:
        conn.execute(
            "INSERT INTO api_keys (id, name, key_hash, key_prefix, created_at)"
            " VALUES ('key_a', 'team \"a\"', 'h', 'prom_sk_x', 0)"
        )
        write(conn, [as_row(i, r) for i, r in enumerate(SPREAD)])
    finally:
        conn.close()
    path = home / "prometheus.toml"
    path.write_text(f'[storage]\npath = "{home / "usage.db"}"\n')
    return path


@pytest.mark.parametrize("by", ["hour", "day", "week"])
@pytest.mark.parametrize("tz", ["UTC", "Asia/Tokyo"])
@pytest.mark.parametrize("key_id", [None, "key_a", "key_nobody"])
def test_usage_json_is_the_whole_report_dumped_at_once(
    config: Path, by: str, tz: str, key_id: str | None
) -> None:
    args = ["--json", "--by", by, "--tz", tz, *(["--key-id", key_id] if key_id else [])]
    printed = usage(config, *args)
    conn = storage.connect(config.parent / "usage.db")
    try:
        rows = query_usage(conn, key_id, by, tz=tz)
    finally:
        conn.close()
    assert printed == orjson.dumps(rows, option=orjson.OPT_INDENT_2) + b"\n"
    if key_id == "key_nobody":
        assert printed == b"[]\n"
    else:
        assert len({r["period"] for r in rows}) > 1  # written in more than one piece
        mine = [r for r in SPREAD if key_id in (None, r["key_id"])]
        assert sum(r["requests"] for r in rows) == len(mine)


def test_usage_table_has_a_line_per_row(config: Path) -> None:
    lines = usage(config, "--by", "day").decode().splitlines()
    conn = storage.connect(config.parent / "usage.db")
    try:
        rows = query_usage(conn, None, "day")
    finally:
        conn.close()
    assert lines[0].split()[:3] == ["period", "key_id", "model"]
    assert [line.split()[:4] for line in lines[1:]] == [
        [r["period"], r["key_id"], r["model"], str(r["requests"])] for r in rows
    ]
    assert usage(config, "--key-id", "key_nobody").decode().splitlines()[1:] == ["(no usage yet)"]

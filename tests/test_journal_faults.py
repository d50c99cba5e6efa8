"""The usage journal and its SQLite writer under faults: one bad row never blocks
the others, replay never stops the gateway from starting, a failed rotation or
append loses no record.

Real SQLite files and real journal directories throughout. The faults are the
machine's own: a value SQLite refuses, a database another connection holds
locked, a descriptor table that is full (a lowered RLIMIT_NOFILE, in a
subprocess) and a disk that is full (/dev/full put under the segment's
descriptor).
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiosqlite
import pytest
from gateway_process import GatewayProcess, gateway_env

from proxy import storage
from proxy.usage.replay import replay_journals
from proxy.usage.writer import UsageWriter

OVERFLOW = 2**64  # no SQLite INTEGER holds it (nor does orjson write it)
U64_MAX = 18446744073709551615  # orjson writes it; SQLite still cannot hold it


def record(rid: str, **changes: Any) -> dict[str, Any]:
    """A usage record as the meter makes it."""
    rec = {
        "request_id": rid,
        "ts": time.time(),
        "key_id": "key_test",
        "model": "prometheus-lite",
        "deployment": "openai:up-lite",
        "endpoint": "chat",
        "status": 200,
        "stream": 0,
        "input_tokens": 12,
        "output_tokens": 34,
        "audio_seconds": 0.0,
        "cost_usd": 0.0000148,
        "latency_ms": 5.0,
        "ttft_ms": None,
        "usage_source": "upstream",
        "error": None,
    }
    rec.update(changes)
    return rec


def stored(db_path: Path) -> dict[str, tuple[int, int]]:
    """request id -> (input_tokens, output_tokens) of every row in SQLite."""
    conn = sqlite3.connect(db_path, timeout=10)
    try:
        rows = conn.execute("SELECT request_id, input_tokens, output_tokens FROM requests")
        return {rid: (tin, tout) for rid, tin, tout in rows}
    finally:
        conn.close()


def segment_paths(journal_dir: Path) -> list[Path]:
    """The journal's segments: what replay reads (the rejected files are not)."""
    return sorted(p for p in journal_dir.glob("*.jsonl") if not p.name.startswith("rejected-"))


def rejected(journal_dir: Path) -> list[dict[str, Any]]:
    """Every set-aside entry in the journal directory's rejected-*.jsonl files."""
    entries = []
    for path in sorted(journal_dir.glob("rejected-*.jsonl")):
        entries += [json.loads(line) for line in path.read_text().splitlines() if line]
    return entries


def journaled_ids(journal_dir: Path) -> set[str]:
    ids = set()
    for seg in segment_paths(journal_dir):
        for line in seg.read_bytes().splitlines():
            try:
                ids.add(json.loads(line)["request_id"])
            except (ValueError, KeyError, TypeError):
                continue
    return ids


async def eventually(predicate: Callable[[], Any], what: str, timeout: float = 10.0) -> Any:
    """Poll without blocking the loop the writer runs on, up to a deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"waited {timeout:g} s for {what}; last saw {value!r}")
        await asyncio.sleep(0.05)


@pytest.fixture()
async def db(tmp_path: Path) -> AsyncIterator[aiosqlite.Connection]:
    conn = await storage.connect_async(tmp_path / "usage.db")
    yield conn
    await conn.close()


# -- the live writer ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad",
    [
        {"input_tokens": OVERFLOW},
        {"output_tokens": U64_MAX},
        {"input_tokens": {"nested": 1}},  # SQLite binds no dict
        {"key_id": None},  # NOT NULL
    ],
    ids=["2**64", "u64-max", "dict", "null-key"],
)
async def test_a_row_sqlite_refuses_is_set_aside_and_blocks_nothing(
    tmp_path: Path, db: aiosqlite.Connection, bad: dict[str, Any]
) -> None:
    journal_dir = tmp_path / "usage.db.journal"
    writer = UsageWriter(journal_dir, db, tmp_path / "usage.db")
    writer.append(record("req-good-1"))
    writer.append(record("req-bad", **bad))
    writer.append(record("req-good-2", input_tokens=7))
    await writer.flush()  # does not raise: the bad row is the row's fault

    assert stored(tmp_path / "usage.db") == {"req-good-1": (12, 34), "req-good-2": (7, 34)}
    [entry] = rejected(journal_dir)
    assert entry["record"]["request_id"] == "req-bad"
    assert next(iter(bad)) in entry["reason"]  # names the column
    # the segments holding the batch are gone: nothing is replayed (or rejected) twice
    assert journaled_ids(journal_dir) == set()

    # rows after it are written as usual, by the background task too
    writer.append(record("req-after-1"))
    await writer.flush()
    writer.start()
    writer.append(record("req-after-2"))
    await eventually(
        lambda: "req-after-2" in stored(tmp_path / "usage.db"), "a later row written by the task"
    )
    await writer.close()
    assert set(stored(tmp_path / "usage.db")) == {
        "req-good-1",
        "req-good-2",
        "req-after-1",
        "req-after-2",
    }
    assert len(rejected(journal_dir)) == 1  # set aside once, never retried
    assert segment_paths(journal_dir) == []  # a clean close leaves no segment behind


async def test_a_locked_database_is_retried_not_set_aside(
    tmp_path: Path, db: aiosqlite.Connection
) -> None:
    db_path = tmp_path / "usage.db"
    journal_dir = tmp_path / "usage.db.journal"
    await db.execute("PRAGMA busy_timeout=50")  # fail fast while locked
    writer = UsageWriter(journal_dir, db, db_path)
    holder = sqlite3.connect(db_path, timeout=1, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # another process holds the write lock
    try:
        for n in range(3):
            writer.append(record(f"req-locked-{n}"))
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            await writer.flush()
        files = sorted(p.name for p in segment_paths(journal_dir))
        for _ in range(5):  # rounds while nothing new is written make no new segment
            with pytest.raises(sqlite3.OperationalError):
                await writer.flush()
        assert sorted(p.name for p in segment_paths(journal_dir)) == files
        assert rejected(journal_dir) == []
        assert journaled_ids(journal_dir) == {f"req-locked-{n}" for n in range(3)}
    finally:
        holder.execute("COMMIT")
        holder.close()
    writer.append(record("req-after-lock"))
    await writer.flush()
    assert set(stored(db_path)) == {*(f"req-locked-{n}" for n in range(3)), "req-after-lock"}
    assert rejected(journal_dir) == []
    await writer.close()
    assert segment_paths(journal_dir) == []


async def test_a_full_disk_loses_no_record(tmp_path: Path, db: aiosqlite.Connection) -> None:
    """An append that fails with ENOSPC keeps the record for SQLite; appends recover."""
    journal_dir = tmp_path / "usage.db.journal"
    db_path = tmp_path / "usage.db"
    writer = UsageWriter(journal_dir, db, db_path)
    [segment] = segment_paths(journal_dir)
    seg_fd = _descriptor_of(segment)
    saved = os.dup(seg_fd)
    full = os.open("/dev/full", os.O_WRONLY)
    try:
        os.dup2(full, seg_fd)  # the disk is full under the segment
        writer.append(record("req-full-1"))  # no exception reaches the request
        os.dup2(saved, seg_fd)  # space again
        writer.append(record("req-space-1"))
        assert journaled_ids(journal_dir) == {"req-space-1"}  # a whole, readable line
        await writer.flush()
        assert set(stored(db_path)) == {"req-full-1", "req-space-1"}

        [segment] = segment_paths(journal_dir)  # the fresh one the flush rotated to
        seg_fd = _descriptor_of(segment)
        os.dup2(full, seg_fd)  # full again, and the flush rotates away from it
        writer.append(record("req-full-2"))
        await writer.flush()
        assert set(stored(db_path)) == {"req-full-1", "req-space-1", "req-full-2"}
    finally:
        os.close(saved)
        os.close(full)
    writer.append(record("req-space-2"))
    assert "req-space-2" in journaled_ids(journal_dir)
    await writer.close()
    assert set(stored(db_path)) == {"req-full-1", "req-space-1", "req-full-2", "req-space-2"}


async def test_a_close_while_sqlite_is_locked_leaves_every_record_to_replay(
    tmp_path: Path, db: aiosqlite.Connection
) -> None:
    """Shutting down with SQLite locked: even a record whose append failed (only in
    memory) is in the journal afterwards, and the next start's replay loads it."""
    db_path = tmp_path / "usage.db"
    journal_dir = tmp_path / "usage.db.journal"
    await db.execute("PRAGMA busy_timeout=50")
    writer = UsageWriter(journal_dir, db, db_path)
    [segment] = segment_paths(journal_dir)
    seg_fd = _descriptor_of(segment)
    saved = os.dup(seg_fd)
    full = os.open("/dev/full", os.O_WRONLY)
    os.dup2(full, seg_fd)
    writer.append(record("req-in-memory"))
    os.dup2(saved, seg_fd)
    os.close(saved)
    os.close(full)
    writer.append(record("req-journaled"))
    holder = sqlite3.connect(db_path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        await writer.close()  # its last flush fails: no exception out of shutdown
    finally:
        holder.execute("COMMIT")
        holder.close()
    assert stored(db_path) == {}
    assert journaled_ids(journal_dir) == {"req-in-memory", "req-journaled"}
    conn = storage.connect(db_path)
    try:
        assert replay_journals(journal_dir, conn) == 2
    finally:
        conn.close()
    assert set(stored(db_path)) == {"req-in-memory", "req-journaled"}
    assert rejected(journal_dir) == []


def _descriptor_of(path: Path) -> int:
    for entry in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{entry}") == str(path):
                return int(entry)
        except OSError:
            continue
    raise AssertionError(f"no descriptor of {path} in this process")


# -- rotation with no descriptor left (a subprocess: it lowers its own RLIMIT_NOFILE) --------

EMFILE_SCRIPT = r"""
import asyncio, errno, json, os, resource, signal, sys, time
from pathlib import Path
from proxy import storage
from proxy.observability.logs import configure_logging
from proxy.usage.writer import UsageWriter

def rec(rid):
    return {"request_id": rid, "ts": time.time(), "key_id": "k", "model": "m",
            "deployment": "d", "endpoint": "chat", "status": 200, "stream": 0,
            "input_tokens": 1, "output_tokens": 2, "audio_seconds": 0.0, "cost_usd": 0.0,
            "latency_ms": 1.0, "ttft_ms": None, "usage_source": "upstream", "error": None}

async def main(workdir, crash):
    configure_logging()
    db_path = workdir / "usage.db"
    db = await storage.connect_async(db_path)
    writer = UsageWriter(workdir / "usage.db.journal", db, db_path)
    writer.append(rec("warm-up"))
    await writer.flush()  # SQLite's files are open: only the journal needs new ones
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(256, soft), hard))
    hogs = []
    while True:  # take every descriptor left
        try:
            hogs.append(os.open("/dev/null", os.O_RDONLY))
        except OSError as exc:
            assert exc.errno == errno.EMFILE, exc
            break
    for n in range(5):
        writer.append(rec(f"a{n}"))
    try:
        await writer.flush()  # its rotation cannot open a segment
    except Exception as exc:
        print("flush failed:", exc, file=sys.stderr)
    for n in range(5):
        writer.append(rec(f"b{n}"))
    if crash:
        os.kill(os.getpid(), signal.SIGKILL)  # die with the b rows only in the journal
    try:
        await writer.flush()
    except Exception as exc:
        print("flush failed:", exc, file=sys.stderr)
    for fd in hogs:
        os.close(fd)
    for n in range(5):
        writer.append(rec(f"c{n}"))
    await writer.flush()  # the rotation works again
    await writer.close()
    await db.close()

asyncio.run(main(Path(sys.argv[1]), sys.argv[2] == "crash"))
"""

EMFILE_IDS = {"warm-up", *(f"{g}{n}" for g in "abc" for n in range(5))}


def _run_emfile(workdir: Path, mode: str) -> subprocess.CompletedProcess[str]:
    workdir.mkdir()
    return subprocess.run(
        [sys.executable, "-c", EMFILE_SCRIPT, str(workdir), mode],
        cwd=workdir,
        env=gateway_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )


def _events(stdout: str) -> list[str]:
    events = []
    for line in stdout.splitlines():
        try:
            events.append(json.loads(line)["event"])
        except (ValueError, KeyError, TypeError):
            continue
    return events


def test_a_rotation_with_no_descriptor_left_keeps_appending(tmp_path: Path) -> None:
    done = _run_emfile(tmp_path / "run", "clean")
    assert done.returncode == 0, done.stderr
    events = _events(done.stdout)
    assert "journal_rotate_failed" in events and "journal_rotate_recovered" in events
    assert set(stored(tmp_path / "run" / "usage.db")) == EMFILE_IDS
    journal_dir = tmp_path / "run" / "usage.db.journal"
    assert segment_paths(journal_dir) == [] and not list(journal_dir.glob("*.new"))
    assert rejected(journal_dir) == []


def test_appends_after_a_failed_rotation_survive_a_crash(tmp_path: Path) -> None:
    """Killed right after appending to the segment it could not rotate: the records
    are in that segment, and replay puts them in SQLite."""
    workdir = tmp_path / "run"
    done = _run_emfile(workdir, "crash")
    assert done.returncode == -9, done.stderr
    journal_dir = workdir / "usage.db.journal"
    assert {f"b{n}" for n in range(5)} <= journaled_ids(journal_dir)
    conn = storage.connect(workdir / "usage.db")
    try:
        replay_journals(journal_dir, conn)
    finally:
        conn.close()
    assert set(stored(workdir / "usage.db")) == {
        "warm-up",
        *(f"{g}{n}" for g in "ab" for n in range(5)),
    }
    assert segment_paths(journal_dir) == []


# -- replay of a dead process's segment ---------------------------------------------------


def write_dead_segment(journal_dir: Path) -> None:
    """A segment as a killed process leaves it (no lock held), written by hand: two
    good records, one SQLite cannot hold, a line that is no record, a torn last line."""
    journal_dir.mkdir(parents=True, exist_ok=True)
    good = [json.dumps(record(f"dead-good-{n}", input_tokens=n + 1)) for n in range(2)]
    bad = json.dumps(record("dead-bad", input_tokens=OVERFLOW))
    lines = [good[0], bad, "[1, 2, 3]", good[1], '{"request_id": "dead-torn", "ts": 1']
    (journal_dir / "4242-1-1.jsonl").write_text("\n".join(lines))


def test_replay_loads_the_good_rows_of_a_bad_segment(tmp_path: Path) -> None:
    journal_dir = tmp_path / "usage.db.journal"
    write_dead_segment(journal_dir)
    conn = storage.connect(tmp_path / "usage.db")
    try:
        assert replay_journals(journal_dir, conn) == 2  # does not raise
        assert replay_journals(journal_dir, conn) == 0  # and nothing is left to replay
    finally:
        conn.close()
    assert stored(tmp_path / "usage.db") == {"dead-good-0": (1, 34), "dead-good-1": (2, 34)}
    entries = rejected(journal_dir)
    assert [e["record"] for e in entries if isinstance(e["record"], list)] == [[1, 2, 3]]
    [bad] = [e for e in entries if isinstance(e["record"], dict)]
    assert bad["record"]["request_id"] == "dead-bad" and "input_tokens" in bad["reason"]
    assert segment_paths(journal_dir) == []


def test_replay_leaves_a_segment_while_the_database_is_locked(tmp_path: Path) -> None:
    journal_dir = tmp_path / "usage.db.journal"
    write_dead_segment(journal_dir)
    db_path = tmp_path / "usage.db"
    storage.connect(db_path).close()
    holder = sqlite3.connect(db_path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    conn = sqlite3.connect(db_path, timeout=0.05)
    try:
        assert replay_journals(journal_dir, conn) == 0  # does not raise, sets nothing aside
        assert len(segment_paths(journal_dir)) == 1 and rejected(journal_dir) == []
        holder.execute("COMMIT")
        assert replay_journals(journal_dir, conn) == 2
    finally:
        conn.close()
        holder.close()
    assert set(stored(db_path)) == {"dead-good-0", "dead-good-1"}
    assert len(rejected(journal_dir)) == 2


def test_a_gateway_starts_and_serves_over_a_bad_segment(tmp_path: Path) -> None:
    gw = GatewayProcess(tmp_path / "gw", '[storage]\npath = "gateway.db"\n')
    write_dead_segment(gw.workdir / "gateway.db.journal")
    gw.start()
    try:
        assert {"dead-good-0", "dead-good-1"} <= set(stored(gw.db_path))
        set_aside = [ln for ln in gw.log_lines() if ln.get("event") == "usage_record_set_aside"]
        assert "dead-bad" in {ln["request_id"] for ln in set_aside}
        key = gw.create_key("after-bad-segment")["key"]
        body = {"model": "prometheus-pulse", "messages": [{"role": "user", "content": "hi"}]}
        req = urllib.request.Request(
            f"{gw.base_url}/chat/completions",
            data=json.dumps(body).encode(),
            headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=30) as resp:
            assert resp.status == 200
            rid = resp.headers["x-request-id"]
            assert json.loads(resp.read())["choices"][0]["message"]["content"]
        from waiting import wait_for

        wait_for(lambda: rid in stored(gw.db_path), message="the new request's usage row")
    finally:
        gw.stop()
    assert "Traceback" not in gw.log_text()

"""A gateway killed with SIGKILL under load loses no completed request's usage
record, and counts none twice after restarts."""

from __future__ import annotations

import fcntl
import http.client
import json
import os
import signal
import threading
from pathlib import Path

from gateway_process import GatewayProcess, gateway_config
from upstream_app import Upstream
from waiting import wait_for


def _one_request(port: int, key: str, stream: bool, n: int) -> str | None:
    """Send one chat request; the x-request-id if the whole response arrived."""
    body = {
        "model": "prometheus-lite" if n % 3 else "prometheus-pulse",
        "stream": stream,
        "messages": [{"role": "user", "content": f"request number {n}"}],
    }
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(
            "POST",
            "/v1/chat/completions",
            json.dumps(body),
            {"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
        )
        resp = conn.getresponse()
        data = resp.read()
        if resp.status != 200:
            return None
        if stream and not data.rstrip().endswith(b"data: [DONE]"):
            return None
        if not stream:
            json.loads(data)
        return resp.headers["x-request-id"]
    except (OSError, http.client.HTTPException, ValueError):
        return None  # cut by the kill: the response did not complete
    finally:
        conn.close()


def _stored(gw: GatewayProcess) -> set[str]:
    return {r[0] for r in gw.db_rows("SELECT request_id FROM requests")}


def _wait_stored(gw: GatewayProcess, done: set[str], timeout: float = 20.0) -> set[str]:
    """The request ids in SQLite, once they include every id in `done`."""

    def all_stored() -> set[str] | None:
        stored = _stored(gw)
        return stored if done <= stored else None

    return wait_for(
        all_stored,
        timeout=timeout,
        interval=0.1,
        message=lambda: (
            f"a usage record for each of {len(done)} completed requests "
            f"({len(done - _stored(gw))} missing)"
        ),
    )


def _orphaned_segments(gw: GatewayProcess) -> list[Path]:
    """Journal segments no live process holds (so not yet replayed into SQLite)."""
    orphaned = []
    for seg in (gw.workdir / "gateway.db.journal").glob("*.jsonl"):
        try:
            fd = os.open(seg, os.O_RDONLY)
        except FileNotFoundError:
            continue  # flushed and removed meanwhile
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            continue  # its writer is alive
        else:
            orphaned.append(seg)  # closing the fd below drops the lock at once
        finally:
            os.close(fd)
    return orphaned


def _count_rows(gw: GatewayProcess) -> tuple[int, int]:
    total, distinct = gw.db_rows("SELECT COUNT(*), COUNT(DISTINCT request_id) FROM requests")[0]
    return int(total), int(distinct)


def _usage_requests(gw: GatewayProcess) -> int:
    return sum(int(row["requests"]) for row in gw.usage())


def test_sigkill_under_load_loses_and_doubles_nothing(upstream: Upstream, tmp_path: Path) -> None:
    gw = GatewayProcess(tmp_path / "crash", gateway_config(upstream.base_url), workers=2)
    gw.start()
    key = gw.create_key("crash-client")["key"]
    completed: list[str] = []
    lock = threading.Lock()
    stop = threading.Event()

    def client_loop(worker: int) -> None:
        n = worker * 100_000
        while not stop.is_set():
            n += 1
            rid = _one_request(gw.port, key, stream=bool(n % 2), n=n)
            if rid is not None:
                with lock:
                    completed.append(rid)

    threads = [threading.Thread(target=client_loop, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    try:
        # kill once the load is well under way: many requests done, some already
        # flushed to SQLite, the clients still sending
        wait_for(
            lambda: len(completed) >= 200 and _count_rows(gw)[0] > 0,
            timeout=60,
            message=lambda: (
                f"200 completed requests under load ({len(completed)} so far)"
                " and some of them in SQLite"
            ),
        )
    finally:
        gw.kill()  # SIGKILL, parent and workers, mid-load
        stop.set()
        for t in threads:
            t.join(15)
    done = set(completed)
    assert len(done) == len(completed) >= 200

    gw.start()  # replays the dead workers' journals
    try:
        _wait_stored(gw, done)  # every completed request has its record
        total, distinct = _count_rows(gw)
        assert total == distinct
        # interrupted requests may have a record too (billed as cut), never a second one
        assert total - len(done) < 8 * 2 + 8
        before = _usage_requests(gw)
        assert before == total
    finally:
        gw.stop()

    gw.start()  # a second restart must not count anything again
    try:
        # the replay at start runs before /healthz answers; no segment may be left over
        wait_for(lambda: not _orphaned_segments(gw), message="no journal segment left to replay")
        assert _count_rows(gw) == (total, total)
        assert _usage_requests(gw) == before
    finally:
        gw.stop()


def test_a_killed_worker_is_recovered_by_its_sibling(upstream: Upstream, tmp_path: Path) -> None:
    """With two workers, one dying under SIGKILL: the survivor replays its journal."""
    gw = GatewayProcess(tmp_path / "sibling", gateway_config(upstream.base_url), workers=2)
    gw.start()
    try:
        key = gw.create_key("sibling-client")["key"]
        assert gw.proc is not None
        workers = _worker_pids(gw.proc.pid)
        assert len(workers) == 2
        journal = gw.workdir / "gateway.db.journal"
        done: set[str] = set()
        orphaned: list[Path] = []
        for burst in range(20):
            for n in range(10):
                rid = _one_request(gw.port, key, stream=bool(n % 2), n=burst * 10 + n)
                assert rid is not None
                done.add(rid)
            # freeze the worker, and kill it only while it holds records not yet in SQLite
            os.kill(workers[0], signal.SIGSTOP)
            orphaned = [p for p in journal.glob(f"{workers[0]}-*.jsonl") if p.stat().st_size]
            if orphaned:
                os.kill(workers[0], signal.SIGKILL)
                break
            os.kill(workers[0], signal.SIGCONT)
        assert orphaned, "never caught the worker with unflushed records"
        # the surviving worker's sweep (every 5 s) takes the dead one's segment
        stored = _wait_stored(gw, done)
        assert _count_rows(gw) == (len(stored), len(stored))
        # and the supervisor replaced the dead worker
        replaced = _worker_pids(gw.proc.pid, without=workers[0])
        assert len(replaced) == 2
        assert _one_request(gw.port, key, stream=True, n=1) is not None
    finally:
        gw.kill()


def _worker_pids(parent: int, without: int | None = None) -> list[int]:
    """The gateway's two running workers, once it has two (other than `without`)."""
    from gateway_process import _children

    def two_workers() -> list[int] | None:
        pids = [
            p
            for p in _children(parent)
            if _is_running(p) and p != without and not _is_token_server(p)
        ]
        return pids if len(pids) >= 2 else None

    return wait_for(
        two_workers,
        message=lambda: f"two running workers of {parent} (children now: {_children(parent)})",
    )


def _is_token_server(pid: int) -> bool:
    """The gateway's counting process (proxy.metering.token_server), also its child."""
    try:
        return b"proxy.metering.token_server" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def _is_running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")

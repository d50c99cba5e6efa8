"""compare.py's workers phase: what a second worker costs, on a machine too small
to show `--workers 2` scaling in requests/s.

Called by `compare.main()` last, after the memory phase: it runs the 64-client
non-stream load once more against the one-worker gateway, stops that gateway
(by its PID), starts `prometheus-gateway serve --workers 2` with the same
config on a new port, and runs the same load against it. For each it sums the
CPU time of the worker processes only (`/proc/PID/stat` of each worker, all
its threads; not the supervisor, not the counting process) and divides it by
the requests served. `goal_table` reads the result.

The goal (2 workers >= 1.8x one worker's requests/s) assumes the load
generator has its own core. On 2 cores shared by client, simulator and
workers, requests/s cannot double, so the figure is the implied scaling
2 x cpu1 / cpu2 (cpu = worker CPU per request): the requests/s two workers
would serve, relative to one, if each had a core of its own. It is 2.0 when a
second worker costs nothing per request (no lock, no shared table, no extra
wake-ups); below that by whatever the workers cost each other.
"""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

from compare import (
    ALIAS,
    CLK_TCK,
    Procs,
    fmt,
    free_port,
    loadgen,
    token_service_pids,
    tree_pids,
    wait_healthz,
    wait_settled,
)


def worker_pids(root: int, workers: int) -> list[int]:
    """The gateway's worker processes: the root itself for one worker (it serves in
    the process `serve` started), else the supervisor's children less the counting
    process."""
    if workers <= 1:
        return [root]
    service = set(token_service_pids(root))
    return [p for p in tree_pids(root) if p != root and p not in service and _ppid(p) == root]


def _ppid(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    return int(stat[stat.rfind(b")") + 2 :].split()[1])


def own_cpu_s(pid: int) -> float | None:
    """user+system CPU seconds of one process (all its threads), without children."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK
    except (OSError, IndexError, ValueError):
        return None


def stop_gateway(proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    """SIGTERM to the gateway's process group (its PID), SIGKILL if it has not
    drained within `timeout`."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=timeout)
    except ProcessLookupError:
        pass
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def measure(url: str, key: str, root: int, workers: int, kw: dict) -> dict:
    """One 64-client non-stream run; the workers' CPU per request, and the whole tree's."""
    pids = worker_pids(root, workers)
    before = {p: own_cpu_s(p) for p in pids}
    r = loadgen(url, api_key=key, model=ALIAS, stream=False, watch=[root], **kw)
    after = {p: own_cpu_s(p) for p in pids}
    alive = [p for p in pids if before[p] is not None and after[p] is not None]
    cpu = sum(after[p] - before[p] for p in alive)  # type: ignore[operator]
    n = r.get("requests_ok") or 0
    r["workers"] = workers
    r["worker_pids"] = pids
    r["workers_lost"] = len(pids) - len(alive)  # a worker that died or was replaced
    r["workers_cpu_s"] = round(cpu, 3)
    r["workers_cpu_ms_per_request"] = round(cpu * 1000.0 / n, 4) if n else None
    r["tree_cpu_ms_per_request"] = (
        round(r["server_cpu_s"] * 1000.0 / n, 4)
        if n and r.get("server_cpu_s") is not None
        else None
    )
    print(
        f"  workers{workers}     gateway  {r['requests_per_s']:>10,.1f}/s  p99 "
        f"{fmt((r.get('latency_ms') or {}).get('p99'))} ms  worker CPU "
        f"{fmt(r['workers_cpu_ms_per_request'], 3)} ms/request (whole gateway "
        f"{fmt(r['tree_cpu_ms_per_request'], 3)})  errors {r.get('errors')}",
        flush=True,
    )
    return r


def run(
    procs: Procs,
    gw: list[str],
    cfg: Path,
    gw_env: dict[str, str],
    gw_proc: subprocess.Popen[bytes],
    gw_port: int,
    key: str,
    concurrency: int,
    duration: float,
    warmup: float,
) -> dict:
    """The one-worker gateway once more, then (after stopping it) a two-worker one."""
    kw = {"concurrency": concurrency, "duration": duration, "warmup": warmup}
    print(
        f"\nworkers: {concurrency} clients non-stream, the one-worker gateway again, then"
        f" `serve --workers 2` (same config); worker CPU summed over the workers",
        flush=True,
    )
    out: dict = {}
    out["one"] = measure(f"http://127.0.0.1:{gw_port}/v1", key, gw_proc.pid, 1, kw)
    stop_gateway(gw_proc)
    port2 = free_port()
    proc2 = procs.start(
        "gateway-w2",
        gw
        + ["serve", "--config", str(cfg), "--host", "127.0.0.1", "--port", str(port2)]
        + ["--workers", "2"],
        gw_env,
    )
    wait_healthz(port2, proc2)
    wait_settled(proc2, procs.logdir / "gateway-w2.log")
    out["two"] = measure(f"http://127.0.0.1:{port2}/v1", key, proc2.pid, 2, kw)
    c1 = out["one"]["workers_cpu_ms_per_request"]
    c2 = out["two"]["workers_cpu_ms_per_request"]
    out["implied_scaling"] = round(2 * c1 / c2, 3) if c1 and c2 else None
    r1, r2 = out["one"]["requests_per_s"], out["two"]["requests_per_s"]
    out["requests_per_s_ratio"] = round(r2 / r1, 3) if r1 else None
    print(
        f"  implied scaling 2 x {fmt(c1, 3)} / {fmt(c2, 3)} = {fmt(out['implied_scaling'], 2)}"
        f"; requests/s 2 workers / 1 = {fmt(out['requests_per_s_ratio'], 2)} (bounded by"
        f" the {os.cpu_count()}-core machine)",
        flush=True,
    )
    return out

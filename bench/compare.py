#!/usr/bin/env python3
"""Gateway overhead, side by side: direct to the upstream, through a bare relay,
and through Prometheus Gateway, all against the same simulator.

It starts everything itself (free ports, a temp dir for the gateway's config
and database) and stops everything it started, by PID, when it ends:

  simulator   `prometheus-gateway sim` (fast: no TTFT delay, no token pacing)
  slow sim    a second simulator at --slow-tps tokens/s (memory phase only)
  relay       bench/bare_relay.py -> simulator
  gateway     `prometheus-gateway serve --workers 1`; alias prometheus-lite ->
              simulator, prometheus-core -> slow sim; one client key; started
              with PROMETHEUS_LOOP_LAG_PROBE=1 (unless --no-loop-probe)

Each load run is its own bench/loadgen.py process, so the client never shares
an event loop with a server. The machine may be small: with 2 cores, the
client, the upstream and the server under test share them, so absolute
figures are lower bounds; the ratios and the server CPU per request are the
comparable part.

Scenarios (each against direct, relay and gateway):
  (a) non-stream chat, 64 clients           requests/s, latency
  (b) stream chat of 60 chunks, 64 clients   streams/s, latency, TTFT
  (c) one client, non-stream and stream      added latency / TTFT (p50) vs direct
Per run: latency p50/p99/max; for the gateway also its worker's loop lag
(p99, max), read from the probe's GET /debug/loop-lag around the run. RSS of
the gateway's worker and of its counting process (proxy.metering.token_server),
apart: idle, after the runs.
Memory: --mem-streams concurrent open streams through the gateway (slow sim,
so each stays open ~60/--slow-tps s), twice; the gateway's RSS (VmRSS, summed
over its process tree) before, at the peak, and ~5 s after each wave.
ITL (itl_phase.py): one client, streams from a third simulator that paces its
tokens (--itl-tps), direct / relay / gateway: the gap between content events.
Workers (workers_phase.py, last): the 64-client non-stream load against the
one-worker gateway, then against `serve --workers 2`; worker CPU per request.
Then the goal table (goal_table.py): each figure of issue 13's goal, met or not.

    python bench/compare.py [--duration 10] [--quick] [--json-out FILE]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import resource
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
LOADGEN = HERE / "loadgen.py"
RELAY = HERE / "bare_relay.py"
ALIAS = "prometheus-lite"
SLOW_ALIAS = "prometheus-core"
TOKEN_SERVER = "proxy.metering.token_server"
CLK_TCK = os.sysconf("SC_CLK_TCK")
# The phase modules (itl_phase, workers_phase) import their helpers from `compare`:
# run as a script, that is this module, not a second copy of it.
if __name__ == "__main__":
    sys.modules.setdefault("compare", sys.modules[__name__])


# ---------------------------------------------------------------- processes


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def gateway_command() -> list[str] | None:
    """`prometheus-gateway` next to this interpreter, else `python -m proxy`."""
    script = Path(sys.executable).parent / "prometheus-gateway"
    if script.exists():
        return [str(script)]
    probe = subprocess.run([sys.executable, "-c", "import proxy.cli"], capture_output=True)
    if probe.returncode == 0:
        return [sys.executable, "-m", "proxy"]
    return None


def _raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ValueError, OSError):
        pass


class Procs:
    """Every process this script starts, each in its own session, so that
    stopping one stops its workers too (its process group has its PID)."""

    def __init__(self, logdir: Path) -> None:
        self.logdir = logdir
        self.procs: list[tuple[str, subprocess.Popen[bytes]]] = []

    def start(
        self, name: str, cmd: list[str], env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        log = open(self.logdir / f"{name}.log", "wb")
        proc = subprocess.Popen(
            cmd,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            env=env,
            preexec_fn=_raise_nofile,
        )
        log.close()
        self.procs.append((name, proc))
        return proc

    def stop_all(self) -> None:
        for _, proc in reversed(self.procs):
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + 8
        for _, proc in reversed(self.procs):
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait()
        self.procs.clear()


def wait_port(port: int, proc: subprocess.Popen[bytes], name: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited with {proc.returncode} before accepting")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{name} did not accept on port {port} within {timeout} s")


def wait_healthz(port: int, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    url = f"http://127.0.0.1:{port}/healthz"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"gateway exited with {proc.returncode} before /healthz")
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.2)
    raise RuntimeError(f"gateway /healthz not 200 within {timeout} s")


# ---------------------------------------------------------------- /proc probes


def tree_pids(pid: int) -> list[int]:
    """pid and all its descendants."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat[stat.rfind(b")") + 2 :].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, ()))
    return out


def cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def token_service_pids(pid: int) -> list[int]:
    """The gateway's counting process(es) in its tree (proxy.metering.token_server)."""
    return [p for p in tree_pids(pid) if TOKEN_SERVER in cmdline(p)]


def rss_kb(pid: int, exclude: list[int] | None = None) -> int:
    """VmRSS in kB, summed over the process tree (less the `exclude` PIDs)."""
    total = 0
    for p in tree_pids(pid):
        if exclude and p in exclude:
            continue
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
                        break
        except OSError:
            pass
    return total


def gateway_rss(pid: int) -> dict[str, int]:
    """The gateway's RSS in kB: its workers (the tree less the counting process) and
    the counting process on its own (0 when there is none)."""
    service = token_service_pids(pid)
    return {
        "workers_kb": rss_kb(pid, exclude=service),
        "token_service_kb": sum(rss_kb(p) for p in service),
    }


def loop_lag(port: int, reset: bool = False) -> dict | None:
    """The gateway worker's loop-lag probe (PROMETHEUS_LOOP_LAG_PROBE=1), or None."""
    url = f"http://127.0.0.1:{port}/debug/loop-lag" + ("?reset=1" if reset else "")
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return json.loads(r.read())
    except (urllib.error.URLError, OSError, ValueError):
        return None


def cpu_wait_s(pid: int) -> float:
    """Seconds the process tree's threads spent runnable but waiting for a CPU
    (/proc/PID/task/TID/schedstat, 2nd field): how oversubscribed the machine was."""
    total = 0
    for p in tree_pids(pid):
        try:
            tids = os.listdir(f"/proc/{p}/task")
        except OSError:
            continue
        for tid in tids:
            try:
                with open(f"/proc/{p}/task/{tid}/schedstat") as f:
                    total += int(f.read().split()[1])
            except (OSError, IndexError, ValueError):
                pass
    return total / 1e9


def warm_limited_key(port: int, key: str) -> None:
    """One request with the limited key before any run: the worker's first `tpm`
    estimate loads the tiktoken encoding (~0.6 s of CPU, once per process),
    which is no cost per request and would otherwise land in the first run
    that uses the key."""
    body = json.dumps({"model": ALIAS, "messages": [{"role": "user", "content": "warm"}]})
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/chat/completions",
        data=body.encode(),
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=30) as r:
        r.read()


def wait_settled(proc: subprocess.Popen[bytes], log: Path, timeout: float = 20.0) -> None:
    """After /healthz: a second for start-up to settle, and, where the gateway has a
    counting process, until it has loaded its encodings (it logs `tokenizer_loaded`)."""
    time.sleep(1.0)
    if not token_service_pids(proc.pid):
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and b'"tokenizer_loaded"' not in log.read_bytes():
        time.sleep(0.1)


def cpu_s(pid: int) -> float:
    """user+system CPU seconds, summed over the process tree (living members)."""
    total = 0
    for p in tree_pids(pid):
        try:
            with open(f"/proc/{p}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except (OSError, IndexError, ValueError):
            pass
    return total / CLK_TCK


def established(port: int) -> int:
    """Established TCP connections whose local port is `port` (server side)."""
    seen: set[tuple[str, str]] = set()  # the table is not read atomically: dedupe
    want = f":{port:04X}"
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                next(f)
                for line in f:
                    parts = line.split(None, 4)
                    if parts[3] == "01" and parts[1].endswith(want):
                        seen.add((parts[1], parts[2]))
        except OSError:
            pass
    return len(seen)


# ---------------------------------------------------------------- load runs


def loadgen(
    base_url: str,
    *,
    api_key: str = "",
    model: str = ALIAS,
    concurrency: int,
    duration: float | None = None,
    requests: int | None = None,
    stream: bool = False,
    max_tokens: int = 60,
    warmup: float = 0.0,
    timeout: float = 30.0,
    watch: list[int] | None = None,
    stamps: bool = False,
) -> dict:
    """One bench/loadgen.py run in its own process. Adds the client's CPU
    seconds, and each watched server PID's CPU seconds, to the result."""
    cmd = [
        sys.executable,
        str(LOADGEN),
        "--base-url",
        base_url,
        "--model",
        model,
        "--concurrency",
        str(concurrency),
        "--max-tokens",
        str(max_tokens),
        "--warmup",
        str(warmup),
        "--timeout",
        str(timeout),
        "--json",
    ]
    if api_key:
        cmd += ["--api-key", api_key]
    if stream:
        cmd.append("--stream")
    if stamps:
        cmd.append("--stamps")  # bench/stamped_sim.py's streams: each token's transit
    cmd += ["--duration", str(duration)] if requests is None else ["--requests", str(requests)]
    watch = watch or []
    before_children = resource.getrusage(resource.RUSAGE_CHILDREN)
    before = [cpu_s(p) for p in watch]
    wait_before = [cpu_wait_s(p) for p in watch]
    limit = (duration or 0) + warmup + timeout + 15
    try:
        done = subprocess.run(cmd, capture_output=True, timeout=limit)
    except subprocess.TimeoutExpired:  # run() has killed it
        return {
            "requests_ok": 0,
            "requests_per_s": 0.0,
            "errors": None,
            "latency_ms": {},
            "ttft_ms": {},
            "client_cpu_s": None,
            "server_cpu_s": None,
            "error_messages": {f"loadgen killed after {limit:.0f} s": 1},
        }
    after = [cpu_s(p) for p in watch]
    wait_after = [cpu_wait_s(p) for p in watch]
    after_children = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode not in (0, 1) or not done.stdout.strip():
        raise RuntimeError(f"loadgen failed ({done.returncode}): {done.stderr.decode()[-800:]}")
    res = json.loads(done.stdout)
    res["warmup_s"] = warmup
    res["client_cpu_s"] = round(
        (after_children.ru_utime + after_children.ru_stime)
        - (before_children.ru_utime + before_children.ru_stime),
        3,
    )
    res["server_cpu_s"] = round(sum(a - b for a, b in zip(after, before, strict=True)), 3)
    waited = sum(a - b for a, b in zip(wait_after, wait_before, strict=True))
    res["server_cpu_wait_s"] = round(waited, 3)
    return res


# ---------------------------------------------------------------- report


def fmt(v: object, nd: int = 1) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:,.{nd}f}"
    return str(v)


def ratio(a: float | None, b: float | None) -> str:
    if a is None or b is None or not b:
        return "-"
    return f"{a / b:.2f}"


def diff(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def print_table(results: dict[str, dict[str, dict]], targets: list[str]) -> None:
    def get(scn: str, tgt: str, *path: str) -> float | None:
        v: object = results.get(scn, {}).get(tgt)
        for k in path:
            if not isinstance(v, dict):
                return None
            v = v.get(k)
        return v if isinstance(v, (int, float)) else None

    def per_req_ms(scn: str, tgt: str) -> float | None:
        cpu, n = get(scn, tgt, "server_cpu_s"), get(scn, tgt, "requests_ok")
        return None if cpu is None or not n else cpu * 1000.0 / n

    def cpu_wait_pct(scn: str, tgt: str) -> float | None:
        waited, el = get(scn, tgt, "server_cpu_wait_s"), get(scn, tgt, "elapsed_s")
        wu = get(scn, tgt, "warmup_s") or 0.0
        return None if waited is None or not el else 100.0 * waited / (el + wu)

    def client_pct(scn: str, tgt: str) -> float | None:
        cpu, el = get(scn, tgt, "client_cpu_s"), get(scn, tgt, "elapsed_s")
        wu = get(scn, tgt, "warmup_s") or 0.0
        return None if cpu is None or not el else 100.0 * cpu / (el + wu)

    rows: list[tuple[str, list[float | None], int]] = []
    for scn, label in (
        ("nonstream64", "(a) non-stream, 64 clients"),
        ("stream64", "(b) stream 60 chunks, 64 clients"),
    ):
        unit = "streams/s" if scn == "stream64" else "requests/s"
        rows.append((f"{label}: {unit}", [get(scn, t, "requests_per_s") for t in targets], 0))
        rows.append(("    latency p50 ms", [get(scn, t, "latency_ms", "p50") for t in targets], 1))
        rows.append(("    latency p99 ms", [get(scn, t, "latency_ms", "p99") for t in targets], 1))
        rows.append(("    latency max ms", [get(scn, t, "latency_ms", "max") for t in targets], 1))
        if scn == "stream64":
            rows.append(("    TTFT p50 ms", [get(scn, t, "ttft_ms", "p50") for t in targets], 1))
            rows.append(("    TTFT p99 ms", [get(scn, t, "ttft_ms", "p99") for t in targets], 1))
            rows.append(
                (
                    "    chunks/stream (mean)",
                    [get(scn, t, "chunks_per_stream", "mean") for t in targets],
                    1,
                )
            )
        rows.append(
            ("    server CPU ms per request (see note)", [per_req_ms(scn, t) for t in targets], 3)
        )
        rows.append(
            ("    server waited for a CPU, % of run", [cpu_wait_pct(scn, t) for t in targets], 0)
        )
        rows.append(
            (
                "    loop lag p99 ms (probe)",
                [get(scn, t, "loop_lag_ms", "p99_ms") for t in targets],
                1,
            )
        )
        rows.append(
            (
                "    loop lag max ms (probe)",
                [get(scn, t, "loop_lag_ms", "max_ms") for t in targets],
                1,
            )
        )
        rows.append(("    errors", [get(scn, t, "errors") for t in targets], 0))
        rows.append(("    client CPU, % of one core", [client_pct(scn, t) for t in targets], 0))
    rows.append(
        (
            "(c) 1 client non-stream: latency p50 ms",
            [get("nonstream1", t, "latency_ms", "p50") for t in targets],
            2,
        )
    )
    rows.append(
        (
            "(c) 1 client stream: latency p50 ms",
            [get("stream1", t, "latency_ms", "p50") for t in targets],
            2,
        )
    )
    rows.append(
        (
            "(c) 1 client stream: TTFT p50 ms",
            [get("stream1", t, "ttft_ms", "p50") for t in targets],
            2,
        )
    )

    w = 44
    print()
    print(f"{'':{w}}" + "".join(f"{t:>12}" for t in targets))
    for label, vals, nd in rows:
        print(
            f"{label:{w}}"
            + "".join(
                f"{fmt(v if nd else (None if v is None else round(v)), nd):>12}" for v in vals
            )
        )

    print(
        "note: server CPU is the process under test only (direct: the simulator itself;"
        " relay, gateway: without the simulator behind them). Loop lag: how late the"
        " server's 1 ms timer fired (the same probe in relay and gateway), from warm-up start"
        " to the end of the run. Waited for a CPU: runnable but not running (summed over"
        " its threads), the machine's oversubscription as the server felt it."
    )
    print()
    for gw_name in (t for t in targets if t in ("gateway", "gw-limit")):
        print(f"{gw_name} / relay ratios:")
        for label, scenario in (("requests/s (a)", "nonstream64"), ("streams/s  (b)", "stream64")):
            gateway_rate = get(scenario, gw_name, "requests_per_s")
            relay_rate = get(scenario, "relay", "requests_per_s")
            print(f"  {label}  {ratio(gateway_rate, relay_rate)}")
        for label, scenario in (
            ("p99 latency (a)", "nonstream64"),
            ("p99 latency (b)", "stream64"),
        ):
            g99, r99 = (get(scenario, t, "latency_ms", "p99") for t in (gw_name, "relay"))
            gmax, rmax = (get(scenario, t, "latency_ms", "max") for t in (gw_name, "relay"))
            print(
                f"  {label} {ratio(g99, r99)}  (goal <= 1.0; p99 {fmt(g99)} vs {fmt(r99)} ms,"
                f" max {fmt(gmax)} vs {fmt(rmax)} ms)"
            )
    print("added at 1 client, p50, vs direct (ms):")
    for t in targets:
        if t == "direct":
            continue
        lat = diff(
            get("nonstream1", t, "latency_ms", "p50"),
            get("nonstream1", "direct", "latency_ms", "p50"),
        )
        slat = diff(
            get("stream1", t, "latency_ms", "p50"), get("stream1", "direct", "latency_ms", "p50")
        )
        ttft = diff(get("stream1", t, "ttft_ms", "p50"), get("stream1", "direct", "ttft_ms", "p50"))
        print(
            f"  {t:8} non-stream latency {fmt(lat, 2):>6}   stream latency {fmt(slat, 2):>6}"
            f"   TTFT {fmt(ttft, 2):>6}"
        )
    for scn in ("nonstream64", "stream64", "nonstream1", "stream1"):
        for t in targets:
            msgs = results.get(scn, {}).get(t, {}).get("error_messages") or {}
            for m, n in msgs.items():
                print(f"  [{scn}/{t}] error x{n}: {m}")


# ---------------------------------------------------------------- main


def rss_text(rss: dict[str, int]) -> str:
    text = f"worker {rss['workers_kb'] / 1024:.1f} MiB"
    if rss["token_service_kb"]:
        text += f", counting process {rss['token_service_kb'] / 1024:.1f} MiB"
    return text


def print_run(scn: str, name: str, r: dict, stream: bool) -> None:
    lat = r["latency_ms"]
    ttft = f" TTFT p50 {fmt(r.get('ttft_ms', {}).get('p50'), 2)}" if stream else ""
    lag = r.get("loop_lag_ms")
    lag_text = f"  loop lag p99 {fmt(lag['p99_ms'])} max {fmt(lag['max_ms'])} ms" if lag else ""
    print(
        f"  {scn:12} {name:8} {r['requests_per_s']:>10,.1f}/s  p50 {fmt(lat['p50'], 2)}"
        f" p99 {fmt(lat['p99'])} max {fmt(lat['max'])} ms{ttft}{lag_text}  errors {r['errors']}"
        f"  (client CPU {r['client_cpu_s']} s, server CPU {r['server_cpu_s']} s)",
        flush=True,
    )


def deployment_toml(alias: str, provider: str, base_url: str, api_key: str, model: str) -> str:
    return (
        f'\n[[models.{alias}.deployments]]\nprovider = "{provider}"\nbase_url = "{base_url}"\n'
        f'api_key = "{api_key}"\nmodel = "{model}"\n'
    )


def bench_config(tmp: Path, gw_port: int, body: str) -> Path:
    """The gateway's config file for a bench run: its port, a database in `tmp`,
    and `body` (deployments and any other tables)."""
    cfg = tmp / "bench.toml"
    db = tmp / "bench.db"
    head = f'[server]\nhost = "127.0.0.1"\nport = {gw_port}\n\n[storage]\npath = "{db}"\n'
    cfg.write_text(head + body)
    return cfg


def write_config(
    tmp: Path,
    gw_port: int,
    sim_port: int,
    slow_port: int,
    redis_url: str | None = None,
    extra: str = "",
) -> Path:
    cluster = (
        f'\n[cluster]\nredis_url = "{redis_url}"\nredis_prefix = "prom-bench-{os.getpid()}:"\n'
        if redis_url
        else ""
    )
    return bench_config(
        tmp,
        gw_port,
        deployment_toml(ALIAS, "openai", f"http://127.0.0.1:{sim_port}/v1", "sk-bench", "sim-model")
        + deployment_toml(
            SLOW_ALIAS, "openai", f"http://127.0.0.1:{slow_port}/v1", "sk-bench", "sim-model-slow"
        )
        + extra
        + cluster,
    )


def relay_command(port: int, upstream_port: int) -> list[str]:
    """bare_relay.py on `port` in front of a simulator on `upstream_port`."""
    return [
        sys.executable,
        str(RELAY),
        "--port",
        str(port),
        "--upstream",
        f"http://127.0.0.1:{upstream_port}/v1",
    ]


def sim_command(gw: list[str] | None, port: int, tps: float) -> list[str]:
    if gw is not None:
        return gw + [
            "sim",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--ttft-ms",
            "0",
            "--tokens-per-second",
            str(tps),
        ]
    # Fallback while the CLI is not installed: the simulator module itself.
    return [
        sys.executable,
        "-c",
        "import sys; from proxy.providers.sim.server import run_sim; "
        f"run_sim('127.0.0.1', {port}, 0.0, {float(tps)})",
    ]


def first_count_phase(gw_port: int, key: str, db: Path) -> dict | None:
    """On the idle gateway: one stream the client cuts after its first event, so
    that the worker needs its first local token count; the probe's loop lag
    across it (before the counting process, the worker built the encoding itself:
    a 100-230 ms stall of its loop)."""
    if loop_lag(gw_port, reset=True) is None:
        return None
    body = json.dumps(
        {
            "model": SLOW_ALIAS,
            "stream": True,
            "messages": [{"role": "user", "content": "Say something about gateways."}],
        }
    )
    conn = http.client.HTTPConnection("127.0.0.1", gw_port, timeout=30)
    t0 = time.monotonic()
    try:
        conn.request(
            "POST",
            "/v1/chat/completions",
            body=body,
            headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
        )
        resp = conn.getresponse()
        while not resp.fp.readline().startswith(b"data:"):
            pass
    finally:
        conn.close()  # the client leaves mid-stream
    billed = None
    while time.monotonic() - t0 < 30 and not billed:
        time.sleep(0.1)
        with sqlite3.connect(db, timeout=10) as c:
            billed = c.execute(
                "SELECT output_tokens, usage_source FROM requests WHERE status = 499"
            ).fetchone()
    out = loop_lag(gw_port) or {}
    out["billed"] = billed
    print(
        f"first local count (one cut stream, idle gateway): worker loop lag max "
        f"{fmt(out.get('max_ms'))} ms, p99 {fmt(out.get('p99_ms'))} ms; billed {billed}",
        flush=True,
    )
    return out


def memory_phase(
    gw_proc: subprocess.Popen[bytes],
    gw_port: int,
    slow_port: int,
    key: str,
    streams: int,
    tps: float,
    waves: int = 2,
) -> dict:
    open_s = 60 / tps if tps > 0 else 0
    out: dict = {"streams": streams, "tokens_per_second": tps, "waves": []}
    out["rss_before_kb"] = rss_kb(gw_proc.pid)
    out["rss_before"] = gateway_rss(gw_proc.pid)
    print(
        f"\nmemory: {streams} concurrent streams through the gateway, each open ~{open_s:.0f} s "
        f"(slow sim at {tps} tokens/s); gateway RSS before: {out['rss_before_kb'] / 1024:.1f} MiB",
        flush=True,
    )
    for wave in range(1, waves + 1):
        cmd = [
            sys.executable,
            str(LOADGEN),
            "--base-url",
            f"http://127.0.0.1:{gw_port}/v1",
            "--api-key",
            key,
            "--model",
            SLOW_ALIAS,
            "--concurrency",
            str(streams),
            "--requests",
            str(streams),
            "--stream",
            "--max-tokens",
            "60",
            "--timeout",
            str(max(60.0, 4 * open_s)),
            "--json",
        ]
        client = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        peak_open = peak_up = 0
        peak_rss = rss_at_full = 0
        split_peak: dict[str, int] = {}
        split_at_full: dict[str, int] = {}
        t0 = time.monotonic()
        limit = max(60.0, 4 * open_s) + 30
        try:
            while client.poll() is None and time.monotonic() - t0 < limit:
                n_open = established(gw_port)
                n_up = established(slow_port)
                split_now = gateway_rss(gw_proc.pid)
                rss = split_now["workers_kb"] + split_now["token_service_kb"]
                if rss > peak_rss:
                    peak_rss, split_peak = rss, split_now
                peak_open = max(peak_open, n_open)
                if n_open >= streams and rss > rss_at_full:
                    rss_at_full, split_at_full = rss, split_now
                peak_up = max(peak_up, n_up)
                time.sleep(0.25)
            stdout, stderr = client.communicate(timeout=max(1.0, limit - (time.monotonic() - t0)))
        finally:
            if client.poll() is None:
                client.kill()
                client.wait()
        try:
            res = json.loads(stdout)
        except (json.JSONDecodeError, ValueError):
            res = {
                "requests_ok": 0,
                "errors": None,
                "error_messages": {"loadgen": stderr.decode()[-300:]},
            }
        time.sleep(5)
        after = rss_kb(gw_proc.pid)
        split = gateway_rss(gw_proc.pid)
        w = {
            "wave": wave,
            "peak_open_client_conns": peak_open,
            "peak_open_upstream_conns": peak_up,
            "rss_peak_kb": peak_rss,
            "rss_at_peak_open_kb": rss_at_full,
            "rss_peak": split_peak,  # worker / counting process apart, at the peak
            "rss_at_peak_open": split_at_full,  # the same, with every stream open
            "rss_5s_after_kb": after,
            "rss_5s_after": split,
            "ok": res.get("requests_ok"),
            "errors": res.get("errors"),
            "error_messages": res.get("error_messages"),
            "ttft_ms_p50": (res.get("ttft_ms") or {}).get("p50"),
            "latency_ms_p50": (res.get("latency_ms") or {}).get("p50"),
            "chunks_mean": (res.get("chunks_per_stream") or {}).get("mean"),
        }
        out["waves"].append(w)
        print(
            f"  wave {wave}: open at peak {peak_open} client / {peak_up} upstream conns; "
            f"{w['ok']} ok, {w['errors']} errors; stream p50 {fmt(w['latency_ms_p50'], 0)} ms; "
            f"RSS peak {peak_rss / 1024:.1f} MiB, 5 s after {after / 1024:.1f} MiB"
            f" ({rss_text(split)})",
            flush=True,
        )
        for m, n in (w["error_messages"] or {}).items():
            print(f"    error x{n}: {m}")
    return out


def main() -> int:
    import goal_table  # the phase modules import from this one: after it is loaded
    import itl_phase
    import workers_phase

    p = argparse.ArgumentParser(
        description="direct vs bare relay vs gateway",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__,
    )
    p.add_argument("--duration", type=float, default=10.0, help="seconds per 64-client run")
    p.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds before each run")
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument(
        "--quick",
        action="store_true",
        help="3 s runs, 200-stream memory phase (a smoke test, not a measurement)",
    )
    p.add_argument("--mem-streams", type=int, default=None, help="default 1000 (200 with --quick)")
    p.add_argument(
        "--slow-tps",
        type=float,
        default=5.0,
        help="slow simulator's tokens/s for the memory phase (60 tokens -> 60/tps s open)",
    )
    p.add_argument("--no-memory", action="store_true", help="skip the memory phase")
    p.add_argument("--no-itl", action="store_true", help="skip the ITL phase (paced streams)")
    p.add_argument(
        "--itl-tps",
        type=float,
        default=200.0,
        help="the paced simulator's tokens/s for the ITL phase (default 200: 5 ms apart)",
    )
    p.add_argument(
        "--no-workers", action="store_true", help="skip the --workers 2 phase (CPU per request)"
    )
    p.add_argument(
        "--no-loop-probe",
        action="store_true",
        help="start the gateway without its loop-lag probe (PROMETHEUS_LOOP_LAG_PROBE)",
    )
    p.add_argument("--no-gateway", action="store_true", help="only direct vs relay")
    p.add_argument(
        "--first-count-only",
        action="store_true",
        help="only the worker's loop lag across its first local count (one cut stream)",
    )
    p.add_argument("--memory-only", action="store_true", help="skip the throughput runs")
    p.add_argument("--json-out", help="also write all results to this JSON file")
    p.add_argument("--keep-tmp", action="store_true", help="keep the temp dir (logs, config)")
    p.add_argument(
        "--redis-url",
        help="serve with [cluster] redis_url (limits shared through Redis); with --limited-key",
    )
    p.add_argument(
        "--limited-key",
        action="store_true",
        help="also measure the gateway with a key that has rpm, tpm and a budget (never"
        " reached, checked on every request): target gw-limit",
    )
    a = p.parse_args()
    if a.quick:
        a.duration = min(a.duration, 3.0)
        a.warmup = min(a.warmup, 0.5)
    mem_streams = a.mem_streams or (200 if a.quick else 1000)
    _raise_nofile()

    gw = gateway_command()
    use_gateway = not a.no_gateway and gw is not None
    if a.first_count_only and (not use_gateway or a.no_loop_probe):
        p.error("--first-count-only needs the gateway and its loop-lag probe")
    if gw is None and not a.no_gateway:
        print(
            "note: `prometheus-gateway` not found next to this Python and `proxy.cli` not "
            "importable: measuring direct vs relay only",
            flush=True,
        )

    tmp = Path(tempfile.mkdtemp(prefix="prom-bench-"))
    procs = Procs(tmp)
    all_results: dict = {
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
        "duration_s": a.duration,
        "concurrency": a.concurrency,
    }
    try:
        sim_port, slow_port, relay_port, gw_port = (free_port() for _ in range(4))
        env = dict(os.environ)
        sim = procs.start("sim", sim_command(gw, sim_port, 0), env)
        wait_port(sim_port, sim, "simulator")
        relay = procs.start(
            "relay",
            relay_command(relay_port, sim_port),
            # the same probe as the gateway's, as a control: the loop lag a bare
            # aiohttp relay sees on this machine at this moment
            {**env, "PROMETHEUS_LOOP_LAG_PROBE": "0" if a.no_loop_probe else "1"},
        )
        wait_port(relay_port, relay, "relay")
        probes = {"relay": relay_port}
        paced = None
        if not (a.no_itl or a.memory_only or a.first_count_only):
            paced = itl_phase.start_upstream(procs, env, a.itl_tps)
        paced_toml = paced.gateway_deployment() if paced is not None else ""

        targets: dict[str, tuple[str, str, str, int]] = {
            "direct": (f"http://127.0.0.1:{sim_port}/v1", "", "sim-model", sim.pid),
            "relay": (f"http://127.0.0.1:{relay_port}/v1", "", "sim-model", relay.pid),
        }
        gw_proc = None
        key = ""
        if use_gateway:
            slow = procs.start("slow-sim", sim_command(gw, slow_port, a.slow_tps), env)
            wait_port(slow_port, slow, "slow simulator")
            cfg = write_config(tmp, gw_port, sim_port, slow_port, a.redis_url, paced_toml)
            gw_env = {k: v for k, v in env.items() if not k.startswith("PROMETHEUS_")}
            made = subprocess.run(
                gw + ["keys", "create", "--name", "bench", "--config", str(cfg), "--json"],
                capture_output=True,
                env=gw_env,
                timeout=60,
            )
            if made.returncode != 0:
                raise RuntimeError(f"keys create failed: {made.stderr.decode()[-800:]}")
            text = made.stdout.decode()
            key = json.JSONDecoder().raw_decode(text[text.index("{") :])[0]["key"]
            limited_key = ""
            if a.limited_key:
                limits = ["--rpm", "2000000000", "--tpm", "2000000000", "--budget-usd", "1e9"]
                made = subprocess.run(
                    gw
                    + ["keys", "create", "--name", "bench-limited", "--config", str(cfg)]
                    + limits
                    + ["--json"],
                    capture_output=True,
                    env=gw_env,
                    timeout=60,
                    check=True,
                )
                text = made.stdout.decode()
                limited_key = json.JSONDecoder().raw_decode(text[text.index("{") :])[0]["key"]
            gw_proc = procs.start(
                "gateway",
                gw
                + [
                    "serve",
                    "--config",
                    str(cfg),
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(gw_port),
                    "--workers",
                    "1",
                ],
                {**gw_env, "PROMETHEUS_LOOP_LAG_PROBE": "0" if a.no_loop_probe else "1"},
            )
            wait_healthz(gw_port, gw_proc)
            wait_settled(gw_proc, tmp / "gateway.log")
            all_results["gateway_rss_idle_kb"] = rss_kb(gw_proc.pid)
            all_results["gateway_rss_idle"] = gateway_rss(gw_proc.pid)
            targets["gateway"] = (f"http://127.0.0.1:{gw_port}/v1", key, ALIAS, gw_proc.pid)
            probes["gateway"] = gw_port
            if limited_key:
                warm_limited_key(gw_port, limited_key)
                targets["gw-limit"] = (
                    f"http://127.0.0.1:{gw_port}/v1",
                    limited_key,
                    ALIAS,
                    gw_proc.pid,
                )
                probes["gw-limit"] = gw_port

        names = list(targets)
        print(
            f"machine: {os.cpu_count()} CPUs shared by client, simulator and the server under "
            f"test; {a.duration:g} s per run after {a.warmup:g} s warm-up",
            flush=True,
        )
        if gw_proc is not None:
            print(
                f"gateway pid {gw_proc.pid}, idle RSS: {rss_text(all_results['gateway_rss_idle'])}"
            )
        scenarios = [
            ("nonstream64", dict(concurrency=a.concurrency, stream=False, duration=a.duration)),
            ("stream64", dict(concurrency=a.concurrency, stream=True, duration=a.duration)),
            ("nonstream1", dict(concurrency=1, stream=False, duration=max(2.0, a.duration / 2))),
            ("stream1", dict(concurrency=1, stream=True, duration=max(2.0, a.duration / 2))),
        ]
        if a.first_count_only:
            all_results["first_count"] = first_count_phase(gw_port, key, tmp / "bench.db")
        results: dict[str, dict[str, dict]] = {}
        for scn, kw in [] if a.memory_only or a.first_count_only else scenarios:
            results[scn] = {}
            for name in names:
                url, k, model, pid = targets[name]
                probe = None if a.no_loop_probe else probes.get(name)
                if probe:
                    loop_lag(probe, reset=True)  # a new window: warm-up and run
                r = loadgen(url, api_key=k, model=model, warmup=a.warmup, watch=[pid], **kw)
                if probe:
                    r["loop_lag_ms"] = loop_lag(probe)
                results[scn][name] = r
                print_run(scn, name, r, kw["stream"])
        if gw_proc is not None and results:
            all_results["gateway_rss_after_runs"] = gateway_rss(gw_proc.pid)
            print(
                "gateway RSS after the runs: " + rss_text(all_results["gateway_rss_after_runs"]),
                flush=True,
            )
        all_results["runs"] = results
        if results:
            print_table(results, names)
        if paced is not None:
            gw_target = (targets["gateway"][0], key) if "gateway" in targets else None
            all_results["itl"] = itl_phase.run(paced, gw_target, a.duration, a.warmup)

        if gw_proc is not None and not a.no_memory and not a.first_count_only:
            all_results["memory"] = memory_phase(
                gw_proc, gw_port, slow_port, key, mem_streams, a.slow_tps
            )
            m = all_results["memory"]
            print(
                "\ngateway RSS (MiB): idle {:.1f}, before {:.1f}, ".format(
                    all_results["gateway_rss_idle_kb"] / 1024, m["rss_before_kb"] / 1024
                )
                + ", ".join(
                    f"wave {w['wave']} peak {w['rss_peak_kb'] / 1024:.1f} / after "
                    f"{w['rss_5s_after_kb'] / 1024:.1f}"
                    for w in m["waves"]
                )
            )
        if gw_proc is not None and results and not a.no_workers:
            all_results["workers"] = workers_phase.run(
                procs, gw, cfg, gw_env, gw_proc, gw_port, key, a.concurrency, a.duration, a.warmup
            )
        if results or "memory" in all_results:
            goals = goal_table.rows(all_results)
            all_results["goals"] = goal_table.as_json(goals)
            goal_table.print_table(goals)
        if a.json_out:
            Path(a.json_out).write_text(json.dumps(all_results, indent=2))
        return 0
    finally:
        procs.stop_all()
        if a.keep_tmp:
            print(f"(logs and config kept in {tmp})")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())

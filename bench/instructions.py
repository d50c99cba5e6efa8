"""Instructions per request, gateway against bare relay: a CPU figure the noise cannot move.

On this shared 2-core machine requests/s moves by +-15 % from run to run with
both sides saturated (bench/README.md), so one compare.py run cannot say
whether a change of a few microseconds per request helped. valgrind's
callgrind counts the instructions a process executes, and the count for the
same program, inputs and request count repeats to within ~0.5 % whatever else
the machine does. So: run the relay and the gateway each under callgrind,
send the same requests through each (bench/loadgen.py, not under valgrind),
and divide the instructions counted between a zero and a dump by the
requests served.

    python bench/instructions.py                       # 1,000 requests + 300 streams each, ~3 min
    python bench/instructions.py --requests 400 --streams 100     # quicker
    python bench/instructions.py --targets gateway --keep-dumps  # dumps for callgrind_annotate

For each target: the simulator (`prometheus-gateway sim`, not under
valgrind) as upstream, the process under callgrind, a warm-up of
`--warmup` requests (imports, first-call paths, caches), then for each
scenario: `callgrind_control --zero`, the requests, `callgrind_control
--dump`, and the dump's `summary:` line (all the process's threads: the
gateway's SQLite writer thread is counted, its counting process is not,
being another process that valgrind does not follow).

Both sides also count their idle instructions per second (`--idle-s`, a zero
and a dump with no traffic): the gateway's timers (metrics fold every 0.1 s,
key mirror poll, heap trim) cost per second, not per request, and a request
under valgrind takes ~50x its real time, so the table gives the raw count and
the count with the idle rate times the scenario's elapsed time taken off.
The corrected figure is the one to compare; the raw one is an upper bound.

Instructions are not time (a cache miss or a syscall costs more than its
instruction count says), so read the ratio beside compare.py's CPU per
request, not instead of it. Needs valgrind (Debian's package); exits 2
without it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from compare import (
    ALIAS,
    RELAY,
    Procs,
    free_port,
    gateway_command,
    loadgen,
    sim_command,
    wait_healthz,
    wait_port,
    write_config,
)

START_TIMEOUT_S = 300.0  # a Python process starts ~50x slower under valgrind


def callgrind(out: Path) -> list[str]:
    return [
        "valgrind",
        "--tool=callgrind",
        f"--callgrind-out-file={out}.%p",
        "--dump-instr=no",
        "--compress-strings=no",
        "--separate-threads=yes",
    ]


def control(pid: int, verb: str) -> None:
    subprocess.run(
        ["callgrind_control", f"--{verb}", str(pid)], check=True, capture_output=True, timeout=120
    )


def _summary_line(path: Path) -> int:
    for line in path.read_text().splitlines():
        if line.startswith("summary:"):
            return int(line.split()[1])
    raise RuntimeError(f"no summary line in {path}")


def summary(pid: int, dumps: Path) -> tuple[int, int]:
    """The newest dump of `pid`: the instructions of its main thread (the event
    loop's) and of all its other threads (SQLite, thread pool, ...)."""
    parts: dict[int, list[Path]] = {}
    for path in dumps.glob(f"cg.*.{pid}.*"):  # <out>.<pid>.<dump>-<thread>
        dump, _, _thread = path.name.rsplit(".", 1)[1].partition("-")
        parts.setdefault(int(dump), []).append(path)
    newest = parts[max(parts)]
    main_thread = [p for p in newest if p.name.endswith("-01")]
    others = [p for p in newest if not p.name.endswith("-01")]
    return sum(map(_summary_line, main_thread)), sum(map(_summary_line, others))


def counted(pid: int, dumps: Path, run: Callable[[], object]) -> tuple[int, float, object]:
    """Instructions `pid` executed while `run()` ran, the wall seconds, and run's result."""
    control(pid, "zero")
    t0 = time.monotonic()
    result = run()
    elapsed = time.monotonic() - t0
    control(pid, "dump")
    return summary(pid, dumps), elapsed, result


def measure(
    name: str, pid: int, base_url: str, key: str, model: str, a: argparse.Namespace, dumps: Path
) -> dict:
    def load(count: int, stream: bool) -> dict:
        return loadgen(
            base_url,
            api_key=key,
            model=model,
            concurrency=a.concurrency,
            requests=count,
            stream=stream,
            timeout=120.0,
        )

    load(a.warmup, False)
    if a.streams:
        load(max(a.warmup // 4, 10), True)
    (idle_loop, idle_threads), idle_s, _ = counted(pid, dumps, lambda: time.sleep(a.idle_s))
    out: dict = {
        "idle_per_s": {"loop": round(idle_loop / idle_s), "threads": round(idle_threads / idle_s)}
    }
    scenarios = [("non-stream", a.requests, False), ("stream", a.streams, True)]
    for scenario, count, stream in [s for s in scenarios if s[1] > 0]:
        (loop, threads), elapsed, res = counted(pid, dumps, lambda c=count, s=stream: load(c, s))
        ok = res["requests_ok"]  # type: ignore[index]
        if ok != count:
            raise RuntimeError(f"{name} {scenario}: {ok} of {count} ok: {res}")
        out[scenario] = {
            "requests": ok,
            "elapsed_s": round(elapsed, 2),
            "loop_per_request": round(loop / ok),
            "threads_per_request": round(threads / ok),
            "per_request": round((loop + threads) / ok),
        }
        print(
            f"{name:8} {scenario:10} {ok:5} in {elapsed:6.1f} s: "
            f"{(loop + threads) / ok / 1e3:8.1f} k instructions a request: "
            f"loop thread {loop / ok / 1e3:8.1f} k, other threads {threads / ok / 1e3:6.1f} k"
            f"  (idle: {idle_loop / idle_s / 1e6:.2f} + {idle_threads / idle_s / 1e6:.2f} M/s)",
            flush=True,
        )
    return out


def stop(procs: Procs, proc: subprocess.Popen[bytes]) -> None:
    """End one process this script started (its process group), and forget it."""
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    procs.procs = [(n, q) for n, q in procs.procs if q is not proc]


def main() -> int:
    p = argparse.ArgumentParser(
        description="instructions per request under callgrind, gateway vs bare relay",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__,
    )
    p.add_argument("--requests", type=int, default=1000, help="non-stream requests per target")
    p.add_argument("--streams", type=int, default=300, help="60-chunk streams per target (0: none)")
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--warmup", type=int, default=200, help="unmeasured requests first")
    p.add_argument("--idle-s", type=float, default=5.0, help="seconds of idle counting")
    p.add_argument("--targets", default="relay,gateway")
    p.add_argument("--json-out")
    p.add_argument("--keep-dumps", action="store_true", help="keep the temp dir and its dumps")
    a = p.parse_args()
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        print("valgrind (callgrind) is not installed: nothing to count", file=sys.stderr)
        return 2
    gw = gateway_command()
    if gw is None:
        print("prometheus-gateway is not installed next to this Python", file=sys.stderr)
        return 2
    # valgrind runs a binary: the console script is run by this interpreter
    gw_py = [sys.executable, *gw] if gw[0] != sys.executable else gw

    tmp = Path(tempfile.mkdtemp(prefix="prom-instr-"))
    procs = Procs(tmp)
    results: dict = {"concurrency": a.concurrency}
    try:
        sim_port = free_port()
        sim = procs.start("sim", sim_command(gw, sim_port, 0))
        wait_port(sim_port, sim, "simulator")
        for target in a.targets.split(","):
            port = free_port()
            if target == "relay":
                cmd = [sys.executable, str(RELAY), "--port", str(port)]
                cmd += ["--upstream", f"http://127.0.0.1:{sim_port}/v1"]
                proc = procs.start("relay", callgrind(tmp / "cg.relay") + cmd)
                wait_port(port, proc, "relay", timeout=START_TIMEOUT_S)
                key, model = "", "sim-model"
            elif target == "gateway":
                cfg = write_config(tmp, port, sim_port, sim_port)
                made = subprocess.run(
                    gw + ["keys", "create", "--name", "instr", "--config", str(cfg), "--json"],
                    capture_output=True,
                    check=True,
                    timeout=60,
                )
                text = made.stdout.decode()
                key = json.JSONDecoder().raw_decode(text[text.index("{") :])[0]["key"]
                cmd = gw_py + ["serve", "--config", str(cfg), "--workers", "1"]
                proc = procs.start("gateway", callgrind(tmp / "cg.gateway") + cmd)
                wait_healthz(port, proc, timeout=START_TIMEOUT_S)
                model = ALIAS
            else:
                p.error(f"unknown target {target!r}")
            base = f"http://127.0.0.1:{port}/v1"
            results[target] = measure(target, proc.pid, base, key, model, a, tmp)
            stop(procs, proc)
    finally:
        procs.stop_all()
        if a.keep_dumps:
            print(f"dumps and logs kept in {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    if "relay" in results and "gateway" in results:
        print("\ngateway / relay, instructions per request:")
        for scenario in ("non-stream", "stream"):
            if scenario not in results["gateway"] or scenario not in results["relay"]:
                continue
            g, r = results["gateway"][scenario], results["relay"][scenario]
            for part in ("loop_per_request", "per_request"):
                results[f"ratio_{scenario}_{part}"] = round(g[part] / r[part], 3)
            print(
                f"  {scenario:10} loop thread {g['loop_per_request'] / 1e3:7.1f} k"
                f" / {r['loop_per_request'] / 1e3:7.1f} k"
                f" = {results[f'ratio_{scenario}_loop_per_request']:.3f};"
                f"  all threads {g['per_request'] / 1e3:7.1f} k / {r['per_request'] / 1e3:7.1f} k"
                f" = {results[f'ratio_{scenario}_per_request']:.3f}"
            )
    if a.json_out:
        Path(a.json_out).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

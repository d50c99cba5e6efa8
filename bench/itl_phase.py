"""compare.py's ITL phase: inter-token latency at one client, against a paced upstream.

Called by `compare.main()`: `start_upstream` (before the gateway's config is
written: the gateway needs an alias for it) starts `bench/stamped_sim.py`, a
simulator that sends a fixed number of tokens a second, each stamped with
its send time, and a bare relay in front of it; `run` then streams with one
client, direct, through that relay and through the gateway (alias
`prometheus-paced`), and hands back each target's `bench/loadgen.py --stamps`
result: `itl_ms` (gap p50/p90/p99 between consecutive content events as the
client received them) and `transit_ms` (each token's arrival minus its send
time). `goal_table` reads them.

Why a paced upstream: the bench's fast simulator (`--tokens-per-second 0`)
writes a stream's 60 chunks back to back, so the client gets most of them
several to a read (measured: 95 % of the gaps 0), and the p50 gap is 0 for
every target; it says nothing about the hop. With the simulator pacing tokens
(default 200 tokens/s: 5 ms, a fast model), each token comes on its own, and
the gap the client sees is the pacing plus what the hops add between tokens:
buffering, a chunk held back, per-token work that delays some tokens more
than others. A delay that is the same for every token cancels in the gap: it
is paid once per stream in the gap, and shows in the transit: transit through
the gateway minus transit direct is what the gateway adds to every token.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from compare import (
    Procs,
    deployment_toml,
    fmt,
    free_port,
    loadgen,
    relay_command,
    wait_port,
)

STAMPED_SIM = Path(__file__).resolve().parent / "stamped_sim.py"
PACED_ALIAS = "prometheus-paced"
PACED_MODEL = "sim-model-paced"
DEFAULT_TPS = 200.0


@dataclass
class PacedUpstream:
    tokens_per_second: float
    sim_port: int
    sim_pid: int
    relay_port: int
    relay_pid: int

    def gateway_deployment(self) -> str:
        """The gateway config's lines for the paced alias."""
        return deployment_toml(
            PACED_ALIAS, "openai", f"http://127.0.0.1:{self.sim_port}/v1", "sk-bench", PACED_MODEL
        )


def start_upstream(procs: Procs, env: dict[str, str], tokens_per_second: float) -> PacedUpstream:
    """The paced simulator and a bare relay in front of it (stopped with the others)."""
    sim_port, relay_port = free_port(), free_port()
    sim = procs.start(
        "paced-sim",
        [sys.executable, str(STAMPED_SIM), "--port", str(sim_port)]
        + ["--tokens-per-second", str(tokens_per_second)],
        env,
    )
    wait_port(sim_port, sim, "paced simulator")
    relay = procs.start(
        "paced-relay",
        relay_command(relay_port, sim_port),
        env,
    )
    wait_port(relay_port, relay, "paced relay")
    return PacedUpstream(tokens_per_second, sim_port, sim.pid, relay_port, relay.pid)


def run(
    paced: PacedUpstream,
    gateway: tuple[str, str] | None,
    duration: float,
    warmup: float,
) -> dict:
    """One client, streams of 60 tokens at the paced rate: direct, relay, and the
    gateway (`gateway` = its base URL and key, or None)."""
    targets = {
        "direct": (f"http://127.0.0.1:{paced.sim_port}/v1", "", PACED_MODEL),
        "relay": (f"http://127.0.0.1:{paced.relay_port}/v1", "", PACED_MODEL),
    }
    if gateway is not None:
        targets["gateway"] = (gateway[0], gateway[1], PACED_ALIAS)
    gap = 1000.0 / paced.tokens_per_second
    print(
        f"\nITL: one client, 60-token streams paced at {paced.tokens_per_second:g} tokens/s "
        f"({gap:.1f} ms apart at the simulator), {duration:g} s per target",
        flush=True,
    )
    run_kw = {"duration": duration, "warmup": warmup}
    out: dict = {"tokens_per_second": paced.tokens_per_second, "duration_s": duration}
    for name, (url, key, model) in targets.items():
        r = loadgen(
            url, api_key=key, model=model, concurrency=1, stream=True, stamps=True, **run_kw
        )
        out[name] = r
        itl, tr = r.get("itl_ms") or {}, r.get("transit_ms") or {}
        print(
            f"  itl1         {name:8} ITL p50 {fmt(itl.get('p50'), 3)} p90 {fmt(itl.get('p90'), 3)}"
            f" p99 {fmt(itl.get('p99'), 3)} ms ({itl.get('gaps')} gaps, "
            f"{fmt(itl.get('same_read_share'), 3)} in one read)  transit p50 "
            f"{fmt(tr.get('p50'), 3)} p99 {fmt(tr.get('p99'), 3)} ms  errors {r.get('errors')}",
            flush=True,
        )
        for m, n in (r.get("error_messages") or {}).items():
            print(f"    error x{n}: {m}")
    return out

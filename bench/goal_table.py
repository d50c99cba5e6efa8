"""compare.py's last table: each figure of issue 13's goal, its goal, met or not.

Called by `compare.main()` with everything the run measured (the dict it also
writes to `--json-out`); `rows` turns it into one row per goal figure (also
put in the JSON, under "goals"), `print_table` prints them. A figure the run
did not measure (a phase skipped, a run that failed) is "-" and "not measured".
Every figure is of the gateway with the unlimited key (target `gateway`),
against the bare relay or the simulator alone ("direct") in the same run.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

MIB = 1024.0
FLAT_MIB = 2.0  # "flat after they end": wave 2 ends at most this above wave 1
STREAMS_GOAL = 1000


@dataclass
class Goal:
    figure: str
    value: float | None
    unit: str
    goal: str  # as printed, e.g. ">= 1.0"; "" for a figure shown for reference only
    met: bool | None  # None: not measured (value None), or a reference figure
    note: str = ""


def _get(d: object, *path: str) -> float | None:
    for k in path:
        if not isinstance(d, dict):
            return None
        d = d.get(k)
    return d if isinstance(d, (int, float)) and not isinstance(d, bool) else None


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else a / b


def _diff(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def _at_least(figure: str, v: float | None, unit: str, bound: float, note: str = "") -> Goal:
    return Goal(figure, v, unit, f">= {bound:g}", None if v is None else v >= bound, note)


def _at_most(figure: str, v: float | None, unit: str, bound: float, note: str = "") -> Goal:
    return Goal(figure, v, unit, f"<= {bound:g}", None if v is None else v <= bound, note)


def _under(figure: str, v: float | None, unit: str, bound: float, note: str = "") -> Goal:
    return Goal(figure, v, unit, f"< {bound:g}", None if v is None else v < bound, note)


def _mib(kb: float | None) -> float | None:
    return None if kb is None else kb / MIB


def throughput_rows(runs: dict) -> list[Goal]:
    out = []
    for scn, what in (("nonstream64", "requests/s"), ("stream64", "streams/s")):
        g, r = (_get(runs, scn, t, "requests_per_s") for t in ("gateway", "relay"))
        label = "(a) non-stream" if scn == "nonstream64" else "(b) stream"
        out.append(
            _at_least(
                f"{label} {what}, 64 clients, gateway / relay",
                _ratio(g, r),
                "x",
                1.0,
                f"{g or 0:,.0f} vs {r or 0:,.0f}/s" if g and r else "",
            )
        )
    for scn, label in (("nonstream64", "(a) non-stream"), ("stream64", "(b) stream")):
        g, r = (_get(runs, scn, t, "latency_ms", "p99") for t in ("gateway", "relay"))
        out.append(
            _at_most(
                f"{label} p99 latency, 64 clients, gateway / relay",
                _ratio(g, r),
                "x",
                1.0,
                f"{g:.1f} vs {r:.1f} ms" if g is not None and r is not None else "",
            )
        )
    for scn, label in (("nonstream64", "(a) non-stream"), ("stream64", "(b) stream")):
        g = _get(runs, scn, "gateway", "loop_lag_ms", "p99_ms")
        r = _get(runs, scn, "relay", "loop_lag_ms", "p99_ms")
        out.append(
            _under(
                f"{label} loop lag p99, 64 clients, worker",
                g,
                "ms",
                5.0,
                f"relay (control) {r:.1f} ms" if r is not None else "",
            )
        )
    return out


def added_rows(runs: dict, itl: dict | None) -> list[Goal]:
    ns = _diff(
        _get(runs, "nonstream1", "gateway", "latency_ms", "p50"),
        _get(runs, "nonstream1", "direct", "latency_ms", "p50"),
    )
    ttft = _diff(
        _get(runs, "stream1", "gateway", "ttft_ms", "p50"),
        _get(runs, "stream1", "direct", "ttft_ms", "p50"),
    )
    itl = itl or {}
    g_itl, d_itl = (_get(itl, t, "itl_ms", "p50") for t in ("gateway", "direct"))
    r_itl = _get(itl, "relay", "itl_ms", "p50")
    tps = _get(itl, "tokens_per_second")
    note = ""
    if g_itl is not None and d_itl is not None:
        note = f"gap {g_itl:.3f} vs {d_itl:.3f} ms, paced at {tps or 0:g} tokens/s"
        if r_itl is not None:
            note += f"; relay adds {r_itl - d_itl:+.3f}"
    g_tr, d_tr = (_get(itl, t, "transit_ms", "p50") for t in ("gateway", "direct"))
    r_tr = _get(itl, "relay", "transit_ms", "p50")
    tr_note = ""
    if g_tr is not None and d_tr is not None:
        tr_note = f"transit {g_tr:.3f} vs {d_tr:.3f} ms"
        if r_tr is not None:
            tr_note += f"; relay adds {r_tr - d_tr:+.3f}, gateway - relay {g_tr - r_tr:+.3f}"
    return [
        _under("added p50 latency, 1 client, non-stream, vs direct", ns, "ms", 0.3),
        _under("added p50 TTFT, 1 client, vs direct", ttft, "ms", 0.3),
        _under(
            "added p50 inter-token latency, 1 client, vs direct",
            _diff(g_itl, d_itl),
            "ms",
            0.05,
            note,
        ),
        _under(
            "added p50 per-token transit, 1 client, vs direct",
            _diff(g_tr, d_tr),
            "ms",
            0.05,
            tr_note,
        ),
        Goal(
            "  (reference) mean gap, unpaced 1-client stream, gateway - direct",
            _diff(*(_get(runs, "stream1", t, "itl_ms", "mean") for t in ("gateway", "direct"))),
            "ms",
            "",
            None,
            "time per token when the simulator does not pace (most gaps 0: bursts)",
        ),
    ]


def memory_rows(res: dict) -> list[Goal]:
    idle = res.get("gateway_rss_idle") or {}
    out = [
        _under("RSS idle, worker", _mib(_get(idle, "workers_kb")), "MiB", 45),
        _under(
            "RSS idle, worker + counting process",
            _mib(_sum(idle)),
            "MiB",
            45,
            _counting_note(idle),
        ),
    ]
    mem = res.get("memory") or {}
    waves = mem.get("waves") or []
    streams = mem.get("streams")
    if waves:
        # the wave that reached the highest worker RSS with every stream open
        full = [w for w in waves if w.get("rss_at_peak_open")]
        at = max(full or waves, key=lambda w: _get(w, "rss_at_peak_open", "workers_kb") or 0)
        split = at.get("rss_at_peak_open") or at.get("rss_peak") or {}
        all_open = bool(full) and streams == STREAMS_GOAL
        caveat = "" if all_open else f"; at {streams} streams, not {STREAMS_GOAL}: not the goal's"
        if not full:
            caveat += "; not all open at once: the peak"
        w_kb, sum_kb = _get(split, "workers_kb"), _sum(split)
        out.append(
            Goal(
                f"RSS at {streams} open streams, worker",
                _mib(w_kb),
                "MiB",
                "< 100",
                None if w_kb is None or not all_open else w_kb / MIB < 100,
                "peak of the waves" + caveat,
            )
        )
        out.append(
            Goal(
                f"RSS at {streams} open streams, worker + counting process",
                _mib(sum_kb),
                "MiB",
                "< 100",
                None if sum_kb is None or not all_open else sum_kb / MIB < 100,
                _counting_note(split) + caveat,
            )
        )
    else:
        out.append(Goal(f"RSS at {STREAMS_GOAL} open streams", None, "MiB", "< 100", None))
    if len(waves) >= 2:
        first, last = waves[0].get("rss_5s_after") or {}, waves[-1].get("rss_5s_after") or {}
        for label, a, b in (
            ("worker", _get(first, "workers_kb"), _get(last, "workers_kb")),
            ("worker + counting process", _sum(first), _sum(last)),
        ):
            grew = _mib(_diff(b, a))
            out.append(
                _at_most(
                    f"RSS growth 5 s after wave {len(waves)} vs wave 1, {label}",
                    grew,
                    "MiB",
                    FLAT_MIB,
                    f"flat after the streams end: {_mib(a) or 0:.1f} -> {_mib(b) or 0:.1f} MiB",
                )
            )
    else:
        out.append(Goal("RSS flat after the streams end", None, "MiB", f"<= {FLAT_MIB:g}", None))
    return out


def _sum(split: dict) -> float | None:
    w = _get(split, "workers_kb")
    return None if w is None else w + (_get(split, "token_service_kb") or 0)


def _counting_note(split: dict) -> str:
    c = _get(split, "token_service_kb")
    return "" if c is None else f"counting process {c / MIB:.1f} MiB of it"


def workers_rows(workers: dict | None, cores: int | None) -> list[Goal]:
    w = workers or {}
    c1 = _get(w, "one", "workers_cpu_ms_per_request")
    c2 = _get(w, "two", "workers_cpu_ms_per_request")
    r1, r2 = _get(w, "one", "requests_per_s"), _get(w, "two", "requests_per_s")
    note = (
        f"worker CPU per request {c1:.3f} ms (1 worker) vs {c2:.3f} ms (2, summed)"
        if c1 and c2
        else ""
    )
    if c1 and c2 and 2 * c1 / c2 > 2.1:
        note += "; above 2: the runs saw different machine load, not a real gain"
    return [
        _at_least(
            "--workers 2 implied scaling, 2 x cpu1 / cpu2",
            _ratio(2 * c1, c2) if c1 else None,
            "x",
            1.8,
            note,
        ),
        Goal(
            "  (reference) --workers 2 requests/s / --workers 1",
            _ratio(r2, r1),
            "x",
            "",
            None,
            f"{r2:,.0f} vs {r1:,.0f}/s; bounded by this machine's {cores} cores"
            if r1 and r2
            else "",
        ),
    ]


def rows(res: dict) -> list[Goal]:
    runs = res.get("runs") or {}
    return (
        throughput_rows(runs)
        + added_rows(runs, res.get("itl"))
        + memory_rows(res)
        + workers_rows(res.get("workers"), _get(res, "machine", "cpus"))
    )


def as_json(goals: list[Goal]) -> list[dict]:
    return [asdict(g) for g in goals]


def verdict(g: Goal) -> str:
    if g.value is None:
        return "not measured"
    if g.met is None:
        return "reference" if not g.goal else "not judged"
    return "met" if g.met else "NOT MET"


def print_table(goals: list[Goal]) -> None:
    w = max(len(g.figure) for g in goals)
    met = sum(g.met is True for g in goals)
    missed = sum(g.met is False for g in goals)
    print(f"\nissue 13 goals: {met} met, {missed} not met, {len(goals) - met - missed} other")
    print(f"  {'figure':{w}}  {'value':>9}  {'goal':<10} {'verdict':<13} note")
    for g in goals:
        if g.value is None:
            value = "-"
        else:
            value = f"{g.value:,.3f}" if abs(g.value) < 10 else f"{g.value:,.1f}"
        goal = f"{g.goal} {g.unit}" if g.goal else "-"
        print(f"  {g.figure:{w}}  {value:>9}  {goal:<10} {verdict(g):<13} {g.note}".rstrip())

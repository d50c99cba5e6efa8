"""Where a server's CPU per request goes, by stage, from a py-spy profile.

    py-spy record -r 400 -d 8 -f raw -o gw.txt -p PID     # under bench/loadgen.py load
    python bench/stage_profile.py gw.txt --cpu-ms 0.30 [--relay relay.txt --relay-cpu-ms 0.24]

Every sample of the event loop's thread (stacks that start at `<module>`) is
given to the first stage, in the order of `STAGES`, whose pattern one of its
frames matches (innermost frames first, so a log line written inside the meter
counts as the log line). Samples of the SQLite writer thread that were at work
(not waiting in its queue) are a stage of their own; idle samples of other
threads are left out. With `--cpu-ms` (the server CPU per request that
compare.py printed for the same load) each stage's share becomes microseconds
per request. `--relay` does the same for bench/bare_relay.py beside it.
"""

from __future__ import annotations

import argparse
import re
from collections import Counter

# (stage, pattern over "function (file)") in the order they are tried, innermost frame first
STAGES: list[tuple[str, re.Pattern[str]]] = [
    (name, re.compile(pattern))
    for name, pattern in [
        ("log line", r"request_line|log_request|LoopBatchedBytesLogger|structlog"),
        ("metrics", r"observability/metrics|prometheus_client"),
        ("limits", r"proxy/auth/(admission|limits|redis_limits|estimate|budgets)"),
        ("metering (meter, journal, usage batch)", r"proxy/metering|proxy/usage"),
        ("auth (key check)", r"proxy/auth/|hash_key|key_digest"),
        (
            "body parse and validation",
            r"read_json_body|read_raw_body|parse_chat|check_chat|"
            r"chat_params|json_params|BaseRequest.read|web_request",
        ),
        (
            "upstream client (request, answer, body)",
            r"proxy/providers/http1|upstream_http|"
            r"aiohttp/client|aiohttp/connector|ClientSession|ClientResponse|ClientRequest|"
            r"replies.py|proxy/providers/openai/provider",
        ),
        (
            "response relay (write to the client)",
            r"web_response|http_writer|relay_stream|"
            r"streaming.py",
        ),
        ("routing, headers, handler", r"proxy/api|proxy/routing|proxy/http|relay \(bare_relay"),
        (
            "accept, parse, dispatch (aiohttp server)",
            r"web_protocol|web_app|web_middlewares|"
            r"web_urldispatcher|http_parser|proxy/server/protocol|base_protocol",
        ),
    ]
]
OTHER = "event loop and the rest"
SQLITE_AT_WORK = "_connection_worker_thread (aiosqlite/core.py:63)"


def stages(path: str) -> tuple[Counter[str], int]:
    counts: Counter[str] = Counter()
    total = 0
    for line in open(path):
        stack, _, n = line.rstrip().rpartition(" ")
        if not stack:
            continue
        samples = int(n)
        if SQLITE_AT_WORK in stack:
            counts["SQLite writer thread (at work)"] += samples
            total += samples
            continue
        if not stack.startswith("<module>"):
            continue
        total += samples
        frames = stack.split(";")[::-1]
        counts[_stage(frames)] += samples
    return counts, total


def _stage(frames: list[str]) -> str:
    for frame in frames:
        for name, pattern in STAGES:
            if pattern.search(frame):
                return name
    return OTHER


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("profile")
    p.add_argument("--cpu-ms", type=float, help="server CPU per request for that load")
    p.add_argument("--relay", help="a profile of bare_relay.py under the same load")
    p.add_argument("--relay-cpu-ms", type=float)
    a = p.parse_args()
    runs = [("gateway", a.profile, a.cpu_ms)]
    if a.relay:
        runs.append(("relay", a.relay, a.relay_cpu_ms))
    tables = {name: stages(path) for name, path, _ in runs}
    names = [name for name, _ in STAGES] + [OTHER, "SQLite writer thread (at work)"]
    head = f"{'stage':44s}" + "".join(f"{name:>22s}" for name, _, _ in runs)
    print(head)
    for stage in names:
        cells = []
        for name, _, cpu in runs:
            counts, total = tables[name]
            share = counts[stage] / total if total else 0.0
            us = f" {share * cpu * 1000:6.1f} us" if cpu else ""
            cells.append(f"{share * 100:6.1f} %{us}".rjust(22))
        print(f"{stage:44s}" + "".join(cells))
    print("samples: " + ", ".join(f"{n} {tables[n][1]}" for n, _, _ in runs))


if __name__ == "__main__":
    main()

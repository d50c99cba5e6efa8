"""Micro-benchmark of the request checks: what validation adds to each request.

Times, per body, in microseconds (best of several rounds):

* `check_chat` (`proxy.api.chat_params`) on a typical chat body: three
  messages (system, user, assistant), one function tool, a `json_schema`
  `response_format`, and a few sampling parameters;
* the same body's whole way in: `orjson.loads`, the nesting check of
  `proxy.http.bodies` and `parse_chat`, next to `orjson.loads` alone;
* a 100-message conversation (past 254 brackets, so the nesting check encodes
  it once more) and an embeddings body of 16 strings.

Figures only; nothing here asserts a speed.

    python bench/validate_bench.py [--rounds R] [--number N]
"""

from __future__ import annotations

import argparse
import sys
import timeit
from pathlib import Path
from typing import Any

import orjson

ROOT = Path(__file__).resolve().parent.parent

TYPICAL: dict[str, Any] = {
    "model": "prometheus-core",
    "messages": [
        {"role": "system", "content": "You are a helpful assistant. Answer briefly."},
        {"role": "user", "content": "What is the weather in Paris today, and should I go out?"},
        {"role": "assistant", "content": "Let me check the weather for you."},
    ],
    "tools": [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "The current weather in a city.",
                "parameters": {
                    "type": "object",
                    "properties": {
                        "city": {"type": "string"},
                        "unit": {"type": "string", "enum": ["c", "f"]},
                    },
                    "required": ["city"],
                },
            },
        }
    ],
    "response_format": {
        "type": "json_schema",
        "json_schema": {
            "name": "answer",
            "schema": {"type": "object", "properties": {"text": {"type": "string"}}},
        },
    },
    "temperature": 0.7,
    "top_p": 1,
    "max_tokens": 256,
    "stream": True,
    "stream_options": {"include_usage": True},
}

CONVERSATION: dict[str, Any] = {
    "model": "prometheus-core",
    "messages": [
        {"role": "user" if i % 2 == 0 else "assistant", "content": f"Turn {i}: " + "word " * 40}
        for i in range(100)
    ],
}

EMBEDDINGS: dict[str, Any] = {
    "model": "prometheus-atlas",
    "input": [f"document number {i} about the gateway" for i in range(16)],
    "dimensions": 256,
}


def best_us(fn: Any, number: int, rounds: int) -> float:
    return min(timeit.repeat(fn, number=number, repeat=rounds)) / number * 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--number", type=int, default=20_000)
    args = parser.parse_args()
    try:  # prefer the installed package; fall back to the source tree
        import proxy  # noqa: F401 - only whether it imports matters here
    except ImportError:
        sys.path.insert(0, str(ROOT))
    from proxy.api.chat import parse_chat
    from proxy.api.chat_params import check_chat
    from proxy.api.embeddings import parse_embeddings
    from proxy.http.bodies import check_depth

    def way_in(raw: bytes) -> None:
        body = orjson.loads(raw)
        check_depth(raw, body)
        parse_chat(body)

    typical_raw = orjson.dumps(TYPICAL)
    long_raw = orjson.dumps(CONVERSATION)
    emb_raw = orjson.dumps(EMBEDDINGS)
    n, r = args.number, args.rounds
    rows = [
        ("check_chat, typical body", best_us(lambda: check_chat(TYPICAL), n, r)),
        ("orjson.loads alone, typical body", best_us(lambda: orjson.loads(typical_raw), n, r)),
        ("loads + nesting + parse_chat, typical", best_us(lambda: way_in(typical_raw), n, r)),
        ("check_chat, 100 messages", best_us(lambda: check_chat(CONVERSATION), n // 10, r)),
        ("loads + nesting + parse_chat, 100 msgs", best_us(lambda: way_in(long_raw), n // 10, r)),
        (
            "parse_embeddings, 16 strings",
            best_us(lambda: parse_embeddings(orjson.loads(emb_raw)), n, r),
        ),
    ]
    print(f"typical chat body: {len(typical_raw)} bytes; 100 messages: {len(long_raw)} bytes")
    for name, us in rows:
        print(f"{name:42s} {us:8.2f} µs")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

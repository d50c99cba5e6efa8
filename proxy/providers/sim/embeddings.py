"""The simulator's embeddings: deterministic unit vectors of the requested size.

Served in-process by `proxy.providers.sim.provider` and over HTTP by
`proxy.providers.sim.server`. A vector depends only on its input, so the same
text always gets the same embedding; usage counts words and punctuation.
"""

from __future__ import annotations

import base64
import hashlib
import math
import sys
from array import array
from typing import Any

import orjson

from proxy.providers.sim.engine import PIECE, SimError

DEFAULT_DIMENSIONS = 1536


def _vector(seed: bytes, dims: int) -> array[float]:
    raw = array("h", hashlib.shake_256(seed).digest(dims * 2))
    norm = math.sqrt(sum(v * v for v in raw)) or 1.0
    return array("f", (v / norm for v in raw))


def embed(body: dict[str, Any], model: str) -> tuple[bytes, int]:
    """The reply's bytes and the input tokens it reports."""
    inp = body.get("input")
    if isinstance(inp, str):
        items: list[Any] = [inp]
    elif isinstance(inp, list) and inp and all(isinstance(x, int) for x in inp):
        items = [inp]
    elif isinstance(inp, list) and inp:
        items = inp
    else:
        raise SimError(
            "'input' must be a non-empty string, array of strings or token arrays", "input"
        )
    dims = body.get("dimensions") or DEFAULT_DIMENSIONS
    if not isinstance(dims, int) or not 1 <= dims <= 8192:
        raise SimError("'dimensions' must be an integer between 1 and 8192", "dimensions")
    fmt = body.get("encoding_format") or "float"
    if fmt not in ("float", "base64"):
        raise SimError("'encoding_format' must be 'float' or 'base64'", "encoding_format")
    data, tokens = [], 0
    for i, item in enumerate(items):
        if isinstance(item, str):
            seed, tokens = item.encode(), tokens + max(1, len(PIECE.findall(item)))
        elif isinstance(item, list) and all(isinstance(x, int) for x in item):
            seed, tokens = orjson.dumps(item), tokens + len(item)
        else:
            raise SimError(f"'input[{i}]' must be a string or an array of token ids", "input")
        vec = _vector(seed, dims)
        if fmt == "base64":
            if sys.byteorder != "little":
                vec.byteswap()
            value: Any = base64.b64encode(vec.tobytes()).decode()
        else:
            value = vec.tolist()
        data.append({"object": "embedding", "index": i, "embedding": value})
    return orjson.dumps(
        {
            "object": "list",
            "data": data,
            "model": model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
    ), tokens

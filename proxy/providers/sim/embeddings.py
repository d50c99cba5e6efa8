"""The simulator's embeddings: deterministic unit vectors of the requested size.

Served in-process by `proxy.providers.sim.provider` and over HTTP by
`proxy.providers.sim.server`. A vector depends only on its input, so the same
text always gets the same embedding; usage counts words and punctuation.
At OpenAI's limits (2,048 inputs of 3,072 dimensions) a reply is ~135 MB of
JSON and takes a second or more to build, so both callers build it on a
worker thread, off the event loop.
"""

from __future__ import annotations

import base64
import hashlib
import math
import sys
from array import array
from typing import Any

import orjson

from proxy.providers.sim.limits import validate_embeddings


def _vector(seed: bytes, dims: int) -> array[float]:
    raw = array("h", hashlib.shake_256(seed).digest(dims * 2))
    norm = math.sqrt(sum(v * v for v in raw)) or 1.0
    return array("f", (v / norm for v in raw))


def embed(body: dict[str, Any], model: str) -> tuple[bytes, int]:
    """The reply's bytes and the input tokens it reports; `SimError` for a request
    OpenAI would refuse (`proxy.providers.sim.limits`)."""
    items, counts, dims = validate_embeddings(body)
    base64_format = body.get("encoding_format") == "base64"
    data = []
    vectors: dict[bytes, array[float]] = {}  # the same input twice is computed once
    for i, item in enumerate(items):
        seed = item.encode() if type(item) is str else orjson.dumps(item)
        vec = vectors.get(seed)
        if vec is None:
            vec = vectors[seed] = _vector(seed, dims)
        if base64_format:
            if sys.byteorder != "little":
                vec = array("f", vec)
                vec.byteswap()
            value: Any = base64.b64encode(vec.tobytes()).decode()
        else:
            value = vec.tolist()
        data.append({"object": "embedding", "index": i, "embedding": value})
    tokens = sum(counts)
    return orjson.dumps(
        {
            "object": "list",
            "data": data,
            "model": model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
    ), tokens

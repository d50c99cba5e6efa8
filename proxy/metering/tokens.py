"""Local token counting with tiktoken, from the encodings this package carries.

Called only where an upstream reported no usage (a stream cut short, an
upstream that ignores `include_usage`). The encoding files ship in
`proxy/metering/tokenizer_data/` and are checked against tiktoken's published sha256
before use; nothing is downloaded. An encoding costs ~75 MiB and ~0.6 s to
load, so it is loaded lazily, once per process. A gateway worker asks the
machine's counting process (`proxy.metering.token_service`) first and loads
an encoding itself, on a thread, only when that process does not answer.
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from proxy.metering import token_service
from proxy.metering.images import image_part_tokens

if TYPE_CHECKING:
    import tiktoken

DATA_DIR = Path(__file__).with_name("tokenizer_data")

# name -> (sha256 of the .tiktoken file, special tokens, split pattern); the
# hashes and patterns are tiktoken's own (tiktoken_ext/openai_public.py, MIT).
_O200K_PATTERN = "|".join(
    [
        r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
        r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
        r"""\p{N}{1,3}""",
        r""" ?[^\s\p{L}\p{N}]+[\r\n/]*""",
        r"""\s*[\r\n]+""",
        r"""\s+(?!\S)""",
        r"""\s+""",
    ]
)
# tiktoken's pattern, kept verbatim on one line so that it can be compared
_CL100K_PATTERN = r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+|\s++$|\s*[\r\n]|\s+(?!\S)|\s"""  # noqa: E501

ENCODINGS: dict[str, tuple[str, dict[str, int], str]] = {
    "o200k_base": (
        "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d",
        {"<|endoftext|>": 199999, "<|endofprompt|>": 200018},
        _O200K_PATTERN,
    ),
    "cl100k_base": (
        "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7",
        {
            "<|endoftext|>": 100257,
            "<|fim_prefix|>": 100258,
            "<|fim_middle|>": 100259,
            "<|fim_suffix|>": 100260,
            "<|endofprompt|>": 100276,
        },
        _CL100K_PATTERN,
    ),
}

_cache: dict[str, tiktoken.Encoding] = {}
_lock = threading.Lock()


def get_encoding(name: str = "o200k_base") -> tiktoken.Encoding:
    """Load (once) and return a bundled encoding; raises KeyError for unknown names."""
    enc = _cache.get(name)
    if enc is not None:
        return enc
    sha256, specials, pattern = ENCODINGS[name]
    with _lock:
        enc = _cache.get(name)
        if enc is None:
            # imported here: a worker whose keys have no limits never counts (~1.3 MiB)
            import tiktoken
            from tiktoken.load import load_tiktoken_bpe

            ranks = load_tiktoken_bpe(str(DATA_DIR / f"{name}.tiktoken"), expected_hash=sha256)
            enc = tiktoken.Encoding(
                name=name, pat_str=pattern, mergeable_ranks=ranks, special_tokens=specials
            )
            # The Rust core holds its own copy of the ranks; the Python dict the
            # Encoding keeps (only for pickling) is ~27 MiB of 200k small objects.
            enc._mergeable_ranks = {}
            del ranks
            _cache[name] = enc
    return enc


def count_text(text: str, encoding: str = "o200k_base") -> int:
    if not text:
        return 0
    return len(get_encoding(encoding).encode_ordinary(text))


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            p["text"]
            for p in content
            if isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
        )
    return ""


def _image_tokens(content: Any) -> int:
    """Image parts by OpenAI's tile formula (`proxy.metering.images`)."""
    if not isinstance(content, list):
        return 0
    return sum(
        image_part_tokens(p)
        for p in content
        if isinstance(p, dict) and p.get("type") == "image_url"
    )


def _json_text(value: Any) -> str:
    """`value` as JSON text, or "" when orjson cannot encode it (nested too deep)."""
    import orjson

    try:
        return orjson.dumps(value).decode()
    except orjson.JSONEncodeError:
        return ""


def count_chat_input(body: Any, encoding: str = "o200k_base") -> int:
    """Prompt tokens of a chat request, by OpenAI's published per-message rule
    (3 tokens per message, 1 per name, 3 to prime the reply), plus tool
    definitions serialised as JSON, plus image parts by the tile formula.

    Total on any JSON value: only what is text counts, nothing raises (the
    meter calls it on bodies the upstream may have refused)."""
    enc = get_encoding(encoding)
    total = 3
    if not isinstance(body, dict):
        return total
    messages = body.get("messages")
    for msg in messages if isinstance(messages, list) else ():
        if not isinstance(msg, dict):
            continue
        total += 3
        content = msg.get("content")
        total += len(enc.encode_ordinary(_content_text(content))) + _image_tokens(content)
        name = msg.get("name")
        if isinstance(name, str) and name:
            total += 1 + len(enc.encode_ordinary(name))
        if msg.get("tool_calls"):
            total += len(enc.encode_ordinary(_json_text(msg["tool_calls"])))
    if body.get("tools"):
        total += len(enc.encode_ordinary(_json_text(body["tools"])))
    return total


def count_embedding_input(inp: Any, encoding: str = "o200k_base") -> int:
    """Input tokens of an embeddings `input`: a string, token ids, or a list of
    strings or token-id lists. Total on any JSON value: other items count 0."""
    if isinstance(inp, str):
        return count_text(inp, encoding)
    if not isinstance(inp, list):
        return 0
    total = 0
    for item in inp:
        if isinstance(item, str):
            total += count_text(item, encoding)
        elif type(item) is int:  # a token id of a single input
            total += 1
        elif isinstance(item, list):  # one input's token ids
            total += sum(1 for t in item if type(t) is int)
    return total


async def count_locally(
    body: dict[str, Any], output_text: str, encoding: str = "o200k_base"
) -> tuple[int, int]:
    """(input, output) tokens of a chat exchange: by the machine's counting process
    (`token_service`) when it answers, else on a worker thread of this process."""

    def work() -> tuple[int, int]:
        return count_chat_input(body, encoding), count_text(output_text, encoding)

    counted = await token_service.ask("chat", body=body, text=output_text, encoding=encoding)
    if counted is not None:
        return counted[0], counted[1]
    return await asyncio.to_thread(work)


async def count_embedding_locally(inp: Any, encoding: str = "o200k_base") -> int:
    """Input tokens of an embeddings request: by the counting process when it
    answers, else on a worker thread (loading an encoding holds the GIL for
    ~0.1-0.2 s at a stretch, which is why the process exists)."""
    counted = await token_service.ask("embedding", input=inp, encoding=encoding)
    if counted is not None:
        return int(counted)
    return await asyncio.to_thread(count_embedding_input, inp, encoding)

"""An OpenAI-compatible upstream's answer, turned into what the client gets.

`JsonChatReply`: one chat completion, relayed byte for byte with only the
top-level `model` replaced (`_fastpath.rewrite_model`), usage read from its
own small slice; `EmbeddingsReply`: the embeddings list with `model` set;
`SseChatReply`: the SSE stream through `_fastpath.SseRewriter` (model
rewritten per event, first content noted, usage picked out and dropped again
when the client did not ask for it), piece by piece as it arrives.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson

from _fastpath import SseRewriter, encode_alias, rewrite_model
from proxy.providers.base import Reply, UpstreamTimeout, UpstreamUnavailable, Usage

_ALIAS_JSON: dict[str, bytes] = {}  # alias -> its JSON string token


def alias_json(alias: str) -> bytes:
    token = _ALIAS_JSON.get(alias)
    if token is None:
        token = _ALIAS_JSON[alias] = encode_alias(alias)
    return token


def usage_of(usage: Any) -> Usage | None:
    """OpenAI's `usage` object as counts, or None when it holds no usable count."""
    if not isinstance(usage, dict):
        return None
    pin, pout = usage.get("prompt_tokens"), usage.get("completion_tokens")
    if not isinstance(pin, int):
        return None
    return Usage(pin, pout if isinstance(pout, int) else 0)


def message_text(choice: Any) -> str:
    msg = choice.get("message") if isinstance(choice, dict) else None
    if not isinstance(msg, dict):
        return ""
    parts = [msg.get("content") or "", msg.get("refusal") or ""]
    for call in msg.get("tool_calls") or ():
        parts.append(((call or {}).get("function") or {}).get("arguments") or "")
    return "".join(p for p in parts if isinstance(p, str))


async def read_all(resp: aiohttp.ClientResponse) -> bytes:
    try:
        return await resp.read()
    except TimeoutError as exc:
        raise UpstreamTimeout() from exc
    except aiohttp.ClientError as exc:
        raise UpstreamUnavailable(str(exc) or type(exc).__name__) from exc
    finally:
        resp.release()


def _json_object(raw: bytes) -> dict[str, Any]:
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise UpstreamUnavailable(f"bad reply ({exc})") from None
    if not isinstance(data, dict):
        raise UpstreamUnavailable("bad reply (not a JSON object)")
    return data


class _HttpReply(Reply):
    def __init__(self, resp: aiohttp.ClientResponse, alias: str) -> None:
        self._resp = resp
        self._alias = alias
        self.status = resp.status

    def close(self) -> None:
        self._resp.close()


class JsonChatReply(_HttpReply):
    _text = ""

    async def body(self) -> bytes:
        raw = await read_all(self._resp)
        # Fast path: the upstream's bytes with only the top-level "model" replaced,
        # usage read from its own small slice; nothing else is parsed or re-encoded.
        fast = rewrite_model(raw, alias_json(self._alias))
        if fast is not None and fast[1] is not None:
            self.usage = usage_of(orjson.loads(fast[1]))
            if self.usage is not None:
                return fast[0]
        # Slow path: not one valid JSON object (a parser gives the verdict), or no
        # usable usage (the text must then be counted locally).
        data = _json_object(raw)
        self.usage = usage_of(data.get("usage"))
        if self.usage is None:
            self._text = "".join(message_text(c) for c in data.get("choices") or ())
        if fast is None:
            data["model"] = self._alias
            return orjson.dumps(data)
        return fast[0]

    def text(self) -> str:
        return self._text


class EmbeddingsReply(_HttpReply):
    async def body(self) -> bytes:
        data = _json_object(await read_all(self._resp))
        data["model"] = self._alias
        usage = data.get("usage")
        prompt = usage.get("prompt_tokens") if isinstance(usage, dict) else None
        if isinstance(prompt, int):
            self.usage = Usage(prompt, 0)
        return orjson.dumps(data)


class SseChatReply(_HttpReply):
    def __init__(self, resp: aiohttp.ClientResponse, alias: str, include_usage: bool) -> None:
        super().__init__(resp, alias)
        self._rewriter = SseRewriter(alias, include_usage)

    async def chunks(self) -> AsyncIterator[bytes]:
        rewriter = self._rewriter
        try:
            async for piece in self._resp.content.iter_any():
                out = rewriter.feed(piece)
                if self.first_content_at is None and rewriter.first_content:
                    self.first_content_at = time.perf_counter()
                if out:
                    if self.usage is None and rewriter.usage_json is not None:
                        self.usage = usage_of(orjson.loads(rewriter.usage_json))
                    if rewriter.done:
                        self._end()
                    yield out
        except TimeoutError as exc:
            raise UpstreamTimeout() from exc
        except aiohttp.ClientError as exc:
            raise UpstreamUnavailable(str(exc) or type(exc).__name__) from exc
        tail = rewriter.finish()
        self._end()
        if tail:
            yield tail

    def _end(self) -> None:
        if self.ended:
            return
        self.ended = True
        usage_json = self._rewriter.usage_json
        self.complete = self._rewriter.done or usage_json is not None
        if self.usage is None and usage_json is not None:
            self.usage = usage_of(orjson.loads(usage_json))

    def text(self) -> str:
        return self._rewriter.text()

"""An OpenAI-compatible upstream's answer, turned into what the client gets.

`JsonChatReply`: one chat completion, relayed byte for byte with only the
top-level `model` replaced (`_fastpath.rewrite_model`), usage read from its
own small slice; `EmbeddingsReply`: the embeddings list with `model` set;
`SseChatReply`: the SSE stream through `_fastpath.SseRewriter` (model
rewritten per event, first content noted, usage picked out and dropped again
when the client did not ask for it), piece by piece as it arrives.

What the upstream sends is never trusted: a reply over `max_reply_mb`, an SSE
event over `max_event_kb` or a reply that is not JSON is a bad reply, and a
usage report whose counts are not sane (negative, not integers, 2^31 or more,
not JSON) is no report: the meter then counts locally.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from time import perf_counter
from typing import Any

import aiohttp
import orjson

from _fastpath import SseRewriter, encode_alias, rewrite_model
from proxy.config.model import Deployment
from proxy.providers.base import (
    Reply,
    UpstreamAnswer,
    UpstreamBadReply,
    UpstreamTimeout,
    UpstreamUnavailable,
    Usage,
    sane_count,
)

_ALIAS_JSON: dict[str, bytes] = {}  # alias -> its JSON string token
MIB = 1024 * 1024


def alias_json(alias: str) -> bytes:
    token = _ALIAS_JSON.get(alias)
    if token is None:
        token = _ALIAS_JSON[alias] = encode_alias(alias)
    return token


def _detail(usage: dict[str, Any], details: str, name: str) -> int:
    found = usage.get(details)
    value = found.get(name) if isinstance(found, dict) else None
    return value if sane_count(value) else 0


def usage_of(usage: Any) -> Usage | None:
    """OpenAI's `usage` object as counts, or None when it holds no sane count."""
    if not isinstance(usage, dict):
        return None
    pin, pout = usage.get("prompt_tokens"), usage.get("completion_tokens", 0)
    if not sane_count(pin) or not (pout is None or sane_count(pout)):
        return None
    return Usage(
        pin,
        pout or 0,
        _detail(usage, "prompt_tokens_details", "cached_tokens"),
        _detail(usage, "completion_tokens_details", "reasoning_tokens"),
    )


def usage_of_json(raw: bytes) -> Usage | None:
    try:
        return usage_of(orjson.loads(raw))
    except orjson.JSONDecodeError:
        return None


def message_text(choice: Any) -> str:
    msg = choice.get("message") if isinstance(choice, dict) else None
    if not isinstance(msg, dict):
        return ""
    parts = [msg.get("content") or "", msg.get("refusal") or ""]
    for call in msg.get("tool_calls") or ():
        fn = call.get("function") if isinstance(call, dict) else None
        parts.append(fn.get("arguments") or "" if isinstance(fn, dict) else "")
    return "".join(p for p in parts if isinstance(p, str))


def client_errors(exc: BaseException) -> Exception:
    """The upstream exception a reply raises for an aiohttp failure."""
    if isinstance(exc, asyncio.TimeoutError):
        return UpstreamTimeout(str(exc) or "timed out")
    return UpstreamUnavailable(str(exc) or type(exc).__name__)


async def read_all(resp: UpstreamAnswer, limit: int) -> bytes:
    """The whole body, or `UpstreamBadReply` past `limit` bytes."""
    try:
        if resp.content_length is not None and resp.content_length > limit:
            raise UpstreamBadReply(f"reply of {resp.content_length} bytes is over the cap")
        pieces: list[bytes] = []
        size = 0
        async for chunk in resp.content.iter_any():
            size += len(chunk)
            if size > limit:
                raise UpstreamBadReply(f"reply over the cap of {limit} bytes")
            pieces.append(chunk)
        return pieces[0] if len(pieces) == 1 else b"".join(pieces)
    except (TimeoutError, aiohttp.ClientError) as exc:
        raise client_errors(exc) from exc
    finally:
        resp.release()


async def pieces_until_first_token(
    resp: UpstreamAnswer, deployment: Deployment, reply: Reply
) -> AsyncIterator[bytes]:
    """The upstream's body piece by piece, the wait for each bounded by the
    deployment's `first_token_timeout_s` until `reply.first_content_at` is set
    (the translating replies' form of `SseChatReply`'s own loop)."""
    pieces = resp.content.iter_any().__aiter__()
    deadline = asyncio.get_running_loop().time() + deployment.first_token_timeout_s
    while reply.first_content_at is None:
        try:
            async with asyncio.timeout_at(deadline):
                piece = await pieces.__anext__()
        except StopAsyncIteration:
            return
        except TimeoutError:
            limit = deployment.first_token_timeout_s
            raise UpstreamTimeout(f"no first token within {limit} s") from None
        yield piece
    async for piece in pieces:
        yield piece


def _json_object(raw: bytes) -> dict[str, Any]:
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise UpstreamBadReply(f"not JSON ({exc})") from None
    if not isinstance(data, dict):
        raise UpstreamBadReply("not a JSON object")
    return data


def rate_limit_headers(resp: UpstreamAnswer) -> dict[str, str] | None:
    """The upstream's `x-ratelimit-*` headers, which the client's SDK reads too."""
    found = {k: v for k, v in resp.headers.items() if k.lower().startswith("x-ratelimit-")}
    return found or None


class _HttpReply(Reply):
    def __init__(self, resp: UpstreamAnswer, alias: str, deployment: Deployment) -> None:
        self._resp = resp
        self._alias = alias
        self._deployment = deployment
        self.status = resp.status
        self.client_headers = rate_limit_headers(resp)

    def _read(self) -> Any:
        return read_all(self._resp, int(self._deployment.max_reply_mb * MIB))

    def close(self) -> None:
        self._resp.close()


class JsonChatReply(_HttpReply):
    _text = ""

    async def body(self) -> bytes:
        raw = await self._read()
        # Fast path: the upstream's bytes with only the top-level "model" replaced,
        # usage read from its own small slice; nothing else is parsed or re-encoded.
        fast = rewrite_model(raw, alias_json(self._alias))
        if fast is not None and fast[1] is not None:
            self.usage = usage_of_json(fast[1])
            if self.usage is not None:
                return fast[0]
        # Slow path: not one valid JSON object (a parser gives the verdict), or no
        # usable usage (the text must then be counted locally).
        data = _json_object(raw)
        reported = data.get("usage")
        self.usage = usage_of(reported)
        if self.usage is None:
            self.usage_rejected = reported is not None
            self._text = "".join(message_text(c) for c in data.get("choices") or ())
        if fast is None:
            data["model"] = self._alias
            return orjson.dumps(data)
        return fast[0]

    def text(self) -> str:
        return self._text


class EmbeddingsReply(_HttpReply):
    async def body(self) -> bytes:
        data = _json_object(await self._read())
        data["model"] = self._alias
        usage = data.get("usage")
        prompt = usage.get("prompt_tokens") if isinstance(usage, dict) else None
        if sane_count(prompt):
            self.usage = Usage(prompt, 0)
        else:
            self.usage_rejected = usage is not None
        return orjson.dumps(data)


class SseChatReply(_HttpReply):
    def __init__(
        self,
        resp: UpstreamAnswer,
        alias: str,
        deployment: Deployment,
        include_usage: bool,
    ) -> None:
        super().__init__(resp, alias, deployment)
        self._rewriter = SseRewriter(alias, include_usage)
        self._event_cap = int(deployment.max_event_kb * 1024)
        self._unfinished = 0  # bytes fed since an event last came out whole

    async def chunks(self) -> AsyncIterator[bytes]:
        pieces = self._resp.content.iter_any().__aiter__()
        deadline = asyncio.get_running_loop().time() + self._deployment.first_token_timeout_s
        try:
            while self.first_content_at is None:  # until the first token: its own deadline
                try:
                    async with asyncio.timeout_at(deadline):
                        piece = await pieces.__anext__()
                except StopAsyncIteration:
                    break
                except TimeoutError:
                    limit = self._deployment.first_token_timeout_s
                    raise UpstreamTimeout(f"no first token within {limit} s") from None
                out = self._feed(piece)
                if out:
                    yield out
            else:
                async for piece in pieces:
                    out = self._feed(piece)
                    if out:
                        yield out
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise client_errors(exc) from exc
        tail = self._rewriter.finish()
        self._end()
        if tail:
            yield tail

    def _feed(self, piece: bytes) -> bytes:
        """One piece from the upstream through the rewriter: what to send on."""
        rewriter = self._rewriter
        out = rewriter.feed(piece)
        if self.first_content_at is None and rewriter.first_content:
            self.first_content_at = perf_counter()
        if not out:
            self._unfinished += len(piece)
            if self._unfinished > self._event_cap:
                raise UpstreamBadReply(f"an SSE event over {self._event_cap} bytes")
            return out
        self._unfinished = 0
        if self.usage is None and rewriter.usage_json is not None:
            self._take_usage(rewriter.usage_json)
        if rewriter.done:
            self._end()
        return out

    def _take_usage(self, raw: bytes) -> None:
        self.usage = usage_of_json(raw)
        self.usage_rejected = self.usage is None

    def _end(self) -> None:
        if self.ended:
            return
        self.ended = True
        usage_json = self._rewriter.usage_json
        self.complete = self._rewriter.done or usage_json is not None
        if self.usage is None and usage_json is not None:
            self._take_usage(usage_json)

    def text(self) -> str:
        return self._rewriter.text()

"""An Anthropic upstream's answer, as the `Reply` the handlers read.

`MessagesReply`: one Messages JSON reply, read whole (up to `max_reply_mb`)
and translated by `response.Completion`. `MessagesStreamReply`: the event
stream, piece by piece as it arrives through one `stream.StreamTranslator`
(events over `max_event_kb` are a bad reply). Both fill `usage` when
Anthropic reported a sane one, and `text()` with what the client was sent,
for the meter's local count otherwise.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from time import perf_counter

import aiohttp

from proxy.config.model import Deployment
from proxy.providers.anthropic.response import Completion
from proxy.providers.anthropic.stream import StreamTranslator
from proxy.providers.base import Reply, UpstreamAnswer
from proxy.providers.openai.replies import (
    MIB,
    client_errors,
    pieces_until_first_token,
    read_all,
)


class _HttpReply(Reply):
    def __init__(
        self,
        resp: UpstreamAnswer,
        alias: str,
        deployment: Deployment,
        json_tool: str | None,
    ) -> None:
        self._resp = resp
        self._alias = alias
        self._deployment = deployment
        self._json_tool = json_tool
        self.status = resp.status

    def close(self) -> None:
        self._resp.close()


class MessagesReply(_HttpReply):
    _text = ""

    async def body(self) -> bytes:
        raw = await read_all(self._resp, int(self._deployment.max_reply_mb * MIB))
        done = Completion(raw, self._alias, self._json_tool)
        self.usage, self.usage_rejected, self._text = done.usage, done.usage_rejected, done.text
        return done.body

    def text(self) -> str:
        return self._text


class MessagesStreamReply(_HttpReply):
    def __init__(
        self,
        resp: UpstreamAnswer,
        alias: str,
        deployment: Deployment,
        json_tool: str | None,
        include_usage: bool,
    ) -> None:
        super().__init__(resp, alias, deployment, json_tool)
        cap = int(deployment.max_event_kb * 1024)
        self._translator = StreamTranslator(alias, include_usage, json_tool, cap)

    async def chunks(self) -> AsyncIterator[bytes]:
        translator = self._translator
        try:
            async for piece in pieces_until_first_token(self._resp, self._deployment, self):
                out = translator.feed(piece)
                if self.first_content_at is None and translator.first_content:
                    self.first_content_at = perf_counter()
                if self.usage is None and translator.usage is not None:
                    self.usage = translator.usage  # the whole reply was translated
                if translator.done:
                    self._end()
                if out:
                    yield out
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise client_errors(exc) from exc
        if not translator.done:
            tail = translator.finish()  # raises when the stream broke off unfinished
            self._end()
            if tail:
                yield tail

    def _end(self) -> None:
        if not self.ended:
            self.ended = True
            self.complete = self._translator.stopped
            self.usage = self._translator.usage
            self.usage_rejected = self._translator.usage_rejected

    def text(self) -> str:
        return self._translator.text()

"""An Anthropic Messages event stream, as OpenAI `chat.completion.chunk` events.

`proxy.providers.anthropic.replies` feeds every piece of the upstream's body
into one `StreamTranslator` as it arrives and relays what `feed()` returns:
events are cut wherever the pieces end (a blank line ends one; CRLF and CR
line ends too), each complete event is translated at once, and nothing waits
for the rest of the stream.

    message_start        -> the role chunk (the chunk id is made from the message id)
    content_block_start  -> a tool call's first delta: `index`, `id`, `type`, `name`
    content_block_delta  -> `content` (text_delta), `arguments` (input_json_delta)
    message_delta        -> the `finish_reason` chunk; the usage is known from here
    message_stop         -> the usage chunk (`choices: []`, only if the client
                            asked for it), then `data: [DONE]`
    error                -> an OpenAI-shaped error event; the stream ends there
    ping, thinking, content_block_stop -> nothing

Every chunk has one id, the alias as `model`; every tool-call delta has its
`index` (0, 1, ... in the order the calls start), and only the first has `id`
and `name`. The forced tool standing for `response_format` json_schema streams
as `content`. Usage comes from `message_start` (input, cache) and
`message_delta` (output); `text()` is what the client was sent so far (text
and arguments), for a local count when the stream never got that far.
"""

from __future__ import annotations

import time
from typing import Any

import orjson

from proxy.providers.anthropic.errors import stream_error
from proxy.providers.anthropic.response import completion_id, finish_reason, openai_usage, usage_of
from proxy.providers.base import UpstreamBadReply, UpstreamUnavailable, Usage

DONE = b"data: [DONE]\n\n"
_OPEN = b'{"index":0,"delta":{'
_CLOSE = b'},"logprobs":null,"finish_reason":null}'
_ROLE = _OPEN + b'"role":"assistant","content":""' + _CLOSE
_TEXT = _OPEN + b'"content":'
_TEXT_EVENT = b'event: content_block_delta\ndata: {"type":"content_block_delta","index":'
_TEXT_MID = b',"delta":{"type":"text_delta","text":"'


class StreamTranslator:
    __slots__ = (
        "_alias",
        "_include_usage",
        "_json_tool",
        "_cap",
        "_buf",
        "_scan",
        "_prefix",
        "_suffix",
        "_created",
        "_usage_raw",
        "_calls",
        "_json_blocks",
        "_texts",
        "_finished",
        "first_content",
        "done",
        "stopped",
        "usage",
        "usage_rejected",
    )

    def __init__(
        self, alias: str, include_usage: bool, json_tool: str | None, event_cap: int
    ) -> None:
        self._alias = orjson.dumps(alias)
        self._include_usage = include_usage
        self._json_tool = json_tool
        self._cap = event_cap
        self._buf = b""
        self._scan = 0  # where the search for a blank line resumes in _buf
        self._prefix = b""
        self._suffix = b'],"usage":null}\n\n' if include_usage else b"]}\n\n"
        self._created = str(int(time.time())).encode()
        self._usage_raw: dict[str, Any] = {}
        self._calls: dict[int, int] = {}  # content block index -> tool call index
        self._json_blocks: set[int] = set()  # blocks of the json_schema tool
        self._texts: list[str] = []
        self._finished = False  # message_delta seen: finish reason and usage known
        self.first_content = False
        self.done = False  # no more events will be translated
        self.stopped = False  # the stream ended properly ([DONE] sent)
        self.usage: Usage | None = None
        self.usage_rejected = False

    def text(self) -> str:
        return "".join(self._texts)

    # -- framing ------------------------------------------------------------
    def feed(self, data: bytes) -> bytes:
        buf = self._buf + data if self._buf else data
        if b"\r" in buf:
            # a trailing CR may be half of a CRLF whose LF is still on its way
            held = buf.endswith(b"\r")
            buf = buf[:-1] if held else buf
            buf = buf.replace(b"\r\n", b"\n").replace(b"\r", b"\n") + (b"\r" if held else b"")
        out: list[bytes] = []
        start, find = 0, buf.find
        pos = self._scan
        while not self.done:
            end = find(b"\n\n", pos)
            if end < 0:
                break
            if not (buf.startswith(_TEXT_EVENT, start) and self._text_delta(buf, start, end, out)):
                self._event(buf, start, end, out)
            start = pos = end + 2
        rest = len(buf) - start
        if self.done:
            self._buf, self._scan = b"", 0
        else:
            self._buf = buf[start:] if start else buf
            self._scan = max(0, rest - 2)  # a held CR may follow the first LF
            if rest > self._cap:
                raise UpstreamBadReply(f"an SSE event over {self._cap} bytes")
        return b"".join(out)

    def finish(self) -> bytes:
        """The end of the upstream's body: the last event if it had no blank line
        after it, and the tail a stream that was finished but not stopped lacks."""
        out: list[bytes] = []
        if self._buf.strip() and not self.done:
            self._event(self._buf, 0, len(self._buf), out)
        self._buf = b""
        if not self.done:
            if not self._finished:
                raise UpstreamUnavailable("the stream ended before message_stop")
            self._stop(out)
        return b"".join(out)

    def _text_delta(self, buf: bytes, start: int, end: int, out: list[bytes]) -> bool:
        """Nearly every event is a text delta in Anthropic's own compact layout: its
        text's JSON string goes out as it came, checked by parsing it alone. False
        for anything else (then `_event` judges it)."""
        i = start + len(_TEXT_EVENT)
        k = buf.find(_TEXT_MID, i, i + 12 + len(_TEXT_MID))
        if k < 0 or not buf[i:k].isdigit() or buf[end - 2 : end] != b"}}":
            return False
        token = buf[k + len(_TEXT_MID) - 1 : end - 2]
        try:
            text = orjson.loads(token)
        except orjson.JSONDecodeError:
            return False
        if type(text) is not str:
            return False
        if text:
            self.first_content = True
            self._texts.append(text)
            if not self._prefix:
                self._start(None)
            out.append(self._prefix + _TEXT + token + _CLOSE + self._suffix)
        return True

    def _event(self, buf: bytes, start: int, end: int, out: list[bytes]) -> None:
        if buf.startswith(b"data:", start):
            i = start
        else:
            i = buf.find(b"\ndata:", start, end)
            if i < 0:
                return  # no data line: a comment, or an event line alone
            i += 1
        if buf.find(b"\n", i, end) < 0:  # Anthropic's layout: `event:`, then one `data:`
            payload = buf[i + 5 : end]
        else:
            lines = buf[i:end].split(b"\n")
            payload = b"\n".join(line[5:] for line in lines if line.startswith(b"data:"))
        if not payload.strip():
            return
        try:
            event = orjson.loads(payload)
        except orjson.JSONDecodeError as exc:
            raise UpstreamBadReply(f"an event that is not JSON ({exc})") from None
        if isinstance(event, dict):
            self._translate(event, out)

    # -- translation --------------------------------------------------------
    def _chunk(self, out: list[bytes], choice: bytes) -> None:
        if not self._prefix:
            self._start(None)
        out.append(self._prefix + choice + self._suffix)

    def _start(self, message_id: Any) -> None:
        self._prefix = b"".join(
            (
                b'data: {"id":',
                orjson.dumps(completion_id(message_id)),
                b',"object":"chat.completion.chunk","created":',
                self._created,
                b',"model":',
                self._alias,
                b',"choices":[',
            )
        )

    def _content(self, out: list[bytes], text: Any) -> None:
        if isinstance(text, str) and text:
            self.first_content = True
            self._texts.append(text)
            self._chunk(out, _OPEN + b'"content":' + orjson.dumps(text) + _CLOSE)

    def _translate(self, event: dict[str, Any], out: list[bytes]) -> None:
        kind = event.get("type")
        if kind == "content_block_delta":
            delta = event.get("delta")
            if not isinstance(delta, dict):
                return
            dkind = delta.get("type")
            if dkind == "text_delta":  # nearly every event: inlined
                text = delta.get("text")
                if type(text) is str and text:
                    self.first_content = True
                    self._texts.append(text)
                    if not self._prefix:
                        self._start(None)
                    out.append(self._prefix + _TEXT + orjson.dumps(text) + _CLOSE + self._suffix)
            elif dkind == "input_json_delta":
                self._arguments(out, event.get("index"), delta.get("partial_json"))
        elif kind == "content_block_start":
            self._block_start(out, event.get("index"), event.get("content_block"))
        elif kind == "message_start":
            message = event.get("message")
            message = message if isinstance(message, dict) else {}
            self._start(message.get("id"))
            self._take_usage(message.get("usage"), False)
            out.append(self._prefix + _ROLE + self._suffix)
        elif kind == "message_delta":
            delta = event.get("delta")
            stop_reason = delta.get("stop_reason") if isinstance(delta, dict) else None
            self._take_usage(event.get("usage"), True)
            self._finish_chunk(out, stop_reason)
        elif kind == "message_stop":
            self._stop(out)
        elif kind == "error":
            err = event.get("error")
            err = err if isinstance(err, dict) else {}
            gateway_error = stream_error(err.get("type"), err.get("message"))
            out.append(b"data: " + orjson.dumps(gateway_error.body()) + b"\n\n")
            self.done = True

    def _block_start(self, out: list[bytes], index: Any, block: Any) -> None:
        if not isinstance(block, dict) or type(index) is not int:
            return
        kind = block.get("type")
        if kind == "text":
            self._content(out, block.get("text"))
        elif kind == "tool_use":
            if self._json_tool is not None and block.get("name") == self._json_tool:
                self._json_blocks.add(index)
                return
            call = self._calls[index] = len(self._calls)
            self.first_content = True
            first = {
                "index": call,
                "id": str(block.get("id")),
                "type": "function",
                "function": {"name": str(block.get("name")), "arguments": ""},
            }
            self._chunk(out, _OPEN + b'"tool_calls":[' + orjson.dumps(first) + b"]" + _CLOSE)

    def _arguments(self, out: list[bytes], index: Any, part: Any) -> None:
        if not isinstance(part, str) or not part or type(index) is not int:
            return
        if index in self._json_blocks:
            self._content(out, part)
            return
        call = self._calls.get(index)
        if call is None:
            return  # not a block that started as a tool call
        self._texts.append(part)
        self._chunk(
            out,
            b'%s"tool_calls":[{"index":%d,"function":{"arguments":%s}}]%s'
            % (_OPEN, call, orjson.dumps(part), _CLOSE),
        )

    def _take_usage(self, raw: Any, final: bool) -> None:
        if isinstance(raw, dict):
            self._usage_raw.update(raw)  # message_delta's counts are cumulative
        if final:  # before message_delta, output_tokens is not the reply's count
            self.usage = usage_of(self._usage_raw)
            self.usage_rejected = self.usage is None

    def _finish_chunk(self, out: list[bytes], stop_reason: Any) -> None:
        self._finished = True
        reason = finish_reason(stop_reason, bool(self._json_blocks)).encode()
        self._chunk(out, b'{"index":0,"delta":{},"logprobs":null,"finish_reason":"%s"}' % reason)

    def _stop(self, out: list[bytes]) -> None:
        if not self._finished:  # no message_delta: no usage either (counted locally)
            self._finish_chunk(out, None)
        if self._include_usage and self.usage is not None:
            if not self._prefix:
                self._start(None)
            usage = orjson.dumps(openai_usage(self.usage))
            out.append(self._prefix + b'],"usage":' + usage + b"}\n\n")
        out.append(DONE)
        self.done = self.stopped = True

"""An OpenAI chat-completions body, as an Anthropic Messages API body.

Called by `proxy.providers.anthropic.provider` before every request. System
and developer messages become `system`; user, assistant and tool messages
become Messages turns (consecutive turns of one role merged, tool results as
`tool_result` blocks in a user turn); image parts become image blocks (a data
URL as base64, an http(s) URL as a url source); tools, `tool_choice` and
`parallel_tool_calls` become Anthropic's; `response_format` json_schema
becomes a forced tool whose input the reply turns back into the message
content (`Translation.json_tool`); `reasoning_effort` becomes a `thinking`
budget. A body that cannot be said in Messages terms raises `Untranslatable`
(the client's 400). OpenAI fields without a Messages counterpart that change
nothing the client can check (`seed`, penalties, `logprobs`) are left out.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypeGuard

import orjson

DEFAULT_MAX_TOKENS = 4096  # when the client names no limit (Messages requires one)
JSON_TOOL = "json_response"  # the forced tool's name when the schema has none
THINKING_BUDGETS = {"low": 1024, "medium": 4096, "high": 16384}
MIN_THINKING_BUDGET = 1024  # Anthropic's floor for budget_tokens
_SYSTEM_ROLES = ("system", "developer")


class Untranslatable(ValueError):
    """The client's body cannot be expressed as a Messages request: a 400."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(message)
        self.param = param
        self.message = message


@dataclass(frozen=True, slots=True)
class Translation:
    body: dict[str, Any]
    json_tool: str | None  # the forced tool standing for response_format json_schema


def _text_of(content: Any, param: str) -> str:
    """The text of a system/developer/tool message: a string or text parts."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for i, part in enumerate(content):
            if not isinstance(part, dict) or part.get("type") != "text":
                raise Untranslatable(f"{param}[{i}]", "Only text parts are allowed here.")
            texts.append(str(part.get("text") or ""))
        return "".join(texts)
    raise Untranslatable(param, "'content' must be a string or an array of parts.")


def _image_block(part: dict[str, Any], param: str) -> dict[str, Any]:
    image = part.get("image_url")
    url = image.get("url") if isinstance(image, dict) else image
    if not isinstance(url, str):
        raise Untranslatable(param, "'image_url.url' must be a string.")
    if url.startswith("data:"):
        header, sep, data = url.partition(",")
        media_type = header[5:].split(";", 1)[0]
        if not sep or ";base64" not in header or not media_type.startswith("image/"):
            raise Untranslatable(param, "An image data URL must be data:image/...;base64,...")
        return {
            "type": "image",
            "source": {"type": "base64", "media_type": media_type, "data": data},
        }
    if url.startswith(("http://", "https://")):
        return {"type": "image", "source": {"type": "url", "url": url}}
    raise Untranslatable(param, "'image_url.url' must be an http(s) URL or a data URL.")


def _file_block(part: dict[str, Any], param: str) -> dict[str, Any]:
    file = part.get("file")
    data = file.get("file_data") if isinstance(file, dict) else None
    if isinstance(data, str) and data.startswith("data:application/pdf;base64,"):
        source = {"type": "base64", "media_type": "application/pdf", "data": data[28:]}
        return {"type": "document", "source": source}
    raise Untranslatable(param, "Only PDF files given as file_data data URLs are supported.")


def _user_blocks(content: Any, param: str) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    if not isinstance(content, list):
        raise Untranslatable(param, "'content' must be a string or an array of parts.")
    blocks: list[dict[str, Any]] = []
    for i, part in enumerate(content):
        where = f"{param}[{i}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            text = part.get("text")
            if not isinstance(text, str):
                raise Untranslatable(where, "A text part needs a string 'text'.")
            if text:
                blocks.append({"type": "text", "text": text})
        elif kind == "image_url":
            blocks.append(_image_block(part, where))
        elif kind == "file":
            blocks.append(_file_block(part, where))
        else:
            raise Untranslatable(where, f"Content parts of type {kind!r} are not supported.")
    return blocks


def _assistant_blocks(msg: dict[str, Any], param: str) -> list[dict[str, Any]]:
    content = msg.get("content")
    blocks: list[dict[str, Any]] = []
    if isinstance(content, list):  # text and refusal parts
        text = "".join(
            str(p.get("text") or p.get("refusal") or "") for p in content if isinstance(p, dict)
        )
    else:
        text = _text_of(content, f"{param}.content")
    if text:
        blocks.append({"type": "text", "text": text})
    calls = msg.get("tool_calls") or ()
    if not isinstance(calls, list):
        raise Untranslatable(f"{param}.tool_calls", "'tool_calls' must be an array.")
    for i, call in enumerate(calls):
        where = f"{param}.tool_calls[{i}]"
        fn = call.get("function") if isinstance(call, dict) else None
        if not isinstance(fn, dict) or not isinstance(call.get("id"), str):
            raise Untranslatable(where, "A tool call needs an 'id' and a 'function'.")
        try:
            args = orjson.loads(fn.get("arguments") or "{}")
        except (orjson.JSONDecodeError, TypeError):
            args = None
        if not isinstance(args, dict):
            raise Untranslatable(f"{where}.function.arguments", "Arguments must be a JSON object.")
        blocks.append(
            {"type": "tool_use", "id": call["id"], "name": str(fn.get("name")), "input": args}
        )
    return blocks


def _tool_result(msg: dict[str, Any], param: str) -> dict[str, Any]:
    call_id = msg.get("tool_call_id")
    if not isinstance(call_id, str):
        raise Untranslatable(f"{param}.tool_call_id", "A tool message needs 'tool_call_id'.")
    text = _text_of(msg.get("content"), f"{param}.content")
    return {"type": "tool_result", "tool_use_id": call_id, "content": text}


def _conversation(messages: list[Any]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(system blocks, Messages turns) of the chat messages."""
    system: list[dict[str, Any]] = []
    turns: list[dict[str, Any]] = []
    for i, msg in enumerate(messages):
        param = f"messages[{i}]"
        role = msg.get("role") if isinstance(msg, dict) else None
        if role in _SYSTEM_ROLES:
            text = _text_of(msg.get("content"), f"{param}.content")
            if text:
                system.append({"type": "text", "text": text})
            continue
        if role == "user":
            turn_role, blocks = "user", _user_blocks(msg.get("content"), f"{param}.content")
        elif role == "assistant":
            turn_role, blocks = "assistant", _assistant_blocks(msg, param)
        elif role == "tool":
            turn_role, blocks = "user", [_tool_result(msg, param)]
        else:
            raise Untranslatable(f"{param}.role", f"Messages of role {role!r} are not supported.")
        if not blocks:
            continue  # an empty turn: Messages refuses empty content
        if turns and turns[-1]["role"] == turn_role:
            turns[-1]["content"].extend(blocks)
        else:
            turns.append({"role": turn_role, "content": blocks})
    return system, turns


def _in_tool_loop(turns: list[dict[str, Any]]) -> bool:
    last = turns[-1]["content"] if turns else ()
    return any(block["type"] == "tool_result" for block in last)


def _tools(tools: Any) -> list[dict[str, Any]]:
    if not isinstance(tools, list):
        raise Untranslatable("tools", "'tools' must be an array.")
    out = []
    for i, tool in enumerate(tools):
        fn = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(fn, dict) or tool.get("type", "function") != "function":
            raise Untranslatable(f"tools[{i}]", "Only function tools are supported.")
        schema = fn.get("parameters") or {"type": "object", "properties": {}}
        spec: dict[str, Any] = {"name": str(fn.get("name")), "input_schema": schema}
        if fn.get("description"):
            spec["description"] = str(fn["description"])
        out.append(spec)
    return out


def _tool_choice(choice: Any) -> dict[str, Any]:
    if choice is None or choice == "auto":
        return {"type": "auto"}
    if choice == "none":
        return {"type": "none"}
    if choice == "required":
        return {"type": "any"}
    fn = choice.get("function") if isinstance(choice, dict) else None
    if isinstance(fn, dict) and isinstance(fn.get("name"), str):
        return {"type": "tool", "name": fn["name"]}
    raise Untranslatable("tool_choice", "'tool_choice' must be auto, none, required or a function.")


def _json_schema_tool(fmt: dict[str, Any]) -> dict[str, Any]:
    spec = fmt.get("json_schema")
    if not isinstance(spec, dict) or not isinstance(spec.get("schema", {}), dict):
        raise Untranslatable("response_format", "'json_schema.schema' must be an object.")
    tool: dict[str, Any] = {
        "name": str(spec.get("name") or JSON_TOOL),
        "input_schema": spec.get("schema") or {"type": "object"},
    }
    if spec.get("description"):
        tool["description"] = str(spec["description"])
    return tool


def _max_tokens(body: dict[str, Any]) -> int | None:
    for name in ("max_completion_tokens", "max_tokens"):
        value = body.get(name)
        if value is not None:
            if type(value) is not int or value < 1:
                raise Untranslatable(name, f"'{name}' must be a positive integer.")
            return value
    return None


def _number(value: Any) -> TypeGuard[float]:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _stop(stop: Any) -> list[str]:
    stops = [stop] if isinstance(stop, str) else stop
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
        raise Untranslatable("stop", "'stop' must be a string or an array of strings.")
    return [s for s in stops if s.strip()]  # Messages refuses white-space-only sequences


def translate(body: dict[str, Any], model: str) -> Translation:
    """The Messages request for `body`, sent as `model`."""
    n = body.get("n")
    if n is not None and n != 1:
        raise Untranslatable("n", "This model returns one choice per request: 'n' must be 1.")
    system, turns = _conversation(body["messages"])
    out: dict[str, Any] = {"model": model, "messages": turns}
    limit = _max_tokens(body)
    json_tool = None
    tools = _tools(body["tools"]) if body.get("tools") else []
    choice = _tool_choice(body.get("tool_choice")) if tools else None
    fmt = body.get("response_format")
    fmt = fmt if isinstance(fmt, dict) else {}
    kind = fmt.get("type")
    if kind == "json_schema":
        tool = _json_schema_tool(fmt)
        json_tool = tool["name"]
        if not tools:  # the answer *is* the forced tool's input
            choice = {"type": "tool", "name": json_tool}
        tools.append(tool)
    elif kind == "json_object":
        system.append({"type": "text", "text": "Answer with one JSON object and nothing else."})
    if tools:
        out["tools"] = tools
        assert choice is not None
        if body.get("parallel_tool_calls") is False and choice["type"] != "none":
            choice["disable_parallel_tool_use"] = True
        out["tool_choice"] = choice
    if system:
        out["system"] = system
    budget = THINKING_BUDGETS.get(str(body.get("reasoning_effort")))
    # Thinking is refused with a forced tool, and in a tool loop it wants the earlier
    # thinking blocks back (a client of the OpenAI API never saw them); within a
    # client's limit it must fit.
    if (
        budget
        and (choice is None or choice["type"] in ("auto", "none"))
        and not _in_tool_loop(turns)
    ):
        if limit is not None:
            budget = min(budget, limit - 1)
        if budget >= MIN_THINKING_BUDGET:
            out["thinking"] = {"type": "enabled", "budget_tokens": budget}
            limit = limit or budget + DEFAULT_MAX_TOKENS
    out["max_tokens"] = limit or DEFAULT_MAX_TOKENS
    # With thinking, Anthropic refuses any temperature but 1 and a top_p under 0.95;
    # OpenAI's reasoning models ignore sampling settings clients often send anyway.
    temperature, top_p = body.get("temperature"), body.get("top_p")
    if _number(temperature) and "thinking" not in out:
        out["temperature"] = min(float(temperature), 1.0)  # OpenAI's range is 0-2
    if _number(top_p) and ("thinking" not in out or top_p >= 0.95):
        out["top_p"] = top_p
    if body.get("stop") is not None:
        stops = _stop(body["stop"])
        if stops:
            out["stop_sequences"] = stops
    if isinstance(body.get("user"), str):
        out["metadata"] = {"user_id": body["user"]}
    if body.get("stream") is True:
        out["stream"] = True
    return Translation(out, json_tool)

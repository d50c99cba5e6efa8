"""The parameters of a chat completion request, checked before any upstream is called.

`check_chat` runs in `proxy.api.chat.parse_chat`, after `model`, and in the
simulator (`proxy.providers.sim.limits`), which answers like OpenAI. It
type-checks every field that the gateway or a provider reads, as
`CreateChatCompletionRequest` in OpenAI's OpenAPI description has them:
`messages` (roles, content strings and parts, names, tool calls and tool
results), `tools`, `tool_choice`, `response_format`, `stream`,
`stream_options`, `n`, `max_tokens`/`max_completion_tokens`, `temperature`,
`top_p`, and a few more scalars whose type and range the spec fixes. A bad
value is a 400 with OpenAI's code and a `param` path; fields it does not know
pass untouched, and nothing in the body is ever changed.

Left to the upstream: limits that depend on the model (context length, the
largest `max_tokens`), and the contents of JSON schemas (`parameters`,
`json_schema.schema` are only checked to be objects).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from proxy.api.json_params import (
    array,
    boolean,
    enum,
    integer,
    missing_or_wrong,
    number,
    obj,
    optional_bool,
    optional_enum,
    optional_obj,
    optional_str,
    required_enum,
    required_obj,
    required_str,
    string,
    wrong_type,
)
from proxy.http import errors

ROLES = ("system", "assistant", "user", "function", "tool", "developer")
# the content part types each role's content array may hold ("function" takes a string)
PARTS_BY_ROLE: dict[str, tuple[str, ...]] = {
    "system": ("text",),
    "developer": ("text",),
    "tool": ("text",),
    "user": ("text", "image_url", "input_audio", "file"),
    "assistant": ("text", "refusal"),
}
IMAGE_DETAIL = ("auto", "low", "high")
AUDIO_FORMATS = ("wav", "mp3")
TOOL_TYPES = ("function", "custom")
TOOL_CHOICE_MODES = ("none", "auto", "required")
TOOL_CHOICE_TYPES = ("function", "custom", "allowed_tools")
RESPONSE_FORMATS = ("text", "json_object", "json_schema")
MAX_TOOLS = 128
MAX_N = 128
MAX_STOP = 4
CONTENT = "one of a string or an array of content parts"


def check_chat(body: dict[str, Any]) -> None:
    """Raise the 400 OpenAI would give for the first bad parameter (`model` aside)."""
    messages = body.get("messages")
    if messages is None:
        raise errors.missing_param("messages")
    check_messages(messages)
    for name, value in body.items():  # a typical body has fewer fields than there are checks
        check = _CHECKS.get(name)
        if check is not None and value is not None:
            check(value, name)


# -- messages ------------------------------------------------------------------


def check_messages(messages: Any) -> None:
    if type(messages) is not list:
        wrong_type("messages", "an array", messages)
    if not messages:
        # OpenAI's code here is `empty_array`; `invalid_value` is what clients already see
        raise errors.invalid_param(
            "messages",
            "Invalid 'messages': empty array. "
            "Expected an array with minimum length 1, but got an empty array instead.",
        )
    for i, msg in enumerate(messages):
        if type(msg) is not dict:
            wrong_type(f"messages[{i}]", "an object", msg)
        _message(msg, f"messages[{i}]")


def _message(msg: dict[str, Any], where: str) -> None:
    role = msg.get("role")
    parts = PARTS_BY_ROLE.get(role) if type(role) is str else None
    if parts is None and role != "function":
        if type(role) is not str:
            missing_or_wrong(msg, "role", where, "a string")
        raise errors.unsupported_value(f"{where}.role", role, ROLES)
    content = msg.get("content")
    if type(content) is list and parts is not None:
        _content_parts(content, f"{where}.content", parts)
    elif type(content) is not str:
        _odd_content(msg, where, role)
    if role == "function":
        required_str(msg, "name", where)
        return
    optional_str(msg, "name", where)
    if role == "tool":
        required_str(msg, "tool_call_id", where)
    elif role == "assistant":
        calls = msg.get("tool_calls")
        if calls is not None:
            _tool_calls(calls, f"{where}.tool_calls")
        call = msg.get("function_call")
        if call is not None:
            obj(call, f"{where}.function_call")
            required_str(call, "name", f"{where}.function_call")
            required_str(call, "arguments", f"{where}.function_call")
        optional_str(msg, "refusal", where)


def _odd_content(msg: dict[str, Any], where: str, role: Any) -> None:
    """Content that is neither a string nor (for roles that take them) an array of parts."""
    content = msg.get("content")
    expected = "a string" if role == "function" else CONTENT
    if content is None:
        if role == "assistant":  # may carry tool_calls instead
            return
        if role == "function" and "content" in msg:  # required, but nullable
            return
        missing_or_wrong(msg, "content", where, expected)
    wrong_type(f"{where}.content", expected, content)


def _content_parts(content: list[Any], param: str, allowed: tuple[str, ...]) -> None:
    if not content:
        raise errors.empty_array(param)
    for j, part in enumerate(content):
        if type(part) is not dict:
            wrong_type(f"{param}[{j}]", "an object", part)
        kind = part.get("type")
        if kind == "text" and "text" in allowed and type(part.get("text")) is str:
            continue  # the usual part, checked without building its path
        where = f"{param}[{j}]"
        kind = required_enum(part, "type", where, allowed)
        if kind == "text":
            required_str(part, "text", where)
        elif kind == "image_url":
            image = required_obj(part, "image_url", where)
            required_str(image, "url", f"{where}.image_url")
            optional_enum(image, "detail", f"{where}.image_url", IMAGE_DETAIL)
        elif kind == "input_audio":
            audio = required_obj(part, "input_audio", where)
            required_str(audio, "data", f"{where}.input_audio")
            required_enum(audio, "format", f"{where}.input_audio", AUDIO_FORMATS)
        elif kind == "file":
            file = required_obj(part, "file", where)
            for key in ("filename", "file_data", "file_id"):
                optional_str(file, key, f"{where}.file")
        else:  # refusal
            required_str(part, "refusal", where)


def _tool_calls(calls: Any, param: str) -> None:
    array(calls, param)
    for k, call in enumerate(calls):
        where = f"{param}[{k}]"
        obj(call, where)
        required_str(call, "id", where)
        kind = required_enum(call, "type", where, TOOL_TYPES)
        fn = required_obj(call, kind, where)
        required_str(fn, "name", f"{where}.{kind}")
        required_str(fn, "arguments" if kind == "function" else "input", f"{where}.{kind}")


# -- tools and formats -----------------------------------------------------------


def _tools(tools: Any, param: str) -> None:
    array(tools, param, MAX_TOOLS)
    for j, tool in enumerate(tools):
        where = f"{param}[{j}]"
        obj(tool, where)
        kind = required_enum(tool, "type", where, TOOL_TYPES)
        fn = required_obj(tool, kind, where)
        inner = f"{where}.{kind}"
        required_str(fn, "name", inner)
        optional_str(fn, "description", inner)
        if kind == "function":
            optional_obj(fn, "parameters", inner)
            optional_bool(fn, "strict", inner)
        else:
            optional_obj(fn, "format", inner)


def _tool_choice(choice: Any, param: str) -> None:
    if type(choice) is str:
        enum(choice, param, TOOL_CHOICE_MODES)
        return
    if type(choice) is not dict:
        wrong_type(param, "one of a string or an object", choice)
    kind = required_enum(choice, "type", param, TOOL_CHOICE_TYPES)
    if kind == "allowed_tools":
        where = f"{param}.allowed_tools"
        allowed = required_obj(choice, "allowed_tools", param)
        required_enum(allowed, "mode", where, ("auto", "required"))
        tools = allowed.get("tools")
        if type(tools) is not list:
            missing_or_wrong(allowed, "tools", where, "an array")
        for j, tool in enumerate(tools):
            obj(tool, f"{where}.tools[{j}]")
        return
    named = required_obj(choice, kind, param)
    required_str(named, "name", f"{param}.{kind}")


def _response_format(fmt: Any, param: str) -> None:
    obj(fmt, param)
    if required_enum(fmt, "type", param, RESPONSE_FORMATS) != "json_schema":
        return
    schema = required_obj(fmt, "json_schema", param)
    where = f"{param}.json_schema"
    required_str(schema, "name", where)
    optional_str(schema, "description", where)
    optional_obj(schema, "schema", where)
    optional_bool(schema, "strict", where)


def _stream_options(opts: Any, param: str) -> None:
    obj(opts, param)
    optional_bool(opts, "include_usage", param)
    optional_bool(opts, "include_obfuscation", param)


def _stop(stop: Any, param: str) -> None:
    if type(stop) is str:
        return
    if type(stop) is not list:
        wrong_type(param, "one of a string or an array of strings", stop)
    array(stop, param, MAX_STOP)
    for j, item in enumerate(stop):
        string(item, f"{param}[{j}]")


# -- scalars -----------------------------------------------------------------------


def _positive(value: Any, param: str) -> None:
    integer(value, param, 1)


def _n(value: Any, param: str) -> None:
    integer(value, param, 1, MAX_N)


def _temperature(value: Any, param: str) -> None:
    number(value, param, 0, 2)


def _top_p(value: Any, param: str) -> None:
    number(value, param, 0, 1)


def _penalty(value: Any, param: str) -> None:
    number(value, param, -2, 2)


def _top_logprobs(value: Any, param: str) -> None:
    integer(value, param, 0, 20)


def _seed(value: Any, param: str) -> None:
    integer(value, param)


# field -> its check, for the fields besides `messages`; a null value is not checked
_CHECKS: dict[str, Callable[[Any, str], None]] = {
    "stream": boolean,
    "stream_options": _stream_options,
    "tools": _tools,
    "tool_choice": _tool_choice,
    "response_format": _response_format,
    "n": _n,
    "max_tokens": _positive,
    "max_completion_tokens": _positive,
    "temperature": _temperature,
    "top_p": _top_p,
    "frequency_penalty": _penalty,
    "presence_penalty": _penalty,
    "logprobs": boolean,
    "top_logprobs": _top_logprobs,
    "parallel_tool_calls": boolean,
    "seed": _seed,
    "stop": _stop,
    "user": string,
}

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
    for name, check in _CHECKS:
        value = body.get(name)
        if value is not None:
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
        _message(msg, i)


def _message(msg: dict[str, Any], i: int) -> None:
    role = msg.get("role")
    if type(role) is not str:
        missing_or_wrong(msg, "role", f"messages[{i}].role", "a string")
    parts = PARTS_BY_ROLE.get(role)
    if parts is None and role != "function":
        raise errors.unsupported_value(f"messages[{i}].role", role, ROLES)
    content = msg.get("content")
    if type(content) is list and parts is not None:
        _content_parts(content, f"messages[{i}].content", parts)
    elif type(content) is not str:
        _odd_content(msg, i, role)
    if role == "function":
        required_str(msg, "name", f"messages[{i}].name")
        return
    optional_str(msg, "name", f"messages[{i}].name")
    if role == "tool":
        required_str(msg, "tool_call_id", f"messages[{i}].tool_call_id")
    elif role == "assistant":
        calls = msg.get("tool_calls")
        if calls is not None:
            _tool_calls(calls, f"messages[{i}].tool_calls")
        call = msg.get("function_call")
        if call is not None:
            param = f"messages[{i}].function_call"
            obj(call, param)
            required_str(call, "name", f"{param}.name")
            required_str(call, "arguments", f"{param}.arguments")
        optional_str(msg, "refusal", f"messages[{i}].refusal")


def _odd_content(msg: dict[str, Any], i: int, role: str) -> None:
    """Content that is neither a string nor (for roles that take them) an array of parts."""
    content = msg.get("content")
    param = f"messages[{i}].content"
    if content is None:
        if role == "assistant":  # may carry tool_calls instead
            return
        if role == "function" and "content" in msg:  # required, but nullable
            return
        missing_or_wrong(msg, "content", param, "a string" if role == "function" else CONTENT)
    wrong_type(param, "a string" if role == "function" else CONTENT, content)


def _content_parts(content: list[Any], param: str, allowed: tuple[str, ...]) -> None:
    if not content:
        raise errors.empty_array(param)
    for j, part in enumerate(content):
        path = f"{param}[{j}]"
        if type(part) is not dict:
            wrong_type(path, "an object", part)
        kind = required_enum(part, "type", f"{path}.type", allowed)
        if kind == "text":
            required_str(part, "text", f"{path}.text")
        elif kind == "image_url":
            image = required_obj(part, "image_url", f"{path}.image_url")
            required_str(image, "url", f"{path}.image_url.url")
            optional_enum(image, "detail", f"{path}.image_url.detail", IMAGE_DETAIL)
        elif kind == "input_audio":
            audio = required_obj(part, "input_audio", f"{path}.input_audio")
            required_str(audio, "data", f"{path}.input_audio.data")
            required_enum(audio, "format", f"{path}.input_audio.format", AUDIO_FORMATS)
        elif kind == "file":
            file = required_obj(part, "file", f"{path}.file")
            for key in ("filename", "file_data", "file_id"):
                optional_str(file, key, f"{path}.file.{key}")
        else:  # refusal
            required_str(part, "refusal", f"{path}.refusal")


def _tool_calls(calls: Any, param: str) -> None:
    array(calls, param)
    for k, call in enumerate(calls):
        path = f"{param}[{k}]"
        obj(call, path)
        required_str(call, "id", f"{path}.id")
        kind = required_enum(call, "type", f"{path}.type", TOOL_TYPES)
        if kind == "function":
            fn = required_obj(call, "function", f"{path}.function")
            required_str(fn, "name", f"{path}.function.name")
            required_str(fn, "arguments", f"{path}.function.arguments")
        else:
            custom = required_obj(call, "custom", f"{path}.custom")
            required_str(custom, "name", f"{path}.custom.name")
            required_str(custom, "input", f"{path}.custom.input")


# -- tools and formats -----------------------------------------------------------


def _tools(tools: Any, param: str) -> None:
    array(tools, param, MAX_TOOLS)
    for j, tool in enumerate(tools):
        path = f"{param}[{j}]"
        obj(tool, path)
        kind = required_enum(tool, "type", f"{path}.type", TOOL_TYPES)
        if kind == "function":
            fn = required_obj(tool, "function", f"{path}.function")
            required_str(fn, "name", f"{path}.function.name")
            optional_str(fn, "description", f"{path}.function.description")
            optional_obj(fn, "parameters", f"{path}.function.parameters")
            optional_bool(fn, "strict", f"{path}.function.strict")
        else:
            custom = required_obj(tool, "custom", f"{path}.custom")
            required_str(custom, "name", f"{path}.custom.name")
            optional_str(custom, "description", f"{path}.custom.description")
            optional_obj(custom, "format", f"{path}.custom.format")


def _tool_choice(choice: Any, param: str) -> None:
    if type(choice) is str:
        enum(choice, param, TOOL_CHOICE_MODES)
        return
    if type(choice) is not dict:
        wrong_type(param, "one of a string or an object", choice)
    kind = required_enum(choice, "type", f"{param}.type", TOOL_CHOICE_TYPES)
    if kind == "allowed_tools":
        allowed = required_obj(choice, "allowed_tools", f"{param}.allowed_tools")
        required_enum(allowed, "mode", f"{param}.allowed_tools.mode", ("auto", "required"))
        tools = allowed.get("tools")
        if type(tools) is not list:
            missing_or_wrong(allowed, "tools", f"{param}.allowed_tools.tools", "an array")
        for j, tool in enumerate(tools):
            obj(tool, f"{param}.allowed_tools.tools[{j}]")
        return
    named = required_obj(choice, kind, f"{param}.{kind}")
    required_str(named, "name", f"{param}.{kind}.name")


def _response_format(fmt: Any, param: str) -> None:
    obj(fmt, param)
    if required_enum(fmt, "type", f"{param}.type", RESPONSE_FORMATS) != "json_schema":
        return
    schema = required_obj(fmt, "json_schema", f"{param}.json_schema")
    required_str(schema, "name", f"{param}.json_schema.name")
    optional_str(schema, "description", f"{param}.json_schema.description")
    optional_obj(schema, "schema", f"{param}.json_schema.schema")
    optional_bool(schema, "strict", f"{param}.json_schema.strict")


def _stream_options(opts: Any, param: str) -> None:
    obj(opts, param)
    optional_bool(opts, "include_usage", f"{param}.include_usage")
    optional_bool(opts, "include_obfuscation", f"{param}.include_obfuscation")


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


# field -> its check, for the fields after `messages`; a null value is not checked
_CHECKS: tuple[tuple[str, Callable[[Any, str], None]], ...] = (
    ("stream", boolean),
    ("stream_options", _stream_options),
    ("tools", _tools),
    ("tool_choice", _tool_choice),
    ("response_format", _response_format),
    ("n", _n),
    ("max_tokens", _positive),
    ("max_completion_tokens", _positive),
    ("temperature", _temperature),
    ("top_p", _top_p),
    ("frequency_penalty", _penalty),
    ("presence_penalty", _penalty),
    ("logprobs", boolean),
    ("top_logprobs", _top_logprobs),
    ("parallel_tool_calls", boolean),
    ("seed", _seed),
    ("stop", _stop),
    ("user", string),
)

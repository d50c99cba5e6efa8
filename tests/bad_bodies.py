"""Bad request bodies, each with the `param` and `code` OpenAI answers it with.

Shared by `test_bad_input.py` (the gateway, in front of the fake upstream and
of the in-process simulator) and `test_sim_bounds.py` (the simulator served
standalone): the same body must get the same 400 from both. A case is
`(id, fields, param, code)`: `fields` replace those of a valid body.
"""

from __future__ import annotations

from typing import Any

USER = {"role": "user", "content": "hello"}
TEXT = {"type": "text", "text": "look"}
TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}
CALL = {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}

MISSING = "missing_required_parameter"
TYPE = "invalid_type"
VALUE = "invalid_value"


def user(content: Any) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": content}]}


def image(image_url: Any) -> dict[str, Any]:
    return user([TEXT, {"type": "image_url", "image_url": image_url}])


def assistant(**fields: Any) -> dict[str, Any]:
    return {"messages": [USER, {"role": "assistant", "content": None, **fields}]}


def tools(*items: Any) -> dict[str, Any]:
    return {"tools": list(items)}


def fmt(json_schema: Any) -> dict[str, Any]:
    return {"response_format": {"type": "json_schema", "json_schema": json_schema}}


CHAT_CASES: list[tuple[str, dict[str, Any], str, str]] = [
    # messages and roles
    ("messages_string", {"messages": "hello"}, "messages", TYPE),
    ("messages_empty", {"messages": []}, "messages", VALUE),
    ("message_null", {"messages": [None]}, "messages[0]", TYPE),
    ("message_number", {"messages": [USER, 1]}, "messages[1]", TYPE),
    ("role_missing", {"messages": [{"content": "hi"}]}, "messages[0].role", MISSING),
    ("role_unknown", {"messages": [{"role": "robot", "content": "hi"}]}, "messages[0].role", VALUE),
    ("role_number", {"messages": [{"role": 1, "content": "hi"}]}, "messages[0].role", TYPE),
    ("content_missing", {"messages": [{"role": "user"}]}, "messages[0].content", MISSING),
    ("content_null", user(None), "messages[0].content", TYPE),
    ("content_number", user(42), "messages[0].content", TYPE),
    ("content_object", user({"text": "hi"}), "messages[0].content", TYPE),
    ("content_empty_array", user([]), "messages[0].content", "empty_array"),
    ("name_number", {"messages": [{**USER, "name": 7}]}, "messages[0].name", TYPE),
    (
        "tool_call_id_missing",
        {"messages": [USER, {"role": "tool", "content": "sunny"}]},
        "messages[1].tool_call_id",
        MISSING,
    ),
    ("tool_calls_string", assistant(tool_calls="f()"), "messages[1].tool_calls", TYPE),
    (
        "tool_call_arguments_object",
        assistant(tool_calls=[{**CALL, "function": {"name": "f", "arguments": {"a": 1}}}]),
        "messages[1].tool_calls[0].function.arguments",
        TYPE,
    ),
    (
        "function_message_without_name",
        {"messages": [{"role": "function", "content": "x"}]},
        "messages[0].name",
        MISSING,
    ),
    # content parts
    ("part_string", user(["hi"]), "messages[0].content[0]", TYPE),
    ("part_type_missing", user([{"text": "hi"}]), "messages[0].content[0].type", MISSING),
    ("part_type_unknown", user([{"type": "video"}]), "messages[0].content[0].type", VALUE),
    (
        "part_text_number",
        user([TEXT, {"type": "text", "text": 5}]),
        "messages[0].content[1].text",
        TYPE,
    ),
    ("part_text_missing", user([{"type": "text"}]), "messages[0].content[0].text", MISSING),
    ("image_url_string", image("https://x.test/a.png"), "messages[0].content[1].image_url", TYPE),
    ("image_url_url_number", image({"url": 5}), "messages[0].content[1].image_url.url", TYPE),
    (
        "image_url_detail_unknown",
        image({"url": "https://x.test/a.png", "detail": "ultra"}),
        "messages[0].content[1].image_url.detail",
        VALUE,
    ),
    (
        "input_audio_format_unknown",
        user([{"type": "input_audio", "input_audio": {"data": "AAAA", "format": "ogg"}}]),
        "messages[0].content[0].input_audio.format",
        VALUE,
    ),
    (
        "system_image_part",
        {"messages": [{"role": "system", "content": [{"type": "image_url", "image_url": {}}]}]},
        "messages[0].content[0].type",
        VALUE,
    ),
    (
        "assistant_refusal_number",
        assistant(content=[{"type": "refusal", "refusal": 1}]),
        "messages[1].content[0].refusal",
        TYPE,
    ),
    # tools and tool_choice
    ("tools_string", {"tools": "get_weather"}, "tools", TYPE),
    ("tools_number_item", tools(1), "tools[0]", TYPE),
    ("tool_type_missing", tools({"function": {"name": "f"}}), "tools[0].type", MISSING),
    ("tool_type_unknown", tools({"type": "retrieval"}), "tools[0].type", VALUE),
    ("tool_function_missing", tools({"type": "function"}), "tools[0].function", MISSING),
    (
        "tool_name_number",
        tools({"type": "function", "function": {"name": 3}}),
        "tools[0].function.name",
        TYPE,
    ),
    (
        "tool_parameters_string",
        tools({"type": "function", "function": {"name": "f", "parameters": "{}"}}),
        "tools[0].function.parameters",
        TYPE,
    ),
    (
        "tool_strict_string",
        tools({"type": "function", "function": {"name": "f", "strict": "yes"}}),
        "tools[0].function.strict",
        TYPE,
    ),
    ("tools_too_many", tools(*[TOOL] * 129), "tools", "array_above_max_length"),
    (
        "tool_choice_function_string",
        {"tool_choice": {"function": "x"}},
        "tool_choice.type",
        MISSING,
    ),
    ("tool_choice_mode_unknown", {"tool_choice": "sometimes"}, "tool_choice", VALUE),
    ("tool_choice_number", {"tool_choice": 3}, "tool_choice", TYPE),
    (
        "tool_choice_function_not_object",
        {"tools": [TOOL], "tool_choice": {"type": "function", "function": "x"}},
        "tool_choice.function",
        TYPE,
    ),
    (
        "tool_choice_name_missing",
        {"tools": [TOOL], "tool_choice": {"type": "function", "function": {}}},
        "tool_choice.function.name",
        MISSING,
    ),
    # response_format
    ("response_format_string", {"response_format": "json"}, "response_format", TYPE),
    ("response_format_type_missing", {"response_format": {}}, "response_format.type", MISSING),
    (
        "response_format_type_unknown",
        {"response_format": {"type": "xml"}},
        "response_format.type",
        VALUE,
    ),
    ("json_schema_string", fmt('{"type": "object"}'), "response_format.json_schema", TYPE),
    (
        "json_schema_missing",
        {"response_format": {"type": "json_schema"}},
        "response_format.json_schema",
        MISSING,
    ),
    ("json_schema_name_missing", fmt({"schema": {}}), "response_format.json_schema.name", MISSING),
    (
        "json_schema_schema_string",
        fmt({"name": "r", "schema": "object"}),
        "response_format.json_schema.schema",
        TYPE,
    ),
    # stream and stream_options
    ("stream_string", {"stream": "yes"}, "stream", TYPE),
    ("stream_number", {"stream": 1}, "stream", TYPE),
    ("stream_options_string", {"stream": True, "stream_options": "usage"}, "stream_options", TYPE),
    (
        "include_usage_string",
        {"stream": True, "stream_options": {"include_usage": "yes"}},
        "stream_options.include_usage",
        TYPE,
    ),
    (
        "part_text_number_streamed",
        {"stream": True, **user([{"type": "text", "text": 5}])},
        "messages[0].content[0].text",
        TYPE,
    ),
    # numbers
    ("n_zero", {"n": 0}, "n", "integer_below_min_value"),
    ("n_too_many", {"n": 129}, "n", "integer_above_max_value"),
    ("n_decimal", {"n": 1.5}, "n", TYPE),
    ("n_boolean", {"n": True}, "n", TYPE),
    ("max_tokens_zero", {"max_tokens": 0}, "max_tokens", "integer_below_min_value"),
    ("max_tokens_negative", {"max_tokens": -5}, "max_tokens", "integer_below_min_value"),
    ("max_tokens_string", {"max_tokens": "10"}, "max_tokens", TYPE),
    ("max_tokens_decimal", {"max_tokens": 10.5}, "max_tokens", TYPE),
    ("max_completion_tokens_string", {"max_completion_tokens": "x"}, "max_completion_tokens", TYPE),
    (
        "max_completion_tokens_zero",
        {"max_completion_tokens": 0},
        "max_completion_tokens",
        "integer_below_min_value",
    ),
    ("temperature_high", {"temperature": 2.5}, "temperature", "decimal_above_max_value"),
    ("temperature_high_integer", {"temperature": 3}, "temperature", "decimal_above_max_value"),
    ("temperature_negative", {"temperature": -0.1}, "temperature", "decimal_below_min_value"),
    ("temperature_string", {"temperature": "hot"}, "temperature", TYPE),
    ("temperature_boolean", {"temperature": True}, "temperature", TYPE),
    ("top_p_high", {"top_p": 1.5}, "top_p", "decimal_above_max_value"),
    ("top_p_negative", {"top_p": -1}, "top_p", "decimal_below_min_value"),
    ("top_p_object", {"top_p": {}}, "top_p", TYPE),
]

EMBEDDING_CASES: list[tuple[str, dict[str, Any], str, str]] = [
    ("input_number", {"input": 5}, "input", TYPE),
    ("input_null", {"input": None}, "input", TYPE),
    ("input_object", {"input": {"text": "x"}}, "input", TYPE),
    ("input_empty_string", {"input": ""}, "input", VALUE),
    ("input_empty_array", {"input": []}, "input", "empty_array"),
    ("input_mixed", {"input": ["a", 5]}, "input[1]", TYPE),
    ("input_empty_item", {"input": ["a", ""]}, "input[1]", VALUE),
    ("input_token_string", {"input": [1, "2"]}, "input[1]", TYPE),
    ("input_token_negative", {"input": [1, -2]}, "input[1]", "integer_below_min_value"),
    ("input_token_decimal", {"input": [1, 2.5]}, "input[1]", TYPE),
    ("input_boolean_item", {"input": [True]}, "input[0]", TYPE),
    ("input_empty_token_list", {"input": [[1, 2], []]}, "input[1]", "empty_array"),
    ("input_token_list_bad", {"input": [[1, "x"]]}, "input[0][1]", TYPE),
    ("input_nested_strings", {"input": [["a"]]}, "input[0][0]", TYPE),
    ("input_too_many", {"input": ["a"] * 2049}, "input", "array_above_max_length"),
    ("dimensions_zero", {"dimensions": 0}, "dimensions", "integer_below_min_value"),
    ("dimensions_string", {"dimensions": "256"}, "dimensions", TYPE),
    ("dimensions_decimal", {"dimensions": 1.5}, "dimensions", TYPE),
    ("encoding_format_hex", {"encoding_format": "hex"}, "encoding_format", VALUE),
    ("encoding_format_number", {"encoding_format": 5}, "encoding_format", TYPE),
    ("user_number", {"user": 5}, "user", TYPE),
]


def nested(depth: int) -> Any:
    """A JSON value with `depth` levels of arrays (0: a plain number)."""
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


def ids(cases: list[tuple[str, dict[str, Any], str, str]]) -> list[str]:
    return [case[0] for case in cases]

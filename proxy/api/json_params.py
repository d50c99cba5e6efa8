"""The building blocks of the request checks in `chat_params` and `embeddings_params`.

Each function checks one value of a parsed JSON body and returns, or raises the
400 `GatewayError` OpenAI would answer (`proxy.http.errors`): its `code`
(`invalid_type`, `invalid_value`, `missing_required_parameter`, ...) and a
`param` path such as `messages[0].content[1].text`.

Plain Python on purpose: they run on every request before the upstream is
called, so they test `type(x) is ...` (orjson makes exact builtin types, and
`bool` must not pass for `int`), and the field checks take the parent
object's path and build the field's own only when they fail.
An optional field that is `null` counts as absent, as in OpenAI's API.
"""

from __future__ import annotations

from typing import Any, NoReturn

from proxy.http import errors

_TYPE_NAMES: dict[type, str] = {
    str: "a string",
    int: "an integer",
    float: "a decimal number",
    bool: "a boolean",
    list: "an array",
    dict: "an object",
    type(None): "null",
}


def type_name(value: Any) -> str:
    """A JSON value's type, as OpenAI's messages name it ("an integer")."""
    return _TYPE_NAMES.get(type(value), "an unknown type")


def wrong_type(param: str, expected: str, value: Any) -> NoReturn:
    raise errors.invalid_type(param, expected, type_name(value))


def at(where: str, key: str) -> str:
    """The path of `key` in the object at `where` ("" at the top)."""
    return f"{where}.{key}" if where else key


def missing_or_wrong(parent: dict[str, Any], key: str, where: str, expected: str) -> NoReturn:
    """The failure for a required `key` that is absent (missing) or of another type."""
    if key not in parent:
        raise errors.missing_param(at(where, key))
    wrong_type(at(where, key), expected, parent[key])


# Field checks: `parent[key]`, the object at path `where`; the param's path is
# built only when the check fails.


def required_obj(parent: dict[str, Any], key: str, where: str) -> dict[str, Any]:
    value = parent.get(key)
    if type(value) is not dict:
        missing_or_wrong(parent, key, where, "an object")
    return value


def required_str(parent: dict[str, Any], key: str, where: str) -> str:
    value = parent.get(key)
    if type(value) is not str:
        missing_or_wrong(parent, key, where, "a string")
    return value


def optional_str(parent: dict[str, Any], key: str, where: str) -> None:
    value = parent.get(key)
    if value is not None and type(value) is not str:
        wrong_type(at(where, key), "a string", value)


def optional_bool(parent: dict[str, Any], key: str, where: str) -> None:
    value = parent.get(key)
    if value is not None and type(value) is not bool:
        wrong_type(at(where, key), "a boolean", value)


def optional_obj(parent: dict[str, Any], key: str, where: str) -> None:
    value = parent.get(key)
    if value is not None and type(value) is not dict:
        wrong_type(at(where, key), "an object", value)


def required_enum(parent: dict[str, Any], key: str, where: str, allowed: tuple[str, ...]) -> str:
    value = parent.get(key)
    if type(value) is str and value in allowed:
        return value
    if value is None and key not in parent:
        raise errors.missing_param(at(where, key))
    return enum(value, at(where, key), allowed)


def optional_enum(parent: dict[str, Any], key: str, where: str, allowed: tuple[str, ...]) -> None:
    value = parent.get(key)
    if value is not None and (type(value) is not str or value not in allowed):
        enum(value, at(where, key), allowed)


# Value checks: `value` is the param at path `param`.


def obj(value: Any, param: str) -> dict[str, Any]:
    if type(value) is not dict:
        wrong_type(param, "an object", value)
    return value


def enum(value: Any, param: str, allowed: tuple[str, ...]) -> str:
    if type(value) is not str:
        wrong_type(param, "a string", value)
    if value not in allowed:
        raise errors.unsupported_value(param, value, allowed)
    return value


def boolean(value: Any, param: str) -> None:
    if type(value) is not bool:
        wrong_type(param, "a boolean", value)


def string(value: Any, param: str) -> None:
    if type(value) is not str:
        wrong_type(param, "a string", value)


def integer(value: Any, param: str, low: int | None = None, high: int | None = None) -> None:
    if type(value) is not int:
        wrong_type(param, "an integer", value)
    if low is not None and value < low:
        raise errors.out_of_range(param, value, low, above=False, integer=True)
    if high is not None and value > high:
        raise errors.out_of_range(param, value, high, above=True, integer=True)


def number(value: Any, param: str, low: float, high: float) -> None:
    kind = type(value)
    if kind is not float and kind is not int:
        wrong_type(param, "a number", value)
    if value < low:
        raise errors.out_of_range(param, value, low, above=False, integer=False)
    if value > high:
        raise errors.out_of_range(param, value, high, above=True, integer=False)


def array(value: Any, param: str, max_length: int | None = None) -> list[Any]:
    if type(value) is not list:
        wrong_type(param, "an array", value)
    if max_length is not None and len(value) > max_length:
        raise errors.array_too_long(param, len(value), max_length)
    return value

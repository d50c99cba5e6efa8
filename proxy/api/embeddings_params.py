"""The parameters of an embeddings request, checked before any upstream is called.

`check_embeddings` runs in `proxy.api.embeddings.parse_embeddings`, after
`model`, and in the simulator (`proxy.providers.sim.limits`). As
`CreateEmbeddingRequest` in OpenAI's OpenAPI description has them: `input` is
a non-empty string, or an array of 1 to 2,048 items that are all non-empty
strings, or all token ids, or all non-empty arrays of token ids;
`encoding_format` is `float` or `base64`; `dimensions` a positive integer
(the model's own maximum is the upstream's business); `user` a string. A bad
value is a 400 with OpenAI's code and a `param` path such as `input[3]`.

Long inputs cost little here: whole arrays are type-checked with `map(type, ...)`
and `min`, in C; a per-item loop runs only to name the item that failed.
"""

from __future__ import annotations

from typing import Any

from proxy.api.json_params import enum, integer, string, wrong_type
from proxy.http import errors

MAX_INPUTS = 2048
ENCODING_FORMATS = ("float", "base64")
INPUT = "one of a string, an array of strings, or an array of token arrays"


def check_embeddings(body: dict[str, Any]) -> None:
    """Raise the 400 OpenAI would give for the first bad parameter (`model` aside)."""
    if "input" not in body:
        raise errors.missing_param("input")
    check_input(body["input"])
    fmt = body.get("encoding_format")
    if fmt is not None:
        enum(fmt, "encoding_format", ENCODING_FORMATS)
    dims = body.get("dimensions")
    if dims is not None:
        integer(dims, "dimensions", 1)
    user = body.get("user")
    if user is not None:
        string(user, "user")


def check_input(inp: Any) -> None:
    if type(inp) is str:
        if not inp:
            raise _empty_string("input")
        return
    if type(inp) is not list:
        wrong_type("input", INPUT, inp)
    if not inp:
        raise errors.empty_array("input")
    if len(inp) > MAX_INPUTS:
        raise errors.array_too_long("input", len(inp), MAX_INPUTS)
    first = type(inp[0])
    if first is str:
        _all_of(inp, str, "input", "a string")
        if "" in inp:
            raise _empty_string(f"input[{inp.index('')}]")
    elif first is int:
        _token_ids(inp, "input")
    elif first is list:
        for i, item in enumerate(inp):
            if type(item) is not list:
                wrong_type(f"input[{i}]", "an array of token ids", item)
            if not item:
                raise errors.empty_array(f"input[{i}]")
            _token_ids(item, f"input[{i}]")
    else:
        wrong_type("input[0]", "one of a string, a token id, or an array of token ids", inp[0])


def _all_of(items: list[Any], kind: type, param: str, expected: str) -> None:
    if len(set(map(type, items))) == 1:  # the first item is of `kind`
        return
    for i, item in enumerate(items):
        if type(item) is not kind:
            wrong_type(f"{param}[{i}]", expected, item)


def _token_ids(ids: list[Any], param: str) -> None:
    """Non-empty `ids` that must all be integers >= 0."""
    if type(ids[0]) is not int:
        wrong_type(f"{param}[0]", "an integer", ids[0])
    _all_of(ids, int, param, "an integer")
    low = min(ids)
    if low < 0:
        raise errors.out_of_range(f"{param}[{ids.index(low)}]", low, 0, above=False, integer=True)


def _empty_string(param: str) -> errors.GatewayError:
    return errors.invalid_param(
        param,
        f"Invalid '{param}': empty string. "
        "Expected a string with minimum length 1, but got an empty string instead.",
    )

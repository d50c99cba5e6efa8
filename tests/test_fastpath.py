"""`_fastpath.SseRewriter`, both twins held to the same story.

The gateway pipes an upstream chat stream through the rewriter: the client
must see the alias as the model in every chunk and otherwise the upstream's
bytes, however the network cut them; the gateway must learn when content
started, how many events passed, whether `[DONE]` came, the usage object and
the text to count when no usage came. Every unit test runs once per twin (the
`impl` fixture); the property tests also compare the twins with each other.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import _fastpath
from _fastpath import _sse_py

NO_EXT = bool(os.environ.get("PROMETHEUS_NO_EXTENSIONS"))
DATA = Path(__file__).parent / "data"


def _compiled() -> ModuleType | None:
    """The compiled twin; missing is a failure unless extensions are switched off."""
    try:
        return importlib.import_module("_fastpath._sse_c")
    except ImportError as exc:
        if NO_EXT:
            pytest.skip("PROMETHEUS_NO_EXTENSIONS is set: the compiled twin is not required")
        pytest.fail(f"_fastpath._sse_c is not importable (was the extension built?): {exc}")


@pytest.fixture(params=["py", "c"])
def impl(request: pytest.FixtureRequest) -> type:
    if request.param == "py":
        return _sse_py.SseRewriter
    mod = _compiled()
    assert mod is not None
    return mod.SseRewriter  # type: ignore[no-any-return]


def run(
    cls: type,
    stream: bytes,
    alias: str = "alias",
    forward_usage: bool = False,
    pieces: list[int] | None = None,
) -> tuple[bytes, Any]:
    """Feed `stream` (cut after the given piece sizes, else byte by byte) and finish."""
    r = cls(alias, forward_usage)
    out, i = [], 0
    sizes = iter(pieces or [])
    while i < len(stream):
        n = next(sizes, 1)
        out.append(r.feed(stream[i : i + n]))
        i += n
    out.append(r.finish())
    return b"".join(out), r


def whole(
    cls: type, stream: bytes, alias: str = "alias", forward_usage: bool = False
) -> tuple[bytes, Any]:
    r = cls(alias, forward_usage)
    out = r.feed(stream)
    return out + r.finish(), r


def ev(obj: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"


# -- the switch ------------------------------------------------------------


def test_implementation_is_compiled_unless_switched_off() -> None:
    if NO_EXT:
        assert _fastpath.IMPLEMENTATION == "py"
        assert _fastpath.SseRewriter is _sse_py.SseRewriter
    else:
        assert _fastpath.IMPLEMENTATION == "c", "the compiled twin was not built or not found"
        assert _fastpath.SseRewriter is importlib.import_module("_fastpath._sse_c").SseRewriter


def test_env_flag_selects_pure_twin() -> None:
    # the same _fastpath the tests import (installed or in the source tree)
    where = str(Path(_fastpath.__file__).resolve().parent.parent)
    path = os.pathsep.join(filter(None, [where, os.environ.get("PYTHONPATH")]))
    env = dict(os.environ, PROMETHEUS_NO_EXTENSIONS="1", PYTHONPATH=path)
    code = "import _fastpath; print(_fastpath.IMPLEMENTATION, _fastpath.SseRewriter.__module__)"
    out = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).parent,
    )
    assert out.stdout.split() == ["py", "_fastpath._sse_py"]


def test_both_twins_importable_directly() -> None:
    assert importlib.import_module("_fastpath._sse_py").SseRewriter
    mod = _compiled()
    assert mod is not None and mod.SseRewriter


# -- model rewrite -----------------------------------------------------------


def test_model_rewritten_rest_byte_identical(impl: type) -> None:
    src = b'data: {"id":"c1","model":"gpt-4o","choices":[{"delta":{"content":"hi"}}]}\n\n'
    out, r = whole(impl, src, alias="prometheus-lite")
    assert out == src.replace(b'"gpt-4o"', b'"prometheus-lite"')
    assert r.events == 1 and not r.done


@pytest.mark.parametrize("alias", ['quo"te', "back\\slash", "ünï ☕ 😀", "tab\tnl\n\x00", ""])
def test_alias_json_encoded(impl: type, alias: str) -> None:
    out, _ = run(impl, b'data: {"model":"m","choices":[]}\n\n', alias=alias)
    payload = out[len(b"data: ") : -2]
    assert json.loads(payload)["model"] == alias


def test_lone_surrogate_alias_still_valid_json(impl: type) -> None:
    out, _ = run(impl, b'data: {"model":"m"}\n\n', alias="a\ud800b")
    assert json.loads(out[6:-2])["model"] == "a\ud800b"


@pytest.mark.parametrize(
    "src",
    [
        b'data: {"model":null,"choices":[]}\n\n',
        b'data: {"id":"x","choices":[]}\n\n',
        b'data: {"model":42}\n\n',
        b'data: {"role":"model","x":["model"]}\n\n',  # "model" as a value, not a key
    ],
)
def test_model_absent_or_not_a_string_unchanged(impl: type, src: bytes) -> None:
    assert run(impl, src)[0] == src


def test_model_with_white_space(impl: type) -> None:
    src = b'data: { "id" : "x" ,  "model"  :  "gpt-4o" , "choices": [] }\n\n'
    assert run(impl, src)[0] == src.replace(b'"gpt-4o"', b'"alias"')


def test_only_first_model_rewritten(impl: type) -> None:
    src = b'data: {"model":"a","x":{"model":"b"}}\n\n'
    assert run(impl, src)[0] == b'data: {"model":"alias","x":{"model":"b"}}\n\n'


def test_model_with_escapes_replaced_whole(impl: type) -> None:
    src = b'data: {"model":"we\\"ird\\\\","x":1}\n\n'
    assert run(impl, src)[0] == b'data: {"model":"alias","x":1}\n\n'


# -- keys hidden in string values ---------------------------------------------


def test_model_key_inside_content_is_not_a_key(impl: type) -> None:
    src = ev(
        {"choices": [{"delta": {"content": 'the "model": "x", "usage":{"a":1}'}}], "model": "gpt"}
    )
    out, r = run(impl, src)
    data = json.loads(out[6:-2])
    assert data["model"] == "alias"
    assert data["choices"][0]["delta"]["content"] == 'the "model": "x", "usage":{"a":1}'
    assert r.usage_json is None
    assert r.text() == 'the "model": "x", "usage":{"a":1}'


def test_escaped_backslash_before_quote(impl: type) -> None:
    # content is  a\\  (JSON "a\\\\"): the quote after it closes the string
    src = b'data: {"choices":[{"delta":{"content":"a\\\\\\\\"}}],"model":"m"}\n\n'
    out, r = run(impl, src)
    assert json.loads(out[6:-2]) == {"choices": [{"delta": {"content": "a\\\\"}}], "model": "alias"}
    assert r.text() == "a\\\\"


def test_escaped_quote_then_key_lookalike(impl: type) -> None:
    # content is  a\"model":1  , i.e. a backslash-escaped quote, then text
    content = 'a\\"model":"z", {"usage":{"x":1}} ,"content":"no"'
    src = ev({"choices": [{"delta": {"content": content}}], "model": "m"})
    out, r = run(impl, src)
    data = json.loads(out[6:-2])
    assert data["model"] == "alias" and data["choices"][0]["delta"]["content"] == content
    assert r.text() == content and r.usage_json is None


def test_unicode_text_cut_inside_characters(impl: type) -> None:
    src = (
        b'data: {"model":"m","choices":[{"delta":{"content":"caf\\u00e9 \\ud83d\\ude00 '
        + "ü☕😀".encode()
        + b'"}}]}\n\n'
    )
    out, r = run(impl, src)  # one byte at a time
    assert out == src.replace(b'"m"', b'"alias"')
    assert r.text() == "café 😀 ü☕😀"


def test_text_unescapes(impl: type) -> None:
    parts = ["line\nbreak", 'q"uote', "back\\slash", "tab\t", "\u2028", "😀"]
    src = b"".join(ev({"model": "m", "choices": [{"delta": {"content": p}}]}) for p in parts)
    assert run(impl, src)[1].text() == "".join(parts)


# -- framing -------------------------------------------------------------------


def test_crlf_separator_kept(impl: type) -> None:
    src = b'data: {"model":"m"}\r\n\r\n: ping\r\n\r\ndata: [DONE]\r\n\r\n'
    for pieces in (None, [len(src)], [19, 1, 1, 1, 5]):
        out, r = run(impl, src, pieces=pieces)
        assert out == src.replace(b'"m"', b'"alias"')
        assert r.events == 2 and r.done


def test_separator_cut_everywhere(impl: type) -> None:
    src = b'data: {"model":"m"}\n\ndata: {"model":"n"}\r\n\r\ndata: [DONE]\n\n'
    want = src.replace(b'"m"', b'"alias"').replace(b'"n"', b'"alias"')
    for cut in range(len(src) + 1):
        r = impl("alias", False)
        first = r.feed(src[:cut])
        second = r.feed(src[cut:])
        assert first + second + r.finish() == want
        assert want.startswith(first)


def test_incomplete_event_kept_until_complete(impl: type) -> None:
    r = impl("alias", False)
    assert r.feed(b'data: {"model":"m"') == b""
    assert r.feed(b"}\n") == b""
    assert r.events == 0
    assert r.feed(b"\ndata: [DO") == b'data: {"model":"alias"}\n\n'
    assert r.events == 1 and not r.done
    assert r.feed(b"NE]") == b""
    assert r.finish() == b"data: [DONE]"  # no separator added
    assert r.done and r.events == 2
    assert r.finish() == b""


def test_finish_rewrites_partial_event(impl: type) -> None:
    r = impl("alias", False)
    assert r.feed(b'data: {"model":"m","choices":[{"delta":{"content":"x"}}]}\n') == b""
    assert r.finish() == b'data: {"model":"alias","choices":[{"delta":{"content":"x"}}]}\n'
    assert r.events == 1 and r.first_content and r.text() == "x"


def test_feed_nothing_complete_returns_empty(impl: type) -> None:
    r = impl("alias", False)
    assert r.feed(b"") == b""
    assert r.feed(b"data: {") == b""
    assert r.finish() == b"data: {"
    assert r.events == 1


def test_comments_and_other_fields(impl: type) -> None:
    src = (
        b": ping\n\n"
        b"event: message\nid: 7\n"
        b'data: {"model":"m","choices":[{"delta":{"content":"a"}}]}\n\n'
        b"retry: 10\n\n"
        b': comment with "model":"x"\n\n'
    )
    out, r = run(impl, src)
    assert out == src.replace(b'"m"', b'"alias"')
    assert r.events == 1 and r.text() == "a"


def test_data_without_space_and_done_variants(impl: type) -> None:
    src = b'data:{"model":"m"}\n\ndata:[DONE]\n\n'
    out, r = run(impl, src)
    assert out == b'data:{"model":"alias"}\n\ndata:[DONE]\n\n'
    assert r.done and r.events == 2
    _, r2 = run(impl, b"data: [DONE] x\n\ndata: [done]\n\n")
    assert not r2.done and r2.events == 2


def test_multi_line_data_event(impl: type) -> None:
    src = b'data: {"model":"m","choices":[{}]}\ndata: {"model":"n","usage":{"t":1}}\n\n'
    out, r = run(impl, src)
    # the first "model" of the event is rewritten; usage is found on the 2nd line
    assert out == src.replace(b'"m"', b'"alias"')
    assert r.events == 1 and r.usage_json == b'{"t":1}'


def test_accepts_bytearray_and_memoryview(impl: type) -> None:
    r = impl("alias", False)
    assert r.feed(bytearray(b'data: {"model":"m"}\n')) == b""
    assert r.feed(memoryview(b"\n")) == b'data: {"model":"alias"}\n\n'


def test_empty_events_pass(impl: type) -> None:
    src = b"\n\n\n\ndata: [DONE]\n\n\n\n"
    out, r = run(impl, src)
    assert out == src and r.events == 1 and r.done


# -- usage and the drop rule ----------------------------------------------------

USAGE = {
    "prompt_tokens": 5,
    "completion_tokens": 7,
    "total_tokens": 12,
    "prompt_tokens_details": {"cached_tokens": 0, "note": 'a}b{"c'},
}


def test_usage_captured_raw_and_last_wins(impl: type) -> None:
    first = {"model": "m", "choices": [], "usage": {"total_tokens": 1}}
    last = b'{"model":"m","choices":[],"usage":' + json.dumps(USAGE).encode() + b"}"
    src = ev(first) + b"data: " + last + b"\n\n" + ev({"model": "m", "usage": None})
    _, r = run(impl, src)
    assert r.usage_json == json.dumps(USAGE).encode()
    assert json.loads(r.usage_json) == USAGE


def test_usage_null_ignored(impl: type) -> None:
    src = ev({"model": "m", "choices": [], "usage": None})
    out, r = run(impl, src)
    assert r.usage_json is None and out == src.replace(b'"m"', b'"alias"')


@pytest.mark.parametrize("choices", [b"[]", b"[ ]", b"[\t ]"])
def test_usage_event_dropped_unless_forwarded(impl: type, choices: bytes) -> None:
    usage_ev = b'data: {"model":"m","choices":' + choices + b',"usage":{"total_tokens":3}}\n\n'
    src = (
        ev({"model": "m", "choices": [{"delta": {"content": "x"}}], "usage": None})
        + usage_ev
        + b"data: [DONE]\n\n"
    )
    out, r = run(impl, src, forward_usage=False)
    assert b'usage":{' not in out and out.endswith(b"\n\ndata: [DONE]\n\n")
    assert r.usage_json == b'{"total_tokens":3}' and r.events == 3 and r.done
    out2, r2 = run(impl, src, forward_usage=True)
    assert out2 == src.replace(b'"m"', b'"alias"')
    assert r2.usage_json == b'{"total_tokens":3}'


def test_usage_with_choices_not_dropped(impl: type) -> None:
    src = ev({"model": "m", "choices": [{"delta": {}}], "usage": {"total_tokens": 3}})
    out, r = run(impl, src, forward_usage=False)
    assert out == src.replace(b'"m"', b'"alias"') and r.usage_json == b'{"total_tokens":3}'


def test_usage_without_choices_key_not_dropped(impl: type) -> None:
    src = ev({"model": "m", "usage": {"total_tokens": 3}})
    assert run(impl, src)[0] == src.replace(b'"m"', b'"alias"')


def test_dropped_event_in_finish(impl: type) -> None:
    r = impl("alias", False)
    assert r.feed(b'data: {"choices":[],"usage":{"t":1}}') == b""
    assert r.finish() == b""
    assert r.usage_json == b'{"t":1}' and r.events == 1


# -- first content and text ------------------------------------------------------


def test_first_content(impl: type) -> None:
    r = impl("alias", False)
    r.feed(
        ev(
            {
                "model": "m",
                "choices": [{"delta": {"role": "assistant", "content": "", "refusal": None}}],
            }
        )
    )
    assert not r.first_content
    r.feed(ev({"model": "m", "choices": [{"delta": {"content": "Hi"}}]}))
    assert r.first_content


def test_first_content_on_tool_calls(impl: type) -> None:
    r = impl("alias", False)
    r.feed(
        ev(
            {
                "model": "m",
                "choices": [
                    {
                        "delta": {
                            "content": None,
                            "tool_calls": [
                                {
                                    "index": 0,
                                    "id": "call_1",
                                    "function": {"name": "f", "arguments": ""},
                                }
                            ],
                        }
                    }
                ],
            }
        )
    )
    assert r.first_content and r.text() == ""


def test_text_from_content_refusal_arguments_in_order(impl: type) -> None:
    src = (
        ev({"model": "m", "choices": [{"delta": {"content": "A"}}]})
        + ev({"model": "m", "choices": [{"delta": {"refusal": "B"}}]})
        + ev(
            {
                "model": "m",
                "choices": [
                    {
                        "delta": {
                            "tool_calls": [
                                {"function": {"arguments": '{"x":'}},
                                {"function": {"arguments": "1}"}},
                            ]
                        }
                    }
                ],
            }
        )
        + ev({"model": "m", "choices": [{"delta": {"content": None}}]})
        + ev({"model": "m", "choices": [{"delta": {"content": ["not", "a string"]}}]})
        + b'data: {"arguments":"C","model":"m","content":"D"}\n\n'
    )
    _, r = run(impl, src)
    assert r.text() == 'AB{"x":1}CD'


def test_text_survives_invalid_escapes(impl: type) -> None:
    src = (
        b'data: {"content":"ok"}\n\ndata: {"content":"bad \\q esc"}\n\ndata: {"content":"\xff"}\n\n'
    )
    _, r = run(impl, src)
    text = r.text()
    assert text.startswith("ok") and "esc" in text


# -- malformed input ---------------------------------------------------------------


@pytest.mark.parametrize(
    "payload",
    [
        b"not json",
        b'{"model":"m"',
        b'{"model":"unterminated}',
        b'{"model":',
        b"{}",
        b"{",
        b"}",
        b"[1,2]",
        b'"model"',
        b'{"model" "m"}',
        b"\xff\xfe{\x00}",
        b'{"usage":{"a":1,"choices":[]}',
        b'{"choices":[],"usage":{"a":"}',
        b'{"model":"a\\"}',
    ],
)
def test_malformed_passes_unchanged_and_counts(impl: type, payload: bytes) -> None:
    src = b"data: " + payload + b"\n\n"
    out, r = run(impl, src)
    assert r.events == 1
    if not (payload.startswith(b"{") and payload.endswith(b"}")):
        assert out == src
    py_out, py_r = run(_sse_py.SseRewriter, src)
    assert (out, r.usage_json, r.text()) == (py_out, py_r.usage_json, py_r.text())


def test_truncated_json_not_rewritten(impl: type) -> None:
    for src in (b'data: {"model":"m"\n\n', b'data: {"model":"m","choices":[{"delta":{\n\n'):
        assert run(impl, src)[0] == src


# -- the recorded stream -------------------------------------------------------------


def test_recorded_stream(impl: type) -> None:
    src = (DATA / "stream_60.sse").read_bytes()
    for fwd in (False, True):
        out, r = run(
            impl,
            src,
            alias="prometheus-lite",
            forward_usage=fwd,
            pieces=[7, 300, 1, 1, 2, 500] * 100,
        )
        events = [e for e in out.split(b"\n\n") if e]
        assert len(events) == (64 if fwd else 63)
        for e in events[:-1]:
            assert json.loads(e[6:])["model"] == "prometheus-lite"
        assert events[-1] == b"data: [DONE]"
        assert r.events == 64 and r.done and r.first_content
        assert json.loads(r.usage_json)["completion_tokens"] == 60
        assert r.text().startswith("Sure! Here is") and r.text().endswith("round trips.")
        assert out == whole(impl, src, "prometheus-lite", fwd)[0]


# -- property tests: generated realistic streams -------------------------------------

TEXT = st.text(alphabet=st.characters(codec="utf-8"), max_size=12) | st.sampled_from(
    ['"', "\\", '\\"', '"model":"x"', '","usage":{"a":1}', "\n\n", "\r\n", "😀", "data: [DONE]"]
)


@st.composite
def streams(draw: st.DrawFn) -> dict[str, Any]:
    model = draw(st.sampled_from(["gpt-4o", "gpt-4o-mini-2024-07-18", 'q"m', "m\\x"]))
    compact = draw(st.booleans())
    ascii_ = draw(st.booleans())
    crlf = draw(st.booleans())
    sep = b"\r\n\r\n" if crlf else b"\n\n"
    expected_text: list[str] = []
    has_tool = False
    head = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": model}

    def chunk(choices: list[Any], usage: Any = None) -> bytes:
        obj = dict(head, choices=choices, usage=usage)
        enc = json.dumps(
            obj, ensure_ascii=ascii_, separators=(",", ":") if compact else (", ", ": ")
        )
        return b"data: " + enc.encode() + sep

    events = [chunk([{"index": 0, "delta": {"role": "assistant", "content": ""}}])]
    for kind in draw(st.lists(st.sampled_from(["content", "content", "tool", "ping"]), max_size=8)):
        if kind == "ping":
            events.append(b": ping" + sep)
        elif kind == "content":
            s = draw(TEXT)
            expected_text.append(s)
            events.append(chunk([{"index": 0, "delta": {"content": s}}]))
        else:
            s = draw(TEXT)
            expected_text.append(s)
            has_tool = True
            events.append(
                chunk(
                    [
                        {
                            "index": 0,
                            "delta": {"tool_calls": [{"index": 0, "function": {"arguments": s}}]},
                        }
                    ]
                )
            )
    events.append(chunk([{"index": 0, "delta": {}, "finish_reason": "stop"}]))
    with_usage = draw(st.booleans())
    if with_usage:
        events.append(
            chunk(
                [],
                {
                    "prompt_tokens": 3,
                    "completion_tokens": len(expected_text),
                    "total_tokens": 3 + len(expected_text),
                },
            )
        )
    events.append(b"data: [DONE]" + sep)
    stream = b"".join(events)
    if draw(st.booleans()):  # upstream closes without the last separator
        stream = stream[: -len(sep)]
    return {
        "stream": stream,
        "text": "".join(expected_text),
        "with_usage": with_usage,
        "first_content": has_tool or any(expected_text),
        "n_events": sum(1 for e in events if e.startswith(b"data:")),
    }


@st.composite
def cuts(draw: st.DrawFn, length: int) -> list[int]:
    sizes: list[int] = []
    total = 0
    while total < length:
        n = draw(st.integers(1, 1) | st.integers(1, 8) | st.integers(1, 400))
        sizes.append(n)
        total += n
    return sizes


def split_events(out: bytes) -> list[bytes]:
    return [e for e in out.replace(b"\r\n", b"\n").split(b"\n\n") if e]


def state(r: Any) -> tuple[Any, ...]:
    return (r.first_content, r.events, r.done, r.usage_json, r.text())


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), sample=streams(), alias=st.text(max_size=10), forward_usage=st.booleans())
def test_property_streams(
    data: st.DataObject, sample: dict[str, Any], alias: str, forward_usage: bool
) -> None:
    stream = sample["stream"]
    sizes = data.draw(cuts(len(stream)))
    classes = [_sse_py.SseRewriter]
    c_mod = None
    try:
        c_mod = importlib.import_module("_fastpath._sse_c")
    except ImportError:
        if not NO_EXT:
            raise
    if c_mod is not None:
        classes.append(c_mod.SseRewriter)
    results = []
    for cls in classes:
        out, r = run(cls, stream, alias, forward_usage, pieces=sizes)
        out_whole, r_whole = whole(cls, stream, alias, forward_usage)
        # (a) cutting does not matter
        assert out == out_whole
        # (b) nor does the state
        assert state(r) == state(r_whole)
        results.append((out, state(r)))
    # (a), (b) the twins agree
    assert all(res == results[0] for res in results)
    out, (first_content, events, done, usage_json, text) = results[0]
    # (c) every JSON event names the alias
    seen_usage_event = False
    for e in split_events(out):
        if e.startswith(b"data: {"):
            obj = json.loads(e[6:])
            assert obj["model"] == alias
            if obj["choices"] == [] and obj["usage"]:
                seen_usage_event = True
    # (d) the text is the generated strings
    assert text == sample["text"]
    assert events == sample["n_events"] and done
    assert (usage_json is not None) == sample["with_usage"]
    assert first_content == sample["first_content"]
    # (e) the usage event is dropped unless the client asked for it
    assert seen_usage_event == (sample["with_usage"] and forward_usage)


# -- rewrite_model: a whole JSON reply ------------------------------------------


@pytest.fixture(params=["py", "c"])
def rewrite(request: pytest.FixtureRequest) -> Any:
    if request.param == "py":
        return _sse_py.rewrite_model
    mod = _compiled()
    assert mod is not None
    return mod.rewrite_model


def both_rewrites() -> list[Any]:
    fns = [_sse_py.rewrite_model]
    if not NO_EXT:
        fns.append(importlib.import_module("_fastpath._sse_c").rewrite_model)
    return fns


ALIAS_JSON = b'"prometheus-lite"'


def test_rewrite_model_replaces_and_keeps_every_other_byte(rewrite: Any) -> None:
    body = (
        b'{ "id" : "x1",\n "model":"gpt-4o-2024" , "choices":[{"message":{"content":'
        b'"the \\"model\\": no","role":"assistant"}}],"usage": {"prompt_tokens": 3,'
        b' "completion_tokens": 5} ,"x":1.50e+2}\n'
    )
    out, usage = rewrite(body, ALIAS_JSON)
    assert out == body.replace(b'"gpt-4o-2024"', ALIAS_JSON)
    assert usage == b'{"prompt_tokens": 3, "completion_tokens": 5}'


def test_rewrite_model_only_top_level(rewrite: Any) -> None:
    body = b'{"choices":[{"model":"inner"}],"meta":{"model":"m","usage":1},"model":null}'
    out, usage = rewrite(body, ALIAS_JSON)
    assert (
        out
        == b'{"choices":[{"model":"inner"}],"meta":{"model":"m","usage":1},"model":'
        + ALIAS_JSON
        + b"}"
    )
    assert usage is None


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b"{}", b'{"model":"prometheus-lite"}'),
        (b" { \n} ", b' { \n"model":"prometheus-lite"} '),
        (b'{"a":[1,{}]}', b'{"a":[1,{}],"model":"prometheus-lite"}'),
    ],
)
def test_rewrite_model_adds_missing_model(rewrite: Any, body: bytes, expected: bytes) -> None:
    assert rewrite(body, ALIAS_JSON) == (expected, None)


def test_rewrite_model_any_value_type_and_duplicates(rewrite: Any) -> None:
    out, usage = rewrite(b'{"model":{"a":[1]},"usage":null,"model":7,"usage":[2]}', ALIAS_JSON)
    assert out == b'{"model":"prometheus-lite","usage":null,"model":"prometheus-lite","usage":[2]}'
    assert usage == b"[2]"  # the last one wins, as in a parsed dict


def test_rewrite_model_accepts_bytearray_and_unicode(rewrite: Any) -> None:
    body = '{"model":"é","c":"日本 \\ud83d\\ude00"}'.encode()
    out, _ = rewrite(bytearray(body), b'"\xc3\xa9l"')
    assert json.loads(out) == {"model": "él", "c": "日本 \U0001f600"}


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b" ",
        b"[]",
        b'"x"',
        b"null",
        b"{",
        b"}",
        b'{"a":1',
        b'{"a":1}}',
        b'{"a":1} x',
        b'{"a" 1}',
        b"{a:1}",
        b'{"a":1,}',
        b'{,"a":1}',
        b'{"a":[1,]}',
        b'{"a":01}',
        b'{"a":1.}',
        b'{"a":.5}',
        b'{"a":-}',
        b'{"a":1e}',
        b'{"a":+1}',
        b'{"a":tru}',
        b'{"a":nul}',
        b'{"a":True}',
        b'{"a":NaN}',
        b'{"a":"\x01"}',
        b'{"a":"\\x"}',
        b'{"a":"\\u12"}',
        b'{"a":"\\ud800"}',
        b'{"a":"\\udc00"}',
        b'{"a":"\\ud800\\u0041"}',
        b'{"a":"abc}',
        b'{"a":"\xff"}',
        b'{"a":"\xed\xa0\x80"}',
        b'{"a":1e400}',
        b'{"a":' + b"[" * 600 + b"]" * 600 + b"}",
        b'{"model":"x"}\x00',
    ],
)
def test_rewrite_model_declines_what_is_not_one_valid_object(rewrite: Any, body: bytes) -> None:
    assert rewrite(body, ALIAS_JSON) is None


def test_rewrite_model_surrogate_pair_and_escaped_backslashes(rewrite: Any) -> None:
    for body in (b'{"a":"\\ud83d\\ude00"}', b'{"a":"\\\\ud800"}', b'{"a":"\\\\"}'):
        out, _ = rewrite(body, ALIAS_JSON)
        assert json.loads(out)["model"] == "prometheus-lite"


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    # width=32: exponents stay within two digits (3+ digit ones are declined, by design)
    | st.floats(allow_nan=False, allow_infinity=False, width=32)
    | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(
            st.sampled_from(["model", "usage", "a", "b", "é", '"']) | st.text(max_size=4),
            inner,
            max_size=4,
        )
    ),
    max_leaves=12,
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    obj=st.dictionaries(
        st.sampled_from(["model", "usage", "id", "choices", "x"]) | st.text(max_size=6),
        json_values,
        max_size=6,
    ),
    alias=st.text(max_size=10),
    indent=st.sampled_from([None, 1, 2]),
    ascii_only=st.booleans(),
)
def test_property_rewrite_model_matches_a_parse(
    obj: dict[str, Any], alias: str, indent: int | None, ascii_only: bool
) -> None:
    """Against a real parser: same object but the model, usage is the parsed usage."""
    body = json.dumps(obj, indent=indent, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")
    alias_json = _sse_py.encode_alias(alias)
    results = [fn(body, alias_json) for fn in both_rewrites()]
    assert all(r == results[0] for r in results)  # the twins agree
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:  # lone surrogates in generated text: both must decline
        assert results[0] is None
        return
    assert results[0] is not None
    out, usage = results[0]
    expected = dict(parsed)
    expected["model"] = alias
    # an alias with lone surrogates is \u-escaped, which only json reads back
    got = json.loads(out) if any(0xD800 <= ord(c) <= 0xDFFF for c in alias) else orjson.loads(out)
    assert got == expected
    assert list(got) == list(expected)  # key order kept, model last when added
    if "usage" in parsed:
        assert usage is not None and orjson.loads(usage) == parsed["usage"]
    else:
        assert usage is None


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    base=st.sampled_from(
        [
            b'{"id":"c1","model":"m","choices":[{"message":{"content":"hi \\"x\\" \\u00e9"}}],'
            b'"usage":{"prompt_tokens":3,"completion_tokens":1},"n":-1.5e-3,"t":true,"f":null}',
            b'{ "model" : [ 1 , { } ] , "usage" : "s" }',
        ]
    ),
    data=st.data(),
)
def test_property_rewrite_model_mutations(base: bytes, data: st.DataObject) -> None:
    """Random byte edits: the twins agree, and whatever they accept a parser accepts."""
    body = bytearray(base)
    for _ in range(data.draw(st.integers(1, 3))):
        op = data.draw(st.sampled_from(["set", "insert", "delete"]))
        pos = data.draw(st.integers(0, len(body)))
        byte = data.draw(st.sampled_from(list(b' {}[]",:\\-.0123456789eEtrufalsn\x00\x80\xc3\xff')))
        if op == "set" and pos < len(body):
            body[pos] = byte
        elif op == "insert":
            body.insert(pos, byte)
        elif pos < len(body):
            del body[pos]
    results = [fn(bytes(body), ALIAS_JSON) for fn in both_rewrites()]
    assert all(r == results[0] for r in results)
    if results[0] is not None:
        parsed = orjson.loads(bytes(body))
        assert isinstance(parsed, dict)
        assert orjson.loads(results[0][0])["model"] == "prometheus-lite"

"""Pure-Python `SseRewriter`: the plain twin of `_fastpath._sse_c`.

`proxy.providers.openai.replies` feeds every piece of an upstream chat-completions SSE
stream into one `SseRewriter` and writes what `feed()` returns to the client.
The rewriter cuts the bytes into events, rewrites the first `"model"` string of
each JSON data event to the gateway alias, notes the first content delta (for
TTFT), picks out the usage object, drops the usage-only event when the client
did not ask for it, and keeps the raw text slices so the route can count tokens
locally when the upstream never reports usage. Policy stays with the route.

This module and `_sse_c.pyx` implement the same rules, byte for byte; the test
suite runs against both. Neither parses JSON on the hot path.

Framing
    An event ends at the first ``\\n`` that is followed by ``\\n`` or
    ``\\r\\n``; the event bytes plus that separator go out verbatim (so
    ``\\n\\n`` and ``\\r\\n\\r\\n`` streams both keep their separators). Lines
    are split on ``\\n`` and lose one trailing ``\\r``. A line starting with
    ``data:`` (plus one optional space) is a data line; an event with at least
    one data line counts in `events`. Payload ``[DONE]`` sets `done`.

JSON payloads
    A data payload is looked at as JSON only when, leaving out white space, it
    starts with ``{`` and ends with ``}``; anything else passes unchanged.
    Keys are found by searching the raw bytes for ``"key"`` and keeping a hit
    only when the byte before it (white space skipped) is ``{`` or ``,`` and
    the byte after it (white space skipped) is ``:``. Inside a JSON string
    every ``"`` is escaped, so the byte before such a quote is ``\\``: a
    string value such as ``"the \\"model\\": x"`` never yields a hit, and
    neither does a value that only looks like a key. Every rule below is a
    function of the positions of these hits, which is what keeps the two
    implementations identical even on malformed input.

    * ``model``: the first hit in the event decides; if its value is a
      complete JSON string, that string token is replaced by the
      JSON-encoded alias. ``null`` or any other value: no change.
    * ``usage``: the first hit in the event decides; if its value is a
      balanced object (strings and escapes respected), its raw bytes become
      `usage_json` (the last such event wins).
    * ``choices``: the first hit in the event decides whether the event's
      choices are ``[]`` (white space allowed inside).
    * ``content``, ``refusal``, ``arguments``: every hit whose value is a
      complete JSON string; the raw (still escaped) slice is kept for
      `text()`; a non-empty one sets `first_content`, as does any
      ``tool_calls`` hit.

    When ``forward_usage`` is false, an event with a captured usage object
    and empty choices is not emitted at all (separator included).

Events with several data lines are scanned line by line, each line on its
own, with the "first hit decides" rules applying across the whole event.
"""

from __future__ import annotations

import json
import re

import orjson

__all__ = ("SseRewriter", "decode_text", "encode_alias", "rewrite_model")

_WS = frozenset(b" \t\r\n")
_OPEN_BRACE, _CLOSE_BRACE = 0x7B, 0x7D
_COMMA, _COLON, _QUOTE, _BACKSLASH = 0x2C, 0x3A, 0x22, 0x5C
_OPEN_BRACKET, _CLOSE_BRACKET = 0x5B, 0x5D
_NL, _CR = 0x0A, 0x0D
_BRACE_OR_QUOTE = re.compile(rb'[{}"]')

_MODEL = b'"model"'
_USAGE = b'"usage"'
_CHOICES = b'"choices"'
_TOOL_CALLS = b'"tool_calls"'
_TEXT_KEYS = (b'"content"', b'"refusal"', b'"arguments"')


def encode_alias(alias: str) -> bytes:
    """The alias as a JSON string token (UTF-8; lone surrogates as \\u escapes)."""
    if not isinstance(alias, str):
        raise TypeError(f"alias must be str, not {type(alias).__name__}")
    try:
        return orjson.dumps(alias)
    except orjson.JSONEncodeError:  # lone surrogates: orjson refuses, json escapes them
        return json.dumps(alias).encode("ascii")


def decode_text(pieces: list[bytes]) -> str:
    """JSON-unescape and join the raw string slices kept by either twin."""
    if not pieces:
        return ""
    try:
        # one decode for the whole stream; also joins a surrogate pair split
        # across two chunks
        text: str = orjson.loads(b'"' + b"".join(pieces) + b'"')
        return text
    except orjson.JSONDecodeError:
        return "".join(_decode_piece(raw) for raw in pieces)


def _decode_piece(raw: bytes) -> str:
    quoted = b'"' + raw + b'"'
    try:
        text: str = orjson.loads(quoted)
        return text
    except orjson.JSONDecodeError:
        pass
    try:  # raw control characters, lone surrogates
        text = json.loads(quoted, strict=False)
    except ValueError:  # invalid UTF-8 or a broken escape
        text = raw.decode("utf-8", "replace")
    return text.encode("utf-8", "replace").decode("utf-8")


def _key_value(data: bytes, q: int, klen: int, js: int, je: int) -> int:
    """Index of the value after the key token at `q` (`klen` bytes long), or -1
    when the hit is not a key of an object."""
    j = q - 1
    while j >= js and data[j] in _WS:
        j -= 1
    if j < js or (data[j] != _OPEN_BRACE and data[j] != _COMMA):
        return -1
    k = q + klen
    while k < je and data[k] in _WS:
        k += 1
    if k >= je or data[k] != _COLON:
        return -1
    k += 1
    while k < je and data[k] in _WS:
        k += 1
    return k if k < je else -1


def _string_end(data: bytes, i: int, je: int) -> int:
    """Index of the closing quote of a string whose body starts at `i`, or -1."""
    find = data.find
    while True:
        c = find(b'"', i, je)
        if c < 0:
            return -1
        b = c - 1
        while data[b] == _BACKSLASH:  # stops at the opening quote at the latest
            b -= 1
        if not (c - 1 - b) & 1:
            return c
        i = c + 1


def _object_end(data: bytes, i: int, je: int) -> int:
    """Index just past the `}` that closes the object opened at `i`, or -1."""
    depth = 0
    search = _BRACE_OR_QUOTE.search
    while True:
        m = search(data, i, je)
        if m is None:
            return -1
        c = m.start()
        ch = data[c]
        if ch == _QUOTE:
            e = _string_end(data, c + 1, je)
            if e < 0:
                return -1
            i = e + 1
            continue
        i = c + 1
        if ch == _OPEN_BRACE:
            depth += 1
        else:
            depth -= 1
            if depth == 0:
                return i


class SseRewriter:
    """Incremental parser/rewriter for an upstream OpenAI chat-completions SSE stream."""

    __slots__ = (
        "_alias",
        "_forward_usage",
        "_buf",
        "_scan",
        "_texts",
        "_first_content",
        "_events",
        "_done",
        "_usage_json",
        # per-event state, reset by _event()
        "_model_seen",
        "_vs",
        "_ve",
        "_usage_seen",
        "_got_usage",
        "_choices_seen",
        "_choices_empty",
    )

    def __init__(self, alias: str, forward_usage: bool) -> None:
        self._alias = encode_alias(alias)
        self._forward_usage = bool(forward_usage)
        self._buf = b""
        self._scan = 0  # where the separator search resumes in _buf
        self._texts: list[bytes] = []
        self._first_content = False
        self._events = 0
        self._done = False
        self._usage_json: bytes | None = None

    @property
    def first_content(self) -> bool:
        return self._first_content

    @property
    def events(self) -> int:
        return self._events

    @property
    def done(self) -> bool:
        return self._done

    @property
    def usage_json(self) -> bytes | None:
        return self._usage_json

    def text(self) -> str:
        return decode_text(self._texts)

    def feed(self, data: bytes) -> bytes:
        if type(data) is not bytes:
            data = bytes(data)
        if self._buf:
            data = self._buf + data
        n = len(data)
        find = data.find
        pos = self._scan
        start = 0  # start of the event being looked for
        copy_from = 0  # output so far = pieces + data[copy_from:start]
        pieces: list[bytes] = []
        while True:
            i = find(b"\n", pos)
            if i < 0:
                pos = n
                break
            if i + 1 >= n:
                pos = i
                break
            c = data[i + 1]
            if c == _NL:
                sep_end = i + 2
            elif c == _CR:
                if i + 2 >= n:
                    pos = i
                    break
                if data[i + 2] != _NL:
                    pos = i + 1
                    continue
                sep_end = i + 3
            else:
                pos = i + 1
                continue
            if self._event(data, start, i):
                if self._vs >= 0:
                    pieces.append(data[copy_from : self._vs])
                    pieces.append(self._alias)
                    copy_from = self._ve
            else:  # dropped: flush what came before it, skip it
                pieces.append(data[copy_from:start])
                copy_from = sep_end
            start = pos = sep_end
        self._buf = data[start:]
        self._scan = pos - start
        if copy_from < start:
            pieces.append(data[copy_from:start])
        return b"".join(pieces)

    def finish(self) -> bytes:
        data = self._buf
        self._buf = b""
        self._scan = 0
        if not data:
            return b""
        if not self._event(data, 0, len(data)):
            return b""
        if self._vs >= 0:
            return data[: self._vs] + self._alias + data[self._ve :]
        return data

    def _event(self, data: bytes, s: int, e: int) -> bool:
        """Process the event data[s:e] (separator excluded); True to emit it.
        Leaves the model string's span in _vs/_ve (-1 when not rewritten)."""
        self._vs = self._ve = -1
        self._model_seen = self._usage_seen = self._got_usage = False
        self._choices_seen = self._choices_empty = False
        has_data = False
        find = data.find
        ls = s
        while ls <= e:
            le = find(b"\n", ls, e)
            if le < 0:
                le = e
            pe = le
            if pe > ls and data[pe - 1] == _CR:
                pe -= 1
            if data.startswith(b"data:", ls, pe):
                has_data = True
                ps = ls + 5
                if ps < pe and data[ps] == 0x20:
                    ps += 1
                if data.startswith(b"[DONE]", ps, pe) and pe - ps == 6:
                    self._done = True
                else:
                    while ps < pe and data[ps] in _WS:
                        ps += 1
                    je = pe
                    while je > ps and data[je - 1] in _WS:
                        je -= 1
                    if je - ps >= 2 and data[ps] == _OPEN_BRACE and data[je - 1] == _CLOSE_BRACE:
                        self._json(data, ps, je)
            ls = le + 1
        if not has_data:
            return True
        self._events += 1
        if self._got_usage and self._choices_empty and not self._forward_usage:
            return False
        return True

    def _json(self, data: bytes, js: int, je: int) -> None:
        """Scan one JSON object payload data[js:je] for the keys of interest."""
        find = data.find
        if not self._model_seen:
            q = find(_MODEL, js, je)
            while q >= 0:
                v = _key_value(data, q, 7, js, je)
                if v >= 0:
                    self._model_seen = True
                    if data[v] == _QUOTE:
                        end = _string_end(data, v + 1, je)
                        if end >= 0:
                            self._vs, self._ve = v, end + 1
                    break
                q = find(_MODEL, q + 1, je)
        if not self._usage_seen:
            q = find(_USAGE, js, je)
            while q >= 0:
                v = _key_value(data, q, 7, js, je)
                if v >= 0:
                    self._usage_seen = True
                    if data[v] == _OPEN_BRACE:
                        end = _object_end(data, v, je)
                        if end >= 0:
                            self._usage_json = data[v:end]
                            self._got_usage = True
                    break
                q = find(_USAGE, q + 1, je)
        if not self._choices_seen:
            q = find(_CHOICES, js, je)
            while q >= 0:
                v = _key_value(data, q, 9, js, je)
                if v >= 0:
                    self._choices_seen = True
                    if data[v] == _OPEN_BRACKET:
                        k = v + 1
                        while k < je and data[k] in _WS:
                            k += 1
                        self._choices_empty = k < je and data[k] == _CLOSE_BRACKET
                    break
                q = find(_CHOICES, q + 1, je)
        if not self._first_content:
            q = find(_TOOL_CALLS, js, je)
            while q >= 0:
                if _key_value(data, q, 12, js, je) >= 0:
                    self._first_content = True
                    break
                q = find(_TOOL_CALLS, q + 1, je)
        found: list[tuple[int, bytes]] | None = None
        for key in _TEXT_KEYS:
            klen = len(key)
            q = find(key, js, je)
            while q >= 0:
                v = _key_value(data, q, klen, js, je)
                if v >= 0 and data[v] == _QUOTE:
                    end = _string_end(data, v + 1, je)
                    if end > v + 1:  # empty strings add nothing
                        if found is None:
                            found = []
                        found.append((q, data[v + 1 : end]))
                q = find(key, q + 1, je)
        if found is not None:
            self._first_content = True
            if len(found) > 1:
                found.sort()
            self._texts.extend(raw for _, raw in found)


# -- rewrite_model: one whole JSON reply -------------------------------------

MAX_DEPTH = 512  # deeper nesting: rewrite_model declines (orjson's own limit is 1024)
_STRING = re.compile(rb'"(?:[^"\\\x00-\x1f]|\\["\\/bfnrt]|\\u[0-9a-fA-F]{4})*"')
_NUMBER = re.compile(rb"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?([0-9]+))?")
_UESC = re.compile(rb"\\u([0-9a-fA-F]{4})")
_LITERALS = {0x74: b"true", 0x66: b"false", 0x6E: b"null"}
_NUMBER_START = frozenset(b"-0123456789")


class _Decline(Exception):
    pass


def _ws(data: bytes, i: int, n: int) -> int:
    while i < n and data[i] in _WS:
        i += 1
    return i


def _surrogates_paired(token: bytes) -> bool:
    """No lone UTF-16 surrogate among the \\u escapes of a string token."""
    if b"\\u" not in token:
        return True
    pending_high = -1  # end index of a high surrogate escape awaiting its low half
    for m in _UESC.finditer(token):
        # count the backslashes before this one: an escaped backslash is no escape
        b = m.start() - 1
        while token[b] == _BACKSLASH:
            b -= 1
        if (m.start() - 1 - b) & 1:
            continue
        unit = int(m.group(1), 16)
        if 0xDC00 <= unit <= 0xDFFF:
            if pending_high != m.start():
                return False
            pending_high = -1
        else:
            if pending_high >= 0:
                return False
            if 0xD800 <= unit <= 0xDBFF:
                pending_high = m.end()
    return pending_high < 0


def _string(data: bytes, i: int) -> int:
    m = _STRING.match(data, i)
    if m is None or not _surrogates_paired(m.group()):
        raise _Decline
    return m.end()


def _value(data: bytes, i: int, n: int, depth: int) -> int:
    """Index just past the JSON value starting at i (no leading white space)."""
    if i >= n:
        raise _Decline
    c = data[i]
    if c == _QUOTE:
        return _string(data, i)
    if c == _OPEN_BRACE or c == _OPEN_BRACKET:
        if depth >= MAX_DEPTH:
            raise _Decline
        close = _CLOSE_BRACE if c == _OPEN_BRACE else _CLOSE_BRACKET
        i = _ws(data, i + 1, n)
        if i < n and data[i] == close:
            return i + 1
        while True:
            if c == _OPEN_BRACE:
                if i >= n or data[i] != _QUOTE:
                    raise _Decline
                i = _ws(data, _string(data, i), n)
                if i >= n or data[i] != _COLON:
                    raise _Decline
                i = _ws(data, i + 1, n)
            i = _ws(data, _value(data, i, n, depth + 1), n)
            if i >= n:
                raise _Decline
            if data[i] == close:
                return i + 1
            if data[i] != _COMMA:
                raise _Decline
            i = _ws(data, i + 1, n)
    if c in _NUMBER_START:
        m = _NUMBER.match(data, i)
        if m is None:
            raise _Decline
        exp = m.group(1)
        if (exp is not None and len(exp) > 2) or m.end() - i > 300:
            raise _Decline  # could overflow a double: let a real parser judge
        return m.end()
    lit = _LITERALS.get(c)
    if lit is not None and data.startswith(lit, i):
        return i + len(lit)
    raise _Decline


def rewrite_model(body: bytes, alias_json: bytes) -> tuple[bytes, bytes | None] | None:
    """Set the top-level ``"model"`` of one JSON object reply, bytes in, bytes out.

    `body` must be exactly one JSON object (white space around it allowed);
    `alias_json` is a JSON string token (what `encode_alias` returns). The
    value of every top-level key spelled ``"model"`` is replaced by
    `alias_json`; when there is none, ``"model":<alias_json>`` is added as
    the object's last member (just before its ``}``). Every other byte of
    `body` is kept. Returns ``(new_body, usage)`` where `usage` is the raw
    value of the last top-level ``"usage"`` key, or None without one.

    Returns None ("decline") when `body` is not one valid JSON object: bad
    grammar, invalid UTF-8, a lone surrogate escape, nesting deeper than
    `MAX_DEPTH`, or a number a double may not hold (an exponent of 3+ digits,
    300+ characters). The caller then takes a real JSON parser's verdict, so
    a decline is never wrong, only slower. Keys are matched by their raw
    bytes: a key written with escapes (``"mod\\u0065l"``) is not ``model``.
    """
    if not isinstance(body, bytes):
        body = bytes(body)
    n = len(body)
    try:
        body.decode("utf-8")
    except UnicodeDecodeError:
        return None
    try:
        i = _ws(body, 0, n)
        if i >= n or body[i] != _OPEN_BRACE:
            return None
        i = _ws(body, i + 1, n)
        parts: list[bytes] = []
        last = 0  # body[last:] is not copied yet
        usage: tuple[int, int] | None = None
        members = 0
        model_seen = False
        if i < n and body[i] == _CLOSE_BRACE:
            close = i
        else:
            while True:
                if i >= n or body[i] != _QUOTE:
                    return None
                ks = i
                ke = _string(body, i)
                i = _ws(body, ke, n)
                if i >= n or body[i] != _COLON:
                    return None
                vs = _ws(body, i + 1, n)
                ve = _value(body, vs, n, 1)
                members += 1
                key = body[ks:ke]
                if key == _MODEL:
                    parts.append(body[last:vs])
                    parts.append(alias_json)
                    last = ve
                    model_seen = True
                elif key == _USAGE:
                    usage = (vs, ve)
                i = _ws(body, ve, n)
                if i >= n:
                    return None
                if body[i] == _CLOSE_BRACE:
                    close = i
                    break
                if body[i] != _COMMA:
                    return None
                i = _ws(body, i + 1, n)
        if _ws(body, close + 1, n) != n:
            return None
    except _Decline:
        return None
    if not model_seen:
        parts.append(body[last:close])
        parts.append(b',"model":' if members else b'"model":')
        parts.append(alias_json)
        last = close
    parts.append(body[last:])
    return b"".join(parts), (None if usage is None else body[usage[0] : usage[1]])

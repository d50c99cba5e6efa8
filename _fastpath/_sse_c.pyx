# cython: language_level=3, boundscheck=False, wraparound=False, initializedcheck=False, cdivision=True
"""Compiled `SseRewriter`: the fast twin of `_fastpath._sse_py`.

Same rules, same results, byte for byte; `_sse_py`'s docstring is the
specification and the test suite holds both to it. What differs is only the
mechanics:

* pending bytes and the outgoing bytes live in C buffers owned by the object;
  `feed()` scans the incoming `bytes` in place when nothing is pending, and
  builds its return value with one `PyBytes_FromStringAndSize`;
* events are found with `memchr` for ``\\n``; each JSON payload is walked
  once, `memchr` hopping from ``"`` to ``"``, and every quote is checked
  against the seven keys of interest with `memcmp` (the pure twin searches
  each key with `bytes.find` instead; both keep exactly the hits whose
  neighbours make them object keys, so both see the same set of hits).
  `memmem` is not needed, which also keeps the module portable.
"""

from cpython.bytes cimport (
    PyBytes_AS_STRING,
    PyBytes_CheckExact,
    PyBytes_FromStringAndSize,
    PyBytes_GET_SIZE,
)
from cpython.mem cimport PyMem_Free, PyMem_Malloc, PyMem_Realloc
from libc.string cimport memchr, memcmp, memcpy, memmove

from ._sse_py import decode_text, encode_alias

cdef enum:
    K_NONE = 0
    K_MODEL
    K_USAGE
    K_CHOICES
    K_TOOL_CALLS
    K_TEXT


cdef inline bint _is_ws(char c) noexcept nogil:
    return c == 32 or c == 9 or c == 13 or c == 10


cdef Py_ssize_t _key_value(const char* p, Py_ssize_t q, Py_ssize_t klen,
                           Py_ssize_t js, Py_ssize_t je) noexcept nogil:
    """Index of the value after the key token at q, or -1 if it is no key."""
    cdef Py_ssize_t j = q - 1
    cdef Py_ssize_t k
    while j >= js and _is_ws(p[j]):
        j -= 1
    if j < js or (p[j] != b'{' and p[j] != b','):
        return -1
    k = q + klen
    while k < je and _is_ws(p[k]):
        k += 1
    if k >= je or p[k] != b':':
        return -1
    k += 1
    while k < je and _is_ws(p[k]):
        k += 1
    return k if k < je else -1


cdef Py_ssize_t _string_end(const char* p, Py_ssize_t i, Py_ssize_t je) noexcept nogil:
    """Index of the closing quote of the string whose body starts at i, or -1."""
    cdef const char* hit
    cdef Py_ssize_t c, b
    while i < je:
        hit = <const char*>memchr(p + i, b'"', <size_t>(je - i))
        if hit == NULL:
            return -1
        c = hit - p
        b = c - 1
        while p[b] == b'\\':  # stops at the opening quote at the latest
            b -= 1
        if ((c - 1 - b) & 1) == 0:
            return c
        i = c + 1
    return -1


cdef Py_ssize_t _object_end(const char* p, Py_ssize_t i, Py_ssize_t je) noexcept nogil:
    """Index just past the '}' closing the object opened at i, or -1."""
    cdef Py_ssize_t depth = 0
    cdef Py_ssize_t e
    cdef char ch
    while i < je:
        ch = p[i]
        if ch == b'"':
            e = _string_end(p, i + 1, je)
            if e < 0:
                return -1
            i = e + 1
            continue
        if ch == b'{':
            depth += 1
        elif ch == b'}':
            depth -= 1
            if depth == 0:
                return i + 1
        i += 1
    return -1


cdef class SseRewriter:
    """Incremental parser/rewriter for an upstream OpenAI chat-completions SSE stream."""

    cdef readonly bint first_content
    cdef readonly Py_ssize_t events
    cdef readonly bint done
    cdef readonly object usage_json

    cdef bytes _alias
    cdef bint _forward_usage
    cdef list _texts
    cdef char* _pend
    cdef Py_ssize_t _pend_len
    cdef Py_ssize_t _pend_cap
    cdef Py_ssize_t _scan
    cdef char* _out
    cdef Py_ssize_t _out_len
    cdef Py_ssize_t _out_cap
    # per-event state, reset by _event()
    cdef bint _model_seen, _usage_seen, _got_usage, _choices_seen, _choices_empty
    cdef Py_ssize_t _vs, _ve

    def __cinit__(self):
        self._pend = NULL
        self._out = NULL
        self._pend_len = self._pend_cap = self._scan = 0
        self._out_len = self._out_cap = 0

    def __dealloc__(self):
        PyMem_Free(self._pend)
        PyMem_Free(self._out)

    def __init__(self, alias: str, forward_usage: bool) -> None:
        self._alias = encode_alias(alias)
        self._forward_usage = bool(forward_usage)
        self._texts = []
        self.first_content = False
        self.events = 0
        self.done = False
        self.usage_json = None
        self._pend_len = self._scan = 0

    def text(self) -> str:
        return decode_text(self._texts)

    # -- buffers ---------------------------------------------------------

    cdef int _reserve_pend(self, Py_ssize_t size) except -1:
        cdef char* grown
        cdef Py_ssize_t cap
        if size <= self._pend_cap:
            return 0
        cap = max(size, self._pend_cap * 2, 1024)
        grown = <char*>PyMem_Realloc(self._pend, <size_t>cap)
        if grown == NULL:
            raise MemoryError()
        self._pend = grown
        self._pend_cap = cap
        return 0

    cdef int _write(self, const char* src, Py_ssize_t size) except -1:
        cdef char* grown
        cdef Py_ssize_t cap
        if size <= 0:
            return 0
        if self._out_len + size > self._out_cap:
            cap = max(self._out_len + size, self._out_cap * 2, 4096)
            grown = <char*>PyMem_Realloc(self._out, <size_t>cap)
            if grown == NULL:
                raise MemoryError()
            self._out = grown
            self._out_cap = cap
        memcpy(self._out + self._out_len, src, <size_t>size)
        self._out_len += size
        return 0

    # -- framing ---------------------------------------------------------

    def feed(self, data) -> bytes:
        cdef const char* p
        cdef Py_ssize_t n, total, consumed, rest
        cdef bint in_place
        if not PyBytes_CheckExact(data):
            data = bytes(data)
        n = PyBytes_GET_SIZE(data)
        if self._pend_len == 0:
            p = PyBytes_AS_STRING(data)
            total = n
            in_place = True
        else:
            self._reserve_pend(self._pend_len + n)
            memcpy(self._pend + self._pend_len, PyBytes_AS_STRING(data), <size_t>n)
            self._pend_len += n
            p = self._pend
            total = self._pend_len
            in_place = False
        self._out_len = 0
        consumed = self._run(p, total)
        rest = total - consumed
        if in_place:
            if rest > 0:
                self._reserve_pend(rest)
                memcpy(self._pend, p + consumed, <size_t>rest)
            self._pend_len = rest
        else:
            if consumed > 0 and rest > 0:
                memmove(self._pend, self._pend + consumed, <size_t>rest)
            self._pend_len = rest
        return self._take_out()

    cdef bytes _take_out(self):
        """The bytes written by this call; the buffers are given back between calls.

        A stream spends nearly all its life waiting for the next chunk, and a
        gateway holds thousands of them: keeping ~5 KiB of scratch per stream
        across that wait cost more memory than the malloc per call costs time.
        """
        cdef bytes out = PyBytes_FromStringAndSize(self._out, self._out_len)
        PyMem_Free(self._out)
        self._out = NULL
        self._out_len = self._out_cap = 0
        if self._pend_len == 0 and self._pend != NULL:
            PyMem_Free(self._pend)
            self._pend = NULL
            self._pend_cap = 0
        return out

    def finish(self) -> bytes:
        cdef Py_ssize_t n = self._pend_len
        self._pend_len = 0
        self._scan = 0
        self._out_len = 0
        if n == 0:
            return b""
        self._emit(self._pend, 0, n, n)
        return self._take_out()

    cdef Py_ssize_t _run(self, const char* p, Py_ssize_t n) except -1:
        """Emit every complete event of p[0:n]; return how many bytes they used."""
        cdef Py_ssize_t pos = self._scan
        cdef Py_ssize_t start = 0
        cdef Py_ssize_t i, sep_end
        cdef const char* hit
        cdef char c
        while True:
            if pos >= n:
                pos = n
                break
            hit = <const char*>memchr(p + pos, b'\n', <size_t>(n - pos))
            if hit == NULL:
                pos = n
                break
            i = hit - p
            if i + 1 >= n:
                pos = i
                break
            c = p[i + 1]
            if c == b'\n':
                sep_end = i + 2
            elif c == b'\r':
                if i + 2 >= n:
                    pos = i
                    break
                if p[i + 2] != b'\n':
                    pos = i + 1
                    continue
                sep_end = i + 3
            else:
                pos = i + 1
                continue
            self._emit(p, start, i, sep_end)
            start = pos = sep_end
        self._scan = pos - start
        return start

    cdef int _emit(self, const char* p, Py_ssize_t s, Py_ssize_t e,
                   Py_ssize_t sep_end) except -1:
        if not self._event(p, s, e):
            return 0
        if self._vs >= 0:
            self._write(p + s, self._vs - s)
            self._write(PyBytes_AS_STRING(self._alias), PyBytes_GET_SIZE(self._alias))
            self._write(p + self._ve, sep_end - self._ve)
        else:
            self._write(p + s, sep_end - s)
        return 0

    # -- one event ---------------------------------------------------------

    cdef int _event(self, const char* p, Py_ssize_t s, Py_ssize_t e) except -1:
        """Process the event p[s:e] (separator excluded); 1 to emit it, 0 to drop."""
        cdef Py_ssize_t ls = s
        cdef Py_ssize_t le, pe, ps, je
        cdef const char* hit
        cdef bint has_data = False
        self._vs = self._ve = -1
        self._model_seen = self._usage_seen = self._got_usage = False
        self._choices_seen = self._choices_empty = False
        while ls <= e:
            hit = <const char*>memchr(p + ls, b'\n', <size_t>(e - ls)) if ls < e else NULL
            le = (hit - p) if hit != NULL else e
            pe = le
            if pe > ls and p[pe - 1] == b'\r':
                pe -= 1
            if pe - ls >= 5 and memcmp(p + ls, b"data:", 5) == 0:
                has_data = True
                ps = ls + 5
                if ps < pe and p[ps] == b' ':
                    ps += 1
                if pe - ps == 6 and memcmp(p + ps, b"[DONE]", 6) == 0:
                    self.done = True
                else:
                    while ps < pe and _is_ws(p[ps]):
                        ps += 1
                    je = pe
                    while je > ps and _is_ws(p[je - 1]):
                        je -= 1
                    if je - ps >= 2 and p[ps] == b'{' and p[je - 1] == b'}':
                        self._json(p, ps, je)
            ls = le + 1
        if not has_data:
            return 1
        self.events += 1
        if self._got_usage and self._choices_empty and not self._forward_usage:
            return 0
        return 1

    cdef int _json(self, const char* p, Py_ssize_t js, Py_ssize_t je) except -1:
        """Scan one JSON object payload p[js:je] for the keys of interest."""
        cdef Py_ssize_t i = js
        cdef Py_ssize_t q, rem, klen, v, end, k
        cdef const char* hit
        cdef int kind
        cdef char c
        while i < je:
            hit = <const char*>memchr(p + i, b'"', <size_t>(je - i))
            if hit == NULL:
                break
            q = hit - p
            i = q + 1
            rem = je - i
            if rem < 6:  # shortest key + closing quote: model" / usage"
                break
            c = p[i]
            kind = K_NONE
            if c == b'c':
                if rem >= 8 and memcmp(p + i, b'content"', 8) == 0:
                    kind = K_TEXT
                    klen = 9
                elif rem >= 8 and memcmp(p + i, b'choices"', 8) == 0:
                    if not self._choices_seen:
                        kind = K_CHOICES
                        klen = 9
            elif c == b'm':
                if not self._model_seen and memcmp(p + i, b'model"', 6) == 0:
                    kind = K_MODEL
                    klen = 7
            elif c == b'u':
                if not self._usage_seen and memcmp(p + i, b'usage"', 6) == 0:
                    kind = K_USAGE
                    klen = 7
            elif c == b'r':
                if rem >= 8 and memcmp(p + i, b'refusal"', 8) == 0:
                    kind = K_TEXT
                    klen = 9
            elif c == b'a':
                if rem >= 10 and memcmp(p + i, b'arguments"', 10) == 0:
                    kind = K_TEXT
                    klen = 11
            elif c == b't':
                if (not self.first_content and rem >= 11
                        and memcmp(p + i, b'tool_calls"', 11) == 0):
                    kind = K_TOOL_CALLS
                    klen = 12
            if kind == K_NONE:
                continue
            v = _key_value(p, q, klen, js, je)
            if v < 0:
                continue
            if kind == K_TEXT:
                if p[v] == b'"':
                    end = _string_end(p, v + 1, je)
                    if end > v + 1:
                        self.first_content = True
                        self._texts.append(PyBytes_FromStringAndSize(p + v + 1, end - v - 1))
            elif kind == K_MODEL:
                self._model_seen = True
                if p[v] == b'"':
                    end = _string_end(p, v + 1, je)
                    if end >= 0:
                        self._vs = v
                        self._ve = end + 1
            elif kind == K_USAGE:
                self._usage_seen = True
                if p[v] == b'{':
                    end = _object_end(p, v, je)
                    if end >= 0:
                        self.usage_json = PyBytes_FromStringAndSize(p + v, end - v)
                        self._got_usage = True
            elif kind == K_CHOICES:
                self._choices_seen = True
                if p[v] == b'[':
                    k = v + 1
                    while k < je and _is_ws(p[k]):
                        k += 1
                    self._choices_empty = k < je and p[k] == b']'
            else:  # K_TOOL_CALLS
                self.first_content = True
        return 0


# -- rewrite_model: one whole JSON reply (spec: _sse_py.rewrite_model) --------

cdef enum:
    MAX_DEPTH = 512  # deeper: decline (orjson's own limit is 1024)


cdef inline Py_ssize_t _ws_skip(const unsigned char* p, Py_ssize_t i, Py_ssize_t n) noexcept nogil:
    while i < n and (p[i] == 32 or p[i] == 9 or p[i] == 13 or p[i] == 10):
        i += 1
    return i


cdef inline int _hex4(const unsigned char* p, Py_ssize_t i, Py_ssize_t n) noexcept nogil:
    """The value of 4 hex digits at p[i:i+4], or -1."""
    cdef int v = 0
    cdef int k
    cdef unsigned char c
    if i + 4 > n:
        return -1
    for k in range(4):
        c = p[i + k]
        if 48 <= c <= 57:
            v = v * 16 + (c - 48)
        elif 97 <= c <= 102:
            v = v * 16 + (c - 87)
        elif 65 <= c <= 70:
            v = v * 16 + (c - 55)
        else:
            return -1
    return v


cdef Py_ssize_t _jstring(const unsigned char* p, Py_ssize_t i, Py_ssize_t n) noexcept nogil:
    """Index past the closing quote of the string token at i (p[i] == '"'), or -1."""
    cdef unsigned char c
    cdef int unit, low
    i += 1
    while i < n:
        c = p[i]
        if c == 34:
            return i + 1
        if c < 32:
            return -1
        if c != 92:
            i += 1
            continue
        if i + 1 >= n:
            return -1
        c = p[i + 1]
        if c == 117:  # \uXXXX; surrogates must pair up
            unit = _hex4(p, i + 2, n)
            if unit < 0:
                return -1
            i += 6
            if 0xDC00 <= unit <= 0xDFFF:
                return -1
            if 0xD800 <= unit <= 0xDBFF:
                if i + 1 >= n or p[i] != 92 or p[i + 1] != 117:
                    return -1
                low = _hex4(p, i + 2, n)
                if low < 0xDC00 or low > 0xDFFF:
                    return -1
                i += 6
        elif (c == 34 or c == 92 or c == 47 or c == 98 or c == 102 or c == 110
              or c == 114 or c == 116):
            i += 2
        else:
            return -1
    return -1


cdef Py_ssize_t _jnumber(const unsigned char* p, Py_ssize_t i, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t s = i
    cdef Py_ssize_t es
    if i < n and p[i] == 45:
        i += 1
    if i >= n or p[i] < 48 or p[i] > 57:
        return -1
    if p[i] == 48:
        i += 1
    else:
        while i < n and 48 <= p[i] <= 57:
            i += 1
    # a '.' or 'e' without digits after it is not part of the token (the
    # caller then fails on it), as with the pure twin's regex
    if i + 1 < n and p[i] == 46 and 48 <= p[i + 1] <= 57:
        i += 1
        while i < n and 48 <= p[i] <= 57:
            i += 1
    if i < n and (p[i] == 101 or p[i] == 69):
        es = i + 1
        if es < n and (p[es] == 43 or p[es] == 45):
            es += 1
        if es < n and 48 <= p[es] <= 57:
            i = es
            while i < n and 48 <= p[i] <= 57:
                i += 1
            if i - es > 2:
                return -1
    if i - s > 300:
        return -1
    return i


cdef Py_ssize_t _jvalue(const unsigned char* p, Py_ssize_t i, Py_ssize_t n, int depth) noexcept nogil:
    """Index past the JSON value at i (no leading white space), or -1."""
    cdef unsigned char c, close
    if i >= n:
        return -1
    c = p[i]
    if c == 34:
        return _jstring(p, i, n)
    if c == 123 or c == 91:
        if depth >= MAX_DEPTH:
            return -1
        close = 125 if c == 123 else 93
        i = _ws_skip(p, i + 1, n)
        if i < n and p[i] == close:
            return i + 1
        while True:
            if c == 123:
                if i >= n or p[i] != 34:
                    return -1
                i = _jstring(p, i, n)
                if i < 0:
                    return -1
                i = _ws_skip(p, i, n)
                if i >= n or p[i] != 58:
                    return -1
                i = _ws_skip(p, i + 1, n)
            i = _jvalue(p, i, n, depth + 1)
            if i < 0:
                return -1
            i = _ws_skip(p, i, n)
            if i >= n:
                return -1
            if p[i] == close:
                return i + 1
            if p[i] != 44:
                return -1
            i = _ws_skip(p, i + 1, n)
    if c == 45 or 48 <= c <= 57:
        return _jnumber(p, i, n)
    if c == 116 and i + 4 <= n and memcmp(p + i, b"true", 4) == 0:
        return i + 4
    if c == 102 and i + 5 <= n and memcmp(p + i, b"false", 5) == 0:
        return i + 5
    if c == 110 and i + 4 <= n and memcmp(p + i, b"null", 4) == 0:
        return i + 4
    return -1


def rewrite_model(body, alias_json):
    """Set the top-level "model" of one JSON object reply; see `_sse_py.rewrite_model`."""
    cdef const unsigned char* p
    cdef Py_ssize_t n, i, ks, ke, vs, ve, close, last, us, ue, k, total, alen
    cdef Py_ssize_t members = 0
    cdef bint model_seen = False
    cdef bint ascii = True
    cdef list cuts = []  # (vs, ve) of every model value, in order
    cdef bytes out
    cdef char* o
    if not PyBytes_CheckExact(body):
        body = bytes(body)
    if not PyBytes_CheckExact(alias_json):
        alias_json = bytes(alias_json)
    p = <const unsigned char*>PyBytes_AS_STRING(body)
    n = PyBytes_GET_SIZE(body)
    for i in range(n):
        if p[i] >= 128:
            ascii = False
            break
    if not ascii:
        try:
            body.decode("utf-8")
        except UnicodeDecodeError:
            return None
    us = ue = -1
    i = _ws_skip(p, 0, n)
    if i >= n or p[i] != 123:
        return None
    i = _ws_skip(p, i + 1, n)
    if i < n and p[i] == 125:
        close = i
    else:
        while True:
            if i >= n or p[i] != 34:
                return None
            ks = i
            ke = _jstring(p, i, n)
            if ke < 0:
                return None
            i = _ws_skip(p, ke, n)
            if i >= n or p[i] != 58:
                return None
            vs = _ws_skip(p, i + 1, n)
            ve = _jvalue(p, vs, n, 1)
            if ve < 0:
                return None
            members += 1
            if ke - ks == 7:
                if memcmp(p + ks, b'"model"', 7) == 0:
                    cuts.append((vs, ve))
                    model_seen = True
                elif memcmp(p + ks, b'"usage"', 7) == 0:
                    us = vs
                    ue = ve
            i = _ws_skip(p, ve, n)
            if i >= n:
                return None
            if p[i] == 125:
                close = i
                break
            if p[i] != 44:
                return None
            i = _ws_skip(p, i + 1, n)
    if _ws_skip(p, close + 1, n) != n:
        return None
    alen = PyBytes_GET_SIZE(alias_json)
    if model_seen:
        total = n
        for vs, ve in cuts:
            total += alen - (ve - vs)
    else:
        total = n + alen + (9 if members else 8)
    out = PyBytes_FromStringAndSize(NULL, total)
    o = PyBytes_AS_STRING(out)
    k = 0
    last = 0
    if model_seen:
        for vs, ve in cuts:
            memcpy(o + k, p + last, <size_t>(vs - last))
            k += vs - last
            memcpy(o + k, PyBytes_AS_STRING(alias_json), <size_t>alen)
            k += alen
            last = ve
    else:
        memcpy(o + k, p, <size_t>close)
        k += close
        if members:
            memcpy(o + k, b',"model":', 9)
            k += 9
        else:
            memcpy(o + k, b'"model":', 8)
            k += 8
        memcpy(o + k, PyBytes_AS_STRING(alias_json), <size_t>alen)
        k += alen
        last = close
    memcpy(o + k, p + last, <size_t>(n - last))
    return out, (None if us < 0 else PyBytes_FromStringAndSize(<const char*>p + us, ue - us))

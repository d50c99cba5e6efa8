# cython: language_level=3
"""The usage report's rows, read and printed in C: the compiled twin of
`_fastpath._usage_py.PeriodReader` (same constructor, same bytes out).

Python's `sqlite3` takes the GIL back for every column of every row it
fetches, and a year of every key's weeks is ~370k rows of 11 columns; here
one read-only connection steps through them with SQLite's C API and writes
each row straight into a buffer, as `orjson.dumps(rows, OPT_INDENT_2)` or as
the `usage` table would print it. Floats are printed by CPython's own
shortest repr and laid out the way orjson lays them out.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.mem cimport PyMem_Free
from libc.stdio cimport snprintf
from libc.stdlib cimport atoi, free, realloc
from libc.math cimport signbit
from libc.string cimport memcmp, memcpy, strlen


cdef extern from "Python.h":
    char* PyOS_double_to_string(double val, char format_code, int precision, int flags, int* ptype) except NULL


cdef extern from "sqlite3.h":
    ctypedef struct sqlite3
    ctypedef struct sqlite3_stmt
    ctypedef void (*sqlite3_destructor_type)(void*)
    sqlite3_destructor_type SQLITE_TRANSIENT
    int SQLITE_OK
    int SQLITE_ROW
    int SQLITE_DONE
    int SQLITE_OPEN_READONLY
    int SQLITE_OPEN_NOMUTEX
    int SQLITE_INTEGER
    int SQLITE_FLOAT
    int SQLITE_TEXT
    int SQLITE_BLOB
    int SQLITE_NULL
    int sqlite3_open_v2(const char* filename, sqlite3** db, int flags, const char* vfs)
    int sqlite3_close_v2(sqlite3* db)
    int sqlite3_busy_timeout(sqlite3* db, int ms)
    const char* sqlite3_errmsg(sqlite3* db)
    int sqlite3_prepare_v2(sqlite3* db, const char* sql, int n, sqlite3_stmt** stmt, const char** tail)
    int sqlite3_finalize(sqlite3_stmt* stmt)
    int sqlite3_reset(sqlite3_stmt* stmt)
    int sqlite3_clear_bindings(sqlite3_stmt* stmt)
    int sqlite3_bind_int64(sqlite3_stmt* stmt, int i, long long value)
    int sqlite3_bind_double(sqlite3_stmt* stmt, int i, double value)
    int sqlite3_bind_text(sqlite3_stmt* stmt, int i, const char* text, int n, sqlite3_destructor_type d)
    int sqlite3_bind_null(sqlite3_stmt* stmt, int i)
    int sqlite3_step(sqlite3_stmt* stmt)
    int sqlite3_column_count(sqlite3_stmt* stmt)
    int sqlite3_column_type(sqlite3_stmt* stmt, int i)
    long long sqlite3_column_int64(sqlite3_stmt* stmt, int i)
    double sqlite3_column_double(sqlite3_stmt* stmt, int i)
    const unsigned char* sqlite3_column_text(sqlite3_stmt* stmt, int i)
    const void* sqlite3_column_blob(sqlite3_stmt* stmt, int i)
    int sqlite3_column_bytes(sqlite3_stmt* stmt, int i)


cdef int N_INTS = 6  # requests, errors, input, output, cached, reasoning tokens
cdef int N_COLUMNS = 11  # key_id, model, the 6 ints, audio_seconds, cost_usd, quantiles
cdef const char* INT_NAMES[6]
INT_NAMES[:] = [
    b'",\n    "requests": ', b',\n    "errors": ', b',\n    "input_tokens": ',
    b',\n    "output_tokens": ', b',\n    "cached_tokens": ', b',\n    "reasoning_tokens": ',
]
cdef int INT_WIDTHS[4]
INT_WIDTHS[:] = [6, 5, 9, 9]  # the table's count columns
cdef const char* Q_NAMES[3]
Q_NAMES[:] = [b',\n    "latency_ms_p50": ', b',\n    "latency_ms_p95": ', b',\n    "ttft_ms_p50": ']


class ReportError(RuntimeError):
    """The database could not be read, or held a value of an unexpected type:
    the caller falls back to the pure twin."""


cdef struct Buf:
    char* data
    Py_ssize_t size
    Py_ssize_t cap


cdef int grow(Buf* b, Py_ssize_t extra) except -1:
    cdef Py_ssize_t cap = b.cap or 65536
    cdef char* data
    if b.size + extra <= b.cap:
        return 0
    while cap < b.size + extra:
        cap *= 2
    data = <char*>realloc(b.data, cap)
    if data == NULL:
        raise MemoryError()
    b.data, b.cap = data, cap
    return 0


cdef inline int put(Buf* b, const char* s, Py_ssize_t n) except -1:
    if b.size + n > b.cap:
        grow(b, n)
    memcpy(b.data + b.size, s, n)
    b.size += n
    return 0


cdef inline int puts(Buf* b, const char* s) except -1:
    return put(b, s, strlen(s))


cdef int put_int(Buf* b, long long v, int width) except -1:
    """`v` in decimal, right-aligned in `width` characters (0: as it is)."""
    cdef char tmp[24]
    cdef int i = 24, n
    cdef unsigned long long u = <unsigned long long>(-(v + 1)) + 1 if v < 0 else <unsigned long long>v
    while True:
        i -= 1
        tmp[i] = <char>(48 + u % 10)
        u //= 10
        if u == 0:
            break
    if v < 0:
        i -= 1
        tmp[i] = b'-'
    n = 24 - i
    if b.size + n + width > b.cap:
        grow(b, n + width)
    while n < width:
        b.data[b.size] = b' '
        b.size += 1
        width -= 1
    memcpy(b.data + b.size, tmp + i, n)
    b.size += n
    return 0


cdef int put_json_float(Buf* b, double v) except -1:
    """`v` as orjson prints it: CPython's shortest repr digits, written out in
    full from 1e-5 up to 1e16 and as `1.5e-7` / `1e+16` beyond."""
    cdef char* r
    cdef char* e
    cdef char* m
    cdef char digits[32]
    cdef int nd = 0, exp
    if v == 0.0 and not signbit(v):  # most rows' audio_seconds
        return puts(b, b"0.0")
    if put_short_decimal(b, v):  # most costs: a few decimal places
        return 0
    r = PyOS_double_to_string(v, b'r', 0, 2, NULL)  # 2: Py_DTSF_ADD_DOT_0
    try:
        e = r
        while e[0] != 0 and e[0] != b'e':
            e += 1
        if e[0] == 0:  # no exponent: "123.45", "nan", "inf"
            if r[0] == b'n' or r[0] == b'i' or (r[0] == b'-' and r[1] == b'i'):
                raise ReportError("a float that JSON cannot hold")
            return put(b, r, e - r)
        exp = atoi(e + 1)
        if exp == -5:  # repr writes 1.25e-05; orjson 0.0000125
            m = r
            if m[0] == b'-':
                puts(b, b"-")
                m += 1
            while m < e:
                if m[0] != b'.':
                    digits[nd] = m[0]
                    nd += 1
                m += 1
            puts(b, b"0.0000")
            return put(b, digits, nd)
        put(b, r, e - r)
        puts(b, b"e")
        if exp > 0:
            puts(b, b"+")
        return put_int(b, exp, 0)
    finally:
        PyMem_Free(r)


cdef double* POW10 = [1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12,
                       1e13, 1e14, 1e15, 1e16, 1e17, 1e18, 1e19, 1e20]


cdef int put_short_decimal(Buf* b, double v) except -1:
    """`v` as its shortest repr, if that has at most 15 significant digits and
    `v` lies in [1e-5, 1e15): the first k for which some integer n makes
    n / 10**k == v (IEEE division rounds correctly, so the decimal n·10^-k
    reads back as `v`; with 15 digits or fewer no other of k places does).
    Returns 0, writing nothing, where that does not hold (dtoa then)."""
    cdef double a = -v if v < 0 else v
    cdef double scaled
    cdef long long n, whole, frac
    cdef int k
    cdef char tmp[24]
    cdef int i
    if not (1e-5 <= a < 1e15):
        return 0
    for k in range(19):  # 10**18: the largest power of ten a long long holds
        scaled = a * POW10[k]
        if scaled >= 1e15:
            return 0
        n = <long long>(scaled + 0.5)
        if n / POW10[k] == a:
            break
    else:
        return 0
    if v < 0:
        puts(b, b"-")
    whole = n // <long long>POW10[k]
    frac = n - whole * <long long>POW10[k]
    put_int(b, whole, 0)
    puts(b, b".")
    if k == 0:
        puts(b, b"0")
        return 1
    i = 24
    while k:  # the fraction's k digits, leading zeros kept
        i -= 1
        tmp[i] = <char>(48 + frac % 10)
        frac //= 10
        k -= 1
    put(b, tmp + i, 24 - i)
    return 1


cdef int put_fixed(Buf* b, double v, int prec, int width) except -1:
    """`format(v, f">{width}.{prec}f")`. In integers where `v` is under 1e6 and
    not within a thousandth of a unit of a tie at `prec` places (where the
    product's rounding could decide it); by `snprintf` otherwise."""
    cdef double a = -v if signbit(v) else v
    cdef double scaled, whole_part
    cdef long long n, whole, frac
    cdef char tmp[400]
    cdef int i = 400, d, len_
    if not (a < 1e6):
        len_ = snprintf(tmp, 400, b"%*.*f", width, prec, v)
        return put(b, tmp, len_)
    scaled = a * POW10[prec]
    whole_part = <double><long long>scaled
    if -1e-3 < scaled - whole_part - 0.5 < 1e-3:
        len_ = snprintf(tmp, 400, b"%*.*f", width, prec, v)
        return put(b, tmp, len_)
    n = <long long>scaled + (1 if scaled - whole_part > 0.5 else 0)
    whole = n // <long long>POW10[prec]
    frac = n - whole * <long long>POW10[prec]
    for d in range(prec):
        i -= 1
        tmp[i] = <char>(48 + frac % 10)
        frac //= 10
    i -= 1
    tmp[i] = b"."
    while True:
        i -= 1
        tmp[i] = <char>(48 + whole % 10)
        whole //= 10
        if whole == 0:
            break
    if signbit(v):
        i -= 1
        tmp[i] = b"-"
    len_ = 400 - i
    while len_ < width:
        puts(b, b" ")
        width -= 1
    return put(b, tmp + i, 400 - i)


cdef int put_json_text(Buf* b, const unsigned char* s, int n) except -1:
    """A JSON string as orjson writes one: UTF-8 as is, with `"`, `\\` and the
    control characters escaped."""
    cdef int i, start = 0
    cdef unsigned char c
    cdef char esc[8]
    puts(b, b'"')
    for i in range(n):
        c = s[i]
        if c >= 0x20 and c != 34 and c != 92:
            continue
        put(b, <const char*>s + start, i - start)
        start = i + 1
        if c == 34:
            puts(b, b'\\"')
        elif c == 92:
            puts(b, b'\\\\')
        elif c == 8:
            puts(b, b'\\b')
        elif c == 9:
            puts(b, b'\\t')
        elif c == 10:
            puts(b, b'\\n')
        elif c == 12:
            puts(b, b'\\f')
        elif c == 13:
            puts(b, b'\\r')
        else:
            snprintf(esc, 8, b'\\u%04x', c)
            put(b, esc, 6)
    put(b, <const char*>s + start, n - start)
    return puts(b, b'"')


cdef int put_padded(Buf* b, const unsigned char* s, int n, int width) except -1:
    """`s` left-aligned in `width` characters (code points, as `format` counts)."""
    cdef int i, chars = 0
    for i in range(n):
        if (s[i] & 0xC0) != 0x80:
            chars += 1
    put(b, <const char*>s, n)
    while chars < width:
        puts(b, b" ")
        chars += 1
    return 0


cdef class PeriodReader:
    """Reads the rows one SQL statement selects (`ROW_COLUMNS` of
    `proxy.usage.rollup_query`) and prints them; see `_usage_py.PeriodReader`."""

    cdef sqlite3* db
    cdef sqlite3_stmt* stmt
    cdef dict names
    cdef list shown_json
    cdef list shown_text
    cdef Buf buf

    def __cinit__(self):
        self.db = NULL
        self.stmt = NULL
        self.buf.data = NULL
        self.buf.size = self.buf.cap = 0

    def __init__(self, str db_path, str sql, dict names, list shown_json, list shown_text):
        cdef bytes path = db_path.encode()
        cdef bytes query = sql.encode()
        self.names = names
        self.shown_json = shown_json
        self.shown_text = shown_text
        if sqlite3_open_v2(path, &self.db, SQLITE_OPEN_READONLY | SQLITE_OPEN_NOMUTEX, NULL) != SQLITE_OK:
            raise ReportError(self._error())
        sqlite3_busy_timeout(self.db, 5000)
        if sqlite3_prepare_v2(self.db, query, -1, &self.stmt, NULL) != SQLITE_OK:
            raise ReportError(self._error())
        if sqlite3_column_count(self.stmt) != N_COLUMNS:
            raise ReportError("the statement must select the 11 row columns")

    def __dealloc__(self):
        self.close()

    def close(self) -> None:
        if self.stmt != NULL:
            sqlite3_finalize(self.stmt)
            self.stmt = NULL
        if self.db != NULL:
            sqlite3_close_v2(self.db)
            self.db = NULL
        free(self.buf.data)
        self.buf.data = NULL
        self.buf.size = self.buf.cap = 0

    def _error(self) -> str:
        if self.db == NULL:
            return "out of memory"
        return sqlite3_errmsg(self.db).decode(errors="replace")

    cdef int _bind(self, tuple args) except -1:
        cdef int i
        cdef bytes text
        if self.stmt == NULL:
            raise ReportError("closed")
        sqlite3_reset(self.stmt)
        sqlite3_clear_bindings(self.stmt)
        for i, arg in enumerate(args, 1):
            if isinstance(arg, int):
                sqlite3_bind_int64(self.stmt, i, arg)
            elif isinstance(arg, float):
                sqlite3_bind_double(self.stmt, i, arg)
            elif arg is None:
                sqlite3_bind_null(self.stmt, i)
            else:
                text = (<str?>arg).encode()
                sqlite3_bind_text(self.stmt, i, text, len(text), SQLITE_TRANSIENT)
        return 0

    cdef int _next_row(self) except -1:
        """1 with the next row checked, 0 after the last."""
        cdef int rc = sqlite3_step(self.stmt)
        if rc == SQLITE_DONE:
            return 0
        if rc != SQLITE_ROW:
            raise ReportError(self._error())
        self._check_row()
        return 1

    cdef int _check_row(self) except -1:
        cdef int i
        for i in range(2):
            if sqlite3_column_type(self.stmt, i) != SQLITE_TEXT:
                raise ReportError("key_id and model must be text")
        for i in range(2, 2 + N_INTS):
            if sqlite3_column_type(self.stmt, i) != SQLITE_INTEGER:
                raise ReportError("a count that is not an integer")
        for i in range(8, 10):
            if sqlite3_column_type(self.stmt, i) != SQLITE_FLOAT:
                raise ReportError("audio_seconds and cost_usd must be floats")
        if sqlite3_column_type(self.stmt, 10) != SQLITE_BLOB or sqlite3_column_bytes(self.stmt, 10) < 3:
            raise ReportError("quantiles must be a blob of 4 bytes")
        return 0

    cdef const unsigned char* _quantiles(self) except NULL:
        cdef const unsigned char* q = <const unsigned char*>sqlite3_column_blob(self.stmt, 10)
        cdef Py_ssize_t n = len(self.shown_json)
        if q[0] >= n or q[1] >= n or q[2] >= n:
            raise ReportError("a quantile bucket out of range")
        return q

    cdef bytes _take(self):
        out = PyBytes_FromStringAndSize(self.buf.data, self.buf.size)
        self.buf.size = 0
        return out

    def json_rows(self, tuple args, bytes label) -> bytes:
        """The selected rows as `orjson.dumps(rows, option=OPT_INDENT_2)[2:-2]`."""
        cdef Buf* b = &self.buf
        cdef int i, n, last_n = -1
        cdef const unsigned char* kid
        cdef const unsigned char* q
        cdef char last_kid[256]
        cdef bytes name = b"null"
        cdef bytes shown
        self._bind(args)
        b.size = 0
        while self._next_row():
            if b.size:
                puts(b, b",\n")
            kid = sqlite3_column_text(self.stmt, 0)
            n = sqlite3_column_bytes(self.stmt, 0)
            puts(b, b'  {\n    "key_id": ')
            put_json_text(b, kid, n)
            if n != last_n or n > 256 or memcmp(kid, last_kid, n) != 0:
                name = self.names.get(PyBytes_FromStringAndSize(<const char*>kid, n), b"null")
                if n <= 256:
                    memcpy(last_kid, kid, n)
                    last_n = n
                else:
                    last_n = -1
            puts(b, b',\n    "key_name": ')
            put(b, PyBytes_AS_STRING(name), PyBytes_GET_SIZE(name))
            puts(b, b',\n    "model": ')
            put_json_text(b, sqlite3_column_text(self.stmt, 1), sqlite3_column_bytes(self.stmt, 1))
            puts(b, b',\n    "period": "')
            put(b, PyBytes_AS_STRING(label), PyBytes_GET_SIZE(label))
            for i in range(N_INTS):
                puts(b, INT_NAMES[i])
                put_int(b, sqlite3_column_int64(self.stmt, 2 + i), 0)
            puts(b, b',\n    "audio_seconds": ')
            put_json_float(b, sqlite3_column_double(self.stmt, 8))
            puts(b, b',\n    "cost_usd": ')
            put_json_float(b, sqlite3_column_double(self.stmt, 9))
            q = self._quantiles()
            for i in range(3):
                puts(b, Q_NAMES[i])
                shown = self.shown_json[q[i]]
                put(b, PyBytes_AS_STRING(shown), PyBytes_GET_SIZE(shown))
            puts(b, b"\n  }")
        sqlite3_reset(self.stmt)
        return self._take()

    def table_rows(self, tuple args, bytes label) -> bytes:
        """The selected rows as lines of the `usage` table."""
        cdef Buf* b = &self.buf
        cdef int i
        cdef const unsigned char* q
        cdef bytes shown
        self._bind(args)
        b.size = 0
        while self._next_row():
            put_padded(b, <const unsigned char*>PyBytes_AS_STRING(label), PyBytes_GET_SIZE(label), 11)
            puts(b, b" ")
            put_padded(b, sqlite3_column_text(self.stmt, 0), sqlite3_column_bytes(self.stmt, 0), 21)
            puts(b, b" ")
            put_padded(b, sqlite3_column_text(self.stmt, 1), sqlite3_column_bytes(self.stmt, 1), 18)
            for i in range(4):
                puts(b, b" ")
                put_int(b, sqlite3_column_int64(self.stmt, 2 + i), INT_WIDTHS[i])
            puts(b, b" ")
            put_fixed(b, sqlite3_column_double(self.stmt, 8), 1, 8)
            puts(b, b" ")
            put_fixed(b, sqlite3_column_double(self.stmt, 9), 6, 11)
            q = self._quantiles()
            for i in (0, 2):
                shown = self.shown_text[q[i]]
                puts(b, b" ")
                put(b, PyBytes_AS_STRING(shown), PyBytes_GET_SIZE(shown))
            puts(b, b"\n")
        sqlite3_reset(self.stmt)
        return self._take()

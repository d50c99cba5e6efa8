# cython: language_level=3
"""The usage histograms' byte codec in C: the compiled twin of
`_fastpath._hist_py` (same functions, same bytes out; the format is in its
docstring). A merge is two sorted runs of at most 216 buckets walked side by
side in C arrays, not a Python loop of `bytearray.find` and `array.insert`.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from libc.math cimport ceil
from libc.stdint cimport uint64_t

cdef enum:
    MAX_BUCKETS = 256
cdef uint64_t U32 = 4294967296


cdef struct Hist:
    int n
    int width
    unsigned char buckets[MAX_BUCKETS]
    uint64_t counts[MAX_BUCKETS]


cdef int unpack(bytes blob, Hist* h) except -1:
    cdef const unsigned char* p = <const unsigned char*>PyBytes_AS_STRING(blob)
    cdef Py_ssize_t size = PyBytes_GET_SIZE(blob)
    cdef int i, j
    cdef uint64_t v
    if size < 4:
        raise ValueError("a histogram is at least 4 bytes")
    h.n, h.width = p[2], p[3]
    if (h.width != 4 and h.width != 8) or size < 4 + h.n + h.width * h.n:
        raise ValueError("not a histogram")
    for i in range(h.n):
        h.buckets[i] = p[4 + i]
    p += 4 + h.n
    for i in range(h.n):
        v = 0
        for j in range(h.width - 1, -1, -1):
            v = (v << 8) | p[j]
        h.counts[i] = v
        p += h.width
    return 0


cdef bytes pack(Hist* h, bint wide):
    """`wide`: 8-byte counts if the total needs them (the pure twin's array
    typecode "Q"); 4-byte ones otherwise."""
    cdef uint64_t total = 0, seen = 0, half, rank95
    cdef int i, j, width, p50 = -1, p95 = -1
    cdef bytes out
    cdef unsigned char* o
    cdef uint64_t v
    for i in range(h.n):
        total += h.counts[i]
    half = (total + 1) // 2
    rank95 = <uint64_t>ceil(0.95 * <double>total)
    if rank95 < 1:
        rank95 = 1
    for i in range(h.n):
        seen += h.counts[i]
        if p50 < 0 and seen >= half:
            p50 = h.buckets[i]
        if p95 < 0 and seen >= rank95:
            p95 = h.buckets[i]
    if p50 < 0:  # as bisect_left past the end: not for a real histogram
        raise ValueError("empty histogram")
    if p95 < 0:
        raise ValueError("empty histogram")
    width = 8 if wide and total >= U32 else 4
    out = PyBytes_FromStringAndSize(NULL, 4 + h.n + width * h.n)
    o = <unsigned char*>PyBytes_AS_STRING(out)
    o[0], o[1], o[2], o[3] = p50, p95, h.n, width
    for i in range(h.n):
        o[4 + i] = h.buckets[i]
    o += 4 + h.n
    for i in range(h.n):
        v = h.counts[i]
        for j in range(width):
            o[j] = v & 0xFF
            v >>= 8
        o += width
    return out


def encode(dict counts) -> bytes | None:
    """Counts per bucket (0 to 255; zeros left out) as a stored histogram."""
    cdef uint64_t by_bucket[MAX_BUCKETS]
    cdef bint present[MAX_BUCKETS]
    cdef Hist h
    cdef int b, i
    for i in range(MAX_BUCKETS):
        present[i] = False
    for key, value in counts.items():
        if not value:
            continue
        b = key
        if not 0 <= b < MAX_BUCKETS:
            raise ValueError("bucket out of range")
        by_bucket[b] = value
        present[b] = True
    h.n = 0
    for i in range(MAX_BUCKETS):
        if present[i]:
            h.buckets[h.n] = i
            h.counts[h.n] = by_bucket[i]
            h.n += 1
    if h.n == 0:
        return None
    return pack(&h, True)


def add(old, new):
    """Two stored histograms merged: the `hist_add` SQL function of the upsert."""
    cdef Hist a, b, m
    cdef int i = 0, j = 0
    cdef bint overflowed = False
    cdef uint64_t s
    if not old:
        return new
    if not new:
        return old
    unpack(old, &a)
    unpack(new, &b)
    m.n = 0
    while i < a.n or j < b.n:
        if j >= b.n or (i < a.n and a.buckets[i] < b.buckets[j]):
            m.buckets[m.n], m.counts[m.n] = a.buckets[i], a.counts[i]
            i += 1
        elif i >= a.n or b.buckets[j] < a.buckets[i]:
            m.buckets[m.n], m.counts[m.n] = b.buckets[j], b.counts[j]
            j += 1
        else:
            s = a.counts[i] + b.counts[j]
            if s < a.counts[i]:
                raise OverflowError("a histogram count past 2^64")
            if s >= U32:
                overflowed = True
            m.buckets[m.n], m.counts[m.n] = a.buckets[i], s
            i += 1
            j += 1
        m.n += 1
    # the pure twin's counts turn 8-byte where either input was, or a count
    # passed 2^32 (a new bucket keeps its count, one of 4 bytes if `old`'s were)
    return pack(&m, a.width == 8 or b.width == 8 or overflowed)


def add_into(dict counts, blob, long sign=1) -> None:
    """Add (sign 1) or take away (sign -1) a stored histogram's counts."""
    cdef Hist h
    cdef int i
    if not blob:
        return
    unpack(blob, &h)
    for i in range(h.n):
        key = h.buckets[i]
        count = h.counts[i]  # a Python int: the sums may go negative
        if sign == 1:
            counts[key] = counts.get(key, 0) + count
        else:
            counts[key] = counts.get(key, 0) - count


def add_to_list(list counts, blob, long sign=1) -> None:
    """`add_into` for counts kept as a list indexed by bucket."""
    cdef Hist h
    cdef int i
    if not blob:
        return
    unpack(blob, &h)
    for i in range(h.n):
        count = h.counts[i]
        if sign == 1:
            counts[h.buckets[i]] += count
        else:
            counts[h.buckets[i]] -= count

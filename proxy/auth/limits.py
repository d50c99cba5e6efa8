"""Per-key request and token windows and spend, one table for every worker of a
machine: a memory-mapped file (`<journal dir>/limits.shm`) that each worker maps
and locks (`flock`, held for a few microseconds) around each operation. Nothing
on the request path touches the network or the database.

Called by `proxy.auth.admission` (admit before the upstream call, settle when
the meter writes the request's record) and `proxy.auth.budgets` (the spend
seeded from SQLite when the first worker of a gateway starts).

Each key has a slot (found by a 16-byte digest of its id, linear probing):
- a sliding window of the last `WINDOW_S` seconds in one-second buckets, for
  requests and for tokens: a key with `rpm` N is admitted while fewer than N of
  its requests started in the last 60 s, on all workers together;
- its spend: in total, in the current UTC month and in the current UTC day.

The file outlives the processes (a restart does not hand a key a fresh
window); `attach` tells the caller whether it is the first process of a new
gateway (no live process had the file mapped), so that spend is seeded afresh.
"""

from __future__ import annotations

import fcntl
import hashlib
import mmap
import os
import struct
import time
from collections.abc import Callable
from pathlib import Path

from proxy.auth.periods import period_ids
from proxy.auth.windows import REQ, TOK, WINDOW_S, Window, oldest_second, refused

MAGIC = b"PGLIM001"
SLOTS = 8192  # keys one machine tracks; past it, a new key is served unlimited (logged)
HEADER_SIZE = 4096
MAX_ATTACHED = 200  # live processes recorded in the header
SLOT_SIZE = 800
FILE_SIZE = HEADER_SIZE + SLOTS * SLOT_SIZE

_ATTACHED = struct.Struct("<qq")  # pid, its start time (clock ticks since boot)
_ATTACHED_AT = 64
_STATE = struct.Struct(
    "<qqqddqdq"
)  # head second, requests, tokens, spend: total, month, id, day, id
_STATE_AT = 16
_REQ_AT = 80
_TOK_AT = _REQ_AT + REQ.size
_ZERO_BUCKETS = bytes(REQ.size + TOK.size)
_SLOT_ZERO = bytes(SLOT_SIZE)


class TableFull(Exception):
    """No free slot for another key on this machine."""


def _digest(key_id: str) -> bytes:
    return hashlib.blake2b(key_id.encode(), digest_size=16).digest()


def _start_time(pid: int) -> int | None:
    """A process's start time (field 22 of /proc/PID/stat), None if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    return int(stat[stat.rfind(b")") + 2 :].split()[19])


class LocalLimits:
    """This machine's shared table; one instance per process (its own open file,
    so that `flock` excludes the other workers)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        if os.fstat(self._fd).st_size < FILE_SIZE:
            os.ftruncate(self._fd, FILE_SIZE)
        self._mm = mmap.mmap(self._fd, FILE_SIZE)
        self._slots: dict[str, int] = {}  # key id -> slot offset (slots never move)
        self._oldest_at: dict[int, tuple[int, int, int]] = {}  # slot -> head, oldest r, t

    # -- locking and attaching ---------------------------------------------------
    def _lock(self) -> None:
        fcntl.flock(self._fd, fcntl.LOCK_EX)

    def _unlock(self) -> None:
        fcntl.flock(self._fd, fcntl.LOCK_UN)

    def attach(self, seed: Callable[[float], dict[str, tuple[float, float, float]]]) -> bool:
        """Record this process in the header. When no other live process had the
        table (a new gateway), set every key's spend from `seed(now)` (total, this
        month, today) before any other worker can count a request: True then. A
        file of another layout is emptied."""
        self._lock()
        try:
            mm = self._mm
            if mm[:8] != MAGIC:
                mm[:FILE_SIZE] = bytes(FILE_SIZE)
                mm[:8] = MAGIC
            live: list[tuple[int, int]] = []
            for i in range(MAX_ATTACHED):
                pid, started = _ATTACHED.unpack_from(mm, _ATTACHED_AT + i * _ATTACHED.size)
                if pid and pid != os.getpid() and _start_time(pid) == started:
                    live.append((pid, started))
            me = (os.getpid(), _start_time(os.getpid()) or 0)
            entries = ([*live, me] + [(0, 0)] * MAX_ATTACHED)[:MAX_ATTACHED]
            for i, (pid, started) in enumerate(entries):
                _ATTACHED.pack_into(mm, _ATTACHED_AT + i * _ATTACHED.size, pid, started)
            if not live:
                now = time.time()
                self._seed_spend(seed(now), now)
                # the seeding wrote every slot; only the slots in use need to stay
                # in this process's memory (the data stays in the shared file)
                self._mm.madvise(mmap.MADV_DONTNEED)
            return not live
        finally:
            self._unlock()

    def close(self) -> None:
        self._mm.close()
        os.close(self._fd)

    # -- slots ---------------------------------------------------------------------
    def _slot(self, key_id: str) -> int:
        """The key's slot offset, claimed on first use (call with the lock held)."""
        found = self._slots.get(key_id)
        if found is not None:
            return found
        digest = _digest(key_id)
        start = int.from_bytes(digest[:4], "little") % SLOTS
        mm = self._mm
        for probe in range(SLOTS):
            base = HEADER_SIZE + ((start + probe) % SLOTS) * SLOT_SIZE
            held = mm[base : base + 16]
            if held == digest:
                break
            if held == _SLOT_ZERO[:16]:
                mm[base : base + 16] = digest
                break
        else:
            raise TableFull(key_id)
        self._slots[key_id] = base
        return base

    def _advance(self, base: int, now_s: int) -> tuple[int, int, int]:
        """Expire the buckets older than the window; (head second, requests, tokens)."""
        mm = self._mm
        head, requests, tokens = struct.unpack_from("<qqq", mm, base + _STATE_AT)
        if now_s <= head:
            return head, requests, tokens  # same second (or the clock stepped back)
        if now_s - head >= WINDOW_S:
            mm[base + _REQ_AT : base + _TOK_AT + TOK.size] = _ZERO_BUCKETS
            requests = tokens = 0
        else:
            for second in range(head + 1, now_s + 1):
                i = second % WINDOW_S
                r_at, t_at = base + _REQ_AT + 4 * i, base + _TOK_AT + 8 * i
                requests -= struct.unpack_from("<I", mm, r_at)[0]
                tokens -= struct.unpack_from("<q", mm, t_at)[0]
                struct.pack_into("<I", mm, r_at, 0)
                struct.pack_into("<q", mm, t_at, 0)
        struct.pack_into("<qqq", mm, base + _STATE_AT, now_s, requests, tokens)
        return now_s, requests, tokens

    # -- the request path ------------------------------------------------------------
    def admit(
        self,
        key_id: str,
        now: float,
        rpm: int | None,
        tpm: int | None,
        tokens: int,
        period: str | None = None,
        budget: float | None = None,
        in_flight: float = 0.0,
    ) -> Window:
        """Under one lock: read the key's spend in `period` (if given) and refuse
        when it plus `in_flight` reaches `budget`; then count one request and
        reserve `tokens` if both fit in the window, else count nothing and say
        which limit refused it and when it would fit. A key with neither `rpm`
        nor `tpm` has no window: only its spend is read."""
        now_s = int(now)
        self._lock()
        try:
            base = self._slot(key_id)
            spent = 0.0 if period is None else self._spent(base, period, now)
            if budget is not None and spent + in_flight >= budget:
                return Window(False, "budget", 0, 0, 0.0, 0.0, 0.0, now_s, spent)
            if rpm is None and tpm is None:
                return Window(True, None, 0, 0, 0.0, 0.0, 0.0, now_s, spent)
            head, used_r, used_t = self._advance(base, now_s)
            refused_by = None
            if rpm is not None and used_r + 1 > rpm:
                refused_by = "rpm"
            elif tpm is not None and used_t + tokens > tpm and used_t > 0:
                refused_by = "tpm"  # a request larger than tpm still runs in an empty window
            mm = self._mm
            if refused_by is not None:
                raw = mm[base + _REQ_AT : base + _TOK_AT + TOK.size]
            else:
                i = head % WINDOW_S
                r_at, t_at = base + _REQ_AT + 4 * i, base + _TOK_AT + 8 * i
                struct.pack_into("<I", mm, r_at, struct.unpack_from("<I", mm, r_at)[0] + 1)
                if tokens:
                    bucket_t = struct.unpack_from("<q", mm, t_at)[0]
                    struct.pack_into("<q", mm, t_at, bucket_t + tokens)
                used_r, used_t = used_r + 1, used_t + tokens
                struct.pack_into("<qq", mm, base + _STATE_AT + 8, used_r, used_t)
                oldest_r, oldest_t = self._oldest(base, head, used_r, used_t)
        finally:
            self._unlock()
        if refused_by is not None:
            return refused(now, head, raw, used_r, used_t, rpm, tpm, tokens, refused_by)
        return Window(
            True,
            None,
            used_r,
            used_t,
            oldest_r + WINDOW_S - now if oldest_r >= 0 else 0.0,
            oldest_t + WINDOW_S - now if oldest_t >= 0 else 0.0,
            0.0,
            head,
            spent,
        )

    def _oldest(self, base: int, head: int, used_r: int, used_t: int) -> tuple[int, int]:
        """The seconds of the oldest request and the oldest tokens in the window
        (-1: none), found by a byte scan of the buckets once per second of the
        window's head and then kept (call with the lock held). The oldest bucket
        changes only when the head moves, or when an empty window gets its first."""
        cached = self._oldest_at.get(base)
        if (
            cached is not None
            and cached[0] == head
            and (cached[1] >= 0 or not used_r)
            and (cached[2] >= 0 or not used_t)
        ):
            return cached[1], cached[2]
        mm = self._mm
        oldest_r = oldest_second(head, mm[base + _REQ_AT : base + _TOK_AT], 4) if used_r else -1
        oldest_t = (
            oldest_second(head, mm[base + _TOK_AT : base + _TOK_AT + TOK.size], 8) if used_t else -1
        )
        self._oldest_at[base] = (head, oldest_r, oldest_t)
        return oldest_r, oldest_t

    def peek(self, key_id: str, now: float) -> Window:
        """The key's window as it stands, counting nothing."""
        self._lock()
        try:
            base = self._slot(key_id)
            head, used_r, used_t = self._advance(base, int(now))
            oldest_r, oldest_t = self._oldest(base, head, used_r, used_t)
        finally:
            self._unlock()
        reset_r = max(oldest_r + WINDOW_S - now, 0.0) if oldest_r >= 0 else 0.0
        reset_t = max(oldest_t + WINDOW_S - now, 0.0) if oldest_t >= 0 else 0.0
        return Window(True, None, used_r, used_t, reset_r, reset_t, 0.0, head)

    def settle(
        self,
        key_id: str,
        second: int,
        reserved: int,
        used: int,
        cost: float,
        time_now: float | None,
        requests: int = 0,
    ) -> None:
        """Replace a reservation of `reserved` tokens (made in `second`) with the
        `used` ones, if that second is still in the window, and add `cost` to the
        key's spend."""
        self._lock()
        try:
            base = self._slot(key_id)
            mm = self._mm
            head, used_r, used_t = struct.unpack_from("<qqq", mm, base + _STATE_AT)
            if head - second < WINDOW_S and (used != reserved or requests):
                i = second % WINDOW_S
                r_at, t_at = base + _REQ_AT + 4 * i, base + _TOK_AT + 8 * i
                bucket_t = struct.unpack_from("<q", mm, t_at)[0]
                new_t = max(0, bucket_t + used - reserved)
                struct.pack_into("<q", mm, t_at, new_t)
                used_t += new_t - bucket_t
                if requests:
                    bucket_r = struct.unpack_from("<I", mm, r_at)[0]
                    new_r = max(0, bucket_r + requests)
                    struct.pack_into("<I", mm, r_at, new_r)
                    used_r += new_r - bucket_r
                struct.pack_into("<qq", mm, base + _STATE_AT + 8, used_r, used_t)
            if cost and time_now is not None:
                self._add_spend(base, cost, time_now)
        finally:
            self._unlock()

    # -- spend -----------------------------------------------------------------------
    def _add_spend(self, base: int, cost: float, now: float) -> None:
        month_id, day_id = period_ids(now)
        at = base + _STATE_AT + 24
        total, month, m_id, day, d_id = struct.unpack_from("<ddqdq", self._mm, at)
        # a cost of an earlier period (added late) counts in total only
        if month_id >= m_id:
            month, m_id = (month if m_id == month_id else 0.0) + cost, month_id
        if day_id >= d_id:
            day, d_id = (day if d_id == day_id else 0.0) + cost, day_id
        struct.pack_into("<ddqdq", self._mm, at, total + cost, month, m_id, day, d_id)

    def add_spends(self, costs: dict[str, float], now: float) -> None:
        """Add each key's cost to its spend, under one lock (the spend of keys
        without a budget, which the workers gather and add in batches)."""
        self._lock()
        try:
            for key_id, cost in costs.items():
                try:
                    base = self._slot(key_id)
                except TableFull:
                    continue
                self._add_spend(base, cost, now)
        finally:
            self._unlock()

    def _spent(self, base: int, period: str, now: float) -> float:
        total, month, m_id, day, d_id = struct.unpack_from(
            "<ddqdq", self._mm, base + _STATE_AT + 24
        )
        if period == "total":
            return float(total)
        month_id, day_id = period_ids(now)
        if period == "monthly":
            return float(month) if m_id == month_id else 0.0
        return float(day) if d_id == day_id else 0.0

    def spend(self, key_id: str, period: str, now: float) -> float:
        """What the key spent in its budget period (`total`, `monthly`, `daily`)."""
        self._lock()
        try:
            return self._spent(self._slot(key_id), period, now)
        finally:
            self._unlock()

    def _seed_spend(self, spends: dict[str, tuple[float, float, float]], now: float) -> None:
        """Set every key's spend (total, this month, today), zeroing the others'
        (call with the lock held)."""
        month_id, day_id = period_ids(now)
        for i in range(SLOTS):
            at = HEADER_SIZE + i * SLOT_SIZE + _STATE_AT + 24
            struct.pack_into("<ddqdq", self._mm, at, 0.0, 0.0, 0, 0.0, 0)
        for key_id, (total, month, day) in spends.items():
            try:
                base = self._slot(key_id)
            except TableFull:
                continue
            at = base + _STATE_AT + 24
            struct.pack_into("<ddqdq", self._mm, at, total, month, month_id, day, day_id)

"""The host runner's data, transferred and tail verdicts for read and write steps.

Definitions (scenario-format.md, "Measurement"):

* ``data = "ok"``: for a read, destination bytes ``[0, ret)`` equal what the file held, the
  iovecs applied in order where they overlap (last writer wins); for a write, the file range
  equals the source bytes in iovec order.
* ``transferred``: the leading bytes of the request that moved (into the destination for a
  read, into the file for a write), rounded down to whole logical blocks.
* ``tail``: the destination bytes past ``ret`` within the request are all zero ("zero") and/or
  hold what they held before the step ("untouched").

Files are read back with O_DIRECT (falling back to buffered reads) so that checking never
brings file pages into the page cache that a later step expects to be absent.

The functions work on any memory that offers ``read_chunks`` / ``read`` (``MemView``: the
host's ``MemReader``, the model runner's ``ModelMem``) and any file reader with the signature
of ``read_file_range`` (the ``read_file`` keyword), so both runners share one definition.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from dioscope.difftest import libc as L
from dioscope.difftest.results import DATA_MISMATCH, DATA_OK, StepResult

Chunks = list[tuple[int, bytes | None]]
MAX_VERIFY = 256 << 20  # requests larger than this are not verified byte by byte


class MemView(Protocol):
    """Side-effect-free reads of a process's memory (unreadable pages give None)."""

    def read_chunks(self, addr: int, n: int) -> Chunks: ...

    def read(self, addr: int, n: int) -> bytes | None: ...


FileReader = Callable[[str, int, int], bytes]
"""``(path, offset, n) -> bytes``: the file's bytes [offset, offset+n), shorter at EOF."""


@dataclass
class PreIo:
    """What the runner saw just before an I/O step: request and destination snapshot."""

    segs: list[tuple[int, int]]
    offset: int
    total: int
    verifiable: bool
    before: list[Chunks] = field(default_factory=list)  # reads: each segment's memory
    file_before: bytes | None = None  # writes with a tail expectation: the file range


def _verifiable(segs: list[tuple[int, int]], offset: int) -> bool:
    total = 0
    for _a, n in segs:
        if n < 0:
            return False
        total += n
    return offset >= 0 and total <= MAX_VERIFY


def before_read(mem: MemView, segs: list[tuple[int, int]], offset: int) -> PreIo:
    """Snapshot the destination of a read (without faulting anything in)."""
    ok = _verifiable(segs, offset)
    pre = PreIo(segs, offset, sum(n for _a, n in segs) if ok else 0, ok)
    if ok:
        pre.before = [mem.read_chunks(a, n) for a, n in segs]
    return pre


def before_write(
    path: str,
    segs: list[tuple[int, int]],
    offset: int,
    want_tail: bool,
    *,
    read_file: FileReader | None = None,
) -> PreIo:
    """Record a write request; with ``want_tail``, snapshot the file range it targets."""
    ok = _verifiable(segs, offset)
    pre = PreIo(segs, offset, sum(n for _a, n in segs) if ok else 0, ok)
    if ok and want_tail:
        pre.file_before = (read_file or read_file_range)(path, offset, pre.total)
    return pre


def read_file_range(path: str, offset: int, n: int) -> bytes:
    """Return file bytes [offset, offset+n), shorter at EOF; O_DIRECT when the fs allows."""
    if n <= 0:
        return b""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECT | os.O_CLOEXEC)
    except OSError:
        with open(path, "rb") as f:
            f.seek(offset)
            return f.read(n)
    try:
        page = L.PAGE_SIZE
        start = offset // page * page
        end = (offset + n + page - 1) // page * page
        addr, err = L.mmap(
            0, end - start, L.PROT_READ | L.PROT_WRITE, L.MAP_PRIVATE | L.MAP_ANONYMOUS
        )
        if err:
            raise OSError(err, os.strerror(err))
        try:
            got = 0
            while start + got < end:
                r, e = L.pread(fd, addr + got, end - start - got, start + got)
                if e:
                    raise OSError(e, os.strerror(e), path)
                if r == 0:
                    break
                got += r
            data = ctypes.string_at(addr, got)
        finally:
            L.munmap(addr, end - start)
    finally:
        os.close(fd)
    return data[offset - start : offset - start + n]


def _slice(chunks: Chunks, lo: int, hi: int) -> Chunks:
    """Restrict page chunks to the address range [lo, hi)."""
    out: Chunks = []
    for a, data in chunks:
        n = len(data) if data is not None else _chunk_len(chunks, a)
        s, e = max(a, lo), min(a + n, hi)
        if s < e:
            out.append((s, None if data is None else data[s - a : e - a]))
    return out


def _chunk_len(chunks: Chunks, a: int) -> int:
    page = L.PAGE_SIZE
    return (a // page + 1) * page - a  # unreadable chunks end at the next page boundary


def _read_pieces(segs: list[tuple[int, int]], lo: int, hi: int) -> list[tuple[int, int, int]]:
    """Map request bytes [lo, hi) onto memory: (request position, address, length) pieces."""
    out = []
    pos = 0
    for a, n in segs:
        s, e = max(pos, lo), min(pos + n, hi)
        if s < e:
            out.append((s, a + (s - pos), e - s))
        pos += n
    return out


def _first_diff(a: bytes, b: bytes) -> int:
    """Return the index of the first differing byte of equal-length ``a`` and ``b``, or -1."""
    if a == b:
        return -1
    lo, hi = 0, len(a)
    while hi - lo > 64:  # binary search on slices: fast for large equal prefixes
        mid = (lo + hi) // 2
        if a[lo:mid] != b[lo:mid]:
            hi = mid
        else:
            lo = mid
    for i in range(lo, hi):
        if a[i] != b[i]:
            return i
    return len(a)


def _expected_read(
    pieces: list[tuple[int, int, int]], fb: bytes
) -> list[tuple[int, int, bytearray]]:
    """Expected bytes per piece with later pieces overriding overlapping earlier ones."""
    exp = [(p, a, bytearray(fb[p : p + n].ljust(n, b"\0"))) for p, a, n in pieces]
    order = sorted(range(len(exp)), key=lambda k: exp[k][1])
    overlaps = any(
        exp[order[k]][1] + len(exp[order[k]][2]) > exp[order[k + 1]][1]
        for k in range(len(order) - 1)
    )
    if overlaps:
        for i, (_pi, ai, bi) in enumerate(exp):
            for _pj, aj, bj in exp[i + 1 :]:
                s, e = max(ai, aj), min(ai + len(bi), aj + len(bj))
                if s < e:
                    bi[s - ai : e - ai] = bj[s - aj : e - aj]
    return exp


def _leading_match(mem: MemView, segs: list[tuple[int, int]], fb: bytes, total: int) -> int:
    """Return how many leading request bytes of memory equal the file (zeros past EOF)."""
    for p, a, ln in _read_pieces(segs, 0, total):
        for ca, got in mem.read_chunks(a, ln):
            q = p + (ca - a)
            if got is None:
                return q
            k = _first_diff(got, fb[q : q + len(got)].ljust(len(got), b"\0"))
            if k >= 0:
                return q + k
    return total


def after_read(
    mem: MemView,
    path: str,
    pre: PreIo,
    res: StepResult,
    lbs: int,
    *,
    read_file: FileReader | None = None,
) -> None:
    """Set ``res.data``, ``res.transferred`` and ``res.tail`` for a read step."""
    if not pre.verifiable:
        res.note = "request too large or malformed to verify the bytes"
        return
    n = res.ret if res.ret is not None and res.errno is None else 0
    n = max(0, min(n, pre.total))
    fb = (read_file or read_file_range)(path, pre.offset, pre.total)
    # data: destination [0, n) equals the file, last writer wins
    res.data = DATA_OK
    for p, a, want in _expected_read(_read_pieces(pre.segs, 0, n), fb):
        got = mem.read(a, len(want))
        k = -1 if got == bytes(want) else (0 if got is None else _first_diff(got, bytes(want)))
        if k >= 0:
            res.data = DATA_MISMATCH
            res.data_detail = f"first difference at request byte {p + k}"
            break
    # transferred: leading request bytes equal to the file (zeros past EOF)
    res.transferred = _leading_match(mem, pre.segs, fb, pre.total) // lbs * lbs
    # tail: request bytes [n, total)
    zero = untouched = True
    pos = 0
    for (a, ln), before in zip(pre.segs, pre.before, strict=True):
        if pos + ln > n:
            lo = a + max(0, n - pos)
            olds = _slice(before, lo, a + ln)
            news = mem.read_chunks(lo, a + ln - lo)
            for (_ca, old), (_cb, new) in zip(olds, news, strict=True):
                if new is None:
                    continue
                zero = zero and not any(new)
                untouched = untouched and old is not None and old == new
        pos += ln
    res.tail = tuple(w for w, ok in (("zero", zero), ("untouched", untouched)) if ok)


def after_write(
    mem: MemView,
    path: str,
    pre: PreIo,
    res: StepResult,
    lbs: int,
    *,
    read_file: FileReader | None = None,
) -> None:
    """Set ``res.data``, ``res.transferred`` and (when asked) ``res.tail`` for a write step."""
    if not pre.verifiable:
        res.note = "request too large or malformed to verify the bytes"
        return
    n = res.ret if res.ret is not None and res.errno is None else 0
    n = max(0, min(n, pre.total))
    fb = (read_file or read_file_range)(path, pre.offset, pre.total)
    parts: list[bytes] = []
    src_ok = pre.total
    for p, a, ln in _read_pieces(pre.segs, 0, pre.total):
        for ca, data in mem.read_chunks(a, ln):
            if data is None:
                src_ok = min(src_ok, p + (ca - a))
                break
            parts.append(data)
        if src_ok < pre.total:
            break
    src = b"".join(parts)[:src_ok]
    res.data = DATA_OK
    if n > src_ok or len(fb) < n or fb[:n] != src[:n]:
        res.data = DATA_MISMATCH
        m = min(n, len(fb), src_ok)
        k = _first_diff(fb[:m], src[:m])
        res.data_detail = f"first difference at request byte {k if k >= 0 else m}"
    m = min(len(fb), len(src))
    k = _first_diff(fb[:m], src[:m])
    res.transferred = (m if k < 0 else k) // lbs * lbs
    if pre.file_before is not None:
        after = fb[n:]
        before = pre.file_before[n:]
        zero = not any(after)
        untouched = after == before
        res.tail = tuple(w for w, ok in (("zero", zero), ("untouched", untouched)) if ok)

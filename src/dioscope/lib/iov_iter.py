"""``struct iov_iter`` and its core operations (``include/linux/uio.h``, ``lib/iov_iter.c``).

Iterator types, per profile:

=============  ======================================  ==================================
type           backing                                 profiles
=============  ======================================  ==================================
ITER_IOVEC     array of user (base, len)               all
ITER_UBUF      one user buffer                         6.18 (Linux commit fcb14cb1bdac)
ITER_KVEC      array of kernel virtual (base, len)     all
ITER_BVEC      array of (page, len, offset)            all
ITER_PIPE      a pipe's ring of buffers                5.9, 5.9-pin (removed 3fc40265ae2b)
ITER_DISCARD   nothing: data is dropped                all
=============  ======================================  ==================================

Direction (``data_source``): ``ITER_DEST`` (READ, 0) means data flows into the iterator,
``ITER_SOURCE`` (WRITE, 1) means it is the source.

Segments are a numpy int64 array of shape (nr, 2): (base, len) for IOVEC/KVEC (uint64 for
KVEC, whose direct-map addresses lie above 2**63), and for
BVEC the bio layout (page pfn, ``len << 32 | offset``). ``_seg`` indexes the current segment
(the kernel's ``iov``/``bvec`` pointer); ``nr_segs`` counts the segments from there on.
User-backed iterators carry the ``mm`` of the task they belong to (``current->mm``); kernel
virtual addresses are direct-map addresses (``PAGE_OFFSET + pfn * PAGE_SIZE``).

Advancing differs between profiles: [5.9] ``iterate_and_advance`` stops at the exact end of a
segment and steps over that one segment only; [6.x] ``iov_iter_iovec_advance`` steps over
every fully consumed segment, zero-length ones included.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any, Final

import numpy as np

from ..kernel.types import MAX_RW_COUNT, PAGE_OFFSET, PAGE_SHIFT, PAGE_SIZE
from ..mm.uaccess import read_user, write_user

if TYPE_CHECKING:
    from ..mm.mm_types import MmStruct
    from ..mm.page_alloc import PgData
    from .pipe_buf import PipeInodeInfo

__all__ = [
    "ITER_BVEC",
    "ITER_DEST",
    "ITER_DISCARD",
    "ITER_IOVEC",
    "ITER_KVEC",
    "ITER_PIPE",
    "ITER_SOURCE",
    "ITER_TYPE",
    "ITER_UBUF",
    "IovIter",
    "copy_from_iter",
    "copy_to_iter",
    "iov_iter_advance",
    "iov_iter_alignment",
    "iov_iter_bvec",
    "iov_iter_count",
    "iov_iter_discard",
    "iov_iter_gap_alignment",
    "iov_iter_init",
    "iov_iter_is_aligned",
    "iov_iter_kvec",
    "iov_iter_npages",
    "iov_iter_reexpand",
    "iov_iter_revert",
    "iov_iter_truncate",
    "iov_iter_ubuf",
    "iov_iter_zero",
]

ITER_DEST: Final = 0  # READ
ITER_SOURCE: Final = 1  # WRITE


class ITER_TYPE(enum.IntEnum):
    """``enum iter_type`` (values of the v6.8+ order; the model never depends on them)."""

    ITER_UBUF = 0
    ITER_IOVEC = 1
    ITER_BVEC = 2
    ITER_KVEC = 3
    ITER_PIPE = 4
    ITER_DISCARD = 5


# The members by their kernel names, as module globals: a global lookup costs a third of an
# attribute lookup on the enum class, and the iterator code tests the type at every step.
ITER_UBUF = ITER_TYPE.ITER_UBUF
ITER_IOVEC = ITER_TYPE.ITER_IOVEC
ITER_BVEC = ITER_TYPE.ITER_BVEC
ITER_KVEC = ITER_TYPE.ITER_KVEC
ITER_PIPE = ITER_TYPE.ITER_PIPE
ITER_DISCARD = ITER_TYPE.ITER_DISCARD


_IOV_ITER_FIELDS: Final = (
    "_seg",
    "count",
    "data_source",
    "iov_offset",
    "iter_type",
    "mm",
    "nofault",
    "nr_segs",
    "pgdat",
    "pipe",
    "segs",
    "start_head",
    "ubuf",
    "v6",
)


class IovIter:
    """``struct iov_iter``."""

    __slots__ = _IOV_ITER_FIELDS

    def __init__(self, pgdat: PgData, iter_type: ITER_TYPE, direction: int, count: int,
                 segs: np.ndarray | None = None, mm: MmStruct | None = None) -> None:
        if direction not in (ITER_DEST, ITER_SOURCE):
            raise ValueError(f"bad iov_iter direction {direction}")
        self.pgdat = pgdat
        self.iter_type = iter_type
        self.data_source = direction
        self.count = count
        self.iov_offset = 0
        self.segs = segs if segs is not None else np.zeros((0, 2), np.int64)
        self._seg = 0
        self.nr_segs = len(self.segs)
        self.mm = mm
        self.pipe: PipeInodeInfo | None = None
        self.start_head = 0
        self.nofault = False
        self.v6 = pgdat.cfg.ITER_UBUF  # 6.x advance/revert algorithms
        self.ubuf = (int(self.segs[0, 0])
                     if iter_type == ITER_UBUF and len(self.segs) else 0)
        """ITER_UBUF: the buffer's address (``i->ubuf``), as a plain int."""

    # --- predicates ----------------------------------------------------------------------
    def iov_iter_rw(self) -> int:
        return self.data_source

    def user_backed_iter(self) -> bool:
        """``user_backed_iter()``: UBUF or IOVEC."""
        return self.iter_type in (ITER_IOVEC, ITER_UBUF)

    def iter_is_iovec(self) -> bool:
        return self.iter_type == ITER_IOVEC

    def copy(self) -> IovIter:
        """A copy sharing the segment array (as a struct copy in C does)."""
        c = IovIter(self.pgdat, self.iter_type, self.data_source, self.count, self.segs,
                    self.mm)
        for f in _IOV_ITER_FIELDS:
            setattr(c, f, getattr(self, f))
        return c

    # --- segment walking -----------------------------------------------------------------
    def seg_len(self, k: int) -> int:
        if self.iter_type == ITER_BVEC:
            return int(self.segs[k, 1]) >> 32
        return int(self.segs[k, 1])

    def chunks(self, n: int) -> Iterator[tuple[int, int, int]]:
        """The next ``n`` bytes (capped at ``count``) as (segment index, start, len) pieces,
        in order, skipping zero-length segments. ``start`` is the address (IOVEC, UBUF,
        KVEC) or the byte offset from ``bv_page`` (BVEC)."""
        n = min(n, self.count)
        k, skip = self._seg, self.iov_offset
        while n > 0 and k < len(self.segs):
            seg_len = self.seg_len(k)
            take = min(n, seg_len - skip)
            if take > 0:
                if self.iter_type == ITER_BVEC:
                    base = int(self.segs[k, 1]) & 0xFFFFFFFF
                else:
                    base = int(self.segs[k, 0])
                yield k, base + skip, take
                n -= take
            k += 1
            skip = 0

    def first_segment(self, maxsize: int) -> tuple[int, int, int] | None:
        """``first_iovec_segment()`` / ``first_bvec_segment()``: the first non-empty piece
        of at most ``maxsize`` bytes, as (segment index, start, len)."""
        if self.iter_type == ITER_UBUF:  # ubuf + iov_offset, no segment walk
            n = min(maxsize, self.count)
            return (0, self.ubuf + self.iov_offset, n) if n > 0 else None
        for piece in self.chunks(maxsize):
            return piece
        return None

    def __repr__(self) -> str:
        return (f"IovIter({self.iter_type.name}, {'SOURCE' if self.data_source else 'DEST'}, "
                f"count={self.count}, seg={self._seg}, off={self.iov_offset}, "
                f"nr_segs={self.nr_segs})")


# --- constructors ---------------------------------------------------------------------------
def _as_segs(iov: Sequence[tuple[int, int]] | np.ndarray, dtype: type = np.int64) -> np.ndarray:
    arr: np.ndarray = np.asarray(iov, dtype=dtype).reshape(-1, 2)
    return arr


def iov_iter_init(pgdat: PgData, direction: int, iov: Sequence[tuple[int, int]] | np.ndarray,
                  nr_segs: int, count: int, mm: MmStruct) -> IovIter:
    """``iov_iter_init()``: an ITER_IOVEC over user (base, len) pairs of ``mm``."""
    segs = _as_segs(iov)[:nr_segs]
    return IovIter(pgdat, ITER_IOVEC, direction, count, segs, mm)


def iov_iter_ubuf(pgdat: PgData, direction: int, buf: int, count: int,
                  mm: MmStruct) -> IovIter:
    """``iov_iter_ubuf()`` [6.0+]: one user buffer (ITER_UBUF)."""
    if not pgdat.cfg.ITER_UBUF:
        raise RuntimeError(f"ITER_UBUF does not exist in profile {pgdat.cfg.name}")
    segs = np.empty((1, 2), np.int64)  # (cheaper than np.array of a nested list)
    segs[0, 0] = buf
    segs[0, 1] = count
    return IovIter(pgdat, ITER_UBUF, direction, count, segs, mm)


def iov_iter_kvec(pgdat: PgData, direction: int, kvec: Sequence[tuple[int, int]] | np.ndarray,
                  nr_segs: int, count: int) -> IovIter:
    """``iov_iter_kvec()``: kernel virtual (direct-map) buffers."""
    # uint64: direct-map addresses (PAGE_OFFSET + ...) lie above 2**63.
    segs = _as_segs(kvec, np.uint64)[:nr_segs]
    return IovIter(pgdat, ITER_KVEC, direction, count, segs)


def iov_iter_bvec(pgdat: PgData, direction: int,
                  bvec: Sequence[tuple[int, int, int]] | np.ndarray, nr_segs: int,
                  count: int) -> IovIter:
    """``iov_iter_bvec()``: pages already owned by the caller. ``bvec`` rows are
    (page, len, offset), or an (n, 2) array in the bio layout."""
    arr = np.asarray(bvec, dtype=np.int64)
    if arr.ndim == 2 and arr.shape[1] == 3:
        arr = np.stack([arr[:, 0], (arr[:, 1] << 32) | arr[:, 2]], axis=1)
    return IovIter(pgdat, ITER_BVEC, direction, count, arr[:nr_segs])


def iov_iter_discard(pgdat: PgData, direction: int, count: int) -> IovIter:
    """``iov_iter_discard()``: a READ destination that drops the data."""
    return IovIter(pgdat, ITER_DISCARD, direction, count)


# --- counting and shaping -------------------------------------------------------------------
def iov_iter_count(i: IovIter) -> int:
    return i.count


def iov_iter_truncate(i: IovIter, count: int) -> None:
    """``iov_iter_truncate()``: limit the iterator to ``count`` bytes (never grows it)."""
    if i.count > count:
        i.count = count


def iov_iter_reexpand(i: IovIter, count: int) -> None:
    """``iov_iter_reexpand()``: give back what truncate took away."""
    i.count = count


def iov_iter_advance(i: IovIter, size: int) -> None:
    """``iov_iter_advance()``: consume ``size`` bytes (clamped to ``count``)."""
    if size > i.count:
        size = i.count
    t = i.iter_type
    if t == ITER_DISCARD:
        i.count -= size
        return
    if t == ITER_PIPE:
        from .pipe_buf import pipe_advance

        pipe_advance(i, size)
        return
    if t == ITER_UBUF:
        i.iov_offset += size
        i.count -= size
        return
    if i.v6:
        if not i.count:
            return
        i.count -= size
        size += i.iov_offset
        k = i._seg
        while k < len(i.segs) and size >= i.seg_len(k):
            size -= i.seg_len(k)
            k += 1
        i.iov_offset = size
        i.nr_segs -= k - i._seg
        i._seg = k
        return
    # [5.9] iterate_and_advance(): walk n bytes, then step over the segment just finished.
    if not i.count:
        return
    if t == ITER_BVEC and not size:
        return  # for_each_bvec() takes no step, so nothing is stepped over, not even a 0-len bvec
    k, skip, n = i._seg, i.iov_offset, size
    if k < len(i.segs):
        take = min(n, i.seg_len(k) - skip)
        skip += take
        n -= take
        while n:
            k += 1
            take = min(n, i.seg_len(k))
            if not take:
                continue
            skip = take
            n -= take
        if k < len(i.segs) and skip == i.seg_len(k):
            k += 1
            skip = 0
    i.nr_segs -= k - i._seg
    i._seg = k
    i.count -= size
    i.iov_offset = skip


def iov_iter_revert(i: IovIter, unroll: int) -> None:
    """``iov_iter_revert()``: the inverse of advance. More than MAX_RW_COUNT WARNs and does
    nothing; [6.x] reverting a UBUF past its start is a BUG."""
    if not unroll:
        return
    if unroll > MAX_RW_COUNT:
        i.pgdat.events.warn("iov_iter_revert", f"unroll {unroll} > MAX_RW_COUNT")
        return
    i.count += unroll
    t = i.iter_type
    if t == ITER_PIPE:
        from .pipe_buf import pipe_revert

        pipe_revert(i, unroll)
        return
    if t == ITER_DISCARD:
        return
    if unroll <= i.iov_offset:
        i.iov_offset -= unroll
        return
    if t == ITER_UBUF:
        i.pgdat.events.bug("iov_iter_revert", "revert past the start of an ITER_UBUF")
        i.iov_offset = 0
        return
    unroll -= i.iov_offset
    k = i._seg
    while True:
        k -= 1
        if k < 0:
            i.pgdat.events.bug("iov_iter_revert", "revert past the first segment")
            k = 0
            i.iov_offset = 0
            break
        n = i.seg_len(k)
        i.nr_segs += 1
        if unroll <= n:
            i.iov_offset = n - unroll
            break
        unroll -= n
    i._seg = k


def _segments(i: IovIter) -> Iterator[tuple[int, int]]:
    """(start, len) of every segment from the current one on, zero-length ones included,
    the first one less ``iov_offset``: what the [6.x] per-type loops of ``lib/iov_iter.c``
    walk. ``start`` is the address, or for BVEC ``bv_offset + skip``."""
    skip = i.iov_offset
    for k in range(i._seg, i._seg + i.nr_segs):
        if i.iter_type == ITER_BVEC:
            base = int(i.segs[k, 1]) & 0xFFFFFFFF
        else:
            base = int(i.segs[k, 0])
        yield base + skip, i.seg_len(k) - skip
        skip = 0


def _pieces(i: IovIter) -> Iterator[tuple[int, int]]:
    """(start, len) of what [5.9] ``iterate_all_kinds`` hands its step over ``count``: the
    non-empty segment pieces, BVEC ones split at page boundaries with in-page offsets
    (``for_each_bvec`` walks with the single-page ``bvec_iter_bvec``)."""
    for _k, start, length in i.chunks(i.count):
        if i.iter_type != ITER_BVEC:
            yield start, length
            continue
        while length:
            off = start & (PAGE_SIZE - 1)
            take = min(length, PAGE_SIZE - off)
            yield off, take
            start += take
            length -= take


def iov_iter_npages(i: IovIter, maxpages: int) -> int:
    """``iov_iter_npages()``: pages the remaining data touches, capped at ``maxpages``.

    IOVEC/UBUF/KVEC/BVEC: a piece from address (BVEC: page offset) a of length L touches
    ceil((a+L)/P) - floor(a/P) pages, summed per piece. [5.9] counts BVEC pieces with
    ``npages++``, but ``iterate_bvec`` hands it single-page pieces, so a multi-page bvec
    counts every page it spans, as in [6.x] ``bvec_npages()`` (which also counts the page
    a zero-length bvec's offset lies in, if that offset is not 0). PIPE: free ring slots.
    DISCARD: 0.
    """
    t = i.iter_type
    if not i.count or t == ITER_DISCARD:
        return 0
    if t == ITER_PIPE:
        from .pipe_buf import pipe_npages

        return min(pipe_npages(i), maxpages)
    if t == ITER_UBUF:  # the pages of [ubuf + iov_offset, + count)
        offs = (i.ubuf + i.iov_offset) & (PAGE_SIZE - 1)
        return min((offs + i.count + PAGE_SIZE - 1) >> PAGE_SHIFT, maxpages)
    npages = 0
    if i.v6 and t == ITER_BVEC:
        size = i.count
        for start, length in _segments(i):
            length = min(length, size)
            size -= length
            npages += ((start & (PAGE_SIZE - 1)) + length + PAGE_SIZE - 1) >> PAGE_SHIFT
            if npages >= maxpages:
                return maxpages
            if not size:
                break
        return npages
    for _k, start, length in i.chunks(i.count):
        npages += ((start + length + PAGE_SIZE - 1) >> PAGE_SHIFT) - (start >> PAGE_SHIFT)
        if npages >= maxpages:
            return maxpages
    return npages


def iov_iter_alignment(i: IovIter) -> int:
    """``iov_iter_alignment()``: OR of every remaining piece's start and length.

    A caller tests ``alignment & (blocksize - 1)``. [5.9] ORs what ``iterate_all_kinds``
    hands its step (BVEC: per page piece, ``bv_offset | bv_len``); [6.x]
    ``iov_iter_alignment_bvec()`` ORs each bvec's ``bv_offset + skip`` and length, a
    zero-length bvec's offset included. UBUF: address | count. PIPE: count, ORed with the
    in-buffer offset when the last buffer is partly filled.
    """
    t = i.iter_type
    if t == ITER_DISCARD:
        return i.count
    if t == ITER_PIPE:
        from .pipe_buf import pipe_alignment

        return pipe_alignment(i)
    if t == ITER_UBUF:
        return (i.ubuf + i.iov_offset) | i.count if i.count else 0
    res = 0
    if i.v6 and t == ITER_BVEC:
        size = i.count
        for start, length in _segments(i):
            length = min(length, size)
            res |= start | length
            size -= length
            if not size:
                break
        return res
    for start, length in _pieces(i):
        res |= start | length
    return res


def iov_iter_gap_alignment(i: IovIter) -> int:
    """``iov_iter_gap_alignment()`` (virt-boundary check of SG_IO).

    [5.9]: over the ``iterate_all_kinds`` pieces, each piece's start once ``res`` is
    nonzero, and the bytes remaining at a piece unless it is the last, ORed; PIPE and
    DISCARD WARN and return ~0U. [6.x] (the patch "iov_iter_gap_alignment(): get rid of
    iterate_all_kinds()" <20210606191051.1216821-16-viro@zeniv.linux.org.uk> (v5.14)): IOVEC
    only, ignoring ``iov_offset``, for each non-empty segment after the first its start ORed
    with the previous one's end address; UBUF gives 0; anything else WARNs and gives ~0U.
    """
    t = i.iter_type
    if i.v6:
        if t == ITER_UBUF:
            return 0
        if t != ITER_IOVEC:
            i.pgdat.events.warn("iov_iter_gap_alignment", f"{t.name} iterator")
            return 0xFFFFFFFF
        res = prev_end = 0
        size = i.count
        for k in range(i._seg, i._seg + i.nr_segs):
            base, length = int(i.segs[k, 0]), int(i.segs[k, 1])
            if not length:
                continue
            if prev_end:
                res |= base | prev_end
            prev_end = base + length
            if size <= length:
                break
            size -= length
        return res
    if t in (ITER_PIPE, ITER_DISCARD):
        i.pgdat.events.warn("iov_iter_gap_alignment", "pipe or discard iterator")
        return 0xFFFFFFFF
    res = 0
    size = i.count
    for start, length in _pieces(i):
        res |= (start if res else 0) | (size if size != length else 0)
        size -= length
    return res


def iov_iter_is_aligned(i: IovIter, addr_mask: int, len_mask: int) -> bool:
    """``iov_iter_is_aligned()`` [6.0+] (used by ``bdev_iter_is_aligned``): every segment
    from the current one on, until ``count`` is used up, has its start (less
    ``iov_offset`` for the first) within ``addr_mask`` and its length, capped at what
    remains, within ``len_mask``. A zero-length segment on the way is checked too: its
    address counts (``iov_iter_aligned_iovec()`` / ``iov_iter_aligned_bvec()``; BVEC lengths
    as ``bv_len - skip``, the fix <20250428095849.11709-1-nj.shetty@samsung.com> to Linux
    commit 2263639f96f2 ("iov_iter: streamline iovec/bvec alignment iteration"))."""
    t = i.iter_type
    if t in (ITER_PIPE, ITER_DISCARD):
        return not (i.count & len_mask)
    if t == ITER_UBUF:
        start = i.ubuf + i.iov_offset
        return not (i.count & len_mask) and not (start & addr_mask)
    size = i.count
    for start, length in _segments(i):
        length = min(length, size)
        if length & len_mask or start & addr_mask:
            return False
        size -= length
        if not size:
            break
    return True


# --- copies ---------------------------------------------------------------------------------
def _phys(i: IovIter, k: int, start: int) -> tuple[int, int]:
    """(pfn, offset in page) of byte ``start`` of kernel-backed segment ``k``."""
    if i.iter_type == ITER_BVEC:
        page = int(i.segs[k, 0]) + (start >> PAGE_SHIFT)
        return page, start & (PAGE_SIZE - 1)
    phys = start - PAGE_OFFSET
    return phys >> PAGE_SHIFT, phys & (PAGE_SIZE - 1)


def _kernel_write(i: IovIter, k: int, start: int, data: np.ndarray) -> None:
    pfn, off = _phys(i, k, start)
    mem = i.pgdat.mem.bytes
    base = (pfn << PAGE_SHIFT) + off
    mem[base : base + len(data)] = data


def _kernel_read(i: IovIter, k: int, start: int, length: int) -> np.ndarray:
    pfn, off = _phys(i, k, start)
    base = (pfn << PAGE_SHIFT) + off
    return i.pgdat.mem.bytes[base : base + length].copy()


def copy_to_iter(data: bytes | bytearray | memoryview | np.ndarray, i: IovIter) -> int:
    """``copy_to_iter()``: copy ``data`` into the iterator and advance.

    User destinations fault like ``copy_to_user``; the copy stops at the first byte that
    cannot be written. Return: bytes copied.
    """
    buf = np.frombuffer(data, np.uint8) if not isinstance(data, np.ndarray) else data
    return _copy(i, len(buf), buf, to_iter=True)[0]


def copy_from_iter(n: int, i: IovIter) -> tuple[int, bytes]:
    """``copy_from_iter()``: copy up to ``n`` bytes out of the iterator and advance.

    Return: (bytes copied, the bytes).
    """
    done, out = _copy(i, n, None, to_iter=False)
    return done, out


def iov_iter_zero(nbytes: int, i: IovIter) -> int:
    """``iov_iter_zero()``: write ``nbytes`` zeros into the iterator (no page is pinned).

    Return: bytes zeroed (short at a fault in a user buffer).
    """
    return _copy(i, nbytes, np.zeros(min(nbytes, i.count), np.uint8), to_iter=True)[0]


def _copy(i: IovIter, n: int, src: np.ndarray | None, to_iter: bool) -> tuple[int, bytes]:
    t = i.iter_type
    n = min(n, i.count)
    if t == ITER_DISCARD:
        iov_iter_advance(i, n)
        return n, b"\0" * n if not to_iter else b""
    if t == ITER_PIPE:
        from .pipe_buf import copy_to_pipe

        if not to_iter or src is None:
            i.pgdat.events.warn("copy_from_iter", "copy from a pipe iterator")
            return 0, b""
        return copy_to_pipe(i, src[:n]), b""
    done = 0
    out: list[bytes] = []
    for k, start, length in list(i.chunks(n)):
        if i.user_backed_iter():
            assert i.mm is not None
            if to_iter:
                assert src is not None
                got = write_user(i.mm, start, src[done : done + length])
            else:
                chunk = read_user(i.mm, start, length)
                got = len(chunk)
                out.append(chunk)
        else:
            if to_iter:
                assert src is not None
                _kernel_write(i, k, start, src[done : done + length])
            else:
                out.append(_kernel_read(i, k, start, length).tobytes())
            got = length
        done += got
        if got < length:
            break
    iov_iter_advance(i, done)
    return done, b"".join(out)


def iter_summary(i: IovIter) -> dict[str, Any]:
    """A dict for traces and error messages."""
    return {"type": i.iter_type.name, "count": i.count, "nr_segs": i.nr_segs,
            "iov_offset": i.iov_offset}

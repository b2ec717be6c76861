"""Turning an iov_iter into pages (``lib/iov_iter.c``), per profile.

=====================================  =========  ==========================================
function                               profiles   acquisition, advancing
=====================================  =========  ==========================================
``iov_iter_get_pages`` / ``_alloc``    5.9*       FOLL_GET refs; does not advance
``iov_iter_pin_pages`` / ``_alloc``    5.9-pin    FOLL_PIN ([PATCH v3 2/3]); no advance
``iov_iter_get_pages2`` / ``_alloc2``  6.18       FOLL_GET refs; advances (v6.0)
``iov_iter_extract_pages``             6.18       pins user-backed, lists others with no
                                                  ref (7d58fe731028, v6.3); advances
=====================================  =========  ==========================================

All of them take only the **first non-empty segment** of a user iterator: two virtually
contiguous iovecs still take two calls (spec §11 item 11). Returns are (bytes, start offset in
the first page), with bytes > 0, 0 when ``maxsize`` is 0, or -errno. The ``_alloc`` forms
return the page array they allocated (``kvmalloc`` in the kernel).

Zero-length segments are skipped while looking for the first segment; the bug fixed by Linux
commit f741bd7178c9 ("iov_iter: Fix iov_iter_extract_pages() with zero-sized entries")
(v6.6) is not in the model.
"""

from __future__ import annotations

import errno

import numpy as np

from ..kernel.types import MAX_RW_COUNT, PAGE_MASK, PAGE_OFFSET, PAGE_SHIFT, PAGE_SIZE
from ..mm.gup import get_user_pages_fast, pin_page, pin_user_pages_fast
from ..mm.gup_core import FOLL
from ..mm.page_ref import get_page
from .iov_iter import (
    ITER_BVEC,
    ITER_DEST,
    ITER_DISCARD,
    ITER_IOVEC,
    ITER_KVEC,
    ITER_PIPE,
    IovIter,
    iov_iter_advance,
)
from .pipe_buf import data_start, pipe_space_for_user, push_pipe

__all__ = [
    "iov_iter_extract_pages",
    "iov_iter_extract_will_pin",
    "iov_iter_get_pages",
    "iov_iter_get_pages2",
    "iov_iter_get_pages_alloc",
    "iov_iter_get_pages_alloc2",
    "iov_iter_pin_pages",
    "iov_iter_pin_pages_alloc",
]

Result = tuple[int, int]
AllocResult = tuple[int, "np.ndarray | None", int]


def _need(i: IovIter, switch: str, name: str) -> None:
    if not getattr(i.pgdat.cfg, switch):
        raise RuntimeError(f"{name}() does not exist in profile {i.pgdat.cfg.name}")


def _gup_flags(i: IovIter) -> int:
    """FOLL_WRITE when the iterator is a READ destination (the device writes memory)."""
    flags = int(FOLL.FOLL_WRITE) if i.data_source == ITER_DEST else 0
    if i.nofault:
        flags |= int(FOLL.FOLL_NOFAULT)
    return flags


# --- ITER_PIPE [5.9] ------------------------------------------------------------------------
def _pipe_get_pages(i: IovIter, pages: np.ndarray | None, maxsize: int, maxpages: int,
                    use_pin: bool, holder: object) -> AllocResult:
    """``pipe_get_pages()`` / ``pipe_get_pages_alloc()``; the series adds ``use_pup``: each
    ring page returned gets ``pin_page()`` instead of ``get_page()``. The pipe keeps its own
    reference on every page."""
    if not maxsize:
        return 0, pages, 0
    assert i.pipe is not None
    head, start = data_start(i)
    npages = pipe_space_for_user(head, i.pipe.tail, i.pipe)
    capacity = min(npages, maxpages) * PAGE_SIZE - start
    n, first_head, start = push_pipe(i, min(maxsize, capacity))
    if not n:
        return -errno.EFAULT, pages, start
    count = (n + start + PAGE_SIZE - 1) // PAGE_SIZE
    if pages is None:
        pages = np.empty(count, np.int64)
    for k in range(count):
        page = int(i.pipe.buf_page[i.pipe.slot(first_head + k)])
        pages[k] = page
        if use_pin:
            pin_page(i.pgdat, page, holder=holder)
        else:
            get_page(i.pgdat, page, holder=holder, site="pipe_get_pages")
    return n, pages, start


# --- [5.9] iov_iter_get_pages and the series' iov_iter_pin_pages --------------------------
def _get_pages_59(i: IovIter, pages: np.ndarray | None, maxsize: int, maxpages: int,
                  pin: bool, holder: object) -> AllocResult:
    maxsize = min(maxsize, i.count)
    t = i.iter_type
    if t == ITER_PIPE:
        return _pipe_get_pages(i, pages, maxsize, maxpages, pin, holder)
    if t == ITER_DISCARD:
        return -errno.EFAULT, pages, 0
    if pin and t != ITER_IOVEC:
        i.pgdat.events.warn_once("iov_iter_pin_pages", f"{t.name} iterator cannot be pinned")
        return -errno.EFAULT, pages, 0
    piece = i.first_segment(maxsize)
    if piece is None:
        return 0, pages, 0
    k, addr, length = piece
    if t == ITER_KVEC:
        return -errno.EFAULT, pages, 0
    if t == ITER_BVEC:
        # One page of the current bvec, with a plain reference (bvec pages are never pinned).
        page = int(i.segs[k, 0]) + (addr >> PAGE_SHIFT)
        start = addr & (PAGE_SIZE - 1)
        got = min(length, PAGE_SIZE - start)
        if pages is None:
            pages = np.empty(1, np.int64)
        pages[0] = page
        get_page(i.pgdat, page, holder=holder, site="iov_iter_get_pages")
        return got, pages, start
    start = addr & (PAGE_SIZE - 1)
    span = length + start
    if pages is not None and span > maxpages * PAGE_SIZE:
        span = maxpages * PAGE_SIZE
    n = (span + PAGE_SIZE - 1) // PAGE_SIZE
    if pages is None:
        pages = np.empty(n, np.int64)
    assert i.mm is not None
    gup = pin_user_pages_fast if pin else get_user_pages_fast
    res = gup(i.mm, addr & PAGE_MASK, n, _gup_flags(i), pages, holder=holder)
    if res < 0:
        return res, None, start
    return (span if res == n else res * PAGE_SIZE) - start, pages, start


def iov_iter_get_pages(i: IovIter, pages: np.ndarray, maxsize: int, maxpages: int,
                       *, holder: object = None) -> Result:
    """``iov_iter_get_pages()`` [5.9]: FOLL_GET references on the first segment's pages.

    Context: does not advance the iterator (callers advance by what they used).
    Return: (bytes covered, offset of the data in ``pages[0]``); bytes is -EFAULT for KVEC
    and DISCARD, a GUP error if no page could be had.
    """
    if i.pgdat.cfg.IOV_ITER_EXTRACT:
        raise RuntimeError("iov_iter_get_pages() was removed in v6.5 (84bd06c632c6)")
    ret, _p, start = _get_pages_59(i, pages, maxsize, maxpages, False, holder)
    return ret, start


def iov_iter_get_pages_alloc(i: IovIter, maxsize: int, *, holder: object = None) -> AllocResult:
    """``iov_iter_get_pages_alloc()`` [5.9]: as :func:`iov_iter_get_pages` with no maxpages
    cap and a page array allocated to fit (freed again on error)."""
    if i.pgdat.cfg.IOV_ITER_EXTRACT:
        raise RuntimeError("iov_iter_get_pages_alloc() was removed in v6.5 (84bd06c632c6)")
    return _get_pages_59(i, None, maxsize, 1 << 30, False, holder)


def iov_iter_pin_pages(i: IovIter, pages: np.ndarray, maxsize: int, maxpages: int,
                       *, holder: object = None) -> Result:
    """``iov_iter_pin_pages()`` — [PATCH v3 2/3] (5.9-pin): FOLL_PIN the first segment.

    IOVEC → ``pin_user_pages_fast`` (FOLL_WRITE for a READ destination); PIPE → each ring
    page gets ``pin_page()``; DISCARD → -EFAULT; KVEC/BVEC → WARN_ONCE and -EFAULT (their
    pages are already owned by the caller and must not be pinned).
    Context: does not advance the iterator.
    Return: (bytes, start) as :func:`iov_iter_get_pages`.
    """
    _need(i, "IOV_ITER_PIN_PAGES", "iov_iter_pin_pages")
    ret, _p, start = _get_pages_59(i, pages, maxsize, maxpages, True, holder)
    return ret, start


def iov_iter_pin_pages_alloc(i: IovIter, maxsize: int, *, holder: object = None) -> AllocResult:
    """``iov_iter_pin_pages_alloc()`` — [PATCH v3 2/3]: :func:`iov_iter_pin_pages` with an
    allocated page array and no maxpages cap."""
    _need(i, "IOV_ITER_PIN_PAGES", "iov_iter_pin_pages_alloc")
    return _get_pages_59(i, None, maxsize, 1 << 30, True, holder)


# --- [6.x] get_pages2 and extract ------------------------------------------------------------
def _want_pages_array(pages: np.ndarray | None, size: int, start: int,
                      maxpages: int) -> tuple[int, np.ndarray]:
    """``want_pages_array()``: how many pages the call may take, and the array for them."""
    count = min((size + start + PAGE_SIZE - 1) // PAGE_SIZE, maxpages)
    if pages is None:
        pages = np.empty(count, np.int64)
    return count, pages


def _user_pages(i: IovIter, pages: np.ndarray | None, maxsize: int, maxpages: int, pin: bool,
                holder: object) -> AllocResult:
    """The user-backed half of ``__iov_iter_get_pages_alloc()`` (FOLL_GET) and of
    ``iov_iter_extract_user_pages()`` (FOLL_PIN) [6.x]: the first non-empty segment's pages,
    as many as ``maxpages`` allows; the iterator advanced by what was taken."""
    piece = i.first_segment(maxsize)
    assert piece is not None and i.mm is not None
    _k, addr, maxsize = piece
    offset = addr % PAGE_SIZE
    n, pages = _want_pages_array(pages, maxsize, offset, maxpages)
    gup = pin_user_pages_fast if pin else get_user_pages_fast
    res = gup(i.mm, addr & PAGE_MASK, n, _gup_flags(i), pages, holder=holder)
    if res <= 0:
        return res, pages, offset
    maxsize = min(maxsize, res * PAGE_SIZE - offset)
    iov_iter_advance(i, maxsize)
    return maxsize, pages, offset


def _get_pages2(i: IovIter, pages: np.ndarray | None, maxsize: int, maxpages: int,
                holder: object) -> AllocResult:
    maxsize = min(maxsize, i.count)
    if not maxsize:
        return 0, pages, 0
    maxsize = min(maxsize, MAX_RW_COUNT)
    if i.user_backed_iter():
        return _user_pages(i, pages, maxsize, maxpages, False, holder)
    if i.iter_type == ITER_BVEC:
        piece = i.first_segment(maxsize)
        assert piece is not None
        k, off, maxsize = piece
        page = int(i.segs[k, 0]) + (off >> PAGE_SHIFT)
        start = off % PAGE_SIZE
        n, pages = _want_pages_array(pages, maxsize, start, maxpages)
        for j in range(n):
            pages[j] = page + j
            get_page(i.pgdat, page + j, holder=holder, site="iov_iter_get_pages2")
        maxsize = min(maxsize, n * PAGE_SIZE - start)
        iov_iter_advance(i, maxsize)
        return maxsize, pages, start
    return -errno.EFAULT, pages, 0


def iov_iter_get_pages2(i: IovIter, pages: np.ndarray, maxsize: int, maxpages: int,
                        *, holder: object = None) -> Result:
    """``iov_iter_get_pages2()`` [6.0+]: FOLL_GET, and the iterator **is** advanced.

    User-backed: the first segment's pages; BVEC: pages of the current (multi-page) bvec,
    each with ``get_page``; KVEC, DISCARD: -EFAULT. Capped at MAX_RW_COUNT.
    """
    _need(i, "IOV_ITER_EXTRACT", "iov_iter_get_pages2")
    ret, _p, start = _get_pages2(i, pages, maxsize, maxpages, holder)
    return ret, start


def iov_iter_get_pages_alloc2(i: IovIter, maxsize: int, *,
                              holder: object = None) -> AllocResult:
    """``iov_iter_get_pages_alloc2()`` [6.0+]: :func:`iov_iter_get_pages2` with an allocated
    array."""
    _need(i, "IOV_ITER_EXTRACT", "iov_iter_get_pages_alloc2")
    return _get_pages2(i, None, maxsize, 1 << 30, holder)


def iov_iter_extract_will_pin(i: IovIter) -> bool:
    """``iov_iter_extract_will_pin()``: True if extracted pages must be unpinned (user-backed
    iterators); False if they carry no reference at all."""
    return i.user_backed_iter()


def iov_iter_extract_pages(i: IovIter, pages: np.ndarray | None, maxsize: int, maxpages: int,
                           extraction_flags: int = 0, *,
                           holder: object = None) -> AllocResult:
    """``iov_iter_extract_pages()`` [6.3+]: pages for the next part of the iterator.

    UBUF/IOVEC: the first non-empty segment, pinned with ``pin_user_pages_fast``
    (FOLL_WRITE for a READ destination); KVEC: the pages of the first non-empty kvec, no
    reference; BVEC: pages across consecutive bvecs while they are page-contiguous (each
    later bvec starts at offset 0 and the previous ended at a page boundary), no reference;
    DISCARD: -EFAULT. The iterator is advanced by what is returned.
    Return: (bytes, page array (allocated if ``pages`` is None), offset in the first page).
    """
    _need(i, "IOV_ITER_EXTRACT", "iov_iter_extract_pages")
    maxsize = min(maxsize, i.count, MAX_RW_COUNT)
    if not maxsize:
        return 0, pages, 0
    t = i.iter_type
    if i.user_backed_iter():
        return _user_pages(i, pages, maxsize, maxpages, True, holder)
    if t == ITER_KVEC:
        piece = i.first_segment(maxsize)
        assert piece is not None
        _k, kaddr, length = piece
        offset = kaddr % PAGE_SIZE
        n, pages = _want_pages_array(pages, length, offset, maxpages)
        first = (kaddr - offset - PAGE_OFFSET) >> PAGE_SHIFT
        pages[:n] = np.arange(first, first + n, dtype=np.int64)
        maxsize = min(length, n * PAGE_SIZE - offset)
        iov_iter_advance(i, maxsize)
        return maxsize, pages, offset
    if t == ITER_BVEC:
        return _extract_bvec(i, pages, maxsize, maxpages)
    return -errno.EFAULT, pages, 0


def _extract_bvec(i: IovIter, pages: np.ndarray | None, maxsize: int,
                  maxpages: int) -> AllocResult:
    """``iov_iter_extract_bvec_pages()``: gather page-contiguous bvec pieces, no refs."""
    got_pages: list[int] = []
    total = 0
    offset = 0
    prev_end_aligned = True
    for n_seen, (k, off, length) in enumerate(i.chunks(maxsize)):
        page0 = int(i.segs[k, 0]) + (off >> PAGE_SHIFT)
        in_page = off & (PAGE_SIZE - 1)
        if n_seen == 0:
            offset = in_page
        elif in_page or not prev_end_aligned:
            break
        npg = (in_page + length + PAGE_SIZE - 1) // PAGE_SIZE
        room = maxpages - len(got_pages)
        if npg > room:
            npg = room
            length = min(length, npg * PAGE_SIZE - in_page)
        got_pages.extend(range(page0, page0 + npg))
        total += length
        prev_end_aligned = (in_page + length) % PAGE_SIZE == 0
        if len(got_pages) >= maxpages:
            break
    if pages is None:
        pages = np.empty(len(got_pages), np.int64)
    pages[: len(got_pages)] = got_pages
    iov_iter_advance(i, total)
    return total, pages, offset



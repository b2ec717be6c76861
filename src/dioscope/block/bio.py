"""Building Direct I/O bios from user pages, and releasing them (``block/bio.c``).

Per profile:

* ``5.9``: ``__bio_iov_iter_get_pages`` takes FOLL_GET references with
  ``iov_iter_get_pages`` into a page array packed at the tail of the bvec array; a same-page
  merge drops the duplicate with ``put_page``; ``bio_release_pages`` ``put_page``s every
  page unless BIO_NO_PAGE_REF (ITER_BVEC).
* ``5.9-pin`` ([PATCH v3 3/3] "bio: convert get_user_pages_fast() --> pin_user_pages_fast()"):
  the same code with ``iov_iter_pin_pages``; duplicates dropped with ``unpin_user_page``;
  ``bio_release_pages`` only unpins.
* ``6.18``: ``iov_iter_extract_pages`` (pins user-backed iterators, lists others without a
  reference), BIO_PAGE_PINNED set when ``iov_iter_extract_will_pin`` (Linux commit
  a7e689dd1c06, v6.5), ITER_BVEC bios reuse the caller's bvec array
  (``bio_iov_bvec_set``), the extracted size is trimmed to the logical block size; release
  only if BIO_PAGE_PINNED, folio by folio.

Every distinct page presence in a bio holds exactly one reference or pin; physically
contiguous pages merge into one (multi-page) bvec but keep one each (spec §11 items 18, 19).
"""

from __future__ import annotations

import errno
from itertools import pairwise
from typing import Any, Final

import numpy as np

from ..kernel.npfast import all_set
from ..kernel.types import PAGE_MASK, PAGE_SHIFT, PAGE_SIZE
from ..lib.iov_iter import ITER_BVEC, IovIter, iov_iter_advance, iov_iter_count, iov_iter_revert
from ..lib.iov_iter_pages import (
    iov_iter_extract_pages,
    iov_iter_extract_will_pin,
    iov_iter_get_pages,
    iov_iter_pin_pages,
)
from ..mm.gup import unpin_user_page
from ..mm.gup_core import (
    FOLL,
    free_unpinned,
    gup_put_pages,
    set_folio_dirty_lock,
    unpin_user_folio,
)
from ..mm.page import PG
from ..mm.page_alloc import PgData
from ..mm.page_ref import put_page
from .blk_types import BIO_FLAG, BIO_MAX_VECS, SECTOR_SHIFT, Bio

__all__ = [
    "bio_add_page",
    "bio_alloc",
    "bio_check_pages_dirty",
    "bio_full",
    "bio_iov_iter_align_down",
    "bio_iov_iter_get_pages",
    "bio_release_pages",
    "bio_set_pages_dirty",
]

UINT_MAX: Final = 0xFFFFFFFF
# Plain-int copies of the flags tested per call (IntFlag arithmetic is slow in Python).
_BIO_CLONED: Final = int(BIO_FLAG.BIO_CLONED)
_BIO_PAGE_PINNED: Final = int(BIO_FLAG.BIO_PAGE_PINNED)
_BIO_NO_PAGE_REF: Final = int(BIO_FLAG.BIO_NO_PAGE_REF)
_FOLL_PIN: Final = int(FOLL.FOLL_PIN)
_FOLL_GET: Final = int(FOLL.FOLL_GET)
_PG_DIRTY: Final = np.uint32(PG.PG_dirty)


def bio_alloc(bdev: Any, nr_vecs: int, opf: int, pgdat: PgData | None = None) -> Bio | None:
    """``bio_alloc()``: a bio with room for ``nr_vecs`` bvecs (at most BIO_MAX_VECS).

    Return: the bio, or None for ``nr_vecs`` > BIO_MAX_VECS (``bvec_alloc`` fails).
    """
    if nr_vecs > BIO_MAX_VECS:
        return None
    return Bio(bdev, max(nr_vecs, 0), opf, pgdat)


def bio_full(bio: Bio, length: int) -> bool:
    """``bio_full()``: no bvec slot left, or ``length`` more bytes would overflow bi_size."""
    if bio.bi_vcnt >= bio.bi_max_vecs:
        return True
    return bio.bi_iter.bi_size > UINT_MAX - length


def page_is_mergeable(bio: Bio, k: int, page: int, length: int, off: int) -> tuple[bool, bool]:
    """``page_is_mergeable()`` [5.9] / ``bvec_try_merge_page()`` [6.x] for bvec ``k``.

    Mergeable iff the new data starts at the physical address right after the bvec's last
    byte; ``same_page`` when that last byte lies in the same frame as the new data start.
    Return: (mergeable, same_page).
    """
    bv_page, lo = int(bio.bi_io_vec[k, 0]), int(bio.bi_io_vec[k, 1])
    bv_end = (lo & 0xFFFFFFFF) + (lo >> 32)
    vec_end_addr = (bv_page << PAGE_SHIFT) + bv_end - 1
    page_addr = page << PAGE_SHIFT
    if vec_end_addr + 1 != page_addr + off:
        return False, False
    same = (vec_end_addr & PAGE_MASK) == ((page_addr + off) & PAGE_MASK)
    return True, same


def __bio_try_merge_page(bio: Bio, page: int, length: int, off: int) -> tuple[bool, bool]:
    """``__bio_try_merge_page()``: merge into the last bvec. Return: (merged, same_page)."""
    if bio.bi_flags & _BIO_CLONED:
        bio.pgdat.events.warn_once("__bio_try_merge_page", "merge into a cloned bio")
        return False, False
    if bio.bi_vcnt > 0:
        k = bio.bi_vcnt - 1
        ok, same = page_is_mergeable(bio, k, page, length, off)
        if ok:
            if bio.bi_iter.bi_size > UINT_MAX - length:
                return False, False
            bio.bi_io_vec[k, 1] += length << 32
            bio.bi_iter.bi_size += length
            return True, same
    return False, False


def __bio_add_page(bio: Bio, page: int, length: int, off: int) -> None:
    """``__bio_add_page()``: append a new bvec (the caller checked bio_full)."""
    bio.set_bvec(bio.bi_vcnt, page, length, off)
    bio.bi_vcnt += 1
    bio.bi_iter.bi_size += length


def bio_add_page(bio: Bio, page: int, length: int, off: int) -> int:
    """``bio_add_page()``: add a page range, merging into the last bvec when contiguous.

    Does not release anything on a same-page merge (callers that took a reference do).
    Return: ``length``, or 0 if the bio is full.
    """
    merged, _same = __bio_try_merge_page(bio, page, length, off)
    if not merged:
        if bio_full(bio, length):
            return 0
        __bio_add_page(bio, page, length, off)
    return length


# --- page release --------------------------------------------------------------------------
def _release_one(bio: Bio, page: int, site: str) -> None:
    """``bio_release_page()``: drop what the bio took on one page, per profile."""
    pgdat = bio.pgdat
    if pgdat.cfg.IOV_ITER_EXTRACT:
        if bio.bi_flags & _BIO_PAGE_PINNED:
            unpin_user_page(pgdat, page, holder=bio.holder)
    elif pgdat.cfg.DIO_FOLL_PIN:
        unpin_user_page(pgdat, page, holder=bio.holder)
    else:
        put_page(pgdat, page, holder=bio.holder, site=site)


def bio_release_pages(bio: Bio, mark_dirty: bool) -> None:
    """``bio_release_pages()``: dirty (optionally) and release every page of the bio.

    [5.9]: nothing for BIO_NO_PAGE_REF; otherwise each page (compound pages are not
    dirtied) then ``put_page``. [5.9-pin]: the same with ``unpin_user_page`` — after the
    series every bio that reaches here holds pins. [6.18]: only for BIO_PAGE_PINNED; each
    folio is dirtied (compound included) and unpinned.
    """
    pgdat = bio.pgdat
    cfg = pgdat.cfg
    if cfg.IOV_ITER_EXTRACT:
        if not bio.bi_flags & _BIO_PAGE_PINNED:
            return
    elif bio.bi_flags & _BIO_NO_PAGE_REF:
        return
    if cfg.DIO_FOLL_PIN and not mark_dirty and not pgdat.hooks.active:
        folios = _bvec_folios(bio)
        if folios is not None and _unpin_folios(bio, folios):
            return
    if mark_dirty and cfg.IOV_ITER_EXTRACT:
        # [6.18] __bio_release_pages(): per folio, dirty it under its lock, then unpin it.
        # (Folios left at zero are freed together at the end, in the page walk's order.)
        zeroed: list[tuple[int, int]] = []
        for h, first, n in _folio_walk(bio):
            set_folio_dirty_lock(pgdat, h)
            if not unpin_user_folio(pgdat, h, n, first, bio.holder, "bio_release_pages",
                                    zeroed):
                gup_put_pages(pgdat, np.arange(first, first + n, dtype=np.int64), _FOLL_PIN,
                              bio.holder, "bio_release_pages")  # the pin-exempt zero page
        free_unpinned(pgdat, zeroed, "bio_release_pages")
        return
    pages = bio.pages()
    if mark_dirty:  # [5.9]/[5.9-pin]: page by page, compound pages skipped
        p = pgdat.pages
        for page in pages.tolist():
            if int(p.order[page]) > 0:
                continue  # [5.9] !PageCompound
            set_folio_dirty_lock(pgdat, page)
    if cfg.DIO_FOLL_PIN:
        gup_put_pages(pgdat, pages, _FOLL_PIN, bio.holder, "bio_release_pages")
    else:
        gup_put_pages(pgdat, pages, _FOLL_GET, bio.holder, "bio_release_pages")


_FEW_PAGES: Final = 4
"""Up to this many pages, the dirty-page passes walk plain ints instead of numpy arrays."""

_FEW_BVECS = 4
"""Up to this many bvecs, the dirty and release passes try :func:`_bvec_folios`."""


def _bvec_folios(bio: Bio) -> list[tuple[int, int, int]] | None:
    """``bio_for_each_folio_all()`` for a bio of few bvecs none of which spans two folios:
    ``(folio head, first page, pages)`` per bvec, in order (a multi-page bvec in one THP is
    one entry, not one per page). A run of consecutive pages lies in one folio when its
    first and last pages do (a folio is physically contiguous).
    Return: None when there are more than :data:`_FEW_BVECS` bvecs or one crosses a folio
    boundary (the caller walks the pages)."""
    if bio.bi_vcnt > _FEW_BVECS:
        return None
    rows = bio.bi_io_vec[: bio.bi_vcnt]
    key = rows.tobytes()
    if key == bio.folios_key:  # submission dirties, completion checks and releases
        return bio.folios_val
    head = bio.pgdat.pages.head
    found: list[tuple[int, int, int]] = []
    out: list[tuple[int, int, int]] | None = found
    for page, lo in rows.tolist():
        off = lo & 0xFFFFFFFF
        first = page + (off >> PAGE_SHIFT)
        n = ((off & (PAGE_SIZE - 1)) + (lo >> 32) + PAGE_SIZE - 1) >> PAGE_SHIFT
        if not n:
            # SIMPLIFIED: an empty bvec covers no page, as in Bio.pages (the kernel's walk
            # would visit its folio with length 0; Direct I/O never builds one).
            continue
        h = int(head[first])
        if n > 1 and int(head[first + n - 1]) != h:
            out = None
            break
        found.append((h, first, n))
    bio.folios_key, bio.folios_val = key, out
    return out


def _folio_walk(bio: Bio) -> list[tuple[int, int, int]]:
    """[6.18] ``bio_for_each_folio_all()``: ``(folio head, first page, pages)`` for each
    piece of a bvec that lies in one folio, in bvec order (a bvec crossing folios gives one
    piece per folio; two bvecs in one folio give two pieces, as in the kernel)."""
    folios = _bvec_folios(bio)
    if folios is not None:
        return folios
    pages = bio.pages()
    if not len(pages):
        return []
    heads = bio.pgdat.pages.head.take(pages)
    rows = bio.bi_io_vec[: bio.bi_vcnt]
    off = rows[:, 1] & 0xFFFFFFFF
    npg = ((off & (PAGE_SIZE - 1)) + (rows[:, 1] >> 32) + PAGE_SIZE - 1) >> PAGE_SHIFT
    cut = np.zeros(len(pages), bool)
    cut[(np.cumsum(npg) - npg)[npg > 0]] = True  # each bvec starts a piece
    cut[1:] |= heads[1:] != heads[:-1]  # and so does each change of folio
    at = np.flatnonzero(cut)
    lens = np.diff(at, append=len(pages))
    return list(zip(heads[at].tolist(), pages[at].tolist(), lens.tolist(), strict=True))


def _unpin_folios(bio: Bio, folios: list[tuple[int, int, int]]) -> bool:
    """[6.18] ``__bio_release_pages(bio, false)``: ``unpin_user_folio(folio, nr_pages)``
    per folio of :func:`_bvec_folios` ([5.9-pin] unpins page by page: the same counts, in
    the same order). Folios left at refcount zero are freed together at the end, in the
    order the page walk frees them (pfn order), so the allocator's state does not depend
    on which path ran. Return: False, having released nothing, if a folio is the
    pin-exempt zero page (the page walk handles it)."""
    pgdat = bio.pgdat
    unit = pgdat.pages.pin_unit
    if len(folios) > 1 and not all(unit[h] for h, _, _ in folios):
        return False
    zeroed: list[tuple[int, int]] = []
    for h, first, n in folios:
        if not unpin_user_folio(pgdat, h, n, first, bio.holder, "bio_release_pages",
                                zeroed):
            return False  # only the first can decline here: nothing released yet
    free_unpinned(pgdat, zeroed, "bio_release_pages")
    return True


def bio_set_pages_dirty(bio: Bio) -> None:
    """``bio_set_pages_dirty()``: dirty the pages of a READ before it is submitted, so they
    are already dirty when the device writes them ([5.9] skips compound pages)."""
    pgdat = bio.pgdat
    p = pgdat.pages
    v6 = pgdat.cfg.IOV_ITER_EXTRACT
    if not pgdat.hooks.tracepoints:  # no one listens: PG_dirty stored directly
        folios = _bvec_folios(bio)
        if folios is not None:
            flags, order = p.flags, p.order
            for h, first, _n in folios:
                if v6:
                    flags[h] |= _PG_DIRTY
                elif not order[first]:  # [5.9] !PageCompound: a small page, its own head
                    flags[first] |= _PG_DIRTY
            return
    if pgdat.hooks.tracepoints and v6:  # someone listens: one locked dirtying per folio
        for h, _first, _n in _folio_walk(bio):
            set_folio_dirty_lock(pgdat, h)
        return
    pages = bio.pages()
    if not pgdat.hooks.tracepoints:
        if len(pages) <= _FEW_PAGES:  # plain ints beat numpy's per-call overhead
            flags, head, order = p.flags, p.head, p.order
            for page in pages.tolist():
                if v6:
                    flags[head[page]] |= _PG_DIRTY
                elif not order[page]:
                    flags[page] |= _PG_DIRTY
        elif v6:
            p.flags[p.head[pages]] |= _PG_DIRTY
        else:
            p.flags[pages[p.order[pages] == 0]] |= _PG_DIRTY
        return
    for page in pages.tolist():  # [5.9]: page by page, compound pages skipped
        if int(p.order[page]) > 0:
            continue
        set_folio_dirty_lock(pgdat, page)


def bio_check_pages_dirty(bio: Bio) -> None:
    """``bio_check_pages_dirty()`` (takes over the bio): if every page is still dirty,
    release the pages and put the bio now; otherwise (something cleaned a page during the
    I/O) queue it on ``bio_dirty_list`` and let the ``bio_dirty_fn`` work item re-dirty and
    release it in process context."""
    pgdat = bio.pgdat
    p = pgdat.pages
    v6 = pgdat.cfg.IOV_ITER_EXTRACT
    folios = _bvec_folios(bio)
    if folios is not None:
        flags, order = p.flags, p.order
        all_dirty = all(flags[h] & _PG_DIRTY or (not v6 and order[first])
                        for h, first, _n in folios)
    elif len(pages := bio.pages()) <= _FEW_PAGES:
        flags, head, order = p.flags, p.head, p.order
        all_dirty = True
        for page in pages.tolist():
            if not (flags[head[page]] & _PG_DIRTY or (not v6 and order[page])):
                all_dirty = False
                break
    else:
        dirty = (p.flags[p.head[pages]] & _PG_DIRTY) != 0
        if not v6:
            dirty |= p.order[pages] > 0
        all_dirty = all_set(dirty)
    if all_dirty:
        bio_release_pages(bio, False)
        bio.bio_put_ref()
        return
    dirty_list = _dirty_list(pgdat)
    dirty_list.bios.append(bio)
    pgdat.system_wq.schedule_work(dirty_list.work)


class _BioDirtyList:
    """``bio_dirty_list`` + ``bio_dirty_work`` of one machine."""

    def __init__(self) -> None:
        self.bios: list[Bio] = []
        self.deferred = 0

    def work(self) -> None:
        """``bio_dirty_fn()``: re-dirty and release every queued bio."""
        todo = self.bios
        self.bios = []
        for bio in todo:
            self.deferred += 1
            bio_release_pages(bio, True)
            bio.bio_put_ref()


def _dirty_list(pgdat: PgData) -> _BioDirtyList:
    lst = pgdat.bio_dirty_list
    if lst is None:
        lst = pgdat.bio_dirty_list = _BioDirtyList()
    return lst  # type: ignore[no-any-return]


def bio_dirty_deferred(pgdat: PgData) -> int:
    """How many bios went through the deferred ``bio_dirty_fn`` path on this machine."""
    return _dirty_list(pgdat).deferred


# --- bio_iov_iter_get_pages ------------------------------------------------------------------
def __bio_iov_bvec_add_pages(bio: Bio, it: IovIter) -> int:
    """[5.9] ``__bio_iov_bvec_add_pages()``: the current bvec, no reference taken."""
    k = it._seg
    bv_page, lo = int(it.segs[k, 0]), int(it.segs[k, 1])
    bv_len, bv_off = lo >> 32, lo & 0xFFFFFFFF
    if it.iov_offset > bv_len:
        bio.pgdat.events.warn_once("__bio_iov_bvec_add_pages", "iov_offset past bvec")
        return -errno.EINVAL
    length = min(bv_len - it.iov_offset, it.count)
    size = bio_add_page(bio, bv_page, length, bv_off + it.iov_offset)
    if size != length:
        return -errno.EINVAL
    iov_iter_advance(it, size)
    return 0


def _page_array(bio: Bio) -> tuple[np.ndarray, int]:
    """The tail-packed page array: the second half of the free bvec area, as words."""
    entries_left = bio.bi_max_vecs - bio.bi_vcnt
    words = bio.tail_words()
    start = 2 * bio.bi_vcnt + entries_left
    return words[start : start + entries_left], entries_left


def __bio_iov_iter_get_pages_59(bio: Bio, it: IovIter) -> int:
    """[5.9] / [5.9-pin] ``__bio_iov_iter_get_pages()``: one user segment per call."""
    pgdat = bio.pgdat
    pages, entries_left = _page_array(bio)
    if pgdat.cfg.DIO_FOLL_PIN:
        size, offset = iov_iter_pin_pages(it, pages, 1 << 62, entries_left, holder=bio.holder)
    else:
        size, offset = iov_iter_get_pages(it, pages, 1 << 62, entries_left, holder=bio.holder)
    if size <= 0:
        return size if size else -errno.EFAULT
    left = size
    i = 0
    while left > 0:
        page = int(pages[i])
        length = min(PAGE_SIZE - offset, left)
        merged, same = __bio_try_merge_page(bio, page, length, offset)
        if merged:
            if same:
                _release_one(bio, page, "__bio_iov_iter_get_pages")
        else:
            if bio_full(bio, length):
                pgdat.events.warn_once("__bio_iov_iter_get_pages", "bio full")
                return -errno.EINVAL
            __bio_add_page(bio, page, length, offset)
        offset = 0
        left -= length
        i += 1
    iov_iter_advance(it, size)
    return 0


def __bio_iov_iter_get_pages_6(bio: Bio, it: IovIter) -> int:
    """[6.18] ``__bio_iov_iter_get_pages()``: extract one segment's pages (capped by the free
    bvec slots), group them by folio (a large folio gives one multi-page chunk,
    ``get_contig_folio_len``), and add each chunk with ``bio_add_folio``, merging into the
    last bvec when physically contiguous. If the first chunk of this extraction starts
    inside a page and merged, it is the page the last bvec ended in: its new pin is dropped
    at once (``unpin_user_folio(folio, 1)``). No alignment is checked here (v6.18: Linux
    commits 743bf2e0c49c, 20a0e6276edb, 9eab1d4e0d15; see docs/research-6.18-bio.md)."""
    pgdat = bio.pgdat
    p = pgdat.pages
    pages, entries_left = _page_array(bio)
    size, _p, offset = iov_iter_extract_pages(
        it, pages, UINT_MAX - bio.bi_iter.bi_size, entries_left, holder=bio.holder
    )
    if size <= 0:
        return size if size else -errno.EFAULT
    nr_pages = (offset + size + PAGE_SIZE - 1) // PAGE_SIZE
    if nr_pages >= _VEC_ADD_MIN and not bio.bi_flags & _BIO_CLONED and (
        bio.bi_iter.bi_size <= UINT_MAX - size
    ):
        return _bio_add_extracted_runs(bio, it, pages[:nr_pages], offset, size)
    # Plain ints for the per-page walk (numpy scalar access per page is slow); the pages
    # are read before any bvec write can reach their slots, as in the kernel.
    extracted = pages[:nr_pages]
    pl = extracted.tolist()
    hl = p.head[extracted].tolist()
    vec = bio.bi_io_vec
    bi_iter = bio.bi_iter
    cloned = bio.bi_flags & _BIO_CLONED
    max_vecs = bio.bi_max_vecs
    vcnt = bio.bi_vcnt
    bi_size = bi_iter.bi_size
    # The last bvec: the physical address just past it, and bytes merged into it not yet
    # written back to bi_io_vec.
    last_end = -1
    if vcnt and not cloned:
        lpage, llo = vec[vcnt - 1].tolist()
        last_end = (lpage << PAGE_SHIFT) + (llo & 0xFFFFFFFF) + (llo >> 32)
    pending = 0
    left = size
    i = 0
    first = True
    while left > 0:
        page = pl[i]
        head = hl[i]
        # get_contig_folio_len(): following extracted pages of the same folio, in order.
        n = 1
        span = PAGE_SIZE - offset
        while span < left and i + n < nr_pages and pl[i + n] == page + n and hl[i + n] == head:
            n += 1
            span += PAGE_SIZE
        length = span if span < left else left
        if bi_size > UINT_MAX - length:
            break
        # __bio_try_merge_page(): into the last bvec when it ends where this chunk starts.
        if cloned:
            pgdat.events.warn_once("__bio_try_merge_page", "merge into a cloned bio")
            merged = False
        else:
            merged = vcnt > 0 and last_end == (page << PAGE_SHIFT) + offset
        if merged:
            pending += length
            bi_size += length
            last_end += length
            if first and offset:
                _release_one(bio, page, "bio_iov_add_folio")
        else:
            if vcnt >= max_vecs:
                break
            if pending:
                vec[vcnt - 1, 1] += pending << 32
                pending = 0
            # __bio_add_page()
            vec[vcnt, 0] = page
            vec[vcnt, 1] = (length << 32) | offset
            vcnt += 1
            bi_size += length
            last_end = (page << PAGE_SHIFT) + offset + length
        first = False
        offset = 0
        left -= length
        i += n
    if pending:
        vec[vcnt - 1, 1] += pending << 32
    bio.bi_vcnt = vcnt
    bi_iter.bi_size = bi_size
    iov_iter_revert(it, left)
    while i < nr_pages:
        _release_one(bio, pl[i], "__bio_iov_iter_get_pages")
        i += 1
    return 0


_RAMP_BYTES: Final = np.arange(BIO_MAX_VECS, dtype=np.int64).tobytes()
"""0, 1, ... BIO_MAX_VECS - 1 as int64 bytes: ``pages - pages[0]`` equals its first ``n``
entries exactly when ``n`` pages are consecutive (one bytes comparison, cheaper than an
array comparison and a reduction)."""

_VEC_ADD_MIN = 8
"""From this many extracted pages on, :func:`__bio_iov_iter_get_pages_6` adds them with array
operations (:func:`_bio_add_extracted_runs`) instead of a walk page by page."""


def _bio_add_extracted_runs(bio: Bio, it: IovIter, extracted: np.ndarray, offset: int,
                            size: int) -> int:
    """The page walk of [6.18] ``__bio_iov_iter_get_pages()`` done run by run instead of
    page by page (the runs found with one array pass); the same
    bvecs, pins and iterator position as the walk, for a bio that is not cloned and cannot
    overflow ``bi_size``.

    Why the folio grouping drops out: ``get_contig_folio_len()`` groups pages that follow
    each other physically inside one folio, and ``bio_add_folio()`` then merges a chunk into
    the last bvec whenever it starts where that bvec ends (``bvec_try_merge_page()`` tests
    physical contiguity only). So the bvecs are exactly the runs of physically consecutive
    pages, the first run merging into the bio's last bvec when it continues it. A bio with
    too few free slots keeps the runs that fit; the pages of the others are released and
    their bytes given back to the iterator, as the walk's ``break`` does.
    """
    extracted = extracted.copy()  # it lives in the bvec array's tail: writes reach it
    vec = bio.bi_io_vec
    bi_iter = bio.bi_iter
    vcnt = bio.bi_vcnt
    n = len(extracted)
    first_page = extracted.item(0)
    if (not vcnt and n <= BIO_MAX_VECS and extracted.item(-1) - first_page == n - 1
            and (extracted - first_page).tobytes() == _RAMP_BYTES[: 8 * n]):
        # One run into an empty bio (a THP buffer, or physically consecutive pages): one
        # bvec; an empty bio has room and nothing to merge with.
        vec[0, 0] = first_page
        vec[0, 1] = (size << 32) | offset
        bio.bi_vcnt = 1
        bi_iter.bi_size += size
        bio.seed_pages(extracted)
        return 0
    # Page i (i > 0) starts byte i * PAGE_SIZE - offset of the extraction; a run ends where
    # the next one starts, the last at ``size``.
    brk = [i + 1 for i in ((extracted[1:] - extracted[:-1]) != 1).nonzero()[0].tolist()]
    run_first = [0, *brk]
    firsts = extracted[run_first].tolist()
    ends = [i * PAGE_SIZE - offset for i in brk]
    ends.append(size)
    lens = [ends[0]] + [b - a for a, b in pairwise(ends)]
    merge = False
    if vcnt:
        lpage, llo = vec[vcnt - 1].tolist()
        last_end = (lpage << PAGE_SHIFT) + (llo & 0xFFFFFFFF) + (llo >> 32)
        merge = last_end == (first_page << PAGE_SHIFT) + offset
    if merge:
        vec[vcnt - 1, 1] += lens[0] << 32
        if offset:  # the page the last bvec ended in: its new pin goes at once
            _release_one(bio, first_page, "bio_iov_add_folio")
    new_first = 1 if merge else 0
    room = bio.bi_max_vecs - vcnt
    keep = min(len(run_first) - new_first, room)
    kept_runs = new_first + keep
    if keep > 0:
        rows = [[page, n << 32] for page, n in zip(firsts[new_first:kept_runs],
                                                   lens[new_first:kept_runs])]
        if not merge:
            rows[0][1] |= offset
        vec[vcnt : vcnt + keep] = rows
    added = ends[kept_runs - 1] if kept_runs else 0
    bio.bi_vcnt = vcnt + keep
    bi_iter.bi_size += added
    left = size - added
    if not vcnt and not left:
        # An empty bio took every extracted page: they are the pages its bvecs cover.
        bio.seed_pages(extracted)
    iov_iter_revert(it, left)
    if left:
        for page in extracted[run_first[kept_runs]:].tolist():
            _release_one(bio, page, "__bio_iov_iter_get_pages")
    return 0


def bio_iov_iter_align_down(bio: Bio, it: IovIter, len_align_mask: int) -> int:
    """[6.18] ``bio_iov_iter_align_down()`` (Linux commit 20a0e6276edb): trim the bio's total
    to a multiple of ``len_align_mask + 1``, giving the bytes back to the iterator.

    A tail bvec no longer than what must go is dropped and **only its first page** is
    unpinned; a longer one is shortened and nothing is unpinned. Both leak the pins of the
    other pages a multi-page bvec covered: the kernel bug fixed later by "block: unpin all pages
    of a bvec in bio_iov_iter_align_down()" (2026), measured on the host 6.18.44
    (docs/research-6.18-bio.md §6) and kept here on purpose.
    Return: 0, or -EFAULT if no bvec is left.
    """
    nbytes = bio.bi_iter.bi_size & len_align_mask
    if not nbytes:
        return 0
    iov_iter_revert(it, nbytes)
    bio.bi_iter.bi_size -= nbytes
    while nbytes:
        k = bio.bi_vcnt - 1
        lo = int(bio.bi_io_vec[k, 1])
        bv_len = lo >> 32
        if bv_len > nbytes:
            bio.bi_io_vec[k, 1] = lo - (nbytes << 32)
            break
        nbytes -= bv_len
        first = int(bio.bi_io_vec[k, 0]) + ((lo & 0xFFFFFFFF) >> PAGE_SHIFT)
        bio.bi_vcnt -= 1
        _release_one(bio, first, "bio_iov_iter_align_down")
    return 0 if bio.bi_vcnt else -errno.EFAULT


def bio_iov_bvec_set(bio: Bio, it: IovIter) -> None:
    """``bio_iov_bvec_set()`` [5.12+]: the bio uses the caller's bvec array as it is (no
    reference, BIO_CLONED); the iterator's offset into its first bvec becomes
    ``bi_bvec_done`` and its count ``bi_size``.

    SIMPLIFIED: the model copies the remaining bvec rows instead of sharing the array.
    """
    bio.bi_io_vec = it.segs[it._seg : it._seg + it.nr_segs].copy()
    bio.bi_max_vecs = bio.bi_vcnt = it.nr_segs
    bio.bi_iter.bi_idx = 0
    bio.bi_iter.bi_bvec_done = it.iov_offset
    bio.bi_iter.bi_size = it.count
    bio.bio_set_flag(_BIO_CLONED)


def bio_iov_iter_get_pages(bio: Bio, it: IovIter, len_align_mask: int = 0) -> int:
    """``bio_iov_iter_get_pages()``: fill ``bio`` from ``it`` and take what each profile
    takes on the pages.

    Loops one segment at a time until the bio is full or the iterator is empty; an error
    after at least one bvec was added is swallowed (the bio is shorter). [6.18] then trims the
    bio to ``len_align_mask`` (the logical block size - 1 for Direct I/O, 0 for passthrough);
    ``len_align_mask`` is ignored by the 5.9 profiles, which take no such argument.
    Context: may fault pages in.
    Return: 0, or -errno if nothing could be added (-EFAULT for an unmapped first page,
    -EINVAL for a bio that already has bvecs [5.9]).
    """
    pgdat = bio.pgdat
    cfg = pgdat.cfg
    if cfg.IOV_ITER_EXTRACT:
        if bio.bi_flags & _BIO_CLONED:
            pgdat.events.warn_once("bio_iov_iter_get_pages", "cloned bio")
            return -errno.EIO
        if it.iter_type == ITER_BVEC:
            bio_iov_bvec_set(bio, it)
            iov_iter_advance(it, bio.bi_iter.bi_size)
            return 0
        if iov_iter_extract_will_pin(it):
            bio.bio_set_flag(_BIO_PAGE_PINNED)
        ret = 0
        while True:
            ret = __bio_iov_iter_get_pages_6(bio, it)
            if ret or not iov_iter_count(it) or bio_full(bio, 0):
                break
        if bio.bi_vcnt:
            return bio_iov_iter_align_down(bio, it, len_align_mask)
        return ret
    if bio.bi_vcnt:
        pgdat.events.warn_once("bio_iov_iter_get_pages", "bio already has bvecs")
        return -errno.EINVAL
    is_bvec = it.iter_type == ITER_BVEC
    while True:
        if is_bvec:
            ret = __bio_iov_bvec_add_pages(bio, it)
        else:
            ret = __bio_iov_iter_get_pages_59(bio, it)
        if ret or not iov_iter_count(it) or bio_full(bio, 0):
            break
    if is_bvec:
        bio.bio_set_flag(_BIO_NO_PAGE_REF)
    return 0 if bio.bi_vcnt else ret


def bio_sectors(bio: Bio) -> int:
    return bio.bi_iter.bi_size >> SECTOR_SHIFT

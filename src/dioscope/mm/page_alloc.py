"""The buddy page allocator and the node that owns physical memory (``mm/page_alloc.c``).

:class:`PgData` is ``pglist_data`` for the model's single node: it owns the ``mem_map``
(:class:`~dioscope.mm.page.PageArray`), physical memory, the free lists, the node's vmstat
counters, the profile switches, the WARN/BUG log and the hooks. Every mm function reaches
these through it, the way kernel code reaches ``NODE_DATA(nid)``.

Orders 0..MAX_PAGE_ORDER; a compound allocation becomes a folio: the head carries PG_head and
the order, tails point at the head. A page is freed when its refcount drops to zero
(``__folio_put``); freeing a page that is still mapped or pinned is refused and reported as a
BUG event, like ``bad_page()`` which takes such a page out of circulation.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..kernel.config import Profile, get_profile
from ..kernel.events import EventLog
from ..kernel.hooks import Hooks
from ..kernel.types import HPAGE_PMD_ORDER, MAX_PAGE_ORDER, PAGE_SHIFT, parse_size
from ..kernel.workqueue import WorkQueue
from .page import GUP_PIN_COUNTING_BIAS, PG, PageArray
from .physmem import PhysMem
from .vmstat import VmStat

__all__ = [
    "ZERO_PFN",
    "PgData",
    "alloc_pages",
    "alloc_pages_bulk",
    "free_pages",
    "free_pages_bulk",
]

ZERO_PFN = 0
"""The shared 4 KiB zero page (``ZERO_PAGE(0)``, ``empty_zero_page``) lives in frame 0."""

NULL_SENTINEL = -1
"""The last frame is reserved and never allocated, so that a NULL entry (-1) in a page array
indexes it: its ``pin_unit`` of -1 and ``small`` of 0 send any batch holding a NULL to the
slow path, which skips NULLs, without a separate test on the hot path."""

_BUDDY = np.uint32(PG.PG_buddy)


class PgData:
    """The model's memory node: page state, physical memory, allocator, counters."""

    def __init__(self, mem: str | int = "256M", profile: str | Profile | None = None) -> None:
        self.cfg = get_profile(profile)
        nbytes = parse_size(mem)
        nr_pages = nbytes >> PAGE_SHIFT
        if nr_pages < 2 << HPAGE_PMD_ORDER:
            raise ValueError(f"mem={mem!r} is too small: need at least 4 MiB")
        self.nr_pages = nr_pages
        self.events = EventLog()
        self.hooks = Hooks()
        self.system_wq = WorkQueue("events")
        """``system_wq``: deferred work (e.g. ``bio_dirty_fn``) of this machine."""
        self.bio_dirty_list: Any = None
        """``bio_dirty_list`` of ``block/bio.c`` (a kernel global, so one per machine): made
        by the block layer the first time a bio's pages are re-dirtied in process context."""
        self.vmstat = VmStat()
        self.pages = PageArray(nr_pages)
        self.mem = PhysMem(nr_pages)
        self.free_area: list[list[int]] = [[] for _ in range(MAX_PAGE_ORDER + 1)]
        self.buddy_order = np.full(nr_pages, -1, np.int8)
        self._next_mapping_id = 1
        self.huge_zero_pfn = -1

        # Frames 0..511 are reserved "kernel memory": frame 0 is the zero page.
        reserved = 1 << HPAGE_PMD_ORDER
        p = self.pages
        p.flags[:reserved] = np.uint32(PG.PG_reserved)
        p.refcount[:reserved] = 1
        self.pin_unit_zero = 0 if self.cfg.ZERO_PAGE_NEVER_PINNED else GUP_PIN_COUNTING_BIAS
        p.pin_unit[ZERO_PFN] = self.pin_unit_zero
        p.flags[ZERO_PFN] |= np.uint32(PG.PG_uptodate)
        self.mem.pristine[:reserved] = False
        p.flags[nr_pages - 1] = np.uint32(PG.PG_reserved)
        p.refcount[nr_pages - 1] = 1
        p.pin_unit[nr_pages - 1] = -1
        usable = nr_pages - 1
        pfn = reserved
        while pfn < usable:
            order = MAX_PAGE_ORDER
            while order and (pfn & ((1 << order) - 1) or pfn + (1 << order) > usable):
                order -= 1
            self._add_free(pfn, order)
            pfn += 1 << order
        self.vmstat.nr_free_pages = usable - reserved

    # ----------------------------------------------------------------------------------
    def new_mapping_id(self) -> int:
        """A fresh ``page->mapping`` identity (an anon_vma, shmem inode or file)."""
        self._next_mapping_id += 1
        return self._next_mapping_id

    def pin_unit_for_order(self, order: int) -> int:
        """What one FOLL_PIN adds to a folio of this order's refcount (see PageArray)."""
        if order > 1 or (order == 1 and self.cfg.PINCOUNT_ANY_LARGE_FOLIO):
            return 1
        return GUP_PIN_COUNTING_BIAS

    def folio_has_pincount(self, order: int) -> bool:
        """``folio_has_pincount()`` [6.x] / ``hpage_pincount_available()`` [5.7..6.x]."""
        return self.pin_unit_for_order(order) == 1

    def is_zero_pfn(self, pfn: int) -> bool:
        return pfn == ZERO_PFN

    # free lists -------------------------------------------------------------------------
    def _add_free(self, pfn: int, order: int) -> None:
        self.free_area[order].append(pfn)
        self.buddy_order[pfn] = order
        self.pages.flags[pfn] = _BUDDY

    def _take_free(self, order: int) -> int:
        for o in range(order, MAX_PAGE_ORDER + 1):
            area = self.free_area[o]
            while area:
                pfn = area.pop()
                if self.buddy_order[pfn] != o:  # stale entry: merged away
                    continue
                self.buddy_order[pfn] = -1
                self.pages.flags[pfn] = 0
                while o > order:  # expand(): give back the upper halves
                    o -= 1
                    self._add_free(pfn + (1 << o), o)
                return pfn
        return -1

    def nr_free(self) -> int:
        return self.vmstat.nr_free_pages


def _prep_new_folio(pgdat: PgData, pfn: int, order: int) -> None:
    """``prep_new_page()`` + ``prep_compound_page()``: refcount 1, compound metadata."""
    p = pgdat.pages
    n = 1 << order
    sl = slice(pfn, pfn + n)
    p.refcount[pfn] = 1
    p.mapcount[sl] = 0
    p.pincount[pfn] = 0
    p.entire_mapcount[pfn] = 0
    p.order[sl] = order
    p.head[sl] = pfn
    p.mapping[sl] = 0
    p.index[sl] = 0
    p.pin_unit[sl] = pgdat.pin_unit_for_order(order)
    p.small[pfn] = 1 if order == 0 else 0
    if order:
        p.flags[sl] = np.uint32(PG.PG_tail)
        p.flags[pfn] = np.uint32(PG.PG_head)
    else:
        p.flags[pfn] = 0


def alloc_pages(pgdat: PgData, order: int = 0, zero: bool = False) -> int:
    """Allocate ``2**order`` contiguous frames as one folio (zero-filled with ``zero``,
    like ``__GFP_ZERO``).

    Return: the head pfn with refcount 1, or -1 when memory is exhausted (``NULL``).
    """
    if not 0 <= order <= MAX_PAGE_ORDER:
        pgdat.events.warn_once("__alloc_pages", f"order {order} > MAX_PAGE_ORDER")
        return -1
    pfn = pgdat._take_free(order)
    if pfn < 0:
        return -1
    pgdat.vmstat.nr_free_pages -= 1 << order
    _prep_new_folio(pgdat, pfn, order)
    pgdat.mem.hand_out(np.arange(pfn, pfn + (1 << order), dtype=np.int64), zero)
    return pfn


def alloc_pages_bulk(pgdat: PgData, nr_pages: int, zero: bool = False) -> np.ndarray:
    """``alloc_pages_bulk()``: up to ``nr_pages`` order-0 pages, each with refcount 1
    (zero-filled with ``zero``).

    Return: an int64 pfn array, shorter than asked when memory runs out.
    """
    out: list[np.ndarray] = []
    got = 0
    singles: list[int] = []
    area0 = pgdat.free_area[0]
    while got < nr_pages and area0:
        pfn = area0.pop()
        if pgdat.buddy_order[pfn] != 0:
            continue
        pgdat.buddy_order[pfn] = -1
        singles.append(pfn)
        got += 1
    if singles:
        out.append(np.array(singles, np.int64))
    while got < nr_pages:
        # Break a whole larger block without pushing its pieces through the free lists.
        order = max(1, min(MAX_PAGE_ORDER, (nr_pages - got).bit_length() - 1))
        pfn = pgdat._take_free(order)
        while pfn < 0 and order > 0:
            order -= 1
            pfn = pgdat._take_free(order)
        if pfn < 0:
            break
        out.append(np.arange(pfn, pfn + (1 << order), dtype=np.int64))
        got += 1 << order
    pfns = np.concatenate(out) if out else np.empty(0, np.int64)
    if len(pfns) > nr_pages:  # the last block was larger than needed: give back the rest
        for extra in pfns[nr_pages:].tolist():
            pgdat.pages.flags[extra] = 0
            _free_one_block(pgdat, int(extra), 0)
        pfns = pfns[:nr_pages]
    p = pgdat.pages
    p.refcount[pfns] = 1
    p.mapcount[pfns] = 0
    p.pincount[pfns] = 0
    p.order[pfns] = 0
    p.head[pfns] = pfns
    p.mapping[pfns] = 0
    p.index[pfns] = 0
    p.flags[pfns] = 0
    p.pin_unit[pfns] = GUP_PIN_COUNTING_BIAS
    p.small[pfns] = 1
    pgdat.vmstat.nr_free_pages -= len(pfns)
    pgdat.mem.hand_out(pfns, zero)
    return pfns


def _free_one_block(pgdat: PgData, pfn: int, order: int) -> None:
    """``__free_one_page()``: merge with free buddies and put on the free list."""
    while order < MAX_PAGE_ORDER:
        buddy = pfn ^ (1 << order)
        if buddy >= pgdat.nr_pages or pgdat.buddy_order[buddy] != order:
            break
        pgdat.buddy_order[buddy] = -1  # its list entry becomes stale
        pgdat.pages.flags[buddy] = 0
        pfn = min(pfn, buddy)
        order += 1
    pgdat._add_free(pfn, order)


def free_pages_check(pgdat: PgData, pfn: int) -> str | None:
    """``free_page_is_bad()``: why this folio must not be freed, or None."""
    p = pgdat.pages
    n = 1 << int(p.order[pfn])
    if int(p.flags[pfn]) & PG.PG_reserved:
        return "freeing a reserved page"
    if int(p.pincount[pfn]) != 0:
        return f"nonzero pincount {int(p.pincount[pfn])}"
    if int(p.entire_mapcount[pfn]) != 0 or bool(np.any(p.mapcount[pfn : pfn + n] != 0)):
        return "nonzero mapcount"
    if int(p.refcount[pfn]) != 0:
        return f"nonzero refcount {int(p.refcount[pfn])}"
    return None


def _clear_freed(p: PageArray, frames: slice | np.ndarray, pfns: np.ndarray) -> None:
    """The state a freed frame keeps: no flags, no folio (each frame its own head, order 0),
    no mapping; ``frames`` selects them, ``pfns`` are their numbers in the same order."""
    p.flags[frames] = 0
    p.order[frames] = 0
    p.head[frames] = pfns
    p.mapping[frames] = 0
    p.index[frames] = 0
    p.pin_unit[frames] = GUP_PIN_COUNTING_BIAS
    p.small[frames] = 0


def free_pages(pgdat: PgData, pfn: int, site: str = "__folio_put") -> bool:
    """Free the folio headed by ``pfn`` whose refcount has reached zero.

    Return: True if freed; False if refused (mapped or pinned: a BUG event is recorded and the
    frames are leaked, as ``bad_page()`` does).
    """
    p = pgdat.pages
    order = int(p.order[pfn])
    why = free_pages_check(pgdat, pfn)
    if why is not None:
        pgdat.events.bug("bad_page", f"{why} ({site}): {p.describe(pfn)}")
        return False
    n = 1 << order
    if pgdat.hooks.active:
        pgdat.hooks.free(np.arange(pfn, pfn + n, dtype=np.int64), order, site)
    _clear_freed(p, slice(pfn, pfn + n), np.arange(pfn, pfn + n, dtype=np.int64))
    pgdat.vmstat.nr_free_pages += n
    _free_one_block(pgdat, pfn, order)
    return True


def free_pages_bulk(pgdat: PgData, pfns: np.ndarray, site: str = "free_unref_folios") -> None:
    """Free many order-0 folios whose refcount has reached zero, at once: what
    ``folios_put_refs()`` → ``free_unref_folios()`` does with a batch (mm/swap.c,
    mm/page_alloc.c, v6.2+; ``release_pages()`` before).

    ``pfns`` must be distinct order-0 heads. A page that fails :func:`free_pages_check` goes
    through :func:`free_pages` alone (BUG event, leaked); the others are reset together and
    merged with their buddies order by order: two pages of this batch that are buddies merge
    with each other, a page whose buddy is already free merges with it, the rest go on the
    free list of that order. The free state reached is the one freeing them one by one
    reaches (buddy merging does not depend on the order of frees); only the order of entries
    on the free lists differs. With hooks attached each folio is freed and reported alone.
    """
    if not len(pfns):
        return
    if pgdat.hooks.active:
        for pfn in pfns.tolist():
            free_pages(pgdat, pfn, site)
        return
    p = pgdat.pages
    bad = ((p.flags.take(pfns) & np.uint32(PG.PG_reserved)) != 0) | (p.pincount.take(pfns) != 0)
    bad |= (p.entire_mapcount.take(pfns) != 0) | (p.mapcount.take(pfns) != 0)
    bad |= (p.refcount.take(pfns) != 0) | (p.order.take(pfns) != 0)
    if bad.any():
        for pfn in pfns[bad].tolist():
            free_pages(pgdat, pfn, site)
        pfns = pfns[~bad]
    _clear_freed(p, pfns, pfns)
    pgdat.vmstat.nr_free_pages += len(pfns)
    # __free_one_page() for the whole batch, one order at a time.
    bo = pgdat.buddy_order
    blocks = np.unique(pfns)
    for order in range(MAX_PAGE_ORDER + 1):
        if not len(blocks):
            break
        if order == MAX_PAGE_ORDER:
            keep = np.ones(len(blocks), bool)
        else:
            buddy = blocks ^ (1 << order)
            inside = buddy < pgdat.nr_pages
            free_buddy = np.zeros(len(blocks), bool)
            free_buddy[inside] = bo[buddy[inside]] == order
            pair = np.isin(buddy, blocks, assume_unique=True)
            merge = free_buddy | pair
            keep = ~merge
            taken = buddy[free_buddy]
            bo[taken] = -1  # their free-list entries become stale
            p.flags[taken] = 0
        stay = blocks[keep]
        if len(stay):
            bo[stay] = order
            p.flags[stay] = _BUDDY
            pgdat.free_area[order].extend(stay.tolist())
        if order < MAX_PAGE_ORDER:
            blocks = np.unique(np.minimum(blocks[merge], buddy[merge]))

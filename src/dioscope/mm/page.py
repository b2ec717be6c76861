"""struct page as struct-of-arrays: the ``mem_map``.

Models the fields of ``include/linux/mm_types.h`` ``struct page`` / ``struct folio`` that the
pinning path reads or writes, one numpy array per field with the kernel's width:

======================  ==========  ==========================================================
field                   dtype       kernel
======================  ==========  ==========================================================
``refcount``            int32       ``page->_refcount`` (atomic_t; wraps like the kernel's)
``mapcount``            int32       ``page->_mapcount + 1`` (PTE mappings of this subpage)
``entire_mapcount``     int32       ``folio->_entire_mapcount + 1`` (PMD mappings; head only)
``pincount``            int32       ``folio->_pincount`` / ``hpage_pinned_refcount`` (head)
``flags``               uint32      ``page->flags`` (the PG_* bits below)
``order``               int8        ``folio_order()`` (SIMPLIFIED: stored on every subpage,
                                    not only on the head, so one gather answers it)
``head``                int64       ``compound_head()`` as a pfn (a small page is its own head)
``mapping``             int64       ``page->mapping`` as an object id (0 = none)
``index``               int64       ``page->index``
``pin_unit``            int32       model cache: what one FOLL_PIN adds to the head's refcount
                                    under this profile (1024, 1, or 0 for an exempt zero page)
``small``               uint8       model cache: 1 for an allocated order-0 page that is not
                                    reserved (its own head, bias-pinned): release fast path
======================  ==========  ==========================================================

A ``struct page *`` is a pfn (an index into these arrays); page arrays are int64 numpy arrays
with -1 for NULL. No Python object exists per page.
"""

from __future__ import annotations

import enum
from typing import Final

import numpy as np

__all__ = [
    "GUP_PIN_COUNTING_BIAS",
    "NULL_PFN",
    "PG",
    "PageArray",
]

GUP_PIN_COUNTING_BIAS: Final = 1024
"""``include/linux/mm.h``: one FOLL_PIN on a page without an exact pincount adds this."""

NULL_PFN: Final = -1


class PG(enum.IntFlag):
    """Page flags (``include/linux/page-flags.h``), the subset the model uses."""

    PG_locked = 1 << 0
    PG_referenced = 1 << 1
    PG_uptodate = 1 << 2
    PG_dirty = 1 << 3
    PG_lru = 1 << 4
    PG_head = 1 << 5
    PG_tail = 1 << 6  # SIMPLIFIED: the kernel marks tails by compound_head's low bit
    PG_writeback = 1 << 7
    PG_reserved = 1 << 8
    PG_anon = 1 << 9  # PageAnon(): the kernel keeps this in page->mapping's low bit
    PG_anon_exclusive = 1 << 10
    PG_swapbacked = 1 << 11
    PG_buddy = 1 << 12  # free, on the buddy free lists (page_type in the kernel)
    PG_large_rmappable = 1 << 13


class PageArray:
    """Per-page state for ``nr_pages`` frames (the ``mem_map``)."""

    __slots__ = (
        "entire_mapcount",
        "flags",
        "head",
        "index",
        "mapcount",
        "mapping",
        "nr_pages",
        "order",
        "pin_unit",
        "pincount",
        "refcount",
        "small",
    )

    def __init__(self, nr_pages: int) -> None:
        self.nr_pages = nr_pages
        self.refcount = np.zeros(nr_pages, np.int32)
        self.mapcount = np.zeros(nr_pages, np.int32)
        self.entire_mapcount = np.zeros(nr_pages, np.int32)
        self.pincount = np.zeros(nr_pages, np.int32)
        self.flags = np.zeros(nr_pages, np.uint32)
        self.order = np.zeros(nr_pages, np.int8)
        self.head = np.arange(nr_pages, dtype=np.int64)
        self.mapping = np.zeros(nr_pages, np.int64)
        self.index = np.zeros(nr_pages, np.int64)
        self.pin_unit = np.full(nr_pages, GUP_PIN_COUNTING_BIAS, np.int32)
        self.small = np.zeros(nr_pages, np.uint8)

    def nbytes(self) -> int:
        """Bytes of host memory the per-page state uses."""
        return sum(
            getattr(self, f).nbytes for f in self.__slots__ if f not in ("nr_pages",)
        )

    # Scalar helpers, for slow paths and tests -------------------------------------------

    def compound_head(self, pfn: int) -> int:
        return int(self.head[pfn])

    def folio_order(self, pfn: int) -> int:
        return int(self.order[pfn])

    def test(self, pfn: int, flag: PG) -> bool:
        return bool(int(self.flags[pfn]) & flag)

    def set(self, pfn: int, flag: PG) -> None:
        self.flags[pfn] |= np.uint32(flag)

    def clear(self, pfn: int, flag: PG) -> None:
        self.flags[pfn] &= np.uint32(~flag & 0xFFFFFFFF)

    def describe(self, pfn: int) -> str:
        """One line like the kernel's ``dump_page()``."""
        h = self.compound_head(pfn)
        names = [f.name for f in PG if f.name and int(self.flags[pfn]) & f]
        return (
            f"page pfn:{pfn:#x} head:{h:#x} order:{self.folio_order(pfn)} "
            f"refcount:{int(self.refcount[h])} mapcount:{int(self.mapcount[pfn])} "
            f"pincount:{int(self.pincount[h])} mapping:{int(self.mapping[h])} "
            f"index:{int(self.index[pfn]):#x} flags:{'|'.join(names) or '0'}"
        )

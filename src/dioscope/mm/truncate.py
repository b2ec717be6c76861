"""Taking pages out of the page cache: truncation and invalidation (``mm/truncate.c``).

* Truncation (``truncate_inode_pages_range``, ``truncate_pagecache``): pages wholly in the
  range are unmapped from every VMA (COW copies too, for ``truncate_pagecache``), waited for
  if under writeback, their dirt cancelled, and removed; partially covered pages stay and
  get the covered bytes zeroed (not dirtied: the filesystem zeroes and dirties the block
  tail itself, e.g. ``ext4_block_truncate_page``).
* ``invalidate_inode_pages2_range`` (what Direct I/O does around a write): mapped pages are
  unmapped first (a dirty PTE dirties its page), then every clean page is removed; a page
  that is dirty stays and the call returns -EBUSY. The same in 5.9 and 6.18: neither has a
  ``launder_folio`` for ext4, so ``invalidate_complete_folio2`` refuses a dirty folio.
  A page that a Direct I/O or anything else holds pinned is removed all the same; its pin
  keeps the frame alive until released.
* ``invalidate_mapping_pages``: only pages that are clean, not under writeback, unmapped and
  held by nobody but the page cache (``mapping_evict_folio``).

Removing a page drops the page cache's reference (``filemap_free_folio``); the frame is freed
when nothing else holds it.
"""

from __future__ import annotations

import errno
from typing import TYPE_CHECKING, Any, Final

import numpy as np

from ..kernel.types import PAGE_SHIFT, PAGE_SIZE
from .page import PG
from .page_writeback import folio_wait_writeback
from .rmap import unmap_mapping_pages, unmap_mapping_range

if TYPE_CHECKING:
    from .filemap import AddressSpace

__all__ = [
    "invalidate_inode_pages2_range",
    "invalidate_mapping_pages",
    "truncate_inode_pages",
    "truncate_inode_pages_final",
    "truncate_inode_pages_range",
    "truncate_pagecache",
    "truncate_pagecache_range",
]

_MAX_INDEX: Final = (1 << 62) - 1


def _zero_partial(mapping: AddressSpace, index: int, start: int, end: int) -> None:
    """``truncate_inode_partial_folio()`` for a small folio: wait for writeback, zero bytes
    ``[start, end)`` of page ``index`` if it is cached."""
    pfn = mapping.lookup(index)
    if pfn < 0 or start >= end:
        return
    folio_wait_writeback(mapping, np.array([pfn], np.int64))
    mem = mapping.pgdat.mem.bytes
    base = pfn << PAGE_SHIFT
    mem[base + start : base + end] = 0


def _remove(mapping: AddressSpace, start: int, end: int) -> None:
    """Truncate the whole pages ``[start, end)``: unmap, wait for writeback, remove."""
    idx, pfns = mapping.present(start, end)
    if not len(idx):
        return
    p = mapping.pgdat.pages
    mapped = p.mapcount.take(pfns) > 0
    if mapped.any():
        # truncate_cleanup_folio(): unmap_mapping_folio() of each still-mapped folio.
        first, last = int(idx[mapped][0]), int(idx[mapped][-1])
        unmap_mapping_pages(mapping, first, last - first + 1, even_cows=False)
    folio_wait_writeback(mapping, pfns)
    mapping.delete(idx)


def truncate_inode_pages_range(mapping: AddressSpace, lstart: int, lend: int = -1) -> None:
    """``truncate_inode_pages_range()``: remove the page cache of bytes ``[lstart, lend]``
    (``lend`` -1: to the end), zeroing the covered part of a partial first or last page.

    Context: the caller has already unmapped the range where it must (truncate_pagecache);
    still-mapped whole pages are unmapped here. Sleeps on writeback.
    """
    if not mapping.nrpages:
        return
    start = (lstart + PAGE_SIZE - 1) >> PAGE_SHIFT
    end = _MAX_INDEX if lend == -1 else (lend + 1) >> PAGE_SHIFT
    first_page = lstart >> PAGE_SHIFT
    if lstart & (PAGE_SIZE - 1):
        stop = PAGE_SIZE if lend == -1 or (lend >> PAGE_SHIFT) != first_page else (
            (lend & (PAGE_SIZE - 1)) + 1)
        _zero_partial(mapping, first_page, lstart & (PAGE_SIZE - 1), stop)
    if lend != -1 and (lend + 1) & (PAGE_SIZE - 1):
        last_page = lend >> PAGE_SHIFT
        if last_page != first_page or not lstart & (PAGE_SIZE - 1):
            _zero_partial(mapping, last_page, 0, (lend + 1) & (PAGE_SIZE - 1))
    if start < end:
        _remove(mapping, start, end)


def truncate_inode_pages(mapping: AddressSpace, lstart: int) -> None:
    """``truncate_inode_pages()``: the page cache from ``lstart`` to the end."""
    truncate_inode_pages_range(mapping, lstart, -1)


def truncate_inode_pages_final(mapping: AddressSpace) -> None:
    """``truncate_inode_pages_final()``: the inode is being evicted; drop every page."""
    truncate_inode_pages_range(mapping, 0, -1)


def truncate_pagecache(inode: Any, newsize: int) -> None:
    """``truncate_pagecache()``: unmap (COW copies included) and drop the page cache past
    ``newsize``, whose own partial page gets its tail zeroed."""
    mapping = inode.i_mapping
    holebegin = (newsize + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1)
    unmap_mapping_range(mapping, holebegin, 0, even_cows=True)
    truncate_inode_pages(mapping, newsize)
    unmap_mapping_range(mapping, holebegin, 0, even_cows=True)


def truncate_pagecache_range(inode: Any, lstart: int, lend: int) -> None:
    """``truncate_pagecache_range()`` (hole punching): unmap the whole pages of bytes
    ``[lstart, lend]`` (COW copies stay), then truncate the page cache of the range."""
    mapping = inode.i_mapping
    unmap_start = (lstart + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1)
    unmap_end = ((lend + 1) & ~(PAGE_SIZE - 1)) - 1
    if unmap_end > unmap_start:
        unmap_mapping_range(mapping, unmap_start, 1 + unmap_end - unmap_start,
                            even_cows=False)
    truncate_inode_pages_range(mapping, lstart, lend)


def invalidate_inode_pages2_range(mapping: AddressSpace, start: int, end: int) -> int:
    """``invalidate_inode_pages2_range()``: remove the pages of page indices ``[start,
    end]`` from the page cache, unmapping them from every VMA first.

    Context: sleeps on writeback.
    Return: 0, or -EBUSY if some page could not go because it is dirty (those stay).
    """
    if not mapping.nrpages or end < start:
        return 0
    idx, pfns = mapping.present(start, end + 1)
    if not len(idx):
        return 0
    p = mapping.pgdat.pages
    mapped = p.mapcount.take(pfns) > 0
    if mapped.any():
        # Zap the rest of the range in one hit from the first mapped page on.
        first = int(idx[mapped][0])
        unmap_mapping_pages(mapping, first, 1 + end - first, even_cows=False)
    folio_wait_writeback(mapping, pfns)
    dirty = (p.flags.take(pfns) & np.uint32(PG.PG_dirty)) != 0
    mapping.delete(idx[~dirty])
    return -errno.EBUSY if dirty.any() else 0


def invalidate_mapping_pages(mapping: AddressSpace, start: int, end: int) -> int:
    """``invalidate_mapping_pages()``: drop the clean, unmapped, idle pages of page indices
    ``[start, end]``; anything dirty, under writeback, locked, mapped or referenced by
    someone else (a pin, a GUP reference) stays. Return: pages dropped."""
    if not mapping.nrpages or end < start:
        return 0
    idx, pfns = mapping.present(start, end + 1)
    if not len(idx):
        return 0
    p = mapping.pgdat.pages
    busy = np.uint32(PG.PG_dirty | PG.PG_writeback | PG.PG_locked)
    ok = ((p.flags.take(pfns) & busy) == 0) & (p.mapcount.take(pfns) == 0)
    ok &= p.refcount.take(pfns) == 1
    mapping.delete(idx[ok])
    return int(ok.sum())

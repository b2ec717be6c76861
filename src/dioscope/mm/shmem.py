"""Shared anonymous memory: a shmem file behind ``MAP_SHARED|MAP_ANONYMOUS`` (``mm/shmem.c``).

The file's page cache holds one reference on each of its pages; every PTE that maps a page
holds another. Pages are allocated zero-filled on first fault, read or write (shmem never maps
the zero page). The file lives while any VMA uses it; when the last one goes, its pages are
truncated (the page-cache references dropped).

SIMPLIFIED: no shmem THP (``shmem_enabled`` is ``never`` by default, as on the host).
"""

from __future__ import annotations

import numpy as np

from ..kernel.types import PAGE_SHIFT
from .page import PG
from .page_alloc import PgData, alloc_pages
from .page_ref import drop_refs

__all__ = ["ShmemFile"]


class ShmemFile:
    """An unlinked shmem inode of ``size`` bytes (``shmem_kernel_file_setup``)."""

    def __init__(self, pgdat: PgData, size: int) -> None:
        self.pgdat = pgdat
        self.mapping_id = pgdat.new_mapping_id()
        self.nr_pages = (size + (1 << PAGE_SHIFT) - 1) >> PAGE_SHIFT
        self.pages = np.full(self.nr_pages, -1, np.int64)
        self.users = 0

    def get_folio(self, index: int) -> int:
        """``shmem_get_folio()``: the page at ``index``, allocated and zeroed if absent.

        Return: pfn, or -1 when memory is exhausted.
        """
        pfn = int(self.pages[index])
        if pfn >= 0:
            return pfn
        pgdat = self.pgdat
        pfn = alloc_pages(pgdat, 0, zero=True)
        if pfn < 0:
            return -1
        p = pgdat.pages
        p.mapping[pfn] = self.mapping_id
        p.index[pfn] = index
        p.flags[pfn] |= np.uint32(PG.PG_swapbacked | PG.PG_uptodate | PG.PG_lru)
        self.pages[index] = pfn
        pgdat.vmstat.nr_shmem += 1
        return pfn

    def get(self) -> None:
        self.users += 1

    def put(self) -> None:
        """Drop a VMA's use; the last one truncates the file (``shmem_evict_inode``)."""
        self.users -= 1
        if self.users == 0:
            present = self.pages[self.pages >= 0]
            self.pages[:] = -1
            self.pgdat.vmstat.nr_shmem -= len(present)
            drop_refs(self.pgdat, present, "shmem_undo_range")

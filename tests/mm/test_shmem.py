"""mm/shmem.py: shared anonymous memory (MAP_SHARED|MAP_ANONYMOUS).

A shmem page holds one reference for the page cache and one per PTE that maps it; pages
are allocated zero-filled on the first fault, read or write (never the zero page); the
file is truncated when its last VMA goes.
"""

from __future__ import annotations

import errno

import numpy as np
import pytest

from dioscope.kernel.types import PAGE_SIZE
from dioscope.mm.gup import pin_user_pages_fast, unpin_user_pages, unpin_user_pages_dirty_lock
from dioscope.mm.gup_core import FOLL
from dioscope.mm.mmap import MADV_DONTNEED, MAP_ANONYMOUS, MAP_SHARED, PROT_READ, PROT_WRITE
from dioscope.mm.page import GUP_PIN_COUNTING_BIAS, PG
from dioscope.mm.page_alloc import ZERO_PFN
from dioscope.mm.pgtable import PTE_DIRTY, PTE_RW

BIAS = GUP_PIN_COUNTING_BIAS
P = PAGE_SIZE
RW = PROT_READ | PROT_WRITE
SHARED = MAP_SHARED | MAP_ANONYMOUS


def slot(p, addr: int) -> tuple[int, int]:
    vma = p.mm.vma_lookup(addr)
    s = vma.slot(addr)
    return int(vma.pt_pfn[s]), int(vma.pt_flags[s])


def counts(k, pfn: int) -> tuple[int, int]:
    return int(k.pgdat.pages.refcount[pfn]), int(k.pgdat.pages.mapcount[pfn])


@pytest.mark.parametrize("first_access", ["read", "write"])
def test_first_fault_allocates_a_shmem_page(k, snapshot, first_access):
    before = snapshot(k)
    p = k.spawn()
    a = p.mmap(3 * P, RW, SHARED)
    if first_access == "read":
        assert p.read_user(a + P, 3) == bytes(3)
    else:
        assert p.write_user(a + P, b"abc") == 3
    pg, fl = slot(p, a + P)
    assert pg not in (-1, ZERO_PFN)
    assert counts(k, pg) == (2, 1)  # page cache + PTE
    assert fl & PTE_RW  # shared writable: mapped writable at once
    assert not k.pgdat.pages.test(pg, PG.PG_anon)
    shm = p.mm.vma_lookup(a).vm_file
    assert int(k.pgdat.pages.mapping[pg]) == shm.mapping_id
    assert int(k.pgdat.pages.index[pg]) == 1
    assert slot(p, a)[0] == -1 and slot(p, a + 2 * P)[0] == -1
    assert k.vmstat.nr_shmem == 1
    assert k.pgdat.nr_free() == before.nr_free - 1
    p.exit()
    assert k.vmstat.nr_shmem == 0
    before.assert_restored(k)


def test_refcount_is_page_cache_plus_one_per_mapping(k, snapshot):
    before = snapshot(k)
    p = k.spawn()
    a = p.mmap(P, RW, SHARED)
    p.write_user(a, b"x")
    pg = slot(p, a)[0]
    c1 = k.fork(p)
    c2 = k.fork(p)
    assert counts(k, pg) == (4, 3)
    assert p.mm.vma_lookup(a).vm_file.users == 3
    c1.exit()
    assert counts(k, pg) == (3, 2)
    p.munmap(a, P)
    assert counts(k, pg) == (2, 1)
    assert c2.read_user(a, 1) == b"x"
    c2.exit()  # the last user: the file is truncated and the page freed
    before.assert_restored(k)


def test_dontneed_keeps_the_page_cache_page(k, snapshot):
    before = snapshot(k)
    p = k.spawn()
    a = p.mmap(P, RW, SHARED)
    p.write_user(a, b"kept")
    pg = slot(p, a)[0]
    p.madvise(a, P, MADV_DONTNEED)
    assert slot(p, a)[0] == -1
    assert counts(k, pg) == (1, 0)
    assert p.read_user(a, 4) == b"kept"  # refaulted from the page cache
    assert slot(p, a)[0] == pg
    p.exit()
    before.assert_restored(k)


def test_partial_munmap_keeps_the_file_alive(k, snapshot):
    before = snapshot(k)
    p = k.spawn()
    a = p.mmap(3 * P, RW, SHARED)
    p.write_user(a, b"A" * P + b"B" * P + b"C" * P)
    pages = [slot(p, a + i * P)[0] for i in range(3)]
    p.munmap(a + P, P)
    assert [len(p.mm.vmas), p.mm.vma_lookup(a).vm_file.users] == [2, 2]
    assert counts(k, pages[1]) == (1, 0)  # still in the page cache
    assert p.read_user(a + 2 * P, 1) == b"C"
    p.munmap(a, P)
    p.munmap(a + 2 * P, P)
    assert k.vmstat.nr_shmem == 0
    before.assert_restored(k)


def test_pinned_shmem_page_outlives_the_file(k, snapshot):
    before = snapshot(k)
    p = k.spawn()
    a = p.mmap(2 * P, RW, SHARED)
    pages = np.full(2, -1, np.int64)
    assert pin_user_pages_fast(p.mm, a, 2, FOLL.FOLL_WRITE, pages) == 2
    assert [counts(k, int(x)) for x in pages] == [(2 + BIAS, 1)] * 2
    p.exit()
    assert [counts(k, int(x)) for x in pages] == [(BIAS, 0)] * 2
    unpin_user_pages(k.pgdat, pages, 2)
    before.assert_restored(k)


def test_mprotect_of_shared_memory(k):
    p = k.spawn()
    a = p.mmap(P, RW, SHARED)
    p.write_user(a, b"x")
    p.mprotect(a, P, PROT_READ)
    assert not slot(p, a)[1] & PTE_RW
    pages = np.full(1, -1, np.int64)
    assert pin_user_pages_fast(p.mm, a, 1, FOLL.FOLL_WRITE, pages) == -errno.EFAULT
    p.mprotect(a, P, RW)
    assert slot(p, a)[1] & PTE_RW  # a shared mapping's PTEs get write back at once
    assert pin_user_pages_fast(p.mm, a, 1, FOLL.FOLL_WRITE, pages) == 1
    unpin_user_pages(k.pgdat, pages, 1)


def test_read_only_shared_mapping(k):
    p = k.spawn()
    a = p.mmap(P, PROT_READ, SHARED)
    assert p.read_user(a, 2) == bytes(2)
    pg, fl = slot(p, a)
    assert pg != ZERO_PFN and not fl & PTE_RW
    assert p.write_user(a, b"x") == 0


# === dirtiness ===============================================================================
def test_write_fault_dirties_the_page(k):
    """do_shared_fault() -> fault_dirty_shared_page() -> folio_mark_dirty()."""
    p = k.spawn()
    a = p.mmap(P, RW, SHARED)
    p.write_user(a, b"x")
    pg, fl = slot(p, a)
    assert fl & PTE_DIRTY
    assert k.pgdat.pages.test(pg, PG.PG_dirty)
    pages = np.full(1, -1, np.int64)
    assert pin_user_pages_fast(p.mm, a, 1, FOLL.FOLL_WRITE, pages) == 1
    calls: list[object] = []
    k.pgdat.hooks.tracepoints.append(lambda name, fields: calls.append(fields))
    unpin_user_pages_dirty_lock(k.pgdat, pages, 1, True)
    assert calls == []  # already dirty: set_page_dirty_lock() is not called again


def test_store_through_a_clean_pte_dirties_the_page_at_unmap(k):
    """A read fault maps the page clean; the store sets the PTE's dirty bit; the zap hands it
    to the page (zap_present_folio_ptes(): folio_mark_dirty() for a non-anon folio)."""
    p = k.spawn()
    a = p.mmap(P, RW, SHARED)
    assert p.read_user(a, 1) == b"\x00"
    pg, fl = slot(p, a)
    assert fl & PTE_RW and not fl & PTE_DIRTY
    assert not k.pgdat.pages.test(pg, PG.PG_dirty)
    p.write_user(a, b"y")
    assert slot(p, a) == (pg, fl | PTE_DIRTY)  # no fault: the PTE was writable
    assert not k.pgdat.pages.test(pg, PG.PG_dirty)
    p.madvise(a, P, MADV_DONTNEED)
    assert k.pgdat.pages.test(pg, PG.PG_dirty)
    assert counts(k, pg) == (1, 0)
    assert p.read_user(a, 1) == b"y"

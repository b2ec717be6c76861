"""mm/fork.py: COW-sharing at fork, and early COW of pinned anon pages (EARLY_COW_PINNED_AT_FORK,
Linux commit 70e806e4e645, v5.9) in every profile, with the switch on and off.
"""

from __future__ import annotations

import numpy as np
import pytest

from dioscope.kernel.config import PROFILES
from dioscope.kernel.types import HPAGE_PMD_NR, HPAGE_PMD_SIZE, PAGE_SIZE
from dioscope.machine import Kernel
from dioscope.mm.gup import pin_user_pages_fast, unpin_user_pages
from dioscope.mm.gup_core import FOLL
from dioscope.mm.mmap import (
    MADV_HUGEPAGE,
    MAP_ANONYMOUS,
    MAP_SHARED,
    PROT_NONE,
    PROT_READ,
    PROT_WRITE,
)
from dioscope.mm.page import GUP_PIN_COUNTING_BIAS, PG
from dioscope.mm.page_alloc import ZERO_PFN
from dioscope.mm.page_ref import get_page, put_page
from dioscope.mm.pgtable import PTE_PMD, PTE_RW

BIAS = GUP_PIN_COUNTING_BIAS
P = PAGE_SIZE
W = FOLL.FOLL_WRITE


def slot(p, addr: int) -> tuple[int, int]:
    vma = p.mm.vma_lookup(addr)
    s = vma.slot(addr)
    return int(vma.pt_pfn[s]), int(vma.pt_flags[s])


def counts(k: Kernel, pfn: int) -> tuple[int, int]:
    """(refcount of the folio, mapcount of the subpage)."""
    p = k.pgdat.pages
    return int(p.refcount[p.head[pfn]]), int(p.mapcount[pfn])


def exclusive(k: Kernel, pfn: int) -> bool:
    return k.pgdat.pages.test(pfn, PG.PG_anon_exclusive)


def dma_write(k: Kernel, pfn: int, data: bytes) -> None:
    """A device writing into a pinned page: straight into the frame, no fault, no PTE."""
    k.pgdat.mem.frame(pfn)[: len(data)] = data


def pin(p, addr: int, n: int = 1, gup_flags: int = W) -> np.ndarray:
    pages = np.full(n, -1, np.int64)
    assert pin_user_pages_fast(p.mm, addr, n, gup_flags, pages) == n
    return pages


# === no pins: COW-sharing ====================================================================
def test_fork_cow_shares_private_pages(k, snapshot):
    before = snapshot(k)
    p = k.spawn()
    a = p.mmap(5 * P)
    p.write_user(a, b"A" * P + b"B" * P + b"C" * P)
    p.read_user(a + 3 * P, 1)  # page 3: the zero page; page 4: never touched
    pages = [slot(p, a + i * P)[0] for i in range(3)]
    free = k.pgdat.nr_free()
    seq = p.mm.write_protect_seq

    c = k.fork(p)
    assert c in k.processes and c.pid != p.pid
    assert not c.mm.has_pinned
    assert p.mm.write_protect_seq == seq + 2
    assert k.pgdat.nr_free() == free  # nothing copied
    for i, pg in enumerate(pages):
        assert counts(k, pg) == (2, 2)
        assert not exclusive(k, pg)
        for proc in (p, c):
            pfn, fl = slot(proc, a + i * P)
            assert pfn == pg and not fl & PTE_RW
    assert slot(c, a + 3 * P)[0] == ZERO_PFN and slot(c, a + 4 * P)[0] == -1
    assert counts(k, ZERO_PFN) == (1, 0)
    assert c.read_user(a, 3 * P) == p.read_user(a, 3 * P)

    # Parent writes page 0: copied. Child writes page 1: copied; then the parent is the
    # last one on page 1 and reuses it.
    p.write_user(a, b"a")
    c.write_user(a + P, b"b")
    p.write_user(a + P + 1, b"b")
    assert slot(p, a)[0] != pages[0] and slot(c, a)[0] == pages[0]
    assert slot(c, a + P)[0] != pages[1] and slot(p, a + P)[0] == pages[1]
    assert counts(k, pages[0]) == counts(k, pages[1]) == (1, 1)
    assert counts(k, pages[2]) == (2, 2)
    assert p.read_user(a, 2) == b"aA" and c.read_user(a, 2) == b"AA"
    assert p.read_user(a + P, 2) == b"Bb" and c.read_user(a + P, 2) == b"bB"
    assert k.pgdat.nr_free() == free - 2

    c.exit()
    assert counts(k, pages[2]) == (1, 1)
    p.exit()
    before.assert_restored(k)


def test_fork_of_a_fork_and_has_pinned_is_not_inherited(k):
    p = k.spawn()
    a = p.mmap(P)
    p.write_user(a, b"x")
    pin(p, a)
    assert p.mm.has_pinned
    c = k.fork(p)
    g = k.fork(c)
    assert not c.mm.has_pinned and not g.mm.has_pinned
    pc = slot(c, a)[0]
    assert counts(k, pc) == (2, 2)  # c has never pinned: shared with g, no early COW


# === pins: early COW =========================================================================
def _kernel(profile: str, early_cow: bool) -> Kernel:
    cfg = PROFILES[profile]
    if not early_cow:
        cfg = cfg.derive(EARLY_COW_PINNED_AT_FORK=False)
    return Kernel("32M", cfg)


@pytest.mark.parametrize("profile", ["5.9", "5.9-pin", "6.18"])
@pytest.mark.parametrize("early_cow", [True, False], ids=["early-cow", "no-early-cow"])
def test_fork_with_a_pinned_page(snapshot, profile, early_cow):
    k = _kernel(profile, early_cow)
    before = snapshot(k)
    p = k.spawn()
    a = p.mmap(3 * P)
    p.write_user(a, b"pinned" + bytes(P - 6) + b"plain")
    pages = pin(p, a)
    pinned, plain = int(pages[0]), slot(p, a + P)[0]
    free = k.pgdat.nr_free()

    c = k.fork(p)
    assert counts(k, plain) == (2, 2)  # not pinned: COW-shared either way
    if early_cow:
        child_page, fl = slot(c, a)
        assert child_page != pinned
        assert fl & PTE_RW  # the child's copy is its own, writable
        assert counts(k, child_page) == (1, 1) and exclusive(k, child_page)
        assert counts(k, pinned) == (1 + BIAS, 1)
        assert slot(p, a) == (pinned, slot(p, a)[1]) and slot(p, a)[1] & PTE_RW
        assert c.read_user(a, 6) == b"pinned"
        assert k.pgdat.nr_free() == free - 1
    else:
        assert slot(c, a)[0] == pinned
        assert counts(k, pinned) == (2 + BIAS, 2)
        assert not slot(p, a)[1] & PTE_RW
        assert k.pgdat.nr_free() == free

    # The parent writes through its mapping, then the device writes into the pinned page.
    p.write_user(a, b"P")
    dma_write(k, pinned, b"D")
    if early_cow:
        # The pinned page stayed the parent's: the parent sees the DMA, the child does not.
        assert slot(p, a)[0] == pinned
        assert p.read_user(a, 6) == b"Dinned"
        assert c.read_user(a, 6) == b"pinned"
    else:
        # The parent's write COWed away from the pinned page: the DMA lands in the page the
        # child still maps, and the parent never sees it (the fork-after-pin data loss).
        assert slot(p, a)[0] != pinned
        assert p.read_user(a, 6) == b"Pinned"
        assert c.read_user(a, 6) == b"Dinned"
    unpin_user_pages(k.pgdat, pages, 1)
    c.exit()
    p.exit()
    before.assert_restored(k)


def test_fork_after_unpin_shares_again(k):
    p = k.spawn()
    a = p.mmap(P)
    p.write_user(a, b"x")
    pages = pin(p, a)
    unpin_user_pages(k.pgdat, pages, 1)
    assert p.mm.has_pinned  # sticky
    k.fork(p)
    assert counts(k, int(pages[0])) == (2, 2)


@pytest.mark.parametrize("has_pinned", [True, False])
def test_fork_false_positive_copies_a_page_with_1024_plain_refs(k, has_pinned):
    """page_maybe_dma_pinned() is fuzzy on small pages: 1023 extra plain refs (refcount 1024)
    look pinned, so an mm that has pinned copies the page early; one that has not shares it."""
    p = k.spawn()
    a = p.mmap(2 * P)
    p.write_user(a, b"x" * (2 * P))
    pg = slot(p, a)[0]
    for _ in range(1023):
        get_page(k.pgdat, pg)
    if has_pinned:
        unpin_user_pages(k.pgdat, pin(p, a + P), 1)  # pin something else, once
    c = k.fork(p)
    if has_pinned:
        assert slot(c, a)[0] != pg
        assert counts(k, pg) == (1024, 1)
    else:
        assert slot(c, a)[0] == pg
        assert counts(k, pg) == (1025, 2)
    for _ in range(1023):
        put_page(k.pgdat, pg)


def test_fork_with_a_read_only_pinned_zero_page(k):
    """The zero page is mapped in the child as it is, pinned or not (vm_normal_page() is NULL
    for it, so it is never copied)."""
    p = k.spawn()
    a = p.mmap(2 * P)
    pages = pin(p, a, 2, gup_flags=0)
    assert pages.tolist() == [ZERO_PFN, ZERO_PFN]
    zero_ref = counts(k, ZERO_PFN)[0]
    c = k.fork(p)
    assert [slot(c, a + i * P)[0] for i in (0, 1)] == [ZERO_PFN, ZERO_PFN]
    assert counts(k, ZERO_PFN)[0] == zero_ref
    unpin_user_pages(k.pgdat, pages, 2)
    assert counts(k, ZERO_PFN)[0] == 1


# === THP =====================================================================================
def _thp(k: Kernel):
    p = k.spawn()
    a = p.mmap(HPAGE_PMD_SIZE)
    p.madvise(a, HPAGE_PMD_SIZE, MADV_HUGEPAGE)
    p.write_user(a, bytes(range(256)) * (HPAGE_PMD_SIZE // 256))
    head = slot(p, a)[0]
    assert k.pgdat.pages.folio_order(head) == 9
    return p, a, head


def test_fork_shares_an_unpinned_thp_by_pmd(k, snapshot):
    before = snapshot(k)
    p, a, head = _thp(k)
    free = k.pgdat.nr_free()
    c = k.fork(p)
    pages = k.pgdat.pages
    assert (int(pages.refcount[head]), int(pages.entire_mapcount[head])) == (2, 2)
    assert k.pgdat.nr_free() == free
    for proc in (p, c):
        fl = proc.mm.vma_lookup(a).pt_flags
        assert ((fl & PTE_PMD) != 0).all() and not (fl & PTE_RW).any()
    # A write splits the parent's PMD and COWs one base page.
    p.write_user(a + 3 * P, b"!")
    assert int(pages.refcount[head]) == 1 + HPAGE_PMD_NR - 1
    assert int(pages.entire_mapcount[head]) == 1
    assert int(pages.mapcount[head + 3]) == 0 and int(pages.mapcount[head + 4]) == 1
    assert c.read_user(a + 3 * P, 1) == bytes([0])
    assert p.read_user(a + 3 * P, 1) == b"!"
    c.exit()
    p.exit()
    before.assert_restored(k)


@pytest.mark.parametrize("count", [1, 3, HPAGE_PMD_NR])
def test_fork_copies_a_pinned_thp_page_by_page(k, snapshot, count):
    before = snapshot(k)
    p, a, head = _thp(k)
    pages = pin(p, a + 7 * P if count < HPAGE_PMD_NR else a, count)
    free = k.pgdat.nr_free()
    c = k.fork(p)
    pg = k.pgdat.pages
    # The parent's PMD was split (refcount: 512 PTE refs + the pins); the THP stays whole.
    assert (int(pg.refcount[head]), int(pg.pincount[head])) == (HPAGE_PMD_NR + count, count)
    assert int(pg.entire_mapcount[head]) == 0
    assert (pg.mapcount[head : head + HPAGE_PMD_NR] == 1).all()
    pfl = p.mm.vma_lookup(a).pt_flags
    assert not (pfl & PTE_PMD).any() and ((pfl & PTE_RW) != 0).all()
    # Every subpage reads as pinned through the folio's pincount: all 512 are copied.
    child = c.mm.vma_lookup(a).pt_pfn
    assert k.pgdat.nr_free() == free - HPAGE_PMD_NR
    assert not set(child.tolist()) & set(range(head, head + HPAGE_PMD_NR))
    assert {pg.folio_order(int(x)) for x in child} == {0}
    assert c.read_user(a, HPAGE_PMD_SIZE) == p.read_user(a, HPAGE_PMD_SIZE)
    unpin_user_pages(k.pgdat, pages, count)
    c.exit()
    p.exit()
    before.assert_restored(k)


def test_fork_keeps_the_huge_zero_folio(k):
    p = k.spawn()
    a = p.mmap(HPAGE_PMD_SIZE)
    p.madvise(a, HPAGE_PMD_SIZE, MADV_HUGEPAGE)
    p.read_user(a, 1)
    hz = k.pgdat.huge_zero_pfn
    c = k.fork(p)
    assert c.mm.vma_lookup(a).pt_pfn.tolist() == list(range(hz, hz + HPAGE_PMD_NR))
    assert int(k.pgdat.pages.refcount[hz]) == 1


# === shared memory and PROT_NONE =============================================================
def test_fork_shares_shared_anonymous_memory(k, snapshot):
    before = snapshot(k)
    p = k.spawn()
    a = p.mmap(2 * P, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS)
    p.write_user(a, b"shared")
    pg = slot(p, a)[0]
    pages = pin(p, a)  # pinned, but shared mappings are never early-COWed
    c = k.fork(p)
    assert slot(c, a)[0] == pg
    assert counts(k, pg) == (3 + BIAS, 2)  # page cache + two PTEs + the pin
    assert slot(c, a)[1] & PTE_RW
    c.write_user(a, b"S")
    assert p.read_user(a, 6) == b"Shared"
    unpin_user_pages(k.pgdat, pages, 1)
    p.exit()
    assert counts(k, pg) == (2, 1)
    c.exit()
    before.assert_restored(k)


def test_fork_of_a_prot_none_range(k, snapshot):
    before = snapshot(k)
    p = k.spawn()
    a = p.mmap(P)
    p.write_user(a, b"hidden")
    p.mprotect(a, P, PROT_NONE)
    c = k.fork(p)
    pg = slot(p, a)[0]
    assert slot(c, a)[0] == pg and counts(k, pg) == (2, 2)
    assert c.read_user(a, 6) == b""
    c.mprotect(a, P, PROT_READ)
    assert c.read_user(a, 6) == b"hidden"
    c.exit()
    p.exit()
    before.assert_restored(k)


def test_fork_early_cow_of_a_cow_shared_false_positive(k):
    """A page already COW-shared with a first child and carrying plain refs up to 1024 reads
    as maybe-pinned. [5.9] the second fork copies it early anyway; [6.18] only an exclusive
    page can be pinned, so the shared one stays shared."""
    p = k.spawn()
    a = p.mmap(2 * P)
    p.write_user(a, b"x" * (2 * P))
    pg = slot(p, a)[0]
    first = k.fork(p)
    unpin_user_pages(k.pgdat, pin(p, a + P), 1)  # the mm has pinned (another page)
    for _ in range(1022):
        get_page(k.pgdat, pg)
    assert counts(k, pg) == (1024, 2)
    second = k.fork(p)
    if k.cfg.ANON_EXCLUSIVE:
        assert slot(second, a)[0] == pg
        assert counts(k, pg) == (1025, 3)
    else:
        assert slot(second, a)[0] != pg
        assert counts(k, pg) == (1024, 2)
    assert slot(first, a)[0] == pg
    for _ in range(1022):
        put_page(k.pgdat, pg)

"""mm/memory.py: faults, COW (do_wp_page reuse/copy per profile), THP, and zapping.

Counts follow the rules in the module docstring: a PTE holds one reference and one mapcount
on its subpage, a PMD one reference and one entire_mapcount on the head, zero-page PTEs hold
nothing.
"""

from __future__ import annotations

import numpy as np
import pytest

from dioscope.kernel.types import HPAGE_PMD_NR, HPAGE_PMD_SIZE, PAGE_SHIFT, PAGE_SIZE
from dioscope.machine import Kernel
from dioscope.mm.gup import (
    get_user_pages_fast,
    pin_user_pages_fast,
    unpin_user_pages,
    unpin_user_pages_dirty_lock,
)
from dioscope.mm.gup_core import FOLL
from dioscope.mm.mmap import MADV_DONTNEED, MADV_HUGEPAGE, PROT_READ, PROT_WRITE
from dioscope.mm.page import GUP_PIN_COUNTING_BIAS, PG
from dioscope.mm.page_alloc import ZERO_PFN
from dioscope.mm.page_ref import put_page
from dioscope.mm.pgtable import PTE_DIRTY, PTE_PMD, PTE_PRESENT, PTE_RW, PTE_SPECIAL

BIAS = GUP_PIN_COUNTING_BIAS
P = PAGE_SIZE
W = FOLL.FOLL_WRITE


def pte(p, addr: int) -> tuple[int, int]:
    """(pfn, flags) of the page-table slot for ``addr``."""
    vma = p.mm.vma_lookup(addr)
    s = vma.slot(addr)
    return int(vma.pt_pfn[s]), int(vma.pt_flags[s])


def pfns(p, addr: int, n: int) -> np.ndarray:
    vma = p.mm.vma_lookup(addr)
    s = vma.slot(addr)
    return vma.pt_pfn[s : s + n].copy()


def ref(k: Kernel, pfn: int) -> int:
    p = k.pgdat.pages
    return int(p.refcount[p.head[pfn]])


def mapcount(k: Kernel, pfn: int) -> int:
    return int(k.pgdat.pages.mapcount[pfn])


def thp(k: Kernel, write: bool = True):
    p = k.spawn()
    a = p.mmap(HPAGE_PMD_SIZE)
    assert a % HPAGE_PMD_SIZE == 0
    p.madvise(a, HPAGE_PMD_SIZE, MADV_HUGEPAGE)
    assert p.touch(a, HPAGE_PMD_SIZE, write=write) == HPAGE_PMD_SIZE
    return p, a, pte(p, a)[0]


# === anonymous faults ========================================================================
@pytest.mark.parametrize("npages", [1, 5])
def test_read_fault_maps_the_zero_page(k, snapshot, npages):
    before = snapshot(k)
    p = k.spawn()
    a = p.mmap(npages * P)
    faults = k.vmstat.pgfault
    assert p.read_user(a + 100, npages * P - 100) == bytes(npages * P - 100)
    assert k.vmstat.pgfault == faults + npages
    for i in range(npages):
        pfn, fl = pte(p, a + i * P)
        assert pfn == ZERO_PFN
        assert fl & (PTE_PRESENT | PTE_SPECIAL) == PTE_PRESENT | PTE_SPECIAL
        assert not fl & PTE_RW
    assert ref(k, ZERO_PFN) == 1 and mapcount(k, ZERO_PFN) == 0
    assert k.pgdat.nr_free() == before.nr_free
    p.exit()
    before.assert_restored(k)


def test_write_fault_allocates_an_exclusive_zeroed_page(k, snapshot):
    before = snapshot(k)
    p = k.spawn()
    a = p.mmap(2 * P)
    assert p.write_user(a + P + 7, b"abc") == 3
    pfn, fl = pte(p, a + P)
    assert pte(p, a) == (-1, 0)  # the neighbour was not touched
    pages = k.pgdat.pages
    assert (ref(k, pfn), mapcount(k, pfn)) == (1, 1)
    for flag in (PG.PG_anon, PG.PG_anon_exclusive, PG.PG_swapbacked, PG.PG_uptodate):
        assert pages.test(pfn, flag)
    assert not pages.test(pfn, PG.PG_dirty)  # an anon page's dirt lives in its PTE
    assert int(pages.mapping[pfn]) == p.mm.anon_id
    assert int(pages.index[pfn]) == (a + P) >> PAGE_SHIFT
    assert fl & (PTE_PRESENT | PTE_RW | PTE_DIRTY) == PTE_PRESENT | PTE_RW | PTE_DIRTY
    assert k.pgdat.nr_free() == before.nr_free - 1
    assert p.read_user(a + P, P) == bytes(7) + b"abc" + bytes(P - 10)
    p.exit()
    before.assert_restored(k)


def test_reused_frames_are_zeroed(k):
    """A frame freed with data in it comes back zero-filled to the next anonymous fault."""
    p = k.spawn()
    n = 64
    a = p.mmap(n * P)
    p.write_user(a, b"\xff" * (n * P))
    old = set(pfns(p, a, n).tolist())
    p.munmap(a, n * P)
    b = p.mmap(n * P)
    p.write_user(b + 1, b"\x01")  # one page through the fault path
    p.touch(b + P, (n - 1) * P, write=True)  # the rest in bulk
    assert old & set(pfns(p, b, n).tolist())  # the allocator did hand the frames back
    assert p.read_user(b, n * P) == b"\x00\x01" + bytes(n * P - 2)


def test_reused_frames_are_zeroed_for_thp_and_cow_of_the_zero_page(k):
    p, a, head = thp(k)
    p.write_user(a, b"\xee" * HPAGE_PMD_SIZE)
    p.munmap(a, HPAGE_PMD_SIZE)
    q, b, head2 = thp(k)
    assert head2 == head
    assert q.read_user(b, HPAGE_PMD_SIZE) == bytes(HPAGE_PMD_SIZE)
    q.write_user(b, b"\xdd" * P)
    q.munmap(b, HPAGE_PMD_SIZE)
    r = k.spawn()
    c = r.mmap(P)
    r.read_user(c, 1)  # zero page first, then a write COWs it into a fresh frame
    r.write_user(c + 5, b"!")
    assert r.read_user(c, P) == bytes(5) + b"!" + bytes(P - 6)


def test_write_after_read_replaces_the_zero_page(k, snapshot):
    before = snapshot(k)
    p = k.spawn()
    a = p.mmap(P)
    p.read_user(a, 1)
    assert pte(p, a)[0] == ZERO_PFN
    p.write_user(a, b"x")
    pfn, fl = pte(p, a)
    assert pfn != ZERO_PFN and fl & PTE_RW
    assert (ref(k, pfn), mapcount(k, pfn)) == (1, 1)
    assert ref(k, ZERO_PFN) == 1
    p.exit()
    before.assert_restored(k)


# === do_wp_page: reuse or copy ===============================================================
def _cow_shared(k):
    p = k.spawn()
    a = p.mmap(P)
    p.write_user(a, b"original")
    return p, a, k.fork(p)


def case_sharer_alive(k):
    p, a, child = _cow_shared(k)
    return p, a, [child]


def case_sharer_exited(k):
    p, a, child = _cow_shared(k)
    child.exit()
    return p, a, []


def case_sharer_exited_then_gup_ref(k):
    p, a, child = _cow_shared(k)
    child.exit()
    pages = np.full(1, -1, np.int64)
    assert get_user_pages_fast(p.mm, a, 1, 0, pages) == 1
    return p, a, []


def case_gup_ref_then_mprotect(k):
    p = k.spawn()
    a = p.mmap(P)
    p.write_user(a, b"original")
    pages = np.full(1, -1, np.int64)
    assert get_user_pages_fast(p.mm, a, 1, W, pages) == 1
    p.mprotect(a, P, PROT_READ)
    p.mprotect(a, P, PROT_READ | PROT_WRITE)
    return p, a, []


def case_pin_then_mprotect(k):
    p = k.spawn()
    a = p.mmap(P)
    p.write_user(a, b"original")
    pages = np.full(1, -1, np.int64)
    assert pin_user_pages_fast(p.mm, a, 1, W, pages) == 1
    p.mprotect(a, P, PROT_READ)
    p.mprotect(a, P, PROT_READ | PROT_WRITE)
    return p, a, []


# (setup, outcome in 5.9 / 5.9-pin, outcome in 6.18)
WP_CASES = [
    (case_sharer_alive, "copy", "copy"),
    (case_sharer_exited, "reuse", "reuse"),
    (case_sharer_exited_then_gup_ref, "copy", "copy"),
    # 5.9: refcount != 1 -> copy, and the GUP reference is left on the old page.
    # 6.18: the page is still PageAnonExclusive -> reused.
    (case_gup_ref_then_mprotect, "copy", "reuse"),
    (case_pin_then_mprotect, "copy", "reuse"),
]


@pytest.mark.parametrize(
    ("setup", "r59", "r618"), WP_CASES, ids=lambda c: getattr(c, "__name__", c)
)
def test_do_wp_page_reuse_or_copy(k, setup, r59, r618):
    p, a, others = setup(k)
    old = pte(p, a)[0]
    ref_before, map_before = ref(k, old), mapcount(k, old)
    assert p.write_user(a + 1, b"W") == 1
    new, fl = pte(p, a)
    assert fl & PTE_RW
    outcome = r618 if k.cfg.ANON_EXCLUSIVE else r59
    if outcome == "reuse":
        assert new == old
        assert (ref(k, old), mapcount(k, old)) == (ref_before, map_before)
    else:
        assert new != old
        assert (ref(k, new), mapcount(k, new)) == (1, 1)
        assert (ref(k, old), mapcount(k, old)) == (ref_before - 1, map_before - 1)
        assert k.pgdat.mem.frame(old)[:8].tobytes() == b"original"
    assert k.pgdat.pages.test(new, PG.PG_anon_exclusive)
    assert p.read_user(a, 8) == b"oWiginal"
    for other in others:
        assert other.read_user(a, 8) == b"original"


# === THP =====================================================================================
def test_write_fault_in_hugepage_region_maps_one_order_9_folio(k, snapshot):
    before = snapshot(k)
    faults = k.vmstat.pgfault
    p, a, head = thp(k)
    pages = k.pgdat.pages
    assert pages.folio_order(head) == 9 and head % HPAGE_PMD_NR == 0
    assert (ref(k, head), int(pages.entire_mapcount[head])) == (1, 1)
    assert (pages.mapcount[head : head + HPAGE_PMD_NR] == 0).all()
    assert pfns(p, a, HPAGE_PMD_NR).tolist() == list(range(head, head + HPAGE_PMD_NR))
    vma = p.mm.vma_lookup(a)
    assert ((vma.pt_flags & (PTE_PMD | PTE_RW)) == (PTE_PMD | PTE_RW)).all()
    assert all(pages.test(head + i, PG.PG_anon_exclusive) for i in (0, 1, 511))
    assert k.vmstat.thp_fault_alloc == 1
    assert k.vmstat.pgfault == faults + 1
    assert k.pgdat.nr_free() == before.nr_free - HPAGE_PMD_NR
    p.exit()
    before.assert_restored(k)


def test_hugepage_region_only_where_an_aligned_2m_fits(k):
    """A 3 MiB VM_HUGEPAGE mapping gets a THP only for the 2 MiB-aligned part inside it."""
    p = k.spawn()
    a = p.mmap(3 << 20)
    p.madvise(a, 3 << 20, MADV_HUGEPAGE)
    p.touch(a, 3 << 20, write=True)
    base = (a + HPAGE_PMD_SIZE - 1) & ~(HPAGE_PMD_SIZE - 1)
    orders = [k.pgdat.pages.folio_order(int(x)) for x in pfns(p, a, 768)]
    lo = (base - a) >> PAGE_SHIFT
    assert base + HPAGE_PMD_SIZE <= a + (3 << 20)
    assert orders == [0] * lo + [9] * HPAGE_PMD_NR + [0] * (768 - lo - HPAGE_PMD_NR)
    assert k.vmstat.thp_fault_alloc == 1


def test_no_thp_without_madvise_or_once_a_slot_is_populated(k):
    p = k.spawn()
    a = p.mmap(HPAGE_PMD_SIZE)
    p.touch(a, HPAGE_PMD_SIZE, write=True)  # THP is "madvise" on the host: no VM_HUGEPAGE
    b = p.mmap(HPAGE_PMD_SIZE)
    p.write_user(b + 5 * P, b"x")
    p.madvise(b, HPAGE_PMD_SIZE, MADV_HUGEPAGE)
    p.touch(b, HPAGE_PMD_SIZE, write=True)
    for base in (a, b):
        assert {k.pgdat.pages.folio_order(int(x)) for x in pfns(p, base, HPAGE_PMD_NR)} == {0}
    assert k.vmstat.thp_fault_alloc == 0


def test_read_fault_in_hugepage_region_maps_the_huge_zero_folio(k, snapshot):
    before = snapshot(k)
    p, a, hz = thp(k, write=False)
    assert hz == k.pgdat.huge_zero_pfn and k.pgdat.pages.folio_order(hz) == 9
    assert pfns(p, a, HPAGE_PMD_NR).tolist() == list(range(hz, hz + HPAGE_PMD_NR))
    vma = p.mm.vma_lookup(a)
    want = PTE_PMD | PTE_SPECIAL | PTE_PRESENT
    assert ((vma.pt_flags & (want | PTE_RW)) == want).all()
    assert ref(k, hz) == 1 and int(k.pgdat.pages.entire_mapcount[hz]) == 0
    assert k.pgdat.nr_free() == before.nr_free - HPAGE_PMD_NR  # allocated on first use
    q, _b, hz2 = thp(k, write=False)
    assert hz2 == hz
    assert k.pgdat.nr_free() == before.nr_free - HPAGE_PMD_NR  # and only once
    p.exit()
    q.exit()
    assert ref(k, hz) == 1
    assert k.vmstat.thp_fault_alloc == 0


def test_write_after_huge_zero_read_5_9():
    """[5.9] do_huge_pmd_wp_page() on the huge zero PMD falls back: split into zero-page PTEs
    and COW the one base page written."""
    for profile in ("5.9", "5.9-pin"):
        k = Kernel("32M", profile)
        p, a, hz = thp(k, write=False)
        p.write_user(a + 3 * P, b"w")
        row = pfns(p, a, HPAGE_PMD_NR)
        assert row[3] not in (ZERO_PFN, hz + 3)
        assert k.pgdat.pages.folio_order(int(row[3])) == 0
        assert (np.delete(row, 3) == ZERO_PFN).all()
        assert not (p.mm.vma_lookup(a).pt_flags & PTE_PMD).any()
        assert k.vmstat.thp_fault_alloc == 0


def test_write_after_huge_zero_read_allocates_a_thp_6_18():
    k = Kernel("32M", "6.18")
    p, a, hz = thp(k, write=False)
    p.write_user(a + 3 * P, b"w")
    head = pte(p, a)[0]
    assert head != hz and k.pgdat.pages.folio_order(head) == 9
    assert k.vmstat.thp_fault_alloc == 1


# (first page, number of pages) unmapped from a PMD-mapped THP
PARTIAL = [(0, 1), (511, 1), (100, 3), (0, 256), (256, 256), (1, 510)]


@pytest.mark.parametrize(("first", "count"), PARTIAL)
@pytest.mark.parametrize("how", ["munmap", "dontneed"])
def test_partial_unmap_of_thp_splits_the_pmd(k, snapshot, first, count, how):
    before = snapshot(k)
    p, a, head = thp(k)
    free_with_thp = k.pgdat.nr_free()
    if how == "munmap":
        p.munmap(a + first * P, count * P)
    else:
        p.madvise(a + first * P, count * P, MADV_DONTNEED)
    pages = k.pgdat.pages
    gone = np.zeros(HPAGE_PMD_NR, bool)
    gone[first : first + count] = True
    assert ref(k, head) == HPAGE_PMD_NR - count  # 512 PTE refs after the split, minus zapped
    assert int(pages.entire_mapcount[head]) == 0
    assert (pages.mapcount[head : head + HPAGE_PMD_NR] == np.where(gone, 0, 1)).all()
    assert pages.folio_order(head) == 9  # the folio itself is not split (deferred)
    assert k.pgdat.nr_free() == free_with_thp
    for vma in p.mm.vmas:
        assert not (vma.pt_flags & PTE_PMD).any()
    kept = [i for i in range(HPAGE_PMD_NR) if not gone[i]]
    for i in (kept[0], kept[-1]):
        assert pte(p, a + i * P)[0] == head + i
    p.exit()
    before.assert_restored(k)


def test_mprotect_of_part_of_a_thp_splits_the_pmd(k, snapshot):
    p, a, head = thp(k)
    p.mprotect(a + P, P, PROT_READ)
    assert ref(k, head) == HPAGE_PMD_NR
    assert (k.pgdat.pages.mapcount[head : head + HPAGE_PMD_NR] == 1).all()
    assert [len(p.mm.vmas), pte(p, a + P)[0]] == [3, head + 1]
    assert not pte(p, a + P)[1] & PTE_RW
    assert pte(p, a + 2 * P)[1] & PTE_RW


def test_huge_zero_partial_munmap_leaves_zero_page_ptes(k):
    p, a, hz = thp(k, write=False)
    p.munmap(a, P)
    assert pfns(p, a + P, HPAGE_PMD_NR - 1).tolist() == [ZERO_PFN] * (HPAGE_PMD_NR - 1)
    assert ref(k, hz) == 1 and ref(k, ZERO_PFN) == 1
    assert p.read_user(a + P, 4) == bytes(4)


def test_split_of_a_pinned_thp_keeps_the_pins(k, snapshot):
    before = snapshot(k)
    p, a, head = thp(k)
    pages = np.full(3, -1, np.int64)
    assert pin_user_pages_fast(p.mm, a + 10 * P, 3, W, pages) == 3
    assert (ref(k, head), int(k.pgdat.pages.pincount[head])) == (4, 3)
    p.munmap(a, P)
    assert (ref(k, head), int(k.pgdat.pages.pincount[head])) == (511 + 3, 3)
    p.exit()
    assert (ref(k, head), int(k.pgdat.pages.pincount[head])) == (3, 3)
    assert k.pgdat.pages.folio_order(head) == 9
    unpin_user_pages(k.pgdat, pages, 3)
    before.assert_restored(k)


# === zapping a pinned page ===================================================================
@pytest.mark.parametrize("how", ["dontneed", "munmap", "exit"])
def test_pin_keeps_a_zapped_page_until_unpin(k, snapshot, how):
    before = snapshot(k)
    p = k.spawn()
    a = p.mmap(2 * P)
    p.write_user(a, b"dma target")
    pages = np.full(1, -1, np.int64)
    assert pin_user_pages_fast(p.mm, a, 1, W, pages) == 1
    pg = int(pages[0])
    free_pinned = k.pgdat.nr_free()
    if how == "dontneed":
        p.madvise(a, 2 * P, MADV_DONTNEED)
        assert pte(p, a) == (-1, 0)
    elif how == "munmap":
        p.munmap(a, 2 * P)
    else:
        p.exit()
    assert (ref(k, pg), mapcount(k, pg)) == (BIAS, 0)
    assert k.pgdat.nr_free() == free_pinned
    assert k.pgdat.mem.frame(pg)[:10].tobytes() == b"dma target"
    assert k.events.events == []
    if how == "dontneed":  # the address is backed by a fresh zero page on the next read
        assert p.read_user(a, 10) == bytes(10)
    calls = []
    k.pgdat.hooks.tracepoints.append(lambda name, fields: calls.append(fields["pfn"]))
    unpin_user_pages_dirty_lock(k.pgdat, pages, 1, True)
    assert calls == [pg]  # zapping an anon page did not mark it dirty
    assert k.pgdat.nr_free() == free_pinned + 1
    assert k.events.events == []
    p.exit()
    before.assert_restored(k)


def test_pinned_thp_survives_dontneed_of_the_whole_range(k, snapshot):
    before = snapshot(k)
    p, a, head = thp(k)
    pages = np.full(4, -1, np.int64)
    assert pin_user_pages_fast(p.mm, a + 508 * P, 4, W, pages) == 4
    p.madvise(a, HPAGE_PMD_SIZE, MADV_DONTNEED)
    assert (ref(k, head), int(k.pgdat.pages.pincount[head])) == (4, 4)
    assert int(k.pgdat.pages.entire_mapcount[head]) == 0
    free_pinned = k.pgdat.nr_free()
    unpin_user_pages(k.pgdat, pages, 3)
    assert k.pgdat.nr_free() == free_pinned
    unpin_user_pages(k.pgdat, pages[3:], 1)
    assert k.pgdat.nr_free() == free_pinned + HPAGE_PMD_NR
    p.exit()
    before.assert_restored(k)


def test_plain_gup_reference_also_keeps_a_zapped_page(k, snapshot):
    before = snapshot(k)
    p = k.spawn()
    a = p.mmap(P)
    p.touch(a, P, write=True)
    pages = np.full(1, -1, np.int64)
    assert get_user_pages_fast(p.mm, a, 1, W, pages) == 1
    p.munmap(a, P)
    assert (ref(k, int(pages[0])), mapcount(k, int(pages[0]))) == (1, 0)
    put_page(k.pgdat, int(pages[0]))
    p.exit()
    before.assert_restored(k)


# === do_huge_pmd_wp_page: reuse the THP or split and COW one page ============================
def _thp_after_fork(k, child_alive: bool, gup_ref: bool):
    p, a, head = thp(k)
    p.write_user(a, b"T" * HPAGE_PMD_SIZE)
    c = k.fork(p)
    if not child_alive:
        c.exit()
    if gup_ref:
        pages = np.full(1, -1, np.int64)
        assert get_user_pages_fast(p.mm, a + 9 * P, 1, 0, pages) == 1
    return p, a, head, c


# (child alive, extra FOLL_GET ref, outcome in 5.9 / 5.9-pin, outcome in 6.18)
PMD_WP = [
    (False, False, "reuse", "reuse"),
    # 5.9: reuse_swap_page() looks at mapcounts only; 6.18: refcount 2, not exclusive.
    (False, True, "reuse", "split"),
    (True, False, "split", "split"),
]


@pytest.mark.parametrize(("child_alive", "gup_ref", "r59", "r618"), PMD_WP)
def test_write_to_a_read_only_pmd(k, child_alive, gup_ref, r59, r618):
    p, a, head, c = _thp_after_fork(k, child_alive, gup_ref)
    pages = k.pgdat.pages
    refs = int(pages.refcount[head])
    assert refs == 1 + child_alive + gup_ref
    assert not pte(p, a + 3 * P)[1] & PTE_RW
    free, faults = k.pgdat.nr_free(), k.vmstat.pgfault
    p.write_user(a + 3 * P, b"w")
    vma = p.mm.vma_lookup(a)
    outcome = r618 if k.cfg.ANON_EXCLUSIVE else r59
    if outcome == "reuse":
        assert k.vmstat.pgfault == faults + 1 and k.pgdat.nr_free() == free
        assert vma.pt_pfn.tolist() == list(range(head, head + HPAGE_PMD_NR))
        assert ((vma.pt_flags & (PTE_PMD | PTE_RW)) == (PTE_PMD | PTE_RW)).all()
        assert int(pages.refcount[head]) == refs
        assert int(pages.entire_mapcount[head]) == 1
        assert pages.test(head, PG.PG_anon_exclusive)
    else:
        assert k.pgdat.nr_free() == free - 1
        assert not (vma.pt_flags & PTE_PMD).any()
        assert pages.folio_order(int(vma.pt_pfn[3])) == 0
        # 511 PTE references replace the parent's PMD reference; one page was COWed.
        assert int(pages.refcount[head]) == refs + (HPAGE_PMD_NR - 1) - 1
        assert int(pages.entire_mapcount[head]) == int(child_alive)
        assert int(pages.mapcount[head + 3]) == 0 and int(pages.mapcount[head + 4]) == 1
    assert p.read_user(a + 2 * P, P + 2) == b"T" * P + b"wT"
    if child_alive:
        assert c.read_user(a + 3 * P, 1) == b"T"

"""mm/page_alloc.py (and the freeing side of mm/page_ref.py): the buddy allocator.

Boot state, alloc/free of every order, buddy merging back to the boot free lists, bulk
allocation, exhaustion (NULL = -1), and freeing a page that is still mapped, pinned or
reserved (refused, with a BUG event, as ``bad_page()`` does).
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dioscope.kernel.types import HPAGE_PMD_SIZE, MAX_PAGE_ORDER, PAGE_SIZE
from dioscope.machine import Kernel
from dioscope.mm.gup_core import FOLL, try_grab_pages
from dioscope.mm.page import GUP_PIN_COUNTING_BIAS, PG
from dioscope.mm.page_alloc import (
    ZERO_PFN,
    alloc_pages,
    alloc_pages_bulk,
    free_pages,
    free_pages_bulk,
    free_pages_check,
)
from dioscope.mm.page_ref import folio_put_refs, page_count, put_page, put_pages

RESERVED = 512  # frames 0..511: kernel memory, frame 0 the zero page


def free_blocks(k: Kernel) -> list[tuple[int, int]]:
    """The (pfn, order) blocks on the free lists, ignoring stale list entries."""
    pg = k.pgdat
    out = {
        (pfn, order)
        for order, area in enumerate(pg.free_area)
        for pfn in area
        if pg.buddy_order[pfn] == order
    }
    return sorted(out)


def free_frames(k: Kernel) -> int:
    return sum(1 << order for _, order in free_blocks(k))


def boot_free(k: Kernel) -> int:
    return k.pgdat.nr_free()


@pytest.mark.parametrize(("mem", "nr_pages"), [("4M", 1024), ("6M", 1536), ("32M", 8192)])
def test_boot_state(mem, nr_pages):
    k = Kernel(mem)
    p = k.pgdat.pages
    assert k.pgdat.nr_pages == nr_pages
    assert (p.refcount[:RESERVED] == 1).all()
    assert all(p.test(pfn, PG.PG_reserved) for pfn in range(RESERVED))
    assert p.test(ZERO_PFN, PG.PG_uptodate)
    blocks = free_blocks(k)
    assert k.pgdat.nr_free() == free_frames(k)
    # The free blocks are naturally aligned, disjoint, above the reserved frames, and hold
    # every frame that is neither reserved nor in use.
    covered = np.zeros(nr_pages, np.int32)
    for pfn, order in blocks:
        assert pfn % (1 << order) == 0
        covered[pfn : pfn + (1 << order)] += 1
        assert all(p.test(pfn, PG.PG_buddy) for pfn, _ in blocks)
    assert covered.max() == 1 and covered[:RESERVED].sum() == 0
    in_use = (p.refcount != 0) | (covered == 1)
    assert in_use.all()
    assert (p.refcount[covered == 1] == 0).all()
    # At most the top frame (a NULL-pfn sentinel) is held back besides the first 512.
    assert nr_pages - RESERVED - 1 <= k.pgdat.nr_free() <= nr_pages - RESERVED
    assert (MAX_PAGE_ORDER in {o for _, o in blocks}) is (nr_pages >= 3 * 1024)


def test_too_little_memory_is_refused():
    with pytest.raises(ValueError, match="too small"):
        Kernel("2M")


@pytest.mark.parametrize("order", range(MAX_PAGE_ORDER + 1))
def test_alloc_and_free_every_order(order):
    k = Kernel("32M")
    boot, n0 = free_blocks(k), boot_free(k)
    n = 1 << order
    pfn = alloc_pages(k.pgdat, order)
    p = k.pgdat.pages
    assert pfn >= RESERVED and pfn % n == 0
    assert k.pgdat.nr_free() == n0 - n
    assert int(p.refcount[pfn]) == 1
    assert (p.refcount[pfn + 1 : pfn + n] == 0).all()
    assert (p.order[pfn : pfn + n] == order).all()
    assert (p.head[pfn : pfn + n] == pfn).all()
    assert p.test(pfn, PG.PG_head) is bool(order)
    assert all(p.test(t, PG.PG_tail) for t in range(pfn + 1, pfn + n))
    assert not any(p.test(t, PG.PG_buddy) for t in range(pfn, pfn + n))
    assert page_count(k.pgdat, pfn + n - 1) == 1  # any subpage reads the head's count
    unit = 1 if order > 1 or (order == 1 and k.cfg.PINCOUNT_ANY_LARGE_FOLIO) else 1024
    assert (p.pin_unit[pfn : pfn + n] == unit).all()

    put_page(k.pgdat, pfn + n - 1)  # a put on a tail frees the folio
    assert k.pgdat.nr_free() == n0
    assert free_blocks(k) == boot  # merged all the way back
    assert (p.head[pfn : pfn + n] == np.arange(pfn, pfn + n)).all()
    assert k.events.events == []


def test_buddies_merge_only_when_both_are_free():
    k = Kernel("4M")
    boot, n0 = free_blocks(k), boot_free(k)
    pages = sorted(alloc_pages(k.pgdat, 0) for _ in range(n0))
    assert pages == sorted({pfn + i for pfn, o in boot for i in range(1 << o)})
    assert free_blocks(k) == [] and alloc_pages(k.pgdat, 0) == -1
    put_page(k.pgdat, 513)
    assert free_blocks(k) == [(513, 0)]  # its buddy 512 is still allocated
    put_page(k.pgdat, 514)
    assert free_blocks(k) == [(513, 0), (514, 0)]  # 513 and 514 are not buddies
    put_page(k.pgdat, 515)
    assert free_blocks(k) == [(513, 0), (514, 1)]
    put_page(k.pgdat, 512)
    assert free_blocks(k) == [(512, 2)]
    for pfn in pages[4:]:
        put_page(k.pgdat, pfn)
    assert free_blocks(k) == boot
    assert k.pgdat.nr_free() == n0


@pytest.mark.parametrize("order", [MAX_PAGE_ORDER + 1, 20, -1])
def test_alloc_of_a_bad_order_warns_and_returns_null(order):
    k = Kernel("4M")
    n0 = boot_free(k)
    assert alloc_pages(k.pgdat, order) == -1
    assert [e.site for e in k.events.of_kind("WARN")] == ["__alloc_pages"]
    assert k.pgdat.nr_free() == n0


def test_exhaustion_returns_null():
    k = Kernel("4M")
    boot, n0 = free_blocks(k), boot_free(k)
    everything = alloc_pages_bulk(k.pgdat, n0)
    assert len(everything) == n0
    assert k.pgdat.nr_free() == 0
    for order in (0, 1, 9):
        assert alloc_pages(k.pgdat, order) == -1
    assert len(alloc_pages_bulk(k.pgdat, 5)) == 0
    assert k.events.events == []  # running out is not a bug
    put_pages(k.pgdat, everything)
    assert free_blocks(k) == boot
    assert alloc_pages(k.pgdat, 10) == -1  # no order-10 block exists in 4 MiB


def test_exhaustion_with_fragmented_memory():
    k = Kernel("6M")
    n0 = boot_free(k)
    pages = sorted(alloc_pages(k.pgdat, 0) for _ in range(n0))
    assert alloc_pages(k.pgdat, 0) == -1
    evens = [pfn for pfn in pages if pfn % 2 == 0]
    for pfn in evens:
        put_page(k.pgdat, pfn)
    assert k.pgdat.nr_free() == len(evens)
    assert alloc_pages(k.pgdat, 1) == -1  # plenty of free frames, no two of them buddies
    got = alloc_pages(k.pgdat, 0)
    assert got in evens
    for pfn in pages:
        if pfn % 2:
            put_page(k.pgdat, pfn)
    assert k.pgdat.nr_free() == n0 - 1
    assert alloc_pages(k.pgdat, 1) >= 0


@pytest.mark.parametrize("n", [0, 1, 2, 3, 511, 512, 513, 1000])
def test_alloc_pages_bulk(n):
    k = Kernel("6M")
    boot, n0 = free_blocks(k), boot_free(k)
    pfns = alloc_pages_bulk(k.pgdat, n)
    p = k.pgdat.pages
    assert pfns.dtype == np.int64 and len(pfns) == n
    assert len(np.unique(pfns)) == n and (pfns >= RESERVED).all()
    assert (p.refcount[pfns] == 1).all()
    assert (p.order[pfns] == 0).all() and (p.head[pfns] == pfns).all()
    assert (p.flags[pfns] == 0).all()
    assert (p.pin_unit[pfns] == GUP_PIN_COUNTING_BIAS).all()
    assert k.pgdat.nr_free() == n0 - n == free_frames(k)
    put_pages(k.pgdat, pfns)
    assert free_blocks(k) == boot


def test_alloc_pages_bulk_after_fragmentation():
    k = Kernel("6M")
    boot, n0 = free_blocks(k), boot_free(k)
    singles = [alloc_pages(k.pgdat, 0) for _ in range(6)]
    for pfn in singles[::2]:
        put_page(k.pgdat, pfn)
    got = alloc_pages_bulk(k.pgdat, 5)
    assert len(got) == 5 and not set(got.tolist()) & set(singles[1::2])
    assert k.pgdat.nr_free() == n0 - 3 - 5
    put_pages(k.pgdat, got)
    for pfn in singles[1::2]:
        put_page(k.pgdat, pfn)
    assert free_blocks(k) == boot


def test_alloc_pages_bulk_stops_at_exhaustion():
    k = Kernel("6M")
    boot, n0 = free_blocks(k), boot_free(k)
    keep = alloc_pages(k.pgdat, 8)
    got = alloc_pages_bulk(k.pgdat, n0)
    assert len(got) == n0 - 256 and len(np.unique(got)) == n0 - 256
    assert not set(got.tolist()) & set(range(keep, keep + 256))
    assert k.pgdat.nr_free() == 0
    put_pages(k.pgdat, got)
    put_page(k.pgdat, keep)
    assert free_blocks(k) == boot


# --- freeing what must not be freed ---------------------------------------------------------
def test_dropping_the_last_ref_of_a_mapped_page_is_a_bug():
    k = Kernel("32M")
    proc = k.spawn()
    a = proc.mmap(PAGE_SIZE)
    proc.write_user(a, b"x")
    pfn = int(proc.mm.vma_lookup(a).pt_pfn[0])
    free_before = k.pgdat.nr_free()
    put_page(k.pgdat, pfn)  # the PTE's reference, dropped by someone else
    bugs = k.events.of_kind("BUG")
    assert len(bugs) == 1 and bugs[0].site == "bad_page"
    assert "nonzero mapcount" in bugs[0].message
    assert k.pgdat.nr_free() == free_before  # leaked, not freed
    assert k.pgdat.buddy_order[pfn] == -1
    assert proc.read_user(a, 1) == b"x"  # the frame was not reused


@pytest.mark.parametrize("order", [2, 9])
def test_freeing_a_pinned_large_folio_is_a_bug(order):
    k = Kernel("32M")
    h = alloc_pages(k.pgdat, order)
    assert try_grab_pages(k.pgdat, np.array([h + 1]), FOLL.FOLL_PIN, None, "test") == 1
    assert (int(k.pgdat.pages.refcount[h]), int(k.pgdat.pages.pincount[h])) == (2, 1)
    free_before = k.pgdat.nr_free()
    folio_put_refs(k.pgdat, h, 2)  # a buggy caller drops the pin's reference as a plain ref
    assert [e.kind for e in k.events.events] == ["BUG"]
    assert "nonzero pincount 1" in k.events.events[0].message
    assert k.pgdat.nr_free() == free_before


def test_putting_the_zero_page_is_a_bug():
    k = Kernel("32M")
    assert free_pages_check(k.pgdat, ZERO_PFN) == "freeing a reserved page"
    put_page(k.pgdat, ZERO_PFN)
    assert [e.kind for e in k.events.events] == ["BUG"]
    assert "reserved" in k.events.events[0].message
    assert int(k.pgdat.pages.refcount[ZERO_PFN]) == 0


def test_free_pages_check_of_a_clean_page():
    k = Kernel("32M")
    n0 = boot_free(k)
    pfn = alloc_pages(k.pgdat, 0)
    assert free_pages_check(k.pgdat, pfn) == "nonzero refcount 1"
    k.pgdat.pages.refcount[pfn] = 0
    assert free_pages_check(k.pgdat, pfn) is None
    assert free_pages(k.pgdat, pfn)
    assert k.pgdat.nr_free() == n0


def test_free_hook_reports_every_frame_of_the_folio():
    k = Kernel("32M")
    seen: list[tuple[list[int], int, str]] = []

    class Observer:
        def on_acquire(self, kind: str, pfns: np.ndarray, holder: object, site: str) -> None:
            pass

        def on_release(self, kind: str, pfns: np.ndarray, holder: object, site: str) -> None:
            pass

        def on_free(self, pfns: np.ndarray, order: int, site: str) -> None:
            seen.append((pfns.tolist(), order, site))

    k.pgdat.hooks.subscribe(Observer())
    h = alloc_pages(k.pgdat, 2)
    put_page(k.pgdat, h + 3)
    assert seen == [([h, h + 1, h + 2, h + 3], 2, "put_page")]


def test_thp_sized_mapping_frees_its_folio_on_munmap():
    k = Kernel("32M")
    n0 = boot_free(k)
    proc = k.spawn()
    a = proc.mmap(HPAGE_PMD_SIZE)
    proc.madvise(a, HPAGE_PMD_SIZE, 14)  # MADV_HUGEPAGE
    proc.touch(a, HPAGE_PMD_SIZE, write=True)
    assert k.pgdat.nr_free() == n0 - 512
    proc.munmap(a, HPAGE_PMD_SIZE)
    assert k.pgdat.nr_free() == n0
    assert k.events.events == []


def _state(k: Kernel) -> tuple:
    p = k.pgdat.pages
    return (free_blocks(k), k.pgdat.nr_free(), p.flags.tobytes(), p.head.tobytes(),
            p.small.tobytes(), p.pin_unit.tobytes())


@settings(max_examples=60, deadline=None)
@given(keep=st.lists(st.booleans(), min_size=300, max_size=300),
       order=st.permutations(range(300)))
def test_free_pages_bulk_reaches_the_state_one_by_one_frees_reach(keep, order):
    """Free a random subset of 300 order-0 pages (the rest stay allocated, so buddies are
    sometimes free, sometimes in the batch, sometimes busy): in one batch on one machine, one
    by one in a random order on another. Free blocks, counts and page state must be equal."""
    machines = [Kernel("8M"), Kernel("8M")]
    batches = []
    for k in machines:
        pfns = alloc_pages_bulk(k.pgdat, 300)
        k.pgdat.pages.refcount[pfns] = 0
        batches.append(pfns)
    assert (batches[0] == batches[1]).all()
    chosen = batches[0][np.array(keep)]
    free_pages_bulk(machines[0].pgdat, np.sort(chosen))
    for i in order:
        if keep[i]:
            free_pages(machines[1].pgdat, int(batches[1][i]))
    assert _state(machines[0]) == _state(machines[1])
    if len(chosen) == 300:
        assert machines[0].pgdat.nr_free() == boot_free(Kernel("8M"))


def test_free_pages_bulk_leaks_a_bad_page_and_frees_the_rest():
    k = Kernel("32M")
    pfns = alloc_pages_bulk(k.pgdat, 4)
    k.pgdat.pages.refcount[pfns] = 0
    k.pgdat.pages.pincount[pfns[1]] = 1  # a pinned page: bad_page()
    before = k.pgdat.nr_free()
    free_pages_bulk(k.pgdat, pfns)
    bugs = k.events.of_kind("BUG")
    assert [b.site for b in bugs] == ["bad_page"] and "nonzero pincount 1" in bugs[0].message
    assert k.pgdat.nr_free() == before + 3
    assert k.pgdat.buddy_order[pfns[1]] == -1


def test_free_pages_bulk_with_hooks_reports_each_folio():
    k = Kernel("32M")
    seen: list[tuple[list[int], int, str]] = []

    class Obs:
        def on_free(self, pfns, order, site):
            seen.append((pfns.tolist(), order, site))

    pfns = alloc_pages_bulk(k.pgdat, 3)
    k.pgdat.pages.refcount[pfns] = 0
    k.pgdat.hooks.subscribe(Obs())
    free_pages_bulk(k.pgdat, pfns, "test")
    assert seen == [([int(x)], 0, "test") for x in pfns]

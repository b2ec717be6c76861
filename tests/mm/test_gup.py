"""mm/gup.py and mm/gup_core.py: pin accounting and GUP argument handling.

Spec §2 and §11 items 1-10, each for every profile it applies to, with exact refcount,
pincount, ``nr_foll_pin_acquired`` / ``_released``, return values and WARN events. Every case
that pins also unpins and proves, with the ``snapshot`` fixture, that nothing leaked.
"""

from __future__ import annotations

import errno

import numpy as np
import pytest

from dioscope.kernel.config import PROFILES
from dioscope.kernel.types import HPAGE_PMD_NR, HPAGE_PMD_SIZE, PAGE_SIZE, TASK_SIZE
from dioscope.machine import Kernel
from dioscope.mm.gup import (
    get_user_pages_fast,
    pin_page,
    pin_user_pages,
    pin_user_pages_fast,
    unpin_user_page,
    unpin_user_pages,
    unpin_user_pages_dirty_lock,
)
from dioscope.mm.gup_core import FOLL, gup_put_pages, page_maybe_dma_pinned, try_grab_pages
from dioscope.mm.mmap import (
    MADV_HUGEPAGE,
    MAP_ANONYMOUS,
    MAP_FIXED,
    MAP_PRIVATE,
    PROT_NONE,
    PROT_READ,
    PROT_WRITE,
)
from dioscope.mm.page import GUP_PIN_COUNTING_BIAS, PG
from dioscope.mm.page_alloc import ZERO_PFN, alloc_pages
from dioscope.mm.page_ref import get_page, put_page

BIAS = GUP_PIN_COUNTING_BIAS
W = FOLL.FOLL_WRITE
P = PAGE_SIZE
U64 = (1 << 64) - 1


# --- helpers --------------------------------------------------------------------------------
def pfns(p, addr: int, n: int) -> np.ndarray:
    """The pfns the page table maps at ``n`` pages from ``addr`` (-1 = none)."""
    if n == 0:
        return np.empty(0, np.int64)
    vma = p.mm.vma_lookup(addr)
    s = vma.slot(addr)
    return vma.pt_pfn[s : s + n].copy()


def buf(n: int) -> np.ndarray:
    """A fresh ``struct page *pages[n]`` (all NULL)."""
    return np.full(n, -1, np.int64)


def ref(k: Kernel, pfn: int) -> int:
    """``page_count()``: the refcount of the page's folio."""
    p = k.pgdat.pages
    return int(p.refcount[p.head[pfn]])


def pincount(k: Kernel, pfn: int) -> int:
    p = k.pgdat.pages
    return int(p.pincount[p.head[pfn]])


def anon(k: Kernel, npages: int, touch: bool = True):
    """A process with ``npages`` of private anonymous memory, write-faulted if ``touch``."""
    p = k.spawn()
    a = p.mmap(npages * P)
    if touch:
        assert p.touch(a, npages * P, write=True) == npages * P
    return p, a


def thp(k: Kernel):
    """A process with one write-faulted, PMD-mapped 2 MiB THP. Return (proc, addr, head)."""
    p = k.spawn()
    a = p.mmap(HPAGE_PMD_SIZE)
    p.madvise(a, HPAGE_PMD_SIZE, MADV_HUGEPAGE)
    assert p.touch(a, HPAGE_PMD_SIZE, write=True) == HPAGE_PMD_SIZE
    head = int(pfns(p, a, 1)[0])
    pages = k.pgdat.pages
    assert pages.folio_order(head) == 9 and ref(k, head) == 1
    assert (pfns(p, a, HPAGE_PMD_NR) == np.arange(head, head + HPAGE_PMD_NR)).all()
    return p, a, head


def warns(k: Kernel) -> list[str]:
    return [e.site for e in k.events.of_kind("WARN")]


def zero_pin_unit(k: Kernel) -> int:
    """What one pin adds to the zero page's refcount under this profile."""
    return 0 if k.cfg.ZERO_PAGE_NEVER_PINNED else BIAS


# === §11.1: an order-0 pin is +1024 refcount and +1 acquired ================================
@pytest.mark.parametrize("nr", [1, 2, 17])
def test_pin_small_pages_adds_bias_and_counts_one_per_page(k, snapshot, nr):
    p, a = anon(k, nr)
    before = snapshot(k)
    pf = pfns(p, a, nr)
    assert [ref(k, x) for x in pf] == [1] * nr
    pages = buf(nr)

    assert pin_user_pages_fast(p.mm, a, nr, W, pages) == nr
    assert pages.tolist() == pf.tolist()
    assert [ref(k, x) for x in pf] == [1 + BIAS] * nr
    assert [pincount(k, x) for x in pf] == [0] * nr
    assert k.vmstat.pins() == (before.acquired + nr, before.released)
    assert all(page_maybe_dma_pinned(k.pgdat, x) for x in pf.tolist())
    assert p.mm.has_pinned

    unpin_user_pages(k.pgdat, pages, nr)
    assert [ref(k, x) for x in pf] == [1] * nr
    assert k.vmstat.pins() == (before.acquired + nr, before.released + nr)
    assert not any(page_maybe_dma_pinned(k.pgdat, x) for x in pf.tolist())
    before.assert_restored(k)
    assert k.events.events == []


def test_two_pins_of_one_page_stack_and_unpin_symmetrically(k, snapshot):
    p, a = anon(k, 1)
    before = snapshot(k)
    pg = int(pfns(p, a, 1)[0])
    first, second = buf(1), buf(1)
    assert pin_user_pages_fast(p.mm, a, 1, W, first) == 1
    assert pin_user_pages_fast(p.mm, a, 1, 0, second) == 1
    assert ref(k, pg) == 1 + 2 * BIAS
    unpin_user_page(k.pgdat, int(first[0]))
    assert ref(k, pg) == 1 + BIAS
    assert page_maybe_dma_pinned(k.pgdat, pg)
    unpin_user_page(k.pgdat, int(second[0]))
    assert ref(k, pg) == 1
    assert not page_maybe_dma_pinned(k.pgdat, pg)
    assert k.vmstat.pins() == (before.acquired + 2, before.released + 2)
    before.assert_restored(k)


def test_foll_get_takes_one_ref_and_is_not_counted(k, snapshot):
    p, a = anon(k, 3)
    before = snapshot(k)
    pages = buf(3)
    assert get_user_pages_fast(p.mm, a, 3, W, pages) == 3
    assert [ref(k, x) for x in pages] == [2, 2, 2]
    assert k.vmstat.pins() == (before.acquired, before.released)
    assert not any(page_maybe_dma_pinned(k.pgdat, int(x)) for x in pages)
    assert not p.mm.has_pinned  # only FOLL_PIN sets mm->has_pinned
    for x in pages.tolist():
        put_page(k.pgdat, x)
    before.assert_restored(k)


# === §11.2: maybe_dma_pinned is fuzzy on small pages, exact on large folios ================
@pytest.mark.parametrize(
    ("extra_refs", "expected"),
    [(0, False), (1022, False), (1023, True), (1024, True), (3000, True)],
)
def test_small_page_with_plain_refs_reads_pinned_from_1024(k, extra_refs, expected):
    p, a = anon(k, 1)
    pg = int(pfns(p, a, 1)[0])
    for _ in range(extra_refs):
        get_page(k.pgdat, pg)
    assert ref(k, pg) == 1 + extra_refs
    assert page_maybe_dma_pinned(k.pgdat, pg) is expected
    assert k.vmstat.pins() == (0, 0)  # a false positive, not a pin
    for _ in range(extra_refs):
        put_page(k.pgdat, pg)
    assert ref(k, pg) == 1


@pytest.mark.parametrize("extra_refs", [0, 1023, 3000])
def test_large_folio_with_plain_refs_is_not_maybe_pinned(k, snapshot, extra_refs):
    p, a, head = thp(k)
    before = snapshot(k)
    for i in range(extra_refs):
        get_page(k.pgdat, head + i % HPAGE_PMD_NR)
    assert ref(k, head) == 1 + extra_refs
    assert not page_maybe_dma_pinned(k.pgdat, head + 7)
    pages = buf(1)
    assert pin_user_pages_fast(p.mm, a + 7 * P, 1, W, pages) == 1
    assert page_maybe_dma_pinned(k.pgdat, head)  # any subpage answers for the folio
    assert page_maybe_dma_pinned(k.pgdat, head + 300)
    unpin_user_page(k.pgdat, int(pages[0]))
    assert not page_maybe_dma_pinned(k.pgdat, head + 7)
    for i in range(extra_refs):
        put_page(k.pgdat, head + i % HPAGE_PMD_NR)
    before.assert_restored(k)


# === §11.3: pinning k subpages of an order-9 THP ===========================================
@pytest.mark.parametrize(
    ("first", "count"),
    [(0, 1), (0, 2), (3, 5), (255, 2), (510, 2), (511, 1), (0, HPAGE_PMD_NR)],
)
@pytest.mark.parametrize("gup_flags", [0, W], ids=["read", "write"])
def test_pin_k_subpages_of_thp(k, snapshot, first, count, gup_flags):
    p, a, head = thp(k)
    before = snapshot(k)
    pages = buf(count)

    assert pin_user_pages_fast(p.mm, a + first * P, count, gup_flags, pages) == count
    assert pages.tolist() == list(range(head + first, head + first + count))
    assert ref(k, head) == 1 + count
    assert pincount(k, head) == count
    assert k.vmstat.pins() == (before.acquired + count, before.released)
    assert page_maybe_dma_pinned(k.pgdat, head)

    for i, pg in enumerate(pages.tolist()):
        unpin_user_page(k.pgdat, pg)
        assert ref(k, head) == 1 + count - (i + 1)
        assert pincount(k, head) == count - (i + 1)
        assert k.vmstat.pins() == (before.acquired + count, before.released + i + 1)
    assert not page_maybe_dma_pinned(k.pgdat, head)
    before.assert_restored(k)


def test_pin_across_thp_end_into_small_pages(k, snapshot):
    """Two subpages at the end of a THP and two small pages after it, in one call."""
    p = k.spawn()
    a = p.mmap(2 * HPAGE_PMD_SIZE)
    p.madvise(a, HPAGE_PMD_SIZE, MADV_HUGEPAGE)
    p.touch(a, 2 * HPAGE_PMD_SIZE, write=True)
    head = int(pfns(p, a, 1)[0])
    small = pfns(p, a + HPAGE_PMD_SIZE, 2)
    assert k.pgdat.pages.folio_order(head) == 9
    assert [k.pgdat.pages.folio_order(int(x)) for x in small] == [0, 0]
    before = snapshot(k)
    pages = buf(4)
    assert pin_user_pages_fast(p.mm, a + HPAGE_PMD_SIZE - 2 * P, 4, W, pages) == 4
    assert pages.tolist() == [head + 510, head + 511, *small.tolist()]
    assert (ref(k, head), pincount(k, head)) == (3, 2)
    assert [ref(k, int(x)) for x in small] == [1 + BIAS] * 2
    assert k.vmstat.pins() == (before.acquired + 4, before.released)
    unpin_user_pages(k.pgdat, pages, 4)
    before.assert_restored(k)


# === §11.4: order-1 compound pages: bias in 5.9, exact pincount in 6.18 =====================
def test_order1_compound_pin_accounting(k, snapshot):
    before = snapshot(k)
    h = alloc_pages(k.pgdat, 1)
    assert h >= 0 and h % 2 == 0
    entries = np.array([h, h + 1], np.int64)
    assert try_grab_pages(k.pgdat, entries, FOLL.FOLL_PIN, None, "test") == 2
    if k.cfg.PINCOUNT_ANY_LARGE_FOLIO:  # 6.18: folio_has_pincount() on any large folio
        assert (ref(k, h), pincount(k, h)) == (3, 2)
    else:  # 5.9: hpage_pincount_available() needs order > 1
        assert (ref(k, h), pincount(k, h)) == (1 + 2 * BIAS, 0)
    assert k.vmstat.pins() == (2, 0)
    assert page_maybe_dma_pinned(k.pgdat, h + 1)
    gup_put_pages(k.pgdat, entries[1:], FOLL.FOLL_PIN, None, "test")
    assert page_maybe_dma_pinned(k.pgdat, h)
    gup_put_pages(k.pgdat, entries[:1], FOLL.FOLL_PIN, None, "test")
    assert (ref(k, h), pincount(k, h)) == (1, 0)
    assert not page_maybe_dma_pinned(k.pgdat, h)
    assert k.vmstat.pins() == (2, 2)
    put_page(k.pgdat, h + 1)  # the tail's put frees the whole folio
    before.assert_restored(k)


def test_order1_compound_with_plain_refs_is_fuzzy_only_before_exact_pincount(k):
    h = alloc_pages(k.pgdat, 1)
    for _ in range(1023):
        get_page(k.pgdat, h + 1)
    assert ref(k, h) == 1024
    assert page_maybe_dma_pinned(k.pgdat, h) is (not k.cfg.PINCOUNT_ANY_LARGE_FOLIO)


@pytest.mark.parametrize(
    ("order", "subpage", "refcount_after", "pincount_after"),
    [(0, 0, 1 + BIAS, 0), (1, 1, 1 + BIAS, 0), (2, 3, 2, 1), (9, 511, 2, 1)],
)
def test_pin_page_5_9_pin(snapshot, order, subpage, refcount_after, pincount_after):
    """[PATCH v3 1/3] pin_page(): bias on order <= 1, exact pincount above; always counted."""
    k = Kernel("32M", "5.9-pin")
    before = snapshot(k)
    h = alloc_pages(k.pgdat, order)
    pin_page(k.pgdat, h + subpage)
    assert (ref(k, h), pincount(k, h)) == (refcount_after, pincount_after)
    assert k.vmstat.pins() == (1, 0)
    unpin_user_page(k.pgdat, h + subpage)
    assert (ref(k, h), pincount(k, h)) == (1, 0)
    assert k.vmstat.pins() == (1, 1)
    put_page(k.pgdat, h)
    before.assert_restored(k)
    assert k.events.events == []


def test_pin_page_pins_the_zero_page_5_9_pin():
    k = Kernel("32M", "5.9-pin")
    pin_page(k.pgdat, ZERO_PFN)
    assert ref(k, ZERO_PFN) == 1 + BIAS
    assert k.vmstat.pins() == (1, 0)
    unpin_user_page(k.pgdat, ZERO_PFN)
    assert ref(k, ZERO_PFN) == 1
    assert k.vmstat.pins() == (1, 1)


@pytest.mark.parametrize("profile", ["5.9", "6.18"])
def test_pin_page_exists_only_in_5_9_pin(profile):
    k = Kernel("32M", profile)
    with pytest.raises(RuntimeError, match="pin_page"):
        pin_page(k.pgdat, ZERO_PFN)
    assert ref(k, ZERO_PFN) == 1


# === §11.5: a hole at page k returns k, or -EFAULT when k == 0 ==============================
@pytest.mark.parametrize(("n", "hole"), [(1, 0), (4, 0), (4, 1), (4, 3), (9, 5)])
@pytest.mark.parametrize("populated", [True, False], ids=["populated", "untouched"])
def test_pin_stops_at_unmapped_page(k, snapshot, n, hole, populated):
    before = snapshot(k)
    p, a = anon(k, n, touch=populated)
    p.munmap(a + hole * P, P)
    pages = buf(n)

    ret = pin_user_pages_fast(p.mm, a, n, W, pages)
    assert ret == (hole if hole else -errno.EFAULT)
    assert (pages[hole:] == -1).all()
    assert k.vmstat.pins() == (hole, 0)
    assert [ref(k, int(x)) for x in pages[:hole]] == [1 + BIAS] * hole
    assert pages[:hole].tolist() == pfns(p, a, hole).tolist()

    unpin_user_pages(k.pgdat, pages, max(ret, 0))
    assert [ref(k, int(x)) for x in pages[:hole]] == [1] * hole
    p.exit()
    before.assert_restored(k)


@pytest.mark.parametrize(("n", "bad"), [(1, 0), (3, 0), (3, 1), (3, 2)])
def test_pin_stops_at_prot_none_page(k, snapshot, n, bad):
    before = snapshot(k)
    p, a = anon(k, n)
    p.mprotect(a + bad * P, P, PROT_NONE)
    pages = buf(n)
    for gup_flags in (0, W):
        ret = pin_user_pages_fast(p.mm, a, n, gup_flags, pages)
        assert ret == (bad if bad else -errno.EFAULT)
        assert (pages[bad:] == -1).all()
        unpin_user_pages(k.pgdat, pages, max(ret, 0))
    assert k.vmstat.pins() == (2 * bad, 2 * bad)
    p.exit()
    before.assert_restored(k)


@pytest.mark.parametrize(("n", "ro"), [(1, 0), (4, 0), (4, 2), (4, 3)])
def test_foll_write_stops_at_read_only_page(k, snapshot, n, ro):
    before = snapshot(k)
    p, a = anon(k, n)
    p.mprotect(a + ro * P, P, PROT_READ)
    pages = buf(n)
    ret = pin_user_pages_fast(p.mm, a, n, W, pages)
    assert ret == (ro if ro else -errno.EFAULT)
    assert (pages[ro:] == -1).all()
    unpin_user_pages(k.pgdat, pages, max(ret, 0))
    # A read pin of the same range is fine: the read-only page is readable.
    assert pin_user_pages_fast(p.mm, a, n, 0, pages) == n
    unpin_user_pages(k.pgdat, pages, n)
    assert k.vmstat.pins() == (ro + n, ro + n)
    p.exit()
    before.assert_restored(k)


def test_foll_write_on_untouched_read_only_mapping_is_efault(k, snapshot):
    before = snapshot(k)
    p = k.spawn()
    a = p.mmap(2 * P, prot=PROT_READ)
    pages = buf(2)
    assert pin_user_pages_fast(p.mm, a, 2, W, pages) == -errno.EFAULT
    assert pages.tolist() == [-1, -1]
    assert pin_user_pages_fast(p.mm, a, 2, 0, pages) == 2
    assert pages.tolist() == [ZERO_PFN, ZERO_PFN]
    unpin_user_pages(k.pgdat, pages, 2)
    p.exit()
    before.assert_restored(k)


# === §11.6: FOLL_GET passed to a pin call ===================================================
@pytest.mark.parametrize("gup_flags", [FOLL.FOLL_GET, FOLL.FOLL_GET | W])
def test_pin_with_foll_get_is_einval_and_warns_once(k, snapshot, gup_flags):
    p, a = anon(k, 2)
    before = snapshot(k)
    pages = buf(2)
    for _ in range(2):
        assert pin_user_pages_fast(p.mm, a, 2, gup_flags, pages) == -errno.EINVAL
    assert pages.tolist() == [-1, -1]
    assert warns(k) == ["pin_user_pages_fast"]  # WARN_ON_ONCE
    assert not p.mm.has_pinned
    before.assert_restored(k)
    assert k.vmstat.pins() == (0, 0)


def test_slow_pin_with_foll_get(k, snapshot):
    """pin_user_pages(): -EINVAL [5.9]; 0 [6.18], where is_valid_gup_args() failing makes
    pin_user_pages() return 0."""
    p, a = anon(k, 1)
    before = snapshot(k)
    pages = buf(1)
    expected = 0 if k.cfg.GUP_ARGS_6X else -errno.EINVAL
    assert pin_user_pages(p.mm, a, 1, FOLL.FOLL_GET, pages) == expected
    assert pages.tolist() == [-1]
    assert warns(k) == ["pin_user_pages"]
    before.assert_restored(k)


def test_get_with_foll_pin_is_einval(k, snapshot):
    p, a = anon(k, 1)
    before = snapshot(k)
    pages = buf(1)
    assert get_user_pages_fast(p.mm, a, 1, FOLL.FOLL_PIN, pages) == -errno.EINVAL
    assert pages.tolist() == [-1]
    assert warns(k) == ["get_user_pages_fast"]
    before.assert_restored(k)


def test_get_with_foll_longterm(k, snapshot):
    """FOLL_LONGTERM without FOLL_PIN: accepted in 5.9, WARN and -EINVAL in 6.18
    (is_valid_gup_args)."""
    p, a = anon(k, 1)
    before = snapshot(k)
    pages = buf(1)
    ret = get_user_pages_fast(p.mm, a, 1, FOLL.FOLL_LONGTERM, pages)
    if k.cfg.GUP_ARGS_6X:
        assert ret == -errno.EINVAL
        assert warns(k) == ["get_user_pages_fast"]
    else:
        assert ret == 1
        assert ref(k, int(pages[0])) == 2
        put_page(k.pgdat, int(pages[0]))
        assert warns(k) == []
    before.assert_restored(k)


# === §11.8: read pin of never-touched anonymous memory ======================================
@pytest.mark.parametrize("nr", [1, 3, 64])
def test_read_pin_of_untouched_anon_gets_the_zero_page(k, snapshot, nr):
    before = snapshot(k)
    p, a = anon(k, nr, touch=False)
    pages = buf(nr)
    unit = zero_pin_unit(k)

    for round_ in (1, 2):  # first through faults, then with the zero-page PTEs present
        assert pin_user_pages_fast(p.mm, a, nr, 0, pages) == nr
        assert pages.tolist() == [ZERO_PFN] * nr
        assert pfns(p, a, nr).tolist() == [ZERO_PFN] * nr
        assert ref(k, ZERO_PFN) == 1 + unit * nr
        counted = nr if unit else 0
        assert k.vmstat.pins() == (counted * round_, counted * (round_ - 1))
        assert page_maybe_dma_pinned(k.pgdat, ZERO_PFN) is bool(unit)
        unpin_user_pages(k.pgdat, pages, nr)
        assert ref(k, ZERO_PFN) == 1
        assert k.vmstat.pins() == (counted * round_, counted * round_)

    assert k.pgdat.nr_free() == before.nr_free  # nothing was allocated
    p.exit()
    before.assert_restored(k)


def test_forced_cow_read_pin_faults_in_fresh_anon_pages(snapshot):
    """[5.8-5.9-rc3] GUP_FORCED_COW: a read pin on a COW mapping is a write: fresh pages."""
    cfg = PROFILES["5.9"].derive(GUP_FORCED_COW=True)
    assert cfg.name == "5.9+GUP_FORCED_COW"
    k = Kernel("32M", cfg)
    before = snapshot(k)
    nr = 4
    p, a = anon(k, nr, touch=False)
    pages = buf(nr)
    assert pin_user_pages_fast(p.mm, a, nr, 0, pages) == nr
    assert ZERO_PFN not in pages.tolist()
    assert len(set(pages.tolist())) == nr
    assert pages.tolist() == pfns(p, a, nr).tolist()
    assert [ref(k, int(x)) for x in pages] == [1 + BIAS] * nr
    assert all(k.pgdat.pages.test(int(x), PG.PG_anon) for x in pages)
    assert ref(k, ZERO_PFN) == 1
    assert k.vmstat.pins() == (nr, 0)
    assert k.pgdat.nr_free() == before.nr_free - nr
    assert p.read_user(a, nr * P) == bytes(nr * P)
    unpin_user_pages(k.pgdat, pages, nr)
    p.exit()
    before.assert_restored(k)


def test_forced_cow_read_pin_breaks_cow_of_a_shared_page():
    k = Kernel("32M", PROFILES["5.9"].derive(GUP_FORCED_COW=True))
    p, a = anon(k, 1)
    k.fork(p)
    shared = int(pfns(p, a, 1)[0])
    assert ref(k, shared) == 2
    pages = buf(1)
    assert pin_user_pages_fast(p.mm, a, 1, 0, pages) == 1
    assert int(pages[0]) != shared
    assert ref(k, shared) == 1  # only the child maps it now


# === §11.9: the zero page overflows after 2^21 bias pins ====================================
@pytest.mark.parametrize("profile", ["5.9", "5.9-pin"])
def test_zero_page_refcount_overflows_on_pin_2_pow_21(profile):
    k = Kernel("32M", profile)
    zero = lambda n: np.full(n, ZERO_PFN, np.int64)  # noqa: E731
    pin = FOLL.FOLL_PIN
    n = 1 << 21

    assert try_grab_pages(k.pgdat, zero(n - 1), pin, None, "test") == n - 1
    assert ref(k, ZERO_PFN) == 1 + BIAS * (n - 1) == (1 << 31) - 1023
    assert try_grab_pages(k.pgdat, zero(1), pin, None, "test") == 1  # pin 2^21 wraps
    assert ref(k, ZERO_PFN) == -(1 << 31) + 1
    assert page_maybe_dma_pinned(k.pgdat, ZERO_PFN)  # compared unsigned
    assert k.events.events == []
    assert k.vmstat.pins() == (n, 0)

    assert try_grab_pages(k.pgdat, zero(1), pin, None, "test") == 0
    assert warns(k) == ["try_grab_folio"]
    assert k.vmstat.pins() == (n, 0)

    gup_put_pages(k.pgdat, zero(n), pin, None, "test")
    assert ref(k, ZERO_PFN) == 1
    assert k.vmstat.pins() == (n, n)


@pytest.mark.parametrize("profile", ["5.9", "5.9-pin"])
def test_zero_page_overflow_in_one_batch_stops_after_2_pow_21(profile):
    k = Kernel("32M", profile)
    n = 1 << 21
    batch = np.full(n + 3, ZERO_PFN, np.int64)
    assert try_grab_pages(k.pgdat, batch, FOLL.FOLL_PIN, None, "test") == n
    assert ref(k, ZERO_PFN) == -(1 << 31) + 1
    assert warns(k) == ["try_grab_folio"]
    assert k.vmstat.pins() == (n, 0)


def test_zero_page_is_exempt_from_pins_6_18():
    k = Kernel("32M", "6.18")
    n = (1 << 21) + 1
    batch = np.full(n, ZERO_PFN, np.int64)
    assert try_grab_pages(k.pgdat, batch, FOLL.FOLL_PIN, None, "test") == n
    assert ref(k, ZERO_PFN) == 1
    assert k.vmstat.pins() == (0, 0)
    gup_put_pages(k.pgdat, batch, FOLL.FOLL_PIN, None, "test")
    assert ref(k, ZERO_PFN) == 1
    assert k.vmstat.pins() == (0, 0)
    assert k.events.events == []


# === §11.10: unpin_user_pages_dirty_lock ====================================================
@pytest.mark.parametrize("make_dirty", [True, False])
def test_unpin_dirty_lock_dirties_each_clean_folio_once(k, snapshot, make_dirty):
    p, a = anon(k, 3)
    q, b, head = thp(k)
    small = pfns(p, a, 3)
    k.pgdat.pages.set(int(small[1]), PG.PG_dirty)  # already dirty: not dirtied again
    before = snapshot(k)
    pages = buf(8)
    assert pin_user_pages_fast(p.mm, a, 3, W, pages[:3]) == 3
    assert pin_user_pages_fast(q.mm, b + 5 * P, 3, W, pages[3:6]) == 3
    assert pin_user_pages_fast(p.mm, a, 2, W, pages[6:]) == 2  # small[0], small[1] again
    calls: list[tuple[str, dict[str, object]]] = []
    k.pgdat.hooks.tracepoints.append(lambda name, fields: calls.append((name, fields)))

    unpin_user_pages_dirty_lock(k.pgdat, pages, 8, make_dirty)

    if make_dirty:
        dirtied = sorted(int(f["pfn"]) for name, f in calls if name == "set_page_dirty_lock")
        assert len(calls) == 3
        assert dirtied == sorted([int(small[0]), int(small[2]), head])
    else:
        assert calls == []
    for pg in (*small.tolist(), head):
        assert k.pgdat.pages.test(pg, PG.PG_dirty) is (make_dirty or pg == int(small[1]))
    assert k.vmstat.pins() == (before.acquired + 8, before.released + 8)
    before.assert_restored(k)


# === bad input ===============================================================================
@pytest.mark.parametrize(
    ("offset", "first_page"),
    [(0, 0), (0x1, 0), (0x1FF, 0), (0x200, 0), (0xFFF, 0), (0x1000, 1), (0x1001, 1)],
)
def test_unaligned_start_is_rounded_down(k, snapshot, offset, first_page):
    p, a = anon(k, 4)
    before = snapshot(k)
    pages = buf(2)
    assert pin_user_pages_fast(p.mm, a + offset, 2, W, pages) == 2
    assert pages.tolist() == pfns(p, a + first_page * P, 2).tolist()
    assert k.vmstat.pins() == (2, 0)
    unpin_user_pages(k.pgdat, pages, 2)
    before.assert_restored(k)


# (start, nr_pages, result in 5.9, result in 6.18); "a" is a mapped, populated address.
# 5.9 internal_get_user_pages_fast(): end = start + ((unsigned long)nr << 12) wraps; end <= start
# returns 0, then access_ok() fails with -EFAULT. 6.18 gup_fast_fallback(): check_add_overflow
# gives -EOVERFLOW (Linux commit 9883c7f84053 ("mm/gup: do not return 0 from
# pin_user_pages_fast() for bad args") (v6.5)), then end > TASK_SIZE_MAX gives -EFAULT.
EFAULT, EOVERFLOW = -errno.EFAULT, -errno.EOVERFLOW
BAD_RANGES = [
    ("a", 0, 0, 0),
    (0x0, 0, 0, 0),
    (TASK_SIZE, 0, 0, 0),
    (U64 - 0xFFF, 0, 0, EFAULT),
    (0x0, -1, EFAULT, EFAULT),
    (0xFFF, -1, EFAULT, EFAULT),
    (0x1000, -1, 0, EOVERFLOW),
    (0x1000, -2, EFAULT, EFAULT),
    (0x1FFF, -2, EFAULT, EFAULT),
    (0x2000, -2, 0, EOVERFLOW),
    ("a", -1, 0, EOVERFLOW),
    ("a", -(1 << 31), 0, EOVERFLOW),
    (U64 - 0xFFF, 1, 0, EOVERFLOW),
    (U64 - 0xFFF, 2, 0, EOVERFLOW),
    (U64 - 0x1FFF, 1, EFAULT, EFAULT),
    (U64 - 0x1FFF, 2, 0, EOVERFLOW),
    (0xFFFF800000000000, 1, EFAULT, EFAULT),
    (TASK_SIZE, 1, EFAULT, EFAULT),
    (1 << 47, 1, EFAULT, EFAULT),
]


@pytest.mark.parametrize(("start", "nr", "r59", "r618"), BAD_RANGES)
def test_bad_ranges(k, snapshot, start, nr, r59, r618):
    p, a = anon(k, 2)
    before = snapshot(k)
    start = a if start == "a" else start
    pages = buf(4)
    expected = r618 if k.cfg.GUP_ARGS_6X else r59
    assert pin_user_pages_fast(p.mm, start, nr, W, pages) == expected
    assert pages.tolist() == [-1] * 4
    assert p.mm.has_pinned  # set before the range checks
    assert k.events.events == []
    before.assert_restored(k)


@pytest.mark.parametrize(("start", "nr"), [(TASK_SIZE - P, 2), (TASK_SIZE - 2 * P, 3)])
def test_range_ending_past_task_size_max_is_efault(k, start, nr):
    p = k.spawn()
    a = p.mmap(2 * P, flags=MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, addr=TASK_SIZE - 2 * P)
    p.touch(a, 2 * P, write=True)
    pages = buf(4)
    assert pin_user_pages_fast(p.mm, start, nr, W, pages) == -errno.EFAULT
    assert pages.tolist() == [-1] * 4


def test_empty_range_just_above_task_size_max_is_efault_6_18():
    k = Kernel("32M", "6.18")
    p = k.spawn()
    assert pin_user_pages_fast(p.mm, TASK_SIZE + P, 0, 0, buf(1)) == -errno.EFAULT


def test_range_ending_at_task_size_max_is_fine(k, snapshot):
    before = snapshot(k)
    p = k.spawn()
    a = p.mmap(2 * P, flags=MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, addr=TASK_SIZE - 2 * P)
    assert a == TASK_SIZE - 2 * P
    p.touch(a, 2 * P, write=True)
    pages = buf(2)
    assert pin_user_pages_fast(p.mm, a, 2, W, pages) == 2
    unpin_user_pages(k.pgdat, pages, 2)
    p.exit()
    before.assert_restored(k)


UNKNOWN_FLAGS = [
    FOLL.FOLL_TOUCH,
    FOLL.FOLL_DUMP,
    FOLL.FOLL_NOWAIT,
    FOLL.FOLL_POPULATE,
    FOLL.FOLL_HWPOISON,
    FOLL.FOLL_REMOTE,
    FOLL.FOLL_ANON,
    FOLL.FOLL_TOUCH | W,
    0x200,  # a hole between defined flags
]


@pytest.mark.parametrize("gup_flags", UNKNOWN_FLAGS, ids=lambda f: f"{int(f):#x}")
def test_unknown_gup_flags_are_einval_and_warn(k, snapshot, gup_flags):
    p, a = anon(k, 1)
    before = snapshot(k)
    pages = buf(1)
    assert pin_user_pages_fast(p.mm, a, 1, gup_flags, pages) == -errno.EINVAL
    assert pages.tolist() == [-1]
    assert warns(k) == ["pin_user_pages_fast"]
    assert not p.mm.has_pinned  # the flag check comes first
    before.assert_restored(k)


@pytest.mark.parametrize("gup_flags", [1 << 21, 1 << 30, W | 1 << 31])
def test_unknown_high_gup_flags_are_einval_and_warn(k, gup_flags):
    p, a = anon(k, 1)
    pages = buf(1)
    assert pin_user_pages_fast(p.mm, a, 1, gup_flags, pages) == -errno.EINVAL
    assert warns(k) == ["pin_user_pages_fast"]


def test_foll_nofault_exists_only_in_6_x(k, snapshot):
    """FOLL_NOFAULT (v5.17) is not among 5.9's allowed fast-GUP flags."""
    p, a = anon(k, 1)
    before = snapshot(k)
    pages = buf(1)
    ret = pin_user_pages_fast(p.mm, a, 1, FOLL.FOLL_NOFAULT, pages)
    if k.cfg.GUP_ARGS_6X:
        assert ret == 1
        unpin_user_pages(k.pgdat, pages, 1)
    else:
        assert ret == -errno.EINVAL
        assert warns(k) == ["pin_user_pages_fast"]
    before.assert_restored(k)


@pytest.mark.parametrize("gup_flags", [FOLL.FOLL_PIN, FOLL.FOLL_FAST_ONLY])
def test_internal_gup_flags_from_the_caller_are_einval_6_18(gup_flags):
    k = Kernel("32M", "6.18")
    p, a = anon(k, 1)
    pages = buf(1)
    assert pin_user_pages_fast(p.mm, a, 1, gup_flags, pages) == -errno.EINVAL
    assert warns(k) == ["pin_user_pages_fast"]


@pytest.mark.parametrize("npages", [-1, -errno.EFAULT, -4095])
def test_unpin_with_negative_npages_warns_and_does_nothing(k, snapshot, npages):
    p, a = anon(k, 2)
    pages = buf(2)
    assert pin_user_pages_fast(p.mm, a, 2, W, pages) == 2
    before = snapshot(k)
    for _ in range(2):
        unpin_user_pages(k.pgdat, pages, npages)
    assert warns(k) == ["unpin_user_pages"] * 2  # WARN_ON, not _ONCE
    before.assert_restored(k)
    assert k.vmstat.pins() == (2, 0)
    unpin_user_pages_dirty_lock(k.pgdat, pages, npages, False)  # same check, via unpin
    assert len(warns(k)) == 3
    before.assert_restored(k)
    unpin_user_pages(k.pgdat, pages, 2)


def test_unpin_dirty_lock_with_negative_npages_unpins_nothing(snapshot):
    k = Kernel("32M", "5.9-pin")
    p, a = anon(k, 2)
    pages = buf(2)
    assert pin_user_pages_fast(p.mm, a, 2, W, pages) == 2
    before = snapshot(k)
    unpin_user_pages_dirty_lock(k.pgdat, pages, -1, True)
    before.assert_restored(k)
    assert k.events.of_kind("BUG") or k.events.of_kind("WARN")


def test_unpin_null_entries(k, snapshot):
    """[6.x] unpin_user_pages() skips NULL entries; [5.9] would dereference them (BUG)."""
    p, a = anon(k, 2)
    before = snapshot(k)
    pages = buf(3)
    assert pin_user_pages_fast(p.mm, a, 1, W, pages[:1]) == 1
    assert pin_user_pages_fast(p.mm, a + P, 1, W, pages[2:]) == 1
    unpin_user_pages(k.pgdat, pages, 3)
    before.assert_restored(k)
    assert [e.kind for e in k.events.events] == ([] if k.cfg.GUP_ARGS_6X else ["BUG"])


def test_has_pinned_is_set_even_when_nothing_is_pinned(k):
    p = k.spawn()
    assert not p.mm.has_pinned
    assert pin_user_pages_fast(p.mm, 0x10000, 1, 0, buf(1)) == -errno.EFAULT
    assert p.mm.has_pinned


# === COW and pins ============================================================================
def test_read_pin_of_cow_shared_page(k, snapshot):
    """[6.18] gup_must_unshare(): a R/O pin of a possibly shared anon page unshares it first,
    so the pinned page is exclusive. [5.9] the shared page itself is pinned."""
    p, a = anon(k, 1)
    p.write_user(a, b"parent")
    child = k.fork(p)
    shared = int(pfns(p, a, 1)[0])
    assert (ref(k, shared), int(k.pgdat.pages.mapcount[shared])) == (2, 2)
    pages = buf(1)
    assert pin_user_pages_fast(p.mm, a, 1, 0, pages) == 1
    pinned = int(pages[0])
    if k.cfg.ANON_EXCLUSIVE:
        assert pinned != shared
        assert int(pfns(p, a, 1)[0]) == pinned
        assert k.pgdat.pages.test(pinned, PG.PG_anon_exclusive)
        assert (ref(k, pinned), int(k.pgdat.pages.mapcount[pinned])) == (1 + BIAS, 1)
        assert (ref(k, shared), int(k.pgdat.pages.mapcount[shared])) == (1, 1)
        assert int(pfns(child, a, 1)[0]) == shared
    else:
        assert pinned == shared
        assert ref(k, shared) == 2 + BIAS
    assert p.read_user(a, 6) == b"parent"
    assert child.read_user(a, 6) == b"parent"
    assert k.vmstat.pins() == (1, 0)
    unpin_user_pages(k.pgdat, pages, 1)
    assert k.vmstat.pins() == (1, 1)


def test_read_pin_after_the_cow_sharer_exited(snapshot):
    """[6.18] the unshare fault reuses a page that is no longer shared (refcount 1)."""
    k = Kernel("32M", "6.18")
    p, a = anon(k, 1)
    child = k.fork(p)
    page = int(pfns(p, a, 1)[0])
    child.exit()
    assert not k.pgdat.pages.test(page, PG.PG_anon_exclusive)
    pages = buf(1)
    assert pin_user_pages_fast(p.mm, a, 1, 0, pages) == 1
    assert int(pages[0]) == page
    assert k.pgdat.pages.test(page, PG.PG_anon_exclusive)
    assert ref(k, page) == 1 + BIAS
    unpin_user_pages(k.pgdat, pages, 1)


def test_longterm_read_pin_of_untouched_anon_unshares_the_zero_page_6_18():
    k = Kernel("32M", "6.18")
    p, a = anon(k, 1, touch=False)
    pages = buf(1)
    assert pin_user_pages_fast(p.mm, a, 1, FOLL.FOLL_LONGTERM, pages) == 1
    assert int(pages[0]) != ZERO_PFN
    assert k.vmstat.pins() == (1, 0)


def test_forced_write_pin_leaves_read_only_mapping_read_only(k):
    p = k.spawn()
    a = p.mmap(P, prot=PROT_READ)
    pages = buf(1)
    assert pin_user_pages_fast(p.mm, a, 1, W | FOLL.FOLL_FORCE, pages) == 1
    assert int(pages[0]) != ZERO_PFN
    unpin_user_pages(k.pgdat, pages, 1)
    assert pin_user_pages_fast(p.mm, a, 1, W, pages) == -errno.EFAULT


def test_pin_of_shared_anonymous_memory(k, snapshot):
    before = snapshot(k)
    p = k.spawn()
    a = p.mmap(2 * P, prot=PROT_READ | PROT_WRITE, flags=0x01 | MAP_ANONYMOUS)
    pages = buf(2)
    assert pin_user_pages_fast(p.mm, a, 2, W, pages) == 2
    assert ZERO_PFN not in pages.tolist()
    assert [ref(k, int(x)) for x in pages] == [2 + BIAS] * 2  # page cache + PTE + pin
    unpin_user_pages(k.pgdat, pages, 2)
    assert [ref(k, int(x)) for x in pages] == [2, 2]
    p.exit()
    before.assert_restored(k)


@pytest.mark.parametrize("child_alive", [True, False])
def test_read_pin_of_a_cow_shared_thp_6_18(snapshot, child_alive):
    """[6.18] gup_must_unshare() on a THP after fork(): while the child maps it, each pinned
    subpage is unshared into its own small page (the PMD is split); once the child is gone
    the unshare fault reuses the whole THP and the pins land on its pincount."""
    k = Kernel("32M", "6.18")
    before = snapshot(k)
    p, a, head = thp(k)
    c = k.fork(p)
    if not child_alive:
        c.exit()
    pages = buf(2)
    assert pin_user_pages_fast(p.mm, a, 2, 0, pages) == 2
    if child_alive:
        assert not set(pages.tolist()) & {head, head + 1}
        assert [k.pgdat.pages.folio_order(int(x)) for x in pages] == [0, 0]
        assert [ref(k, int(x)) for x in pages] == [1 + BIAS] * 2
        assert (ref(k, head), pincount(k, head)) == (1 + HPAGE_PMD_NR - 2, 0)
    else:
        assert pages.tolist() == [head, head + 1]
        assert (ref(k, head), pincount(k, head)) == (3, 2)
        assert k.pgdat.pages.test(head, PG.PG_anon_exclusive)
    assert k.vmstat.pins() == (2, 0)
    unpin_user_pages(k.pgdat, pages, 2)
    c.exit()
    p.exit()
    before.assert_restored(k)

"""GUP-fast's PMD-leaf shortcut (:func:`dioscope.mm.gup._gup_fast_pmd`) must leave exactly
what the general walk leaves: return value, pages, every refcount and pincount, the pin
counters, WARN/BUG events and ``has_pinned`` — for pins and plain references, reads and
writes, ranges inside one THP, touching its end, or running past it into small pages, and
THPs that are shared after fork (a read-only pin must unshare: the shortcut declines), under
every profile."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dioscope.kernel.config import PROFILES
from dioscope.kernel.types import HPAGE_PMD_NR, HPAGE_PMD_SIZE, PAGE_SIZE
from dioscope.machine import Kernel
from dioscope.mm import gup
from dioscope.mm.gup import get_user_pages_fast, pin_user_pages_fast, unpin_user_pages
from dioscope.mm.gup_core import FOLL
from dioscope.mm.mmap import MADV_HUGEPAGE, PROT_READ

W = int(FOLL.FOLL_WRITE)


def _run(profile: str, shortcut: bool, first: int, n: int, write: bool, pin: bool,
         forked: bool, readonly: bool, monkeypatch: pytest.MonkeyPatch) -> tuple:
    if not shortcut:
        monkeypatch.setattr(gup, "_gup_fast_pmd", lambda *a: -1)
    k = Kernel("32M", profile)
    p = k.spawn()
    raw = p.mmap(3 * HPAGE_PMD_SIZE)
    a = (raw + HPAGE_PMD_SIZE - 1) & ~(HPAGE_PMD_SIZE - 1)
    p.madvise(a, HPAGE_PMD_SIZE, MADV_HUGEPAGE)
    assert p.touch(a, HPAGE_PMD_SIZE + 64 * PAGE_SIZE, write=True) > 0
    child = p.fork(2) if forked else None
    if readonly:
        p.mprotect(a, HPAGE_PMD_SIZE, PROT_READ)
    pages = np.full(n, -1, np.int64)
    fn = pin_user_pages_fast if pin else get_user_pages_fast
    got = fn(p.mm, a + first * PAGE_SIZE, n, W if write else 0, pages)
    pg = k.pgdat.pages
    out = (got, pages.tolist(), pg.refcount.tobytes(), pg.pincount.tobytes(), k.vmstat.pins(),
           [(e.kind, e.site) for e in k.events.events], p.mm.has_pinned)
    monkeypatch.undo()
    if got > 0 and pin:
        unpin_user_pages(k.pgdat, pages, got)
    if child is not None:
        child.exit()
    return out


@pytest.mark.pure
@settings(max_examples=120, deadline=None)
@given(profile=st.sampled_from(sorted(PROFILES)), first=st.integers(0, HPAGE_PMD_NR - 1),
       n=st.integers(1, 300), write=st.booleans(), pin=st.booleans(), forked=st.booleans(),
       readonly=st.booleans())
def test_shortcut_equals_the_general_walk(profile: str, first: int, n: int, write: bool,
                                          pin: bool, forked: bool, readonly: bool) -> None:
    with pytest.MonkeyPatch.context() as mp:
        fast = _run(profile, True, first, n, write, pin, forked, readonly, mp)
        slow = _run(profile, False, first, n, write, pin, forked, readonly, mp)
    assert fast == slow


@pytest.mark.pure
@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_pinning_part_of_a_thp_is_one_update_on_its_head(profile: str,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """Pages 10..73 of a written THP, FOLL_WRITE pin: 64 pins counted, head refcount and
    pincount +64 (pin_unit 1 for a large folio), nothing on the tail pages."""
    seen: list[int] = []
    real = gup._gup_fast_pmd

    def spy(*a: object) -> int:
        seen.append(real(*a))  # type: ignore[arg-type]
        return seen[-1]

    monkeypatch.setattr(gup, "_gup_fast_pmd", spy)
    k = Kernel("32M", profile)
    p = k.spawn()
    raw = p.mmap(2 * HPAGE_PMD_SIZE)
    a = (raw + HPAGE_PMD_SIZE - 1) & ~(HPAGE_PMD_SIZE - 1)
    p.madvise(a, HPAGE_PMD_SIZE, MADV_HUGEPAGE)
    p.touch(a, HPAGE_PMD_SIZE, write=True)
    head = int(p.mm.vma_lookup(a).pt_pfn[(a - raw) // PAGE_SIZE])
    pg = k.pgdat.pages
    rc0, pc0 = int(pg.refcount[head]), int(pg.pincount[head])
    pages = np.empty(64, np.int64)
    assert pin_user_pages_fast(p.mm, a + 10 * PAGE_SIZE, 64, W, pages) == 64
    assert seen == [64]
    assert pages.tolist() == list(range(head + 10, head + 74))
    assert (int(pg.refcount[head]) - rc0, int(pg.pincount[head]) - pc0) == (64, 64)
    assert k.vmstat.pins() == (64, 0)
    unpin_user_pages(k.pgdat, pages, 64)
    assert (int(pg.refcount[head]), int(pg.pincount[head])) == (rc0, pc0)
    assert k.vmstat.pins() == (64, 64)


@pytest.mark.parametrize("thp", [False, True], ids=["small", "thp"])
def test_a_short_pages_array_is_refused_before_anything_is_pinned(thp: bool) -> None:
    """Both shortcuts decline a pages array shorter than nr_pages, so the general path's
    check fires first: nothing pinned, nothing counted."""
    k = Kernel("32M", "6.18")
    p = k.spawn()
    raw = p.mmap(2 * HPAGE_PMD_SIZE)
    a = (raw + HPAGE_PMD_SIZE - 1) & ~(HPAGE_PMD_SIZE - 1)
    if thp:
        p.madvise(a, HPAGE_PMD_SIZE, MADV_HUGEPAGE)
    p.touch(a, HPAGE_PMD_SIZE, write=True)
    rc = k.pgdat.pages.refcount.copy()
    with pytest.raises(ValueError, match="pages array holds 4 entries, 8 needed"):
        pin_user_pages_fast(p.mm, a, 8, W, np.empty(4, np.int64))
    assert k.vmstat.pins() == (0, 0)
    assert (k.pgdat.pages.refcount == rc).all()

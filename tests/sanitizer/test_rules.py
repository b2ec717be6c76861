"""Each rule fires on its bug, naming the exact page, and stays quiet on correct use.

Every "fires" test asserts the rule id and the exact pfn, so it fails if the rule is removed;
every "quiet" test first checks the sanitizer saw the traffic (so quiet is not vacuous).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
import pytest

from dioscope.kernel.config import PROFILES as ALL_PROFILES
from dioscope.kernel.types import HPAGE_PMD_SIZE as HPAGE
from dioscope.kernel.types import PAGE_SHIFT
from dioscope.mm.gup import folio_add_pin, pin_page, pin_user_pages_fast, unpin_user_page
from dioscope.mm.gup_core import FOLL
from dioscope.mm.mmap import MADV_DONTNEED
from dioscope.mm.page_ref import get_page, put_page, put_pages
from dioscope.sanitizer import RULES
from dioscope.sanitizer.rules import KernelEventRule

if TYPE_CHECKING:
    from tests.sanitizer.conftest import Rig

RigFor = Callable[..., "Rig"]
PROFILES = tuple(ALL_PROFILES)


# --- PIN-BALANCE ---------------------------------------------------------------------------
def test_pin_balance_fires_on_a_pin_left_outstanding(rig: Rig) -> None:
    addr = rig.buf(4)
    pages = rig.pin(addr, 4, holder="leaky-dio")
    rig.unpin(pages[:3])
    assert rig.san.violations == []
    new = rig.san.check_quiescent()
    assert [v.rule for v in new] == ["PIN-BALANCE"]
    (v,) = rig.fired_on("PIN-BALANCE", int(pages[3]))
    assert v.pfns == (int(pages[3]),)
    assert "1 FOLL_PIN pin(s) on 1 page(s)" in v.message
    assert "'leaky-dio' via pin_user_pages_fast" in v.message


def test_pin_balance_fires_on_a_gup_reference_left_outstanding(rig: Rig) -> None:
    addr = rig.buf(2)
    pages = rig.get(addr, 2, holder="old-dio")
    put_page(rig.pgdat, int(pages[0]))
    rig.san.check_quiescent()
    (v,) = rig.fired_on("PIN-BALANCE", int(pages[1]))
    assert "1 FOLL_GET reference(s) on 1 page(s)" in v.message
    assert "'old-dio' via get_user_pages_fast" in v.message
    assert not rig.fired_on("PIN-BALANCE", int(pages[0]))


def test_pin_balance_quiet_when_everything_is_released(rig: Rig) -> None:
    addr = rig.buf(8)
    pinned = rig.pin(addr, 8, holder="dio")
    got = rig.get(addr, 8, holder="dio-get")
    assert rig.san.outstanding == 16  # armed: the sanitizer saw both
    rig.unpin(pinned, holder="dio")
    put_pages(rig.pgdat, got)
    base = rig.thp()
    thp = rig.pin(base, 512)
    rig.unpin(thp)
    zero = rig.pin(rig.buf(4, write=False), 4, flags=0)
    rig.unpin(zero)
    assert rig.san.check_quiescent() == []
    assert rig.san.violations == []
    assert rig.san.outstanding == 0 and len(rig.san.ledger) == 0


def test_pin_balance_spares_declared_long_term_holders(rig: Rig) -> None:
    addr = rig.buf(4)
    rig.pin(addr, 2, holder="rdma-mr")
    rig.san.allow_outstanding("rdma-mr")
    assert rig.san.check_quiescent() == []
    leak = rig.pin(addr + (2 << PAGE_SHIFT), 1, holder="dio")
    rig.san.check_quiescent()
    (v,) = rig.fired("PIN-BALANCE")
    assert v.pfns == (int(leak[0]),)
    assert "'dio'" in v.message and "rdma-mr" not in v.message


def test_pin_balance_counts_pin_page_and_folio_add_pin(rig_for: RigFor) -> None:
    r = rig_for("5.9-pin")
    pfn = int(r.pin(r.buf(1), 1)[0])
    r.unpin(np.array([pfn]))
    pin_page(r.pgdat, 0, holder="dio-zero")  # the series pins the zero page
    r.san.check_quiescent()
    (v,) = r.fired_on("PIN-BALANCE", 0)
    assert "'dio-zero' via pin_page" in v.message

    r = rig_for("6.18")
    pfn = int(r.pin(r.buf(1), 1, holder="io_uring")[0])
    folio_add_pin(r.pgdat, pfn, holder="splice")  # not in vmstat, but a pin to release
    unpin_user_page(r.pgdat, pfn)
    r.san.check_quiescent()
    (v,) = r.fired_on("PIN-BALANCE", pfn)
    assert "1 FOLL_PIN pin(s)" in v.message


def test_pin_balance_quiet_for_pin_page_and_folio_add_pin(rig_for: RigFor) -> None:
    r = rig_for("5.9-pin")
    pin_page(r.pgdat, 0)
    assert r.san.pins[0] == 1
    unpin_user_page(r.pgdat, 0)
    r = rig_for("6.18")
    pfn = int(r.pin(r.buf(1), 1)[0])
    folio_add_pin(r.pgdat, pfn)
    assert r.san.pins[pfn] == 2
    unpin_user_page(r.pgdat, pfn)
    unpin_user_page(r.pgdat, pfn)
    assert r.san.check_quiescent() == []


# --- RELEASE-KIND --------------------------------------------------------------------------
def test_release_kind_fires_on_put_page_of_a_pinned_page(rig: Rig) -> None:
    pfn = int(rig.pin(rig.buf(2), 2, holder="dio")[1])
    put_page(rig.pgdat, pfn)
    (v,) = rig.fired_on("RELEASE-KIND", pfn)
    assert v.message.startswith("put_page on a FOLL_PIN page at put_page")
    assert "'dio' via pin_user_pages_fast" in v.message


def test_release_kind_fires_on_put_page_of_a_pinned_thp_subpage(rig: Rig) -> None:
    pages = rig.pin(rig.thp(), 4)
    sub = int(pages[3])
    put_page(rig.pgdat, sub)
    (v,) = rig.fired_on("RELEASE-KIND", sub)
    assert f"(folio {rig.head(sub):#x}) has 4 outstanding pin(s)" in v.message


def test_release_kind_fires_on_unpin_of_a_page_got_with_foll_get(rig: Rig) -> None:
    pages = rig.get(rig.buf(3), 3, holder="bio")
    rig.unpin(pages[1:2])
    (v,) = rig.fired("RELEASE-KIND")
    assert v.pfns == (int(pages[1]),)
    assert rig.fired_on("RELEASE-KIND", int(pages[1]))
    assert "unpin of a page that was never pinned / got with FOLL_GET" in v.message
    assert "1 FOLL_GET reference(s) (FOLL_GET reference by 'bio'" in v.message


def test_release_kind_fires_on_unpin_twice_in_one_batch(rig: Rig) -> None:
    pfn = int(rig.pin(rig.buf(1), 1)[0])
    rig.unpin(np.array([pfn, pfn]))  # the same page twice: the second has no pin behind it
    (v,) = rig.fired_on("RELEASE-KIND", pfn)
    assert "has no outstanding pin" in v.message
    assert rig.san.pins[pfn] == 0


def test_release_kind_quiet_on_matched_releases(rig: Rig) -> None:
    addr = rig.buf(4)
    pinned = rig.pin(addr, 4, holder="dio")
    got = rig.get(addr, 4, holder="bio")  # same pages, both kinds
    assert rig.san.pins[pinned].tolist() == [1] * 4 and rig.san.gets[got].tolist() == [1] * 4
    put_pages(rig.pgdat, got)
    rig.unpin(pinned)
    # Pinned, then unmapped, then unpinned: munmap drops the page table's reference (a
    # "get" release the sanitizer never saw taken) while the pin keeps the page alive.
    pinned = rig.pin(addr, 4)
    rig.p.munmap(addr, 4 << PAGE_SHIFT)
    assert rig.san.pins[pinned].tolist() == [1] * 4
    rig.unpin(pinned)
    thp = rig.pin(rig.thp(), 512)
    rig.p.exit()
    rig.unpin(thp)
    assert rig.san.violations == []
    assert rig.san.check_quiescent() == []


# --- REFCOUNT-NONNEG ----------------------------------------------------------------------
def test_refcount_nonneg_fires_on_unpin_twice(rig: Rig) -> None:
    pfn = int(rig.pin(rig.buf(2), 2)[0])
    unpin_user_page(rig.pgdat, pfn)
    unpin_user_page(rig.pgdat, pfn)  # 1 (the PTE's reference) - 1024
    (v,) = rig.fired_on("REFCOUNT-NONNEG", pfn)
    assert f"pfn {pfn:#x} refcount is -1023" in v.message
    assert "overflow" not in v.message


def test_refcount_nonneg_reports_int32_overflow(rig: Rig) -> None:
    pfn = int(rig.pin(rig.buf(1), 1, holder="dio")[0])
    rig.pgdat.pages.refcount[pfn] = np.int32((1 << 31) - 1)  # as if 2**21 pins were held
    with np.errstate(over="ignore"):
        get_page(rig.pgdat, pfn)  # wraps to INT_MIN, as atomic_inc does
    assert rig.san.violations == []  # acquisitions are not checked on the hot path
    rig.san.check_all()
    (v,) = rig.fired_on("REFCOUNT-NONNEG", pfn)
    assert f"refcount reads {-(1 << 31)}: overflow" in v.message


def test_refcount_nonneg_quiet_on_balanced_use(rig: Rig) -> None:
    addr = rig.buf(4)
    for _ in range(3):
        pages = rig.pin(addr, 4)
        rig.unpin(pages)
    rig.p.munmap(addr, 4 << PAGE_SHIFT)  # frees them: refcount exactly 0, not below
    assert rig.pgdat.pages.refcount[pages].tolist() == [0] * 4
    assert rig.san.check_all() == []
    assert rig.san.violations == []


# --- NO-FREE-PINNED -----------------------------------------------------------------------
def test_no_free_pinned_fires_when_a_pinned_small_page_reaches_zero(rig: Rig) -> None:
    addr = rig.buf(1)
    pfn = int(rig.pin(addr, 1, holder="dio")[0])
    rig.p.munmap(addr, 1 << PAGE_SHIFT)  # refcount 1024: the pin alone
    put_pages(rig.pgdat, np.full(1024, pfn, np.int64))  # 1024 put_page()s: freed
    (v,) = rig.fired_on("NO-FREE-PINNED", pfn)
    assert "freed by put_page while 1 FOLL_PIN pin(s)" in v.message
    assert "'dio' via pin_user_pages_fast" in v.message
    assert rig.san.pins[pfn] == 0  # the frame is free: its old pins are forgotten


def test_no_free_pinned_fires_on_bad_page_of_a_pinned_large_folio(rig: Rig) -> None:
    base = rig.thp()
    sub = int(rig.pin(base + 0x5000, 1, holder="dio")[0])
    head = rig.head(sub)
    rig.p.munmap(base, HPAGE)  # refcount 1 (the pin), pincount 1
    put_page(rig.pgdat, sub)  # refcount 0 with pincount 1: bad_page refuses the free
    assert [e.site for e in rig.k.events.of_kind("BUG")] == ["bad_page"]
    (v,) = rig.fired_on("NO-FREE-PINNED", head)
    assert "nonzero pincount 1" in v.message and "'dio'" in v.message
    assert "KERNEL-BUG" not in rig.ids()


def test_no_free_pinned_fires_on_bad_page_of_a_mapped_page(rig: Rig) -> None:
    pfn = int(rig.pin(rig.buf(1), 1)[0])
    rig.unpin(np.array([pfn]))
    put_page(rig.pgdat, pfn)  # drops the page table's reference: mapped, refcount 0
    (v,) = rig.fired_on("NO-FREE-PINNED", pfn)
    assert "nonzero mapcount" in v.message


def test_no_free_pinned_quiet_when_the_last_unpin_frees(rig: Rig) -> None:
    addr = rig.buf(4)
    pages = rig.pin(addr, 4)
    rig.p.munmap(addr, 4 << PAGE_SHIFT)
    free_before = rig.pgdat.vmstat.nr_free_pages
    rig.unpin(pages)
    assert rig.pgdat.vmstat.nr_free_pages == free_before + 4  # armed: four frees seen
    assert rig.san.violations == []


# --- PIN-BIAS -----------------------------------------------------------------------------
def test_pin_bias_fires_when_a_small_pinned_page_loses_references(rig: Rig) -> None:
    addr = rig.buf(1)
    pfn = int(rig.pin(addr, 1)[0])
    rig.p.munmap(addr, 1 << PAGE_SHIFT)
    put_page(rig.pgdat, pfn)  # refcount 1023 with a pin outstanding
    rig.san.check_all()
    (v,) = rig.fired_on("PIN-BIAS", pfn)
    assert f"pfn {pfn:#x} has refcount 1023 < 1 pin(s) x 1024" in v.message


def test_pin_bias_fires_when_an_exact_pincount_disagrees(rig: Rig) -> None:
    sub = int(rig.pin(rig.thp(), 3)[2])
    head = rig.head(sub)
    rig.pgdat.pages.pincount[head] -= 1  # a release path that forgot the refcount
    rig.san.check_all()
    (v,) = rig.fired_on("PIN-BIAS", head)
    assert f"pfn {head:#x} has pincount 2 but 3 pin(s) outstanding" in v.message


def test_pin_bias_quiet_on_small_and_large_folios(rig: Rig) -> None:
    small = rig.pin(rig.buf(4), 4)
    thp = rig.pin(rig.thp(), 512)  # one head, 512 entries: each counts
    head = rig.head(int(thp[0]))
    assert rig.san.pins[head] == 512 and rig.pgdat.pages.pincount[head] == 512
    assert rig.san.check_all() == []
    rig.unpin(thp[:500])
    rig.unpin(small[:2])
    assert rig.san.pins[head] == 12
    assert rig.san.check_all() == []
    assert rig.san.violations == []


# --- KERNEL-BUG / KERNEL-WARN ------------------------------------------------------------
@pytest.mark.parametrize("profile", PROFILES)
def test_kernel_bug_on_null_in_unpin_user_pages(rig_for: RigFor, profile: str) -> None:
    r = rig_for(profile)
    pages = r.pin(r.buf(2), 2)
    r.unpin(np.array([pages[0], -1, pages[1]]))
    bugs = r.fired("KERNEL-BUG")
    if profile == "6.18":  # NULL entries are skipped since the 6.x unpin_user_pages
        assert bugs == [] and r.san.violations == []
    else:
        assert bugs and "NULL page pointer" in bugs[0].message
    assert r.san.check_quiescent() == []


def test_warns_are_collected_and_only_strict_makes_them_violations(rig_for: RigFor) -> None:
    for strict in (False, True):
        r = rig_for("6.18", strict_warn=strict)
        pages = np.full(1, -1, np.int64)
        ret = pin_user_pages_fast(r.p.mm, r.buf(1), 1, FOLL.FOLL_GET, pages)
        assert ret < 0
        assert [e.site for e in r.san.warnings] == ["pin_user_pages_fast"]
        assert r.ids() == (["KERNEL-WARN"] if strict else [])


def test_refcount_nonneg_checks_the_page_table_releases_too(rig: Rig) -> None:
    addr = rig.buf(2)
    pfn = int(rig.get(addr, 2)[1])
    put_page(rig.pgdat, pfn)
    rig.pgdat.pages.refcount[pfn] = 0  # a reference lost somewhere: the PTE's is the last
    rig.p.munmap(addr, 2 << PAGE_SHIFT)  # zap_pte_range drops it: -1
    (v,) = rig.fired_on("REFCOUNT-NONNEG", pfn)
    assert f"pfn {pfn:#x} refcount is -1" in v.message


def test_pin_bias_quiet_when_gup_fast_pins_a_non_contiguous_run(rig_for: RigFor) -> None:
    r = rig_for("5.9")
    addr = r.buf(20)
    r.pin(addr, 3, flags=0)
    r.p.madvise(addr + (2 << PAGE_SHIFT), 1 << PAGE_SHIFT, MADV_DONTNEED)
    r.pin(addr, 3)  # FOLL_WRITE: slot 2 faults in a new page elsewhere
    slots = r.p.mm.vmas[0].pt_pfn[1:4].tolist()
    assert slots[2] - slots[0] == 2 and slots[1] != slots[0] + 1  # the awkward shape
    pages = r.pin(addr + (1 << PAGE_SHIFT), 3, flags=0)
    assert pages.tolist() == slots
    assert r.san.check_all() == []


def test_kernel_event_rules_check_an_event_log(rig: Rig) -> None:
    rig.k.events.warn("somewhere", "odd")
    rig.k.events.bug("elsewhere", "page pfn:0x2a broken")
    bug, warn = RULES["KERNEL-BUG"], RULES["KERNEL-WARN"]
    assert isinstance(bug, KernelEventRule) and isinstance(warn, KernelEventRule)
    (v,) = bug.check(rig.san, rig.k.events.events)
    assert v.rule == "KERNEL-BUG" and v.pfns == (0x2A,) and "BUG at elsewhere" in v.message
    assert [w.rule for w in warn.check(rig.san, rig.k.events.events)] == ["KERNEL-WARN"]
    assert rig.ids() == ["KERNEL-BUG"]  # WARNs are collected, not violations, by default

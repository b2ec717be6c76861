"""Page faults, COW and unmapping (``mm/memory.c``, ``mm/huge_memory.c``).

* Private anonymous memory: a read fault maps the shared zero page (``do_anonymous_page``);
  a write fault allocates a zeroed page; a write to a read-only present page goes through
  ``do_wp_page``: reuse when the page is exclusive, otherwise copy.
* THP (VM_HUGEPAGE on a 2 MiB-aligned, fully-empty range): a write fault allocates an order-9
  folio mapped by one PMD (``do_huge_pmd_anonymous_page``); a read fault maps the huge zero
  folio. A write to a read-only PMD reuses the THP if nothing else may use it, otherwise
  falls back to PTEs (``__split_huge_pmd``) and COWs one base page, as
  ``do_huge_pmd_wp_page`` does since v5.8 (``_wp_can_reuse_pmd``).
* Shared anonymous memory: pages come from the shmem file; mapped writable if VM_WRITE.
* File mappings (a ``vm_file`` with ``fault``/``page_mkwrite``, ``mm.filemap.MappedFile``):
  ``do_fault``. A read fault maps the page-cache page read-only (``do_read_fault``; shared
  writable mappings too, ``vma_wants_writenotify``); a write fault on a shared mapping calls
  ``page_mkwrite`` (block allocation, PG_dirty) and maps the page writable and dirty
  (``do_shared_fault``), as does a later write to the read-only PTE (``wp_page_shared``); a
  write fault on a private mapping copies the page-cache page into a new anonymous page
  (``do_cow_fault``), as does a write to a read-only page-cache PTE there (``wp_page_copy``:
  a page-cache page is never reused, only anonymous pages are).

Reuse rule for a write fault on an anonymous page (``do_wp_page``):

* [5.9] Linux commit 09854ba94c6a ("mm: do_wp_page() simplification") (v5.9): reuse only a
  small page whose refcount is exactly 1; anything else (a GUP reference, a pin, a COW
  sharer, a large folio) is copied.
* [6.18] (ANON_EXCLUSIVE): reuse a PageAnonExclusive page at once; otherwise reuse a small
  page with refcount 1 and mark it exclusive; otherwise copy.

Every PTE that maps a page holds one reference on its folio and one mapcount on the subpage;
a PMD mapping holds one reference and one ``entire_mapcount`` on the head. Zero-page PTEs are
"special" and hold neither.
"""

from __future__ import annotations

import enum

import numpy as np

from ..kernel.types import HPAGE_PMD_NR, HPAGE_PMD_ORDER, PAGE_SHIFT
from .mm_types import VM, VmArea
from .page import PG
from .page_alloc import ZERO_PFN, PgData, alloc_pages, alloc_pages_bulk
from .page_ref import drop_refs, folio_put_refs, page_ref_add
from .pgtable import (
    PTE_ACCESSED,
    PTE_DIRTY,
    PTE_FASTPIN,
    PTE_PMD,
    PTE_PRESENT,
    PTE_RW,
    PTE_SPECIAL,
)

__all__ = [
    "FAULT_FLAG",
    "VM_FAULT",
    "access_error",
    "handle_mm_fault",
    "mm_get_huge_zero_folio",
    "populate_range",
    "split_huge_pmd",
    "zap_page_range",
]

PTE_PROTNONE = np.uint8(0x01)
"""``_PAGE_PROTNONE``: mapped but inaccessible (PROT_NONE); PRESENT is clear, as on x86."""

_ANON_NEW_FLAGS = np.uint32(PG.PG_anon | PG.PG_anon_exclusive | PG.PG_swapbacked | PG.PG_uptodate)


class FAULT_FLAG(enum.IntFlag):
    """``enum fault_flag`` (``include/linux/mm_types.h``), the bits the model uses."""

    FAULT_FLAG_WRITE = 1 << 0
    FAULT_FLAG_REMOTE = 1 << 7
    FAULT_FLAG_UNSHARE = 1 << 10


class VM_FAULT(enum.IntFlag):
    """``enum vm_fault_reason``: 0 means the fault was handled."""

    VM_FAULT_OOM = 0x1
    VM_FAULT_SIGBUS = 0x2
    VM_FAULT_SIGSEGV = 0x40
    VM_FAULT_FALLBACK = 0x800


def access_error(vma: VmArea, write: bool) -> bool:
    """``access_error()`` (arch/x86/mm/fault.c): the VMA does not allow this access."""
    if write:
        return not vma.vm_flags & VM.VM_WRITE
    return not vma.vm_flags & (VM.VM_READ | VM.VM_WRITE | VM.VM_EXEC)


def mm_get_huge_zero_folio(pgdat: PgData) -> int:
    """``mm_get_huge_zero_folio()``: the huge zero folio, allocated on first use.

    Return: its head pfn, or -1 if no order-9 block is free.
    """
    if pgdat.huge_zero_pfn < 0:
        pfn = alloc_pages(pgdat, HPAGE_PMD_ORDER, zero=True)
        if pfn < 0:
            return -1
        pgdat.pages.flags[pfn] |= np.uint32(PG.PG_uptodate)
        pgdat.huge_zero_pfn = pfn
    return pgdat.huge_zero_pfn


# --- helpers -------------------------------------------------------------------------------
def _new_anon(pgdat: PgData, vma: VmArea, pfns: np.ndarray, slots: np.ndarray) -> None:
    """``folio_add_new_anon_rmap()`` for freshly allocated small pages."""
    p = pgdat.pages
    p.flags[pfns] |= _ANON_NEW_FLAGS
    p.mapping[pfns] = vma.anon_id
    p.index[pfns] = (vma.vm_start >> PAGE_SHIFT) + slots
    p.mapcount[pfns] = 1


def _pmd_region(vma: VmArea, slot: int) -> tuple[int, int] | None:
    """Slots of the 2 MiB-aligned region around ``slot`` if it lies wholly in the VMA."""
    addr = vma.vm_start + (slot << PAGE_SHIFT)
    base = addr & ~((HPAGE_PMD_NR << PAGE_SHIFT) - 1)
    if base < vma.vm_start or base + (HPAGE_PMD_NR << PAGE_SHIFT) > vma.vm_end:
        return None
    s0 = (base - vma.vm_start) >> PAGE_SHIFT
    return s0, s0 + HPAGE_PMD_NR


def _thp_eligible(vma: VmArea, slot: int) -> tuple[int, int] | None:
    """``thp_vma_allowable_order()`` for THP=madvise: VM_HUGEPAGE, aligned, all slots empty."""
    if not vma.vm_flags & VM.VM_HUGEPAGE or not vma.is_anonymous():
        return None
    if vma.vm_flags & VM.VM_SHARED:
        return None
    region = _pmd_region(vma, slot)
    if region is None:
        return None
    s0, s1 = region
    if (vma.pt_pfn[s0:s1] >= 0).any():
        return None
    return region


def split_huge_pmd(vma: VmArea, slot: int) -> None:
    """``__split_huge_pmd()``: turn the PMD mapping covering ``slot`` into 512 PTEs.

    The folio stays large (its split is deferred); each PTE now holds a reference and a
    mapcount on its subpage. A huge-zero PMD becomes 512 small-zero-page PTEs.
    """
    if not vma.pt_flags[slot] & PTE_PMD:
        return
    pgdat = vma.vm_mm.pgdat
    p = pgdat.pages
    region = _pmd_region(vma, slot)
    assert region is not None, "a PMD mapping always covers an aligned region of its VMA"
    s0, s1 = region
    head = int(vma.pt_pfn[s0])
    keep = vma.pt_flags[s0:s1] & ~PTE_PMD
    if head == pgdat.huge_zero_pfn:
        vma.pt_pfn[s0:s1] = ZERO_PFN
        vma.pt_flags[s0:s1] = PTE_PRESENT | PTE_SPECIAL | PTE_ACCESSED
        return
    p.entire_mapcount[head] -= 1
    p.mapcount[head : head + HPAGE_PMD_NR] += 1
    page_ref_add(pgdat, head, HPAGE_PMD_NR - 1)
    vma.pt_flags[s0:s1] = keep


# --- zap -----------------------------------------------------------------------------------
def zap_page_range(vma: VmArea, s0: int, s1: int, site: str = "zap_pte_range") -> None:
    """``zap_page_range_single()``: unmap slots ``[s0, s1)`` and drop their references.

    PMD mappings that straddle the boundary are split first.
    """
    if s0 >= s1:
        return
    for edge in (s0, s1 - 1):
        if vma.pt_flags[edge] & PTE_PMD:
            region = _pmd_region(vma, edge)
            if region is not None and (region[0] < s0 or region[1] > s1):
                split_huge_pmd(vma, edge)
    pgdat = vma.vm_mm.pgdat
    p = pgdat.pages
    pfns = vma.pt_pfn[s0:s1]
    flags = vma.pt_flags[s0:s1]
    mapped = pfns >= 0
    if not mapped.any():
        return
    special = (flags & PTE_SPECIAL) != 0
    pmd = (flags & PTE_PMD) != 0
    # Dirty PTEs of page-cache pages hand their dirty bit to the page; anonymous pages do
    # not get PG_dirty from an unmap (zap_present_folio_ptes() [6.x] / zap_pte_range() [5.9]
    # call folio_mark_dirty() only when !folio_test_anon()). A pinned anon page zapped here
    # must still be dirtied by unpin_user_pages_dirty_lock().
    dirty = mapped & ~special & ((flags & PTE_DIRTY) != 0)
    if dirty.any():
        dp = pfns[dirty]
        dp = dp[(p.flags.take(dp) & np.uint32(PG.PG_anon)) == 0]
        if len(dp):
            p.flags[dp] |= np.uint32(PG.PG_dirty)
    if pmd.any():
        heads = np.unique(p.head.take(pfns[pmd]))
        for h in heads.tolist():
            if h == pgdat.huge_zero_pfn:
                continue
            p.entire_mapcount[h] -= 1
            folio_put_refs(pgdat, h, 1, site)
    small = mapped & ~special & ~pmd
    if small.any():
        sp = pfns[small]
        np.subtract.at(p.mapcount, sp, np.int32(1))
        drop_refs(pgdat, sp, site)
    vma.pt_pfn[s0:s1] = -1
    vma.pt_flags[s0:s1] = 0


# --- faults --------------------------------------------------------------------------------
def _mkwrite(vma: VmArea) -> np.uint8:
    """``maybe_mkwrite()``: the RW bit only if the VMA is writable (a FOLL_FORCE write into a
    read-only private mapping gets a dirty but read-only PTE)."""
    return PTE_RW if vma.vm_flags & VM.VM_WRITE else np.uint8(0)


def _do_anonymous_page(vma: VmArea, slot: int, write: bool) -> int:
    pgdat = vma.vm_mm.pgdat
    if not write:
        vma.pt_pfn[slot] = ZERO_PFN
        vma.pt_flags[slot] = PTE_PRESENT | PTE_SPECIAL | PTE_ACCESSED
        return 0
    pfn = alloc_pages(pgdat, 0, zero=True)
    if pfn < 0:
        return VM_FAULT.VM_FAULT_OOM
    _new_anon(pgdat, vma, np.array([pfn]), np.array([slot]))
    vma.pt_pfn[slot] = pfn
    vma.pt_flags[slot] = PTE_PRESENT | PTE_FASTPIN | _mkwrite(vma) | PTE_DIRTY | PTE_ACCESSED
    return 0


def _do_huge_pmd_anonymous_page(vma: VmArea, s0: int, write: bool) -> int:
    """``do_huge_pmd_anonymous_page()``. Return: 0, or VM_FAULT_FALLBACK."""
    pgdat = vma.vm_mm.pgdat
    s1 = s0 + HPAGE_PMD_NR
    if not write:
        hz = mm_get_huge_zero_folio(pgdat)
        if hz < 0:
            return VM_FAULT.VM_FAULT_FALLBACK
        vma.pt_pfn[s0:s1] = np.arange(hz, hz + HPAGE_PMD_NR, dtype=np.int64)
        vma.pt_flags[s0:s1] = PTE_PRESENT | PTE_SPECIAL | PTE_PMD | PTE_ACCESSED
        return 0
    head = alloc_pages(pgdat, HPAGE_PMD_ORDER, zero=True)
    if head < 0:
        return VM_FAULT.VM_FAULT_FALLBACK
    pfns = np.arange(head, head + HPAGE_PMD_NR, dtype=np.int64)
    p = pgdat.pages
    p.flags[pfns] |= np.uint32(PG.PG_anon | PG.PG_swapbacked | PG.PG_uptodate)
    p.flags[head] |= np.uint32(PG.PG_anon_exclusive | PG.PG_large_rmappable)
    p.flags[pfns] |= np.uint32(PG.PG_anon_exclusive)
    p.mapping[pfns] = vma.anon_id
    p.index[pfns] = (vma.vm_start >> PAGE_SHIFT) + np.arange(s0, s1)
    p.entire_mapcount[head] = 1
    vma.pt_pfn[s0:s1] = pfns
    vma.pt_flags[s0:s1] = PTE_PRESENT | _mkwrite(vma) | PTE_DIRTY | PTE_PMD | PTE_ACCESSED
    pgdat.vmstat.thp_fault_alloc += 1
    return 0


def _wp_can_reuse(pgdat: PgData, pfn: int) -> bool:
    """The reuse test of ``do_wp_page()`` for an anonymous page, per profile."""
    p = pgdat.pages
    if pgdat.cfg.ANON_EXCLUSIVE and int(p.flags[pfn]) & PG.PG_anon_exclusive:
        return True
    if int(p.order[pfn]) != 0:
        return False
    return int(p.refcount[pfn]) == 1 and int(p.mapcount[pfn]) == 1


def _wp_can_reuse_pmd(pgdat: PgData, head: int) -> bool:
    """The reuse test of ``do_huge_pmd_wp_page()`` for an anonymous THP mapped by a read-only
    PMD; when it fails the PMD is split and one base page is COWed.

    * [5.9] Linux commit 3917c80280c9 ("thp: change CoW semantics for anon-THP") (v5.8):
      reuse when nothing else maps the THP (``reuse_swap_page()``: total mapcount 1); other
      references, GUP ones included, do not count.
    * [6.18] (ANON_EXCLUSIVE) Linux commit 3bff7e3f1f16 ("mm/huge_memory: streamline COW
      logic in do_huge_pmd_wp_page()") (v5.18): reuse a PageAnonExclusive THP at once, or one
      whose refcount is exactly 1 (then mark it exclusive). Measured on the host (6.18): after
      fork() and the child's exit, a write keeps the THP and takes one fault.
    """
    p = pgdat.pages
    if pgdat.cfg.ANON_EXCLUSIVE:
        return bool(int(p.flags[head]) & PG.PG_anon_exclusive) or int(p.refcount[head]) == 1
    return int(p.entire_mapcount[head]) == 1 and not p.mapcount[head : head + HPAGE_PMD_NR].any()


def _wp_page_copy(vma: VmArea, slot: int, writable: bool) -> int:
    """``wp_page_copy()``: give this PTE its own copy of the page it maps."""
    pgdat = vma.vm_mm.pgdat
    p = pgdat.pages
    old = int(vma.pt_pfn[slot])
    new = alloc_pages(pgdat, 0, zero=old == ZERO_PFN)
    if new < 0:
        return VM_FAULT.VM_FAULT_OOM
    if old != ZERO_PFN:
        pgdat.mem.copy_page(new, old)
    _new_anon(pgdat, vma, np.array([new]), np.array([slot]))
    vma.pt_pfn[slot] = new
    fl = PTE_PRESENT | PTE_FASTPIN | PTE_ACCESSED
    vma.pt_flags[slot] = fl | _mkwrite(vma) | PTE_DIRTY if writable else fl
    if old != ZERO_PFN:
        p.mapcount[old] -= 1
        folio_put_refs(pgdat, int(p.head[old]), 1, "wp_page_copy")
    return 0


def _do_wp_page(vma: VmArea, slot: int, unshare: bool) -> int:
    """``do_wp_page()``: a write (or unshare) fault on a present read-only PTE."""
    pgdat = vma.vm_mm.pgdat
    p = pgdat.pages
    pfn = int(vma.pt_pfn[slot])
    if vma.vm_flags & VM.VM_SHARED:
        if unshare:
            return 0
        # wp_page_shared(): no COW in shared maps; do_page_mkwrite() lets the filesystem
        # allocate; fault_dirty_shared_page() dirties the page.
        mkwrite = getattr(vma.vm_file, "page_mkwrite", None)
        if mkwrite is not None:
            ret = int(mkwrite(pfn))
            if ret:
                return ret
        vma.pt_flags[slot] |= PTE_RW | PTE_DIRTY
        p.flags[p.head[pfn]] |= np.uint32(PG.PG_dirty)
        return 0
    if pfn == ZERO_PFN or not int(p.flags[pfn]) & PG.PG_anon:
        # The zero page, or a page-cache page of a private file mapping: always copied.
        return _wp_page_copy(vma, slot, writable=not unshare)
    if _wp_can_reuse(pgdat, pfn):
        p.flags[pfn] |= np.uint32(PG.PG_anon_exclusive)
        fl = vma.pt_flags[slot] | PTE_ACCESSED
        if int(p.order[pfn]) == 0:
            fl |= PTE_FASTPIN
        if not unshare:
            fl |= _mkwrite(vma) | PTE_DIRTY
        vma.pt_flags[slot] = fl
        return 0
    return _wp_page_copy(vma, slot, writable=not unshare)


def _do_shared_fault(vma: VmArea, slot: int, write: bool) -> int:
    """``do_read_fault()`` / ``do_shared_fault()`` on a shared mapping: map the page-cache
    page. A write fault maps it dirty and marks the page dirty (``fault_dirty_shared_page()``
    calls ``folio_mark_dirty()``); a read fault maps it clean (writable if VM_WRITE: shmem
    wants no write notification)."""
    pgdat = vma.vm_mm.pgdat
    shm = vma.vm_file
    pfn = shm.get_folio(vma.vm_pgoff + slot)
    if pfn < 0:
        return VM_FAULT.VM_FAULT_OOM
    p = pgdat.pages
    page_ref_add(pgdat, pfn, 1)
    p.mapcount[pfn] += 1
    vma.pt_pfn[slot] = pfn
    fl = PTE_PRESENT | PTE_ACCESSED
    if vma.vm_flags & VM.VM_WRITE:
        fl |= PTE_RW
    if write and vma.vm_flags & VM.VM_SHARED:
        fl |= PTE_DIRTY
        p.flags[p.head[pfn]] |= np.uint32(PG.PG_dirty)
    vma.pt_flags[slot] = fl
    return 0


def _do_fault(vma: VmArea, slot: int, write: bool) -> int:
    """``do_fault()`` for a file mapping whose ``vm_file`` has ``fault`` (the page cache):
    ``do_read_fault`` / ``do_cow_fault`` / ``do_shared_fault``.

    Return: 0, or the VM_FAULT bits of ``fault`` / ``page_mkwrite`` (SIGBUS past EOF or on
    ENOSPC, OOM).
    """
    pgdat = vma.vm_mm.pgdat
    f = vma.vm_file
    ret, pfn = f.fault(vma.vm_pgoff + slot)
    if ret:
        return int(ret)
    p = pgdat.pages
    if write and not vma.vm_flags & VM.VM_SHARED:
        # do_cow_fault(): a private anonymous copy of the page-cache page.
        new = alloc_pages(pgdat, 0)
        if new < 0:
            return VM_FAULT.VM_FAULT_OOM
        pgdat.mem.copy_page(new, pfn)
        _new_anon(pgdat, vma, np.array([new]), np.array([slot]))
        vma.pt_pfn[slot] = new
        vma.pt_flags[slot] = PTE_PRESENT | PTE_FASTPIN | PTE_ACCESSED | _mkwrite(vma) | PTE_DIRTY
        return 0
    if write:
        ret = int(f.page_mkwrite(pfn))  # do_shared_fault(): do_page_mkwrite()
        if ret:
            return ret
    page_ref_add(pgdat, pfn, 1)
    p.mapcount[pfn] += 1
    vma.pt_pfn[slot] = pfn
    fl = PTE_PRESENT | PTE_ACCESSED
    if write:
        fl |= _mkwrite(vma) | PTE_DIRTY
    elif vma.vm_flags & VM.VM_SHARED and vma.vm_flags & VM.VM_WRITE and not f.writenotify:
        fl |= PTE_RW
    vma.pt_flags[slot] = fl
    return 0


def handle_mm_fault(vma: VmArea, address: int, flags: int) -> int:
    """``handle_mm_fault()``: resolve one fault at ``address`` in ``vma``.

    Context: the caller checked the access against the VMA (``access_error`` or GUP's
    ``check_vma_flags``).
    Return: 0 when handled, or VM_FAULT_* error bits (OOM, SIGSEGV).
    """
    pgdat = vma.vm_mm.pgdat
    pgdat.vmstat.pgfault += 1
    write = bool(flags & FAULT_FLAG.FAULT_FLAG_WRITE)
    unshare = bool(flags & FAULT_FLAG.FAULT_FLAG_UNSHARE)
    slot = vma.slot(address)
    pfn = int(vma.pt_pfn[slot])
    fl = vma.pt_flags[slot]
    if fl & PTE_PROTNONE:
        return VM_FAULT.VM_FAULT_SIGSEGV
    if vma.vm_file is not None:
        page_cache = hasattr(vma.vm_file, "fault")
        if pfn < 0:
            if page_cache:
                return _do_fault(vma, slot, write)
            ret = _do_shared_fault(vma, slot, write)
            if ret or not write:
                return ret
            return 0
        if vma.vm_flags & VM.VM_SHARED or not page_cache:
            if write and not fl & PTE_RW:
                return _do_wp_page(vma, slot, unshare=False)
            return 0
        # A private file mapping with a present PTE: COW as for anonymous memory below.
    if pfn < 0:
        region = _thp_eligible(vma, slot)
        if region is not None and _do_huge_pmd_anonymous_page(vma, region[0], write) == 0:
            return 0
        return _do_anonymous_page(vma, slot, write)
    if (
        fl & PTE_PMD
        and write
        and int(pgdat.pages.head[pfn]) == pgdat.huge_zero_pfn
        and pgdat.cfg.THP_ON_HUGE_ZERO_WP
    ):
        # Linux commit 1ced09e0331f: a write to the huge zero PMD maps a fresh THP.
        region = _pmd_region(vma, slot)
        assert region is not None
        vma.pt_pfn[region[0] : region[1]] = -1
        vma.pt_flags[region[0] : region[1]] = 0
        if _do_huge_pmd_anonymous_page(vma, region[0], True) == 0:
            return 0
        vma.pt_pfn[region[0] : region[1]] = np.arange(
            pgdat.huge_zero_pfn, pgdat.huge_zero_pfn + HPAGE_PMD_NR, dtype=np.int64)
        vma.pt_flags[region[0] : region[1]] = PTE_PRESENT | PTE_SPECIAL | PTE_PMD | PTE_ACCESSED
    if fl & PTE_PMD and ((write and not fl & PTE_RW) or unshare):
        head = int(pgdat.pages.head[pfn])
        if head != pgdat.huge_zero_pfn and _wp_can_reuse_pmd(pgdat, head):
            # do_huge_pmd_wp_page(): reuse the whole THP, still mapped by this PMD.
            region = _pmd_region(vma, slot)
            assert region is not None
            pgdat.pages.flags[head : head + HPAGE_PMD_NR] |= np.uint32(PG.PG_anon_exclusive)
            if not unshare:
                vma.pt_flags[region[0] : region[1]] |= PTE_ACCESSED | _mkwrite(vma) | PTE_DIRTY
            return 0
        # do_huge_pmd_wp_page / unshare: fall back to PTEs, then handle the base page.
        split_huge_pmd(vma, slot)
        fl = vma.pt_flags[slot]
    if write and not fl & PTE_RW:
        return _do_wp_page(vma, slot, unshare=False)
    if unshare:
        return _do_wp_page(vma, slot, unshare=True)
    return 0


def populate_range(vma: VmArea, s0: int, s1: int, write: bool) -> int:
    """Fault in every slot of ``[s0, s1)`` that a ``write``/read access would fault on.

    The vectorized equivalent of calling ``handle_mm_fault`` per page (``populate_vma_page_range``
    / a CPU touching every page): empty slots of a private anonymous VMA are filled in bulk.
    Return: 0, or the VM_FAULT bits of the first failure.
    """
    fl = vma.pt_flags[s0:s1]
    need = PTE_PRESENT | (PTE_RW if write else np.uint8(0))
    todo = np.flatnonzero((fl & need) != need)
    if not len(todo):
        return 0
    pgdat = vma.vm_mm.pgdat
    if (
        write
        and vma.is_anonymous()
        and not vma.vm_flags & (VM.VM_SHARED | VM.VM_HUGEPAGE)
        and (vma.pt_pfn[s0:s1][todo] < 0).all()
    ):
        # Bulk do_anonymous_page(): every target slot is empty.
        slots = todo + s0
        pfns = alloc_pages_bulk(pgdat, len(slots), zero=True)
        if len(pfns) < len(slots):
            drop_refs(pgdat, pfns, "populate_range")
            return VM_FAULT.VM_FAULT_OOM
        _new_anon(pgdat, vma, pfns, slots)
        vma.pt_pfn[slots] = pfns
        vma.pt_flags[slots] = (
            PTE_PRESENT | PTE_FASTPIN | _mkwrite(vma) | PTE_DIRTY | PTE_ACCESSED
        )
        pgdat.vmstat.pgfault += len(slots)
        return 0
    fflags = FAULT_FLAG.FAULT_FLAG_WRITE if write else 0
    for i in todo.tolist():
        slot = s0 + i
        f = vma.pt_flags[slot]
        if (f & need) == need:  # an earlier fault (a THP) already covered it
            continue
        ret = handle_mm_fault(vma, vma.vm_start + (slot << PAGE_SHIFT), fflags)
        if ret:
            return ret
    return 0

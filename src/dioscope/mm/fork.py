"""fork(): duplicating an address space (``kernel/fork.c`` ``dup_mmap``, ``mm/memory.c``
``copy_page_range`` / ``copy_present_pte``, ``mm/huge_memory.c`` ``copy_huge_pmd``).

Shared mappings are shared: the child's PTEs take a reference and a mapcount on the same
pages. Private anonymous pages are COW-shared: both PTEs become read-only, the page gains a
reference and a mapcount, and it stops being exclusive, except:

* Early COW of pinned pages (profile switch EARLY_COW_PINNED_AT_FORK, Linux commit
  70e806e4e645 ("mm: Do early cow for pinned pages during fork() for ptes") (v5.9)): if the
  parent mm has ever pinned (``has_pinned`` / MMF_HAS_PINNED) and the page may be DMA-pinned,
  the child gets a copy at once and the parent keeps its writable page, so a DMA into it stays
  visible to the parent. A PMD-mapped THP that may be pinned is first split into PTEs
  (``copy_huge_pmd`` returns -EAGAIN after ``__split_huge_pmd``), then each subpage is copied:
  the THP's pincount answers for every subpage.
  [6.18] (ANON_EXCLUSIVE) only a PageAnonExclusive page is copied early: a pinned anon page
  is always exclusive, so a maybe-pinned page that is already COW-shared (a false positive
  of the refcount test) stays shared (``__folio_try_dup_anon_rmap()`` returns -EBUSY only
  for an exclusive page; Linux commit 6c287605fd56 ("mm: remember exclusively mapped
  anonymous pages with PG_anon_exclusive") (v5.19)).
* The zero page and the huge zero folio are mapped in the child as they are.
"""

from __future__ import annotations

import numpy as np

from ..kernel.types import HPAGE_PMD_NR
from .gup_core import folio_maybe_dma_pinned, maybe_dma_pinned_mask
from .memory import PTE_PROTNONE, _new_anon, split_huge_pmd
from .mm_types import VM, MmStruct, VmArea, vma_link_file
from .page import PG
from .page_alloc import PgData, alloc_pages
from .page_ref import page_ref_add
from .pgtable import PTE_ACCESSED, PTE_DIRTY, PTE_FASTPIN, PTE_PMD, PTE_PRESENT, PTE_RW, PTE_SPECIAL

__all__ = ["dup_mmap"]

_NOT_EXCL = np.uint32(~PG.PG_anon_exclusive & 0xFFFFFFFF)


def _may_copy(pgdat: PgData, page: int) -> bool:
    """Whether early COW may copy this maybe-pinned page: [5.9] always; [6.18] only an
    exclusive one."""
    return not pgdat.cfg.ANON_EXCLUSIVE or bool(
        int(pgdat.pages.flags[page]) & PG.PG_anon_exclusive
    )


def _copy_shared(src: VmArea, dst: VmArea) -> None:
    p = src.vm_mm.pgdat.pages
    mapped = (src.pt_pfn >= 0) & ((src.pt_flags & PTE_SPECIAL) == 0)
    pfns = src.pt_pfn[mapped]
    if len(pfns):
        np.add.at(p.refcount, p.head.take(pfns), np.int32(1))
        np.add.at(p.mapcount, pfns, np.int32(1))
    dst.pt_pfn[:] = src.pt_pfn
    dst.pt_flags[:] = src.pt_flags


def _copy_pmds(src: VmArea, dst: VmArea, early_cow: bool) -> None:
    """``copy_huge_pmd()`` for every PMD mapping of ``src``."""
    pgdat = src.vm_mm.pgdat
    p = pgdat.pages
    # A PMD maps an aligned folio, so each region's first slot holds the folio head.
    pmd_slots = np.flatnonzero(src.pt_flags & PTE_PMD)
    firsts = pmd_slots[src.pt_pfn[pmd_slots] == p.head.take(src.pt_pfn[pmd_slots])]
    for s0 in firsts.tolist():
        s1 = s0 + HPAGE_PMD_NR
        head = int(src.pt_pfn[s0])
        if head == pgdat.huge_zero_pfn:
            dst.pt_pfn[s0:s1] = src.pt_pfn[s0:s1]
            dst.pt_flags[s0:s1] = src.pt_flags[s0:s1]
            continue
        if early_cow and folio_maybe_dma_pinned(pgdat, head) and _may_copy(pgdat, head):
            split_huge_pmd(src, s0)  # then copied as PTEs below
            continue
        page_ref_add(pgdat, head, 1)
        p.entire_mapcount[head] += 1
        p.flags[head : head + HPAGE_PMD_NR] &= _NOT_EXCL
        src.pt_flags[s0:s1] &= ~PTE_RW
        dst.pt_pfn[s0:s1] = src.pt_pfn[s0:s1]
        dst.pt_flags[s0:s1] = src.pt_flags[s0:s1]


def _copy_private(src: VmArea, dst: VmArea, early_cow: bool) -> None:
    """``copy_pte_range()`` for a private mapping."""
    pgdat = src.vm_mm.pgdat
    p = pgdat.pages
    if (src.pt_flags & PTE_PMD).any():
        _copy_pmds(src, dst, early_cow)
    fl = src.pt_flags
    mapped = (src.pt_pfn >= 0) & ((fl & PTE_PMD) == 0)
    special = mapped & ((fl & PTE_SPECIAL) != 0)
    dst.pt_pfn[special] = src.pt_pfn[special]
    dst.pt_flags[special] = fl[special]
    pages = mapped & ~special
    if not pages.any():
        return
    slots = np.flatnonzero(pages)
    pfns = src.pt_pfn[slots]
    copy = maybe_dma_pinned_mask(pgdat, pfns) if early_cow else np.zeros(len(slots), bool)
    if pgdat.cfg.ANON_EXCLUSIVE and copy.any():
        copy &= (p.flags.take(pfns) & np.uint32(PG.PG_anon_exclusive)) != 0
    share_slots, share_pfns = slots[~copy], pfns[~copy]
    if len(share_slots):
        np.add.at(p.refcount, p.head.take(share_pfns), np.int32(1))
        np.add.at(p.mapcount, share_pfns, np.int32(1))
        p.flags[share_pfns] &= _NOT_EXCL
        wp = np.uint8(~(PTE_RW | PTE_FASTPIN) & 0xFF)
        fl[share_slots] &= wp
        dst.pt_pfn[share_slots] = share_pfns
        dst.pt_flags[share_slots] = fl[share_slots]
    for slot, old in zip(slots[copy].tolist(), pfns[copy].tolist(), strict=True):
        # copy_present_page(): the child gets its own copy of a maybe-pinned page.
        new = alloc_pages(pgdat, 0)
        if new < 0:
            pgdat.events.warn_once("copy_present_page", "out of memory during fork")
            continue
        pgdat.mem.copy_page(new, old)
        _new_anon(pgdat, dst, np.array([new]), np.array([slot]))
        dst.pt_pfn[slot] = new
        f = PTE_PRESENT | PTE_FASTPIN | PTE_DIRTY | PTE_ACCESSED
        if dst.vm_flags & VM.VM_WRITE:
            f |= PTE_RW
        if fl[slot] & PTE_PROTNONE:
            f = (f & ~PTE_PRESENT) | PTE_PROTNONE
        dst.pt_flags[slot] = f


def dup_mmap(oldmm: MmStruct) -> MmStruct:
    """Duplicate ``oldmm`` for a child process (``dup_mm`` -> ``dup_mmap``).

    The child's mm starts without ``has_pinned`` (MMF_HAS_PINNED is not inherited).
    """
    pgdat = oldmm.pgdat
    mm = MmStruct(pgdat)
    oldmm.write_protect_seq += 1  # raw_write_seqcount_begin: GUP-fast pins must retry
    early_cow = pgdat.cfg.EARLY_COW_PINNED_AT_FORK and oldmm.has_pinned
    for src in oldmm.vmas:
        dst = VmArea(mm, src.vm_start, src.vm_end, src.vm_flags, src.vm_file, src.vm_pgoff)
        dst.anon_id = src.anon_id
        if src.vm_file is not None:
            src.vm_file.get()
            vma_link_file(dst)
        if src.vm_flags & VM.VM_SHARED:
            _copy_shared(src, dst)
        else:
            _copy_private(src, dst, early_cow)
        mm.insert_vma(dst)
    oldmm.write_protect_seq += 1
    return mm

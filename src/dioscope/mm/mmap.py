"""mmap, munmap, mprotect and madvise (``mm/mmap.c``, ``mm/mprotect.c``, ``mm/madvise.c``).

Each function checks its arguments as the syscall does and returns 0 / an address or -errno.
File mappings: :func:`do_mmap` takes any ``vm_file`` object that has ``get()``, ``put()`` and
``get_folio(index)`` (the shmem file); a page-cache file (``mm.filemap.MappedFile``) also has
``fault``, ``page_mkwrite``, ``f_mode`` and ``i_mmap_insert`` (its VMAs enter the file's
reverse map: ``vma_link_file``).

Addresses are chosen top-down below ``mmap_base`` (``arch_get_unmapped_area_topdown``);
anonymous mappings whose length is a multiple of 2 MiB are placed 2 MiB-aligned, as Linux
commit efa7df3e3bb5 ("mm: align larger anonymous mappings on THP boundaries") (v6.7) does.
SIMPLIFIED: the model does that in every profile, so THP tests read the same everywhere.
"""

from __future__ import annotations

import errno
import mmap as _pymmap
from typing import Any

import numpy as np

from ..kernel.types import HPAGE_PMD_SIZE, PAGE_SIZE, TASK_SIZE
from .memory import PTE_PROTNONE, populate_range, split_huge_pmd, zap_page_range
from .mm_types import VM, MmStruct, VmArea, unlink_file_vma, vma_link_file
from .page import PG
from .pgtable import PTE_DIRTY, PTE_PMD, PTE_PRESENT, PTE_RW, PTE_SPECIAL
from .shmem import ShmemFile

__all__ = [
    "MADV_DONTNEED",
    "MADV_HUGEPAGE",
    "MADV_NOHUGEPAGE",
    "MAP_ANONYMOUS",
    "MAP_FIXED",
    "MAP_POPULATE",
    "MAP_PRIVATE",
    "MAP_SHARED",
    "PROT_NONE",
    "PROT_READ",
    "PROT_WRITE",
    "do_madvise",
    "do_mmap",
    "do_mprotect",
    "do_munmap",
]

PROT_NONE = 0x0
PROT_READ = 0x1
PROT_WRITE = 0x2
PROT_EXEC = 0x4
PROT_SEM = 0x8
MAP_SHARED = 0x01
MAP_PRIVATE = 0x02
MAP_SHARED_VALIDATE = 0x03
MAP_TYPE = 0x0F
MAP_FIXED = 0x10
MAP_ANONYMOUS = 0x20
MAP_POPULATE = getattr(_pymmap, "MAP_POPULATE", 0x8000)
MADV_DONTNEED = 4
MADV_HUGEPAGE = 14
MADV_NOHUGEPAGE = 15

_FMODE_WRITE = 0x2
"""``FMODE_WRITE`` (``include/linux/fs.h``) of a file mapping's ``f_mode``."""

MMAP_BASE = 0x7F0000000000
MMAP_MIN_ADDR = 0x10000


def _page_align(n: int) -> int:
    return (n + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1)


def _calc_vm_flags(prot: int, flags: int) -> int:
    vf = VM.VM_MAYREAD | VM.VM_MAYWRITE | VM.VM_MAYEXEC
    if prot & PROT_READ:
        vf |= VM.VM_READ
    if prot & PROT_WRITE:
        vf |= VM.VM_WRITE
    if prot & PROT_EXEC:
        vf |= VM.VM_EXEC
    if flags & MAP_SHARED:  # MAP_SHARED or MAP_SHARED_VALIDATE
        vf |= VM.VM_SHARED | VM.VM_MAYSHARE
    return int(vf)


def get_unmapped_area(mm: MmStruct, length: int, align: int) -> int:
    """Highest free gap below MMAP_BASE of ``length`` bytes at ``align``. -ENOMEM if none."""
    top = MMAP_BASE
    for vma in reversed(mm.vmas):
        if vma.vm_start >= top:
            top = min(top, vma.vm_start)
            continue
        cand = (top - length) & ~(align - 1)
        if cand >= vma.vm_end:
            return cand
        top = vma.vm_start
    cand = (top - length) & ~(align - 1)
    return cand if cand >= MMAP_MIN_ADDR else -errno.ENOMEM


def _split_vma(mm: MmStruct, vma: VmArea, addr: int) -> VmArea:
    """``split_vma()``: cut ``vma`` at ``addr``; return the upper part (now a new VMA).

    A PMD mapping that straddles ``addr`` is split into PTEs first.
    """
    s = vma.slot(addr)
    if vma.pt_flags[s] & PTE_PMD and addr % HPAGE_PMD_SIZE:
        split_huge_pmd(vma, s)
    new = VmArea(mm, addr, vma.vm_end, vma.vm_flags, vma.vm_file, vma.vm_pgoff + s)
    new.anon_id = vma.anon_id
    new.pt_pfn = vma.pt_pfn[s:].copy()
    new.pt_flags = vma.pt_flags[s:].copy()
    if vma.vm_file is not None:
        vma.vm_file.get()
        vma_link_file(new)
    vma.pt_pfn = vma.pt_pfn[:s].copy()
    vma.pt_flags = vma.pt_flags[:s].copy()
    vma.vm_end = addr
    mm.insert_vma(new)
    mm.rekey()
    return new


def _isolate(mm: MmStruct, start: int, end: int) -> list[VmArea]:
    """Split VMAs so that ``[start, end)`` is covered by whole VMAs; return those."""
    for vma in mm.vmas_in(start, end):
        if vma.vm_start < start:
            _split_vma(mm, vma, start)
    for vma in mm.vmas_in(start, end):
        if vma.vm_end > end:
            _split_vma(mm, vma, end)
    return mm.vmas_in(start, end)


def _unmap_vma(mm: MmStruct, vma: VmArea) -> None:
    zap_page_range(vma, 0, vma.nr_pages, "unmap_vmas")
    mm.remove_vma(vma)
    if vma.vm_file is not None:
        unlink_file_vma(vma)
        vma.vm_file.put()


def do_munmap(mm: MmStruct, start: int, length: int) -> int:
    """``munmap(2)``. Return 0, or -EINVAL (unaligned start, zero length, beyond TASK_SIZE)."""
    if start % PAGE_SIZE or length <= 0 or start > TASK_SIZE or length > TASK_SIZE - start:
        return -errno.EINVAL
    end = start + _page_align(length)
    for vma in _isolate(mm, start, end):
        _unmap_vma(mm, vma)
    return 0


def do_mmap(
    mm: MmStruct,
    addr: int,
    length: int,
    prot: int,
    flags: int,
    vm_file: Any = None,
    pgoff: int = 0,
) -> int:
    """``mmap(2)`` for anonymous memory (and, later, files via ``vm_file``).

    ``length`` is a ``size_t``. Unknown ``prot`` bits are ignored, as ``calc_vm_prot_bits()``
    ignores them (only mprotect() validates prot).

    Return: the mapping's address, or -errno: EINVAL (zero length; a map type other than
    MAP_SHARED or MAP_PRIVATE, and for a file also MAP_SHARED_VALIDATE; unaligned MAP_FIXED
    address), EPERM (MAP_FIXED below mmap_min_addr), ENOMEM (no room, or a length beyond the
    address space).
    """
    length &= (1 << 64) - 1
    if length == 0:
        return -errno.EINVAL
    # do_mmap(): switch (flags & MAP_TYPE). Anonymous memory takes only MAP_SHARED and
    # MAP_PRIVATE; MAP_SHARED_VALIDATE is EINVAL there (measured on the host, 6.18).
    types = (
        (MAP_SHARED, MAP_PRIVATE)
        if vm_file is None
        else (MAP_SHARED, MAP_SHARED_VALIDATE, MAP_PRIVATE)
    )
    if (flags & MAP_TYPE) not in types:
        return -errno.EINVAL
    length = _page_align(length)
    if length > TASK_SIZE:
        return -errno.ENOMEM
    if flags & MAP_FIXED:
        if addr % PAGE_SIZE or addr < MMAP_MIN_ADDR:
            return -errno.EINVAL if addr % PAGE_SIZE else -errno.EPERM
        if addr + length > TASK_SIZE:
            return -errno.ENOMEM
        do_munmap(mm, addr, length)
    else:
        align = HPAGE_PMD_SIZE if length % HPAGE_PMD_SIZE == 0 else PAGE_SIZE
        addr = get_unmapped_area(mm, length, align)
        if addr < 0:
            return addr
    vf = _calc_vm_flags(prot, flags)
    f_mode = getattr(vm_file, "f_mode", None)
    if f_mode is not None and flags & MAP_SHARED and not f_mode & _FMODE_WRITE:
        # do_mmap(): a shared mapping of a file not open for writing can never write it.
        vf &= ~(VM.VM_MAYWRITE | VM.VM_SHARED)
    if vm_file is None and flags & MAP_SHARED:
        vm_file = ShmemFile(mm.pgdat, length)  # shmem_zero_setup()
    if vm_file is not None:
        vm_file.get()
    vma = VmArea(mm, addr, addr + length, vf, vm_file, pgoff)
    mm.insert_vma(vma)
    vma_link_file(vma)
    if flags & MAP_POPULATE:
        # mm_populate(): write-fault private writable mappings, read-fault the rest.
        write = (vf & (VM.VM_WRITE | VM.VM_SHARED)) == VM.VM_WRITE
        if vf & (VM.VM_READ | VM.VM_WRITE):
            populate_range(vma, 0, vma.nr_pages, write)
    return addr


def do_mprotect(mm: MmStruct, start: int, length: int, prot: int) -> int:
    """``mprotect(2)``. Return 0 or -errno: EINVAL (unaligned, bad prot: anything but
    PROT_READ|PROT_WRITE|PROT_EXEC|PROT_SEM, as the generic ``arch_validate_prot()`` says),
    ENOMEM (a hole in the range; VMAs before the hole keep their change, as the kernel
    leaves them)."""
    if start % PAGE_SIZE or prot & ~(PROT_READ | PROT_WRITE | PROT_EXEC | PROT_SEM):
        return -errno.EINVAL
    if length == 0:
        return 0
    end = start + _page_align(length)
    if end <= start or end > TASK_SIZE:
        return -errno.ENOMEM
    vmas = _isolate(mm, start, end)
    pos = start
    want = _calc_vm_flags(prot, 0) & (VM.VM_READ | VM.VM_WRITE | VM.VM_EXEC)
    for vma in vmas:
        if vma.vm_start > pos:
            return -errno.ENOMEM
        if want & ~(vma.vm_flags >> 4):
            return -errno.EACCES  # VM_MAY* missing: e.g. PROT_WRITE on a read-only file
        _change_protection(vma, prot)
        pos = vma.vm_end
    if pos < end:
        return -errno.ENOMEM
    return 0


def _change_protection(vma: VmArea, prot: int) -> None:
    """``mprotect_fixup()`` + ``change_protection()`` for one whole VMA.

    Unchanged flags change nothing (``mprotect_fixup()`` returns early). Otherwise each PTE
    gets the new ``vm_page_prot`` (``change_pte_range()``: ``pte_modify()``): a private
    mapping's page protection never includes write (writes COW through do_wp_page), so its
    PTEs become read-only even when write stays allowed; a shared mapping's PTEs become
    writable with PROT_WRITE.

    [6.18] (ANON_EXCLUSIVE) a private writable mapping keeps exclusive anonymous pages
    writable instead (MM_CP_TRY_CHANGE_WRITABLE, ``can_change_pte_writable()``), as Linux
    commit 64fe24a3e05e ("mm/mprotect: try avoiding write faults for exclusive anonymous
    pages when changing protection") (v6.0) does; measured on the host (6.18): a write after
    mprotect(PROT_READ) then mprotect(PROT_READ|PROT_WRITE) takes no fault. SIMPLIFIED: keyed
    on ANON_EXCLUSIVE (v5.19), which the change needs; no profile lies between v5.19 and v6.0.
    """
    keep = ~(VM.VM_READ | VM.VM_WRITE | VM.VM_EXEC)
    newflags = VM((vma.vm_flags & keep) | (_calc_vm_flags(prot, 0) & ~keep))
    if newflags == vma.vm_flags:
        return
    vma.vm_flags = newflags
    fl = vma.pt_flags
    mapped = vma.pt_pfn >= 0
    if prot == PROT_NONE:
        sel = mapped & ((fl & PTE_PRESENT) != 0)
        fl[sel] = (fl[sel] & ~(PTE_PRESENT | PTE_RW)) | PTE_PROTNONE
        return
    back = mapped & ((fl & PTE_PROTNONE) != 0)
    fl[back] = (fl[back] & ~PTE_PROTNONE) | PTE_PRESENT
    fl &= ~PTE_RW
    if not prot & PROT_WRITE:
        return
    if vma.vm_flags & VM.VM_SHARED:
        if getattr(vma.vm_file, "writenotify", False):
            # A file that wants write notification keeps clean pages read-only: only dirty
            # PTEs become writable (change_pte_range(): dirty_accountable [5.9],
            # can_change_pte_writable() [6.x]).
            fl[mapped & ((fl & PTE_DIRTY) != 0)] |= PTE_RW
        else:
            fl[mapped] |= PTE_RW
    elif vma.vm_mm.pgdat.cfg.ANON_EXCLUSIVE:
        cand = np.flatnonzero(mapped & ((fl & PTE_SPECIAL) == 0))
        want = np.uint32(PG.PG_anon | PG.PG_anon_exclusive)
        excl = (vma.vm_mm.pgdat.pages.flags.take(vma.pt_pfn[cand]) & want) == want
        fl[cand[excl]] |= PTE_RW


def do_madvise(mm: MmStruct, start: int, length: int, advice: int) -> int:
    """``madvise(2)`` for MADV_DONTNEED / MADV_HUGEPAGE / MADV_NOHUGEPAGE.

    Return: 0, -EINVAL (unaligned start, unknown advice), -ENOMEM (part of the range is not
    mapped; the mapped parts are still advised).
    """
    if start % PAGE_SIZE or advice not in (MADV_DONTNEED, MADV_HUGEPAGE, MADV_NOHUGEPAGE):
        return -errno.EINVAL
    end = start + _page_align(length)
    if end < start:
        return -errno.EINVAL
    if end == start:
        return 0
    hole = False
    pos = start
    if advice == MADV_DONTNEED:
        for vma in mm.vmas_in(start, end):
            if vma.vm_start > pos:
                hole = True
            s0 = vma.slot(max(start, vma.vm_start))
            s1 = vma.slot(min(end, vma.vm_end))
            zap_page_range(vma, s0, s1, "madvise_dontneed")
            pos = vma.vm_end
    else:
        for vma in _isolate(mm, start, end):
            if vma.vm_start > pos:
                hole = True
            if advice == MADV_HUGEPAGE:
                vma.vm_flags = VM((vma.vm_flags | VM.VM_HUGEPAGE) & ~VM.VM_NOHUGEPAGE)
            else:
                vma.vm_flags = VM((vma.vm_flags | VM.VM_NOHUGEPAGE) & ~VM.VM_HUGEPAGE)
            pos = vma.vm_end
    if pos < end:
        hole = True
    return -errno.ENOMEM if hole else 0


def mapped_bytes(mm: MmStruct) -> int:
    """Bytes of address space covered by VMAs."""
    return sum(v.vm_end - v.vm_start for v in mm.vmas)


def resident_pages(mm: MmStruct) -> int:
    """Page-table slots that map a page (RSS, zero-page slots included)."""
    return int(sum(int(np.count_nonzero(v.pt_pfn >= 0)) for v in mm.vmas))

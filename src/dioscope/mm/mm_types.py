"""``struct mm_struct`` and ``struct vm_area_struct`` (``include/linux/mm_types.h``).

A VMA owns the page-table slots for its pages (see :mod:`dioscope.mm.pgtable`): the page
table is split by VMA rather than by PGD/PUD/PMD level, which keeps every per-range operation
a numpy slice. VM_* values are those of ``include/linux/mm.h``.
"""

from __future__ import annotations

import bisect
import enum
from typing import TYPE_CHECKING, Any

import numpy as np

from ..kernel.types import PAGE_SHIFT

if TYPE_CHECKING:
    from .page_alloc import PgData

__all__ = ["VM", "MmStruct", "VmArea", "unlink_file_vma", "vma_link_file"]


class VM(enum.IntFlag):
    """``vm_flags`` bits (``include/linux/mm.h``)."""

    VM_NONE = 0
    VM_READ = 0x1
    VM_WRITE = 0x2
    VM_EXEC = 0x4
    VM_SHARED = 0x8
    VM_MAYREAD = 0x10
    VM_MAYWRITE = 0x20
    VM_MAYEXEC = 0x40
    VM_MAYSHARE = 0x80
    VM_PFNMAP = 0x400
    VM_IO = 0x4000
    VM_HUGEPAGE = 0x20000000
    VM_NOHUGEPAGE = 0x40000000


class VmArea:
    """One VMA: ``[vm_start, vm_end)`` with flags, backing object and its page-table slots."""

    __slots__ = (
        "anon_id",
        "pt_flags",
        "pt_pfn",
        "vm_end",
        "vm_file",
        "vm_flags",
        "vm_mm",
        "vm_pgoff",
        "vm_start",
    )

    def __init__(
        self,
        mm: MmStruct,
        start: int,
        end: int,
        flags: int,
        vm_file: Any = None,
        pgoff: int = 0,
    ) -> None:
        self.vm_mm = mm
        self.vm_start = start
        self.vm_end = end
        self.vm_flags = VM(flags)
        self.vm_file = vm_file
        """The backing object: None for private anonymous memory, a shmem file for shared
        anonymous memory, a page-cache file for file mappings (filesystem issue)."""
        self.vm_pgoff = pgoff
        self.anon_id = mm.anon_id
        n = (end - start) >> PAGE_SHIFT
        self.pt_pfn = np.full(n, -1, np.int64)
        self.pt_flags = np.zeros(n, np.uint8)

    @property
    def nr_pages(self) -> int:
        return (self.vm_end - self.vm_start) >> PAGE_SHIFT

    def slot(self, addr: int) -> int:
        """Index of the page-table slot of ``addr``."""
        return (addr - self.vm_start) >> PAGE_SHIFT

    def is_cow_mapping(self) -> bool:
        """``is_cow_mapping()``: private and may become writable."""
        return (self.vm_flags & (VM.VM_SHARED | VM.VM_MAYWRITE)) == VM.VM_MAYWRITE

    def is_anonymous(self) -> bool:
        """``vma_is_anonymous()``: private anonymous memory (no backing object)."""
        return self.vm_file is None

    def __repr__(self) -> str:
        return f"VmArea({self.vm_start:#x}-{self.vm_end:#x} {self.vm_flags!r})"


class MmStruct:
    """An address space: sorted VMAs plus the GUP bookkeeping of ``mm_struct``."""

    def __init__(self, pgdat: PgData) -> None:
        self.pgdat = pgdat
        self.vmas: list[VmArea] = []
        self._starts: list[int] = []
        self.anon_id = pgdat.new_mapping_id()
        self.has_pinned = False
        """``mm->has_pinned`` [5.9] / ``MMF_HAS_PINNED`` [5.13+]: set by the first FOLL_PIN
        GUP on this mm; makes fork() copy maybe-pinned anon pages early."""
        self.write_protect_seq = 0
        """``mm->write_protect_seq`` [5.11+]: fork bumps it around write-protecting PTEs."""
        self.total_vm = 0
        self.vma_cache: VmArea | None = None
        """Last VMA GUP found (like the pre-6.1 per-thread ``vmacache``); checked by range."""

    # VMA tree -------------------------------------------------------------------------
    def find_vma(self, addr: int) -> VmArea | None:
        """``find_vma()``: the first VMA with ``vm_end > addr`` (may start above addr)."""
        i = bisect.bisect_right(self._starts, addr) - 1
        if i >= 0 and self.vmas[i].vm_end > addr:
            return self.vmas[i]
        if i + 1 < len(self.vmas):
            return self.vmas[i + 1]
        return None

    def vma_lookup(self, addr: int) -> VmArea | None:
        """``vma_lookup()``: the VMA containing ``addr``, or None."""
        i = bisect.bisect_right(self._starts, addr) - 1
        if i >= 0 and self.vmas[i].vm_end > addr:
            return self.vmas[i]
        return None

    def vmas_in(self, start: int, end: int) -> list[VmArea]:
        """All VMAs overlapping ``[start, end)``, in address order."""
        i = max(0, bisect.bisect_right(self._starts, start) - 1)
        out = []
        while i < len(self.vmas) and self.vmas[i].vm_start < end:
            if self.vmas[i].vm_end > start:
                out.append(self.vmas[i])
            i += 1
        return out

    def insert_vma(self, vma: VmArea) -> None:
        i = bisect.bisect_left(self._starts, vma.vm_start)
        self.vmas.insert(i, vma)
        self._starts.insert(i, vma.vm_start)
        self.total_vm += vma.nr_pages

    def remove_vma(self, vma: VmArea) -> None:
        self.vma_cache = None
        i = self.vmas.index(vma)
        del self.vmas[i]
        del self._starts[i]
        self.total_vm -= vma.nr_pages

    def rekey(self) -> None:
        """Re-sort after VMAs changed their bounds in place (split)."""
        self.vma_cache = None
        self.vmas.sort(key=lambda v: v.vm_start)
        self._starts = [v.vm_start for v in self.vmas]
        self.total_vm = sum(v.nr_pages for v in self.vmas)


def vma_link_file(vma: VmArea) -> None:
    """``vma_link_file()``: enter a new file VMA in its file's ``i_mmap`` (for the page
    cache's reverse map, :mod:`dioscope.mm.rmap`); nothing for anonymous or shmem VMAs."""
    link = getattr(vma.vm_file, "i_mmap_insert", None)
    if link is not None:
        link(vma)


def unlink_file_vma(vma: VmArea) -> None:
    """``unlink_file_vma()``: the VMA is going away. (The reverse map also drops VMAs that
    left their mm lazily, so a path that forgets this only costs a lookup later.)"""
    unlink = getattr(vma.vm_file, "i_mmap_remove", None)
    if unlink is not None:
        unlink(vma)

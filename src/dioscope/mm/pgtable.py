"""Page-table entries (``arch/x86/include/asm/pgtable_types.h``), one uint8 per base page.

Each VMA owns two arrays covering its pages: ``pt_pfn`` (int64, -1 = ``pte_none``) and
``pt_flags`` (uint8, the bits below). A PMD-mapped THP fills its 512 slots with consecutive
pfns and sets ``PTE_PMD`` on each, so every lookup stays a slice.

The bit order is chosen so that "all of these bits are set on every entry of a range" is a
single ``min()`` over the slice: PRESENT is the top bit, then FASTPIN, then RW. A range whose
minimum is >= ``PTE_FAST_WRITE`` is present, fast-pinnable and writable everywhere.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "PTE_ACCESSED",
    "PTE_DIRTY",
    "PTE_FASTPIN",
    "PTE_FAST_READ",
    "PTE_FAST_WRITE",
    "PTE_PMD",
    "PTE_PRESENT",
    "PTE_RW",
    "PTE_SPECIAL",
]

PTE_PRESENT = np.uint8(0x80)
"""``_PAGE_PRESENT``."""
PTE_FASTPIN = np.uint8(0x40)
"""Model-only: the entry maps a small, exclusively mapped private anonymous page (never the
zero page, never shared memory, never part of a large folio). Such a pfn appears at most once
in any one address range, so GUP may account it with one vectorized scatter and no duplicate
handling. Cleared whenever the page stops being exclusive (fork COW-sharing)."""
PTE_RW = np.uint8(0x20)
"""``_PAGE_RW``: writable."""
PTE_DIRTY = np.uint8(0x10)
"""``_PAGE_DIRTY``."""
PTE_SPECIAL = np.uint8(0x08)
"""``_PAGE_SPECIAL``: no struct page to refcount (the zero page)."""
PTE_PMD = np.uint8(0x04)
"""Model-only: this slot is part of a PMD (2 MiB) mapping."""
PTE_ACCESSED = np.uint8(0x02)
"""``_PAGE_ACCESSED``."""

PTE_FAST_WRITE = np.uint8(PTE_PRESENT | PTE_FASTPIN | PTE_RW)
PTE_FAST_READ = np.uint8(PTE_PRESENT | PTE_FASTPIN)

"""Which PTEs map a file's pages: the file half of the reverse map (``mm/rmap.c``
``rmap_walk_file`` / ``folio_mkclean``, ``mm/memory.c`` ``unmap_mapping_range``).

A mapping keeps the VMAs that map it (``address_space->i_mmap``: an interval tree in the
kernel, a dict in insertion order here). The PTE for file page ``index`` in a VMA is slot
``index - vm_pgoff``; it maps the page-cache page only when ``pt_pfn`` there *is* that page
(a private mapping may hold its own anonymous COW copy instead). Each walk is one vectorized
gather per VMA.

VMAs enter ``i_mmap`` when they are made (``do_mmap``, ``split_vma``, ``dup_mmap``: see
``mm_types.vma_link_file``); leaving is lazy: a VMA that is no longer in its mm (munmap,
exit) is dropped the next time a walk meets it (``unlink_file_vma`` in the kernel).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..kernel.types import PAGE_SHIFT, PAGE_SIZE
from .memory import zap_page_range
from .mm_types import VM, VmArea
from .page import PG
from .pgtable import PTE_DIRTY, PTE_RW

__all__ = [
    "folio_mkclean",
    "mapping_mapped",
    "mapping_vmas",
    "unmap_mapping_pages",
    "unmap_mapping_range",
]

_CLEAN_WP = np.uint8(~(PTE_DIRTY | PTE_RW) & 0xFF)


def mapping_vmas(mapping: Any) -> list[VmArea]:
    """The VMAs that map ``mapping`` now (``vma_interval_tree_foreach`` over ``i_mmap``),
    dropping those that have left their mm."""
    live: list[VmArea] = []
    dead: list[int] = []
    for key, vma in mapping.i_mmap.items():
        if vma.vm_mm.vma_lookup(vma.vm_start) is vma:
            live.append(vma)
        else:
            dead.append(key)
    for key in dead:
        del mapping.i_mmap[key]
    return live


def mapping_mapped(mapping: Any) -> bool:
    """``mapping_mapped()``: does any VMA map the file?"""
    return bool(mapping_vmas(mapping))


def _hits(vma: VmArea, indices: np.ndarray, pfns: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(rows of ``indices`` whose page this VMA maps, their slots)."""
    s = indices - vma.vm_pgoff
    rows = np.flatnonzero((s >= 0) & (s < vma.nr_pages))
    if not len(rows):
        return rows, rows
    slots = s[rows]
    hit = vma.pt_pfn[slots] == pfns[rows]
    return rows[hit], slots[hit]


def folio_mkclean(mapping: Any, indices: np.ndarray, pfns: np.ndarray) -> np.ndarray:
    """``folio_mkclean()`` for many pages: make every shared PTE that maps page
    ``pfns[k]`` (file page ``indices[k]``) clean and read-only, so that the next store
    faults (``do_wp_page`` → ``page_mkwrite``) and dirties the page again.

    Only shared VMAs are walked (``invalid_mkclean_vma``): a private mapping never maps a
    page-cache page writable.
    Return: per page, whether some PTE was dirty or writable (``page_mkclean_one`` counted
    it as cleaned).
    """
    cleaned = np.zeros(len(indices), bool)
    if not len(indices) or not mapping.i_mmap:
        return cleaned
    for vma in mapping_vmas(mapping):
        if not vma.vm_flags & VM.VM_SHARED:
            continue
        rows, slots = _hits(vma, indices, pfns)
        if not len(rows):
            continue
        fl = vma.pt_flags[slots]
        cleaned[rows[(fl & (PTE_DIRTY | PTE_RW)) != 0]] = True
        vma.pt_flags[slots] = fl & _CLEAN_WP
    return cleaned


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """[start, end) of every run of True in ``mask``."""
    if not mask.any():
        return []
    edges = np.flatnonzero(np.diff(np.concatenate(([0], mask.view(np.int8), [0]))))
    return list(zip(edges[0::2].tolist(), edges[1::2].tolist(), strict=True))


def unmap_mapping_pages(mapping: Any, start: int, nr: int, even_cows: bool) -> None:
    """``unmap_mapping_pages()``: zap the PTEs of file pages ``[start, start + nr)`` in every
    VMA that maps them. A dirty PTE hands its dirty bit to the page (``zap_pte_range``).

    ``even_cows`` (truncation) also zaps the anonymous COW copies a private mapping made of
    those pages; without it (invalidation) only PTEs of page-cache pages go
    (``zap_details.even_cows``).
    """
    if nr <= 0 or not mapping.i_mmap:
        return
    pages = mapping.pgdat.pages
    for vma in mapping_vmas(mapping):
        s0 = max(start - vma.vm_pgoff, 0)
        s1 = min(start + nr - vma.vm_pgoff, vma.nr_pages)
        if s0 >= s1:
            continue
        if even_cows or vma.vm_flags & VM.VM_SHARED:
            zap_page_range(vma, s0, s1)
            continue
        pf = vma.pt_pfn[s0:s1]
        sel = pf >= 0
        sel[sel] = (pages.flags.take(pf[sel]) & np.uint32(PG.PG_anon)) == 0
        for a, b in _runs(sel):
            zap_page_range(vma, s0 + a, s0 + b)


def unmap_mapping_range(mapping: Any, holebegin: int, holelen: int, even_cows: bool) -> None:
    """``unmap_mapping_range()``: unmap the pages of bytes ``[holebegin, holebegin +
    holelen)`` (rounded out to whole pages at the end; ``holelen`` 0 means to the end of the
    file) from every mapping of the file."""
    hba = holebegin >> PAGE_SHIFT
    hlen = (holelen + PAGE_SIZE - 1) >> PAGE_SHIFT if holelen else (1 << 62) - hba
    unmap_mapping_pages(mapping, hba, hlen, even_cows)

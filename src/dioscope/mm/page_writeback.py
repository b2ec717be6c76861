"""Dirty and writeback state of page-cache pages, and waiting for it (``mm/page-writeback.c``;
``mm/filemap.c`` ``__filemap_fdatawrite_range`` / ``filemap_fdatawait_range`` /
``filemap_write_and_wait_range`` / ``file_write_and_wait_range``; ``lib/errseq.c``;
``include/linux/pagemap.h`` ``mapping_set_error``).

A page-cache page is dirty when PG_dirty is set on it (there are no per-mapping dirty tags:
a mapping's dirty pages are one gather over ``i_pages``). Writeback goes:

1. the filesystem's ``writepages(mapping, start, end)`` takes the dirty pages of the range
   with :func:`writeback_prepare`: ``folio_clear_dirty_for_io`` — ``folio_mkclean`` first,
   so every shared PTE of the page becomes clean and read-only (the next store faults and
   dirties the page again), a PTE that was dirty or writable handing PG_dirty back — then
   ``folio_start_writeback`` (PG_writeback);
2. it submits bios of those pages; their completion calls :func:`folio_end_writeback` (and
   :func:`mapping_set_error` on failure);
3. waiters (:func:`folio_wait_writeback`) sleep until PG_writeback is clear. The model sleeps
   by running the device's completion context: ``mapping.wait_io()``.

SIMPLIFIED: all writeback is data-integrity writeback (WB_SYNC_ALL, as fsync and the Direct
I/O flush do); there is no background flusher, no dirty throttling.

Errors: the AS_EIO / AS_ENOSPC bits (``filemap_check_errors``: reported once, to whoever
checks first) and the errseq ``wb_err`` (``file_check_and_advance_wb_err``: reported once per
open file, as fsync reports it).
"""

from __future__ import annotations

import errno
from typing import TYPE_CHECKING, Any, Final

import numpy as np

from ..kernel.npfast import any_set
from ..kernel.types import PAGE_SHIFT
from .page import PG
from .rmap import folio_mkclean

if TYPE_CHECKING:
    from .filemap import AddressSpace

__all__ = [
    "AS_EIO",
    "AS_ENOSPC",
    "errseq_check_and_advance",
    "errseq_sample",
    "errseq_set",
    "file_check_and_advance_wb_err",
    "file_write_and_wait_range",
    "filemap_check_errors",
    "filemap_fdatawait_range",
    "filemap_fdatawrite_range",
    "filemap_write_and_wait_range",
    "folio_clear_dirty_for_io",
    "folio_end_writeback",
    "folio_mark_dirty",
    "folio_wait_bit",
    "folio_wait_writeback",
    "mapping_set_error",
    "writeback_prepare",
]

AS_EIO: Final = 1 << 0
AS_ENOSPC: Final = 1 << 1
LLONG_MAX: Final = (1 << 63) - 1

_DIRTY: Final = np.uint32(PG.PG_dirty)
_WRITEBACK: Final = np.uint32(PG.PG_writeback)
_DIRTY_OR_WRITEBACK: Final = np.uint32(PG.PG_dirty | PG.PG_writeback)
_NOT_DIRTY: Final = np.uint32(~PG.PG_dirty & 0xFFFFFFFF)
_NOT_WRITEBACK: Final = np.uint32(~PG.PG_writeback & 0xFFFFFFFF)

# --- errseq_t (lib/errseq.c) ----------------------------------------------------------------
MAX_ERRNO: Final = 4095
ERRSEQ_SEEN: Final = 1 << 12
ERRSEQ_CTR_INC: Final = 1 << 13


def errseq_set(mapping: Any, err: int) -> int:
    """``errseq_set()`` on ``mapping.wb_err``: record ``err`` (negative); the counter moves
    only if the previous error was seen. Return: the new value."""
    old = mapping.wb_err
    if not err or -err > MAX_ERRNO:
        return int(old)
    new = (old & ~(MAX_ERRNO | ERRSEQ_SEEN)) | -err
    if old & ERRSEQ_SEEN:
        new += ERRSEQ_CTR_INC
    mapping.wb_err = new & 0xFFFFFFFF
    return int(mapping.wb_err)


def errseq_sample(mapping: Any) -> int:
    """``errseq_sample()``: the cursor a new opener starts from (0 while the latest error is
    unseen, so that the opener still sees it)."""
    old = int(mapping.wb_err)
    return old if old & ERRSEQ_SEEN else 0


def errseq_check_and_advance(mapping: Any, since: int) -> tuple[int, int]:
    """``errseq_check_and_advance()``. Return: (0 or the -errno recorded since ``since``,
    the new cursor); marks the error seen."""
    old = int(mapping.wb_err)
    if old == since:
        return 0, since
    new = old | ERRSEQ_SEEN
    mapping.wb_err = new
    return -(new & MAX_ERRNO), new


def mapping_set_error(mapping: AddressSpace, error: int) -> None:
    """``mapping_set_error()``: a writeback I/O of this file failed with ``error``."""
    if not error:
        return
    errseq_set(mapping, error)
    mapping.flags |= AS_ENOSPC if error == -errno.ENOSPC else AS_EIO


def filemap_check_errors(mapping: AddressSpace) -> int:
    """``filemap_check_errors()``: test-and-clear AS_ENOSPC / AS_EIO. Return: 0 or -errno
    (-EIO wins)."""
    ret = 0
    if mapping.flags & AS_ENOSPC:
        mapping.flags &= ~AS_ENOSPC
        ret = -errno.ENOSPC
    if mapping.flags & AS_EIO:
        mapping.flags &= ~AS_EIO
        ret = -errno.EIO
    return ret


def file_check_and_advance_wb_err(file: Any) -> int:
    """``file_check_and_advance_wb_err()``: the writeback error this open file has not seen
    yet (each error is reported once per file), also clearing AS_EIO/AS_ENOSPC."""
    mapping = file.f_mapping
    err, file.f_wb_err = errseq_check_and_advance(mapping, file.f_wb_err)
    mapping.flags &= ~(AS_EIO | AS_ENOSPC)
    return err


# --- dirty and writeback bits ----------------------------------------------------------------
def folio_mark_dirty(mapping: AddressSpace, pfns: np.ndarray | int) -> None:
    """``folio_mark_dirty()`` / ``filemap_dirty_folio()`` on one or many pages."""
    mapping.pgdat.pages.flags[pfns] |= _DIRTY


def folio_clear_dirty_for_io(mapping: AddressSpace, indices: np.ndarray,
                             pfns: np.ndarray) -> np.ndarray:
    """``folio_clear_dirty_for_io()`` on many pages: write-protect and clean their shared
    PTEs (a PTE that was dirty or writable re-dirties the page first), then test-and-clear
    PG_dirty. Return: per page, whether it was dirty (and must be written)."""
    flags = mapping.pgdat.pages.flags
    cleaned = folio_mkclean(mapping, indices, pfns)
    if cleaned.any():
        flags[pfns[cleaned]] |= _DIRTY
    was = (flags.take(pfns) & _DIRTY) != 0
    flags[pfns] &= _NOT_DIRTY
    return was


def folio_end_writeback(pgdat: Any, pfns: np.ndarray) -> None:
    """``folio_end_writeback()``: clear PG_writeback (the bio that wrote them completed)."""
    pgdat.pages.flags[pfns] &= _NOT_WRITEBACK


def folio_wait_bit(mapping: AddressSpace, pfns: np.ndarray, bit: int, site: str) -> None:
    """``folio_wait_bit()``: sleep until ``bit`` is clear on every page of ``pfns``.

    Context: sleeps. The model sleeps by running the completion context (``mapping.wait_io``,
    which returns False when nothing was left to complete: then the wait can never end, a
    model bug recorded as a BUG event).
    """
    flags = mapping.pgdat.pages.flags
    want = np.uint32(bit)
    while len(pfns) and ((flags.take(pfns) & want) != 0).any():
        wait = mapping.wait_io
        if wait is None or not wait():
            mapping.pgdat.events.bug(site, f"waiting for page flag {bit:#x} that no I/O "
                                           f"will clear")
            return


def folio_wait_writeback(mapping: AddressSpace, pfns: np.ndarray) -> None:
    """``folio_wait_writeback()`` for many pages."""
    folio_wait_bit(mapping, pfns, int(PG.PG_writeback), "folio_wait_writeback")


def writeback_prepare(mapping: AddressSpace, start: int, end: int) -> tuple[np.ndarray,
                                                                             np.ndarray]:
    """The page walk of ``write_cache_pages()`` / ``writeback_iter()`` for WB_SYNC_ALL:
    the dirty pages of page indices ``[start, end]``; pages already under writeback are
    waited for first; each is then cleaned for I/O (:func:`folio_clear_dirty_for_io`) and
    put under writeback (``folio_start_writeback``).

    Return: (indices, pfns) of the pages the caller must now write and end writeback on.
    """
    idx, pfns = mapping.present(start, end + 1)
    if not len(idx):
        return idx, pfns
    flags = mapping.pgdat.pages.flags
    dirty = (flags.take(pfns) & _DIRTY) != 0
    idx, pfns = idx[dirty], pfns[dirty]
    if not len(idx):
        return idx, pfns
    folio_wait_writeback(mapping, pfns)
    was = folio_clear_dirty_for_io(mapping, idx, pfns)
    idx, pfns = idx[was], pfns[was]
    flags[pfns] |= _WRITEBACK
    return idx, pfns


# --- writing back and waiting for a range ------------------------------------------------------
def filemap_fdatawrite_range(mapping: AddressSpace, start: int, end: int) -> int:
    """``__filemap_fdatawrite_range(..., WB_SYNC_ALL)``: start writeback of the dirty pages
    of bytes ``[start, end]`` through the filesystem's ``writepages``. Return: 0 or -errno."""
    if end < start or not mapping.nrpages:
        return 0
    return int(mapping.a_ops.writepages(mapping, start >> PAGE_SHIFT,
                                        min(end, LLONG_MAX) >> PAGE_SHIFT))


def __filemap_fdatawait_range(mapping: AddressSpace, start: int, end: int) -> None:
    if end < start or not mapping.nrpages:
        return
    _idx, pfns = mapping.present(start >> PAGE_SHIFT, (min(end, LLONG_MAX) >> PAGE_SHIFT) + 1)
    if len(pfns):
        busy = (mapping.pgdat.pages.flags.take(pfns) & _WRITEBACK) != 0
        folio_wait_writeback(mapping, pfns[busy])


def filemap_fdatawait_range(mapping: AddressSpace, start: int, end: int) -> int:
    """``filemap_fdatawait_range()``: wait for writeback of bytes ``[start, end]``, then
    report (and clear) the mapping's AS_* error. Return: 0 or -errno."""
    __filemap_fdatawait_range(mapping, start, end)
    return filemap_check_errors(mapping)


def _write_and_wait(mapping: AddressSpace, lstart: int, lend: int) -> int:
    """Write back the dirty pages of bytes ``[lstart, lend]`` and wait for all writeback
    there. A range without dirty pages does not reach ``writepages`` (the kernel's walk
    finds no page tagged dirty). Return: the writepages error."""
    first, last = lstart >> PAGE_SHIFT, min(lend, LLONG_MAX) >> PAGE_SHIFT
    flags = mapping.pgdat.pages.flags
    if first == last:  # one page: one lookup, no arrays
        pfn = mapping.i_pages.get(first)
        if pfn < 0 or not flags[pfn] & _DIRTY_OR_WRITEBACK:
            return 0
    _idx, pfns = mapping.present(first, last + 1)
    if not len(pfns):
        return 0
    fl = flags.take(pfns)
    err = 0
    if any_set(fl & _DIRTY):
        err = filemap_fdatawrite_range(mapping, lstart, lend)
        if err == -errno.EIO:
            return err
        fl = flags.take(pfns)
    busy = (fl & _WRITEBACK) != 0
    if any_set(busy):
        folio_wait_writeback(mapping, pfns[busy])
    return err


def filemap_write_and_wait_range(mapping: AddressSpace, lstart: int, lend: int) -> int:
    """``filemap_write_and_wait_range()``: write back bytes ``[lstart, lend]`` and wait.

    Context: sleeps. Return: 0, or -errno (the writepages error, else the AS_* error).
    """
    if lend < lstart:
        return 0
    err = _write_and_wait(mapping, lstart, lend) if mapping.nrpages else 0
    err2 = filemap_check_errors(mapping)
    return err if err else err2


def file_write_and_wait_range(file: Any, lstart: int, lend: int) -> int:
    """``file_write_and_wait_range()`` (what fsync uses): like
    :func:`filemap_write_and_wait_range` but the error is the file's errseq one, reported
    once to each open file. Return: 0 or -errno."""
    mapping = file.f_mapping
    if lend < lstart:
        return 0
    err = _write_and_wait(mapping, lstart, lend) if mapping.nrpages else 0
    err2 = file_check_and_advance_wb_err(file)
    return err if err else err2

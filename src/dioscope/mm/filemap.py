"""The page cache (``mm/filemap.c``; ``mm/page-writeback.c`` and ``mm/truncate.c`` are
:mod:`~dioscope.mm.page_writeback` and :mod:`~dioscope.mm.truncate`, re-exported here).

:class:`AddressSpace` is ``struct address_space``: the page cache of one inode. ``i_pages``
maps page index → pfn (-1: not cached) in chunked int64 arrays (:class:`~dioscope.kernel.
xarray.XArray`), so a page at offset 16 TiB costs one chunk; no Python object exists per
page. A cached page holds one reference (the page cache's), has
``page->mapping`` set to the mapping's id and ``page->index`` to its index, and carries
PG_lru, PG_uptodate once its contents are valid, PG_dirty when it must be written back,
PG_writeback while a bio writes it and PG_locked while a read fills it.

The filesystem supplies ``a_ops`` (``struct address_space_operations``)::

    read_folio(mapping, index) -> 0 | -errno      required
        The page at ``index`` is cached, locked and not uptodate: fill it (read its block,
        or zero-fill a hole, an unwritten extent or what lies past EOF), set PG_uptodate
        and unlock it — possibly from the bio's completion (the caller waits for the
        unlock). A failed read unlocks without PG_uptodate.
    writepages(mapping, start, end) -> 0 | -errno      required
        Write back the dirty pages of page indices [start, end] (inclusive), taking them
        with ``writeback_prepare`` and ending writeback (``folio_end_writeback``,
        ``mapping_set_error``) when their bios complete.
    readahead(mapping, indices) -> 0 | -errno      optional
        ``read_folio`` for many freshly added pages at once (contiguous bios).
    write_begin(mapping, pos, length) -> (0 | -errno, bytes prepared)      optional
        Map / allocate the blocks behind a buffered write of [pos, pos + length).
    write_end(mapping, pos, length, copied) -> copied      optional
        After the copy (``copied`` may be short): filesystem clean-up.
    page_mkwrite(mapping, index) -> 0 | -errno      optional
        A shared mapping is about to make page ``index`` writable: allocate its blocks.

Direct I/O helpers of 6.x (``kiocb_write_and_wait``, ``kiocb_invalidate_pages``,
``kiocb_invalidate_post_direct_write``) are here too, and :class:`MappedFile`, the
``vma->vm_file`` of a file mapping (``filemap_fault``, ``page_mkwrite``) that
:func:`~dioscope.mm.mmap.do_mmap` takes.

SIMPLIFIED: no read-ahead window: a buffered read caches exactly the pages it covers, and a
fault exactly its page (the kernel reads ahead, 16 KiB first then up to 128 KiB); a lookup
hands out the pfn without a reference (nothing runs between lookup and use in the model).
"""

from __future__ import annotations

import errno
from collections.abc import Callable
from typing import Any

import numpy as np

from ..kernel.npfast import all_set, any_set
from ..kernel.types import PAGE_SHIFT, PAGE_SIZE
from ..kernel.xarray import XArray
from .memory import VM_FAULT
from .mm_types import VmArea
from .page import PG
from .page_alloc import PgData, alloc_pages_bulk
from .page_ref import drop_refs
from .page_writeback import (
    AS_EIO,
    AS_ENOSPC,
    errseq_sample,
    errseq_set,
    file_check_and_advance_wb_err,
    file_write_and_wait_range,
    filemap_check_errors,
    filemap_fdatawait_range,
    filemap_fdatawrite_range,
    filemap_write_and_wait_range,
    folio_clear_dirty_for_io,
    folio_end_writeback,
    folio_mark_dirty,
    folio_wait_bit,
    folio_wait_writeback,
    mapping_set_error,
    writeback_prepare,
)
from .rmap import folio_mkclean, mapping_mapped, unmap_mapping_pages, unmap_mapping_range
from .truncate import (
    invalidate_inode_pages2_range,
    invalidate_mapping_pages,
    truncate_inode_pages,
    truncate_inode_pages_final,
    truncate_inode_pages_range,
    truncate_pagecache,
    truncate_pagecache_range,
)

__all__ = [
    "AS_EIO",
    "AS_ENOSPC",
    "FGP",
    "AddressSpace",
    "MappedFile",
    "__filemap_get_folio",
    "dio_warn_stale_pagecache",
    "errseq_sample",
    "file_check_and_advance_wb_err",
    "file_write_and_wait_range",
    "filemap_add_folios",
    "filemap_check_errors",
    "filemap_fault",
    "filemap_fdatawait_range",
    "filemap_fdatawrite_range",
    "filemap_get_folio",
    "filemap_get_uptodate",
    "filemap_range_has_page",
    "filemap_range_needs_writeback",
    "filemap_read_folio",
    "filemap_write_and_wait_range",
    "folio_clear_dirty_for_io",
    "folio_end_writeback",
    "folio_mark_dirty",
    "folio_mkclean",
    "folio_wait_writeback",
    "invalidate_inode_pages2_range",
    "invalidate_mapping_pages",
    "kiocb_invalidate_pages",
    "kiocb_invalidate_post_direct_write",
    "kiocb_write_and_wait",
    "mapping_mapped",
    "mapping_set_error",
    "truncate_inode_pages",
    "truncate_inode_pages_final",
    "truncate_inode_pages_range",
    "truncate_pagecache",
    "truncate_pagecache_range",
    "unmap_mapping_pages",
    "unmap_mapping_range",
    "writeback_prepare",
]

_IOCB_NOWAIT = 1 << 3
"""``IOCB_NOWAIT`` (``include/linux/fs.h``; ``fs.fs_types.IOCB`` sits above this layer)."""

_CACHE_FLAGS = np.uint32(PG.PG_lru)
_UPTODATE = np.uint32(PG.PG_uptodate)
_LOCKED = np.uint32(PG.PG_locked)
_GONE = np.uint32(~(PG.PG_lru | PG.PG_dirty | PG.PG_uptodate | PG.PG_locked) & 0xFFFFFFFF)


class FGP:
    """``fgp_flags`` of ``__filemap_get_folio()`` (``include/linux/pagemap.h``)."""

    FGP_ACCESSED = 0x01
    FGP_LOCK = 0x02
    FGP_CREAT = 0x04


class AddressSpace:
    """``struct address_space``: the page cache of ``host``."""

    def __init__(self, host: Any, pgdat: PgData, a_ops: Any,
                 wait_io: Callable[[], bool] | None = None) -> None:
        self.host = host
        """The inode whose pages these are (``mapping->host``); it has ``i_size``."""
        self.pgdat = pgdat
        self.a_ops = a_ops
        self.wait_io = wait_io
        """Model-only: run the completion context of the backing device once; False when
        nothing was pending. How a task "sleeps" on PG_writeback or PG_locked."""
        self.i_pages = XArray()
        """Page index → pfn (``mapping->i_pages``)."""
        self.nrpages = 0
        self.mapping_id = pgdat.new_mapping_id()
        """The identity stored in ``page->mapping`` of this file's pages."""
        self.i_mmap: dict[int, VmArea] = {}
        """VMAs that map this file (``i_mmap``), by id; see :mod:`dioscope.mm.rmap`."""
        self.flags = 0
        """AS_EIO / AS_ENOSPC."""
        self.wb_err = 0
        """``mapping->wb_err`` (``errseq_t``)."""
        self.stale_pagecache = 0
        """Model-only: how often Direct I/O left pages it could not invalidate
        (``dio_warn_stale_pagecache``)."""

    def __repr__(self) -> str:
        return f"AddressSpace(mapping {self.mapping_id}, {self.nrpages} pages)"

    # --- the index → pfn map (the kernel's xarray) ---------------------------------------
    def lookup(self, index: int) -> int:
        """The pfn cached at ``index``, or -1."""
        return self.i_pages.get(index)

    def pages(self, start: int, end: int) -> np.ndarray:
        """pfns of indices ``[start, end)`` (-1 where nothing is cached), a copy."""
        return self.i_pages.dense(start, end)

    def gather(self, indices: np.ndarray) -> np.ndarray:
        """pfns at ``indices`` (-1 where nothing is cached)."""
        return self.i_pages.gather(indices)

    def present(self, start: int, end: int) -> tuple[np.ndarray, np.ndarray]:
        """(indices, pfns) of the cached pages of ``[start, end)``."""
        if not self.nrpages:
            return np.empty(0, np.int64), np.empty(0, np.int64)
        return self.i_pages.find(start, end)

    def insert(self, indices: np.ndarray, pfns: np.ndarray) -> None:
        """``filemap_add_folio()`` of pages that hold one reference (now the cache's)."""
        if not len(indices):
            return
        self.i_pages.store(indices, pfns)
        p = self.pgdat.pages
        p.mapping[pfns] = self.mapping_id
        p.index[pfns] = indices
        p.flags[pfns] |= _CACHE_FLAGS
        self.nrpages += len(indices)

    def delete(self, indices: np.ndarray) -> None:
        """``delete_from_page_cache_batch()`` + ``filemap_free_folio()``: take the pages
        out (their dirt cancelled) and drop the page cache's reference."""
        if not len(indices):
            return
        pfns = self.i_pages.gather(indices)
        self.i_pages.store(indices, np.full(len(indices), -1, np.int64))
        self.nrpages -= len(indices)
        p = self.pgdat.pages
        p.mapping[pfns] = 0
        p.flags[pfns] &= _GONE
        drop_refs(self.pgdat, pfns, "filemap_free_folio")


# --- lookup and insertion ------------------------------------------------------------------
def filemap_get_folio(mapping: AddressSpace, index: int) -> int:
    """``filemap_get_folio()``. Return: the pfn, or -ENOENT."""
    pfn = mapping.lookup(index)
    return pfn if pfn >= 0 else -errno.ENOENT


def filemap_add_folios(mapping: AddressSpace, indices: np.ndarray) -> np.ndarray:
    """``filemap_alloc_folio()`` + ``filemap_add_folio()`` for many absent indices: fresh
    locked, not uptodate pages (their bytes are whatever the frames held).

    Return: the pfns added, in order; shorter than ``indices`` when memory runs out.
    """
    pfns = alloc_pages_bulk(mapping.pgdat, len(indices))
    mapping.insert(indices[: len(pfns)], pfns)
    mapping.pgdat.pages.flags[pfns] |= _LOCKED
    return pfns


def __filemap_get_folio(mapping: AddressSpace, index: int, fgp_flags: int) -> int:
    """``__filemap_get_folio()``: look up ``index``; with FGP_CREAT add a new page (locked,
    not uptodate) if there is none. Return: the pfn, or -ENOENT / -ENOMEM."""
    pfn = mapping.lookup(index)
    if pfn >= 0:
        return pfn
    if not fgp_flags & FGP.FGP_CREAT:
        return -errno.ENOENT
    pfns = filemap_add_folios(mapping, np.array([index], np.int64))
    if not len(pfns):
        return -errno.ENOMEM
    pfn = int(pfns[0])
    if not fgp_flags & FGP.FGP_LOCK:
        mapping.pgdat.pages.flags[pfn] &= ~_LOCKED
    return pfn


def _read_pages(mapping: AddressSpace, indices: np.ndarray, pfns: np.ndarray) -> int:
    """Fill locked, not uptodate pages through the filesystem and wait for them."""
    flags = mapping.pgdat.pages.flags
    readahead = getattr(mapping.a_ops, "readahead", None)
    err = 0
    if readahead is not None and len(indices) > 1:
        err = int(readahead(mapping, indices))
    else:
        for index in indices.tolist():
            err = err or int(mapping.a_ops.read_folio(mapping, index))
    folio_wait_bit(mapping, pfns, int(PG.PG_locked), "folio_wait_locked")
    if err:
        flags[pfns] &= ~_LOCKED
    return err


def filemap_read_folio(mapping: AddressSpace, index: int) -> int:
    """``read_mapping_folio()``: the page at ``index``, read in if needed.

    Context: sleeps. Return: the pfn of an uptodate page, or -ENOMEM / -EIO (a failed read
    leaves the page cached and not uptodate).
    """
    pfn = mapping.lookup(index)
    flags = mapping.pgdat.pages.flags
    if pfn >= 0 and flags[pfn] & _UPTODATE:
        return pfn
    if pfn < 0:
        pfn = __filemap_get_folio(mapping, index, FGP.FGP_CREAT | FGP.FGP_LOCK)
        if pfn < 0:
            return pfn
    else:
        flags[pfn] |= _LOCKED
    err = _read_pages(mapping, np.array([index], np.int64), np.array([pfn], np.int64))
    if err or not flags[pfn] & _UPTODATE:
        return -errno.EIO
    return pfn


def filemap_get_uptodate(mapping: AddressSpace, first: int, last: int,
                         nowait: bool = False) -> tuple[np.ndarray, int]:
    """``filemap_get_pages()``: uptodate pages for indices ``[first, last]``, creating and
    reading the missing ones (one ``readahead`` call for all of them).

    ``nowait`` (IOCB_NOWAIT): never read; stop at the first page that is not cached and
    uptodate. Context: sleeps unless ``nowait``.
    Return: (pfns of the leading run of uptodate pages, 0 or -errno for what stopped it:
    -EAGAIN, -ENOMEM, -EIO).
    """
    pfns = mapping.pages(first, last + 1)
    flags = mapping.pgdat.pages.flags
    ok = (pfns >= 0) & ((flags.take(np.maximum(pfns, 0)) & _UPTODATE) != 0)
    if all_set(ok):
        return pfns, 0
    if nowait:
        k = int(np.argmin(ok))
        return pfns[:k], -errno.EAGAIN
    err = 0
    missing = np.flatnonzero(pfns < 0)
    if len(missing):
        got = filemap_add_folios(mapping, missing + first)
        pfns[missing[: len(got)]] = got
        if len(got) < len(missing):
            err = -errno.ENOMEM
    todo = np.flatnonzero(~ok & (pfns >= 0))
    if len(todo):
        flags[pfns[todo]] |= _LOCKED
        if _read_pages(mapping, todo + first, pfns[todo]):
            err = -errno.EIO
    ok = (pfns >= 0) & ((flags.take(np.maximum(pfns, 0)) & _UPTODATE) != 0)
    k = len(ok) if all_set(ok) else int(ok.argmin())
    return pfns[:k], (err if err else -errno.EIO) if k < len(ok) else 0


def filemap_range_has_page(mapping: AddressSpace, start_byte: int, end_byte: int) -> bool:
    """``filemap_range_has_page()``: is any page of bytes ``[start_byte, end_byte]``
    cached? (What IOCB_NOWAIT Direct I/O refuses to wait on: -EAGAIN.)"""
    if end_byte < start_byte:
        return False
    idx, _ = mapping.present(start_byte >> PAGE_SHIFT, (end_byte >> PAGE_SHIFT) + 1)
    return bool(len(idx))


def filemap_range_needs_writeback(mapping: AddressSpace, start_byte: int,
                                  end_byte: int) -> bool:
    """``filemap_range_needs_writeback()`` [6.x]: is any cached page of bytes
    ``[start_byte, end_byte]`` dirty, locked or under writeback?"""
    if end_byte < start_byte or not mapping.nrpages:
        return False
    _idx, pfns = mapping.present(start_byte >> PAGE_SHIFT, (end_byte >> PAGE_SHIFT) + 1)
    busy = np.uint32(PG.PG_dirty | PG.PG_locked | PG.PG_writeback)
    return any_set(mapping.pgdat.pages.flags.take(pfns) & busy)


# --- Direct I/O helpers (mm/filemap.c [6.x], fs/direct-io.c) ---------------------------------
def kiocb_write_and_wait(iocb: Any, count: int) -> int:
    """``kiocb_write_and_wait()`` [6.x]: before a Direct I/O read, write back the range; with
    IOCB_NOWAIT refuse (-EAGAIN) if any page of it needs writeback. Return: 0 or -errno."""
    mapping = iocb.ki_filp.f_mapping
    pos = iocb.ki_pos
    end = pos + count - 1
    if iocb.ki_flags & _IOCB_NOWAIT:
        return -errno.EAGAIN if filemap_range_needs_writeback(mapping, pos, end) else 0
    return filemap_write_and_wait_range(mapping, pos, end)


def kiocb_invalidate_pages(iocb: Any, count: int) -> int:
    """``kiocb_invalidate_pages()`` [6.x]: before a Direct I/O write, write back and drop
    the cached pages of the range; with IOCB_NOWAIT refuse (-EAGAIN) if any is cached.

    Return: 0, or -EAGAIN, a writeback error, or -EBUSY (a page stayed: dirty)."""
    mapping = iocb.ki_filp.f_mapping
    pos = iocb.ki_pos
    end = pos + count - 1
    if iocb.ki_flags & _IOCB_NOWAIT:
        if filemap_range_has_page(mapping, pos, end):
            return -errno.EAGAIN
    else:
        ret = filemap_write_and_wait_range(mapping, pos, end)
        if ret:
            return ret
    return invalidate_inode_pages2_range(mapping, pos >> PAGE_SHIFT, end >> PAGE_SHIFT)


def dio_warn_stale_pagecache(file: Any) -> None:
    """``dio_warn_stale_pagecache()`` (``fs/direct-io.c``): Direct I/O could not drop pages
    it has made stale. Records -EIO in the mapping's errseq (the next fsync of any open file
    reports it) and counts the event (the kernel's ``pr_crit``, rate-limited)."""
    mapping = file.f_mapping
    errseq_set(mapping, -errno.EIO)
    mapping.stale_pagecache += 1


def kiocb_invalidate_post_direct_write(iocb: Any, count: int) -> None:
    """``kiocb_invalidate_post_direct_write()`` [6.x]: after a Direct I/O write of ``count``
    bytes, drop the pages that were faulted or read in meanwhile."""
    mapping = iocb.ki_filp.f_mapping
    if mapping.nrpages and invalidate_inode_pages2_range(
            mapping, iocb.ki_pos >> PAGE_SHIFT, (iocb.ki_pos + count - 1) >> PAGE_SHIFT):
        dio_warn_stale_pagecache(iocb.ki_filp)


# --- file mappings -----------------------------------------------------------------------------
def filemap_fault(mapping: AddressSpace, index: int) -> tuple[int, int]:
    """``filemap_fault()``: the page-cache page for a fault on file page ``index``.

    Return: (0, pfn) — the page uptodate — or (VM_FAULT_SIGBUS, -1) past EOF or on a read
    error, (VM_FAULT_OOM, -1) without memory.
    """
    size = mapping.host.i_size
    if index >= (size + PAGE_SIZE - 1) >> PAGE_SHIFT:
        return int(VM_FAULT.VM_FAULT_SIGBUS), -1
    pfn = filemap_read_folio(mapping, index)
    if pfn == -errno.ENOMEM:
        return int(VM_FAULT.VM_FAULT_OOM), -1
    if pfn < 0 or index >= (mapping.host.i_size + PAGE_SIZE - 1) >> PAGE_SHIFT:
        return int(VM_FAULT.VM_FAULT_SIGBUS), -1
    return 0, pfn


class MappedFile:
    """``vma->vm_file`` of a file mapping, with the file's ``vm_operations_struct``
    (``.fault = filemap_fault``, ``.page_mkwrite``), as :func:`~dioscope.mm.mmap.do_mmap`
    and the fault path (:mod:`dioscope.mm.memory`) use it.

    ``get``/``put`` count the VMAs that use it (each holds a reference to the open file:
    ``get_file``/``fput``, forwarded to ``get_ref``/``put_ref``). ``writenotify``: a shared
    writable mapping maps pages read-only until a write fault has called ``page_mkwrite``
    (``vma_wants_writenotify``: the filesystem has ``page_mkwrite`` and accounts dirty
    pages), so that writeback (:func:`folio_mkclean`) sees every later store.
    """

    writenotify = True

    def __init__(self, mapping: AddressSpace, f_mode: int = 0x3,
                 get_ref: Callable[[], None] | None = None,
                 put_ref: Callable[[], None] | None = None, file: Any = None) -> None:
        self.mapping = mapping
        self.f_mode = f_mode
        """``file->f_mode`` (FMODE_READ 0x1, FMODE_WRITE 0x2): ``do_mmap`` checks it."""
        self.file = file
        self.users = 0
        self._get_ref = get_ref
        self._put_ref = put_ref

    def __repr__(self) -> str:
        return f"MappedFile({self.mapping!r}, users={self.users})"

    def get(self) -> None:
        self.users += 1
        if self._get_ref is not None:
            self._get_ref()

    def put(self) -> None:
        self.users -= 1
        if self._put_ref is not None:
            self._put_ref()

    def i_mmap_insert(self, vma: VmArea) -> None:
        """``vma_interval_tree_insert()`` into the mapping's ``i_mmap``."""
        self.mapping.i_mmap[id(vma)] = vma

    def i_mmap_remove(self, vma: VmArea) -> None:
        self.mapping.i_mmap.pop(id(vma), None)

    def fault(self, index: int) -> tuple[int, int]:
        """``vm_ops->fault``: :func:`filemap_fault`."""
        return filemap_fault(self.mapping, index)

    def get_folio(self, index: int) -> int:
        """The page at ``index`` read in (as ``ShmemFile.get_folio``); -1 on failure."""
        ret, pfn = self.fault(index)
        return -1 if ret else pfn

    def page_mkwrite(self, pfn: int) -> int:
        """``vm_ops->page_mkwrite`` (``ext4_page_mkwrite`` → ``block_page_mkwrite``): a
        store is about to go into page ``pfn`` through a shared mapping. The filesystem
        allocates its blocks (``a_ops.page_mkwrite``); the page is marked dirty.

        Return: 0, or VM_FAULT_SIGBUS (the page left the file, or lies past EOF; -ENOSPC),
        VM_FAULT_OOM.
        """
        mapping = self.mapping
        p = mapping.pgdat.pages
        if int(p.mapping[pfn]) != mapping.mapping_id:
            return int(VM_FAULT.VM_FAULT_SIGBUS)
        index = int(p.index[pfn])
        if index << PAGE_SHIFT > mapping.host.i_size:
            return int(VM_FAULT.VM_FAULT_SIGBUS)
        mkwrite = getattr(mapping.a_ops, "page_mkwrite", None)
        if mkwrite is not None:
            err = int(mkwrite(mapping, index))
            if err == -errno.ENOMEM:
                return int(VM_FAULT.VM_FAULT_OOM)
            if err:
                return int(VM_FAULT.VM_FAULT_SIGBUS)
        folio_wait_writeback(mapping, np.array([pfn], np.int64))
        folio_mark_dirty(mapping, pfn)
        return 0

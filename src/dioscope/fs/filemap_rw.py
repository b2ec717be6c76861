"""Buffered read and write through the page cache, and the generic Direct I/O entry points
(``mm/filemap.c`` ``filemap_read`` [6.x] / ``generic_file_buffered_read`` [5.9],
``generic_perform_write``, ``generic_file_read_iter``, ``generic_file_direct_write``,
``__generic_file_write_iter``, ``direct_write_fallback`` [6.x]; ``fs/read_write.c``
``generic_write_checks``; ``include/linux/fs.h`` ``generic_write_sync``).

These live here and not in ``mm/filemap.py`` because they copy through iov_iters and the
model's layers put ``lib`` above ``mm``; the page cache they work on is
:mod:`dioscope.mm.filemap`.

Pages move in batches of up to :data:`BATCH` pages (one gather or scatter of frames per
batch), not one page at a time.

Short copies (a fault in the user buffer): a read returns what it copied, or -EFAULT if
nothing; a write keeps exactly the bytes copied before the fault (6.x ``generic_perform_write``
retries a short copy with the copied length). SIMPLIFIED: 5.9 faulted each page-sized chunk
of the source in first and so stopped at the start of the chunk holding the bad byte; the
model does as 6.x in every profile.
"""

from __future__ import annotations

import errno
from collections.abc import Callable
from typing import Any, Final

import numpy as np

from ..kernel.types import PAGE_SHIFT, PAGE_SIZE
from ..lib.iov_iter import (
    IovIter,
    copy_from_iter,
    copy_to_iter,
    iov_iter_count,
    iov_iter_revert,
    iov_iter_truncate,
)
from ..mm import filemap
from ..mm.page import PG
from .fs_types import IOCB, Kiocb

__all__ = [
    "BATCH",
    "direct_write_fallback",
    "filemap_read",
    "generic_file_direct_write",
    "generic_file_read_iter",
    "generic_file_write_iter",
    "generic_perform_write",
    "generic_write_checks",
    "generic_write_sync",
]

BATCH: Final = 256
"""Pages per step of a buffered read or write (1 MiB)."""
LLONG_MAX: Final = (1 << 63) - 1
_MASK: Final = PAGE_SIZE - 1
_UPTODATE: Final = np.uint32(PG.PG_uptodate)
_UNLOCK: Final = np.uint32(~PG.PG_locked & 0xFFFFFFFF)

DirectIO = Callable[[Kiocb, IovIter], int]
"""``a_ops->direct_IO(iocb, iter)``: a Direct I/O that leaves ``ki_pos`` alone."""


def _maxbytes(iocb: Kiocb) -> int:
    sb = iocb.ki_filp.f_inode.i_sb
    return sb.s_maxbytes if sb is not None else LLONG_MAX


def _gather(mem: np.ndarray, pfns: np.ndarray, off: int, n: int) -> np.ndarray:
    frames = mem.reshape(-1, PAGE_SIZE)
    if len(pfns) == 1:
        return frames[int(pfns[0]), off : off + n]
    return frames[pfns].reshape(-1)[off : off + n]


def _scatter(mem: np.ndarray, pfns: np.ndarray, off: int, data: np.ndarray) -> None:
    """Copy ``data`` into the frames ``pfns``, starting ``off`` bytes into the first."""
    frames = mem.reshape(-1, PAGE_SIZE)
    n = len(data)
    head = min(n, PAGE_SIZE - off)
    frames[int(pfns[0]), off : off + head] = data[:head]
    whole = (n - head) // PAGE_SIZE
    if whole:
        frames[pfns[1 : 1 + whole]] = data[head : head + whole * PAGE_SIZE].reshape(
            whole, PAGE_SIZE)
    tail = n - head - whole * PAGE_SIZE
    if tail:
        frames[int(pfns[1 + whole]), :tail] = data[n - tail :]


# --- buffered read ----------------------------------------------------------------------------
def filemap_read(iocb: Kiocb, it: IovIter, already_read: int = 0) -> int:
    """``filemap_read()``: copy file data from the page cache into ``it``, reading missing
    pages in; stops at EOF (``i_size``), clipped to ``s_maxbytes``. Advances ``ki_pos``.

    IOCB_NOWAIT: never reads; a page that is not cached and uptodate stops the copy
    (-EAGAIN if nothing was copied).
    Context: sleeps. Return: ``already_read`` + bytes copied, or -errno if that is 0
    (-EFAULT for a bad user buffer, -EAGAIN, -EIO, -ENOMEM).
    """
    inode = iocb.ki_filp.f_inode
    mapping = iocb.ki_filp.f_mapping
    maxbytes = _maxbytes(iocb)
    pos = iocb.ki_pos
    if pos >= maxbytes:
        return already_read
    iov_iter_truncate(it, maxbytes)
    nowait = bool(iocb.ki_flags & IOCB.IOCB_NOWAIT)
    mem = mapping.pgdat.mem.bytes
    written = already_read
    error = 0
    while iov_iter_count(it):
        if pos >= inode.i_size:
            break
        end = min(pos + iov_iter_count(it), inode.i_size, ((pos >> PAGE_SHIFT) + BATCH)
                  << PAGE_SHIFT)
        first = pos >> PAGE_SHIFT
        pfns, err = filemap.filemap_get_uptodate(mapping, first, (end - 1) >> PAGE_SHIFT,
                                                 nowait)
        # i_size is read again once the pages are uptodate (a racing truncate).
        end = min(end, inode.i_size, (first + len(pfns)) << PAGE_SHIFT)
        if end <= pos:
            error = err
            break
        want = end - pos
        n = copy_to_iter(_gather(mem, pfns, pos & _MASK, want), it)
        written += n
        pos += n
        if n < want:
            error = -errno.EFAULT
            break
        if err:
            error = err
            break
    iocb.ki_pos = pos
    return written if written else error


def generic_file_read_iter(iocb: Kiocb, it: IovIter, direct_IO: DirectIO | None = None) -> int:
    """``generic_file_read_iter()``: buffered read, or with IOCB_DIRECT ``direct_IO`` first:
    the page cache range is written back (IOCB_NOWAIT: -EAGAIN instead if it would have to
    wait — any cached page [5.9], a page needing writeback [5.14+]), the engine runs and
    ``ki_pos`` advances by its result; a short Direct I/O read that did not reach EOF is
    finished with buffered reads.

    Return: bytes read, or -errno.
    """
    count = iov_iter_count(it)
    if not count:
        return 0
    if iocb.ki_flags & IOCB.IOCB_DIRECT and direct_IO is not None:
        mapping = iocb.ki_filp.f_mapping
        inode = iocb.ki_filp.f_inode
        size = inode.i_size
        pos = iocb.ki_pos
        if not iocb.ki_flags & IOCB.IOCB_NOWAIT:
            ret = filemap.filemap_write_and_wait_range(mapping, pos, pos + count - 1)
        elif inode.pgdat.cfg.DIO_NOWAIT_READ_NEEDS_WRITEBACK:
            ret = filemap.kiocb_write_and_wait(iocb, count)
        else:
            ret = -errno.EAGAIN if filemap.filemap_range_has_page(
                mapping, pos, pos + count - 1) else 0
        if ret < 0:
            return ret
        retval = direct_IO(iocb, it)
        if retval >= 0:
            iocb.ki_pos += retval
            count -= retval
        over = count - iov_iter_count(it)
        if over > 0:
            iov_iter_revert(it, over)
        if retval < 0 or not count or iocb.ki_pos >= size:
            return retval
        return filemap_read(iocb, it, retval)
    return filemap_read(iocb, it, 0)


# --- buffered write ---------------------------------------------------------------------------
def _prepare_pages(mapping: Any, pos: int, end: int) -> tuple[np.ndarray, int]:
    """Pages for a write of bytes ``[pos, end)``: cached pages are used as they are, missing
    ones added (locked); a page the write covers only partly is read in first unless it is
    uptodate (``__block_write_begin`` on a block that is not new).

    Return: (pfns of the leading run of pages that can take the write, 0 or -errno that
    stopped it: -ENOMEM, -EIO).
    """
    first, last = pos >> PAGE_SHIFT, (end - 1) >> PAGE_SHIFT
    pfns = mapping.pages(first, last + 1)
    flags = mapping.pgdat.pages.flags
    err = 0
    missing = np.flatnonzero(pfns < 0)
    if len(missing):
        got = filemap.filemap_add_folios(mapping, missing + first)
        pfns[missing[: len(got)]] = got
        if len(got) < len(missing):
            err = -errno.ENOMEM
            pfns = pfns[: int(missing[len(got)])]
    partial = []
    if len(pfns) and (pos & _MASK or end < (first + 1) << PAGE_SHIFT):
        partial.append(0)
    if len(pfns) == last - first + 1 and end & _MASK and last != first:
        partial.append(last - first)
    for k in partial:
        pfn = int(pfns[k])
        if flags[pfn] & _UPTODATE:
            continue
        flags[pfn] &= _UNLOCK
        if filemap.filemap_read_folio(mapping, first + k) < 0:
            flags[pfns] &= _UNLOCK
            return pfns[:k], -errno.EIO
    return pfns, err


def generic_perform_write(iocb: Kiocb, it: IovIter) -> int:
    """``generic_perform_write()``: copy ``it`` into the page cache at ``ki_pos``.

    Per batch: ``a_ops.write_begin`` maps or allocates the blocks (it may prepare fewer
    bytes: ENOSPC), the source is copied, partial pages are read in where they are not
    uptodate, the bytes land in the pages, which become uptodate and dirty; ``i_size``
    grows to the end of what was copied (``generic_write_end``) and ``a_ops.write_end``
    cleans up after a short copy. Does not move ``ki_pos`` (the callers do, as in 5.9).

    Context: sleeps. Return: bytes written, or -errno if none (-EFAULT, -ENOSPC, -EIO,
    -ENOMEM).
    """
    mapping = iocb.ki_filp.f_mapping
    inode = mapping.host
    a_ops = mapping.a_ops
    write_begin = getattr(a_ops, "write_begin", None)
    write_end = getattr(a_ops, "write_end", None)
    mem = mapping.pgdat.mem.bytes
    flags = mapping.pgdat.pages.flags
    pos = iocb.ki_pos
    written = 0
    status = 0
    while iov_iter_count(it):
        nbytes = min(iov_iter_count(it), (((pos >> PAGE_SHIFT) + BATCH) << PAGE_SHIFT) - pos)
        if write_begin is not None:
            err, ok = write_begin(mapping, pos, nbytes)
            if ok < nbytes:
                nbytes = ok
                status = err
            if nbytes <= 0:
                status = status or -errno.ENOSPC
                break
        copied, data = copy_from_iter(nbytes, it)
        pfns, err = _prepare_pages(mapping, pos, pos + copied) if copied else (
            np.empty(0, np.int64), 0)
        accepted = min(copied, (((pos >> PAGE_SHIFT) + len(pfns)) << PAGE_SHIFT) - pos)
        if accepted < copied:
            iov_iter_revert(it, copied - accepted)
            status = err
        if accepted > 0:
            npages = ((pos + accepted - 1) >> PAGE_SHIFT) - (pos >> PAGE_SHIFT) + 1
            used = pfns[:npages]
            _scatter(mem, used, pos & _MASK, np.frombuffer(data, np.uint8)[:accepted])
            flags[used] = (flags[used] | _UPTODATE) & _UNLOCK
            filemap.folio_mark_dirty(mapping, used)
            if pos + accepted > inode.i_size:
                inode.i_size = pos + accepted
        if len(pfns) > 0:
            flags[pfns] &= _UNLOCK
        if write_end is not None:
            write_end(mapping, pos, nbytes, accepted)
        pos += accepted
        written += accepted
        if accepted < nbytes:
            if not status:
                status = -errno.EFAULT if copied < nbytes else -errno.ENOSPC
            break
    return written if written else status


_IOCB_APPEND: Final = int(IOCB.IOCB_APPEND)
_IOCB_NOWAIT: Final = int(IOCB.IOCB_NOWAIT)
_IOCB_DIRECT: Final = int(IOCB.IOCB_DIRECT)


def generic_write_checks(iocb: Kiocb, it: IovIter) -> int:
    """``generic_write_checks()``: O_APPEND moves ``ki_pos`` to EOF; a buffered IOCB_NOWAIT
    write is -EINVAL; a write at or past ``s_maxbytes`` is -EFBIG, one crossing it is cut.

    Return: the bytes to write (``it`` truncated to them), 0, or -errno.
    """
    count = iov_iter_count(it)
    if not count:
        return 0
    if iocb.ki_flags & _IOCB_APPEND:
        iocb.ki_pos = iocb.ki_filp.f_inode.i_size
    if iocb.ki_flags & _IOCB_NOWAIT and not iocb.ki_flags & _IOCB_DIRECT:
        return -errno.EINVAL
    maxbytes = _maxbytes(iocb)
    if iocb.ki_pos >= maxbytes:
        return -errno.EFBIG
    iov_iter_truncate(it, maxbytes - iocb.ki_pos)
    return iov_iter_count(it)


def generic_write_sync(iocb: Kiocb, count: int) -> int:
    """``generic_write_sync()``: after a write of ``count`` bytes ending at ``ki_pos``, an
    O_DSYNC / O_SYNC / RWF_DSYNC write syncs that range (``vfs_fsync_range``; datasync
    unless IOCB_SYNC). Return: ``count`` or the sync's -errno."""
    if iocb.ki_flags & IOCB.IOCB_DSYNC:
        f = iocb.ki_filp
        ret = f.f_op.fsync(f, not iocb.ki_flags & IOCB.IOCB_SYNC,
                           iocb.ki_pos - count, iocb.ki_pos - 1)
        if ret:
            return int(ret)
    return count


# --- the generic Direct I/O write (legacy-engine filesystems) ----------------------------------
def generic_file_direct_write(iocb: Kiocb, it: IovIter, direct_IO: DirectIO) -> int:
    """``generic_file_direct_write()``: write back and invalidate the page cache range
    (IOCB_NOWAIT: -EAGAIN if any page is cached; a page that stays (dirty) → 0, so the
    caller falls back to buffered I/O), run ``direct_IO``, invalidate again (failure:
    ``dio_warn_stale_pagecache``), grow ``i_size`` to the end of what was written and move
    ``ki_pos``.

    Return: bytes written (may be short: the rest is for buffered I/O), 0, or -errno.
    """
    f = iocb.ki_filp
    mapping = f.f_mapping
    inode = f.f_inode
    write_len = iov_iter_count(it)
    written = filemap.kiocb_invalidate_pages(iocb, write_len)
    if written:
        return 0 if written == -errno.EBUSY else written
    written = direct_IO(iocb, it)
    if written > 0:
        pos = iocb.ki_pos
        if mapping.nrpages:
            filemap.kiocb_invalidate_post_direct_write(iocb, written)
        pos += written
        write_len -= written
        if pos > inode.i_size and not inode.is_blk():
            inode.i_size = pos
        iocb.ki_pos = pos
    over = write_len - iov_iter_count(it)
    if over > 0:
        iov_iter_revert(it, over)
    return written


def direct_write_fallback(iocb: Kiocb, it: IovIter, direct_written: int,
                          buffered_written: int) -> int:
    """``direct_write_fallback()`` [6.x] (5.9: the tail of ``__generic_file_write_iter``):
    what a short Direct I/O write left was written through the page cache; write that back
    and drop it so the file looks as if Direct I/O wrote it all.

    Context: ``ki_pos`` is already past the buffered bytes. Return: total bytes, or -errno.
    """
    if buffered_written < 0:
        return direct_written if direct_written else buffered_written
    mapping = iocb.ki_filp.f_mapping
    pos = iocb.ki_pos - buffered_written
    end = iocb.ki_pos - 1
    err = filemap.filemap_write_and_wait_range(mapping, pos, end)
    if err < 0:
        iocb.ki_pos -= buffered_written
        return direct_written if direct_written else err
    filemap.invalidate_mapping_pages(mapping, pos >> PAGE_SHIFT, end >> PAGE_SHIFT)
    return direct_written + buffered_written


def generic_file_write_iter(iocb: Kiocb, it: IovIter, direct_IO: DirectIO | None = None) -> int:
    """``generic_file_write_iter()`` / ``__generic_file_write_iter()``: checks, then a
    buffered write, or with IOCB_DIRECT ``direct_IO`` through
    :func:`generic_file_direct_write` with a buffered fallback for what it left; then
    ``generic_write_sync``. Moves ``ki_pos``. Return: bytes written or -errno."""
    ret = generic_write_checks(iocb, it)
    if ret <= 0:
        return ret
    if iocb.ki_flags & IOCB.IOCB_DIRECT and direct_IO is not None:
        written = generic_file_direct_write(iocb, it, direct_IO)
        if written < 0 or not iov_iter_count(it):
            ret = written
        else:
            status = generic_perform_write(iocb, it)
            if status > 0:
                iocb.ki_pos += status
            ret = direct_write_fallback(iocb, it, written, status)
    else:
        ret = generic_perform_write(iocb, it)
        if ret > 0:
            iocb.ki_pos += ret
    if ret > 0:
        ret = generic_write_sync(iocb, ret)
    return ret

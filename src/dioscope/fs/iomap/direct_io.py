"""The iomap Direct I/O engine (``fs/iomap/direct-io.c``), per profile.

``iomap_dio_rw`` walks the file's extents (``iomap_begin``/``iomap_end`` of the filesystem)
and, per extent:

* HOLE, or UNWRITTEN for a read: ``iov_iter_zero`` copies zeros into the user buffer — no
  page is pinned (spec §11 item 28);
* MAPPED, or UNWRITTEN for a write: ``iomap_dio_bio_actor`` [5.9] / ``iomap_dio_bio_iter``
  [6.x] builds bios from the iterator with ``bio_iov_iter_get_pages`` (FOLL_GET in ``5.9``,
  FOLL_PIN in ``5.9-pin`` and ``6.18``), zeroes the sub-block head/tail of new or unwritten
  blocks with a bio of the zero page (``iomap_dio_zero``: ``get_page`` [5.9], ``pin_page``
  [5.9-pin, the series], no reference [6.18], Linux commit a450f49708ea (v6.5)), and submits;
* DELALLOC: -EIO ("Direct I/O collision with buffered writes").

Alignment: [5.9] ``(pos | length | iov_iter_alignment) & (lbs - 1)`` → -EINVAL per extent,
before anything is pinned; [6.18] only ``(pos | length) & (lbs - 1)`` here — user memory is
checked against the queue's ``dma_alignment`` when the bio is split at submission, after it
was pinned (docs/research-6.18-bio.md, Linux commits 7eac33186957 and fec2e705729d).

Errors: the first error wins (``iomap_dio_set_error``) and is the call's result even when
some bios already moved data (spec §8.2: a fault after 512 KiB gives -EFAULT).
"""

from __future__ import annotations

import errno
from collections.abc import Callable
from typing import Any, Final, Protocol

from ...block.bio import (
    bio_alloc,
    bio_check_pages_dirty,
    bio_iov_iter_get_pages,
    bio_release_pages,
    bio_set_pages_dirty,
)
from ...block.bio_completion import blk_status_to_errno
from ...block.blk_core import blk_finish_plug, blk_start_plug, submit_bio
from ...block.blk_types import BIO_MAX_VECS, REQ_FLAG, REQ_OP, SECTOR_SHIFT, Bio
from ...kernel.types import PAGE_SIZE
from ...lib.iov_iter import (
    IovIter,
    iov_iter_alignment,
    iov_iter_count,
    iov_iter_npages,
    iov_iter_reexpand,
    iov_iter_revert,
    iov_iter_truncate,
    iov_iter_zero,
)
from ...mm import filemap
from ...mm.gup import pin_page
from ...mm.page_alloc import ZERO_PFN
from ...mm.page_ref import get_page
from ..fs_types import (
    IOCB,
    IOMAP_FLAGS,
    IOMAP_OP,
    IOMAP_TYPE,
    Inode,
    IoMap,
    Kiocb,
    register_dio_engine,
)

__all__ = [
    "IOMAP_DIO",
    "IomapDio",
    "IomapOps",
    "iomap_dio_rw",
]


# Plain-int copies of the enum flags used per call (IntFlag arithmetic is slow in Python).
_IOCB_WRITE: Final = int(IOCB.IOCB_WRITE)
_IOCB_DSYNC: Final = int(IOCB.IOCB_DSYNC)
_IOCB_NOWAIT: Final = int(IOCB.IOCB_NOWAIT)
_IOMAP_F_SHARED: Final = int(IOMAP_FLAGS.IOMAP_F_SHARED)
_IOMAP_F_NEW: Final = int(IOMAP_FLAGS.IOMAP_F_NEW)
_IOMAP_DIRECT: Final = int(IOMAP_OP.IOMAP_DIRECT)
_IOMAP_WRITE: Final = int(IOMAP_OP.IOMAP_WRITE)
_IOMAP_NOWAIT: Final = int(IOMAP_OP.IOMAP_NOWAIT)
_OPF_WRITE: Final = int(REQ_OP.REQ_OP_WRITE) | int(REQ_FLAG.REQ_SYNC) | int(REQ_FLAG.REQ_IDLE)
_OPF_READ: Final = int(REQ_OP.REQ_OP_READ)
_OPF_READ_SYNC: Final = _OPF_READ | int(REQ_FLAG.REQ_SYNC) | int(REQ_FLAG.REQ_IDLE)


class IOMAP_DIO:
    """``dio->flags`` (``fs/iomap/direct-io.c`` private bits and ``include/linux/iomap.h``)."""

    IOMAP_DIO_UNWRITTEN: Final = 1 << 0
    IOMAP_DIO_COW: Final = 1 << 1
    IOMAP_DIO_WRITE_FUA: Final = 1 << 28
    IOMAP_DIO_NEED_SYNC: Final = 1 << 29
    IOMAP_DIO_WRITE: Final = 1 << 30
    IOMAP_DIO_DIRTY: Final = 1 << 31


class IomapOps(Protocol):
    """What a filesystem gives the engine (``struct iomap_ops`` + ``iomap_dio_ops``).

    ``iomap_begin(inode, pos, length, flags) -> (errno, IoMap)``;
    ``iomap_end(inode, pos, length, written, flags, iomap) -> errno``;
    ``end_io(iocb, size, error, dio_flags) -> errno`` (unwritten conversion, i_size update);
    ``mapping`` helpers come from ``mm.filemap`` through the inode's ``i_mapping``.
    """

    iomap_begin: Callable[[Inode, int, int, int], tuple[int, IoMap | None]]
    iomap_end: Callable[[Inode, int, int, int, int, IoMap], int] | None
    end_io: Callable[[Kiocb, int, int, int], int] | None


class IomapDio:
    """``struct iomap_dio``: one Direct I/O in flight. (A plain class, not a dataclass:
    compiled, a dataclass keeps an interpreted ``__init__``; ARCHITECTURE.md.)"""

    def __init__(self, iocb: Kiocb, i_size: int) -> None:
        self.iocb = iocb
        self.i_size = i_size
        self.flags = 0
        self.size = 0
        self.error = 0
        self.ref = 1
        self.bios = 0
        self.zero_bios = 0
        self.submitted: list[Bio] = []


def _set_error(dio: IomapDio, ret: int) -> None:
    """``iomap_dio_set_error()``: the first error wins."""
    if not dio.error:
        dio.error = ret


def _bio_end_io(bio: Bio) -> None:
    """``iomap_dio_bio_end_io()``: record the status, drop the dio's reference, then release
    the pages: reads into user memory re-check dirtiness (``bio_check_pages_dirty``),
    everything else ``bio_release_pages(bio, false)``."""
    dio: IomapDio = bio.bi_private
    if bio.bi_status:
        _set_error(dio, blk_status_to_errno(bio.bi_status))
    dio.ref -= 1
    if dio.flags & IOMAP_DIO.IOMAP_DIO_DIRTY:
        bio_check_pages_dirty(bio)
    else:
        bio_release_pages(bio, False)
        bio.bio_put_ref()


def _submit(dio: IomapDio, bio: Bio) -> None:
    """``iomap_dio_submit_bio()``."""
    bio.bi_private = dio
    bio.bi_end_io = _bio_end_io
    dio.ref += 1
    dio.bios += 1
    submit_bio(bio)


def _sector(iomap: IoMap, pos: int) -> int:
    """``iomap_sector()``: the disk sector of file position ``pos`` in ``iomap``."""
    return (iomap.addr + pos - iomap.offset) >> SECTOR_SHIFT


def _iomap_dio_zero(dio: IomapDio, iomap: IoMap, pos: int, length: int) -> None:
    """``iomap_dio_zero()``: write zeros over ``[pos, pos+length)`` with a one-vec bio of the
    zero page. [5.9] takes ``get_page`` on it, [5.9-pin] ``pin_page`` (the series: counted
    in vmstat), [6.18] nothing (the bio is not BIO_PAGE_PINNED)."""
    bdev = iomap.bdev
    pgdat = bdev.pgdat  # type: ignore[union-attr]
    bio = bio_alloc(bdev, 1, _OPF_WRITE)
    assert bio is not None
    bio.bi_iter.bi_sector = _sector(iomap, pos)
    cfg = pgdat.cfg
    if cfg.IOV_ITER_EXTRACT:
        pass
    elif cfg.PIN_PAGE:
        pin_page(pgdat, ZERO_PFN, holder=bio.holder)
    else:
        get_page(pgdat, ZERO_PFN, holder=bio.holder, site="iomap_dio_zero")
    bio.set_bvec(0, ZERO_PFN, length, 0)
    bio.bi_vcnt = 1
    bio.bi_iter.bi_size = length
    dio.zero_bios += 1
    _submit(dio, bio)


def _lbs(iomap: IoMap) -> int:
    return int(iomap.bdev.limits.logical_block_size)  # type: ignore[union-attr]


def _bio_actor(inode: Inode, pos: int, length: int, dio: IomapDio, iomap: IoMap,
               it: IovIter) -> int:
    """``iomap_dio_bio_actor()`` [5.9] / ``iomap_dio_bio_iter()`` [6.x] for one extent.

    Return: bytes submitted (> 0), or 0 / -errno when nothing was.
    """
    cfg = inode.pgdat.cfg
    lbs = _lbs(iomap)
    fs_block_size = 1 << inode.i_blkbits
    if cfg.IOV_ITER_EXTRACT:
        if (pos | length) & (lbs - 1):
            return -errno.EINVAL
    elif (pos | length | iov_iter_alignment(it)) & (lbs - 1):
        return -errno.EINVAL
    need_zeroout = False
    if iomap.type == IOMAP_TYPE.IOMAP_UNWRITTEN:
        dio.flags |= IOMAP_DIO.IOMAP_DIO_UNWRITTEN
        need_zeroout = True
    if iomap.flags & _IOMAP_F_SHARED:
        dio.flags |= IOMAP_DIO.IOMAP_DIO_COW
    if iomap.flags & _IOMAP_F_NEW:
        need_zeroout = True
    write = bool(dio.flags & IOMAP_DIO.IOMAP_DIO_WRITE)
    orig_count = iov_iter_count(it)
    iov_iter_truncate(it, length)
    nr_pages = iov_iter_npages(it, BIO_MAX_VECS)
    copied = 0
    ret = 0
    if nr_pages <= 0:
        iov_iter_reexpand(it, orig_count)
        return nr_pages
    if need_zeroout and write:
        pad = pos & (fs_block_size - 1)
        if pad:
            _iomap_dio_zero(dio, iomap, pos - pad, pad)
    bdev = iomap.bdev
    while True:
        if dio.error:
            iov_iter_revert(it, copied)
            copied = ret = 0
            break
        opf = _OPF_WRITE if write else (_OPF_READ_SYNC if cfg.DIO_READ_REQ_SYNC else _OPF_READ)
        bio = bio_alloc(bdev, nr_pages, opf)
        assert bio is not None
        bio.bi_iter.bi_sector = _sector(iomap, pos)
        ret = bio_iov_iter_get_pages(bio, it, lbs - 1)
        if ret:
            # Stop part way: the sub-block tail is still zeroed below.
            bio.bio_put_ref()
            break
        n = bio.bi_iter.bi_size
        if dio.flags & IOMAP_DIO.IOMAP_DIO_DIRTY:
            bio_set_pages_dirty(bio)
        dio.size += n
        copied += n
        nr_pages = iov_iter_npages(it, BIO_MAX_VECS)
        _submit(dio, bio)
        pos += n
        if not nr_pages:
            break
    if write and (need_zeroout or pos >= inode.i_size):
        pad = pos & (fs_block_size - 1)
        if pad:
            _iomap_dio_zero(dio, iomap, pos, fs_block_size - pad)
    iov_iter_reexpand(it, orig_count - copied)
    return copied if copied else ret


def _hole_actor(length: int, dio: IomapDio, it: IovIter) -> int:
    """``iomap_dio_hole_actor()``: zeros into the user buffer, no page pinned."""
    got = iov_iter_zero(length, it)
    dio.size += got
    return got if got else -errno.EFAULT


def _actor(inode: Inode, pos: int, length: int, dio: IomapDio, iomap: IoMap,
           it: IovIter) -> int:
    """``iomap_dio_actor()``: dispatch on the extent type."""
    write = bool(dio.flags & IOMAP_DIO.IOMAP_DIO_WRITE)
    t = iomap.type
    if t == IOMAP_TYPE.IOMAP_HOLE:
        if write:
            inode.pgdat.events.warn_once("iomap_dio_actor", "write into a hole")
            return -errno.EIO
        return _hole_actor(length, dio, it)
    if t == IOMAP_TYPE.IOMAP_UNWRITTEN and not write:
        return _hole_actor(length, dio, it)
    if t in (IOMAP_TYPE.IOMAP_MAPPED, IOMAP_TYPE.IOMAP_UNWRITTEN):
        return _bio_actor(inode, pos, length, dio, iomap, it)
    inode.pgdat.events.warn_once(
        "iomap_dio_actor", "Direct I/O collision with buffered writes")
    return -errno.EIO


def _wait(dio: IomapDio, bdevs: list[Any]) -> None:
    """Wait for the dio's bios: run the devices' completion queues until only the
    submitter's reference is left (``blk_wait_io`` in the synchronous kiocb path)."""
    while dio.ref > 1:
        progressed = False
        for bdev in bdevs:
            if bdev.cq.pending:
                bdev.cq.run()
                progressed = True
        if not progressed:
            raise RuntimeError("iomap_dio_rw: bios outstanding but nothing left to complete")


def iomap_dio_rw(iocb: Kiocb, it: IovIter, ops: IomapOps, dio_flags: int = 0) -> int:
    """``iomap_dio_rw()``: a Direct I/O on ``iocb.ki_filp`` at ``iocb.ki_pos``.

    Context: synchronous kiocb; sleeps until every bio has completed.
    Return: bytes transferred (reads clipped to i_size), 0 at or past EOF for reads, or
    -errno: EINVAL (alignment), EFAULT (user memory; wins over a partial transfer), EIO,
    EAGAIN (IOCB_NOWAIT would block), ENOTBLK (the filesystem must fall back to buffered I/O).
    """
    inode = iocb.ki_filp.f_inode
    mapping = inode.i_mapping
    count = iov_iter_count(it)
    if not count:
        return 0
    cfg = inode.pgdat.cfg
    dio = IomapDio(iocb, inode.i_size)
    pos = iocb.ki_pos
    end = pos + count - 1
    write = bool(iocb.ki_flags & _IOCB_WRITE)
    iomap_flags = _IOMAP_DIRECT
    if not write:
        if pos >= dio.i_size:
            return 0
        if it.user_backed_iter():  # [5.9] iter_is_iovec(); [6.x] user_backed_iter()
            dio.flags |= IOMAP_DIO.IOMAP_DIO_DIRTY
    else:
        iomap_flags |= _IOMAP_WRITE
        dio.flags |= IOMAP_DIO.IOMAP_DIO_WRITE
        if iocb.ki_flags & _IOCB_DSYNC:
            dio.flags |= IOMAP_DIO.IOMAP_DIO_NEED_SYNC
    if iocb.ki_flags & _IOCB_NOWAIT:
        # [5.9] any cached page in the range would block; [6.18] reads only care about pages
        # that need writeback, writes still refuse any cached page (kiocb_invalidate_pages).
        if write or not cfg.DIO_NOWAIT_READ_NEEDS_WRITEBACK:
            busy = filemap.filemap_range_has_page(mapping, pos, end)
        else:
            busy = filemap.filemap_range_needs_writeback(mapping, pos, end)
        if busy:
            return -errno.EAGAIN
        iomap_flags |= _IOMAP_NOWAIT
    ret = filemap.filemap_write_and_wait_range(mapping, pos, end)
    if ret:
        return ret
    if write:
        ret = filemap.invalidate_inode_pages2_range(
            mapping, pos // PAGE_SIZE, end // PAGE_SIZE)
        if ret:
            if cfg.IOV_ITER_EXTRACT:
                return -errno.ENOTBLK  # kiocb_invalidate_pages(): fall back to buffered
            inode.pgdat.events.warn_once("dio_warn_stale_pagecache", "stale page cache")
    inode.i_dio_count += 1
    plug = blk_start_plug()
    bdevs: list[Any] = []
    ret = 0
    try:
        while iov_iter_count(it):
            err, iomap = ops.iomap_begin(inode, pos, iov_iter_count(it), iomap_flags)
            if err:
                ret = err
                break
            assert iomap is not None
            if iomap.bdev is not None and iomap.bdev not in bdevs:
                bdevs.append(iomap.bdev)
            length = min(iov_iter_count(it), iomap.offset + iomap.length - pos)
            written = _actor(inode, pos, length, dio, iomap, it)
            if ops.iomap_end is not None:
                ops.iomap_end(inode, pos, length, max(written, 0), iomap_flags, iomap)
            if written <= 0:
                ret = written
                break
            pos += written
            if not write and pos >= dio.i_size and not cfg.IOMAP_ITER_DIO:
                # [5.9] iomap_apply loop: stop at i_size; revert the iterator past it.
                iov_iter_revert(it, pos - dio.i_size)
                break
    finally:
        blk_finish_plug(plug)
    if cfg.IOMAP_ITER_DIO and not write and pos >= dio.i_size:
        # [5.15+] iomap_iter walked the whole request (holes past EOF were zero-filled);
        # only report data up to i_size and revert the iterator to match.
        iov_iter_revert(it, pos - dio.i_size)
    if ret == -errno.ENOTBLK:
        ret = 0
    if ret < 0:
        _set_error(dio, ret)
    dio.ref -= 1
    _wait(dio, bdevs)
    inode.i_dio_count -= 1
    return _complete(dio, ops, inode, write)


def _complete(dio: IomapDio, ops: IomapOps, inode: Inode, write: bool) -> int:
    """``iomap_dio_complete()``: invalidate the page cache over what a write changed, run the
    filesystem's end_io (unwritten conversion, i_size), then the result and ``ki_pos``."""
    iocb = dio.iocb
    offset = iocb.ki_pos
    if not dio.error and write and dio.size:
        filemap.invalidate_inode_pages2_range(
            inode.i_mapping, offset // PAGE_SIZE, (offset + dio.size - 1) // PAGE_SIZE)
    ret = dio.error
    if write and ops.end_io is not None:
        # ext4 hands iomap_dio_rw its dops (ext4_dio_write_ops) for writes only.
        ret = ops.end_io(iocb, dio.size, ret, dio.flags)
    if not ret:
        ret = dio.size
        if not write and offset + ret > dio.i_size:
            ret = dio.i_size - offset
        iocb.ki_pos += ret
    if ret > 0 and dio.flags & IOMAP_DIO.IOMAP_DIO_NEED_SYNC:
        ret = _generic_write_sync(iocb, ret)
    return ret


def _generic_write_sync(iocb: Kiocb, count: int) -> int:
    """``generic_write_sync()``: O_DSYNC / O_SYNC / RWF_(D)SYNC writes are made durable
    before the call returns (``vfs_fsync_range`` over what was written).
    Return: ``count``, or the fsync's -errno."""
    f = iocb.ki_filp
    fsync = getattr(f.f_op, "fsync", None)
    if fsync is None:
        return count
    ret = fsync(f, not iocb.ki_flags & int(IOCB.IOCB_SYNC), iocb.ki_pos - count,
                iocb.ki_pos - 1)
    return int(ret) if ret else count


register_dio_engine("iomap", iomap_dio_rw)

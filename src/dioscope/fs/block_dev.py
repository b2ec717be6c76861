"""Direct I/O on a raw block device: [5.9] ``fs/block_dev.c``, [6.18] ``block/fops.c``.

``blkdev_direct_IO`` asks for up to 257 pages of the iterator; 0 means nothing to do.

* **Simple path** (synchronous, at most 256 pages): one bio, one ``bio_iov_iter_get_pages``
  call, submit and wait, ``bio_release_pages(bio, should_dirty)``. A buffer that can only be
  partly pinned gives a **short count** (spec §8.2, §11 item 32: 524288 for a 1 MiB read
  whose second half is unmapped); nothing pinnable gives -EFAULT.
* **Multi-bio path** (more than 256 pages, or an async kiocb in 5.9): bios of at most 256
  vecs under one plug until the iterator is empty; reads use ``bio_set_pages_dirty`` /
  ``bio_check_pages_dirty``; writes carry REQ_FUA with O_DSYNC. A ``bio_iov_iter_get_pages``
  failure ends that bio with BLK_STS_IOERR and the loop, and the call returns that -errno
  (-EFAULT after a partial transfer). No bio looks at an earlier bio's error: every page is
  pinned and every bio submitted until the iterator runs out (docs/research-6.18-bio.md §3.9);
  the first error is the result.
* **Async single bio** [6.18] (``__blkdev_direct_IO_async``).

Alignment: [5.9] ``(pos | iov_iter_alignment) & (lbs - 1)`` → -EINVAL in each path, before
pinning; [6.18] only ``(pos | count) & (lbs - 1)`` at entry (``blkdev_dio_invalid``, Linux
commit 5ff3f74e145a ("block: simplify direct io validity check")), bios built with
``bio_iov_iter_get_pages(bio, iter, lbs - 1)`` (Linux commit 506aa235f6e0 ("block: move
bio_iov_iter_get_bdev_pages to block/fops.c")); memory alignment is checked when the bio is
split at submission (``bio_split_io_at``).

The device as a file (:class:`BlockDeviceFile`, :func:`blkdev_open`) is in
``fs/block_dev_file.py``.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..block.bio import (
    bio_alloc,
    bio_check_pages_dirty,
    bio_iov_bvec_set,
    bio_iov_iter_get_pages,
    bio_release_pages,
    bio_set_pages_dirty,
)
from ..block.bio_completion import bio_endio, blk_status_to_errno
from ..block.blk_core import blk_finish_plug, blk_start_plug, submit_bio
from ..block.blk_types import BIO_MAX_VECS, BLK_STS, REQ_FLAG, REQ_OP, SECTOR_SHIFT, Bio
from ..lib.iov_iter import (
    ITER_BVEC,
    ITER_DEST,
    IovIter,
    iov_iter_alignment,
    iov_iter_count,
    iov_iter_npages,
)
from .direct_io_bio import EIOCBQUEUED, io_schedule
from .fs_types import IOCB, Kiocb

if TYPE_CHECKING:
    from ..block.devices import BlockDevice

__all__ = [
    "DIO_INLINE_BIO_VECS",
    "blkdev_direct_IO",
    "dio_bio_write_op",
    "submit_and_wait",
]

DIO_INLINE_BIO_VECS = 4


def _lbs(bdev: BlockDevice) -> int:
    return int(bdev.limits.logical_block_size)


def _v6(bdev: BlockDevice) -> bool:
    return bool(bdev.pgdat.cfg.IOV_ITER_EXTRACT)


def _should_dirty(it: IovIter, v6: bool) -> bool:
    """READ into user memory: [5.9] ``iter_is_iovec``, [6.18] ``user_backed_iter``."""
    if it.iov_iter_rw() != ITER_DEST:
        return False
    return it.user_backed_iter() if v6 else it.iter_is_iovec()


def dio_bio_write_op(iocb: Kiocb) -> int:
    """``dio_bio_write_op()``: WRITE | SYNC | IDLE, plus FUA for O_DSYNC (no completion work
    item is needed to flush)."""
    op = int(REQ_OP.REQ_OP_WRITE | REQ_FLAG.REQ_SYNC | REQ_FLAG.REQ_IDLE)
    if iocb.ki_flags & IOCB.IOCB_DSYNC:
        op |= int(REQ_FLAG.REQ_FUA)
    return op


def submit_and_wait(bio: Bio) -> int:
    """Submit ``bio`` and sleep until it completes (``submit_bio_wait`` [6.18], the
    ``blkdev_bio_end_io_simple`` wait loop [5.9]). Return: its ``blk_status_t``."""
    done: list[int] = []

    def end_io(b: Bio) -> None:
        done.append(int(b.bi_status))

    bio.bi_end_io = end_io
    submit_bio(bio)
    while not done:
        if not io_schedule([bio.bi_bdev]):
            raise RuntimeError(f"{bio!r} never completed")
    return done[0]


def __blkdev_direct_IO_simple(iocb: Kiocb, it: IovIter, bdev: BlockDevice,
                              nr_pages: int) -> int:
    """``__blkdev_direct_IO_simple()``: one bio of ``nr_pages`` vecs, synchronous.

    Return: bytes (the bio's size: short when the buffer could only be partly pinned, or
    [6.18] when the total was trimmed to the logical block size), or -errno (EINVAL [5.9
    alignment], EFAULT when nothing could be pinned, the I/O error).
    """
    v6 = _v6(bdev)
    pos = iocb.ki_pos
    lbs = _lbs(bdev)
    if not v6 and (pos | iov_iter_alignment(it)) & (lbs - 1):
        return -errno.EINVAL
    read = it.iov_iter_rw() == ITER_DEST
    opf = int(REQ_OP.REQ_OP_READ) if read else dio_bio_write_op(iocb)
    # On-stack bio with inline vecs for <= 4 pages, else a kmalloc'd array of nr_pages.
    bio = Bio(bdev, nr_pages, opf, bdev.pgdat)
    bio.bi_iter.bi_sector = pos >> SECTOR_SHIFT
    should_dirty = _should_dirty(it, v6)
    ret = bio_iov_iter_get_pages(bio, it, lbs - 1)
    if ret:
        return ret
    ret = bio.bi_iter.bi_size
    if v6 and iocb.ki_flags & IOCB.IOCB_NOWAIT:
        bio.bi_opf |= int(REQ_FLAG.REQ_NOWAIT)
    status = submit_and_wait(bio)
    bio_release_pages(bio, should_dirty)
    if status:
        ret = blk_status_to_errno(status)
    return ret


@dataclass
class BlkdevDio:
    """``struct blkdev_dio`` (embedded in its first bio)."""

    iocb: Kiocb
    bdev: BlockDevice
    is_sync: bool
    should_dirty: bool
    size: int = 0
    ref: int = 1
    multi_bio: bool = False
    """[5.9] only: ``ref`` counts from 2 once a second bio exists."""
    waiting: bool = True
    """``dio->waiter`` still set: the last bio has not completed."""
    status: int = 0
    """``dio->bio.bi_status``: the first error of any bio."""
    bios: list[Bio] = field(default_factory=list)


def _blkdev_bio_end_io(bio: Bio) -> None:
    """``blkdev_bio_end_io()``: keep the first error; the last bio wakes the waiter (or, async,
    completes the kiocb); then release the bio's pages."""
    dio: BlkdevDio = bio.bi_private
    if bio.bi_status and not dio.status:
        dio.status = int(bio.bi_status)
    v6 = _v6(dio.bdev)
    if v6:
        dio.ref -= 1
        last = dio.ref == 0
    elif not dio.multi_bio:
        last = True
    else:
        dio.ref -= 1
        last = dio.ref == 0
    if last:
        if not dio.is_sync:
            iocb = dio.iocb
            if not dio.status:
                ret = dio.size
                iocb.ki_pos += ret
            else:
                ret = blk_status_to_errno(dio.status)
            iocb.ki_complete(iocb, ret)
        else:
            dio.waiting = False
    if dio.should_dirty:
        bio_check_pages_dirty(bio)
    else:
        bio_release_pages(bio, False)
        bio.bio_put_ref()


def _vecs_to_alloc(it: IovIter, max_segs: int, v6: bool) -> int:
    """[5.9] ``iov_iter_npages``; [6.18] ``bio_iov_vecs_to_alloc`` (0 for ITER_BVEC, whose
    bvec array the bio borrows)."""
    if v6 and it.iter_type == ITER_BVEC:
        return 0
    return iov_iter_npages(it, max_segs)


def __blkdev_direct_IO(iocb: Kiocb, it: IovIter, bdev: BlockDevice, nr_pages: int) -> int:
    """``__blkdev_direct_IO()``: bios of at most 256 vecs until the iterator is empty.

    Context: sleeps for a synchronous kiocb; an async one returns -EIOCBQUEUED.
    Return: bytes, or the -errno of the first failure: -EFAULT (pinning), the first bio's
    I/O error, [5.9] -EINVAL (alignment), [6.18] -EAGAIN (IOCB_NOWAIT with more than one bio).
    """
    v6 = _v6(bdev)
    pos = iocb.ki_pos
    lbs = _lbs(bdev)
    if not v6 and (pos | iov_iter_alignment(it)) & (lbs - 1):
        return -errno.EINVAL
    read = it.iov_iter_rw() == ITER_DEST
    opf = int(REQ_OP.REQ_OP_READ) if read else dio_bio_write_op(iocb)
    bio = bio_alloc(bdev, nr_pages, opf, bdev.pgdat)
    assert bio is not None
    dio = BlkdevDio(iocb, bdev, iocb.is_sync_kiocb(), _should_dirty(it, v6))
    if v6 or dio.is_sync:
        bio.bio_get()  # the dio lives in the first bio
    plug = blk_start_plug()  # [5.9] not for IOCB_HIPRI (polled) I/O
    ret = 0
    try:
        while True:
            bio.bi_iter.bi_sector = pos >> SECTOR_SHIFT
            bio.bi_private = dio
            bio.bi_end_io = _blkdev_bio_end_io
            dio.bios.append(bio)
            ret = bio_iov_iter_get_pages(bio, it, lbs - 1)
            if ret:
                bio.bi_status = BLK_STS.BLK_STS_IOERR
                bio_endio(bio)
                break
            if v6 and iocb.ki_flags & IOCB.IOCB_NOWAIT:
                if iov_iter_count(it):
                    # More than one bio could fail part way under NOWAIT: retry blocking.
                    bio_release_pages(bio, False)
                    bio.bio_put_ref()
                    return -errno.EAGAIN
                bio.bi_opf |= int(REQ_FLAG.REQ_NOWAIT)
            if read and dio.should_dirty:
                bio_set_pages_dirty(bio)
            dio.size += bio.bi_iter.bi_size
            pos += bio.bi_iter.bi_size
            nr_pages = _vecs_to_alloc(it, BIO_MAX_VECS, v6)
            if not nr_pages:
                submit_bio(bio)
                break
            if v6:
                dio.ref += 1
            elif not dio.multi_bio:
                if not dio.is_sync:
                    bio.bio_get()
                dio.multi_bio = True
                dio.ref = 2
            else:
                dio.ref += 1
            submit_bio(bio)
            nxt = bio_alloc(bdev, nr_pages, opf, bdev.pgdat)
            assert nxt is not None
            bio = nxt
    finally:
        blk_finish_plug(plug)
    if not dio.is_sync:
        return -EIOCBQUEUED
    while dio.waiting:
        if not io_schedule([bdev]):
            raise RuntimeError("__blkdev_direct_IO: bios outstanding but nothing to complete")
    if not ret:
        ret = blk_status_to_errno(dio.status)
    if not ret:
        ret = dio.size
    return ret


def _blkdev_bio_end_io_async(bio: Bio) -> None:
    """``blkdev_bio_end_io_async()`` [6.18]."""
    dio: BlkdevDio = bio.bi_private
    iocb = dio.iocb
    if not bio.bi_status:
        ret = dio.size
        iocb.ki_pos += ret
    else:
        ret = blk_status_to_errno(bio.bi_status)
    iocb.ki_complete(iocb, ret)
    if dio.should_dirty:
        bio_check_pages_dirty(bio)
    else:
        bio_release_pages(bio, False)
        bio.bio_put_ref()


def __blkdev_direct_IO_async(iocb: Kiocb, it: IovIter, bdev: BlockDevice,
                             nr_pages: int) -> int:
    """``__blkdev_direct_IO_async()`` [6.18]: one bio, completion through ``ki_complete``;
    an ITER_BVEC iterator lends its bvec array (no pages taken, iterator not advanced).
    Return: -EIOCBQUEUED, or the -errno of ``bio_iov_iter_get_pages``."""
    read = it.iov_iter_rw() == ITER_DEST
    opf = int(REQ_OP.REQ_OP_READ) if read else dio_bio_write_op(iocb)
    bio = bio_alloc(bdev, nr_pages, opf, bdev.pgdat)
    assert bio is not None
    dio = BlkdevDio(iocb, bdev, False, False)
    bio.bi_private = dio
    bio.bi_iter.bi_sector = iocb.ki_pos >> SECTOR_SHIFT
    bio.bi_end_io = _blkdev_bio_end_io_async
    if it.iter_type == ITER_BVEC:
        bio_iov_bvec_set(bio, it)
    else:
        ret = bio_iov_iter_get_pages(bio, it, _lbs(bdev) - 1)
        if ret:
            bio.bio_put_ref()
            return ret
    dio.size = bio.bi_iter.bi_size
    if read and it.user_backed_iter():
        dio.should_dirty = True
        bio_set_pages_dirty(bio)
    if iocb.ki_flags & IOCB.IOCB_NOWAIT:
        bio.bi_opf |= int(REQ_FLAG.REQ_NOWAIT)
    submit_bio(bio)
    return -EIOCBQUEUED


def blkdev_direct_IO(iocb: Kiocb, it: IovIter) -> int:
    """``blkdev_direct_IO()``: Direct I/O on the block device ``iocb.ki_filp`` is open on.

    [5.9]: ``iov_iter_npages(iter, 257)``; 0 → 0; synchronous and ≤ 256 → simple path, else
    multi-bio. [6.18]: empty → 0; ``(pos | count) & (lbs - 1)`` → -EINVAL; ≤ 256 vecs →
    simple (sync) or async single bio; more → multi-bio (-EINVAL for IOCB_ATOMIC).
    Return: bytes, -EIOCBQUEUED (async), or -errno.
    """
    bdev = iocb.ki_filp.f_inode.i_bdev
    assert bdev is not None, "not a block device inode"
    if _v6(bdev):
        if not iov_iter_count(it):
            return 0
        if (iocb.ki_pos | iov_iter_count(it)) & (_lbs(bdev) - 1):
            return -errno.EINVAL  # blkdev_dio_invalid()
        nr_pages = _vecs_to_alloc(it, BIO_MAX_VECS + 1, True)
        if nr_pages <= BIO_MAX_VECS:
            if iocb.is_sync_kiocb():
                return __blkdev_direct_IO_simple(iocb, it, bdev, nr_pages)
            return __blkdev_direct_IO_async(iocb, it, bdev, nr_pages)
        if iocb.ki_flags & IOCB.IOCB_ATOMIC:
            return -errno.EINVAL
        return __blkdev_direct_IO(iocb, it, bdev, min(nr_pages, BIO_MAX_VECS))
    nr_pages = iov_iter_npages(it, BIO_MAX_VECS + 1)
    if not nr_pages:
        return 0
    if iocb.is_sync_kiocb() and nr_pages <= BIO_MAX_VECS:
        return __blkdev_direct_IO_simple(iocb, it, bdev, nr_pages)
    return __blkdev_direct_IO(iocb, it, bdev, min(nr_pages, BIO_MAX_VECS))

"""The legacy Direct I/O engine's state and its bios (``fs/direct-io.c``, part 1 of 2).

``struct dio`` / ``struct dio_submit``, the three kinds of page reference the engine holds,
and the bio half of the file: allocation, submission, completion (``dio_bio_end_io`` /
``dio_bio_end_aio``), ``dio_bio_complete``, reaping, waiting, ``dio_cleanup`` and
``dio_complete``. The walk over user pages and file blocks is in ``fs/direct_io.py``.

References, per profile (spec §6.3):

=========  ===========================  =======================  ==============================
profile    page queue (refill)          "in dio" and "bio" refs  release
=========  ===========================  =======================  ==============================
5.9        ``iov_iter_get_pages``       ``get_page``             ``put_page``
5.9-pin    ``iov_iter_pin_pages``       ``pin_page`` (counted)   ``unpin_user_page``
6.18       ``iov_iter_extract_pages``   ``folio_add_pin`` (not   ``unpin_user_page`` (counted),
           (pins user-backed only)      counted; only if         only if ``dio->is_pinned``
                                        ``dio->is_pinned``)
=========  ===========================  =======================  ==============================

5.9-pin is [PATCH v3 3/3] "bio: convert get_user_pages_fast() --> pin_user_pages_fast()"
<20200831071439.1014766-4-jhubbard@nvidia.com>; 6.18 is Linux commit 1ccf164ec866
("block: Use iov_iter_extract_pages() and page pinning in direct-io.c") (v6.5), with
``folio_add_pin`` from Linux commit 1101fb8f89e5 ("mm: Provide a function to get an
additional pin on a page") (v6.5). Who holds what, for the sanitizer: the page queue and the
"in dio" reference belong to the ``Dio``; a "bio" reference belongs to the bio (``bio.holder``),
which ``bio_release_pages`` releases as.
"""

from __future__ import annotations

import enum
import errno
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ..block.bio import bio_alloc, bio_check_pages_dirty, bio_release_pages, bio_set_pages_dirty
from ..block.bio_completion import blk_status_to_errno
from ..block.blk_core import submit_bio
from ..block.blk_mq import blk_mq_flush_plug_list
from ..block.blk_types import BIO_FLAG, BLK_STS, REQ_FLAG, REQ_OP, Bio
from ..kernel.task import current
from ..kernel.types import PAGE_SIZE
from ..mm.filemap import invalidate_inode_pages2_range
from ..mm.gup import folio_add_pin, pin_page, unpin_user_page
from ..mm.page_ref import get_page, put_page
from .fs_types import BufferHead, Inode, Kiocb

if TYPE_CHECKING:
    from ..block.devices import BlockDevice
    from ..lib.iov_iter import IovIter
    from ..mm.page_alloc import PgData

__all__ = [
    "DIO",
    "DIO_PAGES",
    "EIOCBQUEUED",
    "Dio",
    "DioIodone",
    "DioSubmit",
    "GetBlock",
    "dio_bio_submit",
    "dio_cleanup",
    "dio_complete",
    "io_schedule",
]

DIO_PAGES = 64
"""User pages mapped per refill of the page queue."""
EIOCBQUEUED = 529
"""``-EIOCBQUEUED``: the I/O was queued and will complete through ``ki_complete``."""
NULL = -1
"""A NULL ``struct page *`` (frame 0 is the zero page, so 0 cannot mean NULL)."""

DIO_COMPLETE_ASYNC = 0x01
DIO_COMPLETE_INVALIDATE = 0x02

GetBlock = Callable[[Inode, int, BufferHead, int], int]
"""``get_block_t``: ``get_block(inode, iblock, bh_result, create) -> 0 or -errno``. It fills
``bh.b_blocknr``, ``bh.b_size`` (bytes mapped contiguously; on entry the most wanted),
``mapped``/``new``/``boundary`` and ``b_bdev``."""
DioIodone = Callable[[Kiocb, int, int, Any], int]
"""``dio_iodone_t``: ``end_io(iocb, offset, result, private) -> 0 or -errno``."""


class DIO(enum.IntFlag):
    """``__blockdev_direct_IO`` flags (``include/linux/fs.h``)."""

    DIO_LOCKING = 0x01
    """Take i_rwsem for reads and write back the page cache range first."""
    DIO_SKIP_HOLES = 0x02
    """Inside i_size, never allocate: a write into a hole stops with -ENOTBLK."""


class RefKind(enum.Enum):
    GET = "get"  # 5.9
    PIN = "pin"  # 5.9-pin
    EXTRACT = "extract"  # 6.18


def ref_kind(pgdat: PgData) -> RefKind:
    cfg = pgdat.cfg
    if cfg.IOV_ITER_EXTRACT:
        return RefKind.EXTRACT
    if cfg.DIO_FOLL_PIN:
        return RefKind.PIN
    return RefKind.GET


class Dio:
    """``struct dio``: what the submission path shares with bio completion."""

    def __init__(self, pgdat: PgData, iocb: Kiocb, inode: Inode, flags: int) -> None:
        self.pgdat = pgdat
        self.kind = ref_kind(pgdat)
        self.flags = flags
        self.op = int(REQ_OP.REQ_OP_READ)
        self.op_flags = 0
        self.inode = inode
        self.i_size = 0
        self.end_io: DioIodone | None = None
        self.is_pinned = False
        """[6.18] ``iov_iter_extract_will_pin()``: the pages carry pins to drop."""
        self.private: Any = None
        self.page_errors = 0
        self.is_async = False
        self.defer_completion = False
        self.should_dirty = False
        self.io_error = 0
        self.refcount = 1
        self.bio_list: list[Bio] = []
        """Completed bios, newest last (the kernel's list is LIFO through ``bi_private``)."""
        self.iocb = iocb
        self.result = 0
        self.pages = np.full(DIO_PAGES, NULL, np.int64)
        self.bdevs: list[BlockDevice] = []
        """Model-only: devices with bios of this dio, whose completions a waiter drives."""
        self.nr_bios = 0
        """Model-only: bios submitted."""

    def __repr__(self) -> str:
        return (f"Dio(op={self.op}, result={self.result}, refcount={self.refcount}, "
                f"page_errors={self.page_errors}, io_error={self.io_error})")

    @property
    def write(self) -> bool:
        return self.op == REQ_OP.REQ_OP_WRITE


@dataclass
class DioSubmit:
    """``struct dio_submit``: submission-only state. Blocks are in DIO-block units
    (``1 << blkbits`` bytes) unless named ``fs_``."""

    iter: IovIter
    get_block: GetBlock
    bdev: BlockDevice | None
    bio: Bio | None = None
    blkbits: int = 0
    blkfactor: int = 0
    start_zero_done: bool = False
    pages_in_io: int = 0
    block_in_file: int = 0
    blocks_available: int = 0
    reap_counter: int = 0
    final_block_in_request: int = 0
    boundary: bool = False
    logical_offset_in_bio: int = 0
    final_block_in_bio: int = -1
    next_block_for_io: int = -1
    cur_page: int = NULL
    cur_page_offset: int = 0
    cur_page_len: int = 0
    cur_page_block: int = 0
    cur_page_fs_offset: int = 0
    head: int = 0
    tail: int = 0
    frm: int = 0
    """``from``: data offset in the first queued page."""
    to: int = 0
    """End of the data in the last queued page."""


# --- references ---------------------------------------------------------------------------
def dio_pin_page(dio: Dio, page: int, holder: object) -> None:
    """Take an "in dio" or a "bio" reference: ``get_page`` [5.9], ``pin_page`` [5.9-pin],
    ``dio_pin_page`` = ``folio_add_pin`` when ``dio->is_pinned`` [6.18]."""
    kind = dio.kind
    if kind is RefKind.EXTRACT:
        if dio.is_pinned:
            folio_add_pin(dio.pgdat, page, holder=holder)
    elif kind is RefKind.PIN:
        pin_page(dio.pgdat, page, holder=holder)
    else:
        get_page(dio.pgdat, page, holder=holder, site="direct-io")


def dio_unpin_page(dio: Dio, page: int) -> None:
    """Drop a queue or "in dio" reference (both held by the dio): ``put_page`` [5.9],
    ``unpin_user_page`` [5.9-pin], ``dio_unpin_page`` [6.18] (nothing unless pinned)."""
    kind = dio.kind
    if kind is RefKind.GET:
        put_page(dio.pgdat, page, holder=dio, site="direct-io")
    elif kind is RefKind.PIN or dio.is_pinned:
        unpin_user_page(dio.pgdat, page, holder=dio)


def dio_cleanup(dio: Dio, sdio: DioSubmit) -> None:
    """``dio_cleanup()``: release the queued pages nobody consumed."""
    while sdio.head < sdio.tail:
        dio_unpin_page(dio, int(dio.pages[sdio.head]))
        sdio.head += 1


# --- bios ---------------------------------------------------------------------------------
def dio_bio_alloc(dio: Dio, sdio: DioSubmit, bdev: BlockDevice, first_sector: int,
                  nr_vecs: int) -> None:
    """``dio_bio_alloc()``: a new bio under assembly; [6.18] BIO_PAGE_PINNED when the dio's
    pages carry pins."""
    bio = bio_alloc(bdev, nr_vecs, dio.op | dio.op_flags, dio.pgdat)
    assert bio is not None, "nr_vecs is capped at BIO_MAX_VECS"
    bio.bi_iter.bi_sector = first_sector
    bio.bi_end_io = dio_bio_end_aio if dio.is_async else dio_bio_end_io
    if dio.kind is RefKind.EXTRACT and dio.is_pinned:
        bio.bio_set_flag(BIO_FLAG.BIO_PAGE_PINNED)
    if bdev not in dio.bdevs:
        dio.bdevs.append(bdev)
    sdio.bio = bio
    sdio.logical_offset_in_bio = sdio.cur_page_fs_offset


def dio_bio_submit(dio: Dio, sdio: DioSubmit) -> None:
    """``dio_bio_submit()``: the bio holds a dio reference until its end_io. An async READ
    into user memory dirties its pages first (``bio_set_pages_dirty``); completion then
    re-checks them (``bio_check_pages_dirty``)."""
    bio = sdio.bio
    assert bio is not None
    bio.bi_private = dio
    dio.refcount += 1
    if dio.is_async and not dio.write and dio.should_dirty:
        bio_set_pages_dirty(bio)
    dio.nr_bios += 1
    submit_bio(bio)
    sdio.bio = None
    sdio.boundary = False
    sdio.logical_offset_in_bio = 0


def dio_bio_end_io(bio: Bio) -> None:
    """``dio_bio_end_io()`` (synchronous dio): queue the bio for the waiting task and drop its
    dio reference. Context: completion."""
    dio: Dio = bio.bi_private
    dio.bio_list.append(bio)
    dio.refcount -= 1


def dio_bio_end_aio(bio: Bio) -> None:
    """``dio_bio_end_aio()``: complete the bio now; the last reference completes the dio
    (through the dio workqueue when completion must be deferred)."""
    dio: Dio = bio.bi_private
    dio_bio_complete(dio, bio)
    dio.refcount -= 1
    if dio.refcount == 0:
        defer = bool(dio.result) and (dio.defer_completion or (
            dio.write and _nrpages(dio.inode.i_mapping)))
        if defer:
            # SIMPLIFIED: the system workqueue stands in for sb->s_dio_done_wq.
            dio.pgdat.system_wq.schedule_work(
                lambda: _complete_async(dio, DIO_COMPLETE_ASYNC | DIO_COMPLETE_INVALIDATE))
        else:
            _complete_async(dio, DIO_COMPLETE_ASYNC)


def _complete_async(dio: Dio, flags: int) -> None:
    dio_complete(dio, 0, flags)


def dio_bio_complete(dio: Dio, bio: Bio) -> int:
    """``dio_bio_complete()``: record an I/O error (-EAGAIN for a refused REQ_NOWAIT bio,
    else -EIO) and release the bio's pages: ``bio_check_pages_dirty`` for an async READ
    into user memory, otherwise ``bio_release_pages(bio, should_dirty)``.

    Return: the bio's ``blk_status_t``.
    """
    err = int(bio.bi_status)
    should_dirty = not dio.write and dio.should_dirty
    if err:
        if err == BLK_STS.BLK_STS_AGAIN and bio.bi_opf & REQ_FLAG.REQ_NOWAIT:
            dio.io_error = -errno.EAGAIN
        else:
            dio.io_error = -errno.EIO
    if dio.is_async and should_dirty:
        bio_check_pages_dirty(bio)
    else:
        bio_release_pages(bio, should_dirty)
        bio.bio_put_ref()
    return err


def io_schedule(bdevs: list[BlockDevice]) -> bool:
    """What sleeping in ``blk_io_schedule()`` lets happen: the task's plug is flushed
    (``sched_submit_work`` → ``blk_flush_plug``; the plug stays installed) and the devices'
    completions run.

    SIMPLIFIED: waiting is running the devices' completion queues.
    Return: False if nothing could make progress (the wait would never end).
    """
    progressed = False
    plug = current().plug
    if plug is not None and plug.mq_list:
        blk_mq_flush_plug_list(plug)
        progressed = True
    for bdev in bdevs:
        if bdev.cq.pending:
            bdev.cq.run()
            progressed = True
    return progressed


def dio_await_one(dio: Dio) -> Bio | None:
    """``dio_await_one()``: wait for the next completed bio. Return: it, or None when every
    bio has been completed."""
    while dio.refcount > 1 and not dio.bio_list:
        if not io_schedule(dio.bdevs):
            raise RuntimeError(f"{dio!r}: bios outstanding but nothing left to complete")
    return dio.bio_list.pop() if dio.bio_list else None


def dio_await_completion(dio: Dio) -> None:
    """``dio_await_completion()``: wait for and complete every bio in flight."""
    while True:
        bio = dio_await_one(dio)
        if bio is None:
            return
        dio_bio_complete(dio, bio)


def dio_bio_reap(dio: Dio, sdio: DioSubmit) -> int:
    """``dio_bio_reap()``: every 64 bio allocations, complete the bios that have finished,
    to bound the memory and the user pages held. Return: 0 or the first bio's -errno."""
    ret = 0
    due = sdio.reap_counter >= 64
    sdio.reap_counter += 1
    if due:
        while dio.bio_list:
            bio = dio.bio_list.pop()
            ret2 = blk_status_to_errno(dio_bio_complete(dio, bio))
            if ret == 0:
                ret = ret2
        sdio.reap_counter = 0
    return ret


# --- completion ---------------------------------------------------------------------------
def _nrpages(mapping: Any) -> int:
    if mapping is None:
        return 0
    return int(getattr(mapping, "nrpages", 1))


def dio_complete(dio: Dio, ret: int, flags: int) -> int:
    """``dio_complete()``: every bio has completed; work out the result.

    Order: -EIOCBQUEUED means 0; reads are clipped to i_size; -EFAULT with data moved becomes
    0 (a short count), then ``page_errors`` (the write-fault zero fill: -EFAULT even after a
    partial transfer), then the I/O error, then the byte count. The filesystem's ``end_io``
    may replace it. A successful write invalidates the page cache over what it wrote.
    Return: bytes or -errno; for an async dio also passed to ``ki_complete``.
    """
    iocb = dio.iocb
    offset = iocb.ki_pos
    transferred = 0
    if ret == -EIOCBQUEUED:
        ret = 0
    if dio.result:
        transferred = dio.result
        if not dio.write and offset + transferred > dio.i_size:
            transferred = dio.i_size - offset
        if ret == -errno.EFAULT and transferred:
            ret = 0
    if ret == 0:
        ret = dio.page_errors
    if ret == 0:
        ret = dio.io_error
    if ret == 0:
        ret = transferred
    if dio.end_io is not None:
        err = dio.end_io(iocb, offset, ret, dio.private)
        if err:
            ret = err
    mapping = dio.inode.i_mapping
    if flags & DIO_COMPLETE_INVALIDATE and ret > 0 and dio.write and _nrpages(mapping):
        # [5.9] invalidate_inode_pages2_range(); [6.18] kiocb_invalidate_post_direct_write()
        err = invalidate_inode_pages2_range(
            mapping, offset // PAGE_SIZE, (offset + ret - 1) // PAGE_SIZE)
        if err:
            dio.pgdat.events.warn_once("dio_warn_stale_pagecache",
                                       "Page cache invalidation failure on direct I/O")
    dio.inode.i_dio_count -= 1  # inode_dio_end()
    if flags & DIO_COMPLETE_ASYNC:
        iocb.ki_pos += transferred
        # SIMPLIFIED: generic_write_sync() for O_DSYNC async writes is the caller's business.
        iocb.ki_complete(iocb, ret)
    return ret

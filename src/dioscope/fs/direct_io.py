"""The legacy Direct I/O engine (``fs/direct-io.c``, part 2 of 2): ``__blockdev_direct_IO``.

Filesystems with a ``get_block_t`` (ext2, fat, hfs, jfs, udf, ... in 5.9; the ``legacy``
engine of the model filesystem) hand a Direct I/O to :func:`__blockdev_direct_IO`. It walks
the user pages and the file blocks together:

* the **page queue** (:func:`dio_refill_pages`, 64 pages a time) takes one reference per user
  page, dropped when the walk is done with the page;
* each run of a page that goes to one disk extent becomes ``cur_page``
  (:func:`submit_page_section`) with an **"in dio"** reference, and is put in a bio
  (:func:`dio_send_cur_page`) with a **"bio"** reference dropped at bio completion.

So a user page sent in one piece costs 3 acquisitions and 3 releases (spec §6.3, §11 item
33): 5.9 takes them as plain references; 5.9-pin as counted pins; 6.18 pins once
(``iov_iter_extract_pages``) and adds the other two with ``folio_add_pin``, which is not
counted, while all three unpins are (acquired 256 / released 768 for 1 MiB). See
``fs/direct_io_bio.py`` for the reference table and the bio half.

Holes: a READ zero-fills one DIO block inside the (referenced) user page; a WRITE stops with
-ENOTBLK, which the engine turns into a short count so that the filesystem finishes the rest
with buffered I/O (spec §8.3). Sub-block writes into new blocks are padded with sections of
the zero page (:func:`dio_zero_block`). Alignment: ``(pos | iov_iter_alignment)`` against the
fs block size, else the device's logical block size, before any page is touched — in every
profile (docs/research-6.18-bio.md §7).
"""

from __future__ import annotations

import errno
from typing import TYPE_CHECKING

from ..block.bio import bio_add_page
from ..block.blk_core import blk_finish_plug, blk_start_plug
from ..block.blk_types import BIO_MAX_VECS, REQ_FLAG, REQ_OP, SECTOR_SHIFT
from ..kernel.types import PAGE_SIZE
from ..lib.iov_iter import (
    ITER_DEST,
    IovIter,
    iov_iter_advance,
    iov_iter_alignment,
    iov_iter_count,
    iov_iter_npages,
)
from ..lib.iov_iter_pages import (
    iov_iter_extract_pages,
    iov_iter_extract_will_pin,
    iov_iter_get_pages,
    iov_iter_pin_pages,
)
from ..mm.filemap import filemap_write_and_wait_range
from ..mm.gup import pin_page
from ..mm.page_alloc import ZERO_PFN
from ..mm.page_ref import get_page
from .direct_io_bio import (
    DIO,
    DIO_COMPLETE_INVALIDATE,
    DIO_PAGES,
    EIOCBQUEUED,
    NULL,
    Dio,
    DioIodone,
    DioSubmit,
    GetBlock,
    RefKind,
    dio_await_completion,
    dio_bio_alloc,
    dio_bio_reap,
    dio_bio_submit,
    dio_cleanup,
    dio_complete,
    dio_pin_page,
    dio_unpin_page,
)
from .fs_types import IOCB, BufferHead, Inode, Kiocb, register_dio_engine

if TYPE_CHECKING:
    from ..block.devices import BlockDevice

__all__ = [
    "DIO",
    "DIO_PAGES",
    "EIOCBQUEUED",
    "Dio",
    "DioIodone",
    "GetBlock",
    "__blockdev_direct_IO",
    "blockdev_direct_IO",
]

_LONG_MAX = (1 << 63) - 1


# --- the page queue -----------------------------------------------------------------------
def dio_refill_pages(dio: Dio, sdio: DioSubmit) -> int:
    """``dio_refill_pages()``: map up to 64 more user pages of the first segment.

    [5.9] ``iov_iter_get_pages`` then ``iov_iter_advance``; [5.9-pin] ``iov_iter_pin_pages``
    then advance; [6.18] ``iov_iter_extract_pages`` (advances itself). A fault while the
    filesystem still has mapped blocks for a WRITE queues the zero page instead, so those
    blocks are filled with zeros rather than stale data, and records the error in
    ``page_errors``: [5.9] ``get_page``, [5.9-pin] ``pin_page`` (counted), [6.18] no reference
    (Linux commit c8070b787519 ("mm: Don't pin ZERO_PAGE in pin_user_pages()") (v6.5)).
    Return: 0, or -errno when no page could be mapped.
    """
    pages = dio.pages
    it = sdio.iter
    if dio.kind is RefKind.EXTRACT:
        ret, _p, frm = iov_iter_extract_pages(it, pages, _LONG_MAX, DIO_PAGES, 0, holder=dio)
    elif dio.kind is RefKind.PIN:
        ret, frm = iov_iter_pin_pages(it, pages, _LONG_MAX, DIO_PAGES, holder=dio)
    else:
        ret, frm = iov_iter_get_pages(it, pages, _LONG_MAX, DIO_PAGES, holder=dio)
    if ret < 0 and sdio.blocks_available and dio.write:
        if dio.page_errors == 0:
            dio.page_errors = ret
        if dio.kind is RefKind.GET:
            get_page(dio.pgdat, ZERO_PFN, holder=dio, site="dio_refill_pages")
        elif dio.kind is RefKind.PIN:
            pin_page(dio.pgdat, ZERO_PFN, holder=dio)
        pages[0] = ZERO_PFN
        sdio.head, sdio.tail, sdio.frm, sdio.to = 0, 1, 0, PAGE_SIZE
        return 0
    if ret >= 0:
        if dio.kind is not RefKind.EXTRACT:
            iov_iter_advance(it, ret)
        ret += frm
        sdio.head = 0
        sdio.frm = frm
        sdio.tail = (ret + PAGE_SIZE - 1) // PAGE_SIZE
        sdio.to = ((ret - 1) & (PAGE_SIZE - 1)) + 1
        return 0
    return ret


def dio_get_page(dio: Dio, sdio: DioSubmit) -> int:
    """``dio_get_page()``: the next queued user page, refilling the queue when empty.
    Return: its pfn, or -errno."""
    if sdio.tail - sdio.head == 0:
        ret = dio_refill_pages(dio, sdio)
        if ret:
            return ret
        if sdio.tail - sdio.head == 0:
            dio.pgdat.events.bug("dio_get_page", "BUG_ON(dio_pages_present(sdio) == 0)")
            return -errno.EFAULT
    return int(dio.pages[sdio.head])


# --- mapping blocks -----------------------------------------------------------------------
def get_more_blocks(dio: Dio, sdio: DioSubmit, map_bh: BufferHead) -> int:
    """``get_more_blocks()``: ask the filesystem to map from ``block_in_file`` on.

    Nothing is allocated (``create`` = 0) for READs, nor, with DIO_SKIP_HOLES, for a WRITE
    starting inside i_size. A pending ``page_errors`` is returned instead once the mapped
    blocks are used up. Return: 0 or -errno.
    """
    ret = dio.page_errors
    if ret == 0:
        if sdio.block_in_file >= sdio.final_block_in_request:
            dio.pgdat.events.bug("get_more_blocks", "block_in_file >= final_block_in_request")
        i_blkbits = sdio.blkbits + sdio.blkfactor
        fs_startblk = sdio.block_in_file >> sdio.blkfactor
        fs_endblk = (sdio.final_block_in_request - 1) >> sdio.blkfactor
        fs_count = fs_endblk - fs_startblk + 1
        map_bh.mapped = map_bh.new = map_bh.boundary = map_bh.unwritten = False
        map_bh.b_blocknr = -1
        map_bh.b_size = fs_count << i_blkbits
        create = 1 if dio.write else 0
        if dio.flags & DIO.DIO_SKIP_HOLES:
            i_size = dio.inode.i_size
            if i_size and fs_startblk <= (i_size - 1) >> i_blkbits:
                create = 0
        ret = sdio.get_block(dio.inode, fs_startblk, map_bh, create)
        dio.private = getattr(map_bh, "b_private", None)
    return ret


def _map_bdev(sdio: DioSubmit, map_bh: BufferHead) -> BlockDevice:
    # SIMPLIFIED: a get_block that leaves b_bdev unset maps onto the bdev given to
    # __blockdev_direct_IO (every kernel get_block sets it through map_bh()).
    bdev = map_bh.b_bdev if map_bh.b_bdev is not None else sdio.bdev
    assert bdev is not None, "get_block mapped a block on no device"
    return bdev


# --- building bios ------------------------------------------------------------------------
def dio_new_bio(dio: Dio, sdio: DioSubmit, start_sector: int, map_bh: BufferHead) -> int:
    """``dio_new_bio()``: reap, then a bio of ``min(pages_in_io, 256)`` vecs at
    ``start_sector`` (in DIO blocks). Return: 0 or the reaped -errno."""
    ret = dio_bio_reap(dio, sdio)
    if ret:
        return ret
    sector = start_sector << (sdio.blkbits - SECTOR_SHIFT)
    nr_pages = min(sdio.pages_in_io, BIO_MAX_VECS)
    if nr_pages <= 0:
        dio.pgdat.events.bug("dio_new_bio", f"BUG_ON(nr_pages <= 0): {nr_pages}")
        nr_pages = 1
    dio_bio_alloc(dio, sdio, _map_bdev(sdio, map_bh), sector, nr_pages)
    sdio.boundary = False
    return 0


def dio_bio_add_page(dio: Dio, sdio: DioSubmit) -> int:
    """``dio_bio_add_page()``: put ``cur_page``'s section in the bio and take the "bio"
    reference on it. Return: 0, or 1 if the bio is full."""
    bio = sdio.bio
    assert bio is not None
    if bio_add_page(bio, sdio.cur_page, sdio.cur_page_len, sdio.cur_page_offset) \
            != sdio.cur_page_len:
        return 1
    if sdio.cur_page_len + sdio.cur_page_offset == PAGE_SIZE:
        sdio.pages_in_io -= 1
    dio_pin_page(dio, sdio.cur_page, bio.holder)
    sdio.final_block_in_bio = sdio.cur_page_block + (sdio.cur_page_len >> sdio.blkbits)
    return 0


def dio_send_cur_page(dio: Dio, sdio: DioSubmit, map_bh: BufferHead) -> int:
    """``dio_send_cur_page()``: put ``cur_page`` under I/O. The current bio is submitted
    first if the section is not contiguous with it on disk or in the file. The caller drops
    the "in dio" reference. Return: 0 or -errno."""
    ret = 0
    if sdio.bio is not None:
        cur_offset = sdio.cur_page_fs_offset
        bio_next_offset = sdio.logical_offset_in_bio + sdio.bio.bi_iter.bi_size
        if sdio.final_block_in_bio != sdio.cur_page_block or cur_offset != bio_next_offset:
            dio_bio_submit(dio, sdio)
    if sdio.bio is None:
        ret = dio_new_bio(dio, sdio, sdio.cur_page_block, map_bh)
        if ret:
            return ret
    if dio_bio_add_page(dio, sdio) != 0:
        dio_bio_submit(dio, sdio)
        ret = dio_new_bio(dio, sdio, sdio.cur_page_block, map_bh)
        if ret == 0 and dio_bio_add_page(dio, sdio) != 0:
            dio.pgdat.events.bug("dio_send_cur_page", "a fresh bio refused the page")
    return ret


def submit_page_section(dio: Dio, sdio: DioSubmit, page: int, offset: int, length: int,
                        blocknr: int, map_bh: BufferHead) -> int:
    """``submit_page_section()``: ``length`` bytes of ``page`` at ``offset`` go to DIO block
    ``blocknr``. Grows ``cur_page`` when contiguous in page and on disk; otherwise sends the
    old ``cur_page`` (dropping its "in dio" reference) and makes this page ``cur_page`` with
    a new one. A boundary block sends and submits at once.

    [6.x] the boundary flag is read before ``dio_send_cur_page`` can clear it: the patch
    "fs/direct-io.c: fix missing sdio->boundary" <20210322042253.38312-1-jack.qiu@huawei.com>
    (v5.12, Cc: stable); [5.9] reads it afterwards.
    Return: 0 or -errno.
    """
    ret = 0
    v6 = dio.kind is RefKind.EXTRACT
    boundary = sdio.boundary
    if (sdio.cur_page == page
            and sdio.cur_page_offset + sdio.cur_page_len == offset
            and sdio.cur_page_block + (sdio.cur_page_len >> sdio.blkbits) == blocknr):
        sdio.cur_page_len += length
    else:
        if sdio.cur_page != NULL:
            ret = dio_send_cur_page(dio, sdio, map_bh)
            dio_unpin_page(dio, sdio.cur_page)
            sdio.cur_page = NULL
            if ret:
                return ret
        dio_pin_page(dio, page, dio)  # it is in dio
        sdio.cur_page = page
        sdio.cur_page_offset = offset
        sdio.cur_page_len = length
        sdio.cur_page_block = blocknr
        sdio.cur_page_fs_offset = sdio.block_in_file << sdio.blkbits
    if boundary if v6 else sdio.boundary:
        ret = dio_send_cur_page(dio, sdio, map_bh)
        if sdio.bio is not None:
            dio_bio_submit(dio, sdio)
        dio_unpin_page(dio, sdio.cur_page)
        sdio.cur_page = NULL
    return ret


def dio_zero_block(dio: Dio, sdio: DioSubmit, end: int, map_bh: BufferHead) -> None:
    """``dio_zero_block()``: a sub-block I/O into a newly allocated fs block writes zeros
    over the rest of that block, from the zero page: the part before the data (``end`` = 0)
    or after it (``end`` = 1). The zero page gets the same "in dio" and "bio" references as
    a user page: counted pins under 5.9-pin, nothing under 6.18 (spec §11 item 34)."""
    sdio.start_zero_done = True
    if not sdio.blkfactor or not map_bh.new:
        return
    per_fs_block = 1 << sdio.blkfactor
    this_chunk_blocks = sdio.block_in_file & (per_fs_block - 1)
    if not this_chunk_blocks:
        return
    if end:
        this_chunk_blocks = per_fs_block - this_chunk_blocks
    this_chunk_bytes = this_chunk_blocks << sdio.blkbits
    if submit_page_section(dio, sdio, ZERO_PFN, 0, this_chunk_bytes, sdio.next_block_for_io,
                           map_bh):
        return
    sdio.next_block_for_io += this_chunk_blocks


def _zero_user(dio: Dio, page: int, start: int, length: int) -> None:
    """``zero_user()`` / ``memzero_page()``: zeros into a page through its kernel mapping."""
    base = page * PAGE_SIZE + start
    dio.pgdat.mem.bytes[base : base + length] = 0


def do_direct_IO(dio: Dio, sdio: DioSubmit, map_bh: BufferHead) -> int:
    """``do_direct_IO()``: walk the user pages and the file, mapping blocks and feeding
    (page, offset, length, block) sections to :func:`submit_page_section`.

    Return: 0; -ENOTBLK when a WRITE meets a hole (the caller falls back to buffered I/O);
    or the -errno of the page queue or of ``get_block``.
    """
    blkbits = sdio.blkbits
    blksize = 1 << blkbits
    ret = 0
    while sdio.block_in_file < sdio.final_block_in_request:
        page = dio_get_page(dio, sdio)
        if page < 0:
            return page
        frm = sdio.frm if sdio.head == 0 else 0
        to = sdio.to if sdio.head == sdio.tail - 1 else PAGE_SIZE
        sdio.head += 1
        while frm < to:
            if sdio.blocks_available == 0:
                ret = get_more_blocks(dio, sdio, map_bh)
                if ret:
                    dio_unpin_page(dio, page)
                    return ret
                if map_bh.mapped:
                    sdio.blocks_available = map_bh.b_size >> blkbits
                    sdio.next_block_for_io = map_bh.b_blocknr << sdio.blkfactor
                    # SIMPLIFIED: clean_bdev_aliases() for new blocks (the model keeps no
                    # buffer cache for the device).
                    if sdio.blkfactor:
                        # A READ starting part way into an fs block skips to its first
                        # DIO block; a WRITE into a new block must zero the start instead.
                        dio_remainder = sdio.block_in_file & ((1 << sdio.blkfactor) - 1)
                        if not map_bh.new:
                            sdio.next_block_for_io += dio_remainder
                        sdio.blocks_available -= dio_remainder
            if not map_bh.mapped:
                if dio.write:  # "AKPM: eargh, -ENOTBLK is a hack"
                    dio_unpin_page(dio, page)
                    return -errno.ENOTBLK
                # A partial block at the end of the file counts as a whole one.
                i_size_aligned = (dio.inode.i_size + blksize - 1) & ~(blksize - 1)
                if sdio.block_in_file >= i_size_aligned >> blkbits:
                    dio_unpin_page(dio, page)  # we hit EOF
                    return 0
                _zero_user(dio, page, frm, blksize)
                sdio.block_in_file += 1
                frm += blksize
                dio.result += blksize
            else:
                if sdio.blkfactor and not sdio.start_zero_done:
                    dio_zero_block(dio, sdio, 0, map_bh)
                this_chunk_blocks = min(sdio.blocks_available, (to - frm) >> blkbits,
                                        sdio.final_block_in_request - sdio.block_in_file)
                this_chunk_bytes = this_chunk_blocks << blkbits
                if this_chunk_bytes == 0:
                    dio.pgdat.events.bug("do_direct_IO", "BUG_ON(this_chunk_bytes == 0)")
                    dio_unpin_page(dio, page)
                    return -errno.EIO
                if this_chunk_blocks == sdio.blocks_available:
                    sdio.boundary = map_bh.boundary
                ret = submit_page_section(dio, sdio, page, frm, this_chunk_bytes,
                                          sdio.next_block_for_io, map_bh)
                if ret:
                    dio_unpin_page(dio, page)
                    return ret
                sdio.next_block_for_io += this_chunk_blocks
                sdio.block_in_file += this_chunk_blocks
                frm += this_chunk_bytes
                dio.result += this_chunk_bytes
                sdio.blocks_available -= this_chunk_blocks
            if sdio.block_in_file == sdio.final_block_in_request:
                break
        dio_unpin_page(dio, page)  # the queue's reference (taken by the refill)
    return ret


# --- entry --------------------------------------------------------------------------------
def _write_and_wait(iocb: Kiocb, inode: Inode, start: int, end: int) -> int:
    mapping = iocb.ki_filp.f_mapping if iocb.ki_filp.f_mapping is not None else inode.i_mapping
    if mapping is None:
        return 0
    return filemap_write_and_wait_range(mapping, start, end)


def __blockdev_direct_IO(iocb: Kiocb, inode: Inode, bdev: BlockDevice | None, it: IovIter,
                         get_block: GetBlock, end_io: DioIodone | None = None,
                         flags: int = DIO.DIO_LOCKING | DIO.DIO_SKIP_HOLES) -> int:
    """``__blockdev_direct_IO()`` / ``do_blockdev_direct_IO()``: a Direct I/O of ``it`` at
    ``iocb.ki_pos`` on ``inode``, whose blocks ``get_block`` maps onto ``bdev``.

    Order: an empty READ returns 0; a READ at or past i_size returns 0 (before any alignment
    check); ``(pos | iov_iter_alignment)`` must be a multiple of the fs block size or else
    of ``bdev``'s logical block size (-EINVAL, nothing touched); DIO_LOCKING READs write back
    the page cache range first.

    The iterator is left advanced past every page the queue mapped, which may be beyond the
    return value (a hole or EOF stopped the walk): the caller reverts it by
    ``(count - ret) - iov_iter_count(it)`` as ``generic_file_direct_write`` /
    ``generic_file_read_iter`` do. ``ki_pos`` is not moved (the caller does that too), except
    by an async completion.

    Context: sleeps until every bio has completed unless the kiocb is async (then returns
    -EIOCBQUEUED and completes through ``ki_complete``).
    Return: bytes transferred — reads clipped to i_size; a WRITE that met a hole returns what
    went before it (possibly 0), and the filesystem writes the rest through the page cache
    (spec §11 item 35); a fault returns the short count, except for a write whose mapped
    blocks were zero-filled (-EFAULT) — or -errno: EINVAL (alignment), EFAULT, EIO, EAGAIN.
    """
    pgdat = inode.pgdat
    i_blkbits = inode.i_blkbits
    blkbits = i_blkbits
    count = iov_iter_count(it)
    offset = iocb.ki_pos
    end = offset + count
    read = it.iov_iter_rw() == ITER_DEST
    align = offset | iov_iter_alignment(it)
    if read and not count:
        return 0  # watch out for a 0 len io from a tricksy fs
    dio = Dio(pgdat, iocb, inode, flags)
    if dio.kind is RefKind.EXTRACT:
        dio.is_pinned = iov_iter_extract_will_pin(it)
    dio.i_size = inode.i_size
    if read and offset >= dio.i_size:
        return 0
    if align & ((1 << blkbits) - 1):
        if bdev is not None:
            blkbits = int(bdev.limits.logical_block_size).bit_length() - 1
        if align & ((1 << blkbits) - 1):
            return -errno.EINVAL
    if flags & DIO.DIO_LOCKING and read:
        ret = _write_and_wait(iocb, inode, offset, end - 1)
        if ret:
            return ret
    # Extending writes complete synchronously: i_size must not move before the data is there.
    dio.is_async = not iocb.is_sync_kiocb() and not (not read and end > inode.i_size)
    if read:
        dio.op = int(REQ_OP.REQ_OP_READ)
    else:
        dio.op = int(REQ_OP.REQ_OP_WRITE)
        dio.op_flags = int(REQ_FLAG.REQ_SYNC | REQ_FLAG.REQ_IDLE)
        if iocb.ki_flags & IOCB.IOCB_NOWAIT:
            dio.op_flags |= int(REQ_FLAG.REQ_NOWAIT)
    if dio.is_async and not read and iocb.ki_flags & IOCB.IOCB_DSYNC:
        dio.defer_completion = True
    inode.i_dio_count += 1  # inode_dio_begin()
    sdio = DioSubmit(iter=it, get_block=get_block, bdev=bdev)
    sdio.blkbits = blkbits
    sdio.blkfactor = i_blkbits - blkbits
    sdio.block_in_file = offset >> blkbits
    sdio.final_block_in_request = end >> blkbits
    dio.end_io = end_io
    # [5.9] iter_is_iovec(); [6.x] user_backed_iter() (ITER_UBUF exists only there).
    dio.should_dirty = it.user_backed_iter() and read
    if sdio.blkfactor:
        sdio.pages_in_io = 2  # the first and last blocks may need zeroing
    sdio.pages_in_io += iov_iter_npages(it, 1 << 31)
    map_bh = BufferHead(b_size=0)
    plug = blk_start_plug()
    try:
        retval = do_direct_IO(dio, sdio, map_bh)
        if retval:
            dio_cleanup(dio, sdio)
        if retval == -errno.ENOTBLK:
            retval = 0  # the rest is done with buffered I/O by the caller
        dio_zero_block(dio, sdio, 1, map_bh)
        if sdio.cur_page != NULL:
            ret2 = dio_send_cur_page(dio, sdio, map_bh)
            if retval == 0:
                retval = ret2
            dio_unpin_page(dio, sdio.cur_page)
            sdio.cur_page = NULL
        if sdio.bio is not None:
            dio_bio_submit(dio, sdio)
    finally:
        blk_finish_plug(plug)
    dio_cleanup(dio, sdio)  # a short I/O (EOF) leaves queued pages behind
    if dio.is_async and retval == 0 and dio.result and (read or dio.result == count):
        retval = -EIOCBQUEUED
    else:
        dio_await_completion(dio)
    dio.refcount -= 1  # drop_refcount()
    if dio.refcount == 0:
        return dio_complete(dio, retval, DIO_COMPLETE_INVALIDATE)
    if retval != -EIOCBQUEUED:
        pgdat.events.bug("__blockdev_direct_IO", "BUG_ON(retval != -EIOCBQUEUED)")
    return retval


def blockdev_direct_IO(iocb: Kiocb, inode: Inode, it: IovIter, get_block: GetBlock) -> int:
    """``blockdev_direct_IO()``: :func:`__blockdev_direct_IO` on the filesystem's device with
    DIO_LOCKING | DIO_SKIP_HOLES and no end_io (what ext2 and most others call)."""
    sb = inode.i_sb
    bdev = sb.s_bdev if sb is not None else inode.i_bdev
    return __blockdev_direct_IO(iocb, inode, bdev, it, get_block, None,
                                DIO.DIO_LOCKING | DIO.DIO_SKIP_HOLES)


register_dio_engine("legacy", blockdev_direct_IO)

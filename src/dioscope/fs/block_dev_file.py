"""A block device opened as a file: ``def_blk_fops`` ([5.9] ``fs/block_dev.c``, [6.18]
``block/fops.c``) — ``blkdev_read_iter`` / ``blkdev_write_iter`` and the open.

O_DIRECT goes to :func:`~dioscope.fs.block_dev.blkdev_direct_IO`. What Direct I/O leaves
undone falls back to buffered I/O, as in the kernel: a short direct read continues with a
buffered read of the rest ([5.9] ``generic_file_read_iter``, [6.18] ``blkdev_read_iter`` →
``filemap_read``), a short direct write with a buffered write ([5.9]
``__generic_file_write_iter``, [6.18] ``direct_write_fallback``) — so the partly-unmapped
1 MiB read returns the 524288 bytes the direct part moved, and the buffered part then faults
at the first unmapped byte.

SIMPLIFIED: buffered I/O does not use the device's page cache (``bdev->bd_inode->i_mapping``):
it bounces through kernel pages allocated for the call — a read reads the covering pages from
the device and copies out; a write copies in, reading partial edge pages first, and writes the
pages straight back (write-through). Data, return values, errors and pins are what the kernel
gives (buffered I/O pins nothing); what differs is that no page-cache state exists, so the
flush/invalidate around Direct I/O has nothing to do and a later buffered read goes to the
device again.
"""

from __future__ import annotations

import errno
import weakref
from typing import TYPE_CHECKING, Any

import numpy as np

from ..block.bio_completion import blk_status_to_errno
from ..block.blk_types import REQ_FLAG, REQ_OP, SECTOR_SHIFT, Bio
from ..kernel.types import PAGE_SIZE
from ..lib.iov_iter import (
    IovIter,
    copy_from_iter,
    copy_to_iter,
    iov_iter_count,
    iov_iter_reexpand,
    iov_iter_revert,
    iov_iter_truncate,
)
from ..mm.page_alloc import alloc_pages
from ..mm.page_ref import drop_refs
from .block_dev import blkdev_direct_IO, submit_and_wait
from .direct_io_bio import EIOCBQUEUED
from .fs_types import FMODE, IOCB, O_ACCMODE, OFLAG, S_IFBLK, File, Inode, Kiocb

if TYPE_CHECKING:
    from ..block.devices import BlockDevice

__all__ = [
    "BlockDeviceFile",
    "bdev_inode",
    "blkdev_inode",
    "blkdev_install",
    "blkdev_open",
]

_CHUNK_PAGES = 64
"""Pages per bounce bio (256 KiB)."""


def _bdev(iocb: Kiocb) -> BlockDevice:
    bdev = iocb.ki_filp.f_inode.i_bdev
    assert bdev is not None, "not a block device inode"
    return bdev


# --- bounce I/O ---------------------------------------------------------------------------
def _bounce_io(bdev: BlockDevice, write: bool, start: int, length: int,
               pfns: np.ndarray) -> int:
    """Read or write ``length`` bytes at device offset ``start`` (sector-aligned) through
    the frames ``pfns``, one bio. Return: 0 or -errno."""
    op = REQ_OP.REQ_OP_WRITE | REQ_FLAG.REQ_SYNC if write else REQ_OP.REQ_OP_READ
    bio = Bio(bdev, len(pfns), op, bdev.pgdat)
    left = length
    for k, pfn in enumerate(pfns.tolist()):
        n = min(left, PAGE_SIZE)
        bio.set_bvec(k, pfn, n, 0)
        left -= n
    bio.bi_vcnt = len(pfns)
    bio.bi_iter.bi_size = length
    bio.bi_iter.bi_sector = start >> SECTOR_SHIFT
    return blk_status_to_errno(submit_and_wait(bio))


def _span(bdev: BlockDevice, pos: int, n: int) -> tuple[int, int, int]:
    """(first byte, length, pages) of the page-aligned span covering [pos, pos + n), cut at
    the end of the device."""
    start = pos & ~(PAGE_SIZE - 1)
    end = min((pos + n + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1), bdev.capacity)
    return start, end - start, (end - start + PAGE_SIZE - 1) // PAGE_SIZE


def _alloc(bdev: BlockDevice, n: int) -> np.ndarray:
    return np.array([alloc_pages(bdev.pgdat, 0) for _ in range(n)], np.int64)


def _bytes(bdev: BlockDevice, pfns: np.ndarray) -> np.ndarray:
    """The frames as one contiguous byte array (a copy)."""
    return np.concatenate([bdev.pgdat.mem.frames[p] for p in pfns.tolist()])


def buffered_read(iocb: Kiocb, it: IovIter, already: int) -> int:
    """Buffered read of the rest of ``it`` (``generic_file_buffered_read`` [5.9] /
    ``filemap_read`` [6.18]), through bounce pages.
    Return: ``already`` + bytes copied, or -errno if both are 0 (-EFAULT at a fault, the
    device's -EIO)."""
    bdev = _bdev(iocb)
    pos = iocb.ki_pos
    done = 0
    error = 0
    while iov_iter_count(it) and pos < bdev.capacity:
        want = min(iov_iter_count(it), _CHUNK_PAGES * PAGE_SIZE - (pos & (PAGE_SIZE - 1)),
                   bdev.capacity - pos)
        start, length, npages = _span(bdev, pos, want)
        pfns = _alloc(bdev, npages)
        try:
            error = _bounce_io(bdev, False, start, length, pfns)
            if error:
                break
            data = _bytes(bdev, pfns)[pos - start : pos - start + want]
            got = copy_to_iter(data, it)
        finally:
            drop_refs(bdev.pgdat, pfns, "blkdev_bounce")
        pos += got
        done += got
        if got < want:
            error = -errno.EFAULT
            break
    iocb.ki_pos = pos
    total = already + done
    return total if total else error


def buffered_write(iocb: Kiocb, it: IovIter) -> int:
    """Buffered write of ``it`` (``generic_perform_write`` [5.9] /
    ``iomap_file_buffered_write`` [6.18]), written through at once.
    Return: bytes written, or -errno if none (-EFAULT when the first byte faults)."""
    bdev = _bdev(iocb)
    pos = iocb.ki_pos
    done = 0
    error = 0
    while iov_iter_count(it):
        want = min(iov_iter_count(it), _CHUNK_PAGES * PAGE_SIZE - (pos & (PAGE_SIZE - 1)))
        got, data = copy_from_iter(want, it)
        if not got:
            error = -errno.EFAULT
            break
        start, length, npages = _span(bdev, pos, got)
        pfns = _alloc(bdev, npages)
        try:
            frames = bdev.pgdat.mem.frames
            head_partial = pos != start
            tail_partial = (pos + got) != start + length
            for k, partial in ((0, head_partial), (npages - 1, tail_partial)):
                if partial:  # read-modify-write of an edge page
                    s = start + k * PAGE_SIZE
                    n = min(PAGE_SIZE, bdev.capacity - s)
                    error = _bounce_io(bdev, False, s, n, pfns[k : k + 1])
                    if error:
                        break
            if error:
                break
            buf = _bytes(bdev, pfns)
            buf[pos - start : pos - start + got] = np.frombuffer(data, np.uint8)
            for k, p in enumerate(pfns.tolist()):
                frames[p] = buf[k * PAGE_SIZE : (k + 1) * PAGE_SIZE]
            error = _bounce_io(bdev, True, start, length, pfns)
        finally:
            drop_refs(bdev.pgdat, pfns, "blkdev_bounce")
        if error:
            break
        pos += got
        done += got
        if got < want:
            error = -errno.EFAULT
            break
    iocb.ki_pos = pos
    return done if done else error


def _flush(bdev: BlockDevice) -> int:
    """``blkdev_issue_flush()`` (from ``generic_write_sync`` → ``blkdev_fsync``)."""
    bio = Bio(bdev, 0, REQ_OP.REQ_OP_FLUSH | REQ_FLAG.REQ_PREFLUSH, bdev.pgdat)
    return blk_status_to_errno(submit_and_wait(bio))


def generic_write_sync(iocb: Kiocb, ret: int) -> int:
    """``generic_write_sync()``: O_DSYNC / O_SYNC writes flush the device cache."""
    if ret > 0 and iocb.ki_flags & (IOCB.IOCB_DSYNC | IOCB.IOCB_SYNC):
        err = _flush(_bdev(iocb))
        if err:
            return err
    return ret


# --- file operations -----------------------------------------------------------------------
def blkdev_read_iter(iocb: Kiocb, to: IovIter) -> int:
    """``blkdev_read_iter()``: reads stop at the end of the device; O_DIRECT goes direct and
    a short direct read is finished with a buffered read.
    Return: bytes (0 at or past the end), or -errno."""
    bdev = _bdev(iocb)
    v6 = bool(bdev.pgdat.cfg.IOV_ITER_EXTRACT)
    size = bdev.capacity
    pos = iocb.ki_pos
    shorted = 0
    if pos + iov_iter_count(to) > size:
        if pos >= size:
            return 0
        shorted = iov_iter_count(to) - (size - pos)
        iov_iter_truncate(to, size - pos)
    count = iov_iter_count(to)
    ret = 0
    if count:
        ret = _read(iocb, to, count, v6)
    if shorted and v6:
        iov_iter_reexpand(to, iov_iter_count(to) + shorted)
    return ret


def _read(iocb: Kiocb, to: IovIter, count: int, v6: bool) -> int:
    if iocb.ki_flags & IOCB.IOCB_DIRECT:
        # filemap_write_and_wait_range / kiocb_write_and_wait: no page cache to write back.
        ret = blkdev_direct_IO(iocb, to)
        if ret > 0:
            iocb.ki_pos += ret
            count -= ret
        if ret != -EIOCBQUEUED or not v6:
            iov_iter_revert(to, count - iov_iter_count(to))
        if ret < 0 or not count or iocb.ki_pos >= _bdev(iocb).capacity:
            return ret
        return buffered_read(iocb, to, ret)
    return buffered_read(iocb, to, 0)


def blkdev_write_iter(iocb: Kiocb, frm: IovIter) -> int:
    """``blkdev_write_iter()``: -ENOSPC at or past the end of the device, writes cut at the
    end; O_DIRECT goes direct and what it leaves is written buffered.
    Return: bytes, or -errno (ENOSPC; EOPNOTSUPP for IOCB_NOWAIT without O_DIRECT)."""
    bdev = _bdev(iocb)
    v6 = bool(bdev.pgdat.cfg.IOV_ITER_EXTRACT)
    if getattr(bdev, "read_only", False):
        return -errno.EPERM
    if not iov_iter_count(frm):
        return 0
    if iocb.ki_pos >= bdev.capacity:
        return -errno.ENOSPC
    if iocb.ki_flags & (IOCB.IOCB_NOWAIT | IOCB.IOCB_DIRECT) == IOCB.IOCB_NOWAIT:
        return -errno.EOPNOTSUPP
    size = bdev.capacity - iocb.ki_pos
    shorted = max(iov_iter_count(frm) - size, 0)
    iov_iter_truncate(frm, size)
    if iocb.ki_flags & IOCB.IOCB_DIRECT:
        count = iov_iter_count(frm)
        ret = blkdev_direct_IO(iocb, frm)
        if ret > 0:
            iocb.ki_pos += ret
            count -= ret
        if ret != -EIOCBQUEUED:
            iov_iter_revert(frm, count - iov_iter_count(frm))
        if ret >= 0 and iov_iter_count(frm):
            # [5.9] __generic_file_write_iter: written + buffered (or written on error);
            # [6.18] direct_write_fallback: the same sums.
            buffered = buffered_write(iocb, frm)
            if buffered < 0:
                ret = ret if ret else buffered
            else:
                ret += buffered
    else:
        ret = buffered_write(iocb, frm)
    ret = generic_write_sync(iocb, ret)
    if v6:
        iov_iter_reexpand(frm, iov_iter_count(frm) + shorted)
    return ret


class BlockDeviceFile:
    """``def_blk_fops``: the file operations of an open block device."""

    def read_iter(self, iocb: Kiocb, it: IovIter) -> int:
        return blkdev_read_iter(iocb, it)

    def write_iter(self, iocb: Kiocb, it: IovIter) -> int:
        return blkdev_write_iter(iocb, it)

    def fsync(self, f: File, start: int = 0, end: int = -1, datasync: int = 0) -> int:
        """``blkdev_fsync()``: nothing is cached, so only the device's cache is flushed."""
        bdev = f.f_inode.i_bdev
        assert bdev is not None
        return _flush(bdev)

    def __repr__(self) -> str:
        return "def_blk_fops"


BLKDEV_FOPS = BlockDeviceFile()


def blkdev_inode(bdev: BlockDevice, ino: int = 1) -> Inode:
    """The device node's inode (``bdev->bd_inode``): S_IFBLK, ``i_bdev``, ``i_size`` the
    capacity, ``i_blkbits`` as ``set_init_blocksize`` chooses (the logical block size doubled
    while it divides the capacity, up to PAGE_SIZE)."""
    inode = Inode(None, ino, S_IFBLK | 0o660, bdev.pgdat)
    inode.i_bdev = bdev
    inode.i_size = bdev.capacity
    bsize = int(bdev.limits.logical_block_size)
    while bsize < PAGE_SIZE and not bdev.capacity & bsize:
        bsize <<= 1
    inode.i_blkbits = bsize.bit_length() - 1
    return inode


_BD_INODES: weakref.WeakKeyDictionary[BlockDevice, Inode] = weakref.WeakKeyDictionary()


def bdev_inode(bdev: BlockDevice) -> Inode:
    """``bdev->bd_inode``: one inode per device, shared by every open of it."""
    inode = _BD_INODES.get(bdev)
    if inode is None:
        inode = _BD_INODES[bdev] = blkdev_inode(bdev)
    return inode


def blkdev_open(bdev: BlockDevice, flags: int, inode: Inode | None = None) -> File:
    """``blkdev_open()``: a File on the device itself (O_DIRECT allowed; O_LARGEFILE forced;
    positional I/O allowed). Return: the File (``f_op`` = :class:`BlockDeviceFile`)."""
    acc = flags & O_ACCMODE
    mode = 0
    if acc in (OFLAG.O_RDONLY, OFLAG.O_RDWR):
        mode |= FMODE.FMODE_READ
    if acc in (OFLAG.O_WRONLY, OFLAG.O_RDWR):
        mode |= FMODE.FMODE_WRITE
    mode |= FMODE.FMODE_CAN_ODIRECT | FMODE.FMODE_LSEEK | FMODE.FMODE_PREAD | FMODE.FMODE_PWRITE
    inode = inode if inode is not None else bdev_inode(bdev)
    return File(inode, flags | OFLAG.O_LARGEFILE, mode, BLKDEV_FOPS)


def blkdev_install(vfs: Any) -> None:
    """Let ``vfs`` (``fs.vfs.Vfs``) open device nodes ``/dev/NAME`` with
    :func:`blkdev_open` (``def_blk_fops`` behind ``init_special_inode``)."""
    vfs.dev_open = blkdev_open

"""File operations of the model filesystem (``fs/ext4/file.c``, ``fs/ext4/extents.c``
``ext4_fallocate`` / ``fs/ext4/inode.c`` ``ext4_punch_hole``, ``fs/ext4/fsync.c``,
``fs/open.c`` ``vfs_fallocate`` and ``do_sys_ftruncate``'s checks).

Buffered I/O is done here (:mod:`dioscope.fs.filemap_rw`); Direct I/O goes to the engine the
mount names, through the seam of :data:`dioscope.fs.fs_types.DIO_ENGINES`:

* an ``iomap`` mount is ext4 (5.5+): ``ext4_dio_read_iter`` / ``ext4_dio_write_iter`` call
  ``iomap_dio_rw(iocb, iter, fs.iomap_ops, dio_flags)``; a write the engine left short
  (-ENOTBLK, or a partial count) is finished with buffered I/O, written back and dropped;
* a ``legacy`` mount is ext2-like: ``generic_file_read_iter`` / ``generic_file_write_iter``
  with ``a_ops->direct_IO`` = ``blockdev_direct_IO(iocb, inode, iter, ext4_get_block)``.

No engine registered is a RuntimeError (a model set-up error, never a user error).
"""

from __future__ import annotations

import errno
from typing import TYPE_CHECKING, Any, Final

from ...kernel.types import PAGE_SHIFT, PAGE_SIZE
from ...lib.iov_iter import ITER_SOURCE, IovIter, iov_iter_alignment, iov_iter_count
from ...mm import filemap
from ..filemap_rw import (
    generic_file_read_iter,
    generic_file_write_iter,
    generic_perform_write,
    generic_write_checks,
    generic_write_sync,
)
from ..fs_types import FALLOC, FMODE, IOCB, File, Inode, Kiocb
from .extents import EXT4_MAX_LOGICAL_BLOCK, GET_BLOCKS, MAP, ext4_map_blocks
from .inode import (
    ModelFsInode,
    ext4_block_zero_page_range,
    ext4_get_block,
    ext4_setattr_size,
    ext4_truncate_failed_write,
)

if TYPE_CHECKING:
    from .super import ModelFs

__all__ = [
    "FALLOC_FL_SUPPORTED_MASK",
    "IOMAP_DIO_FORCE_WAIT",
    "ModelFsFile",
    "ext4_fallocate",
    "ext4_punch_hole",
    "vfs_fallocate_checks",
]

LLONG_MAX: Final = (1 << 63) - 1
IOMAP_DIO_FORCE_WAIT: Final = 1 << 0
"""``dio_flags`` of ``iomap_dio_rw()`` (``include/linux/iomap.h``, v5.15+; 5.9 passed
``wait_for_completion``): wait even for an async kiocb."""

FALLOC_FL_SUPPORTED_MASK: Final = int(
    FALLOC.FALLOC_FL_KEEP_SIZE | FALLOC.FALLOC_FL_PUNCH_HOLE | FALLOC.FALLOC_FL_COLLAPSE_RANGE
    | FALLOC.FALLOC_FL_ZERO_RANGE | FALLOC.FALLOC_FL_INSERT_RANGE
    | FALLOC.FALLOC_FL_UNSHARE_RANGE)
"""``FALLOC_FL_SUPPORTED_MASK`` (``include/linux/falloc.h``) as of 5.9; SIMPLIFIED: 6.17's
FALLOC_FL_WRITE_ZEROES is treated as unknown (-EOPNOTSUPP) in every profile."""
_EXT4_FALLOC: Final = int(
    FALLOC.FALLOC_FL_KEEP_SIZE | FALLOC.FALLOC_FL_PUNCH_HOLE | FALLOC.FALLOC_FL_COLLAPSE_RANGE
    | FALLOC.FALLOC_FL_ZERO_RANGE | FALLOC.FALLOC_FL_INSERT_RANGE)

# Plain-int copies of the flags tested per call (IntFlag arithmetic is slow in Python).
_IOCB_DIRECT: Final = int(IOCB.IOCB_DIRECT)
_IOCB_NOWAIT: Final = int(IOCB.IOCB_NOWAIT)

# --- fallocate ----------------------------------------------------------------------------------
def vfs_fallocate_checks(file: File, mode: int, offset: int, length: int) -> int:
    """The checks of ``vfs_fallocate()``, in its order. Return: 0 or -errno: EINVAL (offset
    < 0, len <= 0, COLLAPSE/INSERT combined with anything, UNSHARE with anything but
    KEEP_SIZE), EOPNOTSUPP (unknown mode bits, PUNCH_HOLE with ZERO_RANGE or without
    KEEP_SIZE), EBADF (not open for writing), EISDIR, ENODEV (not a regular file), EFBIG
    (``offset + len`` past ``s_maxbytes``)."""
    inode = file.f_inode
    if offset < 0 or length <= 0:
        return -errno.EINVAL
    if mode & ~FALLOC_FL_SUPPORTED_MASK:
        return -errno.EOPNOTSUPP
    punch = mode & FALLOC.FALLOC_FL_PUNCH_HOLE
    if punch and mode & FALLOC.FALLOC_FL_ZERO_RANGE:
        return -errno.EOPNOTSUPP
    if punch and not mode & FALLOC.FALLOC_FL_KEEP_SIZE:
        return -errno.EOPNOTSUPP
    for only in (FALLOC.FALLOC_FL_COLLAPSE_RANGE, FALLOC.FALLOC_FL_INSERT_RANGE):
        if mode & only and mode & ~int(only):
            return -errno.EINVAL
    if mode & FALLOC.FALLOC_FL_UNSHARE_RANGE and mode & ~int(
            FALLOC.FALLOC_FL_UNSHARE_RANGE | FALLOC.FALLOC_FL_KEEP_SIZE):
        return -errno.EINVAL
    if not file.f_mode & FMODE.FMODE_WRITE:
        return -errno.EBADF
    if inode.is_dir():
        return -errno.EISDIR
    if not inode.is_reg():
        return -errno.ENODEV
    sb = inode.i_sb
    if sb is not None and offset + length > sb.s_maxbytes:
        return -errno.EFBIG
    return 0


def ext4_punch_hole(inode: ModelFsInode, offset: int, length: int) -> int:
    """``ext4_punch_hole()``: deallocate bytes ``[offset, offset + length)``.

    Dirty pages of the range are written back first. Nothing happens at or past EOF; a
    range crossing EOF is cut at the end of the page holding EOF. Whole blocks inside are
    dropped from the page cache (and unmapped) and freed; the partial blocks at either end
    are zeroed through the page cache. i_size never changes. Return: 0 or -errno.
    """
    mapping = inode.i_mapping
    ret = filemap.filemap_write_and_wait_range(mapping, offset, offset + length - 1)
    if ret:
        return ret
    size = inode.i_size
    if offset >= size:
        return 0
    if offset + length > size:
        length = size + PAGE_SIZE - (size & (PAGE_SIZE - 1)) - offset
    bs = 1 << inode.i_blkbits
    first_block_offset = (offset + bs - 1) & ~(bs - 1)
    last_block_offset = ((offset + length) & ~(bs - 1)) - 1
    if last_block_offset > first_block_offset:
        filemap.truncate_pagecache_range(inode, first_block_offset, last_block_offset)
    ret = _zero_partial_blocks(inode, offset, length)
    first_block = (offset + bs - 1) >> inode.i_blkbits
    stop_block = (offset + length) >> inode.i_blkbits
    if stop_block > first_block:
        freed = inode.ext.remove(first_block, stop_block)
        if len(freed):
            inode.fs.balloc.free(freed)
    inode.mark_metadata_dirty()
    return ret


def _zero_partial_blocks(inode: ModelFsInode, lstart: int, length: int) -> int:
    """``ext4_zero_partial_blocks()``: zero the partly covered first and last blocks."""
    bs = 1 << inode.i_blkbits
    byte_end = lstart + length - 1
    partial_start = lstart & (bs - 1)
    partial_end = byte_end & (bs - 1)
    start, end = lstart >> inode.i_blkbits, byte_end >> inode.i_blkbits
    if start == end and (partial_start or partial_end != bs - 1):
        return ext4_block_zero_page_range(inode, lstart, length)
    if partial_start:
        err = ext4_block_zero_page_range(inode, lstart, bs)
        if err:
            return err
    if partial_end != bs - 1:
        return ext4_block_zero_page_range(inode, byte_end - partial_end, partial_end + 1)
    return 0


def ext4_fallocate(inode: ModelFsInode, mode: int, offset: int, length: int) -> int:
    """``ext4_fallocate()``: preallocate unwritten blocks for ``[offset, offset + length)``
    (blocks already there stay as they are; i_size grows to the end unless KEEP_SIZE), or
    punch a hole (PUNCH_HOLE | KEEP_SIZE).

    SIMPLIFIED: COLLAPSE_RANGE and INSERT_RANGE are not modelled (-EOPNOTSUPP, as for a
    mode ext4 does not know).
    Return: 0, or -EOPNOTSUPP, -ENOSPC (what was allocated before stays, and i_size covers
    it).
    """
    if mode & ~_EXT4_FALLOC:
        return -errno.EOPNOTSUPP
    if mode & FALLOC.FALLOC_FL_PUNCH_HOLE:
        return ext4_punch_hole(inode, offset, length)
    if mode & FALLOC.FALLOC_FL_ZERO_RANGE:
        return ext4_zero_range(inode, mode, offset, length)
    if mode & ~int(FALLOC.FALLOC_FL_KEEP_SIZE):
        return -errno.EOPNOTSUPP
    bits = inode.i_blkbits
    lblk = offset >> bits
    end = (offset + length + (1 << bits) - 1) >> bits
    new_size = 0
    if not mode & FALLOC.FALLOC_FL_KEEP_SIZE and offset + length > inode.i_size:
        new_size = offset + length
    while lblk < end:
        res = ext4_map_blocks(inode, lblk, end - lblk, GET_BLOCKS.CREATE_UNWRIT_EXT)
        if isinstance(res, int):
            return res
        lblk += res.m_len
        if new_size:
            epos = min(lblk << bits, new_size)
            if epos > inode.i_size:
                inode.i_size = epos
                inode.mark_metadata_dirty()
    return 0


def ext4_zero_range(inode: ModelFsInode, mode: int, offset: int, length: int) -> int:
    """``ext4_zero_range()``: make ``[offset, offset + length)`` read as zeros without
    writing them: the page cache over the range is written back and dropped, the partly
    covered edge blocks are zeroed through the page cache, and the whole blocks inside become
    unwritten extents (measured on the host: a Direct I/O read of the range pins nothing for
    them). i_size grows to the end unless KEEP_SIZE.

    SIMPLIFIED: whole blocks are freed and preallocated again as unwritten instead of being
    converted in place (the same file contents, possibly other disk blocks).
    Return: 0 or -errno.
    """
    mapping = inode.i_mapping
    ret = filemap.filemap_write_and_wait_range(mapping, offset, offset + length - 1)
    if ret:
        return ret
    bs = 1 << inode.i_blkbits
    first = (offset + bs - 1) & ~(bs - 1)
    stop = (offset + length) & ~(bs - 1)
    if stop > first:
        filemap.truncate_pagecache_range(inode, first, stop - 1)
        freed = inode.ext.remove(first >> inode.i_blkbits, stop >> inode.i_blkbits)
        if len(freed):
            inode.fs.balloc.free(freed)
    if offset < inode.i_size:
        ret = _zero_partial_blocks(inode, offset, min(length, inode.i_size - offset))
        if ret:
            return ret
    if stop > first:
        keep = int(FALLOC.FALLOC_FL_KEEP_SIZE)
        ret = ext4_fallocate(inode, keep, first, stop - first)
        if ret:
            return ret
    if not mode & FALLOC.FALLOC_FL_KEEP_SIZE and offset + length > inode.i_size:
        inode.i_size = offset + length
    inode.mark_metadata_dirty()
    return 0


# --- file_operations ----------------------------------------------------------------------------
class ModelFsFile:
    """``ext4_file_operations`` (and the ``ext2`` ones for a legacy mount)."""

    def __init__(self, fs: ModelFs) -> None:
        self.fs = fs

    @property
    def legacy(self) -> bool:
        return self.fs.sb.dio_engine == "legacy"

    # read ---------------------------------------------------------------------------------
    def read_iter(self, iocb: Kiocb, it: IovIter) -> int:
        """``ext4_file_read_iter()`` / ``generic_file_read_iter()``.

        Return: bytes read (0 at EOF) or -errno (EISDIR for a directory)."""
        if iocb.ki_filp.f_inode.is_dir():
            return -errno.EISDIR
        if self.legacy:
            return generic_file_read_iter(iocb, it, self._legacy_direct_IO)
        if not iov_iter_count(it):
            return 0
        if iocb.ki_flags & _IOCB_DIRECT:
            # ext4_dio_read_iter(): iomap_dio_rw(..., is_sync_kiocb(iocb)).
            engine = self.fs.sb.dio_engine_fn("iomap")
            return int(engine(iocb, it, self.fs.iomap_ops, 0))
        return generic_file_read_iter(iocb, it)

    # write --------------------------------------------------------------------------------
    def write_iter(self, iocb: Kiocb, it: IovIter) -> int:
        """``ext4_file_write_iter()`` / ``generic_file_write_iter()``.

        Return: bytes written or -errno."""
        if iocb.ki_filp.f_inode.is_dir():
            return -errno.EISDIR
        if self.legacy:
            return generic_file_write_iter(iocb, it, self._legacy_direct_IO)
        if iocb.ki_flags & _IOCB_DIRECT:
            return self._dio_write_iter(iocb, it)
        return self._buffered_write_iter(iocb, it)

    def _buffered_write_iter(self, iocb: Kiocb, it: IovIter) -> int:
        """``ext4_buffered_write_iter()``: IOCB_NOWAIT is -EOPNOTSUPP (ext4 does not do
        non-blocking buffered writes)."""
        if iocb.ki_flags & _IOCB_NOWAIT:
            return -errno.EOPNOTSUPP
        ret = generic_write_checks(iocb, it)
        if ret <= 0:
            return ret
        ret = generic_perform_write(iocb, it)
        if ret <= 0:
            return ret
        iocb.ki_pos += ret
        return generic_write_sync(iocb, ret)

    @staticmethod
    def _overwrite_io(inode: ModelFsInode, pos: int, length: int,
                      with_unwritten: bool) -> tuple[bool, bool]:
        """``ext4_overwrite_io()``: (does the write only overwrite allocated blocks inside
        i_size — written ones only, unless ``with_unwritten`` —, are they unwritten)."""
        if pos + length > inode.i_size:
            return False, False
        bits = inode.i_blkbits
        lblk = pos >> bits
        n = ((pos + length + (1 << bits) - 1) >> bits) - lblk
        res = ext4_map_blocks(inode, lblk, n, 0)
        if isinstance(res, int) or res.m_len != n or not res.m_flags:
            return False, False
        unwritten = not res.m_flags & MAP.MAPPED
        return (with_unwritten or not unwritten), unwritten

    def _dio_write_iter(self, iocb: Kiocb, it: IovIter) -> int:
        """``ext4_dio_write_iter()`` with ``ext4_dio_write_checks()``.

        IOCB_NOWAIT gives -EAGAIN for an extending write and for anything but an overwrite
        of allocated blocks: written ones and fs-block aligned [5.9]; unwritten ones too, and
        unaligned ones over written blocks [profile switch EXT4_DIO_SHARED_OVERWRITE]. The
        engine's -ENOTBLK means "finish with buffered I/O"; a failed or short extending write
        frees the blocks it allocated past the new EOF (``ext4_handle_inode_extension``).
        Return: bytes written or -errno.
        """
        f = iocb.ki_filp
        inode = f.f_inode
        assert isinstance(inode, ModelFsInode)
        ret = generic_write_checks(iocb, it)
        if ret <= 0:
            return ret
        offset, count = iocb.ki_pos, ret
        bs = 1 << inode.i_blkbits
        unaligned = bool((offset | iov_iter_alignment(it)) & (bs - 1))
        extend = offset + count > inode.i_size
        shared_ok = inode.pgdat.cfg.EXT4_DIO_SHARED_OVERWRITE
        overwrite, unwritten = self._overwrite_io(inode, offset, count, shared_ok)
        if iocb.ki_flags & _IOCB_NOWAIT:
            if extend or not overwrite or (unaligned and (unwritten or not shared_ok)):
                return -errno.EAGAIN
        dio_flags = IOMAP_DIO_FORCE_WAIT if unaligned or extend else 0
        engine = self.fs.sb.dio_engine_fn("iomap")
        ret = int(engine(iocb, it, self.fs.iomap_ops, dio_flags))
        if ret == -errno.ENOTBLK:
            ret = 0
        if extend and (ret < 0 or offset + count > inode.i_size):
            # ext4_handle_inode_extension(): a failed or short extending write.
            ext4_truncate_failed_write(inode)
        if ret >= 0 and iov_iter_count(it):
            offset = iocb.ki_pos
            err = self._buffered_write_iter(iocb, it)
            if err < 0:
                return err
            ret += err
            endbyte = offset + err - 1
            if not filemap.filemap_write_and_wait_range(f.f_mapping, offset, endbyte):
                filemap.invalidate_mapping_pages(f.f_mapping, offset >> PAGE_SHIFT,
                                                 endbyte >> PAGE_SHIFT)
        return ret

    # the legacy engine ----------------------------------------------------------------
    def _legacy_direct_IO(self, iocb: Kiocb, it: IovIter) -> int:
        """``ext2_direct_IO()``: ``blockdev_direct_IO(iocb, inode, iter, get_block)``; a
        failed write frees what it allocated past EOF (``ext2_write_failed``)."""
        inode = iocb.ki_filp.f_inode
        assert isinstance(inode, ModelFsInode)
        offset, count = iocb.ki_pos, iov_iter_count(it)
        engine = self.fs.sb.dio_engine_fn("legacy")
        ret = int(engine(iocb, inode, it, ext4_get_block))
        if ret < 0 and it.iov_iter_rw() == ITER_SOURCE and offset + count > inode.i_size:
            filemap.truncate_pagecache(inode, inode.i_size)
            first = (inode.i_size + PAGE_SIZE - 1) >> PAGE_SHIFT
            freed = inode.ext.remove(first, EXT4_MAX_LOGICAL_BLOCK + 1)
            inode.fs.balloc.free(freed)
        return ret

    # the rest ----------------------------------------------------------------------------
    def fsync(self, file: File, datasync: bool = False, start: int = 0,
              end: int = LLONG_MAX) -> int:
        """``ext4_sync_file()``: write back and wait for ``[start, end]``, then flush the
        device cache (an empty REQ_PREFLUSH bio). Return: 0, or the writeback error this
        file has not seen yet (each reported once per open file), or the flush's -errno."""
        ret = filemap.file_write_and_wait_range(file, start, end)
        if ret:
            return ret
        inode = file.f_inode
        if isinstance(inode, ModelFsInode):
            inode.datasync_dirty = False
        return self.fs.blkdev_issue_flush()

    def fallocate(self, file: File, mode: int, offset: int, length: int) -> int:
        """``vfs_fallocate()`` → ``ext4_fallocate()``. Return: 0 or -errno."""
        ret = vfs_fallocate_checks(file, mode, offset, length)
        if ret:
            return ret
        inode = file.f_inode
        assert isinstance(inode, ModelFsInode)
        return ext4_fallocate(inode, mode, offset, length)

    def truncate(self, file: File, length: int) -> int:
        """``do_sys_ftruncate()`` → ``ext4_setattr()``: EINVAL for a negative length, a file
        not open for writing or not regular; EFBIG past ``s_maxbytes``. Return: 0 or
        -errno."""
        inode = file.f_inode
        if length < 0 or not inode.is_reg() or not file.f_mode & FMODE.FMODE_WRITE:
            return -errno.EINVAL
        assert isinstance(inode, ModelFsInode)
        return ext4_setattr_size(inode, length)

    def getattr(self, file: File, mask: int) -> dict[str, int]:
        """``statx()`` of the open file (see :meth:`ModelFs.statx`)."""
        inode = file.f_inode
        assert isinstance(inode, ModelFsInode)
        return self.fs.statx(inode, mask)

    def vm_file(self, file: File) -> Any:
        """``ext4_file_mmap()``: the ``vm_file`` for ``do_mmap`` (a
        :class:`~dioscope.mm.filemap.MappedFile` holding a reference on the inode per VMA)."""
        inode = file.f_inode
        assert isinstance(inode, ModelFsInode)
        return filemap.MappedFile(file.f_mapping, file.f_mode, inode.iget, inode.iput, file)

    def release(self, _inode: Inode, file: File) -> None:
        """``ext4_release_file()`` + the final ``fput()``: drop the open file's inode
        reference (an unlinked file goes with its last user)."""
        inode = file.f_inode
        if isinstance(inode, ModelFsInode):
            inode.iput()

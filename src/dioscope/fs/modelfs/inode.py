"""Inodes of the model filesystem (``fs/ext4/inode.c``): the page cache's ``a_ops``, the
``iomap`` and ``get_block`` interfaces of the Direct I/O engines, zeroing and truncation.

Choices (each as ext4 does it with its default ``dioread_nolock``, unless SIMPLIFIED):

* Buffered writes allocate at ``write_begin`` time (no delayed allocation: as ext4 with
  ``nodelalloc``): holes become *unwritten* blocks (``ext4_get_block_unwritten``), turned
  written when writeback's bio completes. A shared mapping's first store (``page_mkwrite``)
  allocates the same way.
* Direct I/O writes through iomap (``ext4_iomap_begin`` / ``ext4_iomap_alloc``): a write
  inside i_size that only overwrites written blocks is mapped as it is; otherwise blocks
  from i_size on are allocated *written* (``EXT4_GET_BLOCKS_CREATE``, IOMAP_F_NEW; an
  unwritten block there is converted at once), blocks inside i_size *unwritten*
  (``EXT4_GET_BLOCKS_IO_CREATE_EXT``: IOMAP_UNWRITTEN, IOMAP_F_NEW) and converted by
  ``end_io`` once the data is on disk, which also moves i_size for an extending write.
* The legacy engine's ``get_block`` allocates written blocks (``create``), converting an
  unwritten one (BH_New); without ``create`` an unwritten block reads as a hole (not
  BH_Mapped, BH_Unwritten). ``b_size`` is the contiguous run. BH_Boundary is never set (as
  ext4's ``get_block``; ext2 sets it at indirect-block boundaries, which an extent map does
  not have). DIO_SKIP_HOLES (what the legacy engine is called with) makes it ask without
  ``create`` for blocks inside i_size, so a write into a hole there stops and is finished
  with buffered I/O.
"""

from __future__ import annotations

import errno
from typing import TYPE_CHECKING, Final

import numpy as np

from ...kernel.types import PAGE_SHIFT, PAGE_SIZE
from ...mm import filemap
from ...mm.filemap import AddressSpace
from ..fs_types import (
    IOMAP_FLAGS,
    IOMAP_NULL_ADDR,
    IOMAP_OP,
    IOMAP_TYPE,
    BufferHead,
    Inode,
    IoMap,
    Kiocb,
)
from .extents import (
    EXT4_MAX_LOGICAL_BLOCK,
    GET_BLOCKS,
    MAP,
    ExtentMap,
    ext4_convert_unwritten,
    ext4_map_blocks,
)
from .page_io import ext4_mpage_readpages, ext4_writepages

if TYPE_CHECKING:
    from .super import ModelFs

__all__ = [
    "IOMAP_DIO_UNWRITTEN",
    "ModelFsAops",
    "ModelFsInode",
    "ModelFsIomapOps",
    "ext4_block_zero_page_range",
    "ext4_evict_inode",
    "ext4_get_block",
    "ext4_setattr_size",
    "ext4_truncate",
    "ext4_truncate_failed_write",
]

IOMAP_DIO_UNWRITTEN: Final = 1 << 0
"""``IOMAP_DIO_UNWRITTEN`` (``include/linux/iomap.h``): the Direct I/O wrote unwritten
blocks; ``end_io`` must convert them."""

# Plain-int copies of the enum flags used per call (IntFlag arithmetic is slow in Python).
_IOMAP_WRITE: Final = int(IOMAP_OP.IOMAP_WRITE)
_IOMAP_WRITE_OR_DIRECT: Final = int(IOMAP_OP.IOMAP_WRITE) | int(IOMAP_OP.IOMAP_DIRECT)
_IOMAP_F_NEW: Final = int(IOMAP_FLAGS.IOMAP_F_NEW)
_IOMAP_F_DIRTY: Final = int(IOMAP_FLAGS.IOMAP_F_DIRTY)


class ModelFsInode(Inode):
    """``struct ext4_inode_info``: an inode with its block map and page cache."""

    def __init__(self, fs: ModelFs, ino: int, mode: int) -> None:
        super().__init__(fs.sb, ino, mode, fs.pgdat)
        self.fs = fs
        self.ext = ExtentMap()
        self.i_mapping = AddressSpace(self, fs.pgdat, fs.aops, wait_io=fs.wait_io)
        self.i_count = 0
        """Open files and file mappings using the inode (``i_count``)."""
        self.datasync_dirty = False
        """``ext4_inode_datasync_dirty()``: block map or size changed since the last fsync
        (so a Direct I/O write may not rely on FUA alone: IOMAP_F_DIRTY)."""

    def __repr__(self) -> str:
        return f"ModelFsInode({self.i_ino}, size={self.i_size}, blocks={self.ext.nr_blocks})"

    def mark_metadata_dirty(self) -> None:
        self.datasync_dirty = True

    @property
    def i_blocks(self) -> int:
        """Allocated space in 512-byte units (``inode->i_blocks``)."""
        return self.ext.nr_blocks << (self.i_blkbits - 9)

    def iget(self) -> None:
        self.i_count += 1

    def iput(self) -> None:
        """``iput()``: the last user of an unlinked inode evicts it."""
        self.i_count -= 1
        if self.i_count <= 0 and self.i_nlink == 0:
            ext4_evict_inode(self)


# --- address_space_operations -----------------------------------------------------------------
class ModelFsAops:
    """``ext4_aops`` (see :mod:`dioscope.mm.filemap` for the contract)."""

    def read_folio(self, mapping: AddressSpace, index: int) -> int:
        return ext4_mpage_readpages(mapping, np.array([index], np.int64))

    def readahead(self, mapping: AddressSpace, indices: np.ndarray) -> int:
        return ext4_mpage_readpages(mapping, indices, rahead=True)

    def writepages(self, mapping: AddressSpace, start: int, end: int) -> int:
        return ext4_writepages(mapping, start, end)

    def write_begin(self, mapping: AddressSpace, pos: int, length: int) -> tuple[int, int]:
        """``ext4_write_begin()``'s block part: map or allocate (unwritten) every block of
        ``[pos, pos + length)``. Return: (0 or -ENOSPC, bytes from ``pos`` prepared)."""
        inode: ModelFsInode = mapping.host
        bits = inode.i_blkbits
        lblk, last = pos >> bits, (pos + length - 1) >> bits
        err = 0
        while lblk <= last:
            res = ext4_map_blocks(inode, lblk, last - lblk + 1, GET_BLOCKS.CREATE_UNWRIT_EXT)
            if isinstance(res, int):
                err = res
                break
            lblk += res.m_len
        return err, max(0, min(length, (lblk << bits) - pos))

    def write_end(self, mapping: AddressSpace, pos: int, length: int, copied: int) -> int:
        """``ext4_write_end()``: after a short copy that was to extend the file, free what
        was allocated past the new i_size (``ext4_truncate_failed_write``)."""
        inode: ModelFsInode = mapping.host
        if copied < length and pos + length > inode.i_size:
            ext4_truncate_failed_write(inode)
        return copied

    def page_mkwrite(self, mapping: AddressSpace, index: int) -> int:
        """``ext4_page_mkwrite()``'s block part: give page ``index`` a block. Return: 0 or
        -ENOSPC."""
        res = ext4_map_blocks(mapping.host, index, 1, GET_BLOCKS.CREATE_UNWRIT_EXT)
        return res if isinstance(res, int) else 0


# --- iomap (the iomap Direct I/O engine) --------------------------------------------------------
class ModelFsIomapOps:
    """``ext4_iomap_ops`` + ``ext4_dio_write_ops``: what the iomap engine calls."""

    def iomap_begin(self, inode: ModelFsInode, pos: int, length: int,
                    flags: int) -> tuple[int, IoMap | None]:
        """``ext4_iomap_begin()``: the mapping of the file at ``pos`` (starting at the
        block holding ``pos``, as long as the run goes, capped at the block holding
        ``pos + length - 1``); for IOMAP_WRITE allocate where needed (module docstring).

        Return: (0, IoMap) or (-EINVAL past the largest file block / -ENOSPC, None).
        """
        bits = inode.i_blkbits
        lblk = pos >> bits
        if lblk > EXT4_MAX_LOGICAL_BLOCK:
            return -errno.EINVAL, None
        last = min((pos + length - 1) >> bits, EXT4_MAX_LOGICAL_BLOCK)
        n = last - lblk + 1
        res = None
        if flags & _IOMAP_WRITE:
            if pos + length <= inode.i_size:
                found = ext4_map_blocks(inode, lblk, n, 0)
                if not isinstance(found, int) and found.m_flags & MAP.MAPPED:
                    res = found
            if res is None:
                # ext4_iomap_alloc(): written from i_size on, unwritten inside it.
                mflags = (GET_BLOCKS.CREATE if lblk << bits >= inode.i_size
                          else GET_BLOCKS.IO_CREATE_EXT)
                alloc = ext4_map_blocks(inode, lblk, n, mflags)
                if isinstance(alloc, int):
                    return alloc, None
                res = alloc
        else:
            found = ext4_map_blocks(inode, lblk, n, 0)
            assert not isinstance(found, int)
            res = found
        iomap = IoMap(offset=res.m_lblk << bits, length=res.m_len << bits,
                      type=IOMAP_TYPE.IOMAP_HOLE, bdev=inode.fs.bdev)
        if res.m_flags & MAP.UNWRITTEN:
            iomap.type = IOMAP_TYPE.IOMAP_UNWRITTEN
        elif res.m_flags & MAP.MAPPED:
            iomap.type = IOMAP_TYPE.IOMAP_MAPPED
        iomap.addr = (res.m_pblk << bits if iomap.type != IOMAP_TYPE.IOMAP_HOLE
                      else IOMAP_NULL_ADDR)
        if res.m_flags & MAP.NEW:
            iomap.flags |= _IOMAP_F_NEW
        if inode.datasync_dirty or pos + length > inode.i_size:
            iomap.flags |= _IOMAP_F_DIRTY
        return 0, iomap

    def iomap_end(self, inode: ModelFsInode, pos: int, length: int, written: int,
                  flags: int, iomap: IoMap) -> int:
        """``ext4_iomap_end()``: a Direct I/O write that wrote nothing of this mapping asks
        to be finished with buffered I/O (-ENOTBLK). Return: 0 or -ENOTBLK."""
        if flags & _IOMAP_WRITE_OR_DIRECT and written == 0:
            return -errno.ENOTBLK
        return 0

    def end_io(self, iocb: Kiocb, size: int, error: int, dio_flags: int) -> int:
        """``ext4_dio_write_end_io()``: ``size`` bytes from ``ki_pos`` are on disk: convert
        what was unwritten, and move i_size for an extending write. An error is returned as
        it is (nothing converted, i_size unchanged).

        SIMPLIFIED: the i_size update is where 6.x does it; 5.9 did it right after the
        engine returned (``ext4_handle_inode_extension``): the same for synchronous I/O.
        """
        if error:
            return error
        inode = iocb.ki_filp.f_inode
        assert isinstance(inode, ModelFsInode)
        pos = iocb.ki_pos
        if size and dio_flags & IOMAP_DIO_UNWRITTEN:
            ext4_convert_unwritten(inode, pos, size)
        if pos + size > inode.i_size:
            inode.i_size = pos + size
            inode.mark_metadata_dirty()
        return 0


# --- get_block (the legacy engine) --------------------------------------------------------------
def ext4_get_block(inode: Inode, iblock: int, bh: BufferHead, create: int) -> int:
    """``get_block_t``: map file block ``iblock`` for up to ``bh.b_size`` bytes; with
    ``create`` allocate (written) or convert an unwritten block (BH_New).

    Out: ``mapped`` + ``b_blocknr`` + ``b_size`` (the contiguous run), ``new``; a hole or an
    unwritten block looked up without ``create`` leaves ``mapped`` False and ``b_size`` the
    length of the hole/run (``unwritten`` set for the latter).
    Return: 0, or -ENOSPC / -EFBIG (past the largest file block).
    """
    assert isinstance(inode, ModelFsInode)
    bits = inode.i_blkbits
    if iblock > EXT4_MAX_LOGICAL_BLOCK:
        return -errno.EFBIG
    n = max(1, min(bh.b_size >> bits, EXT4_MAX_LOGICAL_BLOCK - iblock + 1))
    bh.mapped = bh.new = bh.boundary = bh.unwritten = False
    bh.b_bdev = inode.fs.bdev
    res = ext4_map_blocks(inode, iblock, n, GET_BLOCKS.CREATE if create else 0)
    if isinstance(res, int):
        return res
    bh.b_size = res.m_len << bits
    if res.m_flags & MAP.MAPPED:
        bh.mapped = True
        bh.b_blocknr = res.m_pblk
        bh.new = bool(res.m_flags & MAP.NEW)
    elif res.m_flags & MAP.UNWRITTEN:
        bh.unwritten = True
        bh.b_blocknr = res.m_pblk
    return 0


# --- zeroing and truncation -------------------------------------------------------------------
def ext4_block_zero_page_range(inode: ModelFsInode, start: int, length: int) -> int:
    """``ext4_block_zero_page_range()``: zero bytes ``[start, start + length)`` of one block
    through the page cache and dirty the page, reading the block in if it is not cached.
    A hole has nothing to zero, nor an unwritten block that is not cached (it reads as
    zeros). Return: 0 or -errno."""
    index = start >> PAGE_SHIFT
    off = start & (PAGE_SIZE - 1)
    length = min(length, PAGE_SIZE - off)
    if length <= 0:
        return 0
    pblk, unw = inode.ext.lookup(index, 1)
    if pblk[0] < 0:
        return 0
    mapping = inode.i_mapping
    if mapping.lookup(index) < 0 and unw[0]:
        return 0
    pfn = filemap.filemap_read_folio(mapping, index)
    if pfn < 0:
        return pfn
    base = pfn << PAGE_SHIFT
    inode.pgdat.mem.bytes[base + off : base + off + length] = 0
    filemap.folio_mark_dirty(mapping, pfn)
    return 0


def ext4_truncate(inode: ModelFsInode) -> int:
    """``ext4_truncate()``: zero the tail of the block holding i_size
    (``ext4_block_truncate_page``) and free every block past it, preallocated ones
    included. Return: 0 or -errno."""
    size = inode.i_size
    err = 0
    if size & (PAGE_SIZE - 1):
        err = ext4_block_zero_page_range(inode, size, PAGE_SIZE - (size & (PAGE_SIZE - 1)))
    first = (size + (1 << inode.i_blkbits) - 1) >> inode.i_blkbits
    freed = inode.ext.remove(first, EXT4_MAX_LOGICAL_BLOCK + 1)
    if len(freed):
        inode.fs.balloc.free(freed)
        inode.mark_metadata_dirty()
    return err


def ext4_truncate_failed_write(inode: ModelFsInode) -> None:
    """``ext4_truncate_failed_write()``: drop the page cache and the blocks past i_size that
    a failed or short write left."""
    filemap.truncate_inode_pages(inode.i_mapping, inode.i_size)
    ext4_truncate(inode)


def ext4_setattr_size(inode: ModelFsInode, newsize: int) -> int:
    """``ext4_setattr()`` for ATTR_SIZE (``ftruncate``, O_TRUNC).

    Growing makes a hole (nothing is allocated) and zeroes the cached page's bytes past the
    old EOF (SIMPLIFIED: bytes a shared mapping stored past EOF never become file data).
    Shrinking unmaps and drops the page cache past the new size, zeroes the tail of its
    block (through the page cache, dirty) and frees the blocks past it. A truncate to the
    same size still frees blocks preallocated past EOF (``ext4_truncate`` is called even
    if i_size did not change).

    Return: 0, or -EFBIG (past ``s_maxbytes``).
    """
    if newsize > inode.fs.sb.s_maxbytes:
        return -errno.EFBIG
    oldsize = inode.i_size
    inode.i_size = newsize
    if newsize != oldsize:
        inode.mark_metadata_dirty()
    if newsize > oldsize and oldsize & (PAGE_SIZE - 1):
        pfn = inode.i_mapping.lookup(oldsize >> PAGE_SHIFT)
        if pfn >= 0:
            base = pfn << PAGE_SHIFT
            inode.pgdat.mem.bytes[base + (oldsize & (PAGE_SIZE - 1)) : base + PAGE_SIZE] = 0
    filemap.truncate_pagecache(inode, newsize)
    if newsize <= oldsize:
        return ext4_truncate(inode)
    return 0


def ext4_evict_inode(inode: ModelFsInode) -> None:
    """``ext4_evict_inode()``: the last reference to an unlinked inode is gone: drop its
    page cache (waiting for writeback) and free its blocks."""
    filemap.truncate_inode_pages_final(inode.i_mapping)
    freed = inode.ext.remove(0, EXT4_MAX_LOGICAL_BLOCK + 1)
    inode.fs.balloc.free(freed)
    inode.fs.inodes.pop(inode.i_ino, None)

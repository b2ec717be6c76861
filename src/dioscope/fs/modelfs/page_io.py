"""Page-cache I/O of the model filesystem: reading pages in and writing them back
(``fs/ext4/readpage.c`` ``ext4_mpage_readpages``, ``fs/ext4/page-io.c`` /
``fs/ext4/inode.c`` ``ext4_writepages``).

Reads: pages past EOF, over holes and over unwritten blocks are zero-filled without I/O;
the rest go in bios of runs that are contiguous in the file and on the disk (at most
BIO_MAX_VECS pages a bio); completion marks them uptodate and unlocks them.

Writeback: the dirty pages of the range are cleaned for I/O and put under writeback
(``writeback_prepare``: their shared PTEs become clean and read-only); a page wholly past EOF
is dropped from the write; the page straddling EOF has its tail zeroed first (it may be
mapped, ``block_write_full_page``); a page over a hole gets a block (unwritten, as ext4's
dioread_nolock writeback maps it); bios of contiguous runs go out with REQ_SYNC under a plug.
Completion converts the unwritten blocks it wrote, or records -EIO on the mapping, and ends
writeback.
"""

from __future__ import annotations

import errno
import itertools
from typing import TYPE_CHECKING, Any

import numpy as np

from ...block.bio import bio_add_page, bio_alloc
from ...block.bio_completion import bio_put, blk_status_to_errno
from ...block.blk_core import blk_finish_plug, blk_start_plug, submit_bio
from ...block.blk_types import BIO_MAX_VECS, REQ_FLAG, REQ_OP, Bio
from ...kernel.types import PAGE_SHIFT, PAGE_SIZE
from ...mm import filemap
from ...mm.page import PG
from .extents import GET_BLOCKS, ext4_map_blocks

if TYPE_CHECKING:
    from .inode import ModelFsInode

__all__ = ["ext4_mpage_readpages", "ext4_writepages"]

_SECTORS_PER_PAGE = PAGE_SIZE >> 9
_UPTODATE = np.uint32(PG.PG_uptodate)
_UNLOCK = np.uint32(~PG.PG_locked & 0xFFFFFFFF)


def _runs(idx: np.ndarray, pblk: np.ndarray) -> list[tuple[int, int]]:
    """[a, b) row ranges where both file index and disk block go up by one, cut at
    BIO_MAX_VECS pages."""
    if not len(idx):
        return []
    brk = np.flatnonzero((np.diff(idx) != 1) | (np.diff(pblk) != 1)) + 1
    bounds = np.concatenate(([0], brk, [len(idx)])).tolist()
    out: list[tuple[int, int]] = []
    for a, b in itertools.pairwise(bounds):
        while b - a > BIO_MAX_VECS:
            out.append((a, a + BIO_MAX_VECS))
            a += BIO_MAX_VECS
        out.append((a, b))
    return out


def _submit_runs(inode: ModelFsInode, op: int, idx: np.ndarray, pfns: np.ndarray,
                 pblk: np.ndarray, end_io: Any) -> None:
    """One bio per run, submitted under a plug."""
    bdev = inode.fs.bdev
    plug = blk_start_plug()
    try:
        for a, b in _runs(idx, pblk):
            bio = bio_alloc(bdev, b - a, op, inode.pgdat)
            assert bio is not None
            bio.bi_iter.bi_sector = int(pblk[a]) * _SECTORS_PER_PAGE
            for pfn in pfns[a:b].tolist():
                bio_add_page(bio, pfn, PAGE_SIZE, 0)
            bio.bi_private = (inode, pfns[a:b].copy(), int(idx[a]), b - a)
            bio.bi_end_io = end_io
            submit_bio(bio)
    finally:
        blk_finish_plug(plug)


# --- reads ------------------------------------------------------------------------------------
def _read_end_io(bio: Bio) -> None:
    """``mpage_end_io()`` / ``folio_end_read()``: uptodate on success, unlock always."""
    inode, pfns, _lblk, _n = bio.bi_private
    flags = inode.pgdat.pages.flags
    if not bio.bi_status:
        flags[pfns] |= _UPTODATE
    flags[pfns] &= _UNLOCK
    bio_put(bio)


def ext4_mpage_readpages(mapping: Any, indices: np.ndarray, rahead: bool = False) -> int:
    """``ext4_mpage_readpages()``: fill the locked, not uptodate pages at ``indices``.

    Return: 0 (errors show as pages left not uptodate).
    """
    inode: ModelFsInode = mapping.host
    pgdat = inode.pgdat
    pfns = mapping.gather(indices)
    pblk, unw = inode.ext.gather(indices)
    last = (inode.i_size + PAGE_SIZE - 1) >> PAGE_SHIFT
    zero = (indices >= last) | (pblk < 0) | unw
    if zero.any():
        zp = pfns[zero]
        pgdat.mem.clear_pages(zp)
        pgdat.pages.flags[zp] = (pgdat.pages.flags[zp] | _UPTODATE) & _UNLOCK
    io = ~zero
    if io.any():
        op = int(REQ_OP.REQ_OP_READ) | (int(REQ_FLAG.REQ_RAHEAD) if rahead else 0)
        _submit_runs(inode, op, indices[io], pfns[io], pblk[io], _read_end_io)
    return 0


# --- writeback --------------------------------------------------------------------------------
def _write_end_io(bio: Bio) -> None:
    """``ext4_end_bio()`` + ``ext4_end_io_end()``: convert what was written from unwritten,
    or record the error; end writeback."""
    inode, pfns, lblk, n = bio.bi_private
    err = blk_status_to_errno(bio.bi_status)
    if err:
        filemap.mapping_set_error(inode.i_mapping, -errno.EIO)
    elif inode.ext.convert(lblk, n):
        inode.mark_metadata_dirty()
    filemap.folio_end_writeback(inode.pgdat, pfns)
    bio_put(bio)


def ext4_writepages(mapping: Any, start: int, end: int) -> int:
    """``ext4_writepages()`` (WB_SYNC_ALL) for page indices ``[start, end]``.

    Context: sleeps (waits for pages already under writeback). Return: 0, or -ENOSPC when a
    dirty page over a hole could get no block (those pages stay dirty, the mapping records
    -ENOSPC).
    """
    inode: ModelFsInode = mapping.host
    idx, pfns = filemap.writeback_prepare(mapping, start, end)
    if not len(idx):
        return 0
    pgdat = inode.pgdat
    size = inode.i_size
    last = (size + PAGE_SIZE - 1) >> PAGE_SHIFT
    outside = idx >= last
    if outside.any():
        # Wholly past EOF (a truncate raced with the dirtying): nothing to write.
        filemap.folio_end_writeback(pgdat, pfns[outside])
        idx, pfns = idx[~outside], pfns[~outside]
    if size & (PAGE_SIZE - 1) and len(idx) and idx[-1] == size >> PAGE_SHIFT:
        base = int(pfns[-1]) << PAGE_SHIFT
        pgdat.mem.bytes[base + (size & (PAGE_SIZE - 1)) : base + PAGE_SIZE] = 0
    pblk, _unw = inode.ext.gather(idx)
    err = 0
    holes = np.flatnonzero(pblk < 0)
    for k in holes.tolist():
        if pblk[k] >= 0:
            continue
        res = ext4_map_blocks(inode, int(idx[k]), 1, GET_BLOCKS.CREATE_UNWRIT_EXT)
        if isinstance(res, int):
            err = res
            break
        pblk[k] = res.m_pblk
    if err:
        failed = pblk < 0
        pgdat.pages.flags[pfns[failed]] |= np.uint32(PG.PG_dirty)
        filemap.folio_end_writeback(pgdat, pfns[failed])
        filemap.mapping_set_error(mapping, err)
        idx, pfns, pblk = idx[~failed], pfns[~failed], pblk[~failed]
    op = int(REQ_OP.REQ_OP_WRITE) | int(REQ_FLAG.REQ_SYNC)
    _submit_runs(inode, op, idx, pfns, pblk, _write_end_io)
    return err

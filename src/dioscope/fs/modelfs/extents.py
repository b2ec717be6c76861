"""The block map of a file and ``ext4_map_blocks`` (``fs/ext4/extents.c``, ``fs/ext4/inode.c``).

A file's map is two numpy arrays indexed by file block (4 KiB): ``pblk`` (the disk block,
-1 for a hole) and ``unwritten`` (allocated but never written: reads see zeros). They grow to
the highest mapped block; blocks past their end are holes. An "extent" is a maximal run of
blocks that are contiguous on disk and in the same state; :meth:`ExtentMap.extents` lists
them (what ``FIEMAP`` would show).

``ext4_map_blocks(inode, lblk, len, flags)`` answers for the run starting at ``lblk``, capped
at ``len`` blocks and at the run's end, and allocates with the CREATE flags, as ext4 does:

===================================  =========================================================
flags                                 hole                         unwritten run
===================================  =========================================================
0 (lookup)                            0, length of the hole         UNWRITTEN (not MAPPED)
GET_BLOCKS_CREATE                     allocate written: MAPPED|NEW  convert to written:
                                                                    MAPPED|NEW
GET_BLOCKS_CREATE_UNWRIT_EXT          allocate unwritten:           MAPPED|UNWRITTEN
(fallocate, buffered write_begin)     MAPPED|UNWRITTEN|NEW
GET_BLOCKS_IO_CREATE_EXT              allocate unwritten:           MAPPED|UNWRITTEN|NEW
(Direct I/O write inside i_size)      MAPPED|UNWRITTEN|NEW          (to be converted at end_io)
===================================  =========================================================

Written runs are MAPPED whatever the flags. SIMPLIFIED: no on-disk extent tree and so no
extent length limit (ext4 caps an extent at 32768 blocks, 32767 if unwritten): a run is as
long as the blocks are contiguous.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from .inode import ModelFsInode

__all__ = [
    "EXT4_MAX_LOGICAL_BLOCK",
    "GET_BLOCKS",
    "MAP",
    "ExtentMap",
    "MapResult",
    "ext4_convert_unwritten",
    "ext4_map_blocks",
]

EXT4_MAX_LOGICAL_BLOCK = 0xFFFFFFFE
"""Largest file block of an extent-mapped file (``fs/ext4/ext4.h``)."""


class GET_BLOCKS:
    """``EXT4_GET_BLOCKS_*`` (``fs/ext4/ext4.h``), the ones the model uses."""

    CREATE = 0x0001
    UNWRIT_EXT = 0x0002
    CREATE_UNWRIT_EXT = UNWRIT_EXT | CREATE
    PRE_IO = 0x0008
    IO_CREATE_EXT = PRE_IO | CREATE_UNWRIT_EXT


class MAP:
    """``EXT4_MAP_*`` result flags."""

    NEW = 1 << 0
    MAPPED = 1 << 1
    UNWRITTEN = 1 << 2


@dataclass
class MapResult:
    """``struct ext4_map_blocks`` after the call: ``m_len`` blocks from ``m_pblk``."""

    m_lblk: int
    m_len: int
    m_pblk: int
    m_flags: int


class ExtentMap:
    """The block map of one file (per file block: disk block or -1, unwritten bit)."""

    __slots__ = ("pblk", "unwritten")

    def __init__(self) -> None:
        self.pblk = np.full(0, -1, np.int64)
        self.unwritten = np.zeros(0, bool)

    def _grow(self, n: int) -> None:
        if n <= len(self.pblk):
            return
        size = max(n, 2 * len(self.pblk), 16)
        pblk = np.full(size, -1, np.int64)
        pblk[: len(self.pblk)] = self.pblk
        unw = np.zeros(size, bool)
        unw[: len(self.unwritten)] = self.unwritten
        self.pblk, self.unwritten = pblk, unw

    def lookup(self, lblk: int, n: int) -> tuple[np.ndarray, np.ndarray]:
        """(disk blocks, unwritten bits) of file blocks ``[lblk, lblk + n)`` (copies)."""
        pblk = np.full(n, -1, np.int64)
        unw = np.zeros(n, bool)
        hi = min(lblk + n, len(self.pblk))
        if hi > lblk:
            pblk[: hi - lblk] = self.pblk[lblk:hi]
            unw[: hi - lblk] = self.unwritten[lblk:hi]
        return pblk, unw

    def gather(self, lblks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(disk blocks, unwritten bits) of the file blocks ``lblks``."""
        inside = lblks < len(self.pblk)
        pblk = np.full(len(lblks), -1, np.int64)
        unw = np.zeros(len(lblks), bool)
        pblk[inside] = self.pblk[lblks[inside]]
        unw[inside] = self.unwritten[lblks[inside]]
        return pblk, unw

    def run(self, lblk: int, n: int) -> tuple[int, int, bool]:
        """The run at ``lblk`` capped at ``n`` blocks: (length, first disk block or -1,
        unwritten)."""
        if lblk >= len(self.pblk):
            return n, -1, False
        pblk, unw = self.lookup(lblk, n)
        first = int(pblk[0])
        if first < 0:
            same = pblk < 0
        else:
            same = (pblk == first + np.arange(n)) & (unw == unw[0])
        length = n if same.all() else int(np.argmin(same))
        return length, first, bool(unw[0]) if first >= 0 else False

    def set(self, lblk: int, pblk: int, n: int, unwritten: bool) -> None:
        """Map file blocks ``[lblk, lblk + n)`` onto disk blocks ``[pblk, pblk + n)``."""
        self._grow(lblk + n)
        self.pblk[lblk : lblk + n] = np.arange(pblk, pblk + n, dtype=np.int64)
        self.unwritten[lblk : lblk + n] = unwritten

    def convert(self, lblk: int, n: int) -> int:
        """Mark the unwritten blocks of ``[lblk, lblk + n)`` written. Return: how many."""
        hi = min(lblk + n, len(self.pblk))
        if hi <= lblk:
            return 0
        k = int(self.unwritten[lblk:hi].sum())
        self.unwritten[lblk:hi] = False
        return k

    def remove(self, lblk: int, end: int) -> np.ndarray:
        """Unmap file blocks ``[lblk, end)``. Return: the disk blocks they had."""
        hi = min(end, len(self.pblk))
        if hi <= lblk:
            return np.empty(0, np.int64)
        sl = self.pblk[lblk:hi]
        freed = sl[sl >= 0].copy()
        sl[:] = -1
        self.unwritten[lblk:hi] = False
        return freed

    @property
    def nr_blocks(self) -> int:
        """Allocated blocks (written or unwritten)."""
        return int(np.count_nonzero(self.pblk >= 0))

    def last_block(self) -> int:
        """The highest mapped file block, or -1."""
        mapped = np.flatnonzero(self.pblk >= 0)
        return int(mapped[-1]) if len(mapped) else -1

    def extents(self) -> list[tuple[int, int, int, bool]]:
        """Every extent as (file block, disk block, length, unwritten), in file order."""
        mapped = np.flatnonzero(self.pblk >= 0)
        if not len(mapped):
            return []
        pb = self.pblk[mapped]
        uw = self.unwritten[mapped]
        brk = np.flatnonzero((np.diff(mapped) != 1) | (np.diff(pb) != 1) | (uw[1:] != uw[:-1]))
        starts = np.concatenate(([0], brk + 1))
        ends = np.concatenate((brk + 1, [len(mapped)]))
        return [(int(mapped[a]), int(pb[a]), int(b - a), bool(uw[a]))
                for a, b in zip(starts.tolist(), ends.tolist(), strict=True)]


def _goal(inode: ModelFsInode, lblk: int) -> int:
    """``ext4_ext_find_goal()``: the disk block that would continue the nearest mapped block
    before ``lblk``; -1 (the allocator's cursor) for a file without one."""
    pblk = inode.ext.pblk[: min(lblk, len(inode.ext.pblk))]
    mapped = np.flatnonzero(pblk >= 0)
    if not len(mapped):
        return -1
    j = int(mapped[-1])
    return int(pblk[j]) + (lblk - j)


def ext4_map_blocks(inode: ModelFsInode, lblk: int, length: int, flags: int) -> MapResult | int:
    """``ext4_map_blocks()``: map (and with CREATE flags allocate) the run at file block
    ``lblk``, at most ``length`` blocks; see the module table.

    Return: the mapping (``m_len`` 0 never: a hole reports its length with ``m_flags`` 0),
    or -ENOSPC when a hole needs blocks and none are free.
    """
    ext = inode.ext
    n, pblk, unwritten = ext.run(lblk, length)
    if pblk >= 0:
        if not unwritten:
            return MapResult(lblk, n, pblk, MAP.MAPPED)
        if not flags & GET_BLOCKS.CREATE:
            return MapResult(lblk, n, pblk, MAP.UNWRITTEN)
        if flags & GET_BLOCKS.PRE_IO:
            return MapResult(lblk, n, pblk, MAP.MAPPED | MAP.UNWRITTEN | MAP.NEW)
        if flags & GET_BLOCKS.UNWRIT_EXT:
            return MapResult(lblk, n, pblk, MAP.MAPPED | MAP.UNWRITTEN)
        ext.convert(lblk, n)
        inode.mark_metadata_dirty()
        return MapResult(lblk, n, pblk, MAP.MAPPED | MAP.NEW)
    if not flags & GET_BLOCKS.CREATE:
        return MapResult(lblk, n, -1, 0)
    start, got = inode.fs.balloc.alloc(_goal(inode, lblk), n)
    if got <= 0:
        return -errno.ENOSPC
    unw = bool(flags & GET_BLOCKS.UNWRIT_EXT)
    ext.set(lblk, start, got, unw)
    inode.mark_metadata_dirty()
    mflags = MAP.MAPPED | MAP.NEW | (MAP.UNWRITTEN if unw else 0)
    return MapResult(lblk, got, start, mflags)


def ext4_convert_unwritten(inode: ModelFsInode, offset: int, size: int) -> int:
    """``ext4_convert_unwritten_extents()``: bytes ``[offset, offset + size)`` now hold data:
    their unwritten blocks become written. Return: 0."""
    if size <= 0:
        return 0
    bits = inode.i_blkbits
    first = offset >> bits
    last = (offset + size - 1) >> bits
    if inode.ext.convert(first, last - first + 1):
        inode.mark_metadata_dirty()
    return 0

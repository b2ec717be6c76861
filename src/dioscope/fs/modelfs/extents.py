"""The block map of a file and ``ext4_map_blocks`` (``fs/ext4/extents.c``, ``fs/ext4/inode.c``).

A file's map gives, per file block (4 KiB), the disk block (or a hole) and whether it is
unwritten (allocated but never written: reads see zeros), in chunked numpy arrays
(:class:`~dioscope.kernel.xarray.XArray`): a block at 16 TiB costs one chunk. An "extent"
is a maximal run of blocks that are contiguous on disk and in the same state;
:meth:`ExtentMap.extents` lists them (what ``FIEMAP`` would show).

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
from typing import TYPE_CHECKING, Final

import numpy as np

from ...kernel.xarray import XA_CHUNK, XArray

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

EXT4_MAX_LOGICAL_BLOCK: Final = 0xFFFFFFFE
"""Largest file block of an extent-mapped file (``fs/ext4/ext4.h``)."""


class GET_BLOCKS:
    """``EXT4_GET_BLOCKS_*`` (``fs/ext4/ext4.h``), the ones the model uses."""

    CREATE: Final = 0x0001
    UNWRIT_EXT: Final = 0x0002
    CREATE_UNWRIT_EXT: Final = UNWRIT_EXT | CREATE
    PRE_IO: Final = 0x0008
    IO_CREATE_EXT: Final = PRE_IO | CREATE_UNWRIT_EXT


class MAP:
    """``EXT4_MAP_*`` result flags."""

    NEW: Final = 1 << 0
    MAPPED: Final = 1 << 1
    UNWRITTEN: Final = 1 << 2


class MapResult:
    """``struct ext4_map_blocks`` after the call: ``m_len`` blocks from ``m_pblk``. (A plain
    class, not a dataclass: compiled, a dataclass keeps an interpreted ``__init__``.)"""

    def __init__(self, m_lblk: int, m_len: int, m_pblk: int, m_flags: int) -> None:
        self.m_lblk = m_lblk
        self.m_len = m_len
        self.m_pblk = m_pblk
        self.m_flags = m_flags

    def __repr__(self) -> str:
        return (f"MapResult(m_lblk={self.m_lblk}, m_len={self.m_len}, m_pblk={self.m_pblk}, "
                f"m_flags={self.m_flags:#x})")


UNWRITTEN_BIT: Final = 1 << 62
"""Model-only: the unwritten flag rides in bit 62 of a block-map entry (ext4 keeps it in the
top bit of ``ee_len``), so "contiguous on disk and in the same state" is ``entry + 1``."""
_PBLK_MASK: Final = UNWRITTEN_BIT - 1


def _decode(enc: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mapped = enc >= 0
    return np.where(mapped, enc & _PBLK_MASK, -1), mapped & ((enc & UNWRITTEN_BIT) != 0)


_RAMP: Final = np.arange(XA_CHUNK, dtype=np.int64)
"""0, 1, 2, ...: block i of a contiguous run holds first + i."""
_RAMP_BYTES: Final = _RAMP.tobytes()
_INT64_MAX: Final = (1 << 63) - 1


class ExtentMap:
    """The block map of one file: per file block, the disk block (or a hole) and whether
    it is unwritten, kept sparse (:class:`~dioscope.kernel.xarray.XArray`).

    :meth:`run` remembers its last answer until the map changes: ext4_map_blocks() asks the
    extent status tree (``ext4_es_lookup_extent()``, ``fs/ext4/extents_status.c``) before
    the extent tree, so a Direct I/O write's second lookup of its range (ext4_overwrite_io(),
    then ext4_iomap_begin()) costs next to nothing there. SIMPLIFIED: one remembered run,
    not a tree of every extent looked up; the answers are the same.
    """

    __slots__ = ("_es", "xa")

    def __init__(self) -> None:
        self.xa = XArray()
        self._es: tuple[int, int, tuple[int, int, bool]] | None = None
        """(lblk, n, run(lblk, n)) of the last lookup; None once the map changed."""

    def lookup(self, lblk: int, n: int) -> tuple[np.ndarray, np.ndarray]:
        """(disk blocks or -1, unwritten bits) of file blocks ``[lblk, lblk + n)``."""
        return _decode(self.xa.dense(lblk, lblk + n))

    def gather(self, lblks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(disk blocks or -1, unwritten bits) of the file blocks ``lblks``."""
        return _decode(self.xa.gather(lblks))

    def run(self, lblk: int, n: int) -> tuple[int, int, bool]:
        """The run at ``lblk`` capped at ``n`` blocks: (length, first disk block or -1,
        unwritten). A hole runs to the next mapped block."""
        es = self._es
        if es is not None and es[0] == lblk and es[1] == n:
            return es[2]
        res = self.walk(lblk, n)
        self._es = (lblk, n, res)
        return res

    def walk(self, lblk: int, n: int) -> tuple[int, int, bool]:
        """:meth:`run` read from the map itself (``ext4_ext_map_blocks()``)."""
        first = self.xa.get(lblk)
        if first < 0:
            nxt = self.xa.next_present(lblk, lblk + n)
            return (nxt - lblk if nxt >= 0 else n), -1, False
        length = 1
        while length < n:
            step = min(n - length, XA_CHUNK)
            at = lblk + length
            enc = self.xa.view(at, at + step)  # within one chunk: no copy
            if enc is None:
                enc = self.xa.dense(at, at + step)
            step = len(enc)
            # 0, 1, 2, ... while the run goes on. (``first + length`` may not fit an int64 when
            # ``first`` carries UNWRITTEN_BIT, at the top of the block field; then in two
            # steps, as ``enc - first`` always fits.)
            base = first + length
            if base <= _INT64_MAX:
                rel = enc - base
            else:
                rel = enc - first
                rel -= length
            if rel.tobytes() == _RAMP_BYTES[: 8 * step]:
                k = step
            else:
                k = int((rel == _RAMP[:step]).argmin())
            length += k
            if k < step:
                break
        return length, first & _PBLK_MASK, bool(first & UNWRITTEN_BIT)

    def prev_mapped(self, lblk: int) -> tuple[int, int]:
        """(file block, disk block) of the nearest mapped block before ``lblk``, or (-1, -1)."""
        j = self.xa.prev_present(lblk)
        return (j, self.xa.get(j) & _PBLK_MASK) if j >= 0 else (-1, -1)

    def set(self, lblk: int, pblk: int, n: int, unwritten: bool) -> None:
        """Map file blocks ``[lblk, lblk + n)`` onto disk blocks ``[pblk, pblk + n)``."""
        self._es = None
        enc = np.arange(pblk, pblk + n, dtype=np.int64)
        if unwritten:
            enc |= UNWRITTEN_BIT
        self.xa.store_range(lblk, enc)

    def convert(self, lblk: int, n: int) -> int:
        """Mark the unwritten blocks of ``[lblk, lblk + n)`` written. Return: how many."""
        idx, enc = self.xa.find(lblk, lblk + n)
        unw = (enc & UNWRITTEN_BIT) != 0
        if unw.any():
            self._es = None
            self.xa.store(idx[unw], enc[unw] & _PBLK_MASK)
        return int(unw.sum())

    def remove(self, lblk: int, end: int) -> np.ndarray:
        """Unmap file blocks ``[lblk, end)``. Return: the disk blocks they had."""
        self._es = None
        _idx, enc = self.xa.erase_range(lblk, end)
        return enc & _PBLK_MASK

    @property
    def nr_blocks(self) -> int:
        """Allocated blocks (written or unwritten)."""
        return len(self.xa)

    def last_block(self) -> int:
        """The highest mapped file block, or -1."""
        return self.xa.last()

    def extents(self) -> list[tuple[int, int, int, bool]]:
        """Every extent as (file block, disk block, length, unwritten), in file order."""
        mapped, enc = self.xa.find(0, 1 << 62)
        if not len(mapped):
            return []
        brk = np.flatnonzero((np.diff(mapped) != 1) | (np.diff(enc) != 1))
        starts = np.concatenate(([0], brk + 1))
        ends = np.concatenate((brk + 1, [len(mapped)]))
        return [(int(mapped[a]), int(enc[a] & _PBLK_MASK), int(b - a),
                 bool(enc[a] & UNWRITTEN_BIT))
                for a, b in zip(starts.tolist(), ends.tolist(), strict=True)]


def _goal(inode: ModelFsInode, lblk: int) -> int:
    """``ext4_ext_find_goal()``: the disk block that would continue the nearest mapped block
    before ``lblk``; -1 (the allocator's cursor) for a file without one."""
    j, pblk = inode.ext.prev_mapped(lblk)
    return pblk + (lblk - j) if j >= 0 else -1


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

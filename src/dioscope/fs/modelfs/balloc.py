"""Block allocation of the model filesystem (``fs/ext4/mballoc.c``, much simplified).

A bitmap of every 4 KiB block of the device (numpy bool, True = in use). Allocation is
contiguous-first and deterministic, so files get few extents and tests can name exact
block numbers:

1. a free run of the whole request starting at the goal (the block that continues the
   file's nearest preceding extent, ``ext4_ext_find_goal``; else the allocation cursor);
2. else the first free run of the whole request at or after the goal, wrapping around;
3. else what is free at the goal, else the first free run at or after it (a partial
   allocation: the caller asks again for the rest).

The cursor (next-fit) moves to the end of each allocation. SIMPLIFIED: no block groups,
no preallocation windows, no request normalisation; metadata (superblock, bitmaps, inode
table, extent tree) is kept in memory, not on the device: block 0 is reserved, every other
block holds file data.
"""

from __future__ import annotations

import numpy as np

__all__ = ["BlockAllocator"]


class BlockAllocator:
    """The block bitmap of one filesystem."""

    def __init__(self, nblocks: int, reserved: int = 1) -> None:
        if nblocks <= reserved:
            raise ValueError(f"a filesystem of {nblocks} blocks has no room for data")
        self.nblocks = nblocks
        self.used = np.zeros(nblocks, bool)
        self.used[:reserved] = True
        self.first_data_block = reserved
        self.free_blocks = nblocks - reserved
        self.cursor = reserved
        """Where a file with no blocks yet starts looking (next-fit)."""

    def _free_runs(self, lo: int, hi: int) -> tuple[np.ndarray, np.ndarray]:
        """(starts, lengths) of the free runs of blocks ``[lo, hi)``."""
        free = ~self.used[lo:hi]
        if not free.any():
            return np.empty(0, np.int64), np.empty(0, np.int64)
        edges = np.flatnonzero(np.diff(np.concatenate(([0], free.view(np.int8), [0]))))
        starts = edges[0::2]
        return starts + lo, edges[1::2] - starts

    def alloc(self, goal: int, count: int) -> tuple[int, int]:
        """Allocate up to ``count`` contiguous blocks near ``goal``.

        Return: (first block, number allocated), or (-1, 0) when the device is full.
        """
        if count <= 0 or not self.free_blocks:
            return -1, 0
        if not self.first_data_block <= goal < self.nblocks:
            goal = self.cursor
        start = -1
        n = 0
        if not self.used[goal]:
            run = self.used[goal : goal + count]
            n = len(run) if not run.any() else int(np.argmax(run))
            start = goal
        if n < count:
            for lo, hi in ((goal, self.nblocks), (self.first_data_block, goal)):
                starts, lens = self._free_runs(lo, hi)
                fit = np.flatnonzero(lens >= count)
                if len(fit):
                    start, n = int(starts[fit[0]]), count
                    break
            else:
                if start < 0:
                    for lo, hi in ((goal, self.nblocks), (self.first_data_block, goal)):
                        starts, lens = self._free_runs(lo, hi)
                        if len(starts):
                            start, n = int(starts[0]), min(int(lens[0]), count)
                            break
        if start < 0:
            return -1, 0
        n = min(n, count)
        self.used[start : start + n] = True
        self.free_blocks -= n
        self.cursor = start + n if start + n < self.nblocks else self.first_data_block
        return start, n

    def free(self, blocks: np.ndarray) -> int:
        """Release ``blocks`` (any order). Return: how many were in use (a block freed twice
        is ignored the second time; the caller's bug)."""
        if not len(blocks):
            return 0
        was = self.used[blocks]
        self.used[blocks] = False
        n = int(was.sum())
        self.free_blocks += n
        return n

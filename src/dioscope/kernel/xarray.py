"""A sparse index → int64 map (the role of ``lib/xarray.c`` for the page cache and of the
extent tree for a file's blocks).

Entries live in numpy chunks of :data:`XA_CHUNK` slots, allocated when first stored to, so
a file touched at offset 16 TiB costs one chunk, not an array up to there; a range query
walks only the chunks that exist. Empty slots hold -1 (``NULL``). No Python object exists
per entry; queries and updates are vectorized per chunk.
"""

from __future__ import annotations

from typing import Final

import numpy as np

__all__ = ["XA_CHUNK", "XArray"]

XA_CHUNK_SHIFT: Final = 15
XA_CHUNK: Final = 1 << XA_CHUNK_SHIFT
_MASK: Final = XA_CHUNK - 1


class XArray:
    """index (>= 0) → int64 value, -1 meaning absent."""

    __slots__ = ("chunks", "count")

    def __init__(self) -> None:
        self.chunks: dict[int, np.ndarray] = {}
        self.count = 0
        """Present entries."""

    def __len__(self) -> int:
        return self.count

    def _chunk(self, c: int) -> np.ndarray:
        ch = self.chunks.get(c)
        if ch is None:
            ch = np.full(XA_CHUNK, -1, np.int64)
            self.chunks[c] = ch
        return ch

    def _keys(self, start: int, end: int) -> list[int]:
        lo, hi = start >> XA_CHUNK_SHIFT, (end - 1) >> XA_CHUNK_SHIFT
        if hi - lo < len(self.chunks):
            return [c for c in range(lo, hi + 1) if c in self.chunks]
        return sorted(c for c in self.chunks if lo <= c <= hi)

    # --- reads ------------------------------------------------------------------------------
    def get(self, index: int) -> int:
        ch = self.chunks.get(index >> XA_CHUNK_SHIFT)
        return ch.item(index & _MASK) if ch is not None and index >= 0 else -1

    def dense(self, start: int, end: int) -> np.ndarray:
        """Values of ``[start, end)`` as one array (a copy; -1 where absent)."""
        out = np.full(max(end - start, 0), -1, np.int64)
        if end <= start:
            return out
        for c in self._keys(start, end):
            base = c << XA_CHUNK_SHIFT
            lo, hi = max(start, base), min(end, base + XA_CHUNK)
            out[lo - start : hi - start] = self.chunks[c][lo - base : hi - base]
        return out

    def view(self, start: int, end: int) -> np.ndarray | None:
        """Values of ``[start, end)`` as a read-only view when the range lies in one chunk
        that exists; None otherwise (use :meth:`dense`). At least one entry long: an empty
        range gives None."""
        if end <= start or start >> XA_CHUNK_SHIFT != (end - 1) >> XA_CHUNK_SHIFT:
            return None
        ch = self.chunks.get(start >> XA_CHUNK_SHIFT)
        if ch is None:
            return None
        lo = start & _MASK
        v = ch[lo : lo + end - start]
        v.setflags(write=False)
        return v

    def gather(self, indices: np.ndarray) -> np.ndarray:
        """Values at ``indices`` (-1 where absent)."""
        out = np.full(len(indices), -1, np.int64)
        if not len(indices) or not self.chunks:
            return out
        cs = indices >> XA_CHUNK_SHIFT
        c0 = int(cs[0])
        if (cs == c0).all():
            ch = self.chunks.get(c0)
            return ch[indices & _MASK] if ch is not None else out
        for c in np.unique(cs).tolist():
            ch = self.chunks.get(c)
            if ch is not None:
                sel = cs == c
                out[sel] = ch[indices[sel] & _MASK]
        return out

    def find(self, start: int, end: int) -> tuple[np.ndarray, np.ndarray]:
        """(indices, values) of the present entries of ``[start, end)``, in order."""
        idx: list[np.ndarray] = []
        val: list[np.ndarray] = []
        if end > start:
            keys = self._keys(start, end)
            if len(keys) == 1:
                c = keys[0]
                base = c << XA_CHUNK_SHIFT
                lo, hi = max(start, base) - base, min(end, base + XA_CHUNK) - base
                sl = self.chunks[c][lo:hi]
                rel = (sl >= 0).nonzero()[0]
                return rel + (base + lo), sl[rel]
            for c in keys:
                base = c << XA_CHUNK_SHIFT
                lo, hi = max(start, base) - base, min(end, base + XA_CHUNK) - base
                sl = self.chunks[c][lo:hi]
                rel = (sl >= 0).nonzero()[0]
                if len(rel):
                    idx.append(rel + base + lo)
                    val.append(sl[rel])
        if not idx:
            return np.empty(0, np.int64), np.empty(0, np.int64)
        return np.concatenate(idx), np.concatenate(val)

    def next_present(self, start: int, end: int) -> int:
        """The first present index in ``[start, end)``, or -1."""
        for c in self._keys(start, end):
            base = c << XA_CHUNK_SHIFT
            lo, hi = max(start, base) - base, min(end, base + XA_CHUNK) - base
            rel = (self.chunks[c][lo:hi] >= 0).nonzero()[0]
            if len(rel):
                return int(rel[0]) + base + lo
        return -1

    def prev_present(self, end: int) -> int:
        """The last present index below ``end``, or -1."""
        if end <= 0:
            return -1
        for c in sorted((c for c in self.chunks if c <= (end - 1) >> XA_CHUNK_SHIFT),
                        reverse=True):
            base = c << XA_CHUNK_SHIFT
            hi = min(end, base + XA_CHUNK) - base
            rel = (self.chunks[c][:hi] >= 0).nonzero()[0]
            if len(rel):
                return int(rel[-1]) + base
        return -1

    def last(self) -> int:
        """The highest present index, or -1."""
        return self.prev_present(1 << 62) if self.chunks else -1

    # --- writes -----------------------------------------------------------------------------
    def store(self, indices: np.ndarray, values: np.ndarray) -> None:
        """Set ``indices`` to ``values`` (-1 erases)."""
        if not len(indices):
            return
        values = np.broadcast_to(np.asarray(values, np.int64), indices.shape)
        cs = indices >> XA_CHUNK_SHIFT
        for c in np.unique(cs).tolist():
            sel = cs == c
            ch = self._chunk(c)
            slots = indices[sel] & _MASK
            before = int(np.count_nonzero(ch[slots] >= 0))
            ch[slots] = values[sel]
            self.count += int(np.count_nonzero(ch[slots] >= 0)) - before
            if not (ch >= 0).any():
                del self.chunks[c]

    def store_range(self, start: int, values: np.ndarray) -> None:
        """Set ``[start, start + len(values))`` to ``values``."""
        self.store(np.arange(start, start + len(values), dtype=np.int64), values)

    def erase_range(self, start: int, end: int) -> tuple[np.ndarray, np.ndarray]:
        """Erase ``[start, end)``. Return: (indices, values) that were present."""
        idx, val = self.find(start, end)
        if len(idx):
            self.store(idx, np.full(len(idx), -1, np.int64))
        return idx, val

"""Walking a bvec array with a ``struct bvec_iter`` (``include/linux/bvec.h``,
``include/linux/bio.h`` ``bio_for_each_bvec``).

The bvec array is the int64 ``(n, 2)`` array of :mod:`dioscope.block.blk_types`: column 0
is ``bv_page`` (a pfn), column 1 is ``bv_len << 32 | bv_offset``. An iterator names a byte
range of it: start at row ``bi_idx``, ``bi_bvec_done`` bytes in, ``bi_size`` bytes long. A
clone made by ``bio_split`` shares the array and owns only its iterator, so everything here
reads the array through an iterator and never through ``bi_vcnt``.

Everything is vectorised: one numpy call per step, never a Python object per bvec.
"""

from __future__ import annotations

from typing import Final

import numpy as np

from ..kernel.types import PAGE_SHIFT
from .blk_types import BvecIter

__all__ = ["SMALL", "bvec_iter_advance", "bvec_iter_list", "bvec_iter_phys", "bvec_iter_rows"]

_LO32: Final = 0xFFFFFFFF
SMALL: Final = 16
"""Up to this many bvec rows, plain Python over ``tolist()`` beats numpy calls."""


def bvec_iter_list(bvecs: np.ndarray, it: BvecIter) -> list[tuple[int, int, int]] | None:
    """:func:`bvec_iter_rows` as a list of ``(bv_page, bv_offset, bv_len)`` when the iterator
    spans at most SMALL rows (the common case of a bio of merged multi-page bvecs).

    Return: the list, or None if more rows are needed (use :func:`bvec_iter_rows`).
    """
    size = it.bi_size
    out: list[tuple[int, int, int]] = []
    if size <= 0:
        return out
    done = it.bi_bvec_done
    idx = it.bi_idx
    if idx < len(bvecs):  # the first row alone: most iterators end in it
        page, lo = bvecs[idx].tolist()
        if (lo >> 32) - done >= size:
            out.append((page, (lo & _LO32) + done, size))
            return out
    for page, lo in bvecs[idx : idx + SMALL].tolist():
        n = (lo >> 32) - done
        if n >= size:
            out.append((page, (lo & _LO32) + done, size))
            return out
        out.append((page, (lo & _LO32) + done, n))
        size -= n
        done = 0
    return None


def bvec_iter_rows(bvecs: np.ndarray, it: BvecIter) -> tuple[np.ndarray, np.ndarray,
                                                             np.ndarray]:
    """The multi-page bvecs ``bio_for_each_bvec`` yields for ``it``.

    Return: ``(bv_page, bv_offset, bv_len)`` int64 arrays, one entry per bvec; the first
    starts ``bi_bvec_done`` bytes into its row, the last is cut at ``bi_size``. Offsets are
    relative to ``bv_page`` and may exceed PAGE_SIZE (a multi-page bvec).
    Raise: ValueError if the array holds fewer than ``bi_size`` bytes from ``bi_idx`` on.
    """
    size = it.bi_size
    if size <= 0:
        e = np.empty(0, np.int64)
        return e, e, e
    idx, done = it.bi_idx, it.bi_bvec_done
    lo0 = int(bvecs[idx, 1])
    first_len = (lo0 >> 32) - done
    if first_len >= size:  # the common case of a small piece: no array work at all
        return (bvecs[idx : idx + 1, 0].copy(), np.array([(lo0 & _LO32) + done], np.int64),
                np.array([size], np.int64))
    rows = bvecs[idx:]
    lens = rows[:, 1] >> 32
    cs = np.cumsum(lens)
    cs -= done
    n = int(np.searchsorted(cs, size, "left")) + 1
    if n > len(rows):
        raise ValueError(f"bvec array holds {int(cs[-1])} bytes, iterator wants {size}")
    pages = rows[:n, 0].copy()
    offs = rows[:n, 1] & _LO32
    lens = lens[:n].copy()
    if done:
        offs[0] += done
        lens[0] -= done
    lens[n - 1] -= int(cs[n - 1]) - size
    return pages, offs, lens


def bvec_iter_phys(bvecs: np.ndarray, it: BvecIter) -> tuple[np.ndarray, np.ndarray]:
    """Physical byte address and length of each bvec of ``it`` (``bvec_phys``).

    Return: ``(phys, len)`` int64 arrays.
    """
    pages, offs, lens = bvec_iter_rows(bvecs, it)
    return (pages << PAGE_SHIFT) + offs, lens


def bvec_iter_advance(bvecs: np.ndarray, it: BvecIter, nbytes: int) -> bool:
    """``bvec_iter_advance()``: move ``it`` forward ``nbytes`` bytes (sector untouched).

    Return: False (with the iterator emptied) if ``nbytes`` exceeds ``bi_size`` — the
    kernel's "Attempted to advance past end of bvec iter" WARN; True otherwise.
    """
    if nbytes > it.bi_size:
        it.bi_size = 0
        return False
    it.bi_size -= nbytes
    total = nbytes + it.bi_bvec_done
    idx = it.bi_idx
    if not total:
        return True
    if idx < len(bvecs):  # most advances end in or with the first row
        n = bvecs.item(idx, 1) >> 32
        if total <= n:
            it.bi_idx, it.bi_bvec_done = (idx, total) if total < n else (idx + 1, 0)
            return True
    # A few rows: walk them in Python (the loop of the kernel's bvec_iter_advance).
    for lo in bvecs[idx : idx + SMALL, 1].tolist():
        n = lo >> 32
        if total < n:
            break
        total -= n
        idx += 1
        if not total:
            break
    else:
        if total:
            return _advance_np(bvecs, it, idx, total)
    it.bi_idx = idx
    it.bi_bvec_done = total
    return True


def _advance_np(bvecs: np.ndarray, it: BvecIter, idx: int, total: int) -> bool:
    cs = np.cumsum(bvecs[idx:, 1] >> 32)
    # Whole bvecs consumed: up to the first whose end reaches ``total``; the kernel stops
    # when no bytes are left, so an exact hit consumes that bvec and nothing after it.
    k = int(np.searchsorted(cs, total, "left"))
    if k < len(cs) and int(cs[k]) == total:
        k += 1
    it.bi_idx = idx + k
    it.bi_bvec_done = total - (int(cs[k - 1]) if k else 0)
    return True

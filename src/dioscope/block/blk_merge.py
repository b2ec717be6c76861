"""Splitting bios to the queue limits, merging bios into requests, and mapping a request to
its scatter-gather list (``block/blk-merge.c``).

* :func:`bio_split_rw_at` / :func:`__bio_split_to_limits` [6.x] (``blk_queue_split`` /
  ``blk_bio_segment_split`` [5.9]): the first piece of a bio that fits ``max_sectors`` (and
  the ``chunk_sectors`` boundary, aligned to the physical block), ``max_segments``,
  ``max_segment_size``, ``seg_boundary_mask`` and, with a ``virt_boundary_mask``, has no SG
  gap; the cut is rounded down to the logical block size. Segments are counted per
  multi-page bvec as the kernel does (``bio_add_page`` already merged physically contiguous
  pages into one bvec); a bvec longer than a segment counts once per segment.
* the merge checks of a plug or scheduler merge: ``blk_rq_merge_ok``, ``blk_try_merge``,
  ``ll_back_merge_fn`` / ``ll_front_merge_fn`` (size, segment count, SG gaps) and
  ``bio_attempt_back_merge`` / ``bio_attempt_front_merge``.
* :func:`blk_rq_map_sg`: the request's SG list (physically contiguous bvecs merge into one
  segment while within ``max_segment_size`` and one ``seg_boundary_mask`` window) — what a
  driver hands to the DMA engine, and what the model's devices hand to ``preadv``.

SIMPLIFIED: [5.9] counted split sizes in whole sectors (``sectors += bv_len >> 9``) and did not
round the cut to the logical block size; the model uses the 6.x byte count for every profile,
which gives the same cut for bvecs that are multiples of 512 bytes (all 5.9 Direct I/O).
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from typing import TYPE_CHECKING, Final

import numpy as np

from ..kernel.npfast import amax, amin, any_set
from ..kernel.trace import blk_fill_rwbs, trace_event
from ..kernel.types import PAGE_SHIFT, PAGE_SIZE
from .bio_completion import bio_chain, bio_endio, bio_split, errno_to_blk_status
from .blk_settings import QueueLimits
from .blk_types import BLK_STS, REQ_FLAG, REQ_OP, SECTOR_SHIFT, Bio
from .bvec import SMALL, bvec_iter_list, bvec_iter_phys, bvec_iter_rows

if TYPE_CHECKING:
    from .blk_mq import Request

__all__ = [
    "ELEVATOR",
    "REQ_NOMERGE_FLAGS",
    "__bio_split_to_limits",
    "bio_attempt_back_merge",
    "bio_attempt_front_merge",
    "bio_split_rw_at",
    "blk_attempt_bio_merge",
    "blk_rq_get_max_sectors",
    "blk_rq_map_sg",
    "blk_rq_map_sg_lists",
    "blk_rq_merge_ok",
    "blk_try_merge",
    "get_max_io_size",
]

REQ_NOMERGE_FLAGS: Final = int(REQ_FLAG.REQ_NOMERGE | REQ_FLAG.REQ_PREFLUSH | REQ_FLAG.REQ_FUA)
_SPLIT_OPS: Final = (int(REQ_OP.REQ_OP_READ), int(REQ_OP.REQ_OP_WRITE))
_REQ_ATOMIC: Final = int(REQ_FLAG.REQ_ATOMIC)
_REQ_NOWAIT: Final = int(REQ_FLAG.REQ_NOWAIT)
_REQ_NOMERGE: Final = int(REQ_FLAG.REQ_NOMERGE)
_OP_FLUSH: Final = int(REQ_OP.REQ_OP_FLUSH)
_OP_DISCARD: Final = int(REQ_OP.REQ_OP_DISCARD)
_OP_ZONE_APPEND: Final = int(REQ_OP.REQ_OP_ZONE_APPEND)


class ELEVATOR(enum.IntEnum):
    """``enum elv_merge``."""

    ELEVATOR_NO_MERGE = 0
    ELEVATOR_FRONT_MERGE = 1
    ELEVATOR_BACK_MERGE = 2


# --- sizes -----------------------------------------------------------------------------
def blk_boundary_sectors_left(offset: int, boundary: int) -> int:
    """``blk_boundary_sectors_left()``: sectors from ``offset`` to the next multiple of
    ``boundary`` (which need not be a power of two [6.x])."""
    return boundary - offset % boundary


def get_max_io_size(bio: Bio, lim: QueueLimits) -> int:
    """``get_max_io_size()``: the most sectors a piece starting at the bio's sector may have:
    ``max_sectors``, cut at the next ``chunk_sectors`` boundary, then shortened so the piece
    ends on a physical block boundary (or, if that leaves nothing, a logical one).

    Return: a sector count.
    """
    max_sectors = lim.max_sectors
    if lim.chunk_sectors:
        max_sectors = min(max_sectors,
                          blk_boundary_sectors_left(bio.bi_iter.bi_sector, lim.chunk_sectors))
    pbs = lim.physical_block_size >> SECTOR_SHIFT
    lbs = lim.logical_block_size >> SECTOR_SHIFT
    start = bio.bi_iter.bi_sector & (pbs - 1)
    end = (start + max_sectors) & ~(pbs - 1)
    if end > start:
        return end - start
    return max_sectors & ~(lbs - 1)


def get_max_segment_size(lim: QueueLimits, paddr: int, length: int) -> int:
    """``get_max_segment_size()``: how much of ``length`` bytes at physical ``paddr`` fits
    one segment (``max_segment_size``, not crossing ``seg_boundary_mask``)."""
    mask = lim.seg_boundary_mask
    return min(length, min(mask - (mask & paddr), lim.max_segment_size - 1) + 1)


def _gap_to_prev(lim: QueueLimits, prev_end: int, offset: int) -> bool:
    """``__bvec_gap_to_prev()``: an SG gap between a bvec ending at offset ``prev_end`` and
    one starting at ``offset``, for a queue with a virt boundary."""
    mask = lim.virt_boundary_mask
    return bool(offset & mask or prev_end & mask)


# --- splitting -----------------------------------------------------------------------------
def _bvec_split_segs(lim: QueueLimits, phys: int, off: int, bv_len: int, nsegs: int,
                     nbytes: int, max_segs: int, max_bytes: int) -> tuple[bool, int, int]:
    """``bvec_split_segs()``: count the segments of one bvec that fit.

    Return: (must split here, nsegs, bytes) after adding what fits.
    """
    max_len = max_bytes - nbytes
    length = min(bv_len, max_len)
    total = 0
    while length and nsegs < max_segs:
        seg = get_max_segment_size(lim, phys + total, length)
        nsegs += 1
        total += seg
        length -= seg
        if (off + total) & lim.virt_boundary_mask:
            break
    return (length > 0 or bv_len > max_len), nsegs, nbytes + total


def _split_slow(lim: QueueLimits, pages: np.ndarray, offs: np.ndarray, lens: np.ndarray,
                max_bytes: int, len_align_mask: int = 0) -> tuple[bool, int, int]:
    """The kernel's loop over the bvecs, for queues the fast path cannot decide."""
    return _split_loop(lim, zip(pages.tolist(), offs.tolist(), lens.tolist(), strict=True),
                       max_bytes, len_align_mask)


def _split_loop(lim: QueueLimits, bvecs: Iterable[tuple[int, int, int]],
                max_bytes: int, len_align_mask: int = 0) -> tuple[bool, int, int]:
    """``bio_split_io_at()``'s loop over ``(page, offset, len)`` bvecs: [6.18] each bvec is
    first checked against ``len_align_mask`` (the queue's dma_alignment), before it can
    cause a split.

    Return: (must split, segments, bytes) of the part that fits; nsegs -1 for a misaligned
    bvec (the caller fails the bio with -EINVAL).
    """
    nsegs = nbytes = 0
    max_segs = lim.max_segments
    prev_end = -1
    for page, off, bv_len in bvecs:
        if (off | bv_len) & len_align_mask:
            return True, -1, 0
        if prev_end >= 0 and lim.virt_boundary_mask and _gap_to_prev(lim, prev_end, off):
            return True, nsegs, nbytes
        if nsegs < max_segs and nbytes + bv_len <= max_bytes and off + bv_len <= PAGE_SIZE:
            nsegs += 1
            nbytes += bv_len
        else:
            phys = (page << PAGE_SHIFT) + off
            cut, nsegs, nbytes = _bvec_split_segs(lim, phys, off, bv_len, nsegs, nbytes,
                                                  max_segs, max_bytes)
            if cut:
                return True, nsegs, nbytes
        prev_end = off + bv_len
    return False, nsegs, nbytes


def _one_segment_each(lim: QueueLimits, pages: np.ndarray, offs: np.ndarray,
                      lens: np.ndarray) -> bool:
    """True when the loop would count every bvec as exactly one segment: no virt boundary,
    and each bvec either lies within one page (the loop's own shortcut) or fits one segment
    whole (``get_max_segment_size()``: not longer than ``max_segment_size``, not crossing
    ``seg_boundary_mask``). An empty bvec among multi-page ones declines: the loop counts it
    as a segment only when its offset lies within the first page."""
    if lim.virt_boundary_mask:
        return False
    if amax(offs + lens) <= PAGE_SIZE:
        return True
    if amax(lens) > lim.max_segment_size or amin(lens) == 0:
        # (an empty bvec past the first page adds no segment in the loop: decline)
        return False
    first = (pages << PAGE_SHIFT) + offs
    mask = lim.seg_boundary_mask
    return not any_set((first ^ (first + lens - 1)) & ~mask)


def _split_fast(lim: QueueLimits, offs: np.ndarray, lens: np.ndarray,
                max_bytes: int, len_align_mask: int = 0) -> tuple[bool, int, int]:
    """The loop's result in a few array operations when every bvec is exactly one segment
    (:func:`_one_segment_each`). A misaligned bvec at or before the split point gives
    nsegs -1."""
    n = len(lens)
    cs = np.cumsum(lens)
    max_segs = lim.max_segments
    bad = n
    if len_align_mask:
        mis = ((offs | lens) & len_align_mask).nonzero()[0]
        if len(mis):
            bad = int(mis[0])
    if n <= max_segs and int(cs[-1]) <= max_bytes:
        return (True, -1, 0) if bad < n else (False, n, int(cs[-1]))
    i_bytes = int(np.searchsorted(cs, max_bytes, "right"))  # first bvec past max_bytes
    if max_segs <= i_bytes:  # the segment count runs out first (bvec max_segs is examined)
        if bad <= max_segs:
            return True, -1, 0
        return True, max_segs, int(cs[max_segs - 1])
    if bad <= i_bytes:
        return True, -1, 0
    before = int(cs[i_bytes - 1]) if i_bytes else 0
    return True, i_bytes + (1 if max_bytes > before else 0), max_bytes


def bio_split_rw_at(bio: Bio, lim: QueueLimits, max_bytes: int) -> tuple[int, int]:
    """``bio_split_rw_at()``: where ``bio`` must be cut to fit the queue limits.

    Return: ``(sectors, nsegs)``: 0 sectors if the whole bio fits (``nsegs`` its segment
    count), else the size of the first piece in sectors (rounded down to the logical block
    size) and its segment count; -EAGAIN sectors for a REQ_NOWAIT bio that would need a
    split, -EINVAL for an atomic one.
    """
    mask = lim.dma_alignment if bio.pgdat.cfg.BIO_SPLIT_DMA_ALIGN_CHECK else 0
    small = bvec_iter_list(bio.bi_io_vec, bio.bi_iter)
    if small is not None:
        if not small:
            return 0, 0
        cut, nsegs, nbytes = _split_loop(lim, small, max_bytes, mask)
    else:
        pages, offs, lens = bvec_iter_rows(bio.bi_io_vec, bio.bi_iter)
        if _one_segment_each(lim, pages, offs, lens):
            cut, nsegs, nbytes = _split_fast(lim, offs, lens, max_bytes, mask)
        else:
            cut, nsegs, nbytes = _split_slow(lim, pages, offs, lens, max_bytes, mask)
    if nsegs < 0:
        return -22, 0  # -EINVAL: a bvec not aligned to dma_alignment
    if not cut:
        return 0, nsegs
    if bio.bi_opf & _REQ_ATOMIC:
        return -22, nsegs
    if bio.bi_opf & _REQ_NOWAIT:
        return -11, nsegs
    nbytes -= nbytes % lim.logical_block_size
    return nbytes >> SECTOR_SHIFT, nsegs


def bio_submit_split(bio: Bio, split_sectors: int) -> Bio | None:
    """``bio_submit_split()``: cut off ``split_sectors``, chain the front piece to ``bio``,
    resubmit the rest, and carry on with the front piece (marked REQ_NOMERGE: "there is no
    chance to merge the split bio").

    Return: the bio to continue with, or None when ``bio`` was ended with an error.
    """
    if split_sectors < 0:
        bio.bi_status = errno_to_blk_status(split_sectors)
        bio_endio(bio)
        return None
    if not split_sectors:
        return bio
    split = bio_split(bio, split_sectors)
    if split is None:
        bio.bi_status = BLK_STS.BLK_STS_IOERR
        bio_endio(bio)
        return None
    split.bi_opf |= _REQ_NOMERGE
    bio_chain(split, bio)
    hooks = bio.pgdat.hooks
    if hooks.tracepoints:
        from ..kernel.task import current

        trace_event(hooks, "block_split", {
            "dev": bio.bi_bdev.dev, "sector": split.bi_iter.bi_sector,
            "new_sector": bio.bi_iter.bi_sector, "rwbs": blk_fill_rwbs(split.bi_opf),
            "comm": current().comm,
        })
    from .blk_core import submit_bio_noacct  # blk-merge.c calls back into blk-core.c

    submit_bio_noacct(bio)
    return split


def bio_may_need_split(bio: Bio, lim: QueueLimits) -> bool:
    """``bio_may_need_split()`` [6.x]: False for a bio of one bvec that fits
    ``max_fast_segment_size`` = min(PAGE_SIZE, max_segment_size, seg_boundary + 1), which
    goes to the driver as one segment with no further checks."""
    if lim.chunk_sectors:
        return True
    it = bio.bi_iter
    if bio.bi_vcnt != 1 or it.bi_idx != 0:
        return True
    lo = int(bio.bi_io_vec[0, 1])
    fast = min(PAGE_SIZE, lim.max_segment_size, lim.seg_boundary_mask + 1)
    return (lo & 0xFFFFFFFF) + (lo >> 32) > fast


def __bio_split_to_limits(bio: Bio, lim: QueueLimits) -> tuple[Bio | None, int]:
    """``__bio_split_to_limits()`` [6.x] / ``__blk_queue_split()`` [5.9]: split ``bio`` so
    its first piece fits the queue; the rest is resubmitted.

    Reads and writes are split; other ops are not (SIMPLIFIED: discard and write-zeroes
    splitting is not modelled).
    Return: ``(bio to continue with or None, its segment count)``.
    """
    if bio.bi_opf & 0xFF not in _SPLIT_OPS:
        return bio, (1 if bio.bi_iter.bi_size else 0)
    if bio.pgdat.cfg.BIO_SPLIT_DMA_ALIGN_CHECK and not bio_may_need_split(bio, lim):
        return bio, 1
    sectors, nsegs = bio_split_rw_at(bio, lim, get_max_io_size(bio, lim) << SECTOR_SHIFT)
    if sectors == 0 and nsegs == 0:
        return bio, 0
    return bio_submit_split(bio, sectors), nsegs


# --- merging -------------------------------------------------------------------------------
def blk_rq_get_max_sectors(rq: Request, offset: int) -> int:
    """``blk_rq_get_max_sectors()``: the most sectors a request starting at ``offset`` may
    grow to (``max_sectors``, cut at the ``chunk_sectors`` boundary)."""
    lim = rq.q.limits
    if not lim.chunk_sectors or rq.cmd_flags & 0xFF == _OP_DISCARD:
        return lim.max_sectors
    return min(lim.max_sectors, blk_boundary_sectors_left(offset, lim.chunk_sectors))


def _rq_mergeable(rq: Request) -> bool:
    """``rq_mergeable()``: not a flush, not REQ_NOMERGE/PREFLUSH/FUA."""
    if rq.cmd_flags & 0xFF in (_OP_FLUSH, _OP_ZONE_APPEND):
        return False
    return not rq.cmd_flags & REQ_NOMERGE_FLAGS


def blk_rq_merge_ok(rq: Request, bio: Bio) -> bool:
    """``blk_rq_merge_ok()``: same op, both mergeable, same I/O priority."""
    if not _rq_mergeable(rq) or bio.bi_opf & REQ_NOMERGE_FLAGS:
        return False
    if rq.cmd_flags & 0xFF != bio.bi_opf & 0xFF:
        return False
    return rq.q is bio.bi_bdev


def blk_try_merge(rq: Request, bio: Bio) -> ELEVATOR:
    """``blk_try_merge()``: does ``bio`` continue the request (back) or precede it
    (front)?"""
    if rq.sector + (rq.data_len >> SECTOR_SHIFT) == bio.bi_iter.bi_sector:
        return ELEVATOR.ELEVATOR_BACK_MERGE
    if rq.sector - (bio.bi_iter.bi_size >> SECTOR_SHIFT) == bio.bi_iter.bi_sector:
        return ELEVATOR.ELEVATOR_FRONT_MERGE
    return ELEVATOR.ELEVATOR_NO_MERGE


def _first_bvec(bio: Bio) -> tuple[int, int]:
    """(bv_offset, bv_len) of the bio's first bvec from its iterator."""
    _p, offs, lens = bvec_iter_rows(bio.bi_io_vec, bio.bi_iter)
    return int(offs[0]), int(lens[0])


def bio_will_gap(lim: QueueLimits, prev_rq: Request | None, prev: Bio, nxt: Bio) -> bool:
    """``bio_will_gap()``: would appending ``nxt`` after ``prev`` leave an SG gap on a
    virt-boundary queue?"""
    mask = lim.virt_boundary_mask
    if not mask or not prev.bi_iter.bi_size:
        return False
    first = prev_rq.bio if prev_rq is not None else prev
    assert first is not None
    if _first_bvec(first)[0] & mask:
        return True
    _pp, poffs, plens = bvec_iter_rows(prev.bi_io_vec, prev.bi_iter)
    pphys, _l = bvec_iter_phys(prev.bi_io_vec, prev.bi_iter)
    nphys, nlens = bvec_iter_phys(nxt.bi_io_vec, nxt.bi_iter)
    last_end = int(pphys[-1]) + int(plens[-1])
    seg = lim.seg_boundary_mask
    if last_end == int(nphys[0]) and (int(pphys[-1]) | seg) == (
            int(nphys[0]) + int(nlens[0]) - 1 | seg):
        return False  # biovec_phys_mergeable
    noff = _first_bvec(nxt)[0]
    return _gap_to_prev(lim, int(poffs[-1]) + int(plens[-1]), noff)


def _req_set_nomerge(rq: Request) -> None:
    """``req_set_nomerge()``: a request that failed a merge on size or segments is not
    tried again."""
    rq.cmd_flags |= _REQ_NOMERGE


def _ll_new_hw_segment(rq: Request, nr_segs: int) -> bool:
    if rq.nr_phys_segments + nr_segs > rq.q.limits.max_segments:
        _req_set_nomerge(rq)
        return False
    rq.nr_phys_segments += nr_segs
    return True


def _ll_merge_fn(rq: Request, bio: Bio, nr_segs: int, back: bool) -> bool:
    """``ll_back_merge_fn()`` / ``ll_front_merge_fn()``."""
    lim = rq.q.limits
    if back:
        assert rq.biotail is not None
        if bio_will_gap(lim, rq, rq.biotail, bio):
            return False
        offset = rq.sector
    else:
        assert rq.bio is not None
        if bio_will_gap(lim, None, bio, rq.bio):
            return False
        offset = bio.bi_iter.bi_sector
    if (rq.data_len + bio.bi_iter.bi_size) >> SECTOR_SHIFT > blk_rq_get_max_sectors(rq,
                                                                                    offset):
        _req_set_nomerge(rq)
        return False
    return _ll_new_hw_segment(rq, nr_segs)


def _trace_merge(name: str, bio: Bio) -> None:
    hooks = bio.pgdat.hooks
    if hooks.tracepoints:
        from ..kernel.task import current

        trace_event(hooks, name, {
            "dev": bio.bi_bdev.dev, "sector": bio.bi_iter.bi_sector,
            "nr_sector": bio.bi_iter.bi_size >> SECTOR_SHIFT,
            "rwbs": blk_fill_rwbs(bio.bi_opf), "comm": current().comm,
        })


def bio_attempt_back_merge(rq: Request, bio: Bio, nr_segs: int) -> bool:
    """``bio_attempt_back_merge()``: append ``bio`` to the request if the limits allow.

    Return: True if merged (``block_bio_backmerge`` traced).
    """
    if not _ll_merge_fn(rq, bio, nr_segs, True):
        return False
    _trace_merge("block_bio_backmerge", bio)
    assert rq.biotail is not None
    rq.biotail.bi_next = bio
    rq.biotail = bio
    rq.data_len += bio.bi_iter.bi_size
    return True


def bio_attempt_front_merge(rq: Request, bio: Bio, nr_segs: int) -> bool:
    """``bio_attempt_front_merge()``: put ``bio`` in front of the request.

    Return: True if merged (``block_bio_frontmerge`` traced).
    """
    if not _ll_merge_fn(rq, bio, nr_segs, False):
        return False
    _trace_merge("block_bio_frontmerge", bio)
    bio.bi_next = rq.bio
    rq.bio = bio
    rq.sector = bio.bi_iter.bi_sector
    rq.data_len += bio.bi_iter.bi_size
    return True


def blk_attempt_bio_merge(rq: Request, bio: Bio, nr_segs: int) -> bool:
    """``blk_attempt_bio_merge()``: merge ``bio`` into ``rq`` at either end if it fits.

    Return: True if merged.
    """
    if not blk_rq_merge_ok(rq, bio):
        return False
    how = blk_try_merge(rq, bio)
    if how == ELEVATOR.ELEVATOR_BACK_MERGE:
        return bio_attempt_back_merge(rq, bio, nr_segs)
    if how == ELEVATOR.ELEVATOR_FRONT_MERGE:
        return bio_attempt_front_merge(rq, bio, nr_segs)
    return False


# --- scatter-gather ------------------------------------------------------------------------
def _split_segments(lim: QueueLimits, phys: np.ndarray, lens: np.ndarray) -> tuple[
        np.ndarray, np.ndarray]:
    """Cut bvecs that exceed ``max_segment_size`` or cross a ``seg_boundary_mask`` window
    (``blk_bvec_map_sg``)."""
    mask = lim.seg_boundary_mask
    last = phys + lens - 1
    bad = ((phys | mask) != (last | mask)) | (lens > lim.max_segment_size)
    if not any_set(bad):
        return phys, lens
    out_p: list[int] = []
    out_l: list[int] = []
    for p, n in zip(phys.tolist(), lens.tolist()):
        while n:
            seg = get_max_segment_size(lim, p, n)
            out_p.append(p)
            out_l.append(seg)
            p += seg
            n -= seg
    return np.array(out_p, np.int64), np.array(out_l, np.int64)


def _map_sg_small(rq: Request, lim: QueueLimits, limit: int | None) -> tuple[
        list[int], list[int]] | None:
    """:func:`blk_rq_map_sg` in plain Python for a request of few bvecs.

    Return: (physical addresses, lengths) as lists, or None when there are too many bvecs.
    """
    vecs: list[tuple[int, int, int]] = []
    bio = rq.bio
    while bio is not None:
        part = bvec_iter_list(bio.bi_io_vec, bio.bi_iter)
        if part is None:
            return None
        vecs += part
        if len(vecs) > 2 * SMALL:
            return None
        bio = bio.bi_next
    mask, max_seg = lim.seg_boundary_mask, lim.max_segment_size
    left = limit if limit is not None else -1
    out_p: list[int] = []
    out_l: list[int] = []
    end = -1
    for page, off, n in vecs:
        if left >= 0:
            if not left:
                break
            n = min(n, left)
            left -= n
        p = (page << PAGE_SHIFT) + off
        while n:
            if n <= max_seg and (p | mask) == ((p + n - 1) | mask):
                seg = n  # fits one segment: get_max_segment_size() would say so
            else:
                seg = get_max_segment_size(lim, p, n)
            # biovec_phys_mergeable + the segment size limit of __blk_segment_map_sg_merge
            if p == end and out_l[-1] + seg <= max_seg and (
                    (out_p[-1] | mask) == ((p + seg - 1) | mask)):
                out_l[-1] += seg
            else:
                out_p.append(p)
                out_l.append(seg)
            p += seg
            n -= seg
            end = p
    return out_p, out_l


def blk_rq_map_sg_lists(rq: Request, limit: int | None = None) -> tuple[list[int], list[int]]:
    """:func:`blk_rq_map_sg` as two Python lists (what a driver loops over anyway)."""
    small = _map_sg_small(rq, rq.q.limits, limit)
    if small is not None:
        return small
    phys, lens = _map_sg_np(rq, rq.q.limits, limit)
    return phys.tolist(), lens.tolist()


def blk_rq_map_sg(rq: Request, limit: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``blk_rq_map_sg()``: the request's scatter-gather list, as physical addresses and
    lengths.

    Every bio of the request contributes the bvecs of its iterator; a bvec is cut at
    ``max_segment_size`` and ``seg_boundary_mask``; consecutive pieces merge when physically
    contiguous, within one boundary window and within ``max_segment_size``. With ``limit``,
    only the first ``limit`` bytes are mapped (a short transfer).
    Return: ``(phys, len)`` int64 arrays.
    """
    lim = rq.q.limits
    small = _map_sg_small(rq, lim, limit)
    if small is not None:
        return np.array(small[0], np.int64), np.array(small[1], np.int64)
    return _map_sg_np(rq, lim, limit)


def _map_sg_np(rq: Request, lim: QueueLimits, limit: int | None) -> tuple[np.ndarray,
                                                                          np.ndarray]:
    """:func:`blk_rq_map_sg` with array operations, for requests of many bvecs."""
    parts_p: list[np.ndarray] = []
    parts_l: list[np.ndarray] = []
    bio = rq.bio
    while bio is not None:
        if bio.bi_iter.bi_size:
            p, n = bvec_iter_phys(bio.bi_io_vec, bio.bi_iter)
            parts_p.append(p)
            parts_l.append(n)
        bio = bio.bi_next
    if not parts_p:
        e = np.empty(0, np.int64)
        return e, e
    phys = parts_p[0] if len(parts_p) == 1 else np.concatenate(parts_p)
    lens = parts_l[0] if len(parts_l) == 1 else np.concatenate(parts_l)
    if limit is not None:
        cs = np.cumsum(lens)
        k = int(np.searchsorted(cs, limit, "left")) + 1
        phys, lens = phys[:k], lens[:k].copy()
        if k:
            lens[k - 1] -= int(cs[k - 1]) - limit
            if lens[k - 1] == 0:
                phys, lens = phys[: k - 1], lens[: k - 1]
    phys, lens = _split_segments(lim, phys, lens)
    if len(phys) < 2:
        return phys, lens
    mask = lim.seg_boundary_mask
    joins = (phys[1:] == phys[:-1] + lens[:-1]) & (
        (phys[:-1] | mask) == ((phys[1:] + lens[1:] - 1) | mask))
    if not any_set(joins):
        return phys, lens
    starts = np.flatnonzero(np.concatenate(([True], ~joins)))
    glen = np.add.reduceat(lens, starts)
    if amax(glen) <= lim.max_segment_size:
        return phys[starts], glen
    # Some merged run is too long for one segment: merge greedily, as the kernel walks.
    out_p: list[int] = []
    out_l: list[int] = []
    for p, n, j in zip(phys.tolist(), lens.tolist(), [False, *joins.tolist()]):
        if j and out_l[-1] + n <= lim.max_segment_size:
            out_l[-1] += n
        else:
            out_p.append(p)
            out_l.append(n)
    return np.array(out_p, np.int64), np.array(out_l, np.int64)

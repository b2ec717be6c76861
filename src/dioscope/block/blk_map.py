"""Mapping user memory into passthrough requests (``block/blk-map.c``): SG_IO and friends.

``blk_rq_map_user_iov`` either maps the user pages into the request's bios
(``bio_map_user_iov``: FOLL_GET [5.9], FOLL_PIN [5.9-pin: ``iov_iter_pin_pages_alloc``;
6.18: ``bio_iov_iter_get_pages`` with no alignment mask]) or, when the memory is not aligned
to the queue's DMA alignment (or leaves SG gaps on a virt-boundary queue), copies the data
through kernel bounce pages (``bio_copy_user_iov``) and pins nothing (spec §4.9, §11 items
36-37). ``blk_rq_unmap_user`` releases the pages (dirtying them after a READ) or copies the
bounce pages back to the user buffer.

A page that two adjacent iovecs share is merged into one bvec and keeps one reference: the
duplicate is dropped when the merge succeeds. That is the fix of Linux commit 5905afc2c7bb
("block: fix pin count management when merging same-page segments") (v6.6), which the model
applies in every profile.

The model's passthrough command set: REQ_OP_DRV_IN reads and REQ_OP_DRV_OUT writes the
device at the request's sector, as a READ(16)/WRITE(16) CDB would.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from ..kernel.types import PAGE_SHIFT, PAGE_SIZE
from ..lib.iov_iter import (
    ITER_DEST,
    IovIter,
    copy_from_iter,
    copy_to_iter,
    iov_iter_advance,
    iov_iter_alignment,
    iov_iter_count,
    iov_iter_gap_alignment,
    iov_iter_npages,
)
from ..lib.iov_iter_pages import iov_iter_get_pages_alloc, iov_iter_pin_pages_alloc
from ..mm.gup_core import FOLL, gup_put_pages
from ..mm.page_alloc import alloc_pages
from ..mm.page_ref import drop_refs
from .bio import __bio_try_merge_page, bio_full, bio_iov_iter_get_pages, bio_release_pages
from .bio_completion import blk_status_to_errno
from .blk_mq import Request
from .blk_types import BIO_MAX_VECS, REQ_OP, SECTOR_SHIFT, Bio

if TYPE_CHECKING:
    from .devices import BlockDevice

__all__ = [
    "bio_add_hw_page",
    "blk_execute_rq",
    "blk_rq_map_user_iov",
    "blk_rq_unmap_user",
]


@dataclass
class MapResult:
    """A mapped passthrough request: its bios, and how each was made."""

    q: Any
    opf: int
    sector: int
    bios: list[Bio] = field(default_factory=list)
    copied: dict[int, tuple[IovIter, np.ndarray, int]] = field(default_factory=dict)
    """bio.seq → (the user iterator at mapping time, the bounce pages, bytes) for copied
    bios."""
    status: int = 0


def bio_add_hw_page(q: BlockDevice, bio: Bio, page: int, length: int, offset: int,
                    max_sectors: int) -> tuple[int, bool]:
    """``bio_add_hw_page()``: add a page range to a passthrough bio within the hardware
    limits: total size (``max_sectors``), segment merging only inside the segment boundary and
    ``max_segment_size``, no SG gap on a virt-boundary queue, at most ``max_segments``.

    Return: (bytes added or 0, same_page).
    """
    lim = q.limits
    if ((bio.bi_iter.bi_size + length) >> SECTOR_SHIFT) > max_sectors:
        return 0, False
    if bio.bi_vcnt > 0:
        k = bio.bi_vcnt - 1
        bv_page, lo = int(bio.bi_io_vec[k, 0]), int(bio.bi_io_vec[k, 1])
        bv_len, bv_off = lo >> 32, lo & 0xFFFFFFFF
        mask = lim.seg_boundary_mask
        addr1 = (bv_page << PAGE_SHIFT) + bv_off
        addr2 = (page << PAGE_SHIFT) + offset + length - 1
        if (addr1 | mask) == (addr2 | mask) and bv_len + length <= lim.max_segment_size:
            merged, same = __bio_try_merge_page(bio, page, length, offset)
            if merged:
                return length, same
        vb = lim.virt_boundary_mask
        if vb and (offset & vb or (bv_off + bv_len) & vb):
            return 0, False
    if bio_full(bio, length) or bio.bi_vcnt >= lim.max_segments:
        return 0, False
    bio.set_bvec(bio.bi_vcnt, page, length, offset)
    bio.bi_vcnt += 1
    bio.bi_iter.bi_size += length
    return length, False


def _release(bio: Bio, pages: np.ndarray, pin: bool) -> None:
    if len(pages):
        gup_put_pages(bio.pgdat, pages, int(FOLL.FOLL_PIN if pin else FOLL.FOLL_GET),
                      bio.holder, "bio_map_user_iov")


def _map_user_59(q: BlockDevice, opf: int, it: IovIter) -> tuple[int, Bio | None]:
    """[5.9] / [5.9-pin] ``bio_map_user_iov()``."""
    pgdat = q.pgdat
    pin = pgdat.cfg.DIO_FOLL_PIN
    if not iov_iter_count(it):
        return -errno.EINVAL, None
    bio = Bio(q, min(iov_iter_npages(it, BIO_MAX_VECS), BIO_MAX_VECS), opf)
    max_sectors = q.limits.max_hw_sectors
    while iov_iter_count(it):
        acquire = iov_iter_pin_pages_alloc if pin else iov_iter_get_pages_alloc
        nbytes, pages, offs = acquire(it, 1 << 62, holder=bio.holder)
        if nbytes <= 0 or pages is None:
            bio_release_pages(bio, False)
            return (nbytes if nbytes else -errno.EFAULT), None
        npages = (offs + nbytes + PAGE_SIZE - 1) // PAGE_SIZE
        added = 0
        j = 0
        if offs & q.limits.dma_alignment:
            _release(bio, pages[:npages], pin)
            bio_release_pages(bio, False)
            return -errno.EINVAL, None
        while j < npages:
            page = int(pages[j])
            n = min(PAGE_SIZE - offs, nbytes)
            got, same = bio_add_hw_page(q, bio, page, n, offs, max_sectors)
            if not got:
                break
            if same:
                _release(bio, pages[j : j + 1], pin)  # 5905afc2c7bb
            added += n
            nbytes -= n
            offs = 0
            j += 1
        iov_iter_advance(it, added)
        _release(bio, pages[j:npages], pin)
        if nbytes:
            break
    return 0, bio


def _map_user_618(q: BlockDevice, opf: int, it: IovIter) -> tuple[int, Bio | None]:
    """[6.18] ``bio_map_user_iov()``: ``bio_iov_iter_get_pages(bio, iter, 0)`` then
    ``blk_rq_append_bio``'s check that the bio needs no split (else -EREMOTEIO)."""
    from .blk_merge import bio_split_rw_at

    if not iov_iter_count(it):
        return -errno.EINVAL, None
    bio = Bio(q, min(iov_iter_npages(it, BIO_MAX_VECS), BIO_MAX_VECS), opf)
    ret = bio_iov_iter_get_pages(bio, it, 0)
    if ret:
        return ret, None
    sectors, _nsegs = bio_split_rw_at(bio, q.limits, q.limits.max_hw_sectors << SECTOR_SHIFT)
    if sectors:
        bio_release_pages(bio, False)
        return (-errno.EREMOTEIO if sectors > 0 else sectors), None
    return 0, bio


def _copy_user(q: BlockDevice, opf: int, it: IovIter, res: MapResult) -> tuple[int, Bio | None]:
    """``bio_copy_user_iov()``: bounce pages from the allocator; a WRITE copies the user
    data in now, a READ copies it out at unmap. No user page is referenced."""
    pgdat = q.pgdat
    length = iov_iter_count(it)
    nr = (length + PAGE_SIZE - 1) // PAGE_SIZE
    if nr > BIO_MAX_VECS:
        nr = BIO_MAX_VECS
        length = nr * PAGE_SIZE
    bio = Bio(q, nr, opf)
    pages = np.empty(nr, np.int64)
    for k in range(nr):
        page = alloc_pages(pgdat, 0, zero=True)
        if page < 0:
            drop_refs(pgdat, pages[:k], "bio_copy_user_iov")
            return -errno.ENOMEM, None
        pages[k] = page
        n = min(PAGE_SIZE, length - k * PAGE_SIZE)
        bio.set_bvec(k, page, n, 0)
    bio.bi_vcnt = nr
    bio.bi_iter.bi_size = length
    saved = it.copy()
    if opf & 0xFF != REQ_OP.REQ_OP_DRV_IN:
        got, data = copy_from_iter(length, it)
        if got != length:
            drop_refs(pgdat, pages, "bio_copy_user_iov")
            return -errno.EFAULT, None
        mem = pgdat.mem.frames
        buf = np.frombuffer(data, np.uint8)
        for k in range(nr):
            chunk = buf[k * PAGE_SIZE : (k + 1) * PAGE_SIZE]
            mem[int(pages[k]), : len(chunk)] = chunk
    else:
        iov_iter_advance(it, length)
    res.copied[bio.seq] = (saved, pages, length)
    return 0, bio


def blk_rq_map_user_iov(q: BlockDevice, opf: int, sector: int, it: IovIter,
                        map_data: bool = False) -> tuple[int, MapResult | None]:
    """``blk_rq_map_user_iov()``: map (or bounce) a user iterator into a passthrough request.

    Copy instead of map when asked (``map_data``), when any segment start or length is not
    aligned to ``dma_alignment | dma_pad_mask``, or when a virt-boundary queue would see an SG
    gap. Only user-backed iterators are accepted ([5.9]: ITER_IOVEC, else -EINVAL).
    Return: (0 or -errno, the mapped request); on error everything taken is released.
    """
    cfg = q.pgdat.cfg
    if not it.user_backed_iter():
        return -errno.EINVAL, None
    lim = q.limits
    copy = map_data
    if not copy and iov_iter_alignment(it) & lim.dma_alignment:
        copy = True
    if not copy and lim.virt_boundary_mask:
        copy = bool(lim.virt_boundary_mask & iov_iter_gap_alignment(it))
    res = MapResult(q, opf, sector)
    while iov_iter_count(it):
        if copy:
            ret, bio = _copy_user(q, opf, it, res)
        elif cfg.IOV_ITER_EXTRACT:
            ret, bio = _map_user_618(q, opf, it)
        else:
            ret, bio = _map_user_59(q, opf, it)
        if ret or bio is None:
            blk_rq_unmap_user(res, copy_back=False)
            return ret or -errno.EINVAL, None
        res.bios.append(bio)
    return 0, res


def blk_execute_rq(res: MapResult) -> int:
    """``blk_execute_rq()``: issue the request and wait. Return: 0 or -errno."""
    from .blk_mq import _dispatch

    if not res.bios:
        return 0
    q = res.q
    sector = res.sector
    for bio in res.bios:
        bio.bi_iter.bi_sector = sector
        sector += bio.bi_iter.bi_size >> SECTOR_SHIFT
    first = res.bios[0]
    for a, b in zip(res.bios, res.bios[1:], strict=False):
        a.bi_next = b
    statuses: list[int] = []
    for bio in res.bios:
        bio.bi_end_io = lambda b: statuses.append(int(b.bi_status))
    rq = Request(q, first, sum(b.bi_vcnt for b in res.bios), 0)
    rq.cmd_flags = res.opf
    rq.biotail = res.bios[-1]
    rq.data_len = sum(b.bi_iter.bi_size for b in res.bios)
    _dispatch([rq])
    q.cq.run()
    bad = [s for s in statuses if s]
    res.status = bad[0] if bad else 0
    for bio in res.bios:
        bio.bi_next = None
    return blk_status_to_errno(res.status)


def blk_rq_unmap_user(res: MapResult, copy_back: bool = True) -> int:
    """``blk_rq_unmap_user()``: for mapped bios, ``bio_release_pages(bio, READ)`` (pages a
    device wrote are dirtied); for copied bios, copy a READ's bounce pages back to the user
    buffer (``bio_uncopy_user``), then free them. Return: 0 or -EFAULT (copy back failed)."""
    ret = 0
    for bio in res.bios:
        read = bio.bi_opf & 0xFF == REQ_OP.REQ_OP_DRV_IN
        copied = res.copied.pop(bio.seq, None)
        if copied is None:
            bio_release_pages(bio, read)
            continue
        saved, pages, n = copied
        if read and copy_back and not res.status:
            mem = bio.pgdat.mem.frames
            data = mem[pages].reshape(-1)[:n]
            if saved.data_source == ITER_DEST and copy_to_iter(data, saved) != n:
                ret = -errno.EFAULT
        drop_refs(bio.pgdat, pages, "bio_uncopy_user")
    res.bios = []
    return ret

"""Completing, chaining, splitting and advancing bios.

These functions live in ``block/bio.c`` in the kernel (``bio_endio``, ``bio_chain``,
``bio_split``, ``bio_advance``, ``bio_put``, ``__bio_clone``) and ``block/blk-core.c``
(``blk_status_to_errno``); the model keeps them apart from the page-acquisition half of
``bio.c`` (``dioscope.block.bio``).

Splitting never changes pins or references (spec §4.5): a clone made by :func:`bio_split`
shares the parent's ``bi_io_vec`` with its own ``bi_iter``, has ``bi_vcnt`` 0 and no
BIO_PAGE_PINNED / page flags, so ``bio_release_pages`` on a clone finds nothing to release;
the pages are released once, on the original bio, by whoever owns it.
"""

from __future__ import annotations

import errno
from collections.abc import Callable
from typing import Any, Final

from ..kernel.trace import blk_fill_rwbs, trace_event
from .blk_types import BIO_FLAG, BLK_STS, REQ_FLAG, REQ_OP, SECTOR_SHIFT, Bio
from .bvec import bvec_iter_advance

__all__ = [
    "bio_advance",
    "bio_advance_iter",
    "bio_alloc_clone",
    "bio_chain",
    "bio_chain_endio",
    "bio_endio",
    "bio_inc_remaining",
    "bio_io_error",
    "bio_put",
    "bio_sectors",
    "bio_split",
    "blk_status_to_errno",
    "errno_to_blk_status",
]

_BLK_ERRORS: dict[int, int] = {
    BLK_STS.BLK_STS_OK: 0,
    BLK_STS.BLK_STS_NOTSUPP: -errno.EOPNOTSUPP,
    BLK_STS.BLK_STS_TIMEOUT: -errno.ETIMEDOUT,
    BLK_STS.BLK_STS_NOSPC: -errno.ENOSPC,
    BLK_STS.BLK_STS_TRANSPORT: -errno.ENOLINK,
    BLK_STS.BLK_STS_TARGET: -errno.EREMOTEIO,
    BLK_STS.BLK_STS_MEDIUM: -errno.ENODATA,
    BLK_STS.BLK_STS_PROTECTION: -errno.EILSEQ,
    BLK_STS.BLK_STS_RESOURCE: -errno.ENOMEM,
    BLK_STS.BLK_STS_IOERR: -errno.EIO,
    BLK_STS.BLK_STS_AGAIN: -errno.EAGAIN,
    BLK_STS.BLK_STS_INVAL: -errno.EINVAL,
}
_ERRNO_TO_STS: Final = {v: k for k, v in _BLK_ERRORS.items()}
_CHAIN: Final = int(BIO_FLAG.BIO_CHAIN)
_TRACE_COMPLETION: Final = int(BIO_FLAG.BIO_TRACE_COMPLETION)


def blk_status_to_errno(status: int) -> int:
    """``blk_status_to_errno()`` (``blk_errors[]`` in ``block/blk-core.c``).

    Return: 0 or a negative errno; an unknown status gives -EIO (the kernel WARNs).
    """
    return _BLK_ERRORS.get(int(status), -errno.EIO)


def errno_to_blk_status(err: int) -> int:
    """``errno_to_blk_status()``. Return: the status of ``err`` (negative), else IOERR."""
    return _ERRNO_TO_STS.get(int(err), BLK_STS.BLK_STS_IOERR)


def bio_sectors(bio: Bio) -> int:
    """``bio_sectors()``: what is left of the bio, in 512-byte sectors."""
    return bio.bi_iter.bi_size >> SECTOR_SHIFT


# --- advancing ----------------------------------------------------------------------------
_REQ_OP_SECURE_ERASE: Final = 5
_REQ_OP_WRITE_ZEROES: Final = 9
_NO_ADVANCE_OPS: Final = frozenset(
    (REQ_OP.REQ_OP_DISCARD, _REQ_OP_SECURE_ERASE, _REQ_OP_WRITE_ZEROES))


def _no_advance_iter(bio: Bio) -> bool:
    """``bio_no_advance_iter()``: discard, secure erase and write zeroes carry no data."""
    return bio.bi_opf & 0xFF in _NO_ADVANCE_OPS


def bio_advance_iter(bio: Bio, it: Any, nbytes: int) -> None:
    """``bio_advance_iter()``: move ``it`` (a ``BvecIter`` over ``bio``'s bvecs) ``nbytes``
    bytes on: the sector by ``nbytes >> 9``, the bvec position over the (page, len|off)
    rows."""
    it.bi_sector += nbytes >> SECTOR_SHIFT
    if _no_advance_iter(bio):
        it.bi_size -= nbytes
    elif not bvec_iter_advance(bio.bi_io_vec, it, nbytes):
        bio.pgdat.events.warn_once("bvec_iter_advance",
                                   "Attempted to advance past end of bvec iter")


def bio_advance(bio: Bio, nbytes: int) -> None:
    """``bio_advance()``: consume ``nbytes`` of the bio's own iterator (after a partial
    completion or a split)."""
    if nbytes:
        bio_advance_iter(bio, bio.bi_iter, nbytes)


# --- cloning and splitting ---------------------------------------------------------------
def bio_alloc_clone(bdev: Any, src: Bio) -> Bio:
    """``bio_alloc_clone()`` + ``__bio_clone()``: a bio sharing ``src``'s bvec array.

    The clone gets BIO_CLONED (and the model-only BIO_SPLIT), ``src``'s op, flags and
    iterator, ``bi_vcnt`` 0 and ``bi_max_vecs`` 0: it owns no bvec and no page.
    """
    clone = Bio(bdev, 0, src.bi_opf, src.pgdat)
    clone.bi_io_vec = src.bi_io_vec
    clone.bi_iter = src.bi_iter.copy()
    clone.bi_flags = int(BIO_FLAG.BIO_CLONED)
    return clone


def bio_split(bio: Bio, sectors: int) -> Bio | None:
    """``bio_split()``: split off the first ``sectors`` of ``bio`` as a new clone; ``bio``
    is advanced past them and keeps the rest.

    Context: ``__bio_split_to_limits`` chains the clone to ``bio`` right after.
    Return: the clone, or None (WARN) for ``sectors`` <= 0 or >= the bio's size, a zone
    append or an atomic write (the kernel's ``ERR_PTR(-EINVAL)`` [6.x] / BUG [5.9]).
    """
    if sectors <= 0 or sectors >= bio_sectors(bio):
        bio.pgdat.events.warn_once("bio_split", f"split of {sectors} sectors out of "
                                   f"{bio_sectors(bio)}")
        return None
    if bio.bio_op() == REQ_OP.REQ_OP_ZONE_APPEND:
        bio.pgdat.events.warn_once("bio_split", "zone append bios cannot be split")
        return None
    if bio.bi_opf & REQ_FLAG.REQ_ATOMIC:
        return None
    split = bio_alloc_clone(bio.bi_bdev, bio)
    split.bio_set_flag(BIO_FLAG.BIO_SPLIT)
    split.bi_iter.bi_size = sectors << SECTOR_SHIFT
    bio_advance(bio, split.bi_iter.bi_size)
    if bio.bio_flagged(BIO_FLAG.BIO_TRACE_COMPLETION):
        split.bio_set_flag(BIO_FLAG.BIO_TRACE_COMPLETION)
    return split


# --- chaining and completion ---------------------------------------------------------------
def bio_inc_remaining(bio: Bio) -> None:
    """``bio_inc_remaining()``: one more completion before ``bio`` really completes."""
    bio.bio_set_flag(BIO_FLAG.BIO_CHAIN)
    bio.bi_remaining += 1


def bio_chain_endio(bio: Bio) -> None:
    """``bio_chain_endio()``: the ``bi_end_io`` of a chained child (see :func:`bio_endio`)."""
    bio_endio(_bio_chain_endio(bio))


def _bio_chain_endio(bio: Bio) -> Bio:
    """``__bio_chain_endio()``: hand the child's error to the parent (first error wins) and
    drop the child. Return: the parent."""
    parent: Bio = bio.bi_private
    if bio.bi_status and not parent.bi_status:
        parent.bi_status = bio.bi_status
    bio_put(bio)
    return parent


def bio_chain(bio: Bio, parent: Bio) -> None:
    """``bio_chain()``: ``parent`` completes only after ``bio`` has completed too.

    BUG if ``bio`` already has an end_io or private (the kernel's BUG_ON).
    """
    if bio.bi_private is not None or bio.bi_end_io is not None:
        bio.pgdat.events.bug("bio_chain", f"chaining {bio!r} that has an end_io")
    bio.bi_private = parent
    bio.bi_parent = parent
    bio.bi_end_io = bio_chain_endio
    bio_inc_remaining(parent)


def _bio_remaining_done(bio: Bio) -> bool:
    """``bio_remaining_done()``: count one completion of a chained parent."""
    if not bio.bi_flags & _CHAIN:
        return True
    if bio.bi_remaining <= 0:
        bio.pgdat.events.bug("bio_endio", f"bi_remaining {bio.bi_remaining} of {bio!r}")
        return False
    bio.bi_remaining -= 1
    if bio.bi_remaining == 0:
        bio.bio_clear_flag(BIO_FLAG.BIO_CHAIN)
        return True
    return False


def bio_endio(bio: Bio) -> None:
    """``bio_endio()``: end I/O on a bio.

    A chained parent completes only when its last outstanding child (and itself) have; a
    child's completion passes its error up and puts the child, iteratively (the kernel
    avoids recursion the same way). ``block_bio_complete`` is traced only for a bio whose
    queueing was traced and whose completion was not traced as part of a request
    (BIO_TRACE_COMPLETION), i.e. bios ended outside blk-mq.
    Context: completion context (interrupt/softirq in the kernel); never sleeps.
    """
    while True:
        if not _bio_remaining_done(bio):
            return
        if bio.bi_flags & _TRACE_COMPLETION and bio.bi_bdev is not None:
            hooks = bio.pgdat.hooks
            if hooks.tracepoints:
                trace_event(hooks, "block_bio_complete", {
                    "dev": bio.bi_bdev.dev, "sector": bio.bi_iter.bi_sector,
                    "nr_sector": bio_sectors(bio),
                    "error": blk_status_to_errno(bio.bi_status),
                    "rwbs": blk_fill_rwbs(bio.bi_opf),
                })
            bio.bi_flags &= ~_TRACE_COMPLETION
        end_io: Callable[[Bio], None] | None = bio.bi_end_io
        if end_io is bio_chain_endio:
            bio = _bio_chain_endio(bio)
            continue
        if end_io is not None:
            end_io(bio)
        return


def bio_io_error(bio: Bio) -> None:
    """``bio_io_error()``: end ``bio`` with BLK_STS_IOERR."""
    bio.bi_status = BLK_STS.BLK_STS_IOERR
    bio_endio(bio)


def bio_put(bio: Bio) -> None:
    """``bio_put()``: drop a reference; the last one frees the bio.

    A put on a bio whose count is already 0 is a double free (BUG event).
    SIMPLIFIED: freeing returns nothing to a pool; the model's bio is garbage collected.
    """
    if bio.bi_cnt <= 0:
        bio.pgdat.events.bug("bio_put", f"put of a freed bio {bio!r}")
        return
    bio.bio_put_ref()

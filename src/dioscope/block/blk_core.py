"""Submitting bios and plugging (``block/blk-core.c``).

``submit_bio(bio)`` → ``submit_bio_noacct``: end-of-device check, then
``submit_bio_noacct_nocheck``: ``block_bio_queue`` (once per bio: BIO_TRACE_COMPLETION marks
it traced, so a split remainder that comes back is not traced again), then
``blk_mq_submit_bio``. While a task is inside ``submit_bio``, a bio it submits (the remainder
of a split) is queued on ``current->bio_list`` and handled after the current one returns,
so splitting never recurses.

What :func:`submit_bio` expects of a bio: ``bi_bdev`` a
:class:`~dioscope.block.devices.BlockDevice`; ``bi_opf`` an op with flags; ``bi_iter`` with
``bi_sector``, ``bi_size`` (a multiple of the logical block size) and ``bi_idx`` /
``bi_bvec_done`` 0; ``bi_io_vec`` rows ``[:bi_vcnt]`` covering ``bi_size`` bytes;
``bi_end_io`` (and ``bi_private``) set. ``bi_end_io`` is called exactly once, in the
completion context, with ``bi_status`` set; by then ``bi_iter`` has been advanced to the end
(record the size before submitting; walk pages with ``bi_vcnt``, as ``bio_release_pages``
does). Pages are never released by the block layer.

A plug (:func:`blk_start_plug` / :func:`blk_finish_plug`, as iomap's ``__iomap_dio_rw`` and
``blkdev_direct_IO`` hold one around their bios) lets consecutive bios merge into one request.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from ..kernel.task import current
from ..kernel.trace import blk_fill_rwbs, trace_event
from .bio_completion import bio_endio
from .blk_mq import BlkPlug, blk_mq_flush_plug_list, blk_mq_submit_bio
from .blk_types import BIO_FLAG, BLK_STS, SECTOR_SHIFT, Bio

if TYPE_CHECKING:
    from .devices import BlockDevice

_TRACE_COMPLETION: Final = int(BIO_FLAG.BIO_TRACE_COMPLETION)

__all__ = [
    "blk_finish_plug",
    "blk_start_plug",
    "submit_bio",
    "submit_bio_noacct",
    "submit_bio_wait",
]


def submit_bio_noacct(bio: Bio) -> None:
    """``submit_bio_noacct()``: check the bio against its device and queue it.

    A bio past the end of the device ends with BLK_STS_IOERR ("attempt to access beyond end
    of device"), untraced.
    """
    bdev = bio.bi_bdev
    if bdev is None:
        bio.pgdat.events.bug("submit_bio_noacct", f"{bio!r} has no block device")
        return
    nr = bio.bi_iter.bi_size >> SECTOR_SHIFT
    if nr and (nr > bdev.nr_sectors or bio.bi_iter.bi_sector > bdev.nr_sectors - nr):
        # bio_check_eod()
        bio.bi_status = BLK_STS.BLK_STS_IOERR
        bio_endio(bio)
        return
    submit_bio_noacct_nocheck(bio)


def submit_bio_noacct_nocheck(bio: Bio) -> None:
    """``submit_bio_noacct_nocheck()``: trace ``block_bio_queue`` (once), then submit — or,
    from inside a submission, queue on ``current->bio_list``."""
    if not bio.bi_flags & _TRACE_COMPLETION:
        hooks = bio.pgdat.hooks
        if hooks.tracepoints:
            trace_event(hooks, "block_bio_queue", {
                "dev": bio.bi_bdev.dev, "sector": bio.bi_iter.bi_sector,
                "nr_sector": bio.bi_iter.bi_size >> SECTOR_SHIFT,
                "rwbs": blk_fill_rwbs(bio.bi_opf), "comm": current().comm,
            })
        bio.bi_flags |= _TRACE_COMPLETION
    task = current()
    if task.bio_list is not None:
        task.bio_list.append(bio)
        return
    _submit_bio_noacct_mq(bio)


def _submit_bio_noacct_mq(bio: Bio) -> None:
    """``__submit_bio_noacct_mq()``: submit, then whatever was queued meanwhile, in order."""
    task = current()
    pending: list[Bio] = []
    task.bio_list = pending
    try:
        blk_mq_submit_bio(bio)
        while pending:
            blk_mq_submit_bio(pending.pop(0))
    finally:
        task.bio_list = None


def submit_bio(bio: Bio) -> None:
    """``submit_bio()``: submit a bio to the block layer for I/O.

    Context: process context. With the device's completion queue synchronous (the
    default), every request this issued has completed — ``bi_end_io`` has run — when this
    returns, unless the task's plug still holds it.
    """
    submit_bio_noacct(bio)
    bdev: BlockDevice | None = bio.bi_bdev
    if bdev is not None and current().bio_list is None:
        bdev.cq.maybe_run()


def submit_bio_wait(bio: Bio) -> int:
    """``submit_bio_wait()``: submit and wait for completion.

    SIMPLIFIED: waits by running the device's completion queue to empty.
    Return: 0 or the negative errno of ``bi_status``.
    """
    from .bio_completion import blk_status_to_errno

    done: list[int] = []

    def end_io(b: Bio) -> None:
        done.append(b.bi_status)

    bio.bi_end_io = end_io
    submit_bio(bio)
    bdev: BlockDevice = bio.bi_bdev
    while not done and bdev.cq.pending:
        bdev.cq.run()
    return blk_status_to_errno(done[0]) if done else 0


def blk_start_plug(plug: BlkPlug | None = None) -> BlkPlug:
    """``blk_start_plug()``: hold requests back in ``plug`` until :func:`blk_finish_plug`
    (nested plugs are ignored: the outermost one holds everything).

    Return: the plug (a new one if none was given).
    """
    plug = plug if plug is not None else BlkPlug()
    task = current()
    if task.plug is None:
        task.plug = plug
    return plug


def blk_finish_plug(plug: BlkPlug) -> None:
    """``blk_finish_plug()``: dispatch everything the task's plug holds (if ``plug`` is
    the task's plug) and, with synchronous completion, complete it."""
    task = current()
    if plug is not task.plug:
        return
    devices = {id(rq.q): rq.q for rq in plug.mq_list}
    blk_mq_flush_plug_list(plug)
    task.plug = None
    for bdev in devices.values():
        bdev.cq.maybe_run()

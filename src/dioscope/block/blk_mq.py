"""Requests, the plug, dispatch and request completion (``block/blk-mq.c``).

A bio that reaches :func:`blk_mq_submit_bio` is split to the queue limits, then either merges
into the request at the tail of the task's plug (back or front), or gets a new
:class:`Request` (``block_getrq``). With a plug the request waits there until the plug is
flushed (``blk_finish_plug``, or when a new request arrives behind a large one); without one
it is dispatched at once. Dispatch on a queue with an I/O scheduler first inserts the
request (``block_rq_insert``), then issues it (``block_rq_issue``) to the driver, which moves
the bytes and posts the completion to the device's :class:`CompletionQueue`.

The completion queue is the completion context (the kernel's interrupt / softirq). By
default it is synchronous: everything issued completes before the outermost ``submit_bio``
or ``blk_finish_plug`` returns. A scheduler sets ``synchronous = False`` and runs
:meth:`CompletionQueue.run_one` whenever it chooses to interleave a completion.

Completion goes through :func:`blk_update_request`, which traces ``block_rq_complete`` and
ends every bio the completed bytes cover (``bio_endio``); a driver that completes only part
of a request calls it twice: the good bytes with BLK_STS_OK, the rest with the error.

Tracepoints fired here: ``block_getrq``, ``block_bio_backmerge`` / ``_frontmerge`` (in
``blk_merge``), ``block_rq_insert``, ``block_rq_issue``, ``block_rq_complete``. Not
``block_plug`` / ``block_unplug``: the 6.18 host prints neither for Direct I/O, though its
requests do wait in a plug (``tests/kernel/data/host_block_trace.txt``).

SIMPLIFIED: no scheduler queue to merge into (an inserted request is dispatched at once), no
tags or hardware contexts, no requeue; flush and FUA requests are issued like others and the
driver flushes (the kernel runs a flush state machine, ``blk_insert_flush``).
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, Any, ClassVar, Final

from ..kernel.task import TaskStruct, current, running, set_current
from ..kernel.trace import blk_fill_rwbs, trace_event
from .bio_completion import bio_advance, bio_endio, blk_status_to_errno
from .blk_merge import __bio_split_to_limits, blk_attempt_bio_merge
from .blk_types import BIO_FLAG, BLK_STS, REQ_FLAG, SECTOR_SHIFT, Bio

if TYPE_CHECKING:
    from .devices import BlockDevice

__all__ = [
    "BLK_PLUG_FLUSH_SIZE",
    "BlkPlug",
    "CompletionQueue",
    "Request",
    "blk_mq_end_request",
    "blk_mq_flush_plug_list",
    "blk_mq_submit_bio",
    "blk_update_request",
]

BLK_PLUG_FLUSH_SIZE: Final = 128 * 1024
"""A new request flushes the plug when the request before it is at least this big."""
BLK_MAX_REQUEST_COUNT: Final = 32
"""[5.16+] most requests a plug holds before it flushes; 16 before (the same plug rework as
``PLUG_MERGE_LAST_RQ``, Linux commit db1a6ab38f10's series)."""
_FLUSH_FUA: Final = int(REQ_FLAG.REQ_PREFLUSH | REQ_FLAG.REQ_FUA)
_TRACE_COMPLETION: Final = int(BIO_FLAG.BIO_TRACE_COMPLETION)
_OK: Final = int(BLK_STS.BLK_STS_OK)
_IOERR: Final = int(BLK_STS.BLK_STS_IOERR)


class Request:
    """``struct request``: bios (``bio`` … ``biotail`` via ``bi_next``) for contiguous
    sectors of one device, with one op."""

    __slots__ = ("bio", "biotail", "cmd_flags", "data_len", "ioprio", "nr_phys_segments",
                 "q", "sector", "seq", "state", "status")

    _seq: ClassVar[int] = 0

    def __init__(self, q: BlockDevice, bio: Bio, nr_segs: int, ioprio: int) -> None:
        self.q = q
        self.cmd_flags = bio.bi_opf
        self.bio: Bio | None = bio
        self.biotail: Bio | None = bio
        self.sector = bio.bi_iter.bi_sector
        """``__sector``: where the request (still) starts."""
        self.data_len = bio.bi_iter.bi_size
        """``__data_len``: bytes still to complete."""
        self.nr_phys_segments = nr_segs
        self.ioprio = ioprio
        self.status = _OK
        self.state = "idle"
        Request._seq += 1
        self.seq = Request._seq

    def bios(self) -> list[Bio]:
        """The bios of the request, in sector order."""
        out = []
        bio = self.bio
        while bio is not None:
            out.append(bio)
            bio = bio.bi_next
        return out

    @property
    def nr_sectors(self) -> int:
        """``blk_rq_sectors()``."""
        return self.data_len >> SECTOR_SHIFT

    def op(self) -> int:
        """``req_op()``."""
        return self.cmd_flags & 0xFF

    def __repr__(self) -> str:
        return (f"Request(#{self.seq} op={self.op()} sector={self.sector} "
                f"sectors={self.nr_sectors} segs={self.nr_phys_segments} {self.state})")


class BlkPlug:
    """``struct blk_plug``: requests a task holds back so later bios can merge into them."""

    __slots__ = ("mq_list",)

    def __init__(self) -> None:
        self.mq_list: list[Request] = []

    @property
    def rq_count(self) -> int:
        return len(self.mq_list)


class CompletionQueue:
    """The completion context of one or more devices.

    Drivers post ``(request, bytes done, status)``; :meth:`run` completes them in order as
    task ``<idle>``-0 in softirq context, then runs deferred work (``system_wq``) as a
    kworker, as the kernel would soon after.
    """

    def __init__(self, synchronous: bool = True) -> None:
        self.synchronous = synchronous
        self.pending: deque[tuple[Request, int, int]] = deque()
        self.task = TaskStruct("<idle>", 0, context="softirq")
        self.worker = TaskStruct("kworker/0:1", 3)
        self.completed = 0
        self._running = False
        self._pgdats: dict[int, Any] = {}

    def post(self, rq: Request, done: int, status: int) -> None:
        """A driver finished ``rq``: ``done`` bytes moved, then ``status`` for the rest."""
        rq.state = "done"
        pgdat = rq.q.pgdat
        self._pgdats[id(pgdat)] = pgdat
        self.pending.append((rq, done, status))

    def run_one(self) -> bool:
        """Complete the oldest posted request. Return: False if none was pending."""
        if not self.pending:
            return False
        rq, done, status = self.pending.popleft()
        prev = set_current(self.task)
        try:
            blk_mq_complete_partial(rq, done, status)
        finally:
            set_current(prev)
        self.completed += 1
        return True

    def run(self) -> int:
        """Complete everything posted (and whatever completions post meanwhile), then run
        the deferred work they queued (``system_wq``, as a kworker). Re-entry (a bio
        submitted from an end_io) is left to the outer run.

        Return: requests completed.
        """
        if self._running:
            return 0
        self._running = True
        n = 0
        try:
            while self.pending:
                while self.run_one():
                    n += 1
                for pgdat in self._pgdats.values():
                    if pgdat.system_wq.pending:
                        with running(self.worker):
                            pgdat.system_wq.flush()
        finally:
            self._running = False
        return n

    def maybe_run(self) -> None:
        """Run now if synchronous (the default)."""
        if self.synchronous and self.pending and not self._running:
            self.run()


# --- tracing ---------------------------------------------------------------------------------
def _trace_bio(name: str, bio: Bio) -> None:
    hooks = bio.pgdat.hooks
    if hooks.tracepoints:
        trace_event(hooks, name, {
            "dev": bio.bi_bdev.dev, "sector": bio.bi_iter.bi_sector,
            "nr_sector": bio.bi_iter.bi_size >> SECTOR_SHIFT,
            "rwbs": blk_fill_rwbs(bio.bi_opf), "comm": current().comm,
        })


def _trace_rq(name: str, rq: Request) -> None:
    hooks = rq.q.pgdat.hooks
    if hooks.tracepoints:
        trace_event(hooks, name, {
            "dev": rq.q.dev, "sector": rq.sector, "nr_sector": rq.nr_sectors,
            "bytes": rq.data_len, "ioprio": rq.ioprio, "rwbs": blk_fill_rwbs(rq.cmd_flags),
            "cmd": "", "comm": current().comm,
        })


# --- submission -------------------------------------------------------------------------------
def _bio_unaligned(bio: Bio, q: BlockDevice) -> bool:
    """``bio_unaligned()``: size or start not a multiple of the logical block size."""
    mask = q.limits.logical_block_size - 1
    return bool(bio.bi_iter.bi_size & mask or (bio.bi_iter.bi_sector << SECTOR_SHIFT) & mask)


def _attempt_plug_merge(q: BlockDevice, bio: Bio, nr_segs: int) -> bool:
    """``blk_attempt_plug_merge()``: [5.16+] only the newest plugged request is tried
    (``PLUG_MERGE_LAST_RQ``); [5.9] every plugged request of the queue, newest first."""
    plug = current().plug
    if plug is None or not plug.mq_list:
        return False
    if q.pgdat.cfg.PLUG_MERGE_LAST_RQ:
        rq = plug.mq_list[-1]
        return rq.q is q and blk_attempt_bio_merge(rq, bio, nr_segs)
    for rq in reversed(plug.mq_list):
        if rq.q is q and blk_attempt_bio_merge(rq, bio, nr_segs):
            return True
    return False


def blk_mq_submit_bio(bio: Bio) -> None:
    """``blk_mq_submit_bio()``: turn a bio into (part of) a request and send it on.

    SIMPLIFIED: a bio not aligned to the logical block size is failed with BLK_STS_IOERR in
    every profile (``bio_unaligned()`` is a 6.x check; such a bio reached the driver in
    5.9 — the model's Direct I/O paths never build one).
    Context: process context; may dispatch (and, synchronously, complete) requests.
    """
    q: BlockDevice = bio.bi_bdev
    if _bio_unaligned(bio, q):
        bio.bi_status = _IOERR
        bio_endio(bio)
        return
    split, nr_segs = __bio_split_to_limits(bio, q.limits)
    if split is None:
        return
    bio = split
    task = current()
    plug = task.plug
    if plug is not None and not q.nomerges and not bio.bi_opf & _MERGE_BLOCKERS and \
            _attempt_plug_merge(q, bio, nr_segs):
        return
    if q.pgdat.hooks.tracepoints:
        _trace_bio("block_getrq", bio)
    rq = Request(q, bio, nr_segs, task.ioprio)
    if rq.cmd_flags & _FLUSH_FUA:
        _dispatch([rq])  # blk_insert_flush(): flushes bypass the plug and the scheduler
        return
    if plug is not None:
        blk_add_rq_to_plug(plug, rq)
        return
    _dispatch([rq])


_MERGE_BLOCKERS: Final = int(REQ_FLAG.REQ_NOMERGE | REQ_FLAG.REQ_PREFLUSH | REQ_FLAG.REQ_FUA)


def blk_add_rq_to_plug(plug: BlkPlug, rq: Request) -> None:
    """``blk_add_rq_to_plug()``: hold ``rq``; first flush the plug if it is full or its
    newest request is at least BLK_PLUG_FLUSH_SIZE (a big request gains nothing from
    waiting)."""
    if plug.mq_list:
        last = plug.mq_list[-1]
        limit = BLK_MAX_REQUEST_COUNT if rq.q.pgdat.cfg.PLUG_MERGE_LAST_RQ else 16
        if len(plug.mq_list) >= limit or (
                not last.q.nomerges and last.data_len >= BLK_PLUG_FLUSH_SIZE):
            blk_mq_flush_plug_list(plug)
    plug.mq_list.append(rq)


def blk_mq_flush_plug_list(plug: BlkPlug) -> None:
    """``blk_mq_flush_plug_list()``: dispatch every plugged request, oldest first."""
    if not plug.mq_list:
        return
    rqs = plug.mq_list
    plug.mq_list = []
    _dispatch(rqs)


def _dispatch(rqs: list[Request]) -> None:
    """Insert (queues with a scheduler: ``block_rq_insert`` for each) and issue."""
    if len(rqs) == 1:
        rq = rqs[0]
        q = rq.q
        traced = bool(q.pgdat.hooks.tracepoints)
        rq.state = "issued"
        if traced:
            if q.elevator != "none" and not rq.cmd_flags & _FLUSH_FUA:
                _trace_rq("block_rq_insert", rq)
            _trace_rq("block_rq_issue", rq)
        q.queue_rq(rq)
        return
    queues = [rqs[0].q] if len(rqs) == 1 else list({id(rq.q): rq.q for rq in rqs}.values())
    for q in queues:
        mine = [rq for rq in rqs if rq.q is q] if len(queues) > 1 else rqs
        if q.elevator != "none":
            for rq in mine:
                if not rq.cmd_flags & _FLUSH_FUA:
                    rq.state = "inserted"
                    _trace_rq("block_rq_insert", rq)
        for rq in mine:
            blk_mq_start_request(rq)
            q.queue_rq(rq)


def blk_mq_start_request(rq: Request) -> None:
    """``blk_mq_start_request()``: the driver takes the request (``block_rq_issue``)."""
    rq.state = "issued"
    _trace_rq("block_rq_issue", rq)


# --- completion --------------------------------------------------------------------------------
def blk_update_request(rq: Request, error: int, nr_bytes: int) -> bool:
    """``blk_update_request()``: complete ``nr_bytes`` of ``rq`` with status ``error``.

    Traces ``block_rq_complete`` for those bytes; each bio they cover gets ``error`` as its
    status and is advanced, and ends (``bio_endio``) once nothing is left of it. Its queueing
    was traced, so BIO_TRACE_COMPLETION is cleared: the request's completion stands for the
    bio's (no ``block_bio_complete``).
    Return: True if bytes of the request remain, False when it is done.
    """
    q = rq.q
    hooks = q.pgdat.hooks
    if hooks.tracepoints:
        trace_event(hooks, "block_rq_complete", {
            "dev": q.dev, "sector": rq.sector, "nr_sector": nr_bytes >> SECTOR_SHIFT,
            "error": blk_status_to_errno(error), "ioprio": rq.ioprio,
            "rwbs": blk_fill_rwbs(rq.cmd_flags), "cmd": "",
        })
    if error:
        rq.status = error
    if rq.bio is None:
        return False
    total = 0
    while True:
        bio = rq.bio
        assert bio is not None
        bio_bytes = min(bio.bi_iter.bi_size, nr_bytes)
        if error:
            bio.bi_status = error
        if bio_bytes == bio.bi_iter.bi_size:
            rq.bio = bio.bi_next
            bio.bi_next = None
        bio.bi_flags &= ~_TRACE_COMPLETION
        bio_advance(bio, bio_bytes)
        nr_bytes -= bio_bytes
        total += bio_bytes
        if not bio.bi_iter.bi_size:
            bio_endio(bio)
        if not nr_bytes or rq.bio is None:
            break
    if rq.bio is None:
        rq.biotail = None
        rq.data_len = 0
        return False
    rq.data_len -= total
    rq.sector += total >> SECTOR_SHIFT
    return True


def blk_mq_end_request(rq: Request, error: int) -> None:
    """``blk_mq_end_request()``: complete everything left of ``rq`` with ``error``."""
    if blk_update_request(rq, error, rq.data_len):
        rq.q.pgdat.events.bug("blk_mq_end_request", f"bytes left after ending {rq!r}")
    rq.state = "freed"


def blk_mq_complete_partial(rq: Request, done: int, status: int) -> None:
    """A driver's completion: ``done`` bytes good; the rest (if any) ends with ``status``,
    as a driver that calls ``blk_update_request`` for the good part and then
    ``blk_mq_end_request`` with the error does."""
    if done >= rq.data_len:
        blk_mq_end_request(rq, status)
        return
    if done > 0:
        blk_update_request(rq, _OK, done)
    blk_mq_end_request(rq, status or _IOERR)

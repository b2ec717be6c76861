"""Plugging, merging into requests, dispatch and the completion context."""

from __future__ import annotations

from typing import Any

import pytest

from dioscope.block.blk_core import blk_finish_plug, blk_start_plug, submit_bio
from dioscope.block.blk_types import BLK_STS, REQ_FLAG
from dioscope.kernel.trace import TraceBuffer
from dioscope.machine import Kernel

BIG = {"max_hw_sectors_kb": 2147483647, "max_segment_size": 0xFFFFFFFF}


def _events(tb: TraceBuffer) -> list[str]:
    return [line.split(": ", 1)[1] for line in tb.lines()]


def _submit_all(kit: Any, dev: Any, specs: list[tuple[int, int, int]], plug: bool = True,
                end: Any = None) -> Any:
    """Submit page bios given as (op, sector, pages) inside one plug; return the EndIO."""
    end = end or kit.EndIO()
    p = blk_start_plug() if plug else None
    for op, sector, npages in specs:
        bio = kit.page_bio(dev, op, sector, kit.scattered_pages(npages))
        end.attach(bio)
        submit_bio(bio)
    if p is not None:
        blk_finish_plug(p)
    return end


def test_unplugged_bio_is_dispatched_at_once(kit: Any) -> None:
    dev = kit.mem_device(**BIG)
    tb = TraceBuffer.for_pgdat(kit.k.pgdat)
    end = _submit_all(kit, dev, [(kit.READ | kit.SYNC, 2048, 1)], plug=False)
    prio = " be,0,4" if kit.k.cfg.TRACE_RQ_IOPRIO else ""
    assert _events(tb) == [
        "block_bio_queue: 8,0 RS 2048 + 8 [dioscope]",
        "block_getrq: 8,0 RS 2048 + 8 [dioscope]",
        f"block_rq_insert: 8,0 RS 4096 () 2048 + 8{prio} [dioscope]",
        f"block_rq_issue: 8,0 RS 4096 () 2048 + 8{prio} [dioscope]",
        f"block_rq_complete: 8,0 RS () 2048 + 8{prio} [0]",
    ]
    assert end.statuses == [0]


def test_no_scheduler_no_insert(kit: Any) -> None:
    dev = kit.mem_device(**BIG)
    dev.elevator = "none"
    tb = TraceBuffer.for_pgdat(kit.k.pgdat)
    _submit_all(kit, dev, [(kit.WRITE, 0, 1)], plug=False)
    assert [e.split(":")[0] for e in _events(tb)] == [
        "block_bio_queue", "block_getrq", "block_rq_issue", "block_rq_complete"]


def test_back_merges_in_plug(kit: Any) -> None:
    dev = kit.mem_device(**BIG)
    seen = kit.record(dev)
    tb = TraceBuffer(kit.k.pgdat.hooks, events={"block_bio_backmerge", "block_getrq"})
    end = _submit_all(kit, dev, [(kit.WRITE, 8 * i, 1) for i in range(4)])
    assert seen == [(0, 32, 4)]
    assert _events(tb) == [
        "block_getrq: 8,0 W 0 + 8 [dioscope]",
        "block_bio_backmerge: 8,0 W 8 + 8 [dioscope]",
        "block_bio_backmerge: 8,0 W 16 + 8 [dioscope]",
        "block_bio_backmerge: 8,0 W 24 + 8 [dioscope]",
    ]
    assert end.statuses == [0, 0, 0, 0]


def test_front_merge_in_plug(kit: Any) -> None:
    dev = kit.mem_device(**BIG)
    seen = kit.record(dev)
    tb = TraceBuffer(kit.k.pgdat.hooks, events={"block_bio_frontmerge"})
    _submit_all(kit, dev, [(kit.READ, 16, 2), (kit.READ, 8, 1), (kit.READ, 0, 1)])
    assert seen == [(0, 32, 4)]
    assert _events(tb) == ["block_bio_frontmerge: 8,0 R 8 + 8 [dioscope]",
                           "block_bio_frontmerge: 8,0 R 0 + 8 [dioscope]"]


@pytest.mark.parametrize(("specs", "limits", "requests"), [
    ([(0, 0, 1), (1, 8, 1)], {}, 2),                             # read then write
    ([(0, 0, 1), (0, 16, 1)], {}, 2),                            # not contiguous
    ([(0, 0, 1), (int(REQ_FLAG.REQ_NOMERGE), 8, 1)], {}, 2),     # REQ_NOMERGE
    ([(0, 0, 1), (int(REQ_FLAG.REQ_FUA) | 1, 8, 1)], {}, 2),     # FUA never merges
    ([(0, 0, 1), (0, 8, 2)], {"max_sectors_kb": 8}, 2),          # 24 > 16 sectors
    ([(0, 0, 1), (0, 8, 1)], {"max_sectors_kb": 8}, 1),          # 16 fits
    ([(0, 0, 3), (0, 24, 2)], {"max_segments": 4}, 2),           # 5 > 4 segments
    ([(0, 0, 3), (0, 24, 1)], {"max_segments": 4}, 1),
    ([(0, 0, 2), (0, 16, 2)], {"chunk_sectors": 16}, 2),         # would cross a chunk
])
def test_merge_refused(kit: Any, specs: list[tuple[int, int, int]], limits: dict[str, int],
                       requests: int) -> None:
    dev = kit.mem_device(**{**BIG, **limits})
    seen = kit.record(dev)
    end = _submit_all(kit, dev, specs)
    assert len(seen) == requests
    assert end.statuses == [0] * len(specs)


def test_failed_merge_marks_request_nomerge(kit: Any) -> None:
    dev = kit.mem_device(**BIG, max_sectors_kb=8)
    from dioscope.kernel.task import current

    p = blk_start_plug()
    for sector, n in ((0, 1), (8, 2)):
        submit_bio(kit.page_bio(dev, 0, sector, kit.scattered_pages(n)))
    rq0 = current().plug.mq_list[0]
    assert rq0.cmd_flags & REQ_FLAG.REQ_NOMERGE
    blk_finish_plug(p)


def test_plug_merge_tries_only_the_newest_request_since_5_16(kit: Any) -> None:
    dev = kit.mem_device(**BIG)
    seen = kit.record(dev)
    _submit_all(kit, dev, [(0, 0, 1), (0, 100, 1), (0, 8, 1)])
    if kit.k.cfg.PLUG_MERGE_LAST_RQ:
        assert seen == [(0, 8, 1), (100, 8, 1), (8, 8, 1)]
    else:
        assert seen == [(0, 16, 2), (100, 8, 1)]


def test_plug_holds_16_or_32_requests(kit: Any) -> None:
    dev = kit.mem_device(**BIG)
    p = blk_start_plug()
    for i in range(17):
        submit_bio(kit.page_bio(dev, 0, 64 * i, kit.scattered_pages(1)))
    assert dev.nr_issued == (0 if kit.k.cfg.PLUG_MERGE_LAST_RQ else 16)
    blk_finish_plug(p)
    assert dev.nr_issued == 17


def test_big_request_flushes_the_plug(kit: Any) -> None:
    dev = kit.mem_device(**BIG, max_segments=256)
    tb = TraceBuffer(kit.k.pgdat.hooks)
    _submit_all(kit, dev, [(kit.WRITE, 0, 32), (kit.WRITE, 1000, 1)])  # 128 KiB, then 4 KiB
    names = [e.split(":")[0] + ("@0" if " 0 + " in e else "") for e in _events(tb)]
    assert names == [
        "block_bio_queue@0", "block_getrq@0",
        "block_bio_queue", "block_getrq",           # the second request...
        "block_rq_insert@0", "block_rq_issue@0",     # ...flushes the first (>= 128 KiB)
        "block_rq_complete@0",                       # completed as submit_bio returns
        "block_rq_insert", "block_rq_issue", "block_rq_complete",  # blk_finish_plug
    ]


def test_nested_plug_is_ignored(kit: Any) -> None:
    dev = kit.mem_device(**BIG)
    outer = blk_start_plug()
    inner = blk_start_plug()
    submit_bio(kit.page_bio(dev, 0, 0, kit.scattered_pages(1)))
    blk_finish_plug(inner)
    assert dev.nr_issued == 0
    blk_finish_plug(outer)
    assert dev.nr_issued == 1


def test_deferred_completion(kit: Any) -> None:
    dev = kit.mem_device(**BIG)
    dev.cq.synchronous = False
    end = _submit_all(kit, dev, [(0, 0, 1), (0, 64, 1)], plug=False)
    assert dev.nr_issued == 2 and end.calls == []
    assert dev.cq.run_one()
    assert end.statuses == [0]
    assert dev.cq.run() == 1 and end.statuses == [0, 0]
    assert not dev.cq.run_one()


def test_completion_runs_as_softirq_task(kit: Any) -> None:
    dev = kit.mem_device(**BIG)
    from dioscope.kernel.task import current

    who: list[tuple[str, str]] = []
    bio = kit.page_bio(dev, 0, 0, kit.scattered_pages(1))
    bio.bi_end_io = lambda b: who.append((current().comm, current().context))
    submit_bio(bio)
    assert who == [("<idle>", "softirq")]
    assert current().comm == "dioscope"


def test_preflush_bypasses_plug_and_scheduler(kit: Any) -> None:
    dev = kit.mem_device(**BIG)
    tb = TraceBuffer(kit.k.pgdat.hooks)
    p = blk_start_plug()
    bio = kit.make_bio(dev, int(REQ_FLAG.REQ_PREFLUSH | REQ_FLAG.REQ_SYNC) | 1, 0, [])
    end = kit.EndIO()
    end.attach(bio)
    submit_bio(bio)
    assert end.statuses == [0] and dev.flushes == 1
    blk_finish_plug(p)
    assert [e.split(":")[0] for e in _events(tb)] == [
        "block_bio_queue", "block_getrq", "block_rq_issue", "block_rq_complete"]
    assert _events(tb)[0] == "block_bio_queue: 8,0 FWS 0 + 0 [dioscope]"


def test_beyond_end_of_device(kit: Any) -> None:
    dev = kit.mem_device("1M", **BIG)
    tb = TraceBuffer(kit.k.pgdat.hooks)
    end = _submit_all(kit, dev, [(0, 2048 - 8, 2)], plug=False)
    assert end.statuses == [BLK_STS.BLK_STS_IOERR] and dev.nr_issued == 0
    assert tb.lines() == []  # failed before block_bio_queue


def test_unaligned_bio_fails_after_queue_trace(kit: Any) -> None:
    dev = kit.mem_device(**BIG, logical_block_size=4096)
    tb = TraceBuffer(kit.k.pgdat.hooks)
    bio = kit.make_bio(dev, 0, 8, [(int(kit.scattered_pages(1)[0]), 512, 0)])
    end = kit.EndIO()
    end.attach(bio)
    submit_bio(bio)
    assert end.statuses == [BLK_STS.BLK_STS_IOERR]
    assert _events(tb) == ["block_bio_queue: 8,0 R 8 + 1 [dioscope]",
                           "block_bio_complete: 8,0 R 8 + 1 [-5]"]


def test_split_parent_completes_once_with_child_status(k: Kernel, kit: Any) -> None:
    from dioscope.block.devices import EIOOnRequest

    dev = kit.mem_device(**BIG, max_sectors_kb=128)
    dev.inject(EIOOnRequest(nth=3))
    end = _submit_all(kit, dev, [(0, 0, 256)], plug=False)
    assert dev.nr_issued == 8
    assert end.statuses == [BLK_STS.BLK_STS_IOERR]
    bio = end.calls[0][0]
    assert bio.bi_iter.bi_size == 0 and not bio.bi_flags & 0x40  # BIO_CHAIN cleared

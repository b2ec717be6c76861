"""Splitting bios to the queue limits (requests issued, their sizes and segment counts) and
the SG list of a request."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from dioscope.block.blk_merge import (
    _one_segment_each,
    _split_fast,
    _split_slow,
    blk_rq_map_sg,
    get_max_io_size,
)
from dioscope.block.blk_mq import Request
from dioscope.block.blk_settings import QueueLimits
from dioscope.block.blk_types import BLK_STS, REQ_FLAG
from dioscope.kernel.trace import TraceBuffer

BIG = {"max_hw_sectors_kb": 2147483647, "max_segment_size": 0xFFFFFFFF}
"""A virtio-like queue: no hardware size limit, no segment size limit."""


def _run(kit: Any, dev: Any, rows: list[tuple[int, int, int]], sector: int = 0,
         op: int = 0) -> tuple[list[tuple[int, int, int]], list[int]]:
    seen = kit.record(dev)
    end = kit.EndIO()
    from dioscope.block.blk_core import submit_bio

    bio = kit.make_bio(dev, op, sector, rows)
    end.attach(bio)
    submit_bio(bio)
    return seen, end.statuses


def _pages(pfns: np.ndarray) -> list[tuple[int, int, int]]:
    return [(int(p), 4096, 0) for p in pfns]


@pytest.mark.parametrize(("limits", "sizes"), [
    # spec §11 item 22: max_sectors_kb=128 on a 1 MiB bio -> 8 requests
    ({**BIG, "max_sectors_kb": 128}, [256] * 8),
    # the 6.18 host's vda: max_segments 254 -> 254 pages + 2 pages (seen in its trace)
    ({**BIG, "max_segments": 254, "physical_block_size": 4096}, [2032, 16]),
    ({**BIG, "max_segments": 16}, [128] * 16),
    ({**BIG, "max_segments": 100, "max_sectors_kb": 256}, [512] * 4),   # bytes before segs
    ({**BIG, "max_segments": 50, "max_sectors_kb": 256}, [400] * 5 + [48]),  # segs first
    # kernel defaults: max_sectors 255, cut at the 8-sector physical block -> 248
    ({"physical_block_size": 4096}, [248] * 8 + [64]),
    ({}, [255] * 8 + [8]),
    ({**BIG}, [1024, 1024]),                       # BLK_MAX_SEGMENTS = 128
    ({**BIG, "max_segments": 256}, [2048]),
])
def test_split_scattered_1m(kit: Any, limits: dict[str, int], sizes: list[int]) -> None:
    dev = kit.mem_device(**limits)
    seen, statuses = _run(kit, dev, _pages(kit.scattered_pages(256)))
    assert [n for _s, n, _g in seen] == sizes
    assert [s for s, _n, _g in seen] == np.cumsum([0, *sizes[:-1]]).tolist()
    # one segment per page the piece touches (the scattered pages never merge)
    assert [g for _s, _n, g in seen] == [((s + n) * 512 - 1) // 4096 - s * 512 // 4096 + 1
                                         for s, n, _g in seen]
    assert statuses == [BLK_STS.BLK_STS_OK]


def test_split_not_pbs_aligned_start(kit: Any) -> None:
    dev = kit.mem_device(physical_block_size=4096)
    seen, _st = _run(kit, dev, _pages(kit.scattered_pages(8)), sector=3)
    # get_max_io_size: the first piece ends on a physical block (253 = 256 - 3), but the
    # bio is only 64 sectors
    assert [n for _s, n, _g in seen] == [64]
    bio = kit.make_bio(dev, 0, 3, _pages(kit.scattered_pages(1)))
    assert get_max_io_size(bio, dev.limits) == 253


@pytest.mark.parametrize(("sector", "sizes"), [
    (128, [128, 256, 256, 256, 256, 256, 256, 256, 128]),
    (0, [256] * 8),
    (255, [1, 256, 256, 256, 256, 256, 256, 256, 255]),
])
def test_chunk_sectors(kit: Any, sector: int, sizes: list[int]) -> None:
    dev = kit.mem_device(**BIG, chunk_sectors=256)
    seen, _st = _run(kit, dev, _pages(kit.scattered_pages(256)), sector=sector)
    assert [n for _s, n, _g in seen] == sizes


def test_multipage_bvec_counts_one_segment_per_max_segment_size(kit: Any) -> None:
    pfns = kit.contiguous_pages(256)
    rows = [(int(pfns[0]), 1 << 20, 0)]  # one 1 MiB multi-page bvec
    dev = kit.mem_device(max_hw_sectors_kb=2147483647)  # max_segment_size 65536
    seen, _st = _run(kit, dev, rows)
    assert seen == [(0, 2048, 16)]
    dev = kit.mem_device(max_hw_sectors_kb=2147483647, max_segments=8)
    seen, _st = _run(kit, dev, rows)
    assert seen == [(0, 1024, 8), (1024, 1024, 8)]


def test_seg_boundary(kit: Any) -> None:
    pfns = kit.contiguous_pages(16)
    rows = [(int(pfns[1]), 8192, 0)]  # crosses a 4-page boundary window? no: 1..2
    dev = kit.mem_device(**BIG, seg_boundary_mask=0x1FFF)  # 8 KiB windows
    seen, _st = _run(kit, dev, rows)
    base = int(pfns[0])
    assert base % 2 == 0
    assert seen == [(0, 16, 2)]  # pages 1 and 2 lie in different 8 KiB windows


@pytest.mark.parametrize(("layout", "sizes"), [
    # (len, offset) per bvec on scattered pages; virt boundary 4095 (NVMe-like)
    ([(4096, 0), (3584, 512), (4096, 0)], [8, 15]),          # a gap before the 2nd bvec
    ([(3584, 0), (4096, 0)], [7, 8]),                         # 1st ends mid-page: gap
    ([(4096, 0), (4096, 0), (4096, 0)], [24]),                # no gaps at all
    ([(512, 3584), (4096, 0)], [9]),                          # starts mid-page: fine
])
def test_virt_boundary(kit: Any, layout: list[tuple[int, int]], sizes: list[int]) -> None:
    pfns = kit.scattered_pages(len(layout))
    rows = [(int(p), n, off) for p, (n, off) in zip(pfns, layout)]
    dev = kit.mem_device(max_hw_sectors_kb=2147483647, virt_boundary_mask=4095)
    seen, _st = _run(kit, dev, rows)
    assert [n for _s, n, _g in seen] == sizes


def test_split_rounds_to_logical_block(kit: Any) -> None:
    pfns = kit.scattered_pages(6)
    rows = [(int(p), 2048, 0) for p in pfns]  # 6 half pages = 3 blocks of 4 KiB
    dev = kit.mem_device(**BIG, logical_block_size=4096, max_segments=3)
    seen, statuses = _run(kit, dev, rows)
    assert [(s, n) for s, n, _g in seen] == [(0, 8), (8, 8), (16, 8)]
    assert statuses == [0]


def test_nowait_bio_that_needs_a_split_fails_again(kit: Any) -> None:
    dev = kit.mem_device(**BIG, max_segments=4)
    seen, statuses = _run(kit, dev, _pages(kit.scattered_pages(8)),
                          op=int(REQ_FLAG.REQ_NOWAIT))
    assert seen == [] and statuses == [BLK_STS.BLK_STS_AGAIN]


def test_split_trace(kit: Any) -> None:
    dev = kit.mem_device(**BIG, max_sectors_kb=512)
    tb = TraceBuffer(kit.k.pgdat.hooks, events={"block_split", "block_getrq"})
    _run(kit, dev, _pages(kit.scattered_pages(256)), sector=2048, op=kit.SYNC)
    assert [line.split(": ", 1)[1] for line in tb.lines()] == [
        "block_split: 8,0 RS 2048 / 3072 [dioscope]",
        "block_getrq: 8,0 RS 2048 + 1024 [dioscope]",
        "block_getrq: 8,0 RS 3072 + 1024 [dioscope]",
    ]
    tb.detach()


def test_fast_and_slow_split_agree() -> None:
    rng = np.random.default_rng(7)
    for _ in range(400):
        n = int(rng.integers(1, 40))
        offs = rng.integers(0, 8, n) * 512
        lens = np.array([int(rng.integers(1, (4096 - o) // 512 + 1)) * 512 for o in offs])
        lim = QueueLimits(max_hw_sectors_kb=2147483647, max_segments=int(rng.integers(1, 20)),
                          max_sectors_kb=int(rng.integers(4, 64)))
        max_bytes = lim.max_bytes
        pages = np.arange(n, dtype=np.int64) * 2 + 100
        fast = _split_fast(lim, offs.astype(np.int64), lens.astype(np.int64), max_bytes)
        slow = _split_slow(lim, pages, offs.astype(np.int64), lens.astype(np.int64), max_bytes)
        assert fast == slow, (offs.tolist(), lens.tolist(), lim)


def test_fast_split_of_multi_page_bvecs_agrees_with_the_loop() -> None:
    """Multi-page bvecs (physically contiguous runs, as 6.18 builds them) count one segment
    each when they fit ``max_segment_size`` and cross no ``seg_boundary_mask`` window; the
    array form must then give the loop's answer, and must decline otherwise."""
    rng = np.random.default_rng(11)
    declined = taken = 0
    for _ in range(600):
        n = int(rng.integers(1, 40))
        offs = (rng.integers(0, 8, n) * 512).astype(np.int64)
        # Lengths from 0 (an empty bvec, at any offset) to 63 sectors.
        lens = np.array([int(rng.integers(0, 64)) * 512 for _ in range(n)], np.int64)
        pages = (np.cumsum(rng.integers(1, 40, n)) + 100).astype(np.int64)
        seg = int(rng.choice([1 << 16, 1 << 20, 0xFFFFFFFF]))
        mask = int(rng.choice([0xFFFF, 0xFFFFF, 0xFFFFFFFF]))
        lim = QueueLimits(max_hw_sectors_kb=2147483647, max_segments=int(rng.integers(1, 30)),
                          max_sectors_kb=int(rng.integers(4, 512)), max_segment_size=seg,
                          seg_boundary_mask=mask, dma_alignment=int(rng.choice([0, 511, 4095])))
        max_bytes = lim.max_bytes
        align = lim.dma_alignment
        slow = _split_slow(lim, pages, offs, lens, max_bytes, align)
        if not _one_segment_each(lim, pages, offs, lens):
            declined += 1
            continue
        taken += 1
        assert _split_fast(lim, offs, lens, max_bytes, align) == slow, (offs, lens, lim)
    assert declined > 50 and taken > 200


def test_an_empty_bvec_past_the_first_page_is_no_segment() -> None:
    """The loop counts an empty bvec as a segment only through its within-one-page shortcut;
    one whose offset lies past the first page goes to bvec_split_segs and adds nothing. With
    multi-page bvecs around it the array form declines, and the loop's count stands."""
    lim = QueueLimits(max_hw_sectors_kb=2147483647, max_segments=19)
    pages = np.arange(19, dtype=np.int64) * 10 + 100
    offs = np.zeros(19, np.int64)
    lens = np.full(19, 8192, np.int64)
    offs[18], lens[18] = 8192, 0
    assert not _one_segment_each(lim, pages, offs, lens)
    assert _split_slow(lim, pages, offs, lens, lim.max_bytes) == (False, 18, 18 * 8192)
    offs[18] = 512  # within the first page: the shortcut counts it
    assert _split_slow(lim, pages, offs, lens, lim.max_bytes) == (False, 19, 18 * 8192)


def test_map_sg_merges_contiguous_bvecs(kit: Any) -> None:
    pfns = kit.contiguous_pages(64)
    dev = kit.mem_device(**BIG)
    # 4 separate bvecs over contiguous frames: one SG entry (bvec count says 4 segments)
    bio = kit.make_bio(dev, 0, 0, [(int(pfns[i]), 4096, 0) for i in range(4)])
    rq = Request(dev, bio, 4, 0)
    phys, lens = blk_rq_map_sg(rq)
    assert (phys.tolist(), lens.tolist()) == ([int(pfns[0]) * 4096], [16384])
    # ...but not past max_segment_size, nor across a boundary window
    dev.limits = QueueLimits(max_hw_sectors_kb=1024, max_segment_size=8192)
    phys, lens = blk_rq_map_sg(rq)
    assert lens.tolist() == [8192, 8192]
    dev.limits = QueueLimits(max_hw_sectors_kb=1024, seg_boundary_mask=0xFFF)
    assert blk_rq_map_sg(rq)[1].tolist() == [4096] * 4
    # a short transfer maps only its first bytes
    dev.limits = QueueLimits(max_hw_sectors_kb=1024, max_segment_size=0xFFFFFFFF)
    assert blk_rq_map_sg(rq, limit=6144)[1].tolist() == [6144]
    assert blk_rq_map_sg(rq, limit=4096)[1].tolist() == [4096]


def test_map_sg_paths_agree(kit: Any) -> None:
    """The plain-Python SG mapping (few bvecs) and the array one give the same list."""
    from dioscope.block.blk_merge import _map_sg_np, _map_sg_small

    rng = np.random.default_rng(3)
    base = int(kit.contiguous_pages(64)[0])
    for _ in range(300):
        n = int(rng.integers(1, 12))
        rows = []
        for _i in range(n):
            page = base + int(rng.integers(0, 60))
            off = 512 * int(rng.integers(0, 8))
            rows.append((page, 512 * int(rng.integers(1, 17)), off))  # up to 2 pages + 3.5K
        lim = QueueLimits(max_hw_sectors_kb=4096, max_segments=256,
                          max_segment_size=4096 * int(rng.integers(1, 4)),
                          seg_boundary_mask=int(rng.choice([0xFFF, 0x3FFF, 0xFFFFFFFF])))
        dev = kit.mem_device(**BIG)
        dev.limits = lim
        bio = kit.make_bio(dev, 0, 0, rows)
        rq = Request(dev, bio, n, 0)
        total = bio.bi_iter.bi_size
        for limit in (None, total // 2 // 512 * 512):
            small = _map_sg_small(rq, lim, limit)
            assert small is not None
            big = _map_sg_np(rq, lim, limit)
            assert (small[0], small[1]) == (big[0].tolist(), big[1].tolist()), (rows, lim)

"""Fixtures for the block tests: a machine per profile and a kit that builds bios.

Bios are built directly: kernel pages from the buddy allocator, bvec rows set with
``Bio.set_bvec``, ``bi_vcnt``, ``bi_iter.bi_size`` and ``bi_sector``. ``EndIO`` records
every ``bi_end_io`` call. Tests get the helpers through the ``kit`` fixture (pytest runs
with ``--import-mode=importlib``, so conftest is not importable as a module).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest

from dioscope.block.blk_types import REQ_FLAG, REQ_OP, Bio
from dioscope.machine import Kernel
from dioscope.mm.page_alloc import alloc_pages

PROFILE_NAMES = ("5.9", "5.9-pin", "6.18")
PAGE = 4096


@dataclass
class EndIO:
    """A ``bi_end_io`` that records (bio, status) per call."""

    calls: list[tuple[Bio, int]] = field(default_factory=list)

    def __call__(self, bio: Bio) -> None:
        self.calls.append((bio, int(bio.bi_status)))

    def attach(self, bio: Bio) -> Bio:
        bio.bi_end_io = self
        return bio

    @property
    def statuses(self) -> list[int]:
        return [s for _b, s in self.calls]


class Kit:
    """Bio building on one machine."""

    READ = int(REQ_OP.REQ_OP_READ)
    WRITE = int(REQ_OP.REQ_OP_WRITE)
    SYNC = int(REQ_FLAG.REQ_SYNC)
    PAGE = PAGE
    EndIO = EndIO

    def __init__(self, k: Kernel) -> None:
        self.k = k

    def scattered_pages(self, n: int) -> np.ndarray:
        """``n`` order-0 pages no two of which are physically adjacent (every other page of
        a sorted run of 2n), so each is its own bvec and its own segment."""
        pfns = np.array([alloc_pages(self.k.pgdat, 0) for _ in range(2 * n)], np.int64)
        pfns.sort()
        picked = pfns[::2][:n]
        assert not np.any(np.diff(picked) == 1), "allocator gave adjacent pages"
        return picked

    def contiguous_pages(self, n: int) -> np.ndarray:
        """``n`` physically contiguous frames (one high-order block)."""
        order = max(0, (n - 1).bit_length())
        head = alloc_pages(self.k.pgdat, order)
        assert head >= 0
        return np.arange(head, head + n, dtype=np.int64)

    def fill(self, pfns: Sequence[int] | np.ndarray, seed: int) -> None:
        """Deterministic bytes in each frame."""
        rng = np.random.default_rng(seed)
        for p in np.asarray(pfns).tolist():
            self.k.pgdat.mem.frames[p] = rng.integers(0, 256, PAGE, dtype=np.uint8)

    def make_bio(self, dev: Any, op: int, sector: int,
                 rows: Sequence[tuple[int, int, int]]) -> Bio:
        """A bio with one bvec per ``(pfn, len, offset)`` row."""
        bio = Bio(dev, max(len(rows), 1), op, self.k.pgdat)
        total = 0
        for i, (pfn, length, off) in enumerate(rows):
            bio.set_bvec(i, int(pfn), int(length), int(off))
            total += int(length)
        bio.bi_vcnt = len(rows)
        bio.bi_iter.bi_size = total
        bio.bi_iter.bi_sector = sector
        return bio

    def page_bio(self, dev: Any, op: int, sector: int,
                 pfns: Sequence[int] | np.ndarray) -> Bio:
        """A bio of whole pages, one bvec each."""
        return self.make_bio(dev, op, sector,
                             [(int(p), PAGE, 0) for p in np.asarray(pfns).tolist()])

    def run_bio(self, dev: Any, op: int, sector: int, pfns: Sequence[int] | np.ndarray,
                end: EndIO | None = None) -> Bio:
        """Build, attach an end_io and submit a page bio."""
        from dioscope.block.blk_core import submit_bio

        bio = self.page_bio(dev, op, sector, pfns)
        (end or EndIO()).attach(bio)
        submit_bio(bio)
        return bio


    @staticmethod
    def record(dev: Any) -> list[tuple[int, int, int]]:
        """Record (sector, sectors, segments) of every request ``dev`` is issued."""
        seen: list[tuple[int, int, int]] = []
        orig = dev.queue_rq

        def queue_rq(rq: Any) -> None:
            seen.append((rq.sector, rq.nr_sectors, rq.nr_phys_segments))
            orig(rq)

        dev.queue_rq = queue_rq
        return seen

    def mem_device(self, capacity: str = "16M", **limits: int) -> Any:
        """A MemDevice (8:0, sda, mq-deadline) with these queue limits."""
        from dioscope.block.blk_settings import QueueLimits
        from dioscope.block.devices import MemDevice

        return MemDevice(self.k.pgdat, capacity, limits=QueueLimits(**limits), name="sda",
                         major=8, minor=0)


@pytest.fixture(params=PROFILE_NAMES)
def k(request: pytest.FixtureRequest) -> Kernel:
    """A fresh 64 MiB machine under each profile."""
    return Kernel("64M", request.param)


@pytest.fixture
def kit(k: Kernel) -> Kit:
    return Kit(k)

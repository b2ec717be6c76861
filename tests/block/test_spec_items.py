"""Spec §11 items 22 and 23 through the block layer, per profile.

22. Splitting a bio for the queue limits (max_sectors_kb=128 on a 1 MiB bio: 8 requests)
    does not change pin counts: every page is held once by the bio while its pieces are in
    flight, and released once when the bio completes.
23. A READ bio into user pages one of which is cleaned during the I/O is released by the
    deferred work item (re-dirtied there); the completion context runs that work, and every
    page is dirty afterwards either way.
"""

from __future__ import annotations

import numpy as np
import pytest

from dioscope.block.bio import (
    bio_alloc,
    bio_check_pages_dirty,
    bio_dirty_deferred,
    bio_iov_iter_get_pages,
    bio_release_pages,
    bio_set_pages_dirty,
)
from dioscope.block.blk_core import submit_bio
from dioscope.block.blk_settings import QueueLimits
from dioscope.block.blk_types import REQ_FLAG, Bio
from dioscope.block.devices import MemDevice
from dioscope.lib.iov_iter import ITER_DEST, iov_iter_init
from dioscope.machine import Kernel
from dioscope.mm.page import PG

PROFILES = ("5.9", "5.9-pin", "6.18")
MIB = 1 << 20


def _user_bio(k: Kernel, dev: MemDevice) -> tuple[Bio, np.ndarray]:
    """A 1 MiB READ bio over a touched anonymous buffer, via bio_iov_iter_get_pages."""
    proc = k.spawn()
    addr = proc.mmap(MIB)
    proc.touch(addr, MIB, write=True)
    it = iov_iter_init(k.pgdat, ITER_DEST, [(addr, MIB)], 1, MIB, proc.mm)
    bio = bio_alloc(dev, 256, int(REQ_FLAG.REQ_SYNC), k.pgdat)
    assert bio is not None and bio_iov_iter_get_pages(bio, it) == 0
    return bio, bio.pages()


@pytest.mark.parametrize("profile", PROFILES)
def test_item_22_split_does_not_change_pins(profile: str) -> None:
    k = Kernel("64M", profile)
    dev = MemDevice(k.pgdat, "8M", limits=QueueLimits(max_hw_sectors_kb=1024,
                                                      max_sectors_kb=128, max_segments=256))
    dev.cq.synchronous = False  # hold the completions to look at the pages in flight
    p = k.pgdat.pages
    bio, pages = _user_bio(k, dev)
    assert len(pages) == 256
    heads = p.head[pages]
    held = p.refcount[heads].copy()
    acq_before = k.vmstat.pins()[0]
    bio.bi_end_io = lambda b: bio_release_pages(b, mark_dirty=True)
    submit_bio(bio)
    assert dev.nr_issued == 8 and len(dev.cq.pending) == 8
    assert (p.refcount[heads] == held).all()  # eight pieces in flight, nothing more taken
    assert k.vmstat.pins()[0] == acq_before
    dev.cq.run()
    unit = 1024 if k.cfg.DIO_FOLL_PIN else 1
    assert (p.refcount[heads] == held - unit).all()
    acq, rel = k.vmstat.pins()
    assert acq == rel == (256 if k.cfg.DIO_FOLL_PIN else 0)


@pytest.mark.parametrize("profile", PROFILES)
@pytest.mark.parametrize("cleaned", [False, True], ids=["still-dirty", "cleaned"])
def test_item_23_dirty_check_runs_in_completion_context(profile: str, cleaned: bool) -> None:
    k = Kernel("64M", profile)
    dev = MemDevice(k.pgdat, "8M", limits=QueueLimits(max_hw_sectors_kb=1024,
                                                      max_segments=256))
    dev.cq.synchronous = False
    bio, pages = _user_bio(k, dev)
    bio_set_pages_dirty(bio)
    bio.bi_end_io = bio_check_pages_dirty
    submit_bio(bio)
    flags = k.pgdat.pages.flags
    heads = k.pgdat.pages.head[pages]
    if cleaned:  # writeback cleaned one page while the device was writing it
        flags[heads[7]] &= ~np.uint32(PG.PG_dirty)
    before = bio_dirty_deferred(k.pgdat)
    dev.cq.run()
    assert bio_dirty_deferred(k.pgdat) - before == (1 if cleaned else 0)
    assert not k.pgdat.system_wq.pending
    assert ((flags[heads] & np.uint32(PG.PG_dirty)) != 0).all()
    acq, rel = k.vmstat.pins()
    assert acq == rel

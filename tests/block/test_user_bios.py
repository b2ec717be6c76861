"""Bios built from user memory and run through the block layer: splitting never changes
pins (spec §11 item 22), device errors complete the bio with the kernel's status and leave
nothing held, MemDevice and FileDevice move the same bytes."""

from __future__ import annotations

import numpy as np
import pytest

from dioscope.block.bio import bio_alloc, bio_iov_iter_get_pages, bio_release_pages
from dioscope.block.blk_core import submit_bio
from dioscope.block.blk_settings import QueueLimits
from dioscope.block.blk_types import BLK_STS, REQ_OP
from dioscope.block.devices import EIOOnRequest, FileDevice, MemDevice, ShortTransfer
from dioscope.lib.iov_iter import ITER_DEST, iov_iter_init
from dioscope.machine import Kernel
from dioscope.sanitizer import Sanitizer

PROFILES = ["5.9", "5.9-pin", "6.18"]
PINNED = {"5.9": 0, "5.9-pin": 256, "6.18": 256}


def _read_1m(k: Kernel, dev, p, buf: int):  # type: ignore[no-untyped-def]
    """One 1 MiB READ bio into ``buf``; end_io releases the pages. Return (bio, statuses)."""
    it = iov_iter_init(k.pgdat, ITER_DEST, [(buf, 1 << 20)], 1, 1 << 20, p.mm)
    bio = bio_alloc(dev, 256, REQ_OP.REQ_OP_READ)
    assert bio is not None
    assert bio_iov_iter_get_pages(bio, it, 511) == 0
    assert bio.bi_iter.bi_size == 1 << 20
    statuses: list[int] = []

    def end_io(b):  # type: ignore[no-untyped-def]
        statuses.append(int(b.bi_status))
        bio_release_pages(b, True)

    bio.bi_end_io = end_io
    return bio, statuses


@pytest.mark.parametrize("profile", PROFILES)
def test_split_into_8_requests_keeps_pins(profile: str) -> None:
    k = Kernel("64M", profile)
    lim = QueueLimits(max_sectors_kb=128, max_hw_sectors_kb=128)
    dev = MemDevice(k.pgdat, "16M", limits=lim)
    disk = np.random.default_rng(1).integers(0, 256, 1 << 20, dtype=np.uint8).tobytes()
    dev.write_disk(0, disk)
    p = k.spawn()
    buf = p.mmap(1 << 20)
    p.touch(buf, 1 << 20, write=True)
    san = Sanitizer(k.pgdat)
    a0 = k.vmstat.pins()
    bio, statuses = _read_1m(k, dev, p, buf)
    held = k.vmstat.pins()
    issued0 = dev.nr_issued
    submit_bio(bio)
    dev.cq.run()
    assert dev.nr_issued - issued0 == 8
    assert statuses == [0]
    acq, rel = k.vmstat.pins()
    assert held[0] - a0[0] == acq - a0[0] == PINNED[profile]  # splitting took no pins
    assert rel - a0[1] == PINNED[profile]
    assert p.read_user(buf, 1 << 20) == disk
    san.check_quiescent()
    san.assert_clean()


@pytest.mark.parametrize("profile", PROFILES)
@pytest.mark.parametrize("fault", ["eio-first", "eio-third", "short"])
def test_device_errors_release_everything(profile: str, fault: str) -> None:
    k = Kernel("64M", profile)
    lim = QueueLimits(max_sectors_kb=128, max_hw_sectors_kb=128)
    dev = MemDevice(k.pgdat, "16M", limits=lim)
    p = k.spawn()
    buf = p.mmap(1 << 20)
    p.touch(buf, 1 << 20, write=True)
    san = Sanitizer(k.pgdat)
    if fault == "eio-first":
        dev.inject(EIOOnRequest(1))
    elif fault == "eio-third":
        dev.inject(EIOOnRequest(3))
    else:
        dev.inject(ShortTransfer(2, 4096))
    refs0 = k.pgdat.pages.refcount.copy()
    bio, statuses = _read_1m(k, dev, p, buf)
    submit_bio(bio)
    dev.cq.run()
    assert statuses == [int(BLK_STS.BLK_STS_IOERR)]
    acq, rel = k.vmstat.pins()
    assert acq == rel
    np.testing.assert_array_equal(k.pgdat.pages.refcount, refs0)
    san.check_quiescent()
    san.assert_clean()


def test_mem_and_file_devices_move_the_same_bytes(tmp_path) -> None:  # type: ignore[no-untyped-def]
    disk = np.random.default_rng(3).integers(0, 256, 4 << 20, dtype=np.uint8).tobytes()
    results = []
    for kind in ("mem", "file"):
        k = Kernel("64M", "6.18")
        if kind == "mem":
            dev = MemDevice(k.pgdat, "8M")
        else:
            dev = FileDevice(k.pgdat, tmp_path / "disk.img", "8M")
        dev.write_disk(0, disk)
        p = k.spawn()
        buf = p.mmap(1 << 20)
        p.touch(buf, 1 << 20, write=True)
        bio, statuses = _read_1m(k, dev, p, buf)
        bio.bi_iter.bi_sector = 2048
        submit_bio(bio)
        dev.cq.run()
        assert statuses == [0]
        results.append(p.read_user(buf, 1 << 20))
    assert results[0] == results[1] == disk[1 << 20 : 2 << 20]

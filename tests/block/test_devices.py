"""MemDevice and FileDevice: byte identity, the O_DIRECT / buffered choice, fault injection,
and that every fault point leaves the bio completed with the kernel's status and no page
reference or pin outstanding."""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from dioscope.block import devices
from dioscope.block.bio import bio_alloc, bio_iov_iter_get_pages, bio_release_pages
from dioscope.block.blk_core import blk_finish_plug, blk_start_plug, submit_bio
from dioscope.block.blk_settings import QueueLimits
from dioscope.block.blk_types import BLK_STS, REQ_FLAG, Bio
from dioscope.block.devices import (
    BlockDevice,
    EIOOnRequest,
    EIOOnSectors,
    FileDevice,
    MemDevice,
    ShortTransfer,
)
from dioscope.kernel.trace import TraceBuffer
from dioscope.lib.iov_iter import ITER_DEST, ITER_SOURCE, iov_iter_init
from dioscope.machine import Kernel
from dioscope.mm.page_alloc import alloc_pages

LIMITS = {"max_hw_sectors_kb": 2147483647, "max_segment_size": 0xFFFFFFFF,
          "max_sectors_kb": 64, "max_segments": 32, "dma_alignment": 3}
CAP = 4 << 20


def _workload(k: Kernel, dev: BlockDevice, seed: int) -> list[bytes]:
    """Random reads and writes of random layouts (scattered or contiguous pages, 512-byte
    pieces at odd memory offsets), some in plugs; returns the bytes every read brought in."""
    rng = np.random.default_rng(seed)
    got: list[bytes] = []
    pool = np.array([alloc_pages(k.pgdat, 0) for _ in range(600)], np.int64)
    big = alloc_pages(k.pgdat, 6)
    for step in range(60):
        op = int(rng.integers(0, 2))
        kind = int(rng.integers(0, 3))
        if kind == 0:  # scattered whole pages
            n = int(rng.integers(1, 40))
            rows = [(int(p), 4096, 0) for p in rng.choice(pool, n, replace=False)]
        elif kind == 1:  # one multi-page bvec
            n = int(rng.integers(1, 64))
            rows = [(big, n * 4096, 0)]
        else:  # 512-byte multiples at unaligned memory offsets (dma_alignment 3)
            n = int(rng.integers(1, 8))
            rows = [(int(p), 512 * int(rng.integers(1, 7)), 4 * int(rng.integers(0, 100)))
                    for p in rng.choice(pool, n, replace=False)]
        size = sum(r[1] for r in rows)
        sector = int(rng.integers(0, (CAP - size) // 512))
        bio = Bio(dev, len(rows), op | int(REQ_FLAG.REQ_SYNC), k.pgdat)
        for i, (p, ln, off) in enumerate(rows):
            bio.set_bvec(i, p, ln, off)
        bio.bi_vcnt, bio.bi_iter.bi_size, bio.bi_iter.bi_sector = len(rows), size, sector
        if op:  # fill the source with fresh bytes
            for p, ln, off in rows:
                k.pgdat.mem.span(p, off, ln)[:] = rng.integers(0, 256, ln, np.uint8).tobytes()
        statuses: list[int] = []
        bio.bi_end_io = lambda b, s=statuses: s.append(b.bi_status)
        plug = blk_start_plug() if step % 3 == 0 else None
        submit_bio(bio)
        if plug is not None:
            blk_finish_plug(plug)
        assert statuses == [0]
        if not op:
            got.append(b"".join(bytes(k.pgdat.mem.span(p, off, ln)) for p, ln, off in rows))
    return got


def test_mem_and_file_devices_identical(tmp_path: Path) -> None:
    k1, k2 = Kernel("64M", "6.18"), Kernel("64M", "6.18")
    mem = MemDevice(k1.pgdat, CAP, limits=QueueLimits(**LIMITS))
    with FileDevice(k2.pgdat, tmp_path / "disk", CAP, limits=QueueLimits(**LIMITS)) as fdev:
        a = _workload(k1, mem, 11)
        b = _workload(k2, fdev, 11)
        assert a == b
        assert mem.read_disk(0, CAP) == fdev.read_disk(0, CAP)
        assert fdev.bytes_read == mem.bytes_read and fdev.bytes_written == mem.bytes_written
        assert fdev.buffered_requests > 0  # the unaligned pieces
        if fdev.direct_fd is not None:
            assert fdev.direct_requests > 0
        assert mem.nr_issued == fdev.nr_issued > 60  # splits: more requests than bios


def test_file_device_sizes_and_limits(tmp_path: Path) -> None:
    k = Kernel("64M", "6.18")
    path = tmp_path / "disk"
    path.write_bytes(b"x" * 8192)
    with FileDevice(k.pgdat, path) as dev:
        assert dev.nr_sectors == 16
    with FileDevice(k.pgdat, path, "1M", limits=QueueLimits(max_segments=7)) as dev:
        assert os.path.getsize(path) == 1 << 20 and dev.limits.max_segments == 7
        assert dev.read_disk(0, 8193) == b"x" * 8192 + b"\0"


def test_file_device_direct_io_used_when_aligned(tmp_path: Path) -> None:
    k = Kernel("64M", "6.18")
    with FileDevice(k.pgdat, tmp_path / "disk", "1M",
                    limits=QueueLimits(**LIMITS)) as dev:
        if dev.direct_fd is None:
            pytest.skip(f"O_DIRECT is not supported on {tmp_path}")
        p = alloc_pages(k.pgdat, 0)
        k.pgdat.mem.frames[p] = 7
        bio = Bio(dev, 1, 1, k.pgdat)
        bio.set_bvec(0, p, 4096, 0)
        bio.bi_vcnt, bio.bi_iter.bi_size = 1, 4096
        submit_bio(bio)
        assert (dev.direct_requests, dev.buffered_requests) == (1, 0)
        assert dev.read_disk(0, 4096) == b"\7" * 4096


# --- faults ----------------------------------------------------------------------------------
def _devices(tmp_path: Path) -> list[Callable[[Kernel], BlockDevice]]:
    return [
        lambda k: MemDevice(k.pgdat, CAP, limits=QueueLimits(**LIMITS)),
        lambda k: FileDevice(k.pgdat, tmp_path / "disk", CAP, limits=QueueLimits(**LIMITS)),
    ]


@pytest.fixture(params=["mem", "file"])
def make_dev(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[Kernel], Any]:
    return _devices(tmp_path)[0 if request.param == "mem" else 1]


def _four_bios(k: Kernel, dev: BlockDevice, op: int) -> tuple[list[Bio], list[int], list[int]]:
    """Four 8-sector bios at sectors 0, 8, 16, 24 in one plug: one request of 32 sectors."""
    pfns = [alloc_pages(k.pgdat, 0) for _ in range(4)]
    for i, p in enumerate(pfns):
        k.pgdat.mem.frames[p] = 0x10 + i
    bios, statuses = [], []
    plug = blk_start_plug()
    for i, p in enumerate(pfns):
        bio = Bio(dev, 1, op, k.pgdat)
        bio.set_bvec(0, p, 4096, 0)
        bio.bi_vcnt, bio.bi_iter.bi_size, bio.bi_iter.bi_sector = 1, 4096, 8 * i
        bio.bi_end_io = lambda b, s=statuses: s.append(int(b.bi_status))
        bios.append(bio)
        submit_bio(bio)
    blk_finish_plug(plug)
    return bios, statuses, pfns


IOERR = int(BLK_STS.BLK_STS_IOERR)


@pytest.mark.parametrize(("fault", "statuses", "written", "complete"), [
    (EIOOnRequest(nth=1), [IOERR] * 4, 0, ["0 + 32 [-5]"]),
    (EIOOnRequest(nth=2), [0] * 4, 4, ["0 + 32 [0]"]),     # the 2nd request never comes
    (EIOOnSectors(start=31, end=40), [IOERR] * 4, 0, ["0 + 32 [-5]"]),
    (EIOOnSectors(start=32, end=40), [0] * 4, 4, ["0 + 32 [0]"]),
    (ShortTransfer(nth=1, nbytes=12288), [0, 0, 0, IOERR], 3,
     ["0 + 24 [0]", "24 + 8 [-5]"]),
    (ShortTransfer(nth=1, nbytes=10240), [0, 0, IOERR, IOERR], 2.5,
     ["0 + 20 [0]", "20 + 12 [-5]"]),
    (ShortTransfer(nth=1, nbytes=0), [IOERR] * 4, 0, ["0 + 32 [-5]"]),
    (ShortTransfer(nth=1, nbytes=16384), [0] * 4, 4, ["0 + 32 [0]"]),  # not short at all
])
def test_write_faults(make_dev: Callable[[Kernel], Any], fault: Any, statuses: list[int],
                      written: float, complete: list[str]) -> None:
    k = Kernel("64M", "6.18")
    dev = make_dev(k)
    dev.inject(fault)
    tb = TraceBuffer(k.pgdat.hooks, events={"block_rq_complete"})
    _bios, got, _pfns = _four_bios(k, dev, 1)
    assert got == statuses
    assert [line.split(") ", 1)[1].replace(" be,0,4", "") for line in tb.lines()] == complete
    disk = dev.read_disk(0, 16384)
    n = int(written * 4096)
    assert disk[:n] == b"".join(bytes([0x10 + i]) * 4096 for i in range(4))[:n]
    assert disk[n:] == b"\0" * (16384 - n)


def test_read_fault_moves_no_bytes(make_dev: Callable[[Kernel], Any]) -> None:
    k = Kernel("64M", "6.18")
    dev = make_dev(k)
    dev.write_disk(0, b"\xaa" * 16384)
    dev.inject(ShortTransfer(nth=1, nbytes=4096))
    _bios, got, pfns = _four_bios(k, dev, 0)
    assert got == [0, IOERR, IOERR, IOERR]
    assert [int(k.pgdat.mem.frames[p][0]) for p in pfns] == [0xAA, 0x11, 0x12, 0x13]


def test_fault_rules() -> None:
    k = Kernel("64M", "6.18")
    dev = MemDevice(k.pgdat, CAP)
    with pytest.raises(ValueError, match="not a whole number of sectors"):
        dev.inject(ShortTransfer(nth=1, nbytes=100))
    with pytest.raises(ValueError, match="at least 1"):
        dev.inject(EIOOnRequest(nth=0))
    f = dev.inject(EIOOnSectors(start=0, end=8))
    for _ in range(2):
        _four_bios(k, dev, 1)
    assert f.fired == 2  # a sector range stays armed
    dev.clear_faults()
    assert _four_bios(k, dev, 1)[1] == [0] * 4


# --- pins and references across every fault point ----------------------------------------------
FAULTS = [None, EIOOnRequest(nth=1), EIOOnRequest(nth=5), EIOOnSectors(start=100, end=108),
          ShortTransfer(nth=2, nbytes=4096), ShortTransfer(nth=8, nbytes=512)]


@pytest.mark.parametrize("profile", ["5.9", "5.9-pin", "6.18"])
@pytest.mark.parametrize("fault", FAULTS, ids=lambda f: type(f).__name__ if f else "none")
@pytest.mark.parametrize("direction", [ITER_DEST, ITER_SOURCE], ids=["read", "write"])
def test_no_pin_or_ref_outstanding(profile: str, fault: Any, direction: int) -> None:
    """A 1 MiB Direct I/O bio from user memory (bio_iov_iter_get_pages), split into 8
    requests by max_sectors_kb=128, completes once with the kernel's status, and its
    end_io's bio_release_pages gives back every reference or pin taken."""
    import copy

    k = Kernel("64M", profile)
    proc = k.spawn()
    addr = proc.mmap(1 << 20)
    proc.touch(addr, 1 << 20, write=True)
    dev = MemDevice(k.pgdat, CAP, limits=QueueLimits(max_hw_sectors_kb=1024,
                                                     max_sectors_kb=128, max_segments=256))
    if fault is not None:
        dev.inject(copy.copy(fault))
    p = k.pgdat.pages
    rc0, pc0 = p.refcount.copy(), p.pincount.copy()
    acq0, rel0 = k.vmstat.pins()
    it = iov_iter_init(k.pgdat, direction, [(addr, 1 << 20)], 1, 1 << 20, proc.mm)
    op = 0 if direction == ITER_DEST else 1
    bio = bio_alloc(dev, 256, op | int(REQ_FLAG.REQ_SYNC), k.pgdat)
    assert bio is not None
    assert bio_iov_iter_get_pages(bio, it) == 0
    bio.bi_iter.bi_sector = 64
    ends: list[int] = []

    def end_io(b: Bio) -> None:
        ends.append(int(b.bi_status))
        bio_release_pages(b, mark_dirty=direction == ITER_DEST)

    bio.bi_end_io = end_io
    submit_bio(bio)
    assert dev.nr_issued == 8
    want = 0 if fault is None else IOERR
    if isinstance(fault, EIOOnRequest) and fault.nth > 8:
        want = 0
    assert ends == [want]
    assert (p.refcount != rc0).sum() == 0 and (p.pincount != pc0).sum() == 0
    acq, rel = k.vmstat.pins()
    assert acq - acq0 == rel - rel0 == (256 if k.cfg.DIO_FOLL_PIN else 0)


# --- the host side of FileDevice ---------------------------------------------------------------
PATTERN = bytes(range(256)) * 64  # 16 KiB


def _file_dev(k: Kernel, tmp_path: Path) -> FileDevice:
    dev = FileDevice(k.pgdat, tmp_path / "disk", "1M", limits=QueueLimits(**LIMITS))
    dev.write_disk(0, PATTERN)
    return dev


@pytest.mark.parametrize("bounce", [False, True], ids=["iovecs", "bounce"])
def test_short_host_transfers_are_continued(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                            bounce: bool) -> None:
    """Whether the segments go to the host as iovecs or through the bounce buffer, a short
    host transfer is continued from where it stopped and every byte lands in its frame."""
    k = Kernel("64M", "6.18")
    monkeypatch.setattr(devices, "BOUNCE_READ_SEGS", 1 if bounce else 1 << 30)
    with _file_dev(k, tmp_path) as dev:
        real = os.preadv
        calls: list[int] = []

        def short(fd: int, bufs: list[memoryview], off: int) -> int:
            calls.append(len(bufs))
            return real(fd, [bufs[0][: max(512, len(bufs[0]) // 2)]], off)

        monkeypatch.setattr(os, "preadv", short)
        _bios, got, pfns = _four_bios(k, dev, 0)
        monkeypatch.undo()
        assert got == [0] * 4
        assert b"".join(bytes(k.pgdat.mem.frame(p)) for p in pfns) == PATTERN
        # Every call moved half of the first buffer (at least 512 bytes): the iovec list
        # shrinks as buffers are used up, down to the last one; bounced, one buffer always.
        if bounce:  # one 16 KiB buffer: 8 KiB, 4, 2, 1, then 512 twice
            assert calls == [1] * 6
        else:
            assert len(calls) > 8 and calls[-1] == 1
            assert all(a >= b for a, b in itertools.pairwise(calls))


@pytest.mark.parametrize("bounce", [False, True], ids=["iovecs", "bounce"])
def test_writes_reach_the_disk_through_iovecs_or_the_bounce_buffer(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, bounce: bool) -> None:
    k = Kernel("64M", "6.18")
    monkeypatch.setattr(devices, "BOUNCE_WRITE_SEGS", 1 if bounce else 1 << 30)
    with _file_dev(k, tmp_path) as dev:
        real = os.pwritev
        calls: list[int] = []

        def spy(fd: int, bufs: list[memoryview], off: int) -> int:
            calls.append(len(bufs))
            return real(fd, bufs, off)

        monkeypatch.setattr(os, "pwritev", spy)
        _bios, got, _pfns = _four_bios(k, dev, 1)
        monkeypatch.undo()
        assert got == [0] * 4
        assert dev.read_disk(0, 16384) == b"".join(bytes([0x10 + i]) * 4096 for i in range(4))
        assert (calls == [1]) if bounce else (len(calls) == 1 and calls[0] > 1)


def test_host_eof_or_error_fails_the_rest(tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    k = Kernel("64M", "6.18")
    with _file_dev(k, tmp_path) as dev:
        real = os.preadv
        budget = [6144]

        def stingy(fd: int, bufs: list[memoryview], off: int) -> int:
            want = min(budget[0], len(bufs[0]))
            budget[0] -= want
            return real(fd, [bufs[0][:want]], off) if want else 0  # then "EOF"

        monkeypatch.setattr(os, "preadv", stingy)
        _bios, got, pfns = _four_bios(k, dev, 0)
        monkeypatch.undo()
        assert got == [0, IOERR, IOERR, IOERR]  # 6 KiB moved: the 2nd bio only half
        assert bytes(k.pgdat.mem.frame(pfns[0])) == PATTERN[:4096]
        assert bytes(k.pgdat.mem.frame(pfns[1]))[:2048] == PATTERN[4096:6144]

        def broken(fd: int, bufs: list[memoryview], off: int) -> int:
            raise OSError(5, "Input/output error")

        monkeypatch.setattr(os, "preadv", broken)
        assert _four_bios(k, dev, 0)[1] == [IOERR] * 4


def test_direct_refused_falls_back_to_buffered(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    k = Kernel("64M", "6.18")
    with _file_dev(k, tmp_path) as dev:
        if dev.direct_fd is None:
            pytest.skip(f"O_DIRECT is not supported on {tmp_path}")
        real = os.preadv

        def picky(fd: int, bufs: list[memoryview], off: int) -> int:
            if fd == dev.direct_fd:
                raise OSError(22, "Invalid argument")
            return real(fd, bufs, off)

        monkeypatch.setattr(os, "preadv", picky)
        _bios, got, pfns = _four_bios(k, dev, 0)
        monkeypatch.undo()
        assert got == [0] * 4 and dev.direct_requests == 1
        assert b"".join(bytes(k.pgdat.mem.frame(p)) for p in pfns) == PATTERN

"""fs/block_dev.py + fs/block_dev_file.py: a raw block device opened as a file, per profile.

Spec §4.10, §8.2, §11 items 24, 32; docs/research-6.18-bio.md §3.9 and its host rows (1, 4,
19, 21). Every case checks the return, the data, the nr_foll_pin_* deltas, and that nothing
leaked (sanitizer clean and quiescent, every page's refcount back).
"""

from __future__ import annotations

import errno

import numpy as np
import pytest

from dioscope.block.blk_types import REQ_FLAG, REQ_OP
from dioscope.block.devices import EIOOnRequest, MemDevice
from dioscope.fs.block_dev import blkdev_direct_IO
from dioscope.fs.block_dev_file import blkdev_open
from dioscope.fs.direct_io import EIOCBQUEUED
from dioscope.fs.fs_types import IOCB, OFLAG, File, Kiocb
from dioscope.fs.read_write import do_iter_read, do_iter_write
from dioscope.lib.iov_iter import ITER_DEST, ITER_SOURCE, IovIter, iov_iter_init
from dioscope.machine import Kernel
from dioscope.sanitizer import Sanitizer
from dioscope.syscalls.process import Process

P = 4096
KiB, MiB = 1 << 10, 1 << 20
PROFILES = ("5.9", "5.9-pin", "6.18")
DIRECT = OFLAG.O_RDWR | OFLAG.O_DIRECT


@pytest.fixture(params=PROFILES)
def profile(request: pytest.FixtureRequest) -> str:
    return str(request.param)


class Rig:
    """A machine, a 64 MiB disk whose words hold their own offsets, a process."""

    def __init__(self, profile: str) -> None:
        self.k = Kernel(mem="256M", profile=profile)
        self.dev = MemDevice(self.k.pgdat, "64M")
        self.dev.data[:] = np.arange(8 * MiB, dtype=np.uint64).view(np.uint8)
        self.p: Process = self.k.spawn()
        self.pgdat = self.k.pgdat

    def buf(self, size: int, offset: int = 0, fill: int = 0xEE) -> int:
        addr = self.p.mmap(size + offset + P)
        self.p.write_user(addr, bytes([fill]) * (size + offset + P))
        return addr + offset

    def it(self, write: bool, addr: int, n: int) -> IovIter:
        return iov_iter_init(self.pgdat, ITER_SOURCE if write else ITER_DEST, [(addr, n)], 1,
                             n, self.p.mm)

    def read(self, f: File, addr: int, n: int, pos: int) -> int:
        return do_iter_read(f, self.it(False, addr, n), pos)

    def write(self, f: File, addr: int, n: int, pos: int) -> int:
        return do_iter_write(f, self.it(True, addr, n), pos)

    def disk(self, off: int, n: int) -> bytes:
        return self.dev.read_disk(off, n)

    def start(self) -> None:
        """Snapshot counters and refcounts; attach a sanitizer."""
        self.san = Sanitizer(self.pgdat)
        self.san.attach()
        self.refs = self.pgdat.pages.refcount.copy()
        self.pins0 = self.k.vmstat.pins()

    def done(self) -> tuple[int, int]:
        self.san.check_quiescent()
        self.san.assert_clean()
        self.san.detach()
        changed = np.flatnonzero(self.pgdat.pages.refcount != self.refs)
        assert not len(changed), f"refcounts changed: pfns {changed[:8].tolist()}"
        a, r = self.k.vmstat.pins()
        return a - self.pins0[0], r - self.pins0[1]


def pins(profile: str, n: int) -> tuple[int, int]:
    """One pin per page per bio presence: none under 5.9 (FOLL_GET)."""
    return (0, 0) if profile == "5.9" else (n, n)


# --- reads: simple and multi-bio paths ---------------------------------------------------------
@pytest.mark.parametrize(("size", "offset", "npages"), [
    (MiB, 0, 256),  # simple path (spec §11 item 24)
    (MiB, 512, 257),  # 257 pages: multi-bio path (item 25 shape)
    (2 * MiB, 0, 512),  # multi-bio path, two full bios
    (4 * KiB, 0, 1),
])
def test_direct_read(profile: str, size: int, offset: int, npages: int) -> None:
    rig = Rig(profile)
    f = blkdev_open(rig.dev, DIRECT)
    addr = rig.buf(size, offset)
    rig.start()
    assert rig.read(f, addr, size, 8 * MiB) == size
    assert rig.p.read_user(addr, size) == rig.disk(8 * MiB, size)
    assert rig.done() == pins(profile, npages)


def test_second_half_unmapped_simple_path_short_count(profile: str) -> None:
    """Spec §11 item 32: the simple path pins 128 pages, reads 512 KiB and returns it; the
    buffered read of the rest faults at its first byte, so 524288 stands."""
    rig = Rig(profile)
    f = blkdev_open(rig.dev, DIRECT)
    addr = rig.buf(MiB)
    rig.p.munmap(addr + MiB // 2, MiB // 2 + P)
    rig.start()
    assert rig.read(f, addr, MiB, 0) == MiB // 2
    assert rig.p.read_user(addr, MiB // 2) == rig.disk(0, MiB // 2)
    assert rig.done() == pins(profile, 128)


def test_multi_bio_partial_pin_is_efault(profile: str) -> None:
    """Spec §4.10: 2 MiB with the last 512 KiB unmapped: bio 1 takes 256 pages, bio 2 the
    128 that can be pinned, bio 3 pins nothing: BLK_STS_IOERR on it and the call returns
    -EFAULT though 1.5 MiB landed."""
    rig = Rig(profile)
    f = blkdev_open(rig.dev, DIRECT)
    addr = rig.buf(2 * MiB)
    rig.p.munmap(addr + 3 * MiB // 2, MiB // 2 + P)
    rig.start()
    assert rig.read(f, addr, 2 * MiB, 0) == -errno.EFAULT
    assert rig.p.read_user(addr, 3 * MiB // 2) == rig.disk(0, 3 * MiB // 2)
    assert rig.done() == pins(profile, 384)


@pytest.mark.parametrize("size", [MiB, 2 * MiB])
def test_eio(profile: str, size: int) -> None:
    """The first request fails. Multi-bio: no bio looks at an earlier bio's error, so every
    page is pinned and every bio submitted (docs/research-6.18-bio.md §3.9); -EIO."""
    rig = Rig(profile)
    f = blkdev_open(rig.dev, DIRECT)
    addr = rig.buf(size)
    rig.start()
    rig.dev.inject(EIOOnRequest(nth=1))
    assert rig.read(f, addr, size, 0) == -errno.EIO
    assert rig.done() == pins(profile, size // P)


# --- alignment ----------------------------------------------------------------------------------
@pytest.mark.parametrize(("buf_off", "pos", "length", "v59", "v618"), [
    # (buffer offset in page, file position, length): [5.9*] result, pins; [6.18] result, pins
    (512, 0, 4096, (4096, 2), (4096, 2)),
    (1, 0, 512, (-errno.EINVAL, 0), (512, 1)),  # host row 1: one in-page bvec, fast path
    (1, 0, 1024, (-errno.EINVAL, 0), (1024, 1)),
    (3585, 0, 512, (-errno.EINVAL, 0), (-errno.EINVAL, 2)),  # host rows 4-6: two pages
    (0, 100, 4096, (-errno.EINVAL, 0), (-errno.EINVAL, 0)),
    (0, 0, 1000, (-errno.EINVAL, 0), (-errno.EINVAL, 0)),
])
def test_alignment(profile: str, buf_off: int, pos: int, length: int,
                   v59: tuple[int, int], v618: tuple[int, int]) -> None:
    """[5.9] ``(pos | iov_iter_alignment) & 511`` before pinning; [6.18] only ``(pos | count)``
    at entry, user memory at bio split time — after pinning (pins released with the bio)."""
    rig = Rig(profile)
    f = blkdev_open(rig.dev, DIRECT)
    addr = rig.buf(8192, buf_off)
    rig.start()
    ret, npins = v618 if profile == "6.18" else v59
    assert rig.read(f, addr, length, pos) == ret
    assert rig.done() == pins(profile, npins)


# --- end of the device --------------------------------------------------------------------------
def test_end_of_device(profile: str) -> None:
    rig = Rig(profile)
    f = blkdev_open(rig.dev, DIRECT)
    addr = rig.buf(2 * P)
    cap = rig.dev.capacity
    rig.start()
    assert rig.read(f, addr, P, cap) == 0
    assert rig.read(f, addr, 2 * P, cap - P) == P
    assert rig.p.read_user(addr, P) == rig.disk(cap - P, P)
    assert rig.write(f, addr, P, cap) == -errno.ENOSPC
    assert rig.write(f, addr, 2 * P, cap - P) == P
    assert rig.done() == pins(profile, 2)


def test_zero_length(profile: str) -> None:
    rig = Rig(profile)
    f = blkdev_open(rig.dev, DIRECT)
    addr = rig.buf(P)
    rig.start()
    assert rig.read(f, addr, 0, 0) == 0
    assert rig.write(f, addr, 0, 0) == 0
    assert rig.done() == (0, 0)
    assert rig.dev.nr_issued == 0


# --- writes --------------------------------------------------------------------------------
def test_direct_write_dsync_uses_fua_then_flushes(profile: str) -> None:
    rig = Rig(profile)
    f = blkdev_open(rig.dev, DIRECT | OFLAG.O_DSYNC)
    addr = rig.buf(MiB, fill=0x5A)
    ops: list[int] = []
    orig = rig.dev.queue_rq

    def queue_rq(rq: object) -> None:
        ops.append(rq.cmd_flags)  # type: ignore[attr-defined]
        orig(rq)  # type: ignore[arg-type]

    rig.dev.queue_rq = queue_rq  # type: ignore[method-assign]
    rig.start()
    assert rig.write(f, addr, MiB, 4 * MiB) == MiB
    assert rig.disk(4 * MiB, MiB) == b"\x5a" * MiB
    writes = [o for o in ops if o & 0xFF == REQ_OP.REQ_OP_WRITE]
    assert writes and all(o & REQ_FLAG.REQ_FUA for o in writes)
    assert rig.dev.flushes >= 1
    assert rig.done() == pins(profile, 256)


def test_direct_write_partial_source_falls_back_to_buffered(profile: str) -> None:
    """A 1 MiB write whose second half is unmapped: the direct part writes 512 KiB; the
    buffered fallback faults at its first byte, so the call returns 524288."""
    rig = Rig(profile)
    f = blkdev_open(rig.dev, DIRECT)
    addr = rig.buf(MiB, fill=0x5A)
    rig.p.munmap(addr + MiB // 2, MiB // 2 + P)
    rig.start()
    assert rig.write(f, addr, MiB, 0) == MiB // 2
    assert rig.disk(0, MiB // 2) == b"\x5a" * (MiB // 2)
    assert rig.disk(MiB // 2, 8) == np.array([MiB // 16], np.uint64).tobytes()
    assert rig.done() == pins(profile, 128)


def test_buffered_io_through_bounce_pages(profile: str) -> None:
    """Without O_DIRECT: byte-granular, no pins, no page left behind."""
    rig = Rig(profile)
    f = blkdev_open(rig.dev, OFLAG.O_RDWR)
    addr = rig.buf(3000, fill=0x33)
    rig.start()
    before = rig.disk(12000, 3000)
    assert rig.write(f, addr, 1000, 12345) == 1000
    want = before[:345] + b"\x33" * 1000 + before[1345:]
    assert rig.disk(12000, 3000) == want
    rig.p.write_user(addr, bytes(3000))
    assert rig.read(f, addr, 3000, 12000) == 3000
    assert rig.p.read_user(addr, 3000) == want
    assert rig.done() == (0, 0)


def test_nowait_without_direct_is_eopnotsupp(profile: str) -> None:
    rig = Rig(profile)
    f = blkdev_open(rig.dev, OFLAG.O_RDWR)
    addr = rig.buf(P)
    it = rig.it(True, addr, P)
    assert f.f_op.write_iter(Kiocb(f, 0, IOCB.IOCB_NOWAIT | IOCB.IOCB_WRITE), it) == (
        -errno.EOPNOTSUPP)


def test_async_kiocb(profile: str) -> None:
    """An async kiocb: [5.9] the multi-bio path, [6.18] ``__blkdev_direct_IO_async``; both
    return -EIOCBQUEUED and complete through ki_complete."""
    rig = Rig(profile)
    f = blkdev_open(rig.dev, DIRECT)
    addr = rig.buf(MiB)
    got: list[int] = []
    rig.start()
    iocb = Kiocb(f, 0, IOCB.IOCB_DIRECT, lambda iocb, r: got.append(r))
    assert blkdev_direct_IO(iocb, rig.it(False, addr, MiB)) == -EIOCBQUEUED
    assert got == [MiB] and iocb.ki_pos == MiB
    assert rig.p.read_user(addr, MiB) == rig.disk(0, MiB)
    assert rig.done() == pins(profile, 256)


def test_open_the_device_through_the_syscall_layer(profile: str) -> None:
    """``/dev/vda`` opened with O_DIRECT through the Process API reaches this path."""
    import os

    from dioscope.fs.block_dev_file import bdev_inode, blkdev_install

    rig = Rig(profile)
    rig.k.add_disk(rig.dev)
    blkdev_install(rig.k.vfs)
    fd = rig.p.open("/dev/vda", os.O_RDWR | os.O_DIRECT)
    addr = rig.buf(MiB)
    rig.start()
    assert rig.p.pread(fd, addr, MiB, 2 * MiB) == MiB
    assert rig.p.read_user(addr, MiB) == rig.disk(2 * MiB, MiB)
    assert rig.done() == pins(profile, 256)
    f = rig.p.files.get(fd)
    assert f is not None and f.f_inode is bdev_inode(rig.dev)

"""fs/direct_io.py: the legacy engine (``fs/direct-io.c``) per profile, exact numbers.

A test-only filesystem maps file block n onto disk block n (4 KiB blocks on a 512-byte-LBS
MemDevice) with the blocks listed in ``mapped``; ``create`` allocates. Every case checks
the return, the bytes, the nr_foll_pin_* deltas, and that nothing leaked: the sanitizer is
quiescent and clean, and every page's refcount (user pages, the zero page) is back.

Spec §6.3 and §11 items 32-35: a user page sent in one piece costs three references (queue,
"in dio", bio): 5.9 plain refs (0/0 pins), 5.9-pin three counted pins, 6.18 one counted pin
(extract) + two uncounted ``folio_add_pin`` + three counted unpins.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass, field

import numpy as np
import pytest

from dioscope.block.blk_mq import CompletionQueue
from dioscope.block.devices import EIOOnRequest, MemDevice
from dioscope.fs.direct_io import DIO, EIOCBQUEUED
from dioscope.fs.direct_io import __blockdev_direct_IO as do_dio
from dioscope.fs.fs_types import (
    DIO_ENGINES,
    FMODE,
    IOCB,
    S_IFREG,
    BufferHead,
    File,
    Inode,
    Kiocb,
    SuperBlock,
)
from dioscope.lib.iov_iter import (
    ITER_DEST,
    ITER_SOURCE,
    IovIter,
    iov_iter_bvec,
    iov_iter_count,
    iov_iter_init,
    iov_iter_revert,
)
from dioscope.machine import Kernel
from dioscope.mm.page_alloc import ZERO_PFN, PgData, alloc_pages
from dioscope.sanitizer import Sanitizer

P = 4096
KiB, MiB = 1 << 10, 1 << 20
PROFILES = ("5.9", "5.9-pin", "6.18")
LOCK_SKIP = DIO.DIO_LOCKING | DIO.DIO_SKIP_HOLES


@dataclass
class Rig:
    """A machine, a disk, one file of the test filesystem, a process with a buffer."""

    k: Kernel
    dev: MemDevice
    inode: Inode
    file: File
    mapped: set[int] = field(default_factory=set)
    gap_every: int = 0
    """When set, a free disk block follows every ``gap_every`` file blocks (extents)."""
    get_block_calls: list[tuple[int, int]] = field(default_factory=list)

    @property
    def pgdat(self) -> PgData:
        return self.k.pgdat

    def disk_block(self, iblock: int) -> int:
        return iblock + (iblock // self.gap_every if self.gap_every else 0)

    def contiguous(self, a: int, b: int) -> bool:
        return b in self.mapped and self.disk_block(b) == self.disk_block(a) + 1

    def get_block(self, inode: Inode, iblock: int, bh: BufferHead, create: int) -> int:
        """File block n is disk block n (plus the gaps); ``bh.b_size`` bytes wanted, the
        disk-contiguous mapped run given."""
        self.get_block_calls.append((iblock, create))
        want = max(bh.b_size // P, 1)
        blocknr = self.disk_block(iblock)
        if iblock in self.mapped:
            n = 1
            while n < want and self.contiguous(iblock + n - 1, iblock + n):
                n += 1
            bh.mapped, bh.b_blocknr, bh.b_size, bh.b_bdev = True, blocknr, n * P, self.dev
        elif create:
            self.mapped.add(iblock)
            bh.mapped, bh.new, bh.b_blocknr, bh.b_size, bh.b_bdev = True, True, blocknr, P, self.dev
        else:
            bh.b_size = P
        return 0

    def dio(self, it: IovIter, pos: int, flags: int = LOCK_SKIP, ki_flags: int = 0,
            ki_complete: object = None) -> int:
        if it.data_source == ITER_SOURCE:
            ki_flags |= IOCB.IOCB_WRITE
        iocb = Kiocb(self.file, pos, ki_flags | IOCB.IOCB_DIRECT, ki_complete)
        return do_dio(iocb, self.inode, self.dev, it, self.get_block, None, flags)


@pytest.fixture(params=PROFILES)
def profile(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def make_rig(profile: str, i_size: int = 4 * MiB, mapped: range | None = None,
             cq: CompletionQueue | None = None) -> Rig:
    k = Kernel(mem="256M", profile=profile)
    dev = MemDevice(k.pgdat, "64M", cq=cq) if cq else MemDevice(k.pgdat, "64M")
    # Each 8-byte word of the disk holds its own offset: data checks are exact.
    dev.data[: 16 * MiB] = np.arange(2 * MiB, dtype=np.uint64).view(np.uint8)
    sb = SuperBlock(dev, P, "legacy")
    inode = Inode(sb, 12, S_IFREG | 0o644, k.pgdat)
    inode.i_size = i_size
    f = File(inode, 0, FMODE.FMODE_READ | FMODE.FMODE_WRITE, None)
    rig = Rig(k, dev, inode, f)
    rig.mapped = set(mapped if mapped is not None else range(i_size // P))
    return rig


class Leakcheck:
    """Sanitizer attached, refcounts snapshotted; :meth:`done` proves nothing leaked."""

    def __init__(self, rig: Rig) -> None:
        self.rig = rig
        self.san = Sanitizer(rig.pgdat)
        self.san.attach()
        self.refs = rig.pgdat.pages.refcount.copy()
        self.pins = rig.k.vmstat.pins()

    def delta(self) -> tuple[int, int]:
        a, r = self.rig.k.vmstat.pins()
        return a - self.pins[0], r - self.pins[1]

    def done(self) -> tuple[int, int]:
        self.san.check_quiescent()
        self.san.assert_clean()
        self.san.detach()
        changed = np.flatnonzero(self.rig.pgdat.pages.refcount != self.refs)
        assert not len(changed), f"refcounts changed: pfns {changed[:8].tolist()}"
        assert not self.rig.k.events.events, self.rig.k.events.events
        return self.delta()


def user_buf(rig: Rig, size: int, fill: int = 0xEE, offset: int = 0) -> tuple[int, object]:
    """A faulted-in private anonymous buffer; return (address of the data, process)."""
    p = rig.k.spawn()
    addr = p.mmap(size + offset + P)
    p.write_user(addr, bytes([fill]) * (size + offset + P))
    return addr + offset, p


def disk(rig: Rig, off: int, n: int) -> bytes:
    return rig.dev.read_disk(off, n)


def read_it(rig: Rig, p: object, addr: int, n: int) -> IovIter:
    return iov_iter_init(rig.pgdat, ITER_DEST, [(addr, n)], 1, n, p.mm)  # type: ignore[attr-defined]


def write_it(rig: Rig, p: object, addr: int, n: int) -> IovIter:
    return iov_iter_init(rig.pgdat, ITER_SOURCE, [(addr, n)], 1, n, p.mm)  # type: ignore[attr-defined]


# --- spec §11 item 33: the three references per page ---------------------------------------
READ_1M = {"5.9": (0, 0), "5.9-pin": (768, 768), "6.18": (256, 768)}


def test_read_1mib_three_refs_per_page(profile: str) -> None:
    rig = make_rig(profile)
    addr, p = user_buf(rig, MiB)
    lc = Leakcheck(rig)
    ret = rig.dio(read_it(rig, p, addr, MiB), 0)
    assert ret == MiB
    assert p.read_user(addr, MiB) == disk(rig, 0, MiB)  # type: ignore[attr-defined]
    assert lc.done() == READ_1M[profile]


def test_read_pages_are_maybe_pinned_while_in_flight(profile: str) -> None:
    """At issue only the "bio" reference is left on each page: +1024 (a pin: queue and
    "in dio" references were dropped as the walk moved on) in 5.9-pin and 6.18, +1 in 5.9."""
    rig = make_rig(profile)
    addr, p = user_buf(rig, 64 * KiB)
    base = rig.pgdat.pages.refcount.copy()
    seen: list[np.ndarray] = []
    orig = rig.dev.queue_rq

    def queue_rq(rq: object) -> None:
        seen.append(rig.pgdat.pages.refcount - base)
        orig(rq)  # type: ignore[arg-type]

    rig.dev.queue_rq = queue_rq  # type: ignore[method-assign]
    assert rig.dio(read_it(rig, p, addr, 64 * KiB), 0) == 64 * KiB
    assert len(seen) == 1
    bumped = np.flatnonzero(seen[0])
    want = 1 if profile == "5.9" else 1024
    assert len(bumped) == 16
    assert set(seen[0][bumped].tolist()) == {want}
    assert np.array_equal(rig.pgdat.pages.refcount, base)


def test_read_offset_512_buffer_uses_the_device_block_size(profile: str) -> None:
    """A buffer 512 bytes into a page: not fs-block aligned, so DIO blocks are 512 bytes;
    4 KiB spans two pages, each sent in one piece: 2 x 3 references."""
    rig = make_rig(profile)
    addr, p = user_buf(rig, 4 * KiB, offset=512)
    lc = Leakcheck(rig)
    assert rig.dio(read_it(rig, p, addr, 4 * KiB), 8192) == 4 * KiB
    assert p.read_user(addr, 4 * KiB) == disk(rig, 8192, 4 * KiB)  # type: ignore[attr-defined]
    assert lc.done() == {"5.9": (0, 0), "5.9-pin": (6, 6), "6.18": (2, 6)}[profile]


@pytest.mark.parametrize(("buf_off", "pos", "length", "ok"), [
    (0x1FF, 0, 4096, False),
    (0x200, 0, 4096, True),
    (0xFFF, 0, 4096, False),
    (0x1000, 0, 4096, True),
    (0, 0x1FF, 4096, False),
    (0, 0x200, 4096, True),
    (0, 0, 0x1FF, False),
    (0, 0, 0x200, True),
])
def test_alignment_checked_before_anything_is_touched(profile: str, buf_off: int, pos: int,
                                                      length: int, ok: bool) -> None:
    """``(pos | iov_iter_alignment)`` against the fs block size, then the device's 512, in
    every profile (docs/research-6.18-bio.md §7): a misaligned request pins nothing."""
    rig = make_rig(profile)
    addr, p = user_buf(rig, 8192, offset=buf_off)
    lc = Leakcheck(rig)
    ret = rig.dio(read_it(rig, p, addr, length), pos)
    pins = lc.done()
    if ok:
        assert ret == length
    else:
        assert ret == -errno.EINVAL
        assert pins == (0, 0)
        assert rig.get_block_calls == []


def test_misaligned_read_at_or_past_eof_returns_0(profile: str) -> None:
    rig = make_rig(profile, i_size=8192)
    addr, p = user_buf(rig, 8192, offset=1)
    lc = Leakcheck(rig)
    assert rig.dio(read_it(rig, p, addr, 100), 8192) == 0
    assert rig.dio(read_it(rig, p, addr, 100), 9000) == 0
    assert lc.done() == (0, 0)


def test_zero_length(profile: str) -> None:
    rig = make_rig(profile)
    addr, p = user_buf(rig, P)
    lc = Leakcheck(rig)
    assert rig.dio(read_it(rig, p, addr, 0), 0) == 0
    assert rig.dio(write_it(rig, p, addr, 0), 0) == 0
    assert lc.done() == (0, 0)
    assert rig.dev.nr_issued == 0


# --- EOF and holes ----------------------------------------------------------------------------
def test_read_crossing_eof_is_clipped(profile: str) -> None:
    """8 KiB at 0 from a 1000-byte file: block 0 is read whole, block 1 is a hole past EOF
    (the walk stops); 1000 returned. Page 0: 3 refs; page 1: only the queue's."""
    rig = make_rig(profile, i_size=1000, mapped=range(1))
    addr, p = user_buf(rig, 8192)
    lc = Leakcheck(rig)
    assert rig.dio(read_it(rig, p, addr, 8192), 0) == 1000
    assert p.read_user(addr, P) == disk(rig, 0, P)  # type: ignore[attr-defined]
    assert p.read_user(addr + P, P) == b"\xee" * P  # type: ignore[attr-defined]
    assert lc.done() == {"5.9": (0, 0), "5.9-pin": (4, 4), "6.18": (2, 4)}[profile]


def test_read_hole_zero_fills_the_user_page(profile: str) -> None:
    """Blocks 0 and 2 mapped, 1 a hole inside i_size: the hole's DIO block is zeroed in the
    user page (no bio for it); 0 and 2 go in two bios (file-discontiguous)."""
    rig = make_rig(profile, i_size=3 * P, mapped=range(0, 3, 2))
    addr, p = user_buf(rig, 3 * P)
    lc = Leakcheck(rig)
    assert rig.dio(read_it(rig, p, addr, 3 * P), 0) == 3 * P
    got = p.read_user(addr, 3 * P)  # type: ignore[attr-defined]
    assert got == disk(rig, 0, P) + bytes(P) + disk(rig, 2 * P, P)
    assert lc.done() == {"5.9": (0, 0), "5.9-pin": (7, 7), "6.18": (3, 7)}[profile]
    assert rig.dev.nr_issued == 2


def test_read_second_half_unmapped_is_a_short_count(profile: str) -> None:
    """Spec §11 item 32: legacy returns 524288; the refill of page 128 faults (-EFAULT with
    data moved becomes the short count)."""
    rig = make_rig(profile)
    addr, p = user_buf(rig, MiB)
    p.munmap(addr + MiB // 2, MiB // 2 + P)  # type: ignore[attr-defined]
    lc = Leakcheck(rig)
    assert rig.dio(read_it(rig, p, addr, MiB), 0) == MiB // 2
    assert p.read_user(addr, MiB // 2) == disk(rig, 0, MiB // 2)  # type: ignore[attr-defined]
    assert lc.done() == {"5.9": (0, 0), "5.9-pin": (384, 384), "6.18": (128, 384)}[profile]


def test_read_fully_unmapped_is_efault(profile: str) -> None:
    rig = make_rig(profile)
    p = rig.k.spawn()
    addr = p.mmap(P)
    p.munmap(addr, P)
    lc = Leakcheck(rig)
    assert rig.dio(read_it(rig, p, addr, P), 0) == -errno.EFAULT
    assert lc.done() == (0, 0)


# --- writes -----------------------------------------------------------------------------------
def test_write_1mib(profile: str) -> None:
    rig = make_rig(profile)
    addr, p = user_buf(rig, MiB, fill=0x5A)
    lc = Leakcheck(rig)
    assert rig.dio(write_it(rig, p, addr, MiB), MiB) == MiB
    assert disk(rig, MiB, MiB) == b"\x5a" * MiB
    assert lc.done() == READ_1M[profile]


SUB_BLOCK_NEW = {"5.9": (0, 0), "5.9-pin": (7, 7), "6.18": (1, 3)}


def test_sub_block_write_into_a_new_block_zero_fills_from_the_zero_page(profile: str) -> None:
    """Spec §11 item 34: 512 bytes at 4 MiB + 512 of an empty tail: a new 4 KiB block. The
    512 bytes before and the 3072 after come from the zero page, each section with an "in
    dio" and a "bio" reference: 5.9-pin 4 counted pins on the zero page (+3 on the user
    page); 6.18 none on the zero page (1 acquired / 3 released for the user page)."""
    rig = make_rig(profile)
    addr, p = user_buf(rig, 512, fill=0x77)
    zero_before = int(rig.pgdat.pages.refcount[ZERO_PFN])
    rig.dev.write_disk(4 * MiB, b"\xab" * P)  # stale bytes the zero fill must hide
    lc = Leakcheck(rig)
    assert rig.dio(write_it(rig, p, addr, 512), 4 * MiB + 512) == 512
    assert disk(rig, 4 * MiB, P) == bytes(512) + b"\x77" * 512 + bytes(3072)
    assert lc.done() == SUB_BLOCK_NEW[profile]
    assert int(rig.pgdat.pages.refcount[ZERO_PFN]) == zero_before
    assert rig.get_block_calls == [(1024, 1)]


def test_sub_block_write_into_an_existing_block_does_not_zero(profile: str) -> None:
    rig = make_rig(profile)
    addr, p = user_buf(rig, 512, fill=0x77)
    lc = Leakcheck(rig)
    assert rig.dio(write_it(rig, p, addr, 512), 512) == 512
    assert disk(rig, 0, P) == (
        bytes(np.arange(64, dtype=np.uint64).view(np.uint8)) + b"\x77" * 512
        + bytes(np.arange(128, 512, dtype=np.uint64).view(np.uint8)))
    assert lc.done() == {"5.9": (0, 0), "5.9-pin": (3, 3), "6.18": (1, 3)}[profile]


def test_write_into_a_hole_stops_with_the_partial_count(profile: str) -> None:
    """Spec §11 item 35: blocks 0-1 mapped, block 2 a hole inside i_size: DIO_SKIP_HOLES does
    not allocate, the walk stops with -ENOTBLK, the engine returns the 8192 bytes written
    before it. The queue mapped all 4 pages: the caller reverts the iterator by
    (count - ret) - iov_iter_count() so the filesystem can write the rest buffered. Page 0,
    1: 3 refs; page 2: dropped at the hole; page 3: dropped by dio_cleanup."""
    rig = make_rig(profile, i_size=MiB, mapped=range(2))
    addr, p = user_buf(rig, 4 * P, fill=0x42)
    lc = Leakcheck(rig)
    it = write_it(rig, p, addr, 4 * P)
    ret = rig.dio(it, 0)
    assert ret == 2 * P
    assert iov_iter_count(it) == 0
    iov_iter_revert(it, (4 * P - ret) - iov_iter_count(it))
    assert iov_iter_count(it) == 2 * P
    assert disk(rig, 0, 2 * P) == b"\x42" * 2 * P
    assert 2 not in rig.mapped
    assert lc.done() == {"5.9": (0, 0), "5.9-pin": (8, 8), "6.18": (4, 8)}[profile]


def test_write_into_a_hole_allocates_without_skip_holes(profile: str) -> None:
    rig = make_rig(profile, i_size=MiB, mapped=range(2))
    addr, p = user_buf(rig, 4 * P, fill=0x42)
    lc = Leakcheck(rig)
    assert rig.dio(write_it(rig, p, addr, 4 * P), 0, flags=DIO.DIO_LOCKING) == 4 * P
    assert {2, 3} <= rig.mapped
    assert disk(rig, 0, 4 * P) == b"\x42" * 4 * P
    assert lc.done() == {"5.9": (0, 0), "5.9-pin": (12, 12), "6.18": (4, 12)}[profile]


def test_write_fault_with_mapped_blocks_zero_fills_and_is_efault(profile: str) -> None:
    """Spec §8.2: 1 MiB write whose source's second half is unmapped, file fully mapped: the
    remaining 128 mapped blocks are written from the zero page and the call is -EFAULT
    (page_errors wins over the partial count). Each zero-page block costs 3 references
    (queue, "in dio", bio): counted pins under 5.9-pin, nothing under 6.18."""
    rig = make_rig(profile)
    addr, p = user_buf(rig, MiB, fill=0x42)
    p.munmap(addr + MiB // 2, MiB // 2 + P)  # type: ignore[attr-defined]
    lc = Leakcheck(rig)
    assert rig.dio(write_it(rig, p, addr, MiB), 0) == -errno.EFAULT
    assert disk(rig, 0, MiB // 2) == b"\x42" * (MiB // 2)
    assert disk(rig, MiB // 2, MiB // 2) == bytes(MiB // 2)
    assert lc.done() == {"5.9": (0, 0), "5.9-pin": (768, 768), "6.18": (128, 384)}[profile]


def test_extending_write_is_synchronous_even_for_an_async_kiocb(profile: str) -> None:
    rig = make_rig(profile, i_size=P, mapped=range(1))
    addr, p = user_buf(rig, 2 * P, fill=0x11)
    done: list[int] = []
    lc = Leakcheck(rig)
    ret = rig.dio(write_it(rig, p, addr, 2 * P), 0, ki_complete=lambda iocb, r: done.append(r))
    assert ret == 2 * P and done == []
    assert lc.done() == {"5.9": (0, 0), "5.9-pin": (6, 6), "6.18": (2, 6)}[profile]


# --- errors, async, kernel iterators --------------------------------------------------------
@pytest.mark.parametrize("write", [False, True])
def test_eio_mid_request_releases_everything(profile: str, write: bool) -> None:
    """Four 64-block extents, four bios; the second request fails: -EIO (the other three
    land), and every reference is back."""
    rig = make_rig(profile)
    rig.gap_every = 64
    addr, p = user_buf(rig, MiB, fill=0x42)
    lc = Leakcheck(rig)
    rig.dev.inject(EIOOnRequest(nth=2))
    it = write_it(rig, p, addr, MiB) if write else read_it(rig, p, addr, MiB)
    assert rig.dio(it, 0) == -errno.EIO
    assert lc.done() == READ_1M[profile]
    if write:  # the last extent landed all the same
        assert disk(rig, 195 * P, 64 * P) == b"\x42" * 64 * P


def test_async_read_completes_through_ki_complete(profile: str) -> None:
    """With completions deferred, an async read returns -EIOCBQUEUED; running the device's
    completion queue completes the dio: ki_complete gets 1 MiB, ki_pos moves, and the async
    READ dirtied its pages before submission (bio_set_pages_dirty) and re-checked them."""
    rig = make_rig(profile, cq=CompletionQueue(synchronous=False))
    addr, p = user_buf(rig, MiB)
    got: list[int] = []
    lc = Leakcheck(rig)
    iocb = Kiocb(rig.file, 0, IOCB.IOCB_DIRECT, lambda iocb, r: got.append(r))
    ret = do_dio(iocb, rig.inode, rig.dev, read_it(rig, p, addr, MiB),
                               rig.get_block, None, LOCK_SKIP)
    assert ret == -EIOCBQUEUED and got == []
    rig.dev.cq.run()
    assert got == [MiB] and iocb.ki_pos == MiB
    assert p.read_user(addr, MiB) == disk(rig, 0, MiB)  # type: ignore[attr-defined]
    assert lc.done() == READ_1M[profile]


def test_bvec_destination(profile: str) -> None:
    """Kernel pages (ITER_BVEC, e.g. a loop device or copy_splice_read): [5.9] one page per
    refill with get_page; [5.9-pin] iov_iter_pin_pages WARNs and fails: -EFAULT, nothing
    read; [6.18] extracted without references (dio->is_pinned false): no pins at all."""
    rig = make_rig(profile)
    pages = [alloc_pages(rig.pgdat, 0) for _ in range(4)]
    it = iov_iter_bvec(rig.pgdat, ITER_DEST, [(pg, P, 0) for pg in pages], 4, 4 * P)
    ret = rig.dio(it, 0)
    if profile == "5.9-pin":
        assert ret == -errno.EFAULT
        assert [e.site for e in rig.k.events.events] == ["iov_iter_pin_pages"]
        assert rig.k.vmstat.pins() == (0, 0)
        return
    assert ret == 4 * P
    assert b"".join(bytes(rig.pgdat.mem.frames[pg]) for pg in pages) == disk(rig, 0, 4 * P)
    assert rig.k.vmstat.pins() == (0, 0)
    assert [int(rig.pgdat.pages.refcount[pg]) for pg in pages] == [1] * 4


def test_reaping_every_64_bios(profile: str) -> None:
    """Every other block mapped (disk-discontiguous, file-contiguous: a bio per block):
    200 bios; reaping completes finished ones every 64 allocations; pins balance."""
    rig = make_rig(profile, i_size=400 * P, mapped=range(0, 400, 2))
    addr, p = user_buf(rig, 400 * P)
    lc = Leakcheck(rig)
    assert rig.dio(read_it(rig, p, addr, 400 * P), 0) == 400 * P
    assert rig.dev.nr_issued == 200
    # Mapped pages: 3 refs; hole pages: the queue's only.
    assert lc.done() == {"5.9": (0, 0), "5.9-pin": (800, 800), "6.18": (400, 800)}[profile]


def test_registered_as_the_legacy_engine() -> None:
    from dioscope.fs.direct_io import blockdev_direct_IO

    assert DIO_ENGINES["legacy"] is blockdev_direct_IO

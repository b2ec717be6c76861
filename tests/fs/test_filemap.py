"""mm/filemap.py, mm/page_writeback.py, mm/truncate.py and fs/filemap_rw.py: the page cache
over the model filesystem, with real bytes.

Writeback state is observed with a device whose completion context runs only when asked
(``CompletionQueue(synchronous=False)``): while a bio is in flight its pages are under
writeback and clean, the disk still holds the old bytes, and waiting runs the completions.
"""

from __future__ import annotations

import errno
import os

import numpy as np
import pytest

from dioscope.block.blk_mq import CompletionQueue
from dioscope.block.devices import EIOOnSectors, MemDevice
from dioscope.fs.filemap_rw import BATCH
from dioscope.fs.fs_types import IOCB, Kiocb
from dioscope.fs.modelfs import ModelFs, file_pattern
from dioscope.kernel.types import PAGE_SIZE
from dioscope.kernel.xarray import XA_CHUNK, XArray
from dioscope.machine import Kernel
from dioscope.mm import filemap
from dioscope.mm.gup import pin_user_pages_fast, unpin_user_pages
from dioscope.mm.mmap import MAP_SHARED, PROT_READ, PROT_WRITE
from dioscope.mm.page import PG
from dioscope.mm.page_writeback import (
    ERRSEQ_SEEN,
    errseq_check_and_advance,
    errseq_sample,
    errseq_set,
)
from dioscope.mm.pgtable import PTE_DIRTY, PTE_RW

P = PAGE_SIZE
PROFILES = ("5.9", "5.9-pin", "6.18")


@pytest.fixture(params=PROFILES)
def k(request: pytest.FixtureRequest) -> Kernel:
    return Kernel("64M", request.param)


def mkfs(k: Kernel, sync: bool = True) -> ModelFs:
    dev = MemDevice(k.pgdat, "16M", cq=CompletionQueue(synchronous=sync))
    fs = ModelFs(dev)
    k.mount(fs)
    return fs


def flags_of(k: Kernel, inode, index: int) -> int:
    pfn = inode.i_mapping.lookup(index)
    return int(k.pgdat.pages.flags[pfn]) if pfn >= 0 else -1


def pwrite(p, fd: int, data: bytes, off: int) -> int:
    a = p.mmap((len(data) + P - 1) & ~(P - 1))
    p.write_user(a, data)
    return p.pwrite(fd, a, len(data), off)


def pread(p, fd: int, n: int, off: int) -> bytes:
    a = p.mmap(max((n + P - 1) & ~(P - 1), P))
    return p.read_user(a, p.pread(fd, a, n, off))


# --- writeback state ------------------------------------------------------------------------------
def test_writeback_state_while_the_bio_is_in_flight(k):
    fs = mkfs(k, sync=False)
    p = k.spawn()
    fd = p.open("/a", os.O_CREAT | os.O_RDWR)
    assert pwrite(p, fd, b"W" * 2 * P, 0) == 2 * P
    inode = fs.lookup("a")
    m = inode.i_mapping
    assert inode.ext.extents() == [(0, 1, 2, True)]
    assert flags_of(k, inode, 0) & PG.PG_dirty
    assert filemap.filemap_fdatawrite_range(m, 0, 2 * P - 1) == 0
    for i in (0, 1):
        fl = flags_of(k, inode, i)
        assert fl & PG.PG_writeback and not fl & PG.PG_dirty
    assert fs.bdev.cq.pending  # the device moved the bytes; the completion is pending
    assert filemap.filemap_range_needs_writeback(m, 0, 0)
    assert filemap.filemap_fdatawait_range(m, 0, 2 * P - 1) == 0  # runs the completions
    assert not flags_of(k, inode, 0) & (PG.PG_writeback | PG.PG_dirty)
    assert fs.bdev.read_disk(P, 2 * P) == b"W" * 2 * P
    assert inode.ext.extents() == [(0, 1, 2, False)]  # converted at completion
    assert not filemap.filemap_range_needs_writeback(m, 0, 2 * P)
    assert filemap.filemap_range_has_page(m, 0, 0)
    assert not filemap.filemap_range_has_page(m, 2 * P, 10 * P)


def test_reads_wait_for_their_bios(k):
    fs = mkfs(k, sync=False)
    fs.create_file("a", 3 * P)
    inode = fs.lookup("a")
    filemap.truncate_inode_pages(inode.i_mapping, 0)
    assert inode.i_mapping.nrpages == 0
    p = k.spawn()
    fd = p.open("/a", os.O_RDONLY)
    assert pread(p, fd, 3 * P, 0) == file_pattern(inode.i_ino, 0, 3 * P)
    assert all(flags_of(k, inode, i) & PG.PG_uptodate for i in range(3))
    assert not any(flags_of(k, inode, i) & PG.PG_locked for i in range(3))


def test_large_buffered_io_spans_batches(k):
    fs = mkfs(k)
    n = (BATCH + 44) * P + 123
    data = (np.arange(n, dtype=np.uint64) * 2654435761 % 251).astype(np.uint8).tobytes()
    p = k.spawn()
    fd = p.open("/big", os.O_CREAT | os.O_RDWR)
    assert pwrite(p, fd, data, 77) == n
    assert fs.lookup("big").ext.extents() == [(0, 1, BATCH + 45, True)]
    assert pread(p, fd, n + P, 0) == bytes(77) + data
    p.fsync(fd)
    filemap.truncate_inode_pages(fs.lookup("big").i_mapping, 0)
    assert pread(p, fd, n, 77) == data  # read back from the disk


def test_read_error_returns_what_was_read(k):
    fs = mkfs(k)
    fs.create_file("a", 4 * P)
    inode = fs.lookup("a")
    filemap.truncate_inode_pages(inode.i_mapping, 0)
    fs.bdev.inject(EIOOnSectors(start=3 * 8, end=4 * 8))  # file block 2
    p = k.spawn()
    fd = p.open("/a", os.O_RDONLY)
    assert pread(p, fd, P, P) == file_pattern(inode.i_ino, P, P)
    a = p.mmap(4 * P)
    assert p.pread(fd, a, 4 * P, 0) == 2 * P
    with pytest.raises(OSError) as exc:
        p.pread(fd, a, P, 2 * P)
    assert exc.value.errno == errno.EIO
    assert inode.i_mapping.lookup(2) >= 0 and not flags_of(k, inode, 2) & PG.PG_uptodate


# --- invalidation ---------------------------------------------------------------------------------
def test_invalidate2_drops_clean_pages_and_refuses_dirty_ones(k):
    fs = mkfs(k)
    fs.create_file("a", 4 * P)
    inode = fs.lookup("a")
    m = inode.i_mapping
    p = k.spawn()
    fd = p.open("/a", os.O_RDWR)
    pwrite(p, fd, b"d", 2 * P)
    free = k.pgdat.nr_free()
    assert filemap.invalidate_inode_pages2_range(m, 0, 3) == -errno.EBUSY
    assert [m.lookup(i) >= 0 for i in range(4)] == [False, False, True, False]
    assert k.pgdat.nr_free() == free + 3
    p.fsync(fd)
    assert filemap.invalidate_inode_pages2_range(m, 0, 3) == 0 and m.nrpages == 0


def test_invalidate2_unmaps_and_a_dirty_pte_makes_it_busy(k):
    fs = mkfs(k)
    fs.create_file("a", 2 * P)
    inode = fs.lookup("a")
    m = inode.i_mapping
    p = k.spawn()
    fd = p.open("/a", os.O_RDWR)
    addr = p.mmap(2 * P, PROT_READ | PROT_WRITE, MAP_SHARED, fd=fd)
    assert p.read_user(addr, 4) == file_pattern(inode.i_ino, 0, 4)
    vma = p.mm.vma_lookup(addr)
    assert vma.pt_pfn[0] == m.lookup(0)
    assert filemap.invalidate_inode_pages2_range(m, 0, 1) == 0  # clean: unmapped, dropped
    assert vma.pt_pfn[0] == -1 and m.nrpages == 0
    p.write_user(addr + P, b"mm")
    pfn = m.lookup(1)
    k.pgdat.pages.flags[pfn] &= np.uint32(~PG.PG_dirty & 0xFFFFFFFF)  # only the PTE is dirty
    assert filemap.invalidate_inode_pages2_range(m, 0, 1) == -errno.EBUSY
    assert vma.pt_pfn[1] == -1 and m.lookup(1) == pfn  # unmapped; stays, dirty
    assert flags_of(k, inode, 1) & PG.PG_dirty


def test_invalidate2_removes_a_pinned_page_that_lives_on(k):
    fs = mkfs(k)
    fs.create_file("a", P)
    inode = fs.lookup("a")
    p = k.spawn()
    fd = p.open("/a", os.O_RDWR)
    addr = p.mmap(P, PROT_READ | PROT_WRITE, MAP_SHARED, fd=fd)
    pages = np.full(1, -1, np.int64)
    assert pin_user_pages_fast(p.mm, addr, 1, 0, pages) == 1
    pfn = int(pages[0])
    p.munmap(addr, P)
    assert filemap.invalidate_mapping_pages(inode.i_mapping, 0, 0) == 0  # pinned: stays
    assert filemap.invalidate_inode_pages2_range(inode.i_mapping, 0, 0) == 0
    assert inode.i_mapping.nrpages == 0
    assert k.pgdat.pages.refcount[pfn] > 0 and k.pgdat.pages.mapping[pfn] == 0
    free = k.pgdat.nr_free()
    unpin_user_pages(k.pgdat, pages, 1)
    assert k.pgdat.nr_free() == free + 1


def test_invalidate_mapping_pages_only_takes_idle_clean_pages(k):
    fs = mkfs(k)
    fs.create_file("a", 4 * P)
    inode = fs.lookup("a")
    p = k.spawn()
    fd = p.open("/a", os.O_RDWR)
    pwrite(p, fd, b"x", 0)  # page 0 dirty
    addr = p.mmap(P, PROT_READ, MAP_SHARED, fd=fd, offset=P)
    p.read_user(addr, 1)  # page 1 mapped
    assert filemap.invalidate_mapping_pages(inode.i_mapping, 0, 3) == 2
    assert [inode.i_mapping.lookup(i) >= 0 for i in range(4)] == [True, True, False, False]


# --- truncation ---------------------------------------------------------------------------------
@pytest.mark.parametrize(("lstart", "lend", "zeroed", "kept"), [
    (0, -1, (0, 0), []),
    (511, -1, (511, P), [0]),
    (P, 2 * P - 1, (0, 0), [0, 2, 3]),
    (100, 199, (100, 200), [0, 1, 2, 3]),
    (P - 1, 2 * P, (P - 1, 2 * P + 1), [0, 2, 3]),
    (0, 4096 * 3 + 4094, (3 * P, 4 * P - 1), [3]),
])
def test_truncate_inode_pages_range(k, lstart, lend, zeroed, kept):
    fs = mkfs(k)
    fs.create_file("a", 4 * P)
    inode = fs.lookup("a")
    m = inode.i_mapping
    before = {i: bytes(k.pgdat.mem.frame(m.lookup(i))) for i in range(4)}
    filemap.truncate_inode_pages_range(m, lstart, lend)
    assert [i for i in range(4) if m.lookup(i) >= 0] == kept
    for i in kept:
        want = bytearray(before[i])
        lo, hi = max(zeroed[0], i * P), min(zeroed[1], (i + 1) * P)
        if hi > lo:
            want[lo - i * P : hi - i * P] = bytes(hi - lo)
        assert bytes(k.pgdat.mem.frame(m.lookup(i))) == bytes(want)
        assert not flags_of(k, inode, i) & PG.PG_dirty  # zeroed, not dirtied


# --- Direct I/O helpers --------------------------------------------------------------------------
def test_kiocb_helpers_and_nowait(k):
    fs = mkfs(k)
    fs.create_file("a", 2 * P)
    p = k.spawn()
    fd = p.open("/a", os.O_RDWR)
    f = p.files.get(fd)
    pwrite(p, fd, b"z", 0)
    nowait = Kiocb(f, 0, int(IOCB.IOCB_NOWAIT))
    assert filemap.kiocb_write_and_wait(nowait, P) == -errno.EAGAIN  # page 0 dirty
    assert filemap.kiocb_write_and_wait(Kiocb(nowait.ki_filp, P, nowait.ki_flags), P) == 0
    assert filemap.kiocb_invalidate_pages(Kiocb(f, P, int(IOCB.IOCB_NOWAIT)), P) == -errno.EAGAIN
    assert filemap.kiocb_invalidate_pages(Kiocb(f, 0), 2 * P) == 0
    inode = fs.lookup("a")
    assert inode.i_mapping.nrpages == 0 and fs.bdev.read_disk(P, 1) == b"z"
    got = filemap.filemap_get_uptodate(inode.i_mapping, 0, 1, nowait=True)
    assert len(got[0]) == 0 and got[1] == -errno.EAGAIN


def test_stale_pagecache_warning_reaches_fsync(k):
    fs = mkfs(k)
    fs.create_file("a", P)
    p = k.spawn()
    fd = p.open("/a", os.O_RDWR)
    f = p.files.get(fd)
    pwrite(p, fd, b"dirty", 0)
    filemap.kiocb_invalidate_post_direct_write(Kiocb(f, 0), P)  # the dirty page stays
    assert f.f_mapping.stale_pagecache == 1
    with pytest.raises(OSError) as exc:
        p.fsync(fd)
    assert exc.value.errno == errno.EIO
    p.fsync(fd)


# --- errseq and xarray -------------------------------------------------------------------------
class _M:
    wb_err = 0


def test_errseq():
    m = _M()
    assert errseq_sample(m) == 0
    errseq_set(m, -errno.EIO)
    assert errseq_sample(m) == 0  # unseen: a new opener still gets it
    err, since = errseq_check_and_advance(m, 0)
    assert err == -errno.EIO and since & ERRSEQ_SEEN
    assert errseq_check_and_advance(m, since) == (0, since)
    errseq_set(m, -errno.ENOSPC)  # seen before: the counter moves
    err2, since2 = errseq_check_and_advance(m, since)
    assert err2 == -errno.ENOSPC and since2 != since


def test_xarray():
    xa = XArray()
    far = (1 << 32) + 5
    xa.store(np.array([3, far, XA_CHUNK - 1, XA_CHUNK]), np.array([30, 50, 10, 11]))
    assert len(xa) == 4 and len(xa.chunks) == 3
    assert xa.get(far) == 50 and xa.get(far + 1) == -1
    assert xa.dense(XA_CHUNK - 2, XA_CHUNK + 2).tolist() == [-1, 10, 11, -1]
    idx, val = xa.find(0, 1 << 40)
    assert idx.tolist() == [3, XA_CHUNK - 1, XA_CHUNK, far] and val.tolist() == [30, 10, 11, 50]
    assert xa.next_present(4, far + 1) == XA_CHUNK - 1 and xa.next_present(4, 5) == -1
    assert xa.prev_present(far) == XA_CHUNK and xa.last() == far
    assert xa.gather(np.array([far, 3, 4])).tolist() == [50, 30, -1]
    idx, val = xa.erase_range(XA_CHUNK - 1, far)
    assert idx.tolist() == [XA_CHUNK - 1, XA_CHUNK] and len(xa) == 2 and len(xa.chunks) == 2


def test_mmap_write_after_writeback_redirties(k):
    fs = mkfs(k)
    fs.create_file("a", P)
    inode = fs.lookup("a")
    p = k.spawn()
    fd = p.open("/a", os.O_RDWR)
    addr = p.mmap(P, PROT_READ | PROT_WRITE, MAP_SHARED, fd=fd)
    p.write_user(addr, b"one")
    vma = p.mm.vma_lookup(addr)
    assert vma.pt_flags[0] & PTE_RW and vma.pt_flags[0] & PTE_DIRTY
    p.fsync(fd)
    assert not vma.pt_flags[0] & (PTE_RW | PTE_DIRTY)
    assert not flags_of(k, inode, 0) & PG.PG_dirty
    p.write_user(addr, b"two")
    assert flags_of(k, inode, 0) & PG.PG_dirty and vma.pt_flags[0] & PTE_RW
    p.fsync(fd)
    assert fs.bdev.read_disk(P, 3) == b"two"


def test_partial_page_write_over_an_unreadable_block(k):
    fs = mkfs(k)
    fs.create_file("a", 2 * P)
    inode = fs.lookup("a")
    filemap.truncate_inode_pages(inode.i_mapping, 0)
    fs.bdev.inject(EIOOnSectors(start=2 * 8, end=3 * 8))  # file block 1
    p = k.spawn()
    fd = p.open("/a", os.O_RDWR)
    with pytest.raises(OSError) as exc:
        pwrite(p, fd, b"x" * 10, P + 5)
    assert exc.value.errno == errno.EIO
    assert pwrite(p, fd, b"y" * (P + 10), 0) == P  # page 0 is whole: no read needed
    assert not flags_of(k, inode, 1) & (PG.PG_locked | PG.PG_uptodate)
    fs.bdev.clear_faults()
    assert pread(p, fd, P + 4, 0) == b"y" * P + file_pattern(inode.i_ino, P, 4)

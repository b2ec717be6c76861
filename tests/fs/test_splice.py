"""fs/pipe.py + fs/splice.py: pipes, splice and vmsplice per profile (spec §11 item 38).

Model numbers are checked against what the 6.18.44 host gave (``test_host_*``, marked
``host``): splicing 1 MiB from an O_DIRECT file into a pipe, or from a pipe into an O_DIRECT
file, and vmsplicing 64 KiB, leave nr_foll_pin_acquired/released unchanged ([0, 0]); the
vmspliced pipe holds the user pages themselves (later stores show through).
"""

from __future__ import annotations

import errno
import os
import sys

import numpy as np
import pytest

from dioscope.block.devices import MemDevice
from dioscope.difftest import vmstat
from dioscope.fs.block_dev_file import blkdev_open
from dioscope.fs.direct_io import blockdev_direct_IO
from dioscope.fs.fs_types import FMODE, IOCB, OFLAG, S_IFREG, BufferHead, File, Inode, Kiocb
from dioscope.fs.pipe import PIPE_BUF_FLAG, get_pipe_info, pipe_fcntl_setpipe_sz, sys_pipe2
from dioscope.fs.read_write import vfs_read_write
from dioscope.fs.splice import SPLICE_F, sys_splice, sys_vmsplice
from dioscope.lib.iov_iter import IovIter, iov_iter_count, iov_iter_revert
from dioscope.machine import Kernel
from dioscope.sanitizer import Sanitizer
from dioscope.syscalls.process import Process

P = 4096
KiB, MiB = 1 << 10, 1 << 20
PROFILES = ("5.9", "5.9-pin", "6.18")
SEEKABLE = FMODE.FMODE_LSEEK | FMODE.FMODE_PREAD | FMODE.FMODE_PWRITE


@pytest.fixture(params=PROFILES)
def profile(request: pytest.FixtureRequest) -> str:
    return str(request.param)


class LegacyFile:
    """Test-only file operations of a legacy-DIO filesystem (block n on disk block n):
    the Direct I/O halves of ``generic_file_read_iter`` / ``generic_file_direct_write``."""

    def __init__(self, dev: MemDevice) -> None:
        self.dev = dev

    def get_block(self, inode: Inode, iblock: int, bh: BufferHead, create: int) -> int:
        """Every block inside i_size is mapped; past it, only ``create`` maps one."""
        if not create and iblock * P >= inode.i_size:
            bh.b_size = P
            return 0
        bh.mapped, bh.b_blocknr, bh.b_bdev = True, iblock, self.dev
        if not create:
            bh.b_size = min(bh.b_size, (inode.i_size + P - 1) // P * P - iblock * P)
        return 0

    def read_iter(self, iocb: Kiocb, it: IovIter) -> int:
        count = iov_iter_count(it)
        if not count or not iocb.ki_flags & IOCB.IOCB_DIRECT:
            return 0
        ret = blockdev_direct_IO(iocb, iocb.ki_filp.f_inode, it, self.get_block)
        if ret >= 0:
            iocb.ki_pos += ret
            count -= ret
        iov_iter_revert(it, count - iov_iter_count(it))
        return ret

    def write_iter(self, iocb: Kiocb, it: IovIter) -> int:
        inode = iocb.ki_filp.f_inode
        count = iov_iter_count(it)
        ret = blockdev_direct_IO(iocb, inode, it, self.get_block)
        if ret > 0:
            iocb.ki_pos += ret
            count -= ret
            inode.i_size = max(inode.i_size, iocb.ki_pos)
        iov_iter_revert(it, count - iov_iter_count(it))
        return ret


class Rig:
    def __init__(self, profile: str) -> None:
        self.k = Kernel(mem="256M", profile=profile)
        self.pgdat = self.k.pgdat
        self.dev = MemDevice(self.pgdat, "64M")
        self.dev.data[:] = np.arange(8 * MiB, dtype=np.uint64).view(np.uint8)
        self.p: Process = self.k.spawn()
        ret, ends = sys_pipe2(self.pgdat)
        assert ret == 0 and ends is not None
        self.r, self.w = ends
        self.scratch = self.buf(2 * MiB)
        """Faulted in before any counting starts: draining and filling allocate nothing."""

    def legacy_file(self, i_size: int, flags: int = OFLAG.O_RDWR | OFLAG.O_DIRECT) -> File:
        from dioscope.fs.fs_types import SuperBlock

        inode = Inode(SuperBlock(self.dev, P, "legacy"), 20, S_IFREG | 0o644, self.pgdat)
        inode.i_size = i_size
        return File(inode, flags, FMODE.FMODE_READ | FMODE.FMODE_WRITE | SEEKABLE,
                    LegacyFile(self.dev))

    def buf(self, size: int, fill: int = 0xEE) -> int:
        addr = self.p.mmap(size + P)
        self.p.write_user(addr, bytes([fill]) * (size + P))
        return addr

    def drain(self, n: int, r: File | None = None) -> bytes:
        got = vfs_read_write(r or self.r, self.scratch, n, None, False, self.p.mm)
        assert got >= 0
        return self.p.read_user(self.scratch, got)

    def fill_pipe(self, data: bytes) -> None:
        self.p.write_user(self.scratch, data)
        assert vfs_read_write(self.w, self.scratch, len(data), None, True, self.p.mm) == len(
            data)

    def start(self) -> None:
        self.san = Sanitizer(self.pgdat)
        self.san.attach()
        self.refs = self.pgdat.pages.refcount.copy()
        self.pins0 = self.k.vmstat.pins()

    def pins(self) -> tuple[int, int]:
        a, r = self.k.vmstat.pins()
        return a - self.pins0[0], r - self.pins0[1]

    def pipe_pages(self) -> list[int]:
        pipe = get_pipe_info(self.r)
        assert pipe is not None
        return [int(pipe.buf_page[pipe.slot(h)]) for h in range(pipe.tail, pipe.head)]

    def done(self, freed: list[int] | None = None) -> tuple[int, int]:
        """Sanitizer clean; every refcount back, except ``freed`` (pages the pipe held at
        the start and has released since): those must now be free."""
        self.san.check_quiescent()
        self.san.assert_clean()
        self.san.detach()
        rc = self.pgdat.pages.refcount
        changed = set(np.flatnonzero(rc != self.refs).tolist())
        assert changed == set(freed or ()), f"refcounts changed: pfns {sorted(changed)[:8]}"
        assert all(int(rc[pg]) == 0 for pg in freed or ())
        return self.pins()


# --- file -> pipe --------------------------------------------------------------------------------
SPLICE_BDEV_1M = {"5.9": (0, 0), "5.9-pin": (256, 256), "6.18": (0, 0)}


def test_splice_odirect_bdev_to_pipe(profile: str) -> None:
    """Spec §11 item 38: [5.9*] ITER_PIPE into the raw-bdev simple path: each of the 256
    pipe pages is taken by the bio (5.9-pin: pin_page, counted) and released at completion,
    while the pipe keeps its own reference. [6.18] copy_splice_read: a BVEC destination, no
    pins — as the host measured. The pipe's pages are its alone afterwards."""
    rig = Rig(profile)
    f = blkdev_open(rig.dev, OFLAG.O_RDWR | OFLAG.O_DIRECT)
    assert pipe_fcntl_setpipe_sz(rig.w, MiB) == MiB
    rig.start()
    assert sys_splice(f, 4 * MiB, rig.w, None, MiB, 0) == MiB
    assert rig.pins() == SPLICE_BDEV_1M[profile]
    pipe = get_pipe_info(rig.w)
    assert pipe is not None and pipe.occupancy() == 256
    assert {int(rig.pgdat.pages.refcount[pg]) for pg in pipe.buf_page.tolist()} == {1}
    assert rig.drain(MiB) == rig.dev.read_disk(4 * MiB, MiB)
    assert rig.done() == SPLICE_BDEV_1M[profile]


def test_splice_odirect_legacy_file_to_pipe(profile: str) -> None:
    """Through the legacy engine: [5.9-pin] 3 pins per pipe page (queue, "in dio", bio) for
    the 16 pages of a default pipe; [6.18] copy_splice_read's BVEC pages are extracted
    without references: nothing; [5.9] plain references."""
    rig = Rig(profile)
    f = rig.legacy_file(MiB)
    rig.start()
    assert sys_splice(f, None, rig.w, None, MiB, 0) == 64 * KiB
    assert f.f_pos == 64 * KiB
    assert rig.drain(MiB) == rig.dev.read_disk(0, 64 * KiB)
    assert rig.done() == {"5.9": (0, 0), "5.9-pin": (48, 48), "6.18": (0, 0)}[profile]


def test_splice_legacy_file_at_eof(profile: str) -> None:
    """A 1000-byte file: the whole block is read into the pipe page, the result is clipped
    to 1000 and the pipe holds exactly 1000 bytes (the caller reverted the iterator, which
    for ITER_PIPE truncates the pipe)."""
    rig = Rig(profile)
    f = rig.legacy_file(1000)
    rig.start()
    assert sys_splice(f, 0, rig.w, None, 64 * KiB, 0) == 1000
    pipe = get_pipe_info(rig.r)
    assert pipe is not None and pipe.occupancy() == 1
    assert rig.drain(64 * KiB) == rig.dev.read_disk(0, 1000)
    assert sys_splice(f, 1000, rig.w, None, 64 * KiB, 0) == 0
    # [5.9-pin] the iterator pushed (and the queue pinned) all 16 pipe pages; page 0 got its
    # three pins, page 1 met EOF, the other 14 went back with dio_cleanup.
    assert rig.done() == {"5.9": (0, 0), "5.9-pin": (18, 18), "6.18": (0, 0)}[profile]


def test_splice_misaligned_odirect_is_einval_and_leaves_the_pipe_empty(profile: str) -> None:
    """Host (6.18): splice at offset 1 from an O_DIRECT file is EINVAL."""
    rig = Rig(profile)
    f = blkdev_open(rig.dev, OFLAG.O_RDWR | OFLAG.O_DIRECT)
    rig.start()
    assert sys_splice(f, 1, rig.w, None, 4 * KiB, 0) == -errno.EINVAL
    pipe = get_pipe_info(rig.w)
    assert pipe is not None and pipe.occupancy() == 0
    assert rig.done() == (0, 0)


# --- pipe -> file --------------------------------------------------------------------------------
def test_splice_pipe_to_odirect_bdev(profile: str) -> None:
    """The pipe's pages are an ITER_BVEC source: the bio layer takes nothing on them in any
    profile (host 6.18: [0, 0])."""
    rig = Rig(profile)
    f = blkdev_open(rig.dev, OFLAG.O_RDWR | OFLAG.O_DIRECT)
    data = bytes(range(256)) * 256
    rig.fill_pipe(data)
    rig.start()
    held = rig.pipe_pages()
    assert sys_splice(rig.r, None, f, 8 * MiB, 64 * KiB, 0) == 64 * KiB
    assert rig.dev.read_disk(8 * MiB, 64 * KiB) == data
    pipe = get_pipe_info(rig.r)
    assert pipe is not None and pipe.occupancy() == 0
    assert rig.done(freed=held) == (0, 0)


def test_splice_pipe_to_odirect_legacy_file(profile: str) -> None:
    """[5.9-pin] the legacy engine calls iov_iter_pin_pages on the BVEC source: WARN and
    -EFAULT, nothing written, the data stays in the pipe. [5.9] plain references; [6.18]
    none."""
    rig = Rig(profile)
    f = rig.legacy_file(0)
    data = bytes(range(256)) * 64
    rig.fill_pipe(data)
    rig.start()
    held = rig.pipe_pages()
    ret = sys_splice(rig.r, None, f, 0, 16 * KiB, 0)
    if profile == "5.9-pin":
        assert ret == -errno.EFAULT
        assert [str(e) for e in rig.k.events.events] == [
            "WARN at iov_iter_pin_pages: ITER_BVEC iterator cannot be pinned"]
        pipe = get_pipe_info(rig.r)
        assert pipe is not None and pipe.occupancy() == 4
        held = []
    else:
        assert ret == 16 * KiB
        assert rig.dev.read_disk(0, 16 * KiB) == data
        assert f.f_inode.i_size == 16 * KiB
    assert rig.done(freed=held) == (0, 0)


# --- vmsplice ---------------------------------------------------------------------------------
def test_vmsplice_holds_the_user_pages_unpinned(profile: str) -> None:
    """Every profile: FOLL_GET references held by the pipe buffers (+1 on each user page),
    no pins (host 6.18: [0, 0]), zero-copy: stores after the call show through."""
    rig = Rig(profile)
    addr = rig.buf(64 * KiB, fill=0x41)
    rig.start()
    before = rig.pgdat.pages.refcount.copy()
    assert sys_vmsplice(rig.w, [(addr, 64 * KiB)], 0, rig.p.mm) == 64 * KiB
    bumped = np.flatnonzero(rig.pgdat.pages.refcount != before)
    assert len(bumped) == 16
    assert set((rig.pgdat.pages.refcount - before)[bumped].tolist()) == {1}
    rig.p.write_user(addr, b"\x42" * 64 * KiB)
    assert rig.drain(64 * KiB) == b"\x42" * 64 * KiB
    assert rig.done() == (0, 0)


def test_vmsplice_read_end_copies_out(profile: str) -> None:
    rig = Rig(profile)
    rig.fill_pipe(b"\x17" * 10000)
    addr = rig.buf(8192)
    assert sys_vmsplice(rig.r, [(addr, 4096), (addr + 4096, 4096)], 0, rig.p.mm) == 8192
    assert rig.p.read_user(addr, 8192) == b"\x17" * 8192
    assert rig.drain(8192) == b"\x17" * 1808


def test_vmsplice_errors(profile: str) -> None:
    rig = Rig(profile)
    addr = rig.buf(64 * KiB)
    mm = rig.p.mm
    assert sys_vmsplice(rig.w, [(addr, 4096)], 0x10, mm) == -errno.EINVAL
    assert sys_vmsplice(None, [(addr, 4096)], 0, mm) == -errno.EBADF
    f = blkdev_open(rig.dev, OFLAG.O_RDWR)
    assert sys_vmsplice(f, [(addr, 4096)], 0, mm) == -errno.EBADF
    assert sys_vmsplice(rig.w, [(addr, 0)], 0, mm) == 0
    assert sys_vmsplice(rig.w, [(addr, 64 * KiB)], 0, mm) == 64 * KiB
    assert sys_vmsplice(rig.w, [(addr, 4096)], SPLICE_F.NONBLOCK, mm) == -errno.EAGAIN
    assert rig.drain(64 * KiB) == b"\xee" * 64 * KiB
    rig.r.f_op.release(rig.r.f_inode, rig.r)
    assert sys_vmsplice(rig.w, [(addr, 4096)], 0, mm) == -errno.EPIPE


def test_vmsplice_partial_fault(profile: str) -> None:
    """The first pages that can be had are added; the fault ends the call short."""
    rig = Rig(profile)
    addr = rig.buf(8 * P)
    rig.p.munmap(addr + 4 * P, 5 * P)
    rig.start()
    assert sys_vmsplice(rig.w, [(addr, 8 * P)], 0, rig.p.mm) == 4 * P
    assert rig.drain(8 * P) == b"\xee" * 4 * P
    assert rig.done() == (0, 0)


# --- pipe -> pipe, pipes ------------------------------------------------------------------------
def test_splice_pipe_to_pipe_moves_and_shares_buffers(profile: str) -> None:
    rig = Rig(profile)
    ret, ends = sys_pipe2(rig.pgdat)
    assert ret == 0 and ends is not None
    r2, w2 = ends
    addr = rig.buf(3 * P)
    rig.p.write_user(addr, bytes(range(256)) * 48)
    rig.start()
    assert sys_vmsplice(rig.w, [(addr, 3 * P)], 0, rig.p.mm) == 3 * P
    assert sys_splice(rig.r, None, w2, None, 2 * P + 100, 0) == 2 * P + 100
    ipipe, opipe = get_pipe_info(rig.r), get_pipe_info(r2)
    assert ipipe is not None and opipe is not None
    assert (ipipe.occupancy(), opipe.occupancy()) == (1, 3)
    assert not opipe.buf_flags[opipe.slot(opipe.head - 1)] & PIPE_BUF_FLAG.CAN_MERGE
    assert rig.drain(4 * P, r2) == (bytes(range(256)) * 48)[: 2 * P + 100]
    assert rig.drain(4 * P) == (bytes(range(256)) * 48)[2 * P + 100 :]
    assert rig.done() == (0, 0)


def test_pipe_read_write_and_flags(profile: str) -> None:
    rig = Rig(profile)
    assert sys_pipe2(rig.pgdat, OFLAG.O_SYNC)[0] == -errno.EINVAL
    ret, ends = sys_pipe2(rig.pgdat, OFLAG.O_NONBLOCK)
    assert ret == 0 and ends is not None
    r, w = ends
    addr = rig.buf(100 * KiB)
    mm = rig.p.mm
    assert vfs_read_write(r, addr, 10, None, False, mm) == -errno.EAGAIN
    assert vfs_read_write(w, addr, 100, None, True, mm) == 100
    assert vfs_read_write(w, addr, 100, None, True, mm) == 100  # merged into one buffer
    pipe = get_pipe_info(r)
    assert pipe is not None and pipe.occupancy() == 1
    assert vfs_read_write(w, addr, 100 * KiB, None, True, mm) == 60 * KiB  # the rest fits
    assert vfs_read_write(w, addr, 1, None, True, mm) == -errno.EAGAIN
    assert vfs_read_write(r, addr, 100 * KiB, None, False, mm) == 60 * KiB + 200
    w.f_op.release(w.f_inode, w)
    assert vfs_read_write(r, addr, 10, None, False, mm) == 0  # no writers: EOF


def test_packet_pipe(profile: str) -> None:
    """pipe2(O_DIRECT): each write is a packet; a read takes at most one and drops its
    rest."""
    rig = Rig(profile)
    ret, ends = sys_pipe2(rig.pgdat, OFLAG.O_DIRECT)
    assert ret == 0 and ends is not None
    r, w = ends
    addr = rig.buf(P)
    mm = rig.p.mm
    assert vfs_read_write(w, addr, 100, None, True, mm) == 100
    assert vfs_read_write(w, addr, 100, None, True, mm) == 100
    assert vfs_read_write(r, addr, 50, None, False, mm) == 50
    assert vfs_read_write(r, addr, 500, None, False, mm) == 100


def test_setpipe_sz(profile: str) -> None:
    rig = Rig(profile)
    assert pipe_fcntl_setpipe_sz(rig.w, 5000) == 8192
    rig.fill_pipe(b"x" * 8192)
    assert pipe_fcntl_setpipe_sz(rig.w, 4096) == -errno.EBUSY
    assert pipe_fcntl_setpipe_sz(rig.w, 64 * KiB) == 64 * KiB
    assert rig.drain(8192) == b"x" * 8192
    f = blkdev_open(rig.dev, OFLAG.O_RDWR)
    assert pipe_fcntl_setpipe_sz(f, 4096) == -errno.EBADF


# --- splice errors ---------------------------------------------------------------------------
def test_splice_errors(profile: str) -> None:
    rig = Rig(profile)
    f = blkdev_open(rig.dev, OFLAG.O_RDWR | OFLAG.O_DIRECT)
    g = blkdev_open(rig.dev, OFLAG.O_RDWR)
    ro = blkdev_open(rig.dev, OFLAG.O_RDONLY)
    app = blkdev_open(rig.dev, OFLAG.O_RDWR | OFLAG.O_APPEND)
    r, w = rig.r, rig.w
    assert sys_splice(f, 0, w, None, 0, 0x100) == 0  # zero length first
    assert sys_splice(f, 0, w, None, 4096, 0x100) == -errno.EINVAL
    assert sys_splice(None, 0, w, None, 4096, 0) == -errno.EBADF
    assert sys_splice(f, 0, w, 0, 4096, 0) == -errno.ESPIPE
    assert sys_splice(r, 0, f, 0, 4096, 0) == -errno.ESPIPE
    assert sys_splice(f, 0, g, 0, 4096, 0) == -errno.EINVAL  # neither is a pipe
    assert sys_splice(r, None, w, None, 4096, 0) == -errno.EINVAL  # a pipe to itself
    assert sys_splice(w, None, f, 0, 4096, 0) == -errno.EBADF  # the write end as input
    assert sys_splice(f, 0, ro, 0, 4096, 0) == -errno.EBADF
    assert sys_splice(r, None, f, -512, 4096, 0) == -errno.EINVAL  # rw_verify_area
    assert sys_splice(r, None, app, 0, 4096, 0) == -errno.EINVAL  # O_APPEND output
    assert sys_splice(r, None, f, 0, 4096, SPLICE_F.NONBLOCK) == -errno.EAGAIN  # empty
    assert pipe_fcntl_setpipe_sz(w, 4096) == 4096
    rig.fill_pipe(b"y" * 4096)
    assert sys_splice(f, 0, w, None, 4096, SPLICE_F.NONBLOCK) == -errno.EAGAIN  # full
    rig.drain(4096)
    w.f_op.release(w.f_inode, w)
    assert sys_splice(r, None, f, 0, 4096, 0) == 0  # no writers: EOF
    r.f_op.release(r.f_inode, r)
    _, ends = sys_pipe2(rig.pgdat)
    assert ends is not None
    ends[0].f_op.release(ends[0].f_inode, ends[0])
    assert sys_splice(f, 0, ends[1], None, 4096, 0) == -errno.EPIPE


# --- the host ---------------------------------------------------------------------------------
WHY = None if sys.platform.startswith("linux") and os.geteuid() == 0 else "needs root on Linux"
WHY = WHY or vmstat.pins_unavailable()
needs_host = pytest.mark.skipif(WHY is not None, reason=f"host pins unavailable: {WHY}")


@pytest.mark.host
@needs_host
def test_host_splice_and_vmsplice_take_no_pins() -> None:
    """On this host (6.18): splice O_DIRECT file → pipe, pipe → O_DIRECT file and vmsplice
    take no pins, as the model's 6.18 profile says; vmsplice aliases the user pages."""
    import ctypes
    import ctypes.util
    import fcntl
    import mmap
    import tempfile

    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)

    class IOVec(ctypes.Structure):
        _fields_ = [("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t)]

    data = bytes(range(256)) * (MiB // 256)
    with tempfile.TemporaryDirectory(dir="/var/tmp") as d:
        path = os.path.join(d, "f")
        with open(path, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        try:
            fd = os.open(path, os.O_RDWR | os.O_DIRECT)
        except OSError as e:
            pytest.skip(f"no O_DIRECT in /var/tmp: {e}")
        buf = mmap.mmap(-1, 64 * KiB)
        seen: dict[str, object] = {}

        def pipe() -> tuple[int, int]:
            r, w = os.pipe()
            fcntl.fcntl(w, 1031, MiB)  # F_SETPIPE_SZ
            return r, w

        def drain(r: int, n: int) -> bytes:
            out = b""
            while len(out) < n:
                out += os.read(r, n - len(out))
            return out

        def file_to_pipe() -> None:  # each step is whole: repeatable in a noisy window
            r, w = pipe()
            n = os.splice(fd, w, MiB, offset_src=0)
            seen["file_to_pipe"] = (n, drain(r, n) == data)
            os.close(r)
            os.close(w)

        def pipe_to_file() -> None:
            r, w = pipe()
            os.write(w, data)
            seen["pipe_to_file"] = os.splice(r, fd, MiB, offset_dst=0)
            os.close(r)
            os.close(w)

        def vmsplice() -> None:
            r, w = pipe()
            buf.seek(0)
            buf.write(b"A" * 64 * KiB)
            iov = IOVec(ctypes.addressof(ctypes.c_char.from_buffer(buf)), 64 * KiB)
            n = libc.vmsplice(w, ctypes.byref(iov), 1, 0)
            buf.seek(0)
            buf.write(b"B" * 64 * KiB)
            seen["vmsplice"] = (n, drain(r, n) == b"B" * 64 * KiB)
            os.close(r)
            os.close(w)

        try:
            for step, want in ((file_to_pipe, (MiB, True)), (pipe_to_file, MiB),
                               (vmsplice, (64 * KiB, True))):
                # The counters are system-wide: another process's I/O in the window shows up
                # as pins; a result counts when one of three windows is clean.
                results = []
                for _ in range(3):
                    m = vmstat.measure(step, repeatable=True)
                    results.append((seen[step.__name__], m.pins, m.noise))
                    if m.noise is None and m.pins == (0, 0):
                        break
                assert (results[-1][0], results[-1][1]) == (want, (0, 0)), results
        finally:
            os.close(fd)

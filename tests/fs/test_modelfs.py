"""fs/modelfs: the ext4-like model filesystem, with exact block and extent numbers.

Every case runs under the three profiles on a 16 MiB MemDevice (4096 blocks, block 0
reserved, so the first file starts at block 1 and files are laid out next-fit) and goes
through the syscall layer where a syscall exists (open, pread/pwrite, ftruncate, fallocate,
fsync, statx), with real bytes compared against a reference.
"""

from __future__ import annotations

import errno
import os

import numpy as np
import pytest

from dioscope.block.blk_settings import QueueLimits
from dioscope.block.devices import EIOOnSectors, FileDevice, MemDevice
from dioscope.fs import fs_types
from dioscope.fs.fs_types import (
    FALLOC,
    IOMAP_FLAGS,
    IOMAP_NULL_ADDR,
    IOMAP_OP,
    IOMAP_TYPE,
    STATX,
    BufferHead,
    Kiocb,
)
from dioscope.fs.modelfs import EXT4_MAXBYTES, ModelFs, file_pattern
from dioscope.fs.modelfs.file import IOMAP_DIO_FORCE_WAIT
from dioscope.fs.modelfs.inode import IOMAP_DIO_UNWRITTEN, ext4_get_block
from dioscope.kernel.types import PAGE_SIZE
from dioscope.lib.iov_iter import iov_iter_advance
from dioscope.machine import Kernel
from dioscope.mm.page import PG

P = PAGE_SIZE
PROFILES = ("5.9", "5.9-pin", "6.18")
KEEP = int(FALLOC.FALLOC_FL_KEEP_SIZE)
PUNCH = int(FALLOC.FALLOC_FL_PUNCH_HOLE)


@pytest.fixture(params=PROFILES)
def k(request: pytest.FixtureRequest) -> Kernel:
    return Kernel("64M", request.param)


def mkfs(k: Kernel, size: str = "16M", engine: str = "iomap", dev=None, **kw) -> ModelFs:
    dev = dev if dev is not None else MemDevice(k.pgdat, size)
    fs = ModelFs(dev, engine, **kw)
    k.mount(fs)
    return fs


def user_buf(p, data: bytes, pad: int = 0) -> int:
    """A fresh anonymous buffer holding ``data`` (at offset ``pad``)."""
    n = max(len(data) + pad, 1)
    a = p.mmap((n + P - 1) & ~(P - 1))
    if data:
        assert p.write_user(a + pad, data) == len(data)
    return a + pad


def pread(p, fd: int, n: int, off: int) -> bytes:
    a = p.mmap(max((n + P - 1) & ~(P - 1), P))
    got = p.pread(fd, a, n, off)
    data = p.read_user(a, got)
    p.munmap(a, max((n + P - 1) & ~(P - 1), P))
    return data


def pwrite(p, fd: int, data: bytes, off: int) -> int:
    a = user_buf(p, data)
    return p.pwrite(fd, a, len(data), off)


def oserror(fn, *args) -> int:
    with pytest.raises(OSError) as exc:
        fn(*args)
    return exc.value.errno


def dirty(k: Kernel, inode) -> int:
    _, pfns = inode.i_mapping.present(0, 1 << 30)
    return int(((k.pgdat.pages.flags[pfns] & np.uint32(PG.PG_dirty)) != 0).sum())


# --- mount and layout ----------------------------------------------------------------------------
def test_mount_geometry(k):
    fs = mkfs(k)
    assert fs.balloc.nblocks == 4096 and fs.balloc.free_blocks == 4095
    assert fs.sb.s_blocksize == 4096 and fs.sb.s_maxbytes == EXT4_MAXBYTES == 0xFFFFFFFF000
    assert fs.root.is_dir() and fs.root.i_ino == 2
    with pytest.raises(ValueError):
        ModelFs(MemDevice(k.pgdat, "1M"), "raw")
    with pytest.raises(ValueError):
        ModelFs(MemDevice(k.pgdat, "1M", limits=QueueLimits(logical_block_size=8192)))


def test_create_file_layout_and_bytes(k):
    fs = mkfs(k)
    a = fs.create_file("a", 3 * P)
    b = fs.create_file("b", 2 * P + 100)
    assert (a.i_ino, b.i_ino) == (12, 13)
    assert a.ext.extents() == [(0, 1, 3, False)]
    assert b.ext.extents() == [(0, 4, 3, False)]
    assert fs.balloc.free_blocks == 4095 - 6
    assert fs.bdev.read_disk(1 * P, 3 * P) == file_pattern(12, 0, 3 * P)
    disk_b = fs.bdev.read_disk(4 * P, 3 * P)
    assert disk_b[: 2 * P + 100] == file_pattern(13, 0, 2 * P + 100)
    assert disk_b[2 * P + 100 :] == bytes(P - 100)  # the EOF block's tail is zeroed
    # cached and clean, as the scenario format requires
    assert a.i_mapping.nrpages == 3 and b.i_mapping.nrpages == 3
    assert dirty(k, a) == dirty(k, b) == 0


def test_create_file_holes_and_unwritten(k):
    fs = mkfs(k)
    f = fs.create_file("f", 4 * P, holes=[(P, P)], unwritten=[(2 * P, P), (5 * P, 2 * P)])
    assert f.i_size == 4 * P
    assert f.ext.extents() == [(0, 1, 1, False), (2, 3, 1, True), (3, 4, 1, False),
                               (5, 6, 2, True)]
    assert f.i_mapping.nrpages == 2  # the data pages only
    p = k.spawn()
    fd = p.open("/f", os.O_RDONLY)
    want = bytearray(file_pattern(f.i_ino, 0, 4 * P))
    want[P : 3 * P] = bytes(2 * P)
    assert pread(p, fd, 8 * P, 0) == bytes(want)
    st = p.statx(fd)
    assert st["size"] == 4 * P and st["blocks"] == 5 * 8 and st["blksize"] == P
    with pytest.raises(ValueError):
        fs.create_file("g", P, holes=[(100, P)])
    with pytest.raises(ValueError):
        fs.create_file("f", P)


# --- open -----------------------------------------------------------------------------------------
OPEN_ERRORS = [
    ("/missing", os.O_RDONLY, errno.ENOENT),
    ("/a", os.O_CREAT | os.O_EXCL | os.O_WRONLY, errno.EEXIST),
    ("/", os.O_WRONLY, errno.EISDIR),
    ("/", os.O_RDWR, errno.EISDIR),
    ("/", os.O_RDONLY | os.O_TRUNC, errno.EISDIR),
    ("/", os.O_CREAT | os.O_RDONLY, errno.EISDIR),
    ("/a/b", os.O_RDONLY, errno.ENOTDIR),
    ("/a/", os.O_RDONLY, errno.ENOTDIR),
    ("/a", os.O_RDONLY | os.O_DIRECTORY, errno.ENOTDIR),
    ("/nodir/x", os.O_CREAT | os.O_WRONLY, errno.ENOENT),
    ("/" + "x" * 256, os.O_CREAT | os.O_WRONLY, errno.ENAMETOOLONG),
    ("/", os.O_RDONLY | os.O_DIRECT, errno.EINVAL),
    ("relative", os.O_RDONLY, errno.ENOENT),
]


@pytest.mark.parametrize(("path", "flags", "err"), OPEN_ERRORS)
def test_open_errors(k, path, flags, err):
    fs = mkfs(k)
    fs.create_file("a", P)
    p = k.spawn()
    assert oserror(p.open, path, flags) == err
    assert fs.lookup("x" * 256) is None


def test_open_modes_trunc_and_odirect(k):
    fs = mkfs(k)
    a = fs.create_file("a", 3 * P)
    p = k.spawn()
    fd = p.open("/a", os.O_RDONLY | os.O_DIRECT)
    f = p.files.get(fd)
    assert f.f_flags & os.O_DIRECT and f.f_flags & 0o100000  # O_LARGEFILE forced
    assert not f.f_flags & (os.O_CREAT | os.O_TRUNC)
    assert oserror(p.pwrite, fd, user_buf(p, b"x"), 1, 0) == errno.EBADF
    fd2 = p.open("/a", os.O_WRONLY | os.O_TRUNC)
    assert a.i_size == 0 and a.ext.nr_blocks == 0 and a.i_mapping.nrpages == 0
    assert fs.balloc.free_blocks == 4095
    assert oserror(p.pread, fd2, user_buf(p, b"", 0), 1, 0) == errno.EBADF
    fd3 = p.open("/new", os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
    st = p.statx(fd3)
    assert st["mode"] == 0o100600 and st["size"] == 0 and st["ino"] == 13
    d = p.open("/", os.O_RDONLY)
    assert oserror(p.pread, d, user_buf(p, b"", 0), 1, 0) == errno.EISDIR
    assert p.statx(d)["mode"] == 0o040755


# --- integer arguments, as os takes them ------------------------------------------------------
I64 = np.int64
INT_ARGS = [  # (call, args given buf, the direct-I/O file's fd): numpy integers are integers
    ("pread", lambda b, fd: (fd, I64(b), I64(2 * P), I64(P))),
    ("read", lambda b, fd: (fd, I64(b), I64(2 * P))),
    ("preadv", lambda b, fd: (fd, [(I64(b), I64(P)), (I64(b + P), I64(P))], I64(P))),
    ("preadv", lambda b, fd: (fd, np.array([[b, P], [b + P, P]]), P)),
    ("preadv2", lambda b, fd: (fd, [(b, 2 * P)], I64(P), I64(0))),
]
NOT_INTS = [  # (call, args, what os would say): TypeError, nothing pinned, nothing moved
    ("pread", lambda b, fd: (fd, b, 2.0 * P, 0), "float"),
    ("pread", lambda b, fd: (fd, b, 2 * P, None), "NoneType"),
    ("pread", lambda b, fd: (fd, str(b), 2 * P, 0), "str"),
    ("write", lambda b, fd: (fd, b, float(P)), "float"),
    ("preadv", lambda b, fd: (fd, [(b, float(P))], 0), "float"),
    ("preadv", lambda b, fd: (fd, [(b,)], 0), "pair"),
    ("preadv", lambda b, fd: (fd, [b, P], 0), "len"),
    ("pwritev2", lambda b, fd: (fd, [(b, P)], 0, 0.0), "float"),
]


@pytest.mark.parametrize("call,args", INT_ARGS, ids=[c for c, _ in INT_ARGS])
def test_numpy_integers_are_accepted_as_os_accepts_them(k, call, args):
    """``os.pread(fd, np.int64(n), np.int64(off))`` works, and so does the model's: every
    integer argument goes through ``operator.index``."""
    fs = mkfs(k)
    data = bytes(range(256)) * (4 * P // 256)
    fs.create_file("a", 4 * P, data)
    p = k.spawn()
    fd = p.open("/a", os.O_RDWR | os.O_DIRECT)
    b = user_buf(p, bytes(2 * P))
    before = k.vmstat.pins()
    assert getattr(p, call)(*args(b, fd)) == 2 * P
    want = data[P : 3 * P] if call != "read" else data[: 2 * P]
    assert p.read_user(b, 2 * P) == want
    acquired, released = k.vmstat.pins()
    assert acquired - before[0] == released - before[1]


@pytest.mark.parametrize("call,args,what", NOT_INTS, ids=[f"{c}-{w}" for c, _, w in NOT_INTS])
def test_an_argument_that_is_no_integer_raises_type_error_and_leaks_nothing(k, call, args, what):
    fs = mkfs(k)
    fs.create_file("a", 4 * P, b"\x5a" * 4 * P)
    p = k.spawn()
    fd = p.open("/a", os.O_RDWR | os.O_DIRECT)
    b = user_buf(p, b"\x11" * 2 * P)
    before = k.vmstat.pins()
    refs = k.pgdat.pages.refcount.copy()
    with pytest.raises(TypeError, match=what):
        getattr(p, call)(*args(b, fd))
    assert k.vmstat.pins() == before
    assert np.array_equal(k.pgdat.pages.refcount, refs)
    assert p.read_user(b, 2 * P) == b"\x11" * 2 * P
    assert p.pread(fd, b, P, 0) == P  # the file and the descriptor are as they were
    assert p.read_user(b, P) == b"\x5a" * P


# --- buffered I/O ------------------------------------------------------------------------------
WRITES = [(0, 1), (511, 600), (4095, 2), (4097, 10000), (12345, 300000), (P * 80, P),
          (1 << 20, 3)]


def _workload(k: Kernel, fs: ModelFs) -> bytes:
    p = k.spawn()
    fd = p.open("/w", os.O_CREAT | os.O_RDWR)
    ref = bytearray()
    rng = np.random.default_rng(7)
    for off, n in WRITES:
        data = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
        assert pwrite(p, fd, data, off) == n
        if len(ref) < off + n:
            ref.extend(bytes(off + n - len(ref)))
        ref[off : off + n] = data
    assert pread(p, fd, len(ref) + 5000, 0) == bytes(ref)
    for off, n in [(0, 7), (4090, 20), (12000, 70000), (len(ref) - 3, 100)]:
        assert pread(p, fd, n, off) == bytes(ref[off : off + n])
    p.fsync(fd)
    inode = fs.lookup("w")
    assert dirty(k, inode) == 0
    assert not any(u for _, _, _, u in inode.ext.extents())  # converted at writeback
    return bytes(ref)


def _file_bytes_on_disk(fs: ModelFs, name: str) -> bytes:
    inode = fs.lookup(name)
    out = bytearray(inode.i_size)
    for lblk, pblk, n, _ in inode.ext.extents():
        data = fs.bdev.read_disk(pblk * P, n * P)
        end = min((lblk + n) * P, inode.i_size)
        out[lblk * P : end] = data[: end - lblk * P]
    return bytes(out)


def test_buffered_round_trip_memdevice_and_filedevice_agree(k, tmp_path):
    fs_mem = mkfs(k)
    ref = _workload(k, fs_mem)
    assert _file_bytes_on_disk(fs_mem, "w") == ref
    with FileDevice(k.pgdat, tmp_path / "disk.img", "16M",
                    limits=QueueLimits()) as fdev:
        fs_file = mkfs(k, dev=fdev)
        assert _workload(k, fs_file) == ref
        assert _file_bytes_on_disk(fs_file, "w") == ref
        assert fdev.read_disk(0, 16 << 20) == fs_mem.bdev.read_disk(0, 16 << 20)


def test_reads_at_and_past_eof(k):
    fs = mkfs(k)
    fs.create_file("a", 5000)
    p = k.spawn()
    fd = p.open("/a", os.O_RDONLY)
    assert pread(p, fd, 10000, 0) == file_pattern(12, 0, 5000)
    assert pread(p, fd, 10, 4999) == file_pattern(12, 4999, 1)
    assert pread(p, fd, 10, 5000) == b""
    assert pread(p, fd, 10, 1 << 40) == b""
    assert p.pread(fd, user_buf(p, b"", 0), 0, 0) == 0


def test_buffered_write_extends_and_allocates_unwritten_until_writeback(k):
    fs = mkfs(k)
    p = k.spawn()
    fd = p.open("/a", os.O_CREAT | os.O_RDWR)
    assert pwrite(p, fd, b"abc", 2 * P + 5) == 3
    inode = fs.lookup("a")
    assert inode.i_size == 2 * P + 8
    assert inode.ext.extents() == [(2, 1, 1, True)]  # only the written block
    assert dirty(k, inode) == 1
    flushes = fs.bdev.flushes
    p.fsync(fd)
    assert fs.bdev.flushes == flushes + 1  # the REQ_PREFLUSH of ext4_sync_file
    assert inode.ext.extents() == [(2, 1, 1, False)]
    assert fs.bdev.read_disk(P, P) == bytes(5) + b"abc" + bytes(P - 8)
    assert pread(p, fd, 3 * P, 0) == bytes(2 * P + 5) + b"abc"


def test_buffered_write_fault_keeps_what_was_copied(k):
    fs = mkfs(k)
    p = k.spawn()
    fd = p.open("/a", os.O_CREAT | os.O_RDWR)
    src = p.mmap(3 * P)
    p.write_user(src, b"q" * 3 * P)
    p.munmap(src + 2 * P, P)
    assert p.pwrite(fd, src + 100, 3 * P, 0) == 2 * P - 100
    assert fs.lookup("a").i_size == 2 * P - 100
    assert fs.lookup("a").ext.nr_blocks == 2
    assert oserror(p.pwrite, fd, src + 2 * P, 10, 0) == errno.EFAULT


def test_buffered_write_enospc(k):
    fs = mkfs(k, "64K")  # 16 blocks, 15 for data
    p = k.spawn()
    fd = p.open("/a", os.O_CREAT | os.O_RDWR)
    assert pwrite(p, fd, b"z" * 20 * P, 0) == 15 * P
    assert fs.balloc.free_blocks == 0
    assert oserror(pwrite, p, fd, b"z", 15 * P) == errno.ENOSPC
    assert pwrite(p, fd, b"y" * 10, 5) == 10  # overwrites need no block


def test_buffered_nowait_write_and_read(k):
    fs = mkfs(k)
    fs.create_file("a", 2 * P)
    inode = fs.lookup("a")
    p = k.spawn()
    fd = p.open("/a", os.O_RDWR)
    buf = user_buf(p, b"x" * P)
    assert oserror(p.pwritev2, fd, [(buf, 10)], 0, os.RWF_NOWAIT) == errno.EOPNOTSUPP
    assert p.preadv2(fd, [(buf, P)], 0, os.RWF_NOWAIT) == P  # cached: no I/O needed
    filemap_drop(inode)
    assert oserror(p.preadv2, fd, [(buf, P)], 0, os.RWF_NOWAIT) == errno.EAGAIN


def filemap_drop(inode) -> None:
    from dioscope.mm import filemap

    filemap.truncate_inode_pages(inode.i_mapping, 0)


def test_o_append_and_dsync(k):
    fs = mkfs(k)
    fs.create_file("a", 10)
    p = k.spawn()
    fd = p.open("/a", os.O_WRONLY | os.O_APPEND | os.O_DSYNC)
    flushes = fs.bdev.flushes
    assert pwrite(p, fd, b"tail", 0) == 4
    assert fs.lookup("a").i_size == 14
    assert dirty(k, fs.lookup("a")) == 0 and fs.bdev.flushes == flushes + 1
    assert fs.bdev.read_disk(P + 10, 4) == b"tail"


def test_write_past_maxbytes_is_efbig(k):
    fs = mkfs(k)
    p = k.spawn()
    fd = p.open("/a", os.O_CREAT | os.O_RDWR)
    assert oserror(pwrite, p, fd, b"x", EXT4_MAXBYTES) == errno.EFBIG
    assert pwrite(p, fd, b"xy", EXT4_MAXBYTES - 1) == 1
    assert fs.lookup("a").i_size == EXT4_MAXBYTES


# --- truncate -------------------------------------------------------------------------------------
@pytest.mark.parametrize(("size", "blocks"), [(0, 0), (511, 1), (512, 1), (4095, 1), (4096, 1),
                                             (4097, 2)])
def test_ftruncate_shrink_and_grow(k, size, blocks):
    fs = mkfs(k)
    f = fs.create_file("a", 3 * P)
    p = k.spawn()
    fd = p.open("/a", os.O_RDWR)
    p.ftruncate(fd, size)
    assert f.i_size == size and f.ext.nr_blocks == blocks
    assert f.ext.extents() == ([(0, 1, blocks, False)] if blocks else [])
    assert fs.balloc.free_blocks == 4095 - blocks
    assert f.i_mapping.nrpages == blocks
    assert pread(p, fd, 3 * P, 0) == file_pattern(12, 0, size)
    p.fsync(fd)
    if size % P:
        # ext4_block_truncate_page(): the tail of the EOF block is zero on disk too.
        assert fs.bdev.read_disk(P * blocks + size % P, P - size % P) == bytes(P - size % P)
    p.ftruncate(fd, 3 * P)  # grow: a hole, nothing allocated
    assert f.i_size == 3 * P and f.ext.nr_blocks == blocks
    assert pread(p, fd, 3 * P, 0) == file_pattern(12, 0, size) + bytes(3 * P - size)


def test_ftruncate_errors_and_prealloc(k):
    fs = mkfs(k)
    f = fs.create_file("a", P, unwritten=[(P, 4 * P)])
    p = k.spawn()
    fd = p.open("/a", os.O_RDWR)
    ro = p.open("/a", os.O_RDONLY)
    assert oserror(p.ftruncate, fd, -1) == errno.EINVAL
    assert oserror(p.ftruncate, ro, 0) == errno.EINVAL
    assert oserror(p.ftruncate, fd, EXT4_MAXBYTES + 1) == errno.EFBIG
    assert f.ext.nr_blocks == 5
    p.ftruncate(fd, P)  # same size: still drops the preallocation past EOF
    assert f.ext.extents() == [(0, 1, 1, False)] and f.i_size == P


# --- fallocate ---------------------------------------------------------------------------------
@pytest.mark.parametrize(("mode", "off", "length", "extents", "size"), [
    (0, 0, 2 * P, [(0, 1, 2, True)], 2 * P),
    (KEEP, 0, 2 * P, [(0, 1, 2, True)], 0),
    (0, 4095, 2, [(0, 1, 2, True)], 4097),
    (0, 4096, 1, [(1, 1, 1, True)], 4097),
    (KEEP, 511, 1, [(0, 1, 1, True)], 0),
])
def test_fallocate_preallocates_unwritten(k, mode, off, length, extents, size):
    fs = mkfs(k)
    p = k.spawn()
    fd = p.open("/a", os.O_CREAT | os.O_RDWR)
    p.fallocate(fd, mode, off, length)
    inode = fs.lookup("a")
    assert inode.ext.extents() == extents and inode.i_size == size
    assert p.statx(fd)["blocks"] == 8 * sum(e[2] for e in extents)
    assert pread(p, fd, 4 * P, 0) == bytes(size)
    assert inode.i_mapping.nrpages == 0 or dirty(k, inode) == 0


def test_fallocate_over_data_keeps_it(k):
    fs = mkfs(k)
    f = fs.create_file("a", 2 * P, holes=[(P, P)])
    p = k.spawn()
    fd = p.open("/a", os.O_RDWR)
    p.fallocate(fd, 0, 0, 4 * P)
    assert f.ext.extents() == [(0, 1, 1, False), (1, 2, 3, True)]
    assert f.i_size == 4 * P
    assert pread(p, fd, 4 * P, 0) == file_pattern(12, 0, P) + bytes(3 * P)


@pytest.mark.parametrize(("off", "length", "extents", "zeroed"), [
    (0, P, [(1, 2, 3, False)], (0, P)),
    (511, 1, [(0, 1, 4, False)], (511, 512)),
    (512, P, [(0, 1, 4, False)], (512, P + 512)),
    (4095, P + 2, [(0, 1, 1, False), (2, 3, 2, False)], (4095, 2 * P + 1)),
    (P, P, [(0, 1, 1, False), (2, 3, 2, False)], (P, 2 * P)),
    (P + 1, 2 * P, [(0, 1, 2, False), (3, 4, 1, False)], (P + 1, 3 * P + 1)),
    (0, 1 << 30, [], (0, 4 * P)),
    (4 * P, P, [(0, 1, 4, False)], (0, 0)),
])
def test_punch_hole(k, off, length, extents, zeroed):
    fs = mkfs(k)
    f = fs.create_file("a", 4 * P)
    p = k.spawn()
    fd = p.open("/a", os.O_RDWR)
    p.fallocate(fd, PUNCH | KEEP, off, length)
    assert f.i_size == 4 * P
    assert f.ext.extents() == extents
    want = bytearray(file_pattern(12, 0, 4 * P))
    want[zeroed[0] : zeroed[1]] = bytes(zeroed[1] - zeroed[0])
    assert pread(p, fd, 4 * P, 0) == bytes(want)
    p.fsync(fd)
    assert _file_bytes_on_disk(fs, "a") == bytes(want)


def test_punch_hole_past_eof_spares_preallocation_beyond_the_eof_page(k):
    fs = mkfs(k)
    f = fs.create_file("a", P + 10, unwritten=[(2 * P, 3 * P)])
    p = k.spawn()
    fd = p.open("/a", os.O_RDWR)
    p.fallocate(fd, PUNCH | KEEP, P, 8 * P)  # cut at the end of the page holding EOF
    assert f.ext.extents() == [(0, 1, 1, False), (2, 3, 3, True)]
    assert pread(p, fd, 3 * P, 0) == file_pattern(12, 0, P) + bytes(10)


@pytest.mark.parametrize(("mode", "off", "length", "err"), [
    (0, -1, 1, errno.EINVAL),
    (0, 0, 0, errno.EINVAL),
    (PUNCH, 0, P, errno.EOPNOTSUPP),
    (0x100, 0, P, errno.EOPNOTSUPP),
    (PUNCH | KEEP | int(FALLOC.FALLOC_FL_ZERO_RANGE), 0, P, errno.EOPNOTSUPP),
    (int(FALLOC.FALLOC_FL_COLLAPSE_RANGE) | KEEP, 0, P, errno.EINVAL),
    (int(FALLOC.FALLOC_FL_INSERT_RANGE) | KEEP, 0, P, errno.EINVAL),
    (int(FALLOC.FALLOC_FL_UNSHARE_RANGE) | PUNCH | KEEP, 0, P, errno.EINVAL),
    (int(FALLOC.FALLOC_FL_UNSHARE_RANGE), 0, P, errno.EOPNOTSUPP),
    (0, EXT4_MAXBYTES, 1, errno.EFBIG),
])
def test_fallocate_errors(k, mode, off, length, err):
    fs = mkfs(k)
    fs.create_file("a", P)
    p = k.spawn()
    fd = p.open("/a", os.O_RDWR)
    assert oserror(p.fallocate, fd, mode, off, length) == err
    assert fs.lookup("a").ext.extents() == [(0, 1, 1, False)]


def test_zero_range_makes_whole_blocks_unwritten_and_zeroes_the_edges(k):
    """ext4_zero_range(): the range reads as zeros; whole blocks become unwritten extents
    (a Direct I/O read of them pins nothing, as on the host), edge blocks are zeroed in
    place; i_size is unchanged inside the file."""
    fs = mkfs(k)
    fs.create_file("a", 4 * P)
    p = k.spawn()
    fd = p.open("/a", os.O_RDWR)
    p.fallocate(fd, int(FALLOC.FALLOC_FL_ZERO_RANGE), 512, 2 * P)
    inode = fs.lookup("a")
    assert inode.i_size == 4 * P
    unwritten = [e for e in inode.ext.extents() if e[3]]
    assert [(e[0], e[1]) for e in unwritten] == [(1, 2)]
    data = pread(p, fd, 4 * P, 0)
    want = file_pattern(inode.i_ino, 0, 4 * P)
    assert data == want[:512] + bytes(2 * P) + want[512 + 2 * P :]


def test_fallocate_needs_a_writable_file_and_space(k):
    fs = mkfs(k, "64K")
    fs.create_file("a", P)
    p = k.spawn()
    ro = p.open("/a", os.O_RDONLY)
    assert oserror(p.fallocate, ro, 0, 0, P) == errno.EBADF
    fd = p.open("/a", os.O_RDWR)
    assert oserror(p.fallocate, fd, 0, 0, 20 * P) == errno.ENOSPC
    inode = fs.lookup("a")
    assert inode.ext.extents() == [(0, 1, 1, False), (1, 2, 14, True)]
    assert inode.i_size == 15 * P  # what was allocated before ENOSPC stays in the file


# --- fsync and writeback errors ---------------------------------------------------------------
def test_fsync_reports_a_writeback_error_once_per_open_file(k):
    fs = mkfs(k)
    fs.create_file("a", P)
    p = k.spawn()
    fd1 = p.open("/a", os.O_RDWR)
    fd2 = p.open("/a", os.O_RDONLY)
    fs.bdev.inject(EIOOnSectors(start=8, end=16))  # block 1
    assert pwrite(p, fd1, b"lost", 0) == 4
    assert oserror(p.fsync, fd1) == errno.EIO
    p.fsync(fd1)  # seen: reported once
    assert oserror(p.fsync, fd2) == errno.EIO  # every open file sees it once
    p.fsync(fd2)
    fd3 = p.open("/a", os.O_RDONLY)
    p.fsync(fd3)  # opened after the error was seen
    assert dirty(k, fs.lookup("a")) == 0


# --- statx --------------------------------------------------------------------------------------
@pytest.mark.parametrize(("engine", "limits", "align"), [
    ("iomap", QueueLimits(), (512, 512)),
    ("iomap", QueueLimits(logical_block_size=4096, dma_alignment=3), (4, 4096)),
    ("legacy", QueueLimits(), (512, 512)),
    ("legacy", QueueLimits(logical_block_size=4096, dma_alignment=3), (4096, 4096)),
])
def test_statx_dioalign_per_profile(k, engine, limits, align):
    fs = mkfs(k, engine=engine, dev=MemDevice(k.pgdat, "16M", limits=limits))
    fs.create_file("a", 3 * P + 1)
    p = k.spawn()
    fd = p.open("/a", os.O_RDONLY)
    st = p.statx(fd, int(STATX.STATX_BASIC_STATS | STATX.STATX_DIOALIGN))
    assert st["size"] == 3 * P + 1 and st["blocks"] == 32 and st["blksize"] == P
    assert st["mode"] == 0o100644 and st["nlink"] == 1 and st["ino"] == 12
    has = bool(st["mask"] & STATX.STATX_DIOALIGN)
    assert has == (k.cfg.name == "6.18")
    assert (st["dio_mem_align"], st["dio_offset_align"]) == (align if has else (0, 0))
    assert st["mask"] & 0x7FF == 0x7FF and st["mask"] & STATX.STATX_MNT_ID
    plain = p.statx(fd)
    assert not plain["mask"] & STATX.STATX_DIOALIGN and plain["dio_mem_align"] == 0
    d = p.open("/", os.O_RDONLY)
    dst = p.statx(d, int(STATX.STATX_DIOALIGN))
    assert not dst["mask"] & STATX.STATX_DIOALIGN and dst["size"] == P


# --- unlink -----------------------------------------------------------------------------------
def test_unlink_frees_blocks_after_the_last_close(k):
    fs = mkfs(k)
    fs.create_file("a", 2 * P)
    free_pages = k.pgdat.nr_free()
    p = k.spawn()
    fd = p.open("/a", os.O_RDWR)
    assert fs.unlink("a") == 0
    assert fs.lookup("a") is None and fs.balloc.free_blocks == 4093
    assert oserror(p.open, "/a", os.O_RDONLY) == errno.ENOENT
    assert pread(p, fd, 2 * P, 0) == file_pattern(12, 0, 2 * P)  # still readable
    p.close(fd)
    assert fs.balloc.free_blocks == 4095 and 12 not in fs.inodes
    assert k.pgdat.nr_free() >= free_pages + 2  # its page cache went too
    assert fs.unlink("a") == -errno.ENOENT and fs.unlink("") == -errno.EISDIR


# --- the iomap interface ------------------------------------------------------------------------
def _layout(fs: ModelFs):
    f = fs.create_file("f", 4 * P, holes=[(P, P)], unwritten=[(2 * P, P)])
    assert f.ext.extents() == [(0, 1, 1, False), (2, 3, 1, True), (3, 4, 1, False)]
    return f


@pytest.mark.parametrize(("pos", "length", "want"), [
    (0, 4 * P, (0, P, IOMAP_TYPE.IOMAP_MAPPED, P)),
    (100, 50, (0, P, IOMAP_TYPE.IOMAP_MAPPED, P)),
    (P, 3 * P, (P, P, IOMAP_TYPE.IOMAP_HOLE, IOMAP_NULL_ADDR)),
    (2 * P + 512, P, (2 * P, 2 * P, IOMAP_TYPE.IOMAP_UNWRITTEN, 3 * P)),
    (3 * P, P, (3 * P, P, IOMAP_TYPE.IOMAP_MAPPED, 4 * P)),
    (4 * P, 2 * P, (4 * P, 2 * P, IOMAP_TYPE.IOMAP_HOLE, IOMAP_NULL_ADDR)),
])
def test_iomap_begin_read(k, pos, length, want):
    fs = mkfs(k)
    f = _layout(fs)
    err, iomap = fs.iomap_ops.iomap_begin(f, pos, length, int(IOMAP_OP.IOMAP_DIRECT))
    assert err == 0
    offset, ln, typ, addr = want
    if typ == IOMAP_TYPE.IOMAP_UNWRITTEN:
        ln = P  # the unwritten run is one block (block 3 is written)
    assert (iomap.offset, iomap.length, iomap.type, iomap.addr) == (offset, ln, typ, addr)
    assert iomap.bdev is fs.bdev and not iomap.flags & IOMAP_FLAGS.IOMAP_F_NEW


WRITE = int(IOMAP_OP.IOMAP_WRITE | IOMAP_OP.IOMAP_DIRECT)


def test_iomap_begin_write_allocation_and_end_io(k):
    fs = mkfs(k)
    f = _layout(fs)
    ops = fs.iomap_ops
    _, m = ops.iomap_begin(f, 0, P, WRITE)  # overwrite of written blocks: as it is
    assert (m.type, m.addr, m.flags & IOMAP_FLAGS.IOMAP_F_NEW) == (IOMAP_TYPE.IOMAP_MAPPED, P, 0)
    _, m = ops.iomap_begin(f, P, P, WRITE)  # hole inside i_size: unwritten, new
    assert (m.offset, m.length, m.type, m.addr) == (P, P, IOMAP_TYPE.IOMAP_UNWRITTEN, 2 * P)
    assert m.flags & IOMAP_FLAGS.IOMAP_F_NEW
    _, m = ops.iomap_begin(f, 2 * P, P, WRITE)  # unwritten inside i_size: stays unwritten
    assert (m.type, m.addr) == (IOMAP_TYPE.IOMAP_UNWRITTEN, 3 * P)
    assert m.flags & IOMAP_FLAGS.IOMAP_F_NEW
    _, m = ops.iomap_begin(f, 4 * P, 2 * P, WRITE)  # past EOF: written, new
    assert (m.offset, m.length, m.type, m.addr) == (4 * P, 2 * P, IOMAP_TYPE.IOMAP_MAPPED, 5 * P)
    assert m.flags & IOMAP_FLAGS.IOMAP_F_NEW and m.flags & IOMAP_FLAGS.IOMAP_F_DIRTY
    assert f.ext.extents() == [(0, 1, 1, False), (1, 2, 2, True), (3, 4, 3, False)]
    assert f.i_size == 4 * P  # only end_io moves it
    p = k.spawn()
    fd = p.open("/f", os.O_RDWR | os.O_DIRECT)
    iocb = Kiocb(p.files.get(fd), P)
    assert ops.end_io(iocb, P, -errno.EIO, IOMAP_DIO_UNWRITTEN) == -errno.EIO
    assert f.ext.extents()[1] == (1, 2, 2, True)
    assert ops.end_io(iocb, 2 * P, 0, IOMAP_DIO_UNWRITTEN) == 0
    assert f.ext.extents() == [(0, 1, 6, False)]
    iocb = Kiocb(p.files.get(fd), 4 * P)
    assert ops.end_io(iocb, P + 100, 0, 0) == 0
    assert f.i_size == 5 * P + 100
    assert ops.iomap_end(f, 0, P, 0, WRITE, m) == -errno.ENOTBLK
    assert ops.iomap_end(f, 0, P, P, WRITE, m) == 0
    err, m = ops.iomap_begin(f, (0xFFFFFFFE + 1) * P, P, 0)
    assert err == -errno.EINVAL and m is None


def test_iomap_begin_enospc(k):
    fs = mkfs(k, "64K")
    f = fs.create_file("a", 15 * P)
    err, m = fs.iomap_ops.iomap_begin(f, 15 * P, P, WRITE)
    assert err == -errno.ENOSPC and m is None


# --- the get_block interface -----------------------------------------------------------------
def test_get_block(k):
    fs = mkfs(k, engine="legacy")
    f = _layout(fs)
    bh = BufferHead(b_size=4 * P)
    assert ext4_get_block(f, 0, bh, 0) == 0
    assert (bh.mapped, bh.b_blocknr, bh.b_size, bh.new, bh.boundary) == (True, 1, P, False, False)
    assert bh.b_bdev is fs.bdev
    bh = BufferHead(b_size=2 * P)
    assert ext4_get_block(f, 1, bh, 0) == 0
    assert (bh.mapped, bh.b_size, bh.unwritten) == (False, P, False)
    bh = BufferHead(b_size=P)
    assert ext4_get_block(f, 2, bh, 0) == 0  # unwritten reads as a hole
    assert (bh.mapped, bh.unwritten, bh.b_blocknr, bh.b_size) == (False, True, 3, P)
    bh = BufferHead(b_size=P)
    assert ext4_get_block(f, 2, bh, 1) == 0  # create converts it
    assert (bh.mapped, bh.new, bh.b_blocknr) == (True, True, 3)
    bh = BufferHead(b_size=3 * P)
    assert ext4_get_block(f, 5, bh, 1) == 0
    assert (bh.mapped, bh.new, bh.b_blocknr, bh.b_size) == (True, True, 6, 3 * P)
    assert f.ext.extents() == [(0, 1, 1, False), (2, 3, 2, False), (5, 6, 3, False)]
    bh = BufferHead(b_size=P)
    assert ext4_get_block(f, 0xFFFFFFFF, bh, 1) == -errno.EFBIG


# --- the Direct I/O engine seam -----------------------------------------------------------------
class FakeEngine:
    """Records the calls an engine gets and answers with ``ret``, consuming that much of
    the iterator (and, as iomap does, moving ``ki_pos``)."""

    def __init__(self, ret: int = 0, moves_pos: bool = True) -> None:
        self.calls: list[tuple] = []
        self.ret = ret
        self.moves_pos = moves_pos

    def __call__(self, *args):
        self.calls.append(args)
        iocb, it = args[0], args[2] if not self.moves_pos else args[1]
        if self.ret > 0:
            iov_iter_advance(it, self.ret)
            if self.moves_pos:
                iocb.ki_pos += self.ret
        return self.ret


def test_no_engine_is_a_runtime_error(k, monkeypatch):
    monkeypatch.setattr(fs_types, "DIO_ENGINES", {})
    fs = mkfs(k)
    fs.create_file("a", P)
    p = k.spawn()
    fd = p.open("/a", os.O_RDONLY | os.O_DIRECT)
    with pytest.raises(RuntimeError, match="no 'iomap' Direct I/O engine"):
        p.pread(fd, user_buf(p, b"", 0), P, 0)


def test_iomap_engine_gets_the_filesystem_ops(k):
    eng = FakeEngine(0)
    fs = mkfs(k, dio_ops={"iomap": eng})
    fs.create_file("a", 2 * P)
    p = k.spawn()
    fd = p.open("/a", os.O_RDWR | os.O_DIRECT)
    buf = user_buf(p, b"d" * 2 * P)
    p.pread(fd, buf, P, 0)
    iocb, it, ops, flags = eng.calls[-1]
    assert iocb.ki_pos == 0 and iocb.ki_flags & fs_types.IOCB.IOCB_DIRECT
    assert ops is fs.iomap_ops and flags == 0 and it.count == P
    eng.ret = P
    assert p.pwrite(fd, buf, P, 0) == P  # an aligned overwrite
    assert eng.calls[-1][3] == 0
    p.pwrite(fd, buf, P, 2 * P)  # extending: waited for
    assert eng.calls[-1][3] == IOMAP_DIO_FORCE_WAIT


def test_iomap_engine_enotblk_falls_back_to_buffered(k):
    eng = FakeEngine(-errno.ENOTBLK)
    fs = mkfs(k, dio_ops={"iomap": eng})
    f = fs.create_file("a", 2 * P)
    p = k.spawn()
    fd = p.open("/a", os.O_RDWR | os.O_DIRECT)
    assert pwrite(p, fd, b"B" * P, P) == P
    assert fs.bdev.read_disk(2 * P, P) == b"B" * P  # written back
    assert f.i_mapping.lookup(1) == -1  # and dropped from the page cache


def test_legacy_engine_short_write_falls_back_to_buffered(k):
    eng = FakeEngine(0, moves_pos=False)
    fs = mkfs(k, engine="legacy", dio_ops={"legacy": eng})
    f = fs.create_file("a", 2 * P, holes=[(P, P)])
    p = k.spawn()
    fd = p.open("/a", os.O_RDWR | os.O_DIRECT)
    assert pwrite(p, fd, b"L" * P, P) == P
    _iocb, inode, _it, get_block = eng.calls[-1]
    assert inode is f and get_block is ext4_get_block
    pblk, unw = f.ext.lookup(1, 1)
    assert pblk[0] == 2 and not unw[0] and fs.bdev.read_disk(2 * P, P) == b"L" * P
    assert f.i_mapping.lookup(1) == -1
    eng.ret = -errno.EIO
    assert oserror(pwrite, p, fd, b"x" * P, 4 * P) == errno.EIO
    assert f.i_size == 2 * P and f.ext.nr_blocks == 2  # nothing left past EOF


def test_iomap_nowait_write_rules(k):
    eng = FakeEngine(P)
    fs = mkfs(k, dio_ops={"iomap": eng})
    fs.create_file("a", 4 * P, holes=[(P, P)], unwritten=[(2 * P, P)])
    p = k.spawn()
    fd = p.open("/a", os.O_RDWR | os.O_DIRECT)
    buf = user_buf(p, b"n" * P)
    six = k.cfg.EXT4_DIO_SHARED_OVERWRITE
    cases = [
        (0, P, True),  # aligned overwrite of written blocks
        (512, 512, six),  # unaligned overwrite of written blocks
        (P, P, False),  # a hole
        (2 * P, P, six),  # aligned overwrite of unwritten blocks
        (2 * P, 512, False),  # unaligned into unwritten
        (3 * P + 512, P, False),  # extending
    ]
    for off, n, ok in cases:
        if ok:
            assert p.pwritev2(fd, [(buf, n)], off, os.RWF_NOWAIT) == P, (off, n)
        else:
            assert oserror(p.pwritev2, fd, [(buf, n)], off, os.RWF_NOWAIT) == errno.EAGAIN


def test_real_engines_round_trip(k):
    pytest.importorskip("dioscope.fs.iomap.direct_io")
    pytest.importorskip("dioscope.fs.direct_io")
    for engine in ("iomap", "legacy"):
        fs = mkfs(k, engine=engine)
        f = fs.create_file(f"a-{engine}", 4 * P, holes=[(P, P)], unwritten=[(2 * P, P)])
        p = k.spawn()
        fd = p.open(f"/a-{engine}", os.O_RDWR | os.O_DIRECT)
        want = bytearray(file_pattern(f.i_ino, 0, 4 * P))
        want[P : 3 * P] = bytes(2 * P)
        assert pread(p, fd, 4 * P, 0) == bytes(want)
        data = bytes(range(256)) * 32
        assert pwrite(p, fd, data, P) == 2 * P
        assert pwrite(p, fd, data[:P], 5 * P) == P
        want[P : 3 * P] = data
        want.extend(bytes(P) + data[:P])
        assert f.i_size == 6 * P
        assert pread(p, fd, 8 * P, 0) == bytes(want)
        assert _file_bytes_on_disk(fs, f"a-{engine}") == bytes(want)
        assert not any(u for *_, u in f.ext.extents())

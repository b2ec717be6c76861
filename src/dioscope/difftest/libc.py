"""Thin ctypes bindings to the libc calls the host runner needs with raw addresses.

Every call returns ``(ret, errno)``: ``errno`` is 0 on success.  Nothing here raises for a
failing syscall; the runner reports the errno name.  Linux x86-64/arm64 (LP64) only.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno as errno_mod
import os
import struct
from collections.abc import Sequence

PAGE_SIZE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
HPAGE_SIZE = 2 << 20

PROT_NONE, PROT_READ, PROT_WRITE, PROT_EXEC = 0x0, 0x1, 0x2, 0x4
MAP_SHARED, MAP_PRIVATE, MAP_ANONYMOUS, MAP_POPULATE = 0x01, 0x02, 0x20, 0x8000
MAP_FAILED = (1 << 64) - 1
MADV = {"dontneed": 4, "hugepage": 14, "nohugepage": 15}
FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE = 0x01, 0x02
TMPFS_MAGIC, RAMFS_MAGIC = 0x01021994, 0x858458F6


class IoVec(ctypes.Structure):
    """``struct iovec``."""

    _fields_ = [("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t)]


def _load() -> ctypes.CDLL:
    name = ctypes.util.find_library("c") or "libc.so.6"
    lib = ctypes.CDLL(name, use_errno=True)
    vp, sz, i, off, ssz = (
        ctypes.c_void_p,
        ctypes.c_size_t,
        ctypes.c_int,
        ctypes.c_int64,
        ctypes.c_ssize_t,
    )
    sigs: dict[str, tuple[list[type], type]] = {
        "mmap": ([vp, sz, i, i, i, off], vp),
        "munmap": ([vp, sz], i),
        "mprotect": ([vp, sz, i], i),
        "madvise": ([vp, sz, i], i),
        "pread64": ([i, vp, sz, off], ssz),
        "pwrite64": ([i, vp, sz, off], ssz),
        "preadv64": ([i, ctypes.POINTER(IoVec), i, off], ssz),
        "pwritev64": ([i, ctypes.POINTER(IoVec), i, off], ssz),
        "preadv64v2": ([i, ctypes.POINTER(IoVec), i, off, i], ssz),
        "pwritev64v2": ([i, ctypes.POINTER(IoVec), i, off, i], ssz),
        "fallocate64": ([i, i, off, off], i),
        "statfs": ([ctypes.c_char_p, ctypes.c_void_p], i),
    }
    for fname, (args, res) in sigs.items():
        fn = getattr(lib, fname)
        fn.argtypes = args
        fn.restype = res
    return lib


_LIBC: ctypes.CDLL | None = None


def libc() -> ctypes.CDLL:
    """Return the loaded C library (loaded on first use)."""
    global _LIBC
    if _LIBC is None:
        _LIBC = _load()
    return _LIBC


def _result(ret: int | None) -> tuple[int, int]:
    if ret is None:
        ret = 0
    if ret == -1:
        return -1, ctypes.get_errno()
    return ret, 0


def _u64(v: int) -> int:
    return v & ((1 << 64) - 1)


def _s64(v: int) -> int:
    v = _u64(v)
    return v - (1 << 64) if v >= 1 << 63 else v


def errno_name(e: int) -> str:
    """Return the symbolic name of errno ``e`` (``EINVAL``)."""
    return errno_mod.errorcode.get(e, f"E{e}")


def mmap(
    addr: int, length: int, prot: int, flags: int, fd: int = -1, offset: int = 0
) -> tuple[int, int]:
    """mmap(2); returns (address, 0) or (-1, errno)."""
    ctypes.set_errno(0)
    r = libc().mmap(addr or None, _u64(length), prot, flags, fd, offset)
    if r is None or r == MAP_FAILED:
        return -1, ctypes.get_errno()
    return int(r), 0


def munmap(addr: int, length: int) -> tuple[int, int]:
    """munmap(2)."""
    return _result(libc().munmap(_u64(addr) or None, _u64(length)))


def mprotect(addr: int, length: int, prot: int) -> tuple[int, int]:
    """mprotect(2)."""
    return _result(libc().mprotect(_u64(addr) or None, _u64(length), prot))


def madvise(addr: int, length: int, advice: int) -> tuple[int, int]:
    """madvise(2)."""
    return _result(libc().madvise(_u64(addr) or None, _u64(length), advice))


def pread(fd: int, addr: int, length: int, offset: int) -> tuple[int, int]:
    """pread(2) into the raw address ``addr``."""
    return _result(libc().pread64(fd, _u64(addr) or None, _u64(length), _s64(offset)))


def pwrite(fd: int, addr: int, length: int, offset: int) -> tuple[int, int]:
    """pwrite(2) from the raw address ``addr``."""
    return _result(libc().pwrite64(fd, _u64(addr) or None, _u64(length), _s64(offset)))


def iovec_array(segs: Sequence[tuple[int, int]]) -> ctypes.Array[IoVec]:
    """Build a ``struct iovec[]`` from (address, length) pairs (values taken modulo 2**64)."""
    arr = (IoVec * max(1, len(segs)))()
    for k, (a, n) in enumerate(segs):
        arr[k].iov_base = _u64(a) or None
        arr[k].iov_len = _u64(n)
    return arr


def preadv2(
    fd: int, segs: Sequence[tuple[int, int]], offset: int, flags: int | None = None
) -> tuple[int, int]:
    """preadv(2), or preadv2(2) when ``flags`` is not None."""
    arr = iovec_array(segs)
    if flags is None:
        return _result(libc().preadv64(fd, arr, len(segs), _s64(offset)))
    return _result(libc().preadv64v2(fd, arr, len(segs), _s64(offset), flags))


def pwritev2(
    fd: int, segs: Sequence[tuple[int, int]], offset: int, flags: int | None = None
) -> tuple[int, int]:
    """pwritev(2), or pwritev2(2) when ``flags`` is not None."""
    arr = iovec_array(segs)
    if flags is None:
        return _result(libc().pwritev64(fd, arr, len(segs), _s64(offset)))
    return _result(libc().pwritev64v2(fd, arr, len(segs), _s64(offset), flags))


def fallocate(fd: int, mode: int, offset: int, length: int) -> tuple[int, int]:
    """fallocate(2)."""
    return _result(libc().fallocate64(fd, mode, _s64(offset), _s64(length)))


def fs_magic(path: str) -> int:
    """Return ``statfs(path).f_type`` (the filesystem's magic number)."""
    buf = ctypes.create_string_buffer(256)
    r, e = _result(libc().statfs(os.fsencode(path), buf))
    if r < 0:
        raise OSError(e, os.strerror(e), path)
    return int(struct.unpack_from("l", buf.raw)[0]) & 0xFFFFFFFF


def memset(addr: int, byte: int, length: int) -> None:
    """Write ``length`` copies of ``byte`` at ``addr`` (faults the pages in for write)."""
    ctypes.memset(addr, byte, length)


def poke(addr: int, data: bytes) -> None:
    """Copy ``data`` to ``addr`` (faults the pages in for write)."""
    ctypes.memmove(addr, data, len(data))


def touch_byte(addr: int, write: bool) -> None:
    """Read the byte at ``addr``; with ``write``, store it back (a write fault)."""
    b = ctypes.c_ubyte.from_address(addr)
    v = b.value
    if write:
        b.value = v

"""read/write/readv/writev/pread*/pwrite*/preadv2/pwritev2 (``fs/read_write.c``,
``lib/iov_iter.c`` ``import_iovec``/``import_ubuf``, ``include/linux/fs.h``
``kiocb_set_rw_flags``/``iocb_flags``).

Each ``do_*`` function returns bytes or -errno exactly as the syscall would; the Process layer
turns -errno into ``OSError``. User iovec arrays are given as (base, len) pairs (the model has
no user memory for the array itself).

Order of checks, as the kernel does them: fd and mode (EBADF), then the iovec array
(EINVAL for more than IOV_MAX segments or a negative length, EFAULT for a segment beyond the
user address space), then RWF flags (EOPNOTSUPP), then ``rw_verify_area`` (EINVAL for a
negative position), then the file's ``read_iter``/``write_iter``.
"""

from __future__ import annotations

import errno
from collections.abc import Sequence
from operator import index
from typing import TYPE_CHECKING, Final, SupportsIndex

import numpy as np

from ..kernel.types import MAX_RW_COUNT, TASK_SIZE, UIO_MAXIOV
from ..lib.iov_iter import ITER_DEST, ITER_SOURCE, IovIter, iov_iter_init, iov_iter_ubuf
from .fs_types import FMODE, IOCB, OFLAG, RWF, File, Kiocb

if TYPE_CHECKING:
    from ..mm.mm_types import MmStruct

__all__ = [
    "do_iter_read",
    "do_iter_write",
    "import_iovec",
    "iocb_flags",
    "kiocb_set_rw_flags",
    "rw_verify_area",
]

_SSIZE_MAX: Final = (1 << 63) - 1
_RWF_SUPPORTED: Final = (
    RWF.RWF_HIPRI | RWF.RWF_DSYNC | RWF.RWF_SYNC | RWF.RWF_NOWAIT | RWF.RWF_APPEND
    | RWF.RWF_NOAPPEND | RWF.RWF_ATOMIC | RWF.RWF_DONTCACHE
)
_RWF_SUPPORTED_59: Final = (
    RWF.RWF_HIPRI | RWF.RWF_DSYNC | RWF.RWF_SYNC | RWF.RWF_NOWAIT | RWF.RWF_APPEND
)
# Plain-int copies of the flags used per call (IntFlag arithmetic is slow in Python).
_NOT_SUPPORTED: Final = ~int(_RWF_SUPPORTED)
_NOT_SUPPORTED_59: Final = ~int(_RWF_SUPPORTED_59)
_O_APPEND: Final = int(OFLAG.O_APPEND)
_O_DIRECT: Final = int(OFLAG.O_DIRECT)
_O_DSYNC: Final = int(OFLAG.O_DSYNC)
_O_SYNC_ONLY: Final = int(OFLAG.O_SYNC) & ~int(OFLAG.O_DSYNC)
_IOCB_APPEND: Final = int(IOCB.IOCB_APPEND)
_IOCB_DIRECT: Final = int(IOCB.IOCB_DIRECT)
_IOCB_DSYNC: Final = int(IOCB.IOCB_DSYNC)
_IOCB_SYNC: Final = int(IOCB.IOCB_SYNC)
_IOCB_NOWAIT: Final = int(IOCB.IOCB_NOWAIT)
_IOCB_HIPRI: Final = int(IOCB.IOCB_HIPRI)
_IOCB_WRITE: Final = int(IOCB.IOCB_WRITE)
_RWF_NOWAIT: Final = int(RWF.RWF_NOWAIT)
_RWF_ATOMIC: Final = int(RWF.RWF_ATOMIC)
_RWF_HIPRI: Final = int(RWF.RWF_HIPRI)
_RWF_DSYNC: Final = int(RWF.RWF_DSYNC)
_RWF_SYNC: Final = int(RWF.RWF_SYNC)
_RWF_APPEND: Final = int(RWF.RWF_APPEND)
_RWF_NOAPPEND: Final = int(RWF.RWF_NOAPPEND)
_FMODE_READ: Final = int(FMODE.FMODE_READ)
_FMODE_WRITE: Final = int(FMODE.FMODE_WRITE)


def _access_ok(base: int, length: int) -> bool:
    """``access_ok()``: the range lies in user space."""
    return base >= 0 and length >= 0 and base + length <= TASK_SIZE + 4096


def import_iovec(
    rw: int, iov: Sequence[Sequence[SupportsIndex]], mm: MmStruct
) -> tuple[int, IovIter | None]:
    """``import_iovec()``: check a user iovec array and make an iterator of it.

    More than UIO_MAXIOV segments or a negative (as ssize_t) length → -EINVAL; a segment
    outside user space → -EFAULT; the total is capped at MAX_RW_COUNT by shortening the
    segments that pass it. [6.x] a single segment becomes an ITER_UBUF.
    Return: (total bytes or -errno, the iterator). An entry that is not a pair of integers
    raises ``TypeError``, as ``os.preadv`` does for a bad buffer (there is no C equivalent).
    """
    pgdat = mm.pgdat
    nr = len(iov)
    if nr > UIO_MAXIOV:
        return -errno.EINVAL, None
    segs = np.zeros((nr, 2), np.int64)
    total = 0
    for k, seg in enumerate(iov):
        base, length = _iovec_entry(k, seg)
        if length < 0 or length > _SSIZE_MAX:
            return -errno.EINVAL, None
        if not _access_ok(base, length):
            return -errno.EFAULT, None
        if length > MAX_RW_COUNT - total:
            length = MAX_RW_COUNT - total
        segs[k] = (base, length)
        total += length
    direction = ITER_DEST if rw == ITER_DEST else ITER_SOURCE
    if nr == 1 and pgdat.cfg.ITER_UBUF:
        return total, iov_iter_ubuf(pgdat, direction, int(segs[0, 0]), total, mm)
    return total, iov_iter_init(pgdat, direction, segs, nr, total, mm)


def _iovec_entry(k: int, seg: Sequence[SupportsIndex]) -> tuple[int, int]:
    """``copy_iovec_from_user()`` of one entry: the (iov_base, iov_len) pair as integers."""
    if len(seg) != 2:
        raise TypeError(f"iovec entry {k} must be an (address, length) pair, not {seg!r}")
    return index(seg[0]), index(seg[1])


def iocb_flags(f: File) -> int:
    """``iocb_flags()``: kiocb flags implied by the open flags."""
    res = 0
    fl = int(f.f_flags)
    if fl & _O_APPEND:
        res |= _IOCB_APPEND
    if fl & _O_DIRECT:
        res |= _IOCB_DIRECT
    if fl & _O_DSYNC:
        res |= _IOCB_DSYNC
    if fl & _O_SYNC_ONLY:
        res |= _IOCB_SYNC
    return res


def kiocb_set_rw_flags(ki: Kiocb, flags: int, rw_type: int, v6: bool) -> int:
    """``kiocb_set_rw_flags()``: RWF_* of preadv2/pwritev2 into kiocb flags.

    Unknown flags → -EOPNOTSUPP ([5.9] knows HIPRI, DSYNC, SYNC, NOWAIT, APPEND; [6.18] also
    NOAPPEND, ATOMIC, DONTCACHE). [6.18] RWF_APPEND with RWF_NOAPPEND → -EINVAL; RWF_ATOMIC →
    -EOPNOTSUPP for reads and for files without atomic-write support (the model's);
    RWF_APPEND on a read is accepted and has no effect (measured on the host). RWF_NOWAIT on
    a file without FMODE_NOWAIT → -EOPNOTSUPP (the model's files all support it).
    Return: 0 or -errno.
    """
    flags = int(flags)
    if flags & (_NOT_SUPPORTED if v6 else _NOT_SUPPORTED_59):
        return -errno.EOPNOTSUPP
    if not flags:
        return 0
    kiocb_flags = 0
    if flags & _RWF_NOWAIT:
        kiocb_flags |= _IOCB_NOWAIT
    if flags & _RWF_ATOMIC:
        return -errno.EOPNOTSUPP
    if flags & _RWF_HIPRI:
        kiocb_flags |= _IOCB_HIPRI
    if flags & _RWF_DSYNC:
        kiocb_flags |= _IOCB_DSYNC
    if flags & _RWF_SYNC:
        kiocb_flags |= _IOCB_DSYNC | _IOCB_SYNC
    if flags & _RWF_APPEND:
        if flags & _RWF_NOAPPEND:
            return -errno.EINVAL
        kiocb_flags |= _IOCB_APPEND
    if flags & _RWF_NOAPPEND:
        ki.ki_flags &= ~_IOCB_APPEND
    ki.ki_flags |= kiocb_flags
    return 0


def rw_verify_area(f: File, pos: int, count: int) -> int:
    """``rw_verify_area()``: a negative position, or one whose end overflows loff_t, is
    -EINVAL / -EOVERFLOW. Return: 0 or -errno."""
    if pos < 0:
        return -errno.EINVAL
    if count > (1 << 63) - 1 - pos:
        return -errno.EOVERFLOW
    return 0


def _do_iter(f: File, it: IovIter, pos: int | None, rwf: int, write: bool) -> int:
    """``do_iter_read()`` / ``do_iter_write()`` + ``do_iter_readv_writev()``, in the kernel's
    order: mode (EBADF), empty (0), ``rw_verify_area``, RWF flags (EOPNOTSUPP), the file."""
    pgdat = f.f_inode.pgdat
    if not f.f_mode & (_FMODE_WRITE if write else _FMODE_READ):
        return -errno.EBADF
    if f.f_inode.is_dir():
        return -errno.EISDIR  # generic_read_dir(); a directory is never open for writing
    if not it.count:
        return 0
    use_pos = f.f_pos if pos is None else pos
    ret = rw_verify_area(f, use_pos, it.count)
    if ret:
        return ret
    ki = Kiocb(f, use_pos, iocb_flags(f) | (_IOCB_WRITE if write else 0))
    ret = kiocb_set_rw_flags(ki, rwf, ITER_SOURCE if write else ITER_DEST,
                             pgdat.cfg.ITER_UBUF)
    if ret:
        return ret
    if write:
        ret = f.f_op.write_iter(ki, it)
    else:
        ret = f.f_op.read_iter(ki, it)
    if ret > 0 and pos is None:
        f.f_pos = ki.ki_pos
    return int(ret)


def do_iter_read(f: File, it: IovIter, pos: int | None, rwf: int = 0) -> int:
    """``vfs_iter_read()`` / ``do_iter_readv_writev(READ)``: ``pos`` None means the file
    position (read/readv), which then advances. Return: bytes read or -errno."""
    return _do_iter(f, it, pos, rwf, write=False)


def do_iter_write(f: File, it: IovIter, pos: int | None, rwf: int = 0) -> int:
    """``vfs_iter_write()``. Return: bytes written or -errno."""
    return _do_iter(f, it, pos, rwf, write=True)


def vfs_read_write(f: File, buf: int, count: int, pos: int | None, write: bool,
                   mm: MmStruct) -> int:
    """``vfs_read()`` / ``vfs_write()`` of one user buffer (read, write, pread64, pwrite64).

    Order: mode (EBADF), ``access_ok`` (EFAULT), ``rw_verify_area``, count capped at
    MAX_RW_COUNT, then the file through a single-segment iterator ([6.x] ITER_UBUF,
    [5.9] ITER_IOVEC via ``import_single_range``).
    Return: bytes or -errno.
    """
    if not f.f_mode & (_FMODE_WRITE if write else _FMODE_READ):
        return -errno.EBADF
    if count < 0 or count > _SSIZE_MAX:
        return -errno.EINVAL if write else -errno.EFAULT
    if not _access_ok(buf, count):
        return -errno.EFAULT
    count = min(count, MAX_RW_COUNT)
    pgdat = mm.pgdat
    direction = ITER_SOURCE if write else ITER_DEST
    if pgdat.cfg.ITER_UBUF:
        it = iov_iter_ubuf(pgdat, direction, buf, count, mm)
    else:
        it = iov_iter_init(pgdat, direction, [(buf, count)], 1, count, mm)
    return _do_iter(f, it, pos, 0, write)

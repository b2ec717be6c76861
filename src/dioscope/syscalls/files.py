"""File syscalls of a process (``fs/open.c``, ``fs/read_write.c``, ``fs/file.c``, ``fs/stat.c``,
``fs/sync.c``, ``fs/open.c`` ``vfs_fallocate``), mirroring Python's ``os`` module.

User buffers are addresses in the process's model address space, and iovecs are lists of
(address, length) pairs: ``preadv(fd, [(buf, 4096), (buf2, 512)], offset)``. Every call
returns what the syscall returns, or raises ``OSError`` with the kernel's errno, as ``os``
does; bad user input never raises anything else, except that an argument that is not an
integer at all raises ``TypeError``, as ``os`` does (integers pass through ``operator.index``:
numpy's integers are as good as Python's).
"""

from __future__ import annotations

import errno
import os
from collections.abc import Sequence
from operator import index
from typing import TYPE_CHECKING, Any

from ..fs.fs_types import FMODE, OFLAG, File
from ..fs.read_write import do_iter_read, do_iter_write, import_iovec, vfs_read_write
from ..lib.iov_iter import ITER_DEST, ITER_SOURCE

if TYPE_CHECKING:
    from .process import Process

__all__ = ["FileTable", "check"]

SEEK_SET, SEEK_CUR, SEEK_END = 0, 1, 2
_OPEN_FLAGS = (
    OFLAG.O_WRONLY | OFLAG.O_RDWR | OFLAG.O_CREAT | OFLAG.O_EXCL | OFLAG.O_TRUNC
    | OFLAG.O_APPEND | OFLAG.O_NONBLOCK | OFLAG.O_DSYNC | OFLAG.O_DIRECT | OFLAG.O_LARGEFILE
    | OFLAG.O_DIRECTORY | OFLAG.O_SYNC | 0o2000000  # O_CLOEXEC
)


def check(ret: int) -> int:
    """-errno → ``OSError``, as ``os`` raises."""
    if ret < 0:
        raise OSError(-ret, os.strerror(-ret))
    return ret


class FileTable:
    """``struct files_struct``: the process's open files by descriptor."""

    def __init__(self, proc: Process) -> None:
        self.proc = proc
        self.fds: dict[int, File] = {}

    def install(self, f: File) -> int:
        """``fd_install()`` at the lowest free descriptor (0, 1, 2 are taken by stdio)."""
        fd = 3
        while fd in self.fds:
            fd += 1
        self.fds[fd] = f
        return fd

    def get(self, fd: int) -> File | None:
        return self.fds.get(fd) if isinstance(fd, int) else None

    def fork(self, child: Process) -> FileTable:
        """``dup_fd()``: the child shares every open file (``get_file`` on each)."""
        t = FileTable(child)
        t.fds = dict(self.fds)
        for f in t.fds.values():
            f.f_count += 1
        return t


class FileSyscalls:
    """The file half of :class:`~dioscope.syscalls.process.Process` (a mixin)."""

    files: FileTable
    mm: Any
    vfs: Any

    def _file(self, fd: int) -> File:
        f = self.files.get(fd)
        if f is None:
            raise OSError(errno.EBADF, os.strerror(errno.EBADF))
        return f

    # --- open/close ---------------------------------------------------------------------
    def open(self, path: str, flags: int = 0, mode: int = 0o644) -> int:
        """``open(2)``. Return: a new descriptor."""
        if self.vfs is None:
            raise OSError(errno.ENOENT, os.strerror(errno.ENOENT))
        f = self.vfs.open(path, int(flags) & int(_OPEN_FLAGS), mode)
        if isinstance(f, int):
            check(f)
        assert isinstance(f, File)
        return self.files.install(f)

    def close(self, fd: int) -> None:
        """``close(2)``."""
        f = self._file(fd)
        del self.files.fds[fd]
        f.f_count -= 1  # fput()
        release = getattr(f.f_op, "release", None)
        if release is not None and f.f_count == 0:
            release(f.f_inode, f)  # ->release(inode, file)

    # --- read/write -----------------------------------------------------------------------
    def read(self, fd: int, buf: int, count: int) -> int:
        """``read(2)`` into user memory at ``buf``. Return: bytes read."""
        return check(vfs_read_write(self._file(fd), index(buf), index(count), None, False,
                                    self.mm))

    def write(self, fd: int, buf: int, count: int) -> int:
        """``write(2)`` from user memory at ``buf``. Return: bytes written."""
        return check(vfs_read_write(self._file(fd), index(buf), index(count), None, True,
                                    self.mm))

    def pread(self, fd: int, buf: int, count: int, offset: int) -> int:
        """``pread64(2)``."""
        return check(self._pread_pwrite(fd, buf, count, offset, write=False))

    def pwrite(self, fd: int, buf: int, count: int, offset: int) -> int:
        """``pwrite64(2)``."""
        return check(self._pread_pwrite(fd, buf, count, offset, write=True))

    def _pread_pwrite(self, fd: int, buf: int, count: int, offset: int, write: bool) -> int:
        f = self._file(fd)
        buf, count, offset = index(buf), index(count), index(offset)
        if offset < 0:
            return -errno.EINVAL
        if not f.f_mode & FMODE_PREAD:
            return -errno.ESPIPE
        return vfs_read_write(f, buf, count, offset, write, self.mm)

    def readv(self, fd: int, iov: Sequence[tuple[int, int]]) -> int:
        return check(self._vec(fd, iov, None, 0, write=False))

    def writev(self, fd: int, iov: Sequence[tuple[int, int]]) -> int:
        return check(self._vec(fd, iov, None, 0, write=True))

    def preadv(self, fd: int, iov: Sequence[tuple[int, int]], offset: int) -> int:
        """``preadv(2)``."""
        return check(self._vec(fd, iov, offset, 0, write=False))

    def pwritev(self, fd: int, iov: Sequence[tuple[int, int]], offset: int) -> int:
        """``pwritev(2)``."""
        return check(self._vec(fd, iov, offset, 0, write=True))

    def preadv2(self, fd: int, iov: Sequence[tuple[int, int]], offset: int,
                flags: int = 0) -> int:
        """``preadv2(2)``: ``offset`` -1 uses and advances the file position."""
        return check(self._vec(fd, iov, None if offset == -1 else offset, flags, write=False))

    def pwritev2(self, fd: int, iov: Sequence[tuple[int, int]], offset: int,
                 flags: int = 0) -> int:
        """``pwritev2(2)``."""
        return check(self._vec(fd, iov, None if offset == -1 else offset, flags, write=True))

    def _vec(self, fd: int, iov: Sequence[tuple[int, int]], offset: int | None, flags: int,
             write: bool) -> int:
        """``do_preadv()`` / ``do_pwritev()`` / ``do_readv()``: fd, offset, iovec import, I/O."""
        f = self._file(fd)
        flags = index(flags)
        if offset is not None:
            offset = index(offset)
            if offset < 0:
                return -errno.EINVAL
            if not f.f_mode & FMODE_PREAD:
                return -errno.ESPIPE
        ret, it = import_iovec(ITER_SOURCE if write else ITER_DEST, iov, self.mm)
        if ret < 0:
            return ret
        assert it is not None
        if write:
            return do_iter_write(f, it, offset, flags)
        return do_iter_read(f, it, offset, flags)

    # --- pipes and splice ----------------------------------------------------------------
    def pipe2(self, flags: int = 0) -> tuple[int, int]:
        """``pipe2(2)``. Return: (read fd, write fd)."""
        from ..fs.pipe import sys_pipe2

        ret, ends = sys_pipe2(self.mm.pgdat, flags)
        check(ret)
        assert ends is not None
        return self.files.install(ends[0]), self.files.install(ends[1])

    def pipe(self) -> tuple[int, int]:
        """``pipe(2)``, as ``os.pipe``."""
        return self.pipe2(0)

    def splice(self, fd_in: int, off_in: int | None, fd_out: int, off_out: int | None,
               length: int, flags: int = 0) -> int:
        """``splice(2)``: ``None`` offsets use and advance the file positions.
        Return: bytes moved."""
        from ..fs.splice import sys_splice

        return check(sys_splice(self.files.get(fd_in), off_in, self.files.get(fd_out),
                                off_out, length, flags))

    def vmsplice(self, fd: int, iov: Sequence[tuple[int, int]], flags: int = 0) -> int:
        """``vmsplice(2)``: user pages into (write end) or out of (read end) a pipe."""
        from ..fs.splice import sys_vmsplice

        return check(sys_vmsplice(self.files.get(fd), iov, flags, self.mm))

    # --- metadata -------------------------------------------------------------------------
    def lseek(self, fd: int, offset: int, whence: int) -> int:
        """``lseek(2)`` (``generic_file_llseek``): EINVAL for a bad whence or a negative
        result."""
        f = self._file(fd)
        if whence == SEEK_SET:
            new = offset
        elif whence == SEEK_CUR:
            new = f.f_pos + offset
        elif whence == SEEK_END:
            new = f.f_inode.i_size + offset
        else:
            raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))
        if new < 0:
            raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))
        f.f_pos = new
        return new

    def _fop(self, fd: int, name: str) -> tuple[File, Any]:
        f = self._file(fd)
        fn = getattr(f.f_op, name, None)
        if fn is None:
            raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))
        return f, fn

    def ftruncate(self, fd: int, length: int) -> None:
        """``ftruncate(2)``: EINVAL for a negative length or a file not open for writing."""
        f, fn = self._fop(fd, "truncate")
        if length < 0 or not f.f_mode & FMODE.FMODE_WRITE:
            raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))
        check(fn(f, length))

    def fallocate(self, fd: int, mode: int, offset: int, length: int) -> None:
        """``fallocate(2)`` (``vfs_fallocate``): EINVAL for offset < 0 or len <= 0, EBADF if
        not open for writing."""
        f, fn = self._fop(fd, "fallocate")
        if offset < 0 or length <= 0:
            raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))
        if not f.f_mode & FMODE.FMODE_WRITE:
            raise OSError(errno.EBADF, os.strerror(errno.EBADF))
        check(fn(f, mode, offset, length))

    def fsync(self, fd: int) -> None:
        """``fsync(2)``."""
        f, fn = self._fop(fd, "fsync")
        check(fn(f, False))

    def fdatasync(self, fd: int) -> None:
        f, fn = self._fop(fd, "fsync")
        check(fn(f, True))

    def statx(self, fd: int, mask: int = 0x7FF) -> dict[str, int]:
        """``statx(2)`` on an open file (AT_EMPTY_PATH). Return: the fields as a dict."""
        f, fn = self._fop(fd, "getattr")
        res = fn(f, mask)
        if isinstance(res, int):
            check(res)
        return dict(res)


FMODE_PREAD = int(FMODE.FMODE_PREAD)
"""Positional I/O allowed (not a pipe): else ESPIPE."""

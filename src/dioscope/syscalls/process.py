"""A user process: an address space plus the memory syscalls, mirroring Python's ``os``.

Methods raise ``OSError`` with the kernel's errno, as ``os`` does; bad user input never raises
anything else. ``fork()`` returns the child Process (both continue in the model).
"""

from __future__ import annotations

import errno
import os
from typing import TYPE_CHECKING, Any

from ..mm.fork import dup_mmap
from ..mm.memory import zap_page_range
from ..mm.mm_types import MmStruct
from ..mm.mmap import (
    MAP_ANONYMOUS,
    MAP_PRIVATE,
    MAP_SHARED,
    PROT_READ,
    PROT_WRITE,
    do_madvise,
    do_mmap,
    do_mprotect,
    do_munmap,
)
from ..mm.uaccess import read_user, touch_user, write_user
from .files import FileSyscalls, FileTable

if TYPE_CHECKING:
    from ..mm.page_alloc import PgData

__all__ = ["Process"]


def _check(ret: int) -> int:
    if ret < 0:
        raise OSError(-ret, os.strerror(-ret))
    return ret


class Process(FileSyscalls):
    """One process (``task_struct`` with its ``mm_struct`` and ``files_struct``)."""

    def __init__(self, pgdat: PgData, pid: int, comm: str = "dioscope",
                 mm: MmStruct | None = None, vfs: Any = None) -> None:
        self.pgdat = pgdat
        self.pid = pid
        self.comm = comm
        self.mm = mm if mm is not None else MmStruct(pgdat)
        self.vfs = vfs
        self.files = FileTable(self)
        self.alive = True
        self._children: list[Process] = []

    # --- memory syscalls ---------------------------------------------------------------
    def mmap(self, length: int, prot: int = PROT_READ | PROT_WRITE,
             flags: int = MAP_PRIVATE | MAP_ANONYMOUS, addr: int = 0, fd: int = -1,
             offset: int = 0) -> int:
        """``mmap(2)``: anonymous memory, or the file open as ``fd`` from ``offset``.

        Return: the address; OSError (EBADF, EACCES, EINVAL, ENODEV, ENOMEM) on failure.
        """
        if flags & MAP_ANONYMOUS:
            return _check(do_mmap(self.mm, addr, length, prot, flags))
        f = self.files.get(fd)
        if f is None:
            raise OSError(errno.EBADF, os.strerror(errno.EBADF))
        if offset % 4096 or offset < 0:
            raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))
        from ..fs.fs_types import FMODE

        if not f.f_mode & FMODE.FMODE_READ:
            raise OSError(errno.EACCES, os.strerror(errno.EACCES))
        if flags & MAP_SHARED and prot & PROT_WRITE and not f.f_mode & FMODE.FMODE_WRITE:
            raise OSError(errno.EACCES, os.strerror(errno.EACCES))
        get_vm_file = getattr(f.f_op, "vm_file", None)
        if get_vm_file is None:
            raise OSError(errno.ENODEV, os.strerror(errno.ENODEV))
        return _check(do_mmap(self.mm, addr, length, prot, flags, get_vm_file(f),
                              offset // 4096))

    def munmap(self, addr: int, length: int) -> None:
        _check(do_munmap(self.mm, addr, length))

    def mprotect(self, addr: int, length: int, prot: int) -> None:
        _check(do_mprotect(self.mm, addr, length, prot))

    def madvise(self, addr: int, length: int, advice: int) -> None:
        _check(do_madvise(self.mm, addr, length, advice))

    # --- user memory -------------------------------------------------------------------
    def write_user(self, addr: int, data: bytes | bytearray | memoryview) -> int:
        """Store bytes (faulting like the CPU). Return: bytes written; short at a fault."""
        return write_user(self.mm, addr, data)

    def read_user(self, addr: int, length: int) -> bytes:
        """Load bytes (faulting like the CPU); shorter at a fault."""
        return read_user(self.mm, addr, length)

    def touch(self, addr: int, length: int, write: bool = False) -> int:
        """Fault a range in with loads or content-preserving stores. Return: bytes reached."""
        return touch_user(self.mm, addr, length, write)

    # --- processes -----------------------------------------------------------------------
    def fork(self, pid: int) -> Process:
        """``fork(2)``: a child with a copy of this address space and of the fd table."""
        child = Process(self.pgdat, pid, self.comm, dup_mmap(self.mm), self.vfs)
        child.files = self.files.fork(child)
        self._children.append(child)
        return child

    def exit(self) -> None:
        """``do_exit()``: close every descriptor (``exit_files``), then unmap everything
        (``exit_mmap``); pins held by the kernel keep their pages."""
        if not self.alive:
            return
        for fd in sorted(self.files.fds):
            self.close(fd)
        for vma in list(self.mm.vmas):
            zap_page_range(vma, 0, vma.nr_pages, "exit_mmap")
            self.mm.remove_vma(vma)
            if vma.vm_file is not None:
                vma.vm_file.put()
        self.alive = False

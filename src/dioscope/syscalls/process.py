"""A user process: an address space plus the memory syscalls, mirroring Python's ``os``.

Methods raise ``OSError`` with the kernel's errno, as ``os`` does; bad user input never raises
anything else. ``fork()`` returns the child Process (both continue in the model).
"""

from __future__ import annotations

import errno
import os
from typing import TYPE_CHECKING

from ..mm.fork import dup_mmap
from ..mm.memory import zap_page_range
from ..mm.mm_types import MmStruct
from ..mm.mmap import (
    MAP_ANONYMOUS,
    MAP_PRIVATE,
    PROT_READ,
    PROT_WRITE,
    do_madvise,
    do_mmap,
    do_mprotect,
    do_munmap,
)
from ..mm.uaccess import read_user, touch_user, write_user

if TYPE_CHECKING:
    from ..mm.page_alloc import PgData

__all__ = ["Process"]


def _check(ret: int) -> int:
    if ret < 0:
        raise OSError(-ret, os.strerror(-ret))
    return ret


class Process:
    """One process (``task_struct`` with its ``mm_struct``)."""

    def __init__(self, pgdat: PgData, pid: int, comm: str = "dioscope",
                 mm: MmStruct | None = None) -> None:
        self.pgdat = pgdat
        self.pid = pid
        self.comm = comm
        self.mm = mm if mm is not None else MmStruct(pgdat)
        self.alive = True
        self._children: list[Process] = []

    # --- memory syscalls ---------------------------------------------------------------
    def mmap(self, length: int, prot: int = PROT_READ | PROT_WRITE,
             flags: int = MAP_PRIVATE | MAP_ANONYMOUS, addr: int = 0) -> int:
        """``mmap(2)`` of anonymous memory. Return: the address; OSError on failure."""
        if not flags & MAP_ANONYMOUS:
            raise OSError(errno.EBADF, os.strerror(errno.EBADF))  # no fd given
        return _check(do_mmap(self.mm, addr, length, prot, flags))

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
        """``fork(2)``: a child with a copy of this address space."""
        child = Process(self.pgdat, pid, self.comm, dup_mmap(self.mm))
        self._children.append(child)
        return child

    def exit(self) -> None:
        """``exit_mmap()``: unmap everything; pins held by the kernel keep their pages."""
        if not self.alive:
            return
        for vma in list(self.mm.vmas):
            zap_page_range(vma, 0, vma.nr_pages, "exit_mmap")
            self.mm.remove_vma(vma)
            if vma.vm_file is not None:
                vma.vm_file.put()
        self.alive = False

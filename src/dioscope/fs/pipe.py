"""Pipes as files (``fs/pipe.c``): ``pipe2()``, ``pipe_read`` / ``pipe_write``, release,
``F_SETPIPE_SZ``.

A :class:`Pipe` is the ring of ``lib/pipe_buf.py`` (what ITER_PIPE fills) plus what the file
side needs: reader and writer counts and, per buffer, its flags and who holds its page
reference. A buffer filled by ``pipe_write``, by ITER_PIPE's ``push_pipe`` or by
``copy_splice_read`` owns the page it allocated (released with a plain drop); a buffer made
by ``vmsplice`` or by splitting a buffer between two pipes holds a ``get_page`` /
get_user_pages reference taken for a holder token (released with ``put_page`` as that token,
so the sanitizer sees both ends). Buffers that move between pipes take their token along.

SIMPLIFIED: the model runs one task, so nothing ever wakes a sleeper. Where the kernel would
sleep — reading an empty pipe that still has writers, writing a full pipe that still has
readers — the call returns what it has done, or -EAGAIN if nothing, as O_NONBLOCK would.
SIGPIPE is not sent (the -EPIPE is returned).
"""

from __future__ import annotations

import errno
from typing import TYPE_CHECKING

import numpy as np

from ..kernel.types import PAGE_SHIFT, PAGE_SIZE
from ..lib.iov_iter import IovIter, copy_from_iter, copy_to_iter, iov_iter_count
from ..lib.pipe_buf import PIPE_DEF_BUFFERS, PipeInodeInfo
from ..mm.page_alloc import alloc_pages
from ..mm.page_ref import drop_refs, put_page
from .fs_types import FMODE, IOCB, OFLAG, File, Inode, Kiocb

if TYPE_CHECKING:
    from ..mm.page_alloc import PgData

__all__ = [
    "PIPE_BUF_FLAG",
    "S_IFIFO",
    "Pipe",
    "PipeFile",
    "PipeInode",
    "get_pipe_info",
    "pipe_fcntl_setpipe_sz",
    "sys_pipe2",
]

S_IFIFO = 0o010000
O_CLOEXEC = 0o2000000
PIPE_MAX_SIZE = 1 << 20
"""``/proc/sys/fs/pipe-max-size`` default (a limit for unprivileged users only)."""


class PIPE_BUF_FLAG:
    """``pipe_buffer->flags`` (``include/linux/pipe_fs_i.h``)."""

    LRU = 0x01
    ATOMIC = 0x02
    GIFT = 0x04
    PACKET = 0x08
    CAN_MERGE = 0x10
    WHOLE = 0x20


class PipeToken:
    """Who holds a pipe buffer's page reference (for the sanitizer's provenance)."""

    __slots__ = ("why",)

    def __init__(self, why: str) -> None:
        self.why = why

    def __repr__(self) -> str:
        return f"PipeToken({self.why})"


class Pipe(PipeInodeInfo):
    """``struct pipe_inode_info`` with the file side: readers, writers, buffer flags."""

    def __init__(self, pgdat: PgData, ring_size: int = PIPE_DEF_BUFFERS) -> None:
        super().__init__(pgdat, ring_size)
        self.readers = 0
        self.writers = 0
        self.files = 0
        self.buf_flags = np.zeros(ring_size, np.int32)
        self.buf_holder: list[object | None] = [None] * ring_size
        """Per slot: None — the buffer owns its page (allocated for it); else the token a
        ``get_page`` / GUP reference was taken for."""

    def is_full(self) -> bool:
        return self.head - self.tail >= self.max_usage

    def is_empty(self) -> bool:
        return self.head == self.tail

    def release(self, head: int) -> None:
        """``pipe_buf_release()``: drop the buffer's page reference the way it was taken."""
        s = self.slot(head)
        page = int(self.buf_page[s])
        holder = self.buf_holder[s]
        self.buf_page[s] = -1
        self.buf_len[s] = 0
        self.buf_ours[s] = False
        self.buf_flags[s] = 0
        self.buf_holder[s] = None
        if page < 0:
            return
        if holder is None:
            drop_refs(self.pgdat, np.array([page], np.int64), "pipe_buf_release")
        else:
            put_page(self.pgdat, page, holder=holder, site="page_cache_pipe_buf_release")

    def add(self, page: int, offset: int, length: int, flags: int, holder: object | None,
            ours: bool = False) -> None:
        """Put a buffer at ``head`` (the caller checked there is room)."""
        s = self.slot(self.head)
        self.buf_page[s] = page
        self.buf_offset[s] = offset
        self.buf_len[s] = length
        self.buf_flags[s] = flags
        self.buf_holder[s] = holder
        self.buf_ours[s] = ours
        self.head += 1

    def resize_ring(self, nr_slots: int) -> int:
        """``pipe_resize_ring()``: the buffers move to slots 0..n-1 (tail = 0). Return: 0, or
        -EBUSY when more buffers are in use than the new ring holds."""
        n = self.occupancy()
        if nr_slots < n:
            return -errno.EBUSY
        order = [self.slot(self.tail + i) for i in range(n)]
        page = np.full(nr_slots, -1, np.int64)
        off = np.zeros(nr_slots, np.int64)
        length = np.zeros(nr_slots, np.int64)
        ours = np.zeros(nr_slots, bool)
        flags = np.zeros(nr_slots, np.int32)
        holder: list[object | None] = [None] * nr_slots
        for i, s in enumerate(order):
            page[i], off[i], length[i] = self.buf_page[s], self.buf_offset[s], self.buf_len[s]
            ours[i], flags[i], holder[i] = self.buf_ours[s], self.buf_flags[s], self.buf_holder[s]
        self.buf_page, self.buf_offset, self.buf_len = page, off, length
        self.buf_ours, self.buf_flags, self.buf_holder = ours, flags, holder
        self.ring_size = self.max_usage = nr_slots
        self.tail, self.head = 0, n
        return 0

    def copy_out(self, s: int, n: int) -> np.ndarray:
        """The first ``n`` bytes of the buffer in slot ``s`` (``kmap`` + read)."""
        base = int(self.buf_page[s]) * PAGE_SIZE + int(self.buf_offset[s])
        return self.pgdat.mem.bytes[base : base + n]


class PipeInode(Inode):
    """A pipe's inode (``pipefs``): ``i_pipe`` is the ring."""

    def __init__(self, pipe: Pipe, ino: int) -> None:
        super().__init__(None, ino, S_IFIFO | 0o600, pipe.pgdat)
        self.i_pipe = pipe


def get_pipe_info(f: File | None, for_splice: bool = True) -> Pipe | None:
    """``get_pipe_info()``: the pipe behind a pipe file, else None."""
    if f is None or not isinstance(f.f_op, PipeFile):
        return None
    inode = f.f_inode
    return inode.i_pipe if isinstance(inode, PipeInode) else None


def _nonblock(iocb: Kiocb) -> bool:
    return bool(iocb.ki_filp.f_flags & OFLAG.O_NONBLOCK or iocb.ki_flags & IOCB.IOCB_NOWAIT)


def pipe_read(iocb: Kiocb, to: IovIter) -> int:
    """``pipe_read()``: copy out of the buffers from the tail; a packet buffer (O_DIRECT pipe)
    is consumed whole. Return: bytes; 0 with no writers left; -EAGAIN when empty (see the
    module note); -EFAULT if the first copy faults."""
    pipe = get_pipe_info(iocb.ki_filp)
    assert pipe is not None
    total_len = iov_iter_count(to)
    if not total_len:
        return 0
    ret = 0
    while True:
        if not pipe.is_empty():
            s = pipe.slot(pipe.tail)
            chars = min(int(pipe.buf_len[s]), total_len)
            written = copy_to_iter(pipe.copy_out(s, chars), to)
            if written < chars:
                if not ret:
                    ret = -errno.EFAULT
                break
            ret += chars
            pipe.buf_offset[s] += chars
            pipe.buf_len[s] -= chars
            if pipe.buf_flags[s] & PIPE_BUF_FLAG.PACKET:
                total_len = chars
                pipe.buf_len[s] = 0
            if not pipe.buf_len[s]:
                pipe.release(pipe.tail)
                pipe.tail += 1
            total_len -= chars
            if not total_len:
                break
            if not pipe.is_empty():
                continue
        if not pipe.writers or ret:
            break
        ret = -errno.EAGAIN  # O_NONBLOCK, or (SIMPLIFIED) the wait that would never end
        break
    return ret


def pipe_write(iocb: Kiocb, frm: IovIter) -> int:
    """``pipe_write()``: a small write merges into the last buffer when it may
    (PIPE_BUF_FLAG_CAN_MERGE, room left); the rest goes into new pages, one buffer each.
    Return: bytes; -EPIPE with no readers; -EAGAIN when full (see the module note); -EFAULT
    if nothing could be copied."""
    pipe = get_pipe_info(iocb.ki_filp)
    assert pipe is not None
    total_len = iov_iter_count(frm)
    if not total_len:
        return 0
    if not pipe.readers:
        return -errno.EPIPE
    ret = 0
    chars = total_len & (PAGE_SIZE - 1)
    if chars and not pipe.is_empty():
        s = pipe.slot(pipe.head - 1)
        offset = int(pipe.buf_offset[s]) + int(pipe.buf_len[s])
        if pipe.buf_flags[s] & PIPE_BUF_FLAG.CAN_MERGE and offset + chars <= PAGE_SIZE:
            copied, data = copy_from_iter(chars, frm)
            base = int(pipe.buf_page[s]) * PAGE_SIZE + offset
            pipe.pgdat.mem.bytes[base : base + copied] = np.frombuffer(data, np.uint8)
            if copied < chars:
                return -errno.EFAULT  # the bytes copied are not counted
            pipe.buf_len[s] += copied
            ret = copied
            if not iov_iter_count(frm):
                return ret
    packet = bool(iocb.ki_filp.f_flags & OFLAG.O_DIRECT)
    while True:
        if not pipe.readers:
            return ret if ret else -errno.EPIPE
        if not pipe.is_full():
            page = alloc_pages(pipe.pgdat, 0)
            if page < 0:
                return ret if ret else -errno.ENOMEM
            # The buffer is in the ring before the copy: a fault part way through a page
            # leaves it there empty, and the bytes copied into it are not counted.
            flags = PIPE_BUF_FLAG.PACKET if packet else PIPE_BUF_FLAG.CAN_MERGE
            pipe.add(page, 0, 0, flags, None, ours=True)
            copied, data = copy_from_iter(PAGE_SIZE, frm)
            base = page * PAGE_SIZE
            pipe.pgdat.mem.bytes[base : base + copied] = np.frombuffer(data, np.uint8)
            if copied < PAGE_SIZE and iov_iter_count(frm):
                return ret if ret else -errno.EFAULT
            pipe.buf_len[pipe.slot(pipe.head - 1)] = copied
            ret += copied
            if not iov_iter_count(frm):
                return ret
            continue
        if _nonblock(iocb) or ret:
            return ret if ret else -errno.EAGAIN
        return -errno.EAGAIN  # SIMPLIFIED: the wait that would never end


def pipe_release(f: File) -> None:
    """``pipe_release()``: one reader or writer less; the last close frees the buffers."""
    pipe = get_pipe_info(f)
    if pipe is None:
        return
    if f.f_mode & FMODE.FMODE_READ:
        pipe.readers -= 1
    if f.f_mode & FMODE.FMODE_WRITE:
        pipe.writers -= 1
    pipe.files -= 1
    if not pipe.readers and not pipe.writers:
        pipe.free()


class PipeFile:
    """``pipefifo_fops``."""

    def read_iter(self, iocb: Kiocb, it: IovIter) -> int:
        return pipe_read(iocb, it)

    def write_iter(self, iocb: Kiocb, it: IovIter) -> int:
        return pipe_write(iocb, it)

    def release(self, inode: Inode, f: File) -> int:
        pipe_release(f)
        return 0

    def __repr__(self) -> str:
        return "pipefifo_fops"


PIPEFIFO_FOPS = PipeFile()
_next_ino = [1 << 20]


def sys_pipe2(pgdat: PgData, flags: int = 0) -> tuple[int, tuple[File, File] | None]:
    """``pipe2()``: a pipe's read and write ends. O_NONBLOCK, O_CLOEXEC and O_DIRECT (packet
    mode) are allowed; anything else is -EINVAL.
    Return: (0, (read end, write end)) or (-errno, None)."""
    if flags & ~(OFLAG.O_NONBLOCK | O_CLOEXEC | OFLAG.O_DIRECT):
        return -errno.EINVAL, None
    pipe = Pipe(pgdat)
    _next_ino[0] += 1
    inode = PipeInode(pipe, _next_ino[0])
    keep = flags & (OFLAG.O_NONBLOCK | OFLAG.O_DIRECT)
    rd = File(inode, OFLAG.O_RDONLY | keep, FMODE.FMODE_READ, PIPEFIFO_FOPS)
    wr = File(inode, OFLAG.O_WRONLY | keep, FMODE.FMODE_WRITE, PIPEFIFO_FOPS)
    pipe.readers = pipe.writers = 1
    pipe.files = 2
    return 0, (rd, wr)


def pipe_fcntl_setpipe_sz(f: File, size: int, privileged: bool = True) -> int:
    """``fcntl(fd, F_SETPIPE_SZ, size)``: round up to a power-of-two number of pages.
    Return: the new size in bytes, -EBADF for a non-pipe, -EINVAL for 0 or too large, -EPERM
    above pipe-max-size for the unprivileged, -EBUSY if the buffers in use do not fit."""
    pipe = get_pipe_info(f)
    if pipe is None:
        return -errno.EBADF
    if size <= 0 or size > 1 << 31:
        return -errno.EINVAL
    nr_slots = max((size + PAGE_SIZE - 1) >> PAGE_SHIFT, 1)
    nr_slots = 1 << (nr_slots - 1).bit_length()
    if nr_slots * PAGE_SIZE > PIPE_MAX_SIZE and not privileged:
        return -errno.EPERM
    ret = pipe.resize_ring(nr_slots)
    return ret if ret else nr_slots * PAGE_SIZE

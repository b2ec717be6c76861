"""Pipes as ITER_PIPE sees them (``include/linux/pipe_fs_i.h``; the ITER_PIPE half of
``lib/iov_iter.c`` [5.9]: ``push_pipe``, ``data_start``, ``pipe_advance``, ``pipe_truncate``,
``pipe_get_pages``).

A pipe is a ring of ``ring_size`` buffers (16 by default, ``PIPE_DEF_BUFFERS``), each a page,
an offset and a length; the buffer holds one reference on its page, dropped when the buffer
is released. ``head`` is where the writer adds, ``tail`` where the reader takes; both grow
without bound and index the ring modulo its size. An ITER_PIPE iterator (``splice()`` from a
file into a pipe, profiles with ITER_PIPE only) keeps its own ``head`` (stored in the
iterator's ``_seg``) and ``iov_offset`` inside that buffer.

Pages that a ``push_pipe`` allocates appear in the pipe (``pipe->head`` moves) before any
data is in them; an iterator that finishes short truncates what it did not fill.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ..kernel.types import PAGE_SIZE
from ..mm.page_alloc import PgData, alloc_pages
from ..mm.page_ref import drop_refs

if TYPE_CHECKING:
    from .iov_iter import IovIter

__all__ = [
    "PIPE_DEF_BUFFERS",
    "PipeInodeInfo",
    "copy_to_pipe",
    "iov_iter_pipe",
    "pipe_advance",
    "pipe_alignment",
    "pipe_npages",
    "pipe_revert",
    "push_pipe",
]

PIPE_DEF_BUFFERS = 16


class PipeInodeInfo:
    """``struct pipe_inode_info``: the ring of buffers."""

    def __init__(self, pgdat: PgData, ring_size: int = PIPE_DEF_BUFFERS) -> None:
        self.pgdat = pgdat
        self.ring_size = ring_size
        self.max_usage = ring_size
        self.head = 0
        self.tail = 0
        self.buf_page = np.full(ring_size, -1, np.int64)
        self.buf_offset = np.zeros(ring_size, np.int64)
        self.buf_len = np.zeros(ring_size, np.int64)
        self.buf_ours = np.zeros(ring_size, bool)  # ops == default_pipe_buf_ops

    def slot(self, head: int) -> int:
        return head & (self.ring_size - 1)

    def occupancy(self) -> int:
        return self.head - self.tail

    def release(self, head: int) -> None:
        """``pipe_buf_release()``: drop the buffer's page reference."""
        s = self.slot(head)
        page = int(self.buf_page[s])
        self.buf_page[s] = -1
        self.buf_len[s] = 0
        self.buf_ours[s] = False
        if page >= 0:
            drop_refs(self.pgdat, np.array([page], np.int64), "pipe_buf_release")

    def read(self, n: int) -> bytes:
        """Consume up to ``n`` bytes from the tail (``pipe_read``)."""
        out: list[bytes] = []
        mem = self.pgdat.mem.bytes
        while n > 0 and self.tail != self.head:
            s = self.slot(self.tail)
            page, off, length = int(self.buf_page[s]), int(self.buf_offset[s]), int(
                self.buf_len[s])
            take = min(n, length)
            base = page * PAGE_SIZE + off
            out.append(mem[base : base + take].tobytes())
            n -= take
            if take == length:
                self.release(self.tail)
                self.tail += 1
            else:
                self.buf_offset[s] += take
                self.buf_len[s] -= take
        return b"".join(out)

    def free(self) -> None:
        """Release every buffer (the pipe is closed)."""
        while self.tail != self.head:
            self.release(self.tail)
            self.tail += 1


def iov_iter_pipe(pgdat: PgData, direction: int, pipe: PipeInodeInfo, count: int) -> IovIter:
    """``iov_iter_pipe()``: a READ destination that appends to ``pipe`` [5.9 profiles]."""
    from .iov_iter import ITER_DEST, ITER_PIPE, IovIter

    if not pgdat.cfg.ITER_PIPE:
        raise RuntimeError(f"ITER_PIPE does not exist in profile {pgdat.cfg.name}")
    if direction != ITER_DEST:
        raise ValueError("an ITER_PIPE iterator is always a READ destination")
    i = IovIter(pgdat, ITER_PIPE, direction, count)
    i.pipe = pipe
    i._seg = pipe.head
    i.start_head = pipe.head
    return i


def _pipe(i: IovIter) -> PipeInodeInfo:
    assert i.pipe is not None
    return i.pipe


def data_start(i: IovIter) -> tuple[int, int]:
    """``data_start()``: (ring head to fill next, offset in it)."""
    pipe = _pipe(i)
    head, off = i._seg, i.iov_offset
    if off and (not pipe.buf_ours[pipe.slot(head)] or off == PAGE_SIZE):
        head += 1
        off = 0
    return head, off


def pipe_space_for_user(head: int, tail: int, pipe: PipeInodeInfo) -> int:
    occ = head - tail
    if occ >= pipe.max_usage:
        return 0
    return min(pipe.ring_size - occ, pipe.max_usage)


def push_pipe(i: IovIter, size: int) -> tuple[int, int, int]:
    """``push_pipe()``: make room for ``size`` bytes, allocating page buffers into the pipe.

    Return: (bytes of room made, first head, offset in it).
    """
    pipe = _pipe(i)
    size = min(size, i.count)
    head, off = data_start(i)
    if not size:
        return 0, head, off
    first_head, first_off = head, off
    left = size
    if off:
        left -= PAGE_SIZE - off
        s = pipe.slot(head)
        if left <= 0:
            pipe.buf_len[s] += size
            return size, first_head, first_off
        pipe.buf_len[s] = PAGE_SIZE
        head += 1
    while head - pipe.tail < pipe.max_usage:
        page = alloc_pages(pipe.pgdat, 0)
        if page < 0:
            break
        s = pipe.slot(head)
        pipe.buf_page[s] = page
        pipe.buf_offset[s] = 0
        pipe.buf_len[s] = min(left, PAGE_SIZE)
        pipe.buf_ours[s] = True
        left -= int(pipe.buf_len[s])
        head += 1
        pipe.head = head
        if left == 0:
            return size, first_head, first_off
    return size - left, first_head, first_off


def pipe_truncate(i: IovIter) -> None:
    """``pipe_truncate()``: release every buffer past the iterator's position."""
    pipe = _pipe(i)
    if pipe.head == pipe.tail:
        return
    i_head, off = i._seg, i.iov_offset
    if off:
        s = pipe.slot(i_head)
        pipe.buf_len[s] = off - int(pipe.buf_offset[s])
        i_head += 1
    p_head = pipe.head
    while p_head > i_head:
        p_head -= 1
        pipe.release(p_head)
    pipe.head = p_head


def pipe_advance(i: IovIter, size: int) -> None:
    """``pipe_advance()``: move the iterator ``size`` bytes on, then truncate the rest."""
    pipe = _pipe(i)
    size = min(size, i.count)
    if size:
        i_head = i._seg
        off = i.iov_offset
        left = size
        if off:
            left += off - int(pipe.buf_offset[pipe.slot(i_head)])
        while True:
            s = pipe.slot(i_head)
            if left <= int(pipe.buf_len[s]):
                break
            left -= int(pipe.buf_len[s])
            i_head += 1
        i._seg = i_head
        i.iov_offset = int(pipe.buf_offset[pipe.slot(i_head)]) + left
    i.count -= size
    pipe_truncate(i)


def pipe_revert(i: IovIter, unroll: int) -> None:
    """The ITER_PIPE branch of ``iov_iter_revert()`` (count already restored)."""
    pipe = _pipe(i)
    i_head, off = i._seg, i.iov_offset
    while True:
        n = off - int(pipe.buf_offset[pipe.slot(i_head)])
        if unroll < n:
            off -= unroll
            break
        unroll -= n
        if not unroll and i_head == i.start_head:
            off = 0
            break
        i_head -= 1
        s = pipe.slot(i_head)
        off = int(pipe.buf_offset[s]) + int(pipe.buf_len[s])
    i.iov_offset = off
    i._seg = i_head
    pipe_truncate(i)


def pipe_npages(i: IovIter) -> int:
    """The ITER_PIPE branch of ``iov_iter_npages()``: some of this buffer + all free ones."""
    head, _off = data_start(i)
    return pipe_space_for_user(head, _pipe(i).tail, _pipe(i))


def pipe_alignment(i: IovIter) -> int:
    size = i.count
    if size and i.iov_offset and _pipe(i).buf_ours[_pipe(i).slot(i._seg)]:
        return size | i.iov_offset
    return size


def copy_to_pipe(i: IovIter, data: np.ndarray) -> int:
    """``copy_pipe_to_iter()``: append bytes to the pipe through the iterator."""
    pipe = _pipe(i)
    n, head, off = push_pipe(i, len(data))
    done = 0
    mem = pipe.pgdat.mem.bytes
    last_head, last_end = i._seg, i.iov_offset
    while done < n:
        s = pipe.slot(head)
        chunk = min(n - done, PAGE_SIZE - off)
        base = int(pipe.buf_page[s]) * PAGE_SIZE + off
        mem[base : base + chunk] = data[done : done + chunk]
        done += chunk
        last_head, last_end = head, off + chunk
        head += 1
        off = 0
    i._seg, i.iov_offset = last_head, last_end
    i.count -= done
    return done

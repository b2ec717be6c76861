"""lib/pipe_buf.py: ITER_PIPE (profiles 5.9 and 5.9-pin; removed in v6.5), spec §3.1-§3.4,
§11 item 14.

Bytes copied into a pipe and read back; advance, revert and truncate of pipe buffers with
the exact pipe head/tail, buffer lengths and iterator position ``(head, iov_offset,
count)``; page acquisition from a pipe (``push_pipe`` allocates the buffers, the pipe keeps
its reference, the caller gets a reference [5.9] or a pin [5.9-pin] on each).
"""

from __future__ import annotations

import errno

import numpy as np
import pytest

from dioscope.kernel.types import PAGE_SIZE
from dioscope.lib.iov_iter import (
    ITER_DEST,
    ITER_SOURCE,
    IovIter,
    copy_from_iter,
    copy_to_iter,
    iov_iter_advance,
    iov_iter_alignment,
    iov_iter_npages,
    iov_iter_revert,
    iov_iter_zero,
)
from dioscope.lib.iov_iter_pages import (
    iov_iter_get_pages,
    iov_iter_get_pages_alloc,
    iov_iter_pin_pages,
    iov_iter_pin_pages_alloc,
)
from dioscope.lib.pipe_buf import PIPE_DEF_BUFFERS, PipeInodeInfo, iov_iter_pipe
from dioscope.machine import Kernel
from dioscope.mm.gup import unpin_user_page
from dioscope.mm.page_ref import put_page

P = PAGE_SIZE


def pattern(n: int, seed: int = 1) -> bytes:
    return ((np.arange(n) * 7 + seed) % 251 + 1).astype(np.uint8).tobytes()


def pos(i: IovIter) -> tuple[int, int, int]:
    """The iterator's (pipe head, iov_offset, count)."""
    return i._seg, i.iov_offset, i.count


def ring(pipe: PipeInodeInfo, n: int = 4) -> tuple[int, int, list[int]]:
    """(head, tail, lengths of the first ``n`` buffers)."""
    return pipe.head, pipe.tail, pipe.buf_len[:n].tolist()


def test_pipe_exists_only_in_5_9(k6: Kernel) -> None:
    with pytest.raises(RuntimeError, match="ITER_PIPE"):
        iov_iter_pipe(k6.pgdat, ITER_DEST, PipeInodeInfo(k6.pgdat), 0x1000)


def test_pipe_iterator_is_a_destination(k59: Kernel) -> None:
    with pytest.raises(ValueError):
        iov_iter_pipe(k59.pgdat, ITER_SOURCE, PipeInodeInfo(k59.pgdat), 0x1000)


def test_copy_into_a_pipe_and_read_it_back(k59: Kernel, snapshot) -> None:
    before = snapshot(k59)
    pipe = PipeInodeInfo(k59.pgdat)
    it = iov_iter_pipe(k59.pgdat, ITER_DEST, pipe, 10000)
    assert pos(it) == (0, 0, 10000)
    data = pattern(8000)
    assert copy_to_iter(data[:5000], it) == 5000
    assert ring(pipe) == (2, 0, [4096, 904, 0, 0])
    assert pos(it) == (1, 904, 5000)
    assert copy_to_iter(data[5000:], it) == 3000  # appends to our partly filled buffer
    assert ring(pipe) == (2, 0, [4096, 3904, 0, 0])
    assert pos(it) == (1, 3904, 2000)
    pages = pipe.buf_page[:2].tolist()
    assert k59.pgdat.pages.refcount[pages].tolist() == [1, 1]  # the pipe's own reference
    assert pipe.read(0x1FF) == data[:0x1FF]
    assert ring(pipe) == (2, 0, [4096 - 0x1FF, 3904, 0, 0])
    assert pipe.read(10000) == data[0x1FF:]
    assert ring(pipe)[:2] == (2, 2)
    assert k59.pgdat.pages.refcount[pages].tolist() == [0, 0]  # released and freed
    before.assert_restored(k59)


def test_zero_into_a_pipe_and_no_copy_out_of_it(k59: Kernel) -> None:
    pipe = PipeInodeInfo(k59.pgdat)
    it = iov_iter_pipe(k59.pgdat, ITER_DEST, pipe, 0x1001)
    assert copy_to_iter(b"\xff" * 0x10, it) == 0x10
    assert iov_iter_zero(0x2000, it) == 0xFF1
    assert pos(it) == (1, 1, 0)
    assert ring(pipe) == (2, 0, [0x1000, 1, 0, 0])
    assert pipe.read(0x2000) == b"\xff" * 0x10 + b"\0" * 0xFF1
    assert copy_from_iter(5, it) == (0, b"")
    assert [(e.kind, e.site) for e in k59.events.events] == [("WARN", "copy_from_iter")]


def test_a_full_pipe_takes_a_short_copy(k59: Kernel, snapshot) -> None:
    before = snapshot(k59)
    pipe = PipeInodeInfo(k59.pgdat)
    it = iov_iter_pipe(k59.pgdat, ITER_DEST, pipe, 0x11000)
    assert iov_iter_npages(it, 64) == PIPE_DEF_BUFFERS
    assert copy_to_iter(pattern(0x11000), it) == 0x10000
    assert pipe.head == PIPE_DEF_BUFFERS
    assert pos(it) == (15, 0x1000, 0x1000)
    assert iov_iter_npages(it, 64) == 0  # the last buffer is full, no slot is free
    assert iov_iter_alignment(it) == 0x1000 | 0x1000
    assert copy_to_iter(b"x", it) == 0
    pipe.free()
    before.assert_restored(k59)


def test_revert_truncates_pipe_buffers(k59: Kernel, snapshot) -> None:
    before = snapshot(k59)
    pipe = PipeInodeInfo(k59.pgdat)
    it = iov_iter_pipe(k59.pgdat, ITER_DEST, pipe, 10000)
    copy_to_iter(pattern(5000), it)
    second = int(pipe.buf_page[1])
    iov_iter_revert(it, 1000)  # back into the first buffer: the second is released
    assert pos(it) == (0, 4000, 6000)
    assert ring(pipe) == (1, 0, [4000, 0, 0, 0])
    assert int(pipe.buf_page[1]) == -1
    assert int(k59.pgdat.pages.refcount[second]) == 0
    iov_iter_revert(it, 3999)
    assert pos(it) == (0, 1, 9999)
    assert ring(pipe) == (1, 0, [1, 0, 0, 0])
    iov_iter_revert(it, 1)  # exactly to the start head: nothing left in the pipe
    assert pos(it) == (0, 0, 10000)
    assert ring(pipe) == (0, 0, [0, 0, 0, 0])
    before.assert_restored(k59)


def test_get_pages_pushes_buffers_and_advance_truncates(k59: Kernel, snapshot) -> None:
    """[5.9] iov_iter_get_pages on a pipe: push_pipe allocates the buffers (their lengths
    are what the caller may fill), each returned page gets a reference, the iterator does
    not move; the caller's advance then truncates what was not filled."""
    before = snapshot(k59)
    pg = k59.pgdat
    pipe = PipeInodeInfo(pg)
    it = iov_iter_pipe(pg, ITER_DEST, pipe, 10000)
    pages = np.full(16, -1, np.int64)
    assert iov_iter_get_pages(it, pages, 1 << 40, 16) == (10000, 0)
    assert pos(it) == (0, 0, 10000)
    assert ring(pipe) == (3, 0, [4096, 4096, 1808, 0])
    got = pages[:3].tolist()
    assert got == pipe.buf_page[:3].tolist() and pages[3] == -1
    assert pg.pages.refcount[got].tolist() == [2, 2, 2]
    assert k59.vmstat.pins() == (before.acquired, before.released)
    iov_iter_advance(it, 5000)  # the device filled 5000 bytes
    assert pos(it) == (1, 904, 5000)
    assert ring(pipe) == (2, 0, [4096, 904, 0, 0])
    assert pg.pages.refcount[got].tolist() == [2, 2, 1]  # the pipe let go of the third
    for page in got:
        put_page(pg, page)
    assert pg.pages.refcount[got].tolist() == [1, 1, 0]
    assert len(pipe.read(1 << 20)) == 5000
    before.assert_restored(k59)


def test_get_pages_capped_by_maxpages_and_by_the_ring(k59: Kernel, snapshot) -> None:
    before = snapshot(k59)
    pg = k59.pgdat
    pipe = PipeInodeInfo(pg)
    it = iov_iter_pipe(pg, ITER_DEST, pipe, 0x20000)
    pages = np.full(16, -1, np.int64)
    assert iov_iter_get_pages(it, pages, 1 << 40, 2) == (0x2000, 0)
    assert ring(pipe) == (2, 0, [0x1000, 0x1000, 0, 0])
    for page in pages[:2].tolist():
        put_page(pg, page)
    iov_iter_advance(it, 0)  # nothing was filled: truncate back to the iterator
    assert ring(pipe)[:2] == (0, 0)
    before.assert_restored(k59)
    n, arr, start = iov_iter_get_pages_alloc(it, 1 << 40)  # no maxpages: the free ring
    assert (n, start, len(arr)) == (0x10000, 0, PIPE_DEF_BUFFERS)
    assert pipe.head == PIPE_DEF_BUFFERS
    assert pg.pages.refcount[arr].tolist() == [2] * PIPE_DEF_BUFFERS
    for page in arr.tolist():
        put_page(pg, page)
    iov_iter_advance(it, 0x10000)
    assert pos(it) == (15, 0x1000, 0x10000)
    assert pipe.head == PIPE_DEF_BUFFERS
    pipe.free()
    before.assert_restored(k59)


def test_get_pages_on_a_full_pipe_faults(k59: Kernel) -> None:
    pipe = PipeInodeInfo(k59.pgdat)
    it = iov_iter_pipe(k59.pgdat, ITER_DEST, pipe, 0x20000)
    copy_to_iter(pattern(0x10000), it)
    pages = np.full(16, -1, np.int64)
    assert iov_iter_get_pages(it, pages, 1 << 40, 16) == (-errno.EFAULT, 0)
    assert iov_iter_get_pages(it, pages, 0, 16) == (0, 0)


def test_pin_pages_on_a_pipe(k59: Kernel, snapshot) -> None:
    """Item 14: [5.9-pin] iov_iter_pin_pages on a pipe: pin_page() on each ring page it
    returns (acquired += pages, refcount +1024 over the pipe's own reference); the first
    page is our partly filled buffer, extended. [5.9] has no iov_iter_pin_pages; its
    iov_iter_get_pages takes one plain reference each."""
    before = snapshot(k59)
    pg = k59.pgdat
    pipe = PipeInodeInfo(pg)
    it = iov_iter_pipe(pg, ITER_DEST, pipe, 10000)
    copy_to_iter(pattern(100), it)
    assert ring(pipe) == (1, 0, [100, 0, 0, 0])
    pages = np.full(16, -1, np.int64)
    if not k59.cfg.IOV_ITER_PIN_PAGES:
        with pytest.raises(RuntimeError, match="iov_iter_pin_pages"):
            iov_iter_pin_pages(it, pages, 1 << 40, 16)
        assert iov_iter_get_pages(it, pages, 1 << 40, 16) == (9900, 100)
        unit = 1
    else:
        assert iov_iter_pin_pages(it, pages, 1 << 40, 16) == (9900, 100)
        unit = 1024
    got = pages[:3].tolist()
    assert got == pipe.buf_page[:3].tolist()
    assert ring(pipe) == (3, 0, [4096, 4096, 1808, 0])
    assert pos(it) == (0, 100, 9900)
    assert before.ref_delta(k59, got)[1:] == [1 + unit, 1 + unit]  # new buffers
    assert pg.pages.refcount[got[0]] == 1 + unit
    assert pg.pages.pincount[got].tolist() == [0, 0, 0]
    acq = 3 if unit == 1024 else 0
    assert before.delta(k59) == (acq, 0)
    for page in got:
        if unit == 1024:
            unpin_user_page(pg, page)
        else:
            put_page(pg, page)
    assert before.delta(k59) == (acq, acq)
    assert pg.pages.refcount[got].tolist() == [1, 1, 1]
    pipe.free()
    before.assert_restored(k59)


def test_pin_pages_alloc_on_a_pipe(k59: Kernel, snapshot) -> None:
    """The ``_alloc`` form: no maxpages, the array sized to fit."""
    before = snapshot(k59)
    pg = k59.pgdat
    pipe = PipeInodeInfo(pg)
    it = iov_iter_pipe(pg, ITER_DEST, pipe, 3 * P + 1)
    pin = k59.cfg.IOV_ITER_PIN_PAGES
    alloc = iov_iter_pin_pages_alloc if pin else iov_iter_get_pages_alloc
    n, arr, start = alloc(it, 1 << 40)
    assert (n, start, len(arr)) == (3 * P + 1, 0, 4)
    assert before.delta(k59) == ((4, 0) if pin else (0, 0))
    assert pg.pages.refcount[arr].tolist() == [1025 if pin else 2] * 4
    for page in arr.tolist():
        if pin:
            unpin_user_page(pg, page)
        else:
            put_page(pg, page)
    pipe.free()
    before.assert_restored(k59)


def test_npages_and_alignment_of_a_pipe(k59: Kernel) -> None:
    pipe = PipeInodeInfo(k59.pgdat)
    it = iov_iter_pipe(k59.pgdat, ITER_DEST, pipe, 10000)
    assert iov_iter_npages(it, 64) == 16
    assert iov_iter_npages(it, 4) == 4
    assert iov_iter_alignment(it) == 10000
    copy_to_iter(pattern(100), it)  # in our buffer at 100: "some of this one + the rest"
    assert iov_iter_npages(it, 64) == 16
    assert iov_iter_alignment(it) == 9900 | 100
    copy_to_iter(pattern(3996), it)  # that buffer is full now
    assert pos(it) == (0, 4096, 5904)
    assert iov_iter_npages(it, 64) == 15
    assert iov_iter_alignment(it) == 5904 | 4096

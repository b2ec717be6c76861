"""``splice()`` and ``vmsplice()`` (``fs/splice.c``), per profile.

File → pipe:

* [5.9, 5.9-pin] ``generic_file_splice_read``: the file's ``->read_iter`` with an ITER_PIPE
  destination. For an O_DIRECT file that is a Direct I/O into pages the iterator pushes into
  the pipe: each pipe page is taken by the Direct I/O engine (``get_page`` [5.9],
  ``pin_page`` [5.9-pin], counted, released at bio completion) while the pipe keeps its own
  reference (spec §11 item 38).
* [6.18] ITER_PIPE is gone (Linux commit 3fc40265ae2b ("iov_iter: Kill ITER_PIPE") (v6.5)).
  An O_DIRECT (or DAX) file goes through ``copy_splice_read`` (Linux commit aa3dbde87896
  ("splice: Make splice from an O_DIRECT fd use copy_splice_read()") (v6.5)): pages allocated
  for the call,
  read with an ITER_BVEC iterator (Direct I/O borrows the bvecs: no pin, no reference), then
  handed to the pipe. Measured on the 6.18.44 host: 1 MiB spliced from an O_DIRECT ext4 file
  moves 1 MiB with nr_foll_pin_acquired/released deltas [0, 0] (an O_DIRECT preadv of the same
  file in the same run: [256, 256]). SIMPLIFIED: a file without its own ``splice_read``
  (``filemap_splice_read``, which lends page-cache pages) goes through ``copy_splice_read``
  too — no pins either way.

Pipe → file: ``iter_file_splice_write`` — the pipe buffers as an ITER_BVEC source of
``->write_iter``. A bvec source is never pinned by the bio layer, but the legacy engine under
5.9-pin calls ``iov_iter_pin_pages`` on it, which WARNs and fails with -EFAULT (spec §3.4).
Host (6.18): 1 MiB pipe → O_DIRECT file, [0, 0].

vmsplice: user pages into the pipe with FOLL_GET references held by the buffers
(``iov_iter_get_pages`` [5.9], ``iov_iter_get_pages2`` [6.18]) — zero-copy, never pinned, in
every profile. Host (6.18): 64 KiB vmspliced, [0, 0], and bytes stored into the buffer after
the call are what the reader gets (the pipe holds the user pages, not a copy). vmsplice on
the read end copies out (``vmsplice_to_user``).

Errors as the kernel: -EINVAL (unknown flags; neither end a pipe; a pipe spliced to itself;
an output opened O_APPEND), -EBADF (no file, wrong mode, vmsplice on a non-pipe), -ESPIPE (an
offset for a pipe end), -EAGAIN (SPLICE_F_NONBLOCK or O_NONBLOCK on a full / empty pipe),
-EPIPE (no readers). Files are :class:`~dioscope.fs.fs_types.File`; offsets are given by value
(None: use and advance ``f_pos``), as Python's ``os.splice`` takes them.
"""

from __future__ import annotations

import errno
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from ..kernel.types import MAX_RW_COUNT, PAGE_SIZE
from ..lib.iov_iter import (
    ITER_DEST,
    ITER_SOURCE,
    IovIter,
    copy_to_iter,
    iov_iter_advance,
    iov_iter_bvec,
    iov_iter_count,
    iov_iter_revert,
)
from ..lib.iov_iter_pages import iov_iter_get_pages, iov_iter_get_pages2
from ..lib.pipe_buf import iov_iter_pipe
from ..mm.page_alloc import alloc_pages_bulk
from ..mm.page_ref import drop_refs, get_page, put_page
from .fs_types import FMODE, IOCB, OFLAG, File, Kiocb
from .pipe import PIPE_BUF_FLAG, Pipe, PipeToken, get_pipe_info
from .read_write import import_iovec, iocb_flags, rw_verify_area

if TYPE_CHECKING:
    from ..mm.mm_types import MmStruct

__all__ = [
    "SPLICE_F",
    "copy_splice_read",
    "do_splice",
    "generic_file_splice_read",
    "iter_file_splice_write",
    "sys_splice",
    "sys_vmsplice",
]


class SPLICE_F:
    """``SPLICE_F_*`` (``include/linux/splice.h``)."""

    MOVE = 0x01
    NONBLOCK = 0x02
    MORE = 0x04
    GIFT = 0x08
    ALL = 0x0F


def _v6(f: File) -> bool:
    return bool(f.f_inode.pgdat.cfg.IOV_ITER_EXTRACT)


def _sync_kiocb(f: File, pos: int, write: bool) -> Kiocb:
    """``init_sync_kiocb()``: flags from the open file (O_DIRECT → IOCB_DIRECT)."""
    return Kiocb(f, pos, iocb_flags(f) | (int(IOCB.IOCB_WRITE) if write else 0))


# --- file -> pipe -----------------------------------------------------------------------------
def generic_file_splice_read(f: File, pos: int, pipe: Pipe, length: int,
                             flags: int) -> tuple[int, int]:
    """``generic_file_splice_read()`` [5.9]: ``->read_iter`` into an ITER_PIPE. On error
    every buffer the iterator pushed is freed again; -EFAULT becomes -EAGAIN ("can't put
    anything in there"). Return: (bytes or -errno, new position)."""
    to = iov_iter_pipe(f.f_inode.pgdat, ITER_DEST, pipe, length)
    i_head = to._seg
    kiocb = _sync_kiocb(f, pos, False)
    ret = f.f_op.read_iter(kiocb, to)
    if ret > 0:
        pos = kiocb.ki_pos
    elif ret < 0:
        to._seg = i_head
        to.iov_offset = 0
        iov_iter_advance(to, 0)  # to free what was emitted
        if ret == -errno.EFAULT:
            ret = -errno.EAGAIN
    return ret, pos


def copy_splice_read(f: File, pos: int, pipe: Pipe, length: int,
                     flags: int) -> tuple[int, int]:
    """``copy_splice_read()`` [6.18]: read into pages allocated here, through an ITER_BVEC,
    then put the pages that got data into the pipe. Return: (bytes or -errno (-EFAULT
    becomes -EAGAIN), new position)."""
    pgdat = f.f_inode.pgdat
    npages = max(pipe.max_usage - pipe.occupancy(), 0)
    length = min(length, npages * PAGE_SIZE)
    npages = (length + PAGE_SIZE - 1) // PAGE_SIZE
    pages = alloc_pages_bulk(pgdat, npages)
    if not len(pages):
        return -errno.ENOMEM, pos
    npages = len(pages)
    length = min(length, npages * PAGE_SIZE)
    rows: list[tuple[int, int, int]] = []
    remain = length
    for page in pages.tolist():
        chunk = min(PAGE_SIZE, remain)
        rows.append((page, chunk, 0))
        remain -= chunk
    to = iov_iter_bvec(pgdat, ITER_DEST, rows, npages, length)
    kiocb = _sync_kiocb(f, pos, False)
    ret = f.f_op.read_iter(kiocb, to)
    keep = 0
    if ret > 0:
        keep = (ret + PAGE_SIZE - 1) // PAGE_SIZE
        pos = kiocb.ki_pos
    if ret == -errno.EFAULT:
        ret = -errno.EAGAIN
    if keep < npages:
        drop_refs(pgdat, pages[keep:], "copy_splice_read")  # release_pages()
    remain = max(ret, 0)
    for page in pages[:keep].tolist():
        chunk = min(remain, PAGE_SIZE)
        pipe.add(page, 0, chunk, 0, None, ours=True)  # default_pipe_buf_ops
        remain -= chunk
    return ret, pos


def _splice_read(f: File, pos: int, pipe: Pipe, length: int, flags: int) -> tuple[int, int]:
    """``do_splice_to()`` [5.9] / ``do_splice_read()`` [6.18] after the checks."""
    splice_read = getattr(f.f_op, "splice_read", None)
    if _v6(f):
        if f.f_flags & OFLAG.O_DIRECT or splice_read is None:
            return copy_splice_read(f, pos, pipe, length, flags)
        return splice_read(f, pos, pipe, length, flags)  # type: ignore[no-any-return]
    if splice_read is not None:
        return splice_read(f, pos, pipe, length, flags)  # type: ignore[no-any-return]
    return generic_file_splice_read(f, pos, pipe, length, flags)


def wait_for_space(pipe: Pipe, flags: int) -> int:
    """``wait_for_space()``: -EPIPE with no readers, -EAGAIN when full (SPLICE_F_NONBLOCK, or
    SIMPLIFIED: a sleep nothing would end in the one-task model), else 0."""
    if not pipe.readers:
        return -errno.EPIPE
    if not pipe.is_full():
        return 0
    return -errno.EAGAIN


def splice_file_to_pipe(f: File, opipe: Pipe, pos: int, length: int,
                        flags: int) -> tuple[int, int]:
    """``splice_file_to_pipe()`` / the opipe branch of ``do_splice``: wait for room, read at
    most what the pipe has room for. Return: (bytes or -errno, new position)."""
    ret = wait_for_space(opipe, flags)
    if ret:
        return ret, pos
    if not f.f_mode & FMODE.FMODE_READ:
        return -errno.EBADF, pos
    if not length:
        return 0, pos
    p_space = opipe.max_usage - opipe.occupancy()
    length = min(length, p_space * PAGE_SIZE, MAX_RW_COUNT)
    if not _v6(f):
        ret = rw_verify_area(f, pos, length)  # in do_splice_to() [5.9]
        if ret < 0:
            return ret, pos
    return _splice_read(f, pos, opipe, length, flags)


# --- pipe -> file ----------------------------------------------------------------------------
def _next_nonempty(pipe: Pipe, num_spliced: int, flags: int) -> int:
    """``splice_from_pipe_next()``: 1 when a buffer is there (empty ones are eaten), else 0
    (no writers, or something already spliced) or -EAGAIN (SPLICE_F_NONBLOCK, or
    SIMPLIFIED: the sleep nothing would end)."""
    while True:
        if pipe.is_empty():
            if not pipe.writers or num_spliced:
                return 0
            return -errno.EAGAIN
        if not pipe.buf_len[pipe.slot(pipe.tail)]:
            pipe.release(pipe.tail)
            pipe.tail += 1
            continue
        return 1


def iter_file_splice_write(pipe: Pipe, out: File, pos: int, length: int,
                           flags: int) -> tuple[int, int]:
    """``iter_file_splice_write()``: the pipe's buffers (up to ``max_usage`` of them) as an
    ITER_BVEC source of ``out->write_iter``; fully written buffers are released, a partly
    written one is trimmed. Return: (bytes or -errno, new position)."""
    pgdat = out.f_inode.pgdat
    total_len = length
    num_spliced = 0
    ret = 0
    while total_len:
        ret = _next_nonempty(pipe, num_spliced, flags)
        if ret <= 0:
            break
        rows: list[tuple[int, int, int]] = []
        left = total_len
        tail = pipe.tail
        while tail != pipe.head and left and len(rows) < pipe.max_usage:
            s = pipe.slot(tail)
            tail += 1
            this_len = min(int(pipe.buf_len[s]), left)
            if not this_len:
                continue  # [6.x] zero-length bvecs are skipped
            rows.append((int(pipe.buf_page[s]), this_len, int(pipe.buf_offset[s])))
            left -= this_len
        frm = iov_iter_bvec(pgdat, ITER_SOURCE, rows, len(rows), total_len - left)
        kiocb = _sync_kiocb(out, pos, True)
        ret = out.f_op.write_iter(kiocb, frm)
        pos = kiocb.ki_pos
        if ret <= 0:
            break
        num_spliced += ret
        total_len -= ret
        while ret:  # dismiss the fully eaten buffers, adjust the partial one
            s = pipe.slot(pipe.tail)
            blen = int(pipe.buf_len[s])
            if ret >= blen:
                ret -= blen
                pipe.release(pipe.tail)
                pipe.tail += 1
            else:
                pipe.buf_offset[s] += ret
                pipe.buf_len[s] -= ret
                ret = 0
    return (num_spliced if num_spliced else ret), pos


def _splice_write(pipe: Pipe, out: File, pos: int, length: int,
                  flags: int) -> tuple[int, int]:
    """``do_splice_from()``: the file's ``splice_write`` or ``iter_file_splice_write``."""
    splice_write = getattr(out.f_op, "splice_write", None)
    if splice_write is not None:
        return splice_write(pipe, out, pos, length, flags)  # type: ignore[no-any-return]
    return iter_file_splice_write(pipe, out, pos, length, flags)


# --- pipe -> pipe ------------------------------------------------------------------------------
def splice_pipe_to_pipe(ipipe: Pipe, opipe: Pipe, length: int, flags: int) -> int:
    """``splice_pipe_to_pipe()``: whole buffers move (with their page reference); the last,
    partial one is shared with ``pipe_buf_get`` (a ``get_page``), losing GIFT and CAN_MERGE.
    Return: bytes, 0 at EOF, -EAGAIN (nothing to move and SPLICE_F_NONBLOCK, or SIMPLIFIED:
    a sleep), -EPIPE."""
    if ipipe.is_empty() and ipipe.writers:
        return -errno.EAGAIN  # ipipe_prep()
    if opipe.is_full():
        if not opipe.readers:
            return -errno.EPIPE
        return -errno.EAGAIN  # opipe_prep()
    ret = 0
    while length:
        if not opipe.readers:
            if not ret:
                ret = -errno.EPIPE
            break
        if ipipe.is_empty() and not ipipe.writers:
            break
        if ipipe.is_empty() or opipe.is_full():
            if not ret:
                ret = -errno.EAGAIN
            break
        s = ipipe.slot(ipipe.tail)
        blen = int(ipipe.buf_len[s])
        page, off, bflags = int(ipipe.buf_page[s]), int(ipipe.buf_offset[s]), int(
            ipipe.buf_flags[s])
        if length >= blen:
            opipe.add(page, off, blen, bflags, ipipe.buf_holder[s], bool(ipipe.buf_ours[s]))
            ipipe.buf_page[s] = -1  # ibuf->ops = NULL: the reference moved with the buffer
            ipipe.buf_holder[s] = None
            ipipe.buf_len[s] = 0
            ipipe.tail += 1
            o_len = blen
        else:
            token = PipeToken("pipe_buf_get")
            get_page(ipipe.pgdat, page, holder=token, site="pipe_buf_get")
            keep = bflags & ~(PIPE_BUF_FLAG.GIFT | PIPE_BUF_FLAG.CAN_MERGE)
            opipe.add(page, off, length, keep, token)
            ipipe.buf_offset[s] += length
            ipipe.buf_len[s] -= length
            o_len = length
        ret += o_len
        length -= o_len
    return ret


# --- do_splice ----------------------------------------------------------------------------------
def do_splice(fin: File, off_in: int | None, fout: File, off_out: int | None, length: int,
              flags: int) -> int:
    """``do_splice()`` (with ``__do_splice``'s ESPIPE checks): move up to ``length`` bytes
    from ``fin`` to ``fout``, one of which must be a pipe. A file whose offset is None uses
    and advances its ``f_pos``. Return: bytes, 0 at EOF, or -errno."""
    ipipe = get_pipe_info(fin)
    opipe = get_pipe_info(fout)
    if (ipipe is not None and off_in is not None) or (opipe is not None
                                                      and off_out is not None):
        return -errno.ESPIPE
    if not fin.f_mode & FMODE.FMODE_READ or not fout.f_mode & FMODE.FMODE_WRITE:
        return -errno.EBADF
    if ipipe is not None and opipe is not None:
        if ipipe is opipe:
            return -errno.EINVAL  # splicing to self would be fun, but...
        if (fin.f_flags | fout.f_flags) & OFLAG.O_NONBLOCK:
            flags |= SPLICE_F.NONBLOCK
        return splice_pipe_to_pipe(ipipe, opipe, length, flags)
    if ipipe is not None:
        if off_out is not None and not fout.f_mode & FMODE.FMODE_PWRITE:
            return -errno.EINVAL
        offset = fout.f_pos if off_out is None else off_out
        if fout.f_flags & OFLAG.O_APPEND:
            return -errno.EINVAL
        ret = rw_verify_area(fout, offset, length)
        if ret < 0:
            return ret
        if fin.f_flags & OFLAG.O_NONBLOCK:
            flags |= SPLICE_F.NONBLOCK
        ret, offset = _splice_write(ipipe, fout, offset, length, flags)
        if off_out is None:
            fout.f_pos = offset
        return ret
    if opipe is not None:
        if off_in is not None and not fin.f_mode & FMODE.FMODE_PREAD:
            return -errno.EINVAL
        offset = fin.f_pos if off_in is None else off_in
        if _v6(fin):
            ret = rw_verify_area(fin, offset, length)
            if ret < 0:
                return ret
        if fout.f_flags & OFLAG.O_NONBLOCK:
            flags |= SPLICE_F.NONBLOCK
        ret, offset = splice_file_to_pipe(fin, opipe, offset, length, flags)
        if off_in is None:
            fin.f_pos = offset
        return ret
    return -errno.EINVAL


def sys_splice(fin: File | None, off_in: int | None, fout: File | None, off_out: int | None,
               length: int, flags: int) -> int:
    """``splice(2)``: a zero length returns 0 before anything is checked; unknown flags are
    -EINVAL; a missing file is -EBADF. Return: bytes or -errno."""
    if not length:
        return 0
    if flags & ~SPLICE_F.ALL:
        return -errno.EINVAL
    if fin is None or fout is None:
        return -errno.EBADF
    return do_splice(fin, off_in, fout, off_out, length, flags)


# --- vmsplice -----------------------------------------------------------------------------------
def add_to_pipe(pipe: Pipe, page: int, offset: int, length: int, flags: int,
                holder: object) -> int:
    """``add_to_pipe()`` of a user-page buffer. On failure the buffer's reference is
    dropped. Return: ``length``, -EPIPE (no readers) or -EAGAIN (full)."""
    if not pipe.readers:
        ret = -errno.EPIPE
    elif pipe.is_full():
        ret = -errno.EAGAIN
    else:
        pipe.add(page, offset, length, flags, holder)
        return length
    put_page(pipe.pgdat, page, holder=holder, site="page_cache_pipe_buf_release")
    return ret


def iter_to_pipe(it: IovIter, pipe: Pipe, buf_flag: int) -> int:
    """``iter_to_pipe()``: user pages, 16 at a time, each into its own buffer holding the
    FOLL_GET reference. [5.9] ``iov_iter_get_pages`` (advance by what was added); [6.18]
    ``iov_iter_get_pages2`` (advances; reverted on a failed add).
    Return: bytes added, or the first -errno if none."""
    pgdat = pipe.pgdat
    v6 = bool(pgdat.cfg.IOV_ITER_EXTRACT)
    total = 0
    ret = 0
    pages = np.full(16, -1, np.int64)
    while iov_iter_count(it):
        token = PipeToken("vmsplice")
        if v6:
            left, start = iov_iter_get_pages2(it, pages, 1 << 62, 16, holder=token)
        else:
            left, start = iov_iter_get_pages(it, pages, 1 << 62, 16, holder=token)
        if left <= 0:
            ret = left
            break
        n = (left + start + PAGE_SIZE - 1) // PAGE_SIZE
        for i in range(n):
            size = min(left, PAGE_SIZE - start)
            ret = add_to_pipe(pipe, int(pages[i]), start, size, buf_flag, token)
            if ret < 0:
                if v6:
                    iov_iter_revert(it, left)
                for j in range(i + 1, n):  # this one got dropped by add_to_pipe()
                    put_page(pgdat, int(pages[j]), holder=token, site="iter_to_pipe")
                return total if total else ret
            if not v6:
                iov_iter_advance(it, ret)
            total += ret
            left -= size
            start = 0
    return total if total else ret


def vmsplice_to_pipe(f: File, it: IovIter, flags: int) -> int:
    """``vmsplice_to_pipe()``. Return: bytes, or -EBADF (not a pipe), -EPIPE, -EAGAIN."""
    buf_flag = PIPE_BUF_FLAG.GIFT if flags & SPLICE_F.GIFT else 0
    pipe = get_pipe_info(f)
    if pipe is None:
        return -errno.EBADF
    ret = wait_for_space(pipe, flags)
    if not ret:
        ret = iter_to_pipe(it, pipe, buf_flag)
    return ret


def vmsplice_to_user(f: File, it: IovIter, flags: int) -> int:
    """``vmsplice_to_user()``: a plain copy out of the pipe (``pipe_to_user``); a buffer
    that cannot be copied whole is -EFAULT. Return: bytes, or -errno if none."""
    pipe = get_pipe_info(f)
    if pipe is None:
        return -errno.EBADF
    total_len = iov_iter_count(it)
    num_spliced = 0
    ret = 0
    while total_len:
        ret = _next_nonempty(pipe, num_spliced, flags)
        if ret <= 0:
            break
        while not pipe.is_empty() and total_len:
            s = pipe.slot(pipe.tail)
            n = min(int(pipe.buf_len[s]), total_len)
            if copy_to_iter(pipe.copy_out(s, n), it) != n:
                ret = -errno.EFAULT
                break
            pipe.buf_offset[s] += n
            pipe.buf_len[s] -= n
            num_spliced += n
            total_len -= n
            if not pipe.buf_len[s]:
                pipe.release(pipe.tail)
                pipe.tail += 1
        if ret < 0:
            break
    return num_spliced if num_spliced else ret


def sys_vmsplice(f: File | None, iov: Sequence[tuple[int, int]], flags: int,
                 mm: MmStruct) -> int:
    """``vmsplice(2)``: the write end takes user pages into the pipe, the read end copies
    out. Order: flags (-EINVAL), the file (-EBADF, also for neither mode), the iovec array
    (``import_iovec``: -EINVAL, -EFAULT), then a non-pipe is -EBADF. Return: bytes or
    -errno."""
    if flags & ~SPLICE_F.ALL:
        return -errno.EINVAL
    if f is None:
        return -errno.EBADF
    if f.f_mode & FMODE.FMODE_WRITE:
        rw = ITER_SOURCE
    elif f.f_mode & FMODE.FMODE_READ:
        rw = ITER_DEST
    else:
        return -errno.EBADF
    total, it = import_iovec(rw, iov, mm)
    if total < 0:
        return total
    assert it is not None
    if not iov_iter_count(it):
        return 0
    if rw == ITER_SOURCE:
        return vmsplice_to_pipe(f, it, flags)
    return vmsplice_to_user(f, it, flags)

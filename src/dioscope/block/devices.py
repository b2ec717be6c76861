"""Block devices that move real bytes (``struct gendisk`` + a blk-mq driver's ``queue_rq``).

:class:`BlockDevice` holds what the block layer needs of a disk: ``MAJ:MIN``, name, queue
limits, capacity, scheduler, the completion queue, and fault injection. A driver implements
:meth:`BlockDevice._transfer`, which moves the bytes of one request between the disk and
physical memory, given the request's scatter-gather list (``blk_rq_map_sg``: physical
addresses and lengths of the frames the bios name).

* :class:`MemDevice` keeps the disk in a sparse anonymous mapping.
* :class:`FileDevice` keeps it in a host file and moves each request with ``os.preadv`` /
  ``os.pwritev`` over memoryviews of the physical frames, through an ``O_DIRECT`` descriptor
  when the request's memory, lengths and offset are aligned to the host device's needs
  (they normally are: bvec pieces are 512-byte multiples of page-aligned frames), through a
  buffered one otherwise; a short host transfer is continued until done.

Both give byte-identical disks and memory for the same workload.

Faults (:meth:`BlockDevice.inject`): :class:`EIOOnRequest`, :class:`EIOOnSectors`,
:class:`ShortTransfer`. A failed request moves no bytes and completes with BLK_STS_IOERR; a
short one moves its first bytes and completes them, then ends the rest with BLK_STS_IOERR, as
a driver calling ``blk_update_request`` with the good part and then the error does.
"""

from __future__ import annotations

import abc
import mmap
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from ..kernel.trace import mkdev
from ..kernel.types import parse_size
from ..mm.physmem import host_buffer
from .blk_merge import blk_rq_map_sg_lists
from .blk_mq import CompletionQueue, Request
from .blk_settings import QueueLimits, host_disk
from .blk_types import BLK_STS, REQ_FLAG, REQ_OP, SECTOR_SHIFT

if TYPE_CHECKING:
    from ..mm.page_alloc import PgData

__all__ = [
    "BlockDevice",
    "EIOOnRequest",
    "EIOOnSectors",
    "Fault",
    "FileDevice",
    "MemDevice",
    "ShortTransfer",
    "host_file_device",
]

BOUNCE_READ_SEGS = 16
BOUNCE_WRITE_SEGS = 128
"""A FileDevice read or write of more segments than these goes through its bounce buffer
(:meth:`FileDevice._transfer`)."""
_IOV_MAX = os.sysconf("SC_IOV_MAX") if hasattr(os, "sysconf") else 1024
_OP_DRV_IN, _OP_DRV_OUT = int(REQ_OP.REQ_OP_DRV_IN), int(REQ_OP.REQ_OP_DRV_OUT)
_OP_READ, _OP_WRITE, _OP_FLUSH = (int(REQ_OP.REQ_OP_READ), int(REQ_OP.REQ_OP_WRITE),
                                  int(REQ_OP.REQ_OP_FLUSH))
_PREFLUSH, _FUA = int(REQ_FLAG.REQ_PREFLUSH), int(REQ_FLAG.REQ_FUA)
_OK, _IOERR = int(BLK_STS.BLK_STS_OK), int(BLK_STS.BLK_STS_IOERR)


@dataclass
class Fault:
    """A fault armed on a device."""

    fired: int = field(default=0, init=False)
    """How many requests it has failed so far."""


@dataclass
class EIOOnRequest(Fault):
    """The ``nth`` request issued after injection (1 = the next one) fails with EIO."""

    nth: int = 1
    _at: int = field(default=0, init=False, repr=False)


@dataclass
class EIOOnSectors(Fault):
    """Every request touching sectors ``[start, end)`` fails with EIO (until cleared)."""

    start: int = 0
    end: int = 0


@dataclass
class ShortTransfer(Fault):
    """The ``nth`` request issued after injection moves only its first ``nbytes`` (a
    multiple of 512), then fails with EIO."""

    nth: int = 1
    nbytes: int = 0
    _at: int = field(default=0, init=False, repr=False)


class BlockDevice(abc.ABC):
    """A disk: its queue and the driver contract. Subclasses move the bytes."""

    def __init__(self, pgdat: PgData, capacity: int | str, *, limits: QueueLimits | None = None,
                 name: str = "vda", major: int = 254, minor: int = 0,
                 elevator: str = "mq-deadline", cq: CompletionQueue | None = None) -> None:
        self.pgdat = pgdat
        self.name = name
        self.major, self.minor = major, minor
        self.dev = mkdev(major, minor)
        self.limits = limits if limits is not None else QueueLimits()
        nbytes = parse_size(capacity)
        self.nr_sectors = nbytes >> SECTOR_SHIFT
        """``bdev_nr_sectors()``: capacity in 512-byte sectors."""
        self.elevator = elevator
        """The I/O scheduler (``queue/scheduler``); with ``"none"`` nothing is inserted."""
        self.nomerges = 0
        """``queue/nomerges``: 0 merges allowed, nonzero none."""
        self.cq = cq if cq is not None else CompletionQueue()
        self.nr_issued = 0
        """Requests issued to the driver so far."""
        self.faults: list[Fault] = []
        self.bytes_read = 0
        self.bytes_written = 0
        self.flushes = 0

    @property
    def capacity(self) -> int:
        """Size in bytes."""
        return self.nr_sectors << SECTOR_SHIFT

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({self.name} {self.major}:{self.minor}, "
                f"{self.nr_sectors} sectors)")

    # --- faults --------------------------------------------------------------------------
    def inject(self, fault: Fault) -> Fault:
        """Arm ``fault``. Return: it (its ``fired`` counts the requests it failed)."""
        if isinstance(fault, ShortTransfer) and fault.nbytes % 512:
            raise ValueError(f"a short transfer of {fault.nbytes} bytes is not a whole "
                             f"number of sectors")
        if isinstance(fault, EIOOnRequest | ShortTransfer):
            if fault.nth < 1:
                raise ValueError(f"nth must be at least 1, not {fault.nth}")
            fault._at = self.nr_issued + fault.nth
        self.faults.append(fault)
        return fault

    def clear_faults(self) -> None:
        self.faults.clear()

    def _fault_for(self, rq: Request) -> tuple[int, int | None]:
        """(status, bytes to move or None for all) that the armed faults impose on the
        request being issued."""
        for f in self.faults:
            if isinstance(f, EIOOnSectors):
                if rq.sector < f.end and f.start < rq.sector + rq.nr_sectors:
                    f.fired += 1
                    return BLK_STS.BLK_STS_IOERR, 0
            elif isinstance(f, EIOOnRequest | ShortTransfer) and f._at == self.nr_issued:
                f.fired += 1
                self.faults.remove(f)
                if isinstance(f, ShortTransfer) and f.nbytes < rq.data_len:
                    return BLK_STS.BLK_STS_IOERR, f.nbytes
                if isinstance(f, EIOOnRequest):
                    return BLK_STS.BLK_STS_IOERR, 0
        return BLK_STS.BLK_STS_OK, None

    # --- the driver -----------------------------------------------------------------------
    def queue_rq(self, rq: Request) -> None:
        """``->queue_rq()``: perform ``rq`` and post its completion.

        Context: called by dispatch after ``block_rq_issue``; the completion runs later in
        the completion context.
        """
        self.nr_issued += 1
        status, limit = self._fault_for(rq) if self.faults else (_OK, None)
        if status and limit == 0:
            self.cq.post(rq, 0, status)
            return
        op = rq.cmd_flags & 0xFF
        if op == _OP_FLUSH or rq.cmd_flags & _PREFLUSH:
            self._flush()
        done = 0
        if rq.data_len and op in (_OP_READ, _OP_WRITE, _OP_DRV_IN, _OP_DRV_OUT):
            # Passthrough: DRV_IN reads and DRV_OUT writes at rq.sector (block/blk_map.py).
            write = op in (_OP_WRITE, _OP_DRV_OUT)
            phys, lens = blk_rq_map_sg_lists(rq, limit)
            done = self._transfer(write, rq.sector << SECTOR_SHIFT, phys, lens)
            if write:
                self.bytes_written += done
            else:
                self.bytes_read += done
            if done < (limit if limit is not None else rq.data_len):
                status = _IOERR
        else:
            done = rq.data_len
        if rq.cmd_flags & _FUA and not status:
            self._flush()
        self.cq.post(rq, done, status)

    @abc.abstractmethod
    def _transfer(self, write: bool, offset: int, phys: list[int], lens: list[int]) -> int:
        """Move ``lens[i]`` bytes at physical ``phys[i]`` to (``write``) or from the disk,
        the pieces back to back from byte ``offset``.

        Return: bytes moved (fewer on a device error).
        """

    def _flush(self) -> None:
        """Make written data durable (PREFLUSH / FUA / REQ_OP_FLUSH)."""
        self.flushes += 1

    # --- model-only access to the medium --------------------------------------------------
    @abc.abstractmethod
    def read_disk(self, offset: int, length: int) -> bytes:
        """The bytes on the medium (not a kernel operation: for tests and checkers)."""

    @abc.abstractmethod
    def write_disk(self, offset: int, data: bytes) -> None:
        """Put bytes on the medium behind the block layer's back (test setup)."""


class MemDevice(BlockDevice):
    """A disk kept in host memory: a sparse shared-memory file (``memfd``) mapped whole, so
    untouched sectors are zero and cost nothing and even a disk the size of the host's maps
    without a commit charge; also visible as the numpy array ``data``."""

    def __init__(self, pgdat: PgData, capacity: int | str = "64M", **kw: object) -> None:
        super().__init__(pgdat, capacity, **kw)  # type: ignore[arg-type]
        size = max(self.capacity, mmap.PAGESIZE)
        if hasattr(os, "memfd_create"):
            fd = os.memfd_create(f"dioscope-{self.name}")
            try:
                os.ftruncate(fd, size)
                self._map = mmap.mmap(fd, size, flags=mmap.MAP_SHARED)
            finally:
                os.close(fd)
        else:
            flags = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | getattr(mmap, "MAP_NORESERVE", 0)
            self._map = mmap.mmap(-1, size, flags=flags)
        self.disk = memoryview(self._map)
        self.data = np.frombuffer(self._map, np.uint8)

    def _transfer(self, write: bool, offset: int, phys: list[int], lens: list[int]) -> int:
        mem = self.pgdat.mem.view
        disk = self.disk
        pos = offset
        for p, n in zip(phys, lens):
            if write:
                disk[pos : pos + n] = mem[p : p + n]
            else:
                mem[p : p + n] = disk[pos : pos + n]
            pos += n
        return pos - offset

    def read_disk(self, offset: int, length: int) -> bytes:
        return bytes(self.disk[offset : offset + length])

    def write_disk(self, offset: int, data: bytes) -> None:
        self.disk[offset : offset + len(data)] = data


class FileDevice(BlockDevice):
    """A disk kept in a host file; requests move with ``preadv`` / ``pwritev``.

    ``capacity`` defaults to the file's size; a smaller file is extended (sparse). Limits
    default to those of the host disk holding the file (kernel defaults if it is not on a
    block device). ``direct=False`` never uses ``O_DIRECT``.
    """

    def __init__(self, pgdat: PgData, path: str | os.PathLike[str],
                 capacity: int | str | None = None, *, direct: bool = True,
                 **kw: object) -> None:
        self.path = os.fspath(path)
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        size = os.fstat(self.fd).st_size
        nbytes = parse_size(capacity) if capacity is not None else size
        if size < nbytes:
            os.ftruncate(self.fd, nbytes)
        if "limits" not in kw:
            try:
                kw["limits"] = QueueLimits.from_host(self.path)
            except (OSError, ValueError):
                kw["limits"] = QueueLimits()
        super().__init__(pgdat, nbytes, **kw)  # type: ignore[arg-type]
        self.align = 512
        """Host O_DIRECT alignment of memory, lengths and offset."""
        try:
            hlim = QueueLimits.from_host(self.path)
            self.align = max(hlim.logical_block_size, hlim.dma_alignment + 1)
        except (OSError, ValueError):
            pass
        self.direct_fd: int | None = None
        if direct and hasattr(os, "O_DIRECT"):
            try:
                self.direct_fd = os.open(self.path, os.O_RDWR | os.O_DIRECT)
            except OSError:
                self.direct_fd = None
        self.direct_requests = 0
        self.buffered_requests = 0
        self._bounce: memoryview | None = None
        self._bounce_map: mmap.mmap | None = None

    def close(self) -> None:
        for fd in (self.fd, self.direct_fd):
            if fd is not None and fd >= 0:
                os.close(fd)
        self.fd = -1
        self.direct_fd = None

    def __enter__(self) -> FileDevice:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _aligned(self, offset: int, phys: list[int], lens: list[int]) -> bool:
        m = self.align - 1
        if offset & m:
            return False
        if len(phys) > 16:
            return not int(np.bitwise_or.reduce(np.array(phys) | np.array(lens))) & m
        acc = 0
        for p, n in zip(phys, lens):
            acc |= p | n
        return not acc & m

    def _bounce_for(self, nbytes: int) -> memoryview:
        """The device's bounce buffer (2 MiB-aligned, huge pages where the host allows), at
        least ``nbytes`` long."""
        if self._bounce is None or len(self._bounce) < nbytes:
            self._bounce_map, self._bounce = host_buffer(max(nbytes, 1 << 20))
        return self._bounce[:nbytes]

    def _transfer(self, write: bool, offset: int, phys: list[int], lens: list[int]) -> int:
        """Move one request's segments with ``preadv``/``pwritev`` on the backing file.

        A host ``preadv`` costs more the more iovecs it has (measured on this VM's virtio
        disk, O_DIRECT, 1 MiB of page-aligned pieces: 1 iovec 375 µs, 8 iovecs 480–530,
        32 iovecs 530–600, 72 iovecs 660, 256 iovecs 850; through a contiguous bounce buffer
        plus the scatter 430–480 µs). With few pieces it depends on their sizes: a model
        read of 3 pieces (two single pages and a 254-page run) took 375 µs as iovecs and
        465 µs bounced. A ``pwritev`` only notices beyond ~128 iovecs (230 µs up to 72, 310
        at 256, 295 bounced). So a read of more than ``BOUNCE_READ_SEGS`` segments, or a
        write of more than ``BOUNCE_WRITE_SEGS``, moves through a bounce buffer: which host
        calls carry the bytes is the device's business; the bytes that reach model memory
        and the disk are the same.
        """
        mem = self.pgdat.mem.view
        if len(phys) > (BOUNCE_WRITE_SEGS if write else BOUNCE_READ_SEGS):
            total = sum(lens)
            bounce = self._bounce_for(total)
            if write:
                o = 0
                for p, n in zip(phys, lens):
                    bounce[o : o + n] = mem[p : p + n]
                    o += n
                return self._move(True, offset, [bounce], self._aligned(offset, [0], [total]))
            done = self._move(False, offset, [bounce], self._aligned(offset, [0], [total]))
            o = 0
            for p, n in zip(phys, lens):
                if o >= done:
                    break
                k = min(n, done - o)
                mem[p : p + k] = bounce[o : o + k]
                o += k
            return done
        return self._move(write, offset, [mem[p : p + n] for p, n in zip(phys, lens)],
                          self._aligned(offset, phys, lens))

    def _move(self, write: bool, offset: int, bufs: list[memoryview], aligned: bool) -> int:
        """``preadv``/``pwritev`` of ``bufs`` at ``offset``: O_DIRECT when ``aligned`` (memory,
        lengths and offset), buffered otherwise or when the host refuses; short transfers
        continued. Return: bytes moved."""
        fd = self.fd
        if self.direct_fd is not None and aligned:
            fd = self.direct_fd
            self.direct_requests += 1
        else:
            self.buffered_requests += 1
        op = os.pwritev if write else os.preadv
        done = 0
        while bufs:
            chunk = bufs if len(bufs) <= _IOV_MAX else bufs[:_IOV_MAX]
            want = sum(map(len, chunk))
            try:
                n = op(fd, chunk, offset + done)
            except OSError:
                if fd == self.direct_fd:  # the host refused O_DIRECT: retry buffered
                    fd = self.fd
                    continue
                return done
            if n <= 0:
                return done
            done += n
            if n == want:
                del bufs[: len(chunk)]
                continue
            # A short host transfer: drop what moved, continue from the partial buffer.
            while n >= len(bufs[0]):
                n -= len(bufs[0])
                del bufs[0]
            if n:
                bufs[0] = bufs[0][n:]
            if fd == self.direct_fd and done & (self.align - 1):
                fd = self.fd  # the rest is no longer aligned
        return done

    def _flush(self) -> None:
        super()._flush()
        os.fdatasync(self.fd)

    def read_disk(self, offset: int, length: int) -> bytes:
        return os.pread(self.fd, length, offset).ljust(length, b"\0")

    def write_disk(self, offset: int, data: bytes) -> None:
        os.pwrite(self.fd, data, offset)


def host_file_device(pgdat: PgData, path: str | os.PathLike[str],
                     capacity: int | str | None = None, **kw: object) -> FileDevice:
    """A FileDevice that looks like the host disk holding ``path`` (same ``MAJ:MIN``, name,
    scheduler and limits), so its traces compare with the host's."""
    disk = host_disk(path)
    kw.setdefault("name", disk.name)
    kw.setdefault("major", disk.major)
    kw.setdefault("minor", disk.minor)
    if disk.scheduler:
        kw.setdefault("elevator", disk.scheduler)
    return FileDevice(pgdat, path, capacity, **kw)  # type: ignore[arg-type]

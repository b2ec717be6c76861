"""The demo workload: a mixed O_DIRECT workload on real bytes, run per profile.

A model machine (1 GiB RAM by default, a sparse 4 GiB :class:`FileDevice` in a temporary
directory, the iomap filesystem) runs a deterministic, seeded mix of O_DIRECT operations
through the syscall layer: sequential and random reads and writes from 4 KiB to 8 MiB,
scatter/gather iovecs, buffers offset by 512 bytes, THP buffers, untouched buffers (writes
from the zero page), hole and EOF reads, and a few bad inputs with the errno the kernel gives.
Every byte read is checked against an independent record of what the files hold (a
bytearray per file, updated by every successful write), and the files are read back in full at
the end. A sanitizer watches every reference and pin.

This module is harness: it drives the model through the Process API and observes it through
hooks and a wrapper around the device's ``queue_rq`` (to count pages that look
DMA-pinned while their request is at the device).
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .block.devices import FileDevice, MemDevice
from .fs.fs_types import OFLAG
from .fs.modelfs.super import ModelFs
from .kernel.types import HPAGE_PMD_SIZE, PAGE_SIZE
from .machine import Kernel
from .mm.gup_core import maybe_dma_pinned_mask
from .mm.mmap import MADV_HUGEPAGE
from .sanitizer import Sanitizer
from .syscalls.process import Process

__all__ = ["WorkloadStats", "run_workload"]

MIB = 1 << 20
SIZES = [4096, 8192, 65536, 262144, MIB, 4 * MIB, 8 * MIB]


@dataclass
class WorkloadStats:
    """What one profile's run did and saw."""

    profile: str
    syscalls: int = 0
    bytes_read: int = 0
    bytes_written: int = 0
    pins_acquired: int = 0
    pins_released: int = 0
    pages_in_flight: int = 0
    pages_maybe_pinned: int = 0
    bios: int = 0
    requests: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    unexpected: list[str] = field(default_factory=list)
    data_errors: int = 0
    sanitizer: str = "not run"
    seconds: float = 0.0


class _Run:
    def __init__(self, profile: str, size: int, seed: int, workdir: str,
                 device: str) -> None:
        self.stats = WorkloadStats(profile)
        self.rng = np.random.default_rng(seed)
        self.size = size
        mem = max(1 << 30, 8 * size)
        self.k = Kernel(mem=mem, profile=profile)
        cap = max(4 << 30, 4 * size)
        if device == "file":
            self.dev: Any = FileDevice(self.k.pgdat, os.path.join(workdir, f"disk-{profile}"),
                                       cap)
        else:
            self.dev = MemDevice(self.k.pgdat, cap)
        self.k.add_disk(self.dev)
        self.fs = self.k.mount(ModelFs(self.dev, "iomap"))
        self.p: Process = self.k.spawn("workload")
        self.san = Sanitizer(self.k.pgdat, recipe=f"dioscope demo --profile {profile} "
                             f"--seed {seed} --size {size}")
        self._watch_device()
        self.k.pgdat.hooks.tracepoints.append(self._trace)
        # Files and their independent records.
        data = self.rng.integers(0, 256, size, dtype=np.uint8).tobytes()
        self.fs.create_file("data", size, data)
        self.ref: dict[str, bytearray] = {"data": bytearray(data)}
        sparse = bytearray(4 * MIB)
        content = self.rng.integers(0, 256, MIB, dtype=np.uint8).tobytes()
        sparse[MIB : 2 * MIB] = content
        self.fs.create_file("sparse", 4 * MIB, bytes(sparse),
                            holes=[(0, MIB), (2 * MIB, 2 * MIB)])
        self.ref["sparse"] = sparse
        small = self.rng.integers(0, 256, 1000, dtype=np.uint8).tobytes()
        self.fs.create_file("small", 1000, small)
        self.ref["small"] = bytearray(small)
        self.fd = {n: self.p.open("/" + n, int(OFLAG.O_RDWR | OFLAG.O_DIRECT))
                   for n in self.ref}
        # Buffers: plain, THP, and a spare for offset-by-512 I/O.
        self.buf = self.p.mmap(8 * MIB + PAGE_SIZE)
        self.p.touch(self.buf, 8 * MIB + PAGE_SIZE, write=True)
        self.thp = self.p.mmap(8 * MIB)
        self.p.madvise(self.thp, 8 * MIB, MADV_HUGEPAGE)
        self.p.touch(self.thp, 8 * MIB, write=True)

    # --- observation -----------------------------------------------------------------------
    def _watch_device(self) -> None:
        dev = self.dev
        pgdat = self.k.pgdat
        queue_rq = dev.queue_rq
        stats = self.stats

        def watched(rq: Any) -> None:
            pages = [b.pages() for b in rq.bios() if b.bi_vcnt]
            if pages:
                allp = np.concatenate(pages)
                stats.pages_in_flight += len(allp)
                stats.pages_maybe_pinned += int(maybe_dma_pinned_mask(pgdat, allp).sum())
            stats.requests += 1
            queue_rq(rq)

        dev.queue_rq = watched

    def _trace(self, name: str, fields: dict[str, Any]) -> None:
        if name == "block_bio_queue":
            self.stats.bios += 1

    # --- operations --------------------------------------------------------------------------
    def _call(self, fn: Callable[[], int], expect_errno: int | None = None) -> int | None:
        self.stats.syscalls += 1
        try:
            ret = fn()
        except OSError as e:
            name = errno.errorcode.get(e.errno or 0, str(e.errno))
            self.stats.errors[name] += 1
            if e.errno != expect_errno:
                self.stats.unexpected.append(f"unexpected {name}")
            return None
        if expect_errno is not None:
            self.stats.unexpected.append(f"expected {errno.errorcode[expect_errno]}, got {ret}")
        return ret

    def _check(self, name: str, off: int, addr: int, ret: int) -> None:
        want = bytes(self.ref[name][off : off + ret])
        if self.p.read_user(addr, ret) != want:
            self.stats.data_errors += 1

    def _fill(self, addr: int, n: int) -> bytes:
        data = self.rng.integers(0, 256, n, dtype=np.uint8).tobytes()
        self.p.write_user(addr, data)
        return data

    def read(self, name: str, off: int, n: int, addr: int) -> None:
        ret = self._call(lambda: self.p.pread(self.fd[name], addr, n, off))
        if ret is not None:
            self.stats.bytes_read += ret
            self._check(name, off, addr, ret)

    def write(self, name: str, off: int, n: int, addr: int, data: bytes | None = None) -> None:
        if data is None:
            data = self._fill(addr, n)
        ret = self._call(lambda: self.p.pwrite(self.fd[name], addr, n, off))
        if ret is not None:
            self.stats.bytes_written += ret
            ref = self.ref[name]
            if off + ret > len(ref):
                ref.extend(bytes(off + ret - len(ref)))
            ref[off : off + ret] = data[:ret]

    def one(self, kind: str) -> None:
        rng = self.rng
        size = self.size
        n = int(rng.choice([s for s in SIZES if s <= size]))
        off = int(rng.integers(0, (size - n) // 4096 + 1)) * 4096
        if kind == "seq-read":
            self.read("data", off, n, self.buf)
        elif kind == "rand-read-4k":
            self.read("data", int(rng.integers(0, size // 4096)) * 4096, 4096, self.buf)
        elif kind == "write":
            self.write("data", off, n, self.buf)
        elif kind == "read-offset-512":
            self.read("data", off, min(n, 4 * MIB), self.buf + 512)
        elif kind == "thp-read":
            self.read("data", off, n, self.thp)
        elif kind == "iovec":
            segs = int(rng.integers(2, 9))
            piece = 4096 * int(rng.integers(1, 5))
            iov = [(self.buf + i * 2 * piece, piece) for i in range(segs)]
            total = segs * piece
            o = int(rng.integers(0, (size - total) // 4096 + 1)) * 4096
            if rng.integers(0, 2):
                ret = self._call(lambda: self.p.preadv(self.fd["data"], iov, o))
                if ret is not None:
                    self.stats.bytes_read += ret
                    for i, (a, ln) in enumerate(iov):
                        self._check("data", o + i * piece, a, min(ln, max(ret - i * piece, 0)))
            else:
                blobs = [self._fill(a, ln) for a, ln in iov]
                ret = self._call(lambda: self.p.pwritev(self.fd["data"], iov, o))
                if ret is not None:
                    self.stats.bytes_written += ret
                    self.ref["data"][o : o + ret] = b"".join(blobs)[:ret]
        elif kind == "untouched-write":
            m = self.p.mmap(n)
            self.write("data", off, n, m, bytes(n))
            self.p.munmap(m, n)
        elif kind == "hole-read":
            self.read("sparse", int(rng.choice([0, 2 * MIB, MIB])), MIB, self.buf)
        elif kind == "eof-read":
            self.read("small", 0, 8192, self.buf)
        elif kind == "bad":
            which = int(rng.integers(0, 4))
            fd = self.fd["data"]
            if which == 0:
                self._call(lambda: self.p.pread(fd, self.buf, 4096, 100), errno.EINVAL)
            elif which == 1:
                m = self.p.mmap(2 * PAGE_SIZE)
                self.p.munmap(m, 2 * PAGE_SIZE)
                self._call(lambda: self.p.pread(fd, m, 4096, 0), errno.EFAULT)
            elif which == 2:
                self._call(lambda: self.p.pread(9999, self.buf, 4096, 0), errno.EBADF)
            else:
                iov = [(self.buf, 512)] * 1025
                self._call(lambda: self.p.preadv(fd, iov, 0), errno.EINVAL)

    def finish(self) -> None:
        # Read every file back in full and compare with the record.
        for name, ref in self.ref.items():
            n = len(ref)
            got = 0
            while got < n:
                chunk = min(8 * MIB, n - got)
                length = (chunk + 4095) // 4096 * 4096
                fd = self.fd[name]

                def pread(fd: int = fd, ln: int = length, g: int = got) -> int:
                    return self.p.pread(fd, self.buf, ln, g)

                ret = self._call(pread)
                if not ret:
                    self.stats.data_errors += 1
                    break
                self._check(name, got, self.buf, ret)
                got += ret
        for fd in self.fd.values():
            self.p.close(fd)
        self.p.exit()
        self.san.check_quiescent()
        v = self.san.violations
        self.stats.sanitizer = "clean" if not v else f"{len(v)} violation(s): {v[0]}"
        acq, rel = self.k.vmstat.pins()
        self.stats.pins_acquired, self.stats.pins_released = acq, rel
        self.san.detach()


KINDS = ["seq-read", "rand-read-4k", "write", "read-offset-512", "thp-read", "iovec",
         "untouched-write", "hole-read", "eof-read", "bad"]
WEIGHTS = np.array([4, 6, 4, 2, 2, 3, 1, 1, 1, 1], float)


def run_workload(profile: str, *, size: int = 64 * MIB, ops: int = 300, seed: int = 1,
                 device: str = "file", progress: Callable[[int], None] | None = None
                 ) -> WorkloadStats:
    """Run the workload under ``profile``. Return its statistics."""
    import time

    if size < 8 * MIB or size % (2 * HPAGE_PMD_SIZE):
        raise ValueError("size must be a multiple of 4 MiB and at least 8 MiB")
    workdir = tempfile.mkdtemp(prefix="dioscope-demo-", dir=_workdir())
    t0 = time.perf_counter()
    try:
        run = _Run(profile, size, seed, workdir, device)
        pick = run.rng.choice(len(KINDS), size=ops, p=WEIGHTS / WEIGHTS.sum())
        for i, k in enumerate(pick.tolist()):
            run.one(KINDS[k])
            if progress is not None:
                progress(i)
        run.finish()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    run.stats.seconds = time.perf_counter() - t0
    return run.stats


def _workdir() -> str:
    """A directory on a real filesystem (O_DIRECT needs one; tmpfs would refuse it)."""
    for d in (os.environ.get("DIOSCOPE_DEMO_DIR"), "/var/tmp", tempfile.gettempdir()):
        if d and os.path.isdir(d) and os.access(d, os.W_OK):
            return d
    return tempfile.gettempdir()

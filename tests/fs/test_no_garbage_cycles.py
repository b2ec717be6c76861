"""A Direct I/O syscall leaves no reference cycle behind: its bio, dio, kiocb and bvec
arrays are freed by reference counting when the syscall returns, not left for Python's cyclic
garbage collector (which would keep every bvec array alive until a collection and cost the
hot path a collection every few dozen syscalls). Checked per profile and engine, for reads
and writes of one page and of 1 MiB, from 4 KiB pages and from a THP."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from dioscope.block.devices import MemDevice
from dioscope.fs.fs_types import OFLAG
from dioscope.fs.modelfs.super import ModelFs
from dioscope.kernel.types import HPAGE_PMD_SIZE
from dioscope.machine import Kernel
from dioscope.mm.mmap import MADV_HUGEPAGE

MIB = 1 << 20


@pytest.fixture
def no_gc() -> Iterator[None]:
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


@pytest.mark.parametrize("engine", ["iomap", "legacy"])
@pytest.mark.parametrize("profile", ["5.9", "5.9-pin", "6.18"])
def test_dio_syscalls_leave_no_cycles(profile: str, engine: str, no_gc: None) -> None:
    k = Kernel("64M", profile)
    dev = k.add_disk(MemDevice(k.pgdat, 16 * MIB))
    fs = k.mount(ModelFs(dev, engine))
    fs.create_file("data", 4 * MIB, bytes(range(256)) * (4 * MIB // 256))
    p = k.spawn()
    fd = p.open("/data", int(OFLAG.O_RDWR | OFLAG.O_DIRECT))
    small = p.mmap(MIB)
    p.touch(small, MIB, write=True)
    thp = p.mmap(HPAGE_PMD_SIZE)
    p.madvise(thp, HPAGE_PMD_SIZE, MADV_HUGEPAGE)
    p.touch(thp, MIB, write=True)
    gc.collect()
    for buf in (small, thp):
        for n in (4096, MIB):
            assert p.pread(fd, buf, n, MIB) == n
            assert p.pwrite(fd, buf, n, 2 * MIB) == n
    assert gc.collect() == 0

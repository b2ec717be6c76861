"""A Hypothesis state machine over one file of the model filesystem, through the syscall layer.

Steps mix buffered and O_DIRECT ``pread``/``pwrite`` (512-byte aligned offsets and lengths,
random bytes, the O_DIRECT buffer page-aligned or 512 bytes into a page), loads and stores
through a ``MAP_SHARED`` and a ``MAP_PRIVATE`` mapping of the file, ``ftruncate`` (grow and
shrink, to any size), ``fallocate`` (allocate, KEEP_SIZE, PUNCH_HOLE), ``fsync``, and ``fork``
(the child reads the file through its inherited descriptors and mappings, then exits or
lingers until a later step).

A reference model is a ``bytearray`` of the file's contents, plus the pages the private
mapping has copied on write (truncation discards the copies past the new EOF page, as
``unmap_mapping_range(..., even_cows=1)`` does; a punched hole keeps them). After every step:

* the file's size is the reference's, and its bytes — the page cache's where a page is
  cached and uptodate, the disk's elsewhere (holes and unwritten blocks as zeros) — are the
  reference's; after ``fsync`` the disk alone holds them;
* pins balance: nr_foll_pin_acquired == nr_foll_pin_released since the start (6.18's legacy
  engine releases pins it acquired uncounted, ``folio_add_pin``, so there only the
  sanitizer's balance is checked), the sanitizer is clean at quiescence, and no WARN or BUG
  was logged.

Every profile and both Direct I/O engines run with modest settings; a bigger run is ``slow``.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from dioscope.block.devices import MemDevice
from dioscope.fs.fs_types import FALLOC
from dioscope.fs.modelfs import ModelFs
from dioscope.machine import Kernel
from dioscope.mm.mmap import MAP_PRIVATE, MAP_SHARED, PROT_READ, PROT_WRITE
from dioscope.mm.page import PG
from dioscope.sanitizer import Sanitizer
from dioscope.syscalls.process import Process

P = 4096
SECTOR = 512
LIMIT = 64 * 1024
"""Every offset and size stays below this (16 pages): steps keep colliding."""
MAX_IO = 16 * 1024
PROFILES = ("5.9", "5.9-pin", "6.18")
ENGINES = ("iomap", "legacy")
KEEP = int(FALLOC.FALLOC_FL_KEEP_SIZE)
PUNCH = int(FALLOC.FALLOC_FL_PUNCH_HOLE)
_UPTODATE = np.uint32(PG.PG_uptodate)
PREFAULT = False
"""Fault a mapping's pages in before a Direct I/O uses them as its buffer (so its GUP needs
no page-cache read). False: GUP faults read file pages under the Direct I/O's plug, which
sleeping on the page flushes (test_dio_items.py::test_gup_fault_reads_under_the_plug)."""

sectors = st.integers(0, LIMIT // SECTOR - 1)
lengths = st.integers(1, MAX_IO // SECTOR)
fractions = st.floats(0, 1, allow_nan=False)


class FsMachine(RuleBasedStateMachine):
    profile = "6.18"
    engine = "iomap"

    def __init__(self) -> None:
        super().__init__()
        self.k = Kernel(mem="64M", profile=self.profile)
        self.pgdat = self.k.pgdat
        self.dev = self.k.add_disk(MemDevice(self.pgdat, "16M"))
        self.fs = self.k.mount(ModelFs(self.dev, dio_engine=self.engine))
        self.rng = np.random.default_rng(0)
        size = 5 * P + 1000
        data = self.random_bytes(size)
        self.ino = self.fs.create_file("f", size, data, holes=[(2 * P, P)])
        self.ref = bytearray(data)
        self.ref[2 * P : 3 * P] = bytes(P)
        self.p = self.k.spawn()
        self.fd = self.p.open("/f", os.O_RDWR)
        self.dfd = self.p.open("/f", os.O_RDWR | os.O_DIRECT)
        self.buf = self.p.mmap(MAX_IO + P)
        self.p.touch(self.buf, MAX_IO + P, write=True)
        rw = PROT_READ | PROT_WRITE
        self.shared = self.p.mmap(LIMIT, rw, MAP_SHARED, fd=self.fd)
        self.private = self.p.mmap(LIMIT, rw, MAP_PRIVATE, fd=self.fd)
        self.cow: dict[int, bytearray] = {}
        """Pages of the private mapping copied on write: index → their bytes."""
        self.children: list[Process] = []
        self.san = Sanitizer(self.pgdat)
        self.pins0 = self.k.vmstat.pins()
        self.synced = False

    def random_bytes(self, n: int) -> bytes:
        return self.rng.integers(0, 256, n, dtype=np.uint8).tobytes()

    # --- the reference ------------------------------------------------------------------
    @property
    def size(self) -> int:
        return len(self.ref)

    def set_size(self, n: int) -> None:
        if n < self.size:
            del self.ref[n:]
            first_gone = (n + P - 1) // P
            self.cow = {i: pg for i, pg in self.cow.items() if i < first_gone}
        else:
            self.ref.extend(bytes(n - self.size))

    def store(self, off: int, data: bytes) -> None:
        if off > self.size:
            self.set_size(off)
        self.ref[off : off + len(data)] = data

    def private_view(self, off: int, n: int) -> bytes:
        out = bytearray()
        for a in range(off, off + n):
            pg = self.cow.get(a // P)
            out.append(pg[a % P] if pg is not None else self.ref[a])
        return bytes(out)

    def within(self, frac: float, nfrac: float) -> tuple[int, int]:
        """A byte range inside [0, size) from two fractions."""
        off = min(int(frac * self.size), self.size - 1)
        n = max(1, int(nfrac * min(self.size - off, MAX_IO)))
        return off, n

    # --- I/O ------------------------------------------------------------------------------
    @rule(direct=st.booleans(), sector=sectors, nsec=lengths, skew=st.booleans())
    def write(self, direct: bool, sector: int, nsec: int, skew: bool) -> None:
        off, n = sector * SECTOR, min(nsec * SECTOR, LIMIT - sector * SECTOR)
        buf = self.buf + (SECTOR if skew else 0)
        data = self.random_bytes(n)
        assert self.p.write_user(buf, data) == n
        assert self.p.pwrite(self.dfd if direct else self.fd, buf, n, off) == n
        self.store(off, data)
        self.synced = False

    @rule(direct=st.booleans(), sector=sectors, nsec=lengths, skew=st.booleans())
    def read(self, direct: bool, sector: int, nsec: int, skew: bool) -> None:
        off, n = sector * SECTOR, nsec * SECTOR
        buf = self.buf + (SECTOR if skew else 0)
        got = self.p.pread(self.dfd if direct else self.fd, buf, n, off)
        want = bytes(self.ref[off : off + n])
        assert got == len(want)
        assert self.p.read_user(buf, got) == want

    # --- the mappings -------------------------------------------------------------------
    @precondition(lambda self: self.size > 0)
    @rule(frac=fractions, nfrac=fractions)
    def store_shared(self, frac: float, nfrac: float) -> None:
        off, n = self.within(frac, nfrac)
        data = self.random_bytes(n)
        assert self.p.write_user(self.shared + off, data) == n
        self.store(off, data)
        self.synced = False

    @precondition(lambda self: self.size > 0)
    @rule(frac=fractions, nfrac=fractions)
    def load_shared(self, frac: float, nfrac: float) -> None:
        off, n = self.within(frac, nfrac)
        assert self.p.read_user(self.shared + off, n) == self.ref[off : off + n]

    @precondition(lambda self: self.size > 0)
    @rule(frac=fractions, nfrac=fractions)
    def store_private(self, frac: float, nfrac: float) -> None:
        off, n = self.within(frac, nfrac)
        data = self.random_bytes(n)
        assert self.p.write_user(self.private + off, data) == n
        self.copy_on_write(off, data)

    @precondition(lambda self: self.size > 0)
    @rule(frac=fractions, nfrac=fractions)
    def load_private(self, frac: float, nfrac: float) -> None:
        off, n = self.within(frac, nfrac)
        assert self.p.read_user(self.private + off, n) == self.private_view(off, n)

    def two_ranges(self, a: float, b: float, nsec: int) -> tuple[int, int, int] | None:
        """Two 512-aligned ranges of one length inside [0, size) on disjoint pages, or
        None: (first offset, second offset, length)."""
        n = min(nsec * SECTOR, self.size // 2 // SECTOR * SECTOR)
        if n <= 0:
            return None
        top = (self.size - n) // SECTOR
        x, y = int(a * top) * SECTOR, int(b * top) * SECTOR
        if (x + n - 1) // P >= y // P and (y + n - 1) // P >= x // P:
            return None
        return x, y, n

    def mapping_of(self, shared: bool) -> int:
        return self.shared if shared else self.private

    def prefault(self, shared: bool, off: int, n: int) -> None:
        """With :data:`PREFAULT`, load from the mapping's pages first."""
        if PREFAULT:
            self.p.touch(self.mapping_of(shared) + off, n)

    @precondition(lambda self: self.size >= 2 * SECTOR)
    @rule(shared=st.booleans(), a=fractions, b=fractions, nsec=lengths)
    def dio_read_into_mapping(self, shared: bool, a: float, b: float, nsec: int) -> None:
        """O_DIRECT read of file range ``a`` into the file's own mapping at ``b``: shared,
        the pinned page-cache pages are dirtied at completion (the file changes at ``b``);
        private, GUP breaks COW first (copies of the file's pages get the bytes)."""
        r = self.two_ranges(a, b, nsec)
        if r is None:
            return
        src, dst, n = r
        data = bytes(self.ref[src : src + n])
        self.prefault(shared, dst, n)
        assert self.p.pread(self.dfd, self.mapping_of(shared) + dst, n, src) == n
        if shared:
            self.store(dst, data)
            self.synced = False
        else:
            self.copy_on_write(dst, data)

    @precondition(lambda self: self.size >= 2 * SECTOR)
    @rule(shared=st.booleans(), a=fractions, b=fractions, nsec=lengths)
    def dio_write_from_mapping(self, shared: bool, a: float, b: float, nsec: int) -> None:
        """O_DIRECT write to file range ``a`` whose source is the file's own mapping at
        ``b`` (pinned page-cache pages, or the private copies)."""
        r = self.two_ranges(a, b, nsec)
        if r is None:
            return
        dst, src, n = r
        data = bytes(self.ref[src : src + n]) if shared else self.private_view(src, n)
        self.prefault(shared, src, n)
        assert self.p.pwrite(self.dfd, self.mapping_of(shared) + src, n, dst) == n
        self.store(dst, data)
        self.synced = False

    def copy_on_write(self, off: int, data: bytes) -> None:
        n = len(data)
        for i in range(off // P, (off + n - 1) // P + 1):
            if i not in self.cow:  # the copy: the file's page, zeros past EOF
                page = bytearray(self.ref[i * P : (i + 1) * P])
                self.cow[i] = page + bytes(P - len(page))
        for j, a in enumerate(range(off, off + n)):
            self.cow[a // P][a % P] = data[j]

    # --- size and space -----------------------------------------------------------------------
    @rule(size=st.one_of(st.integers(0, LIMIT), st.integers(0, LIMIT // P).map(lambda x: x * P)))
    def truncate(self, size: int) -> None:
        self.p.ftruncate(self.fd, size)
        self.set_size(size)
        self.synced = False

    @rule(mode=st.sampled_from([0, KEEP, PUNCH | KEEP]), sector=sectors, nsec=lengths)
    def fallocate(self, mode: int, sector: int, nsec: int) -> None:
        off, n = sector * SECTOR, min(nsec * SECTOR, LIMIT - sector * SECTOR)
        self.p.fallocate(self.fd, mode, off, n)
        if mode & PUNCH:
            end = min(off + n, self.size)
            if off < end:
                self.ref[off:end] = bytes(end - off)
        elif not mode & KEEP and off + n > self.size:
            self.set_size(off + n)
        self.synced = False

    @rule(direct=st.booleans())
    def fsync(self, direct: bool) -> None:
        self.p.fsync(self.dfd if direct else self.fd)
        self.synced = True

    # --- processes ----------------------------------------------------------------------------
    @rule(direct=st.booleans(), linger=st.booleans())
    def fork(self, direct: bool, linger: bool) -> None:
        child = self.k.fork(self.p)
        size = self.size
        if size:
            assert child.read_user(self.shared, size) == self.ref
            assert child.read_user(self.private, size) == self.private_view(0, size)
        n = (size + P - 1) // P * P + P
        cbuf = child.mmap(n)
        got = child.pread(self.dfd if direct else self.fd, cbuf, n, 0)
        assert got == size
        assert child.read_user(cbuf, got) == self.ref
        if linger and len(self.children) < 2:
            self.children.append(child)
        else:
            child.exit()

    @precondition(lambda self: bool(self.children))
    @rule()
    def reap(self) -> None:
        self.children.pop(0).exit()

    # --- invariants ---------------------------------------------------------------------------
    def file_view(self) -> bytes:
        """The newest bytes of the file: a cached uptodate page's, else the disk's."""
        out = bytearray()
        pages = self.pgdat.pages
        for i in range((self.ino.i_size + P - 1) // P):
            pfn = self.ino.i_mapping.lookup(i)
            if pfn >= 0 and pages.flags[pfn] & _UPTODATE:
                out += self.pgdat.mem.frames[pfn].tobytes()
            else:
                out += self.disk_page(i)
        return bytes(out[: self.ino.i_size])

    def disk_page(self, i: int) -> bytes:
        pblk, unw = self.ino.ext.lookup(i, 1)
        if pblk[0] < 0 or unw[0]:
            return bytes(P)
        return self.dev.read_disk(int(pblk[0]) * P, P)

    @invariant()
    def contents_match(self) -> None:
        assert self.ino.i_size == self.size
        assert self.file_view() == self.ref
        if self.synced:
            disk = b"".join(self.disk_page(i) for i in range((self.size + P - 1) // P))
            assert disk[: self.size] == self.ref

    @invariant()
    def pins_balance(self) -> None:
        self.san.check_quiescent()
        self.san.assert_clean()
        assert not self.k.events.events, self.k.events.events
        if not (self.profile == "6.18" and self.engine == "legacy"):
            a, r = self.k.vmstat.pins()
            assert a - self.pins0[0] == r - self.pins0[1]

    def teardown(self) -> None:
        for child in self.children:
            child.exit()
        self.p.exit()
        self.san.check_quiescent()
        self.san.assert_clean()
        self.san.detach()


def machine(profile: str, engine: str) -> Any:
    return type(f"FsMachine_{profile}_{engine}", (FsMachine,),
                {"profile": profile, "engine": engine})


def run(profile: str, engine: str, examples: int, steps: int) -> None:
    m = machine(profile, engine)
    m.TestCase.settings = settings(
        max_examples=examples, stateful_step_count=steps, deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    m.TestCase().runTest()


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("profile", PROFILES)
def test_fs_state_machine(profile: str, engine: str) -> None:
    run(profile, engine, 25, 20)


@pytest.mark.slow
@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("profile", PROFILES)
def test_fs_state_machine_long(profile: str, engine: str) -> None:
    run(profile, engine, 150, 40)

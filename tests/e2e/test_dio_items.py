"""Spec §11 items 24-38 and the issue's error table, end to end through the syscall layer.

Each case builds a model machine (``Kernel`` + a 256 MiB ``MemDevice`` + ``ModelFs`` with the
iomap or the legacy Direct I/O engine; ``raw`` opens ``/dev/vda`` itself and addresses the
same file's blocks on the device), runs one syscall from a user process and checks, exactly:

* the return value or the errno (``OSError``, as ``os`` raises it);
* the nr_foll_pin_acquired / nr_foll_pin_released deltas (``k.vmstat.pins()``);
* where the item states it, the buffer pages' refcount (and the THP head's pincount) while
  the I/O is in flight, read at every ``block_rq_issue`` tracepoint, and the sanitizer's
  shadow pin count of the same pages;
* the bytes: the buffer against the file, or the file (page cache and disk) against the
  buffer;
* that nothing leaked: a :class:`~dioscope.sanitizer.Sanitizer` attached before the call is
  clean and quiescent afterwards, and every watched page's refcount and pincount (the
  buffer's pages, the zero page) is back where it was. Acquired equals released, except for
  6.18's legacy engine, whose ``folio_add_pin`` pins are released (counted) but never
  acquired (counted) — spec §2.4 and item 33.

Numbers are the spec's where it gives them, the 6.18.44 host's where it measured them
(docs/host-observations.md, docs/research-6.18-bio.md: "the host wins for 6.18"), and the
kernel source's (as the docstrings derive them) elsewhere.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest

from dioscope.block.blk_map import blk_execute_rq, blk_rq_map_user_iov, blk_rq_unmap_user
from dioscope.block.blk_settings import QueueLimits
from dioscope.block.blk_types import REQ_OP
from dioscope.block.devices import MemDevice
from dioscope.fs.modelfs import ModelFs
from dioscope.fs.pipe import get_pipe_info, pipe_fcntl_setpipe_sz, sys_pipe2
from dioscope.fs.read_write import vfs_read_write
from dioscope.fs.splice import sys_splice
from dioscope.lib.iov_iter import ITER_DEST, iov_iter_init
from dioscope.machine import Kernel
from dioscope.mm.mmap import (
    MADV_HUGEPAGE,
    MAP_ANONYMOUS,
    MAP_FIXED,
    MAP_PRIVATE,
    MAP_SHARED,
    PROT_NONE,
    PROT_READ,
    PROT_WRITE,
)
from dioscope.mm.page_alloc import ZERO_PFN
from dioscope.sanitizer import Sanitizer

P = 4096
KiB, MiB = 1 << 10, 1 << 20
HPAGE = 2 * MiB
PROFILES = ("5.9", "5.9-pin", "6.18")
FS_ENGINES = ("iomap", "legacy")
ALL_ENGINES = ("iomap", "legacy", "raw")
RDWR_DIRECT = os.O_RDWR | os.O_DIRECT
KERNEL_ADDR = 0xFFFF888000000000

Pins = tuple[int, int]


@dataclass
class Issue:
    """One ``block_rq_issue``: the request's disk range and the watched pages' state."""

    disk_off: int
    nbytes: int
    rwbs: str
    ref: np.ndarray
    """refcount delta of each watched page (in watch order) against the start."""
    pincount: np.ndarray
    shadow_pins: np.ndarray
    """The sanitizer's outstanding pins on each watched page's folio."""


@dataclass
class Out:
    """One syscall: its return (or -errno) and pin deltas, and what was in flight."""

    ret: int
    pins: Pins
    issued: list[Issue] = field(default_factory=list)


class Rig:
    """A machine, a 256 MiB disk, a model filesystem, one user process."""

    def __init__(self, profile: str, engine: str, limits: QueueLimits | None = None) -> None:
        self.profile, self.engine = profile, engine
        self.k = Kernel(mem="256M", profile=profile)
        self.pgdat = self.k.pgdat
        kw: dict[str, Any] = {"limits": limits} if limits is not None else {}
        self.dev = self.k.add_disk(MemDevice(self.pgdat, "256M", **kw))
        self.fs = self.k.mount(
            ModelFs(self.dev, dio_engine="legacy" if engine == "legacy" else "iomap"))
        self.p = self.k.spawn()
        self.rng = np.random.default_rng(24)
        self.san: Sanitizer | None = None
        self.watch = np.zeros(0, np.int64)

    # --- the file ----------------------------------------------------------------------
    def file(self, size: int, holes: Sequence[tuple[int, int]] = (),
             unwritten: Sequence[tuple[int, int]] = (), name: str = "f") -> bytes:
        """Create ``name`` with random bytes (cached, clean, fsynced). Return: what it
        reads as (holes and unwritten ranges are zeros)."""
        data = self.rng.integers(0, 256, size, dtype=np.uint8).tobytes()
        self.ino = self.fs.create_file(name, size, data, holes=holes, unwritten=unwritten)
        want = bytearray(data)
        for off, n in (*holes, *unwritten):
            want[off : off + n] = bytes(len(want[off : off + n]))
        self.want = bytes(want)
        return self.want

    def open(self, flags: int = RDWR_DIRECT, name: str = "f") -> int:
        return self.p.open("/dev/vda" if self.engine == "raw" else "/" + name, flags)

    def pos(self, off: int) -> int:
        """The position of file offset ``off`` for this engine: on the raw device, the
        file's first block's disk offset plus ``off``."""
        if self.engine != "raw":
            return off
        return self.ino.ext.extents()[0][1] * P + off

    def file_offset(self, disk_off: int) -> int:
        """The file offset a disk byte holds (the file's extents)."""
        for lblk, pblk, n, _unw in self.ino.ext.extents():
            if pblk * P <= disk_off < (pblk + n) * P:
                return lblk * P + disk_off - pblk * P
        raise AssertionError(f"disk offset {disk_off} is not in the file")

    def disk_bytes(self, off: int, n: int) -> bytes:
        """File bytes [off, off+n) as the disk holds them (allocated, written blocks)."""
        out = bytearray()
        for a in range(off, off + n, P):
            pblk, unw = self.ino.ext.lookup(a // P, 1)
            if pblk[0] < 0 or unw[0]:
                out += bytes(P)
            else:
                out += self.dev.read_disk(int(pblk[0]) * P, P)
        return bytes(out[: n])

    def read_back(self, off: int, n: int) -> bytes:
        """The file's bytes through a buffered read (page cache, or the disk)."""
        fd = self.p.open("/f", os.O_RDONLY)
        b = self.p.mmap(max(n, P))
        got = self.p.pread(fd, b, n, off)
        data = self.p.read_user(b, got)
        self.p.munmap(b, max(n, P))
        self.p.close(fd)
        return data

    # --- user memory -------------------------------------------------------------------
    def buf(self, size: int, offset: int = 0, touch: bool = True, fill: int = 0xEE,
            thp: bool = False) -> int:
        """A private anonymous buffer; ``touch`` faults it in filled with ``fill``; ``thp``
        puts it on a 2 MiB boundary with MADV_HUGEPAGE. Return: address + ``offset``."""
        length = (size + offset + P - 1) // P * P
        p = self.p
        if thp:
            length = (length + HPAGE - 1) // HPAGE * HPAGE
            resv = p.mmap(length + HPAGE, PROT_NONE)
            addr = (resv + HPAGE - 1) // HPAGE * HPAGE
            p.mmap(length, addr=addr, flags=MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED)
            p.madvise(addr, length, MADV_HUGEPAGE)
        else:
            addr = p.mmap(length)
        if touch:
            assert p.write_user(addr, bytes([fill]) * length) == length
        return addr + offset

    def unmapped(self, n: int) -> int:
        """An address range that was mapped and is not any more."""
        a = self.p.mmap(n)
        self.p.munmap(a, n)
        return a

    def pfns(self, addr: int, n: int) -> np.ndarray:
        """The pfn each page of [addr, addr+n) maps (-1: none)."""
        out = []
        for a in range(addr & ~(P - 1), addr + n, P):
            vma = self.p.mm.vma_lookup(a)
            out.append(int(vma.pt_pfn[vma.slot(a)]) if vma is not None else -1)
        return np.array(out, np.int64)

    # --- measuring ---------------------------------------------------------------------
    def start(self, watch: Sequence[int] | np.ndarray = ()) -> None:
        """Attach a sanitizer; snapshot counters and the watched pages (in order; the zero
        page is watched too)."""
        self.san = Sanitizer(self.pgdat)
        self.watch = np.array([*np.asarray(watch, np.int64).tolist(), ZERO_PFN], np.int64)
        pages = self.pgdat.pages
        self.ref0 = pages.refcount[self.watch].astype(np.int64)
        self.pinc0 = pages.pincount[self.watch].astype(np.int64)
        self.pins0 = self.k.vmstat.pins()

    @property
    def zero(self) -> int:
        """Index of the zero page in the watch arrays."""
        return len(self.watch) - 1

    def call(self, fn: Callable[..., Any], *args: Any) -> Out:
        """Run one syscall; an OSError becomes -errno."""
        issued: list[Issue] = []
        pages = self.pgdat.pages
        san = self.san
        heads = pages.head[self.watch]

        def tp(name: str, f: dict[str, object]) -> None:
            if name == "block_rq_issue":
                shadow = san.pins[heads].copy() if san is not None else np.zeros(0)
                issued.append(Issue(int(f["sector"]) * 512, int(f["bytes"]),  # type: ignore[call-overload]
                                    str(f["rwbs"]),
                                    pages.refcount[self.watch] - self.ref0,
                                    pages.pincount[self.watch] - self.pinc0, shadow))

        self.pgdat.hooks.tracepoints.append(tp)
        a0 = self.k.vmstat.pins()
        try:
            ret = fn(*args)
        except OSError as e:
            ret = -(e.errno or 0)
        finally:
            self.pgdat.hooks.tracepoints.remove(tp)
        a1 = self.k.vmstat.pins()
        return Out(int(ret), (a1[0] - a0[0], a1[1] - a0[1]), issued)

    def done(self) -> Pins:
        """Nothing leaked: the sanitizer is clean at quiescence and every watched page's
        refcount and pincount is back. Return: the pin deltas since :meth:`start`."""
        assert self.san is not None
        self.san.check_quiescent()
        self.san.assert_clean()
        self.san.detach()
        pages = self.pgdat.pages
        changed = np.flatnonzero(pages.refcount[self.watch] != self.ref0)
        assert not len(changed), f"refcounts changed: pfns {self.watch[changed][:8].tolist()}"
        assert (pages.pincount[self.watch] == self.pinc0).all()
        assert not self.k.events.events, self.k.events.events
        a, r = self.k.vmstat.pins()
        total = (a - self.pins0[0], r - self.pins0[1])
        if not (self.profile == "6.18" and self.engine == "legacy"):
            assert total[0] == total[1], f"pins not balanced: {total}"
        return total

    def in_flight(self, out: Out, buf: int, pos: int) -> list[np.ndarray]:
        """For each issued request of a single-iovec read or write at ``pos`` from
        ``buf``: the refcount deltas of the buffer pages it covers."""
        first = buf & ~(P - 1)
        seen = []
        for iss in out.issued:
            fo = self.file_offset(iss.disk_off) if self.engine != "raw" else \
                iss.disk_off - self.pos(0)
            a = buf + fo - (pos if self.engine != "raw" else pos - self.pos(0))
            lo, hi = (a - first) // P, (a + iss.nbytes - 1 - first) // P + 1
            seen.append(iss.ref[lo:hi])
        return seen


def oserr(fn: Callable[..., Any], *args: Any) -> int:
    with pytest.raises(OSError) as exc:
        fn(*args)
    return int(exc.value.errno or 0)


@pytest.fixture(params=PROFILES)
def profile(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def cases(engines: Sequence[str], xfail: dict[tuple[str, str], str] | None = None,
          profiles: Sequence[str] = PROFILES) -> list[Any]:
    """(profile, engine) parameters; the pairs in ``xfail`` are strict xfails (model bugs)
    with the given reason."""
    out = []
    for profile in profiles:
        for engine in engines:
            reason = (xfail or {}).get((profile, engine))
            marks = [pytest.mark.xfail(strict=True, reason=reason)] if reason else []
            out.append(pytest.param(profile, engine, marks=marks, id=f"{profile}-{engine}"))
    return out


def by(table: dict[str, dict[str, Any]], engine: str, profile: str) -> Any:
    return table[engine][profile]


# --- item 24 (and 33): a 1 MiB aligned read ----------------------------------------------------
READ_1M = {
    "iomap": {"5.9": (0, 0), "5.9-pin": (256, 256), "6.18": (256, 256)},
    "raw": {"5.9": (0, 0), "5.9-pin": (256, 256), "6.18": (256, 256)},
    # item 33: three references per page (queue, "in dio", bio); 6.18 counts only the first
    # acquisition (folio_add_pin is not counted) but all three releases.
    "legacy": {"5.9": (0, 0), "5.9-pin": (768, 768), "6.18": (256, 768)},
}


@pytest.mark.parametrize("engine", ALL_ENGINES)
def test_item24_33_aligned_1mib_read(profile: str, engine: str) -> None:
    """Items 24 and 33: the pins per engine; while each request is issued every buffer page
    it covers holds base + 1 (5.9, FOLL_GET) or base + 1024 (one pin) — in the legacy engine
    too, whose queue and "in dio" references are gone by then — and the sanitizer's shadow
    sees exactly one pin on it (none under 5.9)."""
    rig = Rig(profile, engine)
    want = rig.file(4 * MiB)
    fd = rig.open()
    b = rig.buf(MiB)
    rig.start(rig.pfns(b, MiB))
    out = rig.call(rig.p.pread, fd, b, MiB, rig.pos(0))
    assert out.ret == MiB
    assert out.pins == by(READ_1M, engine, profile)
    assert rig.p.read_user(b, MiB) == want[:MiB]
    unit = 1 if profile == "5.9" else 1024
    seen = rig.in_flight(out, b, rig.pos(0))
    assert sum(len(s) for s in seen) >= 256 and len(out.issued) == 9  # 255-sector requests
    assert all((s == unit).all() for s in seen)
    assert {int(x) for iss in out.issued for x in iss.shadow_pins[:-1]} == (
        {0} if profile == "5.9" else {1})
    assert all(int(iss.ref[rig.zero]) == 0 for iss in out.issued)
    assert rig.done() == by(READ_1M, engine, profile)


# --- item 25: the same read with the buffer 512 bytes into a page ---------------------------------
READ_1M_512 = {
    "iomap": {"5.9": (0, 0), "5.9-pin": (257, 257), "6.18": (257, 257)},
    "raw": {"5.9": (0, 0), "5.9-pin": (257, 257), "6.18": (257, 257)},
    "legacy": {"5.9": (0, 0), "5.9-pin": (771, 771), "6.18": (257, 771)},
}


@pytest.mark.parametrize("engine", ALL_ENGINES)
def test_item25_buffer_offset_512(profile: str, engine: str) -> None:
    """Item 25: 257 pages touched, 257 pins (legacy: 3 x 257; it drops to 512-byte blocks
    because the buffer is not fs-block aligned, which changes nothing per page)."""
    rig = Rig(profile, engine)
    want = rig.file(4 * MiB)
    fd = rig.open()
    b = rig.buf(MiB, offset=512)
    rig.start(rig.pfns(b, MiB))
    out = rig.call(rig.p.pread, fd, b, MiB, rig.pos(0))
    assert (out.ret, out.pins) == (MiB, by(READ_1M_512, engine, profile))
    assert rig.p.read_user(b, MiB) == want[:MiB]
    assert rig.p.read_user(b - 512, 512) == b"\xee" * 512
    assert rig.p.read_user(b + MiB, P - 512) == b"\xee" * (P - 512)
    unit = 1 if profile == "5.9" else 1024
    assert all((s == unit).all() for s in rig.in_flight(out, b, rig.pos(0)))
    assert rig.done() == by(READ_1M_512, engine, profile)


# --- item 26: a THP buffer ------------------------------------------------------------------------
@pytest.mark.parametrize("engine", ALL_ENGINES)
@pytest.mark.parametrize("size", [MiB, 2 * MiB])
def test_item26_thp_buffer(profile: str, engine: str, size: int) -> None:
    """Item 26: a 2 MiB-aligned THP buffer (one order-9 folio): n pins recorded as +n on the
    head's pincount and +n on its refcount (an exact pincount, not the 1024 bias); 5.9 takes
    n plain references. The legacy engine's bio reference is one pin per subpage in flight
    too (its acquisitions: 3 per subpage, 6.18 counting one)."""
    rig = Rig(profile, engine)
    want = rig.file(4 * MiB)
    fd = rig.open()
    b = rig.buf(size, thp=True)
    head = int(rig.pgdat.pages.head[rig.pfns(b, P)[0]])
    assert int(rig.pgdat.pages.order[head]) == 9
    assert (rig.pfns(b, size) == np.arange(head, head + size // P)).all()
    rig.start([head])
    out = rig.call(rig.p.pread, fd, b, size, rig.pos(0))
    n = size // P
    per_page = 3 if engine == "legacy" else 1
    pins = {"5.9": (0, 0), "5.9-pin": (n * per_page, n * per_page),
            "6.18": (n, n * per_page)}[profile]
    assert (out.ret, out.pins) == (size, pins)
    assert rig.p.read_user(b, size) == want[:size]
    assert out.issued
    for iss in out.issued:
        assert int(iss.ref[0]) == n  # +n, never +n * 1024
        assert int(iss.pincount[0]) == (0 if profile == "5.9" else n)
    assert rig.done() == pins


# --- item 27: a write from a never-touched buffer -------------------------------------------------
UNTOUCHED_WRITE = {
    "iomap": {"5.9": (0, 0), "5.9-pin": (256, 256), "6.18": (0, 0)},
    "raw": {"5.9": (0, 0), "5.9-pin": (256, 256), "6.18": (0, 0)},
    "legacy": {"5.9": (0, 0), "5.9-pin": (768, 768), "6.18": (0, 0)},
}
ZERO_PAGE_IN_FLIGHT = {"5.9": 256, "5.9-pin": 256 * 1024, "6.18": 0}


@pytest.mark.parametrize("engine", ALL_ENGINES)
def test_item27_untouched_buffer_write(profile: str, engine: str) -> None:
    """Item 27: every page of the source is the shared zero page. 5.9-pin pins it 256 times
    (its refcount +256*1024 while in flight); 6.18 never pins it (0/0); 5.9 takes plain
    references (+256). The file becomes zeros; the buffer stays unpopulated."""
    rig = Rig(profile, engine)
    rig.file(4 * MiB)
    fd = rig.open()
    b = rig.buf(MiB, touch=False)
    rig.start()
    out = rig.call(rig.p.pwrite, fd, b, MiB, rig.pos(0))
    assert (out.ret, out.pins) == (MiB, by(UNTOUCHED_WRITE, engine, profile))
    assert out.issued
    for iss in out.issued:
        assert int(iss.ref[rig.zero]) == ZERO_PAGE_IN_FLIGHT[profile]
    assert (rig.pfns(b, MiB) == ZERO_PFN).all()
    assert rig.disk_bytes(0, MiB) == bytes(MiB)
    assert rig.done() == by(UNTOUCHED_WRITE, engine, profile)


UNTOUCHED_THP_WRITE = {
    "iomap": {"5.9": (0, 0), "5.9-pin": (256, 256), "6.18": (256, 256)},
    "raw": {"5.9": (0, 0), "5.9-pin": (256, 256), "6.18": (256, 256)},
    "legacy": {"5.9": (0, 0), "5.9-pin": (768, 768), "6.18": (256, 768)},
}


@pytest.mark.parametrize("engine", ALL_ENGINES)
def test_item27_untouched_thp_buffer_write_pins_the_huge_zero_folio(profile: str,
                                                                    engine: str) -> None:
    """Item 27's exemption is the small zero page's only: a never-touched 2 MiB-aligned
    MADV_HUGEPAGE source maps the huge zero folio, which 6.18 pins like any large folio —
    +256 on its pincount and refcount while in flight, [256,256] (host-observations item
    10; the spec says [0,0] for 6.5+)."""
    rig = Rig(profile, engine)
    rig.file(4 * MiB)
    fd = rig.open()
    b = rig.buf(MiB, touch=False, thp=True)
    rig.p.touch(b, 1)  # a read fault maps the huge zero folio (the model allocates it now)
    hz = rig.pgdat.huge_zero_pfn
    assert hz >= 0 and (rig.pfns(b, MiB) == np.arange(hz, hz + 256)).all()
    rig.start([hz])
    out = rig.call(rig.p.pwrite, fd, b, MiB, rig.pos(0))
    assert (out.ret, out.pins) == (MiB, by(UNTOUCHED_THP_WRITE, engine, profile))
    assert out.issued
    for iss in out.issued:
        assert int(iss.ref[0]) == 256
        assert int(iss.pincount[0]) == (0 if profile == "5.9" else 256)
    assert rig.disk_bytes(0, MiB) == bytes(MiB)
    assert rig.done() == by(UNTOUCHED_THP_WRITE, engine, profile)


# --- item 28: a read of a hole --------------------------------------------------------------------
@pytest.mark.parametrize("engine", FS_ENGINES)
def test_item28_hole_read(profile: str, engine: str) -> None:
    """Item 28: 1 MiB of zeros and no I/O. iomap copies zeros without pinning (0/0 in every
    profile); the legacy engine zeroes the blocks inside the user pages it took from its
    page queue (spec §8.3): one reference per page."""
    rig = Rig(profile, engine)
    rig.file(2 * MiB, holes=[(0, 2 * MiB)])
    fd = rig.open()
    b = rig.buf(MiB)
    rig.start(rig.pfns(b, MiB))
    out = rig.call(rig.p.pread, fd, b, MiB, 0)
    pins = (0, 0) if engine == "iomap" or profile == "5.9" else (256, 256)
    assert (out.ret, out.pins, out.issued) == (MiB, pins, [])
    assert rig.p.read_user(b, MiB) == bytes(MiB)
    assert rig.done() == pins


@pytest.mark.parametrize("engine", FS_ENGINES)
def test_item28_unwritten_read(profile: str, engine: str) -> None:
    """Unwritten (fallocated) blocks read as zeros, like a hole."""
    rig = Rig(profile, engine)
    rig.file(MiB, unwritten=[(0, MiB)])
    fd = rig.open()
    b = rig.buf(256 * KiB)
    rig.start(rig.pfns(b, 256 * KiB))
    out = rig.call(rig.p.pread, fd, b, 256 * KiB, 0)
    pins = (0, 0) if engine == "iomap" or profile == "5.9" else (64, 64)
    assert (out.ret, out.pins, out.issued) == (256 * KiB, pins, [])
    assert rig.p.read_user(b, 256 * KiB) == bytes(256 * KiB)
    assert rig.done() == pins


# --- item 29: a read past EOF ---------------------------------------------------------------------
SHORT_FILE = {
    "iomap": {"5.9": (0, 0), "5.9-pin": (1, 1), "6.18": (1, 1)},
    # page 0: three references; page 1 came with the same page-queue refill and goes back
    # when the walk meets EOF.
    "legacy": {"5.9": (0, 0), "5.9-pin": (4, 4), "6.18": (2, 4)},
}


@pytest.mark.parametrize("engine", FS_ENGINES)
def test_item29_read_8192_from_1000_byte_file(profile: str, engine: str) -> None:
    """Item 29: 8192 bytes at 0 of a 1000-byte file return 1000; the whole first block is
    read, so buffer bytes 1000..4095 are the block's zeros (host: pins [1,1])."""
    rig = Rig(profile, engine)
    want = rig.file(1000)
    fd = rig.open()
    b = rig.buf(8192)
    rig.start(rig.pfns(b, 8192))
    out = rig.call(rig.p.pread, fd, b, 8192, 0)
    assert (out.ret, out.pins) == (1000, by(SHORT_FILE, engine, profile))
    got = rig.p.read_user(b, 8192)
    assert got[:1000] == want and got[1000:P] == bytes(P - 1000)
    assert rig.done() == by(SHORT_FILE, engine, profile)


@pytest.mark.parametrize("engine", FS_ENGINES)
def test_item29_buffer_page_past_the_last_block(profile: str, engine: str) -> None:
    """The second buffer page lies wholly past the file's last block: 5.9's iomap extent
    loop stops at i_size and never touches it (spec §7.1), and so does the legacy engine
    (it meets EOF and stops; 6.18 has no host to say otherwise); 6.18's iomap zero-fills it
    (host: every byte of the request past i_size is zeroed)."""
    rig = Rig(profile, engine)
    rig.file(1000)
    fd = rig.open()
    b = rig.buf(8192)
    rig.start(rig.pfns(b, 8192))
    assert rig.call(rig.p.pread, fd, b, 8192, 0).ret == 1000
    zeroed = profile == "6.18" and engine == "iomap"
    assert rig.p.read_user(b + P, P) == (bytes(P) if zeroed else b"\xee" * P)
    rig.done()


# --- item 30: misaligned reads at, past and below EOF -------------------------------------------
@pytest.mark.parametrize("engine", FS_ENGINES)
@pytest.mark.parametrize(("pos", "boff", "n"), [
    (8192, 1, 100),  # at EOF, everything misaligned
    (8192, 0, 512),
    (10000, 0, 4096),  # past EOF, misaligned position
    (9000, 3, 7),
])
def test_item30_misaligned_read_at_or_past_eof_is_0(profile: str, engine: str, pos: int,
                                                    boff: int, n: int) -> None:
    """Item 30 / §8.1: the EOF shortcut comes before every alignment check: 0, nothing
    pinned, the buffer untouched."""
    rig = Rig(profile, engine)
    rig.file(8192)
    fd = rig.open()
    b = rig.buf(2 * P, offset=boff)
    rig.start(rig.pfns(b, P))
    out = rig.call(rig.p.pread, fd, b, n, pos)
    assert (out.ret, out.pins, out.issued) == (0, (0, 0), [])
    assert rig.p.read_user(b, n) == b"\xee" * n
    assert rig.done() == (0, 0)


def test_item30_raw_read_at_device_end_is_0(profile: str) -> None:
    """The raw device's EOF is its size: a misaligned read there is 0 as well."""
    rig = Rig(profile, "raw")
    fd = rig.open()
    b = rig.buf(2 * P, offset=1)
    rig.start(rig.pfns(b, P))
    out = rig.call(rig.p.pread, fd, b, 100, 256 * MiB)
    assert (out.ret, out.pins) == (0, (0, 0))
    assert rig.done() == (0, 0)


EINVAL = -errno.EINVAL
# (file position, buffer offset in its page, length) → result and pins per engine and profile.
# 5.9 (both profiles) checks file position, length and every segment's address against the
# logical block size before pinning anything (iomap per mapped extent, legacy and the raw
# device up front). 6.18 checks position and length only (iomap per extent, the raw device
# for the whole request) and the memory at submission, after pinning: a single in-page bvec
# takes the fast path and is never checked; anything else with an offset or length that is
# not a multiple of dma_alignment+1 (512) fails with every page of the bio pinned, then
# unpinned. The legacy engine keeps its up-front check in 6.18 (research §7).
MISALIGNED = [
    ((100, 0, 4096), "pos"),
    ((513, 0, 512), "pos"),
    ((0, 0, 1000), "len"),
    ((0, 1, 512), "mem-one-page"),
    ((0, 100, 1024), "mem-one-page"),
    ((0, 256, 4096), "mem-two-pages"),
    ((0, 3585, 512), "mem-two-pages"),
]


def misaligned_expect(kind: str, profile: str, engine: str, n: int) -> tuple[int, Pins]:
    if profile != "6.18" or engine == "legacy" or kind in ("pos", "len"):
        return EINVAL, (0, 0)
    if kind == "mem-one-page":
        return n, (1, 1)
    return EINVAL, (2, 2)


@pytest.mark.parametrize("engine", ALL_ENGINES)
@pytest.mark.parametrize(("args", "kind"), MISALIGNED, ids=[k + str(a) for a, k in MISALIGNED])
def test_item30_misaligned_read_below_eof(profile: str, engine: str, args: tuple[int, int, int],
                                          kind: str) -> None:
    """Item 30 below EOF, per profile and engine (host rows 1-6, 42-43 for 6.18)."""
    pos, boff, n = args
    rig = Rig(profile, engine)
    want = rig.file(MiB)
    fd = rig.open()
    b = rig.buf(2 * P, offset=boff)
    rig.start(rig.pfns(b, n))
    out = rig.call(rig.p.pread, fd, b, n, rig.pos(pos))
    ret, pins = misaligned_expect(kind, profile, engine, n)
    assert (out.ret, out.pins) == (ret, pins)
    got = rig.p.read_user(b, n)
    if ret > 0:
        assert got == want[pos : pos + n]
    else:
        assert got == b"\xee" * n and out.issued == []  # nothing reached the device
    assert rig.done() == pins


@pytest.mark.parametrize("engine", FS_ENGINES)
def test_item30_hole_reads_have_no_alignment_check(profile: str, engine: str) -> None:
    """iomap checks alignment only where it builds bios, so a misaligned read that lies
    wholly in a hole is zero-filled without pins in every profile (5.9's hole actor, 6.18:
    host-observations item 9 — the spec's summary in §8.1/item 30 says EINVAL); the legacy
    engine checks up front and refuses it."""
    rig = Rig(profile, engine)
    rig.file(16 * KiB, holes=[(0, 16 * KiB)])
    fd = rig.open()
    b = rig.buf(3 * P, offset=1)
    rig.start(rig.pfns(b, 8192))
    out = rig.call(rig.p.pread, fd, b, 8192, 0)
    if engine == "iomap":
        assert (out.ret, out.pins) == (8192, (0, 0))
        assert rig.p.read_user(b, 8192) == bytes(8192)
    else:
        assert (out.ret, out.pins) == (EINVAL, (0, 0))
        assert rig.p.read_user(b, 8192) == b"\xee" * 8192
    assert rig.done() == (0, 0)


@pytest.mark.parametrize("engine", FS_ENGINES)
def test_item30_ragged_end_past_the_last_block(profile: str, engine: str) -> None:
    """A misaligned total length whose ragged end lies past the last block: 5.9's iomap
    tests the whole remaining iterator in its bio actor (§7.1) and the legacy engine checks
    up front: EINVAL [0,0]; 6.18's iomap tests each mapped extent's own length, so 5000
    bytes of a 1000-byte file return 1000 [1,1] (host-observations item 8)."""
    rig = Rig(profile, engine)
    want = rig.file(1000)
    fd = rig.open()
    b = rig.buf(2 * P)
    rig.start(rig.pfns(b, 5000))
    out = rig.call(rig.p.pread, fd, b, 5000, 0)
    if profile == "6.18" and engine == "iomap":
        assert (out.ret, out.pins) == (1000, (1, 1))
        assert rig.p.read_user(b, 1000) == want
    else:
        assert (out.ret, out.pins) == (EINVAL, (0, 0))
    assert rig.done() == out.pins


# --- item 31: a device with dma_alignment 3 ------------------------------------------------------
@pytest.mark.parametrize("engine", ALL_ENGINES)
@pytest.mark.parametrize(("dma", "boff", "n"), [
    (3, 4, 8192), (3, 4, 4096), (3, 2, 8192), (511, 4, 8192), (3, 512, 8192)])
def test_item31_dma_alignment(profile: str, engine: str, dma: int, boff: int, n: int) -> None:
    """Item 31: with dma_alignment 3, 6.18 accepts a buffer 4 bytes into a page (every bvec
    offset and length a multiple of 4) and refuses one 2 bytes in after pinning its pages;
    on the default device (511) 4 bytes in is refused after pinning too. 5.9 and the legacy
    engine check the logical block size up front: EINVAL [0,0]. A 512-aligned buffer works
    everywhere."""
    rig = Rig(profile, engine, limits=QueueLimits(dma_alignment=dma))
    want = rig.file(MiB)
    fd = rig.open()
    b = rig.buf(n, offset=boff)
    npages = (boff + n + P - 1) // P
    rig.start(rig.pfns(b, n))
    out = rig.call(rig.p.pread, fd, b, n, rig.pos(0))
    pinned = (0, 0) if profile == "5.9" else (npages, npages)
    if engine == "legacy" and profile == "6.18":
        pinned = (npages, 3 * npages)
    elif engine == "legacy" and profile == "5.9-pin":
        pinned = (3 * npages, 3 * npages)
    if boff % 512 == 0:
        expect: tuple[int, Pins] = (n, pinned)
    elif profile != "6.18" or engine == "legacy":
        expect = (EINVAL, (0, 0))
    elif boff % (dma + 1) == 0:
        expect = (n, (npages, npages))
    else:
        expect = (EINVAL, (npages, npages))
    assert (out.ret, out.pins) == expect
    if out.ret > 0:
        assert rig.p.read_user(b, n) == want[:n]
    assert rig.done() == expect[1]


# --- item 32: a read whose buffer's second half is unmapped -----------------------------------
HALF_UNMAPPED = {
    # iomap: the second extent iteration's -EFAULT wins over the 512 KiB already read
    "iomap": {"5.9": (-errno.EFAULT, (0, 0)), "5.9-pin": (-errno.EFAULT, (128, 128)),
              "6.18": (-errno.EFAULT, (128, 128))},
    "legacy": {"5.9": (MiB // 2, (0, 0)), "5.9-pin": (MiB // 2, (384, 384)),
               "6.18": (MiB // 2, (128, 384))},
    "raw": {"5.9": (MiB // 2, (0, 0)), "5.9-pin": (MiB // 2, (128, 128)),
            "6.18": (MiB // 2, (128, 128))},
}


@pytest.mark.parametrize("engine", ALL_ENGINES)
def test_item32_second_half_unmapped(profile: str, engine: str) -> None:
    """Item 32 (6.18 iomap: EFAULT [128,128] with 512 KiB moved, as the host measured):
    iomap -EFAULT, legacy and the raw device's simple path a short 524288; the first half
    holds the data in every case; acq == rel."""
    rig = Rig(profile, engine)
    want = rig.file(4 * MiB)
    fd = rig.open()
    b = rig.buf(MiB)
    rig.p.munmap(b + MiB // 2, MiB // 2)
    rig.start(rig.pfns(b, MiB // 2))
    out = rig.call(rig.p.pread, fd, b, MiB, rig.pos(0))
    assert (out.ret, out.pins) == by(HALF_UNMAPPED, engine, profile)
    assert rig.p.read_user(b, MiB // 2) == want[: MiB // 2]
    assert rig.done() == out.pins


WRITE_HALF_UNMAPPED = {
    "iomap": {"5.9": (-errno.EFAULT, (0, 0)), "5.9-pin": (-errno.EFAULT, (128, 128)),
              "6.18": (-errno.EFAULT, (128, 128))},
    # §8.2: the file still had mapped blocks, so they are filled from ZERO_PAGE and
    # page_errors (-EFAULT) wins: 128 user pages and 128 zero-page pages, 3 references each
    "legacy": {"5.9": (-errno.EFAULT, (0, 0)), "5.9-pin": (-errno.EFAULT, (768, 768)),
               "6.18": (-errno.EFAULT, (128, 384))},
    "raw": {"5.9": (MiB // 2, (0, 0)), "5.9-pin": (MiB // 2, (128, 128)),
            "6.18": (MiB // 2, (128, 128))},
}


@pytest.mark.parametrize("engine", ALL_ENGINES)
def test_item32_write_from_half_unmapped_source(profile: str, engine: str) -> None:
    """The write direction (host 6.18 iomap: EFAULT [128,128] with 512 KiB written): the
    first 512 KiB reach the disk in every engine; the legacy engine zero-fills the rest of
    the blocks it had mapped."""
    rig = Rig(profile, engine)
    want = rig.file(4 * MiB)
    fd = rig.open()
    b = rig.buf(MiB, fill=0x55)
    rig.p.munmap(b + MiB // 2, MiB // 2)
    rig.start(rig.pfns(b, MiB // 2))
    out = rig.call(rig.p.pwrite, fd, b, MiB, rig.pos(0))
    assert (out.ret, out.pins) == by(WRITE_HALF_UNMAPPED, engine, profile)
    assert rig.disk_bytes(0, MiB // 2) == b"\x55" * (MiB // 2)
    rest = rig.disk_bytes(MiB // 2, MiB // 2)
    assert rest == (bytes(MiB // 2) if engine == "legacy" else want[MiB // 2 : MiB])
    assert rig.done() == out.pins


# --- item 34: a sub-block write that allocates a block ----------------------------------------
SUB_BLOCK_WRITE = {
    # iomap: the user page, plus the zero page for the pads before and after (5.9-pin pins
    # it with pin_page(); 6.18's zeroing bio takes no reference)
    "iomap": {"5.9": (0, 0), "5.9-pin": (3, 3), "6.18": (1, 1)},
    # legacy: three references on the user page, two per zero-fill section (in dio + bio)
    "legacy": {"5.9": (0, 0), "5.9-pin": (7, 7), "6.18": (1, 3)},
}
ZERO_PAGE_PADS = {"5.9": 2, "5.9-pin": 2048, "6.18": 0}


@pytest.mark.parametrize("engine", FS_ENGINES)
def test_item34_sub_block_write_allocating_a_block(profile: str, engine: str) -> None:
    """Item 34: 512 bytes at 4608 of a one-block file (extending, into a new block): the
    block's other 3584 bytes are zeroed from ZERO_PAGE — two sections before and after —
    which holds +2048 (two pins) in flight under 5.9-pin, +2 under 5.9, nothing under 6.18.
    The file is 5120 bytes: its old block, 512 zeros, the new bytes."""
    rig = Rig(profile, engine)
    want = rig.file(P)
    fd = rig.open()
    b = rig.buf(512, fill=0x77)
    rig.start(rig.pfns(b, 512))
    out = rig.call(rig.p.pwrite, fd, b, 512, P + 512)
    assert (out.ret, out.pins) == (512, by(SUB_BLOCK_WRITE, engine, profile))
    assert [int(iss.ref[rig.zero]) for iss in out.issued] == [ZERO_PAGE_PADS[profile]]
    assert rig.ino.i_size == P + 1024
    assert rig.ino.ext.extents() == [(0, 1, 2, False)]
    assert rig.disk_bytes(0, 2 * P) == want + bytes(512) + b"\x77" * 512 + bytes(P - 1024)
    assert rig.read_back(0, 2 * P) == want + bytes(512) + b"\x77" * 512
    assert rig.done() == by(SUB_BLOCK_WRITE, engine, profile)


# --- item 35: a legacy write that reaches a hole ------------------------------------------------
HOLE_WRITE = {
    # iomap allocates the hole's blocks and writes all 256 pages by Direct I/O
    "iomap": {"5.9": (0, 0), "5.9-pin": (256, 256), "6.18": (256, 256)},
    # legacy: 128 pages written by Direct I/O (3 references each), plus the 64 pages of the
    # page-queue refill that met the hole (one reference each), then -ENOTBLK and buffered
    "legacy": {"5.9": (0, 0), "5.9-pin": (448, 448), "6.18": (192, 448)},
}


@pytest.mark.parametrize("engine", FS_ENGINES)
def test_item35_write_reaching_a_hole(profile: str, engine: str) -> None:
    """Item 35: a 1 MiB write at 512 KiB of a 2 MiB file whose second MiB is a hole: the
    legacy engine (DIO_SKIP_HOLES) stops at the hole with -ENOTBLK, the rest is written
    through the page cache, and the syscall reports 1 MiB; every pin of the Direct I/O part
    is released. After fsync the disk holds it all."""
    rig = Rig(profile, engine)
    want = bytearray(rig.file(2 * MiB, holes=[(MiB, MiB)]))
    fd = rig.open()
    b = rig.buf(MiB, fill=0x66)
    rig.start(rig.pfns(b, MiB))
    out = rig.call(rig.p.pwrite, fd, b, MiB, MiB // 2)
    assert (out.ret, out.pins) == (MiB, by(HOLE_WRITE, engine, profile))
    want[MiB // 2 : MiB // 2 + MiB] = b"\x66" * MiB
    assert rig.read_back(0, 2 * MiB) == want
    rig.p.fsync(fd)
    assert rig.disk_bytes(0, 2 * MiB) == want
    assert rig.done() == by(HOLE_WRITE, engine, profile)


# --- items 36-37: SG_IO-style passthrough (block/blk_map.py) --------------------------------------
@pytest.mark.parametrize(("boff", "bounced"), [(0, False), (1, True)])
def test_item36_37_passthrough_smoke(profile: str, boff: int, bounced: bool) -> None:
    """Items 36-37 (tests/block/test_blk_map.py has the rest): a 64 KiB passthrough READ into
    the process's buffer: aligned, its 16 pages are mapped (one pin each, released and
    dirtied at unmap; 5.9 plain references); misaligned, bounced (nothing pinned). The bytes
    arrive either way."""
    rig = Rig(profile, "raw")
    rig.dev.write_disk(0, rig.rng.integers(0, 256, 64 * KiB, dtype=np.uint8).tobytes())
    b = rig.buf(64 * KiB, offset=boff)
    rig.start(rig.pfns(b, 64 * KiB))
    it = iov_iter_init(rig.pgdat, ITER_DEST, [(b, 64 * KiB)], 1, 64 * KiB, rig.p.mm)
    a0 = rig.k.vmstat.pins()
    ret, res = blk_rq_map_user_iov(rig.dev, REQ_OP.REQ_OP_DRV_IN, 0, it)
    assert ret == 0 and res is not None
    assert bool(res.copied) == bounced
    assert blk_execute_rq(res) == 0
    assert blk_rq_unmap_user(res) == 0
    a1 = rig.k.vmstat.pins()
    n = 0 if bounced or profile == "5.9" else 16
    assert (a1[0] - a0[0], a1[1] - a0[1]) == (n, n)
    assert rig.p.read_user(b, 64 * KiB) == rig.dev.read_disk(0, 64 * KiB)
    assert rig.done() == (n, n)


# --- item 38: splice from an O_DIRECT file into a pipe -----------------------------------------
SPLICE_1M = {
    "iomap": {"5.9": (0, 0), "5.9-pin": (256, 256), "6.18": (0, 0)},
    "raw": {"5.9": (0, 0), "5.9-pin": (256, 256), "6.18": (0, 0)},
    "legacy": {"5.9": (0, 0), "5.9-pin": (768, 768), "6.18": (0, 0)},
}


@pytest.mark.parametrize("engine", ALL_ENGINES)
def test_item38_splice_odirect_file_to_pipe(profile: str, engine: str) -> None:
    """Item 38: 1 MiB from an O_DIRECT file into a 1 MiB pipe. 5.9*: ->read_iter into an
    ITER_PIPE; 5.9-pin pins each pipe page (+1024 in flight over the pipe's own reference),
    5.9 takes plain references. 6.18 reads into pages of its own through an ITER_BVEC
    (copy_splice_read): nothing pinned (host: [0,0]). Afterwards the pipe holds 256 pages
    with one reference each (its own), and draining it gives the file's bytes."""
    rig = Rig(profile, engine)
    want = rig.file(4 * MiB)
    fd = rig.open(os.O_RDONLY | os.O_DIRECT)
    ret, ends = sys_pipe2(rig.pgdat)
    assert ret == 0 and ends is not None
    r, w = ends
    assert pipe_fcntl_setpipe_sz(w, MiB) == MiB
    sink = rig.buf(MiB)
    rig.start(rig.pfns(sink, MiB))
    pipe = get_pipe_info(w)
    assert pipe is not None
    in_flight: list[set[int]] = []

    def tp(name: str, f: dict[str, object]) -> None:
        if name == "block_rq_issue":
            pages = [int(pipe.buf_page[pipe.slot(h)]) for h in range(pipe.tail, pipe.head)]
            in_flight.append({int(rig.pgdat.pages.refcount[pg]) for pg in pages})

    rig.pgdat.hooks.tracepoints.append(tp)
    try:
        out = rig.call(sys_splice, rig.p.files.get(fd), rig.pos(0), w, None, MiB, 0)
    finally:
        rig.pgdat.hooks.tracepoints.remove(tp)
    assert (out.ret, out.pins) == (MiB, by(SPLICE_1M, engine, profile))
    if profile != "6.18":
        assert in_flight and all(s == {1 + (1 if profile == "5.9" else 1024)}
                                 for s in in_flight)
    assert pipe.occupancy() == 256
    assert {int(rig.pgdat.pages.refcount[pg]) for pg in pipe.buf_page.tolist()} == {1}
    assert vfs_read_write(r, sink, MiB, None, False, rig.p.mm) == MiB
    assert rig.p.read_user(sink, MiB) == want[:MiB]
    assert rig.done() == by(SPLICE_1M, engine, profile)


# --- errors, exactly as the kernel gives them; nothing leaks ------------------------------------
EFAULT, EAGAIN = -errno.EFAULT, -errno.EAGAIN


@pytest.mark.parametrize("engine", ALL_ENGINES)
def test_ebadf(profile: str, engine: str) -> None:
    """EBADF: a closed descriptor (every call), a write on O_RDONLY, a read on O_WRONLY —
    before any I/O: nothing pinned, the buffer and the file untouched."""
    rig = Rig(profile, engine)
    want = rig.file(64 * KiB)
    b = rig.buf(P)
    rig.start(rig.pfns(b, P))
    fd = rig.open()
    rig.p.close(fd)
    for call in (lambda: rig.p.pread(fd, b, P, rig.pos(0)),
                 lambda: rig.p.pwrite(fd, b, P, rig.pos(0)),
                 lambda: rig.p.preadv(fd, [(b, P)], rig.pos(0)),
                 lambda: rig.p.pwritev2(fd, [(b, P)], rig.pos(0), os.RWF_NOWAIT),
                 lambda: rig.p.fsync(fd), lambda: rig.p.close(fd)):
        assert rig.call(call).ret == -errno.EBADF
    ro = rig.open(os.O_RDONLY | os.O_DIRECT)
    wo = rig.open(os.O_WRONLY | os.O_DIRECT)
    for out in (rig.call(rig.p.pwrite, ro, b, P, rig.pos(0)),
                rig.call(rig.p.pwritev, ro, [(b, P)], rig.pos(0)),
                rig.call(rig.p.pread, wo, b, P, rig.pos(0)),
                rig.call(rig.p.preadv2, wo, [(b, P)], rig.pos(0), 0)):
        assert (out.ret, out.pins, out.issued) == (-errno.EBADF, (0, 0), [])
    assert rig.p.read_user(b, P) == b"\xee" * P
    if engine != "raw":
        assert rig.read_back(0, 64 * KiB) == want
    assert rig.done() == (0, 0)


def test_eisdir(profile: str) -> None:
    """A directory: opening it for writing is EISDIR; reading a read-only descriptor of it
    is EISDIR; O_DIRECT on it is EINVAL at open (no direct I/O support; the 6.18 host
    agrees)."""
    rig = Rig(profile, "iomap")
    b = rig.buf(P)
    rig.start(rig.pfns(b, P))
    for flags in (os.O_RDWR, os.O_WRONLY, os.O_RDWR | os.O_DIRECT):
        assert oserr(rig.p.open, "/", flags) == errno.EISDIR
    assert oserr(rig.p.open, "/", os.O_RDONLY | os.O_DIRECT) == errno.EINVAL
    d = rig.p.open("/", os.O_RDONLY)
    assert rig.call(rig.p.pread, d, b, P, 0).ret == -errno.EISDIR
    assert rig.call(rig.p.read, d, b, P).ret == -errno.EISDIR
    assert rig.call(rig.p.preadv, d, [(b, P)], 0).ret == -errno.EISDIR
    assert rig.done() == (0, 0)


IOV_MAX_PINS = {
    "iomap": {"5.9": (0, 0), "5.9-pin": (1024, 1024), "6.18": (1024, 1024)},
    "raw": {"5.9": (0, 0), "5.9-pin": (1024, 1024), "6.18": (1024, 1024)},
    "legacy": {"5.9": (0, 0), "5.9-pin": (3072, 3072), "6.18": (1024, 3072)},
}


@pytest.mark.parametrize("engine", ALL_ENGINES)
def test_iov_max(profile: str, engine: str) -> None:
    """UIO_MAXIOV: 1024 iovecs of 512 bytes (consecutive ones on different pages of a
    16-page buffer) are read, one pin per segment (host 6.18: [1024,1024]); 1025 is EINVAL
    at import, before anything (host: [0,0])."""
    rig = Rig(profile, engine)
    want = rig.file(MiB)
    fd = rig.open()
    b = rig.buf(16 * P)
    rig.start(rig.pfns(b, 16 * P))
    iov = [(b + (i % 16) * P, 512) for i in range(1025)]
    out = rig.call(rig.p.preadv, fd, iov[:1024], rig.pos(0))
    assert (out.ret, out.pins) == (512 * KiB, by(IOV_MAX_PINS, engine, profile))
    for j in range(16):  # segment 1008 + j was the last one into page j
        assert rig.p.read_user(b + j * P, 512) == want[(1008 + j) * 512 : (1009 + j) * 512]
    out = rig.call(rig.p.preadv, fd, iov, rig.pos(0))
    assert (out.ret, out.pins, out.issued) == (EINVAL, (0, 0), [])
    assert rig.call(rig.p.pwritev, fd, iov, rig.pos(0)).ret == EINVAL
    assert rig.done() == by(IOV_MAX_PINS, engine, profile)


BAD_MEMORY = ["unmapped", "prot-none", "read-only", "address-zero", "kernel-address"]


def bad_address(rig: Rig, kind: str) -> int:
    if kind == "unmapped":
        return rig.unmapped(4 * P)
    if kind == "prot-none":
        return rig.p.mmap(4 * P, PROT_NONE)
    if kind == "read-only":
        a = rig.p.mmap(4 * P, PROT_READ)
        rig.p.touch(a, 4 * P)  # read-faulted: the zero page, mapped read-only
        return a
    return 0 if kind == "address-zero" else KERNEL_ADDR


@pytest.mark.parametrize("engine", ALL_ENGINES)
@pytest.mark.parametrize("kind", BAD_MEMORY)
def test_efault_destination(profile: str, engine: str, kind: str) -> None:
    """A read into memory the process cannot write (unmapped, PROT_NONE, read-only, NULL,
    a kernel address): EFAULT before any I/O, nothing pinned (GUP fails on the first page,
    or access_ok at import)."""
    rig = Rig(profile, engine)
    rig.file(MiB)
    fd = rig.open()
    bad = bad_address(rig, kind)
    rig.start()
    for n in (P, 64 * KiB):
        out = rig.call(rig.p.pread, fd, bad, n, rig.pos(0))
        assert (out.ret, out.pins, out.issued) == (EFAULT, (0, 0), [])
    if kind != "read-only":  # a source that cannot be read
        out = rig.call(rig.p.pwrite, fd, bad, P, rig.pos(0))
        assert (out.ret, out.pins, out.issued) == (EFAULT, (0, 0), [])
    assert rig.done() == (0, 0)


PARTIAL_IOV = {
    # iomap: the fault in the second iteration's GUP wins (host 6.18: EFAULT [1,1], 4096
    # bytes moved); legacy and the raw device's simple path: a short count
    "iomap": {"5.9": (EFAULT, (0, 0)), "5.9-pin": (EFAULT, (1, 1)), "6.18": (EFAULT, (1, 1))},
    "legacy": {"5.9": (P, (0, 0)), "5.9-pin": (P, (3, 3)), "6.18": (P, (1, 3))},
    "raw": {"5.9": (P, (0, 0)), "5.9-pin": (P, (1, 1)), "6.18": (P, (1, 1))},
}


@pytest.mark.parametrize("engine", ALL_ENGINES)
def test_partially_bad_iovec_list(profile: str, engine: str) -> None:
    """[good 4096, unmapped 4096, good 4096]: the first segment's bytes arrive in every
    engine; the result is EFAULT (iomap) or 4096; the third segment is never touched.
    [unmapped, good]: EFAULT with nothing. [good, kernel address]: EFAULT at import, nothing
    moved (host). A negative length: EINVAL."""
    rig = Rig(profile, engine)
    want = rig.file(MiB)
    fd = rig.open()
    b = rig.buf(2 * P)
    bad = rig.unmapped(P)
    rig.start(rig.pfns(b, 2 * P))
    out = rig.call(rig.p.preadv, fd, [(b, P), (bad, P), (b + P, P)], rig.pos(0))
    assert (out.ret, out.pins) == by(PARTIAL_IOV, engine, profile)
    assert rig.p.read_user(b, P) == want[:P]
    assert rig.p.read_user(b + P, P) == b"\xee" * P
    for iov, err in (([(bad, P), (b, P)], EFAULT), ([(b + P, P), (KERNEL_ADDR, P)], EFAULT),
                     ([(b + P, P), (b, -1)], EINVAL)):
        out = rig.call(rig.p.preadv, fd, iov, rig.pos(0))
        assert (out.ret, out.pins, out.issued) == (err, (0, 0), [])
    assert rig.p.read_user(b + P, P) == b"\xee" * P
    assert rig.done() == by(PARTIAL_IOV, engine, profile)[1]


NOWAIT_READ_CACHED = {
    # 5.9: any cached page in the range would block (filemap_range_has_page); 6.18: only
    # pages needing writeback (host: preadv2(RWF_NOWAIT) over clean cached pages works)
    "iomap": {"5.9": (EAGAIN, (0, 0)), "5.9-pin": (EAGAIN, (0, 0)), "6.18": (P, (1, 1))},
    "legacy": {"5.9": (EAGAIN, (0, 0)), "5.9-pin": (EAGAIN, (0, 0)), "6.18": (P, (1, 3))},
}


@pytest.mark.parametrize("engine", FS_ENGINES)
def test_nowait_over_cached_pages(profile: str, engine: str) -> None:
    """RWF_NOWAIT over the file's clean cached pages: writes are EAGAIN in every profile
    (they would have to invalidate; host 6.18: EAGAIN twice in a row), reads EAGAIN in 5.9
    only. An ordinary O_DIRECT write drops the cached page; a NOWAIT write over the now
    uncached block then goes through. Nothing pinned by the refused calls."""
    rig = Rig(profile, engine)
    want = rig.file(64 * KiB)
    fd = rig.open()
    b = rig.buf(P, fill=0x42)
    rig.start(rig.pfns(b, P))
    assert rig.ino.i_mapping.nrpages == 16
    for _ in range(2):
        out = rig.call(rig.p.pwritev2, fd, [(b, P)], P, os.RWF_NOWAIT)
        assert (out.ret, out.pins, out.issued) == (EAGAIN, (0, 0), [])
    out = rig.call(rig.p.preadv2, fd, [(b, P)], 0, os.RWF_NOWAIT)
    assert (out.ret, out.pins) == by(NOWAIT_READ_CACHED, engine, profile)
    assert rig.p.read_user(b, P) == (want[:P] if out.ret > 0 else b"\x42" * P)
    rig.p.write_user(b, b"\x42" * P)
    assert rig.call(rig.p.pwrite, fd, b, P, P).ret == P
    assert rig.ino.i_mapping.lookup(1) == -1 and rig.ino.i_mapping.nrpages == 15
    assert rig.call(rig.p.pwritev2, fd, [(b, P)], 2 * P, os.RWF_NOWAIT).ret == EAGAIN
    out = rig.call(rig.p.pwritev2, fd, [(b, P)], P, os.RWF_NOWAIT)
    assert out.ret == P
    assert rig.read_back(0, 3 * P) == want[:P] + b"\x42" * P + want[2 * P : 3 * P]
    rig.done()


@pytest.mark.parametrize("ofs", [16 * KiB, 64 * KiB])
def test_nowait_write_into_a_hole_or_extending(profile: str, ofs: int) -> None:
    """iomap (ext4): a NOWAIT write that would allocate (a hole; past EOF) is EAGAIN before
    anything is pinned (host 6.18: [0,0] for the hole)."""
    rig = Rig(profile, "iomap")
    rig.file(64 * KiB, holes=[(16 * KiB, 16 * KiB)])
    fd = rig.open()
    b = rig.buf(P)
    rig.start(rig.pfns(b, P))
    out = rig.call(rig.p.pwritev2, fd, [(b, P)], ofs, os.RWF_NOWAIT)
    assert (out.ret, out.pins, out.issued) == (EAGAIN, (0, 0), [])
    assert rig.ino.i_size == 64 * KiB and rig.ino.ext.lookup(4, 1)[0][0] == -1
    assert rig.done() == (0, 0)


SHORT_READS = [
    # (file size, position, length) → result; the pins per engine and profile below
    (1000, 512, 512, 488),
    (1000, 1024, 512, 0),
    (1000, 1000, 512, 0),
    (6000, 4096, 8192, 1904),
    (6000, 0, 8192, 6000),
]


def short_read_pins(engine: str, profile: str, pos: int, n: int, ret: int) -> Pins:
    if not ret or profile == "5.9":
        return (0, 0)
    pages = (pos + ret - 1) // P - pos // P + 1
    if engine == "iomap":
        return (pages, pages)
    # legacy: 3 per page read, plus the next page of the request (taken by the same
    # page-queue refill), which meets EOF and goes back
    extra = 1 if (pos + n - 1) // P - pos // P + 1 > pages else 0
    got = 3 * pages + extra
    return (got, got) if profile == "5.9-pin" else (pages + extra, got)


@pytest.mark.parametrize("engine", FS_ENGINES)
@pytest.mark.parametrize(("size", "pos", "n", "ret"), SHORT_READS)
def test_eof_and_short_reads(profile: str, engine: str, size: int, pos: int, n: int,
                             ret: int) -> None:
    """Reads clipped at i_size return i_size - pos (not a block multiple), 0 at or past
    EOF; the bytes up to EOF are the file's."""
    rig = Rig(profile, engine)
    want = rig.file(size)
    fd = rig.open()
    b = rig.buf(n)
    rig.start(rig.pfns(b, n))
    out = rig.call(rig.p.pread, fd, b, n, pos)
    pins = short_read_pins(engine, profile, pos, n, ret)
    assert (out.ret, out.pins) == (ret, pins)
    assert rig.p.read_user(b, ret) == want[pos : pos + ret]
    assert rig.done() == pins


@pytest.mark.parametrize("engine", FS_ENGINES)
def test_hole_then_ragged_data_extent(profile: str, engine: str) -> None:
    """A hole followed by data with a misaligned total length: iomap zero-fills the hole
    into the buffer first and then refuses the data extent: EINVAL [0,0] with the hole's
    8192 zeros already in the buffer (host 6.18, and 5.9's actor order); the legacy engine
    refuses up front and leaves the buffer alone."""
    rig = Rig(profile, engine)
    rig.file(16 * KiB, holes=[(0, 8192)])
    fd = rig.open()
    b = rig.buf(4 * P)
    rig.start(rig.pfns(b, 4 * P))
    out = rig.call(rig.p.pread, fd, b, 8192 + 4196, 0)
    assert (out.ret, out.pins, out.issued) == (EINVAL, (0, 0), [])
    head = rig.p.read_user(b, 8192)
    assert head == (bytes(8192) if engine == "iomap" else b"\xee" * 8192)
    assert rig.p.read_user(b + 8192, 4196) == b"\xee" * 4196
    assert rig.done() == (0, 0)


# --- model bugs found end to end -----------------------------------------------------------------
@pytest.mark.parametrize(("profile", "engine"), cases(FS_ENGINES))
@pytest.mark.parametrize("which", ["same-file", "other-file"])
def test_gup_fault_reads_under_the_plug(profile: str, engine: str, which: str) -> None:
    """An O_DIRECT read into a MAP_SHARED mapping of a file page that is allocated but not
    cached: GUP faults the page in, which reads it from the disk while the Direct I/O's plug
    is held; sleeping on the locked page flushes the plug, the read completes, and the Direct
    I/O lands in the page cache page (dirtied at completion). Found by test_fs_stateful.py."""
    rig = Rig(profile, engine)
    want = rig.file(2 * P)
    other = rig.fs.create_file("g", 2 * P) if which == "other-file" else rig.ino
    name = "g" if which == "other-file" else "f"
    fd = rig.open()
    mfd = rig.p.open("/" + name, os.O_RDWR)
    dfd = rig.p.open("/" + name, RDWR_DIRECT)
    b = rig.buf(P, fill=0x33)
    assert rig.p.pwrite(dfd, b, P, P) == P  # block 1 is on disk, its page not cached
    assert other.i_mapping.lookup(1) == -1
    m = rig.p.mmap(2 * P, PROT_READ | PROT_WRITE, MAP_SHARED, fd=mfd)
    rig.start()
    out = rig.call(rig.p.pread, fd, m + P, P, 0)
    pins = (0, 0) if profile == "5.9" else (1, 3) if (profile, engine) == ("6.18", "legacy") \
        else (3, 3) if engine == "legacy" else (1, 1)
    assert (out.ret, out.pins) == (P, pins)
    assert rig.p.read_user(m + P, P) == want[:P]
    rig.done()

"""lib/iov_iter_pages.py: turning an iov_iter into pages, per profile (spec §3.3-§3.5,
§11 items 11-15).

Every acquisition function is run where it exists:

=============  ======================  =========  ==========  =========
profile        function                takes      per page    advances
=============  ======================  =========  ==========  =========
5.9, 5.9-pin   iov_iter_get_pages      FOLL_GET   +1          no
5.9-pin        iov_iter_pin_pages      FOLL_PIN   +1024       no
6.18           iov_iter_get_pages2     FOLL_GET   +1          yes
6.18           iov_iter_extract_pages  FOLL_PIN   +1024       yes
=============  ======================  =========  ==========  =========

Each case checks the return, the start offset, the exact page list, the iterator state,
the refcount/pincount of every page and the vmstat pin deltas, then releases what was taken
and proves that every count is back (``snapshot(k).assert_restored(k)``).
"""

from __future__ import annotations

import errno
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pytest

from dioscope.kernel.types import PAGE_OFFSET, PAGE_SIZE
from dioscope.lib.iov_iter import (
    ITER_DEST,
    ITER_SOURCE,
    IovIter,
    iov_iter_advance,
    iov_iter_bvec,
    iov_iter_discard,
    iov_iter_init,
    iov_iter_kvec,
    iov_iter_ubuf,
)
from dioscope.lib.iov_iter_pages import (
    iov_iter_extract_pages,
    iov_iter_extract_will_pin,
    iov_iter_get_pages,
    iov_iter_get_pages2,
    iov_iter_get_pages_alloc,
    iov_iter_get_pages_alloc2,
    iov_iter_pin_pages,
    iov_iter_pin_pages_alloc,
)
from dioscope.machine import Kernel
from dioscope.mm.gup import unpin_user_page
from dioscope.mm.mmap import PROT_READ
from dioscope.mm.page_alloc import alloc_pages
from dioscope.mm.page_ref import put_page
from dioscope.syscalls.process import Process

P = PAGE_SIZE
BIG = 1 << 40
EFAULT = -errno.EFAULT


# --- the acquisition functions, per profile ----------------------------------------------
@dataclass
class Acq:
    """One page-acquisition function of one profile, with its release."""

    k: Kernel
    name: str  # get, pin, get2, extract

    @property
    def pin(self) -> bool:
        return self.name in ("pin", "extract")

    @property
    def advances(self) -> bool:
        return self.name in ("get2", "extract")

    @property
    def unit(self) -> int:
        """What one acquisition adds to an order-0 page's refcount."""
        return 1024 if self.pin else 1

    def __call__(self, it: IovIter, maxsize: int, maxpages: int) -> tuple[int, np.ndarray, int]:
        """(bytes, pages array of 64 entries, NULL = -1 beyond what was filled, start)."""
        pages = np.full(64, -1, np.int64)
        if self.name == "extract":
            ret, _arr, start = iov_iter_extract_pages(it, pages, maxsize, maxpages)
            return ret, pages, start
        fn = {"get": iov_iter_get_pages, "pin": iov_iter_pin_pages,
              "get2": iov_iter_get_pages2}[self.name]
        ret, start = fn(it, pages, maxsize, maxpages)
        return ret, pages, start

    def alloc(self, it: IovIter, maxsize: int) -> tuple[int, np.ndarray | None, int]:
        """The ``_alloc`` form (extract: a NULL ``*pages``)."""
        if self.name == "extract":
            return iov_iter_extract_pages(it, None, maxsize, 1 << 30)
        fn = {"get": iov_iter_get_pages_alloc, "pin": iov_iter_pin_pages_alloc,
              "get2": iov_iter_get_pages_alloc2}[self.name]
        return fn(it, maxsize)

    def release(self, pages: list[int]) -> None:
        for page in pages:
            if self.pin:
                unpin_user_page(self.k.pgdat, page)
            else:
                put_page(self.k.pgdat, page)


ACQ = [("5.9", "get"), ("5.9-pin", "get"), ("5.9-pin", "pin"), ("6.18", "get2"),
       ("6.18", "extract")]


@pytest.fixture(params=ACQ, ids=[f"{p}-{f}" for p, f in ACQ])
def acq(request: pytest.FixtureRequest) -> Acq:
    prof, name = request.param
    return Acq(Kernel("32M", prof), name)


# --- helpers ---------------------------------------------------------------------------------
def buffer(p: Process, npages: int) -> tuple[int, list[int]]:
    """A private anonymous buffer of ``npages``, written (faulted in): (address, pfns)."""
    a = p.mmap(npages * P)
    p.write_user(a, b"\x5a" * (npages * P))
    vma = p.mm.vma_lookup(a)
    s = vma.slot(a)
    return a, vma.pt_pfn[s : s + npages].tolist()


def state(i: IovIter) -> tuple[int, int, int, int]:
    return i._seg, i.iov_offset, i.count, i.nr_segs


def user_iter(k: Kernel, p: Process, iov: list[tuple[int, int]],
              direction: int = ITER_DEST) -> IovIter:
    return iov_iter_init(k.pgdat, direction, iov, len(iov), sum(n for _a, n in iov), p.mm)


def va(pfn: int) -> int:
    """The direct-map address of a frame (``page_address``)."""
    return PAGE_OFFSET + pfn * P


# --- item 11: one segment per call --------------------------------------------------------
def test_item11_one_segment_per_call(acq: Acq, snapshot: Callable) -> None:
    k = acq.k
    p = k.spawn()
    a, pfns = buffer(p, 4)
    it = user_iter(k, p, [(a, 8192), (a + 8192, 8192)])  # virtually contiguous
    before = snapshot(k)
    n, pages, start = acq(it, BIG, 16)
    assert (n, start) == (8192, 0)
    assert pages[:3].tolist() == [*pfns[:2], -1]
    assert before.ref_delta(k, pfns) == [acq.unit, acq.unit, 0, 0]
    assert before.delta(k) == ((2, 0) if acq.pin else (0, 0))
    if not acq.advances:
        assert state(it) == (0, 0, 16384, 2)
        iov_iter_advance(it, n)
    assert state(it) == (1, 0, 8192, 1)
    n2, pages2, start2 = acq(it, BIG, 16)
    assert (n2, start2) == (8192, 0)
    assert pages2[:3].tolist() == [*pfns[2:], -1]
    assert before.delta(k) == ((4, 0) if acq.pin else (0, 0))
    acq.release(pfns)
    assert k.pgdat.pages.pincount[pfns].tolist() == [0] * 4
    before.assert_restored(k)


# --- item 12: start offset, maxsize and maxpages caps --------------------------------------
# (segment start in the buffer, length, maxsize, maxpages) -> (bytes, start, pages)
SHAPES = {
    "item 12: +100, 8192, maxpages 2": ((100, 8192, BIG, 2), (8092, 100, 2)),
    "+100, 8192, room for all": ((100, 8192, BIG, 16), (8192, 100, 3)),
    "two bytes over a boundary": ((0xFFF, 2, BIG, 16), (2, 0xFFF, 2)),
    "two bytes over a boundary, maxpages 1": ((0xFFF, 2, BIG, 1), (1, 0xFFF, 1)),
    "a page and a byte": ((0x1000, 0x1001, BIG, 16), (0x1001, 0, 2)),
    "maxsize 0x1ff": ((0x200, 0x1000, 0x1FF, 16), (0x1FF, 0x200, 1)),
    "maxsize 0xe00 ends on the boundary": ((0x200, 0x1000, 0xE00, 16), (0xE00, 0x200, 1)),
    "maxsize 0xe01 crosses it": ((0x200, 0x1000, 0xE01, 16), (0xE01, 0x200, 2)),
    "maxsize 0x1000 at 0x1ff": ((0x1FF, 0x1001, 0x1000, 16), (0x1000, 0x1FF, 2)),
}


@pytest.mark.parametrize("case", list(SHAPES))
def test_item12_13_start_caps_and_advance(acq: Acq, snapshot: Callable, case: str) -> None:
    (off, length, maxsize, maxpages), (want_n, want_start, npages) = SHAPES[case]
    k = acq.k
    p = k.spawn()
    a, pfns = buffer(p, 4)
    it = user_iter(k, p, [(a + off, length)])
    before = snapshot(k)
    n, pages, start = acq(it, maxsize, maxpages)
    assert (n, start) == (want_n, want_start)
    first = off // P
    taken = pfns[first : first + npages]
    assert pages[: npages + 1].tolist() == [*taken, -1]
    assert before.ref_delta(k, taken) == [acq.unit] * npages
    assert before.delta(k) == ((npages, 0) if acq.pin else (0, 0))
    # item 13: [5.9] get/pin do not advance; [6.x] get_pages2 and extract do
    if acq.advances:
        assert state(it) == ((0, n, length - n, 1) if n < length else (1, 0, 0, 0))
    else:
        assert state(it) == (0, 0, length, 1)
    acq.release(taken)
    before.assert_restored(k)


def test_maxsize_zero_takes_nothing(acq: Acq, snapshot: Callable) -> None:
    k = acq.k
    p = k.spawn()
    a, _pfns = buffer(p, 1)
    it = user_iter(k, p, [(a, P)])
    before = snapshot(k)
    n, pages, _start = acq(it, 0, 16)
    assert n == 0 and pages[0] == -1
    assert state(it) == (0, 0, P, 1)
    before.assert_restored(k)


def test_zero_length_segments_are_skipped(acq: Acq, snapshot: Callable) -> None:
    """Zero-length segments first, in the middle and last never end an acquisition early
    (the bug fixed by Linux commit f741bd7178c9 is not in the model)."""
    k = acq.k
    p = k.spawn()
    a, pfns = buffer(p, 3)
    iov = [(a + 0x1FF, 0), (a + 0x200, 0), (a + 0x1000, 0x1000), (a, 0), (a + 0x2000, 0x200),
           (a + 0xFFF, 0)]
    it = user_iter(k, p, iov)
    before = snapshot(k)
    n, pages, start = acq(it, BIG, 16)
    assert (n, start, pages[:2].tolist()) == (0x1000, 0, [pfns[1], -1])
    if not acq.advances:
        iov_iter_advance(it, n)
    assert state(it) == ((4, 0, 0x200, 2) if acq.advances else (3, 0, 0x200, 3))
    n, pages, start = acq(it, BIG, 16)
    assert (n, start, pages[:2].tolist()) == (0x200, 0, [pfns[2], -1])
    assert before.delta(k) == ((2, 0) if acq.pin else (0, 0))
    acq.release([pfns[1], pfns[2]])
    before.assert_restored(k)


# --- _alloc forms ---------------------------------------------------------------------------
def test_alloc_forms_take_the_whole_segment(acq: Acq, snapshot: Callable) -> None:
    """1 MiB at +512 (item 17's buffer): one call, no maxpages cap, 257 pages."""
    k = acq.k
    p = k.spawn()
    a, pfns = buffer(p, 258)
    it = user_iter(k, p, [(a + 512, 1 << 20)])
    before = snapshot(k)
    n, arr, start = acq.alloc(it, BIG)
    assert arr is not None
    assert (n, start, len(arr)) == (1 << 20, 512, 257)
    assert arr.tolist() == pfns[:257]
    assert before.ref_delta(k, pfns[:258]) == [acq.unit] * 257 + [0]
    assert before.delta(k) == ((257, 0) if acq.pin else (0, 0))
    assert state(it) == ((1, 0, 0, 0) if acq.advances else (0, 0, 1 << 20, 1))
    acq.release(arr.tolist())
    assert before.delta(k) == ((257, 257) if acq.pin else (0, 0))
    before.assert_restored(k)


# --- partial GUP ----------------------------------------------------------------------------
def test_unmapped_second_page_gives_the_first_page_only(acq: Acq, snapshot: Callable) -> None:
    k = acq.k
    p = k.spawn()
    a, pfns = buffer(p, 3)
    p.munmap(a + P, P)
    it = user_iter(k, p, [(a + 0x200, 3 * P - 0x200)])
    before = snapshot(k)
    n, pages, start = acq(it, BIG, 16)
    assert (n, start) == (P - 0x200, 0x200)
    assert pages[:2].tolist() == [pfns[0], -1]
    assert before.ref_delta(k, pfns) == [acq.unit, 0, 0]
    assert before.delta(k) == ((1, 0) if acq.pin else (0, 0))
    if acq.advances:
        assert state(it) == (0, P - 0x200, 2 * P, 1)
    n2, pages2, _s = acq(it, BIG, 16)  # the next call starts in the hole
    if acq.advances:
        assert n2 == EFAULT
    else:
        assert (n2, pages2[0]) == (P - 0x200, pfns[0])  # not advanced: the same page again
        acq.release([pfns[0]])
    acq.release([pfns[0]])
    before.assert_restored(k)


def test_unmapped_first_page_faults_and_holds_nothing(acq: Acq, snapshot: Callable) -> None:
    k = acq.k
    p = k.spawn()
    a, _pfns = buffer(p, 3)
    p.munmap(a + P, P)
    it = user_iter(k, p, [(a + P + 0x10, 2 * P)])
    before = snapshot(k)
    n, pages, _start = acq(it, BIG, 16)
    assert n == EFAULT
    assert pages[0] == -1
    assert state(it) == (0, 0, 2 * P, 1)
    before.assert_restored(k)


# --- FOLL_WRITE only for READ destinations ------------------------------------------------
def test_read_only_mapping_as_destination_and_as_source(acq: Acq, snapshot: Callable) -> None:
    """A READ (ITER_DEST) iterator means the device writes memory: FOLL_WRITE, so a
    read-only mapping fails with -EFAULT. As a WRITE source it is only read: it works."""
    k = acq.k
    p = k.spawn()
    a, pfns = buffer(p, 2)
    p.mprotect(a, 2 * P, PROT_READ)
    before = snapshot(k)
    dest = user_iter(k, p, [(a + 0x200, P)], ITER_DEST)
    n, pages, _start = acq(dest, BIG, 16)
    assert (n, pages[0]) == (EFAULT, -1)
    assert state(dest) == (0, 0, P, 1)
    before.assert_restored(k)
    src = user_iter(k, p, [(a + 0x200, P)], ITER_SOURCE)
    n, pages, start = acq(src, BIG, 16)
    assert (n, start) == (P, 0x200)
    assert pages[:3].tolist() == [*pfns, -1]
    assert before.ref_delta(k, pfns) == [acq.unit, acq.unit]
    acq.release(pfns)
    before.assert_restored(k)


def test_ubuf_extract_and_get_pages2(k6: Kernel, snapshot: Callable) -> None:
    """Item 15 for ITER_UBUF: extract pins and will_pin is True; get_pages2 takes refs."""
    p = k6.spawn()
    a, pfns = buffer(p, 3)
    before = snapshot(k6)
    it = iov_iter_ubuf(k6.pgdat, ITER_DEST, a + 0xFFF, 0x1002, p.mm)
    assert iov_iter_extract_will_pin(it) is True
    n, arr, off = iov_iter_extract_pages(it, None, BIG, 16)
    assert (n, off, arr.tolist()) == (0x1002, 0xFFF, pfns[:3])
    assert before.ref_delta(k6, pfns) == [1024, 1024, 1024]
    assert before.delta(k6) == (3, 0)
    assert state(it) == (0, 0x1002, 0, 1)
    for page in pfns:
        unpin_user_page(k6.pgdat, page)
    it2 = iov_iter_ubuf(k6.pgdat, ITER_SOURCE, a + 0xFFF, 0x1002, p.mm)
    pages = np.full(4, -1, np.int64)
    assert iov_iter_get_pages2(it2, pages, 0x1001, 16) == (0x1001, 0xFFF)
    assert pages.tolist() == [pfns[0], pfns[1], -1, -1]
    assert before.ref_delta(k6, pfns) == [1, 1, 0]
    for page in pfns[:2]:
        put_page(k6.pgdat, page)
    before.assert_restored(k6)


# --- item 14: the series' iov_iter_pin_pages on kernel-backed iterators ---------------------
def kernel_iters(k: Kernel) -> dict[str, IovIter]:
    pg = k.pgdat
    p1, p2 = alloc_pages(pg, 0), alloc_pages(pg, 0)
    return {
        "KVEC": iov_iter_kvec(pg, ITER_DEST, [(va(p1) + 0x200, 0x200), (va(p2), P)], 2,
                              0x200 + P),
        "BVEC": iov_iter_bvec(pg, ITER_DEST, [(p1, 0x200, 0x200), (p2, P, 0)], 2, 0x200 + P),
        "DISCARD": iov_iter_discard(pg, ITER_DEST, 0x1000),
    }


@pytest.mark.parametrize("kind", ["KVEC", "BVEC", "DISCARD"])
def test_item14_pin_pages_rejects_kernel_backed(kind: str, snapshot: Callable) -> None:
    k = Kernel("32M", "5.9-pin")
    it = kernel_iters(k)[kind]
    before = snapshot(k)
    pages = np.full(4, -1, np.int64)
    assert iov_iter_pin_pages(it, pages, BIG, 4) == (EFAULT, 0)
    n, arr, _s = iov_iter_pin_pages_alloc(it, BIG)
    assert (n, arr) == (EFAULT, None)
    assert pages[0] == -1
    warns = [(e.kind, e.site) for e in k.events.events]
    assert warns == ([] if kind == "DISCARD" else [("WARN", "iov_iter_pin_pages")])
    before.assert_restored(k)


@pytest.mark.parametrize("kind", ["KVEC", "BVEC", "DISCARD"])
def test_get_pages_on_kernel_backed(k59: Kernel, kind: str, snapshot: Callable) -> None:
    """[5.9] iov_iter_get_pages: KVEC and DISCARD -EFAULT; BVEC one page of the current
    bvec with a plain reference (never a pin)."""
    it = kernel_iters(k59)[kind]
    before = snapshot(k59)
    pages = np.full(4, -1, np.int64)
    got = iov_iter_get_pages(it, pages, BIG, 4)
    if kind != "BVEC":
        assert got == (EFAULT, 0)
        before.assert_restored(k59)
        return
    page = int(it.segs[0, 0])
    assert got == (0x200, 0x200)
    assert pages[:2].tolist() == [page, -1]
    assert before.ref_delta(k59, [page]) == [1]
    assert before.delta(k59) == (0, 0)
    iov_iter_advance(it, 0x200)
    assert iov_iter_get_pages(it, pages, BIG, 4) == (P, 0)
    assert pages[0] == int(it.segs[1, 0])
    put_page(k59.pgdat, page)
    put_page(k59.pgdat, int(pages[0]))
    assert k59.events.events == []
    before.assert_restored(k59)


def test_get_pages_bvec_honours_the_skip(k59: Kernel, snapshot: Callable) -> None:
    """[5.9] the bvec step sees the single-page piece at ``iov_offset``."""
    pg = k59.pgdat
    big = alloc_pages(pg, 1)
    it = iov_iter_bvec(pg, ITER_SOURCE, [(big, 0x1F00, 0x100)], 1, 0x1F00)
    iov_iter_advance(it, 0x1000)
    before = snapshot(k59)
    pages = np.full(2, -1, np.int64)
    assert iov_iter_get_pages(it, pages, BIG, 2) == (0xF00, 0x100)
    assert pages.tolist() == [big + 1, -1]
    assert before.ref_delta(k59, [big]) == [1]  # the reference lands on the folio head
    put_page(pg, big + 1)
    before.assert_restored(k59)


# --- item 15: 6.18 extraction of kernel-backed iterators: no references --------------------
def test_item15_extract_kvec_lists_pages_without_refs(k6: Kernel, snapshot: Callable) -> None:
    pg = k6.pgdat
    p1, p2, big = alloc_pages(pg, 0), alloc_pages(pg, 0), alloc_pages(pg, 1)
    kv = [(va(p1), 0), (va(p2) + 0x200, 0), (va(big) + 0xE00, 0x1200), (va(p1), 0x10)]
    it = iov_iter_kvec(pg, ITER_SOURCE, kv, 4, 0x1210)
    assert iov_iter_extract_will_pin(it) is False
    before = snapshot(k6)
    n, arr, off = iov_iter_extract_pages(it, None, BIG, 16)
    assert (n, off, arr.tolist()) == (0x1200, 0xE00, [big, big + 1])
    assert state(it) == (3, 0, 0x10, 1)
    n, arr, off = iov_iter_extract_pages(it, None, BIG, 16)
    assert (n, off, arr.tolist()) == (0x10, 0, [p1])
    assert state(it) == (4, 0, 0, 0)
    assert k6.vmstat.pins() == (before.acquired, before.released)
    before.assert_restored(k6)  # nothing was taken, nothing is to be released


# (bvecs as (page index, len, offset), maxpages) -> (bytes, offset, page indexes, state)
EXTRACT_BVEC = {
    "page-contiguous bvecs gather": (
        [(0, P, 0), (1, P, 0), (2, 0x200, 0)], 16, (0x2200, 0, [0, 1, 2], (3, 0, 0, 0))),
    "first ends on its page boundary": (
        [(0, 0x200, 0xE00), (1, P, 0)], 16, (0x1200, 0xE00, [0, 1], (2, 0, 0, 0))),
    "first ends inside its page": (
        [(0, 0x200, 0), (1, P, 0)], 16, (0x200, 0, [0], (1, 0, P, 1))),
    "second starts inside its page": (
        [(0, P, 0), (1, 0x200, 0x200)], 16, (P, 0, [0], (1, 0, 0x200, 1))),
    "capped at maxpages": (
        [(0, P, 0), (1, P, 0), (2, P, 0)], 2, (0x2000, 0, [0, 1], (2, 0, P, 1))),
    "zero-length first entries are skipped (f741bd7178c9)": (
        [(3, 0, 0), (3, 0, 0x200), (0, 0x200, 0x100)], 16, (0x200, 0x100, [0], (3, 0, 0, 0))),
    "zero-length middle entry is skipped": (
        [(0, P, 0), (3, 0, 0), (1, 0x200, 0)], 16, (0x1200, 0, [0, 1], (3, 0, 0, 0))),
}


@pytest.mark.parametrize("case", list(EXTRACT_BVEC))
def test_item15_extract_bvec_lists_pages_without_refs(k6: Kernel, snapshot: Callable,
                                                      case: str) -> None:
    bv, maxpages, (want_n, want_off, want_pages, want_state) = EXTRACT_BVEC[case]
    pg = k6.pgdat
    frames = [alloc_pages(pg, 0) for _ in range(4)]
    rows = [(frames[i], n, off) for i, n, off in bv]
    it = iov_iter_bvec(pg, ITER_DEST, rows, len(rows), sum(n for _i, n, _o in bv))
    assert iov_iter_extract_will_pin(it) is False
    before = snapshot(k6)
    n, arr, off = iov_iter_extract_pages(it, None, BIG, maxpages)
    assert (n, off) == (want_n, want_off)
    assert arr.tolist() == [frames[i] for i in want_pages]
    assert state(it) == want_state
    before.assert_restored(k6)


def test_item15_extract_user_backed_pins(k6: Kernel, snapshot: Callable) -> None:
    p = k6.spawn()
    a, pfns = buffer(p, 2)
    it = user_iter(k6, p, [(a + 0x200, P)])
    assert iov_iter_extract_will_pin(it) is True
    before = snapshot(k6)
    n, arr, off = iov_iter_extract_pages(it, None, BIG, 16)
    assert (n, off, arr.tolist()) == (P, 0x200, pfns)
    assert before.ref_delta(k6, pfns) == [1024, 1024]
    assert before.delta(k6) == (2, 0)
    for page in pfns:
        unpin_user_page(k6.pgdat, page)
    before.assert_restored(k6)


def test_extract_and_get_pages2_on_other_types(k6: Kernel, snapshot: Callable) -> None:
    """DISCARD cannot be extracted; get_pages2 refuses KVEC and DISCARD and takes a plain
    reference on each page of a multi-page bvec (on the folio head)."""
    pg = k6.pgdat
    iters = kernel_iters(k6)
    big = alloc_pages(pg, 2)
    bv = iov_iter_bvec(pg, ITER_DEST, [(big, 0x2000, 0x100)], 1, 0x2000)
    before = snapshot(k6)
    pages = np.full(4, -1, np.int64)
    assert iov_iter_extract_pages(iters["DISCARD"], pages, BIG, 4)[0] == EFAULT
    assert iov_iter_get_pages2(iters["KVEC"], pages, BIG, 4)[0] == EFAULT
    assert iov_iter_get_pages2(iters["DISCARD"], pages, BIG, 4)[0] == EFAULT
    before.assert_restored(k6)
    assert iov_iter_get_pages2(bv, pages, BIG, 4) == (0x2000, 0x100)
    assert pages.tolist() == [big, big + 1, big + 2, -1]
    assert before.ref_delta(k6, [big]) == [3]
    assert state(bv) == (1, 0, 0, 0)
    for page in pages[:3].tolist():
        put_page(pg, page)
    before.assert_restored(k6)


def test_functions_exist_only_in_their_profiles(k: Kernel) -> None:
    it = iov_iter_discard(k.pgdat, ITER_DEST, 0x200)
    pages = np.full(1, -1, np.int64)
    cfg = k.cfg
    calls = {
        "iov_iter_get_pages": (lambda: iov_iter_get_pages(it, pages, 1, 1),
                               not cfg.IOV_ITER_EXTRACT),
        "iov_iter_pin_pages": (lambda: iov_iter_pin_pages(it, pages, 1, 1),
                               cfg.IOV_ITER_PIN_PAGES),
        "iov_iter_get_pages2": (lambda: iov_iter_get_pages2(it, pages, 1, 1),
                                cfg.IOV_ITER_EXTRACT),
        "iov_iter_extract_pages": (lambda: iov_iter_extract_pages(it, pages, 1, 1),
                                   cfg.IOV_ITER_EXTRACT),
    }
    for name, (call, exists) in calls.items():
        if exists:
            assert call()[0] == EFAULT, name
        else:
            with pytest.raises(RuntimeError):
                call()

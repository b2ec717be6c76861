"""block/bio.py: merge rules, building Direct I/O bios from user memory per profile, release
and dirtying (spec §4.1-§4.5, §4.7, §11 items 18-21 and 23).

Per profile a bio built from user pages holds, for every distinct page presence, one plain
reference [5.9] or one pin [5.9-pin, 6.18]; a same-page merge drops the duplicate at once;
``bio_release_pages`` gives back exactly what is left. Every case checks the exact bvecs,
the refcount of each page, the ``nr_foll_pin_acquired`` / ``_released`` deltas during the
build and after the release, and that every count is back at the end.
"""

from __future__ import annotations

import errno
import itertools
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

import dioscope.block.bio as bio_mod
from dioscope.block.bio import (
    __bio_try_merge_page,
    bio_add_page,
    bio_alloc,
    bio_check_pages_dirty,
    bio_dirty_deferred,
    bio_full,
    bio_iov_iter_get_pages,
    bio_release_pages,
    bio_set_pages_dirty,
)
from dioscope.block.blk_types import BIO_FLAG, BIO_MAX_VECS, REQ_OP, Bio
from dioscope.kernel.types import HPAGE_PMD_SIZE, PAGE_SIZE
from dioscope.lib.iov_iter import ITER_DEST, ITER_SOURCE, IovIter, iov_iter_bvec, iov_iter_init
from dioscope.machine import Kernel
from dioscope.mm.mmap import MADV_HUGEPAGE, PROT_READ
from dioscope.mm.page import PG
from dioscope.mm.page_alloc import alloc_pages
from dioscope.syscalls.process import Process

P = PAGE_SIZE
UINT_MAX = 0xFFFFFFFF
READ = int(REQ_OP.REQ_OP_READ)
WRITE = int(REQ_OP.REQ_OP_WRITE)
PROFILES = ("5.9", "5.9-pin", "6.18")


@pytest.fixture(params=PROFILES)
def k(request: pytest.FixtureRequest) -> Kernel:
    """A fresh 32 MiB machine under each profile."""
    return Kernel("32M", request.param)


# --- helpers ---------------------------------------------------------------------------------
@dataclass
class Counts:
    """Refcounts, pincounts and pin counters of one machine at one moment."""

    k: Kernel
    refcount: np.ndarray = field(init=False)
    pincount: np.ndarray = field(init=False)
    nr_free: int = field(init=False)
    pins: tuple[int, int] = field(init=False)

    def __post_init__(self) -> None:
        p = self.k.pgdat.pages
        self.refcount = p.refcount.copy()
        self.pincount = p.pincount.copy()
        self.nr_free = self.k.pgdat.nr_free()
        self.pins = self.k.vmstat.pins()

    def delta(self) -> tuple[int, int]:
        acq, rel = self.k.vmstat.pins()
        return acq - self.pins[0], rel - self.pins[1]

    def ref_delta(self, pfns: list[int]) -> list[int]:
        p = self.k.pgdat.pages
        heads = p.head[np.asarray(pfns, np.int64)]
        return (p.refcount[heads].astype(np.int64) - self.refcount[heads]).tolist()

    def assert_restored(self) -> None:
        p = self.k.pgdat.pages
        bad = np.flatnonzero((p.refcount != self.refcount) | (p.pincount != self.pincount))
        assert not len(bad), f"counts changed on pfn {int(bad[0]):#x}"
        assert self.k.pgdat.nr_free() == self.nr_free
        acq, rel = self.delta()
        assert acq == rel, f"pins unbalanced: +{acq} acquired, +{rel} released"


def pin_profile(k: Kernel) -> bool:
    return bool(k.cfg.DIO_FOLL_PIN)


def unit(k: Kernel) -> int:
    """What the bio takes on one order-0 page: a reference [5.9] or a pin."""
    return 1024 if pin_profile(k) else 1


def counted(k: Kernel, n: int) -> int:
    """How many of ``n`` acquisitions the FOLL_PIN vmstat counters see."""
    return n if pin_profile(k) else 0


def pfns_of(p: Process, a: int, n: int) -> list[int]:
    vma = p.mm.vma_lookup(a)
    s = vma.slot(a)
    return vma.pt_pfn[s : s + n].tolist()


def forward_buffer(p: Process, n: int) -> tuple[int, list[int]]:
    """A buffer whose pages were faulted in one by one, first to last."""
    a = p.mmap(n * P)
    for i in range(n):
        p.write_user(a + i * P, b"\x11")
    return a, pfns_of(p, a, n)


def contiguous_buffer(p: Process, n: int) -> tuple[int, list[int]]:
    """A buffer of ``n`` physically contiguous pages (ascending pfns)."""
    for _ in range(10):
        a, pfns = forward_buffer(p, n)  # a failed try keeps its pages: strays are used up
        if all(b - a_ == 1 for a_, b in itertools.pairwise(pfns)):
            return a, pfns
    raise AssertionError("no physically contiguous run")


def scattered_buffer(p: Process, n: int) -> tuple[int, list[int]]:
    """A buffer no two neighbouring pages of which are physically adjacent in address
    order: faulted in last to first, so the pfns descend."""
    a = p.mmap(n * P)
    for i in reversed(range(n)):
        p.write_user(a + i * P, b"\x22")
    pfns = pfns_of(p, a, n)
    assert not any(b - a_ == 1 for a_, b in itertools.pairwise(pfns))
    return a, pfns


def user_iter(k: Kernel, p: Process, iov: list[tuple[int, int]],
              direction: int = ITER_DEST) -> IovIter:
    return iov_iter_init(k.pgdat, direction, iov, len(iov), sum(n for _a, n in iov), p.mm)


def new_bio(k: Kernel, nr_vecs: int = BIO_MAX_VECS, op: int = READ, bdev: Any = None) -> Bio:
    bio = bio_alloc(bdev, nr_vecs, op, k.pgdat)
    assert bio is not None
    return bio


def vecs(bio: Bio) -> list[tuple[int, int, int]]:
    """(bv_page, bv_len, bv_offset) of every used bvec."""
    return [(int(pg), int(lo >> 32), int(lo & 0xFFFFFFFF))
            for pg, lo in bio.bi_io_vec[: bio.bi_vcnt].tolist()]


def state(i: IovIter) -> tuple[int, int, int, int]:
    return i._seg, i.iov_offset, i.count, i.nr_segs


# --- merge rules (spec §4.2) -------------------------------------------------------------------
# Pages: "a"/"b" physically contiguous (a then b), "s" a separate page adjacent to neither.
# (adds as (page, len, offset)) -> (merge result of each add as (merged, same_page), bvecs)
MERGE = {
    "same page, contiguous": (
        [("a", 512, 0), ("a", 512, 512)], [(False, False), (True, True)], [("a", 1024, 0)]),
    "same page, a gap": (
        [("a", 512, 0), ("a", 512, 1024)], [(False, False), (False, False)],
        [("a", 512, 0), ("a", 512, 1024)]),
    "same page, reversed": (
        [("a", 512, 512), ("a", 512, 0)], [(False, False), (False, False)],
        [("a", 512, 512), ("a", 512, 0)]),
    "physically contiguous pages": (
        [("a", P, 0), ("b", P, 0)], [(False, False), (True, False)], [("a", 2 * P, 0)]),
    "straddling the boundary at 0xe00": (
        [("a", 0x200, 0xE00), ("b", 0x100, 0)], [(False, False), (True, False)],
        [("a", 0x300, 0xE00)]),
    "contiguous pages, first not to its end": (
        [("a", 0x200, 0), ("b", 0x100, 0)], [(False, False), (False, False)],
        [("a", 0x200, 0), ("b", 0x100, 0)]),
    "contiguous pages, reversed": (
        [("b", P, 0), ("a", P, 0)], [(False, False), (False, False)], [("b", P, 0), ("a", P, 0)]),
    "not contiguous": (
        [("a", P, 0), ("s", P, 0)], [(False, False), (False, False)], [("a", P, 0), ("s", P, 0)]),
    "a multi-page bvec goes on in its last page": (
        [("a", P, 0), ("b", 0x1FF, 0), ("b", 0x201, 0x1FF)],
        [(False, False), (True, False), (True, True)], [("a", 0x1400, 0)]),
    "bv_offset past the first page": (
        [("a", 0x100, 0x1000), ("b", 0x100, 0x100)], [(False, False), (True, True)],
        [("a", 0x200, 0x1000)]),
}


@pytest.mark.parametrize("case", list(MERGE))
def test_merge_rules(k: Kernel, case: str) -> None:
    adds, merges, want = MERGE[case]
    pg = k.pgdat
    a = alloc_pages(pg, 1)  # two physically contiguous frames
    s = alloc_pages(pg, 2) + 2  # inside a block two frames away from anything of a, b
    page = {"a": a, "b": a + 1, "s": s}
    bio = new_bio(k, 4)
    for (name, length, off), (want_merge, want_same) in zip(adds, merges, strict=True):
        got = __bio_try_merge_page(bio, page[name], length, off)
        assert got == (want_merge, want_same)
        if not got[0]:
            assert bio_add_page(bio, page[name], length, off) == length
    assert vecs(bio) == [(page[n], ln, off) for n, ln, off in want]
    assert bio.bi_iter.bi_size == sum(ln for _n, ln, _o in adds)


def test_bio_full_at_256_vecs(k: Kernel) -> None:
    pg = k.pgdat
    frames = sorted(alloc_pages(pg, 0) for _ in range(2 * BIO_MAX_VECS))
    pages = frames[::2]  # no two adjacent
    assert bio_alloc(None, BIO_MAX_VECS + 1, READ, pg) is None
    bio = new_bio(k, BIO_MAX_VECS)
    for page in pages:
        assert not bio_full(bio, 0)
        assert bio_add_page(bio, page, 512, 0) == 512
    assert bio.bi_vcnt == BIO_MAX_VECS
    assert bio_full(bio, 0)
    assert bio_add_page(bio, frames[1], 512, 0) == 0  # a new bvec: no room
    assert bio_add_page(bio, pages[-1], 512, 512) == 512  # merging needs no slot
    assert (bio.bi_vcnt, bio.bi_iter.bi_size) == (BIO_MAX_VECS, 257 * 512)
    assert vecs(bio)[-1] == (pages[-1], 1024, 0)


def test_bio_full_at_bi_size_overflow(k: Kernel) -> None:
    pg = k.pgdat
    a, s = alloc_pages(pg, 0), alloc_pages(pg, 1)
    bio = new_bio(k, 4)
    assert bio_add_page(bio, a, 512, 0) == 512
    bio.bi_iter.bi_size = UINT_MAX - 100
    assert not bio_full(bio, 100)
    assert bio_full(bio, 101)
    assert bio_add_page(bio, s, 101, 0) == 0  # a new bvec would overflow bi_size
    assert __bio_try_merge_page(bio, a, 101, 512) == (False, False)  # so would a merge
    assert bio_add_page(bio, a, 101, 512) == 0
    assert bio_add_page(bio, a, 100, 512) == 100
    assert (bio.bi_vcnt, bio.bi_iter.bi_size) == (1, UINT_MAX)
    assert vecs(bio) == [(a, 612, 0)]


# --- bio_iov_iter_get_pages ---------------------------------------------------------------------
def test_item18_contiguous_pages_one_bvec_n_pins(k: Kernel) -> None:
    p = k.spawn()
    a, pfns = contiguous_buffer(p, 8)
    c = Counts(k)
    bio = new_bio(k)
    it = user_iter(k, p, [(a, 8 * P)])
    assert bio_iov_iter_get_pages(bio, it) == 0
    assert vecs(bio) == [(pfns[0], 8 * P, 0)]
    assert bio.pages().tolist() == pfns
    assert c.ref_delta(pfns) == [unit(k)] * 8
    assert c.delta() == (counted(k, 8), 0)
    assert state(it) == (1, 0, 0, 0)
    bio_release_pages(bio, False)
    assert c.delta() == (counted(k, 8), counted(k, 8))
    c.assert_restored()


def test_item19_two_halves_of_one_page(k: Kernel) -> None:
    p = k.spawn()
    a, (pfn,) = forward_buffer(p, 1)
    c = Counts(k)
    bio = new_bio(k)
    it = user_iter(k, p, [(a, 512), (a + 512, 512)])
    assert bio_iov_iter_get_pages(bio, it) == 0
    assert vecs(bio) == [(pfn, 1024, 0)]
    assert c.ref_delta([pfn]) == [unit(k)]  # the duplicate was dropped at once
    assert c.delta() == (counted(k, 2), counted(k, 1))
    bio_release_pages(bio, False)
    assert c.delta() == (counted(k, 2), counted(k, 2))
    c.assert_restored()


def test_item20_one_mib_at_512_needs_two_bios(k: Kernel) -> None:
    p = k.spawn()
    a, pfns = scattered_buffer(p, 257)
    c = Counts(k)
    it = user_iter(k, p, [(a + 512, 1 << 20)])
    first, second = new_bio(k), new_bio(k)
    assert bio_iov_iter_get_pages(first, it) == 0
    assert (first.bi_vcnt, first.bi_iter.bi_size) == (256, 256 * P - 512)
    assert vecs(first)[:2] == [(pfns[0], P - 512, 512), (pfns[1], P, 0)]
    assert bio_full(first, 0)
    assert state(it) == (0, 256 * P - 512, 512, 1)
    assert c.delta() == (counted(k, 256), 0)
    assert bio_iov_iter_get_pages(second, it) == 0
    assert vecs(second) == [(pfns[256], 512, 0)]
    assert c.ref_delta(pfns) == [unit(k)] * 257
    assert c.delta() == (counted(k, 257), 0)
    bio_release_pages(first, False)
    bio_release_pages(second, False)
    assert c.delta() == (counted(k, 257), counted(k, 257))
    c.assert_restored()


def test_item20_contiguous_pages_fit_one_bio(k: Kernel) -> None:
    p = k.spawn()
    a, pfns = contiguous_buffer(p, 257)
    c = Counts(k)
    it = user_iter(k, p, [(a + 512, 1 << 20)])
    bio = new_bio(k)
    assert bio_iov_iter_get_pages(bio, it) == 0
    assert vecs(bio) == [(pfns[0], 1 << 20, 512)]
    assert len(bio.pages()) == 257
    assert c.delta() == (counted(k, 257), 0)
    bio_release_pages(bio, False)
    c.assert_restored()


def test_item21_bvec_iterator_takes_no_refs(k: Kernel) -> None:
    pg = k.pgdat
    big, one = alloc_pages(pg, 1), alloc_pages(pg, 0)
    rows = [(big, P, 0), (big + 1, 0x200, 0), (one, 0x600, 0x200)]
    it = iov_iter_bvec(pg, ITER_SOURCE, rows, 3, P + 0x800)
    c = Counts(k)
    v6 = k.cfg.IOV_ITER_EXTRACT
    bio = new_bio(k, 0 if v6 else 4, WRITE)  # 6.x allocates no bvecs for an ITER_BVEC
    assert bio_iov_iter_get_pages(bio, it) == 0
    assert bio.bi_iter.bi_size == P + 0x800
    assert state(it)[2:] == (0, 0)
    if v6:
        # bio_iov_bvec_set(): the caller's bvecs as they are, BIO_CLONED, nothing pinned
        assert bio.bi_vcnt == 3
        assert bio.bio_flagged(BIO_FLAG.BIO_CLONED)
        assert not bio.bio_flagged(BIO_FLAG.BIO_PAGE_PINNED)
        assert vecs(bio) == rows
    else:
        # __bio_iov_bvec_add_pages(): bio_add_page per bvec (merging), BIO_NO_PAGE_REF
        assert bio.bio_flagged(BIO_FLAG.BIO_NO_PAGE_REF)
        assert vecs(bio) == [(big, P + 0x200, 0), (one, 0x600, 0x200)]
    c.assert_restored()
    assert c.delta() == (0, 0)
    bio_release_pages(bio, True)  # nothing to release (and nothing dirtied)
    assert not pg.pages.test(big, PG.PG_dirty)
    c.assert_restored()


@pytest.mark.pure
def test_page_array_is_tail_packed_in_the_bvec_array(k: Kernel,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """``pages += entries_left * (PAGE_PTRS_PER_BVEC - 1)``: the page array of each inner
    call lives in ``bi_io_vec`` itself, at word 2 * bi_vcnt + entries_left."""
    p = k.spawn()
    a, pa = scattered_buffer(p, 2)
    b, (pb,) = forward_buffer(p, 1)
    assert pb != pa[1] + 1  # three bvecs
    name = ("iov_iter_extract_pages" if k.cfg.IOV_ITER_EXTRACT
            else "iov_iter_pin_pages" if k.cfg.DIO_FOLL_PIN else "iov_iter_get_pages")
    real = getattr(bio_mod, name)
    seen: list[tuple[int, int, int, bool]] = []
    bio = new_bio(k, 8)
    base = bio.bi_io_vec.__array_interface__["data"][0]

    def spy(it: IovIter, pages: np.ndarray, *args: Any, **kw: Any) -> Any:
        word = (pages.__array_interface__["data"][0] - base) // 8
        seen.append((bio.bi_vcnt, word, len(pages), np.shares_memory(pages, bio.bi_io_vec)))
        return real(it, pages, *args, **kw)

    monkeypatch.setattr(bio_mod, name, spy)
    it = user_iter(k, p, [(a + 0x800, 2 * P - 0x800), (b, 0x100)])
    assert bio_iov_iter_get_pages(bio, it) == 0
    assert seen == [(0, 0 + 8, 8, True), (2, 2 * 2 + 6, 6, True)]
    assert vecs(bio) == [(pa[0], 0x800, 0x800), (pa[1], P, 0), (pb, 0x100, 0)]
    words = bio.tail_words()
    assert int(words[2 * 2 + 6]) == pb  # the last call's pointer, not yet overwritten
    bio_release_pages(bio, False)


def test_unmapped_middle_page_gives_a_shorter_bio(k: Kernel) -> None:
    p = k.spawn()
    a, pfns = scattered_buffer(p, 3)
    p.munmap(a + P, P)
    c = Counts(k)
    bio = new_bio(k)
    it = user_iter(k, p, [(a + 0x200, 3 * P - 0x200)])
    assert bio_iov_iter_get_pages(bio, it) == 0  # the -EFAULT of the second call is swallowed
    assert vecs(bio) == [(pfns[0], P - 0x200, 0x200)]
    assert state(it) == (0, P - 0x200, 2 * P, 1)
    assert c.ref_delta(pfns[:1]) == [unit(k)]
    assert c.delta() == (counted(k, 1), 0)
    bio_release_pages(bio, False)
    c.assert_restored()


def test_unmapped_buffer_faults_and_holds_nothing(k: Kernel) -> None:
    p = k.spawn()
    a, _pfns = forward_buffer(p, 2)
    p.munmap(a, P)
    c = Counts(k)
    bio = new_bio(k)
    it = user_iter(k, p, [(a + 0x10, 0x200), (a + P, 0x200)])
    assert bio_iov_iter_get_pages(bio, it) == -errno.EFAULT
    assert bio.bi_vcnt == 0 and bio.bi_iter.bi_size == 0
    assert state(it) == (0, 0, 0x400, 2)
    c.assert_restored()
    assert c.delta() == (0, 0)


def test_read_only_buffer_as_destination_and_as_source(k: Kernel) -> None:
    """FOLL_WRITE only for a READ (the device writes memory)."""
    p = k.spawn()
    a, pfns = scattered_buffer(p, 2)
    p.mprotect(a, 2 * P, PROT_READ)
    c = Counts(k)
    rd = new_bio(k, op=READ)
    assert bio_iov_iter_get_pages(rd, user_iter(k, p, [(a, 2 * P)], ITER_DEST)) == -errno.EFAULT
    c.assert_restored()
    wr = new_bio(k, op=WRITE)
    assert bio_iov_iter_get_pages(wr, user_iter(k, p, [(a, 2 * P)], ITER_SOURCE)) == 0
    assert vecs(wr) == [(pfns[0], P, 0), (pfns[1], P, 0)]
    assert c.delta() == (counted(k, 2), 0)
    bio_release_pages(wr, False)
    c.assert_restored()


def test_5_9_refuses_a_bio_that_has_vecs(k: Kernel) -> None:
    p = k.spawn()
    a, (pfn,) = forward_buffer(p, 1)
    bio = new_bio(k)
    bio_add_page(bio, alloc_pages(k.pgdat, 0), 512, 0)
    it = user_iter(k, p, [(a, 512)])
    c = Counts(k)
    ret = bio_iov_iter_get_pages(bio, it)
    if k.cfg.IOV_ITER_EXTRACT:
        # [6.x] appends; the extra bvec is the caller's business
        assert ret == 0 and bio.bi_vcnt == 2
        bio_mod._release_one(bio, pfn, "test")
    else:
        assert ret == -errno.EINVAL
        assert [(e.kind, e.site) for e in k.events.events] == [
            ("WARN", "bio_iov_iter_get_pages")]
    c.assert_restored()


# --- release kinds ------------------------------------------------------------------------------
class Recorder:
    """A hooks observer: (event, kind, pfns, holder is the bio, site)."""

    def __init__(self, bio: Bio) -> None:
        self.bio = bio
        self.log: list[tuple[str, str, list[int], bool, str]] = []

    def on_acquire(self, kind: str, pfns: np.ndarray, holder: object, site: str) -> None:
        self.log.append(("acquire", kind, pfns.tolist(), holder is self.bio, site))

    def on_release(self, kind: str, pfns: np.ndarray, holder: object, site: str) -> None:
        self.log.append(("release", kind, pfns.tolist(), holder is self.bio, site))


def test_release_kind_per_profile(k: Kernel) -> None:
    """[5.9] FOLL_GET in, put_page out; [5.9-pin] and [6.18] FOLL_PIN in, unpin out; the
    same-page duplicate is dropped the way it was taken."""
    p = k.spawn()
    a, (pfn,) = forward_buffer(p, 1)
    bio = new_bio(k)
    rec = Recorder(bio)
    k.pgdat.hooks.subscribe(rec)
    it = user_iter(k, p, [(a, 512), (a + 512, 512)])
    assert bio_iov_iter_get_pages(bio, it) == 0
    bio_release_pages(bio, False)
    k.pgdat.hooks.unsubscribe(rec)
    kind = "pin" if pin_profile(k) else "get"
    assert [(e, kd, pf, mine) for e, kd, pf, mine, _site in rec.log] == [
        ("acquire", kind, [pfn], True),
        ("acquire", kind, [pfn], True),
        ("release", kind, [pfn], True),  # the same-page duplicate
        ("release", kind, [pfn], True),  # bio_release_pages
    ]


# --- [6.18] trimming the bio to the logical block size --------------------------------------
def test_6_18_aligns_the_bio_down_to_the_block_size(k: Kernel) -> None:
    """[6.18] bio_iov_iter_get_pages(bio, iter, lbs - 1) trims the bio's total after building
    it (bio_iov_iter_align_down): a longer tail bvec is shortened, a shorter one dropped with
    its page unpinned, the bytes go back to the iterator. [5.9] has no such argument."""
    p = k.spawn()
    a, pfns = scattered_buffer(p, 2)
    v6 = k.cfg.IOV_ITER_EXTRACT
    c = Counts(k)
    one = new_bio(k)
    it = user_iter(k, p, [(a, 1000)])
    assert bio_iov_iter_get_pages(one, it, 511) == 0
    assert vecs(one) == [(pfns[0], 512 if v6 else 1000, 0)]
    assert state(it) == ((0, 512, 488, 1) if v6 else (1, 0, 0, 0))
    assert c.delta() == (counted(k, 1), 0)
    bio_release_pages(one, False)
    c.assert_restored()
    c = Counts(k)
    two = new_bio(k)
    it = user_iter(k, p, [(a + P - 512, 1000)])
    assert bio_iov_iter_get_pages(two, it, 511) == 0
    if v6:
        assert vecs(two) == [(pfns[0], 512, P - 512)]  # the 488-byte tail bvec dropped
        assert c.delta() == (2, 1)
        assert state(it) == (0, 512, 488, 1)
    else:
        assert vecs(two) == [(pfns[0], 512, P - 512), (pfns[1], 488, 0)]
        assert c.delta() == (counted(k, 2), 0)
    bio_release_pages(two, False)
    c.assert_restored()
    c = Counts(k)
    three = new_bio(k)
    it = user_iter(k, p, [(a, 100)])
    ret = bio_iov_iter_get_pages(three, it, 511)
    if v6:
        assert (ret, three.bi_vcnt, state(it)) == (-errno.EFAULT, 0, (0, 0, 100, 1))
        assert c.delta() == (1, 1)
    else:
        assert (ret, vecs(three)) == (0, [(pfns[0], 100, 0)])
        bio_release_pages(three, False)
    c.assert_restored()


def test_6_18_a_bdev_alone_trims_nothing(k: Kernel) -> None:
    """The 6.0-6.17 per-extraction trim to ``bdev_logical_block_size`` is gone in 6.18
    (Linux commit 20a0e6276edb): with a bdev but no ``len_align_mask`` the bio keeps every
    byte, in every profile."""
    p = k.spawn()
    a, pfns = scattered_buffer(p, 1)
    bdev = SimpleNamespace(limits=SimpleNamespace(logical_block_size=512), pgdat=k.pgdat)
    bio = bio_alloc(bdev, BIO_MAX_VECS, READ)
    assert bio is not None and bio.pgdat is k.pgdat
    it = user_iter(k, p, [(a, 1000)])
    assert bio_iov_iter_get_pages(bio, it) == 0
    assert vecs(bio) == [(pfns[0], 1000, 0)]
    bio_release_pages(bio, False)


# --- item 23: dirtying after a READ -----------------------------------------------------------
def dirty(k: Kernel, pfns: list[int]) -> list[bool]:
    return [k.pgdat.pages.test(int(k.pgdat.pages.head[x]), PG.PG_dirty) for x in pfns]


@pytest.mark.parametrize("cleaned", [False, True])
def test_item23_dirtying_and_the_deferred_release(k: Kernel, cleaned: bool) -> None:
    p = k.spawn()
    a, pfns = scattered_buffer(p, 3)
    c = Counts(k)
    bio = new_bio(k)
    assert bio_iov_iter_get_pages(bio, user_iter(k, p, [(a, 3 * P)])) == 0
    assert dirty(k, pfns) == [False] * 3  # anonymous pages are not PG_dirty after a fault
    bio_set_pages_dirty(bio)
    assert dirty(k, pfns) == [True] * 3
    if cleaned:  # writeback cleaned the middle page while the device wrote into it
        k.pgdat.pages.clear(pfns[1], PG.PG_dirty)
    bio_check_pages_dirty(bio)
    wq = k.pgdat.system_wq
    if cleaned:
        assert bio_dirty_deferred(k.pgdat) == 0
        assert len(wq.pending) == 1
        assert c.delta() == (counted(k, 3), 0)  # nothing released yet
        assert c.ref_delta(pfns) == [unit(k)] * 3
        assert wq.flush() == 1
    assert bio_dirty_deferred(k.pgdat) == (1 if cleaned else 0)
    assert dirty(k, pfns) == [True] * 3
    assert bio.bi_cnt == 0
    assert c.delta() == (counted(k, 3), counted(k, 3))
    c.assert_restored()


def test_item23_compound_pages(k: Kernel) -> None:
    """[5.9] bio_set_pages_dirty and bio_check_pages_dirty skip compound pages (they count
    as dirty); [6.18] dirties the folio. Four subpages of a THP: one bvec, four pins on the
    head's exact pincount (a reference each [5.9])."""
    p = k.spawn()
    a = p.mmap(HPAGE_PMD_SIZE)
    p.madvise(a, HPAGE_PMD_SIZE, MADV_HUGEPAGE)
    p.write_user(a, b"\x33")
    head = pfns_of(p, a, 1)[0]
    assert k.pgdat.pages.folio_order(head) == 9
    c = Counts(k)
    bio = new_bio(k)
    assert bio_iov_iter_get_pages(bio, user_iter(k, p, [(a + P, 4 * P)])) == 0
    assert vecs(bio) == [(head + 1, 4 * P, 0)]
    pin = pin_profile(k)
    assert c.ref_delta([head]) == [4]
    assert int(k.pgdat.pages.pincount[head]) - int(c.pincount[head]) == (4 if pin else 0)
    bio_set_pages_dirty(bio)
    v6 = k.cfg.IOV_ITER_EXTRACT
    assert dirty(k, [head]) == [v6]
    bio_check_pages_dirty(bio)
    assert bio_dirty_deferred(k.pgdat) == 0  # released at once in both
    assert c.delta() == (counted(k, 4), counted(k, 4))
    c.assert_restored()

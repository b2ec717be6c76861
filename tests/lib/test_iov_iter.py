"""lib/iov_iter.py: iterator state, shaping and byte copies, per profile (spec §3.1, §3.2,
§11 items 16 and 17).

Tables at awkward boundaries (segment lengths and starts 0x1ff, 0x200, 0xfff, 0x1000,
0x1001; zero-length segments first, in the middle and last) with the exact iterator state
after every operation: ``(_seg, iov_offset, count, nr_segs)``. The two advance algorithms
differ: [5.9] ``iterate_and_advance`` stops at the end of the segment just finished and
steps over that one only; [6.x] ``iov_iter_iovec_advance`` / ``iov_iter_bvec_advance``
step over every fully consumed segment, zero-length ones included.
"""

from __future__ import annotations

import numpy as np
import pytest

from dioscope.kernel.types import MAX_RW_COUNT, PAGE_OFFSET, PAGE_SIZE
from dioscope.lib.iov_iter import (
    ITER_DEST,
    ITER_SOURCE,
    IovIter,
    copy_from_iter,
    copy_to_iter,
    iov_iter_advance,
    iov_iter_alignment,
    iov_iter_bvec,
    iov_iter_count,
    iov_iter_discard,
    iov_iter_gap_alignment,
    iov_iter_init,
    iov_iter_is_aligned,
    iov_iter_kvec,
    iov_iter_npages,
    iov_iter_reexpand,
    iov_iter_revert,
    iov_iter_truncate,
    iov_iter_ubuf,
    iov_iter_zero,
)
from dioscope.machine import Kernel
from dioscope.mm.mmap import PROT_READ
from dioscope.mm.page_alloc import alloc_pages

P = PAGE_SIZE
UINT_MAX = 0xFFFFFFFF
KBASE = PAGE_OFFSET + (0x600 << 12)
"""A page-aligned direct-map address (arithmetic-only tests never touch it)."""


def fam(k: Kernel) -> str:
    """Which advance/revert algorithm the profile has: "5.9" or "6.x"."""
    return "6.x" if k.cfg.ITER_UBUF else "5.9"


def state(i: IovIter) -> tuple[int, int, int, int]:
    return i._seg, i.iov_offset, i.count, i.nr_segs


def make(k: Kernel, kind: str, segs: list[tuple[int, int]], direction: int = ITER_DEST,
         base: int = 0) -> IovIter:
    """An iterator of ``kind`` over (start, len) pieces. IOVEC starts are user addresses
    (``base`` + start); KVEC ones are ``KBASE`` + start; BVEC ones become (page, offset)
    with the page ``0x600 + start // P`` and the offset ``start % P``."""
    count = sum(n for _s, n in segs)
    if kind == "IOVEC":
        iov = [(base + s, n) for s, n in segs]
        return iov_iter_init(k.pgdat, direction, iov, len(iov), count, k.spawn().mm)
    if kind == "KVEC":
        kv = [(KBASE + s, n) for s, n in segs]
        return iov_iter_kvec(k.pgdat, direction, kv, len(kv), count)
    assert kind == "BVEC"
    bv = [(0x600 + s // P, n, s % P) for s, n in segs]
    return iov_iter_bvec(k.pgdat, direction, bv, len(bv), count)


def lens_to_segs(lens: list[int]) -> list[tuple[int, int]]:
    """Segments of the given lengths, each starting on its own page pair."""
    return [(2 * P * n, ln) for n, ln in enumerate(lens)]


def apply(i: IovIter, op: str, arg: int) -> None:
    {
        "adv": iov_iter_advance,
        "rev": iov_iter_revert,
        "trunc": iov_iter_truncate,
        "reexp": iov_iter_reexpand,
    }[op](i, arg)


# --- advance / revert / truncate / reexpand --------------------------------------------------
# (segment lengths, [(op, arg, state after [5.9], state after [6.x])]);
# a state is (_seg, iov_offset, count, nr_segs).
ADV_REV = {
    "exact end of the first segment": ([0x200, 0x1000], [
        ("adv", 0x200, (1, 0, 0x1000, 1), (1, 0, 0x1000, 1)),
        ("rev", 0x200, (0, 0, 0x1200, 2), (0, 0, 0x1200, 2)),
    ]),
    "zero-length middle right after an exact end": ([0x200, 0, 0x1000], [
        ("adv", 0x200, (1, 0, 0x1000, 2), (2, 0, 0x1000, 1)),
        ("adv", 0x1FF, (2, 0x1FF, 0xE01, 1), (2, 0x1FF, 0xE01, 1)),
        ("rev", 0x1FF, (2, 0, 0x1000, 1), (2, 0, 0x1000, 1)),
        ("rev", 0x200, (0, 0, 0x1200, 3), (0, 0, 0x1200, 3)),
    ]),
    "zero-length first is never returned to": ([0, 0x1FF, 0x1001], [
        ("adv", 0x1FF, (2, 0, 0x1001, 1), (2, 0, 0x1001, 1)),
        ("adv", 0x1000, (2, 0x1000, 1, 1), (2, 0x1000, 1, 1)),
        ("rev", 0x1001, (1, 0x1FE, 0x1002, 2), (1, 0x1FE, 0x1002, 2)),
        ("rev", 0x1FE, (1, 0, 0x1200, 2), (1, 0, 0x1200, 2)),
    ]),
    "zero-length last after everything": ([0x1000, 0x1001, 0], [
        ("adv", 0x2001, (2, 0, 0, 1), (3, 0, 0, 0)),
        ("adv", 5, (2, 0, 0, 1), (3, 0, 0, 0)),
        ("rev", 0x2001, (0, 0, 0x2001, 3), (0, 0, 0x2001, 3)),
    ]),
    "run of zero-length segments": ([0x1000, 0, 0, 0x200], [
        ("adv", 0x1000, (1, 0, 0x200, 3), (3, 0, 0x200, 1)),
        ("adv", 0x100, (3, 0x100, 0x100, 1), (3, 0x100, 0x100, 1)),
        ("rev", 0x101, (0, 0xFFF, 0x201, 4), (0, 0xFFF, 0x201, 4)),
        ("adv", 1, (1, 0, 0x200, 3), (3, 0, 0x200, 1)),
    ]),
    "straddling a page boundary": ([0xFFF, 0x1001], [
        ("adv", 0x1000, (1, 1, 0x1000, 1), (1, 1, 0x1000, 1)),
        ("rev", 2, (0, 0xFFE, 0x1002, 2), (0, 0xFFE, 0x1002, 2)),
        ("adv", 0x1002, (2, 0, 0, 0), (2, 0, 0, 0)),
    ]),
    "0x1ff, 0x200, 0x1001 one by one": ([0x1FF, 0x200, 0x1001], [
        ("adv", 0x1FF, (1, 0, 0x1201, 2), (1, 0, 0x1201, 2)),
        ("adv", 0x200, (2, 0, 0x1001, 1), (2, 0, 0x1001, 1)),
        ("adv", 0x1001, (3, 0, 0, 0), (3, 0, 0, 0)),
        ("rev", 0x1400, (0, 0, 0x1400, 3), (0, 0, 0x1400, 3)),
    ]),
    "truncate, advance past it, reexpand": ([0x200, 0x200], [
        ("trunc", 0x1000, (0, 0, 0x400, 2), (0, 0, 0x400, 2)),
        ("trunc", 0x300, (0, 0, 0x300, 2), (0, 0, 0x300, 2)),
        ("adv", 0x1000, (1, 0x100, 0, 1), (1, 0x100, 0, 1)),
        ("reexp", 0x100, (1, 0x100, 0x100, 1), (1, 0x100, 0x100, 1)),
        ("adv", 0x100, (2, 0, 0, 0), (2, 0, 0, 0)),
        ("rev", 0x400, (0, 0, 0x400, 2), (0, 0, 0x400, 2)),
    ]),
}


@pytest.mark.parametrize("kind", ["IOVEC", "KVEC", "BVEC"])
@pytest.mark.parametrize("case", list(ADV_REV))
def test_advance_revert_table(k: Kernel, kind: str, case: str) -> None:
    lens, ops = ADV_REV[case]
    it = make(k, kind, lens_to_segs(lens))
    assert state(it) == (0, 0, sum(lens), len(lens))
    for op, arg, s59, s6x in ops:
        apply(it, op, arg)
        want = s6x if fam(k) == "6.x" else s59
        assert state(it) == want, f"after {op} {arg:#x}"
    assert k.events.events == []


@pytest.mark.parametrize("kind", ["IOVEC", "KVEC", "BVEC"])
def test_advance_zero_over_a_zero_length_first_segment(k: Kernel, kind: str) -> None:
    """advance(0) with a zero-length current segment: iterate_iovec finds ``skip ==
    iov_len`` and steps over it; [5.9] ``for_each_bvec`` takes no step at all; [6.x] steps
    over every consumed segment."""
    it = make(k, kind, lens_to_segs([0, 0x200]))
    iov_iter_advance(it, 0)
    stays = kind == "BVEC" and fam(k) == "5.9"
    assert state(it) == ((0, 0, 0x200, 2) if stays else (1, 0, 0x200, 1))


def test_revert_more_than_max_rw_count_warns_and_does_nothing(k: Kernel) -> None:
    it = make(k, "IOVEC", lens_to_segs([0x1000, 0x1000]))
    iov_iter_advance(it, 0x1800)
    iov_iter_revert(it, MAX_RW_COUNT + 1)
    assert state(it) == (1, 0x800, 0x800, 1)
    assert [(e.kind, e.site) for e in k.events.events] == [("WARN", "iov_iter_revert")]


def test_revert_before_the_first_segment_is_a_bug(k: Kernel) -> None:
    it = make(k, "IOVEC", lens_to_segs([0x200]))
    iov_iter_advance(it, 0x100)
    iov_iter_revert(it, 0x101)
    assert [(e.kind, e.site) for e in k.events.events] == [("BUG", "iov_iter_revert")]


def test_count_and_discard(k: Kernel) -> None:
    it = iov_iter_discard(k.pgdat, ITER_DEST, 0x1001)
    iov_iter_advance(it, 0x1FF)
    assert iov_iter_count(it) == 0xE02
    iov_iter_revert(it, 0x1FF)
    assert iov_iter_count(it) == 0x1001
    assert copy_to_iter(b"\xaa" * 0x200, it) == 0x200
    assert iov_iter_count(it) == 0xE01
    assert iov_iter_zero(0x2000, it) == 0xE01
    assert iov_iter_count(it) == 0
    assert iov_iter_npages(it, 16) == 0


# --- ITER_UBUF ---------------------------------------------------------------------------
def test_ubuf_exists_only_in_6_18(k: Kernel) -> None:
    mm = k.spawn().mm
    if not k.cfg.ITER_UBUF:
        with pytest.raises(RuntimeError, match="ITER_UBUF"):
            iov_iter_ubuf(k.pgdat, ITER_DEST, 0x10000, 0x1001, mm)
        return
    it = iov_iter_ubuf(k.pgdat, ITER_DEST, 0x10200, 0x1001, mm)
    assert state(it) == (0, 0, 0x1001, 1)
    iov_iter_advance(it, 0x1FF)
    assert state(it) == (0, 0x1FF, 0xE02, 1)
    iov_iter_advance(it, 0x2000)
    assert state(it) == (0, 0x1001, 0, 1)
    iov_iter_revert(it, 0x1001)
    assert state(it) == (0, 0, 0x1001, 1)
    assert k.events.events == []
    iov_iter_revert(it, 1)  # past the start of a UBUF: BUG()
    assert [(e.kind, e.site) for e in k.events.events] == [("BUG", "iov_iter_revert")]


# --- iov_iter_npages (item 17) -----------------------------------------------------------
# (segments as (start, len), ops before, maxpages, expected)
NPAGES = {
    "item 17: 1 MiB at +512": ([(0x200, 0x100000)], [], 1024, 257),
    "item 17 capped at BIO_MAX_PAGES": ([(0x200, 0x100000)], [], 256, 256),
    "one whole page": ([(0, 0x1000)], [], 16, 1),
    "last byte of a page": ([(0xFFF, 1)], [], 16, 1),
    "two bytes over a boundary": ([(0xFFF, 2)], [], 16, 2),
    "a page and a byte": ([(0x1000, 0x1001)], [], 16, 2),
    "0x1ff + 0xe01 ends on the boundary": ([(0x1FF, 0xE01)], [], 16, 1),
    "0x1ff + 0xe02 crosses it": ([(0x1FF, 0xE02)], [], 16, 2),
    "truncated to the first page": ([(0x200, 0x100000)], [("trunc", 0xE00)], 16, 1),
    "truncated one byte further": ([(0x200, 0x100000)], [("trunc", 0xE01)], 16, 2),
    "advanced past the first page": ([(0x200, 0x100000)], [("adv", 0xE00)], 1024, 256),
    "all consumed": ([(0x200, 0x1000)], [("adv", 0x1000)], 16, 0),
}
NPAGES_MULTI = {
    "the same page twice counts twice": ([(0, 0x200), (0x200, 0x200)], [], 16, 2),
    "zero-length first, middle, last count nothing": (
        [(0x123, 0), (0x1000, 0x1000), (0x2456, 0), (0x3000, 0x200), (0x4FFF, 0)], [], 16, 2),
    "capped at maxpages": (
        [(0, 0x1000), (0x1000, 0x1000), (0x2000, 0x1000), (0x3000, 0x1000)], [], 3, 3),
    "advanced into a zero-length run": (
        [(0, 0x200), (0x1000, 0), (0x2200, 0x200)], [("adv", 0x200)], 16, 1),
}


@pytest.mark.parametrize("kind", ["IOVEC", "KVEC"])
@pytest.mark.parametrize("case", list(NPAGES) + list(NPAGES_MULTI))
def test_npages_table(k: Kernel, kind: str, case: str) -> None:
    segs, ops, maxpages, want = {**NPAGES, **NPAGES_MULTI}[case]
    it = make(k, kind, segs, base=0x7F0000000000)
    for op, arg in ops:
        apply(it, op, arg)
    assert iov_iter_npages(it, maxpages) == want


@pytest.mark.parametrize("case", list(NPAGES))
def test_npages_ubuf(k6: Kernel, case: str) -> None:
    ((start, n),), ops, maxpages, want = NPAGES[case]
    it = iov_iter_ubuf(k6.pgdat, ITER_DEST, 0x7F0000000000 + start, n, k6.spawn().mm)
    for op, arg in ops:
        apply(it, op, arg)
    assert iov_iter_npages(it, maxpages) == want


# (bvecs as (page index, len, offset), maxpages, [5.9], [6.x])
NPAGES_BVEC = {
    "one page per bvec": ([(0, 0x1000, 0), (2, 0x1000, 0), (4, 0x200, 0xE00)], 16, 3, 3),
    "a bvec crossing a page boundary": ([(0, 0x1000, 0x200)], 16, 2, 2),
    "a multi-page bvec": ([(0, 0x3000, 0)], 16, 3, 3),
    "a multi-page bvec, capped": ([(0, 0x3000, 0)], 2, 2, 2),
    "zero-length bvec at offset 0": ([(0, 0x1000, 0), (2, 0, 0), (4, 0x1000, 0)], 16, 2, 2),
    # [6.x] bvec_npages() adds DIV_ROUND_UP(offset + 0, PAGE_SIZE) for it
    "zero-length bvec at offset 0x200": (
        [(0, 0x1000, 0), (2, 0, 0x200), (4, 0x1000, 0)], 16, 2, 3),
}


@pytest.mark.parametrize("case", list(NPAGES_BVEC))
def test_npages_bvec(k: Kernel, case: str) -> None:
    bv, maxpages, w59, w6x = NPAGES_BVEC[case]
    rows = [(0x600 + pg, n, off) for pg, n, off in bv]
    it = iov_iter_bvec(k.pgdat, ITER_DEST, rows, len(rows), sum(n for _p, n, _o in bv))
    assert iov_iter_npages(it, maxpages) == (w6x if fam(k) == "6.x" else w59)


# --- iov_iter_alignment (item 16) ----------------------------------------------------------
ALIGN = {
    "item 16": ([(0x1000, 0x200), (0x3000, 0x400)], [], 0x3600),
    "zero-length segments at odd addresses are ignored": (
        [(0x1000, 0x200), (0x3001, 0), (0x3000, 0x400), (0x5003, 0)], [], 0x3600),
    "truncated inside the second segment": (
        [(0x1000, 0x200), (0x3000, 0x400)], [("trunc", 0x300)], 0x3300),
    "advanced 0x1ff into the first": (
        [(0x1000, 0x200), (0x3000, 0x400)], [("adv", 0x1FF)], 0x35FF),
    "advanced exactly past the first": (
        [(0x1000, 0x200), (0x3000, 0x400)], [("adv", 0x200)], 0x3400),
    "0xfff and 0x1001": ([(0x1000, 0xFFF), (0x2FFF, 0x1001)], [], 0x3FFF),
    "page aligned": ([(0x2000, 0x1000), (0x4000, 0x1000)], [], 0x7000),
}


@pytest.mark.parametrize("kind", ["IOVEC", "KVEC"])
@pytest.mark.parametrize("case", list(ALIGN))
def test_alignment_table(k: Kernel, kind: str, case: str) -> None:
    segs, ops, want = ALIGN[case]
    it = make(k, kind, segs)
    for op, arg in ops:
        apply(it, op, arg)
    got = iov_iter_alignment(it)
    assert got == (want | KBASE if kind == "KVEC" else want)
    if case == "item 16":
        assert not got & 0x1FF and got & 0xFFF == 0x600


@pytest.mark.parametrize(
    "buf,count,adv,want",
    [(0x1000, 0x1FF, 0, 0x11FF), (0x1200, 0x1000, 0, 0x1200), (0x1200, 0x1000, 0x200, 0x1E00),
     (0x1200, 0x1000, 0x1000, 0)],
)
def test_alignment_ubuf(k6: Kernel, buf: int, count: int, adv: int, want: int) -> None:
    it = iov_iter_ubuf(k6.pgdat, ITER_DEST, buf, count, k6.spawn().mm)
    iov_iter_advance(it, adv)
    assert iov_iter_alignment(it) == want


# (bvecs as (page index, len, offset), advance, [5.9], [6.x]): [5.9] ORs the single-page
# pieces iterate_bvec hands its step; [6.x] iov_iter_alignment_bvec ORs whole bvecs.
ALIGN_BVEC = {
    "single-page bvecs": ([(0, 0x200, 0x200), (2, 0xE00, 0x200)], 0, 0xE00, 0xE00),
    "multi-page bvec": ([(0, 0x2000, 0)], 0, 0x1000, 0x2000),
    "multi-page bvec at 0x200": ([(0, 0x2000, 0x200)], 0, 0x1E00, 0x2200),
    "multi-page bvec advanced a page": ([(0, 0x2000, 0x100)], 0x1000, 0xF00, 0x1100),
    "zero-length bvec at offset 3": (
        [(0, 0x1000, 0), (2, 0, 3), (4, 0x1000, 0)], 0, 0x1000, 0x1003),
}


@pytest.mark.parametrize("case", list(ALIGN_BVEC))
def test_alignment_bvec(k: Kernel, case: str) -> None:
    bv, adv, w59, w6x = ALIGN_BVEC[case]
    rows = [(0x600 + pg, n, off) for pg, n, off in bv]
    it = iov_iter_bvec(k.pgdat, ITER_DEST, rows, len(rows), sum(n for _p, n, _o in bv))
    iov_iter_advance(it, adv)
    assert iov_iter_alignment(it) == (w6x if fam(k) == "6.x" else w59)


# --- iov_iter_gap_alignment ----------------------------------------------------------------
# [5.9]: each piece's start once res != 0, | the bytes left at each piece but the last.
# [6.x]: each later non-empty segment's start | the previous one's end; iov_offset ignored.
GAP = {
    "two segments": ([(0x1000, 0x200), (0x3000, 0x400)], [], 0x3600, 0x3200),
    "one segment": ([(0x1200, 0x200)], [], 0, 0),
    "three segments": (
        [(0x1000, 0x1000), (0x3000, 0x1000), (0x5000, 0x200)], [], 0x7200, 0x7000),
    "zero-length middle": ([(0x1000, 0x1000), (0x2345, 0), (0x3000, 0x1000)], [], 0x3000, 0x3000),
    "advanced into the first": (
        [(0x1000, 0x1000), (0x3000, 0x1000)], [("adv", 0x800)], 0x3800, 0x3000),
    "truncated into the second": (
        [(0x1000, 0x1000), (0x3000, 0x1000), (0x5000, 0x1000)], [("trunc", 0x1800)],
        0x3800, 0x3000),
}


@pytest.mark.parametrize("case", list(GAP))
def test_gap_alignment_iovec(k: Kernel, case: str) -> None:
    segs, ops, w59, w6x = GAP[case]
    it = make(k, "IOVEC", segs)
    for op, arg in ops:
        apply(it, op, arg)
    assert iov_iter_gap_alignment(it) == (w6x if fam(k) == "6.x" else w59)
    assert k.events.events == []


def test_gap_alignment_other_types(k: Kernel) -> None:
    kv = make(k, "KVEC", [(0x1000, 0x1000), (0x3000, 0x200)])
    bv = make(k, "BVEC", [(0x200, 0x200), (0x2000, 0x400)])
    disc = iov_iter_discard(k.pgdat, ITER_DEST, 0x200)
    if fam(k) == "6.x":
        # only ITER_IOVEC makes sense; everything else WARNs
        assert iov_iter_gap_alignment(kv) == UINT_MAX
        assert iov_iter_gap_alignment(bv) == UINT_MAX
        assert iov_iter_gap_alignment(disc) == UINT_MAX
        ub = iov_iter_ubuf(k.pgdat, ITER_DEST, 0x1001, 0x200, k.spawn().mm)
        assert iov_iter_gap_alignment(ub) == 0
        assert len(k.events.of_kind("WARN")) == 3
        return
    assert iov_iter_gap_alignment(kv) == (KBASE + 0x3000) | 0x1200
    assert iov_iter_gap_alignment(bv) == 0x600  # pieces (0x200, 0x200), (0, 0x400)
    assert k.events.events == []
    assert iov_iter_gap_alignment(disc) == UINT_MAX
    assert [(e.kind, e.site) for e in k.events.events] == [("WARN", "iov_iter_gap_alignment")]


# --- iov_iter_is_aligned [6.0+] (6.18 only) ----------------------------------------------
IS_ALIGNED = [
    ("item 16, dma 512, lbs 512", [(0x1000, 0x200), (0x3000, 0x400)], [], 0x1FF, 0x1FF, True),
    ("item 16, dma 4096", [(0x1000, 0x200), (0x3000, 0x400)], [], 0xFFF, 0x1FF, True),
    ("item 16, lbs 4096", [(0x1000, 0x200), (0x3000, 0x400)], [], 0x1FF, 0xFFF, False),
    ("odd address, dma 4", [(0x1001, 0x200)], [], 3, 0x1FF, False),
    ("odd address, no dma alignment", [(0x1001, 0x200)], [], 0, 0x1FF, True),
    ("zero-length middle at an odd address",
     [(0x1000, 0x200), (0x2001, 0), (0x3000, 0x200)], [], 3, 0x1FF, False),
    ("zero-length middle, no dma alignment",
     [(0x1000, 0x200), (0x2001, 0), (0x3000, 0x200)], [], 0, 0x1FF, True),
    ("zero-length after the end is not reached", [(0x1000, 0x200), (0x2001, 0)], [], 3, 0x1FF,
     True),
    ("truncated to 0x300", [(0x1000, 0x200), (0x3000, 0x400)], [("trunc", 0x300)], 0x1FF,
     0x1FF, False),
    ("truncated to 0x300, lbs 256", [(0x1000, 0x200), (0x3000, 0x400)], [("trunc", 0x300)],
     0x1FF, 0xFF, True),
    ("advanced 0x1ff", [(0x1000, 0x200), (0x3000, 0x400)], [("adv", 0x1FF)], 0, 0, True),
    ("advanced 0x1ff, lbs 512", [(0x1000, 0x200), (0x3000, 0x400)], [("adv", 0x1FF)], 0,
     0x1FF, False),
]


@pytest.mark.parametrize("kind", ["IOVEC", "KVEC"])
@pytest.mark.parametrize("case", IS_ALIGNED, ids=[c[0] for c in IS_ALIGNED])
def test_is_aligned(k6: Kernel, kind: str, case: tuple) -> None:
    _name, segs, ops, addr_mask, len_mask, want = case
    it = make(k6, kind, segs)
    for op, arg in ops:
        apply(it, op, arg)
    assert iov_iter_is_aligned(it, addr_mask, len_mask) is want


def test_is_aligned_bvec_and_ubuf(k6: Kernel) -> None:
    k = k6
    bv = make(k, "BVEC", [(0x200, 0xE00), (0x2000, 0x400)])
    assert iov_iter_is_aligned(bv, 0x1FF, 0x1FF) is True
    assert iov_iter_is_aligned(bv, 0x3FF, 0x1FF) is False  # offset 0x200
    iov_iter_advance(bv, 0xC00)  # now 0x200 left of the first bvec at offset 0xe00
    assert iov_iter_is_aligned(bv, 0x1FF, 0x1FF) is True
    iov_iter_advance(bv, 0x100)  # 0x100 left of it: length check fails
    assert iov_iter_is_aligned(bv, 0, 0x1FF) is False
    mm = k.spawn().mm
    assert iov_iter_is_aligned(iov_iter_ubuf(k.pgdat, ITER_DEST, 0x1200, 0x400, mm), 0x1FF,
                               0x1FF) is True
    assert iov_iter_is_aligned(iov_iter_ubuf(k.pgdat, ITER_DEST, 0x1200, 0x400, mm), 0x3FF,
                               0x1FF) is False
    assert iov_iter_is_aligned(iov_iter_ubuf(k.pgdat, ITER_DEST, 0x1200, 0x401, mm), 0x1FF,
                               0) is True
    assert iov_iter_is_aligned(iov_iter_ubuf(k.pgdat, ITER_DEST, 0x1200, 0x401, mm), 0,
                               0x1FF) is False


# --- byte copies -------------------------------------------------------------------------
def pattern(n: int, seed: int = 1) -> bytes:
    return ((np.arange(n) * 7 + seed) % 251 + 1).astype(np.uint8).tobytes()


def test_copy_to_and_from_user_iovec(k: Kernel, snapshot) -> None:
    p = k.spawn()
    a = p.mmap(3 * P)
    p.write_user(a, b"\0" * 3 * P)  # fault in: copies then move bytes only
    iov = [(a + 0xFFE, 2), (a + 0x1FF, 0), (a + 0x1001, 0x1FFF), (a, 0)]
    data = pattern(0x2001)
    before = snapshot(k)
    it = iov_iter_init(k.pgdat, ITER_DEST, iov, 4, 0x2001, p.mm)
    assert copy_to_iter(data, it) == 0x2001
    assert state(it) == ((4, 0, 0, 0) if fam(k) == "6.x" else (3, 0, 0, 1))
    assert p.read_user(a + 0xFFE, 2) == data[:2]
    assert p.read_user(a + 0x1000, 1) == b"\0"  # between the two segments: untouched
    assert p.read_user(a + 0x1001, 0x1FFF) == data[2:]
    src = iov_iter_init(k.pgdat, ITER_SOURCE, iov, 4, 0x2001, p.mm)
    n, got = copy_from_iter(0x1FF, src)
    assert (n, got) == (0x1FF, data[:0x1FF])
    assert state(src) == (2, 0x1FD, 0x1E02, 2)
    n, got = copy_from_iter(0x10000, src)
    assert (n, got) == (0x1E02, data[0x1FF:])
    before.assert_restored(k)  # copies take no reference


def test_copy_to_iter_stops_at_a_read_only_page(k: Kernel) -> None:
    p = k.spawn()
    a = p.mmap(2 * P)
    p.mprotect(a + P, P, PROT_READ)
    it = iov_iter_init(k.pgdat, ITER_DEST, [(a + 0xF00, 0x200)], 1, 0x200, p.mm)
    assert copy_to_iter(pattern(0x200), it) == 0x100
    assert state(it) == (0, 0x100, 0x100, 1)
    assert p.read_user(a + 0xF00, 0x200) == pattern(0x200)[:0x100] + b"\0" * 0x100
    two = iov_iter_init(k.pgdat, ITER_DEST, [(a + 0xF00, 0x100), (a + P, 0x100)], 2, 0x200,
                        p.mm)
    assert copy_to_iter(pattern(0x200, 9), two) == 0x100
    assert state(two) == (1, 0, 0x100, 1)
    assert iov_iter_zero(0x100, two) == 0  # nothing more goes in
    assert iov_iter_count(two) == 0x100


def test_copy_from_iter_stops_at_an_unmapped_page(k: Kernel) -> None:
    p = k.spawn()
    a = p.mmap(2 * P)
    p.write_user(a, pattern(2 * P))
    p.munmap(a + P, P)
    it = iov_iter_init(k.pgdat, ITER_SOURCE, [(a + 0xFFF, 0x1001)], 1, 0x1001, p.mm)
    assert copy_from_iter(0x1001, it) == (1, pattern(2 * P)[0xFFF:0x1000])
    assert state(it) == (0, 1, 0x1000, 1)


def test_iov_iter_zero_user(k: Kernel) -> None:
    p = k.spawn()
    a = p.mmap(2 * P)
    p.write_user(a, b"\xff" * 2 * P)
    it = iov_iter_init(k.pgdat, ITER_DEST, [(a + 0x7FF, 0x1001)], 1, 0x1001, p.mm)
    assert iov_iter_zero(0x2000, it) == 0x1001
    assert state(it) == ((1, 0, 0, 0))
    mem = p.read_user(a, 2 * P)
    assert mem == b"\xff" * 0x7FF + b"\0" * 0x1001 + b"\xff" * (2 * P - 0x1800)


def test_copy_kvec_direct_map(k: Kernel, snapshot) -> None:
    pg = k.pgdat
    p1, p2, big = alloc_pages(pg, 0), alloc_pages(pg, 0), alloc_pages(pg, 1)
    va = lambda pfn: PAGE_OFFSET + pfn * P  # noqa: E731
    kv = [(va(p1) + 0xE00, 0x200), (va(p2), 0), (va(p2) + 0x1FF, 0x201), (va(big) + 0xFFF, 2)]
    data = pattern(0x403)
    before = snapshot(k)
    it = iov_iter_kvec(pg, ITER_DEST, kv, 4, 0x403)
    assert copy_to_iter(data, it) == 0x403
    assert state(it) == (4, 0, 0, 0)
    f = pg.mem.frames
    assert f[p1, 0xE00:].tobytes() == data[:0x200]
    assert f[p2, 0x1FF:0x400].tobytes() == data[0x200:0x401]
    assert (f[big, 0xFFF], f[big + 1, 0]) == (data[0x401], data[0x402])
    src = iov_iter_kvec(pg, ITER_SOURCE, kv, 4, 0x403)
    iov_iter_advance(src, 0x1FF)
    assert copy_from_iter(0x1000, src) == (0x204, data[0x1FF:])
    before.assert_restored(k)


def test_copy_bvec_over_allocated_pages(k: Kernel, snapshot) -> None:
    pg = k.pgdat
    big, one = alloc_pages(pg, 1), alloc_pages(pg, 0)
    bv = [(big, 0x1001, 0xFFF), (one, 0, 0x200), (one, 0x200, 0xE00)]
    data = pattern(0x1201)
    before = snapshot(k)
    it = iov_iter_bvec(pg, ITER_DEST, bv, 3, 0x1201)
    assert copy_to_iter(data, it) == 0x1201
    f = pg.mem.frames
    assert f[big, 0xFFF] == data[0]
    assert f[big + 1, :0x1000].tobytes() == data[1:0x1001]
    assert f[one, 0xE00:].tobytes() == data[0x1001:]
    assert state(it) == ((3, 0, 0, 0))
    src = iov_iter_bvec(pg, ITER_SOURCE, bv, 3, 0x1201)
    iov_iter_advance(src, 0x1001)
    assert state(src) == ((1, 0, 0x200, 2) if fam(k) == "5.9" else (2, 0, 0x200, 1))
    assert copy_from_iter(0x1FF, src) == (0x1FF, data[0x1001:0x1200])
    assert iov_iter_zero(5, src) == 1
    assert f[one, 0xFFF] == 0
    before.assert_restored(k)


def test_copy_ubuf(k6: Kernel) -> None:
    k = k6
    p = k.spawn()
    a = p.mmap(2 * P)
    it = iov_iter_ubuf(k.pgdat, ITER_DEST, a + 0xFF0, 0x20, p.mm)
    assert copy_to_iter(pattern(0x20), it) == 0x20
    assert state(it) == (0, 0x20, 0, 1)
    assert p.read_user(a + 0xFF0, 0x20) == pattern(0x20)
    src = iov_iter_ubuf(k.pgdat, ITER_SOURCE, a + 0xFF0, 0x20, p.mm)
    assert copy_from_iter(0x11, src) == (0x11, pattern(0x20)[:0x11])
    assert state(src) == (0, 0x11, 0xF, 1)

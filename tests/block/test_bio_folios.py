"""The folio walk of the dirty and release passes (:func:`dioscope.block.bio._bvec_folios`:
one step per bvec lying in one folio, as 6.18's ``bio_for_each_folio_all()`` +
``unpin_user_folio(folio, nr_pages)``) must leave exactly what the page walk leaves, in every
profile: page flags (PG_dirty), refcounts, pincounts, pin counters, whether
``bio_check_pages_dirty`` defers the bio, and which frames are free afterwards (pages
unmapped during the I/O are freed by the unpin)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dioscope.block import bio as bio_mod
from dioscope.block.bio import (
    bio_alloc,
    bio_check_pages_dirty,
    bio_dirty_deferred,
    bio_iov_iter_get_pages,
    bio_release_pages,
    bio_set_pages_dirty,
)
from dioscope.block.blk_types import BIO_FLAG, Bio
from dioscope.block.devices import MemDevice
from dioscope.kernel.types import HPAGE_PMD_SIZE, PAGE_SIZE
from dioscope.lib.iov_iter import ITER_DEST, iov_iter_count, iov_iter_init
from dioscope.machine import Kernel
from dioscope.mm.gup_core import FOLL, try_grab_pages
from dioscope.mm.mmap import MADV_HUGEPAGE
from dioscope.mm.page import PG
from dioscope.mm.page_alloc import alloc_pages
from dioscope.mm.page_ref import put_page
from dioscope.sanitizer import Sanitizer
from dioscope.syscalls.process import Process

SMALL = 16  # small pages after the THP
SPAN = HPAGE_PMD_SIZE + SMALL * PAGE_SIZE


def _draw_segs(data: st.DataObject, most: int, max_pages: int) -> list[tuple[int, int]]:
    """1..``most`` iovecs (offset, length; 512-byte multiples, at most ``max_pages`` pages)
    in the buffer, half of them starting near or among the small pages."""
    near_small = (HPAGE_PMD_SIZE - 4 * PAGE_SIZE) // 512  # the last THP pages, the small ones
    segs = []
    for _ in range(data.draw(st.integers(1, most))):
        off = data.draw(st.one_of(st.integers(0, SPAN // 512 - 1),
                                  st.integers(near_small, SPAN // 512 - 1))) * 512
        n = data.draw(st.integers(1, min(max_pages * PAGE_SIZE, SPAN - off) // 512)) * 512
        segs.append((off, n))
    return segs


def _thp_then_small(k: Kernel, order: list[int]) -> tuple[Process, int]:
    """A process whose buffer is one PMD-mapped THP followed by ``SMALL`` small pages,
    faulted in ``order`` (physical contiguity follows it, now and then)."""
    proc = k.spawn()
    raw = proc.mmap(3 * HPAGE_PMD_SIZE)
    buf = (raw + HPAGE_PMD_SIZE - 1) & ~(HPAGE_PMD_SIZE - 1)
    proc.madvise(buf, HPAGE_PMD_SIZE, MADV_HUGEPAGE)
    proc.touch(buf, HPAGE_PMD_SIZE, write=True)
    for i in order:
        proc.touch(buf + HPAGE_PMD_SIZE + i * PAGE_SIZE, PAGE_SIZE, write=True)
    return proc, buf



def _run(folios: bool, profile: str, order: list[int], segs: list[tuple[int, int]],
         clean: list[int], unmap: bool, monkeypatch: pytest.MonkeyPatch) -> tuple:
    """A buffer of one THP followed by ``SMALL`` small pages (faulted in ``order``); one READ
    bio from the iovec ``segs`` (offset, length); dirty it, clean the pages at buffer page
    indexes ``clean`` (writeback during the I/O), optionally unmap the buffer, then check and
    release. Return: everything the passes leave."""
    monkeypatch.setattr(bio_mod, "_FEW_BVECS", 4 if folios else -1)
    k = Kernel("32M", profile)
    proc, buf = _thp_then_small(k, order)
    dev = MemDevice(k.pgdat, 8 << 20)
    iov = [(buf + o, n) for o, n in segs]
    total = sum(n for _o, n in segs)
    it = iov_iter_init(k.pgdat, ITER_DEST, iov, len(iov), total, proc.mm)
    bio = bio_alloc(dev, 256, 0, k.pgdat)
    assert bio is not None
    assert bio_iov_iter_get_pages(bio, it) == 0
    p = k.pgdat.pages
    bio_set_pages_dirty(bio)
    dirtied = p.flags.tobytes()
    vma = proc.mm.vma_lookup(buf)
    for i in clean:
        v = proc.mm.vma_lookup(buf + i * PAGE_SIZE)
        assert v is not None and vma is not None
        pfn = int(v.pt_pfn[(buf + i * PAGE_SIZE - v.vm_start) // PAGE_SIZE])
        p.flags[p.head[pfn]] &= np.uint32(~int(PG.PG_dirty) & 0xFFFFFFFF)
    if unmap:
        proc.munmap(buf, HPAGE_PMD_SIZE + SMALL * PAGE_SIZE)
    bio_check_pages_dirty(bio)
    k.pgdat.system_wq.flush()  # bio_dirty_fn(): re-dirty and release a deferred bio
    return (bio.bi_vcnt, dirtied, bio_dirty_deferred(k.pgdat), k.vmstat.pins(),
            p.flags.tobytes(), p.refcount.tobytes(), p.pincount.tobytes(),
            k.pgdat.buddy_order.tobytes())


@settings(max_examples=120, deadline=None)
@given(data=st.data())
def test_folio_walk_equals_page_walk(data: st.DataObject) -> None:
    """(In 6.18 the re-dirtying release always walks folios, :func:`_folio_walk` in both
    runs; that walk is checked against a plain one below.)"""
    profile = data.draw(st.sampled_from(["5.9", "5.9-pin", "6.18"]))
    order = data.draw(st.permutations(range(SMALL)))
    segs = _draw_segs(data, 3, 256)
    clean = data.draw(st.lists(st.integers(0, SPAN // PAGE_SIZE - 1), max_size=3))
    unmap = data.draw(st.booleans())
    with pytest.MonkeyPatch.context() as mp:
        pages = _run(False, profile, order, segs, clean, unmap, mp)
        folios = _run(True, profile, order, segs, clean, unmap, mp)
    assert folios == pages


@pytest.mark.parametrize("profile", ["5.9", "5.9-pin", "6.18"])
def test_one_thp_bvec(profile: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """256 pages of one THP in one bvec, dirtied, checked, released: one folio step each.
    Pins: 256 acquired and 256 released ([5.9]: references, no pins). The THP's head is
    dirty afterwards in every profile (touched for write; [5.9] skips compound pages,
    [6.18] dirties the folio), so nothing is deferred."""
    out = _run(True, profile, list(range(SMALL)), [(0, 256 * PAGE_SIZE)], [], False,
               monkeypatch)
    vcnt, _dirtied, deferred, (acq, rel), *_ = out
    assert vcnt == 1 and deferred == 0
    assert (acq, rel) == ((0, 0) if profile == "5.9" else (256, 256))
    assert out == _run(False, profile, list(range(SMALL)), [(0, 256 * PAGE_SIZE)], [], False,
                       monkeypatch)


def _reference_walk(bio: Bio) -> list[tuple[int, int, int]]:
    """``bio_for_each_folio_all()`` written the plain way: each bvec's pages, one piece per
    run of pages with the same folio head."""
    head = bio.pgdat.pages.head
    out: list[tuple[int, int, int]] = []
    for page, lo in bio.bi_io_vec[: bio.bi_vcnt].tolist():
        off, length = lo & 0xFFFFFFFF, lo >> 32
        first = page + off // PAGE_SIZE
        for pg in range(first, first + (off % PAGE_SIZE + length + PAGE_SIZE - 1) // PAGE_SIZE):
            h = int(head[pg])
            if out and out[-1][0] == h and out[-1][1] + out[-1][2] == pg and pg != first:
                out[-1] = (h, out[-1][1], out[-1][2] + 1)
            else:
                out.append((h, pg, 1))
    return out


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_folio_walk_matches_the_plain_walk(data: st.DataObject) -> None:
    """Both forms of :func:`_folio_walk` (few bvecs; the array form) equal the plain walk,
    for bios mixing THP and small pages, in many bvecs or few."""
    order = data.draw(st.permutations(range(SMALL)))
    _check_walk(order, _draw_segs(data, 6, 64))


def _check_walk(order: list[int], segs: list[tuple[int, int]]) -> None:
    _k, bio = _bio(order, segs)
    want = _reference_walk(bio)
    for few in (4, -1):
        bio.folios_key = None
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(bio_mod, "_FEW_BVECS", few)
            assert bio_mod._folio_walk(bio) == want


@pytest.mark.parametrize("order", [list(range(SMALL)), list(range(SMALL))[::-1]],
                         ids=["ascending", "descending"])
@pytest.mark.parametrize("segs", [
    [(HPAGE_PMD_SIZE, SMALL * PAGE_SIZE)],  # small pages only: multi-page bvecs of them
    [(HPAGE_PMD_SIZE - 2 * PAGE_SIZE, 6 * PAGE_SIZE)],  # across the THP's end
    [(0, 2 * PAGE_SIZE), (8 * PAGE_SIZE, 512), (HPAGE_PMD_SIZE + 512, 3 * PAGE_SIZE)],
], ids=["small", "thp-edge", "mixed"])
def test_folio_walk_fixed_cases(order: list[int], segs: list[tuple[int, int]]) -> None:
    """The awkward shapes, always: bvecs spanning several small folios (physically
    consecutive small pages), and a bvec crossing from a THP into small pages."""
    _check_walk(order, segs)


def _bio(order: list[int], segs: list[tuple[int, int]]) -> tuple[Kernel, Bio]:
    k = Kernel("32M", "6.18")
    proc, buf = _thp_then_small(k, order)
    iov = [(buf + o, n) for o, n in segs]
    it = iov_iter_init(k.pgdat, ITER_DEST, iov, len(iov), sum(n for _o, n in segs), proc.mm)
    bio = bio_alloc(MemDevice(k.pgdat, 8 << 20), 256, 0, k.pgdat)
    assert bio is not None
    while iov_iter_count(it) and bio.bi_vcnt < bio.bi_max_vecs:
        if bio_iov_iter_get_pages(bio, it):
            break
    return k, bio


@pytest.mark.parametrize("profile", ["5.9", "5.9-pin", "6.18"])
def test_dirtying_is_reported_per_folio_in_6_18(profile: str) -> None:
    """Two iovecs inside one THP (pages 0-3 and 8-11: two bvecs) and one small page, read:
    with a tracer listening, [6.18] locks and dirties each folio piece once (three
    ``set_page_dirty_lock``: the THP twice, one per bvec, and the small page), on
    submission and again when the deferred work re-dirties them; [5.9]/[5.9-pin] dirty page
    by page and skip the THP's compound pages (one event, the small page)."""
    k = Kernel("32M", profile)
    proc, buf = _thp_then_small(k, [0])
    small = buf + HPAGE_PMD_SIZE
    iov = [(buf, 4 * PAGE_SIZE), (buf + 8 * PAGE_SIZE, 4 * PAGE_SIZE), (small, PAGE_SIZE)]
    it = iov_iter_init(k.pgdat, ITER_DEST, iov, 3, 9 * PAGE_SIZE, proc.mm)
    bio = bio_alloc(MemDevice(k.pgdat, 8 << 20), 256, 0, k.pgdat)
    assert bio is not None
    while iov_iter_count(it):
        assert bio_iov_iter_get_pages(bio, it) == 0
    assert bio.bi_vcnt == 3
    calls: list[int] = []
    k.pgdat.hooks.tracepoints.append(
        lambda name, f: calls.append(int(f["pfn"])) if name == "set_page_dirty_lock" else None)
    bio_set_pages_dirty(bio)
    p = k.pgdat.pages
    vma = proc.mm.vma_lookup(small)
    assert vma is not None
    spfn = int(vma.pt_pfn[(small - vma.vm_start) // PAGE_SIZE])
    vma = proc.mm.vma_lookup(buf)
    assert vma is not None
    thp = int(p.head[vma.pt_pfn[(buf - vma.vm_start) // PAGE_SIZE]])
    want = [thp, thp, spfn] if profile == "6.18" else [spfn]
    assert calls == want
    calls.clear()
    p.flags[spfn] &= np.uint32(~int(PG.PG_dirty) & 0xFFFFFFFF)  # written back meanwhile
    bio_check_pages_dirty(bio)
    assert bio_dirty_deferred(k.pgdat) == 0 and calls == []
    k.pgdat.system_wq.flush()
    assert bio_dirty_deferred(k.pgdat) == 1 and calls == want
    acq, rel = k.vmstat.pins()
    assert (acq, rel) == ((0, 0) if profile == "5.9" else (9, 9))


def _next_frame_after_release(profile: str, few: int, sanitized: bool, mark_dirty: bool,
                              monkeypatch: pytest.MonkeyPatch) -> int:
    """Two pinned pages held by nothing else, in bvec order higher pfn first, released by
    the bio; return the frame the allocator hands out next."""
    monkeypatch.setattr(bio_mod, "_FEW_BVECS", few)
    k = Kernel("32M", profile)
    pg = k.pgdat
    san = Sanitizer(pg) if sanitized else None
    pfns = sorted(alloc_pages(pg, 0) for _ in range(8))
    a, b = pfns[1], pfns[6]  # their buddies pfns[0] and pfns[7] stay allocated
    bio = bio_alloc(MemDevice(pg, 1 << 20), 2, 0, pg)
    assert bio is not None
    for x in (b, a):
        assert try_grab_pages(pg, np.array([x]), int(FOLL.FOLL_PIN), bio.holder, "t") == 1
        put_page(pg, x, holder=None, site="t")  # only the bio's pin keeps it now
        bio.set_bvec(bio.bi_vcnt, x, PAGE_SIZE, 0)
        bio.bi_vcnt += 1
    bio.bio_set_flag(BIO_FLAG.BIO_PAGE_PINNED)
    bio_release_pages(bio, mark_dirty)
    assert int(pg.pages.refcount[a]) == int(pg.pages.refcount[b]) == 0
    if san is not None:
        san.detach()
    return alloc_pages(pg, 0)


@pytest.mark.parametrize("profile", ["5.9-pin", "6.18"])
def test_folios_freed_by_the_release_leave_the_allocator_as_the_page_walk_does(
        profile: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Folios the release frees go back in the same order (pfn order) whichever path
    releases them (folio walk, page walk, sanitizer attached, re-dirtying or not): the next
    allocation gets the same frame."""
    got = {(few, san, md): _next_frame_after_release(profile, few, san, md, monkeypatch)
           for few in (4, -1) for san in (False, True) for md in (False, True)}
    assert len(set(got.values())) == 1, got

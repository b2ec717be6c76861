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
    bio_set_pages_dirty,
)
from dioscope.block.devices import MemDevice
from dioscope.kernel.types import HPAGE_PMD_SIZE, PAGE_SIZE
from dioscope.lib.iov_iter import ITER_DEST, iov_iter_init
from dioscope.machine import Kernel
from dioscope.mm.mmap import MADV_HUGEPAGE
from dioscope.mm.page import PG

SMALL = 16  # small pages after the THP


def _run(folios: bool, profile: str, order: list[int], segs: list[tuple[int, int]],
         clean: list[int], unmap: bool, monkeypatch: pytest.MonkeyPatch) -> tuple:
    """A buffer of one THP followed by ``SMALL`` small pages (faulted in ``order``); one READ
    bio from the iovec ``segs`` (offset, length); dirty it, clean the pages at buffer page
    indexes ``clean`` (writeback during the I/O), optionally unmap the buffer, then check and
    release. Return: everything the passes leave."""
    monkeypatch.setattr(bio_mod, "_FEW_BVECS", 4 if folios else -1)
    k = Kernel("32M", profile)
    proc = k.spawn()
    raw = proc.mmap(3 * HPAGE_PMD_SIZE)
    buf = (raw + HPAGE_PMD_SIZE - 1) & ~(HPAGE_PMD_SIZE - 1)
    proc.madvise(buf, HPAGE_PMD_SIZE, MADV_HUGEPAGE)
    proc.touch(buf, HPAGE_PMD_SIZE, write=True)
    for i in order:
        proc.touch(buf + HPAGE_PMD_SIZE + i * PAGE_SIZE, PAGE_SIZE, write=True)
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
        proc.munmap(raw, 3 * HPAGE_PMD_SIZE)
    bio_check_pages_dirty(bio)
    k.pgdat.system_wq.flush()  # bio_dirty_fn(): re-dirty and release a deferred bio
    return (bio.bi_vcnt, dirtied, bio_dirty_deferred(k.pgdat), k.vmstat.pins(),
            p.flags.tobytes(), p.refcount.tobytes(), p.pincount.tobytes(),
            k.pgdat.buddy_order.tobytes())


@settings(max_examples=120, deadline=None)
@given(data=st.data())
def test_folio_walk_equals_page_walk(data: st.DataObject) -> None:
    profile = data.draw(st.sampled_from(["5.9", "5.9-pin", "6.18"]))
    order = data.draw(st.permutations(range(SMALL)))
    span = HPAGE_PMD_SIZE + SMALL * PAGE_SIZE
    segs = []
    for _ in range(data.draw(st.integers(1, 3))):
        off = data.draw(st.integers(0, span // 512 - 1)) * 512
        n = data.draw(st.integers(1, min(256 * PAGE_SIZE, span - off) // 512)) * 512
        segs.append((off, n))
    clean = data.draw(st.lists(st.integers(0, span // PAGE_SIZE - 1), max_size=3))
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

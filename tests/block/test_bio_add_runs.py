"""[6.18] ``__bio_iov_iter_get_pages()``: the array form of the page walk
(:func:`dioscope.block.bio._bio_add_extracted_runs`, used from ``_VEC_ADD_MIN`` extracted
pages on) must leave exactly what the walk leaves: bvecs, ``bi_size``, the iterator's
position, and every pin (including the same-page pin dropped on a merge and the pins of pages
that did not fit)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dioscope.block import bio as bio_mod
from dioscope.block.bio import bio_alloc, bio_iov_iter_get_pages, bio_release_pages
from dioscope.block.devices import MemDevice
from dioscope.kernel.types import HPAGE_PMD_SIZE, PAGE_SIZE
from dioscope.lib.iov_iter import ITER_DEST, iov_iter_init
from dioscope.machine import Kernel
from dioscope.mm.mmap import MADV_HUGEPAGE

NPAGES = 48


def _build(walk: bool, order: list[int] | None, segs: list[tuple[int, int]], max_vecs: int,
           monkeypatch: pytest.MonkeyPatch) -> tuple:
    """Fault the buffer's pages in ``order`` (physical contiguity follows it, now and then),
    or (``order`` None) make it the start of a THP (physically contiguous, one folio); fill
    one bio from the iovec ``segs`` (offset, length within the buffer); return everything it
    left."""
    monkeypatch.setattr(bio_mod, "_VEC_ADD_MIN", 1 << 30 if walk else 1)
    k = Kernel("32M", "6.18")
    proc = k.spawn()
    if order is None:
        raw = proc.mmap(2 * HPAGE_PMD_SIZE)
        buf = (raw + HPAGE_PMD_SIZE - 1) & ~(HPAGE_PMD_SIZE - 1)
        proc.madvise(buf, HPAGE_PMD_SIZE, MADV_HUGEPAGE)
        proc.touch(buf, HPAGE_PMD_SIZE, write=True)
    else:
        buf = proc.mmap(NPAGES * PAGE_SIZE)
        for i in order:
            proc.touch(buf + i * PAGE_SIZE, PAGE_SIZE, write=True)
    dev = MemDevice(k.pgdat, 8 << 20)
    iov = [(buf + o, n) for o, n in segs]
    total = sum(n for _o, n in segs)
    it = iov_iter_init(k.pgdat, ITER_DEST, iov, len(iov), total, proc.mm)
    bio = bio_alloc(dev, max_vecs, 0, k.pgdat)
    assert bio is not None
    ret = bio_iov_iter_get_pages(bio, it)
    vecs = bio.bi_io_vec[: bio.bi_vcnt].tolist()
    out = (ret, vecs, bio.bi_iter.bi_size, it.count, k.vmstat.pins(),
           k.pgdat.pages.pincount.tobytes(), k.pgdat.pages.refcount.tobytes())
    bio_release_pages(bio, mark_dirty=False)
    acq, rel = k.vmstat.pins()
    assert acq == rel
    return out


@settings(max_examples=80, deadline=None)
@given(data=st.data())
def test_array_form_equals_the_walk(data: st.DataObject) -> None:
    order: list[int] | None = None
    if data.draw(st.booleans()):
        order = data.draw(st.permutations(range(NPAGES)))
    nseg = data.draw(st.integers(1, 3))
    segs = []
    for _ in range(nseg):
        off = data.draw(st.integers(0, NPAGES * PAGE_SIZE - 512)) & ~511
        n = data.draw(st.integers(1, (NPAGES * PAGE_SIZE - off) // 512)) * 512
        segs.append((off, n))
    max_vecs = data.draw(st.sampled_from([1, 2, 3, 5, 8, 64, 256]))
    with pytest.MonkeyPatch.context() as mp:
        walk = _build(True, order, segs, max_vecs, mp)
        arrays = _build(False, order, segs, max_vecs, mp)
    assert walk == arrays


def test_a_continuing_segment_merges_and_drops_its_same_page_pin(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Two iovecs, the second starting mid-page right where the first ended, on physically
    consecutive pages (a THP): one bvec; the page they share is pinned once (pinned twice, the
    second pin dropped at once)."""
    segs = [(0, 10 * PAGE_SIZE + 512), (10 * PAGE_SIZE + 512, 10 * PAGE_SIZE)]
    for walk in (True, False):
        ret, vecs, size, left, (acq, rel), *_ = _build(walk, None, segs, 256, monkeypatch)
        assert ret == 0 and size == 20 * PAGE_SIZE + 512 and left == 0
        assert len(vecs) == 1 and vecs[0][1] == (20 * PAGE_SIZE + 512) << 32
        assert (acq, rel) == (22, 1)


def test_extraction_is_capped_by_the_free_slots(monkeypatch: pytest.MonkeyPatch) -> None:
    """16 pages faulted in reverse (16 runs of one page) into a 4-slot bio: only 4 pages are
    extracted (the page array is the free slots), so every run fits: 4 bvecs, 4 pins, the
    other 12 pages still in the iterator."""
    order = list(range(NPAGES))[::-1]
    for walk in (True, False):
        ret, vecs, size, left, (acq, rel), *_ = _build(walk, order, [(0, 16 * PAGE_SIZE)], 4,
                                                      monkeypatch)
        assert ret == 0 and len(vecs) == 4 and size == 4 * PAGE_SIZE
        assert left == 12 * PAGE_SIZE and (acq, rel) == (4, 0)
        assert np.all(np.array(vecs)[:, 1] == PAGE_SIZE << 32)

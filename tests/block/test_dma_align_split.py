"""[6.18] the dma_alignment check of ``bio_split_io_at`` (Linux commit fec2e705729d), as
measured on the host (docs/research-6.18-bio.md §3.5, §5 rows 1-14): a bio whose bvecs are
not all multiples of dma_alignment + 1 in offset and length ends with BLK_STS_INVAL inside
``submit_bio``; a bio of one in-page bvec is never checked. 5.9 profiles have no such check.
"""

from __future__ import annotations

import numpy as np
import pytest

from dioscope.block.blk_core import submit_bio
from dioscope.block.blk_types import BLK_STS, REQ_OP, Bio
from dioscope.block.devices import MemDevice
from dioscope.machine import Kernel
from dioscope.mm.page_alloc import alloc_pages

INVAL = int(BLK_STS.BLK_STS_INVAL)


def _submit(profile: str, vecs: list[tuple[int, int, int]]) -> int:
    """Submit a READ of ``vecs`` = (page index, offset, len); return the bio's status."""
    k = Kernel("64M", profile)
    dev = MemDevice(k.pgdat, "16M")
    pages = [alloc_pages(k.pgdat, 0) for _ in range(4)]
    bio = Bio(dev, len(vecs), REQ_OP.REQ_OP_READ)
    total = 0
    for j, (pi, off, length) in enumerate(vecs):
        bio.set_bvec(j, pages[pi], length, off)
        total += length
    bio.bi_vcnt = len(vecs)
    bio.bi_iter.bi_size = total
    got: list[int] = []
    bio.bi_end_io = lambda b: got.append(int(b.bi_status))
    submit_bio(bio)
    dev.cq.run()
    assert len(got) == 1
    return got[0]


@pytest.mark.parametrize(
    ("vecs", "status_618"),
    [
        ([(0, 1, 512)], 0),  # row 1 shape: one in-page bvec at offset 1: never checked
        ([(0, 100, 1024)], 0),
        ([(0, 3584, 512)], 0),  # row 3
        ([(0, 0, 256), (0, 1024, 256)], INVAL),  # row 9: same page with a gap: two bvecs
        ([(0, 0, 1536), (1, 0, 2560)], 0),  # row 11: multiples of 512
        ([(0, 0, 1000), (1, 0, 3096)], INVAL),  # row 13
        ([(0, 512, 1536), (1, 1024, 2560)], 0),  # row 14
        ([(0, 1, 100), (1, 0, 412)], INVAL),  # row 29
    ],
)
@pytest.mark.parametrize("profile", ["5.9", "5.9-pin", "6.18"])
def test_dma_alignment_checked_at_split(
    profile: str, vecs: list[tuple[int, int, int]], status_618: int
) -> None:
    expect = status_618 if profile == "6.18" else 0
    assert _submit(profile, vecs) == expect


def test_inval_maps_to_einval() -> None:
    from dioscope.block.bio_completion import blk_status_to_errno

    assert blk_status_to_errno(INVAL) == -22
    assert np.int32(INVAL) == 19

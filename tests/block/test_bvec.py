"""bvec iteration and advancing over (page, len|off) rows, at awkward boundaries."""

from __future__ import annotations

import numpy as np
import pytest

from dioscope.block.blk_types import BvecIter
from dioscope.block.bvec import (
    SMALL,
    bvec_iter_advance,
    bvec_iter_list,
    bvec_iter_phys,
    bvec_iter_rows,
)


def rows(*vecs: tuple[int, int, int]) -> np.ndarray:
    """A bvec array from (page, len, offset) triples."""
    a = np.zeros((len(vecs), 2), np.int64)
    for i, (page, length, off) in enumerate(vecs):
        a[i] = (page, (length << 32) | off)
    return a


# bvecs: 4096 @ page 10, a two-page bvec 8192 - 512 starting 512 into page 20, 512 @ page 30+0x200
BV = rows((10, 4096, 0), (20, 7680, 512), (30, 512, 0x200))


ROW_CASES = [
    (0, 0, 12288, [10, 20, 30], [0, 512, 0x200], [4096, 7680, 512]),
    (0, 0, 4096, [10], [0], [4096]),
    (0, 0, 4097, [10, 20], [0, 512], [4096, 1]),
    (0, 0x1ff, 0x200, [10], [0x1ff], [0x200]),
    (0, 0xfff, 1, [10], [0xfff], [1]),
    (0, 0xfff, 2, [10, 20], [0xfff, 512], [1, 1]),
    (1, 0x1000, 4096, [20, 30], [0x1200, 0x200], [3584, 512]),
    (1, 0x1000, 3584, [20], [0x1200], [3584]),
    (2, 0, 512, [30], [0x200], [512]),
    (0, 0, 0, [], [], []),
]
ROW_FIELDS = ("idx", "done", "size", "pages", "offs", "lens")


@pytest.mark.parametrize(ROW_FIELDS, ROW_CASES)
def test_rows(idx: int, done: int, size: int, pages: list[int], offs: list[int],
              lens: list[int]) -> None:
    p, o, n = bvec_iter_rows(BV, BvecIter(0, size, idx, done))
    assert (p.tolist(), o.tolist(), n.tolist()) == (pages, offs, lens)


@pytest.mark.parametrize(ROW_FIELDS, ROW_CASES)
def test_list_matches_rows(idx: int, done: int, size: int, pages: list[int], offs: list[int],
                           lens: list[int]) -> None:
    # The same table through the plain-Python walk (which reads the first row alone first).
    assert bvec_iter_list(BV, BvecIter(0, size, idx, done)) == list(zip(pages, offs, lens))


def test_list_declines_more_than_small_rows() -> None:
    many = rows(*[(100 + i, 512, 0) for i in range(SMALL + 1)])
    assert bvec_iter_list(many, BvecIter(0, 512 * SMALL)) is not None
    assert bvec_iter_list(many, BvecIter(0, 512 * SMALL + 1)) is None


def test_phys() -> None:
    phys, lens = bvec_iter_phys(BV, BvecIter(0, 12288))
    assert phys.tolist() == [10 * 4096, 20 * 4096 + 512, 30 * 4096 + 0x200]
    assert lens.tolist() == [4096, 7680, 512]


def test_rows_beyond_array() -> None:
    with pytest.raises(ValueError, match="holds 12288 bytes"):
        bvec_iter_rows(BV, BvecIter(0, 12289))


@pytest.mark.parametrize(("start", "nbytes", "idx", "done", "size"), [
    ((0, 0, 12288), 0, 0, 0, 12288),
    ((0, 0, 12288), 0x1ff, 0, 0x1ff, 12288 - 0x1ff),
    ((0, 0, 12288), 0xfff, 0, 0xfff, 12288 - 0xfff),
    ((0, 0, 12288), 0x1000, 1, 0, 8192),         # exactly one bvec: on to the next
    ((0, 0, 12288), 0x1001, 1, 1, 8191),
    ((0, 0x800, 10240), 0x800, 1, 0, 8192),      # done + bytes completes the bvec
    ((0, 0x800, 10240), 0x900, 1, 0x100, 7936),  # bytes fit the first bvec, done + bytes not
    ((0, 0, 12288), 11776, 2, 0, 512),
    ((0, 0, 12288), 12288, 3, 0, 0),             # everything: past the last bvec
    ((1, 7679, 513), 1, 2, 0, 512),
])
def test_advance(start: tuple[int, int, int], nbytes: int, idx: int, done: int,
                 size: int) -> None:
    it = BvecIter(0, start[2], start[0], start[1])
    assert bvec_iter_advance(BV, it, nbytes)
    assert (it.bi_idx, it.bi_bvec_done, it.bi_size) == (idx, done, size)


def test_advance_past_end() -> None:
    it = BvecIter(0, 512, 2, 0)
    assert not bvec_iter_advance(BV, it, 513)
    assert it.bi_size == 0

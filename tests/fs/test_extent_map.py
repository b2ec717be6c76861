"""ExtentMap.run (fs/modelfs/extents.py): the run at a file block, as ext4_map_blocks() sees
it — length, first disk block (-1 for a hole) and the unwritten bit — at awkward boundaries:
a run that breaks mid-chunk, across the XArray's chunk boundary, written next to unwritten,
holes, and disk blocks at the top of the 62-bit block field."""

from __future__ import annotations

import pytest

from dioscope.fs.modelfs.extents import ExtentMap
from dioscope.kernel.xarray import XA_CHUNK

TOP = (1 << 62) - 1  # the largest disk block the encoding holds


def _map(*extents: tuple[int, int, int, bool]) -> ExtentMap:
    m = ExtentMap()
    for lblk, pblk, n, unwritten in extents:
        m.set(lblk, pblk, n, unwritten)
    return m


@pytest.mark.parametrize(("extents", "lblk", "n", "want"), [
    # one written run, asked for less, exactly, more
    ([(0, 1000, 256, False)], 0, 100, (100, 1000, False)),
    ([(0, 1000, 256, False)], 0, 256, (256, 1000, False)),
    ([(0, 1000, 256, False)], 0, 300, (256, 1000, False)),
    ([(0, 1000, 256, False)], 255, 10, (1, 1255, False)),
    # physically discontiguous after 10 blocks: the run stops there
    ([(0, 1000, 10, False), (10, 5000, 20, False)], 0, 30, (10, 1000, False)),
    ([(0, 1000, 10, False), (10, 5000, 20, False)], 10, 30, (20, 5000, False)),
    # contiguous on disk but unwritten after written: a different extent
    ([(0, 1000, 10, False), (10, 1010, 10, True)], 0, 20, (10, 1000, False)),
    ([(0, 1000, 10, False), (10, 1010, 10, True)], 5, 20, (5, 1005, False)),
    ([(0, 1000, 10, False), (10, 1010, 10, True)], 10, 20, (10, 1010, True)),
    # across the XArray's chunk boundary
    ([(XA_CHUNK - 4, 7000, 16, False)], XA_CHUNK - 4, 16, (16, 7000, False)),
    ([(XA_CHUNK - 4, 7000, 16, True)], XA_CHUNK - 2, 100, (14, 7002, True)),
    # a hole runs to the next mapped block, or to n
    ([(50, 1000, 5, False)], 0, 100, (50, -1, False)),
    ([(50, 1000, 5, False)], 60, 100, (100, -1, False)),
    ([], 0, 8, (8, -1, False)),
    # disk blocks at the top of the field, written and unwritten (first + length would not
    # fit an int64 with the unwritten bit set)
    ([(0, TOP - 3, 4, False)], 0, 6, (4, TOP - 3, False)),
    ([(0, TOP - 3, 4, True)], 0, 6, (4, TOP - 3, True)),
    ([(0, TOP, 1, True)], 0, 6, (1, TOP, True)),
])
def test_run(extents: list[tuple[int, int, int, bool]], lblk: int, n: int,
             want: tuple[int, int, bool]) -> None:
    assert _map(*extents).run(lblk, n) == want


@pytest.mark.parametrize(("change", "want"), [
    ("none", (256, 1000, False)),
    ("set", (10, 1000, False)),        # blocks 10.. now map elsewhere
    ("set-unwritten", (256, 1000, True)),
    ("convert", (256, 1000, False)),   # the unwritten run becomes written
    ("remove", (256, -1, False)),      # unmapped: a hole as long as asked
])
def test_the_remembered_run_goes_with_any_change(change: str, want: tuple[int, int, bool]) -> None:
    """run() answers a repeated lookup from memory (the extent status tree's role) but never
    after the map changed: each mutator forgets it, and the answer is the map's again."""
    m = _map((0, 1000, 256, change == "convert"))
    first = m.run(0, 256)
    assert m.run(0, 256) == first == m.walk(0, 256)
    if change == "set":
        m.set(10, 9000, 5, False)
    elif change == "set-unwritten":
        m.set(0, 1000, 256, True)
    elif change == "convert":
        assert m.convert(0, 256) == 256
    elif change == "remove":
        m.remove(0, 256)
    got = m.run(0, 256)
    assert got == m.walk(0, 256)
    assert got == want

"""mm/uaccess.py: write_user / read_user / touch_user byte round trips and short counts.

Loads and stores fault like the CPU (the zero page for untouched reads, COW for writes) and
stop at the first inaccessible page with a short count; they leave no reference behind.
"""

from __future__ import annotations

import numpy as np
import pytest

from dioscope.kernel.types import PAGE_SIZE
from dioscope.mm.mmap import PROT_NONE, PROT_READ, PROT_WRITE
from dioscope.mm.page_alloc import ZERO_PFN

P = PAGE_SIZE


def pattern(n: int, seed: int = 1) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes()


def pfns(p, addr: int, n: int) -> list[int]:
    vma = p.mm.vma_lookup(addr)
    s = vma.slot(addr)
    return vma.pt_pfn[s : s + n].tolist()


# (offset into a 4-page mapping, length)
ROUND_TRIPS = [
    (0, 1),
    (0, P),
    (0x1FF, 2),
    (0x200, 0x200),
    (0xFFF, 1),
    (0xFFF, 2),  # one byte on each side of a page boundary
    (0x1000, P),
    (0x1001, P),
    (0x800, 2 * P),
    (1, 4 * P - 2),
    (0, 4 * P),
]


@pytest.mark.parametrize(("offset", "length"), ROUND_TRIPS)
def test_write_read_round_trip(k, snapshot, offset, length):
    before = snapshot(k)
    p = k.spawn()
    a = p.mmap(4 * P)
    data = pattern(length)
    assert p.write_user(a + offset, data) == length
    assert p.read_user(a + offset, length) == data
    # The bytes are in the frames the page table maps, and nothing else was written.
    whole = b"".join(
        bytes(k.pgdat.mem.frame(pfn)) if pfn >= 0 else bytes(P) for pfn in pfns(p, a, 4)
    )
    assert whole == bytes(offset) + data + bytes(4 * P - offset - length)
    touched = (offset + length - 1) // P - offset // P + 1
    assert k.pgdat.nr_free() == before.nr_free - touched
    refs = [int(k.pgdat.pages.refcount[pfn]) for pfn in pfns(p, a, 4) if pfn >= 0]
    assert refs == [1] * touched  # no reference left behind
    p.exit()
    before.assert_restored(k)


def test_write_accepts_a_numpy_array(k):
    p = k.spawn()
    a = p.mmap(2 * P)
    arr = np.arange(P, dtype=np.uint16)  # 8 KiB of little-endian uint16
    assert p.write_user(a, arr) == 2 * P
    assert p.read_user(a, 2 * P) == arr.tobytes()


def test_read_of_untouched_memory_is_zeros_and_allocates_nothing(k, snapshot):
    before = snapshot(k)
    p = k.spawn()
    a = p.mmap(3 * P)
    assert p.read_user(a + 5, 2 * P) == bytes(2 * P)
    assert pfns(p, a, 3) == [ZERO_PFN, ZERO_PFN, ZERO_PFN]
    assert k.pgdat.nr_free() == before.nr_free
    p.exit()
    before.assert_restored(k)


@pytest.mark.parametrize("prot", [PROT_READ, PROT_NONE])
def test_write_into_a_page_without_write_permission_is_short(k, prot):
    p = k.spawn()
    a = p.mmap(3 * P)
    p.mprotect(a + P, P, prot)
    assert p.write_user(a + P, b"x") == 0
    assert p.write_user(a + P - 3, b"abcdef") == 3  # stops at the boundary
    assert p.write_user(a, b"y" * (3 * P)) == P
    assert pfns(p, a + P, 1) == [-1]  # the store never faulted the page in
    expected = b"" if prot == PROT_NONE else bytes(4)
    assert p.read_user(a + P, 4) == expected
    assert p.read_user(a + P - 2, 4) == b"yy" + expected[:2]


def test_write_only_mapping_is_readable(k):
    """x86: PROT_WRITE implies read access (access_error() accepts VM_WRITE for loads)."""
    p = k.spawn()
    a = p.mmap(P, PROT_WRITE)
    assert p.write_user(a, b"wo") == 2
    assert p.read_user(a, 2) == b"wo"


@pytest.mark.parametrize(
    ("offset", "length", "expected"),
    [
        (0, 3 * P, P),
        (0x800, 3 * P, P - 0x800),
        (P - 1, 2, 1),
        (P, 10, 0),  # starts in the hole
        (2 * P, P, P),  # after the hole
        (P - 10, 3 * P, 10),
    ],
)
def test_access_across_an_unmapped_hole_is_short(k, offset, length, expected):
    p = k.spawn()
    a = p.mmap(3 * P)
    p.munmap(a + P, P)
    data = pattern(length, seed=2)
    assert p.write_user(a + offset, data) == expected
    assert p.read_user(a + offset, length) == data[:expected]
    assert p.touch(a + offset, length) == expected
    assert p.touch(a + offset, length, write=True) == expected


@pytest.mark.parametrize("addr", [-1, 0, 0x1000])
def test_access_to_nothing_is_zero(k, addr):
    p = k.spawn()
    assert p.write_user(addr, b"x") == 0
    assert p.read_user(addr, 1) == b""
    assert p.touch(addr, P) == 0


def test_zero_length(k):
    p = k.spawn()
    a = p.mmap(P)
    assert p.write_user(a, b"") == 0
    assert p.read_user(a, 0) == b""
    assert pfns(p, a, 1) == [-1]


def test_touch_faults_without_changing_bytes(k):
    p = k.spawn()
    a = p.mmap(2 * P)
    assert p.touch(a, 2 * P) == 2 * P
    assert pfns(p, a, 2) == [ZERO_PFN, ZERO_PFN]
    p.write_user(a, b"keep")
    assert p.touch(a + 1, 2 * P - 1, write=True) == 2 * P - 1
    assert ZERO_PFN not in pfns(p, a, 2)
    assert p.read_user(a, 5) == b"keep\x00"


def test_write_after_fork_copies_and_read_does_not(k, snapshot):
    before = snapshot(k)
    p = k.spawn()
    a = p.mmap(2 * P)
    p.write_user(a, pattern(2 * P))
    c = k.fork(p)
    shared = pfns(p, a, 2)
    assert c.read_user(a, 2 * P) == pattern(2 * P)
    assert pfns(c, a, 2) == shared  # reading does not break COW
    assert c.write_user(a + P - 1, b"\x00\x00") == 2
    assert pfns(p, a, 2) == shared
    assert not set(pfns(c, a, 2)) & set(shared)  # both pages copied for the child
    assert p.read_user(a, 2 * P) == pattern(2 * P)
    expected = bytearray(pattern(2 * P))
    expected[P - 1 : P + 1] = b"\x00\x00"
    assert c.read_user(a, 2 * P) == bytes(expected)
    c.exit()
    p.exit()
    before.assert_restored(k)

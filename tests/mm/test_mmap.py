"""mm/mmap.py: mmap, munmap, mprotect, madvise and MAP_POPULATE.

Argument checks follow the kernel (errno values measured on the 6.18 host where noted);
page-table effects are checked through refcounts, mapcounts, the free page count and GUP.
"""

from __future__ import annotations

import errno

import numpy as np
import pytest

from dioscope.kernel.types import HPAGE_PMD_NR, HPAGE_PMD_SIZE, PAGE_SIZE, TASK_SIZE
from dioscope.machine import Kernel
from dioscope.mm.gup import pin_user_pages_fast, unpin_user_pages
from dioscope.mm.gup_core import FOLL
from dioscope.mm.mm_types import VM
from dioscope.mm.mmap import (
    MADV_DONTNEED,
    MADV_HUGEPAGE,
    MADV_NOHUGEPAGE,
    MAP_ANONYMOUS,
    MAP_FIXED,
    MAP_POPULATE,
    MAP_PRIVATE,
    MAP_SHARED,
    PROT_NONE,
    PROT_READ,
    PROT_WRITE,
    do_madvise,
    do_mmap,
    do_mprotect,
    do_munmap,
)
from dioscope.mm.page_alloc import ZERO_PFN
from dioscope.mm.pgtable import PTE_RW

P = PAGE_SIZE
W = FOLL.FOLL_WRITE
RW = PROT_READ | PROT_WRITE
ANON = MAP_PRIVATE | MAP_ANONYMOUS
PROT_EXEC = 0x4
U64 = (1 << 64) - 1


def pfns(p, addr: int, n: int) -> np.ndarray:
    vma = p.mm.vma_lookup(addr)
    s = vma.slot(addr)
    return vma.pt_pfn[s : s + n].copy()


def pte_flags(p, addr: int) -> int:
    vma = p.mm.vma_lookup(addr)
    return int(vma.pt_flags[vma.slot(addr)])


def ref(k: Kernel, pfn: int) -> int:
    return int(k.pgdat.pages.refcount[k.pgdat.pages.head[pfn]])


def vmas(p) -> list[tuple[int, int]]:
    return [(v.vm_start, v.vm_end) for v in p.mm.vmas]


def pin(p, addr: int, n: int, gup_flags: int = 0) -> int:
    """Pin and at once unpin ``n`` pages; return what pin_user_pages_fast() returned."""
    pages = np.full(n, -1, np.int64)
    ret = pin_user_pages_fast(p.mm, addr, n, gup_flags, pages)
    unpin_user_pages(p.pgdat, pages, max(ret, 0))
    return ret


# === mmap ====================================================================================
def test_mmap_places_mappings_top_down(k):
    p = k.spawn()
    a = p.mmap(3 * P)
    b = p.mmap(5 * P)
    c = p.mmap(HPAGE_PMD_SIZE)
    assert a % P == 0 and b == a - 5 * P
    assert c % HPAGE_PMD_SIZE == 0 and c + HPAGE_PMD_SIZE <= b
    assert vmas(p) == [(c, c + HPAGE_PMD_SIZE), (b, b + 5 * P), (a, a + 3 * P)]
    assert p.mm.total_vm == 3 + 5 + HPAGE_PMD_NR
    d = p.mmap(P + 1)  # rounded up to whole pages
    assert p.mm.vma_lookup(d).nr_pages == 2
    assert k.pgdat.nr_free() == Kernel("32M", k.cfg).pgdat.nr_free()  # nothing faulted in


# (length, prot, flags, addr, -errno) for anonymous mmap
MMAP_ERRORS = [
    (0, RW, ANON, 0, -errno.EINVAL),
    (P, RW, MAP_ANONYMOUS, 0, -errno.EINVAL),  # no map type
    (P, RW, 0x04 | MAP_ANONYMOUS, 0, -errno.EINVAL),
    (P, RW, 0x06 | MAP_ANONYMOUS, 0, -errno.EINVAL),
    (P, RW, 0x03 | MAP_ANONYMOUS, 0, -errno.EINVAL),  # MAP_SHARED_VALIDATE without a file
    (P, RW, ANON | MAP_FIXED, 0x10000800, -errno.EINVAL),
    (P, RW, ANON | MAP_FIXED, 0x1000, -errno.EPERM),  # below mmap_min_addr, unprivileged
    (1 << 47, RW, ANON, 0, -errno.ENOMEM),
    (U64, RW, ANON, 0, -errno.ENOMEM),
    (-P, RW, ANON, 0, -errno.ENOMEM),  # a size_t
    (2 * P, RW, ANON | MAP_FIXED, TASK_SIZE - P, -errno.ENOMEM),
    (P, RW, ANON | MAP_FIXED, TASK_SIZE, -errno.ENOMEM),
]


@pytest.mark.parametrize(("length", "prot", "flags", "addr", "err"), MMAP_ERRORS)
def test_mmap_errors(k, snapshot, length, prot, flags, addr, err):
    p = k.spawn()
    before = snapshot(k)
    assert do_mmap(p.mm, addr, length, prot, flags) == err
    assert p.mm.vmas == []
    with pytest.raises(OSError) as e:
        p.mmap(length, prot, flags, addr)
    assert e.value.errno == (-err if flags & MAP_ANONYMOUS else errno.EBADF)
    before.assert_restored(k)


def test_mmap_without_map_anonymous_needs_a_file(k):
    p = k.spawn()
    with pytest.raises(OSError) as e:
        p.mmap(P, RW, MAP_PRIVATE)
    assert e.value.errno == errno.EBADF


@pytest.mark.parametrize("extra", [0x8, 0x10, 0x20, 0x1000000, 0x2000000])
def test_mmap_ignores_unknown_prot_bits(k, extra):
    """Measured on the host: mmap() accepts any prot bits; calc_vm_prot_bits() drops them."""
    p = k.spawn()
    a = p.mmap(P, PROT_READ | extra)
    vma = p.mm.vma_lookup(a)
    assert vma.vm_flags & (VM.VM_READ | VM.VM_WRITE | VM.VM_EXEC) == VM.VM_READ


@pytest.mark.parametrize(("addr", "length"), [(TASK_SIZE - P, P), (TASK_SIZE - 3 * P, 3 * P)])
def test_mmap_fixed_up_to_task_size(k, addr, length):
    p = k.spawn()
    assert p.mmap(length, RW, ANON | MAP_FIXED, addr) == addr
    assert p.write_user(TASK_SIZE - 1, b"x") == 1


def test_mmap_fixed_replaces_what_was_there(k, snapshot):
    before = snapshot(k)
    p = k.spawn()
    a = p.mmap(4 * P)
    p.write_user(a, b"\x11" * (4 * P))
    old = pfns(p, a + P, 2)
    assert p.mmap(2 * P, RW, ANON | MAP_FIXED, a + P) == a + P
    assert vmas(p) == [(a, a + P), (a + P, a + 3 * P), (a + 3 * P, a + 4 * P)]
    assert [ref(k, int(x)) for x in old] == [0, 0]  # freed
    assert p.read_user(a + P - 1, 2 * P + 2) == b"\x11" + bytes(2 * P) + b"\x11"
    assert k.pgdat.nr_free() == before.nr_free - 2  # the new pages read as the zero page
    p.exit()
    before.assert_restored(k)


# === munmap ==================================================================================
# (first page, pages) unmapped from a 4-page mapping -> VMAs left, as page ranges
MUNMAP = [
    (0, 4, []),
    (0, 1, [(1, 4)]),
    (3, 1, [(0, 3)]),
    (1, 2, [(0, 1), (3, 4)]),
    (2, 5, [(0, 2)]),  # past the end of the mapping: fine
]


@pytest.mark.parametrize(("first", "count", "left"), MUNMAP)
def test_munmap_sub_ranges(k, snapshot, first, count, left):
    before = snapshot(k)
    p = k.spawn()
    a = p.mmap(4 * P)
    p.touch(a, 4 * P, write=True)
    all_pages = pfns(p, a, 4)
    p.munmap(a + first * P, count * P)
    assert vmas(p) == [(a + lo * P, a + hi * P) for lo, hi in left]
    kept = {i for lo, hi in left for i in range(lo, hi)}
    for i, pg in enumerate(all_pages.tolist()):
        assert (ref(k, pg), int(k.pgdat.pages.mapcount[pg])) == ((1, 1) if i in kept else (0, 0))
    assert k.pgdat.nr_free() == before.nr_free - len(kept)
    assert p.mm.total_vm == len(kept)
    p.exit()
    before.assert_restored(k)


@pytest.mark.parametrize(
    ("offset", "length", "err"),
    [
        (1, P, -errno.EINVAL),
        (0, 0, -errno.EINVAL),
        (0, -P, -errno.EINVAL),
        ("task_size", P, -errno.EINVAL),
        ("task_size-1", 2 * P, -errno.EINVAL),
        ("task_size-1", P, 0),
        (0, 1, 0),  # one byte: the whole page
        ("unmapped", 8 * P, 0),
    ],
)
def test_munmap_arguments(k, offset, length, err):
    p = k.spawn()
    a = p.mmap(2 * P)
    top = p.mmap(P, RW, ANON | MAP_FIXED, TASK_SIZE - P)
    start = {"task_size": TASK_SIZE, "task_size-1": top, "unmapped": 0x10000}.get(offset, a)
    if isinstance(offset, int):
        start = a + offset
    assert do_munmap(p.mm, start, length) == err
    if err == 0 and offset == 0:
        assert vmas(p)[0] == (a + P, a + 2 * P)


# === mprotect ================================================================================
def test_prot_none_makes_gup_fail_and_restoring_it_works(k, snapshot):
    before = snapshot(k)
    p = k.spawn()
    a = p.mmap(3 * P)
    p.write_user(a, b"abc")
    p.mprotect(a, 3 * P, PROT_NONE)
    assert pin(p, a, 3) == -errno.EFAULT
    assert pin(p, a, 3, W) == -errno.EFAULT
    assert p.read_user(a, 3) == b""
    assert p.write_user(a, b"x") == 0
    assert ref(k, int(pfns(p, a, 1)[0])) == 1  # still mapped, just inaccessible
    p.mprotect(a, 3 * P, RW)
    assert p.read_user(a, 3) == b"abc"
    assert pin(p, a, 3, W) == 3
    p.exit()
    before.assert_restored(k)


def test_read_only_makes_foll_write_fail(k, snapshot):
    before = snapshot(k)
    p = k.spawn()
    a = p.mmap(2 * P)
    p.write_user(a, b"abc")
    p.mprotect(a, 2 * P, PROT_READ)
    assert not pte_flags(p, a) & PTE_RW
    assert pin(p, a, 2, W) == -errno.EFAULT
    assert pin(p, a, 2) == 2
    assert p.write_user(a, b"x") == 0
    assert p.read_user(a, 3) == b"abc"
    p.exit()
    before.assert_restored(k)


@pytest.mark.parametrize(
    ("setup", "r59", "r618"),
    [
        ("rw->ro->rw", False, True),
        ("rw->none->rw", False, True),
        ("rw->rwx", False, True),
        ("rw->rw", True, True),  # unchanged flags: mprotect_fixup() does nothing
        ("cow-shared: rw->ro->rw", False, False),
    ],
)
def test_mprotect_back_to_writable(k, setup, r59, r618):
    """Is a private anon PTE writable again right after mprotect? [5.9] only if the flags
    never changed; [6.18] also for an exclusive anon page (Linux commit 64fe24a3e05e)."""
    p = k.spawn()
    a = p.mmap(P)
    p.write_user(a, b"x")
    page = int(pfns(p, a, 1)[0])
    if setup.startswith("cow-shared"):
        k.fork(p)
    steps = setup.split(": ")[-1].split("->")[1:]
    prots = {"ro": PROT_READ, "rw": RW, "none": PROT_NONE, "rwx": RW | PROT_EXEC}
    for step in steps:
        p.mprotect(a, P, prots[step])
    writable = r618 if k.cfg.ANON_EXCLUSIVE else r59
    assert bool(pte_flags(p, a) & PTE_RW) is writable
    faults = k.vmstat.pgfault
    assert p.write_user(a, b"y") == 1
    assert k.vmstat.pgfault == faults + (0 if writable else 1)
    shared = setup.startswith("cow-shared")
    assert (int(pfns(p, a, 1)[0]) == page) is not shared  # COW-shared: copied on write


@pytest.mark.parametrize(
    ("start", "length", "prot", "err"),
    [
        (1, P, PROT_READ, -errno.EINVAL),
        (0, 0, PROT_READ, 0),
        (0, P, PROT_READ | 0x8, 0),  # PROT_SEM is allowed
        (0, P, PROT_READ | 0x10, -errno.EINVAL),
        (0, P, PROT_READ | 0x1000000, -errno.EINVAL),  # PROT_GROWSDOWN, not a stack
        (0, 3 * P, PROT_READ, -errno.ENOMEM),  # runs into the hole at page 1
        (2 * P, P, PROT_READ, 0),
        (P, P, PROT_READ, -errno.ENOMEM),  # starts in the hole
        (0, -P, PROT_READ, -errno.ENOMEM),
    ],
)
def test_mprotect_arguments(k, start, length, prot, err):
    """Values measured on the host (6.18) for the same layout: a page, a hole, a page."""
    p = k.spawn()
    a = p.mmap(3 * P)
    p.munmap(a + P, P)
    assert do_mprotect(p.mm, a + start, length, prot) == err
    if (start, length, err) == (0, 3 * P, -errno.ENOMEM):
        # The part before the hole keeps its change, as the kernel leaves it.
        assert not p.mm.vma_lookup(a).vm_flags & VM.VM_WRITE
        assert p.mm.vma_lookup(a + 2 * P).vm_flags & VM.VM_WRITE


# === madvise =================================================================================
def test_madvise_dontneed_frees_and_refaults_zeroed(k, snapshot):
    before = snapshot(k)
    p = k.spawn()
    a = p.mmap(4 * P)
    p.write_user(a, b"\x77" * (4 * P))
    p.madvise(a + P, 2 * P, MADV_DONTNEED)
    assert pfns(p, a, 4)[1:3].tolist() == [-1, -1]
    assert k.pgdat.nr_free() == before.nr_free - 2
    assert p.read_user(a + P - 1, 2 * P + 2) == b"\x77" + bytes(2 * P) + b"\x77"
    assert pfns(p, a, 4)[1:3].tolist() == [ZERO_PFN, ZERO_PFN]
    p.exit()
    before.assert_restored(k)


@pytest.mark.parametrize(
    ("start", "length", "advice", "err"),
    [
        (0, P, 999, -errno.EINVAL),
        (0, 0, MADV_DONTNEED, 0),
        (1, P, MADV_DONTNEED, -errno.EINVAL),
        (0, 3 * P, MADV_DONTNEED, -errno.ENOMEM),
        (0, 3 * P, MADV_HUGEPAGE, -errno.ENOMEM),
        (P, P, MADV_DONTNEED, -errno.ENOMEM),
        (0, -P, MADV_DONTNEED, -errno.EINVAL),
        (2 * P, P, MADV_NOHUGEPAGE, 0),
    ],
)
def test_madvise_arguments(k, start, length, advice, err):
    """Values measured on the host (6.18) for the same layout: a page, a hole, a page."""
    p = k.spawn()
    a = p.mmap(3 * P)
    p.write_user(a, b"x" * (3 * P))
    p.munmap(a + P, P)
    assert do_madvise(p.mm, a + start, length, advice) == err
    if (start, length, advice) == (0, 3 * P, MADV_DONTNEED):
        # Both mapped pages are zapped even though the call reports the hole.
        assert pfns(p, a, 1).tolist() == [-1] and pfns(p, a + 2 * P, 1).tolist() == [-1]


def test_madvise_hugepage_on_part_of_a_mapping_splits_the_vma(k):
    p = k.spawn()
    a = p.mmap(2 * HPAGE_PMD_SIZE)
    p.madvise(a + HPAGE_PMD_SIZE, HPAGE_PMD_SIZE, MADV_HUGEPAGE)
    assert vmas(p) == [(a, a + HPAGE_PMD_SIZE), (a + HPAGE_PMD_SIZE, a + 2 * HPAGE_PMD_SIZE)]
    assert not p.mm.vma_lookup(a).vm_flags & VM.VM_HUGEPAGE
    assert p.mm.vma_lookup(a + HPAGE_PMD_SIZE).vm_flags & VM.VM_HUGEPAGE
    p.touch(a, 2 * HPAGE_PMD_SIZE, write=True)
    assert k.vmstat.thp_fault_alloc == 1
    p.madvise(a + HPAGE_PMD_SIZE, HPAGE_PMD_SIZE, MADV_NOHUGEPAGE)
    assert p.mm.vma_lookup(a + HPAGE_PMD_SIZE).vm_flags & VM.VM_NOHUGEPAGE


# === MAP_POPULATE ============================================================================
def test_map_populate_private_writable_write_faults_every_page(k, snapshot):
    before = snapshot(k)
    p = k.spawn()
    faults = k.vmstat.pgfault
    a = p.mmap(8 * P, RW, ANON | MAP_POPULATE)
    pages = pfns(p, a, 8)
    assert ZERO_PFN not in pages.tolist() and len(set(pages.tolist())) == 8
    assert [ref(k, int(x)) for x in pages] == [1] * 8
    assert (k.pgdat.pages.mapcount[pages] == 1).all()
    assert all(pte_flags(p, a + i * P) & PTE_RW for i in range(8))
    assert k.vmstat.pgfault == faults + 8
    assert k.pgdat.nr_free() == before.nr_free - 8
    assert pin(p, a, 8, W) == 8
    p.exit()
    before.assert_restored(k)


def test_map_populate_read_only_maps_the_zero_page(k, snapshot):
    before = snapshot(k)
    p = k.spawn()
    a = p.mmap(4 * P, PROT_READ, ANON | MAP_POPULATE)
    assert pfns(p, a, 4).tolist() == [ZERO_PFN] * 4
    assert k.pgdat.nr_free() == before.nr_free
    p.exit()
    before.assert_restored(k)


def test_map_populate_prot_none_populates_nothing(k):
    p = k.spawn()
    a = p.mmap(4 * P, PROT_NONE, ANON | MAP_POPULATE)
    assert pfns(p, a, 4).tolist() == [-1] * 4


def test_map_populate_shared_allocates_shmem_pages(k, snapshot):
    before = snapshot(k)
    p = k.spawn()
    a = p.mmap(3 * P, RW, MAP_SHARED | MAP_ANONYMOUS | MAP_POPULATE)
    pages = pfns(p, a, 3)
    assert ZERO_PFN not in pages.tolist()
    assert [ref(k, int(x)) for x in pages] == [2] * 3  # page cache + PTE
    assert k.vmstat.nr_shmem == 3
    p.exit()
    assert k.vmstat.nr_shmem == 0
    before.assert_restored(k)

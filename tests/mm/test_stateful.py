"""A Hypothesis state machine over mmap / touch / fork / munmap / mprotect / madvise /
get / pin / unpin / put / exit, checking the page accounting after every step.

After every step, for every allocated folio, the refcount must equal exactly what holds it:
one per PTE that maps one of its pages, one per PMD mapping, one for a shmem page cache entry,
one per outstanding FOLL_GET entry, and per outstanding FOLL_PIN entry 1024 (small folio) or
1 (folio with an exact pincount, which must also equal the outstanding pins). Mapcounts must
equal the PTEs mapping each page; vmstat's acquired - released must equal the pins held; no
WARN/BUG may appear. Runs under every profile.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    invariant,
    multiple,
    precondition,
    rule,
)

from dioscope.kernel.config import PROFILES
from dioscope.kernel.types import HPAGE_PMD_SIZE, PAGE_SIZE
from dioscope.machine import Kernel
from dioscope.mm.gup import get_user_pages_fast, pin_user_pages_fast, unpin_user_pages
from dioscope.mm.gup_core import FOLL
from dioscope.mm.mmap import (
    MADV_DONTNEED,
    MADV_HUGEPAGE,
    MAP_ANONYMOUS,
    MAP_PRIVATE,
    MAP_SHARED,
    PROT_NONE,
    PROT_READ,
    PROT_WRITE,
)
from dioscope.mm.page import PG
from dioscope.mm.page_ref import put_pages
from dioscope.mm.pgtable import PTE_PMD, PTE_SPECIAL
from dioscope.syscalls.process import Process


def expected_refcounts(k: Kernel, held: list[tuple[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Recompute refcount, mapcount and pincount from first principles."""
    pgdat = k.pgdat
    p = pgdat.pages
    n = pgdat.nr_pages
    ref = np.zeros(n, np.int64)
    mapc = np.zeros(n, np.int64)
    pinc = np.zeros(n, np.int64)
    for proc in k.processes:
        if not proc.alive:
            continue
        for vma in proc.mm.vmas:
            pf, fl = vma.pt_pfn, vma.pt_flags
            mapped = (pf >= 0) & ((fl & PTE_SPECIAL) == 0)
            pmd = mapped & ((fl & PTE_PMD) != 0)
            pte = mapped & ~pmd
            np.add.at(ref, p.head[pf[pte]], 1)
            np.add.at(mapc, pf[pte], 1)
            pmd_pfns = pf[pmd]
            heads = pmd_pfns[pmd_pfns == p.head[pmd_pfns]]
            np.add.at(ref, heads, 1)
    shmem_files = {
        id(v.vm_file): v.vm_file
        for proc in k.processes if proc.alive
        for v in proc.mm.vmas if v.vm_file is not None
    }
    for f in shmem_files.values():
        present = f.pages[f.pages >= 0]
        np.add.at(ref, present, 1)
    for kind, pages in held:
        heads = p.head[pages]
        if kind == "get":
            np.add.at(ref, heads, 1)
        else:
            unit = p.pin_unit[heads].astype(np.int64)
            np.add.at(ref, heads, unit)
            np.add.at(pinc, heads[unit == 1], 1)
    return {"ref": ref, "map": mapc, "pin": pinc}


class PinMachine(RuleBasedStateMachine):
    profile = "5.9-pin"

    def __init__(self) -> None:
        super().__init__()
        self.k = Kernel(mem="64M", profile=self.profile)
        self.procs: list[Process] = [self.k.spawn()]
        self.held: list[tuple[str, np.ndarray]] = []
        self.pins_counted = 0  # vmstat acquired - released we expect

    buffers = Bundle("buffers")
    holds = Bundle("holds")

    @rule(target=buffers, npages=st.integers(1, 24), kind=st.sampled_from(
        ["private", "shared", "thp", "ro"]))
    def mmap(self, npages: int, kind: str):  # type: ignore[no-untyped-def]
        proc = self.procs[0]
        flags = MAP_PRIVATE | MAP_ANONYMOUS
        prot = PROT_READ | PROT_WRITE
        length = npages * PAGE_SIZE
        if kind == "shared":
            flags = MAP_SHARED | MAP_ANONYMOUS
        if kind == "thp":
            length = HPAGE_PMD_SIZE
        addr = proc.mmap(length, prot, flags)
        if kind == "thp":
            proc.madvise(addr, length, MADV_HUGEPAGE)
        if kind == "ro":
            proc.mprotect(addr, length, PROT_READ)
        return (addr, length)

    @rule(buf=buffers, write=st.booleans(), frac=st.floats(0, 1), which=st.integers(0, 7))
    def touch(self, buf: tuple[int, int], write: bool, frac: float, which: int) -> None:
        addr, length = buf
        proc = self.procs[which % len(self.procs)]
        off = int(frac * (length // PAGE_SIZE - 1)) * PAGE_SIZE if length > PAGE_SIZE else 0
        proc.touch(addr + off, PAGE_SIZE * 2, write)

    @rule(target=holds, buf=buffers, pin=st.booleans(), write=st.booleans(),
          off=st.integers(0, 600), npages=st.integers(1, 40))
    def acquire(self, buf: tuple[int, int], pin: bool, write: bool, off: int, npages: int):  # type: ignore[no-untyped-def]
        addr, _ = buf
        proc = self.procs[0]
        pages = np.full(npages, -1, np.int64)
        flags = FOLL.FOLL_WRITE if write else 0
        acq0 = self.k.vmstat.nr_foll_pin_acquired
        fn = pin_user_pages_fast if pin else get_user_pages_fast
        ret = fn(proc.mm, addr + off * 8, npages, flags, pages)
        assert ret <= npages
        if ret <= 0:
            assert self.k.vmstat.nr_foll_pin_acquired == acq0
            return multiple()
        got = pages[:ret].copy()
        kind = "pin" if pin else "get"
        self.held.append((kind, got))
        self.pins_counted += self.k.vmstat.nr_foll_pin_acquired - acq0
        return (kind, got)

    @rule(h=consumes(holds))
    def release(self, h: tuple[str, np.ndarray]) -> None:
        kind, pages = h
        self.held = [x for x in self.held if x[1] is not pages]
        rel0 = self.k.vmstat.nr_foll_pin_released
        if kind == "pin":
            unpin_user_pages(self.k.pgdat, pages, len(pages))
        else:
            put_pages(self.k.pgdat, pages)
        self.pins_counted -= self.k.vmstat.nr_foll_pin_released - rel0

    @precondition(lambda self: len(self.procs) < 3)
    @rule()
    def fork(self) -> None:
        self.procs.append(self.k.fork(self.procs[0]))

    @precondition(lambda self: len(self.procs) > 1)
    @rule()
    def exit_child(self) -> None:
        self.procs.pop().exit()

    @rule(buf=buffers, first=st.integers(0, 30), n=st.integers(1, 8))
    def munmap(self, buf: tuple[int, int], first: int, n: int) -> None:
        addr, length = buf
        npages = length // PAGE_SIZE
        first %= npages
        self.procs[0].munmap(addr + first * PAGE_SIZE, min(n, npages - first) * PAGE_SIZE)

    @rule(buf=buffers, first=st.integers(0, 30), n=st.integers(1, 8),
          prot=st.sampled_from([PROT_NONE, PROT_READ, PROT_READ | PROT_WRITE]))
    def mprotect(self, buf: tuple[int, int], first: int, n: int, prot: int) -> None:
        addr, length = buf
        npages = length // PAGE_SIZE
        first %= npages
        try:
            self.procs[0].mprotect(addr + first * PAGE_SIZE, n * PAGE_SIZE, prot)
        except OSError:
            pass  # ENOMEM across an unmapped part: the mapped part changed

    @rule(buf=buffers, first=st.integers(0, 30), n=st.integers(1, 8))
    def dontneed(self, buf: tuple[int, int], first: int, n: int) -> None:
        addr, length = buf
        npages = length // PAGE_SIZE
        first %= npages
        try:
            self.procs[0].madvise(addr + first * PAGE_SIZE, n * PAGE_SIZE, MADV_DONTNEED)
        except OSError:
            pass

    @invariant()
    def accounting_is_exact(self) -> None:
        k = self.k
        p = k.pgdat.pages
        assert not k.events.of_kind("BUG"), k.events.events
        assert not k.events.of_kind("WARN"), k.events.events
        exp = expected_refcounts(k, self.held)
        inuse = (p.flags & np.uint32(PG.PG_buddy | PG.PG_reserved)) == 0
        heads = inuse & (p.head == np.arange(k.pgdat.nr_pages))
        heads[k.pgdat.nr_pages - 1] = False
        if k.pgdat.huge_zero_pfn >= 0:
            heads[k.pgdat.huge_zero_pfn] = False
        # Free frames (not on the lists as heads) have refcount 0.
        bad = np.flatnonzero(heads & (p.refcount != exp["ref"]))
        assert not len(bad), [
            (p.describe(int(b)), int(exp["ref"][b])) for b in bad[:3]
        ]
        badm = np.flatnonzero(inuse & (p.mapcount != exp["map"]))
        assert not len(badm), [(p.describe(int(b)), int(exp["map"][b])) for b in badm[:3]]
        large = heads & (p.pin_unit == 1)
        badp = np.flatnonzero(large & (p.pincount != exp["pin"]))
        assert not len(badp), [p.describe(int(b)) for b in badp[:3]]
        acq, rel = k.vmstat.pins()
        assert acq - rel == self.pins_counted

    def teardown(self) -> None:
        for kind, pages in self.held:
            if kind == "pin":
                unpin_user_pages(self.k.pgdat, pages, len(pages))
            else:
                put_pages(self.k.pgdat, pages)
        self.held = []
        for proc in self.procs:
            proc.exit()
        acq, rel = self.k.vmstat.pins()
        assert acq == rel
        assert not self.k.events.of_kind("BUG")


@pytest.mark.parametrize("profile", list(PROFILES))
def test_pin_state_machine(profile: str) -> None:
    machine = type(f"PinMachine_{profile}", (PinMachine,), {"profile": profile})
    machine.TestCase.settings = settings(
        max_examples=60, stateful_step_count=30, deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    machine.TestCase().runTest()

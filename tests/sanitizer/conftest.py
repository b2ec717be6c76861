"""Fixtures for the sanitizer tests: a small machine per profile with a sanitizer attached."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import pytest

from dioscope.kernel.config import PROFILES as _PROFILES
from dioscope.kernel.types import HPAGE_PMD_SIZE, PAGE_SHIFT
from dioscope.machine import Kernel
from dioscope.mm.gup import get_user_pages_fast, pin_user_pages_fast, unpin_user_pages
from dioscope.mm.gup_core import FOLL
from dioscope.mm.mmap import MADV_HUGEPAGE
from dioscope.mm.page_alloc import PgData
from dioscope.sanitizer import Sanitizer, Violation
from dioscope.syscalls.process import Process

PROFILES = tuple(_PROFILES)  # "5.9", "5.9-pin", "6.18"
RECIPE = "PYTHONPATH=src python -m pytest tests/sanitizer"
HPAGE = HPAGE_PMD_SIZE


@dataclass
class Rig:
    """One machine, one process, one sanitizer, and the few moves the tests make."""

    k: Kernel
    p: Process
    san: Sanitizer

    @property
    def pgdat(self) -> PgData:
        return self.k.pgdat

    def buf(self, npages: int, write: bool = True) -> int:
        """A private anonymous buffer, faulted in (written, or read: zero page)."""
        addr = self.p.mmap(npages << PAGE_SHIFT)
        self.p.touch(addr, npages << PAGE_SHIFT, write=write)
        return addr

    def thp(self) -> int:
        """The address of a written, PMD-mapped 2 MiB THP (one order-9 folio)."""
        addr = self.p.mmap(2 * HPAGE)
        base = (addr + HPAGE - 1) & ~(HPAGE - 1)
        self.p.madvise(base, HPAGE, MADV_HUGEPAGE)
        self.p.touch(base, HPAGE, write=True)
        return base

    def pin(
        self, addr: int, n: int, flags: int = FOLL.FOLL_WRITE, holder: object = None
    ) -> np.ndarray:
        pages = np.full(n, -1, np.int64)
        got = pin_user_pages_fast(self.p.mm, addr, n, flags, pages, holder=holder)
        assert got == n
        return pages

    def get(self, addr: int, n: int, holder: object = None) -> np.ndarray:
        pages = np.full(n, -1, np.int64)
        got = get_user_pages_fast(self.p.mm, addr, n, FOLL.FOLL_WRITE, pages, holder=holder)
        assert got == n
        return pages

    def unpin(self, pages: np.ndarray, holder: object = None) -> None:
        unpin_user_pages(self.pgdat, pages, len(pages), holder=holder)

    def head(self, pfn: int) -> int:
        return int(self.pgdat.pages.head[pfn])

    def ids(self) -> list[str]:
        return [v.rule for v in self.san.violations]

    def fired(self, rule: str) -> list[Violation]:
        return [v for v in self.san.violations if v.rule == rule]

    def fired_on(self, rule: str, pfn: int) -> list[Violation]:
        """Violations of ``rule`` whose sentence names ``pfn`` exactly (not as a prefix of a
        longer pfn) and list it in ``pfns``."""
        pat = re.compile(rf"\bpfn {pfn:#x}\b")
        return [v for v in self.fired(rule) if pat.search(v.message) and pfn in v.pfns]


def make_rig(profile: str, strict_warn: bool = False) -> Rig:
    """A 64 MiB machine under ``profile`` with one process and a sanitizer attached."""
    k = Kernel(mem="64M", profile=profile)
    p = k.spawn()
    return Rig(k, p, Sanitizer(k.pgdat, recipe=RECIPE, strict_warn=strict_warn))


@pytest.fixture(params=PROFILES)
def rig(request: pytest.FixtureRequest) -> Iterator[Rig]:
    """One :class:`Rig` per profile."""
    r = make_rig(request.param)
    yield r
    r.san.detach()


@pytest.fixture
def rig_for() -> Iterator[Callable[..., Rig]]:
    """A factory for rigs of a given profile (for profile-specific tests)."""
    made: list[Rig] = []

    def factory(profile: str, strict_warn: bool = False) -> Rig:
        made.append(make_rig(profile, strict_warn))
        return made[-1]

    yield factory
    for r in made:
        r.san.detach()

"""Fixtures shared by the mm tests: a small model machine per profile, and a leak check.

``k`` is a fresh :class:`~dioscope.machine.Kernel` with 32 MiB of memory, once per profile.
``snapshot(k)`` records every page's refcount, pincount and mapcounts, the free page count
and the FOLL_PIN counters; ``.assert_restored(k)`` later proves that nothing leaked: every
per-page count is back to its recorded value, no page is missing from the free lists, and
``nr_foll_pin_acquired - nr_foll_pin_released`` is what it was.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pytest

from dioscope.machine import Kernel

PROFILE_NAMES = ("5.9", "5.9-pin", "6.18")
MEM = "32M"


@pytest.fixture(params=PROFILE_NAMES)
def k(request: pytest.FixtureRequest) -> Kernel:
    """A fresh machine under each of the three profiles."""
    return Kernel(MEM, request.param)


@dataclass
class MemState:
    """Per-page counts and global counters of one machine at one moment."""

    refcount: np.ndarray
    pincount: np.ndarray
    mapcount: np.ndarray
    entire_mapcount: np.ndarray
    nr_free: int
    acquired: int
    released: int

    @classmethod
    def of(cls, k: Kernel) -> MemState:
        p = k.pgdat.pages
        acq, rel = k.vmstat.pins()
        return cls(
            p.refcount.copy(),
            p.pincount.copy(),
            p.mapcount.copy(),
            p.entire_mapcount.copy(),
            k.pgdat.nr_free(),
            acq,
            rel,
        )

    def assert_restored(self, k: Kernel) -> None:
        """Every count is back to this snapshot's value and the pin counters balance."""
        now = MemState.of(k)
        for field in ("refcount", "pincount", "mapcount", "entire_mapcount"):
            was, is_ = getattr(self, field), getattr(now, field)
            bad = np.flatnonzero(was != is_)
            assert not len(bad), (
                f"{field} changed on {len(bad)} page(s); first pfn {int(bad[0]):#x}: "
                f"{int(was[bad[0]])} -> {int(is_[bad[0]])} ({k.pgdat.pages.describe(int(bad[0]))})"
            )
        assert now.nr_free == self.nr_free, "free page count changed"
        assert now.acquired - now.released == self.acquired - self.released, (
            f"pins unbalanced: acquired {self.acquired}->{now.acquired}, "
            f"released {self.released}->{now.released}"
        )


@pytest.fixture
def snapshot() -> Callable[[Kernel], MemState]:
    """``snapshot(k)``: the machine's counts now (see :class:`MemState`)."""
    return MemState.of

"""Fixtures shared by the lib tests: a small model machine per profile, a process in it, and
a leak check.

``k`` is a fresh :class:`~dioscope.machine.Kernel` with 32 MiB of memory, once per profile;
``proc`` is a process of it. ``snapshot(k)`` records every page's refcount and pincount, the
free page count and the FOLL_PIN counters; ``.assert_restored(k)`` later proves that every
reference and pin taken since was given back, and ``.delta(k)`` gives the (acquired,
released) vmstat deltas.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pytest

from dioscope.machine import Kernel
from dioscope.syscalls.process import Process

PROFILE_NAMES = ("5.9", "5.9-pin", "6.18")
MEM = "32M"


@pytest.fixture(params=PROFILE_NAMES)
def k(request: pytest.FixtureRequest) -> Kernel:
    """A fresh machine under each of the three profiles."""
    return Kernel(MEM, request.param)


@pytest.fixture
def proc(k: Kernel) -> Process:
    """A process of ``k`` with an empty address space."""
    return k.spawn()


@dataclass
class MemState:
    """Per-page counts and global counters of one machine at one moment."""

    refcount: np.ndarray
    pincount: np.ndarray
    nr_free: int
    acquired: int
    released: int

    @classmethod
    def of(cls, k: Kernel) -> MemState:
        p = k.pgdat.pages
        acq, rel = k.vmstat.pins()
        return cls(p.refcount.copy(), p.pincount.copy(), k.pgdat.nr_free(), acq, rel)

    def delta(self, k: Kernel) -> tuple[int, int]:
        """(nr_foll_pin_acquired, nr_foll_pin_released) since the snapshot."""
        acq, rel = k.vmstat.pins()
        return acq - self.acquired, rel - self.released

    def ref_delta(self, k: Kernel, pfns: np.ndarray | list[int]) -> list[int]:
        """Refcount change of each page (its folio head) since the snapshot."""
        p = k.pgdat.pages
        heads = p.head[np.asarray(pfns, np.int64)]
        return (p.refcount[heads].astype(np.int64) - self.refcount[heads]).tolist()

    def assert_restored(self, k: Kernel) -> None:
        """Every refcount and pincount is back and the pin counters balance."""
        now = MemState.of(k)
        for field in ("refcount", "pincount"):
            was, is_ = getattr(self, field), getattr(now, field)
            bad = np.flatnonzero(was != is_)
            assert not len(bad), (
                f"{field} changed on {len(bad)} page(s); first pfn {int(bad[0]):#x}: "
                f"{int(was[bad[0]])} -> {int(is_[bad[0]])}"
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


@pytest.fixture
def k6() -> Kernel:
    """A fresh 6.18 machine, for what exists only there (ITER_UBUF, extract, is_aligned)."""
    return Kernel(MEM, "6.18")


@pytest.fixture(params=("5.9", "5.9-pin"))
def k59(request: pytest.FixtureRequest) -> Kernel:
    """A fresh machine of each 5.9 profile, for what exists only there (ITER_PIPE,
    iov_iter_get_pages)."""
    return Kernel(MEM, request.param)

"""A leak check by snapshot: every page's counts and the FOLL_PIN counters at one moment,
compared later (``MemSnapshot.of(k)`` … ``.assert_restored(k)``).

Complements the rule-based sanitizer for tests that want "everything is exactly as before":
no page's refcount, pincount or mapcounts changed, no page is missing from the free lists,
and ``nr_foll_pin_acquired - nr_foll_pin_released`` is what it was.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["ALL_FIELDS", "MemSnapshot"]

ALL_FIELDS = ("refcount", "pincount", "mapcount", "entire_mapcount")


@dataclass
class MemSnapshot:
    """Per-page counts and global counters of one machine (a ``Kernel``) at one moment."""

    refcount: np.ndarray
    pincount: np.ndarray
    mapcount: np.ndarray
    entire_mapcount: np.ndarray
    nr_free: int
    acquired: int
    released: int

    @classmethod
    def of(cls, k: Any) -> MemSnapshot:
        p = k.pgdat.pages
        acq, rel = k.vmstat.pins()
        return cls(p.refcount.copy(), p.pincount.copy(), p.mapcount.copy(),
                   p.entire_mapcount.copy(), k.pgdat.nr_free(), acq, rel)

    def delta(self, k: Any) -> tuple[int, int]:
        """(nr_foll_pin_acquired, nr_foll_pin_released) since the snapshot."""
        acq, rel = k.vmstat.pins()
        return acq - self.acquired, rel - self.released

    def ref_delta(self, k: Any, pfns: np.ndarray | list[int]) -> list[int]:
        """Refcount change of each page (its folio head) since the snapshot."""
        p = k.pgdat.pages
        heads = p.head[np.asarray(pfns, np.int64)]
        return (p.refcount[heads].astype(np.int64) - self.refcount[heads]).tolist()

    def assert_restored(self, k: Any, fields: Sequence[str] = ALL_FIELDS) -> None:
        """Every count in ``fields`` is back, the free pages too, and the pin counters
        balance as they did. Raises AssertionError naming the first page that differs."""
        now = MemSnapshot.of(k)
        for name in fields:
            was, is_ = getattr(self, name), getattr(now, name)
            bad = np.flatnonzero(was != is_)
            assert not len(bad), (
                f"{name} changed on {len(bad)} page(s); first pfn {int(bad[0]):#x}: "
                f"{int(was[bad[0]])} -> {int(is_[bad[0]])} ({k.pgdat.pages.describe(int(bad[0]))})"
            )
        assert now.nr_free == self.nr_free, "free page count changed"
        assert now.acquired - now.released == self.acquired - self.released, (
            f"pins unbalanced: acquired {self.acquired}->{now.acquired}, "
            f"released {self.released}->{now.released}"
        )

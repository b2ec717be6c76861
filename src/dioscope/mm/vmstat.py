"""Node and event counters shown in ``/proc/vmstat`` (``mm/vmstat.c``).

The kernel batches these per CPU and ``echo 1 > /proc/sys/vm/stat_refresh`` folds them; the
model keeps exact integers. ``nr_foll_pin_acquired`` / ``nr_foll_pin_released`` count base
pages (``mod_node_page_state(..., NR_FOLL_PIN_ACQUIRED, refs)`` in ``mm/gup.c``).
"""

from __future__ import annotations

__all__ = ["VmStat"]


class VmStat:
    """The counters the model keeps, with /proc/vmstat names."""

    __slots__ = (
        "nr_anon_pages",
        "nr_foll_pin_acquired",
        "nr_foll_pin_released",
        "nr_free_pages",
        "nr_shmem",
        "pgfault",
        "thp_fault_alloc",
    )

    def __init__(self) -> None:
        self.nr_foll_pin_acquired = 0
        self.nr_foll_pin_released = 0
        self.nr_free_pages = 0
        self.nr_anon_pages = 0
        self.nr_shmem = 0
        self.pgfault = 0
        self.thp_fault_alloc = 0

    def snapshot(self) -> dict[str, int]:
        return {k: getattr(self, k) for k in self.__slots__}

    def pins(self) -> tuple[int, int]:
        """(nr_foll_pin_acquired, nr_foll_pin_released)."""
        return self.nr_foll_pin_acquired, self.nr_foll_pin_released

    def render(self) -> str:
        """The counters in /proc/vmstat's text format."""
        return "".join(f"{k} {getattr(self, k)}\n" for k in sorted(self.__slots__))

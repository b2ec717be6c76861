"""GUP benchmark: pin + unpin of 1,048,576 pages in 256-page batches.

A 4 GiB private anonymous buffer is written (every page present, writable, exclusive), then
``pin_user_pages_fast(FOLL_WRITE)`` + ``unpin_user_pages`` walk it in 256-page batches, the
way Direct I/O pins a 1 MiB request. Figures, ns per page (lower is better):

* ``gup.pin_unpin_ns_per_page``            sanitizer off (goal <= 20)
* ``gup.pin_unpin_ns_per_page_sanitized``  sanitizer on  (goal <= 60)

Each figure is the best of several rounds (the machine's noise only ever adds time). There is
no host figure: user space cannot time the kernel's GUP alone.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from dioscope.machine import Kernel
from dioscope.mm.gup import pin_user_pages_fast, unpin_user_pages
from dioscope.mm.gup_core import FOLL

NR_PAGES = 1 << 20
BATCH = 256
ROUNDS = 5


def _round(k: Kernel, addr: int, pages: np.ndarray) -> float:
    proc = k.processes[0]
    pgdat = k.pgdat
    write = int(FOLL.FOLL_WRITE)
    t0 = time.perf_counter()
    for i in range(NR_PAGES // BATCH):
        got = pin_user_pages_fast(proc.mm, addr + i * BATCH * 4096, BATCH, write, pages)
        unpin_user_pages(pgdat, pages, got)
    return time.perf_counter() - t0


def measure(sanitized: bool) -> float:
    """Best ns/page over ROUNDS rounds."""
    k = Kernel(mem="5G", profile="5.9-pin")
    proc = k.spawn()
    addr = proc.mmap(NR_PAGES * 4096)
    proc.touch(addr, NR_PAGES * 4096, write=True)
    pages = np.empty(BATCH, np.int64)
    san: Any = None
    if sanitized:
        from dioscope.sanitizer import Sanitizer

        san = Sanitizer(k.pgdat)
    best = min(_round(k, addr, pages) for _ in range(ROUNDS))
    acq, rel = k.vmstat.pins()
    assert acq == rel == ROUNDS * NR_PAGES, (acq, rel)
    if san is not None:
        san.check_quiescent()
        san.assert_clean()
        san.detach()
    return best / NR_PAGES * 1e9


def run() -> dict[str, dict[str, Any]]:
    return {
        "gup.pin_unpin_ns_per_page": {
            "value": round(measure(False), 2), "unit": "ns/page", "goal": "<= 20",
        },
        "gup.pin_unpin_ns_per_page_sanitized": {
            "value": round(measure(True), 2), "unit": "ns/page", "goal": "<= 60",
        },
    }


if __name__ == "__main__":
    print(run())

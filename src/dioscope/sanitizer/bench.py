"""Sanitizer overhead: pin+unpin of a written private anonymous buffer, with and without it.

    PYTHONPATH=src python -m dioscope.sanitizer.bench [--mem 5G] [--pages 1048576] [--batch 256]

Prints ns/page for ``pin_user_pages_fast`` + ``unpin_user_pages`` in batches, sanitizer off
and on (best of ``--repeat`` runs each, alternating so both see the same machine state).
A benchmark, never a timed assert (STYLE.md).
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from ..kernel.types import PAGE_SHIFT
from ..machine import Kernel
from ..mm.gup import pin_user_pages_fast, unpin_user_pages
from ..mm.gup_core import FOLL
from ..mm.mm_types import MmStruct
from .sanitizer import Sanitizer

__all__ = ["main", "measure"]

_WRITE = int(FOLL.FOLL_WRITE)


def _pin_unpin(k: Kernel, mm: MmStruct, addr: int, nr: int, batch: int) -> float:
    """One pass; return ns per page."""
    pages = np.empty(batch, np.int64)
    pgdat = k.pgdat
    t0 = time.perf_counter()
    for i in range(0, nr, batch):
        got = pin_user_pages_fast(mm, addr + (i << PAGE_SHIFT), batch, _WRITE, pages)
        if got != batch:
            raise RuntimeError(f"pin_user_pages_fast returned {got}, expected {batch}")
        unpin_user_pages(pgdat, pages, got)
    return (time.perf_counter() - t0) / nr * 1e9


def measure(
    mem: str = "5G",
    nr_pages: int = 1 << 20,
    batch: int = 256,
    repeat: int = 5,
    profile: str | None = None,
) -> dict[str, float]:
    """Return {"off": ns/page, "on": ns/page, "overhead": on - off} (best of ``repeat``)."""
    k = Kernel(mem=mem, profile=profile)
    p = k.spawn()
    length = nr_pages << PAGE_SHIFT
    addr = p.mmap(length)
    if p.touch(addr, length, write=True) != length:
        raise RuntimeError("could not fault the buffer in")
    off: list[float] = []
    on: list[float] = []
    for _ in range(repeat):
        off.append(_pin_unpin(k, p.mm, addr, nr_pages, batch))
        with Sanitizer(k.pgdat, recipe="python -m dioscope.sanitizer.bench") as san:
            on.append(_pin_unpin(k, p.mm, addr, nr_pages, batch))
            san.check_quiescent()
            san.assert_clean()
    best_off, best_on = min(off), min(on)
    return {"off": best_off, "on": best_on, "overhead": best_on - best_off}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--mem", default="5G")
    ap.add_argument("--pages", type=int, default=1 << 20)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--profile", default=None)
    args = ap.parse_args(argv)
    r = measure(args.mem, args.pages, args.batch, args.repeat, args.profile)
    print(
        f"pin+unpin {args.pages} pages in {args.batch}-page batches: "
        f"sanitizer off {r['off']:.1f} ns/page, on {r['on']:.1f} ns/page, "
        f"overhead {r['overhead']:.1f} ns/page"
    )


if __name__ == "__main__":
    main()

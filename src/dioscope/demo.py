"""``make demo``: the main job, and the GUP demonstration.

:func:`main` runs the mixed O_DIRECT workload of :mod:`dioscope.workload` under each profile
on real bytes and prints one table comparing the profiles. :func:`gup_demo` (``dioscope demo
--gup``) shows the same buffers acquired for Direct I/O under each profile: for each buffer
kind it
acquires the pages the way that kernel's Direct I/O would (``get_user_pages_fast`` under
``5.9``, ``pin_user_pages_fast`` under ``5.9-pin`` and ``6.18``; FOLL_WRITE for a read into
the buffer), shows what the acquisition did to the pages (refcount of the first page's folio,
pincount, maybe-DMA-pinned) and to ``/proc/vmstat``, releases them, and checks with the
sanitizer that nothing leaked. A fork while pinned shows early COW, and the buffer bytes are
verified against what was written.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from .kernel.config import PROFILES, get_profile
from .kernel.types import HPAGE_PMD_SIZE, PAGE_SIZE, parse_size
from .machine import Kernel
from .mm.gup import get_user_pages_fast, pin_user_pages_fast, unpin_user_pages
from .mm.gup_core import FOLL, page_maybe_dma_pinned
from .mm.mmap import MADV_HUGEPAGE, MAP_ANONYMOUS, MAP_PRIVATE, MAP_SHARED
from .mm.page_ref import put_pages
from .sanitizer import Sanitizer

__all__ = ["main"]


@dataclass
class Row:
    buffer: str
    io: str
    ret: int = 0
    acquired: int = 0
    released: int = 0
    refcount_after: int = 0
    refcount_held: int = 0
    pincount_held: int = 0
    maybe_pinned: str = ""
    note: str = ""


BUFFERS = [
    ("written private anon", "read into", "private"),
    ("untouched private anon", "write from", "private"),
    ("untouched private anon", "read into", "private"),
    ("written THP (2 MiB folios)", "read into", "thp"),
    ("written shared anon", "read into", "shared"),
    ("buffer + 512 bytes", "read into", "offset"),
    ("written, fork() while held", "read into", "fork"),
]


def _acquire(k: Kernel, mm: Any, addr: int, n: int, write: bool, pages: np.ndarray) -> int:
    """Take the pages the way this profile's Direct I/O does (spec §11 items 24-27)."""
    flags = FOLL.FOLL_WRITE if write else 0
    if k.cfg.DIO_FOLL_PIN:
        return pin_user_pages_fast(mm, addr, n, flags, pages, holder="demo-dio")
    return get_user_pages_fast(mm, addr, n, flags, pages, holder="demo-dio")


def _release(k: Kernel, pages: np.ndarray, n: int) -> None:
    if k.cfg.DIO_FOLL_PIN:
        unpin_user_pages(k.pgdat, pages, n, holder="demo-dio")
    else:
        put_pages(k.pgdat, pages[:n], holder="demo-dio", site="bio_release_pages")


def _one(k: Kernel, label: str, io: str, kind: str, size: int, rng: np.random.Generator) -> Row:
    proc = k.spawn(kind)
    pgdat = k.pgdat
    row = Row(label, io)
    flags = MAP_PRIVATE | MAP_ANONYMOUS
    if kind == "shared":
        flags = MAP_SHARED | MAP_ANONYMOUS
    length = size + (PAGE_SIZE if kind == "offset" else 0)
    if kind == "thp":
        length = max(HPAGE_PMD_SIZE, size - size % HPAGE_PMD_SIZE)
    addr = proc.mmap(length, flags=flags)
    if kind == "thp":
        proc.madvise(addr, length, MADV_HUGEPAGE)
    data = rng.integers(0, 256, length, dtype=np.uint8).tobytes()
    if not label.startswith("untouched"):
        proc.write_user(addr, data)
    start = addr + (512 if kind == "offset" else 0)
    first = start & ~(PAGE_SIZE - 1)
    n = (start + size + PAGE_SIZE - 1) // PAGE_SIZE - first // PAGE_SIZE
    pages = np.empty(n, np.int64)
    write = io == "read into"
    acq0, rel0 = k.vmstat.pins()
    row.ret = _acquire(k, proc.mm, first, n, write, pages)
    got = max(row.ret, 0)
    if got:
        head = int(pgdat.pages.head[pages[0]])
        row.refcount_held = int(pgdat.pages.refcount[head])
        row.pincount_held = int(pgdat.pages.pincount[head])
        maybe = sum(page_maybe_dma_pinned(pgdat, int(p)) for p in pages[:got].tolist())
        row.maybe_pinned = f"{maybe}/{got}"
    if kind == "fork":
        child = k.fork(proc)
        # The parent stores to its buffer (a COW fault if fork shared the pages), then the
        # device "writes" into the pages Direct I/O holds (spec §10: CVE-2020-29374).
        proc.write_user(addr, data[:size])
        fresh = rng.integers(0, 256, size, dtype=np.uint8)
        pgdat.mem.frames[pages[:got]] = fresh.reshape(got, PAGE_SIZE)
        parent_sees = proc.read_user(addr, size) == fresh.tobytes()
        child_sees = child.read_user(addr, size) == fresh.tobytes()
        row.note = (
            f"DMA seen by parent: {'yes' if parent_sees else 'NO'}, "
            f"by child: {'yes' if child_sees else 'no'}"
        )
        child.exit()
    _release(k, pages, got)
    acq1, rel1 = k.vmstat.pins()
    row.acquired, row.released = acq1 - acq0, rel1 - rel0
    if got:
        row.refcount_after = int(pgdat.pages.refcount[int(pgdat.pages.head[pages[0]])])
    if kind not in ("fork",) and not label.startswith("untouched"):
        if proc.read_user(addr, length) != data:
            row.note = "DATA MISMATCH"
    if label.startswith("untouched") and got:
        zero = int(pages[0]) == 0
        row.note = "the shared zero page" if zero else "fresh anon pages"
    proc.exit()
    return row


def _size_arg(console: Console, size: str, least: int, multiple: int, rule: str) -> int | None:
    """``--size`` in bytes, or None after saying on ``console`` what is wrong with it."""
    try:
        nbytes = parse_size(size)
    except ValueError as e:
        console.print(f"[red]--size: {e}")
        return None
    if nbytes < least or nbytes % multiple:
        console.print(f"[red]--size must be {rule}")
        return None
    return nbytes


def gup_demo(profile: str = "all", seed: int = 1, size: str = "64M") -> int:
    """The GUP demonstration: return 0 if every profile's sanitizer verdict is clean."""
    console = Console()
    nbytes = _size_arg(console, size, PAGE_SIZE, PAGE_SIZE,
                       "a positive multiple of 4096 bytes")
    if nbytes is None:
        return 2
    names = list(PROFILES) if profile == "all" else [get_profile(profile).name]
    mem = max(256 << 20, 12 * nbytes + (64 << 20))
    results: dict[str, list[Row]] = {}
    verdicts: dict[str, str] = {}
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("pinning", total=len(names) * len(BUFFERS))
        for name in names:
            k = Kernel(mem=mem, profile=name)
            rng = np.random.default_rng(seed)
            san = Sanitizer(k.pgdat, recipe=f"dioscope demo --profile {name} --seed {seed} "
                            f"--size {size}")
            rows = []
            for label, io, kind in BUFFERS:
                rows.append(_one(k, label, io, kind, nbytes, rng))
                progress.advance(task)
            san.check_quiescent()
            verdicts[name] = "clean" if not san.violations else (
                f"{len(san.violations)} violation(s): {san.violations[0]}"
            )
            san.detach()
            results[name] = rows

    npages = nbytes // PAGE_SIZE
    console.print(
        f"[bold]dioscope[/bold]: acquiring a {size} buffer ({npages} pages) for Direct I/O, "
        f"per profile (pid {os.getpid()}, seed {seed})"
    )
    for i, (label, io, _kind) in enumerate(BUFFERS):
        t = Table(title=f"{io} a {label} buffer", title_justify="left")
        t.add_column("")
        for name in names:
            t.add_column(name, justify="right")
        fields = [
            ("acquired with", lambda k, r: "FOLL_PIN" if k.DIO_FOLL_PIN else "FOLL_GET"),
            ("GUP returned", lambda k, r: str(r.ret)),
            ("nr_foll_pin_acquired +", lambda k, r: str(r.acquired)),
            ("nr_foll_pin_released +", lambda k, r: str(r.released)),
            ("page 0 folio refcount, held", lambda k, r: str(r.refcount_held)),
            ("page 0 folio pincount, held", lambda k, r: str(r.pincount_held)),
            ("maybe DMA-pinned, held", lambda k, r: r.maybe_pinned),
            ("page 0 folio refcount, after", lambda k, r: str(r.refcount_after)),
            ("note", lambda k, r: r.note),
        ]
        for fname, fn in fields:
            t.add_row(fname, *[fn(get_profile(n), results[n][i]) for n in names])
        console.print(t)
    t = Table(title="sanitizer verdict", title_justify="left")
    t.add_column("profile")
    t.add_column("verdict")
    for name in names:
        t.add_row(name, verdicts[name])
    console.print(t)
    return 0 if all(v == "clean" for v in verdicts.values()) else 1


def main(profile: str = "all", seed: int = 1, size: str = "64M", ops: int = 300,
         device: str = "file", gup: bool = False) -> int:
    """``make demo``: the O_DIRECT workload under each profile, one comparison table.

    Return: 0 if every byte matched, every error was the expected one, and every profile's
    sanitizer verdict is clean; 1 otherwise; 2 for bad arguments.
    """
    if gup:
        return gup_demo(profile, seed, size)
    from .workload import run_workload

    console = Console()
    nbytes = _size_arg(console, size, 8 << 20, 4 << 20, "a multiple of 4M and at least 8M")
    if nbytes is None:
        return 2
    names = list(PROFILES) if profile == "all" else [get_profile(profile).name]
    stats = []
    with Progress(console=console, transient=True) as progress:
        for name in names:
            task = progress.add_task(f"profile {name}", total=ops)

            def advance(_i: int, t: Any = task) -> None:
                progress.advance(t)

            stats.append(run_workload(name, size=nbytes, ops=ops, seed=seed, device=device,
                                      progress=advance))
    console.print(
        f"[bold]dioscope[/bold]: {ops} O_DIRECT operations on a {size} file (iomap "
        f"filesystem on a {'file-backed' if device == 'file' else 'memory'} device), seed "
        f"{seed}; every byte read is checked against an independent record")
    t = Table(title="per profile", title_justify="left")
    t.add_column("")
    for st in stats:
        t.add_column(st.profile, justify="right")
    rows: list[tuple[str, Any]] = [
        ("syscalls", lambda s: s.syscalls),
        ("bytes read", lambda s: s.bytes_read),
        ("bytes written", lambda s: s.bytes_written),
        ("nr_foll_pin_acquired", lambda s: s.pins_acquired),
        ("nr_foll_pin_released", lambda s: s.pins_released),
        ("pages at the device", lambda s: s.pages_in_flight),
        ("  of them maybe DMA-pinned", lambda s: s.pages_maybe_pinned),
        ("bios", lambda s: s.bios),
        ("requests", lambda s: s.requests),
        ("errors (all expected)", lambda s: ", ".join(
            f"{k} {v}" for k, v in sorted(s.errors.items())) or "none"),
        ("unexpected results", lambda s: len(s.unexpected)),
        ("data mismatches", lambda s: s.data_errors),
        ("sanitizer", lambda s: s.sanitizer),
        ("seconds", lambda s: f"{s.seconds:.1f}"),
    ]
    for label, fn in rows:
        t.add_row(label, *[str(fn(st)) for st in stats])
    console.print(t)
    bad = [st for st in stats if st.unexpected or st.data_errors or st.sanitizer != "clean"]
    for st in bad:
        for u in st.unexpected[:5]:
            console.print(f"[red]{st.profile}: {u}")
    return 1 if bad else 0

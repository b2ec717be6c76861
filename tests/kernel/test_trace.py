"""ftrace text format of block tracepoints, checked against a capture from the 6.18 host.

``data/host_block_trace.txt`` holds tracefs lines of four O_DIRECT syscalls on the host (see
its header). The model runs the same bios on a device shaped like the host's vda and must
print the same lines once pid, cpu and timestamp are masked: exactly, for the single-request
syscalls; for the split ones, the same submission events in the same order and the same set
of issued and completed requests (the host's completion interrupts and requeues by a kworker
come at times the model does not reproduce).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from dioscope.block.blk_core import blk_finish_plug, blk_start_plug, submit_bio
from dioscope.block.blk_settings import QueueLimits
from dioscope.block.blk_types import REQ_FLAG, REQ_OP, Bio
from dioscope.block.devices import MemDevice
from dioscope.kernel.hooks import Hooks
from dioscope.kernel.task import TaskStruct, running
from dioscope.kernel.trace import (
    TraceBuffer,
    blk_fill_rwbs,
    format_event,
    mkdev,
    normalise_line,
    parse_line,
    trace_event,
)
from dioscope.machine import Kernel
from dioscope.mm.page_alloc import alloc_pages

HOST = Path(__file__).parent / "data" / "host_block_trace.txt"
R, W = int(REQ_OP.REQ_OP_READ), int(REQ_OP.REQ_OP_WRITE)
F = REQ_FLAG


@pytest.mark.parametrize(("opf", "rwbs"), [
    (R, "R"), (W, "W"), (R | F.REQ_SYNC, "RS"), (W | F.REQ_SYNC, "WS"),
    (R | F.REQ_RAHEAD, "RA"), (R | F.REQ_META | F.REQ_RAHEAD, "RAM"),
    (W | F.REQ_SYNC | F.REQ_META, "WSM"), (W | F.REQ_FUA | F.REQ_SYNC, "WFS"),
    (W | F.REQ_PREFLUSH | F.REQ_SYNC, "FWS"), (int(REQ_OP.REQ_OP_FLUSH), "F"),
    (int(REQ_OP.REQ_OP_FLUSH) | F.REQ_PREFLUSH, "FF"), (int(REQ_OP.REQ_OP_DISCARD), "D"),
    (5, "DE"), (9, "WZ"), (13, "ZA"), (34, "N"), (W | F.REQ_ATOMIC, "WU"),
    (R | F.REQ_NOMERGE | F.REQ_IDLE, "R"),
])
def test_rwbs(opf: int, rwbs: str) -> None:
    assert blk_fill_rwbs(int(opf)) == rwbs


BIO = {"dev": mkdev(254, 0), "sector": 513294336, "nr_sector": 8, "rwbs": "RS",
       "comm": "python3"}
RQ = {**BIO, "bytes": 4096, "cmd": "", "ioprio": (2 << 13) | 4}


@pytest.mark.parametrize(("name", "fields", "ioprio", "body"), [
    ("block_bio_queue", BIO, True, "254,0 RS 513294336 + 8 [python3]"),
    ("block_getrq", BIO, True, "254,0 RS 513294336 + 8 [python3]"),
    ("block_bio_backmerge", BIO, True, "254,0 RS 513294336 + 8 [python3]"),
    ("block_split", {**BIO, "new_sector": 513296368}, True,
     "254,0 RS 513294336 / 513296368 [python3]"),
    ("block_rq_insert", RQ, True, "254,0 RS 4096 () 513294336 + 8 be,0,4 [python3]"),
    ("block_rq_issue", RQ, False, "254,0 RS 4096 () 513294336 + 8 [python3]"),
    ("block_rq_complete", {**RQ, "error": -5}, True, "254,0 RS () 513294336 + 8 be,0,4 [-5]"),
    ("block_rq_complete", {**RQ, "error": 0, "sector": -1, "nr_sector": 0, "ioprio": 0},
     True, "254,0 RS () 18446744073709551615 + 0 none,0,0 [0]"),
    ("block_bio_complete", {**BIO, "error": 0}, True, "254,0 RS 513294336 + 8 [0]"),
    ("block_plug", BIO, True, "[python3]"),
    ("block_unplug", {**BIO, "nr_rq": 3}, True, "[python3] 3"),
    ("gup_pin", {"pfn": 7}, True, "pfn=7"),
])
def test_format(name: str, fields: dict[str, object], ioprio: bool, body: str) -> None:
    assert format_event(name, fields, ioprio) == body


def test_line_layout_and_counter_timestamps() -> None:
    hooks = Hooks()
    tb = TraceBuffer(hooks)
    with running(TaskStruct("python3", 17604)):
        trace_event(hooks, "block_bio_queue", BIO)
    assert tb.lines() == [
        "         python3-17604   [000] .....     0.000001: block_bio_queue: "
        "254,0 RS 513294336 + 8 [python3]"]
    tb.detach()
    trace_event(hooks, "block_bio_queue", BIO)
    assert len(tb.lines()) == 1


def test_parse_and_normalise_host_lines() -> None:
    lines = [ln for ln in HOST.read_text().splitlines() if not ln.startswith("#")]
    assert len(lines) == 46
    for ln in lines:
        assert parse_line(ln) is not None, ln
    assert normalise_line(lines[0]) == (
        "python3-PID [CPU] ..... TS: block_bio_queue: 254,0 RS 513294336 + 8 [python3]")
    assert normalise_line("# tracer: nop") is None
    p = parse_line("    kworker/1:1H-44      [001] .....  1768.124899: block_rq_issue: x")
    assert p is not None and (p["comm"], p["pid"], p["event"]) == ("kworker/1:1H", "44",
                                                                   "block_rq_issue")


# --- the host workload in the model ------------------------------------------------------
BASE = 513294336  # the file's first sector on the host's vda


def _host_like(k: Kernel) -> MemDevice:
    lim = QueueLimits(logical_block_size=512, physical_block_size=4096, max_sectors_kb=4096,
                      max_hw_sectors_kb=2147483647, max_segments=254,
                      max_segment_size=0xFFFFFFFF)
    return MemDevice(k.pgdat, 536870912 * 512, limits=lim, name="vda", major=254, minor=0)


def _dio(dev: MemDevice, k: Kernel, op: int, sector: int,
         bios: list[list[tuple[int, int]]]) -> None:
    """One O_DIRECT syscall as iomap does it: bios of (len, offset) pieces on scattered
    pages, submitted inside one plug."""
    plug = blk_start_plug()
    for layout in bios:
        bio = Bio(dev, len(layout), op | int(F.REQ_SYNC), k.pgdat)
        for i, (length, off) in enumerate(layout):
            pfn = alloc_pages(k.pgdat, 0)
            alloc_pages(k.pgdat, 0)  # a gap: no two pages of a bio are adjacent
            bio.set_bvec(i, pfn, length, off)
        bio.bi_vcnt = len(layout)
        bio.bi_iter.bi_size = sum(n for n, _o in layout)
        bio.bi_iter.bi_sector = sector
        sector += bio.bi_iter.bi_size >> 9
        submit_bio(bio)
    blk_finish_plug(plug)


WORKLOAD: list[tuple[int, int, list[list[tuple[int, int]]]]] = [
    (R, BASE, [[(4096, 0)]]),
    (R, BASE, [[(4096, 0)] * 256, [(4096, 0)] * 256]),
    (R, BASE, [[(3584, 512)] + [(4096, 0)] * 255, [(512, 0)]]),
    (W, BASE + 8, [[(4096, 0)] * 2]),
]


def _groups(lines: list[str]) -> list[list[str]]:
    """Host lines grouped per syscall (a group starts at each syscall's first bio)."""
    starts = {"254,0 RS 513294336 + 8", "254,0 RS 513294336 + 2048",
              "254,0 RS 513294336 + 2047", "254,0 WS 513294344 + 16"}
    groups: list[list[str]] = []
    for ln in lines:
        p = parse_line(ln)
        assert p is not None
        if p["event"] == "block_bio_queue" and p["body"].rsplit(" [", 1)[0] in starts:
            groups.append([])
        groups[-1].append(ln)
    return groups


def _model_groups() -> list[list[str]]:
    k = Kernel("64M", "6.18")
    dev = _host_like(k)
    tb = TraceBuffer.for_pgdat(k.pgdat)
    out = []
    with running(TaskStruct("python3", 17604)):
        for op, sector, bios in WORKLOAD:
            tb.clear()
            _dio(dev, k, op, sector, bios)
            out.append(tb.lines())
    tb.detach()
    return out


def _norm(lines: list[str], keep: Callable[[str], bool]) -> list[str]:
    out = []
    for ln in lines:
        n = normalise_line(ln)
        assert n is not None
        if keep(n.split(": ")[1]):
            out.append(n)
    return out


def _bodies(lines: list[str], event: str) -> set[str]:
    """Bodies of one event, without the trailing [comm]."""
    out = set()
    for ln in lines:
        p = parse_line(ln)
        assert p is not None
        if p["event"] == event:
            out.add(p["body"].rsplit(" [", 1)[0] if event == "block_rq_issue" else p["body"])
    return out


def test_model_trace_matches_host() -> None:
    host = _groups([ln for ln in HOST.read_text().splitlines() if not ln.startswith("#")])
    model = _model_groups()
    assert len(host) == len(model) == 4
    # One request per syscall: every line, in order.
    for i in (0, 3):
        assert _norm(model[i], lambda e: True) == _norm(host[i], lambda e: True)
    # Split syscalls: submission in order, issue and completion as sets.
    submit = {"block_bio_queue", "block_split", "block_getrq", "block_rq_insert",
              "block_bio_backmerge", "block_bio_frontmerge"}
    for i in (1, 2):
        assert _norm(model[i], lambda e: e in submit) == _norm(host[i], lambda e: e in submit)
        for ev in ("block_rq_issue", "block_rq_complete"):
            assert _bodies(model[i], ev) == _bodies(host[i], ev)


def test_model_trace_is_deterministic() -> None:
    a, b = _model_groups(), _model_groups()
    assert a == b
    assert [len(g) for g in a] == [5, 20, 12, 5]


def test_gup_events_of_our_own() -> None:
    from dioscope.mm.gup import pin_user_pages_fast, unpin_user_pages

    k = Kernel("64M", "5.9-pin")
    proc = k.spawn()
    addr = proc.mmap(8 * 4096)
    proc.touch(addr, 8 * 4096, write=True)
    tb = TraceBuffer.for_pgdat(k.pgdat, gup=True)
    pages = np.empty(8, np.int64)
    assert pin_user_pages_fast(proc.mm, addr, 2, 1, pages) == 2
    unpin_user_pages(k.pgdat, pages, 2)
    p0, p1 = int(pages[0]), int(pages[1])
    assert [ln.split(": ", 1)[1] for ln in tb.lines()] == [
        f"gup_pin: nr=2 pfn={p0:#x},{p1:#x} holder=- site=pin_user_pages_fast",
        f"gup_unpin: nr=2 pfn={p0:#x},{p1:#x} holder=- site=unpin_user_pages",
    ]
    tb.detach()
    assert not k.pgdat.hooks.active and not k.pgdat.hooks.observers

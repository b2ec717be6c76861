"""Tracepoints in the kernel's ftrace text format (``include/trace/events/block.h``,
``kernel/trace/blktrace.c`` ``blk_fill_rwbs``, ``kernel/trace/trace_output.c``).

Model code fires a tracepoint with :func:`trace_event` (``hooks.tracepoints`` callbacks get
``(name, fields)``; the fields are the event's ``TP_STRUCT__entry`` members, assigned when
the event fires, as ``TP_fast_assign`` does). :class:`TraceBuffer` subscribes and renders
each event as the line ``/sys/kernel/tracing/trace`` prints, so a model trace diffs line by
line against a tracefs capture once :func:`normalise_line` has masked the timestamp, pid and
cpu columns. Measured on the 6.18 host (``tests/kernel/data/host_block_trace.txt``)::

             python3-13466   [001] .....  1371.487585: block_bio_queue: 254,0 RS 513294336 + 2048 [python3]
             python3-13466   [001] .....  1371.487590: block_split: 254,0 RS 513294336 / 513296368 [python3]
             python3-13466   [001] ...1.  1371.487600: block_rq_insert: 254,0 RS 1040384 () 513294336 + 2032 be,0,4 [python3]
              <idle>-0       [001] .Ns1.  1371.488540: block_rq_complete: 254,0 RS () 513294336 + 2032 be,0,4 [0]

The ``be,0,4`` I/O priority column exists only with the ``TRACE_RQ_IOPRIO`` switch.
"""  # noqa: E501

from __future__ import annotations

import itertools
import re
from collections.abc import Callable
from typing import Any

from .hooks import Hooks
from .task import current

__all__ = [
    "MINORBITS",
    "TraceBuffer",
    "blk_fill_rwbs",
    "format_event",
    "mkdev",
    "normalise_line",
    "parse_line",
    "trace_event",
]

MINORBITS = 20
"""``dev_t`` inside the kernel is ``major << 20 | minor`` (``MKDEV``)."""
_U64 = (1 << 64) - 1

# REQ_OP values and flag bits (as in dioscope.block.blk_types; kept here so the kernel layer
# does not import the block layer).
_OP_READ, _OP_WRITE, _OP_FLUSH, _OP_DISCARD, _OP_SECURE_ERASE = 0, 1, 2, 3, 5
_OP_ZONE_APPEND, _OP_WRITE_ZEROES = 13, 9
_REQ_SYNC, _REQ_META, _REQ_FUA, _REQ_PREFLUSH = 1 << 11, 1 << 12, 1 << 17, 1 << 18
_REQ_RAHEAD, _REQ_ATOMIC = 1 << 19, 1 << 27
_OP_LETTERS = {
    _OP_READ: "R", _OP_WRITE: "W", _OP_FLUSH: "F", _OP_DISCARD: "D",
    _OP_SECURE_ERASE: "DE", _OP_ZONE_APPEND: "ZA", _OP_WRITE_ZEROES: "WZ",
}
_IOPRIO_CLASS_NAMES = {0: "none", 1: "rt", 2: "be", 3: "idle", 7: "invalid"}


def mkdev(major: int, minor: int) -> int:
    """``MKDEV(major, minor)``."""
    return (major << MINORBITS) | minor


def blk_fill_rwbs(opf: int) -> str:
    """``blk_fill_rwbs()``: the RWBS string of an op and its flags.

    ``F`` for a preflush, then the op (``R`` read, ``W`` write, ``F`` flush, ``D`` discard,
    ``N`` anything else), then ``F`` for FUA, ``A`` readahead, ``S`` sync, ``M`` metadata and
    ``U`` atomic, in that order.
    SIMPLIFIED: the 6.18 letters for every profile (``ZA``/``WZ``/``U`` came later than 5.9,
    which prints ``N`` for those ops; the model's 5.9 workloads issue none of them).
    Return: the string (at most 9 characters).
    """
    out = "F" if opf & _REQ_PREFLUSH else ""
    out += _OP_LETTERS.get(opf & 0xFF, "N")
    if opf & _REQ_FUA:
        out += "F"
    if opf & _REQ_RAHEAD:
        out += "A"
    if opf & _REQ_SYNC:
        out += "S"
    if opf & _REQ_META:
        out += "M"
    if opf & _REQ_ATOMIC:
        out += "U"
    return out


def trace_event(hooks: Hooks, name: str, fields: dict[str, Any]) -> None:
    """Fire tracepoint ``name``: every ``hooks.tracepoints`` callback gets the fields.

    Callers test ``hooks.tracepoints`` first so an untraced run builds no field dict.
    """
    for cb in hooks.tracepoints:
        cb(name, fields)


# --- formatting --------------------------------------------------------------------------
def _dev(f: dict[str, Any]) -> str:
    dev = int(f["dev"])
    return f"{dev >> MINORBITS},{dev & ((1 << MINORBITS) - 1)}"


def _ioprio(f: dict[str, Any], with_ioprio: bool) -> str:
    if not with_ioprio:
        return ""
    prio = int(f.get("ioprio", 0))
    klass = (prio >> 13) & 7
    name = _IOPRIO_CLASS_NAMES.get(klass, f"0x{klass:x}")
    return f" {name},{(prio >> 3) & 0x3FF},{prio & 7}"


def _sec(f: dict[str, Any]) -> int:
    return int(f["sector"]) & _U64  # %llu of a sector_t: -1 prints as 2**64 - 1


def format_event(name: str, f: dict[str, Any], with_ioprio: bool = True) -> str:
    """The text after ``name: `` that ftrace prints for a block event (its print fmt).

    Return: the event body; for an event without a known format, ``key=value`` pairs.
    """
    if name in ("block_bio_queue", "block_getrq", "block_bio_backmerge",
                "block_bio_frontmerge", "block_bio_bounce"):
        return f"{_dev(f)} {f['rwbs']} {_sec(f)} + {f['nr_sector']} [{f['comm']}]"
    if name == "block_split":
        return f"{_dev(f)} {f['rwbs']} {_sec(f)} / {int(f['new_sector']) & _U64} [{f['comm']}]"
    if name == "block_bio_complete":
        return f"{_dev(f)} {f['rwbs']} {_sec(f)} + {f['nr_sector']} [{f['error']}]"
    if name in ("block_rq_insert", "block_rq_issue", "block_rq_merge"):
        return (f"{_dev(f)} {f['rwbs']} {f['bytes']} ({f.get('cmd', '')}) {_sec(f)} + "
                f"{f['nr_sector']}{_ioprio(f, with_ioprio)} [{f['comm']}]")
    if name in ("block_rq_complete", "block_rq_error"):
        return (f"{_dev(f)} {f['rwbs']} ({f.get('cmd', '')}) {_sec(f)} + "
                f"{f['nr_sector']}{_ioprio(f, with_ioprio)} [{f['error']}]")
    if name == "block_plug":
        return f"[{f['comm']}]"
    if name == "block_unplug":
        return f"[{f['comm']}] {f['nr_rq']}"
    return " ".join(f"{k}={v}" for k, v in f.items())


def _flags(name: str, context: str) -> str:
    """The ``irqs-off need-resched hardirq/softirq preempt-depth migrate-disable`` column as
    the host prints it for these events: completions run in softirq with preemption off,
    ``block_rq_insert`` fires under the hctx lock."""
    if context == "softirq":
        return "..s1."
    if name == "block_rq_insert":
        return "...1."
    return "....."


class TraceBuffer:
    """A ring of rendered events, like the tracefs ``trace`` file of one instance.

    Subscribes to ``hooks.tracepoints`` on creation; :meth:`detach` unsubscribes. The
    timestamp is the event's ordinal in microseconds, so a replay gives an identical trace.
    ``events`` restricts recording to those names (``set_event``).
    """

    def __init__(self, hooks: Hooks, *, with_ioprio: bool = True,
                 events: set[str] | None = None, gup: bool = False) -> None:
        self.hooks = hooks
        self.with_ioprio = with_ioprio
        self.events = events
        self.records: list[tuple[int, str, int, str, str, str]] = []
        self._count = 0
        self._cb: Callable[[str, dict[str, Any]], None] = self._record
        hooks.tracepoints.append(self._cb)
        hooks.active = True
        self._gup: _GupEvents | None = None
        if gup:
            self._gup = _GupEvents(self._record)
            hooks.subscribe(self._gup)

    @classmethod
    def for_pgdat(cls, pgdat: Any, events: set[str] | None = None,
                  gup: bool = False) -> TraceBuffer:
        """A buffer on a machine's hooks, formatted as that machine's profile prints."""
        return cls(pgdat.hooks, with_ioprio=pgdat.cfg.TRACE_RQ_IOPRIO, events=events,
                   gup=gup)

    def _record(self, name: str, fields: dict[str, Any]) -> None:
        if self.events is not None and name not in self.events:
            return
        self._count += 1
        task = current()
        body = format_event(name, fields, self.with_ioprio)
        self.records.append((self._count, task.comm, task.pid, _flags(name, task.context),
                             name, body))

    def detach(self) -> None:
        if self._cb in self.hooks.tracepoints:
            self.hooks.tracepoints.remove(self._cb)
        if self._gup is not None and self._gup in self.hooks.observers:
            self.hooks.unsubscribe(self._gup)
        self.hooks.active = bool(self.hooks.observers) or bool(self.hooks.tracepoints)

    def clear(self) -> None:
        self.records.clear()

    def lines(self) -> list[str]:
        """Every recorded event as ftrace prints it:
        ``%16s-%-7d [%03d] %s %5lu.%06lu: name: body``."""
        out = []
        for ts, comm, pid, flags, name, body in self.records:
            out.append(f"{comm:>16}-{pid:<7} [000] {flags} {ts // 1000000:5d}."
                       f"{ts % 1000000:06d}: {name}: {body}")
        return out

    def names(self) -> list[str]:
        return [r[4] for r in self.records]

    def text(self) -> str:
        return "\n".join(self.lines()) + ("\n" if self.records else "")


def _pfns(pfns: Any) -> str:
    """A page array for a trace line: every pfn up to four, else the run or the ends."""
    lst = [int(p) for p in pfns]
    if len(lst) <= 4:
        return ",".join(f"{p:#x}" for p in lst)
    if all(b == a + 1 for a, b in itertools.pairwise(lst)):
        return f"{lst[0]:#x}..{lst[-1]:#x}"
    return f"{lst[0]:#x},...,{lst[-1]:#x}"


def _holder(holder: object) -> str:
    if holder is None:
        return "-"
    seq = getattr(holder, "seq", None)
    name = type(holder).__name__.lower()
    return f"{name}#{seq}" if seq is not None else name


class _GupEvents:
    """The model's own events for reference and pin traffic (no kernel tracepoint exists):
    ``gup_get`` / ``gup_pin`` when taken, ``gup_put`` / ``gup_unpin`` when released, with
    the page count, the pfns, the holder and the kernel function."""

    def __init__(self, record: Callable[[str, dict[str, Any]], None]) -> None:
        self.record = record

    def _emit(self, name: str, pfns: Any, holder: object, site: str) -> None:
        self.record(name, {"nr": len(pfns), "pfn": _pfns(pfns), "holder": _holder(holder),
                           "site": site})

    def on_acquire(self, kind: str, pfns: Any, holder: object, site: str) -> None:
        self._emit("gup_pin" if kind == "pin" else "gup_get", pfns, holder, site)

    def on_release(self, kind: str, pfns: Any, holder: object, site: str) -> None:
        self._emit("gup_unpin" if kind == "pin" else "gup_put", pfns, holder, site)

    def on_free(self, pfns: Any, order: int, site: str) -> None:
        pass


_LINE = re.compile(
    r"^\s*(?P<comm>.+?)-(?P<pid>\d+)\s+(?:\(\s*[-\d]+\)\s+)?\[(?P<cpu>\d+)\]\s+"
    r"(?P<flags>[.\w]{4,5})\s+(?P<ts>\d+\.\d+):\s(?P<event>\w+):\s?(?P<body>.*)$"
)


def parse_line(line: str) -> dict[str, str] | None:
    """Split one ftrace text line into comm, pid, cpu, flags, ts, event and body.

    Return: the parts, or None for a comment or a line of another shape.
    """
    m = _LINE.match(line.rstrip("\n"))
    return m.groupdict() if m else None


def normalise_line(line: str) -> str | None:
    """Mask the columns that differ between any two runs (pid, cpu, timestamp) so a model
    line and a host line of the same event compare equal.

    Return: ``comm-PID [CPU] flags TS: event: body``, or None for a non-event line.
    """
    p = parse_line(line)
    if p is None:
        return None
    return f"{p['comm']}-PID [CPU] {p['flags']} TS: {p['event']}: {p['body']}"

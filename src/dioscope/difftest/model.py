"""The model runner: run a scenario in a model machine under one profile.

Each scenario gets a fresh machine (``Kernel``) sized to its mappings and files, a
``MemDevice`` with the scenario's ``[device]`` limits (or the limits given, e.g. the host
disk's), and ``ModelFs`` mounted at ``/``. The ``[[file]]`` entries are created through the
page cache and fsynced, as ``scenario-format.md`` says; then every step runs through the
``Process`` API. The result has the host runner's shape and definitions: ``pins`` is the
delta of the model's exact ``nr_foll_pin_*`` counters around the step (after its completions
and deferred work ran), and the data, transferred and tail verdicts come from
``difftest.verify`` over a side-effect-free view of the process's memory (``ModelMem``) and of
the file (``ModelFiles``: dirty page-cache pages, else the disk, as an O_DIRECT read-back sees
it).

A failing syscall is an errno, as on the host. Any other exception raised by the model is a
model bug: the step's result records it in ``crash``, the scenario's ``error`` says so, and
the steps after it do not run; ``run_model`` itself never raises for a valid scenario.

Harness code: imports the model, never the other way round.
"""

from __future__ import annotations

import errno as errno_mod
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np

from dioscope.block.blk_settings import QueueLimits
from dioscope.block.devices import MemDevice
from dioscope.difftest import verify
from dioscope.difftest.hostmem import UNMAPPED, new_mapping, prot_bits
from dioscope.difftest.model_views import ModelFiles, ModelMem, _PageWatch, _Trace
from dioscope.difftest.results import ScenarioResult, StepResult, crash_sentence
from dioscope.difftest.runner import StepAddressing
from dioscope.fs.fs_types import OFLAG
from dioscope.fs.modelfs import MODELFS_BLOCKSIZE, ModelFs
from dioscope.kernel.task import running
from dioscope.kernel.types import PAGE_SIZE
from dioscope.machine import Kernel
from dioscope.mm.mmap import (
    MADV_DONTNEED,
    MADV_HUGEPAGE,
    MADV_NOHUGEPAGE,
    MAP_ANONYMOUS,
    MAP_FIXED,
    MAP_POPULATE,
    MAP_PRIVATE,
    MAP_SHARED,
    PROT_NONE,
)
from dioscope.mm.page import PG
from dioscope.scenarios import content
from dioscope.scenarios.format import (
    FALLOC_WORDS,
    IO_OPS,
    PROFILES,
    READ_OPS,
    VECTOR_OPS,
    WRITE_OPS,
    DeviceSpec,
    FileSpec,
    Scenario,
    Step,
)

__all__ = [
    "ModelCrash",
    "ModelFiles",
    "ModelMem",
    "ModelRun",
    "ModelRunError",
    "device_limits",
    "machine_sizes",
    "run_model",
]

U64 = (1 << 64) - 1
HPAGE = 2 << 20
MiB = 1 << 20
UINT_MAX = (1 << 32) - 1
_OPEN_FLAGS = {
    "rdonly": int(OFLAG.O_RDONLY),
    "wronly": int(OFLAG.O_WRONLY),
    "rdwr": int(OFLAG.O_RDWR),
    "direct": int(OFLAG.O_DIRECT),
    "creat": int(OFLAG.O_CREAT),
    "trunc": int(OFLAG.O_TRUNC),
    "sync": int(OFLAG.O_SYNC),
    "dsync": int(OFLAG.O_DSYNC),
}
_MADV = {"dontneed": MADV_DONTNEED, "hugepage": MADV_HUGEPAGE, "nohugepage": MADV_NOHUGEPAGE}
_CACHE_NEWER = int(PG.PG_dirty | PG.PG_writeback)
# [device] extension keys the runner accepts besides the format's five (QueueLimits fields
# and the sysfs *_kb aliases).
_LIMIT_EXTENSIONS = (
    "max_hw_sectors_kb",
    "max_segment_size",
    "virt_boundary_mask",
    "chunk_sectors",
    "seg_boundary_mask",
)


class ModelRunError(Exception):
    """The runner itself could not carry out a step (not a syscall failure, not a model
    crash): e.g. a step names a mapping whose mmap failed."""


class ModelCrash(Exception):
    """The model raised an exception during a step (a model bug); the message is the
    exception in one line (``IndexError: ...``)."""


# --------------------------------------------------------------------------------------------
# Machine set-up


def device_limits(dev: DeviceSpec) -> QueueLimits:
    """The queue limits of a scenario's ``[device]`` table.

    The format fixes five (defaults 512 / 4096 / 511 / 4096 KiB / 254); the rest are those of
    a virtio-blk disk like the host's (``max_hw_sectors_kb`` unlimited, ``max_segment_size``
    UINT_MAX), unless the table sets them as extension keys. Raises ValueError for limits
    the block layer would refuse.
    """
    kw: dict[str, int] = {
        "logical_block_size": dev.logical_block_size,
        "physical_block_size": dev.physical_block_size,
        "dma_alignment": dev.dma_alignment,
        "max_segments": dev.max_segments,
        "max_segment_size": UINT_MAX,
    }
    hw_kb = max(dev.max_sectors_kb, 2147483647)
    for k in _LIMIT_EXTENSIONS:
        v = dev.extra.get(k)
        if isinstance(v, int) and not isinstance(v, bool):
            if k == "max_hw_sectors_kb":
                hw_kb = v
            else:
                kw[k] = v
    return QueueLimits(max_sectors_kb=dev.max_sectors_kb, max_hw_sectors_kb=hw_kb, **kw)


def _round_up(n: int, unit: int) -> int:
    return (n + unit - 1) // unit * unit


def machine_sizes(scenario: Scenario) -> tuple[int, int]:
    """(memory, disk) bytes for a scenario's machine.

    Memory holds every mapping (each THP mapping on a 2 MiB boundary), the files' page
    cache, the writes' bounce/cached pages, and headroom; the disk holds the files plus every
    byte a step may write or allocate, twice over (the disk is sparse: unused space is
    free).
    """
    maps = sum(_round_up(n, PAGE_SIZE) + (HPAGE if s.args["thp"] else 0)
               for s in scenario.steps if s.op == "mmap" for n in [s.args["length"]])
    files = sum(_round_up(f.size, PAGE_SIZE) for f in scenario.files)
    reach = 0
    for s in scenario.steps:
        a = s.args
        if s.op in IO_OPS:
            if s.op in VECTOR_OPS:
                total = sum(max(seg.length, 0) for seg in a["iov"])
            else:
                total = max(a["length"], 0)
            reach = max(reach, max(a["offset"], 0) + min(total, 1 << 34))
        elif s.op in ("ftruncate", "fallocate"):
            reach = max(reach, max(a.get("offset", 0), 0) + max(a["length"], 0))
    reach = min(reach, 1 << 34)
    mem = _round_up(2 * (maps + files) + min(reach, 1 << 30) + 128 * MiB, 64 * MiB)
    disk = _round_up(2 * (files + reach) + 64 * MiB, 64 * MiB)
    return mem, max(disk, 256 * MiB)


def _file_layout(spec: FileSpec) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """(holes, unwritten) block-aligned ranges for ``create_file``.

    ``holes`` are the whole blocks inside ``spec.holes`` (or the whole file for ``hole``);
    partial blocks at a hole's edges stay written, holding zeros (what ext4's punch hole
    leaves). ``unwritten`` covers the rest of the file for ``unwritten`` content.
    """
    size, bs = spec.size, MODELFS_BLOCKSIZE
    holes: list[tuple[int, int]] = []
    ranges = [(0, size)] if spec.content == "hole" else list(spec.holes)
    for off, n in ranges:
        lo = _round_up(off, bs)
        hi = off + n if off + n >= size else (off + n) // bs * bs
        if hi > lo:
            holes.append((lo, hi - lo))
    unwritten: list[tuple[int, int]] = []
    if spec.content == "unwritten" and size > 0:
        mask = np.ones(_round_up(size, bs) // bs, bool)
        for off, n in holes:
            mask[off // bs : _round_up(off + n, bs) // bs] = False
        edges = np.flatnonzero(np.diff(np.concatenate(([0], mask.view(np.int8), [0]))))
        for a, b in zip(edges[0::2].tolist(), edges[1::2].tolist(), strict=True):
            unwritten.append((a * bs, min(b * bs, size) - a * bs))
    return holes, unwritten


# --------------------------------------------------------------------------------------------
# The runner


@dataclass
class _Fd:
    fd: int
    name: str


class ModelRun(StepAddressing):
    """One run of one scenario under one profile (``run_model`` is the entry point)."""

    run_error = ModelRunError

    def __init__(self, scenario: Scenario, profile: str, limits: QueueLimits | None = None,
                 *, bios: bool = False, explain: bool = False) -> None:
        self.sc = scenario
        self.profile = profile
        self.limits = limits if limits is not None else device_limits(scenario.device)
        self.want_bios = bios or explain
        self.explain = explain
        mem, disk = machine_sizes(scenario)
        self.k = Kernel(mem, profile)
        self.dev = self.k.add_disk(MemDevice(self.k.pgdat, disk, limits=self.limits))
        self.fs = self.k.mount(ModelFs(self.dev, dio_engine="iomap"))
        self.proc = self.k.spawn()
        self.mem = ModelMem(self.proc)
        self.maps = self.mem.mappings
        self.files = ModelFiles(self.fs)
        self.fds: dict[str, _Fd] = {}
        self.lbs = int(self.limits.logical_block_size)
        self.tail_writes = {
            s.index
            for s in scenario.steps
            if s.op in WRITE_OPS
            and any(
                (e := s.expect_for(p)) is not None and e.tail is not None for p in PROFILES
            )
        }

    # ---------------------------------------------------------------- set-up

    def create_files(self) -> None:
        """Create every ``[[file]]`` through the page cache and fsync it."""
        for f in self.sc.files:
            holes, unwritten = _file_layout(f)
            data = content.file_content(self.sc.name, f)
            self.fs.create_file(f.name, f.size, data, holes=holes, unwritten=unwritten)
        self.quiesce()

    def quiesce(self) -> None:
        """Run the device's completions and the deferred work they queued."""
        for _ in range(1000):
            ran = self.dev.cq.run()
            wq = self.k.pgdat.system_wq
            if wq.pending:
                with running(self.dev.cq.worker):
                    ran += wq.flush()
            if not ran and not self.dev.cq.pending:
                return

    # ---------------------------------------------------------------- addresses

    # ---------------------------------------------------------------- steps

    def run_step(self, step: Step) -> StepResult:
        """Run one step (measured when it has expectations) and return its result.

        Raises ModelRunError when the runner cannot carry the step out; any other
        exception comes from the model.
        """
        res = StepResult(step.index, step.op, measured=step.measured)
        fn: Callable[[Step], tuple[int, int]] = getattr(self, f"_op_{step.op}")
        if step.op in ("fill", "touch"):
            self._check_access(step)
        pre = self._pre_io(step) if step.measured and step.op in IO_OPS else None
        events_before = len(self.k.pgdat.events.events)
        with self._observe(step) as obs:
            before = self.k.vmstat.pins()
            try:
                outcome = fn(step)
                self.quiesce()
            except ModelRunError:
                raise
            except Exception as e:
                raise ModelCrash(_one_line(e)) from e
            after = self.k.vmstat.pins()
        _set_outcome(res, outcome)
        if step.measured:
            res.pins = (after[0] - before[0], after[1] - before[1])
        new_events = self.k.pgdat.events.events[events_before:]
        if new_events:
            res.note = "; ".join(str(e) for e in new_events)
        if obs is not None:
            self._record_trace(step, res, obs)
        if pre is not None:
            try:
                self._post_io(step, res, pre)
            except Exception as e:  # the memory and file views call into the model
                raise ModelCrash(f"{_one_line(e)} (while checking the bytes)") from e
        return res

    @contextmanager
    def _observe(self, step: Step) -> Iterator[tuple[_Trace, _PageWatch | None] | None]:
        if not self.want_bios:
            yield None
            return
        hooks = self.k.pgdat.hooks
        trace = _Trace([], [])

        def tp(name: str, f: dict[str, Any]) -> None:
            if name == "block_bio_queue":
                trace.bios.append((str(f["rwbs"]), int(f["sector"]) << 9,
                                   int(f["nr_sector"]) << 9))
            elif name == "block_rq_issue":
                trace.requests.append((str(f["rwbs"]), int(f.get("bytes", 0))))

        watch = _PageWatch(self.k.pgdat) if self.explain else None
        hooks.tracepoints.append(tp)
        hooks.active = True
        if watch is not None:
            hooks.subscribe(watch)
        try:
            yield trace, watch
        finally:
            hooks.tracepoints.remove(tp)
            if watch is not None:
                hooks.unsubscribe(watch)
            hooks.active = bool(hooks.observers) or bool(hooks.tracepoints)

    def _record_trace(self, step: Step, res: StepResult,
                      obs: tuple[_Trace, _PageWatch | None]) -> None:
        trace, watch = obs
        extents: list[tuple[int, int, int, bool]] = []
        if step.op in IO_OPS and step.args["fd"] in self.fds:
            inode = self.fs.lookup(self.fds[step.args["fd"]].name)
            if inode is not None:
                extents = inode.ext.extents()
        res.bios = [(op, _file_offset(extents, off), size) for op, off, size in trace.bios]
        if not self.explain:
            return
        view: list[str] = []
        if trace.requests:
            sizes = ", ".join(f"{op} {n}" for op, n in trace.requests[:8])
            more = f" and {len(trace.requests) - 8} more" if len(trace.requests) > 8 else ""
            view.append(f"{len(trace.requests)} request(s) issued: {sizes}{more}")
        if watch is not None:
            view.extend(_squash(watch.lines))
        res.view = view

    # --- memory

    def _op_mmap(self, step: Step) -> tuple[int, int]:
        a = step.args
        prot = prot_bits(a["prot"])
        flags = MAP_PRIVATE if "private" in a["flags"] else MAP_SHARED
        if "populate" in a["flags"]:
            flags |= MAP_POPULATE
        fd = -1
        if a["file"] is not None:
            writable = "w" in a["prot"] and "shared" in a["flags"]
            acc = OFLAG.O_RDWR if writable else OFLAG.O_RDONLY
            try:
                fd = self.proc.open("/" + a["file"], int(acc))
            except OSError as e:
                return -1, e.errno or 0
        else:
            flags |= MAP_ANONYMOUS
        try:
            addr = self._map(a["length"], prot, flags, fd, a["thp"])
        except OSError as e:
            return -1, e.errno or 0
        finally:
            if fd >= 0:
                self.proc.close(fd)
        self.maps[a["name"]] = new_mapping(
            a["name"], addr, a["length"], prot, "private" in a["flags"], fd < 0
        )
        return 0, 0

    def _map(self, length: int, prot: int, flags: int, fd: int, thp: bool) -> int:
        """mmap ``length`` bytes; with ``thp``, on a 2 MiB boundary with MADV_HUGEPAGE (the
        host runner's reservation dance, so both see the same VMA)."""
        p = self.proc
        if not thp:
            return int(p.mmap(length, prot, flags, fd=fd))
        resv = int(p.mmap(length + HPAGE, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS))
        start = (resv + HPAGE - 1) // HPAGE * HPAGE
        try:
            p.mmap(length, prot, flags | MAP_FIXED, addr=start, fd=fd)
        except OSError:
            p.munmap(resv, length + HPAGE)
            raise
        if start > resv:
            p.munmap(resv, start - resv)
        tail = resv + length + HPAGE - (start + length)
        if tail > 0:
            p.munmap(start + length, tail)
        p.madvise(start, length, MADV_HUGEPAGE)
        return start

    def _op_fill(self, step: Step) -> tuple[int, int]:
        m, at, length = self._mem_range(step)
        data = content.pattern_bytes(step.args["pattern"], self.sc.name, m.name, at, length)
        done = self.proc.write_user(m.addr + at, data)
        if done != length:
            raise ModelRunError(f"fill stopped after {done} of {length} bytes")
        return 0, 0

    def _op_touch(self, step: Step) -> tuple[int, int]:
        m, at, length = self._mem_range(step)
        self.proc.touch(m.addr + at, length, step.args["mode"] == "write")
        return 0, 0

    def _op_munmap(self, step: Step) -> tuple[int, int]:
        m, at, length = self._mem_range(step)
        r = _call(self.proc.munmap, (m.addr + at) & U64, length & U64)
        return self._set_prot(m.addr + at, length, r, UNMAPPED)

    def _op_mprotect(self, step: Step) -> tuple[int, int]:
        m, at, length = self._mem_range(step)
        prot = prot_bits(step.args["prot"])
        r = _call(self.proc.mprotect, (m.addr + at) & U64, length & U64, prot)
        return self._set_prot(m.addr + at, length, r, prot)

    def _op_madvise(self, step: Step) -> tuple[int, int]:
        m, at, length = self._mem_range(step)
        return _call(self.proc.madvise, (m.addr + at) & U64, length & U64,
                     _MADV[step.args["advice"]])

    # --- files

    def _op_open(self, step: Step) -> tuple[int, int]:
        a = step.args
        flags = 0
        for w in a["flags"]:
            flags |= _OPEN_FLAGS[w]
        try:
            fd = self.proc.open("/" + a["file"], flags | 0o2000000, 0o644)  # O_CLOEXEC
        except OSError as e:
            return -1, e.errno or 0
        self.fds[a["name"]] = _Fd(fd, a["file"])
        return fd, 0

    def _op_close(self, step: Step) -> tuple[int, int]:
        f = self._fd(step.args["fd"])
        fd, f.fd = f.fd, -1  # a later use of the name gets EBADF, never a reused number
        return _call(self.proc.close, fd)

    def _op_pread(self, step: Step) -> tuple[int, int]:
        ((addr, n),) = self._segments(step)
        return _call(self.proc.pread, self._fd(step.args["fd"]).fd, addr & U64, n & U64,
                     _s64(step.args["offset"]))

    def _op_pwrite(self, step: Step) -> tuple[int, int]:
        ((addr, n),) = self._segments(step)
        return _call(self.proc.pwrite, self._fd(step.args["fd"]).fd, addr & U64, n & U64,
                     _s64(step.args["offset"]))

    def _vec(self, step: Step, write: bool, v2: bool) -> tuple[int, int]:
        iov = [(a & U64, n & U64) for a, n in self._segments(step)]
        fd = self._fd(step.args["fd"]).fd
        off = _s64(step.args["offset"])
        if not v2:
            return _call(self.proc.pwritev if write else self.proc.preadv, fd, iov, off)
        return _call(self.proc.pwritev2 if write else self.proc.preadv2, fd, iov, off,
                     self._rwf(step))

    def _op_ftruncate(self, step: Step) -> tuple[int, int]:
        return _call(self.proc.ftruncate, self._fd(step.args["fd"]).fd,
                     _s64(step.args["length"]))

    def _op_fallocate(self, step: Step) -> tuple[int, int]:
        mode = 0
        for w in step.args["mode"]:
            mode |= FALLOC_WORDS[w]
        a = step.args
        return _call(self.proc.fallocate, self._fd(a["fd"]).fd, mode, _s64(a["offset"]),
                     _s64(a["length"]))

    def _op_fsync(self, step: Step) -> tuple[int, int]:
        fn = self.proc.fdatasync if step.args["datasync"] else self.proc.fsync
        return _call(fn, self._fd(step.args["fd"]).fd)

    # ---------------------------------------------------------------- verdicts

    def _pre_io(self, step: Step) -> verify.PreIo:
        f = self._fd(step.args["fd"])
        offset = step.args["offset"]
        if offset < 0 and f.fd >= 0:
            try:
                offset = self.proc.lseek(f.fd, 0, os.SEEK_CUR)
            except OSError:
                pass
        segs = self._segments(step)
        if step.op in READ_OPS:
            return verify.before_read(self.mem, segs, offset)
        return verify.before_write(f.name, segs, offset, step.index in self.tail_writes,
                                   read_file=self.files.read)

    def _post_io(self, step: Step, res: StepResult, pre: verify.PreIo) -> None:
        name = self._fd(step.args["fd"]).name
        if step.op in READ_OPS:
            verify.after_read(self.mem, name, pre, res, self.lbs, read_file=self.files.read)
        else:
            verify.after_write(self.mem, name, pre, res, self.lbs, read_file=self.files.read)


def _s64(v: int) -> int:
    """A 64-bit value as the kernel's signed ``loff_t`` sees it."""
    v &= U64
    return v - (1 << 64) if v >= 1 << 63 else v


def _call(fn: Callable[..., Any], *args: Any) -> tuple[int, int]:
    """Call a Process method: (return value, 0) or (-1, errno) for an OSError."""
    try:
        r = fn(*args)
    except OSError as e:
        return -1, e.errno or errno_mod.EIO
    return (int(r) if isinstance(r, int) else 0), 0


def _set_outcome(res: StepResult, outcome: tuple[int, int]) -> None:
    ret, err = outcome
    if err:
        res.ret, res.errno = None, errno_mod.errorcode.get(err, str(err))
    elif res.op == "open":
        res.ret = 0  # the fd number is not part of the outcome
    else:
        res.ret = ret


def _file_offset(extents: list[tuple[int, int, int, bool]], disk_off: int) -> int | None:
    """The file offset of a disk byte offset under a block map's extents
    ((file block, disk block, blocks, unwritten) as ``ExtentMap.extents`` lists them), or
    None when the byte is not the file's."""
    bs = MODELFS_BLOCKSIZE
    blk = disk_off // bs
    for lblk, pblk, n, _unw in extents:
        if pblk <= blk < pblk + n:
            return (lblk + blk - pblk) * bs + disk_off % bs
    return None


def _squash(lines: list[str]) -> list[str]:
    """Collapse runs of identical lines into ``line (xN)``."""
    out: list[str] = []
    prev, count = None, 0
    for line in [*lines, None]:
        if line == prev:
            count += 1
            continue
        if prev is not None:
            out.append(prev if count == 1 else f"{prev} (x{count})")
        prev, count = line, 1
    return out


def _one_line(e: BaseException) -> str:
    msg = " ".join(str(e).split())
    if len(msg) > 200:
        msg = msg[:197] + "..."
    return f"{type(e).__name__}: {msg}" if msg else type(e).__name__


def run_model(scenario: Scenario, profile: str, limits: QueueLimits | None = None, *,
              bios: bool = False, explain: bool = False) -> ScenarioResult:
    """Run ``scenario`` in a fresh model machine under ``profile``.

    ``limits``: the device's queue limits (default: the scenario's ``[device]`` table).
    ``bios``: record each step's ``block_bio_queue`` bios (rwbs, file offset, bytes);
    ``explain``: also the model's view of each step (requests, page references).

    Return: a ScenarioResult with ``runner = "model"`` and ``kernel = profile``; ``skipped``
    says why when the scenario is not for ``profile``. A model exception is recorded in the
    step's ``crash`` and in ``error``; it is never raised.
    """
    result = ScenarioResult(scenario.name, scenario.path, "model", kernel=profile)
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}")
    if profile not in scenario.profiles:
        result.skipped = f"not for profile {profile} (profiles: {', '.join(scenario.profiles)})"
        return result
    try:
        run = ModelRun(scenario, profile, limits, bios=bios, explain=explain)
    except ValueError as e:  # limits the block layer refuses: the scenario's fault
        result.error = f"setting up the machine: {e}"
        return result
    except Exception as e:
        result.error = f"setting up the machine: the model crashed with {_one_line(e)}"
        return result
    lim = run.limits
    result.device = {
        "logical_block_size": int(lim.logical_block_size),
        "physical_block_size": int(lim.physical_block_size),
        "dma_alignment": int(lim.dma_alignment),
        "max_sectors_kb": int(lim.max_sectors_kb),
        "max_segments": int(lim.max_segments),
    }
    try:
        run.create_files()
    except Exception as e:
        result.error = f"creating the files: the model crashed with {_one_line(e)}"
        return result
    for step in scenario.steps:
        try:
            res = run.run_step(step)
        except ModelRunError as e:
            result.error = f"{step.label}: the model runner failed: {e}"
            return result
        except ModelCrash as e:
            res = StepResult(step.index, step.op, measured=step.measured, crash=str(e))
            result.steps.append(res)
            result.error = crash_sentence(step.label, str(e))
            return result
        except Exception as e:  # a bug of this runner, reported rather than raised
            result.error = f"{step.label}: the model runner failed with {_one_line(e)}"
            return result
        result.steps.append(res)
    return result

"""The host runner: run a scenario on the real kernel with real syscalls.

Files are created in a fresh directory on the filesystem under test (never tmpfs), written
through the page cache and fsynced; buffers are libc mmaps; I/O goes through libc with raw
addresses so hex addresses and sub-ranges work.  Steps with an expectation are measured with
the FOLL_PIN counters (``vmstat``); the data, transferred and tail verdicts are computed from
what the buffers and files hold afterwards (``verify``).  A scenario that unmaps or protects
memory, or names a raw address, runs in a forked child whose results come back as JSON lines.

The runner never opens a block device node: the device's queue limits come from sysfs.
"""

from __future__ import annotations

import faulthandler
import json
import os
import re
import shutil
import signal
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dioscope.difftest import libc as L
from dioscope.difftest import tracefs, verify, vmstat
from dioscope.difftest.hostmem import UNMAPPED, MemReader, new_mapping, prot_bits
from dioscope.difftest.results import ScenarioResult, StepResult
from dioscope.difftest.runner import StepAddressing
from dioscope.scenarios import content
from dioscope.scenarios.format import (
    FALLOC_WORDS,
    IO_OPS,
    READ_OPS,
    WRITE_OPS,
    FileSpec,
    Scenario,
    Step,
)

DEFAULT_WORKDIR = "/var/tmp"
WORKDIR_ENV = "DIOSCOPE_HOST_DIR"
_QUEUE_KEYS = (
    "logical_block_size",
    "physical_block_size",
    "dma_alignment",
    "max_sectors_kb",
    "max_segments",
)
_OPEN_FLAGS = {
    "rdonly": os.O_RDONLY,
    "wronly": os.O_WRONLY,
    "rdwr": os.O_RDWR,
    "direct": getattr(os, "O_DIRECT", 0),
    "creat": os.O_CREAT,
    "trunc": os.O_TRUNC,
    "sync": os.O_SYNC,
    "dsync": getattr(os, "O_DSYNC", 0),
}


class HostRunError(Exception):
    """The runner itself could not carry out a step (not a syscall failure)."""


def host_unavailable(workdir: str | Path | None = None) -> str | None:
    """Return why this host cannot run scenarios ("not Linux", "not root", ...), or None."""
    if not sys.platform.startswith("linux"):
        return "not Linux"
    if os.geteuid() != 0:
        return "not root"
    why = vmstat.pins_unavailable()
    if why is not None:
        return why
    base = str(workdir or os.environ.get(WORKDIR_ENV) or DEFAULT_WORKDIR)
    try:
        magic = L.fs_magic(base)
    except OSError as e:
        return f"cannot use the work directory {base}: {e.strerror}"
    if magic in (L.TMPFS_MAGIC, L.RAMFS_MAGIC):
        return f"the work directory {base} is on tmpfs/ramfs; O_DIRECT needs a real filesystem"
    return None


def host_kernel() -> str:
    """Return the running kernel's release (``6.18.44-...``)."""
    return os.uname().release


def host_profile() -> str | None:
    """Return the model profile that matches the running kernel ("6.18"), or None."""
    m = re.match(r"(\d+)\.(\d+)", host_kernel())
    if m and (int(m.group(1)), int(m.group(2))) == (6, 18):
        return "6.18"
    return None


def host_queue_limits(path: str | Path) -> dict[str, int]:
    """Return the queue limits of the block device that holds ``path``, read from sysfs.

    Keys are the ``[device]`` keys of the scenario format; missing files are left out.
    """
    st = os.stat(path)
    base = Path(f"/sys/dev/block/{os.major(st.st_dev)}:{os.minor(st.st_dev)}")
    if (base / "partition").exists():
        base = base.resolve().parent
    out: dict[str, int] = {}
    for k in _QUEUE_KEYS:
        try:
            out[k] = int((base / "queue" / k).read_text().split()[0])
        except (OSError, ValueError, IndexError):
            continue
    return out


@dataclass
class _Fd:
    fd: int
    path: str


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", name)[:64] or "_"


class HostRun(StepAddressing):
    """One run of one scenario in the current process (see ``run_host`` for the entry)."""

    run_error = HostRunError

    def __init__(
        self,
        scenario: Scenario,
        workdir: str,
        lbs: int,
        tracer: tracefs.BioTracer | None = None,
    ) -> None:
        self.sc = scenario
        self.workdir = workdir
        self.lbs = lbs
        self.tracer = tracer
        self.trace_devs, self.part_start = tracefs.file_disk(workdir) if tracer else (set(), 0)
        self.mem = MemReader()
        self.maps = self.mem.mappings
        self.fds: dict[str, _Fd] = {}
        self.paths: dict[str, str] = {}
        self.tail_writes = {
            s.index
            for s in scenario.steps
            if s.op in WRITE_OPS
            and any(
                (e := s.expect_for(p)) is not None and e.tail is not None for p in scenario.profiles
            )
        }

    # ---------------------------------------------------------------- setup and cleanup

    def create_files(self) -> None:
        """Create every ``[[file]]``: written through the page cache, holes punched, fsynced."""
        for i, f in enumerate(self.sc.files):
            path = os.path.join(self.workdir, f"{i:02d}-{_safe(f.name)}")
            self.paths[f.name] = path
            _create_file(self.sc.name, f, path)

    def cleanup(self) -> None:
        """Close the scenario's fds and unmap its mappings."""
        for f in self.fds.values():
            if f.fd >= 0:
                try:
                    os.close(f.fd)
                except OSError:
                    pass
        for m in self.maps.values():
            L.munmap(m.addr, m.length)
        self.mem.close()

    # ---------------------------------------------------------------- addresses

    # ---------------------------------------------------------------- steps

    def run_step(self, step: Step) -> StepResult:
        """Run one step (measured when it has expectations) and return its result."""
        res = StepResult(step.index, step.op, measured=step.measured)
        box: list[tuple[int, int]] = []
        action = self._action(step, box)
        if not step.measured:
            action()
            _set_outcome(res, box[-1])
            return res
        pre = self._pre_io(step) if step.op in IO_OPS else None
        repeatable = step.op in READ_OPS and step.args["offset"] >= 0
        tracer = self.tracer if step.op in IO_OPS else None
        if tracer is not None:
            action = _traced(action, tracer)
        m = vmstat.measure(action, repeatable=repeatable)
        res.pins, res.attempts, res.noise = m.pins, m.attempts, m.noise
        _set_outcome(res, box[-1])
        if tracer is not None:
            res.bios = self._bios(step, tracer)
        if pre is not None:
            self._post_io(step, res, pre)
        return res

    def _bios(self, step: Step, tracer: tracefs.BioTracer) -> list[tuple[str, int | None, int]]:
        """The step's bios, normalised to (rwbs, file offset or None, bytes)."""
        events = tracer.events()
        extents: list[tuple[int, int, int]] = []
        try:
            fd = os.open(self._fd(step.args["fd"]).path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                extents = tracefs.fiemap(fd)
            finally:
                os.close(fd)
        except OSError:
            pass
        return tracefs.normalise_bios(events, self.trace_devs, self.part_start, extents)

    def _action(self, step: Step, box: list[tuple[int, int]]) -> Callable[[], None]:
        fn = getattr(self, f"_op_{step.op}")
        if step.op in ("fill", "touch"):
            self._check_access(step)

        def action() -> None:
            box.append(fn(step))

        return action

    def _op_mmap(self, step: Step) -> tuple[int, int]:
        a = step.args
        prot = prot_bits(a["prot"])
        flags = L.MAP_PRIVATE if "private" in a["flags"] else L.MAP_SHARED
        if "populate" in a["flags"]:
            flags |= L.MAP_POPULATE
        fd = -1
        if a["file"] is not None:
            writable = "w" in a["prot"] and "shared" in a["flags"]
            try:
                fd = os.open(self.paths[a["file"]], os.O_RDWR if writable else os.O_RDONLY)
            except OSError as e:
                return -1, e.errno or 0
        else:
            flags |= L.MAP_ANONYMOUS
        try:
            addr, err = _map(a["length"], prot, flags, fd, a["thp"])
        finally:
            if fd >= 0:
                os.close(fd)
        if err:
            return -1, err
        self.maps[a["name"]] = new_mapping(
            a["name"], addr, a["length"], prot, "private" in a["flags"], fd < 0
        )
        return 0, 0

    def _op_fill(self, step: Step) -> tuple[int, int]:
        m, at, length = self._mem_range(step)
        pat = step.args["pattern"]
        if pat == "random":
            L.poke(m.addr + at, content.pattern_bytes(pat, self.sc.name, m.name, at, length))
        else:
            L.memset(m.addr + at, pat, length)
        return 0, 0

    def _op_touch(self, step: Step) -> tuple[int, int]:
        m, at, length = self._mem_range(step)
        write = step.args["mode"] == "write"
        a, end = m.addr + at, m.addr + at + length
        while a < end:
            L.touch_byte(a, write)
            a = (a // L.PAGE_SIZE + 1) * L.PAGE_SIZE
        return 0, 0

    def _op_munmap(self, step: Step) -> tuple[int, int]:
        m, at, length = self._mem_range(step)
        r = L.munmap(m.addr + at, length)
        return self._set_prot(m.addr + at, length, r, UNMAPPED)

    def _op_mprotect(self, step: Step) -> tuple[int, int]:
        m, at, length = self._mem_range(step)
        prot = prot_bits(step.args["prot"])
        r = L.mprotect(m.addr + at, length, prot)
        return self._set_prot(m.addr + at, length, r, prot)

    def _op_madvise(self, step: Step) -> tuple[int, int]:
        m, at, length = self._mem_range(step)
        return L.madvise(m.addr + at, length, L.MADV[step.args["advice"]])

    def _op_open(self, step: Step) -> tuple[int, int]:
        a = step.args
        name = a["file"]
        if name not in self.paths:  # a new file (creat)
            self.paths[name] = os.path.join(self.workdir, f"new-{_safe(name)}")
        flags = 0
        for w in a["flags"]:
            flags |= _OPEN_FLAGS[w]
        try:
            fd = os.open(self.paths[name], flags | os.O_CLOEXEC, 0o644)
        except OSError as e:
            return -1, e.errno or 0
        self.fds[a["name"]] = _Fd(fd, self.paths[name])
        return fd, 0

    def _op_close(self, step: Step) -> tuple[int, int]:
        f = self._fd(step.args["fd"])
        fd, f.fd = f.fd, -1  # a later use of the name gets EBADF, never a reused number
        return _os_call(os.close, fd)

    def _op_pread(self, step: Step) -> tuple[int, int]:
        ((addr, n),) = self._segments(step)
        return L.pread(self._fd(step.args["fd"]).fd, addr, n, step.args["offset"])

    def _op_pwrite(self, step: Step) -> tuple[int, int]:
        ((addr, n),) = self._segments(step)
        return L.pwrite(self._fd(step.args["fd"]).fd, addr, n, step.args["offset"])

    def _vec(self, step: Step, write: bool, v2: bool) -> tuple[int, int]:
        flags = self._rwf(step) if v2 else None
        fn = L.pwritev2 if write else L.preadv2
        return fn(self._fd(step.args["fd"]).fd, self._segments(step), step.args["offset"], flags)

    def _op_ftruncate(self, step: Step) -> tuple[int, int]:
        return _os_call(os.ftruncate, self._fd(step.args["fd"]).fd, step.args["length"])

    def _op_fallocate(self, step: Step) -> tuple[int, int]:
        mode = 0
        for w in step.args["mode"]:
            mode |= FALLOC_WORDS[w]
        a = step.args
        return L.fallocate(self._fd(a["fd"]).fd, mode, a["offset"], a["length"])

    def _op_fsync(self, step: Step) -> tuple[int, int]:
        fn = os.fdatasync if step.args["datasync"] else os.fsync
        return _os_call(fn, self._fd(step.args["fd"]).fd)

    # ---------------------------------------------------------------- verdicts

    def _pre_io(self, step: Step) -> verify.PreIo:
        f = self._fd(step.args["fd"])
        offset = step.args["offset"]
        if offset < 0 and f.fd >= 0:
            try:
                offset = os.lseek(f.fd, 0, os.SEEK_CUR)
            except OSError:
                pass
        segs = self._segments(step)
        if step.op in READ_OPS:
            return verify.before_read(self.mem, segs, offset)
        return verify.before_write(f.path, segs, offset, step.index in self.tail_writes)

    def _post_io(self, step: Step, res: StepResult, pre: verify.PreIo) -> None:
        path = self._fd(step.args["fd"]).path
        if step.op in READ_OPS:
            verify.after_read(self.mem, path, pre, res, self.lbs)
        else:
            verify.after_write(self.mem, path, pre, res, self.lbs)


def _traced(action: Callable[[], None], tracer: tracefs.BioTracer) -> Callable[[], None]:
    """``action`` with bio tracing on around it (each attempt starts a fresh buffer)."""

    def run() -> None:
        tracer.start()
        try:
            action()
        finally:
            tracer.stop()

    return run


def _set_outcome(res: StepResult, outcome: tuple[int, int]) -> None:
    ret, err = outcome
    if err:
        res.ret, res.errno = None, L.errno_name(err)
    elif res.op == "open":
        res.ret = 0  # the fd number is not part of the outcome
    else:
        res.ret = ret


def _os_call(fn: Callable[..., Any], *args: Any) -> tuple[int, int]:
    try:
        fn(*args)
    except OSError as e:
        return -1, e.errno or 0
    return 0, 0


def _map(length: int, prot: int, flags: int, fd: int, thp: bool) -> tuple[int, int]:
    """mmap ``length`` bytes; with ``thp``, on a 2 MiB boundary with MADV_HUGEPAGE."""
    if not thp:
        return L.mmap(0, length, prot, flags, fd, 0)
    hp = L.HPAGE_SIZE
    resv, err = L.mmap(0, length + hp, L.PROT_NONE, L.MAP_PRIVATE | L.MAP_ANONYMOUS, -1, 0)
    if err:
        return -1, err
    start = (resv + hp - 1) // hp * hp
    map_fixed = 0x10
    _addr, err = L.mmap(start, length, prot, flags | map_fixed, fd, 0)
    if err:
        L.munmap(resv, length + hp)
        return -1, err
    if start > resv:
        L.munmap(resv, start - resv)
    tail = resv + length + hp - (start + length)
    if tail > 0:
        L.munmap(start + length, tail)
    L.madvise(start, length, L.MADV["hugepage"])
    return start, 0


def _create_file(scenario_name: str, f: FileSpec, path: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        if f.content in ("random", "zero"):
            chunk = 1 << 20
            for off in range(0, f.size, chunk):
                n = min(chunk, f.size - off)
                if f.content == "random":
                    data = content.file_random_bytes(scenario_name, f.name, off, n)
                else:
                    data = bytes(n)
                view = memoryview(data)
                while view:
                    view = view[os.pwrite(fd, view, off + n - len(view)) :]
        elif f.content == "hole":
            os.ftruncate(fd, f.size)
        elif f.size > 0:  # unwritten
            _r, e = L.fallocate(fd, 0, 0, f.size)
            if e:
                raise HostRunError(f'cannot fallocate file "{f.name}": {L.errno_name(e)}')
        for off, n in f.holes:
            if n:
                _r, e = L.fallocate(fd, L.FALLOC_FL_PUNCH_HOLE | L.FALLOC_FL_KEEP_SIZE, off, n)
                if e:
                    raise HostRunError(f'cannot punch a hole in file "{f.name}": {L.errno_name(e)}')
        os.fsync(fd)
    finally:
        os.close(fd)


def _run_steps(
    sc: Scenario,
    workdir: str,
    lbs: int,
    emit: Callable[[dict[str, Any]], None],
    tracer: tracefs.BioTracer | None = None,
) -> None:
    """Run the scenario's steps, emitting {"start": k}, {"step": ...} and {"error": ...}."""
    if tracer is not None:
        tracer.follow(os.getpid())
    run = HostRun(sc, workdir, lbs, tracer)
    try:
        try:
            run.create_files()
        except (OSError, HostRunError) as e:
            emit({"error": f"creating the files: {e}"})
            return
        for step in sc.steps:
            emit({"start": step.index})
            try:
                res = run.run_step(step)
            except (HostRunError, OSError) as e:
                emit({"error": f"{step.label}: the host runner failed: {e}"})
                return
            emit({"step": res.to_dict()})
    finally:
        run.cleanup()


def _collect(sc: Scenario, result: ScenarioResult, msgs: list[dict[str, Any]]) -> str | None:
    """Fill ``result`` from the emitted messages; return the index of a started step."""
    started: str | None = None
    for msg in msgs:
        if "start" in msg:
            started = str(msg["start"])
        elif "step" in msg:
            result.steps.append(StepResult.from_dict(msg["step"]))
            started = None
        elif "error" in msg:
            result.error = msg["error"]
            started = None
    return started


def _run_forked(
    sc: Scenario,
    workdir: str,
    lbs: int,
    result: ScenarioResult,
    tracer: tracefs.BioTracer | None = None,
) -> None:
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: never returns
        code = 0
        try:
            faulthandler.disable()  # a crash is reported by the parent, not dumped here
            os.close(rfd)
            with os.fdopen(wfd, "w", buffering=1) as out:
                try:
                    _run_steps(
                        sc, workdir, lbs, lambda m: print(json.dumps(m), file=out), tracer
                    )
                except BaseException as e:  # reported; the child exits
                    print(json.dumps({"error": f"the host runner's child failed: {e!r}"}), file=out)
                    code = 1
        finally:
            os._exit(code)
    os.close(wfd)
    with os.fdopen(rfd, "r") as inp:
        lines = inp.read().splitlines()
    _, status = os.waitpid(pid, 0)
    msgs = [json.loads(line) for line in lines if line.strip()]
    started = _collect(sc, result, msgs)
    if os.WIFSIGNALED(status) and result.error is None:
        sig = signal.Signals(os.WTERMSIG(status)).name
        where = "before the first step"
        if started is not None:
            step = sc.steps[int(started) - 1]
            where = f"{step.label}"
        result.error = f"{where}: the scenario's child process was killed by {sig}"


def run_host(
    scenario: Scenario,
    workdir: str | Path | None = None,
    *,
    fork: bool | None = None,
    bios: bool = False,
) -> ScenarioResult:
    """Run ``scenario`` on the host kernel.

    ``workdir``: where the scenario's temporary directory is made (default $DIOSCOPE_HOST_DIR
    or /var/tmp; must not be tmpfs).  ``fork``: run in a forked child (default: when the
    scenario unmaps or protects memory or names a raw address).  ``bios``: capture each I/O
    step's ``block_bio_queue`` events from a tracefs instance into ``StepResult.bios``
    (left None when tracefs cannot; see ``tracefs.tracefs_unavailable``).

    Return: a ScenarioResult with ``runner = "host"``; ``skipped`` says why when the host cannot
    answer (not Linux, not root, no stat_refresh, a model-only scenario).
    """
    result = ScenarioResult(
        scenario.name,
        scenario.path,
        "host",
        kernel=host_kernel() if sys.platform.startswith("linux") else sys.platform,
    )
    if not scenario.host:
        result.skipped = "model-only scenario (host = false)"
        return result
    why = host_unavailable(workdir)
    if why is not None:
        result.skipped = why
        return result
    base = str(workdir or os.environ.get(WORKDIR_ENV) or DEFAULT_WORKDIR)
    tmp = tempfile.mkdtemp(prefix="dioscope-", dir=base)
    tracer: tracefs.BioTracer | None = None
    try:
        if bios and tracefs.tracefs_unavailable() is None:
            try:
                tracer = tracefs.BioTracer()
            except OSError:
                tracer = None
        result.device = host_queue_limits(tmp)
        lbs = result.device.get("logical_block_size", 512)
        if fork if fork is not None else scenario.needs_fork:
            _run_forked(scenario, tmp, lbs, result, tracer)
        else:
            msgs: list[dict[str, Any]] = []
            _run_steps(scenario, tmp, lbs, msgs.append, tracer)
            _collect(scenario, result, msgs)
    finally:
        if tracer is not None:
            tracer.close()
        shutil.rmtree(tmp, ignore_errors=True)
    return result

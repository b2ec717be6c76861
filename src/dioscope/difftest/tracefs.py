"""The host's bios: ``block:block_bio_queue`` from a tracefs instance, mapped to file offsets.

``BioTracer`` makes a private tracefs instance (``instances/dioscope-PID-N``) with only
``block_bio_queue`` enabled and ``set_event_pid`` set to the process that runs the steps
(``options/event-fork`` follows its children), so the system's own I/O (kworkers, jbd2) and
other processes never show. Tracing is switched on only around a step's syscall, so the
runner's set-up and read-back I/O are not captured either.

Each event is normalised to ``(rwbs, file offset or None, bytes)``: the event's sector is an
absolute disk sector (``blk_partition_remap`` ran before the tracepoint); the partition's
start is subtracted and the result mapped through the file's extents (``FS_IOC_FIEMAP``) to
an offset in the file. A bio outside the file (a flush, metadata) has offset None.
"""

from __future__ import annotations

import fcntl
import itertools
import os
import struct
from dataclasses import dataclass
from pathlib import Path

from dioscope.kernel.trace import parse_line

__all__ = [
    "TRACEFS",
    "BioEvent",
    "BioTracer",
    "fiemap",
    "file_disk",
    "normalise_bios",
    "tracefs_unavailable",
]

TRACEFS = Path(os.environ.get("DIOSCOPE_TRACEFS", "/sys/kernel/tracing"))
FS_IOC_FIEMAP = 0xC020660B
FIEMAP_EXTENT_LAST = 0x1
_FIEMAP_HDR = struct.Struct("=QQIIII")  # fm_start, fm_length, flags, mapped, count, reserved
_FIEMAP_EXT = struct.Struct("=QQQQQIIII")  # logical, physical, length, 2 reserved, flags, 3 res
_counter = itertools.count()


@dataclass(frozen=True)
class BioEvent:
    """One ``block_bio_queue`` event as tracefs printed it."""

    major: int
    minor: int
    rwbs: str
    sector: int
    nr_sector: int


def tracefs_unavailable() -> str | None:
    """Why bios cannot be captured here (no tracefs, no block events, not root), or None."""
    if not TRACEFS.is_dir():
        return f"tracefs is not mounted at {TRACEFS}"
    if not (TRACEFS / "instances").is_dir():
        return "tracefs has no instances directory"
    if not (TRACEFS / "events" / "block" / "block_bio_queue").is_dir():
        return "the kernel has no block:block_bio_queue tracepoint"
    if os.geteuid() != 0:
        return "not root"
    return None


class BioTracer:
    """A tracefs instance that records ``block_bio_queue`` of one process (and its
    children) while switched on. Create in the parent; ``close`` removes the instance."""

    def __init__(self) -> None:
        self.dir = TRACEFS / "instances" / f"dioscope-{os.getpid()}-{next(_counter)}"
        self.dir.mkdir()
        try:
            self._write("tracing_on", "0")
            self._write("buffer_size_kb", "8192")
            self._write("events/block/block_bio_queue/enable", "1")
            self._write("options/event-fork", "1")
        except OSError:
            self.close()
            raise

    def _write(self, name: str, text: str) -> None:
        with open(self.dir / name, "w") as f:
            f.write(text)

    def follow(self, pid: int) -> None:
        """Record only ``pid`` (and the children it forks from now on)."""
        self._write("set_event_pid", str(pid))

    def start(self) -> None:
        """Clear the buffer and start recording."""
        with open(self.dir / "trace", "w"):
            pass  # opening with O_TRUNC clears the buffer
        self._write("tracing_on", "1")

    def stop(self) -> None:
        self._write("tracing_on", "0")

    def events(self) -> list[BioEvent]:
        """The ``block_bio_queue`` events recorded since the last ``start``."""
        out = []
        text = (self.dir / "trace").read_text(errors="replace")
        for line in text.splitlines():
            ev = parse_bio_line(line)
            if ev is not None:
                out.append(ev)
        return out

    def close(self) -> None:
        """Switch off and remove the instance (best effort)."""
        for name, text in (("tracing_on", "0"), ("events/block/block_bio_queue/enable", "0")):
            try:
                self._write(name, text)
            except OSError:
                pass
        try:
            self.dir.rmdir()
        except OSError:
            pass


def parse_bio_line(line: str) -> BioEvent | None:
    """A ``block_bio_queue`` line of a trace file (``254,0 RS 513294336 + 2048 [comm]``),
    or None for any other line."""
    p = parse_line(line)
    if p is None or p["event"] != "block_bio_queue":
        return None
    parts = p["body"].split()
    try:
        major, minor = (int(x) for x in parts[0].split(","))
        return BioEvent(major, minor, parts[1], int(parts[2]), int(parts[4]))
    except (ValueError, IndexError):
        return None


def fiemap(fd: int) -> list[tuple[int, int, int]]:
    """The file's extents as (logical byte, physical byte, bytes), from ``FS_IOC_FIEMAP``
    (no FIEMAP_FLAG_SYNC: delayed allocations are left out, and nothing is written back)."""
    out: list[tuple[int, int, int]] = []
    start = 0
    batch = 256
    while True:
        buf = bytearray(_FIEMAP_HDR.size + batch * _FIEMAP_EXT.size)
        _FIEMAP_HDR.pack_into(buf, 0, start, (1 << 64) - 1 - start, 0, 0, batch, 0)
        fcntl.ioctl(fd, FS_IOC_FIEMAP, buf)
        mapped = _FIEMAP_HDR.unpack_from(buf, 0)[3]
        last = False
        for i in range(mapped):
            logical, physical, length, _r1, _r2, flags, *_ = _FIEMAP_EXT.unpack_from(
                buf, _FIEMAP_HDR.size + i * _FIEMAP_EXT.size
            )
            out.append((logical, physical, length))
            start = logical + length
            last = last or bool(flags & FIEMAP_EXTENT_LAST)
        if last or mapped < batch:
            return out


def file_disk(path: str | os.PathLike[str]) -> tuple[set[tuple[int, int]], int]:
    """The devices a bio on ``path``'s filesystem may name in a trace (the partition and its
    whole disk, as (major, minor)) and the partition's first byte on the disk."""
    st = os.stat(path)
    major, minor = os.major(st.st_dev), os.minor(st.st_dev)
    devs = {(major, minor)}
    start = 0
    base = Path(f"/sys/dev/block/{major}:{minor}")
    try:
        if (base / "partition").exists():
            start = int((base / "start").read_text()) * 512
            disk = base.resolve().parent
            dmaj, dmin = (int(x) for x in (disk / "dev").read_text().split(":"))
            devs.add((dmaj, dmin))
    except (OSError, ValueError):
        pass
    return devs, start


def normalise_bios(
    events: list[BioEvent],
    devs: set[tuple[int, int]],
    part_start: int,
    extents: list[tuple[int, int, int]],
) -> list[tuple[str, int | None, int]]:
    """(rwbs, file offset or None, bytes) for every event on ``devs``, in order."""
    out: list[tuple[str, int | None, int]] = []
    for ev in events:
        if (ev.major, ev.minor) not in devs:
            continue
        size = ev.nr_sector * 512
        off: int | None = None
        if size:
            pos = ev.sector * 512 - part_start
            for logical, physical, length in extents:
                if physical <= pos < physical + length:
                    off = logical + pos - physical
                    break
        out.append((ev.rwbs, off, size))
    return out

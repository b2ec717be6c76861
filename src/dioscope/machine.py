"""A model machine: one memory node, processes, and (later) block devices and filesystems.

``Kernel(mem="1G", profile="5.9-pin")`` is the entry point for tests, workloads and the demo.
It composes the model layers; the harness observes it through ``kernel.pgdat.hooks``.
"""

from __future__ import annotations

from typing import Any

from .fs import direct_io as _legacy_dio  # noqa: F401  (registers the "legacy" engine)
from .fs.block_dev_file import blkdev_install
from .fs.iomap import direct_io as _iomap_dio  # noqa: F401  (registers the "iomap" engine)
from .fs.vfs import Vfs
from .kernel.config import Profile
from .mm.page_alloc import PgData
from .mm.vmstat import VmStat
from .syscalls.process import Process

__all__ = ["Kernel"]


class Kernel:
    """A booted model kernel under one profile."""

    def __init__(self, mem: str | int = "256M", profile: str | Profile | None = None) -> None:
        self.pgdat = PgData(mem, profile)
        self.cfg = self.pgdat.cfg
        self.processes: list[Process] = []
        self._next_pid = 1
        self.vfs = Vfs()
        """Mounted filesystem at ``/`` and block devices under ``/dev``."""

    def add_disk(self, bdev: Any) -> Any:
        """Make ``bdev`` (a ``block.devices.BlockDevice``) visible as ``/dev/NAME``."""
        self.vfs.devices[bdev.name] = bdev
        blkdev_install(self.vfs)
        return bdev

    def mount(self, fs: Any) -> Any:
        """Mount ``fs`` (a filesystem object with ``open(name, flags, mode)``) at ``/``."""
        self.vfs.root = fs
        return fs

    @property
    def vmstat(self) -> VmStat:
        return self.pgdat.vmstat

    @property
    def events(self):  # type: ignore[no-untyped-def]
        return self.pgdat.events

    def spawn(self, comm: str = "dioscope") -> Process:
        """Start a process with an empty address space."""
        proc = Process(self.pgdat, self._new_pid(), comm, vfs=self.vfs)
        self.processes.append(proc)
        return proc

    def fork(self, parent: Process) -> Process:
        """``fork()`` ``parent``; the child is registered with this kernel."""
        child = parent.fork(self._new_pid())
        self.processes.append(child)
        return child

    def _new_pid(self) -> int:
        self._next_pid += 1
        return self._next_pid

"""Path lookup and open across the mounted filesystem and the block devices
(``fs/namei.c``, ``fs/open.c`` ``do_sys_open`` / ``do_dentry_open``).

SIMPLIFIED: one filesystem mounted at ``/`` with a flat directory, and block devices under
``/dev/NAME``.
"""

from __future__ import annotations

import errno
from typing import Any

from .fs_types import FMODE, File

__all__ = ["Vfs"]


class Vfs:
    """The machine's namespace: ``/`` and ``/dev``."""

    def __init__(self) -> None:
        self.root: Any = None
        self.devices: dict[str, Any] = {}
        self.dev_open: Any = None
        """``open`` of a block device node, installed by ``fs.block_dev``."""

    def open(self, path: str, flags: int, mode: int) -> File | int:
        """``do_sys_open()``. Return: the File, or -errno (ENOENT, EISDIR, EEXIST, EINVAL…)."""
        if not path.startswith("/"):
            return -errno.ENOENT
        if path.startswith("/dev/"):
            name = path[5:]
            bdev = self.devices.get(name)
            if bdev is None or self.dev_open is None:
                return -errno.ENOENT
            f = self.dev_open(bdev, flags)
        else:
            if self.root is None:
                return -errno.ENOENT
            f = self.root.open(path.lstrip("/"), flags, mode)
        if isinstance(f, File):
            # do_dentry_open(): regular files and devices allow seeks and positional I/O.
            f.f_mode |= int(FMODE.FMODE_LSEEK | FMODE.FMODE_PREAD | FMODE.FMODE_PWRITE)
        return f

"""Queue limits (``block/blk-settings.c`` ``blk_validate_limits``, ``include/linux/blkdev.h``
``struct queue_limits``, ``/sys/block/<disk>/queue``).

:class:`QueueLimits` keeps the kernel's fields and units: ``max_sectors`` and
``max_hw_sectors`` in 512-byte sectors (sysfs shows them halved as ``*_kb``), masks as masks.
A field left at 0 ("the driver did not set it") gets the kernel default when the limits are
built, as ``blk_validate_limits`` does:

=====================  ====================================================================
logical_block_size     512
physical_block_size    the logical block size
dma_alignment          511
max_hw_sectors         BLK_SAFE_MAX_SECTORS = 255
max_sectors            min(max_hw_sectors, BLK_DEF_MAX_SECTORS_CAP); an explicit value is
                       the user's ``max_sectors_kb`` (clamped to the hardware limit)
max_segments           BLK_MAX_SEGMENTS = 128
max_segment_size       BLK_MAX_SEGMENT_SIZE = 65536 (UINT_MAX with a virt boundary)
seg_boundary_mask      BLK_SEG_BOUNDARY_MASK = 0xFFFFFFFF
virt_boundary_mask     0 (none)
chunk_sectors          0 (none)
=====================  ====================================================================

``BLK_DEF_MAX_SECTORS_CAP`` is 8192 sectors (4 MiB) on the 6.18 host (virtio-blk there
advertises an unlimited ``max_hw_sectors_kb`` and gets ``max_sectors_kb`` 4096); v5.9 capped
at ``BLK_DEF_MAX_SECTORS`` = 2560 (1280 KiB). Pass ``def_max_sectors_cap`` for the latter.

:meth:`QueueLimits.from_host` reads the sysfs queue directory of the disk that holds a path.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields
from pathlib import Path

from ..kernel.types import PAGE_SIZE

__all__ = [
    "BLK_DEF_MAX_SECTORS",
    "BLK_DEF_MAX_SECTORS_CAP",
    "BLK_MAX_SEGMENTS",
    "BLK_MAX_SEGMENT_SIZE",
    "BLK_SAFE_MAX_SECTORS",
    "BLK_SEG_BOUNDARY_MASK",
    "HostDisk",
    "QueueLimits",
    "host_disk",
]

SECTOR_SIZE = 512
BLK_SAFE_MAX_SECTORS = 255
BLK_DEF_MAX_SECTORS = 2560
"""[5.9] default cap of ``max_sectors`` (1280 KiB)."""
BLK_DEF_MAX_SECTORS_CAP = 8192
"""[6.18] default cap of ``max_sectors`` (4 MiB), as measured on the host."""
BLK_MAX_SEGMENTS = 128
BLK_MAX_SEGMENT_SIZE = 65536
BLK_SEG_BOUNDARY_MASK = 0xFFFFFFFF
BLK_MAX_BLOCK_SIZE = 65536
"""[6.15+] largest logical block size (``BLK_MAX_BLOCK_SIZE`` = SZ_64K); PAGE_SIZE before."""
UINT_MAX = 0xFFFFFFFF


def _is_pow2(n: int) -> bool:
    return n > 0 and not n & (n - 1)


def _is_mask(n: int) -> bool:
    """2**k - 1 (k >= 0)."""
    return n >= 0 and not n & (n + 1)


@dataclass(init=False)
class QueueLimits:
    """``struct queue_limits``: what a request queue lets a bio or request be.

    Construct with kernel field names (sectors) or the sysfs ``*_kb`` aliases::

        QueueLimits(max_sectors_kb=128, max_segments=254)

    Unset (0) fields take the kernel defaults; the result is validated (ValueError).
    """

    logical_block_size: int = 0
    physical_block_size: int = 0
    dma_alignment: int = 0
    max_sectors: int = 0
    max_hw_sectors: int = 0
    max_segments: int = 0
    max_segment_size: int = 0
    seg_boundary_mask: int = 0
    virt_boundary_mask: int = 0
    chunk_sectors: int = 0
    def_max_sectors_cap: int = BLK_DEF_MAX_SECTORS_CAP

    def __init__(self, *, max_sectors_kb: int | None = None,
                 max_hw_sectors_kb: int | None = None, **kw: int) -> None:
        known = {f.name for f in fields(QueueLimits)}
        unknown = set(kw) - known
        if unknown:
            raise TypeError(f"unknown queue limit(s): {', '.join(sorted(unknown))}")
        for f in fields(QueueLimits):
            setattr(self, f.name, int(kw.get(f.name, f.default)))  # type: ignore[arg-type]
        if max_sectors_kb is not None:
            self.max_sectors = int(max_sectors_kb) * 2
        if max_hw_sectors_kb is not None:
            self.max_hw_sectors = int(max_hw_sectors_kb) * 2
        self._fill_defaults()
        self.validate()

    # --- sysfs views ---------------------------------------------------------------------
    @property
    def max_sectors_kb(self) -> int:
        return self.max_sectors >> 1

    @max_sectors_kb.setter
    def max_sectors_kb(self, kb: int) -> None:
        self.max_sectors = kb * 2

    @property
    def max_hw_sectors_kb(self) -> int:
        return self.max_hw_sectors >> 1

    @max_hw_sectors_kb.setter
    def max_hw_sectors_kb(self, kb: int) -> None:
        self.max_hw_sectors = kb * 2

    @property
    def max_bytes(self) -> int:
        """``max_sectors`` in bytes."""
        return self.max_sectors << 9

    # --- blk_validate_limits -------------------------------------------------------------
    def _fill_defaults(self) -> None:
        if not self.logical_block_size:
            self.logical_block_size = SECTOR_SIZE
        if self.physical_block_size < self.logical_block_size:
            self.physical_block_size = self.logical_block_size
        if not self.dma_alignment:
            self.dma_alignment = SECTOR_SIZE - 1
        if not self.max_hw_sectors:
            self.max_hw_sectors = BLK_SAFE_MAX_SECTORS
        if not self.max_segments:
            self.max_segments = BLK_MAX_SEGMENTS
        if not self.seg_boundary_mask:
            self.seg_boundary_mask = BLK_SEG_BOUNDARY_MASK
        if not self.max_segment_size:
            self.max_segment_size = UINT_MAX if self.virt_boundary_mask else BLK_MAX_SEGMENT_SIZE
        lbs_sectors = max(self.logical_block_size // SECTOR_SIZE, 1)
        self.max_hw_sectors -= self.max_hw_sectors % lbs_sectors
        if self.max_sectors:
            user = self.max_sectors
            self.max_sectors = min(self.max_hw_sectors, user)
        else:
            self.max_sectors = min(self.max_hw_sectors, self.def_max_sectors_cap)
        self.max_sectors -= self.max_sectors % lbs_sectors

    def validate(self) -> None:
        """Check the rules of ``blk_validate_limits()`` that shape bios.

        Raise: ValueError naming the first rule broken.
        """
        lbs, pbs = self.logical_block_size, self.physical_block_size
        if not _is_pow2(lbs) or not SECTOR_SIZE <= lbs <= BLK_MAX_BLOCK_SIZE:
            raise ValueError(f"logical_block_size {lbs} is not a power of two between 512 "
                             f"and {BLK_MAX_BLOCK_SIZE}")
        if not _is_pow2(pbs) or pbs < lbs:
            raise ValueError(f"physical_block_size {pbs} is not a power of two of at least "
                             f"the logical block size {lbs}")
        if not _is_mask(self.dma_alignment):
            raise ValueError(f"dma_alignment {self.dma_alignment:#x} is not a mask of the form "
                             f"2**k - 1")
        page_sectors = PAGE_SIZE // SECTOR_SIZE
        if self.max_hw_sectors < page_sectors:
            raise ValueError(f"max_hw_sectors {self.max_hw_sectors} is below one page "
                             f"({page_sectors} sectors)")
        if self.max_sectors < page_sectors:
            raise ValueError(f"max_sectors {self.max_sectors} is below one page "
                             f"({page_sectors} sectors)")
        if self.max_sectors > self.max_hw_sectors:
            raise ValueError(f"max_sectors {self.max_sectors} exceeds max_hw_sectors "
                             f"{self.max_hw_sectors}")
        if self.max_segments <= 0:
            raise ValueError(f"max_segments {self.max_segments} is not positive")
        if not _is_mask(self.seg_boundary_mask) or self.seg_boundary_mask < PAGE_SIZE - 1:
            raise ValueError(f"seg_boundary_mask {self.seg_boundary_mask:#x} is not a mask "
                             f"of at least PAGE_SIZE - 1")
        if self.max_segment_size < PAGE_SIZE:
            raise ValueError(f"max_segment_size {self.max_segment_size} is below PAGE_SIZE")
        if self.virt_boundary_mask:
            if not _is_mask(self.virt_boundary_mask):
                raise ValueError(f"virt_boundary_mask {self.virt_boundary_mask:#x} is not a "
                                 f"mask of the form 2**k - 1")
            if self.max_segment_size != UINT_MAX:
                raise ValueError("a queue with a virt boundary must not limit the segment "
                                 "size (max_segment_size must be UINT_MAX)")
        if self.chunk_sectors % (lbs // SECTOR_SIZE):
            raise ValueError(f"chunk_sectors {self.chunk_sectors} is not a multiple of the "
                             f"logical block size")
        if self.chunk_sectors < 0:
            raise ValueError(f"chunk_sectors {self.chunk_sectors} is negative")

    # --- host ---------------------------------------------------------------------------
    @classmethod
    def from_sysfs(cls, queue_dir: str | Path, **overrides: int) -> QueueLimits:
        """Limits read from a ``/sys/block/<disk>/queue`` directory (files that are missing
        keep the kernel default; ``seg_boundary_mask`` is not in sysfs and always is)."""
        q = Path(queue_dir)

        def read(name: str) -> int | None:
            try:
                return int((q / name).read_text().split()[0])
            except (OSError, ValueError, IndexError):
                return None

        kw: dict[str, int] = {}
        for name in ("logical_block_size", "physical_block_size", "dma_alignment",
                     "max_segments", "max_segment_size", "virt_boundary_mask",
                     "chunk_sectors"):
            v = read(name)
            if v is not None:
                kw[name] = v
        hw, soft = read("max_hw_sectors_kb"), read("max_sectors_kb")
        if hw is not None:
            kw["max_hw_sectors"] = hw * 2
        if soft is not None:
            kw["max_sectors"] = soft * 2
        kw.update(overrides)
        return cls(**kw)

    @classmethod
    def from_host(cls, path: str | os.PathLike[str], **overrides: int) -> QueueLimits:
        """Limits of the host block device that holds ``path``.

        Raise: OSError (ENODEV) when ``path`` is not on a block device (tmpfs, overlay...).
        """
        return cls.from_sysfs(host_disk(path).queue_dir, **overrides)


@dataclass(frozen=True)
class HostDisk:
    """The host disk holding a file: its name, ``MAJ:MIN`` and sysfs directory."""

    name: str
    major: int
    minor: int
    sysfs_dir: Path
    size_sectors: int
    scheduler: str

    @property
    def queue_dir(self) -> Path:
        return self.sysfs_dir / "queue"


def host_disk(path: str | os.PathLike[str]) -> HostDisk:
    """Find the whole disk holding ``path``: ``st_dev`` → ``/sys/dev/block/MAJ:MIN``, up to
    the parent disk when that is a partition.

    Raise: OSError(ENODEV) when ``st_dev`` is not a block device (tmpfs, overlay, btrfs
    subvolume...).
    """
    st = os.stat(path)
    major, minor = os.major(st.st_dev), os.minor(st.st_dev)
    link = Path(f"/sys/dev/block/{major}:{minor}")
    if not link.exists():
        raise OSError(19, f"{os.fspath(path)} is not on a block device ({major}:{minor})")
    d = link.resolve()
    if (d / "partition").exists():
        d = d.parent
        major, minor = (int(x) for x in (d / "dev").read_text().split(":"))
    size = int((d / "size").read_text()) if (d / "size").exists() else 0
    sched = ""
    try:
        text = (d / "queue" / "scheduler").read_text()
        sched = text[text.index("[") + 1 : text.index("]")] if "[" in text else text.strip()
    except (OSError, ValueError):
        pass
    return HostDisk(d.name, major, minor, d, size, sched)

"""Basic kernel types and constants: page size, sizes, user address limits.

Models x86-64 with 4 KiB base pages and 4-level paging (``arch/x86/include/asm/page_types.h``,
``arch/x86/include/asm/page_64_types.h``).
"""

from __future__ import annotations

import re
from typing import Final

__all__ = [
    "HPAGE_PMD_NR",
    "HPAGE_PMD_ORDER",
    "HPAGE_PMD_SIZE",
    "MAX_PAGE_ORDER",
    "MAX_RW_COUNT",
    "PAGE_MASK",
    "PAGE_OFFSET",
    "PAGE_SHIFT",
    "PAGE_SIZE",
    "TASK_SIZE",
    "UIO_MAXIOV",
    "parse_size",
]

PAGE_SHIFT: Final = 12
PAGE_SIZE: Final = 1 << PAGE_SHIFT
PAGE_MASK: Final = ~(PAGE_SIZE - 1)
HPAGE_PMD_ORDER: Final = 9
HPAGE_PMD_NR: Final = 1 << HPAGE_PMD_ORDER
HPAGE_PMD_SIZE: Final = PAGE_SIZE << HPAGE_PMD_ORDER
MAX_PAGE_ORDER: Final = 10
"""Largest buddy order (``MAX_PAGE_ORDER`` in v6.x; ``MAX_ORDER - 1`` in v5.9)."""

TASK_SIZE: Final = (1 << 47) - PAGE_SIZE
"""x86-64 ``TASK_SIZE_MAX`` with 4-level paging: user addresses are below this."""

PAGE_OFFSET: Final = 0xFFFF888000000000
"""Start of the kernel's direct map of physical memory (x86-64, 4-level): the kernel virtual
address of frame ``pfn`` is ``PAGE_OFFSET + pfn * PAGE_SIZE`` (``__va`` / ``virt_to_page``)."""

MAX_RW_COUNT: Final = 0x7FFFF000
"""``INT_MAX & PAGE_MASK``: the most one read/write syscall moves (``include/linux/fs.h``)."""

UIO_MAXIOV: Final = 1024
"""``IOV_MAX``: the most iovecs one readv/writev takes (``include/uapi/linux/uio.h``)."""

_UNITS: Final = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_size(size: str | int) -> int:
    """Parse ``"4G"``, ``"512M"``, ``"64k"``, ``"1MiB"`` or an int into bytes."""
    if isinstance(size, int):
        if size < 0:
            raise ValueError(f"negative size {size}")
        return size
    m = re.fullmatch(r"\s*(\d+)\s*([kKmMgGtT]?)(i?[bB])?\s*", size)
    if not m:
        raise ValueError(f"cannot parse size {size!r} (use e.g. 4G, 512M, 64K)")
    return int(m.group(1)) * _UNITS[m.group(2).upper()]

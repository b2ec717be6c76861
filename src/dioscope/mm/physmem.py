"""Physical memory: one page-aligned anonymous host mapping of N frames.

A frame's bytes are a memoryview slice of it, so a model device can DMA into a frame with a
real ``os.preadv``. The mapping is MAP_NORESERVE and untouched frames cost no host memory.

The mapping asks the host for transparent huge pages (``MADV_HUGEPAGE``): what it costs the
host to move a model device's bytes depends on how physically contiguous the buffer is in
the host (measured on this VM: an O_DIRECT 1 MiB ``preadv`` into 4 KiB host pages 700 µs,
into a host THP 260 µs), as a VM whose RAM is backed by huge pages.
"""

from __future__ import annotations

import mmap

import numpy as np

from ..kernel.types import PAGE_SHIFT, PAGE_SIZE

__all__ = ["PhysMem", "host_buffer", "host_thp"]

_HPAGE = 2 << 20


def _want_huge(m: mmap.mmap) -> None:
    advice = getattr(mmap, "MADV_HUGEPAGE", None)
    if advice is not None:
        try:
            m.madvise(advice)
        except OSError:  # THP not available on this host: 4 KiB pages it is
            pass


def _map_huge_aligned(nbytes: int, flags: int) -> tuple[mmap.mmap, int]:
    """A private anonymous host mapping asking for transparent huge pages
    (``MADV_HUGEPAGE``), and the offset in it of ``nbytes`` that start on a 2 MiB boundary.

    The mapping is ``nbytes`` rounded up to 2 MiB, plus 2 MiB: wherever the host places it,
    the 2 MiB-aligned huge pages those bytes lie in are then wholly inside it, and only those
    can be THPs (a mapping of ``nbytes + 2 MiB`` got one only when the host happened to place
    it at most ``2 MiB - nbytes`` before a 2 MiB boundary).
    """
    m = mmap.mmap(-1, -(-nbytes // _HPAGE) * _HPAGE + _HPAGE, flags=flags)
    _want_huge(m)
    return m, -int(np.frombuffer(m, np.uint8).ctypes.data) % _HPAGE


def host_buffer(nbytes: int) -> tuple[mmap.mmap, memoryview]:
    """A private anonymous host buffer of ``nbytes``, 2 MiB-aligned and backed by
    transparent huge pages where the host allows, for O_DIRECT I/O
    (:func:`_map_huge_aligned`).

    Return: (the mapping, to keep alive; a memoryview of exactly ``nbytes`` of it).
    """
    m, off = _map_huge_aligned(nbytes, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    return m, memoryview(m)[off : off + nbytes]


_KPF_THP = 1 << 22  # include/uapi/linux/kernel-page-flags.h


def host_thp(view: memoryview) -> bool | None:
    """Whether the host page under the first byte of ``view`` (present: touch it first) is
    part of a transparent huge page (``/proc/self/pagemap`` then ``/proc/kpageflags``
    KPF_THP). Return: None where the host cannot say: not Linux, not root (the PFN reads as
    0, or the files do not open), the page not present, an empty or non-contiguous view."""
    try:
        addr = int(np.frombuffer(view, np.uint8).ctypes.data) if len(view) else -1
    except (BufferError, ValueError):
        return None
    if addr < 0:
        return None
    try:
        with open("/proc/self/pagemap", "rb") as f:
            f.seek((addr >> PAGE_SHIFT) * 8)
            raw = f.read(8)
        entry = int.from_bytes(raw, "little")
        pfn = entry & ((1 << 55) - 1)
        if len(raw) < 8 or not entry >> 63 or not pfn:
            return None
        with open("/proc/kpageflags", "rb") as f:
            f.seek(pfn * 8)
            raw = f.read(8)
        return bool(int.from_bytes(raw, "little") & _KPF_THP) if len(raw) == 8 else None
    except OSError:
        return None


class PhysMem:
    """``nr_pages`` frames of 4 KiB backed by one anonymous host mapping."""

    def __init__(self, nr_pages: int) -> None:
        if nr_pages <= 0:
            raise ValueError("physical memory needs at least one frame")
        self.nr_pages = nr_pages
        flags = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | getattr(mmap, "MAP_NORESERVE", 0)
        # Frame 0 on a 2 MiB boundary: a model THP (pfn a multiple of 512) then lies on one
        # host huge page wherever the host places the mapping. (This host's 6.18 placed a
        # 1 GiB mapping on a 2 MiB boundary by itself; not every kernel does.) Untouched,
        # the extra 2 MiB costs nothing (MAP_NORESERVE).
        size = nr_pages << PAGE_SHIFT
        self._map, off = _map_huge_aligned(size, flags)
        self.view = memoryview(self._map)[off : off + size]
        self.bytes = np.frombuffer(self._map, dtype=np.uint8)[off : off + size]
        """All of physical memory as one uint8 array (a view, not a copy)."""
        self.frames = self.bytes.reshape(nr_pages, PAGE_SIZE)
        """Physical memory as a (nr_pages, PAGE_SIZE) array: ``frames[pfn]`` is one frame."""
        self.pristine = np.ones(nr_pages, bool)
        """Frames never handed out since boot: still the host's zero-filled memory. Zeroing
        one is skipped (the host did it; touching it would only fault host memory in)."""

    def frame(self, pfn: int) -> memoryview:
        """The bytes of frame ``pfn`` (``page_address()`` / ``kmap_local_page()``)."""
        off = pfn << PAGE_SHIFT
        return self.view[off : off + PAGE_SIZE]

    def span(self, pfn: int, offset: int, length: int) -> memoryview:
        """``length`` bytes starting ``offset`` bytes into frame ``pfn`` (may cross frames)."""
        start = (pfn << PAGE_SHIFT) + offset
        return self.view[start : start + length]

    def hand_out(self, pfns: np.ndarray, zero: bool) -> None:
        """Frames leave the allocator: zero them if asked (``__GFP_ZERO``), skipping frames
        that are still pristine; from now on they may hold anything."""
        if zero:
            if len(pfns) == 1:
                if not self.pristine[pfns[0]]:
                    self.clear_pages(pfns)
            else:
                dirty = pfns[~self.pristine[pfns]]
                if len(dirty):
                    self.clear_pages(dirty)
        self.pristine[pfns] = False

    def clear_pages(self, pfns: np.ndarray) -> None:
        """``clear_page()`` on every frame in ``pfns``."""
        if len(pfns) == 1:
            p = int(pfns[0])
            self.bytes[p << PAGE_SHIFT : (p + 1) << PAGE_SHIFT] = 0
        elif len(pfns):
            self.frames[pfns] = 0

    def copy_page(self, dst: int, src: int) -> None:
        """``copy_highpage()``: frame ``src`` to frame ``dst``."""
        self.frames[dst] = self.frames[src]

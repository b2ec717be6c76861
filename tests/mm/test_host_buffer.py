"""mm/physmem.py: ``host_buffer()`` is a 2 MiB-aligned view on host transparent huge pages,
and PhysMem's frame 0 lies on a 2 MiB boundary.

The benchmarks give the host's own O_DIRECT this buffer and claim it is a THP like the
model's physical memory; what a transfer costs depends on it. The mapping used to be
``nbytes + 2 MiB``, which holds a whole aligned huge page only when the host places it well:
measured on this VM, a 1 MiB buffer was a THP in some runs and 4 KiB pages in others.
"""

from __future__ import annotations

import mmap
import os
import sys

import numpy as np
import pytest

from dioscope.mm.physmem import PhysMem, host_buffer, host_thp

HPAGE = 2 << 20

host_pfns = pytest.mark.skipif(
    sys.platform != "linux" or os.geteuid() != 0,
    reason="host PFNs (/proc/self/pagemap, /proc/kpageflags) need root on Linux")


def _addr(view: memoryview) -> int:
    return int(np.frombuffer(view, np.uint8).ctypes.data)


@pytest.mark.parametrize("nbytes", [1, 4096, 1 << 20, HPAGE - 1, HPAGE, HPAGE + 1, 3 << 20])
def test_view_is_aligned_and_exact(nbytes: int) -> None:
    m, view = host_buffer(nbytes)
    assert len(view) == nbytes
    start = _addr(view)
    assert start % HPAGE == 0
    # The huge pages the view touches lie wholly inside the mapping.
    base = int(np.frombuffer(m, np.uint8).ctypes.data)
    last_hpage_end = start + -(-nbytes // HPAGE) * HPAGE
    assert base <= start and last_hpage_end <= base + len(m)
    view.release()
    m.close()


def _thp_mode() -> str:
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
            text = f.read()
    except OSError:
        return ""
    return text.split("[", 1)[1].split("]", 1)[0] if "[" in text else ""


@pytest.mark.host
@host_pfns
@pytest.mark.skipif(_thp_mode() not in ("always", "madvise"),
                    reason="the host has transparent huge pages disabled")
def test_host_buffer_is_on_a_thp() -> None:
    # Eight 1 MiB buffers: with the old mapping size about half of them were 4 KiB pages.
    kept = []
    for _ in range(8):
        m, view = host_buffer(1 << 20)
        view[:] = b"\x5a" * len(view)  # fault it in
        assert host_thp(view) is True and host_thp(view[-4096:]) is True
        kept.append((m, view))
    for m, view in kept:
        view.release()
        m.close()


@pytest.mark.host
@host_pfns
def test_host_thp_says_no_for_small_pages_and_none_for_absent_ones() -> None:
    m = mmap.mmap(-1, 4 << 20, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    m.madvise(mmap.MADV_NOHUGEPAGE)
    view = memoryview(m)
    assert host_thp(view[2 << 20 :]) is None  # never touched: no page
    view[2 << 20 : (2 << 20) + 4096] = b"\1" * 4096
    assert host_thp(view[2 << 20 :]) is False
    view.release()
    m.close()


@pytest.mark.parametrize("nr_pages", [1, 511, 512, 1000])
def test_physmem_frame_zero_is_2m_aligned(nr_pages: int) -> None:
    # A model THP (pfn a multiple of 512) must lie on one host huge page.
    mem = PhysMem(nr_pages)
    assert mem.bytes.ctypes.data % HPAGE == 0
    assert len(mem.bytes) == len(mem.view) == nr_pages * 4096
    assert _addr(mem.view) == mem.bytes.ctypes.data
    assert mem.frames.shape == (nr_pages, 4096)


def test_host_thp_cannot_say_for_empty_or_strided_views() -> None:
    m, view = host_buffer(1 << 20)
    assert host_thp(view[:0]) is None
    assert host_thp(view[::2]) is None
    view.release()
    m.close()

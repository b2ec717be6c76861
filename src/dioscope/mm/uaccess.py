"""User-space memory access: what a process's loads and stores do.

``write_user`` / ``read_user`` behave like the CPU touching user memory: each page is checked
against its VMA (``access_error``), faulted in as a read or write fault would
(``handle_mm_fault``: the zero page for reads of untouched anonymous memory, allocation and COW
for writes), and then the bytes are copied through the physical frames. They stop at the first
inaccessible page, like ``access_process_vm`` returning a short count (a real store there
would raise SIGSEGV). No reference is left behind.
"""

from __future__ import annotations

import numpy as np

from ..kernel.types import PAGE_SHIFT, PAGE_SIZE
from .memory import access_error, populate_range
from .mm_types import MmStruct
from .pgtable import PTE_ACCESSED, PTE_DIRTY

__all__ = ["read_user", "touch_user", "write_user"]


def _walk(mm: MmStruct, addr: int, length: int, write: bool) -> list[tuple[int, np.ndarray]]:
    """Fault in ``[addr, addr+length)`` for the access; return (byte offset, pfns) runs for
    the accessible prefix."""
    runs: list[tuple[int, np.ndarray]] = []
    if length <= 0 or addr < 0:
        return runs
    end = addr + length
    pos = addr & ~(PAGE_SIZE - 1)
    while pos < end:
        vma = mm.vma_lookup(pos)
        if vma is None or access_error(vma, write):
            break
        s0 = vma.slot(pos)
        s1 = vma.slot(min(vma.vm_end, (end + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1)))
        failed = populate_range(vma, s0, s1, write)
        if failed:
            # Stop at the first slot that could not be faulted in.
            ok = vma.pt_pfn[s0:s1] >= 0
            s1 = s0 + (int(np.argmin(ok)) if not ok.all() else s1 - s0)
        if write:
            # The CPU's store sets the accessed and dirty bits of the PTEs it writes through;
            # zapping a dirty PTE later dirties a page-cache page (zap_present_folio_ptes()).
            vma.pt_flags[s0:s1] |= PTE_ACCESSED | PTE_DIRTY
        if s1 > s0:
            runs.append((pos, vma.pt_pfn[s0:s1].copy()))
        if failed:
            break
        pos = vma.vm_start + (s1 << PAGE_SHIFT)
    return runs


def write_user(mm: MmStruct, addr: int, data: bytes | bytearray | memoryview | np.ndarray) -> int:
    """Store ``data`` at user address ``addr``. Return: bytes written (short at a fault)."""
    buf = np.frombuffer(data, dtype=np.uint8) if not isinstance(data, np.ndarray) else data
    buf = buf.reshape(-1).view(np.uint8)
    frames = mm.pgdat.mem.frames
    done = 0
    for base, pfns in _walk(mm, addr, len(buf), write=True):
        lo = max(addr, base)
        hi = min(addr + len(buf), base + (len(pfns) << PAGE_SHIFT))
        _scatter(frames, pfns, lo - base, buf[lo - addr : hi - addr])
        done = hi - addr
    return done


def read_user(mm: MmStruct, addr: int, length: int) -> bytes:
    """Load ``length`` bytes from user address ``addr`` (shorter at a fault)."""
    out: list[bytes] = []
    frames = mm.pgdat.mem.frames
    for base, pfns in _walk(mm, addr, length, write=False):
        lo = max(addr, base)
        hi = min(addr + length, base + (len(pfns) << PAGE_SHIFT))
        out.append(_gather(frames, pfns, lo - base, hi - lo))
    return b"".join(out)


def touch_user(mm: MmStruct, addr: int, length: int, write: bool) -> int:
    """Fault the pages of a range in as loads (or stores that keep the bytes) would.

    Return: bytes of the range that are now accessible.
    """
    done = 0
    for base, pfns in _walk(mm, addr, length, write=write):
        done = min(addr + length, base + (len(pfns) << PAGE_SHIFT)) - addr
    return max(done, 0)


def _scatter(frames: np.ndarray, pfns: np.ndarray, off: int, src: np.ndarray) -> None:
    """Copy ``src`` into the frames ``pfns`` starting ``off`` bytes into the first."""
    n = len(src)
    first = PAGE_SIZE - off
    if n <= first:
        frames[pfns[0], off : off + n] = src
        return
    frames[pfns[0], off:] = src[:first]
    rest = src[first:]
    whole = len(rest) // PAGE_SIZE
    if whole:
        frames[pfns[1 : 1 + whole]] = rest[: whole * PAGE_SIZE].reshape(whole, PAGE_SIZE)
    tail = len(rest) - whole * PAGE_SIZE
    if tail:
        frames[pfns[1 + whole], :tail] = rest[whole * PAGE_SIZE :]


def _gather(frames: np.ndarray, pfns: np.ndarray, off: int, n: int) -> bytes:
    npages = (off + n + PAGE_SIZE - 1) >> PAGE_SHIFT
    flat = frames[pfns[:npages]].reshape(-1)
    return flat[off : off + n].tobytes()

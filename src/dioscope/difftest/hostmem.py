"""The host runner's view of its own memory: mappings, their page protections, safe reads.

Reading a buffer to check it must not change what a later step sees.  ``MemReader`` therefore
reads through ``/proc/self/mem`` (an unmapped page gives EIO instead of SIGSEGV, a PROT_NONE
page is still readable) and reports a never-faulted page of a private anonymous mapping as
zeros without touching it (``/proc/self/pagemap`` says it is not present), so a check never
maps the zero page into a buffer a later step uses as an untouched source.
"""

from __future__ import annotations

import abc
import os
import struct
from dataclasses import dataclass, field

from dioscope.difftest import libc as L

PAGE = L.PAGE_SIZE
_PM_PRESENT = 1 << 63
_PM_SWAPPED = 1 << 62
UNMAPPED = -1


def prot_bits(prot: str) -> int:
    """Return PROT_* bits for a normalised prot string ("rw", "" for none)."""
    bits = L.PROT_NONE
    if "r" in prot:
        bits |= L.PROT_READ
    if "w" in prot:
        bits |= L.PROT_WRITE
    if "x" in prot:
        bits |= L.PROT_EXEC
    return bits


@dataclass
class HostMapping:
    """One named mapping: its address and length, and each page's PROT_* bits or UNMAPPED."""

    name: str
    addr: int
    length: int
    private: bool
    anon: bool
    pages: list[int] = field(default_factory=list)

    def set_range(self, addr: int, length: int, value: int) -> None:
        """Record ``value`` (PROT_* bits or UNMAPPED) for the pages of [addr, addr+length)."""
        if length <= 0:
            return
        first = max(addr, self.addr) - self.addr
        last = min(addr + length, self.addr + self.length) - self.addr
        for p in range(first // PAGE, (last + PAGE - 1) // PAGE):
            if self.pages[p] != UNMAPPED or value == UNMAPPED:
                self.pages[p] = value

    def allows(self, at: int, length: int, need: int) -> bool:
        """Return True when every page of mapping bytes [at, at+length) has ``need`` bits."""
        for p in range(at // PAGE, (at + length + PAGE - 1) // PAGE):
            if p >= len(self.pages) or self.pages[p] == UNMAPPED or self.pages[p] & need != need:
                return False
        return True


def new_mapping(
    name: str, addr: int, length: int, prot: int, private: bool, anon: bool
) -> HostMapping:
    """Return the record of a fresh mapping (all pages ``prot``)."""
    npages = (length + PAGE - 1) // PAGE
    return HostMapping(name, addr, length, private, anon, [prot] * npages)


class ChunkedRead(abc.ABC):
    """:meth:`read` for a memory view that has ``read_chunks`` (the host's reader and the
    model's view share it)."""

    @abc.abstractmethod
    def read_chunks(self, addr: int, n: int) -> list[tuple[int, bytes | None]]:
        """[addr, addr+n) as (address, bytes or None when unreadable) pieces."""

    def read(self, addr: int, n: int) -> bytes | None:
        """Read [addr, addr+n); None when any byte is unreadable."""
        parts = []
        for _a, data in self.read_chunks(addr, n):
            if data is None:
                return None
            parts.append(data)
        return b"".join(parts)


class MemReader(ChunkedRead):
    """Reads this process's memory without faulting and without SIGSEGV."""

    def __init__(self) -> None:
        self._mem = os.open("/proc/self/mem", os.O_RDONLY)
        self._pagemap = os.open("/proc/self/pagemap", os.O_RDONLY)
        self.mappings: dict[str, HostMapping] = {}

    def close(self) -> None:
        """Close the /proc files."""
        for fd in (self._mem, self._pagemap):
            os.close(fd)

    def _private_anon(self, addr: int) -> bool:
        for m in self.mappings.values():
            if m.private and m.anon and m.addr <= addr < m.addr + m.length:
                return m.pages[(addr - m.addr) // PAGE] != UNMAPPED
        return False

    def _absent(self, page_addr: int) -> bool:
        raw = os.pread(self._pagemap, 8, (page_addr // PAGE) * 8)
        if len(raw) != 8:
            return False
        (entry,) = struct.unpack("<Q", raw)
        return not entry & (_PM_PRESENT | _PM_SWAPPED)

    def read_chunks(self, addr: int, n: int) -> list[tuple[int, bytes | None]]:
        """Read [addr, addr+n) page by page: a list of (address, bytes or None if unreadable).

        Pages that are never-faulted private anonymous memory read as zeros without a fault.
        """
        out: list[tuple[int, bytes | None]] = []
        end = addr + n
        a = addr
        while a < end:
            nxt = min(end, (a // PAGE + 1) * PAGE)
            out.append((a, self._read_page_part(a, nxt - a)))
            a = nxt
        return out

    def _read_page_part(self, a: int, n: int) -> bytes | None:
        if a < 0 or a + n > (1 << 63):
            return None
        if self._private_anon(a) and self._absent(a & ~(PAGE - 1)):
            return bytes(n)
        try:
            data = os.pread(self._mem, n, a)
        except OSError:
            return None
        return data if len(data) == n else None


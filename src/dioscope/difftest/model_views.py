"""Views of the model the scenario runner reads through (split from ``model.py``):
``ModelMem`` reads the model process's memory with the host reader's semantics,
``ModelFiles`` reads a file as the disk and the page cache hold it, and the per-step
observers of pins and tracepoints."""

from __future__ import annotations

import errno as errno_mod
from dataclasses import dataclass
from typing import Any

import numpy as np

from dioscope.difftest.hostmem import ChunkedRead, HostMapping
from dioscope.fs.modelfs import MODELFS_BLOCKSIZE, ModelFs
from dioscope.kernel.types import PAGE_SIZE
from dioscope.mm.memory import populate_range
from dioscope.mm.page import PG

__all__ = ["ModelFiles", "ModelMem"]

_CACHE_NEWER = int(PG.PG_dirty | PG.PG_writeback)


# --------------------------------------------------------------------------------------------
# Side-effect-free views of memory and files


class ModelMem(ChunkedRead):
    """The model process's memory as ``verify`` reads it, with the host reader's semantics.

    A present page is read from its frame whatever its protection (``/proc/self/mem`` reads
    PROT_NONE pages too); a never-faulted page of private anonymous memory reads as zeros
    without a fault; any other absent page is faulted in for reading first, as the host's
    ``/proc/self/mem`` access does; an address without a VMA is unreadable (None).
    """

    def __init__(self, proc: Any) -> None:
        self.proc = proc
        self.mappings: dict[str, HostMapping] = {}

    def _page(self, page_addr: int) -> bytes | None:
        mm = self.proc.mm
        if page_addr < 0 or page_addr >= 1 << 63:
            return None
        vma = mm.vma_lookup(page_addr)
        if vma is None:
            return None
        s = vma.slot(page_addr)
        pfn = int(vma.pt_pfn[s])
        if pfn < 0:
            if vma.is_anonymous():
                return bytes(PAGE_SIZE)
            if populate_range(vma, s, s + 1, False):
                return None
            pfn = int(vma.pt_pfn[s])
            if pfn < 0:
                return None
        return bytes(mm.pgdat.mem.frames[pfn])

    def read_chunks(self, addr: int, n: int) -> list[tuple[int, bytes | None]]:
        """Read [addr, addr+n) page by page: (address, bytes or None if unreadable)."""
        out: list[tuple[int, bytes | None]] = []
        end = addr + n
        a = addr
        while a < end:
            base = a // PAGE_SIZE * PAGE_SIZE
            nxt = min(end, base + PAGE_SIZE)
            page = self._page(base)
            out.append((a, None if page is None else page[a - base : nxt - base]))
            a = nxt
        return out


class ModelFiles:
    """The model filesystem's files as an O_DIRECT read-back sees them, without touching
    the page cache: a dirty (or under-writeback) cached page holds the newest bytes;
    otherwise the disk does, and holes and unwritten blocks read as zeros. Clipped at
    ``i_size``."""

    def __init__(self, fs: ModelFs) -> None:
        self.fs = fs

    def read(self, name: str, offset: int, n: int) -> bytes:
        """File ``name``'s bytes [offset, offset+n), shorter at EOF (a ``FileReader``)."""
        inode = self.fs.lookup(name)
        if inode is None:
            raise FileNotFoundError(errno_mod.ENOENT, "no such file in the model", name)
        end = min(offset + n, int(inode.i_size))
        if n <= 0 or end <= offset:
            return b""
        bs = MODELFS_BLOCKSIZE
        first, last = offset // bs, (end + bs - 1) // bs
        out = np.zeros((last - first, bs), np.uint8)
        pgdat = self.fs.pgdat
        pfns = inode.i_mapping.pages(first, last)
        cached = pfns >= 0
        newer = np.zeros(len(pfns), bool)
        if cached.any():
            newer[cached] = (pgdat.pages.flags[pfns[cached]] & _CACHE_NEWER) != 0
        if newer.any():
            out[newer] = pgdat.mem.frames[pfns[newer]]
        pblk, unw = inode.ext.lookup(first, last - first)
        disk = (~newer) & (pblk >= 0) & ~unw
        for i in np.flatnonzero(disk).tolist():
            raw = self.fs.bdev.read_disk(int(pblk[i]) * bs, bs)
            out[i] = np.frombuffer(raw, np.uint8)
        flat = out.reshape(-1)
        return flat[offset - first * bs : end - first * bs].tobytes()


# --------------------------------------------------------------------------------------------
# Observation of one step (bios, requests, page references)


class _PageWatch:
    """A hook observer: which pages a step got or pinned, and their counts while held."""

    def __init__(self, pgdat: Any) -> None:
        self.pgdat = pgdat
        self.lines: list[str] = []

    def on_acquire(self, kind: str, pfns: Any, holder: object, site: str) -> None:
        what = "pin" if kind == "pin" else "get"
        self.lines.append(f"{what} {len(pfns)} page(s) at {site}")

    def on_release(self, kind: str, pfns: Any, holder: object, site: str) -> None:
        what = "unpin" if kind == "pin" else "put"
        pages = self.pgdat.pages
        pfn = int(pfns[0]) if len(pfns) else -1
        held = ""
        if pfn >= 0:
            head = int(pages.head[pfn])
            held = (f"; while held, pfn {pfn:#x} had refcount {int(pages.refcount[head])} "
                    f"pincount {int(pages.pincount[head])}")
        self.lines.append(f"{what} {len(pfns)} page(s) at {site}{held}")

    def on_free(self, pfns: Any, order: int, site: str) -> None:
        pass


@dataclass
class _Trace:
    """What the tracepoints showed during one step."""

    bios: list[tuple[str, int, int]]  # (rwbs, disk byte offset, bytes)
    requests: list[tuple[str, int]]  # (rwbs, bytes) issued

"""File mappings through the page cache (mm/memory.py ``do_fault``, mm/filemap.py
``MappedFile``, mm/rmap.py): MAP_SHARED writes dirty the page cache through
``page_mkwrite``, writeback write-protects the PTEs (``folio_mkclean``) so the next store
faults and dirties again; MAP_PRIVATE maps page-cache pages read-only and copies on write.

Each PTE that maps a page-cache page holds a reference and a mapcount on it, besides the
page cache's own reference.
"""

from __future__ import annotations

import errno
import os

import numpy as np
import pytest

from dioscope.block.devices import MemDevice
from dioscope.fs.modelfs import ModelFs, file_pattern
from dioscope.kernel.types import PAGE_SIZE
from dioscope.machine import Kernel
from dioscope.mm.gup import pin_user_pages_fast, unpin_user_pages_dirty_lock
from dioscope.mm.gup_core import FOLL
from dioscope.mm.mmap import MAP_PRIVATE, MAP_SHARED, PROT_READ, PROT_WRITE
from dioscope.mm.page import PG
from dioscope.mm.pgtable import PTE_DIRTY, PTE_FASTPIN, PTE_PRESENT, PTE_RW

P = PAGE_SIZE
RW = PROT_READ | PROT_WRITE


def setup(k: Kernel, size: int = 3 * P, **kw):
    fs = ModelFs(MemDevice(k.pgdat, "16M"))
    k.mount(fs)
    inode = fs.create_file("f", size, **kw)
    p = k.spawn()
    fd = p.open("/f", os.O_RDWR)
    return fs, inode, p, fd


def pte(p, addr: int) -> tuple[int, int]:
    vma = p.mm.vma_lookup(addr)
    s = vma.slot(addr)
    return int(vma.pt_pfn[s]), int(vma.pt_flags[s])


def counts(k: Kernel, pfn: int) -> tuple[int, int]:
    return int(k.pgdat.pages.refcount[pfn]), int(k.pgdat.pages.mapcount[pfn])


def is_dirty(k: Kernel, pfn: int) -> bool:
    return bool(int(k.pgdat.pages.flags[pfn]) & PG.PG_dirty)


def test_shared_read_fault_maps_the_cache_page_read_only(k):
    _fs, inode, p, fd = setup(k)
    a = p.mmap(3 * P, RW, MAP_SHARED, fd=fd)
    assert p.read_user(a + P, 8) == file_pattern(inode.i_ino, P, 8)
    pfn, fl = pte(p, a + P)
    assert pfn == inode.i_mapping.lookup(1)
    assert fl & PTE_PRESENT and not fl & (PTE_RW | PTE_DIRTY | PTE_FASTPIN)  # writenotify
    assert counts(k, pfn) == (2, 1)
    assert not is_dirty(k, pfn)
    assert pte(p, a)[0] == -1 and pte(p, a + 2 * P)[0] == -1


def test_shared_store_calls_page_mkwrite(k):
    fs, inode, p, fd = setup(k, holes=[(P, P)])
    a = p.mmap(3 * P, RW, MAP_SHARED, fd=fd)
    assert inode.ext.extents() == [(0, 1, 1, False), (2, 3, 1, False)]
    assert p.write_user(a + P + 10, b"hole") == 4
    pfn, fl = pte(p, a + P)
    assert fl & PTE_RW and fl & PTE_DIRTY and is_dirty(k, pfn)
    assert inode.ext.extents() == [(0, 1, 1, False), (1, 2, 1, True), (2, 3, 1, False)]
    p.fsync(fd)
    assert inode.ext.extents() == [(0, 1, 3, False)]
    assert fs.bdev.read_disk(2 * P, 20) == bytes(10) + b"hole" + bytes(6)


def test_writeback_write_protects_and_the_next_store_redirties(k):
    fs, _inode, p, fd = setup(k)
    a = p.mmap(3 * P, RW, MAP_SHARED, fd=fd)
    p.write_user(a, b"first")
    pfn, fl = pte(p, a)
    assert fl & PTE_RW and is_dirty(k, pfn)
    p.fsync(fd)
    pfn2, fl = pte(p, a)
    assert pfn2 == pfn and fl & PTE_PRESENT and not fl & (PTE_RW | PTE_DIRTY)
    assert not is_dirty(k, pfn)
    assert fs.bdev.read_disk(P, 5) == b"first"
    p.write_user(a, b"again")  # faults: wp_page_shared -> page_mkwrite
    _, fl = pte(p, a)
    assert fl & PTE_RW and fl & PTE_DIRTY and is_dirty(k, pfn)
    p.fsync(fd)
    assert fs.bdev.read_disk(P, 5) == b"again"


def test_shared_mapping_sees_buffered_writes_and_vice_versa(k):
    _fs, _inode, p, fd = setup(k)
    a = p.mmap(3 * P, RW, MAP_SHARED, fd=fd)
    p.write_user(a + 2 * P, b"via mmap")
    buf = p.mmap(P)
    assert p.pread(fd, buf, 8, 2 * P) == 8 and p.read_user(buf, 8) == b"via mmap"
    p.write_user(buf, b"via write")
    assert p.pwrite(fd, buf, 9, 100) == 9
    assert p.read_user(a + 100, 9) == b"via write"


def test_private_mapping_copies_on_write(k):
    _fs, inode, p, fd = setup(k)
    shared = p.mmap(3 * P, RW, MAP_SHARED, fd=fd)
    priv = p.mmap(3 * P, RW, MAP_PRIVATE, fd=fd)
    assert p.read_user(priv, 4) == file_pattern(inode.i_ino, 0, 4)
    cache = inode.i_mapping.lookup(0)
    pfn, fl = pte(p, priv)
    assert pfn == cache and not fl & PTE_RW
    p.read_user(shared, 1)
    assert counts(k, cache) == (3, 2)
    p.write_user(priv, b"mine")
    copy, fl = pte(p, priv)
    assert copy != cache and fl & PTE_RW and fl & PTE_DIRTY and fl & PTE_FASTPIN
    assert k.pgdat.pages.test(copy, PG.PG_anon)
    assert counts(k, cache) == (2, 1) and not is_dirty(k, cache)
    assert p.read_user(priv, 4) == b"mine"
    assert p.read_user(shared, 4) == file_pattern(inode.i_ino, 0, 4)
    assert p.read_user(priv + 4, 4) == file_pattern(inode.i_ino, 4, 4)


def test_private_write_fault_on_an_empty_pte_never_maps_the_cache_page(k):
    fs, inode, p, fd = setup(k)
    priv = p.mmap(3 * P, RW, MAP_PRIVATE, fd=fd)
    p.write_user(priv + P, b"cow")
    pfn, _ = pte(p, priv + P)
    cache = inode.i_mapping.lookup(1)
    assert pfn != cache and counts(k, cache) == (1, 0)
    assert p.read_user(priv + P, 8) == b"cow" + file_pattern(inode.i_ino, P + 3, 5)
    p.fsync(fd)
    assert fs.bdev.read_disk(2 * P, 8) == file_pattern(inode.i_ino, P, 8)


def test_fault_past_eof_is_sigbus(k):
    _fs, inode, p, fd = setup(k, size=P + 100)
    a = p.mmap(3 * P, RW, MAP_SHARED, fd=fd)
    assert p.read_user(a + P + 90, 100) == file_pattern(inode.i_ino, P + 90, 10) + bytes(90)
    assert p.touch(a + P, 2 * P) == P  # the page past EOF faults with SIGBUS
    pages = np.full(3, -1, np.int64)
    assert pin_user_pages_fast(p.mm, a + 2 * P, 1, 0, pages) == -errno.EFAULT
    assert pin_user_pages_fast(p.mm, a, 3, int(FOLL.FOLL_WRITE), pages) == 2
    unpin_user_pages_dirty_lock(k.pgdat, pages, 2, True)


def test_stores_past_eof_in_the_last_page_never_reach_the_file(k):
    fs, _inode, p, fd = setup(k, size=100)
    a = p.mmap(P, RW, MAP_SHARED, fd=fd)
    p.write_user(a + 90, b"X" * 20)
    p.fsync(fd)
    assert fs.bdev.read_disk(P + 90, 20) == b"X" * 10 + bytes(10)
    p.ftruncate(fd, 200)
    buf = p.mmap(P)
    assert p.read_user(buf, p.pread(fd, buf, 200, 90)) == b"X" * 10 + bytes(100)


def test_truncate_unmaps_shared_ptes_and_private_copies(k):
    _fs, inode, p, fd = setup(k)
    shared = p.mmap(3 * P, RW, MAP_SHARED, fd=fd)
    priv = p.mmap(3 * P, RW, MAP_PRIVATE, fd=fd)
    p.read_user(shared, 3 * P)
    p.write_user(priv + 2 * P, b"c")
    copy = pte(p, priv + 2 * P)[0]
    free = k.pgdat.nr_free()
    p.ftruncate(fd, P + 1)
    assert pte(p, shared)[0] >= 0 and pte(p, shared + P)[0] >= 0
    assert pte(p, shared + 2 * P)[0] == -1
    assert pte(p, priv + 2 * P)[0] == -1 and k.pgdat.pages.refcount[copy] == 0  # even_cows
    assert k.pgdat.nr_free() == free + 2  # the cache page and the COW copy
    assert p.touch(shared + 2 * P, 1) == 0
    assert p.read_user(shared + P, 4) == file_pattern(inode.i_ino, P, 1) + bytes(3)


def test_punch_hole_unmaps_shared_ptes_but_keeps_private_copies(k):
    _fs, _inode, p, fd = setup(k)
    shared = p.mmap(3 * P, RW, MAP_SHARED, fd=fd)
    priv = p.mmap(3 * P, RW, MAP_PRIVATE, fd=fd)
    p.read_user(shared, 3 * P)
    p.write_user(priv + P, b"c")
    copy = pte(p, priv + P)[0]
    p.fallocate(fd, 0x03, P, P)  # PUNCH_HOLE | KEEP_SIZE
    assert pte(p, shared + P)[0] == -1 and pte(p, shared)[0] >= 0
    assert pte(p, priv + P)[0] == copy
    assert p.read_user(shared + P, 4) == bytes(4)  # refaulted: a hole
    assert p.read_user(priv + P, 1) == b"c"


def test_fork_shares_file_pages_and_mkclean_finds_both(k):
    _fs, inode, p, fd = setup(k)
    a = p.mmap(P, RW, MAP_SHARED, fd=fd)
    p.write_user(a, b"parent")
    child = k.fork(p)
    pfn = inode.i_mapping.lookup(0)
    assert pte(child, a)[0] == pfn and counts(k, pfn) == (3, 2)
    child.write_user(a, b"child!")
    assert p.read_user(a, 6) == b"child!"
    p.fsync(fd)
    for proc in (p, child):
        assert not pte(proc, a)[1] & (PTE_RW | PTE_DIRTY)
    child.exit()
    assert counts(k, pfn) == (2, 1)


def test_mprotect_keeps_clean_shared_file_ptes_read_only(k):
    _fs, inode, p, fd = setup(k)
    a = p.mmap(2 * P, PROT_READ, MAP_SHARED, fd=fd)
    p.read_user(a, 2 * P)
    p.mprotect(a, 2 * P, RW)
    assert not pte(p, a)[1] & PTE_RW and not pte(p, a + P)[1] & PTE_RW
    p.write_user(a + P, b"w")
    assert pte(p, a + P)[1] & PTE_RW and is_dirty(k, inode.i_mapping.lookup(1))
    ro = p.open("/f", os.O_RDONLY)
    b = p.mmap(P, PROT_READ, MAP_SHARED, fd=ro)
    with pytest.raises(OSError) as exc:
        p.mprotect(b, P, RW)
    assert exc.value.errno == errno.EACCES
    with pytest.raises(OSError) as exc:
        p.mmap(P, RW, MAP_SHARED, fd=ro)
    assert exc.value.errno == errno.EACCES
    c = p.mmap(P, RW, MAP_PRIVATE, fd=ro)  # private: copies, never writes the file
    p.write_user(c, b"private")
    assert p.read_user(a, 7) == file_pattern(inode.i_ino, 0, 7)


def test_pinned_shared_page_dirtied_at_unpin_is_written_back(k):
    fs, inode, p, fd = setup(k)
    a = p.mmap(P, RW, MAP_SHARED, fd=fd)
    pages = np.full(1, -1, np.int64)
    assert pin_user_pages_fast(p.mm, a, 1, int(FOLL.FOLL_WRITE), pages) == 1
    pfn = int(pages[0])
    assert pfn == inode.i_mapping.lookup(0) and is_dirty(k, pfn)  # write fault: mkwrite
    p.fsync(fd)  # writeback while pinned: the PTE goes read-only, the pin stays
    assert not is_dirty(k, pfn) and not pte(p, a)[1] & PTE_RW
    k.pgdat.mem.bytes[pfn * P : pfn * P + 3] = np.frombuffer(b"DMA", np.uint8)  # the device
    unpin_user_pages_dirty_lock(k.pgdat, pages, 1, True)
    assert is_dirty(k, pfn)
    p.fsync(fd)
    assert fs.bdev.read_disk(P, 3) == b"DMA"


def test_unmap_close_unlink_leaves_nothing_behind(k):
    fs, inode, p, fd = setup(k)
    free_blocks = fs.balloc.free_blocks
    a = p.mmap(3 * P, RW, MAP_SHARED, fd=fd)
    b = p.mmap(3 * P, RW, MAP_PRIVATE, fd=fd)
    p.write_user(a, b"s")
    p.write_user(b + P, b"p")
    p.munmap(a + P, P)  # split the shared VMA: both halves stay in i_mmap
    p.fsync(fd)
    assert not pte(p, a + 2 * P)[1] & PTE_RW or pte(p, a + 2 * P)[0] == -1
    p.close(fd)
    assert fs.unlink("f") == 0
    assert inode.i_count == 3 and 12 in fs.inodes  # three VMAs keep it
    free = k.pgdat.nr_free()
    p.munmap(a, 3 * P)
    p.munmap(b, 3 * P)
    assert 12 not in fs.inodes and inode.i_mapping.nrpages == 0
    assert fs.balloc.free_blocks == free_blocks + 3
    assert k.pgdat.nr_free() == free + 4  # three cache pages and one COW copy

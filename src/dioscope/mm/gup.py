"""get_user_pages and pin_user_pages (``mm/gup.c``).

Public entry points keep the kernel's names and argument order, with the implicit
``current->mm`` made the explicit first argument (as ``pin_user_pages_remote`` has it), and
``pages`` an int64 numpy array that receives pfns. Keyword-only ``holder`` names who will own
the references (for the sanitizer's provenance); it changes no behaviour.

Flow (``internal_get_user_pages_fast`` [5.10] / ``gup_fast_fallback`` [6.x]): validate flags
and range; GUP-fast walks present PTEs without faulting and stops at the first entry it may not
take; the slow path (``__get_user_pages``) continues from there, checking each VMA
(``check_vma_flags``), faulting pages in (``faultin_page``) and grabbing them. Pages are taken
strictly in address order; the return is the number of pages taken, or -errno only if none.
"""

from __future__ import annotations

import errno
from typing import Final

import numpy as np

from ..kernel.npfast import all_set
from ..kernel.types import HPAGE_PMD_SIZE, PAGE_MASK, PAGE_SHIFT, TASK_SIZE
from .gup_core import (
    FOLL,
    gup_put_pages,
    set_folio_dirty_lock,
    try_grab_folio,
    try_grab_pages,
    try_grab_unique_small,
)
from .memory import FAULT_FLAG, handle_mm_fault
from .mm_types import VM, MmStruct, VmArea
from .page import PG
from .page_alloc import ZERO_PFN, PgData
from .page_ref import page_ref_add
from .pgtable import (
    PTE_DIRTY,
    PTE_FAST_READ,
    PTE_FAST_WRITE,
    PTE_PMD,
    PTE_PRESENT,
    PTE_RW,
    PTE_SPECIAL,
)

__all__ = [
    "folio_add_pin",
    "get_user_pages",
    "get_user_pages_fast",
    "pin_page",
    "pin_user_pages",
    "pin_user_pages_fast",
    "unpin_user_page",
    "unpin_user_pages",
    "unpin_user_pages_dirty_lock",
]

_U64: Final = (1 << 64) - 1
_FOLL_WRITE: Final = int(FOLL.FOLL_WRITE)
_FOLL_GET: Final = int(FOLL.FOLL_GET)
_FOLL_PIN: Final = int(FOLL.FOLL_PIN)
_FOLL_FORCE: Final = int(FOLL.FOLL_FORCE)
_FOLL_LONGTERM: Final = int(FOLL.FOLL_LONGTERM)
_FOLL_FAST_ONLY: Final = int(FOLL.FOLL_FAST_ONLY)
_FOLL_NOFAULT: Final = int(FOLL.FOLL_NOFAULT)
_FOLL_REMOTE: Final = int(FOLL.FOLL_REMOTE)
_FOLL_TOUCH: Final = int(FOLL.FOLL_TOUCH)
_VM_WRITE: Final = int(VM.VM_WRITE)
_PG_ANON: Final = np.uint32(PG.PG_anon)
_PG_ANON_EXCLUSIVE: Final = np.uint32(PG.PG_anon_exclusive)
_PG_ANON_BOTH: Final = np.uint32(PG.PG_anon | PG.PG_anon_exclusive)
# Python-int copies of page-table flags for tests on ``.item()`` values (a numpy scalar in
# the expression makes it numpy scalar arithmetic, several times slower).
_PMD_PRESENT: Final = int(PTE_PRESENT | PTE_PMD)
_PMD_PRESENT_RW: Final = int(PTE_PRESENT | PTE_PMD | PTE_RW)
_PTE_PMD: Final = int(PTE_PMD)
_PTE_SPECIAL: Final = int(PTE_SPECIAL)
_PTE_FAST_WRITE: Final = int(PTE_FAST_WRITE)
_PTE_FAST_READ: Final = int(PTE_FAST_READ)


def _gup_fast_shortcuts(
    mm: MmStruct, start: int, nr_pages: int, gup_flags: int, pages: np.ndarray,
    holder: object, pin: bool,
) -> int:
    """The two common cases of GUP-fast, tried before the general path by
    ``get_user_pages_fast`` and ``pin_user_pages_fast``: plain flags (FOLL_WRITE at most), a
    page-aligned range of at most 512 pages, a pages array that holds them, and either
    distinct small exclusive anon pages
    (:func:`_gup_fast_unique`) or one PMD-mapped THP (:func:`_gup_fast_pmd`).
    Return: pages taken, or -1 (take the general path)."""
    if gup_flags & ~_FOLL_WRITE or not 0 < nr_pages <= 512 or start & 0xFFF:
        return -1
    if len(pages) < nr_pages:
        return -1  # the general path reports a short pages array before grabbing anything
    if mm.pgdat.cfg.GUP_FORCED_COW:
        gup_flags = _FOLL_WRITE  # v5.8: GUP-fast takes only writable PTEs (see _gup_fast)
    # The VMA the last lookup found is tried first (``mm->vmacache`` of 5.9; 6.x walks the
    # maple tree, which the model's per-mm cache stands in for).
    vma = mm.vma_cache
    if vma is None or not vma.vm_start <= start < vma.vm_end:
        vma = mm.vma_lookup(start)
        if vma is None:
            return -1
        mm.vma_cache = vma
    s0 = (start - vma.vm_start) >> PAGE_SHIFT
    if s0 < len(vma.pt_flags) and vma.pt_flags.item(s0) & _PTE_PMD:
        # A PMD mapping: never PTE_FASTPIN, so only the THP shortcut can take it.
        return _gup_fast_pmd(mm, vma, start, nr_pages, gup_flags, pages, holder, pin)
    return _gup_fast_unique(mm, vma, s0, nr_pages, gup_flags, pages, holder, pin)


def _gup_fast_unique(
    mm: MmStruct, vma: VmArea, s0: int, nr_pages: int, write: int, pages: np.ndarray,
    holder: object, pin: bool,
) -> int:
    """The common case of GUP-fast, checked in one pass: a page-aligned range inside one VMA
    whose PTEs all map distinct small exclusive anon pages (PTE_FASTPIN), present and
    writable if FOLL_WRITE. Exactly what the general walk would do (the pages are distinct
    order-0 pages, so each is its own head and one scatter accounts the whole run), without
    its per-run bookkeeping. This is the hot path of every Direct I/O.

    Return: pages taken, or -1 if the range does not qualify (the caller takes the general
    path, which also does all argument checking).
    """
    pgdat = mm.pgdat
    need = _PTE_FAST_WRITE if write else _PTE_FAST_READ
    if nr_pages == 1:  # one PTE: a scalar test
        if s0 >= len(vma.pt_flags) or vma.pt_flags.item(s0) < need:
            return -1
    else:
        fl = vma.pt_flags[s0 : s0 + nr_pages]
        if len(fl) != nr_pages:
            return -1
        # Usually every PTE has the same flags: then one bytes comparison (uint8 flags)
        # says so and the first byte is the minimum; otherwise find the minimum.
        b = fl.tobytes()
        if (b[0] if b == b[:1] * nr_pages else fl.item(fl.argmin())) < need:
            return -1
    pfns = vma.pt_pfn[s0 : s0 + nr_pages]
    k = try_grab_unique_small(pgdat, pfns, _FOLL_PIN if pin else _FOLL_GET, holder,
                              "pin_user_pages_fast" if pin else "get_user_pages_fast")
    if not k:
        return -1  # the first page cannot be grabbed: the general path gives the errno
    pages[:k] = pfns if k == nr_pages else pfns[:k]
    if pin:
        mm.has_pinned = True
    return k


def _gup_fast_pmd(
    mm: MmStruct, vma: VmArea, start: int, nr_pages: int, write: int, pages: np.ndarray,
    holder: object, pin: bool,
) -> int:
    """The other common case of GUP-fast: a page-aligned range inside one PMD-mapped THP
    (``gup_fast_pmd_leaf()``: the pages of one folio, taken with one
    ``try_grab_folio_fast(folio, refs, flags)``). Accepted only when the general walk would
    take every page the same way: the PMD present (and writable for FOLL_WRITE), not special
    (the huge zero folio goes the general way), and [6.18] for a read-only pin every page
    anon-exclusive (``gup_must_unshare``); the folio's refcount > 0 and not wrapping. Then
    the result is the general path's exactly: the same one-folio update (``try_grab_folio``)
    that ``try_grab_pages`` makes.

    Return: pages taken, or -1 if the range does not qualify.
    """
    end = start + (nr_pages << PAGE_SHIFT) - 1
    if start // HPAGE_PMD_SIZE != end // HPAGE_PMD_SIZE or end >= vma.vm_end:
        return -1
    pgdat = mm.pgdat
    cfg = pgdat.cfg
    s0 = (start - vma.vm_start) >> PAGE_SHIFT
    b = vma.pt_flags[s0 : s0 + nr_pages].tobytes()  # uint8 flags, one per PTE
    if b != b[:1] * nr_pages:  # not every page mapped the same way
        return -1
    f0 = b[0]
    need = _PMD_PRESENT_RW if write else _PMD_PRESENT
    if (f0 & need) != need or f0 & _PTE_SPECIAL:
        return -1
    pfns = vma.pt_pfn[s0 : s0 + nr_pages]
    pfn0 = pfns.item(0)
    p = pgdat.pages
    if pin and not write and cfg.ANON_EXCLUSIVE:
        x = p.flags[pfn0 : pfn0 + nr_pages] & _PG_ANON_BOTH
        if x[x.argmin()] != _PG_ANON_BOTH:
            return -1  # some page may be shared: the general path unshares it
    if not try_grab_folio(pgdat, p.head.item(pfn0), pfns, pin, holder,
                       "pin_user_pages_fast" if pin else "get_user_pages_fast"):
        return -1
    if pin:
        mm.has_pinned = True
    pages[:nr_pages] = pfns
    return nr_pages


_FAST_ALLOWED_59: Final = (
    _FOLL_WRITE | _FOLL_LONGTERM | _FOLL_FORCE | _FOLL_PIN | _FOLL_GET
    | FOLL.FOLL_FAST_ONLY
)
_FAST_ALLOWED_6X: Final = _FAST_ALLOWED_59 | FOLL.FOLL_NOFAULT
_INTERNAL_GUP_FLAGS_6X: Final = int(
    _FOLL_TOUCH | _FOLL_REMOTE | _FOLL_PIN | _FOLL_FAST_ONLY
)
"""``INTERNAL_GUP_FLAGS`` [6.x] (with FOLL_TRIED, FOLL_UNLOCKABLE, FOLL_MADV_POPULATE,
which the model does not define): a caller passing any of them fails is_valid_gup_args()."""


# --- argument checks ------------------------------------------------------------------------
def _valid_gup_args(pgdat: PgData, gup_flags: int, to_set: int, site: str) -> bool:
    """``is_valid_gup_args()`` [6.x] / the WARNs at the top of each entry point [5.9]."""
    if pgdat.cfg.GUP_ARGS_6X and gup_flags & _INTERNAL_GUP_FLAGS_6X:
        pgdat.events.warn_once(site, f"internal gup_flags {gup_flags:#x} from the caller")
        return False
    if to_set == _FOLL_PIN and gup_flags & _FOLL_GET:
        pgdat.events.warn_once(site, "FOLL_GET passed to a pin_user_pages*() call")
        return False
    if to_set == _FOLL_GET and gup_flags & _FOLL_PIN:
        pgdat.events.warn_once(site, "FOLL_PIN passed to a get_user_pages*() call")
        return False
    if (
        pgdat.cfg.GUP_ARGS_6X
        and gup_flags & _FOLL_LONGTERM
        and not (gup_flags | to_set) & _FOLL_PIN
    ):
        pgdat.events.warn_once(site, "FOLL_LONGTERM without FOLL_PIN")
        return False
    return True


def _fast_range(pgdat: PgData, start: int, nr_pages: int) -> tuple[int, int]:
    """Range checks of the fast entry points. Return (start, end), or (-errno, 0) / (0, 0)
    for the early "return 0" of v5.9."""
    start &= PAGE_MASK & _U64
    length = (nr_pages << PAGE_SHIFT) & _U64  # (unsigned long)nr_pages << PAGE_SHIFT
    end = start + length
    if pgdat.cfg.GUP_ARGS_6X:
        if end > _U64:
            return -errno.EOVERFLOW, 0
        if end > TASK_SIZE:  # TASK_SIZE_MAX
            return -errno.EFAULT, 0
        return start, end
    end &= _U64
    if end <= start:
        return 0, 0
    if end > TASK_SIZE:  # access_ok(): the range must end at or below TASK_SIZE_MAX
        return -errno.EFAULT, 0
    return start, end


def _check_vma_flags(vma: VmArea, gup_flags: int) -> int:
    """``check_vma_flags()``: may GUP access this VMA this way? Return 0 or -EFAULT."""
    vf = vma.vm_flags
    if vf & (VM.VM_IO | VM.VM_PFNMAP):
        return -errno.EFAULT
    if gup_flags & _FOLL_WRITE:
        if not vf & VM.VM_WRITE:
            if not gup_flags & _FOLL_FORCE or not vma.is_cow_mapping():
                return -errno.EFAULT
    elif not vf & VM.VM_READ:
        if not gup_flags & _FOLL_FORCE or not vf & VM.VM_MAYREAD:
            return -errno.EFAULT
    return 0


def _forced_cow(pgdat: PgData, vma: VmArea) -> bool:
    """``should_force_cow_break()`` of the v5.8 workaround (profile switch GUP_FORCED_COW).

    SIMPLIFIED: applied only to VMAs that are writable now, not the FOLL_FORCE/VM_MAYWRITE
    corner of read-only private mappings.
    """
    return pgdat.cfg.GUP_FORCED_COW and vma.is_cow_mapping() and bool(vma.vm_flags & VM.VM_WRITE)


def _take_ok(
    pgdat: PgData, vma: VmArea, s0: int, s1: int, gup_flags: int, fast: bool
) -> np.ndarray:
    """Which slots of ``[s0, s1)`` may be taken as they are (no fault needed).

    GUP-fast refuses special PTEs (the zero page) and leaves them to the slow path, which
    takes them through ``follow_page_pte``'s zero-pfn case; both refuse a read-only PTE for
    FOLL_WRITE, except that FOLL_FORCE may write through a read-only PTE of a private
    mapping once a COW gave it a dirty exclusive anon page (``can_follow_write_pte``);
    [6.18] a read-only pin refuses a possibly-shared anon page (``gup_must_unshare``), and
    a read-only FOLL_LONGTERM pin in a COW mapping refuses anything but an exclusive anon
    page (v6.2).
    """
    fl = vma.pt_flags[s0:s1]
    write = gup_flags & _FOLL_WRITE
    need = PTE_PRESENT
    if write:
        need = need | PTE_RW
    ok = (fl & need) == need
    if fast:
        ok &= ((fl & PTE_SPECIAL) == 0) | ((fl & PTE_PMD) != 0)
    cfg = pgdat.cfg
    force_write = write and gup_flags & _FOLL_FORCE and not vma.vm_flags & _VM_WRITE
    unshare = cfg.ANON_EXCLUSIVE and gup_flags & _FOLL_PIN and not write
    if force_write or unshare:
        pfns = vma.pt_pfn[s0:s1]
        pf = pgdat.pages.flags.take(np.maximum(pfns, 0))
        anon = (pf & _PG_ANON) != 0
        excl = anon & ((pf & _PG_ANON_EXCLUSIVE) != 0)
        if force_write:
            dirty = (fl & PTE_DIRTY) != 0
            ok |= ((fl & PTE_PRESENT) != 0) & excl & dirty
        if unshare:
            if (
                cfg.GUP_LONGTERM_RO_UNSHARE
                and gup_flags & _FOLL_LONGTERM
                and vma.is_cow_mapping()
            ):
                ok &= excl
            else:
                ok &= ~(anon & ~excl) | (pfns == ZERO_PFN)
    return ok


# --- GUP-fast -------------------------------------------------------------------------------
def _gup_fast(
    mm: MmStruct, start: int, nr_pages: int, gup_flags: int, pages: np.ndarray,
    holder: object, site: str,
) -> int:
    """``gup_fast()``: take present, permitted pages without faulting; stop at the first
    entry that needs the slow path. Return the number taken."""
    pgdat = mm.pgdat
    got = 0
    addr = start
    if pgdat.cfg.GUP_FORCED_COW:
        # Linux commit 17839856fd58 (v5.8): GUP-fast only ever takes writable PTEs; a read
        # GUP of a COW-shared page falls to the slow path, which breaks COW.
        gup_flags |= _FOLL_WRITE
    write = gup_flags & _FOLL_WRITE
    while got < nr_pages:
        vma = mm.vma_lookup(addr)
        if vma is None:
            break
        s0 = (addr - vma.vm_start) >> PAGE_SHIFT
        n = min(nr_pages - got, ((vma.vm_end - vma.vm_start) >> PAGE_SHIFT) - s0)
        s1 = s0 + n
        fl = vma.pt_flags[s0:s1]
        if fl.item(fl.argmin()) >= (_PTE_FAST_WRITE if write else _PTE_FAST_READ):
            # Distinct small exclusive anon pages: one scatter for the whole run.
            pfns = vma.pt_pfn[s0:s1]
            k = try_grab_unique_small(pgdat, pfns, gup_flags, holder, site)
            pages[got : got + k] = pfns[:k]
            got += k
            if k < n:
                break
            addr += n << PAGE_SHIFT
            continue
        ok = _take_ok(pgdat, vma, s0, s1, gup_flags, fast=True)
        k = n if all_set(ok) else int(ok.argmin())
        if k:
            pfns = vma.pt_pfn[s0 : s0 + k]
            k = try_grab_pages(pgdat, pfns, gup_flags, holder, site)
            pages[got : got + k] = pfns[:k]
            got += k
        if k < n:
            break
        addr += n << PAGE_SHIFT
    return got


# --- slow path ------------------------------------------------------------------------------
def __get_user_pages(
    mm: MmStruct, start: int, nr_pages: int, gup_flags: int, pages: np.ndarray,
    holder: object, site: str,
) -> int:
    """``__get_user_pages()``: walk VMAs, fault pages in, grab them.

    Return: pages taken (may be fewer than asked), or -errno (EFAULT, ENOMEM) if none.
    """
    pgdat = mm.pgdat
    if nr_pages == 0:
        return 0
    i = 0
    addr = start
    err = 0
    while i < nr_pages:
        vma = mm.vma_lookup(addr)
        if vma is None:
            err = -errno.EFAULT
            break
        err = _check_vma_flags(vma, gup_flags)
        if err:
            break
        eff = gup_flags | (_FOLL_WRITE if _forced_cow(pgdat, vma) else 0)
        s0 = (addr - vma.vm_start) >> PAGE_SHIFT
        s1 = s0 + min(nr_pages - i, vma.nr_pages - s0)
        last_fault, faults = -1, 0
        while s0 < s1:
            ok = _take_ok(pgdat, vma, s0, s1, eff, fast=False)
            k = (s1 - s0) if ok.all() else int(np.argmin(ok))
            if k:
                pfns = vma.pt_pfn[s0 : s0 + k]
                got = try_grab_pages(pgdat, pfns, gup_flags, holder, site)
                pages[i : i + got] = pfns[:got]
                i += got
                s0 += got
                addr += got << PAGE_SHIFT
                if got < k:
                    return i if i else -errno.ENOMEM
                continue
            # faultin_page(): write fault for FOLL_WRITE, else unshare or read fault.
            fflags = 0
            if eff & _FOLL_WRITE:
                fflags = FAULT_FLAG.FAULT_FLAG_WRITE
            elif vma.pt_flags[s0] & PTE_PRESENT:
                fflags = FAULT_FLAG.FAULT_FLAG_UNSHARE
            if gup_flags & _FOLL_NOFAULT:
                return i if i else -errno.EFAULT
            # A slot may need a read fault and then an unshare fault; more means no progress.
            faults = faults + 1 if last_fault == s0 else 1
            if faults > 3:
                pgdat.events.bug(site, f"fault at {addr:#x} made no progress")
                return i if i else -errno.EFAULT
            last_fault = s0
            ret = handle_mm_fault(vma, addr, fflags)
            if ret:
                err = -errno.ENOMEM if ret & 0x1 else -errno.EFAULT
                return i if i else err
    return i if i else err


def _gup_fast_fallback(
    mm: MmStruct, start: int, nr_pages: int, gup_flags: int, pages: np.ndarray,
    holder: object, site: str,
) -> int:
    """``internal_get_user_pages_fast()`` [5.10] / ``gup_fast_fallback()`` [6.x]."""
    pgdat = mm.pgdat
    allowed = _FAST_ALLOWED_6X if pgdat.cfg.GUP_ARGS_6X else _FAST_ALLOWED_59
    if gup_flags & ~int(allowed):
        pgdat.events.warn_once(site, f"unsupported gup_flags {gup_flags:#x}")
        return -errno.EINVAL
    if gup_flags & _FOLL_PIN:
        mm.has_pinned = True
    lo, end = _fast_range(pgdat, start, nr_pages)
    if lo < 0:
        return lo
    if end == 0 and lo == 0 and not pgdat.cfg.GUP_ARGS_6X:
        return 0
    nr = (end - lo) >> PAGE_SHIFT
    if nr == 0:
        return 0
    if len(pages) < nr:
        raise ValueError(f"{site}: pages array holds {len(pages)} entries, {nr} needed")
    got = _gup_fast(mm, lo, nr, gup_flags, pages, holder, site)
    if got == nr or gup_flags & _FOLL_FAST_ONLY:
        return got
    rest = __get_user_pages(
        mm, lo + (got << PAGE_SHIFT), nr - got, gup_flags, pages[got:], holder, site
    )
    if rest < 0:
        return got if got else rest
    return got + rest


def get_user_pages_fast(
    mm: MmStruct, start: int, nr_pages: int, gup_flags: int, pages: np.ndarray,
    *, holder: object = None,
) -> int:
    """``get_user_pages_fast()``: take a plain reference (FOLL_GET) on each page.

    Context: may fault pages in (the slow path sleeps on the mmap lock).
    Return: number of pages referenced, in address order from ``start & PAGE_MASK``; -errno
    only if none (-EINVAL for FOLL_PIN in ``gup_flags``, -EFAULT for an unmapped or
    forbidden first page).
    """
    k = _gup_fast_shortcuts(mm, start, nr_pages, gup_flags, pages, holder, False)
    if k >= 0:
        return k
    if not _valid_gup_args(mm.pgdat, gup_flags, _FOLL_GET, "get_user_pages_fast"):
        return -errno.EINVAL
    return _gup_fast_fallback(
        mm, start, nr_pages, gup_flags | _FOLL_GET, pages, holder, "get_user_pages_fast"
    )


def pin_user_pages_fast(
    mm: MmStruct, start: int, nr_pages: int, gup_flags: int, pages: np.ndarray,
    *, holder: object = None,
) -> int:
    """``pin_user_pages_fast()``: pin (FOLL_PIN) each page; release with unpin_user_page().

    Context: may fault pages in. Sets ``mm->has_pinned``.
    Return: number of pages pinned, in address order; -errno only if none: -EINVAL if
    FOLL_GET is passed (WARN), -EFAULT for an unmapped, PROT_NONE or (for FOLL_WRITE)
    read-only first page, and for a range beyond TASK_SIZE; [6.18] -EOVERFLOW when the range
    wraps. A zero or negative ``nr_pages`` returns 0 [5.9].
    """
    k = _gup_fast_shortcuts(mm, start, nr_pages, gup_flags, pages, holder, True)
    if k >= 0:
        return k
    if not _valid_gup_args(mm.pgdat, gup_flags, _FOLL_PIN, "pin_user_pages_fast"):
        return -errno.EINVAL
    return _gup_fast_fallback(
        mm, start, nr_pages, gup_flags | _FOLL_PIN, pages, holder, "pin_user_pages_fast"
    )


def _gup_slow(
    mm: MmStruct, start: int, nr_pages: int, gup_flags: int, pages: np.ndarray,
    holder: object, site: str,
) -> int:
    pgdat = mm.pgdat
    if gup_flags & _FOLL_PIN:
        mm.has_pinned = True
    if nr_pages < 0:
        # nr_pages is unsigned long here: a negative count walks on until something fails.
        nr_pages &= _U64
    start &= PAGE_MASK & _U64
    if nr_pages > len(pages):
        avail = len(pages)
        ret = __get_user_pages(mm, start, avail, gup_flags, pages, holder, site)
        if ret == avail:
            pgdat.events.bug(site, "GUP would write past the end of the pages array")
        return ret
    return __get_user_pages(mm, start, nr_pages, gup_flags, pages, holder, site)


def get_user_pages(
    mm: MmStruct, start: int, nr_pages: int, gup_flags: int, pages: np.ndarray,
    *, holder: object = None,
) -> int:
    """``get_user_pages()``: the slow path only (mmap lock held), FOLL_GET.

    Return: as :func:`get_user_pages_fast`.
    """
    if not _valid_gup_args(mm.pgdat, gup_flags, _FOLL_GET, "get_user_pages"):
        return -errno.EINVAL
    return _gup_slow(mm, start, nr_pages, gup_flags | _FOLL_GET, pages, holder,
                     "get_user_pages")


def pin_user_pages(
    mm: MmStruct, start: int, nr_pages: int, gup_flags: int, pages: np.ndarray,
    *, holder: object = None,
) -> int:
    """``pin_user_pages()``: the slow path only (mmap lock held), FOLL_PIN.

    Return: pages pinned or -errno; with FOLL_GET in ``gup_flags``: -EINVAL [5.9], 0 [6.18]
    (``is_valid_gup_args`` fails and ``pin_user_pages`` returns 0).
    """
    if not _valid_gup_args(mm.pgdat, gup_flags, _FOLL_PIN, "pin_user_pages"):
        return 0 if mm.pgdat.cfg.GUP_ARGS_6X else -errno.EINVAL
    return _gup_slow(mm, start, nr_pages, gup_flags | _FOLL_PIN, pages, holder,
                     "pin_user_pages")


# --- release --------------------------------------------------------------------------------
def unpin_user_page(pgdat: PgData, page: int, *, holder: object = None) -> None:
    """``unpin_user_page()``: release one FOLL_PIN taken by pin_user_pages*() or pin_page()."""
    gup_put_pages(pgdat, np.array([page], np.int64), _FOLL_PIN, holder, "unpin_user_page")


def unpin_user_pages(
    pgdat: PgData, pages: np.ndarray, npages: int, *, holder: object = None
) -> None:
    """``unpin_user_pages()``: unpin ``pages[:npages]``.

    A negative ``npages`` (an errno passed by mistake) WARNs and does nothing. NULL entries
    are skipped [6.x]; [5.9] would dereference them (BUG event).
    """
    if npages < 0:
        pgdat.events.warn("unpin_user_pages", f"npages is an error value ({npages})")
        return
    gup_put_pages(pgdat, pages if npages == len(pages) else pages[:npages], _FOLL_PIN, holder,
                  "unpin_user_pages")


def unpin_user_pages_dirty_lock(
    pgdat: PgData, pages: np.ndarray, npages: int, make_dirty: bool,
    *, holder: object = None,
) -> None:
    """``unpin_user_pages_dirty_lock()``: optionally dirty, then unpin, each page.

    With ``make_dirty``, a folio not already dirty is marked dirty under its lock
    (``set_page_dirty_lock``) exactly once; one already dirty is left alone (its races with
    ``clear_page_dirty_for_io`` are benign, as the kernel's comment explains).
    """
    if not make_dirty:
        unpin_user_pages(pgdat, pages, npages, holder=holder)
        return
    if npages < 0:
        # No IS_ERR_VALUE check on this path: (unsigned long)npages walks off the array.
        pgdat.events.bug("unpin_user_pages_dirty_lock", f"npages {npages} walks off pages[]")
        return
    arr = pages[:npages]
    arr = arr[arr >= 0]
    p = pgdat.pages
    for head in p.head.take(arr).tolist():
        if not int(p.flags[head]) & PG.PG_dirty:
            set_folio_dirty_lock(pgdat, head)
    gup_put_pages(pgdat, arr, _FOLL_PIN, holder, "unpin_user_pages_dirty_lock")


def pin_page(pgdat: PgData, page: int, *, holder: object = None) -> None:
    """``pin_page()`` — [PATCH v3 1/3] "mm/gup: introduce pin_page()" (5.9-pin only).

    The FOLL_PIN drop-in for get_page(): the caller already holds a reference; the page may be
    any page, kernel-owned included (in Direct I/O it is mostly the zero page). Pins the head
    (1024 bias or exact pincount), counts ``nr_foll_pin_acquired``, never fails, pins the zero
    page too. Release with unpin_user_page().
    Context: refcount <= 0 is a BUG (VM_BUG_ON_PAGE in the patch).
    """
    if not pgdat.cfg.PIN_PAGE:
        raise RuntimeError(f"pin_page() does not exist in profile {pgdat.cfg.name}")
    p = pgdat.pages
    head = int(p.head[page])
    if int(p.refcount[head]) <= 0:
        pgdat.events.bug("pin_page", f"pin_page on a page with refcount <= 0: {p.describe(page)}")
    unit = int(p.pin_unit[head])
    page_ref_add(pgdat, head, unit)
    if unit == 1:
        p.pincount[head] += 1
    pgdat.vmstat.nr_foll_pin_acquired += 1
    if pgdat.hooks.active:
        pgdat.hooks.acquire("pin", np.array([page], np.int64), holder, "pin_page")


def folio_add_pin(pgdat: PgData, folio: int, *, holder: object = None) -> None:
    """``folio_add_pin()`` — Linux commit 1101fb8f89e5 (v6.5): one more pin on a folio the
    caller has already pinned.

    The zero folio is ignored. A large folio gets refcount +1 and pincount +1 (WARN if it was
    not pinned); a small one +1024 (WARN if refcount < 1024). ``nr_foll_pin_acquired`` is
    *not* incremented, though the matching unpin increments ``nr_foll_pin_released``.
    """
    if not pgdat.cfg.FOLIO_ADD_PIN:
        raise RuntimeError(f"folio_add_pin() does not exist in profile {pgdat.cfg.name}")
    p = pgdat.pages
    folio = int(p.head[folio])
    if folio == ZERO_PFN:
        return
    if int(p.pin_unit[folio]) == 1:
        if int(p.pincount[folio]) < 1:
            pgdat.events.warn_once("folio_add_pin", "folio_add_pin on an unpinned large folio")
        page_ref_add(pgdat, folio, 1)
        p.pincount[folio] += 1
    else:
        if int(p.refcount[folio]) < 1024:
            pgdat.events.warn_once("folio_add_pin", "folio_add_pin on an unpinned small folio")
        page_ref_add(pgdat, folio, 1024)
    if pgdat.hooks.active:
        pgdat.hooks.acquire("pin", np.array([folio], np.int64), holder, "folio_add_pin")

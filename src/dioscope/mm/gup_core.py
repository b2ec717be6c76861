"""Recording and dropping references and pins on page arrays (``mm/gup.c``).

The vectorized heart of GUP: :func:`try_grab_pages` is ``try_grab_folio()`` applied to each
entry of a page array in order, and :func:`gup_put_pages` is ``gup_put_folio()`` per entry.
One entry is one base page; several entries may share a folio, and the same pfn may appear
twice (each entry counts, as ``np.add.at`` guarantees).

Pin accounting per folio, per profile (spec §2.3, §2.4):

* small folio (and order-1 before Linux commit 5232c63f46fd, v5.18): refcount += 1024;
* a folio with an exact pincount: refcount += 1 and pincount += 1;
* [6.18] the shared zero page: nothing at all, not even vmstat (Linux commit c8070b787519
  ("mm: Don't pin ZERO_PAGE in pin_user_pages()") (v6.5)); the huge zero folio is pinned.
* vmstat ``nr_foll_pin_acquired`` / ``_released`` += 1 per entry that was pinned/unpinned.

``pgdat.pages.pin_unit`` caches the per-folio amount so the whole batch is one gather and one
scatter.
"""

from __future__ import annotations

import enum
from typing import Final

import numpy as np

from ..kernel.npfast import any_set
from .page import PG
from .page_alloc import PgData
from .page_ref import free_zeroed, put_pages

__all__ = [
    "FOLL",
    "INT32_MAX",
    "folio_maybe_dma_pinned",
    "free_unpinned",
    "gup_put_pages",
    "page_maybe_dma_pinned",
    "try_grab_folio",
    "try_grab_pages",
    "try_grab_unique_small",
    "unpin_user_folio",
]

INT32_MAX: Final = (1 << 31) - 1


class FOLL(enum.IntFlag):
    """GUP flags, with their v5.10 values (``include/linux/mm.h``)."""

    FOLL_WRITE = 0x01
    FOLL_TOUCH = 0x02
    FOLL_GET = 0x04
    FOLL_DUMP = 0x08
    FOLL_FORCE = 0x10
    FOLL_NOWAIT = 0x20
    FOLL_POPULATE = 0x40
    FOLL_HWPOISON = 0x100
    FOLL_REMOTE = 0x2000
    FOLL_ANON = 0x8000
    FOLL_LONGTERM = 0x10000
    FOLL_PIN = 0x40000
    FOLL_FAST_ONLY = 0x80000
    FOLL_NOFAULT = 0x100000  # [v5.17+]


def page_maybe_dma_pinned(pgdat: PgData, page: int) -> bool:
    """``page_maybe_dma_pinned()``: might this page be pinned for DMA?

    Exact for a folio with a pincount; otherwise "refcount >= 1024", compared unsigned so an
    overflowed (negative) refcount still reads as pinned. False positives: a small page with
    1024 or more plain references. No false negatives.
    """
    return folio_maybe_dma_pinned(pgdat, int(pgdat.pages.head[page]))


def folio_maybe_dma_pinned(pgdat: PgData, folio: int) -> bool:
    """``folio_maybe_dma_pinned()`` on the folio headed by ``folio``."""
    p = pgdat.pages
    if int(p.pin_unit[folio]) == 1:
        return int(p.pincount[folio]) > 0
    return (int(p.refcount[folio]) & 0xFFFFFFFF) >= 1024


def maybe_dma_pinned_mask(pgdat: PgData, pfns: np.ndarray) -> np.ndarray:
    """Vectorized :func:`page_maybe_dma_pinned` over a pfn array."""
    p = pgdat.pages
    heads = p.head.take(pfns)
    exact = p.pin_unit.take(heads) == 1
    by_ref = p.refcount.take(heads).astype(np.int64) & 0xFFFFFFFF >= 1024
    return np.where(exact, p.pincount.take(heads) > 0, by_ref)


def _first_failing(pre: np.ndarray, heads: np.ndarray, inc: np.ndarray) -> int:
    """Index of the first entry whose head refcount is <= 0 (or has wrapped) when its turn
    comes, applying the entries in order; len(heads) if none. Exact with duplicates."""
    order = np.argsort(heads, kind="stable")
    h = heads[order]
    c = inc[order].astype(np.int64)
    cum = np.cumsum(c) - c  # exclusive prefix sum over the sorted entries
    starts = np.r_[True, h[1:] != h[:-1]]
    group_base = np.maximum.accumulate(np.where(starts, np.arange(len(h)), 0))
    before = pre[order].astype(np.int64) + cum - cum[group_base]
    bad = (before <= 0) | (before > INT32_MAX)
    if not bad.any():
        return len(heads)
    return int(order[bad].min())


_FOLL_PIN: Final = int(FOLL.FOLL_PIN)


def _wrap32(v: int) -> int:
    """``v`` as an int32 ``atomic_t`` holds it (two's complement wrap)."""
    return ((v + (1 << 31)) & 0xFFFFFFFF) - (1 << 31)


def try_grab_folio(pgdat: PgData, head: int, pages: np.ndarray, pin: bool, holder: object,
                site: str) -> bool:
    """``try_grab_folio(folio, refs, flags)`` for the ``len(pages)`` entries of ``pages``,
    all pages of the folio headed by ``head``: one scalar update (refcount, pincount for a
    folio that has one, the pin counter, the hooks).

    Return: False, touching nothing, if the refcount is <= 0 or would wrap past INT32_MAX
    (the caller's exact walk then decides what succeeds and what WARNs).
    """
    p = pgdat.pages
    n = len(pages)
    unit = p.pin_unit.item(head) if pin else 1
    before = p.refcount.item(head)
    if before <= 0 or before + unit * n > INT32_MAX:
        return False
    p.refcount[head] = before + unit * n
    if pin:
        if unit == 1:
            p.pincount[head] += n
        if not unit:
            return True  # a pin-exempt zero page: nothing counted, nothing reported
        pgdat.vmstat.nr_foll_pin_acquired += n
    if pgdat.hooks.active:
        pgdat.hooks.acquire("pin" if pin else "get", pages.copy(), holder, site)
    return True


def _put_folio_pins(pgdat: PgData, head: int, unit: int, n: int, pages: np.ndarray | int,
                    holder: object, site: str,
                    zeroed: list[tuple[int, int]] | None = None) -> None:
    """``gup_put_folio(folio, n, FOLL_PIN)`` (``unpin_user_folio``) for ``n`` pages of the
    folio headed by ``head`` whose pins weigh ``unit`` (not 0): one scalar update; the
    refcount wraps as an ``atomic_t`` does; freed at zero. ``pages``: those pages, as an
    array or as the first of ``n`` consecutive ones (only the hooks look at them).
    ``zeroed``: where to append ``(head, refcount)`` instead of freeing now, for a caller
    releasing several folios that frees them together (in pfn order, as
    :func:`~dioscope.mm.page_ref.free_zeroed` does for a batch)."""
    p = pgdat.pages
    if pgdat.hooks.active:
        if isinstance(pages, int):
            pages = np.arange(pages, pages + n, dtype=np.int64)
        pgdat.hooks.release("pin", pages, holder, site)
    pgdat.vmstat.nr_foll_pin_released += n
    if unit == 1:
        p.pincount[head] -= n
    post = _wrap32(p.refcount.item(head) - unit * n)
    p.refcount[head] = post
    if post <= 0:
        if zeroed is not None:
            zeroed.append((head, post))
        else:
            free_zeroed(pgdat, np.array([head], np.int64), np.array([post], np.int32), site)


def unpin_user_folio(pgdat: PgData, head: int, n: int, first: int, holder: object,
                     site: str, zeroed: list[tuple[int, int]] | None = None) -> bool:
    """[6.12+] ``unpin_user_folio(folio, npages)`` (mm/gup.c, added with "mm: release number
    of pages of a folio"; what 6.18's ``__bio_release_pages`` calls per folio): drop the pins
    of the ``n`` consecutive pages from ``first``, all in the folio headed by ``head``, with
    one update. ``zeroed``: as for :func:`_put_folio_pins`.

    Return: False, touching nothing, for a pin-exempt zero page (the caller takes the
    page-by-page path, which checks it).
    """
    unit = pgdat.pages.pin_unit.item(head)
    if not unit:
        return False
    _put_folio_pins(pgdat, head, unit, n, first, holder, site, zeroed)
    return True


def free_unpinned(pgdat: PgData, zeroed: list[tuple[int, int]], site: str) -> None:
    """Free the folios :func:`unpin_user_folio` left in ``zeroed`` at refcount zero, all at
    once, in the order a batch release frees them (pfn order)."""
    if zeroed:
        heads, post = zip(*zeroed, strict=True)
        free_zeroed(pgdat, np.array(heads, np.int64), np.array(post, np.int32), site)


def try_grab_pages(
    pgdat: PgData, pages: np.ndarray, flags: int, holder: object, site: str
) -> int:
    """``try_grab_folio(folio_of(page), 1, flags)`` for each entry of ``pages``, in order.

    Context: the pages are mapped (the caller found them in a page table).
    Return: the number of leading entries grabbed. An entry fails when its folio's refcount is
    <= 0 at its turn (freed, or wrapped past INT32_MAX by earlier pins): WARN_ON_ONCE, and the
    caller stops there (GUP returns the count so far).
    """
    n = len(pages)
    if not n:
        return 0
    p = pgdat.pages
    heads = p.head.take(pages)
    pin = bool(flags & _FOLL_PIN)
    if heads[heads.argmin()] == heads[heads.argmax()] and try_grab_folio(
            pgdat, int(heads[0]), pages, pin, holder, site):
        return n  # every entry in one folio (pages of one THP, say)
    pre = p.refcount.take(heads)
    inc = p.pin_unit.take(heads) if pin else np.ones(n, np.int32)
    if pre.min() <= 0 or int(pre.max()) + int(inc.sum(dtype=np.int64)) > INT32_MAX:
        k = _first_failing(pre, heads, inc)
        if k < n:
            pgdat.events.warn_once(
                "try_grab_folio", f"refcount <= 0 on folio {int(heads[k]):#x}"
            )
            if k == 0:
                return 0
            pages, heads, inc = pages[:k], heads[:k], inc[:k]
            n = k
    np.add.at(p.refcount, heads, inc)
    if pin:
        large = inc == 1
        if large.any():
            np.add.at(p.pincount, heads[large], np.int32(1))
        counted = inc != 0
        nr = int(np.count_nonzero(counted))
        pgdat.vmstat.nr_foll_pin_acquired += nr
        if pgdat.hooks.active and nr:
            pgdat.hooks.acquire("pin", pages if nr == n else pages[counted], holder, site)
    elif pgdat.hooks.active:
        pgdat.hooks.acquire("get", pages, holder, site)
    return n


_BIAS: Final = np.full(512, 1024, np.int32)
_ONES: Final = np.ones(512, np.int32)


def try_grab_unique_small(
    pgdat: PgData, pfns: np.ndarray, flags: int, holder: object, site: str
) -> int:
    """:func:`try_grab_pages` for pages known to be distinct small exclusive anon pages.

    The GUP-fast common case (PTE_FASTPIN): no compound heads, no duplicates, no zero page,
    so the whole batch is one gather, add and scatter (four numpy calls; testing for a frame
    range to update a slice instead cost more than it saved). Falls back to the exact path
    near overflow (a refcount <= 0 or wrapping past INT32_MAX).
    Return: entries grabbed, in order.
    """
    rc = pgdat.pages.refcount
    pin = flags & _FOLL_PIN
    n = len(pfns)
    inc = 1024 if pin else 1
    if n == 1:  # one page, its own head: scalar arithmetic, no array temporaries
        if try_grab_folio(pgdat, int(pfns[0]), pfns, bool(pin), holder, site):
            return 1
        return try_grab_pages(pgdat, pfns, flags, holder, site)
    # Distinct pfns: a plain fancy-index update is exact (no entry repeats). Same-dtype
    # array operands: numpy's scalar casting costs more than the add itself.
    post = rc.take(pfns)
    post += (_BIAS if pin else _ONES)[:n] if n <= 512 else np.int32(inc)
    if post.item(post.argmin()) <= inc:  # was <= 0, or wrapped past INT32_MAX
        return try_grab_pages(pgdat, pfns, flags, holder, site)
    rc[pfns] = post
    if pin:
        pgdat.vmstat.nr_foll_pin_acquired += n
    if pgdat.hooks.active:
        pgdat.hooks.acquire("pin" if pin else "get", pfns.copy(), holder, site)
    return n


def gup_put_pages(
    pgdat: PgData, pages: np.ndarray, flags: int, holder: object, site: str
) -> None:
    """``gup_put_folio(folio_of(page), 1, flags)`` for each entry (NULL entries skipped).

    FOLL_PIN drops what a pin added (1024, or 1 plus one pincount, or nothing for an exempt
    zero page) and counts ``nr_foll_pin_released``; FOLL_GET drops one reference. A folio
    whose refcount reaches zero is freed.
    """
    n = len(pages)
    if not n:
        return
    p = pgdat.pages
    if n == 1 and flags & _FOLL_PIN:
        page = pages.item(0)
        # One page: scalar arithmetic on its folio (the zero page declines).
        if page >= 0 and unpin_user_folio(pgdat, p.head.item(page), 1, page, holder, site):
            return
    if flags & _FOLL_PIN:
        small = p.small.take(pages)
        if small.item(small.argmin()):
            # Every entry is an order-0 page (no NULL, no zero page, no compound): each is
            # its own head and takes the 1024 bias.
            if pgdat.hooks.active:
                pgdat.hooks.release("pin", pages, holder, site)
            pgdat.vmstat.nr_foll_pin_released += n
            rc = p.refcount
            np.subtract.at(rc, pages, _BIAS[:n] if n <= 512 else _BIAS[0])
            post = rc.take(pages)
            if post.item(post.argmin()) <= 0:
                free_zeroed(pgdat, pages, post, site)
            return
    if pages[pages.argmin()] < 0:
        if not pgdat.cfg.GUP_ARGS_6X:  # [5.9] no NULL check: compound_head(NULL) oopses
            pgdat.events.bug(site, "NULL page pointer in pages[]")
        pages = pages[pages >= 0]
        n = len(pages)
        if not n:
            return
    heads = p.head.take(pages)
    if (flags & _FOLL_PIN and heads[heads.argmin()] == heads[heads.argmax()]
            and p.pin_unit[heads[0]]):
        # Every entry in one folio (pages of one THP, say). (A pin-exempt zero page takes
        # the general path, which checks it all the same.)
        head = int(heads[0])
        _put_folio_pins(pgdat, head, int(p.pin_unit[head]), n, pages, holder, site)
        return
    if flags & FOLL.FOLL_PIN:
        dec = p.pin_unit.take(heads)
        counted = dec != 0
        nr = int(np.count_nonzero(counted))
        if pgdat.hooks.active and nr:
            pgdat.hooks.release("pin", pages if nr == n else pages[counted], holder, site)
        pgdat.vmstat.nr_foll_pin_released += nr
        large = dec == 1
        if any_set(large):
            np.subtract.at(p.pincount, heads[large], np.int32(1))
        np.subtract.at(p.refcount, heads, dec)
    else:
        put_pages(pgdat, pages, holder=holder, site=site)
        return
    post = p.refcount.take(heads)
    if post[post.argmin()] <= 0:
        free_zeroed(pgdat, heads, post, site)


def set_folio_dirty_lock(pgdat: PgData, folio: int) -> None:
    """``folio_mark_dirty_lock()`` / ``set_page_dirty_lock()``: lock, dirty, unlock.

    Locking keeps ``page->mapping`` stable against truncation while the mapping's dirtying
    method runs. The model marks PG_dirty on the head and reports a tracepoint.
    """
    p = pgdat.pages
    p.flags[folio] |= np.uint32(PG.PG_dirty)
    if pgdat.hooks.tracepoints:
        for tp in pgdat.hooks.tracepoints:
            tp("set_page_dirty_lock", {"pfn": folio})

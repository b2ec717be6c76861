"""Plain page references: ``get_page()`` / ``put_page()`` / ``folio_put()``.

Models ``include/linux/mm.h`` (get_page, put_page, folio_get, folio_put) and the freeing path
of ``mm/swap.c`` (``__folio_put``). A reference always lands on the folio head.

``put_page()`` on a page that holds a FOLL_PIN is a bug the kernel does not detect: it drops
one reference where an unpin would have dropped 1024 (or the exact pincount), so the page
stays "maybe DMA-pinned" forever. The model behaves the same; the sanitizer's release-kind
rule is what catches it.
"""

from __future__ import annotations

import numpy as np

from .page_alloc import PgData, free_pages, free_pages_bulk

__all__ = [
    "drop_refs",
    "folio_put_refs",
    "free_zeroed",
    "get_page",
    "page_count",
    "page_ref_add",
    "put_page",
    "put_pages",
]


def page_ref_add(pgdat: PgData, head: int, nr: int) -> None:
    """``page_ref_add()``: add ``nr`` (may be negative) to a folio's refcount, wrapping at 32
    bits as ``atomic_t`` does (a slice update, so numpy wraps silently)."""
    pgdat.pages.refcount[head : head + 1] += np.int32(nr)


def page_count(pgdat: PgData, page: int) -> int:
    """``page_count()``: the refcount of the page's folio."""
    return int(pgdat.pages.refcount[pgdat.pages.head[page]])


def get_page(pgdat: PgData, page: int, *, holder: object = None, site: str = "get_page") -> None:
    """``get_page()``: take one plain reference on the page's folio.

    Context: the caller already holds a reference (VM_BUG_ON if the count is <= 0; the model
    records a WARN and takes the reference anyway, as a non-debug kernel would).
    """
    p = pgdat.pages
    head = int(p.head[page])
    if int(p.refcount[head]) <= 0:
        pgdat.events.warn_once("get_page", f"get_page on a page with refcount <= 0: pfn {page:#x}")
    page_ref_add(pgdat, head, 1)
    if pgdat.hooks.active:
        pgdat.hooks.acquire("get", np.array([page], np.int64), holder, site)


def folio_put_refs(pgdat: PgData, head: int, refs: int, site: str = "folio_put_refs") -> None:
    """Drop ``refs`` references from the folio headed by ``head``; free it at zero."""
    page_ref_add(pgdat, head, -refs)
    if int(pgdat.pages.refcount[head]) == 0:
        free_pages(pgdat, head, site)


def put_page(pgdat: PgData, page: int, *, holder: object = None, site: str = "put_page") -> None:
    """``put_page()``: drop one plain reference; free the folio when it reaches zero."""
    if pgdat.hooks.active:
        pgdat.hooks.release("get", np.array([page], np.int64), holder, site)
    folio_put_refs(pgdat, int(pgdat.pages.head[page]), 1, site)


def put_pages(
    pgdat: PgData, pages: np.ndarray, *, holder: object = None, site: str = "put_page"
) -> None:
    """``put_page()`` on every entry of ``pages`` (NULL entries skipped), vectorized, for
    references taken with :func:`get_page` or FOLL_GET (reported to the hooks).

    The same folio may appear many times; each entry drops one reference.
    """
    pages = pages[pages >= 0]
    if not len(pages):
        return
    if pgdat.hooks.active:
        pgdat.hooks.release("get", pages, holder, site)
    drop_refs(pgdat, pages, site)


def drop_refs(pgdat: PgData, pages: np.ndarray, site: str) -> None:
    """Drop one reference per entry for references the hooks never saw taken: those a page
    table, the page cache or a pipe buffer holds by owning the page. Frees at zero."""
    if not len(pages):
        return
    p = pgdat.pages
    heads = p.head.take(pages)
    np.subtract.at(p.refcount, heads, np.int32(1))
    after = p.refcount.take(heads)
    if after[after.argmin()] <= 0:
        free_zeroed(pgdat, heads, after, site)


def free_zeroed(pgdat: PgData, heads: np.ndarray, post: np.ndarray, site: str) -> None:
    """Free each distinct folio in ``heads`` whose refcount (``post``) reached exactly zero."""
    p = pgdat.pages
    cand = np.unique(heads[post == 0])
    cand = cand[p.refcount.take(cand) == 0]
    if len(cand) > 1 and not pgdat.hooks.active:  # observed frees stay in pfn order
        small = p.order.take(cand) == 0
        free_pages_bulk(pgdat, cand[small], site)
        cand = cand[~small]
    for h in cand.tolist():
        free_pages(pgdat, h, site)


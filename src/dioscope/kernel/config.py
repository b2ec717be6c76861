"""Kernel profiles: named, frozen sets of behaviour switches (like Kconfig).

Model code asks ``cfg.DIO_FOLL_PIN``, never a version number. Every switch names the kernel
commit or patch it stands for, in the fixed form of STYLE.md. Three profiles exist:

* ``5.9``     -- Linux 5.9 (final), before the series: Direct I/O takes FOLL_GET references.
* ``5.9-pin`` -- 5.9 plus "[PATCH v3 0/3] bio: Direct IO: convert to pin_user_pages_fast()"
  (John Hubbard, Aug 2020): the system dioscope implements, and the default.
* ``6.18``    -- current upstream, what the host runs.

A variant for an experiment is made with :meth:`Profile.derive`; it keeps its parent's name
with a ``+`` suffix so a report never passes a variant off as a real kernel.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

__all__ = [
    "DEFAULT_PROFILE",
    "PROFILES",
        "Profile",
    "get_profile",
    "switch_docs",
]


@dataclass(frozen=True)
class Profile:
    """One kernel's behaviour switches. Field docs cite the change each switch stands for."""

    name: str

    # --- mm/gup: pin accounting ------------------------------------------------------------
    FOLL_PIN_ACCOUNTING: bool = True
    """GUP_PIN_COUNTING_BIAS, exact pincount on large folios, nr_foll_pin_* vmstat.
    Linux commit 3faa52c03f44 ("mm/gup: track FOLL_PIN pages") and 1970dc6f5226
    ("mm/gup: /proc/vmstat: pin_user_pages (FOLL_PIN) reporting") (v5.7)."""

    PINCOUNT_ANY_LARGE_FOLIO: bool = False
    """Every large folio (order >= 1) keeps an exact pincount. False: only compound pages of
    order > 1 do (``hpage_pincount_available``, v5.7..v5.17) and an order-1 page falls back
    to the 1024 bias. Linux commit 5232c63f46fd ("mm: Make compound_pincount always
    available") (v5.18); on 32-bit 31a31da8a618 ("mm: move _pincount in folio to page[2] on
    32bit") (v6.15) restricted it to order > 1 again (``folio_has_pincount()``)."""

    ZERO_PAGE_NEVER_PINNED: bool = False
    """The shared 4 KiB zero page is returned unpinned by GUP and ignored by unpin; neither
    is counted in vmstat. The huge zero folio is *not* exempt. Linux commit c8070b787519
    ("mm: Don't pin ZERO_PAGE in pin_user_pages()") (v6.5)."""

    FOLIO_ADD_PIN: bool = False
    """``folio_add_pin()`` exists: duplicate an existing pin without touching vmstat.
    Linux commit 1101fb8f89e5 ("mm: Provide a function to get an additional pin on a page")
    (v6.5)."""

    PIN_PAGE: bool = False
    """The series' ``pin_page()``: FOLL_PIN analogue of get_page(), counted in vmstat, pins
    the zero page. [PATCH v3 1/3] "mm/gup: introduce pin_page()" (2020, never merged)."""

    # --- COW and fork ----------------------------------------------------------------------
    GUP_FORCED_COW: bool = False
    """Any GUP on a COW mapping is treated as a write (breaks COW). Linux commit 17839856fd58
    ("gup: document and work around 'COW can break either way' issue") (v5.8); removed by
    a308c71bf1e6 ("mm/gup: Remove enfornced COW mechanism") (v5.9). False in every shipped
    profile; derive a variant to model 5.9-rc1..rc3."""

    EARLY_COW_PINNED_AT_FORK: bool = True
    """fork() copies maybe-DMA-pinned anon pages of an mm that has pinned, instead of
    COW-sharing them. Linux commit 70e806e4e645 ("mm: Do early cow for pinned pages during
    fork() for ptes") (v5.9), with 008cfe4418b3 ("mm: Introduce mm_struct.has_pinned")."""

    ANON_EXCLUSIVE: bool = False
    """PG_anon_exclusive, and a read-only FOLL_PIN of a possibly shared anon page first
    unshares it (gup_must_unshare / FAULT_FLAG_UNSHARE). Linux commits 6c287605fd56
    ("mm: remember exclusively mapped anonymous pages with PG_anon_exclusive") and
    a7f226604170 ("mm/gup: trigger FAULT_FLAG_UNSHARE when R/O-pinning a possibly shared
    anonymous page") (v5.19)."""

    GUP_LONGTERM_RO_UNSHARE: bool = False
    """A read-only FOLL_LONGTERM pin in a private (COW) mapping unshares non-anonymous pages
    too (the zero page, page-cache pages) into exclusive anon copies. Linux commit
    84209e87c696 ("mm/gup: reliable R/O long-term pinning in COW mappings") (v6.2)."""

    THP_ON_HUGE_ZERO_WP: bool = False
    """A write fault on the huge zero PMD maps a freshly allocated THP instead of splitting
    the PMD and COWing one base page. Linux commit 1ced09e0331f ("mm: allocate THP on
    hugezeropage wp-fault") (v6.13); measured on the host (6.18): one fault, one anon THP."""

    # --- Direct I/O (used from the iov_iter/block issues on) -------------------------------
    DIO_FOLL_PIN: bool = False
    """Direct I/O acquires user pages with FOLL_PIN and releases them with unpin. The series
    (5.9-pin), and upstream Linux commit a7e689dd1c06 ("block: Convert bio_iov_iter_get_pages
    to use iov_iter_extract_pages") (v6.5)."""

    IOV_ITER_PIN_PAGES: bool = False
    """``iov_iter_pin_pages()`` / ``_alloc()``: [PATCH v3 2/3] "iov_iter: introduce
    iov_iter_pin_pages*() routines" (never merged)."""

    IOV_ITER_EXTRACT: bool = False
    """``iov_iter_extract_pages()`` + ``iov_iter_extract_will_pin()``. Linux commit
    7d58fe731028 ("iov_iter: Add a function to extract a page list from an iterator")
    (v6.3)."""

    ITER_PIPE: bool = True
    """ITER_PIPE exists (splice from an O_DIRECT file). Removed by Linux commit
    3fc40265ae2b ("iov_iter: Kill ITER_PIPE") (v6.5)."""

    ITER_UBUF: bool = False
    """ITER_UBUF for single user buffers. Linux commit fcb14cb1bdac ("new iov_iter flavour -
    ITER_UBUF") (v6.0)."""

    GUP_ARGS_6X: bool = False
    """Argument checking of ``is_valid_gup_args()`` / ``gup_fast_fallback()``: FOLL_LONGTERM
    needs FOLL_PIN; an address range that overflows gives -EOVERFLOW; the slow
    ``pin_user_pages()`` returns 0 (not -EINVAL) on bad flags. False: the v5.9 checks
    (``internal_get_user_pages_fast``: overflow or an empty range gives 0, then access_ok).
    Linux commits d64e2dbc33a1 ("mm/gup: simplify the external interface functions and
    consolidate invariants") (v6.3) for ``is_valid_gup_args()`` and 9883c7f84053 ("mm/gup:
    do not return 0 from pin_user_pages_fast() for bad args") (v6.5) for -EOVERFLOW."""

    DIO_MEM_ALIGN_DMA: bool = False
    """DIO user memory needs only the queue's dma_alignment, not the logical block size
    (``bdev_iter_is_aligned``). Linux commit b1a000d3b8ec ("block: relax direct io memory
    alignment") (v6.0)."""

    # --- filesystem ---------------------------------------------------------------------------
    STATX_DIOALIGN: bool = False
    """``statx()`` answers STATX_DIOALIGN (``stx_dio_mem_align``, ``stx_dio_offset_align``)
    for regular files of filesystems that support it (ext4: dma_alignment + 1 and the logical
    block size). Linux commits 825cf206ed51 ("statx: add direct I/O alignment information")
    and 8434ef1d8aaf ("ext4: support STATX_DIOALIGN") (v6.1)."""

    DIO_NOWAIT_READ_NEEDS_WRITEBACK: bool = False
    """An IOCB_NOWAIT Direct I/O read gives -EAGAIN only if a cached page of its range is
    dirty, locked or under writeback (``filemap_range_needs_writeback``); False: if any page
    of the range is cached (``filemap_range_has_page``). Linux commit 7a60d6d7b34e ("mm: use
    filemap_range_needs_writeback() for O_DIRECT reads") and its iomap twin (v5.14)."""

    EXT4_DIO_SHARED_OVERWRITE: bool = False
    """An O_DIRECT write that only overwrites allocated blocks inside i_size runs under the
    shared inode lock, so RWF_NOWAIT does not refuse it with -EAGAIN, even over unwritten
    (preallocated) blocks, Linux commit 240930fb7e6b ("ext4: dio take shared inode lock when
    overwriting preallocated blocks") (v6.3), and when not fs-block aligned over written
    blocks, Linux commit 310ee0902b8d ("ext4: allow concurrent unaligned dio overwrites")
    (v6.5). False: only fs-block-aligned overwrites of written blocks do; RWF_NOWAIT gives
    -EAGAIN for any other write."""

    # --- block layer -------------------------------------------------------------------------
    PLUG_MERGE_LAST_RQ: bool = False
    """A bio tries to merge only into the request most recently added to the task's plug.
    False: every plugged request of the queue, newest first. Linux commit db1a6ab38f10
    ("block: remove plug based merging") (v5.16)."""

    BIO_SPLIT_DMA_ALIGN_CHECK: bool = False
    """When a read/write bio is split for the queue limits, every (multi-page) bvec's offset
    and length must be multiples of ``dma_alignment + 1``, else the bio ends with
    BLK_STS_INVAL inside ``submit_bio`` — after its pages were pinned. A bio of one bvec that
    fits ``max_fast_segment_size`` skips the walk (``bio_may_need_split``). Linux commit
    fec2e705729d ("block: check for valid bio while splitting") (v6.18); measured on the
    host: docs/research-6.18-bio.md §3.5."""

    IOMAP_ITER_DIO: bool = False
    """``iomap_dio_rw`` walks the request with ``iomap_iter``: a read does not stop at i_size
    but zero-fills the holes past EOF up to the requested length, reverting the iterator to
    i_size only after the loop; False: the v5.9 ``iomap_apply`` loop stops at i_size.
    [PATCH] "iomap: switch iomap_dio_rw to use iomap_iter" (Christoph Hellwig, v5.15);
    measured on the host (docs/host-observations.md items 3, 11)."""

    DIO_READ_REQ_SYNC: bool = False
    """iomap Direct I/O read bios carry REQ_SYNC | REQ_IDLE like its writes (current
    ``iomap_dio_bio_iter`` starts ``bio_opf`` from REQ_SYNC | REQ_IDLE for both; the host's
    ``block_bio_queue`` shows ``RS``); False: a plain REQ_OP_READ (v5.9
    ``iomap_dio_bio_actor``). The commit that changed it is not identified yet."""

    TRACE_RQ_IOPRIO: bool = False
    """``block_rq_insert`` / ``_issue`` / ``_complete`` print the request's I/O priority
    (``be,0,4``) after ``sector + nr_sectors``. Linux commit aa6ff4eb7c10 ("block: Add
    ioprio to block_rq tracepoint") (2025); present on the 6.18 host."""

    def derive(self, **changes: Any) -> Profile:
        """Return a variant of this profile with some switches changed (for experiments)."""
        unknown = set(changes) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise ValueError(f"unknown switch(es): {', '.join(sorted(unknown))}")
        name = changes.pop("name", self.name + "+" + ",".join(sorted(changes)))
        return dataclasses.replace(self, name=name, **changes)

    def switches(self) -> dict[str, bool]:
        """All switches of this profile, by name."""
        return {
            f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "name"
        }

    @property
    def is_variant(self) -> bool:
        return "+" in self.name


PROFILE_5_9 = Profile(name="5.9")

PROFILE_5_9_PIN = Profile(
    name="5.9-pin",
    PIN_PAGE=True,
    DIO_FOLL_PIN=True,
    IOV_ITER_PIN_PAGES=True,
)

PROFILE_6_18 = Profile(
    name="6.18",
    PINCOUNT_ANY_LARGE_FOLIO=True,
    ZERO_PAGE_NEVER_PINNED=True,
    FOLIO_ADD_PIN=True,
    ANON_EXCLUSIVE=True,
    DIO_FOLL_PIN=True,
    IOV_ITER_EXTRACT=True,
    ITER_PIPE=False,
    ITER_UBUF=True,
    DIO_MEM_ALIGN_DMA=True,
    GUP_ARGS_6X=True,
    GUP_LONGTERM_RO_UNSHARE=True,
    THP_ON_HUGE_ZERO_WP=True,
    PLUG_MERGE_LAST_RQ=True,
    TRACE_RQ_IOPRIO=True,
    IOMAP_ITER_DIO=True,
    DIO_READ_REQ_SYNC=True,
    BIO_SPLIT_DMA_ALIGN_CHECK=True,
    STATX_DIOALIGN=True,
    DIO_NOWAIT_READ_NEEDS_WRITEBACK=True,
    EXT4_DIO_SHARED_OVERWRITE=True,
)

PROFILES: dict[str, Profile] = {p.name: p for p in (PROFILE_5_9, PROFILE_5_9_PIN, PROFILE_6_18)}
DEFAULT_PROFILE = PROFILE_5_9_PIN



def switch_docs() -> dict[str, str]:
    """Each switch's docstring (what it stands for, with its commit), read from this file's
    source (found next to the package's ``__init__.py``: this module may be compiled,
    ARCHITECTURE.md "Compiled hot path")."""
    import ast
    import itertools
    from pathlib import Path

    import dioscope

    source = (Path(dioscope.__file__).parent / "kernel" / "config.py").read_text()
    tree = ast.parse(source)
    cls = next(s for s in tree.body if isinstance(s, ast.ClassDef) and s.name == "Profile")
    docs: dict[str, str] = {}
    for stmt, nxt in itertools.pairwise(cls.body):
        if (
            isinstance(stmt, ast.AnnAssign)
            and isinstance(stmt.target, ast.Name)
            and isinstance(nxt, ast.Expr)
            and isinstance(nxt.value, ast.Constant)
            and isinstance(nxt.value.value, str)
        ):
            docs[stmt.target.id] = " ".join(nxt.value.value.split())
    return docs


def get_profile(profile: str | Profile | None) -> Profile:
    """Look a profile up by name (``None`` gives the default)."""
    if profile is None:
        return DEFAULT_PROFILE
    if isinstance(profile, Profile):
        return profile
    try:
        return PROFILES[profile]
    except KeyError:
        raise ValueError(
            f"unknown profile {profile!r}; known: {', '.join(PROFILES)}"
        ) from None

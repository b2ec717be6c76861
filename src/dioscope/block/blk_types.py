"""``struct bio``, ``struct bio_vec``, ``struct bvec_iter`` and their flags
(``include/linux/blk_types.h``, ``include/linux/bvec.h``).

The bvec array is stored as the kernel lays it out: ``bi_io_vec`` is an int64 array of shape
``(bi_max_vecs, 2)``, one row per 16-byte ``struct bio_vec`` = (``bv_page`` as a pfn,
``bv_len << 32 | bv_offset``). Two machine words per bvec is what lets
``__bio_iov_iter_get_pages`` [5.9] pack its page-pointer array into the unused tail of the
same memory (``PAGE_PTRS_PER_BVEC == 2``): :meth:`Bio.tail_words` exposes that memory as the
flat word array the kernel casts it to.

A bvec may span several physically contiguous pages (multi-page bvecs, v5.1+): ``bv_offset``
may exceed PAGE_SIZE relative to ``bv_page`` and ``bv_len`` may exceed PAGE_SIZE.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar, Final

import numpy as np

from ..kernel.types import PAGE_SHIFT, PAGE_SIZE

if TYPE_CHECKING:
    from ..mm.page_alloc import PgData

__all__ = [
    "BIO_FLAG",
    "BIO_MAX_VECS",
    "BLK_STS",
    "REQ_FLAG",
    "REQ_OP",
    "SECTOR_SHIFT",
    "Bio",
    "BvecIter",
]

SECTOR_SHIFT: Final = 9
BIO_MAX_VECS: Final = 256
"""``BIO_MAX_PAGES`` [5.9], renamed ``BIO_MAX_VECS`` [5.12]; the value is 256 in both."""
BIO_INLINE_VECS: Final = 4


class REQ_OP(enum.IntEnum):
    """``enum req_op`` (low 8 bits of ``bi_opf``)."""

    REQ_OP_READ = 0
    REQ_OP_WRITE = 1
    REQ_OP_FLUSH = 2
    REQ_OP_DISCARD = 3
    REQ_OP_ZONE_APPEND = 13
    REQ_OP_DRV_IN = 34
    REQ_OP_DRV_OUT = 35


class REQ_FLAG(enum.IntFlag):
    """``bi_opf`` flag bits (``enum req_flag_bits``), the ones the model uses."""

    REQ_FAILFAST_DEV = 1 << 8
    REQ_SYNC = 1 << 11
    REQ_META = 1 << 12
    REQ_PRIO = 1 << 13
    REQ_NOMERGE = 1 << 14
    REQ_IDLE = 1 << 15
    REQ_FUA = 1 << 17
    REQ_PREFLUSH = 1 << 18
    REQ_RAHEAD = 1 << 19
    REQ_BACKGROUND = 1 << 20
    REQ_NOWAIT = 1 << 21
    REQ_POLLED = 1 << 23
    REQ_ATOMIC = 1 << 27
    """[6.11+] untorn write; traced as ``U`` by ``blk_fill_rwbs``."""


REQ_OP_MASK: Final = 0xFF


class BIO_FLAG(enum.IntFlag):
    """``bi_flags`` bits (as masks). Which exist depends on the profile:

    * BIO_NO_PAGE_REF [5.1..6.4]: pages carry no reference (ITER_BVEC);
    * BIO_PAGE_PINNED [6.5+] (Linux commit fd363244e883 ("block: Add BIO_PAGE_PINNED and
      associated infrastructure")): pages carry FOLL_PIN pins;
    * BIO_PAGE_REFFED [6.5-dev only] never shipped in a release (removed by e4cc64657bec).
    """

    BIO_NO_PAGE_REF = 1 << 0
    BIO_PAGE_PINNED = 1 << 1
    BIO_CLONED = 1 << 2
    BIO_BOUNCED = 1 << 3
    BIO_WORKINGSET = 1 << 4
    BIO_QUIET = 1 << 5
    BIO_CHAIN = 1 << 6
    BIO_REFFED = 1 << 7
    BIO_SPLIT = 1 << 8  # model-only: a clone made by bio_split
    BIO_TRACE_COMPLETION = 1 << 9
    """``block_bio_queue`` was traced, so ``bio_endio`` traces ``block_bio_complete``
    (``blk_update_request`` clears it: a request's completion is traced instead)."""


class BLK_STS(enum.IntEnum):
    """``blk_status_t`` values and the errno each maps to (``blk_status_to_errno``)."""

    BLK_STS_OK = 0
    BLK_STS_NOTSUPP = 1
    BLK_STS_TIMEOUT = 2
    BLK_STS_NOSPC = 3
    BLK_STS_TRANSPORT = 4
    BLK_STS_TARGET = 5
    BLK_STS_MEDIUM = 7
    BLK_STS_PROTECTION = 8
    BLK_STS_RESOURCE = 9
    BLK_STS_IOERR = 10
    BLK_STS_AGAIN = 12
    BLK_STS_INVAL = 19


class BvecIter:
    """``struct bvec_iter``: where a bio (or a clone of it) is in its bvec array."""

    __slots__ = ("bi_bvec_done", "bi_idx", "bi_sector", "bi_size")

    def __init__(self, bi_sector: int = 0, bi_size: int = 0, bi_idx: int = 0,
                 bi_bvec_done: int = 0) -> None:
        self.bi_sector = bi_sector
        self.bi_size = bi_size
        self.bi_idx = bi_idx
        self.bi_bvec_done = bi_bvec_done

    def copy(self) -> BvecIter:
        return BvecIter(self.bi_sector, self.bi_size, self.bi_idx, self.bi_bvec_done)

    def __repr__(self) -> str:
        return (f"BvecIter(sector={self.bi_sector}, size={self.bi_size}, idx={self.bi_idx}, "
                f"done={self.bi_bvec_done})")


class Bio:
    """``struct bio``: one block I/O of up to ``bi_max_vecs`` bvecs."""

    __slots__ = (
        "_bi_cnt",
        "_pages_key",
        "_pages_val",
        "bi_bdev",
        "bi_end_io",
        "bi_flags",
        "bi_io_vec",
        "bi_iter",
        "bi_max_vecs",
        "bi_next",
        "bi_opf",
        "bi_parent",
        "bi_private",
        "bi_remaining",
        "bi_status",
        "bi_vcnt",
        "folios_key",
        "folios_val",
        "pgdat",
        "seq",
    )

    _seq: ClassVar[int] = 0

    def __init__(self, bdev: Any, nr_vecs: int, opf: int, pgdat: Any = None) -> None:
        self.bi_bdev = bdev
        self.pgdat: PgData = pgdat if pgdat is not None else bdev.pgdat
        """Model-only: the memory node whose pages the bvecs name (the kernel's globals)."""
        self.bi_opf = int(opf)
        self.bi_flags = 0
        self.bi_status = 0
        self.bi_iter = BvecIter()
        self.bi_vcnt = 0
        self.bi_max_vecs = nr_vecs
        self.bi_io_vec = np.zeros((nr_vecs, 2), np.int64)
        self.bi_end_io: Callable[[Bio], None] | None = None
        self.bi_private: Any = None
        self.bi_next: Bio | None = None
        self.bi_parent: Bio | None = None
        self.bi_remaining = 1
        self._bi_cnt = 1
        Bio._seq += 1
        self.seq = Bio._seq
        """Model-only: allocation order, for provenance and traces."""
        self._pages_key: bytes | None = None
        self._pages_val: np.ndarray | None = None
        self.folios_key: bytes | None = None
        self.folios_val: list[tuple[int, int, int]] | None = None
        """Model-only: ``block/bio.py`` remembers its folio walk of the used bvecs here
        (the bvecs' bytes, and the walk), as :meth:`pages` remembers its pages. The pages
        are pinned (or, [5.9], referenced) meanwhile, so their folios cannot be split or
        freed."""

    @property
    def holder(self) -> object:
        """Who the sanitizer says holds this bio's page references: the bio itself. (A
        property, not an attribute naming ``self``: that would make every bio, and its
        dio and kiocb, a reference cycle left to the cyclic garbage collector.)"""
        return self

    # --- op ------------------------------------------------------------------------------
    def bio_op(self) -> int:
        return self.bi_opf & REQ_OP_MASK

    def op_is_write(self) -> bool:
        """``op_is_write()``: odd ops write."""
        return bool(self.bi_opf & 1)

    def bio_flagged(self, flag: int) -> bool:
        return bool(self.bi_flags & flag)

    def bio_set_flag(self, flag: int) -> None:
        self.bi_flags |= int(flag)

    def bio_clear_flag(self, flag: int) -> None:
        self.bi_flags &= ~int(flag)

    # --- bvecs ---------------------------------------------------------------------------
    def bv_page(self) -> np.ndarray:
        """``bv_page`` of the used bvecs (a view)."""
        return self.bi_io_vec[: self.bi_vcnt, 0]

    def bv_len(self) -> np.ndarray:
        return self.bi_io_vec[: self.bi_vcnt, 1] >> 32

    def bv_offset(self) -> np.ndarray:
        return self.bi_io_vec[: self.bi_vcnt, 1] & 0xFFFFFFFF

    def set_bvec(self, k: int, page: int, length: int, offset: int) -> None:
        self.bi_io_vec[k, 0] = page
        self.bi_io_vec[k, 1] = (length << 32) | offset

    def tail_words(self) -> np.ndarray:
        """The bvec array as the flat array of machine words the kernel casts it to."""
        return self.bi_io_vec.reshape(-1)

    def segments(self) -> list[tuple[int, int, int]]:
        """(first pfn, offset within it, length) of every used bvec, offsets normalised so
        that the offset is < PAGE_SIZE."""
        out = []
        for page, lo in self.bi_io_vec[: self.bi_vcnt].tolist():
            length, off = lo >> 32, lo & 0xFFFFFFFF
            out.append((page + (off >> PAGE_SHIFT), off & (PAGE_SIZE - 1), length))
        return out

    def pages(self) -> np.ndarray:
        """Every base page covered by the used bvecs, one entry per page presence (a
        multi-page bvec contributes each of its pages). This is what
        ``bio_release_pages`` walks. Read-only; remembered until the used bvecs change
        (submission dirties, completion checks and releases the same pages)."""
        if self.bi_io_vec[: self.bi_vcnt].tobytes() == self._pages_key:
            return self._pages_val  # type: ignore[return-value]
        return self.seed_pages(self._pages())

    def seed_pages(self, pages: np.ndarray) -> np.ndarray:
        """Remember ``pages`` as what :meth:`pages` returns for the bvecs as they are now
        (the caller just built them from exactly these pages, in order). ``pages`` becomes
        read-only. Return: ``pages``."""
        pages.setflags(write=False)
        self._pages_key = self.bi_io_vec[: self.bi_vcnt].tobytes()
        self._pages_val = pages
        return pages

    def _pages(self) -> np.ndarray:
        if not self.bi_vcnt:
            return np.empty(0, np.int64)
        if self.bi_vcnt <= 4:  # a few bvecs: plain ints beat numpy's per-call overhead
            out: list[int] = []
            for page, lo in self.bi_io_vec[: self.bi_vcnt].tolist():
                off = lo & 0xFFFFFFFF
                first = page + (off >> PAGE_SHIFT)
                n = ((off & (PAGE_SIZE - 1)) + (lo >> 32) + PAGE_SIZE - 1) >> PAGE_SHIFT
                out.extend(range(first, first + n))
            return np.array(out, np.int64)
        vec = self.bi_io_vec[: self.bi_vcnt]
        first = vec[:, 0] + ((vec[:, 1] & 0xFFFFFFFF) >> PAGE_SHIFT)
        off = (vec[:, 1] & 0xFFFFFFFF) & (PAGE_SIZE - 1)
        npages = (off + (vec[:, 1] >> 32) + PAGE_SIZE - 1) >> PAGE_SHIFT
        if (npages == 1).all():
            return first.copy()
        starts = np.repeat(first, npages)
        steps = np.arange(int(npages.sum())) - np.repeat(np.cumsum(npages) - npages, npages)
        return starts + steps

    def bio_get(self) -> None:
        self._bi_cnt += 1

    def bio_put_ref(self) -> bool:
        """Drop a reference; True when it was the last (the caller frees the bio)."""
        self._bi_cnt -= 1
        return self._bi_cnt == 0

    @property
    def bi_cnt(self) -> int:
        return self._bi_cnt

    def __repr__(self) -> str:
        return (f"Bio(#{self.seq} op={self.bio_op()} sector={self.bi_iter.bi_sector} "
                f"size={self.bi_iter.bi_size} vcnt={self.bi_vcnt}/{self.bi_max_vecs} "
                f"flags={self.bi_flags:#x})")

"""The sanitizer: shadow pin/reference accounting over the model's hooks.

``Sanitizer(pgdat)`` subscribes to ``pgdat.hooks`` (acquire / release / free of page arrays)
and to ``pgdat.events`` (WARN/BUG). It keeps, per folio head, how many FOLL_GET/get_page
references and how many FOLL_PIN pins are outstanding (two int64 arrays updated with
``np.add.at`` / ``np.subtract.at``: one page may appear several times in a batch and each entry
counts), and a :class:`~dioscope.sanitizer.ledger.Ledger` of who acquired what, where.

Per hook event the work is a gather of the heads, one ``ufunc.at`` scatter, a list append and,
on a release, one gather-and-min to spot a release nobody acquired; everything else (naming
holders, scanning all of memory) happens only when a rule fires or a full check is asked for.

Seams and limits:

* Page-table and page-cache references are not reported when taken (``do_anonymous_page``,
  fork, the page cache), but the model drops them through ``put_pages()``, which reports a
  "get" release. Releases from the sites in :data:`UNTRACKED_RELEASE_SITES` are therefore
  ignored; any other "get" release the shadow cannot match is taken to drop such an untracked
  reference unless the folio holds pins (then RELEASE-KIND fires).
* Attach the sanitizer before the pins it should judge are taken: a pin taken before
  ``attach`` and released after it reads as "unpin of a page that was never pinned".
* The REFCOUNT-NONNEG check of a release runs at the next hook or event, or when
  :attr:`Sanitizer.violations` or a ``check_*`` method is read, because the model applies the
  release to ``_refcount`` right after reporting it.
"""

from __future__ import annotations

import os
import shlex
import sys
from types import TracebackType
from typing import Any

import numpy as np

from ..kernel.events import KernelEvent
from ..mm.page_alloc import PgData
from .ledger import ACQ, REL, Holding, Ledger
from .rules import (
    KERNEL_BUG,
    KERNEL_WARN,
    NO_FREE_PINNED,
    PIN_BALANCE,
    PIN_BIAS,
    REFCOUNT_NONNEG,
    RELEASE_KIND,
    Violation,
)

__all__ = ["UNTRACKED_RELEASE_SITES", "Sanitizer", "SanitizerError"]

UNTRACKED_RELEASE_SITES = frozenset(
    {
        "zap_pte_range",  # zap_page_range(): a PTE's reference (mm/memory.c)
        "unmap_vmas",  # munmap()
        "madvise_dontneed",  # madvise(MADV_DONTNEED)
        "exit_mmap",  # process exit
        "populate_range",  # giving back a short bulk allocation
        "shmem_undo_range",  # truncating a shmem file: the page cache's reference
        "pipe_buf_release",  # a pipe buffer's own reference (anon_pipe_buf_release)
    }
)
"""Sites whose "get" releases drop page-table, page-cache or pipe-buffer references (taken at
allocation or fault time, never reported as acquisitions), not references taken through GUP
or get_page(). A new model path that drops such an owner's reference with put_page() must be
added here, or its release of a pinned page reads as RELEASE-KIND."""

LEDGER_COMPACT_AT = 4096


class SanitizerError(AssertionError):
    """Raised by :meth:`Sanitizer.assert_clean`: one violation sentence per line."""


def _default_recipe() -> str:
    """The command that replays the current run: the pytest node, else this program."""
    node = os.environ.get("PYTEST_CURRENT_TEST")
    if node:
        node = node.rsplit(" (", 1)[0]
        return f"PYTHONPATH=src python -m pytest -q {shlex.quote(node)}"
    argv = [a for a in sys.argv if a]
    if argv and argv[0] != "-c":
        return "PYTHONPATH=src python " + shlex.join(argv)
    return "(no recipe: pass Sanitizer(..., recipe=...))"


class Sanitizer:
    """Shadow accounting and rule checks for one model machine.

    Arguments: ``target`` is a :class:`PgData` (or anything with a ``pgdat``, such as a
    :class:`~dioscope.machine.Kernel`); ``recipe`` is the replay command every violation ends
    with (default: the current pytest node, or this program's command line); with
    ``strict_warn`` every WARN event is a violation (rule KERNEL-WARN); ``untracked_sites``
    overrides :data:`UNTRACKED_RELEASE_SITES`.

    Usable as a context manager: ``with Sanitizer(k.pgdat) as san: ...`` detaches on exit.
    """

    def __init__(
        self,
        target: PgData | Any,
        *,
        recipe: str | None = None,
        strict_warn: bool = False,
        untracked_sites: frozenset[str] = UNTRACKED_RELEASE_SITES,
    ) -> None:
        pgdat: PgData = getattr(target, "pgdat", target)
        self._pgdat = pgdat
        self._pages = pgdat.pages
        self._gets = np.zeros(pgdat.nr_pages, np.int64)
        self._pins = np.zeros(pgdat.nr_pages, np.int64)
        self._ledger = Ledger()
        self._ledger_limit = LEDGER_COMPACT_AT
        self._outstanding = 0
        self._pending: np.ndarray | None = None
        self._violations: list[Violation] = []
        self._seen: set[tuple[str, str]] = set()
        self._negative: set[int] = set()  # heads REFCOUNT-NONNEG has already named
        self._allowed: list[object] = []
        self._recipe = recipe if recipe is not None else _default_recipe()
        self.strict_warn = strict_warn
        self.untracked_sites = untracked_sites
        self.warnings: list[KernelEvent] = []
        """Every WARN event seen while attached (violations only with ``strict_warn``)."""
        self.attached = False
        self.attach()

    # --- State (what rules read) ----------------------------------------------------------
    @property
    def pgdat(self) -> PgData:
        return self._pgdat

    @property
    def gets(self) -> np.ndarray:
        """Outstanding FOLL_GET / get_page references per folio head (read-only view)."""
        return self._gets

    @property
    def pins(self) -> np.ndarray:
        """Outstanding FOLL_PIN pins per folio head (read-only view)."""
        return self._pins

    @property
    def ledger(self) -> Ledger:
        return self._ledger

    @property
    def recipe(self) -> str:
        return self._recipe

    @property
    def outstanding(self) -> int:
        """Total outstanding references and pins the sanitizer has seen taken."""
        return self._outstanding

    @property
    def violations(self) -> list[Violation]:
        """Every violation so far, in the order found (pending checks run first)."""
        self._flush_pending()
        return self._violations

    # --- attach / detach ----------------------------------------------------------------
    def attach(self) -> None:
        """Subscribe to the hooks and the WARN/BUG log (done by the constructor)."""
        if self.attached:
            return
        self._pgdat.hooks.subscribe(self)
        self._pgdat.events.listeners.append(self._on_event)
        self.attached = True

    def detach(self) -> None:
        """Unsubscribe; the shadow state and violations stay readable."""
        if not self.attached:
            return
        self._flush_pending()
        self._pgdat.hooks.unsubscribe(self)
        self._pgdat.events.listeners.remove(self._on_event)
        self.attached = False

    def __enter__(self) -> Sanitizer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.detach()

    # --- hot path: hook callbacks ---------------------------------------------------------
    def on_acquire(self, kind: str, pfns: np.ndarray, holder: object, site: str) -> None:
        """Hooks callback: ``pfns`` gained one ``kind`` ("get"/"pin") each."""
        if self._pending is not None:
            self._flush_pending()
        n = len(pfns)
        if not n:
            return
        if pfns[pfns.argmin()] < 0:  # NULL entries hold nothing
            pfns = pfns[pfns >= 0]
            n = len(pfns)
            if not n:
                return
        heads = self._pages.head.take(pfns)
        np.add.at(self._pins if kind == "pin" else self._gets, heads, 1)
        self._outstanding += n
        ledger = self._ledger
        ledger.seq += 1
        ledger.entries.append((ledger.seq, ACQ, kind, holder, site, heads))
        if len(ledger.entries) > self._ledger_limit:
            self._compact()

    def on_release(self, kind: str, pfns: np.ndarray, holder: object, site: str) -> None:
        """Hooks callback: ``pfns`` are about to lose one ``kind`` each."""
        if self._pending is not None:
            self._flush_pending()
        if not len(pfns):
            return
        if pfns[pfns.argmin()] < 0:  # NULL entries release nothing
            pfns = pfns[pfns >= 0]
            if not len(pfns):
                return
        heads = self._pages.head.take(pfns)
        if kind == "get" and site in self.untracked_sites:
            self._pending = heads  # not ours to match, but it must not go negative either
            return
        shadow = self._pins if kind == "pin" else self._gets
        np.subtract.at(shadow, heads, 1)
        post = shadow.take(heads)
        self._pending = heads
        if post[post.argmin()] < 0:
            heads = self._unmatched_release(kind, pfns, heads, holder, site)
        self._outstanding -= len(heads)
        ledger = self._ledger
        ledger.seq += 1
        if self._outstanding == 0:
            ledger.entries.clear()
        elif len(heads):
            ledger.entries.append((ledger.seq, REL, kind, holder, site, heads))

    def on_free(self, pfns: np.ndarray, order: int, site: str) -> None:
        """Hooks callback: the folio made of ``pfns`` goes back to the allocator."""
        self._flush_pending()
        if not len(pfns):
            return
        head = int(self._pages.head[int(pfns[0])])
        self._report(NO_FREE_PINNED.check(self, head, order, site))
        self._forget(head, f"{site} (freed)")

    def _on_event(self, ev: KernelEvent) -> None:
        self._flush_pending()
        if ev.kind == "BUG":
            found = NO_FREE_PINNED.from_event(self, ev)
            self._report(found or KERNEL_BUG.from_event(self, ev))
        elif ev.kind == "WARN":
            self.warnings.append(ev)
            if self.strict_warn:
                self._report(KERNEL_WARN.from_event(self, ev))

    # --- slow paths ---------------------------------------------------------------------
    def _flush_pending(self) -> None:
        """REFCOUNT-NONNEG over the heads of the last release, now that it is applied."""
        heads = self._pending
        if heads is None:
            return
        self._pending = None
        rc = self._pages.refcount.take(heads)
        if len(rc) and rc[rc.argmin()] < 0:
            self._report(REFCOUNT_NONNEG.check(self, heads))

    def _unmatched_release(
        self, kind: str, pfns: np.ndarray, heads: np.ndarray, holder: object, site: str
    ) -> np.ndarray:
        """Some entries of a release have no acquisition behind them: check RELEASE-KIND,
        clamp the shadow at zero, and return the heads of the entries that did match."""
        self._report(RELEASE_KIND.check(self, kind, pfns, heads, holder, site))
        shadow = self._pins if kind == "pin" else self._gets
        uniq, inv, cnt = np.unique(heads, return_inverse=True, return_counts=True)
        vals = shadow[uniq]
        excess = np.maximum(-vals, 0)
        shadow[uniq] = np.maximum(vals, 0)
        # The first (count - excess) entries of each head matched; the rest did not.
        order = np.argsort(inv, kind="stable")
        sorted_inv = inv[order]
        idx = np.arange(len(heads))
        starts = np.r_[True, sorted_inv[1:] != sorted_inv[:-1]]
        rank = np.empty(len(heads), np.int64)
        rank[order] = idx - np.maximum.accumulate(np.where(starts, idx, 0))
        return heads[rank < (cnt - excess)[inv]]

    def _forget(self, head: int, site: str) -> None:
        """A freed folio holds nothing any more: drop its shadow counts (after reporting)."""
        for kind, shadow in (("pin", self._pins), ("get", self._gets)):
            n = int(shadow[head])
            if n > 0:
                shadow[head] = 0
                self._outstanding -= n
                self._ledger.seq += 1
                self._ledger.entries.append(
                    (self._ledger.seq, REL, kind, None, site, np.full(n, head, np.int64))
                )
        if self._outstanding == 0:
            self._ledger.clear()

    def _compact(self) -> None:
        self._ledger.compact()
        self._ledger_limit = max(LEDGER_COMPACT_AT, 2 * len(self._ledger))

    def _report(self, found: list[Violation], dedup: bool = False) -> list[Violation]:
        new: list[Violation] = []
        for v in found:
            key = (v.rule, v.message)
            if dedup and key in self._seen:
                continue
            self._seen.add(key)
            if v.rule == REFCOUNT_NONNEG.id:
                self._negative.update(v.pfns)
            new.append(v)
        self._violations.extend(new)
        return new

    # --- API ----------------------------------------------------------------------------
    def allow_outstanding(self, holder: object) -> None:
        """Declare ``holder``'s pins and references as expected at quiescence (a long-term
        pin such as a registered RDMA or io_uring buffer)."""
        self._allowed.append(holder)

    def holders_of(self, pfn: int) -> list[Holding]:
        """Who holds the folio containing ``pfn`` now: one entry per (kind, holder, site)."""
        only = np.array([int(self._pages.head[pfn])], np.int64)
        return [h for kind in ("pin", "get") for h in self._ledger.holdings(kind, only)]

    def check_all(self) -> list[Violation]:
        """Run the whole-memory rules now (REFCOUNT-NONNEG over every page, PIN-BIAS over
        every pinned folio). Return: the violations this call added (a page already reported
        negative, or a repeat of an identical report, is not reported again)."""
        self._flush_pending()
        neg = np.flatnonzero(self._pages.refcount < 0)
        if self._negative and len(neg):
            neg = neg[~np.isin(neg, np.fromiter(self._negative, np.int64))]
        found = REFCOUNT_NONNEG.check(self, neg) if len(neg) else []
        return self._report(found + PIN_BIAS.check(self), dedup=True)

    def check_quiescent(self) -> list[Violation]:
        """:meth:`check_all` plus PIN-BALANCE: nothing outstanding but allowed holders'.
        Call when no I/O is in flight. Return: the violations this call added."""
        new = self.check_all()
        return new + self._report(PIN_BALANCE.check(self, self._allowed), dedup=True)

    def assert_clean(self) -> None:
        """Raise :class:`SanitizerError` listing every violation, if there is any."""
        found = self.violations
        if found:
            lines = "\n".join(str(v) for v in found)
            raise SanitizerError(f"{len(found)} sanitizer violation(s):\n{lines}")

"""The sanitizer's rules: named invariants with a statement, a kernel reference and a check.

Each rule is a frozen object with ``id``, a one-paragraph ``statement`` and ``kernel_ref``,
and a vectorized ``check`` over the shadow state (:class:`State`). Checks never loop over
pages in Python; they loop only over the few pages a report names. A check returns
:class:`Violation` objects; it never mutates the shadow state (the sanitizer does that).

The invariants come from ``Documentation/core-api/pin_user_pages.rst`` (FOLL_PIN pages must be
released with ``unpin_user_page()``, never ``put_page()``; GUP_PIN_COUNTING_BIAS; the exact
pincount of large folios), ``include/linux/mm.h`` (``page_ref_*``, ``folio_maybe_dma_pinned``)
and ``mm/page_alloc.c`` (``free_page_is_bad`` / ``bad_page``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import numpy as np

from ..kernel.events import KernelEvent
from ..mm.page import GUP_PIN_COUNTING_BIAS
from .ledger import Ledger, fmt_holder

if TYPE_CHECKING:
    from ..mm.page_alloc import PgData

__all__ = [
    "KERNEL_BUG",
    "KERNEL_WARN",
    "NO_FREE_PINNED",
    "PIN_BALANCE",
    "PIN_BIAS",
    "REFCOUNT_NONNEG",
    "RELEASE_KIND",
    "RULES",
    "Rule",
    "State",
    "Violation",
]

INT32_MAX = (1 << 31) - 1
NAMED_PFNS = 8
"""A report names at most this many pages (and says how many more there are)."""

_KIND_NAME = {"pin": "FOLL_PIN pin", "get": "FOLL_GET reference"}
_PFN_RE = re.compile(r"\bpfn:(0x[0-9a-f]+)")


@dataclass(frozen=True)
class Violation:
    """One broken rule: its id, one sentence naming pages, holders and sites, the pfns
    involved and the replay recipe (``str()`` ends with it)."""

    rule: str
    message: str
    pfns: tuple[int, ...]
    recipe: str

    def __str__(self) -> str:
        return f"{self.rule}: {self.message} Replay: {self.recipe}"


class State(Protocol):
    """What a check reads: the model's page state plus the sanitizer's shadow."""

    @property
    def pgdat(self) -> PgData: ...

    @property
    def gets(self) -> np.ndarray: ...  # outstanding FOLL_GET/get_page refs per head, int64

    @property
    def pins(self) -> np.ndarray: ...  # outstanding FOLL_PIN pins per head, int64

    @property
    def ledger(self) -> Ledger: ...

    @property
    def recipe(self) -> str: ...


@dataclass(frozen=True)
class Rule:
    """A named invariant (STYLE.md item 7)."""

    id: str
    statement: str
    kernel_ref: str

    def violation(self, state: State, message: str, pfns: np.ndarray | list[int]) -> Violation:
        return Violation(self.id, message, tuple(int(x) for x in pfns), state.recipe)


# --- report helpers (slow path: only the named pages) -------------------------------------
def _more(total: int, named: int) -> str:
    return f" and {total - named} more page(s)" if total > named else ""


def holders_text(state: State, head: int, kinds: tuple[str, ...] = ("pin", "get")) -> str:
    """Who still holds the folio headed by ``head``: holder, site and age per acquisition."""
    parts: list[str] = []
    only = np.array([head], np.int64)
    for kind in kinds:
        for h in state.ledger.holdings(kind, only):
            parts.append(f"{_KIND_NAME[kind]} by {h.describe()}")
    return ", ".join(parts) if parts else "no recorded holder"


def _page_name(pfn: int, head: int) -> str:
    return f"pfn {pfn:#x}" if pfn == head else f"pfn {pfn:#x} (folio {head:#x})"


# --- rules ------------------------------------------------------------------------------
@dataclass(frozen=True)
class PinBalance(Rule):
    """PIN-BALANCE: checked at quiescence over every head with something outstanding."""

    def check(self, state: State, allowed: list[object]) -> list[Violation]:
        out: list[Violation] = []
        for kind in ("pin", "get"):
            shadow = state.pins if kind == "pin" else state.gets
            heads = np.flatnonzero(shadow > 0)
            if not len(heads):
                continue
            left = shadow[heads]
            if allowed:
                left = left - state.ledger.excused(kind, heads, allowed)
                heads, left = heads[left > 0], left[left > 0]
            if not len(heads):
                continue
            named = heads[:NAMED_PFNS].tolist()
            pages = "; ".join(
                f"pfn {h:#x} ({int(n)} held: {holders_text(state, h, (kind,))})"
                for h, n in zip(named, left[:NAMED_PFNS].tolist())
            )
            msg = (
                f"{int(left.sum())} {_KIND_NAME[kind]}(s) on {len(heads)} page(s) still "
                f"outstanding at quiescence: {pages}{_more(len(heads), len(named))}."
            )
            out.append(self.violation(state, msg, named))
        return out


@dataclass(frozen=True)
class ReleaseKind(Rule):
    """RELEASE-KIND: checked at each release, after the shadow count of ``kind`` has been
    decremented for the batch (a negative shadow count is a release nobody acquired)."""

    def check(
        self,
        state: State,
        kind: str,
        pfns: np.ndarray,
        heads: np.ndarray,
        holder: object,
        site: str,
    ) -> list[Violation]:
        shadow = state.pins if kind == "pin" else state.gets
        short = shadow.take(heads) < 0
        if kind == "get":
            # An unmatched put_page is only a kind error when the folio holds pins; otherwise
            # it drops a reference the sanitizer never saw taken (allocation, page table).
            short &= state.pins.take(heads) > 0
        if not short.any():
            return []
        bad_pfns, first = np.unique(pfns[short], return_index=True)
        bad_heads = heads[short][first]
        named = list(zip(bad_pfns[:NAMED_PFNS].tolist(), bad_heads[:NAMED_PFNS].tolist()))
        by = f"at {site}" + (f" by {fmt_holder(holder)}" if holder is not None else "")
        if kind == "get":
            pages = "; ".join(
                f"{_page_name(p, h)} has {int(state.pins[h])} outstanding pin(s) and no "
                f"FOLL_GET reference ({holders_text(state, h, ('pin',))})"
                for p, h in named
            )
            msg = (
                f"put_page on a FOLL_PIN page {by}: {pages}"
                f"{_more(len(bad_pfns), len(named))}; release it with unpin_user_page()."
            )
        else:
            pages = "; ".join(
                f"{_page_name(p, h)} has no outstanding pin and {int(state.gets[h])} FOLL_GET "
                f"reference(s) ({holders_text(state, h, ('get',))})"
                for p, h in named
            )
            msg = (
                f"unpin of a page that was never pinned / got with FOLL_GET {by}: {pages}"
                f"{_more(len(bad_pfns), len(named))}."
            )
        return [self.violation(state, msg, [p for p, _ in named])]


@dataclass(frozen=True)
class RefcountNonneg(Rule):
    """REFCOUNT-NONNEG: over the heads a release touched, or over all of memory."""

    def check(self, state: State, heads: np.ndarray | None = None) -> list[Violation]:
        rc = state.pgdat.pages.refcount
        if heads is None:
            bad = np.flatnonzero(rc < 0)
        else:
            bad = np.unique(heads[rc.take(heads) < 0])
        if not len(bad):
            return []
        named = bad[:NAMED_PFNS].tolist()
        pages = "; ".join(self._describe(state, h) for h in named)
        msg = f"negative refcount: {pages}{_more(len(bad), len(named))}."
        return [self.violation(state, msg, named)]

    @staticmethod
    def _describe(state: State, head: int) -> str:
        p = state.pgdat.pages
        ref = int(p.refcount[head])
        unit = max(int(p.pin_unit[head]), 1)
        expected = int(state.pins[head]) * unit + int(state.gets[head])
        if expected > INT32_MAX or ref < -(1 << 30):
            return (
                f"pfn {head:#x} refcount reads {ref}: overflow, the int32 wrapped past "
                f"INT32_MAX ({int(state.pins[head])} pin(s) x {unit} outstanding; "
                f"{holders_text(state, head)})"
            )
        return (
            f"pfn {head:#x} refcount is {ref}: more references were dropped than taken "
            f"({holders_text(state, head)})"
        )


@dataclass(frozen=True)
class NoFreePinned(Rule):
    """NO-FREE-PINNED: on each free (shadow pins) and on ``bad_page`` BUG events."""

    def check(self, state: State, head: int, order: int, site: str) -> list[Violation]:
        n = int(state.pins[head])
        if n <= 0:
            return []
        msg = (
            f"pfn {head:#x} (order {order}) was freed by {site} while {n} FOLL_PIN pin(s) "
            f"were outstanding ({holders_text(state, head, ('pin',))}); a device may still "
            f"DMA into the reused frame."
        )
        return [self.violation(state, msg, [head])]

    def from_event(self, state: State, ev: KernelEvent) -> list[Violation]:
        """A ``bad_page`` BUG about a mapped or pinned page, or one the shadow says is
        pinned; other BUGs are left to KERNEL-BUG (return [])."""
        if ev.kind != "BUG" or ev.site != "bad_page":
            return []
        m = _PFN_RE.search(ev.message)
        pfn = int(m.group(1), 16) if m else -1
        head = int(state.pgdat.pages.head[pfn]) if 0 <= pfn < len(state.pins) else -1
        pinned = head >= 0 and int(state.pins[head]) > 0
        if not (pinned or "pincount" in ev.message or "mapcount" in ev.message):
            return []
        who = holders_text(state, head) if head >= 0 else "no recorded holder"
        msg = (
            f"the allocator refused to free pfn {pfn:#x} (bad_page: "
            f"{ev.message.split(':', 1)[0]}) because it is still pinned or mapped ({who})."
        )
        return [self.violation(state, msg, [pfn] if pfn >= 0 else [])]


@dataclass(frozen=True)
class PinBias(Rule):
    """PIN-BIAS: over every head with outstanding pins (check_all)."""

    def check(self, state: State) -> list[Violation]:
        heads = np.flatnonzero(state.pins > 0)
        if not len(heads):
            return []
        p = state.pgdat.pages
        n = state.pins[heads]
        unit = p.pin_unit[heads]
        ref = p.refcount[heads].astype(np.int64)
        pc = p.pincount[heads].astype(np.int64)
        # A negative refcount is REFCOUNT-NONNEG's report (underflow or overflow).
        small = (unit == GUP_PIN_COUNTING_BIAS) & (ref >= 0) & (ref < n * GUP_PIN_COUNTING_BIAS)
        exact = (unit == 1) & (pc != n)
        bad = np.flatnonzero(small | exact)
        if not len(bad):
            return []
        parts = []
        for i in bad[:NAMED_PFNS].tolist():
            h = int(heads[i])
            if small[i]:
                parts.append(
                    f"pfn {h:#x} has refcount {int(ref[i])} < {int(n[i])} pin(s) x "
                    f"{GUP_PIN_COUNTING_BIAS}"
                )
            else:
                parts.append(
                    f"pfn {h:#x} has pincount {int(pc[i])} but {int(n[i])} pin(s) outstanding"
                )
            parts[-1] += f" ({holders_text(state, h, ('pin',))})"
        named = heads[bad[:NAMED_PFNS]].tolist()
        msg = f"pin accounting broken: {'; '.join(parts)}{_more(len(bad), len(named))}."
        return [self.violation(state, msg, named)]


@dataclass(frozen=True)
class KernelEventRule(Rule):
    """KERNEL-BUG / KERNEL-WARN: a model BUG() (or, strictly, WARN) event."""

    kind: str = "BUG"

    def check(self, state: State, events: list[KernelEvent]) -> list[Violation]:
        """Every event of this rule's kind in ``events`` (e.g. ``pgdat.events.events``)."""
        return [v for ev in events for v in self.from_event(state, ev)]

    def from_event(self, state: State, ev: KernelEvent) -> list[Violation]:
        if ev.kind != self.kind:
            return []
        pfns = [int(x, 16) for x in _PFN_RE.findall(ev.message)]
        return [self.violation(state, f"{ev}.", pfns)]


PIN_BALANCE = PinBalance(
    "PIN-BALANCE",
    "At quiescence every FOLL_PIN pin taken by pin_user_pages*(), pin_page() or "
    "folio_add_pin() has been released by unpin_user_page*(), and every reference taken by "
    "get_user_pages*() or get_page() has been dropped, except those of holders the caller "
    "declared long-term with allow_outstanding(). A leftover pin keeps the page "
    "'maybe DMA-pinned' forever: fork copies it, writeback and migration stall on it.",
    "Documentation/core-api/pin_user_pages.rst (FOLL_PIN must be released by "
    "unpin_user_pages()); mm/gup.c pin_user_pages_fast / unpin_user_pages",
)

RELEASE_KIND = ReleaseKind(
    "RELEASE-KIND",
    "A reference is released the way it was acquired: a FOLL_PIN page is released with "
    "unpin_user_page*() and a FOLL_GET/get_page reference with put_page(). put_page() on a "
    "page that holds only pins drops 1 where 1024 (or one exact pincount) was added, so the "
    "page stays pinned forever; unpin of a page that was never pinned subtracts the bias "
    "from plain references and frees the page under its user.",
    "Documentation/core-api/pin_user_pages.rst ('FOLL_PIN pages must be released with "
    "unpin_user_page()'); mm/gup.c gup_put_folio; include/linux/mm.h put_page",
)

REFCOUNT_NONNEG = RefcountNonneg(
    "REFCOUNT-NONNEG",
    "No page's _refcount is ever negative. A negative count is a double release (an unpin "
    "or put_page too many), or, for a count near INT_MIN, an int32 overflow from more than "
    "2**31 / GUP_PIN_COUNTING_BIAS pins on one small page, which try_grab_folio() must "
    "refuse; either way the page can be freed while still in use.",
    "include/linux/page_ref.h (page_ref_dec_and_test, VM_BUG_ON_PAGE(page_ref_count(page) "
    "<= 0)); mm/gup.c try_grab_folio (refcount overflow check)",
)

NO_FREE_PINNED = NoFreePinned(
    "NO-FREE-PINNED",
    "No frame is freed while it is pinned or mapped: the allocator must never see a folio "
    "whose pincount or mapcount is nonzero, and no folio with outstanding pins may reach a "
    "zero refcount. Otherwise a device keeps DMA-ing into a frame that has been reused.",
    "mm/page_alloc.c free_page_is_bad / bad_page; Documentation/core-api/pin_user_pages.rst",
)

PIN_BIAS = PinBias(
    "PIN-BIAS",
    "A small folio with N outstanding pins has refcount >= N * GUP_PIN_COUNTING_BIAS (1024), "
    "and a folio with an exact pincount (large folios, per profile) has pincount == N. This "
    "is what makes folio_maybe_dma_pinned() free of false negatives.",
    "include/linux/mm.h GUP_PIN_COUNTING_BIAS and folio_maybe_dma_pinned(); "
    "Documentation/core-api/pin_user_pages.rst 'page_maybe_dma_pinned()'",
)

KERNEL_BUG = KernelEventRule(
    "KERNEL-BUG",
    "The model never reaches a BUG(): every BUG event means the real kernel would have "
    "oopsed or panicked at that point.",
    "include/asm-generic/bug.h BUG(), VM_BUG_ON_PAGE()",
    "BUG",
)

KERNEL_WARN = KernelEventRule(
    "KERNEL-WARN",
    "With strict_warn, the model never reaches a WARN_ON(): the kernel's own assertion "
    "about its callers fired.",
    "include/asm-generic/bug.h WARN_ON(), WARN_ON_ONCE()",
    "WARN",
)

RULES: dict[str, Rule] = {
    r.id: r
    for r in (
        PIN_BALANCE,
        RELEASE_KIND,
        REFCOUNT_NONNEG,
        NO_FREE_PINNED,
        PIN_BIAS,
        KERNEL_BUG,
        KERNEL_WARN,
    )
}

"""Provenance: who took each outstanding reference or pin, and where.

The sanitizer's hot path appends one tuple per hook event to a :class:`Ledger` and does
nothing else with it; the ledger is cleared whenever the outstanding totals return to zero and
compacted when it grows long while something stays outstanding (a deliberate long-term pin).
Only a report, a compaction or :meth:`Ledger.holders_of` resolves it.

Resolution matches releases to acquisitions per folio head and kind:

1. a release whose holder also acquired on that head cancels that holder's oldest
   acquisitions there;
2. every other release (holder None, or a holder that took nothing there, or one releasing
   more than it took) cancels the oldest acquisitions still outstanding on that head.

SIMPLIFIED: the matching counts per (head, holder) and ignores the order of events within
those groups, so a holder that releases a pin *before* it takes one on the same head is
treated as releasing its own later pin. The totals per head are exact (they equal the
sanitizer's shadow counts); only the attribution can be off in that corner.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable
from dataclasses import dataclass, replace

import numpy as np

__all__ = ["ACQ", "REL", "Holding", "Ledger", "LedgerEntry", "fmt_holder"]

ACQ = 1
REL = -1

LedgerEntry = tuple[int, int, str, object, str, np.ndarray]
"""(seq, op, kind, holder, site, heads): op is ACQ or REL; heads one int64 entry per
subpage reference (a head may repeat; each repeat counts)."""


@dataclass(frozen=True)
class Holding:
    """Outstanding acquisitions of one kind by one holder at one site on one folio head."""

    head: int
    kind: str
    holder: object
    site: str
    count: int
    seq: int  # ledger sequence number of the oldest contributing acquisition

    def describe(self) -> str:
        times = f" x{self.count}" if self.count != 1 else ""
        return f"{fmt_holder(self.holder)} via {self.site}{times} (event #{self.seq})"


def fmt_holder(holder: object) -> str:
    """A short, stable name for a holder in a report."""
    if holder is None:
        return "no holder"
    if isinstance(holder, str):
        return repr(holder)
    text = repr(holder)
    return text if len(text) <= 48 else text[:45] + "..."


class _Interner:
    """Holder -> small int, by equality when hashable, else by identity. 0 is None."""

    def __init__(self) -> None:
        self._keys: dict[Hashable, int] = {}

    def key(self, holder: object) -> int:
        if holder is None:
            return 0
        try:
            k: Hashable = ("v", holder)
            hash(k)
        except TypeError:
            k = ("id", id(holder))
        got = self._keys.get(k)
        if got is None:
            got = self._keys[k] = len(self._keys) + 1
        return got


def _rank_in_groups(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For already grouped-sorted ``keys``: each element's rank in its run, and run starts."""
    n = len(keys)
    idx = np.arange(n)
    starts = np.empty(n, bool)
    if n:
        starts[0] = True
        starts[1:] = keys[1:] != keys[:-1]
    first = np.maximum.accumulate(np.where(starts, idx, 0))
    return idx - first, starts


class Ledger:
    """Append-only record of acquisitions and releases since the totals were last zero."""

    def __init__(self) -> None:
        self.entries: list[LedgerEntry] = []
        self.seq = 0

    def __len__(self) -> int:
        return len(self.entries)

    def clear(self) -> None:
        self.entries.clear()

    # --- resolution (slow path) --------------------------------------------------------
    def _flatten(
        self, kind: str, op: int, interner: _Interner, only: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(entry index, head, holder key) per reference of ``kind``/``op``."""
        idx: list[int] = []
        parts: list[np.ndarray] = []
        for i, (_seq, eop, ekind, _holder, _site, heads) in enumerate(self.entries):
            if eop == op and ekind == kind and len(heads):
                idx.append(i)
                parts.append(heads)
        if not parts:
            e = np.empty(0, np.int64)
            return e, e, e
        lens = np.fromiter((len(h) for h in parts), np.int64, len(parts))
        entry = np.repeat(np.asarray(idx, np.int64), lens)
        head = np.concatenate(parts)
        hkeys = np.asarray([interner.key(self.entries[i][3]) for i in idx], np.int64)
        holder = np.repeat(hkeys, lens)
        if only is not None:
            keep = np.isin(head, only)
            entry, head, holder = entry[keep], head[keep], holder[keep]
        return entry, head, holder

    def resolve(
        self, kind: str, only: np.ndarray | None = None, interner: _Interner | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Surviving (outstanding) acquisitions of ``kind``, restricted to heads ``only``.

        Return: (entry index, head, holder key) arrays, one element per outstanding reference,
        ordered by head then by age.
        """
        interner = interner if interner is not None else _Interner()
        a_entry, a_head, a_holder = self._flatten(kind, ACQ, interner, only)
        _r_entry, r_head, r_holder = self._flatten(kind, REL, interner, only)
        if not len(a_head):
            return a_entry, a_head, a_holder
        width = np.int64(max(int(a_holder.max()), int(r_holder.max(initial=0))) + 1)
        # Step 1: releases cancel the same holder's oldest acquisitions on that head.
        a_key = a_head * width + a_holder
        order = np.lexsort((a_entry, a_key))
        a_entry, a_head, a_holder, a_key = (
            a_entry[order],
            a_head[order],
            a_holder[order],
            a_key[order],
        )
        rank, _ = _rank_in_groups(a_key)
        named = r_holder != 0
        r_keys, r_counts = np.unique(r_head[named] * width + r_holder[named], return_counts=True)
        pos = np.searchsorted(r_keys, a_key)
        pos_ok = pos < len(r_keys)
        hit = np.zeros(len(a_key), bool)
        hit[pos_ok] = r_keys[pos[pos_ok]] == a_key[pos_ok]
        quota = np.zeros(len(a_key), np.int64)
        quota[hit] = r_counts[pos[hit]]
        cancelled = rank < quota
        # Named releases beyond what that holder took there become anonymous.
        a_keys_u, a_counts = np.unique(a_key, return_counts=True)
        p2 = np.searchsorted(a_keys_u, r_keys)
        p2_ok = p2 < len(a_keys_u)
        taken = np.zeros(len(r_keys), np.int64)
        m = p2_ok.copy()
        m[p2_ok] = a_keys_u[p2[p2_ok]] == r_keys[p2_ok]
        taken[m] = a_counts[p2[m]]
        spill_heads = np.repeat(r_keys // width, np.maximum(r_counts - taken, 0))
        anon_heads = np.concatenate([r_head[~named], spill_heads])
        # Step 2: anonymous releases cancel the oldest remaining acquisitions on the head.
        left = ~cancelled
        e, h, k = a_entry[left], a_head[left], a_holder[left]
        order = np.lexsort((e, h))
        e, h, k = e[order], h[order], k[order]
        rank, _ = _rank_in_groups(h)
        u_heads, u_counts = np.unique(anon_heads, return_counts=True)
        pos = np.searchsorted(u_heads, h)
        pos_ok = pos < len(u_heads)
        hit = np.zeros(len(h), bool)
        hit[pos_ok] = u_heads[pos[pos_ok]] == h[pos_ok]
        quota = np.zeros(len(h), np.int64)
        quota[hit] = u_counts[pos[hit]]
        keep = rank >= quota
        return e[keep], h[keep], k[keep]

    def holdings(self, kind: str, only: np.ndarray | None = None) -> list[Holding]:
        """Outstanding acquisitions of ``kind`` grouped by (head, holder, site), oldest first
        within a head."""
        interner = _Interner()
        e, h, k = self.resolve(kind, only, interner)
        merged: dict[tuple[int, int, str], Holding] = {}
        for entry, head, hkey in zip(e.tolist(), h.tolist(), k.tolist()):
            seq, _op, _kind, holder, site, _heads = self.entries[entry]
            prev = merged.get((head, hkey, site))
            if prev is None:  # survivors come oldest first: the first seq is the oldest
                merged[(head, hkey, site)] = Holding(head, kind, holder, site, 1, seq)
            else:
                merged[(head, hkey, site)] = replace(prev, count=prev.count + 1)
        return sorted(merged.values(), key=lambda x: (x.head, x.seq))

    def excused(self, kind: str, only: np.ndarray, allowed: Iterable[object]) -> np.ndarray:
        """Per head of ``only`` (sorted unique), how many outstanding acquisitions of
        ``kind`` belong to an ``allowed`` holder."""
        interner = _Interner()
        allowed_keys = np.asarray([interner.key(a) for a in allowed], np.int64)
        _e, h, k = self.resolve(kind, only, interner)
        mine = np.isin(k, allowed_keys)
        counts = np.zeros(len(only), np.int64)
        if mine.any():
            np.add.at(counts, np.searchsorted(only, h[mine]), 1)
        return counts

    # --- compaction --------------------------------------------------------------------
    def compact(self) -> None:
        """Replace the ledger by its outstanding acquisitions (releases all resolved)."""
        interner = _Interner()
        kept: list[LedgerEntry] = []
        for kind in sorted({en[2] for en in self.entries}):
            e, h, _k = self.resolve(kind, None, interner)
            if not len(e):
                continue
            order = np.argsort(e, kind="stable")
            e, h = e[order], h[order]
            bounds = np.flatnonzero(np.r_[True, e[1:] != e[:-1], True])
            for lo, hi in zip(bounds[:-1].tolist(), bounds[1:].tolist()):
                seq, op, kind_, holder, site, _heads = self.entries[int(e[lo])]
                kept.append((seq, op, kind_, holder, site, h[lo:hi].copy()))
        kept.sort(key=lambda en: en[0])
        self.entries = kept

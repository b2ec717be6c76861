"""Provenance resolution: which acquisitions a ledger says are still outstanding."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from dioscope.sanitizer.ledger import ACQ, REL, Ledger, fmt_holder


def _ledger(events: list[tuple[int, str, object, str, list[int]]]) -> Ledger:
    led = Ledger()
    for op, kind, holder, site, heads in events:
        led.seq += 1
        led.entries.append((led.seq, op, kind, holder, site, np.array(heads, np.int64)))
    return led


def _summary(led: Ledger, kind: str = "pin") -> list[tuple[int, object, str, int]]:
    return [(h.head, h.holder, h.site, h.count) for h in led.holdings(kind)]


def test_named_release_cancels_its_own_holder() -> None:
    led = _ledger(
        [
            (ACQ, "pin", "A", "s1", [7]),
            (ACQ, "pin", "B", "s2", [7]),
            (REL, "pin", "B", "unpin", [7]),
        ]
    )
    assert _summary(led) == [(7, "A", "s1", 1)]


def test_anonymous_release_cancels_the_oldest() -> None:
    led = _ledger(
        [
            (ACQ, "pin", "A", "s1", [7, 8]),
            (ACQ, "pin", "B", "s2", [7]),
            (REL, "pin", None, "unpin", [7]),
        ]
    )
    assert _summary(led) == [(7, "B", "s2", 1), (8, "A", "s1", 1)]


def test_a_holder_releasing_more_than_it_took_spills_to_the_oldest() -> None:
    led = _ledger(
        [
            (ACQ, "pin", "A", "s1", [5]),
            (ACQ, "pin", "B", "s1", [5]),
            (ACQ, "pin", "C", "s1", [5]),
            (REL, "pin", "C", "unpin", [5, 5]),  # one of its own, one more: A's (the oldest)
        ]
    )
    assert _summary(led) == [(5, "B", "s1", 1)]


def test_kinds_are_resolved_separately_and_repeats_count() -> None:
    led = _ledger(
        [
            (ACQ, "pin", "A", "s1", [3, 3, 3]),
            (ACQ, "get", "A", "s2", [3]),
            (REL, "get", "A", "put", [3]),
            (REL, "pin", "A", "unpin", [3]),
        ]
    )
    assert _summary(led, "pin") == [(3, "A", "s1", 2)]
    assert _summary(led, "get") == []


def test_unhashable_holders_are_told_apart_by_identity() -> None:
    a: list[int] = []
    b: list[int] = []
    led = _ledger(
        [
            (ACQ, "pin", a, "s", [1]),
            (ACQ, "pin", b, "s", [1]),
            (REL, "pin", b, "unpin", [1]),
        ]
    )
    (h,) = led.holdings("pin")
    assert h.holder is a


def test_excused_counts_allowed_holders_per_head() -> None:
    led = _ledger(
        [
            (ACQ, "pin", "rdma", "s", [1, 2, 2]),
            (ACQ, "pin", "dio", "s", [2, 4]),
        ]
    )
    assert led.excused("pin", np.array([1, 2, 4]), ["rdma"]).tolist() == [1, 2, 0]


def test_fmt_holder() -> None:
    assert fmt_holder(None) == "no holder"
    assert fmt_holder("bio#3") == "'bio#3'"
    assert fmt_holder(list(range(100))).endswith("...")


EVENTS = st.lists(
    st.tuples(
        st.booleans(),
        st.sampled_from(["A", "B", None]),
        st.lists(st.integers(0, 5), min_size=1, max_size=4),
    ),
    max_size=30,
)


@settings(max_examples=200, deadline=None, derandomize=True)
@given(EVENTS)
def test_outstanding_counts_are_exact_and_compaction_preserves_holdings(
    events: list[tuple[bool, object, list[int]]],
) -> None:
    """With releases never exceeding acquisitions (the sanitizer logs only matched ones),
    survivors per head are acquisitions minus releases, and compaction changes nothing."""
    led = Ledger()
    count = np.zeros(6, np.int64)
    for acquire, holder, heads in events:
        arr = np.array(heads, np.int64)
        if not acquire:
            ok = []
            for h in heads:  # only matched releases are logged
                if count[h] > 0:
                    count[h] -= 1
                    ok.append(h)
            arr = np.array(ok, np.int64)
            if not len(arr):
                continue
        else:
            np.add.at(count, arr, 1)
        led.seq += 1
        led.entries.append((led.seq, ACQ if acquire else REL, "pin", holder, "s", arr))
    _e, survivors, _k = led.resolve("pin")
    assert np.bincount(survivors, minlength=6).tolist() == count.tolist()
    before = _summary(led)
    led.compact()
    assert all(en[1] == ACQ for en in led.entries)
    assert _summary(led) == before

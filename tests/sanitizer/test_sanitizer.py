"""The Sanitizer's API and bookkeeping: attach/detach, recipes, shadow counts, provenance."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dioscope.kernel.config import PROFILES as ALL_PROFILES
from dioscope.kernel.types import PAGE_SHIFT
from dioscope.machine import Kernel
from dioscope.mm.gup import get_user_pages_fast, pin_user_pages_fast
from dioscope.mm.gup_core import FOLL
from dioscope.mm.mmap import MADV_DONTNEED
from dioscope.mm.page_ref import put_page, put_pages
from dioscope.sanitizer import RULES, Sanitizer, SanitizerError, sanitizer

if TYPE_CHECKING:
    from tests.sanitizer.conftest import Rig

RigFor = Callable[..., "Rig"]
PROFILES = tuple(ALL_PROFILES)


def test_detach_unsubscribes_from_hooks_and_events() -> None:
    k = Kernel(mem="64M")
    with Sanitizer(k.pgdat, recipe="r") as san:
        assert k.pgdat.hooks.active and san in k.pgdat.hooks.observers
        assert k.pgdat.events.listeners
    assert not k.pgdat.hooks.active and k.pgdat.hooks.observers == []
    assert k.pgdat.events.listeners == []
    p = k.spawn()
    addr = p.mmap(1 << PAGE_SHIFT)
    p.touch(addr, 1 << PAGE_SHIFT, write=True)
    k.pgdat.events.bug("test", "unseen")
    assert san.outstanding == 0 and san.violations == []
    san.detach()  # idempotent


def test_accepts_a_kernel_and_reattaches() -> None:
    k = Kernel(mem="64M")
    san = Sanitizer(k, recipe="r")
    assert san.pgdat is k.pgdat
    san.detach()
    san.attach()
    k.pgdat.events.bug("somewhere", "pfn:0x1234 exploded")
    (v,) = san.violations
    assert v.rule == "KERNEL-BUG" and v.pfns == (0x1234,)
    san.detach()


def test_every_violation_ends_with_the_recipe(rig: Rig) -> None:
    pfn = int(rig.pin(rig.buf(1), 1)[0])
    put_page(rig.pgdat, pfn)
    rig.san.check_quiescent()
    assert rig.san.violations
    for v in rig.san.violations:
        assert str(v).endswith(f"Replay: {rig.san.recipe}")
        assert str(v).startswith(f"{v.rule}: ")


def test_default_recipe_is_the_current_pytest_node(request: pytest.FixtureRequest) -> None:
    k = Kernel(mem="64M")
    with Sanitizer(k.pgdat) as san:
        k.pgdat.events.bug("x", "y")
    assert request.node.name in san.recipe and san.recipe.startswith("PYTHONPATH=src python")
    assert str(san.violations[0]).endswith(san.recipe)


def test_assert_clean_lists_every_sentence(rig: Rig) -> None:
    rig.san.assert_clean()  # nothing yet
    pages = rig.pin(rig.buf(2), 2)
    put_page(rig.pgdat, int(pages[0]))
    rig.san.check_quiescent()
    with pytest.raises(SanitizerError) as exc:
        rig.san.assert_clean()
    text = str(exc.value)
    assert text.startswith(f"{len(rig.san.violations)} sanitizer violation(s):")
    for v in rig.san.violations:
        assert str(v) in text


def test_rules_are_named_objects() -> None:
    assert set(RULES) == {
        "PIN-BALANCE",
        "RELEASE-KIND",
        "REFCOUNT-NONNEG",
        "NO-FREE-PINNED",
        "PIN-BIAS",
        "KERNEL-BUG",
        "KERNEL-WARN",
    }
    for rid, rule in RULES.items():
        assert rule.id == rid
        assert len(rule.statement) > 80 and rule.kernel_ref
        assert callable(getattr(rule, "check", None))


def test_duplicate_entries_in_one_event_each_count(rig: Rig) -> None:
    pfn = int(rig.pin(rig.buf(1), 1)[0])
    rig.san.on_acquire("pin", np.array([pfn, pfn, pfn]), "h", "test")
    assert rig.san.pins[pfn] == 4
    rig.san.on_release("pin", np.array([pfn, pfn, pfn, pfn]), "h", "test")
    assert rig.san.pins[pfn] == 0 and rig.san.outstanding == 0


def test_check_all_does_not_repeat_a_report(rig: Rig) -> None:
    pfn = int(rig.pin(rig.buf(1), 1)[0])
    rig.pgdat.pages.refcount[pfn] = -5  # as if released 1030 times
    assert [v.rule for v in rig.san.check_all()] == ["REFCOUNT-NONNEG"]
    assert rig.san.check_all() == []
    assert len(rig.san.violations) == 1


def test_provenance_follows_the_releasing_holder(rig: Rig) -> None:
    pfn = int(rig.pin(rig.buf(1), 1, holder="bio-A")[0])
    addr = rig.p.mm.vmas[0].vm_start
    rig.pin(addr, 1, holder="bio-B")
    rig.pin(addr, 1, holder="bio-C")
    rig.unpin(np.array([pfn]), holder="bio-B")  # B finishes first
    rig.unpin(np.array([pfn]))  # anonymous: the oldest outstanding (A)
    assert [(h.holder, h.count) for h in rig.san.holders_of(pfn)] == [("bio-C", 1)]
    rig.san.check_quiescent()
    (v,) = rig.fired_on("PIN-BALANCE", pfn)
    assert "'bio-C'" in v.message and "bio-A" not in v.message and "bio-B" not in v.message


def test_ledger_is_cleared_at_zero_and_compacted_while_pins_stay(
    monkeypatch: pytest.MonkeyPatch, rig_for: RigFor
) -> None:
    monkeypatch.setattr(sanitizer, "LEDGER_COMPACT_AT", 16)
    r = rig_for("5.9-pin")
    addr = r.buf(64)
    for i in range(8):  # balanced traffic: the ledger empties every time
        r.unpin(r.pin(addr, 64, holder=f"dio{i}"))
        assert len(r.san.ledger) == 0
    keep = r.pin(addr, 1, holder="rdma")
    for i in range(40):
        r.unpin(r.pin(addr + (1 << PAGE_SHIFT), 8, holder=f"dio{i}"), holder=f"dio{i}")
    assert len(r.san.ledger) <= 32  # compacted, not 81 entries
    (h,) = r.san.holders_of(int(keep[0]))
    assert (h.holder, h.site, h.count) == ("rdma", "pin_user_pages_fast", 1)
    r.san.allow_outstanding("rdma")
    assert r.san.check_quiescent() == []


def test_unmap_sites_are_not_put_page_on_a_pinned_page(rig: Rig) -> None:
    addr = rig.buf(4)
    pages = rig.pin(addr, 4)
    rig.p.munmap(addr + (1 << PAGE_SHIFT), 2 << PAGE_SHIFT)
    rig.p.madvise(addr, 1 << PAGE_SHIFT, MADV_DONTNEED)
    rig.p.exit()
    assert rig.san.violations == []
    rig.unpin(pages)
    assert rig.san.check_quiescent() == []


def test_a_pipe_buffer_dropping_its_own_reference_is_not_a_kind_error(rig: Rig) -> None:
    pfn = int(rig.pin(rig.buf(1), 1)[0])
    rig.pgdat.pages.refcount[pfn] += 1  # as if a pipe buffer owned the page too
    put_page(rig.pgdat, pfn, site="pipe_buf_release")
    assert rig.san.violations == []
    put_page(rig.pgdat, pfn)  # the same drop from anywhere else is put_page on a pinned page
    assert rig.fired_on("RELEASE-KIND", pfn)


# --- property: correct use never fires, and the shadow agrees with the model --------------
OPS = st.lists(
    st.tuples(
        st.sampled_from(
            ["pin", "pin", "get", "unpin", "put", "unmap", "dontneed", "fork", "write", "exit"]
        ),
        st.integers(0, 19),
        st.integers(1, 4),
        st.booleans(),
    ),
    max_size=40,
)


@settings(
    max_examples=100,
    derandomize=True,  # the same examples every run: CI stays deterministic (STYLE.md 5)
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(profile=st.sampled_from(PROFILES), ops=OPS)
def test_correct_use_is_quiet_and_the_shadow_matches_refcounts(
    rig_for: RigFor, profile: str, ops: list[tuple[str, int, int, bool]]
) -> None:
    """Random correct traffic (pins and references, taken and released in any order, with
    munmap, MADV_DONTNEED, fork, COW writes and exits in between) never fires a rule."""
    r = rig_for(profile)
    addr = r.buf(20, write=True)
    r.p.touch(addr + (16 << PAGE_SHIFT), 4 << PAGE_SHIFT, write=False)
    procs = [r.p]
    held: dict[str, list[np.ndarray]] = {"pin": [], "get": []}
    for op, slot, n, flag in ops:
        proc = procs[slot % len(procs)]
        a = addr + (slot << PAGE_SHIFT)
        length = n << PAGE_SHIFT
        if op in ("pin", "get"):
            if not proc.alive or proc.mm.vma_lookup(a) is None:
                continue
            pages = np.full(n, -1, np.int64)
            fn = pin_user_pages_fast if op == "pin" else get_user_pages_fast
            got = fn(proc.mm, a, n, FOLL.FOLL_WRITE if flag else 0, pages, holder=op)
            if got > 0:
                held[op].append(pages[:got].copy())
        elif op in ("unpin", "put"):
            kind = "pin" if op == "unpin" else "get"
            if held[kind]:
                pages = held[kind].pop(slot % len(held[kind]))
                if op == "unpin":
                    r.unpin(pages)
                else:
                    put_pages(r.pgdat, pages)
        elif not proc.alive:
            continue
        elif op == "unmap":
            proc.munmap(a, length)
        elif op == "dontneed":
            with contextlib.suppress(OSError):  # ENOMEM for a hole: the rest is still done
                proc.madvise(a, length, MADV_DONTNEED)
        elif op == "fork" and len(procs) < 4:
            procs.append(r.k.fork(proc))
        elif op == "write":
            proc.touch(a, length, write=True)
        elif op == "exit" and proc is not r.p:
            proc.exit()
        assert r.san.check_all() == []
    assert r.san.violations == []
    # Small private pages: refcount = 1024 * pins + gets + PTE mappings.
    p = r.pgdat.pages
    touched = np.unique(np.concatenate([np.empty(0, np.int64)] + held["pin"] + held["get"]))
    touched = touched[(touched > 0) & (p.order[touched] == 0)]
    expect = 1024 * r.san.pins[touched] + r.san.gets[touched] + p.mapcount[touched]
    assert (p.refcount[touched] == expect).all()
    for pages in held["pin"]:
        r.unpin(pages)
    for pages in held["get"]:
        put_pages(r.pgdat, pages)
    for proc in procs:
        proc.exit()
    assert r.san.check_quiescent() == []
    assert r.san.violations == []

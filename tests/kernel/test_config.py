"""kernel/config.py: the three profiles' switch tables, derive(), lookup, and that every
switch's docstring cites the commit or patch it stands for (STYLE.md item 2).
"""

from __future__ import annotations

import dataclasses
import re

import pytest

from dioscope.kernel.config import (
    DEFAULT_PROFILE,
    PROFILES,
    Profile,
    get_profile,
    switch_docs,
)
from dioscope.machine import Kernel

# switch: (5.9, 5.9-pin, 6.18). A new switch must be added here with its value per profile.
TABLE: dict[str, tuple[bool, bool, bool]] = {
    "FOLL_PIN_ACCOUNTING": (True, True, True),
    "PINCOUNT_ANY_LARGE_FOLIO": (False, False, True),
    "ZERO_PAGE_NEVER_PINNED": (False, False, True),
    "FOLIO_ADD_PIN": (False, False, True),
    "PIN_PAGE": (False, True, False),
    "GUP_FORCED_COW": (False, False, False),
    "EARLY_COW_PINNED_AT_FORK": (True, True, True),
    "ANON_EXCLUSIVE": (False, False, True),
    "GUP_LONGTERM_RO_UNSHARE": (False, False, True),
    "THP_ON_HUGE_ZERO_WP": (False, False, True),
    "DIO_FOLL_PIN": (False, True, True),
    "IOV_ITER_PIN_PAGES": (False, True, False),
    "IOV_ITER_EXTRACT": (False, False, True),
    "ITER_PIPE": (True, True, False),
    "ITER_UBUF": (False, False, True),
    "GUP_ARGS_6X": (False, False, True),
    "DIO_MEM_ALIGN_DMA": (False, False, True),
    "PLUG_MERGE_LAST_RQ": (False, False, True),
    "TRACE_RQ_IOPRIO": (False, False, True),
    "IOMAP_ITER_DIO": (False, False, True),
    "DIO_READ_REQ_SYNC": (False, False, True),
    "BIO_SPLIT_DMA_ALIGN_CHECK": (False, False, True),
    "STATX_DIOALIGN": (False, False, True),
    "DIO_NOWAIT_READ_NEEDS_WRITEBACK": (False, False, True),
    "EXT4_DIO_SHARED_OVERWRITE": (False, False, True),
}
NAMES = ("5.9", "5.9-pin", "6.18")


def test_the_three_profiles_exist():
    assert list(PROFILES) == list(NAMES)
    assert all(PROFILES[n].name == n and not PROFILES[n].is_variant for n in NAMES)
    assert DEFAULT_PROFILE is PROFILES["5.9-pin"]


def test_every_switch_is_in_the_table():
    assert set(PROFILES["5.9"].switches()) == set(TABLE)


@pytest.mark.parametrize("column", range(3), ids=NAMES)
def test_switch_table(column):
    profile = PROFILES[NAMES[column]]
    assert profile.switches() == {name: row[column] for name, row in TABLE.items()}


def test_switches_are_bools_and_exclude_the_name():
    for profile in PROFILES.values():
        sw = profile.switches()
        assert "name" not in sw
        assert all(type(v) is bool for v in sw.values())


def test_5_9_pin_differs_from_5_9_only_by_the_series():
    a, b = PROFILES["5.9"].switches(), PROFILES["5.9-pin"].switches()
    assert {k for k in a if a[k] != b[k]} == {"PIN_PAGE", "DIO_FOLL_PIN", "IOV_ITER_PIN_PAGES"}


# === derive() ================================================================================
def test_derive_names_the_variant_after_its_parent():
    base = PROFILES["5.9"]
    v = base.derive(GUP_FORCED_COW=True)
    assert v.name == "5.9+GUP_FORCED_COW" and v.is_variant
    assert v.GUP_FORCED_COW and not base.GUP_FORCED_COW  # the parent is untouched
    assert {k for k in v.switches() if v.switches()[k] != base.switches()[k]} == {"GUP_FORCED_COW"}


def test_derive_with_several_switches_sorts_them_in_the_name():
    v = PROFILES["6.18"].derive(ZERO_PAGE_NEVER_PINNED=False, ANON_EXCLUSIVE=False)
    assert v.name == "6.18+ANON_EXCLUSIVE,ZERO_PAGE_NEVER_PINNED"
    assert not v.ZERO_PAGE_NEVER_PINNED and not v.ANON_EXCLUSIVE


def test_derive_of_a_variant_keeps_the_chain():
    v = PROFILES["5.9"].derive(GUP_FORCED_COW=True).derive(EARLY_COW_PINNED_AT_FORK=False)
    assert v.name == "5.9+GUP_FORCED_COW+EARLY_COW_PINNED_AT_FORK"
    assert v.GUP_FORCED_COW and not v.EARLY_COW_PINNED_AT_FORK


def test_derive_with_an_explicit_name():
    v = PROFILES["5.9"].derive(name="exp", PIN_PAGE=True)
    assert v.name == "exp" and v.PIN_PAGE


@pytest.mark.parametrize("bad", [{"NO_SUCH_SWITCH": True}, {"dio_foll_pin": True}])
def test_derive_rejects_unknown_switches(bad):
    with pytest.raises(ValueError, match="unknown switch"):
        PROFILES["5.9"].derive(**bad)


def test_profiles_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        PROFILES["5.9"].PIN_PAGE = True  # type: ignore[misc]
    assert PROFILES["5.9"].PIN_PAGE is False


def test_a_derived_profile_drives_a_kernel():
    cfg = PROFILES["5.9"].derive(GUP_FORCED_COW=True)
    k = Kernel("8M", cfg)
    assert k.cfg is cfg and k.pgdat.cfg is cfg


# === lookup ==================================================================================
@pytest.mark.parametrize("name", NAMES)
def test_get_profile_by_name_and_object(name):
    assert get_profile(name) is PROFILES[name]
    assert get_profile(PROFILES[name]) is PROFILES[name]
    assert Kernel("8M", name).cfg is PROFILES[name]


def test_get_profile_default():
    assert get_profile(None) is DEFAULT_PROFILE
    assert Kernel("8M").cfg is DEFAULT_PROFILE


@pytest.mark.parametrize("bad", ["5.10", "6.18+", "", "default"])
def test_get_profile_unknown(bad):
    with pytest.raises(ValueError, match=r"unknown profile .*known: 5\.9, 5\.9-pin, 6\.18"):
        get_profile(bad)


# === switch docs =============================================================================
# STYLE.md item 2: 'Linux commit c8070b787519 ("mm: Don't pin ZERO_PAGE in pin_user_pages()")
# (v6.5)', or a never-merged patch cited as [PATCH ...].
COMMIT = re.compile(r'\b[0-9a-f]{12} \("[^"]+"\)')
PATCH = re.compile(r"\[PATCH[^\]]*\] \"[^\"]+\"")


def test_every_switch_has_a_docstring():
    docs = switch_docs()
    assert set(docs) == set(TABLE)
    assert all(len(doc) > 40 for doc in docs.values())


UNCITED: dict[str, str] = {
    "DIO_READ_REQ_SYNC": "cites the current source and a host trace, not the commit that "
    "made iomap read bios REQ_SYNC | REQ_IDLE",
}


@pytest.mark.parametrize(
    "switch",
    [
        pytest.param(
            s,
            marks=pytest.mark.xfail(strict=True, reason=f"config.py: {s} {UNCITED[s]}")
            if s in UNCITED
            else (),
        )
        for s in TABLE
    ],
)
def test_switch_doc_names_a_commit_or_patch(switch):
    doc = switch_docs()[switch]
    assert COMMIT.search(doc) or PATCH.search(doc), doc


def test_profile_docstrings_are_read_from_the_class():
    """switch_docs() parses the class body; a docstring must follow each switch directly."""
    fields = [f.name for f in dataclasses.fields(Profile) if f.name != "name"]
    assert list(switch_docs()) == fields

"""Fixtures shared by the mm tests: a small model machine per profile, and a leak check.

``k`` is a fresh :class:`~dioscope.machine.Kernel` with 32 MiB of memory, once per profile.
``snapshot(k)`` records every page's refcount, pincount and mapcounts, the free page count
and the FOLL_PIN counters; ``.assert_restored(k)`` later proves that nothing leaked: every
per-page count is back to its recorded value, no page is missing from the free lists, and
``nr_foll_pin_acquired - nr_foll_pin_released`` is what it was.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from dioscope.machine import Kernel
from dioscope.sanitizer.snapshot import MemSnapshot

PROFILE_NAMES = ("5.9", "5.9-pin", "6.18")
MEM = "32M"


@pytest.fixture(params=PROFILE_NAMES)
def k(request: pytest.FixtureRequest) -> Kernel:
    """A fresh machine under each of the three profiles."""
    return Kernel(MEM, request.param)


MemState = MemSnapshot
"""The mm tests check every count: refcount, pincount, mapcount, entire_mapcount."""


@pytest.fixture
def snapshot() -> Callable[[Kernel], MemState]:
    """``snapshot(k)``: the machine's counts now (see :class:`MemState`)."""
    return MemState.of

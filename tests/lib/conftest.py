"""Fixtures shared by the lib tests: a small model machine per profile, a process in it, and
a leak check.

``k`` is a fresh :class:`~dioscope.machine.Kernel` with 32 MiB of memory, once per profile;
``proc`` is a process of it. ``snapshot(k)`` records every page's refcount and pincount, the
free page count and the FOLL_PIN counters; ``.assert_restored(k)`` later proves that every
reference and pin taken since was given back, and ``.delta(k)`` gives the (acquired,
released) vmstat deltas.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import pytest

from dioscope.machine import Kernel
from dioscope.sanitizer.snapshot import MemSnapshot
from dioscope.syscalls.process import Process

PROFILE_NAMES = ("5.9", "5.9-pin", "6.18")
MEM = "32M"


@pytest.fixture(params=PROFILE_NAMES)
def k(request: pytest.FixtureRequest) -> Kernel:
    """A fresh machine under each of the three profiles."""
    return Kernel(MEM, request.param)


@pytest.fixture
def proc(k: Kernel) -> Process:
    """A process of ``k`` with an empty address space."""
    return k.spawn()


class MemState(MemSnapshot):
    """A :class:`~dioscope.sanitizer.snapshot.MemSnapshot` whose restore check covers the
    counts GUP and iov_iter change: refcounts and pincounts."""

    def assert_restored(self, k: Kernel, fields: Sequence[str] = ("refcount", "pincount")) -> None:
        super().assert_restored(k, fields)


@pytest.fixture
def snapshot() -> Callable[[Kernel], MemState]:
    """``snapshot(k)``: the machine's counts now (see :class:`MemState`)."""
    return MemState.of


@pytest.fixture
def k6() -> Kernel:
    """A fresh 6.18 machine, for what exists only there (ITER_UBUF, extract, is_aligned)."""
    return Kernel(MEM, "6.18")


@pytest.fixture(params=("5.9", "5.9-pin"))
def k59(request: pytest.FixtureRequest) -> Kernel:
    """A fresh machine of each 5.9 profile, for what exists only there (ITER_PIPE,
    iov_iter_get_pages)."""
    return Kernel(MEM, request.param)

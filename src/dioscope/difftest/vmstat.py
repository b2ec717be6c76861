"""The host's FOLL_PIN counters: ``nr_foll_pin_acquired`` / ``nr_foll_pin_released``.

The counters are node vmstat items kept in per-CPU deltas; writing to
``/proc/sys/vm/stat_refresh`` folds them, after which ``/proc/vmstat`` is exact.  They are
system-wide, so a measurement is only as good as the quiet around it (DESIGN.md §7): an empty
window is measured before each step and the step is measured again when the counters moved
while nothing of ours ran.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass

STAT_REFRESH = "/proc/sys/vm/stat_refresh"
VMSTAT = "/proc/vmstat"
ACQ, REL = "nr_foll_pin_acquired", "nr_foll_pin_released"


def refresh() -> None:
    """Fold the per-CPU vmstat deltas (write "1" to stat_refresh)."""
    fd = os.open(STAT_REFRESH, os.O_WRONLY)
    try:
        try:
            os.write(fd, b"1")
        except OSError:
            # The kernel returns EINVAL after folding when some counter is transiently
            # negative; the fold has still happened.
            pass
    finally:
        os.close(fd)


def read_pins() -> tuple[int, int]:
    """Refresh and return (nr_foll_pin_acquired, nr_foll_pin_released)."""
    refresh()
    acq = rel = -1
    with open(VMSTAT, "rb") as f:
        for line in f.read().split(b"\n"):
            if line.startswith(b"nr_foll_pin_"):
                k, v = line.split()
                if k == ACQ.encode():
                    acq = int(v)
                elif k == REL.encode():
                    rel = int(v)
    if acq < 0 or rel < 0:
        raise OSError(f"{VMSTAT} has no {ACQ}/{REL}")
    return acq, rel


def pins_unavailable() -> str | None:
    """Return why pins cannot be measured here, or None when they can."""
    if not os.path.exists(STAT_REFRESH):
        return f"no {STAT_REFRESH}"
    try:
        read_pins()
    except OSError as e:
        return f"cannot read the pin counters: {e}"
    return None


@dataclass
class Measurement:
    """Pin deltas of one step: ``noise`` says why they may include someone else's pins."""

    pins: tuple[int, int]
    attempts: int
    noise: str | None


def _delta(a: tuple[int, int], b: tuple[int, int]) -> tuple[int, int]:
    return b[0] - a[0], b[1] - a[1]


def quiet_window(max_wait: float = 5.0) -> tuple[tuple[int, int], str | None]:
    """Wait for an empty window (two reads in a row equal); return the counters.

    Return: (counters, None), or (last counters, reason) when no quiet window came in time.
    """
    deadline = time.monotonic() + max_wait
    prev = read_pins()
    pause = 0.001
    while True:
        cur = read_pins()
        if cur == prev:
            return cur, None
        if time.monotonic() > deadline:
            d = _delta(prev, cur)
            return (
                cur,
                f"the counters kept moving for {max_wait:g} s before the step "
                f"(last empty window {list(d)})",
            )
        prev = cur
        time.sleep(pause)
        pause = min(pause * 2, 0.05)


def settle(first: tuple[int, int], max_wait: float = 1.0) -> tuple[tuple[int, int], bool]:
    """Read until two reads in a row are equal, starting from ``first``.

    Return: (counters, moved) where ``moved`` tells whether anything changed after ``first``.
    """
    deadline = time.monotonic() + max_wait
    prev, moved = first, False
    while True:
        cur = read_pins()
        if cur == prev or time.monotonic() > deadline:
            return cur, moved or cur != prev
        moved = True
        prev = cur
        time.sleep(0.001)


def measure(run: Callable[[], None], *, repeatable: bool, max_attempts: int = 5) -> Measurement:
    """Measure the pin deltas of ``run``.

    Each attempt: wait for an empty window, run, read, then read again; the attempt is clean
    when both the window before and the window after are empty.  ``run`` is called again only
    when ``repeatable`` (idempotent steps such as reads at a fixed offset); otherwise a noisy
    result is returned with the reason.  Pins released after the step returned (deferred bio
    completion) are included by reading until the counters settle.
    """
    noise: str | None = None
    pins = (0, 0)
    attempts = max_attempts if repeatable else 1
    for attempt in range(1, attempts + 1):
        before, pre_noise = quiet_window()
        run()
        after, moved = settle(read_pins())
        pins = _delta(before, after)
        if pre_noise is None and not moved:
            return Measurement(pins, attempt, None)
        noise = pre_noise or "the counters moved after the step returned"
        if attempt < attempts:
            time.sleep(0.01 * attempt)
    if repeatable:
        noise = f"{noise}, in all {attempts} attempts"
    return Measurement(pins, attempts, noise)

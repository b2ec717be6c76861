"""The pin measurement protocol: empty window first, retries on noise (DESIGN.md §7)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from dioscope.difftest import vmstat


def _feed(
    monkeypatch: pytest.MonkeyPatch, values: list[tuple[int, int]]
) -> tuple[list[int], Callable[[], None]]:
    """Make read_pins return ``values`` in turn; return a call counter and a step to run."""
    it: Iterator[tuple[int, int]] = iter(values)
    calls = [0]
    monkeypatch.setattr(vmstat, "read_pins", lambda: next(it))
    monkeypatch.setattr(vmstat.time, "sleep", lambda s: None)

    def run() -> None:
        calls[0] += 1

    return calls, run


def test_clean_measurement(monkeypatch: pytest.MonkeyPatch) -> None:
    # window (10,10),(10,10); step; after (12,12),(12,12)
    calls, run = _feed(monkeypatch, [(10, 10), (10, 10), (12, 12), (12, 12)])
    m = vmstat.measure(run, repeatable=False)
    assert (m.pins, m.attempts, m.noise, calls[0]) == ((2, 2), 1, None, 1)


def test_noisy_window_before_is_waited_out(monkeypatch: pytest.MonkeyPatch) -> None:
    calls, run = _feed(monkeypatch, [(0, 0), (5, 5), (5, 5), (7, 7), (7, 7)])
    m = vmstat.measure(run, repeatable=False)
    assert (m.pins, m.attempts, m.noise, calls[0]) == ((2, 2), 1, None, 1)


def test_noise_after_a_repeatable_step_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    seq = [(0, 0), (0, 0), (3, 3), (4, 4), (4, 4)]  # moved after the step: noisy
    seq += [(4, 4), (4, 4), (6, 6), (6, 6)]  # second attempt clean
    calls, run = _feed(monkeypatch, seq)
    m = vmstat.measure(run, repeatable=True)
    assert (m.pins, m.attempts, m.noise, calls[0]) == ((2, 2), 2, None, 2)


def test_noise_after_a_one_shot_step_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    calls, run = _feed(monkeypatch, [(0, 0), (0, 0), (3, 3), (4, 4), (4, 4)])
    m = vmstat.measure(run, repeatable=False)
    assert (m.pins, m.attempts, calls[0]) == ((4, 4), 1, 1)
    assert m.noise == "the counters moved after the step returned"

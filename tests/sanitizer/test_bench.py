"""The overhead benchmark runs (a smoke test: timings are printed, never asserted)."""

from __future__ import annotations

import pytest

from dioscope.sanitizer.bench import main, measure


def test_measure_returns_both_timings() -> None:
    r = measure(mem="64M", nr_pages=2048, batch=256, repeat=1)
    assert set(r) == {"off", "on", "overhead"}
    assert r["off"] > 0 and r["on"] > 0


def test_main_prints_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    main(["--mem", "64M", "--pages", "1024", "--batch", "128", "--repeat", "1"])
    out = capsys.readouterr().out
    assert out.startswith("pin+unpin 1024 pages in 128-page batches: sanitizer off ")

"""Run the benchmarks in ``bench/bench_*.py`` and collect their figures.

Usage: ``python bench/run.py [NAME...]``, NAME being a module name (``bench_gup``), its short
form (``gup``) or its path. With no NAME every module runs.

Each module defines ``run() -> dict[str, dict]``::

    {"figure.name": {"value": float, "unit": str, "goal": str (optional)}}

The figures of all modules are merged, printed as a table and written to
``.bench/results.json`` as ``{"figure.name": {"value": number, "unit": str, "goal": ...}}``
(a full run replaces the file; a run of some modules updates their figures in it).
A module that raises, or returns something of the wrong shape, is reported and makes the run
exit non-zero; the figures of the others are still written.
"""

from __future__ import annotations

import importlib.util
import json
import math
import sys
import time
import traceback
from pathlib import Path
from types import ModuleType
from typing import Any

from rich.console import Console
from rich.table import Table

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
RESULTS = ROOT / ".bench" / "results.json"

Figures = dict[str, dict[str, Any]]


def discover() -> dict[str, Path]:
    """Every ``bench/bench_*.py``, by module name, in name order."""
    return {p.stem: p for p in sorted(BENCH_DIR.glob("bench_*.py"))}


def select(available: dict[str, Path], names: list[str]) -> dict[str, Path]:
    """The modules named on the command line; raise KeyError naming an unknown one."""
    if not names:
        return available
    chosen: dict[str, Path] = {}
    for name in names:
        stem = Path(name).stem
        if not stem.startswith("bench_"):
            stem = "bench_" + stem
        if stem not in available:
            raise KeyError(name)
        chosen[stem] = available[stem]
    return chosen


def load(name: str, path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def validate(name: str, result: object) -> Figures:
    """Check the shape of one module's ``run()`` result; return it normalised."""
    if not isinstance(result, dict):
        raise TypeError(f"{name}.run() returned {type(result).__name__}, not dict")
    figures: Figures = {}
    for figure, entry in result.items():
        if not isinstance(figure, str) or not isinstance(entry, dict):
            raise TypeError(f"{name}: figure {figure!r} is not str -> dict")
        value, unit = entry.get("value"), entry.get("unit")
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise TypeError(f"{name}: {figure}: value {value!r} is not a number")
        if not math.isfinite(value):
            raise ValueError(f"{name}: {figure}: value {value!r} is not finite")
        if not isinstance(unit, str):
            raise TypeError(f"{name}: {figure}: unit {unit!r} is not a string")
        out: dict[str, Any] = {"value": value, "unit": unit}
        goal = entry.get("goal")
        if goal is not None:
            out["goal"] = str(goal)
        figures[figure] = out
    return figures


def fmt(value: float) -> str:
    if isinstance(value, int) or float(value).is_integer():
        return f"{int(value):,}"
    return f"{value:,.4g}" if abs(value) < 1000 else f"{value:,.1f}"


def main(argv: list[str]) -> int:
    console = Console()
    sys.path.insert(0, str(BENCH_DIR))  # so benchmarks can share helpers in bench/
    available = discover()
    try:
        modules = select(available, argv)
    except KeyError as e:
        known = ", ".join(available) or "none"
        console.print(f"[red]unknown benchmark {e.args[0]!r}[/red] (known: {known})")
        return 2
    if not modules:
        console.print("no benchmarks found (bench/bench_*.py)")

    from dioscope import _native  # after sys.path: the compiled hot path or not (ARCHITECTURE)

    console.print("model: " + (f"compiled hot path ({len(_native.MODULES)} modules, mypyc)"
                               if _native.ACTIVE else f"pure Python ({_native.REASON})"))
    merged: Figures = {"model.native_modules": {"value": len(_native.MODULES),
                                                "unit": "modules compiled"}}
    owner: dict[str, str] = dict.fromkeys(merged, "run.py")
    failed: list[str] = []
    for name, path in modules.items():
        console.print(f"[bold]{name}[/bold] ...", end=" ")
        t0 = time.perf_counter()
        try:
            figures = validate(name, load(name, path).run())
            clash = sorted(set(figures) & set(merged))
            if clash:
                raise ValueError(f"{name}: figures already reported by {owner[clash[0]]}: {clash}")
        except Exception:
            console.print("[red]FAILED[/red]")
            console.print(traceback.format_exc(), markup=False, highlight=False)
            failed.append(name)
            continue
        console.print(f"{len(figures)} figures, {time.perf_counter() - t0:.1f} s")
        merged.update(figures)
        owner.update(dict.fromkeys(figures, name))

    table = Table(title="dioscope benchmarks")
    table.add_column("figure")
    table.add_column("value", justify="right")
    table.add_column("unit")
    table.add_column("goal")
    for figure in sorted(merged):
        entry = merged[figure]
        table.add_row(figure, fmt(entry["value"]), entry["unit"], entry.get("goal", ""))
    console.print(table)

    written = dict(merged)
    if argv and RESULTS.exists():
        try:
            written = json.loads(RESULTS.read_text()) | merged
        except (OSError, ValueError, TypeError):
            pass
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(dict(sorted(written.items())), indent=2) + "\n")
    console.print(f"wrote {RESULTS.relative_to(ROOT)}")
    if failed:
        console.print(f"[red]{len(failed)} benchmark(s) failed: {', '.join(failed)}[/red]")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""``dioscope run`` and ``dioscope diff``: scenarios in the model, and host against model.

Both print one verdict line per scenario (``ok NAME``, ``FAIL NAME: <first mismatch>``,
``skip NAME: <reason>``; with several profiles the name carries ``[profile]``), then the
closing line ``N passed, N failed[, N skipped]``, and return the exit status: 1 when anything
failed, else 0. A scenario file that does not load is one FAIL line naming the file.

Harness code; ``cli.py`` imports this module lazily.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from dioscope.difftest import host as host_mod
from dioscope.difftest.results import (
    ScenarioResult,
    StepResult,
    check_expectations,
    compare_results,
    format_bios,
    summary_line,
    verdict_line,
)
from dioscope.scenarios.format import (
    PROFILES,
    Scenario,
    ScenarioError,
    find_scenarios,
    load_scenario,
)

Echo = Callable[[str], None]
DIFF_PROFILE = "6.18"


class _Tally:
    """Verdict counts and the JSON records of one command."""

    def __init__(self, echo: Echo) -> None:
        self.echo = echo
        self.passed = self.failed = self.skipped = 0
        self.records: list[dict[str, Any]] = []

    def verdict(self, name: str, mismatches: list[str], skipped: str | None = None,
                **record: Any) -> str:
        line = verdict_line(name, mismatches, skipped)
        if skipped is not None:
            self.skipped += 1
        elif mismatches:
            self.failed += 1
        else:
            self.passed += 1
        self.echo(line)
        self.records.append({"verdict": line, "mismatches": mismatches, "skipped": skipped,
                             **record})
        return line

    def summary(self) -> str:
        return summary_line(self.passed, self.failed, self.skipped)

    def finish(self, command: str, json_path: str | None, **extra: Any) -> int:
        self.echo(self.summary())
        if json_path is not None:
            doc = {
                "command": command,
                **extra,
                "results": self.records,
                "summary": {"passed": self.passed, "failed": self.failed,
                            "skipped": self.skipped, "line": self.summary()},
            }
            Path(json_path).write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n")
        return 1 if self.failed else 0


def load_all(paths: Iterable[str | Path], tally: _Tally) -> list[Scenario]:
    """Load every scenario under ``paths``; a file that does not load (or repeats a name)
    is a FAIL line and is left out."""
    out: list[Scenario] = []
    seen: dict[str, str] = {}
    for p in find_scenarios(paths):
        try:
            sc = load_scenario(p)
        except ScenarioError as e:
            msg = str(e)
            prefix = f"{p}: "
            tally.verdict(str(p), [msg[len(prefix):] if msg.startswith(prefix) else msg],
                          path=str(p))
            continue
        if sc.name in seen:
            tally.verdict(sc.name, [f'{p}: the name is already used by {seen[sc.name]}'],
                          path=str(p))
            continue
        seen[sc.name] = str(p)
        out.append(sc)
    return out


# --------------------------------------------------------------------------------------------
# dioscope run


def run_command(paths: Sequence[str], profile: str = "all", json_path: str | None = None,
                echo: Echo = print) -> int:
    """Run every scenario under ``paths`` in the model under ``profile`` (or all profiles)
    and check its expectations. Return: the exit status."""
    from dioscope.difftest.model import run_model

    tally = _Tally(echo)
    profiles = list(PROFILES) if profile == "all" else [profile]
    scenarios = load_all(paths, tally)
    for sc in scenarios:
        for prof in profiles:
            name = f"{sc.name} [{prof}]" if len(profiles) > 1 else sc.name
            if prof not in sc.profiles:
                tally.verdict(name, [], f"not for profile {prof}", name_only=sc.name,
                              path=sc.path, profile=prof)
                continue
            res = run_model(sc, prof)
            tally.verdict(name, check_expectations(sc, res, prof), res.skipped,
                          name_only=sc.name, path=sc.path, profile=prof,
                          result=res.to_dict())
    return tally.finish("run", json_path, profiles=profiles)


# --------------------------------------------------------------------------------------------
# dioscope diff


def _workdir(workdir: str | None) -> str:
    return str(workdir or os.environ.get(host_mod.WORKDIR_ENV) or host_mod.DEFAULT_WORKDIR)


def diff_command(paths: Sequence[str], json_path: str | None = None, *, bios: bool = False,
                 explain: bool = False, workdir: str | None = None,
                 echo: Echo = print) -> int:
    """Run every scenario under ``paths`` on the host and in the model (profile 6.18, the
    host device's queue limits); report every difference and every expectation the host
    does not meet. Return: the exit status."""
    from dioscope.block.blk_settings import QueueLimits
    from dioscope.difftest import tracefs
    from dioscope.difftest.model import run_model

    tally = _Tally(echo)
    scenarios = load_all(paths, tally)
    if explain and len(scenarios) != 1:
        raise ValueError(f"--explain takes exactly one scenario, not {len(scenarios)}")
    base = _workdir(workdir)
    why = host_mod.host_unavailable(base)
    limits = None
    if why is None:
        try:
            limits = QueueLimits.from_host(base)
        except (OSError, ValueError) as e:
            why = f"cannot read the queue limits of the disk holding {base}: {e}"
    if why is not None:
        for sc in scenarios:
            tally.verdict(sc.name, [], why, path=sc.path)
        return tally.finish("diff", json_path, workdir=base)
    if bios or explain:
        no_trace = tracefs.tracefs_unavailable()
        if no_trace is not None:
            echo(f"note: the host's bios are not captured: {no_trace}")
    for sc in scenarios:
        if not sc.host:
            tally.verdict(sc.name, [], "model-only scenario (host = false)", path=sc.path)
            continue
        if DIFF_PROFILE not in sc.profiles:
            tally.verdict(sc.name, [], f"not for profile {DIFF_PROFILE}", path=sc.path)
            continue
        host = host_mod.run_host(sc, base, bios=bios or explain)
        if host.skipped is not None:
            tally.verdict(sc.name, [], host.skipped, path=sc.path)
            continue
        model = run_model(sc, DIFF_PROFILE, limits, bios=bios or explain, explain=explain)
        mismatches = compare_results(sc, host, model, bios=bios)
        mismatches += [f"{s} (on the host)" for s in check_expectations(sc, host, DIFF_PROFILE)]
        if explain:
            for line in explain_lines(sc, host, model):
                echo(line)
        tally.verdict(sc.name, mismatches, path=sc.path, host=host.to_dict(),
                      model=model.to_dict())
    return tally.finish("diff", json_path, workdir=base, profile=DIFF_PROFILE,
                        device=limits.__dict__ if limits is not None else None)


def _numbers(r: StepResult | None) -> str:
    if r is None:
        return "did not run"
    if r.crash is not None:
        return f"crashed with {r.crash}"
    parts = [f"ret {r.outcome}"]
    if r.pins is not None:
        parts.append(f"pins [{r.pins[0]}, {r.pins[1]}]")
    if r.data is not None:
        parts.append(f"data {r.data}" + (f" ({r.data_detail})" if r.data_detail else ""))
    if r.transferred is not None:
        parts.append(f"transferred {r.transferred}")
    if r.tail is not None:
        parts.append("tail " + (" and ".join(r.tail) if r.tail else "modified"))
    if r.noise:
        parts.append(f"noise: {r.noise}")
    return ", ".join(parts)


def explain_lines(sc: Scenario, host: ScenarioResult, model: ScenarioResult) -> list[str]:
    """Each step of ``sc``: the host's numbers next to the model's, then the model's view
    (bios, requests, the pages it got or pinned and their counts while held)."""
    dev = ", ".join(f"{k} {v}" for k, v in model.device.items())
    out = [f"explain {sc.name}: host {host.kernel}, model {model.kernel} ({dev})"]
    for step in sc.steps:
        h, m = host.step(step.index), model.step(step.index)
        if not step.measured and (m is None or m.crash is None):
            out.append(f"  {step.label}: host {h.outcome if h else 'did not run'}, "
                       f"model {m.outcome if m else 'did not run'}")
            continue
        out.append(f"  {step.label}")
        out.append(f"    host:  {_numbers(h)}")
        out.append(f"    model: {_numbers(m)}")
        if h is not None and h.bios is not None:
            out.append(f"    host bios:  {format_bios(h.bios, 12)}")
        if m is not None and m.bios is not None:
            out.append(f"    model bios: {format_bios(m.bios, 12)}")
        for v in (m.view or []) if m is not None else []:
            out.append(f"    model: {v}")
        if m is not None and m.note:
            out.append(f"    model events: {m.note}")
    for r in (host, model):
        if r.error:
            out.append(f"  {r.runner} runner: {r.error}")
    return out

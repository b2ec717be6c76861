"""Normalised results of running a scenario, and checking them against its expectations.

Both runners (host and model) produce a ScenarioResult; every mismatch between a result and an
expectation, or between two results, is one readable sentence naming the step, e.g.
``step 3 (preadv): expected ret 1024, got -EINVAL``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from dioscope.scenarios.format import Expect, Scenario, Step

DATA_OK = "ok"
DATA_MISMATCH = "mismatch"


@dataclass
class StepResult:
    """What one step did.

    ``ret``/``errno``: the return value, or the errno name when the call failed (``ret`` is then
    None). ``pins``: (acquired, released) deltas, only for measured steps. ``data``: "ok" or
    "mismatch" (``data_detail`` says where). ``transferred``: leading request bytes that moved,
    in whole logical blocks. ``tail``: which of "zero" / "untouched" hold for the destination
    bytes past ``ret`` within the request (an empty tuple: modified). ``noise``: why the pin
    measurement may be unreliable; ``attempts``: how many times the step was measured.
    ``crash``: the exception the model raised in this step (``"IndexError: ..."``), a model
    bug; ``ret`` and ``errno`` are then None. ``bios``: with bio capture, the step's
    ``block_bio_queue`` events as (rwbs, offset in the file or None, bytes). ``view``: the
    model's own account of the step (bios, requests, page references), for ``--explain``.
    """

    index: int
    op: str
    measured: bool = False
    ret: int | None = None
    errno: str | None = None
    pins: tuple[int, int] | None = None
    data: str | None = None
    data_detail: str | None = None
    transferred: int | None = None
    tail: tuple[str, ...] | None = None
    noise: str | None = None
    attempts: int = 1
    note: str | None = None
    crash: str | None = None
    bios: list[tuple[str, int | None, int]] | None = None
    view: list[str] | None = None

    @property
    def label(self) -> str:
        """The step's name in sentences: ``step 3 (preadv)``."""
        return f"step {self.index} ({self.op})"

    @property
    def outcome(self) -> str:
        """The return value as text: ``1024`` or ``-EINVAL`` (``a crash`` for a crash)."""
        if self.crash is not None:
            return "a crash"
        return format_outcome(self.ret, self.errno)

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-serialisable dict."""
        d = asdict(self)
        d["pins"] = list(self.pins) if self.pins is not None else None
        d["tail"] = list(self.tail) if self.tail is not None else None
        d["bios"] = [list(b) for b in self.bios] if self.bios is not None else None
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> StepResult:
        """Rebuild a StepResult from ``to_dict`` output."""
        d = dict(d)
        if d.get("pins") is not None:
            d["pins"] = (int(d["pins"][0]), int(d["pins"][1]))
        if d.get("tail") is not None:
            d["tail"] = tuple(d["tail"])
        if d.get("bios") is not None:
            d["bios"] = [(str(b[0]), b[1], int(b[2])) for b in d["bios"]]
        return cls(**d)


@dataclass
class ScenarioResult:
    """The result of running one scenario with one runner.

    ``runner`` is "host" or "model"; ``kernel`` the host's release or the model's profile.
    ``skipped`` holds the reason when the runner could not answer; ``error`` a sentence when
    the runner itself failed at a step (the steps after it did not run).
    """

    name: str
    path: str
    runner: str
    kernel: str = ""
    skipped: str | None = None
    error: str | None = None
    steps: list[StepResult] = field(default_factory=list)
    device: dict[str, int] = field(default_factory=dict)

    def step(self, index: int) -> StepResult | None:
        """Return the result of step ``index`` (1-based), or None if it did not run."""
        for s in self.steps:
            if s.index == index:
                return s
        return None

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-serialisable dict."""
        d = asdict(self)
        d["steps"] = [s.to_dict() for s in self.steps]
        return d

    def to_json(self) -> str:
        """Return the result as one line of JSON."""
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ScenarioResult:
        """Rebuild a ScenarioResult from ``to_dict`` output."""
        d = dict(d)
        d["steps"] = [StepResult.from_dict(s) for s in d.get("steps", [])]
        return cls(**d)


def format_outcome(ret: int | None, errno: str | None) -> str:
    """Return ``-ENAME`` for an error, the number for a return value, ``nothing`` otherwise."""
    if errno is not None:
        return f"-{errno}"
    if ret is not None:
        return str(ret)
    return "nothing"


def _fmt_pins(p: tuple[int, int] | None) -> str:
    return "none" if p is None else f"[{p[0]}, {p[1]}]"


def _fmt_tail(t: tuple[str, ...] | None) -> str:
    if t is None:
        return "not measured"
    if not t:
        return "modified"
    return " and ".join(t)


def _same_errno(a: str | None, b: str | None) -> bool:
    """Errno names compared by number, so aliases (ENOTSUP/EOPNOTSUPP, EAGAIN/EWOULDBLOCK)
    match."""
    import errno as _errno

    if a is None or b is None:
        return a == b
    na, nb = getattr(_errno, a, None), getattr(_errno, b, None)
    return a == b if na is None or nb is None else na == nb


def check_step(step: Step, exp: Expect, res: StepResult) -> list[str]:
    """Return one sentence per expectation of ``exp`` that ``res`` does not meet."""
    lab = step.label
    if res.crash is not None:
        return [crash_sentence(lab, res.crash)]
    out: list[str] = []
    if exp.ret is not None and (res.errno is not None or res.ret != exp.ret):
        out.append(f"{lab}: expected ret {exp.ret}, got {res.outcome}")
    if exp.errno is not None and not _same_errno(res.errno, exp.errno):
        out.append(f"{lab}: expected errno {exp.errno}, got {res.outcome}")
    if exp.pins is not None and res.pins != exp.pins:
        s = f"{lab}: expected pins {_fmt_pins(exp.pins)}, got {_fmt_pins(res.pins)}"
        if res.noise:
            s += f" (the pin counters were noisy: {res.noise})"
        out.append(s)
    if exp.data is not None and res.data != exp.data:
        got = res.data or "not measured"
        if res.data_detail:
            got += f" ({res.data_detail})"
        out.append(f"{lab}: expected data {exp.data}, got {got}")
    if exp.transferred is not None and res.transferred != exp.transferred:
        got = "not measured" if res.transferred is None else str(res.transferred)
        out.append(f"{lab}: expected transferred {exp.transferred}, got {got}")
    if exp.tail is not None and (res.tail is None or exp.tail not in res.tail):
        out.append(f"{lab}: expected tail {exp.tail}, got tail {_fmt_tail(res.tail)}")
    return out


def check_expectations(scenario: Scenario, result: ScenarioResult, profile: str) -> list[str]:
    """Check every expectation of ``scenario`` under ``profile`` against ``result``.

    Return: one sentence per mismatch, in step order; a runner error is one more sentence and
    ends the list. A skipped result gives no sentences (report ``result.skipped`` instead).
    """
    if result.skipped is not None:
        return []
    out: list[str] = []
    for step in scenario.steps:
        exp = step.expect_for(profile)
        res = result.step(step.index)
        if res is None:
            if result.error is not None:
                if result.error not in out:
                    out.append(result.error)
                return out
            if exp is not None and exp.keys():
                out.append(f"{step.label}: the step did not run")
            continue
        if exp is not None:
            out.extend(check_step(step, exp, res))
    if result.error is not None and result.error not in out:
        out.append(result.error)
    return out


def compare_results(
    scenario: Scenario, a: ScenarioResult, b: ScenarioResult, *, bios: bool = True
) -> list[str]:
    """Compare two results of ``scenario`` (e.g. host and model) on every measured step.

    Return: one sentence per difference, naming the runners by ``a.runner`` / ``b.runner``.
    Only values both runners measured are compared; bios only with ``bios`` (see
    ``compare_bios`` for which bios count).
    """
    out: list[str] = []
    an, bn = a.runner, b.runner
    for step in scenario.steps:
        ra, rb = a.step(step.index), b.step(step.index)
        if not step.measured:
            continue
        if ra is None or rb is None:
            if (ra is None) != (rb is None):
                missing = an if ra is None else bn
                out.append(f"{step.label}: did not run in the {missing} runner")
            continue
        lab = step.label
        crashed = [r for r in (ra, rb) if r.crash is not None]
        if crashed:
            out.extend(crash_sentence(lab, r.crash or "") for r in crashed)
            continue
        if (ra.ret, ra.errno) != (rb.ret, rb.errno):
            out.append(f"{lab}: {an} returned {ra.outcome}, {bn} returned {rb.outcome}")
        if ra.pins is not None and rb.pins is not None and ra.pins != rb.pins:
            out.append(f"{lab}: {an} pins {_fmt_pins(ra.pins)}, {bn} pins {_fmt_pins(rb.pins)}")
        if ra.data is not None and rb.data is not None and ra.data != rb.data:
            out.append(f"{lab}: {an} data {ra.data}, {bn} data {rb.data}")
        if (
            ra.transferred is not None
            and rb.transferred is not None
            and ra.transferred != rb.transferred
        ):
            out.append(
                f"{lab}: {an} transferred {ra.transferred}, {bn} transferred {rb.transferred}"
            )
        if ra.tail is not None and rb.tail is not None and set(ra.tail) != set(rb.tail):
            out.append(f"{lab}: {an} tail {_fmt_tail(ra.tail)}, {bn} tail {_fmt_tail(rb.tail)}")
        if bios and ra.bios is not None and rb.bios is not None:
            s = compare_bios(lab, an, ra.bios, bn, rb.bios)
            if s is not None:
                out.append(s)
    for r in (a, b):
        if r.error is not None and r.error not in out:
            out.append(f"{r.runner} runner: {r.error}")
    return out


def crash_sentence(label: str, crash: str) -> str:
    """The sentence for a step in which the model raised an exception (a model bug)."""
    return f"{label}: the model crashed with {crash}"


def format_bio(bio: tuple[str, int | None, int]) -> str:
    """One bio as ``RS 4096+512`` (``RS ?+512`` outside the file)."""
    op, off, size = bio
    return f"{op} {'?' if off is None else off}+{size}"


def format_bios(bios: list[tuple[str, int | None, int]], limit: int = 6) -> str:
    """A bio list as text, at most ``limit`` bios and a count of the rest."""
    if not bios:
        return "no bios"
    s = ", ".join(format_bio(b) for b in bios[:limit])
    if len(bios) > limit:
        s += f" and {len(bios) - limit} more"
    return s


def compare_bios(
    label: str,
    an: str,
    a: list[tuple[str, int | None, int]],
    bn: str,
    b: list[tuple[str, int | None, int]],
) -> str | None:
    """One sentence on the first difference of two bio lists, or None when they agree.

    The lists are compared as runs (``bio_runs``): only the file's own bios and empty
    flushes count, and consecutive bios of one op that continue each other are one run,
    because where one bio ends and the next begins depends on the physical contiguity of
    the user pages (bvecs merge across physically adjacent pages) and of the file's blocks,
    which differ between any two machines.
    """
    ra, rb = bio_runs(a), bio_runs(b)
    if ra == rb:
        return None
    i = next((k for k, (x, y) in enumerate(zip(ra, rb)) if x != y), min(len(ra), len(rb)))
    x = format_bio(ra[i]) if i < len(ra) else "nothing"
    y = format_bio(rb[i]) if i < len(rb) else "nothing"
    return (
        f"{label}: bio run {i + 1} differs: {an} {x}, {bn} {y} "
        f"({an} queued {len(a)} bios, {bn} {len(b)})"
    )


def bio_runs(bios: list[tuple[str, int | None, int]]) -> list[tuple[str, int | None, int]]:
    """The bios that ``compare_bios`` compares, as runs.

    A bio elsewhere on the disk (offset None with a size: the journal or other metadata,
    which the model filesystem does not have) is left out; an empty flush stays; a bio
    that starts where the previous one of the same op ended extends it.
    """
    out: list[tuple[str, int | None, int]] = []
    for op, off, size in bios:
        size = int(size)
        if off is None and size:
            continue
        if out and off is not None and size:
            pop, poff, psize = out[-1]
            if pop == op and poff is not None and psize and poff + psize == off:
                out[-1] = (op, poff, psize + size)
                continue
        out.append((str(op), off, size))
    return out


def verdict_line(name: str, mismatches: list[str], skipped: str | None = None) -> str:
    """Return ``ok NAME``, ``FAIL NAME: <first mismatch>`` or ``skip NAME: <reason>``."""
    if skipped is not None:
        return f"skip {name}: {skipped}"
    if mismatches:
        return f"FAIL {name}: {mismatches[0]}"
    return f"ok {name}"


def summary_line(passed: int, failed: int, skipped: int = 0) -> str:
    """Return the closing line: ``N passed, N failed`` (``, N skipped`` when any)."""
    s = f"{passed} passed, {failed} failed"
    if skipped:
        s += f", {skipped} skipped"
    return s


def summarise(verdicts: Iterable[str]) -> str:
    """Return the summary line for verdict lines made by ``verdict_line``."""
    counts = {"ok": 0, "FAIL": 0, "skip": 0}
    for v in verdicts:
        counts[v.split(" ", 1)[0]] += 1
    return summary_line(counts["ok"], counts["FAIL"], counts["skip"])

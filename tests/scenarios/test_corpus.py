"""The scenario corpus under ``scenarios/``: it loads, its names are unique, it is big enough
and covers every topic, and (on a root Linux host) its 6.18 expectations hold on the host.

The host kernel is the oracle for profile 6.18, so the host tests are what keeps the corpus
honest; the full run is ``slow``, a fast one runs a representative scenario per topic.
"""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

import pytest

from dioscope.difftest.host import host_unavailable, run_host
from dioscope.difftest.results import ScenarioResult, check_expectations, verdict_line
from dioscope.scenarios.format import (
    PROFILES,
    READ_OPS,
    Scenario,
    find_scenarios,
    load_scenario,
    load_scenarios,
)

ROOT = Path(__file__).resolve().parents[2]
CORPUS = ROOT / "scenarios"
FILES = find_scenarios([CORPUS])
TOPICS = ("alignment", "iovec", "sizes", "eof", "sparse", "buffers", "faults", "rwf")
MIN_SCENARIOS = 80
MIN_PER_TOPIC = 5

# One or two per topic, chosen to cover the 6.18 behaviours the spec gets wrong as well as
# the plain ones; each runs in well under a second.
REPRESENTATIVE = (
    "alignment/memory-boundaries-read-4k.toml",
    "alignment/fastpath-page-end-read.toml",
    "iovec/bad-bvec-after-split.toml",
    "iovec/zero-length-segments.toml",
    "sizes/read-4m.toml",
    "eof/read-eof-misaligned-length.toml",
    "sparse/hole-ragged-end.toml",
    "buffers/write-read-faulted-private.toml",
    "buffers/write-untouched-thp.toml",
    "faults/iov-then-null.toml",
    "rwf/pwritev2-nowait-cached.toml",
)

WHY = host_unavailable() if sys.platform.startswith("linux") else "not Linux"
needs_host = pytest.mark.skipif(WHY is not None, reason=f"host runner unavailable: {WHY}")
NOISE_RETRIES = 3


def _topic(path: Path) -> str:
    return path.relative_to(CORPUS).parts[0]


def test_every_file_loads_and_names_are_unique() -> None:
    scenarios = load_scenarios([CORPUS])  # raises on a bad file or a repeated name
    names = Counter(s.name for s in scenarios)
    assert [n for n, k in names.items() if k > 1] == []
    assert len(scenarios) == len(FILES)


def test_corpus_size() -> None:
    assert len(FILES) >= MIN_SCENARIOS


def test_every_file_lives_in_a_topic_folder() -> None:
    stray = [str(p.relative_to(CORPUS)) for p in FILES if _topic(p) not in TOPICS]
    assert stray == []


@pytest.mark.parametrize("topic", TOPICS)
def test_every_topic_has_enough_scenarios(topic: str) -> None:
    assert sum(1 for p in FILES if _topic(p) == topic) >= MIN_PER_TOPIC


@pytest.mark.parametrize("path", FILES, ids=[str(p.relative_to(CORPUS)) for p in FILES])
def test_every_measured_io_step_states_its_outcome_and_pins(path: Path) -> None:
    sc = load_scenario(path)
    assert any(s.measured for s in sc.steps), "the scenario measures nothing"
    for step in sc.steps:
        if not step.measured or step.op == "open":
            continue
        for profile in sc.profiles:
            exp = step.expect_for(profile)
            assert exp is not None
            assert (exp.ret is None) != (exp.errno is None), f"{step.label} under {profile}"
            assert exp.pins is not None, f"{step.label} under {profile}: no pins"


@pytest.mark.parametrize("path", FILES, ids=[str(p.relative_to(CORPUS)) for p in FILES])
def test_successful_reads_and_writes_check_their_data(path: Path) -> None:
    sc = load_scenario(path)
    for step in sc.steps:
        exp = step.expect_for("6.18")
        if exp is None or step.op not in READ_OPS | {"pwrite", "pwritev", "pwritev2"}:
            continue
        if exp.ret:  # a write that ignores its offset (RWF_APPEND) states "transferred"
            assert exp.data == "ok" or exp.transferred is not None, step.label


def test_representative_scenarios_exist() -> None:
    assert all((CORPUS / p).is_file() for p in REPRESENTATIVE)
    assert {Path(p).parts[0] for p in REPRESENTATIVE} == set(TOPICS)


def test_overrides_name_known_profiles_only() -> None:
    for sc in load_scenarios([CORPUS]):
        for step in sc.steps:
            assert set(step.overrides) <= set(PROFILES), f"{sc.name}: {step.label}"


def _noisy(res: ScenarioResult) -> bool:
    return any(s.noise for s in res.steps)


def _host_mismatches(sc: Scenario) -> tuple[ScenarioResult, list[str]]:
    """Run ``sc`` on the host; re-run when a mismatch may come from other pin activity."""
    res = run_host(sc)
    mismatches = check_expectations(sc, res, "6.18")
    for _ in range(NOISE_RETRIES):
        if not mismatches or not _noisy(res):
            break
        res = run_host(sc)
        mismatches = check_expectations(sc, res, "6.18")
    return res, mismatches


def _check_on_host(path: Path) -> None:
    sc = load_scenario(path)
    res, mismatches = _host_mismatches(sc)
    if not sc.host:
        assert res.skipped == "model-only scenario (host = false)"
        return
    assert res.skipped is None
    assert verdict_line(sc.name, mismatches) == f"ok {sc.name}"
    assert all(s.pins is not None for s in res.steps if s.measured)


@pytest.mark.host
@needs_host
@pytest.mark.parametrize("rel", REPRESENTATIVE)
def test_representative_scenarios_hold_on_the_host(rel: str) -> None:
    _check_on_host(CORPUS / rel)


@pytest.mark.host
@pytest.mark.slow
@needs_host
@pytest.mark.parametrize("path", FILES, ids=[str(p.relative_to(CORPUS)) for p in FILES])
def test_whole_corpus_holds_on_the_host(path: Path) -> None:
    _check_on_host(path)

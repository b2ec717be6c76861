"""The ``dioscope`` command line: ``run`` and ``diff`` verdict lines, summary and exit codes."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from dioscope.cli import main
from dioscope.difftest import host as host_mod
from dioscope.scenarios.format import load_scenario

ROOT = Path(__file__).resolve().parents[1]
SAMEPAGE = (ROOT / "scenarios" / "iovec" / "samepage-adjacent-halves.toml").read_text()


def _wrong(text: str) -> str:
    """The same scenario with a wrong 6.18 expectation (and another name)."""
    text = text.replace('name = "iov.preadv.samepage-adjacent"', 'name = "wrong"')
    return text.replace("ret = 1024", "ret = 1000")


ONLY_618 = """
[scenario]
name = "only-6.18"
profiles = ["6.18"]
"""
MODEL_ONLY = """
[scenario]
name = "model-only"
host = false
"""


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "samepage.toml").write_text(SAMEPAGE)
    (tmp_path / "only.toml").write_text(ONLY_618)
    return tmp_path


def _invoke(*args: str) -> tuple[int, list[str]]:
    res = CliRunner().invoke(main, list(args))
    if res.exception and not isinstance(res.exception, SystemExit):
        raise res.exception
    return res.exit_code, res.output.splitlines()


def test_run_one_profile(corpus: Path) -> None:
    code, lines = _invoke("run", str(corpus), "--profile", "6.18")
    assert code == 0
    assert lines == ["ok iov.preadv.samepage-adjacent", "ok only-6.18", "2 passed, 0 failed"]


def test_run_all_profiles_names_the_profile_and_skips(corpus: Path) -> None:
    code, lines = _invoke("run", str(corpus), "--profile", "all")
    assert code == 0
    assert lines == [
        "ok iov.preadv.samepage-adjacent [5.9]",
        "ok iov.preadv.samepage-adjacent [5.9-pin]",
        "ok iov.preadv.samepage-adjacent [6.18]",
        "skip only-6.18 [5.9]: not for profile 5.9",
        "skip only-6.18 [5.9-pin]: not for profile 5.9-pin",
        "ok only-6.18 [6.18]",
        "4 passed, 0 failed, 2 skipped",
    ]


def test_run_failure_is_a_sentence_and_exit_1(corpus: Path) -> None:
    (corpus / "wrong.toml").write_text(_wrong(SAMEPAGE))
    code, lines = _invoke("run", str(corpus / "wrong.toml"), str(corpus / "a"), "--profile",
                          "6.18")
    assert code == 1
    assert lines == [
        "FAIL wrong: step 4 (preadv): expected ret 1000, got 1024",
        "ok iov.preadv.samepage-adjacent",
        "1 passed, 1 failed",
    ]


def test_run_bad_file_fails_with_its_error(corpus: Path) -> None:
    bad = corpus / "bad.toml"
    bad.write_text("[scenario]\nname = 'b'\n[[step]]\nop = 'teleport'\n")
    code, lines = _invoke("run", str(bad), "--profile", "5.9")
    assert code == 1
    assert lines[0].startswith(f"FAIL {bad}: step 1: key \"op\" names unknown op 'teleport'")
    assert lines[-1] == "0 passed, 1 failed"


def test_run_duplicate_name_fails(corpus: Path) -> None:
    (corpus / "b.toml").write_text(SAMEPAGE)
    code, lines = _invoke("run", str(corpus), "--profile", "6.18")
    assert code == 1
    assert any(line.startswith("FAIL iov.preadv.samepage-adjacent: ") and "already used" in line
               for line in lines)


def test_run_json(corpus: Path, tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    code, _ = _invoke("run", str(corpus / "a"), "--profile", "all", "--json", str(out))
    assert code == 0
    doc = json.loads(out.read_text())
    assert doc["command"] == "run" and doc["profiles"] == ["5.9", "5.9-pin", "6.18"]
    assert doc["summary"] == {"passed": 3, "failed": 0, "skipped": 0,
                              "line": "3 passed, 0 failed"}
    r = doc["results"][2]
    assert r["profile"] == "6.18" and r["verdict"] == "ok iov.preadv.samepage-adjacent [6.18]"
    assert r["result"]["steps"][3]["pins"] == [2, 2]


def test_run_reports_a_model_crash(corpus: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from dioscope.syscalls.files import FileSyscalls

    def boom(*_a: object, **_k: object) -> int:
        raise ZeroDivisionError("division by zero")

    monkeypatch.setattr(FileSyscalls, "preadv", boom)
    code, lines = _invoke("run", str(corpus / "a"), "--profile", "5.9")
    assert code == 1
    assert lines == [
        "FAIL iov.preadv.samepage-adjacent: step 4 (preadv): the model crashed with "
        "ZeroDivisionError: division by zero",
        "0 passed, 1 failed",
    ]


def test_run_needs_paths() -> None:
    code, _ = _invoke("run")
    assert code == 2


def test_diff_skips_everything_when_the_host_cannot_answer(
    corpus: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(host_mod, "host_unavailable", lambda workdir=None: "not root")
    (corpus / "m.toml").write_text(MODEL_ONLY)
    code, lines = _invoke("diff", str(corpus))
    assert code == 0
    assert lines == [
        "skip iov.preadv.samepage-adjacent: not root",
        "skip model-only: not root",
        "skip only-6.18: not root",
        "0 passed, 0 failed, 3 skipped",
    ]


def test_diff_json_when_skipped(corpus: Path, tmp_path: Path,
                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(host_mod, "host_unavailable", lambda workdir=None: "not Linux")
    out = tmp_path / "d.json"
    code, _ = _invoke("diff", str(corpus / "a"), "--json", str(out), "--bios")
    assert code == 0
    doc = json.loads(out.read_text())
    assert doc["command"] == "diff"
    assert doc["results"][0]["skipped"] == "not Linux"


def test_diff_explain_takes_one_scenario(corpus: Path) -> None:
    res = CliRunner().invoke(main, ["diff", str(corpus), "--explain"])
    assert res.exit_code == 2
    assert "--explain takes exactly one scenario, not 2" in res.output


# --- on the host ---------------------------------------------------------------------------------
WHY = host_mod.host_unavailable() if sys.platform.startswith("linux") else "not Linux"
needs_host = pytest.mark.skipif(WHY is not None, reason=f"host runner unavailable: {WHY}")


@pytest.mark.host
@needs_host
def test_diff_on_the_host(corpus: Path) -> None:
    (corpus / "m.toml").write_text(MODEL_ONLY)
    code, lines = _invoke("diff", str(corpus))
    assert lines == [
        "ok iov.preadv.samepage-adjacent",
        "skip model-only: model-only scenario (host = false)",
        "ok only-6.18",
        "2 passed, 0 failed, 1 skipped",
    ]
    assert code == 0


@pytest.mark.host
@needs_host
def test_diff_explain_on_the_host(corpus: Path) -> None:
    code, lines = _invoke("diff", str(corpus / "a"), "--explain")
    assert code == 0
    text = "\n".join(lines)
    assert re.search(r"^explain iov.preadv.samepage-adjacent: host 6\.", text, re.M)
    assert "    host:  ret 1024, pins [2, 2], data ok, transferred 1024" in text
    assert "    model: ret 1024, pins [2, 2], data ok, transferred 1024" in text
    assert re.search(r"^    model bios: RS? 0\+1024$", text, re.M)
    assert "    model: pin 1 page(s) at " in text
    assert lines[-2:] == ["ok iov.preadv.samepage-adjacent", "1 passed, 0 failed"]


@pytest.mark.host
@needs_host
def test_diff_bios_on_the_host(corpus: Path, tmp_path: Path) -> None:
    from dioscope.difftest.tracefs import tracefs_unavailable

    why = tracefs_unavailable()
    if why is not None:
        pytest.skip(why)
    out = tmp_path / "d.json"
    _invoke("diff", str(corpus / "a"), "--bios", "--json", str(out))
    doc = json.loads(out.read_text())
    host_bios = doc["results"][0]["host"]["steps"][3]["bios"]
    assert [(op[0], off, size) for op, off, size in host_bios] == [("R", 0, 1024)]


# --- CI: the whole corpus in the model ------------------------------------------------------------
@pytest.mark.slow
def test_corpus_runs_clean_under_every_profile() -> None:
    code, lines = _invoke("run", str(ROOT / "scenarios"), "--profile", "all")
    failures = [line for line in lines if line.startswith("FAIL ")]
    assert failures == [], "\n".join(failures)
    assert code == 0
    assert re.fullmatch(r"\d+ passed, 0 failed", lines[-1])


@pytest.mark.slow
@pytest.mark.host
def test_corpus_diff_against_the_host_is_clean() -> None:
    """CI, as root on Linux: ``dioscope diff scenarios/`` — every scenario agrees between the
    host kernel and the model under 6.18 (model-only scenarios are skipped with the
    reason)."""
    from dioscope.difftest.host import host_unavailable

    why = host_unavailable()
    if why:
        pytest.skip(f"the host cannot answer: {why}")
    _code, lines = _invoke("diff", str(ROOT / "scenarios"))
    failures = [line for line in lines if line.startswith("FAIL ")]
    # The pin counters are system-wide: another process's I/O during a step reads as a
    # mismatch. Re-run a failing scenario up to twice; it must agree at least once.
    names = {line[5:].split(":")[0] for line in failures}
    paths = {load_scenario(f).name: f for f in sorted((ROOT / "scenarios").rglob("*.toml"))}
    still = []
    for name in sorted(names):
        for _ in range(2):
            _code, again = _invoke("diff", str(paths[name]))
            if again[-1].startswith("1 passed"):
                break
        else:
            still.extend(line for line in again if line.startswith("FAIL "))
    assert still == [], "\n".join(still)
    assert re.fullmatch(r"\d+ passed, \d+ failed(, \d+ skipped)?", lines[-1])

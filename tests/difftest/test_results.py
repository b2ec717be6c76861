"""Results are JSON round-trippable and every mismatch is one exact sentence."""

from __future__ import annotations

import json

from dioscope.difftest.results import (
    ScenarioResult,
    StepResult,
    check_expectations,
    compare_results,
    summarise,
    summary_line,
    verdict_line,
)
from dioscope.scenarios.format import Scenario, loads_scenario

TEXT = """
[scenario]
name = "r"

[[file]]
name = "data"
size = 65536

[[step]]
op = "mmap"
name = "buf"
length = 8192

[[step]]
op = "open"
name = "fd"
file = "data"
flags = "rdonly direct"

[[step]]
op = "preadv"
fd = "fd"
iov = [["buf", 0, 512], ["buf", 512, 512]]
offset = 0
[step.expect]
ret = 1024
pins = [2, 2]
data = "ok"
tail = "untouched"
[step.expect."5.9"]
pins = [0, 0]

[[step]]
op = "pread"
fd = "fd"
buf = "buf"
length = 4096
offset = 100
[step.expect]
errno = "EINVAL"
transferred = 0
"""


def _scenario() -> Scenario:
    return loads_scenario(TEXT, "r.toml")


def _result(**over: object) -> ScenarioResult:
    steps = [
        StepResult(1, "mmap", ret=0),
        StepResult(2, "open", ret=0),
        StepResult(3, "preadv", True, 1024, None, (2, 2), "ok", None, 1024, ("untouched",)),
        StepResult(4, "pread", True, None, "EINVAL", (0, 0), "ok", None, 0, ("untouched",)),
    ]
    r = ScenarioResult("r", "r.toml", "host", "6.18.44", steps=steps)
    for k, v in over.items():
        setattr(r, k, v)
    return r


def test_matching_result_has_no_sentences() -> None:
    assert check_expectations(_scenario(), _result(), "6.18") == []


def test_every_mismatch_is_one_sentence() -> None:
    r = _result()
    s3, s4 = r.steps[2], r.steps[3]
    s3.ret, s3.errno = None, "EINVAL"
    s3.pins = (3, 1)
    s3.noise = "the counters moved after the step returned"
    s3.data, s3.data_detail = "mismatch", "first difference at request byte 512"
    s3.tail = ()
    s4.ret, s4.errno = 4096, None
    s4.transferred = 4096
    assert check_expectations(_scenario(), r, "6.18") == [
        "step 3 (preadv): expected ret 1024, got -EINVAL",
        "step 3 (preadv): expected pins [2, 2], got [3, 1] (the pin counters were noisy: "
        "the counters moved after the step returned)",
        "step 3 (preadv): expected data ok, got mismatch (first difference at request byte 512)",
        "step 3 (preadv): expected tail untouched, got tail modified",
        "step 4 (pread): expected errno EINVAL, got 4096",
        "step 4 (pread): expected transferred 0, got 4096",
    ]


def test_profile_override_is_checked() -> None:
    assert check_expectations(_scenario(), _result(), "5.9") == [
        "step 3 (preadv): expected pins [0, 0], got [2, 2]"
    ]


def test_errno_versus_errno_and_unmeasured_values() -> None:
    r = _result()
    r.steps[3].errno = "EFAULT"
    r.steps[2].tail = ("zero",)
    r.steps[2].pins = None
    assert check_expectations(_scenario(), r, "6.18") == [
        "step 3 (preadv): expected pins [2, 2], got none",
        "step 3 (preadv): expected tail untouched, got tail zero",
        "step 4 (pread): expected errno EINVAL, got -EFAULT",
    ]


def test_runner_error_and_missing_steps() -> None:
    r = _result(error="step 3 (preadv): the host runner failed: boom")
    del r.steps[2:]
    assert check_expectations(_scenario(), r, "6.18") == [
        "step 3 (preadv): the host runner failed: boom"
    ]
    r = _result()
    del r.steps[3]
    assert check_expectations(_scenario(), r, "6.18") == ["step 4 (pread): the step did not run"]
    assert check_expectations(_scenario(), _result(skipped="not root"), "6.18") == []


def test_verdict_and_summary_lines() -> None:
    sc = _scenario()
    bad = _result()
    bad.steps[2].ret = 512
    assert verdict_line(sc.name, check_expectations(sc, _result(), "6.18")) == "ok r"
    assert (
        verdict_line(sc.name, check_expectations(sc, bad, "6.18"))
        == "FAIL r: step 3 (preadv): expected ret 1024, got 512"
    )
    assert verdict_line("r", [], "not root") == "skip r: not root"
    assert summary_line(3, 1) == "3 passed, 1 failed"
    assert summary_line(3, 0, 2) == "3 passed, 0 failed, 2 skipped"
    assert summarise(["ok a", "FAIL b: x", "skip c: y", "ok d"]) == "2 passed, 1 failed, 1 skipped"


def test_json_round_trip() -> None:
    r = _result(device={"logical_block_size": 512})
    text = r.to_json()
    back = ScenarioResult.from_dict(json.loads(text))
    assert back == r
    assert back.steps[2].pins == (2, 2) and back.steps[2].tail == ("untouched",)


def test_compare_results_names_both_runners() -> None:
    host = _result()
    model = _result(runner="model")
    model.steps[2].pins = (3, 3)
    model.steps[3].errno = "EFAULT"
    model.steps[2].tail = ("zero", "untouched")
    assert compare_results(_scenario(), host, model) == [
        "step 3 (preadv): host pins [2, 2], model pins [3, 3]",
        "step 3 (preadv): host tail untouched, model tail zero and untouched",
        "step 4 (pread): host returned -EINVAL, model returned -EFAULT",
    ]

"""The host runner on the real kernel: the example scenarios' expectations hold on this host.

Tests marked ``host`` need root on Linux with /proc/sys/vm/stat_refresh and skip with the
reason otherwise.  The skip reasons themselves are tested everywhere.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import pytest

from dioscope.difftest import host, vmstat
from dioscope.difftest.host import HostRun, host_profile, host_unavailable, run_host
from dioscope.difftest.results import check_expectations, verdict_line
from dioscope.scenarios.format import load_scenario, loads_scenario

ROOT = Path(__file__).resolve().parents[2]
# The format's first examples; the whole corpus (with model-only scenarios, which the host
# skips) runs in tests/scenarios/test_corpus.py.
EXAMPLES = [
    ROOT / "scenarios" / p
    for p in (
        "alignment/buffer-misaligned.toml",
        "alignment/misaligned-offset-einval.toml",
        "alignment/read-1m-aligned.toml",
        "alignment/read-1m-buf-offset-512.toml",
        "buffers/read-thp.toml",
        "buffers/write-untouched-private-anon.toml",
        "eof/read-at-eof-misaligned.toml",
        "eof/read-hole.toml",
        "eof/read-short-file.toml",
        "faults/read-second-half-unmapped.toml",
        "iovec/samepage-adjacent-halves.toml",
    )
]
WHY = host_unavailable() if sys.platform.startswith("linux") else "not Linux"
needs_host = pytest.mark.skipif(WHY is not None, reason=f"host runner unavailable: {WHY}")

SAMEPAGE = (ROOT / "scenarios" / "iovec" / "samepage-adjacent-halves.toml").read_text()


def test_skip_reasons(monkeypatch: pytest.MonkeyPatch) -> None:
    sc = loads_scenario("[scenario]\nname = 'm'\nhost = false\n")
    assert run_host(sc).skipped == "model-only scenario (host = false)"
    sc = loads_scenario("[scenario]\nname = 'm'\n")
    monkeypatch.setattr(sys, "platform", "darwin")
    assert run_host(sc).skipped == "not Linux"
    monkeypatch.setattr(sys, "platform", "linux")
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert run_host(sc).skipped == "not root"
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    monkeypatch.setattr(vmstat, "STAT_REFRESH", "/nonexistent/stat_refresh")
    assert run_host(sc).skipped == "no /nonexistent/stat_refresh"


@pytest.mark.host
@needs_host
@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_expectations_hold_on_the_host(path: Path) -> None:
    sc = load_scenario(path)
    res = run_host(sc)
    assert res.skipped is None
    assert res.device.get("logical_block_size") in (512, 4096)
    profile = host_profile() or "6.18"
    mismatches = check_expectations(sc, res, profile)
    assert verdict_line(sc.name, mismatches) == f"ok {sc.name}"
    assert all(s.pins is not None for s in res.steps if s.measured)


@pytest.mark.host
@needs_host
def test_a_wrong_expectation_is_one_sentence() -> None:
    sc = loads_scenario(SAMEPAGE.replace("pins = [2, 2]", "pins = [1, 1]"), "x.toml")
    res = run_host(sc)
    assert check_expectations(sc, res, "6.18") == [
        "step 4 (preadv): expected pins [1, 1], got [2, 2]"
    ]


@pytest.mark.host
@needs_host
def test_forked_run_gives_the_same_result() -> None:
    sc = loads_scenario(SAMEPAGE, "x.toml")
    assert not sc.needs_fork
    a, b = run_host(sc), run_host(sc, fork=True)
    assert [s.to_dict() for s in a.steps] == [s.to_dict() for s in b.steps]


@pytest.mark.host
@needs_host
def test_a_crashing_child_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    def crash(self: HostRun, step: object) -> tuple[int, int]:
        os.kill(os.getpid(), signal.SIGSEGV)
        return 0, 0

    monkeypatch.setattr(HostRun, "_op_fsync", crash)
    sc = loads_scenario(SAMEPAGE + '\n[[step]]\nop = "fsync"\nfd = "fd"\n', "x.toml")
    res = run_host(sc, fork=True)
    assert res.error == "step 5 (fsync): the scenario's child process was killed by SIGSEGV"
    assert [s.index for s in res.steps] == [1, 2, 3, 4]
    assert check_expectations(sc, res, "6.18") == [res.error]


@pytest.mark.host
@needs_host
def test_runner_errors_are_sentences() -> None:
    text = SAMEPAGE.replace('length = 8192\nprot = "rw"', 'length = 8192\nprot = "r"')
    res = run_host(loads_scenario(text, "x.toml"))
    assert res.error == (
        'step 2 (fill): the host runner failed: bytes [0, 8192) of mapping "buf" are not all '
        "mapped writable, so the runner would crash"
    )
    text = SAMEPAGE.replace("length = 8192", "length = 0")  # mmap fails with EINVAL
    res = run_host(loads_scenario(text, "x.toml"))
    assert res.steps[0].errno == "EINVAL"
    assert res.error == (
        'step 2 (fill): the host runner failed: mapping "buf" does not exist (its mmap step failed)'
    )


@pytest.mark.host
@needs_host
def test_tmpfs_work_directory_is_refused(tmp_path: Path) -> None:
    if not os.path.isdir("/dev/shm") or host.L.fs_magic("/dev/shm") != host.L.TMPFS_MAGIC:
        pytest.skip("no tmpfs at /dev/shm")
    sc = loads_scenario(SAMEPAGE)
    assert run_host(sc, "/dev/shm").skipped == (
        "the work directory /dev/shm is on tmpfs/ramfs; O_DIRECT needs a real filesystem"
    )


@pytest.mark.host
@needs_host
def test_files_are_removed_afterwards(tmp_path: Path) -> None:
    run_host(loads_scenario(SAMEPAGE), tmp_path)
    assert list(tmp_path.iterdir()) == []

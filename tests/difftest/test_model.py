"""The model runner: corpus scenarios per profile with exact numbers, the memory and file
views it checks bytes through, and model crashes reported as sentences, never raised."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from dioscope.block.blk_settings import QueueLimits
from dioscope.difftest import model as model_mod
from dioscope.difftest.model import (
    ModelMem,
    ModelRun,
    device_limits,
    machine_sizes,
    run_model,
)
from dioscope.difftest.results import check_expectations, verdict_line
from dioscope.scenarios.content import file_content
from dioscope.scenarios.format import PROFILES, DeviceSpec, load_scenario, loads_scenario

ROOT = Path(__file__).resolve().parents[2]
SC = ROOT / "scenarios"


def _load(rel: str):  # type: ignore[no-untyped-def]
    return load_scenario(SC / rel)


def _measured(rel: str, profile: str) -> list[tuple]:  # type: ignore[type-arg]
    sc = _load(rel)
    res = run_model(sc, profile)
    assert res.error is None and res.skipped is None
    assert check_expectations(sc, res, profile) == []
    return [
        (s.index, s.ret, s.errno, s.pins, s.data, s.transferred)
        for s in res.steps
        if s.measured
    ]


# --- corpus scenarios, exact numbers -------------------------------------------------------
# (file, profile) -> [(step, ret, errno, pins, data, transferred)]
EXACT = {
    ("iovec/samepage-adjacent-halves.toml", "5.9"): [(4, 1024, None, (0, 0), "ok", 1024)],
    ("iovec/samepage-adjacent-halves.toml", "5.9-pin"): [(4, 1024, None, (2, 2), "ok", 1024)],
    ("iovec/samepage-adjacent-halves.toml", "6.18"): [(4, 1024, None, (2, 2), "ok", 1024)],
    ("alignment/read-1m-aligned.toml", "5.9"): [(4, 1 << 20, None, (0, 0), "ok", 1 << 20)],
    ("alignment/read-1m-aligned.toml", "6.18"): [(4, 1 << 20, None, (256, 256), "ok", 1 << 20)],
    ("alignment/read-1m-buf-offset-512.toml", "5.9-pin"): [
        (4, 1 << 20, None, (257, 257), "ok", 1 << 20)
    ],
    ("faults/read-second-half-unmapped.toml", "6.18"): [
        (5, None, "EFAULT", (128, 128), "ok", 512 << 10)
    ],
    ("faults/read-second-half-unmapped.toml", "5.9"): [
        (5, None, "EFAULT", (0, 0), "ok", 512 << 10)
    ],
    ("iovec/iov-max-plus-one.toml", "6.18"): [
        (4, None, "EINVAL", (0, 0), "ok", 0),
        (5, None, "EINVAL", (0, 0), "ok", 0),
    ],
    ("buffers/write-untouched-private-anon.toml", "5.9-pin"): [
        (3, 1 << 20, None, (256, 256), "ok", 1 << 20)  # the seed pins the zero page
    ],
    ("buffers/write-untouched-private-anon.toml", "6.18"): [
        (3, 1 << 20, None, (0, 0), "ok", 1 << 20)
    ],
    ("sparse/read-hole-middle.toml", "6.18"): [
        (k, 1 << 20, None, (240, 240), "ok", 1 << 20) for k in (4, 6, 8)
    ],
}


@pytest.mark.parametrize(("rel", "profile"), sorted(EXACT))
def test_corpus_scenario_exact(rel: str, profile: str) -> None:
    assert _measured(rel, profile) == EXACT[(rel, profile)]


def test_result_shape_and_device() -> None:
    sc = _load("iovec/samepage-adjacent-halves.toml")
    res = run_model(sc, "6.18")
    assert (res.runner, res.kernel, res.name) == ("model", "6.18", sc.name)
    assert res.device == {
        "logical_block_size": 512,
        "physical_block_size": 4096,
        "dma_alignment": 511,
        "max_sectors_kb": 4096,
        "max_segments": 254,
    }
    assert [s.op for s in res.steps] == ["mmap", "fill", "open", "preadv"]
    assert [s.ret for s in res.steps[:3]] == [0, 0, 0]
    assert res.steps[3].tail is not None and "untouched" in res.steps[3].tail


def test_profile_excluded_is_skipped() -> None:
    sc = loads_scenario("[scenario]\nname = 'only'\nprofiles = ['6.18']\n")
    assert run_model(sc, "5.9").skipped == "not for profile 5.9 (profiles: 6.18)"
    assert run_model(sc, "6.18").skipped is None


def test_unknown_profile_is_a_caller_error() -> None:
    with pytest.raises(ValueError):
        run_model(loads_scenario("[scenario]\nname = 'x'\n"), "4.19")


def test_explicit_limits_replace_the_device_table() -> None:
    sc = _load("alignment/model-lbs-4096.toml")
    assert check_expectations(sc, run_model(sc, "6.18"), "6.18") == []
    res = run_model(sc, "6.18", QueueLimits())  # 512-byte blocks: offset 512 is fine
    st = res.step(4)
    assert st is not None and (st.ret, st.pins) == (4096, (1, 1))
    assert res.device["logical_block_size"] == 512


# --- bad user input is an errno, never an exception ------------------------------------------
BAD_INPUT = """
[scenario]
name = "bad-input"
[[file]]
name = "data"
size = 8192
[[step]]
op = "mmap"
name = "buf"
length = 8192
[[step]]
op = "open"
name = "fd"
file = "data"
flags = "rdwr direct"
[[step]]
op = "preadv"
fd = "fd"
iov = [["0x0", 0, 4096]]
offset = 0
[step.expect]
errno = "EFAULT"
pins = [0, 0]
[[step]]
op = "preadv"
fd = "fd"
iov = [["buf", 0, -1]]
offset = 0
[step.expect]
errno = "EINVAL"
[[step]]
op = "pread"
fd = "fd"
buf = "buf"
length = 4096
offset = -4096
[step.expect]
errno = "EINVAL"
[[step]]
op = "pwrite"
fd = "fd"
buf = "0xffff888000000000"
length = 4096
offset = 0
[step.expect]
errno = "EFAULT"
pins = [0, 0]
[[step]]
op = "close"
fd = "fd"
[[step]]
op = "pread"
fd = "fd"
buf = "buf"
length = 4096
offset = 0
[step.expect]
errno = "EBADF"
[[step]]
op = "munmap"
buf = "buf"
at = 100
length = 4096
[step.expect]
errno = "EINVAL"
[[step]]
op = "open"
name = "gone"
file = "nothing"
flags = "rdonly creat"
[step.expect]
ret = 0
"""


@pytest.mark.parametrize("profile", PROFILES)
def test_bad_user_input_gives_errnos(profile: str) -> None:
    sc = loads_scenario(BAD_INPUT)
    res = run_model(sc, profile)
    assert res.error is None
    assert check_expectations(sc, res, profile) == []


# --- model crashes -----------------------------------------------------------------------------
def test_a_model_crash_is_a_sentence(monkeypatch: pytest.MonkeyPatch) -> None:
    from dioscope.syscalls.files import FileSyscalls

    def boom(*_a: object, **_k: object) -> int:
        raise IndexError("index 300 is out of bounds\nfor axis 0")

    monkeypatch.setattr(FileSyscalls, "preadv", boom)
    sc = _load("iovec/samepage-adjacent-halves.toml")
    res = run_model(sc, "6.18")  # does not raise
    crashed = res.step(4)
    assert crashed is not None
    assert crashed.crash == "IndexError: index 300 is out of bounds for axis 0"
    assert crashed.ret is None and crashed.errno is None and crashed.outcome == "a crash"
    sentence = "step 4 (preadv): the model crashed with IndexError: index 300 is out of " \
        "bounds for axis 0"
    assert res.error == sentence
    assert check_expectations(sc, res, "6.18") == [sentence]
    assert verdict_line(sc.name, check_expectations(sc, res, "6.18")) == (
        f"FAIL {sc.name}: {sentence}"
    )
    # round trip through JSON keeps the crash
    from dioscope.difftest.results import ScenarioResult

    assert ScenarioResult.from_dict(res.to_dict()).step(4).crash == crashed.crash  # type: ignore[union-attr]


def test_a_crash_in_an_unmeasured_step_ends_the_run(monkeypatch: pytest.MonkeyPatch) -> None:
    from dioscope.syscalls.process import Process

    def boom(*_a: object, **_k: object) -> int:
        raise KeyError("vma")

    monkeypatch.setattr(Process, "write_user", boom)
    sc = _load("iovec/samepage-adjacent-halves.toml")
    res = run_model(sc, "5.9")
    assert [s.index for s in res.steps] == [1, 2]
    mism = check_expectations(sc, res, "5.9")
    assert mism == ["step 2 (fill): the model crashed with KeyError: 'vma'"]


def test_a_crash_while_creating_files(monkeypatch: pytest.MonkeyPatch) -> None:
    from dioscope.fs.modelfs import ModelFs

    def boom(*_a: object, **_k: object) -> None:
        raise RuntimeError("no space")

    monkeypatch.setattr(ModelFs, "create_file", boom)
    sc = _load("iovec/samepage-adjacent-halves.toml")
    res = run_model(sc, "6.18")
    assert res.error == "creating the files: the model crashed with RuntimeError: no space"
    assert check_expectations(sc, res, "6.18") == [res.error]


def test_runner_errors_are_not_model_crashes() -> None:
    sc = loads_scenario(
        "[scenario]\nname = 'r'\n"
        "[[step]]\nop = 'mmap'\nname = 'b'\nlength = 4096\nprot = 'r'\n"
        "[[step]]\nop = 'fill'\nbuf = 'b'\npattern = 1\n"
    )
    res = run_model(sc, "6.18")
    assert res.error == (
        'step 2 (fill): the model runner failed: bytes [0, 4096) of mapping "b" are not all '
        "mapped writable, so the runner would crash"
    )


# --- the views the verdicts use ---------------------------------------------------------------
def test_untouched_private_anon_reads_as_zeros_without_a_fault() -> None:
    sc = loads_scenario("[scenario]\nname = 'v'\n")
    run = ModelRun(sc, "6.18")
    p = run.proc
    a = p.mmap(4 * 4096)
    p.write_user(a + 4096, b"\x07" * 4096)
    mem = ModelMem(p)
    assert mem.read(a, 3 * 4096) == bytes(4096) + b"\x07" * 4096 + bytes(4096)
    vma = p.mm.vma_lookup(a)
    assert vma is not None and int(vma.pt_pfn[0]) == -1  # still never faulted
    p.munmap(a + 2 * 4096, 4096)
    chunks = mem.read_chunks(a + 4096 + 10, 2 * 4096)
    assert [(c - a, None if d is None else len(d)) for c, d in chunks] == [
        (4096 + 10, 4096 - 10),
        (2 * 4096, None),
        (3 * 4096, 10),
    ]
    assert mem.read(a, 3 * 4096) is None
    assert mem.read(0, 16) is None and mem.read(0xFFFF888000000000, 16) is None


def test_files_read_back_like_o_direct() -> None:
    sc = loads_scenario(
        "[scenario]\nname = 'f'\n[[file]]\nname = 'd'\nsize = 20000\n"
        "holes = [[4096, 4096]]\n[[file]]\nname = 'u'\nsize = 9000\ncontent = 'unwritten'\n"
    )
    run = ModelRun(sc, "6.18")
    run.create_files()
    want = file_content(sc.name, sc.files[0])
    assert want[4096:8192] == bytes(4096)
    assert run.files.read("d", 0, 20000) == want
    assert run.files.read("d", 19000, 5000) == want[19000:]
    assert run.files.read("d", 30000, 10) == b""
    assert run.files.read("u", 0, 9000) == bytes(9000)
    inode = run.fs.lookup("u")
    assert inode is not None and all(unw for *_x, unw in inode.ext.extents())
    # a dirty cached page holds the newest bytes
    fd = run.proc.open("/d", 2)
    buf = run.proc.mmap(4096)
    run.proc.write_user(buf, b"\x11" * 100)
    assert run.proc.pwrite(fd, buf, 100, 50) == 100
    assert run.files.read("d", 0, 200) == want[:50] + b"\x11" * 100 + want[150:200]


def test_device_limits_and_machine_sizes() -> None:
    lim = device_limits(DeviceSpec())
    assert (lim.logical_block_size, lim.physical_block_size, lim.dma_alignment) == (512, 4096, 511)
    assert (lim.max_sectors_kb, lim.max_segments) == (4096, 254)
    lim = device_limits(DeviceSpec(max_sectors_kb=128, extra={"max_segment_size": 65536}))
    assert (lim.max_sectors_kb, lim.max_segment_size) == (128, 65536)
    with pytest.raises(ValueError):
        device_limits(DeviceSpec(logical_block_size=1000))
    mem, disk = machine_sizes(_load("sizes/read-64m.toml"))
    assert mem >= 3 * (64 << 20) and disk >= 2 * (64 << 20)


def test_bad_device_table_is_an_error_sentence() -> None:
    sc = loads_scenario("[scenario]\nname = 'd'\n[device]\nlogical_block_size = 1000\n")
    res = run_model(sc, "6.18")
    assert res.error is not None and res.error.startswith("setting up the machine: ")
    assert "logical_block_size 1000" in res.error


# --- bios and the explain view ------------------------------------------------------------------
def test_bios_and_view() -> None:
    sc = _load("alignment/read-1m-buf-offset-512.toml")
    res = run_model(sc, "6.18", bios=True, explain=True)
    st = res.step(4)
    assert st is not None and st.bios is not None and st.view is not None
    assert [(op[0], off, size) for op, off, size in st.bios] == [("R", 0, 1 << 20)]
    assert any(v.startswith("pin ") and "page(s)" in v for v in st.view)
    assert any("while held" in v and "refcount" in v for v in st.view)
    assert any("request(s) issued" in v for v in st.view)
    plain = run_model(sc, "6.18")
    assert plain.step(4).bios is None  # type: ignore[union-attr]


def test_file_offsets_of_disk_bytes() -> None:
    ext = [(0, 10, 2, False), (5, 40, 1, True)]
    assert model_mod._file_offset(ext, 10 * 4096 + 512) == 512
    assert model_mod._file_offset(ext, 11 * 4096) == 4096
    assert model_mod._file_offset(ext, 40 * 4096 + 7) == 5 * 4096 + 7
    assert model_mod._file_offset(ext, 12 * 4096) is None


def test_thp_mapping_is_2m_aligned() -> None:
    sc = loads_scenario(
        "[scenario]\nname = 't'\n[[step]]\nop = 'mmap'\nname = 'b'\nlength = 4194304\n"
        "thp = true\n"
    )
    run = ModelRun(sc, "6.18")
    run.run_step(sc.steps[0])
    m = run.maps["b"]
    assert m.addr % (2 << 20) == 0 and m.length == 4 << 20
    vmas = run.proc.mm.vmas_in(m.addr - 4096, m.addr + m.length + 4096)
    assert [(v.vm_start, v.vm_end) for v in vmas] == [(m.addr, m.addr + m.length)]
    assert np.all(vmas[0].pt_pfn == -1)

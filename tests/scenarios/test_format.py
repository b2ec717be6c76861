"""Scenario loader: every example file loads; bad files fail with one exact sentence."""

from __future__ import annotations

from pathlib import Path

import pytest

from dioscope.scenarios.format import (
    Expect,
    IovSeg,
    ScenarioError,
    find_scenarios,
    load_scenario,
    load_scenarios,
    loads_scenario,
)

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "scenarios"

HEAD = """
[scenario]
name = "t"

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
"""


def test_every_example_loads() -> None:
    files = find_scenarios([EXAMPLES])
    assert len(files) >= 8
    scenarios = load_scenarios([EXAMPLES])
    assert len({s.name for s in scenarios}) == len(files)
    for sub in ("alignment", "iovec", "eof", "buffers"):
        assert any(f.parent.name == sub for f in files)


def test_issue_example_parses() -> None:
    sc = loads_scenario(
        HEAD
        + """
[[step]]
op = "preadv"
fd = "fd"
iov = [["buf", 0, 512], ["buf", 512, 512]]
offset = 0

[step.expect]
ret = 1024
pins = [2, 2]
data = "ok"
[step.expect."5.9"]
pins = [0, 0]
"""
    )
    assert sc.profiles == ("5.9", "5.9-pin", "6.18")
    assert sc.host is True
    assert sc.device.logical_block_size == 512 and sc.device.max_segments == 254
    assert sc.files[0].content == "random"
    step = sc.steps[2]
    assert step.index == 3 and step.op == "preadv" and step.measured
    assert step.args["iov"] == (IovSeg("buf", 0, 512), IovSeg("buf", 512, 512))
    assert step.expect_for("6.18") == Expect(ret=1024, pins=(2, 2), data="ok")
    assert step.expect_for("5.9") == Expect(ret=1024, pins=(0, 0), data="ok")
    assert not sc.steps[0].measured and sc.steps[0].expect_for("6.18") is None
    assert sc.steps[0].args == {
        "name": "buf",
        "length": 8192,
        "prot": "rw",
        "flags": ("private",),
        "file": None,
        "thp": False,
    }
    assert sc.steps[1].args["flags"] == ("rdonly", "direct")
    assert not sc.needs_fork


def test_override_of_ret_by_errno_replaces_the_outcome() -> None:
    sc = loads_scenario(
        HEAD
        + """
[[step]]
op = "pread"
fd = "fd"
buf = "buf"
length = 4096
offset = 0
[step.expect]
ret = 4096
extension = "kept"
[step.expect."5.9"]
errno = "EFAULT"
"""
    )
    step = sc.steps[2]
    assert step.expect_for("5.9") == Expect(errno="EFAULT", extra={"extension": "kept"})
    assert step.expect_for("6.18") == Expect(ret=4096, extra={"extension": "kept"})
    assert step.expect_for("6.18").keys() == ["ret"]  # type: ignore[union-attr]


def test_normalised_values_and_defaults() -> None:
    sc = loads_scenario(
        HEAD
        + """
[[step]]
op = "fill"
buf = "buf"
at = 4096
pattern = "0x5A"

[[step]]
op = "fill"
buf = "buf"
pattern = "zero"

[[step]]
op = "mprotect"
buf = "buf"
prot = "wr"

[[step]]
op = "pwritev2"
fd = "fd"
iov = [["0xffff888000000000", 0, 512], ["buf", 4096, 512]]
offset = -1
rwf = "nowait hipri"
unknown_key = 1
"""
    )
    fill, zero, prot, w = sc.steps[2:]
    assert fill.args == {"buf": "buf", "at": 4096, "pattern": 0x5A, "length": 4096}
    assert zero.args["pattern"] == 0 and zero.args["length"] == 8192
    assert prot.args["prot"] == "rw" and prot.args["at"] == 0 and prot.args["length"] == 8192
    assert w.args["iov"][0] == IovSeg(0xFFFF888000000000, 0, 512)
    assert w.args["rwf"] == ("nowait", "hipri") and w.args["offset"] == -1
    assert w.extra == {"unknown_key": 1}
    assert sc.needs_fork


# (appended TOML, exact error sentence); "f.toml" is the path given to the loader.
BAD: list[tuple[str, str]] = [
    (
        '[[step]]\nop = "mmapp"\n',
        "f.toml: step 3: key \"op\" names unknown op 'mmapp' (known: mmap, fill, touch, munmap, "
        "mprotect, madvise, open, close, pread, pwrite, preadv, pwritev, preadv2, pwritev2, "
        "ftruncate, fallocate, fsync)",
    ),
    ("[[step]]\nbuf = 1\n", 'f.toml: step 3: missing required key "op"'),
    (
        '[[step]]\nop = "preadv"\nfd = "fd"\niov = []\n',
        'f.toml: step 3 (preadv): missing required key "offset"',
    ),
    (
        '[[step]]\nop = "open"\nname = "g"\nfile = "data"\nflags = "rdonly direkt"\n',
        'f.toml: step 3 (open): key "flags" has unknown word "direkt" (expected words from: '
        "rdonly, wronly, rdwr, direct, creat, trunc, sync, dsync)",
    ),
    (
        '[[step]]\nop = "open"\nname = "g"\nfile = "data"\nflags = "rdonly wronly"\n',
        'f.toml: step 3 (open): key "flags" must hold exactly one of rdonly, wronly, rdwr, '
        'not "rdonly wronly"',
    ),
    (
        '[[step]]\nop = "mmap"\nname = "b2"\nlength = 4096\nflags = "populate"\n',
        'f.toml: step 3 (mmap): key "flags" must hold exactly one of private, shared, '
        'not "populate"',
    ),
    (
        '[[step]]\nop = "mprotect"\nbuf = "buf"\nprot = "rwz"\n',
        'f.toml: step 3 (mprotect): key "prot" must be "none" or letters from "rwx", not "rwz"',
    ),
    (
        '[[step]]\nop = "fill"\nbuf = "buf"\npattern = "0x100"\n',
        'f.toml: step 3 (fill): key "pattern" must be "random", "zero" or a byte value '
        '(0..255 or "0x00".."0xff"), not \'0x100\'',
    ),
    (
        '[[step]]\nop = "fill"\nbuf = "buf"\npattern = 256\n',
        'f.toml: step 3 (fill): key "pattern" must be "random", "zero" or a byte value '
        '(0..255 or "0x00".."0xff"), not 256',
    ),
    (
        '[[step]]\nop = "fill"\nbuf = "buf"\nat = 4096\nlength = 8192\npattern = 0\n',
        'f.toml: step 3 (fill): keys "at" and "length" (4096, 8192) reach past the end of '
        'mapping "buf" (8192 bytes)',
    ),
    (
        '[[step]]\nop = "pread"\nfd = "fd"\nbuf = "buf"\nlength = "4096"\noffset = 0\n',
        "f.toml: step 3 (pread): key \"length\" must be an integer, not string '4096'",
    ),
    (
        '[[step]]\nop = "pread"\nfd = "nofd"\nbuf = "buf"\nlength = 4096\noffset = 0\n',
        'f.toml: step 3 (pread): key "fd" names "nofd", which no earlier open step defines',
    ),
    (
        '[[step]]\nop = "preadv"\nfd = "fd"\niov = [["bug", 0, 512]]\noffset = 0\n',
        'f.toml: step 3 (preadv): key "iov" entry 0 names "bug", which no earlier mmap step '
        "defines",
    ),
    (
        '[[step]]\nop = "preadv"\nfd = "fd"\niov = [["buf", 0]]\noffset = 0\n',
        'f.toml: step 3 (preadv): key "iov" entry 0 must be [buf, offset, length] with integer '
        "offset and length, not ['buf', 0]",
    ),
    (
        '[[step]]\nop = "preadv2"\nfd = "fd"\niov = []\noffset = 0\nrwf = "nowiat"\n',
        'f.toml: step 3 (preadv2): key "rwf" has unknown word "nowiat" (expected words from: '
        "hipri, dsync, sync, nowait, append, noappend, atomic, dontcache)",
    ),
    (
        '[[step]]\nop = "madvise"\nbuf = "buf"\nadvice = "free"\n',
        'f.toml: step 3 (madvise): key "advice" must be one of dontneed, hugepage, nohugepage, '
        'not "free"',
    ),
    (
        '[[step]]\nop = "touch"\nbuf = "0x1000"\n',
        'f.toml: step 3 (touch): key "buf" must name a mapping, not the address "0x1000"',
    ),
    (
        '[[step]]\nop = "close"\nfd = "fd"\n[step.expect]\nret = 0\nerrno = "EBADF"\n',
        'f.toml: step 3 (close): keys "expect.ret" and "expect.errno" exclude each other',
    ),
    (
        '[[step]]\nop = "close"\nfd = "fd"\n[step.expect]\nerrno = "EWHAT"\n',
        'f.toml: step 3 (close): key "expect.errno" must be an errno name such as "EINVAL", '
        "not 'EWHAT'",
    ),
    (
        '[[step]]\nop = "close"\nfd = "fd"\n[step.expect]\npins = [1]\n',
        'f.toml: step 3 (close): key "expect.pins" must be [acquired, released] with '
        "non-negative integers, not [1]",
    ),
    (
        '[[step]]\nop = "close"\nfd = "fd"\n[step.expect]\ntail = "zeroes"\n',
        'f.toml: step 3 (close): key "expect.tail" must be "zero" or "untouched", not \'zeroes\'',
    ),
    (
        '[[step]]\nop = "close"\nfd = "fd"\n[step.expect]\ndata = "same"\n',
        'f.toml: step 3 (close): key "expect.data" must be "ok", not \'same\'',
    ),
    (
        '[[step]]\nop = "close"\nfd = "fd"\n[step.expect."5.9pin"]\nret = 0\n',
        'f.toml: step 3 (close): key "expect.\'5.9pin\'" overrides unknown profile "5.9pin" '
        "(known: 5.9, 5.9-pin, 6.18)",
    ),
    (
        '[[step]]\nop = "close"\nfd = "fd"\n[step.expect."5.9"]\ntransferred = -1\n',
        "f.toml: step 3 (close): key \"expect.'5.9'.transferred\" must be a non-negative "
        "integer, not -1",
    ),
    (
        '[[step]]\nop = "mmap"\nname = "m"\nlength = 4096\nfile = "nosuch"\n',
        'f.toml: step 3 (mmap): key "file" names "nosuch", which no [[file]] entry defines',
    ),
    (
        '[[step]]\nop = "mmap"\nname = "0x10"\nlength = 4096\n',
        'f.toml: step 3 (mmap): key "name" must not look like an address, not "0x10"',
    ),
    (
        '[[step]]\nop = "mmap"\nname = "m"\nlength = 4096\nthp = "yes"\n',
        "f.toml: step 3 (mmap): key \"thp\" must be true or false, not string 'yes'",
    ),
    (
        '[[step]]\nop = "fallocate"\nfd = "fd"\noffset = 0\nlength = 1\nmode = "punch"\n',
        'f.toml: step 3 (fallocate): key "mode" has unknown word "punch" (expected words from: '
        "keep_size, punch_hole, collapse_range, zero_range, insert_range, unshare_range)",
    ),
    (
        '[[step]]\nop = "touch"\nbuf = "buf"\nmode = "rw"\n',
        'f.toml: step 3 (touch): key "mode" must be one of read, write, not "rw"',
    ),
    (
        '[[file]]\nname = "data"\nsize = 1\n',
        'f.toml: [[file]] 2: key "name" must be non-empty and unique, not "data"',
    ),
    (
        '[[file]]\nname = "x"\nsize = 4096\ncontent = "sparse"\n',
        'f.toml: [[file]] 2: key "content" must be one of random, zero, hole, unwritten, '
        'not "sparse"',
    ),
    (
        '[[file]]\nname = "x"\nsize = 4096\nholes = [[0, 8192]]\n',
        'f.toml: [[file]] 2: key "holes" entry 0 [0, 8192] ends past the file size 4096',
    ),
    ('[[file]]\nname = "x"\n', 'f.toml: [[file]] 2: missing required key "size"'),
    (
        "[device]\nlogical_block_size = -512\n",
        'f.toml: [device]: key "logical_block_size" must be non-negative and below 2**64, not -512',
    ),
]


@pytest.mark.parametrize(("extra", "sentence"), BAD)
def test_bad_file_is_rejected_with_one_sentence(extra: str, sentence: str) -> None:
    with pytest.raises(ScenarioError) as exc:
        loads_scenario(HEAD + extra, "f.toml")
    assert str(exc.value) == sentence


@pytest.mark.parametrize(
    ("text", "sentence"),
    [
        ("", 'f.toml: [scenario]: table is missing (key "scenario")'),
        ("[scenario]\ndescription = 'x'\n", 'f.toml: [scenario]: missing required key "name"'),
        (
            "[scenario]\nname = 't'\nprofiles = ['6.1']\n",
            'f.toml: [scenario]: key "profiles" names unknown profile "6.1" '
            "(known: 5.9, 5.9-pin, 6.18)",
        ),
        (
            "[scenario]\nname = 't'\nhost = 'no'\n",
            "f.toml: [scenario]: key \"host\" must be true or false, not string 'no'",
        ),
        (
            "[scenario\nname = 't'\n",
            "f.toml: not valid TOML: Expected ']' at the end of a table declaration "
            "(at line 1, column 10)",
        ),
    ],
)
def test_bad_header_is_rejected(text: str, sentence: str) -> None:
    with pytest.raises(ScenarioError) as exc:
        loads_scenario(text, "f.toml")
    assert str(exc.value) == sentence


def test_host_flag_and_profiles() -> None:
    sc = loads_scenario("[scenario]\nname = 'm'\nprofiles = ['5.9']\nhost = false\nx = 1\n")
    assert sc.profiles == ("5.9",) and sc.host is False and sc.extra == {"x": 1}


def test_missing_file_and_duplicate_names(tmp_path: Path) -> None:
    with pytest.raises(ScenarioError) as exc:
        load_scenario(tmp_path / "nope.toml")
    assert (
        str(exc.value) == f"{tmp_path / 'nope.toml'}: cannot read the file: "
        "No such file or directory"
    )
    (tmp_path / "a.toml").write_text("[scenario]\nname = 'same'\n")
    (tmp_path / "b.toml").write_text("[scenario]\nname = 'same'\n")
    with pytest.raises(ScenarioError) as exc:
        load_scenarios([tmp_path])
    assert str(exc.value) == (
        f'{tmp_path / "b.toml"}: [scenario]: key "name" "same" is already used by '
        f"{tmp_path / 'a.toml'}"
    )

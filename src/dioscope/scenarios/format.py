"""Scenario files: load and validate a scenario TOML file into typed dataclasses.

The format is the contract of issue 5 with the fine print of ``scenario-format.md``: any two
runners (the model's, the host's) must agree on every file.  Unknown keys are kept in ``extra``
dicts (extensions are welcome); everything the format names is checked strictly, and every
error is one sentence naming the file, the step number and the key.
"""

from __future__ import annotations

import errno as errno_mod
import tomllib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from dioscope.scenarios.fields import (
    HEX_ADDR,
    INT_MIN,
    Ctx,
    get_base,
    get_bool,
    get_int,
    get_iov,
    get_pattern,
    get_prot,
    get_str,
    get_word,
    get_words,
    split_known,
    type_name,
)
from dioscope.scenarios.schema import (
    DATA_WORDS,
    DEVICE_KEYS,
    FALLOC_WORDS,
    FILE_CONTENTS,
    IO_OPS,
    MADVICE_WORDS,
    MMAP_WORDS,
    OP_KEYS,
    OPEN_ACCESS,
    OPEN_WORDS,
    OPS,
    PROFILES,
    READ_OPS,
    RWF_WORDS,
    TAIL_WORDS,
    TOUCH_MODES,
    VECTOR_OPS,
    WRITE_OPS,
    DeviceSpec,
    Expect,
    FileSpec,
    IovSeg,
    Scenario,
    ScenarioError,
    Step,
    is_address,
)

__all__ = [
    "IO_OPS",
    "OPS",
    "PROFILES",
    "READ_OPS",
    "VECTOR_OPS",
    "WRITE_OPS",
    "DeviceSpec",
    "Expect",
    "FileSpec",
    "IovSeg",
    "Scenario",
    "ScenarioError",
    "Step",
    "find_scenarios",
    "is_address",
    "load_scenario",
    "load_scenarios",
    "loads_scenario",
]

# --------------------------------------------------------------------------------------------
# Sections


def _parse_header(path: str, doc: Mapping[str, Any]) -> dict[str, Any]:
    ctx = Ctx(path, "[scenario]")
    sc = doc.get("scenario")
    if not isinstance(sc, dict):
        raise ctx.error('table is missing (key "scenario")')
    if "name" not in sc:
        raise ctx.error('missing required key "name"')
    out: dict[str, Any] = {"name": get_str(ctx, sc, "name")}
    if not out["name"]:
        raise ctx.error('key "name" must not be empty')
    out["description"] = get_str(ctx, sc, "description") if "description" in sc else ""
    if "profiles" in sc:
        profs = sc["profiles"]
        if not isinstance(profs, list) or not profs or not all(isinstance(p, str) for p in profs):
            raise ctx.error('key "profiles" must be a non-empty array of profile names')
        for p in profs:
            if p not in PROFILES:
                raise ctx.error(
                    f'key "profiles" names unknown profile "{p}" (known: {", ".join(PROFILES)})'
                )
        out["profiles"] = tuple(profs)
    out["host"] = get_bool(ctx, sc, "host") if "host" in sc else True
    out["extra"] = split_known(sc, ("name", "description", "profiles", "host"))
    return out


def _parse_device(path: str, doc: Mapping[str, Any]) -> DeviceSpec:
    ctx = Ctx(path, "[device]")
    dev = doc.get("device", {})
    if not isinstance(dev, dict):
        raise ctx.error(f'key "device" must be a table, not {type_name(dev)}')
    vals = {k: get_int(ctx, dev, k, minimum=0) for k in DEVICE_KEYS if k in dev}
    return DeviceSpec(**vals, extra=split_known(dev, DEVICE_KEYS))


def _parse_files(path: str, doc: Mapping[str, Any]) -> tuple[FileSpec, ...]:
    raw = doc.get("file", [])
    if not isinstance(raw, list):
        raise Ctx(path, None).error('key "file" must be an array of tables ([[file]])')
    files: list[FileSpec] = []
    for i, t in enumerate(raw, 1):
        ctx = Ctx(path, f"[[file]] {i}")
        if not isinstance(t, dict):
            raise ctx.error("entry must be a table")
        for k in ("name", "size"):
            if k not in t:
                raise ctx.error(f'missing required key "{k}"')
        name = get_str(ctx, t, "name")
        if not name or any(f.name == name for f in files):
            raise ctx.error(f'key "name" must be non-empty and unique, not "{name}"')
        size = get_int(ctx, t, "size", minimum=0)
        content = get_word(ctx, t, "content", FILE_CONTENTS) if "content" in t else "random"
        holes: list[tuple[int, int]] = []
        if "holes" in t:
            hv = t["holes"]
            if not isinstance(hv, list):
                raise ctx.error('key "holes" must be an array of [offset, length] pairs')
            for j, h in enumerate(hv):
                good = (
                    isinstance(h, list)
                    and len(h) == 2
                    and all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in h)
                )
                if not good:
                    raise ctx.error(
                        f'key "holes" entry {j} must be [offset, length] with '
                        f"non-negative integers, not {h!r}"
                    )
                if h[0] + h[1] > size:
                    raise ctx.error(
                        f'key "holes" entry {j} [{h[0]}, {h[1]}] ends past the file size {size}'
                    )
                holes.append((h[0], h[1]))
        extra = split_known(t, ("name", "size", "content", "holes"))
        files.append(FileSpec(name, size, content, tuple(holes), extra))
    return tuple(files)


def _parse_expect_table(ctx: Ctx, t: Mapping[str, Any], *, profile: str | None) -> dict[str, Any]:
    key_prefix = f"expect.'{profile}'." if profile else "expect."
    out: dict[str, Any] = {}
    for k, v in t.items():
        full = key_prefix + k
        if k == "ret":
            if not isinstance(v, int) or isinstance(v, bool):
                raise ctx.error(f'key "{full}" must be an integer, not {type_name(v)} {v!r}')
            out[k] = v
        elif k == "errno":
            if not isinstance(v, str) or not hasattr(errno_mod, v) or not v.startswith("E"):
                raise ctx.error(f'key "{full}" must be an errno name such as "EINVAL", not {v!r}')
            out[k] = v
        elif k == "pins":
            good = (
                isinstance(v, list)
                and len(v) == 2
                and all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in v)
            )
            if not good:
                raise ctx.error(
                    f'key "{full}" must be [acquired, released] with non-negative '
                    f"integers, not {v!r}"
                )
            out[k] = (v[0], v[1])
        elif k == "data":
            if v not in DATA_WORDS:
                raise ctx.error(f'key "{full}" must be "ok", not {v!r}')
            out[k] = v
        elif k == "transferred":
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise ctx.error(f'key "{full}" must be a non-negative integer, not {v!r}')
            out[k] = v
        elif k == "tail":
            if v not in TAIL_WORDS:
                raise ctx.error(f'key "{full}" must be "zero" or "untouched", not {v!r}')
            out[k] = v
        elif isinstance(v, dict):
            if profile is not None:
                raise ctx.error(f'key "{full}" is a table inside a profile override')
            if k not in PROFILES:
                raise ctx.error(
                    f'key "expect.\'{k}\'" overrides unknown profile "{k}" '
                    f"(known: {', '.join(PROFILES)})"
                )
        else:
            out[k] = v  # an extension key, kept as is
    if "ret" in out and "errno" in out:
        raise ctx.error(f'keys "{key_prefix}ret" and "{key_prefix}errno" exclude each other')
    return out


def _parse_step(
    path: str, i: int, t: object, defined: dict[str, set[str]], mappings: dict[str, int]
) -> Step:
    ctx = Ctx(path, f"step {i}")
    if not isinstance(t, dict):
        raise ctx.error("entry must be a table")
    if "op" not in t:
        raise ctx.error('missing required key "op"')
    op = t["op"]
    if op not in OPS:
        raise ctx.error(f'key "op" names unknown op {op!r} (known: {", ".join(OPS)})')
    ctx = Ctx(path, f"step {i} ({op})")
    required, optional = OP_KEYS[op]
    for k in required:
        if k not in t:
            raise ctx.error(f'missing required key "{k}"')
    args: dict[str, Any] = {}
    present = [k for k in required + optional if k in t]
    for k in present:
        args[k] = _parse_arg(ctx, op, k, t, defined, mappings)
    _fill_defaults(ctx, op, args, mappings)
    if op == "mmap":
        if HEX_ADDR.fullmatch(args["name"]):
            raise ctx.error(f'key "name" must not look like an address, not "{args["name"]}"')
        defined["mapping"].add(args["name"])
        mappings[args["name"]] = args["length"]
    if op == "open":
        defined["fd"].add(args["name"])
    expect: dict[str, Any] | None = None
    overrides: dict[str, dict[str, Any]] = {}
    if "expect" in t:
        et = t["expect"]
        if not isinstance(et, dict):
            raise ctx.error(f'key "expect" must be a table, not {type_name(et)}')
        expect = _parse_expect_table(ctx, et, profile=None)
        for k, v in et.items():
            if isinstance(v, dict):
                overrides[k] = _parse_expect_table(ctx, v, profile=k)
    extra = split_known(t, ("op", "expect", *required, *optional))
    return Step(i, op, args, expect, overrides, extra)


def _parse_arg(
    ctx: Ctx,
    op: str,
    k: str,
    t: Mapping[str, Any],
    defined: dict[str, set[str]],
    mappings: dict[str, int],
) -> Any:
    if k in ("at", "length", "offset"):
        nonneg = op in ("mmap", "fill", "touch")
        return get_int(ctx, t, k, minimum=0 if nonneg else INT_MIN)
    if k == "name":
        v = get_str(ctx, t, k)
        if not v:
            raise ctx.error('key "name" must not be empty')
        return v
    if k == "prot":
        return get_prot(ctx, t, k)
    if k == "flags":
        words = get_words(ctx, t, k, MMAP_WORDS if op == "mmap" else OPEN_WORDS)
        group = ("private", "shared") if op == "mmap" else OPEN_ACCESS
        chosen = [w for w in words if w in group]
        if len(chosen) > 1 or (op == "mmap" and not chosen):
            raise ctx.error(
                f'key "flags" must hold exactly one of {", ".join(group)}, not "{t[k]}"'
            )
        return words
    if k == "thp" or k == "datasync":
        return get_bool(ctx, t, k)
    if k == "file":
        v = get_str(ctx, t, k)
        creat = op == "open" and "creat" in str(t.get("flags", "")).split()
        if v not in defined["file"] and not creat:
            raise ctx.error(f'key "file" names "{v}", which no [[file]] entry defines')
        if not v:
            raise ctx.error('key "file" must not be empty')
        return v
    if k == "fd":
        v = get_str(ctx, t, k)
        if v not in defined["fd"]:
            raise ctx.error(f'key "fd" names "{v}", which no earlier open step defines')
        return v
    if k == "buf":
        base = get_base(ctx, t[k], k)
        if isinstance(base, int) and op not in IO_OPS:
            raise ctx.error(f'key "buf" must name a mapping, not the address "{t[k]}"')
        if isinstance(base, str) and base not in defined["mapping"]:
            raise ctx.error(f'key "buf" names "{base}", which no earlier mmap step defines')
        return base
    if k == "iov":
        segs = get_iov(ctx, t, k)
        for j, s in enumerate(segs):
            if isinstance(s.base, str) and s.base not in defined["mapping"]:
                raise ctx.error(
                    f'key "iov" entry {j} names "{s.base}", which no earlier mmap step defines'
                )
        return segs
    if k == "pattern":
        return get_pattern(ctx, t, k)
    if k == "rwf":
        return get_words(ctx, t, k, RWF_WORDS)
    if k == "mode":
        if op == "touch":
            return get_word(ctx, t, k, TOUCH_MODES)
        return get_words(ctx, t, k, FALLOC_WORDS)
    if k == "advice":
        return get_word(ctx, t, k, MADVICE_WORDS)
    raise AssertionError(f"unhandled key {k}")  # pragma: no cover


_DEFAULTS: dict[str, dict[str, Any]] = {
    "mmap": {"prot": "rw", "flags": ("private",), "file": None, "thp": False},
    "fill": {"at": 0},
    "touch": {"at": 0, "mode": "read"},
    "munmap": {"at": 0},
    "mprotect": {"at": 0},
    "madvise": {"at": 0},
    "open": {"flags": ("rdonly",)},
    "pread": {"at": 0},
    "pwrite": {"at": 0},
    "preadv2": {"rwf": ()},
    "pwritev2": {"rwf": ()},
    "fallocate": {"mode": ()},
    "fsync": {"datasync": False},
}
_MEMORY_OPS = ("fill", "touch", "munmap", "mprotect", "madvise")


def _fill_defaults(ctx: Ctx, op: str, args: dict[str, Any], mappings: dict[str, int]) -> None:
    """Fill in optional keys; a memory op's ``length`` defaults to the rest of its mapping."""
    for k, v in _DEFAULTS.get(op, {}).items():
        args.setdefault(k, v)
    if op not in _MEMORY_OPS:
        return
    size = mappings[args["buf"]]
    if "length" not in args:
        if args["at"] > size:
            raise ctx.error(
                f'key "at" ({args["at"]}) is past the end of mapping "{args["buf"]}" '
                f'({size} bytes) and "length" is not given'
            )
        args["length"] = size - args["at"]
    if op in ("fill", "touch") and args["at"] + args["length"] > size:
        raise ctx.error(
            f'keys "at" and "length" ({args["at"]}, {args["length"]}) reach past the end of '
            f'mapping "{args["buf"]}" ({size} bytes)'
        )


def loads_scenario(text: str, path: str = "<string>") -> Scenario:
    """Parse and validate scenario TOML ``text``; ``path`` names it in error messages.

    Return: the Scenario. Raises ScenarioError (one sentence) on any violation.
    """
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ScenarioError(f"{path}: not valid TOML: {e}") from None
    header = _parse_header(path, doc)
    device = _parse_device(path, doc)
    files = _parse_files(path, doc)
    raw_steps = doc.get("step", [])
    if not isinstance(raw_steps, list):
        raise ScenarioError(f'{path}: key "step" must be an array of tables ([[step]])')
    defined: dict[str, set[str]] = {"file": {f.name for f in files}, "mapping": set(), "fd": set()}
    mappings: dict[str, int] = {}
    steps = tuple(_parse_step(path, i, t, defined, mappings) for i, t in enumerate(raw_steps, 1))
    extra = split_known(doc, ("scenario", "device", "file", "step"))
    hextra = header.pop("extra")
    return Scenario(
        path=path, device=device, files=files, steps=steps, extra={**extra, **hextra}, **header
    )


def load_scenario(path: str | Path) -> Scenario:
    """Load and validate the scenario file at ``path``.

    Return: the Scenario. Raises ScenarioError (one sentence naming the file) on any violation,
    including an unreadable file.
    """
    p = str(path)
    try:
        with open(p, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise ScenarioError(f"{p}: cannot read the file: {e.strerror}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ScenarioError(f"{p}: not valid UTF-8") from None
    return loads_scenario(text, p)


def find_scenarios(paths: Iterable[str | Path]) -> list[Path]:
    """Expand files and directories (recursively, ``*.toml``) into a sorted list of files."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out.extend(sorted(q for q in p.rglob("*.toml") if q.is_file()))
        else:
            out.append(p)
    return out


def load_scenarios(paths: Iterable[str | Path]) -> list[Scenario]:
    """Load every scenario file under ``paths``; scenario names must be unique."""
    seen: dict[str, str] = {}
    out = []
    for p in find_scenarios(paths):
        s = load_scenario(p)
        if s.name in seen:
            raise ScenarioError(
                f'{p}: [scenario]: key "name" "{s.name}" is already used by {seen[s.name]}'
            )
        seen[s.name] = str(p)
        out.append(s)
    return out

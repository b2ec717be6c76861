"""Value validators for scenario files: each raises ScenarioError as one sentence.

The sentence names the file, the table ("step 3 (preadv)", "[[file]] 1") and the key, e.g.
``x.toml: step 3 (preadv): key "offset" must be an integer, not string '0'``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from dioscope.scenarios.schema import IovSeg, ScenarioError

HEX_ADDR = re.compile(r"0[xX][0-9a-fA-F]+")
BYTE_STR = re.compile(r"0[xX][0-9a-fA-F]{1,2}")
INT_MIN = -(1 << 63)
INT_MAX = (1 << 64) - 1


class Ctx:
    """Where an error happened: the file and the table ("step 3 (preadv)", "[[file]] 2")."""

    def __init__(self, path: str, where: str | None) -> None:
        self.path = path
        self.where = where

    def error(self, msg: str) -> ScenarioError:
        prefix = f"{self.path}: {self.where}" if self.where else self.path
        return ScenarioError(f"{prefix}: {msg}")


def type_name(v: object) -> str:
    return {
        bool: "boolean",
        int: "integer",
        str: "string",
        float: "float",
        list: "array",
        dict: "table",
    }.get(type(v), type(v).__name__)


def get_int(ctx: Ctx, table: Mapping[str, Any], key: str, *, minimum: int = INT_MIN) -> int:
    v = table[key]
    if not isinstance(v, int) or isinstance(v, bool):
        raise ctx.error(f'key "{key}" must be an integer, not {type_name(v)} {v!r}')
    if v < minimum or v > INT_MAX:
        lo = "non-negative" if minimum == 0 else f"at least {minimum}"
        raise ctx.error(f'key "{key}" must be {lo} and below 2**64, not {v}')
    return v


def get_str(ctx: Ctx, table: Mapping[str, Any], key: str) -> str:
    v = table[key]
    if not isinstance(v, str):
        raise ctx.error(f'key "{key}" must be a string, not {type_name(v)} {v!r}')
    return v


def get_bool(ctx: Ctx, table: Mapping[str, Any], key: str) -> bool:
    v = table[key]
    if not isinstance(v, bool):
        raise ctx.error(f'key "{key}" must be true or false, not {type_name(v)} {v!r}')
    return v


def get_word(ctx: Ctx, table: Mapping[str, Any], key: str, allowed: Iterable[str]) -> str:
    v = get_str(ctx, table, key)
    allowed = tuple(allowed)
    if v not in allowed:
        raise ctx.error(f'key "{key}" must be one of {", ".join(allowed)}, not "{v}"')
    return v


def get_words(
    ctx: Ctx, table: Mapping[str, Any], key: str, allowed: Iterable[str]
) -> tuple[str, ...]:
    v = get_str(ctx, table, key)
    allowed = tuple(allowed)
    words = tuple(v.split())
    for w in words:
        if w not in allowed:
            raise ctx.error(
                f'key "{key}" has unknown word "{w}" (expected words from: {", ".join(allowed)})'
            )
    if len(set(words)) != len(words):
        raise ctx.error(f'key "{key}" repeats a word in "{v}"')
    return words


def get_prot(ctx: Ctx, table: Mapping[str, Any], key: str) -> str:
    v = get_str(ctx, table, key)
    if v == "none":
        return ""
    if not v or any(c not in "rwx" for c in v) or len(set(v)) != len(v):
        raise ctx.error(f'key "{key}" must be "none" or letters from "rwx", not "{v}"')
    return "".join(c for c in "rwx" if c in v)


def get_pattern(ctx: Ctx, table: Mapping[str, Any], key: str) -> str | int:
    v = table[key]
    if isinstance(v, str):
        if v in ("random", "zero"):
            return "random" if v == "random" else 0
        if BYTE_STR.fullmatch(v):
            return int(v, 16)
    elif isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 255:
        return v
    raise ctx.error(
        f'key "{key}" must be "random", "zero" or a byte value '
        f'(0..255 or "0x00".."0xff"), not {v!r}'
    )


def get_base(ctx: Ctx, v: object, key: str) -> str | int:
    if not isinstance(v, str) or not v:
        raise ctx.error(
            f'key "{key}" must name a mapping or be a hex address string, not {type_name(v)} {v!r}'
        )
    if HEX_ADDR.fullmatch(v):
        addr = int(v, 16)
        if addr > INT_MAX:
            raise ctx.error(f'key "{key}" address {v} does not fit in 64 bits')
        return addr
    return v


def get_iov(ctx: Ctx, table: Mapping[str, Any], key: str) -> tuple[IovSeg, ...]:
    v = table[key]
    if not isinstance(v, list):
        raise ctx.error(
            f'key "{key}" must be an array of [buf, offset, length] entries, not {type_name(v)}'
        )
    segs = []
    for i, e in enumerate(v):
        ok = isinstance(e, list) and len(e) == 3
        ok = ok and all(isinstance(x, int) and not isinstance(x, bool) for x in e[1:])
        if not ok:
            raise ctx.error(
                f'key "{key}" entry {i} must be [buf, offset, length] with integer '
                f"offset and length, not {e!r}"
            )
        base = get_base(ctx, e[0], f"{key}[{i}]")
        for x in e[1:]:
            if x < INT_MIN or x > INT_MAX:
                raise ctx.error(f'key "{key}" entry {i} has {x}, which does not fit in 64 bits')
        segs.append(IovSeg(base, e[1], e[2]))
    return tuple(segs)


def split_known(table: Mapping[str, Any], known: Iterable[str]) -> dict[str, Any]:
    known = set(known)
    return {k: v for k, v in table.items() if k not in known}

"""Scenario files: the format's vocabulary (ops, words, profiles) and its typed dataclasses.

``format`` parses a TOML file into these; runners consume them.  Harness code: the model never
imports this package.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

PROFILES: tuple[str, ...] = ("5.9", "5.9-pin", "6.18")

OPS: tuple[str, ...] = (
    "mmap",
    "fill",
    "touch",
    "munmap",
    "mprotect",
    "madvise",
    "open",
    "close",
    "pread",
    "pwrite",
    "preadv",
    "pwritev",
    "preadv2",
    "pwritev2",
    "ftruncate",
    "fallocate",
    "fsync",
)
READ_OPS = frozenset({"pread", "preadv", "preadv2"})
WRITE_OPS = frozenset({"pwrite", "pwritev", "pwritev2"})
IO_OPS = READ_OPS | WRITE_OPS
VECTOR_OPS = frozenset({"preadv", "pwritev", "preadv2", "pwritev2"})

EXPECT_KEYS: tuple[str, ...] = ("ret", "errno", "pins", "data", "transferred", "tail")
FILE_CONTENTS: tuple[str, ...] = ("random", "zero", "hole", "unwritten")
OPEN_ACCESS: tuple[str, ...] = ("rdonly", "wronly", "rdwr")
OPEN_WORDS: tuple[str, ...] = (*OPEN_ACCESS, "direct", "creat", "trunc", "sync", "dsync")
MMAP_WORDS: tuple[str, ...] = ("private", "shared", "populate")
# Values are the kernel's RWF_* bits (include/uapi/linux/fs.h).
RWF_WORDS: dict[str, int] = {
    "hipri": 0x01,
    "dsync": 0x02,
    "sync": 0x04,
    "nowait": 0x08,
    "append": 0x10,
    "noappend": 0x20,
    "atomic": 0x40,
    "dontcache": 0x80,
}
# Values are the kernel's FALLOC_FL_* bits (include/uapi/linux/falloc.h).
FALLOC_WORDS: dict[str, int] = {
    "keep_size": 0x01,
    "punch_hole": 0x02,
    "collapse_range": 0x08,
    "zero_range": 0x10,
    "insert_range": 0x20,
    "unshare_range": 0x40,
}
MADVICE_WORDS: tuple[str, ...] = ("dontneed", "hugepage", "nohugepage")
TOUCH_MODES: tuple[str, ...] = ("read", "write")
TAIL_WORDS: tuple[str, ...] = ("zero", "untouched")
DATA_WORDS: tuple[str, ...] = ("ok",)
DEVICE_KEYS: tuple[str, ...] = (
    "logical_block_size",
    "physical_block_size",
    "dma_alignment",
    "max_sectors_kb",
    "max_segments",
)


# op -> (required keys, optional keys)
OP_KEYS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "mmap": (("name", "length"), ("prot", "flags", "file", "thp")),
    "fill": (("buf", "pattern"), ("at", "length")),
    "touch": (("buf",), ("at", "length", "mode")),
    "munmap": (("buf",), ("at", "length")),
    "mprotect": (("buf", "prot"), ("at", "length")),
    "madvise": (("buf", "advice"), ("at", "length")),
    "open": (("name", "file"), ("flags",)),
    "close": (("fd",), ()),
    "pread": (("fd", "buf", "length", "offset"), ("at",)),
    "pwrite": (("fd", "buf", "length", "offset"), ("at",)),
    "preadv": (("fd", "iov", "offset"), ()),
    "pwritev": (("fd", "iov", "offset"), ()),
    "preadv2": (("fd", "iov", "offset"), ("rwf",)),
    "pwritev2": (("fd", "iov", "offset"), ("rwf",)),
    "ftruncate": (("fd", "length"), ()),
    "fallocate": (("fd", "offset", "length"), ("mode",)),
    "fsync": (("fd",), ("datasync",)),
}


class ScenarioError(ValueError):
    """A scenario file that does not follow the format; the message is one sentence."""


def is_address(base: str | int) -> bool:
    """Return True when an iovec/buf base is an absolute address rather than a mapping name."""
    return isinstance(base, int)


@dataclass(frozen=True)
class DeviceSpec:
    """Queue-limit overrides for the model's device (``[device]``); the host ignores them."""

    logical_block_size: int = 512
    physical_block_size: int = 4096
    dma_alignment: int = 511
    max_sectors_kb: int = 4096
    max_segments: int = 254
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class FileSpec:
    """One ``[[file]]`` entry: created before the first step, written and fsynced."""

    name: str
    size: int
    content: str = "random"
    holes: tuple[tuple[int, int], ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class IovSeg:
    """One iovec entry: ``base`` is a mapping name or an absolute address (int)."""

    base: str | int
    offset: int
    length: int


@dataclass(frozen=True)
class Expect:
    """The expectations of one step for one profile; None means "not checked"."""

    ret: int | None = None
    errno: str | None = None
    pins: tuple[int, int] | None = None
    data: str | None = None
    transferred: int | None = None
    tail: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def keys(self) -> list[str]:
        """Return the names of the expectation keys that are set, in format order."""
        return [k for k in EXPECT_KEYS if getattr(self, k) is not None]


@dataclass(frozen=True)
class Step:
    """One ``[[step]]``: ``index`` is 1-based; ``args`` holds the normalised op fields.

    Normalised values: ints for offsets and lengths; ``prot`` a string of "rwx" letters in that
    order ("" for none); ``flags``/``rwf``/``mode`` (fallocate) a tuple of words; ``pattern``
    "random" or an int 0..255; ``iov`` a tuple of IovSeg; ``buf`` a mapping name or an int
    address.  Optional keys are filled in with their defaults (``at`` 0; a memory op's
    ``length`` the rest of its mapping; ``prot`` "rw"; ``flags`` ("private",) for mmap and
    ("rdonly",) for open; ``rwf`` and fallocate ``mode`` (); ``mode`` "read" for touch;
    ``file`` None and ``thp`` False for mmap; ``datasync`` False).
    """

    index: int
    op: str
    args: dict[str, Any]
    expect: dict[str, Any] | None = None
    overrides: dict[str, dict[str, Any]] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def measured(self) -> bool:
        """True when the step has a ``[step.expect]`` table (only those are measured)."""
        return self.expect is not None

    @property
    def label(self) -> str:
        """The step's name in sentences: ``step 3 (preadv)``."""
        return f"step {self.index} ({self.op})"

    def expect_for(self, profile: str) -> Expect | None:
        """Return the expectations for ``profile``: the base table merged with its override.

        An override that sets ``ret`` drops the base ``errno`` and vice versa (both describe
        the outcome). Returns None when the step has no expectations.
        """
        if self.expect is None:
            return None
        merged = dict(self.expect)
        over = self.overrides.get(profile, {})
        if "ret" in over:
            merged.pop("errno", None)
        if "errno" in over:
            merged.pop("ret", None)
        merged.update(over)
        extra = {k: v for k, v in merged.items() if k not in EXPECT_KEYS}
        pins = merged.get("pins")
        return Expect(
            ret=merged.get("ret"),
            errno=merged.get("errno"),
            pins=(pins[0], pins[1]) if pins is not None else None,
            data=merged.get("data"),
            transferred=merged.get("transferred"),
            tail=merged.get("tail"),
            extra=extra,
        )


@dataclass(frozen=True)
class Scenario:
    """A whole scenario file."""

    name: str
    path: str
    description: str = ""
    profiles: tuple[str, ...] = PROFILES
    host: bool = True
    device: DeviceSpec = field(default_factory=DeviceSpec)
    files: tuple[FileSpec, ...] = ()
    steps: tuple[Step, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)

    def file(self, name: str) -> FileSpec | None:
        """Return the ``[[file]]`` entry called ``name``, or None."""
        for f in self.files:
            if f.name == name:
                return f
        return None

    def mapping_lengths(self) -> dict[str, int]:
        """Return the length of every mapping name as its (last) mmap step declares it."""
        return {s.args["name"]: s.args["length"] for s in self.steps if s.op == "mmap"}

    @property
    def needs_fork(self) -> bool:
        """True when a host runner must run the scenario in a forked child."""
        for s in self.steps:
            if s.op in ("munmap", "mprotect"):
                return True
            if is_address(s.args.get("buf", "")):
                return True
            if any(is_address(seg.base) for seg in s.args.get("iov", ())):
                return True
        return False

"""Deterministic scenario bytes, exactly as ``scenario-format.md`` defines them.

* File content ``random``: byte *i* of file F is byte *i* of SHAKE-256("<scenario>/file/<F>").
* ``fill`` with ``pattern = "random"``: byte *i* of mapping B, counted from the mapping's start
  (not from ``at``), is byte *i* of SHAKE-256("<scenario>/buf/<B>").
* Other patterns are one repeated byte (``"zero"`` is 0).

Seed strings are encoded as UTF-8 (scenario names may hold any characters).
"""

from __future__ import annotations

import hashlib
from functools import lru_cache

from dioscope.scenarios.format import FileSpec


def file_seed(scenario_name: str, file_name: str) -> str:
    """Return the SHAKE-256 seed string of file ``file_name``."""
    return f"{scenario_name}/file/{file_name}"


def buf_seed(scenario_name: str, mapping_name: str) -> str:
    """Return the SHAKE-256 seed string of mapping ``mapping_name``."""
    return f"{scenario_name}/buf/{mapping_name}"


@lru_cache(maxsize=4)
def _stream(seed: str, length: int) -> bytes:
    return hashlib.shake_256(seed.encode("utf-8")).digest(length)


def shake_bytes(seed: str, start: int, length: int) -> bytes:
    """Return bytes ``[start, start + length)`` of the SHAKE-256 stream of ``seed``."""
    if start < 0 or length < 0:
        raise ValueError("start and length must be non-negative")
    if length == 0:
        return b""
    # Round the generated length up so that nearby requests share one cached stream.
    need = start + length
    gen = max(4096, 1 << (need - 1).bit_length())
    return _stream(seed, gen)[start:need]


def file_random_bytes(scenario_name: str, file_name: str, start: int, length: int) -> bytes:
    """Return bytes ``[start, start + length)`` of a ``random`` file's content."""
    return shake_bytes(file_seed(scenario_name, file_name), start, length)


def buf_random_bytes(scenario_name: str, mapping_name: str, at: int, length: int) -> bytes:
    """Return the ``random`` fill of mapping bytes ``[at, at + length)``."""
    return shake_bytes(buf_seed(scenario_name, mapping_name), at, length)


def pattern_bytes(
    pattern: str | int, scenario_name: str, mapping_name: str, at: int, length: int
) -> bytes:
    """Return the bytes ``fill`` writes at mapping offset ``at`` for a normalised pattern.

    ``pattern`` is "random" or a byte value 0..255 (as ``Step.args["pattern"]`` holds it).
    """
    if pattern == "random":
        return buf_random_bytes(scenario_name, mapping_name, at, length)
    if isinstance(pattern, int) and 0 <= pattern <= 255:
        return bytes([pattern]) * length
    raise ValueError(f"bad pattern {pattern!r}")


def file_content(scenario_name: str, spec: FileSpec) -> bytes:
    """Return what file ``spec`` holds after creation: its bytes with holes read as zeros."""
    if spec.content == "random":
        data = bytearray(file_random_bytes(scenario_name, spec.name, 0, spec.size))
    else:  # zero, hole and unwritten all read as zeros
        data = bytearray(spec.size)
    for off, length in spec.holes:
        data[off : off + length] = bytes(length)
    return bytes(data)

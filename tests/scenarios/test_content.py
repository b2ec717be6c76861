"""Scenario bytes are SHAKE-256 streams exactly as scenario-format.md defines them."""

from __future__ import annotations

import hashlib

import pytest

from dioscope.scenarios.content import (
    buf_random_bytes,
    file_content,
    file_random_bytes,
    pattern_bytes,
    shake_bytes,
)
from dioscope.scenarios.format import FileSpec


def _shake(seed: str, n: int) -> bytes:
    return hashlib.shake_256(seed.encode("utf-8")).digest(n)


def test_file_bytes_are_shake256_of_the_seed() -> None:
    want = _shake("iov.preadv.samepage-adjacent/file/data", 70000)
    assert file_random_bytes("iov.preadv.samepage-adjacent", "data", 0, 70000) == want
    assert file_random_bytes("iov.preadv.samepage-adjacent", "data", 4095, 2) == want[4095:4097]
    # known answer, so a change of seed format or encoding cannot go unnoticed
    assert file_random_bytes("s", "f", 0, 8).hex() == _shake("s/file/f", 8).hex()


def test_buf_bytes_count_from_the_mapping_start() -> None:
    want = _shake("x/buf/b", 8192)
    assert buf_random_bytes("x", "b", 512, 1024) == want[512:1536]
    assert pattern_bytes("random", "x", "b", 512, 1024) == want[512:1536]


def test_names_with_any_characters_are_utf8() -> None:
    assert shake_bytes("ünï/file/ f", 0, 16) == _shake("ünï/file/ f", 16)
    assert file_random_bytes("ünï", " f", 0, 16) == _shake("ünï/file/ f", 16)


def test_deterministic_and_distinct() -> None:
    a = file_random_bytes("s", "f", 0, 4096)
    assert a == file_random_bytes("s", "f", 0, 4096)
    assert a != file_random_bytes("s", "g", 0, 4096)
    assert a != buf_random_bytes("s", "f", 0, 4096)
    assert shake_bytes("s", 10, 0) == b""


@pytest.mark.parametrize(("pattern", "byte"), [(0, 0), (0x5A, 0x5A), (255, 255)])
def test_byte_patterns(pattern: int, byte: int) -> None:
    assert pattern_bytes(pattern, "s", "b", 100, 3) == bytes([byte]) * 3


def test_bad_pattern_and_range() -> None:
    with pytest.raises(ValueError):
        pattern_bytes(256, "s", "b", 0, 1)
    with pytest.raises(ValueError):
        shake_bytes("s", -1, 1)


def test_file_content_applies_holes() -> None:
    spec = FileSpec("f", 8192, "random", ((1000, 24), (4096, 4096)))
    data = file_content("s", spec)
    want = bytearray(_shake("s/file/f", 8192))
    want[1000:1024] = bytes(24)
    want[4096:] = bytes(4096)
    assert data == bytes(want)
    for kind in ("zero", "hole", "unwritten"):
        assert file_content("s", FileSpec("f", 100, kind)) == bytes(100)

"""Data, transferred and tail verdicts, and the side-effect-free memory reader (Linux only)."""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

if not sys.platform.startswith("linux"):
    pytest.skip("the host runner's helpers need Linux /proc", allow_module_level=True)

from dioscope.difftest import libc as L
from dioscope.difftest import verify
from dioscope.difftest.hostmem import UNMAPPED, MemReader, new_mapping
from dioscope.difftest.results import StepResult

PAGE = L.PAGE_SIZE


@pytest.fixture
def mem() -> Iterator[MemReader]:
    r = MemReader()
    yield r
    for m in r.mappings.values():
        L.munmap(m.addr, m.length)
    r.close()


def _map(mem: MemReader, name: str, length: int) -> int:
    addr, err = L.mmap(0, length, L.PROT_READ | L.PROT_WRITE, L.MAP_PRIVATE | L.MAP_ANONYMOUS)
    assert err == 0
    mem.mappings[name] = new_mapping(name, addr, length, 3, True, True)
    return addr


def test_reader_sees_untouched_anon_as_zeros_without_faulting(mem: MemReader) -> None:
    a = _map(mem, "b", 4 * PAGE)
    L.memset(a + PAGE, 7, PAGE)
    assert mem.read(a, 4 * PAGE) == bytes(PAGE) + bytes([7]) * PAGE + bytes(2 * PAGE)
    assert mem._absent(a) and not mem._absent(a + PAGE)  # still never faulted
    L.munmap(a + 2 * PAGE, PAGE)
    mem.mappings["b"].set_range(a + 2 * PAGE, PAGE, UNMAPPED)
    chunks = mem.read_chunks(a + PAGE + 10, 2 * PAGE)
    assert [(c - a, None if d is None else len(d)) for c, d in chunks] == [
        (PAGE + 10, PAGE - 10),
        (2 * PAGE, None),
        (3 * PAGE, 10),
    ]
    assert mem.read(a, 3 * PAGE) is None


def test_read_file_range(tmp_path: Path) -> None:
    p = tmp_path / "f"
    data = bytes(range(256)) * 40  # 10240 bytes
    p.write_bytes(data)
    assert verify.read_file_range(str(p), 100, 5000) == data[100:5100]
    assert verify.read_file_range(str(p), 10000, 5000) == data[10000:]
    assert verify.read_file_range(str(p), 20000, 10) == b""


def test_after_read_verdicts(mem: MemReader, tmp_path: Path) -> None:
    p = tmp_path / "f"
    data = bytes((i * 7 + 1) % 251 for i in range(8192))
    p.write_bytes(data)
    a = _map(mem, "b", 4 * PAGE)
    L.memset(a, 0x5A, 4 * PAGE)
    segs = [(a, 4096), (a + 2 * PAGE, 4096)]
    pre = verify.before_read(mem, segs, 0)
    # the "kernel" moved 1536 bytes and then stopped; byte 1000 is wrong
    L.poke(a, data[:1536])
    L.poke(a + 1000, b"\xff")
    res = StepResult(1, "preadv", True, 1536)
    verify.after_read(mem, str(p), pre, res, 512)
    assert res.data == "mismatch" and res.data_detail == "first difference at request byte 1000"
    assert res.transferred == 512
    assert res.tail == ("untouched",)
    # fixed; the tail zeroed
    L.poke(a + 1000, data[1000:1001])
    L.memset(a + 1536, 0, 4096 - 1536)
    L.memset(a + 2 * PAGE, 0, 4096)
    res = StepResult(1, "preadv", True, 1536)
    verify.after_read(mem, str(p), pre, res, 512)
    assert (res.data, res.transferred, res.tail) == ("ok", 1536, ("zero",))


def test_after_read_last_writer_wins(mem: MemReader, tmp_path: Path) -> None:
    p = tmp_path / "f"
    data = hashlib.shake_256(b"lww").digest(8192)
    p.write_bytes(data)
    a = _map(mem, "b", PAGE)
    segs = [(a, 4096), (a, 4096)]  # the same page twice: it ends with file bytes 4096..8191
    pre = verify.before_read(mem, segs, 0)
    L.poke(a, data[4096:8192])
    res = StepResult(1, "preadv", True, 8192)
    verify.after_read(mem, str(p), pre, res, 512)
    assert res.data == "ok"
    L.poke(a, data[:4096])  # first writer wins: wrong
    res = StepResult(1, "preadv", True, 8192)
    verify.after_read(mem, str(p), pre, res, 512)
    assert res.data == "mismatch"


def test_after_write_verdicts(mem: MemReader, tmp_path: Path) -> None:
    p = tmp_path / "f"
    p.write_bytes(bytes(8192))
    a = _map(mem, "b", 2 * PAGE)
    L.memset(a, 0x11, 2 * PAGE)
    segs = [(a, 2048), (a + PAGE, 2048)]
    pre = verify.before_write(str(p), segs, 1024, True)
    with open(p, "r+b") as f:  # the "kernel" wrote 2560 bytes
        f.seek(1024)
        f.write(bytes([0x11]) * 2560)
    res = StepResult(1, "pwritev", True, 2560)
    verify.after_write(mem, str(p), pre, res, 512)
    assert (res.data, res.transferred, res.tail) == ("ok", 2560, ("zero", "untouched"))
    res = StepResult(1, "pwritev", True, 4096)
    verify.after_write(mem, str(p), pre, res, 512)
    assert res.data == "mismatch" and res.data_detail == "first difference at request byte 2560"
    assert res.transferred == 2560


def test_unverifiable_requests_are_noted(mem: MemReader) -> None:
    pre = verify.before_read(mem, [(0, 1 << 40)], 0)
    res = StepResult(1, "preadv", True, None, "EINVAL")
    verify.after_read(mem, "/nonexistent", pre, res, 512)
    assert res.data is None and res.note == "request too large or malformed to verify the bytes"

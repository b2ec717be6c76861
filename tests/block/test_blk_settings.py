"""QueueLimits: kernel defaults, sysfs aliases, blk_validate_limits rules, host discovery."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from dioscope.block.blk_settings import (
    BLK_DEF_MAX_SECTORS,
    QueueLimits,
    host_disk,
)

UINT_MAX = 0xFFFFFFFF


def test_kernel_defaults() -> None:
    lim = QueueLimits()
    assert (lim.logical_block_size, lim.physical_block_size, lim.dma_alignment) == (512, 512,
                                                                                    511)
    assert (lim.max_hw_sectors, lim.max_sectors) == (255, 255)  # BLK_SAFE_MAX_SECTORS
    assert (lim.max_segments, lim.max_segment_size) == (128, 65536)
    assert (lim.seg_boundary_mask, lim.virt_boundary_mask, lim.chunk_sectors) == (UINT_MAX, 0,
                                                                                 0)


@pytest.mark.parametrize(("kw", "max_sectors", "max_hw"), [
    ({"max_hw_sectors_kb": 2147483647}, 8192, 4294967294),          # [6.18] cap: 4 MiB
    ({"max_hw_sectors_kb": 2147483647, "def_max_sectors_cap": BLK_DEF_MAX_SECTORS},
     2560, 4294967294),                                               # [5.9] cap: 1280 KiB
    ({"max_hw_sectors_kb": 1024, "max_sectors_kb": 128}, 256, 2048),
    ({"max_hw_sectors_kb": 64, "max_sectors_kb": 128}, 128, 128),    # clamped to the hw
    ({"max_hw_sectors": 255, "logical_block_size": 4096}, 248, 248),  # rounded to the lbs
    ({"max_sectors": 9, "max_hw_sectors": 100}, 9, 100),
])
def test_max_sectors(kw: dict[str, int], max_sectors: int, max_hw: int) -> None:
    lim = QueueLimits(**kw)
    assert (lim.max_sectors, lim.max_hw_sectors) == (max_sectors, max_hw)
    assert lim.max_sectors_kb == max_sectors >> 1


def test_virt_boundary_lifts_segment_size() -> None:
    assert QueueLimits(virt_boundary_mask=4095).max_segment_size == UINT_MAX


def test_physical_block_size_raised_to_logical() -> None:
    assert QueueLimits(logical_block_size=4096, physical_block_size=512).physical_block_size \
        == 4096


@pytest.mark.parametrize(("kw", "words"), [
    ({"logical_block_size": 1000}, "logical_block_size 1000"),
    ({"logical_block_size": 256}, "logical_block_size 256"),
    ({"logical_block_size": 131072}, "logical_block_size 131072"),
    ({"physical_block_size": 3000}, "physical_block_size 3000"),
    ({"dma_alignment": 510}, "dma_alignment 0x1fe"),
    ({"max_hw_sectors": 7}, "max_hw_sectors 7 is below one page"),
    ({"max_sectors": 7, "max_hw_sectors": 100}, "max_sectors 7 is below one page"),
    ({"seg_boundary_mask": 2047}, "seg_boundary_mask 0x7ff"),
    ({"seg_boundary_mask": 0x10FFF}, "seg_boundary_mask 0x10fff"),
    ({"max_segment_size": 4095}, "max_segment_size 4095"),
    ({"virt_boundary_mask": 0x1001}, "virt_boundary_mask 0x1001"),
    ({"virt_boundary_mask": 4095, "max_segment_size": 65536}, "must not limit the segment"),
    ({"chunk_sectors": 12, "logical_block_size": 4096}, "chunk_sectors 12"),
])
def test_validate_rejects(kw: dict[str, int], words: str) -> None:
    with pytest.raises(ValueError, match=words):
        QueueLimits(**kw)


def test_validate_after_change() -> None:
    lim = QueueLimits(max_hw_sectors_kb=1024)
    lim.max_sectors_kb = 2
    with pytest.raises(ValueError, match="below one page"):
        lim.validate()


def test_unknown_limit() -> None:
    with pytest.raises(TypeError, match="max_sector_kb"):
        QueueLimits(max_sector_kb=4)  # type: ignore[arg-type]


def test_from_sysfs(tmp_path: Path) -> None:
    # The values /sys/block/vda/queue shows on the 6.18 host.
    values = {
        "logical_block_size": 512, "physical_block_size": 4096, "dma_alignment": 511,
        "max_sectors_kb": 4096, "max_hw_sectors_kb": 2147483647, "max_segments": 254,
        "max_segment_size": 4294967295, "virt_boundary_mask": 0, "chunk_sectors": 0,
    }
    for name, v in values.items():
        (tmp_path / name).write_text(f"{v}\n")
    lim = QueueLimits.from_sysfs(tmp_path)
    assert (lim.logical_block_size, lim.physical_block_size, lim.dma_alignment) == (512, 4096,
                                                                                    511)
    assert (lim.max_sectors_kb, lim.max_hw_sectors_kb) == (4096, 2147483647)
    assert (lim.max_segments, lim.max_segment_size, lim.seg_boundary_mask) == (
        254, UINT_MAX, UINT_MAX)
    assert QueueLimits.from_sysfs(tmp_path, max_segments=16).max_segments == 16


def test_from_sysfs_missing_files_keep_defaults(tmp_path: Path) -> None:
    (tmp_path / "max_segments").write_text("garbage\n")
    assert QueueLimits.from_sysfs(tmp_path) == QueueLimits()


def test_not_a_block_device() -> None:
    if not Path("/proc/self").exists():
        pytest.skip("no procfs")
    with pytest.raises(OSError, match="not on a block device"):
        host_disk("/proc/self/status")


@pytest.mark.host
def test_host_root_disk() -> None:
    try:
        disk = host_disk("/")
    except OSError as e:
        pytest.skip(f"/ is not on a block device here: {e}")
    st = os.stat("/")
    assert (disk.major, disk.minor) != (0, 0)
    assert (disk.sysfs_dir / "queue").is_dir()
    assert not (disk.sysfs_dir / "partition").exists()
    if (os.major(st.st_dev), os.minor(st.st_dev)) == (disk.major, disk.minor):
        assert disk.name == Path(f"/sys/dev/block/{disk.major}:{disk.minor}").resolve().name
    lim = QueueLimits.from_host("/")
    text = (disk.queue_dir / "max_segments").read_text()
    assert lim.max_segments == int(text)

"""blk-map (SG_IO-style passthrough): spec §4.9 and §11 items 36-37, per profile.

Aligned user memory is mapped: 5.9 takes FOLL_GET references (no pin counted), 5.9-pin and
6.18 pin one per page, released at ``blk_rq_unmap_user`` with dirtying after a READ.
Misaligned memory is bounced through kernel pages: nothing pinned, the bytes still arrive.
Two iovecs sharing a page keep one reference (Linux 5905afc2c7bb is in the model).
"""

from __future__ import annotations

import numpy as np
import pytest

from dioscope.block.blk_map import blk_execute_rq, blk_rq_map_user_iov, blk_rq_unmap_user
from dioscope.block.blk_settings import QueueLimits
from dioscope.block.blk_types import REQ_OP
from dioscope.block.devices import MemDevice
from dioscope.lib.iov_iter import ITER_DEST, ITER_SOURCE, iov_iter_init
from dioscope.machine import Kernel
from dioscope.mm.page import PG
from dioscope.sanitizer import Sanitizer

PROFILES = ["5.9", "5.9-pin", "6.18"]
PINS = {"5.9": 0, "5.9-pin": 1, "6.18": 1}


def _rig(profile: str, max_hw_sectors_kb: int = 2048):  # type: ignore[no-untyped-def]
    k = Kernel("64M", profile)
    lim = QueueLimits(max_hw_sectors_kb=max_hw_sectors_kb, max_sectors_kb=1280)
    dev = MemDevice(k.pgdat, "8M", limits=lim)
    disk = np.random.default_rng(7).integers(0, 256, 1 << 20, dtype=np.uint8)
    dev.write_disk(0, disk.tobytes())
    p = k.spawn()
    buf = p.mmap(1 << 20)
    p.touch(buf, 1 << 20, write=True)
    return k, dev, p, buf, disk


@pytest.mark.parametrize("profile", PROFILES)
@pytest.mark.parametrize(("off", "length", "pages"), [(0, 4096, 1), (0, 65536, 16),
                                                      (512, 4096, 2), (0, 1 << 20, 256)])
def test_aligned_read_maps_and_pins(profile: str, off: int, length: int, pages: int) -> None:
    k, dev, p, buf, disk = _rig(profile)
    san = Sanitizer(k.pgdat)
    it = iov_iter_init(k.pgdat, ITER_DEST, [(buf + off, length)], 1, length, p.mm)
    a0 = k.vmstat.pins()
    ret, res = blk_rq_map_user_iov(dev, REQ_OP.REQ_OP_DRV_IN, 0, it)
    assert ret == 0 and res is not None and not res.copied
    assert k.vmstat.pins()[0] - a0[0] == PINS[profile] * pages
    assert blk_execute_rq(res) == 0
    held = [int(x) for b in res.bios for x in b.pages()]
    assert blk_rq_unmap_user(res) == 0
    acq, rel = k.vmstat.pins()
    assert (acq - a0[0], rel - a0[1]) == (PINS[profile] * pages, PINS[profile] * pages)
    assert p.read_user(buf + off, length) == disk[:length].tobytes()
    dirty = [bool(k.pgdat.pages.flags[h] & PG.PG_dirty) for h in held]
    assert all(dirty)
    san.check_quiescent()
    san.assert_clean()


@pytest.mark.parametrize("profile", PROFILES)
@pytest.mark.parametrize(("off", "length"), [(1, 512), (100, 4096), (256, 8192)])
def test_misaligned_buffer_is_bounced_without_pins(profile: str, off: int, length: int) -> None:
    k, dev, p, buf, disk = _rig(profile)
    it = iov_iter_init(k.pgdat, ITER_DEST, [(buf + off, length)], 1, length, p.mm)
    a0 = k.vmstat.pins()
    free0 = k.pgdat.nr_free()
    ret, res = blk_rq_map_user_iov(dev, REQ_OP.REQ_OP_DRV_IN, 0, it)
    assert ret == 0 and res is not None and len(res.copied) == 1
    assert blk_execute_rq(res) == 0
    assert blk_rq_unmap_user(res) == 0
    assert k.vmstat.pins() == a0
    assert k.pgdat.nr_free() == free0  # bounce pages given back
    assert p.read_user(buf + off, length) == disk[:length].tobytes()


@pytest.mark.parametrize("profile", PROFILES)
def test_write_through_bounce_and_map(profile: str) -> None:
    k, dev, p, buf, _disk = _rig(profile)
    data = bytes(range(256)) * 32
    p.write_user(buf + 3, data)
    for off in (3, 0):
        if off == 0:
            p.write_user(buf, data)
        it = iov_iter_init(k.pgdat, ITER_SOURCE, [(buf + off, 8192)], 1, 8192, p.mm)
        ret, res = blk_rq_map_user_iov(dev, REQ_OP.REQ_OP_DRV_OUT, 16, it)
        assert ret == 0 and res is not None
        assert blk_execute_rq(res) == 0
        blk_rq_unmap_user(res)
        assert dev.read_disk(16 * 512, 8192) == data
    acq, rel = k.vmstat.pins()
    assert acq == rel


@pytest.mark.parametrize("profile", PROFILES)
def test_same_page_twice_keeps_one_reference(profile: str) -> None:
    """Adjacent halves of one page: merged into one bvec, the duplicate dropped at once."""
    k, dev, p, buf, disk = _rig(profile)
    page_refs0 = int(k.pgdat.pages.refcount[p.mm.vmas[0].pt_pfn[0]])
    it = iov_iter_init(k.pgdat, ITER_DEST, [(buf, 2048), (buf + 2048, 2048)], 2, 4096, p.mm)
    a0 = k.vmstat.pins()
    ret, res = blk_rq_map_user_iov(dev, REQ_OP.REQ_OP_DRV_IN, 0, it)
    assert ret == 0 and res is not None
    assert res.bios[0].bi_vcnt == 1
    assert blk_execute_rq(res) == 0
    blk_rq_unmap_user(res)
    acq, rel = k.vmstat.pins()
    assert (acq - a0[0], rel - a0[1]) == (2 * PINS[profile], 2 * PINS[profile])
    assert int(k.pgdat.pages.refcount[p.mm.vmas[0].pt_pfn[0]]) == page_refs0
    assert p.read_user(buf, 4096) == disk[:4096].tobytes()


@pytest.mark.parametrize("profile", PROFILES)
def test_unmapped_buffer_is_efault_and_leaks_nothing(profile: str) -> None:
    k, dev, p, buf, _disk = _rig(profile)
    p.munmap(buf + 8192, 8192)
    it = iov_iter_init(k.pgdat, ITER_DEST, [(buf, 4096), (buf + 8192, 4096)], 2, 8192, p.mm)
    a0 = k.vmstat.pins()
    ret, res = blk_rq_map_user_iov(dev, REQ_OP.REQ_OP_DRV_IN, 0, it)
    acq, rel = k.vmstat.pins()
    if ret == 0:
        assert res is not None
        blk_rq_unmap_user(res, copy_back=False)
        acq, rel = k.vmstat.pins()
    else:
        assert ret == -14
    assert acq - a0[0] == rel - a0[1]


@pytest.mark.parametrize("profile", PROFILES)
def test_request_larger_than_max_hw_sectors_repins_the_rest_per_bio(profile: str) -> None:
    """[5.9*] ``bio_map_user_iov`` pins everything left in the segment for every bio and
    releases what did not fit (``iov_iter_get_pages_alloc(iter, &pages, LONG_MAX, ...)``):
    with max_hw_sectors 255 a bio holds 31 pages, so 1 MiB takes 9 bios and pins
    256 + 225 + ... + 8 = 1188 pages. [6.18] ``bio_iov_iter_get_pages`` takes at most the
    bvecs the bio has room for, and ``blk_rq_append_bio`` refuses a bio that would need a
    split (-EREMOTEIO)."""
    k, dev, p, buf, disk = _rig(profile, max_hw_sectors_kb=127)
    it = iov_iter_init(k.pgdat, ITER_DEST, [(buf, 1 << 20)], 1, 1 << 20, p.mm)
    a0 = k.vmstat.pins()
    ret, res = blk_rq_map_user_iov(dev, REQ_OP.REQ_OP_DRV_IN, 0, it)
    if profile == "6.18":
        assert ret == -121 and res is None  # -EREMOTEIO
        assert k.vmstat.pins()[0] - a0[0] == k.vmstat.pins()[1] - a0[1] == 256
        return
    assert ret == 0 and res is not None
    assert len(res.bios) == 9
    assert [b.bi_iter.bi_size for b in res.bios] == [126976] * 8 + [(1 << 20) - 8 * 126976]
    pinned = PINS[profile] * sum(256 - 31 * j for j in range(9))
    assert k.vmstat.pins()[0] - a0[0] == pinned == PINS[profile] * 1188
    assert blk_execute_rq(res) == 0
    blk_rq_unmap_user(res)
    assert k.vmstat.pins()[1] - a0[1] == pinned
    assert p.read_user(buf, 1 << 20) == disk.tobytes()

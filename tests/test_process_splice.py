"""pipe/splice/vmsplice through the Process API (spec §11 item 38): splicing 64 KiB from an
O_DIRECT file into a pipe pins each pipe page under 5.9-pin (``pin_page``), takes no pin
under 5.9 (FOLL_GET) or 6.18 (``copy_splice_read``, no ITER_PIPE), and the pipe then reads
back the file's bytes."""

from __future__ import annotations

import errno

import pytest

from dioscope.block.devices import MemDevice
from dioscope.fs.fs_types import OFLAG
from dioscope.fs.modelfs.super import ModelFs, file_pattern
from dioscope.machine import Kernel


@pytest.mark.parametrize(("profile", "pins"), [("5.9", 0), ("5.9-pin", 16), ("6.18", 0)])
def test_splice_from_o_direct_file_into_a_pipe(profile: str, pins: int) -> None:
    k = Kernel("128M", profile)
    fs = k.mount(ModelFs(k.add_disk(MemDevice(k.pgdat, "64M"))))
    ino = fs.create_file("f", 1 << 20).i_ino
    p = k.spawn()
    fd = p.open("/f", int(OFLAG.O_RDONLY | OFLAG.O_DIRECT))
    r, w = p.pipe()
    a0 = k.vmstat.pins()
    assert p.splice(fd, 4096, w, None, 65536) == 65536
    acq, rel = k.vmstat.pins()
    assert (acq - a0[0], rel - a0[1]) == (pins, pins)
    buf = p.mmap(65536)
    assert p.read(r, buf, 65536) == 65536
    assert p.read_user(buf, 65536) == file_pattern(ino, 4096, 65536)
    with pytest.raises(OSError) as e:
        p.splice(fd, 0, w, 0, 4096)  # an offset for the pipe end: ESPIPE
    assert e.value.errno == errno.ESPIPE
    p.exit()
    assert k.vmstat.pins()[0] == k.vmstat.pins()[1]

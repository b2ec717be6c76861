"""Where the benchmarks keep their disk images (shared by ``bench_bio`` and ``bench_dio``)."""

from __future__ import annotations

import os
import tempfile


def bench_dir() -> str:
    """``$DIOSCOPE_BENCH_DIR`` if set, else ``/var/tmp``, else ``/tmp``, whichever is writable
    and (unless named by the variable) on the root filesystem: never tmpfs, whose "disk" is
    memory and would flatter both sides' O_DIRECT."""
    root = os.stat("/").st_dev
    for d in (os.environ.get("DIOSCOPE_BENCH_DIR"), "/var/tmp", "/tmp"):
        if d and os.path.isdir(d) and os.access(d, os.W_OK):
            if os.environ.get("DIOSCOPE_BENCH_DIR") == d or os.stat(d).st_dev == root:
                return d
    return tempfile.gettempdir()
